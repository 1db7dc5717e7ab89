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


def _terminate(signum, frame) -> None:
    from .errors import Terminated

    raise Terminated()


def _interrupt_behind(exc: BaseException) -> Optional[BaseException]:
    """The KeyboardInterrupt/Terminated that caused ``exc``, if any.

    An extension module interrupted while it initialises may report that as an ImportError
    (ONNX Runtime's does: "initialization failed"), with the interrupt as its cause.
    """
    from .errors import Terminated

    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, (KeyboardInterrupt, Terminated)):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .errors import Terminated

    signal.signal(signal.SIGTERM, _terminate)
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
