"""Offline (cached) against online distillation: what a teacher cache saves over three epochs.

Three epochs of logit distillation of a TinyBERT4-sized student (4 layers, hidden 312, 12
heads, intermediate 1200) from a BERT-base-sized teacher (12 layers, hidden 768), both built
from a config, batch 32, length 64, four contenders:

* ``seed``: the seed's loop (teacher forward at every step, the seed's loss);
* ``online``: ``kdistill.distill`` with the teacher run at every step;
* ``cached``: ``TeacherCache.build`` (included in the time) then ``distill`` from the cache;
* ``plain``: fine-tuning the student alone on the hard labels (no teacher).

Each contender runs in a process of its own (so that ``peak_rss_mb`` is its own) and the
teacher forward ``t`` and a student step ``s`` are measured once, for
``ideal_speedup = 3(t+s)/(t+3s)``: the best a cache can do over three epochs. Prints one JSON object.

Usage: python benchmarks/teacher_cache.py [--quick] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForSequenceClassification

EPOCHS = 3
BATCH, LENGTH = 32, 64


def build(kind: str) -> BertForSequenceClassification:
    torch.manual_seed(0 if kind == "teacher" else 1)
    if kind == "teacher":
        config = BertConfig(
            num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072, num_labels=2
        )
    else:
        config = BertConfig(
            num_hidden_layers=4, hidden_size=312, num_attention_heads=12, intermediate_size=1200, num_labels=2
        )
    return BertForSequenceClassification(config)


def dataset(num_batches: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    examples = []
    for _ in range(num_batches * BATCH):
        examples.append(
            {
                "input_ids": torch.randint(1000, 30000, (LENGTH,), generator=generator),
                "attention_mask": torch.ones(LENGTH, dtype=torch.long),
                "labels": torch.randint(0, 2, (), generator=generator),
            }
        )
    return examples


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def seed_loop(teacher, student, loader, optimizer, device, epoch_times) -> None:
    """The seed's loop and loss, written as the seed shows them (teacher forward every step)."""
    teacher.eval()
    temperature, alpha = 4.0, 0.7
    for _ in range(EPOCHS):
        student.train()
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            labels = batch.pop("labels")
            with torch.no_grad():
                teacher_logits = teacher(**batch).logits
            student_logits = student(**batch).logits
            soft = (
                F.kl_div(
                    F.log_softmax(student_logits / temperature, dim=-1),
                    F.softmax(teacher_logits / temperature, dim=-1),
                    reduction="batchmean",
                )
                * temperature**2
            )
            loss = alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        sync(device)
        epoch_times.append(time.perf_counter())


def plain_loop(student, loader, optimizer, device, epoch_times) -> None:
    for _ in range(EPOCHS):
        student.train()
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            labels = batch.pop("labels")
            loss = F.cross_entropy(student(**batch).logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        sync(device)
        epoch_times.append(time.perf_counter())


def run_contender(name: str, num_batches: int, device: torch.device) -> dict:
    from accelerate import Accelerator

    from kdistill import Objective, TeacherCache, distill, with_example_index

    data = dataset(num_batches)
    student = build("student").to(device)
    teacher = build("teacher").to(device) if name != "plain" else None
    optimizer = torch.optim.AdamW(student.parameters(), lr=5e-5)
    epoch_times: list[float] = []

    def mark(_model) -> dict:
        sync(device)
        epoch_times.append(time.perf_counter())
        return {}

    accelerator = Accelerator(cpu=device.type == "cpu")
    loader_seed = torch.Generator().manual_seed(0)
    sync(device)
    start = time.perf_counter()
    if name == "seed":
        seed_loop(
            teacher,
            student,
            DataLoader(data, batch_size=BATCH, shuffle=True, generator=loader_seed),
            optimizer,
            device,
            epoch_times,
        )
    elif name == "plain":
        plain_loop(
            student,
            DataLoader(data, batch_size=BATCH, shuffle=True, generator=loader_seed),
            optimizer,
            device,
            epoch_times,
        )
    elif name == "online":
        distill(
            teacher,
            student,
            DataLoader(data, batch_size=BATCH, shuffle=True, generator=loader_seed),
            objective=Objective.hinton(4.0, 0.7),
            optimizer=optimizer,
            epochs=EPOCHS,
            max_grad_norm=None,
            eval_fn=mark,
            progress=False,
            accelerator=accelerator,
        )
    elif name == "cached":
        with tempfile.TemporaryDirectory() as folder:
            cache = TeacherCache.build(
                teacher, data, f"{folder}/cache", batch_size=BATCH, device=device, progress=False
            )
            sync(device)
            epoch_times.append(time.perf_counter())  # the cache is built: "epoch 0" of teacher passes
            loader = DataLoader(with_example_index(data), batch_size=BATCH, shuffle=True, generator=loader_seed)
            distill(
                None,
                student,
                loader,
                teacher_cache=cache,
                objective=Objective.hinton(4.0, 0.7),
                optimizer=optimizer,
                epochs=EPOCHS,
                max_grad_norm=None,
                eval_fn=mark,
                progress=False,
                accelerator=accelerator,
            )
    else:
        raise ValueError(name)
    total = time.perf_counter() - start
    marks = [start] + epoch_times
    durations = [b - a for a, b in zip(marks, marks[1:])]
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": total, "epoch_seconds": durations, "peak_rss_mb": peak_kb / 1024}


def measure_t_and_s(device: torch.device, repeats: int) -> tuple[float, float]:
    """Median teacher forward and student training step on one batch."""
    teacher, student = build("teacher").to(device).eval(), build("student").to(device)
    batch = {k: v.to(device) for k, v in torch.utils.data.default_collate(dataset(1)).items()}
    labels = batch.pop("labels")
    optimizer = torch.optim.AdamW(student.parameters(), lr=5e-5)

    def timed(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            sync(device)
            begin = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - begin)
        return sorted(times)[len(times) // 2]

    def teacher_forward() -> None:
        with torch.no_grad():
            teacher(**batch)

    def student_step() -> None:
        loss = F.cross_entropy(student(**batch).logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return timed(teacher_forward), timed(student_step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 batches per epoch (a few minutes on 2 CPU cores)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--contender", help=argparse.SUPPRESS)
    parser.add_argument("--batches", type=int, help="batches per epoch (default 8 quick, 40 full)")
    args = parser.parse_args()
    device = torch.device(args.device)
    num_batches = args.batches or (8 if args.quick else 40)

    if args.contender:
        print(json.dumps(run_contender(args.contender, num_batches, device)))
        return

    results = {}
    for name in ("seed", "online", "cached", "plain"):
        command = [
            sys.executable,
            __file__,
            "--contender",
            name,
            "--batches",
            str(num_batches),
            "--device",
            args.device,
        ]
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            raise SystemExit(f"contender {name} failed:\n{completed.stderr[-3000:]}")
        results[name] = json.loads(completed.stdout.strip().splitlines()[-1])
    t, s = measure_t_and_s(device, repeats=3 if args.quick else 7)
    cached_later_epochs = results["cached"]["epoch_seconds"][2:]  # [build, epoch 1, epoch 2, epoch 3]
    plain_epochs = results["plain"]["epoch_seconds"]
    print(
        json.dumps(
            {
                "cached_vs_seed_speedup": round(results["seed"]["seconds"] / results["cached"]["seconds"], 3),
                "ideal_speedup": round(3 * (t + s) / (t + 3 * s), 3),
                "cached_epoch_vs_plain": round(min(cached_later_epochs) / min(plain_epochs), 3),
                "online_vs_seed_speedup": round(results["seed"]["seconds"] / results["online"]["seconds"], 3),
                "peak_rss_mb": {name: round(r["peak_rss_mb"], 1) for name, r in results.items()},
                "seconds": {name: round(r["seconds"], 2) for name, r in results.items()},
                "teacher_forward_s": round(t, 4),
                "student_step_s": round(s, 4),
                "settings": {
                    "epochs": EPOCHS,
                    "batches_per_epoch": num_batches,
                    "batch": BATCH,
                    "length": LENGTH,
                    "device": str(device),
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
