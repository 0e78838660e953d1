"""Where the teacher's features come from during training: the teacher itself, or its cache."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from kdistill.capture import CaptureRequest, Features, attention_mask_of, capture

if TYPE_CHECKING:
    from kdistill.cache import TeacherCache

__all__ = ["check_teacher_source", "teacher_features"]


def check_teacher_source(teacher: nn.Module | None, cache: TeacherCache | None, request: CaptureRequest) -> None:
    """Raise a clear error when neither the teacher nor its cache can give what ``request`` asks."""
    if cache is not None:
        missing = cache.provides(request)
        if missing is not None:
            raise ValueError(f"the objective needs {missing}, which the teacher cache does not hold")
        return
    if teacher is None and not request.empty:
        raise ValueError("no teacher: pass a teacher model, or teacher_cache= with its stored outputs")
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise TypeError(f"the teacher must be a torch.nn.Module, got {type(teacher).__name__}")


def teacher_features(
    teacher: nn.Module | None,
    inputs: Any,
    request: CaptureRequest,
    *,
    cache: TeacherCache | None = None,
    indices: Tensor | None = None,
    device: torch.device | None = None,
) -> Features:
    """The teacher's features for one batch.

    With a ``cache`` and the batch's example ``indices`` they are read from the cache;
    otherwise the teacher runs under ``no_grad``. The forward pass is skipped when the
    objective needs nothing from the teacher (for example a hard-label-only objective).
    """
    mask = attention_mask_of(inputs)
    if request.empty:
        return Features(attention_mask=mask)
    if cache is not None and indices is not None:
        return cache.features(indices, mask, device=device)
    if teacher is None:
        raise ValueError(
            "this batch carries no example indices, so the teacher cache cannot serve it: wrap the dataset "
            "with kdistill.with_example_index(dataset) (or pass the teacher model too)"
        )
    with torch.no_grad():
        return capture(teacher, inputs, request)
