"""The Qt-free fusion engine, in memory: plan tiles, run a method on each, blend, return a FusionResult.

``fuse_iter`` is a generator: it yields :class:`Progress` after every tile and returns the
:class:`FusionResult` (``StopIteration.value``). Closing the generator cancels the run before the
next tile. ``fuse`` drains it (optionally calling ``progress`` for each step), or builds the lazy
graph of :mod:`napari_edof.core.stream` for lazy input.

Every run path plans with :func:`napari_edof.core.plan.plan_fusion` and runs with
:func:`napari_edof.core.run.run_frames`; this one reads whole time points into memory and writes
whole-image arrays. Methods follow :class:`napari_edof.core.spec.FusionMethod`.
"""
from __future__ import annotations

from collections.abc import Callable, Generator

import numpy as np

from .plan import (  # noqa: F401 - the engine's names, as they were (plan and run are its parts)
    MAX_PLANES,
    PRECISIONS,
    FusionPlan,
    HalfGate,
    parse_tile,
    plan_fusion,
    resolve_device,
    resolve_precision,
    whole_image,
)
from .result import FusionResult, Progress
from .run import (  # noqa: F401
    _counted,
    _run_tiles,
    drain,
    make_result,
    provenance,
    retry_plan,
    run_frames,
    run_region,
)
from .spec import DEFAULT_METHOD
from .stack import Stack, is_dask


class MemoryFrames:
    """The in-memory run's reader: a whole time point, read (computed) once and kept while the
    run is on it (an out-of-memory retry reads nothing again)."""

    def __init__(self, stack: Stack, workers: int | None = None):
        from ..io.read_memory import materialise

        self.workers = workers
        if stack.n_times == 1:  # one time point: read it whole, straight into one array, in threads
            stack = materialise(stack, workers=workers)
        self.canon = stack.canonical()
        self.t, self.frame = None, None

    def open(self, pl: FusionPlan, t: int, first_pass: bool = False):
        if self.t != t:
            self.frame = None  # the previous time point's memory first
            frame = self.canon[t]
            if is_dask(frame):
                from ..io.read_memory import materialise

                frame = materialise(frame, workers=self.workers, limit=1 << 62)  # (memory checked by the plan)
            self.t, self.frame = t, np.asarray(frame)
        return self

    def read(self, r0: int, r1: int) -> np.ndarray:
        return self.frame  # (the one stripe is the whole image: rows 0 .. Y)

    def prefetch_next(self, spans) -> None:
        pass

    def close(self) -> None:
        pass


class MemorySink:
    """The in-memory run's sink: whole-image arrays (T, Y, X[, C]) the tiles are written into."""

    def __init__(self, stack: Stack):
        T, (Y, X), C = stack.n_times, stack.yx_shape, stack.n_channels
        self.fused = np.empty((T, Y, X, C), stack.dtype)
        self.index = np.empty((T, Y, X), np.float32)
        self.conf = np.empty((T, Y, X), np.float32)

    def rows(self, t: int, s0: int, s1: int) -> dict:
        return {"fused": self.fused[t, s0:s1], "index": self.index[t, s0:s1], "confidence": self.conf[t, s0:s1]}

    def put(self, t: int, s0: int, s1: int, res: dict) -> None:
        pass  # (written in place)

    def wait(self) -> None:
        pass

    def close(self) -> None:
        pass


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
    audit: bool | None = None,
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
    audit : None, True or False
        Audit the fused image against the source planes (:mod:`napari_edof.core.audit`): per pixel
        the distance from the nearest source value and a mask of values outside the sources'
        local range (``result.audit``, ``result.audit_mask``; a last "audit" progress stage).
        None (default): on for methods that synthesise values (vaeedof, fmb-fn with
        ``output="network"``), off for the others.

    A run that would not fit in memory is refused before anything large is allocated
    (:class:`~napari_edof.core.policy.OutOfMemory`). A GPU method that runs out of memory on a
    tile is run again with tiles half as large, down to 32 pixels.
    """
    registering = _check_before_registration(stack, axes, method, params, register)
    if registering:  # (tens of seconds on a large stack: a stage of its own, after the arguments were checked)
        yield Progress(0, 1, "registration")
    pl = plan_fusion(stack, method=method, params=params, axes=axes, tile=tile, overlap=overlap, device=device,
                     guide=guide, workers=workers, register=register, precision=precision, audit=audit,
                     in_memory=True)
    if registering:
        yield Progress(1, 1, "registration")
    sink = MemorySink(pl.stack)
    frames = MemoryFrames(pl.stack, pl.workers)
    run = yield from run_frames(pl, frames, sink, whole_image)
    res = make_result(run.plan, sink.fused, sink.index, sink.conf, run.seconds, run.impl)
    res.provenance.update(run.backoff)
    if run.plan.audit:
        yield from _audit_in_memory(run.plan, frames, sink, res)
    return res


def _audit_in_memory(pl: FusionPlan, frames: MemoryFrames, sink: MemorySink, res: FusionResult):
    """The audit of an in-memory run, time point by time point (a progress step each), into ``res``."""
    from .audit import audit_image, audit_summary

    T = pl.stack.n_times
    dist = np.empty(sink.index.shape, np.float32)
    mask = np.empty(sink.index.shape, bool)
    for t in range(T):
        dist[t], mask[t] = audit_image(frames.open(pl, t).frame, sink.fused[t])
        yield Progress(t + 1, T, "audit", t)
    if "T" not in pl.stack.axes:
        dist, mask = dist[0], mask[0]
    res.audit, res.audit_mask = dist, mask
    res.provenance["audit"] = audit_summary(dist, mask)


def _check_before_registration(stack, axes, method, params, register) -> bool:
    """Whether a run registers its planes first; its method, parameters and registration options
    checked (errors raised here, before any progress is shown)."""
    from . import registration
    from .spec import get_method, require_available
    from .stack import as_stack

    if registration.parse_register(register) is None:
        return False
    spec = get_method(method)[0]
    require_available(spec)
    spec.resolve(params)
    as_stack(stack, axes=axes)
    return True


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
            from .errors import StackError

            raise StackError("progress is reported by eager runs: pass lazy=False, or watch the dask "
                             "computation (e.g. dask.diagnostics.ProgressBar or the distributed dashboard)")
        from .stream import fuse_lazy

        return fuse_lazy(stack, **kwargs)  # (registration, if asked, reads the planes; the fusion stays lazy)
    return drain(fuse_iter(stack, **kwargs), progress)


__all__ = ["DEFAULT_METHOD", "FusionPlan", "MemoryFrames", "MemorySink", "drain", "fuse", "fuse_iter", "plan_fusion",
           "provenance", "run_region"]
