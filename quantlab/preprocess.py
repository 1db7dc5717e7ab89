"""From raw samples to model inputs: preprocessing, fixed sample selection and batching.

Raw samples come from a dataset adapter (:mod:`quantlab.data`); the target shape and dtype
come from the ONNX model's input. Images (HxW or HxWxC arrays) go through resize, centre crop,
scale, mean/std and layout; arrays already shaped like a model sample pass through untouched
unless the user asked for scale or mean/std.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import DataError
from .graph import InputSpec


@dataclass(frozen=True)
class Preprocess:
    """How to turn a raw image into a model input.

    ``scale`` defaults to 1/255 for 8-bit images and 1 otherwise; ``layout`` defaults to the
    model's (NCHW when the second input axis has 1 or 3 channels, else NHWC).
    """

    resize: Optional[tuple] = None  # (height, width), applied before the crop
    crop: Optional[tuple] = None  # (height, width), centre crop
    scale: Optional[float] = None
    mean: Optional[tuple] = None  # per channel, after scaling
    std: Optional[tuple] = None
    layout: Optional[str] = None  # "NCHW" or "NHWC"

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_file(cls, path: str | Path) -> Preprocess:
        """Read a small JSON config: {"resize": [h, w], "scale": 0.0039, "mean": [...], ...}."""
        try:
            config = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read preprocessing config {path}: {exc}") from exc
        unknown = set(config) - set(cls.__dataclass_fields__)
        if unknown:
            raise DataError(f"{path}: unknown preprocessing keys {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})


def model_layout(spec: InputSpec) -> str:
    shape = spec.sample_shape
    if len(shape) == 3 and shape[0] in (1, 3, 4):
        return "NCHW"
    if len(shape) == 3 and shape[-1] in (1, 3, 4):
        return "NHWC"
    return "NCHW"


def prepare(raw: np.ndarray, spec: InputSpec, pre: Preprocess) -> np.ndarray:
    """One raw sample -> one model sample (without the batch axis), checked against the model."""
    array = np.asarray(raw)
    target = spec.sample_shape
    explicit_math = pre.scale is not None or pre.mean is not None or pre.std is not None
    if _fits(array.shape, target) and not (pre.resize or pre.crop) and not explicit_math:
        out = array
    elif len(target) == 3 and array.ndim in (2, 3):
        out = _prepare_image(array, target, pre, spec)
    else:
        out = array
        if explicit_math:
            scale = 1.0 if pre.scale is None else pre.scale
            out = _normalise(out.astype(np.float32) * np.float32(scale), pre, channel_axis=0)
    if not _fits(out.shape, target):
        raise DataError(
            f"a sample has shape {tuple(array.shape)} but model input {spec.name!r} wants "
            f"{_show(target)} per sample; fix the data or pass --resize/--crop/--layout"
        )
    if out.dtype != spec.dtype:
        if spec.dtype.kind == "f" or out.dtype.kind in "iub":
            out = out.astype(spec.dtype)
        else:
            raise DataError(f"samples of dtype {out.dtype} cannot feed {spec.name!r} ({spec.dtype})")
    return np.ascontiguousarray(out)


def _prepare_image(image: np.ndarray, target: tuple, pre: Preprocess, spec: InputSpec) -> np.ndarray:
    layout = (pre.layout or model_layout(spec)).upper()
    if layout not in ("NCHW", "NHWC"):
        raise DataError(f"layout must be NCHW or NHWC, got {pre.layout!r}")
    channels = target[0] if layout == "NCHW" else target[-1]
    height, width = (target[1], target[2]) if layout == "NCHW" else (target[0], target[1])
    if image.ndim == 2:
        image = image[:, :, None]
    elif image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[-1] not in (1, 3, 4):
        image = np.transpose(image, (1, 2, 0))  # CHW array -> HWC
    is_8bit = image.dtype == np.uint8
    if pre.resize:
        image = _resize(image, pre.resize)
    if pre.crop:
        image = _center_crop(image, pre.crop)
    elif isinstance(height, int) and isinstance(width, int) and image.shape[:2] != (height, width):
        raise DataError(
            f"images are {image.shape[0]}x{image.shape[1]} but model input {spec.name!r} wants "
            f"{height}x{width}; pass --resize {height} {width} (and/or --crop)"
        )
    if isinstance(channels, int) and image.shape[-1] != channels:
        if image.shape[-1] == 1 and channels == 3:
            image = np.repeat(image, 3, axis=-1)
        else:
            raise DataError(
                f"images have {image.shape[-1]} channels but {spec.name!r} wants {channels}"
            )
    scale = pre.scale if pre.scale is not None else (1 / 255 if is_8bit else 1.0)
    out = image.astype(np.float32) * np.float32(scale)
    out = _normalise(out, pre, channel_axis=-1)
    if layout == "NCHW":
        out = np.transpose(out, (2, 0, 1))
    return out


def _normalise(x: np.ndarray, pre: Preprocess, channel_axis: int) -> np.ndarray:
    shape = [1] * x.ndim
    shape[channel_axis] = -1
    if pre.mean is not None:
        x = x - np.asarray(pre.mean, dtype=np.float32).reshape(shape)
    if pre.std is not None:
        std = np.asarray(pre.std, dtype=np.float32)
        if (std == 0).any():
            raise DataError("--std must not contain 0")
        x = x / std.reshape(shape)
    return x


def _resize(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    from PIL import Image

    height, width = int(size[0]), int(size[-1])
    squeeze = image.shape[-1] == 1
    source = image[:, :, 0] if squeeze else image
    if source.dtype != np.uint8:
        resized = np.stack(
            [np.asarray(Image.fromarray(source[..., c].astype(np.float32), mode="F").resize(
                (width, height), Image.BILINEAR)) for c in range(image.shape[-1])], axis=-1)
        return resized
    resized = np.asarray(Image.fromarray(source).resize((width, height), Image.BILINEAR))
    return resized[:, :, None] if squeeze else resized


def _center_crop(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    height, width = int(size[0]), int(size[-1])
    if image.shape[0] < height or image.shape[1] < width:
        raise DataError(f"cannot crop {image.shape[0]}x{image.shape[1]} images to {height}x{width}")
    top = (image.shape[0] - height) // 2
    left = (image.shape[1] - width) // 2
    return image[top:top + height, left:left + width]


def _fits(shape: tuple, target: tuple) -> bool:
    return len(shape) == len(target) and all(t is None or s == t for s, t in zip(shape, target))


def _show(shape: tuple) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def select_indices(length: int, num_samples: Optional[int], seed: int) -> np.ndarray:
    """A fixed, seedable subset of sample indices, in ascending order (the order never matters
    for the statistics, but a canonical order makes runs easy to compare)."""
    if length == 0:
        raise DataError("the data set is empty: no samples to calibrate on")
    if num_samples is None or num_samples >= length:
        return np.arange(length)
    if num_samples <= 0:
        raise DataError(f"--num-samples must be positive, got {num_samples}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(length, size=num_samples, replace=False))


@dataclass
class Batch:
    inputs: dict  # input name -> array with a batch axis
    labels: Optional[np.ndarray]
    indices: np.ndarray


def iterate_batches(dataset, indices: np.ndarray, specs: Sequence[InputSpec], pre: Preprocess,
                    batch_size: int) -> Iterator[Batch]:
    """Preprocessed batches of the selected samples, with labels when every sample has one."""
    if batch_size <= 0:
        raise DataError(f"--batch-size must be positive, got {batch_size}")
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        columns: dict[str, list] = {spec.name: [] for spec in specs}
        labels = []
        for index in chunk:
            raw, label = dataset[int(index)]
            labels.append(label)
            if isinstance(raw, dict):
                missing = [s.name for s in specs if s.name not in raw]
                if missing:
                    raise DataError(f"sample {index} has no array for model input(s) {missing}")
                for spec in specs:
                    columns[spec.name].append(prepare(raw[spec.name], spec, pre))
            else:
                if len(specs) != 1:
                    raise DataError(
                        f"the model has {len(specs)} inputs ({[s.name for s in specs]}); give a "
                        "sample per input (an .npz keyed by input name, or a callable returning dicts)"
                    )
                columns[specs[0].name].append(prepare(raw, specs[0], pre))
        inputs = {name: np.stack(arrays) for name, arrays in columns.items()}
        has_labels = all(label is not None for label in labels)
        yield Batch(inputs, np.asarray(labels, dtype=np.int64) if has_labels else None, chunk)


class DataFingerprint:
    """An order-independent fingerprint of the samples a model saw.

    The sum (mod 2**256) of each sample's SHA-256 does not depend on order or batching, and
    fingerprints of shards add up to the fingerprint of their union. A short digest per sample
    is kept too (sorted, so order-free), to warn when held-out data overlaps calibration data.
    """

    MODULUS = 1 << 256
    SHORT = 12  # hex characters per sample digest (48 bits)

    def __init__(self, value: int = 0, count: int = 0, samples: Optional[list] = None):
        self.value = value
        self.count = count
        self.samples: list[str] = list(samples or [])

    def add(self, batch: dict) -> None:
        names = sorted(batch)
        for row in range(len(batch[names[0]])):
            digest = hashlib.sha256()
            for name in names:
                sample = np.ascontiguousarray(batch[name][row])
                digest.update(name.encode() + str(sample.dtype).encode() + str(sample.shape).encode())
                digest.update(sample.tobytes())
            self.value = (self.value + int.from_bytes(digest.digest(), "big")) % self.MODULUS
            self.count += 1
            self.samples.append(digest.hexdigest()[: self.SHORT])

    def merge(self, other: DataFingerprint) -> None:
        self.value = (self.value + other.value) % self.MODULUS
        self.count += other.count
        self.samples.extend(other.samples)

    def sample_digests(self) -> list[str]:
        return sorted(self.samples)

    @property
    def hexdigest(self) -> str:
        return f"{self.value:064x}"
