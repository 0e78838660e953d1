"""A GGUF model through the commands (issue 24, item 5): ``kdistill eval``, ``inspect`` and ``export
--format hf`` take a GGUF file (its path, or its folder and ``--gguf-file``), ``predict`` refuses one
saying what to use, a run with a GGUF teacher evaluates, and each bad input is one line naming the
fix. The GGUF files are tiny Llamas written here (tests/lm_fixtures.py), never downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import one_line, run_command
from lm_fixtures import PLAY, write_gguf

pytest.importorskip("gguf", reason="reading GGUF files needs pip install gguf")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

NAME = "tiny.Q8_0.gguf"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a tiny GGUF Llama (no config.json: a package's or a *-GGUF download's folder),
    the float model it was written from as a save_pretrained folder, and text to measure it on."""
    root = tmp_path_factory.mktemp("gguf")
    (root / "weights").mkdir()
    model, tokenizer = write_gguf(root / "weights" / NAME)
    model.save_pretrained(root / "float")
    tokenizer.save_pretrained(root / "float")
    (root / "test.txt").write_text(PLAY * 3, encoding="utf-8")
    (root / "train.txt").write_text(PLAY[::-1] * 6, encoding="utf-8")
    return root


def _eval(args: list[str], out: Path) -> dict:
    code, err = run_command(["eval", *args, "--max-length", "32", "--output", str(out), "--no-progress"])
    assert code == 0, err
    return json.loads(out.read_text())["eval"]


def test_kdistill_eval_gguf_file_reports_the_perplexity_of_the_dequantised_model(
    weights: Path, tmp_path: Path
) -> None:
    data = ["--data", str(weights / "test.txt")]
    measured = _eval([str(weights / "weights"), "--gguf-file", NAME, *data], tmp_path / "gguf.json")
    plain = _eval([str(weights / "float"), "--task", "causal_lm", *data], tmp_path / "float.json")
    assert measured["student"]["tokens"] == plain["student"]["tokens"] > 0
    # Q8_0 weights: the perplexity of the model the file was written from, within rounding
    assert measured["student"]["perplexity"] == pytest.approx(plain["student"]["perplexity"], rel=0.02)
    assert measured["model"] == str(weights / "weights" / NAME)
    # the file's own path is the same model
    direct = _eval([str(weights / "weights" / NAME), *data], tmp_path / "direct.json")
    assert direct["student"]["perplexity"] == pytest.approx(measured["student"]["perplexity"], rel=1e-6)


def test_kdistill_eval_compares_a_student_with_a_gguf_teacher(weights: Path, tmp_path: Path) -> None:
    teacher = ["--teacher", str(weights / "weights" / NAME), "--data", str(weights / "test.txt")]
    measured = _eval([str(weights / "float"), *teacher], tmp_path / "pair.json")  # the task: causal_lm
    assert measured["teacher"]["perplexity"] > 1 and measured["student"]["agreement"] > 0.9


def test_kdistill_inspect_describes_a_gguf_model(weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kdistill.app.cli import main

    assert main(["inspect", str(weights / "weights"), "--gguf-file", NAME, "--num-layers", "2"]) == 0
    printed = capsys.readouterr().out
    rows = [line.split() for line in printed.splitlines() if "LlamaForCausalLM " in line][:2]
    # the teacher (4 layers, width 32, 4 heads, the tokenizer's 300 ids) and the proposed 2-layer student
    assert len(rows) == 2 and rows[0][1:6] == ["LlamaForCausalLM", "4", "32", "4", "64"], printed
    assert "layer map (uniform)" in printed


@pytest.mark.parametrize("given", ["file", "flag", "folder"])
def test_kdistill_predict_refuses_a_gguf_model_saying_what_to_use(weights: Path, given: str) -> None:
    folder = str(weights / "weights")
    model = {"file": [f"{folder}/{NAME}"], "flag": [folder, "--gguf-file", NAME], "folder": [folder]}[given]
    line = one_line(["predict", *model, "--text", "a lovely film"])
    assert "a causal language model: kdistill predict works on text classifiers" in line, line
    shown = f"{folder} --gguf-file {NAME}" if given == "folder" else f"{folder}/{NAME}"
    assert line.endswith(f"measure it on a text file with kdistill eval {shown} --data FILE.txt"), line


def test_kdistill_export_format_hf_writes_a_plain_folder_that_loads_and_evaluates(
    weights: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "plain"
    code, err = run_command(["export", str(weights / "weights"), "--gguf-file", NAME, "--output", str(out)])
    assert code == 0, err  # --format hf is the default for a GGUF model
    assert {"config.json", "model.safetensors", "tokenizer.json", ".kdistill-files.json"} <= {
        path.name for path in out.iterdir()
    }
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    from kdistill.tasks.causal_lm.models import load_causal_lm

    loaded = load_causal_lm(str(weights / "weights" / NAME), "teacher").model
    ids = torch.tensor([[1, 5, 40, 90, 200]])
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, loaded(ids).logits)
    data = ["--data", str(weights / "test.txt")]
    folder = _eval([str(out), "--task", "causal_lm", *data], tmp_path / "plain.json")
    gguf = _eval([str(weights / "weights" / NAME), *data], tmp_path / "gguf.json")
    assert folder["student"]["perplexity"] == pytest.approx(gguf["student"]["perplexity"], rel=1e-5)
    # an earlier export of kdistill's is replaced; a folder holding a file of the user's is not
    again = ["export", str(weights / "weights" / NAME), "--format", "hf", "--output", str(out)]
    assert run_command(again)[0] == 0
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    line = one_line(again)
    assert "holds files kdistill did not write there (notes.txt)" in line, line
    assert (out / "notes.txt").read_text() == "mine" and (out / "config.json").is_file()


def test_kdistill_export_hf_writes_a_gguf_model_into_a_default_folder_named_after_it(
    weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_command(["export", str(weights / "weights" / NAME), "--format", "hf"])[0] == 0
    assert (tmp_path / "tiny.Q8_0-hf" / "model.safetensors").is_file()


def test_kdistill_eval_of_a_run_with_a_gguf_teacher_loads_the_teacher_from_its_file(
    weights: Path, tmp_path: Path
) -> None:
    config = {
        "task": "causal_lm",
        "teacher": {"path": str(weights / "weights"), "gguf_file": NAME},
        "student": {"from_teacher": {"num_layers": 2}},
        "data": {"train": str(weights / "train.txt"), "test": str(weights / "test.txt"), "max_length": 32},
        "objective": {"preset": "hinton"},
        "training": {"epochs": 1, "batch_size": 8},
        "output": {"dir": str(tmp_path / "run")},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    code, err = run_command(["distill", str(tmp_path / "run.yaml"), "--no-progress"])
    assert code == 0, err
    code, err = run_command(["eval", str(tmp_path / "run"), "--no-progress"])
    assert code == 0, err
    measured = json.loads((tmp_path / "run" / "metrics.json").read_text())["eval"]
    assert measured["teacher_model"] == str(weights / "weights" / NAME) and measured["teacher"]["perplexity"] > 1


# ---------------------------------------------------------------------------
# bad input: one line naming the fix
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def junk(weights: Path) -> Path:
    """A folder holding a file named like a GGUF file that is not one, and the real one."""
    folder = weights / "junk"
    folder.mkdir()
    (folder / "broken.gguf").write_bytes(b"<!DOCTYPE html> a download's error page")
    (folder / NAME).write_bytes((weights / "weights" / NAME).read_bytes())
    return folder


def test_a_missing_gguf_file_is_one_line(weights: Path) -> None:
    line = one_line(["eval", str(weights / "absent.gguf"), "--data", str(weights / "test.txt")])
    assert line.endswith(f"MODEL {str(weights / 'absent.gguf')!r}: no such file"), line


def test_gguf_file_missing_from_the_folder_names_the_gguf_files_there(weights: Path) -> None:
    line = one_line(["eval", str(weights / "weights"), "--gguf-file", "model.Q4_1.gguf"])
    assert f"has no file 'model.Q4_1.gguf' (--gguf-file); its .gguf files: {NAME}" in line, line
    line = one_line(["inspect", str(weights / "float"), "--gguf-file", NAME])
    assert "has no file 'tiny.Q8_0.gguf' (--gguf-file); it holds no .gguf file" in line, line


@pytest.mark.parametrize("command", ["eval", "inspect", "export", "predict"])
def test_a_file_that_is_not_gguf_is_one_line(junk: Path, command: str) -> None:
    for given in ([str(junk / "broken.gguf")], [str(junk), "--gguf-file", "broken.gguf"]):
        line = one_line([command, *given, *(["--text", "a film"] if command == "predict" else [])])
        assert f"{str(junk / 'broken.gguf')!r} is not a GGUF file (it does not begin with the bytes GGUF)" in line


def test_gguf_file_must_be_a_name_in_an_existing_folder(weights: Path) -> None:
    folder, data = str(weights / "weights"), str(weights / "test.txt")
    line = one_line(["eval", folder, "--gguf-file", f"sub/{NAME}", "--data", data])
    assert "give the name of a file in MODEL's folder, or the file's path as MODEL without --gguf-file" in line
    line = one_line(["eval", f"{folder}/{NAME}", "--gguf-file", NAME, "--data", data])
    assert "is a file, and --gguf-file names a file in a folder: give the folder, or the GGUF file alone" in line
    line = one_line(["eval", str(weights / "nowhere"), "--gguf-file", NAME, "--data", data])
    assert "no such folder, and --gguf-file names a file in one" in line, line


def test_a_folder_of_gguf_files_without_gguf_file_names_the_flag(weights: Path) -> None:
    line = one_line(["eval", str(weights / "weights"), "--task", "causal_lm", "--data", str(weights / "test.txt")])
    assert (
        f"holds no config.json: it is not a model saved with save_pretrained; it holds GGUF files ({NAME}): " in line
    )
    assert f"name one (--gguf-file {NAME} on the command line" in line, line


def test_a_gguf_model_is_refused_with_a_task_or_format_it_cannot_have(weights: Path) -> None:
    gguf, data = str(weights / "weights" / NAME), str(weights / "test.txt")
    line = one_line(["eval", gguf, "--task", "text_classification", "--data", data])
    assert line.endswith("a GGUF model is a causal language model; give --task causal_lm or none"), line
    line = one_line(["export", gguf, "--format", "onnx"])
    assert "--format onnx exports text classifiers; --format hf writes it as a plain model folder" in line, line
    line = one_line(["export", str(weights / "float"), "--format", "hf"])
    assert "--format hf writes a GGUF model as a plain model folder, and" in line, line
    line = one_line(["export", gguf, "--int8"])
    assert "--int8 quantises an ONNX export (--format onnx)" in line, line
    line = one_line(["export", str(weights / "weights")])  # the folder, without --gguf-file
    assert line.endswith(
        f"write it as a plain model folder with kdistill export {weights / 'weights'} --gguf-file {NAME} --format hf"
    ), line
