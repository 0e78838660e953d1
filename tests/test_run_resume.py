"""``kdistill distill --resume RUN_DIR``: a run killed with SIGKILL part-way through its second
stage continues from its checkpoints (the fine-tuned teacher read back, the finished stage
skipped) and ends with the student of an uninterrupted run; resuming refuses what it cannot do
in one line."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from text_fixtures import sentences, write_csv, write_tokenizer
from torch.testing import assert_close

from kdistill.app.cli import main

SCRIPT = Path(__file__).parent / "scripts" / "slow_distill.py"


def _teacher_with_dropout(folder: Path) -> None:
    """A tiny BERT classifier whose dropout is on: a resumed run must restore the RNG to match."""
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = write_tokenizer(folder)
    torch.manual_seed(1)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
        id2label={0: "neg", 1: "pos"},
        label2id={"neg": 0, "pos": 1},
    )
    BertForSequenceClassification(config).save_pretrained(folder)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    _teacher_with_dropout(root / "teacher")
    write_csv(root / "train.csv", sentences(48, seed=0, labels=("neg", "pos")))
    write_csv(root / "test.csv", sentences(16, seed=1, labels=("neg", "pos")))
    config = {
        # fine-tuned first, then TinyBERT's two stages into a narrower student (with projections)
        "teacher": {"path": str(root / "teacher"), "finetune": {"epochs": 1, "lr": 1.0e-3}},
        "student": {"from_teacher": {"num_layers": 2, "hidden_size": 16, "num_heads": 2}},
        "data": {"train": str(root / "train.csv"), "test": str(root / "test.csv"), "max_length": 16},
        "objective": {"preset": "tinybert", "tinybert": {"intermediate_epochs": 1, "prediction_epochs": 2}},
        "training": {"epochs": 2, "batch_size": 8, "lr": 1.0e-3},
        "output": {"dir": str(root / "straight"), "save_every": 1, "keep_checkpoints": 2},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return root


@pytest.mark.slow
def test_a_run_killed_in_its_second_stage_resumes_to_the_uninterrupted_student(
    workspace: Path, tmp_path: Path
) -> None:
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [
            sys.executable,
            str(SCRIPT),
            "0.4",
            "distill",
            str(workspace / "run.yaml"),
            "--no-progress",
            f"output.dir={killed}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    # 6 steps an epoch: step 8 of the prediction stage is in the middle of its second epoch
    target = killed / "checkpoints" / "prediction" / "checkpoint-00000008"
    deadline = time.time() + 240
    while time.time() < deadline and not target.exists() and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    assert target.exists(), stderr.decode()[-3000:]
    assert not (killed / "student").exists() and not (killed / "report.md").exists()
    assert (killed / "checkpoints" / "intermediate" / "finished.json").is_file()

    straight = workspace / "straight"
    assert main(["distill", str(workspace / "run.yaml"), "--no-progress"]) == 0
    assert main(["distill", "--resume", str(killed), "--no-progress"]) == 0

    log = (killed / "run.log").read_text(encoding="utf-8")
    assert "resuming the run in" in log
    assert "the teacher was fine-tuned before the interruption: read back" in log
    assert "stage intermediate finished before the interruption: skipped" in log
    assert "resuming from" in log and "checkpoint-0000000" in log
    assert log.count("fine-tuning the teacher") == 1 and log.count("stage prediction: loss =") == 2

    expected, resumed = (load_file(str(run / "student" / "model.safetensors")) for run in (straight, killed))
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert_close(resumed[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    teacher_expected, teacher_resumed = (
        load_file(str(run / "teacher" / "model.safetensors")) for run in (straight, killed)
    )
    for name in teacher_expected:
        assert torch.equal(teacher_resumed[name], teacher_expected[name]), name

    metrics = [json.loads((run / "metrics.json").read_text()) for run in (straight, killed)]
    assert [v["accuracy"] for v in metrics[1]["validation"]] == pytest.approx(
        [v["accuracy"] for v in metrics[0]["validation"]]
    )
    assert [s["steps"] for s in metrics[1]["training"]["stages"]] == [6, 12]
    assert metrics[1]["training"]["best_student"]["step"] == metrics[0]["training"]["best_student"]["step"]
    # a finished run has nothing to resume
    code = main(["distill", "--resume", str(killed), "--no-progress"])
    assert code == 2

    # killed between the stages: the second starts from its own seed, as in the uninterrupted run
    between = tmp_path / "between"
    between.mkdir()
    for name in (".kdistill-run.json", "config.yaml", "run.log", "teacher", "checkpoints/intermediate"):
        (between / name).parent.mkdir(parents=True, exist_ok=True)
        copy = shutil.copytree if (straight / name).is_dir() else shutil.copy
        copy(straight / name, between / name)
    assert main(["distill", "--resume", str(between), "--no-progress"]) == 0
    for name, tensor in load_file(str(between / "student" / "model.safetensors")).items():
        assert_close(tensor, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def _stopped_run(workspace: Path, folder: Path) -> Path:
    """A run folder as a run leaves it when stopped before its first checkpoint: config and log."""
    from kdistill.app.config_loading import dump_config, load_config
    from kdistill.app.run_folder import RunFolder

    run_folder = RunFolder(folder)
    with run_folder.claimed("new"):
        run_folder.write_text(
            "config.yaml", dump_config(load_config(workspace / "run.yaml", [f"output.dir={folder}"]))
        )
        run_folder.write_text("run.log", "stopped\n")
    return folder


def _one_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_resume_refuses_what_it_cannot_do_in_one_line(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _stopped_run(workspace, tmp_path / "run")
    line = _one_line(["distill", "--resume", str(tmp_path / "nothing"), "--no-progress"], capsys)
    assert f"'{tmp_path / 'nothing'}' holds no run to resume (no config.yaml written by kdistill)" in line
    # CONFIG and overrides may be given, but must come to the run's own config
    line = _one_line(["distill", str(workspace / "run.yaml"), "--resume", str(run), "training.lr=0.5"], capsys)
    assert "differs from the run's" in line and "training.lr (0.001 in the run, 0.5 here)" in line
    line = _one_line(["distill", "--resume", str(run), "training.epochs=9"], capsys)
    assert "training.epochs (2 in the run, 9 here)" in line and "leave out CONFIG and the overrides" in line
    line = _one_line(["distill", "--no-progress"], capsys)
    assert "give the run's CONFIG.yaml, or --resume RUN_DIR" in line
    (run / "report.md").write_text("done\n", encoding="utf-8")
    line = _one_line(["distill", "--resume", str(run)], capsys)
    assert "has finished (it wrote report.md): there is nothing to resume" in line
    with pytest.raises(SystemExit) as exited:
        main(["distill", str(workspace / "run.yaml"), "--resume", str(run), "--overwrite"])
    assert exited.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_resume_in_python_is_a_value_error_with_the_same_text(workspace: Path, tmp_path: Path) -> None:
    from kdistill.app.config_loading import load_config
    from kdistill.app.run import resume_config, run_distill
    from kdistill.errors import RunFolderError

    run = _stopped_run(workspace, tmp_path / "run")
    config = load_config(workspace / "run.yaml", [f"output.dir={run}"])
    with pytest.raises(ValueError, match="already holds a run: add --overwrite") as error:
        run_distill(config, progress=False, console_log=False)
    assert isinstance(error.value, RunFolderError)
    assert resume_config(run).output.dir == str(run)
    with pytest.raises(RunFolderError, match=r"training.batch_size \(8 in the run, 4 here\)"):
        resume_config(run, workspace / "run.yaml", ["training.batch_size=4"])


def test_a_resume_whose_data_or_teacher_changed_is_refused_naming_the_file(tmp_path: Path) -> None:
    from cli_helpers import one_line, succeeds, write_run_config
    from text_fixtures import save_classifier

    save_classifier(tmp_path / "teacher", num_layers=2, hidden=32, heads=4, seed=1, id2label={0: "neg", 1: "pos"})
    train = write_csv(tmp_path / "train.csv", sentences(480, seed=0, labels=("neg", "pos")))
    write_csv(tmp_path / "test.csv", sentences(16, seed=1, labels=("neg", "pos")))
    run = tmp_path / "run"
    config = write_run_config(tmp_path, output={"dir": str(run)}, training={"max_steps": 2, "batch_size": 8})
    succeeds(["distill", str(config), "--no-progress"])
    (run / "report.md").unlink()  # as a run killed before its report leaves the folder
    marker = json.loads((run / ".kdistill-run.json").read_text(encoding="utf-8"))
    assert {"data.train", "data.test", "teacher.path"} <= set(marker["inputs"])
    kept = train.read_bytes()
    # edited in place: 480 rows -> 100, labels flipped
    flipped = [
        (text, "pos" if label == "neg" else "neg") for text, label in sentences(100, seed=0, labels=("neg", "pos"))
    ]
    write_csv(train, flipped)
    log = (run / "run.log").read_text(encoding="utf-8")
    line = one_line(["distill", "--resume", str(run), "--no-progress"])
    assert f"cannot resume '{run}': data.train '{train}' changed since the run started (" in line, line
    assert "bytes then," in line and "add --allow-changed-data to go on knowingly" in line, line
    assert (run / "run.log").read_text(encoding="utf-8") == log and not (run / "report.md").exists()
    # the teacher too: a file added to its folder
    train.write_bytes(kept)
    (tmp_path / "teacher" / "notes.txt").write_text("retrained\n", encoding="utf-8")
    line = one_line(["distill", "--resume", str(run), "--no-progress"])
    assert f"teacher.path '{tmp_path / 'teacher' / 'notes.txt'}' is new since the run started" in line, line
    # knowingly: the run goes on, and the log says with what
    write_csv(train, flipped)
    line = one_line(["distill", str(config), "--allow-changed-data", "--no-progress", "--overwrite"])
    assert "--allow-changed-data goes with --resume RUN_DIR" in line, line
    succeeds(["distill", "--resume", str(run), "--allow-changed-data", "--no-progress"])
    log = (run / "run.log").read_text(encoding="utf-8")
    warning = next(line for line in log.splitlines() if "going on with changed inputs (--allow-changed-data)" in line)
    assert f"data.train '{train}' changed since the run started" in warning and "notes.txt' is new" in warning
    assert (run / "report.md").is_file()
    recorded = json.loads((run / ".kdistill-run.json").read_text(encoding="utf-8"))["inputs"]
    assert recorded["data.train"]["bytes"] == train.stat().st_size  # the next resume compares with these
