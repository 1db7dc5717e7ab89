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


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that ``finally`` blocks remove temporary files."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def main(argv: Optional[Sequence[str]] = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        from .cli import run
    except KeyboardInterrupt:
        print("quantlab: interrupted; no output was written", file=sys.stderr)
        return 130
    except Terminated:
        print("quantlab: terminated; no output was written", file=sys.stderr)
        return 143
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
