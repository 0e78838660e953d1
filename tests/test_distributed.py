"""Both training paths under DDP: 2 CPU processes (gloo) match 1 process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from torch.testing import assert_close

SCRIPT = Path(__file__).parent / "scripts" / "ddp_run.py"

# subprocesses or whole runs: left out of a quick `pytest -m "not slow"`
pytestmark = pytest.mark.slow


def _launch(mode, out, processes, batch_per_process):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes == 1:
        command = [sys.executable, str(SCRIPT), mode, str(out), str(batch_per_process)]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(processes),
            # a rendezvous on a free port: fixed ports collide when tests run in parallel
            "--standalone",
            str(SCRIPT),
            mode,
            str(out),
            str(batch_per_process),
        ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=280, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    results = [json.loads((out / f"result-{rank}.json").read_text()) for rank in range(processes)]
    return results, load_file(out / "student.safetensors")


@pytest.mark.parametrize("mode", ["loop", "trainer"])
def test_two_processes_match_one_with_the_same_global_batch(tmp_path, mode):
    single, single_student = _launch(mode, tmp_path / "one", 1, 8)
    double, double_student = _launch(mode, tmp_path / "two", 2, 4)
    curve = single[0]["losses"]
    assert len(curve) == 8
    assert double[0]["losses"] == pytest.approx(curve, rel=1e-4, abs=1e-5)
    if mode == "loop":
        # the loop's history holds the global batch's loss on every process
        assert double[1]["losses"] == pytest.approx(curve, rel=1e-4, abs=1e-5)
    for name in single_student:
        assert_close(double_student[name], single_student[name], rtol=1e-4, atol=1e-5)
    if mode == "loop":
        # files are written once: only the main process saves checkpoints
        assert double[0]["saves"] == single[0]["saves"] > 0
        assert double[1]["saves"] == 0
        checkpoints = sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir())
        assert all(name.startswith("checkpoint-") for name in checkpoints)
    else:
        assert sorted(p.name for p in (tmp_path / "two" / "trainer").iterdir()) == ["checkpoint-4", "checkpoint-8"]
