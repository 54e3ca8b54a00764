"""The TAEF2 weights' specs (upstream URLs, sha256, licence), importable without torch.

The FLUX.2 tiny autoencoder's files are never shipped: they are downloaded at first use into the
hash-pinned cache (:mod:`napari_edof.nn.weights`); :mod:`napari_edof.nn.taef2` is the network.
"""
from __future__ import annotations

from ..core.spec import WeightsSpec

LICENCE = "MIT (Copyright (c) 2023 Ollin Boer Bohan; github.com/madebyollin/taesd)"
CITATION = ("Boer Bohan, O., 'TAESD: Tiny AutoEncoder for Stable Diffusion' (FLUX.2 variant, "
            "taef2), github.com/madebyollin/taesd (MIT).")
_BASE = "https://github.com/madebyollin/taesd/raw/main/"

ENCODER = WeightsSpec(
    filename="taef2_encoder.pth",
    urls=(_BASE + "taef2_encoder.pth",),
    sha256="10a4e1021e89d7551eaf161352da8dbd0b1aa83872ae28b150c1df1ce2f147b6",
    licence=LICENCE,
    citation=CITATION,
)
DECODER = WeightsSpec(
    filename="taef2_decoder.pth",
    urls=(_BASE + "taef2_decoder.pth",),
    sha256="0a44a31e1ae59eb9dbf9359d24942fd3ef5928162c1800d97a28c61d51be0ab5",
    licence=LICENCE,
    citation=CITATION,
)
