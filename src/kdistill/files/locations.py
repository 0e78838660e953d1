"""Where kdistill keeps what is its own outside a run folder (caches, crash reports)."""

from __future__ import annotations

import os
from pathlib import Path

from kdistill.errors import ConfigError

__all__ = ["cache_root"]


def cache_root() -> Path:
    """kdistill's own folder for caches and crash reports: ``$KDISTILL_CACHE``, else
    ``$XDG_CACHE_HOME/kdistill`` (default ``~/.cache/kdistill``).

    Raises:
        ConfigError: the folder, or a folder on its way, is a file (or a broken link), so nothing
            could be written under it: named with the variable that chose it, before any work.
    """
    given = os.environ.get("KDISTILL_CACHE")
    if given:
        root, variable = Path(given).expanduser(), "KDISTILL_CACHE"
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg) if xdg else Path.home() / ".cache").expanduser() / "kdistill"
        variable = "XDG_CACHE_HOME" if xdg else "HOME"
    blocked = next((part for part in (root, *root.parents) if part.exists() or part.is_symlink()), None)
    if blocked is not None and not blocked.is_dir():
        what = "a file" if blocked.exists() else "a broken symbolic link"
        where = "is" if blocked == root else f"lies under {str(blocked)!r}, which is"
        if variable == "KDISTILL_CACHE":
            fix = "point KDISTILL_CACHE at a folder (or unset it to use ~/.cache/kdistill)"
        else:
            fix = f"set KDISTILL_CACHE to a folder for kdistill's caches (it is chosen from ${variable} now)"
        raise ConfigError(f"kdistill's cache folder {str(root)!r} ({variable}) {where} {what}, not a folder; {fix}")
    return root
