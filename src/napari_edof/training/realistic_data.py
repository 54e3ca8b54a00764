"""Training batches drawn from the realistic generator (:mod:`.realistic`), for the stack networks.

The quality benchmark's stacks (:func:`.realistic.benchmark_configs`, seed 7100) and the tuning sets
(seeds 9100 and 9300) draw their stacks' seeds below ``2**30``; the training stacks here draw theirs
from ``[2**40, 2**50)``, so no training stack can be a benchmark or tuning stack.

Batch ``step`` of a run with seed ``s`` is a pure function of ``(s, step)`` (resumable runs see the
same data). Each stack: a random scene (photo / bright field / fluorescence), colour (RGB stacks are
turned into the luminance guide, as the fusion methods do), noise level (strong / moderate / weak),
8 or 16 bits, rendered at the crop size; random flips, transposes and plane order. The network input
is scaled to [0, 1] as the method does at run time (``normalise="range"``: robust min/max of the
window; or ``"dtype"``: the dtype's maximum), and the all-in-focus truth by the same affine map.
"""
from __future__ import annotations

import numpy as np

from ..core.scaling import unit_range
from .realistic import COLOURS, NOISE, SCENES, Config, render
from .scenes import LUMA

SEED_LO, SEED_HI = 1 << 40, 1 << 50


def realistic_item(rng: np.random.Generator, n: int, crop: int, range_p: float = 0.8) -> dict:
    """One training stack: ``stack`` (N, H, W) float32 network input, ``planes`` the same before the
    clipping to [0, 1] of ``"range"`` (what the composition averages at run time), ``aif`` (H, W) the truth in the
    same units, ``index`` (H, W) the continuous true plane coordinate, ``informative`` (H, W) bool."""
    scene = str(rng.choice(SCENES))
    colour = str(rng.choice(COLOURS))
    noise = str(rng.choice(list(NOISE)))
    bits = int(rng.choice([8, 16]))
    cfg = Config(seed=int(rng.integers(SEED_LO, SEED_HI)), scene=scene, colour=colour, noise=noise, bits=bits,
                 n_planes=int(n), shape=(crop, crop))
    s = render(cfg)
    planes = s.planes.astype(np.float32)
    truth = s.truth.astype(np.float32)
    if planes.ndim == 4:  # RGB: the luminance guide, as the methods
        planes = planes @ LUMA
        truth = truth @ LUMA
    index, info = s.index, s.informative
    # augment: flips, transpose, plane order
    if rng.random() < 0.5:
        planes, truth, index, info = planes[:, ::-1], truth[::-1], index[::-1], info[::-1]
    if rng.random() < 0.5:
        planes, truth, index, info = planes[:, :, ::-1], truth[:, ::-1], index[:, ::-1], info[:, ::-1]
    if rng.random() < 0.5:
        planes, truth, index, info = planes.transpose(0, 2, 1), truth.T, index.T, info.T
    if rng.random() < 0.5:
        planes, index = planes[::-1], (n - 1) - index
    mode = "range" if rng.random() < range_p else "dtype"
    lo, hi = unit_range(planes, s.planes.dtype, mode)
    sc = np.float32(1.0 / (hi - lo))
    raw = (planes - np.float32(lo)) * sc
    x = np.clip(raw, 0, 1) if mode == "range" else raw
    return {"stack": np.ascontiguousarray(x, np.float32),
            "planes": np.ascontiguousarray(raw, np.float32),
            "aif": np.ascontiguousarray((truth - np.float32(lo)) * sc, np.float32),
            "index": np.ascontiguousarray(np.clip(index, 0, n - 1), np.float32),
            "informative": np.ascontiguousarray(info),
            "label": cfg.label}


def realistic_batch(seed: int, step: int, batch_size: int, crop: int, n_range: tuple, range_p: float = 0.8) -> dict:
    """Batch ``step`` of a run with ``seed``: ``batch_size`` stacks of one N drawn from ``n_range``
    (inclusive), arrays stacked (``stack`` (B, N, H, W), ``aif``, ``index``, ``informative``)."""
    rng = np.random.default_rng([int(seed), 0x5EA1, int(step)])
    n = int(rng.integers(n_range[0], n_range[1] + 1))
    items = [realistic_item(rng, n, crop, range_p) for _ in range(batch_size)]
    out = {k: np.stack([it[k] for it in items]) for k in ("stack", "planes", "aif", "index", "informative")}
    out["n"] = n
    return out
