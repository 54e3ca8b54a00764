"""Retouching a fusion from its source planes by painting on the decision Labels layer.

The decision layer holds, per pixel, ``source plane + 1``. With :func:`connect_retouch`, every
edit made with napari's own Labels tools (brush, fill, polygon, eraser) re-renders the fused
image and the focus-index map of the same result at once, from the edited labels alone
(:func:`napari_edof.api.recompose`; no focus measure is recomputed). napari's undo/redo
(``layer.undo()``, Ctrl+Z) re-renders too, back to exactly the pixels shown before the edit.

Rules for the re-rendered pixels
--------------------------------
* label ``k + 1``: the fused pixel becomes source plane ``k``'s pixel and the index becomes ``k``;
* label 0 (erased): the pixel keeps what the fused image and the index map show now;
* a label back to its value in the fusion (undo, or painting the same plane again): the pixel
  gets back the fusion's own value (soft seams and sub-plane index included);
* a label above the number of planes: refused with a notification, the pixel is left as it is.

Only the bounding box of what changed is read from the source stack and recomposed, so retouching
a large image stays quick. Assigning ``decision_layer.data`` wholesale (a new fusion writing its
result into the same layers) is not an edit: it resets the baseline.
"""
from __future__ import annotations

import logging
import weakref
from collections.abc import Callable

import numpy as np

from ..api import EdofError, as_stack, recompose
from .layers import squeeze_z

log = logging.getLogger(__name__)

META_KEY = "napari_edof"
#: Layer name suffix for each role of the result-layer convention.
ROLE_SUFFIX = {
    "fused": "fused",
    "index": "focus index",
    "decision": "decision",
    "confidence": "confidence",
}


# --------------------------------------------------------------------------------------------
# Finding the layers of one result (the metadata convention shared with the fusion widget)
# --------------------------------------------------------------------------------------------
def edof_meta(layer) -> dict | None:
    """The ``napari_edof`` metadata dict of a layer, or None."""
    meta = getattr(layer, "metadata", None) or {}
    m = meta.get(META_KEY)
    return m if isinstance(m, dict) else None


def decision_layers(viewer) -> list:
    """Every decision Labels layer in the viewer (found by its metadata, not its name)."""
    return [ly for ly in viewer.layers if (edof_meta(ly) or {}).get("role") == "decision"]


def find_role_layer(viewer, source: str, role: str):
    """The layer with ``role`` for the result of source layer ``source`` (None when absent).

    Several candidates (a copy of a layer): the one named by the convention wins.
    """
    cands = [ly for ly in viewer.layers
             if (edof_meta(ly) or {}).get("role") == role and (edof_meta(ly) or {}).get("source") == source]
    if not cands:
        return None
    wanted = f"{source} {ROLE_SUFFIX.get(role, role)}"
    for ly in cands:
        if ly.name == wanted:
            return ly
    return cands[0]


def find_source_layer(viewer, source: str):
    """The source stack layer named ``source`` (None when it was removed or renamed)."""
    for ly in viewer.layers:
        if ly.name == source and edof_meta(ly) is None:
            return ly
    for ly in viewer.layers:
        if ly.name == source:
            return ly
    return None


def layer_array(layer):
    """A layer's full-resolution data (the first level of a multiscale layer), without the
    single-plane Z axis that result layers of a time-lapse keep for alignment (a view)."""
    data = layer.data
    if getattr(layer, "multiscale", False):
        data = data[0]
    return squeeze_z(layer, data)


def source_stack(viewer, decision_layer):
    """The source focus stack of a result, rebuilt from its source layer (a :class:`Stack`)."""
    meta = _decision_meta(decision_layer)
    src = find_source_layer(viewer, meta["source"])
    if src is None:
        raise EdofError(f"the source layer {meta['source']!r} of {decision_layer.name!r} is no longer "
                        "in the viewer: add it back (or rename it back) to inspect or retouch this result")
    pixel_size = meta.get("pixel_size")
    return as_stack(layer_array(src), axes=meta["axes"], name=meta["source"],
                    pixel_size=tuple(pixel_size) if pixel_size else None, z_step=meta.get("z_step"))


def _decision_meta(layer) -> dict:
    meta = edof_meta(layer)
    if not meta or meta.get("role") != "decision":
        raise EdofError(f"layer {getattr(layer, 'name', layer)!r} is not a napari-edof decision layer "
                        "(fuse a stack with the 'Fuse focus stack' widget first)")
    for key in ("source", "axes", "n_planes"):
        if key not in meta:
            raise EdofError(f"the decision layer {layer.name!r} has no {key!r} in its metadata")
    return meta


def _notify_error(msg: str) -> None:
    try:
        from napari.utils.notifications import show_error

        show_error(msg)
    except Exception:  # pragma: no cover - napari always has it
        log.error(msg)


# --------------------------------------------------------------------------------------------
# The handle
# --------------------------------------------------------------------------------------------
class RetouchHandle:
    """Keeps the fused and focus-index layers of one result in step with its decision labels.

    Made and returned by :func:`connect_retouch`; one per decision layer.

    Attributes
    ----------
    callbacks : list of callables
        Called with the handle after every re-render (the inspector refreshes its mask overlay).
    last_changed : int
        How many pixels the last re-render changed (0 when an event changed nothing).
    """

    def __init__(self, viewer, decision_layer):
        _decision_meta(decision_layer)
        self._viewer = weakref.ref(viewer)
        self._layer = weakref.ref(decision_layer)
        self._connected = False
        self.callbacks: list[Callable[[RetouchHandle], None]] = []
        self.last_changed = 0
        self._reset()

    # -- connection ---------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def layer(self):
        return self._layer()

    def connect(self) -> RetouchHandle:
        layer = self.layer
        if self._connected or layer is None:
            return self
        # paint: a brush stroke/fill/polygon committed (one undo item) or data_setitem;
        # set_data: refresh() after undo/redo; data: the whole array replaced.
        layer.events.paint.connect(self._on_edit)
        layer.events.set_data.connect(self._on_edit)
        layer.events.data.connect(self._on_data_replaced)
        self._connected = True
        self._reset()
        return self

    def disconnect(self) -> None:
        layer = self.layer
        if self._connected and layer is not None:
            for emitter, cb in ((layer.events.paint, self._on_edit), (layer.events.set_data, self._on_edit),
                                (layer.events.data, self._on_data_replaced)):
                try:
                    emitter.disconnect(cb)
                except Exception:  # pragma: no cover
                    pass
        self._connected = False

    # -- state ----------------------------------------------------------------------------------
    def _reset(self) -> None:
        layer = self.layer
        self._labels_obj = None if layer is None else layer.data
        self._last = None if layer is None else np.array(layer_array(layer), copy=True)
        self._base = None  # (labels, fused, index) of the fusion, taken at the first edit
        self._owned = {}  # id(layer) -> the array we gave it

    def _on_data_replaced(self, event=None) -> None:
        layer = self.layer
        if layer is not None and layer.data is not self._labels_obj:
            self._reset()
        else:
            self._on_edit(event)

    def _on_edit(self, event=None) -> None:
        try:
            self.rerender()
        except EdofError as e:
            _notify_error(f"Retouch: {e}")
        except Exception as e:  # never a traceback in the viewer
            log.exception("retouch failed")
            _notify_error(f"Retouch failed: {type(e).__name__}: {e}")

    # -- the work -----------------------------------------------------------------------------
    def rerender(self) -> int:
        """Re-render the fused and index layers where the labels changed since the last call.

        Returns the number of changed label pixels (0: nothing to do). Called by the events.
        """
        layer, viewer = self.layer, self._viewer()
        self.last_changed = 0
        if layer is None or viewer is None:
            return 0
        if layer.data is not self._labels_obj:  # replaced behind our back without a data event
            self._reset()
            return 0
        labels = np.asarray(layer_array(layer))
        if self._last is None or labels.shape != self._last.shape:
            self._reset()
            return 0
        changed = labels != self._last
        if not changed.any():
            return 0
        meta = _decision_meta(layer)
        source = meta["source"]
        fused_layer = find_role_layer(viewer, source, "fused")
        index_layer = find_role_layer(viewer, source, "index")
        prev_labels = self._last
        self._last = labels.copy()
        n_changed = int(changed.sum())
        self.last_changed = n_changed
        if fused_layer is None and index_layer is None:
            return n_changed
        fused, new_f = self._own_data(fused_layer)
        index, new_i = self._own_data(index_layer)
        # edit through views in the engine's order ([T,] Y, X[, C]) whatever the layers' order
        fused = None if fused is None else engine_view(fused, fused_layer, meta)
        index = None if index is None else engine_view(index, index_layer, meta)
        if self._base is None or new_f or new_i:
            # the first edit, or the fused/index data were replaced: the current state is the baseline
            self._base = (prev_labels.copy(),
                          None if fused is None else fused.copy(),
                          None if index is None else index.copy())
        base_lab, base_fused, base_index = self._base

        src = find_source_layer(viewer, source)
        if src is None:
            raise EdofError(f"the source layer {source!r} is no longer in the viewer: cannot re-render "
                            "the fused image from the edited decision")
        n_planes = int(meta["n_planes"])
        axes = meta["axes"].upper()
        src_data = layer_array(src)
        timelapse = labels.ndim == 3
        lab_t = labels if timelapse else labels[None]
        chg_t = changed if timelapse else changed[None]
        base_t = base_lab if timelapse else base_lab[None]
        bad = False
        for t in np.flatnonzero(chg_t.reshape(chg_t.shape[0], -1).any(axis=1)):
            ys, xs = np.nonzero(chg_t[t])
            y0, y1 = _span(ys.min(), ys.max() + 1, labels.shape[-2])
            x0, x1 = _span(xs.min(), xs.max() + 1, labels.shape[-1])
            L = lab_t[t, y0:y1, x0:x1]
            chg = chg_t[t, y0:y1, x0:x1]
            invalid = L > n_planes
            bad |= bool((invalid & chg).any())
            chg = chg & ~invalid
            restore = chg & (L == base_t[t, y0:y1, x0:x1])
            take = chg & ~restore & (L > 0)
            if fused is not None:
                fview = _frame_view(fused, t if timelapse else None, y0, y1, x0, x1)
                if take.any():
                    sub = _source_window(src_data, axes, t if "T" in axes else None, y0, y1, x0, x1)
                    clean = np.where(take, L, 0).astype(L.dtype)
                    new = recompose(sub, clean, fill=fview)
                    new = np.asarray(new).reshape(fview.shape)
                    fview[take] = new[take]
                if restore.any() and base_fused is not None:
                    bview = _frame_view(base_fused, t if timelapse else None, y0, y1, x0, x1)
                    fview[restore] = bview[restore]
            if index is not None:
                iview = _frame_view(index, t if timelapse else None, y0, y1, x0, x1)
                if take.any():
                    iview[take] = (L[take].astype(np.float32) - 1).astype(iview.dtype)
                if restore.any() and base_index is not None:
                    bview = _frame_view(base_index, t if timelapse else None, y0, y1, x0, x1)
                    iview[restore] = bview[restore]
        for ly in (fused_layer, index_layer):
            if ly is not None:
                ly.refresh()
        if index_layer is not None:
            imeta = edof_meta(index_layer) or {}
            z_step = imeta.get("z_step")
            if "height" in imeta and z_step:  # the physical height map the fusion widget keeps
                imeta["height"] = np.asarray(index_layer.data, np.float32) * np.float32(z_step)
        if bad:
            _notify_error(f"Retouch: labels above {n_planes} name planes that do not exist (the stack has "
                          f"{n_planes} planes; paint label = plane + 1, from 1 to {n_planes}); "
                          "those pixels were left as they were")
        for cb in list(self.callbacks):
            try:
                cb(self)
            except Exception:  # pragma: no cover
                log.exception("retouch callback failed")
        return n_changed

    def _own_data(self, layer):
        """(the layer's data as a numpy array we edit in place, whether it was copied just now).

        The layer's array is copied once (it may be the FusionResult's own, or read-only), then
        edited in place; a layer whose data was replaced since is copied again.
        """
        if layer is None:
            return None, False
        owned = self._owned.get(id(layer))
        if owned is not None and owned is layer.data:
            return layer_array(layer), False
        layer.data = np.array(layer.data, copy=True)
        self._owned[id(layer)] = layer.data
        return layer_array(layer), True


def engine_view(arr: np.ndarray, layer, meta: dict) -> np.ndarray:
    """``arr`` (a result layer's data) seen in the engine's order ([T,] Y, X[, C]): a view.

    Result layers may keep a channel axis where the input had it ("CYX", "TCYX"); their
    ``metadata["napari_edof"]["layer_axes"]`` says so. Without it the engine's order is assumed.
    """
    la = ((edof_meta(layer) or {}).get("layer_axes") or "").upper()
    if "Z" in la and arr.ndim == len(la) - 1:  # already squeezed by layer_array
        la = la.replace("Z", "")
    if not la or len(la) != arr.ndim:
        return arr
    want = "".join(a for a in "TYXC" if a in la)
    if la == want:
        return arr
    return np.transpose(arr, [la.index(a) for a in want])


def _span(a: int, b: int, n: int) -> tuple[int, int]:
    """[a, b) widened to at least 2 pixels inside [0, n) (a Stack needs 2x2 planes)."""
    a, b = int(a), int(b)
    while b - a < 2:
        if b < n:
            b += 1
        elif a > 0:
            a -= 1
        else:
            break
    return a, b


def _frame_view(arr: np.ndarray, t, y0, y1, x0, x1) -> np.ndarray:
    """A writable view of arr[(t,) y0:y1, x0:x1(, C)] for a ([T,] Y, X[, C]) array."""
    a = arr if t is None else arr[t]
    return a[y0:y1, x0:x1]


def _source_window(data, axes: str, t, y0, y1, x0, x1):
    """The source stack cut to one time point and the window (axes without T), as a Stack."""
    key = []
    sub_axes = ""
    for a in axes:
        if a == "T":
            key.append(int(t))
            continue
        key.append(slice(y0, y1) if a == "Y" else slice(x0, x1) if a == "X" else slice(None))
        sub_axes += a
    window = np.asarray(data[tuple(key)])
    return as_stack(window, axes=sub_axes)


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------
_HANDLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def connect_retouch(viewer, decision_layer) -> RetouchHandle:
    """Make painting on ``decision_layer`` re-render its result's fused and focus-index layers.

    Idempotent: a second call for the same layer returns the same handle without connecting
    twice. ``handle.disconnect()`` (or :func:`disconnect_retouch`) stops it. Raises
    :class:`napari_edof.api.EdofError` when the layer is not a napari-edof decision layer.
    """
    handle = _HANDLES.get(decision_layer)
    if handle is None or handle._viewer() is not viewer:
        if handle is not None:
            handle.disconnect()
        handle = RetouchHandle(viewer, decision_layer)
        _HANDLES[decision_layer] = handle
    return handle.connect()


def retouch_handle(decision_layer) -> RetouchHandle | None:
    """The handle connected to ``decision_layer``, or None."""
    h = _HANDLES.get(decision_layer)
    return h if h is not None and h.connected else None


def disconnect_retouch(decision_layer) -> None:
    """Stop re-rendering on edits of ``decision_layer`` (no-op when not connected)."""
    h = _HANDLES.get(decision_layer)
    if h is not None:
        h.disconnect()


__all__ = [
    "RetouchHandle",
    "connect_retouch",
    "decision_layers",
    "disconnect_retouch",
    "edof_meta",
    "find_role_layer",
    "find_source_layer",
    "retouch_handle",
    "source_stack",
]
