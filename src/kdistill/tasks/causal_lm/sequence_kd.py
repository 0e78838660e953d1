"""Sequence-level distillation data (Kim & Rush 2016): each training example's prompt continued by the
teacher, once; the student then learns the teacher's continuation (the prompt is never a target).

A text block's prompt is its first ``prompt_tokens`` tokens; a prompt/completion or chat example's
prompt is everything before its first learned token. The continuations are stored by
:func:`kdistill.tasks.causal_lm.generation.teacher_generations`, so a later run with the same teacher, prompts and
settings reads them back instead of generating again.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

from kdistill.data.datasets import IGNORE_INDEX, TokenizedDataset
from kdistill.tasks.base import Models, TaskData
from kdistill.tasks.causal_lm.config import SequenceKDConfig
from kdistill.tasks.causal_lm.generation import GenerationSettings, teacher_generations

__all__ = ["LongestPrompt", "longest_prompt", "prompts_of", "sequence_kd_data"]

logger = logging.getLogger("kdistill.data")


def _prompt_ends(dataset: TokenizedDataset, prompt_tokens: int) -> Iterator[tuple[int, bool]]:
    """Where each example's prompt ends, and whether ``prompt_tokens`` cut it (an example labelled
    from the start, a text block) rather than its own first labelled token."""
    for ids, labels in zip(dataset.columns["input_ids"], dataset.columns["labels"], strict=True):
        first = next((place for place, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
        yield (first, False) if first > 0 else (min(prompt_tokens, max(len(ids) - 1, 1)), True)


def prompts_of(dataset: TokenizedDataset, prompt_tokens: int) -> list[list[int]]:
    """Each example's prompt: its tokens before the first labelled one, or its first ``prompt_tokens``
    tokens when it is labelled from the start (a text block)."""
    ends = _prompt_ends(dataset, prompt_tokens)
    return [list(ids[:end]) for ids, (end, _) in zip(dataset.columns["input_ids"], ends)]


class LongestPrompt(NamedTuple):
    """The longest prompt :func:`prompts_of` gives a dataset."""

    #: its tokens
    tokens: int
    #: whether ``prompt_tokens`` cut that one (a text block) rather than the example's own prompt
    cut: bool
    #: whether ``prompt_tokens`` cut any prompt at all (False: it changes nothing)
    any_cut: bool


def longest_prompt(dataset: TokenizedDataset, prompt_tokens: int) -> LongestPrompt:
    """The longest prompt :func:`prompts_of` gives ``dataset``, and where ``prompt_tokens`` cuts prompts."""
    longest, cut, any_cut = 0, False, False
    for end, by_setting in _prompt_ends(dataset, prompt_tokens):
        any_cut = any_cut or by_setting
        if end > longest or (end == longest and by_setting):
            longest, cut = end, by_setting
    return LongestPrompt(longest, cut, any_cut)


def sequence_kd_data(
    settings: SequenceKDConfig, models: Models, data: TaskData, *, seed: int, progress: bool
) -> TaskData:
    """``data`` with the student distilled on the teacher's continuations of the training prompts
    (and on the data's own examples too with ``keep_data``)."""
    train = data.train
    assert isinstance(train, TokenizedDataset)
    tokenizer = models.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompts = prompts_of(train, settings.prompt_tokens)
    generation = GenerationSettings(
        new_tokens=settings.new_tokens,
        do_sample=settings.do_sample,
        # greedy decoding reads neither; they keep their defaults so that its stored continuations keep their key
        temperature=settings.temperature if settings.temperature is not None else 1.0,
        seed=settings.seed if settings.seed is not None else seed,
        batch_size=settings.batch_size,
    )
    started = time.perf_counter()
    continuations, folder, reused = teacher_generations(
        models.teacher, prompts, generation, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id, progress=progress
    )
    seconds = time.perf_counter() - started
    columns: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for prompt, continuation in zip(prompts, continuations, strict=True):
        ids = prompt + continuation
        columns["input_ids"].append(ids)
        columns["attention_mask"].append([1] * len(ids))
        columns["labels"].append([IGNORE_INDEX] * len(prompt) + continuation)
    written = TokenizedDataset(columns, None, f"the teacher's continuations ({folder})")
    tokens = sum(len(continuation) for continuation in continuations)
    logger.info(
        "sequence-level KD: %d teacher continuations (%s tokens) of %s, %s",
        len(continuations),
        f"{tokens:,}",
        "prompts of the training examples",
        f"read back from {folder}" if reused else f"generated in {seconds:.0f} s and stored in {folder}",
    )
    distill: Any = train.concat(written) if settings.keep_data else written
    details = {
        **data.details,
        "sequence_kd": {
            "continuations": len(continuations),
            "tokens": tokens,
            "seconds": 0.0 if reused else seconds,
            "reused": reused,
            "folder": str(folder),
        },
    }
    return dataclasses.replace(data, distill=distill, details=details)
