"""benchmarks/lm_loss_memory.py on tiny sizes, so that the benchmark cannot rot: the summary of
both contenders in one process, and one contender in its own process as the CPU runs do."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = {"batch": 2, "length": 24, "vocab": 50, "hidden": 8}


def _benchmark_module():
    spec = importlib.util.spec_from_file_location(
        "lm_loss_memory_under_test", ROOT / "benchmarks" / "lm_loss_memory.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_quick_summary_reports_agreement_and_ratios():
    bench = _benchmark_module()
    result = bench.benchmark(bench.Sizes(**TINY), "cpu", "jsd", rounds=1, repeats=1, threads=1, isolate=False)
    for key in (
        "peak_ratio",
        "time_ratio",
        "naive_peak_mb",
        "chunked_peak_mb",
        "naive_time_s",
        "chunked_time_s",
        "torch",
        "threads",
        "device",
    ):
        assert key in result
    assert result["sizes"] == TINY and result["counted_tokens"] == 2 * (24 - bench.PROMPT)
    assert result["max_rel_diff_loss"] < 1e-5 and result["max_rel_diff_grad_hidden"] < 1e-5
    assert result["max_rel_diff_grad_weight"] < 1e-5 and result["float64_max_rel_diff"] < 1e-10


@pytest.mark.slow
def test_a_contender_runs_in_its_own_process(tmp_path):
    bench = _benchmark_module()
    run = bench._run_isolated("chunked", bench.Sizes(**TINY), "forward_kl", 1, 1, tmp_path)
    assert run["peak_mb"] >= 0 and len(run["times"]) == 1
    assert run["grad_weight"].shape == (TINY["vocab"], TINY["hidden"]) and torch.isfinite(run["loss"])
