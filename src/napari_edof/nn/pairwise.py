"""Pairs to stacks: fuse N planes with a model that decides between two images (issue 5).

A pair model (MSAS, CTMFusion, or a classical rule) answers ``decide(a, b)``: per pixel, the
probability that ``a`` is the in-focus one. :func:`fuse_stack_pairwise` turns such a model into a
focus index over an N-plane stack. Strategies (``strategy=``):

- ``"sequential"``: the baseline that the StackMFF-V2 paper criticises: fuse plane 0
  with plane 1, the result with plane 2, and so on, keeping per-pixel provenance (which plane
  each pixel of the running composite came from). It depends on plane order and accumulates
  errors: a pixel lost at one step never comes back, and a model with any bias towards its first
  input (the composite) drifts further from the true plane with every step.
- ``"reference"`` (default): every plane is compared against one common reference composite that
  is symmetric in the planes (``reference="contrast"``: per pixel the plane with the highest local
  Laplacian energy, a classical max-contrast composite; ``"mean"``: the per-pixel mean of the
  planes, summed in sorted order so that it is bitwise the same for any plane order). Plane k's
  score is ``decide(plane_k, ref)`` (``symmetric=True``: ``decide(plane_k, ref) -
  decide(ref, plane_k)``, twice the model calls); the index is the per-pixel argmax of the scores.
  No decision feeds another, so there is no accumulation, and permuting the planes permutes the
  scores: the result is the same up to the permutation (exact when ``decide`` treats each batch
  item independently, as a numpy rule or a network in eval mode does). Exact score ties are
  broken by the planes' local energy, also order-free.
  ``refine=R`` adds R rounds in which the reference is the composite gathered at the previous
  round's index (the planes at their chosen index: still symmetric in the planes).
- ``"round-robin"``: every pair (i, j) once in each order; plane i scores ``sum_j decide(i, j) -
  decide(j, i)`` (a Borda count). N (N - 1) model calls per pixel instead of N, for comparison.

Returns the focus index (0-based ``int16`` plane) and a confidence in [0, 1]: for the
order-independent strategies the margin between the best and the second-best score (scaled to
[0, 1]); for ``sequential`` ``|2p - 1|`` of the last comparison. Per-plane masks and decision
labels come from the index (``index == k``, ``index + 1``).

:func:`contrast_decide` is a classical pair rule (local Laplacian energy, logistic in the log
ratio) for tests and benchmarks, so that measurements do not hang on one network.
:func:`small_area_filter` is MSAS's post-processing, generalised from a binary map to N labels.

Numpy only: this module never imports torch.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

Decide = Callable[[np.ndarray, np.ndarray], np.ndarray]

STRATEGIES = ("reference", "sequential", "round-robin")
REFERENCES = ("contrast", "mean")


# ----------------------------------------------------------------------------- building blocks
def local_energy(planes: np.ndarray, radius: int = 2) -> np.ndarray:
    """Local Laplacian energy of each plane ((N, H, W) -> (N, H, W) float32, reflected borders)."""
    from ..core.focus import focus_measure

    return focus_measure(np.asarray(planes, np.float32), "laplacian", radius=radius)


def contrast_composite(planes: np.ndarray, energy: np.ndarray | None = None, radius: int = 2) -> np.ndarray:
    """Per pixel the plane value with the highest local energy (symmetric in the planes)."""
    if energy is None:
        energy = local_energy(planes, radius)
    idx = _argmax_ties(energy, None)
    return np.take_along_axis(planes, idx[None].astype(np.intp), axis=0)[0]


def mean_composite(planes: np.ndarray) -> np.ndarray:
    """The per-pixel mean, summed in sorted order: bitwise the same for every order of the planes."""
    s = np.sort(np.asarray(planes, np.float32), axis=0)
    return (s.sum(axis=0, dtype=np.float64) / s.shape[0]).astype(np.float32)


def _argmax_ties(score: np.ndarray, tiebreak: np.ndarray | None) -> np.ndarray:
    """argmax over axis 0; exact ties broken by ``tiebreak`` (then by value order, which only
    matters when both tie, e.g. identical planes)."""
    best = score.max(axis=0)
    if tiebreak is None:
        return score.argmax(axis=0).astype(np.int16)
    tied = score == best
    if np.all(tied.sum(axis=0) == 1):
        return score.argmax(axis=0).astype(np.int16)
    return np.where(tied, tiebreak, -np.inf).argmax(axis=0).astype(np.int16)


def _margin(score: np.ndarray, span: float) -> np.ndarray:
    """(best - second best) / span over axis 0, clipped to [0, 1] (float32)."""
    if score.shape[0] < 2:
        return np.ones(score.shape[1:], np.float32)
    top2 = np.partition(score, score.shape[0] - 2, axis=0)[-2:]
    return np.clip((top2[1] - top2[0]) / span, 0, 1).astype(np.float32)


def _decide_batched(decide: Decide, a: np.ndarray, b: np.ndarray, batch: int) -> np.ndarray:
    """decide over (B, H, W) inputs in chunks of ``batch`` (b may be (H, W): broadcast). A
    ``decide`` with an ``against(planes, ref)`` attribute answers every plane against one (H, W)
    reference in one call (its own route, e.g. a network's reference features computed once)."""
    against = getattr(decide, "against", None)
    if b.ndim == 2 and against is not None:
        return np.asarray(against(np.ascontiguousarray(a), np.ascontiguousarray(b)), np.float32)
    out = np.empty(a.shape, np.float32)
    for s in range(0, a.shape[0], batch):
        aa = a[s : s + batch]
        bb = np.broadcast_to(b, aa.shape) if b.ndim == 2 else b[s : s + batch]
        out[s : s + batch] = decide(np.ascontiguousarray(aa), np.ascontiguousarray(bb))
    return out


# ----------------------------------------------------------------------------------- strategies
def fuse_stack_pairwise(planes, decide: Decide, *, strategy: str = "reference", reference: str = "contrast",
                        symmetric: bool = False, refine: int = 0, batch: int = 8,
                        energy_radius: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Fuse a stack with a pair model.

    planes: (N, H, W) float32 guide (luminance) scaled to [0, 1].
    decide(a, b): a, b (B, H, W) float32 -> (B, H, W) float32 probability that a is in focus
    rather than b (batched; called with at most ``batch`` items). If it has an attribute
    ``against(planes, ref)`` ((N, H, W), (H, W) -> (N, H, W), the same values as ``decide`` of
    each plane with ``ref``), the reference strategy calls that instead (all planes at once).
    Returns (index (H, W) int16, 0-based plane; confidence (H, W) float32 in [0, 1]).
    See the module docstring for the strategies.
    """
    planes = np.ascontiguousarray(planes, dtype=np.float32)
    if planes.ndim != 3:
        raise ValueError(f"planes must be (N, H, W), got shape {planes.shape}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if reference not in REFERENCES:
        raise ValueError(f"unknown reference {reference!r}; choose one of {', '.join(REFERENCES)}")
    n = planes.shape[0]
    batch = max(1, int(batch))
    if n == 1:
        return np.zeros(planes.shape[1:], np.int16), np.ones(planes.shape[1:], np.float32)
    if strategy == "sequential":
        return _sequential(planes, decide)
    energy = local_energy(planes, energy_radius)
    if strategy == "round-robin":
        return _round_robin(planes, decide, energy, batch)
    ref = contrast_composite(planes, energy) if reference == "contrast" else mean_composite(planes)
    idx = conf = None
    for _ in range(1 + max(0, int(refine))):
        if idx is not None:  # the previous round's composite (symmetric in the planes)
            ref = np.take_along_axis(planes, idx[None].astype(np.intp), axis=0)[0]
        score = _decide_batched(decide, planes, ref, batch)
        span = 1.0
        if symmetric:
            score -= _decide_batched(lambda a, b: decide(b, a), planes, ref, batch)
            span = 2.0
        idx = _argmax_ties(score, energy)
        conf = _margin(score, span)
    return idx, conf


def _sequential(planes: np.ndarray, decide: Decide) -> tuple[np.ndarray, np.ndarray]:
    comp = planes[0].copy()
    idx = np.zeros(planes.shape[1:], np.int16)
    conf = np.ones(planes.shape[1:], np.float32)
    for k in range(1, planes.shape[0]):
        p = np.asarray(decide(comp[None], planes[k][None]), np.float32)[0]
        take = p < 0.5
        comp = np.where(take, planes[k], comp)
        idx[take] = k
        conf = np.abs(2 * p - 1).astype(np.float32)
    return idx, np.clip(conf, 0, 1)


def _round_robin(planes: np.ndarray, decide: Decide, energy: np.ndarray, batch: int):
    n = planes.shape[0]
    ii, jj = np.triu_indices(n, 1)
    a = np.concatenate([ii, jj])
    b = np.concatenate([jj, ii])
    p = np.empty((len(a),) + planes.shape[1:], np.float32)
    for s in range(0, len(a), batch):
        p[s : s + batch] = decide(planes[a[s : s + batch]], planes[b[s : s + batch]])
    m = len(ii)
    d = p[:m] - p[m:]  # decide(i, j) - decide(j, i): exactly antisymmetric
    # per plane, its N - 1 contributions summed in sorted order (order-free)
    contrib = np.zeros((n, n - 1) + planes.shape[1:], np.float32)
    fill = np.zeros(n, int)
    for t in range(m):
        i, j = ii[t], jj[t]
        contrib[i, fill[i]] = d[t]
        contrib[j, fill[j]] = -d[t]
        fill[i] += 1
        fill[j] += 1
    score = np.sort(contrib, axis=1).sum(axis=1, dtype=np.float64).astype(np.float32) / (n - 1)
    return _argmax_ties(score, energy), _margin(score, 2.0)


# -------------------------------------------------------------------------- a classical pair rule
def contrast_decide(radius: int = 2, gain: float = 4.0, bias: float = 0.0, eps: float = 1e-6,
                    smooth: int = 0) -> Decide:
    """A classical pair rule: ``sigmoid(gain * log(E_a / E_b) + bias)`` with ``E`` the local
    Laplacian energy over a (2 radius + 1)^2 window. ``bias > 0`` prefers the first input (used
    by the tests to show sequential fusion drifting). ``smooth > 0`` box-averages the decision
    map over a (2 smooth + 1)^2 window (a region-consistency step, as pair methods do): the
    rule then looks at both images jointly, not at a per-image score, so the strategies differ."""

    def decide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ea = local_energy(a, radius)
        eb = local_energy(b, radius)
        z = gain * (np.log(ea + eps) - np.log(eb + eps)) + bias
        p = (0.5 + 0.5 * np.tanh(0.5 * z)).astype(np.float32)  # the logistic, without overflow
        if smooth:
            from scipy import ndimage as ndi

            p = ndi.uniform_filter(p, size=(1, 2 * smooth + 1, 2 * smooth + 1), mode="reflect")
        return p.astype(np.float32)

    return decide


# ---------------------------------------------------------------------- MSAS's small-area filter
def small_area_filter(labels: np.ndarray, min_size: float = 0.01, *, connectivity: int = 1) -> np.ndarray:
    """Remove small regions from a decision map (the MSAS paper: regions under 1% of the
    image are flipped).

    ``labels``: (H, W) integer map (a binary decision map, or an N-plane focus index).
    ``min_size``: a fraction of the image area (< 1) or a pixel count (>= 1). Every connected
    region of one label smaller than that is reassigned to the nearest pixel of a kept region
    (for a binary map this is the paper's flip: a small island takes the label around it).
    When no region is large enough the map is returned unchanged.
    """
    from scipy import ndimage as ndi

    labels = np.asarray(labels)
    area = labels.size
    thr = min_size * area if min_size < 1 else float(min_size)
    if thr <= 1 or area == 0:
        return labels.copy()
    structure = ndi.generate_binary_structure(2, connectivity)
    small = np.zeros(labels.shape, bool)
    for v in np.unique(labels):
        comp, k = ndi.label(labels == v, structure=structure)
        if k == 0:
            continue
        sizes = np.bincount(comp.ravel(), minlength=k + 1)
        bad = sizes < thr
        bad[0] = False
        small |= bad[comp]
    if not small.any() or small.all():
        return labels.copy()
    _, (yi, xi) = ndi.distance_transform_edt(small, return_indices=True)
    out = labels[yi, xi]
    return out.astype(labels.dtype, copy=False)
