"""A causal-LM split: token ids and per-token labels of blocks or examples, with the counts that
describe it, and the tokenising helpers the formats share."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from kdistill.data.datasets import IGNORE_INDEX, TokenizedDataset
from kdistill.errors import ModelLoadError

__all__ = ["CHUNK", "UNITS", "LMSplit", "document_split", "eos_id", "plural", "split_stats", "token_ids"]

#: texts tokenised per call (one progress-bar step)
CHUNK = 1000
UNITS = {
    "text": ("block", "blocks"),
    "prompt_completion": ("example", "examples"),
    "messages": ("conversation", "conversations"),
}


def plural(count: int, unit: tuple[str, str]) -> str:
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
        routes: under ``combine: route``, the teacher each example's record names, in order
            (examples of one record each only); None otherwise.
    """

    dataset: TokenizedDataset
    kind: str
    max_length: int
    source: str
    stats: dict[str, int]
    document_spans: list[tuple[int, int]] = field(default_factory=list, repr=False)
    cut_off: list[int] = field(default_factory=list, repr=False)
    routes: list[str] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def tokens(self) -> int:
        """Tokens in the split (every position of every example)."""
        return self.stats["tokens"]

    def describe(self) -> str:
        """One line for the log: ``3 documents packed into 120 blocks of 512 tokens (61,440 tokens)``."""
        s = self.stats
        documents = plural(s["documents"], ("document", "documents"))
        if self.kind == "text":
            longest = max(self.dataset.lengths, default=0)
            if s["examples"] == 1 and longest < self.max_length:
                line = f"{documents} packed into 1 block of {longest:,} tokens (fewer than data.max_length)"
            else:
                blocks = plural(s["examples"], UNITS["text"])
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
        routes = [self.routes[i] for i in indices] if self.routes is not None else None
        stats = split_stats(columns, spans, cut_off)
        if keep_dropped:
            stats["dropped"], stats["dropped_tokens"] = self.stats["dropped"], self.stats["dropped_tokens"]
            stats["left_out"] = self.stats.get("left_out", 0)
        dataset = TokenizedDataset(columns, None, source)
        return LMSplit(dataset, self.kind, self.max_length, source, stats, spans, cut_off, routes)


def split_stats(
    columns: dict[str, list[list[int]]], spans: list[tuple[int, int]], cut_off: list[int]
) -> dict[str, int]:
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


def document_split(
    kind: str,
    input_ids: list[list[int]],
    labels: list[list[int]],
    documents: Any,
    max_length: int,
    spans: list[tuple[int, int]],
    cut_off: list[int],
    dropped: int,
    dropped_tokens: int,
) -> LMSplit:
    """An :class:`LMSplit` of one example per document (prompt/completion or chat), with its counts and,
    where the documents name their teachers, each example's (that of the document it came from)."""
    columns = {"input_ids": input_ids, "attention_mask": [[1] * len(ids) for ids in input_ids], "labels": labels}
    stats = split_stats(columns, spans, cut_off)
    stats.update(documents=len(documents), dropped=dropped, dropped_tokens=dropped_tokens)
    dataset = TokenizedDataset(columns, None, documents.source)
    named = documents.routes
    # an example's span is (its document, its document): dropped documents leave no route behind
    routes = [named[first] for first, _ in spans] if named is not None else None
    return LMSplit(dataset, kind, max_length, documents.source, stats, spans, cut_off, routes)


def eos_id(tokenizer: Any, why: str) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ModelLoadError(
            f"the tokenizer has no end-of-text token (eos_token), and a causal LM run needs one {why}: give a "
            "tokenizer that has one (or set its eos_token in tokenizer_config.json)"
        )
    return int(eos)


def token_ids(tokenizer: Any, texts: Sequence[str], *, desc: str, progress: bool) -> Iterator[list[int]]:
    """Token ids of each text, without the special tokens the tokenizer would add, chunk by chunk."""
    with tqdm(total=len(texts), desc=desc, unit="doc", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(texts), CHUNK):
            chunk = list(texts[start : start + CHUNK])
            # verbose=False: a document longer than the model's context is expected here (it is cut later)
            encoded = tokenizer(chunk, add_special_tokens=False, return_attention_mask=False, verbose=False)
            yield from encoded["input_ids"]
            bar.update(len(chunk))
