"""Where kdistill keeps what is its own outside a run folder (caches, crash reports)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    """kdistill's own folder for caches and crash reports: ``$KDISTILL_CACHE``, else
    ``$XDG_CACHE_HOME/kdistill`` (default ``~/.cache/kdistill``)."""
    root = os.environ.get("KDISTILL_CACHE")
    if root:
        return Path(root).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "kdistill"
