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
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .errors import DataError, QuantlabError

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

    In an ``.npz``, arrays are picked by name, never by position or elimination:

    * inputs: the array named ``x`` (or ``inputs``, ``images``, ``data``) or named like the
      model's input (``input_names``); exactly one of these names must be present, else the
      file is refused as ambiguous. A model with several inputs needs one array per input,
      each named after its input. A file whose only array is ``arr_0`` (``np.savez(path, x)``,
      a positional save) is accepted: there is nothing else it could mean.
    * labels (optional): the array named ``y`` (or ``labels``, ``label``, ``targets``), one
      integer class per sample; at most one of these names may be present.

    Other arrays are ignored. A lone array with another name (``features``) is refused with
    what to name it: silently taking "the only remaining array" fed labels or masks as inputs.
    """

    name = "npy"
    _INPUT_KEYS = ("x", "inputs", "images", "data")
    _LABEL_KEYS = ("y", "labels", "label", "targets")
    _POSITIONAL = "arr_0"

    def __init__(self, source: str | Path, input_names: Sequence[str] = ()):
        path = Path(source)
        if not path.exists():
            raise DataError(f"data file {path} does not exist; check the path")
        self.source = str(path)
        self.labels: Optional[np.ndarray] = None
        self.inputs: dict[str, np.ndarray] | None = None
        if path.suffix.lower() == ".npy":
            try:
                self.array = NpyRows(path)
            except (OSError, ValueError, EOFError) as exc:
                raise DataError(f"cannot read {path} as a .npy array: {exc}; save it with np.save") from exc
        else:
            self._load_npz(path, list(input_names))
        if self.array.ndim == 0:
            raise DataError(f"{path} holds a scalar, not samples; save an array whose first axis indexes samples")
        if len(self.array) == 0:
            raise DataError(f"{path} holds no samples (an array of shape {tuple(self.array.shape)}); "
                            "save at least one sample")
        if self.labels is not None and len(self.labels) != len(self.array):
            raise DataError(f"{path}: {len(self.labels)} labels for {len(self.array)} samples; "
                            "give one label per sample")

    def _load_npz(self, path: Path, input_names: list) -> None:
        try:
            archive = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"cannot read {path} as a .npz archive ({exc}); the file is damaged or "
                            "not one: save it again with np.savez") from exc
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DataError(f"{path} holds a single .npy array, not an .npz archive; rename it to .npy")
        with archive:
            keys = list(archive.files)
            input_keys = self._input_keys(path, keys, input_names)
            label_keys = [k for k in self._LABEL_KEYS if k in keys and k not in input_keys]
            if len(label_keys) > 1:
                raise DataError(f"{path} holds labels under several names {label_keys}; keep one, named 'y'")
            arrays = {key: _npz_member(archive, key, path) for key in input_keys}
            if label_keys:
                self.labels = _labels(_npz_member(archive, label_keys[0], path), label_keys[0], path)
        if len(input_keys) > 1:
            lengths = {key: len(arr) if arr.ndim else 0 for key, arr in arrays.items()}
            if len(set(lengths.values())) > 1:
                raise DataError(f"{path}: the input arrays have different sample counts {lengths}; give "
                                "every input one row per sample")
            self.inputs = arrays
        self.array = arrays[input_keys[0]]

    def _input_keys(self, path: Path, keys: list, input_names: list) -> list:
        """The .npz keys holding the model's inputs (the rule in the class docstring)."""
        if len(input_names) > 1:
            missing = [n for n in input_names if n not in keys]
            if missing:
                raise DataError(
                    f"{path} has no arrays named {missing} (it holds {keys}); a model with several inputs "
                    f"needs one array per input, named after it: {list(input_names)}")
            return list(input_names)
        candidates = [n for n in input_names if n in keys]
        candidates += [k for k in self._INPUT_KEYS if k in keys and k not in candidates]
        if not candidates and keys == [self._POSITIONAL]:
            candidates = [self._POSITIONAL]
        model_name = f" or {input_names[0]!r} (the model input's name)" if input_names else ""
        if len(candidates) > 1:
            raise DataError(f"{path} holds several arrays that could be the inputs, {candidates}; keep "
                            f"one, named 'x'{model_name}")
        if not candidates:
            aliases = ", ".join(repr(k) for k in self._INPUT_KEYS[1:])
            raise DataError(
                f"{path} holds arrays {keys} but none is named 'x' (nor {aliases}{model_name}); save the "
                "inputs as 'x' and any labels as 'y': np.savez(path, x=..., y=...)")
        return candidates

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


def _npz_member(archive, key: str, path: Path) -> np.ndarray:
    try:
        value = archive[key]
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"cannot read array {key!r} of {path} ({exc}); save it again with np.savez "
                        "(plain numeric arrays: object arrays need pickle, which is not loaded)") from exc
    if not isinstance(value, np.ndarray):
        raise DataError(f"member {key!r} of {path} is not a .npy array; save the archive with np.savez")
    return value


def _labels(labels: np.ndarray, key: str, path: Path) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{path}: labels {key!r} have shape {labels.shape}; give one integer class per "
                        "sample, shape (N,) (for one-hot labels save y.argmax(axis=1))")
    if labels.dtype.kind not in "iub" and not (labels.dtype.kind == "f" and np.all(np.mod(labels, 1) == 0)):
        raise DataError(f"{path}: labels {key!r} are {labels.dtype} values, not class numbers; give one "
                        "integer class per sample")
    return labels


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
                "point `source` at a folder of images or of one sub-folder per class",
                params=("source",),
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
        function = load_callable(source)
        try:
            produced = function()
            if produced is None or isinstance(produced, (str, bytes, Mapping)) or not _iterable(produced):
                what = "None" if produced is None else f"a {type(produced).__name__}"
                raise DataError(f"{source} returned {what}; it must return a sequence of samples (arrays, "
                                "dicts of arrays by input name, or (inputs, label) pairs)")
            self.samples = list(produced)
        except DataError:
            raise
        except Exception as exc:  # the user's code (the call, or a generator it returned): a data problem
            raise DataError(f"{source} raised {type(exc).__name__}: {exc}; fix that function") from exc
        if not self.samples:
            raise DataError(f"{source} returned no samples; it must return at least one")
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


def _iterable(value: Any) -> bool:
    try:
        iter(value)
    except TypeError:
        return False
    return True


def load_callable(source: str, param: str = "source", kind: str = "function",
                   error: type[QuantlabError] = DataError) -> Callable[[], Any]:
    """The object ``module:name`` or ``path/file.py:name`` names; errors are ``error``s naming the
    parameter ``param`` it was given as (data sources here, metric plugins elsewhere)."""
    module_name, _, attr = source.rpartition(":")
    if module_name.endswith(".py"):
        if not Path(module_name).is_file():
            raise error(f"no such file {module_name} (in `{param}` {source!r}); check the path", params=(param,))
        module_spec = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
        if module_spec is None or module_spec.loader is None:
            raise error(f"cannot load {module_name} as a Python file (in `{param}` {source!r}); check the path",
                        params=(param,))
        load = lambda: _exec(module_spec)  # noqa: E731
    else:
        load = lambda: importlib.import_module(module_name)  # noqa: E731
    try:
        module = load()
    except ImportError as exc:
        raise error(f"cannot import {module_name!r} (in `{param}` {source!r}): {exc}; check the module name "
                    "and that it is importable (installed, or on PYTHONPATH)", params=(param,)) from exc
    except Exception as exc:  # the user's module failed while running its top level
        raise error(f"importing {module_name} raised {type(exc).__name__}: {exc}; fix that module") from exc
    function = getattr(module, attr, None)
    if not callable(function):
        raise error(f"{module_name} has no {kind} named {attr!r}; name a {kind} it defines (module:{attr})",
                    params=(param,))
    return function


def _exec(module_spec):
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def check_source_exists(source: Any) -> None:
    """Refuse a data source that names nothing that exists, saying so plainly.

    A source is an existing file or folder, or ``module:function`` (checked for importability
    only when loaded) / ``path/file.py:function`` (whose file must exist). Anything else is a
    missing path. Objects that are not strings or paths (a dataset passed from Python) pass.
    """
    if not isinstance(source, (str, os.PathLike)):
        return
    text = os.fspath(source)
    if Path(text).exists():
        return
    module, sep, attr = text.rpartition(":")
    if sep and module and attr.isidentifier():
        if module.endswith(".py") and not Path(module).is_file():
            raise DataError(f"no such file {module} (in `source` {text!r}); check the path", params=("source",))
        if module.endswith(".py") or all(part.isidentifier() for part in module.split(".")):
            return
    raise DataError(f"no such file or folder {text}; check the path given as `source`", params=("source",))
