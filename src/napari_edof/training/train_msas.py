"""The MSAS recipe: train the pair network on synthetic near/far pairs.

Each batch item is one of (drawn per item from ``numpy.random.default_rng([seed, 5, step, b])``,
so batches are pure functions of the step and runs resume exactly):

- a near/far pair from :class:`~napari_edof.training.datasets.PairDataset` (same scene and
  depth), target the decision mask (1 where the first image is in focus);
- two planes i != j of a synthetic N-plane stack (:class:`StackDataset`), target 1 where the
  true plane is nearer to i than to j (pixels halfway between are left out of the loss): the
  comparisons the pairs-to-stacks strategies ask of the model;
- a plane against the composite gathered at the true index (what the ``reference`` strategy
  compares with), target 0.5 where the plane is the true one and 0 elsewhere.

The two inputs are swapped at random (target ``1 - t``). A fraction ``range_p`` of items is
contrast-stretched as the method does at run time.

``data="realistic"`` (fine-tuning, with ``init``): the pairs come from stacks of the realistic
generator (:mod:`.realistic_data`: continuous defocus, occlusion, Poisson-Gaussian noise, 8/16-bit,
grey and RGB as their luminance guide; seeds disjoint from the quality benchmark's and the tuning
sets'), :data:`PAIRS_PER_STACK` pairs from each: two planes i != j (target 1 where the continuous
true plane is nearer to i; pixels where the two distances differ by less than half a plane, and
pixels with no focus information, left out) or, with probability ``mix[2] / (mix[1] + mix[2])``, a
plane against the composite gathered at the rounded true plane (target 0.5 where that is the
plane, 0 elsewhere; informative pixels only). Stack ``s`` of step ``k`` is drawn from
``numpy.random.default_rng([seed, 0x5EA2, k, s])``: runs resume exactly.

Loss: the paper trains on segmentation masks but does not write its loss down; we use binary
cross-entropy between the decision map and the target plus ``l1_weight`` x L1 between the
decided fusion ``d A + (1 - d) C`` and the target fusion (see the model card).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .train import (
    BATCH_SIZE,
    CKPT_EVERY,
    CROP,
    DATA,
    EMA_DECAY,
    INIT,
    LR,
    RANGE_P,
    THREADS,
    WARMUP,
    Option,
    recipe,
    seed_everything,
    stretch,
    train_loop,
)

KINDS = ("pair", "planes", "composite")


def make_item(rng: np.random.Generator, pairs, stacks, mix: tuple[float, float, float], range_p: float):
    """One training pair: (a, b, target, weight), each (H, W) float32."""
    kind = KINDS[rng.choice(3, p=np.asarray(mix, float) / sum(mix))]
    if kind == "pair":
        it = pairs[int(rng.integers(1 << 30))]
        a, b, t = it["near"], it["far"], it["mask"]
        w = np.ones_like(t)
    else:
        it = stacks[int(rng.integers(1 << 30))]
        st, idx = it["stack"], it["index"]
        n = st.shape[0]
        i = int(rng.integers(n))
        a = st[i]
        if kind == "planes":
            j = int(rng.choice([k for k in range(n) if k != i]))
            b = st[j]
            di, dj = np.abs(idx - i), np.abs(idx - j)
            t = (di < dj).astype(np.float32)
            w = (di != dj).astype(np.float32)
        else:
            b = np.take_along_axis(st, idx[None], axis=0)[0]
            t = np.where(idx == i, 0.5, 0.0).astype(np.float32)
            w = np.ones_like(t)
    if rng.random() < range_p:
        ab = stretch(np.stack([a, b]))
        a, b = ab[0], ab[1]
    return _swapped(rng, a, b, t, w)


def _swapped(rng: np.random.Generator, a, b, t, w):
    """The pair in a random order (target ``1 - t`` when swapped), as contiguous float32 arrays."""
    if rng.random() < 0.5:
        a, b, t = b, a, 1 - t
    return (np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32),
            np.ascontiguousarray(t, np.float32), np.ascontiguousarray(w, np.float32))


PAIRS_PER_STACK = 4  # pairs drawn from each realistic stack (rendering one costs about 0.3 s at 64 x 64)


def realistic_pairs(rng: np.random.Generator, crop: int, n_range: tuple, mix: tuple, range_p: float, count: int):
    """``count`` training pairs (a, b, target, weight) from one stack of the realistic generator."""
    from .realistic_data import realistic_item

    n = int(rng.integers(n_range[0], n_range[1] + 1))
    it = realistic_item(rng, n, crop, range_p)
    st, idx, info = it["stack"], it["index"], it["informative"]
    r = np.clip(np.rint(idx), 0, n - 1).astype(np.intp)
    comp = np.take_along_axis(st, r[None], axis=0)[0]
    p_comp = float(mix[2]) / max(float(mix[1]) + float(mix[2]), 1e-9)
    out = []
    for _ in range(count):
        i = int(rng.integers(n))
        a = st[i]
        if rng.random() < p_comp:
            b = comp
            t = np.where(r == i, 0.5, 0.0).astype(np.float32)
            w = info.astype(np.float32)
        else:
            j = int(rng.choice([k for k in range(n) if k != i]))
            b = st[j]
            di, dj = np.abs(idx - i), np.abs(idx - j)
            t = (di < dj).astype(np.float32)
            w = ((np.abs(di - dj) >= 0.5) & info).astype(np.float32)
        out.append(_swapped(rng, a, b, t, w))
    return out


def msas_loss(model, batch, l1_weight: float = 1.0):
    a, b, t, w = batch
    logit = model.logits(a, b)
    bce = (F.binary_cross_entropy_with_logits(logit, t, reduction="none") * w).sum() / w.sum().clamp(min=1)
    d = torch.sigmoid(logit)
    fused = d * a + (1 - d) * b
    target = t * a + (1 - t) * b
    l1 = ((fused - target).abs() * w).sum() / w.sum().clamp(min=1)
    with torch.no_grad():
        acc = (((d > 0.5) == (t > 0.5)).float() * w * (t != 0.5)).sum() / (w * (t != 0.5)).sum().clamp(min=1)
    loss = bce + l1_weight * l1
    return loss, {"loss": float(loss.detach()), "bce": float(bce.detach()), "l1": float(l1.detach()), "acc": float(acc)}


@recipe("msas", options=(
    BATCH_SIZE, CROP, LR, WARMUP, CKPT_EVERY, RANGE_P, INIT, DATA,
    Option("l1_weight", float, "weight of the L1 between the decided and the target fusion", minimum=0),
    Option("gcb_width", int, "channels of the global context block", minimum=1),
    EMA_DECAY, THREADS))
def train_msas(*, steps: int, out: str | Path, seed: int = 0, resume: bool = False, batch_size: int = 8,
               crop: int = 64, lr: float = 5e-4, warmup: int = 100, ckpt_every: int = 100,
               range_p: float = 0.5, l1_weight: float = 1.0, mix: tuple = (0.5, 0.35, 0.15),
               widths: tuple = (16, 24, 32), gcb_width: int = 8, ema_decay: float | None = 0.995,
               threads: int | None = None, scenes: dict | None = None, progress: bool = True,
               stop_after: int | None = None, init: str | None = None, data: str = "synthetic",
               n_range: tuple = (2, 10)) -> dict:
    """Train MSAS on synthetic pairs, or (``data="realistic"``) on pairs from the realistic generator's
    stacks, from scratch or from ``init`` (see the module docstring); writes ``out/weights.pt``."""
    from ..nn.msas import MSAS
    from .datasets import DEFAULT_SCENES, PairDataset, StackDataset
    from .train import load_init

    if data not in ("synthetic", "realistic"):
        raise ValueError(f"unknown training data {data!r}; choose synthetic or realistic")
    if threads:
        torch.set_num_threads(int(threads))
    scenes = dict(scenes or DEFAULT_SCENES)
    config = {"recipe": "msas", "steps": steps, "seed": seed, "batch_size": batch_size, "crop": crop, "lr": lr,
              "warmup": warmup, "range_p": range_p, "l1_weight": l1_weight, "mix": list(mix),
              "widths": list(widths), "gcb_width": gcb_width, "ema_decay": ema_decay, "scenes": scenes,
              "data": data, "init": str(init) if init else None}
    if data == "realistic":
        config["n_range"] = list(n_range)
        config.pop("scenes")
    seed_everything(seed)
    model = MSAS(widths=tuple(widths), gcb_width=gcb_width)
    if init:
        load_init(model, init)

    if data == "realistic":
        def make_batch(step: int):
            items = []
            for s_ in range(-(-batch_size // PAIRS_PER_STACK)):
                rng = np.random.default_rng([int(seed), 0x5EA2, int(step), s_])
                items += realistic_pairs(rng, crop, n_range, mix, range_p, PAIRS_PER_STACK)
            items = items[:batch_size]
            return tuple(torch.from_numpy(np.stack([it[k] for it in items])[:, None]) for k in range(4))
    else:
        pairs = PairDataset(seed=seed, crop=(crop, crop), scenes=scenes, rgb=False)
        stacks = StackDataset(seed=seed + 1, crop=(crop, crop), n_range=(3, 10), scenes=scenes)

        def make_batch(step: int):
            items = [make_item(np.random.default_rng([int(seed), 5, int(step), b]), pairs, stacks, mix, range_p)
                     for b in range(batch_size)]
            return tuple(torch.from_numpy(np.stack([it[k] for it in items])[:, None]) for k in range(4))

    return train_loop(model, make_batch, lambda m, b: msas_loss(m, b, l1_weight), steps=steps, out=out,
                      seed=seed, lr=lr, warmup=warmup, ckpt_every=ckpt_every, resume=resume,
                      ema_decay=ema_decay, progress=progress, config=config, stop_after=stop_after)
