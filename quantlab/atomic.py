"""Atomic file writes: a reader sees the old file or the complete new one, never half of one.

A calibration cache that is cut short by a crash or a full disk still parses as a (shorter)
valid cache, and TensorRT would silently build with missing ranges; so every file quantlab
writes goes to a temporary file in the same folder first and is renamed into place.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

from .errors import QuantlabError

PathLike = Union[str, "os.PathLike[str]"]


def write_bytes_atomic(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path.

    Raises QuantlabError (not OSError) when the folder is missing or not writable, so the
    CLI can say which path is the problem.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise QuantlabError(
            f"cannot write {target}: folder {folder} does not exist (create it or pick another -o)"
        )
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise QuantlabError(f"cannot write {target}: {exc.strerror} (pick a writable -o path)") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise QuantlabError(f"cannot write {target}: {exc.strerror}") from exc
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def write_text_atomic(path: PathLike, text: str) -> Path:
    """Write ``text`` as UTF-8 with ``\\n`` line endings, atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def check_writable(path: PathLike) -> None:
    """Fail early, before a long calibration, when ``path`` cannot be written."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise QuantlabError(
            f"cannot write {target}: folder {folder} does not exist (create it or pick another -o)"
        )
    if target.is_dir():
        raise QuantlabError(f"cannot write {target}: it is a folder (give a file name)")
    if not os.access(folder, os.W_OK):
        raise QuantlabError(f"cannot write {target}: folder {folder} is not writable")


def prepare_folder(path: PathLike) -> Path:
    """Create an output folder (and its parents) up front, so a bad path fails before long work."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QuantlabError(f"cannot create folder {folder}: {exc.strerror}") from exc
    if not os.access(folder, os.W_OK):
        raise QuantlabError(f"folder {folder} is not writable")
    return folder
