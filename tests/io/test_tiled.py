"""Tiled TIFF: lazy input, and output written a row of tiles at a time (io/tiled.py)."""
import numpy as np
import pytest
import tifffile

import napari_edof as ne
from napari_edof.io.tiled import write_tiled_tiff

da = pytest.importorskip("dask.array")


@pytest.mark.parametrize("shape,axes,rgb", [((70, 100), "YX", False), ((3, 70, 100), "TYX", False),
                                            ((70, 100, 3), "YXC", True), ((2, 70, 100), "CYX", False)])
def test_write_tiled_tiff_round_trip(tmp_path, shape, axes, rgb):
    a = np.random.default_rng(0).integers(0, 60000, shape).astype(np.uint16)
    p = write_tiled_tiff(tmp_path / "x.tif", da.from_array(a, chunks=16), axes=axes, rgb=rgb, tile=32,
                         pixel_size=(0.5, 0.25))
    with tifffile.TiffFile(p) as tf:
        assert tf.pages[0].is_tiled and tf.pages[0].tilewidth == 32
    np.testing.assert_array_equal(tifffile.imread(p), a)
    assert [f.name for f in tmp_path.iterdir()] == ["x.tif"]


def test_failed_write_leaves_nothing(tmp_path):
    class Broken:
        shape, dtype = (64, 64), np.dtype(np.uint8)

        def __getitem__(self, key):
            raise OSError(28, "No space left on device")

    (tmp_path / "x.tif").write_bytes(b"old")
    with pytest.raises(OSError):
        write_tiled_tiff(tmp_path / "x.tif", Broken(), axes="YX", tile=32)
    assert [f.name for f in tmp_path.iterdir()] == ["x.tif"]
    assert (tmp_path / "x.tif").read_bytes() == b"old"


def test_tiled_tiff_stack_is_read_lazily_and_fuses(tmp_path):
    s = ne.sample_stack(n_planes=4, shape=(200, 150), seed=9).stack.data
    tifffile.imwrite(tmp_path / "stack.tif", s, tile=(64, 64), photometric="minisblack")
    st = ne.open_stack(tmp_path / "stack.tif")
    assert st.is_lazy and st.shape == (4, 200, 150)
    r = ne.fuse(st, tile=64)
    assert r.is_lazy
    np.testing.assert_array_equal(r.compute().fused, ne.fuse(s, tile=64).fused)
