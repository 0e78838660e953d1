"""What every loss function shares: the checks of its settings (a temperature, a weight in
``[0, 1]``), a mask turned into per-position weights, and the masked mean it reduces with (an
all-masked batch gives 0 with a zero gradient, never NaN)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["MIN_TEMPERATURE", "check_temperature", "check_unit_interval", "masked_mean", "position_weights"]

_FLOAT32 = torch.finfo(torch.float32)
#: The smallest temperature a loss (or sampling) can take effect at. Every softened loss computes
#: ``softmax(logits.float() / T)`` in float32. Two logits near 1 that differ at all differ by at least
#: float32's spacing there, 2^-23; divided by a T below 2^-23 / 87.3 (87.3 = -ln of float32's smallest
#: normal number, 2^-126) any such difference exceeds 87.3, so exp(-difference / T) underflows and the
#: softened distribution is the one-hot argmax, whatever the logits: nothing soft is left to distil,
#: and the term (T² × a KL of one-hot distributions, about T × the logit margin) is 0 or vanishingly
#: small, with no gradient to speak of. The bound is about 1.4e-9; useful temperatures are 0.5 to 20.
MIN_TEMPERATURE = float(_FLOAT32.eps / -math.log(_FLOAT32.tiny))


def check_temperature(temperature: float, name: str = "temperature") -> float:
    """Return ``temperature`` as a float, or raise ``ValueError`` if it is not a number of at least
    :data:`MIN_TEMPERATURE` (a smaller one cannot take effect in float32, see there).

    Args:
        temperature: the number to check.
        name: how the error message calls it.
    """
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(
            f"{name} must be a positive number, got {temperature!r} ({type(temperature).__name__}); "
            "a typical value is 4.0"
        )
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"{name} must be > 0, got {temperature}; a typical value is 4.0")
    if temperature < MIN_TEMPERATURE:
        raise ValueError(
            f"{name} must be at least {MIN_TEMPERATURE:.2g}, got {temperature:g}: logits divided by less differ "
            "by more than float32's softmax can hold, so the softened distributions are one-hot and the term "
            "cannot take effect; a typical value is 4.0"
        )
    return float(temperature)


def check_unit_interval(value: float, name: str, *, open_interval: bool = False) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` if it lies outside ``[0, 1]``.

    Args:
        value: the number to check.
        name: how the error message calls it (``"alpha"``, ``"beta"``).
        open_interval: require ``0 < value < 1`` instead.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if open_interval and not 0 < value < 1:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value}")
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return float(value)


def position_weights(
    logits: Tensor, mask: Tensor | None, meaning: str = "the logits' shape without the class dimension"
) -> Tensor | None:
    """Return a float32 weight per position ``logits.shape[:-1]``, or None for 'all positions'.

    ``meaning`` says in the error message what that shape is (logits, or hidden states).
    """
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise ValueError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.shape != logits.shape[:-1]:
        raise ValueError(f"mask must have shape {tuple(logits.shape[:-1])} ({meaning}), got {tuple(mask.shape)}")
    return mask.to(device=logits.device, dtype=torch.float32)


def masked_mean(per_position: Tensor, weights: Tensor | None) -> Tensor:
    """Average a per-position loss ``(B,)`` or ``(B, L)`` over the positions that count."""
    if weights is None:
        # an empty batch has nothing to average: 0 (with a zero gradient), not 0/0 = NaN
        return per_position.mean() if per_position.numel() else per_position.sum()
    # clamp keeps an all-masked batch at 0 instead of 0/0 = NaN
    return (per_position * weights).sum() / weights.sum().clamp_min(1.0)
