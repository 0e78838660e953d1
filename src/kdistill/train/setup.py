"""Checking :func:`~kdistill.train.loop.distill`'s arguments and setting up what it trains with:
the optimizer over the student and the objective's own parameters, autocast, the Accelerator,
and the loader's private shuffling generators (checkpointed with the RNG states)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from torch import nn

from kdistill.losses.objective import Objective
from kdistill.train.on_policy import OnPolicy

if TYPE_CHECKING:
    from kdistill.cache import TeacherCache

__all__ = [
    "PRECISIONS",
    "DistillArgs",
    "EvalFn",
    "check_accelerator",
    "check_args",
    "check_objective",
    "check_on_policy",
    "default_accelerator",
    "prepare_optimizer",
]

#: values of ``precision``: no autocast, bfloat16 autocast, float16 autocast with loss scaling
PRECISIONS = ("no", "bf16", "fp16")

#: ``eval_fn(student)``: the student's metrics
EvalFn = Callable[[nn.Module], Mapping[str, float]]


@dataclass(frozen=True)
class DistillArgs:
    """The arguments of one :func:`~kdistill.train.loop.distill` call, checked on creation; its
    docstring says what each one means."""

    teacher: nn.Module | Mapping[str, nn.Module] | None
    student: nn.Module
    train_loader: Iterable[Any]
    objective: Objective | None
    optimizer: torch.optim.Optimizer | None
    lr: float
    epochs: int
    max_steps: int | None
    scheduler: Any | None
    gradient_accumulation_steps: int
    max_grad_norm: float | None
    precision: str
    eval_fn: EvalFn | None
    eval_every: int | None
    log_every: int
    progress: bool | str
    label_key: str | None
    accelerator: Accelerator | None
    teacher_cache: TeacherCache | Mapping[str, TeacherCache] | None
    checkpoint_dir: str | os.PathLike[str] | None
    save_every: int | None
    keep_checkpoints: int
    resume: bool
    on_nonfinite: str
    on_policy: OnPolicy | None
    offload_teachers: bool = False

    def __post_init__(self) -> None:
        check_args(
            self.teacher,
            self.student,
            self.epochs,
            self.max_steps,
            self.gradient_accumulation_steps,
            self.max_grad_norm,
            self.precision,
            self.log_every,
            self.eval_every,
            self.on_nonfinite,
            self.save_every,
            self.resume,
            self.checkpoint_dir,
        )
        if self.on_policy is not None:
            check_on_policy(self.on_policy, self.teacher, self.teacher_cache)


def check_on_policy(on_policy: Any, teacher: nn.Module | None, teacher_cache: Any) -> None:
    """On-policy distillation needs a teacher model: it scores tokens no cache has seen."""
    if not isinstance(on_policy, OnPolicy):
        raise TypeError(f"on_policy must be a kdistill OnPolicy, got {type(on_policy).__name__}")
    if teacher is None or teacher_cache is not None:
        raise ValueError(
            "on-policy distillation needs the teacher model, without a teacher cache: the teacher scores the "
            "student's own samples, which no cache holds"
        )


def check_args(
    teacher: nn.Module | Mapping[str, nn.Module] | None,
    student: nn.Module,
    epochs: int,
    max_steps: int | None,
    gradient_accumulation_steps: int,
    max_grad_norm: float | None,
    precision: str,
    log_every: int,
    eval_every: int | None,
    on_nonfinite: str = "stop",
    save_every: int | None = None,
    resume: bool = False,
    checkpoint_dir: Any = None,
) -> None:
    if not isinstance(student, nn.Module):
        raise TypeError(f"the student must be a torch.nn.Module, got {type(student).__name__}")
    teachers = teacher.values() if isinstance(teacher, Mapping) else [teacher]
    if any(one is student for one in teachers):
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
    if save_every is not None and (isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 1):
        raise ValueError(f"save_every must be None or an integer >= 1, got {save_every!r}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir=, the folder the run wrote its checkpoints to")


def check_objective(objective: Objective | None) -> Objective:
    """The objective to train with: the given one, or Hinton's with T = 4 and alpha = 0.7."""
    objective = objective if objective is not None else Objective.hinton(temperature=4.0, alpha=0.7)
    if not isinstance(objective, Objective):
        raise TypeError(f"objective must be a kdistill Objective, got {type(objective).__name__}")
    return objective


def check_accelerator(accelerator: Accelerator | None) -> Accelerator:
    """The Accelerator to train with: the given one (without gradient accumulation of its own), or a default one."""
    accelerator = accelerator or default_accelerator()
    if accelerator.gradient_accumulation_steps != 1:
        raise ValueError(
            "pass gradient_accumulation_steps to distill(), not to the Accelerator (it would divide the loss twice)"
        )
    return accelerator


def prepare_optimizer(
    optimizer: torch.optim.Optimizer | None,
    teacher: nn.Module | None,
    student: nn.Module,
    objective: Objective,
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


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "no":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def default_accelerator() -> Accelerator:
    """An ``Accelerator`` for this process: DDP over gloo when launched on several CPU processes."""
    # Accelerate only picks its multi-CPU (gloo) mode when told to use the CPU
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("LOCAL_RANK", "-1")) != -1
    return Accelerator(cpu=launched and not torch.cuda.is_available())


def shuffle_generators(loader: Any) -> list[torch.Generator]:
    """The private generators a data loader shuffles with (its own, its sampler's), each once."""
    found: dict[int, torch.Generator] = {}
    batch_sampler = getattr(loader, "batch_sampler", None)
    for holder in (loader, getattr(loader, "sampler", None), batch_sampler, getattr(batch_sampler, "sampler", None)):
        generator = getattr(holder, "generator", None)
        if isinstance(generator, torch.Generator):
            found.setdefault(id(generator), generator)
    return list(found.values())
