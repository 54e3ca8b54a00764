"""The public face of napari-edof: everything the CLI and the widgets use."""
from __future__ import annotations

from .core.engine import fuse, fuse_iter
from .core.errors import EdofError
from .core.result import FusionResult, Progress
from .core.stack import Stack, as_stack
from .data import sample_stack
from .io import open_stack
from .methods import get_method as _get_method
from .methods import list_methods


def get_method(name: str):
    """The :class:`~napari_edof.methods.MethodSpec` registered under ``name``."""
    return _get_method(name)[0]


__all__ = [
    "EdofError",
    "FusionResult",
    "Progress",
    "Stack",
    "as_stack",
    "fuse",
    "fuse_iter",
    "get_method",
    "list_methods",
    "open_stack",
    "sample_stack",
]
