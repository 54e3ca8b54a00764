"""Running a plan: the one run function, and the parts of it the lazy graph schedules.

:func:`run_frames` runs a :class:`~napari_edof.core.plan.FusionPlan` time point by time point:
the method's first pass over every stripe of tiles and its ``reduce`` (when the method declares
one), then the fusion of every stripe; progress after every tile, cancellation by closing the
generator, the out-of-memory back-off (one tile at a time, then smaller tiles). The run paths
differ only in what they give it:

* a *reader* (``reader.open(plan, t) -> source``, ``source.read(r0, r1)`` the rows a stripe needs,
  ``source.prefetch_next(spans)``, ``source.close()``): the whole time point in memory
  (:mod:`napari_edof.core.engine`), or stripes of rows read from a lazy source
  (:class:`napari_edof.io.rows.RowReader`, :mod:`napari_edof.core.stream`);
* a *sink* (``sink.rows(t, s0, s1)`` arrays to write a stripe's outputs into, or None;
  ``sink.put(t, s0, s1, outputs)``, ``sink.wait()``, ``sink.close()``): whole-image arrays in
  memory, or arrays on disk written in a background thread (zarr, then tiled TIFF);
* the stripes: the whole image as one stripe, or stripes within a memory budget;
* a *schedule*: when and where a stripe runs. :data:`HERE` (the default) runs it now, in this
  process, yielding progress per tile; the lazy graph's schedule
  (:class:`napari_edof.core.stream.DaskTasks`) makes each stripe a dask task and the first pass's
  reduce a task over their maps, so that ``run_frames`` with it builds the graph (one task per
  stripe and time point) that any dask scheduler, a cluster's included, runs later.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace

import numpy as np

from .._version import __version__
from .colour import make_guide
from .errors import StackError
from .plan import FusionPlan, Stripe, _precision_said
from .policy import OutOfMemory, free_accelerator_memory, is_oom, smaller_tile
from .result import FusionResult, Progress, to_stack_axes
from .stack import Stack
from .tiling import Canvas, Tile, read_window


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
    if impl is not None and getattr(impl, "first_pass", ()):
        prov["passes"] = 2  # a first pass over every tile, then the fusion: what progress counts
    if spec.weights is not None:
        prov["weights_sha256"] = spec.weights.sha256
    if impl is not None and impl.weights_sha256:  # the weights the instance loaded (a method may offer several)
        prov["weights_sha256"] = impl.weights_sha256
    if getattr(impl, "run_note", None):  # (focus-fuse: the numpy path while its kernels are built)
        prov["method_note"] = impl.run_note
    if stack.metadata.get("reconciled"):  # the input's metadata did not match its data (see io.metadata)
        prov["input_warnings"] = list(stack.metadata["reconciled"])
    chans = stack.metadata.get("channels")  # names from the file (io/metadata.py: tiff_channels)
    if (isinstance(chans, list) and "C" in stack.axes and not stack.rgb and len(chans) == stack.n_channels
            and any(c.get("name") for c in chans)):
        prov["channels"] = [c.get("name") or f"c{i}" for i, c in enumerate(chans)]
    if "registration" in stack.metadata:  # a stack aligned by register_stack
        prov["registration"] = stack.metadata["registration"]
    if pl.gate is not None and pl.gate.report is not None:
        prov["half_precision_check"] = pl.gate.report
    return prov


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
    raw_guide = bool(getattr(pl.spec, "integer_guide", False)) and vs == 1.0  # (scaled planes are floats)

    def job(t_):
        planes = read_window(frame, _shift(t_, -r0).window)
        if vs != 1.0:  # extreme floats: fused near magnitude 1, exactly (a power of two), then scaled back
            planes = planes * planes.dtype.type(vs)
        gd = make_guide(planes, g, integers=raw_guide)
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


def run_stripe(pl: FusionPlan, impl, block: np.ndarray, stripe: Stripe, t_index: int, *, stats=None,
               pass1: bool = False, out: dict | None = None):
    """:func:`run_region` over one stripe, whose source rows ``[stripe.r0, stripe.r1)`` are ``block``
    (a generator: it yields per tile, and returns the stripe's outputs or pass-1 maps)."""
    return run_region(pl, impl, block, r0=stripe.r0, s0=stripe.s0, s1=stripe.s1, tiles=stripe.tiles,
                      t_index=t_index, stats=stats, pass1=pass1, out=out)


class _FirstPassMaps:
    """The first pass's maps of every stripe of a time point, stitched over the whole image."""

    def __init__(self, impl, stripes: list[Stripe], yx_shape: tuple[int, int]):
        self.impl, self.stripes, self.shape = impl, stripes, tuple(yx_shape)
        self.full = None

    def add(self, stripe: Stripe, maps: dict) -> None:
        if len(self.stripes) == 1:  # the whole image at once: its maps are the image's
            self.full = maps
            return
        if self.full is None:
            self.full = {k: np.empty(self.shape, np.float32) for k in self.impl.first_pass}
        for k in self.full:
            self.full[k][stripe.s0:stripe.s1] = maps[k]

    def reduce(self):
        return self.impl.reduce(self.full)


def stitch_first_pass(impl, stripes: list[Stripe], maps: list[dict], yx_shape: tuple[int, int]):
    """The method's statistic from the pass-1 maps of every stripe (``reduce`` of the stitched maps)."""
    acc = _FirstPassMaps(impl, stripes, yx_shape)
    for s, m in zip(stripes, maps):
        acc.add(s, m)
    return acc.reduce()


class InProcess:
    """The schedule of the eager runs (in memory, streamed): each stripe runs now, in this
    process (its tiles in the plan's threads), yielding once per tile."""

    def make_impl(self, pl: FusionPlan):
        return pl.make_impl()

    def first_pass_maps(self, pl: FusionPlan, impl, stripes: list[Stripe]) -> _FirstPassMaps:
        """What collects the stripes' pass-1 maps (``add(stripe, maps)``) and reduces them."""
        return _FirstPassMaps(impl, stripes, pl.stack.yx_shape)

    def stripe(self, pl: FusionPlan, impl, block, stripe: Stripe, t: int, *, stats=None, pass1: bool = False,
               out: dict | None = None):
        """One stripe (a generator: per tile; returns its outputs, or its pass-1 maps)."""
        return run_stripe(pl, impl, block, stripe, t, stats=stats, pass1=pass1, out=out)


HERE = InProcess()


def _run_frame(pl: FusionPlan, impl, t: int, stripes: list[Stripe], reader, sink, counter: list, total: int,
               schedule=HERE):
    """One time point: the first pass (if any) and the reduce, then every stripe into the sink."""
    stats = None
    if impl.first_pass:
        acc = schedule.first_pass_maps(pl, impl, stripes)
        src = reader.open(pl, t, first_pass=True)
        try:
            for i, s in enumerate(stripes):
                block = src.read(s.r0, s.r1)
                src.prefetch_next((n.r0, n.r1) for n in stripes[i + 1:])
                maps = yield from _counted(schedule.stripe(pl, impl, block, s, t, pass1=True), counter, total,
                                           "pass 1", t)
                acc.add(s, maps)
                del block, maps
        finally:
            src.close()
        stats = acc.reduce()
        del acc
    src = reader.open(pl, t)
    try:
        for i, s in enumerate(stripes):
            block = src.read(s.r0, s.r1)
            # read the next rows the reader does not hold while this stripe is fused
            src.prefetch_next((n.r0, n.r1) for n in stripes[i + 1:])
            res = yield from _counted(schedule.stripe(pl, impl, block, s, t, stats=stats, out=sink.rows(t, s.s0, s.s1)),
                                      counter, total, "fuse", t)
            sink.put(t, s.s0, s.s1, res)  # (streamed: written while the next stripe is fused)
            del block, res
        sink.wait()
    finally:
        src.close()


@dataclass
class Run:
    """What :func:`run_frames` returns: the plan it ended with (after any back-off), the method
    instance, the stripes of the last time point, the back-off done, and the wall time."""

    plan: FusionPlan
    impl: object
    stripes: list
    backoff: dict
    seconds: float


def run_frames(pl: FusionPlan, reader, sink, stripes: Callable[[FusionPlan], list[Stripe]], *, schedule=HERE):
    """Run ``pl`` over every time point: read by ``reader``, written into ``sink``, in the stripes
    ``stripes(plan)`` gives, each run by ``schedule`` (see the module's docstring). A generator of
    :class:`Progress` (per tile; closing it cancels the run before the next tile); returns a
    :class:`Run`. Every run path goes through here: in memory, streamed, lazy and on a cluster.

    A torch method that runs out of accelerator memory runs the time point again (one tile at a
    time, then tiles half as large: :func:`retry_plan`); the plan is re-made from its own, already
    registered stack.
    """
    from ..io.rows import tune_malloc

    tune_malloc()  # tiles' large temporaries reused, not mapped and faulted in again for every tile
    impl = schedule.make_impl(pl)
    t_start = time.perf_counter()
    passes = 2 if impl.first_pass else 1
    T = pl.stack.n_times
    parts = stripes(pl)
    counter = [0]
    total = T * sum(len(s.tiles) for s in parts) * passes
    backoff: dict = {}
    try:
        for t in range(T):
            while True:
                try:
                    yield from _run_frame(pl, impl, t, parts, reader, sink, counter, total, schedule)
                    break
                except Exception as exc:  # a GPU out of memory: one tile at a time, then smaller tiles
                    sink.wait()  # (a write of this time point's rows in flight: they are written again)
                    pl = retry_plan(pl, exc, pl.replan, backoff)
                    parts = stripes(pl)
                    total = counter[0] + (T - t) * sum(len(s.tiles) for s in parts) * passes
    finally:
        sink.close()
    return Run(plan=pl, impl=impl, stripes=parts, backoff=backoff, seconds=time.perf_counter() - t_start)


def make_result(pl: FusionPlan, fused, index, conf, seconds: float, impl=None) -> FusionResult:
    """The :class:`FusionResult` of a run: outputs in the engine's (T, Y, X[, C]) order put in the
    stack's own axes, with the provenance."""
    st = pl.stack
    fused, index, conf = to_stack_axes(st.axes, fused, index, conf)
    return FusionResult(fused=fused, index=index, confidence=conf, n_planes=st.n_planes,
                        provenance=provenance(pl, seconds, impl), pixel_size=st.pixel_size, z_step=st.z_step,
                        unit=st.unit, rgb=st.rgb)


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


__all__ = ["HERE", "InProcess", "Run", "drain", "make_result", "provenance", "retry_plan", "run_frames", "run_region",
           "run_stripe", "stitch_first_pass"]
