"""napari-edof: extended depth of field for napari.

Fuse a focus stack (a microscope z-stack, or RGB frames focused at different depths) into one
all-in-focus image, with the focus-index map, the decision masks and a confidence map that show
how the fusion decided.

Importing this package imports neither torch, Qt nor napari.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .api import (  # noqa: E402
    FusionResult,
    Progress,
    Stack,
    EdofError,
    fuse,
    fuse_iter,
    get_method,
    list_methods,
    open_stack,
    sample_stack,
)

__all__ = [
    "EdofError",
    "FusionResult",
    "Progress",
    "Stack",
    "__version__",
    "fuse",
    "fuse_iter",
    "get_method",
    "list_methods",
    "open_stack",
    "sample_stack",
]
