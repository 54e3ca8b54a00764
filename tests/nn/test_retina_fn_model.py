"""The FMB + FN network (seed paper 001): the SML focus measure by hand, the 6-channel FMB,
plane-order invariance of the max-selection, any N, and the receptive radius the halo relies on."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from napari_edof.nn import retina_fn as rf  # noqa: E402


def _dot(value: float, size: int = 9) -> torch.Tensor:
    """A (1, 1, size, size) image in [0, 1]: zeros with one pixel of ``value`` (0..255 units) at the centre."""
    x = torch.zeros(1, 1, size, size, dtype=torch.float64)
    x[0, 0, size // 2, size // 2] = value / 255.0
    return x


def test_modified_laplacian_by_hand():
    c = 4
    ml = rf.modified_laplacian(_dot(10) * 255)[0, 0]
    # centre: |2*10 - 0 - 0| + |2*10 - 0 - 0| = 40; 4-neighbours: |0 - 10 - 0| + 0 = 10; diagonals 0
    assert ml[c, c] == pytest.approx(40)
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        assert ml[c + dy, c + dx] == pytest.approx(10)
    assert ml[c + 1, c + 1] == 0 and ml.sum() == pytest.approx(80)
    # step 2: the neighbours two pixels away see the dot, the adjacent ones do not
    ml2 = rf.modified_laplacian(_dot(10) * 255, step=2)[0, 0]
    assert ml2[c, c] == pytest.approx(40) and ml2[c, c + 2] == pytest.approx(10) and ml2[c, c + 1] == 0


def test_sml_window_and_threshold_by_hand():
    c = 4
    s = rf.sml(_dot(10))[0, 0]  # the paper's settings: step 1, 3x3 window, T = 7
    assert s[c, c] == pytest.approx(40 + 4 * 10)         # the centre and its four neighbours
    assert s[c, c + 1] == pytest.approx(40 + 3 * 10)     # centre, itself, the two neighbours beside it
    assert s[c + 1, c + 1] == pytest.approx(40 + 2 * 10)  # diagonal: the centre and two neighbours
    assert s[c, c + 3] == 0                               # outside every window
    # T = 11 drops the neighbours' 10s: only the centre's 40 is summed
    s11 = rf.sml(_dot(10), threshold=11)[0, 0]
    assert s11[c, c] == pytest.approx(40) and s11[c, c + 1] == pytest.approx(40) and s11.sum() == pytest.approx(9 * 40)
    # a faint dot (3): centre 12 >= 7 is kept, the neighbours' 3 < 7 are not
    s3 = rf.sml(_dot(3))[0, 0]
    assert s3[c, c] == pytest.approx(12) and s3.sum() == pytest.approx(9 * 12)
    # window 0: no summation
    assert rf.sml(_dot(10), window=0)[0, 0][c, c] == pytest.approx(40)


def test_fmb_gives_six_channels_per_plane():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 3, 16, 20)
    f = rf.FocusMeasureBlock()(x)
    assert f.shape == (2, 3, 6, 16, 20)
    assert torch.equal(f[:, :, :3], x)
    want = rf.sml(x.reshape(6, 3, 16, 20)).reshape(2, 3, 3, 16, 20) / rf.FM_SCALE
    torch.testing.assert_close(f[:, :, 3:], want)
    # per channel: a dot in the red channel only shows in the red focus measure
    x = torch.zeros(1, 1, 3, 9, 9)
    x[0, 0, 0, 4, 4] = 10 / 255
    f = rf.FocusMeasureBlock()(x)[0, 0]
    assert f[3, 4, 4] * rf.FM_SCALE == pytest.approx(80, rel=1e-5) and f[4:].abs().max() == 0


@pytest.fixture(scope="module", params=[False, True], ids=["paper", "skip"])
def net(request):
    """The paper's FN and ours with the selection skip (random weights)."""
    torch.manual_seed(1)
    return rf.FusionNet(width=8, skip=request.param).eval()


def test_plane_order_does_not_matter(net):
    torch.manual_seed(2)
    x = torch.rand(1, 5, 3, 24, 28)
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        y, idx = net(x, return_index=True)
        yp, idxp = net(x[:, perm], return_index=True)
    assert torch.equal(y, yp)  # exact: the max over planes does not depend on their order
    # the provenance names the same source planes wherever the max is not a tie (ReLU zeros tie)
    with torch.no_grad():
        top2 = net.plane_features(x).topk(2, dim=1).values
    unique = top2[:, 0] > top2[:, 1]
    assert unique.float().mean() > 0.2  # random weights: many channels are ReLU zeros everywhere
    assert torch.equal(perm[idxp][unique], idx[unique])
    assert torch.equal(idx[~unique], torch.minimum(idx, perm[idxp])[~unique])  # ties: the first plane
    if net.skip:  # the selection head picks the same source plane
        with torch.no_grad():
            assert torch.equal(perm[net.selection(x[:, perm])], net.selection(x))
    # with gradients on (training), the straight-through term adds exactly zero
    y_grad = net(x[:, perm])
    assert torch.equal(y_grad.detach(), y)


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_any_number_of_planes(net, n):
    torch.manual_seed(n)
    x = torch.rand(2, n, 3, 20, 18)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, 3, 20, 18) and torch.isfinite(y).all()
    y2, idx, sel, prob = net.infer(x, chunk=2)  # planes in chunks, max-reduced as they come
    torch.testing.assert_close(y2, y)
    assert idx.shape == (2, 8, 20, 18) and 0 <= idx.min() and idx.max() < n
    if net.skip:
        with torch.no_grad():
            assert torch.equal(sel, net.selection(x))
            s = net._scores(net._pre(x), x.shape)
        torch.testing.assert_close(prob, torch.softmax(s, dim=1).amax(dim=1))
    else:
        assert sel is None and prob is None


def test_receptive_radius_bounds_the_influence(net):
    r = net.receptive_radius
    assert r == 2 + 2 + 2 * 9 + 1 == 23
    torch.manual_seed(3)
    x = torch.rand(1, 2, 3, 64, 64)
    x2 = x.clone()
    x2[0, 1, :, 32, 32] += 0.5
    with torch.no_grad():
        d = (net(x2) - net(x)).abs().amax(dim=(0, 1))
    ys, xs = torch.nonzero(d > 0, as_tuple=True)
    assert len(ys) and (ys - 32).abs().max() <= r and (xs - 32).abs().max() <= r


def test_shipped_network_constants_match():
    from napari_edof.methods import retina_fn as m

    assert rf.FusionNet(width=m.WIDTH).receptive_radius == m.RADIUS
