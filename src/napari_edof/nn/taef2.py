"""The FLUX.2 tiny autoencoder (TAEF2), frozen: RGB in [0, 1] <-> 32 latent channels at 1/8.

Written from ``shared/specs/taef2.md`` (a state-dict-compatible implementation of the public
``madebyollin/taesd`` FLUX.2 variant, MIT, Copyright (c) 2023 Ollin Boer Bohan). The weights are
never shipped: :data:`ENCODER` and :data:`DECODER` name the upstream files, downloaded at first use
into the hash-pinned weights cache (``$NAPARI_EDOF_WEIGHTS`` overrides its folder; see
:mod:`napari_edof.nn.weights`).

Encoder and decoder are separate modules, loaded separately (:func:`load_encoder`,
:func:`load_decoder`): VAEEDOF uses both, a perceptual loss only the encoder.
Both are returned in eval mode with ``requires_grad`` off; gradients still flow *through* them
(a perceptual loss on a generated image needs that).

torch is imported by this module: import it lazily.
"""
from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import nn

from ..core.spec import WeightsSpec
from .taef2_weights import CITATION, DECODER, ENCODER, LICENCE  # noqa: F401 (torch-free specs)

LATENT_CHANNELS = 32
#: spatial down-sampling of the latents (H and W must be multiples of this)
SCALE = 8
WIDTH = 64


def _conv(n_in: int, n_out: int, **kw) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kw)


class Clamp(nn.Module):
    """Soft clamp of the latents to (-3, 3): ``tanh(x / 3) * 3``."""

    def forward(self, x):
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    """conv-ReLU-conv-ReLU-conv plus an identity skip, then ReLU; optional "pool" branch first
    (``x + pool(x)``: 1x1 conv to 4x width, GroupNorm(4), ReLU, 1x1 conv back; no biases)."""

    def __init__(self, n_in: int, n_out: int, pool: bool = False):
        super().__init__()
        self.conv = nn.Sequential(_conv(n_in, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(),
                                  _conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        if pool:
            self.pool = nn.Sequential(nn.Conv2d(n_in, 4 * n_in, 1, bias=False), nn.GroupNorm(4, 4 * n_in),
                                      nn.ReLU(), nn.Conv2d(4 * n_in, n_in, 1, bias=False))
        else:
            self.pool = None

    def forward(self, x):
        if self.pool is not None:
            x = x + self.pool(x)
        return F.relu(self.conv(x) + self.skip(x))


def Encoder() -> nn.Sequential:  # noqa: N802 - a module factory, named like a class
    """RGB (B, 3, H, W) in [0, 1] -> latents (B, 32, H/8, W/8)."""
    w = WIDTH
    layers: list[nn.Module] = [_conv(3, w), Block(w, w)]
    for stage in range(3):
        pool = stage == 2
        layers += [_conv(w, w, stride=2, bias=False), Block(w, w, pool), Block(w, w, pool), Block(w, w, pool)]
    layers.append(_conv(w, LATENT_CHANNELS))
    return nn.Sequential(*layers)


def Decoder() -> nn.Sequential:  # noqa: N802
    """Latents (B, 32, h, w) -> RGB (B, 3, 8h, 8w), roughly in [0, 1] (not clipped)."""
    w = WIDTH
    layers: list[nn.Module] = [Clamp(), _conv(LATENT_CHANNELS, w), nn.ReLU(),
                               Block(w, w, True), Block(w, w, True), Block(w, w, True)]
    for _ in range(2):
        layers += [nn.Upsample(scale_factor=2), _conv(w, w, bias=False), Block(w, w), Block(w, w), Block(w, w)]
    layers += [nn.Upsample(scale_factor=2), _conv(w, w, bias=False), Block(w, w), _conv(w, 3)]
    return nn.Sequential(*layers)


def _frozen(m: nn.Module) -> nn.Module:
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def load_encoder(path=None, *, download: bool = True) -> nn.Sequential:
    """The frozen encoder with the pinned upstream weights (or those at ``path``), strictly."""
    m = Encoder()
    m.load_state_dict(_state(ENCODER, path, download), strict=True)
    return _frozen(m)


def load_decoder(path=None, *, download: bool = True) -> nn.Sequential:
    """The frozen decoder with the pinned upstream weights (or those at ``path``), strictly."""
    m = Decoder()
    m.load_state_dict(_state(DECODER, path, download), strict=True)
    return _frozen(m)


def _state(spec: WeightsSpec, path, download: bool) -> dict:
    if path is None:
        from .weights import load_state_dict

        return load_state_dict(spec, download=download)
    return torch.load(str(path), map_location="cpu", weights_only=True)


_CACHE: dict = {}
_LOCK = threading.Lock()


def get(part: str, device: str = "cpu") -> nn.Sequential:
    """The shared frozen ``"encoder"`` or ``"decoder"`` on ``device`` (loaded once per process)."""
    key = (part, str(device))
    with _LOCK:
        if key not in _CACHE:
            load = {"encoder": load_encoder, "decoder": load_decoder}[part]
            _CACHE[key] = load().to(device)
        return _CACHE[key]


def pad_to(x, multiple: int = SCALE, mode: str = "reflect"):
    """Pad (B, C, H, W) on the bottom/right to multiples of ``multiple``: (padded, (H, W))."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        m = mode if (mode != "reflect" or (ph < h and pw < w)) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=m)
    return x, (h, w)


def encode(encoder: nn.Module, rgb):
    """(B, 3, H, W) in [0, 1] -> latents; H, W padded to multiples of 8 (crop the decoded image)."""
    x, _ = pad_to(rgb)
    return encoder(x)


def decode(decoder: nn.Module, z, size=None):
    """Latents -> (B, 3, H, W) clipped to [0, 1], cropped to ``size`` (H, W) when given."""
    y = decoder(z).clamp(0, 1)
    if size is not None:
        y = y[..., : size[0], : size[1]]
    return y
