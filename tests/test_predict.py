"""``kdistill predict``: a run's student (or a teacher-only run's teacher) or a model folder, on
--text or a --data file; the probabilities are the model's own softmax, the labels its names, the
CSV never replaces a file kdistill did not write, and every mistake is one line."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_helpers import one_line, write_run_config
from text_fixtures import WORDS, save_classifier, sentences, write_csv, write_tokenizer

from kdistill.app.cli import main


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class model folder; a teacher, labelled files, a finished run and a teacher-only run."""
    root = tmp_path_factory.mktemp("predict")
    save_classifier(root / "model", num_labels=3, seed=5, id2label={0: "neg", 1: "mixed", 2: "pos"})
    save_classifier(root / "teacher", num_layers=2, seed=1, id2label={0: "neg", 1: "pos"})
    write_csv(root / "train.csv", sentences(64, seed=0, labels=("neg", "pos")))
    write_csv(root / "test.csv", sentences(24, seed=1, labels=("neg", "pos")))
    config = yaml.safe_load(write_run_config(root, output={"dir": str(root / "run")}).read_text(encoding="utf-8"))
    # a run without a student: it fine-tunes the teacher alone
    config.pop("student"), config.pop("objective")
    config["teacher"]["finetune"] = {"epochs": 1, "lr": 1.0e-3}
    config["output"] = {"dir": str(root / "teacher_run"), "save_checkpoints": False}
    (root / "teacher_only.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    for config in ("run.yaml", "teacher_only.yaml"):
        assert main(["distill", str(root / config), "--no-progress"]) == 0
    return root


def _softmax(folder: Path, texts: list[str], max_length: int = 512) -> tuple[np.ndarray, dict[int, str]]:
    """The model's own probabilities, one text at a time (no padding at all)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = []
    with torch.no_grad():
        for text in texts:
            inputs = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
            rows.append(model(**inputs).logits.softmax(-1)[0].numpy())
    return np.stack(rows), model.config.id2label


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_texts_get_the_models_own_softmax_and_label_names(workspace: Path, tmp_path: Path, capsys) -> None:
    texts = ["a good film", "the plot was dull and the ending cold", "fine"]
    out = tmp_path / "preds.csv"
    args = ["predict", str(workspace / "model"), "--output", str(out), "--batch-size", "2", "--no-progress"]
    assert main([*args, *(part for text in texts for part in ("--text", text))]) == 0
    printed = capsys.readouterr().out
    expected, id2label = _softmax(workspace / "model", texts)
    rows = _read(out)
    assert list(rows[0]) == ["text", "predicted_label", "prob_neg", "prob_mixed", "prob_pos"]
    got = np.array([[float(row[f"prob_{name}"]) for name in ("neg", "mixed", "pos")] for row in rows])
    np.testing.assert_allclose(got, expected, atol=1e-5)  # batches of 2, padded: the same numbers
    assert [row["text"] for row in rows] == texts
    assert [row["predicted_label"] for row in rows] == [id2label[i] for i in expected.argmax(1)]
    assert f"model: the model folder {workspace / 'model'}; labels: neg, mixed, pos" in printed
    for text, probabilities in zip(texts, expected):
        line = next(line for line in printed.splitlines() if line.endswith(text))
        assert line.split()[:2] == [id2label[int(probabilities.argmax())], f"{probabilities.max():.4f}"]


def test_a_data_file_is_read_as_eval_reads_it_and_the_run_gives_its_student(
    workspace: Path, tmp_path: Path, capsys
) -> None:
    rows = sentences(21, seed=7)
    data = write_csv(tmp_path / "reviews.tsv", [(label, text) for text, label in rows], ("id", "review"), "\t")
    out = tmp_path / "out.csv"
    run = workspace / "run"
    args = ["predict", str(run), "--data", str(data), "--text-column", "review", "--output", str(out)]
    assert main([*args, "--batch-size", "4", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"model: the student of run {run} ({run / 'student'}); labels: neg, pos" in printed
    assert f"21 predictions written to {out}" in printed
    written = _read(out)
    assert list(written[0]) == ["review", "predicted_label", "prob_neg", "prob_pos"]
    texts = [text for text, _ in rows]
    expected, _ = _softmax(run / "student", texts, max_length=16)  # the run's data.max_length
    got = np.array([[float(row["prob_neg"]), float(row["prob_pos"])] for row in written])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert [row["review"] for row in written] == texts


def test_transformers_pipeline_works_on_the_saved_student(workspace: Path, tmp_path: Path) -> None:
    """What docs/cli.md promises: the student folder is a plain transformers classifier with the data's label names."""
    from transformers import pipeline

    texts = ["a lovely film", "boring and cold"]
    classifier = pipeline("text-classification", model=str(workspace / "run" / "student"))
    results = classifier(texts)
    expected, id2label = _softmax(workspace / "run" / "student", texts)
    assert set(id2label.values()) == {"neg", "pos"}
    for result, probabilities in zip(results, expected):
        assert result["label"] == id2label[int(probabilities.argmax())]
        assert result["score"] == pytest.approx(float(probabilities.max()), abs=1e-5)


def test_a_run_without_a_student_gives_its_fine_tuned_teacher(workspace: Path, capsys) -> None:
    run = workspace / "teacher_run"
    assert main(["predict", str(run), "--text", "a great cast", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"the fine-tuned teacher of run {run} ({run / 'teacher'}; a run without a student)" in printed
    expected, id2label = _softmax(run / "teacher", ["a great cast"], max_length=16)
    assert printed.splitlines()[-1].split()[:2] == [id2label[int(expected.argmax())], f"{expected.max():.4f}"]


def test_the_output_never_replaces_a_file_kdistill_did_not_write(workspace: Path, tmp_path: Path) -> None:
    model = str(workspace / "model")
    data = shutil.copy(workspace / "test.csv", tmp_path / "test.csv")
    before = Path(data).read_bytes()
    # the data file itself, as the output
    line = one_line(["predict", model, "--data", str(data), "--output", str(data)])
    assert line.endswith(
        f"--output {str(data)!r} exists and is not a predictions file kdistill wrote: kdistill never replaces "
        "a file it did not write; give a new file name"
    ), line
    assert Path(data).read_bytes() == before
    # kdistill's own predictions file is replaced; once a person adds a column, it is theirs
    out = tmp_path / "preds.csv"
    for _ in range(2):
        assert main(["predict", model, "--text", "good", "--output", str(out), "--no-progress"]) == 0
    edited = out.read_text(encoding="utf-8").replace("prob_pos\n", "prob_pos,notes\n", 1)
    out.write_text(edited, encoding="utf-8")
    assert "is not a predictions file kdistill wrote" in one_line(
        ["predict", model, "--text", "x", "--output", str(out)]
    )
    assert out.read_text(encoding="utf-8") == edited
    assert "give a file name ending in .csv" in one_line(["predict", model, "--text", "x", "--output", "notes.txt"])
    (tmp_path / "folder.csv").mkdir()
    assert "is a folder" in one_line(["predict", model, "--text", "x", "--output", str(tmp_path / "folder.csv")])
    assert not list(tmp_path.glob(".*.partial"))


def test_data_without_output_writes_predictions_csv_here_unless_a_users_file_is_there(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["predict", str(workspace / "model"), "--data", str(workspace / "test.csv"), "--no-progress"]
    assert main(args) == 0
    assert len(_read(tmp_path / "predictions.csv")) == 24
    (tmp_path / "predictions.csv").write_text("id,score\n1,0.5\n", encoding="utf-8")
    assert "'predictions.csv' exists and is not a predictions file kdistill wrote" in one_line(args)


def test_bad_inputs_are_one_line(workspace: Path, tmp_path: Path, capsys) -> None:
    model = str(workspace / "model")
    assert "no such run or model folder" in one_line(["predict", str(tmp_path / "nowhere"), "--text", "x"])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds neither a kdistill run nor a model" in one_line(["predict", str(empty), "--text", "x"])
    # a run that stopped before its student was saved
    stopped = tmp_path / "stopped"
    shutil.copytree(workspace / "run", stopped, ignore=shutil.ignore_patterns("student"))
    config = yaml.safe_load((stopped / "config.yaml").read_text(encoding="utf-8"))
    config["output"]["dir"] = str(stopped)
    (stopped / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    line = one_line(["predict", str(stopped), "--text", "x"])
    assert f"run {str(stopped)!r} holds no student/ yet: the run has not finished" in line, line
    assert f"kdistill distill --resume {stopped}" in line
    # a column the file does not have
    data = write_csv(tmp_path / "d.csv", [("good film", "pos")], ("sentence", "label"))
    line = one_line(["predict", model, "--data", str(data)])
    assert "has no column 'text'" in line and "its columns are sentence, label" in line, line
    assert "data file" in one_line(["predict", model, "--data", str(tmp_path / "missing.csv")])
    # an encoder without a trained classification head
    from transformers import BertConfig, BertModel

    encoder = tmp_path / "encoder"
    BertModel(
        BertConfig(vocab_size=len(WORDS) + 5, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    ).save_pretrained(encoder)
    write_tokenizer(encoder)
    assert "has untrained weights" in one_line(["predict", str(encoder), "--text", "x"])
    assert "--text number 2 is empty" in one_line(["predict", model, "--text", "good", "--text", " "])
    assert "--max-length 100 is more than the model's 64 token positions" in one_line(
        ["predict", model, "--text", "good", "--max-length", "100"]
    )
    with pytest.raises(SystemExit) as stopped_by_argparse:
        main(["predict", model])
    err = capsys.readouterr().err
    assert stopped_by_argparse.value.code == 2 and "one of the arguments --text --data is required" in err


def test_header_less_files_and_line_files_are_read_with_evals_flags_and_need_no_label(
    workspace: Path, tmp_path: Path
) -> None:
    model = str(workspace / "model")
    texts = ["a good film", "cold and dull"]
    plain = tmp_path / "plain.csv"
    plain.write_text("".join(f"{i},{text}\n" for i, text in enumerate(texts)), encoding="utf-8")
    lines = tmp_path / "questions.txt"
    lines.write_text("".join(f"Q{i}: {text}\n" for i, text in enumerate(texts)), encoding="utf-8")
    expected, _ = _softmax(workspace / "model", texts)
    for extra, name in (
        (["--columns", "id,text"], "plain.csv"),
        (["--line-pattern", r"Q\d+: (?P<text>.*)"], "questions.txt"),
    ):
        out = tmp_path / f"{name}.preds.csv"
        assert (
            main(["predict", model, "--data", str(tmp_path / name), *extra, "--output", str(out), "--no-progress"])
            == 0
        )
        rows = _read(out)
        assert [row["text"] for row in rows] == texts
        got = np.array([[float(row[f"prob_{n}"]) for n in ("neg", "mixed", "pos")] for row in rows])
        np.testing.assert_allclose(got, expected, atol=1e-5)
    line = one_line(["predict", model, "--data", str(plain), "--columns", "id,review"])
    assert line.endswith("text_column 'text' is not one of columns (id, review)"), line
