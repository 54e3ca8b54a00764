"""VAEEDOF: a Fusion U-Net in the latent space of a frozen tiny autoencoder.

The planes are encoded one by one by the frozen TAEF2 encoder (:mod:`napari_edof.nn.taef2`,
32 channels at 1/8), seven latents are concatenated (224 channels) and the Fusion U-Net maps
them to one fused latent, which the frozen decoder turns into the fused image.

The Fusion U-Net (:class:`FusionUNet`), as in the paper: three down-sampling and three
up-sampling residual blocks, and residual blocks with self-attention in the middle. Its head
gives, per latent pixel, softmax weights over the seven slots and a residual latent:
``fused = sum_k w_k z_k + delta`` (the residual starts at zero, so the untrained net averages the
slots). The weights make the common case (one plane is sharp here) easy to learn; the residual
is what can add content that no plane holds (the paper's "missing information").

Seven slots (:func:`slots`):

- fewer planes are duplicated to fill, in z order and as evenly as possible (the paper's rule):
  plane ``floor(k * N / 7)`` fills slot ``k``, so 2 planes give ``0 0 0 0 1 1 1``;
- more planes: ``"sharpest"`` keeps the seven planes that are sharpest in most pixels (by a focus
  measure, :func:`plane_scores`), in z order; ``"groups"`` fuses consecutive groups of at most
  seven planes, then fuses the groups' fused latents again (:func:`fuse_latents`).

torch is imported by this module: import it lazily.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: planes the U-Net fuses at once
SLOTS = 7
LATENT = 32
#: channel widths: input level, then the three down-sampled levels
WIDTHS = (48, 64, 64, 80)
#: latent H, W must be multiples of this (three 2x down-samplings); images: x 8 (the autoencoder)
LATENT_MULTIPLE = 8
PIXEL_MULTIPLE = LATENT_MULTIPLE * 8
LONG_STACKS = ("sharpest", "groups")


def _groups(c: int) -> int:
    return 8 if c % 8 == 0 else 4


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv3x3 twice, plus a (1x1 when widths differ) skip."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.n1 = nn.GroupNorm(_groups(cin), cin)
        self.c1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.n2 = nn.GroupNorm(_groups(cout), cout)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.c1(F.silu(self.n1(x)))
        h = self.c2(F.silu(self.n2(h)))
        return h + self.skip(x)


class Attention(nn.Module):
    """Single-head self-attention over the pixels of a (B, C, H, W) map, residual."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(c), c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return x + self.proj(a.transpose(1, 2).reshape(b, c, h, w))


class MidBlock(nn.Module):
    """A residual block followed by self-attention (the paper's middle blocks)."""

    def __init__(self, c: int):
        super().__init__()
        self.res = ResBlock(c, c)
        self.attn = Attention(c)

    def forward(self, x):
        return self.attn(self.res(x))


class FusionUNet(nn.Module):
    """(B, 7 * 32, h, w) concatenated latents -> (B, 32, h, w) fused latent (h, w multiples of 8)."""

    def __init__(self, widths=WIDTHS, slots: int = SLOTS, latent: int = LATENT):
        super().__init__()
        self.slots, self.latent = slots, latent
        w0, *ws = widths
        self.inp = nn.Conv2d(slots * latent, w0, 3, padding=1)
        self.down = nn.ModuleList()
        self.pool = nn.ModuleList()
        c = w0
        skips = []
        for w in ws:  # three down-sampling residual blocks
            self.down.append(ResBlock(c, w))
            skips.append(w)
            self.pool.append(nn.Conv2d(w, w, 3, stride=2, padding=1))
            c = w
        self.mid = nn.Sequential(MidBlock(c), MidBlock(c))
        self.up = nn.ModuleList()
        for w in reversed(skips):  # three up-sampling residual blocks (skip concatenated)
            self.up.append(ResBlock(c + w, w))
            c = w
        self.out_norm = nn.GroupNorm(_groups(c + w0), c + w0)
        self.head = nn.Conv2d(c + w0, slots + latent, 3, padding=1)
        with torch.no_grad():  # start as the plain average of the slots, no residual
            self.head.weight.zero_()
            self.head.bias.zero_()

    def forward(self, z):
        """``z``: (B, 7 * 32, h, w) -> fused latent (B, 32, h, w)."""
        b, _, h, w = z.shape
        x0 = self.inp(z)
        x, skips = x0, []
        for blk, pool in zip(self.down, self.pool):
            x = blk(x)
            skips.append(x)
            x = pool(x)
        x = self.mid(x)
        for blk in self.up:
            s = skips.pop()
            x = F.interpolate(x, size=s.shape[-2:], mode="nearest")
            x = blk(torch.cat([x, s], 1))
        out = self.head(F.silu(self.out_norm(torch.cat([x, x0], 1))))
        wts = torch.softmax(out[:, : self.slots], dim=1)
        planes = z.reshape(b, self.slots, self.latent, h, w)
        return (wts[:, :, None] * planes).sum(1) + out[:, self.slots :]

    def fuse_stack(self, latents):
        """(7, 32, h, w) latents of one stack (already in slot order) -> (32, h, w)."""
        return self(latents.reshape(1, -1, *latents.shape[-2:]))[0]


# ------------------------------------------------------------------------------------- slots
def fill_slots(n: int, k: int = SLOTS) -> np.ndarray:
    """Plane per slot for ``n <= k`` planes: ``floor(s * n / k)`` (z order, duplicates spread evenly)."""
    if n < 1:
        raise ValueError("a stack needs at least one plane")
    if n > k:
        raise ValueError(f"{n} planes do not fit {k} slots; choose planes first (slots())")
    return (np.arange(k) * n) // k


def plane_scores(guide: np.ndarray, radius: int = 2) -> np.ndarray:
    """How sharp each plane is over a (N, H, W) guide: the fraction of pixels where it has the
    highest Laplacian energy (ties broken by the plane's mean energy, tiny)."""
    from ..core.focus import focus_measure

    g = np.asarray(guide, np.float32)
    fm = focus_measure(g, "laplacian", radius=radius)
    n = g.shape[0]
    votes = np.bincount(fm.argmax(axis=0).ravel(), minlength=n).astype(np.float64)
    votes /= max(1, fm[0].size)
    mean = fm.reshape(n, -1).mean(axis=1).astype(np.float64)
    return votes + 1e-6 * mean / max(float(mean.max()), 1e-12)


def select_planes(scores: np.ndarray, k: int = SLOTS) -> np.ndarray:
    """The ``k`` highest-scoring planes, in z order (all of them when there are at most ``k``)."""
    n = len(scores)
    if n <= k:
        return np.arange(n)
    order = np.argsort(-np.asarray(scores), kind="stable")[:k]
    return np.sort(order)


def slots(n: int, scores: np.ndarray | None = None, k: int = SLOTS) -> np.ndarray:
    """The plane feeding each of the ``k`` slots: the fill rule for ``n <= k``, else the ``k``
    sharpest planes by ``scores`` (:func:`plane_scores`)."""
    if n <= k:
        return fill_slots(n, k)
    if scores is None:
        raise ValueError(f"{n} planes: give per-plane scores to choose {k} of them")
    return select_planes(scores, k)


def group_bounds(n: int, k: int = SLOTS) -> list[tuple[int, int]]:
    """Consecutive groups of at most ``k`` planes, as equal as possible: [(start, stop), ...]."""
    g = math.ceil(n / k)
    edges = [round(i * n / g) for i in range(g + 1)]
    return list(zip(edges[:-1], edges[1:]))


def fuse_latents(net: FusionUNet, z, *, long: str = "sharpest", scores=None):
    """Fuse (N, 32, h, w) latents to (32, h, w) with the slot rule (``long`` for N > 7)."""
    n = z.shape[0]
    k = net.slots
    if n <= k:
        return net.fuse_stack(z[torch.as_tensor(fill_slots(n, k), device=z.device)])
    if long == "sharpest":
        idx = slots(n, scores, k)
        return net.fuse_stack(z[torch.as_tensor(idx, device=z.device)])
    if long != "groups":
        raise ValueError(f"long={long!r}: choose one of {LONG_STACKS}")
    fused = torch.stack([fuse_latents(net, z[a:b]) for a, b in group_bounds(n, k)])
    return fuse_latents(net, fused, long="groups")


def pad_multiple(x, multiple: int = PIXEL_MULTIPLE):
    """Reflect-pad (..., H, W) on the bottom and right to multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not (ph or pw):
        return x
    shape = x.shape
    x4 = x.reshape(-1, *shape[-3:]) if x.ndim >= 3 else x[None, None]
    while ph or pw:  # reflection is limited to the size of the image; repeat as needed
        sh, sw = min(ph, x4.shape[-2] - 1), min(pw, x4.shape[-1] - 1)
        if sh <= 0 and sw <= 0:
            x4 = F.pad(x4, (0, pw, 0, ph), mode="replicate")
            break
        x4 = F.pad(x4, (0, max(sw, 0), 0, max(sh, 0)), mode="reflect")
        ph, pw = ph - max(sh, 0), pw - max(sw, 0)
    return x4.reshape(*shape[:-2], *x4.shape[-2:])
