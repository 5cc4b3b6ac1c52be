"""A halo measure: error near strong edges against error elsewhere.

Correction maps computed at low resolution and upsampled smoothly cannot
follow a depth edge: the correction of the far side bleeds over the near
side for a few pixels, as a bright or dark rim ("halo"). PSNR averages it
away; this measure does not.

Definition (one image, RGB in [0, 1], ``gt`` the clear image):

* strong edges ``E``: pixels whose Sobel gradient magnitude of the GT's
  luminance (BT.601; OpenCV's 3x3 Sobel scaled by 1/8) is at least
  ``edge_threshold / 2`` (0.125: a step of about 0.25 between neighbours);
* the edge band ``B``: pixels within ``radius`` px of ``E`` (default 6 px,
  the reach of a 1/8-resolution map's bilinear interpolation);
* the error's local part: ``e - G(e)``, ``e = out - gt`` per channel and
  ``G`` a Gaussian blur of sigma ``2 * radius``. Smooth errors (a colour
  cast, a global brightness error, what the prior's over-darkening does)
  are removed, so the measure sees only error that changes within a few
  pixels: rims beside edges and blurred edges;
* ``halo = 255 * RMSE(e - G(e) | B)``, in grey levels, lower is better.

Also returned: ``edge_psnr`` (plain PSNR over the band) and
``far_local_rmse`` (the same local error far from edges, > 3 * radius px,
for scale: texture and noise). Images without strong edges give NaN.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

EDGE_THRESHOLD = 0.25
RADIUS = 6


def edge_masks(gt: np.ndarray, radius: int = RADIUS, edge_threshold: float = EDGE_THRESHOLD):  # type: ignore[no-untyped-def]
    """``(band, far)`` boolean masks of ``gt`` (H x W x 3 in [0, 1])."""
    import cv2

    y = (gt[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
    gx = cv2.Sobel(y, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT) / 8.0
    gy = cv2.Sobel(y, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT) / 8.0
    edges = np.hypot(gx, gy) >= edge_threshold / 2.0
    if not edges.any():
        return edges, ~edges
    dist = cv2.distanceTransform((~edges).astype(np.uint8), cv2.DIST_L2, 5)
    return dist <= radius, dist > 3 * radius


def halo_measure(out: np.ndarray, gt: np.ndarray, radius: int = RADIUS,
                 edge_threshold: float = EDGE_THRESHOLD) -> Dict[str, float]:
    """``{"halo", "edge_psnr", "far_local_rmse"}`` of ``out`` against ``gt`` (module docstring)."""
    import cv2

    out = np.asarray(out, dtype=np.float32)[..., :3]
    gt = np.asarray(gt, dtype=np.float32)[..., :3]
    if out.shape != gt.shape:
        raise ValueError(f"output {out.shape} and ground truth {gt.shape} differ in size")
    band, far = edge_masks(gt, radius, edge_threshold)
    nan = float("nan")
    if not band.any():
        return {"halo": nan, "edge_psnr": nan, "far_local_rmse": nan}
    err = out - gt
    local = err - cv2.GaussianBlur(err, (0, 0), sigmaX=2.0 * radius, borderType=cv2.BORDER_REFLECT)
    sq_local = (local.astype(np.float64) ** 2).mean(axis=2)
    sq = (err.astype(np.float64) ** 2).mean(axis=2)
    edge_mse = float(sq[band].mean())
    return {
        "halo": 255.0 * float(np.sqrt(sq_local[band].mean())),
        "edge_psnr": float(10 * np.log10(1.0 / max(edge_mse, 1e-12))),
        "far_local_rmse": 255.0 * float(np.sqrt(sq_local[far].mean())) if far.any() else nan,
    }
