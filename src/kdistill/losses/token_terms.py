"""Token-level loss terms of causal language models: a divergence of the student from the teacher at
every target token (:class:`TokenKD`), and the student's cross-entropy on the targets (:class:`TokenCE`).

Both read the models' final hidden states and output layers (never their full logits) and compute
in chunks through :func:`~kdistill.losses.chunked.chunked_token_loss`: the logits of one batch of
two models would be batch × length × vocabulary floats each. The labels are the batch's token ids
with -100 where nothing is predicted (prompts, padding); they are shifted once, in
:func:`~kdistill.losses.tokens.next_token_targets`.

**Normalisation.** A token-level term is a sum over target tokens. Within an optimizer step the
:class:`~kdistill.losses.objective.Objective` divides it by the number of target tokens of the
whole step (every micro-batch of the accumulation group, every process), which the training paths
count before the step's first backward, so that the gradient does not depend on how a step is
split. Called on its own, a term is the mean over the batch's own target tokens.
"""

from __future__ import annotations

import logging
from typing import ClassVar, Literal

from pydantic import Field, model_validator
from torch import Tensor

from kdistill.capture.features import CaptureRequest, Features
from kdistill.losses.base import Temperature
from kdistill.losses.chunked import chunked_token_loss
from kdistill.losses.functional import check_temperature, check_unit_interval
from kdistill.losses.registry import TermSettings, register_term
from kdistill.losses.terms import Term
from kdistill.losses.tokens import DIVERGENCES, next_token_targets

__all__ = ["TokenCE", "TokenKD", "count_targets"]

logger = logging.getLogger(__name__)

Divergence = Literal["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tv"]


#: the default weights of the divergences that have one: jsd's beta, the skew divergences' alpha
BETA, SKEW = 0.5, 0.1
#: the divergences each weight applies to
_WEIGHT_OF = {"beta": ("jsd",), "skew": ("skew_kl", "skew_reverse_kl")}


def _divergence_weights(divergence: str, beta: float | None, skew: float | None) -> dict[str, float | None]:
    """``{"beta": ..., "skew": ...}`` as ``divergence`` uses them: the default where it uses one and
    none is given, None where it uses none.

    A weight at its own default is ignored with a warning (runs of kdistill 0.2 recorded both weights).

    Raises:
        ValueError: a weight other than its default given for a divergence that does not use it.
    """
    found: dict[str, float | None] = {}
    for key, value, default in (("beta", beta, BETA), ("skew", skew, SKEW)):
        kinds = _WEIGHT_OF[key]
        if divergence in kinds:
            found[key] = default if value is None else value
        elif value is not None and value == default:
            # what kdistill 0.2 wrote into every run's config.yaml: such a run still resumes, told so
            logger.warning(
                "%s: %g is the default of divergence %s and changes nothing with divergence %s; it is ignored "
                "(remove it)",
                key,
                value,
                " or ".join(kinds),
                divergence,
            )
            found[key] = None
        elif value is not None:
            raise ValueError(
                f"{key} applies to divergence {' or '.join(kinds)} only, and this term's divergence is {divergence}: "
                f"{key} would change nothing; remove it, or set divergence: {kinds[0]}"
            )
        else:
            found[key] = None
    return found


def count_targets(labels: Tensor, ignore_index: int = -100) -> Tensor:
    """The number of target tokens of a batch: positions whose next token counts, ``(B, L) -> ()``."""
    return (next_token_targets(labels, ignore_index) != ignore_index).sum()


def _head(features: Features, side: str) -> tuple[Tensor, Tensor, Tensor | None]:
    if features.final_hidden is None or features.output_layer is None:
        raise ValueError(
            f"a token-level term needs the {side}'s final hidden states and output layer, but the "
            f"{side} produced none (is it a Hugging Face causal LM?)"
        )
    layer = features.output_layer
    return features.final_hidden, layer.weight, layer.bias


class _TokenTerm(Term):
    """Shared by the token-level terms: their capture request, labels and normalisation."""

    needs_labels: ClassVar[bool] = True
    token_level: ClassVar[bool] = True
    chunk_size: int | None = None

    def token_sum(self, student: Features, teacher: Features, labels: Tensor | None) -> Tensor:
        """The term summed over the batch's target tokens (a float32 scalar)."""
        raise NotImplementedError

    def forward(self, student: Features, teacher: Features, labels: Tensor | None = None) -> Tensor:
        """The mean over the batch's own target tokens (0 when there is none)."""
        return self.token_sum(student, teacher, labels) / count_targets(self._labels(labels)).clamp_min(1)

    @staticmethod
    def _labels(labels: Tensor | None) -> Tensor:
        if labels is None:
            raise ValueError("a token-level term needs the batch's labels (token ids, -100 where nothing counts)")
        return labels


@register_term("token_kd")
class TokenKD(_TokenTerm):
    """A divergence between the teacher's and the student's next-token distributions, at each target token.

    Args:
        divergence: ``forward_kl`` KL(teacher ‖ student), ``reverse_kl``, ``jsd`` (generalized JSD
            of GKD with ``beta``: 0 is forward KL, 1 reverse KL), ``skew_kl`` / ``skew_reverse_kl``
            (DistiLLM, with ``skew``), or ``tv`` (total variation).
        temperature: softens both distributions; the divergence is multiplied by T².
        beta: the generalized JSD's weight, in [0, 1] (default 0.5); ``jsd`` only.
        skew: the skew divergences' alpha, in [0, 1] (default 0.1); ``skew_kl`` / ``skew_reverse_kl`` only.
        chunk_size: tokens per chunk of logits (None: 16 MiB of float32 logits a chunk).

    Raises:
        ValueError: ``beta`` or ``skew`` given with a divergence that does not use it (it would
            change nothing).
    """

    class Settings(TermSettings):
        divergence: Divergence = "forward_kl"
        temperature: Temperature = 1.0
        beta: float | None = Field(None, ge=0, le=1, description="jsd only (default 0.5): 0 is forward KL, 1 reverse")
        skew: float | None = Field(
            None, ge=0, le=1, description="skew_kl, skew_reverse_kl only (default 0.1): DistiLLM's alpha"
        )
        chunk_size: int | None = Field(None, ge=1, description="tokens per chunk of logits")

        @model_validator(mode="after")
        def _weights_that_apply(self) -> TokenKD.Settings:
            # the resolved config records the weight that runs, and null where the divergence has none
            for key, value in _divergence_weights(self.divergence, self.beta, self.skew).items():
                if getattr(self, key) != value:
                    setattr(self, key, value)
            return self

    def __init__(
        self,
        divergence: str = "forward_kl",
        temperature: float = 1.0,
        beta: float | None = None,
        skew: float | None = None,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {', '.join(DIVERGENCES)}, got {divergence!r}")
        weights = _divergence_weights(divergence, beta, skew)
        self.divergence = divergence
        self.temperature = check_temperature(temperature)
        self.beta = check_unit_interval(weights["beta"] if weights["beta"] is not None else BETA, "beta")
        self.skew = check_unit_interval(weights["skew"] if weights["skew"] is not None else SKEW, "skew")
        self.chunk_size = chunk_size

    def request(self, side: Literal["student", "teacher"]) -> CaptureRequest:
        return CaptureRequest(logits=False, final_hidden=True)

    def _check_cached_temperature(self, stored: float, what: str) -> None:
        """A cache of ``what`` at another temperature than the term's cannot serve it."""
        if abs(stored - self.temperature) > 1e-9:
            raise ValueError(
                f"the teacher cache holds {what} at temperature {stored:g}, but the term uses "
                f"{self.temperature:g}; rebuild the cache at {self.temperature:g}"
            )

    def token_sum(self, student: Features, teacher: Features, labels: Tensor | None) -> Tensor:
        targets = next_token_targets(self._labels(labels))
        hidden, weight, bias = _head(student, "student")
        options = {
            "temperature": self.temperature,
            "beta": self.beta,
            "alpha": self.skew,
            "chunk_size": self.chunk_size,
        }
        if teacher.blend is not None:
            blend = teacher.blend
            heads = [None if member is None else _head(member, "teacher") for member in blend.members]
            return chunked_token_loss(
                hidden,
                weight,
                bias,
                targets,
                self.divergence,
                teacher_blend=(heads, blend.weights, blend.combine),
                **options,
            )
        if teacher.final_hidden is None and teacher.sampled is not None:
            sampled = teacher.sampled
            self._check_cached_temperature(sampled.temperature, "ids drawn")
            if self.divergence != "forward_kl":
                raise ValueError(
                    f"a sampled teacher cache trains divergence forward_kl only, and this term's is "
                    f"{self.divergence}: build the cache with top_k, or run the teacher online"
                )
            return chunked_token_loss(
                hidden,
                weight,
                bias,
                targets,
                "forward_kl",
                teacher_sampled=(sampled.log_probs, sampled.indices, sampled.counts),
                temperature=self.temperature,
                chunk_size=self.chunk_size,
            )
        if teacher.final_hidden is None and teacher.topk is not None:
            topk = teacher.topk
            self._check_cached_temperature(topk.temperature, "top-k log-probabilities")
            return chunked_token_loss(
                hidden,
                weight,
                bias,
                targets,
                self.divergence,
                teacher_topk=(topk.log_probs, topk.indices, topk.rest),
                **options,
            )
        teacher_hidden, teacher_weight, teacher_bias = _head(teacher, "teacher")
        # heads padded to different sizes (the same tokenizer): compared on the ids both have
        shared = min(weight.shape[0], teacher_weight.shape[0]) if weight.shape[0] != teacher_weight.shape[0] else None
        return chunked_token_loss(
            hidden,
            weight,
            bias,
            targets,
            self.divergence,
            teacher_hidden=teacher_hidden,
            teacher_weight=teacher_weight,
            teacher_bias=teacher_bias,
            vocab_size=shared,
            **options,
        )

    def extra_repr(self) -> str:
        settings = {"forward_kl": "", "reverse_kl": "", "tv": "", "jsd": f", beta={self.beta:g}"}
        return f"{self.divergence}{settings.get(self.divergence, f', skew={self.skew:g}')}, T={self.temperature:g}"


@register_term("token_ce")
class TokenCE(_TokenTerm):
    """The student's cross-entropy on the next tokens (the language-modelling loss), summed over target tokens."""

    reads_teacher: ClassVar[bool] = False

    class Settings(TermSettings):
        chunk_size: int | None = Field(None, ge=1, description="tokens per chunk of logits")

    def __init__(self, chunk_size: int | None = None) -> None:
        super().__init__()
        self.chunk_size = chunk_size

    def request(self, side: Literal["student", "teacher"]) -> CaptureRequest:
        # the teacher is not needed for the language-modelling loss
        return CaptureRequest(logits=False, final_hidden=side == "student")

    def token_sum(self, student: Features, teacher: Features, labels: Tensor | None) -> Tensor:
        hidden, weight, bias = _head(student, "student")
        return chunked_token_loss(
            hidden, weight, bias, next_token_targets(self._labels(labels)), "ce", chunk_size=self.chunk_size
        )
