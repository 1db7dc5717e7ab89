"""Safe outputs: a reader sees the old files or the complete new ones, never half of them.

A calibration cache that is cut short by a crash or a full disk still parses as a (shorter)
valid cache, and TensorRT would silently build with missing ranges. So every file quantlab
writes goes through here, and the rules are:

* **Atomic.** Data goes to a temporary file in the target's folder, is flushed to disk and is
  then renamed over the target. Temporary files are named ``.<target>.quantlab-<pid>-<token>.tmp``;
  they are removed when the write fails or is interrupted (SIGINT, and SIGTERM once the CLI has
  turned it into an exception), and the next successful write to the same target removes the
  ones a killed process (SIGKILL, power loss) left behind, recognised by their dead process id.
* **One commit point.** A command that writes several files (cache + table, report + figures)
  stages all of them in an :class:`OutputSet` and renames them only after every one is complete,
  with SIGINT/SIGTERM held back during the renames, so an interrupt leaves either all old files
  or all new ones. (Only SIGKILL between two renames can split a set; the quantlab table records
  the SHA-256 of its cache, so such a pair is detectable.)
* **Regular files only.** A target that exists and is not a regular file (a FIFO, a character or
  block device such as ``/dev/null``, a socket, a folder) is refused: replacing it would destroy
  something that is not ours. A symlink is *followed*: the file it points to is replaced
  atomically and the link stays a link, which is what ``cp`` and editors do and what a user who
  keeps ``model.cache -> caches/v3.cache`` expects.
* **Never over an input.** No output may replace a file the same command reads (model, data,
  statistics, cache), compared by resolved path and by device and inode (hard links included).
  Library calls pass their inputs to :func:`check_output`; the CLI additionally declares every
  input of a command with :func:`protect_inputs`, which every write in its scope checks.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import secrets
import signal
import stat
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Optional, Union

from .errors import OutputError

PathLike = Union[str, "os.PathLike[str]"]

_TEMP = re.compile(r"^\.(?P<name>.+)\.quantlab-(?P<pid>\d+)-[0-9a-f]+\.tmp$")
_protected: contextvars.ContextVar[tuple] = contextvars.ContextVar("quantlab_protected_inputs", default=())
_written: list[Path] = []


# --------------------------------------------------------------------------- checks


def _identity(path: Path) -> Optional[tuple]:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _input_paths(inputs: Iterable) -> list[Path]:
    """Existing files among ``inputs`` (paths, ``file.py:function`` data specs, None, non-paths)."""
    found = []
    for item in inputs:
        if item is None or not isinstance(item, (str, os.PathLike)):
            continue
        text = os.fspath(item)
        candidates = [text]
        module, sep, _ = text.rpartition(":")
        if sep and module:
            candidates.append(module)
        for candidate in candidates:
            if candidate and os.path.isfile(candidate):
                found.append(Path(candidate))
                break
    return found


def _same_file(target: Path, inputs: Iterable) -> Optional[Path]:
    real = Path(os.path.realpath(target))
    ident = _identity(real)
    for source in _input_paths(inputs):
        if Path(os.path.realpath(source)) == real or (ident is not None and _identity(source) == ident):
            return source
    return None


def check_output(path: PathLike, inputs: Iterable = (), *, what: str = "output") -> Path:
    """Check, before any long work, that ``path`` may be written; return the path to replace.

    Refuses a missing or unwritable folder, a target that is a folder, FIFO, device or socket,
    and a target that is one of ``inputs`` (or of the inputs declared by :func:`protect_inputs`).
    A symlink resolves to the file it points to, which is what gets replaced.
    """
    target = Path(path)
    if not str(path).strip():
        raise OutputError(f"the {what} path is empty")
    real = Path(os.path.realpath(target))
    folder = real.parent
    if os.path.lexists(target):
        try:
            mode = os.stat(target).st_mode
        except OSError:
            mode = None  # a dangling symlink: its target is created
        if mode is not None and stat.S_ISDIR(mode):
            raise OutputError(f"cannot write {target}: it is a folder (give a file name)")
        if mode is not None and not stat.S_ISREG(mode):
            kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                    else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
            raise OutputError(f"refusing to write {target}: it is {kind}, not a regular file; "
                              "quantlab replaces its outputs, so give the path of a regular file")
    if not folder.is_dir():
        raise OutputError(f"cannot write {target}: folder {folder} does not exist (create it or pick another path)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {target}: folder {folder} is not writable")
    clash = _same_file(target, list(inputs) + list(_protected.get()))
    if clash is not None:
        raise OutputError(f"refusing to write {target}: it is {clash}, an input of this command; "
                          "pick another output path")
    return real


def check_outputs(paths: dict[str, Optional[PathLike]], inputs: Iterable = ()) -> None:
    """:func:`check_output` for each of a command's outputs (name -> path; None: not written),
    and no two of them the same file."""
    seen: dict[Path, str] = {}
    for name, path in paths.items():
        if path is None:
            continue
        real = check_output(path, inputs)
        if real in seen:
            raise OutputError(f"`{seen[real]}` and `{name}` are the same file {path}; give them different paths",
                              params=(seen[real], name))
        seen[real] = name


def check_output_folder(path: PathLike) -> Path:
    """Check that ``path`` is a writable folder or can be created (nothing is created yet)."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"cannot write into {folder}: it is a file, not a folder")
    ancestor = folder
    while not ancestor.exists():
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"cannot create folder {folder}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write into {folder}: {ancestor} is not writable")
    return folder


@contextlib.contextmanager
def protect_inputs(paths: Iterable) -> Iterator[None]:
    """Within this block, no quantlab write may replace any of ``paths``."""
    token = _protected.set(tuple(_protected.get()) + tuple(p for p in paths if p is not None))
    try:
        yield
    finally:
        _protected.reset(token)


# --------------------------------------------------------------------------- writing


def written_files() -> list[Path]:
    """Files committed by this process since :func:`reset_written` (for true messages on interrupt)."""
    return list(_written)


def reset_written() -> None:
    _written.clear()


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then act on them as usual.

    A Python signal handler runs in the main thread between bytecodes, whatever thread the
    kernel delivered to, so swapping the handlers (not the thread's signal mask) is what defers.
    Off the main thread, handlers cannot be changed and the block runs as is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, lambda number, frame: pending.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in pending[:1]:
            handler = previous[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(target: Path) -> list[Path]:
    """Remove the temporary files of ``target`` left by quantlab processes that no longer run."""
    removed = []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match and match["name"] == target.name and not _pid_alive(int(match["pid"])):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


class OutputSet:
    """Files that one command writes, committed together.

    ``add`` writes each file's data to a temporary file next to its target at once (so the
    expensive part and any disk-full error happen before anything is replaced); ``commit``
    renames them all, in the order added, with interrupts held back. Used as a context manager,
    leaving the block by an exception discards every staged file (and folders it created).
    """

    def __init__(self, inputs: Iterable = ()):
        self._inputs = list(inputs)
        self._staged: list[tuple[Path, Path, Path]] = []  # (temp, real target, target as given)
        self._folders: list[Path] = []
        self.committed: list[Path] = []

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()

    def make_folder(self, path: PathLike) -> Path:
        """Create ``path`` (and parents) for outputs; removed again on discard if still empty."""
        folder = check_output_folder(path)
        missing = []
        probe = folder
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create folder {folder}: {exc.strerror}") from exc
        self._folders += reversed(missing)
        return folder

    def add(self, path: PathLike, data: bytes) -> Path:
        target = Path(path)
        real = check_output(target, self._inputs)
        if any(real == staged for _, staged, _ in self._staged):
            raise OutputError(f"two outputs of this command are the same file {target}; give them different paths")
        tmp = real.parent / f".{real.name}.quantlab-{os.getpid()}-{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot write {target}: {exc.strerror}") from exc
        self._staged.append((tmp, real, target))
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            self.discard()
            raise OutputError(f"cannot write {target}: {exc.strerror}") from exc
        except BaseException:
            self.discard()
            raise
        return target

    def add_text(self, path: PathLike, text: str) -> Path:
        """Stage ``text`` as UTF-8 with ``\\n`` line endings."""
        return self.add(path, text.encode("utf-8"))

    def commit(self) -> list[Path]:
        """Rename every staged file into place; return the targets (as given)."""
        with deferred_signals():
            for tmp, real, target in self._staged:
                try:
                    os.replace(tmp, real)
                except OSError as exc:
                    self.discard()
                    raise OutputError(f"cannot write {target}: {exc.strerror}") from exc
                self.committed.append(target)
                _written.append(target)
            for folder in {real.parent for _, real, _ in self._staged}:
                _fsync_folder(folder)
        for _, real, _ in self._staged:
            remove_stale_temps(real)
        self._staged = []
        self._folders = []
        return list(self.committed)

    def discard(self) -> None:
        """Remove every staged temporary file, and the folders created for them if empty."""
        for tmp, _, _ in self._staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self._staged = []
        for folder in reversed(self._folders):
            with contextlib.suppress(OSError):
                folder.rmdir()
        self._folders = []


def write_bytes_atomic(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring) and return the path."""
    with OutputSet() as outputs:
        outputs.add(path, data)
        outputs.commit()
    return Path(path)


def write_text_atomic(path: PathLike, text: str) -> Path:
    """Write ``text`` as UTF-8 with ``\\n`` line endings, atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))
