"""A new user's day, end to end through the command, as the README shows it: their own
header-less, gzipped CSV whose text is two columns, distilled straight from the config; the
student's predictions from the run folder; and the student exported to ONNX, its logits checked
against PyTorch's and both latencies printed."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from text_fixtures import save_classifier, sentences

from kdistill.app.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("user-day")
    save_classifier(root / "teacher", num_layers=2, seed=1, id2label={0: "neg", 1: "pos"})
    rows = sentences(80, seed=3, labels=("neg", "pos"))
    titles = sentences(80, seed=4)
    text = io.StringIO()
    csv.writer(text).writerows((label, title, body) for (body, label), (title, _) in zip(rows, titles))
    (root / "news.csv.gz").write_bytes(gzip.compress(text.getvalue().encode("utf-8")))
    config = {
        "teacher": {"path": str(root / "teacher")},
        "student": {"from_teacher": {"num_layers": 1}},
        "data": {
            "train": str(root / "news.csv.gz"),
            "columns": ["label", "title", "description"],
            "text_column": ["title", "description"],
            "test_fraction": 16,
            "max_length": 24,
        },
        "training": {"epochs": 1, "batch_size": 16, "lr": 1.0e-3},
        "output": {"dir": str(root / "run")},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["distill", str(root / "run.yaml"), "--no-progress"]) == 0
    return root / "run"


def test_predict_on_the_run_folder_gives_the_students_labels(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(run), "--text", "a good film", "--text", "dull", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "student" in printed and ("neg" in printed or "pos" in printed)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data"]["test"] == 16


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason='needs pip install "kdistill[onnx]"')
def test_export_writes_an_onnx_student_matching_pytorch_and_prints_both_latencies(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnxruntime as ort
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "onnx"
    args = ["export", str(run), "--format", "onnx", "--output", str(out), "--threads", "1", "--rounds", "2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "pytorch" in printed and "onnxruntime" in printed
    tokenizer = AutoTokenizer.from_pretrained(out)
    texts = ["the title a good film", "dull", "an evening of fine and moving acting"]
    batch = tokenizer(texts, padding=True, return_tensors="np")
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    names = {item.name for item in session.get_inputs()}
    got = session.run(["logits"], {key: value for key, value in batch.items() if key in names})[0]
    model = AutoModelForSequenceClassification.from_pretrained(run / "student").eval()
    with torch.no_grad():
        expected = model(**{key: torch.from_numpy(value) for key, value in batch.items()}).logits.numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)
