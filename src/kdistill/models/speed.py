"""How fast models are, measured one way everywhere: ``kdistill distill``, ``kdistill eval``, the demo.

The models compared are timed in alternating rounds on the same batch, in the same process and
with the same threads: each round runs every model once, and the order rotates from round to
round (teacher then student, student then teacher ...), so that neither always runs first with
warm caches or always lands on the same burst of load. Each model's latency is the median over
the rounds, and its spread the interquartile range over the median. The speed-up over the
teacher is the median of the rounds' own ratios: a slow spell that hits both models of a round
cancels out of that round's ratio, where a ratio of two medians would keep it.

The conditions are recorded with the numbers (batch size, sequence length, rounds, torch
threads, the load average and the CPUs), and :func:`speed_warning` says when the numbers are not
to be trusted: a wide spread, or a machine loaded beyond its CPUs.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from kdistill.models.anatomy import call_model

__all__ = [
    "BUSY_LOAD_PER_CPU",
    "CONDITION_KEYS",
    "MODEL_KEYS",
    "SPEED_BATCH_SIZE",
    "WIDE_SPREAD",
    "compare_speed",
    "measure_speed",
    "measuring_conditions",
    "relative_spread",
    "speed_record",
    "speed_warning",
    "summarise_rounds",
    "time_rounds",
    "with_speedup",
]

#: examples in the batch that ``kdistill distill`` times, and ``kdistill eval``'s default batch:
#: one shape for both, so that their speed-ups compare
SPEED_BATCH_SIZE = 32
#: a spread (interquartile range over the median) above this share makes the numbers untrustworthy
WIDE_SPREAD = 0.20
#: a 1-minute load average above this many runnable tasks per CPU means other work competed with the
#: timing; above 1, because the load just before timing counts kdistill's own threads (training or
#: evaluating), which alone bring it to about one per CPU on a machine that is otherwise idle
BUSY_LOAD_PER_CPU = 1.25
#: what a measurement records once for all models (the ``speed`` record of ``metrics.json``)
CONDITION_KEYS = ("batch_size", "sequence_length", "new_tokens", "rounds", "threads", "load_average", "cpu_count")
#: what a measurement records for each model
MODEL_KEYS = ("latency_ms", "latency_spread", "throughput", "speedup", "speedup_spread")


def _clock() -> float:
    # one indirection, so that tests can replace the clock without touching time.perf_counter
    return time.perf_counter()


def relative_spread(values: Sequence[float]) -> float:
    """The interquartile range of ``values`` over their median (0.0 for fewer than two values)."""
    if len(values) < 2:
        return 0.0
    middle = statistics.median(values)
    first, _, third = statistics.quantiles(values, n=4, method="inclusive")
    return (third - first) / middle if middle else 0.0


def time_rounds(
    workloads: Mapping[str, Callable[[], object]],
    *,
    min_rounds: int = 7,
    max_rounds: int = 50,
    min_seconds: float = 1.0,
    warmup: int = 2,
    min_call_seconds: float = 0.0,
) -> dict[str, list[float]]:
    """Seconds of each call of each workload, timed in alternating rounds.

    Round ``r`` calls every workload once, starting from the ``r``-th (the order rotates), so
    that no workload always runs first. Rounds go on until ``min_rounds`` were timed and
    ``min_seconds`` have passed, or ``max_rounds`` were timed. A workload faster than
    ``min_call_seconds`` (by its last warm-up call) runs that many times back to back in each
    round, and the round keeps their mean: a call of a millisecond alone is at the mercy of the
    scheduler's time slices.

    Args:
        workloads: by name, a call to time (a forward pass, a generation).
        min_rounds: at least this many rounds.
        max_rounds: at most this many rounds.
        min_seconds: go on with rounds until this much time has passed.
        warmup: untimed calls of each workload first (lazy initialisation, allocation).
        min_call_seconds: the shortest timed stretch of one workload in a round (0: one call).

    Returns:
        By name, the seconds of each round, in round order.
    """
    names = list(workloads)
    repeats = dict.fromkeys(names, 1)
    for name in names:
        taken = math.inf
        for _ in range(warmup):
            tick = _clock()
            workloads[name]()
            taken = _clock() - tick
        if taken < min_call_seconds:
            repeats[name] = math.ceil(min_call_seconds / max(taken, 1e-9))
    times: dict[str, list[float]] = {name: [] for name in names}
    started = _clock()
    rounds = 0
    while rounds < max_rounds and (rounds < min_rounds or _clock() - started < min_seconds):
        shift = rounds % len(names)
        for name in names[shift:] + names[:shift]:
            tick = _clock()
            for _ in range(repeats[name]):
                workloads[name]()
            times[name].append((_clock() - tick) / repeats[name])
        rounds += 1
    return times


def summarise_rounds(
    times: Mapping[str, Sequence[float]], *, units: float = 1.0, reference: str = "teacher"
) -> dict[str, dict[str, float]]:
    """Per model: the median latency, its spread, the throughput and, beside a ``reference``, the speed-up.

    Args:
        times: from :func:`time_rounds` (or seconds per unit, such as per generated token).
        units: what one timed call processes (examples of the batch), for the throughput.
        reference: the model the speed-up is over.

    Returns:
        ``{name: {"latency_ms", "latency_spread", "throughput"[, "speedup", "speedup_spread"]}}``:
        the speed-up is the median of the rounds' ratios (reference time / this model's time) and
        its spread theirs, both only where the reference was timed.
    """
    results: dict[str, dict[str, float]] = {}
    for name, seconds in times.items():
        latency = statistics.median(seconds)
        results[name] = {
            "latency_ms": latency * 1e3,
            "latency_spread": relative_spread(seconds),
            "throughput": units / latency if latency else float("inf"),
        }
    if reference in times:
        for name, seconds in times.items():
            # a zero time (a clock too coarse for the call) counts as the clock's resolution
            ratios = [theirs / max(ours, 1e-9) for theirs, ours in zip(times[reference], seconds)]
            results[name]["speedup"] = statistics.median(ratios)
            results[name]["speedup_spread"] = relative_spread(ratios)
    return results


def _cpu_count() -> int:
    """The CPUs this process may run on (fewer than the machine's under an affinity mask or a container)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def measuring_conditions(
    batch_size: int, sequence_length: int | None, rounds: int, **extra: float | int | None
) -> dict[str, Any]:
    """What a measurement ran under: the batch shape, the rounds, torch's threads, the 1-minute load
    average (None where the system has none) and the CPUs this process may use."""
    try:
        load: float | None = os.getloadavg()[0]
    except (OSError, AttributeError):  # Windows has no load average
        load = None
    return {
        "batch_size": batch_size,
        "sequence_length": sequence_length,
        **extra,
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        "load_average": load,
        "cpu_count": _cpu_count(),
    }


def _batch_shape(batch: Mapping[str, torch.Tensor]) -> tuple[int, int | None]:
    """Examples in the batch, and tokens per example where it holds token ids."""
    size = int(next(iter(batch.values())).shape[0])
    ids = batch.get("input_ids")
    return size, int(ids.shape[1]) if ids is not None and ids.dim() > 1 else None


@torch.no_grad()
def compare_speed(
    models: Mapping[str, nn.Module],
    batch: Mapping[str, torch.Tensor],
    *,
    min_rounds: int = 7,
    max_rounds: int = 50,
    min_seconds: float = 1.0,
    min_call_seconds: float = 0.01,
) -> dict[str, dict[str, Any]]:
    """Time one forward pass of each model on the same ``batch`` on the CPU, in alternating rounds
    (:func:`time_rounds`; a model faster than ``min_call_seconds`` runs back to back that long in
    each round, and the round keeps the mean pass).

    ``batch`` holds the models' keyword inputs (a :class:`~kdistill.data.datasets.Routed` model picks
    its own token ids from a batch that holds both models'). Each model runs in eval mode under
    ``no_grad``, and is put back on its device and in its mode afterwards.

    Returns:
        By model name: :data:`MODEL_KEYS` (``speedup`` where a ``teacher`` was timed) and the
        conditions of :func:`measuring_conditions`, alike for every model.
    """
    inputs: Any = {key: value.cpu() for key, value in batch.items()}
    size, length = _batch_shape(inputs)
    states = {name: (next(model.parameters()).device, model.training) for name, model in models.items()}
    load_before = measuring_conditions(size, length, 0)["load_average"]
    try:
        for model in models.values():
            model.eval().to("cpu")
        workloads = {name: (lambda model=model: call_model(model, inputs)) for name, model in models.items()}
        times = time_rounds(
            workloads,
            min_rounds=min_rounds,
            max_rounds=max_rounds,
            min_seconds=min_seconds,
            min_call_seconds=min_call_seconds,
        )
    finally:
        for name, model in models.items():
            device, training = states[name]
            model.to(device).train(training)
    conditions = measuring_conditions(size, length, len(next(iter(times.values()))))
    # the load before timing: the timing's own threads would otherwise count as load
    conditions["load_average"] = load_before
    summary = summarise_rounds(times, units=size)
    return {name: {**summary[name], **conditions} for name in models}


def measure_speed(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    *,
    min_seconds: float = 0.5,
    min_repeats: int = 5,
    max_repeats: int = 50,
) -> dict[str, Any]:
    """CPU latency of one forward pass of one model on ``batch`` (median) and throughput.

    The one-model case of :func:`compare_speed`: after two warm-up passes, timed until
    ``min_seconds`` have passed and at least ``min_repeats`` runs were timed.

    Returns:
        ``{"latency_ms": ..., "throughput": examples per second, "batch_size": ...}`` and the
        latency's spread and the conditions of :func:`compare_speed`.
    """
    timed = compare_speed(
        {"model": model}, batch, min_rounds=min_repeats, max_rounds=max_repeats, min_seconds=min_seconds
    )
    return timed["model"]


def with_speedup(speeds: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Add each model's speed-up over the teacher (``teacher`` latency / its latency) where both were timed
    separately; :func:`compare_speed` gives the speed-up of alternating rounds instead."""
    if "teacher" in speeds:
        for timing in speeds.values():
            timing["speedup"] = speeds["teacher"]["latency_ms"] / timing["latency_ms"]
    return speeds


def speed_warning(speeds: Mapping[str, Mapping[str, Any]], conditions: Mapping[str, Any]) -> str | None:
    """Why the speed numbers are not to be trusted, and how to get a stable one; None when they are.

    They are not when the spread is wide (the speed-up's spread, or the latency's without a
    teacher, above :data:`WIDE_SPREAD`) or when the load average exceeded the CPUs
    (:data:`BUSY_LOAD_PER_CPU` per CPU).
    """
    reasons = []
    spreads = [float(timing.get("speedup_spread", timing.get("latency_spread", 0.0))) for timing in speeds.values()]
    widest = max(spreads, default=0.0)
    if widest > WIDE_SPREAD:
        what = "speed-up" if any("speedup_spread" in timing for timing in speeds.values()) else "latency"
        reasons.append(f"the {what} varied by {widest:.0%} between rounds (interquartile range over the median)")
    load, cpus = conditions.get("load_average"), conditions.get("cpu_count")
    if load is not None and cpus and load > BUSY_LOAD_PER_CPU * cpus:
        reasons.append(f"the load average was {load:.1f} on {cpus} CPU{'' if cpus == 1 else 's'}")
    if not reasons:
        return None
    advice = "re-run with nothing else running"
    if (conditions.get("threads") or 1) > 1:
        advice += ", or with one thread (OMP_NUM_THREADS=1)"
    return f"the machine was busy while timing: {'; '.join(reasons)}. For a stable number, {advice}."


def speed_record(speeds: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The ``speed`` record of ``metrics.json``: the conditions of the measurement, once, and its warning.

    Conditions a task's own measurement left out (one that predates :func:`compare_speed`) are
    read now.
    """
    first = next(iter(speeds.values()), {})
    batch = first.get("batch_size")
    record = measuring_conditions(int(batch) if batch is not None else 0, first.get("sequence_length"), 0)
    record.update({key: first[key] for key in CONDITION_KEYS if key in first})
    if record.get("new_tokens") is None:
        record.pop("new_tokens", None)
    record["device"] = "cpu"
    record["warning"] = speed_warning(speeds, record)
    return record
