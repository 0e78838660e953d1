"""A bigger transfer set for the teacher to label: new sentences made from the training ones.

A small labelled set limits distillation: the student sees the teacher's judgement only on
the few sentences there are. The teacher, though, can label any sentence, so new ones made by
perturbing the training sentences teach the student more of the teacher's function. The
operations follow Tang et al. (2019), "Distilling Task-Specific Knowledge from BERT into
Simple Neural Networks", and TinyBERT's augmentation:

* **masking**: each word becomes the tokenizer's mask token with probability ``mask_prob``
  (the teacher then shows how much that word mattered);
* **word replacement**: each word becomes one of its nearest neighbours with probability
  ``replace_prob``. Tang et al. use a part-of-speech tagger and TinyBERT uses GloVe, neither
  of which is available offline; kdistill takes the neighbours from the teacher's own input
  embeddings (cosine similarity between whole-word vocabulary entries), which are at hand
  for any Transformers teacher;
* **n-gram sampling**: with probability ``ngram_prob`` the sentence is cut to one of its
  n-grams, n drawn from 1 to ``max_ngram``.

Each training sentence yields up to ``copies`` distinct new sentences (duplicates and
copies of an original are dropped). New sentences carry no hard label (``-100``): only the
teacher's soft labels teach the student on them, so a hard-label term sees the original
sentences only.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["NO_LABEL", "Augmenter", "embedding_neighbours"]

#: the label of a generated sentence: ignored by hard-label losses
NO_LABEL = -100


@dataclass
class Augmenter:
    """Makes new sentences from training sentences by masking, replacing and n-gram sampling.

    Attributes:
        copies: new sentences to try to make per training sentence.
        mask_prob: probability that a word is replaced by ``mask_token``.
        replace_prob: probability that a word is replaced by one of its ``neighbours``.
        ngram_prob: probability that a new sentence is cut to a random n-gram of itself.
        max_ngram: the longest n-gram kept by n-gram sampling.
        mask_token: the tokenizer's mask token; None deletes masked words instead.
        neighbours: ``{word: [similar words]}`` for replacement; a word without an entry is kept.
        seed: seed of the random choices (the same seed gives the same sentences).
        max_tries: attempts per wanted sentence before giving up on a sentence too short to vary.
    """

    copies: int = 8
    mask_prob: float = 0.1
    replace_prob: float = 0.1
    ngram_prob: float = 0.25
    max_ngram: int = 5
    mask_token: str | None = "[MASK]"
    neighbours: Mapping[str, Sequence[str]] = field(default_factory=dict)
    seed: int = 0
    max_tries: int = 3

    def __post_init__(self) -> None:
        for name in ("mask_prob", "replace_prob", "ngram_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.mask_prob + self.replace_prob > 1.0:
            raise ValueError(f"mask_prob + replace_prob must be <= 1, got {self.mask_prob + self.replace_prob}")
        if self.copies < 1 or self.max_ngram < 1:
            raise ValueError(f"copies and max_ngram must be >= 1, got {self.copies} and {self.max_ngram}")

    def perturb(self, words: Sequence[str], rng: random.Random) -> list[str]:
        """One new version of a sentence given as ``words``."""
        out: list[str] = []
        for word in words:
            draw = rng.random()
            if draw < self.mask_prob:
                if self.mask_token is not None:
                    out.append(self.mask_token)
            elif draw < self.mask_prob + self.replace_prob and self.neighbours.get(word.lower()):
                out.append(rng.choice(list(self.neighbours[word.lower()])))
            else:
                out.append(word)
        if out and rng.random() < self.ngram_prob:
            n = rng.randint(1, min(self.max_ngram, len(out)))
            start = rng.randint(0, len(out) - n)
            out = out[start : start + n]
        return out

    def augment(self, texts: Sequence[str]) -> tuple[list[str], list[int]]:
        """New sentences made from ``texts``, and the index of the text each came from.

        Returns:
            ``(new_texts, sources)``: at most ``copies`` distinct new sentences per text, none
            equal to any original text, in the order of their sources.
        """
        rng = random.Random(self.seed)
        seen = set(texts)
        new_texts: list[str] = []
        sources: list[int] = []
        for index, text in enumerate(texts):
            words = text.split()
            if not words:
                continue
            made = 0
            for _ in range(self.copies * self.max_tries):
                candidate = " ".join(self.perturb(words, rng))
                if candidate and candidate not in seen:
                    seen.add(candidate)
                    new_texts.append(candidate)
                    sources.append(index)
                    made += 1
                    if made == self.copies:
                        break
        return new_texts, sources


def _whole_words(tokenizer: Any) -> tuple[list[str], list[int]]:
    """Vocabulary entries that are whole alphabetic words (no sub-word pieces, no special tokens)."""
    special = set(getattr(tokenizer, "all_special_tokens", []))
    words, ids = [], []
    for token, token_id in tokenizer.get_vocab().items():
        # WordPiece continues words with ##, SentencePiece/BPE start words with ▁ or Ġ
        word = token.lstrip("▁Ġ")
        if token in special or token.startswith("##") or len(word) < 2 or not word.isalpha():
            continue
        if token != word and not token.startswith(("▁", "Ġ")):
            continue
        words.append(word)
        ids.append(token_id)
    return words, ids


def embedding_neighbours(
    embeddings: Tensor, tokenizer: Any, words: Sequence[str], k: int = 10, chunk_size: int = 2048
) -> dict[str, list[str]]:
    """The ``k`` nearest whole-word vocabulary entries of each word, by cosine similarity of input embeddings.

    Args:
        embeddings: ``(V, H)`` input embedding matrix of a model that uses ``tokenizer``.
        tokenizer: the tokenizer whose vocabulary indexes ``embeddings``.
        words: the words to find neighbours for; a word that is not a single vocabulary entry
            gets none (it is never replaced).
        k: neighbours per word.
        chunk_size: words compared at once (bounds the memory of the similarity matrix).

    Returns:
        ``{word (lower-cased): [neighbour, ...]}`` for the words that have neighbours.
    """
    vocab_words, vocab_ids = _whole_words(tokenizer)
    if not vocab_words:
        return {}
    vocab = tokenizer.get_vocab()
    table = torch.nn.functional.normalize(embeddings.detach().float()[vocab_ids], dim=-1)
    position = {token_id: i for i, token_id in enumerate(vocab_ids)}
    queries: list[tuple[str, int]] = []
    for word in sorted({w.lower() for w in words}):
        for token in (word, f"▁{word}", f"Ġ{word}"):
            token_id = vocab.get(token)
            if token_id is not None and token_id in position:
                queries.append((word, position[token_id]))
                break
    neighbours: dict[str, list[str]] = {}
    k = min(k, len(vocab_words) - 1)
    if k < 1:
        return {}
    for start in range(0, len(queries), chunk_size):
        chunk = queries[start : start + chunk_size]
        rows = torch.tensor([row for _, row in chunk])
        similarity = table[rows] @ table.T
        similarity[torch.arange(len(chunk)), rows] = -2.0  # a word is not its own neighbour
        best = similarity.topk(k, dim=-1).indices
        for (word, _), picks in zip(chunk, best.tolist()):
            neighbours[word] = [vocab_words[i] for i in picks]
    return neighbours
