"""Small file helpers: atomic writes and durable appends.

Every file agereg writes is first written to a temporary file in the same folder,
flushed, fsynced and renamed over the target, so a reader sees the old file or the new
one, never half of one, and a failed write leaves no temporary file behind.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np

from agereg.errors import RunError

# mkstemp creates files readable by the owner only; results are meant to be shared like
# any file the user writes, so apply the process umask as open() would.
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Replace ``path`` with what ``write`` writes to a binary file; OSError propagates."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _FILE_MODE)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically; raise :class:`RunError` on OSError."""
    try:
        atomic_write(path, lambda f: f.write(data))
    except OSError as exc:
        raise RunError(f"{path}: cannot write ({exc.strerror or exc}); "
                       "check free space and permissions") from None


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with UTF-8 ``text`` atomically; raise :class:`RunError` on OSError."""
    atomic_write_bytes(path, text.encode("utf-8"))


def save_array(path: Path, arr: np.ndarray) -> None:
    """``numpy.save`` ``arr`` atomically (never pickled)."""
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


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
