"""MSAS: a Siamese pair network's decision map, extended to stacks.

For two planes this is the paper's pipeline: the network (:mod:`napari_edof.nn.msas`) gives a
decision map ``d`` (probability that plane 0 is the in-focus one), binarised at 0.5, small
regions (under ``min_area`` of the window) flipped, and each pixel taken from the plane the
final map names (colour gathered from the source planes; the network sees the guide, luminance
for RGB, scaled to [0, 1]).

For N > 2 planes the pair model runs through :func:`napari_edof.nn.pairwise.fuse_stack_pairwise`
(``strategy``): by default every plane is compared against one common max-contrast reference
composite (order-independent, no error accumulation), or the sequential chain the StackMFF-V2
paper criticises, or a round-robin. The small-area filter then acts on the focus index: regions
of one plane's mask under ``min_area`` take the plane of the nearest kept region (for two
planes this is exactly the paper's flip). The image is then composed around that index
(``compose="pyramid"``, default: :func:`._prob_compose.compose_index`, the planes near it weighed
by their detail against the noise, as stackmff-v2's composition) or gathered from the chosen plane
(``"select"``, every pixel a source pixel: the behaviour before 2026-12-07).

Tiling: the attention blocks pool over their whole input and the small-area filter counts areas
within what it sees, so each tile is processed with ``context`` pixels around it (reflected at
the image border) and ``min_area`` is a fraction of that window (tile + 2 x context per side),
not of the whole image: on images larger than one tile (default 512 px) a region is "small"
relative to its tile's window. Tiles overlap and are feathered (``default_overlap``).

torch is imported lazily (only when the method runs).
"""
from __future__ import annotations

import hashlib
import weakref

import numpy as np

from ..core.colour import gather
from ..core.scaling import MODES as NORMALISE
from ..core.scaling import to_unit
from ..nn.learned import LearnedMethod, load_network
from ..nn.pairwise import STRATEGIES
from ._prob_compose import compose_halo, compose_index, pair_decide, pair_multiple, pair_params
from ._registry import MethodSpec, Param, WeightsSpec, register

CITATION = ("Multi-focus image fusion via multi-scale attention and Siamese networks; "
            "network re-implemented from the paper's text, weights trained by napari-edof on synthetic pairs.")

WEIGHTS = WeightsSpec(
    filename="msas_ours.pt",
    urls=(),
    sha256="d11b3f0465a4361cd20f162bc585e57a4a1777e102eb4d20582a279b8e994153",
    licence="BSD-3-Clause (napari-edof's own training; see weights/msas_ours.md)",
    citation=CITATION,
)

SPEC = MethodSpec(
    name="msas",
    summary="MSAS Siamese pair network: decision map, binarised, small regions flipped; "
            "stacks through an order-free pairs-to-stack strategy.",
    family="learned",
    params=(
        *pair_params(),
        Param("strategy", str, "reference", label="Strategy",
              help="how more than two planes are fused with the pair model: each plane against one common "
              "max-contrast reference (order-free), the sequential chain (plane 0 with 1, the result with "
              "2, ...), or a round-robin of all pairs", choices=STRATEGIES),
        Param("refine", int, 0, label="Refinement rounds", advanced=True,
              help="extra rounds of the reference strategy against the previous round's "
              "composite", min=0, max=3),
        Param("min_area", float, 0.01, label="Smallest region", advanced=True,
              help="regions smaller than this fraction of the window (tile + context) "
              "are flipped to their surroundings (0: off)", min=0.0, max=0.5),
        Param("normalise", str, "range", label="Input scaling", advanced=True,
              help="input scaling to [0, 1]: 'range' (robust min/max of the window) or 'dtype' (divide integers "
              "by their maximum, floats as given)", choices=NORMALISE),
        Param("context", int, 32, label="Context (px)", advanced=True,
              help="extra pixels read around each tile (and reflected around the image)",
              min=0, max=1024),
        Param("batch", int, 0, label="Pairs per call", advanced=True,
              help="pairs per network call; 0: auto, 1 on a CPU (fastest and smallest there: "
              "16 x 512 x 512 took 4.4 s and 0.58 GB extra at 1, 12.3 s and 2.5 GB at 8) and 8 on a GPU; "
              "on a CPU the reference strategy runs one plane per worker thread instead",
              min=0, max=256),
    ),
    halo=compose_halo,
    tile_multiple=pair_multiple,
    devices=("cuda", "mps", "cpu"),
    backend="torch",
    default_tile=512,
    default_overlap=32,
    weights=WEIGHTS,
    citation=CITATION,
    paper="004",
)

_MODELS: dict = {}
#: model -> its CPU inference copy (:func:`make_decide`'s CPU route), kept while the model lives
_CPU_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def get_model(device: str):
    """The network with the shipped weights on ``device`` (loaded once, hash-checked)."""

    def make(sd):
        from ..nn.msas import MSAS

        return MSAS(**config_from_state_dict(sd))

    return load_network(_MODELS, device, WEIGHTS, make, device)


def config_from_state_dict(sd: dict) -> dict:
    """The widths of an MSAS state dict (so that a card's scaled widths need no extra file)."""
    w0 = sd["encoder.l0.0.0.weight"].shape[0]
    w1 = sd["encoder.l1.1.0.weight"].shape[0]
    w2 = sd["encoder.l2.1.0.weight"].shape[0]
    gw = sd["gcb.body.0.weight"].shape[0]
    depth = sum(1 for k in sd if k.startswith("gcb.body.") and k.endswith(".weight") and sd[k].ndim == 4)
    return {"channels": sd["gcb.body.0.weight"].shape[1], "widths": (w0, w1, w2), "gcb_width": gw,
            "gcb_depth": depth}


def normalise_guide(guide: np.ndarray, dtype: np.dtype, mode: str) -> np.ndarray:
    """(Z, h, w) float32 guide in input units -> network input in [0, 1] (float32)."""
    return to_unit(guide, dtype, mode)


def make_decide(model, device: str):
    """A numpy ``decide(a, b)`` (B, H, W) -> (B, H, W) probability that ``a`` is in focus.

    When every ``b`` of a call is the same image (the order-free strategy compares each plane with
    one reference), that image's branch features are computed once and kept for the next calls
    with the same image: N + 1 branch passes per window instead of 2 N. Kept per thread: on a GPU
    the engine runs two tiles at once, each with its own reference.
    """
    import threading

    import torch

    from ..nn.accel import to_device

    local = threading.local()

    def decide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            ta = to_device(a, device)
            if all(np.array_equal(b[0], b[i]) for i in range(1, b.shape[0])):
                key = (b[0].shape, hashlib.blake2b(np.ascontiguousarray(b[0], np.float32).data,
                                                    digest_size=16).digest())
                kept = getattr(local, "kept", None)
                if kept is None:
                    kept = local.kept = {}
                if kept.get("key") != key:
                    tb = to_device(b[:1], device)
                    kept.clear()
                    kept.update(key=key, features=model.encode_padded(tb))
                return model.decide_encoded(ta, kept["features"]).float().cpu().numpy()
            tb = to_device(b, device)
            return model.decide(ta, tb).float().cpu().numpy()

    from ..nn import accel

    if str(device).split(":")[0] == "cpu" and accel.PAIR_CPU_ROUTE:
        def against(planes, ref):
            split = _CPU_COPIES.get(model)
            if split is None:  # built on first use, once per model
                from ..nn.msas import ReferenceSplit, cpu_inference_copy

                split = _CPU_COPIES[model] = ReferenceSplit(cpu_inference_copy(model))
            return against_cpu(split, planes, ref, decide)

        decide.against = against
    return decide


def against_cpu(split, planes: np.ndarray, ref: np.ndarray, decide) -> np.ndarray:
    """The CPU route of the reference strategy: (N, H, W) planes against one (H, W) reference ->
    (N, H, W) decisions. The network is ``decide``'s to round-off: ``split`` is a
    :class:`~napari_edof.nn.msas.ReferenceSplit` of its
    :func:`~napari_edof.nn.msas.cpu_inference_copy`, so the reference's branch and its share of
    the decision head are computed once per window. The work runs in worker threads, each
    single-threaded (see :func:`napari_edof.nn.accel.map_planes`), as small jobs: the reference's
    encoding, each plane's encoding, each plane's head (once its encoding and the reference are
    done; heads first, so few planes' features are held at once), which keeps both workers busy
    to the end. Under autocast (``precision="half"``) ``decide`` is used."""
    import threading

    import torch

    from ..nn.accel import cpu_workers, single_threaded
    from ..nn.msas import _pad

    if torch.is_autocast_enabled("cpu"):
        return decide(planes, np.broadcast_to(ref, planes.shape))
    model = split.m
    n, h, w = planes.shape
    out = np.empty(planes.shape, np.float32)
    encodes = [-1] + list(range(n))  # -1: the reference
    feats: dict = {}  # plane -> features waiting for their head
    state = {"parts": None, "heads": n, "error": None}
    cond = threading.Condition()

    def encode(k):
        x = torch.from_numpy(ref[None] if k < 0 else planes[k : k + 1])
        with torch.inference_mode():
            f = model.encode(_pad(x).contiguous(memory_format=torch.channels_last))
            return split.prepare(f) if k < 0 else f

    def head(k, fa):
        with torch.inference_mode():
            out[k] = torch.sigmoid(split.logits(fa, state["parts"]))[0, 0, :h, :w].numpy()

    def next_job():
        with cond:
            while state["error"] is None:
                if state["parts"] is not None and feats:
                    k = min(feats)
                    return "head", k, feats.pop(k)
                if encodes:
                    return "encode", encodes.pop(0), None
                if state["heads"] == 0:
                    return None
                cond.wait()
            return None

    def work():
        while True:
            job = next_job()
            if job is None:
                return
            kind, k, fa = job
            try:
                r = encode(k) if kind == "encode" else head(k, fa)
            except BaseException as e:  # noqa: BLE001 (re-raised in the caller)
                with cond:
                    state["error"] = e
                    cond.notify_all()
                return
            with cond:
                if kind == "head":
                    state["heads"] -= 1
                elif k < 0:
                    state["parts"] = r
                else:
                    feats[k] = r
                cond.notify_all()

    workers = cpu_workers(n + 1)
    if workers <= 1:
        work()
    else:
        with single_threaded():
            threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    if state["error"] is not None:
        raise state["error"]
    return out


def decide_stack(x: np.ndarray, decide, p: dict) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) guide in [0, 1] -> (index int16, confidence float32) over the whole window,
    small-area filtered (the paper's pipeline for N = 2)."""
    from ..nn.pairwise import fuse_stack_pairwise, small_area_filter

    n = x.shape[0]
    if n == 1:
        return np.zeros(x.shape[1:], np.int16), np.ones(x.shape[1:], np.float32)
    if n == 2:  # the paper: d = P(plane 0 in focus), B = d > 0.5, D = filtered B, plane 1 - D
        d = decide(x[:1], x[1:])[0]
        idx = (d <= 0.5).astype(np.int16)
        conf = np.abs(2 * d - 1).astype(np.float32)
    else:
        idx, conf = fuse_stack_pairwise(x, decide, strategy=p["strategy"], refine=p["refine"], batch=p["batch"])
        idx = idx.astype(np.int16)
    if p["min_area"] > 0:
        filt = small_area_filter(idx, p["min_area"])
        conf = np.where(filt != idx, np.float32(0), conf)
        idx = filt
    return idx, np.clip(conf, 0, 1).astype(np.float32)


@register(SPEC)
class MSASMethod(LearnedMethod):
    def __init__(self, params: dict, *, device: str = "cpu"):
        from ..nn.accel import pair_batch

        self.p = {**params, "batch": pair_batch(params["batch"], device)}
        self.device = device
        self.model = get_model(device)
        self.use_weights(WEIGHTS)
        self.decide = make_decide(self.model, device)

    def fuse_tile(self, planes, guide, *, halo, stats=None):
        x = normalise_guide(guide, planes.dtype, self.p["normalise"])
        whole, conf = pair_decide(lambda xw: decide_stack(xw, self.decide, self.p), x, self.p)
        idx, conf = self.crop(whole, halo), self.crop(conf, halo)
        if self.p["compose"] == "pyramid" and planes.shape[0] > 2:  # (two planes: the paper's map)
            fused = compose_index(planes, guide, whole, halo)  # (the whole window's index: it reads the halo)
        else:
            fused = gather(self.crop(planes, halo, (1, 2)), idx)
        return {"fused": fused, "index": idx.astype(np.float32), "confidence": conf}
