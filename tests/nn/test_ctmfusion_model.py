"""The CTMFusion network (seed paper 000): shapes, the cross-stream attention's query/key split,
the padding mask, CARAFE."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_edof.nn.ctmfusion import (  # noqa: E402
    CARAFE,
    CrossAxisAttention,
    CrossWindowAttention,
    CTMFusion,
    FusionModule,
    build,
    n_parameters,
    normalise,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small():
    torch.manual_seed(0)
    return CTMFusion(dims=(8, 16, 16), stages=2, window=4).eval()


@pytest.mark.parametrize("shape", [(64, 48), (50, 37), (16, 16), (9, 30)])
def test_decision_map_shape_and_range(shape):
    m = small()
    a, b = torch.rand(2, 1, *shape), torch.rand(2, 1, *shape)
    with torch.inference_mode():
        d = m.decision(a, b)
        fused, d2 = m.fuse(a, b)
    assert d.shape == (2, 1, *shape) and fused.shape == (2, 1, *shape)
    assert 0 <= float(d.min()) and float(d.max()) <= 1
    torch.testing.assert_close(d, d2)
    # the fused image is the decision map applied to the sources: between them pixel by pixel
    assert bool(((fused >= torch.minimum(a, b) - 1e-6) & (fused <= torch.maximum(a, b) + 1e-6)).all())


def test_default_network_is_the_cascade_of_the_paper_and_small():
    m = build()
    assert len(m.stages) == 3  # three cascaded encoder-decoder stages
    assert m.stem[0][0].stride == (2, 2) and m.stem[1][0].stride == (2, 2)  # stride-4 stem
    assert n_parameters(m) * 4 < 2_000_000  # shipped float32 weights under 2 MB


def test_batch_items_are_independent():
    m = small()
    a, b = torch.rand(3, 1, 32, 32), torch.rand(3, 1, 32, 32)
    with torch.inference_mode():
        whole = m(a, b)
        one = m(a[1:2], b[1:2])
    torch.testing.assert_close(whole[1:2], one, atol=1e-5, rtol=1e-5)


def _manual_attention(att: CrossWindowAttention, x, y):
    """softmax(q(x) k(y)^T / sqrt(d) + bias) v(y), projected: queries from x, keys/values from y."""
    n, L, C = x.shape
    h, d = att.heads, C // att.heads
    q = att.q(att.norm_q(x)).view(n, L, h, d).transpose(1, 2)
    kv = att.kv(att.norm_kv(y))
    k, v = kv[..., :C].view(n, L, h, d).transpose(1, 2), kv[..., C:].view(n, L, h, d).transpose(1, 2)
    logits = q @ k.transpose(-1, -2) / math.sqrt(d) + att.bias[:, att.rel_index][None]
    out = torch.softmax(logits, -1) @ v
    return att.proj(out.transpose(1, 2).reshape(n, L, C))


def test_window_attention_takes_queries_from_one_stream_and_keys_values_from_the_other():
    torch.manual_seed(1)
    att = CrossWindowAttention(8, heads=2, window=4)
    with torch.no_grad():
        att.bias.normal_()
    x, y = torch.randn(3, 16, 8), torch.randn(3, 16, 8)
    with torch.no_grad():
        got = att.attend(x, y)
        torch.testing.assert_close(got, _manual_attention(att, x, y), atol=1e-5, rtol=1e-4)
        # not the other way round (queries from y), and not self-attention
        assert (got - _manual_attention(att, y, x)).abs().max() > 1e-2
        assert (got - _manual_attention(att, x, x)).abs().max() > 1e-2


def test_cross_attention_mixes_the_streams_and_swapping_them_swaps_the_outputs():
    torch.manual_seed(2)
    att = CrossWindowAttention(8, heads=2, window=4)
    a, b, b2 = torch.randn(2, 8, 8, 12), torch.randn(2, 8, 8, 12), torch.randn(2, 8, 8, 12)
    with torch.no_grad():
        a1, b1 = att(a, b)
        b_s, a_s = att(b, a)
        a3, _ = att(a, b2)
    # the same weights both ways: swapping the inputs swaps the outputs exactly
    torch.testing.assert_close(a_s, a1)
    torch.testing.assert_close(b_s, b1)
    # stream a's output depends on stream b (crossed), and the residual keeps a's own content
    assert (a1 - a3).abs().max() > 1e-2
    assert a1.shape == a.shape and b1.shape == b.shape


def test_padded_keys_get_no_attention():
    """A 5 x 6 map in one 8 x 8 window: the result equals attention over the 30 real tokens."""
    torch.manual_seed(3)
    att = CrossWindowAttention(4, heads=1, window=8)  # relative bias starts at zero
    a, b = torch.randn(1, 4, 5, 6), torch.randn(1, 4, 5, 6)
    with torch.no_grad():
        a1, _ = att(a, b)
        ta, tb = a.flatten(2).transpose(1, 2), b.flatten(2).transpose(1, 2)  # (1, 30, 4)
        x = ta + att.proj(torch.softmax(
            att.q(att.norm_q(ta)) @ att.kv(att.norm_kv(tb))[..., :4].transpose(1, 2) / 2, -1)
            @ att.kv(att.norm_kv(tb))[..., 4:])
        x = x + att.mlp(att.norm_mlp(x))
    torch.testing.assert_close(a1, x.transpose(1, 2).reshape(1, 4, 5, 6), atol=1e-5, rtol=1e-4)


def test_hybrid_fusion_concatenates_shallow_and_takes_the_max_deep():
    torch.manual_seed(4)
    fm = FusionModule((4, 4, 4))
    assert len(fm.cat) == 2  # 1/4 and 1/8 by concatenation, 1/16 by max
    fa = [torch.randn(1, 4, 16 // s, 16 // s) for s in (1, 2, 4)]
    fb = [torch.randn(1, 4, 16 // s, 16 // s) for s in (1, 2, 4)]
    with torch.no_grad():
        # max is symmetric: swapping the deep features alone changes nothing
        y1 = fm(fa, fb)
        y2 = fm(fa[:2] + [fb[2]], fb[:2] + [fa[2]])
    torch.testing.assert_close(y1, y2)
    assert y1.shape == (1, 4, 16, 16)


def test_cross_axis_attention_shape_and_residual():
    ca = CrossAxisAttention(4)
    with torch.no_grad():
        ca.proj.weight.zero_()
        ca.proj.bias.zero_()
        x = torch.randn(2, 4, 6, 10)
        torch.testing.assert_close(ca(x), x)  # a zero projection leaves the residual alone


def test_carafe_upsamples_and_preserves_constants():
    torch.manual_seed(5)
    up = CARAFE(3)
    x = torch.randn(2, 3, 5, 7)
    with torch.no_grad():
        y = up(x)
        c = up(torch.full((1, 3, 4, 4), 0.7))
    assert y.shape == (2, 3, 10, 14)
    # the reassembly kernels are softmax-normalised: away from the zero-padded border a constant stays
    torch.testing.assert_close(c[..., 4:-4, 4:-4], torch.full_like(c[..., 4:-4, 4:-4], 0.7))


def test_carafe_cpu_reassembly_equals_the_einsum():
    """Inference on a CPU reassembles by shifted multiply-adds; training (grad enabled) keeps the
    einsum: the two agree to round-off, borders and batch items included."""
    torch.manual_seed(6)
    up = CARAFE(4)
    x = torch.randn(2, 4, 9, 11)
    with torch.inference_mode():
        fast = up(x)
    with torch.enable_grad():
        ref = up(x)
    assert ref.requires_grad and fast.shape == ref.shape == (2, 4, 18, 22)
    torch.testing.assert_close(fast, ref.detach(), rtol=1e-5, atol=1e-6)


def test_normalise_is_a_joint_robust_stretch():
    x = np.stack([np.linspace(10, 20, 100, dtype=np.float32).reshape(10, 10)] * 2)
    y = normalise(x)
    assert y.min() == 0 and y.max() == 1 and y.dtype == np.float32
    assert not normalise(np.full((2, 4, 4), 3.0, np.float32)).any()
