"""Bad input a user can cause, each refused in one line: on the command line exit status 2 and no
traceback, in Python a ``ValueError`` with the same text. Also keeps docs/reliability.md honest:
every test its table names exists."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest
import torch
from cli_helpers import one_line, write_run_config
from text_fixtures import save_classifier, sentences, write_csv

from kdistill.app.cli import main

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "kdistill distill: error: "


def _custom_code_model(folder: Path, marker: Path) -> None:
    """A model folder whose config asks for its own Python code, which would leave ``marker``."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "homemade",
                "architectures": ["HomemadeModel"],
                "auto_map": {
                    "AutoConfig": "homemade.HomemadeConfig",
                    "AutoModelForSequenceClassification": "homemade.HomemadeModel",
                },
            }
        ),
        encoding="utf-8",
    )
    (folder / "homemade.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n", encoding="utf-8"
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import ElectraConfig, ElectraForSequenceClassification

    root = tmp_path_factory.mktemp("reliability")
    labels = {0: "neg", 1: "pos"}
    save_classifier(root / "teacher", num_layers=2, hidden=32, heads=4, seed=1, id2label=labels)
    save_classifier(root / "teacher3", num_layers=2, hidden=32, heads=4, seed=1, num_labels=3)
    save_classifier(root / "student3", num_layers=1, hidden=16, heads=2, num_labels=3)
    # an architecture whose attention kdistill cannot recompute (its tokenizer is the teacher's)
    save_classifier(root / "electra", num_layers=1, hidden=32, heads=4, id2label=labels)
    (root / "electra" / "model.safetensors").unlink()
    ElectraForSequenceClassification(
        ElectraConfig(
            vocab_size=35,
            embedding_size=32,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
            id2label=labels,
            label2id={"neg": 0, "pos": 1},
        )
    ).save_pretrained(root / "electra")
    _custom_code_model(root / "homemade", root / "code-ran")
    write_csv(root / "train.csv", sentences(48, seed=0, labels=("neg", "pos")))
    write_csv(root / "test.csv", sentences(16, seed=1, labels=("neg", "pos")))
    write_csv(root / "test_unseen.csv", [("good film", "pos"), ("odd film", "meh")])
    write_csv(root / "empty.csv", [])
    write_csv(root / "one_row.csv", [("good film", "pos")])
    write_run_config(root)
    return root


TERMS = ["objective.preset=null", "objective.temperature=null", "objective.alpha=null"]

CASES = {
    "teacher classes": (
        ["teacher.path={ws}/teacher3"],
        "the teacher predicts 3 classes but the training data has 2 labels (neg, pos)",
    ),
    "student classes": (
        ["student.from_teacher=null", "student.path={ws}/student3"],
        "the student '{ws}/student3' predicts 3 classes but the training data has 2 labels (neg, pos)",
    ),
    "unseen label": (
        ["data.test={ws}/test_unseen.csv"],
        "{ws}/test_unseen.csv: label 'meh' (data row 2) is not among the known labels neg, pos",
    ),
    "empty file": (["data.train={ws}/empty.csv"], "data file '{ws}/empty.csv' holds no examples"),
    "empty split": (["data.test={ws}/empty.csv"], "data file '{ws}/empty.csv' holds no examples"),
    "too few to split": (["data.train={ws}/one_row.csv"], "has 1 example(s): too few to hold out a validation split"),
    "teacher nowhere": (["teacher.path=nosuch/teacher"], "cannot load teacher 'nosuch/teacher': "),
    "temperature 0": (["objective.temperature=0"], "objective.temperature: Input should be greater than 0, got 0"),
    "term temperature": (
        [*TERMS, "objective.terms.kd.type=kd", "objective.terms.kd.temperature=-1"],
        "objective.terms.kd.temperature: Input should be greater than 0, got -1",
    ),
    "alpha above 1": (["objective.alpha=1.5"], "objective.alpha: Input should be less than or equal to 1, got 1.5"),
    "alpha below 0": (
        ["objective.alpha=-0.1"],
        "objective.alpha: Input should be greater than or equal to 0, got -0.1",
    ),
    "attention unsupported": (
        [*TERMS, "objective.terms.att.type=attention_mse", "teacher.path={ws}/electra"],
        "objective (distill stage), the teacher: kdistill cannot recompute attention maps for model type 'electra'",
    ),
    "attention layer": (
        [*TERMS, "objective.terms.att.type=attention_kl", "objective.terms.att.layer_map={1: 5}"],
        "objective: teacher layer 5 is out of range: the teacher (BertForSequenceClassification) has "
        "attention layers 1..2",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_the_same_value_error_in_python(workspace: Path, case: str) -> None:
    from kdistill.app.config_loading import load_config
    from kdistill.app.run import prepare_run

    overrides, expected = CASES[case]
    overrides = [item.replace("{ws}", str(workspace)) for item in overrides]
    expected = expected.replace("{ws}", str(workspace))
    line = one_line(["distill", str(workspace / "run.yaml"), "--no-progress", *overrides])
    assert line.startswith(PREFIX) and expected in line, line
    if case == "teacher nowhere":  # a name like org/model: neither a folder here nor reachable on the hub
        assert "there is no folder 'nosuch/teacher' here" in line and "teacher.package=" in line, line
    assert not (workspace / "never").exists()
    with pytest.raises(ValueError) as error:
        prepare_run(load_config(workspace / "run.yaml", overrides), progress=False)
    assert str(error.value) == line.removeprefix(PREFIX)


def test_a_models_own_code_never_runs_unless_trusted(workspace: Path) -> None:
    from kdistill.app.config_loading import load_config

    assert load_config(workspace / "run.yaml").teacher.trust_remote_code is False
    line = one_line(
        ["distill", str(workspace / "run.yaml"), "--no-progress", f"teacher.path={workspace / 'homemade'}"]
    )
    assert line == (
        f"{PREFIX}cannot load teacher '{workspace / 'homemade'}': it ships its own Python code, which "
        "kdistill runs only when trust_remote_code is on (teacher.trust_remote_code: true in a config; "
        "read that code first)"
    )
    assert not (workspace / "code-ran").exists()


def test_a_config_cannot_build_objects_or_run_code(workspace: Path) -> None:
    config = workspace / "tagged.yaml"
    config.write_text(
        f"teacher: !!python/object/apply:os.system ['touch {workspace / 'yaml-ran'}']\n", encoding="utf-8"
    )
    line = one_line(["distill", str(config)])
    assert line == (
        f"{PREFIX}config file {str(config)!r} is not valid YAML: could not determine a constructor for "
        "the tag 'tag:yaml.org,2002:python/object/apply:os.system' at line 1, column 10"
    )
    assert not (workspace / "yaml-ran").exists()


def test_a_nan_loss_stops_the_command_in_one_line_and_keeps_the_last_good_checkpoint(
    workspace: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "run"
    args = [
        "distill",
        str(workspace / "run.yaml"),
        "--no-progress",
        "training.lr=1.0e30",
        "training.max_steps=3",
        "output.save_every=1",
        f"output.dir={folder}",
    ]
    line = one_line(args, after_log=True)
    assert line == (
        f"{PREFIX}the loss part kd, ce is NaN at step 2 (epoch 0, batch 1); the update was not applied: "
        f"the run stopped; the last good checkpoint is kept in {folder / 'checkpoints' / 'distill'}. Lower "
        "the learning rate, use bf16 instead of fp16, or set on_nonfinite='skip' (training.on_nonfinite: "
        "skip in a config) to skip such steps"
    )
    assert (folder / "checkpoints" / "distill" / "checkpoint-00000001").is_dir()
    assert not (folder / "student").exists()
    assert "run stopped: NonFiniteLossError" in (folder / "run.log").read_text(encoding="utf-8")


def test_a_checkpoint_holding_a_pickle_is_refused_on_resume_in_one_line(workspace: Path, tmp_path: Path) -> None:
    folder = tmp_path / "run"
    code = main(
        [
            "distill",
            str(workspace / "run.yaml"),
            "--no-progress",
            "training.max_steps=2",
            "output.save_every=1",
            f"output.dir={folder}",
        ]
    )
    assert code == 0
    # as if killed before its end: no report, the stage not marked finished
    (folder / "report.md").unlink()
    stage = folder / "checkpoints" / "distill"
    (stage / "finished.json").unlink()
    newest = sorted(stage.glob("checkpoint-*"))[-1]
    marker = tmp_path / "pickle-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"step": 2, "payload": Payload()}, newest / "training_state.pt")
    data = (newest / "training_state.pt").read_bytes()
    manifest = json.loads((newest / "manifest.json").read_text())
    manifest["files"]["training_state.pt"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (newest / "manifest.json").write_text(json.dumps(manifest))
    line = one_line(["distill", "--resume", str(folder), "--no-progress"], after_log=True)
    assert line.startswith(f"{PREFIX}{newest / 'training_state.pt'} holds objects that cannot be loaded safely")
    assert line.endswith("kdistill loads checkpoints with torch.load(weights_only=True) only")
    assert not marker.exists()


# ---------------------------------------------------------------------------
# the Python API: models and data that do not fit are ValueErrors naming both sides
# ---------------------------------------------------------------------------

BATCH = [(torch.randn(4, 16), torch.tensor([0, 1, 0, 1]))]


def test_a_student_with_other_classes_than_the_teacher_is_a_value_error() -> None:
    from conftest import mlp

    from kdistill import distill

    with pytest.raises(
        ValueError,
        match=re.escape(
            "student and teacher logits must have the same shape, got student (4, 2) and teacher (4, 3) (the "
            "class/vocabulary sizes differ: teacher and student must share the label set or vocabulary"
        ),
    ):
        distill(mlp(16, 32, 3), mlp(16, 8, 2, seed=1), BATCH, progress=False)


def test_a_label_outside_the_students_classes_is_a_value_error() -> None:
    from conftest import mlp

    from kdistill import distill

    with pytest.raises(
        ValueError,
        match=re.escape(
            "label 5 is outside the model's 3 classes (0..2); check num_labels of the student and the label column"
        ),
    ):
        distill(
            mlp(16, 32, 3), mlp(16, 8, 3, seed=1), [(torch.randn(4, 16), torch.tensor([0, 1, 5, 1]))], progress=False
        )


def test_an_empty_loader_is_a_value_error() -> None:
    from conftest import mlp
    from torch.utils.data import DataLoader

    from kdistill import distill

    with pytest.raises(ValueError, match="^train_loader is empty: there is nothing to train on$"):
        distill(mlp(16, 32, 3), mlp(16, 8, 3, seed=1), DataLoader([]), progress=False)


# ---------------------------------------------------------------------------
# docs/reliability.md
# ---------------------------------------------------------------------------

TEST_ID = re.compile(r"(tests/[\w/]+\.py)::(test_\w+)")


def test_every_test_the_reliability_table_names_exists() -> None:
    rows = [
        line
        for line in (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("|") and not set(line) <= set("|- ")
    ]
    header, body = rows[0], rows[1:]
    assert header.split("|")[1:5] == [" bad input ", " what the user sees ", " where ", " checked by "], header
    assert len(body) >= 20
    missing = []
    for row in body:
        named = TEST_ID.findall(row.split("|")[4])
        assert named, f"a row without a test: {row}"
        for file, name in named:
            path = ROOT / file
            if not path.is_file() or not re.search(rf"^def {name}\(", path.read_text(encoding="utf-8"), re.MULTILINE):
                missing.append(f"{file}::{name}")
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"
