"""npe2 contributions: manifest, reader, writer, sample data (headless, small)."""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import napari_edof
from napari_edof import api

MANIFEST = Path(napari_edof.__file__).parent / "napari.yaml"
MY_COMMANDS = ("get_reader", "write_tiff", "sample_grey", "sample_rgb", "fusion_widget")


def _real_open_stack_works() -> bool:
    try:
        api.open_stack("/nonexistent/file.tif")
    except NotImplementedError:
        return False
    except Exception:  # noqa: BLE001 - a real reader refusing a missing file
        return True
    return True


@pytest.fixture
def open_stack_available(monkeypatch):
    """The real reader when the I/O room has written it, else a minimal tifffile stand-in."""
    if _real_open_stack_works():
        return "real"
    import tifffile

    def fake_open_stack(source, *, axes=None, name=None):
        p = Path(source)
        if p.is_dir():
            files = sorted(q for q in p.iterdir() if q.suffix.lower() in (".tif", ".tiff"))
            data = np.stack([tifffile.imread(f) for f in files])
        else:
            data = tifffile.imread(p)
        return api.as_stack(data, axes=axes, name=name or p.stem, pixel_size=(0.5, 0.5), z_step=2.0,
                            unit="µm", source=(str(p),))

    monkeypatch.setattr(api, "open_stack", fake_open_stack)
    return "fake"


def test_manifest_validates():
    from npe2 import PluginManifest

    mf = PluginManifest.from_file(MANIFEST)
    assert mf.name == "napari-edof"
    ids = {c.id: c.python_name for c in mf.contributions.commands}
    for cmd in MY_COMMANDS:
        mod, attr = ids[f"napari-edof.{cmd}"].split(":")
        assert callable(getattr(importlib.import_module(mod), attr)), cmd
    keys = {s.key for s in mf.contributions.sample_data}
    assert {"synthetic-grey", "synthetic-rgb"} <= keys


def test_npe2_validate_cli():
    exe = Path(sys.executable).with_name("npe2")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "npe2"]
    r = subprocess.run(cmd + ["validate", "napari-edof"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "valid" in r.stdout, r.stdout + r.stderr


def test_manifest_registered_with_npe2():
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    assert "napari-edof" in pm._manifests


def test_imports_stay_light():
    code = (
        "import sys, napari_edof, napari_edof._napari;"
        "bad=[m for m in ('torch','napari','qtpy','PyQt6','PyQt5','PySide6') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_get_reader_refuses_other_files(tmp_path, open_stack_available):
    from napari_edof._napari import get_reader

    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    assert get_reader(str(txt)) is None
    assert get_reader(str(tmp_path / "empty_dir_that_does_not_exist")) is None
    import tifffile

    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, np.zeros((16, 16), np.uint8))
    assert get_reader(str(flat)) is None  # a single 2D image is not a focus stack


def test_reader_layer_data(tmp_path, open_stack_available):
    import tifffile

    from napari_edof._napari import get_reader

    data = (np.arange(6 * 16 * 20) % 251).astype(np.uint8).reshape(6, 16, 20)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data, photometric="minisblack")
    reader = get_reader(str(path))
    assert callable(reader)
    (arr, kw, kind), = reader(str(path))
    assert kind == "image"
    assert tuple(arr.shape) == (6, 16, 20)
    assert len(kw["scale"]) == 3
    md = kw["metadata"]["napari_edof"]
    assert md["axes"] == "ZYX"
    if open_stack_available == "fake":
        assert kw["scale"] == (2.0, 0.5, 0.5)
        assert kw["units"] == ("µm", "µm", "µm")


def test_reader_through_napari(make_napari_viewer, tmp_path, open_stack_available):
    import tifffile

    data = (np.arange(5 * 24 * 24) % 251).astype(np.uint8).reshape(5, 24, 24)
    path = tmp_path / "zstack.tif"
    tifffile.imwrite(path, data, photometric="minisblack")
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="napari-edof")
    assert len(layers) == 1
    layer = layers[0]
    assert layer.data.shape == (5, 24, 24)
    np.testing.assert_array_equal(np.asarray(layer.data), data)
    assert layer.metadata["napari_edof"]["axes"] == "ZYX"
    assert len(layer.scale) == 3


def test_multichannel_layer_data_splits_channels(make_napari_viewer):
    from napari_edof._napari import stack_to_layer_data

    data = np.zeros((2, 4, 16, 16), np.uint16)
    st = api.Stack(data, "CZYX", pixel_size=(0.25, 0.25), z_step=1.5, unit="um", name="cells")
    (arr, kw, kind), = stack_to_layer_data(st)
    assert kw["channel_axis"] == 0
    assert kw["name"] == ["cells [c0]", "cells [c1]"]
    viewer = make_napari_viewer()
    added = viewer.add_image(arr, **kw)
    assert len(added) == 2
    assert added[0].data.shape == (4, 16, 16)
    np.testing.assert_allclose(added[0].scale, (1.5, 0.25, 0.25))
    assert added[1].metadata["napari_edof"]["axes"] == "ZYX"
    assert added[1].metadata["napari_edof"]["channel"] == 1


def test_sample_data_through_npe2(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-edof", "synthetic-grey")
    assert len(layers) == 3
    stack, aif, idx = layers
    assert stack.data.ndim == 3 and stack.data.shape[0] == 10
    np.testing.assert_allclose(stack.scale, (2.0, 0.5, 0.5))
    assert aif.data.shape == stack.data.shape[1:]
    np.testing.assert_allclose(aif.scale, (0.5, 0.5))
    assert idx.data.shape == stack.data.shape[1:]
    assert 0 <= idx.data.min() and idx.data.max() <= 9
    assert stack.metadata["napari_edof"]["axes"] == "ZYX"


def test_sample_rgb_layer_data():
    from napari_edof._napari import sample_rgb

    layers = sample_rgb()
    (stack, kw, kind) = layers[0]
    assert kw["rgb"] is True and stack.shape[-1] == 3 and stack.dtype == np.uint8
    assert kw["metadata"]["napari_edof"]["axes"] == "ZYXC"
    assert layers[1][1]["rgb"] is True


def test_writer_roundtrip(tmp_path):
    pytest.importorskip("napari_edof.io.writers", reason="the I/O room's TIFF writer is not written yet")
    import tifffile

    from napari_edof._napari import write_tiff

    data = (np.arange(3 * 8 * 9) % 200).astype(np.uint8).reshape(3, 8, 9)
    attrs = {"scale": (2.0, 0.5, 0.5), "rgb": False, "units": ("µm", "µm", "µm"),
             "metadata": {"napari_edof": {"axes": "ZYX"}}}
    out = write_tiff(str(tmp_path / "out.tif"), data, attrs)
    assert out == [str(tmp_path / "out.tif")]
    np.testing.assert_array_equal(tifffile.imread(out[0]), data)


def test_reader_rgb_channels_and_folders(make_napari_viewer, tmp_path):
    """Real files through the I/O room's reader: RGB stack, CZYX channels, a folder of PNGs."""
    writers = pytest.importorskip("napari_edof.io.writers")
    import imageio.v3 as iio

    from napari_edof._napari import get_reader

    viewer = make_napari_viewer()
    rgb = api.sample_stack(n_planes=3, shape=(16, 20), rgb=True, dtype=np.uint8, seed=1).stack.data
    writers.write_tiff(tmp_path / "rgb.tif", rgb, axes="ZYXS", pixel_size=(0.5, 0.5), z_step=2.0, unit="µm")
    (layer,) = viewer.open(str(tmp_path / "rgb.tif"), plugin="napari-edof")
    assert layer.rgb and layer.data.shape == (3, 16, 20, 3)
    assert layer.metadata["napari_edof"]["axes"] == "ZYXC"
    np.testing.assert_allclose(layer.scale, (2.0, 0.5, 0.5))

    czyx = np.stack([np.full((3, 8, 8), 10, np.uint16), np.full((3, 8, 8), 20, np.uint16)])
    writers.write_tiff(tmp_path / "cells.tif", czyx, axes="CZYX")
    layers = viewer.open(str(tmp_path / "cells.tif"), plugin="napari-edof")
    assert len(layers) == 2 and layers[1].data.shape == (3, 8, 8)
    assert int(np.asarray(layers[1].data).max()) == 20
    assert sorted(layers[0].metadata["napari_edof"]["file_axes"]) == sorted("CZYX")

    folder = tmp_path / "planes"
    folder.mkdir()
    for k in range(3):
        iio.imwrite(folder / f"img{k + 1}.png", np.full((10, 12), 50 * k, np.uint8))
    reader = get_reader(str(folder))
    assert callable(reader)
    (data, kw, kind), = reader(str(folder))
    assert tuple(data.shape) == (3, 10, 12) and kw["metadata"]["napari_edof"]["axes"] == "ZYX"
    files = sorted(str(p) for p in folder.iterdir())
    (data, kw, kind), = get_reader(files)(files)
    assert tuple(data.shape) == (3, 10, 12)


def _czyx(n_c=2, n_z=4):
    rng = np.random.default_rng(3)
    return rng.integers(0, 255, (n_z, n_c, 16, 16), dtype=np.uint8)  # Z, C, Y, X


def test_reader_names_channels_from_ome(make_napari_viewer, tmp_path):
    """OME Channel Name / Color: the layers carry the file's names and colours (issue 16, item 4)."""
    import tifffile

    p = tmp_path / "cells.ome.tif"
    tifffile.imwrite(p, _czyx(), metadata={"axes": "ZCYX", "Channel": {"Name": ["DAPI", "GFP"]}})
    viewer = make_napari_viewer()
    layers = viewer.open(str(p), plugin="napari-edof")
    assert [ly.name for ly in layers] == ["cells.ome.tif [DAPI]", "cells.ome.tif [GFP]"]
    assert [ly.metadata["napari_edof"]["channel_name"] for ly in layers] == ["DAPI", "GFP"]
    assert [ly.colormap.name for ly in layers] == ["magenta", "green"]  # no colour in the file: napari's
    # colours from the file: pure ones by name, others as a colormap of their own
    q = tmp_path / "three.ome.tif"
    colours = [-16776961, 65535, int(np.array(0xFF8000FF, np.uint32).view(np.int32))]  # red, blue, orange
    tifffile.imwrite(q, _czyx(3), metadata={"axes": "ZCYX", "Channel": {"Name": ["a", "b", "c"], "Color": colours}})
    layers = viewer.open(str(q), plugin="napari-edof")
    assert [ly.name for ly in layers] == ["three.ome.tif [a]", "three.ome.tif [b]", "three.ome.tif [c]"]
    assert layers[0].colormap.name == "red" and layers[1].colormap.name == "blue"
    np.testing.assert_allclose(layers[2].colormap.colors[-1][:3], (1.0, 128 / 255, 0.0), atol=1e-3)
    # no names in the file: the former names
    r = tmp_path / "plain.ome.tif"
    tifffile.imwrite(r, _czyx(), metadata={"axes": "ZCYX"})
    assert [ly.name for ly in viewer.open(str(r), plugin="napari-edof")] == ["plain.ome.tif [c0]", "plain.ome.tif [c1]"]


def test_reader_names_channels_from_imagej(tmp_path):
    """ImageJ hyperstack: names from the slice labels, colours from the channel LUTs."""
    import tifffile

    from napari_edof._napari import stack_to_layer_data

    luts = [np.zeros((3, 256), np.uint8) for _ in range(2)]
    luts[0][2] = np.arange(256)  # blue
    luts[1][0] = np.arange(256)  # red + green: yellow
    luts[1][1] = np.arange(256)
    p = tmp_path / "ij.tif"
    tifffile.imwrite(p, _czyx(), imagej=True, metadata={"axes": "ZCYX", "Labels": ["DAPI", "GFP"] * 4, "LUTs": luts})
    st = api.open_stack(p)
    (_, kw, _), = stack_to_layer_data(st)
    assert kw["name"] == ["ij.tif [DAPI]", "ij.tif [GFP]"]
    assert kw["colormap"] == ["blue", "yellow"]
    # labels that differ along z name nothing; grey LUTs say nothing
    q = tmp_path / "ij2.tif"
    tifffile.imwrite(q, _czyx(), imagej=True, metadata={"axes": "ZCYX", "Labels": [f"z{k}" for k in range(8)]})
    (_, kw, _), = stack_to_layer_data(api.open_stack(q))
    assert kw["name"] == ["ij2.tif [c0]", "ij2.tif [c1]"] and "colormap" not in kw


def test_channel_names_in_provenance(tmp_path):
    import json

    import tifffile

    from napari_edof import cli

    p = tmp_path / "cells.ome.tif"
    tifffile.imwrite(p, _czyx(), metadata={"axes": "ZCYX", "Channel": {"Name": ["DAPI", "GFP"]}})
    assert api.fuse(api.open_stack(p)).provenance["channels"] == ["DAPI", "GFP"]
    assert cli.main(["fuse", str(p), "-o", str(tmp_path / "out"), "-q"]) == 0
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert prov["channels"] == ["DAPI", "GFP"]
    q = tmp_path / "plain.ome.tif"
    tifffile.imwrite(q, _czyx(), metadata={"axes": "ZCYX"})
    assert "channels" not in api.fuse(api.open_stack(q)).provenance
