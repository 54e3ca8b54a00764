"""Reading a stack into memory at once (io/read_memory.py, issue 17): the same pixels as the lazy
path, numpy when the stack fits, lazy when it does not."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_edof.core.stack import is_dask
from napari_edof.io import open_stack, read_memory, read_stack, write_result
from napari_edof.io.read_memory import materialise


def _stack(n=5, shape=(40, 48), seed=0, dtype=np.uint16):
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(dtype).max, size=(n, *shape), dtype=dtype)


@pytest.fixture
def plane_folder(tmp_path):
    st = _stack()
    d = tmp_path / "planes"
    d.mkdir()
    for i, p in enumerate(st):
        tifffile.imwrite(d / f"plane_{i:02d}.tif", p)
    return d, st


def test_plane_folder_read_both_ways_is_equal(plane_folder):
    d, st = plane_folder
    eager = read_stack(d)
    lazy = open_stack(d)
    assert isinstance(eager.data, np.ndarray) and is_dask(lazy.data)
    np.testing.assert_array_equal(eager.data, st)
    np.testing.assert_array_equal(eager.data, lazy.data.compute())
    assert eager.axes == lazy.axes and eager.source == lazy.source and eager.name == lazy.name


def test_multipage_tiff_read_both_ways_is_equal(tmp_path):
    st = _stack(n=6, seed=1)
    f = tmp_path / "stack.tif"
    tifffile.imwrite(f, st, photometric="minisblack", compression="zlib", tile=(16, 16))
    eager = read_stack(f, workers=2)
    assert isinstance(eager.data, np.ndarray)
    np.testing.assert_array_equal(eager.data, st)
    np.testing.assert_array_equal(eager.data, open_stack(f).data.compute())
    assert eager.axes == "ZYX"


def test_rgb_png_planes_read_both_ways_is_equal(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    st = rng.integers(0, 255, size=(3, 20, 24, 3), dtype=np.uint8)
    for i, p in enumerate(st):
        Image.fromarray(p).save(tmp_path / f"p{i}.png")
    files = [tmp_path / f"p{i}.png" for i in range(3)]
    eager = read_stack(files)
    assert isinstance(eager.data, np.ndarray) and eager.rgb and eager.axes == "ZYXC"
    np.testing.assert_array_equal(eager.data, st)
    np.testing.assert_array_equal(eager.data, open_stack(files).data.compute())


def test_a_stack_too_big_for_memory_stays_lazy(plane_folder, tmp_path, monkeypatch):
    d, st = plane_folder
    monkeypatch.setattr(read_memory, "memory_limit", lambda: st.nbytes - 1)
    big = read_stack(d)
    assert is_dask(big.data)
    assert is_dask(materialise(big).data)
    f = tmp_path / "stack.tif"
    tifffile.imwrite(f, st, photometric="minisblack")
    assert is_dask(read_stack(f).data)
    monkeypatch.setattr(read_memory, "memory_limit", lambda: st.nbytes)  # exactly fits
    assert isinstance(read_stack(d).data, np.ndarray)
    np.testing.assert_array_equal(big.data.compute(), st)  # (the lazy one still reads right)


def test_materialise_reads_the_readers_arrays_and_any_dask_array(plane_folder):
    d, st = plane_folder
    lazy = open_stack(d)
    m = materialise(lazy)
    assert isinstance(m.data, np.ndarray) and m.axes == lazy.axes
    np.testing.assert_array_equal(m.data, st)
    t = lazy.data.transpose(1, 2, 0)[::2]  # not the reader's own array: the generic (dask) path
    np.testing.assert_array_equal(materialise(t), st.transpose(1, 2, 0)[::2])
    a = np.arange(6)
    assert materialise(a) is a


def test_a_read_error_names_the_file(plane_folder):
    d, _ = plane_folder
    bad = d / "plane_02.tif"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated: the pixels are cut off
    from napari_edof.core.errors import EdofError

    with pytest.raises(EdofError, match="plane_02"):
        read_stack(d)


def test_engine_fuses_a_lazy_stack_like_the_same_stack_in_memory(plane_folder):
    from napari_edof.core.engine import drain, fuse_iter

    d, st = plane_folder
    a = drain(fuse_iter(open_stack(d), method="focus-fuse"))
    b = drain(fuse_iter(read_stack(d), method="focus-fuse"))
    np.testing.assert_array_equal(a.fused, b.fused)
    np.testing.assert_array_equal(a.index, b.index)


def test_parallel_writing_writes_every_file_with_its_content(plane_folder, tmp_path):
    from napari_edof.core.engine import fuse

    d, st = plane_folder
    res = fuse(read_stack(d), method="focus-fuse")
    out = write_result(res, tmp_path / "out")
    assert sorted(out) == sorted(["fused", "focus_index", "focus_index_png", "decision", "masks", "confidence",
                                  "provenance"])
    np.testing.assert_array_equal(tifffile.imread(out["fused"]), res.fused)
    np.testing.assert_array_equal(tifffile.imread(out["masks"]), res.masks().astype(np.uint8) * 255)
    np.testing.assert_array_equal(tifffile.imread(out["decision"]), res.labels())
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no staging left


@pytest.mark.parametrize("flavour", ["imagej-tzyx", "miniswhite", "ome", "rgb-planes-tiff", "two-series"])
def test_tiff_flavours_read_both_ways_are_equal(tmp_path, flavour):
    f = tmp_path / "s.tif"
    if flavour == "imagej-tzyx":
        tifffile.imwrite(f, _stack(n=6, seed=3).reshape(2, 3, 40, 48), imagej=True, metadata={"axes": "TZYX"})
    elif flavour == "miniswhite":
        tifffile.imwrite(f, _stack(n=3, seed=4, dtype=np.uint8), photometric="miniswhite")
    elif flavour == "ome":
        tifffile.imwrite(f, _stack(n=4, seed=5), ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": 0.5})
    elif flavour == "rgb-planes-tiff":
        rng = np.random.default_rng(6)
        tifffile.imwrite(f, rng.integers(0, 255, (3, 20, 24, 3), dtype=np.uint8), photometric="rgb")
    else:
        with tifffile.TiffWriter(f) as tw:
            for p in _stack(n=3, seed=7):
                tw.write(p)
    eager, lazy = read_stack(f), open_stack(f)
    assert isinstance(eager.data, np.ndarray)
    assert (eager.axes, eager.rgb, eager.pixel_size, eager.shape) == (lazy.axes, lazy.rgb, lazy.pixel_size, lazy.shape)
    np.testing.assert_array_equal(eager.data, lazy.data.compute())


@pytest.mark.parametrize("kind", ["rgb", "grey", "progressive", "444", "rotated"])
def test_jpeg_planes_decode_as_pillow_decodes_them(tmp_path, kind, monkeypatch):
    """Issue 17: grey and RGB JPEGs are decoded by imagecodecs (libjpeg-turbo, twice as fast as
    through Pillow), to the same pixels Pillow gives; with imagecodecs refused, Pillow reads them."""
    from PIL import Image

    from napari_edof.io import read_planes

    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:96, 0:128]
    paths = []
    for k in range(3):
        base = (127 + 100 * np.sin(xx / (5 + k)) * np.cos(yy / 7) + rng.normal(0, 8, yy.shape)).clip(0, 255)
        rgb = np.stack([base, base[::-1], base[:, ::-1]], axis=-1).astype(np.uint8)
        im = Image.fromarray(rgb[..., 0] if kind == "grey" else rgb)
        opts = {"quality": 90}
        if kind == "progressive":
            opts["progressive"] = True
        if kind == "444":
            opts["subsampling"] = 0
        if kind == "rotated":  # EXIF orientation 6: the planes are turned on reading
            exif = Image.Exif()
            exif[0x0112] = 6
            opts["exif"] = exif.tobytes()
        p = tmp_path / f"p{k}.jpg"
        im.save(p, **opts)
        paths.append(p)
    calls = []
    real = read_planes._jpeg_turbo
    monkeypatch.setattr(read_planes, "_jpeg_turbo", lambda info: calls.append(info) or real(info))
    got = read_stack([str(p) for p in paths]).data
    assert len(calls) == 3
    monkeypatch.setattr(read_planes, "_jpeg_turbo", lambda info: None)  # Pillow alone
    want = read_stack([str(p) for p in paths]).data
    assert got.shape == want.shape == ((3, 128, 96) if kind == "rotated" else (3, 96, 128)) + \
        (() if kind == "grey" else (3,))
    np.testing.assert_array_equal(got, want)
    with Image.open(paths[0]) as im:
        if kind != "rotated":
            np.testing.assert_array_equal(got[0], np.asarray(im))


def test_pcb_jpegs_decode_as_pillow_decodes_them(monkeypatch):
    from pathlib import Path

    from napari_edof.io import read_planes

    pcb = Path(__file__).resolve().parents[3] / "shared/data/focus-stack_examples/pcb"
    if not pcb.is_dir():
        pcb = Path("/work/shared/data/focus-stack_examples/pcb")
    files = sorted(pcb.glob("pcb_*.jpg"))[:2]
    if not files:
        pytest.skip("the focus-stack pcb example is not here")
    got = read_stack([str(f) for f in files]).data
    monkeypatch.setattr(read_planes, "_jpeg_turbo", lambda info: None)
    np.testing.assert_array_equal(got, read_stack([str(f) for f in files]).data)
