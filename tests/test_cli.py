"""The command-line tool end to end."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

import napari_edof as ne
from napari_edof import cli


@pytest.fixture
def stack_tif(tmp_path):
    s = ne.sample_stack(n_planes=6, shape=(64, 72), seed=4)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, s.stack.data)
    return path, s


def test_fuse_writes_every_output(stack_tif, tmp_path, capsys):
    path, s = stack_tif
    out = tmp_path / "out"
    assert cli.main(["fuse", str(path), "-o", str(out), "--tile", "32", "--outputs", "all"]) == 0
    text = capsys.readouterr().out
    assert "focus-fuse" in text and "6 planes of 64x72" in text and "Mvoxel/s" in text and str(out) in text
    fused = tifffile.imread(out / "fused.tif")
    assert fused.dtype == np.uint16 and fused.shape == (64, 72)
    np.testing.assert_array_equal(fused, ne.fuse(s.stack, tile=32).fused)
    index = tifffile.imread(out / "focus_index.tif")
    assert index.dtype == np.float32 and index.shape == (64, 72)
    masks = tifffile.imread(out / "masks.tif")
    assert masks.shape == (6, 64, 72)
    labels = tifffile.imread(out / "decision.tif")
    assert labels.min() >= 1 and labels.max() <= 6
    assert (out / "focus_index.png").stat().st_size > 0
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["method"] == "focus-fuse" and prov["tile"] == 32
    # inputs untouched, no temporary files left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "stack.tif"]
    assert not [p for p in out.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


def test_params_and_method(stack_tif, tmp_path):
    path, _ = stack_tif
    out = tmp_path / "o"
    assert cli.main(["fuse", str(path), "-o", str(out), "-m", "pyramid", "-p", "levels=2", "-q"]) == 0
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["method"] == "pyramid" and prov["params"]["levels"] == 2


def test_precision_half_is_checked_and_recorded(stack_tif, tmp_path, capsys):
    path, _ = stack_tif
    out = tmp_path / "o"
    assert cli.main(["fuse", str(path), "-o", str(out), "-m", "stackmff-v2", "--tile", "0",
                     "--precision", "half"]) == 0
    prov = json.loads((out / "provenance.json").read_text())
    check = prov["half_precision_check"]
    assert check["pixels"] == 64 * 72 and prov["precision"] == ("half" if check["kept"] else "float32")
    said = capsys.readouterr().out
    assert ("half precision (bfloat16): the first tile's index was identical" in said if check["kept"]
            else "float32: half precision changed" in said)


def test_batch(stack_tif, tmp_path):
    path, s = stack_tif
    second = tmp_path / "second.tif"
    tifffile.imwrite(second, s.stack.data[::-1])
    out = tmp_path / "batch"
    assert cli.main(["fuse", str(path), str(second), "-o", str(out), "--batch", "-q"]) == 0
    assert (out / "stack" / "fused.tif").exists() and (out / "second" / "fused.tif").exists()


def test_batch_decides_numba_for_the_whole_command(stack_tif, tmp_path, monkeypatch):
    """Whether loading numba pays off is decided on the work of every stack of the command (a
    batch of many small stacks is one large job), not on each stack alone."""
    import contextlib

    from napari_edof.methods import _focus_fuse_kernels as k

    seen = []

    @contextlib.contextmanager
    def record(work):
        seen.append(work)
        yield False

    monkeypatch.setattr(k, "one_shot", record)
    path, s = stack_tif
    second = tmp_path / "second.tif"
    tifffile.imwrite(second, s.stack.data[::-1])
    assert cli.main(["fuse", str(path), str(second), "-o", str(tmp_path / "b"), "--batch", "-q"]) == 0
    assert seen == [2 * 6 * 64 * 72] * 2
    assert cli.main(["fuse", str(path), "-o", str(tmp_path / "one"), "-q"]) == 0
    assert seen[-1] == 6 * 64 * 72


@pytest.mark.parametrize(
    "extra, message",
    [
        (["-m", "nope"], "unknown method"),
        (["-p", "radius=-3"], "minimum"),
        (["-p", "bogus=1"], "no parameter"),
        (["--tile", "big"], "--tile"),
        (["--precision", "half"], "focus-fuse computes in float32"),
    ],
)
def test_bad_options_exit_2(stack_tif, tmp_path, capsys, extra, message):
    path, _ = stack_tif
    assert cli.main(["fuse", str(path), "-o", str(tmp_path / "x"), "-q"] + extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_bad_inputs_exit_2(tmp_path, capsys):
    missing = tmp_path / "missing.tif"
    assert cli.main(["fuse", str(missing), "-o", str(tmp_path / "o")]) == 2
    assert "missing.tif" in capsys.readouterr().err
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, np.zeros((16, 16), np.uint8))
    assert cli.main(["fuse", str(flat), "-o", str(tmp_path / "o")]) == 2
    assert "flat.tif" in capsys.readouterr().err
    assert cli.main(["fuse", "-o", str(tmp_path / "o")]) == 2


def test_unwritable_output_exits_3(stack_tif, tmp_path, capsys):
    path, _ = stack_tif
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert cli.main(["fuse", str(path), "-o", str(blocker / "sub"), "-q"]) == 3
    assert "file" in capsys.readouterr().err
    assert blocker.read_text() == "not a folder"


def test_interrupt_leaves_no_files(stack_tif, tmp_path, monkeypatch, capsys):
    path, _ = stack_tif

    def boom(*a, **k):
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr("napari_edof.core.engine.fuse_iter", boom)
    out = tmp_path / "o"
    assert cli.main(["fuse", str(path), "-o", str(out)]) == 130
    assert not out.exists() or not any(out.iterdir())


def test_methods_lists_the_registry(capsys):
    assert cli.main(["methods", "-v"]) == 0
    text = capsys.readouterr().out
    for spec in ne.list_methods():
        assert spec.name in text
    assert "--param radius=4" in text


def test_build_kernels_builds_and_records(tmp_path, monkeypatch, capsys):
    pytest.importorskip("numba")
    from napari_edof.methods import _focus_fuse_kernels as k

    monkeypatch.setenv("NAPARI_EDOF_CACHE", str(tmp_path))  # no record there
    monkeypatch.delenv("NAPARI_EDOF_NUMBA", raising=False)
    monkeypatch.setattr(k, "_BUILT", [])
    assert not k.built()
    assert cli.main(["build-kernels"]) == 0
    assert "kernels are built" in capsys.readouterr().out
    assert list((tmp_path / "kernels").iterdir()) and k.built()
    monkeypatch.setenv("NAPARI_EDOF_NUMBA", "0")  # switched off: nothing to build, and it says why
    assert cli.main(["build-kernels"]) == 2
    assert "NAPARI_EDOF_NUMBA=0" in capsys.readouterr().err


def test_entry_point_sample(tmp_path):
    out = tmp_path / "edof-out"
    exe = [sys.executable, "-m", "napari_edof.cli", "fuse", "--sample", "-o", str(out)]
    done = subprocess.run(exe, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "16 planes of 512x512" in done.stdout
    names = {p.name for p in out.iterdir()}
    assert {"fused.tif", "focus_index.tif", "decision.tif", "confidence.tif"} <= names
    assert "masks.tif" not in names  # off by default (issue 16): mask k is decision.tif == k + 1


@pytest.mark.parametrize("fmt", ["zarr", "tiled-tiff"])
def test_streamed_formats_end_to_end(tmp_path, fmt):
    s = ne.sample_stack(n_planes=4, shape=(120, 90), seed=3).stack.data
    tifffile.imwrite(tmp_path / "in.tif", s, photometric="minisblack")
    out = tmp_path / "out"
    assert cli.main(["fuse", str(tmp_path / "in.tif"), "-o", str(out), "--format", fmt, "--tile", "32", "-q"]) == 0
    ref = ne.fuse(s, tile=32)
    if fmt == "zarr":
        import zarr

        names = sorted(p.name for p in out.iterdir())
        assert names == ["confidence.ome.zarr", "focus_index.ome.zarr", "fused.ome.zarr", "provenance.json"]
        got = zarr.open_group(store=str(out / "fused.ome.zarr"), mode="r")["0"][...]
    else:
        names = sorted(p.name for p in out.iterdir())
        assert names == ["confidence.tif", "focus_index.tif", "fused.tif", "provenance.json"]  # no work folder left
        got = tifffile.imread(out / "fused.tif")
        np.testing.assert_array_equal(tifffile.imread(out / "focus_index.tif"), ref.index)
    np.testing.assert_array_equal(got, ref.fused)


def test_os_error_with_a_file_object_as_its_name_is_explained():
    """Some writers put the file object, not its path, in OSError.filename: the CLI still explains
    the error (it raised TypeError from os.fspath)."""
    import io

    from napari_edof import cli

    e = OSError(5, "Input/output error")
    e.filename = io.BufferedWriter(io.BytesIO())
    assert cli._os_error(e, Path("/nonexistent/out")) == cli.EXIT_OUTPUT
