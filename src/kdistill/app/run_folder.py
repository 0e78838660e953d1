"""The run folder of ``kdistill distill``: what a run may write, replace and delete, and when.

A run proves the folder is its own with a marker, :data:`MARKER`, written before anything else:
the run's id, kdistill's version, and the top-level entries the run created (each recorded
before it is made). Folders written whole (``student/``, ``teacher/``, the best student) get a
files manifest (:func:`kdistill.files.ownership.write_files_manifest`); checkpoints carry their own.

``--overwrite`` deletes the recorded entries of an earlier run and nothing else, and refuses,
deleting nothing, when in doubt:

* the folder carries no marker (files of another program, or a run of kdistill 0.1);
* a recorded folder holds a file no kdistill manifest names (the user's own, or a run nested in it);
* the new run reads a path inside what would be deleted (``teacher.path: A/teacher``);
* another kdistill process holds the folder (:data:`LOCK`, an ``flock`` with its pid).

A run holds the lock from the moment it claims the folder until it ends, so a second
``--overwrite`` or ``--resume`` of the same folder stops with one line naming the holder.

A run folder may have been unpacked or shared, so it is not trusted either: a symbolic link
where a run writes, appends, replaces or deletes (``run.log -> ~/.bashrc``, a linked
``checkpoints/``), or a hard link where it appends, is refused before anything is written
(:meth:`RunFolder.check_links`), and every write goes through :mod:`kdistill.files.writing`,
which refuses links again. The marker also records a fingerprint of every input the run reads
(:mod:`kdistill.files.fingerprints`), so that ``--resume`` can refuse inputs that changed
(:meth:`RunFolder.check_inputs`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdistill._version import __version__
from kdistill.errors import ConfigError, RunFolderError
from kdistill.files.fingerprints import changes
from kdistill.files.locks import FolderInUseError, exclusive_lock, lock_holder
from kdistill.files.ownership import remove_owned, unowned_files, write_files_manifest
from kdistill.files.writing import first_link, hard_link_message, link_message, staging_name, write_atomic
from kdistill.models.loading import looks_local

if TYPE_CHECKING:
    from kdistill.app.config import RunConfig

__all__ = [
    "BEST_DIR",
    "CHECKPOINTS_DIR",
    "CONFIG_FILE",
    "CURVES_FILE",
    "FINISHED_FILE",
    "LOCK",
    "LOG_FILE",
    "MARKER",
    "METRICS_FILE",
    "REPORT_FILE",
    "STUDENT_DIR",
    "TEACHERS_DIR",
    "TEACHER_DIR",
    "RunFolder",
    "input_paths",
    "paths_read",
]

MARKER = ".kdistill-run.json"
LOCK = ".kdistill-run.lock"
CONFIG_FILE = "config.yaml"
LOG_FILE = "run.log"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
CURVES_FILE = "training_curves.png"
STUDENT_DIR = "student"
TEACHER_DIR = "teacher"
#: where several teachers' fine-tuned weights go, one folder each (``teachers/<name>/``)
TEACHERS_DIR = "teachers"
CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best-student"
FINISHED_FILE = "finished.json"
#: files kdistill writes loose inside ``checkpoints/<stage>/`` (the folders carry manifests)
CHECKPOINT_FILES = (FINISHED_FILE,)
#: the top-level names a run writes, appends to, replaces or deletes (with their staging names)
WRITTEN = (
    MARKER,
    LOCK,
    CONFIG_FILE,
    LOG_FILE,
    METRICS_FILE,
    REPORT_FILE,
    CURVES_FILE,
    STUDENT_DIR,
    TEACHER_DIR,
    TEACHERS_DIR,
)


def _shown(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def input_paths(config: RunConfig) -> dict[str, str]:
    """The local files and folders a run learns from, by the config key that names them: the
    data files, the teacher and the student (and their tokenizers); hub ids left out."""
    found: dict[str, str] = {}
    sources = {
        ("teachers." + name if config.several_teachers else name): section
        for name, section in config.teacher_sections.items()
    }
    sources["student"] = config.student
    for role, source in sources.items():
        if source is None:
            continue
        for key in ("path", "tokenizer"):
            value = getattr(source, key)
            if value is not None and looks_local(value):
                found[f"{role}.{key}"] = value
        if source.package is not None:
            with contextlib.suppress(ConfigError):  # not installed: loading the model says so
                found[f"{role}.package"] = source.location()
    for key in ("train", "validation", "test"):
        value = getattr(config.data, key, None)
        if isinstance(value, str):
            found[f"data.{key}"] = value
    return found


def paths_read(config: RunConfig) -> dict[str, str]:
    """The local paths a run reads, by the config key that names them (hub ids left out):
    ``--overwrite`` never deletes one of them."""
    found = input_paths(config)
    for name, section in config.teacher_sections.items():
        if section.cache is not None and section.cache.dir is not None:
            found[f"{'teachers.' + name if config.several_teachers else name}.cache"] = section.cache.dir
    return found


class RunFolder:
    """One run's folder: its marker, its lock, and the only way a run writes into it.

    Args:
        path: the folder (``output.dir``); it may not exist yet.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock: contextlib.ExitStack | None = None

    # -- reading: these never write ---------------------------------------------------------

    def marker(self) -> dict[str, Any] | None:
        """The run's marker, or None when the folder carries none (or an unreadable one)."""
        try:
            content = json.loads((self.path / MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if isinstance(content, dict) and content.get("kdistill") == "run" and isinstance(content.get("entries"), list):
            return content
        return None

    def entries(self) -> list[str]:
        """The top-level entries the run recorded (and that exist)."""
        marker = self.marker()
        return [name for name in (marker["entries"] if marker else []) if (self.path / name).exists()]

    def holds_run(self) -> bool:
        """Whether the folder holds a run kdistill can prove it wrote."""
        return self.marker() is not None

    def holder(self) -> int | None:
        """The pid of a live kdistill process holding the folder (0 if unknown), or None."""
        return lock_holder(self.path / LOCK)

    def foreign_entries(self) -> list[str]:
        """Names in the folder that are not this run's (every name when it carries no marker)."""
        if not self.path.is_dir():
            return []
        marker = self.marker()
        recorded = {MARKER, LOCK} | (set(marker["entries"]) if marker else set())
        return sorted(e.name for e in self.path.iterdir() if e.name not in recorded)

    def check_free(self) -> None:
        """Raise when another kdistill process holds the folder."""
        pid = self.holder()
        if pid is not None:
            raise RunFolderError(self._in_use_message(pid))

    def check_links(self) -> None:
        """Raise when a path the run writes, appends to, replaces or deletes is a symbolic link
        (anywhere under ``checkpoints/``, which runs write into), or a file it appends to
        (``run.log``, the lock) has other hard links: writing would change a file outside."""
        marker = self.marker()
        names = [*WRITTEN, CHECKPOINTS_DIR, *(marker["entries"] if marker else [])]
        for name in names:
            for entry in (self.path / name, self.path / f".{name}.tmp", staging_name(self.path / name)):
                if entry.is_symlink():
                    raise RunFolderError(link_message(entry))
        checkpoints = self.path / CHECKPOINTS_DIR
        for top, folders, files in os.walk(checkpoints) if checkpoints.is_dir() else ():
            # os.walk lists a linked folder without entering it
            for name in sorted(folders + files):
                if (Path(top) / name).is_symlink():
                    raise RunFolderError(link_message(Path(top) / name))
        for name in (LOG_FILE, LOCK):
            entry = self.path / name
            if entry.is_file() and entry.stat().st_nlink > 1:
                raise RunFolderError(hard_link_message(entry, entry.stat().st_nlink))

    def check_inputs(self, current: Mapping[str, Mapping[str, Any]], allow_changed: bool = False) -> list[str]:
        """Compare the run's inputs now (:func:`kdistill.files.fingerprints.fingerprints`) with
        those its marker recorded when it started; what changed, one phrase per input.

        A run that recorded none (one started before kdistill recorded them) is not checked.

        Raises:
            RunFolderError: an input changed and ``allow_changed`` is not set.
        """
        marker = self.marker()
        recorded = marker.get("inputs") if marker else None
        found = changes(recorded, current) if isinstance(recorded, dict) else []
        if found and not allow_changed:
            more = f"; and {len(found) - 2} more" if len(found) > 2 else ""
            raise RunFolderError(
                f"cannot resume {str(self.path)!r}: {'; '.join(found[:2])}{more}. A resumed run must read the "
                "inputs it started with, or it ends with another student than an uninterrupted run: put them "
                "back, or add --allow-changed-data to go on knowingly (in Python: allow_changed_data=True)"
            )
        return found

    def record_inputs(self, current: Mapping[str, Mapping[str, Any]]) -> None:
        """Record the fingerprints of the inputs in the marker (the folder must be claimed)."""
        marker = self.marker()
        if marker is None:
            raise RunFolderError(self._lost_marker_message())
        marker["inputs"] = dict(current)
        self._write_marker(marker)

    def deletable(self, reads: Mapping[str, str | os.PathLike[str]]) -> list[str]:
        """The entries ``--overwrite`` would delete; raises instead of returning when in doubt.

        Args:
            reads: the paths the new run reads, by the config key that names them.

        Raises:
            RunFolderError: no marker, a recorded folder holding files kdistill did not write, or
                a path the new run reads inside what would be deleted.
        """
        marker = self.marker()
        if marker is None:
            raise RunFolderError(self.not_a_run_message())
        names = [name for name in marker["entries"] if (self.path / name).exists() or (self.path / name).is_symlink()]
        # leftovers of the earlier run's own atomic writes, by the exact names it gives them
        leftovers = {f".{name}.{suffix}" for name in [*marker["entries"], MARKER] for suffix in ("partial", "tmp")}
        names += sorted(e.name for e in self.path.iterdir() if e.name in leftovers)
        for key, read in reads.items():
            for name in names:
                if _inside(Path(read), self.path / name):
                    raise RunFolderError(
                        f"--overwrite would delete {str(self.path / name)!r}, which this run reads ({key}: {read}); "
                        "copy what it needs out of the run folder, or give another output.dir"
                    )
        for name in names:
            entry = self.path / name
            if entry.is_dir() and not entry.is_symlink() and not name.startswith("."):
                foreign = unowned_files(entry, CHECKPOINT_FILES)
                if foreign:
                    raise RunFolderError(
                        f"--overwrite would delete {str(foreign[0])!r}, which kdistill did not write (in the earlier "
                        f"run's {name}/); move it out of {str(self.path)!r} first, or give another output.dir"
                    )
        return names

    def not_a_run_message(self) -> str:
        names = sorted(e.name for e in self.path.iterdir()) if self.path.is_dir() else []
        legacy = ""
        if (self.path / CONFIG_FILE).is_file() and (self.path / LOG_FILE).is_file():
            legacy = f"; a run of kdistill 0.1 carries no {MARKER} either, so it cannot be overwritten or resumed"
        return (
            f"output.dir {str(self.path)!r} holds files that are not a kdistill run ({_shown(names)}){legacy}; "
            "choose a new or empty folder"
        )

    # -- writing: only while the folder is claimed ------------------------------------------

    @contextlib.contextmanager
    def claimed(
        self,
        mode: str,
        reads: Mapping[str, str | os.PathLike[str]] | None = None,
        inputs: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Iterator[list[str]]:
        """Create and lock the folder for a run; yields the names of an earlier run deleted.

        Args:
            mode: ``"new"`` (the folder must be new or empty), ``"overwrite"`` (an earlier run's
                entries are deleted, after the checks of :meth:`deletable`, and a new marker is
                written) or ``"resume"`` (the run's marker must be there and is kept).
            reads: the paths the run reads (see :meth:`deletable`).
            inputs: the fingerprints of what the run reads, recorded in a new marker.

        Raises:
            RunFolderError: another process holds the folder, it holds what ``mode`` does not
                allow, a link is where the run writes (:meth:`check_links`), or the earlier run
                cannot be deleted without doubt.
        """
        if mode not in ("new", "overwrite", "resume"):
            raise ValueError(f"mode must be 'new', 'overwrite' or 'resume', got {mode!r}")
        self.path.mkdir(parents=True, exist_ok=True)
        self.check_links()  # the lock file too, before it is written
        try:
            with exclusive_lock(self.path / LOCK, wait=False):
                self.check_links()  # again, now that no other kdistill process can change the folder
                deleted: list[str] = []
                holds_run = self.marker() is not None
                if mode == "resume" and not holds_run:
                    raise RunFolderError(self.not_a_run_message())
                if mode != "resume":
                    if holds_run and mode == "overwrite":
                        deleted = self.deletable(reads or {})
                        for name in deleted:
                            self._delete(name)
                    elif holds_run or self.foreign_entries():
                        raise RunFolderError(
                            self.not_a_run_message()
                            if not holds_run
                            else f"output.dir {str(self.path)!r} already holds a run"
                        )
                    self._write_marker(
                        {
                            "kdistill": "run",
                            "id": uuid.uuid4().hex,
                            "version": __version__,
                            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                            "entries": [],
                            "inputs": dict(inputs or {}),
                        }
                    )
                yield deleted
        except FolderInUseError as error:
            raise RunFolderError(self._in_use_message(error.pid)) from None

    def _in_use_message(self, pid: int | None) -> str:
        who = f"process {pid}" if pid else "another process"
        return (
            f"{str(self.path)!r} is in use by kdistill {who}: wait for that run to end, or stop it, before you "
            "use this folder again"
        )

    def _delete(self, name: str) -> None:
        entry = self.path / name
        if name.startswith(".") and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)  # a staging leftover of the earlier run's own atomic writes
        else:
            remove_owned(entry, CHECKPOINT_FILES)  # deletable() checked it; this checks again

    def _write_marker(self, content: dict[str, Any]) -> None:
        write_atomic(self.path / MARKER, json.dumps(content, indent=1) + "\n")

    def _lost_marker_message(self) -> str:
        return (
            f"{str(self.path)!r} lost its {MARKER}: the run stops rather than write into a "
            "folder it cannot prove is its own"
        )

    def record(self, name: str) -> Path:
        """Record the top-level entry ``name`` as the run's (before it is made); return its path.

        Raises:
            RunFolderError: the marker is gone, or a part of ``name`` is a symbolic link.
        """
        marker = self.marker()
        if marker is None:
            raise RunFolderError(self._lost_marker_message())
        link = first_link(self.path, name)
        if link is not None:
            raise RunFolderError(link_message(link))
        top = Path(name).parts[0]
        if top not in marker["entries"]:
            marker["entries"].append(top)
            self._write_marker(marker)
        return self.path / name

    def write_text(self, name: str, text: str) -> Path:
        """Write a top-level file atomically (through a temporary file)."""
        return write_atomic(self.record(name), text)

    def write_folder(self, name: str, write: Callable[[Path], None]) -> Path:
        """Write the folder ``name`` (a relative path) whole: ``write(staging)`` fills a staging
        folder, which gets a files manifest and is renamed into place, replacing an earlier one
        kdistill wrote. The folder is whole or absent, never half-written."""
        target = self.record(name)
        staging = staging_name(target)
        if staging.is_symlink():
            raise RunFolderError(link_message(staging))
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        write(staging)
        write_files_manifest(staging)
        if target.exists() or target.is_symlink():
            try:
                remove_owned(target)
            except PermissionError as error:
                raise RunFolderError(
                    f"cannot replace {str(target)!r}: {error}; move it out of the run folder"
                ) from None
        os.replace(staging, target)
        return target
