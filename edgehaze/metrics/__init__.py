"""Image-quality metrics of the paper's evaluation and model-cost counters.

* Full-reference (dehazed vs ground truth): :func:`psnr`, :func:`ssim`,
  :func:`psnr_y` (numpy, one image) and :func:`psnr_torch`,
  :func:`ssim_torch`, :func:`psnr_y_torch` (per image of a batch, for
  validation loops).
* No-reference (real haze): :func:`niqe` and :func:`fade`; both need the
  official statistics files, passed by path.
* Perceptual: :class:`LPIPS` / :func:`lpips` with user-provided weight files.
* Cost: :func:`count_params`, :func:`count_flops`, :func:`count_macs`.

Torch is imported lazily: ``import edgehaze.metrics`` works with numpy and
scipy only; the torch functions import it when called.
"""
from __future__ import annotations

from typing import Any

from edgehaze.metrics.fade import fade, fade_features, load_fade_stats
from edgehaze.metrics.fullref import psnr, psnr_torch, psnr_y, psnr_y_torch, rgb_to_y, ssim, ssim_torch
from edgehaze.metrics.niqe import fit_niqe_model, load_niqe_params, niqe, niqe_features, save_niqe_model

__all__ = [
    "psnr", "ssim", "psnr_y", "rgb_to_y", "psnr_torch", "ssim_torch", "psnr_y_torch",
    "niqe", "niqe_features", "fit_niqe_model", "load_niqe_params", "save_niqe_model",
    "fade", "fade_features", "load_fade_stats",
    "count_params", "count_flops", "count_macs", "measure_cost", "LPIPS", "lpips",
]


def __getattr__(name: str) -> Any:  # torch-backed names load on first use
    if name in ("count_params", "count_flops", "count_macs", "measure_cost", "Cost"):
        from edgehaze.metrics import cost

        return getattr(cost, name)
    if name in ("LPIPS", "lpips"):
        from edgehaze.metrics import lpips as lpips_module

        return getattr(lpips_module, name)
    raise AttributeError(f"module 'edgehaze.metrics' has no attribute {name!r}")
