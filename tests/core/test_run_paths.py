"""Every run path goes through core.run.run_frames (one _run_frame per time point): the eager ones
run the stripes there, the lazy graph's tasks (built there) run them when computed."""
from __future__ import annotations

import numpy as np
import pytest

import napari_edof as ne
from napari_edof.core import run as R
from napari_edof.core.engine import drain


@pytest.fixture
def spy(monkeypatch):
    calls = {"frame": 0, "region": 0}
    frame, region = R._run_frame, R.run_region

    def counted_frame(*a, **k):
        calls["frame"] += 1
        return frame(*a, **k)

    def counted_region(*a, **k):
        calls["region"] += 1
        return region(*a, **k)

    monkeypatch.setattr(R, "_run_frame", counted_frame)
    monkeypatch.setattr(R, "run_region", counted_region)
    return calls


@pytest.fixture(scope="module")
def movie():
    return np.stack([ne.sample_stack(n_planes=4, shape=(48, 40), seed=s).stack.data for s in (1, 2)])


def test_in_memory(spy, movie):
    ne.fuse(movie, axes="TZYX", method="focus-select", tile=16)
    assert spy["frame"] == 2 and spy["region"] == 2  # one stripe (the whole image) per time point


def test_streamed(spy, movie, tmp_path):
    from napari_edof.io.zarr_io import fuse_to_zarr_iter

    r, _ = drain(fuse_to_zarr_iter(ne.api.as_stack(movie, axes="TZYX"), tmp_path / "o", method="focus-select",
                                   tile=16, budget=1))
    assert spy["frame"] == 2 and spy["region"] == 2 * r.provenance["stripes"]


def test_lazy(spy, movie):
    import dask.array as da

    r = ne.fuse(da.from_array(movie, chunks=(1, 1, 16, -1)), axes="TZYX", method="focus-select", tile=16, budget=1)
    assert spy["frame"] == 2 and spy["region"] == 0  # the graph, built by run_frames: nothing run yet
    r.compute()
    assert spy["frame"] == 2 and spy["region"] == 2 * r.provenance["stripes"]


def test_first_pass_on_every_eager_stripe(spy, movie):
    ne.fuse(movie, axes="TZYX", method="focus-select", tile=16, params={"lowtexture": "mask"})
    assert spy["frame"] == 2 and spy["region"] == 4  # pass 1 and the fusion, per time point
