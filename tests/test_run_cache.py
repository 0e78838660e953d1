"""``teacher: {cache: ...}`` in a ``kdistill distill`` config: the run trains from the teacher's
stored outputs, ends with the same student as an online run, and a second run reuses the cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from text_fixtures import save_classifier, sentences, write_csv

from kdistill.app.cli import main


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run-cache")
    save_classifier(root / "teacher", num_layers=3, hidden=32, heads=4, seed=1, id2label={0: "neg", 1: "pos"})
    write_csv(root / "train.csv", sentences(64, seed=0, labels=("neg", "pos")))
    write_csv(root / "test.csv", sentences(24, seed=1, labels=("neg", "pos")))
    config = {
        "teacher": {"path": str(root / "teacher")},
        "student": {"from_teacher": {"num_layers": 1}},
        "data": {"train": str(root / "train.csv"), "test": str(root / "test.csv"), "max_length": 16},
        "objective": {"preset": "hinton", "temperature": 2.0, "alpha": 0.7},
        "training": {"epochs": 2, "batch_size": 8, "lr": 1.0e-3},
        "output": {"save_checkpoints": False},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return root


def distill(workspace: Path, folder: Path, *overrides: str) -> Path:
    code = main(["distill", str(workspace / "run.yaml"), "--no-progress", f"output.dir={folder}", *overrides])
    assert code == 0
    return folder


def student_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "student" / "model.safetensors"))


def test_a_cached_run_equals_an_online_run_and_the_next_run_reuses_the_cache(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    online = distill(workspace, tmp_path / "online")
    cache = tmp_path / "cache"
    cached = distill(workspace, tmp_path / "cached", f"teacher.cache={cache}")

    assert (cache / "manifest.json").is_file()
    first, second = student_weights(online), student_weights(cached)
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(second[name], first[name], rtol=1e-4, atol=1e-5, msg=name)
    assert "teacher outputs from the cache" in (cached / "run.log").read_text()

    def no_online_teacher(*args: object, **kwargs: object) -> None:
        raise AssertionError("the teacher ran during training although its outputs are cached")

    # training must read every batch's teacher outputs from the cache
    monkeypatch.setattr("kdistill.train.teacher.capture", no_online_teacher)
    again = distill(workspace, tmp_path / "again", f"teacher.cache={cache}")
    assert "reusing the teacher cache" in (again / "run.log").read_text()
    for name, tensor in student_weights(again).items():
        torch.testing.assert_close(tensor, second[name], msg=name)


def test_cache_true_keeps_one_folder_per_fingerprint(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "root"))
    distill(workspace, tmp_path / "a", "teacher.cache=true", "training.epochs=1")
    # other data: another fingerprint, so another folder, and the first cache stays usable
    distill(workspace, tmp_path / "b", "teacher.cache=true", "training.epochs=1", "data.max_train_examples=40")
    entries = sorted((tmp_path / "root" / "teacher-outputs").iterdir())
    folders = [entry for entry in entries if not entry.name.endswith(".lock")]  # each build's lock file stays
    assert len(folders) == 2 and all((f / "manifest.json").is_file() for f in folders)
    assert sorted(entry.name for entry in entries if entry not in folders) == sorted(
        f".{f.name}.lock" for f in folders
    )


def test_stages_that_need_attention_run_the_teacher_online(workspace: Path, tmp_path: Path) -> None:
    folder = distill(
        workspace,
        tmp_path / "tinybert",
        f"teacher.cache={tmp_path / 'cache'}",
        "objective.preset=tinybert",
        "objective.temperature=null",
        "objective.alpha=null",
        "training.max_steps=2",
        "training.epochs=1",
    )
    log = (folder / "run.log").read_text()
    assert "stage intermediate: its terms need attention maps" in log
    assert "stage prediction: teacher outputs from the cache" in log


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{dtype: fp8}", "teacher.cache.dtype"),
        ("{folder: x}", "teacher.cache.folder: unknown key"),
    ],
)
def test_a_bad_cache_setting_is_one_line(
    workspace: Path, tmp_path: Path, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "distill",
            str(workspace / "run.yaml"),
            "--no-progress",
            f"teacher.cache={value}",
            f"output.dir={tmp_path / 'never'}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()


def test_a_saved_student_with_the_same_tokenizer_elsewhere_reuses_the_cache(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # distilling further from a student saved by an earlier run: its tokenizer is the teacher's,
    # saved in another folder, so the teacher's outputs over the same inputs are still valid
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "root"))
    first = distill(workspace, tmp_path / "first", "teacher.cache=true", "training.epochs=1")
    again = distill(
        workspace,
        tmp_path / "again",
        "teacher.cache=true",
        "training.epochs=1",
        "student.from_teacher=null",
        f"student.path={first / 'student'}",
    )
    assert "reusing the teacher cache" in (again / "run.log").read_text()
    folders = [
        entry for entry in (tmp_path / "root" / "teacher-outputs").iterdir() if not entry.name.endswith(".lock")
    ]
    assert len(folders) == 1


def test_the_cache_key_follows_the_tokenizers_content_not_its_folder(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from kdistill.cache import fingerprint_tokenizer

    save_classifier(tmp_path / "model", num_layers=1, hidden=16, heads=2, seed=0, id2label={0: "a", 1: "b"})
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "model"))
    tokenizer.save_pretrained(str(tmp_path / "copy"))
    copy = AutoTokenizer.from_pretrained(str(tmp_path / "copy"))
    assert copy.name_or_path != tokenizer.name_or_path
    assert fingerprint_tokenizer(copy) == fingerprint_tokenizer(tokenizer)
    copy.add_tokens(["zyzzyva"])
    assert fingerprint_tokenizer(copy) != fingerprint_tokenizer(tokenizer)


def test_building_the_cache_does_not_shift_the_stages_random_draws(workspace: Path, tmp_path: Path) -> None:
    """With dropout on, a run that builds its cache and a run that reuses it train the same student:
    building it (a DataLoader iterator draws from the global RNG) happens before the stage's seed."""
    save_classifier(
        tmp_path / "teacher", num_layers=2, hidden=32, heads=4, seed=1, id2label={0: "neg", 1: "pos"}, dropout=0.2
    )
    overrides = [f"teacher.path={tmp_path / 'teacher'}", f"teacher.cache={tmp_path / 'cache'}"]
    built = distill(workspace, tmp_path / "built", *overrides)
    reused = distill(workspace, tmp_path / "reused", *overrides)
    assert "reusing the teacher cache" in (reused / "run.log").read_text()
    for name, tensor in student_weights(built).items():
        assert torch.equal(tensor, student_weights(reused)[name]), name


def test_a_damaged_cache_is_rebuilt_with_a_log_line_and_never_trained_on(workspace: Path, tmp_path: Path) -> None:
    import json

    cache = tmp_path / "cache"
    first = distill(workspace, tmp_path / "first", f"teacher.cache={cache}", "training.epochs=1")
    # a shape the manifest does not give: the shards' checksums still pass
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["fields"]["logits"]["row_shape"] = [3]
    (cache / "manifest.json").write_text(json.dumps(manifest))
    again = distill(workspace, tmp_path / "again", f"teacher.cache={cache}", "training.epochs=1")
    log = (again / "run.log").read_text()
    assert f"the teacher cache at {cache} is damaged: logits.00000.npy holds float32 of shape" in log
    assert "; rebuilding it" in log
    for name, tensor in student_weights(again).items():
        torch.testing.assert_close(tensor, student_weights(first)[name], msg=name)
