"""Losses for the fusion networks (torch).

StackMFF-V2 (the StackMFF-V2 paper, Sec. 3.6): the focus map is the expectation of the plane index
under the softmax over planes; the official training min-max normalised it over each image to
[0, 1] and compared it with the min-max normalised depth map by MSE (:func:`normalised_depth_mse`).
Because a local per-pixel argmax of the logits is also offered as a decision rule, a per-pixel
cross-entropy on the true plane (:func:`plane_cross_entropy`) can be added
(:func:`stackmff_v2_loss`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _minmax(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Min-max normalise each (H, W) image of a (B, H, W) tensor to [0, 1]."""
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(eps)


def expected_index(logits: torch.Tensor) -> torch.Tensor:
    """(B, N, H, W) logits -> (B, H, W) expected 0-based plane index under softmax over N."""
    p = torch.softmax(logits, dim=1)
    n = torch.arange(logits.shape[1], dtype=logits.dtype, device=logits.device).view(1, -1, 1, 1)
    return (p * n).sum(dim=1)


def normalised_depth_mse(logits: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """The paper's loss: MSE between min-max normalised E and min-max normalised depth (B, H, W)."""
    return F.mse_loss(_minmax(expected_index(logits)), _minmax(depth))


def plane_cross_entropy(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Per-pixel cross-entropy of the softmax over planes against the true plane (B, H, W) int."""
    return F.cross_entropy(logits, index.long())


def _depth_terms(logits, depth, index, cross_entropy, ce_weight: float):
    """The two terms every StackMFF-V2 loss starts with: ``normalised_depth_mse(logits, depth) +
    ce_weight * cross_entropy(logits, index)``; returns (loss, metrics with "mse" and "ce")."""
    mse = normalised_depth_mse(logits, depth)
    loss = mse
    metrics = {"mse": float(mse.detach())}
    if ce_weight:
        ce = cross_entropy(logits, index)
        loss = loss + ce_weight * ce
        metrics["ce"] = float(ce.detach())
    return loss, metrics


def stackmff_v2_loss(logits: torch.Tensor, depth: torch.Tensor, index: torch.Tensor,
                     ce_weight: float = 0.1) -> tuple[torch.Tensor, dict]:
    """``normalised_depth_mse + ce_weight * plane_cross_entropy``; returns (loss, metrics)."""
    loss, metrics = _depth_terms(logits, depth, index, plane_cross_entropy, ce_weight)
    with torch.no_grad():
        metrics["acc"] = float((logits.argmax(dim=1) == index).float().mean())
    metrics["loss"] = float(loss.detach())
    return loss, metrics


def soft_plane_cross_entropy(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a continuous true plane coordinate (B, H, W): the target puts
    ``1 - t`` on plane ``floor(index)`` and ``t`` on the next (``t`` the fractional part)."""
    n = logits.shape[1]
    idx = index.clamp(0, n - 1)
    k0 = idx.floor().long().clamp(max=n - 1)
    k1 = (k0 + 1).clamp(max=n - 1)
    t = idx - k0.to(idx.dtype)
    logp = torch.log_softmax(logits, dim=1)
    l0 = torch.gather(logp, 1, k0[:, None])[:, 0]
    l1 = torch.gather(logp, 1, k1[:, None])[:, 0]
    return -((1 - t) * l0 + t * l1).mean()


def soft_fusion(logits: torch.Tensor, stack: torch.Tensor) -> torch.Tensor:
    """The planes (B, N, H, W) averaged per pixel with the softmax weights of the logits: (B, H, W)."""
    return (torch.softmax(logits, dim=1) * stack).sum(dim=1)


def stackmff_v2_realistic_loss(logits: torch.Tensor, stack: torch.Tensor, aif: torch.Tensor,
                               index: torch.Tensor, ce_weight: float = 0.1,
                               fuse_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """The loss on realistic stacks (continuous true plane coordinate ``index``):
    ``normalised_depth_mse + ce_weight * soft_plane_cross_entropy + fuse_weight * MSE(soft fusion,
    truth)``. The last term trains the probabilities as composition weights (the method's
    ``compose="soft"``): where no plane is sharper than the noise, averaging planes is rewarded."""
    loss, metrics = _depth_terms(logits, index, index, soft_plane_cross_entropy, ce_weight)
    fused = soft_fusion(logits, stack)
    img = F.mse_loss(fused, aif)
    if fuse_weight:
        loss = loss + fuse_weight * img
    with torch.no_grad():
        metrics["psnr_soft"] = float(-10 * torch.log10(img.detach().clamp_min(1e-12)))
        hard = torch.gather(stack, 1, logits.argmax(dim=1, keepdim=True))[:, 0]
        metrics["psnr_hard"] = float(-10 * torch.log10(F.mse_loss(hard, aif).clamp_min(1e-12)))
        metrics["acc"] = float((logits.argmax(dim=1) == index.round().long()).float().mean())
    metrics["loss"] = float(loss.detach())
    return loss, metrics


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Differentiable Sobel gradient magnitude of (B, C, H, W) images (an edge term for other losses)."""
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=x.dtype, device=x.device) / 8
    k = torch.stack([kx, kx.T]).unsqueeze(1)  # (2, 1, 3, 3)
    B, C, H, W = x.shape
    g = F.conv2d(F.pad(x.reshape(B * C, 1, H, W), (1, 1, 1, 1), mode="replicate"), k)
    return torch.sqrt(g.square().sum(dim=1) + 1e-12).reshape(B, C, H, W)
