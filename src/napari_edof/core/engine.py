"""The Qt-free fusion engine: plan tiles, run a method on each, blend, return a FusionResult.

``fuse_iter`` is a generator: it yields :class:`Progress` after every tile and returns the
:class:`FusionResult` (``StopIteration.value``). Closing the generator cancels the run before the
next tile. ``fuse`` drains it (optionally calling ``progress`` for each step).

Methods follow :class:`napari_edof.core.spec.FusionMethod`: ``fuse_tile`` on a window of planes,
and optionally a first pass declared by ``first_pass`` (the keys of ``pass1``'s maps) with
``pass1`` and ``reduce``; the engine stitches pass 1 over every tile, calls ``reduce`` once and
hands the statistic to every ``fuse_tile``.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .._version import __version__
from .colour import make_guide, resolve_guide
from .errors import StackError
from .policy import OutOfMemory, check_memory, free_accelerator_memory, is_oom, smaller_tile
from .registration import parse_register, register_stack
from .result import FusionResult, Progress, to_stack_axes
from .scaling import value_scale
from .spec import DEFAULT_METHOD, get_method
from .stack import Stack, as_stack, is_dask
from .tiling import Canvas, Tile, plan_tiles, read_window
from .values import to_count, to_int

#: the most planes a stack may have: focus indices are int16 (and decision labels plane + 1 uint16)
MAX_PLANES = 32767


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
    precision: str = "float32"  # "float32" or "half" (then ``gate`` keeps or drops it at the first tile)
    gate: Any = None
    value_scale: float = 1.0  # extreme floats: planes are fused times this power of two (core.scaling)

    def impl_params(self) -> dict:
        """The parameters the method instance gets: those in image units scaled like the planes."""
        if self.value_scale != 1.0 and self.params.get("noise"):
            return dict(self.params, noise=float(self.params["noise"]) * self.value_scale)
        return self.params

    def make_impl(self):
        return self.cls(self.impl_params(), device=self.device)

    def is_two_pass(self, impl) -> bool:
        """The method instance ``impl`` has a first pass (``impl.first_pass``, set by parameter)."""
        return bool(impl.first_pass)


def plan_fusion(stack, *, method: str = DEFAULT_METHOD, params: dict | None = None, axes: str | None = None,
                tile: int | str | None = "auto", overlap: int | None = None, device: str | None = None,
                guide="auto", workers: int | None = None, register=None, precision: str = "auto") -> FusionPlan:
    """Check the options and plan the tiles (no pixel is read, unless ``register`` asks to align
    the planes first: the plan's stack is then the aligned one). Raises EdofError subclasses."""
    stack = as_stack(stack, axes=axes)
    if stack.n_planes > MAX_PLANES:
        raise StackError(f"{stack.name}: {stack.n_planes} planes are more than the {MAX_PLANES} napari-edof can "
                         "fuse (the focus index is 16-bit); fuse sub-stacks, or every k-th plane")
    spec, cls = get_method(method)
    reg_opts = parse_register(register)
    if reg_opts is not None:
        spec.resolve(params)  # refuse bad parameters before the (slow) registration
        stack, _ = register_stack(stack, **reg_opts)
    p = spec.resolve(params)
    dev = resolve_device(device, spec.devices, spec.backend)
    g = resolve_guide(guide, stack.n_channels, stack.rgb)
    tile = parse_tile(tile)
    if tile == "auto":
        tile = spec.tile_for(p, stack.n_planes)
    halo = int(spec.halo(p))
    mult = int(spec.tile_multiple(p))
    Y, X = stack.yx_shape
    single = not tile or tile >= max(Y, X)
    ov = (0 if single else spec.default_overlap) if overlap is None else to_int(overlap, "overlap", StackError)
    if ov < 0:
        raise StackError(f"overlap={ov} must be 0 or more")
    if workers is not None:
        workers = to_count(workers, "workers", 1, StackError)
    tiles = plan_tiles((Y, X), tile, halo=halo, overlap=ov, multiple=mult)
    prec = resolve_precision(precision, spec, dev)
    if spec.backend == "torch":
        from ..nn.accel import lanes

        nw = lanes(dev)  # CUDA: tiles in two threads, each on its own stream; elsewhere one at a time
    else:
        nw = max(1, int(workers or os.cpu_count() or 1))
    return FusionPlan(stack=stack, spec=spec, cls=cls, params=p, device=dev, guide=g,
                      tile=None if single else int(tile), tiles=tiles,
                      halo=tiles[0].halo, overlap=tiles[0].overlap, workers=nw, precision=prec,
                      gate=HalfGate(dev) if prec == "half" else None, value_scale=value_scale(stack))


def parse_tile(tile, name: str = "tile"):
    """``tile`` as the API and the CLI take it: "auto", None or 0 (no tiling), or a whole number of
    pixels of at least 16 (an int, or its text: "32"). Anything else is a StackError."""
    if tile is None or (isinstance(tile, str) and tile.strip().lower() == "auto"):
        return None if tile is None else "auto"
    try:
        t = to_int(tile, name, StackError)
    except StackError:
        raise StackError(f"{name} must be a number of pixels, 'auto' or 0, not {tile!r}") from None
    if t != 0 and t < 16:
        raise StackError(f"{name}={t} is too small: use at least 16 pixels (or 0 for no tiling)")
    return t


PRECISIONS = ("auto", "float32", "half")


def resolve_precision(precision: str | None, spec, device: str) -> str:
    """"float32" or "half" for a run of ``spec`` on ``device``.

    "auto" is half precision only on CUDA and only for methods that declare it measured safe
    (``MethodSpec.half_precision``); "half" asks for it on any device a learned method runs on
    (bfloat16 on the CPU); either way :class:`HalfGate` drops it if the first tile's index differs.
    """
    precision = "auto" if precision is None else str(precision).lower()
    if precision not in PRECISIONS:
        raise StackError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "half" and spec.backend != "torch":
        raise StackError(f"{spec.name} computes in float32 on the CPU (numpy); precision='half' is for the "
                         "learned methods")
    if precision == "auto":
        return "half" if spec.half_precision and device.startswith("cuda") else "float32"
    return precision


class HalfGate:
    """Half precision, kept only where the focus index stays identical.

    The first tile a run fuses is fused twice, in float32 and in half precision; half precision
    is kept for the run only if the tile's focus index is bitwise identical, else the run goes on
    in float32 (as it does when the method fails in half precision). A first pass (whole-image
    statistics) always runs in float32. Thread-safe: other tiles wait for the decision.
    :attr:`report` goes into the provenance.
    """

    def __init__(self, device: str):
        self.device = device
        self.state = "unchecked"  # then "half" or "float32"
        self.report: dict | None = None
        self._lock = threading.Lock()

    def __getstate__(self):  # shipped to dask workers with the plan (each decides for its tasks)
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def run(self, fn: Callable[[], dict]) -> dict:
        """``fn()`` (a method call on one tile) in the precision decided, deciding it first if needed."""
        from ..nn.accel import autocast, half_dtype

        if self.state == "unchecked":
            with self._lock:
                if self.state == "unchecked":
                    ref = fn()
                    self.report = {"half_type": str(half_dtype(self.device)).replace("torch.", "")}
                    try:
                        with autocast(self.device, True):
                            half = fn()
                    except Exception as exc:  # a method that cannot run in half precision: float32
                        if is_oom(exc):
                            raise
                        self.state = "float32"
                        self.report.update(kept=False, error=f"{type(exc).__name__}: {exc}"[:300])
                        return ref
                    differ = int(np.count_nonzero(np.asarray(ref["index"]) != np.asarray(half["index"])))
                    self.state = "float32" if differ else "half"
                    self.report.update(pixels=int(np.asarray(ref["index"]).size), differing=differ, kept=not differ)
                    return ref if differ else half
        with autocast(self.device, self.state == "half"):
            return fn()


def _precision_said(pl: FusionPlan) -> str:
    if pl.gate is None:
        return pl.precision
    if pl.gate.state == "unchecked":  # a lazy or cluster run: the tasks hold their own gates
        return "half where each task's first tile kept the float32 index (checked in the tasks)"
    return pl.gate.state


def provenance(pl: FusionPlan, seconds: float, impl=None) -> dict:
    """The provenance dictionary of a finished run."""
    stack, spec = pl.stack, pl.spec
    prov = {
        "method": spec.name,
        "params": pl.params,
        "version": __version__,
        "device": pl.device,
        "precision": _precision_said(pl),
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
    if impl is not None and impl.weights_sha256:  # the weights the instance loaded (a method may offer several)
        prov["weights_sha256"] = impl.weights_sha256
    if stack.metadata.get("reconciled"):  # the input's metadata did not match its data (see io.metadata)
        prov["input_warnings"] = list(stack.metadata["reconciled"])
    if "registration" in stack.metadata:  # a stack aligned by register_stack
        prov["registration"] = stack.metadata["registration"]
    if pl.gate is not None and pl.gate.report is not None:
        prov["half_precision_check"] = pl.gate.report
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
    precision: str = "auto",
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
    precision : "auto", "float32" or "half"
        Learned methods only. "half" runs the networks in half precision (float16 on CUDA,
        bfloat16 on the CPU) if the first tile's focus index is identical to float32's, else in
        float32 (``provenance["half_precision_check"]`` says which and why); "auto" is half
        precision on CUDA for methods measured safe in it, float32 otherwise.

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
                   workers=workers, precision=precision)
    pl = plan_fusion(stack, **plan_kw)
    stack, tiles = pl.stack, pl.tiles
    Y, X = stack.yx_shape
    impl = pl.make_impl()
    two_pass = pl.is_two_pass(impl)

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
    backoff: dict = {}
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
            except Exception as exc:  # a GPU out of memory: one tile at a time, then smaller tiles
                pl = retry_plan(pl, exc, lambda tile: plan_fusion(stack, **{**plan_kw, "tile": tile}), backoff)
                tiles = pl.tiles
                total = counter[0] + (T - t_index) * len(tiles) * (2 if two_pass else 1)
        del frame

    seconds = time.perf_counter() - t_start
    fused, index, conf = to_stack_axes(stack.axes, fused, index, conf)
    prov = provenance(pl, seconds, impl)
    prov.update(backoff)
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


def retry_plan(pl: FusionPlan, exc: BaseException, replan: Callable[[int], FusionPlan], backoff: dict) -> FusionPlan:
    """The plan to run a time point again with after ``exc``, or ``exc`` raised again.

    A torch method that ran out of accelerator memory runs one tile at a time (when it ran two),
    then with tiles half as large (``replan(tile)``), down to 32 pixels; below that it is an
    :class:`OutOfMemory` naming the device. ``backoff`` collects what was done, for the provenance
    ("lanes_after_out_of_memory", "out_of_memory_retries": the tile sides tried).
    """
    if pl.spec is None or pl.spec.backend != "torch" or not is_oom(exc):
        raise exc
    free_accelerator_memory()
    if pl.workers > 1:
        backoff["lanes_after_out_of_memory"] = 1
        return replace(pl, workers=1)
    new = smaller_tile(pl.tile, pl.stack.yx_shape, pl.halo)
    if new is None:
        hint = "use --device cpu" if pl.device != "cpu" else "free memory or use a larger machine"
        raise OutOfMemory(f"{pl.stack.name}: {pl.spec.name} ran out of {pl.device} memory even with "
                          f"tiles of {pl.tile} pixels ({exc}); {hint}") from None
    backoff.setdefault("out_of_memory_retries", []).append(new)
    return replace(replan(new), workers=1, gate=pl.gate)


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
        specs = {k: ((), np.float32) for k in impl.first_pass}
        canvas = Canvas((s1 - s0, X), specs, pl.overlap)
    else:
        specs = {"fused": ((C,), _acc_dtype(dtype)), "index": ((), np.float32), "confidence": ((), np.float32)}
        if out is None:
            out = {"fused": np.empty((s1 - s0, X, C), dtype), "index": np.empty((s1 - s0, X), np.float32),
                   "confidence": np.empty((s1 - s0, X), np.float32)}
        canvas = Canvas((s1 - s0, X), specs, pl.overlap, out=out, cast=_cast_tile)

    if str(pl.device).startswith("cuda"):
        from ..nn.accel import lane
    else:
        from contextlib import nullcontext as lane
    gate = pl.gate

    vs = pl.value_scale

    def job(t_):
        planes = read_window(frame, _shift(t_, -r0).window)
        if vs != 1.0:  # extreme floats: fused near magnitude 1, exactly (a power of two), then scaled back
            planes = planes * planes.dtype.type(vs)
        gd = make_guide(planes, g)
        if check:
            _check_finite(gd, stack, t_index)
        if pass1:  # (in float32: its statistics reach every tile, and only the index is checked)
            call = lambda: impl.pass1(planes, gd, halo=halo)  # noqa: E731
        else:
            call = lambda: impl.fuse_tile(planes, gd, halo=halo, stats=stats)  # noqa: E731
        with lane(pl.device):  # CUDA: this thread's stream
            res = call() if gate is None or pass1 else gate.run(call)
        if not pass1:
            res["fused"] = np.asarray(res["fused"]).reshape(res["index"].shape + (C,))
            if vs != 1.0:  # (in the stack's precision: a float32 result of a float64 stack may not hold 1 / vs)
                f = res["fused"].astype(np.promote_types(res["fused"].dtype, dtype), copy=False)
                res["fused"] = f * f.dtype.type(1.0 / vs)
        return res

    # blended overlaps are float sums: add the tiles in plan order, whatever thread finishes first
    for t_, res in _run_tiles(tiles, job, pl.workers, ordered=pl.overlap > 0):
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


def _run_tiles(tiles, job: Callable, workers: int, ordered: bool = False) -> Iterator:
    """Run ``job`` on every tile, in ``workers`` threads, yielding (tile, output) as they finish
    (``ordered``: in the order of ``tiles``, so that sums over the outputs do not depend on timing).

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
            if ordered:
                finished = [next(iter(pending))]  # the oldest (dicts keep insertion order)
                wait(finished)
            else:
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
