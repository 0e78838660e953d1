"""Folder locks: an exclusive ``flock`` that the operating system drops when its process dies, so a
killed run never leaves a folder locked, and a way to ask who holds one."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kdistill.files.writing import open_lock_file

__all__ = ["FolderInUseError", "exclusive_lock", "lock_holder"]


class FolderInUseError(RuntimeError):
    """Another process holds the lock."""

    def __init__(self, message: str, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid


def _holder_pid(handle: Any) -> int | None:
    handle.seek(0)
    text = handle.read().decode("utf-8", "replace").strip()
    return int(text) if text.isdigit() else None


@contextlib.contextmanager
def exclusive_lock(lock_file: Path, *, wait: bool) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_file`` (created if needed) while inside, with this
    process's pid written in it.

    The operating system drops the lock when the process dies, so a killed run never leaves a
    folder locked; the file itself stays (removing it could let two processes lock different files).
    Where ``fcntl`` does not exist (Windows) nothing is locked.

    Args:
        lock_file: the lock's file.
        wait: wait for the holder to finish; otherwise raise :class:`FolderInUseError` at once.

    Raises:
        OutputFileError: ``lock_file`` is a symbolic or hard link (writing the pid would change
            the file it links to).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open_lock_file(lock_file) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder_pid(handle)
            if not wait:
                raise FolderInUseError(
                    f"{lock_file.parent} is in use by another kdistill process" + (f" (pid {pid})" if pid else ""), pid
                ) from None
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()).encode())
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lock_holder(lock_file: Path) -> int | None:
    """The pid of the live process that holds ``lock_file`` (0 if unknown), or None when nobody does."""
    if lock_file.is_symlink() or not lock_file.is_file():
        return None  # a link is no lock of kdistill's (and is refused before it is written)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    with open(lock_file, "rb") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_pid(handle) or 0
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None
