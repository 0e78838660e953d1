"""Measuring causal language models: perplexity, next-token agreement, generation speed, samples.

Perplexity and agreement are computed from the models' final hidden states chunk by chunk, as the
training loss is: a batch's full logits are never held (4 × 512 tokens of a 49,152-id vocabulary
would be 400 MB a model). Perplexity is ``exp`` of the mean cross-entropy over target tokens (the
positions whose next token counts); agreement is the share of target tokens where the student's
most likely next token is the teacher's. Generation speed is greedy decoding with the KV cache at
batch 1, timed for teacher and student in alternating rounds as every speed in kdistill is
(:mod:`kdistill.models.speed`): the median time per token, its spread, and the speed-up as the median
of the rounds' ratios, so that a burst of load elsewhere skews neither.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from kdistill.capture import capture
from kdistill.capture.features import CaptureRequest
from kdistill.losses.chunked import default_chunk_size
from kdistill.losses.tokens import next_token_targets
from kdistill.models.speed import measuring_conditions, summarise_rounds, time_rounds

__all__ = ["generate", "generation_speed", "language_model_metrics"]

_FINAL = CaptureRequest(logits=False, final_hidden=True)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _chunk_logits(features: Any, rows: Tensor) -> Tensor:
    layer = features.output_layer
    logits = rows.float() @ layer.weight.float().T
    return logits + layer.bias.float() if layer.bias is not None else logits


@torch.no_grad()
def language_model_metrics(
    models: Mapping[str, nn.Module], loader: Iterable[Any], *, progress: bool = True, desc: str = "evaluating"
) -> dict[str, dict[str, float]]:
    """Each model's perplexity and mean loss over the target tokens of ``loader``; with a teacher and a
    student, the student's next-token agreement with the teacher.

    Returns:
        ``{name: {"perplexity", "loss", "tokens"[, "agreement"]}}``.
    """
    names = list(models)
    # heads padded to different sizes: the most likely token is chosen among the ids both have
    shared = min(model.get_output_embeddings().weight.shape[0] for model in models.values())
    nll = {name: 0.0 for name in names}
    tokens, agree = 0, 0
    states = {name: model.training for name, model in models.items()}
    for model in models.values():
        model.eval()
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    for batch in tqdm(loader, desc=f"perplexity on {desc}", total=total, disable=not progress, leave=False):
        targets = next_token_targets(batch["labels"])
        keep = targets != -100
        tokens += int(keep.sum())
        picked: dict[str, Tensor] = {}
        for name, model in models.items():
            device = _device(model)
            inputs = {k: v.to(device) for k, v in batch.items() if k not in ("labels", "kd_index")}
            features = capture(model, inputs, _FINAL)
            rows, wanted = features.final_hidden[keep.to(device)], targets[keep].to(device)
            step = default_chunk_size(features.output_layer.weight.shape[0])
            choices = []
            for start in range(0, rows.shape[0], step):
                logits = _chunk_logits(features, rows[start : start + step])
                nll[name] += float(
                    torch.nn.functional.cross_entropy(logits, wanted[start : start + step], reduction="sum")
                )
                choices.append(logits[:, :shared].argmax(-1).cpu())
            picked[name] = torch.cat(choices) if choices else torch.zeros(0, dtype=torch.long)
        if "teacher" in picked and "student" in picked:
            agree += int((picked["teacher"] == picked["student"]).sum())
    for name, model in models.items():
        model.train(states[name])
    results = {}
    for name in names:
        loss = nll[name] / max(tokens, 1)
        results[name] = {"perplexity": math.exp(min(loss, 700.0)), "loss": loss, "tokens": float(tokens)}
    if "teacher" in results and "student" in results:
        results["student"]["agreement"] = agree / max(tokens, 1)
    return results


@torch.no_grad()
def generate(
    model: nn.Module, prompt: Tensor, new_tokens: int, eos_token_id: int | None, *, assistant: nn.Module | None = None
) -> Tensor:
    """Greedy continuation of ``prompt`` ``(1, P)`` by exactly ``new_tokens`` tokens, with the KV cache:
    ``(1, new_tokens)`` on the CPU. With an ``assistant`` (a model of the same vocabulary), assisted
    generation: the assistant drafts tokens and ``model`` verifies them (:mod:`.drafting`)."""
    states = [(each, each.training) for each in (model, assistant) if each is not None]
    for each, _ in states:
        each.eval()
    ids = prompt.to(_device(model))
    output = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        use_cache=True,
        pad_token_id=eos_token_id,
        assistant_model=assistant,
    )
    for each, training in states:
        each.train(training)
    return output[:, ids.shape[1] :].cpu()


def generation_speed(
    models: Mapping[str, nn.Module],
    prompt: Tensor,
    *,
    new_tokens: int = 32,
    rounds: int = 5,
    eos_token_id: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Tokens per second of greedy generation at batch 1 (KV cache), the models timed in alternating
    rounds after a warm-up (:func:`kdistill.models.speed.time_rounds`): per model the median time per token
    and its spread; the speed-up over the teacher is the median of the rounds' ratios.

    Returns:
        By model name: ``latency_ms`` (per generated token), ``latency_spread``, ``throughput``
        (tokens/s), ``speedup`` and ``speedup_spread`` where a teacher was timed, and the
        conditions of :func:`kdistill.models.speed.measuring_conditions` (batch 1, the prompt's length,
        ``new_tokens``).
    """
    load_before = measuring_conditions(1, prompt.shape[1], 0)["load_average"]
    for model in models.values():
        generate(model, prompt, 2, eos_token_id)  # warm-up, shorter than a timed round
    workloads = {
        name: (lambda model=model: generate(model, prompt, new_tokens, eos_token_id)) for name, model in models.items()
    }
    times = time_rounds(workloads, min_rounds=rounds, max_rounds=rounds, min_seconds=0.0, warmup=0)
    per_token = {name: [seconds / new_tokens for seconds in taken] for name, taken in times.items()}
    conditions = measuring_conditions(1, int(prompt.shape[1]), rounds, new_tokens=new_tokens)
    # the load before timing: the timing's own threads would otherwise count as load
    conditions["load_average"] = load_before
    summary = summarise_rounds(per_token, units=1.0)
    return {name: {**summary[name], **conditions} for name in models}
