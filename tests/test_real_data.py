"""Real focus stacks from ../shared/data (skipped with a reason when that folder is absent)."""
import numpy as np
import pytest

import napari_edof as ne
from napari_edof.core.focus import focus_measure

METHODS = [s.name for s in ne.list_methods("classical")]


def sharpness(img) -> float:
    img = np.asarray(img, np.float32)
    if img.ndim == 3:
        img = img @ np.array([0.299, 0.587, 0.114], np.float32)
    return float(focus_measure(img, "laplacian", radius=0).mean())


@pytest.mark.parametrize("method", METHODS)
def test_epfl_rgb_stack_is_sharper_than_every_plane(shared_data, method):
    st = ne.open_stack(shared_data / "epfl_edf_skeleton_zeiss" / "stack.tif")
    assert st.rgb and st.n_planes == 3
    lazy = ne.fuse(st, method=method, tile=64)  # a lazily opened stack gives a lazy result
    assert lazy.is_lazy
    r = lazy.compute()
    assert not r.is_lazy
    planes = np.asarray(st.data)
    assert r.fused.shape == planes.shape[1:] and r.fused.dtype == np.uint8
    assert sharpness(r.fused) > 0.95 * max(sharpness(p) for p in planes)
    # every plane is used somewhere: the skeleton is not flat (label 0: pixels in focus in no plane,
    # the flat background, which the default marks unknown)
    assert set(np.unique(r.labels())) - {0} == {1, 2, 3}


def test_pcb_colour_stack_crop(shared_data):
    st = ne.open_stack(str(shared_data / "focus-stack_examples" / "pcb" / "pcb_*.jpg"))
    assert st.n_planes == 7 and st.rgb
    crop = np.asarray(st.data[:, 600:856, 800:1056])
    r = ne.fuse(crop, axes="ZYXC")
    energies = [sharpness(p) for p in crop]
    assert sharpness(r.fused) > 0.95 * max(energies)
    # the board is tilted: the chosen plane varies smoothly, not at random
    lab = r.labels().astype(int)
    assert np.mean(np.abs(np.diff(lab, axis=1)) > 1) < 0.05


def test_dfnn_uint16_light_sheet(shared_data):
    st = ne.open_stack(shared_data / "dfnn_lightsheet_microtubules_zstack")
    assert st.n_planes == 31 and st.dtype == np.uint16
    crop = np.asarray(st.data[:, 300:428, 200:328])
    # hard selection (focus-select) keeps the sharpest plane's detail, noise and all
    r = ne.fuse(crop, method="focus-select", tile=64)
    assert r.fused.dtype == np.uint16
    assert crop.min(axis=0).min() <= r.fused.min() and r.fused.max() <= crop.max()
    assert sharpness(r.fused) > 0.95 * max(sharpness(p) for p in crop)
    # this lattice light-sheet stack's 31 planes span 1.5 um: the focus measure hardly changes over
    # z. The default gives an index where the cell gives evidence, marks the rest unknown (NaN,
    # confidence 0), and averages the planes instead of copying one plane's noise: the finest
    # (Haar) detail, which is noise here, is several times weaker than in any plane; every pixel
    # stays within the planes' values there
    r = ne.fuse(crop, tile=64)
    assert r.fused.dtype == np.uint16
    assert (crop.min(axis=0) <= r.fused).all() and (r.fused <= crop.max(axis=0)).all()
    known = np.isfinite(r.index)
    assert 0.2 < known.mean() < 0.95
    assert (r.confidence[~known] == 0).all()

    def haar(a):
        a = np.asarray(a, np.float64)
        return float(np.median(np.abs(a[0::2, 0::2] - a[0::2, 1::2] - a[1::2, 0::2] + a[1::2, 1::2])))

    assert haar(r.fused) < 0.5 * min(haar(p) for p in crop)
