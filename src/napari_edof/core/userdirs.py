"""Where napari-edof keeps files between runs: ``$NAPARI_EDOF_CACHE`` when set (a folder), otherwise
``<user cache dir>/napari-edof`` (downloaded weights, unless ``$NAPARI_EDOF_WEIGHTS`` says
otherwise, and the record that focus-fuse's compiled kernels are built)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

ENV = "NAPARI_EDOF_CACHE"


def cache_root() -> Path:
    """The cache folder (not created here)."""
    env = os.environ.get(ENV)
    if env:
        return Path(env).expanduser()
    if not sys.platform.startswith("linux"):  # (on Linux its answer is the one below, without its import: 0.04 s)
        try:
            from platformdirs import user_cache_dir

            return Path(user_cache_dir("napari-edof"))
        except ImportError:  # pragma: no cover - platformdirs comes with napari / pooch
            pass
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return Path(xdg if xdg.strip() else os.path.expanduser("~/.cache")) / "napari-edof"


__all__ = ["ENV", "cache_root"]
