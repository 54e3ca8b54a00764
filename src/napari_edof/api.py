"""The public face of napari-edof: everything the CLI and the widgets use."""
from __future__ import annotations

from .core.engine import fuse, fuse_iter
from .core.errors import EdofError
from .core.inspect import focus_curve, recompose
from .core.registration import RegistrationReport, register_stack
from .core.result import FusionResult, Progress
from .core.stack import Stack, as_stack
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
