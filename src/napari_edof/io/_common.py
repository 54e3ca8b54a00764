"""Small helpers the readers, the writers and the OME-Zarr module share (a leaf: it imports
none of them, so they do not import each other in a circle)."""
from __future__ import annotations

from pathlib import Path


def is_zarr(path) -> bool:
    """A folder that is a zarr array or group (v3 ``zarr.json``, v2 ``.zarray``/``.zgroup``)."""
    p = Path(path)
    return p.is_dir() and any((p / f).exists() for f in ("zarr.json", ".zarray", ".zgroup"))


def report_reconciled(metadata: dict, message: str) -> None:
    """A mismatch between a file's metadata and its data that was resolved: kept with the stack
    (and so in provenance.json) and warned about (napari shows it, the CLI prints it)."""
    import warnings

    from ..core.errors import EdofWarning

    metadata.setdefault("reconciled", []).append(message)
    warnings.warn(message, EdofWarning, stacklevel=4)
