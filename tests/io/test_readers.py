"""open_stack: TIFF / OME / ImageJ / folders / globs / lists, laziness, metadata and clear errors."""
from __future__ import annotations

import gc
import os
import pickle
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import napari_edof
from napari_edof.core.errors import EdofError, ReadError, StackError
from napari_edof.core.stack import Stack
from napari_edof.io import natural_key, open_stack
from napari_edof.io.metadata import map_axes, normalise_unit


def _is_dask(a) -> bool:
    return type(a).__module__.split(".")[0] == "dask"


def _stack(shape=(4, 24, 32), dtype=np.uint16, seed=0):
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.random(shape).astype(dt)
    info = np.iinfo(dt)
    hi = min(int(info.max), 60000)
    lo = max(int(info.min), -1000)
    return rng.integers(lo, hi, size=shape, endpoint=True).astype(dt)


def _write_pngs(folder: Path, planes, names):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for p, n in zip(planes, names):
        path = folder / n
        Image.fromarray(p).save(path, format="PNG")
        paths.append(path)
    return paths


def _open_files_of(path) -> list:
    psutil = pytest.importorskip("psutil")
    target = os.path.realpath(path)
    return [f for f in psutil.Process().open_files() if os.path.realpath(f.path) == target]


# --- single TIFF files ------------------------------------------------------------------------


def test_plain_multipage_tiff_is_zyx_lazy_and_exact(tmp_path):
    a = _stack((3, 20, 30), np.uint16)
    path = tmp_path / "plain.tif"
    with tifffile.TiffWriter(path) as w:  # 3 pages, no metadata at all
        for plane in a:
            w.write(plane, photometric="minisblack", metadata=None)
    s = open_stack(path)
    assert isinstance(s, Stack)
    assert s.axes == "ZYX" and s.shape == (3, 20, 30) and s.dtype == np.uint16
    assert _is_dask(s.data) and s.is_lazy
    assert s.rgb is False
    assert s.name == "plain.tif"
    assert s.source == (str(path.absolute()),)
    assert s.pixel_size is None and s.z_step is None and s.unit == "pixel"
    np.testing.assert_array_equal(s.data.compute(), a)
    np.testing.assert_array_equal(np.asarray(s.data[1, 5:9, 7:12]), a[1, 5:9, 7:12])


def test_tiff_pixels_are_read_at_compute_time_not_at_open(tmp_path):
    a = _stack((3, 16, 16), np.uint16)
    path = tmp_path / "lazy.tif"
    tifffile.imwrite(path, a, photometric="minisblack")
    s = open_stack(path)
    # change the pixels of plane 2 in place (same size): a lazy reader sees the new values
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[2]
        offset, count = page.dataoffsets[0], page.databytecounts[0]
    new = np.full((16, 16), 4242, np.uint16).astype(a.dtype.newbyteorder("<"))
    assert count == new.nbytes
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(new.tobytes())
    got = s.data.compute()
    np.testing.assert_array_equal(got[:2], a[:2])
    assert (got[2] == 4242).all()


def test_tiff_file_handle_is_not_held_after_open(tmp_path):
    a = _stack((3, 16, 16), np.uint8)
    path = tmp_path / "handle.tif"
    tifffile.imwrite(path, a, photometric="minisblack")
    s = open_stack(path)
    assert _open_files_of(path) == []  # nothing held between open_stack and the first compute
    np.testing.assert_array_equal(s.data.compute(), a)
    del s
    gc.collect()
    assert _open_files_of(path) == []  # closed with the array


def test_tiff_dask_graph_pickles(tmp_path):
    a = _stack((3, 16, 16), np.uint16)
    path = tmp_path / "p.tif"
    tifffile.imwrite(path, a, photometric="minisblack")
    s = open_stack(path)
    s.data.compute()  # with an open handle
    d2 = pickle.loads(pickle.dumps(s.data))
    np.testing.assert_array_equal(d2.compute(), a)


def test_big_endian_tiff_comes_out_native(tmp_path):
    a = _stack((3, 20, 24), np.uint16)
    path = tmp_path / "be.tif"
    tifffile.imwrite(path, a, byteorder=">", photometric="minisblack")
    with tifffile.TiffFile(path) as tf:
        assert tf.byteorder == ">"
    s = open_stack(path)
    assert s.dtype == np.dtype(np.uint16) and s.dtype.isnative
    got = s.data.compute()
    assert got.dtype.isnative
    np.testing.assert_array_equal(got, a)
    r = napari_edof.fuse(s)
    assert r.fused.dtype == np.uint16 and r.fused.shape == (20, 24)


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.uint16, np.int8, np.int16, np.uint32, np.int32, np.float16, np.float32, np.float64]
)
def test_tiff_dtypes_are_kept(tmp_path, dtype):
    a = _stack((3, 12, 14), dtype)
    path = tmp_path / f"{np.dtype(dtype).name}.tif"
    tifffile.imwrite(path, a, photometric="minisblack")
    s = open_stack(path)
    assert s.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(s.data.compute(), a)


@pytest.mark.parametrize("dtype", [bool, np.complex64, np.int64, np.uint64])
def test_unsupported_tiff_dtype_names_the_file(tmp_path, dtype):
    path = tmp_path / f"bad_{np.dtype(dtype).name}.tif"
    tifffile.imwrite(path, np.zeros((3, 8, 8), dtype), photometric="minisblack")
    with pytest.raises(StackError, match=f"bad_{np.dtype(dtype).name}.tif.*unsupported pixel type"):
        open_stack(path)


def test_ome_tiff_axes_and_physical_scale(tmp_path):
    a = _stack((2, 3, 4, 20, 30), np.uint16)
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(
        path,
        a,
        ome=True,
        metadata={
            "axes": "TCZYX",
            "PhysicalSizeX": 0.5,
            "PhysicalSizeY": 0.25,
            "PhysicalSizeZ": 1500.0,
            "PhysicalSizeZUnit": "nm",
        },
    )
    s = open_stack(path)
    assert s.axes == "TCZYX"
    assert (s.n_times, s.n_channels, s.n_planes) == (2, 3, 4)
    assert s.rgb is False
    assert s.pixel_size == pytest.approx((0.25, 0.5))
    assert s.unit == "µm"
    assert s.z_step == pytest.approx(1.5)  # 1500 nm in µm
    assert s.metadata["format"] == "ome-tiff"
    np.testing.assert_array_equal(s.data[1, 2].compute(), a[1, 2])


def test_ome_singleton_axes_are_dropped(tmp_path):
    a = _stack((1, 1, 5, 16, 16), np.uint8)
    path = tmp_path / "one.ome.tif"
    tifffile.imwrite(path, a, ome=True, metadata={"axes": "TCZYX", "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.1})
    s = open_stack(path)
    assert s.axes == "ZYX" and s.shape == (5, 16, 16)
    assert s.pixel_size == pytest.approx((0.1, 0.1)) and s.z_step is None
    np.testing.assert_array_equal(s.data.compute(), a[0, 0])


def test_ome_rgb_stack(tmp_path):
    a = _stack((4, 16, 20, 3), np.uint8)
    path = tmp_path / "rgb.ome.tif"
    tifffile.imwrite(path, a, ome=True, photometric="rgb", metadata={"axes": "ZYXS"})
    s = open_stack(path)
    assert s.axes == "ZYXC" and s.rgb is True and s.n_channels == 3
    np.testing.assert_array_equal(s.data.compute(), a)


def test_imagej_hyperstack_axes_and_scale(tmp_path):
    a = _stack((2, 5, 2, 16, 18), np.uint16)
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(
        path,
        a,
        imagej=True,
        resolution=(1 / 0.2, 1 / 0.4),  # pixels per unit along x, y
        metadata={"spacing": 0.75, "unit": "micron", "axes": "TZCYX"},
    )
    s = open_stack(path)
    assert s.axes == "TZCYX"
    assert (s.n_times, s.n_planes, s.n_channels) == (2, 5, 2)
    assert s.pixel_size == pytest.approx((0.4, 0.2))
    assert s.z_step == pytest.approx(0.75)
    assert s.unit == "µm"
    assert s.metadata["format"] == "imagej-tiff"
    np.testing.assert_array_equal(s.data.compute(), a)


def test_imagej_rgb_stack(tmp_path):
    a = _stack((3, 16, 20, 3), np.uint8)
    path = tmp_path / "ij_rgb.tif"
    tifffile.imwrite(path, a, imagej=True, photometric="rgb", metadata={"axes": "ZYXS", "unit": "um", "spacing": 2})
    s = open_stack(path)
    assert s.axes == "ZYXC" and s.rgb is True
    assert s.z_step == pytest.approx(2.0) and s.unit == "µm"
    np.testing.assert_array_equal(s.data.compute(), a)


def test_imagej_file_without_unit_has_no_physical_scale(tmp_path):
    path = tmp_path / "nounit.tif"
    tifffile.imwrite(path, _stack((3, 8, 8), np.uint8), imagej=True, resolution=(3.0, 3.0), metadata={"axes": "ZYX"})
    s = open_stack(path)
    assert s.pixel_size is None and s.unit == "pixel"


def test_rgb_stack_written_as_channels_of_rgb_images_is_read_as_z(tmp_path):
    # tifffile's ImageJ writer calls the first axis of a (3, Y, X, 3) RGB stack "C"
    a = _stack((3, 16, 20, 3), np.uint8)
    path = tmp_path / "cyxs.tif"
    tifffile.imwrite(path, a, imagej=True, photometric="rgb")
    with tifffile.TiffFile(path) as tf:
        assert tf.series[0].axes == "CYXS"
    s = open_stack(path)
    assert s.axes == "ZYXC" and s.rgb
    np.testing.assert_array_equal(s.data.compute(), a)


def test_pages_written_one_by_one_are_stacked(tmp_path):
    a = _stack((4, 12, 10), np.float32)
    path = tmp_path / "each.tif"
    with tifffile.TiffWriter(path) as w:
        for plane in a:
            w.write(plane)  # one tifffile "shaped" series per page
    with tifffile.TiffFile(path) as tf:
        assert len(tf.series) == 4
    s = open_stack(path)
    assert s.axes == "ZYX" and s.shape == (4, 12, 10)
    np.testing.assert_array_equal(s.data.compute(), a)


def test_tiff_pages_of_different_sizes(tmp_path):
    a = _stack((3, 20, 30), np.uint16)
    path = tmp_path / "ragged.tif"
    with tifffile.TiffWriter(path) as w:
        w.write(a[0], metadata=None, photometric="minisblack")
        w.write(a[1], metadata=None, photometric="minisblack")
        w.write(a[2, :10], metadata=None, photometric="minisblack")
    with pytest.raises(StackError, match=r"ragged\.tif.*page 2 is 10x30 but page 0 is 20x30"):
        open_stack(path)


def test_explicit_axes(tmp_path):
    a = _stack((2, 3, 16, 16), np.uint16)
    path = tmp_path / "four.tif"
    tifffile.imwrite(path, a, photometric="minisblack")  # tifffile: "QQYX", ambiguous
    with pytest.raises(StackError, match=r"four\.tif.*pass axes="):
        open_stack(path)
    s = open_stack(path, axes="TZYX")
    assert s.axes == "TZYX" and (s.n_times, s.n_planes) == (2, 3)
    s = open_stack(path, axes="zcyx")
    assert s.axes == "ZCYX" and s.n_planes == 2 and s.n_channels == 3
    with pytest.raises(StackError, match=r"four\.tif.*axes='ZYX' has 3 letters.*4 dimensions"):
        open_stack(path, axes="ZYX")
    with pytest.raises(StackError, match=r"four\.tif.*unknown axis"):
        open_stack(path, axes="ZQYX")


def test_planar_rgb_single_image_and_axes_override(tmp_path):
    a = _stack((3, 16, 16), np.uint8)
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, a, photometric="rgb", planarconfig="separate")
    with pytest.raises(StackError, match=r"planar\.tif: a single 2D image \(16x16 RGB\) is not a focus stack"):
        open_stack(path)
    s = open_stack(path, axes="ZYX")  # the 3 samples are really 3 focal planes
    assert s.axes == "ZYX" and s.rgb is False
    np.testing.assert_array_equal(s.data.compute(), a)


def test_axes_s_is_taken_as_rgb_channels(tmp_path):
    a = _stack((3, 10, 12, 3), np.uint8)
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, a, photometric="rgb")
    s = open_stack(path, axes="ZYXS")
    assert s.axes == "ZYXC" and s.rgb is True
    s = open_stack(path)
    assert s.axes == "ZYXC" and s.rgb is True
    np.testing.assert_array_equal(s.data.compute(), a)


def test_name_override(tmp_path):
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, _stack((2, 8, 8), np.uint8), photometric="minisblack")
    assert open_stack(path, name="my stack").name == "my stack"
    assert open_stack(str(path)).name == "x.tif"


def test_single_page_tiff_is_not_a_stack(tmp_path):
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, _stack((20, 30), np.uint16), photometric="minisblack")
    with pytest.raises(StackError, match=r"flat\.tif: a single 2D image \(20x30\) is not a focus stack"):
        open_stack(path)


def test_single_png_is_not_a_stack(tmp_path):
    path = tmp_path / "one.png"
    Image.fromarray(_stack((20, 30, 3), np.uint8)).save(path)
    with pytest.raises(StackError, match=r"one\.png: a single 2D image \(20x30 RGB\)"):
        open_stack(path)
    with pytest.raises(StackError, match=r"one\.png: a single 2D image"):
        open_stack([path])


# --- folders, globs, lists --------------------------------------------------------------------


def test_folder_natural_order_and_values(tmp_path):
    planes = [np.full((12, 16), 10 * k, np.uint8) for k in range(11)]
    names = [f"img{k}.png" for k in range(11)]  # img10 must come after img9, not after img1
    _write_pngs(tmp_path / "stack", planes, names)
    (tmp_path / "stack" / "ReadMe.txt").write_text("not an image")
    (tmp_path / "stack" / ".hidden.png").write_bytes(b"junk")
    s = open_stack(tmp_path / "stack")
    assert s.axes == "ZYX" and s.shape == (11, 12, 16) and s.dtype == np.uint8
    assert s.name == "stack"
    assert [Path(p).name for p in s.source] == names
    assert _is_dask(s.data)
    got = s.data.compute()
    np.testing.assert_array_equal(got[:, 0, 0], [10 * k for k in range(11)])


def test_natural_key():
    names = ["b10.png", "b2.png", "B1.png", "a.png", "b2a.png"]
    assert sorted(names, key=natural_key) == ["a.png", "B1.png", "b2.png", "b2a.png", "b10.png"]


def test_folder_rgb_and_rgba(tmp_path):
    rgb = [_stack((10, 14, 3), np.uint8, seed=k) for k in range(3)]
    _write_pngs(tmp_path / "rgb", rgb, ["a1.png", "a2.png", "a3.png"])
    s = open_stack(tmp_path / "rgb")
    assert s.axes == "ZYXC" and s.rgb and s.shape == (3, 10, 14, 3)
    np.testing.assert_array_equal(s.data.compute(), np.stack(rgb))
    rgba = [_stack((10, 14, 4), np.uint8, seed=k) for k in range(2)]
    _write_pngs(tmp_path / "rgba", rgba, ["a1.png", "a2.png"])
    s = open_stack(tmp_path / "rgba")
    assert s.axes == "ZYXC" and s.rgb and s.n_channels == 4
    np.testing.assert_array_equal(s.data.compute(), np.stack(rgba))


def test_folder_of_16bit_pngs_and_tiffs(tmp_path):
    a = _stack((3, 10, 12), np.uint16)
    _write_pngs(tmp_path / "png16", list(a), ["p1.png", "p2.png", "p3.png"])
    s = open_stack(tmp_path / "png16")
    assert s.dtype == np.uint16
    np.testing.assert_array_equal(s.data.compute(), a)
    (tmp_path / "tif").mkdir()
    for k, p in enumerate(a):
        tifffile.imwrite(tmp_path / "tif" / f"t{k}.TIF", p, byteorder=">" if k % 2 else "<")
    s = open_stack(tmp_path / "tif")
    assert s.dtype == np.uint16 and s.dtype.isnative
    np.testing.assert_array_equal(s.data.compute(), a)


def test_folder_of_float_tiffs(tmp_path):
    a = _stack((3, 10, 12), np.float32)
    (tmp_path / "f").mkdir()
    for k, p in enumerate(a):
        tifffile.imwrite(tmp_path / "f" / f"z{k:02d}.tiff", p)
    s = open_stack(tmp_path / "f")
    assert s.dtype == np.float32
    np.testing.assert_array_equal(s.data.compute(), a)


def test_format_is_taken_from_magic_bytes_not_names(tmp_path):
    a = [_stack((16, 16, 3), np.uint8, seed=k) for k in range(3)]
    folder = tmp_path / "liars"
    folder.mkdir()
    Image.fromarray(a[0]).save(folder / "p1.png", format="JPEG", quality=95)  # JPEG named .png
    Image.fromarray(a[1]).save(folder / "p2.jpg", format="PNG")  # PNG named .jpg
    tifffile.imwrite(folder / "p3.png", a[2], photometric="rgb")  # TIFF named .png
    s = open_stack(folder)
    assert s.shape == (3, 16, 16, 3) and s.rgb
    got = s.data.compute()
    np.testing.assert_array_equal(got[0], np.asarray(Image.open(folder / "p1.png")))
    np.testing.assert_array_equal(got[1], a[1])
    np.testing.assert_array_equal(got[2], a[2])
    assert s.metadata["format"].startswith("mixed")


def test_glob_and_list(tmp_path):
    planes = [np.full((8, 8), k, np.uint8) for k in range(5)]
    _write_pngs(tmp_path, planes, ["f10.png", "f2.png", "f1.png", "g1.png", "f3.png"])
    s = open_stack(str(tmp_path / "f*.png"))
    assert [Path(p).name for p in s.source] == ["f1.png", "f2.png", "f3.png", "f10.png"]
    np.testing.assert_array_equal(s.data[:, 0, 0].compute(), [2, 1, 4, 0])
    assert s.name == "f*.png"
    order = [tmp_path / "g1.png", tmp_path / "f1.png", str(tmp_path / "f10.png")]
    s = open_stack(order)  # a list keeps the order given
    assert [Path(p).name for p in s.source] == ["g1.png", "f1.png", "f10.png"]
    np.testing.assert_array_equal(s.data[:, 0, 0].compute(), [3, 2, 0])
    s = open_stack(tuple(order), axes="ZYX", name="picked")
    assert s.name == "picked" and s.axes == "ZYX"


def test_folder_pixels_are_read_lazily(tmp_path, monkeypatch):
    planes = [np.full((8, 8, 3), k, np.uint8) for k in range(3)]
    _write_pngs(tmp_path, planes, ["a.png", "b.png", "c.png"])
    loads = []
    orig = Image.Image.load

    def counting_load(self, *a, **k):
        loads.append(self)
        return orig(self, *a, **k)

    monkeypatch.setattr(Image.Image, "load", counting_load)
    s = open_stack(tmp_path)
    assert loads == []  # headers only
    # replacing a file after opening: the new pixels are what compute sees
    Image.fromarray(np.full((8, 8, 3), 99, np.uint8)).save(tmp_path / "b.png")
    got = s.data.compute()
    assert len(loads) >= 3
    assert (got[1] == 99).all() and (got[2] == 2).all()


# --- errors -----------------------------------------------------------------------------------


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ReadError, match=r"nothing\.tif: no such file"):
        open_stack(tmp_path / "nothing.tif")
    with pytest.raises(ReadError, match=r"no such file or folder \(the folder .*nowhere does not exist\)"):
        open_stack(tmp_path / "nowhere" / "x.tif")
    with pytest.raises(ReadError, match=r"missing\.png: no such file"):
        open_stack([tmp_path / "missing.png", tmp_path / "missing2.png"])


def test_not_a_path():
    with pytest.raises(ReadError, match="give a file, a folder"):
        open_stack(42)


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(ReadError, match=r"empty\.tif: the file is empty \(0 bytes\)"):
        open_stack(tmp_path / "empty.tif")
    folder = tmp_path / "planes"
    folder.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / "ok.png")
    (folder / "zero.png").write_bytes(b"")
    with pytest.raises(ReadError, match=r"zero\.png: the file is empty"):
        open_stack(folder)


def test_not_an_image(tmp_path):
    (tmp_path / "notes.tif").write_text("hello, I am text\n")
    with pytest.raises(ReadError, match=r"notes\.tif: not a TIFF, PNG or JPEG image"):
        open_stack(tmp_path / "notes.tif")


def test_corrupt_tiff_header(tmp_path):
    (tmp_path / "bad.tif").write_bytes(b"II*\x00" + b"\xff" * 100)
    with pytest.raises(ReadError, match=r"bad\.tif: .*(truncated or corrupt|not a readable TIFF)"):
        open_stack(tmp_path / "bad.tif")


def test_truncated_tiff_written_here(tmp_path):
    a = _stack((5, 64, 64), np.uint16)
    full = tmp_path / "full.tif"
    tifffile.imwrite(full, a, photometric="minisblack")
    data = full.read_bytes()
    for frac in (0.9, 0.5, 0.05):
        cut = tmp_path / f"cut{int(frac * 100)}.tif"
        cut.write_bytes(data[: int(len(data) * frac)])
        with pytest.raises(ReadError, match=rf"cut{int(frac * 100)}\.tif: .*truncated or corrupt"):
            open_stack(cut)
    assert full.read_bytes() == data


def test_truncated_png_and_jpeg(tmp_path):
    a = _stack((64, 64, 3), np.uint8)
    ok = tmp_path / "ok"
    ok.mkdir()
    for k in range(2):
        Image.fromarray(a).save(ok / f"p{k}.png")
    bad = tmp_path / "badpng"
    shutil.copytree(ok, bad)
    raw = (bad / "p1.png").read_bytes()
    (bad / "p1.png").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ReadError, match=r"p1\.png: the PNG is truncated"):
        open_stack(bad)
    jpg = tmp_path / "badjpg"
    jpg.mkdir()
    for k in range(2):
        Image.fromarray(a).save(jpg / f"j{k}.jpg", quality=90)
    raw = (jpg / "j1.jpg").read_bytes()
    (jpg / "j1.jpg").write_bytes(raw[: len(raw) // 2])
    s = open_stack(jpg)  # a JPEG's header is intact: this shows when its pixels are read
    with pytest.raises(ReadError, match=r"j1\.jpg: cannot read the pixels.*truncated"):
        s.data.compute()


def test_planes_of_different_sizes(tmp_path):
    _write_pngs(tmp_path, [np.zeros((10, 12), np.uint8), np.zeros((10, 12), np.uint8), np.zeros((11, 12), np.uint8)],
                ["a1.png", "a2.png", "a3.png"])
    with pytest.raises(StackError, match=r"a3\.png: the image is 11x12 pixels but a1\.png \(the first plane\) is 10x12"):
        open_stack(tmp_path)


def test_planes_with_different_channels(tmp_path):
    _write_pngs(tmp_path / "c", [np.zeros((10, 12, 3), np.uint8), np.zeros((10, 12, 4), np.uint8)], ["a1.png", "a2.png"])
    with pytest.raises(StackError, match=r"a2\.png: the image is RGBA but a1\.png \(the first plane\) is RGB"):
        open_stack(tmp_path / "c")
    _write_pngs(tmp_path / "g", [np.zeros((10, 12), np.uint8), np.zeros((10, 12, 3), np.uint8)], ["a1.png", "a2.png"])
    with pytest.raises(StackError, match=r"a2\.png: .*RGB but a1\.png .*grey.*same channels"):
        open_stack(tmp_path / "g")


def test_planes_with_different_dtypes(tmp_path):
    _write_pngs(tmp_path, [np.zeros((10, 12), np.uint8), np.zeros((10, 12), np.uint16)], ["a1.png", "a2.png"])
    with pytest.raises(StackError, match=r"a2\.png: the pixel type is uint16 but a1\.png"):
        open_stack(tmp_path)


def test_fewer_than_two_planes(tmp_path):
    _write_pngs(tmp_path / "one", [np.zeros((10, 12), np.uint8)], ["only.png"])
    (tmp_path / "one" / "notes.txt").write_text("x")
    with pytest.raises(StackError, match=r"needs at least 2 planes.*only\.png"):
        open_stack(tmp_path / "one")
    with pytest.raises(StackError, match=r"needs at least 2 planes"):
        open_stack(str(tmp_path / "one" / "*.png"))
    one_page = tmp_path / "one.tif"
    tifffile.imwrite(one_page, np.zeros((1, 10, 12), np.uint8), imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(StackError, match=r"one\.tif: a single 2D image \(10x12\)"):
        open_stack(one_page)
    with pytest.raises(StackError, match=r"one\.tif: .*needs at least 2 planes"):
        open_stack(one_page, axes="TZCYXS")  # tifffile's unsqueezed ImageJ axes


def test_multipage_tiff_inside_a_folder(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((8, 8), np.uint8))
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((3, 8, 8), np.uint8), photometric="minisblack")
    with pytest.raises(StackError, match=r"b\.tif: the TIFF holds more than one plane"):
        open_stack(tmp_path)


def test_unsupported_dtype_in_folder_names_the_file(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((8, 8), np.int64))
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((8, 8), np.int64))
    with pytest.raises(StackError, match=r"a\.tif: unsupported pixel type int64"):
        open_stack(tmp_path)


def test_sixteen_bit_colour_png_keeps_16_bits(tmp_path):
    """A hand-made 16-bit RGB PNG (no encoder library involved) reads back exactly, 16-bit."""
    import struct
    import zlib

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    a = _stack((4, 5, 3), np.uint16)
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(4))
    ihdr = struct.pack(">IIBBBBB", 5, 4, 16, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    for k in range(2):
        (tmp_path / f"c{k}.png").write_bytes(data)
    s = open_stack(tmp_path)
    assert s.dtype == np.uint16 and s.rgb and s.data.shape == (2, 4, 5, 3)
    np.testing.assert_array_equal(np.asarray(s.data), np.stack([a, a]))


def test_empty_folder_and_glob_without_matches(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReadError, match=r"empty: the folder holds no TIFF, PNG or JPEG images \(it is empty\)"):
        open_stack(tmp_path / "empty")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("a")
    with pytest.raises(ReadError, match=r"texts: the folder holds no TIFF, PNG or JPEG images \(it holds 1 other file\)"):
        open_stack(tmp_path / "texts")
    with pytest.raises(ReadError, match=r"no files match the pattern .*\*\.png"):
        open_stack(str(tmp_path / "empty" / "*.png"))
    with pytest.raises(ReadError, match=r"matches 1 file\(s\) but none is a TIFF, PNG or JPEG"):
        open_stack(str(tmp_path / "texts" / "*"))
    with pytest.raises(ReadError, match="an empty list"):
        open_stack([])


def test_errors_are_edof_errors(tmp_path):
    assert issubclass(ReadError, EdofError) and issubclass(StackError, EdofError)
    with pytest.raises(EdofError):
        open_stack(tmp_path / "nothing.tif")


def test_nan_in_float_tiff_is_reported_with_the_file_name(tmp_path):
    a = _stack((4, 32, 32), np.float32)
    a[2, 5, 7] = np.nan
    path = tmp_path / "has_nan.tif"
    tifffile.imwrite(path, a, photometric="minisblack")
    s = open_stack(path)  # cannot be checked lazily: the engine checks each tile
    with pytest.raises(EdofError, match=r"has_nan\.tif.*NaN"):
        napari_edof.fuse(s, lazy=False)
    lazy = napari_edof.fuse(s)  # a lazy result: the check runs when the stripes do
    with pytest.raises(EdofError, match=r"has_nan\.tif.*NaN"):
        lazy.compute()


def test_inputs_are_not_modified(tmp_path):
    a = _stack((3, 16, 16), np.uint16)
    path = tmp_path / "in.tif"
    tifffile.imwrite(path, a, photometric="minisblack")
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    s = open_stack(path)
    napari_edof.fuse(s)
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


# --- metadata helpers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "unit, expected",
    [("micron", "µm"), ("um", "µm"), ("\\u00B5m", "µm"), ("μm", "µm"), ("µm", "µm"), ("nm", "nm"),
     ("", None), ("pixel", None), (None, None)],
)
def test_normalise_unit(unit, expected):
    assert normalise_unit(unit) == expected


@pytest.mark.parametrize(
    "file_axes, shape, rgb_file, expected",
    [
        ("IYX", (3, 8, 8), False, ("ZYX", False)),
        ("QYX", (3, 8, 8), False, ("ZYX", False)),
        ("IYXS", (3, 8, 8, 3), True, ("ZYXC", True)),
        ("ZYXS", (3, 8, 8, 2), False, ("ZYXC", False)),
        ("TZCYX", (2, 3, 4, 8, 8), False, ("TZCYX", False)),
        ("CYXS", (3, 8, 8, 3), True, ("ZYXC", True)),
    ],
)
def test_map_axes(file_axes, shape, rgb_file, expected):
    ax, rgb, _, drop = map_axes(file_axes, shape, photometric_rgb=rgb_file)
    assert (ax, rgb) == expected and drop == ()


def test_map_axes_refuses_two_unknown_axes():
    with pytest.raises(StackError, match="pass axes="):
        map_axes("QQYX", (2, 3, 8, 8), photometric_rgb=False, label="f.tif")
    ax, _, _, drop = map_axes("QZYX", (1, 3, 8, 8), photometric_rgb=False)
    assert ax == "ZYX" and drop == (0,)


# --- real stacks (../shared/data) ----------------------------------------------------------


def test_real_epfl_imagej_rgb_stack(shared_data):
    path = shared_data / "epfl_edf_skeleton_zeiss" / "stack.tif"
    s = open_stack(path)
    assert s.axes == "ZYXC" and s.shape == (3, 116, 170, 3) and s.rgb and s.dtype == np.uint8
    assert s.name == "stack.tif" and s.metadata["format"] == "imagej-tiff"
    np.testing.assert_array_equal(s.data.compute(), tifffile.imread(path))
    r = napari_edof.fuse(s)
    assert r.fused.shape == (116, 170, 3) and r.fused.dtype == np.uint8


def test_real_epfl_truncated_copy(shared_data, tmp_path):
    data = (shared_data / "epfl_edf_skeleton_zeiss" / "stack.tif").read_bytes()
    for n in (len(data) // 2, 5000, 7):
        cut = tmp_path / f"epfl_cut_{n}.tif"
        cut.write_bytes(data[:n])
        with pytest.raises(ReadError, match=rf"epfl_cut_{n}\.tif: .*(truncated or corrupt|not a readable TIFF)"):
            open_stack(cut)


def test_real_dfnn_uint16_big_endian_folder(shared_data, tmp_path):
    folder = shared_data / "dfnn_lightsheet_microtubules_zstack"
    t0 = time.perf_counter()
    s = open_stack(folder)
    assert s.axes == "ZYX" and s.shape == (31, 800, 512)
    assert s.dtype == np.uint16 and s.dtype.isnative
    assert s.name == "dfnn_lightsheet_microtubules_zstack"
    names = [Path(p).name for p in s.source]
    assert names[0].endswith("Abs0036.tif") and names[-1].endswith("Abs0066.tif")
    assert names == sorted(names)  # ReadMe.txt is not a plane
    crop = s.data[10:13, 300:340, 200:260].compute()
    for k in range(3):
        ref = tifffile.imread(s.source[10 + k])
        np.testing.assert_array_equal(crop[k], ref[300:340, 200:260])
    assert 40 < crop.min() and crop.max() < 5000
    assert time.perf_counter() - t0 < 30
    # one plane truncated: named at open time
    bad = tmp_path / "dfnn"
    bad.mkdir()
    for p in s.source[:3]:
        shutil.copy(p, bad)
    victim = bad / Path(s.source[1]).name
    raw = victim.read_bytes()
    victim.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ReadError, match=rf"{victim.name}: the file is truncated or corrupt"):
        open_stack(bad)


def test_real_dfnn_fuses_a_crop(shared_data):
    s = open_stack(shared_data / "dfnn_lightsheet_microtubules_zstack")
    r = napari_edof.fuse(s.with_data(s.data[:, 100:196, 100:196]))
    assert r.fused.dtype == np.uint16 and r.fused.shape == (96, 96)
    assert r.n_planes == 31


def test_real_algae_jpeg_named_png_stays_lazy(shared_data, monkeypatch):
    folder = shared_data / "algae_microscopy_5focal"
    loads = []
    orig = Image.Image.load

    def counting_load(self, *a, **k):
        loads.append(1)
        return orig(self, *a, **k)

    monkeypatch.setattr(Image.Image, "load", counting_load)
    t0 = time.perf_counter()
    s = open_stack(folder)
    opened = time.perf_counter() - t0
    assert loads == [], "open_stack decoded pixels"
    assert opened < 2.0  # 5 JPEG headers, not 5 x 20 Mpixel decodes
    assert s.shape == (5, 3648, 5440, 3) and s.axes == "ZYXC" and s.rgb and s.dtype == np.uint8
    assert s.metadata["format"] == "jpeg"
    assert [Path(p).name for p in s.source] == [f"img_{k}.png" for k in range(1, 6)]
    monkeypatch.setattr(Image.Image, "load", orig)
    crop = s.data[[0, 4], 1000:1064, 2000:2080].compute()
    for k, z in enumerate((0, 4)):
        ref = np.asarray(Image.open(s.source[z]))[1000:1064, 2000:2080]
        np.testing.assert_array_equal(crop[k], ref)


def test_real_pcb_glob_selects_the_planes(shared_data):
    s = open_stack(str(shared_data / "focus-stack_examples" / "pcb" / "pcb_*.jpg"))
    assert s.shape == (7, 1536, 2048, 3) and s.rgb
    assert [Path(p).name for p in s.source] == [f"pcb_{k:03d}.jpg" for k in range(1, 8)]
    crop = s.data[6, :32, -40:].compute()
    np.testing.assert_array_equal(crop, np.asarray(Image.open(s.source[6]))[:32, -40:])


def test_real_pcb_bare_folder_leaves_out_expected_jpg(shared_data):
    # pcb/ also holds expected.jpg (the focus-stack tool's output, same size), which would sort
    # first and become plane 0: a folder leaves it out and says so (a list or a glob takes it)
    from napari_edof.core.errors import EdofWarning

    with pytest.warns(EdofWarning, match="expected.jpg"):
        s = open_stack(shared_data / "focus-stack_examples" / "pcb")
    assert s.n_planes == 7
    assert [Path(p).name for p in s.source] == [f"pcb_{k:03d}.jpg" for k in range(1, 8)]


def test_tiled_compressed_tiff_read_in_parallel(tmp_path):
    a = _stack((12, 70, 90), np.uint16)
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, a, photometric="minisblack", tile=(32, 32), compression="zlib")
    s = open_stack(path)
    assert s.axes == "ZYX" and s.data.chunks[0] == (1,) * 12  # one chunk per page
    np.testing.assert_array_equal(s.data.compute(scheduler="threads"), a)
    np.testing.assert_array_equal(s.data[5:9, 31:65, 1:80].compute(), a[5:9, 31:65, 1:80])


def test_io_imports_neither_qt_napari_nor_torch():
    import subprocess
    import sys

    code = (
        "import sys, napari_edof.io; "
        "print(sorted(m for m in ('torch', 'napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide6') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- a folder's results are not planes (issue 15) ---------------------------------------------


def _planes_with_results(folder: Path, n: int = 3) -> list[Path]:
    """``n`` RGB JPEG planes, and beside them a reference and napari-edof's own outputs."""
    from napari_edof.io.writers import write_png, write_tiff

    folder.mkdir()
    rng = np.random.default_rng(0)
    planes = []
    for i in range(n):
        p = folder / f"plane_{i + 1:03d}.jpg"
        Image.fromarray(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)).save(p)
        planes.append(p)
    Image.fromarray(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)).save(folder / "expected.jpg")
    write_tiff(folder / "fused.tif", rng.integers(0, 255, (32, 40, 3), dtype=np.uint8))
    for name in ("focus_index.tif", "confidence.tif"):
        write_tiff(folder / name, rng.random((32, 40), dtype=np.float32))
    write_png(folder / "focus_index.png", rng.integers(0, 255, (32, 40, 3), dtype=np.uint8))
    write_tiff(folder / "decision.tif", rng.integers(1, 4, (32, 40), dtype=np.uint16))
    write_tiff(folder / "masks.tif", rng.integers(0, 2, (3, 32, 40), dtype=np.uint8) * 255)
    return planes


SKIPPED = ["confidence.tif", "decision.tif", "expected.jpg", "focus_index.png", "focus_index.tif", "fused.tif",
           "masks.tif"]


def test_a_folder_leaves_out_results_and_says_so(tmp_path):
    from napari_edof.core.errors import EdofWarning

    planes = _planes_with_results(tmp_path / "stack")
    with pytest.warns(EdofWarning, match="7 images in the folder left out") as rec:
        st = open_stack(tmp_path / "stack")
    text = str(rec[0].message)
    for name in SKIPPED:
        assert name in text
    assert "give the files as a list or a glob pattern" in text
    assert st.n_planes == 3 and [Path(s).name for s in st.source] == [p.name for p in planes]
    assert sorted(Path(s).name for s in st.metadata["skipped"]) == SKIPPED
    assert st.metadata["reconciled"] == [text]  # (the run's provenance: input_warnings)
    np.testing.assert_array_equal(np.asarray(st.data), np.asarray(open_stack(planes).data))


def test_a_list_or_a_glob_takes_every_image_it_names(tmp_path, recwarn):
    planes = _planes_with_results(tmp_path / "stack")
    st = open_stack([*planes, tmp_path / "stack" / "expected.jpg"])
    assert st.n_planes == 4
    assert open_stack(str(tmp_path / "stack" / "*.jpg")).n_planes == 4
    assert not [w for w in recwarn if "left out" in str(w.message)]


def test_a_folder_of_results_only_is_refused(tmp_path):
    folder = tmp_path / "stack"
    _planes_with_results(folder)
    for p in folder.glob("plane_*"):
        p.unlink()
    with pytest.raises(ReadError, match="holds no planes, only") as e:
        open_stack(folder)
    assert "expected.jpg" in str(e.value) and "fused.tif" in str(e.value) and "glob" in str(e.value)
    (folder / "masks.tif").unlink()
    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(folder / "plane_1.jpg")
    with pytest.raises(StackError, match=r"only 1 image \(plane_1.jpg\) and .*expected.jpg.*left out"):
        open_stack(folder)


def test_plane_names_that_look_like_results_are_still_planes():
    from napari_edof.io.read_planes import not_a_plane

    for name in ("fused.tif", "FUSED.TIF", "pcb_fused.tif", "focus_index_t003.png", "confidence.tiff",
                 "fused.ome.tif", "expected.jpg", "Expected.JPG", "ground_truth.png", "all-in-focus.png", "gt.tif"):
        assert not_a_plane(name), name
    for name in ("pcb_001.jpg", "refused.tif", "fused_001.tif", "masks_1.tif", "expected_2.jpg", "z00_fused",
                 "decisions.tif", "img_gt.png"):
        assert not_a_plane(name) is None, name


def test_cli_says_which_files_of_the_folder_it_left_out(tmp_path, capsys, shared_data):
    """The focus-stack example's pcb folder holds expected.jpg beside its frames."""
    import json

    from napari_edof.cli import main

    pcb = shared_data / "focus-stack_examples" / "pcb"
    folder = tmp_path / "pcb"
    shutil.copytree(pcb, folder)
    assert main(["fuse", str(folder), "-o", str(tmp_path / "out"), "-m", "focus-select", "-q"]) == 0
    err = capsys.readouterr().err
    assert "napari-edof: warning:" in err and "expected.jpg (a reference image, not a plane)" in err
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert len(prov["source"]) == len(list(pcb.glob("pcb_*.jpg"))) and not any("expected" in s for s in prov["source"])
    assert any("expected.jpg" in w for w in prov["input_warnings"])
    # our own outputs saved next to the frames are left out too, and the result is the same
    for f in (tmp_path / "out").glob("*.tif"):
        shutil.copy(f, folder / f.name)
    assert main(["fuse", str(folder), "-o", str(tmp_path / "again"), "-m", "focus-select", "-q"]) == 0
    assert "fused.tif" in capsys.readouterr().err
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "again" / "fused.tif"),
                                  tifffile.imread(tmp_path / "out" / "fused.tif"))
