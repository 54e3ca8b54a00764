"""The VAEEDOF recipe: train the Fusion U-Net in the frozen TAEF2 latent space.

Two phases, both seeded and resumable (``napari-edof train vaeedof --steps N --out DIR``):

1. **latent cache** (``DIR/cache/chunk_XXXX.pt``, ``chunk`` stacks a file): ``cache`` synthetic
   stacks (:class:`~napari_edof.training.datasets.StackDataset`, 128 x 128, 2..10 planes, half
   RGB, half grey replicated to RGB as the method does, a fraction ``range_p`` contrast-stretched
   as the method's ``normalise="range"``) are encoded once with the frozen encoder: every plane's
   latent, the all-in-focus target's latent, and each plane's sharpness score
   (:func:`~napari_edof.nn.vaeedof.plane_scores`), stored as float16. Stack ``i`` is drawn from
   ``[seed, i]`` only, so an interrupted cache continues where it stopped.
2. **training** (:func:`~napari_edof.training.train.train_loop`, EMA weights for inference):
   batch ``t`` takes ``batch_size`` cached stacks chosen from ``[seed, 3, t]``; their planes fill
   the seven slots by the method's rule (:func:`~napari_edof.nn.vaeedof.slots`: duplicated when
   fewer, the seven sharpest when more), except that a fraction ``subset_p`` of the stacks first
   loses random planes (so the target holds content no remaining plane shows sharply: the
   paper's "missing information" case), and a fraction ``reverse_p`` is ordered far to near.
   Loss: L1 between the fused latent and the all-in-focus latent.

The encoder is read from the hash-pinned weights cache (``$NAPARI_EDOF_WEIGHTS``; downloaded at
first use otherwise). ``DIR/weights.pt`` holds the EMA weights (float32); the shipped file is the
float16 copy (see ``weights/vaeedof_ours.md``).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .train import (
    BATCH_SIZE,
    CKPT_EVERY,
    CROP,
    EMA_DECAY,
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


def _to_rgb(stack: np.ndarray) -> np.ndarray:
    """(N, H, W[, 3]) -> (N, 3, H, W) float32 (grey replicated)."""
    if stack.ndim == 3:
        stack = np.repeat(stack[..., None], 3, axis=-1)
    return np.ascontiguousarray(stack.transpose(0, 3, 1, 2), np.float32)


def _guide(stack: np.ndarray) -> np.ndarray:
    if stack.ndim == 3:
        return stack
    from ..core.colour import LUMA

    return stack @ LUMA


def make_item(i: int, *, seed: int, crop: int, n_range, range_p: float, rgb_p: float, scenes=None) -> dict:
    """Synthetic stack ``i`` (from ``[seed, i]``), in [0, 1], as the method would see it."""
    from .datasets import DEFAULT_SCENES, StackDataset

    rng = np.random.default_rng([int(seed), 5, int(i)])
    rgb = bool(rng.random() < rgb_p)
    ds = StackDataset(seed=seed, crop=(crop, crop), n_range=tuple(n_range), rgb=rgb,
                      scenes=dict(scenes or DEFAULT_SCENES))
    it = ds.item(int(i))
    stack, aif = it["stack"], it["aif"]
    if rng.random() < range_p:  # the method's normalise="range": stretch the stack, target alike
        both = np.concatenate([stack, aif[None]])
        lo, hi = np.quantile(stack, (0.0005, 0.9995))
        if hi > lo:
            both = np.clip((both - np.float32(lo)) / np.float32(hi - lo), 0, 1).astype(np.float32)
        stack, aif = both[:-1], both[-1]
    return {"stack": stack, "aif": aif, "n": int(it["n"]), "rgb": rgb, "scene": it["scene"]}


def build_cache(out: Path, *, count: int, chunk: int, seed: int, crop: int, n_range, range_p: float,
                rgb_p: float, encoder, progress: bool = True, scenes=None) -> list[dict]:
    """Encode ``count`` stacks into ``out/cache`` (resumable by chunk); returns them all."""
    from ..nn.vaeedof import plane_scores

    folder = out / "cache"
    folder.mkdir(parents=True, exist_ok=True)
    items: list[dict] = []
    n_chunks = (count + chunk - 1) // chunk
    bar = None
    if progress:
        import sys

        from tqdm import tqdm

        bar = tqdm(total=count, unit="stack", file=sys.stderr, desc="vaeedof latents")
    for c in range(n_chunks):
        path = folder / f"chunk_{c:04d}.pt"
        lo, hi = c * chunk, min(count, (c + 1) * chunk)
        if path.is_file():
            got = torch.load(path, map_location="cpu", weights_only=True)
            if len(got["planes"]) == hi - lo:
                items += [{"planes": p, "aif": a, "scores": s.numpy()}
                          for p, a, s in zip(got["planes"], got["aif"], got["scores"])]
                if bar is not None:
                    bar.update(hi - lo)
                continue
        planes, aifs, scores = [], [], []
        for i in range(lo, hi):
            it = make_item(i, seed=seed, crop=crop, n_range=n_range, range_p=range_p, rgb_p=rgb_p, scenes=scenes)
            x = torch.from_numpy(_to_rgb(np.concatenate([it["stack"], it["aif"][None]])))
            with torch.no_grad():
                z = encoder(x).to(torch.float16)
            planes.append(z[:-1].clone())
            aifs.append(z[-1].clone())
            scores.append(torch.from_numpy(plane_scores(_guide(it["stack"]))))
            if bar is not None:
                bar.update(1)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"planes": planes, "aif": aifs, "scores": scores}, tmp)
        tmp.replace(path)
        items += [{"planes": p, "aif": a, "scores": s.numpy()} for p, a, s in zip(planes, aifs, scores)]
    if bar is not None:
        bar.close()
    return items


def choose_slots(item: dict, rng, *, subset_p: float, reverse_p: float, k: int = 7) -> np.ndarray:
    """The plane of each slot for one cached stack (training augmentations, then the method's rule)."""
    from ..nn.vaeedof import slots

    n = item["planes"].shape[0]
    keep = np.arange(n)
    if n > 2 and rng.random() < subset_p:  # drop planes: their content is now missing
        m = int(rng.integers(2, min(n, k) + 1)) if n > 2 else n
        keep = np.sort(rng.choice(n, size=m, replace=False))
    chosen = keep[slots(len(keep), item["scores"][keep], k)]
    if rng.random() < reverse_p:
        chosen = chosen[::-1].copy()
    return chosen


@recipe("vaeedof", options=(
    BATCH_SIZE, CROP, N_MIN, N_MAX,
    Option("cache", int, "synthetic stacks in the latent cache", minimum=1),
    Option("chunk", int, "stacks per cache file", minimum=1),
    LR, WARMUP, CKPT_EVERY, EMA_DECAY,
    Option("subset_p", float, "fraction of stacks that lose random planes", minimum=0),
    Option("reverse_p", float, "fraction of stacks ordered far to near", minimum=0),
    RANGE_P,
    Option("rgb_p", float, "fraction of RGB stacks (the rest grey)", minimum=0),
    THREADS))
def train_vaeedof(*, steps: int, out: str | Path, seed: int = 0, resume: bool = False, batch_size: int = 8,
                  crop: int = 128, n_min: int = 2, n_max: int = 10, cache: int = 500, chunk: int = 50,
                  lr: float = 1e-3, warmup: int = 100, ckpt_every: int = 100, ema_decay: float = 0.999,
                  subset_p: float = 0.3, reverse_p: float = 0.5, range_p: float = 0.5, rgb_p: float = 0.5,
                  threads: int | None = 1, progress: bool = True, stop_after: int | None = None) -> dict:
    """Build (or reuse) the latent cache, then train the Fusion U-Net (see the module docstring)."""
    from ..nn import taef2
    from ..nn.vaeedof import FusionUNet

    if threads:
        torch.set_num_threads(int(threads))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = {"recipe": "vaeedof", "steps": steps, "seed": seed, "batch_size": batch_size, "crop": crop,
              "n_range": [n_min, n_max], "cache": cache, "lr": lr, "warmup": warmup, "ema_decay": ema_decay,
              "subset_p": subset_p, "reverse_p": reverse_p, "range_p": range_p, "rgb_p": rgb_p}
    t0 = time.perf_counter()
    encoder = taef2.load_encoder()
    items = build_cache(out, count=cache, chunk=chunk, seed=seed, crop=crop, n_range=(n_min, n_max),
                        range_p=range_p, rgb_p=rgb_p, encoder=encoder, progress=progress)
    cache_s = time.perf_counter() - t0
    del encoder
    seed_everything(seed)
    model = FusionUNet()

    def make_batch(step: int):
        rng = np.random.default_rng([int(seed), 3, int(step)])
        pick = rng.choice(len(items), size=batch_size, replace=len(items) < batch_size)
        zs, ts = [], []
        for j in pick:
            it = items[int(j)]
            idx = choose_slots(it, rng, subset_p=subset_p, reverse_p=reverse_p, k=model.slots)
            zs.append(it["planes"][torch.from_numpy(idx)].float().flatten(0, 1))
            ts.append(it["aif"].float())
        return torch.stack(zs), torch.stack(ts)

    def loss_fn(m, batch):
        z, target = batch
        fused = m(z)
        loss = (fused - target).abs().mean()
        return loss, {"l1": float(loss.detach())}

    summary = train_loop(model, make_batch, loss_fn, steps=steps, out=out, seed=seed, lr=lr, warmup=warmup,
                         ckpt_every=ckpt_every, resume=resume, ema_decay=ema_decay, progress=progress,
                         config=config, stop_after=stop_after)
    summary["cache_seconds"] = cache_s
    return summary


def export_half(weights: str | Path, path: str | Path) -> None:
    """The shipped form: the float32 state dict of ``weights`` saved as float16."""
    sd = torch.load(str(weights), map_location="cpu", weights_only=True)
    torch.save({k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}, str(path))
