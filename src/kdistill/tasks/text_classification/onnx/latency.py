"""PyTorch against ONNX Runtime on the CPU: one classifier, side by side, in one process.

Every backend is timed on the same batch, with the same number of threads, in alternating
rounds: each round runs every backend once and the order rotates from round to round, so that
no backend always runs first or always lands on the same burst of load from other programs. A
backend's latency is its median over the rounds and its spread the interquartile range over
the median; its speed-up over PyTorch is the median of the rounds' own ratios (a slow spell that
hits a whole round cancels out of that round's ratio).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdistill.models.speed import relative_spread, time_rounds
from kdistill.tasks.text_classification.onnx.runtime import SAMPLE_TEXTS, onnx_session

__all__ = ["BATCH_SIZES", "compare_latency", "format_latency_table"]

#: the batches timed: one text (a request served alone) and 32 (a batch job)
BATCH_SIZES = (1, 32)
#: a timing repeats a fast call until it lasts this long, so that the clock's resolution and the
#: scheduler's jitter stay small beside it
MIN_TIMING_SECONDS = 0.02
#: the backend the others are compared with
REFERENCE = "pytorch"


def _batch(tokenizer: Any, names: Sequence[str], size: int, length: int) -> dict[str, torch.Tensor]:
    """``size`` sample texts padded (or cut) to ``length`` tokens: ``{name: [size, length] int64}``."""
    texts = [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(size)]
    encoded = tokenizer(texts, truncation=True, max_length=length, padding="max_length", return_tensors="pt")
    return {name: encoded[name].to(torch.int64) for name in names}


def compare_latency(
    model: nn.Module,
    graphs: Mapping[str, str | os.PathLike[str]],
    tokenizer: Any,
    names: Sequence[str],
    *,
    length: int = 128,
    rounds: int = 10,
    threads: int | None = None,
    batch_sizes: Sequence[int] = BATCH_SIZES,
) -> dict[str, Any]:
    """Time the PyTorch model and each ONNX graph on the same batches, side by side.

    Args:
        model: the PyTorch classifier (eval mode, CPU).
        graphs: ``{backend name: .onnx file}`` (e.g. ``onnxruntime``, ``onnxruntime int8``).
        tokenizer: the model's tokenizer (the batches are sample texts).
        names: the graph's input names (:func:`kdistill.tasks.text_classification.onnx.export.model_input_names`).
        length: tokens per text: every text is padded or cut to it (``[batch, length]`` inputs).
        rounds: alternating rounds (at least 2 for a spread).
        threads: CPU threads of both runtimes (``torch.set_num_threads``; ONNX Runtime's
            ``intra_op_num_threads``); default torch's current number. Restored afterwards.
        batch_sizes: the batches timed.

    Returns:
        ``{"threads", "sequence_length", "rounds", "omp_num_threads", "load_average", "cpu_count",
        "rows"}``; a row per batch size and backend: ``batch_size``, ``backend``, ``median_ms``
        (per batch), ``spread`` (IQR over median), ``speedup`` over PyTorch and ``speedup_spread``.
    """
    threads = threads or torch.get_num_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows: list[dict[str, Any]] = []
    try:
        sessions = {name: onnx_session(Path(path), threads) for name, path in graphs.items()}
        for size in batch_sizes:
            batch = _batch(tokenizer, names, size, length)
            feeds = {name: tensor.numpy() for name, tensor in batch.items()}

            def forward(batch: dict[str, torch.Tensor] = batch) -> object:
                with torch.inference_mode():
                    return model(**batch).logits

            workloads: dict[str, Callable[[], object]] = {REFERENCE: forward}
            for name, session in sessions.items():
                workloads[name] = lambda session=session, feeds=feeds: session.run(["logits"], feeds)
            times = time_rounds(
                workloads,
                min_rounds=rounds,
                max_rounds=rounds,
                min_seconds=0.0,
                min_call_seconds=MIN_TIMING_SECONDS,
            )
            for name, values in times.items():
                ratios = [reference / value for reference, value in zip(times[REFERENCE], values)]
                rows.append(
                    {
                        "batch_size": size,
                        "backend": name,
                        "median_ms": statistics.median(values) * 1000,
                        "spread": relative_spread(values),
                        "speedup": statistics.median(ratios),
                        "speedup_spread": relative_spread(ratios),
                    }
                )
    finally:
        torch.set_num_threads(previous)
    return {
        "threads": threads,
        "sequence_length": length,
        "rounds": rounds,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "cpu_count": os.cpu_count(),
        "rows": rows,
    }


def format_latency_table(latency: Mapping[str, Any]) -> str:
    """The latency table of :func:`compare_latency`: a line on the conditions, then a row per batch and backend."""
    threads = latency["threads"]
    load = latency.get("load_average")
    omp = latency.get("omp_num_threads") or "unset"
    conditions = (
        f"CPU latency per batch: {threads} thread{'' if threads == 1 else 's'} for each runtime "
        f"(torch.set_num_threads; ONNX Runtime intra_op_num_threads, inter-op 1; OMP_NUM_THREADS={omp}), "
        f"{latency['sequence_length']} tokens per text, {latency['rounds']} alternating rounds"
        + (f", load average {load:.2f} on {latency.get('cpu_count')} CPUs" if load is not None else "")
    )
    header = f"{'batch':>5}  {'backend':<17}  {'median ms':>10}  {'IQR':>5}  {'speed-up vs PyTorch':<20}"
    lines = [conditions, "median over the rounds; IQR is the interquartile range over the median", header]
    for row in latency["rows"]:
        speedup = f"{row['speedup']:.2f}x" + (
            f" (IQR {row['speedup_spread']:.0%})" if row["backend"] != REFERENCE else ""
        )
        shown = f"{row['batch_size']:>5}  {row['backend']:<17}  {row['median_ms']:>10.2f}  {row['spread']:>5.0%}"
        lines.append(f"{shown}  {speedup}")
    return "\n".join(lines)
