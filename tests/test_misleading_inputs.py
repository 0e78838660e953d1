"""Inputs whose failure misled the user, or hung, or kept a mess (issue 23, "the rest of the sweep"):
a chat template that loops, ``~`` in a path, a predictions file that merely looks like kdistill's,
a damaged GGUF file, a compression bomb, a link to a folder, a ``$KDISTILL_CACHE`` that is a file,
a URL as a data path, and the staging folder of an export killed midway. Each is refused in one
line that names the problem and the way out, before anything is written (or cleaned up, for the
export's leftovers, once they are provably kdistill's own)."""

from __future__ import annotations

import csv
import gzip
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_helpers import one_line, run_command, write_run_config
from lm_fixtures import make_tokenizer, write_teacher
from text_fixtures import save_classifier, sentences, write_csv

from kdistill.app.cli import build_parser, main
from kdistill.errors import ConfigError, ModelLoadError

PREFIX = "kdistill distill: error: "


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-label teacher, a 3-label classifier, labelled CSV files and a run config."""
    root = tmp_path_factory.mktemp("misleading")
    save_classifier(root / "teacher", num_layers=2, hidden=32, heads=4, seed=1, id2label={0: "neg", 1: "pos"})
    save_classifier(root / "model", num_labels=3, seed=5, id2label={0: "neg", 1: "mixed", 2: "pos"})
    write_csv(root / "train.csv", sentences(48, seed=0, labels=("neg", "pos")))
    write_csv(root / "test.csv", sentences(16, seed=1, labels=("neg", "pos")))
    write_run_config(root)
    return root


# ---------------------------------------------------------------------------
# a chat template that loops for minutes
# ---------------------------------------------------------------------------

#: a template that would loop for hours (10^10 turns of an empty loop; Jinja's sandbox allows
#: ranges of 100,000) and print nothing
ENDLESS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


def _conversations(*records: list[dict[str, str]]) -> Any:
    from kdistill.tasks.causal_lm.reading import Documents

    return Documents("messages", list(records), "chat.jsonl", [f"line {i + 1}" for i in range(len(records))])


@pytest.mark.parametrize("timer", ["alarm", "trace"])
def test_a_chat_template_that_loops_is_stopped_in_one_line_that_names_its_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, timer: str
) -> None:
    """The run hung with no output; now each rendering is bounded: by an alarm in the main thread,
    by a trace of the template's own code where the timer is taken (pytest-timeout takes it)."""
    from transformers import AutoTokenizer

    from kdistill.tasks.causal_lm import chat
    from kdistill.tasks.causal_lm.config import LMDataConfig
    from kdistill.tasks.causal_lm.data import tokenize_documents

    monkeypatch.setattr(chat, "RENDER_SECONDS", 0.5)
    make_tokenizer(chat_template=ENDLESS).save_pretrained(tmp_path / "looping")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "looping")
    documents = _conversations([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}])
    held = signal.setitimer(signal.ITIMER_REAL, 0 if timer == "alarm" else 3600)
    start = time.monotonic()
    try:
        with pytest.raises(ModelLoadError) as error:
            tokenize_documents(documents, tokenizer, LMDataConfig(train="a.jsonl"), progress=False)
        left = signal.getitimer(signal.ITIMER_REAL)[0]  # the timer as it was: none left, another's kept
    finally:
        signal.setitimer(signal.ITIMER_REAL, *held)
    assert time.monotonic() - start < 30
    assert (left == 0) if timer == "alarm" else (left > 3000)
    assert sys.gettrace() is None
    message = str(error.value)
    template = tmp_path / "looping" / "chat_template.jinja"
    assert "\n" not in message
    assert message.startswith(f"the chat template in {str(template)!r} did not finish rendering the conversation")
    assert "of 'chat.jsonl' line 1 within 0.5 s (a loop that does not end?); fix the template" in message
    assert message.endswith("or use prompt/completion records")
    # a template that ends renders as before
    split = tokenize_documents(documents, make_tokenizer(), LMDataConfig(train="a.jsonl"), progress=False)
    assert len(split) == 1


def test_a_looping_chat_template_stops_the_command_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from kdistill.tasks.causal_lm import chat

    monkeypatch.setattr(chat, "RENDER_SECONDS", 0.5)
    write_teacher(tmp_path / "teacher", tokenizer=make_tokenizer(chat_template=ENDLESS))
    record = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    (tmp_path / "chat.jsonl").write_text((json.dumps(record) + "\n") * 4, encoding="utf-8")
    config = {
        "task": "causal_lm",
        "teacher": {"path": str(tmp_path / "teacher")},
        "student": {"from_teacher": {"num_layers": 1}},
        "data": {"train": str(tmp_path / "chat.jsonl"), "max_length": 32},
        "output": {"dir": str(tmp_path / "run")},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    line = one_line(["distill", str(tmp_path / "run.yaml"), "--no-progress"], after_log=True)
    assert line.startswith(f"{PREFIX}the chat template in {str(tmp_path / 'teacher' / 'chat_template.jinja')!r}")
    assert "within 0.5 s (a loop that does not end?)" in line, line
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------
# ~ in a path key or a path flag
# ---------------------------------------------------------------------------

#: every path key of a text-classification run, and of a causal-LM run
CLASSIFICATION_PATHS = {
    "teacher.path": "~/teacher",
    "teacher.tokenizer": "~/tokenizer",
    "teacher.cache.dir": "~/cache",
    "student.path": "~/student",
    "student.tokenizer": "~/student-tokenizer",
    "data.train": "~/train.csv",
    "data.validation": "~/validation.csv",
    "data.test": "~/test.csv",
    "output.dir": "~/runs/x",
}
LM_PATHS = {**CLASSIFICATION_PATHS, "data.train": "~/train.txt", "data.validation": "~/v.txt", "data.test": "~/t.txt"}


def _nested(flat: dict[str, str]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, last = key.split(".")
        node = config
        for parent in parents:
            node = node.setdefault(parent, {})
        node[last] = value
    return config


@pytest.mark.parametrize(("task", "paths"), [("text_classification", CLASSIFICATION_PATHS), ("causal_lm", LM_PATHS)])
def test_every_path_key_expands_a_leading_tilde(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, task: str, paths: dict[str, str]
) -> None:
    from kdistill.app.config_loading import load_config

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = _nested(paths)
    config["task"] = task
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    loaded = load_config(tmp_path / "run.yaml")
    for key, value in paths.items():
        node: Any = loaded
        for part in key.split("."):
            node = getattr(node, part)
        assert node == str(tmp_path / "home" / value.removeprefix("~/")), key


def test_every_path_flag_expands_a_leading_tilde(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    parser = build_parser()
    home = str(tmp_path)
    args = parser.parse_args(["distill", "~/run.yaml", "--resume=~/runs/x"])
    assert (args.config, args.resume) == (f"{home}/run.yaml", f"{home}/runs/x")
    args = parser.parse_args(["eval", "~/runs/x", "--data=~/d.csv", "--teacher", "~/t", "--output=~/m.json"])
    assert (args.model, args.data, args.teacher, args.output) == tuple(
        f"{home}/{n}" for n in "runs/x d.csv t m.json".split()
    )
    args = parser.parse_args(["predict", "~/runs/x", "--data=~/d.csv", "--output=~/p.csv"])
    assert (args.model, args.data, args.output) == (f"{home}/runs/x", f"{home}/d.csv", f"{home}/p.csv")
    args = parser.parse_args(["export", "~/runs/x", "--output=~/onnx"])
    assert (args.model, args.output) == (f"{home}/runs/x", f"{home}/onnx")
    args = parser.parse_args(["inspect", "~/teacher", "~/student"])
    assert (args.teacher, args.student) == (f"{home}/teacher", f"{home}/student")
    # hub ids and relative paths are left as they are
    args = parser.parse_args(["inspect", "org/model", "runs/x/student"])
    assert (args.teacher, args.student) == ("org/model", "runs/x/student")


def test_output_dir_with_a_tilde_is_made_in_the_home_folder_not_in_a_folder_named_tilde(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``output.dir: ~/x`` made ``./~/x`` here while the command printed ``~/x``."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    code, err = run_command(["distill", str(workspace / "run.yaml"), "--no-progress", "output.dir=~/runs/x"])
    assert code == 0, err
    assert (tmp_path / "home" / "runs" / "x" / "student" / "config.json").is_file()
    assert not (tmp_path / "~").exists()
    config = yaml.safe_load((tmp_path / "home" / "runs" / "x" / "config.yaml").read_text(encoding="utf-8"))
    assert config["output"]["dir"] == str(tmp_path / "home" / "runs" / "x")


def _usage_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """A mistake in the arguments: argparse exits with status 2 and one line; that line."""
    with pytest.raises(SystemExit) as stopped:
        main(args)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_a_tilde_of_a_user_this_machine_does_not_have_is_one_line(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = one_line(["distill", str(workspace / "run.yaml"), "output.dir=~no-such-user-kdistill/x"])
    assert line == (
        f"{PREFIX}output.dir: '~no-such-user-kdistill/x' starts with ~no-such-user-kdistill, the home folder of a "
        "user 'no-such-user-kdistill' this machine does not have; give the full path"
    )
    line = _usage_error(
        ["predict", str(workspace / "model"), "--text", "x", "--output=~no-such-user-kdistill/p.csv"], capsys
    )
    assert "argument --output: '~no-such-user-kdistill/p.csv' starts with ~no-such-user-kdistill" in line, line


# ---------------------------------------------------------------------------
# a predictions file: only one that carries kdistill's marker is replaced
# ---------------------------------------------------------------------------


def test_a_file_whose_header_merely_looks_like_predictions_is_never_replaced(workspace: Path, tmp_path: Path) -> None:
    model = str(workspace / "model")
    mine = tmp_path / "scores.csv"
    mine.write_text("text,predicted_label,prob_neg,prob_pos\nmy notes,pos,0.1,0.9\n", encoding="utf-8")
    line = one_line(["predict", model, "--text", "good", "--output", str(mine)])
    assert line.endswith(
        f"--output {str(mine)!r} exists and is not a predictions file kdistill wrote: kdistill never replaces "
        "a file it did not write; give a new file name"
    ), line
    assert mine.read_text(encoding="utf-8") == "text,predicted_label,prob_neg,prob_pos\nmy notes,pos,0.1,0.9\n"


def test_kdistills_predictions_carry_a_marker_beside_them_and_stay_a_plain_csv(
    workspace: Path, tmp_path: Path
) -> None:
    import pandas as pd

    model = str(workspace / "model")
    out = tmp_path / "preds.csv"
    assert main(["predict", model, "--text", "good", "--text", "dull", "--output", str(out), "--no-progress"]) == 0
    marker = json.loads((tmp_path / "preds.csv.kdistill.json").read_text(encoding="utf-8"))
    from kdistill.files.ownership import file_sha256

    assert marker["kdistill"] == "predictions" and marker["file"] == "preds.csv"
    assert marker["sha256"] == file_sha256(out) and marker["rows"] == 2 and "replacing" not in marker
    # the CSV holds the predictions alone: csv and pandas read it as it is
    with out.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["text", "predicted_label", "prob_neg", "prob_mixed", "prob_pos"] and len(rows) == 3
    assert list(pd.read_csv(out)["text"]) == ["good", "dull"]
    # kdistill's own file is replaced, with its marker
    assert main(["predict", model, "--text", "fine", "--output", str(out), "--no-progress"]) == 0
    assert json.loads((tmp_path / "preds.csv.kdistill.json").read_text(encoding="utf-8"))["rows"] == 1
    # a copy without its marker, or the file once a person changed a number, is theirs
    copy = tmp_path / "copy.csv"
    copy.write_bytes(out.read_bytes())
    assert "is not a predictions file kdistill wrote" in one_line(
        ["predict", model, "--text", "x", "--output", str(copy)]
    )
    out.write_text(out.read_text(encoding="utf-8").replace(",mixed,", ",pos,"), encoding="utf-8")
    edited = out.read_bytes()
    assert "is not a predictions file kdistill wrote" in one_line(
        ["predict", model, "--text", "x", "--output", str(out)]
    )
    assert out.read_bytes() == edited
    assert not list(tmp_path.glob(".*.partial"))


def test_a_file_of_yours_in_the_markers_place_is_never_replaced(workspace: Path, tmp_path: Path) -> None:
    (tmp_path / "preds.csv.kdistill.json").write_text("my own notes\n", encoding="utf-8")
    line = one_line(["predict", str(workspace / "model"), "--text", "x", "--output", str(tmp_path / "preds.csv")])
    assert f"{str(tmp_path / 'preds.csv.kdistill.json')!r}, where kdistill keeps the proof" in line, line
    assert (tmp_path / "preds.csv.kdistill.json").read_text(encoding="utf-8") == "my own notes\n"
    assert not (tmp_path / "preds.csv").exists()


def test_a_write_stopped_midway_leaves_the_earlier_file_provably_kdistills(tmp_path: Path) -> None:
    from kdistill.files.ownership import is_marked_file, marker_path, write_marked_file

    path = tmp_path / "p.csv"
    write_marked_file(path, "predictions", lambda handle: handle.write("a\n1\n"), {})
    assert is_marked_file(path, "predictions")

    def stopped(handle: Any) -> None:
        handle.write("a\n2\n")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_marked_file(path, "predictions", stopped, {})
    assert path.read_text() == "a\n1\n" and is_marked_file(path, "predictions")
    assert not list(tmp_path.glob(".*.partial"))
    # killed after the marker named the new file and before the file took the old one's place
    record = json.loads(marker_path(path).read_text())
    marker_path(path).write_text(json.dumps({**record, "sha256": "0" * 64, "replacing": record["sha256"]}))
    assert is_marked_file(path, "predictions")
    assert not is_marked_file(path, "metrics")


# ---------------------------------------------------------------------------
# damaged GGUF files
# ---------------------------------------------------------------------------


def _gguf(folder: Path) -> Path:
    """A small GGUF file (a llama header, a vocabulary and two float tensors) in ``folder``."""
    gguf = pytest.importorskip("gguf", reason='the gguf extra (pip install "kdistill[gguf]") is not installed')
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(folder / "model.gguf"), "llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_token_list([f"t{i}" for i in range(20)])
    writer.add_tensor("token_embd.weight", np.ones((20, 8), dtype=np.float32))
    writer.add_tensor("output.weight", np.ones((20, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return folder / "model.gguf"


def _gguf_run(root: Path, folder: Path, plays: Path) -> list[str]:
    config = {
        "task": "causal_lm",
        "teacher": {"path": str(folder), "gguf_file": "model.gguf"},
        "student": {"from_teacher": {"num_layers": 1}},
        "data": {"train": str(plays), "max_length": 16},
        "output": {"dir": str(root / "run")},
    }
    (root / "gguf.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return ["distill", str(root / "gguf.yaml"), "--no-progress"]


def test_a_truncated_gguf_file_says_it_is_cut_short(tmp_path: Path) -> None:
    """It said "cannot reshape array of size 130 into shape (20,8)"."""
    whole = _gguf(tmp_path / "whole").read_bytes()
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "model.gguf").write_bytes(whole[: len(whole) - 300])
    (tmp_path / "play.txt").write_text("to be or not to be\n" * 20, encoding="utf-8")
    line = one_line(_gguf_run(tmp_path, tmp_path / "cut", tmp_path / "play.txt"))
    assert line == (
        f"{PREFIX}cannot load teacher {str(tmp_path / 'cut')!r}: its GGUF file 'model.gguf' is cut short: it has "
        f"{len(whole) - 300:,} bytes, and its header says that its tensors run to byte {len(whole):,} (a download or "
        "copy that stopped early?); download or convert the model again"
    ), line
    assert "reshape" not in line and not (tmp_path / "run").exists()
    # cut inside the header (its vocabulary)
    (tmp_path / "cut" / "model.gguf").write_bytes(whole[:200])
    line = one_line(_gguf_run(tmp_path, tmp_path / "cut", tmp_path / "play.txt"))
    assert "its GGUF file 'model.gguf' is cut short: it ends at byte 200, inside its header (" in line, line


def test_a_gguf_file_with_a_damaged_header_says_so(tmp_path: Path) -> None:
    """It said "It looks like the config file at '.../model.gguf' is not a valid JSON file"."""
    whole = _gguf(tmp_path / "whole").read_bytes()
    damaged = bytearray(whole)
    damaged[24:32] = b"\xff" * 8  # the length of the first key's name
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.gguf").write_bytes(bytes(damaged))
    (tmp_path / "play.txt").write_text("to be or not to be\n" * 20, encoding="utf-8")
    line = one_line(_gguf_run(tmp_path, tmp_path / "bad", tmp_path / "play.txt"))
    assert "JSON" not in line, line
    assert line.startswith(
        f"{PREFIX}cannot load teacher {str(tmp_path / 'bad')!r}: its GGUF file 'model.gguf' has a damaged header: "
        "a key name at byte 24 claims 18,446,744,073,709,551,615 bytes (the file has"
    ), line
    assert line.endswith("; download or convert the model again")
    # a key that is not UTF-8 text
    damaged = bytearray(whole)
    damaged[32] = 0xFF
    (tmp_path / "bad" / "model.gguf").write_bytes(bytes(damaged))
    line = one_line(_gguf_run(tmp_path, tmp_path / "bad", tmp_path / "play.txt"))
    assert "its GGUF file 'model.gguf' has a damaged header: a key name at byte 32 is not UTF-8 text; " in line, line
    assert "JSON" not in line
    # a file that is no GGUF at all
    from kdistill.models.gguf import gguf_problem

    (tmp_path / "bad" / "model.gguf").write_bytes(b"PK\x03\x04" + whole[4:])
    assert gguf_problem(tmp_path / "bad" / "model.gguf") == (
        "is not a GGUF file: it starts with b'PK\\x03\\x04', where a GGUF file starts with b'GGUF'"
    )
    from kdistill.tasks.causal_lm.models import load_lm_tokenizer

    with pytest.raises(ModelLoadError) as error:
        load_lm_tokenizer(str(tmp_path / "bad"), "teacher", gguf_file="model.gguf")
    assert "is not a GGUF file" in str(error.value) and "give the model's .gguf file (teacher.gguf_file)" in str(
        error.value
    )
    assert gguf_problem(tmp_path / "whole" / "model.gguf") is None


# ---------------------------------------------------------------------------
# a compression bomb
# ---------------------------------------------------------------------------


def test_a_compression_bomb_is_named_not_blamed_on_the_batch_size(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gzip file that decompresses to more than memory holds ended in "out of memory ...: lower the
    batch size"; what one compressed file may hold is bounded (here to 10 MB: the bomb holds 50)."""
    from kdistill.tasks.text_classification import formats

    bomb = tmp_path / "bomb.csv.gz"
    bomb.write_bytes(gzip.compress(b"text,label\n" + b"a" * 50_000_000 + b",pos\n", 9))
    assert bomb.stat().st_size < 100_000
    monkeypatch.setattr(formats, "decompressed_limit", lambda: 10_000_000, raising=False)
    line = one_line(["distill", str(workspace / "run.yaml"), "--no-progress", f"data.train={bomb}"])
    assert line == (
        f"{PREFIX}{str(bomb)!r} decompresses to more than 10.0 MB, the most kdistill reads from one compressed data "
        "file on this machine (an eighth of its memory): a compression bomb, or a data set too large to read "
        "whole; check what it holds (gzip -l), or give a smaller file"
    ), line
    assert "batch" not in line and not (workspace / "never").exists()
    line = one_line(["eval", str(workspace / "model"), "--data", str(bomb)])
    assert line.startswith(f"kdistill eval: error: {str(bomb)!r} decompresses to more than 10.0 MB"), line
    # running out of memory while decompressing says the same, not "lower the batch size"
    monkeypatch.setattr(formats, "decompressed_limit", lambda: 10**12)

    def no_memory(self: Any, size: int = -1) -> bytes:
        raise MemoryError

    monkeypatch.setattr(gzip.GzipFile, "read", no_memory)
    line = one_line(["eval", str(workspace / "model"), "--data", str(bomb)])
    assert f"{str(bomb)!r} decompresses to more than this machine's free memory holds" in line, line
    # the limit itself: an eighth of the machine's memory
    monkeypatch.undo()
    assert formats.decompressed_limit() * 8 <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------
# a symbolic link to a folder
# ---------------------------------------------------------------------------


def test_a_link_to_a_folder_is_called_a_link_not_a_file(workspace: Path, tmp_path: Path) -> None:
    """``teacher.cache`` or ``export --output`` given as a link to a folder said "is a file"."""
    from kdistill.cache import CacheFolderError, check_cache_folder

    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    line = one_line(["distill", str(workspace / "run.yaml"), "--no-progress", f"teacher.cache={tmp_path / 'link'}"])
    assert line == (
        f"{PREFIX}the teacher cache folder {str(tmp_path / 'link')!r} is a symbolic link (to "
        f"{str(tmp_path / 'real')!r}, a folder): kdistill never writes or replaces anything through a link; give "
        "the folder itself, or a new or empty folder for the cache"
    ), line
    with pytest.raises(CacheFolderError, match="is a symbolic link"):
        check_cache_folder(tmp_path / "link")
    (tmp_path / "to-csv.csv").symlink_to(workspace / "test.csv")
    line = one_line(["predict", str(workspace / "model"), "--text", "x", "--output", str(tmp_path / "to-csv.csv")])
    assert f"--output {str(tmp_path / 'to-csv.csv')!r} is a symbolic link (to " in line, line
    assert "a file): kdistill never writes or replaces anything through a link; give a predictions file" in line


def test_an_export_into_a_link_to_a_folder_is_called_a_link(workspace: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason='the onnx extra (pip install "kdistill[onnx]") is not installed')
    pytest.importorskip("onnxscript", reason='the onnx extra (pip install "kdistill[onnx]") is not installed')
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    line = one_line(["export", str(workspace / "model"), "--output", str(tmp_path / "link")])
    assert line == (
        f"kdistill export: error: the output {str(tmp_path / 'link')!r} is a symbolic link (to "
        f"{str(tmp_path / 'real')!r}, a folder): kdistill never writes or replaces anything through a link; give "
        "the folder itself, or a new folder for the export"
    ), line


# ---------------------------------------------------------------------------
# $KDISTILL_CACHE that is a file
# ---------------------------------------------------------------------------


def test_a_kdistill_cache_that_is_a_file_is_named_before_the_run_starts(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run failed mid-run, at its first stage, with "Not a directory" and no word of the variable."""
    from kdistill.files.locations import cache_root

    blocker = tmp_path / "cache-file"
    blocker.write_text("not a folder\n", encoding="utf-8")
    monkeypatch.setenv("KDISTILL_CACHE", str(blocker))
    run = tmp_path / "run"
    line = one_line(
        ["distill", str(workspace / "run.yaml"), "--no-progress", "teacher.cache=true", f"output.dir={run}"]
    )
    assert line == (
        f"{PREFIX}kdistill's cache folder {str(blocker)!r} (KDISTILL_CACHE) is a file, not a folder; point "
        "KDISTILL_CACHE at a folder (or unset it to use ~/.cache/kdistill)"
    ), line
    assert not run.exists() and blocker.read_text(encoding="utf-8") == "not a folder\n"
    monkeypatch.setenv("KDISTILL_CACHE", str(blocker / "below"))
    with pytest.raises(ConfigError, match=r"\(KDISTILL_CACHE\) lies under '.*cache-file', which is a file"):
        cache_root()
    monkeypatch.delenv("KDISTILL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    with pytest.raises(ConfigError, match=r"\(XDG_CACHE_HOME\) lies under .*set KDISTILL_CACHE to a folder"):
        cache_root()
    # a run that keeps nothing there is not stopped by it
    monkeypatch.setenv("KDISTILL_CACHE", str(blocker))
    code, err = run_command(["distill", str(workspace / "run.yaml"), "--check", "--no-progress"])
    assert code == 0, err


def test_a_bug_with_a_kdistill_cache_that_is_a_file_still_reports_in_one_line(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kdistill.app import cli

    blocker = tmp_path / "cache-file"
    blocker.write_text("", encoding="utf-8")
    monkeypatch.setenv("KDISTILL_CACHE", str(blocker))

    def broken(args: Any) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setitem(cli.COMMANDS, "inspect", broken)
    assert main(["inspect", str(workspace / "teacher")]) == 1
    err = capsys.readouterr().err
    assert "internal error (a bug in kdistill, not in your input): RuntimeError: a bug" in err
    assert "the full traceback is in the lines above" in err


# ---------------------------------------------------------------------------
# a URL as a data path
# ---------------------------------------------------------------------------


def test_a_url_as_a_data_path_is_named_whole_with_the_way_to_read_it(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It said "data file 'https:/example.com/train.csv' not found": a slash lost, no word of URLs."""
    url = "https://example.com/data/train.csv"
    line = one_line(["distill", str(workspace / "run.yaml"), f"data.train={url}"])
    assert line == (
        f"{PREFIX}data.train: {url!r} is a URL, and kdistill reads files on this machine: download it first and "
        "give its path, or name a data set on the hub with data.hub: {id: ...}"
    ), line
    line = _usage_error(["eval", str(workspace / "model"), "--data", url], capsys)
    assert line.startswith(f"kdistill eval: error: argument --data: {url!r} is a URL"), line
    line = one_line(["distill", str(workspace / "run.yaml"), "teacher.path=https://huggingface.co/org/model"])
    assert "teacher.path: 'https://huggingface.co/org/model' is a URL: give a model folder on this machine" in line
    lm = {"task": "causal_lm", "teacher": {"path": "t"}, "student": {"from_teacher": {"num_layers": 1}}}
    lm["data"] = {"train": "s3://bucket/train.txt"}
    (tmp_path / "lm.yaml").write_text(yaml.safe_dump(lm), encoding="utf-8")
    line = one_line(["distill", str(tmp_path / "lm.yaml")])
    assert line == (
        f"{PREFIX}data.train: 's3://bucket/train.txt' is a URL, and kdistill reads files on this machine: download "
        "it first and give its path"
    ), line


# ---------------------------------------------------------------------------
# the staging folder of an export killed midway
# ---------------------------------------------------------------------------

KILLED_EXPORT = textwrap.dedent(
    """
    import os, signal, sys
    from kdistill.tasks.text_classification.onnx import export

    def killed(*args, **kwargs):
        folder = args[4]
        (folder / "model.onnx").write_bytes(b"half an export")
        os.kill(os.getpid(), signal.SIGKILL)

    export._build = killed
    export.export_onnx(sys.argv[1], sys.argv[2], latency=False)
    """
)


@pytest.mark.slow
def test_an_export_killed_midway_leaves_a_staging_folder_the_next_export_deletes(
    workspace: Path, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime", reason='the onnx extra (pip install "kdistill[onnx]") is not installed')
    pytest.importorskip("onnxscript", reason='the onnx extra (pip install "kdistill[onnx]") is not installed')
    import kdistill

    out = tmp_path / "model-onnx"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_EXPORT, str(workspace / "model"), str(out)], capture_output=True, timeout=600
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    (left,) = tmp_path.glob(".model-onnx.building-*")
    assert (left / "model.onnx").read_bytes() == b"half an export" and not out.exists()
    # what is not provably a killed export's own stays: a folder of yours named alike, one of a process that runs
    mine = tmp_path / ".model-onnx.building-12"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n", encoding="utf-8")
    live = tmp_path / f".model-onnx.building-{os.getppid()}"
    live.mkdir()
    (live / ".kdistill-staging.json").write_text(
        json.dumps({"kdistill": "onnx-export-staging", "for": "model-onnx", "pid": os.getppid()}), encoding="utf-8"
    )
    report = kdistill.export_onnx(workspace / "model", out, latency=False)
    assert report["checks"]["onnxruntime"]["max_abs_diff"] <= 1e-4
    assert not left.exists() and mine.is_dir() and live.is_dir()
    assert not (out / ".kdistill-staging.json").exists()
    assert ".kdistill-staging.json" not in json.loads((out / ".kdistill-files.json").read_text())["files"]
    assert sorted(p.name for p in tmp_path.glob(".model-onnx.*")) == sorted([mine.name, live.name])
