"""Several teachers in a run (``teachers:``): loading and checking them against each other and the
student, how they combine (the objective's :class:`~kdistill.losses.combine.TeacherMix`), which
teacher each training example names under ``combine: route``, and how well the combination does
on the evaluated split (docs/multi_teacher.md).

One teacher (``teacher:``) passes through every function here unchanged.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from kdistill.cache.keys import fingerprint_tokenizer
from kdistill.capture import CaptureRequest, capture
from kdistill.data.batch import split_batch
from kdistill.errors import ConfigError, DataError, KdistillError
from kdistill.losses.combine import TeacherMix, example_weights, target_logits, teacher_statistics
from kdistill.losses.objective import Objective
from kdistill.losses.tokens import next_token_targets
from kdistill.tasks.base import Models, Task

__all__ = [
    "check_teachers_agree",
    "combined_metrics",
    "load_run_models",
    "measure_teachers",
    "route_indices",
    "route_warnings",
    "set_stage_teachers",
    "teacher_mix",
    "teacher_set_record",
]

#: rows of a causal LM's evaluation batch combined at once (their logits are rows × length × vocabulary)
_LM_ROWS = 1


def load_run_models(task: Task, config: Any, raw: Any, *, seed: int) -> Models:
    """The run's models: its teacher and student, and with ``teachers:`` every teacher by name,
    checked to agree with each other and with the student.

    The student is built from (and the tokenizer taken from) the primary teacher
    (``student.from_teacher.teacher``, default the first); the others are loaded as a
    teacher-only run would load them.

    Raises:
        KdistillError: a teacher that does not load, or teachers that disagree (their label
            names, their tokenizer against the student's), as one line naming the teacher.
    """
    if not config.several_teachers:
        return task.load_models(config.teacher, config.student, raw, seed=seed)
    sections, primary = config.teacher_sections, config.primary_teacher
    others: dict[str, Models] = {}
    for name, section in sections.items():
        if name != primary:
            others[name] = _named(name, lambda s=section: task.load_models(s, None, raw, seed=seed))
    # the primary last: the run's label names are those it was loaded with
    models = _named(primary, lambda: task.load_models(sections[primary], config.student, raw, seed=seed))
    _check_agreement(primary, models, others)
    loaded = {primary: models, **others}
    models.teachers = {name: loaded[name].teacher for name in sections}
    models.teacher_locations = {name: loaded[name].teacher_location for name in sections}
    return models


def _named(name: str, load: Any) -> Models:
    try:
        return load()  # type: ignore[no-any-return]
    except KdistillError as error:
        # the task's message names one teacher's keys (teacher.num_labels): here they are this one's
        message = re.sub(r"\bteacher\.(?=[a-z_])", f"teachers.{name}.", str(error))
        raise type(error)(f"teachers.{name}: {message}") from None


def _labels_of(model: nn.Module) -> dict[int, str] | None:
    labels = getattr(getattr(model, "config", None), "id2label", None)
    return {int(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else None


def _check_agreement(primary: str, models: Models, others: Mapping[str, Models]) -> None:
    """Teachers name their logits alike and read the student's tokens."""
    check_teachers_agree(
        primary,
        models.teacher,
        models.tokenizer,
        {name: (other.teacher, other.teacher_tokenizer, other.teacher_location) for name, other in others.items()},
    )


def check_teachers_agree(
    primary: str, teacher: nn.Module, student_tokenizer: Any, others: Mapping[str, tuple[nn.Module, Any, str]]
) -> None:
    """Each of ``others`` (``{name: (model, tokenizer, location)}``) names its logits as ``teacher``
    (the one called ``primary``) does, and reads the student's tokens; ``others`` may hold the
    primary itself, whose labels are then not compared with themselves.

    Raises:
        ConfigError: a teacher with other label names (``id2label``) or another tokenizer, naming it.
    """
    labels = _labels_of(teacher)
    student_tokens = fingerprint_tokenizer(student_tokenizer)
    for name, (model, tokenizer, location) in others.items():
        theirs = _labels_of(model)
        if name != primary and theirs != labels:
            raise ConfigError(
                f"teachers {primary} and {name} name their classes differently ({_shown(labels)} against "
                f"{_shown(theirs)}): every teacher must give the same labels in the same logit order"
            )
        if fingerprint_tokenizer(tokenizer) != student_tokens:
            raise ConfigError(
                f"teachers.{name}: its tokenizer is not the student's ({location}); several teachers "
                "must read the student's token ids (cross-tokenizer distillation is not available yet): give "
                "teachers that share one tokenizer"
            )


def _shown(labels: Mapping[int, str] | None) -> str:
    if labels is None:
        return "no id2label"
    items = list(labels.items())
    shown = ", ".join(f"{k}: {v}" for k, v in items[:6])
    return "{" + shown + (", ..." if len(items) > 6 else "") + "}"


def teacher_mix(config: Any) -> TeacherMix | None:
    """The combination of a ``teachers:`` run (None for one teacher)."""
    if not config.several_teachers or config.objective is None:
        return None
    settings = config.objective.teachers
    weights = {name: section.weight for name, section in config.teachers.items()}
    return TeacherMix.of(weights, settings.combine, settings.temperature or 1.0)


def set_stage_teachers(objectives: Sequence[Objective], config: Any) -> None:
    """Give each stage's objective the run's combination, and each term that names a teacher its teacher."""
    mix = teacher_mix(config)
    if mix is None:
        return
    named = {name: term.teacher for name, term in (config.objective.terms or {}).items() if term.teacher is not None}
    for objective in objectives:
        try:
            objective.set_teachers(mix, {name: t for name, t in named.items() if name in objective.terms})
        except ValueError as error:
            raise ConfigError(f"objective: {error}") from None


def route_indices(routes: Sequence[str] | None, names: Sequence[str], source: str = "the training data") -> list[int]:
    """Each training example's teacher index under ``combine: route``.

    Raises:
        DataError: an example names a teacher that does not exist.
    """
    if routes is None:
        raise DataError(f"combine: route needs each training example's teacher, and {source} names none")
    index = {name: i for i, name in enumerate(names)}
    unknown = [name for name in routes if name not in index]
    if unknown:
        # no row number: the training split may be the file less a held-out validation split, reordered
        count = unknown.count(unknown[0])
        raise DataError(
            f"{source}: {count} training example{'s name' if count > 1 else ' names'} teacher {unknown[0]!r}, but "
            f"the teachers are {', '.join(names)}: fix the column, or add that teacher"
        )
    return [index[name] for name in routes]


def route_warnings(routes: Sequence[int] | None, names: Sequence[str]) -> list[str]:
    """Under ``combine: route``, a warning for each teacher no training example is routed to
    (``routes``: :func:`route_indices`' answer); none without routes."""
    if routes is None:
        return []
    routed = set(routes)
    return [
        f"combine: route: no training example names teacher {name}, so it teaches nothing"
        for i, name in enumerate(names)
        if i not in routed
    ]


def teacher_set_record(models: Models, config: Any, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """What the run records of its teachers (``metrics.json``): each one's location, weight and
    fingerprint (read from the run's input fingerprints), and how they combine."""
    mix = teacher_mix(config)
    if mix is None:
        return {}
    record: dict[str, Any] = {"combine": mix.describe(), "teachers": {}}
    for name, weight in zip(mix.names, mix.weights, strict=True):
        location = models.teacher_locations.get(name, "")
        found = inputs.get(f"teachers.{name}.path") or inputs.get(f"teachers.{name}.package")
        record["teachers"][name] = {"location": location, "weight": weight, "fingerprint": found}
    return record


def measure_teachers(
    task: Task,
    teachers: Mapping[str, nn.Module],
    locations: Mapping[str, str],
    mix: TeacherMix,
    student: nn.Module | None,
    loader: Any,
    *,
    progress: bool,
) -> dict[str, Any]:
    """Several teachers on ``loader`` (``kdistill distill``'s evaluated split, ``kdistill eval``'s
    file): each one's task metrics, weight and location with the student's ``student_agreement``
    with it, and the combination's (:func:`combined_metrics`, with its ``rule``).

    Returns:
        ``{"teachers": {name: {...}}, "combined": {...}}``, as ``metrics.json`` holds them.
    """
    measured_teachers: dict[str, Any] = {}
    for name, weight in zip(mix.names, mix.weights, strict=True):
        pair = {"teacher": teachers[name], **({"student": student} if student is not None else {})}
        measured = task.evaluate(pair, loader, progress=progress, desc=f"teacher {name}")
        found = {**measured["teacher"], "weight": weight, "location": locations.get(name, "")}
        if "agreement" in measured.get("student", {}):
            found["student_agreement"] = measured["student"]["agreement"]
        measured_teachers[name] = found
    in_order = {name: teachers[name] for name in mix.names}  # combined_metrics pairs them with the weights
    combined = {"rule": mix.describe(), **combined_metrics(in_order, mix, student, loader)}
    return {"teachers": measured_teachers, "combined": combined}


def combined_metrics(
    teachers: Mapping[str, nn.Module], mix: TeacherMix, student: nn.Module | None, loader: Any
) -> dict[str, float]:
    """The combination the student learns from, measured on ``loader``: classifiers' ``accuracy``
    (of the combined probabilities' argmax) or causal LMs' ``perplexity`` (of the combined
    next-token distribution), and the student's ``agreement`` with it (same argmax).

    The weights are fixed (``ω``), except ``entropy``'s, which need no label; ``confidence`` and
    ``route`` read the gold label or the data's route, which an evaluation does not use, so they
    are measured with ``ω``.
    """
    rule = mix.combine if mix.combine in ("entropy", "logit_mean") else "mixture"
    evaluated = TeacherMix(mix.names, mix.weights, rule, mix.temperature)
    device = next(next(iter(teachers.values())).parameters()).device
    totals = {"correct": 0.0, "agree": 0.0, "counted": 0.0, "nll": 0.0}
    per_token = False
    for batch in loader:
        inputs, labels = split_batch(batch)
        if labels is None:
            continue
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        labels = labels.to(device)
        per_token = labels.dim() == 2
        # a causal LM's logits are rows × length × vocabulary: a few rows at a time
        step = _LM_ROWS if per_token else labels.shape[0]
        for start in range(0, labels.shape[0], step):
            rows = slice(start, start + step)
            part = {k: v[rows] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
            _add_batch(totals, evaluated, teachers, student, part, labels[rows])
    if totals["counted"] == 0:
        return {}
    found: dict[str, float] = {}
    if per_token:
        found["perplexity"] = math.exp(totals["nll"] / totals["counted"])
    else:
        found["accuracy"] = totals["correct"] / totals["counted"]
    if student is not None:
        found["agreement"] = totals["agree"] / totals["counted"]
    return found


def _add_batch(
    totals: dict[str, float],
    mix: TeacherMix,
    teachers: Mapping[str, nn.Module],
    student: nn.Module | None,
    inputs: dict[str, Any],
    labels: torch.Tensor,
) -> None:
    with torch.no_grad():
        logits = [capture(model, inputs, CaptureRequest()).logits for model in teachers.values()]
        student_logits = capture(student, inputs, CaptureRequest()).logits if student is not None else None
    combined = _combined(mix, logits)
    gold = next_token_targets(labels) if labels.dim() == 2 else labels
    keep = gold != -100
    totals["counted"] += float(keep.sum())
    predicted = combined.argmax(-1)
    totals["correct"] += float((predicted == gold)[keep].sum())
    if labels.dim() == 2:
        log_p = torch.log_softmax(combined, dim=-1)
        totals["nll"] -= float(log_p.gather(-1, gold.clamp_min(0).unsqueeze(-1)).squeeze(-1)[keep].sum())
    if student_logits is not None:
        same = predicted == student_logits[..., : combined.shape[-1]].argmax(-1)
        totals["agree"] += float(same[keep].sum())


def _combined(mix: TeacherMix, logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The combined distribution's logits at temperature 1 (entropy weights from the logits themselves)."""
    lead = tuple(logits[0].shape[:-1])
    options: dict[str, Any] = {"device": logits[0].device}
    if mix.combine == "entropy":
        options["entropies"] = torch.stack([teacher_statistics(z, None)[1] for z in logits])
    weights = example_weights(mix, lead, **options)
    return target_logits(list(logits), weights, mix.combine, 1.0)
