"""The console script's entry point, light enough to install the signal handlers first.

agereg's imports (numpy, click, rich, ...) take a few tenths of a second. A Ctrl-C or
SIGTERM in that time would end in Python's KeyboardInterrupt traceback (or a silent
death); nothing has been read or written yet, so it ends the process at once with the
exit code and the one line :func:`agereg.cli.main` gives for it later.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

_NAMES: dict[int, str] = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


def _quit(signum: int, frame: FrameType | None) -> None:
    os.write(2, f"interrupted ({_NAMES.get(signum, 'signal')})\n".encode())
    os._exit(128 + signum)


def run() -> None:
    """Install the early handlers, then import and run the CLI (which installs its own)."""
    for sig in _NAMES:
        signal.signal(sig, _quit)
    from agereg.cli import run as run_cli

    run_cli()
