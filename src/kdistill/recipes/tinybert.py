"""TinyBERT-style distillation (Jiao et al., 2020) in two stages, for any layer counts.

Stage 1, *intermediate layers*: the student learns the teacher's embedding output, the hidden
states and the attention scores of mapped layers (through learned projections where the widths
differ). Stage 2, *prediction layer*: the student learns the teacher's soft labels. Both stages
are :class:`~kdistill.losses.objective.Objective` objects, so they run through either training
path: :meth:`TinyBERTDistillation.train` runs both with :func:`~kdistill.train.loop.distill`;
:meth:`TinyBERTDistillation.trainer` builds a :class:`~kdistill.train.trainer.DistillationTrainer`
for one stage.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from kdistill.capture import capture
from kdistill.data.batch import split_batch
from kdistill.losses.attention_terms import AttentionMSE
from kdistill.losses.functional import HEAD_MODES, check_temperature, check_unit_interval
from kdistill.losses.intermediate import EmbeddingMSE, HiddenMSE
from kdistill.losses.objective import LossOutput, Objective
from kdistill.losses.terms import HardCE, LogitKD
from kdistill.models.layer_maps import resolve_layer_map
from kdistill.train.loop import History, distill
from kdistill.train.teacher import teacher_features
from kdistill.train.trainer import DistillationTrainer

__all__ = ["TinyBERTConfig", "TinyBERTDistillation", "TinyBERTHistory"]

Stage = Literal[1, 2]


def _positive_int(value: object, name: str, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be {'None or ' if optional else ''}an integer >= 1, got {value!r}")


def _positive_float(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")


@dataclass
class TinyBERTConfig:
    """Settings of a TinyBERT run.

    Attributes:
        layer_map: ``{student_layer: teacher_layer}`` for hidden states and attention (layers
            1..depth), or ``"uniform"`` (TinyBERT's ``m -> m·N/M``), ``"every-K"``, ``"last-K"``.
            The embedding outputs (layer 0) are always compared.
        attention_on: ``"scores"`` (pre-softmax, as TinyBERT) or ``"probs"``.
        heads: how different head counts are matched (see :class:`~kdistill.losses.AttentionMSE`).
        shared_projection: one hidden-state projection for all layers (TinyBERT's ``W_h``).
        embedding_weight: weight of the embedding loss in stage 1.
        hidden_weight: weight of the hidden-state loss in stage 1.
        attention_weight: weight of the attention loss in stage 1.
        temperature: temperature of the prediction-layer loss (TinyBERT uses 1).
        hard_label_weight: weight of cross-entropy on the labels in stage 2, in [0, 1]
            (TinyBERT: 0); the soft loss gets ``1 - hard_label_weight``.
        intermediate_epochs: epochs of stage 1.
        intermediate_steps: stop stage 1 after this many optimizer steps (None: run the epochs).
        intermediate_lr: learning rate of stage 1.
        prediction_epochs: epochs of stage 2.
        prediction_steps: stop stage 2 after this many optimizer steps.
        prediction_lr: learning rate of stage 2.
    """

    layer_map: Mapping[int, int] | str = "uniform"
    attention_on: str = "scores"
    heads: str = "auto"
    shared_projection: bool = False
    embedding_weight: float = 1.0
    hidden_weight: float = 1.0
    attention_weight: float = 1.0
    temperature: float = 1.0
    hard_label_weight: float = 0.0
    intermediate_epochs: int = 1
    intermediate_steps: int | None = None
    intermediate_lr: float = 5e-5
    prediction_epochs: int = 1
    prediction_steps: int | None = None
    prediction_lr: float = 3e-5

    def __post_init__(self) -> None:
        if self.attention_on not in ("scores", "probs"):
            raise ValueError(f"attention_on must be 'scores' or 'probs', got {self.attention_on!r}")
        if self.heads not in HEAD_MODES:
            raise ValueError(f"heads must be one of {', '.join(HEAD_MODES)}, got {self.heads!r}")
        check_temperature(self.temperature)
        check_unit_interval(self.hard_label_weight, "hard_label_weight")
        for name in ("embedding_weight", "hidden_weight", "attention_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if self.embedding_weight == self.hidden_weight == self.attention_weight == 0:
            raise ValueError("stage 1 needs a weight > 0 on the embedding, hidden or attention loss")
        for name in ("intermediate_epochs", "prediction_epochs"):
            _positive_int(getattr(self, name), name)
        for name in ("intermediate_steps", "prediction_steps"):
            _positive_int(getattr(self, name), name, optional=True)
        for name in ("intermediate_lr", "prediction_lr"):
            _positive_float(getattr(self, name), name)


@dataclass
class TinyBERTHistory:
    """The histories of the two stages of :meth:`TinyBERTDistillation.train`."""

    intermediate: History = field(default_factory=History)
    prediction: History = field(default_factory=History)


class TinyBERTDistillation:
    """TinyBERT's two-stage distillation of ``teacher`` into ``student``.

    Stage 1 trains the student (and the projections) on embedding, hidden-state and attention
    losses over the layer map; stage 2 on the teacher's soft labels. Works for any depths (the
    uniform map is ``m -> round(m·N/M)``) and widths (learned projections), with SDPA attention
    kept (see :mod:`kdistill.models.anatomy`).

    Args:
        teacher: the trained teacher, a Hugging Face encoder.
        student: the student, same family, fewer and/or narrower layers.
        config: a :class:`TinyBERTConfig` (a mapping of its fields is accepted); default settings if None.

    Example:
        >>> recipe = TinyBERTDistillation(teacher, student, TinyBERTConfig(intermediate_epochs=3))  # doctest: +SKIP
        >>> history = recipe.train(train_loader)  # doctest: +SKIP
    """

    def __init__(
        self, teacher: nn.Module, student: nn.Module, config: TinyBERTConfig | Mapping[str, Any] | None = None
    ) -> None:
        if not isinstance(teacher, nn.Module) or not isinstance(student, nn.Module):
            raise TypeError("teacher and student must both be torch.nn.Module instances")
        if teacher is student:
            raise ValueError("the teacher and the student are the same module; the student must be a separate model")
        if config is None:
            config = TinyBERTConfig()
        elif isinstance(config, Mapping):
            known = {f.name for f in dataclasses.fields(TinyBERTConfig)}
            unknown = sorted(set(config) - known)
            if unknown:
                raise ValueError(f"unknown TinyBERT settings {unknown}; the settings are {sorted(known)}")
            config = TinyBERTConfig(**config)
        elif not isinstance(config, TinyBERTConfig):
            raise TypeError(f"config must be a TinyBERTConfig, got {type(config).__name__}")
        self.teacher, self.student, self.config = teacher, student, config
        self.layer_map = resolve_layer_map(config.layer_map, student, teacher, attention=True)
        self._objectives = {1: self._intermediate_objective(), 2: self._prediction_objective()}

    def _intermediate_objective(self) -> Objective:
        config = self.config
        terms = {
            "embedding": EmbeddingMSE.from_models(self.student, self.teacher),
            "hidden": HiddenMSE.from_models(
                self.student, self.teacher, self.layer_map, shared_projection=config.shared_projection
            ),
            "attention": AttentionMSE(self.layer_map, on=config.attention_on, heads=config.heads),
        }
        weights = {
            "embedding": config.embedding_weight,
            "hidden": config.hidden_weight,
            "attention": config.attention_weight,
        }
        return Objective(terms, weights)

    def _prediction_objective(self) -> Objective:
        hard = self.config.hard_label_weight
        return Objective(
            {"kd": LogitKD(self.config.temperature), "ce": HardCE()}, weights={"kd": 1.0 - hard, "ce": hard}
        )

    def stage_objective(self, stage: Stage) -> Objective:
        """The objective of stage 1 (intermediate layers) or 2 (prediction layer).

        The same object is returned on every call, so stage 1's projections keep their training.
        """
        if stage not in (1, 2):
            raise ValueError(f"TinyBERT has stages 1 (intermediate layers) and 2 (prediction layer), got {stage!r}")
        return self._objectives[stage]

    def run_stage(self, stage: Stage, train_loader: Iterable[Any], **distill_kwargs: Any) -> History:
        """Run one stage with :func:`~kdistill.train.loop.distill`.

        Args:
            stage: 1 or 2.
            train_loader: batches as for :func:`distill` (dicts with ``input_ids``, ``attention_mask``,
                ``labels``).
            **distill_kwargs: passed on to :func:`distill`; ``epochs``, ``max_steps`` and ``lr``
                default to the config's values for the stage.
        """
        config = self.config
        settings = (
            {
                "epochs": config.intermediate_epochs,
                "max_steps": config.intermediate_steps,
                "lr": config.intermediate_lr,
            }
            if stage == 1
            else {"epochs": config.prediction_epochs, "max_steps": config.prediction_steps, "lr": config.prediction_lr}
        )
        settings.update(distill_kwargs)
        return distill(self.teacher, self.student, train_loader, objective=self.stage_objective(stage), **settings)

    def train(self, train_loader: Iterable[Any], **distill_kwargs: Any) -> TinyBERTHistory:
        """Run stage 1 then stage 2 through :func:`~kdistill.train.loop.distill`.

        Args:
            train_loader: a re-iterable source of batches (a ``DataLoader`` or a list).
            **distill_kwargs: passed on to both stages (``progress``, ``precision`` ...).

        Returns:
            Both stages' histories.
        """
        intermediate = self.run_stage(1, train_loader, **distill_kwargs)
        prediction = self.run_stage(2, train_loader, **distill_kwargs)
        return TinyBERTHistory(intermediate=intermediate, prediction=prediction)

    run = train

    def trainer(self, stage: Stage, **trainer_kwargs: Any) -> Any:
        """A :class:`~kdistill.train.trainer.DistillationTrainer` for one stage.

        Args:
            stage: 1 or 2.
            **trainer_kwargs: passed on (``args``, ``train_dataset``, ``data_collator`` ...).

        Example:
            >>> recipe.trainer(1, args=TrainingArguments("out/stage1"), train_dataset=data).train()  # doctest: +SKIP
        """
        return DistillationTrainer(
            teacher_model=self.teacher, model=self.student, objective=self.stage_objective(stage), **trainer_kwargs
        )

    def compute_loss(self, inputs: Any, labels: Tensor | None = None, stage: Stage | None = None) -> Tensor:
        """The seed's loss for one batch: embedding + hidden + attention + prediction.

        Args:
            inputs: the model inputs (a dict with ``input_ids`` and ``attention_mask``); a
                ``labels`` entry is taken as the labels.
            labels: hard labels, used when ``hard_label_weight > 0``.
            stage: only this stage's loss; default both, summed as in the seed.

        Returns:
            A float32 scalar with gradients for the student and the projections.
        """
        return self.loss_parts(inputs, labels, stage).total

    def loss_parts(self, inputs: Any, labels: Tensor | None = None, stage: Stage | None = None) -> LossOutput:
        """Like :meth:`compute_loss`, with each part's value by name."""
        inputs, batch_labels = split_batch(inputs)
        labels = batch_labels if labels is None else labels
        objectives = [self.stage_objective(stage)] if stage is not None else [self._objectives[1], self._objectives[2]]
        student_request = objectives[0].request("student")
        teacher_request = objectives[0].request("teacher")
        for objective in objectives[1:]:
            student_request = student_request | objective.request("student")
            teacher_request = teacher_request | objective.request("teacher")
        self.teacher.eval()
        teacher_side = teacher_features(self.teacher, inputs, teacher_request)
        student_side = capture(self.student, inputs, student_request)
        total: Tensor | None = None
        parts: dict[str, Tensor] = {}
        for objective in objectives:
            result = objective(student_side, teacher_side, labels)
            parts.update(result.parts)
            total = result.total if total is None else total + result.total
        assert total is not None
        return LossOutput(total=total, parts=parts)

    def parameters(self) -> Iterable[torch.nn.Parameter]:
        """The trainable parameters of a run: the student's and stage 1's projections (for a custom loop
        around :meth:`compute_loss`)."""
        yield from (p for p in self.student.parameters() if p.requires_grad)
        yield from (p for p in self._objectives[1].parameters() if p.requires_grad)
