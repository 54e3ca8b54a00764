"""The "Fuse focus stack" widget, headless (Xvfb): small stacks, bounded runs."""
from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from napari_edof import api
from napari_edof._qt import fusion_widget as fw
from napari_edof._qt.fusion_widget import FusionWidget
from napari_edof._qt.layers import ROLES, find_result_layers

pytestmark = pytest.mark.timeout(120)

ZSTACK = api.sample_stack(n_planes=6, shape=(64, 64), seed=3)
RGBSTACK = api.sample_stack(n_planes=5, shape=(48, 56), rgb=True, dtype=np.uint8, seed=4)


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def errors(monkeypatch):
    """Messages the widget sent to napari's show_error."""
    seen: list[str] = []
    real = fw.show_error

    def record(msg):
        seen.append(msg)
        real(msg)

    monkeypatch.setattr(fw, "show_error", record)
    return seen


@pytest.fixture
def slow_fuse(monkeypatch):
    """fuse_iter that sleeps after each tile, so threaded runs last long enough to observe."""
    real = api.fuse_iter
    count = {"tiles": 0}

    def slow(*args, **kwargs):
        gen = real(*args, **kwargs)
        try:
            while True:
                try:
                    p = next(gen)
                except StopIteration as stop:
                    return stop.value
                count["tiles"] += 1
                time.sleep(0.03)
                yield p
        finally:
            gen.close()

    monkeypatch.setattr(api, "fuse_iter", slow)
    return count


def _widget(viewer, qtbot, layer=None) -> FusionWidget:
    w = FusionWidget(viewer)
    qtbot.addWidget(w)
    if layer is not None:
        w.set_layer(layer)
    return w


def _add_zstack(viewer, name="stack"):
    return viewer.add_image(ZSTACK.stack.data, name=name, scale=(2.0, 0.5, 0.25), translate=(0, 10, 20))


def test_sync_run_adds_result_layers(viewer, qtbot, errors):
    src = _add_zstack(viewer)
    before = src.data.copy()
    w = _widget(viewer, qtbot, src)
    assert w.axes() == "ZYX"
    w.tile_spin.setValue(32)
    res = w.run(sync=True)
    assert errors == []
    assert res is not None
    layers = find_result_layers(viewer, "stack")
    assert set(layers) == set(ROLES)
    assert [viewer.layers[i].name for i in range(1, 5)] == [
        "stack fused", "stack focus index", "stack decision", "stack confidence"]
    fused, index, dec, conf = (layers[r] for r in ROLES)
    assert fused.data.shape == (64, 64) and fused.data.dtype == ZSTACK.stack.dtype
    assert index.data.dtype == np.float32 and tuple(index.contrast_limits) == (0, 5)
    assert index.colormap.name == "viridis"
    assert type(dec).__name__ == "Labels" and dec.data.dtype == np.uint16
    assert dec.data.min() >= 1 and dec.data.max() <= 6
    assert conf.data.dtype == np.float32 and 0 <= conf.data.min() and conf.data.max() <= 1
    for layer in layers.values():
        np.testing.assert_allclose(layer.scale, (0.5, 0.25))
        np.testing.assert_allclose(layer.translate, (10, 20))
        md = layer.metadata["napari_edof"]
        assert md["source"] == "stack" and md["n_planes"] == 6 and md["z_axis"] == 0
        assert md["axes"] == "ZYX" and md["method"] == "focus-fuse"  # the default
        assert md["z_step"] == 2.0 and md["pixel_size"] == (0.5, 0.25)
    np.testing.assert_allclose(index.metadata["napari_edof"]["height"], index.data * 2.0)
    # the fusion is right on most pixels of the synthetic stack (depth in 6 flat bins, no noise: the
    # default's sub-plane index rounds to the bin on 3/4 of them; focus-select, hard selection, 0.8+)
    assert np.mean(np.rint(index.data) == ZSTACK.index) > 0.7
    np.testing.assert_array_equal(src.data, before)
    assert w.last_layers["fused"] is fused


def test_rerun_updates_in_place(viewer, qtbot, errors):
    src = _add_zstack(viewer)
    w = _widget(viewer, qtbot, src)
    w.run(sync=True)
    first = find_result_layers(viewer, "stack")
    ids = {r: id(layer) for r, layer in first.items()}
    n = len(viewer.layers)
    w.set_method("focus-select")
    w.set_params(radius=1, smooth=0)
    res = w.run(sync=True)
    assert errors == []
    again = find_result_layers(viewer, "stack")
    assert len(viewer.layers) == n
    assert {r: id(layer) for r, layer in again.items()} == ids
    np.testing.assert_array_equal(again["index"].data, res.index)
    assert again["fused"].metadata["napari_edof"]["params"]["radius"] == 1


def test_generated_param_widgets_drive_params(viewer, qtbot, errors):
    from qtpy.QtWidgets import QComboBox, QSpinBox

    src = _add_zstack(viewer)
    w = _widget(viewer, qtbot, src)
    w.set_method("focus-select")
    spin = w.param_widget("radius")
    assert isinstance(spin, QSpinBox) and (spin.minimum(), spin.maximum()) == (0, 32)
    spin.setValue(2)
    combo = w.param_widget("measure")
    assert isinstance(combo, QComboBox)
    combo.setCurrentIndex(combo.findData("sml") if combo.findData("sml") >= 0 else combo.count() - 1)
    chosen = combo.currentData()
    res = w.run(sync=True)
    assert errors == []
    assert res.provenance["params"]["radius"] == 2
    assert res.provenance["params"]["measure"] == chosen


def test_every_method_gets_generated_widgets(viewer, qtbot):
    from qtpy.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QSpinBox

    w = _widget(viewer, qtbot)
    names = [w.method_combo.itemData(i) for i in range(w.method_combo.count())]
    assert names == [s.name for s in api.list_methods()]
    for spec in api.list_methods():
        w.set_method(spec.name)
        assert list(w.params()) == [p.name for p in spec.params]
        assert w.params() == spec.defaults()
        for p in spec.params:
            wid = w.param_widget(p.name)
            if p.choices is not None:
                assert isinstance(wid, QComboBox) and wid.count() == len(p.choices)
            elif p.type is bool:
                assert isinstance(wid, QCheckBox)
            elif p.type is int:
                assert isinstance(wid, QSpinBox)
                if p.min is not None:
                    assert wid.minimum() == p.min
                if p.max is not None:
                    assert wid.maximum() == p.max
            elif p.type is float:
                assert isinstance(wid, QDoubleSpinBox)


def test_threaded_run_keeps_viewer_responsive(viewer, qtbot, errors, slow_fuse):
    from qtpy.QtCore import QTimer

    src = _add_zstack(viewer)
    w = _widget(viewer, qtbot, src)
    w.tile_spin.setValue(32)
    ticks = {"n": 0, "at_finish": None}
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: ticks.__setitem__("n", ticks["n"] + 1))
    progress: list = []
    w.progressed.connect(progress.append)
    w.run_finished.connect(lambda: ticks.__setitem__("at_finish", ticks["n"]))
    timer.start()
    with qtbot.waitSignal(w.run_finished, timeout=60000):
        worker = w.run()
        assert worker is not None and w.is_running
        assert not w.run_button.isEnabled() and w.cancel_button.isEnabled()
        assert w.run() is None  # a second Run while running does nothing
    timer.stop()
    assert errors == []
    assert ticks["at_finish"] is not None and ticks["at_finish"] > 0  # the event loop kept turning
    assert progress and progress[-1].done == progress[-1].total
    assert set(find_result_layers(viewer, "stack")) == set(ROLES)
    assert w.run_button.isEnabled() and not w.cancel_button.isEnabled() and not w.is_running


def test_threaded_run_real_engine(viewer, qtbot, errors):
    src = _add_zstack(viewer)
    w = _widget(viewer, qtbot, src)
    w.tile_spin.setValue(0)
    with qtbot.waitSignals([w.run_finished, w.fusion_done], timeout=60000):
        worker = w.run()
        assert worker is not None
    assert errors == []
    assert find_result_layers(viewer, "stack")["fused"].data.shape == (64, 64)


def test_cancel_mid_run(viewer, qtbot, errors, slow_fuse):
    src = _add_zstack(viewer)
    w = _widget(viewer, qtbot, src)
    w.tile_spin.setValue(16)  # 16 tiles
    n_before = len(viewer.layers)
    seen: list = []

    def on_progress(p):
        seen.append(p)
        if len(seen) == 1:
            w.cancel_button.click()

    w.progressed.connect(on_progress)
    with qtbot.waitSignal(w.run_finished, timeout=60000):
        w.run()
    assert errors == []
    assert seen and seen[0].total >= 16
    assert slow_fuse["tiles"] < seen[0].total  # stopped early
    assert len(viewer.layers) == n_before and find_result_layers(viewer, "stack") == {}
    assert w.run_button.isEnabled() and not w.cancel_button.isEnabled() and not w.is_running
    assert w.status.text() == "cancelled"


def test_errors_are_notifications(viewer, qtbot, errors):
    flat = viewer.add_image(np.zeros((32, 32), np.uint8), name="flat")
    w = _widget(viewer, qtbot)
    assert w.layer_combo.count() == 0  # a 2D image is not offered (issue 16)
    with pytest.raises(api.EdofError, match="not a focus stack"):
        w.set_layer(flat)
    assert w.run(sync=True) is None
    assert len(errors) == 1 and "open a focus stack" in errors[0]
    # nothing added, still usable
    assert len(viewer.layers) == 1 and w.run_button.isEnabled()

    src = _add_zstack(viewer)
    w.set_layer(src)
    w.tile_spin.setValue(8)  # below the engine's minimum tile: refused inside the worker
    with qtbot.waitSignal(w.run_finished, timeout=60000):
        w.run()
    assert len(errors) == 2 and "tile=8" in errors[1]
    assert find_result_layers(viewer, "stack") == {}
    assert w.run_button.isEnabled()


def test_param_out_of_range_is_a_notification(viewer, qtbot, errors, monkeypatch):
    src = _add_zstack(viewer)
    w = _widget(viewer, qtbot, src)
    real = w.params
    monkeypatch.setattr(w, "params", lambda: {**real(), "radius": 999})  # past the spin box's bounds
    assert w.run(sync=True) is None
    assert len(errors) == 1 and "radius" in errors[0] and "maximum" in errors[0]


def test_rgb_input(viewer, qtbot, errors):
    src = viewer.add_image(RGBSTACK.stack.data, name="rgb", rgb=True)
    w = _widget(viewer, qtbot, src)
    assert w.axes() == "ZYXC"
    guides = [w.guide_combo.itemData(i) for i in range(w.guide_combo.count())]
    assert guides[:3] == ["auto", "luminance", "mean"] and 2 in guides
    w.guide_combo.setCurrentIndex(w.guide_combo.findData("luminance"))
    res = w.run(sync=True)
    assert errors == []
    assert res.provenance["guide"] == "luminance"
    layers = find_result_layers(viewer, "rgb")
    assert layers["fused"].rgb and layers["fused"].data.shape == (48, 56, 3)
    assert layers["fused"].data.dtype == np.uint8
    assert layers["index"].data.shape == (48, 56)
    assert layers["decision"].metadata["napari_edof"]["axes"] == "ZYXC"


def test_save_result_layers_with_the_plugin_writer(viewer, qtbot, tmp_path, errors):
    import tifffile

    src = viewer.add_image(RGBSTACK.stack.data, name="rgb", rgb=True, scale=(2.0, 0.5, 0.5), units="µm")
    w = _widget(viewer, qtbot, src)
    w.run(sync=True)
    layers = find_result_layers(viewer, "rgb")
    for role, name in (("fused", "fused.tif"), ("index", "index.tif")):
        viewer.layers.selection = {layers[role]}
        out = viewer.layers.save(str(tmp_path / name), selected=True, plugin="napari-edof")
        assert out == [str(tmp_path / name)]
        back = tifffile.imread(tmp_path / name)
        np.testing.assert_array_equal(back, layers[role].data)
    with tifffile.TiffFile(tmp_path / "index.tif") as tf:
        assert "focus-fuse" in str(tf.pages[0].description) + str(tf.imagej_metadata)


def test_timelapse_input(viewer, qtbot, errors):
    a = api.sample_stack(n_planes=4, shape=(40, 40), seed=5).stack.data
    b = api.sample_stack(n_planes=4, shape=(40, 40), seed=6).stack.data
    src = viewer.add_image(np.stack([a, b]), name="movie", scale=(1, 3.0, 0.5, 0.5))
    w = _widget(viewer, qtbot, src)
    assert w.z_combo.currentData() == 1 and w.axes() == "TZYX"
    frames = []
    real = w._on_progress
    w._on_progress = lambda p: (frames.append(p.frame), real(p))
    res = w.run(sync=True)
    assert errors == []
    assert sorted(set(frames)) == [0, 1]
    layers = find_result_layers(viewer, "movie")
    # outputs keep a single-plane Z stretched over the 4 planes, so T stays on the T slider
    assert layers["fused"].data.shape == (2, 1, 40, 40)
    assert layers["decision"].data.shape == (2, 1, 40, 40)
    assert layers["index"].metadata["napari_edof"]["layer_axes"] == "TZYX"
    np.testing.assert_allclose(layers["index"].scale, (1, 12.0, 0.5, 0.5))
    np.testing.assert_allclose(layers["index"].translate, (0, 4.5, 0, 0))
    assert layers["index"].metadata["napari_edof"]["z_step"] == 3.0
    np.testing.assert_array_equal(layers["fused"].data[1, 0], np.asarray(res.fused)[1])
    assert viewer.dims.ndim == 4 and viewer.dims.range[1].stop == 9.0  # the input's z range is kept
    # every z position shows the fused frame of the current time point
    for role in ROLES:
        layers[role].visible = True  # napari slices visible layers only
    for z in range(4):
        viewer.dims.current_step = (1, z, 0, 0)
        for role in ROLES:
            ly = layers[role]
            shown = np.asarray(ly._slice.image.raw)
            assert shown.shape == (40, 40), (role, z)
            np.testing.assert_array_equal(shown, np.asarray(ly.data)[1, 0])


def test_channel_axis_input(viewer, qtbot, errors):
    g = ZSTACK.stack.data
    data = np.stack([g, g // 2])  # CZYX
    src = viewer.add_image(data, name="cells", metadata={"napari_edof": {"axes": "CZYX"}})
    w = _widget(viewer, qtbot, src)
    assert w.channel_combo.currentData() == 0 and w.z_combo.currentData() == 1
    assert w.axes() == "CZYX"
    w.guide_combo.setCurrentIndex(w.guide_combo.findData(0))
    res = w.run(sync=True)
    assert errors == []
    assert res.provenance["guide"] == 0
    layers = find_result_layers(viewer, "cells")
    assert layers["fused"].data.shape == (2, 1, 64, 64)  # one layer, channel axis kept first (and Z as one plane)
    assert layers["index"].data.shape == (64, 64)
    # one index shared by both channels: channel 1 is channel 0 halved
    f = layers["fused"].data.astype(np.int64)
    assert np.abs(f[1] - f[0] // 2).max() <= 1
    assert layers["fused"].metadata["napari_edof"]["channel_axis"] == 0


def test_device_combo_is_lazy(viewer, qtbot, monkeypatch):
    import napari_edof.nn.device as device

    had_torch = "torch" in sys.modules
    w = _widget(viewer, qtbot)
    if not had_torch:
        assert "torch" not in sys.modules  # building the widget does not ask torch
    items = [w.device_combo.itemData(i) for i in range(w.device_combo.count())]
    assert items == ["auto", "cpu"]
    asked = []
    monkeypatch.setattr(api, "available_devices", lambda: asked.append(1) or ["cuda:0", "cpu"], raising=False)
    monkeypatch.setattr(device, "available_devices", lambda: asked.append(1) or ["cuda:0", "cpu"])
    w.device_combo.refresh()  # what opening the list does
    items = [w.device_combo.itemData(i) for i in range(w.device_combo.count())]
    assert asked and items == ["auto", "cpu", "cuda:0"]
    # focus-select runs on the CPU only: the device choice is off for it
    w.set_method("focus-select")
    assert not w.device_combo.isEnabled()


def test_precision_choice_is_for_learned_methods(viewer, qtbot, errors):
    layer = viewer.add_image(api.sample_stack(n_planes=4, shape=(48, 48), seed=3).stack.data, name="stack")
    w = _widget(viewer, qtbot, layer)
    w.set_method("focus-select")
    assert not w.precision_combo.isEnabled()
    w.set_method("stackmff-v2")
    assert w.precision_combo.isEnabled()
    w.precision_combo.setCurrentIndex(w.precision_combo.findData("half"))
    w.tile_spin.setValue(0)
    res = w.run(sync=True)
    assert errors == []
    check = res.provenance["half_precision_check"]  # the first tile ran both ways
    assert res.provenance["precision"] == ("half" if check["kept"] else "float32")
    assert "first tile" in w.status.text()  # the status line says what became of half precision
    w.set_method("focus-select")  # back to a numpy method: the choice goes back to auto
    assert not w.precision_combo.isEnabled() and w.precision_combo.currentData() == "auto"


def test_reader_metadata_sets_default_axes(viewer, qtbot, tmp_path, errors):
    from napari_edof.io.writers import write_tiff

    a = api.sample_stack(n_planes=4, shape=(32, 32), seed=7).stack.data
    path = tmp_path / "movie.tif"
    write_tiff(path, np.stack([a, a]), axes="TZYX", pixel_size=(0.5, 0.5), z_step=3.0, unit="µm")
    (src,) = viewer.open(str(path), plugin="napari-edof")
    assert src.metadata["napari_edof"]["axes"] == "TZYX"
    w = _widget(viewer, qtbot, src)
    assert w.z_combo.currentData() == 1 and w.axes() == "TZYX"
    res = w.run(sync=True)
    assert errors == []
    assert res.z_step == 3.0 and res.pixel_size == (0.5, 0.5)
    assert find_result_layers(viewer, src.name)["fused"].data.shape == (2, 1, 32, 32)


def test_layer_list_follows_viewer(viewer, qtbot):
    w = _widget(viewer, qtbot)
    assert w.layer_combo.count() == 0
    src = _add_zstack(viewer, name="first")
    assert w.current_layer() is src
    src.name = "renamed"
    assert w.layer_combo.itemText(0) == "renamed"
    w.run(sync=True)
    # result layers are not offered as inputs
    assert [w.layer_combo.itemText(i) for i in range(w.layer_combo.count())] == ["renamed"]
    viewer.layers.remove(src)
    assert all(w.layer_combo.itemData(i) is not src for i in range(w.layer_combo.count()))


def test_painting_the_decision_retouches_after_a_run(viewer, qtbot, errors):
    """The widget connects retouching: painting label = plane + 1 re-renders the fused image."""
    a = api.sample_stack(n_planes=4, shape=(40, 40), seed=5).stack.data
    b = api.sample_stack(n_planes=4, shape=(40, 40), seed=6).stack.data
    movie = np.stack([a, b])
    src = viewer.add_image(movie, name="movie")
    w = _widget(viewer, qtbot, src)
    assert w.retouch_check.isChecked()
    w.run(sync=True)
    layers = find_result_layers(viewer, "movie")
    dec, fused, index = layers["decision"], layers["fused"], layers["index"]
    dec.visible = True  # napari paints the displayed slice only
    before = np.array(fused.data)
    changed = np.asarray(dec.data)[1, 0, 10:20, 10:20] != 3
    assert changed.sum() > 20
    ts, ys, xs = np.mgrid[1:2, 10:20, 10:20]
    dec.data_setitem((ts.ravel(), np.zeros(ts.size, int), ys.ravel(), xs.ravel()), 3)  # plane 2, frame 1
    assert errors == []
    np.testing.assert_array_equal(fused.data[1, 0, 10:20, 10:20][changed], movie[1, 2, 10:20, 10:20][changed])
    np.testing.assert_array_equal(index.data[1, 0, 10:20, 10:20][changed], 2.0)
    np.testing.assert_array_equal(fused.data[0], before[0])  # the other frame is untouched
    dec.undo()
    np.testing.assert_array_equal(fused.data, before)
    # switched off: painting changes only the labels
    w.retouch_check.setChecked(False)
    w.run(sync=True)
    from napari_edof._qt.retouch import disconnect_retouch

    disconnect_retouch(dec)
    snap = np.array(fused.data)
    dec.data_setitem((ts.ravel(), np.zeros(ts.size, int), ys.ravel(), xs.ravel()), 1)
    np.testing.assert_array_equal(fused.data, snap)


def test_timelapse_result_saves_without_the_alignment_axis(viewer, qtbot, errors, tmp_path):
    import tifffile

    movie = np.stack([api.sample_stack(n_planes=3, shape=(32, 32), seed=s).stack.data for s in (1, 2)])
    src = viewer.add_image(movie, name="movie", scale=(1, 2.0, 0.5, 0.5))
    w = _widget(viewer, qtbot, src)
    res = w.run(sync=True)
    layers = find_result_layers(viewer, "movie")
    viewer.layers.selection = {layers["fused"]}
    out = viewer.layers.save(str(tmp_path / "fused.tif"), selected=True, plugin="napari-edof")
    assert out == [str(tmp_path / "fused.tif")]
    back = tifffile.imread(tmp_path / "fused.tif")
    assert back.shape == (2, 32, 32)
    np.testing.assert_array_equal(back, res.fused)


def test_run_on_a_local_dask_cluster_keeps_the_viewer_responsive(viewer, qtbot, errors):
    pytest.importorskip("distributed")
    from qtpy.QtCore import QTimer

    from napari_edof.cluster import close_local_clients

    movie = np.stack([api.sample_stack(n_planes=4, shape=(48, 48), seed=s).stack.data for s in (1, 2, 3)])
    src = viewer.add_image(movie, name="movie")
    w = _widget(viewer, qtbot, src)
    w.cluster_check.setChecked(True)
    w.cluster_workers.setValue(2)
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(20)
    try:
        with qtbot.waitSignal(w.run_finished, timeout=120000):
            assert w.run() is not None
            assert not w.cluster_check.isEnabled()  # locked while running
    finally:
        timer.stop()
        close_local_clients()
    assert errors == []
    assert len(ticks) > 3  # the event loop kept running while the cluster worked
    ref = api.fuse(movie, axes="TZYX")
    np.testing.assert_array_equal(find_result_layers(viewer, "movie")["fused"].data[:, 0], ref.fused)
    assert w.last_result.provenance["scheduler"].startswith("tcp://127.0.0.1")
