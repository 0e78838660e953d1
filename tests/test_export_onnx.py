"""``kdistill export`` and :func:`kdistill.export_onnx`: a classifier folder as a self-contained ONNX
folder whose logits match PyTorch's for any batch size and length, int8 that mostly agrees, a
latency table, and one-line refusals (missing packages, a foreign output folder, a mismatch)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import one_line
from text_fixtures import save_classifier, write_tokenizer

import kdistill
from kdistill.errors import KdistillError, OutputFileError

pytest.importorskip("onnxruntime", reason='the onnx extra (pip install "kdistill[onnx]") is not installed')
pytest.importorskip("onnxscript", reason='the onnx extra (pip install "kdistill[onnx]") is not installed')

ATOL = 1e-4


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BERT classifier (3 labels) with a confident head, and a DistilBERT one (no token_type_ids)."""
    from transformers import AutoModelForSequenceClassification, DistilBertConfig, DistilBertForSequenceClassification

    root = tmp_path_factory.mktemp("export")
    bert = save_classifier(root / "bert", num_labels=3, seed=3, id2label={0: "neg", 1: "mixed", 2: "pos"})
    # a random head gives near-equal logits, whose argmax any rounding flips: scale it so that the
    # classes are far apart, as a trained head's are, and int8 agreement means something
    model = AutoModelForSequenceClassification.from_pretrained(bert)
    with torch.no_grad():
        model.classifier.weight.mul_(40)
    model.save_pretrained(bert)
    tokenizer = write_tokenizer(root / "distilbert")
    torch.manual_seed(4)
    config = DistilBertConfig(
        vocab_size=len(tokenizer), dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64
    )
    DistilBertForSequenceClassification(config).eval().save_pretrained(root / "distilbert")
    return root


def _random_batch(batch: int, length: int, seed: int, vocab: int = 30, token_types: bool = True) -> dict:
    """Token ids with a padded tail in every other row (a real mask), as int64 numpy arrays."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.int64)
    mask[1::2, length // 2 :] = 0
    ids = ids * mask
    inputs = {"input_ids": ids, "attention_mask": mask}
    if token_types:
        inputs["token_type_ids"] = torch.zeros_like(ids)
    return inputs


def _pytorch_logits(folder: Path, inputs: dict) -> np.ndarray:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(**inputs).logits.numpy()


@pytest.fixture(scope="module")
def exported(models: Path) -> tuple[Path, dict]:
    """The BERT classifier exported with its int8 graph, and the report."""
    out = models / "bert-onnx"
    return out, kdistill.export_onnx(models / "bert", out, int8=True, latency=False)


def test_onnx_logits_match_pytorch_for_other_batch_sizes_and_lengths(
    models: Path, exported: tuple[Path, dict]
) -> None:
    import onnxruntime as ort
    from transformers import AutoConfig, AutoTokenizer

    out, report = exported
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    assert all(isinstance(axis, str) for i in session.get_inputs() for axis in i.shape)  # both axes dynamic
    # neither shape is the export example's (3 x 16) or a check batch's
    for batch, length, seed in ((2, 7, 0), (9, 41, 1)):
        inputs = _random_batch(batch, length, seed)
        got = session.run(["logits"], {k: v.numpy() for k, v in inputs.items()})[0]
        np.testing.assert_allclose(got, _pytorch_logits(models / "bert", inputs), atol=ATOL, rtol=0)
    assert report["checks"]["onnxruntime"]["max_abs_diff"] <= ATOL
    assert report["checks"]["onnxruntime"]["batches"][0][0] == 1  # a batch of one text is checked too
    # self-contained: the folder's tokenizer makes the inputs, its config names the columns
    tokenizer = AutoTokenizer.from_pretrained(out)
    encoded = tokenizer(["a good film", "the plot was dull and the ending cold"], padding=True, return_tensors="np")
    assert session.run(["logits"], dict(encoded))[0].shape == (2, 3)
    assert AutoConfig.from_pretrained(out).id2label == {0: "neg", 1: "mixed", 2: "pos"}
    assert json.loads((out / "export.json").read_text())["labels"] == ["neg", "mixed", "pos"]


def test_a_model_without_token_type_ids_exports_two_inputs(models: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    report = kdistill.export_onnx(models / "distilbert", tmp_path / "out", latency=False)
    assert list(report["inputs"]) == ["input_ids", "attention_mask"]
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = _random_batch(4, 13, seed=2, token_types=False)
    got = session.run(["logits"], {k: v.numpy() for k, v in inputs.items()})[0]
    np.testing.assert_allclose(got, _pytorch_logits(models / "distilbert", inputs), atol=ATOL, rtol=0)


def test_int8_is_written_and_agrees_with_pytorch_on_most_rows(models: Path, exported: tuple[Path, dict]) -> None:
    import onnxruntime as ort

    out, report = exported
    assert (out / "model_int8.onnx").stat().st_size < (out / "model.onnx").stat().st_size
    check = report["checks"]["onnxruntime int8"]
    assert check["argmax_agreement"] >= 0.9 and not check["flagged"], check
    session = ort.InferenceSession(str(out / "model_int8.onnx"), providers=["CPUExecutionProvider"])
    inputs = _random_batch(64, 24, seed=5)
    got = session.run(["logits"], {k: v.numpy() for k, v in inputs.items()})[0]
    expected = _pytorch_logits(models / "bert", inputs)
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.9
    assert np.abs(got - expected).max() < 0.5 * np.abs(expected).max()  # close, not exact


def test_the_command_prints_checks_and_a_side_by_side_latency_table(models: Path, tmp_path: Path, capsys) -> None:
    from kdistill.app.cli import main

    out = tmp_path / "cli"
    args = ["export", str(models / "bert"), "--format", "onnx", "--int8", "--output", str(out)]
    code = main([*args, "--threads", "1", "--rounds", "2", "--length", "12"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"exported the model folder {models / 'bert'} to {out}/" in printed
    assert "model.onnx" in printed and "model_int8.onnx" in printed
    assert "1 thread for each runtime" in printed and "12 tokens per text, 2 alternating rounds" in printed
    # a row per batch size and runtime: batch (5 characters), two spaces, the runtime (17 characters)
    rows = [(line[:5].strip(), line[7:24].strip()) for line in printed.splitlines() if line[:5].strip() in ("1", "32")]
    assert rows == [
        (size, backend) for size in ("1", "32") for backend in ("pytorch", "onnxruntime", "onnxruntime int8")
    ], printed
    latency = json.loads((out / "export.json").read_text())["latency"]
    assert latency["threads"] == 1 and len(latency["rows"]) == 6
    # the same folder again: an earlier export is replaced
    assert main([*args, "--no-latency"]) == 0
    assert "latency" not in json.loads((out / "export.json").read_text())


def test_an_output_folder_kdistill_did_not_write_is_never_replaced(models: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes", encoding="utf-8")
    line = one_line(["export", str(models / "bert"), "--output", str(mine), "--no-latency"])
    assert "holds files that are not a kdistill ONNX export (notes.txt)" in line, line
    assert (mine / "notes.txt").read_text(encoding="utf-8") == "my notes"
    # an earlier export that a person added a file to is not kdistill's alone any more
    out = tmp_path / "export"
    kdistill.export_onnx(models / "bert", out, latency=False)
    (out / "README.md").write_text("how we deploy", encoding="utf-8")
    with pytest.raises(OutputFileError, match=r"\(README.md\)"):
        kdistill.export_onnx(models / "bert", out, latency=False)
    assert (out / "README.md").is_file() and (out / "model.onnx").is_file()
    # nor is a run's student folder, though kdistill wrote it
    student = tmp_path / "student"
    student.mkdir()
    (student / ".kdistill-files.json").write_text('{"kdistill": "files", "files": []}', encoding="utf-8")
    with pytest.raises(OutputFileError, match="not a kdistill ONNX export"):
        kdistill.export_onnx(models / "bert", student, latency=False)
    assert not list(tmp_path.glob(".*building*"))


def test_a_graph_that_disagrees_with_pytorch_is_refused_and_nothing_is_written(
    models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kdistill.tasks.text_classification.onnx import export as onnx_export

    def off_by_a_lot(model, session, batches):
        return {"max_abs_diff": 0.25, "argmax_agreement": 1.0, "texts": 17, "batches": [[1, 8]]}

    monkeypatch.setattr(onnx_export, "_agreement", off_by_a_lot)
    # the graph itself is beside the point (and slow to make): only what is done with the check's verdict
    monkeypatch.setattr(onnx_export, "_export_graph", lambda model, example, path: path.write_bytes(b"graph"))
    monkeypatch.setattr(onnx_export, "onnx_session", lambda path, threads=None: None)
    with pytest.raises(KdistillError, match=r"differ from PyTorch's by up to 2.50e-01 \(tolerance 0.0001\)"):
        kdistill.export_onnx(models / "bert", tmp_path / "out", latency=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


def test_bad_inputs_are_one_line(models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import BertConfig, BertModel

    assert "no such run or model folder" in one_line(["export", str(tmp_path / "nowhere")])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds neither a kdistill run nor a model" in one_line(["export", str(empty)])
    # an encoder without a classification head would export noise
    encoder = tmp_path / "encoder"
    BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)).save_pretrained(
        encoder
    )
    write_tokenizer(encoder)
    assert "has untrained weights" in one_line(["export", str(encoder), "--no-latency"])
    assert "expected a number > 0" in _usage_error(["export", str(models / "bert"), "--atol", "0"], capsys)
    assert "invalid choice: 'tflite'" in _usage_error(["export", str(models / "bert"), "--format", "tflite"], capsys)


def _usage_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """A mistake in the arguments: argparse exits with status 2 and one line."""
    from kdistill.app.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(args)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and len(err.strip().splitlines()) == 1, err
    return err


def test_without_the_onnx_packages_the_command_says_how_to_install_them(
    models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    line = one_line(["export", str(models / "bert")])
    assert line.endswith('pip install "kdistill[onnx]" (onnxruntime is not installed)'), line
    with pytest.raises(KdistillError, match=r'pip install "kdistill\[onnx\]"'):
        kdistill.export_onnx(models / "bert", "anywhere")
