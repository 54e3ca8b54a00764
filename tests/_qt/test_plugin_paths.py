"""The plugin as people meet it (issue 16): a real napari.Viewer, files opened through the
plugin's reader, the widgets added the way napari adds them (add_plugin_dock_widget and the
Plugins menu action hand the widget a *proxied* viewer), the sample data, a two-channel OME-TIFF
and a laptop's 1366 x 768 window. Small stacks (8 x 64 x 64), bounded in time."""
from __future__ import annotations

import math

import numpy as np
import pytest
import tifffile

from napari_edof import api

pytest.importorskip("napari")
pytest.importorskip("matplotlib")

pytestmark = pytest.mark.timeout(180)

PLUGIN = "napari-edof"
FUSE = "Fuse focus stack"
INSPECT = "Focus inspector"


@pytest.fixture(scope="module")
def sample():
    return api.sample_stack(n_planes=8, shape=(64, 64), seed=5)


@pytest.fixture
def stack_file(tmp_path, sample):
    p = tmp_path / "stack.tif"
    tifffile.imwrite(p, sample.stack.data, imagej=True, metadata={"axes": "ZYX"})
    return p


@pytest.fixture
def two_channel_file(tmp_path, sample):
    """A ZCYX OME-TIFF: channel 0 the sample, channel 1 its inverse (the same focus)."""
    a = sample.stack.data.astype(np.uint16)
    b = (a.max() - a).astype(np.uint16)
    data = np.stack([a, b], axis=1)  # Z, C, Y, X
    p = tmp_path / "two.ome.tif"
    tifffile.imwrite(p, data, ome=True, metadata={"axes": "ZCYX", "Channel": {"Name": ["DAPI", "GFP"]}})
    return p, data


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def _run(w, qtbot):
    """Press Run and wait for the threaded run to end; the status line afterwards."""
    with qtbot.waitSignal(w.run_finished, timeout=120000):
        w.run_button.click()
    return w.status.text()


def test_open_a_stack_then_add_the_widget(viewer, qtbot, stack_file):
    from napari_edof._qt.fusion_widget import FusionWidget
    from napari_edof._qt.layers import find_result_layers

    viewer.open(str(stack_file), plugin=PLUGIN)
    src = viewer.layers[0]
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, FUSE)
    assert isinstance(w, FusionWidget)
    assert w.viewer is viewer  # not napari's proxy: its layers are new objects at every access
    assert w.current_layer() is src
    w.set_layer(viewer.layers.selection.active)  # what the proxy hands out is accepted too
    status = _run(w, qtbot)
    got = find_result_layers(viewer, src.name)
    assert set(got) == {"fused", "index", "decision", "confidence"}, status
    assert got["fused"].data.shape == (64, 64)
    assert "method focus-fuse" in status  # the summary is the last line


def test_napari_command_line_with_plugin(viewer, qtbot, stack_file):
    """``napari stack.tif -w napari-edof`` does this: the plugin's first widget, tabified."""
    from napari_edof._qt.fusion_widget import FusionWidget

    viewer.open(str(stack_file), plugin=PLUGIN)
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, tabify=True)
    assert isinstance(w, FusionWidget) and w.current_layer() is viewer.layers[0]
    assert w.run(sync=True) is not None


def test_plugins_menu_action_adds_the_widget(viewer, qtbot, stack_file):
    from napari._app_model import get_app_model

    from napari_edof._qt.fusion_widget import FusionWidget

    viewer.open(str(stack_file), plugin=PLUGIN)
    get_app_model().commands.execute_command("napari-edof.fusion_widget").result()
    widgets = [d.widget() for d in viewer.window._wrapped_dock_widgets.values()]
    found = [w for w in widgets if isinstance(w, FusionWidget)]
    if not found:  # napari wraps some docks in a scroll area
        found = [c for d in widgets for c in d.findChildren(FusionWidget)]
    assert len(found) == 1
    w = found[0]
    assert w.current_layer() is viewer.layers[0]
    w.run(sync=True)
    assert w.last_layers["fused"] in viewer.layers


def test_sample_first_then_run(viewer, qtbot):
    from napari_edof._qt.layers import find_result_layers

    viewer.open_sample(PLUGIN, "synthetic-grey")
    assert len(viewer.layers) == 3  # the stack and its two 2D ground-truth layers
    assert viewer.layers.selection.active.ndim == 2  # napari selects the last one added
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, FUSE)
    offered = [w.layer_combo.itemText(i) for i in range(w.layer_combo.count())]
    assert offered == ["synthetic stack"]  # only what can be fused
    assert w.current_layer() is viewer.layers["synthetic stack"]
    status = _run(w, qtbot)
    assert set(find_result_layers(viewer, "synthetic stack")) == {"fused", "index", "decision", "confidence"}, status
    assert "1/4" not in status and "method focus-fuse" in status


def test_two_channel_ome_tiff_one_shared_index(viewer, qtbot, two_channel_file):
    from napari_edof._qt.layers import find_result_layers

    path, data = two_channel_file
    viewer.open(str(path), plugin=PLUGIN)
    assert len(viewer.layers) == 2  # the reader opens one layer per channel
    c0, c1 = viewer.layers
    assert (c0.name, c1.name) == ("two.ome.tif [DAPI]", "two.ome.tif [GFP]")  # the file's channel names
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, FUSE)
    w.set_layer(c0)
    assert w.channel_group() == [c0, c1]
    assert w.channels_check.isVisibleTo(w) and w.channels_check.isChecked()
    assert w.guide_combo.itemText(w.guide_combo.findData(1)) == "channel 1 (GFP)"
    w.guide_combo.setCurrentIndex(w.guide_combo.findData(0))  # focus measured on channel 0
    assert w.axes() == "CZYX"
    _run(w, qtbot)
    r0 = find_result_layers(viewer, c0.name)
    r1 = find_result_layers(viewer, c1.name)
    assert set(r0) == {"fused", "index", "decision", "confidence"}
    assert set(r1) == {"fused"}  # the second channel shares the first one's index
    # channel names and colours are kept on the outputs
    assert r0["fused"].name == f"{c0.name} fused" and r1["fused"].name == f"{c1.name} fused"
    assert r1["fused"].name == "two.ome.tif [GFP] fused"
    assert r0["fused"].metadata["napari_edof"]["provenance"]["channels"] == ["DAPI", "GFP"]
    assert r0["fused"].colormap.name == c0.colormap.name
    assert r1["fused"].colormap.name == c1.colormap.name
    assert c0.colormap.name != c1.colormap.name
    # one decision for both channels, the same as the API's with the same guide
    ref = api.fuse(np.moveaxis(data, 1, 0), axes="CZYX", guide=0)
    np.testing.assert_array_equal(r0["index"].data, ref.index)
    np.testing.assert_array_equal(r0["fused"].data, ref.fused[..., 0])
    np.testing.assert_array_equal(r1["fused"].data, ref.fused[..., 1])
    planes = np.rint(ref.index).astype(int)
    np.testing.assert_array_equal(r1["fused"].data[8:-8, 8:-8] > 0, True)
    assert planes.min() >= 0


def _visible_in_window(widget, window) -> bool:
    """The widget is shown and its whole rectangle lies inside the main window."""
    from qtpy.QtCore import QPoint, QRect

    if not widget.isVisible() or widget.visibleRegion().isEmpty():
        return False
    top_left = widget.mapTo(window, QPoint(0, 0))
    rect = QRect(top_left, widget.size())
    return window.rect().contains(rect)


def test_both_docks_fit_a_laptop_screen(viewer, qtbot, stack_file):
    viewer.open(str(stack_file), plugin=PLUGIN)
    _, fuse = viewer.window.add_plugin_dock_widget(PLUGIN, FUSE)
    fuse.run(sync=True)
    _, insp = viewer.window.add_plugin_dock_widget(PLUGIN, INSPECT)
    win = viewer.window._qt_window
    win.showNormal()
    win.resize(1366, 768)
    qtbot.waitUntil(lambda: win.width() == 1366 and win.height() == 768, timeout=5000)
    qtbot.wait(200)
    assert win.height() == 768
    assert _visible_in_window(fuse.run_button, win)
    assert _visible_in_window(fuse.cancel_button, win)
    assert not fuse.advanced.is_expanded()  # the rarely changed parameters start folded away
    assert _visible_in_window(insp.canvas, win) and insp.canvas.height() >= 120
    # readable labels from the registry's Param declarations, with the raw name in the tooltip
    fuse.set_method("focus-select")
    texts = [fuse.params_form.itemAt(i).widget().text() for i in range(fuse.params_form.count())
             if hasattr(fuse.params_form.itemAt(i).widget(), "text")]
    adv = [fuse.advanced_params_form.itemAt(i).widget().text() for i in range(fuse.advanced_params_form.count())
           if hasattr(fuse.advanced_params_form.itemAt(i).widget(), "text")]
    assert "Focus measure" in texts and "noise_k" not in texts + adv and "Tie tolerance" in adv
    # unfolding "Advanced" keeps Run in view (the rest scrolls)
    fuse.advanced.set_expanded(True)
    qtbot.wait(100)
    assert _visible_in_window(fuse.run_button, win)


def test_inspector_through_the_plugin(viewer, qtbot, stack_file):
    from napari_edof._qt.inspector import TILTED_VIEW, _camera

    viewer.open(str(stack_file), plugin=PLUGIN)
    _, fuse = viewer.window.add_plugin_dock_widget(PLUGIN, FUSE)
    fuse.run(sync=True)
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, INSPECT)
    assert w.viewer is viewer and w.decision_layer is fuse.last_layers["decision"]
    z_range = tuple(viewer.dims.range[0])
    # a marker at the inspected pixel, in world coordinates
    w.inspect(20, 41)
    marker = w.marker_layer
    assert marker is not None and marker in viewer.layers
    np.testing.assert_allclose(marker.data[0], [20, 41])
    assert viewer.layers.selection.active is not marker  # the selection is left alone
    w.inspect(30, 12)
    np.testing.assert_allclose(w.marker_layer.data[0], [30, 12])
    # the plot follows napari's theme: dark on the dark theme, light on the light one
    assert viewer.theme == "dark"
    assert np.mean(w.figure.get_facecolor()[:3]) < 0.3
    viewer.theme = "light"
    assert np.mean(w.figure.get_facecolor()[:3]) > 0.7
    # the 3D height view opens tilted; leaving it leaves the z slider as it was
    w.height_btn.setChecked(True)
    assert viewer.dims.ndisplay == 3
    np.testing.assert_allclose(_camera(viewer).angles, TILTED_VIEW, atol=1e-3)
    w.height_btn.setChecked(False)
    assert viewer.dims.ndisplay == 2 and w.height_layer is None
    assert tuple(viewer.dims.range[0]) == z_range
    # leaving 3D with napari's own 2D/3D toggle does the same
    w.height_btn.setChecked(True)
    assert w.height_layer is not None
    viewer.dims.ndisplay = 2
    assert w.height_layer is None and not w.height_btn.isChecked()
    assert tuple(viewer.dims.range[0]) == z_range
    assert fuse.last_layers["fused"].visible  # the layers' visibility restored


def test_progress_display_is_throttled(viewer, qtbot, stack_file, monkeypatch):
    """Fast tiles: every step is counted (``progressed``), but the display (status line, napari's
    progress bar) is redrawn at most every SHOW_EVERY seconds, the first time that long after Run
    (a run shorter than that shows none; its summary comes at once); a step held back is shown by
    a timer when its time comes."""
    import napari_edof._qt.fusion_widget as fw
    from napari_edof.core.result import Progress

    monkeypatch.setattr(fw, "SHOW_EVERY", 60.0)
    shown = []
    orig = fw.FusionWidget._display_progress

    def display(self, step):
        shown.append((step.done, step.total))
        return orig(self, step)

    monkeypatch.setattr(fw.FusionWidget, "_display_progress", display)
    viewer.open(str(stack_file), plugin=PLUGIN)
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, FUSE)
    w.tile_spin.setValue(16)  # 64 x 64 in 16 tiles
    steps = []
    w.progressed.connect(steps.append)
    status = _run(w, qtbot)
    n = w.last_result.provenance["tiles"]
    assert n == 16
    assert [(s.done, s.total) for s in steps] == [(k, n) for k in range(1, n + 1)]
    assert shown == []
    assert status.startswith(w.last_result.summary()) and not w._flush_timer.isActive()
    # once SHOW_EVERY has passed a step is shown at once; the next is held back and shown when the
    # timer fires (here by hand), the latest one
    w._active, w._cancelled, w._shown_at = True, False, -math.inf
    w._show_progress(Progress(1, 4, "fuse"))
    assert shown == [(1, 4)] and w.status.text() == "fuse: 1/4 tile steps"
    w._show_progress(Progress(2, 4, "fuse"))
    w._show_progress(Progress(3, 4, "fuse"))
    assert shown == [(1, 4)] and w._flush_timer.isActive()
    w._flush_timer.stop()
    w._flush_progress()
    assert shown == [(1, 4), (3, 4)] and w.status.text() == "fuse: 3/4 tile steps"
    w._active = False
    w._show_progress(Progress(4, 4, "fuse"))  # the run is over: nothing shown
    w._close_pbar()
    assert shown == [(1, 4), (3, 4)] and w._pending is None


@pytest.mark.parametrize("setup", ["tiles", "two passes", "registered", "time-lapse"])
def test_progress_in_the_activity_dock(viewer, qtbot, stack_file, sample, tmp_path, monkeypatch, setup):
    """What napari's progress bar (the activity dock) receives over a run of several tiles: every
    step counted, the count label in step with the bar, 100% at the end, the summary last."""
    import napari_edof._qt.fusion_widget as fw

    events, bars = [], []

    class Recorded(fw.napari_progress):  # the activity dock listens to these same events
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            bars.append(self)
            events.append(("total", self.total))
            self.events.value.connect(lambda e: events.append(("value", e.value)))
            self.events.total.connect(lambda e: events.append(("total", e.value)))
            self.events.eta.connect(lambda e: events.append(("label", e.value)))

    monkeypatch.setattr(fw, "napari_progress", Recorded)
    monkeypatch.setattr(fw, "SHOW_EVERY", 0.0)  # every step shown (the throttle: the test below)
    if setup == "time-lapse":  # two frames: one bar over both
        stack_file = tmp_path / "tzyx.tif"
        tifffile.imwrite(stack_file, np.stack([sample.stack.data, sample.stack.data[::-1]]), imagej=True,
                         metadata={"axes": "TZYX"})
    viewer.open(str(stack_file), plugin=PLUGIN)
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, FUSE)
    w.tile_spin.setValue(32)  # the advanced section's tile size: 64 x 64 in 4 tiles
    if setup == "two passes":
        w.method_combo.setCurrentIndex(w.method_combo.findData("focus-select"))
        w.set_params(lowtexture="nearest")  # a first pass over every tile (the noise level)
    if setup == "registered":
        w.register_combo.setCurrentIndex(w.register_combo.findData("translation"))
    steps = []
    shown = []  # (step, the bar's value, its total, its last count label) as each step is shown

    def on_step(s):
        steps.append(s)
        labels = [v for kind, v in events if kind == "label"]
        shown.append((s, bars[-1].n, bars[-1].total, labels[-1] if labels else ""))

    w.progressed.connect(on_step)
    status = _run(w, qtbot)

    result = w.last_result
    prov = result.provenance
    assert prov["tiles"] == 4 or (setup == "registered" and prov["tiles"] > 1)  # (registration may crop)
    n_steps = prov["tiles"] * prov.get("passes", 1) * (2 if setup == "time-lapse" else 1)
    tile_steps = [s for s in steps if s.stage in ("fuse", "pass 1")]
    assert [(s.done, s.total) for s in tile_steps] == [(k, n_steps) for k in range(1, n_steps + 1)]
    if setup == "registered":
        assert [s.stage for s in steps[: -n_steps]] == ["registration"] * (len(steps) - n_steps)
    assert len(bars) == 1
    totals = [v for kind, v in events if kind == "total"]
    values = [v for kind, v in events if kind == "value"]
    assert totals[-1] == n_steps  # the bar's total: the steps actually made
    assert values == sorted(values) and values[-1] == n_steps  # it ends at 100 %
    # after every step the bar and its count label ("3/4 [..]") show that step, not an earlier one
    for step, n, total, label in shown:
        assert (n, total) == (step.done, step.total)
        assert label.split("[")[0].strip() == f"{step.done}/{step.total}"
    assert bars[0].n == n_steps and bars[0] not in fw.napari_progress._all_instances  # closed
    assert status == w.status.text() and status.startswith(result.summary())  # the summary, last
