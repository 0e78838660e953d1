"""The student as the teacher's draft model: assisted generation (speculative decoding), greedy.

``teacher.generate(prompt, assistant_model=student, do_sample=False)`` decodes in rounds. In each
round the student drafts a few tokens greedily with its own KV cache; the teacher reads them all
in one forward pass, keeps the drafted tokens up to the first that is not its own greedy choice,
and adds its own next token after them. A round costs one teacher pass and the student's drafting,
and gives the accepted tokens plus one. Verification keeps the output the teacher's greedy output;
only float rounding can change it (the teacher scores a draft of k tokens in one pass, not one at a
time, and a near-tie may fall the other way), so every timed prompt is checked.

How much the student drafts is transformers' choice (``AssistedCandidateGenerator``), read from the
student's own generation config, as it is for anyone who passes the student as ``assistant_model``:
up to ``num_assistant_tokens`` a round (20 by default; the ``heuristic`` schedules add 2 after a
draft accepted whole and take 1 away otherwise), a draft stopping early after a token whose
probability under the student is below ``assistant_confidence_threshold`` (0.4 by default; with
scikit-learn installed, re-tuned during a generation from which drafted tokens were accepted).

The drafted and accepted tokens are counted exactly with forward hooks, public and independent of
transformers' internals: each teacher pass of an assisted generation is one round, which adds its
accepted draft and one token of the teacher's own, so ``accepted = generated tokens - teacher
passes``; each student pass drafts one token (a round's first pass reads the tokens the teacher
added and drafts one, each later pass one more), so ``drafted = student passes``.
``tests/test_drafting.py`` checks both against the matches transformers itself counts.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from kdistill.models.loading import quiet_transformers
from kdistill.models.speed import summarise_rounds, time_rounds
from kdistill.tasks.causal_lm.evaluation import generate

__all__ = ["DRAFT_PROMPTS", "counted_passes", "draft_lines", "draft_measurement", "probe_prompts", "why_no_draft"]

#: prompts timed, one a round: each continued by the teacher alone and with the student drafting
DRAFT_PROMPTS = 5


def _vocab_size(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    size = getattr(text, "vocab_size", None)
    return size if isinstance(size, int) else None


def why_no_draft(teacher: nn.Module, student: nn.Module) -> str | None:
    """Why the student cannot be the teacher's draft model, in a few words; None when it can.

    transformers drafts token ids with a model of the teacher's vocabulary (``vocab_size``) only;
    with another it re-tokenises text between the two (universal assisted decoding), which is not
    what a student of the teacher's tokenizer would be deployed with.
    """
    if student is teacher:
        return "the student is the teacher itself"
    if not (hasattr(teacher, "generate") and hasattr(student, "generate")):
        return "the teacher and the student read different tokens"
    ours, theirs = _vocab_size(student), _vocab_size(teacher)
    if ours is None or ours != theirs:
        sizes = [f"{size:,}" if size is not None else "?" for size in (ours, theirs)]
        return (
            f"the student's vocabulary has {sizes[0]} ids and the teacher's {sizes[1]}: transformers drafts "
            "only with a model of the teacher's vocabulary"
        )
    return None


def probe_prompts(batch: Mapping[str, Tensor], length: int, count: int = DRAFT_PROMPTS) -> list[Tensor]:
    """The first ``count`` examples of ``batch`` with tokens, each cut to its first ``length`` tokens
    (padding left out): ``(1, P)`` tensors, ``P <= length``. The first is the speed measurement's
    prompt where that example fills ``length`` tokens."""
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    prompts = []
    for row in range(ids.shape[0]):
        tokens = ids[row][mask[row].bool()] if mask is not None else ids[row]
        if tokens.numel():
            prompts.append(tokens[:length].unsqueeze(0))
        if len(prompts) == count:
            break
    return prompts


@contextmanager
def counted_passes(models: Mapping[str, nn.Module]) -> Iterator[dict[str, int]]:
    """Count each model's forward passes within the block: ``{name: passes}``, filled in as they run."""
    counts = dict.fromkeys(models, 0)

    def counter(name: str) -> Any:
        def hook(*_: Any) -> None:
            counts[name] += 1

        return hook

    handles = [model.register_forward_hook(counter(name)) for name, model in models.items()]
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


def draft_measurement(
    teacher: nn.Module,
    student: nn.Module,
    prompts: Sequence[Tensor],
    *,
    new_tokens: int,
    eos_token_id: int | None = None,
) -> dict[str, Any]:
    """The student as the teacher's draft model on ``prompts`` (each ``(1, P)``): the share of its
    drafted tokens the teacher accepts, and the teacher's greedy speed alone and with it drafting.

    Round ``r`` continues prompt ``r`` by ``new_tokens`` tokens twice, with the teacher alone and
    with the student drafting, in an order that alternates from round to round
    (:func:`kdistill.models.speed.time_rounds`), after an untimed warm-up of each. The two outputs of
    every round are compared: assisted generation must give the teacher's greedy output.

    Returns:
        ``prompts``, ``identical`` (prompts whose two outputs are the same), ``prompt_tokens`` (the
        longest prompt), ``new_tokens``, ``drafted`` and ``accepted`` (tokens, summed over the
        prompts), ``acceptance`` (accepted / drafted; None when nothing was drafted),
        ``tokens_per_teacher_pass`` (generated tokens over the teacher's forward passes, with the
        student drafting; 1.0 without), ``teacher_tokens_per_s`` and ``assisted_tokens_per_s``
        (greedy, batch 1: the median over the rounds), ``speedup`` (the median of the rounds'
        ratios, teacher time / assisted time) with ``speedup_spread`` (its interquartile range over
        the median), and ``seconds`` (the measurement's wall-clock time, warm-up included).
    """
    started = time.perf_counter()
    outputs: dict[str, list[Tensor]] = {"teacher": [], "assisted": []}
    totals = {"drafted": 0, "accepted": 0, "teacher_passes": 0}

    def alone() -> None:
        outputs["teacher"].append(generate(teacher, prompts[len(outputs["teacher"])], new_tokens, eos_token_id))

    def assisted() -> None:
        prompt = prompts[len(outputs["assisted"])]
        with counted_passes({"teacher": teacher, "student": student}) as passes:
            new = generate(teacher, prompt, new_tokens, eos_token_id, assistant=student)
        outputs["assisted"].append(new)
        totals["drafted"] += passes["student"]
        totals["accepted"] += new.shape[1] - passes["teacher"]
        totals["teacher_passes"] += passes["teacher"]

    # a "heuristic" draft length is written back to the student's generation config after each
    # generation: the measurement leaves the student as it found it
    config = copy.deepcopy(student.generation_config) if hasattr(student, "generation_config") else None
    # transformers' drafting calls pass a generation config and arguments together, and the minimum
    # length twice, and it warns about both: notes on its own calls, not on kdistill's
    with quiet_transformers():
        try:
            generate(teacher, prompts[0], 2, eos_token_id)
            generate(teacher, prompts[0], 2, eos_token_id, assistant=student)
            rounds = len(prompts)
            times = time_rounds(
                {"teacher": alone, "assisted": assisted},
                min_rounds=rounds,
                max_rounds=rounds,
                min_seconds=0.0,
                warmup=0,
            )
        finally:
            if config is not None:
                student.generation_config = config
    per_token = {name: [seconds / new_tokens for seconds in taken] for name, taken in times.items()}
    summary = summarise_rounds(per_token, units=1.0)
    identical = sum(torch.equal(a, b) for a, b in zip(outputs["teacher"], outputs["assisted"], strict=True))
    generated = sum(int(new.shape[1]) for new in outputs["assisted"])
    drafted, accepted = totals["drafted"], totals["accepted"]
    return {
        "prompts": len(prompts),
        "identical": int(identical),
        "prompt_tokens": max(int(prompt.shape[1]) for prompt in prompts),
        "new_tokens": new_tokens,
        "drafted": drafted,
        "accepted": accepted,
        "acceptance": accepted / drafted if drafted else None,
        "tokens_per_teacher_pass": generated / max(totals["teacher_passes"], 1),
        "teacher_tokens_per_s": summary["teacher"]["throughput"],
        "assisted_tokens_per_s": summary["assisted"]["throughput"],
        "speedup": summary["assisted"]["speedup"],
        "speedup_spread": summary["assisted"]["speedup_spread"],
        "seconds": time.perf_counter() - started,
    }


def draft_lines(record: Mapping[str, Any]) -> list[str]:
    """The report's line on the student as the teacher's draft model (a record of
    :func:`draft_measurement`, or ``{"skipped": reason}``)."""
    title = "Student as the teacher's draft model (assisted generation"
    if "skipped" in record:
        return [f"{title}): not measured, as {record['skipped']}."]
    prompts, identical = record["prompts"], record["identical"]
    how = (
        f"{title}, greedy, batch 1: {prompts} prompt{'' if prompts == 1 else 's'} of up to "
        f"{record['prompt_tokens']} tokens, {record['new_tokens']} new tokens each, timed in alternating rounds)"
    )
    if record["acceptance"] is None:
        accepted = "the student drafted no token (too few new tokens to draft any)"
    else:
        accepted = (
            f"the teacher accepted {record['acceptance']:.0%} of the {record['drafted']:,} tokens the student "
            f"drafted ({record['tokens_per_teacher_pass']:.2f} tokens a teacher pass)"
        )
    speed = (
        f"{record['teacher_tokens_per_s']:,.0f} tokens/s alone, {record['assisted_tokens_per_s']:,.0f} with the "
        f"student drafting: {record['speedup']:.2f}x (IQR {record['speedup_spread']:.0%})"
    )
    if identical == prompts:
        same = f"the output was the teacher's greedy output on all {prompts} prompts"
    else:
        same = (
            f"the output differed from the teacher's greedy output on {prompts - identical} of {prompts} prompts "
            "(float rounding: the teacher scores a whole draft in one pass, and a near-tie can fall the other way)"
        )
    return [f"{how}: {accepted}; {speed}; {same}."]
