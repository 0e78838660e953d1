"""Attention capture with SDPA kept (kdistill) against the seed's eager ``output_attentions``.

One TinyBERT-style training step: hidden-state MSE and attention MSE on 3 mapped layers
(student layer m <- teacher layer 2m), a 6-layer teacher and a 3-layer student (BERT, hidden
384, 12 heads), a teacher forward under ``no_grad``, the student's forward, backward and AdamW
step. A quarter of each batch is padded to half the length.

* kdistill: both models keep SDPA attention; :func:`kdistill.capture.capture` hooks the query
  and key projections of the mapped layers, recomputes their attention maps, and an
  :class:`~kdistill.Objective` of ``HiddenMSE`` + ``AttentionMSE`` (padding excluded) is minimised.
* the seed's way: both models run eager attention and return every layer's hidden states and
  attention maps (``output_hidden_states=True, output_attentions=True``); the loss is the seed's
  ``F.mse_loss`` on the mapped pairs.

Same models (same weights), same data, same optimizer. Each contender runs in a process of its
own (``--worker``), so that its peak resident memory (``ru_maxrss``; peak allocated GPU memory on
CUDA) is its own. Prints one JSON object: ``speedup`` (seed step time / kdistill step time, batch
8 x 512), ``memory_ratio`` (kdistill peak / seed peak, batch 8 x 512) and ``speedup_len128``
(batch 16 x 128), with the raw measurements.

Both models use hidden dropout 0.1 and no attention dropout by default: on a CPU, PyTorch's
SDPA has no fused kernel with attention dropout and falls back to one that materialises the
maps, as eager attention does (``--attention-dropout 0.1`` shows that case; CUDA's fused kernels
support dropout).

Usage: python benchmarks/attention_capture.py [--quick] [--device cpu|cuda] [--threads N]
       [--dropout P] [--attention-dropout P]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

LAYER_MAP = {1: 2, 2: 4, 3: 6}
CONTENDERS = ("seed", "kdistill")


def build(num_layers: int, seed: int, attention: str, dropout: float, attention_dropout: float):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=num_layers,
        num_attention_heads=12,
        intermediate_size=1536,
        num_labels=2,
        max_position_embeddings=512,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=attention_dropout,
        attn_implementation=attention,
    )
    return BertForSequenceClassification(config)


def make_batch(batch_size: int, length: int):
    import torch

    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1000, 30000, (batch_size, length), generator=generator)
    attention_mask = torch.ones(batch_size, length, dtype=torch.long)
    attention_mask[: batch_size // 4, length // 2 :] = 0  # a quarter of the batch padded to half length
    return {"input_ids": input_ids * attention_mask, "attention_mask": attention_mask}


def seed_step(teacher, student, inputs):
    """The seed's layer and attention distillation: everything returned, eager attention, no mask."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        teacher_out = teacher(**inputs, output_hidden_states=True, output_attentions=True)
    student_out = student(**inputs, output_hidden_states=True, output_attentions=True)
    hidden = sum(F.mse_loss(student_out.hidden_states[s], teacher_out.hidden_states[t]) for s, t in LAYER_MAP.items())
    # HF's attentions tuple starts at the first layer
    attention = sum(
        F.mse_loss(student_out.attentions[s - 1], teacher_out.attentions[t - 1]) for s, t in LAYER_MAP.items()
    )
    return hidden / len(LAYER_MAP) + attention / len(LAYER_MAP)


def make_kdistill_step():
    import torch

    from kdistill import Objective
    from kdistill.capture import capture
    from kdistill.losses import AttentionMSE, HiddenMSE

    objective = Objective({"hidden": HiddenMSE(LAYER_MAP), "attention": AttentionMSE(LAYER_MAP, on="probs")})
    student_request, teacher_request = objective.request("student"), objective.request("teacher")

    def step(teacher, student, inputs):
        with torch.no_grad():
            teacher_side = capture(teacher, inputs, teacher_request)
        student_side = capture(student, inputs, student_request)
        return objective(student_side, teacher_side).total

    return step


def worker(args: argparse.Namespace) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    contender, batch_size, length, steps = args.worker, args.batch_size, args.length, args.steps
    device = torch.device(args.device)
    attention = "eager" if contender == "seed" else "sdpa"
    teacher = build(6, 0, attention, args.dropout, args.attention_dropout).to(device).eval()
    student = build(3, 1, attention, args.dropout, args.attention_dropout).to(device).train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    inputs = {k: v.to(device) for k, v in make_batch(batch_size, length).items()}
    step = seed_step if contender == "seed" else make_kdistill_step()
    times, losses = [], []
    for _ in range(steps + 1):  # the first step warms up (allocator, kernels, AdamW state)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = step(teacher, student, inputs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    result = {
        "contender": contender,
        "step_seconds": times[1:],
        "losses": losses,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
    }
    if device.type == "cuda":
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def run_worker(contender: str, batch_size: int, length: int, steps: int, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        contender,
        "--batch-size",
        str(batch_size),
        "--length",
        str(length),
        "--steps",
        str(steps),
        "--device",
        args.device,
        "--dropout",
        str(args.dropout),
        "--attention-dropout",
        str(args.attention_dropout),
        "--threads",
        str(args.threads),
    ]
    completed = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def compare(batch_size: int, length: int, steps: int, rounds: int, args: argparse.Namespace) -> dict:
    """Alternate the contenders over ``rounds`` so that a noisy machine's drifts hit both alike."""
    runs: dict[str, list[dict]] = {name: [] for name in CONTENDERS}
    for round_index in range(rounds):
        order = CONTENDERS if round_index % 2 == 0 else CONTENDERS[::-1]
        for name in order:
            runs[name].append(run_worker(name, batch_size, length, steps, args))
    times = {name: statistics.median(t for run in runs[name] for t in run["step_seconds"]) for name in CONTENDERS}
    memory_key = "peak_cuda_mib" if args.device.startswith("cuda") else "peak_rss_mib"
    memory = {name: min(run[memory_key] for run in runs[name]) for name in CONTENDERS}
    return {
        "speedup": times["seed"] / times["kdistill"],
        "memory_ratio": memory["kdistill"] / memory["seed"],
        "step_seconds": times,
        memory_key: memory,
        "first_losses": {name: runs[name][0]["losses"][0] for name in CONTENDERS},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (a few minutes on 2 CPU cores)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dropout", type=float, default=0.1, help="hidden dropout of both models")
    parser.add_argument(
        "--attention-dropout",
        type=float,
        default=0.0,
        help="attention dropout of both models (on CPU, PyTorch's SDPA falls back to its unfused kernel under "
        "attention dropout, which materialises the maps like eager attention)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads per process (0: torch's default)")
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, default=512, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    steps_long, steps_short, rounds = (2, 4, 1) if args.quick else (4, 8, 2)
    long = compare(8, 512, steps_long, rounds, args)
    short = compare(16, 128, steps_short, rounds, args)
    import torch

    print(
        json.dumps(
            {
                "speedup": round(long["speedup"], 3),
                "memory_ratio": round(long["memory_ratio"], 3),
                "speedup_len128": round(short["speedup"], 3),
                "len512": long,
                "len128": short,
                "setup": {
                    "teacher_layers": 6,
                    "student_layers": 3,
                    "hidden": 384,
                    "heads": 12,
                    "layer_map": LAYER_MAP,
                    "dropout": args.dropout,
                    "attention_dropout": args.attention_dropout,
                    "padded_rows": "a quarter of each batch, to half length",
                    "device": args.device,
                    "quick": args.quick,
                    "torch": torch.__version__,
                    "threads": args.threads or torch.get_num_threads(),
                    "platform": platform.platform(),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
