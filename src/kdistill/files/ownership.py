"""The rule that kdistill deletes or replaces only what it can prove it wrote, and the file hashes
its manifests record; shared by the run folder, the teacher cache and the checkpoints.

Proof of authorship is a manifest that kdistill writes into every folder it writes whole: a
model folder (``student/``, ``teacher/``) holds :data:`FILES_MANIFEST`, a checkpoint or a
teacher cache its own ``manifest.json``; each lists the files kdistill put there. A folder may
be deleted only when every file under it is listed by such a manifest (or is a staging leftover
of kdistill's own atomic writes). One file the manifests do not name is doubt, and doubt
refuses the deletion: :func:`unowned_files` finds such files, :func:`remove_owned` deletes
a folder only when there are none.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from kdistill.errors import OutputFileError
from kdistill.files.writing import check_writable

__all__ = [
    "FILES_MANIFEST",
    "check_replaceable_file",
    "file_sha256",
    "is_staging_name",
    "remove_owned",
    "unowned_files",
    "write_files_manifest",
]

#: the manifest of a folder kdistill wrote whole (a saved model): the relative path of every file
FILES_MANIFEST = ".kdistill-files.json"


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 4 MiB blocks (files may be larger than memory)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def write_files_manifest(folder: Path, kind: str = "files") -> None:
    """Record every file now under ``folder`` as written by kdistill (call it last, after writing)."""
    listed = [name for name in _files_under(folder) if name != FILES_MANIFEST]
    (folder / FILES_MANIFEST).write_text(
        json.dumps({"kdistill": kind, "files": listed}, indent=1) + "\n", encoding="utf-8"
    )


def is_staging_name(name: str) -> bool:
    """Whether ``name`` is one kdistill gives a file or folder while writing it atomically
    (``.x.partial``, ``.checkpoint-….``, ``.x.building-…``, ``.x.old-…``): left behind only by a killed write."""
    return name.startswith(".") and (
        name.endswith(".partial") or ".building-" in name or ".old-" in name or name.startswith(".checkpoint-")
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _listed_files(folder: Path) -> set[str] | None:
    """The files a kdistill manifest in ``folder`` names (the manifest included), or None when
    ``folder`` holds no manifest kdistill wrote."""
    own = _read_json(folder / FILES_MANIFEST)
    if isinstance(own, dict) and isinstance(own.get("files"), list):
        return {str(name) for name in own["files"]} | {FILES_MANIFEST}
    manifest = _read_json(folder / "manifest.json")
    if not isinstance(manifest, dict):
        return None
    if isinstance(manifest.get("files"), dict) and "step" in manifest:  # a training checkpoint
        return set(manifest["files"]) | {"manifest.json"}
    if isinstance(manifest.get("shards"), list) and "fingerprint" in manifest:  # a teacher cache
        listed = {"manifest.json", ".kdistill-cache.json"}
        for shard in manifest["shards"]:
            for entry in (shard.get("files") or {}).values() if isinstance(shard, dict) else ():
                if isinstance(entry, dict) and isinstance(entry.get("path"), str):
                    listed.add(entry["path"])
        return listed
    return None


def unowned_files(folder: Path, allowed: Iterable[str] = ()) -> list[Path]:
    """Files under ``folder`` that no kdistill manifest accounts for.

    A folder with a manifest must hold only the files it lists; a folder without one (a
    container such as ``checkpoints/``) may hold owned folders, staging leftovers and the file
    names in ``allowed``. Symbolic links count as files (they are never followed).
    """
    listed = _listed_files(folder)
    if listed is not None:
        return [folder / name for name in _files_under(folder) if name not in listed]
    allowed = set(allowed)
    found: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if is_staging_name(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            found += unowned_files(entry, allowed)
        elif entry.name not in allowed:
            found.append(entry)
    return found


def remove_owned(path: Path, allowed: Iterable[str] = ()) -> None:
    """Delete ``path`` (a file, or a folder every file of which kdistill wrote).

    Raises:
        PermissionError: some file under the folder was not written by kdistill; nothing is deleted.
    """
    if path.is_dir() and not path.is_symlink():
        foreign = unowned_files(path, allowed)
        if foreign:
            raise PermissionError(f"{foreign[0]} was not written by kdistill")
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def check_replaceable_file(path: Path, written_by_kdistill: Callable[[Path], bool], what: str, flag: str) -> None:
    """Refuse, writing nothing, an output file path that holds something kdistill did not write.

    Args:
        path: the file kdistill is about to write (or replace).
        written_by_kdistill: whether the existing file at ``path`` is one kdistill wrote (it reads
            the file's own signature: a metrics file names kdistill, a predictions file has
            kdistill's columns); never called when ``path`` does not exist.
        what: the kind of file, for the message (``"a predictions file"``).
        flag: how the user gave the path (``"--output"``), for the message.

    Raises:
        OutputFileError: ``path`` is a folder, an existing file ``written_by_kdistill`` rejects,
            or its staging name is a symbolic link.
    """
    if path.is_dir():
        raise OutputFileError(f"{flag} {str(path)!r} is a folder; give a file name for {what}")
    if not (path.exists() or path.is_symlink()):
        check_writable(path)
        return
    if path.is_symlink() or not written_by_kdistill(path):
        raise OutputFileError(
            f"{flag} {str(path)!r} exists and is not {what} kdistill wrote: kdistill never replaces a file "
            "it did not write; give a new file name"
        )
    check_writable(path)  # its staging name too, before any work
