"""``DistillationTrainer``: distillation inside the Hugging Face ``Trainer``.

It overrides only what distillation changes: the loss (``compute_loss``), the optimizer's
parameter list (the objective's trainable parts) and logging (every loss part). Everything
else — devices, DDP through Accelerate, mixed precision, checkpoints, evaluation — is the
Trainer's own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformers import Trainer

from kdistill.capture import Features, attention_mask_of, capture
from kdistill.losses.objective import Objective
from kdistill.train.teacher import teacher_features

__all__ = ["DistillationTrainer"]


class DistillationTrainer(Trainer):
    """A ``transformers.Trainer`` that trains its ``model`` (the student) to imitate ``teacher_model``.

    The teacher is moved to the training device, kept in eval mode, run under ``no_grad``, never
    handed to the optimizer and never saved: ``save_model`` writes the student only, loadable with
    plain ``AutoModelForSequenceClassification.from_pretrained``. Evaluation returns the student's
    logits; its loss is the distillation loss.

    Args:
        teacher_model: the trained teacher (any ``nn.Module`` taking the batch's keyword inputs).
        temperature: softening temperature of the default objective.
        alpha: weight of the soft (teacher) loss in the default objective, in [0, 1].
        objective: a full :class:`~kdistill.losses.objective.Objective`; replaces the default
            ``Objective.hinton(temperature, alpha)``.
        *args, **kwargs: passed on to ``transformers.Trainer`` (``model``, ``args``,
            ``train_dataset``, ...).

    Example:
        >>> trainer = DistillationTrainer(  # doctest: +SKIP
        ...     teacher_model=teacher, model=student, args=TrainingArguments("out"),
        ...     train_dataset=train_dataset, temperature=4.0, alpha=0.5)
        >>> trainer.train()  # doctest: +SKIP
    """

    # our loss is a mean over the micro-batch: let the Trainer divide it by the accumulation steps
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        teacher_model: nn.Module | None = None,
        temperature: float = 4.0,
        alpha: float = 0.5,
        *args: Any,
        objective: Objective | None = None,
        **kwargs: Any,
    ) -> None:
        if teacher_model is None:
            raise TypeError("DistillationTrainer needs teacher_model=, the trained model to distil from")
        if not isinstance(teacher_model, nn.Module):
            raise TypeError(f"teacher_model must be a torch.nn.Module, got {type(teacher_model).__name__}")
        if objective is not None and not isinstance(objective, Objective):
            raise TypeError(f"objective must be a kdistill Objective, got {type(objective).__name__}")
        self.objective = objective if objective is not None else Objective.hinton(temperature, alpha)
        super().__init__(*args, **kwargs)
        if teacher_model is self.model:
            raise ValueError("teacher_model and model are the same module; the student must be a separate model")
        # Transformers < 4.50 reads this flag instead of loss_is_scaled_for_ga
        self.model_accepts_loss_kwargs = False
        self.teacher = teacher_model
        self.teacher.eval()
        self.teacher.to(self.args.device)
        self.objective.to(self.args.device)
        self._part_sums: dict[str, Tensor] = {}
        self._part_count = 0

    @property
    def temperature(self) -> float | None:
        """Temperature of the objective's soft-label term, if it has one."""
        kd = self.objective.terms["kd"] if "kd" in self.objective.terms else None
        return getattr(kd, "temperature", None)

    @property
    def alpha(self) -> float | None:
        """Weight of the objective's soft-label term, if it has one."""
        return self.objective.weights.get("kd")

    def create_optimizer(self, *args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        """The Trainer's optimizer, plus the objective's trainable parts (projections) as one more group."""
        optimizer = super().create_optimizer(*args, **kwargs)
        params = [p for p in self.objective.parameters() if p.requires_grad]
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        params = [p for p in params if id(p) not in held]
        if params:
            optimizer.add_param_group({"params": params, "weight_decay": 0.0})
        return optimizer

    def _teacher_features(self, inputs: dict[str, Any], device: torch.device) -> Features:
        if next(self.teacher.parameters(), torch.empty(0)).device != device:
            self.teacher.to(device)
        self.teacher.eval()
        with self.accelerator.autocast():
            return teacher_features(self.teacher, inputs, self.objective.request("teacher"))

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, Any]:
        """The objective on the student's and the teacher's outputs for one batch.

        ``num_items_in_batch`` is accepted for the Trainer's signature; the loss is a mean over the
        batch and the Trainer divides it by the gradient-accumulation steps.
        """
        inputs = dict(inputs)
        labels = None
        for name in self.label_names or ["labels"]:
            if name in inputs:
                labels = inputs.pop(name)
                break
        student_side = capture(
            model, inputs, self.objective.request("student"), module=self.accelerator.unwrap_model(model)
        )
        mask = attention_mask_of(inputs)
        device = mask.device if mask is not None else next(model.parameters()).device
        teacher_side = self._teacher_features(inputs, device)
        result = self.objective(student_side, teacher_side, labels)
        if model.training:
            for name, value in result.parts.items():
                # summed on the device; read once per logging step to avoid a sync per batch
                self._part_sums[name] = value if name not in self._part_sums else self._part_sums[name] + value
            self._part_count += 1
        return (result.total, student_side.output) if return_outputs else result.total

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Add each loss part's mean since the last log to training logs."""
        if "loss" in logs and self._part_count:
            for name, total in self._part_sums.items():
                logs[f"loss_{name}"] = round(float(total) / self._part_count, 6)
            self._part_sums, self._part_count = {}, 0
        super().log(logs, *args, **kwargs)

