"""FMB + FN (retinal microsurgery): a network that *synthesises* the fused RGB image.

The network (:mod:`napari_edof.nn.retina_fn`): the sum-modified-Laplacian of every colour
channel (3x3 window, threshold 7) beside the RGB plane, a feature module per plane, a
max-selection across planes (any number of planes, in any order), nine refinement blocks, a
final conv to RGB; plus our selection skip (a per-plane score picks one plane per pixel, whose
RGB the final conv's output is added to). Two sets of our weights are shipped (``weights``):
``ours`` (default, with the skip: ``weights/fmb_fn_ours.pt``) and ``paper`` (the paper's FN as
written, trained the same way: ``weights/fmb_fn_paper_ours.pt``; better on noisy stacks, it
blurs fine colour texture); the model card ``weights/fmb_fn_ours.md`` says how both were
trained, what was scaled or substituted, and how they compare.

Input: colour stacks as they are (RGB; RGBA: the network sees RGB, alpha is taken from the
plane of the focus index); grey stacks replicated to 3 channels; other channel counts run
channel by channel as grey. Scaling to [0, 1] (``normalise``): ``range``, the robust min/max of
the whole image (a whole-image statistic: two passes when tiled, so tiles agree exactly), or
``dtype`` (integers divided by their maximum, floats as given, clipped to [0, 1]). The output is
mapped back to input units and, with ``clamp`` (default), clipped per pixel to the range of the
source planes there, so the fused image keeps the input's dtype and range and never holds a
value outside what the planes show at that pixel. ``output="snap"`` returns the source pixels
of the focus index instead (a selection guided by the network).

``output="pyramid"`` (what ``auto``, the default, means for the ``ours`` weights; issue 18): the
synthesised image copies the noise of whichever plane it follows and, trained on synthetic stacks,
lost 5-15 dB to the classical default on realistic noisy stacks. Here only the selection head runs
(FMB and the feature module per plane, not the nine refinement blocks): its softmax over the planes
is the prior of :func:`._prob_compose.pyramid_compose`, which weighs each plane's detail at every
scale against the noise measured there (planes within the noise averaged, a second depth gathered,
the finest detail Wiener-shrunk) as stackmff-v2's composition does; the index is the head's choice
(``select``) and the image is composed from the planes, not synthesised.

The network outputs an image, not a selection, so the focus index comes from one of three rules
(``index``; the default ``auto`` is ``select`` for ``ours`` and ``nearest`` for ``paper``):

- ``select``: the plane the selection head picked; confidence: its softmax
  probability over the planes, rescaled from 1/N..1 to 0..1;
- ``nearest``: the plane whose pixels are nearest the fused output over a
  ``(2 * window + 1)^2`` neighbourhood (sum of squared differences over channels); confidence
  ``1 - d_best / d_second``: 0 where two planes fit equally (e.g. no texture);
- ``provenance``: the plane that won the max-selection in feature space, majority over the
  feature channels; confidence: the winning plane's share of the channels, rescaled.

The masks and labels of the result are derived from that index. ``docs/retina_vae.md`` has the
measurements behind the defaults. torch is imported lazily (only when the method runs).
"""
from __future__ import annotations

import numpy as np

from ..core.errors import MethodError
from ..core.scaling import QUANTILES
from ..core.tiling import crop_halo
from ..nn.learned import LearnedMethod, load_network
from ._prob_compose import LEVELS, PAIR_SOFTNESS, pyramid_compose, pyramid_reach
from ._registry import MethodSpec, Param, WeightsSpec, register

CITATION = ("Zhou, X., Hao, L., Nie, Q., Zhou, Y., Wang, L., Hu, Y., Liu, J., 'A novel multi-focus "
            "fusion network for retinal microsurgery'; our implementation and weights.")

_LICENCE = "same as napari-edof (trained by the project on synthetic stacks; see the model card)"
#: our weights, shipped in the package (hash-checked like a download); model card:
#: weights/fmb_fn_ours.md. "ours": the network with the selection skip (default); "paper": the
#: paper's FN as written, trained the same way (better on noisy stacks, worse on fine colour texture).
MODELS: dict[str, WeightsSpec] = {
    "ours": WeightsSpec(filename="fmb_fn_ours.pt", urls=(),
                        sha256="01ff3a1099cc318d8ea4ce0c710a38a1b485043f2883cecee06bc350d13f59d4",
                        licence=_LICENCE, citation=CITATION),
    "paper": WeightsSpec(filename="fmb_fn_paper_ours.pt", urls=(),
                         sha256="abc853f36b0c0a57edb36c770e1cfcbb98ae52f8d4557372f14c98f85aec26bb",
                         licence=_LICENCE, citation=CITATION),
}
#: whether each network has the selection head
HAS_HEAD = {"ours": True, "paper": False}
WEIGHTS = MODELS["ours"]

#: receptive radius of the shipped network (FMB 2 + two feature convs + 9 blocks x 2 + last conv)
RADIUS = 23
#: receptive radius of the selection head's scores (FMB 2 + two feature convs)
SCORE_RADIUS = 4
#: the shipped networks' width (must match the weights)
WIDTH = 24
INDEX_RULES = ("auto", "select", "nearest", "provenance")
NORMALISE = ("range", "dtype")
OUTPUTS = ("auto", "pyramid", "network", "snap")


def index_rule(p: dict) -> str:
    """The index rule in effect: ``auto`` is ``select`` with a selection head, else ``nearest``."""
    if p["index"] == "auto":
        return "select" if HAS_HEAD[p["weights"]] else "nearest"
    return p["index"]


def output_mode(p: dict) -> str:
    """The output in effect: ``auto`` is ``pyramid`` where the index is the selection head's choice
    (weights ``ours``, index ``auto`` or ``select``), else ``network``."""
    if p["output"] == "auto":
        return "pyramid" if index_rule(p) == "select" else "network"
    return p["output"]


def _pyramid(p: dict) -> bool:
    """Whether only the selection head runs (the composition around its probabilities, index select)."""
    return output_mode(p) == "pyramid"


def _halo(p: dict) -> int:
    if _pyramid(p):  # the composition reads the head's probabilities this far out
        return SCORE_RADIUS + pyramid_reach(LEVELS)
    return RADIUS + (int(p["window"]) if index_rule(p) == "nearest" else 0)


SPEC = MethodSpec(
    name="fmb-fn",
    summary="FMB + FN network (retinal microsurgery): SML focus measures per colour channel, "
            "max-selected plane features, refined to a synthesised RGB image.",
    family="learned",
    params=(
        Param("weights", str, "ours", label="Weights", advanced=True,
              help="network: ours (the paper's FMB + FN with a selection skip; shipped) or paper (the paper's FN as "
              "written, trained the same way; shipped)", choices=tuple(MODELS)),
        Param("index", str, "auto", label="Focus index from",
              help="focus-index rule: 'select', the plane the network's selection head picked; 'nearest', the plane "
              "nearest the fused output over a small window; 'provenance', the plane that won the network's "
              "max-selection (majority over feature channels); 'auto': select, or nearest for a network "
              "without the head", choices=INDEX_RULES),
        Param("window", int, 2, label="Window radius", advanced=True,
              help="neighbourhood radius of index='nearest' (pixels)", min=0, max=8),
        Param("normalise", str, "range", label="Input scaling", advanced=True,
              help="input scaling to [0, 1]: 'range' (robust min/max of the whole image; two passes when tiled) "
              "or 'dtype' (integers divided by their maximum, floats as given)", choices=NORMALISE),
        Param("clamp", bool, True, label="Clamp to the sources", advanced=True,
              help="clip each fused pixel to the range of the source planes there"),
        Param("output", str, "auto", label="Output",
              help="fused image: 'pyramid', the planes composed at every scale around the selection head's "
              "probabilities, weighed with their detail against the noise (the index is the head's choice; the "
              "refinement network is not run); 'network', the network's synthesised RGB (the paper); 'snap', "
              "the source pixels of the focus index; 'auto': pyramid where the index is the selection head's "
              "choice (weights 'ours', index auto or select), network otherwise", choices=OUTPUTS),
    ),
    halo=_halo,
    tile_multiple=lambda p: 2 ** LEVELS if _pyramid(p) else 1,
    devices=("cuda", "mps", "cpu"),
    backend="torch",
    default_tile=512,
    default_overlap=0,
    synthesises=lambda p: output_mode(p) == "network",  # "snap" returns source pixels, "pyramid" composes them
    weights=WEIGHTS,
    citation=CITATION,
    paper="001",
)

_MODELS: dict = {}


def get_model(name: str, device: str):
    """The network with our shipped ``name`` weights on ``device`` (loaded once, hash-checked)."""

    def make(sd):
        from ..nn.retina_fn import FusionNet

        m = FusionNet(width=WIDTH, skip=HAS_HEAD[name])
        assert m.receptive_radius == RADIUS
        return m

    return load_network(_MODELS, (name, device), MODELS[name], make, device)


def _crop(a: np.ndarray, c: int, axes=(1, 2)) -> np.ndarray:
    return crop_halo(a, c, axes)


def dtype_range(dtype) -> tuple[float, float]:
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return float(max(info.min, 0)), float(info.max)
    return 0.0, 1.0


def group_input(x: np.ndarray, grp: tuple[int, ...]) -> np.ndarray:
    """The network's RGB input for one channel group of (..., C) ``x``: the group itself, or its one
    channel replicated to three."""
    return x[..., list(grp)] if len(grp) == 3 else np.repeat(x[..., grp[0]:grp[0] + 1], 3, axis=-1)


def channel_groups(c: int) -> list[tuple[int, ...]]:
    """How C channels are fed to the RGB network: RGB(A) as one group (alpha is not fed), anything
    else channel by channel (each replicated to 3)."""
    if c in (3, 4):
        return [(0, 1, 2)]
    return [(k,) for k in range(c)]


def box_sum(a: np.ndarray, r: int) -> np.ndarray:
    """Sum over (2r+1)^2 windows of the last two axes, 'valid' (the result is 2r smaller)."""
    if not r:
        return a
    c = np.cumsum(np.cumsum(a, axis=-2, dtype=np.float64), axis=-1)
    c = np.pad(c, [(0, 0)] * (a.ndim - 2) + [(1, 0), (1, 0)])
    k = 2 * r + 1
    return (c[..., k:, k:] - c[..., :-k, k:] - c[..., k:, :-k] + c[..., :-k, :-k]).astype(np.float32)


def nearest_index(src: np.ndarray, fused: np.ndarray, r: int):
    """(Z, h, w, C) sources and (h, w, C) output -> index and confidence (h - 2r, w - 2r): the plane
    with the smallest windowed sum of squared differences; confidence 1 - d_best / d_second."""
    d = ((src - fused[None]) ** 2).sum(axis=-1)
    d = box_sum(d, r)
    if d.shape[0] == 1:
        return np.zeros(d.shape[1:], np.int16), np.ones(d.shape[1:], np.float32)
    idx = d.argmin(axis=0)
    part = np.partition(d, 1, axis=0)
    best, second = part[0], part[1]
    conf = np.where(second > 0, 1.0 - best / np.maximum(second, 1e-30), 0.0)
    return idx.astype(np.int16), np.clip(conf, 0, 1).astype(np.float32)


def provenance_index(prov: np.ndarray, n: int):
    """(K, h, w) winning planes of K feature channels -> majority plane and its rescaled share."""
    counts = np.stack([(prov == k).sum(axis=0) for k in range(n)])
    idx = counts.argmax(axis=0)
    share = counts.max(axis=0) / prov.shape[0]
    conf = (share - 1.0 / n) / (1.0 - 1.0 / n) if n > 1 else np.ones_like(share)
    return idx.astype(np.int16), np.clip(conf, 0, 1).astype(np.float32)


def select_index(sels: np.ndarray, probs: np.ndarray, n: int):
    """(G, h, w) planes picked by the selection head for G channel groups and their probabilities ->
    index (the majority; one group: its choice) and confidence (the mean probability of the groups
    agreeing with it, rescaled from 1/N..1 to 0..1)."""
    if sels.shape[0] == 1:
        idx, p = sels[0], probs[0]
    else:
        counts = np.stack([(sels == k).sum(axis=0) for k in range(n)])
        idx = counts.argmax(axis=0)
        agree = sels == idx[None]
        p = (probs * agree).sum(axis=0) / sels.shape[0]
    conf = (p - 1.0 / n) / (1.0 - 1.0 / n) if n > 1 else np.ones_like(p)
    return idx.astype(np.int16), np.clip(conf, 0, 1).astype(np.float32)


@register(SPEC)
class FMBFN(LearnedMethod):
    #: the whole-image range (normalise="range") is a first pass (set per instance in ``__init__``)
    first_pass: tuple[str, ...] = ()

    def __init__(self, params: dict, *, device: str = "cpu"):
        if output_mode(params) == "pyramid":  # (refused before the network loads)
            if not HAS_HEAD[params["weights"]]:
                raise MethodError("fmb-fn: output='pyramid' needs a network with a selection head (weights='ours'); "
                                  "use output='network' or 'snap' with weights='paper'")
            if index_rule(params) != "select":
                raise MethodError(f"fmb-fn: output='pyramid' composes around the selection head's choice; index="
                                  f"{params['index']!r} needs output='network' or 'snap'")
        self.p = params
        self.device = device
        self.model = get_model(params["weights"], device)
        self.use_weights(MODELS[params["weights"]])  # (the spec's ``weights`` names the default ones)
        self.first_pass = ("lo", "hi") if params.get("normalise", "range") == "range" else ()

    # -- the whole-image range (normalise="range") --------------------------------------------------
    def pass1(self, planes, guide, *, halo):
        """Per pixel, the smallest and largest value over planes and channels (the tile's core)."""
        core = _crop(planes, halo)
        return {"lo": core.min(axis=(0, 3)).astype(np.float32), "hi": core.max(axis=(0, 3)).astype(np.float32)}

    def reduce(self, maps):
        return {"lo": float(np.quantile(maps["lo"], QUANTILES[0])), "hi": float(np.quantile(maps["hi"], QUANTILES[1]))}

    def _range(self, planes, halo, stats) -> tuple[float, float]:
        if self.p["normalise"] == "dtype":
            return dtype_range(planes.dtype)
        if stats is None:  # called without pass 1: the window's own range
            stats = self.reduce(self.pass1(planes, None, halo=0))
        lo, hi = stats["lo"], stats["hi"]
        if not hi > lo:
            hi = lo + 1.0
        return lo, hi

    # -- the network --------------------------------------------------------------------------------
    def run(self, x: np.ndarray):
        """(Z, h, w, 3) float32 in [0, 1] -> numpy (rgb (h, w, 3), provenance (K, h, w), selection
        (h, w), its probability (h, w))."""
        import torch

        with torch.inference_mode():
            y, prov, sel, prob = self.model.infer(self._tensor(x))
        if sel is None:  # a network without the selection head (the paper's FN)
            return y[0].permute(1, 2, 0).float().cpu().numpy(), prov[0].cpu().numpy(), None, None
        return (y[0].permute(1, 2, 0).float().cpu().numpy(), prov[0].cpu().numpy(),
                sel[0].cpu().numpy(), prob[0].float().cpu().numpy())

    def _tensor(self, x: np.ndarray):
        """(Z, h, w, 3) float32 -> the network's (1, Z, 3, h, w) input on its device."""
        from ..nn.accel import to_device

        return to_device(x.transpose(0, 3, 1, 2), self.device, x.dtype)[None]

    def probs(self, x: np.ndarray) -> np.ndarray:
        """(Z, h, w, 3) float32 in [0, 1] -> (Z, h, w) float32: the selection head's probabilities."""
        return self.model.plane_probs(self._tensor(x))[0].float().cpu().numpy()

    def _compose(self, planes, guide, x, halo):
        """output='pyramid': the planes composed around the head's probabilities over the whole
        window (every channel group's, averaged); index and confidence as ``select``."""
        Z, C = planes.shape[0], planes.shape[-1]
        groups = channel_groups(C)
        prob = None
        for grp in groups:
            q = self.probs(group_input(x, grp))
            prob = q if prob is None else prob + q
        if len(groups) > 1:
            prob /= np.float32(len(groups))
        fused = pyramid_compose(planes, guide, prob, levels=LEVELS, softness=PAIR_SOFTNESS)
        core = _crop(prob, halo)
        idx = core.argmax(axis=0).astype(np.int16)
        p = core.max(axis=0)
        conf = (p - 1.0 / Z) / (1.0 - 1.0 / Z) if Z > 1 else np.ones_like(p)
        fused = _crop(fused, halo, (0, 1)) if halo else fused
        if C == 4:  # alpha: not fed to the network, taken from the chosen plane (as with the network's image)
            raw = _crop(planes, halo)
            fused[..., 3] = np.take_along_axis(raw[..., 3], idx[None].astype(np.intp), axis=0)[0]
        return {"fused": fused, "index": idx.astype(np.float32), "confidence": np.clip(conf, 0, 1).astype(np.float32)}

    def fuse_tile(self, planes, guide, *, halo, stats=None):
        Z, h, w, C = planes.shape
        lo, hi = self._range(planes, halo, stats)
        scale = np.float32(1.0 / (hi - lo))
        x = np.clip((planes.astype(np.float32) - np.float32(lo)) * scale, 0.0, 1.0)
        if _pyramid(self.p):
            return self._compose(planes, guide, x, halo)
        rule, r = index_rule(self.p), int(self.p["window"])
        keep = halo - (r if rule == "nearest" else 0)  # the network's output is needed this far out
        out = np.zeros((h - 2 * keep, w - 2 * keep, C), np.float32)
        provs, sels, probs = [], [], []
        for grp in channel_groups(C):
            y, prov, sel, prob = self.run(group_input(x, grp))
            y, prov = _crop(y, keep, (0, 1)), _crop(prov, keep)
            sels.append(None if sel is None else _crop(sel, keep, (0, 1)))
            probs.append(None if prob is None else _crop(prob, keep, (0, 1)))
            if len(grp) == 3:
                out[..., list(grp)] = y
            else:
                out[..., grp[0]] = y.mean(axis=-1)
            provs.append(prov)
        src = _crop(x, keep)  # normalised sources under the output
        np.clip(out, 0, 1, out=out)
        if rule == "nearest":
            cols = [k for g in channel_groups(C) for k in g]
            idx, conf = nearest_index(src[..., cols], out[..., cols], r)
            out = _crop(out, r, (0, 1))
        elif rule == "select":
            if sels[0] is None:
                raise MethodError("fmb-fn: index='select' needs a network with a selection head; use 'nearest'")
            idx, conf = select_index(np.stack(sels), np.stack(probs), Z)
        else:
            idx, conf = provenance_index(np.concatenate(provs, axis=0), Z)
        fused = out * np.float32(hi - lo) + np.float32(lo)  # back to input units
        raw = _crop(planes, halo)
        if C == 4:  # alpha: not fed to the network, taken from the chosen plane
            fused[..., 3] = np.take_along_axis(raw[..., 3], idx[None].astype(np.intp), axis=0)[0]
        if output_mode(self.p) == "snap":
            fused = np.take_along_axis(raw, idx[None, ..., None].astype(np.intp), axis=0)[0]
        elif self.p["clamp"]:
            np.clip(fused, raw.min(axis=0), raw.max(axis=0), out=fused)
        return {"fused": fused, "index": idx.astype(np.float32), "confidence": conf}
