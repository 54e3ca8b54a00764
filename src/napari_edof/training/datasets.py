"""Datasets of synthetic focus stacks and pairs (numpy only; torch's DataLoader can wrap them).

Item ``i`` of a dataset with seed ``s`` is drawn from ``numpy.random.default_rng([s, i])``, so
items are deterministic, independent of the order they are read in, and a training run that
reads batch ``t`` as items ``t * B .. t * B + B - 1`` resumes exactly.

- :class:`StackDataset`: ``ds[i]`` -> dict with ``stack`` (N, H, W) float32 in [0, 1] (or
  (N, H, W, 3) with ``rgb=True``), ``aif`` (H, W[, 3]) the clean all-in-focus image, ``index``
  (H, W) int64 ground-truth plane, ``depth`` (H, W) float32 normalised depth in [0, 1] (it runs
  with the plane index: stacks randomly reversed far-to-near get ``1 - depth``), ``n``,
  ``scene`` and ``info``. ``N`` is drawn per item from ``n_range``, or per batch by
  :meth:`StackDataset.batch` (networks batch stacks of equal N).
- :class:`PairDataset`: near/far pairs of the same scene and depth with the decision mask
  (``mask`` 1 where the near image is the sharp one), for the pair models of issue 5.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .scenes import SCENES, make_scene
from .synth import SynthConfig, synthesize

#: the training mix: general scenes plus microscopy-like textures and the fundus scene
DEFAULT_SCENES = {"dead_leaves": 0.25, "surface": 0.15, "photo": 0.15, "cells": 0.2, "vessels": 0.15,
                  "fundus": 0.1}
#: the held-out validation mix: microscopy-like stacks only
MICROSCOPY_SCENES = {"cells": 0.6, "vessels": 0.4}


def _choice(rng, weights: dict) -> str:
    names = list(weights)
    p = np.array([weights[k] for k in names], float)
    return names[rng.choice(len(names), p=p / p.sum())]


@dataclass
class StackDataset:
    """Synthetic focus stacks with ground truth (map-style: ``len`` and ``[i]``)."""

    seed: int = 0
    length: int = 1 << 30
    crop: tuple = (96, 96)
    n_range: tuple = (4, 12)                 # inclusive
    scenes: dict = field(default_factory=lambda: dict(DEFAULT_SCENES))
    rgb: bool = False
    augment: bool = True                     # random flips / transposes of the scene
    reverse_p: float = 0.5                   # with augment: planes far-to-near this often
    margin: int = 8                          # rendered around the crop, so blur sees real borders
    synth: SynthConfig = field(default_factory=SynthConfig)

    def __post_init__(self):
        bad = set(self.scenes) - set(SCENES)
        if bad:
            raise ValueError(f"unknown scenes {sorted(bad)}; known: {', '.join(SCENES)}")
        self.crop = (int(self.crop[0]), int(self.crop[1])) if not np.isscalar(self.crop) else (int(self.crop),) * 2

    def __len__(self) -> int:
        return self.length

    def rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([int(self.seed), int(i)])

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.length:
            raise IndexError(i)
        return self.item(i)

    def item(self, i: int, n: int | None = None) -> dict:
        rng = self.rng(i)
        n_draw = int(rng.integers(self.n_range[0], self.n_range[1] + 1))
        n = n_draw if n is None else int(n)
        name = _choice(rng, self.scenes)
        H, W = self.crop
        m = self.margin
        img, depth = make_scene(name, (H + 2 * m, W + 2 * m), rng)
        if self.augment:
            if rng.random() < 0.5:
                img, depth = img[::-1], depth[::-1]
            if rng.random() < 0.5:
                img, depth = img[:, ::-1], depth[:, ::-1]
            if H == W and rng.random() < 0.5:
                img, depth = img.transpose(1, 0, 2), depth.T
            img, depth = np.ascontiguousarray(img), np.ascontiguousarray(depth)
        s = synthesize(img, depth, n, rng, self.synth, rgb=self.rgb)
        if self.augment and rng.random() < self.reverse_p:  # the stack ordered far to near
            s.stack, s.index, s.depth = s.stack[::-1], n - 1 - s.index, 1 - s.depth
        sl = (slice(m, m + H), slice(m, m + W))
        return {
            "stack": np.ascontiguousarray(s.stack[(slice(None),) + sl]),
            "aif": np.ascontiguousarray(s.aif[sl]),
            "index": np.ascontiguousarray(s.index[sl]),
            "depth": np.ascontiguousarray(s.depth[sl]),
            "n": n,
            "scene": name,
            "info": s.info,
        }

    def batch(self, step: int, batch_size: int) -> dict:
        """Batch ``step``: items ``step * B ..``, all with the same N (drawn from ``[seed, step]``),
        stacked into arrays (``stack`` (B, N, H, W[, 3]), ``aif``, ``index``, ``depth``)."""
        n = int(np.random.default_rng([int(self.seed), 1 << 40, int(step)]).integers(
            self.n_range[0], self.n_range[1] + 1))
        items = [self.item(step * batch_size + b, n=n) for b in range(batch_size)]
        out = {k: np.stack([it[k] for it in items]) for k in ("stack", "aif", "index", "depth")}
        out["n"] = n
        out["scene"] = [it["scene"] for it in items]
        return out

    def iter_batches(self, batch_size: int, start: int = 0):
        """Batches ``start, start + 1, ...`` (an endless iterable view)."""
        step = start
        while True:
            yield self.batch(step, batch_size)
            step += 1


@dataclass
class PairDataset:
    """Near/far focus pairs of one scene and depth, with the decision mask (issue 5).

    ``ds[i]`` -> ``near`` and ``far`` (H, W[, 3]) float32, ``aif``, ``mask`` (H, W) float32 (1 where
    the near image is in focus, i.e. ground-truth plane 0 of the 2-plane stack), ``depth``.
    The split between near and far falls at a random depth (the depth is remapped by a monotone
    power so that the 2-bin split of the layered model lands there).
    """

    seed: int = 0
    length: int = 1 << 30
    crop: tuple = (96, 96)
    scenes: dict = field(default_factory=lambda: dict(DEFAULT_SCENES))
    rgb: bool = True
    split: tuple = (0.3, 0.7)
    synth: SynthConfig = field(default_factory=SynthConfig)

    def __post_init__(self):
        self._stacks = StackDataset(seed=self.seed, length=self.length, crop=self.crop, n_range=(2, 2),
                                    scenes=self.scenes, rgb=self.rgb, synth=self.synth)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.length:
            raise IndexError(i)
        rng = np.random.default_rng([int(self.seed), 2, int(i)])
        st = self._stacks
        name = _choice(rng, self.scenes)
        H, W = st.crop
        m = st.margin
        img, depth = make_scene(name, (H + 2 * m, W + 2 * m), rng)
        t = rng.uniform(*self.split)
        depth = np.power(depth, np.log(0.5) / np.log(t)).astype(np.float32)  # t -> 0.5
        s = synthesize(img, depth, 2, rng, self.synth, rgb=self.rgb)
        sl = (slice(m, m + H), slice(m, m + W))
        return {
            "near": np.ascontiguousarray(s.stack[0][sl]),
            "far": np.ascontiguousarray(s.stack[1][sl]),
            "aif": np.ascontiguousarray(s.aif[sl]),
            "mask": np.ascontiguousarray((s.index[sl] == 0).astype(np.float32)),
            "depth": np.ascontiguousarray(s.depth[sl]),
            "scene": name,
            "info": s.info,
        }


def validation_set(seed: int = 2024, count: int = 24, crop=(128, 128), n_range=(6, 12),
                   scenes: dict | None = None) -> list[dict]:
    """A fixed held-out set (microscopy-like by default): ``count`` stacks, seed disjoint from training
    by convention (training uses small seeds; the validation seed is fixed here)."""
    ds = StackDataset(seed=seed, crop=crop, n_range=n_range, scenes=scenes or dict(MICROSCOPY_SCENES),
                      augment=False)
    return [ds[i] for i in range(count)]
