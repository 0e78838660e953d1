"""The teacher's stored outputs for a run's stages: one cache per distinct need, built once (with
several teachers, one set of them per teacher: :class:`TeacherCaches`).

A stage whose teacher terms need only logits and hidden states (or, for token-level terms, each
token's top-k or ids drawn from the teacher) reads them from a :class:`~kdistill.cache.TeacherCache`;
one that needs attention maps or queries/keys runs the teacher online.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from torch import nn

from kdistill.cache import CacheSpec, TeacherCache, cache_key, fingerprint_tokenizer
from kdistill.errors import ConfigError
from kdistill.files.locations import cache_root
from kdistill.losses import Objective
from kdistill.losses.token_terms import TokenKD
from kdistill.tasks.base import TaskData

__all__ = [
    "StageCaches",
    "TeacherCaches",
    "check_sampled_cache",
    "shared_vocab",
]

logger = logging.getLogger("kdistill.run")


def shared_vocab(teacher: nn.Module, student: nn.Module) -> int | None:
    """The ids both output layers have when their sizes differ (heads padded differently), else None."""
    heads = [getattr(model, "get_output_embeddings", lambda: None)() for model in (teacher, student)]
    rows = [int(head.weight.shape[0]) for head in heads if head is not None and hasattr(head, "weight")]
    return min(rows) if len(rows) == 2 and rows[0] != rows[1] else None


def check_sampled_cache(settings: Any, objectives: dict[str, Objective]) -> None:
    """Refuse a sampled cache (``teacher.cache.sparse: sampled``) for a stage with a teacher term other
    than ``token_kd`` with ``divergence: forward_kl``: ids drawn from the teacher estimate the forward
    KL's gradient without bias, and nothing else.

    Args:
        settings: the ``teacher.cache`` section, or None.
        objectives: each stage's objective, by stage name.

    Raises:
        ConfigError: the first such term, and what to do instead.
    """
    if settings is None or settings.sparse != "sampled":
        return
    for stage, objective in objectives.items():
        for name in objective.active:
            term = objective.terms[name]
            if term.request("teacher").empty or (isinstance(term, TokenKD) and term.divergence == "forward_kl"):
                continue
            what = f"token_kd with divergence: {term.divergence}" if isinstance(term, TokenKD) else term.term_type
            raise ConfigError(
                f"teacher.cache.sparse: sampled trains only token_kd with divergence: forward_kl, and term {name} "
                f"({stage} stage) is {what or type(term).__name__}: set teacher.cache.sparse: top_k, or remove "
                "teacher.cache to run the teacher online"
            )


class StageCaches:
    """The teacher's stored outputs over the training data, built once per distinct need.

    A stage whose teacher terms need only logits and hidden states reads them from a cache; a
    stage that needs attention maps or queries/keys runs the teacher online. Stages that need
    the same fields share one cache.
    """

    def __init__(
        self,
        settings: Any,
        teacher: nn.Module,
        data: TaskData,
        tokenizer: Any,
        max_length: int | None,
        precision: str,
        progress: bool,
        shared_vocab: int | None = None,
    ) -> None:
        self.settings, self.teacher, self.data, self.shared_vocab = settings, teacher, data, shared_vocab
        self.tokenizer, self.max_length, self.precision, self.progress = tokenizer, max_length, precision, progress
        self.built: dict[CacheSpec, TeacherCache] = {}

    @functools.cached_property
    def tokenization(self) -> dict[str, Any]:
        """What shaped the teacher's inputs, for the cache key; hashing the vocabulary takes a
        quarter of a second, so only runs that use a cache pay it, once."""
        return {"tokenizer": fingerprint_tokenizer(self.tokenizer), "max_length": self.max_length}

    def _spec(self, objective: Objective, request: Any, stage: str) -> CacheSpec | None:
        """What to store: logits and hidden states, or for token-level terms each token's top-k (or
        draws) at the terms' temperature (None when they want different temperatures: the teacher
        runs online)."""
        if not request.final_hidden:
            return CacheSpec(
                logits=request.logits, hidden_states=tuple(sorted(request.hidden_states)), dtype=self.settings.dtype
            )
        temperatures = {
            term.temperature for term in objective.terms.values() if term.token_level and hasattr(term, "temperature")
        }
        if len(temperatures) != 1:
            logger.info(
                "stage %s: its token-level terms use temperatures %s; a %s cache holds one, so the "
                "teacher runs online",
                stage,
                sorted(temperatures),
                "sampled" if self.settings.sparse == "sampled" else "top-k",
            )
            return None
        if self.settings.sparse == "sampled":
            return CacheSpec(
                samples=self.settings.samples,
                temperature=temperatures.pop(),
                dtype=self.settings.topk_dtype,
                from_hidden=True,
                vocab_size=self.shared_vocab,
            )
        return CacheSpec(
            top_k=self.settings.top_k,
            temperature=temperatures.pop(),
            dtype=self.settings.topk_dtype,
            from_hidden=True,
            vocab_size=self.shared_vocab,
        )

    def for_objective(self, objective: Objective, stage: str, teacher: str | None = None) -> TeacherCache | None:
        """The cache that serves ``objective``'s teacher terms (with several teachers, those that read
        ``teacher``), or None to run the teacher online."""
        request = objective.request("teacher", teacher)
        if self.settings is None or request.empty:
            return None
        if request.attentions or request.attention_scores or request.qkv or request.modules:
            logger.info(
                "stage %s: its terms need attention maps or queries/keys, which a cache does not store; "
                "the teacher runs online",
                stage,
            )
            return None
        spec = self._spec(objective, request, stage)
        if spec is None:
            return None
        if spec not in self.built:
            fingerprint, parts = cache_key(self.teacher, self.data.distill, spec, self.tokenization)
            folder = (
                Path(self.settings.dir) if self.settings.dir else cache_root() / "teacher-outputs" / fingerprint[:24]
            )
            logger.info("stage %s: teacher outputs from the cache at %s", stage, folder)
            self.built[spec] = TeacherCache.build(
                self.teacher,
                self.data.distill,
                folder,
                spec=spec,
                batch_size=self.settings.batch_size,
                collate_fn=self.data.collate,
                tokenization=self.tokenization,
                precision=self.precision,
                progress=self.progress,
                key=(fingerprint, parts),
            )
        return self.built[spec]


class TeacherCaches:
    """Several teachers' caches: one :class:`StageCaches` per teacher, by name."""

    def __init__(self, caches: dict[str, StageCaches]) -> None:
        self.caches = caches

    def for_objective(self, objective: Objective, stage: str) -> dict[str, TeacherCache | None]:
        """Each teacher's cache for ``objective`` (None: that teacher runs online)."""
        return {
            name: caches.for_objective(objective, f"{stage} ({name})", teacher=name)
            for name, caches in self.caches.items()
        }
