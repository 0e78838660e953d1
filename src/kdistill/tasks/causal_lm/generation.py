"""The teacher's own continuations, for sequence-level distillation (Kim & Rush 2016): the teacher
continues each prompt once (greedy or sampled, with the KV cache) and the student then learns from
what the teacher wrote instead of (or besides) the data's text.

Generating is the expensive part, so the continuations are stored once per teacher, prompts and
settings: :func:`teacher_generations` keeps them in a folder named by that fingerprint under
``$KDISTILL_CACHE/teacher-generations/`` (written atomically, its marker written by kdistill last,
with the size and SHA-256 of each file) and reads them back on the next run with the same teacher
and prompts. What is read back is verified (checksums, one increasing end per prompt, ids within the
teacher's vocabulary): a damaged copy is said so in a log line and generated again, never trained on.
Sampling is seeded per prompt, so the same prompt gets the same continuation whatever the batch it
is generated in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from kdistill.cache.keys import fingerprint_teacher
from kdistill.errors import KdistillError
from kdistill.files.locations import cache_root
from kdistill.files.ownership import file_sha256
from kdistill.losses.reduction import check_temperature
from kdistill.models.preflight import usable_positions

__all__ = ["GenerationSettings", "generate_continuations", "teacher_generations"]

logger = logging.getLogger("kdistill.generation")

_MARKER = ".kdistill-generations.json"
#: every file a generations folder holds: nothing else in it is ever deleted
_FILES = {_MARKER, "ids.npy", "ends.npy"}
_FORMAT = 1


@dataclass(frozen=True)
class GenerationSettings:
    """How the teacher continues a prompt.

    Attributes:
        new_tokens: tokens generated after each prompt (fewer where the end token comes first).
        do_sample: sample (at ``temperature``) instead of greedy decoding.
        temperature: sampling temperature (> 0).
        seed: seeds each prompt's sampling (with the prompt's place in the list).
        batch_size: prompts generated at once.
    """

    new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    seed: int = 0
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.new_tokens < 1 or self.batch_size < 1:
            raise ValueError(f"new_tokens and batch_size must be at least 1, got {self.new_tokens}, {self.batch_size}")
        check_temperature(self.temperature)


@torch.no_grad()
def generate_continuations(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    settings: GenerationSettings,
    *,
    pad_token_id: int,
    eos_token_id: int | None,
    progress: bool = False,
) -> list[list[int]]:
    """Each prompt's continuation by ``model`` (its end token included when it comes).

    Args:
        model: a causal LM (``generate``); run in eval mode, its own mode restored after.
        prompts: token ids of each prompt.
        settings: see :class:`GenerationSettings`.
        pad_token_id: the id prompts are left-padded with.
        eos_token_id: generation of a prompt stops at this token (kept); None: never early.

    Returns:
        One list of new token ids per prompt, in the prompts' order.
    """
    positions = usable_positions(model)
    longest = max((len(prompt) for prompt in prompts), default=0)
    if positions is not None and longest + settings.new_tokens > positions:
        raise ValueError(
            f"new_tokens {settings.new_tokens} after a prompt of {longest} tokens makes a sequence of "
            f"{longest + settings.new_tokens} tokens, more than the model's {positions} token positions; "
            f"use new_tokens <= {positions - longest} or shorter prompts"
        )
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    found: list[list[int]] = []
    batches = range(0, len(prompts), settings.batch_size)
    for start in tqdm(batches, desc="teacher generations", disable=not progress, leave=False):
        chunk = prompts[start : start + settings.batch_size]
        if settings.do_sample:
            # one prompt at a time: a prompt's sample never depends on the batch it falls in
            for offset, prompt in enumerate(chunk):
                found.extend(_generate(model, [prompt], settings, device, pad_token_id, eos_token_id, start + offset))
        else:
            found.extend(_generate(model, chunk, settings, device, pad_token_id, eos_token_id, start))
    model.train(was_training)
    return found


def _generate(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    settings: GenerationSettings,
    device: torch.device,
    pad_token_id: int,
    eos_token_id: int | None,
    place: int,
) -> list[list[int]]:
    longest = max(len(prompt) for prompt in prompts)
    ids = torch.full((len(prompts), longest), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, longest - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        mask[row, longest - len(prompt) :] = 1
    options = {"do_sample": True, "temperature": settings.temperature, "top_k": 0, "top_p": 1.0}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(random.Random(f"{settings.seed}:{place}").randrange(2**31))
        output = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=settings.new_tokens,
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
            **(options if settings.do_sample else {"do_sample": False}),
        )
    found = []
    for row in output[:, longest:].tolist():
        if eos_token_id is not None and eos_token_id in row:
            row = row[: row.index(eos_token_id) + 1]
        found.append(row)
    return found


def _key(teacher: nn.Module, prompts: Sequence[Sequence[int]], settings: GenerationSettings) -> str:
    digest = hashlib.sha256()
    digest.update(fingerprint_teacher(teacher).encode())
    for prompt in prompts:
        digest.update(np.asarray(prompt, dtype=np.int64).tobytes() + b"|")
    digest.update(json.dumps({**asdict(settings), "batch_size": None, "format": _FORMAT}, sort_keys=True).encode())
    return digest.hexdigest()[:24]


def teacher_generations(
    teacher: nn.Module,
    prompts: Sequence[Sequence[int]],
    settings: GenerationSettings,
    *,
    pad_token_id: int,
    eos_token_id: int | None,
    root: Path | None = None,
    progress: bool = False,
) -> tuple[list[list[int]], Path, bool]:
    """The teacher's continuations of ``prompts``: read back when stored, else generated and stored.

    What is read back is verified first (see :func:`_read`): a stored copy that is damaged is
    reported in a log line and generated again, never trained on.

    Returns:
        ``(continuations, the folder they are stored in, whether they were read back)``.

    Raises:
        KdistillError: the fingerprint's folder exists but is not kdistill's (never replaced).
    """
    folder = (root or cache_root() / "teacher-generations") / _key(teacher, prompts, settings)
    vocab_size = _vocab_size(teacher)
    stored, damage = _read(folder, len(prompts), settings.new_tokens, vocab_size)
    if stored is not None:
        return stored, folder, True
    if folder.exists() and (not folder.is_dir() or not {entry.name for entry in folder.iterdir()} <= _FILES):
        raise KdistillError(f"{str(folder)!r} holds files kdistill did not write; move them away to store generations")
    if damage is not None:
        logger.warning("the teacher generations stored in %s are damaged (%s); generating them again", folder, damage)
    found = generate_continuations(
        teacher, prompts, settings, pad_token_id=pad_token_id, eos_token_id=eos_token_id, progress=progress
    )
    _write(folder, found, settings, vocab_size)
    return found, folder, False


def _vocab_size(model: nn.Module) -> int | None:
    """The number of ids ``model`` can generate (its output layer's rows), or None where it has no such layer."""
    get_output = getattr(model, "get_output_embeddings", None)
    layer = get_output() if callable(get_output) else None
    weight = getattr(layer, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return int(weight.shape[0])
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    return size if isinstance(size, int) and size > 0 else None


def _load_ids(path: Path) -> np.ndarray:
    """A 1-D integer array from a ``.npy`` file (no pickles), or ValueError saying what it holds instead."""
    array = np.load(path, allow_pickle=False)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise ValueError(f"{path.name} holds a {array.dtype} array of shape {array.shape}, not 1-D integers")
    return array.astype(np.int64)


def _read(
    folder: Path, count: int, new_tokens: int, vocab_size: int | None
) -> tuple[list[list[int]] | None, str | None]:
    """The ``count`` continuations stored in ``folder``, verified; else None and why not.

    Returns:
        ``(continuations, None)`` for an intact store, ``(None, None)`` where there is none, and
        ``(None, what is damaged)`` for one that cannot be used: a file missing, changed since it was
        written (its size or SHA-256, recorded in the marker, differs), or holding what kdistill never
        writes (offsets that are not increasing, another number of continuations, a continuation longer
        than ``new_tokens``, ids past the teacher's vocabulary).
    """
    marker_path = folder / _MARKER
    if not marker_path.is_file():
        # an empty or absent folder holds nothing yet; files without their marker are damage
        return None, f"the marker {_MARKER} is missing" if folder.is_dir() and any(folder.iterdir()) else None
    try:
        marker = json.loads(marker_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return None, f"{_MARKER} is unreadable ({error})"
    if not isinstance(marker, dict) or marker.get("kdistill") != "teacher-generations":
        return None, f"{_MARKER} is not a kdistill generations marker"
    files = marker.get("files")
    if marker.get("format") != _FORMAT or not isinstance(files, dict):
        return None, f"{_MARKER} records no checksums (written by an earlier kdistill)"
    for name in ("ids.npy", "ends.npy"):
        entry, path = files.get(name), folder / name
        if not isinstance(entry, dict) or not path.is_file():
            return None, f"{name} is missing"
        if path.stat().st_size != entry.get("bytes") or file_sha256(path) != entry.get("sha256"):
            return None, f"{name} does not match the checksum recorded when it was written"
    try:
        ids, ends = _load_ids(folder / "ids.npy"), _load_ids(folder / "ends.npy")
    except (OSError, ValueError) as error:
        return None, str(error)
    if marker.get("count") != count or len(ends) != count:
        return None, f"ends.npy holds {len(ends)} continuations, {count} prompts were given"
    lengths = np.diff(ends, prepend=0)
    if count and (lengths.min() < 0 or ends[-1] != len(ids)):
        return None, f"ends.npy is not the increasing ends of the {len(ids)} ids in ids.npy"
    if count and lengths.max() > new_tokens:
        return None, f"ends.npy holds a continuation of {int(lengths.max())} tokens, more than new_tokens={new_tokens}"
    if len(ids) and ids.min() < 0:
        return None, f"ids.npy holds the negative id {int(ids.min())}"
    if len(ids) and vocab_size is not None and ids.max() >= vocab_size:
        return None, f"ids.npy holds id {int(ids.max())}, past the teacher's vocabulary of {vocab_size} ids"
    starts = ends - lengths
    return [ids[start:end].tolist() for start, end in zip(starts.tolist(), ends.tolist())], None


def _write(folder: Path, continuations: list[list[int]], settings: GenerationSettings, vocab_size: int | None) -> None:
    """Write to a staging folder beside ``folder``, marker last (with each file's size and SHA-256),
    and rename it into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    flat = [token for row in continuations for token in row]
    np.save(staging / "ids.npy", np.asarray(flat, dtype=np.int64))
    np.save(staging / "ends.npy", np.cumsum([len(row) for row in continuations]).astype(np.int64))
    files = {
        name: {"bytes": (staging / name).stat().st_size, "sha256": file_sha256(staging / name)}
        for name in ("ids.npy", "ends.npy")
    }
    marker = {
        "kdistill": "teacher-generations",
        "format": _FORMAT,
        "count": len(continuations),
        "tokens": len(flat),
        "vocab_size": vocab_size,
        "settings": asdict(settings),
        "files": files,
    }
    (staging / _MARKER).write_text(json.dumps(marker), encoding="utf-8")
    if folder.exists():
        shutil.rmtree(folder)  # a damaged earlier copy holding only our own files (checked by the caller)
    os.replace(staging, folder)
    logger.info("teacher generations stored in %s", folder)
