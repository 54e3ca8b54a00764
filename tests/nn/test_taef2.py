"""The frozen FLUX.2 tiny autoencoder: strict loading, latent shape, reconstruction quality."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_edof.nn import taef2  # noqa: E402
from napari_edof.nn import weights as W  # noqa: E402

from ..conftest import SHARED  # noqa: E402

WEIGHTS = SHARED / "weights"


@pytest.fixture
def weights_cache(monkeypatch):
    for spec in (taef2.ENCODER, taef2.DECODER):
        if not (WEIGHTS / spec.filename).is_file():
            pytest.skip(f"{spec.filename} not found in {WEIGHTS} (the shared/ folder beside the repo)")
    monkeypatch.setenv(W.ENV, str(WEIGHTS))
    monkeypatch.setattr(W, "_download", lambda *a: pytest.fail("tests must not download"))


@pytest.fixture(scope="module")
def ae():
    torch.set_num_threads(1)
    paths = [WEIGHTS / s.filename for s in (taef2.ENCODER, taef2.DECODER)]
    if not all(p.is_file() for p in paths):
        pytest.skip(f"TAEF2 weights not found in {WEIGHTS}")
    return taef2.load_encoder(paths[0]), taef2.load_decoder(paths[1])


def test_specs_are_hash_pinned_downloads():
    for spec in (taef2.ENCODER, taef2.DECODER):
        assert spec.urls and spec.urls[0].startswith("https://github.com/madebyollin/taesd/raw/main/")
        assert spec.urls[0].endswith(spec.filename) and len(spec.sha256) == 64
        assert "MIT" in spec.licence


def test_parameter_counts_and_state_dict_keys():
    # counts from shared/specs/taef2_state_dict.txt
    enc, dec = taef2.Encoder(), taef2.Decoder()
    assert sum(p.numel() for p in enc.parameters()) == 1338528
    assert sum(p.numel() for p in dec.parameters()) == 1338499
    assert len(enc.state_dict()) == 79 and len(dec.state_dict()) == 79
    assert "11.pool.1.weight" in enc.state_dict() and "3.pool.3.weight" in dec.state_dict()
    assert "1.pool.0.weight" not in enc.state_dict() and "18.pool.0.weight" not in dec.state_dict()


def test_loads_strictly_through_the_hash_pinned_cache(weights_cache):
    enc = taef2.load_encoder(download=False)
    dec = taef2.load_decoder(download=False)
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    assert not dec.training and not any(p.requires_grad for p in dec.parameters())
    sd = torch.load(WEIGHTS / taef2.ENCODER.filename, map_location="cpu", weights_only=True)
    assert set(sd) == set(enc.state_dict())


def test_hash_mismatch_is_refused(monkeypatch, tmp_path):
    (tmp_path / taef2.ENCODER.filename).write_bytes(b"not the encoder")
    monkeypatch.setenv(W.ENV, str(tmp_path))
    with pytest.raises(W.WeightsError, match="sha256"):
        taef2.load_encoder()


def test_offline_without_the_file_names_the_url(monkeypatch, tmp_path):
    monkeypatch.setenv(W.ENV, str(tmp_path))
    with pytest.raises(W.WeightsError, match="taesd/raw/main/taef2_decoder.pth"):
        taef2.load_decoder(download=False)


def test_latent_shape_and_padding(ae):
    enc, dec = ae
    x = torch.rand(1, 3, 44, 60)
    with torch.no_grad():
        z = taef2.encode(enc, x)
        assert z.shape == (1, 32, 6, 8)  # padded to 48 x 64, then 1/8
        y = taef2.decode(dec, z, size=(44, 60))
    assert y.shape == (1, 3, 44, 60) and 0 <= float(y.min()) and float(y.max()) <= 1


def _crop(path, side=128):
    from PIL import Image

    im = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255
    h, w = im.shape[:2]
    return im[h // 2 - side // 2 : h // 2 + side // 2, w // 2 - side // 2 : w // 2 + side // 2]


@pytest.mark.parametrize("name,floor", [
    # measured on these 128x128 centre crops: 32.2 dB (Lytro photo) and 39.6 dB (algae
    # brightfield); the spec gives 31.8 / 37.2 dB on its own 256x256 crops
    ("lytro_triple_series/triple_series/lytro-01-A.jpg", 30.5),
    ("algae_microscopy_5focal/img_3.png", 37.0),
])
def test_reconstruction_psnr_floor(ae, name, floor):
    path = SHARED / "data" / name
    if not path.is_file():
        pytest.skip(f"{path} not found")
    enc, dec = ae
    c = _crop(path)
    x = torch.from_numpy(c).permute(2, 0, 1)[None]
    with torch.no_grad():
        y = taef2.decode(dec, enc(x))[0].permute(1, 2, 0).numpy()
    p = 10 * np.log10(1 / np.mean((y - c) ** 2))
    assert p > floor, p


def test_gradients_flow_through_the_frozen_encoder(ae):
    enc, _ = ae
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    enc(x).square().mean().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
