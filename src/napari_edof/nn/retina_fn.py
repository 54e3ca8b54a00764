"""Focus Measure Block + Fusion Network (Zhou et al., "A novel multi-focus fusion
network for retinal microsurgery"), written from the paper's Sec. 2.

- :func:`sml` / :class:`FocusMeasureBlock` (no parameters): the sum-modified-Laplacian of every
  colour channel (Nayar & Nakagawa's three steps: modified Laplacian with a variable ``step``,
  threshold masking at ``T``, summation over a ``(2 * window + 1)^2`` window; the paper: 3x3
  window, T = 7 on 0..255 intensities), concatenated with the RGB plane: 6 channels per plane.
- :class:`FusionNet`: a feature module applied to every plane on its own (shared weights), a
  max-selection across planes (so any number of planes works, and the order of the planes does
  not matter), nine residual refinement blocks, a final conv to RGB.
- Our addition (``skip=True``, the shipped network; ``skip=False`` is the paper's FN as written):
  a selection head (1x1 conv on every plane's features -> one score per plane and pixel) picks a
  plane per pixel (argmax, again order-free), and that plane's RGB is added to the final conv's
  output, so the refinement path learns a correction instead of re-synthesising every pixel value
  through the max-selected features. Training passes the gradient to the scores straight through
  a softmax-weighted mix (the forward value stays the hard choice). The paper's FN learns more
  slowly at first and blurs fine colour texture, but overtakes the skip network on noisy stacks
  later (it denoises); both are shipped (``docs/retina_vae.md``, ``weights/fmb_fn_ours.md``).

Images are RGB in [0, 1]; the SML is computed on ``255 * x`` so that the paper's threshold keeps
its meaning, and fed to the network divided by :data:`FM_SCALE`.

torch is imported by this module: import it lazily.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: the paper's FMB settings (Sec. 3.2): 3x3 window (radius 1), threshold 7, step 1
STEP = 1
WINDOW = 1
THRESHOLD = 7.0
#: the SML (0..255 units, summed over 9 pixels) is divided by this before entering the network
FM_SCALE = 255.0
#: default width of the feature maps (scaled down from the paper for CPU training)
WIDTH = 24
BLOCKS = 9


def modified_laplacian(x: torch.Tensor, step: int = STEP) -> torch.Tensor:
    """Eq. 1: |2I - I(x-s) - I(x+s)| + |2I - I(y-s) - I(y+s)| of every channel of (B, C, H, W)
    (borders replicated)."""
    s = int(step)
    p = F.pad(x, (s, s, s, s), mode="replicate")
    c = p[..., s:-s, s:-s]
    ml = (2 * c - p[..., s:-s, : -2 * s] - p[..., s:-s, 2 * s:]).abs()
    ml = ml + (2 * c - p[..., : -2 * s, s:-s] - p[..., 2 * s:, s:-s]).abs()
    return ml


def sml(x: torch.Tensor, step: int = STEP, window: int = WINDOW, threshold: float = THRESHOLD) -> torch.Tensor:
    """Eq. 2, per channel of (B, C, H, W) images in [0, 1]: the modified Laplacian of ``255 * x``,
    values below ``threshold`` set to 0, summed over the ``(2 * window + 1)^2`` window around each
    pixel (borders replicated). Returns the sum in 0..255 units."""
    ml = modified_laplacian(x * 255.0, step)
    ml = torch.where(ml >= threshold, ml, torch.zeros_like(ml))
    if window:
        k = 2 * window + 1
        ml = F.avg_pool2d(F.pad(ml, (window,) * 4, mode="replicate"), k, stride=1) * (k * k)
    return ml


class FocusMeasureBlock(nn.Module):
    """(B, N, 3, H, W) RGB planes in [0, 1] -> (B, N, 6, H, W): [RGB, SML(RGB) / FM_SCALE]."""

    def __init__(self, step: int = STEP, window: int = WINDOW, threshold: float = THRESHOLD):
        super().__init__()
        self.step, self.window, self.threshold = int(step), int(window), float(threshold)

    @property
    def radius(self) -> int:
        return self.step + self.window

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C, H, W = x.shape
        flat = x.reshape(B * N, C, H, W)
        fm = sml(flat, self.step, self.window, self.threshold) / FM_SCALE
        return torch.cat((flat, fm), dim=1).reshape(B, N, 2 * C, H, W)


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


class Refine(nn.Module):
    """A refinement block: x + conv(ReLU(conv(x)))."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = _conv(c, c)
        self.conv2 = _conv(c, c)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))


class FusionNet(nn.Module):
    """FMB + FN: (B, N, 3, H, W) RGB planes in [0, 1], any N >= 1 -> (B, 3, H, W) fused RGB.

    ``forward(x, return_index=True)`` also returns the max-selection's provenance: for every
    feature channel, the plane that won the max, (B, width, H, W) int64. ``skip`` adds the
    selection head (module docstring); :meth:`selection` gives its choice.
    """

    def __init__(self, width: int = WIDTH, blocks: int = BLOCKS, step: int = STEP, window: int = WINDOW,
                 threshold: float = THRESHOLD, skip: bool = False):
        super().__init__()
        self.fmb = FocusMeasureBlock(step, window, threshold)
        self.features = nn.Sequential(_conv(6, width), nn.ReLU(), _conv(width, width))
        self.refine = nn.Sequential(*[Refine(width) for _ in range(blocks)])
        self.out = _conv(width, 3)
        self.width, self.blocks, self.skip = width, blocks, bool(skip)
        if skip:
            self.select = nn.Conv2d(width, 1, 1)

    @property
    def receptive_radius(self) -> int:
        """How far (pixels) an output pixel sees: FMB, two feature convs, 2 per block, the last conv."""
        return self.fmb.radius + 2 + 2 * self.blocks + 1

    def _pre(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C, H, W = x.shape
        return self.features(self.fmb(x).reshape(B * N, 2 * C, H, W))

    def plane_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, 3, H, W) -> (B, N, width, H, W): FMB then the feature module of every plane."""
        B, N, C, H, W = x.shape
        return F.relu(self._pre(x)).reshape(B, N, self.width, H, W)

    def _scores(self, pre: torch.Tensor, shape) -> torch.Tensor:
        B, N, C, H, W = shape
        return self.select(pre).reshape(B, N, H, W)

    def selection(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, 3, H, W) -> (B, H, W) int64: the plane the selection head picks (``skip`` only)."""
        return self._scores(self._pre(x), x.shape).argmax(dim=1)

    def forward(self, x: torch.Tensor, return_index: bool = False):
        B, N, C, H, W = x.shape
        pre = self._pre(x)
        f = F.relu(pre).reshape(B, N, self.width, H, W)
        if return_index:
            fused, idx = f.max(dim=1)
        else:
            fused, idx = f.amax(dim=1), None
        y = self.out(self.refine(fused))
        if self.skip:
            s = self._scores(pre, x.shape)
            k = s.argmax(dim=1, keepdim=True)  # (B, 1, H, W)
            base = torch.gather(x, 1, k[:, :, None].expand(-1, -1, C, -1, -1))[:, 0]
            if torch.is_grad_enabled():  # straight-through: the value is the hard choice, the gradient the soft one
                soft = (torch.softmax(s, dim=1)[:, :, None] * x).sum(dim=1)
                base = base + (soft - soft.detach())
            y = y + base
        return (y, idx) if return_index else y

    @property
    def score_radius(self) -> int:
        """How far (pixels) the selection head's score of a pixel sees: FMB and the two feature convs."""
        return self.fmb.radius + 2

    @torch.inference_mode()
    def plane_probs(self, x: torch.Tensor, chunk: int = 4) -> torch.Tensor:
        """(B, N, 3, H, W) -> (B, N, H, W): the selection head's softmax over the planes (``skip``
        only; the refinement blocks are not run). Planes go through the feature module ``chunk`` at
        a time."""
        chunks = [x[:, n0:n0 + chunk] for n0 in range(0, x.shape[1], chunk)]
        sc = torch.cat([self._scores(self._pre(xc), xc.shape) for xc in chunks], dim=1)
        return torch.softmax(sc, dim=1)

    @torch.inference_mode()
    def infer(self, x: torch.Tensor, chunk: int = 4):
        """Inference without autograd, planes through the feature module ``chunk`` at a time and
        max-reduced as they come (memory: two feature volumes, not N). Returns (rgb (B, 3, H, W),
        provenance (B, width, H, W) int64: for every feature channel, the first plane holding the
        max; selection (B, H, W) int64: the plane the selection head picked, and its softmax
        probability over the planes (B, H, W); both None without the head)."""
        B, N, C, H, W = x.shape
        best = idx = sbest = sel = base = lse = None
        for n0 in range(0, N, chunk):
            xc = x[:, n0:n0 + chunk]
            pre = self._pre(xc)
            f = F.relu(pre).reshape(B, xc.shape[1], self.width, H, W)
            m, i = f.max(dim=1)
            i = i + n0
            if self.skip:
                sc = self._scores(pre, xc.shape)
                sm, si = sc.max(dim=1)
                rgb = torch.gather(xc, 1, si[:, None, None].expand(-1, -1, C, -1, -1))[:, 0]
                si = si + n0
                cl = torch.logsumexp(sc, dim=1)
                lse = cl if lse is None else torch.logaddexp(lse, cl)
            if best is None:
                best, idx = m, i
                if self.skip:
                    sbest, sel, base = sm, si, rgb
                continue
            better = m > best  # strict: ties keep the earlier plane, as max over the whole stack
            best = torch.where(better, m, best)
            idx = torch.where(better, i, idx)
            if self.skip:
                b = sm > sbest
                sbest, sel = torch.where(b, sm, sbest), torch.where(b, si, sel)
                base = torch.where(b[:, None], rgb, base)
        y = self.out(self.refine(best))
        if not self.skip:
            return y, idx, None, None
        return y + base, idx, sel, torch.exp(sbest - lse)
