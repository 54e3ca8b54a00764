"""Where focus-fuse's compiled kernels come from: :mod:`._focus_fuse_numba` when numba is there and
not switched off (``NAPARI_EDOF_NUMBA=0``), else None (focus-fuse then runs its numpy path). The
kernels are compiled at first use and cached on disk beside the module (numba's ``cache=True``;
where that folder is read-only, in the user's cache), so a later process loads them."""
from __future__ import annotations

import os

_KERNELS: list = []  # [the kernels module or None], filled at first use


def kernels():
    """The compiled kernels (a module), or None where numba is missing or switched off."""
    if not _KERNELS:
        ns = None
        if os.environ.get("NAPARI_EDOF_NUMBA", "1") != "0":
            try:
                from . import _focus_fuse_numba as ns
            except ImportError:  # numba missing (or broken): the numpy path
                ns = None
        _KERNELS.append(ns)
    return _KERNELS[0]
