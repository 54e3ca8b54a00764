"""The version of napari-edof, written once (pyproject.toml reads it from here; nothing here imports)."""

__version__ = "0.1.0"
