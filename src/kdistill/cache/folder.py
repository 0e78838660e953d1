"""The cache's folder: one builder at a time (a lock beside it), and replaced only when it is a
kdistill cache (its marker and manifest name every file)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kdistill.cache.keys import MANIFEST, MARKER, CacheFolderError
from kdistill.files.locks import FolderInUseError, exclusive_lock
from kdistill.files.ownership import is_staging_name, link_problem, unowned_files

__all__ = ["build_lock", "changed_parts", "check_cache_folder", "check_replaceable", "replace_folder"]

logger = logging.getLogger("kdistill.cache")


def changed_parts(folder: Path, parts: dict[str, str]) -> str:
    """' (changed: teacher weights, dataset)' for a cache built for other inputs, else ''."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return ""
    stored = manifest.get("parts") if isinstance(manifest, dict) else None
    if not isinstance(stored, dict):
        return ""
    names = {
        "teacher": "teacher weights",
        "dataset": "dataset",
        "tokenization": "tokenisation settings",
        "spec": "what is captured",
    }
    changed = [names[key] for key in names if key in stored and stored[key] != parts[key]]
    return f" (changed: {', '.join(changed)})" if changed else ""


@contextlib.contextmanager
def build_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder``'s cache (a ``.<name>.lock`` file beside it) while inside;
    a second builder waits for the first and then reads what it built."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock_file = folder.with_name(f".{folder.name}.lock")
    try:
        with exclusive_lock(lock_file, wait=False):
            yield
        return
    except FolderInUseError:
        logger.info("another process is building the teacher cache at %s; waiting for it", folder)
    with exclusive_lock(lock_file, wait=True):
        yield


_SHARD_NAME = re.compile(r"^[A-Za-z0-9_.]+\.\d{5}\.npy$")


def _marker_of(folder: Path) -> dict[str, Any] | None:
    try:
        content = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) and content.get("kdistill") == "teacher-cache" else None


def check_replaceable(folder: Path) -> None:
    """Refuse to replace ``folder`` unless it is empty or every file in it belongs to a kdistill cache.

    Raises:
        CacheFolderError: ``folder`` is a file, or holds files no cache manifest names.
    """
    if folder.is_symlink():
        raise CacheFolderError(
            f"the teacher cache folder {str(folder)!r} {link_problem(folder)}; give the folder itself, or a new "
            "or empty folder for the cache"
        )
    if not folder.is_dir():
        raise CacheFolderError(
            f"the teacher cache folder {str(folder)!r} is a file, not a folder; give a new or "
            "empty folder for the cache"
        )
    entries = [entry for entry in folder.iterdir() if not is_staging_name(entry.name)]
    if not entries:
        return
    foreign = unowned_files(folder) if (folder / MANIFEST).is_file() else entries
    if foreign and _marker_of(folder) is not None:
        # a cache whose manifest is damaged: its marker still proves the folder, and a shard is
        # known by its name; anything else in it is not kdistill's
        foreign = [
            path
            for path in foreign
            if path.parent != folder or (not _SHARD_NAME.match(path.name) and path.name not in (MARKER, MANIFEST))
        ]
    if foreign:
        names = sorted(str(path.relative_to(folder)) for path in foreign)
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise CacheFolderError(
            f"the teacher cache folder {str(folder)!r} holds files that are not a kdistill teacher cache ({shown}); "
            "kdistill never empties a folder it did not write: give a new or empty folder for the cache"
        )


def check_cache_folder(folder: str | os.PathLike[str]) -> None:
    """Check, writing nothing, that ``folder`` can take a teacher cache: absent, empty, or a kdistill cache.

    Raises:
        CacheFolderError: it is a file, or holds files that are not a kdistill cache's.
    """
    folder = Path(folder)
    if folder.exists() or folder.is_symlink():
        check_replaceable(folder)


def replace_folder(staging: Path, folder: Path) -> None:
    """Move a complete staging folder to ``folder``, replacing an earlier cache there, with renames only."""
    if folder.exists() or folder.is_symlink():
        check_replaceable(folder)
        trash = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, trash)
        os.replace(staging, folder)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, folder)
