"""Text files a person names (a `--csv` path, a setting), opened so that a wrong path fails at once.

`open_text(path, max_bytes=..., what=...)` accepts only a regular file (a symlink to one is fine): a
directory, a FIFO, a socket or a device such as /dev/zero is refused before anything is read, with
one line (`InputError`). The open itself never blocks (O_NONBLOCK, so a FIFO swapped in after the
first look cannot hang it either), and what it opened is checked again on the descriptor. The size
is capped twice: the stat's size first, then the read itself, which never reads more than
`max_bytes + 1` bytes in all (a file growing while read is refused, not read to its end). The text is
UTF-8; a leading byte-order mark (Excel's "CSV UTF-8") is skipped. `newline=""` as the csv module
wants.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from shared.errors import InputError

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


@contextmanager
def open_text(path: str | os.PathLike[str], *, max_bytes: int, what: str = "file") -> Iterator[TextIO]:
    """The file as UTF-8 text (BOM skipped), read through a cap of `max_bytes`; InputError (one
    line naming the path) when it is missing, not a regular file, unreadable or too large."""
    name = os.fspath(path)
    try:
        _check(name, os.stat(name), max_bytes, what)  # refused before it is ever opened
        fd = os.open(name, _OPEN_FLAGS)
    except OSError as exc:
        raise _os_error(name, what, exc) from None
    try:
        _check(name, os.fstat(fd), max_bytes, what)  # the file may have been swapped since the stat
        os.set_blocking(fd, True)
        raw = _Capped(fd, max_bytes, name, what)
    except BaseException:
        os.close(fd)
        raise
    with io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8-sig", newline="") as text:
        yield text


def describe_size(n: int) -> str:
    """10485760 -> '10 MiB'; sizes that are not whole MiB in bytes."""
    mib = 1024 * 1024
    return f"{n // mib} MiB" if n % mib == 0 else f"{n} bytes"


def _check(name: str, info: os.stat_result, max_bytes: int, what: str) -> None:
    mode = info.st_mode
    if not stat.S_ISREG(mode):
        if stat.S_ISDIR(mode):
            kind = "a directory"
        elif stat.S_ISFIFO(mode):
            kind = "a FIFO (named pipe)"
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            kind = "a device"
        elif stat.S_ISSOCK(mode):
            kind = "a socket"
        else:
            kind = "not a regular file"
        raise InputError(f"{name}: the {what} must be a regular file; this is {kind}")
    if info.st_size > max_bytes:
        raise InputError(f"{name}: the {what} is {info.st_size} bytes, over its {describe_size(max_bytes)} limit")


def _os_error(name: str, what: str, exc: OSError) -> InputError:
    if exc.errno == errno.ENOENT:
        return InputError(f"{what} not found: {name}")
    if exc.errno == errno.ELOOP:
        return InputError(f"{name}: cannot read the {what}: symlink loop")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return InputError(f"{name}: cannot read the {what}: permission denied")
    return InputError(f"{name}: cannot read the {what}: {exc.strerror or type(exc).__name__}")


class _Capped(io.RawIOBase):
    """A file descriptor that gives at most `max_bytes` bytes, then refuses (InputError) instead of
    reading on. Owns and closes the descriptor."""

    def __init__(self, fd: int, max_bytes: int, name: str, what: str):
        super().__init__()
        self._fd = fd
        self._max = max_bytes
        self._total = 0
        self._name = name
        self._what = what

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def readinto(self, buffer) -> int:
        data = os.read(self._fd, min(len(buffer), self._max + 1 - self._total))
        self._total += len(data)
        if self._total > self._max:
            raise InputError(f"{self._name}: the {self._what} is over its {describe_size(self._max)} limit")
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                os.close(self._fd)
            finally:
                super().close()
