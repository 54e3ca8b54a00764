"""Where a run's results go, planned before anything is computed or written.

One result is a fixed set of files in one folder (:func:`result_names`). Every writer (the TIFF
set of :func:`~napari_edof.io.write_result`, the OME-Zarr images, the tiled TIFFs) plans its
files here, so that

* the output folder can hold the results (:func:`check_writable`: a folder, or one that can be
  created, that this user can write to, on a disk with room for the files): checked before
  anything is fused, so that a run is not lost at its end;
* no output ever resolves to an input (:func:`check_not_inputs`: real paths compared, symlinks
  and hard links too): a run is refused before it starts rather than replacing its own source;
* a result that replaces an earlier one in the same folder says so and removes the files of the
  earlier result that the new one does not rewrite (:func:`retire_previous`), using the list of
  files the earlier ``provenance.json`` recorded; nothing else in the folder is touched.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..core.errors import EdofError, EdofWarning

__all__ = ["DEFAULT_OUTPUTS", "OUTPUTS", "PREVIEW_FORMATS", "parse_outputs", "OutputError",
           "OverwriteError", "check_not_inputs", "check_writable", "explain_oserror", "plan_outputs",
           "previous_files", "result_names", "retire_previous"]

#: The formats of a run and the files of one result in each (``{t}``: one per time point).
FORMATS = ("tiff", "zarr", "tiled-tiff")
#: The outputs of the TIFF format that a run can choose (``--outputs``); provenance.json always.
#: "audit" is two files, audit.tif (distance from the nearest source value) and audit_mask.tif
#: (values outside the sources' local range); see :mod:`napari_edof.core.audit`.
OUTPUTS = ("fused", "index", "decision", "masks", "confidence", "audit")
#: What the CLI writes when ``--outputs`` is not given: the masks are left out (they are the
#: biggest file, one plane per source plane, and derivable: mask k = decision.tif == k + 1); the
#: audit is written for the runs that have one (methods that synthesise values).
DEFAULT_OUTPUTS = ("fused", "index", "decision", "confidence", "audit")
#: Formats of the fused preview (``--preview``): 8-bit, with the source's EXIF for photographers.
PREVIEW_FORMATS = ("png", "jpg")


class OverwriteError(EdofError):
    """An output of the run would replace (or be written inside) one of its inputs."""


class OutputError(EdofError):
    """The results cannot be written where they are to go (the CLI's exit code 3)."""


_SHORT_WRITE = re.compile(r"(\d+) requested and (\d+) written")


def _free_bytes(where) -> int | None:
    p = Path(where) if where is not None else None
    while p is not None and not p.exists():
        if p.parent == p:
            return None
        p = p.parent
    if p is None:
        return None
    try:
        return int(shutil.disk_usage(p).free)
    except OSError:
        return None


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def explain_oserror(e: OSError, where=None) -> str:
    """An OSError in words a user can act on. A short write (numpy's "262144 requested and
    81704 written", which carries no errno) or ENOSPC/EDQUOT is "No space left on device", with
    the space left on the disk of ``where``; a permission error names the remedy."""
    text = e.strerror or str(e) or type(e).__name__
    short = _SHORT_WRITE.search(str(e))
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)) or (short and e.errno is None):
        what = "No space left on device" if e.errno != getattr(errno, "EDQUOT", -1) else "Disk quota exceeded"
        detail = f" (only {short.group(2)} of {short.group(1)} bytes could be written)" if short else ""
        free = _free_bytes(where)
        room = f"; {_size(free)} free on the disk of {where}" if free is not None else ""
        return f"{what}{detail}{room}: free some space or choose another output folder (-o)"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        name = f" ({e.filename})" if getattr(e, "filename", None) else ""
        return f"{text}{name}"
    return text


def check_writable(outdir, need_bytes: int | None = None) -> None:
    """Refuse (:class:`OutputError`) an output folder that cannot hold the results, before any
    work is done: a file in its place, a folder (or, when it does not exist yet, the nearest
    existing folder above it) this user cannot write to, or (with ``need_bytes``) a disk with
    less free space than the results need."""
    outdir = Path(outdir)
    if not os.fspath(outdir).strip():
        raise OutputError("the output folder is an empty name: give a folder (-o)")
    if outdir.is_symlink() and not outdir.exists():
        raise OutputError(f"cannot write the results to {outdir}: it is a symbolic link to {os.readlink(outdir)}, "
                          "which does not exist")
    if outdir.exists() and not outdir.is_dir():
        raise OutputError(f"cannot write the results to {outdir}: it is a file, not a folder")
    probe = outdir
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputError(f"cannot create the output folder {outdir}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        if probe == outdir:
            raise OutputError(f"cannot write the results to {outdir}: the folder is not writable")
        raise OutputError(f"cannot create the output folder {outdir}: {probe} is not writable")
    _probe_write(outdir, probe)
    if need_bytes:
        free = _free_bytes(probe)
        try:
            pseudo = shutil.disk_usage(probe).total == 0  # /proc and the like: no size to compare with
        except OSError:
            pseudo = True
        if free is not None and not pseudo and free < need_bytes:
            raise OutputError(
                f"cannot write the results to {outdir}: No space left on device (the results need about "
                f"{_size(need_bytes)} but the disk has {_size(free)} free): free some space or choose another "
                "output folder (-o)"
            )


def _probe_write(outdir: Path, existing: Path) -> None:
    """Create what the results need (the missing folders, a file) and remove it again at once:
    what permissions alone do not tell (a read-only file system, a name too long, /proc) is
    found before the run, and nothing is left behind (Ctrl-C or SIGTERM waits for the clean-up)."""
    import tempfile

    from ..core.interrupts import critical

    made, tmp = [], None
    with critical():
        try:
            try:
                for d in reversed([d for d in [outdir, *outdir.parents] if not d.exists()]):
                    d.mkdir()
                    made.append(d)
                fd, tmp = tempfile.mkstemp(prefix=".napari-edof-probe-", dir=outdir)
                os.close(fd)
            except OSError as e:
                what = "create the output folder" if made or not outdir.exists() else "write the results to"
                raise OutputError(f"cannot {what} {outdir}: {explain_oserror(e, existing)}") from None
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            for d in reversed(made):
                try:
                    d.rmdir()
                except OSError:
                    pass


def plan_outputs(outdir, names: Iterable[str], sources: Sequence, need_bytes: int | None = None) -> None:
    """Every check of where a result goes, in one call, before anything is computed: the folder
    can hold it (:func:`check_writable`) and none of its files is an input (:func:`check_not_inputs`)."""
    names = list(names)
    check_not_inputs(outdir, names, sources)
    check_writable(outdir, need_bytes)


def result_bytes(fmt: str, n_times: int, n_planes: int, yx, channels: int, itemsize: int,
                 outputs=OUTPUTS) -> int | None:
    """About how many bytes the files of one result take (uncompressed TIFFs; None for OME-Zarr,
    which is compressed and written as it goes)."""
    if fmt not in ("tiff", "tiled-tiff"):
        return None
    px = int(n_times) * int(yx[0]) * int(yx[1])
    if fmt != "tiff":
        outputs = ("fused", "index", "confidence")
    outputs = OUTPUTS if outputs is None else outputs
    per = {"fused": channels * itemsize, "index": 4 + (3 if fmt == "tiff" else 0), "confidence": 4,
           "decision": 2, "masks": int(n_planes), "audit": 5}
    per = sum(v for k, v in per.items() if k in outputs)
    return px * per


def parse_outputs(text) -> tuple[str, ...]:
    """``"fused,index"`` (or a sequence, or "all") as a tuple of :data:`OUTPUTS`, in their order."""
    if isinstance(text, str):
        items = [t.strip().lower() for t in text.split(",") if t.strip()]
    else:
        items = [str(t).strip().lower() for t in text]
    if items == ["all"]:
        return OUTPUTS
    aliases = {"focus_index": "index", "focus-index": "index", "mask": "masks", "audit_mask": "audit",
               "audit-mask": "audit"}
    items = [aliases.get(t, t) for t in items]
    bad = [t for t in items if t not in OUTPUTS]
    if bad or not items:
        raise EdofError(f"--outputs {text!r}: choose from {', '.join(OUTPUTS)} (comma-separated) or all"
                        + (f"; {', '.join(map(repr, bad))} is not one" if bad else ""))
    return tuple(o for o in OUTPUTS if o in items)


def result_names(fmt: str = "tiff", n_times: int = 1, prefix: str = "", outputs=OUTPUTS,
                 preview: str | None = None, audit: bool = False) -> list[str]:
    """The file (or OME-Zarr folder) names of one result written in format ``fmt`` (for "tiff":
    the chosen ``outputs`` and the fused ``preview``, if any; for the streamed formats, the
    audit's two images with ``audit``)."""
    if fmt == "tiff":
        outputs = OUTPUTS if outputs is None else tuple(outputs)
        frames = [f"_t{t:03d}" for t in range(n_times)] if n_times > 1 else [""]
        names = []
        if "fused" in outputs:
            names.append(f"{prefix}fused.tif")
        if "index" in outputs:
            names += [f"{prefix}focus_index.tif"] + [f"{prefix}focus_index{f}.png" for f in frames]
        for o in ("decision", "masks", "confidence"):
            if o in outputs:
                names.append(f"{prefix}{o}.tif")
        if "audit" in outputs:
            names += [f"{prefix}audit.tif", f"{prefix}audit_mask.tif"]
        if preview:
            names += [f"{prefix}fused_preview{f}.{preview}" for f in frames]
    elif fmt == "zarr":
        names = [f"{prefix}fused.ome.zarr", f"{prefix}focus_index.ome.zarr", f"{prefix}confidence.ome.zarr"]
        if audit:
            names += [f"{prefix}audit.ome.zarr", f"{prefix}audit_mask.ome.zarr"]
    elif fmt == "tiled-tiff":
        names = [f"{prefix}fused.tif", f"{prefix}focus_index.tif", f"{prefix}confidence.tif"]
        if audit:
            names += [f"{prefix}audit.tif", f"{prefix}audit_mask.tif"]
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


def _file_id(path: str):
    """(device, inode) of an existing file or folder, None otherwise: two paths with the same id
    are the same file (hard links, case-insensitive file systems), as ``os.path.samefile`` says."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino)


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
    ids = [_file_id(real) for _, real in srcs]  # (each input stat-ed once, not once per output)
    for name in names:
        target = _real(Path(outdir) / name)
        tid = _file_id(target)
        for (given, real), sid in zip(srcs, ids):
            if target == real or (tid is not None and tid == sid) or _inside(real, target):
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
