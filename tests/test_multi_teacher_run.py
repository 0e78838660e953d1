"""Whole runs of several teachers (``teachers:``) from the command line: ``kdistill eval`` of such a
run measures every teacher, the student's agreement with each and their combination; every bad
input of several teachers is one line, exit status 2, with nothing written; a resumed run keeps
the teacher set it started with."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_helpers import one_line, succeeds, write_run_config
from text_fixtures import save_classifier, sentences, write_csv

from kdistill.app.cli import main

PREFIX = "kdistill distill: error: "
LABELS = {0: "neg", 1: "pos"}


def _teachers_config(root: Path, **sections: Any) -> Path:
    """A run distilling teachers ``a`` and ``b`` (weight 3) of ``root`` into a 1-layer student."""
    teachers = {"a": {"path": str(root / "a")}, "b": {"path": str(root / "b"), "weight": 3}}
    return write_run_config(root, teacher=None, teachers=sections.pop("teachers", teachers), **sections)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("teachers")
    save_classifier(root / "a", seed=1, id2label=LABELS)
    save_classifier(root / "b", seed=2, id2label=LABELS)
    save_classifier(root / "three", seed=3, num_labels=3)
    save_classifier(root / "swapped", seed=4, id2label={0: "pos", 1: "neg"})
    save_classifier(root / "short", seed=5, id2label=LABELS, positions=8)
    rows = sentences(48, seed=0, labels=("neg", "pos"))
    write_csv(root / "train.csv", rows)
    write_csv(root / "test.csv", sentences(16, seed=1, labels=("neg", "pos")))
    routed = [(text, label, "c" if i == 5 else "a") for i, (text, label) in enumerate(rows)]
    write_csv(root / "routed_unknown.csv", routed, header=("text", "label", "who"))  # type: ignore[arg-type]
    only_a = [(text, label, "a") for text, label in rows]
    write_csv(root / "routed_only_a.csv", only_a, header=("text", "label", "who"))  # type: ignore[arg-type]
    _teachers_config(root)
    return root


def _stdout(args: list[str]) -> str:
    """Run ``kdistill ARGS`` in-process: it must exit 0; its stdout."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    assert code == 0, err.getvalue()
    return out.getvalue()


# ---------------------------------------------------------------------------
# kdistill eval RUN
# ---------------------------------------------------------------------------


def test_eval_of_a_run_of_two_teachers_measures_each_teacher_and_the_combination(
    workspace: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    # b is fine-tuned: eval must read its copy in teachers/b/, a from where the config says
    teachers = {
        "a": {"path": str(workspace / "a")},
        "b": {"path": str(workspace / "b"), "weight": 3, "finetune": {"epochs": 1, "lr": 1.0e-2}},
    }
    config = _teachers_config(workspace, name="eval.yaml", teachers=teachers, output={"dir": str(run)})
    succeeds(["distill", str(config), "--no-progress"])
    assert (run / "teachers" / "b" / "config.json").is_file()
    trained = json.loads((run / "metrics.json").read_text(encoding="utf-8"))

    out = _stdout(["eval", str(run), "--no-progress"])
    measured = json.loads((run / "metrics.json").read_text(encoding="utf-8"))["eval"]
    assert measured["data"]["file"] == str(workspace / "test.csv") and measured["data"]["examples"] == 16
    # the run measured the same teachers on the same (test) split: eval must find the same numbers
    assert set(measured["teachers"]) == {"a", "b"}
    for name in ("a", "b"):
        found, expected = measured["teachers"][name], trained["teachers"][name]
        for key in ("accuracy", "macro_f1", "weight", "student_agreement"):
            assert found[key] == pytest.approx(expected[key]), (name, key)
    assert measured["teachers"]["a"]["weight"] == pytest.approx(0.25)
    assert measured["teachers"]["a"]["location"] == str(workspace / "a")
    assert measured["teachers"]["b"]["location"] == str(run / "teachers" / "b")
    assert measured["combined"]["rule"] == "mixture of a (0.25), b (0.75)" == trained["combined"]["rule"]
    for key in ("accuracy", "agreement"):
        assert measured["combined"][key] == pytest.approx(trained["combined"][key]), key
    # the usual table (the teacher the student was built from), then the report's lines on the teachers
    assert measured["teacher_model"] == str(workspace / "a")
    assert measured["teacher"]["accuracy"] == pytest.approx(measured["teachers"]["a"]["accuracy"])
    table = out.index("model    accuracy")
    lines = out.splitlines()
    assert table < out.index("## The teachers") < out.index("written to")
    assert f"({workspace / 'a'})." in out
    a, b = (measured["teachers"][name] for name in ("a", "b"))
    assert f"| a | 0.25 | {a['accuracy']:.4f} | {a['student_agreement']:.4f} |" in lines
    assert f"| b | 0.75 | {b['accuracy']:.4f} | {b['student_agreement']:.4f} |" in lines
    combined = measured["combined"]
    assert f"| combined | 1 | {combined['accuracy']:.4f} | {combined['agreement']:.4f} |" in lines
    # --teacher names the one teacher to compare with, instead of the run's
    other = tmp_path / "other.json"
    out = _stdout(["eval", str(run), "--teacher", str(workspace / "b"), "--output", str(other), "--no-progress"])
    alone = json.loads(other.read_text(encoding="utf-8"))["eval"]
    assert alone["teacher_model"] == str(workspace / "b") and "teachers" not in alone and "## The teachers" not in out


def test_eval_of_a_run_of_one_teacher_has_no_teachers_section(workspace: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = write_run_config(
        workspace, name="one.yaml", teacher={"path": str(workspace / "a")}, output={"dir": str(run)}
    )
    succeeds(["distill", str(config), "--no-progress", "training.max_steps=1"])
    out = _stdout(["eval", str(run), "--no-progress"])
    measured = json.loads((run / "metrics.json").read_text(encoding="utf-8"))["eval"]
    assert "teachers" not in measured and "combined" not in measured
    assert measured["teacher_model"] == str(workspace / "a") and "## The teachers" not in out


# ---------------------------------------------------------------------------
# bad input: one line, exit 2, nothing written
# ---------------------------------------------------------------------------

TERMS = ["objective.preset=null", "objective.temperature=null", "objective.alpha=null"]
ROUTE = ["objective.teachers.combine=route", "data.teacher_column=who"]

CASES = {
    "label-count": (
        ["teachers.b.path={ws}/three"],
        "teachers.b: the teacher predicts 3 classes but the training data has 2 labels (neg, pos); give a teacher "
        "trained for these labels, or teachers.b.num_labels for a new head",
    ),
    "label-names": (
        ["teachers.b.path={ws}/swapped"],
        "teachers a and b name their classes differently ({0: neg, 1: pos} against {0: pos, 1: neg}): every "
        "teacher must give the same labels in the same logit order",
    ),
    "negative-weight": (
        ["teachers.b.weight=-1"],
        "teachers.b.weight: Input should be greater than or equal to 0, got -1",
    ),
    "zero-weights": (
        ["teachers.a.weight=0", "teachers.b.weight=0"],
        "config: teachers: give at least one teacher a weight > 0",
    ),
    "nan-weight": (["teachers.b.weight=.nan"], "teachers.b.weight: Input should be a finite number, got nan"),
    "inf-weight": (["teachers.b.weight=.inf"], "teachers.b.weight: Input should be a finite number, got inf"),
    "teacher-and-teachers": (
        ["teacher.path={ws}/a"],
        "config: give either teacher: (one) or teachers: (several, by name), not both",
    ),
    "route-column-missing": (
        ROUTE,
        "{ws}/train.csv has no column 'who' (data.teacher_column): every training example must name its teacher",
    ),
    "route-unknown-teacher": (
        [*ROUTE, "data.train={ws}/routed_unknown.csv"],
        "data.train (who): 1 training example names teacher 'c', but the teachers are a, b: fix the column, or "
        "add that teacher",
    ),
    "term-unknown-teacher": (
        [*TERMS, "objective.terms.kd.type=kd", "objective.terms.kd.teacher=c"],
        "config: objective.terms.kd.teacher is 'c', but the teachers are a, b",
    ),
    "intermediate-without-teacher": (
        [*TERMS, "objective.terms.kd.type=kd", "objective.terms.h.type=hidden_mse"],
        "config: objective.terms.h (hidden_mse) compares intermediate features, whose projections belong to one "
        "teacher: name it with teacher: <one of a, b>",
    ),
    "unread-teacher": (
        [*TERMS, "objective.terms.ce.type=ce", "objective.terms.kd.type=kd", "objective.terms.kd.teacher=a"],
        "config: no term reads teacher 'b': give a term teacher: b, add a logit-level term that reads the combined "
        "teachers, or remove the teacher",
    ),
    "same-folder-twice": (
        ["teachers.b.path={ws}/a"],
        "config: teachers a and b are the same model (folder {ws}/a): give each teacher once, or a higher weight "
        "instead",
    ),
    "reserved-name": (
        ["teachers.student.path={ws}/b"],
        "config: teachers: 'student' cannot name a teacher (letters, digits, _ . -, at most 64, not teacher, student, "
        "combined, teachers)",
    ),
    "short-positions": (
        ["teachers.b.path={ws}/short"],
        "data.max_length 16 is more than the teacher b's 8 token positions: it would fail on the first text that "
        "long; set data.max_length to 8 or less",
    ),
    "tinybert": (
        ["objective.preset=tinybert", "objective.temperature=null", "objective.alpha=null"],
        "config: preset tinybert distils one teacher's layers: with teachers: use preset hinton, or terms whose "
        "intermediate terms name their teacher (teacher: <name>)",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_teachers_are_one_line_exit_2_and_nothing_written(workspace: Path, case: str) -> None:
    from kdistill.app.config_loading import load_config
    from kdistill.app.run import prepare_run

    overrides, expected = CASES[case]
    overrides = [item.replace("{ws}", str(workspace)) for item in overrides]
    expected = expected.replace("{ws}", str(workspace))
    line = one_line(["distill", str(workspace / "run.yaml"), "--no-progress", *overrides])
    assert line == PREFIX + expected
    assert not (workspace / "never").exists()
    with pytest.raises(ValueError) as error:
        prepare_run(load_config(workspace / "run.yaml", overrides), progress=False)
    assert str(error.value) == line.removeprefix(PREFIX)


def test_a_teacher_no_example_routes_to_is_a_warning_in_run_log(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    args = [
        "distill",
        str(workspace / "run.yaml"),
        "--no-progress",
        *ROUTE,
        f"data.train={workspace / 'routed_only_a.csv'}",
        f"output.dir={run}",
    ]
    warning = "combine: route: no training example names teacher b, so it teaches nothing"
    assert main([*args, "--check"]) == 0
    assert f"warning: {warning}" in capsys.readouterr().out.splitlines()
    assert main(args) == 0
    log = (run / "run.log").read_text(encoding="utf-8")
    assert [line.split(" WARNING kdistill.run: ")[-1] for line in log.splitlines() if warning in line] == [warning]
    assert capsys.readouterr().err.count(warning) == 1  # on the console once, as the log shows it
    assert (run / "report.md").is_file()
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["combined"]["rule"].startswith("route")
    assert math.isfinite(metrics["training"]["stages"][0]["final"]["kd"])


# ---------------------------------------------------------------------------
# resume: the teacher set the run started with
# ---------------------------------------------------------------------------


def test_resume_refuses_a_changed_teacher_set(workspace: Path, tmp_path: Path) -> None:
    for name, seed in (("a", 1), ("b", 2), ("c", 5)):
        save_classifier(tmp_path / name, seed=seed, id2label=LABELS)
    for split in ("train.csv", "test.csv"):
        (tmp_path / split).write_bytes((workspace / split).read_bytes())
    run = tmp_path / "run"
    sections = {
        "output": {"dir": str(run), "save_checkpoints": True},
        "training": {"epochs": 1, "batch_size": 8, "lr": 1.0e-3, "max_steps": 2},
    }
    config = _teachers_config(tmp_path, **sections)
    succeeds(["distill", str(config), "--no-progress"])
    # as a run killed before its end leaves its folder: no report, its stage not finished
    (run / "report.md").unlink()
    (run / "checkpoints" / "distill" / "finished.json").unlink()
    log = (run / "run.log").read_text(encoding="utf-8")

    weights = tmp_path / "b" / "model.safetensors"
    kept = weights.read_bytes()
    weights.write_bytes(kept[:-4] + bytes(4))  # retrained in place: same size, other bytes
    line = one_line(["distill", "--resume", str(run), "--no-progress"])
    assert line.startswith(f"{PREFIX}cannot resume '{run}': teachers.b.path '{weights}' changed since the run started")
    assert "(the same size, other content)" in line and "add --allow-changed-data to go on knowingly" in line, line
    weights.write_bytes(kept)

    differs = f"{PREFIX}the config given differs from the run's {run / 'config.yaml'} at"
    keeps = "a resumed run keeps the config it started with; leave out CONFIG and the overrides"
    line = one_line(["distill", "--resume", str(run), "--no-progress", f"teachers.c.path={tmp_path / 'c'}"])
    assert line == f"{differs} teachers.c (not in the run, given here): {keeps}"
    fewer = _teachers_config(tmp_path, name="fewer.yaml", teachers={"a": {"path": str(tmp_path / "a")}}, **sections)
    line = one_line(["distill", str(fewer), "--resume", str(run), "--no-progress"])
    assert line == f"{differs} teachers.b (in the run, not given here): {keeps}"
    assert (run / "run.log").read_text(encoding="utf-8") == log and not (run / "report.md").exists()

    succeeds(["distill", "--resume", str(run), "--no-progress"])
    assert "resuming from" in (run / "run.log").read_text(encoding="utf-8")
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert (run / "report.md").is_file() and set(metrics["teachers"]) == {"a", "b"}
    recorded = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["teachers"]
    assert set(recorded) == {"a", "b"}
