"""Conversations (JSONL ``messages``) rendered with the tokenizer's chat template; only the
assistant's turns are learned."""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from kdistill.data.datasets import IGNORE_INDEX
from kdistill.errors import DataError, ModelLoadError
from kdistill.tasks.causal_lm.reading import Documents
from kdistill.tasks.causal_lm.split import CHUNK, LMSplit, document_split

logger = logging.getLogger("kdistill.data")

__all__ = ["tokenize_conversations"]


def _render(tokenizer: Any, messages: list[dict[str, Any]], where: str, *, generation_prompt: bool) -> str:
    try:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as error:  # the template's own checks (roles must alternate ...) raise anything
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"the tokenizer's chat template refuses the conversation of {where}: {first}") from None
    if not isinstance(rendered, str):
        raise ModelLoadError(
            f"the tokenizer's apply_chat_template gave {type(rendered).__name__}, not text, for {where}; give a "
            "tokenizer whose chat template renders text"
        )
    return rendered


def _assistant_spans(tokenizer: Any, messages: list[dict[str, Any]], where: str) -> tuple[str, list[tuple[int, int]]]:
    """The conversation's rendering and the character spans of its assistant turns in it.

    A turn's span is what rendering the conversation up to and including it adds to rendering
    it up to the turn with the generation prompt (the template's ``<|im_start|>assistant\\n``):
    the assistant's text and its end-of-turn token. Whitespace the template writes after the end
    of the turn is not the assistant's and is left out.
    """
    full = _render(tokenizer, messages, where, generation_prompt=False)
    spans = []
    for turn, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if turn == 0:
            raise DataError(
                f"{where}: the conversation starts with an assistant turn, and a chat template cannot render the "
                "empty conversation before it; give a system or user turn first (or use prompt/completion records)"
            )
        before = _render(tokenizer, messages[:turn], where, generation_prompt=True)
        upto = _render(tokenizer, messages[: turn + 1], where, generation_prompt=False)
        if not upto.startswith(before) or not full.startswith(upto):
            raise DataError(
                f"{where}: the tokenizer's chat template renders the conversation differently when it is cut after "
                f"message {turn} (the shorter rendering is not the start of the longer), so kdistill cannot tell "
                "which tokens the assistant wrote; use a tokenizer whose template renders turns in order, or "
                "prompt/completion records"
            )
        end = len(upto.rstrip())
        spans.append((len(before), max(end, len(before))))
    return full, spans


def _learned(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[bool]:
    """Per token: does its character span lie inside one of ``spans`` (sorted, disjoint)?"""
    starts = [start for start, _ in spans]
    inside = []
    for first, last in offsets:
        which = bisect_right(starts, first) - 1
        inside.append(last > first and which >= 0 and last <= spans[which][1])
    return inside


def tokenize_conversations(documents: Documents, tokenizer: Any, max_length: int, progress: bool) -> LMSplit:
    """Conversations through the chat template; only the assistant turns' tokens are learned."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"{documents.source!r} holds conversations but the tokenizer has no chat template; give chat data with a "
            "tokenizer that has one (teacher.tokenizer:), or prompt/completion records"
        )
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(
            "marking the assistant's tokens of chat data needs a fast tokenizer (one with offsets, from the "
            "tokenizers library); give a tokenizer folder with a tokenizer.json, or prompt/completion records"
        )
    renderings, all_spans = [], []
    with tqdm(total=len(documents), desc=f"rendering {documents.source}", unit="conv", disable=not progress) as bar:
        for index, messages in enumerate(documents.records):
            full, spans = _assistant_spans(tokenizer, messages, documents.where(index))
            renderings.append(full)
            all_spans.append(spans)
            bar.update()
    input_ids, labels, spans_kept, cut_off = [], [], [], []
    dropped = dropped_tokens = 0
    with tqdm(total=len(renderings), desc=f"tokenising {documents.source}", unit="conv", disable=not progress) as bar:
        for start in range(0, len(renderings), CHUNK):
            chunk = renderings[start : start + CHUNK]
            # the template already holds the special tokens: none added
            encoded = tokenizer(
                chunk,
                add_special_tokens=False,
                return_offsets_mapping=True,
                return_attention_mask=False,
                verbose=False,
            )
            for offset, (ids, offsets) in enumerate(zip(encoded["input_ids"], encoded["offset_mapping"])):
                index = start + offset
                learned = _learned(offsets, all_spans[index])
                targets = [token if keep else IGNORE_INDEX for token, keep in zip(ids, learned)]
                if not any(learned[:max_length]):
                    dropped += 1
                    dropped_tokens += len(ids)
                    continue
                cut_off.append(max(0, len(ids) - max_length))
                input_ids.append(ids[:max_length])
                labels.append(targets[:max_length])
                spans_kept.append((index, index))
            bar.update(len(chunk))
    if not input_ids:
        raise DataError(
            f"every conversation of {documents.source!r} ({len(documents):,}) was dropped: none has an assistant "
            f"token within data.max_length ({max_length:,} tokens); raise data.max_length or shorten the turns "
            "before the assistant's"
        )
    if dropped:
        logger.warning(
            "%s: %d of %d conversations dropped, no assistant token within data.max_length (%d)",
            documents.source,
            dropped,
            len(documents),
            max_length,
        )
    return document_split(
        "messages", input_ids, labels, documents, max_length, spans_kept, cut_off, dropped, dropped_tokens
    )
