"""NIQE: Naturalness Image Quality Evaluator (Mittal, Soundararajan, Bovik 2013).

A "completely blind" quality score: the image is cut into 96 x 96 blocks; in
each block the MSCN coefficients (7 x 7 Gaussian, sigma 7/6) and their
products with four neighbours are fitted by (asymmetric) generalised Gaussian
distributions, giving 18 numbers; the same is done at half resolution
(48 x 48 blocks), giving 36 features per block. A multivariate Gaussian fitted
to the blocks of the test image is compared with one fitted on pristine
natural images: ``sqrt((mu_p - mu_t)' ((C_p + C_t) / 2)^+ (mu_p - mu_t))``.
Higher means less natural.

Following the official MATLAB release: gray levels by MATLAB ``rgb2gray`` on
the 8-bit image (0..255, rounded), MATLAB bicubic antialiased ``imresize``
for the second scale, ``nanmean``/``nancov`` over blocks, ``pinv``. As in the
official code, every block of the test image is used; the sharpness
selection (keep blocks whose mean local deviation exceeds 0.75 x the
image's maximum) applies when fitting a pristine model
(:func:`fit_niqe_model`).

The pristine model is not redistributed with this package: the user passes
``modelparameters.mat`` from the official release (or an ``.npz`` with the
same numbers, or one written by :func:`save_niqe_model`).
"""
from __future__ import annotations

import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import numpy as np
from scipy.special import gamma

from edgehaze.errors import EdgehazeError
from edgehaze.metrics._matlab import imresize, mscn, rgb2gray_uint8, to_uint8_rgb

BLOCK = 96
SHARPNESS_THRESHOLD = 0.75
N_FEATURES = 36
PARAMS_FILE = "modelparameters.mat"
RELEASE_URL = "http://live.ece.utexas.edu/research/quality/niqe_release.zip"
_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))  # circshift offsets: horizontal, vertical, two diagonals

# Keys accepted for the pristine mean and covariance (official .mat, BasicSR .npz, ours).
_MEAN_KEYS = ("mu_prisparam", "mu_pris_param", "mean")
_COV_KEYS = ("cov_prisparam", "cov_pris_param", "cov")


def _missing_params_error(path: object) -> EdgehazeError:
    where = f" ({path!s} does not exist)" if path is not None else ""
    return EdgehazeError(
        f"NIQE needs the pristine model file {PARAMS_FILE}{where}. It is part of the official NIQE "
        f"release of LIVE, UT Austin ({RELEASE_URL}); pass its path as params_path "
        f"(a .mat, or an .npz with mu_pris_param/cov_pris_param)."
    )


def load_niqe_params(params_path: str | os.PathLike | None) -> tuple[np.ndarray, np.ndarray]:
    """Pristine mean (36,) and covariance (36, 36) from a ``.mat`` or ``.npz`` file."""
    if params_path is None:
        raise _missing_params_error(None)
    path = Path(params_path)
    if not path.is_file():
        raise _missing_params_error(path)
    try:
        if path.suffix.lower() == ".mat":
            import scipy.io

            data = dict(scipy.io.loadmat(str(path)))
        else:
            with np.load(path, allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise EdgehazeError(f"{path}: cannot read the NIQE model ({exc}); expected {PARAMS_FILE} from {RELEASE_URL}") from None
    mean = next((data[k] for k in _MEAN_KEYS if k in data), None)
    cov = next((data[k] for k in _COV_KEYS if k in data), None)
    if mean is None or cov is None:
        raise EdgehazeError(f"{path}: no NIQE mean/covariance inside (keys: {sorted(data)}); expected {PARAMS_FILE} from {RELEASE_URL}")
    mean = np.asarray(mean, dtype=np.float64).reshape(-1)
    cov = np.asarray(cov, dtype=np.float64)
    if mean.shape != (N_FEATURES,) or cov.shape != (N_FEATURES, N_FEATURES):
        raise EdgehazeError(f"{path}: expected a 36-value mean and 36x36 covariance, got {mean.shape} and {cov.shape}")
    return mean, cov


def save_niqe_model(path: str | os.PathLike, mean: np.ndarray, cov: np.ndarray) -> Path:
    """Write a pristine model as ``.npz`` (keys ``mu_pris_param``, ``cov_pris_param``), atomically."""
    from edgehaze.fsutil import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # np.savez would append .npz to a bare name
            np.savez(fh, mu_pris_param=np.asarray(mean).reshape(1, -1), cov_pris_param=np.asarray(cov))

    return atomic_write(path, write)


@lru_cache(maxsize=1)
def _aggd_table() -> tuple[np.ndarray, np.ndarray]:
    """Candidate shapes 0.2:0.001:10 and their ratio ``Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a))``."""
    shapes = np.round(np.arange(0.2, 10.0005, 0.001), 3)
    ratio = gamma(2.0 / shapes) ** 2 / (gamma(1.0 / shapes) * gamma(3.0 / shapes))
    return shapes, ratio


def fit_aggd(values: np.ndarray) -> tuple[float, float, float]:
    """Moment-matching fit of an asymmetric generalised Gaussian: ``(shape, left scale, right scale)``.

    The shape is looked up on the official grid 0.2:0.001:10. Zero values count in
    the overall moments but on neither side. A side without values gives NaN scales.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    shapes, ratio = _aggd_table()
    neg, pos = v[v < 0], v[v > 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        left_std = np.sqrt(np.mean(neg * neg)) if neg.size else np.nan
        right_std = np.sqrt(np.mean(pos * pos)) if pos.size else np.nan
        g = left_std / right_std
        r_hat = np.mean(np.abs(v)) ** 2 / np.mean(v * v)
        r_norm = r_hat * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
    err = (ratio - r_norm) ** 2
    # MATLAB's min() returns the first element when every entry is NaN; so does argmin.
    shape = float(shapes[int(np.argmin(err))])
    scale = np.sqrt(gamma(1.0 / shape) / gamma(3.0 / shape))
    return shape, float(left_std * scale), float(right_std * scale)


def block_features(coeffs: np.ndarray) -> np.ndarray:
    """The 18 NIQE features of one block of MSCN coefficients."""
    shape, left, right = fit_aggd(coeffs)
    feats = [shape, (left + right) / 2.0]
    for shift in _SHIFTS:
        pair = coeffs * np.roll(coeffs, shift, axis=(0, 1))  # circshift within the block
        shape, left, right = fit_aggd(pair)
        mean = (right - left) * gamma(2.0 / shape) / gamma(1.0 / shape)
        feats += [shape, mean, left, right]
    return np.asarray(feats)


def _to_gray255(img: np.ndarray) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim == 3:
        return rgb2gray_uint8(to_uint8_rgb(arr))
    if arr.ndim == 2:
        return to_uint8_rgb(arr).astype(np.float64)
    raise EdgehazeError(f"NIQE needs an H x W x 3 or H x W image, got shape {arr.shape}")


def niqe_features(img01: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Per-block features ``(N, 36)`` and sharpness ``(N,)`` (mean local deviation at scale 1).

    ``img01`` is RGB or gray, float in [0, 1] (rounded to 8 bits first) or uint8.
    Blocks are listed in MATLAB's column-major order.
    """
    gray = _to_gray255(img01)
    rows, cols = gray.shape[0] // block, gray.shape[1] // block
    if rows == 0 or cols == 0:
        raise EdgehazeError(f"NIQE needs an image of at least {block} x {block} pixels, got {gray.shape}")
    gray = gray[: rows * block, : cols * block]
    per_scale = []
    sharpness = None
    for scale in (1, 2):
        _, sigma, coeffs = mscn(gray)
        b = block // scale
        feats = [block_features(coeffs[i * b : (i + 1) * b, j * b : (j + 1) * b]) for j in range(cols) for i in range(rows)]
        per_scale.append(np.stack(feats))
        if scale == 1:
            sharpness = np.array([sigma[i * b : (i + 1) * b, j * b : (j + 1) * b].mean() for j in range(cols) for i in range(rows)])
            gray = imresize(gray, 0.5)
    return np.concatenate(per_scale, axis=1), sharpness


def _mvg(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``nanmean`` and ``nancov`` (complete rows, N-1) of block features, as MATLAB."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "mean of empty slice" -> NaN, as MATLAB
        mean = np.nanmean(features, axis=0)
    complete = features[~np.isnan(features).any(axis=1)]
    if complete.shape[0] < 2:
        cov = np.zeros((features.shape[1], features.shape[1]))
    else:
        cov = np.cov(complete, rowvar=False)
    return mean, cov


def niqe(img01: np.ndarray, params_path: str | os.PathLike | None = None, block: int = BLOCK) -> float:
    """NIQE score of an image (lower = more natural), against the pristine model at ``params_path``."""
    mean_p, cov_p = load_niqe_params(params_path)
    feats, _ = niqe_features(img01, block)
    mean_t, cov_t = _mvg(feats)
    if np.isnan(mean_t).any():
        raise EdgehazeError("NIQE is undefined for this image: a feature is NaN in every block (flat image?)")
    diff = mean_p - mean_t
    return float(np.sqrt(diff @ np.linalg.pinv((cov_p + cov_t) / 2.0) @ diff))


def fit_niqe_model(
    images01: Iterable[np.ndarray], block: int = BLOCK, sharpness_threshold: float = SHARPNESS_THRESHOLD
) -> tuple[np.ndarray, np.ndarray]:
    """Fit a pristine model on clean images, as the official ``estimatemodelparam``.

    From each image keep the blocks whose sharpness exceeds ``sharpness_threshold``
    times that image's sharpest block, then ``nanmean``/``nancov`` over all kept blocks.
    """
    kept = []
    for img in images01:
        feats, sharp = niqe_features(img, block)
        kept.append(feats[sharp > sharpness_threshold * sharp.max()])
    if not kept:
        raise EdgehazeError("fit_niqe_model needs at least one image")
    return _mvg(np.concatenate(kept, axis=0))
