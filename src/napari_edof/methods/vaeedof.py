"""VAEEDOF: fusion in the latent space of a frozen tiny autoencoder, plus a hybrid.

Per tile window:

1. the planes are scaled to [0, 1] (``normalise``), made RGB (grey planes are replicated to three
   channels; stacks with other channel counts run channel by channel), reflect-padded to
   multiples of 64 and encoded one by one by the frozen FLUX.2 tiny autoencoder (TAEF2, 32
   latent channels at 1/8; :mod:`napari_edof.nn.taef2`);
2. the Fusion U-Net (:mod:`napari_edof.nn.vaeedof`, our weights trained on synthetic stacks,
   shipped: ``weights/vaeedof_ours.md``) fuses seven latents: fewer planes are duplicated to fill
   (``floor(k N / 7)`` feeds slot ``k``); longer stacks follow ``long``: ``sharpest`` keeps the
   seven planes that are the sharpest in most pixels of the window (Laplacian energy), ``groups``
   fuses consecutive groups of at most seven, then the groups' fused latents again;
3. the frozen decoder gives the *latent* result (``mode="latent"``), mapped back to input units.

The latent result cannot be closer to the truth than the autoencoder's own reconstruction
(about 32 dB on photographs, 34-37 dB on brightfield; ``shared/specs/taef2.md``). The default
``mode="hybrid"`` therefore takes the *source* pixels wherever the focus decision is confident,
and the latent result only where no plane is clearly sharp (the paper's "missing information"
case: never-in-focus or occluded content):

- decision: per pixel, the plane of highest Laplacian energy (radius ``radius``) on the guide,
  3 x 3 median-filtered; its confidence ``c = (best - mean) / (best (1 - 1/N))`` (the
  focus-select definition), smoothed by a box mean of its windowed minimum (radius
  ``radius // 2``), which never exceeds the pixel's own confidence;
- source image: the chosen plane's pixels, softened across changes of plane (each plane's
  one-hot choice box-averaged over 3 x 3, so seams do not show; elsewhere exactly the pixel);
- weight of the source pixels: ``a = clip((c - lo) / (hi - lo), 0, 1)`` with ``lo, hi =
  threshold -+ 0.1``, raised to 1 where the planes agree (the spread over planes of their 5 x 5
  means is under ``agree`` of the range, ramped to 0 at twice that: flat or never-changing
  content, where any plane is right); fused = ``a * source + (1 - a) * latent``: exactly the
  source where ``a = 1``, exactly the latent result where ``a = 0``. The defaults (threshold 0.2,
  agree 0.01) were chosen on the held-out synthetic sets of ``docs/retina_vae.md``.

Outputs: the focus index is the hybrid's decision (in both modes), the confidence is ``a`` (1:
the pixel is the source plane's, 0: it is generated), so the decision masks are the hybrid's.

Tiles: the U-Net's middle attention sees the whole window, so tiles are not exact; the engine
blends overlapping tile outputs with a feathered (linear) alpha ramp, the paper's gradient alpha
mask, over ``default_overlap`` = 64 pixels, after ``context`` pixels of halo.
torch is imported lazily (only when the method runs).
"""
from __future__ import annotations

import numpy as np

from ..core.colour import gather
from ..core.scaling import unit_range
from ..nn.accel import to_device
from ..nn.learned import LearnedMethod
from ..nn.taef2_weights import ENCODER
from ..nn.weights import cached_model, load_state_dict
from ._registry import MethodSpec, Param, WeightsSpec, context_halo, register

CITATION = ("VAEEDOF: 'Addressing the Depth-of-Field Constraint: A New Paradigm for High Resolution "
            "Multi-Focus Image Fusion'; autoencoder: TAEF2, github.com/madebyollin/taesd (MIT).")

#: our Fusion U-Net weights, shipped in the package (float16; see weights/vaeedof_ours.md)
UNET = WeightsSpec(
    filename="vaeedof_ours.pt",
    urls=(),
    sha256="d831deedc62a7efc8ffb7e48ba9adb6d1d277f38a5f42ec1ff255aab68173ed4",
    licence="MIT (napari-edof)",
    citation=CITATION,
)

MODES = ("hybrid", "latent")
LONG = ("sharpest", "groups")
NORMALISE = ("auto", "range", "dtype")
BAND = 0.1  # half-width of the confidence ramp around the threshold
BLEND = 1  # soft seams between source planes (box radius of the one-hot choice)


SPEC = MethodSpec(
    name="vaeedof",
    summary="VAEEDOF: Fusion U-Net in a frozen autoencoder's latent space; hybrid with "
            "source pixels where the focus decision is confident.",
    family="learned",
    params=(
        Param("mode", str, "hybrid", label="Mode",
              help="hybrid: source pixels where a plane is confidently the sharpest, the "
              "latent fusion elsewhere; latent: the decoded latent fusion everywhere (the paper)", choices=MODES),
        Param("long", str, "sharpest", label="More than seven planes", advanced=True,
              help="more than seven planes: the seven sharpest in most pixels of the "
              "tile, or groups of seven fused and then fused again", choices=LONG),
        Param("threshold", float, 0.2, label="Confidence threshold", advanced=True,
              help="hybrid: focus-decision confidence above which the source pixel is "
              "used (ramped over +-0.1)", min=0.0, max=1.0),
        Param("agree", float, 0.01, label="Agreement threshold", advanced=True,
              help="hybrid: the source is also used where the planes agree: their spread "
              "(max - min over planes of the 5 x 5 mean) below this fraction of the range (ramped to 2x; "
              "0: off)", min=0.0, max=1.0),
        Param("radius", int, 4, label="Window radius", advanced=True,
              help="focus-measure window radius of the hybrid's decision (pixels)", min=1, max=16),
        Param("normalise", str, "auto", label="Input scaling", advanced=True,
              help="input scaling to [0, 1]: auto (dtype for uint8, range otherwise), "
              "range (robust min/max of the tile's window) or dtype", choices=NORMALISE),
        Param("context", int, 32, label="Context (px)", advanced=True,
              help="extra pixels read around each tile", min=8, max=1024),
    ),
    halo=context_halo,
    tile_multiple=lambda p: 8,
    devices=("cuda", "mps", "cpu"),
    backend="torch",
    default_tile=512,
    default_overlap=64,
    synthesises=lambda p: True,  # the decoded latent result (everywhere, or where no plane is confident)
    weights=ENCODER,
    citation=CITATION,
    paper="003",
)


_MODELS: dict = {}


def get_models(device: str):
    """(encoder, decoder, U-Net) on ``device``, loaded once and hash-checked."""

    def build():
        from ..nn import taef2
        from ..nn.vaeedof import FusionUNet

        net = FusionUNet()
        net.load_state_dict(load_state_dict(UNET), strict=True)
        return taef2.load_encoder().to(device), taef2.load_decoder().to(device), net.float().eval().to(device)

    return cached_model(_MODELS, device, build)


def scaling(planes: np.ndarray, mode: str) -> tuple[float, float]:
    """(lo, hi) such that (x - lo) / (hi - lo) maps the window's planes to about [0, 1]
    (``auto``: the dtype's range for uint8, the robust range otherwise)."""
    if mode == "auto":
        mode = "dtype" if planes.dtype == np.uint8 else "range"
    return unit_range(planes, planes.dtype, mode)


def decision(guide: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """The hybrid's focus decision on a (N, h, w) guide: (index int16, confidence in [0, 1])."""
    from scipy import ndimage as ndi

    from ..core.focus import focus_measure

    n = guide.shape[0]
    fm = focus_measure(guide, "laplacian", radius=radius)
    idx = fm.argmax(axis=0).astype(np.int16)
    if n == 1:
        return idx, np.ones(idx.shape, np.float32)
    best = fm.max(axis=0)
    mean = fm.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        conf = np.where(best > 0, (best - mean) / (best * (1 - 1 / n)), 0).astype(np.float32)
    idx = ndi.median_filter(idx, size=3, mode="reflect")
    # smoothed without spreading: the box mean of the windowed minimum is at most the pixel's own
    k = 2 * max(1, radius // 2) + 1
    conf = ndi.uniform_filter(ndi.minimum_filter(conf, size=k, mode="reflect"), size=k, mode="reflect")
    return idx, np.clip(conf, 0, 1).astype(np.float32)


def soft_source(planes: np.ndarray, idx: np.ndarray, blend: int) -> np.ndarray:
    """Source pixels at ``idx`` from (Z, h, w, C) planes, softened across plane changes: each plane's
    weight is its one-hot choice box-averaged over (2 blend + 1)^2 (float; away from a change of
    plane it is exactly the chosen plane's pixel)."""
    from scipy import ndimage as ndi

    if blend <= 0:
        return gather(planes, idx).astype(np.float32)
    out = np.zeros(planes.shape[1:], np.float64 if planes.dtype.itemsize > 2 else np.float32)
    for k in np.unique(idx):
        w = ndi.uniform_filter((idx == k).astype(np.float32), size=2 * blend + 1, mode="nearest")
        one = w >= 1 - 1e-6
        part = np.where(one[..., None], planes[k], w[..., None] * planes[k])
        out += part
    return out


def source_weight(conf: np.ndarray, threshold: float) -> np.ndarray:
    """The hybrid's weight of the source pixels: 0 below threshold - 0.1, 1 above threshold + 0.1."""
    lo, hi = threshold - BAND, threshold + BAND
    return np.clip((conf - np.float32(lo)) / np.float32(hi - lo), 0, 1).astype(np.float32)


def agreement_weight(guide01: np.ndarray, agree: float) -> np.ndarray:
    """1 where the planes of a (N, h, w) guide scaled to [0, 1] agree (spread of their 5 x 5 means
    over planes below ``agree``), 0 above ``2 agree``, linear between."""
    from scipy import ndimage as ndi

    if agree <= 0 or guide01.shape[0] < 2:
        return np.zeros(guide01.shape[1:], np.float32)
    m = ndi.uniform_filter(guide01, size=(1, 5, 5), mode="reflect")
    spread = m.max(axis=0) - m.min(axis=0)
    return np.clip((2 * agree - spread) / agree, 0, 1).astype(np.float32)


def hybrid(source: np.ndarray, latent: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``weight * source + (1 - weight) * latent`` per pixel ((h, w, C) float arrays), with the
    source taken exactly where the weight is 1 and the latent result exactly where it is 0."""
    w = weight[..., None].astype(np.float32)
    out = latent + w * (source - latent)
    out = np.where(w >= 1, source, out)
    return np.where(w <= 0, latent, out)


@register(SPEC)
class VAEEDOFMethod(LearnedMethod):
    def __init__(self, params: dict, *, device: str = "cpu"):
        self.p = params
        self.device = device
        self.encoder, self.decoder, self.net = get_models(device)
        self.use_weights(UNET)

    def latent_fuse(self, rgb: np.ndarray, guide: np.ndarray) -> np.ndarray:
        """(Z, 3, h, w) float32 in [0, 1] -> decoded fused (h, w, 3) float32 in [0, 1]."""
        import torch

        from ..nn.vaeedof import fuse_latents, pad_multiple, plane_scores, select_planes

        z_n, _, h, w = rgb.shape
        if z_n > self.net.slots and self.p["long"] == "sharpest":  # encode only the seven kept planes
            rgb = rgb[select_planes(plane_scores(guide), self.net.slots)]
            z_n = rgb.shape[0]
        with torch.inference_mode():
            x = to_device(rgb, self.device)
            x = pad_multiple(x)
            lat = torch.cat([self.encoder(x[k : k + 1]) for k in range(z_n)])
            fused = fuse_latents(self.net, lat, long=self.p["long"])
            out = self.decoder(fused[None])[0].clamp(0, 1)[:, :h, :w]
            return out.permute(1, 2, 0).float().cpu().numpy()

    def fuse_tile(self, planes, guide, *, halo, stats=None):
        p = self.p
        z_n, H, W, C = planes.shape
        lo, hi = scaling(planes, p["normalise"])
        x = (planes.astype(np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
        np.clip(x, 0, 1, out=x)
        g = (guide - np.float32(lo)) * np.float32(1.0 / (hi - lo))
        if C == 3:
            lat = self.latent_fuse(x.transpose(0, 3, 1, 2), g)
        else:  # grey (or any other channel count): each channel replicated to RGB
            lat = np.stack([self.latent_fuse(np.repeat(x[:, None, :, :, c], 3, axis=1), x[..., c]).mean(-1)
                            for c in range(C)], axis=-1)
        lat = lat * np.float32(hi - lo) + np.float32(lo)
        idx, conf = decision(guide, p["radius"])
        crop = (slice(halo, H - halo), slice(halo, W - halo)) if halo else (slice(None), slice(None))
        weight = np.maximum(source_weight(conf[crop], p["threshold"]), agreement_weight(g, p["agree"])[crop])
        if p["mode"] == "latent":
            fused = lat[crop]
        else:
            b = min(BLEND, halo)
            inner = (slice(halo - b, H - halo + b), slice(halo - b, W - halo + b))
            src = soft_source(planes[(slice(None),) + inner], idx[inner], b)
            if b:
                src = src[b:-b, b:-b]
            fused = hybrid(src, lat[crop].astype(src.dtype), weight)
        idx = idx[crop]
        return {"fused": fused, "index": idx.astype(np.float32), "confidence": weight}
