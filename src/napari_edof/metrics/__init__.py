"""Fusion-quality metrics (numpy, scipy and scikit-image only; no torch, Qt or napari).

Full-reference, against a ground-truth all-in-focus image (:mod:`.reference`):
``psnr``, ``ssim`` (scikit-image's). No-reference, against the sources (:mod:`.fusion`):
``qabf`` (Q^AB/F), ``nmi``, ``fmi``, ``qy`` (Q_Y), ``qcb`` (Q_CB). Every metric is higher-is-better.

:func:`evaluate` computes several at once on images prepared once; ``docs/metrics.md`` gives
the definitions, the constants, the N-source forms and the references.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ._common import prepare
from .fusion import QABF_MAX, _fmi, _nmi, _qabf, _qcb, _qy, fmi, nmi, qabf, qcb, qy
from .reference import psnr, psnr_scaled, ssim, ssim_scaled


@dataclass(frozen=True)
class Metric:
    """A registered metric: its name, whether it needs the truth, its range and a description."""

    name: str
    label: str
    needs_truth: bool
    range: str
    summary: str
    _scaled: Callable  # (planes, fused, truth) -> float, on images scaled by prepare()


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("psnr", "PSNR (dB)", True, "[0, inf]", "peak signal-to-noise ratio against the truth",
               lambda s, f, t: psnr_scaled(t, f)),
        Metric("ssim", "SSIM", True, "[-1, 1]", "structural similarity against the truth (Wang et al. 2004)",
               lambda s, f, t: float(ssim_scaled(t, f))),
        Metric("qabf", "Q^AB/F", False, f"[0, {QABF_MAX:.4f}]",
               "edge strength and orientation preserved from the sources (Xydeas & Petrovic 2000)",
               lambda s, f, t: _qabf(s, f)),
        Metric("nmi", "NMI", False, "[0, 2]", "normalised mutual information with the sources (Hossny et al. 2008)",
               lambda s, f, t: _nmi(s, f)),
        Metric("fmi", "FMI", False, "[0, 1]",
               "feature (gradient) mutual information, Fast-FMI 3x3 (Haghighat et al. 2011, 2014)",
               lambda s, f, t: _fmi(s, f)),
        Metric("qy", "Q_Y", False, "[-1, 1]", "SSIM-based fusion quality (Yang et al. 2008)",
               lambda s, f, t: _qy(s, f)),
        Metric("qcb", "Q_CB", False, "[0, 1]", "human-perception contrast preservation (Chen & Blum 2009)",
               lambda s, f, t: _qcb(s, f)),
    )
}

#: The no-reference metrics computed when no list is given.
FUSION_METRICS = tuple(n for n, m in METRICS.items() if not m.needs_truth)


def list_metrics() -> list[Metric]:
    return list(METRICS.values())


def resolve_metrics(metrics=None, *, have_truth: bool) -> list[str]:
    """Names to compute: ``None`` or "all" -> every metric that applies; a comma list or a list."""
    if metrics is None or metrics == "all":
        return [n for n, m in METRICS.items() if have_truth or not m.needs_truth]
    names = [x.strip().lower() for x in (metrics.split(",") if isinstance(metrics, str) else metrics)]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    missing = [n for n in names if METRICS[n].needs_truth and not have_truth]
    if missing:
        raise ValueError(f"{', '.join(missing)} need(s) a ground-truth image")
    return list(dict.fromkeys(names))


def evaluate(fused, sources, truth=None, *, metrics=None, data_range=None) -> dict[str, float]:
    """Compute metrics of one fused image: ``{name: value}`` in the order asked.

    ``sources``: (A, B), a sequence of N images or an (N, Y, X[, C]) array; ``truth``: the
    all-in-focus reference when there is one (enables psnr and ssim); ``metrics``: names or a
    comma-separated string (default: every metric that applies); ``data_range`` as in
    scikit-image (see :mod:`napari_edof.metrics._common`).
    """
    names = resolve_metrics(metrics, have_truth=truth is not None)
    planes, f, t = prepare(sources, fused, truth, data_range=data_range)
    return {n: float(METRICS[n]._scaled(planes, f, t)) for n in names}


__all__ = [
    "FUSION_METRICS",
    "METRICS",
    "Metric",
    "QABF_MAX",
    "evaluate",
    "fmi",
    "format_table",
    "list_metrics",
    "nmi",
    "prepare",
    "psnr",
    "qabf",
    "qcb",
    "qy",
    "resolve_metrics",
    "ssim",
]


def format_table(values: dict[str, float]) -> str:
    """A plain-text table of :func:`evaluate`'s values: metric, value, range, what it measures."""
    rows = [("metric", "value", "range", "")]
    for n, v in values.items():
        m = METRICS[n]
        rows.append((m.label, "inf" if v == float("inf") else f"{v:.4f}", m.range, m.summary))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    return "\n".join(f"{a:<{w0}}  {b:>{w1}}  {c:<{w2}}  {d}".rstrip() for a, b, c, d in rows)
