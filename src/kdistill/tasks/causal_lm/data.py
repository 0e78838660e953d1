"""Causal-LM data for a run: documents tokenised once into blocks or examples with per-token labels.

The flow of :func:`prepare_splits`::

    .txt / .jsonl ─► documents (text, prompt/completion or messages)       reading.read_documents
        ─► token ids and labels, once, with the student's tokenizer         tokenize_documents
             text:               documents joined by EOS, cut into blocks of data.max_length
             prompt/completion:  prompt (-100) + completion + EOS (learned)
             messages:           the chat template's rendering, assistant turns learned
        ─► train / validation / test (files, or held out of train: test first, then validation)
        ─► token budgets (data.max_train_tokens, data.max_eval_tokens)

Labels are the tokens themselves, NOT shifted: the loss shifts them (position t predicts
token t+1). -100 marks a token no loss counts (a prompt, a user turn, the template's own
tokens). Conversations are rendered in :mod:`~kdistill.tasks.causal_lm.chat`; the teacher's and
the student's tokenizers are compared in :mod:`~kdistill.tasks.causal_lm.vocab`.
"""

from __future__ import annotations

import logging
import random
from bisect import bisect_right
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdistill.data.datasets import IGNORE_INDEX, TokenizedDataset
from kdistill.errors import DataError
from kdistill.tasks.causal_lm.chat import tokenize_conversations
from kdistill.tasks.causal_lm.config import LMDataConfig
from kdistill.tasks.causal_lm.reading import Documents, read_documents
from kdistill.tasks.causal_lm.split import UNITS, LMSplit, document_split, eos_id, plural, split_stats, token_ids

logger = logging.getLogger("kdistill.data")


def _pack(documents: Documents, tokenizer: Any, max_length: int, progress: bool) -> LMSplit:
    """Text: the documents joined by EOS into one stream, cut into blocks of ``max_length`` tokens."""
    eos = eos_id(tokenizer, "to separate documents")
    stream: list[int] = []
    ends: list[int] = []  # where each document (with its EOS) ends in the stream
    for ids in token_ids(tokenizer, documents.records, desc=f"tokenising {documents.source}", progress=progress):
        stream.extend(ids)
        stream.append(eos)
        ends.append(len(stream))
    full, rest = divmod(len(stream), max_length)
    bounds = [(start, start + max_length) for start in range(0, full * max_length, max_length)]
    dropped = dropped_tokens = 0
    if not bounds:  # shorter than one block: the only block is kept whole
        bounds = [(0, len(stream))]
    elif rest:
        dropped, dropped_tokens = 1, rest
    ones = [1] * max_length  # one mask shared by every full block: it is never changed in place
    input_ids, masks, spans = [], [], []
    for start, end in bounds:
        input_ids.append(stream[start:end])
        masks.append(ones if end - start == max_length else [1] * (end - start))
        spans.append((bisect_right(ends, start), bisect_right(ends, end - 1)))
    # labels are the inputs (the loss shifts them): the same lists, never changed in place
    columns = {"input_ids": input_ids, "attention_mask": masks, "labels": list(input_ids)}
    cut_off = [0] * len(input_ids)
    stats = split_stats(columns, spans, cut_off)
    stats.update(documents=len(documents), dropped=dropped, dropped_tokens=dropped_tokens)
    dataset = TokenizedDataset(columns, None, documents.source)
    return LMSplit(dataset, "text", max_length, documents.source, stats, spans, cut_off)


def _prompt_completion(documents: Documents, tokenizer: Any, max_length: int, progress: bool) -> LMSplit:
    """Prompt (-100) + completion + EOS (learned); a prompt of ``max_length`` tokens or more is dropped."""
    eos = eos_id(tokenizer, "to end each completion")
    prompts = [prompt for prompt, _ in documents.records]
    completions = [completion for _, completion in documents.records]
    desc = f"tokenising {documents.source}"
    prompt_ids = list(token_ids(tokenizer, prompts, desc=f"{desc} (prompts)", progress=progress))
    completion_ids = list(token_ids(tokenizer, completions, desc=f"{desc} (completions)", progress=progress))
    input_ids, labels, spans, cut_off = [], [], [], []
    dropped = dropped_tokens = longest_prompt = 0
    for index, (prompt, completion) in enumerate(zip(prompt_ids, completion_ids)):
        if len(prompt) >= max_length:
            dropped += 1
            dropped_tokens += len(prompt) + len(completion) + 1
            longest_prompt = max(longest_prompt, len(prompt))
            continue
        ids = prompt + completion + [eos]
        targets = [IGNORE_INDEX] * len(prompt) + completion + [eos]
        # a cut completion loses its EOS too: the model must not learn to stop where the cut fell
        cut_off.append(max(0, len(ids) - max_length))
        input_ids.append(ids[:max_length])
        labels.append(targets[:max_length])
        spans.append((index, index))
    if not input_ids:
        raise DataError(
            f"every prompt/completion example of {documents.source!r} ({len(documents):,}) was dropped: "
            f"data.max_length ({max_length:,}) is shorter than their prompts (the longest has {longest_prompt:,} "
            "tokens); raise data.max_length or shorten the prompts"
        )
    if dropped:
        logger.warning(
            "%s: %d of %d examples dropped, their prompts have data.max_length (%d) tokens or more (the longest %d)",
            documents.source,
            dropped,
            len(documents),
            max_length,
            longest_prompt,
        )
    return document_split(
        "prompt_completion", input_ids, labels, documents, max_length, spans, cut_off, dropped, dropped_tokens
    )


def tokenize_documents(
    documents: Documents, tokenizer: Any, config: LMDataConfig, *, progress: bool = True
) -> LMSplit:
    """Tokenise one file's documents into blocks (text) or examples (prompt/completion, messages).

    * text: each document without added special tokens, followed by ``tokenizer.eos_token_id``,
      all joined into one stream and cut into blocks of exactly ``data.max_length`` tokens; a
      partial last block is dropped unless it is the only one. ``labels`` are the inputs.
    * prompt/completion: ``prompt + completion + [eos]``, the prompt's labels -100; a prompt of
      ``max_length`` tokens or more drops the example, a longer whole is cut to ``max_length``
      (the completion loses its end, EOS included).
    * messages: the chat template's rendering, tokenised once; only the tokens inside an
      assistant turn (its text and end-of-turn token) are learned; cut to ``max_length``, and
      dropped when no assistant token is left.

    Args:
        documents: what :func:`~kdistill.tasks.causal_lm.reading.read_documents` read.
        tokenizer: the (student's) tokenizer: ``__call__``, ``eos_token_id``; for messages a
            fast tokenizer with a ``chat_template``.
        config: the ``data:`` section (``max_length``).
        progress: show progress bars.

    Raises:
        ModelLoadError: no EOS token (text, prompt/completion), or a slow tokenizer (messages).
        DataError: no chat template (messages); every example dropped; a template that renders
            a conversation cut before an assistant turn differently from the whole.
    """
    if documents.kind == "text":
        return _pack(documents, tokenizer, config.max_length, progress)
    if documents.kind == "prompt_completion":
        return _prompt_completion(documents, tokenizer, config.max_length, progress)
    if documents.kind == "messages":
        return tokenize_conversations(documents, tokenizer, config.max_length, progress)
    raise ValueError(f"unknown kind of documents {documents.kind!r}")


# ---------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------


def hold_out(split: LMSplit, fraction: float, seed: int, name: str) -> tuple[LMSplit, LMSplit]:
    """Hold ``fraction`` of the split's blocks or examples out (at least one), chosen with ``seed``.

    Returns:
        ``(rest, held_out)``, each in the split's order; the rest keeps the split's drop counts.

    Raises:
        DataError: the split has too few blocks or examples to hold one out.
    """
    count = len(split)
    held = max(1, round(count * fraction))
    unit = UNITS[split.kind]
    if count - held < 1:
        fix = "or lower data.max_length for more blocks" if split.kind == "text" else "or give more examples"
        raise DataError(
            f"{split.source!r} gives {plural(count, unit)} of up to {split.max_length:,} tokens: too few to hold "
            f"out a {name} split; give data.{name} (a file) {fix}"
        )
    order = list(range(count))
    random.Random(seed).shuffle(order)
    rest = split.subset(sorted(order[held:]), split.source, keep_dropped=True)
    out = split.subset(sorted(order[:held]), f"{split.source} ({name} split: {fraction:g} held out, seed {seed})")
    return rest, out


def apply_token_budget(split: LMSplit, budget: int, seed: int, option: str) -> LMSplit:
    """Keep whole blocks or examples, in an order shuffled with ``seed``, up to ``budget`` tokens.

    The examples are taken in the shuffled order while the next one still fits; the kept ones
    stay in the split's order. A split within the budget is returned as it is.

    Raises:
        DataError: not even the first example fits (``option`` names the setting).
    """
    if split.tokens <= budget:
        return split
    order = list(range(len(split)))
    random.Random(seed).shuffle(order)
    lengths = split.dataset.lengths
    kept, total = [], 0
    for index in order:
        if total + lengths[index] > budget:
            break
        kept.append(index)
        total += lengths[index]
    unit = UNITS[split.kind]
    if not kept:
        raise DataError(
            f"data.{option} ({budget:,}) is fewer than the {lengths[order[0]]:,} tokens of one {unit[0]} of "
            f"{split.source!r}: raise data.{option} (or lower data.max_length)"
        )
    source = f"{split.source} ({option} {budget:,}: {plural(len(kept), unit)} of {len(split):,}, seed {seed})"
    result = split.subset(sorted(kept), source, keep_dropped=True)
    result.stats["left_out"] = split.stats.get("left_out", 0) + len(split) - len(kept)
    return result


def _same_file(a: str, b: str) -> bool:
    return Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve()


def prepare_splits(
    config: LMDataConfig, tokenizer: Any, *, progress: bool = True, teachers: Sequence[str] | None = None
) -> dict[str, LMSplit]:
    """Read and tokenise the splits of a run, hold out the missing ones, apply the token budgets.

    Order: the train file, then the validation and test files where given; with no test file and
    ``data.test_fraction`` the test split is held out of train first (seed ``split_seed``), then
    with no validation file the validation split from what is left (seed ``split_seed + 1``);
    then ``data.max_train_tokens`` cuts train (seed ``split_seed + 2``) and
    ``data.max_eval_tokens`` cuts validation and test (seed ``split_seed + 3``), keeping whole
    blocks or examples. With ``teachers`` and ``data.teacher_field`` (``combine: route``) the
    training records name their teachers, and every split taken from train keeps each example's
    (:attr:`LMSplit.routes`).

    Returns:
        ``{"train": ..., "validation": ..., ["test": ...]}`` (test absent without a test file or
        ``data.test_fraction``).

    Raises:
        DataError: a missing or unreadable file, a validation or test file that is the training
            file, too little data to hold a split out, a budget smaller than one example; routed
            text, or a training record without a teacher of ``teachers``.
        ModelLoadError: the tokenizer cannot tokenise the data (no EOS, no offsets).
    """
    for role in ("validation", "test"):
        path = getattr(config, role)
        if path is not None and _same_file(path, config.train):
            raise DataError(
                f"data.{role} is the training file {config.train!r}: give held-out text, or leave data.{role} out "
                "to hold some out of the training file"
            )
    splits: dict[str, LMSplit] = {}
    for role in ("train", "validation", "test"):
        path = getattr(config, role)
        if path is not None:
            documents = read_documents(path, config, role=role, teachers=teachers if role == "train" else None)
            splits[role] = tokenize_documents(documents, tokenizer, config, progress=progress)
            logger.info("%s %s: %s", role, path, splits[role].describe())
    if "test" not in splits and config.test_fraction is not None:
        splits["train"], splits["test"] = hold_out(splits["train"], config.test_fraction, config.split_seed, "test")
    if "validation" not in splits:
        splits["train"], splits["validation"] = hold_out(
            splits["train"], config.validation_fraction, config.split_seed + 1, "validation"
        )
    if config.max_train_tokens is not None:
        splits["train"] = apply_token_budget(
            splits["train"], config.max_train_tokens, config.split_seed + 2, "max_train_tokens"
        )
    if config.max_eval_tokens is not None:
        for role in ("validation", "test"):
            if role in splits:
                splits[role] = apply_token_budget(
                    splits[role], config.max_eval_tokens, config.split_seed + 3, "max_eval_tokens"
                )
    for role, split in splits.items():
        if len(split) == 0:  # pragma: no cover - every step above refuses to leave a split empty
            raise DataError(f"the {role} split holds no {UNITS[split.kind][0]}: give more data in {split.source!r}")
    return {role: splits[role] for role in ("train", "validation", "test") if role in splits}
