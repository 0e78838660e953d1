"""Peak memory and time of a token-level distillation loss step: dense logits vs chunked.

One loss step is the forward and backward pass that turns both models' final hidden states
into the loss and the gradients of the student's hidden states and head weight. Sizes are
SmolLM2-135M's: batch 4 × length 512 tokens, vocabulary 49,152, hidden 576 (teacher and student
alike); the first 16 tokens of each sequence are a prompt (target -100), as the last one is after
the shift.

* ``naive``: both models' full logits (``hidden @ W.T``), then the dense
  ``token_loss(..., reduction="sum")`` and ``backward``;
* ``chunked``: ``chunked_token_loss`` on the hidden states and head weights;
* ``liger`` (CUDA only, when ``liger_kernel`` is importable and the kind is a KL or JSD): its
  fused linear JSD on the same tensors (its value is a mean over counted tokens, reported times
  their count so that it compares with the sum).

Peak memory: on CPU each contender runs in a fresh subprocess and the peak is the increase of
the max RSS (``resource.getrusage``) over its value after the inputs are allocated; on CUDA it is
``torch.cuda.max_memory_allocated`` over the memory allocated before the step. Time: the median
of the timed steps (after one warm-up step per process), the contenders running in alternating
rounds so that a drift of a shared machine hits both alike. The loss and gradients of the last
step of each contender are compared with the naive ones (max relative difference: max |a − b| /
max |b|).

Prints one JSON object. Targets: ``peak_ratio`` (chunked / naive) <= 0.15 and ``time_ratio`` <= 1.10.

Usage: python benchmarks/lm_loss_memory.py [--quick] [--device cpu|cuda] [--kind forward_kl] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import kdistill
from kdistill.losses.chunked import chunked_token_loss, default_chunk_size
from kdistill.losses.tokens import KINDS, next_token_targets, token_loss

PROMPT = 16
LIGER_BETA = {"forward_kl": 0.0, "reverse_kl": 1.0}


@dataclass(frozen=True)
class Sizes:
    batch: int = 4
    length: int = 512
    vocab: int = 49152
    hidden: int = 576


def make_inputs(sizes: Sizes, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Hidden states and heads of both models, and the targets; no large temporaries, so that
    the RSS high-water mark after this call is the baseline of the step."""
    generator = torch.Generator().manual_seed(seed)
    tokens = sizes.batch * sizes.length
    targets = make_targets(sizes, seed)

    def normal(*shape: int, scale: float) -> torch.Tensor:
        out = torch.empty(shape).normal_(generator=generator).mul_(scale)
        return out.to(device)

    return {
        "student_hidden": normal(tokens, sizes.hidden, scale=1.0).requires_grad_(),
        "student_weight": normal(sizes.vocab, sizes.hidden, scale=sizes.hidden**-0.5).requires_grad_(),
        "teacher_hidden": normal(tokens, sizes.hidden, scale=1.0),
        "teacher_weight": normal(sizes.vocab, sizes.hidden, scale=sizes.hidden**-0.5),
        "targets": targets.to(device),
    }


def make_targets(sizes: Sizes, seed: int = 0) -> torch.Tensor:
    """``(batch · length,)`` next-token targets; each sequence starts with a prompt of PROMPT tokens."""
    generator = torch.Generator().manual_seed(seed + 1)
    labels = torch.randint(0, sizes.vocab, (sizes.batch, sizes.length), generator=generator)
    labels[:, : min(PROMPT, sizes.length - 1)] = -100
    return next_token_targets(labels).reshape(-1)


def step_naive(inputs: dict, kind: str) -> torch.Tensor:
    student_logits = inputs["student_hidden"] @ inputs["student_weight"].t()
    with torch.no_grad():
        teacher_logits = inputs["teacher_hidden"] @ inputs["teacher_weight"].t()
    loss = token_loss(student_logits, teacher_logits, inputs["targets"], kind, reduction="sum")
    loss.backward()
    return loss.detach()


def step_chunked(inputs: dict, kind: str, chunk_size: int | None = None) -> torch.Tensor:
    loss = chunked_token_loss(
        inputs["student_hidden"],
        inputs["student_weight"],
        None,
        inputs["targets"],
        kind,
        teacher_hidden=inputs["teacher_hidden"],
        teacher_weight=inputs["teacher_weight"],
        chunk_size=chunk_size,
    )
    loss.backward()
    return loss.detach()


def step_liger(inputs: dict, kind: str) -> torch.Tensor:
    from liger_kernel.transformers import LigerFusedLinearJSD

    loss = LigerFusedLinearJSD(jsd_beta=LIGER_BETA.get(kind, 0.5))(
        inputs["student_hidden"],
        inputs["student_weight"],
        inputs["teacher_hidden"],
        inputs["teacher_weight"],
        inputs["targets"],
    )
    loss.backward()
    # Liger averages over counted tokens; times their count it compares with kdistill's sum
    return loss.detach() * (inputs["targets"] != -100).sum()


STEPS = {"naive": step_naive, "chunked": step_chunked, "liger": step_liger}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _max_rss_mb() -> float:
    """This process's peak resident memory (VmHWM where Linux gives it, which _reset_peak_rss can lower)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _reset_peak_rss() -> None:
    """Lower the peak to the current resident memory (Linux), so that a contender run in a process
    that used more memory before still gets a peak of its own."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def run_contender(name: str, sizes: Sizes, device: str, kind: str, repeats: int) -> dict:
    """One warm-up and ``repeats`` timed steps of one contender in this process."""
    inputs = make_inputs(sizes, device)
    step, times = STEPS[name], []
    _sync(device)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        _reset_peak_rss()
        baseline = _max_rss_mb()
    for index in range(repeats + 1):
        inputs["student_hidden"].grad = inputs["student_weight"].grad = None
        start = time.perf_counter()
        loss = step(inputs, kind)
        _sync(device)
        if index:
            times.append(time.perf_counter() - start)
    if device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - baseline) / 2**20
    else:
        peak = _max_rss_mb() - baseline
    return {
        "name": name,
        "peak_mb": peak,
        "times": times,
        "loss": loss.double().cpu(),
        "grad_hidden": inputs["student_hidden"].grad.cpu(),
        "grad_weight": inputs["student_weight"].grad.cpu(),
    }


def _run_isolated(name: str, sizes: Sizes, kind: str, repeats: int, threads: int | None, folder: Path) -> dict:
    """:func:`run_contender` in a fresh Python process, so that its max RSS is its own."""
    out = folder / f"{name}.pt"
    command = [
        sys.executable,
        __file__,
        "--worker",
        name,
        "--kind",
        kind,
        "--repeats",
        str(repeats),
        "--sizes",
        json.dumps(asdict(sizes)),
        "--out",
        str(out),
    ]
    if threads:
        command += ["--threads", str(threads)]
    # the worker must import the same kdistill as this process (a worktree's sources, say)
    source = str(Path(kdistill.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
    return torch.load(out, weights_only=False)


def _relative(value: torch.Tensor, reference: torch.Tensor) -> float:
    scale = reference.double().abs().max().clamp_min(1e-30)
    return float((value.double() - reference.double()).abs().max() / scale)


def _float64_check(kind: str) -> dict:
    """Chunked vs dense in float64 on small sizes: values and gradients to ~1e-15."""
    inputs = make_inputs(Sizes(batch=2, length=40, vocab=300, hidden=24), "cpu", seed=1)
    for key in ("student_hidden", "student_weight", "teacher_hidden", "teacher_weight"):
        inputs[key] = inputs[key].detach().double().requires_grad_(key.startswith("student"))
    naive = step_naive(inputs, kind), inputs["student_hidden"].grad, inputs["student_weight"].grad
    inputs["student_hidden"].grad = inputs["student_weight"].grad = None
    # a chunk size that does not divide the 78 counted tokens
    chunked = step_chunked(inputs, kind, chunk_size=7), inputs["student_hidden"].grad, inputs["student_weight"].grad
    return {"float64_max_rel_diff": max(_relative(a, b) for a, b in zip(chunked, naive))}


def _contenders(device: str, kind: str) -> list[str]:
    names = ["naive", "chunked"]
    if device == "cuda" and kind in (*LIGER_BETA, "jsd"):
        try:
            import liger_kernel  # noqa: F401
        except ImportError:
            return names
        names.append("liger")
    return names


def benchmark(
    sizes: Sizes, device: str, kind: str, rounds: int, repeats: int, threads: int | None, isolate: bool = True
) -> dict:
    """Run every contender ``rounds`` times (alternating) and summarise them in one dict.

    ``isolate=False`` runs the CPU contenders in this process (for tests: the peaks then mean little).
    """
    names = _contenders(device, kind)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(rounds):
            for name in names:
                if device == "cpu" and isolate:
                    runs[name].append(_run_isolated(name, sizes, kind, repeats, threads, Path(folder)))
                else:
                    runs[name].append(run_contender(name, sizes, device, kind, repeats))
    summary = {
        name: {
            "peak_mb": max(r["peak_mb"] for r in done),
            "time_s": statistics.median(t for r in done for t in r["times"]),
        }
        for name, done in runs.items()
    }
    naive, chunked = runs["naive"][-1], runs["chunked"][-1]
    result = {
        # a tiny run in a process whose heap is already large may not grow it at all: no ratio then
        "peak_ratio": (
            summary["chunked"]["peak_mb"] / summary["naive"]["peak_mb"] if summary["naive"]["peak_mb"] > 0 else None
        ),
        "time_ratio": summary["chunked"]["time_s"] / summary["naive"]["time_s"],
        "naive_peak_mb": summary["naive"]["peak_mb"],
        "chunked_peak_mb": summary["chunked"]["peak_mb"],
        "naive_time_s": summary["naive"]["time_s"],
        "chunked_time_s": summary["chunked"]["time_s"],
        "max_rel_diff_loss": _relative(chunked["loss"], naive["loss"]),
        "max_rel_diff_grad_hidden": _relative(chunked["grad_hidden"], naive["grad_hidden"]),
        "max_rel_diff_grad_weight": _relative(chunked["grad_weight"], naive["grad_weight"]),
        "loss": float(naive["loss"]),
    }
    if "liger" in runs:
        liger = runs["liger"][-1]
        result.update(
            {
                "liger_peak_mb": summary["liger"]["peak_mb"],
                "liger_time_s": summary["liger"]["time_s"],
                "liger_max_rel_diff_loss": _relative(liger["loss"], naive["loss"]),
                "liger_max_rel_diff_grad_weight": _relative(liger["grad_weight"], naive["grad_weight"]),
            }
        )
    result.update(_float64_check(kind))
    result.update(
        {
            "kind": kind,
            "dtype": "float32",
            "sizes": asdict(sizes),
            "tokens": sizes.batch * sizes.length,
            "counted_tokens": int((make_targets(sizes) != -100).sum()),
            "chunk_size": default_chunk_size(sizes.vocab, kind),
            "rounds": rounds,
            "timed_steps_per_round": repeats,
            "device": device if device == "cpu" else torch.cuda.get_device_name(),
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        }
    )
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round of two timed steps (same sizes)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--kind", choices=KINDS, default="forward_kl")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--sizes", default=None, help=argparse.SUPPRESS)  # JSON of Sizes, for tests and workers
    parser.add_argument("--worker", choices=tuple(STEPS), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = Sizes(**json.loads(args.sizes)) if args.sizes else Sizes()
    repeats = args.repeats or (2 if args.quick else 3)
    if args.worker:
        torch.save(run_contender(args.worker, sizes, args.device, args.kind, repeats), args.out)
        return {}
    result = benchmark(sizes, args.device, args.kind, 1 if args.quick else 3, repeats, args.threads)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
