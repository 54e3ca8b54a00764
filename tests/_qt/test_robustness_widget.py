"""The fusion widget's registration group and the never-in-focus display (headless, 8x64x64)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_edof import api
from napari_edof._qt.fusion_widget import FusionWidget
from napari_edof._qt.layers import find_result_layers

pytestmark = pytest.mark.timeout(120)

SAMPLE = api.sample_stack(n_planes=8, shape=(64, 64), seed=6, scene="photo")


def _shifted():
    """The sample with plane k shifted by (k - 4) * (0.8, -0.6) pixels."""
    a = np.asarray(SAMPLE.stack.data, np.float32)
    out = np.stack([ndi.shift(a[k], ((k - 4) * 0.8, (k - 4) * -0.6), order=3, mode="nearest") for k in range(8)])
    return np.clip(np.rint(out), 0, 65535).astype(np.uint16)


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def _widget(viewer, qtbot, layer) -> FusionWidget:
    w = FusionWidget(viewer)
    qtbot.addWidget(w)
    w.set_layer(layer)
    return w


def test_registration_controls_build_the_option(viewer, qtbot):
    w = _widget(viewer, qtbot, viewer.add_image(_shifted(), name="s"))
    assert w.registration() is None and "register" not in w.prepare().kwargs
    assert not w.register_edges.isEnabled() and not w.register_scale.isEnabled()
    w.register_combo.setCurrentIndex(w.register_combo.findData("translation"))
    assert w.register_edges.isEnabled() and not w.register_scale.isEnabled()
    # the edges default to crop, as in the CLI and the API (issue 16)
    assert w.prepare().kwargs["register"] == {"mode": "translation", "edges": "crop"}
    w.register_combo.setCurrentIndex(w.register_combo.findData("similarity"))
    w.register_scale.setChecked(False)
    w.register_edges.setCurrentIndex(w.register_edges.findData("edge"))
    assert w.registration() == {"mode": "similarity", "edges": "edge", "scale": False, "rotation": True}


def test_registered_run_cropped_layers_line_up(viewer, qtbot):
    src = viewer.add_image(_shifted(), name="s", scale=(2.0, 0.5, 0.5), translate=(0, 10, 20))
    w = _widget(viewer, qtbot, src)
    w.register_combo.setCurrentIndex(w.register_combo.findData("translation"))
    w.register_edges.setCurrentIndex(w.register_edges.findData("crop"))
    res = w.run(sync=True)
    assert res is not None
    rep = res.provenance["registration"]
    y0, y1, x0, x1 = rep["crop_box"]
    assert res.fused.shape == (y1 - y0, x1 - x0)
    assert abs(rep["planes"][0]["dy"] - (-3.2)) < 0.3 and abs(rep["planes"][0]["dx"] - 2.4) < 0.3
    layers = find_result_layers(viewer, "s")
    np.testing.assert_allclose(layers["fused"].translate, (10 + 0.5 * y0, 20 + 0.5 * x0))
    assert "registered (translation)" in w.status.text()


def test_never_in_focus_shown_in_the_confidence_layer(viewer, qtbot):
    a = np.asarray(SAMPLE.stack.data).astype(np.float32)
    a[:, :, 32:] = 30000
    a += np.random.default_rng(0).normal(0, 40, a.shape)
    src = viewer.add_image(np.clip(np.rint(a), 0, 65535).astype(np.uint16), name="half")
    w = _widget(viewer, qtbot, src)
    w.set_method("focus-select")
    w.set_params(lowtexture="mask", tie="near")
    assert w.params()["lowtexture"] == "mask"
    res = w.run(sync=True)
    assert res is not None
    conf = find_result_layers(viewer, "half")["confidence"]
    assert conf.visible
    # (the photographs have a few genuinely flat patches of their own)
    assert (conf.data[:, 40:] == 0).mean() > 0.95 and (conf.data[:, :24] > 0).mean() > 0.85
    dec = find_result_layers(viewer, "half")["decision"]
    assert (dec.data[:, 40:] == 0).mean() > 0.95  # masked: no label


@pytest.mark.parametrize("on_cluster", [False, True], ids=["in-memory", "cluster"])
def test_a_registered_run_registers_once(viewer, qtbot, on_cluster, registrations, runs):
    """The widget passes register= to the run; the plan aligns the stack, once (issue 15)."""
    calls = registrations
    w = _widget(viewer, qtbot, viewer.add_image(_shifted(), name="s"))
    w.register_combo.setCurrentIndex(w.register_combo.findData("translation"))
    if on_cluster:
        pytest.importorskip("distributed")
        from napari_edof.cluster import close_local_clients

        w.cluster_check.setChecked(True)
        w.cluster_workers.setValue(1)
    try:
        res = w.run(sync=True)
    finally:
        if on_cluster:
            close_local_clients()
    assert res is not None and "registration" in res.provenance
    assert len(calls) == 1
    assert [r[2] for r in runs] == ["DaskTasks" if on_cluster else "InProcess"]  # through core.run.run_frames


def test_shifted_planes_suggest_registration(viewer, qtbot):
    """Issue 16: a cheap check (three planes, phase correlation) suggests aligning shifted planes."""
    w = _widget(viewer, qtbot, viewer.add_image(_shifted(), name="s"))
    assert w.check_shift() is not None and w.check_shift() > 2
    assert w.register_hint.isVisibleTo(w) and "shifted" in w.register_hint.text()
    w.register_combo.setCurrentIndex(w.register_combo.findData("translation"))
    assert not w.register_hint.isVisibleTo(w)  # asked for: no more hint
    aligned = viewer.add_image(np.asarray(SAMPLE.stack.data), name="aligned")
    w.register_combo.setCurrentIndex(w.register_combo.findData("none"))
    w.set_layer(aligned)
    assert w.check_shift() is None and not w.register_hint.isVisibleTo(w)
