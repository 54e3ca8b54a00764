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

Both give the results of the in-memory engine: identical where tiles do not overlap (the classical
methods), and equal up to float rounding of the blend where they do (a stripe then also runs the
neighbouring row of tiles that blends into it).
"""
from __future__ import annotations

import errno
import itertools
import mmap
import os
import threading
import time
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from .engine import FusionPlan, _counted, drain, plan_fusion, provenance, retry_plan, run_region
from .errors import EdofError, ReadError
from .result import FusionResult, to_stack_axes
from .stack import is_dask
from .tiling import reflect_index, take_runs

#: default bytes of source rows read per stripe (the memory bound of a streaming run)
STRIPE_BUDGET = 256 * 2**20


@dataclass(frozen=True)
class Stripe:
    """Output rows ``[s0, s1)`` made by ``tiles``, which read the source rows ``[r0, r1)``."""

    s0: int
    s1: int
    r0: int
    r1: int
    tiles: tuple


@dataclass(frozen=True)
class _StackMeta:
    """What a region needs to know of the stack (shipped to dask workers instead of the data)."""

    dtype: np.dtype
    n_channels: int
    n_times: int
    yx_shape: tuple
    name: str


def plan_stripes(pl: FusionPlan, budget: int = STRIPE_BUDGET) -> list[Stripe]:
    """Group the plan's tile rows into stripes whose source rows fit in ``budget`` bytes."""
    st = pl.stack
    Y, X = st.yx_shape
    row_bytes = X * st.n_planes * st.n_channels * st.dtype.itemsize + X * st.n_planes * 4  # + float guide
    rows = sorted({(t.y0, t.y1) for t in pl.tiles})
    e = pl.halo + pl.overlap
    stripes = []
    i = 0
    while i < len(rows):
        j = i + 1
        while j < len(rows) and (rows[j][1] - rows[i][0] + 2 * e) * row_bytes <= budget:
            j += 1
        s0, s1 = rows[i][0], min(rows[j - 1][1], Y)
        # every tile whose output region reaches into [s0, s1) (neighbours too when tiles overlap)
        tiles = tuple(t for t in pl.tiles if t.out[0] < s1 and t.out[1] > s0)
        r0 = min(t.window[0] for t in tiles)
        r1 = max(t.window[1] for t in tiles)
        stripes.append(Stripe(s0, s1, r0, r1, tiles))
        i = j
    return stripes


def read_rows(frame, r0: int, r1: int, Y: int) -> np.ndarray:
    """Source rows ``[r0, r1)`` of a (Z, Y, X, C) frame (numpy, dask or zarr-backed), reflected
    outside ``[0, Y)``: one contiguous read, as numpy."""
    idx = reflect_index(np.arange(r0, r1), Y)
    lo, hi = int(idx.min()), int(idx.max()) + 1
    block = frame[:, lo:hi]
    block = block.compute() if is_dask(block) else np.asarray(block)
    if r0 == lo and r1 == hi:
        return block
    return take_runs(block, idx - lo, axis=1)


def _chunk_rows(frame) -> int:
    """Rows per chunk of a lazy (Z, Y, X, C) frame (dask: its first row chunk; else 1)."""
    chunks = getattr(frame, "chunks", None)
    if chunks is None:
        return 1
    c = chunks[1]
    return int(c[0]) if isinstance(c, tuple) else int(c)


class _NoDirectIO(Exception):
    """The file system refused ``O_DIRECT`` (the reader falls back to zarr's own reads)."""


def direct_io_wanted(arr) -> bool:
    """Read ``arr``'s chunk files around the page cache? ``NAPARI_EDOF_DIRECT_IO`` = 1 / 0 says
    yes / no; otherwise ("auto") yes when the array is larger than the memory available now.

    A stack larger than the memory cannot stay in the page cache: read through it, every chunk
    is copied once more by the kernel and evicts an older page (kswapd), for nothing. On the
    26 GiB benchmark stack that was 3.4 s of CPU per 4.9 GiB read against 0.6 s with
    ``O_DIRECT``, on a machine with 2 cores that the fusion needs.
    """
    want = os.environ.get("NAPARI_EDOF_DIRECT_IO", "auto").strip().lower()
    if want in ("0", "false", "no", "off") or not hasattr(os, "O_DIRECT"):
        return False
    if want in ("1", "true", "yes", "on"):
        return True
    from .policy import available_memory

    return int(getattr(arr, "nbytes", 0)) > available_memory()


class ChunkFiles:
    """Uncompressed zarr v3 chunks on a local disk, read file by file in four threads; with
    ``direct``, by ``O_DIRECT`` (around the page cache, see :func:`direct_io_wanted`).

    Only for arrays whose chunks are the raw bytes of the chunk (the single ``bytes`` codec: no
    compression, no sharding, no transpose) in a :class:`zarr.storage.LocalStore`; anything else
    gives ``None`` from :meth:`of` and is read by zarr. Reading such chunks needs no decoding, and
    zarr's per-chunk asyncio machinery held the GIL for 40 % of the samples in which any thread
    held it during a streamed fusion (py-spy): reading a 4.1 GiB stack's stripes took 4.2 s of the
    reading thread through zarr and 1.3 s here, and the fusion ran 7 % faster (198-205 against
    220-221 Mvoxel/s). A missing chunk file is the fill value, as in zarr; a chunk file of the
    wrong size is an error naming it.
    """

    #: chunk files read at a time: one synchronous read at a time leaves the disk idle while the
    #: reading thread waits for the GIL (0.3 GiB/s during a fusion against 1.1 GiB/s alone)
    THREADS = 4

    def __init__(self, folder, arr, dtype: np.dtype, chunks: tuple[int, ...], direct: bool = True):
        self.folder, self.arr, self.dtype, self.chunks = folder, arr, dtype, chunks
        self.direct = bool(direct)
        self.shape = tuple(int(n) for n in arr.shape)
        self.nbytes = int(np.prod(chunks)) * dtype.itemsize
        self.fill = arr.metadata.fill_value
        self._local = threading.local()  # a page-aligned buffer per reading thread
        self._pool = None

    @classmethod
    def of(cls, arr, direct: bool = True) -> ChunkFiles | None:
        from pathlib import Path

        try:
            from zarr.codecs import BytesCodec
            from zarr.core.chunk_grids import RegularChunkGrid
            from zarr.storage import LocalStore
        except ImportError:
            return None
        md = getattr(arr, "metadata", None)
        store = getattr(arr, "store", None)
        if (getattr(md, "zarr_format", None) != 3 or not isinstance(store, LocalStore)
                or not isinstance(md.chunk_grid, RegularChunkGrid)
                or len(md.codecs) != 1 or not isinstance(md.codecs[0], BytesCodec)):
            return None
        dtype = np.dtype(arr.dtype)
        if dtype.kind not in "biuf":
            return None
        endian = getattr(md.codecs[0].endian, "value", None)
        if dtype.itemsize > 1 and endian in ("little", "big"):
            dtype = dtype.newbyteorder("<" if endian == "little" else ">")
        folder = Path(store.root) / (arr.path or "")
        return cls(folder, arr, dtype, tuple(int(c) for c in md.chunk_grid.chunk_shape), direct)

    def _read_chunk(self, coords: tuple[int, ...]) -> np.ndarray | None:
        """The chunk at ``coords`` (a view of the reused buffer), or None where it has no file."""
        buf = getattr(self._local, "buf", None)
        if buf is None:
            size = max(4096, -(-self.nbytes // 4096) * 4096)
            buf = self._local.buf = mmap.mmap(-1, size)  # page aligned, as O_DIRECT needs
            self._local.view = np.frombuffer(buf, self.dtype, count=int(np.prod(self.chunks))).reshape(self.chunks)
        path = self.folder / self.arr.metadata.encode_chunk_key(coords)
        try:
            fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if self.direct else 0))
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno == errno.EINVAL:
                raise _NoDirectIO() from None
            raise
        try:
            got, mv = 0, memoryview(buf)
            while got < self.nbytes:
                n = os.readv(fd, [mv[got:]])
                if n == 0:
                    break
                got += n
        except OSError as e:
            if e.errno == errno.EINVAL:
                raise _NoDirectIO() from None
            raise
        finally:
            os.close(fd)
        if got != self.nbytes:
            from .errors import StackError

            raise StackError(f"{path}: the chunk file holds {got} bytes, not the {self.nbytes} of a "
                             f"{'x'.join(map(str, self.chunks))} {self.dtype.name} chunk; is it damaged?")
        return self._local.view

    def read_into(self, sel: tuple, out: np.ndarray) -> None:
        """``out[...] = arr[sel]`` for ``sel`` of ints and slices (steps of 1), chunk by chunk."""
        spans = []  # per axis: (first, stop) in array coordinates, int axes marked
        for s, n in zip(sel, self.shape):
            if isinstance(s, slice):
                a, b, _ = s.indices(n)
                spans.append((a, b, False))
            else:
                spans.append((int(s), int(s) + 1, True))
        ranges = [range(a // c, -(-b // c)) for (a, b, _), c in zip(spans, self.chunks)]

        def one(coords):  # chunks cover disjoint parts of ``out``: the threads never meet
            src, dst = [], []
            for (a, b, is_int), k, c in zip(spans, coords, self.chunks):
                lo, hi = max(a, k * c), min(b, (k + 1) * c)
                src.append(lo - k * c if is_int else slice(lo - k * c, hi - k * c))
                if not is_int:
                    dst.append(slice(lo - a, hi - a))
            chunk = self._read_chunk(coords)
            if chunk is None:
                out[tuple(dst)] = self.fill
            else:
                out[tuple(dst)] = chunk[tuple(src)]

        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.THREADS, thread_name_prefix="edof-chunk")
        futures = [self._pool.submit(one, c) for c in itertools.product(*ranges)]
        errors = [f.exception() for f in futures]  # all finished before anything else writes ``out``
        for e in errors:
            if e is not None:
                raise e

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class ZarrRows:
    """Direct reads of the rows of one time point of a zarr-backed stack into two reused buffers.

    Reading a stripe through dask builds a graph, decodes every chunk into a new array and
    concatenates them into another, freshly mapped one: on the 2 GiB benchmark stack that cost
    1.9 s of CPU against 0.5 s for zarr writing the chunks straight into a buffer that is reused
    (the kernel zeroes every fresh page: 22 % of a streaming run's samples were ``clear_page``).
    Used only while the stack's data is still exactly the dask array opened on the zarr array
    (its dask name is checked), so a cropped, registered or rechunked stack reads through dask.
    """

    def __init__(self, arr, axes: str, t: int):
        self.arr, self.axes, self.t = arr, axes, int(t)
        self.bufs: list = [None, None]
        rest = [a for a in axes if a != "T"]
        if "C" not in rest:
            rest.append("C")
        self._order = [rest.index(a) for a in "ZYXC"]
        self._add_c = "C" not in axes
        self.files = ChunkFiles.of(arr, direct=direct_io_wanted(arr))

    @classmethod
    def of(cls, stack, t: int) -> ZarrRows | None:
        entry = getattr(stack, "metadata", {}).get("zarr")
        if entry is None:
            return None
        arr, name = entry
        data = stack.data
        if not is_dask(data) or data.name != name or tuple(arr.shape) != tuple(data.shape):
            return None
        rows = cls(arr, stack.axes, t)
        rows.label = stack.source[0] if stack.source else stack.name
        return rows

    def _shape(self, rows: int) -> tuple[int, ...]:
        return tuple(rows if a == "Y" else n for a, n in zip(self.axes, self.arr.shape) if a != "T")

    def buffer(self, which: int, rows: int) -> np.ndarray:
        """Buffer ``which`` (zarr order, T dropped) with room for at least ``rows`` rows."""
        if self.bufs[which] is None or self.bufs[which].shape[self._y] < rows:
            self.bufs[which] = None
            self.bufs[which] = np.empty(self._shape(rows), self.arr.dtype)
        return self.bufs[which]

    @property
    def _y(self) -> int:
        return [a for a in self.axes if a != "T"].index("Y")

    def rows(self, buf: np.ndarray, a: int, b: int) -> np.ndarray:
        """Rows [a, b) of a zarr-order buffer (a view)."""
        return buf[(slice(None),) * self._y + (slice(a, b),)]

    def canonical(self, blk: np.ndarray) -> np.ndarray:
        """A zarr-order block seen as (Z, rows, X, C) (a view)."""
        return (blk[..., None] if self._add_c else blk).transpose(self._order)

    label = "the zarr store"

    def read_into(self, lo: int, hi: int, out: np.ndarray) -> None:
        """Rows [lo, hi) into ``out`` (zarr order, T dropped; any strides). A chunk that cannot be
        decoded is a ReadError naming the store."""
        try:
            self._read_into(lo, hi, out)
        except (EdofError, _NoDirectIO):  # (already named)
            raise
        except Exception as e:  # noqa: BLE001 - codecs raise many kinds
            raise ReadError(f"{self.label}: a chunk of the zarr store cannot be read; it may be truncated or "
                            f"corrupt ({type(e).__name__}: {e})") from None

    def _read_into(self, lo: int, hi: int, out: np.ndarray) -> None:
        sel = tuple(self.t if a == "T" else (slice(lo, hi) if a == "Y" else slice(None)) for a in self.axes)
        if self.files is not None:
            try:
                self.files.read_into(sel, out)
                return
            except _NoDirectIO:  # a file system without O_DIRECT: through the page cache from now on
                self.files.close()
                self.files = ChunkFiles.of(self.arr, direct=False)
                return self._read_into(lo, hi, out)
        try:
            from zarr.core.buffer import default_buffer_prototype

            nd = default_buffer_prototype().nd_buffer.from_numpy_array(out)
        except (ImportError, AttributeError, TypeError):  # another zarr: one copy more
            out[...] = self.arr[sel]
            return
        self.arr.get_basic_selection(sel, out=nd)



class RowReader:
    """Reads rows of a lazy (Z, Y, X, C) frame for consecutive stripes, chunk-aligned.

    Each read fetches whole chunk rows of the source (a zarr/TIFF chunk is decoded whole anyway),
    keeps what the next stripe shares with this one (the halo rows and the rest of a chunk), and
    can fetch the next stripe in a background thread while the current one is fused. Memory:
    the current and the next stripe, each widened to whole chunk rows only while that stays
    within ``max_rows`` (else the stripe's rows are read exactly). With ``direct`` (a
    :class:`ZarrRows`) the rows are read by zarr into two buffers used in turn.
    """

    def __init__(self, frame, Y: int, max_rows: int | None = None, direct: ZarrRows | None = None):
        self.frame, self.Y = frame, Y
        self.ch = max(1, _chunk_rows(frame))
        self.max_rows = max_rows  # above this, read the stripe's rows exactly (memory before speed)
        self.direct = direct
        self.c0 = self.c1 = 0
        self.block = None
        self._which = 0  # the direct buffer that holds self.block
        self._at = (0, 0)  # the rows of that buffer it occupies
        self._pool = None
        self._next = None
        self._edge = None  # the reflected rows of the top and bottom stripes (read gives a view of it)

    def _fetch(self, lo: int, hi: int) -> np.ndarray:
        b = self.frame[:, lo:hi]
        return b.compute() if is_dask(b) else np.asarray(b)

    def _span(self, r0: int, r1: int) -> tuple[int, int]:
        """The rows to hold for a stripe: its own, down to the end of its last chunk row (the next
        stripes read on from there). Stripes only move down, so rows above ``r0`` are not kept."""
        idx = reflect_index(np.arange(r0, r1), self.Y)
        lo, hi = int(idx.min()), int(idx.max()) + 1
        ahi = min(self.Y, -(-hi // self.ch) * self.ch)
        if self.max_rows is not None and ahi - lo > max(self.max_rows, hi - lo):
            return lo, hi
        return lo, ahi

    def _load(self, lo: int, hi: int):
        """A block of rows [lo, hi) reusing the cached overlap (runs in the prefetch thread)."""
        shared = self.block is not None and self.c0 <= lo < self.c1  # (not all: see _holds)
        if self.direct is not None:
            d = self.direct
            if shared:  # new rows after the current block's, in its buffer while there is room
                p0, p1 = self._at
                buf = d.bufs[self._which]
                if p1 + hi - self.c1 <= buf.shape[d._y]:
                    d.read_into(self.c1, hi, d.rows(buf, p1, p1 + hi - self.c1))
                    a = p0 + lo - self.c0
                    return lo, hi, d.canonical(d.rows(buf, a, p1 + hi - self.c1)), (self._which, a)
            # else the other buffer, from its first row: the rows kept, then the new ones
            which = 1 - self._which
            buf = d.buffer(which, max(hi - lo, self.max_rows or 0))
            k = min(hi, self.c1) - lo if shared else 0
            if k:
                d.canonical(d.rows(buf, 0, k))[...] = self.block[:, lo - self.c0:lo - self.c0 + k]
            d.read_into(lo + k, hi, d.rows(buf, k, hi - lo))
            return lo, hi, d.canonical(d.rows(buf, 0, hi - lo)), (which, 0)
        if shared:
            keep = self.block[:, lo - self.c0:self.c1 - self.c0]
            return lo, hi, np.concatenate([keep, self._fetch(self.c1, hi)], axis=1), None
        return lo, hi, self._fetch(lo, hi), None

    def _holds(self, span: tuple[int, int]) -> bool:
        return self.block is not None and self.c0 <= span[0] and span[1] <= self.c1

    def prefetch(self, r0: int, r1: int) -> None:
        """Start reading the rows of a coming stripe in the background."""
        from concurrent.futures import ThreadPoolExecutor

        span = self._span(r0, r1)
        if self._holds(span) or (self._next is not None and self._next[0] == span):
            return
        if self._next is not None:  # another span in flight: let it finish with its buffer
            self._next[1].result()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="edof-read")
        self._next = (span, self._pool.submit(self._load, *span))

    def prefetch_next(self, spans) -> None:
        """Prefetch the first of the coming stripes ``spans`` ((r0, r1) in order) that the
        current block does not hold: a stripe served from the block the reader already has
        does not leave the reading idle until the stripe after it."""
        for r0, r1 in spans:
            if not self._holds(self._span(r0, r1)):
                self.prefetch(r0, r1)
                return

    def read(self, r0: int, r1: int) -> np.ndarray:
        """Rows ``[r0, r1)`` (reflected outside the image) as numpy: a view, valid until the next
        ``read`` (the reader's buffers are reused)."""
        span = self._span(r0, r1)
        if not self._holds(span):
            pending, self._next = self._next, None
            if pending is not None and pending[0] == span:
                lo, hi, block, which = pending[1].result()
            else:
                if pending is not None:  # another span was prefetched: let it finish with its buffer
                    pending[1].result()
                lo, hi, block, which = self._load(*span)
            self.c0, self.c1, self.block = lo, hi, block
            if which is not None:  # (direct reads: the buffer and the block's first row in it)
                self._which, first = which
                self._at = (first, first + hi - lo)
        lo, hi, block = self.c0, self.c1, self.block
        idx = reflect_index(np.arange(r0, r1), self.Y)
        if r0 >= lo and r1 <= hi and r0 >= 0 and r1 <= self.Y:
            return block[:, r0 - lo:r1 - lo]
        # a stripe at the image's edge: its rows with the reflected ones, in one array reused for
        # the top and bottom stripes (a fresh one cost 0.5 s of page faults at 16 x 263 x 26624)
        shape = (block.shape[0], r1 - r0) + block.shape[2:]
        e = self._edge
        if e is None or e.dtype != block.dtype or e.shape[1] < shape[1] or (e.shape[0],) + e.shape[2:] != (
                shape[0],) + shape[2:]:
            self._edge = None
            self._edge = np.empty(shape, block.dtype)
        return take_runs(block, idx - lo, axis=1, out=self._edge[:, : r1 - r0])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.block = self._edge = None
        if self.direct is not None:
            self.direct.bufs = [None, None]
            if self.direct.files is not None:
                self.direct.files.close()


def _light(pl: FusionPlan) -> FusionPlan:
    st = pl.stack
    meta = _StackMeta(st.dtype, st.n_channels, st.n_times, tuple(st.yx_shape), st.name)
    return replace(pl, stack=meta, spec=None)


@lru_cache(maxsize=1)
def _tune_malloc() -> bool:
    """Keep glibc from unmapping the tiles' large temporaries after every use.

    dask.distributed starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also switches
    off glibc's adaptive mmap threshold: every multi-megabyte temporary of a tile is then mapped
    and unmapped again, and the page faults made a stripe 6-7x slower in a worker than in the
    main process (1.3 s against 0.2 s, measured). Setting the mmap threshold to its maximum
    (32 MiB) and a large trim threshold in this process gives the main process's speed back.
    Linux/glibc only; elsewhere nothing happens.
    """
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        ok = libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20) == 1
        return bool(libc.mallopt(M_TRIM_THRESHOLD, 2**30) == 1 and ok)
    except (OSError, AttributeError):
        return False


@lru_cache(maxsize=8)
def _impl_for(cls, params_key, device):
    """One method instance per process and configuration (a network loads its weights once)."""
    return cls(dict(params_key), device=device)


def _impl(pl: FusionPlan):
    try:
        key = tuple(sorted(pl.impl_params().items()))
        hash(key)
    except TypeError:
        return pl.make_impl()
    return _impl_for(pl.cls, key, pl.device)


def _stripe_task(block, r0, stripe: Stripe, pl: FusionPlan, t_index: int, stats=None, pass1: bool = False):
    """Fuse one stripe from its source rows (a dask task, possibly in a distributed worker)."""
    _tune_malloc()
    impl = _impl(pl)
    res = drain(run_region(pl, impl, block, r0=r0, s0=stripe.s0, s1=stripe.s1, tiles=stripe.tiles,
                            t_index=t_index, stats=stats, pass1=pass1))
    if pass1:
        return res
    return res["fused"], res["index"], res["confidence"]


def _reduce_task(pl: FusionPlan, stripes: list[Stripe], *maps):
    """Stitch the stripes' pass-1 maps and reduce them to the method's global statistic."""
    Y, X = pl.stack.yx_shape
    impl = _impl(pl)
    full = {k: np.empty((Y, X), np.float32) for k in impl.first_pass}
    for s, m in zip(stripes, maps):
        for k in full:
            full[k][s.s0:s.s1] = m[k]
    return impl.reduce(full)


def _result(pl: FusionPlan, fused, index, conf, seconds: float, impl=None) -> FusionResult:
    st = pl.stack
    fused, index, conf = to_stack_axes(st.axes, fused, index, conf)
    return FusionResult(fused=fused, index=index, confidence=conf, n_planes=st.n_planes,
                        provenance=provenance(pl, seconds, impl), pixel_size=st.pixel_size, z_step=st.z_step,
                        unit=st.unit, rgb=st.rgb)


# --------------------------------------------------------------------------------------------
# lazy: a dask graph
# --------------------------------------------------------------------------------------------
def stripe_tasks(stack, *, budget: int = STRIPE_BUDGET, **options):
    """The lazy graph's stripe tasks: ``(plan, stripes, tasks)`` with ``tasks`` a list of
    ``(t, stripe, part)``, ``part`` a dask.delayed (fused, index, confidence) of the stripe's rows.

    Options are those of :func:`napari_edof.fuse` (checked now). Each task fuses its stripe in one
    thread (``workers=1``): dask runs the stripes in parallel.
    """
    import dask
    import dask.array as da

    options.setdefault("workers", 1)
    pl = plan_fusion(stack, **options)
    st = pl.stack
    light = _light(pl)
    Y = st.yx_shape[0]
    canon = st.canonical()
    if not is_dask(canon):
        canon = da.from_array(canon, chunks=(1, -1, "auto", -1, -1))
    stripes = plan_stripes(pl, budget)
    two_pass = pl.is_two_pass(_impl(pl))  # an instance: some methods choose their passes by parameter
    task = dask.delayed(_stripe_task, pure=True, nout=3)
    tasks = []
    for t in range(st.n_times):
        frame = canon[t]

        def src(s: Stripe, frame=frame):
            idx = reflect_index(np.arange(s.r0, s.r1), Y)
            lo, hi = int(idx.min()), int(idx.max()) + 1
            block = frame[:, lo:hi]
            if s.r0 != lo or s.r1 != hi:
                block = block[:, idx - lo]
            return block

        stats = None
        if two_pass:
            maps = [dask.delayed(_stripe_task, pure=True)(src(s), s.r0, s, light, t, None, True) for s in stripes]
            stats = dask.delayed(_reduce_task, pure=True)(light, stripes, *maps)
        tasks += [(t, s, task(src(s), s.r0, s, light, t, stats)) for s in stripes]
    return pl, stripes, tasks


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
def fuse_to_store_iter(stack, out: dict, *, budget: int = STRIPE_BUDGET, **options):
    """Fuse stripe by stripe into the arrays of ``out``; a generator of :class:`Progress`.

    ``out`` maps "fused", "index" and "confidence" to arrays shaped (T, Y, X, C), (T, Y, X) and
    (T, Y, X) that accept slice assignment (zarr arrays, numpy memory maps, numpy arrays). Only two
    stripes of source rows (the one fused and the next, read meanwhile; at most ``budget`` bytes
    each, at least one row of tiles) and two stripes of outputs (one being written in a
    background thread) are in memory at a time. Returns a :class:`FusionResult` whose arrays are
    ``out``'s (T and C dropped where the input has none).
    """
    pl = plan_fusion(stack, **options)
    _tune_malloc()  # stripe-sized reads and writes: reuse freed memory instead of faulting in fresh pages
    st = pl.stack
    Y, X = st.yx_shape
    T = st.n_times
    want = {"fused": (T, Y, X, st.n_channels), "index": (T, Y, X), "confidence": (T, Y, X)}
    for k, shape in want.items():
        if k not in out or tuple(out[k].shape) != shape:
            got = tuple(out[k].shape) if k in out else "missing"
            raise ValueError(f"out[{k!r}] must have the shape {shape}, not {got}")
    stripes = plan_stripes(pl, budget)
    impl = pl.make_impl()
    two_pass = pl.is_two_pass(impl)
    canon = st.canonical()
    per_frame = sum(len(s.tiles) for s in stripes) * (2 if two_pass else 1)
    total, counter = T * per_frame, [0]
    t_start = time.perf_counter()
    writer = _Writer()
    backoff: dict = {}
    try:
        for t in range(T):
            while True:
                try:
                    yield from _stream_frame(pl, impl, canon[t], t, stripes, out, writer, budget, two_pass,
                                             counter, total)
                    break
                except Exception as exc:  # a GPU out of memory: one tile at a time, then smaller tiles
                    writer.wait()  # (a write of this time point's rows in flight: they are written again)
                    pl = retry_plan(pl, exc, lambda tile: plan_fusion(stack, **{**options, "tile": tile}), backoff)
                    stripes = plan_stripes(pl, budget)
                    per_frame = sum(len(s.tiles) for s in stripes) * (2 if two_pass else 1)
                    total = counter[0] + (T - t) * per_frame
    finally:
        writer.close()
    seconds = time.perf_counter() - t_start
    view = {k: (out[k].to_dask() if hasattr(out[k], "to_dask") else out[k]) for k in want}
    res = _result(pl, view["fused"], view["index"], view["confidence"], seconds, impl)
    res.provenance["stripes"] = len(stripes)
    res.provenance.update(backoff)
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


def _stream_frame(pl, impl, frame, t, stripes, out, writer, budget, two_pass, counter, total):
    """The stripes of time point ``t`` (``frame``, lazy (Z, Y, X, C)) into ``out``, with progress."""
    st = pl.stack
    Y, X = st.yx_shape
    stats = None
    if two_pass:
        full = {k: np.empty((Y, X), np.float32) for k in impl.first_pass}
        for s in stripes:
            block = read_rows(frame, s.r0, s.r1, Y)
            maps = yield from _counted(run_region(pl, impl, block, r0=s.r0, s0=s.s0, s1=s.s1, tiles=s.tiles,
                                                  t_index=t, pass1=True), counter, total, "pass 1", t)
            for k in full:
                full[k][s.s0:s.s1] = maps[k]
            del block
        stats = impl.reduce(full)
        del full
    row_bytes = X * st.n_planes * st.n_channels * st.dtype.itemsize
    reader = RowReader(frame, Y, max_rows=max(1, budget // row_bytes), direct=ZarrRows.of(st, t))
    try:
        for i, s in enumerate(stripes):
            block = reader.read(s.r0, s.r1)
            # read the next rows the reader does not hold while this stripe is fused
            reader.prefetch_next((n.r0, n.r1) for n in stripes[i + 1:])
            res = yield from _counted(run_region(pl, impl, block, r0=s.r0, s0=s.s0, s1=s.s1, tiles=s.tiles,
                                                 t_index=t, stats=stats), counter, total, "fuse", t)
            writer.put(_write_rows, out, t, s.s0, s.s1, res)  # while the next stripe is fused
            del block, res
        writer.wait()
    finally:
        reader.close()


__all__ = ["Stripe", "fuse_lazy", "fuse_to_store_iter", "plan_stripes", "read_rows", "stripe_tasks",
           "STRIPE_BUDGET"]
