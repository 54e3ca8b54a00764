"""Where focus-fuse's compiled kernels come from: :mod:`._focus_fuse_numba` when numba is there and
not switched off (``NAPARI_EDOF_NUMBA=0``), else None (focus-fuse then runs its numpy path). The
kernels are compiled at first use and cached on disk beside the module (numba's ``cache=True``;
where that folder is read-only, in the user's cache), so a later process loads them.

Loading them still costs a process about 0.6-1 s (numba's import and its typing and target
contexts, which import ``scipy.linalg``), and they save about 4 ns per grey voxel (16 ns per RGB
voxel) on two cores: a one-shot process (the command line) with less work than
:data:`COMPILED_MIN_WORK` is faster on the numpy path. :func:`one_shot` lets such a caller say so;
everything else (the Python API, the napari widget, dask tasks, whose instances are
made in their own threads) uses the kernels whenever they are there. The two paths give the
same image to float32 rounding (at most one grey level) and the same index."""
from __future__ import annotations

import contextvars
import os
import sys
from contextlib import contextmanager

_KERNELS: list = []  # [the kernels module or None], filled at first use

#: channel-voxels (planes x rows x columns x channels x time points) from which loading numba pays
#: off in a one-shot process: break-even measured at about 190 M for grey and 130 M for RGB on an
#: AVX512 machine; on an AVX2 one (AMD EPYC, 2 cores) numba's start-up was 1.2 s and the kernels
#: saved about 10 ns per grey voxel: about 125 M (the CLI on 16 x 2048 x 2048: 2.73 s against
#: 3.33 s with the kernels, pcb 2.80 against 3.35). With the kernels of 2026-12-07 (15 ns a voxel
#: saved), the whole CLI process alternating three rounds: 16 x 2048^2 (67 M) numpy 2.97 / 2.82 /
#: 2.44 s against compiled 2.92 / 2.80 / 2.75 s (even); 16 x 2560^2 (105 M) 4.16 / 4.25 / 3.69 s
#: against 3.65 / 3.44 / 3.69 s: the kernels from 100 M
COMPILED_MIN_WORK = 100_000_000

_NUMPY_HERE = contextvars.ContextVar("napari_edof_focus_fuse_numpy", default=False)


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


def _numba_loaded() -> bool:
    return "numba" in sys.modules


def wanted() -> bool:
    """Whether a focus-fuse instance made now (in this thread's context) uses the kernels."""
    return not _NUMPY_HERE.get()


@contextmanager
def one_shot(work: int):
    """For a process that runs one job of ``work`` channel-voxels: inside, focus-fuse instances take
    the numpy path when loading numba would cost more than it saves (less work than
    :data:`COMPILED_MIN_WORK`, numba not imported yet, ``NAPARI_EDOF_NUMBA`` not set to 1).
    Yields whether they do."""
    numpy_path = (os.environ.get("NAPARI_EDOF_NUMBA", "") != "1" and not _numba_loaded()
                  and int(work) < COMPILED_MIN_WORK)
    token = _NUMPY_HERE.set(numpy_path)
    try:
        yield numpy_path
    finally:
        _NUMPY_HERE.reset(token)
