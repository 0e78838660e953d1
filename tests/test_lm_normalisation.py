"""Token-level losses are normalised by the target tokens of the whole optimizer step: the step's
gradient is the same however the step is split into micro-batches (gradient accumulation) and
processes, in the plain loop and in the Trainer (issue 15, item 4).

Examples are ragged: different lengths, masked prompts of different lengths, one example with no
target token at all. A loss averaged per micro-batch instead gives different gradients for these
splits (checked too, so that the tests can fail).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lm_fixtures import loop_gradients, one_step_arguments, ragged_rows, step_setup
from safetensors.torch import load_file
from torch.testing import assert_close

from kdistill import DistillationTrainer, Objective
from kdistill.data.datasets import PaddingCollator

SPLITS = [(8, 1), (4, 2), (1, 8)]  # (examples per micro-batch, micro-batches per step)
VOCAB = 64
Gradients = dict[str, torch.Tensor]


def _loop_gradients(per_batch: int, accumulation: int, naive: bool = False) -> Gradients:
    def per_micro_batch(objective: Objective) -> Objective:
        return PerMicroBatchMean(dict(objective.terms), weights=dict(objective.weights))

    return loop_gradients(per_batch, accumulation, wrap=per_micro_batch if naive else None)


def _assert_same(got: Gradients, expected: Gradients) -> None:
    assert got.keys() == expected.keys() and expected
    for name in expected:
        assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7)


def test_the_fixture_is_ragged_enough_to_tell_the_normalisations_apart() -> None:
    targets = [sum(label != -100 for label in row["labels"][1:]) for row in ragged_rows(vocab=VOCAB)]
    assert 0 in targets and len(set(targets)) >= 4


@pytest.mark.parametrize("split", SPLITS[1:], ids=lambda s: f"{s[0]}x{s[1]}")
def test_loop_gradients_do_not_depend_on_the_micro_batch_split(split: tuple[int, int]) -> None:
    _assert_same(_loop_gradients(*split), _loop_gradients(*SPLITS[0]))


class PerMicroBatchMean(Objective):
    """The normalisation the issue warns of: each micro-batch's own mean, averaged over micro-batches."""

    def forward(self, student, teacher, labels=None, share=None):  # type: ignore[override]
        if share is not None:
            share = type(share)(micro_batches=share.micro_batches, target_tokens=None, processes=share.processes)
        return super().forward(student, teacher, labels, share)


def test_a_per_micro_batch_mean_would_give_other_gradients() -> None:
    got, expected = _loop_gradients(4, 2, naive=True), _loop_gradients(8, 1)
    assert any(not torch.allclose(got[name], expected[name], rtol=1e-3, atol=1e-6) for name in expected)


def _trainer_gradients(tmp_path: Path, per_batch: int, accumulation: int) -> Gradients:
    from datasets import Dataset

    teacher, student, objective, optimizer = step_setup(VOCAB)
    trainer = DistillationTrainer(
        teacher_model=teacher,
        model=student,
        args=one_step_arguments(tmp_path / f"trainer-{per_batch}x{accumulation}", per_batch, accumulation),
        objective=objective,
        train_dataset=Dataset.from_list(ragged_rows(vocab=VOCAB)),
        data_collator=PaddingCollator(),
        optimizers=(optimizer, None),
    )
    trainer.train()
    return optimizer.recorded


@pytest.mark.parametrize("split", SPLITS[1:], ids=lambda s: f"{s[0]}x{s[1]}")
def test_trainer_gradients_do_not_depend_on_the_micro_batch_split(tmp_path: Path, split: tuple[int, int]) -> None:
    _assert_same(_trainer_gradients(tmp_path, *split), _trainer_gradients(tmp_path, *SPLITS[0]))


def test_trainer_and_loop_take_the_same_step(tmp_path: Path) -> None:
    _assert_same(_trainer_gradients(tmp_path, 4, 2), _loop_gradients(8, 1))


SCRIPT = Path(__file__).parent / "scripts" / "lm_ddp_run.py"


def _launch(out: Path, processes: int, per_process: int, accumulation: int) -> dict[str, dict[str, torch.Tensor]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = [str(SCRIPT), str(out), str(per_process), str(accumulation)]
    if processes == 1:
        command = [sys.executable, *script]
    else:
        # --standalone: a rendezvous on a free port (fixed ports collide when tests run in parallel)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
        command += script
    result = subprocess.run(command, capture_output=True, text=True, timeout=280, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads((out / "done.json").read_text())["processes"] == processes
    return {mode: load_file(out / f"gradients-{mode}.safetensors") for mode in ("loop", "trainer")}


@pytest.mark.slow
def test_two_processes_take_the_step_of_one_in_the_loop_and_the_trainer(tmp_path: Path) -> None:
    # 2 processes × 2 micro-batches × 2 examples against 1 process × 8 examples
    two = _launch(tmp_path / "two", 2, 2, 2)
    one = _launch(tmp_path / "one", 1, 8, 1)
    for mode in ("loop", "trainer"):
        assert two[mode].keys() == one[mode].keys() and one[mode]
        for name in one[mode]:
            assert_close(two[mode][name], one[mode][name], rtol=1e-5, atol=1e-7)
