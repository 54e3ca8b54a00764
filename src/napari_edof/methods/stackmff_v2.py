"""StackMFF-V2: one network pass over the whole stack regresses the focal plane.

The network (:mod:`napari_edof.nn.stackmff_v2`) gives per-pixel focus logits over the planes;
a decision rule turns them into the focus index, and the fused image gathers the source pixels
(every channel) at that index. The network runs on the guide (luminance for RGB), scaled to
[0, 1]; H and W are reflection-padded to multiples of 32 (the authors resize).

Decision rules (``rule``):

- ``argmax``: the plane with the highest logit (local, so tiles need no second pass);
- ``official``: the authors' rule, expectation E = sum (n + 1) P_n, min-max normalised over the
  *whole image* to [0, N - 1] and rounded. Not local: when tiled, pass 1 stitches E over every
  tile and one global min/max is taken before pass 2 rounds and gathers;
- ``matched``: the official expectation, linearly stretched so that its robust range (1st..99th
  percentile over the whole image) matches that of the argmax index, instead of the full
  0..N-1 (two passes when tiled, like the official rule). The official stretch assumes that
  every plane is sharp somewhere in the image; this one does not;
- ``smooth-argmax``: the plane with the highest softmax probability after a small spatial box
  average of the probabilities (local).

Composition (``compose``; :mod:`._prob_compose`): the rule decides the index map; the image is

- ``pyramid`` (default): a Laplacian pyramid whose per-level plane weights are the network's softmax
  probabilities times noise-aware weights of the planes' band energies (planes whose detail is
  equally strong within the noise are averaged; overlapping detail from different depths is
  gathered, ``overlap``), the finest detail Wiener-shrunk where it is as weak as the noise, the
  base the average weighted by the probabilities cubed. Local: tiles aligned to 8 pixels with a halo of at least
  :func:`~._prob_compose.pyramid_reach` (the halo is ``max(context, 40)``) compose as the whole image;
- ``soft``: per pixel, the planes averaged with the network's probabilities;
- ``select``: the source pixels gathered at the rule's index (hard selection, the only composition
  before; every pixel is a source pixel).

Network resolution (``resolution``): with ``compose="pyramid"`` the network runs on the guide's
2 x 2 bins by default (``"auto"``) and its logits are up-sampled bilinearly: about a quarter of the
network's work, and on the tuning stacks the same fused image and a slightly lower index error
(the composition takes the detail from the planes, the network only weighs them). Depth steps in
the index map are rounded off by a pixel or two (``resolution="full"`` keeps them). With ``soft``
and ``select`` it runs at full resolution, as the authors do.

See ``docs/stackmff_v2.md`` for the measurements behind the defaults (rule, tile, overlap).
torch is imported lazily (only when the method runs).
"""
from __future__ import annotations

import hashlib

import numpy as np

from ..core.colour import gather
from ..core.scaling import MODES as NORMALISE
from ..core.scaling import to_unit
from ..nn.learned import LearnedMethod, load_network
from ._prob_compose import LEVELS, compose_halo, compose_multiple, pyramid_compose, soft_compose
from ._registry import MethodSpec, Param, WeightsSpec, register
from .focus_fuse import bin2

CITATION = ("Xie, X. et al., 'StackMFF V2: One-shot multi-focus image stack fusion via focal depth "
            "regression'; code and weights: github.com/Xinzhe99/StackMFF-V2 (MIT).")

#: weights a user can choose with ``weights=``; a spec without URLs is shipped in the package
#: (``napari_edof/weights/<filename>``), hash-checked like a download.
MODELS: dict[str, WeightsSpec] = {
    "official": WeightsSpec(
        filename="stackmff_v2_official.pth",
        urls=("https://github.com/Xinzhe99/StackMFF-V2/raw/main/model.pth",),
        sha256="cb923ed0265765e8471c7fcb15a08d1cee296809254e03e97418c664d655d179",
        licence="MIT",
        citation=CITATION,
    ),
    # ours: fine-tuned from the official weights on the project's synthetic stacks, shipped in the
    # package (no download); data, command, seed and validation in weights/stackmff_v2_ours.md.
    # Best with rule="argmax" (held-out microscopy-like stacks: index accuracy 0.852 vs 0.338 for
    # the official weights with argmax).
    "ours": WeightsSpec(
        filename="stackmff_v2_ours.pt",
        urls=(),
        sha256="7627def6f10a7c0f239cbf6a8e192291e92daf398fe62632f7fe2eae308c3db5",
        licence="MIT (a derivative of the official MIT-licensed checkpoint; see the model card)",
        citation=CITATION,
    ),
    # realistic: fine-tuned from "ours" on the realistic generator's stacks (training.realistic_data),
    # with the soft composition's image error in the loss; shipped, not the default (its index map is
    # worse): weights/stackmff_v2_realistic.md.
    "realistic": WeightsSpec(
        filename="stackmff_v2_realistic.pt",
        urls=(),
        sha256="41330264e08781ababcf3c1b3bda5ee0a455840e3026c58bbc6e98e69ec77a04",
        licence="MIT (a derivative of the official MIT-licensed checkpoint; see the model card)",
        citation=CITATION,
    ),
}


def half_resolution(p: dict) -> bool:
    """Whether the network runs on 2 x 2 bins (``resolution``; "auto": with ``compose="pyramid"``).

    Measured on the tuning stacks (seeds 9100 and 9300 of the realistic generator, 24 stacks, never
    the benchmark's), compose=pyramid: 38.691 dB and index error 1.326 planes at half resolution
    against 38.667 dB and 1.360 at full, the network 3-4x faster (docs/stackmff_v2.md)."""
    r = p.get("resolution", "full")
    return r == "half" or (r == "auto" and p.get("compose", "select") == "pyramid")


RULES = ("argmax", "official", "matched", "smooth-argmax")
COMPOSE = ("pyramid", "soft", "select")
RESOLUTIONS = ("auto", "half", "full")
GLOBAL_RULES = ("official", "matched")
QUANTILES = (0.01, 0.99)
DEFAULT_RULE = "argmax"  # with our weights (docs/stackmff_v2.md: 0.900 exact, 42.4 dB on 46 stacks)


#: the network's working set per voxel of a tile (input, stage-1 output, checkpointed states,
#: logits: 56-68 B measured for 16-32 planes, benchmarks/memory_stackmff_v2.py) and the budget
#: the default tile keeps it under, so that memory stays bounded however many planes there are
BYTES_PER_VOXEL = 64
TILE_BUDGET = 1 << 30


def default_tile(p: dict, n_planes: int) -> int:
    """1024 px up to 16 planes; smaller tiles (multiples of 32, at least 256) for more planes."""
    side = int((TILE_BUDGET / (BYTES_PER_VOXEL * max(1, n_planes))) ** 0.5) // 32 * 32
    return max(256, min(1024, side))


SPEC = MethodSpec(
    name="stackmff-v2",
    summary="StackMFF-V2 network: one-shot focal-plane regression over the whole stack.",
    family="learned",
    params=(
        Param("rule", str, DEFAULT_RULE, label="Decision rule",
              help="decision rule: argmax of the logits (local); the official expectation + global "
              "min-max; the expectation matched to the argmax's range (both two passes when "
              "tiled); or the argmax of box-smoothed probabilities (local)", choices=RULES),
        Param("compose", str, "pyramid", label="Composition",
              help="pyramid: multi-scale, the network's probabilities weighed with each scale's detail "
              "against the noise (noise averaged where no plane is sharper); soft: the planes averaged per "
              "pixel with the probabilities; select: the pixel of the chosen plane", choices=COMPOSE),
        Param("softness", float, 4.0, label="Softness", advanced=True,
              help="compose=pyramid: how readily planes are averaged, the temperature of the detail "
              "weights in units of the noise energy (small: the most detailed plane, as the network allows)",
              min=0.05, max=100.0),
        Param("overlap", float, 1.0, label="Overlapping depths", advanced=True,
              help="compose=pyramid: detail of a second depth at the same pixel (a second peak of the "
              "detail's energy over the planes, well apart from the first) is added with this weight; "
              "0: off", min=0.0, max=1.0),
        Param("weights", str, "ours", label="Weights", advanced=True,
              help="network weights: ours (shipped, fine-tuned on synthetic stacks), realistic (shipped, "
              "fine-tuned further on realistic noisy stacks for compose=pyramid/soft; a worse index map) or "
              "the authors' official ones (downloaded at first use)", choices=tuple(MODELS)),
        Param("normalise", str, "range", label="Input scaling", advanced=True,
              help="input scaling to [0, 1]: 'range' (robust min/max of the tile's window) or 'dtype' "
              "(divide integers by their maximum, floats as given: the authors' convention)",
              choices=NORMALISE),
        Param("context", int, 32, label="Context (px)", advanced=True,
              help="extra pixels read around each tile (and reflected around the image)",
              min=0, max=1024),
        Param("resolution", str, "auto", label="Network resolution", advanced=True,
              help="where the network runs: half (on 2 x 2 bins of the guide, its logits up-sampled: about 4x "
              "less work, the same quality with compose=pyramid, whose detail comes from the planes), full, or "
              "auto: half with compose=pyramid, full with soft and select (the network alone makes the image "
              "there; full is the authors' way)", choices=RESOLUTIONS),
        Param("smooth", int, 1, label="Smoothing radius",
              help="box radius for rule='smooth-argmax' (pixels)", min=1, max=16),
    ),
    halo=compose_halo,
    tile_multiple=lambda p: max(compose_multiple(p), 2 if half_resolution(p) else 1),  # (whole bins)
    devices=("cuda", "mps", "cpu"),
    backend="torch",
    default_tile=default_tile,
    default_overlap=96,
    weights=MODELS["official"],
    citation=CITATION,
    paper="002",
)


_MODELS: dict = {}


def get_model(name: str, device: str):
    """The network with the ``name`` weights on ``device`` (loaded once, hash-checked)."""

    def make(sd):
        from ..nn.stackmff_v2 import StackMFFV2

        return StackMFFV2()

    return load_network(_MODELS, (name, device), MODELS[name], make, device)


def normalise_guide(guide: np.ndarray, dtype: np.dtype, mode: str) -> np.ndarray:
    """(Z, h, w) float32 guide in input units -> network input in [0, 1] (float32)."""
    return to_unit(guide, dtype, mode)


def box_mean(p, r: int):
    """Box average of radius ``r`` over the last two axes of a (N, H, W) torch tensor (reflected)."""
    import torch.nn.functional as F

    k = 2 * r + 1
    x = F.pad(p[:, None], (r, r, r, r), mode="replicate")
    return F.avg_pool2d(x, k, stride=1)[:, 0]


@register(SPEC)
class StackMFFV2Method(LearnedMethod):
    #: the global rules ("official", "matched") need a first pass (set per instance in ``__init__``)
    first_pass: tuple[str, ...] = ()

    def __init__(self, params: dict, *, device: str = "cpu"):
        self.p = params
        self.device = device
        self.model = get_model(params["weights"], device)
        self.use_weights(MODELS[params["weights"]])  # (the spec's ``weights`` names the official ones)
        self._cache: dict = {}
        if params["rule"] in GLOBAL_RULES:  # a whole-image statistic: the engine runs two passes
            # the official rule needs E only; "matched" also maps onto the argmax's range
            self.first_pass = ("expectation",) if params["rule"] == "official" else ("expectation", "argmax")

    # -- the network on one window ---------------------------------------------------------------
    def logits(self, guide, dtype, halo):
        """Focus logits of a window's guide, cropped by ``halo``: (N, h', w') torch tensor."""
        from ..nn.accel import to_device

        x = normalise_guide(guide, dtype, self.p["normalise"])
        half = half_resolution(self.p)
        if half:
            x = bins(x)
        xt = to_device(x, self.device)
        logits = self.model.infer_logits(xt)[0]
        if half:
            logits = up_bins(logits, guide.shape[-2:])
        return self.crop(logits, halo)

    @staticmethod
    def _key(planes, halo):
        """Pass 1's maps of a window are found again in pass 2 by the window's content: the raw
        planes (the guide is a function of them, and up to 4x larger to hash)."""
        g = np.ascontiguousarray(planes)
        return (g.shape, g.dtype.str, halo, hashlib.blake2b(memoryview(g).cast("B"), digest_size=16).digest())

    def _maps(self, planes, guide, halo):
        comp = self.p.get("compose", "select")
        if comp != "pyramid":
            return decide(self.logits(guide, planes.dtype, halo), self.p, prob=comp == "soft")
        full = self.logits(guide, planes.dtype, 0)  # the compositor reads the whole window
        maps = decide(self.crop(full, halo), self.p)
        maps["prob"] = decide(full, {"rule": "official"}, prob=True)["prob"]
        return maps

    # -- the official rule's two passes -----------------------------------------------------------
    def pass1(self, planes, guide, *, halo):
        maps = self._maps(planes, guide, halo)
        self._cache[self._key(planes, halo)] = maps
        self._n = planes.shape[0]
        out = {"expectation": maps["expectation"]}
        if "argmax" in self.first_pass:
            out["argmax"] = maps["index"].astype(np.float32)
        return out

    def reduce(self, maps):
        return global_stats(maps["expectation"], maps.get("argmax"), self.p["rule"], self._n)

    # -- the tile ------------------------------------------------------------------------------
    def fuse_tile(self, planes, guide, *, halo, stats=None):
        n = planes.shape[0]
        maps = None
        rule = self.p["rule"]
        if rule in GLOBAL_RULES:
            maps = self._cache.pop(self._key(planes, halo), None)
        if maps is None:
            maps = self._maps(planes, guide, halo)
        if rule in GLOBAL_RULES:
            if stats is None:  # called without pass 1: the window's own statistics
                stats = global_stats(maps["expectation"], maps["index"], rule, n)
            idx = rescale(maps["expectation"], stats, n)
        else:
            idx = maps["index"]
        src = planes[:, halo : planes.shape[1] - halo, halo : planes.shape[2] - halo] if halo else planes
        comp = self.p.get("compose", "select")
        if comp == "pyramid":
            fused = pyramid_compose(planes, guide, maps["prob"], levels=LEVELS,
                                    softness=self.p.get("softness", 4.0), overlap=self.p.get("overlap", 1.0))
            if halo:
                fused = fused[halo:-halo, halo:-halo]
        elif comp == "soft":
            fused = soft_compose(src, maps["prob"])
        else:
            fused = gather(src, idx)
        return {"fused": fused, "index": idx.astype(np.float32), "confidence": maps["confidence"]}


def bins(x: np.ndarray) -> np.ndarray:
    """(N, H, W) float32 -> the means of its 2 x 2 blocks, (N, ceil(H / 2), ceil(W / 2)) (an odd
    side reflected by one row or column first)."""
    H, W = x.shape[-2:]
    if H % 2 or W % 2:
        x = np.pad(x, ((0, 0), (0, H % 2), (0, W % 2)), mode="reflect" if min(H, W) > 1 else "edge")
    return bin2(x)


def up_bins(logits, shape: tuple[int, int]):
    """(N, h, w) torch logits of :func:`bins` -> (N, H, W): bilinear on the bins' grid (each bin
    between its two pixels: weights 3/4 and 1/4, edges replicated, as focus-fuse's ``up2``), on the
    logits' device, cropped to ``shape``."""
    import torch.nn.functional as F

    up = F.interpolate(logits[None], scale_factor=2, mode="bilinear", align_corners=False)[0]
    return up[:, : shape[0], : shape[1]]


def decide(logits, p: dict, prob: bool = False) -> dict:
    """Numpy maps from (N, H, W) torch logits: "expectation" (1-based E of the softmax),
    "confidence" (peak probability rescaled to [0, 1]) and "index" (the local rule's choice;
    the argmax for "matched", which maps E onto the argmax's range; None for "official", which
    needs E only); with ``prob``, also "prob", the (N, H, W) float32 softmax."""
    import torch

    with torch.inference_mode():
        n = logits.shape[0]
        prob_t = torch.softmax(logits, dim=0)
        w = torch.arange(1, n + 1, dtype=prob_t.dtype, device=prob_t.device)[:, None, None]
        e = (prob_t * w).sum(dim=0)
        rule = p["rule"]
        if rule == "smooth-argmax":
            idx = box_mean(prob_t, p["smooth"]).argmax(dim=0)
        elif rule == "official":
            idx = None
        else:  # argmax, and the argmax statistics of "matched"
            idx = logits.argmax(dim=0)
        peak = prob_t.amax(dim=0)
        conf = (peak - 1.0 / n) / (1.0 - 1.0 / n) if n > 1 else torch.ones_like(peak)
        out = {"expectation": e.cpu().numpy(), "confidence": conf.float().cpu().numpy(),
               "index": None if idx is None else idx.to(torch.int16).cpu().numpy()}
        if prob:
            out["prob"] = prob_t.float().cpu().numpy()
        return out


def global_stats(e: np.ndarray, argmax: np.ndarray, rule: str, n: int) -> dict:
    """The whole-image statistics of a global rule: E's range and the index range it maps to."""
    if rule == "official":
        return {"lo": float(e.min()), "hi": float(e.max()), "k0": 0.0, "k1": float(n - 1)}
    lo, hi = np.quantile(e, QUANTILES)
    k0, k1 = np.quantile(argmax, QUANTILES)
    return {"lo": float(lo), "hi": float(hi), "k0": float(k0), "k1": float(k1)}


def rescale(e: np.ndarray, stats: dict, n: int) -> np.ndarray:
    """round(k0 + (E - lo) / (hi - lo) * (k1 - k0)), clipped to the planes.

    With lo, hi = min, max of E and k0, k1 = 0, N - 1 this is the official rule, computed in
    float32 in the official order (ties to even)."""
    lo, hi, k0, k1 = stats["lo"], stats["hi"], stats["k0"], stats["k1"]
    if not hi > lo:
        return np.full(e.shape, int(round((k0 + k1) / 2)), np.int16)
    dm = (e - np.float32(lo)) / (np.float32(hi) - np.float32(lo))
    x = dm * np.float32(k1 - k0)
    if k0:
        x += np.float32(k0)
    return np.clip(np.rint(x), 0, n - 1).astype(np.int16)


def official_rule(e: np.ndarray, lo: float, hi: float, n: int) -> np.ndarray:
    """The authors' rule: round((E - lo) / (hi - lo) * (N - 1)) with lo, hi = min, max of E."""
    return rescale(e, {"lo": lo, "hi": hi, "k0": 0.0, "k1": float(n - 1)}, n)
