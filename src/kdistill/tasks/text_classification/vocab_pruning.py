"""Vocabulary pruning: keep only the word-embedding rows a model's texts use.

A small student built from a BERT-style teacher keeps the teacher's whole vocabulary: the word
embeddings of all-MiniLM-L6-v2 (30,522 x 384) are 11.7M of a 2-layer student's 15.6M
parameters. :func:`prune_vocabulary` keeps the ids that a set of texts tokenises to, plus every
special and added token, and returns a model whose embedding matrix has only those rows (in
their old order) with a fast tokenizer whose vocabulary is those tokens, so the pruned model
still reads raw text.

What happens to a word (WordPiece, the tokenizers library's greedy longest match):

* a word whose pieces under the original tokenizer are all kept gets the same pieces: at each
  position the longest match in the full vocabulary is kept, and nothing longer can be in the
  smaller one. Such a word gets the same token strings, mapped to the new ids, and the model the
  same embeddings, so its logits do not change;
* any other word is matched against the kept pieces alone: it may be spelled with other, shorter
  kept pieces (``playing`` -> ``play ##ing`` when ``playing`` was dropped), which the model never
  saw for that word; if at some position no kept piece matches, the whole word becomes one
  ``[UNK]`` (as a word longer than ``max_input_chars_per_word`` already did).

:func:`tokenization_drift` measures both on held-out texts. Only WordPiece fast tokenizers
(BERT, DistilBERT, MiniLM, ELECTRA ...) are pruned; any other kind is refused with a
:class:`~kdistill.errors.VocabularyError`.
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdistill.errors import VocabularyError
from kdistill.models.loading import count_parameters

__all__ = [
    "VocabularyReport",
    "check_prunable",
    "prune_embeddings",
    "prune_tokenizer",
    "prune_vocabulary",
    "tokenization_drift",
    "used_token_ids",
]

#: config keys that name a token id, renumbered with the vocabulary
_CONFIG_TOKEN_KEYS = (
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "sep_token_id",
    "cls_token_id",
    "unk_token_id",
    "mask_token_id",
    "decoder_start_token_id",
)
#: texts tokenised per call: large enough to use the fast tokenizer's batching, small enough for memory
_CHUNK = 1024


@dataclass(frozen=True)
class VocabularyReport:
    """What :func:`prune_vocabulary` kept.

    Attributes:
        total: the model's vocabulary rows before.
        kept: the rows kept.
        texts: the texts the kept vocabulary was read from.
        parameters_before: the model's parameters before (shared weights counted once).
        parameters_after: the pruned model's parameters.
        bytes_before: the bytes of the model's parameters and buffers before.
        bytes_after: the same for the pruned model.
        kept_ids: the old ids kept, in order: old id ``kept_ids[i]`` is new id ``i``.
    """

    total: int
    kept: int
    texts: int
    parameters_before: int
    parameters_after: int
    bytes_before: int
    bytes_after: int
    kept_ids: tuple[int, ...] = field(repr=False)

    @property
    def reduction(self) -> float:
        """How many times fewer parameters the pruned model has (``before / after``)."""
        return self.parameters_before / self.parameters_after

    def as_dict(self) -> dict[str, Any]:
        """The numbers, for ``metrics.json`` (the kept ids left out)."""
        return {
            "vocabulary": {"kept": self.kept, "total": self.total},
            "texts": self.texts,
            "parameters": {"before": self.parameters_before, "after": self.parameters_after},
            "size_bytes": {"before": self.bytes_before, "after": self.bytes_after},
        }

    def __str__(self) -> str:
        return (
            f"vocabulary pruned to the {self.kept:,} of {self.total:,} tokens that {self.texts:,} texts use: "
            f"{self.parameters_before:,} -> {self.parameters_after:,} parameters ({self.reduction:.2f}x smaller), "
            f"{self.bytes_before / 1e6:.1f} -> {self.bytes_after / 1e6:.1f} MB"
        )


def _model_bytes(model: nn.Module) -> int:
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def check_prunable(tokenizer: Any) -> dict[str, Any]:
    """The state (``tokenizer.json``) of a tokenizer :func:`prune_vocabulary` can prune.

    Raises:
        VocabularyError: the tokenizer is not a fast tokenizer with a WordPiece model, or has a
            post-processor whose token ids cannot be renumbered.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not getattr(tokenizer, "is_fast", False) or backend is None:
        raise VocabularyError(
            f"vocabulary pruning needs a fast (tokenizers) WordPiece tokenizer; got {type(tokenizer).__name__}, "
            "which is not a fast tokenizer"
        )
    state = json.loads(backend.to_str())
    kind = state.get("model", {}).get("type")
    if kind != "WordPiece":
        raise VocabularyError(
            f"vocabulary pruning supports WordPiece tokenizers (BERT, DistilBERT, MiniLM ...); "
            f"{type(tokenizer).__name__} uses a {kind} model, whose merges or pieces cannot be cut to a "
            "subset safely; leave the vocabulary whole (student.prune_vocabulary: false)"
        )
    _renumber_processor(state.get("post_processor"), None)  # refuses a processor it cannot renumber
    return state


def used_token_ids(tokenizer: Any, texts: Iterable[str], *, keep_tokens: Iterable[str] = ()) -> list[int]:
    """The ids ``texts`` tokenise to (whole texts, never truncated), every special and added token, and
    ``keep_tokens``; sorted.

    Raises:
        VocabularyError: a token of ``keep_tokens`` is not in the vocabulary.
    """
    ids: set[int] = set(getattr(tokenizer, "all_special_ids", []))
    ids |= set(getattr(tokenizer, "added_tokens_decoder", {}))
    vocabulary = tokenizer.get_vocab()
    missing = [token for token in keep_tokens if token not in vocabulary]
    if missing:
        raise VocabularyError(f"keep_tokens names tokens that are not in the vocabulary: {', '.join(missing[:5])}")
    ids |= {vocabulary[token] for token in keep_tokens}
    chunk: list[str] = []
    for text in [*texts, None]:
        if text is not None:
            chunk.append(text)
        if chunk and (text is None or len(chunk) == _CHUNK):
            # no truncation: a word past the model's length still keeps its pieces
            encoded = tokenizer(chunk, add_special_tokens=False, truncation=False, verbose=False)
            for row in encoded["input_ids"]:
                ids.update(row)
            chunk = []
    return sorted(ids)


def _renumber_processor(processor: dict[str, Any] | None, new_id: dict[str, int] | None) -> None:
    """Renumber the special token ids of a post-processor in place (``new_id`` None: only check)."""
    if processor is None or processor.get("type") == "ByteLevel":
        return
    kind = processor.get("type")
    if kind == "Sequence":
        for part in processor.get("processors", []):
            _renumber_processor(part, new_id)
    elif kind == "TemplateProcessing":
        for special in processor.get("special_tokens", {}).values():
            if new_id is not None:
                special["ids"] = [new_id[token] for token in special["tokens"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            if new_id is not None:
                processor[key] = [processor[key][0], new_id[processor[key][0]]]
    else:
        raise VocabularyError(f"vocabulary pruning cannot renumber the tokenizer's {kind} post-processor")


def prune_tokenizer(tokenizer: Any, kept_ids: Sequence[int]) -> Any:
    """A copy of ``tokenizer`` whose vocabulary is the tokens of ``kept_ids`` (sorted old ids),
    numbered 0, 1, ... in that order; normaliser, pre-tokeniser, decoder and settings unchanged, the
    special tokens' ids renumbered in the post-processor, the padding and the added tokens.

    Raises:
        VocabularyError: the tokenizer cannot be pruned (:func:`check_prunable`), or ``kept_ids``
            leaves out a special or added token or the unknown token.
    """
    state = check_prunable(tokenizer)
    old_token = {old: token for token, old in state["model"]["vocab"].items()}
    old_token.update({added["id"]: added["content"] for added in state.get("added_tokens", [])})
    unknown = [old for old in kept_ids if old not in old_token]
    if unknown:
        raise VocabularyError(f"ids {unknown[:5]} are not in the tokenizer's vocabulary of {len(old_token):,}")
    new_id = {old_token[old]: new for new, old in enumerate(kept_ids)}
    needed = [a["content"] for a in state.get("added_tokens", [])] + [state["model"]["unk_token"]]
    dropped = [token for token in needed if token not in new_id]
    if dropped:
        raise VocabularyError(f"the kept ids leave out special tokens {', '.join(dropped)}; keep every special token")
    state["model"]["vocab"] = {token: i for token, i in new_id.items() if token in state["model"]["vocab"]}
    for added in state.get("added_tokens", []):
        added["id"] = new_id[added["content"]]
    _renumber_processor(state.get("post_processor"), new_id)
    if state.get("padding"):
        state["padding"]["pad_id"] = new_id.get(state["padding"]["pad_token"], 0)
    return _reloaded(tokenizer, state, [old_token[old] for old in kept_ids])


def _reloaded(tokenizer: Any, state: dict[str, Any], tokens: list[str]) -> Any:
    """``tokenizer`` saved, its ``tokenizer.json`` replaced by ``state``, and loaded back: the class,
    special tokens and settings are the original's, the vocabulary the new one."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="kdistill-vocab-") as folder:
        tokenizer.save_pretrained(folder)
        path = Path(folder)
        (path / "tokenizer.json").write_text(json.dumps(state, ensure_ascii=False), encoding="utf-8")
        # a slow (Python) tokenizer reads vocab.txt: one token a line, its line number its id
        (path / "vocab.txt").write_text("".join(f"{token}\n" for token in tokens), encoding="utf-8")
        settings_file = path / "tokenizer_config.json"
        if settings_file.is_file():
            settings = json.loads(settings_file.read_text(encoding="utf-8"))
            # older configs list the added tokens by their old ids; tokenizer.json has the new ones
            settings.pop("added_tokens_decoder", None)
            settings_file.write_text(json.dumps(settings, indent=2), encoding="utf-8")
        for stale in ("added_tokens.json", "special_tokens_map.json"):
            (path / stale).unlink(missing_ok=True)
        pruned = AutoTokenizer.from_pretrained(folder)
    if pruned.get_vocab() != {token: i for i, token in enumerate(tokens)}:
        raise VocabularyError(
            f"{type(tokenizer).__name__} did not read back the pruned vocabulary; it cannot be pruned"
        )
    pruned.name_or_path = tokenizer.name_or_path
    return pruned


def prune_embeddings(model: nn.Module, kept_ids: Sequence[int]) -> nn.Module:
    """A copy of ``model`` with only the word-embedding rows ``kept_ids`` (new id ``i`` is old id
    ``kept_ids[i]``): the input embeddings, the output embeddings (a language-model head) and their
    bias, every module that shares one of them (tied weights stay tied), ``config.vocab_size`` and
    the config's token ids.

    Raises:
        VocabularyError: the model has no input embeddings, or an id is outside them.
    """
    getter = getattr(model, "get_input_embeddings", None)
    embeddings = getter() if getter is not None else None
    if not isinstance(embeddings, nn.Embedding):
        raise VocabularyError(f"{type(model).__name__} has no word embeddings (get_input_embeddings) to prune")
    rows = embeddings.num_embeddings
    outside = [i for i in kept_ids if not 0 <= i < rows]
    if outside:
        raise VocabularyError(f"token ids {outside[:5]} are outside the model's {rows:,} embedding rows")
    pruned = copy.deepcopy(model)
    index = torch.tensor(list(kept_ids), dtype=torch.long, device=embeddings.weight.device)
    new_id = {old: new for new, old in enumerate(kept_ids)}
    vocabulary_sized = [pruned.get_input_embeddings().weight]
    output = pruned.get_output_embeddings() if hasattr(pruned, "get_output_embeddings") else None
    if isinstance(output, nn.Linear):
        vocabulary_sized += [output.weight] + ([output.bias] if output.bias is not None else [])
    # each tensor replaced wherever it is held: a tied head and the embeddings keep sharing one
    # tensor, and a head's bias kept under two names (BERT's decoder.bias and predictions.bias) too
    replaced = {
        id(old): nn.Parameter(old.detach()[index].clone(), requires_grad=old.requires_grad) for old in vocabulary_sized
    }
    new_tensors = {id(parameter) for parameter in replaced.values()}
    for module in pruned.modules():
        for name, parameter in list(module._parameters.items()):
            if parameter is not None and id(parameter) in replaced:
                module._parameters[name] = replaced[id(parameter)]
        if isinstance(module, nn.Embedding) and id(module.weight) in new_tensors:
            module.num_embeddings = len(kept_ids)
            if module.padding_idx is not None:
                module.padding_idx = new_id.get(module.padding_idx)
        elif isinstance(module, nn.Linear) and id(module.weight) in new_tensors:
            module.out_features = len(kept_ids)
    _renumber_config(pruned.config, new_id)
    return pruned


def _renumber_config(config: Any, new_id: dict[int, int]) -> None:
    config.vocab_size = len(new_id)
    for key in _CONFIG_TOKEN_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool):
            setattr(config, key, new_id.get(value))
        elif isinstance(value, list):
            setattr(config, key, [new_id[v] for v in value if v in new_id])


def _config_token_ids(model: nn.Module) -> set[int]:
    """The token ids the model's config names (padding, start, end ...): kept, so the config stays valid."""
    found: set[int] = set()
    config = getattr(model, "config", None)
    for key in _CONFIG_TOKEN_KEYS:
        value = getattr(config, key, None)
        values = value if isinstance(value, list) else [value]
        found |= {v for v in values if isinstance(v, int) and not isinstance(v, bool)}
    return found


def prune_vocabulary(
    model: nn.Module, tokenizer: Any, texts: Iterable[str], *, keep_tokens: Iterable[str] = ()
) -> tuple[nn.Module, Any, VocabularyReport]:
    """Keep only the vocabulary ``texts`` use: a pruned copy of ``model`` and ``tokenizer``.

    The kept ids are those the texts tokenise to (whole texts, no truncation), every special and
    added token, the ids the model's config names, and ``keep_tokens``; new ids follow the old
    order. The originals are left unchanged. See the module's notes for what happens to words the
    texts never used.

    Args:
        model: a Hugging Face model with word embeddings (``get_input_embeddings``).
        tokenizer: its WordPiece fast tokenizer.
        texts: the texts whose vocabulary to keep (for a sentence pair, give both texts).
        keep_tokens: more tokens to keep (e.g. single characters, so fewer unseen words become ``[UNK]``).

    Returns:
        ``(pruned model, pruned tokenizer, report)``; ``str(report)`` says how much smaller it is.

    Raises:
        VocabularyError: the tokenizer is not a WordPiece fast tokenizer, or the model has no
            word embeddings that fit it.

    Example:
        >>> small, small_tokenizer, report = prune_vocabulary(student, tokenizer, train_texts)  # doctest: +SKIP
        >>> small.save_pretrained("out"); small_tokenizer.save_pretrained("out")  # doctest: +SKIP
    """
    check_prunable(tokenizer)
    texts = list(texts)
    kept = sorted(set(used_token_ids(tokenizer, texts, keep_tokens=keep_tokens)) | _config_token_ids(model))
    pruned_tokenizer = prune_tokenizer(tokenizer, kept)
    pruned_model = prune_embeddings(model, kept)
    report = VocabularyReport(
        total=model.get_input_embeddings().num_embeddings,
        kept=len(kept),
        texts=len(texts),
        parameters_before=count_parameters(model),
        parameters_after=count_parameters(pruned_model),
        bytes_before=_model_bytes(model),
        bytes_after=_model_bytes(pruned_model),
        kept_ids=tuple(kept),
    )
    return pruned_model, pruned_tokenizer, report


def tokenization_drift(original: Any, pruned: Any, texts: Sequence[str]) -> dict[str, Any]:
    """How the pruned tokenizer reads ``texts`` (held-out texts) compared with the original.

    Returns:
        ``{"examples": n, "with_unknown": share of texts with an unknown token after pruning,
        "with_unknown_before": the same with the original tokenizer, "changed": share of texts
        whose tokens differ from the original's, "unchanged": the indices of the others}``.
    """
    unknown_before = unknown_after = changed = 0
    unchanged: list[int] = []
    for start in range(0, len(texts), _CHUNK):
        chunk = list(texts[start : start + _CHUNK])
        before = original(chunk, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        after = pruned(chunk, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        for offset, (old, new) in enumerate(zip(before, after, strict=True)):
            unknown_before += original.unk_token_id in old
            unknown_after += pruned.unk_token_id in new
            if original.convert_ids_to_tokens(old) == pruned.convert_ids_to_tokens(new):
                unchanged.append(start + offset)
            else:
                changed += 1
    count = max(len(texts), 1)
    return {
        "examples": len(texts),
        "with_unknown": unknown_after / count,
        "with_unknown_before": unknown_before / count,
        "changed": changed / count,
        "unchanged": unchanged,
    }
