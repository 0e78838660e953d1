"""The kdistill command end to end: distill a tiny model from a CSV, eval it, inspect it, and
refuse each bad input with exit status 2 and one line, leaving earlier runs untouched."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from text_fixtures import save_classifier, sentences, write_csv

from kdistill.app.cli import main

RUN_FILES = ("config.yaml", "run.log", "metrics.json", "report.md", "training_curves.png")


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A teacher folder, labelled CSV files and a config, in a temporary folder."""
    root = tmp_path_factory.mktemp("cli")
    save_classifier(root / "teacher", num_layers=4, hidden=32, heads=4, seed=1, id2label={0: "neg", 1: "pos"})
    write_csv(root / "train.csv", sentences(96, seed=0, labels=("neg", "pos")))
    write_csv(root / "test.csv", sentences(40, seed=1, labels=("neg", "pos")))
    write_csv(root / "latin.csv", [("très bon film", "pos"), ("ennuyeux", "neg")] * 10, encoding="latin-1")
    config = {
        "teacher": {"path": str(root / "teacher")},
        "student": {"from_teacher": {"num_layers": 2}},
        "data": {"train": str(root / "train.csv"), "test": str(root / "test.csv"), "max_length": 16},
        "objective": {"preset": "hinton", "temperature": 2.0, "alpha": 0.7},
        "training": {"epochs": 2, "batch_size": 16, "lr": 1.0e-3},
        "output": {"dir": str(root / "runs" / "first")},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def finished_run(workspace: Path) -> tuple[Path, str]:
    """One ``kdistill distill`` run on the workspace (shared by the tests that read it)."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["distill", str(workspace / "run.yaml"), "--no-progress"])
    assert code == 0
    return workspace / "runs" / "first", out.getvalue()


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_distill_writes_every_file_of_the_run_folder(finished_run: tuple[Path, str]) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder, printed = finished_run
    for name in RUN_FILES:
        assert (folder / name).is_file() and (folder / name).stat().st_size > 0, name
    assert "teacher" in printed and "student" in printed and str(folder) in printed

    # the resolved config reads back and holds the defaults
    resolved = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    assert resolved["training"]["epochs"] == 2 and resolved["training"]["warmup_ratio"] == 0.0

    # the student, with its tokenizer and labels, loads with plain transformers
    student = AutoModelForSequenceClassification.from_pretrained(folder / "student")
    tokenizer = AutoTokenizer.from_pretrained(folder / "student")
    assert student.config.num_hidden_layers == 2
    assert student.config.id2label == {0: "neg", 1: "pos"} and student.config.label2id == {"neg": 0, "pos": 1}
    assert student(**tokenizer(["the film was good"], return_tensors="pt")).logits.shape == (1, 2)

    # the loop's checkpoints of the stage (6 steps an epoch), its end marker, and the best student
    checkpoints = folder / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best-student", "distill"]
    assert sorted(p.name for p in (checkpoints / "distill").iterdir()) == [
        "checkpoint-00000006",
        "checkpoint-00000012",
        "finished.json",
    ]
    state = json.loads((checkpoints / "best-student" / "trainer_state.json").read_text())
    assert state["stage"] == "distill" and state["step"] in (6, 12) and 0.0 <= state["accuracy"] <= 1.0
    assert (
        AutoModelForSequenceClassification.from_pretrained(checkpoints / "best-student").config.num_hidden_layers == 2
    )

    metrics = json.loads((folder / "metrics.json").read_text())
    for model in ("teacher", "student"):
        for key in ("accuracy", "macro_f1", "parameters", "size_bytes", "latency_ms", "throughput", "speedup"):
            assert key in metrics[model], (model, key)
    assert 0.0 <= metrics["student"]["agreement"] <= 1.0
    assert metrics["student"]["parameters"] < metrics["teacher"]["parameters"]
    assert metrics["data"] == {
        "train": 86,
        "validation": 10,
        "test": 40,
        "labels": ["neg", "pos"],
        "evaluated_on": "test",
    }
    assert [round(v["step"]) for v in metrics["validation"]] == [6, 12]
    assert [v["epoch"] for v in metrics["validation"]] == [1, 2]  # counted from 1: epoch 2 of a 2-epoch run
    assert set(metrics["training"]["stages"][0]["final"]) == {"loss", "kd", "ce"}

    assert (folder / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (folder / "report.md").read_text()
    assert "| teacher |" in report and "| student |" in report and "training_curves.png" in report
    # a causal LM's measurement of the student as the teacher's draft model is not a classifier's
    assert "draft" not in metrics["student"] and "draft model" not in report and "evaluation" not in resolved
    log = (folder / "run.log").read_text()
    assert "stage distill: loss = 0.7·kd + 0.3·ce" in log and "run finished" in log


def test_eval_on_the_run_measures_and_keeps_the_run_metrics(
    finished_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = finished_run
    before = json.loads((folder / "metrics.json").read_text())
    code, out, err = run_cli(["eval", str(folder), "--no-progress"], capsys)
    assert code == 0, err
    assert "accuracy" in out and "speed-up" in out and "teacher" in out
    after = json.loads((folder / "metrics.json").read_text())
    assert {k: v for k, v in after.items() if k != "eval"} == before
    evaluated = after["eval"]
    assert evaluated["data"]["examples"] == 40 and evaluated["data"]["file"].endswith("test.csv")
    student = evaluated["student"]
    # the same student on the same test file: the run's accuracy again
    assert student["accuracy"] == pytest.approx(before["student"]["accuracy"])
    for key in ("macro_f1", "agreement", "parameters", "size_bytes", "latency_ms", "throughput", "speedup"):
        assert key in student
    assert student["size_bytes"] == (folder / "student" / "model.safetensors").stat().st_size
    # the run and eval time the same batch shape (32 examples of the same length) in the same way
    shape = ("batch_size", "sequence_length", "threads", "device")
    assert {key: evaluated["speed"][key] for key in shape} == {key: before["speed"][key] for key in shape}
    assert before["speed"]["batch_size"] == 32 and 1 < before["speed"]["sequence_length"] <= 16
    for record in (before, evaluated):
        assert {"rounds", "load_average", "cpu_count", "warning"} <= set(record["speed"])
        assert {"latency_spread", "speedup_spread"} <= set(record["student"])
    assert "alternating rounds" in out and "(1 thread)" in out and "IQR" in out


def test_eval_on_a_model_folder_with_a_teacher(
    finished_run: tuple[Path, str], workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = finished_run
    output = tmp_path / "m.json"
    code, out, err = run_cli(
        [
            "eval",
            str(folder / "student"),
            "--teacher",
            str(workspace / "teacher"),
            "--data",
            str(workspace / "train.csv"),
            "--batch-size",
            "8",
            "--output",
            str(output),
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    written = json.loads(output.read_text())["eval"]
    assert written["data"]["examples"] == 96 and written["data"]["batch_size"] == 8
    assert 0 <= written["student"]["agreement"] <= 1 and written["teacher"]["speedup"] == 1.0


def test_inspect_shows_both_models_and_the_layer_map(
    finished_run: tuple[Path, str], workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = finished_run
    code, out, _ = run_cli(["inspect", str(workspace / "teacher"), str(folder / "student")], capsys)
    assert code == 0
    assert "BertForSequenceClassification" in out and "layer map (uniform)" in out
    assert "bert.encoder.layer.1  <-   4  bert.encoder.layer.3" in out
    code, out, _ = run_cli(["inspect", str(workspace / "teacher"), "--num-layers", "1"], capsys)
    assert code == 0 and "proposed student (make_student num_layers=1)" in out and "smaller" in out


def test_check_validates_without_training(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        [
            "distill",
            str(workspace / "run.yaml"),
            "--check",
            "--no-progress",
            f"output.dir={workspace / 'runs' / 'never'}",
        ],
        capsys,
    )
    assert code == 0, err
    assert out.startswith("config OK: train 86, validation 10, test 40; labels neg, pos")
    assert out.splitlines()[1:] == ["stage distill: loss = 0.7·kd + 0.3·ce, 2 epoch(s), lr 0.001"]
    assert not (workspace / "runs" / "never").exists()


def test_check_lists_the_teachers_fine_tuning_before_the_distillation(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["distill", str(workspace / "run.yaml"), "--check", "--no-progress", f"output.dir={workspace / 'never'}"]
    code, out, err = run_cli([*args, "teacher.finetune.epochs=2", "teacher.finetune.max_steps=5"], capsys)
    assert code == 0, err
    assert out.splitlines()[1:] == [
        "stage teacher fine-tuning: loss = 1·ce, 2 epoch(s), lr 5e-05, at most 5 steps",
        "stage distill: loss = 0.7·kd + 0.3·ce, 2 epoch(s), lr 0.001",
    ]


BAD_INPUTS = [
    (["training.epoch=1"], "training.epoch: unknown key; did you mean 'epochs'?"),
    (["training.epochs=many"], "training.epochs: Input should be a valid integer"),
    (["training.lr=0"], "training.lr: Input should be greater than 0"),
    (["data.train=absent.csv"], "data file 'absent.csv' not found"),
    (["data.label_column=sentiment"], "has no column 'sentiment' (data.label_column)"),
    (["data.train=latin.csv"], "is not valid utf-8 text (line 2, byte 14): set data.encoding"),
    (["teacher.path=./no/such/teacher"], "teacher './no/such/teacher': no such folder"),
    (["student.from_teacher.num_layers=9"], "student.from_teacher: cannot copy 9 student layers"),
    (
        [
            "objective.preset=null",
            "objective.temperature=null",
            "objective.alpha=null",
            "objective.terms.h.type=hidden_mse",
            "objective.terms.h.layer_map={1: 7}",
        ],
        "objective: teacher layer 7 is out of range: the teacher (BertForSequenceClassification) has layers 0..4",
    ),
]


@pytest.mark.parametrize(("overrides", "expected"), BAD_INPUTS, ids=[b[1][:30] for b in BAD_INPUTS])
def test_bad_inputs_exit_2_with_one_line_and_lose_nothing(
    finished_run: tuple[Path, str],
    workspace: Path,
    overrides: list[str],
    expected: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder, _ = finished_run
    before = snapshot(folder)
    runs_before = sorted(p.name for p in folder.parent.iterdir())
    monkeypatch.chdir(workspace)
    # --overwrite: the earlier run in output.dir would be deleted, but only once the new run is prepared
    code, out, err = run_cli(
        ["distill", str(workspace / "run.yaml"), "--no-progress", "--overwrite", *overrides], capsys
    )
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("kdistill distill: error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in err
    assert snapshot(folder) == before
    assert sorted(p.name for p in folder.parent.iterdir()) == runs_before


def test_a_teacher_with_an_untrained_head_is_refused(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import BertConfig, BertModel

    save_classifier(tmp_path / "base")  # writes the tokenizer; the weights are replaced by a headless encoder
    BertModel(
        BertConfig(vocab_size=35, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
    ).save_pretrained(tmp_path / "base")
    code, _, err = run_cli(
        [
            "distill",
            str(workspace / "run.yaml"),
            "--no-progress",
            f"teacher.path={tmp_path / 'base'}",
            "teacher.num_labels=2",
            f"output.dir={tmp_path / 'run'}",
        ],
        capsys,
    )
    assert code == 2
    assert "has untrained weights" in err and "teacher.finetune" in err


def test_different_tokenizers_are_refused_with_a_way_out(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_classifier(tmp_path / "student", num_layers=1, hidden=16, heads=2, tokenizer_extra=("extra", "tokens"))
    args = [
        "distill",
        str(workspace / "run.yaml"),
        "--no-progress",
        "student.from_teacher=null",
        f"student.path={tmp_path / 'student'}",
        f"output.dir={tmp_path / 'run'}",
    ]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "tokenizers differ (vocabularies of 35 and 37 tokens)" in err
    assert not (tmp_path / "run").exists()
    # allowed for sequence-level terms: each model reads its own tokens
    code, out, err = run_cli(
        args + ["data.allow_different_tokenizers=true", "training.epochs=1", "output.save_checkpoints=false"], capsys
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["student"]["parameters"] < metrics["teacher"]["parameters"]


def test_an_output_folder_that_holds_a_run_is_refused_in_one_line(
    finished_run: tuple[Path, str], workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = finished_run
    before = snapshot(folder)
    runs_before = sorted(p.name for p in folder.parent.iterdir())
    code, _, err = run_cli(["distill", str(workspace / "run.yaml"), "--no-progress", "training.max_steps=2"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0] == (
        f"kdistill distill: error: output.dir {str(folder)!r} already holds a run: add --overwrite to "
        f"start again (its files are deleted) or --resume {folder} to continue it (in Python: "
        "overwrite=True or resume=True)"
    )
    assert snapshot(folder) == before
    assert sorted(p.name for p in folder.parent.iterdir()) == runs_before


def test_overwrite_starts_again_and_deletes_only_the_old_run_once_the_new_one_is_prepared(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "run"
    args = [
        "distill",
        str(workspace / "run.yaml"),
        "--no-progress",
        "training.max_steps=2",
        "training.epochs=1",
        f"output.dir={folder}",
    ]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    (folder / "notes.txt").write_text("mine", encoding="utf-8")
    first = snapshot(folder)
    # a bad input with --overwrite: refused before anything is deleted
    code, _, err = run_cli([*args, "--overwrite", "data.label_column=sentiment"], capsys)
    assert code == 2 and "has no column 'sentiment'" in err
    assert snapshot(folder) == first
    code, _, err = run_cli([*args, "--overwrite", "training.lr=2.0e-3"], capsys)
    assert code == 0, err
    assert yaml.safe_load((folder / "config.yaml").read_text())["training"]["lr"] == 2.0e-3
    assert (folder / "notes.txt").read_text(encoding="utf-8") == "mine"  # not a run file: kept
    log = (folder / "run.log").read_text()
    assert "overwrite: deleted the earlier run's" in log and log.count("run finished") == 1
    # a folder of other files is never a run to overwrite
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("x", encoding="utf-8")
    code, _, err = run_cli([*args[:-1], f"output.dir={other}", "--overwrite"], capsys)
    assert code == 2 and "holds files that are not a kdistill run (data.csv)" in err
    assert sorted(p.name for p in other.iterdir()) == ["data.csv"]


def test_a_failure_during_the_run_keeps_what_was_written(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kdistill.app.run as run_module

    def broken_plot(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(run_module, "plot_curves", broken_plot)
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "home"))
    assert (
        main(
            [
                "distill",
                str(workspace / "run.yaml"),
                "--no-progress",
                "training.epochs=1",
                f"output.dir={tmp_path / 'run'}",
            ]
        )
        == 1
    )  # a bug: exit 1, the traceback in a crash file
    folder = tmp_path / "run"
    for name in (
        "config.yaml",
        "run.log",
        "metrics.json",
        "student/model.safetensors",
        "checkpoints/distill/checkpoint-00000006",
        "checkpoints/distill/finished.json",
    ):
        assert (folder / name).exists(), name
    assert "run stopped: RuntimeError: disk full" in (folder / "run.log").read_text()


def test_every_subcommand_has_help_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("distill", "eval", "inspect", "demo"):
        with pytest.raises(SystemExit) as exited:
            main([command, "--help"])
        assert exited.value.code == 0
        out = capsys.readouterr().out
        assert f"kdistill {command}" in out and "examples:" in out, command


def test_bad_arguments_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["eval", "x", "--batch-size", "0"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "expected a number >= 1" in err


@pytest.mark.slow
def test_the_installed_command_prints_one_line_without_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "teacher: {path: t}\nstudent: {from_teacher: {num_layers: 2}}\ndata: {train: x.csv}\ntraining: {epochs: 0}\n",
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, "-m", "kdistill.app.cli", "distill", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "kdistill distill: error: training.epochs: Input should be greater than or equal to 1, got 0"
    )


@pytest.mark.parametrize(
    ("preset", "stages"), [("tinybert", ["intermediate", "prediction"]), ("minilm", ["relations", "prediction"])]
)
def test_two_stage_presets_run_end_to_end(
    workspace: Path, tmp_path: Path, preset: str, stages: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / preset
    code, _, err = run_cli(
        [
            "distill",
            str(workspace / "run.yaml"),
            "--no-progress",
            f"objective.preset={preset}",
            "objective.temperature=null",
            "objective.alpha=null",
            "student.from_teacher.hidden_size=16",
            "student.from_teacher.num_heads=2",
            "training.max_steps=2",
            "training.epochs=1",
            f"output.dir={folder}",
        ],
        capsys,
    )
    assert code == 0, err
    metrics = json.loads((folder / "metrics.json").read_text())
    assert [stage["name"] for stage in metrics["training"]["stages"]] == stages
    assert all(stage["steps"] == 2 for stage in metrics["training"]["stages"])
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == sorted([*stages, "best-student"])
    for stage in stages:
        assert (folder / "checkpoints" / stage / "finished.json").is_file()
    # the first stage's projections are checkpointed with it, never saved into the student
    first = folder / "checkpoints" / stages[0] / "checkpoint-00000002"
    if preset == "tinybert":
        assert any("proj" in name for name in _weight_names(first / "objective.safetensors"))
    assert not any("proj" in name for name in _weight_names(folder / "student" / "model.safetensors"))


def _weight_names(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys())


def test_eval_and_inspect_refuse_bad_inputs_in_one_line(
    finished_run: tuple[Path, str], workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = finished_run
    cases = [
        (["eval", str(workspace / "no-run")], "no such run or model folder"),
        (
            ["eval", str(folder), "--data", str(workspace / "train.csv"), "--label-column", "gold"],
            "has no column 'gold' (--label-column)",  # the flag the user typed, not the config key
        ),
        (["eval", str(folder), "--data", str(workspace / "latin.csv")], "--encoding"),
        (["eval", str(folder / "student")], "give the data to evaluate on: --data FILE"),
        (["eval", str(folder), "--data", str(workspace / "latin.csv"), "--encoding", "latin-9x"], "encoding"),
        (["inspect", "./no/such/teacher"], "teacher './no/such/teacher': no such folder"),
        (["inspect", str(workspace / "teacher"), "--num-layers", "9"], "cannot propose a student: cannot copy 9"),
    ]
    before = snapshot(folder)
    for args, expected in cases:
        code, _, err = run_cli([*args, *(["--no-progress"] if args[0] == "eval" else [])], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and expected in lines[0], (args, err)
        assert args[0] != "eval" or "data." not in lines[0], err  # eval's messages name its flags
    assert snapshot(folder) == before


def test_an_output_folder_that_cannot_be_made_is_one_line(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")
    code, _, err = run_cli(
        ["distill", str(workspace / "run.yaml"), "--no-progress", f"output.dir={blocker / 'run'}"], capsys
    )
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Not a directory" in lines[0] and str(blocker) in lines[0], err
    assert blocker.read_text(encoding="utf-8") == "not a folder"


def test_distill_launched_as_several_processes_is_refused_before_anything_is_written(
    finished_run: tuple[Path, str],
    workspace: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder, _ = finished_run
    before = snapshot(folder)
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun / accelerate launch set in each process
    code, _, err = run_cli(["distill", str(workspace / "run.yaml"), "--no-progress", "--overwrite"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "runs in one process" in err and "docs/distributed.md" in err, err
    assert snapshot(folder) == before


def test_the_example_files_the_help_names_exist() -> None:
    import re

    from kdistill.app.cli import build_parser

    parser = build_parser()
    texts = [parser.format_help()]
    texts += [
        action.choices[name].format_help() for action in parser._subparsers._group_actions for name in action.choices
    ]
    named = set(re.findall(r"examples/[\w./-]+\.(?:yaml|py)", "\n".join(texts)))
    assert named, "the help shows example files"
    root = Path(__file__).resolve().parents[1]
    assert not [name for name in named if not (root / name).is_file()]


def test_a_teacher_only_run_reports_the_fine_tuning_and_its_own_files(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run without a student (fine-tune a teacher, as examples/quality/teacher.yaml) says so:
    no student row, its fine-tuning steps and loss under Training, teacher/ in the file list."""
    config = yaml.safe_load((workspace / "run.yaml").read_text(encoding="utf-8"))
    config.pop("student"), config.pop("objective")
    config["teacher"]["finetune"] = {"epochs": 1, "lr": 1.0e-3, "batch_size": 32}
    config["output"] = {"dir": str(tmp_path / "teacher-run"), "save_checkpoints": False}
    (tmp_path / "teacher.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    code, out, _ = run_cli(["distill", str(tmp_path / "teacher.yaml"), "--no-progress"], capsys)
    assert code == 0
    run = tmp_path / "teacher-run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert "student" not in metrics and metrics["training"]["stages"] == []
    tuned = metrics["training"]["teacher_finetune"]
    assert (tuned["epochs"], tuned["batch_size"], tuned["steps"]) == (1, 32, 3) and tuned["final"]["ce"] > 0
    assert tuned["seconds"] > 0
    report = (run / "report.md").read_text()
    assert "no student in this run" in report and "distilled into" not in report
    assert "- teacher fine-tuning: 3 steps (1 epoch(s), lr 0.001, batch 32); last epoch: " in report
    assert "- `teacher`: the fine-tuned teacher" in report and "`checkpoints`" not in report
    assert "| student" not in report


def test_eval_reads_a_header_less_csv_and_a_fasttext_file(
    finished_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same 40 test sentences as a header-less CSV (--columns) and as fastText lines
    (--format fasttext) measure what the run's own test file measures."""
    import csv

    folder, _ = finished_run
    rows = sentences(40, seed=1, labels=("neg", "pos"))
    with (tmp_path / "plain.csv").open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows((label, text) for text, label in rows)
    (tmp_path / "test.txt").write_text("".join(f"__label__{label} {text}\n" for text, label in rows))
    accuracy = json.loads((folder / "metrics.json").read_text())["student"]["accuracy"]
    for flags in (
        ["--data", str(tmp_path / "plain.csv"), "--columns", "label,text"],
        ["--data", str(tmp_path / "test.txt"), "--format", "fasttext"],
    ):
        output = tmp_path / f"{flags[-1].replace(',', '-')}.json"
        code, _, err = run_cli(["eval", str(folder), *flags, "--output", str(output), "--no-progress"], capsys)
        assert code == 0, err
        evaluated = json.loads(output.read_text())["eval"]
        assert evaluated["data"]["examples"] == 40
        assert evaluated["student"]["accuracy"] == pytest.approx(accuracy)
