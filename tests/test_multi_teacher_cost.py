"""benchmarks/multi_teacher_cost.py, so that the numbers of docs/multi_teacher.md cannot rot: each
mode trains in-process for a few steps, and the summary's medians and ratios."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _benchmark_module():
    spec = importlib.util.spec_from_file_location(
        "multi_teacher_cost_under_test", ROOT / "benchmarks" / "multi_teacher_cost.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_every_mode_trains_and_reports_its_steps_and_memory(tmp_path):
    bench = _benchmark_module()
    steps = bench.WARMUP + 1
    caches = bench.build_caches(tmp_path, steps, torch.device("cpu"))
    assert sorted(caches) == sorted(bench.TEACHERS)
    for mode in bench.MODES:
        found = bench.run_mode(mode, steps, torch.device("cpu"), caches)
        assert found["steps_timed"] == 1, mode
        assert found["step_s"] > 0 and found["step_cpu_s"] > 0, mode
        assert found["peak_rss_mb"] >= found["after_imports_rss_mb"] > 0, mode


def test_the_summary_takes_medians_over_the_repeats_and_ratios_to_one_teacher_online():
    bench = _benchmark_module()

    def run(step: float, rss: float) -> dict[str, float]:
        return {"step_s": 2 * step, "step_cpu_s": step, "peak_rss_mb": rss, "after_imports_rss_mb": 400.0}

    runs = {
        "one_online": [run(0.2, 500.0), run(0.3, 520.0), run(0.9, 510.0)],
        "three_cached": [run(0.15, 450.0), run(0.1, 440.0), run(0.2, 460.0)],
    }
    table = bench.summary(runs)
    assert table["one_online"]["step_cpu_s"] == 0.3 and table["one_online"]["step_cpu_ratio"] == 1.0
    assert table["three_cached"]["step_cpu_ratio"] == 0.5 and table["three_cached"]["step_ratio"] == 0.5
    assert table["three_cached"]["peak_rss_mb"] == 450.0
    assert table["three_cached"]["above_imports_mb"] == 50.0 and table["three_cached"]["above_imports_ratio"] == 0.45
