"""OME-Zarr input and streamed OME-Zarr output (io/zarr_io.py)."""
import json

import numpy as np
import pytest

import napari_edof as ne
from napari_edof import api
from napari_edof.core.errors import ReadError, StackError
from napari_edof.io.zarr_io import create_outputs, fuse_to_zarr_iter, is_zarr

zarr = pytest.importorskip("zarr")


def _ome_image(path, data, axes, scale, unit="micrometer"):
    g = zarr.open_group(store=str(path), mode="w", zarr_format=3)
    a = g.create_array(name="0", shape=data.shape, chunks=(1,) * (data.ndim - 2) + data.shape[-2:], dtype=data.dtype)
    a[...] = data
    ax = [{"name": n, "type": "space", **({"unit": unit} if n in "zyx" else {})} for n in axes]
    g.attrs.update({"ome": {"version": "0.5", "multiscales": [{"axes": ax, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]}]}})
    return path


def _drain(gen):
    while True:
        try:
            next(gen)
        except StopIteration as e:
            return e.value


def test_ome_zarr_input_is_lazy_with_metadata(tmp_path):
    s = ne.sample_stack(n_planes=4, shape=(64, 48), seed=3)
    path = _ome_image(tmp_path / "in.ome.zarr", s.stack.data, "zyx", [2.5, 0.5, 0.25])
    assert is_zarr(path)
    st = ne.open_stack(path)
    assert st.is_lazy and st.axes == "ZYX" and st.shape == (4, 64, 48)
    assert st.pixel_size == (0.5, 0.25) and st.z_step == 2.5 and st.unit == "µm"
    r = ne.fuse(st, tile=32)
    assert r.is_lazy and r.z_step == 2.5
    np.testing.assert_array_equal(r.compute().fused, ne.fuse(s.stack.data, tile=32).fused)


def test_time_lapse_ome_zarr_axes(tmp_path):
    data = np.stack([ne.sample_stack(n_planes=3, shape=(32, 32), seed=k).stack.data for k in (1, 2)])
    path = _ome_image(tmp_path / "t.ome.zarr", data, "tzyx", [1.0, 2.0, 0.5, 0.5])
    st = ne.open_stack(path)
    assert st.axes == "TZYX" and st.n_times == 2


def test_plain_zarr_array_needs_axes_or_guesses(tmp_path):
    a = zarr.create_array(store=str(tmp_path / "plain.zarr"), shape=(3, 32, 32), dtype="uint8", chunks=(1, 32, 32))
    a[...] = np.random.default_rng(0).integers(0, 255, (3, 32, 32), dtype=np.uint8)
    st = ne.open_stack(tmp_path / "plain.zarr")
    assert st.axes == "ZYX"
    with pytest.raises(StackError, match="plain.zarr"):
        ne.open_stack(tmp_path / "plain.zarr", axes="TZYX")


def test_group_without_ome_metadata_is_refused(tmp_path):
    g = zarr.open_group(store=str(tmp_path / "g.zarr"), mode="w")
    g.create_array(name="raw", shape=(2, 8, 8), dtype="uint8")
    with pytest.raises(ReadError, match=r"g\.zarr.*OME.*raw"):
        ne.open_stack(tmp_path / "g.zarr")


def test_fuse_to_zarr_streams_and_commits(tmp_path):
    s = ne.sample_stack(n_planes=5, shape=(90, 70), seed=5, rgb=True)
    st = api.as_stack(s.stack.data, axes="ZYXC", pixel_size=(0.5, 0.5), z_step=1.5, unit="µm")
    res, files = _drain(fuse_to_zarr_iter(st, tmp_path / "out", tile=32, budget=1 << 16))
    ref = ne.fuse(st, tile=32)
    np.testing.assert_array_equal(np.asarray(res.fused), ref.fused)
    np.testing.assert_array_equal(np.asarray(res.index), ref.index)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["confidence.ome.zarr", "focus_index.ome.zarr", "fused.ome.zarr", "provenance.json"]
    g = zarr.open_group(store=str(files["fused"]), mode="r")
    ms = g.attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 0.5, 0.5]
    assert g["0"].shape == (3, 90, 70)
    assert json.loads((tmp_path / "out" / "provenance.json").read_text())["method"] == "focus-fuse"  # the default
    # the index image reads back as a plain 2D map
    ix = zarr.open_group(store=str(files["index"]), mode="r")["0"]
    np.testing.assert_array_equal(ix[...], ref.index)


def test_cancelled_run_leaves_the_previous_results(tmp_path):
    s = ne.sample_stack(n_planes=4, shape=(96, 64), seed=6).stack.data
    _drain(fuse_to_zarr_iter(s, tmp_path / "out", tile=16, budget=1 << 14))
    before = zarr.open_group(store=str(tmp_path / "out" / "fused.ome.zarr"), mode="r")["0"][...]
    gen = fuse_to_zarr_iter(s[::-1].copy(), tmp_path / "out", tile=16, budget=1 << 14)
    next(gen), next(gen)
    gen.close()  # cancel mid-run
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "confidence.ome.zarr", "focus_index.ome.zarr", "fused.ome.zarr", "provenance.json"]
    after = zarr.open_group(store=str(tmp_path / "out" / "fused.ome.zarr"), mode="r")["0"][...]
    np.testing.assert_array_equal(after, before)


def test_create_outputs_unwritable_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError):
        create_outputs(blocker / "out", shape_tyx=(1, 8, 8), channels=1, dtype=np.uint8, axes="ZYX",
                       rows_per_chunk=8)


@pytest.fixture
def direct_reads(monkeypatch):
    """Rows read by the direct zarr path, as (lo, hi) pairs."""
    from napari_edof.core import stream

    seen = []
    real = stream.ZarrRows.read_into

    def spy(self, lo, hi, out):
        seen.append((lo, hi))
        return real(self, lo, hi, out)

    monkeypatch.setattr(stream.ZarrRows, "read_into", spy)
    return seen


@pytest.mark.parametrize("axes,shape,chunks", [
    ("ZYX", (5, 150, 70), (1, 40, 70)),          # chunk rows that do not match the stripes
    ("TZCYX", (2, 4, 2, 110, 48), (1, 1, 1, 64, 48)),  # time points and channels, OME order
    ("ZYXC", (4, 96, 40, 3), (4, 32, 40, 3)),    # RGB last
])
def test_zarr_input_streams_by_direct_reads_with_the_same_result(tmp_path, direct_reads, axes, shape, chunks):
    rng = np.random.default_rng(len(axes))
    data = rng.integers(0, 60000, size=shape, dtype=np.uint16)
    z = zarr.create_array(store=str(tmp_path / "in.zarr"), shape=shape, chunks=chunks, dtype=np.uint16)
    z[...] = data
    st = ne.open_stack(tmp_path / "in.zarr", axes=axes)
    # stripe mechanics with a small halo (focus-select's; the default's reaches 90 pixels)
    res, _ = _drain(fuse_to_zarr_iter(st, tmp_path / "out", method="focus-select", tile=32, budget=1 << 15))
    ref = ne.fuse(api.as_stack(data, axes=axes, rgb=False), method="focus-select", tile=32)  # (no RGB guess)
    np.testing.assert_array_equal(np.asarray(res.fused), ref.fused)
    np.testing.assert_array_equal(np.asarray(res.index), ref.index)
    np.testing.assert_array_equal(np.asarray(res.confidence), ref.confidence)
    assert len(direct_reads) >= 3  # several stripes, each read straight from the zarr array
    T = shape[0] if "T" in axes else 1
    assert sum(hi - lo for lo, hi in direct_reads) <= T * (shape[axes.index("Y")] + 2 * 40)  # overlap reused
    assert np.array_equal(z[...], data)  # the input is untouched


def test_a_changed_stack_reads_through_dask_not_the_zarr_array(tmp_path, direct_reads):
    data = np.random.default_rng(1).integers(0, 255, size=(4, 64, 48), dtype=np.uint8)
    z = zarr.create_array(store=str(tmp_path / "in.zarr"), shape=data.shape, chunks=(1, 16, 48), dtype=np.uint8)
    z[...] = data
    st = ne.open_stack(tmp_path / "in.zarr")
    flipped = st.with_data(st.data[:, ::-1])  # same shape, other pixels: the zarr array must not be read directly
    res, _ = _drain(fuse_to_zarr_iter(flipped, tmp_path / "out", tile=16, budget=1 << 12))
    assert direct_reads == []
    np.testing.assert_array_equal(np.asarray(res.fused), ne.fuse(data[:, ::-1].copy(), tile=16).fused)


# -- uncompressed chunks read around the page cache (stream.ChunkFiles) --------------------------
@pytest.fixture
def chunk_reads(monkeypatch):
    """Chunk files read by ChunkFiles, as chunk coordinates."""
    from napari_edof.core import stream

    seen = []
    real = stream.ChunkFiles._read_chunk

    def spy(self, coords):
        seen.append(coords)
        return real(self, coords)

    monkeypatch.setattr(stream.ChunkFiles, "_read_chunk", spy)
    return seen


def _raw_zarr(path, data, chunks, **kw):
    z = zarr.create_array(store=str(path), shape=data.shape, chunks=chunks, dtype=data.dtype,
                          compressors=None, **kw)
    z[...] = data
    return z


@pytest.mark.parametrize("direct", ["1", "0"])  # around the page cache, and through it
@pytest.mark.parametrize("axes,shape,chunks", [
    ("ZYX", (5, 150, 70), (1, 40, 32)),               # edge chunks in Y and X
    ("TZCYX", (2, 4, 2, 70, 48), (2, 1, 2, 32, 48)),  # a chunk holds both time points and channels
])
def test_uncompressed_zarr_is_read_by_chunk_files_with_the_same_result(
        tmp_path, monkeypatch, chunk_reads, axes, shape, chunks, direct):
    monkeypatch.setenv("NAPARI_EDOF_DIRECT_IO", direct)
    data = np.random.default_rng(3).integers(0, 60000, size=shape, dtype=np.uint16)
    z = _raw_zarr(tmp_path / "in.zarr", data, chunks)
    st = ne.open_stack(tmp_path / "in.zarr", axes=axes)
    res, _ = _drain(fuse_to_zarr_iter(st, tmp_path / "out", tile=32, budget=1 << 15))
    ref = ne.fuse(api.as_stack(data, axes=axes, rgb=False), tile=32)
    np.testing.assert_array_equal(np.asarray(res.fused), ref.fused)
    np.testing.assert_array_equal(np.asarray(res.index), ref.index)
    np.testing.assert_array_equal(np.asarray(res.confidence), ref.confidence)
    n_chunks = int(np.prod([-(-n // c) for n, c in zip(shape, chunks)]))
    assert len(chunk_reads) >= n_chunks  # every chunk came through ChunkFiles (halo rows: some twice)
    assert np.array_equal(z[...], data)


def test_chunk_files_missing_chunks_are_the_fill_value_and_damaged_ones_are_named(tmp_path, monkeypatch):
    from napari_edof.core.stream import ZarrRows

    monkeypatch.setenv("NAPARI_EDOF_DIRECT_IO", "1")
    data = np.arange(3 * 40 * 30, dtype=np.uint16).reshape(3, 40, 30)
    z = _raw_zarr(tmp_path / "in.zarr", data, (1, 16, 16), fill_value=7)
    (tmp_path / "in.zarr" / "c" / "1" / "1" / "0").unlink()  # plane 1, rows 16-31, columns 0-15
    want = data.copy()
    want[1, 16:32, 0:16] = 7
    rows = ZarrRows(z, "ZYX", 0)
    assert rows.files is not None
    out = np.empty((3, 30, 30), np.uint16)
    rows.read_into(5, 35, out)
    np.testing.assert_array_equal(out, want[:, 5:35])
    np.testing.assert_array_equal(out, z[:, 5:35])  # as zarr reads it
    damaged = tmp_path / "in.zarr" / "c" / "2" / "0" / "1"
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.raises(StackError, match=r"c/2/0/1.*100 bytes.*damaged"):
        rows.read_into(0, 10, out[:, :10])
    rows.files.close()


def test_chunk_files_fall_back_to_buffered_reads_where_o_direct_is_refused(tmp_path, monkeypatch):
    import errno
    import os

    from napari_edof.core.stream import ZarrRows

    monkeypatch.setenv("NAPARI_EDOF_DIRECT_IO", "1")
    real_open = os.open

    def no_direct(path, flags, *a, **k):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", no_direct)
    data = np.random.default_rng(0).integers(0, 255, size=(2, 50, 20), dtype=np.uint8)
    rows = ZarrRows(_raw_zarr(tmp_path / "in.zarr", data, (1, 16, 20)), "ZYX", 0)
    assert rows.files is not None
    out = np.zeros((2, 40, 20), np.uint8)
    rows.read_into(10, 50, out)
    np.testing.assert_array_equal(out, data[:, 10:50])
    assert rows.files is not None and not rows.files.direct  # through the page cache from now on


def test_direct_io_is_chosen_for_raw_chunks_larger_than_the_memory(tmp_path, monkeypatch):
    from napari_edof.core import policy
    from napari_edof.core.stream import ChunkFiles, direct_io_wanted

    data = np.zeros((2, 32, 32), np.uint16)
    raw = _raw_zarr(tmp_path / "raw.zarr", data, (1, 16, 16))
    packed = zarr.create_array(store=str(tmp_path / "packed.zarr"), shape=data.shape, chunks=(1, 16, 16),
                               dtype=np.uint16)  # zstd by default: zarr decodes it
    assert ChunkFiles.of(raw) is not None and ChunkFiles.of(packed) is None
    monkeypatch.delenv("NAPARI_EDOF_DIRECT_IO", raising=False)
    assert not direct_io_wanted(raw)  # 4 KiB: the page cache holds it
    from napari_edof.core.stream import ZarrRows

    assert not ZarrRows(raw, "ZYX", 0).files.direct  # read by file, through the page cache
    assert ZarrRows(packed, "ZYX", 0).files is None  # zarr decodes it
    monkeypatch.setattr(policy, "available_memory", lambda: 1000)
    assert direct_io_wanted(raw)
    monkeypatch.setenv("NAPARI_EDOF_DIRECT_IO", "0")
    assert not direct_io_wanted(raw)
