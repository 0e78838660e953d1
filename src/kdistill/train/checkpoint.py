"""Checkpoints of the plain loop: written atomically, verified on load, resumed exactly.

A checkpoint is a folder ``checkpoint-<step>`` holding:

* ``student.safetensors`` and ``objective.safetensors``: weights, through safetensors only;
* ``training_state.pt``: optimizer, scheduler and loss-scaler states, RNG states, the step,
  the epoch, how many batches of the epoch were consumed, the RNG state at the start of that
  epoch (to rebuild the same data order) and the history so far. Written with ``torch.save``
  of plain containers and tensors, read with ``torch.load(weights_only=True)``: no pickle
  can run code;
* ``manifest.json``: the size and SHA-256 of each file, written last.

It is written to a staging folder and renamed into place, so a run killed at any moment
(SIGKILL included) leaves either a complete checkpoint or none. On resume a damaged last
checkpoint (a file missing or changed since its manifest was written, or a manifest that is not
the one kdistill wrote) is reported and the one before it is used; a checkpoint that passes its
checksums but whose weights or state do not fit the run is refused in one line naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from kdistill.errors import KdistillError
from kdistill.files.ownership import file_sha256, unowned_files
from kdistill.train.history import History

__all__ = [
    "CheckpointError",
    "TrainingState",
    "find_resumable",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
MANIFEST = "manifest.json"
#: the files every checkpoint holds, each listed in its manifest with its size and SHA-256
CHECKPOINT_FILES = ("student.safetensors", "objective.safetensors", "training_state.pt")


class CheckpointError(KdistillError, RuntimeError):
    """A checkpoint that is missing, incomplete, damaged or unsafe to load (one line on the command line)."""


@dataclass
class TrainingState:
    """Where a run stands, beyond the weights: what exact resumption needs.

    Attributes:
        step: optimizer steps done.
        epoch: the epoch in progress.
        batches_done: batches of that epoch already consumed.
        epoch_rng: the RNG state at the start of the epoch (rebuilds the same shuffle).
        rng: the RNG state at the moment of the checkpoint.
        optimizer / scheduler / scaler: their ``state_dict()``s.
        history: the run's history so far (``steps``, ``epochs``, ``evals``).
    """

    step: int
    epoch: int
    batches_done: int
    epoch_rng: dict[str, Any]
    rng: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    scaler: dict[str, Any] | None
    history: dict[str, list[dict[str, float]]]


def rng_state(generators: Sequence[torch.Generator] = ()) -> dict[str, Any]:
    """Every RNG state a training step can draw from, as tensors and plain numbers (weights-only safe).

    Args:
        generators: private generators to capture too, e.g. the one a ``DataLoader`` shuffles with.
    """
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": numpy_state[0],
            "state": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "gauss": float(numpy_state[4]),
        },
        "python": {"version": python_state[0], "state": list(python_state[1]), "gauss": python_state[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generators:
        state["generators"] = [generator.get_state() for generator in generators]
    return state


def set_rng_state(state: dict[str, Any], generators: Sequence[torch.Generator] = ()) -> None:
    """Restore what :func:`rng_state` captured (``generators`` in the order they were given to it)."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["key"],
            numpy_state["state"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["gauss"],
        )
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for generator, saved in zip(generators, state.get("generators", [])):
        generator.set_state(saved)


def _fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def save_checkpoint(
    folder: str | os.PathLike[str], student: nn.Module, objective: nn.Module, state: TrainingState, keep: int = 2
) -> Path:
    """Write ``checkpoint-<step>`` under ``folder`` atomically and keep the newest ``keep`` checkpoints.

    Returns:
        The checkpoint's folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"checkpoint-{state.step:08d}"
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=folder))
    try:
        save_model(student, str(staging / "student.safetensors"))
        save_model(objective, str(staging / "objective.safetensors"))
        torch.save(state.__dict__, staging / "training_state.pt")
        files = {}
        for path in sorted(staging.iterdir()):
            _fsync(path)
            files[path.name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
        (staging / MANIFEST).write_text(json.dumps({"step": state.step, "files": files}, indent=1))
        _fsync(staging / MANIFEST)
        if target.exists():
            _remove_checkpoint(target, replacing=True)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for old in _checkpoints(folder)[:-keep] if keep > 0 else []:
        _remove_checkpoint(old)
    return target


def _remove_checkpoint(path: Path, replacing: bool = False) -> None:
    """Delete a checkpoint folder only when its manifest names every file in it: a folder of the
    same name that kdistill did not write (another tool's ``checkpoint-500``) is left alone."""
    if not (path / MANIFEST).is_file() or unowned_files(path):
        if replacing:
            raise CheckpointError(f"{path} exists and was not written by kdistill; give another checkpoint folder")
        logger.warning("%s was not written by kdistill: left as it is", path)
        return
    shutil.rmtree(path, ignore_errors=True)


def _checkpoints(folder: Path) -> list[Path]:
    found = [p for p in folder.iterdir() if p.is_dir() and CHECKPOINT_PATTERN.match(p.name)] if folder.exists() else []
    return sorted(found, key=lambda p: int(CHECKPOINT_PATTERN.match(p.name).group(1)))  # type: ignore[union-attr]


def _manifest_of(path: Path) -> dict[str, Any]:
    """The checkpoint's manifest, once it is shown to be one kdistill writes: its step that of the
    folder's name, and a size and SHA-256 for each file a checkpoint holds (and for no other path)."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{path.name} is incomplete (no manifest)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path.name} has an unreadable manifest ({error})") from error
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not isinstance(manifest.get("step"), int):
        raise CheckpointError(f"{path.name} is damaged: its {MANIFEST} lists no step or files")
    named = CHECKPOINT_PATTERN.match(path.name)
    if named is not None and int(named.group(1)) != manifest["step"]:
        raise CheckpointError(f"{path.name} is damaged: its {MANIFEST} names step {manifest['step']}")
    missing = [name for name in CHECKPOINT_FILES if name not in files]
    if missing:
        raise CheckpointError(f"{path.name} is damaged: its {MANIFEST} does not list {', '.join(missing)}")
    for name, entry in files.items():
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..", MANIFEST):
            raise CheckpointError(f"{path.name} is damaged: its {MANIFEST} lists the file {name!r}")
        if not isinstance(entry, dict) or not isinstance(entry.get("bytes"), int) or "sha256" not in entry:
            raise CheckpointError(f"{path.name} is damaged: its {MANIFEST} records no size and checksum of {name}")
    return manifest


def verify_checkpoint(path: Path) -> None:
    """Raise :class:`CheckpointError` unless every file of the checkpoint is present and intact."""
    for name, entry in _manifest_of(path)["files"].items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{path.name} is damaged: {name} is missing")
        if file.stat().st_size != entry["bytes"] or file_sha256(file) != entry["sha256"]:
            raise CheckpointError(f"{path.name} is damaged: {name} does not match its checksum")


def find_resumable(folder: str | os.PathLike[str]) -> Path | None:
    """The newest intact checkpoint under ``folder``; damaged newer ones are reported and skipped."""
    for path in reversed(_checkpoints(Path(folder))):
        try:
            verify_checkpoint(path)
            return path
        except CheckpointError as error:
            logger.warning("%s; falling back to the checkpoint before it", error)
    return None


def _one_line(error: BaseException) -> str:
    """An exception's message on one line (torch's and safetensors' span several)."""
    text = "; ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _check_state(raw: Any, file: Path, step: int, generators: Sequence[torch.Generator]) -> TrainingState:
    """The :class:`TrainingState` in ``raw``, once it holds what :func:`save_checkpoint` writes:
    every field, counters that are counts, the manifest's step and RNG states that can be restored."""
    names = [field.name for field in dataclasses.fields(TrainingState)]
    if not isinstance(raw, dict) or sorted(raw) != sorted(names):
        found = sorted(map(str, raw)) if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(f"{file} is damaged: it holds {found}, not a kdistill training state")
    for name in ("step", "epoch", "batches_done"):
        value = raw[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise CheckpointError(f"{file} is damaged: its {name} is {value!r}, not a count")
    if raw["step"] != step:
        raise CheckpointError(f"{file} is damaged: it is the state of step {raw['step']}, its manifest's step {step}")
    if not all(isinstance(raw[name], dict) for name in ("epoch_rng", "rng", "optimizer", "history")) or not all(
        raw[name] is None or isinstance(raw[name], dict) for name in ("scheduler", "scaler")
    ):
        raise CheckpointError(f"{file} is damaged: its optimizer, scheduler, RNG or history state is not a mapping")
    history_fields = {field.name for field in dataclasses.fields(History)}
    if not set(raw["history"]) <= history_fields:
        raise CheckpointError(f"{file} is damaged: its history holds {sorted(map(str, raw['history']))}")
    before = rng_state(generators)
    try:  # restore each RNG state once (then the current ones again): one that cannot be restored is damage
        for state in (raw["rng"], raw["epoch_rng"]):
            set_rng_state(state, generators)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as error:
        raise CheckpointError(f"{file} is damaged: it holds an RNG state that cannot be restored ({error})") from error
    finally:
        set_rng_state(before, generators)
    return TrainingState(**raw)


def _load_state(file: Path, step: int, generators: Sequence[torch.Generator]) -> TrainingState:
    """The training state in ``file`` (``torch.load(weights_only=True)``), checked by :func:`_check_state`."""
    try:
        raw = torch.load(file, weights_only=True)
    except Exception as error:  # an unpicklable or tampered state: refuse it with the reason
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        # torch's message is a page long; the line naming the refused object is the reason
        reason = next((line for line in lines if "GLOBAL" in line), lines[0] if lines else type(error).__name__)
        raise CheckpointError(
            f"{file} holds objects that cannot be loaded safely ({reason}); "
            "kdistill loads checkpoints with torch.load(weights_only=True) only"
        ) from error
    return _check_state(raw, file, step, generators)


def load_checkpoint(
    path: str | os.PathLike[str],
    student: nn.Module,
    objective: nn.Module,
    generators: Sequence[torch.Generator] = (),
) -> TrainingState:
    """Load weights into ``student`` and ``objective`` and return the rest of the training state.

    Everything is read without unpickling code: safetensors for weights and
    ``torch.load(weights_only=True)`` for the state; what is read is checked (checksums, the
    state's fields, RNG states that can be restored into the global RNGs and ``generators``, the
    weights' names and shapes), and :class:`CheckpointError` names the file that does not fit.
    """
    path = Path(path)
    verify_checkpoint(path)
    state = _load_state(path / "training_state.pt", _manifest_of(path)["step"], generators)
    for name, module, what in (
        ("student.safetensors", student, "the student"),
        ("objective.safetensors", objective, "the objective"),
    ):
        try:
            load_model(module, str(path / name))
        except (RuntimeError, ValueError, OSError, SafetensorError) as error:
            raise CheckpointError(f"{path / name} does not fit {what} ({_one_line(error)})") from error
    return state
