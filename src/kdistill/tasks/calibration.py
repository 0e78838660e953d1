"""A student measured before it is built: the teacher's layers ranked, and its width pruned, on
calibration text (``student.from_teacher: {layer_map: importance}`` or ``{prune: activation}``).

Every task does this alike: the calibration text is the first ``calibration_tokens`` of the
prepared training split, in order, and the loss a layer's removal is judged by is the one the
task fine-tunes its teacher with (:meth:`kdistill.tasks.base.Task.finetune_objective`: the
language-modelling loss of a causal LM, the cross-entropy of a classifier).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from kdistill.capture import Features, capture
from kdistill.data.batch import INDEX_KEY, split_batch
from kdistill.errors import ConfigError
from kdistill.losses.objective import Objective
from kdistill.models.anatomy import model_dims
from kdistill.models.importance import LayerChoice, choose_layers, kept_layers
from kdistill.models.layer_maps import uniform_map
from kdistill.models.width import measure_width_importance
from kdistill.tasks.base import Models, TaskData
from kdistill.tasks.common import student_from_teacher

__all__ = ["calibration_batches", "calibration_loss", "measured_student"]

logger = logging.getLogger(__name__)

#: examples per calibration batch
CALIBRATION_BATCH = 8


def _tokens_of(example: Mapping[str, Any]) -> int:
    mask = example.get("attention_mask")
    if mask is not None:
        return int(torch.as_tensor(mask).sum())
    return len(example["input_ids"])


def calibration_batches(
    dataset: Dataset, collate: Callable[[list[Any]], Any], tokens: int, batch_size: int = CALIBRATION_BATCH
) -> list[dict[str, Tensor]]:
    """The first examples of ``dataset`` holding ``tokens`` tokens (at least one example), in batches.

    Returns:
        Dict batches (``input_ids`` ``(B, L)``, ``attention_mask``, ``labels`` ...) without example indices.
    """
    chosen, held = [], 0
    for index in range(len(dataset)):  # type: ignore[arg-type]
        if held >= tokens:
            break
        example = dataset[index]
        chosen.append(example)
        held += _tokens_of(example)
    batches = []
    for start in range(0, len(chosen), batch_size):
        batch = collate(chosen[start : start + batch_size])
        batches.append({key: value for key, value in dict(batch).items() if key != INDEX_KEY})
    return batches


def calibration_loss(objective: Objective, batches: Sequence[Mapping[str, Tensor]]) -> Callable[[nn.Module], float]:
    """A model's mean ``objective`` over the calibration batches, under ``no_grad`` (lower is better)."""
    request = objective.request("student")

    @torch.no_grad()
    def loss_of(model: nn.Module) -> float:
        was_training = model.training
        model.eval()
        try:
            total, weight = 0.0, 0
            for batch in batches:
                inputs, labels = split_batch(dict(batch), None)
                features = capture(model, inputs, request)
                size = int(batch["input_ids"].shape[0])
                nothing = Features(attention_mask=features.attention_mask)  # the loss reads no teacher
                total += float(objective(features, nothing, labels).total) * size
                weight += size
            return total / weight
        finally:
            model.train(was_training)

    return loss_of


def _shown(loss: float | None, perplexity: bool) -> str:
    if loss is None:
        return "-"
    return f"perplexity {math.exp(min(loss, 700)):,.1f}" if perplexity else f"loss {loss:.4f}"


def measured_student(
    options: Any,
    models: Models,
    data: TaskData,
    objective: Objective,
    *,
    perplexity: bool,
    note: Callable[[nn.Module, str], str] | None = None,
) -> tuple[Models, dict[str, Any]]:
    """The student ``options`` describe, built once the teacher is measured on the calibration text.

    Args:
        options: the ``student.from_teacher`` section (``layer_map: importance``, ``importance``,
            ``prune``, ``calibration_tokens`` ...).
        models: the run's models; the student is replaced.
        data: the prepared data (calibration text from ``data.train``).
        objective: the loss layers are judged by (the task's fine-tuning objective).
        perplexity: report the loss as a perplexity (causal LMs).
        note: the task's line on the built student (given the student and the report's line).

    Returns:
        ``(models with the new student, what was measured)`` for the log and ``metrics.json``:
        ``{"calibration_tokens", "layer_choice" (rule, map, scores, loss), "uniform_loss", "width"}``.

    Raises:
        ConfigError: options that do not fit the teacher.
    """
    teacher = models.teacher
    batches = calibration_batches(data.train, data.collate, options.calibration_tokens)
    held = sum(int(batch["attention_mask"].sum()) for batch in batches if "attention_mask" in batch)
    loss_of = calibration_loss(objective, batches)
    measured: dict[str, Any] = {"calibration_tokens": held}
    layer_map = None
    try:
        if options.layer_map == "importance":
            choice = choose_layers(
                teacher, options.num_layers, options.importance, batches, loss_of, progress=_log_passes
            )
            layer_map = choice.layer_map
            measured["layer_choice"] = choice.as_dict()
            measured["layer_choice"]["why"] = _why(choice, perplexity)
        width = measure_width_importance(teacher, batches) if options.prune is not None else None
    except ValueError as error:
        raise ConfigError(f"student.from_teacher: {error}") from None
    if layer_map is not None:  # choose_layers refused a depth the teacher does not have
        uniform = _uniform_loss(teacher, options.num_layers, loss_of)
        measured["uniform_loss"] = uniform
        logger.info(
            "layers by %s: %s (the teacher with only them: %s; with the uniform copy's: %s)",
            options.importance,
            ", ".join(str(layer) for layer in layer_map.values()),
            _shown(measured["layer_choice"].get("calibration_loss"), perplexity),
            _shown(uniform, perplexity),
        )
    chosen = options.model_copy(update={"layer_map": layer_map}) if layer_map is not None else options
    student, report = student_from_teacher(teacher, chosen, width_importance=width)
    if width is not None and report.width_pruned:
        measured["width"] = {name: list(sizes) for name, sizes in report.width_pruned.items()}
    line = str(report) if note is None else note(student, str(report))
    if "layer_choice" in measured:
        line += f"; layers chosen by {options.importance} on {held:,} calibration tokens"
    return dataclasses.replace(models, student=student, student_note=line), measured


def _log_passes(done: int, passes: int) -> None:
    """The perplexity rule's progress in the log, every tenth of its passes (it can take an hour on a CPU)."""
    if done == passes or done % max(1, passes // 10) == 0:
        logger.info("importance (perplexity): %d of %d passes over the calibration text", done, passes)


def _depth(teacher: nn.Module) -> int:
    return model_dims(teacher).num_layers


def _uniform_loss(teacher: nn.Module, keep: int, loss_of: Callable[[nn.Module], float]) -> float:
    with kept_layers(teacher, list(uniform_map(keep, _depth(teacher)).values())):
        return loss_of(teacher)


def _why(choice: LayerChoice, perplexity: bool) -> str:
    if choice.rule == "block_influence":
        return (
            "kept the layers whose output differs most from their input (block influence, 1 - cos, "
            f"highest first); the teacher with only them: {_shown(choice.loss, perplexity)}"
        )
    return (
        "dropped, one at a time, the layer whose removal raised the calibration loss least "
        f"(order: {', '.join(str(layer) for layer in choice.removed)}); the teacher with only them: "
        f"{_shown(choice.loss, perplexity)}"
    )
