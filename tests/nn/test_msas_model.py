"""The MSAS network (seed paper 004): blocks, shapes, the decision map and its post-processing."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_edof.nn import msas as M  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return M.MSAS().eval()


def test_blocks_as_the_paper_describes(model):
    assert model.gcb.depth == 17  # GenClean: 17 conv layers
    convs = [m for m in model.gcb.body if isinstance(m, torch.nn.Conv2d)]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.gcb.body) == 16  # ReLU after all but the last
    assert [c.dilation[0] for c in model.up0[1].dil] == [1, 2, 4]  # DCA: dilated convs 1, 2, 4
    assert isinstance(model.encoder.l2[-1], M.DFEB) and isinstance(model.encoder.l2[-1].cga, M.CGA)
    assert isinstance(model.encoder.l0[-1], M.LAM) and isinstance(model.encoder.l1[-2], M.ResBlock)
    assert model.head.kernel_size == (3, 3) and model.head.out_channels == 1
    n = sum(p.numel() for p in model.parameters())
    assert n * 4 < 2 << 20  # small enough to ship (< 2 MB as float32)


def test_forward_shapes_and_range(model):
    a, b = torch.rand(3, 1, 32, 48), torch.rand(3, 1, 32, 48)
    with torch.inference_mode():
        d = model(a, b)
    assert d.shape == (3, 1, 32, 48)
    assert float(d.min()) >= 0 and float(d.max()) <= 1


def test_decide_any_size_and_batch_independence(model):
    a, b = torch.rand(2, 37, 29), torch.rand(2, 37, 29)
    d = model.decide(a, b)
    assert d.shape == (2, 37, 29)
    # eval mode: each batch item is decided on its own
    d0 = model.decide(a[:1], b[:1])
    torch.testing.assert_close(d[:1], d0, atol=1e-5, rtol=0)


def test_siamese_branches_share_weights(model):
    """One encoder serves both inputs: A's features do not depend on which slot B is in."""
    x = torch.rand(2, 1, 16, 16)
    with torch.inference_mode():
        f_a = model.encoder(model.gcb(x[:1]))[0]
        f_both = model.encoder(model.gcb(torch.cat([x[:1], x[1:]])))[0][:1]
    torch.testing.assert_close(f_a, f_both, atol=1e-5, rtol=0)


def test_cga_gives_a_map_per_channel():
    cga = M.CGA(8).eval()
    with torch.inference_mode():
        w = cga(torch.rand(2, 8, 12, 12))
    assert w.shape == (2, 8, 12, 12) and float(w.min()) >= 0 and float(w.max()) <= 1


def test_fuse_pair_binarises_at_half_and_filters_small_regions():
    H = W = 40
    a = np.full((H, W), 1.0, np.float32)
    c = np.full((H, W), 2.0, np.float32)
    d = np.zeros((H, W), np.float32)
    d[:, :20] = 0.9          # A in focus on the left
    d[:, 20:] = 0.2
    d[5:8, 25:28] = 0.7      # a 9 px island (< 1 % of 1600 = 16 px) of A inside C: flipped
    d[30:38, 25:33] = 0.6    # 64 px: kept
    d[10, 5] = 0.5           # exactly 0.5 is not > 0.5 (eq. 8), and 1 px: flipped back to A
    fused, D = M.fuse_pair(a, c, d)
    assert D.dtype == np.uint8
    assert (D[:, :20] == 1).all() and (D[5:8, 25:28] == 0).all() and (D[30:38, 25:33] == 1).all()
    assert np.array_equal(fused, np.where(D == 1, a, c))
    # without filtering the island stays
    _, B = M.fuse_pair(a, c, d, min_area=0)
    assert (B[5:8, 25:28] == 1).all() and B[10, 5] == 0
    # colour: the same map for every channel
    rgb_a, rgb_c = np.stack([a] * 3, -1), np.stack([c] * 3, -1)
    f3, _ = M.fuse_pair(rgb_a, rgb_c, d)
    assert f3.shape == (H, W, 3) and np.array_equal(f3[..., 1], fused)
