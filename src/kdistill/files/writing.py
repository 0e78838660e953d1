"""How kdistill writes into a folder it may not have made: never through a link it did not create.

A run folder can be unpacked from an archive or shared; a symbolic link in it named like a file
kdistill writes (``run.log -> ~/.bashrc``) would make kdistill append its lines to, or rewrite, a
file outside the folder, and so would a hard link (another name of the same file). kdistill never
makes a link itself, so a link where it writes is refused in one line that names it:

* :func:`write_atomic` and :func:`atomic_writer` write a file whole through a staging file that
  is created afresh (``O_CREAT | O_EXCL | O_NOFOLLOW``: it can never be a link) and renamed over
  the target; a target or staging name that is a symbolic link is refused;
* :func:`open_append` and :func:`open_lock_file` open a file to change it in place (a log, a
  lock), refusing a symbolic link and a file with other hard links;
* :func:`check_writable` refuses a target before any work is done, :func:`first_link` finds a
  link among the parts of a path below a folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO, TextIO

from kdistill.errors import OutputFileError

__all__ = [
    "atomic_writer",
    "check_writable",
    "first_link",
    "hard_link_message",
    "link_message",
    "open_append",
    "open_lock_file",
    "staging_name",
    "write_atomic",
]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
# a named pipe in the folder would block an open for writing until someone reads it
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def link_message(path: Path) -> str:
    """The one line that refuses the symbolic link ``path`` (it names the link and its target)."""
    try:
        target = f" to {os.readlink(path)!r}"
    except OSError:
        target = ""
    return (
        f"{str(path)!r} is a symbolic link{target}: kdistill never writes through a link it did not create; "
        "replace the link with a copy of its file, or remove it, and run again"
    )


def hard_link_message(path: Path, names: int) -> str:
    """The one line that refuses ``path``, a file with ``names`` hard links."""
    return (
        f"{str(path)!r} is a hard link (one of {names} names of the same file): writing it would change the file "
        "under its other names too, and kdistill never writes through a link it did not create; replace it with "
        "a copy (cp, not cp -l or ln), and run again"
    )


def staging_name(path: Path) -> Path:
    """The name a file is written under before it is renamed into place: ``.<name>.partial``."""
    return path.with_name(f".{path.name}.partial")


def first_link(folder: Path, relative: str | os.PathLike[str]) -> Path | None:
    """The first part of ``folder / relative`` below ``folder`` that is a symbolic link, or None."""
    current = Path(folder)
    for part in Path(relative).parts:
        current = current / part
        if current.is_symlink():
            return current
    return None


def check_writable(path: Path) -> None:
    """Refuse, before any work, a file :func:`write_atomic` would refuse: ``path`` or its staging
    name is a symbolic link.

    Raises:
        OutputFileError: naming the link.
    """
    for candidate in (path, staging_name(path)):
        if candidate.is_symlink():
            raise OutputFileError(link_message(candidate))


def _clear_staging(staging: Path) -> None:
    """Remove a staging file a killed write left behind; refuse anything else in its place."""
    try:
        info = staging.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise OutputFileError(link_message(staging))
    if not stat.S_ISREG(info.st_mode):
        raise OutputFileError(f"{str(staging)!r} is in the way of a file kdistill writes; move it away and run again")
    staging.unlink()  # one name of a file: removing it never changes what other names show


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: str = "w", **options: Any) -> Iterator[IO[Any]]:
    """A handle on a fresh staging file that becomes ``path`` when the block ends without error
    (and is removed when it does not), so ``path`` is whole or as it was.

    Args:
        path: the file to write; an existing regular file is replaced, never written into.
        mode: ``"w"`` (text) or ``"wb"``.
        options: for text, ``encoding`` (default UTF-8) and ``newline``.

    Raises:
        OutputFileError: ``path`` or its staging name is a symbolic link.
    """
    path = Path(path)
    check_writable(path)
    staging = staging_name(path)
    _clear_staging(staging)
    # O_EXCL fails on any existing name, a link included: nothing can be written through
    descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666)
    if "b" not in mode:
        options.setdefault("encoding", "utf-8")
    try:
        with os.fdopen(descriptor, mode, **options) as handle:
            yield handle
        os.replace(staging, path)  # rename replaces the name itself, a link put there meanwhile too
    except BaseException:
        with contextlib.suppress(OSError):
            staging.unlink()
        raise


def write_atomic(path: str | os.PathLike[str], content: str | bytes) -> Path:
    """Write ``content`` (text as UTF-8) to ``path`` whole, through :func:`atomic_writer`."""
    with atomic_writer(path, "wb" if isinstance(content, bytes) else "w") as handle:
        handle.write(content)
    return Path(path)


def _open_in_place(path: Path, flags: int) -> int:
    """A descriptor on the regular file ``path`` (created if absent) that has no other name."""
    if not _NOFOLLOW and path.is_symlink():  # pragma: no cover - no O_NOFOLLOW (Windows)
        raise OutputFileError(link_message(path))
    try:
        descriptor = os.open(path, flags | _NOFOLLOW | _NONBLOCK, 0o666)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.EMLINK) or path.is_symlink():
            raise OutputFileError(link_message(path)) from None
        raise
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(descriptor)
        if info.st_nlink > 1:
            raise OutputFileError(hard_link_message(path, info.st_nlink))
        raise OutputFileError(f"{str(path)!r} is not a regular file; move it away and run again")
    return descriptor


def open_append(path: str | os.PathLike[str], encoding: str = "utf-8") -> TextIO:
    """Open ``path`` to append text to it (a log), created if absent.

    Raises:
        OutputFileError: ``path`` is a symbolic link, a hard link or not a regular file.
    """
    descriptor = _open_in_place(Path(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    return os.fdopen(descriptor, "a", encoding=encoding)


def open_lock_file(path: str | os.PathLike[str]) -> BinaryIO:
    """Open the lock file ``path`` to read and rewrite it (created if absent).

    Raises:
        OutputFileError: ``path`` is a symbolic link, a hard link or not a regular file.
    """
    return os.fdopen(_open_in_place(Path(path), os.O_RDWR | os.O_CREAT), "r+b")
