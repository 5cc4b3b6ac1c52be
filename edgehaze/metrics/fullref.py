"""Full-reference metrics: PSNR, SSIM and PSNR-Y, in numpy and in batched torch.

Conventions (the paper's "Evaluation Metrics"; method.md section 6):

* Inputs are RGB images with values in [0, 1]: numpy ``H x W x 3`` or torch
  ``B x 3 x H x W``. Everything is computed in float64; nothing is rounded to
  8 bits first.
* PSNR: ``10 log10(data_range**2 / MSE)`` over all pixels and channels;
  identical images give ``inf``.
* SSIM: Wang et al. 2004 with an 11 x 11 Gaussian window (sigma 1.5, the
  sampled kernel normalised to sum 1), ``K1 = 0.01, K2 = 0.03``, population
  (not sample) covariances, per channel, then averaged over channels. Only
  positions where the whole window lies inside the image are averaged, which
  is what scikit-image's ``structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1)``
  does (it filters with reflection and then crops 5 pixels per border).
* PSNR-Y: luma of ITU-R BT.601 as MATLAB ``rgb2ycbcr`` computes it for RGB
  in [0, 1]: ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` (range 16..235),
  not rounded. PSNR is taken over ``Y / 255`` with peak 1 (the same number as
  PSNR over ``Y`` with peak 255).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from edgehaze.errors import EdgehazeError

if TYPE_CHECKING:  # torch is imported lazily so numpy-only users do not pay for it
    import torch

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # int(3.5 * 1.5 + 0.5): scikit-image's truncate=3.5 -> 11 x 11 window
SSIM_K1, SSIM_K2 = 0.01, 0.03
BT601_Y = (65.481, 128.553, 24.966)
BT601_Y_OFFSET = 16.0


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape:
        raise EdgehazeError(f"prediction and ground truth differ in shape: {pred.shape} vs {gt.shape}")
    if pred.ndim not in (2, 3):
        raise EdgehazeError(f"expected an H x W x C (or H x W) image, got shape {pred.shape}")
    return pred, gt


def _psnr_from_mse(mse: float, data_range: float) -> float:
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(data_range * data_range / mse))


def psnr(pred: np.ndarray, gt: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over all pixels and channels."""
    pred, gt = _check_pair(pred, gt)
    return _psnr_from_mse(float(np.mean((pred - gt) ** 2)), data_range)


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma of an RGB image in [0, 1], on the [0, 255] scale (16..235), unrounded."""
    img = np.asarray(img, dtype=np.float64)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise EdgehazeError(f"PSNR-Y needs an H x W x 3 RGB image, got shape {img.shape}")
    return BT601_Y_OFFSET + img @ np.asarray(BT601_Y)


def psnr_y(pred: np.ndarray, gt: np.ndarray) -> float:
    """PSNR on BT.601 luma (MATLAB ``rgb2ycbcr``), computed over ``Y / 255`` with peak 1."""
    pred, gt = _check_pair(pred, gt)
    return psnr(rgb_to_y(pred) / 255.0, rgb_to_y(gt) / 255.0, data_range=1.0)


def _gaussian_kernel_1d() -> np.ndarray:
    x = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return k / k.sum()


def _valid_filter(channel: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter keeping only the positions with the full window inside."""
    out = ndimage.correlate1d(channel, kernel, axis=0, mode="constant")
    out = ndimage.correlate1d(out, kernel, axis=1, mode="constant")
    r = SSIM_RADIUS
    return out[r:-r, r:-r]


def _ssim_channel(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    k = _gaussian_kernel_1d()
    mx, my = _valid_filter(x, k), _valid_filter(y, k)
    vx = _valid_filter(x * x, k) - mx * mx
    vy = _valid_filter(y * y, k) - my * my
    cxy = _valid_filter(x * y, k) - mx * my
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    num = (2 * mx * my + c1) * (2 * cxy + c2)
    den = (mx * mx + my * my + c1) * (vx + vy + c2)
    return float(np.mean(num / den))


def ssim(pred: np.ndarray, gt: np.ndarray, data_range: float = 1.0) -> float:
    """Mean SSIM (Gaussian 11 x 11, sigma 1.5), per channel then averaged over channels."""
    pred, gt = _check_pair(pred, gt)
    if min(pred.shape[:2]) < 2 * SSIM_RADIUS + 1:
        raise EdgehazeError(f"SSIM needs images of at least 11 x 11 pixels, got {pred.shape[:2]}")
    if pred.ndim == 2:
        return _ssim_channel(pred, gt, data_range)
    return float(np.mean([_ssim_channel(pred[..., c], gt[..., c], data_range) for c in range(pred.shape[-1])]))


# --------------------------------------------------------------------------- torch


def _check_pair_torch(pred: "torch.Tensor", gt: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    import torch

    if pred.shape != gt.shape:
        raise EdgehazeError(f"prediction and ground truth differ in shape: {tuple(pred.shape)} vs {tuple(gt.shape)}")
    if pred.dim() != 4:
        raise EdgehazeError(f"expected a B x C x H x W batch, got shape {tuple(pred.shape)}")
    return pred.detach().to(torch.float64), gt.detach().to(torch.float64)


def _psnr_from_mse_torch(mse: "torch.Tensor", data_range: float) -> "torch.Tensor":
    import torch

    return 10.0 * torch.log10(torch.as_tensor(data_range * data_range, dtype=mse.dtype, device=mse.device) / mse)


def psnr_torch(pred: "torch.Tensor", gt: "torch.Tensor", data_range: float = 1.0) -> "torch.Tensor":
    """Per-image PSNR (dB) of a ``B x C x H x W`` batch; returns float64 ``Tensor[B]`` (inf if equal)."""
    pred, gt = _check_pair_torch(pred, gt)
    mse = ((pred - gt) ** 2).flatten(1).mean(dim=1)
    return _psnr_from_mse_torch(mse, data_range)


def psnr_y_torch(pred: "torch.Tensor", gt: "torch.Tensor") -> "torch.Tensor":
    """Per-image PSNR-Y of a ``B x 3 x H x W`` RGB batch, same convention as :func:`psnr_y`."""
    pred, gt = _check_pair_torch(pred, gt)
    if pred.shape[1] != 3:
        raise EdgehazeError(f"PSNR-Y needs RGB input (3 channels), got {pred.shape[1]}")
    w = pred.new_tensor(BT601_Y).view(1, 3, 1, 1)
    y_pred = (BT601_Y_OFFSET + (pred * w).sum(dim=1, keepdim=True)) / 255.0
    y_gt = (BT601_Y_OFFSET + (gt * w).sum(dim=1, keepdim=True)) / 255.0
    return psnr_torch(y_pred, y_gt, data_range=1.0)


def ssim_torch(pred: "torch.Tensor", gt: "torch.Tensor", data_range: float = 1.0) -> "torch.Tensor":
    """Per-image SSIM of a ``B x C x H x W`` batch, the same definition as :func:`ssim`; float64 ``Tensor[B]``."""
    import torch
    import torch.nn.functional as F

    pred, gt = _check_pair_torch(pred, gt)
    b, c, h, w = pred.shape
    if min(h, w) < 2 * SSIM_RADIUS + 1:
        raise EdgehazeError(f"SSIM needs images of at least 11 x 11 pixels, got {(h, w)}")
    k1d = torch.as_tensor(_gaussian_kernel_1d(), dtype=torch.float64, device=pred.device)
    kx = k1d.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    ky = k1d.view(1, 1, -1, 1).repeat(c, 1, 1, 1)

    def filt(t: "torch.Tensor") -> "torch.Tensor":  # valid (unpadded) separable filter, per channel
        return F.conv2d(F.conv2d(t, kx, groups=c), ky, groups=c)

    mx, my = filt(pred), filt(gt)
    vx = filt(pred * pred) - mx * mx
    vy = filt(gt * gt) - my * my
    cxy = filt(pred * gt) - mx * my
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return smap.mean(dim=(2, 3)).mean(dim=1)
