"""The public face of napari-edof: everything the CLI and the widgets use."""
from __future__ import annotations

from .core.engine import fuse, fuse_iter
from .core.errors import EdofError
from .core.inspect import (  # noqa: F401 - the measure settings for the inspector (not in __all__)
    DEFAULT_MEASURE,
    DEFAULT_RADIUS,
    focus_curve,
    measure_settings,
    recompose,
)
from .core.registration import RegistrationReport, register_stack
from .core.result import FusionResult, Progress
from .core.stack import Stack, as_stack
from .core.surface import (  # noqa: F401 - the height surface, for the inspector (not in __all__)
    MAX_SURFACE_SIDE,
    height_mesh,
    surface_texcoords,
    texture_image,
)
from .data import sample_stack
from .methods import get_method as _get_method
from .methods import list_methods


def open_stack(source, *, axes: str | None = None, name: str | None = None) -> Stack:
    """Open a focus stack lazily (TIFF, OME-TIFF, ImageJ, a folder, glob or list of 2D images).

    See :func:`napari_edof.io.readers.open_stack`; imported on first use so that
    ``import napari_edof`` stays light.
    """
    from .io import open_stack as _open

    return _open(source, axes=axes, name=name)


def available_devices() -> list[str]:
    """Devices fusion can run on here: "cuda:N", "mps" (when torch sees them) and "cpu"."""
    from .nn.device import available_devices as _devices

    return _devices()


def fuse_many_iter(stacks, *, client=None, workers: int | None = None, **options):
    """Fuse several stacks on a dask.distributed cluster; yields :class:`Progress` per stripe.

    ``client``: a ``distributed.Client`` (e.g. connected to a SLURM or Kubernetes cluster); by
    default a local cluster of ``workers`` processes kept for the session. Returns the list of
    numpy :class:`FusionResult`, identical to single-process runs. See :mod:`napari_edof.cluster`.
    """
    from . import cluster

    if client is None:
        client = cluster.local_client(workers)
    return (yield from cluster.fuse_many_iter(stacks, client, **options))


def fuse_many(stacks, *, client=None, workers: int | None = None, progress=None, **options) -> list:
    """:func:`fuse_many_iter` drained (``progress`` is called per finished stripe)."""
    from .core.engine import drain

    return drain(fuse_many_iter(stacks, client=client, workers=workers, **options), progress)


def evaluate(result_or_fused, stack, truth=None, *, metrics=None, data_range=None) -> dict:
    """Score a fusion: ``{metric: value}`` (see :mod:`napari_edof.metrics` and docs/metrics.md).

    ``result_or_fused``: a :class:`FusionResult`, an image array or an image file; ``stack``: the
    sources (a :class:`Stack`, a file, or an (N, Y, X[, C]) array); ``truth``: the ground-truth
    all-in-focus image (array or file) when there is one (adds psnr and ssim); ``metrics``:
    names or a comma-separated string from psnr, ssim, qabf, nmi, fmi, qy, qcb (default: every
    one that applies); ``data_range`` as in scikit-image. Raises :class:`EdofError` on bad input.
    """
    from ._evaluate import evaluate as _evaluate

    return _evaluate(result_or_fused, stack, truth, metrics=metrics, data_range=data_range)


def get_method(name: str):
    """The :class:`~napari_edof.methods.MethodSpec` registered under ``name``."""
    return _get_method(name)[0]


__all__ = [
    "EdofError",
    "FusionResult",
    "Progress",
    "Stack",
    "as_stack",
    "available_devices",
    "evaluate",
    "fuse",
    "fuse_iter",
    "fuse_many",
    "fuse_many_iter",
    "focus_curve",
    "recompose",
    "get_method",
    "list_methods",
    "open_stack",
    "register_stack",
    "RegistrationReport",
    "sample_stack",
]
