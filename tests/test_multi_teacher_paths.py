"""Several teachers in both training paths: the plain loop (distill) and the DistillationTrainer
take the same steps, the teachers stay frozen and out of what is saved, caches stand in for models,
routed teachers run on their own examples only, and wrong teacher sets are one clear error."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import build, text_batch, two_teachers
from torch.testing import assert_close
from torch.utils.data import DataLoader, SequentialSampler
from transformers import TrainerCallback, TrainingArguments

from kdistill import DistillationTrainer, Objective, TeacherCache, distill, with_example_index
from kdistill.data.batch import ROUTE_KEY
from kdistill.errors import NonFiniteTeacherError
from kdistill.losses import HardCE, LogitKD
from kdistill.losses.combine import TeacherMix

TEMPERATURE, ALPHA, LR = 2.0, 0.7, 0.5
#: each example's teacher: the first batch of 4 mixes both, the second is all teacher a's
ROUTES = [0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 1, 1, 0, 1, 1, 0]


def _rows(count: int = 16, routes: list[int] | None = None) -> list[dict]:
    """Examples of one length (padded with a mask), as lists: a Dataset's rows."""
    batch = text_batch(batch_size=count, length=10, seed=5)
    rows = [{key: value[i].tolist() for key, value in batch.items()} for i in range(count)]
    if routes is not None:
        rows = [row | {ROUTE_KEY: route} for row, route in zip(rows, routes, strict=True)]
    return rows


def _objective(combine: str = "mixture", weights: dict | None = None) -> Objective:
    mix = TeacherMix.of(weights or {"a": 1.0, "b": 3.0}, combine)
    return Objective(
        {"kd": LogitKD(TEMPERATURE), "ce": HardCE()}, weights={"kd": ALPHA, "ce": 1 - ALPHA}, teachers=mix
    )


def _student():
    return build("bert", 2, 32, seed=2).train()


def _loop(teachers, rows, objective, *, steps, caches=None, **options):
    """The loop's loss per step and its student, batches of 4 in the data's order."""
    student = _student()
    examples = [{key: torch.tensor(value) for key, value in row.items()} for row in rows]
    data = with_example_index(examples) if caches is not None else examples
    history = distill(
        teachers,
        student,
        DataLoader(data, batch_size=4, shuffle=False),
        objective=objective,
        teacher_cache=caches,
        optimizer=options.pop("optimizer", None) or torch.optim.SGD(student.parameters(), lr=LR),
        max_steps=steps,
        max_grad_norm=None,
        log_every=1,
        progress=False,
        **options,
    )
    return [record["loss"] for record in history.steps], student


class _InOrder(DistillationTrainer):
    """Batches in the data's order, as the loop's DataLoader gives them, to compare step by step."""

    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)


class _Losses(TrainerCallback):
    def __init__(self):
        self.losses = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


def _arguments(folder: Path, steps: int, **overrides) -> TrainingArguments:
    """Plain SGD steps as the loop takes them (no clipping, no schedule, no weight decay), on the CPU."""
    settings = dict(
        output_dir=str(folder),
        per_device_train_batch_size=4,
        max_steps=steps,
        learning_rate=LR,
        optim="sgd",
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    return TrainingArguments(**(settings | overrides))


def _trainer(folder, teachers, rows, objective, *, steps, caches=None, **options):
    """The Trainer's loss per step, its student and the trainer, batches of 4 in the data's order."""
    from datasets import Dataset

    student, losses = _student(), _Losses()
    data = Dataset.from_list(rows)
    trainer = _InOrder(
        teacher_model=teachers,
        teacher_cache=caches,
        model=student,
        args=_arguments(folder, steps, **options.pop("arguments", {})),
        objective=objective,
        train_dataset=with_example_index(data) if caches is not None else data,
        callbacks=[losses],
        **options,
    )
    trainer.train()
    return losses.losses, student, trainer


def _assert_same_steps(got, expected):
    (got_losses, got_student), (losses, student) = got, expected
    assert len(losses) == len(got_losses) > 0
    assert got_losses == pytest.approx(losses, rel=1e-4, abs=1e-5)
    reference = student.state_dict()
    for name, tensor in got_student.state_dict().items():
        assert_close(tensor, reference[name], rtol=1e-4, atol=1e-5)


def _first_loss(teachers, rows, routes=None, weights=(0.25, 0.75)):
    """The objective's loss on the first batch of 4, before any step, written out here: the mixture
    ``Σ ωᵢ softmax(zᵢ/T)`` (or each example's routed teacher) against the student, plus hard CE."""
    batch = {key: torch.tensor([row[key] for row in rows[:4]]) for key in ("input_ids", "attention_mask")}
    labels = torch.tensor([row["labels"] for row in rows[:4]])
    with torch.no_grad():
        student = _student()(**batch).logits
        probs = [torch.softmax(teachers[name](**batch).logits / TEMPERATURE, -1) for name in ("a", "b")]
    if routes is None:
        target = weights[0] * probs[0] + weights[1] * probs[1]
    else:
        target = torch.where(torch.tensor(routes[:4])[:, None] == 0, probs[0], probs[1])
    log_student = torch.log_softmax(student / TEMPERATURE, -1)
    kd = (target * (target.log() - log_student)).sum(-1).mean() * TEMPERATURE**2
    ce = torch.nn.functional.cross_entropy(student, labels)
    return float(ALPHA * kd + (1 - ALPHA) * ce)


# -- the loop and the Trainer take the same steps ------------------------------------------------


def test_loop_and_trainer_take_the_same_steps_with_a_weighted_mixture(tmp_path):
    teachers, rows = two_teachers(), _rows()
    # on the CPU offloading moves nothing: the steps are those of teachers kept in place
    loop = _loop(teachers, rows, _objective(), steps=4, offload_teachers=True)
    losses, student, _ = _trainer(tmp_path, teachers, rows, _objective(), steps=4, offload_teachers=True)
    _assert_same_steps((losses, student), loop)
    assert loop[0][0] == pytest.approx(_first_loss(teachers, rows), rel=1e-5)
    # the weights matter: an equal mixture is another loss
    assert _first_loss(teachers, rows, weights=(0.5, 0.5)) != pytest.approx(loop[0][0], rel=1e-3)


def test_loop_and_trainer_take_the_same_steps_with_routed_batches(tmp_path):
    teachers, rows = two_teachers(), _rows(routes=ROUTES)
    loop = _loop(teachers, rows, _objective("route"), steps=4)
    losses, student, _ = _trainer(tmp_path, teachers, rows, _objective("route"), steps=4)
    _assert_same_steps((losses, student), loop)
    # each example distils from its own teacher, not from a mixture of both
    assert loop[0][0] == pytest.approx(_first_loss(teachers, rows, routes=ROUTES), rel=1e-5)
    assert _first_loss(teachers, rows) != pytest.approx(loop[0][0], rel=1e-3)


SCRIPT = Path(__file__).parent / "scripts" / "multi_teacher_ddp_run.py"


def _launch(out: Path, processes: int, per_process: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = [str(SCRIPT), str(out), str(per_process)]
    if processes == 1:
        command = [sys.executable, *script]
    else:
        # --standalone: a rendezvous on a free port (fixed ports collide when tests run in parallel)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
        command += script
    result = subprocess.run(command, capture_output=True, text=True, timeout=280, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    found = json.loads((out / "result-0.json").read_text())
    assert found["processes"] == processes
    return {mode: (found[mode], load_file(out / f"student-{mode}.safetensors")) for mode in ("loop", "trainer")}


@pytest.mark.slow
def test_two_processes_take_the_steps_of_one_with_two_routed_teachers(tmp_path):
    # each run trains with the loop and with the Trainer: 2 processes × 4 examples against 1 × 8
    one, two = _launch(tmp_path / "one", 1, 8), _launch(tmp_path / "two", 2, 4)
    for mode in ("loop", "trainer"):
        (losses, student), (got_losses, got_student) = one[mode], two[mode]
        assert len(losses) == 4
        assert got_losses == pytest.approx(losses, rel=1e-4, abs=1e-5)
        assert got_student.keys() == student.keys()
        for name in student:
            assert_close(got_student[name], student[name], rtol=1e-4, atol=1e-5)


# -- the teachers stay frozen and unsaved ------------------------------------------------------


def _frozen_teachers():
    teachers = two_teachers()
    before = {name: copy.deepcopy(model.state_dict()) for name, model in teachers.items()}
    for model in teachers.values():
        model.train()  # the training paths must put them in eval mode themselves
    return teachers, before


def _assert_untouched(teachers, before):
    for name, model in teachers.items():
        assert not model.training, f"teacher {name} left in training mode"
        assert all(p.grad is None for p in model.parameters()), f"teacher {name} got gradients"
        for key, tensor in model.state_dict().items():
            assert torch.equal(tensor, before[name][key]), f"teacher {name} changed"


def _numel(tensors) -> int:
    return sum(t.numel() for t in tensors)


def test_loop_keeps_the_teachers_frozen_out_of_the_optimizer_and_the_checkpoint(tmp_path):
    teachers, before = _frozen_teachers()
    student = _student()
    rows = [{key: torch.tensor(value) for key, value in row.items()} for row in _rows(8)]
    distill(
        teachers,
        student,
        DataLoader(rows, batch_size=4),
        objective=_objective(),
        max_steps=2,
        checkpoint_dir=tmp_path / "checkpoints",
        save_every=1,
        progress=False,
    )
    _assert_untouched(teachers, before)
    (checkpoint,) = sorted((tmp_path / "checkpoints").glob("checkpoint-*"))[-1:]
    saved = load_file(checkpoint / "student.safetensors")
    assert saved.keys() == student.state_dict().keys()
    state = torch.load(checkpoint / "training_state.pt", weights_only=False)
    held = sum(len(group["params"]) for group in state["optimizer"]["param_groups"])
    assert held == len(list(student.parameters()))


def test_trainer_keeps_the_teachers_frozen_out_of_the_optimizer_and_the_saved_student(tmp_path):
    teachers, before = _frozen_teachers()
    arguments = {"save_strategy": "steps", "save_steps": 2}
    _, student, trainer = _trainer(tmp_path / "out", teachers, _rows(8), _objective(), steps=2, arguments=arguments)
    for model in teachers.values():
        model.train()  # between training and evaluation too
    assert torch.isfinite(torch.tensor(trainer.evaluate(_rows(4))["eval_loss"]))
    _assert_untouched(teachers, before)
    teacher_ids = {id(p) for model in teachers.values() for p in model.parameters()}
    held = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert not teacher_ids & {id(p) for p in held}
    assert len(held) == len(list(student.parameters()))
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert sorted(p.name for p in checkpoint.glob("*.safetensors")) == ["model.safetensors"]
    trainer.save_model(str(tmp_path / "student"))
    for folder in (checkpoint, tmp_path / "student"):
        saved = load_file(str(folder / "model.safetensors"))
        assert _numel(saved.values()) == _numel(student.state_dict().values())
        assert set(saved) <= set(student.state_dict())


# -- caches by name --------------------------------------------------------------------------


def _caches(teachers, rows, folder: Path) -> dict[str, TeacherCache]:
    examples = [{key: torch.tensor(value) for key, value in row.items()} for row in rows]
    return {
        name: TeacherCache.build(model, examples, folder / name, batch_size=4, progress=False)
        for name, model in teachers.items()
    }


def test_caches_by_name_give_the_online_steps_in_both_paths(tmp_path):
    teachers, rows = two_teachers(), _rows()
    caches = _caches(teachers, rows, tmp_path / "caches")
    online = _loop(teachers, rows, _objective(), steps=3)
    assert len(online[0]) == 3
    sources = {
        "caches only": (None, caches),
        "a model and a cache": ({"a": teachers["a"]}, {"b": caches["b"]}),
    }
    for index, (models, stored) in enumerate(sources.values()):
        _assert_same_steps(_loop(models, rows, _objective(), steps=3, caches=stored), online)
        losses, student, _ = _trainer(tmp_path / f"t{index}", models, rows, _objective(), steps=3, caches=stored)
        _assert_same_steps((losses, student), online)


# -- routed teachers run on their own examples ---------------------------------------------------


def _record_batch_sizes(teachers) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = {name: [] for name in teachers}
    for name, model in teachers.items():

        def record(module, args, kwargs, name=name):
            seen[name].append(int(kwargs["input_ids"].shape[0]))

        model.register_forward_pre_hook(record, with_kwargs=True)
    return seen


@pytest.mark.parametrize("path", ["loop", "trainer"])
def test_a_routed_teacher_runs_on_its_own_examples_and_skips_batches_without_them(tmp_path, path):
    teachers, rows = two_teachers(), _rows(8, routes=ROUTES[:8])  # batches: a b a a, then a a a a
    seen = _record_batch_sizes(teachers)
    if path == "loop":
        _loop(teachers, rows, _objective("route"), steps=2)
    else:
        _trainer(tmp_path, teachers, rows, _objective("route"), steps=2)
    assert seen == {"a": [3, 4], "b": [1]}


@pytest.mark.parametrize("path", ["loop", "trainer"])
def test_a_broken_teacher_is_named_when_the_loss_is_not_finite(tmp_path, path):
    teachers = two_teachers()
    with torch.no_grad():
        teachers["b"].classifier.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteTeacherError, match="b: logits") as raised:
        if path == "loop":
            _loop(teachers, _rows(4), _objective(), steps=1)
        else:
            _trainer(tmp_path, teachers, _rows(4), _objective(), steps=1)
    assert "a: logits" not in str(raised.value)


# -- wrong teacher sets: one clear error -------------------------------------------------------


def _build_trainer(tmp_path, teachers, objective=None, **options):
    return DistillationTrainer(
        teacher_model=teachers, model=_student(), args=_arguments(tmp_path, 1), objective=objective, **options
    )


def _build_loop(teachers, objective=None, **options):
    rows = [{key: torch.tensor(value) for key, value in row.items()} for row in _rows(4)]
    distill(teachers, _student(), DataLoader(rows, batch_size=4), objective=objective, progress=False, **options)


@pytest.mark.parametrize("path", ["loop", "trainer"])
def test_wrong_teacher_sets_are_one_clear_error(tmp_path, path):
    teachers = two_teachers()
    one = teachers["a"]

    def start(given, objective=None, **options):
        if path == "loop":
            _build_loop(given, objective, **options)
        else:
            _build_trainer(tmp_path, given, objective, **options)

    cases = [
        # a teacher the objective does not read
        ({**teachers, "c": build("bert", 2, 32, seed=4)}, _objective(), {}, ValueError, "teacher 'c'"),
        # the objective reads a teacher that is not given
        ({"a": one}, _objective(), {}, ValueError, "reads teacher 'b'"),
        # offloading is for several teachers
        (one, None, {"offload_teachers": True}, ValueError, "offload_teachers"),
        # one plain teacher with caches by name, or with an objective that reads teachers by name
        (one, None, {"teacher_cache": {"a": None}}, TypeError, "mapping"),
        (one, _objective(), {}, TypeError, "mapping"),
    ]
    for given, objective, options, error, message in cases:
        with pytest.raises(error, match=message) as raised:
            start(given, objective, **options)
        assert "\n" not in str(raised.value)


def test_an_optimizer_holding_teacher_parameters_is_refused_in_both_paths(tmp_path):
    teachers = two_teachers()
    student = _student()
    both = [*student.parameters(), *teachers["b"].parameters()]
    with pytest.raises(ValueError, match="optimizer holds teacher parameters"):
        _build_loop(teachers, _objective(), optimizer=torch.optim.SGD(both, lr=LR))
    trainer = DistillationTrainer(
        teacher_model=teachers,
        model=student,
        args=_arguments(tmp_path, 1),
        objective=_objective(),
        train_dataset=_rows(4),
        optimizers=(torch.optim.SGD(both, lr=LR), None),
    )
    with pytest.raises(ValueError, match="optimizer holds teacher parameters"):
        trainer.train()
