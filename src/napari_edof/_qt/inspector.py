"""The focus inspector: review a fusion's decisions pixel by pixel.

Pick a result (its decision layer), then click a pixel in the canvas (or hold Shift and move the
mouse): the plot shows the focus measure of every source plane at that pixel, the plane the
fusion chose and how confident it was. From there: go to that plane in the source stack, overlay
the mask of one plane, look at a source plane and the fused image side by side, retouch the
decision by painting, or see the focus map as a 3D height surface textured with the fused image.

Talks to :mod:`napari_edof.api` only; matplotlib is imported when the widget is built.
"""
from __future__ import annotations

import logging
import weakref

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .. import api
from ..api import (  # noqa: F401 - the Qt-free helpers, in core (re-exported here for older imports)
    DEFAULT_MEASURE,
    DEFAULT_RADIUS,
    MAX_SURFACE_SIDE,
    height_mesh,
    measure_settings,
    surface_texcoords,
    texture_image,
)
from .layers import unwrap
from .retouch import (
    connect_retouch,
    decision_layers,
    disconnect_retouch,
    edof_meta,
    engine_view,
    find_role_layer,
    find_source_layer,
    layer_array,
    retouch_handle,
    source_stack,
)

log = logging.getLogger(__name__)


def _show_error(msg: str) -> None:
    from napari.utils.notifications import show_error

    show_error(msg)


def _show_info(msg: str) -> None:
    from napari.utils.notifications import show_info

    show_info(msg)


# --------------------------------------------------------------------------------------------
# Pure helpers (no Qt): in core (focus-measure settings in core.inspect, the mesh in core.surface)
# --------------------------------------------------------------------------------------------
_texture_image = texture_image


# --------------------------------------------------------------------------------------------
# The widget
# --------------------------------------------------------------------------------------------
class FocusInspector(QWidget):
    """Review a fusion pixel by pixel (npe2 widget: ``FocusInspector(napari_viewer)``).

    Attributes set by :meth:`inspect` (for scripts and tests):
    ``last_pixel`` (y, x), ``last_t``, ``last_curve`` (Z,) focus measure per plane,
    ``last_plane`` (chosen plane, decision - 1; -1 where erased), ``last_index`` (the focus-index
    value, sub-plane), ``last_confidence``, ``last_measure`` (the focus_curve keywords).
    """

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = unwrap(napari_viewer)  # napari's proxy: layers would not match by identity
        self.last_pixel: tuple[int, int] | None = None
        self.last_t = 0
        self.last_curve: np.ndarray | None = None
        self.last_plane: int | None = None
        self.last_index: float | None = None
        self.last_confidence: float | None = None
        self.last_measure: dict | None = None
        self._layers: list = []  # weakrefs parallel to the combo
        self._watched = None  # weakref to the decision layer whose events we follow
        self._saved_visibility: dict | None = None
        self._mode: str | None = None  # "grid" | "3d" | None
        self._build_ui()
        self._connect_viewer()
        self.refresh_results()

    # ---------------------------------------------------------------- UI
    def _build_ui(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        # the result, the plot and its text on top; everything else in a scroll area below it, so
        # that the plot stays in view in a short dock (a laptop's 1366 x 768 screen)
        outer = QVBoxLayout(self)
        lay = outer
        row = QHBoxLayout()
        row.addWidget(QLabel("Result:"))
        self.result_combo = QComboBox()
        self.result_combo.setToolTip("The fusion to inspect (its decision layer)")
        self.result_combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        row.addWidget(self.result_combo)
        lay.addLayout(row)

        self.click_check = QCheckBox("Inspect on click (or hold Shift and move)")
        self.click_check.setChecked(True)
        lay.addWidget(self.click_check)

        self.info = QLabel("Click a pixel in the canvas to see its focus curve.")
        self.info.setWordWrap(True)
        self.info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(self.info)

        self.figure = Figure(figsize=(4, 2.4), dpi=90, tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(170)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.axes = self.figure.add_subplot(111)
        self.curve_line = None
        self.plane_marker = None
        self.index_marker = None
        self._theme = _theme_colours(self.viewer)
        self._style_axes()
        lay.addWidget(self.canvas, 2)

        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        body = QWidget()
        lay = QVBoxLayout(body)
        lay.setContentsMargins(0, 0, 0, 0)
        self.scroll.setWidget(body)
        outer.addWidget(self.scroll, 1)
        self._scroll_body = body

        self.goto_btn = QPushButton("Go to plane")
        self.goto_btn.setToolTip("Show the chosen plane of the source stack (moves the z slider)")
        self.goto_btn.setEnabled(False)
        lay.addWidget(self.goto_btn)

        # --- decision: masks, retouch, side by side
        box = QGroupBox("Decision")
        form = QVBoxLayout(box)
        r1 = QHBoxLayout()
        self.mask_check = QCheckBox("Show mask of plane")
        self.mask_check.setToolTip("Overlay the pixels the fusion took from this plane")
        self.plane_spin = QSpinBox()
        self.plane_spin.setRange(0, 0)
        r1.addWidget(self.mask_check)
        r1.addWidget(self.plane_spin)
        r1.addStretch(1)
        form.addLayout(r1)
        self.retouch_check = QCheckBox("Retouch: painting re-renders the fused image")
        self.retouch_check.setToolTip(
            "Paint on the decision layer with label = plane + 1: the fused image and the focus index "
            "are re-rendered from those planes at once (undo with Ctrl+Z)")
        form.addWidget(self.retouch_check)
        self.paint_btn = QPushButton("Paint with this plane")
        self.paint_btn.setToolTip("Select the decision layer in paint mode with label = plane + 1 "
                                  "(turns retouching on)")
        form.addWidget(self.paint_btn)
        self.grid_btn = QPushButton("Side by side: source plane | fused")
        self.grid_btn.setCheckable(True)
        self.grid_btn.setToolTip("napari grid mode with only the source stack and the fused image shown")
        form.addWidget(self.grid_btn)
        lay.addWidget(box)

        # --- 3D height view
        box3 = QGroupBox("3D height view")
        f3 = QFormLayout(box3)
        self.py_spin = self._dspin("pixel size y")
        self.px_spin = self._dspin("pixel size x")
        self.z_spin = self._dspin("distance between planes")
        self.exag_spin = self._dspin("vertical exaggeration of the surface")
        self.exag_spin.setValue(1.0)
        self.scale_note = QLabel("")
        self.scale_note.setWordWrap(True)
        f3.addRow("Pixel size y", self.py_spin)
        f3.addRow("Pixel size x", self.px_spin)
        f3.addRow("Z step", self.z_spin)
        f3.addRow("Exaggeration", self.exag_spin)
        f3.addRow(self.scale_note)
        self.height_btn = QPushButton("3D height view")
        self.height_btn.setCheckable(True)
        self.height_btn.setToolTip("The focus map as a surface in physical units, textured with the "
                                   "fused image, in napari's 3D view")
        f3.addRow(self.height_btn)
        lay.addWidget(box3)
        lay.addStretch(1)

        # as wide as the content (no horizontal scrolling, nothing cut off at the right)
        self.scroll.setMinimumWidth(self._scroll_body.minimumSizeHint().width()
                                    + self.scroll.verticalScrollBar().sizeHint().width() + 8)
        self.result_combo.currentIndexChanged.connect(self._on_result_changed)
        self.goto_btn.clicked.connect(self.go_to_plane)
        self.mask_check.toggled.connect(lambda _=None: self._guard(self.update_mask))
        self.plane_spin.valueChanged.connect(lambda _=None: self._guard(self.update_mask))
        self.retouch_check.toggled.connect(self._on_retouch_toggled)
        self.paint_btn.clicked.connect(lambda _=None: self._guard(self.paint_with_plane))
        self.grid_btn.toggled.connect(self._on_grid_toggled)
        self.height_btn.toggled.connect(self._on_height_toggled)
        for sp in (self.py_spin, self.px_spin, self.z_spin, self.exag_spin):
            sp.valueChanged.connect(self._on_scale_changed)

    @staticmethod
    def _dspin(tip: str) -> QDoubleSpinBox:
        sp = QDoubleSpinBox()
        sp.setDecimals(4)
        sp.setRange(1e-4, 1e6)
        sp.setValue(1.0)
        sp.setToolTip(tip)
        return sp

    def _style_axes(self) -> None:
        """Labels, grid and the colours of napari's theme (a dark plot on the dark theme)."""
        ax = self.axes
        bg, fg = self._theme
        self.figure.set_facecolor(bg)
        ax.set_facecolor(bg)
        for spine in ax.spines.values():
            spine.set_color(fg)
        ax.tick_params(colors=fg, which="both")
        ax.xaxis.label.set_color(fg)
        ax.yaxis.label.set_color(fg)
        ax.title.set_color(fg)
        ax.set_xlabel("plane")
        ax.set_ylabel("focus measure")
        ax.grid(True, alpha=0.3, color=fg)

    def _on_theme_changed(self, event=None) -> None:
        self._theme = _theme_colours(self.viewer)
        if self.last_curve is not None and self.last_pixel is not None:
            self._guard(self.inspect, *self.last_pixel, t=self.last_t)
        else:
            self.axes.clear()
            self._style_axes()
            self.canvas.draw_idle()

    # ---------------------------------------------------------------- viewer wiring
    def _connect_viewer(self) -> None:
        me = weakref.ref(self)

        def on_drag(viewer, event):
            w = me()
            if w is None or not w.click_check.isChecked() or getattr(event, "button", 1) != 1:
                return
            dragged = False
            yield
            while event.type == "mouse_move":
                dragged = True
                yield
            w = me()
            if w is not None and not dragged:
                w._inspect_event(event)

        def on_move(viewer, event):
            w = me()
            if w is not None and w.click_check.isChecked() and "Shift" in _modifier_names(event):
                w._inspect_event(event, quiet=True)

        def on_layers(event=None):
            w = me()
            if w is not None:
                w.refresh_results()

        def on_grid(event=None):
            w = me()
            if w is not None:
                w._on_grid_changed_outside()

        viewer = self.viewer
        viewer.mouse_drag_callbacks.append(on_drag)
        viewer.mouse_move_callbacks.append(on_move)
        emitters = [viewer.layers.events.inserted, viewer.layers.events.removed,
                    viewer.layers.events.moved]
        for em in emitters:
            em.connect(on_layers)
        _grid(viewer).events.enabled.connect(on_grid)

        def on_theme(event=None):
            w = me()
            if w is not None:
                w._on_theme_changed()

        theme_events = getattr(viewer.events, "theme", None)
        if theme_events is not None:
            theme_events.connect(on_theme)

        def on_ndisplay(event=None):  # napari's own 2D/3D button leaves the height view too
            w = me()
            if w is not None and w._mode == "3d" and viewer.dims.ndisplay == 2:
                w.exit_mode()

        viewer.dims.events.ndisplay.connect(on_ndisplay)
        self._callbacks = (on_drag, on_move)

        def cleanup(*_):
            for lst, cb in ((viewer.mouse_drag_callbacks, on_drag), (viewer.mouse_move_callbacks, on_move)):
                if cb in lst:
                    lst.remove(cb)
            for em in emitters:
                em.disconnect(on_layers)
            _grid(viewer).events.enabled.disconnect(on_grid)
            if theme_events is not None:
                theme_events.disconnect(on_theme)
            viewer.dims.events.ndisplay.disconnect(on_ndisplay)

        self._cleanup = cleanup
        self.destroyed.connect(cleanup)

    def close(self):  # noqa: D102 - also unhook from the viewer when closed programmatically
        self._cleanup()
        self._unwatch()
        return super().close()

    def _guard(self, fn, *args, **kwargs):
        """Run a UI action; errors become a notification with the clear message."""
        try:
            return fn(*args, **kwargs)
        except api.EdofError as e:
            _show_error(f"Focus inspector: {e}")
        except Exception as e:  # never a traceback in the viewer
            log.exception("focus inspector")
            _show_error(f"Focus inspector: {type(e).__name__}: {e}")
        return None

    # ---------------------------------------------------------------- results
    def refresh_results(self) -> None:
        """Fill the result combo with the decision layers in the viewer (keeps the selection)."""
        current = self.decision_layer
        layers = decision_layers(self.viewer)
        self.result_combo.blockSignals(True)
        self.result_combo.clear()
        self._layers = [weakref.ref(ly) for ly in layers]
        for ly in layers:
            self.result_combo.addItem(ly.name)
        if current is not None and current in layers:
            self.result_combo.setCurrentIndex(layers.index(current))
        elif layers:
            self.result_combo.setCurrentIndex(len(layers) - 1)  # the newest
        self.result_combo.blockSignals(False)
        if self.decision_layer is not current or current is None:
            self._on_result_changed()

    @property
    def decision_layer(self):
        """The decision layer of the selected result (None when there is none)."""
        i = self.result_combo.currentIndex() if hasattr(self, "result_combo") else -1
        if 0 <= i < len(self._layers):
            ly = self._layers[i]()
            if ly is not None and ly in self.viewer.layers:
                return ly
        return None

    def select_result(self, decision_layer) -> None:
        """Select the result whose decision layer is ``decision_layer``."""
        decision_layer = unwrap(decision_layer)
        self.refresh_results()
        for i, ref in enumerate(self._layers):
            if ref() is decision_layer:
                self.result_combo.setCurrentIndex(i)
                return
        raise api.EdofError(f"{getattr(decision_layer, 'name', decision_layer)!r} is not a napari-edof "
                            "decision layer in this viewer")

    def _meta(self) -> dict:
        layer = self.decision_layer
        if layer is None:
            raise api.EdofError("no fusion result to inspect: fuse a stack first (Plugins > EDOF > "
                                "Fuse focus stack), then pick it here")
        return edof_meta(layer)

    def _role(self, role: str):
        layer = self.decision_layer
        return None if layer is None else find_role_layer(self.viewer, edof_meta(layer)["source"], role)

    def _on_result_changed(self, *_):
        layer = self.decision_layer
        self._watch(layer)
        meta = edof_meta(layer) if layer is not None else None
        n = int(meta.get("n_planes", 1)) if meta else 1
        self.plane_spin.blockSignals(True)
        self.plane_spin.setRange(0, max(n - 1, 0))
        self.plane_spin.blockSignals(False)
        self.retouch_check.blockSignals(True)
        self.retouch_check.setChecked(layer is not None and retouch_handle(layer) is not None)
        self.retouch_check.blockSignals(False)
        for w in (self.mask_check, self.plane_spin, self.retouch_check, self.paint_btn, self.grid_btn,
                  self.height_btn):
            w.setEnabled(layer is not None)
        self._fill_scale(meta)
        self.goto_btn.setEnabled(False)
        self.goto_btn.setText("Go to plane")
        if self.mask_check.isChecked():
            self._guard(self.update_mask)

    def _fill_scale(self, meta) -> None:
        px = (meta or {}).get("pixel_size")
        zs = (meta or {}).get("z_step")
        for sp in (self.py_spin, self.px_spin, self.z_spin):
            sp.blockSignals(True)
        self.py_spin.setValue(float(px[0]) if px else 1.0)
        self.px_spin.setValue(float(px[1]) if px else 1.0)
        self.z_spin.setValue(float(zs) if zs else 1.0)
        for sp in (self.py_spin, self.px_spin, self.z_spin):
            sp.blockSignals(False)
        unknown = [n for n, v in (("pixel size", px), ("z step", zs)) if not v]
        self.scale_note.setText(
            f"{' and '.join(unknown).capitalize()} unknown: enter {'them' if len(unknown) > 1 else 'it'} "
            "above (in the same unit)." if unknown and meta else ("From the stack's metadata." if meta else ""))

    def _watch(self, layer) -> None:
        """Follow edits of the selected decision layer (the mask overlay follows retouching)."""
        self._unwatch()
        if layer is None:
            return
        me = weakref.ref(self)

        def on_edit(event=None):
            w = me()
            if w is not None and w.mask_check.isChecked():
                w._guard(w.update_mask)

        layer.events.paint.connect(on_edit)
        layer.events.set_data.connect(on_edit)
        self._watched = (weakref.ref(layer), on_edit)

    def _unwatch(self) -> None:
        if self._watched is None:
            return
        ref, cb = self._watched
        layer = ref()
        if layer is not None:
            layer.events.paint.disconnect(cb)
            layer.events.set_data.disconnect(cb)
        self._watched = None

    # ---------------------------------------------------------------- inspecting
    def _inspect_event(self, event, quiet: bool = False) -> None:
        layer = self.decision_layer
        if layer is None:
            if not quiet:
                _show_info("Focus inspector: no fusion result yet; fuse a stack first")
            return
        if len(getattr(event, "dims_displayed", ())) == 3 or self.viewer.dims.ndisplay == 3:
            return  # a click in 3D is a ray, not a pixel
        pixel = self.world_to_pixel(event.position)
        if pixel is None:
            return  # outside the image: nothing to inspect
        y, x, t = pixel
        if quiet and self.last_pixel == (y, x) and self.last_t == t:
            return
        self.inspect(y, x, t=t)

    def world_to_pixel(self, position):
        """World coordinates (a click's ``event.position``) -> (y, x, t) on the selected result.

        None when the point is outside the image.
        """
        layer = self.decision_layer
        if layer is None:
            return None
        shape = layer_array(layer).shape
        tyx = self._source_tyx(position)
        if tyx is None:  # no source layer: the decision layer's own transform
            ij = np.round(np.asarray(layer.world_to_data(position), dtype=float)).astype(int)
            tyx = (int(ij[0]) if len(shape) == 3 else 0, int(ij[-2]), int(ij[-1]))
        t, y, x = tyx
        Y, X = shape[-2:]
        T = shape[0] if len(shape) == 3 else 1
        if not (0 <= y < Y and 0 <= x < X and 0 <= t < T):
            return None
        return y, x, t

    def _source_tyx(self, position):
        """(t, y, x) of a world position in the source stack's data (None without the source layer).

        The source layer is the one whose axes are known for sure ("TZYX" ...): an output layer
        with fewer dimensions is aligned to the world by its trailing axes, which for a time-lapse
        need not be the source's T.
        """
        meta = edof_meta(self.decision_layer) or {}
        src = find_source_layer(self.viewer, meta.get("source", ""))
        if src is None or "axes" not in meta:
            return None
        axes = meta["axes"].upper()
        layer_axes = axes[:-1] if getattr(src, "rgb", False) and axes.endswith("C") else axes
        if len(layer_axes) != src.ndim:
            return None
        ij = np.round(np.asarray(src.world_to_data(position), dtype=float)).astype(int)
        t = int(ij[layer_axes.index("T")]) if "T" in layer_axes else 0
        return t, int(ij[layer_axes.index("Y")]), int(ij[layer_axes.index("X")])

    def inspect(self, y: int, x: int, t: int = 0):
        """Plot the focus curve at data pixel (y, x) of time point t; returns the curve (or None)."""
        return self._guard(self._inspect, int(y), int(x), int(t))

    def _inspect(self, y: int, x: int, t: int):
        meta = self._meta()
        layer = self.decision_layer
        labels = layer_array(layer)
        Y, X = labels.shape[-2:]
        if not (0 <= y < Y and 0 <= x < X):
            raise api.EdofError(f"pixel ({y}, {x}) is outside the {Y}x{X} image")
        T = labels.shape[0] if labels.ndim == 3 else 1
        if not 0 <= t < T:
            raise api.EdofError(f"time point {t} does not exist: the result has {T}")
        stack = source_stack(self.viewer, layer)
        kw, how = measure_settings(meta.get("method"), meta.get("params"))
        # the guide the fusion measured focus on (luminance, mean, one channel), when recorded
        guide = (meta.get("provenance") or {}).get("guide", meta.get("guide", "auto"))
        try:
            curve = api.focus_curve(stack, y, x, t=t, guide=guide, **kw)
        except api.EdofError:
            if guide in (None, "auto"):
                raise
            curve = api.focus_curve(stack, y, x, t=t, **kw)
        lab = int(labels[t, y, x] if labels.ndim == 3 else labels[y, x])
        plane = lab - 1
        idx_layer, conf_layer = self._role("index"), self._role("confidence")
        index_val = _pick(idx_layer, t, y, x)
        conf = _pick(conf_layer, t, y, x)
        self.last_pixel, self.last_t = (y, x), t
        self.last_curve = curve
        self.last_plane = plane
        self.last_index = index_val
        self.last_confidence = conf
        self.last_measure = kw
        self._plot(curve, plane, index_val, conf, how, meta)
        self._mark(layer, y, x)
        where = f"pixel (y={y}, x={x})" + (f", t={t}" if T > 1 else "")
        chosen = f"plane {plane}" if plane >= 0 else "none (erased: label 0)"
        extra = f" (index {index_val:.2f})" if index_val is not None and abs(index_val - plane) > 1e-3 else ""
        conf_s = f", confidence {conf:.2f}" if conf is not None else ""
        sharpest = int(np.argmax(curve))
        note = "" if sharpest == plane or plane < 0 else f"; the sharpest plane by {kw['measure']} is {sharpest}"
        self.info.setText(f"{where}: chose {chosen}{extra}{conf_s}{note}.\nFocus measure: {how}.")
        self.goto_btn.setEnabled(plane >= 0)
        self.goto_btn.setText(f"Go to plane {plane}" if plane >= 0 else "Go to plane")
        if plane >= 0:
            self.plane_spin.setValue(plane)  # the mask / paint plane follows the inspected pixel
        return curve

    def _plot(self, curve, plane, index_val, conf, how, meta) -> None:
        ax = self.axes
        ax.clear()
        self._style_axes()
        z = np.arange(len(curve))
        (self.curve_line,) = ax.plot(z, curve, "o-", color="C0", ms=4, lw=1.5, label="focus measure")
        self.plane_marker = None
        self.index_marker = None
        if plane >= 0:
            self.plane_marker = ax.axvline(plane, color="C1", lw=2, alpha=0.8, label=f"chosen plane {plane}")
            if index_val is not None and abs(index_val - plane) > 1e-3:
                yv = float(np.interp(index_val, z, curve))
                (self.index_marker,) = ax.plot([index_val], [yv], "v", color="C3", ms=8,
                                               label=f"index {index_val:.2f}")
        ax.set_ylabel(f"{how.split(' ')[0]} measure")
        title = f"({self.last_pixel[0]}, {self.last_pixel[1]})"
        if conf is not None:
            title += f"  confidence {conf:.2f}"
        ax.set_title(title, fontsize=10)
        ax.set_xlim(-0.5, len(curve) - 0.5)
        ax.set_xticks(z if len(z) <= 16 else z[:: max(1, len(z) // 8)])
        zs = meta.get("z_step")
        ax.set_xlabel("plane" + (f"  (z step {zs:g})" if zs else ""))
        bg, fg = self._theme
        ax.xaxis.label.set_color(fg)
        ax.yaxis.label.set_color(fg)
        ax.title.set_color(fg)
        leg = ax.legend(fontsize=8, loc="best", facecolor=bg, edgecolor=fg)
        for text in leg.get_texts():
            text.set_color(fg)
        self.canvas.draw_idle()

    def _mark(self, decision_layer, y: int, x: int) -> None:
        """A ring at the inspected pixel: the Points layer "{src} inspected pixel" (made once,
        moved afterwards; the selected layer stays selected)."""
        meta = edof_meta(decision_layer) or {}
        scale = np.asarray(decision_layer.scale, dtype=float)[-2:]
        translate = np.asarray(decision_layer.translate, dtype=float)[-2:]
        world = translate + np.array([y, x], dtype=float) * scale
        layer = self.marker_layer
        if layer is not None:
            layer.data = world[None]
            layer.visible = True
            return
        active = self.viewer.layers.selection.active
        size = max(6.0 * float(scale.max()), 0.05 * float(max(np.asarray(decision_layer.data.shape[-2:]) * scale)))
        units = getattr(decision_layer, "units", None)
        kw = {"units": tuple(units)[-2:]} if units is not None and len(units) >= 2 else {}
        self.viewer.add_points(
            world[None], name=f"{meta.get('source', '')} inspected pixel", symbol="ring", size=size,
            face_color="yellow", border_color="yellow", border_width=0.1, opacity=1.0,
            metadata={"napari_edof": {"role": "marker", "source": meta.get("source")}}, **kw)
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active

    @property
    def marker_layer(self):
        """The Points layer marking the inspected pixel of the selected result (None before a click)."""
        meta = edof_meta(self.decision_layer) if self.decision_layer is not None else None
        for ly in self.viewer.layers:
            m = edof_meta(ly) or {}
            if m.get("role") == "marker" and meta and m.get("source") == meta.get("source"):
                return ly
        return None

    # ---------------------------------------------------------------- go to plane
    def go_to_plane(self, plane: int | None = None, t: int | None = None) -> None:
        """Move the viewer's z slider (and time slider) to ``plane`` of the source stack.

        Defaults: the plane chosen at the last inspected pixel, at its time point.
        """
        self._guard(self._go_to_plane, plane, t)

    def _go_to_plane(self, plane, t):
        if plane is None or plane is False:  # QPushButton.clicked sends False
            plane = self.last_plane
            t = self.last_t if t is None else t
        if plane is None or plane < 0:
            raise api.EdofError("inspect a pixel first (click on the image)")
        meta = self._meta()
        src = find_source_layer(self.viewer, meta["source"])
        if src is None:
            raise api.EdofError(f"the source layer {meta['source']!r} is no longer in the viewer")
        axes = meta["axes"].upper()
        z_axis = int(meta.get("z_axis", axes.index("Z")))
        layer_axes = axes[:-1] if getattr(src, "rgb", False) and axes.endswith("C") else axes
        dims = self.viewer.dims
        offset = dims.ndim - src.ndim
        data_pt = np.asarray(src.world_to_data(dims.point), dtype=float)
        data_pt[z_axis] = plane
        if t is not None and "T" in layer_axes:
            data_pt[layer_axes.index("T")] = t
        world = np.asarray(src.data_to_world(data_pt), dtype=float)
        axes_to_set = [z_axis] + ([layer_axes.index("T")] if t is not None and "T" in layer_axes else [])
        for a in axes_to_set:
            dims.set_point(offset + a, float(world[a]))

    # ---------------------------------------------------------------- mask overlay
    def update_mask(self) -> None:
        """Show (or remove) the "{src} mask plane k" overlay: decision == k + 1."""
        layer = self.decision_layer
        meta = edof_meta(layer) if layer is not None else None
        existing = [ly for ly in self.viewer.layers if (edof_meta(ly) or {}).get("role") == "mask"
                    and (meta is None or (edof_meta(ly) or {}).get("source") == meta["source"])]
        if not self.mask_check.isChecked() or layer is None:
            for ly in existing:
                self.viewer.layers.remove(ly)
            return
        k = int(self.plane_spin.value())
        # the decision layer's own data and geometry (with a time-lapse's alignment Z axis, if any)
        mask = (np.asarray(layer.data) == k + 1).astype(np.uint8)
        name = f"{meta['source']} mask plane {k}"
        if existing:
            ml = existing[0]
            ml.data = mask
            ml.name = name
            ml.metadata["napari_edof"]["plane"] = k
            ml.visible = True
            return
        active = self.viewer.layers.selection.active
        self.viewer.add_image(
            mask, name=name, colormap="magenta", blending="additive", opacity=0.6,
            contrast_limits=(0, 1), scale=layer.scale, translate=layer.translate,
            **({"units": layer.units} if getattr(layer, "units", None) is not None else {}),
            metadata={"napari_edof": {"role": "mask", "source": meta["source"], "plane": k,
                                      "n_planes": meta["n_planes"], "layer_axes": meta.get("layer_axes")}},
        )
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active

    @property
    def mask_layer(self):
        meta = self._meta() if self.decision_layer is not None else None
        for ly in self.viewer.layers:
            m = edof_meta(ly) or {}
            if m.get("role") == "mask" and meta and m.get("source") == meta["source"]:
                return ly
        return None

    # ---------------------------------------------------------------- retouch
    def _on_retouch_toggled(self, on: bool) -> None:
        layer = self.decision_layer
        if layer is None:
            return
        if on:
            if self._guard(connect_retouch, self.viewer, layer) is None:
                self.retouch_check.blockSignals(True)
                self.retouch_check.setChecked(False)
                self.retouch_check.blockSignals(False)
        else:
            disconnect_retouch(layer)

    def paint_with_plane(self, plane: int | None = None) -> None:
        """Select the decision layer in paint mode with label = plane + 1, retouching on."""
        layer = self.decision_layer
        if layer is None:
            self._meta()
        k = int(self.plane_spin.value() if plane is None or plane is False else plane)
        self.retouch_check.setChecked(True)
        self.exit_mode()
        layer.visible = True
        self.viewer.layers.selection.active = layer
        layer.selected_label = k + 1
        layer.mode = "paint"

    # ---------------------------------------------------------------- side by side
    def _on_grid_toggled(self, on: bool) -> None:
        if on:
            if self._guard(self.side_by_side) is None and self._mode != "grid":
                self._set_checked(self.grid_btn, False)
        else:
            if self._mode == "grid":
                self.exit_mode()

    def side_by_side(self) -> bool:
        """napari grid mode showing the source stack next to the fused image (nothing else)."""
        meta = self._meta()
        src = find_source_layer(self.viewer, meta["source"])
        fused = self._role("fused")
        if src is None or fused is None:
            raise api.EdofError("side by side needs both the source stack and the fused image layers")
        self.exit_mode()
        self._hide_all_but([src, fused])
        self._mode = "grid"
        _grid(self.viewer).enabled = True
        self._set_checked(self.grid_btn, True)
        return True

    def _on_grid_changed_outside(self) -> None:
        if self._mode == "grid" and not _grid(self.viewer).enabled:
            self.exit_mode()

    # ---------------------------------------------------------------- 3D height view
    def _on_height_toggled(self, on: bool) -> None:
        if on:
            if self._guard(self.show_height_surface) is None:
                self._set_checked(self.height_btn, False)
        elif self._mode == "3d":
            self.exit_mode()

    def _on_scale_changed(self, *_):
        if self._mode == "3d":
            self._guard(self.update_height_surface)

    def update_height_surface(self):
        """Add or update the Surface layer "{src} height surface" (returns it)."""
        meta = self._meta()
        index_layer = self._role("index")
        if index_layer is None:
            raise api.EdofError(f"the focus index layer of {meta['source']!r} is not in the viewer")
        fused_layer = self._role("fused")
        index = np.asarray(layer_array(index_layer))
        t = 0
        timelapse = index.ndim == 3
        if timelapse:  # the frame on screen
            tyx = self._source_tyx(self.viewer.dims.point)
            t = tyx[0] if tyx is not None else int(np.round(index_layer.world_to_data(self.viewer.dims.point)[0]))
            t = int(np.clip(t, 0, index.shape[0] - 1))
            index = index[t]
        verts, faces, rows, cols = height_mesh(
            index, pixel_size=(self.py_spin.value(), self.px_spin.value()),
            z_step=self.z_spin.value(), exaggeration=self.exag_spin.value())
        kwargs = {}
        if fused_layer is not None:
            rgb = bool(getattr(fused_layer, "rgb", False))
            fused = engine_view(np.asarray(layer_array(fused_layer)), fused_layer, meta)  # ([T,] Y, X[, C])
            if timelapse:  # the same frame
                fused = fused[t]
            if fused.ndim == 3 and not rgb:  # channels (not colour): their mean, each stretched
                tex = np.mean([_texture_image(fused[..., c]) for c in range(fused.shape[-1])], axis=0)
            else:
                tex = _texture_image(fused, None if rgb else fused_layer.contrast_limits)
            # the full-resolution fused image as a texture over the (possibly subsampled) mesh;
            # white vertex colours so that the texture shows unaltered
            kwargs = dict(texture=tex, texcoords=surface_texcoords(rows, cols, index.shape),
                          vertex_colors=np.ones((len(verts), 4), np.float32))
        name = f"{meta['source']} height surface"
        md = {"napari_edof": {"role": "height", "source": meta["source"], "t": t,
                              "z_step": self.z_spin.value(), "exaggeration": self.exag_spin.value(),
                              "pixel_size": (self.py_spin.value(), self.px_spin.value())}}
        old = [ly for ly in self.viewer.layers if (edof_meta(ly) or {}).get("role") == "height"
               and (edof_meta(ly) or {}).get("source") == meta["source"]]
        for ly in old:
            self.viewer.layers.remove(ly)
        translate = None
        src = find_source_layer(self.viewer, meta["source"])
        if src is not None:
            axes = meta["axes"].upper()
            layer_axes = axes[:-1] if getattr(src, "rgb", False) and axes.endswith("C") else axes
            zyx = [layer_axes.index(a) for a in "ZYX"]
            tr = np.asarray(src.translate, dtype=float)
            translate = tuple(float(tr[i]) for i in zyx)
            units = getattr(src, "units", None)
            if units is not None and len(units) == src.ndim:
                kwargs["units"] = tuple(units[i] for i in zyx)  # consistent units: no napari warning
        surf = self.viewer.add_surface((verts, faces), name=name, metadata=md, shading="smooth",
                                       translate=translate, **kwargs)
        return surf

    def show_height_surface(self):
        """Build the height surface, show it alone and switch the viewer to 3D."""
        self.exit_mode()
        surf = self.update_height_surface()
        self._hide_all_but([surf])
        self._mode = "3d"
        self.viewer.dims.ndisplay = 3
        # tilted, so that the relief shows (straight down, a height map looks flat)
        self.viewer.reset_view()
        cam = _camera(self.viewer)
        cam.angles = TILTED_VIEW
        cam.zoom = cam.zoom * 0.8  # (tilted, the surface reaches further than its footprint)
        self._set_checked(self.height_btn, True)
        return surf

    @property
    def height_layer(self):
        meta = self._meta() if self.decision_layer is not None else None
        for ly in self.viewer.layers:
            m = edof_meta(ly) or {}
            if m.get("role") == "height" and meta and m.get("source") == meta["source"]:
                return ly
        return None

    # ---------------------------------------------------------------- view modes
    def _hide_all_but(self, keep) -> None:
        self._saved_visibility = {id(ly): (weakref.ref(ly), ly.visible) for ly in self.viewer.layers}
        for ly in self.viewer.layers:
            ly.visible = any(ly is k for k in keep)

    def exit_mode(self) -> None:
        """Leave side by side / 3D height view: back to 2D, the layers' visibility restored."""
        mode, self._mode = self._mode, None
        if mode == "grid":
            _grid(self.viewer).enabled = False
        elif mode == "3d":
            self.viewer.dims.ndisplay = 2
            surf = self.height_layer
            if surf is not None:  # removed: a hidden surface would still stretch the z slider
                self.viewer.layers.remove(surf)
        if self._saved_visibility:
            for ref, vis in self._saved_visibility.values():
                ly = ref()
                if ly is not None and ly in self.viewer.layers and edof_meta(ly) and \
                        edof_meta(ly).get("role") == "height":
                    continue
                if ly is not None and ly in self.viewer.layers:
                    ly.visible = vis
        self._saved_visibility = None
        self._set_checked(self.grid_btn, False)
        self._set_checked(self.height_btn, False)

    @staticmethod
    def _set_checked(btn, on: bool) -> None:
        btn.blockSignals(True)
        btn.setChecked(on)
        btn.blockSignals(False)


#: the camera angles (degrees) of the 3D height view: tilted by 45 degrees and turned a little
TILTED_VIEW = (-35.0, 30.0, 145.0)


def _theme_colours(viewer) -> tuple[str, str]:
    """(background, text) colours of the viewer's napari theme, as hex strings."""
    try:
        from napari.utils.theme import get_theme

        theme = get_theme(getattr(viewer, "theme", "dark"))
        return theme.background.as_hex(), theme.text.as_hex()
    except Exception:  # noqa: BLE001 - an unknown theme: napari's dark colours
        return "#262930", "#f0f1f2"


def _camera(viewer):
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    cam = getattr(scene, "camera", None)
    return cam if cam is not None else viewer.camera


def _grid(viewer):
    """The viewer's grid model (``viewer.canvas.grid`` since napari 0.9, ``viewer.grid`` before)."""
    canvas = getattr(viewer, "canvas", None)
    grid = getattr(canvas, "grid", None)
    return grid if grid is not None else viewer.grid


def _pick(layer, t, y, x):
    if layer is None:
        return None
    a = layer_array(layer)
    try:
        v = a[t, y, x] if np.ndim(a) == 3 else a[y, x]
    except IndexError:
        return None
    return float(np.asarray(v))


def _modifier_names(event) -> set:
    mods = getattr(event, "modifiers", ()) or ()
    out = set()
    for m in mods:
        out.add(str(getattr(m, "name", m)))
    return out


__all__ = ["FocusInspector", "height_mesh", "measure_settings"]
