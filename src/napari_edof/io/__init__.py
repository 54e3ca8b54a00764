"""Reading focus stacks lazily and writing results atomically (no Qt, napari or torch here)."""
from __future__ import annotations

from .readers import IMAGE_SUFFIXES, natural_key, open_stack, read_stack
from .writers import colourise, write_png, write_result, write_tiff

__all__ = [
    "IMAGE_SUFFIXES",
    "colourise",
    "natural_key",
    "open_stack",
    "read_stack",
    "write_png",
    "write_result",
    "write_tiff",
]
