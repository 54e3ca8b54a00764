"""`napari-edof evaluate` end to end on TIFF files, and napari_edof.api.evaluate."""
import json

import numpy as np
import pytest
import tifffile

import napari_edof as ne
from napari_edof import api, cli


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ev")
    s = ne.sample_stack(n_planes=5, shape=(48, 56), seed=7)
    tifffile.imwrite(d / "stack.tif", s.stack.data)
    r = ne.fuse(s.stack)
    tifffile.imwrite(d / "fused.tif", r.fused)
    tifffile.imwrite(d / "truth.tif", s.all_in_focus)
    return d, s, r


def test_api_evaluate_result_arrays_and_files(files):
    d, s, r = files
    v = api.evaluate(r, s.stack, truth=s.all_in_focus)
    assert list(v) == ["psnr", "ssim", "qabf", "nmi", "fmi", "qy", "qcb"]
    assert 20 < v["psnr"] < 80 and 0.5 < v["ssim"] <= 1
    assert api.evaluate(r.fused, s.stack.data, s.all_in_focus) == v
    assert api.evaluate(d / "fused.tif", d / "stack.tif", d / "truth.tif") == v
    assert list(api.evaluate(r, s.stack)) == ["qabf", "nmi", "fmi", "qy", "qcb"]
    with pytest.raises(ne.EdofError, match="unknown metric"):
        api.evaluate(r, s.stack, metrics="nope")


def test_cli_table_and_json(files, capsys):
    d, s, r = files
    args = ["evaluate", str(d / "fused.tif"), "--stack", str(d / "stack.tif")]
    assert cli.main(args + ["--truth", str(d / "truth.tif")]) == 0
    out = capsys.readouterr().out
    for label in ("PSNR (dB)", "SSIM", "Q^AB/F", "NMI", "FMI", "Q_Y", "Q_CB"):
        assert label in out
    assert cli.main(args + ["--metrics", "qabf,nmi", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert list(doc["metrics"]) == ["qabf", "nmi"] and doc["truth"] is None
    want = api.evaluate(r, s.stack, metrics="qabf,nmi")
    assert doc["metrics"] == pytest.approx(want)
    # the truth itself as the fused image: PSNR is infinite, written as "inf" in JSON
    assert cli.main(["evaluate", str(d / "truth.tif"), "--stack", str(d / "stack.tif"), "--truth",
                     str(d / "truth.tif"), "--metrics", "psnr", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["psnr"] == "inf"


def test_cli_bad_input_exits_2(files, capsys, tmp_path):
    d, s, r = files
    stack = ["--stack", str(d / "stack.tif")]
    assert cli.main(["evaluate", str(tmp_path / "missing.tif")] + stack) == 2
    assert cli.main(["evaluate", str(d / "fused.tif"), "--stack", str(tmp_path / "none.tif")]) == 2
    assert cli.main(["evaluate", str(d / "fused.tif"), "--metrics", "bogus"] + stack) == 2
    assert cli.main(["evaluate", str(d / "fused.tif"), "--metrics", "psnr"] + stack) == 2
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, np.zeros((10, 10), np.uint16))
    assert cli.main(["evaluate", str(small)] + stack) == 2
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err
