"""benchmarks/lm_topk_coverage.py: the rest mass and target-outside share it reports, on a known
distribution, and the script end to end on a tiny causal LM folder."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location(
        "lm_topk_coverage_under_test", ROOT / "benchmarks" / "lm_topk_coverage.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rest_mass_and_targets_outside_the_top_k() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4]])
    seen = _module().coverage(probs.log(), torch.tensor([2, 3]), [1, 2, 4])
    assert seen[1]["rest"] == pytest.approx([0.5, 0.6])
    assert seen[2]["rest"] == pytest.approx([0.2, 0.3])
    assert seen[4]["rest"] == pytest.approx([0.0, 0.0], abs=1e-6)
    # row 0's target (id 2) is third: outside the top 1 and 2; row 1's (id 3) is the most probable
    assert seen[1]["outside"] == [1.0, 0.0] and seen[2]["outside"] == [1.0, 0.0] and seen[4]["outside"] == [0.0, 0.0]


@pytest.mark.slow
def test_the_script_reports_every_k_for_a_tiny_teacher(tmp_path: Path) -> None:
    from lm_fixtures import CORPUS, write_teacher

    teacher = write_teacher(tmp_path / "teacher", layers=1)
    vocab = json.loads((teacher / "config.json").read_text())["vocab_size"]
    (tmp_path / "text.txt").write_text("".join(CORPUS) * 20, encoding="utf-8")
    command = [sys.executable, str(ROOT / "benchmarks" / "lm_topk_coverage.py"), str(teacher)]
    command += [str(tmp_path / "text.txt"), "--blocks", "2", "--length", "16", "--k", f"4,{vocab}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["tokens"] == 32 and set(result["k"]) == {"4", str(vocab)}
    # the top V of a V-id vocabulary hold everything; the top 4 of a random model leave most out
    assert result["k"][str(vocab)]["rest_mass_mean"] == pytest.approx(0.0, abs=1e-5)
    assert result["k"][str(vocab)]["target_outside"] == 0.0
    assert result["k"]["4"]["rest_mass_mean"] > 0.5 and result["k"]["4"]["bytes_per_token"] == 4 * 4 + 4
    too_many = subprocess.run([*command[:-1], str(vocab + 1)], capture_output=True, text=True, timeout=120)
    assert too_many.returncode != 0 and f"--k {vocab + 1} is more than the teacher's {vocab} ids" in too_many.stderr
