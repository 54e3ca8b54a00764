"""The "Fuse focus stack" dock widget.

Pick an Image layer, its z axis (and channel axis / guide channel), a method — whose parameter
widgets are generated from the method's declared :class:`Param`s — a device and a tile size, and
press Run. Fusion runs ``napari_edof.api.fuse_iter`` in a napari ``thread_worker`` (one progress
step per tile, per time point for a time-lapse); Cancel stops it before the next tile. Results
appear as layers beside the input (see :mod:`napari_edof._qt.layers`); a re-run updates them.

``FusionWidget.run(sync=True)`` drains the same generator in the calling thread (tests, scripts).
Errors are shown as napari notifications with their message, never raised.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from napari.layers import Image
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from napari_edof import api

from .layers import ALL_ROLES, add_or_update_result_layers, guess_axes, is_result_layer, unwrap
from .retouch import connect_retouch

_INT_LIMIT = 2**31 - 1
_UNIT_NAMES = {"micrometer": "µm", "nanometer": "nm", "millimeter": "mm", "centimeter": "cm", "meter": "m",
               "pixel": "pixel"}


# --------------------------------------------------------------------------------------------
# parameter widgets generated from a method's Params
# --------------------------------------------------------------------------------------------
class ParamWidget:
    """A Qt editor for one :class:`Param` (combo for choices, check box for bool, spin boxes)."""

    def __init__(self, param):
        self.param = param
        t = param.type
        if param.choices is not None:
            w = QComboBox()
            for c in param.choices:
                w.addItem(str(c), c)
            i = list(param.choices).index(param.default) if param.default in param.choices else 0
            w.setCurrentIndex(i)
        elif t is bool:
            w = QCheckBox()
            w.setChecked(bool(param.default))
        elif t is int:
            w = QSpinBox()
            lo = int(param.min) if param.min is not None else -_INT_LIMIT
            hi = int(param.max) if param.max is not None else _INT_LIMIT
            w.setRange(lo, hi)
            w.setValue(int(param.default))
        elif t is float:
            w = QDoubleSpinBox()
            lo = float(param.min) if param.min is not None else -1e12
            hi = float(param.max) if param.max is not None else 1e12
            default = float(param.default)
            # enough decimals to show the default (and small bounds) exactly
            small = [abs(v) for v in (default, param.min, param.max) if v not in (None, 0)]
            digits = max([4] + [3 - math.floor(math.log10(v)) for v in small if v < 1])
            w.setDecimals(min(digits, 12))
            w.setRange(lo, hi)
            bounded = param.min is not None and param.max is not None
            span = (hi - lo) if bounded else (abs(default) or 1.0)
            w.setSingleStep(10.0 ** math.floor(math.log10(max(span, 1e-12))) / 10)
            w.setValue(default)
        else:
            w = QLineEdit(str(param.default) if param.default is not None else "")
        w.setObjectName(f"param_{param.name}")
        tip = param.help
        if param.min is not None or param.max is not None:
            tip += f" [{'' if param.min is None else param.min} .. {'' if param.max is None else param.max}]"
        w.setToolTip(tip.strip())
        self.widget = w

    def value(self):
        w, p = self.widget, self.param
        if isinstance(w, QComboBox):
            return w.currentData()
        if isinstance(w, QCheckBox):
            return w.isChecked()
        if isinstance(w, QSpinBox):
            return int(w.value())
        if isinstance(w, QDoubleSpinBox):
            return float(w.value())
        text = w.text()
        if p.type is str:
            return text
        try:
            return p.type(text)
        except (TypeError, ValueError):
            raise api.EdofError(f"{p.name}={text!r} is not a valid {getattr(p.type, '__name__', p.type)}") from None

    def set_value(self, v) -> None:
        w = self.widget
        if isinstance(w, QComboBox):
            i = w.findData(v)
            if i < 0:
                raise api.EdofError(f"{self.param.name}={v!r} is not one of {', '.join(map(str, self.param.choices))}")
            w.setCurrentIndex(i)
        elif isinstance(w, QCheckBox):
            w.setChecked(bool(v))
        elif isinstance(w, (QSpinBox, QDoubleSpinBox)):
            w.setValue(v)
        else:
            w.setText(str(v))


class _Collapsible(QWidget):
    """A section whose content shows when its header (an arrow button) is checked; collapsed first."""

    def __init__(self, title: str, parent=None):
        super().__init__(parent)
        self.header = QToolButton()
        self.header.setText(title)
        self.header.setCheckable(True)
        self.header.setChecked(False)
        self.header.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.header.setArrowType(Qt.ArrowType.RightArrow)
        self.header.setStyleSheet("QToolButton { border: none; font-weight: bold; }")
        self.content = QWidget()
        self.content_layout = QVBoxLayout(self.content)
        self.content_layout.setContentsMargins(0, 0, 0, 0)
        self.content.setVisible(False)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.header)
        lay.addWidget(self.content)
        self.header.toggled.connect(self.set_expanded)

    def set_expanded(self, on: bool) -> None:
        self.header.blockSignals(True)
        self.header.setChecked(on)
        self.header.blockSignals(False)
        self.header.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        self.content.setVisible(on)

    def is_expanded(self) -> bool:
        return self.header.isChecked()


class _DeviceCombo(QComboBox):
    """auto / cpu / the GPUs torch sees — torch is asked only when the list is opened."""

    def __init__(self):
        super().__init__()
        self.addItem("auto", "auto")
        self.addItem("cpu", "cpu")
        self._queried = False

    def refresh(self) -> None:
        if self._queried:
            return
        self._queried = True
        devices = _available_devices()
        cur = self.currentData()
        for d in devices:
            if self.findData(d) < 0:
                self.addItem(d, d)
        i = self.findData(cur)
        self.setCurrentIndex(max(i, 0))

    def showPopup(self):  # noqa: N802 (Qt name)
        self.refresh()
        super().showPopup()


def _available_devices() -> list[str]:
    fn = getattr(api, "available_devices", None)
    if fn is None:  # not re-exported by api yet: the Qt-free helper (imports torch lazily)
        from napari_edof.nn.device import available_devices as fn
    try:
        return list(fn())
    except Exception:  # a broken torch install must not break the widget
        return ["cpu"]


# --------------------------------------------------------------------------------------------
# the widget
# --------------------------------------------------------------------------------------------
@dataclass
class FusionJob:
    """Everything one run needs (made in the main thread before fusion starts)."""

    layer: Any
    stack: Any
    axes: str
    z_axis: int
    kwargs: dict = field(default_factory=dict)
    #: the layers of a file's channels fused together (one shared index), in channel order
    channel_layers: list = field(default_factory=list)


def _edof_md(layer) -> dict:
    md = getattr(layer, "metadata", None)
    md = md.get("napari_edof") if isinstance(md, dict) else None
    return md if isinstance(md, dict) else {}


def _common_name(names: list[str]) -> str:
    """"stack [c0]", "stack [c1]" -> "stack" (the channel layers' shared name)."""
    import os

    prefix = os.path.commonprefix(names).rstrip(" [(_-")
    return prefix or names[0]


def _fusable(layer) -> bool:
    """An Image layer that can be fused: not a result, with a z axis besides Y and X (napari's
    ``ndim`` leaves out an RGB layer's colour axis)."""
    return isinstance(layer, Image) and not is_result_layer(layer) and layer.ndim >= 3


class _Failure:
    """An exception caught inside the worker (kept out of napari's traceback notifications)."""

    def __init__(self, exc: BaseException):
        self.exc = exc


def _first(gen):
    """The single result of a one-stack :func:`napari_edof.api.fuse_many_iter` run."""
    results = yield from gen
    return results[0]


def _drive(gen):
    """Generator run in the worker thread: relay fuse_iter's progress, return its result."""
    try:
        result = yield from gen
    except Exception as exc:  # noqa: BLE001 - shown to the user as a notification
        return _Failure(exc)
    return result


def _message(exc: BaseException) -> str:
    if isinstance(exc, api.EdofError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "napari-edof: out of memory while fusing; use a smaller tile size or a smaller stack"
    return f"napari-edof: fusion failed: {type(exc).__name__}: {exc}"


#: the fewest seconds between two redraws of the progress display, and from Run to the first. Each
#: redraw repaints the window around napari's canvas: in a viewer under Xvfb (software OpenGL) 9
#: redraws for the 9 tiles of a 16 x 2048 x 2048 stack took 0.5-0.7 s of a 2 s run (Run -> layers
#: 1.3-1.4 s with no progress display at all; benchmarks/bench_viewer.py)
SHOW_EVERY = 0.5


class FusionWidget(QWidget):
    """Dock widget: fuse an Image layer's focus stack into an all-in-focus image.

    Signals
    -------
    fusion_done(dict) : emitted after result layers were added or updated, with
        ``{"result": FusionResult, "layers": {role: layer}, "source": layer}``.
    progressed(Progress) : emitted (in the main thread) for every tile done.
    run_finished() : emitted when a threaded run is over (done, cancelled or failed) and the
        widget is idle again.
    """

    fusion_done = Signal(object)
    progressed = Signal(object)
    run_finished = Signal()

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        # napari hands plugins a proxy of the viewer whose layers are new proxies at every access:
        # the widget keeps the viewer itself, so that layers can be matched by identity
        self.viewer = unwrap(napari_viewer)
        from . import warm

        warm.start()  # what napari imports for the first Run's decision layer (a Labels layer), now
        self._worker = None
        self._gen = None
        self._pbar = None
        self._pending, self._shown_at = None, -math.inf  # (the progress display)
        self._flush_timer = QTimer(self)
        self._flush_timer.setSingleShot(True)
        self._flush_timer.timeout.connect(self._flush_progress)
        self._cancelled = False
        self._active = False
        self._steps: list | None = None  # worker signals that arrived while one was being handled
        self._n_frames = 1
        self._param_widgets: dict[str, ParamWidget] = {}
        self.last_result = None
        self.last_layers: dict = {}

        # what a user changes first on top; the rest in a collapsed "Advanced" section; all of it in
        # a scroll area, with Run / Cancel and the status always in view below it (a laptop's
        # 1366 x 768 screen leaves a dock about 600 px)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        body = QWidget()
        lay = QVBoxLayout(body)
        lay.addWidget(self._build_input())
        lay.addWidget(self._build_method())
        lay.addWidget(self._build_registration())
        self.advanced = _Collapsible("Advanced")
        self.advanced.setToolTip("Parameters most runs leave as they are: the method's finer settings, "
                                 "registration edges, device, precision, tile size, a local cluster, retouching")
        adv = self.advanced.content_layout
        self.advanced_params_box = QGroupBox("Method (advanced)")
        self.advanced_params_form = QFormLayout(self.advanced_params_box)
        adv.addWidget(self.advanced_params_box)
        adv.addWidget(self._advanced_registration)
        adv.addWidget(self._build_run())
        lay.addWidget(self.advanced)
        lay.addStretch(1)
        self.scroll.setWidget(body)
        outer.addWidget(self.scroll, 1)
        self._scroll_body = body
        bottom = QVBoxLayout()
        bottom.setContentsMargins(9, 0, 9, 9)
        outer.addLayout(bottom)
        lay = bottom
        self._build_buttons(lay)
        self._connect()
        self._on_method_changed()
        self._fit_width()
        self._refresh_layers()
        active = self.viewer.layers.selection.active
        if _fusable(active):
            self.set_layer(active)

    def _build_input(self) -> QGroupBox:
        """The input group: the layer, its z and channel axes, the guide."""
        box = QGroupBox("Input")
        form = QFormLayout(box)
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("The Image layer holding the focus stack")
        self.z_combo = QComboBox()
        self.z_combo.setToolTip("The axis along which the planes are focused at different depths")
        self.channel_combo = QComboBox()
        self.channel_combo.setToolTip("An axis holding channels (one focus index is shared by all)")
        self.guide_combo = QComboBox()
        self.guide_combo.setToolTip("What focus is measured on for colour / multichannel data")
        self.axes_label = QLabel("")
        self.channels_check = QCheckBox("")
        self.channels_check.setChecked(True)
        self.channels_check.setToolTip(
            "The file's channels were opened as one layer each: fuse them together, with ONE focus index "
            "measured on the guide ('Focus from'), so that the channels stay aligned; each channel's fused "
            "image keeps its name and colour")
        self.channels_check.setVisible(False)
        form.addRow("Layer", self.layer_combo)
        form.addRow(self.channels_check)
        form.addRow("Z axis", self.z_combo)
        form.addRow("Channel axis", self.channel_combo)
        form.addRow("Focus from", self.guide_combo)
        form.addRow("Axes", self.axes_label)
        return box

    def _build_method(self) -> QGroupBox:
        """The method group: the method, its summary and its parameters (filled per method)."""
        box = QGroupBox("Method")
        v = QVBoxLayout(box)
        self.method_combo = QComboBox()
        from napari_edof.core.spec import TORCH_INSTALL, available

        for spec in api.list_methods():
            ok = available(spec)
            self.method_combo.addItem(spec.name if ok else f"{spec.name} (needs PyTorch)", spec.name)
            i = self.method_combo.count() - 1
            tip = spec.summary if ok else f"{spec.summary}\nUnavailable: PyTorch is not installed. {TORCH_INSTALL}"
            self.method_combo.setItemData(i, tip, Qt.ItemDataRole.ToolTipRole)
            if not ok:  # listed, so that users see it exists, but not choosable
                item = self.method_combo.model().item(i)
                if item is not None:
                    item.setEnabled(False)
        self.method_summary = QLabel("")
        self.method_summary.setWordWrap(True)
        self.params_box = QWidget()
        self.params_form = QFormLayout(self.params_box)
        self.params_form.setContentsMargins(0, 0, 0, 0)
        v.addWidget(self.method_combo)
        v.addWidget(self.method_summary)
        v.addWidget(self.params_box)
        return box

    def _build_registration(self) -> QGroupBox:
        """The registration group: mode, edges, the degrees of freedom."""
        box = QGroupBox("Registration")
        form = QFormLayout(box)
        self.register_combo = QComboBox()
        for mode, tip in (("none", "the planes are already aligned"),
                          ("translation", "shifts (phase correlation)"),
                          ("similarity", "shifts, scale (focus breathing) and rotation (Fourier-Mellin)"),
                          ("affine", "feature matching (ORB + RANSAC)")):
            self.register_combo.addItem(mode, mode)
            self.register_combo.setItemData(self.register_combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.register_combo.setToolTip("Align every plane to the middle one before fusing")
        self.register_edges = QComboBox()
        self.register_edges.setToolTip("What happens at the borders the aligned planes no longer cover")
        for e, tip in (("crop", "keep only the area every plane covers (the result layers are shifted to "
                                "match; the default, as in the CLI and the API)"),
                       ("edge", "keep the size; pad with the border pixels"),
                       ("zero", "keep the size; pad with zeros")):
            self.register_edges.addItem(e, e)
            self.register_edges.setItemData(self.register_edges.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.register_scale = QCheckBox("scale")
        self.register_scale.setChecked(True)
        self.register_scale.setToolTip("Allow magnification changes between planes (focus breathing)")
        self.register_rotation = QCheckBox("rotation")
        self.register_rotation.setChecked(True)
        self.register_hint = QLabel("")
        self.register_hint.setWordWrap(True)
        self.register_hint.setVisible(False)
        dof = QHBoxLayout()
        dof.addWidget(self.register_scale)
        dof.addWidget(self.register_rotation)
        form.addRow("Align planes", self.register_combo)
        form.addRow(self.register_hint)
        self._advanced_registration = QGroupBox("Registration (advanced)")
        f2 = QFormLayout(self._advanced_registration)
        f2.addRow("Edges", self.register_edges)
        f2.addRow("Allow", dof)
        self.register_combo.currentIndexChanged.connect(self._on_register_changed)
        self._on_register_changed()
        return box

    def _build_run(self) -> QGroupBox:
        """The run group: device, precision, tile size, the cluster, retouching, the audit."""
        box = QGroupBox("Run")
        box.setToolTip("Where and how the fusion runs")
        form = QFormLayout(box)
        self.device_combo = _DeviceCombo()
        self.device_combo.setToolTip("auto: a GPU when the method can use one, else the CPU")
        self.precision_combo = QComboBox()
        for label, value in (("auto", "auto"), ("float32", "float32"), ("half (if the index stays identical)", "half")):
            self.precision_combo.addItem(label, value)
        self.precision_combo.setToolTip(
            "Learned methods: half runs the network in half precision (a GPU's speed-up) if the first tile's "
            "focus index is identical to float32's, else in float32; auto: half on CUDA for methods measured "
            "safe in it")
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(0, 16384)
        self.tile_spin.setSingleStep(64)
        self.tile_spin.setValue(0)
        self.tile_spin.setSpecialValueText("auto")
        self.tile_spin.setSuffix(" px")
        self.tile_spin.setToolTip("Tile side in pixels, at least 16 (auto: the method's own default; "
                                  "a size at least the image's: the whole image at once)")
        self.retouch_check = QCheckBox("painting the decision layer re-renders the fused image")
        self.retouch_check.setChecked(True)
        self.retouch_check.setToolTip("Retouch: paint label = plane + 1 on the decision layer with napari's "
                                      "label tools; the fused image and focus map follow (napari's undo works)")
        self.audit_check = QCheckBox("for every method (methods that synthesise values always are)")
        self.audit_check.setToolTip("Audit: an 'audit' layer (each fused value's distance from the nearest source "
                                    "value) and an 'audit mask' (magenta where the value lies outside every plane's "
                                    "3 x 3 local range: invented). Always made for vaeedof and fmb-fn's network "
                                    "output; tick it to audit any method")
        self.cluster_check = QCheckBox("on a local dask cluster of")
        self.cluster_check.setToolTip("Run the stripes of tiles (and the time points) in worker processes of a "
                                      "dask.distributed LocalCluster, kept for the session (needs 'distributed')")
        self.cluster_workers = QSpinBox()
        self.cluster_workers.setRange(1, 256)
        self.cluster_workers.setValue(2)
        self.cluster_workers.setSuffix(" workers")
        cl = QHBoxLayout()
        cl.addWidget(self.cluster_check)
        cl.addWidget(self.cluster_workers)
        form.addRow("Device", self.device_combo)
        form.addRow("Precision", self.precision_combo)
        form.addRow("Tile size", self.tile_spin)
        form.addRow("Run", cl)
        form.addRow("Retouch", self.retouch_check)
        form.addRow("Audit", self.audit_check)
        return box

    def _build_buttons(self, lay) -> None:
        """Run and Cancel, and the status line below them."""
        row = QHBoxLayout()
        self.run_button = QPushButton("Run")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        lay.addLayout(row)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        lay.addStretch(1)

    def _connect(self) -> None:
        """The widgets' signals, and the viewer's layer list events."""
        self.layer_combo.currentIndexChanged.connect(self._on_layer_changed)
        self.channels_check.toggled.connect(self._on_axes_changed)
        self.z_combo.currentIndexChanged.connect(self._on_axes_changed)
        self.channel_combo.currentIndexChanged.connect(self._on_axes_changed)
        self.method_combo.currentIndexChanged.connect(self._on_method_changed)
        self.run_button.clicked.connect(lambda: self.run())
        self.cancel_button.clicked.connect(self.cancel)
        ev = self.viewer.layers.events
        for name in ("inserted", "removed", "moved", "reordered"):
            emitter = getattr(ev, name, None)
            if emitter is not None:
                emitter.connect(self._refresh_layers)
        for layer in self.viewer.layers:
            layer.events.name.connect(self._refresh_layers)

    # ------------------------------------------------------------------ layer & axes choices
    def _refresh_layers(self, event=None):
        if event is not None and getattr(event, "type", "") == "inserted":
            try:
                event.value.events.name.connect(self._refresh_layers)
            except AttributeError:
                pass
        cur = self.layer_combo.currentData()
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        for layer in self.viewer.layers:  # only layers that can be fused: Image stacks (3D or more)
            if _fusable(layer):
                self.layer_combo.addItem(layer.name, layer)
        i = next((k for k in range(self.layer_combo.count()) if self.layer_combo.itemData(k) is cur), -1)
        if i < 0 and self.layer_combo.count():
            i = 0
        self.layer_combo.setCurrentIndex(i)
        self.layer_combo.blockSignals(False)
        if self.layer_combo.currentData() is not cur:
            self._on_layer_changed()

    def current_layer(self):
        return self.layer_combo.currentData()

    def set_layer(self, layer) -> None:
        """Choose the input layer (an Image layer of the viewer with a z axis)."""
        layer = unwrap(layer)
        for k in range(self.layer_combo.count()):
            if self.layer_combo.itemData(k) is layer:
                self.layer_combo.setCurrentIndex(k)
                return
        if isinstance(layer, Image) and layer in self.viewer.layers and not is_result_layer(layer):
            raise api.EdofError(f"layer {layer.name!r} is a {layer.ndim}D image, not a focus stack: it needs "
                                "a z axis plus Y and X")
        raise api.EdofError(f"layer {getattr(layer, 'name', layer)!r} is not an Image layer in the viewer")

    def _default_axes(self, layer) -> tuple[int, int | None]:
        """(z axis, channel axis) for a layer: from the reader's metadata, else Z before Y, X."""
        nd = layer.ndim
        md = layer.metadata.get("napari_edof", {}) if isinstance(layer.metadata, dict) else {}
        axes = md.get("layer_axes") or md.get("axes")
        if isinstance(axes, str):
            dims = axes[:-1] if layer.rgb and axes.endswith("C") else axes
            if len(dims) == nd and "Z" in dims and dims.endswith("YX"):
                c = dims.index("C") if "C" in dims else None
                return dims.index("Z"), c
        return max(nd - 3, 0), None

    def _on_layer_changed(self, *_):
        layer = self.current_layer()
        for c in (self.z_combo, self.channel_combo):
            c.blockSignals(True)
            c.clear()
        if layer is not None:
            shape = layer.data[0].shape if layer.multiscale else layer.data.shape
            nd = layer.ndim
            lead = max(nd - 2, 0)
            for i in range(lead):
                self.z_combo.addItem(f"{i} (size {shape[i]})", i)
            if layer.rgb:
                self.channel_combo.addItem("RGB (colour in the last axis)", None)
            else:
                self.channel_combo.addItem("none", None)
                for i in range(lead):
                    self.channel_combo.addItem(f"{i} (size {shape[i]})", i)
            z, c = self._default_axes(layer)
            self.z_combo.setCurrentIndex(max(self.z_combo.findData(z), 0))
            if c is not None:
                self.channel_combo.setCurrentIndex(max(self.channel_combo.findData(c), 0))
        self.channel_combo.setEnabled(layer is not None and not layer.rgb)
        for c in (self.z_combo, self.channel_combo):
            c.blockSignals(False)
        self._on_axes_changed()

    def channel_group(self, layer=None) -> list:
        """The layers holding the channels of ``layer``'s file (the reader opens one layer per
        channel), in channel order; [] when the layer is not one of two or more such channels."""
        layer = self.current_layer() if layer is None else unwrap(layer)
        md = _edof_md(layer)
        if layer is None or "channel" not in md or layer.rgb:
            return []
        key = (tuple(md.get("source") or ()), md.get("file_axes"))
        shape = layer.data[0].shape if layer.multiscale else layer.data.shape
        group = {}
        for other in self.viewer.layers:
            m = _edof_md(other)
            if (_fusable(other) and "channel" in m and (tuple(m.get("source") or ()), m.get("file_axes")) == key
                    and (other.data[0].shape if other.multiscale else other.data.shape) == shape):
                group.setdefault(int(m["channel"]), other)
        return [group[c] for c in sorted(group)] if len(group) > 1 else []

    def _grouped(self) -> list:
        """The channel layers this run fuses together ([] for one layer)."""
        return self.channel_group() if self.channels_check.isChecked() else []

    def _n_channels(self) -> int:
        layer = self.current_layer()
        if layer is None:
            return 1
        group = self._grouped()
        if group:
            return len(group)
        shape = layer.data[0].shape if layer.multiscale else layer.data.shape
        if layer.rgb:
            return shape[-1]
        c = self.channel_combo.currentData()
        return shape[c] if c is not None and c < len(shape) else 1

    def _on_axes_changed(self, *_):
        layer = self.current_layer()
        group = self.channel_group()
        self.channels_check.setVisible(bool(group))
        if group:
            self.channels_check.setText(f"fuse its file's {len(group)} channels together (one shared index)")
        text = ""
        if layer is not None:
            try:
                text = self.axes()
            except api.EdofError as exc:
                text = f"<i>{exc}</i>"
        self.axes_label.setText(text)
        cur = self.guide_combo.currentData()
        self.guide_combo.clear()
        self.guide_combo.addItem("auto", "auto")
        n = self._n_channels()
        if layer is not None and layer.rgb and n in (3, 4):
            self.guide_combo.addItem("luminance", "luminance")
        if n > 1:
            self.guide_combo.addItem("mean", "mean")
            group = self._grouped()
            names = [_edof_md(ly).get("channel_name") for ly in group] if len(group) == n else [None] * n
            for i in range(n):  # the file's channel name beside the number, where it has one
                self.guide_combo.addItem(f"channel {i}" + (f" ({names[i]})" if names[i] else ""), i)
        self.guide_combo.setCurrentIndex(max(self.guide_combo.findData(cur), 0))
        self.guide_combo.setEnabled(n > 1)
        checked = getattr(self, "_checked_layer", None)
        if layer is not None and (checked is None or checked() is not layer):
            import weakref

            self._checked_layer = weakref.ref(layer)  # (once per layer: three planes read)
            self.check_shift()

    def axes(self) -> str:
        """The axes string of the chosen layer's data for the current z/channel choice."""
        layer = self.current_layer()
        if layer is None:
            raise api.EdofError("no focus stack to fuse: open a focus stack first (an image with a z axis "
                                "besides Y and X; File > Open Sample has one)")
        z = self.z_combo.currentData()
        if z is None:
            raise api.EdofError(
                f"layer {layer.name!r} is a {layer.ndim}D image, not a focus stack: it needs a z axis plus Y and X"
            )
        axes = guess_axes(layer.ndim, bool(layer.rgb), z, self.channel_combo.currentData())
        if self._grouped() and "C" not in axes:
            axes = "C" + axes  # the channel layers stacked in front
        return axes

    # ------------------------------------------------------------------ method & parameters
    def current_method(self):
        return api.get_method(self.method_combo.currentData())

    def _on_method_changed(self, *_):
        for form in (self.params_form, self.advanced_params_form):
            while form.rowCount():
                form.removeRow(0)
        self._param_widgets = {}
        name = self.method_combo.currentData()
        if name is None:
            return
        spec = api.get_method(name)
        from napari_edof.core import warmup

        warmup.start(name)  # focus-fuse: numba loads in a thread now, not in the first Run's tiles
        self.method_summary.setText(spec.summary)
        for p in spec.params:
            pw = ParamWidget(p)
            self._param_widgets[p.name] = pw
            label = QLabel(p.title)
            label.setToolTip(f"{p.help} (parameter {p.name!r})")
            (self.advanced_params_form if p.advanced else self.params_form).addRow(label, pw.widget)
        self.advanced_params_box.setVisible(self.advanced_params_form.rowCount() > 0)
        if hasattr(self, "_scroll_body"):
            self._fit_width()
        gpu = self._update_device_enabled()
        if not gpu:
            self.device_combo.setCurrentIndex(0)
        self.device_combo.setToolTip(
            "auto: a GPU when the method can use one, else the CPU" if gpu
            else f"{spec.name} runs on the CPU only"
        )

    def _fit_width(self) -> None:
        """The scroll area as wide as its content (with Advanced open), so nothing is cut off at the
        right and only vertical scrolling is needed."""
        body = self._scroll_body
        was = self.advanced.is_expanded()
        self.advanced.content.setVisible(True)
        width = body.minimumSizeHint().width()
        self.advanced.content.setVisible(was)
        self.scroll.setMinimumWidth(width + self.scroll.verticalScrollBar().sizeHint().width())

    def set_method(self, name: str) -> None:
        i = self.method_combo.findData(name)
        if i < 0:
            api.get_method(name)  # raises the registry's clear error for an unknown name
            self.method_combo.addItem(name, name)  # registered after the widget was built
            i = self.method_combo.count() - 1
        self.method_combo.setCurrentIndex(i)

    def param_widget(self, name: str):
        """The Qt editor generated for parameter ``name`` of the current method."""
        return self._param_widgets[name].widget

    def params(self) -> dict:
        """The current method's parameter values, as the widgets show them."""
        return {k: pw.value() for k, pw in self._param_widgets.items()}

    def set_params(self, **values) -> None:
        for k, v in values.items():
            if k not in self._param_widgets:
                raise api.EdofError(f"method {self.method_combo.currentData()!r} has no parameter {k!r}")
            self._param_widgets[k].set_value(v)

    # ------------------------------------------------------------------ running
    def _physical(self, layer, axes: str, z: int):  # axes: the layer's own
        """(pixel_size, z_step, unit) from the layer's scale and units (metadata as a fallback)."""
        dims = axes[:-1] if layer.rgb else axes
        md = layer.metadata.get("napari_edof", {}) if isinstance(layer.metadata, dict) else {}
        scale = tuple(float(s) for s in layer.scale)
        units = [str(u) for u in (getattr(layer, "units", None) or ())]
        unit = _UNIT_NAMES.get(units[-1], units[-1]) if units else "pixel"
        if unit == "pixel":
            unit = md.get("unit") or "pixel"
        known = unit != "pixel"
        py, px = scale[dims.index("Y")], scale[dims.index("X")]
        pixel_size = (py, px) if (known or (py, px) != (1.0, 1.0)) else None
        sz = scale[dims.index("Z")]
        z_step = sz if (known or sz != 1.0) else md.get("z_step")
        return pixel_size, z_step, unit

    def prepare(self) -> FusionJob:
        """Check the choices and build the stack and fuse options (raises EdofError)."""
        layer = self.current_layer()
        axes = self.axes()
        z = self.z_combo.currentData()
        group = self._grouped()
        layer_axes = axes[1:] if group else axes
        data = layer.data[0] if layer.multiscale else layer.data
        pixel_size, z_step, unit = self._physical(layer, layer_axes, z)
        name = layer.name
        if group:  # one stack, channels first: one focus index for all of them
            arrays = [ly.data[0] if ly.multiscale else ly.data for ly in group]
            if any(hasattr(a, "dask") for a in arrays):
                import dask.array as da

                data = da.stack([da.asarray(a) for a in arrays])
            else:
                data = np.stack([np.asarray(a) for a in arrays])
            name = _common_name([ly.name for ly in group])
        stack = api.as_stack(data, axes=axes, rgb=bool(layer.rgb), name=name,
                             pixel_size=pixel_size, z_step=z_step, unit=unit)
        names = [_edof_md(ly).get("channel_name") for ly in group]
        if any(names):  # the file's channel names, into the result's provenance
            stack.metadata["channels"] = [{"name": nm, "color": None} for nm in names]
        tile = int(self.tile_spin.value()) or "auto"
        device = self.device_combo.currentData() if self.device_combo.isEnabled() else "auto"
        precision = self.precision_combo.currentData() if self.precision_combo.isEnabled() else "auto"
        kwargs = dict(method=self.method_combo.currentData(), params=self.params(), tile=tile,
                      device=device, guide=self._guide(), precision=precision)
        if self.audit_check.isChecked():
            kwargs["audit"] = True  # (otherwise the method's choice: on for methods that synthesise)
        reg = self.registration()
        if reg is not None:
            kwargs["register"] = reg
        if group:
            layer = group[0]
        return FusionJob(layer=layer, stack=stack, axes=layer_axes if group else axes, z_axis=z, kwargs=kwargs,
                         channel_layers=group)

    def registration(self) -> dict | None:
        """The ``register=`` option of the run (None: no registration)."""
        mode = self.register_combo.currentData()
        if mode in (None, "none"):
            return None
        opts = {"mode": mode, "edges": self.register_edges.currentData()}
        if mode != "translation":
            opts.update(scale=self.register_scale.isChecked(), rotation=self.register_rotation.isChecked())
        return opts

    def check_shift(self) -> float | None:
        """Suggest registration when the chosen stack's planes look shifted (a cheap phase
        correlation of its first, middle and last planes, downsampled); the shift, or None."""
        self._shift = None
        try:
            job = self.prepare()
            from napari_edof.core.registration import planes_look_shifted

            self._shift = planes_look_shifted(job.stack, guide=job.kwargs.get("guide", "auto"))
        except Exception:  # noqa: BLE001 - only a hint
            self._shift = None
        self._show_shift_hint()
        return self._shift

    def _show_shift_hint(self) -> None:
        shift = getattr(self, "_shift", None)
        show = shift is not None and self.register_combo.currentData() in (None, "none")
        self.register_hint.setVisible(show)
        if show:
            self.register_hint.setText(
                f"<i>The planes look shifted (up to {shift:.1f} px between the first, middle and last): "
                "consider aligning them (translation; similarity if focusing changes the magnification).</i>")

    def _on_register_changed(self, *_):
        self._show_shift_hint()
        mode = self.register_combo.currentData()
        on = mode not in (None, "none")
        self.register_edges.setEnabled(on)
        for w in (self.register_scale, self.register_rotation):
            w.setEnabled(on and mode != "translation")

    def _guide(self):
        g = self.guide_combo.currentData()
        return "auto" if g is None else g

    @property
    def is_running(self) -> bool:
        return self._worker is not None

    def run(self, sync: bool = False):
        """Fuse the chosen layer.

        ``sync=False`` (the Run button): start a napari thread worker and return it; the
        widget's ``run_finished`` signal fires once the layers are updated, or after a cancel or
        an error, with the widget idle again.
        ``sync=True``: fuse in this thread and return the FusionResult (None after an error).
        Errors are shown as napari notifications, never raised.
        """
        if self._worker is not None:
            show_info("napari-edof: a fusion is already running")
            return None
        try:
            job = self.prepare()
            if self.cluster_check.isChecked():  # (registered, if asked, where the run is planned)
                gen = _first(api.fuse_many_iter([job.stack], workers=int(self.cluster_workers.value()),
                                                **job.kwargs))
            else:
                gen = api.fuse_iter(job.stack, **job.kwargs)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
            return None
        self._cancelled = False
        self._active = True
        self._pending, self._shown_at = None, time.monotonic()  # (the progress display: from now on)
        self._n_frames = job.stack.n_times
        self.status.setText(f"fusing {job.stack.describe()} with {job.kwargs['method']}…")
        if sync:
            return self._run_sync(job, gen)
        return self._run_threaded(job, gen)

    def _run_sync(self, job: FusionJob, gen):
        try:
            while True:
                try:
                    step = next(gen)
                except StopIteration as stop:
                    result = stop.value
                    break
                self._on_progress(step)
            self._close_pbar()
            return self._on_result(job, result)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
            return None
        finally:
            gen.close()
            self._active = False
            self._close_pbar()

    def _run_threaded(self, job: FusionJob, gen):
        from napari.qt.threading import create_worker

        worker = create_worker(_drive, gen, _start_thread=False)
        self._worker, self._gen = worker, gen
        # connect every signal before start()
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda value, job=job: self._in_order(self._on_returned, job, value))
        worker.finished.connect(lambda: self._in_order(self._on_finished))
        self._set_running(True)
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop a running fusion before its next tile (nothing is added to the viewer)."""
        if self._worker is None:
            return
        self._cancelled = True
        self.status.setText("cancelling…")
        self.cancel_button.setEnabled(False)
        self._worker.quit()

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        for w in (self.layer_combo, self.z_combo, self.method_combo, self.params_box, self.advanced_params_box,
                  self.tile_spin,
                  self.cluster_check, self.cluster_workers, self.register_combo):
            w.setEnabled(not running)
        if running:
            for w in (self.register_edges, self.register_scale, self.register_rotation):
                w.setEnabled(False)
        else:
            self._on_register_changed()
        self.channel_combo.setEnabled(not running and not getattr(self.current_layer(), "rgb", False))
        self.guide_combo.setEnabled(not running and self._n_channels() > 1)
        if running:
            self.device_combo.setEnabled(False)
            self.precision_combo.setEnabled(False)
        else:
            self._update_device_enabled()

    def _update_device_enabled(self) -> bool:
        """The device choice is on only for methods that can run on something else than the CPU."""
        name = self.method_combo.currentData()
        spec = api.get_method(name) if name is not None else None
        gpu = spec is not None and (spec.backend == "torch" or any(d != "cpu" for d in spec.devices))
        self.device_combo.setEnabled(gpu)
        self.precision_combo.setEnabled(spec is not None and spec.backend == "torch")
        if not self.precision_combo.isEnabled():
            self.precision_combo.setCurrentIndex(0)
        return gpu

    def _in_order(self, handler, *args) -> None:
        """Handle the worker's signals one after the other, in the order they came. Creating and
        updating napari's progress bar processes events, which can deliver the next signals (more
        steps, the result, finished) inside a handler: they wait in a queue and run after it, so
        that no step is dropped and the result (its summary) comes after the last step."""
        if self._steps is not None:
            self._steps.append((handler, args))
            return
        self._steps = [(handler, args)]
        try:
            while self._steps:
                fn, a = self._steps.pop(0)
                try:
                    fn(*a)
                except Exception as exc:  # noqa: BLE001 - the rest of the queue (finished) must run
                    self._fail(exc)
        finally:
            self._steps = None

    def _on_progress(self, step) -> None:
        """Show a progress step (after the signals that came before it)."""
        self._in_order(self._show_progress, step)

    def _show_progress(self, step) -> None:
        """Every step is counted (``progressed``); the display (status line, napari's progress bar)
        is redrawn at most every :data:`SHOW_EVERY` seconds, the first time that long after Run (a
        shorter run shows no bar: its result comes first); a step held back is shown when its time
        comes (a timer), unless a later one or the result came first."""
        if not self._active or self._cancelled:
            return  # a late signal after finish/cancel (napari's progress may process events)
        wait = SHOW_EVERY - (time.monotonic() - self._shown_at)
        if wait <= 0:
            self._pending = None
            if not self._display_progress(step):
                return
        else:
            self._pending = step
            if not self._flush_timer.isActive():
                self._flush_timer.start(int(1000 * wait) + 1)
        self.progressed.emit(step)

    def _flush_progress(self) -> None:
        step, self._pending = self._pending, None
        if step is not None:
            self._in_order(self._display_progress, step)

    def _display_progress(self, step) -> bool:
        """Show ``step``; False when the run turned out to be over (nothing shown)."""
        if not self._active or self._cancelled:
            return False
        self._shown_at = time.monotonic()
        pbar = self._pbar
        if pbar is None:
            pbar = self._pbar = napari_progress(total=step.total, desc="napari-edof")
            if not self._active or self._cancelled:  # (creating it processed events: the run may be over)
                self._close_pbar()
                return False
        frames = f", frame {step.frame + 1}/{self._n_frames}" if self._n_frames > 1 else ""
        if pbar.total != step.total:
            pbar.total = step.total
        if step.stage in ("fuse", "pass 1", "cluster"):
            self.status.setText(f"{step.stage}: {step.done}/{step.total} tile steps{frames}")
        else:  # registration, ...: one step of its own
            self.status.setText(f"{step.stage}{'…' if step.done < step.total else ' done'}{frames}")
        pbar.update(step.done - pbar.n)
        # after the update: set_description redraws, so the activity dock's count label ("3/4")
        # shows this step (tqdm redraws on update only every 0.1 s: the label lagged behind the bar)
        pbar.set_description(f"napari-edof {step.stage}{frames}")
        return True

    def _close_pbar(self) -> None:
        self._pending = None
        self._flush_timer.stop()
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None

    def _on_returned(self, job: FusionJob, value) -> None:
        if self._cancelled:
            return
        if isinstance(value, _Failure):
            self._fail(value.exc)
            return
        if value is None:
            return
        self._active = False  # steps still queued behind the result must not overwrite its summary
        self._close_pbar()
        try:
            self._on_result(job, value)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    def _on_finished(self) -> None:
        worker = self._worker
        if worker is not None and worker.abort_requested:  # also napari's activity-dock cancel
            self._cancelled = True
        gen, self._gen = self._gen, None
        if gen is not None:
            try:
                gen.close()  # cancel: stop fuse_iter (its tile pool) now, in this thread
            except Exception:  # noqa: BLE001
                pass
        self._worker = None
        self._active = False
        self._close_pbar()
        if self._cancelled:
            self.status.setText("cancelled")
        self._set_running(False)
        self.run_finished.emit()

    def closeEvent(self, event):  # noqa: N802 (Qt name)
        self.cancel()
        super().closeEvent(event)

    def _on_result(self, job: FusionJob, result):
        if job.channel_layers:
            layers = self._channel_results(job, result)
        else:
            layers = add_or_update_result_layers(self.viewer, job.layer, result, z_axis=job.z_axis, axes=job.axes)
        self.last_result, self.last_layers = result, layers
        registered = "registration" in (result.provenance or {})
        # retouching gathers from the unaligned planes of one layer
        if self.retouch_check.isChecked() and not registered and not job.channel_layers:
            connect_retouch(self.viewer, layers["decision"])
        unknown = isinstance(result.index, np.ndarray) and bool(np.isnan(result.index).any())
        if unknown or (result.provenance.get("params") or {}).get("lowtexture", "off") != "off":
            layers["confidence"].visible = True  # never-in-focus pixels show as confidence 0
        text = result.summary()
        if registered:
            rep = result.provenance["registration"]
            text += (f"; registered ({rep['mode']}), largest residual {rep['max_residual']:.2f} px"
                     + ("; retouching is off for registered runs" if self.retouch_check.isChecked() else ""))
        self.status.setText(text)
        self.fusion_done.emit({"result": result, "layers": layers, "source": job.layer})
        return result

    def _channel_results(self, job: FusionJob, result) -> dict:
        """One fused layer per channel layer (its name, colour and blending), and the shared index,
        decision and confidence once, beside the first channel. ``layers["fused"]`` is the first
        channel's; ``layers["fused_channels"]`` all of them."""
        from dataclasses import replace

        names = [ly.name for ly in job.channel_layers]
        out, fused = {}, []
        for c, ly in enumerate(job.channel_layers):
            one = replace(result, fused=np.asarray(result.fused)[..., c])
            got = add_or_update_result_layers(
                self.viewer, ly, one, z_axis=job.z_axis, axes=job.axes,
                roles=ALL_ROLES if c == 0 else ("fused",),
                extra_meta={"channel": c, "channel_layers": names, "guide": job.kwargs.get("guide")})
            fused.append(got["fused"])
            if c == 0:
                out = dict(got)
        out["fused_channels"] = fused
        return out

    def _fail(self, exc: BaseException) -> None:
        msg = _message(exc)
        self.status.setText(msg)
        show_error(msg)
