"""How much does kdistill's loop add to the work a distillation step cannot avoid?

One online logit-distillation step through ``kdistill.distill`` (teacher forward + student
forward/backward/AdamW step + the loss) is timed against the sum of a bare teacher forward and
a bare student training step (forward, cross-entropy, backward, AdamW step), measured
separately in the same run on the same batch. Models are BERT-style and built from a config:
a 6-layer teacher and a 2-layer student, hidden 384, batch 32, length 64.

The three contenders run in alternating rounds and each is summarised by its median step
time, so that drifts of a noisy machine hit all of them alike. Prints one JSON object:
``overhead_ratio`` = kdistill step / (teacher forward + student step); target <= 1.05.

Usage: python benchmarks/step_overhead.py [--quick] [--device cpu|cuda] [--precision no|bf16] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from transformers import BertConfig, BertForSequenceClassification

from kdistill import Objective, distill


def build(num_layers: int, seed: int) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=num_layers,
        num_attention_heads=12,
        intermediate_size=1536,
        num_labels=2,
        max_position_embeddings=512,
    )
    return BertForSequenceClassification(config)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class StepClock:
    """Poses as an LR scheduler: distill() calls step() once per optimizer step, so the gaps
    between calls are the loop's real step times."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stamps: list[float] = []

    def step(self) -> None:
        synchronize(self.device)
        self.stamps.append(time.perf_counter())

    def durations(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (about a minute on 2 CPU cores)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="no", choices=["no", "bf16"])
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 is steadier on a shared machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rounds, steps_per_round = (3, 6) if args.quick else (6, 10)

    teacher, student = build(6, 0).to(device), build(2, 1).to(device)
    teacher.eval()
    generator = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(1000, 30000, (32, 64), generator=generator),
        "attention_mask": torch.ones(32, 64, dtype=torch.long),
        "labels": torch.randint(0, 2, (32,), generator=generator),
    }
    batch = {k: v.to(device) for k, v in batch.items()}
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    dtype = torch.bfloat16 if args.precision == "bf16" else None

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    plain_optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)

    def teacher_forward() -> None:
        with torch.no_grad(), autocast():
            teacher(**inputs)

    def plain_student_step() -> None:
        with autocast():
            logits = student(**inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
        loss.backward()
        plain_optimizer.step()
        plain_optimizer.zero_grad(set_to_none=True)

    def timed(fn, repeats: int) -> list[float]:
        times = []
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times.append(time.perf_counter() - start)
        return times

    kd_optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
    objective = Objective.hinton(temperature=4.0, alpha=0.5)

    def kdistill_steps(repeats: int) -> list[float]:
        clock = StepClock(device)
        # one extra step: the first gap starts at the end of step 1
        distill(
            teacher,
            student,
            [batch] * (repeats + 1),
            objective=objective,
            optimizer=kd_optimizer,
            scheduler=clock,
            max_grad_norm=None,
            precision=args.precision,
            progress=False,
            log_every=10,
        )
        return clock.durations()

    # warm-up: allocator, kernels, optimizer state
    timed(teacher_forward, 2), timed(plain_student_step, 2), kdistill_steps(2)

    teacher_times: list[float] = []
    student_times: list[float] = []
    kdistill_times: list[float] = []
    for _ in range(rounds):
        teacher_times += timed(teacher_forward, steps_per_round)
        student_times += timed(plain_student_step, steps_per_round)
        kdistill_times += kdistill_steps(steps_per_round)

    teacher_ms = statistics.median(teacher_times) * 1e3
    student_ms = statistics.median(student_times) * 1e3
    kdistill_ms = statistics.median(kdistill_times) * 1e3
    print(
        json.dumps(
            {
                "overhead_ratio": round(kdistill_ms / (teacher_ms + student_ms), 4),
                "kdistill_step_ms": round(kdistill_ms, 2),
                "teacher_forward_ms": round(teacher_ms, 2),
                "student_step_ms": round(student_ms, 2),
                "samples_per_contender": len(kdistill_times),
                "settings": {
                    "teacher_layers": 6,
                    "student_layers": 2,
                    "hidden": 384,
                    "batch": 32,
                    "length": 64,
                    "device": str(device),
                    "precision": args.precision,
                    "quick": args.quick,
                },
                "machine": {
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "processor": platform.machine(),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
