"""Checkpoints of the plain loop: exact resume after SIGKILL, damaged checkpoints, safe loading, NaN guards."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import mlp
from safetensors.torch import load_file
from torch.testing import assert_close
from torch.utils.data import DataLoader, TensorDataset

from kdistill import Objective, distill
from kdistill.train.checkpoint import CheckpointError, find_resumable, load_checkpoint
from kdistill.train.loop import NonFiniteLossError

SCRIPT = Path(__file__).parent / "scripts" / "resumable_run.py"


def _run(out, *flags, wait=True):
    command = [sys.executable, str(SCRIPT), str(out), *flags]
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_student(tmp_path):
    _run(tmp_path / "straight")
    expected = load_file(tmp_path / "straight" / "final.safetensors")

    killed = tmp_path / "killed"
    process = _run(killed, "--slow", "0.15", wait=False)
    checkpoints = killed / "checkpoints"
    deadline = time.time() + 120
    # 6 optimizer steps per epoch: kill in the middle of the second epoch
    while time.time() < deadline and not (checkpoints / "checkpoint-00000008").exists():
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "final.safetensors").exists()
    assert find_resumable(checkpoints) is not None

    _run(killed, "--resume")
    resumed = load_file(killed / "final.safetensors")
    for name in expected:
        assert_close(resumed[name], expected[name], rtol=1e-5, atol=1e-6)


def _task():
    inputs, labels = torch.randn(64, 16), torch.randint(0, 4, (64,))
    return TensorDataset(inputs, labels)


def _loader(dataset):
    return DataLoader(dataset, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))


def test_resume_with_a_loader_that_shuffles_with_its_own_generator_keeps_the_data_order(tmp_path):
    # DataLoader(shuffle=True, generator=...) draws each epoch's order from its generator, not the
    # global RNG: a checkpoint must hold that generator's state too
    dataset = _task()
    expected = mlp(16, 8, 4, seed=1)
    distill(
        mlp(16, 32, 4, seed=0),
        expected,
        _loader(dataset),
        lr=1e-2,
        epochs=3,
        checkpoint_dir=tmp_path / "all",
        save_every=3,
        keep_checkpoints=10,
        progress=False,
    )
    # 8 steps per epoch: step 12 is in the middle of the second epoch
    (tmp_path / "cut").mkdir()
    shutil.copytree(tmp_path / "all" / "checkpoint-00000012", tmp_path / "cut" / "checkpoint-00000012")
    resumed = mlp(16, 8, 4, seed=5)  # other weights: the checkpoint's must replace them
    distill(
        mlp(16, 32, 4, seed=0),
        resumed,
        _loader(dataset),
        lr=1e-2,
        epochs=3,
        checkpoint_dir=tmp_path / "cut",
        save_every=3,
        keep_checkpoints=10,
        resume=True,
        progress=False,
    )
    for name, tensor in expected.state_dict().items():
        assert_close(resumed.state_dict()[name], tensor, rtol=1e-5, atol=1e-6)


def test_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog):
    dataset = _task()
    student = mlp(16, 8, 4, seed=1)
    distill(
        mlp(16, 32, 4, seed=0),
        student,
        _loader(dataset),
        lr=1e-2,
        epochs=2,
        checkpoint_dir=tmp_path,
        save_every=2,
        keep_checkpoints=3,
        progress=False,
    )
    newest, previous = sorted(tmp_path.glob("checkpoint-*"))[-1], sorted(tmp_path.glob("checkpoint-*"))[-2]
    weights = newest / "student.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with caplog.at_level("WARNING"):
        assert find_resumable(tmp_path) == previous
    assert "damaged" in caplog.text and newest.name in caplog.text


def test_a_checkpoint_holding_an_unsafe_pickle_is_refused(tmp_path):
    dataset = _task()
    student, objective = mlp(16, 8, 4, seed=1), Objective.hinton()
    distill(
        mlp(16, 32, 4, seed=0),
        student,
        _loader(dataset),
        objective=objective,
        lr=1e-2,
        epochs=1,
        checkpoint_dir=tmp_path,
        progress=False,
    )
    checkpoint = find_resumable(tmp_path)

    class Sneaky:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    torch.save({"step": 1, "payload": Sneaky()}, checkpoint / "training_state.pt")
    # keep the manifest consistent so only the unsafe content can be the reason
    import hashlib
    import json

    manifest = json.loads((checkpoint / "manifest.json").read_text())
    data = (checkpoint / "training_state.pt").read_bytes()
    manifest["files"]["training_state.pt"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(checkpoint, student, objective)


def test_resume_of_a_finished_run_changes_nothing(tmp_path):
    dataset = _task()
    student = mlp(16, 8, 4, seed=1)
    history = distill(
        mlp(16, 32, 4, seed=0), student, _loader(dataset), lr=1e-2, epochs=2, checkpoint_dir=tmp_path, progress=False
    )
    before = {k: v.clone() for k, v in student.state_dict().items()}
    again = distill(
        mlp(16, 32, 4, seed=0),
        student,
        _loader(dataset),
        lr=1e-2,
        epochs=2,
        checkpoint_dir=tmp_path,
        resume=True,
        progress=False,
    )
    for name, tensor in student.state_dict().items():
        assert torch.equal(tensor, before[name])
    assert again.steps == history.steps


class _Exploding(torch.nn.Module):
    """A student whose output becomes NaN from its third call on."""

    def __init__(self):
        super().__init__()
        self.inner, self.calls = mlp(16, 8, 4, seed=1), 0

    def forward(self, x):
        self.calls += 1
        out = self.inner(x)
        return out * float("nan") if self.calls >= 3 else out


def test_nan_loss_stops_the_run_naming_the_part_and_keeps_weights_finite(tmp_path):
    student = _Exploding()
    with pytest.raises(NonFiniteLossError, match=r"loss part kd, ce is NaN at step 3") as error:
        distill(
            mlp(16, 32, 4, seed=0),
            student,
            _loader(_task()),
            lr=1e-2,
            epochs=1,
            checkpoint_dir=tmp_path,
            save_every=1,
            progress=False,
        )
    assert "last good checkpoint" in str(error.value)
    assert all(torch.isfinite(p).all() for p in student.parameters())
    assert find_resumable(tmp_path).name == "checkpoint-00000002"


def test_nan_steps_can_be_skipped_and_counted():
    student = _Exploding()
    history = distill(
        mlp(16, 32, 4, seed=0), student, _loader(_task()), lr=1e-2, epochs=1, on_nonfinite="skip", progress=False
    )
    assert history.skipped_steps == 6 and len(history.steps) == 2
    assert all(torch.isfinite(p).all() for p in student.parameters())
