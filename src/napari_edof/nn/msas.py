"""MSAS: multi-focus fusion with multi-scale attention and Siamese networks.

Written from the paper's text (its Fig. 1 gives the layout; exact widths, depths and the
local attention module's internals are not in the text, so they are our reading, scaled down to
train on CPU; see ``weights/msas_ours.md``). For a pair (A, C) of guide images in [0, 1]:

1. **GCB** (GenClean block, DnCNN-style): 17 3x3 conv layers with ReLU (BatchNorm in the middle
   ones, as DnCNN), the last back to the input channels; it predicts the noise, and the clean
   image is ``x - noise``. Shared by both inputs.
2. **Siamese encoder** (shared weights for A and C): Conv-BN-ReLU (CBR) units, each level a
   residual block followed by the **LAM** (local attention module: a per-pixel, per-channel
   gate ``sigmoid(conv3x3(relu(conv1x1(x))))``, residual), 2x max-pooling between levels; the
   deepest level ends in the **DFEB** (deep feature extraction block, after DEA-Net's DEAB):
   a feature extraction block (two convs, residual), a conv with residual, then **CGA**
   (content-guided attention: ``W_c`` from global average pooling and two 1x1 convs, ``W_s``
   from a 7x7 conv on the channel mean/max, coarse SIM ``W_c + W_s``, channel shuffle of
   ``[X, W_coa]``, a 7x7 group conv with C groups, sigmoid) multiplying the features, residual
   to the block's input.
3. **Reconstruction**: at every scale the two streams' features are concatenated; from the
   deepest up, each stage upsamples (bilinear), concatenates the skip, convolves and applies
   the **DCA** (dilated convolution attention: three 3x3 convs with dilation 1, 2, 4 (summed),
   ReLU, CBAM channel attention (shared MLP on global average and max pooling, eq. 1-2) and
   spatial attention (7x7 conv on channel mean/max, eq. 3-4); the input is concatenated back
   (residual) and reduced by a 1x1 conv).
4. **Decision**: a 3x3 conv and a sigmoid give the decision map ``d`` (probability that A is the
   in-focus one); binarisation at 0.5, small-area filtering and ``F = A D + C (1 - D)`` are in
   :func:`fuse_pair` (post-processing, numpy).

The channel and CBAM attentions pool over the whole input, so the network is not exactly local:
tiles need context (the method reads a halo and overlaps tiles).

torch is imported by this module: import it lazily (only the MSAS method and training do).
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: H and W must be multiples of this (two 2x poolings); inputs are reflection-padded
MULTIPLE = 4


def cbr(cin: int, cout: int, k: int = 3, dilation: int = 1) -> nn.Sequential:
    """Conv-BatchNorm-ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class GenClean(nn.Module):
    """GCB: DnCNN with ``depth`` 3x3 conv layers (ReLU after all but the last), residual noise."""

    def __init__(self, channels: int = 1, width: int = 8, depth: int = 17):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.body = nn.Sequential(*layers)

    @property
    def depth(self) -> int:
        return sum(isinstance(m, nn.Conv2d) for m in self.body)

    def forward(self, x):
        return x - self.body(x)


class LAM(nn.Module):
    """Local attention module: a per-pixel, per-channel gate from the local neighbourhood."""

    def __init__(self, c: int, reduction: int = 4):
        super().__init__()
        m = max(4, c // reduction)
        self.gate = nn.Sequential(nn.Conv2d(c, m, 1), nn.ReLU(inplace=True), nn.Conv2d(m, c, 3, padding=1))

    def forward(self, x):
        return x + x * torch.sigmoid(self.gate(x))


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                                  nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return F.relu(x + self.body(x))


def channel_shuffle(x, groups: int):
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class CGA(nn.Module):
    """Content-guided attention (DEA-Net): channel-specific spatial importance maps, eq. 5-7."""

    def __init__(self, c: int, hidden: int = 16):
        super().__init__()
        self.wc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, hidden, 1), nn.ReLU(inplace=True),
                                nn.Conv2d(hidden, c, 1))
        self.ws = nn.Conv2d(2, 1, 7, padding=3, padding_mode="reflect")
        self.gc = nn.Conv2d(2 * c, c, 7, padding=3, padding_mode="reflect", groups=c)

    def forward(self, x):
        s = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        coarse = self.wc(x) + self.ws(s)  # broadcast (B, C, 1, 1) + (B, 1, H, W)
        # [X, W_coa] interleaved channel by channel (the shuffle), one group per channel pair
        z = channel_shuffle(torch.cat([x, coarse], dim=1), 2)
        return torch.sigmoid(self.gc(z))


class DFEB(nn.Module):
    """Deep feature extraction block: FEB (two convs, residual), conv (residual), CGA, residual."""

    def __init__(self, c: int):
        super().__init__()
        self.feb = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(c, c, 3, padding=1))
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.cga = CGA(c)
        self.out = nn.Conv2d(c, c, 1)

    def forward(self, x):
        y = F.relu(x + self.feb(x))
        y = y + self.conv(y)
        y = y * self.cga(y)
        return x + self.out(y)


class DCA(nn.Module):
    """Dilated convolution attention: dilations 1, 2, 4, CBAM channel then spatial attention,
    the input concatenated back and reduced by a 1x1 conv."""

    def __init__(self, c: int, reduction: int = 4):
        super().__init__()
        self.dil = nn.ModuleList(nn.Conv2d(c, c, 3, padding=d, dilation=d) for d in (1, 2, 4))
        m = max(4, c // reduction)
        self.mlp = nn.Sequential(nn.Conv2d(c, m, 1), nn.ReLU(inplace=True), nn.Conv2d(m, c, 1))
        self.spatial = nn.Conv2d(2, 1, 7, padding=3, padding_mode="reflect")
        self.reduce = nn.Sequential(nn.Conv2d(2 * c, c, 1), nn.ReLU(inplace=True))

    def forward(self, x):
        f = F.relu(sum(conv(x) for conv in self.dil))
        mc = torch.sigmoid(self.mlp(F.adaptive_avg_pool2d(f, 1)) + self.mlp(F.adaptive_max_pool2d(f, 1)))
        f = f * mc
        ms = torch.sigmoid(self.spatial(torch.cat([f.mean(dim=1, keepdim=True), f.amax(dim=1, keepdim=True)], 1)))
        f = f * ms
        return self.reduce(torch.cat([x, f], dim=1))


class Encoder(nn.Module):
    """One Siamese branch: three levels (full, 1/2, 1/4 resolution)."""

    def __init__(self, cin: int, widths: tuple[int, int, int]):
        super().__init__()
        w0, w1, w2 = widths
        self.l0 = nn.Sequential(cbr(cin, w0), ResBlock(w0), LAM(w0))
        self.l1 = nn.Sequential(nn.MaxPool2d(2), cbr(w0, w1), ResBlock(w1), LAM(w1))
        self.l2 = nn.Sequential(nn.MaxPool2d(2), cbr(w1, w2), DFEB(w2))

    def forward(self, x):
        f0 = self.l0(x)
        f1 = self.l1(f0)
        return f0, f1, self.l2(f1)


class MSAS(nn.Module):
    """The MSAS pair network: ``forward(a, b)`` -> decision map (B, 1, H, W) in [0, 1] (the
    probability that ``a`` is in focus). ``a`` and ``b`` are (B, C, H, W) with H, W multiples of
    :data:`MULTIPLE` (use :meth:`decide` for any size)."""

    def __init__(self, channels: int = 1, widths: tuple[int, int, int] = (16, 24, 32), gcb_width: int = 8,
                 gcb_depth: int = 17):
        super().__init__()
        self.config = {"channels": channels, "widths": tuple(widths), "gcb_width": gcb_width, "gcb_depth": gcb_depth}
        w0, w1, w2 = widths
        self.gcb = GenClean(channels, gcb_width, gcb_depth)
        self.encoder = Encoder(channels, widths)
        self.bottom = nn.Sequential(nn.Conv2d(2 * w2, w2, 1), nn.ReLU(inplace=True), DCA(w2))
        self.up1 = nn.Sequential(cbr(w2 + 2 * w1, w1), DCA(w1))
        self.up0 = nn.Sequential(cbr(w1 + 2 * w0, w0), DCA(w0))
        self.head = nn.Conv2d(w0, 1, 3, padding=1)

    def encode(self, x):
        """One Siamese branch (denoising block, then encoder) on (B, C, H, W) images: the features
        (f0, f1, f2) at full, 1/2 and 1/4 resolution. Each image is encoded on its own, so an image
        compared with many others (a stack's reference) need be encoded only once."""
        return self.encoder(self.gcb(x))

    def fuse_features(self, fa, fb):
        """Decision logits (B, 1, H, W) from the two branches' features."""
        def cat(i):
            return torch.cat([fa[i], fb[i].expand_as(fa[i])], dim=1)

        x = self.bottom(cat(2))
        x = F.interpolate(x, size=fa[1].shape[-2:], mode="bilinear", align_corners=False)
        x = self.up1(torch.cat([x, cat(1)], dim=1))
        x = F.interpolate(x, size=fa[0].shape[-2:], mode="bilinear", align_corners=False)
        x = self.up0(torch.cat([x, cat(0)], dim=1))
        return self.head(x)

    def logits(self, a, b):
        n = a.shape[0]
        f = self.encode(torch.cat([a, b], dim=0))  # both inputs through the shared blocks at once
        return self.fuse_features([t[:n] for t in f], [t[n:] for t in f])

    def forward(self, a, b):
        return torch.sigmoid(self.logits(a, b))

    @torch.inference_mode()
    def decide(self, a, b):
        """(B, H, W) or (B, C, H, W) tensors of any H, W -> (B, H, W) decision map (reflection
        padded to :data:`MULTIPLE`, cropped back)."""
        h, w = a.shape[-2:]
        return self.forward(_pad(a), _pad(b))[:, 0, :h, :w]

    @torch.inference_mode()
    def encode_padded(self, x):
        """:meth:`encode` of (B, H, W) or (B, C, H, W) images of any size (padded as :meth:`decide`)."""
        return self.encode(_pad(x))

    @torch.inference_mode()
    def decide_encoded(self, a, fb):
        """:meth:`decide` of ``a`` against an image already encoded by :meth:`encode_padded` (its
        features, batch 1 or B)."""
        h, w = a.shape[-2:]
        return torch.sigmoid(self.fuse_features(self.encode(_pad(a)), fb))[:, 0, :h, :w]


def cpu_inference_copy(model: MSAS) -> MSAS:
    """A copy of ``model`` for inference on a CPU: every BatchNorm folded into the conv before it
    (eval mode: a per-channel scale and shift of that conv's output, now in its weights) and the
    weights in channels_last (feed it channels_last inputs). The same function to round-off; the
    CPU route of the method checks that the focus index is the same (tests/methods/test_msas.py).
    """
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def fold(mod):
        for child in mod.children():
            if isinstance(child, nn.Sequential):
                for i in range(len(child) - 1):
                    if isinstance(child[i], nn.Conv2d) and isinstance(child[i + 1], nn.BatchNorm2d):
                        child[i] = fuse_conv_bn_eval(child[i], child[i + 1])
                        child[i + 1] = nn.Identity()
            fold(child)

    m = copy.deepcopy(model).eval()
    fold(m)
    m = m.to(memory_format=torch.channels_last)
    for mod in m.modules():
        if isinstance(mod, CGA):
            mod.forward = _CGASplit(mod).forward
        elif isinstance(mod, DCA):
            mod.forward = _DCASplit(mod).forward
        elif isinstance(mod, ResBlock):
            mod.forward = functools.partial(_resblock_inplace, mod)
        elif isinstance(mod, LAM):
            mod.forward = functools.partial(_lam_inplace, mod)
    return m


def _resblock_inplace(block: ResBlock, x):
    """``relu(x + body(x))`` of :class:`ResBlock` into body's output (the same values)."""
    y = block.body(x)
    y += x
    return F.relu_(y)


def _lam_inplace(lam: LAM, x):
    """``x + x * sigmoid(gate(x))`` of :class:`LAM` into the gate's output (the same values)."""
    g = torch.sigmoid_(lam.gate(x))
    g *= x
    g += x
    return g


class _DCASplit:
    """:class:`DCA` with fewer passes over full-resolution features: the dilated convs summed in
    place (the same sums in the same order), the attention maps applied in place, and the final
    1x1 conv of ``[x, f]`` split into a conv of ``x`` plus one of ``f`` (no concatenation).
    Inference only."""

    def __init__(self, dca: DCA):
        self.dca = dca
        conv = dca.reduce[0]
        c = conv.weight.shape[1] // 2
        self.wx = conv.weight[:, :c].contiguous(memory_format=torch.channels_last)
        self.wf = conv.weight[:, c:].contiguous(memory_format=torch.channels_last)
        self.bias = conv.bias

    def forward(self, x):
        d = self.dca
        f = d.dil[0](x)
        for conv in d.dil[1:]:
            f += conv(x)
        f = F.relu_(f)
        f *= torch.sigmoid(d.mlp(F.adaptive_avg_pool2d(f, 1)) + d.mlp(F.adaptive_max_pool2d(f, 1)))
        f *= torch.sigmoid(d.spatial(torch.cat([f.mean(dim=1, keepdim=True), f.amax(dim=1, keepdim=True)], 1)))
        return F.relu_(F.conv2d(x, self.wx, self.bias) + F.conv2d(f, self.wf))


class _CGASplit:
    """:class:`CGA` with its last conv split: the 7x7 group conv of the interleaved ``[X, W_coa]``
    (two channels per group) is a depthwise conv of ``X`` plus one of ``W_coa`` (and the bias),
    without the concatenation and the shuffle (a grouped conv with two channels per group is
    slow on a CPU; two depthwise ones are not). Inference only (the weights are views)."""

    def __init__(self, cga: CGA):
        self.cga = cga

    def forward(self, x):
        c = self.cga
        s = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        coarse = c.wc(x) + c.ws(s)
        g, r = c.gc, c.gc.padding[0]
        w = g.weight
        pad = (r, r, r, r)
        y = F.conv2d(F.pad(x, pad, mode="reflect"), w[:, 0:1].contiguous(memory_format=torch.channels_last), g.bias,
                     groups=g.groups)
        y = y + F.conv2d(F.pad(coarse, pad, mode="reflect"), w[:, 1:2].contiguous(memory_format=torch.channels_last),
                         None, groups=g.groups)
        return torch.sigmoid(y)


class ReferenceSplit:
    """:meth:`MSAS.fuse_features` with the reference's share computed once.

    The first layer after each concatenation ``[.., f_a, f_b]`` (the 1x1 conv of ``bottom``, the
    3x3 convs of ``up1`` and ``up0``) is linear, so it splits into a conv of the plane's part and
    a conv of the reference's part (plus the bias): the latter is the same for every plane of a
    window and is computed once (:meth:`prepare`), then added per plane (:meth:`logits`). For a
    model whose BatchNorms are folded (:func:`cpu_inference_copy`), so that the concatenation's
    conv is followed directly by its ReLU."""

    def __init__(self, model: MSAS):
        w0, w1, w2 = model.config["widths"]
        self.m = model
        self.convs = []  # (conv, channels of the plane's side) for bottom, up1, up0
        for conv, k in ((model.bottom[0], w2), (model.up1[0][0], w2 + w1), (model.up0[0][0], w1 + w0)):
            if conv.bias is None:
                raise ValueError("ReferenceSplit needs a model with its BatchNorms folded (cpu_inference_copy)")
            fmt = torch.channels_last
            self.convs.append((conv, conv.weight[:, :k].contiguous(memory_format=fmt),
                               conv.weight[:, k:].contiguous(memory_format=fmt)))
        if not (isinstance(model.up1[0][1], nn.Identity) and isinstance(model.up0[0][1], nn.Identity)):
            raise ValueError("ReferenceSplit needs a model with its BatchNorms folded (cpu_inference_copy)")

    @staticmethod
    def _conv(conv, x, w, bias):
        return F.conv2d(x, w, bias, conv.stride, conv.padding, conv.dilation, conv.groups)

    def prepare(self, fb):
        """The reference's features (from ``model.encode``) -> its share of the three convs."""
        return [self._conv(c, fb[i], wb, c.bias) for (c, _, wb), i in zip(self.convs, (2, 1, 0))]

    def logits(self, fa, parts):
        """Decision logits of the plane with features ``fa`` against the prepared reference."""
        m = self.m
        (cb, wb, _), (c1, w1, _), (c0, w0, _) = self.convs
        x = F.relu(self._conv(cb, fa[2], wb, None) + parts[0])
        x = m.bottom[2](x)
        x = F.interpolate(x, size=fa[1].shape[-2:], mode="bilinear", align_corners=False)
        x = F.relu(self._conv(c1, torch.cat([x, fa[1]], dim=1), w1, None) + parts[1])
        x = m.up1[1](x)
        x = F.interpolate(x, size=fa[0].shape[-2:], mode="bilinear", align_corners=False)
        x = F.relu(self._conv(c0, torch.cat([x, fa[0]], dim=1), w0, None) + parts[2])
        x = m.up0[1](x)
        return m.head(x)


def _pad(x):
    """(B, H, W) or (B, C, H, W) -> (B, C, H', W') reflection-padded to multiples of MULTIPLE."""
    if x.ndim == 3:
        x = x[:, None]
    h, w = x.shape[-2:]
    ph, pw = (-h) % MULTIPLE, (-w) % MULTIPLE
    if ph or pw:
        mode = "reflect" if min(h, w) > max(ph, pw) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x


def fuse_pair(a: np.ndarray, c: np.ndarray, d: np.ndarray, *, min_area: float = 0.01):
    """The paper's post-processing for one pair: binarise ``d`` at 0.5 (eq. 8), flip regions
    under ``min_area`` of the image (eq. 9), ``F = A D + C (1 - D)`` (eq. 10, per channel).
    ``a``, ``c``: (H, W[, C]) sources; returns (fused, D)."""
    from .pairwise import small_area_filter

    b = (np.asarray(d) > 0.5).astype(np.uint8)
    D = small_area_filter(b, min_area) if min_area > 0 else b
    Dx = D[..., None] if np.ndim(a) == 3 else D
    return np.where(Dx == 1, a, c), D
