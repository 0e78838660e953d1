"""How fast a model is: the median time of a workload, run on the CPU, after warm-up."""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from kdistill.features import call_model

__all__ = ["measure_speed", "with_speedup"]


@torch.no_grad()
def measure_speed(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    *,
    min_seconds: float = 0.5,
    min_repeats: int = 5,
    max_repeats: int = 50,
) -> dict[str, float]:
    """CPU latency of one forward pass on ``batch`` (median) and throughput.

    ``batch`` holds the model's keyword inputs (a :class:`~kdistill.datasets.Routed` model picks
    its own token ids from a batch that holds both models').

    The model runs on the CPU under ``no_grad`` in eval mode, after two warm-up passes, until
    ``min_seconds`` have passed and at least ``min_repeats`` runs were timed.

    Returns:
        ``{"latency_ms": ..., "throughput": examples per second, "batch_size": ...}``.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval().to("cpu")
    inputs: Any = {key: value.cpu() for key, value in batch.items()}
    size = next(iter(inputs.values())).shape[0]
    for _ in range(2):
        call_model(model, inputs)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - started < min_seconds):
        tick = time.perf_counter()
        call_model(model, inputs)
        times.append(time.perf_counter() - tick)
    model.to(device).train(was_training)
    latency = statistics.median(times)
    return {"latency_ms": latency * 1e3, "throughput": size / latency, "batch_size": float(size)}


def with_speedup(speeds: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Add each model's speed-up over the teacher (``teacher`` latency / its latency) where both were timed."""
    if "teacher" in speeds:
        for timing in speeds.values():
            timing["speedup"] = speeds["teacher"]["latency_ms"] / timing["latency_ms"]
    return speeds
