"""Files that hold either their old content or all of the new: temporary name, fsync, rename."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: Path | str, overwrite: bool = True) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path``; on a clean exit it is flushed, fsynced and renamed
    to ``path``. On an exception it is removed and ``path`` is untouched. With ``overwrite``
    false an existing ``path`` is never replaced, even one that appears while writing."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    TEMPORARIES.add(tmp)
    try:
        with naming(path):
            f = open(tmp, "wb")  # noqa: SIM115 - closed by the with below
        with f, naming(path, writing=True):
            yield f
            f.flush()
            os.fsync(f.fileno())
        with naming(path):
            if path.is_dir():  # os.replace would say so of the temporary name
                raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
            if overwrite:
                os.replace(tmp, path)
            else:
                os.link(tmp, path)  # fails if path exists: no window in which it could be clobbered
                os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        TEMPORARIES.discard(tmp)
    fsync_dir(path.parent if str(path.parent) else Path("."))


#: Temporary files being written now: what a process stopped without unwinding removes.
TEMPORARIES: set[Path] = set()


def remove_temporaries() -> None:
    for tmp in list(TEMPORARIES):
        with contextlib.suppress(OSError):
            os.unlink(tmp)


# Errors only writing can cause: an OSError with one of these and no file name is the output's.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@contextlib.contextmanager
def naming(path: Path | str, writing: bool = False) -> Iterator[None]:
    """OS errors about the temporary file (or, ``writing``, a full disk met while writing to
    it) name ``path``, the file the user asked for."""
    try:
        yield
    except OSError as e:
        if e.filename == str(path) or (writing and (e.filename or e.errno not in WRITE_ERRNOS)):
            raise
        raise type(e)(e.errno, e.strerror, str(path)) from None


def write_atomic(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` holds either the old content or all of it."""
    with atomic_writer(path) as f:
        f.write(data)


def read_exact(f: BinaryIO, n: int) -> bytes | memoryview:
    """``n`` bytes, fewer only at the end of ``f``; a zero-copy view where ``f`` offers one."""
    read_view = getattr(f, "read_view", None)
    if read_view is not None:
        return read_view(n)
    buf = f.read(n)
    while buf is not None and len(buf) < n:
        more = f.read(n - len(buf))
        if not more:
            break
        buf += more
    return buf or b""
