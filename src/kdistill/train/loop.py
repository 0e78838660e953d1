"""The plain PyTorch distillation loop: a loop you can read top to bottom.

:func:`distill` is the general function; :func:`train_distillation` is the seed's signature on
top of it. Accelerate places the student and the data on the right device and, when the
script runs under ``accelerate launch`` or ``torchrun``, wraps the student in PyTorch's DDP and
shards the data. The teacher is never wrapped: it runs in eval mode under ``no_grad`` on the
student's device.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from kdistill.batch import example_indices, split_batch
from kdistill.capture import capture
from kdistill.errors import NonFiniteLossError
from kdistill.losses.objective import Objective
from kdistill.train.checkpoint import (
    TrainingState,
    find_resumable,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from kdistill.train.teacher import (
    NonFiniteTeacherError,
    check_teacher_source,
    nonfinite_teacher_fields,
    teacher_features,
)

if TYPE_CHECKING:
    from kdistill.cache import TeacherCache

__all__ = ["History", "NonFiniteLossError", "PRECISIONS", "distill", "train_distillation"]

logger = logging.getLogger(__name__)

#: values of ``precision``: no autocast, bfloat16 autocast, float16 autocast with loss scaling
PRECISIONS = ("no", "bf16", "fp16")

EvalFn = Callable[[nn.Module], Mapping[str, float]]




@dataclass
class History:
    """What happened during a run, for plots and reports.

    Attributes:
        steps: one record per optimizer step: ``step``, ``epoch``, ``loss`` (the objective's
            total), each term's unweighted value by name, and ``lr``.
        epochs: one record per epoch with the mean of each of those values.
        evals: one record per evaluation: ``step``, ``epoch`` and what ``eval_fn`` returned.
        skipped_steps: updates dropped for a non-finite loss (``on_nonfinite="skip"``).
    """

    steps: list[dict[str, float]] = field(default_factory=list)
    epochs: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    skipped_steps: int = 0

    def series(self, key: str) -> list[float]:
        """The values of ``key`` over the optimizer steps, e.g. ``history.series("kd")``."""
        return [record[key] for record in self.steps if key in record]


def _check_args(
    teacher: nn.Module | None,
    student: nn.Module,
    epochs: int,
    max_steps: int | None,
    gradient_accumulation_steps: int,
    max_grad_norm: float | None,
    precision: str,
    log_every: int,
    eval_every: int | None,
    on_nonfinite: str = "stop",
) -> None:
    if not isinstance(student, nn.Module):
        raise TypeError(f"the student must be a torch.nn.Module, got {type(student).__name__}")
    if teacher is student:
        raise ValueError("the teacher and the student are the same module; the student must be a separate model")
    for name, value, minimum in (
        ("epochs", epochs, 1),
        ("gradient_accumulation_steps", gradient_accumulation_steps, 1),
        ("log_every", log_every, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    for name, value in (("max_steps", max_steps), ("eval_every", eval_every)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be None or an integer >= 1, got {value!r}")
    if max_grad_norm is not None and not (isinstance(max_grad_norm, (int, float)) and max_grad_norm > 0):
        raise ValueError(f"max_grad_norm must be None or a number > 0, got {max_grad_norm!r}")
    if on_nonfinite not in ("stop", "skip"):
        raise ValueError(f"on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def _prepare_optimizer(
    optimizer: torch.optim.Optimizer | None, teacher: nn.Module | None, student: nn.Module, objective: Objective,
    lr: float,
) -> torch.optim.Optimizer:
    """Return an optimizer over the student and the objective's trainable parts.

    A user's optimizer is checked (it must not hold teacher weights) and given the objective's
    parameters (projections) as a group of their own if it lacks them.
    """
    objective_params = [p for p in objective.parameters() if p.requires_grad]
    if optimizer is None:
        return torch.optim.AdamW([p for p in student.parameters() if p.requires_grad] + objective_params, lr=lr)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if teacher is not None and any(id(p) in held for p in teacher.parameters()):
        raise ValueError(
            "the optimizer holds teacher parameters; the teacher must stay frozen: build the optimizer over "
            "student.parameters() only"
        )
    missing = [p for p in objective_params if id(p) not in held]
    if missing:
        optimizer.add_param_group({"params": missing})
    return optimizer


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "no":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def default_accelerator() -> Accelerator:
    """An ``Accelerator`` for this process: DDP over gloo when launched on several CPU processes."""
    # Accelerate only picks its multi-CPU (gloo) mode when told to use the CPU
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("LOCAL_RANK", "-1")) != -1
    return Accelerator(cpu=launched and not torch.cuda.is_available())


def _current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def distill(
    teacher: nn.Module | None,
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
    progress: bool = True,
    label_key: str | None = None,
    accelerator: Accelerator | None = None,
    teacher_cache: TeacherCache | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    save_every: int | None = None,
    keep_checkpoints: int = 2,
    resume: bool = False,
    on_nonfinite: str = "stop",
) -> History:
    """Train ``student`` to imitate ``teacher`` on ``train_loader``.

    Each step runs the teacher (eval mode, ``no_grad``) and the student on the same batch,
    turns both outputs into :class:`~kdistill.capture.Features` and minimises ``objective``.

    Args:
        teacher: any ``nn.Module``; moved to the student's device, put in eval mode, never
            optimised. May be None with a ``teacher_cache``.
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
        gradient_accumulation_steps: batches per optimizer step; the update equals that of one
            batch as large as those batches together.
        max_grad_norm: clip the gradient norm of the student and the objective; None disables.
        precision: ``"no"``, ``"bf16"`` or ``"fp16"`` autocast for both forward passes; losses
            are always computed in float32.
        eval_fn: called as ``eval_fn(student)`` in eval mode under ``no_grad``; returns metrics.
        eval_every: evaluate every this many optimizer steps; default: after every epoch.
        log_every: optimizer steps between history flushes and progress-bar updates (reading
            losses forces a device sync, so it is not done every step).
        progress: show a progress bar with the running loss.
        label_key: key of the labels in dict batches (default ``labels`` or ``label``).
        accelerator: an ``accelerate.Accelerator`` to use instead of a default one.
        teacher_cache: a :class:`~kdistill.cache.TeacherCache` of the teacher's outputs over the
            training set: batches that carry example indices (see
            :func:`~kdistill.batch.with_example_index`) read the teacher's features from it
            instead of running the teacher.
        checkpoint_dir: write checkpoints here (student, objective, optimizer, scheduler, RNG
            states, data position, history) after every epoch and every ``save_every`` steps.
        save_every: also checkpoint every this many optimizer steps.
        keep_checkpoints: how many of the newest checkpoints to keep.
        resume: continue from the newest intact checkpoint in ``checkpoint_dir`` (a damaged
            newest one is reported and the one before it used); the run ends with the same
            student as an uninterrupted one.
        on_nonfinite: what a NaN or infinite loss part (or gradient norm) does: ``"stop"``
            raises :class:`NonFiniteLossError` naming the part and the step, before the update,
            so the student and the checkpoints stay good; ``"skip"`` drops that update and
            counts it in ``History.skipped_steps``.

    Returns:
        The :class:`History` of every loss part, the learning rate and the evaluations.
    """
    _check_args(teacher, student, epochs, max_steps, gradient_accumulation_steps, max_grad_norm, precision,
                log_every, eval_every, on_nonfinite)
    if save_every is not None and (isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 1):
        raise ValueError(f"save_every must be None or an integer >= 1, got {save_every!r}")
    objective = objective if objective is not None else Objective.hinton(temperature=4.0, alpha=0.7)
    if not isinstance(objective, Objective):
        raise TypeError(f"objective must be a kdistill Objective, got {type(objective).__name__}")
    accelerator = accelerator or default_accelerator()
    if accelerator.gradient_accumulation_steps != 1:
        raise ValueError(
            "pass gradient_accumulation_steps to distill(), not to the Accelerator (it would divide the loss twice)"
        )
    device = accelerator.device

    if teacher is not None:
        teacher.to(device).eval()
    objective.to(device)
    optimizer = _prepare_optimizer(optimizer, teacher, student, objective, lr)
    student = accelerator.prepare(student)
    prepared_loader = isinstance(train_loader, DataLoader)
    if prepared_loader:
        train_loader = accelerator.prepare(train_loader)
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    student_request, teacher_request = objective.request("student"), objective.request("teacher")
    check_teacher_source(teacher, teacher_cache, teacher_request)
    student_module = accelerator.unwrap_model(student)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    # a loader that shuffles with its own generator: checkpointed with the RNG states
    generators = _shuffle_generators(train_loader)
    num_batches = len(train_loader) if hasattr(train_loader, "__len__") else None  # type: ignore[arg-type]
    if num_batches == 0:
        raise ValueError("train_loader is empty: there is nothing to train on")
    steps_per_epoch = math.ceil(num_batches / gradient_accumulation_steps) if num_batches else None
    total_steps = steps_per_epoch * epochs if steps_per_epoch else None
    if max_steps is not None:
        total_steps = min(total_steps, max_steps) if total_steps else max_steps

    history = History()
    global_step, start_epoch, skip_batches = 0, 0, 0
    resumed: TrainingState | None = None
    if resume:
        if checkpoint_dir is None:
            raise ValueError("resume=True needs checkpoint_dir=, the folder the run wrote its checkpoints to")
        found = find_resumable(checkpoint_dir)
        if found is None:
            logger.warning("no usable checkpoint in %s: starting from the beginning", checkpoint_dir)
        else:
            resumed = load_checkpoint(found, student_module, objective)
            optimizer.load_state_dict(resumed.optimizer)
            if scheduler is not None and resumed.scheduler is not None:
                scheduler.load_state_dict(resumed.scheduler)
            if scaler is not None and resumed.scaler is not None:
                scaler.load_state_dict(resumed.scaler)
            history = History(**resumed.history)
            global_step, start_epoch, skip_batches = resumed.step, resumed.epoch, resumed.batches_done
            logger.info("resuming from %s (step %d, epoch %d)", found, global_step, start_epoch)

    pending: list[tuple[int, int, float, dict[str, Tensor], Tensor]] = []
    bar = tqdm(total=total_steps, initial=global_step, desc="distill", unit="step", dynamic_ncols=True,
               disable=not progress or not accelerator.is_main_process)

    def flush() -> None:
        """Move pending step records (device tensors) into the history in one sync."""
        if not pending:
            return
        names = list(pending[0][3])
        values = torch.stack([torch.stack([rec[4]] + [rec[3][n] for n in names]) for rec in pending])
        if accelerator.num_processes > 1:
            values = accelerator.reduce(values, reduction="mean")  # the global batch's loss, on every process
        rows = values.tolist()
        for (step, epoch, lr_value, _, _), row in zip(pending, rows):
            record = {"step": float(step), "epoch": float(epoch), "loss": row[0], "lr": lr_value}
            record.update(zip(names, row[1:]))
            history.steps.append(record)
        bar.update(len(pending))
        bar.set_postfix(loss=f"{sum(r[0] for r in rows) / len(rows):.4f}")
        pending.clear()

    def evaluate(epoch: int) -> None:
        if eval_fn is None:
            return
        student_module.eval()
        with torch.no_grad():
            metrics = dict(eval_fn(student_module))
        student_module.train()
        history.evals.append({"step": float(global_step), "epoch": float(epoch), **metrics})
        shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))
        if accelerator.is_main_process and progress:
            bar.write(f"eval at step {global_step}: {shown}")

    def save(epoch: int, batches_done: int, epoch_rng: dict[str, Any]) -> None:
        flush()
        if accelerator.is_main_process and checkpoint_dir is not None:
            state = TrainingState(
                step=global_step, epoch=epoch, batches_done=batches_done, epoch_rng=epoch_rng,
                rng=rng_state(generators),
                optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict() if scheduler is not None else None,
                scaler=scaler.state_dict() if scaler is not None else None,
                history={"steps": history.steps, "epochs": history.epochs, "evals": history.evals},
            )
            path = save_checkpoint(checkpoint_dir, student_module, objective, state, keep=keep_checkpoints)
            logger.info("saved checkpoint %s", path)
        accelerator.wait_for_everyone()

    def nonfinite(what: str, epoch: int, batch_index: int, teacher_fields: list[str] = ()) -> None:
        message = (f"{what} at step {global_step + 1} (epoch {epoch}, batch {batch_index}); the update was not "
                   "applied")
        if teacher_fields:
            # the teacher's own outputs are broken: lowering the learning rate would not help
            message = (f"the teacher's {', '.join(teacher_fields)} hold NaN or infinite values at step "
                       f"{global_step + 1} (epoch {epoch}, batch {batch_index}), so {what}; the update was not applied")
        if on_nonfinite == "skip":
            history.skipped_steps += 1
            logger.warning("%s; skipping the step (%d skipped so far)", message, history.skipped_steps)
            return
        kept = f"; the last good checkpoint is kept in {checkpoint_dir}" if checkpoint_dir is not None else ""
        if teacher_fields:
            raise NonFiniteTeacherError(f"{message}: the run stopped{kept}. The teacher is broken, not the training "
                                        "settings: check its weights, run it in float32 (fp16 overflows), or give "
                                        "another teacher")
        raise NonFiniteLossError(f"{message}: the run stopped{kept}. Lower the learning rate, use bf16 instead "
                                 "of fp16, or set on_nonfinite='skip' (training.on_nonfinite: skip in a config) "
                                 "to skip such steps")

    done = max_steps is not None and global_step >= max_steps  # a resumed run that had already finished
    student.train()
    optimizer.zero_grad(set_to_none=True)
    for epoch in range(start_epoch, epochs if not done else start_epoch):
        if resumed is not None and epoch == resumed.epoch:
            set_rng_state(resumed.epoch_rng, generators)  # the same shuffle as the interrupted epoch
        epoch_rng = rng_state(generators)
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)  # reshuffles per epoch under DDP
        micro_step, group_size, poisoned = 0, gradient_accumulation_steps, False
        group_total: Tensor | None = None
        group_parts: dict[str, Tensor] = {}
        for batch_index, batch in enumerate(train_loader):
            if batch_index < skip_batches:
                continue  # consumed before the interruption
            if resumed is not None and batch_index == skip_batches and skip_batches:
                set_rng_state(resumed.rng, generators)  # continue exactly where the checkpoint was taken
            if not prepared_loader:
                batch = send_to_device(batch, device)
            if micro_step == 0 and num_batches is not None:
                # a short last group is averaged over the batches it has
                group_size = min(gradient_accumulation_steps, num_batches - batch_index)
            inputs, labels = split_batch(batch, label_key)
            at_boundary = micro_step + 1 >= group_size
            # skip DDP's gradient all-reduce until the last batch of an accumulation group
            sync = contextlib.nullcontext() if at_boundary else accelerator.no_sync(student)
            with sync:
                with _autocast(device, precision):
                    teacher_side = teacher_features(teacher, inputs, teacher_request, cache=teacher_cache,
                                                    indices=example_indices(batch), device=device)
                    student_side = capture(student, inputs, student_request, module=student_module)
                result = objective(student_side, teacher_side, labels)
                loss = result.total / group_size
                if not bool(torch.isfinite(loss)):
                    bad = [name for name, value in result.parts.items() if not bool(torch.isfinite(value))]
                    nonfinite(f"the loss part {', '.join(bad) or 'total'} is {_kind(loss)}", epoch, batch_index,
                              nonfinite_teacher_fields(teacher_side))
                    poisoned = True
                elif scaler is not None:
                    scaler.scale(loss).backward()
                else:
                    accelerator.backward(loss)
            if not poisoned:
                group_total = loss.detach() if group_total is None else group_total + loss.detach()
                for name, value in result.parts.items():
                    scaled = value / group_size
                    group_parts[name] = scaled if name not in group_parts else group_parts[name] + scaled
            micro_step += 1
            if not at_boundary:
                continue

            if scaler is not None and not poisoned:
                scaler.unscale_(optimizer)
            if max_grad_norm is not None and not poisoned:
                norm = torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
                # fp16's scaler skips inf gradients itself; elsewhere they would corrupt the student
                if scaler is None and not bool(torch.isfinite(norm)):
                    nonfinite(f"the gradient norm is {_kind(norm)}", epoch, batch_index)
                    poisoned = True
            if poisoned:
                optimizer.zero_grad(set_to_none=True)
                micro_step, group_total, group_parts, poisoned = 0, None, {}, False
                continue
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            lr_value = _current_lr(optimizer)
            if scheduler is not None:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            global_step += 1
            assert group_total is not None
            pending.append((global_step, epoch, lr_value, group_parts, group_total))
            micro_step, group_total, group_parts = 0, None, {}
            if global_step % log_every == 0:
                flush()
            if eval_every is not None and global_step % eval_every == 0:
                flush()
                evaluate(epoch)
            if save_every is not None and global_step % save_every == 0:
                save(epoch, batch_index + 1, epoch_rng)
            if max_steps is not None and global_step >= max_steps:
                done = True
                break
        skip_batches = 0
        flush()
        records = [r for r in history.steps if r["epoch"] == epoch]
        if records and not any(e["epoch"] == epoch for e in history.epochs):
            summary = {"epoch": float(epoch), "step": float(global_step)}
            for key in records[0]:
                if key not in ("step", "epoch"):
                    summary[key] = sum(r[key] for r in records) / len(records)
            history.epochs.append(summary)
            if accelerator.is_main_process and progress:
                bar.write(f"epoch {epoch}: loss = {summary['loss']:.4f}")
        if eval_fn is not None and eval_every is None:
            evaluate(epoch)
        if checkpoint_dir is not None and not done:
            save(epoch + 1, 0, rng_state(generators))  # the next epoch starts from here
        if done:
            break
    flush()
    if checkpoint_dir is not None and done and global_step > (resumed.step if resumed else 0):
        save(epoch, 0 if num_batches is None else num_batches, epoch_rng)
    bar.close()
    return history


def _shuffle_generators(loader: Any) -> list[torch.Generator]:
    """The private generators a data loader shuffles with (its own, its sampler's), each once."""
    found: dict[int, torch.Generator] = {}
    batch_sampler = getattr(loader, "batch_sampler", None)
    for holder in (loader, getattr(loader, "sampler", None), batch_sampler, getattr(batch_sampler, "sampler", None)):
        generator = getattr(holder, "generator", None)
        if isinstance(generator, torch.Generator):
            found.setdefault(id(generator), generator)
    return list(found.values())


def _kind(value: Tensor) -> str:
    return "NaN" if bool(torch.isnan(value).any()) else "infinite"


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
