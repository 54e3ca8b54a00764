"""Out-of-core and lazy fusion: the image in stripes of tile rows.

The engine's in-memory path (:func:`napari_edof.core.engine.fuse_iter`) reads a whole time point
and keeps whole-image outputs. Here the same tiles (same plan, same halos, same blending) are
grouped into *stripes* of consecutive tile rows, and only one stripe's source rows (its tiles'
windows, reflected at the image border exactly as the engine does) are read at a time:

* :func:`fuse_to_store_iter` streams a stack of any size from a lazy source (dask, zarr, a TIFF
  opened lazily) into output arrays on disk (zarr), stripe by stripe; memory is bounded by the
  stripe budget, not by the stack size. It yields progress per tile.
* :func:`fuse_lazy` builds the same computation as a dask graph, one task per stripe (and per
  time point), so ``fuse(dask_array)`` returns lazy dask arrays that any dask scheduler runs,
  ``dask.distributed`` included.

Both plan with :func:`napari_edof.core.plan.plan_fusion` (registration included, once) and run
:func:`~napari_edof.core.run.run_frames`: the streamed run with a stripe reader
(:class:`napari_edof.io.rows.RowReader`) and a sink writing into the output arrays; the lazy graph
with the :class:`DaskTasks` schedule, a reader of dask slices and a sink collecting the tasks.
Reading rows (zarr chunks, ``O_DIRECT``) and the allocator tuning are in :mod:`napari_edof.io.rows`.

Both give the results of the in-memory engine: identical where tiles do not overlap (the classical
methods), and equal up to float rounding of the blend where they do (a stripe then also runs the
neighbouring row of tiles that blends into it).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from ..io.rows import (  # noqa: F401 - re-exported: these lived here
    ChunkFiles,
    RowReader,
    ZarrRows,
    _chunk_rows,
    _NoDirectIO,
    direct_io_wanted,
    read_rows,
    tune_malloc,
)
from .plan import STRIPE_BUDGET, FusionPlan, Stripe, plan_fusion, plan_stripes
from .result import FusionResult
from .run import drain, make_result, run_frames, run_stripe, stitch_first_pass
from .stack import is_dask
from .tiling import reflect_index

_tune_malloc = tune_malloc  # (the older name)


@dataclass(frozen=True)
class _StackMeta:
    """What a region needs to know of the stack (shipped to dask workers instead of the data)."""

    dtype: np.dtype
    n_channels: int
    n_times: int
    yx_shape: tuple
    name: str


def _light(pl: FusionPlan) -> FusionPlan:
    st = pl.stack
    meta = _StackMeta(st.dtype, st.n_channels, st.n_times, tuple(st.yx_shape), st.name)
    return replace(pl, stack=meta, spec=None)


@lru_cache(maxsize=8)
def _impl_for(cls, params_key, device, instance_key=None):
    """One method instance per process and configuration (a network loads its weights once), and
    per ``spec.instance_key()`` as the graph was built (focus-fuse: a computation after its kernels
    are built gets a new instance, one that takes them)."""
    return cls(dict(params_key), device=device)


def _impl(pl: FusionPlan):
    try:
        key = tuple(sorted(pl.impl_params().items()))
        hash((key, pl.instance_key))
    except TypeError:
        return pl.make_impl()
    return _impl_for(pl.cls, key, pl.device, pl.instance_key)


def _stripe_task(block, r0, stripe: Stripe, pl: FusionPlan, t_index: int, stats=None, pass1: bool = False):
    """Fuse one stripe from its source rows (a dask task, possibly in a distributed worker)."""
    tune_malloc()
    res = drain(run_stripe(pl, _impl(pl), block, stripe, t_index, stats=stats, pass1=pass1))
    if pass1:
        return res
    return res["fused"], res["index"], res["confidence"]


def _reduce_task(pl: FusionPlan, stripes: list[Stripe], *maps):
    """Stitch the stripes' pass-1 maps and reduce them to the method's global statistic."""
    return stitch_first_pass(_impl(pl), stripes, list(maps), pl.stack.yx_shape)


_result = make_result  # (the older name)


# --------------------------------------------------------------------------------------------
# lazy: a dask graph
# --------------------------------------------------------------------------------------------
class DaskTasks:
    """The lazy graph's schedule for :func:`~napari_edof.core.run.run_frames`: each stripe becomes
    a dask task (run later by any dask scheduler, in a worker process on a cluster) that runs the
    stripe's tiles in one thread; the first pass's stitching and ``reduce`` become one task over
    the stripes' maps. Nothing is computed while ``run_frames`` runs with it: it builds the graph."""

    def __init__(self, pl: FusionPlan):
        self.light = _light(pl)  # (what the tasks ship: the plan without the stack's data)

    def make_impl(self, pl: FusionPlan):
        return _impl(pl)  # (an instance: some methods choose their passes by parameter)

    def first_pass_maps(self, pl: FusionPlan, impl, stripes: list[Stripe]) -> _TaskMaps:
        return _TaskMaps(self.light, stripes)

    def stripe(self, pl: FusionPlan, impl, block, stripe: Stripe, t: int, *, stats=None, pass1: bool = False,
               out=None):
        """The stripe's task (a generator, as the in-process schedule's, that yields nothing)."""
        import dask

        if pass1:
            return dask.delayed(_stripe_task, pure=True)(block, stripe.r0, stripe, self.light, t, None, True)
        return dask.delayed(_stripe_task, pure=True, nout=3)(block, stripe.r0, stripe, self.light, t, stats)
        yield  # pragma: no cover


class _TaskMaps:
    """The lazy first pass: the stripes' delayed maps, reduced by one task."""

    def __init__(self, light: FusionPlan, stripes: list[Stripe]):
        self.light, self.stripes, self.maps = light, stripes, []

    def add(self, stripe: Stripe, maps) -> None:
        self.maps.append(maps)

    def reduce(self):
        import dask

        return dask.delayed(_reduce_task, pure=True)(self.light, self.stripes, *self.maps)


class DaskRows:
    """The lazy graph's reader: a stripe's source rows as a slice of the stack's dask array
    (reflected outside the image), read when the task runs."""

    def __init__(self, canon, Y: int):
        self.canon, self.Y = canon, Y

    def open(self, pl: FusionPlan, t: int, first_pass: bool = False) -> _DaskFrame:
        return _DaskFrame(self.canon[t], self.Y)


class _DaskFrame:
    def __init__(self, frame, Y: int):
        self.frame, self.Y = frame, Y

    def read(self, r0: int, r1: int):
        idx = reflect_index(np.arange(r0, r1), self.Y)
        lo, hi = int(idx.min()), int(idx.max()) + 1
        block = self.frame[:, lo:hi]
        if r0 != lo or r1 != hi:
            block = block[:, idx - lo]
        return block

    def prefetch_next(self, spans) -> None:
        pass

    def close(self) -> None:
        pass


class TaskSink:
    """The lazy graph's sink: the tasks of every stripe and time point, ``(t, s0, s1, part)``
    with ``part`` a delayed (fused, index, confidence) of the rows ``[s0, s1)``."""

    def __init__(self):
        self.tasks = []

    def rows(self, t: int, s0: int, s1: int) -> None:
        return None

    def put(self, t: int, s0: int, s1: int, part) -> None:
        self.tasks.append((t, s0, s1, part))

    def wait(self) -> None:
        pass

    def close(self) -> None:
        pass


def stripe_tasks(stack, *, budget: int = STRIPE_BUDGET, **options):
    """The lazy graph's stripe tasks: ``(plan, stripes, tasks)`` with ``tasks`` a list of
    ``(t, stripe, part)``, ``part`` a dask.delayed (fused, index, confidence) of the stripe's rows.

    Options are those of :func:`napari_edof.fuse` (checked now). The graph is built by
    :func:`~napari_edof.core.run.run_frames` with the :class:`DaskTasks` schedule. Each task
    fuses its stripe in one thread (``workers=1``): dask runs the stripes in parallel.
    """
    import dask.array as da

    options.setdefault("workers", 1)
    pl = plan_fusion(stack, **options)
    if pl.spec.instance_key is not None:
        pl = replace(pl, instance_key=pl.spec.instance_key())
    st = pl.stack
    canon = st.canonical()
    if not is_dask(canon):
        canon = da.from_array(canon, chunks=(1, -1, "auto", -1, -1))
    sink = TaskSink()
    run = drain(run_frames(pl, DaskRows(canon, st.yx_shape[0]), sink, lambda p: plan_stripes(p, budget),
                           schedule=DaskTasks(pl)))
    by_rows = {(s.s0, s.s1): s for s in run.stripes}
    return run.plan, run.stripes, [(t, by_rows[s0, s1], part) for t, s0, s1, part in sink.tasks]


def fuse_lazy(stack, *, budget: int = STRIPE_BUDGET, **options) -> FusionResult:
    """Fuse lazily: a :class:`FusionResult` of dask arrays, one task per stripe and time point.

    Options are those of :func:`napari_edof.fuse` (checked now, before any pixel is read). Nothing
    runs until the arrays are computed or stored; compute them together (``dask.compute(r.fused,
    r.index, r.confidence)`` or :meth:`FusionResult.compute`) so that each stripe runs once. Each
    task fuses its stripe with the method's tiles in one thread (``workers=1``): dask runs the
    stripes in parallel.
    """
    import dask.array as da

    pl, stripes, tasks = stripe_tasks(stack, budget=budget, **options)
    st = pl.stack
    X, C = st.yx_shape[1], st.n_channels
    frames = {k: [[] for _ in range(st.n_times)] for k in ("fused", "index", "confidence")}
    for t, s, p in tasks:
        rows = s.s1 - s.s0
        frames["fused"][t].append(da.from_delayed(p[0], (rows, X, C), st.dtype))
        frames["index"][t].append(da.from_delayed(p[1], (rows, X), np.float32))
        frames["confidence"][t].append(da.from_delayed(p[2], (rows, X), np.float32))
    fused, index, conf = (da.stack([da.concatenate(f, axis=0) for f in frames[k]])
                          for k in ("fused", "index", "confidence"))
    res = _result(pl, fused, index, conf, float("nan"), _impl(pl))
    res.provenance["lazy"] = True
    res.provenance["stripes"] = len(stripes)
    if pl.audit:  # one more task per stripe: its fused rows against the source rows (plus one of halo)
        from .audit import AUDIT_RADIUS, lazy_audit

        canon = st.canonical()
        if not is_dask(canon):
            canon = da.from_array(canon, chunks=(1, -1, "auto", -1, -1))
        spans = [[] for _ in range(st.n_times)]
        for t, s, p in tasks:
            spans[t].append((s.s0, s.s1, p[0]))
        d, m = lazy_audit(canon, fused, spans)
        res.audit, res.audit_mask = da.stack(d), da.stack(m)
        if "T" not in st.axes:
            res.audit, res.audit_mask = res.audit[0], res.audit_mask[0]
        res.provenance["audit"] = {"radius": AUDIT_RADIUS}
    return res


def _store_task(part, out: dict, t: int, s0: int, s1: int) -> int:
    """Write one stripe's (fused, index, confidence) into ``out`` (a dask task: workers write
    their own stripes; the output chunks hold whole stripes, so no two tasks share a chunk)."""
    f, i, c = part
    _write_rows(out, t, s0, s1, {"fused": f, "index": i, "confidence": c})
    return s1 - s0


# --------------------------------------------------------------------------------------------
# streaming: stripe by stripe into arrays on disk
# --------------------------------------------------------------------------------------------
class StripeRows:
    """The streamed run's reader: the rows of each stripe of a time point, from a lazy source,
    through a :class:`~napari_edof.io.rows.RowReader` (chunk-aligned, the next stripe prefetched;
    direct zarr reads while the stack is still the zarr store it was opened on)."""

    def __init__(self, budget: int):
        self.budget = budget

    def open(self, pl: FusionPlan, t: int, first_pass: bool = False) -> RowReader:
        st = pl.stack
        Y, X = st.yx_shape
        frame = st.canonical()[t]
        if first_pass:  # read once, in order: no buffers kept for the fusion's second reading
            return _PlainRows(frame, Y)
        row_bytes = X * st.n_planes * st.n_channels * st.dtype.itemsize
        return RowReader(frame, Y, max_rows=max(1, self.budget // row_bytes), direct=ZarrRows.of(st, t))


class _PlainRows:
    """Stripe rows read one at a time (:func:`~napari_edof.io.rows.read_rows`), for the first pass."""

    def __init__(self, frame, Y: int):
        self.frame, self.Y = frame, Y

    def read(self, r0: int, r1: int) -> np.ndarray:
        return read_rows(self.frame, r0, r1, self.Y)

    def prefetch_next(self, spans) -> None:
        pass

    def close(self) -> None:
        pass


class StoreSink:
    """The streamed run's sink: each stripe's outputs written into ``out`` (arrays (T, Y, X[, C])
    that take slice assignment) in a background thread while the next stripe is fused."""

    def __init__(self, out: dict):
        self.out = out
        self.writer = _Writer()

    def rows(self, t: int, s0: int, s1: int) -> None:
        return None  # (new arrays per stripe: one is written while the next is fused)

    def put(self, t: int, s0: int, s1: int, res: dict) -> None:
        self.writer.put(_write_rows, self.out, t, s0, s1, res)

    def wait(self) -> None:
        self.writer.wait()

    def close(self) -> None:
        self.writer.close()


def check_outputs(pl: FusionPlan, out: dict) -> None:
    """``out`` has the arrays a run of ``pl`` writes, in their shapes (a ValueError otherwise)."""
    st = pl.stack
    T, (Y, X) = st.n_times, st.yx_shape
    want = {"fused": (T, Y, X, st.n_channels), "index": (T, Y, X), "confidence": (T, Y, X)}
    for k, shape in want.items():
        if k not in out or tuple(out[k].shape) != shape:
            got = tuple(out[k].shape) if k in out else "missing"
            raise ValueError(f"out[{k!r}] must have the shape {shape}, not {got}")


def fuse_to_store_iter(stack, out: dict, *, budget: int = STRIPE_BUDGET, **options):
    """Fuse stripe by stripe into the arrays of ``out``; a generator of :class:`Progress`.

    ``out`` maps "fused", "index" and "confidence" to arrays shaped (T, Y, X, C), (T, Y, X) and
    (T, Y, X) that accept slice assignment (zarr arrays, numpy memory maps, numpy arrays). Only two
    stripes of source rows (the one fused and the next, read meanwhile; at most ``budget`` bytes
    each, at least one row of tiles) and two stripes of outputs (one being written in a
    background thread) are in memory at a time. Returns a :class:`FusionResult` whose arrays are
    ``out``'s (T and C dropped where the input has none).
    """
    return (yield from store_plan_iter(plan_fusion(stack, **options), out, budget=budget))


def store_plan_iter(pl: FusionPlan, out: dict, *, budget: int = STRIPE_BUDGET):
    """:func:`fuse_to_store_iter` of a plan made already (its stack registered, if asked)."""
    tune_malloc()  # stripe-sized reads and writes: reuse freed memory instead of faulting in fresh pages
    check_outputs(pl, out)
    run = yield from run_frames(pl, StripeRows(budget), StoreSink(out), lambda p: plan_stripes(p, budget))
    view = {k: (out[k].to_dask() if hasattr(out[k], "to_dask") else out[k]) for k in ("fused", "index", "confidence")}
    res = make_result(run.plan, view["fused"], view["index"], view["confidence"], run.seconds, run.impl)
    res.provenance["stripes"] = len(run.stripes)
    res.provenance.update(run.backoff)
    return res


def _write_rows(out: dict, t: int, s0: int, s1: int, res: dict) -> None:
    out["fused"][t, s0:s1] = res["fused"]
    out["index"][t, s0:s1] = res["index"]
    out["confidence"][t, s0:s1] = res["confidence"]


class _Writer:
    """Writes one stripe's outputs in a background thread while the next stripe is fused.

    At most one write is in flight (one stripe of outputs more in memory); its error, if any,
    is raised at the next :meth:`put` or :meth:`wait`. :meth:`close` lets a running write finish
    (a cancelled run then removes the partial outputs).
    """

    def __init__(self):
        self._pool = None
        self._pending = None

    def put(self, fn, *args) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.wait()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="edof-write")
        self._pending = self._pool.submit(fn, *args)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._pending = None


__all__ = ["STRIPE_BUDGET", "DaskRows", "DaskTasks", "Stripe", "TaskSink", "fuse_lazy", "fuse_to_store_iter",
           "plan_stripes", "read_rows", "store_plan_iter", "stripe_tasks"]
