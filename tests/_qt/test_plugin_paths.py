"""The plugin as people meet it (issue 16): a real napari.Viewer, files opened through the
plugin's reader, the widgets added the way napari adds them (add_plugin_dock_widget and the
Plugins menu action hand the widget a *proxied* viewer), the sample data, a two-channel OME-TIFF
and a laptop's 1366 x 768 window. Small stacks (8 x 64 x 64), bounded in time."""
from __future__ import annotations

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
    tifffile.imwrite(p, data, ome=True, metadata={"axes": "ZCYX"})
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
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, FUSE)
    w.set_layer(c0)
    assert w.channel_group() == [c0, c1]
    assert w.channels_check.isVisibleTo(w) and w.channels_check.isChecked()
    w.guide_combo.setCurrentIndex(w.guide_combo.findData(0))  # focus measured on channel 0
    assert w.axes() == "CZYX"
    _run(w, qtbot)
    r0 = find_result_layers(viewer, c0.name)
    r1 = find_result_layers(viewer, c1.name)
    assert set(r0) == {"fused", "index", "decision", "confidence"}
    assert set(r1) == {"fused"}  # the second channel shares the first one's index
    # channel names and colours are kept on the outputs
    assert r0["fused"].name == f"{c0.name} fused" and r1["fused"].name == f"{c1.name} fused"
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
