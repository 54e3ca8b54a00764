"""The command-line tool: ``napari-edof fuse | methods | evaluate | train | build-kernels``.

Exit codes: 0 done, 1 unexpected failure, 2 bad usage or bad input, 3 the output could not be
written, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM); interrupted or terminated, no partial
output files are left behind.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from pathlib import Path

EXIT_OK, EXIT_FAIL, EXIT_INPUT, EXIT_OUTPUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_TERMINATED = 143  # SIGTERM (128 + 15): cleaned up like Ctrl-C


def _parse_params(items: list[str]) -> dict:
    from .core.errors import MethodError

    out = {}
    for it in items or []:
        if "=" not in it:
            raise MethodError(f"--param takes NAME=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _method_help() -> str:
    from .methods import list_methods

    return ", ".join(s.name for s in list_methods())


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command line's parser; for ``train MODEL`` (read from ``argv``) with the options that
    MODEL's recipe declares (:class:`napari_edof.training.train.Option`)."""
    p = argparse.ArgumentParser(
        prog="napari-edof",
        description="Extended depth of field: fuse focus stacks into all-in-focus images, "
        "with focus-index (height) maps and decision masks.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fuse", help="fuse one stack (or many with --batch) and write the results")
    f.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="a stack file (TIFF/OME-TIFF/ImageJ), a folder or glob of 2D images, or several "
                        "2D images forming one stack (with --batch: each INPUT is its own stack)")
    f.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the results")
    f.add_argument("--sample", action="store_true", help="fuse the built-in synthetic stack (no INPUT)")
    f.add_argument("--batch", action="store_true", help="each INPUT is a separate stack -> OUTDIR/<name>/")
    f.add_argument("-m", "--method", default=None, help="fusion method (see `napari-edof methods`)")
    f.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a method parameter, repeatable (see `napari-edof methods -v`)")
    f.add_argument("--tile", default="auto", help="tile side in pixels, 'auto' (default) or 0 for none")
    f.add_argument("--overlap", type=int, default=None, help="blended overlap between tiles (pixels)")
    f.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    f.add_argument("--precision", choices=("auto", "float32", "half"), default="auto",
                   help="learned methods: half runs the network in half precision if the first tile's focus "
                        "index is identical to float32's (else float32; provenance.json says which); auto: "
                        "half on CUDA for methods measured safe in it")
    f.add_argument("--axes", default=None,
                   help="axes of the input when its metadata does not say, e.g. ZYX, TZYX, CZYX")
    f.add_argument("--guide", default="auto", help="auto, luminance, mean or a channel number")
    f.add_argument("--threads", type=int, default=None, help="threads for CPU methods (default: all cores)")
    f.add_argument("--format", choices=("tiff", "zarr", "tiled-tiff"), default="tiff",
                   help="tiff (default): TIFF and PNG files, the stack fused in memory; zarr: OME-Zarr images "
                        "written stripe by stripe, for stacks larger than memory (memory stays one stripe); "
                        "tiled-tiff: the same streaming run, then tiled TIFFs written a row of tiles at a time")
    f.add_argument("--outputs", default=None, metavar="LIST",
                   help="--format tiff: which files to write, comma-separated from fused, index, decision, masks, "
                        "confidence, audit, or all (default: fused,index,decision,confidence, and audit for methods "
                        "that synthesise values; the masks are left out: mask k is decision.tif == k + 1); audit: "
                        "audit.tif, each fused value's distance from the nearest source value, and audit_mask.tif, "
                        "255 where it lies outside the sources' 3x3 local range; provenance.json is always written")
    f.add_argument("--compress", choices=("none", "deflate", "zstd"), default="none",
                   help="--format tiff: lossless TIFF compression (default none: the most widely readable)")
    f.add_argument("--preview", choices=("png", "jpg"), default=None,
                   help="also write fused_preview.png|jpg: the fused image in 8 bits, carrying the first "
                        "source image's EXIF (camera, lens, exposure)")
    f.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on a dask.distributed scheduler (e.g. tcp://host:8786): stacks and time points "
                        "are spread over its workers")
    f.add_argument("--workers", type=int, default=None, metavar="N",
                   help="run on a local dask cluster of N worker processes")
    g = f.add_argument_group("registration (align the planes before fusing)")
    g.add_argument("--register", choices=("none", "translation", "similarity", "affine"), default="none",
                   help="translation: shifts; similarity: + scale (focus breathing) and rotation; affine: "
                        "feature-based (default: none)")
    g.add_argument("--register-reference", type=int, default=None, metavar="PLANE",
                   help="the plane the others are aligned to (default: the middle one)")
    g.add_argument("--register-edges", choices=("crop", "edge", "zero"), default="crop",
                   help="crop to the area every plane covers (default), or pad with the edge pixels or zeros")
    g.add_argument("--no-scale", action="store_true", help="similarity without scale (most microscopes)")
    g.add_argument("--no-rotation", action="store_true", help="similarity without rotation")
    f.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")

    m = sub.add_parser("methods", help="list the fusion methods")
    m.add_argument("-v", "--verbose", action="store_true", help="show each method's parameters")

    sub.add_parser("build-kernels", help="compile focus-fuse's numba kernels now (once after installing, about a "
                                         "minute; until then `fuse` takes the numpy path)")

    e = sub.add_parser("evaluate", help="score a fused image: PSNR/SSIM against a ground truth, fusion "
                                        "metrics (Q^AB/F, NMI, FMI, Q_Y, Q_CB) against its source stack")
    e.add_argument("fused", metavar="FUSED", help="the fused image (TIFF, PNG or JPEG)")
    e.add_argument("--stack", required=True, metavar="STACK", help="the source stack (anything `fuse` reads)")
    e.add_argument("--truth", default=None, metavar="TRUTH",
                   help="the ground-truth all-in-focus image (adds psnr, ssim)")
    e.add_argument("--metrics", default=None, metavar="LIST",
                   help="comma-separated from psnr, ssim, qabf, nmi, fmi, qy, qcb (default: every one that applies)")
    e.add_argument("--axes", default=None, help="axes of the stack when its metadata does not say")
    e.add_argument("--data-range", type=float, default=None,
                   help="intensity range (default: the dtype's for integers, 1 or the spread for floats)")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")

    t = sub.add_parser("train", help="train a network on synthetic focus stacks (needs torch)",
                       epilog="each model has its own options: napari-edof train MODEL --help lists them")
    t.add_argument("model", help="what to train: a training recipe such as stackmff-v2 (an unknown name lists them)")
    t.add_argument("--steps", type=int, required=True, help="total optimisation steps")
    t.add_argument("--out", required=True, help="folder for checkpoints, log and final weights.pt")
    t.add_argument("--seed", type=int, default=0, help="seed of the data and the initialisation")
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt when it exists")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    _add_recipe_options(t, argv)
    return p


def _check_counts(args, names) -> None:
    """Counts (threads, workers, steps) are whole numbers of 1 or more: -1 is not "all"."""
    from .core.errors import EdofError

    for n in names:
        v = getattr(args, n, None)
        if v is not None and v < 1:
            raise EdofError(f"--{n.replace('_', '-')} must be 1 or more, not {v}")


#: the train command's own options that take a value (the rest of its options are the recipe's)
_TRAIN_VALUES = ("--steps", "--out", "--seed")


def _train_model(argv: list[str] | None) -> str | None:
    """The MODEL of ``train MODEL ...`` in ``argv`` (None when the command is not train or names
    no model): the first word after ``train`` that is not an option or an option's value."""
    argv = list(sys.argv[1:] if argv is None else argv)
    words = [a for a in argv if not a.startswith("-")]
    if not words or words[0] != "train":
        return None
    rest = argv[argv.index("train") + 1:]
    try:
        from .training.train import OPTIONS, RECIPES

        list(RECIPES)  # (loads the recipes: their options that take values)
        values = set(_TRAIN_VALUES) | {o.flag for opts in OPTIONS.values() for o in opts if o.type is not bool}
    except ImportError:  # torch missing: cmd_train says so
        values = set(_TRAIN_VALUES)
    i = 0
    while i < len(rest):
        a = rest[i]
        if a == "--":
            return rest[i + 1] if i + 1 < len(rest) else None
        if a.startswith("-"):
            i += 2 if a in values else 1
            continue
        return a
    return None


def _shown(v) -> str:
    return "none" if v is None else str(v)


def _add_recipe_options(t: argparse.ArgumentParser, argv: list[str] | None) -> None:
    """MODEL's declared options on the train parser (none for another command or an unknown MODEL)."""
    model = _train_model(argv)
    if model is None:
        return
    try:
        from .training.train import RECIPES, recipe_options_of
    except ImportError:
        return
    if model not in RECIPES:
        return
    g = t.add_argument_group(f"{model} options (when not given: the recipe's default)")
    for o in recipe_options_of(model):
        kw = dict(dest=o.name, default=argparse.SUPPRESS, help=f"{o.help} (default: {_shown(o.default)})")
        if o.type is bool:
            g.add_argument(o.flag, action=argparse.BooleanOptionalAction, **kw)
        else:
            g.add_argument(o.flag, type=o.type, metavar={int: "N", float: "X"}.get(o.type, "VALUE"), **kw)


def cmd_train(args) -> int:
    from .core.errors import EdofError

    try:
        _check_counts(args, ("steps",))
    except EdofError as e:
        print(f"napari-edof: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    try:
        from .training.train import RECIPES, get_recipe, recipe_options_of
    except ImportError as e:  # torch missing
        print(f"napari-edof: error: training needs torch ({e})", file=sys.stderr)
        return EXIT_INPUT
    if args.model not in RECIPES:
        print(f"napari-edof: error: cannot train {args.model!r}; one of {', '.join(RECIPES)}", file=sys.stderr)
        return EXIT_INPUT
    declared = recipe_options_of(args.model)
    unknown = getattr(args, "unknown", None)
    if unknown:
        flags = [a.split("=", 1)[0] for a in unknown if a.startswith("-")]
        what = ", ".join(flags) if flags else " ".join(unknown)
        print(f"napari-edof: error: {args.model} does not take {what}; its options: "
              f"{', '.join(o.flag for o in declared)} (napari-edof train {args.model} --help)", file=sys.stderr)
        return EXIT_INPUT
    given = {o.name: getattr(args, o.name) for o in declared if hasattr(args, o.name)}
    for o in declared:
        v = given.get(o.name)
        if v is not None and o.minimum is not None and v < o.minimum:
            print(f"napari-edof: error: {o.flag} must be {o.minimum} or more, not {v}", file=sys.stderr)
            return EXIT_INPUT
    if given.get("init") and not Path(given["init"]).is_file():
        print(f"napari-edof: error: --init {given['init']} is not a file", file=sys.stderr)
        return EXIT_INPUT
    try:
        recipe = get_recipe(args.model)
        s = recipe(steps=args.steps, out=args.out, seed=args.seed, resume=args.resume, progress=not args.quiet,
                   **given)
    except KeyboardInterrupt as e:
        word = "terminated" if _stopped_code(e) == EXIT_TERMINATED else "interrupted"
        print(f"napari-edof: {word}; resume with --resume (checkpoint in {args.out})", file=sys.stderr)
        return _stopped_code(e)
    except OSError as e:
        print(f"napari-edof: error: {e}", file=sys.stderr)
        return EXIT_OUTPUT
    if not args.quiet:
        print(f"napari-edof: trained {args.model} to step {s['step']}/{s['steps']} in {s['seconds']:.1f} s; "
              f"weights: {s['weights']}")
    return EXIT_OK


class _LazyBar:
    """A tqdm bar made at the first progress step (no bar before argument errors), that shows the
    stage ("pass 1", "fuse", ...) and counts what the run counts: its tile steps, every pass."""

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def show(self, step) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=step.total, unit="tile", desc=self.desc, leave=False, file=sys.stderr,
                            dynamic_ncols=True)
        stage = getattr(step, "stage", "")
        desc = f"{self.desc} {stage}" if stage and stage != "fuse" else self.desc
        if self.bar.desc != desc:
            self.bar.set_description_str(desc, refresh=False)
        self.bar.total = step.total
        self.bar.n = step.done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _progress_bar(quiet: bool, desc: str):
    return None if quiet else _LazyBar(desc)


def _work(stack) -> int:
    """Channel-voxels of a stack (planes x rows x columns x channels x time points)."""
    Y, X = stack.yx_shape
    return stack.n_planes * Y * X * max(1, stack.n_channels) * max(1, stack.n_times)


def _run_one(stack, outdir: Path, args, params: dict, work: int | None = None) -> dict:
    """Fuse one stack in this process; ``work``: the channel-voxels of every job of this command
    (a batch's sum: whether loading numba pays off is decided for the whole command)."""
    from .core.engine import fuse_iter
    from .methods._focus_fuse_kernels import one_shot

    bar = _progress_bar(args.quiet, stack.name)
    with one_shot(_work(stack) if work is None else work):
        result = _drain_with_bar(fuse_iter(stack, workers=args.threads, **_options(args, params)), bar)
    return {"result": result, "stack": stack}


def _options(args, params: dict) -> dict:
    from .core.engine import parse_tile
    from .methods import DEFAULT_METHOD

    tile = parse_tile(args.tile, "--tile")
    method = DEFAULT_METHOD if args.method is None else args.method  # -m "" is not the default
    opts = dict(method=method, params=params, tile=tile, overlap=args.overlap,
                device=None if args.device == "auto" else args.device, guide=_guide(args.guide),
                precision=args.precision, audit=getattr(args, "audit", None))
    reg = _register_option(args)
    if reg is not None:
        opts["register"] = reg
    return opts


def _drain_with_bar(gen, bar):
    from .core.engine import drain

    def show(step):
        if bar is not None:
            bar.show(step)

    try:
        return drain(gen, show)
    finally:
        if bar is not None:
            bar.close()


def _run_zarr(stack, outdir: Path, args, params: dict) -> dict:
    """Stream one stack into OME-Zarr images (memory: one stripe); tiled TIFFs from them."""
    import shutil
    import uuid

    from .io.zarr_io import fuse_to_zarr_iter

    opts = _options(args, params)
    bar = _progress_bar(args.quiet, stack.name)
    if args.format == "zarr":
        result, files = _drain_with_bar(fuse_to_zarr_iter(stack, outdir, workers=args.threads, **opts), bar)
        return {"result": result, "stack": stack, "paths": files}
    from .io.tiled import export_result_tiled
    from .io.writers import json_safe

    work = outdir / f".work-{uuid.uuid4().hex[:8]}"
    try:
        result, _ = _drain_with_bar(fuse_to_zarr_iter(stack, work, workers=args.threads, **opts), bar)
        import json

        from .io.outputs import previous_files, result_names, retire_previous
        from .io.writers import _atomic_write

        old = previous_files(outdir)
        files = export_result_tiled(result, outdir, axes=stack.axes, rgb=stack.rgb)
        names = result_names("tiled-tiff", audit=result.audit is not None)
        text = json.dumps(json_safe(dict(result.provenance, files=names)), indent=2)
        files["provenance"] = _atomic_write(outdir / "provenance.json", lambda tmp: tmp.write_text(text))
        retire_previous(outdir, old, names, stack.source)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"result": result, "stack": stack, "paths": files}


def _run_cluster(jobs, args, params: dict) -> list[dict]:
    """Every stack on a dask cluster, one progress bar over all their stripes."""
    from .cluster import connect, fuse_many_iter, fuse_many_to_zarr_iter

    opts = _options(args, params)
    with connect(args.scheduler, args.workers) as client:
        stacks = f"{len(jobs)} stack{'s' if len(jobs) > 1 else ''}"
        bar = _progress_bar(args.quiet, f"{stacks} on {len(client.nthreads())} workers")
        if args.format == "zarr":  # the workers write their stripes into the images themselves
            done = _drain_with_bar(fuse_many_to_zarr_iter(jobs, client, **opts), bar)
            return [{"result": r, "stack": st, "paths": files} for (r, files), (st, _) in zip(done, jobs)]
        results = _drain_with_bar(fuse_many_iter([st for st, _ in jobs], client, **opts), bar)
    return [{"result": r, "stack": st} for r, (st, _) in zip(results, jobs)]


def _tiff_options(args) -> dict:
    """--outputs, --compress and --preview as write_result's options (they apply to --format tiff)."""
    from .core.errors import EdofError
    from .io.outputs import DEFAULT_OUTPUTS, parse_outputs

    given = [n for n, v in (("--outputs", args.outputs), ("--preview", args.preview),
                            ("--compress", None if args.compress == "none" else args.compress)) if v is not None]
    if args.format != "tiff" and given:
        raise EdofError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to --format tiff, "
                        f"not --format {args.format}")
    outputs = DEFAULT_OUTPUTS if args.outputs is None else parse_outputs(args.outputs)
    return dict(outputs=outputs, compression=None if args.compress == "none" else args.compress,
                preview=args.preview)


def _resolve_audit(args, params: dict, tiff_opts: dict) -> None:
    """Whether the run is audited (``args.audit``) and writes audit.tif and audit_mask.tif: asked
    for in --outputs (all included), or by default for methods that synthesise values. The
    streamed formats audit those methods (audit.ome.zarr, audit_mask.ome.zarr; or the two tiled
    TIFFs), except on a cluster (said on stderr)."""
    from .core.spec import get_method
    from .methods import DEFAULT_METHOD

    spec = get_method(DEFAULT_METHOD if args.method is None else args.method)[0]
    synthesises = bool(spec.synthesises(spec.resolve(params)))
    outputs = tuple(tiff_opts["outputs"])
    if args.format != "tiff":
        args.audit = synthesises
        if synthesises and (args.scheduler or args.workers) and args.format == "zarr":
            args.audit = False
            if not args.quiet:
                print(f"napari-edof: note: {spec.name} synthesises values; its audit is not written by a "
                      "--format zarr run on a cluster (use --format tiff, or run without --workers/--scheduler)",
                      file=sys.stderr)
        return
    if args.outputs is None and not synthesises:
        outputs = tuple(o for o in outputs if o != "audit")
    args.audit = "audit" in outputs
    tiff_opts["outputs"] = outputs


def _write(run: dict, dest: Path, fmt: str, tiff_opts: dict | None = None) -> dict:
    if fmt == "zarr":
        import numpy as np

        from .io.zarr_io import create_outputs

        r, st = run["result"], run["stack"]
        outs = create_outputs(dest, shape_tyx=(st.n_times,) + tuple(st.yx_shape), channels=st.n_channels,
                              dtype=st.dtype, axes=st.axes, rows_per_chunk=512, pixel_size=st.pixel_size,
                              z_step=st.z_step, unit=st.unit, name=st.name, sources=st.source)
        try:
            for role, a in (("fused", r.fused), ("index", r.index), ("confidence", r.confidence)):
                a = np.asarray(a)
                if "T" not in st.axes:
                    a = a[None]
                if role == "fused" and "C" not in st.axes:
                    a = a[..., None]
                for t in range(a.shape[0]):
                    outs.arrays[role][t, slice(None)] = a[t]
        except BaseException:
            outs.abort()
            raise
        return outs.commit(r.provenance)
    from .io import write_result

    return write_result(run["result"], dest, **(tiff_opts or {}))


def _register_option(args) -> dict | None:
    """The ``register=`` option --register and its flags ask for (the plan aligns each stack once)."""
    if getattr(args, "register", "none") in (None, "none"):
        return None
    return dict(mode=args.register, reference=args.register_reference, scale=not args.no_scale,
                rotation=not args.no_rotation, edges=args.register_edges, guide=_guide(args.guide))


def _suggest_registration(stack, args) -> None:
    """A warning when the planes look shifted and no registration was asked for (a cheap check:
    three planes, downsampled)."""
    from .core.registration import planes_look_shifted

    try:
        shift = planes_look_shifted(stack, guide=_guide(args.guide))
    except Exception:  # noqa: BLE001 - only a hint: never a reason to fail
        return
    if shift is not None:
        print(f"napari-edof: warning: the planes of {stack.name} look shifted against each other (up to "
              f"{shift:.1f} px between the first, middle and last planes); consider --register translation "
              "(or similarity when focusing changes the magnification)", file=sys.stderr)


def _registration_note(name: str, reg: dict) -> str:
    """What the registration of a run did, from its provenance (``RegistrationReport.as_dict``)."""
    import math

    from .core.registration import NO_SIGNAL

    planes = reg["planes"]
    blank = [p["plane"] for p in planes if p["method"] == NO_SIGNAL]
    note = f"; plane(s) {', '.join(map(str, blank))} have no signal and were not registered" if blank else ""
    return (f"napari-edof: registered {name} ({reg['mode']}): largest shift "
            f"{max(math.hypot(p['dy'], p['dx']) for p in planes):.1f} px, scale "
            f"{min(p['scale'] for p in planes):.4f}..{max(p['scale'] for p in planes):.4f}, "
            f"largest residual {reg['max_residual']:.2f} px{note}")


def batch_folders(inputs, stems) -> list[str]:
    """One distinct result folder name per batch input: its stem, with its parent folders' names
    put in front (``a/stack.tif``, ``b/stack.tif`` -> ``a_stack``, ``b_stack``) for as long as two
    inputs share a name (compared without case); a number after the name where the paths do not
    tell them apart (the same input given twice)."""
    import os

    parents = [list(reversed(Path(os.path.abspath(os.fspath(p))).parent.parts)) for p in inputs]
    names = [str(s) or "stack" for s in stems]
    depth = [0] * len(names)

    def clashes():  # inputs sharing a name with an input elsewhere (not with the same path again)
        seen = {}
        for i, n in enumerate(names):
            seen.setdefault(n.casefold(), []).append(i)
        return [i for group in seen.values() if len(group) > 1 for i in group
                if any(parents[j] != parents[i] for j in group)]

    while True:
        dup = clashes()
        grow = [i for i in dup if depth[i] < len(parents[i]) and parents[i][depth[i]] not in ("", os.sep)]
        if not grow:
            break
        for i in grow:
            names[i] = f"{parents[i][depth[i]]}_{names[i]}"
            depth[i] += 1
    taken = set()
    for i, n in enumerate(names):
        k, cand = 1, n
        while cand.casefold() in taken:
            k += 1
            cand = f"{n}_{k}"
        taken.add(cand.casefold())
        names[i] = cand
    return names


def _plan_outputs(jobs, fmt: str, tiff_opts: dict | None = None) -> None:
    """Before anything runs: no output of any job resolves to an input of any job
    (OverwriteError, exit 2), and every output folder can hold its result: writable, with room
    on its disk (OutputError, exit 3). One place, io/outputs.py, plans every output."""
    from .io.outputs import plan_outputs, result_bytes, result_names

    sources = [s for st, _ in jobs for s in st.source]
    for st, dest in jobs:
        opts = tiff_opts or {}
        outputs = opts.get("outputs")
        need = result_bytes(fmt, st.n_times, st.n_planes, st.yx_shape, st.n_channels, st.dtype.itemsize,
                            outputs=outputs)
        if need is not None and opts.get("compression"):
            need = need // 2  # (a guess: lossless compression about halves these files)
        names = result_names(fmt, st.n_times, outputs=outputs, preview=opts.get("preview")) if fmt == "tiff" \
            else result_names(fmt, st.n_times, audit=True)
        plan_outputs(dest, names, sources, need_bytes=need)


def _guide(g: str):
    return int(g) if isinstance(g, str) and g.isdigit() else g


def _summary(run: dict, outdir: Path) -> str:
    from .core.audit import audit_note
    from .core.result import method_note, precision_note, unknown_note

    r, st = run["result"], run["stack"]
    p = r.provenance
    names = ", ".join(Path(v).name for v in run["paths"].values())
    return (
        f"napari-edof: {p['method']} fused {r.n_planes} planes of {st.yx_shape[0]}x{st.yx_shape[1]} "
        f"{st.dtype}{' RGB' if st.rgb else ''}{f' x {st.n_times} time points' if st.n_times > 1 else ''} "
        f"in {p['seconds']:.2f} s ({p['mvoxel_per_s']:.1f} Mvoxel/s, {_tiles_said(p, st)}, {p['device']})"
        f"{precision_note(p)}{unknown_note(r.index)}{audit_note(p)}{method_note(p)}\n"
        f"  wrote to {outdir}: {names}"
    )


def _tiles_said(p: dict, st) -> str:
    """"48 tiles", or "48 tiles x 2 passes" (x time points): what the progress bar counted."""
    text = f"{p['tiles']} tiles"
    if p.get("passes", 1) > 1:
        text += f" x {p['passes']} passes"
    if st.n_times > 1:
        text += f" x {st.n_times} time points"
    return text


def _os_error(e: OSError, out: Path) -> int:
    """An OSError that reached the CLI: blamed on the results only when it is about the output
    folder (a file outside it, such as a cache, is named as such)."""
    import os

    from .io.outputs import explain_oserror

    name = getattr(e, "filename", None)
    if isinstance(name, (str, bytes, os.PathLike)) and name:  # (some writers set a file object there)
        real, base = os.path.realpath(os.fspath(name)), os.path.realpath(out)
        if real != base and not real.startswith(base.rstrip(os.sep) + os.sep):
            print(f"napari-edof: error: {name}: {explain_oserror(e, Path(os.fspath(name)).parent)}", file=sys.stderr)
            return EXIT_FAIL
    print(f"napari-edof: error: cannot write the results to {out}: {explain_oserror(e, out)}", file=sys.stderr)
    return EXIT_OUTPUT


def cmd_fuse(args) -> int:
    from .core.errors import EdofError
    from .io.outputs import OutputError, OverwriteError

    try:
        params = _parse_params(args.param)
        _check_counts(args, ("threads", "workers"))
        tiff_opts = _tiff_options(args)
        _resolve_audit(args, params, tiff_opts)
        if args.scheduler is not None:
            from .cluster import check_address

            check_address(args.scheduler)
    except EdofError as e:
        print(f"napari-edof: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    if not args.output.strip():  # an unset shell variable: never "the current folder"
        print("napari-edof: error: -o/--output is empty: give the folder for the results", file=sys.stderr)
        return EXIT_INPUT
    out = Path(args.output)
    if args.sample and args.inputs:
        print("napari-edof: error: give INPUT files or --sample, not both", file=sys.stderr)
        return EXIT_INPUT
    if not args.sample and not args.inputs:
        print("napari-edof: error: no INPUT given (or use --sample for the built-in stack)", file=sys.stderr)
        return EXIT_INPUT
    # (numba is not loaded ahead in a thread here, as the widget does: measured under load 9-10,
    # it gained nothing, 0.96-1.04 of the time, and the peak RSS went up 16-26 MiB)
    written: list[Path] = []
    try:
        if args.sample:
            from .data import sample_stack

            jobs = [(sample_stack(n_planes=16, shape=(512, 512)).stack, out)]
        else:
            from .io import open_stack

            if args.batch:
                stacks = [open_stack(inp, axes=args.axes) for inp in args.inputs]
                names = batch_folders(args.inputs, [Path(st.name).stem for st in stacks])
                jobs = [(st, out / n) for st, n in zip(stacks, names)]
            else:
                src = args.inputs[0] if len(args.inputs) == 1 else list(args.inputs)
                if args.format == "tiff" and not (args.scheduler or args.workers):
                    from .io import read_stack  # in memory when it fits: read at once, in threads

                    jobs = [(read_stack(src, axes=args.axes, workers=args.threads), out)]
                else:
                    jobs = [(open_stack(src, axes=args.axes), out)]
        _plan_outputs(jobs, args.format, tiff_opts)
        if not args.quiet and getattr(args, "register", "none") in (None, "none"):
            for st, _ in jobs:
                _suggest_registration(st, args)
        if args.scheduler or args.workers:
            runs = _run_cluster(jobs, args, params)
        else:
            runs = None
        for i, (st, dest) in enumerate(jobs):
            if runs is not None:
                run = runs[i]
            elif args.format in ("zarr", "tiled-tiff"):
                run = _run_zarr(st, dest, args, params)
            else:
                run = _run_one(st, dest, args, params, work=sum(_work(j) for j, _ in jobs))
            try:
                if "paths" not in run:
                    live = not args.quiet and sys.stderr.isatty()
                    if live:  # the last stage on a terminal (erased again: the summary is the last line)
                        print(f"napari-edof: writing the results to {dest}…", end="\r", file=sys.stderr, flush=True)
                    try:
                        run["paths"] = _write(run, dest, args.format, tiff_opts)
                    finally:
                        if live:
                            print("\r\033[K", end="", file=sys.stderr, flush=True)
            except EdofError as e:
                if isinstance(e, OverwriteError):
                    raise
                print(f"napari-edof: error: {e}", file=sys.stderr)
                return EXIT_OUTPUT
            written.append(dest)
            if not args.quiet:
                if "registration" in run["result"].provenance:
                    print(_registration_note(st.name, run["result"].provenance["registration"]), file=sys.stderr)
                print(_summary(run, dest))
        if args.batch and not args.quiet and len(jobs) > 1:
            print(f"napari-edof: {len(jobs)} stacks, each in its own folder of {out}:")
            for inp, (_, dest) in zip(args.inputs, jobs):
                print(f"  {inp} -> {dest.name}")
    except OutputError as e:
        print(f"napari-edof: error: {e}", file=sys.stderr)
        return EXIT_OUTPUT
    except EdofError as e:
        print(f"napari-edof: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except OSError as e:
        return _os_error(e, out)
    except KeyboardInterrupt as e:
        word = "terminated" if _stopped_code(e) == EXIT_TERMINATED else "interrupted"
        kept = f"; the results already written ({', '.join(map(str, written))}) are complete" if written else ""
        print(f"napari-edof: {word}; results being written were discarded (earlier results "
              f"are as they were){kept}", file=sys.stderr)
        return _stopped_code(e)
    return EXIT_OK


def cmd_methods(args) -> int:
    from .core.spec import TORCH_INSTALL, available
    from .methods import DEFAULT_METHOD, list_methods

    missing = False
    for s in list_methods():
        star = " (default)" if s.name == DEFAULT_METHOD else ""
        ok = available(s)
        missing |= not ok
        print(f"{s.name:<16} {s.family:<10} {s.summary}{star}" + ("" if ok else " [unavailable: needs PyTorch]"))
        if args.verbose:
            for prm in s.params:
                rng = ""
                if prm.choices:
                    rng = f" one of {', '.join(map(str, prm.choices))}"
                elif prm.min is not None or prm.max is not None:
                    rng = f" in [{prm.min if prm.min is not None else ''}, {prm.max if prm.max is not None else ''}]"
                print(f"    --param {prm.name + '=' + str(prm.default):<24} {prm.help}{rng}")
            if s.citation:
                print(f"    cite: {s.citation}")
    if missing:
        print(f"\nThe learned methods need PyTorch, which is not installed: {TORCH_INSTALL}")
    return EXIT_OK


def cmd_build_kernels(args) -> int:
    """Compile focus-fuse's kernels for the common stacks and record them built, here and now (what
    the napari widget and the Python API have a child process do at their first focus-fuse run)."""
    import time

    from .methods import _focus_fuse_kernels as k

    if os.environ.get("NAPARI_EDOF_NUMBA", "") == "0":
        print("napari-edof: NAPARI_EDOF_NUMBA=0 switches the compiled kernels off; nothing to build", file=sys.stderr)
        return EXIT_INPUT
    if k.kernels() is None:
        print("napari-edof: numba is not installed, so focus-fuse runs its numpy path: pip install numba",
              file=sys.stderr)
        return EXIT_INPUT
    from .methods.focus_fuse import build_kernels

    t0 = time.perf_counter()
    was = k.built()
    print("napari-edof: " + ("loading" if was else "compiling") + " focus-fuse's kernels…", file=sys.stderr, flush=True)
    build_kernels(force=True)
    print(f"napari-edof: focus-fuse's kernels are built ({time.perf_counter() - t0:.1f} s)")
    return EXIT_OK


def cmd_evaluate(args) -> int:
    import json

    from ._evaluate import evaluate, json_value
    from .core.errors import EdofError

    try:
        from .io import open_stack

        values = evaluate(args.fused, open_stack(args.stack, axes=args.axes), args.truth,
                          metrics=args.metrics, data_range=args.data_range)
    except (EdofError, OSError) as e:
        print(f"napari-edof: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    if args.json:
        print(json.dumps({"fused": args.fused, "stack": args.stack, "truth": args.truth,
                          "metrics": {k: json_value(v) for k, v in values.items()}}, indent=2))
    else:
        from .metrics import format_table

        print(format_table(values))
    return EXIT_OK


@contextlib.contextmanager
def _warnings_to_stderr():
    """napari-edof's warnings (metadata reconciled with the data, a result replaced) printed as
    one line each on stderr; other warnings as Python prints them."""
    from .core.errors import EdofWarning

    with warnings.catch_warnings():
        warnings.simplefilter("always", EdofWarning)
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, EdofWarning):
                print(f"napari-edof: warning: {message}", file=sys.stderr)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def _stopped_code(exc: KeyboardInterrupt) -> int:
    from .core.errors import Terminated

    return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED


_EXIT_FAST: list[bool] = []


def _freeze_at_exit() -> None:
    """At interpreter exit, move every object into the garbage collector's permanent generation
    (``gc.freeze``): the exit's last collection then skips them. After numba is loaded (hundreds
    of thousands of objects) that collection took 0.45 s of every ``fuse`` process; nothing is
    lost by skipping it (files are closed and atexit handlers still run)."""
    import gc

    gc.freeze()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not _EXIT_FAST:
        import atexit

        atexit.register(_freeze_at_exit)
        _EXIT_FAST.append(True)
    parser = build_parser(argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        if args.command != "train":
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.unknown = unknown  # (cmd_train names them, with the model's options)
    from .core.interrupts import handle_signals

    with handle_signals(), _warnings_to_stderr():
        try:
            return _dispatch(args)
        except KeyboardInterrupt as e:  # commands without their own message (evaluate, methods)
            print(f"napari-edof: {'terminated' if _stopped_code(e) == EXIT_TERMINATED else 'interrupted'}",
                  file=sys.stderr)
            return _stopped_code(e)


def _dispatch(args) -> int:
    if args.command == "fuse":
        return cmd_fuse(args)
    if args.command == "methods":
        return cmd_methods(args)
    if args.command == "train":
        return cmd_train(args)
    if args.command == "evaluate":
        return cmd_evaluate(args)
    if args.command == "build-kernels":
        return cmd_build_kernels(args)
    return EXIT_FAIL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
