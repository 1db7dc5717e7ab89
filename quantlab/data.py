"""Dataset adapters: turn the user's files into raw samples.

An adapter reads one kind of source and yields raw samples (an image as an HxW or HxWxC array,
or an array already shaped for the model) and, where the source has them, integer labels.
Turning raw samples into model inputs is :mod:`quantlab.preprocess`'s job, so each adapter
stays small. Adapters register under the entry-point group ``quantlab.datasets``; the built-ins
here are registered in quantlab's own ``pyproject.toml`` exactly like a third-party one.

Each adapter class has a ``name``, a ``detect(source)`` class method used to pick an adapter
when the user does not name one, and ``__len__``/``__getitem__`` returning ``(array, label)``.
"""

from __future__ import annotations

import gzip
import importlib
import importlib.util
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .errors import DataError

Sample = tuple  # (np.ndarray | dict[str, np.ndarray], Optional[int])

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

# IDX type codes (http://yann.lecun.com/exdb/mnist/ format description).
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (MNIST / Fashion-MNIST format), gzipped or not, into an array."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path}: {exc.strerror}") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path} is a damaged gzip file ({exc}); download it again") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number); expected MNIST-style data")
    dtype = _IDX_DTYPES[raw[2]]
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path} holds {len(raw) - header} data bytes but its header promises {expected} "
            f"(shape {tuple(shape)}): the file is truncated or damaged"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


class IdxDataset:
    """IDX image files (MNIST, Fashion-MNIST); labels from the matching ``labels-idx1`` file.

    ``source`` is an ``*images-idx3-ubyte[.gz]`` file, or a folder holding exactly one.
    """

    name = "idx"

    def __init__(self, source: str | Path, labels: str | Path | None = None):
        path = Path(source)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if "idx3" in p.name)
            if len(found) != 1:
                raise DataError(
                    f"{path} must hold exactly one *-idx3-ubyte images file, found {len(found)}; "
                    "pass the file itself"
                )
            path = found[0]
        if not path.exists():
            raise DataError(f"data file {path} does not exist")
        self.images = read_idx(path)
        if self.images.ndim < 2:
            raise DataError(f"{path} holds a {self.images.ndim}-d IDX array, not images")
        label_path = Path(labels) if labels else _sibling_labels(path)
        self.labels = read_idx(label_path) if label_path is not None else None
        if self.labels is not None and len(self.labels) != len(self.images):
            raise DataError(
                f"{label_path} has {len(self.labels)} labels for {len(self.images)} images"
            )
        self.source = str(path)

    @classmethod
    def detect(cls, source: str) -> bool:
        path = Path(source)
        if path.is_dir():
            return any("idx3" in p.name for p in path.iterdir())
        return "idx" in path.name and path.is_file()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        label = int(self.labels[index]) if self.labels is not None else None
        return self.images[index], label


def _sibling_labels(images: Path) -> Optional[Path]:
    name = images.name.replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1")
    candidate = images.with_name(name)
    return candidate if candidate != images and candidate.exists() else None


class ArrayDataset:
    """``.npy`` or ``.npz`` arrays; the first axis indexes samples.

    In an ``.npz``, the inputs are the array named ``x``, ``inputs``, ``images`` or ``data``
    (or the only array), and labels the one named ``y`` or ``labels``. An ``.npz`` whose keys are
    the model's input names feeds a multi-input model (``input_names`` tells which keys).
    """

    name = "npy"
    _INPUT_KEYS = ("x", "inputs", "images", "data")
    _LABEL_KEYS = ("y", "labels", "label", "targets")

    def __init__(self, source: str | Path, input_names: Sequence[str] = ()):
        path = Path(source)
        if not path.exists():
            raise DataError(f"data file {path} does not exist")
        self.source = str(path)
        self.labels: Optional[np.ndarray] = None
        self.inputs: dict[str, np.ndarray] | None = None
        try:
            loaded = NpyRows(path) if path.suffix.lower() == ".npy" else np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {path} as a .npy/.npz array: {exc}") from exc
        if isinstance(loaded, NpyRows):
            self.array = loaded
        else:
            with loaded:
                arrays = {key: loaded[key] for key in loaded.files}
            self.labels = next((arrays.pop(k) for k in self._LABEL_KEYS if k in arrays), None)
            if input_names and len(input_names) > 1 and all(n in arrays for n in input_names):
                self.inputs = {n: arrays[n] for n in input_names}
                self.array = arrays[input_names[0]]
            else:
                key = next((k for k in self._INPUT_KEYS if k in arrays), None)
                if key is None and len(arrays) == 1:
                    key = next(iter(arrays))
                if key is None:
                    raise DataError(
                        f"{path} holds arrays {sorted(arrays)}; name the inputs 'x' (and labels 'y')"
                    )
                self.array = arrays[key]
        if self.array.ndim == 0:
            raise DataError(f"{path} holds a scalar, not samples")
        if self.labels is not None and len(self.labels) != len(self.array):
            raise DataError(f"{path}: {len(self.labels)} labels for {len(self.array)} samples")

    @classmethod
    def detect(cls, source: str) -> bool:
        return Path(source).suffix.lower() in (".npy", ".npz") and Path(source).is_file()

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, index: int) -> Sample:
        label = int(self.labels[index]) if self.labels is not None else None
        if self.inputs is not None:
            return {name: arr[index] for name, arr in self.inputs.items()}, label
        return self.array[index], label


class NpyRows:
    """The rows of a ``.npy`` file, read from disk one at a time as they are asked for.

    Neither loaded whole nor memory-mapped: a mapping's touched pages stay in the process's
    resident memory, so calibrating on 1,024 ImageNet-sized samples would add the whole 600 MB
    file to the peak. Each row is one ``pread`` into a fresh array.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with open(self.path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)  # 3.0 differs only in encoding
            shape, fortran, dtype = read_header(handle)
            self._offset = handle.tell()
        if dtype.hasobject:
            raise ValueError("object arrays are not supported (they need pickle)")
        if fortran and len(shape) > 1:
            raise ValueError("Fortran-ordered arrays are not supported; save it C-ordered (np.ascontiguousarray)")
        self.shape, self.dtype, self.ndim = tuple(shape), dtype, len(shape)
        self._row_shape = self.shape[1:]
        self._row_bytes = int(np.prod(self._row_shape, dtype=np.int64)) * dtype.itemsize
        expected = self._offset + (self.shape[0] if self.shape else 1) * self._row_bytes
        size = self.path.stat().st_size
        if size < expected:
            raise ValueError(f"the file is truncated: {size} bytes, the header promises {expected}")

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> np.ndarray:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        with open(self.path, "rb") as handle:
            data = os.pread(handle.fileno(), self._row_bytes, self._offset + index * self._row_bytes)
        return np.frombuffer(data, dtype=self.dtype).reshape(self._row_shape).copy()


class ImageFolderDataset:
    """A folder of images, either flat (no labels) or one sub-folder per class.

    Classes are the sorted sub-folder names, so label ``k`` is the k-th name (as in
    torchvision's ImageFolder). Images are decoded with Pillow to grayscale or RGB to match the
    model's channel count (``channels``).
    """

    name = "images"

    def __init__(self, source: str | Path, channels: int = 3):
        root = Path(source)
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist")
        subdirs = sorted(p for p in root.iterdir() if p.is_dir())
        files: list[tuple[Path, Optional[int]]] = []
        if subdirs:
            self.classes = [p.name for p in subdirs]
            for label, sub in enumerate(subdirs):
                files += [(f, label) for f in sorted(sub.rglob("*")) if _is_image(f)]
        else:
            self.classes = []
            files = [(f, None) for f in sorted(root.iterdir()) if _is_image(f)]
        if not files:
            raise DataError(
                f"no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...) found in {root}; "
                "point --data at a folder of images or at one sub-folder per class"
            )
        self.files = files
        self.channels = channels
        self.source = str(root)

    @classmethod
    def detect(cls, source: str) -> bool:
        root = Path(source)
        return root.is_dir()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample:
        from PIL import Image, UnidentifiedImageError

        path, label = self.files[index]
        try:
            with Image.open(path) as image:
                mode = "L" if self.channels == 1 else "RGB"
                array = np.asarray(image.convert(mode))
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"cannot decode image {path}: {exc}") from exc
        return array, label


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


class CallableDataset:
    """Samples from a Python callable named ``module:function`` (or ``path/to/file.py:function``).

    The callable takes no arguments and returns a sequence (or iterable) of samples; a sample is
    an array, a dict of arrays keyed by input name, or an ``(inputs, label)`` pair.
    """

    name = "callable"

    def __init__(self, source: str):
        function = _load_callable(source)
        try:
            produced = function()
        except Exception as exc:  # the user's code: report it as a data problem
            raise DataError(f"{source} raised {type(exc).__name__}: {exc}") from exc
        self.samples = list(produced)
        self.source = source

    @classmethod
    def detect(cls, source: str) -> bool:
        module, sep, attr = source.rpartition(":")
        return bool(sep) and attr.isidentifier() and not Path(source).exists() and len(module) > 1

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        sample = self.samples[index]
        if isinstance(sample, tuple) and len(sample) == 2:
            inputs, label = sample
            return inputs, (None if label is None else int(label))
        return sample, None


def _load_callable(spec: str) -> Callable[[], Any]:
    module_name, _, attr = spec.rpartition(":")
    try:
        if module_name.endswith(".py"):
            spec = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
            if spec is None or spec.loader is None:
                raise ImportError(f"not a Python file: {module_name}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except (ImportError, OSError) as exc:
        raise DataError(f"cannot import {module_name!r} for --data {spec}: {exc}") from exc
    function = getattr(module, attr, None)
    if not callable(function):
        raise DataError(f"{module_name} has no callable named {attr!r}")
    return function
