"""The audit as napari layers (issue 18): the widget added the way napari adds it, a small
8 x 64 x 64 stack; "audit" and "audit mask" beside the other results for audited runs (vaeedof by
default, any method with the Audit box ticked), gone again after a run without an audit."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_edof import api

SHARED = Path(__file__).resolve().parents[2].parent / "shared"  # (tests/_qt is not a package)

pytest.importorskip("napari")

pytestmark = pytest.mark.timeout(180)

PLUGIN = "napari-edof"
FUSE = "Fuse focus stack"


@pytest.fixture(scope="module")
def sample():
    return api.sample_stack(n_planes=8, shape=(64, 64), seed=5)


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def widget(viewer, tmp_path, sample):
    p = tmp_path / "stack.tif"
    tifffile.imwrite(p, sample.stack.data, imagej=True, metadata={"axes": "ZYX"})
    viewer.open(str(p), plugin=PLUGIN)
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, FUSE)
    return w


def _run(w, qtbot):
    with qtbot.waitSignal(w.run_finished, timeout=120000):
        w.run_button.click()
    return w.status.text()


def test_audit_layers_on_request_and_gone_after_a_run_without(viewer, qtbot, widget):
    from napari.layers import Image, Labels

    from napari_edof._qt.layers import find_result_layers

    src = viewer.layers[0]
    widget.set_method("pyramid")  # a multi-scale blend: its overshoots leave the sources' range
    widget.audit_check.setChecked(True)
    status = _run(widget, qtbot)
    res = widget.last_result
    got = find_result_layers(viewer, src.name)
    assert set(got) == {"fused", "index", "decision", "confidence", "audit", "audit_mask"}, status
    audit, mask = got["audit"], got["audit_mask"]
    assert isinstance(audit, Image) and isinstance(mask, Labels)
    assert audit.name == f"{src.name} audit" and mask.name == f"{src.name} audit mask"
    np.testing.assert_array_equal(audit.data, res.audit)
    np.testing.assert_array_equal(mask.data, res.audit_mask.astype(np.uint8))
    assert res.audit_mask.any() and mask.visible and not audit.visible  # flagged pixels show over the fused
    assert audit.colormap.name == "magma" and tuple(audit.contrast_limits) == (0.0, float(res.audit.max()))
    assert "audit: " in status
    # the same source, a selection without the audit: the audit layers would describe another image
    widget.audit_check.setChecked(False)
    widget.set_method("focus-select")
    _run(widget, qtbot)
    assert widget.last_result.audit is None
    assert set(find_result_layers(viewer, src.name)) == {"fused", "index", "decision", "confidence"}
    assert audit not in viewer.layers and mask not in viewer.layers


def test_vaeedof_is_audited_by_default(viewer, qtbot, widget, monkeypatch):
    weights = SHARED / "weights"
    pytest.importorskip("torch")
    if not all((weights / f).is_file() for f in ("taef2_encoder.pth", "taef2_decoder.pth")):
        pytest.skip(f"TAEF2 weights not found in {weights}")
    from napari_edof._qt.layers import find_result_layers
    from napari_edof.nn import weights as W

    monkeypatch.setenv(W.ENV, str(weights))
    monkeypatch.setattr(W, "_download", lambda *a: pytest.fail("tests must not download"))
    widget.set_method("vaeedof")
    widget.set_params(mode="latent")
    assert not widget.audit_check.isChecked()
    status = _run(widget, qtbot)
    got = find_result_layers(viewer, viewer.layers[0].name)
    assert {"audit", "audit_mask"} <= set(got), status
    assert widget.last_result.audit_mask.any()  # the decoded latent result leaves the sources' range
    np.testing.assert_array_equal(got["audit_mask"].data, widget.last_result.audit_mask.astype(np.uint8))
