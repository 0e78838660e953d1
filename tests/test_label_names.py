"""``data.label_names``: names for integer labels (the first names label 0, the second 1, ...),
which reach every place a run shows its classes (the student's and the fine-tuned teacher's
``id2label``, ``kdistill predict``, the pipeline, metrics.json, report.md, ``kdistill eval``), and
each way of getting them wrong, refused in one line naming the key."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from cli_helpers import one_line, write_run_config
from text_fixtures import save_classifier, sentences, write_csv, write_tokenizer

from kdistill.app.cli import main

NAMES = ["negative", "positive"]


def _data(root: Path, **keys: object) -> dict[str, object]:
    return {"train": str(root / "train.csv"), "test": str(root / "test.csv"), "max_length": 16, **keys}


def _stdout(args: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(args) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run on 0/1 labels named negative, positive, whose headless teacher is fine-tuned first."""
    from transformers import BertConfig, BertModel

    root = tmp_path_factory.mktemp("names")
    tokenizer = write_tokenizer(root / "teacher")
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    BertModel(config).save_pretrained(root / "teacher")
    write_csv(root / "train.csv", sentences(48, seed=0))  # labels 0 and 1
    write_csv(root / "test.csv", sentences(16, seed=1))
    path = write_run_config(
        root,
        teacher={"path": str(root / "teacher"), "num_labels": 2, "finetune": {"epochs": 1, "lr": 1.0e-3}},
        data=_data(root, label_names=NAMES),
        output={"dir": str(root / "run")},
    )
    _stdout(["distill", str(path), "--no-progress"])
    return root / "run"


def test_the_names_reach_both_configs_metrics_and_report(run: Path) -> None:
    for model in ("student", "teacher"):
        config = json.loads((run / model / "config.json").read_text(encoding="utf-8"))
        assert config["id2label"] == {"0": "negative", "1": "positive"}, model
        assert config["label2id"] == {"negative": 0, "positive": 1}, model
    assert json.loads((run / "metrics.json").read_text(encoding="utf-8"))["data"]["labels"] == NAMES
    assert "labels negative, positive" in (run / "report.md").read_text(encoding="utf-8")


def test_predict_and_the_pipeline_say_the_names(run: Path) -> None:
    from transformers import pipeline

    out = _stdout(["predict", str(run), "--text", "a good film", "--text", "dull", "--no-progress"])
    assert "labels: negative, positive" in out
    rows = out.splitlines()[2:]
    assert len(rows) == 2 and all(row.split()[0] in NAMES for row in rows), out
    classify = pipeline("text-classification", model=str(run / "student"))
    assert classify(["a good film"])[0]["label"] in NAMES


def test_eval_reads_the_integer_test_file_by_the_names(run: Path, tmp_path: Path) -> None:
    written = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    out = tmp_path / "eval.json"
    _stdout(["eval", str(run), "--output", str(out), "--no-progress"])
    measured = json.loads(out.read_text(encoding="utf-8"))["eval"]
    # the same 16 integer labels, read as the student's named classes, score as the run scored them
    assert measured["student"]["accuracy"] == pytest.approx(written["student"]["accuracy"])


def test_value_i_is_the_ith_name_whatever_their_alphabetical_order(tmp_path: Path) -> None:
    from kdistill.tasks.text_classification.config import DataConfig
    from kdistill.tasks.text_classification.labels import build_label_names
    from kdistill.tasks.text_classification.reading import load_splits

    rows = sentences(20, seed=0)
    write_csv(tmp_path / "train.csv", rows)
    write_csv(tmp_path / "test.csv", rows[:6])
    data = DataConfig(train=str(tmp_path / "train.csv"), test=str(tmp_path / "test.csv"), label_names=["pos", "neg"])
    splits = load_splits(data)
    assert splits["test"].labels == [["pos", "neg"][label] for _, label in rows[:6]]
    assert build_label_names(splits["train"].labels, given=data.label_names) == ["pos", "neg"]
    # a teacher that names the same classes keeps its order: each label reaches its logit by name
    assert build_label_names(splits["train"].labels, {0: "neg", 1: "pos"}, 2, given=data.label_names) == [
        "neg",
        "pos",
    ]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("teachers")
    save_classifier(root / "unnamed", num_layers=1, seed=2)  # LABEL_0, LABEL_1
    save_classifier(root / "named", num_layers=1, seed=2, id2label={0: "neg", 1: "pos"})
    return root


@pytest.mark.parametrize(
    ("labels", "names", "teacher", "expected"),
    [
        (
            (0, 1),
            ["negative", "neutral", "positive"],
            "unnamed",
            "data.label_names gives 3 names (negative, neutral and positive), for the labels 0 to 2, but the "
            "training data has 2 labels (0 and 1), no 2; give one name per label of the data",
        ),
        (
            (0, 2),
            NAMES,
            "unnamed",
            "train.csv: label 2 (data row ",
        ),
        (
            ("neg", "pos"),
            NAMES,
            "unnamed",
            "train.csv: label 'neg' (data row 1) is not a number, but data.label_names names the integer labels "
            "0 to 1; labels that are names already need no data.label_names: remove it",
        ),
        (
            (0, 1),
            NAMES,
            "named",
            "data.label_names names the classes negative and positive, but the teacher's config.json names its "
            "logits neg and pos (id2label): give data.label_names the teacher's names (label 0's name "
            "first), or a teacher trained for these classes",
        ),
        (
            (0, 1),
            ["positive", "positive"],
            "unnamed",
            "data.label_names: names 'positive' more than once; give each label value its own name",
        ),
        ((0, 1), ["positive"], "unnamed", "data.label_names: give one name per label value 0, 1, ... (at least 2)"),
        ((0, 1), ["negative", " "], "unnamed", "data.label_names: the name of label 1 is empty"),
    ],
    ids=["fewer-labels", "value-outside", "string-labels", "teacher-names-others", "twice", "one", "empty"],
)
def test_wrong_label_names_are_one_line_naming_the_key(
    teachers: Path, tmp_path: Path, labels: tuple[object, object], names: list[str], teacher: str, expected: str
) -> None:
    write_csv(tmp_path / "train.csv", sentences(24, seed=0, labels=labels))
    write_csv(tmp_path / "test.csv", sentences(8, seed=1, labels=labels))
    config = write_run_config(
        tmp_path, teacher={"path": str(teachers / teacher)}, data=_data(tmp_path, label_names=names)
    )
    line = one_line(["distill", str(config), "--check", "--no-progress"])
    assert "data.label_names" in line and expected in line, line
    if labels == (0, 2):
        assert "is not among 0 to 1, the values data.label_names names (negative, positive)" in line, line
    assert not (tmp_path / "never").exists()


def test_eval_of_the_run_reads_a_file_labelled_with_the_names_alike(run: Path, tmp_path: Path) -> None:
    # the run's test file with its labels 0/1 written as the names: one of the names is that class
    rows = [(text, NAMES[label]) for text, label in sentences(16, seed=1)]
    named = write_csv(tmp_path / "named.csv", rows)
    scores = []
    for data in (None, named):
        out = tmp_path / f"eval-{len(scores)}.json"
        _stdout(["eval", str(run), "--output", str(out), "--no-progress", *(["--data", str(data)] if data else [])])
        scores.append(json.loads(out.read_text(encoding="utf-8"))["eval"]["student"]["accuracy"])
    assert scores[0] == pytest.approx(scores[1])


def test_eval_of_the_bare_model_on_numbers_says_where_their_names_are(run: Path) -> None:
    line = one_line(["eval", str(run / "student"), "--data", str(run.parent / "test.csv"), "--no-progress"])
    assert line.endswith(
        "(data row 1) is a number, but the model's classes are named negative, positive (id2label): evaluate "
        "the run folder, whose data.label_names names the numbers, or label the file with the class names"
    ), line
