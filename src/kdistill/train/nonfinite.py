"""A NaN or infinite loss part or gradient norm in :func:`~kdistill.train.loop.distill`: its message and error."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from kdistill.errors import NonFiniteLossError, NonFiniteTeacherError

__all__ = ["nonfinite_error", "nonfinite_kind", "nonfinite_loss", "nonfinite_message"]


def nonfinite_kind(value: Tensor) -> str:
    """``"NaN"`` when ``value`` holds a NaN, else ``"infinite"``."""
    return "NaN" if bool(torch.isnan(value).any()) else "infinite"


def nonfinite_loss(parts: Mapping[str, Tensor], loss: Tensor) -> str:
    """What is wrong with a non-finite ``loss``: which of its ``parts`` are not finite, and how."""
    bad = [name for name, value in parts.items() if not bool(torch.isfinite(value))]
    return f"the loss part {', '.join(bad) or 'total'} is {nonfinite_kind(loss)}"


def nonfinite_message(what: str, where: str, teacher_fields: Sequence[str] = ()) -> str:
    """The message of a dropped update: ``what`` went wrong ``where``, and the teacher's fields to blame, if any."""
    if teacher_fields:
        # the teacher's own outputs are broken: lowering the learning rate would not help
        return (
            f"the teacher's {', '.join(teacher_fields)} hold NaN or infinite values {where}, so {what}; "
            "the update was not applied"
        )
    return f"{what} {where}; the update was not applied"


def nonfinite_error(
    message: str, teacher_fields: Sequence[str], checkpoint_dir: str | os.PathLike[str] | None
) -> NonFiniteLossError:
    """The error that stops the run: ``message`` and what to do about it."""
    kept = f"; the last good checkpoint is kept in {checkpoint_dir}" if checkpoint_dir is not None else ""
    if teacher_fields:
        return NonFiniteTeacherError(
            f"{message}: the run stopped{kept}. The teacher is broken, not the training "
            "settings: check its weights, run it in float32 (fp16 overflows), or give "
            "another teacher"
        )
    return NonFiniteLossError(
        f"{message}: the run stopped{kept}. Lower the learning rate, use bf16 instead "
        "of fp16, or set on_nonfinite='skip' (training.on_nonfinite: skip in a config) "
        "to skip such steps"
    )
