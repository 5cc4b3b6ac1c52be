"""FADE: referenceless perceptual fog density (Choi, You and Bovik, TIP 2015).

Each non-overlapping 8 x 8 patch of the image gets 12 "fog-aware" statistics
(MSCN variance and pairwise-product variances, local sharpness and its
coefficient of variation, contrast energy of three opponent channels,
entropy, dark channel, saturation, colourfulness). Their log is compared, by
a Mahalanobis-like distance, with two multivariate Gaussians fitted by the
authors on 500 fog-free and 500 foggy images. The density is
``D = Df / (Dff + 1)``: the distance to fog-free statistics, divided by one
plus the distance to foggy statistics. Lower means less fog.

This follows the official MATLAB release step by step, including its quirks
(the rounded ``rgb2gray``, pixel-wise dark channel, the asymmetric 20-tap
contrast-energy kernel with block-copy padding, and the per-patch covariance
``(var(f_p) * ones + Cov) / 2``), so that scores are comparable with the
published statistics. Float input in [0, 1] is first rounded to 8 bits,
because the official code is defined on 8-bit images.

The statistics are not redistributed with this package: the user passes the
folder holding ``natural_fogfree_image_features_ps8.mat`` and
``natural_foggy_image_features_ps8.mat`` from the official release.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgehaze.errors import EdgehazeError
from edgehaze.metrics._matlab import mscn, nanvar_rows, rgb2gray_uint8, to_uint8_rgb

PATCH = 8
FOGFREE_FILE = "natural_fogfree_image_features_ps8.mat"
FOGGY_FILE = "natural_foggy_image_features_ps8.mat"
RELEASE_URL = "http://live.ece.utexas.edu/research/fog/FADE_release.zip"

FEATURE_NAMES = (
    "mscn_var",
    "mscn_vpair_pos_var",
    "mscn_vpair_neg_var",
    "mean_sigma",
    "mean_cv",
    "ce_gray",
    "ce_by",
    "ce_rg",
    "entropy",
    "dark_channel",
    "saturation",
    "colourfulness",
)

# Contrast energy (Groen et al.), constants of the official CE.m.
_CE_SIGMA = 3.25
_CE_SEMISATURATION = 0.1
_CE_NOISE = {"gray": 9.225496406318721e-4 * 255, "by": 8.969246659629488e-4 * 255, "rg": 2.069284034165411e-4 * 255}
_CE_PAD = 10  # border_in/border_out with size 20: 10 copied rows/columns each side


@dataclass(frozen=True)
class FogModel:
    """Mean (12,) and covariance (12, 12) of the log fog-aware features of a corpus."""

    mean: np.ndarray
    cov: np.ndarray


def _missing_stats_error(stats_dir: object) -> EdgehazeError:
    return EdgehazeError(
        f"FADE needs the official statistics {FOGFREE_FILE} and {FOGGY_FILE} "
        f"(looked in: {stats_dir!s}). They come with the FADE release of LIVE, UT Austin "
        f"({RELEASE_URL}); unzip it and pass that folder as stats_dir."
    )


def load_fade_stats(stats_dir: str | os.PathLike | None) -> tuple[FogModel, FogModel]:
    """Read the fog-free and foggy models from the official ``*_ps8.mat`` files."""
    import scipy.io

    if stats_dir is None:
        raise _missing_stats_error(None)
    folder = Path(stats_dir)
    models = []
    for name, key in ((FOGFREE_FILE, "fogfree"), (FOGGY_FILE, "foggy")):
        path = folder / name
        if not path.is_file():
            raise _missing_stats_error(folder)
        try:
            mat = scipy.io.loadmat(str(path))
            mean = np.asarray(mat[f"mu_{key}param"], dtype=np.float64).reshape(-1)
            cov = np.asarray(mat[f"cov_{key}param"], dtype=np.float64)
        except (KeyError, ValueError, OSError) as exc:
            raise EdgehazeError(f"{path}: not a FADE statistics file ({exc}); get it from {RELEASE_URL}") from None
        if mean.shape != (12,) or cov.shape != (12, 12):
            raise EdgehazeError(f"{path}: expected a 1x12 mean and 12x12 covariance, got {mean.shape}, {cov.shape}")
        models.append(FogModel(mean, cov))
    return models[0], models[1]


def _patches(a: np.ndarray) -> np.ndarray:
    """(H, W) -> (H/8, W/8, 64): the distinct 8 x 8 patches of a cropped image."""
    h, w = a.shape
    return a.reshape(h // PATCH, PATCH, w // PATCH, PATCH).transpose(0, 2, 1, 3).reshape(h // PATCH, w // PATCH, -1)


def _ce_kernel() -> np.ndarray:
    """The 20-tap second-derivative-of-Gaussian kernel of CE.m (support -9.75 .. 9.25)."""
    x = -3 * _CE_SIGMA + np.arange(20, dtype=np.float64)
    g = np.exp(-(x * x) / (2 * _CE_SIGMA**2)) / (np.sqrt(2 * np.pi) * _CE_SIGMA)
    g /= g.sum()
    gx = (x * x / _CE_SIGMA**4 - 1 / _CE_SIGMA**2) * g
    gx -= gx.mean()
    return gx / np.sum(0.5 * x * x * gx)


def _contrast_energy(channel: np.ndarray, noise: float) -> np.ndarray:
    """Contrast energy map of one channel (CE.m), same size as the channel."""
    h, w = channel.shape
    p = _CE_PAD
    padded = np.concatenate([channel[:p], channel, channel[-p:]], axis=0)
    padded = np.concatenate([padded[:, :p], padded, padded[:, -p:]], axis=1)
    kernel = _ce_kernel()
    cx = np.zeros((h, w))
    cy = np.zeros((h, w))
    # conv2(P, k, 'same') is a true convolution (kernel flipped): out[i] = sum_j P[i + 10 - j] k[j];
    # only the positions kept by border_out are computed.
    for j, kj in enumerate(kernel):
        s = 2 * p - j
        cx += kj * padded[p : p + h, s : s + w]
        cy += kj * padded[s : s + h, p : p + w]
    c = np.sqrt(cx * cx + cy * cy)
    cmax = c.max()
    with np.errstate(invalid="ignore", divide="ignore"):
        response = c * cmax / (c + cmax * _CE_SEMISATURATION) - noise
    return np.where(response > 1e-7, response, 0.0)


def _patch_entropy(gray_u8: np.ndarray) -> np.ndarray:
    """MATLAB ``entropy`` (256-bin histogram, bits) of every 8 x 8 patch."""
    patches = _patches(gray_u8).astype(np.int64)
    nr, nc, n = patches.shape
    ids = np.arange(nr * nc).reshape(nr, nc, 1) * 256
    counts = np.bincount((ids + patches).ravel(), minlength=nr * nc * 256).reshape(nr, nc, 256)
    prob = counts / n
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(prob > 0, prob * np.log2(prob), 0.0)
    return -terms.sum(axis=-1)


def fade_features(img: np.ndarray) -> np.ndarray:
    """Log fog-aware features, shape ``(H // 8, W // 8, 12)`` (order: :data:`FEATURE_NAMES`).

    ``img`` is RGB, float in [0, 1] (rounded to 8 bits) or uint8. Patches with an
    undefined statistic (e.g. a black patch's coefficient of variation) hold NaN.
    """
    u8 = to_uint8_rgb(img)
    if u8.ndim != 3 or u8.shape[-1] < 3:
        raise EdgehazeError(f"FADE needs an H x W x 3 RGB image, got shape {u8.shape}")
    h, w = (u8.shape[0] // PATCH) * PATCH, (u8.shape[1] // PATCH) * PATCH
    if h == 0 or w == 0:
        raise EdgehazeError(f"FADE needs an image of at least 8 x 8 pixels, got {u8.shape[:2]}")
    u8 = u8[:h, :w, :3]
    rgb = u8.astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    gray = rgb2gray_uint8(u8)
    dark = rgb.min(axis=-1) / 255.0
    vmax = rgb.max(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        saturation = np.where(vmax > 0, (vmax - rgb.min(axis=-1)) / vmax, 0.0)
    mu, sigma, coeffs = mscn(gray)
    with np.errstate(invalid="ignore", divide="ignore"):
        cv = sigma / mu
    rg = r - g
    by = 0.5 * (r + g) - b

    vpair = _patches(coeffs * np.roll(coeffs, 1, axis=0))
    ce_gray = _contrast_energy(0.299 * r + 0.587 * g + 0.114 * b, _CE_NOISE["gray"])
    ce_by = _contrast_energy(0.5 * r + 0.5 * g - b, _CE_NOISE["by"])
    ce_rg = _contrast_energy(r - g, _CE_NOISE["rg"])
    rg_p, by_p = _patches(rg), _patches(by)
    colourfulness = np.sqrt(rg_p.var(axis=-1, ddof=1) + by_p.var(axis=-1, ddof=1)) + 0.3 * np.sqrt(
        rg_p.mean(axis=-1) ** 2 + by_p.mean(axis=-1) ** 2
    )
    feats = np.stack(
        [
            nanvar_rows(_patches(coeffs)),
            nanvar_rows(np.where(vpair < 0, np.nan, vpair)),
            nanvar_rows(np.where(vpair > 0, np.nan, vpair)),
            _patches(sigma).mean(axis=-1),
            _patches(cv).mean(axis=-1),
            _patches(ce_gray).mean(axis=-1),
            _patches(ce_by).mean(axis=-1),
            _patches(ce_rg).mean(axis=-1),
            _patch_entropy(gray.astype(np.uint8)),
            _patches(dark).mean(axis=-1),
            _patches(saturation).mean(axis=-1),
            colourfulness,
        ],
        axis=-1,
    )
    with np.errstate(invalid="ignore"):
        return np.log1p(feats)


def _patch_distance(feats: np.ndarray, model: FogModel) -> np.ndarray:
    """Per-patch distance ``sqrt(d Sigma_p^-1 d')`` with ``Sigma_p = (var(f_p) 1 1' + Cov) / 2``."""
    flat = feats.reshape(-1, feats.shape[-1])
    spread = nanvar_rows(flat)
    diff = model.mean[None, :] - flat
    ok = np.isfinite(spread) & np.all(np.isfinite(diff), axis=1)
    dist = np.full(flat.shape[0], np.nan)
    if ok.any():
        cov = (spread[ok, None, None] * np.ones((1, 12, 12)) + model.cov[None]) / 2.0
        d = diff[ok]
        sol = np.linalg.solve(cov, d[..., None])[..., 0]
        dist[ok] = np.sqrt(np.einsum("ni,ni->n", d, sol))
    return dist.reshape(feats.shape[:-1])


def fade(
    img01: np.ndarray,
    stats_dir: str | os.PathLike | None = None,
    return_map: bool = False,
) -> float | tuple[float, np.ndarray]:
    """Perceptual fog density of an RGB image (lower = less fog).

    ``img01``: ``H x W x 3`` float in [0, 1] (or uint8). ``stats_dir``: folder
    with the two official ``*_ps8.mat`` files. With ``return_map`` also returns
    the per-patch density map of shape ``(H // 8, W // 8)``.
    """
    fogfree, foggy = load_fade_stats(stats_dir)
    feats = fade_features(img01)
    d_free = _patch_distance(feats, fogfree)
    d_foggy = _patch_distance(feats, foggy)
    if not np.isfinite(d_free).any() or not np.isfinite(d_foggy).any():
        raise EdgehazeError("FADE is undefined for this image: no 8 x 8 patch has finite statistics")
    density = float(np.nanmean(d_free) / (np.nanmean(d_foggy) + 1.0))
    if return_map:
        return density, d_free / (d_foggy + 1.0)
    return density
