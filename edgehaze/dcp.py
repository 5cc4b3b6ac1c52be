"""The dark-channel prior (He, Sun and Tang, CVPR 2009 / TPAMI 2011): the baseline every result is judged against.

A 2010 prior that runs in ~15 ms a frame on this CPU is what a user compares
a learned dehazer with, so it is built in (``edgehaze dehaze --method dcp``,
a row in ``eval``, ``demo`` and the quality benchmark). The steps are the
paper's:

1. dark channel ``D(x) = min_{y in patch(x)} min_c I_c(y)`` (patch 15);
2. airlight ``A``: among the 0.1 % brightest pixels of ``D``, the input pixel
   of largest intensity (sum of channels);
3. transmission ``t~ = 1 - omega * dark(I / A)`` (omega 0.95);
4. refined by the guided filter (He, Sun and Tang, ECCV 2010) with the gray
   input as guide, radius 60, eps 1e-4;
5. ``J = (I - A) / max(t, t0) + A`` (t0 0.1), clipped to [0, 1].

OpenCV does the min and box filters (``erode``, ``boxFilter`` with reflected
borders); the guided filter is written out here (OpenCV's ``ximgproc`` is in
the contrib build only). Works on float RGB ``H x W x 3`` in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np


@dataclass(frozen=True)
class DCPParams:
    patch: int = 15
    omega: float = 0.95
    t0: float = 0.1
    radius: int = 60
    eps: float = 1e-4
    top_fraction: float = 0.001


def dark_channel(img: np.ndarray, patch: int) -> np.ndarray:
    """Per-pixel channel minimum, then the minimum over a ``patch`` x ``patch`` square."""
    import cv2

    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (patch, patch))
    return cv2.erode(np.ascontiguousarray(img.min(axis=2), dtype=np.float32), kernel)


def estimate_airlight(img: np.ndarray, dark: np.ndarray, top_fraction: float = 0.001) -> np.ndarray:
    """Brightest input pixel (sum of channels) among the ``top_fraction`` brightest dark-channel pixels."""
    flat_dark = dark.reshape(-1)
    n = max(1, int(flat_dark.size * top_fraction))
    idx = np.argpartition(flat_dark, flat_dark.size - n)[-n:]
    pixels = img.reshape(-1, 3)[idx]
    return pixels[np.argmax(pixels.sum(axis=1))].astype(np.float64)


def box_mean(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a ``(2r+1)^2`` window, borders reflected (``cba|abc``)."""
    import cv2

    k = 2 * int(radius) + 1
    return cv2.boxFilter(x, cv2.CV_64F, (k, k), normalize=True, borderType=cv2.BORDER_REFLECT)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter, gray guide: ``q = mean(a) * I + mean(b)``."""
    g = guide.astype(np.float64)
    p = src.astype(np.float64)
    mean_i, mean_p = box_mean(g, radius), box_mean(p, radius)
    cov_ip = box_mean(g * p, radius) - mean_i * mean_p
    var_i = box_mean(g * g, radius) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return box_mean(a, radius) * g + box_mean(b, radius)


def dehaze_dcp(img: np.ndarray, params: DCPParams = DCPParams()) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(J, t, A)`` for a hazy float RGB image in [0, 1]."""
    import cv2

    i = np.asarray(img, dtype=np.float64)
    if i.ndim != 3 or i.shape[2] != 3:
        raise ValueError(f"dark-channel prior wants H x W x 3, got {i.shape}")
    a = estimate_airlight(i, dark_channel(i, params.patch), params.top_fraction)
    normalised = i / np.maximum(a, 1e-6)
    t_coarse = 1.0 - params.omega * dark_channel(normalised, params.patch).astype(np.float64)
    gray = cv2.cvtColor(i.astype(np.float32), cv2.COLOR_RGB2GRAY)
    t = guided_filter(gray, t_coarse, params.radius, params.eps)
    j = (i - a) / np.maximum(t, params.t0)[:, :, None] + a
    return np.clip(j, 0.0, 1.0).astype(np.float32), t.astype(np.float32), a.astype(np.float32)


def dcp_runner(params: DCPParams = DCPParams()):  # type: ignore[no-untyped-def]
    """``run(img01) -> img01``, the shape every evaluation runner has."""

    def run(img01: np.ndarray) -> np.ndarray:
        return dehaze_dcp(img01, params)[0]

    run.name = "dark-channel prior"  # type: ignore[attr-defined]
    return run
