"""Where the teacher's features come from during training."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdistill.capture import CaptureRequest, Features, attention_mask_of, capture

__all__ = ["teacher_features"]


def teacher_features(teacher: nn.Module, inputs: Any, request: CaptureRequest) -> Features:
    """The teacher's features for one batch, computed under ``no_grad``.

    The forward pass is skipped when the objective needs nothing from the teacher (for example
    a hard-label-only objective).
    """
    if request.empty:
        return Features(attention_mask=attention_mask_of(inputs))
    with torch.no_grad():
        return capture(teacher, inputs, request)
