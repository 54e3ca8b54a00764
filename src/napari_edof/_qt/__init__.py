"""Every napari widget of napari-edof (the only package that imports Qt or napari).

The widgets talk to :mod:`napari_edof.api` only. Submodules are imported on demand by npe2
(``napari_edof._qt.fusion_widget:FusionWidget``, ``napari_edof._qt.inspector:FocusInspector``),
so importing this package imports nothing heavy.
"""
from __future__ import annotations
