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
A method whose first pass depends on its parameters also defines
``needs_pass1(params) -> bool`` (a static method); without it, ``pass1`` always runs.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Any, Callable, Generator, Iterator

import numpy as np

from .. import __version__
from ..methods._registry import DEFAULT_METHOD, get_method
from .colour import make_guide, resolve_guide
from .errors import StackError
from .policy import OutOfMemory, check_memory, free_accelerator_memory, is_oom, smaller_tile
from .registration import parse_register, register_stack
from .result import FusionResult, Progress
from .stack import Stack, as_stack, is_dask
from .tiling import Canvas, Tile, plan_tiles, read_window



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


@dataclass(frozen=True)
class FusionPlan:
    """Everything decided before the first tile: the method, its parameters, the tiles."""

    stack: Stack
    spec: Any
    cls: Any
    params: dict
    device: str
    guide: Any
    tile: int | None
    tiles: list
    halo: int
    overlap: int
    workers: int

    def make_impl(self):
        return self.cls(self.params, device=self.device)

    def is_two_pass(self, impl=None) -> bool:
        """The method has a first pass (``pass1``/``reduce``) and, if it says when it needs it
        (``needs_pass1(params)``), needs it with these parameters. Methods may set ``pass1`` per
        instance (by parameter): give the instance, or one is made."""
        if impl is None:
            impl = self.cls if hasattr(self.cls, "pass1") else self.make_impl()
        needs = getattr(impl, "needs_pass1", None)
        return hasattr(impl, "pass1") and (needs is None or bool(needs(self.params)))


def plan_fusion(stack, *, method: str = DEFAULT_METHOD, params: dict | None = None, axes: str | None = None,
                tile: int | str | None = "auto", overlap: int | None = None, device: str | None = None,
                guide="auto", workers: int | None = None, register=None) -> FusionPlan:
    """Check the options and plan the tiles (no pixel is read, unless ``register`` asks to align
    the planes first: the plan's stack is then the aligned one). Raises EdofError subclasses."""
    stack = as_stack(stack, axes=axes)
    spec, cls = get_method(method)
    reg_opts = parse_register(register)
    if reg_opts is not None:
        spec.resolve(params)  # refuse bad parameters before the (slow) registration
        stack, _ = register_stack(stack, **reg_opts)
    p = spec.resolve(params)
    dev = resolve_device(device, spec.devices, spec.backend)
    g = resolve_guide(guide, stack.n_channels, stack.rgb)
    if tile == "auto":
        tile = spec.tile_for(p, stack.n_planes)
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
    nw = 1 if spec.backend == "torch" else max(1, int(workers or os.cpu_count() or 1))
    return FusionPlan(stack=stack, spec=spec, cls=cls, params=p, device=dev, guide=g,
                      tile=None if single else int(tile), tiles=tiles,
                      halo=tiles[0].halo, overlap=tiles[0].overlap, workers=nw)


def provenance(pl: FusionPlan, seconds: float, impl=None) -> dict:
    """The provenance dictionary of a finished run."""
    stack, spec = pl.stack, pl.spec
    prov = {
        "method": spec.name,
        "params": pl.params,
        "version": __version__,
        "device": pl.device,
        "guide": pl.guide,
        "tile": pl.tile,
        "overlap": pl.overlap,
        "halo": pl.halo,
        "tiles": len(pl.tiles),
        "input": stack.name,
        "source": list(stack.source),
        "seconds": seconds,
        "mvoxel_per_s": stack.nbytes / stack.dtype.itemsize / 1e6 / max(seconds, 1e-9),
    }
    if spec.weights is not None:
        prov["weights_sha256"] = spec.weights.sha256
    if getattr(impl, "weights_sha256", None):  # the weights the instance loaded (a method may offer several)
        prov["weights_sha256"] = impl.weights_sha256
    if "registration" in stack.metadata:  # a stack aligned by register_stack
        prov["registration"] = stack.metadata["registration"]
    return prov


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
    register=None,
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
        Tile side in pixels ("auto": the method's default for this many planes, None or 0: the
        whole image at once).
    overlap : int
        Pixels each tile's output extends into its neighbours', blended with a feathered ramp
        (default: the method's ``default_overlap``; 0 for a single tile).
    device : "auto", "cpu", "cuda", "cuda:N", "mps"
    guide : "auto", "luminance", "mean" or a channel number
        What focus is measured on; one index is applied to every channel.
    workers : int
        Threads for CPU methods (default: the number of cores).
    register : None, "translation", "similarity", "affine" or a dict
        Align the planes first (see :func:`napari_edof.core.registration.register_stack`; a dict
        holds its options, e.g. ``{"mode": "similarity", "scale": False, "edges": "edge"}``); the
        report goes to ``provenance["registration"]``.

    A run that would not fit in memory is refused before anything large is allocated
    (:class:`~napari_edof.core.policy.OutOfMemory`). A GPU method that runs out of memory on a
    tile is run again with tiles half as large, down to 32 pixels.
    """
    reg_opts = parse_register(register)
    stack = as_stack(stack, axes=axes)
    check_memory(stack)
    if reg_opts is not None:
        stack, _ = register_stack(stack, **reg_opts)
    plan_kw = dict(method=method, params=params, tile=tile, overlap=overlap, device=device, guide=guide,
                   workers=workers)
    pl = plan_fusion(stack, **plan_kw)
    stack, g, tiles = pl.stack, pl.guide, pl.tiles
    Y, X = stack.yx_shape
    halo_r, ov_r = pl.halo, pl.overlap
    impl = pl.make_impl()
    two_pass = pl.is_two_pass(impl)
    nw = pl.workers

    T, Z, C = stack.n_times, stack.n_planes, stack.n_channels
    canon = stack.canonical()
    dtype = stack.dtype
    fused = np.empty((T, Y, X, C), dtype)
    index = np.empty((T, Y, X), np.float32)
    conf = np.empty((T, Y, X), np.float32)
    per_frame = len(tiles) * (2 if two_pass else 1)
    total = T * per_frame
    t_start = time.perf_counter()

    counter = [0]
    oom_tiles = []
    for t_index in range(T):
        frame = canon[t_index]
        if is_dask(frame):
            frame = frame.compute()
        frame = np.asarray(frame)
        while True:
            try:
                stats = None
                if two_pass:
                    maps = yield from _counted(run_region(pl, impl, frame, r0=0, s0=0, s1=Y, tiles=tiles,
                                                          t_index=t_index, pass1=True),
                                               counter, total, "pass 1", t_index)
                    stats = impl.reduce(maps)
                outs = {"fused": fused[t_index], "index": index[t_index], "confidence": conf[t_index]}
                yield from _counted(run_region(pl, impl, frame, r0=0, s0=0, s1=Y, tiles=tiles, t_index=t_index,
                                               stats=stats, out=outs), counter, total, "fuse", t_index)
                break
            except Exception as exc:  # a GPU out of memory: shrink the tiles and run this frame again
                if pl.spec.backend != "torch" or not is_oom(exc):
                    raise
                new = smaller_tile(pl.tile, (Y, X), pl.halo)
                if new is None:
                    hint = "use --device cpu" if pl.device != "cpu" else "free memory or use a larger machine"
                    raise OutOfMemory(f"{stack.name}: {pl.spec.name} ran out of {pl.device} memory even with "
                                      f"tiles of {pl.tile} pixels ({exc}); {hint}") from None
                free_accelerator_memory()
                oom_tiles.append(new)
                pl = plan_fusion(stack, **{**plan_kw, "tile": new})
                tiles = pl.tiles
                total = counter[0] + (T - t_index) * len(tiles) * (2 if two_pass else 1)
        del frame

    seconds = time.perf_counter() - t_start
    if "C" not in stack.axes:
        fused = fused[..., 0]
    if "T" not in stack.axes:
        fused, index, conf = fused[0], index[0], conf[0]
    prov = provenance(pl, seconds, impl)
    if oom_tiles:
        prov["out_of_memory_retries"] = oom_tiles
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


def _shift(t: Tile, dy: int) -> Tile:
    return replace(t, y0=t.y0 + dy, y1=t.y1 + dy)


def run_region(pl: FusionPlan, impl, frame: np.ndarray, *, r0: int, s0: int, s1: int, tiles, t_index: int = 0,
               stats=None, pass1: bool = False, out: dict | None = None):
    """Run ``tiles`` of one time point and blend them into the rows ``[s0, s1)`` of the image.

    ``frame`` (Z, R, X, C) holds the image's rows ``r0 .. r0 + R`` (rows outside the image already
    reflected), enough for every tile's window; the whole frame is ``r0 = 0, R = Y``. A generator:
    it yields once per tile and returns the outputs for the rows ``[s0, s1)``: the dict ``out``
    (arrays of those rows, written in place) or new arrays; with ``pass1``, the method's pass-1
    maps.
    """
    stack = pl.stack
    dtype, C = stack.dtype, stack.n_channels
    X = stack.yx_shape[1]
    halo, g, check = pl.halo, pl.guide, dtype.kind == "f"
    if pass1:
        specs = {k: ((), np.float32) for k in impl.pass1_keys}
        canvas = Canvas((s1 - s0, X), specs, pl.overlap)
    else:
        specs = {"fused": ((C,), _acc_dtype(dtype)), "index": ((), np.float32), "confidence": ((), np.float32)}
        if out is None:
            out = {"fused": np.empty((s1 - s0, X, C), dtype), "index": np.empty((s1 - s0, X), np.float32),
                   "confidence": np.empty((s1 - s0, X), np.float32)}
        canvas = Canvas((s1 - s0, X), specs, pl.overlap, out=out, cast=_cast_tile)

    def job(t_):
        planes = read_window(frame, _shift(t_, -r0).window)
        gd = make_guide(planes, g)
        if check:
            _check_finite(gd, stack, t_index)
        if pass1:
            return impl.pass1(planes, gd, halo=halo)
        res = impl.fuse_tile(planes, gd, halo=halo, stats=stats)
        res["fused"] = np.asarray(res["fused"]).reshape(res["index"].shape + (C,))
        return res

    for t_, res in _run_tiles(tiles, job, pl.workers):
        canvas.add(_shift(t_, -s0), res)
        yield
    res = canvas.result()
    if pass1 or res["fused"] is out["fused"]:
        return res
    out["fused"][...] = _to_dtype(res["fused"], dtype)  # blended overlaps: convert the accumulators once
    out["index"][...] = res["index"]
    np.clip(res["confidence"], 0, 1, out=out["confidence"])
    return out


def _counted(gen, counter: list, total: int, stage: str, t_index: int):
    """Re-yield a region's per-tile steps as :class:`Progress`; return its result."""
    try:
        while True:
            try:
                next(gen)
            except StopIteration as e:
                return e.value
            counter[0] += 1
            yield Progress(counter[0], total, stage, t_index)
    finally:
        gen.close()  # a cancelled run stops the region's tile pool now, not at garbage collection


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


def fuse(stack, *, progress: Callable[[Progress], None] | None = None, lazy: bool | None = None,
         **kwargs) -> FusionResult:
    """Fuse a focus stack: numpy in gives numpy out, dask in gives dask out.

    The synchronous form of :func:`fuse_iter` (same options), calling ``progress`` per tile. A lazy
    input (a dask array, or a Stack over one, e.g. from :func:`napari_edof.open_stack`) gives a
    lazy result instead (:func:`napari_edof.core.stream.fuse_lazy`: dask arrays, one task per
    stripe of tiles, nothing read until computed; ``result.compute()`` computes the three arrays
    together). ``lazy=False`` computes it now (in memory, with progress); ``lazy=True`` asks for
    a lazy result from numpy input too.
    """
    if lazy is None:
        lazy = is_dask(stack.data if isinstance(stack, Stack) else stack)
    if lazy:
        if progress is not None:
            raise StackError("progress is reported by eager runs: pass lazy=False, or watch the dask "
                             "computation (e.g. dask.diagnostics.ProgressBar or the distributed dashboard)")
        from .stream import fuse_lazy

        reg_opts = parse_register(kwargs.pop("register", None))
        if reg_opts is not None:  # registration reads the planes into memory; the fusion stays lazy
            stack, _ = register_stack(as_stack(stack, axes=kwargs.pop("axes", None)), **reg_opts)
        return fuse_lazy(stack, **kwargs)
    return drain(fuse_iter(stack, **kwargs), progress)


def drain(gen, on_step: Callable | None = None):
    """Run a progress generator to its end, calling ``on_step`` with each step; return its value.

    The generator is closed on the way out (an exception or Ctrl-C cancels it at once).
    """
    try:
        while True:
            try:
                step = next(gen)
            except StopIteration as stop:
                return stop.value
            if on_step is not None:
                on_step(step)
    finally:
        gen.close()
