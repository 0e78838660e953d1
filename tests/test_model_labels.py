"""Classifiers whose ``id2label`` is not 0..n-1 (ids not starting at 0, gaps, keys that are not
numbers, a label2id or num_labels that disagrees): ``kdistill eval`` and ``kdistill predict`` read
each logit as ``transformers.pipeline("text-classification")`` reads it (logit j is
``id2label[j]``), and whatever cannot say which logit is which class (``export``, a teacher for
``distill``, a head of another size) is refused in one line naming the config's keys."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from cli_helpers import one_line, run_command, write_run_config
from text_fixtures import save_classifier, sentences, write_csv

TEXTS = ["a good film", "the plot was dull and the ending cold", "fine", "a lovely, moving story", "grim"]


def _classifier(folder: Path, num_labels: int, *, bias: list[float] | None = None, scale: float = 1.0) -> Path:
    """A tiny BERT classifier; ``bias`` sets its head's bias (which logit wins), ``scale`` spreads its logits."""
    from transformers import AutoModelForSequenceClassification

    save_classifier(folder, num_labels=num_labels, seed=3)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    with torch.no_grad():
        model.classifier.weight.mul_(scale)
        if bias is not None:
            model.classifier.bias.copy_(torch.tensor(bias))
    model.save_pretrained(folder)
    return folder


def _edit_config(folder: Path, **values: object) -> Path:
    """Rewrite keys of the folder's config.json by hand, as a user (or another tool) would."""
    path = folder / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config.update(values)
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("labels")
    gap = {"1": "neg", "2": "pos"}
    # ids 1 and 2 on 2 logits: transformers reads logit 1 as neg, and logit 0 as nothing
    _edit_config(_classifier(root / "one_based", 2, bias=[0.0, 3.0]), id2label=gap, label2id={"neg": 1, "pos": 2})
    _edit_config(_classifier(root / "zero_wins", 2, bias=[3.0, 0.0]), id2label=gap, label2id={"neg": 1, "pos": 2})
    # label2id says the opposite of id2label: transformers reads id2label alone
    _edit_config(
        _classifier(root / "crossed", 2, scale=60.0), id2label={"0": "pos", "1": "neg"}, label2id={"pos": 1, "neg": 0}
    )
    # a gap in the middle, 3 logits: 0 and 1 named, logit 2 not, and "pos" (3) names none
    _edit_config(
        _classifier(root / "middle_gap", 3, scale=60.0, bias=[0.0, 0.0, -1.0e3]),  # the pipeline stops at logit 2
        id2label={"0": "neg", "1": "mixed", "3": "pos"},
        label2id={"neg": 0, "mixed": 1, "pos": 3},
    )
    # num_labels 3 beside 2 names: transformers keeps 3 logits and drops the names
    _edit_config(
        _classifier(root / "counted", 3, scale=60.0), id2label=gap, label2id={"neg": 1, "pos": 2}, num_labels=3
    )
    # 3 logits in the weights, 2 names and no num_labels: transformers builds a head of 2 and cannot load it
    _edit_config(_classifier(root / "wide", 3), id2label=gap, label2id={"neg": 1, "pos": 2})
    _edit_config(_classifier(root / "lettered", 2), id2label={"a": "neg", "b": "pos"}, label2id={"neg": "a"})
    save_classifier(root / "plain", num_labels=2, seed=4, id2label={0: "neg", 1: "pos"})
    return root


def _pipeline(folder: Path, texts: list[str] = TEXTS) -> list[dict]:
    """What ``transformers.pipeline`` reads the folder as, one text at a time: its top label and score."""
    from transformers import pipeline

    classifier = pipeline("text-classification", model=str(folder))
    return [classifier(text)[0] for text in texts]


def _predict(folder: Path, tmp_path: Path, texts: list[str] = TEXTS) -> list[dict[str, str]]:
    """``kdistill predict`` on ``texts``: the rows of its CSV (its warnings are logged)."""
    data = write_csv(tmp_path / "texts.csv", [(text, "") for text in texts], header=("text", "unused"))
    output = tmp_path / "predictions.csv"
    code, err = run_command(["predict", str(folder), "--data", str(data), "--output", str(output), "--no-progress"])
    assert code == 0, err
    with output.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _eval_accuracy(folder: Path, tmp_path: Path, labels: list[object], texts: list[str] = TEXTS) -> float:
    data = write_csv(tmp_path / "labelled.csv", list(zip(texts, labels)))
    output = tmp_path / "metrics.json"
    code, err = run_command(["eval", str(folder), "--data", str(data), "--output", str(output), "--no-progress"])
    assert code == 0, err
    return json.loads(output.read_text(encoding="utf-8"))["eval"]["student"]["accuracy"]


@pytest.mark.parametrize("name", ["one_based", "crossed", "middle_gap", "counted"])
def test_predict_reads_each_logit_as_the_pipeline_does(models: Path, tmp_path: Path, name: str) -> None:
    expected = _pipeline(models / name)
    rows = _predict(models / name, tmp_path)
    assert [row["predicted_label"] for row in rows] == [result["label"] for result in expected]
    for row, result in zip(rows, expected):
        assert float(row[f"prob_{result['label']}"]) == pytest.approx(result["score"], rel=1e-4)


def test_ids_from_1_on_2_logits_predict_like_the_pipeline_and_say_so(
    models: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = _predict(models / "one_based", tmp_path)
    err = caplog.text
    # logit 1 is neg; logit 0 has no name in the config; pos (2) names no logit
    assert list(rows[0]) == ["text", "predicted_label", "prob_LABEL_0", "prob_neg"]
    assert {row["predicted_label"] for row in rows} == {"neg"}
    assert "has id2label {1: neg, 2: pos}, but there are 2 logits, 0 to 1" in err
    assert "logit 0 has no label (read as LABEL_0); pos (2) names no logit and is never predicted" in err


def test_an_unnamed_logit_that_wins_is_predicted_where_the_pipeline_stops_with_a_key_error(
    models: Path, tmp_path: Path
) -> None:
    with pytest.raises(KeyError):
        _pipeline(models / "zero_wins")
    rows = _predict(models / "zero_wins", tmp_path)
    assert {row["predicted_label"] for row in rows} == {"LABEL_0"}


@pytest.mark.parametrize("name", ["one_based", "crossed", "middle_gap"])
def test_eval_scores_the_labels_the_pipeline_reads(models: Path, tmp_path: Path, name: str) -> None:
    read = [result["label"] for result in _pipeline(models / name)]
    known = {"one_based": ["neg"], "crossed": ["neg", "pos"], "middle_gap": ["neg", "mixed"]}[name]
    # gold labels (among those the data may have) the pipeline gets right for some texts, wrong for others
    gold = [
        label if i % 2 == 0 and label in known else next((k for k in known if k != label), known[0])
        for i, label in enumerate(read)
    ]
    expected = sum(g == r for g, r in zip(gold, read)) / len(gold)
    assert _eval_accuracy(models / name, tmp_path, gold) == pytest.approx(expected)


def test_eval_on_ids_from_1_counts_the_model_right_where_it_was_0_000(models: Path, tmp_path: Path) -> None:
    assert {result["label"] for result in _pipeline(models / "one_based")} == {"neg"}
    assert _eval_accuracy(models / "one_based", tmp_path, ["neg"] * len(TEXTS)) == 1.0


def test_eval_refuses_a_label_that_names_no_logit_in_one_line(models: Path, tmp_path: Path) -> None:
    data = write_csv(tmp_path / "labelled.csv", list(zip(TEXTS, ["neg", "pos", "neg", "pos", "neg"])))
    output = tmp_path / "m.json"
    line = one_line(["eval", str(models / "one_based"), "--data", str(data), "--no-progress", "--output", str(output)])
    assert "label 'pos' (data row 2) is not among the model's classes LABEL_0, neg" in line
    assert "gives it id 2 in id2label, but there are 2 logits, 0 to 1" in line
    assert "number id2label 0 to 1 in the order of the logits (and label2id alike)" in line
    assert not output.exists()


def test_num_labels_beside_fewer_names_reads_label_0_to_2_as_transformers_does(
    models: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    read = [result["label"] for result in _pipeline(models / "counted")]
    assert set(read) <= {"LABEL_0", "LABEL_1", "LABEL_2"}
    gold = [int(label[-1]) for label in read[:3]] + [(int(label[-1]) + 1) % 3 for label in read[3:]]
    assert _eval_accuracy(models / "counted", tmp_path, gold) == pytest.approx(3 / len(TEXTS))
    _predict(models / "counted", tmp_path)
    assert "names 2 classes in id2label ({1: neg, 2: pos}) but says num_labels 3" in caplog.text
    data = write_csv(tmp_path / "named.csv", list(zip(TEXTS, ["neg", "pos"] * 3)))
    line = one_line(
        ["eval", str(models / "counted"), "--data", str(data), "--no-progress", "--output", str(tmp_path / "m.json")],
        after_log=True,
    )
    assert "label 'neg' (data row 1) is not among the model's classes LABEL_0, LABEL_1, LABEL_2" in line
    assert "leave num_labels out" in line


def test_label2id_that_disagrees_is_named_and_id2label_is_read(
    models: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _predict(models / "crossed", tmp_path)
    assert "has label2id {pos: 1, neg: 0}, which disagrees with its id2label {0: pos, 1: neg}" in caplog.text


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "wide",
            "its weights do not fit its config.json (classifier.weight is [3, 32] in the weights but [2, 32] "
            "by the config): the classification head has 3 outputs",
        ),
        ("lettered", "its config.json has id2label {a: neg, b: pos}, whose key 'a' is not a logit number"),
    ],
)
def test_configs_transformers_cannot_load_are_one_line_for_each_command(
    models: Path, tmp_path: Path, name: str, expected: str
) -> None:
    folder = str(models / name)
    data = write_csv(tmp_path / "labelled.csv", list(zip(TEXTS, ["neg", "pos"] * 3)))
    for command in (
        ["predict", folder, "--text", "fine", "--no-progress"],
        ["eval", folder, "--data", str(data), "--no-progress", "--output", str(tmp_path / "m.json")],
    ):
        assert expected in one_line(command)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "one_based",
            "has id2label {1: neg, 2: pos}, but there are 2 logits, 0 to 1, and transformers reads logit j "
            "as id2label[j]: logit 0 has no label (read as LABEL_0); pos (2) names no logit and is never "
            "predicted; number id2label 0 to 1 in the order of the logits (and label2id alike)",
        ),
        (
            "counted",
            "names 2 classes in id2label ({1: neg, 2: pos}) but says num_labels 3: transformers reads its 3 "
            "logits as LABEL_0 to LABEL_2 and drops those names; give id2label one name for each of the 3 "
            "logits, 0 to 2, and leave num_labels out",
        ),
    ],
)
def test_export_refuses_a_config_that_cannot_name_its_logits(
    models: Path, tmp_path: Path, name: str, expected: str
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    line = one_line(["export", str(models / name), "--output", str(tmp_path / "onnx")])
    assert expected in line and line.endswith("nothing was exported")
    assert not (tmp_path / "onnx").exists()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("one_based", "the teacher's config.json ({teacher}) has id2label {1: neg, 2: pos}, but there are 2 logits"),
        ("middle_gap", "logit 2 has no label (read as LABEL_2); pos (3) names no logit"),
        (
            "counted",
            "the teacher's config.json ({teacher}) names 2 classes in id2label ({1: neg, 2: pos}) but says "
            "num_labels 3",
        ),
    ],
)
def test_distill_refuses_a_teacher_whose_config_cannot_name_its_logits(
    models: Path, tmp_path: Path, name: str, expected: str
) -> None:
    shutil.copytree(models / name, tmp_path / "teacher")
    labels = ("neg", "pos")
    write_csv(tmp_path / "train.csv", sentences(24, seed=0, labels=labels))
    write_csv(tmp_path / "test.csv", sentences(8, seed=1, labels=labels))
    config = write_run_config(tmp_path)
    line = one_line(["distill", str(config), "--check", "--no-progress"])
    assert expected.replace("{teacher}", str(tmp_path / "teacher")) in line
    assert not (tmp_path / "never").exists()


def test_distill_takes_a_teacher_whose_label2id_disagrees_in_its_id2label_order(models: Path, tmp_path: Path) -> None:
    from kdistill.app.config_loading import load_config
    from kdistill.app.run import prepare_run

    shutil.copytree(models / "crossed", tmp_path / "teacher")
    write_csv(tmp_path / "train.csv", sentences(24, seed=0, labels=("neg", "pos")))
    write_csv(tmp_path / "test.csv", sentences(8, seed=1, labels=("neg", "pos")))
    prepared = prepare_run(load_config(write_run_config(tmp_path)), progress=False)
    # the student's logit j is the teacher's logit j: id2label's order (pos, neg), label2id set to match
    assert prepared.data.details["labels"] == ["pos", "neg"]
    assert prepared.models.student.config.id2label == {0: "pos", 1: "neg"}
    assert prepared.models.student.config.label2id == {"pos": 0, "neg": 1}


def test_eval_refuses_a_teacher_that_names_the_models_classes_at_other_logits(models: Path, tmp_path: Path) -> None:
    # the labels are the model's logit numbers: the teacher's accuracy and the agreement would swap its classes
    data = write_csv(tmp_path / "labelled.csv", list(zip(TEXTS, ["neg", "pos"] * 3)))
    line = one_line(
        ["eval", str(models / "plain"), "--teacher", str(models / "crossed"), "--data", str(data), "--no-progress"]
    )
    assert "the teacher's logits are the classes pos, neg and the model's neg, pos" in line
