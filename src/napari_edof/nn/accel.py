"""How tiles reach an accelerator: pinned transfers, one CUDA stream per lane, half precision.

* :func:`to_device` moves a numpy window to the method's device. On CUDA the host copy goes
  through page-locked ("pinned") memory (torch's caching host allocator, so buffers are reused)
  and the upload is asynchronous on the current stream: the CPU goes on preparing while the copy
  runs. Elsewhere it is ``torch.from_numpy`` (no copy on the CPU).
* :func:`lane` gives each engine thread that runs tiles its own CUDA stream, so the upload,
  compute and download of one tile overlap those of the tile in the other lane (the engine runs
  :data:`CUDA_LANES` tiles at a time on CUDA, one elsewhere).
* :func:`autocast` runs a tile in half precision (float16 on CUDA, bfloat16 on the CPU) where
  the engine decided it may (see ``precision`` in :func:`napari_edof.fuse`).
* :func:`map_planes` runs one network call per plane in worker threads, each single-threaded
  (the pair methods' CPU route): a call of a small network at full resolution is many small ops,
  and with torch's intra-op threads every op ends in a barrier, which on a machine with more
  runnable threads than cores costs far more than the op (measured in docs/pair_networks.md).
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np

#: tiles a CUDA device runs at a time, each thread on its own stream
CUDA_LANES = 2
#: plane pairs per network call of the pair methods (MSAS, CTMFusion) on a GPU with ``batch=0``;
#: on the CPU 1 is fastest and smallest (measured: docs/pair_networks.md)
GPU_PAIR_BATCH = 8

#: the pair methods' (MSAS, CTMFusion) own route on the CPU for the reference strategy: every
#: plane against the reference in single-threaded worker threads (:func:`map_planes`), the
#: reference's share computed once; False: every pair through the plain ``decide`` (read when a
#: method instance is made; the tests compare the two)
PAIR_CPU_ROUTE = True

_streams = threading.local()


def to_device(a: np.ndarray, device: str, dtype=np.float32):
    """``a`` as a contiguous torch tensor of ``dtype`` on ``device`` (see the module text)."""
    import torch

    t = torch.from_numpy(np.require(a, dtype, ("C", "W")))  # (a read-only window is copied)
    if not str(device).startswith("cuda"):
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def pair_batch(batch: int, device: str) -> int:
    """Pairs per network call: ``batch``, or for 0 ("auto") 1 on the CPU and
    :data:`GPU_PAIR_BATCH` on an accelerator (whose kernels want larger calls)."""
    if batch:
        return int(batch)
    return 1 if str(device).split(":")[0] == "cpu" else GPU_PAIR_BATCH


def lanes(device: str) -> int:
    """How many tiles the engine runs at once on ``device``."""
    return CUDA_LANES if str(device).startswith("cuda") else 1


@contextlib.contextmanager
def lane(device: str):
    """This thread's own CUDA stream while a tile runs on ``device`` (nothing elsewhere).

    The tile's results are copied back to numpy inside (``.cpu()`` waits for its stream), so
    nothing made on the stream is used on another.
    """
    if not str(device).startswith("cuda"):
        yield
        return
    import torch

    dev = torch.device(device)
    per = getattr(_streams, "by_device", None)
    if per is None:
        per = _streams.by_device = {}
    s = per.get(dev)
    if s is None:
        s = per[dev] = torch.cuda.Stream(device=dev)
    with torch.cuda.stream(s):
        yield


def half_dtype(device: str):
    """The half-precision type of ``device``: float16 on CUDA and MPS, bfloat16 on the CPU."""
    import torch

    return torch.bfloat16 if str(device).split(":")[0] == "cpu" else torch.float16


@contextlib.contextmanager
def autocast(device: str, enabled: bool):
    """torch's autocast for ``device`` in its half type while ``enabled`` (thread-local)."""
    if not enabled:
        yield
        return
    import torch

    kind = str(device).split(":")[0]
    with torch.autocast(device_type=kind, dtype=half_dtype(device)):
        yield


@contextlib.contextmanager
def single_threaded(on: bool = True):
    """torch's intra-op threads set to 1 inside (when ``on``), the previous count restored after.
    (The count is process-wide: other torch work in the process runs single-threaded meanwhile.)"""
    if not on:
        yield
        return
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def cpu_workers(n_items: int) -> int:
    """Worker threads for :func:`map_planes`: torch's thread count, at most one per item."""
    import torch

    return max(1, min(int(torch.get_num_threads()), int(n_items)))


def map_planes(fn, items, workers: int) -> list:
    """``[fn(item) for item in items]``, in ``workers`` threads with torch single-threaded inside
    (torch releases the GIL in its ops, so the threads run at once). ``fn`` runs in the worker
    thread: thread-local torch state (``inference_mode``, autocast) must be entered inside it."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [fn(it) for it in items]
    from concurrent.futures import ThreadPoolExecutor

    with single_threaded(), ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))
