"""docs/multi_teacher.md as written: its configs are valid and run on tiny models, its refusals
are the lines a user gets, and its Python examples run in a fresh process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_helpers import one_line, run_command
from text_fixtures import save_classifier, sentences, write_csv

from kdistill.app.config_loading import dump_config, parse_config
from kdistill.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = ROOT / "docs" / "multi_teacher.md"
#: what `DistillationTrainer` says, on a branch without several teachers, to teacher_model={...}


def _text() -> str:
    return DOCUMENT.read_text(encoding="utf-8")


def _blocks(language: str) -> list[str]:
    blocks = re.findall(rf"```{language}\n(.*?)```", _text(), re.DOTALL)
    assert blocks, f"docs/multi_teacher.md has no {language} example"
    return blocks


def _configs() -> tuple[dict[str, Any], dict[str, Any]]:
    """The page's two configs: the ensemble and the routed experts."""
    ensemble, routed = (yaml.safe_load(block) for block in _blocks("yaml"))
    return ensemble, routed


def test_the_configs_are_valid_and_read_back_to_themselves():
    ensemble, routed = _configs()
    for raw in (ensemble, routed):
        config = parse_config(raw)
        assert config.several_teachers
        assert parse_config(yaml.safe_load(dump_config(config))).model_dump() == config.model_dump()
    config = parse_config(ensemble)
    assert list(config.teachers) == ["base", "large"] and config.primary_teacher == "base"
    assert [config.teachers[name].weight for name in ("base", "large")] == [1.0, 3.0]
    assert all(section.cache is not None for section in config.teachers.values())
    settings = config.objective.teachers
    assert (settings.combine, settings.temperature, settings.offload) == ("confidence", 0.5, False)
    assert config.objective.terms["hidden"].teacher == "large"
    route = parse_config(routed)
    assert route.objective.teachers.combine == "route" and route.data.teacher_column == "domain"


def _table_lines(title: str) -> list[tuple[str, str]]:
    """The rows ``| what | `line` |`` of the table after ``title``."""
    section = _text().split(title, 1)[1].split("\n\n", 2)[1]
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| ") and "`" in line]
    return [(what.strip("| "), line.strip(" |`")) for what, line in rows]


def _mutations() -> dict[str, dict[str, Any]]:
    """The page's ensemble config, broken the way each row of its table of bad inputs says."""
    ensemble, _ = _configs()

    def changed(edit) -> dict[str, Any]:
        raw = yaml.safe_load(yaml.safe_dump(ensemble, sort_keys=False))
        edit(raw)
        return raw

    return {
        "together": changed(lambda raw: raw.update(teacher={"path": "models/one"})),
        "intermediate": changed(lambda raw: raw["objective"]["terms"]["hidden"].pop("teacher")),
        "does not exist": changed(lambda raw: raw["objective"]["terms"]["hidden"].update(teacher="huge")),
        "no term reads": changed(
            lambda raw: raw["objective"].update(terms={"hidden": {"type": "hidden_mse", "teacher": "base"}})
        ),
        "route": changed(lambda raw: raw["objective"]["teachers"].update(combine="route", temperature=None)),
        "temperature": changed(lambda raw: raw["objective"]["teachers"].update(combine="mixture")),
        "weight 0": changed(lambda raw: [section.update(weight=0) for section in raw["teachers"].values()]),
    }


def _python_mistakes() -> dict[str, Any]:
    """Each mistake of the page's Python table, as a call that makes it."""
    import torch

    from kdistill import Features, HardCE, LogitKD, Objective
    from kdistill.losses.combine import TeacherMix
    from kdistill.train.teacher import TeacherSet

    def terms() -> dict[str, Any]:
        return {"kd": LogitKD(temperature=2.0), "ce": HardCE()}

    def linear() -> torch.nn.Module:
        return torch.nn.Linear(2, 2)

    def routed() -> None:
        objective = Objective(terms(), teachers=TeacherMix.of(["a", "b"], combine="route"))
        logits = torch.zeros(2, 3)
        teachers = {"a": Features(logits=logits), "b": Features(logits=logits)}
        objective(Features(logits=logits), teachers, torch.zeros(2, dtype=torch.long), route=torch.tensor([0, 2]))

    return {
        "of the mix that": lambda: Objective({"ce": HardCE()}, teachers=TeacherMix.of(["a", "b"])),
        "lacks": lambda: Objective(terms(), teachers=TeacherMix.of(["a", "b"]), teacher_of={"kd": "c"}),
        "a model given": lambda: TeacherSet(
            {"a": linear(), "b": linear(), "c": linear()}, None, Objective(terms(), teachers=TeacherMix.of(["a", "b"]))
        ),
        "neither": lambda: TeacherSet({"a": linear()}, None, Objective(terms(), teachers=TeacherMix.of(["a", "b"]))),
        "route index": routed,
        "negative": lambda: TeacherMix.of({"a": 1, "b": -1}),
    }


def test_the_python_mistakes_are_the_lines_of_the_table():
    rows = _table_lines("**In Python**")
    mistakes = _python_mistakes()
    assert len(rows) == len(mistakes), rows
    for what, line in rows:
        (make,) = [make for key, make in mistakes.items() if key in what]
        with pytest.raises(ValueError) as raised:
            make()
        assert str(raised.value) == line, what


def test_the_table_of_bad_inputs_gives_the_lines_the_config_refuses_with():
    rows = [(what, line) for what, line in _table_lines("**Bad inputs**") if "(...)" not in line]
    mutations = _mutations()
    assert len(rows) == len(mutations), rows
    for what, line in rows:
        (raw,) = [raw for key, raw in mutations.items() if key in what]
        with pytest.raises(ConfigError) as raised:
            parse_config(raw)
        assert line in str(raised.value), (what, str(raised.value))


# ---------------------------------------------------------------------------
# the configs run on tiny models (whole runs: left out of a quick `pytest -m "not slow"`)
# ---------------------------------------------------------------------------


def _tiny_run(raw: dict[str, Any], root: Path, teachers: dict[str, dict[str, Any]], train: Path) -> Path:
    """The page's config on tiny classifiers and a few sentences: the same teachers, terms and
    rule; a written config file."""
    raw = yaml.safe_load(yaml.safe_dump(raw, sort_keys=False))
    for name, section in raw["teachers"].items():
        section["path"] = str(save_classifier(root / "models" / name, **teachers[name]))
        if section.get("cache"):
            section["cache"] = str(root / "caches" / name)
    raw["student"]["from_teacher"]["num_layers"] = 1
    raw["data"].update(train=str(train), validation=None, test=str(write_csv(root / "test.csv", sentences(16, 9))))
    raw["data"]["max_length"] = 16
    raw["training"] = {"epochs": 1, "batch_size": 8, "lr": 1.0e-3}
    raw["output"] = {"dir": str(root / "run")}
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def _distilled(config: Path) -> tuple[dict[str, Any], str, str]:
    code, err = run_command(["distill", str(config), "--no-progress"])
    assert code == 0, err
    run = yaml.safe_load(config.read_text(encoding="utf-8"))["output"]["dir"]
    metrics = json.loads((Path(run) / "metrics.json").read_text(encoding="utf-8"))
    return metrics, (Path(run) / "report.md").read_text(encoding="utf-8"), (Path(run) / "run.log").read_text()


@pytest.mark.slow
def test_the_ensemble_config_runs_and_records_what_the_page_says(tmp_path, capsys):
    ensemble, _ = _configs()
    teachers = {"base": {"num_layers": 2, "hidden": 32, "seed": 1}, "large": {"num_layers": 3, "hidden": 48}}
    config = _tiny_run(ensemble, tmp_path, teachers, write_csv(tmp_path / "train.csv", sentences(48)))
    # --check prints the combination as the page shows it
    from kdistill.app.cli import main

    assert main(["distill", str(config), "--check", "--no-progress"]) == 0
    shown = re.search(r"`teachers: (.*?)`", _text()).group(1)
    assert f"teachers: {shown}" in capsys.readouterr().out
    metrics, report, log = _distilled(config)
    assert set(metrics["teachers"]) == {"base", "large"}
    assert [metrics["teachers"][name]["weight"] for name in ("base", "large")] == [0.25, 0.75]
    assert {"accuracy", "student_agreement", "location", "validation"} <= set(metrics["teachers"]["large"])
    assert metrics["combined"]["rule"] == shown and {"accuracy", "agreement"} <= set(metrics["combined"])
    assert set(metrics["teacher_set"]["teachers"]) == {"base", "large"}
    assert all(found["fingerprint"] for found in metrics["teacher_set"]["teachers"].values())
    assert "## The teachers" in report and "| combined | 1 |" in report
    # each teacher read from its own cache; the hidden-state term's teacher too
    for name in ("base", "large"):
        assert re.search(rf"stage distill \({name}\): teacher outputs from the cache at .*caches/{name}", log), log


@pytest.mark.slow
def test_the_routed_config_runs_each_example_by_its_teacher(tmp_path):
    _, routed = _configs()
    rows = [(text, label, "movies" if "film" in text or "movie" in text else "books") for text, label in sentences(48)]
    train = write_csv(tmp_path / "reviews.csv", rows, header=("text", "label", "domain"))
    teachers = {"movies": {"seed": 1}, "books": {"seed": 2}}
    metrics, report, _ = _distilled(_tiny_run(routed, tmp_path, teachers, train))
    assert metrics["combined"]["rule"] == "route of movies (0.5), books (0.5)"
    assert set(metrics["teachers"]) == {"movies", "books"} and "## The teachers" in report


@pytest.mark.slow
def test_the_teachers_that_disagree_are_the_lines_of_the_table(tmp_path):
    """The last row of the table: labels named differently, a tokenizer that is not the student's."""
    ensemble, _ = _configs()
    (row,) = [line for _, line in _table_lines("**Bad inputs**") if "(...)" in line]
    labels, tokenizer = (part.strip("` ").split("(...)")[0].strip() for part in row.split("`, `"))
    train = write_csv(tmp_path / "train.csv", sentences(24))
    cases = (({"id2label": {0: "neg", 1: "pos"}}, labels), ({"tokenizer_extra": ("extra",)}, tokenizer))
    for index, (other, expected) in enumerate(cases):
        config = _tiny_run(ensemble, tmp_path / str(index), {"base": {}, "large": other}, train)
        line = one_line(["distill", str(config), "--check", "--no-progress"])
        assert expected in line, line


# ---------------------------------------------------------------------------
# the Python examples
# ---------------------------------------------------------------------------


def _python(blocks: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "multi_teacher_examples.py"
    script.write_text("\n".join(blocks), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=240, env=env
    )


@pytest.mark.slow
def test_the_python_examples_run(tmp_path):
    # every example, the Trainer's too, in one fresh process (one import of torch and transformers)
    blocks = _blocks("python")
    assert len(blocks) == 6 and "DistillationTrainer" in blocks[-1], "docs/multi_teacher.md lost an example"
    result = _python([*blocks, 'print("trainer: done")'], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mixture of a (0.25), b (0.75)" in result.stdout
    first, last = map(float, re.search(r"kd ([\d.e-]+) -> ([\d.e-]+)", result.stdout).groups())
    assert last < first, result.stdout  # the student moves towards the mixture
    # what each teacher runs with: a gives the hidden term its layer 4, b its logits only
    assert "a: [4]" in result.stdout and "b: []" in result.stdout, result.stdout
    assert "trainer: done" in result.stdout, result.stdout
