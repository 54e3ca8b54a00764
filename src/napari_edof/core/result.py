"""The one result type every fusion method produces, and the progress record of a run."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Progress:
    """One step of a run: ``done`` of ``total`` units (tiles) finished in ``stage``."""

    done: int
    total: int
    stage: str = "fuse"
    frame: int = 0

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


@dataclass
class FusionResult:
    """What a fusion produced.

    Attributes
    ----------
    fused : ndarray, ([T,] Y, X[, C]), the input dtype
        The all-in-focus image. Colour is gathered from the source planes, never invented.
    index : ndarray, ([T,] Y, X), float32
        Focus-index (height) map: the 0-based plane each pixel was taken from, sub-plane where the
        method gives it.
    confidence : ndarray, ([T,] Y, X), float32 in [0, 1]
        How clearly one plane won at each pixel (0: no plane is sharper than the others).
    n_planes : int
        Number of planes the stack had.
    provenance : dict
        Method, parameters, package version, tiling and timing.
    pixel_size, z_step, unit :
        Physical scale carried over from the input stack.
    audit : ndarray, ([T,] Y, X), float32, or None
        Where the run was audited (by default for methods that synthesise values, e.g. vaeedof,
        fmb-fn with ``output="network"``; any method with ``audit=True``): per pixel, the distance
        of the fused value from the nearest source-plane value there, in the fused image's units
        (the largest over channels); 0 where the fused value is a source value. None: not audited.
    audit_mask : ndarray, ([T,] Y, X), bool, or None
        True where the fused value lies outside every source plane's range over the pixel's 3 x 3
        neighbourhood (by more than one quantisation step): values the method invented. See
        :mod:`napari_edof.core.audit`; ``provenance["audit"]`` has the share of flagged pixels
        and the largest distance.
    """

    fused: Any
    index: Any
    confidence: Any
    n_planes: int
    provenance: dict = field(default_factory=dict)
    pixel_size: tuple[float, float] | None = None
    z_step: float | None = None
    unit: str = "pixel"
    rgb: bool = False
    audit: Any = None
    audit_mask: Any = None

    def labels(self) -> np.ndarray:
        """Decision map as labels: source plane + 1 (uint16), the form napari's Labels layer edits."""
        return labels_from_index(self.index, self.n_planes)

    def masks(self) -> np.ndarray:
        """One boolean mask per plane, ([T,] Z, Y, X): True where that plane was chosen.

        For a pair this is the binary decision map and its complement.
        """
        return masks_from_labels(self.labels(), self.n_planes)

    def height(self) -> np.ndarray:
        """The focus map in physical units (index * z_step) when the z-step is known, else the index."""
        if self.z_step is None:
            return np.asarray(self.index, dtype=np.float32)
        return np.asarray(self.index, dtype=np.float32) * np.float32(self.z_step)

    @property
    def is_lazy(self) -> bool:
        """True when the arrays are dask arrays (nothing computed yet)."""
        return hasattr(self.fused, "dask")

    def compute(self, **kwargs) -> FusionResult:
        """A result of numpy arrays: lazy arrays computed together (each stripe runs once).

        ``kwargs`` go to ``dask.compute`` (e.g. ``scheduler=``). A numpy result returns itself.
        """
        if not self.is_lazy:
            return self
        import dask

        t0 = time.perf_counter()
        audited = self.audit is not None
        arrays = (self.fused, self.index, self.confidence) + ((self.audit, self.audit_mask) if audited else ())
        fused, index, conf, *aud = dask.compute(*arrays, **kwargs)
        seconds = time.perf_counter() - t0
        prov = dict(self.provenance)
        prov.pop("lazy", None)
        voxels = float(np.prod(np.shape(index))) * self.n_planes
        prov.update(seconds=seconds, mvoxel_per_s=voxels / 1e6 / max(seconds, 1e-9))
        if audited:
            from .audit import audit_summary

            prov["audit"] = audit_summary(*aud)
        return replace(self, fused=fused, index=index, confidence=conf, provenance=prov,
                       audit=aud[0] if audited else None, audit_mask=aud[1] if audited else None)

    def summary(self) -> str:
        from .audit import audit_note

        p = self.provenance
        return (
            f"method {p.get('method')}: {self.n_planes} planes of "
            f"{'x'.join(map(str, np.shape(self.index)[-2:]))} in {p.get('seconds', float('nan')):.2f} s "
            f"({p.get('mvoxel_per_s', float('nan')):.1f} Mvoxel/s)" + precision_note(p) + unknown_note(self.index)
            + audit_note(p) + method_note(p)
        )


def method_note(prov: dict) -> str:
    """The method's own note on its run (``provenance["method_note"]``), for a summary ("" if none)."""
    note = prov.get("method_note")
    return f"; {note}" if note else ""


def unknown_note(index) -> str:
    """The share of pixels in focus in no plane (index NaN), for a summary ("" if none or lazy)."""
    if not isinstance(index, np.ndarray) or index.dtype.kind != "f":
        return ""
    share = float(np.isnan(index).mean())
    return f"; {100 * share:.0f}% of pixels in focus in no plane (index NaN, confidence 0)" if share >= 0.005 else ""


def precision_note(prov: dict) -> str:
    """What became of a request for half precision, for a one-line summary ("" if none was made)."""
    check = prov.get("half_precision_check")
    if not check:
        return ""
    if check.get("kept"):
        return f"; half precision ({check.get('half_type')}): the first tile's index was identical"
    if "error" in check:
        return f"; float32: the method failed in half precision ({check['error'][:80]})"
    return (f"; float32: half precision changed {check.get('differing')} of {check.get('pixels')} "
            "index pixels of the first tile")


def to_stack_axes(axes: str, fused, index, confidence):
    """Outputs in the engine's order (fused (T, Y, X, C), index and confidence (T, Y, X)) seen in
    the order of a stack with ``axes``: T and C dropped where it has none (views)."""
    if "C" not in axes:
        fused = fused[..., 0]
    if "T" not in axes:
        fused, index, confidence = fused[0], index[0], confidence[0]
    return fused, index, confidence


def labels_from_index(index, n_planes: int) -> np.ndarray:
    """Plane + 1 (uint16); 0 (napari's "no label") where the index is NaN (masked, never in focus)."""
    if hasattr(index, "dask"):  # lazy in, lazy out
        return index.map_blocks(labels_from_index, n_planes, dtype=np.uint16)
    lab = np.rint(np.asarray(index, dtype=np.float32))
    nan = np.isnan(lab)
    np.clip(lab, 0, n_planes - 1, out=lab)
    if nan.any():
        lab[nan] = -1
    return (lab + 1).astype(np.uint16)


def masks_from_labels(labels, n_planes: int) -> np.ndarray:
    labels = np.asarray(labels)
    planes = np.arange(1, n_planes + 1, dtype=labels.dtype)
    if labels.ndim == 3:  # (T, Y, X) -> (T, Z, Y, X)
        return labels[:, None, :, :] == planes[None, :, None, None]
    return labels[None, :, :] == planes[:, None, None]
