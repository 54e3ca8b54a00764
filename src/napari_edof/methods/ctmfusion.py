"""CTMFusion: a two-stream cascaded pair network's decision maps, fused over N planes.

The network (:mod:`napari_edof.nn.ctmfusion`) takes two luminance images (the Y of YCbCr; the
guide of an RGB stack is that luminance) and returns a decision map, the probability that the
first is the in-focus one. A stack of N planes is fused through
:func:`napari_edof.nn.pairwise.fuse_stack_pairwise` (``strategy``): by default every plane is
compared against one max-contrast reference composite, so the result does not depend on the
plane order and no decision feeds another; ``sequential`` is the order-dependent baseline and
``round-robin`` every pair both ways. The image is composed around the focus index
(``compose="pyramid"``, default: :func:`._prob_compose.compose_index`, the planes near it weighed
by their detail against the noise, as stackmff-v2's composition) or, with ``"select"`` (the
behaviour before 2026-12-07), the index picks per pixel the plane whose colour is gathered from the
sources (:func:`napari_edof.core.colour.gather`).

Two planes are the paper's case: the decision map ``D`` = P(plane 0 in focus) of the pair is
applied to the sources, ``D * plane0 + (1 - D) * plane1`` in every channel (``two_planes="soft"``,
the focus index is then ``1 - D``), or thresholded at 0.5 (``"hard"``: each pixel from one plane).

The guide window (tile + ``context``) is scaled to [0, 1] (``normalise``) and padded to a
multiple of 16 inside the network; the network's receptive field (window attention, cross-axis
attention along whole rows and columns) is the whole window, so tiles are blended with a
feathered overlap and tiled results differ slightly from whole-image ones.

torch is imported lazily (only when the method runs).
"""
from __future__ import annotations

import numpy as np

from ..core.colour import gather
from ..core.scaling import MODES as NORMALISE
from ..core.scaling import to_unit
from ..nn.learned import LearnedMethod, load_network
from ..nn.pairwise import REFERENCES, STRATEGIES
from ._prob_compose import compose_halo, compose_index, pair_decide, pair_multiple, pair_params
from ._registry import MethodSpec, Param, WeightsSpec, register

CITATION = ("Deng, X., Liu, X. et al., 'Endoscopic Depth-of-Field Expansion via Cascaded Network with "
            "Two-streamed Multi-scale Fusion', MICCAI; network written from the paper, "
            "weights trained by napari-edof on synthetic pairs (weights/ctmfusion_ours.md).")

#: weights a user can choose with ``weights=``; shipped in the package (no URL), hash-checked
MODELS: dict[str, WeightsSpec] = {
    "ours": WeightsSpec(
        filename="ctmfusion_ours.pt",
        urls=(),
        sha256="efb55a6c58c45cedc2b7ecc707e899c0ddbf36117597bee4fb8cf145034071ca",
        licence="BSD-3-Clause (napari-edof's own training; see the model card)",
        citation=CITATION,
    ),
}
#: the architecture of each shipped file (the training run's config "arch")
ARCH: dict[str, dict] = {
    "ours": {"dims": [16, 24, 32], "stages": 3, "window": 8, "highpass_gain": 10.0},
}


SPEC = MethodSpec(
    name="ctmfusion",
    summary="CTMFusion pair network: two-stream cascaded decision maps, N planes fused "
            "against a common reference.",
    family="learned",
    params=(
        *pair_params(),
        Param("strategy", str, "reference", label="Strategy",
              help="how the pair network fuses N planes: each plane against a common reference composite "
              "(order-free), sequential pairwise fusion (the order-dependent baseline), or every pair "
              "both ways (round-robin)", choices=STRATEGIES),
        Param("reference", str, "contrast", label="Reference composite", advanced=True,
              help="the reference composite of strategy=reference: "
              "max local contrast, or the per-pixel mean of the planes", choices=REFERENCES),
        Param("symmetric", bool, False, label="Symmetric score", advanced=True,
              help="score plane k as decide(k, ref) - decide(ref, k) (twice the "
              "network calls)"),
        Param("refine", int, 0, label="Refinement rounds", advanced=True,
              help="rounds in which the reference becomes the previous round's composite",
              min=0, max=4),
        Param("two_planes", str, "soft", label="With two planes", advanced=True,
              help="with two planes: the decision map applied to the sources "
              "(soft, the paper) or thresholded at 0.5 (hard)", choices=("soft", "hard")),
        Param("weights", str, "ours", label="Weights", advanced=True,
              help="network weights: ours (shipped, trained on synthetic pairs)",
              choices=tuple(MODELS)),
        Param("normalise", str, "range", label="Input scaling", advanced=True,
              help="input scaling to [0, 1]: 'range' (robust min/max of the tile's window, all planes "
              "together) or 'dtype' (integers divided by their maximum, floats as given)", choices=NORMALISE),
        Param("context", int, 32, label="Context (px)", advanced=True,
              help="extra pixels read around each tile (and reflected around the image)",
              min=0, max=1024),
        Param("batch", int, 0, label="Pairs per call", advanced=True,
              help="pairs per network call; 0: auto, 1 on a CPU and 8 on a GPU (memory grows with "
              "it: peak RSS 0.73 GB at 1, 2.0 GB at 4 for 8 x 512 x 512 on a CPU); on a CPU the "
              "reference strategy runs one plane per worker thread instead", min=0, max=256),
    ),
    halo=compose_halo,
    tile_multiple=pair_multiple,
    devices=("cuda", "mps", "cpu"),
    backend="torch",
    default_tile=512,
    default_overlap=32,
    weights=MODELS["ours"],
    citation=CITATION,
    paper="000",
)


_MODELS: dict = {}


def get_model(name: str, device: str):
    """The network with the ``name`` weights on ``device`` (loaded once, hash-checked)."""

    def make(sd):
        from ..nn.ctmfusion import build

        return build(ARCH[name])

    return load_network(_MODELS, (name, device), MODELS[name], make, device)


def make_decide(model, device: str):
    """``decide(a, b)`` for :func:`~napari_edof.nn.pairwise.fuse_stack_pairwise`: (B, H, W) float32
    pairs -> (B, H, W) float32 probability that ``a`` is in focus rather than ``b``."""
    import torch

    from ..nn.accel import to_device

    def decide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            ta = to_device(a, device)[:, None]
            tb = to_device(b, device)[:, None]
            return model.decision(ta, tb)[:, 0].float().cpu().numpy()

    from ..nn import accel

    if str(device).split(":")[0] == "cpu" and accel.PAIR_CPU_ROUTE:
        decide.against = lambda planes, ref: against_cpu(model, planes, ref, decide)
    return decide


def against_cpu(model, planes: np.ndarray, ref: np.ndarray, decide) -> np.ndarray:
    """The CPU route of the reference strategy: (N, H, W) planes against one (H, W) reference ->
    (N, H, W) decisions, one pair per network call as ``decide``, the planes in worker threads,
    each single-threaded (:func:`napari_edof.nn.accel.map_planes`). Under autocast
    (``precision="half"``) ``decide`` is used."""
    import torch

    from ..nn.accel import cpu_workers, map_planes

    if torch.is_autocast_enabled("cpu"):
        return decide(planes, np.broadcast_to(ref, planes.shape))
    tp = torch.from_numpy(planes)[:, None]
    tr = torch.from_numpy(ref)[None, None]
    out = np.empty(planes.shape, np.float32)

    def one(k):
        with torch.inference_mode():
            out[k] = model.decision(tp[k : k + 1], tr)[0, 0].numpy()

    map_planes(one, range(planes.shape[0]), cpu_workers(planes.shape[0]))
    return out


@register(SPEC)
class CTMFusionMethod(LearnedMethod):
    def __init__(self, params: dict, *, device: str = "cpu"):
        from ..nn.accel import pair_batch

        self.p = {**params, "batch": pair_batch(params["batch"], device)}
        self.device = device
        self.model = get_model(params["weights"], device)
        self.use_weights(MODELS[params["weights"]])
        self.decide = make_decide(self.model, device)

    def decision(self, guide: np.ndarray, dtype) -> np.ndarray:
        """The paper's decision map of a two-plane window: P(plane 0 in focus), (h, w) float32."""
        x = to_unit(guide, dtype, self.p["normalise"])
        return self.decide(x[:1], x[1:])[0]

    def index(self, guide: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
        """(focus index (h, w) int16, confidence (h, w) float32) of a window's (N, h, w) guide."""
        from ..nn.pairwise import fuse_stack_pairwise

        p = self.p
        x = to_unit(guide, dtype, p["normalise"])

        def window(x):
            return fuse_stack_pairwise(x, self.decide, strategy=p["strategy"], reference=p["reference"],
                                       symmetric=p["symmetric"], refine=p["refine"], batch=p["batch"])

        return pair_decide(window, x, p)

    def fuse_tile(self, planes, guide, *, halo, stats=None):
        crop = (slice(halo, -halo),) * 2 if halo else (slice(None),) * 2
        if planes.shape[0] == 2:
            d = self.decision(guide, planes.dtype)[crop]
            src = planes[(slice(None),) + crop]
            conf = np.abs(2 * d - 1).astype(np.float32)
            if self.p["two_planes"] == "soft":  # the paper: D * A + (1 - D) * B, every channel
                w = d[:, :, None] if src.ndim == 4 else d
                f = w * src[0].astype(np.float32) + (1 - w) * src[1].astype(np.float32)
                dt = planes.dtype
                if dt.kind in "iu":
                    info = np.iinfo(dt)
                    f = np.clip(np.rint(f), info.min, info.max)
                return {"fused": f.astype(dt), "index": (1 - d).astype(np.float32), "confidence": conf}
            idx = (d <= 0.5).astype(np.int16)
            return {"fused": gather(src, idx), "index": idx.astype(np.float32), "confidence": conf}
        whole, conf = self.index(guide, planes.dtype)
        idx, conf = whole[crop], conf[crop]
        if self.p["compose"] == "pyramid":  # (the whole window's index: the composition reads the halo)
            fused = compose_index(planes, guide, whole, halo)
        else:
            fused = gather(planes[(slice(None),) + crop], idx)
        return {"fused": fused, "index": idx.astype(np.float32), "confidence": conf.astype(np.float32)}
