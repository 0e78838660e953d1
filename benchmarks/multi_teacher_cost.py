"""What several teachers cost per training step: time and peak memory of each way to run them.

BERT classifiers built from a config (no downloads): three 4-layer teachers (hidden 256, 4
heads, intermediate 1024, vocabulary 8,000) and one 2-layer student of the same width, batch 16
of 64 tokens, Hinton's loss (T = 4, alpha 0.7) through ``kdistill.distill``. Four modes:

* ``one_online``: one teacher, run at every step (the baseline of the ratios);
* ``three_online``: three teachers, each run at every step (``mixture``);
* ``three_cached``: three teachers read from their caches (``mixture``); the caches are built
  once by ``TeacherCache.build`` before any mode is timed, and the timed process never loads a
  teacher;
* ``three_route``: three teachers under ``combine: route``: each example names its teacher
  (example i goes to teacher i mod 3), and each teacher runs on its own third of the rows.

Each mode runs in a fresh subprocess (its peak resident memory, ``ru_maxrss``, is its own; that
of the process right after its imports is reported too, since Python, torch and transformers
weigh the same in every mode), with one torch thread, and the modes alternate over the repeats
so that a drift of a busy machine hits all of them alike. A step is the time between two
optimizer steps (read by a clock posing as the LR scheduler), the first ``WARMUP`` left out, in
the process's CPU time (``step_cpu_s``: the work of the step, which on a shared machine does not
depend on the share of the cores the process got) and on the wall clock (``step_s``); each run
gives its median step, and each mode the median over its repeats. Prints one JSON object and
writes it to ``benchmarks/results/multi_teacher_cost_<device>.json``.

On CUDA a fifth mode, ``three_offload``, runs the three teachers online with
``offload_teachers=True`` (each teacher on the device for its forward only), and every mode
reports its peak device memory (``peak_device_mb``). On a CPU offloading changes nothing (the
teachers already live where they run), so it is not a mode there.

Usage: python benchmarks/multi_teacher_cost.py [--repeats 3] [--steps 14] [--quick] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
MODES = ("one_online", "three_online", "three_cached", "three_route")
#: on CUDA only: three teachers online, each on the device for its forward only
OFFLOAD = "three_offload"
TEACHERS = ("a", "b", "c")
BATCH, LENGTH, VOCAB, NUM_LABELS = 16, 64, 8000, 3
#: steps of each run left out of its median (allocations, first-call overheads)
WARMUP = 2


def build(num_layers: int, seed: int) -> Any:
    """A BERT classifier from a config: ``num_layers`` layers of hidden 256."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=256,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=1024,
        max_position_embeddings=LENGTH,
        num_labels=NUM_LABELS,
    )
    return BertForSequenceClassification(config)


def teacher(index: int) -> Any:
    """Teacher ``index`` (0, 1, 2): 4 layers, its own seed."""
    return build(4, seed=index)


def examples(num: int) -> list[dict[str, torch.Tensor]]:
    """``num`` examples of ``LENGTH`` random token ids, each with a label."""
    generator = torch.Generator().manual_seed(0)
    return [
        {
            "input_ids": torch.randint(5, VOCAB, (LENGTH,), generator=generator),
            "attention_mask": torch.ones(LENGTH, dtype=torch.long),
            "labels": torch.randint(0, NUM_LABELS, (), generator=generator),
        }
        for _ in range(num)
    ]


def build_caches(folder: Path, steps: int, device: torch.device) -> dict[str, str]:
    """Each teacher's cache of its logits over the training examples, in ``folder/<name>``."""
    from kdistill import TeacherCache

    data = examples(steps * BATCH)
    found = {}
    for index, name in enumerate(TEACHERS):
        cache = TeacherCache.build(
            teacher(index), data, folder / name, batch_size=BATCH, device=device, progress=False
        )
        found[name] = str(cache.folder)
    return found


class StepClock:
    """Poses as an LR scheduler: ``distill`` calls ``step()`` once per optimizer step, so the gaps
    between the calls are the loop's step times, on the wall clock and in this process's CPU time."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stamps: list[tuple[float, float]] = []

    def step(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.stamps.append((time.perf_counter(), time.process_time()))

    def durations(self, which: int) -> list[float]:
        """Each step's seconds: ``which`` 0 on the wall clock, 1 in CPU time."""
        return [b[which] - a[which] for a, b in zip(self.stamps, self.stamps[1:])]


def run_mode(mode: str, steps: int, device: torch.device, caches: dict[str, str]) -> dict[str, Any]:
    """Train the student ``steps`` steps in ``mode``; its step times and this process's memory."""
    from torch.utils.data import DataLoader

    from kdistill import HardCE, LogitKD, Objective, TeacherCache, distill, with_example_index
    from kdistill.data.batch import with_routes
    from kdistill.losses.combine import TeacherMix

    imported_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    data = examples(steps * BATCH)
    combine = "route" if mode == "three_route" else "mixture"
    mix = TeacherMix.of(TEACHERS, combine=combine) if mode != "one_online" else None
    objective = Objective(
        {"kd": LogitKD(temperature=4.0), "ce": HardCE()}, weights={"kd": 0.7, "ce": 0.3}, teachers=mix
    )
    models: Any = None
    cache: Any = None
    if mode == "one_online":
        models = teacher(0)
    elif mode == "three_cached":
        cache = {name: TeacherCache.open(caches[name]) for name in TEACHERS}
        data = with_example_index(data)
    else:
        models = {name: teacher(index) for index, name in enumerate(TEACHERS)}
    if mode == "three_route":
        data = with_routes(data, [i % len(TEACHERS) for i in range(len(data))])
    student = build(2, seed=10)
    clock = StepClock(device)
    clock.step()
    distill(
        models,
        student,
        DataLoader(data, batch_size=BATCH, shuffle=False),
        objective=objective,
        teacher_cache=cache,
        lr=1e-4,
        epochs=1,
        scheduler=clock,
        max_grad_norm=None,
        progress=False,
        offload_teachers=mode == OFFLOAD,
    )
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    wall, cpu = clock.durations(0)[WARMUP:], clock.durations(1)[WARMUP:]
    found: dict[str, Any] = {
        "step_s": statistics.median(wall),
        "step_cpu_s": statistics.median(cpu),
        "steps_timed": len(wall),
        "peak_rss_mb": peak_kb / 1024,  # Linux reports kilobytes
        "after_imports_rss_mb": imported_kb / 1024,
    }
    if device.type == "cuda":
        found["peak_device_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return found


def _subprocess(args: list[str]) -> dict[str, Any]:
    command = [sys.executable, __file__, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    completed = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if completed.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Each mode's median step (CPU time and wall clock) and peak memory over its repeats, and
    their ratios to ``one_online``."""
    medians = {
        mode: {key: statistics.median(run[key] for run in found) for key in ("step_s", "step_cpu_s", "peak_rss_mb")}
        for mode, found in runs.items()
    }
    base = medians["one_online"]
    baseline_rss = statistics.median(run["after_imports_rss_mb"] for found in runs.values() for run in found)
    table = {}
    for mode, values in medians.items():
        table[mode] = {
            "step_cpu_s": round(values["step_cpu_s"], 4),
            "step_cpu_ratio": round(values["step_cpu_s"] / base["step_cpu_s"], 2),
            "step_s": round(values["step_s"], 4),
            "step_ratio": round(values["step_s"] / base["step_s"], 2),
            "peak_rss_mb": round(values["peak_rss_mb"], 1),
            "peak_rss_ratio": round(values["peak_rss_mb"] / base["peak_rss_mb"], 2),
            # what the models, the data and the training add to a process that imported them
            "above_imports_mb": round(values["peak_rss_mb"] - baseline_rss, 1),
        }
        if all("peak_device_mb" in run for run in runs[mode]):
            device_mb = statistics.median(run["peak_device_mb"] for run in runs[mode])
            table[mode]["peak_device_mb"] = round(device_mb, 1)
    base_extra = table["one_online"]["above_imports_mb"]
    for values in table.values():
        values["above_imports_ratio"] = round(values["above_imports_mb"] / base_extra, 2) if base_extra > 0 else 0.0
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each mode, alternated (default 3)")
    parser.add_argument("--steps", type=int, default=14, help=f"steps per run, the first {WARMUP} not timed")
    parser.add_argument("--quick", action="store_true", help="1 repeat of 4 steps: a smoke test")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, help="default benchmarks/results/multi_teacher_cost_<device>.json")
    parser.add_argument("--mode", choices=(*MODES, OFFLOAD), help=argparse.SUPPRESS)
    parser.add_argument("--caches", help=argparse.SUPPRESS)
    parser.add_argument("--build-caches", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    repeats, steps = (1, WARMUP + 2) if args.quick else (args.repeats, args.steps)
    if steps <= WARMUP:
        raise SystemExit(f"--steps must be more than the {WARMUP} warm-up steps")
    if args.build_caches:
        print(json.dumps(build_caches(Path(args.build_caches), steps, device)))
        return
    if args.mode:
        print(json.dumps(run_mode(args.mode, steps, device, json.loads(args.caches))))
        return

    started = time.time()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        common = ["--steps", str(steps), "--device", args.device]
        caches = _subprocess(["--build-caches", folder, *common])
        modes = (*MODES, OFFLOAD) if device.type == "cuda" else MODES
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
        for _ in range(repeats):
            for mode in modes:
                runs[mode].append(_subprocess(["--mode", mode, "--caches", json.dumps(caches), *common]))
    load_after = os.getloadavg()[0]
    cpus = os.cpu_count() or 1
    result = {
        "modes": summary(runs),
        "runs": runs,
        "settings": {
            "teachers": "3 x BERT 4 layers, hidden 256, 4 heads, intermediate 1024, vocabulary 8000",
            "student": "BERT 2 layers, hidden 256",
            "batch": BATCH,
            "length": LENGTH,
            "steps_per_run": steps,
            "warmup_steps": WARMUP,
            "repeats": repeats,
            "torch_threads": 1,
            "device": str(device),
            "quick": args.quick,
        },
        "machine": {
            "cpus": cpus,
            "load_average_before": round(load_before, 2),
            "load_average_after": round(load_after, 2),
            # other work shared the cores: trust the CPU times (step_cpu_s) over the wall clock
            "busy": max(load_before, load_after) > cpus,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "processor": platform.machine(),
        },
        "seconds": round(time.time() - started, 1),
    }
    text = json.dumps(result, indent=1)
    print(text)
    output = args.output or ROOT / "benchmarks" / "results" / f"multi_teacher_cost_{device.type}.json"
    if not args.quick or args.output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
