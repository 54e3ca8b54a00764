"""Training recipe for the retinal FMB + FN network: ``napari-edof train fmb-fn``.

Data: RGB synthetic stacks (:class:`~napari_edof.training.datasets.StackDataset`, ``rgb=True``)
from a mix of fundus scenes (the procedural fundus, zoomed fundus views, crops of
scikit-image's CC0 fundus photograph, all on bowl depths) and the general scenes
(:data:`SCENES`); a fraction ``grey_p`` of the stacks is made grey (luminance replicated to
3 channels, as the method feeds grey stacks) and a fraction ``range_p`` is contrast-stretched
as the method's default ``normalise="range"`` does at run time.

Loss (Sec. 2.3, Eq. 7, each term weighted, paper: all 1):

- ``L_aif``: L1 between the fused and the all-in-focus image;
- ``L_perceptual``: MSE between features of the fused and the all-in-focus image. No ImageNet
  backbone is available offline: the features are those of the frozen FLUX.2 tiny autoencoder's
  encoder, its first :data:`PERCEPTUAL_LAYERS` layers (full resolution conv + block, then the
  stride-2 conv: 64 channels at 1/2), read from ``taef2_encoder.pth`` during training only.
  Without that file (or without :mod:`napari_edof.nn.taef2`) a fixed filter bank stands in
  (:class:`FixedFeatures`), and the run's ``config.json`` says which was used;
- ``L_edge``: L1 between Sobel gradient magnitudes (:func:`~napari_edof.training.losses.sobel_magnitude`,
  differentiable) instead of the paper's Canny edges;
- ``L_identity``: the identity loss of CycleGAN as the paper uses it: a stack of ``identity_n``
  copies of the all-in-focus image must come out unchanged (L1).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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

#: the training mix: fundus scenes (half) and the general scenes
SCENES = {"fundus": 0.15, "fundus_view": 0.2, "retina_photo": 0.1, "dead_leaves": 0.15, "photo": 0.1,
          "surface": 0.1, "cells": 0.05, "vessels": 0.05, "colour_noise": 0.1}
#: how many of the taef2 encoder's layers give the perceptual features
PERCEPTUAL_LAYERS = 3
TAEF2_FILE = "taef2_encoder.pth"


def default_taef2_path() -> Path | None:
    """``taef2_encoder.pth`` in ``$NAPARI_EDOF_WEIGHTS``, or in the ``shared/weights`` folder beside
    the repository (training only; the package never ships it)."""
    cands = []
    env = os.environ.get("NAPARI_EDOF_WEIGHTS")
    if env:
        cands.append(Path(env) / TAEF2_FILE)
    cands.append(Path(__file__).resolve().parents[4] / "shared" / "weights" / TAEF2_FILE)
    return next((p for p in cands if p.is_file()), None)


class FixedFeatures(nn.Module):
    """A frozen stand-in feature extractor from fixed filters: per channel, Sobel x/y, a Laplacian
    and a difference of Gaussians, at full and half resolution (no learned weights)."""

    def __init__(self):
        super().__init__()
        sx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]) / 8
        lap = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]) / 4
        g = torch.tensor([1.0, 2, 1]) / 4
        dog = torch.zeros(3, 3)
        dog[1, 1] = 1
        dog = dog - g[:, None] * g[None, :]
        k = torch.stack([sx, sx.T, lap, dog])[:, None]  # (4, 1, 3, 3)
        self.register_buffer("k", k)

    def forward(self, x):
        B, C, H, W = x.shape
        outs = []
        for s in (1, 2):
            y = x if s == 1 else F.avg_pool2d(x, 2)
            h, w = y.shape[-2:]
            f = F.conv2d(F.pad(y.reshape(B * C, 1, h, w), (1, 1, 1, 1), mode="replicate"), self.k)
            outs.append(F.interpolate(f.reshape(B, 4 * C, h, w), size=(H, W)) if s > 1 else f.reshape(B, 4 * C, h, w))
        return torch.cat(outs, 1) * 4


def perceptual_extractor(path: str | Path | None = None) -> tuple[nn.Module, str]:
    """(frozen feature extractor, description): the first layers of the taef2 encoder when its
    weights and :mod:`napari_edof.nn.taef2` are available, else :class:`FixedFeatures`."""
    path = Path(path) if path else default_taef2_path()
    if path is not None and Path(path).is_file():
        try:
            from ..nn import taef2
        except ImportError:
            taef2 = None
        if taef2 is not None:
            enc = taef2.load_encoder(path)
            m = nn.Sequential(*list(enc.children())[:PERCEPTUAL_LAYERS])
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
            return m, f"taef2 encoder layers 0..{PERCEPTUAL_LAYERS - 1} ({Path(path).name})"
    m = FixedFeatures().eval()
    return m, "fixed filter bank (Sobel, Laplacian, DoG at 2 scales): taef2 encoder not available"


def retina_fn_loss(model, batch, feat: nn.Module, *, w_perceptual: float = 1.0, w_edge: float = 1.0,
                   w_identity: float = 1.0, identity_n: int = 2) -> tuple[torch.Tensor, dict]:
    """Eq. 7 with weights: L1 + w_p * perceptual + w_e * edge + w_i * identity; (loss, metrics)."""
    from .losses import sobel_magnitude

    x, aif = batch  # (B, N, 3, H, W), (B, 3, H, W)
    pred = model(x)
    l1 = (pred - aif).abs().mean()
    loss = l1
    m = {"l1": float(l1.detach())}
    if w_perceptual:
        with torch.no_grad():
            ft = feat(aif)
        perc = F.mse_loss(feat(pred), ft)
        loss = loss + w_perceptual * perc
        m["perc"] = float(perc.detach())
    if w_edge:
        edge = (sobel_magnitude(pred) - sobel_magnitude(aif)).abs().mean()
        loss = loss + w_edge * edge
        m["edge"] = float(edge.detach())
    if w_identity:
        same = aif[:, None].expand(-1, identity_n, -1, -1, -1)
        ident = (model(same) - aif).abs().mean()
        loss = loss + w_identity * ident
        m["ident"] = float(ident.detach())
    with torch.no_grad():
        mse = F.mse_loss(pred.clamp(0, 1), aif)
        m["psnr"] = float(10 * torch.log10(1 / mse.clamp_min(1e-10)))
    m["loss"] = float(loss.detach())
    return loss, m


def stretch_pair(stack: np.ndarray, aif: np.ndarray, q: float = 0.0005):
    """The method's ``normalise="range"`` scaling: robust min/max of the stack (quantiles q, 1 - q)
    to [0, 1], applied to the stack and (the same map) to the all-in-focus target."""
    lo, hi = np.quantile(stack, (q, 1 - q))
    if not hi > lo:
        return stack, aif
    f = lambda a: np.clip((a - np.float32(lo)) * np.float32(1 / (hi - lo)), 0, 1).astype(np.float32)  # noqa: E731
    return f(stack), f(aif)


def make_dataset(seed: int, crop: int, n_min: int, n_max: int, scenes: dict | None = None, augment: bool = True):
    from .datasets import StackDataset

    return StackDataset(seed=seed, crop=(crop, crop), n_range=(n_min, n_max), scenes=dict(scenes or SCENES),
                        rgb=True, augment=augment)


def prepare(stack: np.ndarray, aif: np.ndarray, rng, grey_p: float, range_p: float):
    """One (N, H, W, 3) stack and (H, W, 3) target -> the network's (N, 3, H, W), (3, H, W)."""
    from .scenes import luminance

    if rng.random() < grey_p:
        stack = np.repeat(luminance(stack)[..., None], 3, axis=-1)
        aif = np.repeat(luminance(aif)[..., None], 3, axis=-1)
    if rng.random() < range_p:
        stack, aif = stretch_pair(stack, aif)
    return (np.ascontiguousarray(stack.transpose(0, 3, 1, 2), np.float32),
            np.ascontiguousarray(aif.transpose(2, 0, 1), np.float32))


@recipe("fmb-fn", options=(
    BATCH_SIZE, CROP, N_MIN, N_MAX, LR, WARMUP, CKPT_EVERY,
    Option("width", int, "the network's width (none: the method's)", minimum=1),
    Option("w_perceptual", float, "weight of the perceptual loss", minimum=0),
    Option("w_edge", float, "weight of the edge (Sobel) loss", minimum=0),
    Option("w_identity", float, "weight of the identity loss", minimum=0),
    Option("identity_n", int, "copies of the all-in-focus image in the identity loss's stack", minimum=1),
    Option("grey_p", float, "fraction of stacks made grey", minimum=0),
    RANGE_P, EMA_DECAY,
    Option("taef2", str, "the taef2 encoder file for the perceptual features (none: looked up; a fixed "
                         "filter bank without it)"),
    INIT,
    Option("skip", bool, "the network's skip connection"),
    THREADS))
def train_retina_fn(*, steps: int, out: str | Path, seed: int = 0, resume: bool = False, batch_size: int = 4,
                    crop: int = 64, n_min: int = 2, n_max: int = 8, lr: float = 1e-3, warmup: int = 100,
                    ckpt_every: int = 50, width: int | None = None, w_perceptual: float = 1.0,
                    w_edge: float = 1.0, w_identity: float = 1.0, identity_n: int = 2, grey_p: float = 0.25,
                    range_p: float = 0.5, ema_decay: float | None = 0.995, taef2: str | None = None,
                    init: str | None = None, skip: bool = True,
                    threads: int | None = 1, scenes: dict | None = None, progress: bool = True,
                    stop_after: int | None = None) -> dict:
    """Train (or fine-tune, with ``init`` = a weights file) the FMB + FN network on synthetic RGB
    stacks (see the module docstring)."""
    from ..nn.retina_fn import WIDTH, FusionNet
    from .train import load_init

    if threads:
        torch.set_num_threads(int(threads))
    feat, feat_desc = perceptual_extractor(taef2)
    width = int(width or WIDTH)
    config = {"recipe": "fmb-fn", "steps": steps, "seed": seed, "batch_size": batch_size, "crop": crop,
              "n_range": [n_min, n_max], "lr": lr, "warmup": warmup, "width": width, "w_perceptual": w_perceptual,
              "w_edge": w_edge, "w_identity": w_identity, "identity_n": identity_n, "grey_p": grey_p,
              "range_p": range_p, "ema_decay": ema_decay, "perceptual": feat_desc,
              "init": str(init) if init else None, "skip": bool(skip),
              "scenes": dict(scenes or SCENES)}
    seed_everything(seed)
    model = FusionNet(width=width, skip=skip)
    if init:
        load_init(model, init)
    ds = make_dataset(seed, crop, n_min, n_max, config["scenes"])

    def make_batch(step: int):
        b = ds.batch(step, batch_size)
        rng = np.random.default_rng([int(seed), 11, int(step)])
        xs, ys = zip(*(prepare(b["stack"][i], b["aif"][i], rng, grey_p, range_p) for i in range(batch_size)))
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))

    def loss_fn(m, batch):
        return retina_fn_loss(m, batch, feat, w_perceptual=w_perceptual, w_edge=w_edge, w_identity=w_identity,
                              identity_n=identity_n)

    return train_loop(model, make_batch, loss_fn, steps=steps, out=out, seed=seed, lr=lr, warmup=warmup,
                      ckpt_every=ckpt_every, resume=resume, progress=progress, config=config,
                      ema_decay=ema_decay, stop_after=stop_after)
