"""What each loss term reads when several teachers train one student.

The :class:`~kdistill.losses.objective.Objective` gets the teachers' :class:`Features` by name.
A term that names a teacher reads that teacher's; every other term reads the combined target of
the objective's :class:`~kdistill.losses.combine.TeacherMix`, built here once per batch (the
weights) and once per temperature (the target):

* teachers with logits: one :class:`Features` whose logits are the combined target at the term's
  temperature (:func:`~kdistill.losses.combine.target_logits`);
* teachers with final hidden states (token-level terms of causal LMs): a
  :class:`~kdistill.capture.features.TeacherBlend` that the chunked loss combines chunk by chunk;
* teachers read from top-k or sampled caches: ``mixture`` is the ω-weighted sum of the term
  against each teacher (the gradient of forward KL to their mixture), ``route`` takes each
  example's rows from its teacher; the other rules need full logits and are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from kdistill.capture.features import Features, SampledLogProbs, TeacherBlend, TopKLogProbs
from kdistill.losses.combine import TeacherMix, check_route, example_weights, target_logits, teacher_statistics
from kdistill.losses.tokens import next_token_targets

__all__ = ["TeacherTargets"]

#: rows of a teacher's head computed at once for its statistics (confidence, entropy)
_STAT_ROWS = 256


class TeacherTargets:
    """The targets of one batch: built on first use, then shared by every term of the objective.

    Args:
        mix: how the teachers combine.
        members: each teacher's features by name (None for a routed teacher no example of the
            batch chose).
        labels: the batch's labels (``confidence`` reads the gold ones).
        route: ``(B,)`` each example's teacher index, for ``route``.
    """

    def __init__(
        self, mix: TeacherMix, members: Mapping[str, Features | None], labels: Tensor | None, route: Tensor | None
    ) -> None:
        missing = [name for name in mix.names if name not in members]
        if missing:
            raise ValueError(
                f"the objective combines teachers {', '.join(mix.names)}, but got no features of {', '.join(missing)}"
            )
        self.mix, self.labels = mix, labels
        self.ordered = [members[name] for name in mix.names]
        present = [f for f in self.ordered if f is not None]
        if not present:
            raise ValueError("no teacher gave features for this batch")
        self.route = self._checked_route(route) if route is not None and mix.combine == "route" else route
        absent = [name for name, f in zip(mix.names, self.ordered, strict=True) if f is None]
        if absent and mix.combine != "route":
            # only a route lets a teacher sit out a batch: any other rule would drop it silently
            raise ValueError(
                f"teacher {absent[0]!r} gave no features for this batch, and combine: {mix.combine} reads every "
                "teacher on every example"
            )
        self.first = present[0]
        self._weights: dict[str, Tensor] = {}
        self._dense: dict[float, Features] = {}

    def for_term(self, temperature: float, token_level: bool) -> list[tuple[float, Features]]:
        """The target of a term at ``temperature``: ``[(1.0, combined)]``, or for teachers kept
        sparse and ``mixture``, ``[(ωᵢ, teacher i)]`` to be summed."""
        present = [f for f in self.ordered if f is not None]
        if token_level and all(f.final_hidden is not None for f in present):
            return [(1.0, self._blend())]
        if all(f.logits is not None for f in present):
            if temperature not in self._dense:
                weights = self._weights_of("logits")
                logits = target_logits(
                    [f.logits if f else None for f in self.ordered], weights, self.mix.combine, temperature
                )
                self._dense[temperature] = Features(logits=logits, attention_mask=self.first.attention_mask)
            return [(1.0, self._dense[temperature])]
        if all(f.topk is not None or f.sampled is not None for f in present):
            return self._sparse()
        raise ValueError(
            "the teachers give different kinds of outputs (full logits, final hidden states, top-k or sampled "
            "caches): "
            "give every teacher the same cache setting"
        )

    def _checked_route(self, route: Tensor) -> Tensor:
        """The route checked against the teachers, and against the teachers that gave features."""
        route = check_route(route, len(self.mix.names))
        chosen = sorted({int(i) for i in route.unique()})
        absent = [self.mix.names[i] for i in chosen if self.ordered[i] is None]
        if absent:
            raise ValueError(
                f"an example of the batch is routed to teacher {absent[0]!r}, but that teacher gave no features for it"
            )
        return route

    # -- weights ---------------------------------------------------------------------------

    def _lead(self, kind: str) -> tuple[int, ...]:
        f = self.first
        tensor = f.final_hidden if kind == "hidden" else f.logits
        assert tensor is not None
        return tuple(tensor.shape[:-1])

    def _gold(self, lead: tuple[int, ...]) -> Tensor | None:
        labels = self.labels
        if labels is None or not isinstance(labels, Tensor):
            return None
        if len(lead) == 2 and tuple(labels.shape) == lead:
            return next_token_targets(labels)  # the gold label of a position is the next token
        return labels if tuple(labels.shape) == lead else None

    def _weights_of(self, kind: str) -> Tensor:
        if kind in self._weights:
            return self._weights[kind]
        lead = self._lead(kind)
        options: dict[str, Any] = {"device": self._device(), "route": self.route}
        if self.mix.combine in ("confidence", "entropy"):
            gold = self._gold(lead)
            if self.mix.needs_gold and gold is None:
                raise ValueError(
                    "combine: confidence weighs each teacher by its probability of the gold label, but the batch "
                    "has no labels of the targets' shape"
                )
            stats = [self._statistics(f, gold, kind) for f in self.ordered]
            options["gold_log_probs"] = torch.stack([s[0] for s in stats])
            options["entropies"] = torch.stack([s[1] for s in stats])
            if gold is not None:
                options["gold_counted"] = gold != -100
        weights = example_weights(self.mix, lead, **options)
        self._weights[kind] = weights
        return weights

    def _device(self) -> torch.device:
        tensor = self.first.final_hidden if self.first.final_hidden is not None else self.first.logits
        if tensor is None and self.first.topk is not None:
            tensor = self.first.topk.log_probs
        return tensor.device if tensor is not None else torch.device("cpu")

    @staticmethod
    def _statistics(features: Features | None, gold: Tensor | None, kind: str) -> tuple[Tensor, Tensor]:
        if features is None:
            raise ValueError("combine: confidence and entropy need every teacher on every example (no route)")
        if kind == "logits":
            assert features.logits is not None
            return teacher_statistics(features.logits, gold)
        # the head chunk by chunk: a causal LM's logits are never held whole
        hidden, layer = features.final_hidden, features.output_layer
        assert hidden is not None and layer is not None
        flat = hidden.reshape(-1, hidden.shape[-1])
        flat_gold = None if gold is None else gold.reshape(-1)
        picked, entropy = [], []
        with torch.no_grad():
            for start in range(0, flat.shape[0], _STAT_ROWS):
                rows = slice(start, start + _STAT_ROWS)
                chunk = layer(flat[rows])
                found = teacher_statistics(chunk, None if flat_gold is None else flat_gold[rows])
                picked.append(found[0])
                entropy.append(found[1])
        return torch.cat(picked).view(hidden.shape[:-1]), torch.cat(entropy).view(hidden.shape[:-1])

    # -- targets ---------------------------------------------------------------------------

    def _blend(self) -> Features:
        blend = TeacherBlend(members=list(self.ordered), weights=self._weights_of("hidden"), combine=self.mix.combine)
        return Features(blend=blend, attention_mask=self.first.attention_mask)

    def _sparse(self) -> list[tuple[float, Features]]:
        combine = self.mix.combine
        if combine == "mixture":
            return [(w, f) for w, f in zip(self.mix.weights, self.ordered, strict=True) if f is not None and w > 0]
        if combine != "route":
            raise ValueError(
                f"combine: {combine} needs every teacher's full distribution, and top-k or sampled caches keep a part "
                "of it: use combine: mixture or route, or build the caches with full logits"
            )
        if self.route is None:
            raise ValueError(
                "combine: route needs each example's teacher, but the batch carries none (the route column)"
            )
        topk, sampled = self.first.topk, self.first.sampled
        examples = topk.log_probs.shape[0] if topk is not None else sampled.indices.shape[0]  # type: ignore[union-attr]
        return [(1.0, _routed(self.ordered, check_route(self.route, len(self.ordered), examples)))]


def _routed(members: list[Features | None], route: Tensor) -> Features:
    """Each example's rows from its own teacher's sparse record."""
    present = [f for f in members if f is not None]
    first = present[0]
    rows = torch.arange(route.shape[0], device=route.device)

    def pick(get: Any) -> Tensor:
        tensors = [get(f) if f is not None else None for f in members]
        shapes = {tuple(t.shape) for t in tensors if t is not None}
        if len(shapes) != 1:
            raise ValueError(
                "combine: route over cached teachers needs caches of one shape: build every teacher's cache with the "
                f"same top_k (or samples); got shapes {sorted(shapes)}"
            )
        reference = next(t for t in tensors if t is not None)
        stacked = torch.stack([t if t is not None else torch.zeros_like(reference) for t in tensors])
        return stacked[route.to(stacked.device), rows.to(stacked.device)]

    if first.topk is not None:
        topk = TopKLogProbs(
            log_probs=pick(lambda f: f.topk.log_probs),
            indices=pick(lambda f: f.topk.indices),
            rest=pick(lambda f: f.topk.rest),
            temperature=first.topk.temperature,
        )
        return Features(attention_mask=first.attention_mask, topk=topk)
    assert first.sampled is not None
    sampled = SampledLogProbs(
        indices=pick(lambda f: f.sampled.indices),
        counts=pick(lambda f: f.sampled.counts),
        log_probs=pick(lambda f: f.sampled.log_probs),
        temperature=first.sampled.temperature,
        samples=first.sampled.samples,
    )
    return Features(attention_mask=first.attention_mask, sampled=sampled)
