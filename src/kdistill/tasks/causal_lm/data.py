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
tokens). Teacher and student read the same ids: :func:`check_tokenizers` refuses two tokenizers
that give different ones, and :func:`shared_vocab_size` says how many logit columns the two
models share when one of them has padded rows.
"""

from __future__ import annotations

import logging
import random
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from kdistill.datasets import IGNORE_INDEX, TokenizedDataset
from kdistill.errors import DataError, ModelLoadError
from kdistill.tasks.causal_lm.config import LMDataConfig
from kdistill.tasks.causal_lm.reading import Documents, read_documents

logger = logging.getLogger("kdistill.data")

__all__ = [
    "LMSplit",
    "apply_token_budget",
    "check_tokenizers",
    "hold_out",
    "prepare_splits",
    "shared_vocab_size",
    "tokenize_documents",
]

#: texts tokenised per call (one progress-bar step)
_CHUNK = 1000
_UNITS = {
    "text": ("block", "blocks"),
    "prompt_completion": ("example", "examples"),
    "messages": ("conversation", "conversations"),
}


def _plural(count: int, unit: tuple[str, str]) -> str:
    return f"{count:,} {unit[0] if count == 1 else unit[1]}"


@dataclass
class LMSplit:
    """One split, tokenised: blocks (text) or examples, with per-token labels.

    Attributes:
        dataset: the examples: columns ``input_ids``, ``attention_mask`` and ``labels`` (a list
            per example, the same length as its ``input_ids``; -100 where no loss counts),
            unpadded; no per-example labels.
        kind: what the documents were (``text``, ``prompt_completion``, ``messages``).
        max_length: ``data.max_length``: tokens per block, at most per example.
        source: where the split came from, for messages and reports.
        stats: ``documents`` (read, or that the examples come from), ``examples``, ``tokens``,
            ``target_tokens`` (labels a loss counts), ``dropped`` / ``dropped_tokens`` (blocks or
            examples not kept: a partial last block, prompts too long, conversations with no
            assistant token within ``max_length``), ``cut`` / ``cut_tokens`` (examples cut to
            ``max_length``, and the tokens cut off), ``left_out`` (examples a token budget left out).
        document_spans: per example, the first and last document it holds tokens of.
        cut_off: per example, the tokens cut off its end (0 when whole).
    """

    dataset: TokenizedDataset
    kind: str
    max_length: int
    source: str
    stats: dict[str, int]
    document_spans: list[tuple[int, int]] = field(default_factory=list, repr=False)
    cut_off: list[int] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def tokens(self) -> int:
        """Tokens in the split (every position of every example)."""
        return self.stats["tokens"]

    def describe(self) -> str:
        """One line for the log: ``3 documents packed into 120 blocks of 512 tokens (61,440 tokens)``."""
        s = self.stats
        documents = _plural(s["documents"], ("document", "documents"))
        if self.kind == "text":
            longest = max(self.dataset.lengths, default=0)
            if s["examples"] == 1 and longest < self.max_length:
                line = f"{documents} packed into 1 block of {longest:,} tokens (fewer than data.max_length)"
            else:
                blocks = _plural(s["examples"], _UNITS["text"])
                line = f"{documents} packed into {blocks} of {self.max_length:,} tokens ({s['tokens']:,} tokens)"
        else:
            learned = "completion" if self.kind == "prompt_completion" else "assistant"
            what = "prompt/completion examples" if self.kind == "prompt_completion" else "conversations"
            count = f"{s['examples']:,} {what}" if s["examples"] != 1 else f"1 {what[:-1]}"
            line = f"{count} ({s['tokens']:,} tokens, {s['target_tokens']:,} {learned} tokens learned)"
        if s["dropped"]:
            if self.kind == "text":
                line += f"; the last {s['dropped_tokens']:,} tokens (a partial block) dropped"
            elif self.kind == "prompt_completion":
                line += f"; {s['dropped']:,} dropped (a prompt of data.max_length tokens or more)"
            else:
                line += f"; {s['dropped']:,} dropped (no assistant token within data.max_length)"
        if s["cut"]:
            line += f"; {s['cut']:,} cut to {self.max_length:,} tokens ({s['cut_tokens']:,} tokens cut off)"
        if s.get("left_out"):
            line += f"; {s['left_out']:,} left out by the token budget"
        return line

    def subset(self, indices: Sequence[int], source: str, *, keep_dropped: bool = False) -> LMSplit:
        """The examples at ``indices`` (in that order), their statistics recomputed.

        Args:
            indices: positions of the examples to keep.
            source: the new split's description.
            keep_dropped: carry this split's ``dropped`` counts over (the rest of a file after a
                split was held out of it keeps the file's drops; the held-out part has none).
        """
        columns = {key: [values[i] for i in indices] for key, values in self.dataset.columns.items()}
        spans = [self.document_spans[i] for i in indices]
        cut_off = [self.cut_off[i] for i in indices]
        stats = _stats(columns, spans, cut_off)
        if keep_dropped:
            stats["dropped"], stats["dropped_tokens"] = self.stats["dropped"], self.stats["dropped_tokens"]
            stats["left_out"] = self.stats.get("left_out", 0)
        return LMSplit(
            TokenizedDataset(columns, None, source), self.kind, self.max_length, source, stats, spans, cut_off
        )


def _stats(columns: dict[str, list[list[int]]], spans: list[tuple[int, int]], cut_off: list[int]) -> dict[str, int]:
    """A split's counts from its columns (``documents`` counts the distinct documents the spans cover)."""
    covered: set[int] = set()
    for first, last in spans:
        covered.update(range(first, last + 1))
    return {
        "documents": len(covered),
        "examples": len(columns["input_ids"]),
        "tokens": sum(len(ids) for ids in columns["input_ids"]),
        "target_tokens": sum(len(labels) - labels.count(IGNORE_INDEX) for labels in columns["labels"]),
        "dropped": 0,
        "dropped_tokens": 0,
        "cut": sum(1 for tokens in cut_off if tokens),
        "cut_tokens": sum(cut_off),
        "left_out": 0,
    }


# ---------------------------------------------------------------------------
# tokenising
# ---------------------------------------------------------------------------


def _eos_id(tokenizer: Any, why: str) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ModelLoadError(
            f"the tokenizer has no end-of-text token (eos_token), and a causal LM run needs one {why}: give a "
            "tokenizer that has one (or set its eos_token in tokenizer_config.json)"
        )
    return int(eos)


def _token_ids(tokenizer: Any, texts: Sequence[str], *, desc: str, progress: bool) -> Iterator[list[int]]:
    """Token ids of each text, without the special tokens the tokenizer would add, chunk by chunk."""
    with tqdm(total=len(texts), desc=desc, unit="doc", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(texts), _CHUNK):
            chunk = list(texts[start : start + _CHUNK])
            # verbose=False: a document longer than the model's context is expected here (it is cut later)
            encoded = tokenizer(chunk, add_special_tokens=False, return_attention_mask=False, verbose=False)
            yield from encoded["input_ids"]
            bar.update(len(chunk))


def _pack(documents: Documents, tokenizer: Any, max_length: int, progress: bool) -> LMSplit:
    """Text: the documents joined by EOS into one stream, cut into blocks of ``max_length`` tokens."""
    eos = _eos_id(tokenizer, "to separate documents")
    stream: list[int] = []
    ends: list[int] = []  # where each document (with its EOS) ends in the stream
    for ids in _token_ids(tokenizer, documents.records, desc=f"tokenising {documents.source}", progress=progress):
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
    stats = _stats(columns, spans, cut_off)
    stats.update(documents=len(documents), dropped=dropped, dropped_tokens=dropped_tokens)
    dataset = TokenizedDataset(columns, None, documents.source)
    return LMSplit(dataset, "text", max_length, documents.source, stats, spans, cut_off)


def _prompt_completion(documents: Documents, tokenizer: Any, max_length: int, progress: bool) -> LMSplit:
    """Prompt (-100) + completion + EOS (learned); a prompt of ``max_length`` tokens or more is dropped."""
    eos = _eos_id(tokenizer, "to end each completion")
    prompts = [prompt for prompt, _ in documents.records]
    completions = [completion for _, completion in documents.records]
    desc = f"tokenising {documents.source}"
    prompt_ids = list(_token_ids(tokenizer, prompts, desc=f"{desc} (prompts)", progress=progress))
    completion_ids = list(_token_ids(tokenizer, completions, desc=f"{desc} (completions)", progress=progress))
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
    columns = {"input_ids": input_ids, "attention_mask": [[1] * len(ids) for ids in input_ids], "labels": labels}
    stats = _stats(columns, spans, cut_off)
    stats.update(documents=len(documents), dropped=dropped, dropped_tokens=dropped_tokens)
    dataset = TokenizedDataset(columns, None, documents.source)
    return LMSplit(dataset, "prompt_completion", max_length, documents.source, stats, spans, cut_off)


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


def _messages(documents: Documents, tokenizer: Any, max_length: int, progress: bool) -> LMSplit:
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
        for start in range(0, len(renderings), _CHUNK):
            chunk = renderings[start : start + _CHUNK]
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
    columns = {"input_ids": input_ids, "attention_mask": [[1] * len(ids) for ids in input_ids], "labels": labels}
    stats = _stats(columns, spans_kept, cut_off)
    stats.update(documents=len(documents), dropped=dropped, dropped_tokens=dropped_tokens)
    dataset = TokenizedDataset(columns, None, documents.source)
    return LMSplit(dataset, "messages", max_length, documents.source, stats, spans_kept, cut_off)


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
        return _messages(documents, tokenizer, config.max_length, progress)
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
    unit = _UNITS[split.kind]
    if count - held < 1:
        fix = "or lower data.max_length for more blocks" if split.kind == "text" else "or give more examples"
        raise DataError(
            f"{split.source!r} gives {_plural(count, unit)} of up to {split.max_length:,} tokens: too few to hold "
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
    unit = _UNITS[split.kind]
    if not kept:
        raise DataError(
            f"data.{option} ({budget:,}) is fewer than the {lengths[order[0]]:,} tokens of one {unit[0]} of "
            f"{split.source!r}: raise data.{option} (or lower data.max_length)"
        )
    source = f"{split.source} ({option} {budget:,}: {_plural(len(kept), unit)} of {len(split):,}, seed {seed})"
    result = split.subset(sorted(kept), source, keep_dropped=True)
    result.stats["left_out"] = split.stats.get("left_out", 0) + len(split) - len(kept)
    return result


def _same_file(a: str, b: str) -> bool:
    return Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve()


def prepare_splits(config: LMDataConfig, tokenizer: Any, *, progress: bool = True) -> dict[str, LMSplit]:
    """Read and tokenise the splits of a run, hold out the missing ones, apply the token budgets.

    Order: the train file, then the validation and test files where given; with no test file and
    ``data.test_fraction`` the test split is held out of train first (seed ``split_seed``), then
    with no validation file the validation split from what is left (seed ``split_seed + 1``);
    then ``data.max_train_tokens`` cuts train (seed ``split_seed + 2``) and
    ``data.max_eval_tokens`` cuts validation and test (seed ``split_seed + 3``), keeping whole
    blocks or examples.

    Returns:
        ``{"train": ..., "validation": ..., ["test": ...]}`` (test absent without a test file or
        ``data.test_fraction``).

    Raises:
        DataError: a missing or unreadable file, a validation or test file that is the training
            file, too little data to hold a split out, a budget smaller than one example.
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
            documents = read_documents(path, config, role=role)
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
            raise DataError(f"the {role} split holds no {_UNITS[split.kind][0]}: give more data in {split.source!r}")
    return {role: splits[role] for role in ("train", "validation", "test") if role in splits}


# ---------------------------------------------------------------------------
# teacher and student tokenizers
# ---------------------------------------------------------------------------


def _difference(student: Any, teacher: Any, sample_texts: Sequence[str]) -> str | None:
    """How the two tokenizers differ, or None when they give the same ids."""
    if len(student) != len(teacher):
        return f"vocabularies of {len(student):,} and {len(teacher):,} tokens"
    if student.eos_token_id != teacher.eos_token_id:
        return f"end-of-text ids {student.eos_token_id} and {teacher.eos_token_id}"
    if hasattr(student, "get_vocab") and hasattr(teacher, "get_vocab"):
        ours, theirs = student.get_vocab(), teacher.get_vocab()
        if ours != theirs:
            token = next((t for t, i in ours.items() if theirs.get(t) != i), None)
            if token is not None:
                return f"the token {token!r} has id {ours[token]} and {theirs.get(token)}"
    for text in sample_texts:
        text = text[:4000]  # the start of a long document shows a difference as well as the whole
        a = student(text, add_special_tokens=False, verbose=False)["input_ids"]
        b = teacher(text, add_special_tokens=False, verbose=False)["input_ids"]
        if a != b:
            first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            return (
                f"different ids for {text[:30]!r}: {a[first : first + 4]} and {b[first : first + 4]} at token {first}"
            )
    return None


def check_tokenizers(student_tokenizer: Any, teacher_tokenizer: Any, sample_texts: Sequence[str]) -> None:
    """Refuse a student and a teacher whose tokenizers give different token ids.

    Token-level distillation compares the two models' predictions position by position and id
    by id: both must read the same ids. Compared: the vocabulary size, the EOS id, the vocabulary
    itself and the ids of each sample text (its first 4,000 characters).

    Raises:
        ModelLoadError: the tokenizers differ (one line: how, and the fix).
    """
    if student_tokenizer is teacher_tokenizer:
        return
    difference = _difference(student_tokenizer, teacher_tokenizer, sample_texts)
    if difference is not None:
        raise ModelLoadError(
            f"the student's and the teacher's tokenizers give different token ids ({difference}); distillation "
            "across tokenizers is not supported yet: give the student the teacher's tokenizer (student.tokenizer: "
            "the teacher's folder), or a student made from the teacher"
        )


def shared_vocab_size(student_model_vocab: int, teacher_model_vocab: int, tokenizer: Any) -> int | None:
    """The logit columns the two models share when their output sizes differ, or None when they are equal.

    Models are often saved with padded embedding and output rows (49,152 tokens in a head of
    49,216): two such models share their first ``min(...)`` columns, which is safe to compare
    when every id the tokenizer can give (``len(tokenizer)``) is below it.

    Raises:
        ModelLoadError: the sizes differ and the tokenizer can give ids beyond the smaller one.
    """
    if student_model_vocab == teacher_model_vocab:
        return None
    shared = min(student_model_vocab, teacher_model_vocab)
    tokens = len(tokenizer)
    if tokens > shared:
        raise ModelLoadError(
            f"the student's and the teacher's outputs have {student_model_vocab:,} and {teacher_model_vocab:,} "
            f"rows, and the tokenizer can give {tokens:,} token ids, more than the {shared:,} they share; give "
            "models whose embeddings cover the tokenizer (model.resize_token_embeddings(len(tokenizer))), or the "
            "tokenizer the models were trained with"
        )
    return shared
