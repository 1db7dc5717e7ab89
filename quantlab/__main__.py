"""The ``quantlab`` command's entry point: ``quantlab ...`` or ``python -m quantlab ...``.

Kept free of heavy imports on purpose: ONNX Runtime, numpy and onnx take a noticeable moment
to import, and a Ctrl-C or SIGTERM in that moment must end the command with one line, like
everywhere else, not with a traceback from inside an import.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from typing import Optional

_received: list[int] = []  # signals that arrived: an import may swallow the exception they raised


def _terminate(signum, frame) -> None:
    from .errors import Terminated

    _received.append(signum)
    raise Terminated()


def _interrupt(signum, frame) -> None:
    _received.append(signum)
    raise KeyboardInterrupt


def _interrupt_behind(exc: BaseException) -> Optional[BaseException]:
    """The KeyboardInterrupt/Terminated that caused ``exc``, if any.

    An extension module interrupted while it initialises may report that as an ImportError:
    ONNX Runtime's keeps the interrupt as its cause ("initialization failed"), numpy's loses it
    ("PyCapsule_Import could not import module datetime"); so the signals received count too.
    """
    from .errors import Terminated

    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, (KeyboardInterrupt, Terminated)):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    if signal.SIGTERM in _received:
        return Terminated()
    if signal.SIGINT in _received:
        return KeyboardInterrupt()
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .errors import Terminated

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        from .cli import run
    except (KeyboardInterrupt, Terminated, ImportError) as exc:
        interrupt = _interrupt_behind(exc)
        if interrupt is None:
            print(f"quantlab: error: a dependency failed to import ({exc}); reinstall quantlab with pip",
                  file=sys.stderr)
            return 2
        verb, code = ("terminated", 143) if isinstance(interrupt, Terminated) else ("interrupted", 130)
        print(f"quantlab: {verb}; no output was written", file=sys.stderr)
        return code
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
