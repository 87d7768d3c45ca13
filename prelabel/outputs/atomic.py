"""Atomic file writes: a reader sees the old file or the whole new one, never half of one."""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from ..errors import OutputError

_FULL = (errno.ENOSPC, errno.EDQUOT)
_FORBIDDEN = (errno.EROFS, errno.EACCES, errno.EPERM)


def output_error(target: Path, e: OSError) -> OutputError:
    """What a failed write means and what to do about it, naming the file."""
    reason = e.strerror or type(e).__name__
    if e.errno in _FULL:
        return OutputError(target, f"cannot write it: the disk is full ({reason})", "free space there")
    if e.errno in _FORBIDDEN:
        return OutputError(target, f"cannot write it ({reason})",
                           "make the folder writable by this user, or set output.dir (run --out) to another one")
    return OutputError(target, f"cannot write it ({reason})", "check the folder and the disk")


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Write to a temporary file beside ``path``, fsync it, then rename it over ``path``.

    An ``OSError`` on the way (full disk, read-only folder) leaves the old file as it was and is
    raised as ``OutputError`` naming ``path``."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise output_error(target, e) from e
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; reviewers and Label Studio may run as other users
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise output_error(target, e) from e
        raise
