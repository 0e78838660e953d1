"""Teacher-output cache: run the teacher once, then train from its stored outputs.

In online distillation every epoch pays for a teacher forward pass on every batch although the
teacher never changes. :class:`TeacherCache` runs the teacher once over a dataset and stores,
per example, what the objective needs: logits, optionally the hidden states of chosen layers,
and for large vocabularies the top-k log-probabilities with the rest of the probability mass
kept as one extra bucket (see :func:`kdistill.losses.functional.soft_kd_topk`).

On disk a cache is a folder with ``manifest.json`` and memory-mapped ``.npy`` shards. It is
written to a temporary folder and renamed into place when complete, so a half-written cache is
never read. The manifest holds a fingerprint of the teacher's weights, the dataset, the
tokenisation settings and what is captured, and the size and SHA-256 of every shard: a cache
that does not match or whose files are damaged or truncated is rebuilt, with a message saying
why, and never silently used.

Per-token fields (hidden states, per-token logits) store only the real tokens of each example
(positions where ``attention_mask`` is 1) and are scattered back into the positions of the
training batch, so dynamic padding and a different batch order do not matter.
"""

from kdistill.cache.folder import check_cache_folder
from kdistill.cache.keys import (
    CacheError,
    CacheFolderError,
    CacheSpec,
    cache_key,
    fingerprint_dataset,
    fingerprint_teacher,
    fingerprint_tokenizer,
)
from kdistill.cache.store import TeacherCache

__all__ = [
    "CacheError",
    "CacheFolderError",
    "CacheSpec",
    "TeacherCache",
    "cache_key",
    "check_cache_folder",
    "fingerprint_dataset",
    "fingerprint_teacher",
    "fingerprint_tokenizer",
]
