"""Open focus stacks lazily: multi-page TIFF (plain, OME, ImageJ), folders, globs and lists of images.

Nothing here reads pixels before they are computed: :func:`open_stack` reads file headers only
and returns a :class:`~napari_edof.core.stack.Stack` whose ``data`` is a dask array.

* A TIFF becomes ``dask.array.from_array`` over the file's zarr view (``TiffPageSeries.aszarr``,
  one chunk per page). The file is opened to read the headers and closed again before
  :func:`open_stack` returns; the first computation opens it once more and keeps that handle
  until the dask array (the last object holding it) is garbage-collected. A dask graph of such
  an array pickles without its handle and reopens the file where it is computed.
* A folder, glob or list of 2D images (TIFF, PNG, JPEG, told apart by their first bytes, not by
  their names) becomes one ``dask.delayed`` read per file, stacked along Z; shapes and dtypes
  come from the headers (Pillow's ``Image.open`` and ``tifffile.TiffFile`` read no pixels).

:func:`open_stack` is here and tells the sources apart; the TIFF reader is
:mod:`napari_edof.io.read_tiff`, the reader of folders, globs and lists of images
:mod:`napari_edof.io.read_planes`, and what they share :mod:`napari_edof.io._read_common`.

Errors are :class:`~napari_edof.core.errors.ReadError` (cannot read the file) or
:class:`~napari_edof.core.errors.StackError` (readable, but not a focus stack); their messages
name the file. Pixel data that turns out unreadable when computed (a JPEG truncated in its
entropy-coded data, a file changed on disk) raises a ``ReadError`` naming the file at that time.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..core.errors import ReadError
from ..core.stack import Stack, check_axes_text
from ._read_common import (
    _GLOB_CHARS,
    IMAGE_SUFFIXES,
    SingleImageError,
    _as_path,
    _folder_name,
    _list_label,
    _list_name,
    _sniff,
    natural_key,
)
from .read_memory import materialise
from .read_planes import _expand_glob, _image_header, _list_folder, _open_planes, _plane_desc, read_image
from .read_tiff import _open_tiff

__all__ = ["IMAGE_SUFFIXES", "SingleImageError", "materialise", "open_stack", "natural_key", "read_image",
           "read_stack"]


def read_stack(source, *, axes: str | None = None, name: str | None = None, workers: int | None = None) -> Stack:
    """Open a focus stack like :func:`open_stack` and, when it fits in memory, read it now: straight
    into one numpy array, the planes (or a TIFF's compressed pages) decoded in ``workers``
    threads (default: all cores), with no dask graph. A stack too large for memory (see
    :func:`napari_edof.io.read_memory.memory_limit`) is returned lazy, as :func:`open_stack`
    returns it."""
    from .read_memory import materialise

    return materialise(_open(source, axes=axes, name=name, eager=True, workers=workers), workers=workers)


def open_stack(source, *, axes: str | None = None, name: str | None = None) -> Stack:
    """Open a focus stack lazily from files.

    Parameters
    ----------
    source : str, path-like, or list/tuple of them
        * a multi-page TIFF, OME-TIFF or ImageJ hyperstack;
        * a folder of 2D images (TIFF, PNG, JPEG; other files such as ``ReadMe.txt`` and hidden
          files are ignored), taken in natural order (``img2`` before ``img10``). Images named
          as results are left out, with a warning naming them (an
          :class:`~napari_edof.core.errors.EdofWarning`; also in ``metadata["skipped"]`` and the
          provenance's ``input_warnings``): napari-edof's own outputs (``fused.tif``,
          ``focus_index.tif``/``.png``, ``decision.tif``, ``masks.tif``, ``confidence.tif``) and
          all-in-focus references (``expected.jpg`` as in focus-stack's ``pcb`` example,
          ``ground_truth.png``, ``gt.tif``, ``all_in_focus.png``); a glob or a list takes every
          image it names;
        * a glob pattern such as ``"dir/*.png"`` (matches in natural order);
        * a list or tuple of 2D image files, taken in the order given.
        Every image in a folder, glob or list must have the same size, channels and dtype.
    axes : str, optional
        One letter per dimension, from ``"TCZYX"`` (``"S"`` means RGB(A) samples, read as a C
        axis with ``rgb=True``). For a TIFF: the dimensions of tifffile's series (singleton
        dimensions may be left out); for images: ``(Z, Y, X)`` or ``(Z, Y, X, C)``. By default the
        axes come from OME or ImageJ metadata, else they are guessed (a multi-page TIFF is ZYX;
        colour images are ZYXC with ``rgb=True``).
    name : str, optional
        ``Stack.name``; by default the file's or the folder's name.

    Returns
    -------
    Stack
        ``data`` is a dask array (nothing read yet) in the native byte order and the file's dtype
        (uint8/16/32, int8/16/32 or float16/32/64); ``axes`` from ``"TCZYX"``; ``pixel_size``
        (y, x), ``z_step`` and ``unit`` from OME (PhysicalSize*) or ImageJ (resolution tags,
        ``spacing``, ``unit``) metadata when present; ``source`` the files read.

    Raises
    ------
    ReadError
        A file or folder is missing, empty, not a TIFF/PNG/JPEG, truncated or corrupt, or a
        pattern matches no image.
    StackError
        The images do not make a focus stack: planes of different sizes, channels or dtypes,
        fewer than 2 planes, a single 2D image, an unsupported dtype, axes that cannot be told.
    """
    return _open(source, axes=axes, name=name)


def _open(source, *, axes, name, eager: bool = False, workers: int | None = None) -> Stack:
    axes = check_axes_text(axes)
    if isinstance(source, Stack):
        return source
    how = dict(eager=eager, workers=workers)
    if isinstance(source, (list, tuple)):
        paths = [_as_path(p) for p in source]
        if not paths:
            raise ReadError("an empty list of files is not a focus stack: give at least 2 images")
        if len(paths) == 1:
            return _open_file(paths[0], axes=axes, name=name, **how)
        return _open_planes(paths, axes=axes, name=name or _list_name(paths), label=_list_label(paths), **how)
    path = _as_path(source)
    text = os.fspath(path)
    if path.is_dir():
        from .zarr_io import is_zarr, open_zarr

        if is_zarr(path):
            return open_zarr(path, axes=axes, name=name)
        files, skipped = _list_folder(path)
        return _open_planes(files, axes=axes, name=name or _folder_name(path), label=str(path), skipped=skipped,
                            **how)
    if path.exists() or path.is_symlink():
        return _open_file(path, axes=axes, name=name, **how)
    if any(c in text for c in _GLOB_CHARS):
        files = _expand_glob(text)
        return _open_planes(files, axes=axes, name=name or path.name, label=repr(text), **how)
    if not path.parent.exists() and str(path.parent) not in ("", "."):
        raise ReadError(f"{path}: no such file or folder (the folder {path.parent} does not exist)")
    raise ReadError(f"{path}: no such file or folder")


def _open_file(path: Path, *, axes, name, eager: bool = False, workers: int | None = None) -> Stack:
    kind, size = _sniff(path)
    if kind != "tiff":
        info = _image_header(path, kind, size)
        desc = _plane_desc(info)
        raise SingleImageError(
            f"{path}: a single 2D image ({info.shape[0]}x{info.shape[1]} {desc}) is not a focus "
            "stack: give a folder, a glob pattern or a list of at least 2 images"
        )
    return _open_tiff(path, size, axes=axes, name=name, eager=eager, workers=workers)
