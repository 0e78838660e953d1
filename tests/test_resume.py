"""Checkpoints of the plain loop: exact resume after SIGKILL, damaged checkpoints, safe loading, NaN guards."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import mlp
from safetensors.torch import load_file, save_file
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


def _checkpointed(folder):
    """Two epochs of a small run, checkpointed every 2 steps (the newest 3 kept)."""
    distill(
        mlp(16, 32, 4, seed=0),
        mlp(16, 8, 4, seed=1),
        _loader(_task()),
        lr=1e-2,
        epochs=2,
        checkpoint_dir=folder,
        save_every=2,
        keep_checkpoints=3,
        progress=False,
    )
    return sorted(folder.glob("checkpoint-*"))


def _edit_manifest(checkpoint, change):
    manifest_path = checkpoint / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest = change(manifest)
    manifest_path.write_text(json.dumps(manifest))


def _drop(key):
    def change(manifest):
        del manifest["files"][key]
        return manifest

    return change


def _outside(manifest):
    manifest["files"]["../student.safetensors"] = manifest["files"]["student.safetensors"]
    return manifest


def _other_step(manifest):
    manifest["step"] += 1
    return manifest


def _no_checksum(manifest):
    del manifest["files"]["training_state.pt"]["sha256"]
    return manifest


#: manifests that are not the one kdistill wrote, with what the warning must say
MANIFEST_DAMAGE = {
    "a list": (lambda manifest: [manifest], "lists no step or files"),
    "no files": (lambda manifest: {"step": manifest["step"]}, "lists no step or files"),
    "the state not listed": (_drop("training_state.pt"), "does not list training_state.pt"),
    "a path outside": (_outside, "lists the file '../student.safetensors'"),
    "another step": (_other_step, "names step"),
    "no checksum": (_no_checksum, "records no size and checksum of training_state.pt"),
}


@pytest.mark.parametrize("damage", sorted(MANIFEST_DAMAGE))
def test_a_checkpoint_whose_manifest_kdistill_did_not_write_falls_back_to_the_one_before(tmp_path, caplog, damage):
    *_, previous, newest = _checkpointed(tmp_path)
    change, message = MANIFEST_DAMAGE[damage]
    _edit_manifest(newest, change)
    with caplog.at_level("WARNING"):
        assert find_resumable(tmp_path) == previous
    assert f"{newest.name} is damaged" in caplog.text and message in caplog.text, caplog.text
    student = mlp(16, 8, 4, seed=1)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_checkpoint(newest, student, Objective.hinton())


def _rewrite(checkpoint, name, write):
    """Replace the checkpoint's file ``name`` through ``write(path)`` and record its new size and
    SHA-256 in the manifest, as an edit by hand would: the checksums alone no longer tell."""
    from kdistill.files.ownership import file_sha256

    path = checkpoint / name
    write(path)
    _edit_manifest(
        checkpoint,
        lambda manifest: {
            **manifest,
            "files": {**manifest["files"], name: {"bytes": path.stat().st_size, "sha256": file_sha256(path)}},
        },
    )


def _weights(change):
    def write(path):
        tensors = load_file(path)
        change(tensors)
        save_file(tensors, path)

    return write


def _state(change):
    def write(path):
        state = torch.load(path, weights_only=True)
        change(state)
        torch.save(state, path)

    return write


def _wider(tensors):
    name = sorted(tensors)[0]
    tensors[name] = torch.zeros(tensors[name].shape[0] + 1, *tensors[name].shape[1:])


def _set(key, value):
    return lambda state: state.__setitem__(key, value)


def _broken_rng(state):
    state["rng"]["torch"] = state["rng"]["torch"][:10]


def _one_group_less(state):
    state["optimizer"]["param_groups"][0]["params"] = state["optimizer"]["param_groups"][0]["params"][:1]


#: files that pass their checksums (the manifest was edited to match) but do not fit the run
CONTENT_DAMAGE = {
    "student weights of another shape": (
        "student.safetensors",
        _weights(_wider),
        "student.safetensors does not fit the student (",
    ),
    "student weights missing a tensor": (
        "student.safetensors",
        _weights(lambda tensors: tensors.pop(sorted(tensors)[0])),
        "student.safetensors does not fit the student (Error(s) in loading state_dict for Sequential:; Missing key",
    ),
    "a state without its history": (
        "training_state.pt",
        _state(lambda state: state.pop("history")),
        "training_state.pt is damaged: it holds [",
    ),
    "a negative step": ("training_state.pt", _state(_set("batches_done", -3)), "its batches_done is -3, not a count"),
    "a state of another step": ("training_state.pt", _state(_set("step", 2)), "it is the state of step 2"),
    "an RNG state that cannot be restored": (
        "training_state.pt",
        _state(_broken_rng),
        "it holds an RNG state that cannot be restored",
    ),
    "an optimizer state of another model": (
        "training_state.pt",
        _state(_one_group_less),
        "training_state.pt does not fit this run's optimizer or scheduler",
    ),
    "a history that is not one": (
        "training_state.pt",
        _state(_set("history", {"steps": [], "bogus": 1})),
        "its history holds ['bogus', 'steps']",
    ),
}


@pytest.mark.parametrize("damage", sorted(CONTENT_DAMAGE))
def test_a_checkpoint_that_does_not_fit_the_run_is_refused_in_one_line(tmp_path, damage):
    *_, newest = _checkpointed(tmp_path)
    name, write, message = CONTENT_DAMAGE[damage]
    _rewrite(newest, name, write)
    assert find_resumable(tmp_path) == newest  # its checksums pass
    student = mlp(16, 8, 4, seed=1)
    with pytest.raises(CheckpointError) as error:
        distill(
            mlp(16, 32, 4, seed=0),
            student,
            _loader(_task()),
            lr=1e-2,
            epochs=3,
            checkpoint_dir=tmp_path,
            resume=True,
            progress=False,
        )
    text = str(error.value)
    assert message in text and str(newest / name) in text and len(text.splitlines()) == 1, text
    assert isinstance(error.value, ValueError)  # a KdistillError: one line on the command line


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
