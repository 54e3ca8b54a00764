"""The Qt-free fusion engine: plan tiles, run a method on each, blend, return a FusionResult.

``fuse_iter`` is a generator: it yields :class:`Progress` after every tile and returns the
:class:`FusionResult` (``StopIteration.value``). Closing the generator cancels the run before the
next tile. ``fuse`` drains it (optionally calling ``progress`` for each step).

Methods implement::

    class MyMethod:
        def __init__(self, params: dict, *, device: str): ...
        def fuse_tile(self, planes, guide, *, halo, stats=None) -> dict
            # planes: (Z, h, w, C) source window (input dtype), guide: (Z, h, w) float32
            # returns "fused" (h', w', C), "index" and "confidence" (h', w') for the window
            # cropped by `halo` on every side (h' = h - 2 * halo)

and, for whole-image statistics (two passes), optionally ``pass1(planes, guide, *, halo) -> dict``
of 2D maps and ``reduce(maps) -> stats``; the engine stitches pass 1 over every tile, calls
``reduce`` once and hands ``stats`` to every ``fuse_tile``.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Callable, Generator, Iterator

import numpy as np

from .. import __version__
from ..methods._registry import DEFAULT_METHOD, get_method
from .colour import make_guide, resolve_guide
from .errors import StackError
from .result import FusionResult, Progress
from .stack import Stack, as_stack, is_dask
from .tiling import Canvas, plan_tiles, read_window



def resolve_device(device: str | None, devices: tuple[str, ...], backend: str) -> str:
    """``None``/"auto": cuda, then mps, then cpu, among what the method runs on."""
    if backend != "torch":
        if device not in (None, "auto", "cpu"):
            raise StackError(f"this method runs on the CPU only (numpy); device {device!r} is not available")
        return "cpu"
    from ..nn.device import pick_device

    return pick_device(device, devices)


def _acc_dtype(dtype: np.dtype) -> np.dtype:
    if dtype.kind == "f" and dtype.itemsize == 8:
        return np.dtype(np.float64)
    if dtype.kind in "iu" and dtype.itemsize >= 4:
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def _to_dtype(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if a.dtype == dtype:
        return a
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        a = np.rint(a)
        np.clip(a, info.min, info.max, out=a)
    return a.astype(dtype)


def _cast_tile(key: str, v: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """A tile's output converted for direct writing into the result (no-overlap path)."""
    if key == "fused":
        return _to_dtype(v, dst.dtype)
    if key == "confidence":
        return np.clip(v, 0, 1)
    return v


def _check_finite(guide: np.ndarray, stack: Stack, t: int) -> None:
    if not np.isfinite(guide).all():
        where = f" (time point {t})" if stack.n_times > 1 else ""
        raise StackError(f"{stack.name}: the stack contains NaN or infinite values{where}; "
                         "replace them (for example with 0) before fusing")


def fuse_iter(
    stack,
    *,
    method: str = DEFAULT_METHOD,
    params: dict | None = None,
    axes: str | None = None,
    tile: int | str | None = "auto",
    overlap: int | None = None,
    device: str | None = None,
    guide="auto",
    workers: int | None = None,
) -> Generator[Progress, None, FusionResult]:
    """Fuse a focus stack tile by tile, yielding progress; returns the :class:`FusionResult`.

    Parameters
    ----------
    stack : Stack, numpy or dask array
        (Z, Y, X), (Z, Y, X, C) RGB, or anything with ``axes=`` from "TCZYX".
    method : str
        A registered method (see :func:`napari_edof.list_methods`).
    params : dict
        The method's parameters (defaults for those not given; unknown names are refused).
    tile : int, "auto" or None
        Tile side in pixels ("auto": the method's default, None or 0: the whole image at once).
    overlap : int
        Pixels each tile's output extends into its neighbours', blended with a feathered ramp
        (default: the method's ``default_overlap``; 0 for a single tile).
    device : "auto", "cpu", "cuda", "cuda:N", "mps"
    guide : "auto", "luminance", "mean" or a channel number
        What focus is measured on; one index is applied to every channel.
    workers : int
        Threads for CPU methods (default: the number of cores).
    """
    stack = as_stack(stack, axes=axes)
    spec, cls = get_method(method)
    p = spec.resolve(params)
    dev = resolve_device(device, spec.devices, spec.backend)
    g = resolve_guide(guide, stack.n_channels, stack.rgb)
    if tile == "auto":
        tile = spec.default_tile
    if tile is not None and tile != 0 and int(tile) < 16:
        raise StackError(f"tile={tile} is too small: use at least 16 pixels (or 0 for no tiling)")
    halo = int(spec.halo(p))
    mult = int(spec.tile_multiple(p))
    Y, X = stack.yx_shape
    single = not tile or tile >= max(Y, X)
    ov = (0 if single else spec.default_overlap) if overlap is None else int(overlap)
    if ov < 0:
        raise StackError(f"overlap={ov} must be 0 or more")
    tiles = plan_tiles((Y, X), tile, halo=halo, overlap=ov, multiple=mult)
    halo_r, ov_r = tiles[0].halo, tiles[0].overlap
    impl = cls(p, device=dev)
    two_pass = hasattr(impl, "pass1")
    nw = 1 if spec.backend == "torch" else max(1, int(workers or os.cpu_count() or 1))

    T, Z, C = stack.n_times, stack.n_planes, stack.n_channels
    canon = stack.canonical()
    dtype = stack.dtype
    acc = _acc_dtype(dtype)
    fused = np.empty((T, Y, X, C), dtype)
    index = np.empty((T, Y, X), np.float32)
    conf = np.empty((T, Y, X), np.float32)
    per_frame = len(tiles) * (2 if two_pass else 1)
    total = T * per_frame
    done = 0
    t_start = time.perf_counter()

    def window(frame, t_):
        planes = read_window(frame, t_.window)
        gd = make_guide(planes, g)
        if dtype.kind == "f":
            _check_finite(gd, stack, t_index)
        return planes, gd

    for t_index in range(T):
        frame = canon[t_index]
        if is_dask(frame):
            frame = frame.compute()
        frame = np.asarray(frame)
        stats = None
        if two_pass:
            keys = impl.pass1_keys
            canvas = Canvas((Y, X), {k: ((), np.float32) for k in keys}, ov_r)

            def job1(t_):
                planes, gd = window(frame, t_)
                return impl.pass1(planes, gd, halo=halo_r)

            for t_, out in _run_tiles(tiles, job1, nw):
                canvas.add(t_, out)
                done += 1
                yield Progress(done, total, "pass 1", t_index)
            stats = impl.reduce(canvas.result())

        outs = {"fused": fused[t_index], "index": index[t_index], "confidence": conf[t_index]}
        canvas = Canvas((Y, X), {"fused": ((C,), acc), "index": ((), np.float32), "confidence": ((), np.float32)},
                        ov_r, out=outs, cast=_cast_tile)

        def job(t_):
            planes, gd = window(frame, t_)
            out = impl.fuse_tile(planes, gd, halo=halo_r, stats=stats)
            out["fused"] = np.asarray(out["fused"]).reshape(out["index"].shape + (C,))
            return out

        for t_, out in _run_tiles(tiles, job, nw):
            canvas.add(t_, out)
            done += 1
            yield Progress(done, total, "fuse", t_index)
        res = canvas.result()
        if res["fused"] is not outs["fused"]:  # blended overlaps: convert the accumulators once
            fused[t_index] = _to_dtype(res["fused"], dtype)
            index[t_index] = res["index"]
            np.clip(res["confidence"], 0, 1, out=conf[t_index])
        del res, canvas
        del frame

    seconds = time.perf_counter() - t_start
    if "C" not in stack.axes:
        fused = fused[..., 0]
    if "T" not in stack.axes:
        fused, index, conf = fused[0], index[0], conf[0]
    prov = {
        "method": spec.name,
        "params": p,
        "version": __version__,
        "device": dev,
        "guide": g,
        "tile": None if single else int(tile),
        "overlap": ov_r,
        "halo": halo_r,
        "tiles": len(tiles),
        "input": stack.name,
        "source": list(stack.source),
        "seconds": seconds,
        "mvoxel_per_s": stack.nbytes / dtype.itemsize / 1e6 / max(seconds, 1e-9),
    }
    if spec.weights is not None:
        prov["weights_sha256"] = spec.weights.sha256
    return FusionResult(
        fused=fused,
        index=index,
        confidence=conf,
        n_planes=Z,
        provenance=prov,
        pixel_size=stack.pixel_size,
        z_step=stack.z_step,
        unit=stack.unit,
        rgb=stack.rgb,
    )


def _run_tiles(tiles, job: Callable, workers: int) -> Iterator:
    """Run ``job`` on every tile, in ``workers`` threads, yielding (tile, output) as they finish.

    At most 2 x workers tiles are in flight, so memory stays one tile's working set per thread.
    Closing the iterator stops before the next tile (tiles already running finish first).
    """
    if workers <= 1:
        for t in tiles:
            yield t, job(t)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edof-tile")
    pending = {}
    it = iter(tiles)
    try:
        for t in it:
            pending[pool.submit(job, t)] = t
            if len(pending) >= 2 * workers:
                break
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                t = pending.pop(f)
                out = f.result()
                nxt = next(it, None)
                if nxt is not None:
                    pending[pool.submit(job, nxt)] = nxt
                yield t, out
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True)


def fuse(stack, *, progress: Callable[[Progress], None] | None = None, **kwargs) -> FusionResult:
    """Fuse a focus stack; the synchronous form of :func:`fuse_iter` (same options)."""
    gen = fuse_iter(stack, **kwargs)
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(step)
