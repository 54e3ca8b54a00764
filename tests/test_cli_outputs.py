"""Outputs users choose (issue 16): --outputs, --compress, a fused preview with the source's EXIF."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_edof import api
from napari_edof.cli import EXIT_INPUT, EXIT_OK, main


@pytest.fixture(scope="module")
def stack():
    return api.sample_stack(n_planes=6, shape=(64, 72), seed=7).stack.data


@pytest.fixture
def stack_tif(tmp_path, stack):
    p = tmp_path / "stack.tif"
    tifffile.imwrite(p, stack, imagej=True, metadata={"axes": "ZYX"})
    return p


def _names(d):
    return sorted(p.name for p in d.iterdir())


def test_default_outputs_leave_the_masks_out(stack_tif, tmp_path):
    out = tmp_path / "out"
    assert main(["fuse", str(stack_tif), "-o", str(out), "-q"]) == EXIT_OK
    assert _names(out) == ["confidence.tif", "decision.tif", "focus_index.png", "focus_index.tif", "fused.tif",
                           "provenance.json"]
    prov = json.loads((out / "provenance.json").read_text())
    assert sorted(prov["files"]) == _names(out)


def test_choose_outputs_and_compress(stack_tif, tmp_path, stack):
    plain, small = tmp_path / "plain", tmp_path / "small"
    assert main(["fuse", str(stack_tif), "-o", str(plain), "-q", "--outputs", "all"]) == EXIT_OK
    assert "masks.tif" in _names(plain)
    assert main(["fuse", str(stack_tif), "-o", str(small), "-q", "--outputs", "fused,index",
                 "--compress", "deflate"]) == EXIT_OK
    assert _names(small) == ["focus_index.png", "focus_index.tif", "fused.tif", "provenance.json"]
    with tifffile.TiffFile(small / "fused.tif") as tf:
        assert tf.pages[0].compression != 1  # compressed (1: none)
    # the same pixels, lossless
    np.testing.assert_array_equal(tifffile.imread(small / "fused.tif"), tifffile.imread(plain / "fused.tif"))
    np.testing.assert_array_equal(tifffile.imread(small / "focus_index.tif"),
                                  tifffile.imread(plain / "focus_index.tif"))
    z = tmp_path / "z"
    assert main(["fuse", str(stack_tif), "-o", str(z), "-q", "--outputs", "fused", "--compress", "zstd"]) == EXIT_OK
    np.testing.assert_array_equal(tifffile.imread(z / "fused.tif"), tifffile.imread(plain / "fused.tif"))


def test_bad_outputs_are_refused_before_any_work(stack_tif, tmp_path, capsys):
    out = tmp_path / "bad"
    assert main(["fuse", str(stack_tif), "-o", str(out), "--outputs", "fused,height"]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert "'height' is not one" in err and "%|" not in err
    assert not out.exists()
    assert main(["fuse", str(stack_tif), "-o", str(out), "--format", "zarr", "--outputs", "fused"]) == EXIT_INPUT
    assert "--format tiff" in capsys.readouterr().err


def test_preview_carries_the_source_exif(tmp_path):
    """A photographer's focus bracket: JPEG frames with EXIF -> fused_preview.jpg with that EXIF."""
    s = api.sample_stack(n_planes=4, shape=(64, 80), rgb=True, dtype=np.uint8, seed=3).stack.data
    frames = tmp_path / "frames"
    frames.mkdir()
    for k, plane in enumerate(np.asarray(s)):
        exif = Image.Exif()
        exif[0x010F] = "TestCam"  # Make
        exif[0x0110] = "Bracket 1"  # Model
        Image.fromarray(plane).save(frames / f"f{k:02d}.jpg", quality=95, exif=exif)
    out = tmp_path / "out"
    assert main(["fuse", str(frames), "-o", str(out), "-q", "--preview", "jpg"]) == EXIT_OK
    with Image.open(out / "fused_preview.jpg") as im:
        assert im.size == (80, 64) and im.mode == "RGB"
        ex = im.getexif()
        assert ex.get(0x010F) == "TestCam" and ex.get(0x0110) == "Bracket 1"
        pix = np.asarray(im)
    fused = tifffile.imread(out / "fused.tif")
    # the fused image, JPEG-compressed
    assert np.mean(np.abs(pix.astype(int) - fused.astype(int))) < 6
    assert np.corrcoef(pix.ravel().astype(float), fused.ravel().astype(float))[0, 1] > 0.95


def test_preview_of_a_16bit_stack_is_stretched_to_8_bits(stack_tif, tmp_path):
    out = tmp_path / "out"
    assert main(["fuse", str(stack_tif), "-o", str(out), "-q", "--preview", "png"]) == EXIT_OK
    a = np.asarray(Image.open(out / "fused_preview.png"))
    assert a.dtype == np.uint8 and a.shape == (64, 72) and a.max() >= 250 and a.min() <= 5


def test_progress_bar_counts_what_the_summary_says(stack_tif, tmp_path, capsys):
    """Issue 16: the bar's total is the tiles run (x passes), as the summary line says."""
    import re

    out = tmp_path / "out"
    assert main(["fuse", str(stack_tif), "-o", str(out), "--tile", "32", "-m", "focus-select",
                 "-p", "lowtexture=nearest"]) == EXIT_OK
    cap = capsys.readouterr()
    prov = json.loads((out / "provenance.json").read_text())
    total = prov["tiles"] * prov.get("passes", 1)
    counts = {(int(a), int(b)) for a, b in re.findall(r"(\d+)/(\d+) \[", cap.err)}
    assert counts and {b for _, b in counts} == {total}, cap.err
    assert (total, total) in counts
    said = f"{prov['tiles']} tiles" + (f" x {prov['passes']} passes" if prov.get("passes", 1) > 1 else "")
    assert said in cap.out.splitlines()[0]


@pytest.fixture
def inventor():
    """A registered test "network" that puts 0 (below every source) into a known block of the image."""
    from napari_edof.methods._registry import MethodSpec, register, unregister

    class Inventor:
        def __init__(self, params, *, device="cpu"):
            pass

        def fuse_tile(self, planes, guide, *, halo, stats=None):
            idx = guide.argmax(axis=0)
            fused = np.take_along_axis(planes, idx[None, ..., None], axis=0)[0].copy()
            fused[10:20, 30:50] = 0
            return {"fused": fused, "index": idx.astype(np.float32), "confidence": np.ones(idx.shape, np.float32)}

    register(MethodSpec(name="_cli-inventor", summary="test", family="learned", synthesises=lambda p: True))(Inventor)
    yield "_cli-inventor"
    unregister("_cli-inventor")


def test_audit_files(stack_tif, tmp_path, stack, inventor, capsys):
    # a method that synthesises: audit.tif and audit_mask.tif by default, flagged where it invented
    out = tmp_path / "inv"
    assert main(["fuse", str(stack_tif), "-o", str(out), "-m", inventor, "--tile", "0"]) == EXIT_OK
    assert {"audit.tif", "audit_mask.tif"} <= set(_names(out))
    dist, mask = tifffile.imread(out / "audit.tif"), tifffile.imread(out / "audit_mask.tif")
    region = np.zeros(stack.shape[1:], bool)
    region[10:20, 30:50] = True
    assert dist.dtype == np.float32 and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, np.where(region, 255, 0))
    np.testing.assert_array_equal(dist[region], stack.min(axis=0)[region].astype(np.float32))
    assert np.all(dist[~region] == 0)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["audit"]["outside_pixels"] == region.sum() and sorted(prov["files"]) == _names(out)
    assert "audit: " in capsys.readouterr().out
    # a selecting method: no audit unless asked; asked, it is zero
    plain, asked = tmp_path / "plain", tmp_path / "asked"
    assert main(["fuse", str(stack_tif), "-o", str(plain), "-q", "-m", "focus-select"]) == EXIT_OK
    assert "audit.tif" not in _names(plain)
    assert main(["fuse", str(stack_tif), "-o", str(asked), "-q", "-m", "focus-select", "-p", "blend=0",
                 "--outputs", "fused,audit"]) == EXIT_OK
    assert _names(asked) == ["audit.tif", "audit_mask.tif", "fused.tif", "provenance.json"]
    assert not tifffile.imread(asked / "audit.tif").any() and not tifffile.imread(asked / "audit_mask.tif").any()
    # outputs chosen without the audit: none written (nor computed) for a synthesising method either
    some = tmp_path / "some"
    assert main(["fuse", str(stack_tif), "-o", str(some), "-q", "-m", inventor, "--outputs", "fused"]) == EXIT_OK
    assert _names(some) == ["fused.tif", "provenance.json"]
    assert "audit" not in json.loads((some / "provenance.json").read_text())
    # a re-run into the audited folder without the audit retires the old audit files
    assert main(["fuse", str(stack_tif), "-o", str(out), "-q", "-m", "focus-select"]) == EXIT_OK
    assert "audit.tif" not in _names(out) and "audit_mask.tif" not in _names(out)


def test_streamed_formats_write_the_same_audit(stack_tif, tmp_path, inventor):
    import zarr

    ref = tmp_path / "ref"
    assert main(["fuse", str(stack_tif), "-o", str(ref), "-q", "-m", inventor, "--tile", "0"]) == EXIT_OK
    dist, mask = tifffile.imread(ref / "audit.tif"), tifffile.imread(ref / "audit_mask.tif")
    assert mask.any()
    z = tmp_path / "z"
    assert main(["fuse", str(stack_tif), "-o", str(z), "-q", "-m", inventor, "--tile", "0", "--format", "zarr"]) == 0
    assert {"audit.ome.zarr", "audit_mask.ome.zarr"} <= set(_names(z))
    np.testing.assert_array_equal(np.asarray(zarr.open_group(str(z / "audit.ome.zarr"), mode="r")["0"]), dist)
    np.testing.assert_array_equal(np.asarray(zarr.open_group(str(z / "audit_mask.ome.zarr"), mode="r")["0"]), mask)
    prov = json.loads((z / "provenance.json").read_text())
    want = json.loads((ref / "provenance.json").read_text())["audit"]
    assert prov["audit"] == dict(want, mean_distance=pytest.approx(want["mean_distance"], rel=1e-9))
    assert sorted(prov["files"]) == _names(z)
    t = tmp_path / "t"
    assert main(["fuse", str(stack_tif), "-o", str(t), "-q", "-m", inventor, "--tile", "0",
                 "--format", "tiled-tiff"]) == EXIT_OK
    np.testing.assert_array_equal(tifffile.imread(t / "audit.tif"), dist)
    np.testing.assert_array_equal(tifffile.imread(t / "audit_mask.tif"), mask)
    assert sorted(json.loads((t / "provenance.json").read_text())["files"]) == _names(t)
    # a method that only selects: no audit in the streamed formats (nothing to ask for there)
    assert main(["fuse", str(stack_tif), "-o", str(z), "-q", "-m", "focus-select", "--format", "zarr"]) == EXIT_OK
    assert not any("audit" in n for n in _names(z))


def test_writing_an_audit_the_result_does_not_have_is_refused(stack, tmp_path):
    from napari_edof.io import write_result

    r = api.fuse(stack, method="focus-select")
    with pytest.raises(api.EdofError, match="audit=True"):
        write_result(r, tmp_path / "x", outputs="fused,audit")
    assert not (tmp_path / "x").exists()
    files = write_result(api.fuse(stack, method="focus-select", audit=True), tmp_path / "y")
    assert {"audit", "audit_mask"} <= set(files)
