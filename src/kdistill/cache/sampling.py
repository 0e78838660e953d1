"""The draws of a sampled teacher cache (random-sampling KD, Anshumann et al., 2025): per token, N ids
drawn i.i.d. from the teacher's distribution at the loss's temperature, counted, with the teacher's
log-probabilities of the ids drawn.

Draws are reproducible and do not depend on how the cache pass batches or chunks the tokens: the
uniforms of an example come from a generator seeded by its index in the dataset alone, and a uniform
becomes an id by inverting its position's cumulative distribution in float64, so that the same
uniform draws the same id whatever chunk its token falls in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from kdistill.cache.keys import CacheSpec
from kdistill.capture import Features
from kdistill.losses.chunked import default_chunk_size

__all__ = ["count_draws", "draw_ids", "example_uniforms", "head_log_probs", "samples_from_hidden"]


def head_log_probs(features: Features, keep: Tensor, spec: CacheSpec) -> Iterator[Tensor]:
    """The teacher's log-probabilities at ``spec.temperature`` of the kept tokens, chunk by chunk,
    from the final hidden states and the output layer (a causal LM's logits are never held whole).

    Args:
        features: the teacher's features, with ``final_hidden`` ``(B, L, H)`` and ``output_layer``.
        keep: ``(B, L)`` bool, the tokens to keep (real tokens, example after example).
        spec: the cache spec (its ``temperature`` and ``vocab_size``).

    Yields:
        ``(rows, V)`` float32 log-probabilities of consecutive kept tokens, ``V`` the compared ids.
    """
    hidden, layer = features.final_hidden[keep], features.output_layer
    assert spec.temperature is not None and layer is not None
    # a student with a smaller padded head is compared on the ids both heads have
    weight = layer.weight[: spec.vocab_size].float()
    bias = layer.bias[: spec.vocab_size].float() if layer.bias is not None else None
    step = default_chunk_size(weight.shape[0])
    for start in range(0, hidden.shape[0], step):
        logits = hidden[start : start + step].float() @ weight.T
        if bias is not None:
            logits = logits + bias
        yield torch.log_softmax(logits / spec.temperature, dim=-1)


def example_uniforms(index: int, positions: int, samples: int) -> Tensor:
    """``(positions, samples)`` float64 uniforms in [0, 1) of the example at ``index`` of the dataset.

    Seeded by the index alone (through a hash, so that neighbouring examples get unrelated streams):
    a rebuilt cache draws the same ids, whatever the batch the example is in. Row ``t`` is the same
    for any ``positions > t``.
    """
    digest = hashlib.blake2b(f"kdistill sampled teacher cache, example {index}".encode(), digest_size=8).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest, "little"))
    return torch.rand((positions, samples), generator=generator, dtype=torch.float64)


def draw_ids(log_probs: Tensor, uniforms: Tensor) -> Tensor:
    """Ids drawn from each row's distribution by inverting its cumulative distribution.

    Args:
        log_probs: ``(rows, V)`` log-probabilities.
        uniforms: ``(rows, N)`` uniforms in [0, 1), float64.

    Returns:
        ``(rows, N)`` int64 ids; an id of probability 0 is never drawn.
    """
    # float64: a float32 running sum over 49,152 ids is off by about 1e-7 per id, the probability
    # of many of the ids it would have to tell apart
    cdf = torch.exp(log_probs.double()).cumsum_(dim=-1)  # never in place: the caller's log-probabilities stay
    total = cdf[:, -1:]
    # scaled to the row's own total (the softmax sums to 1 only up to rounding) and kept below it,
    # so that no point falls past the last id of positive probability
    points = torch.minimum(uniforms.to(cdf.device) * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, points.contiguous(), right=True)


def count_draws(ids: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """The distinct ids of each row and how often each occurs.

    Args:
        ids: ``(rows, N)`` int64 ids.
        width: slots per row, at least the most distinct ids a row can hold (``min(N, V)``).

    Returns:
        ``(distinct, counts)``, both ``(rows, width)`` int64: the distinct ids in increasing order, then
        the row's smallest id again with count 0 in the slots left over.
    """
    ordered = ids.sort(dim=-1).values
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    slot = first.cumsum(dim=-1) - 1
    counts = torch.zeros((ids.shape[0], width), dtype=torch.int64, device=ids.device)
    counts.scatter_add_(1, slot, torch.ones_like(ordered))
    # every id of one run writes the same value into its slot, so the order of the writes does not matter
    distinct = ordered[:, :1].expand(-1, width).clone().scatter_(1, slot, ordered)
    return distinct, counts


def samples_from_hidden(
    features: Features, keep: Tensor, spec: CacheSpec, examples: Sequence[int]
) -> dict[str, Tensor]:
    """The stored fields of a sampled cache for the kept tokens of one batch.

    Args:
        features: the teacher's features (final hidden states and output layer).
        keep: ``(B, L)`` bool, the tokens to store.
        spec: a sampled cache spec (``samples`` and ``temperature`` set).
        examples: the dataset index of each of the B examples (what seeds its draws).

    Returns:
        ``sample_indices`` and ``sample_counts`` (int64) and ``sample_logprobs`` (float32), each
        ``(kept tokens, W)`` with ``W = min(samples, V)``.
    """
    assert spec.samples is not None and len(examples) == keep.shape[0]
    positions = keep.sum(dim=1).tolist()
    uniforms = torch.cat(
        [example_uniforms(int(index), count, spec.samples) for index, count in zip(examples, positions, strict=True)]
    )
    ids, counts, values = [], [], []
    start = 0
    for log_probs in head_log_probs(features, keep, spec):
        rows = log_probs.shape[0]
        distinct, drawn = count_draws(
            draw_ids(log_probs, uniforms[start : start + rows]), min(spec.samples, log_probs.shape[-1])
        )
        ids.append(distinct), counts.append(drawn), values.append(log_probs.gather(-1, distinct))
        start += rows
    return {"sample_indices": torch.cat(ids), "sample_counts": torch.cat(counts), "sample_logprobs": torch.cat(values)}
