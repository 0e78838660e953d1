"""A hostile new user's inputs (issue 13): each is refused with one line (exit 2, no traceback) and
the same ValueError in Python, or measured correctly, never a silent wrong result. Each case
failed before its fix (a traceback, a silent result, or a run that died part-way)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from cli_helpers import one_line, run_command, write_run_config
from text_fixtures import save_classifier, sentences, write_csv, write_tokenizer

PREFIX = "kdistill distill: error: "


def _pickled_model(folder: Path, marker: Path) -> None:
    save_classifier(folder, num_layers=1, hidden=32, heads=4, id2label={0: "neg", 1: "pos"})
    (folder / "model.safetensors").unlink()

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"weight": Payload()}, folder / "pytorch_model.bin")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    root = tmp_path_factory.mktemp("hostile")
    labels = {0: "neg", 1: "pos"}
    save_classifier(root / "teacher", num_layers=2, hidden=32, heads=4, seed=1, id2label=labels)
    _pickled_model(root / "pickled", root / "pickle-ran")
    save_classifier(root / "truncated", num_layers=1, hidden=32, heads=4, id2label=labels)
    weights = root / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    # a model whose embeddings are smaller than its tokenizer's vocabulary (someone else's tokenizer)
    write_tokenizer(root / "small_vocab")
    BertForSequenceClassification(
        BertConfig(
            vocab_size=12,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
            id2label=labels,
            label2id={"neg": 0, "pos": 1},
        )
    ).save_pretrained(root / "small_vocab")
    write_csv(root / "train.csv", sentences(48, seed=0, labels=("neg", "pos")))
    write_csv(root / "test.csv", sentences(16, seed=1, labels=("neg", "pos")))
    (root / "dup_header.csv").write_text("text,text,label\ngood film,bad film,pos\n" * 3, encoding="utf-8")
    write_csv(root / "empty_text.csv", [*sentences(10, labels=("neg", "pos")), ("   ", "pos")])
    (root / "list_text.jsonl").write_text(
        '{"text": "good", "label": "pos"}\n{"text": ["a", "b"], "label": "neg"}\n', encoding="utf-8"
    )
    (root / "number_text.jsonl").write_text('{"text": 12, "label": "pos"}\n', encoding="utf-8")
    (root / "dup_key.jsonl").write_text('{"text": "good", "text": "bad", "label": "pos"}\n', encoding="utf-8")
    (root / "list_label.jsonl").write_text('{"text": "good", "label": ["pos"]}\n', encoding="utf-8")
    (root / "a_file").write_text("not a folder\n", encoding="utf-8")
    (root / "scores.csv").write_text(
        "text,label\n" + "".join(f"good film {i},{i / 7:.3f}\n" for i in range(30)), encoding="utf-8"
    )
    (root / "ids.csv").write_text(
        "id,text,label\n" + "".join(f"{i},good film {i},{i % 2}\n" for i in range(30)), encoding="utf-8"
    )
    write_run_config(root)
    return root


CASES = {
    # the most likely first mistake: an example's num_labels left unchanged on another task
    "num_labels of another task": (
        ["teacher.num_labels=3", "teacher.finetune.epochs=1"],
        "teacher.num_labels is 3 but the training data has 2 labels (neg, pos); set "
        "teacher.num_labels: 2, or leave it out to count the data's labels",
    ),
    "pickled weights": (
        ["teacher.path={ws}/pickled"],
        "its weights file (pytorch_model.bin) holds Python objects that cannot be loaded safely "
        "(Trying to load unsupported GLOBAL posix.system",
    ),
    "truncated weights": (
        ["teacher.path={ws}/truncated"],
        "its weights file (model.safetensors) is damaged or truncated",
    ),
    "encoding that is no text codec": (["data.encoding=base64"], "data.encoding: 'base64' is not a text encoding"),
    "text transform as encoding": (["data.encoding=rot13"], "data.encoding: 'rot13' is not a text encoding"),
    "negative seed": (["training.seed=-1"], "training.seed: Input should be greater than or equal to 0, got -1"),
    "seed too large": (
        ["training.seed=99999999999"],
        "training.seed: Input should be less than or equal to 2147483647",
    ),
    "negative split seed": (["data.split_seed=-5"], "data.split_seed: Input should be greater than or equal to 0"),
    "max_length past the positions": (
        ["data.max_length=100"],
        "data.max_length 100 is more than the teacher's 64 token positions: it would "
        "fail on the first text that long; set data.max_length to 64 or less",
    ),
    "absurd batch": (
        ["training.batch_size=100000000"],
        "training.batch_size: Input should be less than or equal to 65536",
    ),
    "absurd epochs": (
        ["training.epochs=10000000000"],
        "training.epochs: Input should be less than or equal to 100000",
    ),
    "absurd student": (
        ["student.from_teacher.hidden_size=1000000"],
        "student.from_teacher.hidden_size: Input should be less than or equal to 65536",
    ),
    "NaN learning rate": (["training.lr=.nan"], "training.lr: Input should be a finite number"),
    "infinite temperature": (["objective.temperature=.inf"], "objective.temperature: Input should be a finite number"),
    "infinite clipping": (["training.max_grad_norm=.inf"], "training.max_grad_norm: Input should be a finite number"),
    "labels read as texts": (
        ["data.text_column=label"],
        "data: label_column and text_column name the same column 'label'",
    ),
    "test file is the training file": (
        ["data.test={ws}/train.csv"],
        "data.test is the training file '{ws}/train.csv': give held-out examples",
    ),
    "validation file is the training file": (
        ["data.validation={ws}/train.csv"],
        "data.validation is the training file",
    ),
    "a column twice in the header": (
        ["data.train={ws}/dup_header.csv"],
        "the header names the column 'text' twice (columns 1 and 2)",
    ),
    "an empty text": (
        ["data.train={ws}/empty_text.csv"],
        "1 example(s) with an empty text (data row 11); remove them or give them a text",
    ),
    "a list as text": (
        ["data.train={ws}/list_text.jsonl"],
        "the text of data row 2 is a list, not a string (1 such row(s)); give every text as a string",
    ),
    "a number as text": (["data.train={ws}/number_text.jsonl"], "the text of data row 1 is a number, not a string"),
    "a key twice in a JSON record": (
        ["data.train={ws}/dup_key.jsonl"],
        "line 1: the key 'text' is given twice in one record",
    ),
    "a list as label": (["data.train={ws}/list_label.jsonl"], "the label of data row 1 is a list"),
    "someone else's tokenizer": (
        ["student.from_teacher=null", "student.path={ws}/small_vocab"],
        "the student's embeddings have 12 rows: the tokenizer (the student's tokenizer) does not "
        "belong to this model; give the model's own tokenizer",
    ),
    "measurements as labels": (
        ["data.train={ws}/scores.csv", "data.test=null", "teacher.finetune.epochs=1"],
        "the labels are numbers with fractions (0.143 among 27 values): kdistill distils "
        "classifiers, which need class labels; check data.label_column",
    ),
    "an id column as labels": (
        ["data.train={ws}/ids.csv", "data.test=null", "data.label_column=id", "teacher.finetune.epochs=1"],
        "data.label_column has 27 different values in 27 training examples: it looks like ids "
        "or texts, not class labels (0, 1, 2 ...)",
    ),
    "the cache in the run folder itself": (
        ["teacher.cache={ws}/never", "output.dir={ws}/never"],
        "teacher.cache '{ws}/never' holds output.dir '{ws}/never': the cache needs a folder of its own",
    ),
    "a file as the cache folder": (
        ["teacher.cache={ws}/a_file"],
        "the teacher cache folder '{ws}/a_file' is a file, not a folder",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_is_one_line_and_the_same_value_error_in_python(workspace: Path, case: str) -> None:
    from kdistill.app.config_loading import load_config
    from kdistill.app.run import check_run_folder, prepare_run

    overrides, expected = CASES[case]
    overrides = [item.replace("{ws}", str(workspace)) for item in overrides]
    expected = expected.replace("{ws}", str(workspace))
    line = one_line(["distill", str(workspace / "run.yaml"), "--no-progress", *overrides])
    assert line.startswith(PREFIX) and expected in line, line
    assert not (workspace / "never").exists() and not (workspace / "pickle-ran").exists()
    with pytest.raises(ValueError) as error:
        config = load_config(workspace / "run.yaml", overrides)
        check_run_folder(config)
        prepare_run(config, progress=False)
    assert str(error.value) == line.removeprefix(PREFIX)


def test_a_config_with_a_key_twice_is_refused(workspace: Path) -> None:
    config = workspace / "twice.yaml"
    config.write_text((workspace / "run.yaml").read_text() + "training: {epochs: 5}\n", encoding="utf-8")
    line = one_line(["distill", str(config)])
    assert "is not valid YAML: the key 'training' is given twice (first at line" in line, line
    # merge keys (<<) may be overridden: that is what they are for
    merged = workspace / "merged.yaml"
    merged.write_text("base: &base {epochs: 1, lr: 0.1}\n", encoding="utf-8")
    from kdistill.app.config_loading import read_yaml

    assert read_yaml("base: &b {epochs: 1, lr: 0.1}\ntraining: {<<: *b, lr: 0.2}\n")["training"] == {
        "epochs": 1,
        "lr": 0.2,
    }
    line = one_line(["distill", str(workspace / "run.yaml"), "training.epochs={a: 1, a: 2}"])
    assert "the key 'a' is given twice" in line, line


def test_a_yaml_alias_bomb_and_a_huge_config_end_quickly_in_one_line(workspace: Path) -> None:
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    levels += [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(14)]
    bomb = workspace / "bomb.yaml"
    bomb.write_text("\n".join(levels) + "\nteacher: {path: *o}\n", encoding="utf-8")
    line = one_line(["distill", str(bomb)])
    assert "more than 100 aliases" in line, line
    huge = workspace / "huge.yaml"
    huge.write_text("# padding\n" * 200_000, encoding="utf-8")
    line = one_line(["distill", str(huge)])
    assert "a config is a short YAML file" in line, line


def test_a_batch_that_cannot_fit_in_memory_is_refused_before_the_run(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kdistill.models.preflight as preflight

    monkeypatch.setattr(preflight, "machine_memory", lambda: 2 * 10**9)
    line = one_line(["distill", str(workspace / "run.yaml"), "training.batch_size=60000"])
    assert "a batch of 60000 texts of up to 16 tokens would need about" in line and "2 GB of memory" in line, line
    assert "lower training.batch_size (training.gradient_accumulation_steps keeps the effective batch)" in line
    line = one_line(
        [
            "distill",
            str(workspace / "run.yaml"),
            "student.from_teacher.hidden_size=20000",
            "student.from_teacher.num_heads=4",
            "student.from_teacher.init=random",
        ]
    )
    assert "a student of 1 layers and width 20000" in line and "lower student.from_teacher" in line, line
    assert not (workspace / "never").exists()


def test_eval_refuses_a_model_without_a_trained_head_and_a_length_past_its_positions(
    workspace: Path, tmp_path: Path
) -> None:
    from transformers import BertConfig, BertModel

    headless = tmp_path / "headless"
    write_tokenizer(headless)
    BertModel(
        BertConfig(
            vocab_size=35,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    ).save_pretrained(headless)
    args = [
        "eval",
        str(headless),
        "--data",
        str(workspace / "test.csv"),
        "--no-progress",
        "--output",
        str(tmp_path / "m.json"),
    ]
    code, err = run_command(args)
    assert code == 2 and "kdistill eval: error: the model" in err and "has untrained weights" in err, err
    assert "evaluate a classifier trained for this task" in err and not (tmp_path / "m.json").exists()
    code, err = run_command(
        [
            "eval",
            str(workspace / "teacher"),
            "--data",
            str(workspace / "test.csv"),
            "--no-progress",
            "--max-length",
            "500",
            "--output",
            str(tmp_path / "m.json"),
        ]
    )
    assert code == 2 and "--max-length 500 is more than the model's 64 token positions" in err, err


def test_a_bug_is_one_line_with_the_traceback_in_a_crash_file(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kdistill.app.run as run_module

    def broken_plot(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in the plot")

    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "home"))
    monkeypatch.setattr(run_module, "plot_curves", broken_plot)
    folder = tmp_path / "run"
    code, err = run_command(["distill", str(workspace / "run.yaml"), "--no-progress", f"output.dir={folder}"])
    last = err.strip().splitlines()[-1]
    assert code == 1 and "Traceback" not in err, err
    assert last.startswith(
        "kdistill distill: internal error (a bug in kdistill, not in your input): RuntimeError: "
        "a bug in the plot; the full traceback is in "
    ), last
    crash = Path(last.rsplit(" ", 1)[-1])
    assert crash.parent == tmp_path / "home" / "crashes" and "Traceback" in crash.read_text()
    log = (folder / "run.log").read_text(encoding="utf-8")
    assert "run stopped: RuntimeError: a bug in the plot" in log and "Traceback" in log
    # what was trained stays
    assert (folder / "student" / "model.safetensors").is_file() and (folder / "metrics.json").is_file()


# ---------------------------------------------------------------------------
# the Python API: silent wrong results
# ---------------------------------------------------------------------------


def test_a_teacher_with_nan_or_inf_logits_is_named_not_the_learning_rate() -> None:
    from conftest import mlp
    from torch import nn

    from kdistill import distill
    from kdistill.errors import NonFiniteTeacherError
    from kdistill.losses.functional import soft_kd

    for bad in (float("nan"), float("inf")):
        teacher_logits = torch.randn(4, 3)
        teacher_logits[1, 2] = bad
        assert torch.isnan(soft_kd(torch.randn(4, 3), teacher_logits))  # not 0.0: a broken teacher is not perfect
    teacher = mlp(16, 32, 3)
    with torch.no_grad():
        teacher[2].bias[0] = float("nan")
    batches = [(torch.randn(4, 16), torch.tensor([0, 1, 2, 1]))]
    with pytest.raises(
        NonFiniteTeacherError,
        match=r"^the teacher's logits hold NaN or infinite values at step 1 "
        r".*The teacher is broken, not the training settings",
    ) as error:
        distill(teacher, mlp(16, 8, 3, seed=1), batches, progress=False)
    assert isinstance(error.value, ValueError)
    assert "learning rate" not in str(error.value)
    assert isinstance(teacher, nn.Module)


def test_a_teacher_with_nan_outputs_is_not_cached(tmp_path: Path) -> None:
    from conftest import tiny_bert
    from test_cache import _token_examples, pad_collate

    from kdistill.cache import TeacherCache
    from kdistill.errors import NonFiniteTeacherError

    teacher = tiny_bert(num_layers=1, hidden=16, heads=2)
    with torch.no_grad():
        teacher.classifier.bias[0] = float("inf")
    with pytest.raises(NonFiniteTeacherError, match="a cache of them would poison every step"):
        TeacherCache.build(teacher, _token_examples(8), tmp_path / "cache", collate_fn=pad_collate, progress=False)
    assert not (tmp_path / "cache").exists()


def test_losses_of_an_empty_batch_are_zero_not_nan() -> None:
    from kdistill import DistillationLoss
    from kdistill.losses import functional as LF

    student = torch.zeros(0, 3, requires_grad=True)
    loss = DistillationLoss(temperature=4.0, alpha=0.5)(student, torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    for function in (LF.soft_kd, LF.reverse_kl, LF.logit_mse):
        assert function(torch.zeros(0, 5), torch.zeros(0, 5)).item() == 0.0


def test_the_report_says_which_student_its_numbers_describe(workspace: Path, tmp_path: Path) -> None:
    folder = tmp_path / "run"
    code, err = run_command(
        [
            "distill",
            str(workspace / "run.yaml"),
            "--no-progress",
            f"output.dir={folder}",
            "training.epochs=3",
            "output.save_checkpoints=false",
        ]
    )
    assert code == 0, err
    report = (folder / "report.md").read_text(encoding="utf-8")
    metrics = json.loads((folder / "metrics.json").read_text())
    last = metrics["validation"][-1]
    assert (
        f"`student/` (measured above) is the student after the last step: validation accuracy "
        f"{last['accuracy']:.4f} at step {int(last['global_step'])}" in report
    )
    assert "is the student kept in `checkpoints/best-student/`" in report
    assert (folder / "checkpoints" / "best-student" / "model.safetensors").is_file()  # kept without checkpoints


def test_a_data_file_with_a_nul_byte_or_ragged_rows_is_one_line(workspace: Path, tmp_path: Path) -> None:
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("text,label\ngood film,pos\nbad,film,neg,extra\n", encoding="utf-8")
    line = one_line(["distill", str(workspace / "run.yaml"), f"data.train={ragged}"])
    assert f"cannot read {str(ragged)!r} as csv" in line, line
    binary = tmp_path / "binary.csv"
    shutil.copy(workspace / "train.csv", binary)
    with binary.open("ab") as handle:
        handle.write(b"\x00\x01\x02\xff\xfe")
    line = one_line(["distill", str(workspace / "run.yaml"), f"data.train={binary}"])
    assert "is not valid utf-8 text" in line, line


def _consistent_checkpoint_file(checkpoint: Path, name: str) -> None:
    """Record the size and SHA-256 of the checkpoint's edited file ``name`` in its manifest, as an
    edit by hand would: the checksums alone no longer tell."""
    import hashlib

    data = (checkpoint / name).read_bytes()
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


def test_a_checkpoint_that_passes_its_checksums_but_does_not_fit_is_one_line_on_resume(
    workspace: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "run"
    code, err = run_command(
        [
            "distill",
            str(workspace / "run.yaml"),
            "--no-progress",
            "training.max_steps=2",
            "output.save_every=1",
            f"output.dir={folder}",
        ]
    )
    assert code == 0, err
    # as if killed before its end: no report, the stage not marked finished
    (folder / "report.md").unlink()
    stage = folder / "checkpoints" / "distill"
    (stage / "finished.json").unlink()
    newest = sorted(stage.glob("checkpoint-*"))[-1]
    weights = newest / "student.safetensors"
    tensors = load_file(weights)
    name = next(key for key in sorted(tensors) if tensors[key].dim() == 2)
    tensors[name] = torch.zeros(tensors[name].shape[0] + 1, tensors[name].shape[1])
    save_file(tensors, weights)
    _consistent_checkpoint_file(newest, "student.safetensors")
    line = one_line(["distill", "--resume", str(folder), "--no-progress"], after_log=True)
    assert line.startswith(f"{PREFIX}{weights} does not fit the student (") and "size mismatch for" in line, line
