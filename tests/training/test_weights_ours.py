"""Our shipped StackMFF-V2 weights: present, small, loadable, documented, and better than chance."""
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import napari_edof  # noqa: E402

WEIGHTS = Path(napari_edof.__file__).parent / "weights"
PT = WEIGHTS / "stackmff_v2_ours.pt"
CARD = WEIGHTS / "stackmff_v2_ours.md"


def test_shipped_weights_load_and_are_documented():
    from napari_edof.nn.stackmff_v2 import StackMFFV2
    from napari_edof.nn.weights import sha256_of

    assert PT.stat().st_size < 400_000
    sd = torch.load(PT, map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float32 for v in sd.values() if v.is_floating_point())
    StackMFFV2().load_state_dict(sd, strict=True)
    card = CARD.read_text()
    assert sha256_of(PT) in card
    for word in ("seed", "steps", "validation", "fine-tuned", "MIT"):
        assert re.search(word, card, re.I), word


def test_shipped_weights_find_the_sharp_plane():
    from napari_edof.nn.stackmff_v2 import StackMFFV2
    from napari_edof.training.datasets import StackDataset
    from napari_edof.training.synth import SynthConfig

    m = StackMFFV2()
    m.load_state_dict(torch.load(PT, map_location="cpu", weights_only=True))
    m.eval()
    ds = StackDataset(seed=77, crop=(64, 64), n_range=(6, 6), scenes={"cells": 1}, augment=False,
                      synth=SynthConfig(models={"layered": 1}, noise_p=0, flicker=0))
    acc = []
    for i in range(2):
        it = ds[i]
        with torch.inference_mode():
            idx = m(torch.from_numpy(it["stack"])[None])[0].argmax(0).numpy()
        acc.append((idx == it["index"]).mean())
    assert np.mean(acc) > 0.6
