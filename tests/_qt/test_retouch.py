"""Retouching: painting on the decision layer re-renders the fused image and the index map."""
from __future__ import annotations

import numpy as np
import pytest

from napari_edof import api

pytest.importorskip("napari")

from qt_results import add_result  # noqa: E402


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer(show=False)


@pytest.fixture(scope="module")
def grey():
    return api.sample_stack(n_planes=8, shape=(64, 64), seed=3).stack.data


def test_paint_rerenders_and_undo_restores(viewer, grey):
    from napari_edof._qt.retouch import connect_retouch

    src, L, res = add_result(viewer, grey)
    dec, fused, index = L["decision"], L["fused"], L["index"]
    before_f = np.array(fused.data, copy=True)
    before_i = np.array(index.data, copy=True)
    h = connect_retouch(viewer, dec)
    assert connect_retouch(viewer, dec) is h  # idempotent
    k = 5
    dec.brush_size = 9
    dec.brush_shape = "square" if hasattr(dec, "brush_shape") else None
    y, x = 30, 34
    dec.paint((y, x), k + 1)
    painted = np.asarray(dec.data) == k + 1
    region = painted & (res.labels() != k + 1)
    assert region.sum() >= 49
    assert h.last_changed == region.sum()  # one re-render, not two (no double connection)
    np.testing.assert_array_equal(fused.data[region], grey[k][region])
    np.testing.assert_array_equal(index.data[region], k)
    # pixels outside the brush are untouched
    np.testing.assert_array_equal(fused.data[~painted], before_f[~painted])
    np.testing.assert_array_equal(index.data[~painted], before_i[~painted])

    dec.undo()
    np.testing.assert_array_equal(np.asarray(dec.data), res.labels())
    np.testing.assert_array_equal(fused.data, before_f)
    np.testing.assert_array_equal(index.data, before_i)
    dec.redo()
    np.testing.assert_array_equal(fused.data[region], grey[k][region])
    # the FusionResult's own arrays are never edited
    np.testing.assert_array_equal(res.fused, before_f)


def test_erase_keeps_pixels_and_bad_label_is_refused(viewer, grey, monkeypatch):
    from napari_edof._qt import retouch

    errors = []
    monkeypatch.setattr(retouch, "_notify_error", errors.append)
    src, L, res = add_result(viewer, grey)
    dec, fused = L["decision"], L["fused"]
    before = np.array(fused.data, copy=True)
    retouch.connect_retouch(viewer, dec)
    dec.brush_size = 5
    dec.paint((10, 10), 0)  # eraser
    np.testing.assert_array_equal(fused.data, before)
    dec.paint((40, 40), 50)  # no plane 49
    assert errors and "plane + 1" in errors[-1]
    np.testing.assert_array_equal(fused.data, before)


def test_rgb_fill_and_disconnect(viewer):
    from napari_edof._qt.retouch import connect_retouch, disconnect_retouch, retouch_handle

    rgb = api.sample_stack(n_planes=6, shape=(48, 56), rgb=True, dtype=np.uint8, seed=4).stack.data
    src, L, res = add_result(viewer, rgb, axes="ZYXC", name="rgb")
    dec, fused, index = L["decision"], L["fused"], L["index"]
    connect_retouch(viewer, dec)
    # data_setitem (what napari's tools call underneath) records undo history too
    ys, xs = np.mgrid[5:15, 20:30]
    dec.data_setitem((ys.ravel(), xs.ravel()), 3)  # plane 2
    changed = res.labels()[5:15, 20:30] != 3
    assert changed.sum() > 20
    np.testing.assert_array_equal(fused.data[5:15, 20:30][changed], rgb[2, 5:15, 20:30][changed])
    np.testing.assert_array_equal(index.data[5:15, 20:30][changed], 2)
    dec.undo()
    np.testing.assert_array_equal(fused.data, res.fused)
    disconnect_retouch(dec)
    assert retouch_handle(dec) is None
    dec.data_setitem((ys.ravel(), xs.ravel()), 1)
    np.testing.assert_array_equal(fused.data, res.fused)  # no longer connected


def test_timelapse_paints_one_frame(viewer):
    from napari_edof._qt.retouch import connect_retouch

    a = api.sample_stack(n_planes=4, shape=(40, 40), seed=5).stack.data
    b = api.sample_stack(n_planes=4, shape=(40, 40), seed=6).stack.data
    data = np.stack([a, b])  # TZYX
    src, L, res = add_result(viewer, data, axes="TZYX", name="tl")
    dec, fused = L["decision"], L["fused"]
    connect_retouch(viewer, dec)
    ys, xs = np.mgrid[10:20, 10:20]
    dec.data_setitem((np.ones(ys.size, int), ys.ravel(), xs.ravel()), 1)
    changed = res.labels()[1, 10:20, 10:20] != 1  # pixels already on plane 0 keep their value
    assert changed.sum() > 20
    np.testing.assert_array_equal(fused.data[1, 10:20, 10:20][changed], b[0, 10:20, 10:20][changed])
    np.testing.assert_array_equal(L["index"].data[1, 10:20, 10:20][changed], 0)
    np.testing.assert_array_equal(fused.data[0], res.fused[0])
    dec.undo()
    np.testing.assert_array_equal(fused.data, res.fused)


def test_new_fusion_resets_the_baseline(viewer, grey):
    from napari_edof._qt.retouch import connect_retouch

    src, L, res = add_result(viewer, grey)
    dec, fused = L["decision"], L["fused"]
    h = connect_retouch(viewer, dec)
    res2 = api.fuse(grey, method="focus-select", params={"smooth": 0}, tile=None)
    dec.data = res2.labels()  # what a re-run writes: not an edit
    fused.data = res2.fused
    assert h.last_changed == 0
    np.testing.assert_array_equal(fused.data, res2.fused)
    dec.data_setitem((np.array([3, 3]), np.array([3, 4])), 8)
    np.testing.assert_array_equal(fused.data[3, 3:5], grey[7, 3, 3:5])
    dec.undo()
    np.testing.assert_array_equal(fused.data, res2.fused)


def test_not_a_decision_layer(viewer, grey):
    from napari_edof._qt.retouch import connect_retouch

    lab = viewer.add_labels(np.zeros((8, 8), np.uint8))
    with pytest.raises(api.EdofError, match="not a napari-edof decision layer"):
        connect_retouch(viewer, lab)


def test_channel_axis_layers(viewer):
    """A multichannel (CZYX) input keeps C where it was in the fused layer ("CYX")."""
    from napari_edof._qt.retouch import connect_retouch

    a = api.sample_stack(n_planes=4, shape=(32, 36), seed=7).stack.data
    data = np.stack([a, a[:, ::-1]])  # CZYX
    stack = api.as_stack(data, axes="CZYX")
    res = api.fuse(stack, tile=None)
    viewer.add_image(data, name="ch")
    meta = dict(source="ch", n_planes=4, z_axis=1, axes="CZYX", method="focus-select", params={},
                z_step=None, pixel_size=None)
    fused = viewer.add_image(np.moveaxis(res.fused, -1, 0), name="ch fused",
                             metadata={"napari_edof": dict(meta, role="fused", layer_axes="CYX")})
    dec = viewer.add_labels(res.labels(), name="ch decision",
                            metadata={"napari_edof": dict(meta, role="decision", layer_axes="YX")})
    connect_retouch(viewer, dec)
    ys, xs = np.mgrid[4:12, 4:12]
    dec.data_setitem((ys.ravel(), xs.ravel()), 4)  # plane 3
    changed = res.labels()[4:12, 4:12] != 4
    assert changed.any()
    for c in range(2):
        np.testing.assert_array_equal(fused.data[c, 4:12, 4:12][changed], data[c, 3, 4:12, 4:12][changed])
    dec.undo()
    np.testing.assert_array_equal(fused.data, np.moveaxis(res.fused, -1, 0))


def test_with_the_fusion_widget_layers(viewer, grey):
    """The layers the fusion widget makes (layers.add_or_update_result_layers) retouch too."""
    layers_mod = pytest.importorskip("napari_edof._qt.layers")
    from napari_edof._qt.retouch import connect_retouch

    src = viewer.add_image(grey, name="g", scale=(2.0, 0.5, 0.5))
    res = api.fuse(grey, tile=None)
    out = layers_mod.add_or_update_result_layers(viewer, src, res, z_axis=0)
    dec, fused = out["decision"], out["fused"]
    dec.visible = True  # napari edits the displayed slice: an invisible Labels layer cannot be painted
    h = connect_retouch(viewer, dec)
    ys, xs = np.mgrid[20:30, 20:30]
    dec.data_setitem((ys.ravel(), xs.ravel()), 2)
    changed = res.labels()[20:30, 20:30] != 2
    np.testing.assert_array_equal(fused.data[20:30, 20:30][changed], grey[1, 20:30, 20:30][changed])
    # a re-run updates the same layers in place: the new fusion is the new baseline
    res2 = api.fuse(grey, method="focus-select", params={"blend": 0}, tile=None)
    layers_mod.add_or_update_result_layers(viewer, src, res2, z_axis=0)
    np.testing.assert_array_equal(fused.data, res2.fused)
    dec.data_setitem((ys.ravel(), xs.ravel()), 2)
    dec.undo()
    np.testing.assert_array_equal(fused.data, res2.fused)
    assert connect_retouch(viewer, dec) is h
