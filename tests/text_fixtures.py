"""Tiny text classifiers saved with a tokenizer built offline, and small labelled files: the
inputs of ``kdistill distill`` / ``eval`` / ``inspect`` tests (no downloads)."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import torch

WORDS = (
    "good great fine lovely superb fun warm bright "
    "bad awful dull boring poor weak cold grim "
    "the a movie film plot cast story ending was is very quite not really"
).split()
POSITIVE, NEGATIVE = WORDS[:8], WORDS[8:16]
FILLER = WORDS[16:]


def write_tokenizer(folder: Path, lowercase: bool = True, extra: tuple[str, ...] = ()):
    """A WordPiece ``BertTokenizerFast`` over a small vocabulary, saved to ``folder``."""
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *extra]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=lowercase)
    tokenizer.save_pretrained(folder)
    return tokenizer


def save_classifier(
    folder: Path,
    *,
    num_layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    num_labels: int = 2,
    seed: int = 0,
    id2label: dict[int, str] | None = None,
    tokenizer_extra: tuple[str, ...] = (),
    dropout: float = 0.0,
    positions: int = 64,
) -> Path:
    """A ``BertForSequenceClassification`` from a config, saved with its tokenizer to ``folder``
    (without dropout unless asked: most tests compare numbers exactly)."""
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = write_tokenizer(folder, extra=tokenizer_extra)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 2,
        max_position_embeddings=positions,
        num_labels=num_labels,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        **({"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}} if id2label else {}),
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def sentences(
    count: int, seed: int = 0, labels: tuple[str, str] | tuple[int, int] = (0, 1)
) -> list[tuple[str, object]]:
    """``count`` short sentences whose sentiment words decide the label."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        positive = rng.random() < 0.5
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 6))]
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if positive else NEGATIVE))
        rows.append((" ".join(words), labels[1] if positive else labels[0]))
    return rows


def write_csv(
    path: Path,
    rows: list[tuple[str, object]],
    header: tuple[str, str] = ("text", "label"),
    delimiter: str = ",",
    encoding: str = "utf-8",
) -> Path:
    """Write ``rows`` as a CSV (or TSV with ``delimiter='\\t'``) file with a header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding=encoding) as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path
