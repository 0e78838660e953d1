"""Which teacher layers a student keeps, chosen by each layer's measured importance.

A uniform copy (every fifth layer of thirty) can drop the layer that matters most: in
SmolLM2-135M the first layer changes its input completely (1 - cos 0.999) while most later
layers change it by 0.02-0.19, and the uniform 6-of-30 copy, which drops it, starts at
perplexity 11.8 million against 91 thousand for the six layers kept by importance. Two rules:

* ``block_influence`` (ShortGPT, Men et al. 2024): a layer's importance is ``1 - cos`` of its
  input and output hidden states, averaged over the calibration tokens; the student keeps the
  layers of highest influence. One forward pass.
* ``perplexity``: drop, one at a time, the layer whose removal raises the calibration loss
  least, until the student's depth is left. About ``N^2 / 2`` forward passes for a teacher of
  ``N`` layers (444 for 30 -> 6): exact, and slow on a CPU.

Both measure the teacher with layers removed from its own layer list (:func:`kept_layers`),
which is the untrained student a copy of those layers makes, so each rule's loss is the loss
its student starts from.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from kdistill.models.anatomy import layer_stack
from kdistill.schema import IMPORTANCE_RULES

__all__ = [
    "IMPORTANCE_RULES",
    "LayerChoice",
    "block_influence",
    "choose_layers",
    "greedy_removal",
    "kept_layers",
    "top_layers",
]


#: a model's loss on the calibration text (lower is better)
LossOf = Callable[[nn.Module], float]


@dataclass(frozen=True)
class LayerChoice:
    """The teacher layers a rule keeps, and why.

    Attributes:
        rule: ``"block_influence"`` or ``"perplexity"``.
        kept: the teacher layers kept (1-based, ascending); student layer ``i`` copies ``kept[i - 1]``.
        scores: one score per teacher layer (index 0 is layer 1): the block influence, or for
            ``perplexity`` the calibration loss with that layer alone removed (higher: more important).
        removed: for ``perplexity``, the layers in the order they were dropped.
        loss: the calibration loss of the teacher with only ``kept`` (the untrained student's), if measured.
        teacher_loss: the calibration loss of the whole teacher, if measured.
    """

    rule: str
    kept: tuple[int, ...]
    scores: tuple[float, ...]
    removed: tuple[int, ...] = ()
    loss: float | None = None
    teacher_loss: float | None = None

    @property
    def layer_map(self) -> dict[int, int]:
        """``{student_layer: teacher_layer}`` (1-based) for :func:`kdistill.models.student.make_student`."""
        return {student: teacher for student, teacher in enumerate(self.kept, start=1)}

    def as_dict(self) -> dict[str, Any]:
        """For ``metrics.json``: the rule, the map, every layer's score and the loss it starts from."""
        return {
            "rule": self.rule,
            "layer_map": self.layer_map,
            "scores": list(self.scores),
            **({"removed_in_order": list(self.removed)} if self.removed else {}),
            **({"calibration_loss": self.loss} if self.loss is not None else {}),
            **({"teacher_loss": self.teacher_loss} if self.teacher_loss is not None else {}),
        }


def _hidden_of(value: Any) -> Tensor | None:
    """The hidden states in a layer's input or output (a tensor, or the first item of a tuple)."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], Tensor):
        return value[0]
    return None


def _stack(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """The module holding the layer list, the list's attribute name, and the list."""
    found = layer_stack(model)
    if found is None:
        raise ValueError(
            f"cannot find the layer list of {type(model).__name__}, so its layers cannot be ranked; "
            "give student.from_teacher.layer_map explicitly"
        )
    path, layers = found
    parent_path, _, attribute = path.rpartition(".")
    return (model.get_submodule(parent_path) if parent_path else model), attribute, layers


@torch.no_grad()
def block_influence(model: nn.Module, batches: Iterable[Mapping[str, Tensor]]) -> list[float]:
    """Each layer's Block Influence: ``1 - cos(input, output)`` of its hidden states, averaged over tokens.

    Args:
        model: a Hugging Face model (in eval mode for the measurement; its mode is restored).
        batches: calibration batches, each ``model(**batch)``'s keyword arguments; an
            ``attention_mask`` ``(batch, length)`` excludes padding from the average.

    Returns:
        One value per layer, layer 1 first; 0 for a layer that leaves its input unchanged, up to 2.
    """
    _, _, layers = _stack(model)
    sums = torch.zeros(len(layers), dtype=torch.float64)
    count = 0
    mask: list[Tensor | None] = [None]
    inputs: dict[int, Tensor] = {}

    def before(index: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = _hidden_of(args) if args else None
            inputs[index] = hidden if hidden is not None else kwargs["hidden_states"]

        return hook

    def after(index: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            out = _hidden_of(output)
            if out is None:
                raise ValueError(f"layer {index + 1} of {type(model).__name__} returned no hidden states to compare")
            cosine = torch.nn.functional.cosine_similarity(inputs.pop(index).float(), out.float(), dim=-1)
            keep = mask[0]
            sums[index] += float((1 - cosine)[keep].sum() if keep is not None else (1 - cosine).sum())

        return hook

    handles = []
    was_training = model.training
    model.eval()
    try:
        for index, layer in enumerate(layers):
            handles.append(layer.register_forward_pre_hook(before(index), with_kwargs=True))
            handles.append(layer.register_forward_hook(after(index), with_kwargs=True))
        for batch in batches:
            attention = batch.get("attention_mask")
            mask[0] = attention.bool() if attention is not None else None
            model(**_inputs(batch))
            count += int(mask[0].sum()) if mask[0] is not None else int(batch["input_ids"].numel())
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if count == 0:
        raise ValueError("the calibration batches hold no tokens")
    return (sums / count).tolist()


def _inputs(batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    # a forward pass for hooks only: no labels (no loss), no key/value cache kept
    return {key: value for key, value in batch.items() if key not in ("labels", "label")} | {"use_cache": False}


def top_layers(scores: Sequence[float], keep: int) -> tuple[int, ...]:
    """The ``keep`` layers (1-based, ascending) of highest score; ties go to the earlier layer."""
    if not 1 <= keep <= len(scores):
        raise ValueError(f"cannot keep {keep} of {len(scores)} layers")
    ranked = sorted(range(len(scores)), key=lambda index: (-scores[index], index))
    return tuple(sorted(index + 1 for index in ranked[:keep]))


@contextlib.contextmanager
def kept_layers(model: nn.Module, layers: Sequence[int]) -> Iterator[nn.Module]:
    """``model`` with only the given layers (1-based, in order) in its layer list, restored afterwards.

    The model then computes what a student copied from those layers computes (embeddings, final
    norm and head are the teacher's), without copying a weight. Call the whole model once before
    (with what you will ask of it): transformers hooks, for ``output_hidden_states``, the layers
    present at the first call that records them.
    """
    parent, attribute, full = _stack(model)
    config = getattr(model, "config", None)
    depth, use_cache = getattr(config, "num_hidden_layers", None), getattr(config, "use_cache", None)
    setattr(parent, attribute, nn.ModuleList([full[layer - 1] for layer in layers]))
    if depth is not None:
        config.num_hidden_layers = len(layers)
    if use_cache is not None:
        # a key/value cache is sized by the config's depth and indexed by each layer's own index
        config.use_cache = False
    try:
        yield model
    finally:
        setattr(parent, attribute, full)
        if depth is not None:
            config.num_hidden_layers = depth
        if use_cache is not None:
            config.use_cache = use_cache


def greedy_removal(
    model: nn.Module, keep: int, loss_of: LossOf, *, progress: Callable[[int, int], None] | None = None
) -> tuple[tuple[int, ...], tuple[int, ...], list[float], float]:
    """Drop the layer whose removal raises ``loss_of`` least, one at a time, until ``keep`` are left.

    Args:
        model: the teacher.
        keep: the student's depth.
        loss_of: the calibration loss of a model.
        progress: called with ``(passes done, passes in all)`` after each pass.

    Returns:
        ``(kept, removed in order, loss with each layer alone removed (layer 1 first), loss of the kept layers)``.
    """
    _, _, full = _stack(model)
    total = len(full)
    if not 1 <= keep <= total:
        raise ValueError(f"cannot keep {keep} of {total} layers")
    passes = sum(range(keep + 1, total + 1))
    done = 0
    current = list(range(1, total + 1))
    single: list[float] = []
    removed: list[int] = []
    loss = math.nan
    while len(current) > keep:
        trials = []
        for layer in current:
            with kept_layers(model, [other for other in current if other != layer]):
                trials.append((loss_of(model), layer))
            done += 1
            if progress is not None:
                progress(done, passes)
        if not single:
            single = [value for value, _ in trials]
        loss, dropped = min(trials)
        current.remove(dropped)
        removed.append(dropped)
    if not removed:
        with kept_layers(model, current):
            loss = loss_of(model)
        single = [loss] * total
    return tuple(current), tuple(removed), single, loss


def choose_layers(
    model: nn.Module,
    keep: int,
    rule: str,
    batches: Sequence[Mapping[str, Tensor]],
    loss_of: LossOf | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> LayerChoice:
    """The ``keep`` teacher layers ``rule`` chooses on the calibration batches.

    Args:
        model: the teacher.
        keep: the student's depth.
        rule: ``"block_influence"`` or ``"perplexity"``.
        batches: calibration batches (see :func:`block_influence`).
        loss_of: the calibration loss of a model; needed by ``perplexity``, and measures the
            untrained student's loss for either rule when given.
        progress: see :func:`greedy_removal`.

    Raises:
        ValueError: an unknown rule, a depth the teacher does not have, or ``perplexity`` without ``loss_of``.
    """
    if rule not in IMPORTANCE_RULES:
        raise ValueError(f"unknown importance rule {rule!r}; use one of {', '.join(IMPORTANCE_RULES)}")
    if rule == "perplexity" and loss_of is None:
        raise ValueError("the perplexity rule needs a loss to measure the teacher with layers removed")
    # the whole teacher first: transformers hooks the layers present at the first call that records
    # hidden states, so a first call on a subset would leave the other layers unhooked for good
    teacher_loss = loss_of(model) if loss_of is not None else None
    if rule == "block_influence":
        scores = block_influence(model, batches)
        kept = top_layers(scores, keep)
        loss = None
        if loss_of is not None:
            with kept_layers(model, kept):
                loss = loss_of(model)
        return LayerChoice(rule, kept, tuple(scores), loss=loss, teacher_loss=teacher_loss)
    assert loss_of is not None
    kept, removed, single, loss = greedy_removal(model, keep, loss_of, progress=progress)
    return LayerChoice(rule, kept, tuple(single), removed=removed, loss=loss, teacher_loss=teacher_loss)
