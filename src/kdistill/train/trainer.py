"""``DistillationTrainer``: distillation inside the Hugging Face ``Trainer``.

It overrides only what distillation changes: the loss (``compute_loss``), the optimizer's
parameter list (the objective's trainable parts) and logging (every loss part). Everything
else — devices, DDP through Accelerate, mixed precision, checkpoints, evaluation — is the
Trainer's own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import Trainer

from kdistill.capture import Features, attention_mask_of, capture
from kdistill.data.batch import INDEX_KEY, ROUTE_KEY, example_routes
from kdistill.errors import NonFiniteTeacherError
from kdistill.losses.objective import Objective, StepShare
from kdistill.losses.token_terms import count_targets
from kdistill.train.on_policy import OnPolicy
from kdistill.train.setup import check_on_policy
from kdistill.train.teacher import TeacherSet, check_teacher_source, teacher_features, teacher_fields, teacher_set

if TYPE_CHECKING:
    from kdistill.cache import TeacherCache

__all__ = ["OBJECTIVE_STATE_NAME", "DistillationTrainer"]

#: file in a Trainer checkpoint that holds the objective's trainable parts (projections)
OBJECTIVE_STATE_NAME = "objective.safetensors"


class DistillationTrainer(Trainer):
    """A ``transformers.Trainer`` that trains its ``model`` (the student) to imitate ``teacher_model``.

    The teacher is moved to the training device, kept in eval mode, run under ``no_grad``, never
    handed to the optimizer and never saved: ``save_model`` writes the student only, loadable with
    plain ``AutoModelForSequenceClassification.from_pretrained``. Evaluation returns the student's
    logits; its loss is the distillation loss. Several teachers (a mapping by name) are treated
    the same way, each one, and combined as the objective's ``TeacherMix`` says, as in
    :func:`~kdistill.train.loop.distill`.

    Args:
        teacher_model: the trained teacher (any ``nn.Module`` taking the batch's keyword inputs).
            Several teachers: a mapping ``{name: model}`` (a model may be None for a teacher
            read from ``teacher_cache`` only), combined as the objective's ``TeacherMix`` says
            (default: an equal-weight ``mixture``). Under ``combine: route`` the dataset needs a
            ``kd_teacher`` column (:data:`~kdistill.data.batch.ROUTE_KEY`, each example's teacher
            index in the mix's order).
        temperature: softening temperature of the default objective.
        alpha: weight of the soft (teacher) loss in the default objective, in [0, 1].
        objective: a full :class:`~kdistill.losses.objective.Objective`; replaces the default
            ``Objective.hinton(temperature, alpha)``.
        teacher_cache: a :class:`~kdistill.cache.TeacherCache` over ``train_dataset``: training
            batches read the teacher's outputs from it (the dataset needs a ``kd_index``
            column, see :func:`~kdistill.data.batch.with_example_index`); ``teacher_model`` may
            then be None, and evaluation batches, which carry no index, use it when given.
            With several teachers, ``{name: cache}`` (a teacher in it needs no model).
        offload_teachers: several teachers on an accelerator: keep each on the CPU and move it to
            the device for its forward only (peak memory: the student and the largest teacher).
        *args, **kwargs: passed on to ``transformers.Trainer`` (``model``, ``args``,
            ``train_dataset``, ...).

    Example:
        >>> trainer = DistillationTrainer(  # doctest: +SKIP
        ...     teacher_model=teacher, model=student, args=TrainingArguments("out"),
        ...     train_dataset=train_dataset, temperature=4.0, alpha=0.5)
        >>> trainer.train()  # doctest: +SKIP
    """

    # the objective scales each micro-batch's loss to its share of the step itself (StepShare: a
    # mean term by the accumulation steps, a token-level term by the step's target tokens)
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        teacher_model: nn.Module | Mapping[str, nn.Module | None] | None = None,
        temperature: float = 4.0,
        alpha: float = 0.5,
        *args: Any,
        objective: Objective | None = None,
        teacher_cache: TeacherCache | Mapping[str, TeacherCache | None] | None = None,
        on_policy: OnPolicy | None = None,
        offload_teachers: bool = False,
        **kwargs: Any,
    ) -> None:
        if teacher_model is None and teacher_cache is None:
            raise TypeError(
                "DistillationTrainer needs teacher_model=, the trained model to distil from "
                "(or teacher_cache= with its stored outputs)"
            )
        if teacher_model is not None and not isinstance(teacher_model, (nn.Module, Mapping)):
            raise TypeError(
                f"teacher_model must be a torch.nn.Module (or {{name: model}}), got {type(teacher_model).__name__}"
            )
        if objective is not None and not isinstance(objective, Objective):
            raise TypeError(f"objective must be a kdistill Objective, got {type(objective).__name__}")
        self.objective = objective if objective is not None else Objective.hinton(temperature, alpha)
        # several teachers (a mapping, or an objective that reads teachers by name): as distill() does
        self.teacher_set: TeacherSet | None = teacher_set(
            teacher_model, teacher_cache, self.objective, offload_teachers
        )
        if self.teacher_set is None:
            check_teacher_source(teacher_model, teacher_cache, self.objective.request("teacher"))
        if on_policy is not None:
            check_on_policy(on_policy, teacher_model, teacher_cache)
        self.teacher_cache, self.on_policy = teacher_cache, on_policy
        super().__init__(*args, **kwargs)
        teachers = teacher_model.values() if isinstance(teacher_model, Mapping) else [teacher_model]
        if any(teacher is not None and teacher is self.model for teacher in teachers):
            raise ValueError("teacher_model and model are the same module; the student must be a separate model")
        # Transformers < 4.50 reads this flag instead of loss_is_scaled_for_ga: True means "the loss is
        # already a share of the step, do not divide it by the accumulation steps" there too
        self.model_accepts_loss_kwargs = True
        self.teacher = teacher_model if self.teacher_set is None else None
        if self.teacher_set is not None:
            self.teacher_set.place(self.args.device)
        elif self.teacher is not None:
            self.teacher.eval()
            self.teacher.to(self.args.device)
        self.objective.to(self.args.device)
        self._part_sums: dict[str, Tensor] = {}
        self._part_steps: set[int] = set()

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
        if self.teacher_set is not None and any(id(p) in held for p in self.teacher_set.parameters()):
            raise ValueError(
                "the optimizer holds teacher parameters; the teachers must stay frozen: build the optimizer over "
                "the student's parameters only"
            )
        params = [p for p in params if id(p) not in held]
        if params:
            optimizer.add_param_group({"params": params, "weight_decay": 0.0})
        return optimizer

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """Save the optimizer and scheduler, plus the objective's state (its projections) beside them.

        The projections are trained like the optimizer's state and needed to resume; they stay
        out of the exported student (``save_model``).
        """
        super()._save_optimizer_and_scheduler(output_dir)
        state = self.objective.state_dict()
        if state and self.args.should_save:
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in state.items()},
                os.path.join(output_dir, OBJECTIVE_STATE_NAME),
            )

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """Restore the objective's state (projections) with the optimizer when resuming."""
        if checkpoint is not None and self.objective.state_dict():
            path = os.path.join(checkpoint, OBJECTIVE_STATE_NAME)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"checkpoint {checkpoint} has no {OBJECTIVE_STATE_NAME}, but the objective has trainable parts "
                    "(projections) to restore; resume from a checkpoint saved by DistillationTrainer with this "
                    "objective"
                )
            self.objective.load_state_dict(load_file(path, device=str(self.args.device)))
        super()._load_optimizer_and_scheduler(checkpoint)

    def _set_signature_columns_if_needed(self) -> None:
        # keep the example-index column that the teacher cache reads and the route column of
        # several teachers (the model sees neither)
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None:
            kept = [key for key in (INDEX_KEY, ROUTE_KEY) if key not in self._signature_columns]
            self._signature_columns = [*self._signature_columns, *kept]

    def _teacher_features(
        self, inputs: dict[str, Any], indices: Tensor | None, route: Tensor | None, device: torch.device
    ) -> Features | dict[str, Features | None]:
        if self.teacher_set is not None:
            self._place_teachers(device)
            with self.accelerator.autocast():
                return self.teacher_set.features(inputs, indices=indices, route=route, device=device)
        if self.teacher is not None:
            if next(self.teacher.parameters(), torch.empty(0)).device != device:
                self.teacher.to(device)
            self.teacher.eval()
        with self.accelerator.autocast():
            return teacher_features(
                self.teacher,
                inputs,
                self.objective.request("teacher"),
                cache=self.teacher_cache,
                indices=indices,
                device=device,
            )

    def _place_teachers(self, device: torch.device) -> None:
        """The teachers in eval mode, and on ``device`` unless offloaded (as the one teacher is, each batch)."""
        assert self.teacher_set is not None
        models = [model for model in self.teacher_set.models.values() if model is not None]
        devices = {p.device for model in models for p in model.parameters()}
        off_device = not self.teacher_set.offload and bool(devices - {device})
        if off_device or any(model.training for model in models):
            self.teacher_set.place(device)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, Any]:
        """The objective on the student's and the teacher's outputs for one batch.

        In training the loss is this micro-batch's share of the optimizer step's loss
        (:class:`~kdistill.losses.objective.StepShare`): a mean term divided by the accumulation
        steps, a token-level term divided by ``num_items_in_batch``, the target tokens of the
        whole step over every process (:meth:`_get_num_items_in_batch` counts them). In evaluation
        it is the batch's own mean.
        """
        inputs = dict(inputs)
        indices = inputs.pop(INDEX_KEY, None)
        route = example_routes(inputs)  # each example's teacher (combine: route), never a model input
        inputs.pop(ROUTE_KEY, None)
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
        teacher_side = self._teacher_features(inputs, indices, route, device)
        share = None
        if model.training:
            tokens = num_items_in_batch if self.objective.token_level else None
            share = StepShare(self.current_gradient_accumulation_steps, tokens, self.accelerator.num_processes)
        routing = {"route": route} if route is not None else {}  # only routed batches carry one
        result = self.objective(student_side, teacher_side, labels, share=share, **routing)
        if not bool(torch.isfinite(result.total)):
            broken = teacher_fields(teacher_side)
            if broken:
                raise NonFiniteTeacherError(
                    f"the teacher's {', '.join(broken)} hold NaN or infinite values, so the loss is not finite: the "
                    "teacher is broken, not the training settings; check its weights, run it in float32 (fp16 "
                    "overflows), or give another teacher"
                )
        if model.training:
            for name, value in result.parts.items():
                # summed on the device; read once per logging step to avoid a sync per batch
                self._part_sums[name] = value if name not in self._part_sums else self._part_sums[name] + value
            self._part_steps.add(self.state.global_step)
        return (result.total, student_side.output) if return_outputs else result.total

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: torch.device) -> tuple[list, Any]:
        """The step's micro-batches and their target tokens; with ``on_policy``, some micro-batches'
        completions are the student's samples, counted after they replace the data's."""
        batches, items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.on_policy is None or not batches:
            return batches, items
        student = self.accelerator.unwrap_model(self.model)
        step, rank = self.state.global_step, self.args.process_index
        batches = [
            self.on_policy(self._prepare_inputs(batch), student, f"{step}:{index}:{rank}")
            for index, batch in enumerate(batches)
        ]
        return batches, self._get_num_items_in_batch(batches, device)

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> Tensor | int | None:
        """The target tokens of a whole optimizer step (next-token targets that count, over every
        micro-batch and every process), for objectives with token-level terms; else the Trainer's own."""
        if not self.objective.token_level:
            return super()._get_num_items_in_batch(batch_samples, device)
        counts = [count_targets(batch["labels"]) for batch in batch_samples if "labels" in batch]
        tokens = torch.stack(counts).sum().to(device) if counts else torch.zeros((), device=device)
        if self.accelerator.num_processes > 1:
            tokens = self.accelerator.reduce(tokens, reduction="sum")
        return tokens.clamp_min(1)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Add each loss part's mean per optimizer step since the last log to training logs."""
        if "loss" in logs and self._part_steps:
            for name, total in self._part_sums.items():
                logs[f"loss_{name}"] = round(float(total) / len(self._part_steps), 6)
            self._part_sums, self._part_steps = {}, set()
        super().log(logs, *args, **kwargs)
