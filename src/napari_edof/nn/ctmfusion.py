"""CTMFusion: a two-stream cascaded encoder-decoder that outputs a decision map.

Written from the paper (Deng, Liu et al., MICCAI, "Endoscopic Depth-of-Field Expansion via Cascaded
Network with Two-streamed Multi-scale Fusion"); there is no official code or checkpoint, so the
widths and depths are ours (scaled down to train on a CPU; see ``weights/ctmfusion_ours.md``).

Data flow for a pair ``a`` (near focus), ``b`` (far focus), each (B, 1, H, W) luminance (the Y of
YCbCr) in [0, 1]; H and W are reflection-padded to multiples of 16 and the map cropped back:

1. a stride-4 stem (two stride-2 3x3 convs), shared by the two streams -> (B, C0, H/4, W/4).
   Beside Y the stem sees a fixed high-pass of it (``HIGHPASS_GAIN * (Y - box5(Y))``, no
   weights; ``highpass_gain=0`` feeds Y alone as the paper does): from Y alone both this network
   and a small plain CNN stayed at D = 0.5 for the 100-160 steps our CPU pilots ran (the blur
   difference between the inputs is a small high-frequency signal), with it they left that
   plateau within ~60 steps (weights/ctmfusion_ours.md);
2. ``stages`` cascaded encoder-decoder stages (3 by default). In each stage:

   - a SegNeXt-style encoder (MSCA blocks: depthwise 5x5 conv, multi-scale depthwise strip convs
     1x7/7x1, 1x11/11x1, 1x21/21x1, a 1x1 conv whose output multiplies the input as attention,
     then a conv feed-forward) at 1/4, 1/8 and 1/16, the two streams sharing weights;
   - cross-stream window attention at each scale (:class:`CrossWindowAttention`): the queries of
     one stream attend to the keys/values of the other inside non-overlapping windows, added
     back residually (the same weights both ways, so swapping the inputs swaps the outputs);
   - the hybrid fusion (:class:`FusionModule`): channel concatenation + 1x1 conv at the shallow
     scales (1/4, 1/8), element-wise max at the deepest (1/16), each followed by multi-scale
     cross-axis attention (:class:`CrossAxisAttention`, after MCANet); the three fused scales are
     brought to 1/4, concatenated and mixed by a depthwise + pointwise conv. The fused feature of
     the previous stage is added (fusion at every stage feeds the next);
   - a decoder per stream: a top-down path (1x1 channel reduction, upsample + add), a layer norm,
     and the stage's fused feature as guidance -> the next stage's input (1/4, C0 channels);

3. the last fused feature is upsampled x4 by two CARAFE x2 steps (:class:`CARAFE`), a 3x3 conv
   gives one logit per pixel, and ``sigmoid`` is the decision map ``D``: the probability that ``a``
   is the in-focus source. The fused image is ``D * a + (1 - D) * b`` (the method applies the map
   to the source planes' colour).

torch is imported by this module: import it lazily (only torch methods and training do).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: H and W are padded to multiples of this (the stem's 1/4 times two stride-2 encoder levels)
MULTIPLE = 16
#: the fixed high-pass channel's gain (see :func:`highpass`); 0 feeds Y alone, as the paper does
HIGHPASS_GAIN = 10.0
#: default widths at 1/4, 1/8, 1/16 (the paper's SegNeXt encoder is far wider; scaled for CPU)
DIMS = (16, 24, 32)


def _norm(c: int) -> nn.Module:
    """Layer norm over channels (GroupNorm with one group): no batch statistics, so a pair's map
    does not depend on what else is in the batch."""
    return nn.GroupNorm(1, c)


class ConvNormAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, act: bool = True):
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), _norm(cout)]
        if act:
            layers.append(nn.GELU())
        super().__init__(*layers)


class Stem(nn.Sequential):
    """Two stride-2 3x3 convs: (B, 1, H, W) -> (B, C0, H/4, W/4)."""

    def __init__(self, cin: int, c0: int):
        super().__init__(ConvNormAct(cin, c0 // 2, 3, 2), ConvNormAct(c0 // 2, c0, 3, 2))


def highpass(x, gain: float = HIGHPASS_GAIN, size: int = 5):
    """``gain * (x - box_size(x))`` (replicated borders): the fixed detail channel beside Y."""
    r = size // 2
    return gain * (x - F.avg_pool2d(F.pad(x, (r, r, r, r), mode="replicate"), size, stride=1))


# --------------------------------------------------------------------------------------------
# SegNeXt encoder
# --------------------------------------------------------------------------------------------
class MSCA(nn.Module):
    """SegNeXt's multi-scale convolutional attention: depthwise 5x5, then strip convs
    (1xk, kx1 for k = 7, 11, 21) summed, a 1x1 conv, and the result multiplies the input."""

    def __init__(self, c: int, strips: tuple[int, ...] = (7, 11, 21)):
        super().__init__()
        self.conv0 = nn.Conv2d(c, c, 5, padding=2, groups=c)
        self.strips = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, c, (1, k), padding=(0, k // 2), groups=c),
                          nn.Conv2d(c, c, (k, 1), padding=(k // 2, 0), groups=c))
            for k in strips)
        self.mix = nn.Conv2d(c, c, 1)

    def forward(self, x):
        a = self.conv0(x)
        s = a
        for strip in self.strips:
            s = s + strip(a)
        return self.mix(s) * x


class MSCABlock(nn.Module):
    """x + attention(norm(x)) (1x1, GELU, MSCA, 1x1), then x + FFN(norm(x)) (1x1 expand,
    depthwise 3x3, GELU, 1x1)."""

    def __init__(self, c: int, expand: int = 2):
        super().__init__()
        self.norm1 = _norm(c)
        self.proj1 = nn.Conv2d(c, c, 1)
        self.msca = MSCA(c)
        self.proj2 = nn.Conv2d(c, c, 1)
        self.norm2 = _norm(c)
        h = c * expand
        self.ffn = nn.Sequential(nn.Conv2d(c, h, 1), nn.Conv2d(h, h, 3, padding=1, groups=h), nn.GELU(),
                                 nn.Conv2d(h, c, 1))

    def forward(self, x):
        x = x + self.proj2(self.msca(F.gelu(self.proj1(self.norm1(x)))))
        return x + self.ffn(self.norm2(x))


# --------------------------------------------------------------------------------------------
# cross-stream window attention
# --------------------------------------------------------------------------------------------
def _windows(x, w: int):
    """(B, C, H, W) with H, W multiples of w -> (B * nWin, w * w, C)."""
    B, C, H, W = x.shape
    x = x.view(B, C, H // w, w, W // w, w).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(-1, w * w, C)


def _unwindows(t, B: int, H: int, W: int, w: int):
    C = t.shape[-1]
    x = t.view(B, H // w, W // w, w, w, C).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(B, C, H, W)


class CrossWindowAttention(nn.Module):
    """Swin-style window attention across the two streams (the paper's Cross SwinTransformer).

    ``forward(a, b)`` returns ``(a + attn(q=a, kv=b), b + attn(q=b, kv=a))`` (each followed by a
    small residual MLP); windows of ``window`` x ``window`` tokens, multi-head, with a learned
    relative position bias. Inputs whose sides are not multiples of ``window`` are zero-padded and
    the padded keys masked out.
    """

    def __init__(self, c: int, heads: int = 2, window: int = 8):
        super().__init__()
        self.c, self.heads, self.window = c, heads, window
        self.norm_q = nn.LayerNorm(c)
        self.norm_kv = nn.LayerNorm(c)
        self.q = nn.Linear(c, c)
        self.kv = nn.Linear(c, 2 * c)
        self.proj = nn.Linear(c, c)
        self.norm_mlp = nn.LayerNorm(c)
        self.mlp = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))
        w = window
        self.bias = nn.Parameter(torch.zeros(heads, (2 * w - 1) * (2 * w - 1)))
        coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (w - 1)
        self.register_buffer("rel_index", rel[..., 0] * (2 * w - 1) + rel[..., 1], persistent=False)

    def attend(self, q_tokens, kv_tokens, key_mask=None):
        """Queries from ``q_tokens``, keys and values from ``kv_tokens``: (n, L, C) each."""
        n, L, C = q_tokens.shape
        h = self.heads
        q = self.q(self.norm_q(q_tokens)).view(n, L, h, C // h).transpose(1, 2)
        k, v = self.kv(self.norm_kv(kv_tokens)).view(n, L, 2, h, C // h).permute(2, 0, 3, 1, 4)
        bias = self.bias[:, self.rel_index].unsqueeze(0)  # (1, h, L, L)
        if key_mask is not None:  # (n, L) True where the key is padding
            bias = bias + key_mask[:, None, None, :].to(q.dtype) * -1e4
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(n, L, C))

    def _one_way(self, x, y, mask):
        B, C, H, W = x.shape
        w = self.window
        tx, ty = _windows(x, w), _windows(y, w)
        tx = tx + self.attend(tx, ty, mask)
        tx = tx + self.mlp(self.norm_mlp(tx))
        return _unwindows(tx, B, H, W, w)

    def forward(self, a, b):
        B, C, H, W = a.shape
        w = self.window
        ph, pw = (-H) % w, (-W) % w
        mask = None
        if ph or pw:
            a = F.pad(a, (0, pw, 0, ph))
            b = F.pad(b, (0, pw, 0, ph))
            m = torch.zeros(1, 1, H + ph, W + pw, device=a.device)
            m[..., H:, :] = 1
            m[..., :, W:] = 1
            mask = _windows(m.expand(B, 1, -1, -1), w)[..., 0] > 0.5
        a2 = self._one_way(a, b, mask)
        b2 = self._one_way(b, a, mask)
        return a2[..., :H, :W], b2[..., :H, :W]


# --------------------------------------------------------------------------------------------
# hybrid fusion with multi-scale cross-axis attention
# --------------------------------------------------------------------------------------------
def _axial(q, k, v, dim: int):
    """Single-head attention along H (``dim=2``) or W (``dim=3``) of (B, C, H, W) tensors."""
    B, C, H, W = q.shape
    if dim == 2:  # sequences are columns
        perm, L, n = (0, 3, 2, 1), H, B * W
    else:  # rows
        perm, L, n = (0, 2, 3, 1), W, B * H
    qs, ks, vs = (t.permute(*perm).reshape(n, L, C) for t in (q, k, v))
    out = F.scaled_dot_product_attention(qs, ks, vs)
    if dim == 2:
        return out.view(B, W, H, C).permute(0, 3, 2, 1)
    return out.view(B, H, W, C).permute(0, 3, 1, 2)


class CrossAxisAttention(nn.Module):
    """Multi-scale cross-axis attention (after MCANet): horizontal strip convs (1xk) and vertical
    ones (kx1), k = 7, 11, 21, summed per axis; attention along H with queries from the
    horizontal branch and keys/values from the vertical one, and along W the other way round;
    the two are summed, projected and added to the input."""

    def __init__(self, c: int, strips: tuple[int, ...] = (7, 11, 21)):
        super().__init__()
        self.norm = _norm(c)
        self.hor = nn.ModuleList(nn.Conv2d(c, c, (1, k), padding=(0, k // 2), groups=c) for k in strips)
        self.ver = nn.ModuleList(nn.Conv2d(c, c, (k, 1), padding=(k // 2, 0), groups=c) for k in strips)
        self.qkv_h = nn.Conv2d(c, 3 * c, 1)
        self.qkv_v = nn.Conv2d(c, 3 * c, 1)
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, x):
        y = self.norm(x)
        fh = sum(conv(y) for conv in self.hor)
        fv = sum(conv(y) for conv in self.ver)
        qh, kh, vh = self.qkv_h(fh).chunk(3, dim=1)
        qv, kv, vv = self.qkv_v(fv).chunk(3, dim=1)
        out = _axial(qh, kv, vv, dim=2) + _axial(qv, kh, vh, dim=3)
        return x + self.proj(out)


class FusionModule(nn.Module):
    """The hybrid fusion of one stage: per scale, concatenation + 1x1 (shallow scales) or
    element-wise max (the ``deep`` deepest ones), then cross-axis attention; the scales are
    brought to 1/4, concatenated, and mixed by a depthwise + pointwise conv -> (B, C0, H/4, W/4)."""

    def __init__(self, dims: tuple[int, ...], deep: int = 1):
        super().__init__()
        self.n_cat = len(dims) - deep
        self.cat = nn.ModuleList(nn.Conv2d(2 * c, c, 1) for c in dims[: self.n_cat])
        self.mca = nn.ModuleList(CrossAxisAttention(c) for c in dims)
        s = sum(dims)
        self.dw = nn.Conv2d(s, s, 3, padding=1, groups=s)
        self.pw = ConvNormAct(s, dims[0], 1)

    def forward(self, fa: list, fb: list):
        size = fa[0].shape[-2:]
        outs = []
        for i, (a, b) in enumerate(zip(fa, fb)):
            f = self.cat[i](torch.cat((a, b), dim=1)) if i < self.n_cat else torch.maximum(a, b)
            f = self.mca[i](f)
            if i:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            outs.append(f)
        return self.pw(self.dw(torch.cat(outs, dim=1)))


# --------------------------------------------------------------------------------------------
# one cascade stage
# --------------------------------------------------------------------------------------------
class Decoder(nn.Module):
    """Top-down path: 1x1 channel reduction of every scale to C0, upsample + add from the deepest,
    a layer norm, then the stage's fused feature as guidance (1x1 conv, added)."""

    def __init__(self, dims: tuple[int, ...]):
        super().__init__()
        c0 = dims[0]
        self.reduce = nn.ModuleList(nn.Conv2d(c, c0, 1) for c in dims)
        self.norm = _norm(c0)
        self.guide = nn.Conv2d(c0, c0, 1)
        self.out = nn.Conv2d(c0, c0, 3, padding=1)

    def forward(self, feats: list, fused):
        x = self.reduce[-1](feats[-1])
        for i in range(len(feats) - 2, -1, -1):
            f = self.reduce[i](feats[i])
            x = f + F.interpolate(x, size=f.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(F.gelu(self.norm(x) + self.guide(fused)))


class Stage(nn.Module):
    """Encoder (shared by the streams) + cross-stream attention at each scale + fusion + decoders."""

    def __init__(self, dims: tuple[int, ...], heads: tuple[int, ...], window: int):
        super().__init__()
        self.blocks = nn.ModuleList(MSCABlock(c) for c in dims)
        self.down = nn.ModuleList(ConvNormAct(dims[i], dims[i + 1], 3, 2) for i in range(len(dims) - 1))
        self.cross = nn.ModuleList(CrossWindowAttention(c, h, window) for c, h in zip(dims, heads))
        self.fusion = FusionModule(dims)
        self.decoder = Decoder(dims)

    def forward(self, a, b, prev_fused=None):
        fa, fb = [], []
        for i, (block, cross) in enumerate(zip(self.blocks, self.cross)):
            if i:
                a, b = self.down[i - 1](a), self.down[i - 1](b)
            a, b = block(a), block(b)
            a, b = cross(a, b)
            fa.append(a)
            fb.append(b)
        fused = self.fusion(fa, fb)
        if prev_fused is not None:
            fused = fused + prev_fused
        return self.decoder(fa, fused), self.decoder(fb, fused), fused


# --------------------------------------------------------------------------------------------
# CARAFE upsampling and the network
# --------------------------------------------------------------------------------------------
class CARAFE(nn.Module):
    """Content-aware reassembly of features (Wang et al., ICCV 2019), x``scale``: a kernel
    predictor (1x1 compression, ``k_enc`` conv, pixel shuffle, softmax over ``k_up``^2) and the
    reassembly of each output pixel from the ``k_up`` x ``k_up`` neighbourhood of its source."""

    def __init__(self, c: int, scale: int = 2, k_up: int = 5, k_enc: int = 3, c_mid: int = 16):
        super().__init__()
        self.scale, self.k_up = scale, k_up
        self.comp = nn.Conv2d(c, c_mid, 1)
        self.enc = nn.Conv2d(c_mid, scale * scale * k_up * k_up, k_enc, padding=k_enc // 2)

    def forward(self, x):
        B, C, H, W = x.shape
        s, k = self.scale, self.k_up
        kernels = F.pixel_shuffle(self.enc(self.comp(x)), s)  # (B, k*k, sH, sW)
        kernels = torch.softmax(kernels, dim=1).view(B, k * k, H, s, W, s)
        if x.device.type == "cpu" and not torch.is_grad_enabled():
            return self._reassemble_cpu(x, kernels)
        patches = F.unfold(x, k, padding=k // 2).view(B, C, k * k, H, W)
        # output pixel (h*s + i, w*s + j) reassembles the k x k neighbourhood of source pixel (h, w)
        out = torch.einsum("bckhw,bkhiwj->bchiwj", patches, kernels)
        return out.reshape(B, C, s * H, s * W)

    def _reassemble_cpu(self, x, kernels):
        """The reassembly as ``k_up``^2 shifted multiply-adds (inference on a CPU). The same sum
        as the einsum above, which on a CPU becomes one tiny matrix product per source pixel
        (half the network's time at 576 px, and thousands of barriers with intra-op threads)."""
        B, C, H, W = x.shape
        s, k, r = self.scale, self.k_up, self.k_up // 2
        xp = F.pad(x, (r, r, r, r))  # zeros, as unfold's padding
        # (B, s, s, k*k, 1, H, W): every operand's last axis contiguous
        kern = kernels.permute(0, 3, 5, 1, 2, 4).contiguous().unsqueeze(4)
        out = torch.zeros((B, s, s, C, H, W), dtype=torch.result_type(x, kernels), device=x.device)
        for dy in range(k):
            for dx in range(k):
                out.addcmul_(xp[:, None, None, :, dy : dy + H, dx : dx + W], kern[:, :, :, dy * k + dx])
        return out.permute(0, 3, 4, 1, 5, 2).reshape(B, C, s * H, s * W)


class CTMFusion(nn.Module):
    """The two-stream cascaded decision-map network (see the module docstring).

    ``forward(a, b)``: (B, 1, H, W) each -> decision logits (B, 1, H, W) (any H, W: padded to
    multiples of 16 inside); :meth:`decision` applies the sigmoid; :meth:`fuse` returns the
    fused image and the map.
    """

    def __init__(self, dims: tuple[int, ...] = DIMS, stages: int = 3, window: int = 8,
                 heads: tuple[int, ...] | None = None, in_ch: int = 1, highpass_gain: float = HIGHPASS_GAIN):
        super().__init__()
        dims = tuple(int(c) for c in dims)
        heads = tuple(heads) if heads else tuple(max(1, c // 16) for c in dims)
        self.dims, self.n_stages = dims, stages
        self.highpass_gain = float(highpass_gain)
        self.stem = Stem(in_ch * (2 if self.highpass_gain else 1), dims[0])
        self.stages = nn.ModuleList(Stage(dims, heads, window) for _ in range(stages))
        c0 = dims[0]
        self.up1 = CARAFE(c0)
        self.conv1 = ConvNormAct(c0, c0, 3)
        self.up2 = CARAFE(c0)
        self.head = nn.Conv2d(c0, 1, 3, padding=1)

    def forward(self, a, b):
        H, W = a.shape[-2:]
        ph, pw = (-H) % MULTIPLE, (-W) % MULTIPLE
        if ph or pw:
            mode = "reflect" if ph < H and pw < W else "replicate"
            a = F.pad(a, (0, pw, 0, ph), mode=mode)
            b = F.pad(b, (0, pw, 0, ph), mode=mode)
        if self.highpass_gain:  # Y and its fixed high-pass detail channel
            a = torch.cat((a, highpass(a, self.highpass_gain)), dim=1)
            b = torch.cat((b, highpass(b, self.highpass_gain)), dim=1)
        xa, xb = self.stem(a), self.stem(b)
        fused = None
        for stage in self.stages:
            xa, xb, fused = stage(xa, xb, fused)
        y = self.up2(self.conv1(self.up1(fused)))
        return self.head(y)[..., :H, :W]

    def decision(self, a, b):
        """The decision map: P(``a`` is the in-focus source), (B, 1, H, W) in [0, 1]."""
        return torch.sigmoid(self(a, b))

    def fuse(self, a, b):
        """(fused image ``D a + (1 - D) b``, decision map ``D``)."""
        d = self.decision(a, b)
        return d * a + (1 - d) * b, d


def normalise(planes: np.ndarray, q: float = 0.0005) -> np.ndarray:
    """Robust joint contrast stretch of (N, H, W) planes to [0, 1] (quantiles q, 1 - q of all the
    planes together; a flat input gives zeros): the method's input scaling, also used in training."""
    from ..core.scaling import to_unit

    return to_unit(np.asarray(planes, np.float32), mode="range", q=(q, 1 - q))


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(config: dict | None = None) -> CTMFusion:
    """A network from a saved config ({"dims", "stages", "window", "highpass_gain"}), defaults otherwise."""
    config = dict(config or {})
    return CTMFusion(dims=tuple(config.get("dims", DIMS)), stages=int(config.get("stages", 3)),
                     window=int(config.get("window", 8)),
                     highpass_gain=float(config.get("highpass_gain", HIGHPASS_GAIN)))


__all__ = ["CTMFusion", "CrossWindowAttention", "CrossAxisAttention", "CARAFE", "FusionModule", "MULTIPLE",
           "DIMS", "build", "n_parameters", "normalise"]
