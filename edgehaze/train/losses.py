"""Restoration losses: L1, plus the optional SSIM and FFT-amplitude terms.

``L = w_l1 * |J - GT|_1 + w_ssim * (1 - SSIM(J, GT)) + w_fft * | |F(J)| - |F(GT)| |_1``

The paper trains with L1 (method.md §5); SGDN (its strongest baseline)
adds an SSIM term and a frequency term on the amplitude of the 2-D real FFT.
All terms are means, computed in float32 even under autocast.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn


def _gaussian_window(channels: int, size: int = 11, sigma: float = 1.5, device=None) -> torch.Tensor:  # type: ignore[no-untyped-def]
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim_map_mean(pred: torch.Tensor, gt: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Differentiable mean SSIM (11x11 Gaussian, sigma 1.5, valid positions)."""
    c = pred.shape[1]
    win = _gaussian_window(c, device=pred.device)
    if min(pred.shape[-2:]) < win.shape[-1]:
        raise ValueError(f"SSIM loss needs images of at least 11 x 11 pixels, got {tuple(pred.shape[-2:])}")

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, win, groups=c)

    mx, my = filt(pred), filt(gt)
    vx = filt(pred * pred) - mx * mx
    vy = filt(gt * gt) - my * my
    cxy = filt(pred * gt) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return smap.mean()


def fft_amplitude_l1(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """L1 between the amplitudes of the 2-D real FFTs (orthonormal scaling)."""
    fp = torch.fft.rfft2(pred, norm="ortho")
    fg = torch.fft.rfft2(gt, norm="ortho")
    return (fp.abs() - fg.abs()).abs().mean()


class RestorationLoss(nn.Module):
    """Weighted sum of L1, SSIM and FFT terms; returns ``(total, terms)``.

    ``terms`` holds each active term's unweighted value as a float (for
    the CSV log); ``total`` is the weighted sum (a tensor with grad).
    """

    def __init__(self, l1: float = 1.0, ssim: float = 0.0, fft: float = 0.0) -> None:
        super().__init__()
        if min(l1, ssim, fft) < 0 or l1 + ssim + fft <= 0:
            from edgehaze.errors import ConfigError

            raise ConfigError(f"loss weights must be >= 0 with at least one > 0, got l1={l1} ssim={ssim} fft={fft}")
        self.weights = {"l1": float(l1), "ssim": float(ssim), "fft": float(fft)}

    def forward(self, pred: torch.Tensor, gt: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
        pred = pred.float()
        gt = gt.float()
        total = pred.new_zeros(())
        terms: Dict[str, float] = {}
        if self.weights["l1"]:
            v = F.l1_loss(pred, gt)
            total = total + self.weights["l1"] * v
            terms["l1"] = float(v.detach())
        if self.weights["ssim"]:
            v = 1.0 - ssim_map_mean(pred, gt)
            total = total + self.weights["ssim"] * v
            terms["ssim"] = float(v.detach())
        if self.weights["fft"]:
            v = fft_amplitude_l1(pred, gt)
            total = total + self.weights["fft"] * v
            terms["fft"] = float(v.detach())
        return total, terms
