"""DistillationTrainer: the transformers.Trainer path."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_bert, token_batches
from datasets import Dataset
from safetensors.torch import load_file
from torch.testing import assert_close
from transformers import AutoModelForSequenceClassification, TrainerCallback, TrainingArguments

from kdistill import DistillationTrainer


def _dataset(num_examples=32, seed=0):
    batches = token_batches(num_batches=1, batch_size=num_examples, seed=seed)
    return Dataset.from_dict({key: value.tolist() for key, value in batches[0].items()})


def _args(tmp_path, **overrides):
    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        learning_rate=1e-3,
        num_train_epochs=2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


class _Logs(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def test_trainer_trains_evaluates_and_saves_a_loadable_student(tmp_path, bert_pair):
    teacher, student = bert_pair
    teacher_before = copy.deepcopy(teacher.state_dict())
    logs = _Logs()
    trainer = DistillationTrainer(
        teacher_model=teacher,
        model=student,
        args=_args(tmp_path),
        train_dataset=_dataset(),
        eval_dataset=_dataset(16, seed=1),
        temperature=4.0,
        alpha=0.5,
        callbacks=[logs],
    )
    assert (trainer.temperature, trainer.alpha) == (4.0, 0.5)
    result = trainer.train()
    assert result.global_step == 8
    train_logs = [entry for entry in logs.logs if "loss" in entry]
    assert train_logs and all({"loss_kd", "loss_ce"} <= set(entry) for entry in train_logs)
    first, last = train_logs[0], train_logs[-1]
    assert last["loss"] < first["loss"]

    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and metrics["eval_loss"] > 0

    # evaluation returns the student's logits
    eval_set = _dataset(16, seed=1)
    predictions = trainer.predict(eval_set)
    student.eval()
    with torch.no_grad():
        expected = student(
            input_ids=torch.tensor(eval_set["input_ids"]), attention_mask=torch.tensor(eval_set["attention_mask"])
        ).logits
    assert_close(torch.as_tensor(predictions.predictions), expected, rtol=1e-4, atol=1e-5)

    # the teacher never changed, holds no gradient and is not part of the saved model
    assert not teacher.training
    for name, tensor in teacher.state_dict().items():
        assert torch.equal(tensor, teacher_before[name])
    assert all(p.grad is None for p in teacher.parameters())

    out = tmp_path / "student"
    trainer.save_model(str(out))
    saved = load_file(str(out / "model.safetensors"))
    assert sum(t.numel() for t in saved.values()) == sum(p.numel() for p in student.state_dict().values())
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(out))
    assert reloaded.config.num_hidden_layers == 2
    reloaded.eval()
    with torch.no_grad():
        again = reloaded(
            input_ids=torch.tensor(eval_set["input_ids"]), attention_mask=torch.tensor(eval_set["attention_mask"])
        ).logits
    assert_close(again, expected, rtol=1e-4, atol=1e-5)


def test_seed_call_order_with_keyword_arguments(tmp_path, bert_pair):
    teacher, student = bert_pair
    trainer = DistillationTrainer(
        teacher_model=teacher,
        model=student,
        args=_args(tmp_path, max_steps=1),
        train_dataset=_dataset(8),
        temperature=2.0,
        alpha=0.9,
    )
    trainer.train()
    assert (trainer.temperature, trainer.alpha) == (2.0, 0.9)


def test_trainer_gradient_accumulation_equals_one_big_batch(tmp_path):
    def one_step(batch_size, accumulation):
        teacher, student = tiny_bert(4, 48, seed=1), tiny_bert(2, 32, seed=2)
        trainer = DistillationTrainer(
            teacher_model=teacher,
            model=student,
            train_dataset=_dataset(8),
            args=_args(
                tmp_path,
                per_device_train_batch_size=batch_size,
                gradient_accumulation_steps=accumulation,
                max_steps=1,
                optim="sgd",
                learning_rate=0.5,
                max_grad_norm=0.0,
                lr_scheduler_type="constant",
                weight_decay=0.0,
            ),
        )
        trainer.train()
        return student.state_dict()

    big, small = one_step(8, 1), one_step(4, 2)
    for name in big:
        assert_close(small[name], big[name], rtol=1e-4, atol=1e-5)


def test_trainer_requires_a_teacher(tmp_path):
    with pytest.raises(TypeError, match="teacher_model"):
        DistillationTrainer(model=tiny_bert(), args=_args(tmp_path))


def test_trainer_rejects_bad_temperature_and_alpha(tmp_path, bert_pair):
    teacher, student = bert_pair
    with pytest.raises(ValueError, match="temperature"):
        DistillationTrainer(teacher_model=teacher, model=student, args=_args(tmp_path), temperature=0)
    with pytest.raises(ValueError, match="alpha"):
        DistillationTrainer(teacher_model=teacher, model=student, args=_args(tmp_path), alpha=2)


def test_trainer_bf16_on_cpu_keeps_losses_float32(tmp_path, bert_pair):
    teacher, student = bert_pair
    seen = []

    class Spy(DistillationTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            seen.append((loss[0] if return_outputs else loss).dtype)
            return loss

    trainer = Spy(
        teacher_model=teacher, model=student, args=_args(tmp_path, bf16=True, max_steps=2), train_dataset=_dataset(16)
    )
    trainer.train()
    assert seen and all(dtype == torch.float32 for dtype in seen)
    assert all(torch.isfinite(p).all() for p in student.parameters())
