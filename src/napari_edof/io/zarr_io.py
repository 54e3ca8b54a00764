"""OME-Zarr (zarr v3) input and streamed output.

Input: an OME-Zarr image (NGFF 0.5 ``"ome"`` attributes on zarr v3, or 0.4 ``"multiscales"`` on
zarr v2) opens lazily as a :class:`Stack` with axes, pixel size and z-step from its metadata; a
plain zarr array opens with ``axes=`` (or guessed axes).

Output: :func:`create_outputs` makes the three result images of a run (``fused.ome.zarr``,
``focus_index.ome.zarr``, ``confidence.ome.zarr``) as OME-Zarr 0.5 images in a hidden partial
folder, chunked by stripes of rows so that a streaming run writes whole chunks;
:meth:`ZarrOutputs.commit` moves them into place once the run has finished (an interrupted run
leaves the previous results untouched and no partial image behind).
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import EdofError, ReadError, StackError
from ..core.interrupts import critical
from ..core.result import to_stack_axes
from ..core.stack import Stack, guess_axes
from ._common import is_zarr
from ._common import report_reconciled as _report

_LETTER = {"t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X"}
_UNIT_NAMES = {"micrometer": "µm", "nanometer": "nm", "millimeter": "mm", "µm": "µm", "um": "µm"}
_NGFF_UNIT = {"µm": "micrometer", "um": "micrometer", "nm": "nanometer", "mm": "millimeter"}


def _multiscales(attrs: dict, label: str = "the store"):
    """The first multiscales entry of OME attributes (0.5 ``"ome"`` or 0.4), or None; metadata of
    the wrong shape is a ReadError saying what is wrong."""
    ome = attrs.get("ome")
    ms = ome.get("multiscales") if isinstance(ome, dict) and ome.get("multiscales") else attrs.get("multiscales")
    if not ms:
        return None
    if not isinstance(ms, list) or not isinstance(ms[0], dict):
        raise ReadError(f"{label}: the OME metadata is malformed: 'multiscales' must be a list of objects, "
                        f"not {type(ms).__name__ if not isinstance(ms, list) else 'a list of ' + type(ms[0]).__name__}")
    return ms[0]


def _ome_image(ms: dict, label: str):
    """(dataset path, axis names or None, units, scale or None) of a multiscales entry, each field
    checked: a missing ``datasets``, an axis without a name, a non-numeric scale are ReadErrors."""
    bad = f"{label}: the OME metadata is malformed:"
    datasets = ms.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise ReadError(f"{bad} 'multiscales' has no 'datasets' list naming the image's arrays")
    ds = datasets[0]
    if not isinstance(ds, dict) or not isinstance(ds.get("path"), str):
        raise ReadError(f"{bad} its first dataset has no 'path'")
    names, units = None, {}
    axes = ms.get("axes")
    if axes is not None:
        if not isinstance(axes, list):
            raise ReadError(f"{bad} 'axes' must be a list, not {axes!r}")
        names = []
        for k, a in enumerate(axes):
            n = a.get("name") if isinstance(a, dict) else a
            if not isinstance(n, str) or not n:
                raise ReadError(f"{bad} axis {k} has no name ({a!r})")
            names.append(n)
            if isinstance(a, dict) and isinstance(a.get("unit"), str) and n.lower() in _LETTER:
                units[_LETTER[n.lower()]] = a["unit"]
    scale = None
    trs = ds.get("coordinateTransformations", [])
    if not isinstance(trs, list):
        raise ReadError(f"{bad} 'coordinateTransformations' must be a list")
    for tr in trs:
        if isinstance(tr, dict) and tr.get("type") == "scale":
            v = tr.get("scale")
            try:
                if not isinstance(v, list) or any(isinstance(x, (bool, str)) for x in v):
                    raise TypeError
                scale = [float(x) for x in v]
            except (TypeError, ValueError):
                raise ReadError(f"{bad} the scale {v!r} is not a list of numbers") from None
            if not all(np.isfinite(scale)) or any(x <= 0 for x in scale):
                raise ReadError(f"{bad} the scale {v!r} must be positive numbers")
    return ds["path"], names, units, scale


class _CheckedChunks:
    """A zarr array read through dask with its errors named: a chunk that cannot be decoded (a
    corrupt or truncated chunk file) is a ReadError naming the store, not a codec's RuntimeError."""

    def __init__(self, arr, label: str):
        self.arr, self.label = arr, label
        self.shape, self.dtype, self.ndim = tuple(arr.shape), arr.dtype, arr.ndim

    def __getitem__(self, key):
        try:
            return self.arr[key]
        except EdofError:
            raise
        except Exception as e:  # noqa: BLE001 - codecs raise many kinds
            raise chunk_error(self.label, e) from None


def chunk_error(label: str, e: BaseException) -> ReadError:
    return ReadError(f"{label}: a chunk of the zarr store cannot be read; it may be truncated or corrupt "
                     f"({type(e).__name__}: {e})")


def _token(arr, path: Path) -> str:
    """A dask name for the store's array that changes when the store does (path, shape, chunks,
    dtype and the array metadata file's time)."""
    import hashlib

    meta = [path / f for f in ("zarr.json", ".zarray", "0/zarr.json", "0/.zarray")]
    mtimes = [os.stat(m).st_mtime_ns for m in meta if m.exists()]
    key = repr((str(path.resolve()), getattr(arr, "path", ""), arr.shape, arr.chunks, str(arr.dtype), mtimes))
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def open_zarr(path, *, axes: str | None = None, name: str | None = None) -> Stack:
    """Open a zarr array or an OME-Zarr image lazily (dask) as a :class:`Stack`."""
    import dask.array as da
    import zarr

    p = Path(path)
    label = str(p)
    try:
        node = zarr.open(store=str(p), mode="r")
    except Exception as e:  # noqa: BLE001 - zarr raises many kinds
        raise ReadError(f"{label}: not a readable zarr store ({type(e).__name__}: {e})") from None
    scale, units, ax = None, {}, None
    if isinstance(node, zarr.Group):
        ms = _multiscales(dict(node.attrs), label)
        if ms is None:
            arrays = sorted(k for k, _ in node.arrays())
            raise ReadError(f"{label}: a zarr group without OME multiscales metadata; open one of its "
                            f"arrays instead ({', '.join(arrays) or 'it has none'})")
        path, names, units, scale = _ome_image(ms, label)
        try:
            arr = node[path]
        except KeyError:
            raise ReadError(f"{label}: the OME metadata names the dataset {path!r}, which is missing") from None
        if not isinstance(arr, zarr.Array):
            raise ReadError(f"{label}: the OME dataset {path!r} is a group, not an array")
        if names:
            try:
                ax = "".join(_LETTER[n.lower()] for n in names)
            except KeyError as e:
                raise StackError(f"{label}: OME axis {e.args[0]!r} is not one of t, c, z, y, x") from None
    else:
        arr = node
    data = da.from_array(_CheckedChunks(arr, label), chunks=arr.chunks, name=f"edof-zarr-{_token(arr, p)}",
                         asarray=False, fancy=False)
    if axes is not None:
        ax = axes.upper()
    if ax is None:
        ax = guess_axes(tuple(data.shape))
    if len(ax) != data.ndim:
        raise StackError(f"{label}: axes {ax!r} do not match the array's {data.ndim} dimensions {tuple(data.shape)}")
    from .metadata import reconcile_zarr_chunks

    metadata = {"zarr": (arr, data.name)}  # the zarr array itself, for direct stripe reads
    keep, message = reconcile_zarr_chunks(arr, ax, label)
    if keep is not None:  # planes with no chunk in the store are not there: leave them out
        data = data[(slice(None),) * ax.index("Z") + (np.asarray(keep),)]
        metadata = {}
    if message:
        _report(metadata, message)
    pixel_size = z_step = None
    unit = "pixel"
    if scale is not None and len(scale) == len(ax):
        if "Y" in ax and "X" in ax:
            pixel_size = (scale[ax.index("Y")], scale[ax.index("X")])
        if "Z" in ax:
            z_step = scale[ax.index("Z")]
        u = units.get("X") or units.get("Y") or units.get("Z")
        unit = _UNIT_NAMES.get(u, u) if u else "pixel"
    try:
        return Stack(data=data, axes=ax, pixel_size=pixel_size, z_step=z_step, unit=unit, rgb=False,
                     name=name or p.name.split(".")[0], source=(str(p),), metadata=metadata)
    except StackError as e:
        raise StackError(f"{label}: {e}") from None


def _ome_attrs(axes: str, scale: list[float], unit: str | None, name: str) -> dict:
    kinds = {"T": "time", "C": "channel", "Z": "space", "Y": "space", "X": "space"}
    ax = []
    for a in axes:
        d = {"name": a.lower(), "type": kinds[a]}
        if unit and a in "YX":
            d["unit"] = _NGFF_UNIT.get(unit, unit)
        ax.append(d)
    return {"ome": {"version": "0.5", "multiscales": [{
        "name": name, "axes": ax,
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
    }]}}


@dataclass
class ZarrOutputs:
    """Result images being written; :meth:`commit` moves them into ``outdir``."""

    outdir: Path
    partial: Path
    arrays: dict = field(default_factory=dict)  # role -> zarr array, in the engine's (T, Y, X[, C]) order
    files: dict = field(default_factory=dict)  # role -> final path
    made_outdir: bool = False  # created for this run (removed again by abort while empty)
    sources: tuple = ()  # the run's input files (never replaced or removed)

    def commit(self, provenance: dict | None = None) -> dict[str, Path]:
        """Move the finished images into place (replacing older results of the same names)."""
        from .outputs import previous_files, retire_previous

        if provenance is not None:
            from .writers import json_safe

            self.files["provenance"] = self.outdir / "provenance.json"
            prov = dict(provenance, files=[p.name for p in self.files.values()])
            (self.partial / "provenance.json").write_text(json.dumps(json_safe(prov), indent=2))
        old_files = previous_files(self.outdir)
        with critical():  # Ctrl-C or SIGTERM now waits for the set to be in place
            for final in self.files.values():
                src = self.partial / final.name
                old = None
                if final.exists():
                    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
                    os.replace(final, old)
                os.replace(src, final)
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
            shutil.rmtree(self.partial, ignore_errors=True)
            retire_previous(self.outdir, old_files, [p.name for p in self.files.values()], self.sources)
        return dict(self.files)

    def abort(self) -> None:
        """Remove the partial images (the previous results stay as they were), and the output
        folder if this run created it and nothing else is in it."""
        shutil.rmtree(self.partial, ignore_errors=True)
        if self.made_outdir:
            try:
                self.outdir.rmdir()  # only if empty
            except OSError:
                pass


def create_outputs(outdir, *, shape_tyx: tuple[int, int, int], channels: int, dtype, axes: str,
                   rows_per_chunk: int, pixel_size=None, z_step=None, unit: str | None = None,
                   name: str = "fused", sources=()) -> ZarrOutputs:
    """Create the fused, focus-index and confidence OME-Zarr images in a partial folder.

    ``axes`` are the input stack's; the outputs keep its T and C and drop Z. Chunks hold
    ``rows_per_chunk`` full-width rows (the stripes of a streaming run) of one time point.
    """
    from .outputs import check_not_inputs, result_names

    outdir = Path(outdir)
    check_not_inputs(outdir, result_names("zarr", audit=True), sources)  # a result never replaces its own input
    made = not outdir.exists()
    partial = outdir / f".partial-{uuid.uuid4().hex[:12]}"
    out = ZarrOutputs(outdir=outdir, partial=partial, made_outdir=made, sources=tuple(sources or ()))
    try:
        try:
            outdir.mkdir(parents=True, exist_ok=True)
            partial.mkdir()
        except OSError as e:
            raise OSError(f"cannot write to {outdir}: {e.strerror or e}") from e
        with critical():  # zarr writes from its own I/O thread: not left writing after the abort
            _create_images(out, shape_tyx, channels, dtype, axes, rows_per_chunk, pixel_size, unit, name)
    except BaseException:  # an error, Ctrl-C or SIGTERM while creating them: nothing is left
        out.abort()
        raise
    return out


_ROLES = (("fused", "fused.ome.zarr", None, True),
          ("index", "focus_index.ome.zarr", np.dtype(np.float32), False),
          ("confidence", "confidence.ome.zarr", np.dtype(np.float32), False))


def _create_images(out, shape_tyx, channels, dtype, axes, rows_per_chunk, pixel_size, unit, name,
                   roles=_ROLES) -> None:
    """The OME-Zarr images of ``roles`` ((role, file name, dtype or None: ``dtype``, with the
    channels)) in ``out``'s partial folder."""
    import zarr

    outdir, partial = out.outdir, out.partial
    T, Y, X = shape_tyx
    C = channels
    rows = max(1, min(int(rows_per_chunk), Y))
    px = tuple(pixel_size) if pixel_size else (1.0, 1.0)
    has_t, has_c = "T" in axes, "C" in axes
    for role, fname, dt, with_c in roles:
        dt = np.dtype(dtype) if dt is None else dt
        g = zarr.open_group(store=str(partial / fname), mode="w", zarr_format=3)
        # on disk in OME order (t, c, y, x); the engine writes through a (T, Y, X, C) view
        disk_axes = ("T" if has_t else "") + ("C" if (with_c and has_c) else "") + "YX"
        disk_shape = ((T,) if has_t else ()) + ((C,) if (with_c and has_c) else ()) + (Y, X)
        chunks = ((1,) if has_t else ()) + ((1,) if (with_c and has_c) else ()) + (rows, X)
        arr = g.create_array(name="0", shape=disk_shape, chunks=chunks, dtype=dt, fill_value=0,
                             compressors=None if role != "fused" else "auto")
        scale = [1.0] * len(disk_axes)
        scale[-2], scale[-1] = float(px[0]), float(px[1])
        g.attrs.update(_ome_attrs(disk_axes, scale, unit if pixel_size else None, f"{name} {role}"))
        out.arrays[role] = _EngineView(arr, has_t, with_c and has_c, C if with_c else None)
        out.files[role] = outdir / fname


def fuse_to_zarr_iter(stack, outdir, *, budget: int | None = None, **options):
    """Fuse ``stack`` stripe by stripe into OME-Zarr images in ``outdir``; yields progress.

    Memory stays one stripe of source rows (``budget`` bytes, see
    :data:`napari_edof.core.stream.STRIPE_BUDGET`) whatever the stack's size. Returns
    ``(result, files)``: a :class:`FusionResult` of dask arrays over the written images, and the
    paths written. Closing the generator (cancel, Ctrl-C) removes the partial images.
    """
    from ..core.plan import STRIPE_BUDGET, plan_fusion, plan_stripes
    from ..core.stream import store_plan_iter

    budget = STRIPE_BUDGET if budget is None else int(budget)
    pl = plan_fusion(stack, **options)
    st = pl.stack
    rows = max(s.s1 - s.s0 for s in plan_stripes(pl, budget))
    outs = create_outputs(outdir, shape_tyx=(st.n_times,) + tuple(st.yx_shape), channels=st.n_channels,
                          dtype=st.dtype, axes=st.axes, rows_per_chunk=rows, pixel_size=st.pixel_size,
                          z_step=st.z_step, unit=st.unit, name=st.name, sources=st.source)
    try:
        result = yield from store_plan_iter(pl, outs.arrays, budget=budget)  # (planned, and registered, once)
        if pl.audit:
            result.provenance["audit"] = yield from _audit_to_zarr(pl, outs, rows)
    except BaseException:
        outs.abort()
        raise
    files = outs.commit(result.provenance)
    return reopen_committed(result, outs, files, st.axes), files


def _audit_to_zarr(pl, outs: ZarrOutputs, rows: int):
    """The audit of a streamed run (:mod:`napari_edof.core.audit`) into two more images of ``outs``,
    ``audit.ome.zarr`` (float32) and ``audit_mask.ome.zarr`` (uint8, 255 where flagged): the fused
    rows read back block by block with the source rows around them (one more row each side), so
    memory stays a stripe. A generator of progress ("audit", per block); returns the summary."""
    from ..core.audit import AUDIT_RADIUS, audit_rows
    from ..core.result import Progress

    st = pl.stack
    T, (Y, X) = st.n_times, st.yx_shape
    with critical():
        _create_images(outs, (T, Y, X), st.n_channels, st.dtype, st.axes, rows, st.pixel_size, st.unit, st.name,
                       roles=(("audit", "audit.ome.zarr", np.dtype(np.float32), False),
                              ("audit_mask", "audit_mask.ome.zarr", np.dtype(np.uint8), False)))
    canon = st.canonical()
    fused = outs.arrays["fused"].to_dask()
    spans = [(b0, min(Y, b0 + rows)) for b0 in range(0, Y, rows)]
    flagged, total, top, acc = 0, 0, 0.0, 0.0
    for t in range(T):
        for i, (b0, b1) in enumerate(spans):
            a, b = max(0, b0 - AUDIT_RADIUS), min(Y, b1 + AUDIT_RADIUS)
            planes = np.asarray(canon[t][:, a:b])
            d, m = audit_rows(planes, np.asarray(fused[t, b0:b1]), offset=b0 - a)
            outs.arrays["audit"][t, b0:b1] = d
            outs.arrays["audit_mask"][t, b0:b1] = m.astype(np.uint8) * np.uint8(255)
            flagged, total = flagged + int(m.sum()), total + m.size
            top, acc = max(top, float(d.max()) if d.size else 0.0), acc + float(d.sum(dtype=np.float64))
            yield Progress(t * len(spans) + i + 1, T * len(spans), "audit", t)
    return {"radius": AUDIT_RADIUS, "outside_fraction": flagged / max(total, 1), "outside_pixels": flagged,
            "max_distance": top, "mean_distance": acc / max(total, 1)}


def committed_arrays(outs: ZarrOutputs, files: dict):
    """The committed images ``files`` (the partial paths of ``outs`` are gone) as dask arrays in
    the engine's order: fused (T, Y, X, C), index and confidence (T, Y, X)."""
    import zarr

    views = {}
    for role in ("fused", "index", "confidence"):
        arr = zarr.open_group(store=str(files[role]), mode="r")["0"]
        v = outs.arrays[role]
        views[role] = _EngineView(arr, v.has_t, v.has_c, v.channels).to_dask()
    return views["fused"], views["index"], views["confidence"]


def _committed_audit(outs: ZarrOutputs, files: dict):
    """The committed audit images as dask arrays (T, Y, X): distance, and the mask as bool."""
    import zarr

    got = []
    for role in ("audit", "audit_mask"):
        arr = zarr.open_group(store=str(files[role]), mode="r")["0"]
        v = outs.arrays[role]
        got.append(_EngineView(arr, v.has_t, v.has_c, v.channels).to_dask())
    return got[0], got[1] > 0


def reopen_committed(result, outs: ZarrOutputs, files: dict, axes: str):
    """``result`` with its arrays replaced by those of :func:`committed_arrays`, in the stack's
    own axes (T and C dropped when ``axes`` has none)."""
    fused, index, conf = to_stack_axes(axes, *committed_arrays(outs, files))
    result.fused, result.index, result.confidence = fused, index, conf
    if "audit" in files:
        dist, mask = _committed_audit(outs, files)
        result.audit, result.audit_mask = (dist, mask) if "T" in axes else (dist[0], mask[0])
    result.provenance["output"] = {k: str(v) for k, v in files.items()}
    return result


class _EngineView:
    """A zarr array in OME order seen in the engine's order: (T, Y, X, C) or (T, Y, X)."""

    def __init__(self, arr, has_t: bool, has_c: bool, channels: int | None):
        self.arr, self.has_t, self.has_c, self.channels = arr, has_t, has_c, channels

    @property
    def shape(self):
        s = tuple(self.arr.shape)
        T = s[0] if self.has_t else 1
        Y, X = s[-2:]
        return (T, Y, X) + ((self.channels,) if self.channels is not None else ())

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dtype(self):
        return self.arr.dtype

    def __setitem__(self, key, value):
        """``view[t, rows] = block`` or any key of slices in the engine's order (``dask.array.store``)."""
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        value = np.asarray(value)
        t, y, x = key[:3]
        if isinstance(t, (int, np.integer)):
            value = value[None]  # engine order with T kept: (T, Y, X[, C])
            t = slice(int(t), int(t) + 1)
        if self.channels is not None:
            c = key[3]
            value = np.broadcast_to(value, value.shape[:3] + (value.shape[3] if value.ndim == 4 else 1,))
            if self.has_c:
                value = np.moveaxis(value, -1, 1)  # (T, C, Y, X)
                idx = ((t,) if self.has_t else ()) + (c, y, x)
            else:
                value = value[..., 0]
                idx = ((t,) if self.has_t else ()) + (y, x)
        else:
            idx = ((t,) if self.has_t else ()) + (y, x)
        if not self.has_t:
            value = value[0]
        self.arr[idx] = value

    def to_dask(self):
        """The array lazily in the engine's order (T, Y, X[, C])."""
        import dask.array as da

        a = da.from_zarr(self.arr)
        if not self.has_t:
            a = a[None]
        if self.channels is not None:
            a = da.moveaxis(a, 1, -1) if self.has_c else a[..., None]
        return a


__all__ = ["ZarrOutputs", "create_outputs", "fuse_to_zarr_iter", "is_zarr", "open_zarr", "committed_arrays",
           "reopen_committed"]
