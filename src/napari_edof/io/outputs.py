"""Where a run's results go, planned before anything is computed or written.

One result is a fixed set of files in one folder (:func:`result_names`). Every writer (the TIFF
set of :func:`~napari_edof.io.write_result`, the OME-Zarr images, the tiled TIFFs) plans its
files here, so that

* no output ever resolves to an input (:func:`check_not_inputs`: real paths compared, symlinks
  and hard links too): a run is refused before it starts rather than replacing its own source;
* a result that replaces an earlier one in the same folder says so and removes the files of the
  earlier result that the new one does not rewrite (:func:`retire_previous`), using the list of
  files the earlier ``provenance.json`` recorded; nothing else in the folder is touched.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..core.errors import EdofError, EdofWarning

__all__ = ["OverwriteError", "check_not_inputs", "previous_files", "result_names", "retire_previous"]

#: The formats of a run and the files of one result in each (``{t}``: one per time point).
FORMATS = ("tiff", "zarr", "tiled-tiff")


class OverwriteError(EdofError):
    """An output of the run would replace (or be written inside) one of its inputs."""


def result_names(fmt: str = "tiff", n_times: int = 1, prefix: str = "") -> list[str]:
    """The file (or OME-Zarr folder) names of one result written in format ``fmt``."""
    if fmt == "tiff":
        pngs = ([f"{prefix}focus_index_t{t:03d}.png" for t in range(n_times)] if n_times > 1
                else [f"{prefix}focus_index.png"])
        names = [f"{prefix}fused.tif", f"{prefix}focus_index.tif", *pngs, f"{prefix}decision.tif",
                 f"{prefix}masks.tif", f"{prefix}confidence.tif"]
    elif fmt == "zarr":
        names = [f"{prefix}fused.ome.zarr", f"{prefix}focus_index.ome.zarr", f"{prefix}confidence.ome.zarr"]
    elif fmt == "tiled-tiff":
        names = [f"{prefix}fused.tif", f"{prefix}focus_index.tif", f"{prefix}confidence.tif"]
    else:
        raise EdofError(f"unknown output format {fmt!r}; one of {', '.join(FORMATS)}")
    return names + [f"{prefix}provenance.json"]


def _real(p) -> str:
    return os.path.normcase(os.path.realpath(os.path.expanduser(os.fspath(p))))


def _same(a: str, b: str) -> bool:
    if a == b:
        return True
    try:  # hard links, case-insensitive file systems
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(child: str, parent: str) -> bool:
    return child != parent and child.startswith(parent.rstrip(os.sep) + os.sep)


def check_not_inputs(outdir, names: Iterable[str], sources: Sequence) -> None:
    """Refuse (:class:`OverwriteError`) when an output ``outdir/name`` would be an input.

    An output is refused when it is the same file as an input (after resolving symlinks), when
    an input lies inside it (an OME-Zarr output folder would replace it), and when the output
    folder lies inside an input folder (an OME-Zarr store read as the stack).
    """
    srcs = [(str(s), _real(s)) for s in sources or () if s]
    if not srcs:
        return
    out_real = _real(outdir)
    for given, real in srcs:
        if os.path.isdir(real) and (out_real == real or _inside(out_real, real)):
            raise OverwriteError(
                f"cannot write the results to {outdir}: it is inside the input {given}, which "
                "would be modified; choose another output folder"
            )
    for name in names:
        target = _real(Path(outdir) / name)
        for given, real in srcs:
            if _same(target, real) or _inside(real, target):
                raise OverwriteError(
                    f"the output {Path(outdir) / name} would replace the input {given}: choose another "
                    "output folder (-o); napari-edof never overwrites its input"
                )


_SAFE_NAME = re.compile(r"^[^/\\]+$")


def previous_files(outdir, prefix: str = "") -> list[str] | None:
    """The file names the result in ``outdir`` (with ``prefix``) recorded in its
    ``provenance.json``: its ``files`` list; for results written before that list existed, the
    names napari-edof writes that are present. None when there is no earlier napari-edof result."""
    prov = Path(outdir) / f"{prefix}provenance.json"
    try:
        data = json.loads(prov.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or "method" not in data:
        return None  # not a provenance.json of ours
    files = data.get("files")
    if isinstance(files, list) and all(isinstance(f, str) for f in files):
        return [f for f in files if _SAFE_NAME.match(f) and f not in (".", "..")]
    pattern = re.compile(
        re.escape(prefix) + r"(fused\.tif|focus_index\.tif|focus_index\.png|focus_index_t\d{3}\.png|decision\.tif"
        r"|masks\.tif|confidence\.tif|fused\.ome\.zarr|focus_index\.ome\.zarr|confidence\.ome\.zarr"
        r"|provenance\.json)$")
    try:
        return sorted(e.name for e in os.scandir(outdir) if pattern.match(e.name))
    except OSError:
        return None


def retire_previous(outdir, old: list[str] | None, new: Iterable[str], sources: Sequence = ()) -> list[str]:
    """After a new result is in place: remove the files of the previous result (``old``, from
    :func:`previous_files` read *before* the new files were moved in) that the new one did not
    rewrite, and warn (:class:`EdofWarning`) that a result was replaced. Inputs are never removed.
    Returns the names removed."""
    if old is None:
        return []
    outdir = Path(outdir)
    new = set(new)
    inputs = [_real(s) for s in sources or () if s]
    removed = []
    for name in old:
        if name in new:
            continue
        p = outdir / name
        real = _real(p)
        if any(_same(real, i) or _inside(i, real) for i in inputs):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                from ._common import is_zarr

                if not is_zarr(p):
                    continue  # only our OME-Zarr images are folders
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
            else:
                continue
        except OSError:
            continue
        removed.append(name)
    extra = f"; removed {len(removed)} file(s) of it that the new result does not have: {', '.join(removed)}" \
        if removed else ""
    warnings.warn(f"{outdir}: replaced the previous result there{extra}", EdofWarning, stacklevel=2)
    return removed
