"""From raw samples to model inputs: preprocessing, fixed sample selection and batching.

Raw samples come from a dataset adapter (:mod:`quantlab.data`); the target shape and dtype
come from the ONNX model's input. A raw sample is either an image (an HxW, HxWxC or CxHxW
array) for a model input of per-sample shape (C, H, W) or (H, W, C), or an array already shaped
like one model sample. Images go through resize, centre crop, channel repeat (grayscale -> RGB)
and layout; every sample's *values* then follow one rule, the same whatever the array's shape:

* **Integer samples feeding a floating-point model input are 8-bit pixel values**: they are
  multiplied by 1/255 unless ``scale`` is given (``scale=1`` feeds the raw values). Integer
  samples holding values outside 0..255 are refused unless ``scale`` is given, because 1/255
  would then be a guess (12-bit scans, class ids, token ids...).
* **Float samples are fed as they are** (cast to the model's dtype) unless ``scale`` is given.
* ``mean`` and ``std`` then apply per channel: ``(sample * scale - mean) / std``.
* **Integer model inputs** (token ids, a model that takes uint8 images itself) get the samples'
  values unchanged: ``scale``, ``mean`` and ``std`` do not apply to them (resize, crop and
  layout still do, for image inputs); float samples cannot feed them.

Why the sample's dtype and not its shape decides: the same pixels saved as (N, 28, 28) or as
(N, 1, 28, 28) are the same pixels, and must give the same model input; an earlier rule scaled
only arrays that still needed laying out, and fed uint8 arrays already shaped like the model
unscaled (Fashion-MNIST top-1 0.91 -> 0.28). Integer image data is overwhelmingly 8-bit
(decoded PNG/JPEG, IDX files, ``np.array`` of a list of ints, ``torch.long``); anything else is
caught by the 0..255 check instead of being mis-scaled silently. :func:`describe_scaling` says
in one line which branch of the rule a data set takes.

Every preprocessing value is checked once, against the model, before the first batch is made
(:meth:`Preprocess.check_against`, called by :func:`iterate_batches`): a mean with 3 values
for a 1-channel input, a layout the input's shape contradicts, a resize or crop that cannot
give the input's height and width are refused with the real reason.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from .errors import DataError, QuantlabError
from .graph import InputSpec

LAYOUTS = ("NCHW", "NHWC")
_CHANNEL_COUNTS = (1, 3, 4)  # what makes an axis of an image input look like its channel axis
_VALUE_OPTIONS = ("scale", "mean", "std")
_GEOMETRY_OPTIONS = ("resize", "crop", "layout")


@dataclass(frozen=True)
class Preprocess:
    """How to turn a raw sample into a model input (see the module docstring for the rule).

    ``resize`` and ``crop``: (height, width) pairs of positive integers; the resize comes first,
    the crop is a centre crop. ``scale``: a finite, non-zero factor; unset, it is 1/255 for
    integer samples (8-bit pixels) and 1 for float samples. ``mean`` and ``std``: a single value
    or one per channel, applied after the scale (``std`` values must be positive). ``layout``:
    the model input's layout, "NCHW" or "NHWC"; unset, it is read from the input's shape (NCHW
    when the first per-sample axis has 1, 3 or 4 entries, else NHWC when the last one has).

    Values are checked (and normalised: lists become tuples, the layout upper case) when the
    object is made; :meth:`check_against` checks them against a model's inputs.
    """

    resize: Optional[tuple] = None  # (height, width), applied before the crop
    crop: Optional[tuple] = None  # (height, width), centre crop
    scale: Optional[float] = None
    mean: Optional[tuple] = None  # per channel, after scaling
    std: Optional[tuple] = None
    layout: Optional[str] = None  # "NCHW" or "NHWC"

    def __post_init__(self):
        for name in ("resize", "crop"):
            object.__setattr__(self, name, _size_option(name, getattr(self, name)))
        object.__setattr__(self, "scale", _scale_option(self.scale))
        for name in ("mean", "std"):
            object.__setattr__(self, name, _values_option(name, getattr(self, name)))
        if self.std is not None and any(v <= 0 for v in self.std):
            raise DataError(f"`std` must be positive (it divides), got {_show_values(self.std)}; "
                            "set `std` to the data's standard deviation per channel", params=("std",))
        object.__setattr__(self, "layout", _layout_option(self.layout))
        if self.resize and self.crop and (self.crop[0] > self.resize[0] or self.crop[1] > self.resize[1]):
            raise DataError(f"`crop` {self.crop} is larger than `resize` {self.resize}; set `crop` to at most "
                            "the resized size", params=("crop", "resize"))

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_file(cls, path: str | Path) -> Preprocess:
        """Read a small JSON config: {"resize": [h, w], "scale": 0.0039, "mean": [...], ...}."""
        try:
            config = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read preprocessing config {path}: {exc}; give a JSON file such as "
                            '{"resize": [256, 256], "crop": [224, 224]}') from exc
        known = list(cls.__dataclass_fields__)
        if not isinstance(config, dict):
            raise DataError(f"{path} holds a JSON {type(config).__name__}, not an object; write "
                            f'{{"resize": [256, 256], "crop": [224, 224], ...}} with keys among {", ".join(known)}')
        unknown = set(config) - set(known)
        if unknown:
            raise DataError(f"{path}: unknown preprocessing keys {sorted(unknown)}; "
                            f"the keys are {', '.join(known)}")
        try:
            return cls(**{k: v for k, v in config.items() if v is not None})
        except DataError as exc:
            # The file spells the keys as the Python API does: no re-spelling (no params).
            raise DataError(f"{path}: {exc}") from None

    def check_against(self, specs: Union[InputSpec, Sequence[InputSpec]]) -> None:
        """Refuse values that cannot apply to the model's inputs ``specs`` (all of them).

        ``scale``/``mean``/``std`` need a floating-point input; ``resize``/``crop``/``layout`` an
        image input. For each image input: a layout its shape contradicts, a ``mean``/``std``
        whose length is neither 1 nor the channel count, a ``crop`` (or, without a crop, a
        ``resize``) other than the input's fixed height and width. For other float inputs,
        ``mean``/``std`` must have 1 value or one per entry of the first per-sample axis.
        """
        specs = [specs] if isinstance(specs, InputSpec) else list(specs)
        if not specs:
            return
        floats = [s for s in specs if s.dtype.kind == "f"]
        images = [s for s in specs if len(s.sample_shape) == 3]
        values = [n for n in _VALUE_OPTIONS if getattr(self, n) is not None]
        if values and not floats:
            names = _and([f"`{n}`" for n in values])
            raise DataError(
                f"{_describe_inputs(specs)} {'takes' if len(specs) == 1 else 'take'} integer values "
                f"as they are, so {names} cannot apply; remove {names}", params=values)
        geometry = [n for n in _GEOMETRY_OPTIONS if getattr(self, n) is not None]
        if geometry and not images:
            names = _and([f"`{n}`" for n in geometry])
            raise DataError(
                f"{names} {'applies' if len(geometry) == 1 else 'apply'} only to image inputs (per-sample "
                f"shape (C, H, W) or (H, W, C)), but "
                f"model input {specs[0].name!r} has per-sample shape {_show(specs[0].sample_shape)}; "
                f"remove {names}", params=geometry)
        for spec in images:
            self._check_image_input(spec)
        for spec in floats:
            if spec not in images:
                self._check_plain_input(spec)

    def _check_image_input(self, spec: InputSpec) -> None:
        shape = spec.sample_shape
        if self.layout is not None:
            other = "NHWC" if self.layout == "NCHW" else "NCHW"
            implied, natural = _channel_dim(shape, self.layout), _channel_dim(shape, other)
            if implied not in _CHANNEL_COUNTS and isinstance(natural, int) and natural in _CHANNEL_COUNTS:
                meaning = "a dynamic number of" if implied is None else str(implied)
                raise DataError(
                    f"model input {spec.name!r} has per-sample shape {_show(shape)}, which is {other} "
                    f"with {_count(natural, 'channel')}; `layout` {self.layout} does not fit it (it would "
                    f"mean {meaning} channels); set `layout` to {other} or leave it unset", params=("layout",))
        if spec.dtype.kind == "f":
            channels = _channel_dim(shape, self.layout or model_layout(spec))
            for name in ("mean", "std"):
                given = getattr(self, name)
                if given is not None and isinstance(channels, int) and len(given) not in (1, channels):
                    raise DataError(
                        f"`{name}` has {len(given)} values but model input {spec.name!r} has "
                        f"{_count(channels, 'channel')}; give {_how_many(channels)}", params=(name,))
        height, width = _image_size(spec, self.layout or model_layout(spec))
        for name in ("crop", "resize"):
            size = getattr(self, name)
            if size is None:
                continue
            if any(isinstance(t, int) and s != t for s, t in zip(size, (height, width))):
                want = f"({_dim(height)}, {_dim(width)})"
                hint = "" if name == "crop" else f" (or resize larger and set `crop` to {want})"
                raise DataError(
                    f"`{name}` is {size} but model input {spec.name!r} wants {_dim(height)}x{_dim(width)} "
                    f"images; set `{name}` to {want}{hint}", params=("crop", "resize") if hint else (name,))
            break  # without a crop, the resize must give the size; with one, only the crop must

    def _check_plain_input(self, spec: InputSpec) -> None:
        shape = spec.sample_shape
        first = shape[0] if shape else 1
        for name in ("mean", "std"):
            given = getattr(self, name)
            if given is not None and len(given) != 1 and not (isinstance(first, int) and len(given) == first):
                raise DataError(
                    f"`{name}` has {len(given)} values but model input {spec.name!r} (per-sample shape "
                    f"{_show(shape)}) is not an image with channels; give a single value", params=(name,))


def _size_option(name: str, value: Any) -> Optional[tuple]:
    if value is None:
        return None
    bad = DataError(f"`{name}` must be a pair of positive integers (height, width), got {value!r}; "
                    f"set `{name}` to (height, width), e.g. (224, 224)", params=(name,))
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)) or len(value) != 2:
        raise bad
    if not all(_is_int(v) and v > 0 for v in value):
        raise bad
    return (int(value[0]), int(value[1]))


def _scale_option(value: Any) -> Optional[float]:
    if value is None:
        return None
    if not _is_real(value) or not math.isfinite(float(value)) or float(value) == 0:
        raise DataError(f"`scale` must be a finite, non-zero number, got {value!r}; set `scale` to the factor "
                        "samples are multiplied by (e.g. 1/255 for 8-bit pixels)", params=("scale",))
    return float(value)


def _values_option(name: str, value: Any) -> Optional[tuple]:
    if value is None:
        return None
    values = (value,) if _is_real(value) else value
    if (isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray))
            or len(values) == 0 or not all(_is_real(v) and math.isfinite(float(v)) for v in values)):
        raise DataError(f"`{name}` must be one finite number or one per channel, got {value!r}; "
                        f"set `{name}` to e.g. (0.485, 0.456, 0.406) or 0.5", params=(name,))
    return tuple(float(v) for v in values)


def _layout_option(value: Any) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or value.upper() not in LAYOUTS:
        raise DataError(f"`layout` must be NCHW or NHWC, got {value!r}; set `layout` to the model input's "
                        "layout, or leave it unset to read it from the input's shape", params=("layout",))
    return value.upper()


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _and(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _how_many(channels: int) -> str:
    return "a single value" if channels == 1 else f"{channels} values (one per channel) or a single one"


def _dim(d: Any) -> str:
    return "?" if d is None else str(d)


def _show_values(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ("," if len(values) == 1 else "") + ")"


def _describe_inputs(specs: Sequence[InputSpec]) -> str:
    if len(specs) == 1:
        return f"model input {specs[0].name!r} ({specs[0].dtype})"
    return "the model inputs " + ", ".join(f"{s.name!r} ({s.dtype})" for s in specs)


def model_layout(spec: InputSpec) -> str:
    shape = spec.sample_shape
    if len(shape) == 3 and shape[0] in _CHANNEL_COUNTS:
        return "NCHW"
    if len(shape) == 3 and shape[-1] in _CHANNEL_COUNTS:
        return "NHWC"
    return "NCHW"


def _channel_dim(shape: tuple, layout: str):
    return shape[0] if layout == "NCHW" else shape[-1]


def _image_size(spec: InputSpec, layout: str) -> tuple:
    shape = spec.sample_shape
    return (shape[1], shape[2]) if layout == "NCHW" else (shape[0], shape[1])


def prepare(raw: np.ndarray, spec: InputSpec, pre: Preprocess) -> np.ndarray:
    """One raw sample -> one model sample (without the batch axis), checked against the model."""
    pre.check_against([spec])
    return _prepare(raw, spec, pre)


def _prepare(raw: Any, spec: InputSpec, pre: Preprocess) -> np.ndarray:
    array = np.asarray(raw)
    if array.dtype.kind not in "biuf":
        raise DataError(f"a sample for model input {spec.name!r} has dtype {array.dtype}, not numbers; "
                        "give numeric arrays")
    takes_floats = spec.dtype.kind == "f"
    if not takes_floats and array.dtype.kind == "f":
        raise DataError(
            f"{array.dtype} samples cannot feed model input {spec.name!r} ({spec.dtype}): an integer "
            f"input takes integer samples, as they are; convert the data (e.g. x.astype(np.{spec.dtype}))")
    target = spec.sample_shape
    if len(target) == 3 and array.ndim in (2, 3):
        out = _prepare_image(array, target, pre, spec)
    else:
        if not _fits(array.shape, target):
            images = " (or images, HxW or HxWxC)" if len(target) == 3 else ""
            raise DataError(
                f"a sample has shape {tuple(array.shape)} but model input {spec.name!r} wants "
                f"{_show(target)} per sample; give samples of shape {_show(target)}{images}")
        out = _values(array, pre, spec, channel_axis=0) if takes_floats else array
    if not _fits(out.shape, target):
        raise DataError(
            f"a sample has shape {tuple(array.shape)}, {tuple(out.shape)} after preprocessing, but model "
            f"input {spec.name!r} wants {_show(target)} per sample; give samples of shape {_show(target)}")
    if out.dtype != spec.dtype:
        if not takes_floats and out.dtype.kind == "f":  # an integer image after a bilinear resize
            out = np.rint(out)
        out = out.astype(spec.dtype)
    return np.ascontiguousarray(out)


def _prepare_image(image: np.ndarray, target: tuple, pre: Preprocess, spec: InputSpec) -> np.ndarray:
    layout = pre.layout or model_layout(spec)
    channels = _channel_dim(target, layout)
    height, width = _image_size(spec, layout)
    if image.ndim == 2:
        image = image[:, :, None]
    elif image.ndim == 3 and image.shape[0] in _CHANNEL_COUNTS and image.shape[-1] not in _CHANNEL_COUNTS:
        image = np.transpose(image, (1, 2, 0))  # CHW array -> HWC
    if pre.resize:
        image = _resize(image, pre.resize)
    if pre.crop:
        image = _center_crop(image, pre.crop)
    if any(isinstance(t, int) and s != t for s, t in zip(image.shape[:2], (height, width))):
        done = " after resize/crop" if pre.resize or pre.crop else ""
        raise DataError(
            f"images are {image.shape[0]}x{image.shape[1]}{done} but model input {spec.name!r} wants "
            f"{_dim(height)}x{_dim(width)}; set `resize` to ({_dim(height)}, {_dim(width)}) "
            f"(or resize larger and set `crop` to ({_dim(height)}, {_dim(width)}))", params=("resize", "crop"))
    if isinstance(channels, int) and image.shape[-1] != channels:
        if image.shape[-1] == 1 and channels == 3:
            image = np.repeat(image, 3, axis=-1)
        else:
            kind = {1: " (grayscale)", 3: " (RGB)"}.get(channels, "")
            raise DataError(
                f"images have {_count(image.shape[-1], 'channel')} but model input {spec.name!r} wants "
                f"{channels}; convert the images to {channels}-channel{kind} ones")
    out = _values(image, pre, spec, channel_axis=-1) if spec.dtype.kind == "f" else image
    if layout == "NCHW":
        out = np.transpose(out, (2, 0, 1))
    return out


def effective_scale(sample_dtype: Any, pre: Preprocess) -> float:
    """The factor samples of ``sample_dtype`` are multiplied by when they feed a float input."""
    if pre.scale is not None:
        return pre.scale
    return 1 / 255 if np.dtype(sample_dtype).kind in "iu" else 1.0


def _values(x: np.ndarray, pre: Preprocess, spec: InputSpec, channel_axis: int) -> np.ndarray:
    """Scale, then mean/std, in float32 (float64 for a float64 input)."""
    if pre.scale is None and x.dtype.kind in "iu" and x.size:
        low, high = int(x.min()), int(x.max())
        if low < 0 or high > 255:
            raise DataError(
                f"{x.dtype} samples hold values {low}..{high}, but integer samples are taken to be 8-bit "
                f"pixels (0..255, scaled by 1/255); set `scale` (to 1 to feed the values as they are)",
                params=("scale",))
    compute = np.float64 if spec.dtype == np.float64 else np.float32
    scale = effective_scale(x.dtype, pre)
    out = x.astype(compute)
    if scale != 1.0:
        out = out * compute(scale)
    return _normalise(out, pre, channel_axis)


def _normalise(x: np.ndarray, pre: Preprocess, channel_axis: int) -> np.ndarray:
    shape = [1] * x.ndim
    channels = x.shape[channel_axis] if x.ndim else 1
    if x.ndim:
        shape[channel_axis] = -1
    for name in ("mean", "std"):
        given = getattr(pre, name)
        if given is None:
            continue
        if len(given) not in (1, channels):
            raise DataError(f"`{name}` has {len(given)} values but the samples have "
                            f"{_count(channels, 'channel')}; give {_how_many(channels)}", params=(name,))
        values = np.asarray(given, dtype=x.dtype).reshape(shape if len(given) > 1 else [1] * x.ndim)
        x = x - values if name == "mean" else x / values
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
        raise DataError(f"cannot crop {image.shape[0]}x{image.shape[1]} images to {height}x{width}; set "
                        f"`resize` to at least ({height}, {width}) so the crop fits", params=("resize",))
    top = (image.shape[0] - height) // 2
    left = (image.shape[1] - width) // 2
    return image[top:top + height, left:left + width]


def _fits(shape: tuple, target: tuple) -> bool:
    return len(shape) == len(target) and all(t is None or s == t for s, t in zip(shape, target))


def _show(shape: tuple) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def first_sample_dtype(dataset, indices: Optional[Sequence[int]] = None,
                       input_name: Optional[str] = None) -> Optional[np.dtype]:
    """The dtype of the first selected sample of ``dataset`` (``indices[0]``, else sample 0),
    of input ``input_name`` when samples are dicts keyed by input name; None for no samples."""
    if indices is not None and len(indices):
        index = int(indices[0])
    elif len(dataset):
        index = 0
    else:
        return None
    raw, _ = dataset[index]
    if isinstance(raw, Mapping):
        if input_name in raw:
            raw = raw[input_name]
        elif raw:
            raw = next(iter(raw.values()))
        else:
            return None
    return np.asarray(raw).dtype


def describe_scaling(sample_dtype: Any, spec: InputSpec, pre: Preprocess,
                     spelling: Optional[Mapping[str, str]] = None) -> str:
    """One line saying how samples of ``sample_dtype`` become values of model input ``spec``.

    For a summary: "uint8 samples scaled by 1/255 (integer pixels; scale to change)",
    "float32 samples fed as they are", "uint8 samples scaled by 0.5 (scale), then mean and std".
    The parameter names in it are re-spelled with ``spelling`` (as :meth:`QuantlabError.render`
    does; the CLI passes its flags), so the CLI's line says "--scale".
    """
    dtype = np.dtype(sample_dtype)
    if spec.dtype.kind != "f":
        text = f"{dtype} samples fed as they are (model input {spec.name!r} is {spec.dtype})"
        return QuantlabError(text).render(spelling or {})
    used = []
    if pre.scale is not None:
        text = f"{dtype} samples scaled by {_show_scale(pre.scale)} (`scale`)"
        used.append("scale")
    elif dtype.kind in "iu":
        text = f"{dtype} samples scaled by 1/255 (integer pixels; `scale` to change)"
        used.append("scale")
    else:
        text = f"{dtype} samples fed as they are" if pre.mean is None and pre.std is None else \
            f"{dtype} samples not scaled"
    normalised = [n for n in ("mean", "std") if getattr(pre, n) is not None]
    if normalised:
        text += ", then " + " and ".join(f"`{n}` {_show_values(getattr(pre, n))}" for n in normalised)
        used += normalised
    return QuantlabError(text, params=used).render(spelling or {})


def _show_scale(scale: float) -> str:
    for denominator in (255, 256, 65535):
        if math.isclose(scale, 1 / denominator, rel_tol=1e-9):
            return f"1/{denominator}"
    return f"{scale:g}"


def select_indices(length: int, num_samples: Optional[int], seed: int) -> np.ndarray:
    """A fixed, seedable subset of sample indices, in ascending order (the order never matters
    for the statistics, but a canonical order makes runs easy to compare)."""
    if num_samples is not None and not (_is_int(num_samples) and num_samples > 0):
        raise DataError(f"`num_samples` must be a positive integer, got {num_samples!r}; set `num_samples` "
                        "to how many samples to use, or leave it unset to use all", params=("num_samples",))
    if length == 0:
        raise DataError("the data set is empty (no samples); give data with at least one sample")
    if num_samples is None or num_samples >= length:
        return np.arange(length)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(length, size=int(num_samples), replace=False))


@dataclass
class Batch:
    inputs: dict  # input name -> array with a batch axis
    labels: Optional[np.ndarray]
    indices: np.ndarray


def check_batch_size(batch_size: Any) -> None:
    if not (_is_int(batch_size) and batch_size > 0):
        raise DataError(f"`batch_size` must be a positive integer, got {batch_size!r}; set `batch_size` to the "
                        "samples per ONNX Runtime run (e.g. 32)", params=("batch_size",))


def iterate_batches(dataset, indices: np.ndarray, specs: Sequence[InputSpec], pre: Preprocess,
                    batch_size: int) -> Iterator[Batch]:
    """Preprocessed batches of the selected samples, with labels when every sample has one.

    The batch size and the preprocessing (:meth:`Preprocess.check_against`) are checked when
    this is called, before the first batch is made or run.
    """
    check_batch_size(batch_size)
    pre.check_against(specs)
    return _batches(dataset, indices, list(specs), pre, int(batch_size))


def _batches(dataset, indices: np.ndarray, specs: list, pre: Preprocess, batch_size: int) -> Iterator[Batch]:
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        columns: dict[str, list] = {spec.name: [] for spec in specs}
        labels = []
        for index in chunk:
            raw, label = dataset[int(index)]
            labels.append(label)
            if isinstance(raw, Mapping):
                missing = [s.name for s in specs if s.name not in raw]
                if missing:
                    raise DataError(f"sample {index} has no array for model input(s) {missing}; key each "
                                    f"sample's arrays by the model's input names {[s.name for s in specs]}")
                for spec in specs:
                    columns[spec.name].append(_prepare(raw[spec.name], spec, pre))
            else:
                if len(specs) != 1:
                    raise DataError(
                        f"the model has {len(specs)} inputs ({[s.name for s in specs]}); give a "
                        "sample per input (an .npz keyed by input name, or a callable returning dicts)"
                    )
                columns[specs[0].name].append(_prepare(raw, specs[0], pre))
        inputs = {spec.name: _stack(columns[spec.name], spec, pre) for spec in specs}
        has_labels = all(label is not None for label in labels)
        yield Batch(inputs, np.asarray(labels, dtype=np.int64) if has_labels else None, chunk)


def _stack(arrays: list, spec: InputSpec, pre: Preprocess) -> np.ndarray:
    """One batch of samples; samples of different shapes (a model with dynamic height and width,
    images of different sizes) cannot share a run, and only the user can pick the size."""
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        dynamic = [axis + 1 for axis, dim in enumerate(spec.sample_shape) if dim is None]
        raise DataError(
            f"model input {spec.name!r} has dynamic axes {dynamic} ({_show(spec.sample_shape)} per sample) and "
            f"the samples differ in shape ({_show(shapes[0])} and {_show(shapes[-1])}); set `resize` to the "
            "height and width to calibrate at (the size the engine will run at)", params=("resize",))
    return np.stack(arrays)


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
