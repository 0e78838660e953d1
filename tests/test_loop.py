"""The plain training loop: distill() and the seed's train_distillation()."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import mlp, tiny_bert, token_batches
from torch.testing import assert_close
from torch.utils.data import DataLoader, TensorDataset

from kdistill import History, Objective, distill, train_distillation
from kdistill.losses import HardCE, LogitKD


def _mlp_task(n=512, dim=16, classes=4, seed=0):
    """Inputs and a random (but fixed) wide teacher whose predictions the student should learn."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, dim, generator=generator)
    teacher = mlp(dim, 256, classes, seed=seed + 100)
    with torch.no_grad():
        labels = teacher(inputs).argmax(-1)
    return inputs, labels, teacher


def _agreement(teacher, student, inputs):
    with torch.no_grad():
        return (teacher(inputs).argmax(-1) == student(inputs).argmax(-1)).float().mean().item()


def test_distillation_raises_agreement_with_the_teacher():
    inputs, labels, teacher = _mlp_task()
    student = mlp(16, 32, 4, seed=7)
    before = _agreement(teacher, student, inputs)
    loader = DataLoader(
        TensorDataset(inputs, labels), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    history = distill(
        teacher,
        student,
        loader,
        objective=Objective.hinton(4.0, alpha=0.9),
        optimizer=torch.optim.Adam(student.parameters(), lr=1e-2),
        epochs=25,
        progress=False,
    )
    after = _agreement(teacher, student, inputs)
    assert before < 0.5
    assert after > 0.85, (before, after)
    assert history.epochs[-1]["kd"] < history.epochs[0]["kd"] / 2


def test_seed_signature_with_tuple_batches():
    """train_distillation(teacher, student, train_loader, optimizer, epochs) as the seed calls it."""
    inputs, labels, teacher = _mlp_task(n=128)
    student = mlp(16, 32, 4, seed=3)
    loader = DataLoader(TensorDataset(inputs, labels), batch_size=32)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    history = train_distillation(teacher, student, loader, optimizer, 2, progress=False)
    assert isinstance(history, History)
    assert len(history.steps) == 8 and len(history.epochs) == 2
    assert {"loss", "kd", "ce", "lr", "step", "epoch"} <= set(history.steps[0])
    # alpha = 0.7 by default, as in the seed's loop
    for record in history.steps:
        assert record["loss"] == pytest.approx(0.7 * record["kd"] + 0.3 * record["ce"], rel=1e-5)


def test_teacher_is_frozen_and_gets_no_gradients():
    inputs, labels, teacher = _mlp_task(n=64)
    teacher.train()  # the loop must switch it to eval mode itself
    before = copy.deepcopy(teacher.state_dict())
    student = mlp(16, 32, 4, seed=1)
    student_before = copy.deepcopy(student.state_dict())
    loader = DataLoader(TensorDataset(inputs, labels), batch_size=16)
    distill(teacher, student, loader, lr=1e-2, epochs=2, progress=False)
    assert not teacher.training
    for name, tensor in teacher.state_dict().items():
        assert torch.equal(tensor, before[name]), f"teacher weight {name} changed"
    assert all(p.grad is None for p in teacher.parameters())
    assert any(not torch.equal(p, student_before[n]) for n, p in student.state_dict().items())


def test_an_optimizer_holding_teacher_weights_is_refused():
    inputs, labels, teacher = _mlp_task(n=32)
    student = mlp(16, 32, 4)
    optimizer = torch.optim.SGD(list(student.parameters()) + list(teacher.parameters()), lr=0.1)
    with pytest.raises(ValueError, match="teacher must stay frozen"):
        distill(teacher, student, [(inputs, labels)], optimizer=optimizer, progress=False)


def test_same_module_for_teacher_and_student_is_refused():
    model = mlp()
    with pytest.raises(ValueError, match="same module"):
        distill(model, model, [(torch.randn(2, 16), torch.tensor([0, 1]))], progress=False)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"epochs": 0}, "epochs"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps"),
        ({"precision": "fp8"}, "precision"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),
    ],
)
def test_bad_loop_settings_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        distill(mlp(), mlp(seed=1), [(torch.randn(2, 16), torch.tensor([0, 1]))], progress=False, **kwargs)


def _one_update(batches, accumulation, model_factory, make_optimizer):
    teacher, student = model_factory()
    distill(
        teacher,
        student,
        batches,
        optimizer=make_optimizer(student),
        gradient_accumulation_steps=accumulation,
        max_grad_norm=None,
        progress=False,
        objective=Objective.hinton(4.0, 0.6),
    )
    return student.state_dict()


def test_gradient_accumulation_equals_one_big_batch_tuples():
    inputs = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    factory = lambda: (mlp(16, 64, 4, seed=10), mlp(16, 32, 4, seed=11))  # noqa: E731
    sgd = lambda m: torch.optim.SGD(m.parameters(), lr=0.5)  # noqa: E731
    big = _one_update([(inputs, labels)], 1, factory, sgd)
    small = _one_update([(inputs[:4], labels[:4]), (inputs[4:], labels[4:])], 2, factory, sgd)
    for name in big:
        assert_close(small[name], big[name], rtol=1e-5, atol=1e-6)


def test_gradient_accumulation_equals_one_big_batch_hf_dicts():
    (batch,) = token_batches(num_batches=1, batch_size=8)
    halves = [{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}]
    factory = lambda: (tiny_bert(4, 48, seed=1), tiny_bert(2, 32, seed=2))  # noqa: E731
    sgd = lambda m: torch.optim.SGD(m.parameters(), lr=0.5)  # noqa: E731
    big = _one_update([batch], 1, factory, sgd)
    small = _one_update(halves, 2, factory, sgd)
    for name in big:
        assert_close(small[name], big[name], rtol=1e-4, atol=1e-5)


def test_hf_dict_batches_history_eval_and_scheduler(bert_pair):
    teacher, student = bert_pair
    batches = token_batches(num_batches=6, batch_size=4)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    calls = []

    def eval_fn(model):
        calls.append(model.training)
        return {"accuracy": 0.5}

    history = distill(
        teacher,
        student,
        batches,
        optimizer=optimizer,
        scheduler=scheduler,
        epochs=2,
        gradient_accumulation_steps=4,
        eval_fn=eval_fn,
        progress=False,
        log_every=1,
    )
    # 6 batches with accumulation 4: groups of 4 and 2 -> 2 optimizer steps per epoch
    assert [r["step"] for r in history.steps] == [1, 2, 3, 4]
    assert [r["lr"] for r in history.steps] == pytest.approx([1e-3, 1e-3 / 2, 1e-3 / 3, 1e-3 / 4])
    assert calls == [False, False] and student.training
    assert [e["accuracy"] for e in history.evals] == [0.5, 0.5]
    assert history.series("kd") and all(v >= 0 for v in history.series("kd"))


def test_max_steps_and_eval_every(bert_pair):
    teacher, student = bert_pair
    history = distill(
        teacher,
        student,
        token_batches(num_batches=5, batch_size=4),
        epochs=3,
        max_steps=7,
        eval_every=3,
        eval_fn=lambda m: {"x": 1.0},
        progress=False,
    )
    assert len(history.steps) == 7
    assert [e["step"] for e in history.evals] == [3, 6]


def test_bf16_autocast_keeps_losses_in_float32(bert_pair):
    teacher, student = bert_pair
    objective = Objective({"kd": LogitKD(4.0), "ce": HardCE()}, weights={"kd": 0.5, "ce": 0.5})
    seen = []
    forward = Objective.forward

    def recording(self, student_side, teacher_side, labels=None, share=None):
        result = forward(self, student_side, teacher_side, labels, share)
        seen.append(
            (
                student_side.logits.dtype,
                teacher_side.logits.dtype,
                result.total.dtype,
                {part.dtype for part in result.parts.values()},
            )
        )
        return result

    Objective.forward = recording
    try:
        history = distill(
            teacher,
            student,
            token_batches(num_batches=2, batch_size=4),
            objective=objective,
            precision="bf16",
            lr=1e-3,
            progress=False,
            log_every=1,
        )
    finally:
        Objective.forward = forward
    # the forward passes ran in bf16 (autocast really was on); the loss and every part are float32
    assert seen and all(s == t == torch.bfloat16 for s, t, _, _ in seen)
    assert all(total == torch.float32 and parts == {torch.float32} for _, _, total, parts in seen)
    assert len(history.steps) == 2
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in history.steps)


def test_progress_bar_reports_the_running_loss(capsys, bert_pair):
    teacher, student = bert_pair
    distill(teacher, student, token_batches(num_batches=2, batch_size=4), progress=True, log_every=1)
    err = capsys.readouterr().err
    assert "distill" in err and "loss=" in err
