"""The bad-input and fault matrix: every case gets a clear error naming the problem and loses
nothing (inputs unchanged, no partial or temporary output files, an existing result kept whole),
and the CLI answers with its documented exit codes (0 done, 2 bad input, 3 output not writable,
130 interrupted).

Each case is one function in CASES, run by one parametrized test.
"""
from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_edof import api
from napari_edof.cli import EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_OUTPUT, main
from napari_edof.core.errors import EdofError, MethodError, ReadError, StackError


# --- helpers ------------------------------------------------------------------------------------
def _digest(path: Path) -> dict:
    """Content hashes of a file or of every file under a folder (to show nothing changed)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _no_temp_files(folder: Path) -> None:
    left = [p.name for p in Path(folder).rglob("*") if p.name.endswith(".part") or p.name.startswith(".")]
    assert not left, f"temporary files left behind: {left}"


def _stack_tif(path: Path, *, planes=4, shape=(48, 40), dtype=np.uint16, seed=0) -> Path:
    from napari_edof import sample_stack

    s = sample_stack(n_planes=planes, shape=shape, seed=seed)
    tifffile.imwrite(path, np.asarray(s.stack.data).astype(dtype), photometric="minisblack")
    return path


def _cli_refuses(args: list[str], code: int, capsys, *words: str, out: Path | None = None) -> str:
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == code, err
    for w in words:
        assert w.lower() in err.lower(), err
    if out is not None:
        assert not out.exists() or not any(out.iterdir()), "a refused run wrote output files"
    return err


def _api_refuses(exc, match: str, data, **kw):
    snapshot = np.array(data, copy=True) if isinstance(data, np.ndarray) else None
    with pytest.raises(exc, match=match) as e:
        api.fuse(data, **kw)
    assert isinstance(e.value, EdofError)
    if snapshot is not None:
        np.testing.assert_array_equal(data, snapshot)  # the input is never modified
    return e.value


# --- input files ----------------------------------------------------------------------------------
def case_truncated_tiff(tmp_path, capsys):
    good = _stack_tif(tmp_path / "good.tif", planes=6, shape=(64, 64))
    raw = good.read_bytes()
    bad = tmp_path / "truncated.tif"
    bad.write_bytes(raw[: len(raw) // 2])
    before = _digest(bad)
    with pytest.raises(ReadError, match="truncated.tif") as e:
        st = api.open_stack(bad)
        np.asarray(st.data)  # the pages cut off are read only when computed
    assert "truncated" in str(e.value) or "corrupt" in str(e.value)
    _cli_refuses(["fuse", str(bad), "-o", str(tmp_path / "out"), "-q"], EXIT_INPUT, capsys, "truncated.tif",
                 out=tmp_path / "out")
    assert _digest(bad) == before


def case_corrupt_tiff(tmp_path, capsys):
    bad = tmp_path / "corrupt.tif"
    bad.write_bytes(b"II*\x00" + bytes(range(256)) * 8)  # a TIFF signature over garbage
    with pytest.raises(ReadError, match="corrupt.tif.*(corrupt|not a readable)"):
        api.open_stack(bad)
    _cli_refuses(["fuse", str(bad), "-o", str(tmp_path / "out"), "-q"], EXIT_INPUT, capsys, "corrupt.tif")


def case_zero_byte_file(tmp_path, capsys):
    empty = tmp_path / "empty.tif"
    empty.touch()
    with pytest.raises(ReadError, match=r"empty.tif.*empty \(0 bytes\)"):
        api.open_stack(empty)
    _cli_refuses(["fuse", str(empty), "-o", str(tmp_path / "out"), "-q"], EXIT_INPUT, capsys, "0 bytes",
                 out=tmp_path / "out")


def _rewrite_description(src: Path, dest: Path, old: str, new: str) -> Path:
    """``dest``: the pages of ``src`` with its first page's description edited (wrong metadata)."""
    with tifffile.TiffFile(src) as tf:
        desc = tf.pages[0].description
        pages = tf.asarray(key=range(len(tf.pages)))
    assert old in desc
    tifffile.imwrite(dest, pages, description=desc.replace(old, new), metadata=None, photometric="minisblack")
    return dest


def case_declared_planes_not_in_file(tmp_path, capsys):
    """OME SizeZ=50 over 5 pages, ImageJ images=3 over 5 pages: the 5 real pages are the planes,
    with a warning (API, napari reader, CLI stderr, provenance); never 45 invented zero planes."""
    import json
    import warnings

    from napari_edof._napari import get_reader
    from napari_edof.core.errors import EdofWarning

    data = tifffile.imread(_stack_tif(tmp_path / "s.tif", planes=5))
    tifffile.imwrite(tmp_path / "ok.ome.tif", data, ome=True, metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "ok_ij.tif", data, imagej=True, metadata={"axes": "ZYX"})
    ome = _rewrite_description(tmp_path / "ok.ome.tif", tmp_path / "z50.ome.tif", 'SizeZ="5"', 'SizeZ="50"')
    ij = _rewrite_description(tmp_path / "ok_ij.tif", tmp_path / "ij3.tif", "images=5\nslices=5",
                              "images=3\nslices=3")
    for f, words in ((ome, "declares 50 images"), (ij, "declares 3 images")):
        with pytest.warns(EdofWarning, match=words + r".*holds 5 pages"):
            st = api.open_stack(f)
        assert st.n_planes == 5 and st.metadata["reconciled"]
        np.testing.assert_array_equal(np.asarray(st.data), data)
        with pytest.warns(EdofWarning, match=words):
            get_reader(str(f))(str(f))  # napari shows the warning as a notification
        out = tmp_path / f"out_{f.stem}"
        assert main(["fuse", str(f), "-o", str(out), "-q", "--outputs", "all"]) == EXIT_OK
        assert "warning:" in capsys.readouterr().err
        prov = json.loads((out / "provenance.json").read_text())
        assert words in prov["input_warnings"][0]
        assert tifffile.imread(out / "masks.tif").shape[0] == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error", EdofWarning)  # a consistent file warns about nothing
        assert api.open_stack(tmp_path / "ok.ome.tif").n_planes == 5
        assert api.open_stack(tmp_path / "ok_ij.tif").n_planes == 5
    # several declared dimensions cannot be matched to the pages: refused
    tifffile.imwrite(tmp_path / "tz.ome.tif", data[:4].reshape(2, 2, 48, 40), ome=True, metadata={"axes": "TZYX"})
    bad = _rewrite_description(tmp_path / "tz.ome.tif", tmp_path / "tz9.ome.tif", 'SizeZ="2"', 'SizeZ="9"')
    with pytest.raises(StackError, match="declares 18 images.*cannot be told which page"):
        api.open_stack(bad)


def case_zarr_missing_chunks(tmp_path, capsys):
    """Chunk files missing from an OME-Zarr store are not read as planes of zeros."""
    import shutil

    import zarr

    from napari_edof.core.errors import EdofWarning

    data = tifffile.imread(_stack_tif(tmp_path / "s.tif", planes=6, shape=(64, 40)))
    store = tmp_path / "s.zarr"
    zarr.create_array(store=str(store), shape=data.shape, chunks=(1, 32, 40), dtype=data.dtype)[...] = data
    shutil.rmtree(store / "c" / "5")  # plane 5: no chunk at all
    (store / "c" / "2" / "1" / "0").unlink()  # half of plane 2
    with pytest.warns(EdofWarning, match=r"planes 5 of 6 have no chunk.*1 chunk\(s\) of the other planes"):
        st = api.open_stack(store)
    assert st.n_planes == 5
    np.testing.assert_array_equal(np.asarray(st.data)[:2], data[:2])
    out = tmp_path / "out"
    assert main(["fuse", str(store), "-o", str(out), "-q"]) == EXIT_OK
    assert "planes 5 of 6 have no chunk" in capsys.readouterr().err


def _ome_zarr(store: Path, data: np.ndarray, mutate=None) -> Path:
    import zarr

    g = zarr.open_group(str(store), mode="w", zarr_format=3)
    g.create_array("0", shape=data.shape, chunks=(1, 32, data.shape[2]), dtype=data.dtype)[...] = data
    ome = {"version": "0.5", "multiscales": [{
        "axes": [{"name": "z", "type": "space"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 0.5, 0.5]}]}]}]}
    if mutate is not None:
        mutate(ome)
    g.attrs.update({"ome": ome})
    return store


def case_malformed_ome_zarr(tmp_path, capsys):
    """OME-Zarr metadata of the wrong shape and a corrupt chunk: a ReadError naming the store
    and the problem (not KeyError/IndexError/TypeError, or a codec's RuntimeError), exit 2."""
    data = tifffile.imread(_stack_tif(tmp_path / "s.tif", planes=4, shape=(64, 40)))
    ms = lambda o: o["multiscales"][0]  # noqa: E731
    cases = {
        "no_datasets": (lambda o: ms(o).pop("datasets"), "'multiscales' has no 'datasets' list"),
        "axis_without_name": (lambda o: ms(o)["axes"][1].pop("name"), "axis 1 has no name"),
        "scale_text": (lambda o: ms(o)["datasets"][0]["coordinateTransformations"][0].update(scale=["a", 1, 1]),
                       r"the scale \['a', 1, 1\] is not a list of numbers"),
        "multiscales_dict": (lambda o: o.update(multiscales=ms(o)), "'multiscales' must be a list of objects, not dict"),
    }
    for name, (mutate, words) in cases.items():
        store = _ome_zarr(tmp_path / f"{name}.zarr", data, mutate)
        with pytest.raises(ReadError, match=f"{name}.zarr: the OME metadata is malformed: {words}"):
            api.open_stack(store)
    _cli_refuses(["fuse", str(tmp_path / "no_datasets.zarr"), "-o", str(tmp_path / "out"), "-q"], EXIT_INPUT,
                 capsys, "malformed", out=tmp_path / "out")
    good = _ome_zarr(tmp_path / "good.zarr", data)
    assert api.open_stack(good).pixel_size == (0.5, 0.5)
    corrupt = _ome_zarr(tmp_path / "corrupt.zarr", data)
    chunk = corrupt / "0" / "c" / "2" / "1" / "0"
    raw = chunk.read_bytes()
    chunk.write_bytes(raw[: len(raw) // 2])  # a truncated chunk file
    before = _digest(corrupt)
    with pytest.raises(ReadError, match="corrupt.zarr: a chunk of the zarr store cannot be read; it may be truncated"):
        np.asarray(api.open_stack(corrupt).data)
    for fmt in ("tiff", "zarr"):
        out = tmp_path / f"out_{fmt}"
        _cli_refuses(["fuse", str(corrupt), "-o", str(out), "--format", fmt, "-q"], EXIT_INPUT, capsys,
                     "truncated or corrupt", out=out)
    assert _digest(corrupt) == before


def case_too_many_planes(tmp_path, capsys):
    """More planes than the 16-bit focus index holds: refused (the last plane read as plane 0 before)."""
    a = np.zeros((32768, 2, 2), np.uint8)
    _api_refuses(StackError, "32768 planes are more than the 32767", a)
    with pytest.raises(StackError, match="32767"):
        api.fuse(a, lazy=True)


def case_mixed_plane_sizes(tmp_path, capsys):
    from PIL import Image

    d = tmp_path / "frames"
    d.mkdir()
    Image.fromarray(np.zeros((32, 40), np.uint8)).save(d / "a1.png")
    Image.fromarray(np.zeros((32, 48), np.uint8)).save(d / "a2.png")
    with pytest.raises(StackError, match="a2.png"):
        api.open_stack(d)
    _cli_refuses(["fuse", str(d), "-o", str(tmp_path / "out"), "-q"], EXIT_INPUT, capsys, "a2.png",
                 out=tmp_path / "out")


def case_single_plane(tmp_path, capsys):
    _api_refuses(StackError, "at least 2 planes", np.zeros((1, 32, 32), np.float32))
    f = tmp_path / "one.tif"
    tifffile.imwrite(f, np.zeros((32, 32), np.uint16))
    _cli_refuses(["fuse", str(f), "-o", str(tmp_path / "out"), "-q"], EXIT_INPUT, capsys, "not a focus stack")


def case_2d_input(tmp_path, capsys):
    _api_refuses(StackError, "2D image .* not a focus stack", np.zeros((32, 32), np.uint8))


def case_5d_unknown_axes(tmp_path, capsys):
    a = np.zeros((2, 3, 4, 32, 32), np.uint16)
    _api_refuses(StackError, r"5D array .*pass axes=", a)
    f = tmp_path / "five.tif"
    tifffile.imwrite(f, a, photometric="minisblack")
    err = _cli_refuses(["fuse", str(f), "-o", str(tmp_path / "out"), "-q"], EXIT_INPUT, capsys, "five.tif")
    assert "axes" in err
    # told the axes, it fuses
    assert main(["fuse", str(f), "--axes", "TCZYX", "-o", str(tmp_path / "ok"), "-q"]) == EXIT_OK


def case_nan(tmp_path, capsys):
    a = np.random.default_rng(0).random((4, 32, 32)).astype(np.float32)
    a[2, 5, 7] = np.nan
    _api_refuses(StackError, "NaN or infinite", a)
    f = tmp_path / "nan.tif"
    tifffile.imwrite(f, a, photometric="minisblack")
    _cli_refuses(["fuse", str(f), "-o", str(tmp_path / "out"), "-q"], EXIT_INPUT, capsys, "NaN",
                 out=tmp_path / "out")


def case_inf(tmp_path, capsys):
    a = np.random.default_rng(0).random((4, 32, 32)).astype(np.float64)
    a[0, 0, 0] = -np.inf
    _api_refuses(StackError, "NaN or infinite", a)


def case_api_bad_arguments(tmp_path, capsys):
    """The API's arguments get the CLI's clear errors (EdofError subclasses), not raw
    ValueError/TypeError/AttributeError/IndexError from deep inside."""
    import dask.array as da

    a = np.random.default_rng(0).random((4, 32, 32)).astype(np.float32)
    _api_refuses(StackError, r"plane 1 has shape \(32, 40\) but plane 0 has \(32, 32\)",
                 [np.zeros((32, 32)), np.zeros((32, 40))])
    d = da.from_array(a)
    unknown = d[d[:, 0, 0] > -1]  # boolean indexing: unknown chunk sizes
    for lazy in (None, False):
        _api_refuses(StackError, r"not known \(shape \(\?, 32, 32\).*compute_chunk_sizes", unknown, lazy=lazy)
    _api_refuses(StackError, "axes must be text of letters from TCZYX.*not 123", a, axes=123)
    with pytest.raises(StackError, match="axes must be text"):
        next(api.fuse_iter(a, axes=5))
    _api_refuses(MethodError, r"params must be a dict of name: value.*not 'radius=3'", a, params="radius=3")
    _api_refuses(StackError, "tile must be a number of pixels, 'auto' or 0, not '32px'", a, tile="32px")
    _api_refuses(StackError, "overlap='x' is not a whole number", a, overlap="x")
    _api_refuses(StackError, "workers=0.5 is not a whole number", a, workers=0.5)
    _api_refuses(StackError, "not a file name", "stack.tif")
    assert api.fuse(np.tile(a, (1, 2, 2)), tile="32").provenance["tile"] == 32  # the CLI's text works too
    # recompose: labels that are not plane numbers
    for labels, words in ((np.full((32, 32), np.nan), "NaN or infinite"), (np.full((32, 32), 1.5), "1.5 is not a whole"),
                          (np.full((32, 32), -1), "-1 is negative"), (np.full((32, 32), 9), "9 names a plane")):
        with pytest.raises(StackError, match=words):
            api.recompose(a, labels)
    with pytest.raises(StackError, match="fill of shape"):
        api.recompose(a, np.ones((32, 32), np.uint8), fill=np.zeros((8, 8)))
    np.testing.assert_array_equal(api.recompose(a, np.full((32, 32), 2.0)), a[1])
    with pytest.raises(StackError, match="y=1.5 is not a whole number"):
        api.focus_curve(a, 1.5, 3)


def case_constant_planes(tmp_path, capsys):
    """Not an error: a flat stack fuses, with confidence 0 everywhere; the default marks every
    pixel unknown (index NaN: no plane is in focus), focus-select keeps an index."""
    for dtype in (np.uint8, np.uint16, np.float32):
        a = np.full((5, 40, 36), 7, dtype)
        r = api.fuse(a)
        assert r.fused.dtype == dtype and (r.fused == 7).all()
        assert (r.confidence == 0).all() and np.isnan(r.index).all()
        r = api.fuse(a, method="focus-select")
        assert r.fused.dtype == dtype and (r.fused == 7).all()
        assert (r.confidence == 0).all() and np.isfinite(r.index).all()
    for policy in ("nearest", "blend", "mask"):
        r = api.fuse(np.full((5, 40, 36), 7, np.uint16), method="focus-select", params={"lowtexture": policy})
        assert (r.confidence == 0).all()
    f = tmp_path / "flat.tif"
    tifffile.imwrite(f, np.full((5, 40, 36), 7, np.uint16), photometric="minisblack")
    assert main(["fuse", str(f), "-o", str(tmp_path / "out"), "-q"]) == EXIT_OK
    assert (tifffile.imread(tmp_path / "out" / "confidence.tif") == 0).all()


def case_extreme_float_ranges(tmp_path, capsys):
    """Floats near 1e19, 1e-25 (or 1e200 in float64) fuse as their ordinary-range copy does: they
    are scaled exactly (a power of two) for fusion and back; no NaN confidence, index 0 or Inf."""
    from napari_edof import sample_stack

    s = np.asarray(sample_stack(n_planes=5, shape=(64, 64), seed=0).stack.data).astype(np.float64) / 65535
    for method in ("focus-select", "pyramid"):
        ref = api.fuse(s.astype(np.float32), method=method)
        for factor, dtype in ((1e19, np.float32), (1e-25, np.float32), (1e200, np.float64)):
            a = (s * factor).astype(dtype)
            r = api.fuse(a, method=method)
            assert r.fused.dtype == dtype and np.isfinite(r.fused).all()
            assert np.isfinite(r.confidence).all() and np.isfinite(r.index).all()
            assert (np.rint(r.index) == np.rint(ref.index)).mean() > 0.999, (method, factor)
            np.testing.assert_allclose(r.confidence, ref.confidence, atol=1e-3)
            np.testing.assert_allclose(r.fused / factor, ref.fused, rtol=1e-5, atol=1e-6)
    f = tmp_path / "huge.tif"
    tifffile.imwrite(f, (s * 1e19).astype(np.float32), photometric="minisblack")
    assert main(["fuse", str(f), "-o", str(tmp_path / "out"), "-q"]) == EXIT_OK
    fused = tifffile.imread(tmp_path / "out" / "fused.tif")
    assert np.isfinite(fused).all() and np.isfinite(tifffile.imread(tmp_path / "out" / "confidence.tif")).all()
    # (s * 1e19 and s round differently to float32; on this noise-free stack the default's noise
    # floor is near zero, so its soft weights carry that rounding up to ~1e-5 of the range)
    np.testing.assert_allclose(fused / 1e19, api.fuse(s.astype(np.float32)).fused, rtol=1e-4, atol=1e-5)


def _unsupported_dtype(dtype, tmp_path, capsys):
    name = np.dtype(dtype).name
    _api_refuses(StackError, f"unsupported pixel type {name}", np.zeros((3, 32, 32), dtype))
    if dtype is not bool:
        f = tmp_path / f"{name}.tif"
        tifffile.imwrite(f, np.zeros((3, 32, 32), dtype), photometric="minisblack")
        _cli_refuses(["fuse", str(f), "-o", str(tmp_path / "out"), "-q"], EXIT_INPUT, capsys, name)


def case_bool_dtype(tmp_path, capsys):
    _unsupported_dtype(bool, tmp_path, capsys)


def case_complex_dtype(tmp_path, capsys):
    _unsupported_dtype(np.complex64, tmp_path, capsys)


def case_int64_dtype(tmp_path, capsys):
    _unsupported_dtype(np.int64, tmp_path, capsys)


def case_huge_dimensions(tmp_path, capsys, monkeypatch):
    """Refused before anything is allocated, naming the memory needed and available."""
    import dask.array as da

    from napari_edof.core.engine import fuse_iter
    from napari_edof.core.policy import OutOfMemory

    huge = da.zeros((64, 100000, 100000), dtype=np.uint16, chunks=(1, 4096, 4096))
    with pytest.raises(OutOfMemory, match=r"needs about [\d.]+ GiB of memory but only [\d.]+ GiB is available"):
        next(fuse_iter(huge))
    with pytest.raises(OutOfMemory, match="8x200000x200000"):
        next(fuse_iter(np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), (8, 200000, 200000), (0, 0, 0))))
    with pytest.raises(OutOfMemory, match="GiB"):
        api.fuse(huge, register="translation", lazy=False)
    with pytest.raises(OutOfMemory, match="registering"):
        api.fuse(huge, register="translation")  # lazy fusion, but registration reads everything
    # the CLI on a machine with (pretend) 1 MiB free: exit 2, the message, nothing written
    import napari_edof.core.policy as policy

    src = _stack_tif(tmp_path / "in.tif", shape=(256, 256))
    monkeypatch.setattr(policy, "available_memory", lambda: 1 << 20)
    _cli_refuses(["fuse", str(src), "-o", str(tmp_path / "out"), "-q"], EXIT_INPUT, capsys,
                 "needs about", "GiB is available", out=tmp_path / "out")


# --- outputs --------------------------------------------------------------------------------------
def case_output_folder_not_writable(tmp_path, capsys, monkeypatch):
    src = _stack_tif(tmp_path / "in.tif")
    before = _digest(src)
    locked = tmp_path / "locked"
    locked.mkdir()
    import os

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m, *a, **k: False if Path(p) == locked else real_access(p, m))
    from napari_edof.io import write_result

    r = api.fuse(tifffile.imread(src))
    with pytest.raises(EdofError, match="locked: the folder is not writable"):
        write_result(r, locked)
    _cli_refuses(["fuse", str(src), "-o", str(locked), "-q"], EXIT_OUTPUT, capsys, "not writable")
    assert list(locked.iterdir()) == [] and _digest(src) == before


def case_output_is_a_file(tmp_path, capsys):
    src = _stack_tif(tmp_path / "in.tif")
    f = tmp_path / "taken"
    f.write_text("keep me")
    _cli_refuses(["fuse", str(src), "-o", str(f), "-q"], EXIT_OUTPUT, capsys, "not a folder")
    assert f.read_text() == "keep me"


def case_output_would_replace_input(tmp_path, capsys):
    """An output never resolves to an input: refused before anything runs, exit 2, input intact."""
    d = tmp_path / "d"
    d.mkdir()
    src = _stack_tif(d / "fused.tif")
    before = _digest(d)
    _cli_refuses(["fuse", str(src), "-o", str(d), "-q"], EXIT_INPUT, capsys, "would replace the input", "fused.tif")
    assert _digest(d) == before  # nothing written beside it either
    _cli_refuses(["fuse", str(src), "-o", str(d), "--format", "tiled-tiff", "-q"], EXIT_INPUT, capsys,
                 "would replace")
    assert _digest(d) == before
    # planes named like results, in a folder used as its own output
    from PIL import Image

    frames = tmp_path / "frames"
    frames.mkdir()
    for k, n in enumerate(("a.png", "masks.tif", "decision.tif")):
        Image.fromarray(np.full((32, 40), 10 * k, np.uint8)).save(frames / n)
    before = _digest(frames)
    files = [str(frames / n) for n in ("a.png", "masks.tif", "decision.tif")]  # (a list takes every image)
    _cli_refuses(["fuse", *files, "-o", str(frames), "-q"], EXIT_INPUT, capsys, "would replace the input")
    assert _digest(frames) == before
    # the folder itself: images named as results are not planes (issue 15), so one plane is left
    _cli_refuses(["fuse", str(frames), "-o", str(frames), "-q"], EXIT_INPUT, capsys, "at least 2 planes",
                 "decision.tif, masks.tif (napari-edof outputs), left out")
    assert _digest(frames) == before
    # through symlinks: the output folder is a link to the input's folder
    link = tmp_path / "link"
    link.symlink_to(d, target_is_directory=True)
    _cli_refuses(["fuse", str(src), "-o", str(link), "-q"], EXIT_INPUT, capsys, "would replace")
    # an OME-Zarr output onto the input store (and an output folder inside the store)
    import zarr

    z = tmp_path / "z"
    z.mkdir()
    store = z / "fused.ome.zarr"
    zarr.create_array(store=str(store), shape=(4, 48, 40), chunks=(1, 48, 40), dtype="uint16")[...] = \
        tifffile.imread(src)
    before = _digest(z)
    _cli_refuses(["fuse", str(store), "-o", str(z), "--format", "zarr", "-q"], EXIT_INPUT, capsys, "would replace")
    _cli_refuses(["fuse", str(store), "-o", str(store / "out"), "-q"], EXIT_INPUT, capsys, "inside the input")
    assert _digest(z) == before
    # the API refuses the same
    from napari_edof.io import write_result
    from napari_edof.io.outputs import OverwriteError

    r = api.fuse(api.open_stack(src))
    with pytest.raises(OverwriteError, match="would replace the input"):
        write_result(r, d)
    assert _digest(d) == _digest(tmp_path / "d")
    # a different folder is fine
    assert main(["fuse", str(src), "-o", str(tmp_path / "ok"), "-q"]) == EXIT_OK


def case_rerun_replaces_previous_result(tmp_path, capsys):
    """A run into a folder that holds a result says it replaces it and removes the files of that
    result which the new one does not write; nothing else in the folder is touched."""
    from napari_edof import sample_stack

    s = np.asarray(sample_stack(n_planes=4, shape=(40, 36)).stack.data)
    five, two = tmp_path / "five.tif", tmp_path / "two.tif"
    tifffile.imwrite(five, np.stack([s] * 5), imagej=True, metadata={"axes": "TZYX"})
    tifffile.imwrite(two, np.stack([s] * 2), imagej=True, metadata={"axes": "TZYX"})
    out = tmp_path / "out"
    assert main(["fuse", str(five), "-o", str(out), "-q"]) == EXIT_OK
    assert (out / "focus_index_t004.png").exists()
    err = capsys.readouterr().err
    assert "replaced" not in err  # a first run replaces nothing
    (out / "notes.txt").write_text("mine")
    assert main(["fuse", str(two), "-o", str(out), "-q", "--outputs", "all"]) == EXIT_OK
    err = capsys.readouterr().err
    assert "replaced the previous result" in err and "focus_index_t004.png" in err, err
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.endswith(("_t002.png", "_t003.png", "_t004.png"))], names
    assert (out / "notes.txt").read_text() == "mine"
    import json

    prov = json.loads((out / "provenance.json").read_text())
    assert sorted(prov["files"]) == sorted(n for n in names if n != "notes.txt")
    assert tifffile.imread(out / "masks.tif").shape[0] == 2
    # another format replaces the whole previous set
    assert main(["fuse", str(two), "-o", str(out), "--format", "zarr", "-q"]) == EXIT_OK
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["confidence.ome.zarr", "focus_index.ome.zarr", "fused.ome.zarr", "notes.txt", "provenance.json"])
    assert "replaced the previous result" in capsys.readouterr().err


def case_batch_inputs_with_one_name(tmp_path, capsys):
    """--batch a/stack.tif b/stack.tif: each result in its own folder, named after its parent."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = _stack_tif(tmp_path / "a" / "stack.tif", seed=1)
    b = _stack_tif(tmp_path / "b" / "stack.tif", seed=2)
    c = _stack_tif(tmp_path / "other.tif", seed=3)
    out = tmp_path / "out"
    assert main(["fuse", str(a), str(b), str(c), str(c), "-o", str(out), "--batch"]) == EXIT_OK
    text = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["a_stack", "b_stack", "other", "other_2"]
    for src, folder in ((a, "a_stack"), (b, "b_stack"), (c, "other")):
        np.testing.assert_array_equal(tifffile.imread(out / folder / "fused.tif"), api.fuse(tifffile.imread(src)).fused)
        assert f"{src} -> {folder}" in text, text


def _first_run(tmp_path):
    src = _stack_tif(tmp_path / "in.tif")
    out = tmp_path / "out"
    assert main(["fuse", str(src), "-o", str(out), "-q"]) == EXIT_OK
    return src, out, _digest(out)


def case_disk_full_during_write(tmp_path, capsys, monkeypatch):
    """ENOSPC half-way through a file: the previous result survives byte for byte, no temp file."""
    src, out, before = _first_run(tmp_path)

    def full(path, data, **kw):
        Path(path).write_bytes(b"partial" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", full)
    _cli_refuses(["fuse", str(src), "-o", str(out), "-q"], EXIT_OUTPUT, capsys, "No space left on device",
                 "fused.tif")
    assert _digest(out) == before
    _no_temp_files(out)


def case_cancel_during_write(tmp_path, capsys, monkeypatch):
    """Ctrl-C inside a write: exit 130, the file being written is not left half-done."""
    src, out, before = _first_run(tmp_path)

    def interrupted(path, data, **kw):
        Path(path).write_bytes(b"partial" * 100)
        raise KeyboardInterrupt

    monkeypatch.setattr(tifffile, "imwrite", interrupted)
    _cli_refuses(["fuse", str(src), "-o", str(out), "-q"], EXIT_INTERRUPTED, capsys, "interrupted")
    assert _digest(out) == before
    _no_temp_files(out)
    # a first run interrupted while writing leaves no file at all
    fresh = tmp_path / "fresh"
    assert main(["fuse", str(src), "-o", str(fresh), "-q"]) == EXIT_INTERRUPTED
    assert not fresh.exists() or list(fresh.iterdir()) == []


def case_cancel_during_fusion(tmp_path, capsys, monkeypatch):
    """Closing fuse_iter stops it; Ctrl-C during the CLI's fusion writes nothing."""
    from napari_edof import sample_stack

    s = sample_stack(n_planes=4, shape=(128, 128))
    gen = api.fuse_iter(s.stack, tile=32)
    next(gen)
    gen.close()
    src = _stack_tif(tmp_path / "in.tif")
    import napari_edof.core.engine as engine

    def boom(*a, **k):
        raise KeyboardInterrupt
        yield  # pragma: no cover

    monkeypatch.setattr(engine, "fuse_iter", boom)
    out = tmp_path / "out"
    _cli_refuses(["fuse", str(src), "-o", str(out), "-q"], EXIT_INTERRUPTED, capsys, "interrupted", out=out)


_SLOW_CHILD = """
import sys, time
import tifffile
from napari_edof.methods import get_method
from napari_edof.cli import main

cls = get_method("focus-select")[1]
fuse_tile, imwrite = cls.fuse_tile, tifffile.imwrite

def slow_tile(self, *a, **k):  # a slow fusion: the run is still going when SIGTERM comes
    time.sleep(0.1)
    return fuse_tile(self, *a, **k)

def slow_write(*a, **k):  # a slow write: the staging folder is there when SIGTERM comes
    imwrite(*a, **k)
    time.sleep(1.0)

cls.fuse_tile, tifffile.imwrite = slow_tile, slow_write
sys.exit(main(sys.argv[1:]))
"""


def _hidden_entry(out: Path) -> bool:
    """A hidden staging/partial/work entry in ``out`` (not the short write probe made before the run);
    False while ``out`` is not there, also when it goes between the look and the listing (the probe's
    folder is removed again until the run writes)."""
    try:
        return any(p.name.startswith(".") and not p.name.startswith(".napari-edof-probe-") for p in out.iterdir())
    except FileNotFoundError:
        return False


def case_sigterm_mid_run(tmp_path, capsys):
    """SIGTERM is handled as Ctrl-C: exit 143, no hidden .staging-/.partial-/.work- folder or
    partial file left in the output, the previous result kept byte for byte."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import napari_edof

    src = _stack_tif(tmp_path / "in.tif", shape=(128, 128))
    child = tmp_path / "child.py"
    child.write_text(_SLOW_CHILD)
    env = dict(os.environ, PYTHONPATH=str(Path(napari_edof.__file__).parents[1]))
    for fmt, previous in (("tiff", True), ("zarr", False), ("tiled-tiff", False)):
        out = tmp_path / f"out_{fmt}"
        if previous:
            assert main(["fuse", str(src), "-o", str(out), "-q"]) == EXIT_OK
        before = _digest(out) if previous else {}
        proc = subprocess.Popen([sys.executable, str(child), "fuse", str(src), "-o", str(out), "--tile", "32",
                                 "--format", fmt, "-q"], env=env, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            # a hidden staging/partial/work entry (not the short write probe made before the run)
            while not _hidden_entry(out):
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "the run never started writing"
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        err = proc.stderr.read()
        assert rc == 143, (fmt, rc, err)
        assert "terminated" in err, err
        left = [p.name for p in out.rglob("*")] if out.exists() else []
        if previous:
            assert _digest(out) == before
            _no_temp_files(out)
        else:
            assert left == [], (fmt, left)


# --- methods, devices, weights --------------------------------------------------------------------
def case_cli_bad_counts_and_params(tmp_path, capsys):
    """-p without '=', -m "", --threads/--workers/--steps below 1: exit 2 with the option named."""
    src = _stack_tif(tmp_path / "in.tif")
    out = tmp_path / "out"
    base = ["fuse", str(src), "-o", str(out), "-q"]
    _cli_refuses(base + ["-p", "radius"], EXIT_INPUT, capsys, "NAME=VALUE", "'radius'", out=out)
    _cli_refuses(base + ["-m", ""], EXIT_INPUT, capsys, "unknown method ''", out=out)
    _cli_refuses(base + ["--threads", "-1"], EXIT_INPUT, capsys, "--threads must be 1 or more", out=out)
    _cli_refuses(base + ["--workers", "-2"], EXIT_INPUT, capsys, "--workers must be 1 or more", out=out)
    _cli_refuses(["train", "stackmff-v2", "--steps", "-1", "--out", str(tmp_path / "t")], EXIT_INPUT, capsys,
                 "--steps must be 1 or more")
    assert not (tmp_path / "t").exists()


def case_scheduler_not_an_address(tmp_path, capsys):
    """--scheduler values that are not scheduler addresses: exit 2 at once, naming the value."""
    pytest.importorskip("distributed")
    src = _stack_tif(tmp_path / "in.tif")
    out = tmp_path / "out"
    for bad, words in (("not an address", "missing port"), ("http://host:8786", "unknown address scheme 'http'"),
                       ("127.0.0.1:99999", "port 99999 is not 1..65535"), ("tcp://:8786", "no host")):
        _cli_refuses(["fuse", str(src), "-o", str(out), "--scheduler", bad, "-q"], EXIT_INPUT, capsys,
                     f"--scheduler {bad!r} is not a dask scheduler address", words, out=out)


def case_ctrl_c_with_workers(tmp_path, capsys):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) during a --workers run:
    exit 130, no traceback from the workers or the cluster's shutdown, nothing left in the output."""
    pytest.importorskip("distributed")
    import os
    import signal
    import subprocess
    import sys
    import time

    import napari_edof

    src = _stack_tif(tmp_path / "in.tif", planes=8, shape=(1024, 1024))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(Path(napari_edof.__file__).parents[1]))
    proc = subprocess.Popen([sys.executable, "-m", "napari_edof.cli", "fuse", str(src), "-o", str(out), "--workers",
                             "2", "--format", "zarr", "--tile", "64", "-q"], env=env, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    def started():  # (the run may create and rename folders there while we look)
        try:
            return any(p.name.startswith(".partial-") for p in out.iterdir())
        except FileNotFoundError:
            return False

    try:
        deadline = time.monotonic() + 120
        while not started():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.05)
        time.sleep(0.5)  # the workers are fusing
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = proc.stderr.read()
    assert rc == EXIT_INTERRUPTED, (rc, err)
    assert "Traceback" not in err and "CommClosedError" not in err, err
    assert not out.exists() or list(out.iterdir()) == []


def case_unknown_method(tmp_path, capsys):
    _api_refuses(MethodError, "unknown method 'sharpest'; choose one of: .*focus-select", np.zeros((3, 32, 32)),
                 method="sharpest")
    src = _stack_tif(tmp_path / "in.tif")
    _cli_refuses(["fuse", str(src), "-o", str(tmp_path / "out"), "-m", "sharpest", "-q"], EXIT_INPUT, capsys,
                 "unknown method 'sharpest'", out=tmp_path / "out")


def case_unknown_parameter(tmp_path, capsys):
    _api_refuses(MethodError, "has no parameter 'radius_px'; it takes: radius, coarse_r", np.zeros((3, 32, 32)),
                 params={"radius_px": 3})
    _api_refuses(MethodError, "radius=99 is above its maximum 16", np.zeros((3, 32, 32)), params={"radius": 99})
    src = _stack_tif(tmp_path / "in.tif")
    _cli_refuses(["fuse", str(src), "-o", str(tmp_path / "out"), "-m", "focus-select", "-p", "tie=sideways", "-q"],
                 EXIT_INPUT,
                 capsys, "tie='sideways' is not one of none, near, far", out=tmp_path / "out")


def case_parameter_values_read_alike(tmp_path, capsys):
    """One reading of parameter values for the API and the CLI: NaN passes no bound, unknown text
    is not False, 3.7 or True is not an int (the CLI refused 2.5 while the API took 3.7)."""
    a = np.zeros((3, 32, 32), np.float32)
    _api_refuses(MethodError, "radius=3.7 is not a whole number", a, params={"radius": 3.7})
    _api_refuses(MethodError, "radius=True is not a whole number", a, params={"radius": True})
    _api_refuses(MethodError, "threshold=nan is not a finite number", a, method="focus-select",
                 params={"threshold": float("nan")})
    _api_refuses(MethodError, "tie_tol=nan is not a finite number", a, method="focus-select",
                 params={"tie_tol": np.nan})
    _api_refuses(MethodError, "consistency='maybe' is not true or false", a, method="pyramid",
                 params={"consistency": "maybe"})
    _api_refuses(MethodError, "consistency=2 is not true or false", a, method="pyramid", params={"consistency": 2})
    spec = api.get_method("focus-select")
    assert spec.resolve({"radius": 3.0, "threshold": "0.5"}) == spec.resolve({"radius": "3", "threshold": 0.5})
    assert api.get_method("pyramid").resolve({"consistency": "off"})["consistency"] is False
    src = _stack_tif(tmp_path / "in.tif")
    out = tmp_path / "out"
    for p, words in (("radius=2.5", "radius='2.5' is not a whole number"), ("threshold=nan", "not a finite number"),
                     ("tie_tol=NaN", "not a finite number")):
        _cli_refuses(["fuse", str(src), "-o", str(out), "-m", "focus-select", "-p", p, "-q"], EXIT_INPUT, capsys,
                     words, out=out)
    _cli_refuses(["fuse", str(src), "-o", str(out), "-m", "pyramid", "-p", "consistency=maybe", "-q"], EXIT_INPUT,
                 capsys, "is not true or false", out=out)


@pytest.fixture
def oom_method():
    """A torch-backend method that runs out of (simulated) accelerator memory on tiles larger than
    ``limit`` pixels; it picks the brightest plane per pixel."""
    torch = pytest.importorskip("torch")
    from napari_edof.core.colour import gather
    from napari_edof.methods._registry import MethodSpec, register, unregister

    calls = []

    class OOM:
        limit = 60 * 60

        def __init__(self, params, *, device="cpu"):
            pass

        def fuse_tile(self, planes, guide, *, halo, stats=None):
            h, w = guide.shape[1:]
            calls.append((h, w))
            if h * w > OOM.limit:
                raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {h * w * 4} bytes")
            g = guide[:, halo : h - halo, halo : w - halo]
            idx = g.argmax(axis=0).astype(np.int16)
            src = planes[:, halo : h - halo, halo : w - halo]
            return {"fused": gather(src, idx), "index": idx.astype(np.float32),
                    "confidence": np.ones(idx.shape, np.float32)}

    spec = MethodSpec(name="_oom-sim", summary="simulated OOM", family="learned", halo=lambda p: 2,
                      devices=("cpu",), backend="torch", default_tile=128)
    register(spec)(OOM)
    yield OOM, calls
    unregister("_oom-sim")


def case_gpu_out_of_memory(tmp_path, capsys, oom_method):
    OOM, calls = oom_method
    from napari_edof import sample_stack

    s = sample_stack(n_planes=4, shape=(200, 180))
    r = api.fuse(s.stack, method="_oom-sim")  # default tile 128 -> 64 -> 32: the run finishes
    assert r.provenance["out_of_memory_retries"] == [64, 32]
    assert r.provenance["tile"] == 32
    ref = np.asarray(s.stack.data).argmax(axis=0)
    np.testing.assert_array_equal(r.index, ref)
    np.testing.assert_array_equal(r.fused, np.take_along_axis(np.asarray(s.stack.data), ref[None], 0)[0])
    # the CLI finishes too, and says so in provenance.json
    import json

    src = _stack_tif(tmp_path / "in.tif", shape=(200, 180))
    assert main(["fuse", str(src), "-o", str(tmp_path / "out"), "-m", "_oom-sim", "-q"]) == EXIT_OK
    assert json.loads((tmp_path / "out" / "provenance.json").read_text())["out_of_memory_retries"] == [64, 32]
    # memory that never suffices: a clear error naming the device, not a crash
    OOM.limit = 0
    with pytest.raises(EdofError, match="_oom-sim ran out of cpu memory even with tiles of 32 pixels"):
        api.fuse(s.stack, method="_oom-sim")


def case_gpu_out_of_memory_streaming(tmp_path, capsys, oom_method):
    """The same back-off when the stack streams from disk stripe by stripe (--format zarr)."""
    OOM, calls = oom_method
    import json

    src = _stack_tif(tmp_path / "in.tif", shape=(200, 180))
    assert main(["fuse", str(src), "-o", str(tmp_path / "out"), "-m", "_oom-sim", "--format", "zarr", "-q"]) == EXIT_OK
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert prov["out_of_memory_retries"] == [64, 32] and prov["tile"] == 32
    zarr = pytest.importorskip("zarr")
    data = tifffile.imread(src)
    index = zarr.open_group(str(tmp_path / "out" / "focus_index.ome.zarr"), mode="r")["0"][...]
    np.testing.assert_array_equal(index.reshape(data.shape[1:]), data.argmax(axis=0))
    OOM.limit = 0
    assert main(["fuse", str(src), "-o", str(tmp_path / "never"), "-m", "_oom-sim", "--format", "zarr", "-q"]) == EXIT_INPUT
    assert "ran out of cpu memory even with tiles of 32 pixels" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()  # nothing half-written is left


def case_weights_hash_mismatch(tmp_path, capsys, monkeypatch):
    from napari_edof.methods._registry import WeightsSpec
    from napari_edof.nn import weights as W

    monkeypatch.setenv(W.ENV, str(tmp_path))
    f = tmp_path / "model.pth"
    f.write_bytes(b"tampered")
    before = _digest(f)
    spec = WeightsSpec(filename="model.pth", urls=("https://example.invalid/model.pth",), sha256="0" * 64)
    with pytest.raises(W.WeightsError, match="does not match the pinned sha256.*refusing to load it"):
        W.load_state_dict(spec)
    assert _digest(f) == before  # not deleted or changed: the user decides

    def tampered_download(url, dest):
        Path(dest).write_bytes(b"evil")

    monkeypatch.setattr(W, "_download", tampered_download)
    spec2 = WeightsSpec(filename="fresh.pth", urls=("https://example.invalid/fresh.pth",), sha256="1" * 64)
    with pytest.raises(W.WeightsError, match="does not match the pinned"):
        W.fetch(spec2)
    assert not (tmp_path / "fresh.pth").exists()
    _no_temp_files(tmp_path)


class _Payload:  # an object only pickle could rebuild
    pass


def case_checkpoint_needs_pickle(tmp_path, capsys, monkeypatch):
    torch = pytest.importorskip("torch")
    from napari_edof.methods._registry import WeightsSpec
    from napari_edof.nn import weights as W

    monkeypatch.setenv(W.ENV, str(tmp_path))
    f = tmp_path / "pickled.pth"
    torch.save({"conv.weight": torch.zeros(2, 2), "extra": _Payload()}, f)
    spec = WeightsSpec(filename="pickled.pth", urls=("https://example.invalid/p.pth",), sha256=W.sha256_of(f))
    with pytest.raises(W.WeightsError, match="refused.*only pickle could rebuild.*weights_only=True"):
        W.load_state_dict(spec)
    g = tmp_path / "plain.pth"
    torch.save({"conv.weight": torch.ones(2, 2)}, g)
    ok = WeightsSpec(filename="plain.pth", urls=("https://example.invalid/q.pth",), sha256=W.sha256_of(g))
    assert list(W.load_state_dict(ok)) == ["conv.weight"]


def case_registration_bad_options(tmp_path, capsys):
    a = np.zeros((3, 48, 48), np.float32)
    _api_refuses(StackError, "register='rigid' is not one of", a, register="rigid")
    src = _stack_tif(tmp_path / "in.tif")
    _cli_refuses(["fuse", str(src), "-o", str(tmp_path / "out"), "--register", "translation",
                  "--register-reference", "9", "-q"], EXIT_INPUT, capsys, "reference plane 9",
                 out=tmp_path / "out")


# --- metadata the pixels depend on (issue 14, item 7) ---------------------------------------------
def _pattern(shape, seed=0, hi=255, dtype=np.uint8):
    """An image that no turn or mirror maps onto itself (a gradient plus noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]]
    base = (y * 3 + x * 7) % 97 + rng.integers(0, 40, shape[:2])
    a = base / base.max() * hi
    if len(shape) == 3:
        a = np.stack([a, a[::-1], a[:, ::-1]][: shape[2]], axis=-1)
    return a.astype(dtype)


def case_exif_orientation(tmp_path, capsys):
    """Portrait phone pictures (stored landscape with EXIF orientation 6) are read as viewers show
    them, every orientation 1..8 as Pillow's exif_transpose turns it, for PNG, JPEG and TIFF
    planes and multi-page TIFFs alike; the results are written in that orientation and the
    provenance says so."""
    import json
    import warnings

    from PIL import Image, ImageOps

    from napari_edof.io.readers import read_image

    for o in range(1, 9):  # PNG: lossless, so exactly what Pillow shows
        d = tmp_path / f"png{o}"
        d.mkdir()
        for k in range(2):
            ex = Image.Exif()
            ex[0x0112] = o
            Image.fromarray(_pattern((30, 50, 3), seed=k)).save(d / f"p{k}.png", exif=ex)
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            st = api.open_stack(d)
        assert any(f"EXIF orientation {o}" in str(w.message) for w in said) == (o != 1)
        with Image.open(d / "p1.png") as im:
            want = np.asarray(ImageOps.exif_transpose(im))
        np.testing.assert_array_equal(np.asarray(st.data)[1], want)
        np.testing.assert_array_equal(read_image(d / "p1.png"), want)  # evaluate reads the same way
    frames = tmp_path / "portrait"
    frames.mkdir()
    for k in range(3):
        ex = Image.Exif()
        ex[0x0112] = 6
        Image.fromarray(_pattern((40, 64, 3), seed=k)).save(frames / f"img{k}.jpg", exif=ex, quality=95)
    with pytest.warns(UserWarning, match="EXIF orientation 6"):
        st = api.open_stack(frames)
    assert st.yx_shape == (64, 40)  # portrait, as taken
    out = tmp_path / "out"
    assert main(["fuse", str(frames), "-o", str(out), "-q"]) == EXIT_OK
    assert "orientation 6" in capsys.readouterr().err
    assert tifffile.imread(out / "fused.tif").shape == (64, 40, 3)
    assert "orientation 6" in json.loads((out / "provenance.json").read_text())["input_warnings"][0]
    # a multi-page TIFF with an Orientation tag (274): every plane turned alike
    planes = np.stack([_pattern((24, 36), seed=k, hi=60000, dtype=np.uint16) for k in range(3)])
    tifffile.imwrite(tmp_path / "o8.tif", planes, photometric="minisblack", extratags=[(274, "H", 1, 8, True)])
    with pytest.warns(UserWarning, match="orientation 8"):
        st = api.open_stack(tmp_path / "o8.tif")
    np.testing.assert_array_equal(np.asarray(st.data), np.rot90(planes, 1, axes=(1, 2)))


def case_miniswhite_and_palette_tiffs(tmp_path, capsys):
    """miniswhite (0 is white) is inverted on read and written minisblack: the result looks like
    the input in every viewer; a palette TIFF has its palette applied (colour, or grey for a grey
    palette): its stored values are colour indices, never fused as intensities."""
    planes = np.stack([_pattern((32, 40), seed=k, hi=4000, dtype=np.uint16) for k in range(4)])
    tifffile.imwrite(tmp_path / "mw.tif", planes, photometric="miniswhite")
    with pytest.warns(UserWarning, match="miniswhite"):
        st = api.open_stack(tmp_path / "mw.tif")
    np.testing.assert_array_equal(np.asarray(st.data), 65535 - planes)
    np.testing.assert_array_equal(api.fuse(st).fused, api.fuse(65535 - planes).fused)
    out = tmp_path / "out_mw"
    assert main(["fuse", str(tmp_path / "mw.tif"), "-o", str(out), "-q"]) == EXIT_OK
    with tifffile.TiffFile(out / "fused.tif") as tf:
        assert tf.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK
    # palette: random colours (8-bit values scaled to 16 bits, as writers store them)
    rng = np.random.default_rng(1)
    lut8 = rng.integers(0, 256, (256, 3)).astype(np.uint8)
    idx = np.stack([_pattern((32, 40), seed=k) for k in range(3)])
    tifffile.imwrite(tmp_path / "pal.tif", idx, photometric="palette", colormap=lut8.T.astype(np.uint16) * 257)
    with pytest.warns(UserWarning, match="palette"):
        st = api.open_stack(tmp_path / "pal.tif")
    assert st.rgb and st.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(st.data), lut8[idx])
    out = tmp_path / "out_pal"
    assert main(["fuse", str(tmp_path / "pal.tif"), "-o", str(out), "-q"]) == EXIT_OK
    assert tifffile.imread(out / "fused.tif").shape == (32, 40, 3)
    # a grey palette (a reversed ramp) gives grey intensities; the same for the planes of a folder
    ramp = np.arange(255, -1, -1, dtype=np.uint16) * 257
    d = tmp_path / "palplanes"
    d.mkdir()
    for k in range(2):
        tifffile.imwrite(d / f"p{k}.tif", idx[k], photometric="palette", colormap=np.stack([ramp] * 3))
    with pytest.warns(UserWarning, match="palette"):
        st = api.open_stack(d)
    assert not st.rgb
    np.testing.assert_array_equal(np.asarray(st.data), 255 - idx[:2])


# --- files users have (item 8) -----------------------------------------------------------------
def case_compressed_tiffs_and_16_bit_png(tmp_path, capsys, monkeypatch):
    """LZW, Deflate (with predictor) and JPEG TIFFs read with a real decoder (imagecodecs, a
    dependency); 16-bit RGB PNGs keep 16 bits. Without the decoder the message says what is
    missing, at open (not "may be corrupt" when the pixels are read)."""
    import sys

    import imagecodecs
    import tomllib

    root = Path(__file__).resolve().parents[1]
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.split(">")[0].split("=")[0].strip() == "imagecodecs" for d in deps)
    planes = np.stack([_pattern((48, 40), seed=k, hi=60000, dtype=np.uint16) for k in range(4)])
    for comp, kw in (("lzw", {}), ("zlib", {"predictor": True}), ("lzw", {"predictor": True})):
        f = tmp_path / f"{comp}{len(kw)}.tif"
        tifffile.imwrite(f, planes, photometric="minisblack", compression=comp, **kw)
        np.testing.assert_array_equal(np.asarray(api.open_stack(f).data), planes)
    jpg = tmp_path / "jpeg.tif"
    tifffile.imwrite(jpg, (planes >> 8).astype(np.uint8), photometric="minisblack", compression="jpeg")
    assert np.abs(np.asarray(api.open_stack(jpg).data).astype(int) - (planes >> 8)).mean() < 4
    assert main(["fuse", str(jpg), "-o", str(tmp_path / "out"), "-q"]) == EXIT_OK
    # 16-bit RGB PNG planes: exactly the 16-bit values
    d = tmp_path / "png16"
    d.mkdir()
    rgb = np.stack([_pattern((30, 44, 3), seed=k, hi=65535, dtype=np.uint16) for k in range(3)])
    for k in range(3):
        (d / f"p{k}.png").write_bytes(imagecodecs.png_encode(rgb[k]))
    st = api.open_stack(d)
    assert st.dtype == np.uint16 and st.rgb
    np.testing.assert_array_equal(np.asarray(st.data), rgb)
    # a (4, Y, X) stack written without photometric= is an RGBA image to tifffile: the message
    # says so and how to read it as planes, which then fuses like the array
    plain = tmp_path / "four.tif"
    tifffile.imwrite(plain, planes, compression="lzw")
    err = _cli_refuses(["fuse", str(plain), "-o", str(tmp_path / "o4"), "-q"], EXIT_INPUT, capsys,
                       "RGBA", "--axes ZYX")
    assert "corrupt" not in err
    st = api.open_stack(plain, axes="ZYX")
    np.testing.assert_array_equal(api.fuse(st).fused, api.fuse(planes).fused)
    # the decoder missing (tifffile's pure-Python fallback has no LZW): said at open, by name
    import tifffile.tifffile as tt

    monkeypatch.setattr(tt, "imagecodecs", sys.modules.get("tifffile._imagecodecs") or __import__(
        "tifffile._imagecodecs", fromlist=["x"]))
    monkeypatch.setattr(tt.TIFF.DECOMPRESSORS, "_codecs", {1: tt.TIFF.DECOMPRESSORS._codecs[1]})
    with pytest.raises(ReadError, match="compressed with LZW, which needs the imagecodecs package") as e:
        api.open_stack(tmp_path / "lzw0.tif")  # at open: nothing computed yet
    assert "corrupt" not in str(e.value)
    _cli_refuses(["fuse", str(tmp_path / "lzw0.tif"), "-o", str(tmp_path / "o5"), "-q"], EXIT_INPUT, capsys,
                 "pip install imagecodecs", out=tmp_path / "o5")


def case_napari_reader_checks_and_says_why(tmp_path, capsys):
    """npe2's get_reader checks the file when napari asks: a reader only for a stack it can read;
    None for what it cannot, with the reason as a warning (a napari notification); None quietly
    for a single 2D image (napari's own reader opens it)."""
    import warnings

    from PIL import Image

    from napari_edof._napari import get_reader
    from napari_edof.core.errors import EdofWarning

    good = _stack_tif(tmp_path / "good.tif")
    assert get_reader(str(good)) is not None
    single = tmp_path / "single.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(single)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert get_reader(str(single)) is None
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + bytes(range(256)) * 8)
    with pytest.warns(EdofWarning, match=r"napari-edof cannot open .*corrupt\.tif: .*(corrupt|not a readable)"):
        assert get_reader(str(corrupt)) is None
    # pixels that only fail when decoded: a JPEG cut inside its entropy-coded data
    frames = tmp_path / "frames"
    frames.mkdir()
    for k in range(2):
        Image.fromarray(_pattern((64, 64, 3), seed=k)).save(frames / f"f{k}.jpg", quality=95)
    raw = (frames / "f0.jpg").read_bytes()
    (frames / "f0.jpg").write_bytes(raw[: len(raw) // 2])
    with pytest.warns(EdofWarning, match=r"cannot open .*f0\.jpg"):
        assert get_reader(str(frames)) is None


# --- messages that blame the right thing (item 12) -----------------------------------------------
def case_weights_cache_read_only(tmp_path, capsys, monkeypatch):
    """A read-only weights cache is said to be one (with the variable that moves it), not
    "cannot write the results"."""
    import tempfile

    from napari_edof.methods._registry import WeightsSpec
    from napari_edof.nn import weights as W

    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv(W.ENV, str(cache))
    real = tempfile.mkstemp

    def read_only(*a, dir=None, **k):
        if dir is not None and Path(dir) == cache:
            raise PermissionError(13, "Permission denied", str(cache))
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    spec = WeightsSpec(filename="m.pth", urls=("https://example.invalid/m.pth",), sha256="0" * 64)
    with pytest.raises(W.WeightsError, match=r"weights cache folder .*cache is not writable.*NAPARI_EDOF_WEIGHTS"):
        W.fetch(spec)
    pytest.importorskip("torch")
    import napari_edof.methods.stackmff_v2 as smff

    monkeypatch.setattr(smff, "_MODELS", {})  # a model loaded by an earlier test would need no weights
    src = _stack_tif(tmp_path / "in.tif")
    err = _cli_refuses(["fuse", str(src), "-o", str(tmp_path / "out"), "-m", "stackmff-v2", "-p", "weights=official",
                        "-q"], EXIT_INPUT, capsys, "weights cache", "NAPARI_EDOF_WEIGHTS", out=tmp_path / "out")
    assert "cannot write the results" not in err


def case_short_write_is_no_space(tmp_path, capsys, monkeypatch):
    """numpy's "262144 requested and 81704 written" (a full disk, no errno) is "No space left on
    device", in the TIFF writer and on the streaming (tiled-tiff) path; a disk without room for
    the results is found before fusing."""
    import shutil

    import napari_edof.core.engine as engine

    src = _stack_tif(tmp_path / "in.tif")
    real = tifffile.imwrite

    def short(path, *a, **k):
        if "in.tif" not in str(path):
            raise OSError("262144 requested and 81704 written")
        return real(path, *a, **k)

    monkeypatch.setattr(tifffile, "imwrite", short)
    for fmt in ("tiff", "tiled-tiff"):
        out = tmp_path / f"out_{fmt}"
        err = _cli_refuses(["fuse", str(src), "-o", str(out), "--format", fmt, "-q"], EXIT_OUTPUT, capsys,
                           "No space left on device", "81704 of 262144 bytes")
        assert "requested and" not in err
        _no_temp_files(out) if out.exists() else None
    monkeypatch.setattr(tifffile, "imwrite", real)
    Usage = type(shutil.disk_usage(tmp_path))
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**9, 10**9 - 1000, 1000))
    monkeypatch.setattr(engine, "fuse_iter", lambda *a, **k: pytest.fail("fused before the output was checked"))
    _cli_refuses(["fuse", str(src), "-o", str(tmp_path / "full"), "-q"], EXIT_OUTPUT, capsys,
                 "No space left on device", "1000 bytes free")


def case_unwritable_output_found_before_fusing(tmp_path, capsys, monkeypatch):
    """An output folder that cannot be written (or created) is refused before anything is fused."""
    import os

    import napari_edof.core.engine as engine

    src = _stack_tif(tmp_path / "in.tif")
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m, *a, **k: False if Path(p) == locked else real_access(p, m))
    monkeypatch.setattr(engine, "fuse_iter", lambda *a, **k: pytest.fail("fused before the output was checked"))
    _cli_refuses(["fuse", str(src), "-o", str(locked), "-q"], EXIT_OUTPUT, capsys, "locked", "not writable")
    _cli_refuses(["fuse", str(src), "-o", str(locked / "new" / "deeper"), "-q"], EXIT_OUTPUT, capsys,
                 "cannot create the output folder", "locked is not writable")
    _cli_refuses(["fuse", str(src), "-o", str(tmp_path / "in.tif" / "x"), "-q"], EXIT_OUTPUT, capsys,
                 "is a file, not a folder")
    assert list(locked.iterdir()) == []


def case_tiny_tiff_declaring_huge_image(tmp_path, capsys):
    """A TIFF of a few hundred bytes that declares 100000 x 100000 pixels is corrupt (its data
    cannot hold them), not a memory problem: said at open, uncompressed or LZW."""
    for comp in (None, "lzw", "zstd"):
        f = tmp_path / f"huge_{comp}.tif"
        tifffile.imwrite(f, np.zeros((2, 8, 8), np.uint8), photometric="minisblack", compression=comp,
                         rowsperstrip=100000, metadata=None)
        with tifffile.TiffFile(f, mode="r+b") as tf:
            for page in tf.pages:
                page.tags["ImageWidth"].overwrite(100000)
                page.tags["ImageLength"].overwrite(100000)
        size = f.stat().st_size
        assert size < 1000
        with pytest.raises(ReadError, match=r"corrupt or truncated: page 0 declares 100000x100000 pixels "
                                            r"\(10000000000 bytes of pixel data\) but holds \d+ bytes"):
            api.open_stack(f)
        err = _cli_refuses(["fuse", str(f), "-o", str(tmp_path / "out"), "-q"], EXIT_INPUT, capsys,
                           f"the file has {size} bytes", out=tmp_path / "out")
        assert "GiB" not in err


def case_axes_in_words(tmp_path, capsys):
    """Messages name a file's dimensions in words, never tifffile's internal letters (Q, I)."""
    f = tmp_path / "four.tif"
    tifffile.imwrite(f, np.zeros((3, 4, 16, 16), np.uint8), photometric="minisblack")  # tifffile: "QQYX"
    err = _cli_refuses(["fuse", str(f), "-o", str(tmp_path / "out"), "-q"], EXIT_INPUT, capsys,
                       "3 (unnamed) x 4 (unnamed) x 16 (height) x 16 (width)", "--axes")
    assert "QQYX" not in err and "'Q" not in err
    d = tmp_path / "planes"
    d.mkdir()
    tifffile.imwrite(d / "a.tif", np.zeros((2, 16, 16), np.uint8), photometric="minisblack", metadata=None)
    tifffile.imwrite(d / "b.tif", np.zeros((16, 16), np.uint8))
    err = _cli_refuses(["fuse", str(d), "-o", str(tmp_path / "out"), "-q"], EXIT_INPUT, capsys, "2 (")
    assert "QYX" not in err and "IYX" not in err


def case_evaluate_colour_against_grey(tmp_path, capsys):
    """evaluate: an RGB fused image against grey planes (or grey against RGB planes) is scored on
    luminance, like two colour images; a size mismatch says so in words."""
    import json

    from napari_edof.metrics._common import LUMA

    planes = np.stack([_pattern((40, 48), seed=k) for k in range(3)])
    tifffile.imwrite(tmp_path / "grey.tif", planes, photometric="minisblack")
    rgb = np.repeat(planes[1][..., None], 3, axis=-1)
    tifffile.imwrite(tmp_path / "rgb_fused.tif", rgb, photometric="rgb")
    tifffile.imwrite(tmp_path / "grey_fused.tif", planes[1], photometric="minisblack")
    assert main(["evaluate", str(tmp_path / "rgb_fused.tif"), "--stack", str(tmp_path / "grey.tif"), "--json"]) == 0
    a = capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "grey_fused.tif"), "--stack", str(tmp_path / "grey.tif"), "--json"]) == 0
    b = capsys.readouterr().out
    assert abs(LUMA.sum() - 1) < 1e-12  # a grey RGB image's luminance is the grey image
    assert json.loads(a)["metrics"] == pytest.approx(json.loads(b)["metrics"], rel=1e-9)
    cstack = np.repeat(planes[..., None], 3, axis=-1)
    tifffile.imwrite(tmp_path / "rgb_stack.tif", cstack, photometric="rgb")
    assert main(["evaluate", str(tmp_path / "grey_fused.tif"), "--stack", str(tmp_path / "rgb_stack.tif")]) == 0
    tifffile.imwrite(tmp_path / "small.tif", planes[1][:30], photometric="minisblack")
    _cli_refuses(["evaluate", str(tmp_path / "small.tif"), "--stack", str(tmp_path / "grey.tif")], EXIT_INPUT,
                 capsys, "30x48 grey", "40x48 grey", "same size")


def case_output_names_that_mean_nothing(tmp_path, capsys, monkeypatch):
    """Found in the adversarial pass: `-o ""` (an unset shell variable) wrote the results into the
    current folder; a dangling symlink as the output, a read-only file system (which permissions
    do not show to root) were found only after fusing. All refused before anything runs."""
    import errno
    import tempfile

    import napari_edof.core.engine as engine

    src = _stack_tif(tmp_path / "in.tif")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(engine, "fuse_iter", lambda *a, **k: pytest.fail("fused before the output was checked"))
    _cli_refuses(["fuse", str(src), "-o", "", "-q"], EXIT_INPUT, capsys, "--output is empty")
    assert list(work.iterdir()) == []
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    _cli_refuses(["fuse", str(src), "-o", str(link), "-q"], EXIT_OUTPUT, capsys, "symbolic link", "does not exist")
    ro = tmp_path / "ro"
    real = tempfile.mkstemp

    def read_only_fs(*a, dir=None, **k):
        if dir is not None and str(dir).startswith(str(ro)):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkstemp", read_only_fs)
    _cli_refuses(["fuse", str(src), "-o", str(ro / "a" / "b"), "-q"], EXIT_OUTPUT, capsys, "Read-only file system")
    assert not ro.exists()  # the folders made to probe it are gone again
    monkeypatch.undo()
    # evaluate with a list of planes, one grey and one colour: checked plane by plane
    from napari_edof import api as api_

    g = _pattern((20, 24))
    assert set(api_.evaluate(g, [g, np.repeat(g[..., None], 3, -1)], metrics="qabf")) == {"qabf"}


CASES = {name[5:]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}


def test_matrix_has_every_case():
    assert len(CASES) >= 20


@pytest.mark.parametrize("case", sorted(CASES))
def test_fault(case, tmp_path, capsys, monkeypatch, request):
    fn = CASES[case]
    kwargs = {"tmp_path": tmp_path, "capsys": capsys}
    names = fn.__code__.co_varnames[: fn.__code__.co_argcount]
    if "monkeypatch" in names:
        kwargs["monkeypatch"] = monkeypatch
    if "oom_method" in names:
        kwargs["oom_method"] = request.getfixturevalue("oom_method")
    fn(**kwargs)
