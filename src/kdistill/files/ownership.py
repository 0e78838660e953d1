"""The rule that kdistill deletes or replaces only what it can prove it wrote, and the file hashes
its manifests record; shared by the run folder, the teacher cache and the checkpoints.

Proof of authorship is a manifest that kdistill writes into every folder it writes whole: a
model folder (``student/``, ``teacher/``) holds :data:`FILES_MANIFEST`, a checkpoint or a
teacher cache its own ``manifest.json``; each lists the files kdistill put there. A folder may
be deleted only when every file under it is listed by such a manifest (or is a staging leftover
of kdistill's own atomic writes). One file the manifests do not name is doubt, and doubt
refuses the deletion: :func:`unowned_files` finds such files, :func:`remove_owned` deletes
a folder only when there are none.

A single file kdistill writes outside a folder of its own (a predictions CSV) stays in the
user's format, with no marker inside it: its proof is a marker beside it, ``FILE.kdistill.json``
(:func:`write_marked_file`), which names the kind of file and the SHA-256 of its bytes. The file
is kdistill's while its bytes match; once a person edits it, or puts another file in its place,
it is theirs (:func:`is_marked_file`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from kdistill._version import __version__
from kdistill.errors import OutputFileError
from kdistill.files.writing import atomic_writer, check_writable, staging_name, write_atomic

__all__ = [
    "FILES_MANIFEST",
    "MARKER_SUFFIX",
    "check_replaceable_file",
    "check_replaceable_marked_file",
    "file_sha256",
    "is_marked_file",
    "is_staging_name",
    "link_problem",
    "marker_path",
    "remove_owned",
    "swap_in_folder",
    "unowned_files",
    "unreplaceable_files",
    "write_files_manifest",
    "write_marked_file",
]

#: the manifest of a folder kdistill wrote whole (a saved model): the relative path of every file
FILES_MANIFEST = ".kdistill-files.json"
#: the marker beside a single file kdistill wrote: ``preds.csv`` has ``preds.csv.kdistill.json``
MARKER_SUFFIX = ".kdistill.json"


def link_problem(path: Path) -> str:
    """What is wrong with writing to the symbolic link ``path``, for a message: ``is a symbolic link
    (to 'x', a folder): kdistill never writes or replaces through a link``."""
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    kind = "a folder" if path.is_dir() else "a file" if path.exists() else "nothing: it is broken"
    return f"is a symbolic link (to {target!r}, {kind}): kdistill never writes or replaces anything through a link"


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 4 MiB blocks (files may be larger than memory)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def write_files_manifest(folder: Path, kind: str = "files", leave_out: Iterable[str] = ()) -> None:
    """Record every file now under ``folder`` as written by kdistill (call it last, after writing),
    but those named in ``leave_out`` (a staging marker, deleted next)."""
    left = {FILES_MANIFEST, *leave_out}
    listed = [name for name in _files_under(folder) if name not in left]
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


def unreplaceable_files(folder: Path, kind: str) -> list[str]:
    """Up to three files that stop kdistill from replacing ``folder`` with a new folder of ``kind``
    (the ``kdistill`` value of its :data:`FILES_MANIFEST`); none when it may: ``folder`` is absent,
    empty, or an earlier folder of that kind whose manifests name every file in it."""
    if not folder.is_dir() or not any(folder.iterdir()):
        return []
    manifest: Any = None
    with contextlib.suppress(OSError, ValueError):
        manifest = json.loads((folder / FILES_MANIFEST).read_text(encoding="utf-8"))
    foreign = unowned_files(folder)
    if isinstance(manifest, dict) and manifest.get("kdistill") == kind and not foreign:
        return []
    return [str(path.relative_to(folder)) for path in (foreign or sorted(folder.iterdir()))[:3]]


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


def swap_in_folder(built: Path, out: Path) -> None:
    """Move the finished folder ``built`` to ``out`` with renames only; an earlier folder at ``out``
    (which the caller has checked is kdistill's, :func:`unreplaceable_files`) is deleted after,
    and only where every file in it is kdistill's (:func:`remove_owned`)."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.is_dir():
        out.rename(old)
    built.rename(out)
    if old.is_dir():
        remove_owned(old)


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
        OutputFileError: ``path`` is a folder, a symbolic link, an existing file ``written_by_kdistill``
            rejects, or its staging name is a symbolic link.
    """
    if path.is_symlink():
        raise OutputFileError(f"{flag} {str(path)!r} {link_problem(path)}; give {what} a new file name")
    if path.is_dir():
        raise OutputFileError(f"{flag} {str(path)!r} is a folder; give a file name for {what}")
    if not path.exists():
        check_writable(path)
        return
    if not written_by_kdistill(path):
        raise OutputFileError(
            f"{flag} {str(path)!r} exists and is not {what} kdistill wrote: kdistill never replaces a file "
            "it did not write; give a new file name"
        )
    check_writable(path)  # its staging name too, before any work


def marker_path(path: Path) -> Path:
    """The marker beside the file ``path`` that proves kdistill wrote it: ``FILE.kdistill.json``."""
    return path.with_name(path.name + MARKER_SUFFIX)


def _marker(path: Path, kind: str) -> dict[str, Any] | None:
    """The marker beside ``path`` when it is one kdistill wrote for a file of ``kind`` named so."""
    marker = marker_path(path)
    if marker.is_symlink():
        return None
    content = _read_json(marker)
    if not isinstance(content, dict) or content.get("kdistill") != kind or content.get("file") != path.name:
        return None
    return content


def is_marked_file(path: Path, kind: str) -> bool:
    """Whether ``path`` is a file of ``kind`` kdistill wrote: the marker beside it names that kind,
    the file's name and the SHA-256 of exactly these bytes (a file a person edited, or put in its
    place, does not match; neither does a symbolic link)."""
    marker = _marker(path, kind)
    if marker is None or path.is_symlink() or not path.is_file():
        return False
    # "replacing": the bytes that were there while a new file took their place (a write killed between)
    known = {marker.get("sha256"), marker.get("replacing")} - {None}
    try:
        return file_sha256(path) in known
    except OSError:
        return False


def check_replaceable_marked_file(path: Path, kind: str, what: str, flag: str) -> None:
    """:func:`check_replaceable_file` for a file proven by its marker (:func:`write_marked_file`):
    the file must be absent or match its marker, and a file in the marker's place must be a marker.

    Raises:
        OutputFileError: ``path`` is a folder, a link, or a file kdistill did not write, or the
            marker's name is taken by a file that is not kdistill's marker.
    """
    check_replaceable_file(path, lambda found: is_marked_file(found, kind), what, flag)
    marker = marker_path(path)
    if (marker.exists() or marker.is_symlink()) and _marker(path, kind) is None:
        raise OutputFileError(
            f"{flag} {str(path)!r}: {str(marker)!r}, where kdistill keeps the proof that it wrote {what}, is a "
            "file kdistill did not write: kdistill never replaces a file it did not write; give a new file name"
        )


def _write_marker(path: Path, content: dict[str, Any]) -> None:
    write_atomic(marker_path(path), json.dumps(content, indent=1) + "\n")


def write_marked_file(path: Path, kind: str, write: Callable[[IO[str]], None], details: dict[str, Any]) -> None:
    """Write the text file ``path`` whole, through a staging file, and its marker beside it.

    The caller checks first that ``path`` may be written (:func:`check_replaceable_marked_file`).
    The marker names ``kind``, the kdistill version, the file's name and its SHA-256, and
    ``details``; while the new file replaces an earlier one, the marker names both, so that a
    write killed at any point leaves a file that is still provably kdistill's. Neither file is
    ever written through a symbolic link (:func:`~kdistill.files.writing.atomic_writer`).

    Args:
        path: the file to write.
        kind: what it is (``"predictions"``), as :func:`is_marked_file` asks.
        write: writes the whole file's content into the text handle it is given (``newline=""``).
        details: more to record in the marker (rows, columns ...), JSON.
    """
    check_writable(marker_path(path))
    with atomic_writer(path, "w", newline="") as handle:
        write(handle)
        handle.flush()
        record = {"kdistill": kind, "version": __version__, "file": path.name}
        record.update(sha256=file_sha256(staging_name(path)), **details)
        if path.is_file() and not path.is_symlink():
            _write_marker(path, {**record, "replacing": file_sha256(path)})
        else:
            _write_marker(path, record)
    _write_marker(path, record)
