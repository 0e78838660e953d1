"""How much of a causal-LM teacher's next-token distribution a top-k cache keeps, for several k.

A top-k cache (``teacher.cache: {top_k: k}``) stores each token's k most probable ids and one
bucket for the rest of the teacher's mass; the divergence is taken between the two coarsened
distributions, so the shape of the rest is lost. This script reads a teacher folder and a text
file, runs the teacher over the first ``--blocks`` blocks of ``--length`` tokens, and prints one
JSON object with, for every k:

* ``rest_mass_mean`` / ``rest_mass_median`` / ``rest_mass_p90``: the teacher's probability
  outside its top k (the mass whose shape the cache drops);
* ``target_outside``: the share of positions whose real next token is outside the top k (its
  teacher probability then only reaches the student inside the rest bucket);
* ``bytes_per_token``: what the cache stores for that k with ``topk_dtype: bf16`` (bf16 values, ids
  as uint16 below 65,536 ids else uint32, one float32 rest).

Usage: python benchmarks/lm_topk_coverage.py TEACHER_DIR TEXT_FILE [--blocks 8] [--length 256]
       [--k 8,32,128,256,1024] [--temperature 1.0] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def coverage(log_probs: torch.Tensor, targets: torch.Tensor, ks: list[int]) -> dict[int, dict[str, list[float]]]:
    """Per-position rest mass and target-outside flags.

    Args:
        log_probs: ``(N, V)`` the teacher's next-token log-probabilities at N positions.
        targets: ``(N,)`` the real next token at each position.
        ks: the cache sizes to measure, each at most V.

    Returns:
        ``{k: {"rest": [N floats], "outside": [N 0/1 floats]}}``.
    """
    ranked = log_probs.topk(max(ks), dim=-1)
    probs = ranked.values.exp()
    out: dict[int, dict[str, list[float]]] = {}
    for k in ks:
        rest = (1.0 - probs[:, :k].sum(-1)).clamp_min(0.0)
        outside = (ranked.indices[:, :k] != targets[:, None]).all(-1).float()
        out[k] = {"rest": rest.tolist(), "outside": outside.tolist()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("teacher", type=Path, help="a causal-LM folder (config, weights, tokenizer)")
    parser.add_argument("text", type=Path, help="a UTF-8 text file, read from its start")
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--k", default="8,32,128,256,1024", help="comma-separated cache sizes")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ks = sorted({int(k) for k in args.k.split(",") if k})
    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    model = AutoModelForCausalLM.from_pretrained(args.teacher, dtype=torch.float32).eval()
    if max(ks) > model.config.vocab_size:
        raise SystemExit(f"--k {max(ks)} is more than the teacher's {model.config.vocab_size} ids")
    wanted = args.blocks * args.length + 1
    text = args.text.read_text(encoding="utf-8")[: wanted * 16]  # far more characters than tokens needed
    ids = torch.tensor(tokenizer(text)["input_ids"][:wanted])
    if ids.numel() < wanted:
        raise SystemExit(f"{args.text} has {ids.numel()} tokens; --blocks x --length needs {wanted}")
    merged: dict[int, dict[str, list[float]]] = {k: {"rest": [], "outside": []} for k in ks}
    started = time.perf_counter()
    with torch.no_grad():
        for block in range(args.blocks):
            window = ids[block * args.length : (block + 1) * args.length + 1]
            logits = model(input_ids=window[None, :-1]).logits[0]
            log_probs = torch.log_softmax(logits.float() / args.temperature, dim=-1)
            for k, seen in coverage(log_probs, window[1:], ks).items():
                merged[k]["rest"] += seen["rest"]
                merged[k]["outside"] += seen["outside"]
    id_bytes = 2 if model.config.vocab_size <= 2**16 else 4
    result = {
        "teacher": str(args.teacher),
        "text": str(args.text),
        "tokens": args.blocks * args.length,
        "temperature": args.temperature,
        "vocab": model.config.vocab_size,
        "seconds": round(time.perf_counter() - started, 1),
        "k": {
            str(k): {
                "rest_mass_mean": round(statistics.fmean(merged[k]["rest"]), 4),
                "rest_mass_median": round(statistics.median(merged[k]["rest"]), 4),
                "rest_mass_p90": round(statistics.quantiles(merged[k]["rest"], n=10)[-1], 4),
                "target_outside": round(statistics.fmean(merged[k]["outside"]), 4),
                "bytes_per_token": k * (2 + id_bytes) + 4,
            }
            for k in ks
        },
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
