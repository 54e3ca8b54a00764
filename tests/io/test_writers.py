"""write_tiff / write_png / colourise / write_result: round trips, metadata, atomic writes, errors."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import napari_edof
from napari_edof.core.errors import EdofError
from napari_edof.core.result import FusionResult
from napari_edof.io import colourise, open_stack, write_png, write_result, write_tiff
from napari_edof.io import writers as writers_mod
from napari_edof.io.writers import json_safe


def _data(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return (rng.random(shape) * 100).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(max(info.min, -30000), min(info.max, 60000), size=shape, endpoint=True).astype(dt)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".part")


# --- write_tiff -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_write_tiff_imagej_round_trip(tmp_path, dtype):
    a = _data((4, 20, 24), dtype)
    path = write_tiff(tmp_path / "s.tif", a, pixel_size=(0.4, 0.2), z_step=1.5, unit="µm", description="hi")
    assert path == tmp_path / "s.tif"
    with tifffile.TiffFile(path) as tf:
        assert tf.is_imagej
        assert tf.series[0].axes == "ZYX"
        ij = tf.imagej_metadata
        assert ij["spacing"] == pytest.approx(1.5) and ij["unit"] == "micron" and ij["Info"] == "hi"
        x_num, x_den = tf.pages[0].tags["XResolution"].value
        assert x_num / x_den == pytest.approx(1 / 0.2, rel=1e-6)
    np.testing.assert_array_equal(tifffile.imread(path), a)
    s = open_stack(path)
    assert s.dtype == np.dtype(dtype) and s.axes == "ZYX"
    assert s.pixel_size == pytest.approx((0.4, 0.2), rel=1e-6)
    assert s.z_step == pytest.approx(1.5) and s.unit == "µm"
    np.testing.assert_array_equal(s.data.compute(), a)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.uint32, np.float64, np.int8])
def test_write_tiff_plain_round_trip_keeps_dtype_and_metadata(tmp_path, dtype):
    a = _data((3, 10, 12), dtype)
    path = write_tiff(tmp_path / "p.tif", a, axes="ZYX", pixel_size=(2.0, 3.0), z_step=4.0, unit="nm",
                      description="plain one")
    with tifffile.TiffFile(path) as tf:
        assert not tf.is_imagej
        meta = tf.shaped_metadata[0]
        assert meta["axes"] == "ZYX" and meta["unit"] == "nm" and meta["description"] == "plain one"
    s = open_stack(path)
    assert s.dtype == np.dtype(dtype) and s.axes == "ZYX"
    assert s.pixel_size == pytest.approx((2.0, 3.0)) and s.z_step == pytest.approx(4.0) and s.unit == "nm"
    np.testing.assert_array_equal(s.data.compute(), a)


def test_write_tiff_rgb_uint8_is_imagej_photometric_rgb(tmp_path):
    a = _data((3, 10, 12, 3), np.uint8)
    path = write_tiff(tmp_path / "rgb.tif", a)  # axes guessed: ZYXS
    with tifffile.TiffFile(path) as tf:
        assert tf.is_imagej and tf.pages[0].photometric == tifffile.PHOTOMETRIC.RGB
    s = open_stack(path)
    assert s.axes == "ZYXC" and s.rgb
    np.testing.assert_array_equal(s.data.compute(), a)
    img = write_tiff(tmp_path / "one.tif", a[0])  # YXS
    with tifffile.TiffFile(img) as tf:
        assert tf.pages[0].photometric == tifffile.PHOTOMETRIC.RGB
    np.testing.assert_array_equal(tifffile.imread(img), a[0])


def test_write_tiff_rgb_uint16_is_plain_photometric_rgb(tmp_path):
    a = _data((3, 10, 12, 3), np.uint16)
    path = write_tiff(tmp_path / "rgb16.tif", a, axes="ZYXS")
    with tifffile.TiffFile(path) as tf:
        assert not tf.is_imagej and tf.pages[0].photometric == tifffile.PHOTOMETRIC.RGB
    s = open_stack(path)
    assert s.axes == "ZYXC" and s.rgb and s.dtype == np.uint16
    np.testing.assert_array_equal(s.data.compute(), a)


def test_write_tiff_reorders_axes_for_imagej(tmp_path):
    a = _data((2, 4, 10, 12), np.uint16)  # C, Z, Y, X
    path = write_tiff(tmp_path / "czyx.tif", a, axes="CZYX")
    with tifffile.TiffFile(path) as tf:
        assert tf.is_imagej and tf.series[0].axes == "ZCYX"
    s = open_stack(path)
    assert s.axes == "ZCYX"
    np.testing.assert_array_equal(s.data.compute(), np.transpose(a, (1, 0, 2, 3)))


def test_write_tiff_accepts_dask(tmp_path):
    da = pytest.importorskip("dask.array")
    a = _data((3, 8, 8), np.uint16)
    path = write_tiff(tmp_path / "d.tif", da.from_array(a, chunks=(1, 8, 8)))
    np.testing.assert_array_equal(tifffile.imread(path), a)


def test_write_tiff_errors(tmp_path):
    with pytest.raises(EdofError, match=r"x\.tif: pass axes="):
        write_tiff(tmp_path / "x.tif", np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(EdofError, match=r"x\.tif: axes='ZYX' has 3 letters"):
        write_tiff(tmp_path / "x.tif", np.zeros((8, 8), np.uint8), axes="ZYX")
    with pytest.raises(EdofError, match=r"x\.tif: unknown axis letter"):
        write_tiff(tmp_path / "x.tif", np.zeros((2, 8, 8), np.uint8), axes="QYX")
    with pytest.raises(EdofError, match=r"x\.tif: pixel type complex64"):
        write_tiff(tmp_path / "x.tif", np.zeros((2, 8, 8), np.complex64))
    with pytest.raises(EdofError, match=r"pixel_size=-1"):
        write_tiff(tmp_path / "x.tif", np.zeros((2, 8, 8), np.uint8), pixel_size=-1)
    with pytest.raises(EdofError, match=r"the folder .*nowhere does not exist"):
        write_tiff(tmp_path / "nowhere" / "x.tif", np.zeros((8, 8), np.uint8))
    with pytest.raises(EdofError, match=r"it is a folder"):
        write_tiff(tmp_path, np.zeros((8, 8), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path, monkeypatch):
    old = _data((2, 8, 8), np.uint16)
    path = write_tiff(tmp_path / "keep.tif", old)
    before = path.read_bytes()

    def broken(file, data, **kwargs):
        with open(file, "wb") as f:
            f.write(b"II*\x00partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", broken)
    with pytest.raises(EdofError, match=r"cannot write .*keep\.tif: No space left on device"):
        write_tiff(path, _data((2, 8, 8), np.uint16, seed=1))
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []
    with pytest.raises(EdofError, match=r"new\.tif"):
        write_tiff(tmp_path / "new.tif", old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.tif"]


def test_written_files_have_normal_permissions(tmp_path):
    path = write_tiff(tmp_path / "perm.tif", np.zeros((8, 8), np.uint8))
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


# --- write_png / colourise --------------------------------------------------------------------


def test_write_png_round_trip(tmp_path):
    for shape in ((10, 12, 3), (10, 12, 4), (10, 12)):
        a = _data(shape, np.uint8)
        path = write_png(tmp_path / f"{len(shape)}_{shape[-1]}.png", a)
        np.testing.assert_array_equal(np.asarray(Image.open(path)), a)
    assert _leftovers(tmp_path) == []


def test_write_png_errors(tmp_path):
    with pytest.raises(EdofError, match=r"x\.png: a PNG needs uint8 pixels, not uint16"):
        write_png(tmp_path / "x.png", np.zeros((4, 4, 3), np.uint16))
    with pytest.raises(EdofError, match=r"x\.png: a PNG needs \(Y, X\)"):
        write_png(tmp_path / "x.png", np.zeros((2, 4, 4, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_colourise_viridis():
    idx = np.array([[0.0, 1.0, 2.0], [3.0, 4.0, np.nan]], np.float32)
    rgb = colourise(idx, 5)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, 0], [68, 1, 84])  # viridis' first colour
    np.testing.assert_array_equal(rgb[1, 1], [253, 231, 37])  # and its last
    np.testing.assert_array_equal(rgb[1, 2], [0, 0, 0])  # NaN is black
    luma = rgb[..., :3].astype(float) @ [0.299, 0.587, 0.114]
    assert np.all(np.diff(luma.ravel()[:5]) > 0)  # brighter with the plane number
    # clipped outside 0..n-1
    np.testing.assert_array_equal(colourise(np.array([[-3.0, 9.0]]), 5), rgb[[0, 1], [0, 1]][None])


def test_colourise_matches_matplotlib_viridis():
    mpl = pytest.importorskip("matplotlib")
    ref = mpl.colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255
    got = colourise(np.linspace(0, 9, 256, dtype=np.float32)[None], 10)[0]
    assert np.abs(got.astype(float) - ref).max() <= 2


def test_colourise_time_axis_gray_and_errors():
    idx = np.stack([np.zeros((4, 4)), np.full((4, 4), 2.0)]).astype(np.float32)
    out = colourise(idx, 3, cmap="gray")
    assert out.shape == (2, 4, 4, 3)
    assert (out[0] == 0).all() and (out[1] == 255).all()
    assert (colourise(np.zeros((3, 3)), 1) == [68, 1, 84]).all()  # one plane: no division by zero
    lut = np.array([[0, 0, 0], [255, 0, 0]], np.uint8)
    np.testing.assert_array_equal(colourise(np.array([[0.0, 1.0]]), 2, cmap=lut)[0], [[0, 0, 0], [255, 0, 0]])
    with pytest.raises(EdofError, match="unknown colour map 'jet'"):
        colourise(idx, 3, cmap="jet")
    with pytest.raises(EdofError, match="n_planes must be 1 or more"):
        colourise(idx, 0)


def test_writers_do_not_import_matplotlib():
    import subprocess
    import sys

    code = (
        "import sys, numpy as np; from napari_edof.io import colourise; colourise(np.zeros((2, 2)), 3); "
        "print('matplotlib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- write_result -----------------------------------------------------------------------------


def _result(n=4, shape=(12, 16), rgb=False, t=None, dtype=np.uint16):
    rng = np.random.default_rng(3)
    lead = (t,) if t else ()
    index = rng.uniform(0, n - 1, lead + shape).astype(np.float32)
    fused_shape = lead + shape + ((3,) if rgb else ())
    fused = _data(fused_shape, dtype)
    conf = rng.random(lead + shape).astype(np.float32)
    prov = {
        "method": "focus-select",
        "params": {"radius": np.int64(4), "sigma": np.float32(1.5), "sizes": (1, 2)},
        "seconds": 0.25,
        "bad": float("nan"),
        "where": Path("/tmp/x.tif"),
        "source": ["a.tif"],
    }
    return FusionResult(fused=fused, index=index, confidence=conf, n_planes=n, provenance=prov,
                        pixel_size=(0.5, 0.25), z_step=2.0, unit="µm", rgb=rgb)


def test_write_result_grey(tmp_path):
    r = _result()
    out = tmp_path / "new" / "deeper"
    paths = write_result(r, out)
    assert set(paths) == {"fused", "focus_index", "focus_index_png", "decision", "masks", "confidence", "provenance"}
    names = {k: p.name for k, p in paths.items()}
    assert names == {
        "fused": "fused.tif", "focus_index": "focus_index.tif", "focus_index_png": "focus_index.png",
        "decision": "decision.tif", "masks": "masks.tif", "confidence": "confidence.tif",
        "provenance": "provenance.json",
    }
    assert all(p.parent == out and p.is_file() for p in paths.values())
    assert sorted(p.name for p in out.iterdir()) == sorted(names.values())  # no temp files

    fused = tifffile.imread(paths["fused"])
    assert fused.dtype == np.uint16
    np.testing.assert_array_equal(fused, r.fused)
    with tifffile.TiffFile(paths["fused"]) as tf:
        assert tf.is_imagej and tf.imagej_metadata["unit"] == "micron"
        num, den = tf.pages[0].tags["XResolution"].value
        assert num / den == pytest.approx(4.0, rel=1e-6)  # 1 / 0.25 µm along x

    idx = tifffile.imread(paths["focus_index"])
    assert idx.dtype == np.float32
    np.testing.assert_array_equal(idx, r.index)

    png = np.asarray(Image.open(paths["focus_index_png"]).convert("RGB"))  # (a palette PNG)
    np.testing.assert_array_equal(png, colourise(r.index, r.n_planes))

    lab = tifffile.imread(paths["decision"])
    assert lab.dtype == np.uint16
    np.testing.assert_array_equal(lab, np.rint(r.index).astype(np.uint16) + 1)
    assert lab.min() >= 1 and lab.max() <= r.n_planes

    masks = tifffile.imread(paths["masks"])
    assert masks.shape == (r.n_planes, 12, 16) and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 255}
    np.testing.assert_array_equal((masks == 255).sum(axis=0), 1)  # one plane chosen per pixel
    np.testing.assert_array_equal(np.argmax(masks, axis=0) + 1, lab)
    with tifffile.TiffFile(paths["masks"]) as tf:
        assert tf.imagej_metadata["spacing"] == pytest.approx(2.0)

    conf = tifffile.imread(paths["confidence"])
    assert conf.dtype == np.float32
    np.testing.assert_array_equal(conf, r.confidence)

    prov = json.loads(paths["provenance"].read_text(encoding="utf-8"))
    assert prov["method"] == "focus-select"
    assert prov["params"] == {"radius": 4, "sigma": 1.5, "sizes": [1, 2]}
    assert prov["bad"] == "nan" and prov["where"] == "/tmp/x.tif" and prov["seconds"] == 0.25


def test_write_result_rgb_and_stem(tmp_path):
    r = _result(rgb=True, dtype=np.uint8)
    paths = write_result(r, tmp_path, stem="run1")
    assert paths["fused"].name == "run1_fused.tif" and paths["provenance"].name == "run1_provenance.json"
    with tifffile.TiffFile(paths["fused"]) as tf:
        assert tf.pages[0].photometric == tifffile.PHOTOMETRIC.RGB
    np.testing.assert_array_equal(tifffile.imread(paths["fused"]), r.fused)
    paths = write_result(r, tmp_path, stem="run2-")
    assert paths["masks"].name == "run2-masks.tif"


def test_write_result_rgb_uint16_and_no_unit(tmp_path):
    r = _result(rgb=True, dtype=np.uint16)
    r.unit = "pixel"
    paths = write_result(r, tmp_path)
    s_fused = tifffile.imread(paths["fused"])
    assert s_fused.dtype == np.uint16 and s_fused.shape == (12, 16, 3)
    np.testing.assert_array_equal(s_fused, r.fused)
    with tifffile.TiffFile(paths["focus_index"]) as tf:
        assert "unit" not in tf.imagej_metadata


def test_write_result_time_axis(tmp_path):
    r = _result(t=2)
    paths = write_result(r, tmp_path)
    masks = tifffile.imread(paths["masks"])
    assert masks.shape == (2, r.n_planes, 12, 16)
    with tifffile.TiffFile(paths["masks"]) as tf:
        assert tf.series[0].axes == "TZYX"
    assert tifffile.imread(paths["decision"]).shape == (2, 12, 16)
    assert "focus_index_png" not in paths
    for t in range(2):
        png = np.asarray(Image.open(paths[f"focus_index_png_t{t:03d}"]).convert("RGB"))
        np.testing.assert_array_equal(png, colourise(r.index[t], r.n_planes))
    with tifffile.TiffFile(paths["fused"]) as tf:
        assert tf.series[0].axes == "TYX"


def test_write_result_of_a_real_fusion_reads_back(tmp_path):
    rng = np.random.default_rng(0)
    stack = (rng.random((3, 40, 48)) * 1000).astype(np.uint16)
    r = napari_edof.fuse(stack)
    paths = write_result(r, tmp_path)
    np.testing.assert_array_equal(tifffile.imread(paths["fused"]), r.fused)
    np.testing.assert_array_equal(tifffile.imread(paths["decision"]), r.labels())
    json.loads(paths["provenance"].read_text())


def test_write_result_overwrites_atomically(tmp_path, monkeypatch):
    first = write_result(_result(), tmp_path)
    before = {k: p.read_bytes() for k, p in first.items()}
    r2 = _result(n=5)
    calls = []
    real = tifffile.imwrite

    def flaky(file, data, **kwargs):
        calls.append(file)
        if "decision" in os.fspath(file):  # decision.tif fails half-way (the files are written in parallel)
            with open(file, "wb") as f:
                f.write(b"II*\x00")
            raise OSError(5, "Input/output error")
        return real(file, data, **kwargs)

    monkeypatch.setattr(tifffile, "imwrite", flaky)
    with pytest.raises(EdofError, match=r"decision\.tif: Input/output error"):
        write_result(r2, tmp_path)
    # the files written before the failure are complete new ones; the failed one is the old one
    assert first["decision"].read_bytes() == before["decision"]
    assert first["masks"].read_bytes() == before["masks"]
    assert tifffile.imread(first["focus_index"]).shape == (12, 16)
    assert _leftovers(tmp_path) == []


def test_a_failed_index_png_leaves_the_previous_result(tmp_path, monkeypatch):
    """Issue 17: the focus-index PNG is encoded in its own job, started first; when it fails the
    whole set stays as it was (the TIFFs written beside it are not put in place)."""
    first = write_result(_result(), tmp_path)
    before = {k: p.read_bytes() for k, p in first.items()}

    def broken(path, rgb, **kw):
        raise EdofError(f"cannot write {path}: disk full")

    monkeypatch.setattr(writers_mod, "write_png", broken)
    with pytest.raises(EdofError, match=r"focus_index\.png: disk full"):
        write_result(_result(n=5), tmp_path)
    assert {k: p.read_bytes() for k, p in first.items()} == before
    assert _leftovers(tmp_path) == []


def test_only_the_outputs_asked_for_are_written(tmp_path):
    paths = write_result(_result(), tmp_path, outputs=("fused", "confidence"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confidence.tif", "fused.tif", "provenance.json"]
    assert set(paths) == {"fused", "confidence", "provenance"}


def test_write_result_into_a_file_or_unwritable_folder(tmp_path, monkeypatch):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(EdofError, match=r"afile: it is a file, not a folder"):
        write_result(_result(), f)
    with pytest.raises(EdofError, match=r"cannot create the output folder .*afile/sub"):
        write_result(_result(), f / "sub")
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(writers_mod.os, "access", lambda *a, **k: False)
    with pytest.raises(EdofError, match=r"locked: the folder is not writable"):
        write_result(_result(), locked)
    assert list(locked.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write to read-only folders")
def test_write_result_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(EdofError, match=r"ro: the folder is not writable"):
            write_result(_result(), ro)
        with pytest.raises(EdofError, match=r"cannot write .*x\.tif: Permission denied"):
            write_tiff(ro / "x.tif", np.zeros((4, 4), np.uint8))
    finally:
        ro.chmod(0o755)


def test_json_safe():
    data = {
        1: np.uint8(3),
        "a": (np.float64(0.5), np.bool_(True), None),
        "arr": np.arange(3),
        "inf": -np.inf,
        "c": 1 + 2j,
        "obj": object,
    }
    out = json_safe(data)
    json.dumps(out, allow_nan=False)
    assert out["1"] == 3 and out["a"] == [0.5, True, None] and out["arr"] == [0, 1, 2]
    assert out["inf"] == "-inf" and out["c"] == "(1+2j)"


def test_write_result_is_all_or_nothing(tmp_path, monkeypatch):
    import napari_edof as ne
    from napari_edof.io import writers

    s = ne.sample_stack(n_planes=3, shape=(32, 32), seed=1)
    first = writers.write_result(ne.fuse(s.stack), tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real = writers.write_png

    def full_disk(*a, **k):  # the fourth file of the set fails
        raise writers.EdofError("cannot write focus_index.png: No space left on device")

    monkeypatch.setattr(writers, "write_png", full_disk)
    with pytest.raises(writers.EdofError, match="No space left"):
        writers.write_result(ne.fuse(s.stack.data[::-1].copy()), tmp_path)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # the earlier results, every file, untouched; no staging folder left
    monkeypatch.setattr(writers, "write_png", real)
    assert set(writers.write_result(ne.fuse(s.stack), tmp_path)) == set(first)


@pytest.mark.parametrize("case", ["finite", "unknown", "every-code-used", "time"])
def test_index_png_decodes_to_colourise(tmp_path, case):
    """The focus-index PNG is a palette PNG: decoded, colourise()'s image (unknown pixels take a code
    no finite value uses; with all 256 in use, the least used code's pixels take the next colour)."""
    n = 9
    rng = np.random.default_rng(3)
    if case == "every-code-used":  # all 256 codes and unknown pixels: 257 colours
        index = np.tile(np.linspace(0, n - 1, 512, dtype=np.float32), (30, 1))  # every row holds every code
    else:
        index = rng.random((30, 40)).astype(np.float32) * 3 + 2  # codes 64..159 used
    if case != "finite":
        index[5:9, 10:20] = np.nan
    if case == "time":
        index = np.stack([index, np.flipud(index)])
    paths = writers_mod._write_index_png(tmp_path, "", index, n, case == "time")
    colour = colourise(index, n)
    for k, (_name, p) in enumerate(sorted(paths.items())):
        with Image.open(p) as im:
            assert im.mode == "P"
            got = np.asarray(im.convert("RGB"))
        want = colour[k] if case == "time" else colour
        if case == "every-code-used":  # one code's pixels (about 2 a row here) took the next colour
            off = (got != want).any(-1)
            assert 0 < off.sum() <= 3 * index.shape[0] and np.isfinite(index[off]).all()
            assert len(np.unique(want[off], axis=0)) == 1 and len(np.unique(got[off], axis=0)) == 1
            assert np.abs(got[off].astype(int) - want[off]).max() <= 3  # one step of viridis
            np.testing.assert_array_equal(got[~off], want[~off])
            assert (got[np.isnan(index)] == 0).all()
        else:
            np.testing.assert_array_equal(got, want)
    with pytest.raises(EdofError, match="palette PNG needs"):
        write_png(tmp_path / "x.png", np.zeros((4, 4, 3), np.uint8), palette=np.zeros((256, 3), np.uint8))
