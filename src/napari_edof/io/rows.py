"""Reading the rows of a focus stack for streamed fusion, and tuning memory for it.

The streaming and lazy runs (:mod:`napari_edof.core.stream`) read one stripe of source rows at a
time. Reading is I/O, so it lives here:

* :func:`read_rows`: rows of a (Z, Y, X, C) frame (numpy, dask or zarr-backed), reflected at the
  image border as the engine's tiles are;
* :class:`RowReader`: consecutive stripes, chunk-aligned, the next one prefetched in a thread;
* :class:`ZarrRows` and :class:`ChunkFiles`: a zarr-backed stack's rows read by zarr into reused
  buffers, or its uncompressed chunk files read directly (``O_DIRECT`` around the page cache for
  stacks larger than the memory, see :func:`direct_io_wanted`);
* :func:`tune_malloc`: glibc's allocator kept from unmapping the tiles' large temporaries.
"""
from __future__ import annotations

import errno
import itertools
import mmap
import os
import threading
from functools import lru_cache

import numpy as np

from ..core.errors import EdofError, ReadError
from ..core.stack import is_dask
from ..core.tiling import reflect_index, take_runs


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
    from ..core.policy import available_memory

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
            from ..core.errors import StackError

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


@lru_cache(maxsize=1)
def tune_malloc() -> bool:
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


__all__ = ["ChunkFiles", "RowReader", "ZarrRows", "direct_io_wanted", "read_rows", "tune_malloc"]
