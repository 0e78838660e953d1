"""Several teachers as one target: how their distributions are combined, per example.

A :class:`TeacherMix` names the teachers, their fixed weights ``ω`` and the rule that turns them
into the one distribution a logit-level or token-level term distils towards:

* ``mixture`` (the default): probabilities ``Σ ωᵢ·softmax(zᵢ/T)`` at the term's temperature ``T``.
  For forward KL its gradient equals the ω-average of the per-teacher forward-KL gradients
  (``q − Σ ωᵢ pᵢ = Σ ωᵢ (q − pᵢ)``).
* ``logit_mean``: the logits ``Σ ωᵢ·zᵢ`` (TextBrewer's multi-teacher target), a different
  target: it sharpens where the teachers agree and is not a mixture of them.
* ``confidence``: a mixture whose weights are, per example (per token of a causal LM),
  ``softmax_i(log ωᵢ + pᵢ(gold)/τ)``: the teachers that give the true label more probability
  count more (after CA-MKD); positions without a gold label keep ``ω``.
* ``entropy``: a mixture weighted per example by ``softmax_i(log ωᵢ − Hᵢ/τ)``: the more certain
  teachers count more.
* ``route``: each example names its one teacher (a data column); the target is that teacher's.

Terms do not change: the target reaches them as logits whose softmax at the term's
temperature is the combined distribution (:func:`target_logits`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["COMBINE_RULES", "TeacherMix", "check_route", "example_weights", "target_logits"]

#: the rules a TeacherMix combines teachers by
COMBINE_RULES = ("mixture", "logit_mean", "confidence", "entropy", "route")
#: rules whose weights differ per example
PER_EXAMPLE = ("confidence", "entropy", "route")


@dataclass(frozen=True)
class TeacherMix:
    """How several teachers make one target.

    Attributes:
        names: the teachers, in order (a route's teacher index counts in this order).
        weights: their fixed weights ``ω``, normalised to sum to 1 (default: equal).
        combine: one of :data:`COMBINE_RULES`.
        temperature: ``τ`` of ``confidence`` and ``entropy``: lower trusts the best teacher more.

    Example:
        >>> mix = TeacherMix.of({"a": 1.0, "b": 3.0})
        >>> mix.weights
        (0.25, 0.75)
    """

    names: tuple[str, ...]
    weights: tuple[float, ...]
    combine: str = "mixture"
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if not self.names or len(set(self.names)) != len(self.names):
            raise ValueError(f"a TeacherMix needs distinct teacher names, got {list(self.names)}")
        if len(self.weights) != len(self.names):
            raise ValueError(f"{len(self.names)} teachers but {len(self.weights)} weights")
        if self.combine not in COMBINE_RULES:
            raise ValueError(f"combine must be one of {', '.join(COMBINE_RULES)}, got {self.combine!r}")
        temperature = self.temperature
        number = isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
        if not (number and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"the combination's temperature must be a finite number > 0, got {self.temperature!r}")
        object.__setattr__(self, "weights", normalised_weights(dict(zip(self.names, self.weights, strict=True))))

    @classmethod
    def of(
        cls, weights: Mapping[str, float] | Sequence[str], combine: str = "mixture", temperature: float = 1.0
    ) -> TeacherMix:
        """A mix of the named teachers: ``{name: weight}``, or names alone for equal weights."""
        if isinstance(weights, Mapping):
            return cls(tuple(weights), tuple(float(w) for w in weights.values()), combine, temperature)
        names = tuple(weights)
        return cls(names, tuple(1.0 for _ in names), combine, temperature)

    @property
    def per_example(self) -> bool:
        """Whether the weights differ per example (``confidence``, ``entropy``, ``route``)."""
        return self.combine in PER_EXAMPLE

    @property
    def needs_gold(self) -> bool:
        """Whether the weights read the gold label (``confidence``)."""
        return self.combine == "confidence"

    def describe(self) -> str:
        """One line for logs and reports, e.g. ``mixture of a (0.5), b (0.5)``."""
        shown = ", ".join(f"{name} ({weight:.3g})" for name, weight in zip(self.names, self.weights, strict=True))
        extra = f", τ = {self.temperature:g}" if self.combine in ("confidence", "entropy") else ""
        return f"{self.combine} of {shown}{extra}"


def normalised_weights(weights: Mapping[str, float]) -> tuple[float, ...]:
    """The weights divided by their sum.

    Raises:
        ValueError: a weight negative or not finite, or all zero.
    """
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"the weight of teacher {name!r} must be a finite number >= 0, got {weight!r}")
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("every teacher has weight 0: give at least one teacher a weight > 0")
    return tuple(float(weight) / total for weight in weights.values())


def example_weights(
    mix: TeacherMix,
    lead: torch.Size | tuple[int, ...],
    *,
    device: torch.device | None = None,
    gold_log_probs: Tensor | None = None,
    entropies: Tensor | None = None,
    gold_counted: Tensor | None = None,
    route: Tensor | None = None,
) -> Tensor:
    """The weight of each teacher at each example (or token), ``(n, *lead)``, summing to 1 over teachers.

    Args:
        mix: the combination.
        lead: the positions, ``(B,)`` for classifiers or ``(B, L)`` per token.
        device: where the weights live.
        gold_log_probs: ``confidence``: ``(n, *lead)`` each teacher's log-probability of the gold
            label at temperature 1.
        entropies: ``entropy``: ``(n, *lead)`` each teacher's entropy (nats) at temperature 1.
        gold_counted: ``confidence``: ``lead``-shaped, where a gold label exists (others keep ``ω``).
        route: ``route``: ``(B,)`` the index (in ``mix.names``) of each example's teacher.
    """
    n = len(mix.names)
    base = torch.tensor(mix.weights, dtype=torch.float32, device=device).view(n, *([1] * len(lead)))
    if mix.combine in ("mixture", "logit_mean"):
        return base.expand(n, *lead)
    if mix.combine == "route":
        if route is None:
            raise ValueError(
                "combine: route needs each example's teacher, but the batch carries none (the route column)"
            )
        route = check_route(route, n, lead[0]).to(base.device)
        one_hot = torch.nn.functional.one_hot(route, n).t().to(torch.float32)  # (n, B)
        return one_hot.view(n, lead[0], *([1] * (len(lead) - 1))).expand(n, *lead)
    scores = gold_log_probs.exp() if mix.combine == "confidence" else entropies
    if scores is None:
        what = "gold-label probabilities" if mix.needs_gold else "entropies"
        raise ValueError(f"combine: {mix.combine} needs the teachers' {what}")
    scores = scores.to(device=base.device, dtype=torch.float32)
    sign = 1.0 if mix.combine == "confidence" else -1.0
    logits = torch.log(base) + sign * scores / mix.temperature
    weights = torch.softmax(logits, dim=0)
    if gold_counted is not None and mix.needs_gold:
        weights = torch.where(gold_counted.to(weights.device).unsqueeze(0), weights, base.expand_as(weights))
    return weights


def check_route(route: Tensor, teachers: int, examples: int | None = None) -> Tensor:
    """The route as int64, checked: one index in ``0..teachers - 1`` per example, ``(B,)``.

    Raises:
        ValueError: a route of another shape, or an index that names no teacher.
    """
    route = torch.as_tensor(route)
    if route.is_floating_point() or route.is_complex() or route.dtype == torch.bool:
        raise ValueError(f"the route must hold integer teacher indices, got dtype {route.dtype}")
    route = route.long()
    if route.dim() != 1 or (examples is not None and route.shape[0] != examples):
        wanted = f"(B,) = ({examples},)" if examples is not None else "(B,)"
        raise ValueError(f"the route must be one teacher index per example, {wanted}, got {tuple(route.shape)}")
    bad = route[(route < 0) | (route >= teachers)]
    if bad.numel():
        raise ValueError(
            f"a route names teacher index {int(bad[0])}, but there are {teachers} teachers (0..{teachers - 1})"
        )
    return route


def teacher_statistics(logits: Tensor, gold: Tensor | None, ignore_index: int = -100) -> tuple[Tensor, Tensor]:
    """One teacher's log-probability of the gold label and its entropy, at temperature 1.

    Args:
        logits: ``(..., V)``.
        gold: ``(...)`` the gold ids, ``ignore_index`` where none (then the log-probability is 0).

    Returns:
        ``(log p(gold), entropy)``, each ``(...)`` float32.
    """
    log_p = torch.log_softmax(logits.float(), dim=-1)
    entropy = -(log_p.exp() * log_p).nan_to_num(0.0).sum(dim=-1)
    if gold is None:
        return torch.zeros_like(entropy), entropy
    counted = gold != ignore_index
    picked = log_p.gather(-1, torch.where(counted, gold, 0).long().unsqueeze(-1)).squeeze(-1)
    return torch.where(counted, picked, torch.zeros_like(picked)), entropy


def target_logits(logits: Sequence[Tensor | None], weights: Tensor, combine: str, temperature: float) -> Tensor:
    """Logits whose softmax at ``temperature`` is the combined target, ``(..., V)``.

    Args:
        logits: each teacher's ``(..., V)`` logits (None for a teacher absent from the batch,
            whose weight must be 0 wherever it is None: a routed teacher no example chose).
        weights: ``(n, ...)`` from :func:`example_weights`.
        combine: ``logit_mean`` averages the logits; every other rule mixes probabilities.
        temperature: the term's temperature ``T``: the mixture is ``T·log Σ wᵢ softmax(zᵢ/T)``.
    """
    present = [(i, z) for i, z in enumerate(logits) if z is not None]
    if not present:
        raise ValueError("no teacher gave logits for this batch")
    sizes = {z.shape[-1] for _, z in present}
    size = min(sizes)  # heads padded to different sizes (one tokenizer): the ids all of them have
    if combine == "logit_mean":
        total = None
        for i, z in present:
            term = weights[i].unsqueeze(-1) * z[..., :size].float()
            total = term if total is None else total + term
        assert total is not None
        return total
    parts = [
        torch.log(weights[i]).unsqueeze(-1) + torch.log_softmax(z[..., :size].float() / temperature, dim=-1)
        for i, z in present
    ]
    return temperature * torch.logsumexp(torch.stack(parts), dim=0)
