"""The focus inspector: focus curves, go to plane, mask overlay, side by side, 3D height view."""
from __future__ import annotations

import numpy as np
import pytest

from napari_edof import api

pytest.importorskip("napari")
pytest.importorskip("matplotlib")

from qt_results import add_result  # noqa: E402


@pytest.fixture(scope="module")
def grey():
    return api.sample_stack(n_planes=8, shape=(64, 64), seed=3).stack.data


@pytest.fixture
def setup(make_napari_viewer, grey, qtbot):
    from napari_edof._qt.inspector import FocusInspector

    viewer = make_napari_viewer(show=False)
    # physical scale: z step 2, pixel 0.5 (what a microscope file would carry)
    src, layers, res = add_result(viewer, grey, params={"measure": "tenengrad", "radius": 3},
                                  scale=(2.0, 0.5, 0.5))
    w = FocusInspector(viewer)
    qtbot.addWidget(w)
    return viewer, w, src, layers, res


def test_result_combo_and_scale_from_metadata(setup):
    viewer, w, src, layers, res = setup
    assert w.decision_layer is layers["decision"]
    assert w.result_combo.count() == 1
    assert w.plane_spin.maximum() == 7
    assert (w.py_spin.value(), w.px_spin.value(), w.z_spin.value()) == (0.5, 0.5, 2.0)
    viewer.layers.remove(layers["decision"])
    assert w.result_combo.count() == 0 and w.decision_layer is None


def test_inspect_plots_the_focus_curve(setup, grey):
    viewer, w, src, layers, res = setup
    y, x = 20, 41
    curve = w.inspect(y, x)
    expected = api.focus_curve(grey, y, x, measure="tenengrad", radius=3)
    np.testing.assert_allclose(curve, expected)
    np.testing.assert_allclose(w.curve_line.get_ydata(), expected)  # what the plot shows
    assert w.last_measure["measure"] == "tenengrad" and w.last_measure["radius"] == 3
    assert w.last_pixel == (y, x)
    assert w.last_plane == int(res.labels()[y, x]) - 1
    assert w.plane_marker.get_xdata()[0] == w.last_plane
    assert w.last_confidence == pytest.approx(float(res.confidence[y, x]))
    assert w.last_index == pytest.approx(float(res.index[y, x]))
    assert f"plane {w.last_plane}" in w.info.text()


def test_click_in_canvas_converts_world_to_data(setup, grey):
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    viewer, w, src, layers, res = setup
    y, x = 33, 12
    world = (0.0, y * 0.5, x * 0.5)  # scale 0.5 µm per pixel
    ev = read_only_mouse_event(type="mouse_press", button=1, position=world, dims_displayed=[1, 2])
    mouse_press_callbacks(viewer, ev)
    mouse_release_callbacks(viewer, read_only_mouse_event(type="mouse_release", button=1, position=world,
                                                          dims_displayed=[1, 2]))
    assert w.last_pixel == (y, x)
    np.testing.assert_allclose(w.last_curve, api.focus_curve(grey, y, x, measure="tenengrad", radius=3))
    # a click outside the image does nothing
    out = (0.0, -5.0, 100.0)
    mouse_press_callbacks(viewer, read_only_mouse_event(type="mouse_press", button=1, position=out))
    mouse_release_callbacks(viewer, read_only_mouse_event(type="mouse_release", button=1, position=out))
    assert w.last_pixel == (y, x)


def test_go_to_plane_sets_the_z_slider(setup):
    viewer, w, src, layers, res = setup
    y, x = 50, 50
    w.inspect(y, x)
    plane = w.last_plane
    target = 7 - plane if plane != 7 - plane else 0
    viewer.dims.set_current_step(0, target)
    w.goto_btn.click()
    assert viewer.dims.current_step[0] == plane
    w.go_to_plane(3)
    assert viewer.dims.current_step[0] == 3


def test_mask_overlay_follows_the_plane(setup):
    viewer, w, src, layers, res = setup
    w.plane_spin.setValue(2)
    w.mask_check.setChecked(True)
    ml = w.mask_layer
    assert ml is not None and ml.name == "stack mask plane 2"
    np.testing.assert_array_equal(ml.data.astype(bool), res.labels() == 3)
    assert viewer.layers.selection.active is not ml  # the user's selection is kept
    w.plane_spin.setValue(5)
    assert w.mask_layer is ml and ml.name == "stack mask plane 5"
    np.testing.assert_array_equal(ml.data.astype(bool), res.labels() == 6)
    w.mask_check.setChecked(False)
    assert w.mask_layer is None


def test_side_by_side_grid(setup):
    viewer, w, src, layers, res = setup
    w.grid_btn.setChecked(True)
    assert viewer.canvas.grid.enabled
    visible = {ly.name for ly in viewer.layers if ly.visible}
    assert visible == {"stack", "stack fused"}
    w.grid_btn.setChecked(False)
    assert not viewer.canvas.grid.enabled
    assert all(ly.visible for ly in viewer.layers)  # visibility restored


def test_height_surface_in_physical_units(setup):
    from napari_edof._qt.inspector import height_mesh

    viewer, w, src, layers, res = setup
    w.height_btn.setChecked(True)
    surf = w.height_layer
    assert surf is not None and surf.name == "stack height surface"
    assert viewer.dims.ndisplay == 3
    verts, faces = surf.data[0], surf.data[1]
    assert verts.shape == (64 * 64, 3) and faces.shape == (2 * 63 * 63, 3)
    rows = np.round(verts[:, 1] / 0.5).astype(int)
    cols = np.round(verts[:, 2] / 0.5).astype(int)
    np.testing.assert_allclose(verts[:, 0], res.index[rows, cols] * 2.0, rtol=1e-6)  # z = index * z_step
    assert verts[:, 1].max() == pytest.approx(63 * 0.5)
    assert surf.texture is not None and surf.texture.shape == (64, 64)
    # napari shows a Surface texture upside down: the top-left vertex samples the top-left texel
    # at v = 1 (checked on screen in docs/make_screenshots.py's 3D view)
    assert surf.texcoords[0, 0] < 0.05 and surf.texcoords[0, 1] > 0.95
    # the z step the user enters is used
    w.z_spin.setValue(3.0)
    verts = w.height_layer.data[0]
    np.testing.assert_allclose(verts[:, 0], res.index[rows, cols] * 3.0, rtol=1e-6)
    w.height_btn.setChecked(False)
    assert viewer.dims.ndisplay == 2
    # big maps are downsampled to at most 256 x 256 vertices
    v, f, r, c = height_mesh(np.zeros((1000, 600), np.float32))
    assert len(r) <= 256 and len(c) <= 256 and r[-1] == 999 and c[-1] == 599
    assert len(v) == len(r) * len(c)


def test_retouch_checkbox_and_paint_button(setup, grey):
    from napari_edof._qt.retouch import retouch_handle

    viewer, w, src, layers, res = setup
    dec = layers["decision"]
    w.plane_spin.setValue(4)
    w.paint_btn.click()
    assert retouch_handle(dec) is not None and w.retouch_check.isChecked()
    assert viewer.layers.selection.active is dec and dec.mode == "paint" and dec.selected_label == 5
    dec.brush_size = 7
    dec.paint((30, 30), 5)
    changed = (np.asarray(dec.data) == 5) & (res.labels() != 5)
    assert changed.any()
    np.testing.assert_array_equal(layers["fused"].data[changed], grey[4][changed])
    w.retouch_check.setChecked(False)
    assert retouch_handle(dec) is None


def test_rgb_and_method_without_a_measure(make_napari_viewer, qtbot, monkeypatch):
    from napari_edof._qt import inspector as insp

    rgb = api.sample_stack(n_planes=5, shape=(40, 48), rgb=True, dtype=np.uint8, seed=2).stack.data
    viewer = make_napari_viewer(show=False)
    src, layers, res = add_result(viewer, rgb, axes="ZYXC", name="rgb")
    # pretend the result came from a method without a focus measure: default laplacian r=4
    layers["decision"].metadata["napari_edof"]["method"] = "some-network"
    w = insp.FocusInspector(viewer)
    qtbot.addWidget(w)
    curve = w.inspect(10, 20)
    np.testing.assert_allclose(curve, api.focus_curve(rgb, 10, 20, measure="laplacian", radius=4))
    assert "default" in w.scale_note.text() or w.z_spin.value() == 1.0
    errors = []
    monkeypatch.setattr(insp, "_show_error", errors.append)
    assert w.inspect(100, 5) is None  # outside: a notification, no traceback
    assert errors and "outside" in errors[-1]
    viewer.layers.remove(src)
    w.inspect(3, 3)
    assert "no longer in the viewer" in errors[-1]
    w.height_btn.setChecked(True)
    assert w.height_layer.texture.shape == (40, 48, 3)


def test_timelapse_shift_hover_and_go_to_plane(make_napari_viewer, qtbot):
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_move_callbacks

    from napari_edof._qt.inspector import FocusInspector

    a = api.sample_stack(n_planes=4, shape=(32, 32), seed=5).stack.data
    b = api.sample_stack(n_planes=4, shape=(32, 32), seed=6).stack.data
    data = np.stack([a, b])  # TZYX
    viewer = make_napari_viewer(show=False)
    src, layers, res = add_result(viewer, data, axes="TZYX", name="tl")
    w = FocusInspector(viewer)
    qtbot.addWidget(w)
    y, x = 12, 20
    # moving without Shift does nothing; with Shift it inspects (world = (t, z, y, x))
    mouse_move_callbacks(viewer, read_only_mouse_event(type="mouse_move", position=(1, 0, y, x)))
    assert w.last_pixel is None
    mouse_move_callbacks(viewer, read_only_mouse_event(type="mouse_move", position=(1, 0, y, x),
                                                       modifiers=["Shift"]))
    assert w.last_pixel == (y, x) and w.last_t == 1
    np.testing.assert_allclose(w.last_curve, api.focus_curve(data, y, x, t=1, axes="TZYX"))
    assert w.last_plane == int(res.labels()[1, y, x]) - 1
    viewer.dims.set_current_step(0, 0)
    w.go_to_plane()
    assert viewer.dims.current_step[0] == 1 and viewer.dims.current_step[1] == w.last_plane
