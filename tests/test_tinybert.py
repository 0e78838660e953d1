"""TinyBERTDistillation: two stages, any layer counts, both training paths, the seed's compute_loss."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_bert
from tiny_models import text_batch
from torch.testing import assert_close

from kdistill.losses import AttentionMSE, EmbeddingMSE, HiddenMSE, LogitKD
from kdistill.recipes import TinyBERTConfig, TinyBERTDistillation


def _pair(student_layers=2, teacher_layers=4):
    teacher = tiny_bert(num_layers=teacher_layers, hidden=48, seed=1)
    with torch.no_grad():
        teacher.classifier.weight.mul_(40)  # a confident teacher, so the soft labels carry signal
    return teacher, tiny_bert(num_layers=student_layers, hidden=32, seed=2)


def _epoch_means(history, key):
    return [record[key] for record in history.epochs]


def test_two_stages_through_distill_lower_each_stage_loss():
    teacher, student = _pair()
    recipe = TinyBERTDistillation(
        teacher,
        student,
        TinyBERTConfig(intermediate_epochs=4, prediction_epochs=4, intermediate_lr=3e-3, prediction_lr=3e-3),
    )
    assert recipe.layer_map == {1: 2, 2: 4}
    history = recipe.train(text_batch(num_batches=3, batch_size=8), progress=False, log_every=1)
    intermediate = _epoch_means(history.intermediate, "loss")
    prediction = _epoch_means(history.prediction, "loss")
    assert len(intermediate) == 4 and len(prediction) == 4
    assert intermediate[-1] < 0.8 * intermediate[0]
    assert prediction[-1] < prediction[0]
    assert {"embedding", "hidden", "attention"} <= set(history.intermediate.steps[0])
    assert "kd" in history.prediction.steps[0] and "hidden" not in history.prediction.steps[0]


def test_stage_objectives():
    teacher, student = _pair(student_layers=3, teacher_layers=4)  # not a 2:1 ratio
    recipe = TinyBERTDistillation(teacher, student, {"temperature": 2.0, "attention_on": "probs"})
    assert recipe.layer_map == {1: 1, 2: 3, 3: 4}
    first, second = recipe.stage_objective(1), recipe.stage_objective(2)
    assert recipe.stage_objective(1) is first  # projections keep their training
    assert isinstance(first.terms["embedding"], EmbeddingMSE)
    assert isinstance(first.terms["hidden"], HiddenMSE) and first.terms["hidden"].layer_map == {1: 1, 2: 3, 3: 4}
    assert isinstance(first.terms["attention"], AttentionMSE) and first.terms["attention"].on == "probs"
    assert isinstance(second.terms["kd"], LogitKD) and second.terms["kd"].temperature == 2.0
    assert second.active == ["kd"]
    assert first.request("teacher").hidden_states == {0, 1, 3, 4}
    with pytest.raises(ValueError, match="stages 1"):
        recipe.stage_objective(3)


def test_compute_loss_sums_the_four_parts_like_the_seed():
    teacher, student = _pair()
    recipe = TinyBERTDistillation(teacher, student, TinyBERTConfig(layer_map={1: 1, 2: 3}))
    batch = text_batch(batch_size=4)
    parts = recipe.loss_parts(batch)
    assert set(parts.parts) == {"embedding", "hidden", "attention", "kd"}
    loss = recipe.compute_loss({k: v for k, v in batch.items() if k != "labels"}, batch["labels"])
    assert_close(loss, sum(parts.parts.values()))
    loss.backward()
    assert student.bert.encoder.layer[0].attention.self.query.weight.grad is not None
    assert recipe.stage_objective(1).terms["hidden"].projections["1_to_1"].weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    assert_close(recipe.compute_loss(batch, stage=2), parts.parts["kd"])
    assert len(list(recipe.parameters())) == len(list(student.parameters())) + len(
        list(recipe.stage_objective(1).parameters())
    )


def test_each_stage_runs_with_the_trainer(tmp_path):
    from datasets import Dataset
    from transformers import TrainerCallback, TrainingArguments

    class Logs(TrainerCallback):
        def __init__(self):
            self.logs = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.logs.append(dict(logs))

    teacher, student = _pair()
    recipe = TinyBERTDistillation(teacher, student)
    batch = text_batch(batch_size=24, length=10)
    dataset = Dataset.from_dict({key: value.tolist() for key, value in batch.items()})
    for stage, expected in ((1, "loss_hidden"), (2, "loss_kd")):
        logs = Logs()
        args = TrainingArguments(
            output_dir=str(tmp_path / f"stage{stage}"),
            per_device_train_batch_size=8,
            num_train_epochs=4,
            learning_rate=3e-3,
            logging_steps=3,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            seed=0,
        )
        trainer = recipe.trainer(stage, args=args, train_dataset=dataset, callbacks=[logs])
        assert trainer.objective is recipe.stage_objective(stage)
        trainer.train()
        assert expected in logs.logs[0]
        assert logs.logs[-1]["loss"] < logs.logs[0]["loss"], stage


def test_config_is_validated():
    teacher, student = _pair()
    with pytest.raises(ValueError, match=r"unknown TinyBERT settings \['epochs'\]"):
        TinyBERTDistillation(teacher, student, {"epochs": 3})
    with pytest.raises(ValueError, match="attention_on"):
        TinyBERTConfig(attention_on="logits")
    with pytest.raises(ValueError, match="intermediate_epochs must be an integer >= 1"):
        TinyBERTConfig(intermediate_epochs=0)
    with pytest.raises(ValueError, match=r"teacher layer 6 is out of range.*attention layers 1\.\.4"):
        TinyBERTDistillation(teacher, student, TinyBERTConfig(layer_map={1: 2, 2: 6}))
    with pytest.raises(TypeError, match="TinyBERTConfig"):
        TinyBERTDistillation(teacher, student, config=3)
    with pytest.raises(ValueError, match="same module"):
        TinyBERTDistillation(student, student)
