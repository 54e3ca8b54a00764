"""Reading a whole focus stack into memory at once, when it fits (issue 17).

:func:`~napari_edof.io.readers.open_stack` is lazy: a dask array, one task per plane or page.
When the stack fits in memory the fastest way to fuse it is to read it once, straight into one
preallocated array, decoding the planes in threads: :func:`read_stack` (the CLI's reader) does
that without building a dask graph (dask is not even imported for plane files or a plain
multi-page TIFF), and :func:`materialise` turns a lazy stack (or dask array) that fits into
numpy the same way (the engine calls it, so a napari layer made by the plugin's reader is read
once, in threads, instead of tile by tile through dask). Stacks that do not fit stay lazy.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

#: A stack is read into memory when its bytes are at most this fraction of the available memory
#: (the fusion needs about as much again for its outputs and work arrays).
MEMORY_SHARE = 0.4


def memory_limit() -> int:
    """Bytes a stack may have to be read whole into memory (monkeypatch this in tests)."""
    from ..core.policy import available_memory

    return int(MEMORY_SHARE * available_memory())


def fits_in_memory(nbytes: int) -> bool:
    return int(nbytes) <= memory_limit()


def _threads(workers: int | None, n: int) -> int:
    return max(1, min(int(workers or os.cpu_count() or 1), n))


def fill_planes(out: np.ndarray, read_one, n: int, workers: int | None = None) -> np.ndarray:
    """``out[i] = read_one(i)`` for the ``n`` planes, decoded in threads (image decoders release the
    GIL); the first error is raised."""
    def job(i):
        out[i] = read_one(i)

    k = _threads(workers, n)
    if k == 1:
        for i in range(n):
            job(i)
        return out
    with ThreadPoolExecutor(k, thread_name_prefix="edof-read") as pool:
        for f in [pool.submit(job, i) for i in range(n)]:
            f.result()
    return out


# the direct readers of the dask arrays open_stack made, by dask name: (shape, dtype, fill(out, workers))
_FILLERS: dict[str, tuple] = {}
_MAX_FILLERS = 64


def register_filler(data, fill) -> None:
    """Remember how to read the dask array ``data`` straight into a numpy array (``fill(out,
    workers)``), for :func:`materialise`."""
    if len(_FILLERS) >= _MAX_FILLERS:
        _FILLERS.pop(next(iter(_FILLERS)))
    _FILLERS[data.name] = (tuple(data.shape), np.dtype(data.dtype), fill)


def materialise(stack, *, workers: int | None = None, limit: int | None = None):
    """A Stack or array whose data is a dask array that fits in memory, read into numpy (one
    preallocated array, planes decoded in threads); anything else is returned as it is (numpy
    input, or a lazy stack too large: it stays lazy)."""
    from ..core.stack import Stack, is_dask

    data = stack.data if isinstance(stack, Stack) else stack
    if not is_dask(data):
        return stack
    nbytes = int(np.prod(data.shape, dtype=np.int64)) * np.dtype(data.dtype).itemsize
    if nbytes > (memory_limit() if limit is None else limit):
        return stack
    out = np.empty(data.shape, data.dtype)
    known = _FILLERS.get(data.name)
    if known is not None and known[0] == tuple(data.shape) and known[1] == out.dtype:
        known[2](out, workers)
    else:
        import dask.array as da

        # every chunk computed straight into its place in `out` (no concatenation copy)
        da.store(data, out, lock=False, compute=True, scheduler="threads",
                 num_workers=_threads(workers, max(1, data.npartitions)))
    return stack.with_data(out) if isinstance(stack, Stack) else out


__all__ = ["MEMORY_SHARE", "fits_in_memory", "materialise", "memory_limit"]
