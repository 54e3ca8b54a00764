"""Registration before fusion: known motions recovered, every channel moved alike, edges policy,
the report in the provenance, and real unregistered stacks better aligned after it."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_edof import api
from napari_edof.core.errors import StackError
from napari_edof.core.registration import _similarity_matrix, parse_register, register_stack


def _moved(img, motions, blur=True):
    """Planes showing ``img`` moved by (dy, dx, scale, rotation) about the centre, each blurred a bit."""
    c = (np.array(img.shape, np.float64) - 1) / 2
    out = []
    mid = len(motions) // 2
    for k, (dy, dx, s, r) in enumerate(motions):
        M = _similarity_matrix(s, r, np.array([dy, dx]), c)
        w = ndi.affine_transform(img, np.linalg.inv(M), order=3, mode="nearest")
        out.append(ndi.gaussian_filter(w, 0.5 + 0.6 * abs(k - mid)) if blur else w)
    return np.stack(out).astype(np.float32)


@pytest.fixture(scope="module")
def scene():
    from skimage import data

    return data.camera().astype(np.float32)[:256, :256]


def test_translation_recovered(scene):
    motions = [(2.5, -1.25, 1, 0), (1.0, -0.5, 1, 0), (0, 0, 1, 0), (-1.75, 0.75, 1, 0), (-3.0, 2.0, 1, 0)]
    reg, rep = register_stack(_moved(scene, motions), mode="translation", edges="edge")
    assert rep.reference == 2
    for p, (dy, dx, _, _) in zip(rep.planes, motions):
        assert p.dy == pytest.approx(dy, abs=0.15) and p.dx == pytest.approx(dx, abs=0.15)
        assert p.scale == 1 and p.rotation == 0
        assert p.residual < 0.3
    assert reg.data.shape == (5, 256, 256)


@pytest.mark.parametrize("mode", ["translation", "similarity"])
def test_planes_without_signal_are_not_registered(scene, mode):
    """A blank or constant plane gets the identity, reported as such; its neighbours are chained
    past it to the nearest plane with signal (no shift invented and carried into good planes)."""
    from napari_edof.core.registration import NO_SIGNAL

    motions = [(2.5, -1.25, 1, 0), (0, 0, 1, 0), (1.0, -0.5, 1, 0), (0, 0, 1, 0), (-1.75, 0.75, 1, 0)]
    planes = _moved(scene, motions)
    planes[1] = 1234.0  # constant
    reg, rep = register_stack(planes, mode=mode, reference=3, edges="edge", rotation=False, scale=False)
    assert rep.planes[1].method == NO_SIGNAL
    assert rep.planes[1].dy == 0 and rep.planes[1].dx == 0
    np.testing.assert_array_equal(reg.data[1], planes[1])
    for k in (0, 2, 4):
        p = rep.planes[k]
        assert np.isfinite(p.pair_error)
        assert p.dy == pytest.approx(motions[k][0], abs=0.2) and p.dx == pytest.approx(motions[k][1], abs=0.2)
    # a blank reference: the planes with signal are still registered to each other
    planes[3] = 0.0
    reg, rep = register_stack(planes, mode=mode, reference=3, edges="edge", rotation=False, scale=False)
    assert rep.planes[3].method == rep.planes[1].method == NO_SIGNAL
    assert rep.reference in (2, 4) and "plane 3" in rep.planes[rep.reference].method
    assert all(np.isfinite(p.pair_error) for p in rep.planes)
    d = [(rep.planes[k].dy - rep.planes[2].dy, rep.planes[k].dx - rep.planes[2].dx) for k in (0, 4)]
    for (dy, dx), k in zip(d, (0, 4)):
        assert dy == pytest.approx(motions[k][0] - motions[2][0], abs=0.2)
        assert dx == pytest.approx(motions[k][1] - motions[2][1], abs=0.2)


def test_similarity_recovers_scale_and_rotation(scene):
    motions = [(0, 0, 1 + 0.012 * (k - 2), 0.8 * (k - 2)) for k in range(5)]
    _, rep = register_stack(_moved(scene, motions), mode="similarity", edges="edge")
    for p, (_, _, s, r) in zip(rep.planes, motions):
        assert p.scale == pytest.approx(s, abs=0.002)
        assert p.rotation == pytest.approx(r, abs=0.15)
        assert abs(p.dy) < 0.6 and abs(p.dx) < 0.6


def test_degrees_of_freedom_switch_off(scene):
    motions = [(1.0, 0, 1 + 0.01 * (k - 1), 0) for k in range(3)]
    _, rep = register_stack(_moved(scene, motions), mode="similarity", scale=False, rotation=False, edges="edge")
    assert all(p.scale == 1.0 and p.rotation == 0.0 for p in rep.planes)


def test_affine_falls_back_or_fits(scene):
    motions = [(2.0 * (k - 1), -1.0 * (k - 1), 1 + 0.01 * (k - 1), 0.5 * (k - 1)) for k in range(3)]
    _, rep = register_stack(_moved(scene, motions, blur=False), mode="affine", edges="edge")
    for p, (dy, dx, s, _r) in zip(rep.planes, motions):
        assert p.scale == pytest.approx(s, abs=0.005)
        assert p.dy == pytest.approx(dy, abs=0.6) and p.dx == pytest.approx(dx, abs=0.6)


def test_every_channel_moved_alike_and_edges_policy(scene):
    motions = [(3.0, -2.0, 1, 0), (0, 0, 1, 0), (-3.0, 2.0, 1, 0)]
    grey = _moved(scene, motions)
    rgb = np.clip(np.stack([grey, grey * 0.5, grey * 0.25], axis=-1), 0, 255).astype(np.uint8)
    cropped, rep = register_stack(api.as_stack(rgb, axes="ZYXC"), mode="translation")
    y0, y1, x0, x1 = rep.crop_box
    assert cropped.data.shape == (3, y1 - y0, x1 - x0, 3) and cropped.data.dtype == np.uint8
    assert 250 - 7 <= y1 - y0 < 256 and 250 - 5 <= x1 - x0 < 256
    d = cropped.data.astype(np.float32)
    # the same transform on every channel: the channel ratios survive resampling
    np.testing.assert_allclose(d[..., 1], d[..., 0] * 0.5, atol=1.0)
    padded, rep2 = register_stack(api.as_stack(rgb, axes="ZYXC"), mode="translation", edges="zero")
    assert padded.data.shape == rgb.shape and rep2.crop_box is None
    # plane 0 shows the scene 3 rows down, 2 columns left: aligned, its bottom rows and left columns are new
    assert (padded.data[0, -2:] == 0).all() and (padded.data[0, :, :1] == 0).all()
    edge, _ = register_stack(api.as_stack(rgb, axes="ZYXC"), mode="translation", edges="edge")
    assert edge.data.shape == rgb.shape and (edge.data[0, 0] > 0).any()


def test_time_points_registered_separately(scene):
    motions = [(2.0, 0, 1, 0), (0, 0, 1, 0), (-2.0, 0, 1, 0)]
    a = _moved(scene, motions)
    b = _moved(scene, [(m[0] * 2, m[1], 1, 0) for m in motions])
    reg, rep = register_stack(np.stack([a, b]), mode="translation", axes="TZYX", edges="edge")
    per_t = reg.metadata["registration_per_time"]
    assert per_t[0][0]["dy"] == pytest.approx(2.0, abs=0.15)
    assert per_t[1][0]["dy"] == pytest.approx(4.0, abs=0.15)


def test_fuse_with_registration_beats_without():
    """The shifted and scaled synthetic sample: fused closer to the truth after registration."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "bench_registration.py"
    spec = importlib.util.spec_from_file_location("bench_registration", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data, s = bench.shifted_sample(0.01, n_planes=6, size=192)

    def score(r):
        y0, y1, x0, x1 = (r.provenance.get("registration") or {}).get("crop_box") or (0, 192, 0, 192)
        m = 20
        aif = s.all_in_focus[y0:y1, x0:x1][m:-m, m:-m].astype(np.float64)
        f = np.asarray(r.fused, np.float64)[m:-m, m:-m]
        return 10 * np.log10(60000.0**2 / np.mean((f - aif) ** 2))

    plain = api.fuse(data)
    reg = api.fuse(data, register={"mode": "similarity"})
    rep = reg.provenance["registration"]
    assert rep["mode"] == "similarity" and len(rep["planes"]) == 6 and rep["crop_box"]
    assert score(reg) > score(plain) + 10


def test_register_option_errors():
    assert parse_register(None) is None and parse_register("none") is None
    assert parse_register("affine") == {"mode": "affine"}
    with pytest.raises(StackError, match="register='rigid'"):
        parse_register("rigid")
    with pytest.raises(StackError, match="unknown registration option"):
        parse_register({"mode": "translation", "shear": True})
    with pytest.raises(StackError, match="edges"):
        register_stack(np.zeros((3, 32, 32), np.float32), edges="wrap")
    with pytest.raises(StackError, match="reference plane 5"):
        register_stack(np.zeros((3, 32, 32), np.float32), reference=5)


def _real(path, factor):
    from skimage.transform import downscale_local_mean

    st = api.open_stack(path)
    a = np.asarray(st.data)
    a = np.stack([downscale_local_mean(p, (factor, factor, 1)) for p in a])
    return api.as_stack(np.clip(np.rint(a), 0, 255).astype(np.uint8), axes="ZYXC", rgb=True)


@pytest.mark.parametrize("name, factor", [("focus-stack_examples/depthmap", 4), ("cmcguinness_focusstack", 3)])
def test_real_stacks_better_aligned_and_smoother(shared_data, name, factor):
    """Unregistered real stacks: after similarity registration the neighbouring planes correlate
    better and the focus map is smoother where the selection is confident."""
    from napari_edof.core.quality import alignment, index_roughness

    stack = _real(shared_data / name, factor)
    reg, rep = register_stack(stack, mode="similarity")
    y0, y1, x0, x1 = rep.crop_box
    grey = lambda st: np.asarray(st.data, np.float32).mean(-1)  # noqa: E731
    before = alignment(grey(stack)[:, y0:y1, x0:x1])
    after = alignment(grey(reg))
    assert after > before + 0.05
    plain, aligned = api.fuse(stack), api.fuse(reg)
    crop = (slice(y0, y1), slice(x0, x1))
    r0 = index_roughness(plain.index[crop], plain.confidence[crop] > 0.7)
    r1 = index_roughness(aligned.index, aligned.confidence > 0.7)
    assert r1 < r0
    assert rep.max_residual < 1.5
    # and the fusion is sharper by the seed papers' edge-transfer measure: Q^AB/F (how much of the
    # planes' edge strength and orientation reaches the fused image, each run against its planes)
    from napari_edof.metrics.fusion import qabf

    q0 = qabf(grey(stack), np.asarray(plain.fused, np.float32).mean(-1), data_range=255.0)
    q1 = qabf(grey(reg), np.asarray(aligned.fused, np.float32).mean(-1), data_range=255.0)
    assert q1 > q0 + 0.03


def test_cli_register(tmp_path, scene):
    import json

    import tifffile

    from napari_edof.cli import EXIT_INPUT, EXIT_OK, main

    motions = [(4.0, -2.0, 1, 0), (2.0, -1.0, 1, 0), (0, 0, 1, 0), (-2.0, 1.0, 1, 0)]
    src = tmp_path / "moved.tif"
    tifffile.imwrite(src, np.clip(_moved(scene, motions), 0, 255).astype(np.uint8), photometric="minisblack")
    out = tmp_path / "out"
    assert main(["fuse", str(src), "-o", str(out), "--register", "similarity", "--no-scale", "--no-rotation",
                 "--register-edges", "edge", "-q"]) == EXIT_OK
    prov = json.loads((out / "provenance.json").read_text())
    planes = prov["registration"]["planes"]
    assert planes[0]["dy"] == pytest.approx(4.0, abs=0.25) and planes[0]["scale"] == 1.0
    assert tifffile.imread(out / "fused.tif").shape == (256, 256)
    assert main(["fuse", str(src), "-o", str(out), "--register", "similarity", "--register-reference", "7",
                 "-q"]) == EXIT_INPUT


def test_register_on_every_fusion_path(scene):
    """Lazy results, streamed and cluster paths plan through plan_fusion, which registers too."""
    from napari_edof.core.engine import plan_fusion
    from napari_edof.core.stream import fuse_lazy

    motions = [(2.0, -1.0, 1, 0), (0, 0, 1, 0), (-2.0, 1.0, 1, 0)]
    data = np.clip(_moved(scene, motions), 0, 255).astype(np.uint8)
    pl = plan_fusion(data, register={"mode": "translation", "edges": "crop"})
    assert pl.stack.yx_shape[0] < 256 and "registration" in pl.stack.metadata
    lazy = fuse_lazy(data, register="translation")
    eager = api.fuse(data, register="translation")
    np.testing.assert_array_equal(np.asarray(lazy.index), eager.index)
    assert lazy.provenance["registration"]["planes"][0]["dy"] == pytest.approx(2.0, abs=0.2)


def test_shift_check_suggests_registration(tmp_path, scene, capsys):
    """Issue 16: a cheap check of three planes says when a stack looks shifted (CLI warning)."""
    import tifffile

    from napari_edof.cli import EXIT_OK, main
    from napari_edof.core.registration import planes_look_shifted

    motions = [(4.0, -2.0, 1, 0), (2.0, -1.0, 1, 0), (0, 0, 1, 0), (-2.0, 1.0, 1, 0), (-3.0, 2.0, 1, 0)]
    moved = _moved(scene, motions)
    shift = planes_look_shifted(moved)
    assert shift == pytest.approx(np.hypot(4.0, 2.0), abs=0.5)  # the first plane against the middle
    still = _moved(scene, [(0, 0, 1, 0)] * 5)
    assert planes_look_shifted(still) is None
    src = tmp_path / "moved.tif"
    tifffile.imwrite(src, np.clip(moved, 0, 255).astype(np.uint8), photometric="minisblack")
    assert main(["fuse", str(src), "-o", str(tmp_path / "a")]) == EXIT_OK
    err = capsys.readouterr().err
    assert "look shifted" in err and "--register translation" in err
    assert main(["fuse", str(src), "-o", str(tmp_path / "b"), "--register", "translation"]) == EXIT_OK
    assert "look shifted" not in capsys.readouterr().err


def test_registration_is_a_progress_stage(scene):
    """Issue 16: a registered run shows registration as a stage before the tiles."""
    from ..conftest import drain

    moved = _moved(scene, [(2.0, -1.0, 1, 0), (0, 0, 1, 0), (-2.0, 1.0, 1, 0)])
    steps, res = drain(api.fuse_iter(moved, register="translation", tile=128))
    stages = [s.stage for s in steps]
    assert stages[:2] == ["registration", "registration"] and steps[1].done == steps[1].total == 1
    assert stages[2:] and set(stages[2:]) <= {"fuse", "pass 1"}
    assert "registration" in res.provenance
    with pytest.raises(api.EdofError):  # bad options: refused before any progress
        next(api.fuse_iter(moved, register="translation", params={"nope": 1}))
