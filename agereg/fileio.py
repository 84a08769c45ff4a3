"""Small file helpers: atomic writes and durable appends.

Every summary file is written to a temporary file in the same folder, flushed, fsynced
and renamed over the target, so a reader sees the old file or the new one, never half.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from agereg.errors import RunError


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically; raise :class:`RunError` on OSError."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise RunError(f"{path}: cannot write ({exc.strerror or exc}); "
                       "check free space and permissions") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def append_durable(path: Path, text: str) -> None:
    """Append ``text`` and fsync before returning: once this returns, it survives a crash."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise RunError(f"{path}: cannot append ({exc.strerror or exc}); "
                       "check free space and permissions, then resume with "
                       "`agereg search --resume`") from None
