"""The training stages of a run: an objective each, built from the ``objective:`` section against
the two models, and the optimizer and schedule each stage trains with.

``hinton`` and explicit ``terms`` are one stage; ``tinybert`` is TinyBERT's two stages
(intermediate layers, then the prediction layer); ``minilm`` is self-attention relations, then
the soft labels. A term named in ``terms`` is built from the registry
(:mod:`kdistill.losses.registry`), so a new term needs no change here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdistill.app.config import PRESET_DEFAULTS, ObjectiveConfig, TrainingConfig
from kdistill.capture import check_capture
from kdistill.errors import ConfigError, KdistillError
from kdistill.losses import Objective
from kdistill.losses.registry import build_term
from kdistill.recipes import TinyBERTConfig, TinyBERTDistillation, minilm_objectives
from kdistill.train.on_policy import OnPolicy

__all__ = ["Stage", "build_stages", "check_stage_capture", "optimizer_and_scheduler"]


@dataclass
class Stage:
    """One training stage: an objective trained for some epochs at a learning rate.

    Attributes:
        name: ``distill``, or the recipe's stage name (``intermediate``, ``prediction``, ``relations``).
        objective: the loss of the stage.
        epochs: passes over the training data.
        lr: peak learning rate.
        on_policy: causal LMs: replaces some batches by the student's samples (``objective.on_policy``).
    """

    name: str
    objective: Objective
    epochs: int
    lr: float
    on_policy: OnPolicy | None = None


def _stages(
    objective: ObjectiveConfig,
    training: TrainingConfig,
    student: nn.Module,
    teacher: nn.Module,
    task: Any,
    teachers: Mapping[str, nn.Module],
) -> list[Stage]:
    if objective.terms is not None:
        # a term that names one of several teachers is built against it (its projections' widths)
        terms = {
            name: build_term(spec, student, teachers.get(spec.teacher, teacher) if spec.teacher else teacher)
            for name, spec in objective.terms.items()
        }
        weights = {name: spec.weight for name, spec in objective.terms.items()}
        return [Stage("distill", Objective(terms, weights), training.epochs, training.lr)]
    assert objective.preset is not None and objective.alpha is not None  # the schema fills them per preset
    # no temperature with alpha 0: the soft labels get weight 0, so any temperature builds that unused term
    temperature = objective.temperature if objective.temperature is not None else PRESET_DEFAULTS[objective.preset][0]
    own = task.preset_objective(objective.preset, temperature, objective.alpha) if task else None
    if own is not None:
        return [Stage("distill", own, training.epochs, training.lr)]
    if objective.preset == "tinybert":
        settings = objective.tinybert
        assert settings is not None and settings.intermediate_epochs and settings.prediction_epochs
        recipe = TinyBERTDistillation(
            teacher,
            student,
            TinyBERTConfig(
                layer_map=settings.layer_map,
                attention_on=settings.attention_on,
                heads=settings.heads,
                shared_projection=settings.shared_projection,
                embedding_weight=settings.embedding_weight,
                hidden_weight=settings.hidden_weight,
                attention_weight=settings.attention_weight,
                temperature=temperature,
                hard_label_weight=1.0 - objective.alpha,
            ),
        )
        return [
            Stage(
                "intermediate",
                recipe.stage_objective(1),
                settings.intermediate_epochs,
                settings.intermediate_lr or training.lr,
            ),
            Stage(
                "prediction",
                recipe.stage_objective(2),
                settings.prediction_epochs,
                settings.prediction_lr or training.lr,
            ),
        ]
    if objective.preset == "minilm":
        settings = objective.minilm
        assert settings is not None and settings.relation_epochs
        relations, prediction = minilm_objectives(
            student,
            teacher,
            version=settings.version,
            student_layer=settings.student_layer,
            teacher_layer=settings.teacher_layer,
            relation_heads=settings.relation_heads,
            temperature=temperature,
            alpha=objective.alpha,
        )
        return [
            Stage("relations", relations, settings.relation_epochs, settings.relation_lr or training.lr),
            Stage("prediction", prediction, training.epochs, training.lr),
        ]
    hinton = Objective.hinton(temperature=temperature, alpha=objective.alpha)
    return [Stage("distill", hinton, training.epochs, training.lr)]


def build_stages(
    objective: ObjectiveConfig,
    training: TrainingConfig,
    student: nn.Module,
    teacher: nn.Module,
    task: Any = None,
    teachers: Mapping[str, nn.Module] | None = None,
) -> list[Stage]:
    """The training stages of ``objective``, built against the two models; a preset is the task's
    own objective where the task has one (:meth:`~kdistill.tasks.base.Task.preset_objective`).
    With several ``teachers`` by name, a term that names one is built against it.

    Raises:
        ConfigError: the objective does not fit the models (a layer out of range, widths that a
            relation head count does not divide ...).
    """
    try:
        return _stages(objective, training, student, teacher, task, teachers or {})
    except KdistillError:
        raise
    except (ValueError, TypeError) as error:
        raise ConfigError(f"objective: {error}") from None


def check_stage_capture(
    stages: list[Stage], student: nn.Module, teacher: nn.Module, teachers: Mapping[str, nn.Module] | None = None
) -> None:
    """Refuse, before the run starts, a term that asks a model for what it cannot give (attention
    maps of an architecture kdistill cannot read them from) instead of failing at the first step."""
    for stage in stages:
        sides = [("teacher", teacher, stage.objective.request("teacher")), ("student", student, None)]
        if teachers:
            sides = [(f"teacher {n}", m, stage.objective.request("teacher", n)) for n, m in teachers.items()]
            sides.append(("student", student, None))
        for role, model, request in sides:
            try:
                check_capture(model, request if request is not None else stage.objective.request("student"))
            except (ValueError, TypeError) as error:
                raise ConfigError(f"objective ({stage.name} stage), the {role}: {error}") from None


def optimizer_and_scheduler(
    student: nn.Module, objective: Objective, stage: Stage, training: TrainingConfig, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, Any, int]:
    """AdamW over the student (biases and norms without weight decay) and the objective's own
    parameters, with linear warm-up and decay; the stage's planned optimizer steps."""
    from transformers import get_linear_schedule_with_warmup

    decay, no_decay = [], []
    for name, parameter in student.named_parameters():
        if parameter.requires_grad:
            # biases and norms are not decayed (the usual transformer recipe)
            (no_decay if parameter.ndim < 2 or "norm" in name.lower() else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": training.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    extra = [p for p in objective.parameters() if p.requires_grad]
    if extra:
        groups.append({"params": extra, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=stage.lr)
    total = steps_per_epoch * stage.epochs
    if training.max_steps is not None:
        total = min(total, training.max_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(training.warmup_ratio * total), max(total, 1))
    return optimizer, scheduler, total
