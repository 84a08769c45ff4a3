"""Small file helpers: atomic writes and durable appends.

Every file agereg writes is first written to a temporary file in the same folder,
flushed, fsynced and renamed over the target, so a reader sees the old file or the new
one, never half of one, and a failed write leaves no temporary file behind.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import tempfile
import zipfile
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
        if exc.errno == errno.ENOENT and not Path(path).parent.is_dir():
            raise RunError(f"{path}: cannot write: the folder {Path(path).parent} does not "
                           "exist; create it first") from None
        raise RunError(f"{path}: cannot write ({exc.strerror or exc}); "
                       "check free space and permissions") from None


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with UTF-8 ``text`` atomically; raise :class:`RunError` on OSError."""
    atomic_write_bytes(path, text.encode("utf-8"))


def make_folder(folder: Path, then: str = "") -> Path:
    """Create ``folder`` inside a run folder unless it exists, refusing a symbolic link
    there (a planted link would make agereg write outside the run); one-line
    :class:`RunError` otherwise, ``then`` appended as the next step."""
    if folder.is_symlink():
        raise RunError(f"{folder}: is a symbolic link; agereg never follows links in a run "
                       f"folder: remove it{then}")
    try:
        folder.mkdir(exist_ok=True)
    except OSError as exc:
        raise RunError(f"{folder}: cannot create ({exc.strerror or exc}); check free space "
                       f"and permissions{then}") from None
    return folder


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """``numpy.savez`` ``arrays`` atomically (never pickled)."""
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def save_array(path: Path, arr: np.ndarray) -> None:
    """``numpy.save`` ``arr`` atomically (never pickled)."""
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


KiB, MiB = 1 << 10, 1 << 20


class NotReadable(Exception):
    """A file that is not a regular file of a sensible size; the message says which."""


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes. A FIFO, a device (a link to
    /dev/zero...), a directory or a larger file raises :class:`NotReadable` before anything
    is read, so nothing hangs and nothing reads without end. FileNotFoundError and other
    OSErrors propagate."""
    st = os.stat(path)  # follows links: what matters is what would be read
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise NotReadable(f"{kind} (a FIFO, device or socket cannot be read as a file)"
                          if kind != "a directory" else kind)
    if st.st_size > limit:
        raise NotReadable(f"{st.st_size:,} bytes, more than the {limit:,} bytes such a file may "
                          "hold")
    # O_NONBLOCK: if the file was swapped for a FIFO since the stat, do not wait on it
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise NotReadable(f"more than the {limit:,} bytes such a file can hold")
    return data


def read_npy(path: Path, limit: int) -> np.ndarray:
    """The array of an .npy file of at most ``limit`` bytes, read by :func:`read_regular`
    (so never a FIFO or a device) and never unpickled. :class:`NotReadable` for anything
    else; FileNotFoundError and other OSErrors propagate."""
    arr = _load(path, limit)
    if not isinstance(arr, np.ndarray):
        raise NotReadable("an .npz archive, not an .npy array")
    return arr


def read_npz(path: Path, limit: int) -> dict[str, np.ndarray]:
    """Every array of an .npz archive, read as :func:`read_npy` reads an .npy file."""
    z = _load(path, limit)
    if isinstance(z, np.ndarray):
        raise NotReadable("an .npy array, not an .npz archive")
    with z:
        # a member may be compressed: bound what it unpacks to, not only the file's size
        # (zipfile reads no more than a member's declared size)
        members = z.zip.infolist() if z.zip is not None else []
        unpacked = sum(int(info.file_size) for info in members)
        if unpacked > limit:
            raise NotReadable(f"its arrays would unpack to {unpacked:,} bytes, more than the "
                              f"{limit:,} expected")
        try:
            return {k: z[k] for k in z.files}
        except (ValueError, EOFError, OSError, zipfile.BadZipFile) as exc:
            raise NotReadable(f"a damaged .npz archive ({exc})") from None


def _load(path: Path, limit: int) -> np.ndarray | np.lib.npyio.NpzFile:
    data = read_regular(path, limit)
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, EOFError, OSError, zipfile.BadZipFile) as exc:
        raise NotReadable(f"not a numpy file ({exc})") from None


def open_no_follow(path: Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` that refuses a symbolic link at ``path``: agereg never follows a link
    for a file it creates, appends to or truncates in a run folder (a planted link would
    otherwise make it write outside). Raises OSError (ELOOP for a link)."""
    return os.open(path, flags | os.O_NOFOLLOW, _FILE_MODE & mode)


def append_durable(path: Path, text: str) -> None:
    """Append ``text`` to ``path``, a file of a run folder, and fsync before returning:
    once this returns, it survives a crash. A symbolic link at ``path`` is refused, never
    followed."""
    try:
        fd = open_no_follow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RunError(f"{path}: is a symbolic link; agereg never follows links in a run "
                           "folder: remove the link, then resume with `agereg search "
                           f"--resume {path.parent}`") from None
        raise RunError(f"{path}: cannot append ({exc.strerror or exc}); "
                       "check free space and permissions, then resume with "
                       f"`agereg search --resume {path.parent}`") from None
