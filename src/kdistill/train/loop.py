"""The plain PyTorch distillation loop: a loop you can read top to bottom.

:func:`distill` is the general function; :func:`train_distillation` is the seed's signature on
top of it. Accelerate places the student and the data on the right device and, when the
script runs under ``accelerate launch`` or ``torchrun``, wraps the student in PyTorch's DDP and
shards the data. The teacher is never wrapped: it runs in eval mode under ``no_grad`` on the
student's device.

One optimizer step, :class:`_Loop` in order::

    for each accumulation group of micro-batches:   _groups
        loss of each micro-batch, backward          _loss_step (the teacher's features, the objective)
        clip, check, step, schedule                 _optimizer_step
        record, evaluate, checkpoint                _after_step
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from kdistill.capture import capture
from kdistill.data.batch import example_indices, example_routes, split_batch
from kdistill.errors import NonFiniteLossError
from kdistill.losses.objective import Objective, StepShare
from kdistill.losses.token_terms import count_targets
from kdistill.train.checkpoint import (
    CheckpointError,
    TrainingState,
    find_resumable,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from kdistill.train.history import History, StepRecorder
from kdistill.train.nonfinite import nonfinite_error, nonfinite_kind, nonfinite_loss, nonfinite_message
from kdistill.train.on_policy import OnPolicy
from kdistill.train.setup import (
    PRECISIONS,
    DistillArgs,
    EvalFn,
    autocast,
    check_accelerator,
    check_objective,
    prepare_optimizer,
    shuffle_generators,
)
from kdistill.train.teacher import check_teacher_source, teacher_features, teacher_fields, teacher_set

if TYPE_CHECKING:
    from kdistill.cache import TeacherCache

__all__ = ["PRECISIONS", "History", "NonFiniteLossError", "distill", "train_distillation"]

logger = logging.getLogger(__name__)


def distill(
    teacher: nn.Module | Mapping[str, nn.Module] | None,
    student: nn.Module,
    train_loader: Iterable[Any],
    *,
    objective: Objective | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 5e-5,
    epochs: int = 1,
    max_steps: int | None = None,
    scheduler: Any | None = None,
    gradient_accumulation_steps: int = 1,
    max_grad_norm: float | None = 1.0,
    precision: str = "no",
    eval_fn: EvalFn | None = None,
    eval_every: int | None = None,
    log_every: int = 10,
    progress: bool | str = True,
    label_key: str | None = None,
    accelerator: Accelerator | None = None,
    teacher_cache: TeacherCache | Mapping[str, TeacherCache] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    save_every: int | None = None,
    keep_checkpoints: int = 2,
    resume: bool = False,
    on_nonfinite: str = "stop",
    on_policy: OnPolicy | None = None,
    offload_teachers: bool = False,
) -> History:
    """Train ``student`` to imitate ``teacher`` on ``train_loader``.

    Each step runs the teacher (eval mode, ``no_grad``) and the student on the same batch,
    turns both outputs into :class:`~kdistill.capture.Features` and minimises ``objective``.

    Args:
        teacher: any ``nn.Module``; moved to the student's device, put in eval mode, never
            optimised. May be None with a ``teacher_cache``. Several teachers: a mapping
            ``{name: model}``, combined as the objective's ``TeacherMix`` says (default: an
            equal-weight mixture; docs/multi_teacher.md).
        student: any ``nn.Module`` whose output is logits, an object with ``.logits`` (Hugging
            Face) or a tuple starting with the logits.
        train_loader: batches as dicts (Hugging Face style, labels under ``labels``) or tuples
            ``(inputs, labels)``; a ``DataLoader`` is sharded across processes under DDP.
        objective: the loss; default :meth:`Objective.hinton` with T = 4 and alpha = 0.7.
        optimizer: default AdamW(lr) over the student and the objective's trainable parts.
        lr: learning rate of the default optimizer.
        epochs: passes over ``train_loader``.
        max_steps: stop after this many optimizer steps (overrides ``epochs`` when reached).
        scheduler: a learning-rate scheduler, stepped once per optimizer step.
        gradient_accumulation_steps: batches per optimizer step (one update as one large batch).
        max_grad_norm: clip the gradient norm of the student and the objective; None disables.
        precision: ``"no"``, ``"bf16"`` or ``"fp16"`` autocast for both forward passes; losses
            are always computed in float32.
        eval_fn: called as ``eval_fn(student)`` in eval mode under ``no_grad``; returns metrics.
        eval_every: evaluate every this many optimizer steps; default: after every epoch.
        log_every: optimizer steps between history flushes (a read of the losses syncs the device).
        progress: show a progress bar with the running loss; a string shows it under that label
            (default ``"distill"``).
        label_key: key of the labels in dict batches (default ``labels`` or ``label``).
        accelerator: an ``accelerate.Accelerator`` to use instead of a default one.
        teacher_cache: a :class:`~kdistill.cache.TeacherCache`: batches with example indices
            (:func:`~kdistill.data.batch.with_example_index`) read the teacher's features from it;
            with several teachers, ``{name: cache}`` (a teacher in it needs no model).
        checkpoint_dir: write checkpoints here (weights, optimizer, scheduler, RNG states, data
            position, history) after every epoch and every ``save_every`` steps.
        save_every: also checkpoint every this many optimizer steps.
        keep_checkpoints: how many of the newest checkpoints to keep.
        resume: continue from the newest intact checkpoint in ``checkpoint_dir``; the run ends
            with the same student as an uninterrupted one.
        on_nonfinite: a NaN or infinite loss part or gradient norm: ``"stop"`` raises
            :class:`NonFiniteLossError` before the update; ``"skip"`` drops the update and counts it.
        on_policy: causal LMs: an :class:`~kdistill.train.on_policy.OnPolicy` that replaces some
            micro-batches' completions by the student's samples, which the teacher scores.
        offload_teachers: several teachers on an accelerator: keep each on the CPU and move it to
            the device for its forward only (peak memory: the student and the largest teacher).

    Returns:
        The :class:`History` of every loss part, the learning rate and the evaluations.
    """
    # every argument by name: before the body assigns anything, locals() holds exactly them
    return _Loop(DistillArgs(**locals())).run()


class _Loop:
    """One :func:`distill` call: the models, the objective and the optimizer, set up once, then run."""

    def __init__(self, args: DistillArgs) -> None:
        teacher, student, loader, precision = args.teacher, args.student, args.train_loader, args.precision
        objective, accelerator = check_objective(args.objective), check_accelerator(args.accelerator)
        self.accelerator, self.device = accelerator, accelerator.device
        self.teacher, self.objective, self.scheduler = teacher, objective, args.scheduler
        self.cache, self.precision, self.label_key = args.teacher_cache, precision, args.label_key
        self.accumulation, self.max_grad_norm = args.gradient_accumulation_steps, args.max_grad_norm
        self.teacher_set = teacher_set(teacher, args.teacher_cache, objective, args.offload_teachers)
        if self.teacher_set is not None:
            self.teacher_set.place(self.device)
            teacher = nn.ModuleList([m for m in self.teacher_set.models.values() if m is not None])
        elif teacher is not None:
            teacher.to(self.device).eval()
        objective.to(self.device)
        self.optimizer = prepare_optimizer(args.optimizer, teacher, student, objective, args.lr)
        self.student = accelerator.prepare(student)
        self.prepared_loader = isinstance(loader, DataLoader)
        self.loader = accelerator.prepare(loader) if self.prepared_loader else loader
        self.trainable = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.student_request, self.teacher_request = objective.request("student"), objective.request("teacher")
        if self.teacher_set is None:
            check_teacher_source(teacher, args.teacher_cache, self.teacher_request)
        self.student_module = accelerator.unwrap_model(self.student)
        self.scaler = torch.amp.GradScaler(self.device.type) if precision == "fp16" else None
        # a loader that shuffles with its own generator: checkpointed with the RNG states
        self.generators = shuffle_generators(self.loader)
        self.num_batches = len(self.loader) if hasattr(self.loader, "__len__") else None  # type: ignore[arg-type]
        if self.num_batches == 0:
            raise ValueError("train_loader is empty: there is nothing to train on")
        self.history = History()
        self.global_step, self.start_epoch, self.skip_batches = 0, 0, 0
        self.resumed: TrainingState | None = None
        self._plan(args)

    def _plan(self, args: DistillArgs) -> None:
        """How long to train, and when to evaluate, record and checkpoint."""
        self.epochs, self.max_steps, self.eval_fn = args.epochs, args.max_steps, args.eval_fn
        self.eval_every, self.log_every, self.save_every = args.eval_every, args.log_every, args.save_every
        self.checkpoint_dir, self.keep_checkpoints = args.checkpoint_dir, args.keep_checkpoints
        self.on_nonfinite, self.on_policy = args.on_nonfinite, args.on_policy
        self.resume, self.progress = args.resume, args.progress
        steps_per_epoch = math.ceil(self.num_batches / self.accumulation) if self.num_batches else None
        self.total_steps = steps_per_epoch * self.epochs if steps_per_epoch else None
        if self.max_steps is not None:
            self.total_steps = min(self.total_steps, self.max_steps) if self.total_steps else self.max_steps

    # -- the run, top to bottom ------------------------------------------------------------

    def run(self) -> History:
        started = time.perf_counter()
        if self.resume:
            self._restore()
        self.show = bool(self.progress) and self.accelerator.is_main_process
        self.bar = tqdm(
            total=self.total_steps,
            initial=self.global_step,
            desc=self.progress if isinstance(self.progress, str) else "distill",
            unit="step",
            dynamic_ncols=True,
            disable=not self.show,
        )
        reduce = (
            (lambda v: self.accelerator.reduce(v, reduction="mean"))
            if self.accelerator.num_processes > 1
            else (lambda v: v)
        )  # the global batch's loss, on every process
        self.recorder = StepRecorder(self.history, reduce, self.bar)
        done = self.max_steps is not None and self.global_step >= self.max_steps  # a resumed run that had finished
        self.student.train()
        self.optimizer.zero_grad(set_to_none=True)
        epoch, epoch_rng = self.start_epoch, rng_state(self.generators)
        for epoch in range(self.start_epoch, self.epochs if not done else self.start_epoch):
            epoch_rng = self._start_epoch(epoch)
            done = self._epoch(epoch, epoch_rng)
            self._end_epoch(epoch, done)
            if done:
                break
        self.recorder.flush()
        if self.checkpoint_dir is not None and done and self.global_step > (self.resumed.step if self.resumed else 0):
            self._save(epoch, 0 if self.num_batches is None else self.num_batches, epoch_rng)
        self.bar.close()
        self.history.seconds += time.perf_counter() - started
        if self.on_policy is not None:
            policy = self.on_policy
            logger.info(
                "on-policy: %d of %d micro-batches sampled by the student, %.0f%% of the training time",
                policy.generated,
                policy.seen,
                100 * policy.share_of(self.history.seconds),
            )
        return self.history

    def _restore(self) -> None:
        """Continue from the newest intact checkpoint (a damaged newest one falls back to the one before)."""
        found = find_resumable(self.checkpoint_dir)
        if found is None:
            logger.warning("no usable checkpoint in %s: starting from the beginning", self.checkpoint_dir)
            return
        state = self.resumed = load_checkpoint(found, self.student_module, self.objective, self.generators)
        try:
            self.optimizer.load_state_dict(state.optimizer)
            if self.scheduler is not None and state.scheduler is not None:
                self.scheduler.load_state_dict(state.scheduler)
            if self.scaler is not None and state.scaler is not None:
                self.scaler.load_state_dict(state.scaler)
            self.history = History(**state.history)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
            raise CheckpointError(
                f"{found / 'training_state.pt'} does not fit this run's optimizer or scheduler ({error})"
            ) from error
        self.global_step, self.start_epoch, self.skip_batches = state.step, state.epoch, state.batches_done
        logger.info("resuming from %s (step %d, epoch %d)", found, self.global_step, self.start_epoch)

    def _start_epoch(self, epoch: int) -> dict[str, Any]:
        if self.resumed is not None and epoch == self.resumed.epoch:
            set_rng_state(self.resumed.epoch_rng, self.generators)  # the same shuffle as the interrupted epoch
        epoch_rng = rng_state(self.generators)
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)  # reshuffles per epoch under DDP
        return epoch_rng

    def _epoch(self, epoch: int, epoch_rng: dict[str, Any]) -> bool:
        """Train one epoch; True when ``max_steps`` is reached."""
        for group in self._groups():
            if self._update(group, epoch) and self._after_step(epoch, group[-1][0] + 1, epoch_rng):
                return True
        return False

    def _end_epoch(self, epoch: int, done: bool) -> None:
        self.skip_batches = 0
        self.recorder.flush()
        summary = self.history.close_epoch(epoch, self.global_step)
        if summary is not None and self.show:
            self.bar.write(f"epoch {epoch}: loss = {summary['loss']:.4f}")
        if self.eval_fn is not None and self.eval_every is None:
            self._evaluate(epoch)
        if self.checkpoint_dir is not None and not done:
            self._save(epoch + 1, 0, rng_state(self.generators))  # the next epoch starts from here

    def _groups(self) -> Iterator[list[tuple[int, Any]]]:
        """The epoch's batches in accumulation groups of ``(index, batch)``; batches a resumed run
        consumed before its interruption are skipped (the last group of an epoch may be shorter)."""
        group: list[tuple[int, Any]] = []
        for index, batch in enumerate(self.loader):
            if index < self.skip_batches:
                continue  # consumed before the interruption
            if self.resumed is not None and index == self.skip_batches and self.skip_batches:
                set_rng_state(self.resumed.rng, self.generators)  # continue exactly where the checkpoint was taken
            group.append((index, batch if self.prepared_loader else send_to_device(batch, self.device)))
            if len(group) == self.accumulation:
                yield group
                group = []
        if group:
            yield group

    # -- one optimizer step -----------------------------------------------------------------

    def _update(self, group: list[tuple[int, Any]], epoch: int) -> bool:
        """Accumulate the group's gradients and take one optimizer step; False when a non-finite
        loss or gradient dropped the update (``on_nonfinite="skip"``)."""
        total: Tensor | None = None
        parts: dict[str, Tensor] = {}
        poisoned = False
        if self.on_policy is not None:
            # before the step's target tokens are counted: the student's samples are the step's targets
            rank = self.accelerator.process_index
            group = [
                (index, self.on_policy(batch, self.student_module, f"{epoch}:{index}:{rank}"))
                for index, batch in group
            ]
        share = self._share(group)
        for position, (index, batch) in enumerate(group):
            result = self._loss_step(batch, share, at_boundary=position == len(group) - 1, epoch=epoch, index=index)
            if result is None:
                poisoned = True
                continue
            loss, step_parts = result
            total = loss if total is None else total + loss
            for name, value in step_parts.items():
                parts[name] = value if name not in parts else parts[name] + value
        if not poisoned and not self._optimizer_step(epoch, group[-1][0]):
            poisoned = True
        if poisoned:
            self.optimizer.zero_grad(set_to_none=True)
            return False
        assert total is not None
        self.recorder.add(self.global_step, epoch, self.lr, parts, total)
        return True

    def _share(self, group: list[tuple[int, Any]]) -> StepShare:
        """How each micro-batch of ``group`` enters the step: for token-level terms the target tokens
        of the whole step are counted first, over the group and over every process."""
        if not self.objective.token_level:
            return StepShare(micro_batches=len(group))
        counts = [
            count_targets(labels)
            for _, batch in group
            if (labels := split_batch(batch, self.label_key)[1]) is not None
        ]
        tokens = torch.stack(counts).sum().to(self.device) if counts else torch.zeros((), device=self.device)
        if self.accelerator.num_processes > 1:
            tokens = self.accelerator.reduce(tokens, reduction="sum")
        return StepShare(len(group), tokens.clamp_min(1), self.accelerator.num_processes)

    def _loss_step(
        self, batch: Any, share: StepShare, *, at_boundary: bool, epoch: int, index: int
    ) -> tuple[Tensor, dict[str, Tensor]] | None:
        """Forward both models on one micro-batch and backward its share of the step's loss; that
        share and its parts (detached), or None when the loss is not finite."""
        inputs, labels = split_batch(batch, self.label_key)
        # skip DDP's gradient all-reduce until the last batch of an accumulation group
        sync = contextlib.nullcontext() if at_boundary else self.accelerator.no_sync(self.student)
        with sync:
            route = example_routes(batch)
            with autocast(self.device, self.precision):
                if self.teacher_set is not None:
                    teacher_side: Any = self.teacher_set.features(
                        inputs, indices=example_indices(batch), route=route, device=self.device
                    )
                else:
                    teacher_side = teacher_features(
                        self.teacher,
                        inputs,
                        self.teacher_request,
                        cache=self.cache,
                        indices=example_indices(batch),
                        device=self.device,
                    )
                student_side = capture(self.student, inputs, self.student_request, module=self.student_module)
            routing = {"route": route} if route is not None else {}  # only routed batches carry one
            result = self.objective(student_side, teacher_side, labels, share=share, **routing)
            loss = result.total
            if not bool(torch.isfinite(loss)):
                self._nonfinite(nonfinite_loss(result.parts, loss), epoch, index, teacher_fields(teacher_side))
                return None
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                self.accelerator.backward(loss)
        return loss.detach(), result.parts

    def _optimizer_step(self, epoch: int, index: int) -> bool:
        """Clip, check and apply the accumulated gradients; False when the gradient norm is not finite."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.max_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.max_grad_norm)
            # fp16's scaler skips inf gradients itself; elsewhere they would corrupt the student
            if self.scaler is None and not bool(torch.isfinite(norm)):
                self._nonfinite(f"the gradient norm is {nonfinite_kind(norm)}", epoch, index)
                return False
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.lr = float(self.optimizer.param_groups[0]["lr"])
        if self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        return True

    def _after_step(self, epoch: int, batches_done: int, epoch_rng: dict[str, Any]) -> bool:
        """Record, evaluate and checkpoint as planned; True when ``max_steps`` is reached."""
        step = self.global_step
        if step % self.log_every == 0:
            self.recorder.flush()
        if self.eval_every is not None and step % self.eval_every == 0:
            self.recorder.flush()
            self._evaluate(epoch)
        if self.save_every is not None and step % self.save_every == 0:
            self._save(epoch, batches_done, epoch_rng)
        return self.max_steps is not None and step >= self.max_steps

    # -- around the steps ------------------------------------------------------------------

    def _evaluate(self, epoch: int) -> None:
        if self.eval_fn is None:
            return
        self.student_module.eval()
        with torch.no_grad():
            metrics = dict(self.eval_fn(self.student_module))
        self.student_module.train()
        self.history.evals.append({"step": float(self.global_step), "epoch": float(epoch), **metrics})
        shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))
        if self.show:
            self.bar.write(f"eval at step {self.global_step}: {shown}")

    def _save(self, epoch: int, batches_done: int, epoch_rng: dict[str, Any]) -> None:
        self.recorder.flush()
        if self.accelerator.is_main_process and self.checkpoint_dir is not None:
            state = TrainingState(
                step=self.global_step,
                epoch=epoch,
                batches_done=batches_done,
                epoch_rng=epoch_rng,
                rng=rng_state(self.generators),
                optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
                scaler=self.scaler.state_dict() if self.scaler is not None else None,
                history=self.history.state(),
            )
            path = save_checkpoint(
                self.checkpoint_dir, self.student_module, self.objective, state, keep=self.keep_checkpoints
            )
            logger.info("saved checkpoint %s", path)
        self.accelerator.wait_for_everyone()

    def _nonfinite(self, what: str, epoch: int, index: int, teacher_fields: Sequence[str] = ()) -> None:
        """A NaN or infinite loss part or gradient norm: skip the update, or stop naming the cause."""
        where = f"at step {self.global_step + 1} (epoch {epoch}, batch {index})"
        message = nonfinite_message(what, where, teacher_fields)
        if self.on_nonfinite != "skip":
            raise nonfinite_error(message, teacher_fields, self.checkpoint_dir)
        self.history.skipped_steps += 1
        logger.warning("%s; skipping the step (%d skipped so far)", message, self.history.skipped_steps)


def train_distillation(
    teacher: nn.Module,
    student: nn.Module,
    train_loader: Iterable[Any],
    optimizer: torch.optim.Optimizer | None = None,
    epochs: int = 1,
    *,
    temperature: float = 4.0,
    alpha: float = 0.7,
    **kwargs: Any,
) -> History:
    """The seed's training loop: ``alpha · T² · KL + (1 − alpha) · CE`` with T = 4 and alpha = 0.7.

    Works as the seed shows (tuple batches ``(inputs, labels)`` and ``student(inputs)``), and
    also with Hugging Face dict batches; the teacher runs on the student's device. Further
    keyword arguments go to :func:`distill` (gradient accumulation, clipping, precision,
    ``eval_fn`` ...).

    Args:
        teacher: the trained model to imitate.
        student: the model to train.
        train_loader: an iterable of batches.
        optimizer: over ``student.parameters()``; default AdamW(lr=5e-5).
        epochs: passes over the data.
        temperature: softening temperature ``T > 0``.
        alpha: weight of the soft (teacher) loss in [0, 1].

    Returns:
        The :class:`History` of the run.
    """
    objective = Objective.hinton(temperature=temperature, alpha=alpha)
    return distill(teacher, student, train_loader, objective=objective, optimizer=optimizer, epochs=epochs, **kwargs)
