"""Fingerprints of the files and folders a run reads, so that a resumed run can tell they changed.

A file's fingerprint is its size, its modification time and a SHA-256: of the whole file up to
:data:`WHOLE_HASH_BYTES`, else of its first and last :data:`END_BYTES` (a data set or a weights
file of gigabytes costs two megabytes to read). A folder's is its files' fingerprints (names
starting with ``.``, such as ``.git`` or ``.cache``, left out). A file hashed whole has changed
when its size or content did; one hashed by its ends also when its modification time did, since
an edit in the middle keeps the size and both ends.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["END_BYTES", "WHOLE_HASH_BYTES", "changes", "fingerprint", "fingerprints"]

WHOLE_HASH_BYTES = 2 << 20
END_BYTES = 1 << 20


def _file(path: Path) -> dict[str, Any]:
    info = path.stat()
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        if info.st_size <= WHOLE_HASH_BYTES:
            digest.update(handle.read())
        else:
            digest.update(handle.read(END_BYTES))
            handle.seek(-END_BYTES, os.SEEK_END)
            digest.update(handle.read(END_BYTES))
    return {
        "bytes": info.st_size,
        "mtime_ns": info.st_mtime_ns,
        "sha256": digest.hexdigest(),
        "hashed": "whole" if info.st_size <= WHOLE_HASH_BYTES else "ends",
    }


def fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The fingerprint of a file (``kind: file``), a folder (``kind: folder``, its files by
    relative path) or of nothing (``kind: missing``), as plain JSON values."""
    path = Path(path).expanduser()
    if path.is_file():
        return {"kind": "file", **_file(path)}
    if path.is_dir():
        files: dict[str, Any] = {}
        for top, folders, names in os.walk(path):
            folders[:] = sorted(name for name in folders if not name.startswith("."))
            for name in sorted(names):
                file = Path(top) / name
                if not name.startswith(".") and file.is_file():
                    files[file.relative_to(path).as_posix()] = _file(file)
        return {"kind": "folder", "files": files}
    return {"kind": "missing"}


def fingerprints(paths: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """``{key: {"path": path, **fingerprint(path)}}`` for each path a run reads, by its config key."""
    return {key: {"path": str(path), **fingerprint(path)} for key, path in paths.items()}


def _file_change(then: Mapping[str, Any], now: Mapping[str, Any]) -> str | None:
    if then.get("bytes") != now.get("bytes"):
        how = f"{then.get('bytes', 0):,} bytes then, {now.get('bytes', 0):,} now"
    elif then.get("sha256") != now.get("sha256"):
        how = "the same size, other content"
    elif then.get("hashed") == "ends" and then.get("mtime_ns") != now.get("mtime_ns"):
        how = "the same size and ends, but modified since"
    else:
        return None
    return f"changed since the run started ({how})"


def _change(then: Mapping[str, Any], now: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(file, what happened to it)`` for the first difference between two fingerprints of one
    input, or None."""
    where = str(then.get("path", "?"))
    if then.get("path") != now.get("path"):
        return where, f"is now read from {now.get('path')!r}"
    if then.get("kind") != now.get("kind"):
        gone = now.get("kind") == "missing"
        return where, "is gone since the run started" if gone else f"is now a {now.get('kind')}"
    if then.get("kind") == "file":
        how = _file_change(then, now)
        return (where, how) if how else None
    before, after = then.get("files", {}), now.get("files", {})
    for name in sorted(set(before) | set(after)):
        file = str(Path(where) / name)
        if name not in after:
            return file, "is gone since the run started"
        if name not in before:
            return file, "is new since the run started"
        how = _file_change(before[name], after[name])
        if how:
            return file, how
    return None


def changes(recorded: Mapping[str, Mapping[str, Any]], current: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What changed between two :func:`fingerprints` of the same inputs, one phrase per input that
    did, naming its file (``data.train 'train.csv' changed since the run started (4,181 bytes
    then, 870 now)``); inputs only one of them has are left out."""
    found = []
    for key, then in recorded.items():
        change = _change(then, current[key]) if key in current else None
        if change is not None:
            found.append(f"{key} {change[0]!r} {change[1]}")
    return found
