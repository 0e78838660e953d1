"""Students whose layers are chosen by measured importance: block influence, greedy removal by
the calibration loss, and ``student.from_teacher: {layer_map: importance}`` in a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import run_command, write_run_config
from conftest import tiny_bert
from lm_fixtures import tiny_decoder, write_plays
from torch import nn
from torch.testing import assert_close

from kdistill.app.config_loading import load_config
from kdistill.errors import ConfigError
from kdistill.models.importance import block_influence, choose_layers, greedy_removal, kept_layers, top_layers
from kdistill.models.student import make_student

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _batches(vocab: int = 300, seed: int = 0, pad: int = 0) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (3, 12), generator=generator)
    mask = torch.ones_like(ids)
    if pad:
        ids = torch.cat([ids, torch.zeros(3, pad, dtype=torch.long)], dim=1)
        mask = torch.cat([mask, torch.zeros(3, pad, dtype=torch.long)], dim=1)
    return [{"input_ids": ids, "attention_mask": mask}]


def _lm_loss(batches: list[dict[str, torch.Tensor]]):
    @torch.no_grad()
    def loss_of(model: nn.Module) -> float:
        batch = batches[0]
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return float(model(**batch, labels=labels, use_cache=False).loss)

    return loss_of


def _make_identity(layer: nn.Module) -> None:
    """A decoder layer whose residual branches add nothing: its output is its input."""
    with torch.no_grad():
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()


def test_block_influence_is_one_minus_the_cosine_of_each_layers_input_and_output() -> None:
    model = tiny_decoder(layers=4)
    _make_identity(model.model.layers[2])
    batches = _batches()
    scores = block_influence(model, batches)
    assert len(scores) == 4 and scores[2] == pytest.approx(0.0, abs=1e-6)
    assert all(0 < score <= 2 for index, score in enumerate(scores) if index != 2)
    # recomputed by hand from the hidden states (Llama's last one is after the final norm: hook instead)
    inputs = {}
    handle = model.model.layers[1].register_forward_hook(
        lambda module, args, output: inputs.update(x=args[0], y=output[0] if isinstance(output, tuple) else output)
    )
    with torch.no_grad():
        model(**batches[0])
    handle.remove()
    expected = (1 - torch.nn.functional.cosine_similarity(inputs["x"], inputs["y"], dim=-1)).mean()
    assert scores[1] == pytest.approx(float(expected), rel=1e-4)
    assert not model.model.layers[1]._forward_hooks and not model.model.layers[1]._forward_pre_hooks


def test_padding_does_not_change_block_influence() -> None:
    model = tiny_decoder(layers=3)
    plain = block_influence(model, _batches())
    # right padding after the real tokens: causal attention keeps the real positions' states
    padded = block_influence(model, _batches(pad=5))
    assert padded == pytest.approx(plain, rel=1e-4)


def test_block_influence_keeps_the_layers_that_change_their_input_most() -> None:
    assert top_layers([0.9, 0.1, 0.5, 0.1, 0.7], 3) == (1, 3, 5)
    assert top_layers([0.2, 0.2, 0.2], 2) == (1, 2)  # ties go to the earlier layer
    model = tiny_decoder(layers=4)
    for index in (1, 3):
        _make_identity(model.model.layers[index])
    choice = choose_layers(model, 2, "block_influence", _batches())
    assert choice.kept == (1, 3) and choice.layer_map == {1: 1, 2: 3}


def test_kept_layers_computes_what_a_copied_student_computes_and_restores_the_teacher() -> None:
    teacher = tiny_decoder(layers=4)
    batch = _batches()[0]
    with torch.no_grad():
        before = teacher(**batch).logits
        with kept_layers(teacher, [1, 4]) as view:
            assert len(view.model.layers) == 2 and view.config.num_hidden_layers == 2
            viewed = view(**batch, use_cache=False).logits
        student, _ = make_student(teacher, num_layers=2, layer_map={1: 1, 2: 4})
        assert_close(student.eval()(**batch).logits, viewed)
        assert len(teacher.model.layers) == 4 and teacher.config.num_hidden_layers == 4
        assert_close(teacher(**batch).logits, before)


def test_greedy_removal_drops_the_layer_whose_removal_costs_least_each_time() -> None:
    teacher = tiny_decoder(layers=4)
    _make_identity(teacher.model.layers[1])  # removing layer 2 leaves the teacher's own loss
    batches = _batches()
    loss_of = _lm_loss(batches)
    kept, removed, single, loss = greedy_removal(teacher, 2, loss_of)
    assert len(removed) == 2 and len(kept) == 2 and set(kept) | set(removed) == {1, 2, 3, 4}
    assert single[1] == pytest.approx(loss_of(teacher), rel=1e-5)
    assert removed[0] == min(range(1, 5), key=lambda layer: single[layer - 1])
    # the second removal is the best of the three left, measured with the first one gone
    left = [layer for layer in (1, 2, 3, 4) if layer != removed[0]]
    trials = {}
    for layer in left:
        with kept_layers(teacher, [other for other in left if other != layer]):
            trials[layer] = loss_of(teacher)
    assert removed[1] == min(trials, key=trials.get)
    with kept_layers(teacher, list(kept)):
        assert loss == pytest.approx(loss_of(teacher))
    choice = choose_layers(teacher, 2, "perplexity", batches, loss_of)
    assert choice.kept == kept and choice.removed == removed
    assert choice.as_dict()["removed_in_order"] == list(removed)


def test_the_rules_work_on_an_encoder_and_refuse_what_they_cannot_do() -> None:
    teacher = tiny_bert(num_layers=4, seed=1)
    batch = {"input_ids": torch.randint(5, 30, (2, 9)), "attention_mask": torch.ones(2, 9, dtype=torch.long)}
    scores = block_influence(teacher, [batch])
    assert len(scores) == 4 and all(score > 0 for score in scores)
    with pytest.raises(ValueError, match="needs a loss"):
        choose_layers(teacher, 2, "perplexity", [batch])
    with pytest.raises(ValueError, match="unknown importance rule 'magic'"):
        choose_layers(teacher, 2, "magic", [batch])
    with pytest.raises(ValueError, match="cannot keep 5 of 4 layers"):
        choose_layers(teacher, 5, "block_influence", [batch])


# ---------------------------------------------------------------------------
# in a run
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plays(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_plays(tmp_path_factory.mktemp("importance"), test=False, layers=6)


def _config(root: Path, name: str, **from_teacher: object) -> Path:
    config = {
        "task": "causal_lm",
        "teacher": {"path": str(root / "teacher")},
        "student": {"from_teacher": {"num_layers": 2, **from_teacher}},
        "data": {"train": str(root / "train.txt"), "validation": str(root / "validation.txt"), "max_length": 32},
        "objective": {"preset": "hinton", "temperature": 2.0, "alpha": 0.5},
        "training": {"epochs": 1, "batch_size": 8, "lr": 2.0e-3},
        "output": {"dir": str(root / name)},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.mark.parametrize("rule", ["block_influence", "perplexity"])
def test_a_run_copies_the_layers_its_rule_measures_and_reports_why(plays: Path, rule: str) -> None:
    code, err = run_command(
        ["distill", str(_config(plays, rule, layer_map="importance", importance=rule)), "--no-progress"]
    )
    assert code == 0, err
    metrics = json.loads((plays / rule / "metrics.json").read_text(encoding="utf-8"))
    choice = metrics["student_choice"]
    layers = choice["layer_choice"]
    assert layers["rule"] == rule and len(layers["scores"]) == 6 and choice["calibration_tokens"] > 0
    chosen = {int(k): v for k, v in layers["layer_map"].items()}
    assert len(chosen) == 2 and layers["calibration_loss"] > 0 and choice["uniform_loss"] > 0
    if rule == "block_influence":
        assert sorted(chosen.values()) == sorted(top_layers(layers["scores"], 2))
    else:
        assert len(layers["removed_in_order"]) == 4 and not set(layers["removed_in_order"]) & set(chosen.values())
    assert f"by {rule}" in metrics["run"]["student"]
    assert choice["untrained"]["perplexity"] > metrics["student"]["perplexity"]  # training helped
    report = (plays / rule / "report.md").read_text(encoding="utf-8")
    assert "## How the student was chosen" in report and f"by `{rule}`" in report and "perplexity" in report


def test_the_student_built_in_a_run_is_the_teachers_chosen_layers(plays: Path) -> None:
    from kdistill.app.run import prepare_run

    config = load_config(_config(plays, "prepared", layer_map="importance"))
    prepared = prepare_run(config, progress=False)
    chosen = prepared.student_choice["layer_choice"]["layer_map"]
    teacher, student = prepared.models.teacher, prepared.models.student
    for student_layer, teacher_layer in chosen.items():
        for (name, value), (_, expected) in zip(
            student.model.layers[student_layer - 1].state_dict().items(),
            teacher.model.layers[teacher_layer - 1].state_dict().items(),
        ):
            assert torch.equal(value, expected), name
    assert len(teacher.model.layers) == 6  # measuring left the teacher whole


def test_importance_settings_are_checked_in_one_line(plays: Path) -> None:
    with pytest.raises(ConfigError, match="'importance', 'uniform', 'every-K'"):
        load_config(_config(plays, "bad", layer_map="by-magic"))
    with pytest.raises(ConfigError, match="importance"):
        load_config(_config(plays, "bad", layer_map="importance", importance="magic"))
    with pytest.raises(ConfigError, match="calibration_tokens"):
        load_config(_config(plays, "bad", layer_map="importance", calibration_tokens=0))


@pytest.mark.parametrize("rule", ["block_influence", "perplexity"])
def test_an_encoder_run_chooses_its_layers_by_the_classifiers_loss(tmp_path: Path, rule: str) -> None:
    from text_fixtures import save_classifier, sentences, write_csv

    save_classifier(tmp_path / "teacher", num_layers=4, hidden=32, heads=4, seed=1, id2label={0: "neg", 1: "pos"})
    write_csv(tmp_path / "train.csv", sentences(48, seed=3, labels=("neg", "pos")))
    write_csv(tmp_path / "test.csv", sentences(16, seed=4, labels=("neg", "pos")))
    config = write_run_config(
        tmp_path,
        student={"from_teacher": {"num_layers": 2, "layer_map": "importance", "importance": rule}},
        output={"dir": str(tmp_path / "run"), "save_checkpoints": False, "save_best": False},
    )
    code, err = run_command(["distill", str(config), "--no-progress"])
    assert code == 0, err
    choice = json.loads((tmp_path / "run" / "metrics.json").read_text(encoding="utf-8"))["student_choice"]
    assert choice["layer_choice"]["rule"] == rule and len(choice["layer_choice"]["scores"]) == 4
    assert "accuracy" in choice["untrained"]
    report = (tmp_path / "run" / "report.md").read_text(encoding="utf-8")
    assert f"by `{rule}`" in report and "loss" in report  # an encoder's loss, not a perplexity


def test_inspect_importance_prints_every_layers_scores_and_each_rules_student(plays: Path) -> None:
    import contextlib
    import io

    from kdistill.app.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(
            [
                "inspect",
                str(plays / "teacher"),
                "--importance",
                "--data",
                str(plays / "train.txt"),
                "--num-layers",
                "2",
                "--calibration-tokens",
                "64",
            ]
        )
    assert code == 0, err.getvalue()
    text = out.getvalue()
    assert "block influence (1 - cos)" in text and "perplexity without it" in text
    assert len([line for line in text.splitlines() if line[:1].isdigit()]) == 6  # a row per layer
    for rule in ("uniform", "block_influence", "perplexity"):
        assert f"  {rule}: layers " in text
    assert "layer_map: importance" in text
    code, message = run_command(["inspect", str(plays / "teacher"), "--importance"])
    assert code == 2 and "give both" in message
    code, message = run_command(
        ["inspect", str(plays / "teacher"), "--importance", "--data", str(plays / "train.txt"), "--rules", "magic"]
    )
    assert code == 2 and "--rules magic" in message


def test_a_run_prunes_a_narrower_student_from_the_teachers_most_active_channels(plays: Path) -> None:
    from kdistill.app.run import prepare_run

    path = _config(
        plays,
        "pruned",
        hidden_size=16,
        num_heads=2,
        num_key_value_heads=1,
        intermediate_size=32,
        layer_map="importance",
        prune="activation",
    )
    prepared = prepare_run(load_config(path), progress=False)
    student = prepared.models.student
    assert student.config.hidden_size == 16 and student.config.num_key_value_heads == 1
    assert prepared.student_choice["width"] == {
        "hidden": [32, 16],
        "heads": [4, 2],
        "kv": [2, 1],
        "intermediate": [64, 32],
    }
    assert "width pruned by activation" in prepared.models.student_note
    # pruned, not random: every kept row of the embeddings is a teacher row restricted to kept channels
    teacher_rows = prepared.models.teacher.model.embed_tokens.weight
    kept = [int((teacher_rows[0] == value).nonzero()[0]) for value in student.model.embed_tokens.weight[0]]
    assert torch.equal(student.model.embed_tokens.weight, teacher_rows[:, kept])
    code, err = run_command(["distill", str(path), "--no-progress"])
    assert code == 0, err
    report = (plays / "pruned" / "report.md").read_text(encoding="utf-8")
    assert "width pruned by activation on the same tokens: hidden 32 -> 16" in report


def test_pruning_settings_are_checked_in_one_line(plays: Path) -> None:
    with pytest.raises(ConfigError, match="prune: activation copies the teacher's weights"):
        load_config(_config(plays, "bad", hidden_size=16, prune="activation", init="random"))
    with pytest.raises(ConfigError, match="num_key_value_heads applies"):
        load_config(_config(plays, "bad", num_key_value_heads=1))
    code, message = run_command(
        ["distill", str(_config(plays, "bad-heads", hidden_size=16, num_heads=3, prune="activation")), "--no-progress"]
    )
    assert code == 2 and "student.from_teacher" in message and not (plays / "bad-heads").exists()
