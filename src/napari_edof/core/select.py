"""Per-pixel selection helpers shared by the multiscale classical methods (pyramid, wavelet).

Each works on one plane's map at a time, so memory stays a few maps whatever the number of planes.
"""
from __future__ import annotations

import numpy as np

from .lazy import LazyModule

ndi = LazyModule("scipy.ndimage")


def box_sum(a: np.ndarray, r: int) -> np.ndarray:
    """Sum over a (2r+1)^2 window of the last two axes (direct sums: position-independent)."""
    if r == 0:
        return a
    ones = np.ones(2 * r + 1)
    a = ndi.correlate1d(a, ones, axis=-2, mode="reflect")
    return ndi.correlate1d(a, ones, axis=-1, mode="reflect")


def majority(sel: np.ndarray) -> np.ndarray:
    """3x3 majority filter of a label map: the most frequent label of each neighbourhood.

    A tie keeps the pixel's own label when it is among the most frequent. Works on the nine
    shifted maps, so its cost does not grow with the number of planes.
    """
    h, w = sel.shape
    pad = np.pad(sel, 1, mode="reflect")
    nb = [pad[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)]
    counts = np.zeros((9, h, w), np.int8)
    for i in range(9):
        for j in range(i, 9):
            eq = nb[i] == nb[j]
            counts[i] += eq
            if j != i:
                counts[j] += eq
    top = counts.max(axis=0)
    best = np.take_along_axis(np.stack(nb), counts.argmax(axis=0)[None], axis=0)[0]
    return np.where(counts[4] == top, sel, best)


class RunningArgmax:
    """Per-pixel argmax over planes fed one at a time (the first plane wins ties, as np.argmax),
    with the runner-up value for the confidence."""

    def __init__(self):
        self.best = self.second = self.arg = None

    def update(self, e: np.ndarray, z: int) -> None:
        if self.best is None:
            self.best = e.astype(np.float32, copy=True)
            self.second = np.zeros_like(self.best)
            self.arg = np.zeros(e.shape, np.int16)
            return
        upd = e > self.best
        np.maximum(self.second, np.minimum(e, self.best), out=self.second)
        np.maximum(self.best, e, out=self.best)
        self.arg[upd] = z

    def confidence(self) -> np.ndarray:
        """``1 - second best / best`` (0 where every plane is flat)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.best > 0, 1.0 - self.second / self.best, 0.0).astype(np.float32)


def local_variance(a: np.ndarray, r: int) -> np.ndarray:
    n = (2 * r + 1) ** 2
    m = box_sum(a, r) / n
    return box_sum(a * a, r) / n - m * m


def median3(a: np.ndarray) -> np.ndarray:
    """3x3 median, valid part, by a 19-comparison sorting network on shifted views."""
    h, w = a.shape[0] - 2, a.shape[1] - 2
    v = [a[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)]
    mn, mx = np.minimum, np.maximum

    def s(i, j):
        v[i], v[j] = mn(v[i], v[j]), mx(v[i], v[j])

    for i, j in ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3),
                 (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2)):
        s(i, j)
    return v[4]
