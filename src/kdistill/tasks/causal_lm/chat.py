"""Conversations (JSONL ``messages``) rendered with the tokenizer's chat template; only the
assistant's turns are learned.

A chat template is a program (Jinja) that comes with the tokenizer: one that loops for minutes
would hang the run without a word, so each rendering is bounded in time (:data:`RENDER_SECONDS`)
and one that runs past it is refused in one line that names the template's file.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from kdistill.data.datasets import IGNORE_INDEX
from kdistill.errors import DataError, ModelLoadError
from kdistill.tasks.causal_lm.reading import Documents
from kdistill.tasks.causal_lm.split import CHUNK, LMSplit, document_split

logger = logging.getLogger("kdistill.data")

__all__ = ["RENDER_SECONDS", "tokenize_conversations"]

#: the longest one rendering of one conversation may take (a real template takes a millisecond)
RENDER_SECONDS = 10.0
#: the name Jinja gives the code it compiles a template into
_TEMPLATE_CODE = "<template>"


class _RenderTimeout(BaseException):
    """Raised inside a template that has run past its time; a BaseException, so that no
    ``except Exception`` in Jinja or transformers swallows it."""


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`_RenderTimeout` inside the block once it has run ``seconds``.

    In the main thread, with no timer of anyone else's running, a ``SIGALRM`` timer does it at no
    cost while the template runs; elsewhere (another thread, a timer taken, as pytest-timeout
    takes it) a trace function watches the template's own code only, and the one that was set
    before is set again after.
    """
    free = (
        hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    )
    if free:

        def expire(signum: int, frame: Any) -> None:
            raise _RenderTimeout

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        return
    deadline = time.monotonic() + seconds

    def in_template(frame: Any, event: str, arg: Any) -> Any:
        if time.monotonic() > deadline:
            raise _RenderTimeout
        return in_template

    def on_call(frame: Any, event: str, arg: Any) -> Any:
        if time.monotonic() > deadline:
            raise _RenderTimeout
        return in_template if frame.f_code.co_filename == _TEMPLATE_CODE else None

    tracer = sys.gettrace()
    sys.settrace(on_call)
    try:
        yield
    finally:
        sys.settrace(tracer)


def _template_name(tokenizer: Any) -> str:
    """The chat template of ``tokenizer`` as a message names it: the file it was read from, where
    the tokenizer came from a folder (``chat_template.jinja`` or ``tokenizer_config.json``)."""
    origin = str(getattr(tokenizer, "name_or_path", "") or "")
    folder = Path(origin)
    if origin and folder.is_dir():
        for name in ("chat_template.jinja", "chat_template.json", "tokenizer_config.json"):
            if (folder / name).is_file():
                return f"the chat template in {str(folder / name)!r}"
    if origin:
        return f"the chat template of the tokenizer {origin!r}"
    return "the tokenizer's chat template"


def _render(tokenizer: Any, messages: list[dict[str, Any]], where: str, *, generation_prompt: bool) -> str:
    try:
        with _time_limit(RENDER_SECONDS):
            rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except _RenderTimeout:
        raise ModelLoadError(
            f"{_template_name(tokenizer)} did not finish rendering the conversation of {where} within "
            f"{RENDER_SECONDS:g} s (a loop that does not end?); fix the template, give a tokenizer whose "
            "template renders (teacher.tokenizer:), or use prompt/completion records"
        ) from None
    except Exception as error:  # the template's own checks (roles must alternate ...) raise anything
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{_template_name(tokenizer)} refuses the conversation of {where}: {first}") from None
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
