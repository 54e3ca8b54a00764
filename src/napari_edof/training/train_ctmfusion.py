"""Training recipe for CTMFusion: ``napari-edof train ctmfusion``.

Loss (the paper's Eq. 1-4), with ``F = D a + (1 - D) b`` the fused image of the decision map ``D``:

- ``L_int  = mean |F - (a + b) / 2|``
- ``L_text = mean | |grad F| - max(|grad a|, |grad b|) |`` (Sobel magnitude,
  :func:`~napari_edof.training.losses.sobel_magnitude`)
- ``L_ssim = 0.5 (1 - SSIM(F, a)) + 0.5 (1 - SSIM(F, b))`` (:func:`ssim`: Gaussian window 11,
  sigma 1.5, valid region, data range 1)
- ``L = 20 L_int + 20 L_text + 50 L_ssim`` (:func:`ctmfusion_loss`), plus ``ce_weight`` x a
  per-pixel binary cross-entropy of the decision logits against the synthetic ground truth
  (0: the paper's loss alone). The paper trains on pairs without ground-truth maps; ours have it.

Data: pairs from the project's synthetic stacks (grey, i.e. the luminance the network sees):

- ``pair_p`` of the items: near/far pairs of one scene and depth
  (:class:`~napari_edof.training.datasets.PairDataset`, target: the near-is-sharp mask);
- the rest: two planes ``i != j`` of a stack of ``n_min..n_max`` planes
  (:class:`~napari_edof.training.datasets.StackDataset`); with probability ``ref_p`` the second
  input is instead the stack's max-contrast composite (:func:`napari_edof.nn.pairwise.contrast_composite`),
  as the ``reference`` strategy of the stack method compares each plane against it. The target
  is 1 where the first input's plane is nearer the pixel's true plane than the second's, 0 where
  it is farther, 0.5 where they are equally near (the same plane).

A fraction ``range_p`` of the items is contrast-stretched jointly (:func:`napari_edof.nn.ctmfusion.normalise`,
what the method does to every tile at run time); the order of the two inputs is random.
Batch ``t`` is a pure function of ``(seed, t)`` (resumable).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .losses import sobel_magnitude
from .train import (
    BATCH_SIZE,
    CKPT_EVERY,
    CROP,
    EMA_DECAY,
    INIT,
    LR,
    N_MAX,
    N_MIN,
    RANGE_P,
    THREADS,
    WARMUP,
    Option,
    recipe,
    seed_everything,
    train_loop,
)

#: the paper's loss weights (lambda_1, lambda_2, lambda_3) for L_int, L_text, L_ssim
LOSS_WEIGHTS = (20.0, 20.0, 50.0)


# ------------------------------------------------------------------------------------ losses
def _gauss_window(size: int, sigma: float, dtype, device) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(x: torch.Tensor, y: torch.Tensor, *, window: int = 11, sigma: float = 1.5,
         data_range: float = 1.0, reduce: bool = True) -> torch.Tensor:
    """SSIM of (B, C, H, W) images (Wang et al. 2004): Gaussian window, K1 = 0.01, K2 = 0.03,
    over the valid region (no padding). ``reduce``: the mean over everything; otherwise per image."""
    C1, C2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    B, C, H, W = x.shape
    window = min(window, H, W)
    k = _gauss_window(window, sigma, x.dtype, x.device)
    xs, ys = x.reshape(B * C, 1, H, W), y.reshape(B * C, 1, H, W)
    mx, my = F.conv2d(xs, k), F.conv2d(ys, k)
    sxx = F.conv2d(xs * xs, k) - mx * mx
    syy = F.conv2d(ys * ys, k) - my * my
    sxy = F.conv2d(xs * ys, k) - mx * my
    s = ((2 * mx * my + C1) * (2 * sxy + C2)) / ((mx * mx + my * my + C1) * (sxx + syy + C2))
    return s.mean() if reduce else s.reshape(B, -1).mean(dim=1)


def paper_terms(fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> dict:
    """L_int, L_text and L_ssim of the paper (Eq. 2-4) for (B, 1, H, W) images."""
    l_int = (fused - 0.5 * (a + b)).abs().mean()
    l_text = (sobel_magnitude(fused) - torch.maximum(sobel_magnitude(a), sobel_magnitude(b))).abs().mean()
    l_ssim = 0.5 * (1 - ssim(fused, a)) + 0.5 * (1 - ssim(fused, b))
    return {"int": l_int, "text": l_text, "ssim": l_ssim}


def ctmfusion_loss(logits: torch.Tensor, a: torch.Tensor, b: torch.Tensor, target: torch.Tensor | None = None,
                   *, weights=LOSS_WEIGHTS, ce_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """``20 L_int + 20 L_text + 50 L_ssim`` of ``F = sigmoid(logits) a + (1 - sigmoid(logits)) b``,
    plus ``ce_weight`` x binary cross-entropy of ``logits`` against ``target`` (B, 1, H, W) in
    [0, 1] (soft targets allowed); returns (loss, metrics)."""
    d = torch.sigmoid(logits)
    fused = d * a + (1 - d) * b
    terms = paper_terms(fused, a, b)
    loss = weights[0] * terms["int"] + weights[1] * terms["text"] + weights[2] * terms["ssim"]
    metrics = {k: float(v.detach()) for k, v in terms.items()}
    if target is not None:
        with torch.no_grad():
            decided = target != 0.5
            if decided.any():
                metrics["acc"] = float(((d > 0.5) == (target > 0.5))[decided].float().mean())
        if ce_weight:
            ce = F.binary_cross_entropy_with_logits(logits, target)
            loss = loss + ce_weight * ce
            metrics["ce"] = float(ce.detach())
    metrics["loss"] = float(loss.detach())
    return loss, metrics


# -------------------------------------------------------------------------------------- data
def pair_target(i: int, j, index: np.ndarray) -> np.ndarray:
    """1 where plane ``i`` is nearer the true plane ``index`` than ``j`` (an int or a per-pixel
    plane map), 0 where farther, 0.5 where equally near (float32)."""
    di = np.abs(index - i)
    dj = np.abs(index - np.asarray(j))
    return np.where(di < dj, 1.0, np.where(di > dj, 0.0, 0.5)).astype(np.float32)


class PairBatches:
    """Batch ``t`` of training pairs (see the module docstring): ``(a, b, target)`` tensors
    (B, 1, H, W), a pure function of ``(seed, t)``."""

    def __init__(self, *, seed: int = 0, crop: int = 96, n_min: int = 2, n_max: int = 8,
                 pair_p: float = 0.3, ref_p: float = 0.4, range_p: float = 0.5, scenes: dict | None = None):
        from .datasets import DEFAULT_SCENES, PairDataset, StackDataset

        self.seed, self.pair_p, self.ref_p, self.range_p = int(seed), pair_p, ref_p, range_p
        scenes = dict(scenes or DEFAULT_SCENES)
        self.pairs = PairDataset(seed=seed, crop=(crop, crop), scenes=scenes, rgb=False)
        self.stacks = StackDataset(seed=seed, crop=(crop, crop), n_range=(max(2, n_min), max(2, n_min, n_max)),
                                   scenes=scenes)

    def item(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from ..nn.ctmfusion import normalise
        from ..nn.pairwise import contrast_composite, local_energy

        rng = np.random.default_rng([self.seed, 11, int(k)])
        if rng.random() < self.pair_p:
            it = self.pairs[k]
            a, b, t = it["near"], it["far"], it["mask"]
        else:
            it = self.stacks[k]
            st, idx = it["stack"], it["index"]
            n = st.shape[0]
            i = int(rng.integers(n))
            if rng.random() < self.ref_p:
                e = local_energy(st)
                ref_idx = e.argmax(axis=0)
                a, b = st[i], contrast_composite(st, e)
                t = pair_target(i, ref_idx, idx)
            else:
                j = int(rng.choice([x for x in range(n) if x != i]))
                a, b, t = st[i], st[j], pair_target(i, j, idx)
        if rng.random() < 0.5:  # the order of the inputs
            a, b, t = b, a, 1 - t
        if rng.random() < self.range_p:
            a, b = normalise(np.stack([a, b]))
        return (np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32),
                np.ascontiguousarray(t, np.float32))

    def batch(self, step: int, batch_size: int):
        items = [self.item(step * batch_size + q) for q in range(batch_size)]
        a, b, t = (torch.from_numpy(np.stack([it[c] for it in items])[:, None]) for c in range(3))
        return a, b, t


# ------------------------------------------------------------------------------------ recipe
@recipe("ctmfusion", options=(
    BATCH_SIZE, CROP, N_MIN, N_MAX, LR, WARMUP, CKPT_EVERY, INIT,
    Option("ce_weight", float, "weight of the decision map's cross-entropy added to the paper's loss (0: the "
                               "paper's loss only)", minimum=0),
    RANGE_P,
    Option("pair_p", float, "fraction of near/far pairs (the rest: two planes of a stack)", minimum=0),
    Option("ref_p", float, "fraction of plane pairs whose second input is the max-contrast composite", minimum=0),
    THREADS,
    Option("stages", int, "the network's transformer stages", minimum=1),
    Option("window", int, "the attention window side", minimum=1),
    Option("highpass_gain", float, "gain of the high-pass input (0: Y alone; none: the method's)", minimum=0),
    EMA_DECAY))
def train_ctmfusion(*, steps: int, out: str | Path, seed: int = 0, resume: bool = False, batch_size: int = 8,
                    crop: int = 64, n_min: int = 2, n_max: int = 8, lr: float = 1e-3, warmup: int = 50,
                    ckpt_every: int = 100, init: str | None = None, ce_weight: float = 20.0, range_p: float = 0.5,
                    pair_p: float = 0.3, ref_p: float = 0.4, threads: int | None = 1, dims=None, stages: int = 3,
                    window: int = 8, highpass_gain: float | None = None, ema_decay: float | None = 0.995,
                    progress: bool = True,
                    stop_after: int | None = None) -> dict:
    """Train CTMFusion from scratch (or from ``init``) on synthetic pairs; see the module docstring.

    ``ce_weight`` weights the supervised decision-map cross-entropy added to the paper's loss
    (0: the paper's loss alone). The network's size is ``dims`` (widths at 1/4, 1/8, 1/16),
    ``stages``, ``window`` and ``highpass_gain`` (0: Y alone); the run's ``config.json`` records them.
    """
    from ..nn.ctmfusion import DIMS, HIGHPASS_GAIN, build
    from .train import load_init

    if threads:
        torch.set_num_threads(int(threads))
    arch = {"dims": list(dims or DIMS), "stages": int(stages), "window": int(window),
            "highpass_gain": float(HIGHPASS_GAIN if highpass_gain is None else highpass_gain)}
    config = {"recipe": "ctmfusion", "steps": steps, "seed": seed, "batch_size": batch_size, "crop": crop,
              "n_range": [n_min, n_max], "lr": lr, "warmup": warmup, "ce_weight": ce_weight, "range_p": range_p,
              "pair_p": pair_p, "ref_p": ref_p, "loss_weights": list(LOSS_WEIGHTS), "ema_decay": ema_decay,
              "init": str(init) if init else None, "arch": arch}
    seed_everything(seed)
    model = build(arch)
    if init:
        load_init(model, init)
    data = PairBatches(seed=seed, crop=crop, n_min=n_min, n_max=n_max, pair_p=pair_p, ref_p=ref_p,
                       range_p=range_p)

    def loss_fn(m, batch):
        a, b, t = batch
        return ctmfusion_loss(m(a, b), a, b, t, ce_weight=ce_weight)

    return train_loop(model, lambda step: data.batch(step, batch_size), loss_fn, steps=steps, out=out, seed=seed,
                      lr=lr, warmup=warmup, ckpt_every=ckpt_every, resume=resume, progress=progress,
                      config=config, stop_after=stop_after, ema_decay=ema_decay)
