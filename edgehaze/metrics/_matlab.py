"""MATLAB image-processing behaviour that the official NIQE and FADE code relies on.

The reference implementations of NIQE and FADE are MATLAB scripts; their
published statistics were fitted on features computed with MATLAB's own
``rgb2gray``, ``fspecial('gaussian')``, ``imfilter(..., 'replicate')`` and
``imresize`` (bicubic with antialiasing). Scores are only comparable to the
published model files if the features are computed the same way, so these
helpers reproduce those functions' documented behaviour (in float64).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

# MATLAB rgb2gray: the first row of inv([1 .956 .621; 1 -.272 -.647; 1 -1.106 1.703]).
RGB2GRAY_WEIGHTS = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])


def to_uint8_rgb(img: np.ndarray) -> np.ndarray:
    """An 8-bit image as the MATLAB code reads it with ``imread``.

    Floats are taken as [0, 1] and rounded to the nearest 8-bit level (the
    official metrics are defined on 8-bit images); uint8 passes through.
    """
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return arr
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"expected a float image in [0, 1] or uint8, got dtype {arr.dtype}")
    return np.round(np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def rgb2gray_uint8(rgb_u8: np.ndarray) -> np.ndarray:
    """MATLAB ``double(rgb2gray(I))`` for a uint8 image: gray levels rounded to integers."""
    if rgb_u8.ndim == 2:
        return rgb_u8.astype(np.float64)
    gray = rgb_u8[..., :3].astype(np.float64) @ RGB2GRAY_WEIGHTS
    return np.clip(np.round(gray), 0, 255)


def gaussian_window(size: int = 7, sigma: float = 7.0 / 6.0) -> np.ndarray:
    """``fspecial('gaussian', size, sigma)`` normalised to sum 1."""
    half = (size - 1) / 2.0
    y, x = np.mgrid[-half : half + 1, -half : half + 1]
    window = np.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
    return window / window.sum()


def mscn(gray: np.ndarray, window: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local mean, local deviation and MSCN coefficients ``(I - mu) / (sigma + 1)``.

    ``imfilter(..., 'replicate')`` is a correlation with edge replication,
    i.e. scipy's ``mode='nearest'``. Returns ``(mu, sigma, mscn)``.
    """
    if window is None:
        window = gaussian_window()
    mu = ndimage.correlate(gray, window, mode="nearest")
    sigma = np.sqrt(np.abs(ndimage.correlate(gray * gray, window, mode="nearest") - mu * mu))
    return mu, sigma, (gray - mu) / (sigma + 1.0)


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic kernel with a = -0.5, as in MATLAB imresize."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * (
        (ax > 1) & (ax <= 2)
    )


def _contributions(in_len: int, out_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per output sample: source indices (0-based) and weights, MATLAB style."""
    kernel_width = 4.0
    antialias = scale < 1
    if antialias:
        kernel_width /= scale
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - kernel_width / 2.0)
    taps = int(np.ceil(kernel_width)) + 2
    indices = left[:, None] + np.arange(taps)[None, :]
    dist = u[:, None] - indices
    weights = scale * _cubic(scale * dist) if antialias else _cubic(dist)
    weights = weights / weights.sum(axis=1, keepdims=True)
    # Out-of-range indices mirror at the borders (symmetric, edge sample repeated).
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    indices = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_len)]
    keep = np.any(weights != 0, axis=0)
    return indices[:, keep], weights[:, keep]


def imresize(img: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB ``imresize(img, scale)`` (bicubic, antialiased when shrinking) of a 2-D float image."""
    out = np.asarray(img, dtype=np.float64)
    # MATLAB resizes the dimension with the smaller scale first; equal scales: rows first.
    for axis in (0, 1):
        in_len = out.shape[axis]
        out_len = int(np.ceil(in_len * scale))
        idx, w = _contributions(in_len, out_len, scale)
        moved = np.moveaxis(out, axis, 0)
        resized = np.einsum("ok,ok...->o...", w, moved[idx])
        out = np.moveaxis(resized, 0, axis)
    return out


def nanvar_rows(values: np.ndarray) -> np.ndarray:
    """MATLAB ``nanvar`` along the last axis (N-1 normalisation; 0 for one value; NaN for none)."""
    finite = ~np.isnan(values)
    count = finite.sum(axis=-1)
    filled = np.where(finite, values, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = filled.sum(axis=-1) / count
        dev = np.where(finite, values - mean[..., None], 0.0)
        ssq = (dev * dev).sum(axis=-1)
        var = ssq / np.maximum(count - 1, 1)
    return np.where(count == 0, np.nan, var)
