"""``kdistill demo``: a whole distillation, offline, on real data that ships with scikit-learn.

The data are scikit-learn's 1,797 handwritten digits (8x8 pixels, 10 classes), split 70/30
into training and held-out examples, stratified and seeded. A ViT-style transformer teacher
(built from a ``ViTConfig``, 2x2-pixel patches) learns them; then one small student is
trained twice from the same initial weights on the same batches in the same order: once on
the labels alone, once distilled from the teacher's soft labels through
:func:`kdistill.distill`. The table compares the three on the held-out digits.

The students get a short training budget (a few hundred steps), the setting where a
teacher's soft labels help most: they say how alike the classes look, which the student
would otherwise need many more passes over the hard labels to learn.
"""

from __future__ import annotations

import copy
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kdistill.app.report import format_table
from kdistill.losses import HardCE, Objective
from kdistill.models.loading import count_parameters
from kdistill.models.speed import SPEED_BATCH_SIZE, WIDE_SPREAD, compare_speed, speed_record
from kdistill.train.loop import distill

__all__ = ["DemoResult", "DemoRow", "DemoSettings", "run_demo"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoSettings:
    """The sizes and schedule of the demo.

    Attributes:
        teacher_hidden: the teacher's width.
        teacher_layers: the teacher's depth.
        teacher_heads: the teacher's attention heads.
        student_hidden: the student's width.
        student_layers: the student's depth.
        student_heads: the student's attention heads.
        teacher_epochs: the teacher's training epochs.
        student_epochs: epochs of each student (alone and distilled: the same).
        batch_size: examples per batch.
        teacher_lr: the teacher's peak learning rate.
        student_lr: the students' peak learning rate.
        temperature: softening temperature of the distillation.
        alpha: weight of the teacher's soft labels (the rest is the hard labels).
        test_fraction: share of the digits held out for the table.
    """

    teacher_hidden: int = 96
    teacher_layers: int = 3
    teacher_heads: int = 4
    student_hidden: int = 32
    student_layers: int = 2
    student_heads: int = 2
    teacher_epochs: int = 10
    student_epochs: int = 10
    batch_size: int = 64
    teacher_lr: float = 1e-3
    student_lr: float = 3e-3
    temperature: float = 4.0
    alpha: float = 0.9
    test_fraction: float = 0.3

    @classmethod
    def quick(cls) -> DemoSettings:
        """A shorter schedule for smoke tests: fewer epochs, the same models."""
        return cls(teacher_epochs=6, student_epochs=8)


@dataclass
class DemoRow:
    """One line of the demo's table."""

    model: str
    accuracy: float
    parameters: int
    latency_ms: float
    seconds: float
    speedup: float = 1.0
    #: the interquartile range of the rounds' speed-ups over their median
    speedup_spread: float = 0.0


@dataclass
class DemoResult:
    """The three models' results and the whole time taken."""

    rows: list[DemoRow] = field(default_factory=list)
    seconds: float = 0.0
    test_examples: int = 0
    settings: DemoSettings = field(default_factory=DemoSettings)
    #: how the speed was measured (:func:`kdistill.models.speed.speed_record`), with its warning
    speed: dict[str, Any] = field(default_factory=dict)

    def row(self, model: str) -> DemoRow:
        """The row of ``"teacher"``, ``"student alone"`` or ``"student distilled"``."""
        return next(r for r in self.rows if r.model == model)

    def table(self) -> str:
        """The demo's table, with a line on what it shows."""
        rows = [
            {
                "model": r.model,
                "accuracy": f"{r.accuracy:.3f}",
                "parameters": r.parameters,
                "speedup": f"{r.speedup:.1f}x",
                "seconds": f"{r.seconds:.1f} s",
            }
            for r in self.rows
        ]
        columns = (
            ("model", "model"),
            ("accuracy", "held-out accuracy"),
            ("parameters", "parameters"),
            ("speedup", "speed-up"),
            ("seconds", "training time"),
        )
        teacher, alone, distilled = (self.row(n) for n in ("teacher", "student alone", "student distilled"))
        gain = distilled.accuracy - alone.accuracy
        lines = [
            f"kdistill demo: scikit-learn's handwritten digits, {self.test_examples} held-out examples",
            "",
            format_table(rows, columns),
            "",
            f"The student is {teacher.parameters / distilled.parameters:.0f}x smaller{_speed_claim(distilled)} "
            f"than the teacher; distillation moved its accuracy by {100 * gain:+.1f} points over the same student "
            "trained alone.",
            *self._speed_lines(distilled),
            f"Total time {self.seconds:.0f} s.",
        ]
        return "\n".join(lines)

    def _speed_lines(self, distilled: DemoRow) -> list[str]:
        """How the speed-up was measured, and the warning when the machine was busy."""
        if not self.speed:
            return []
        threads = self.speed.get("threads")
        lines = [
            f"Speed-up: the median of {self.speed.get('rounds')} alternating rounds on a batch of "
            f"{self.speed.get('batch_size')} digits, IQR {distilled.speedup_spread:.0%} "
            f"({threads} thread{'' if threads == 1 else 's'})."
        ]
        if self.speed.get("warning"):
            lines.append(f"Warning: {self.speed['warning']}")
        return lines


#: a speed-up whose rounds spread by more than this (IQR over median) is not stated at all
UNTRUSTED_SPREAD = 1.0


def _speed_claim(distilled: DemoRow) -> str:
    """`` and 4.2x faster``; ``about 4x`` where the rounds spread widely (the warning says so);
    nothing where they spread so widely that the figure means little (a busy machine)."""
    if distilled.speedup_spread > UNTRUSTED_SPREAD:
        return f" (its speed-up is not stated: the timing rounds spread by {distilled.speedup_spread:.0%})"
    if distilled.speedup_spread > WIDE_SPREAD:
        return f" and about {distilled.speedup:.0f}x faster"
    return f" and {distilled.speedup:.1f}x faster"


def _vit(hidden: int, layers: int, heads: int, seed: int) -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        num_labels=10,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return ViTForImageClassification(config)


def _collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``(pixels, label)`` pairs -> a Hugging Face-style dict batch."""
    return {
        "pixel_values": torch.stack([item[0] for item in items]),
        "labels": torch.stack([item[1] for item in items]),
    }


@torch.no_grad()
def _accuracy(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    predictions = torch.cat([model(pixel_values=chunk).logits.argmax(-1) for chunk in pixels.split(512)])
    return float((predictions == labels).float().mean())


def _schedule(model: nn.Module, lr: float, steps: int) -> tuple[torch.optim.Optimizer, Any]:
    from transformers import get_linear_schedule_with_warmup

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    return optimizer, get_linear_schedule_with_warmup(optimizer, max(1, steps // 10), steps)


@dataclass
class _Digits:
    """The digits split into training and held-out parts, and seeded batches of the training part."""

    train_set: TensorDataset
    test_x: torch.Tensor
    test_y: torch.Tensor
    batch_size: int
    seed: int

    def loader(self, offset: int) -> DataLoader:
        # equal offsets give equal batches: both students see the same digits in the same order
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(self.seed + offset),
            collate_fn=_collate,
        )


def _load_digits(settings: DemoSettings, seed: int) -> _Digits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)  # (N, 1, 8, 8)
    labels = torch.tensor(digits.target, dtype=torch.long)
    train_x, test_x, train_y, test_y = train_test_split(
        pixels, labels, test_size=settings.test_fraction, random_state=seed, stratify=labels
    )
    return _Digits(TensorDataset(train_x, train_y), test_x, test_y, settings.batch_size, seed)


def _say(message: str, progress: bool) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def _train_teacher(
    data: _Digits, settings: DemoSettings, objective: Objective, seed: int, progress: bool
) -> tuple[nn.Module, DemoRow]:
    """Train the teacher on the hard labels; the teacher and its row of the table."""
    _say(
        f"digits: {len(data.train_set)} for training, {len(data.test_y)} held out; training the teacher "
        f"(ViT, {settings.teacher_layers} layers, hidden {settings.teacher_hidden})",
        progress,
    )
    tick = time.perf_counter()
    steps_per_epoch = len(data.loader(0))
    teacher = _vit(settings.teacher_hidden, settings.teacher_layers, settings.teacher_heads, seed)
    optimizer, scheduler = _schedule(teacher, settings.teacher_lr, steps_per_epoch * settings.teacher_epochs)
    # no teacher is needed for the hard-label loss: an empty module stands in
    distill(
        nn.Identity(),
        teacher,
        data.loader(1),
        objective=objective,
        optimizer=optimizer,
        scheduler=scheduler,
        epochs=settings.teacher_epochs,
        progress=progress,
        log_every=steps_per_epoch,
    )
    teacher.eval()
    row = DemoRow(
        "teacher",
        _accuracy(teacher, data.test_x, data.test_y),
        count_parameters(teacher),
        0.0,
        time.perf_counter() - tick,
    )
    return teacher, row


def _train_students(
    data: _Digits,
    settings: DemoSettings,
    teacher: nn.Module,
    hard_labels_only: Objective,
    seed: int,
    progress: bool,
) -> tuple[nn.Module, list[DemoRow]]:
    """Train one student from the same initial weights twice, alone and distilled; the distilled
    student and both rows of the table."""
    steps_per_epoch = len(data.loader(0))
    initial = _vit(settings.student_hidden, settings.student_layers, settings.student_heads, seed + 100)
    students, rows = {}, []
    for name, objective in (
        ("student alone", hard_labels_only),
        ("student distilled", Objective.hinton(temperature=settings.temperature, alpha=settings.alpha)),
    ):
        soft = f": soft labels at T={settings.temperature:g}, alpha={settings.alpha:g}" if "distilled" in name else ""
        layers, hidden = settings.student_layers, settings.student_hidden
        _say(f"training the {name} (ViT, {layers} layers, hidden {hidden}){soft}", progress)
        tick = time.perf_counter()
        student = copy.deepcopy(initial)  # the same initial weights for both
        optimizer, scheduler = _schedule(student, settings.student_lr, steps_per_epoch * settings.student_epochs)
        distill(
            teacher if name == "student distilled" else nn.Identity(),
            student,
            data.loader(2),
            objective=objective,
            optimizer=optimizer,
            scheduler=scheduler,
            epochs=settings.student_epochs,
            progress=progress,
            log_every=steps_per_epoch,
        )
        student.eval()
        students[name] = student
        rows.append(
            DemoRow(
                name,
                _accuracy(student, data.test_x, data.test_y),
                count_parameters(student),
                0.0,
                time.perf_counter() - tick,
            )
        )
    return students["student distilled"], rows


def _measure_speed_ups(
    teacher: nn.Module, student: nn.Module, probe: dict[str, torch.Tensor], rows: list[DemoRow]
) -> dict[str, Any]:
    """Fill in each row's latency and speed-up against the teacher, measured as ``kdistill distill``
    measures them (:func:`kdistill.models.speed.compare_speed`); returns how they were measured."""
    # both students have one architecture: one measurement serves both rows
    speeds = compare_speed({"teacher": teacher, "student": student}, probe)
    for row in rows:
        timing = speeds["teacher" if row.model == "teacher" else "student"]
        row.latency_ms, row.speedup, row.speedup_spread = (
            timing["latency_ms"],
            timing["speedup"],
            timing["speedup_spread"],
        )
    record = speed_record(speeds)
    if record["warning"]:
        logger.warning("speed: %s", record["warning"])
    return record


def run_demo(
    quick: bool = False, seed: int = 0, *, settings: DemoSettings | None = None, progress: bool = True
) -> DemoResult:
    """Train the teacher, the student alone and the distilled student; measure all three.

    Args:
        quick: use :meth:`DemoSettings.quick` (a smoke test).
        seed: seeds the split, the models' initial weights and the batches.
        settings: explicit settings (overrides ``quick``).
        progress: show progress bars.

    Returns:
        The table's rows and the time taken.
    """
    settings = settings or (DemoSettings.quick() if quick else DemoSettings())
    started = time.perf_counter()
    data = _load_digits(settings, seed)
    hard_labels_only = Objective({"ce": HardCE()})
    teacher, teacher_row = _train_teacher(data, settings, hard_labels_only, seed, progress)
    student, student_rows = _train_students(data, settings, teacher, hard_labels_only, seed, progress)
    rows = [teacher_row, *student_rows]
    speed = _measure_speed_ups(teacher, student, {"pixel_values": data.test_x[:SPEED_BATCH_SIZE]}, rows)
    return DemoResult(
        rows=rows,
        seconds=time.perf_counter() - started,
        test_examples=len(data.test_y),
        settings=settings,
        speed=speed,
    )
