"""What napari imports the first time it shows a Labels layer, imported ahead in a thread (issue 17).

The first Run's decision layer is the viewer's first Labels layer: napari then imports pandas (for
the layer's features table) and scikit-image's colour module (for the label colours; it imports
``scipy.linalg``), about 0.4-0.5 s (of 1.1-1.2 s for that layer, measured under Xvfb; a second Labels
layer takes 0.25 s). :func:`start` imports them in a thread when the widget opens, while the user picks
a layer. Nothing else changes: the same modules, imported once, whoever comes first.
"""
from __future__ import annotations

import importlib
import threading

from napari_edof.core.warmup import start_once

#: the modules a viewer's first Labels layer imports (napari 0.9), heaviest first
LABELS_FIRST_IMPORTS = ("pandas", "skimage.color")


def _import_all() -> None:
    for name in LABELS_FIRST_IMPORTS:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - only a head start: napari reports its own import errors
            pass


def start() -> threading.Thread:
    """Start the imports in a thread (once per process) and return it."""
    return start_once("edof-layer-imports", _import_all)
