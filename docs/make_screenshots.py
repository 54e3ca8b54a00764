"""Make the screenshots in docs/images/ by driving a real napari viewer.

Run it from the repository root:

    xvfb-run -a .venv/bin/python docs/make_screenshots.py     # headless (or with a display)
    .venv/bin/python docs/make_screenshots.py                  # starts a virtual display itself
                                                               # (pyvirtualdisplay) when there is none

It opens the built-in synthetic samples, fuses them with the "Fuse focus stack" widget (or, if
that widget is missing, with napari_edof.api.fuse and layers added by the same convention),
docks the focus inspector, clicks a pixel, and saves downscaled, palette PNGs (a few hundred KB in
all). ``--only NAME`` makes one image; ``--out DIR`` writes elsewhere.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WINDOW = (1366, 768)  # a laptop's screen: both docks must be usable at this size


def _remove_dock(viewer, name: str) -> None:
    """Remove the dock widget whose name starts with ``name`` (napari's public ``dock_widgets``
    holds the inner widgets; the dock wrapper is their parent; plugin docks are named
    "<widget> (<plugin>)")."""
    key = next(k for k in viewer.window.dock_widgets if k == name or k.startswith(name + " ("))
    inner = viewer.window.dock_widgets[key]
    viewer.window.remove_dock_widget(inner.parent() or inner)


def _ensure_display():
    if os.environ.get("DISPLAY") or sys.platform in ("darwin", "win32"):
        return None
    from pyvirtualdisplay import Display

    d = Display(visible=False, size=(1600, 1000), color_depth=24)
    d.start()
    return d


def save(img: np.ndarray, path: Path, width: int, colours: int = 64, crop: bool = False) -> None:
    """Downscale an RGBA screenshot to ``width`` and save it as a small palette PNG.

    ``crop``: cut the black canvas border around the content (canvas-only shots).
    """
    from PIL import Image

    a = np.asarray(img)[..., :3].astype(np.uint8)
    if crop:
        a = _crop(a)
    im = Image.fromarray(np.ascontiguousarray(a))
    if im.width > width:
        im = im.resize((width, round(im.height * width / im.width)), Image.Resampling.LANCZOS)
    im = im.quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, optimize=True)
    print(f"{path.relative_to(path.parents[1]) if len(path.parents) > 1 else path}: "
          f"{im.width}x{im.height}, {path.stat().st_size / 1024:.0f} KB")


def _crop(a: np.ndarray, margin: int = 4) -> np.ndarray:
    """Cut the black canvas border around the content."""
    ys, xs = np.nonzero(a.max(axis=2) > 8)
    if not len(ys):
        return a
    m = margin
    return a[max(ys.min() - m, 0): ys.max() + m + 1, max(xs.min() - m, 0): xs.max() + m + 1]


def _resize(a: np.ndarray, h: int) -> np.ndarray:
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(a))
    return np.asarray(im.resize((round(im.width * h / im.height), h), Image.Resampling.LANCZOS))


def settle(viewer, n: int = 6) -> None:
    import time

    from qtpy.QtWidgets import QApplication

    for _ in range(n):
        QApplication.processEvents()
        time.sleep(0.02)


def fuse_with_widget(viewer, source, method="focus-select"):
    """Fuse ``source`` with the fusion widget (docked); returns (widget or None, layers by role)."""
    try:
        from napari_edof._qt.fusion_widget import FusionWidget
    except ImportError:
        FusionWidget = None
    if FusionWidget is not None:  # the way napari adds it (Plugins menu): a proxied viewer
        _, w = viewer.window.add_plugin_dock_widget("napari-edof", "Fuse focus stack")
        w.set_layer(source)
        w.set_method(method)
        w.run(sync=True)
        settle(viewer)
        return w, dict(w.last_layers)
    return None, _fuse_by_hand(viewer, source, method)


def _fuse_by_hand(viewer, source, method):
    from napari_edof import api

    rgb = bool(source.rgb)
    axes = "ZYXC" if rgb else "ZYX"
    res = api.fuse(api.as_stack(source.data, axes=axes), method=method)
    scale = tuple(source.scale)[1:]
    meta = dict(source=source.name, n_planes=res.n_planes, z_axis=0, axes=axes, method=method,
                params=res.provenance.get("params", {}), z_step=float(source.scale[0]),
                pixel_size=scale)
    out = {}
    for role, data, kind, kw in (
        ("fused", res.fused, "image", {"rgb": rgb}),
        ("index", res.index, "image", {"colormap": "viridis", "visible": False}),
        ("decision", res.labels(), "labels", {"visible": False}),
        ("confidence", res.confidence, "image", {"colormap": "magma", "visible": False}),
    ):
        name = f"{source.name} {'focus index' if role == 'index' else role}"
        add = viewer.add_labels if kind == "labels" else viewer.add_image
        out[role] = add(data, name=name, scale=scale, metadata={"napari_edof": dict(meta, role=role)}, **kw)
    return out


def only(viewer, keep) -> None:
    for ly in viewer.layers:
        ly.visible = any(ly is k for k in keep)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "images")
    ap.add_argument("--only", default=None, help="make only this image (file stem)")
    args = ap.parse_args(argv)
    display = _ensure_display()
    os.environ.setdefault("QT_QPA_PLATFORM", "xcb")

    import napari

    from napari_edof._qt.inspector import FocusInspector

    out = args.out

    def want(stem):
        return args.only in (None, stem)

    viewer = napari.Viewer(show=True, title="napari-edof")
    viewer.window.resize(*WINDOW)
    settle(viewer)
    try:
        # ---------------------------------------------------------------- grey z-stack
        viewer.open_sample("napari-edof", "synthetic-grey")
        source = next(ly for ly in viewer.layers if ly.name == "synthetic stack")
        for ly in list(viewer.layers):
            if "ground-truth" in ly.name:
                viewer.layers.remove(ly)
        fw, L = fuse_with_widget(viewer, source)
        only(viewer, [L["fused"]])
        viewer.reset_view()
        settle(viewer)
        if want("fusion-widget"):
            save(viewer.screenshot(canvas_only=False, flash=False), out / "fusion-widget.png", 760, 32)

        # results in a 2x2 grid: fused | focus index / decision | confidence
        if want("results-grid"):
            only(viewer, [L["fused"], L["index"], L["decision"], L["confidence"]])
            viewer.canvas.grid.enabled = True
            viewer.canvas.grid.shape = (2, 2)
            viewer.reset_view()
            settle(viewer)
            save(viewer.screenshot(canvas_only=True, flash=False), out / "results-grid.png", 480, 96, crop=True)
            viewer.canvas.grid.enabled = False
            viewer.canvas.grid.shape = (-1, -1)

        # ---------------------------------------------------------------- the inspector
        # (docked below the fusion widget, as on a laptop: both fit at 1366 x 768)
        _, insp = viewer.window.add_plugin_dock_widget("napari-edof", "Focus inspector")
        assert isinstance(insp, FocusInspector)
        only(viewer, [L["fused"]])
        viewer.reset_view()
        settle(viewer)
        # a pixel near a seam between planes, where the fusion had to choose
        lab = np.asarray(L["decision"].data)
        edges = (np.diff(lab.astype(int), axis=1) != 0)[:-1, :] | (np.diff(lab.astype(int), axis=0) != 0)[:, :-1]
        cand = np.argwhere(edges[40:-40, 40:-40]) + 40
        y, x = (int(v) for v in cand[len(cand) // 3]) if len(cand) else (128, 128)
        y, x = y, x + 3
        insp.inspect(y, x)
        insp.plane_spin.setValue(insp.last_plane)
        insp.mask_check.setChecked(True)
        marker = insp.marker_layer  # the inspector marks the clicked pixel itself
        viewer.layers.selection.active = L["fused"]
        settle(viewer, 10)
        if want("inspector"):
            save(viewer.screenshot(canvas_only=False, flash=False), out / "inspector.png", 760, 256)

        # side by side: the chosen source plane | fused
        if fw is not None:
            _remove_dock(viewer, "Fuse focus stack")
        viewer.layers.remove(marker)
        insp.mask_check.setChecked(False)
        if want("side-by-side"):
            insp.go_to_plane()
            insp.side_by_side()
            viewer.reset_view()
            settle(viewer)
            save(viewer.screenshot(canvas_only=True, flash=False), out / "side-by-side.png", 480, 32, crop=True)
            insp.exit_mode()

        # retouch: paint plane k on the decision layer (decision shown over the fused image)
        if want("retouch"):
            dec = L["decision"]
            insp.plane_spin.setValue(0)
            insp.paint_with_plane()
            only(viewer, [L["fused"], dec])
            dec.opacity = 0.45
            dec.brush_size = 40
            viewer.reset_view()
            for py in range(60, 200, 12):
                dec.paint((py, 70), 1)
            settle(viewer)
            save(viewer.screenshot(canvas_only=False, flash=False), out / "retouch.png", 760, 32)
            for _ in range(len(range(60, 200, 12))):
                dec.undo()
            dec.mode = "pan_zoom"
            insp.retouch_check.setChecked(False)
            settle(viewer)

        # 3D height view
        if want("height-3d"):
            insp.exag_spin.setValue(4.0)
            insp.show_height_surface()  # opens tilted (the inspector's own view)
            settle(viewer, 10)
            save(viewer.screenshot(canvas_only=False, flash=False), out / "height-3d.png", 760, 32)
            insp.exit_mode()
        _remove_dock(viewer, "Focus inspector")

        # ---------------------------------------------------------------- RGB
        if want("rgb"):
            viewer.layers.clear()
            viewer.open_sample("napari-edof", "synthetic-rgb")
            src = next(ly for ly in viewer.layers if ly.name == "synthetic RGB stack")
            for ly in list(viewer.layers):
                if "ground-truth" in ly.name:
                    viewer.layers.remove(ly)
            fw2, L2 = fuse_with_widget(viewer, src)
            for name in list(viewer.window.dock_widgets):
                _remove_dock(viewer, name)
            viewer.dims.set_current_step(0, 2)
            shots = []
            for ly in (src, L2["fused"]):  # one plane | the fused image, stitched
                only(viewer, [ly])
                viewer.reset_view()
                settle(viewer)
                shots.append(_crop(np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3]))
            h = min(a.shape[0] for a in shots)
            shots = [_resize(a, h) for a in shots]
            gap = np.zeros((h, 8, 3), np.uint8)
            save(np.concatenate([shots[0], gap, shots[1]], axis=1), out / "rgb.png", 480, 64)
    finally:
        viewer.close()
        if display is not None:
            display.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
