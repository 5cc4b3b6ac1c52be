"""Haze synthesis with the atmospheric scattering model.

``I = J * t + A * (1 - t)``, ``t = exp(-beta * d)``: a clear image ``J``, a
depth map ``d``, an airlight ``A`` and a scattering coefficient ``beta`` give
the hazy image ``I`` (Koschmieder's law, the model RESIDE used). This is how
a user builds training pairs for their own camera from clear photos.

Depth conventions (choices, documented because results depend on them):

* ``d`` is *normalised* to [0, 1] by default: metric depth is divided by its
  maximum (:func:`normalise_depth`), as RESIDE normalised its depth maps, so
  one ``beta`` range fits indoor and outdoor photos alike. With normalised
  depth the default ``beta`` range [0.6, 1.8] (RESIDE ITS's range) makes the
  farthest point's transmission ``exp(-beta)`` between 0.17 and 0.55: from
  thick to light haze, never fully opaque. ``depth_mode="metric"`` keeps
  metres, and then ``beta`` is per metre.
* A depth teacher (Depth Anything V2 and friends) predicts *relative inverse*
  depth (large = near). :func:`depth_from_inverse` maps it to normalised
  depth as ``1 - (inv - min) / (max - min)``: linear in inverse depth, which
  keeps the teacher's ordering, gives the nearest pixel 0 and the sky /
  farthest pixel 1, and avoids ``1 / inv`` blowing up where the teacher says
  "infinitely far" (inverse depth ~ 0 on the sky).
* Airlight ``A`` is drawn from [0.7, 1.0] (grey-white haze), optionally with a
  small per-channel tint; ``beta`` and ``A`` come from
  ``numpy.random.default_rng((seed, index))`` so a dataset is reproducible.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple, Union

import numpy as np

from edgehaze.errors import EdgehazeError

if TYPE_CHECKING:  # pragma: no cover
    import torch

DEFAULT_BETA = (0.6, 1.8)
DEFAULT_AIRLIGHT = (0.7, 1.0)


# ------------------------------------------------------------------ the model
def transmission(depth: np.ndarray, beta: float) -> np.ndarray:
    """``t = exp(-beta * depth)`` (same units for beta and depth)."""
    return np.exp(-float(beta) * np.asarray(depth, dtype=np.float64))


def _as_airlight(airlight: Union[float, Sequence[float], np.ndarray]) -> np.ndarray:
    a = np.asarray(airlight, dtype=np.float64).reshape(-1)
    if a.size not in (1, 3):
        raise ValueError(f"airlight must be one value or three (RGB), got {a.size}")
    return a.reshape(1, 1, -1)


def apply_haze(
    clear: np.ndarray, t: np.ndarray, airlight: Union[float, Sequence[float], np.ndarray]
) -> np.ndarray:
    """``I = J * t + A * (1 - t)`` for ``J`` H x W x 3, ``t`` H x W (float64 out)."""
    j = np.asarray(clear, dtype=np.float64)
    tt = np.asarray(t, dtype=np.float64)
    if tt.ndim == 2:
        tt = tt[:, :, None]
    if tt.shape[:2] != j.shape[:2]:
        raise ValueError(f"transmission {tt.shape[:2]} and image {j.shape[:2]} differ in size")
    a = _as_airlight(airlight)
    return j * tt + a * (1.0 - tt)


def invert(
    hazy: np.ndarray,
    t: np.ndarray,
    airlight: Union[float, Sequence[float], np.ndarray],
    t_min: float = 0.0,
) -> np.ndarray:
    """Exact inverse of :func:`apply_haze`: ``J = (I - A) / t + A``.

    ``t_min`` > 0 floors the transmission (what a dehazer does with estimated
    ``t``); with the true ``t`` and ``t_min=0`` it recovers ``J`` exactly.
    """
    i = np.asarray(hazy, dtype=np.float64)
    tt = np.asarray(t, dtype=np.float64)
    if tt.ndim == 2:
        tt = tt[:, :, None]
    if t_min > 0:
        tt = np.maximum(tt, t_min)
    if np.any(tt <= 0):
        raise ValueError("transmission must be > 0 to invert (pass t_min)")
    a = _as_airlight(airlight)
    return (i - a) / tt + a


def synthesize(
    clear: np.ndarray, depth: np.ndarray, beta: float, airlight: Union[float, Sequence[float]]
) -> Tuple[np.ndarray, np.ndarray]:
    """Hazy image (float32, clipped to [0, 1]) and its transmission for ``clear``."""
    if depth.shape != clear.shape[:2]:
        raise EdgehazeError(
            f"depth map is {depth.shape[1]}x{depth.shape[0]} but the image is "
            f"{clear.shape[1]}x{clear.shape[0]}"
        )
    t = transmission(depth, beta)
    hazy = np.clip(apply_haze(clear, t, airlight), 0.0, 1.0).astype(np.float32)
    return hazy, t.astype(np.float32)


# ------------------------------------------------------------------ depth maps
def normalise_depth(depth: np.ndarray) -> np.ndarray:
    """Metric (or any positive, larger = farther) depth -> [0, 1] by its maximum.

    Non-finite values (no return, sky as ``inf``) count as the farthest.
    """
    d = np.asarray(depth, dtype=np.float64)
    finite = np.isfinite(d)
    if not finite.any():
        raise EdgehazeError("depth map has no finite values")
    top = float(d[finite].max())
    if top <= 0:
        raise EdgehazeError("depth map is all zero or negative: is it inverse depth? use --depth-kind inverse")
    out = np.where(finite, np.clip(d, 0.0, None) / top, 1.0)
    return out.astype(np.float32)


def depth_from_inverse(inverse: np.ndarray) -> np.ndarray:
    """Relative inverse depth (large = near) -> normalised depth in [0, 1].

    ``1 - (inv - min) / (max - min)``; see the module docstring for why.
    A constant map (no depth information) becomes all zeros: no haze gradient.
    """
    inv = np.nan_to_num(np.asarray(inverse, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(inv.min()), float(inv.max())
    if hi - lo < 1e-12:
        return np.zeros(inv.shape, np.float32)
    return (1.0 - (inv - lo) / (hi - lo)).astype(np.float32)


def load_depth(path: Union[str, Path], scale: Optional[float] = None, kind: str = "depth") -> np.ndarray:
    """Read a depth map: ``.npy`` (float), 16-bit PNG, or 8-bit image.

    Integer files are multiplied by ``scale`` (e.g. 0.001 for millimetres; an
    8-bit map needs it when used as metric depth). ``kind="inverse"`` marks
    disparity / inverse depth, returned converted by :func:`depth_from_inverse`
    (already normalised). Returns float32 H x W.
    """
    path = Path(path)
    if not path.is_file():
        raise EdgehazeError(f"{path}: depth file not found")
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise EdgehazeError(f"{path}: cannot read depth array ({exc})") from None
        arr = np.squeeze(arr).astype(np.float64)
        if scale is not None:
            arr = arr * scale
    else:
        import cv2

        raw = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise EdgehazeError(f"{path}: cannot decode depth image")
        if raw.ndim == 3:  # a gray map saved as RGB: take one channel
            raw = raw[:, :, 0]
        arr = raw.astype(np.float64) * (1.0 if scale is None else float(scale))
    if arr.ndim != 2:
        raise EdgehazeError(f"{path}: depth must be H x W, got shape {arr.shape}")
    if kind == "inverse":
        return depth_from_inverse(arr)
    if kind != "depth":
        raise EdgehazeError(f"depth kind must be 'depth' or 'inverse', not '{kind}'")
    return arr.astype(np.float32)


def teacher_depth(provider: object, image01: np.ndarray) -> np.ndarray:
    """Normalised depth of ``image01`` (H x W x 3) from a depth teacher.

    ``provider.depth(Bx3xHxW) -> BxHxW`` is relative inverse depth; it is
    resized to the image if the teacher works at another resolution.
    """
    import torch
    import torch.nn.functional as F

    from edgehaze.imageio import to_tensor

    x = to_tensor(image01)
    with torch.no_grad():
        inv = provider.depth(x)  # type: ignore[attr-defined]
    if inv.dim() == 4:
        inv = inv[:, 0]
    if inv.shape[-2:] != x.shape[-2:]:
        inv = F.interpolate(inv[:, None].float(), size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return depth_from_inverse(inv[0].float().cpu().numpy())


# ------------------------------------------------------------------ sampling
@dataclass
class HazeParams:
    """What made one hazy image; stored as its metadata JSON."""

    beta: float
    airlight: List[float]
    depth_source: str
    depth_mode: str = "normalised"
    seed: int = 0
    index: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        extra = d.pop("extra")
        d.update(extra)
        return d


def sample_params(
    seed: int,
    index: int,
    beta: Tuple[float, float] = DEFAULT_BETA,
    airlight: Tuple[float, float] = DEFAULT_AIRLIGHT,
    tint: float = 0.0,
) -> Tuple[float, List[float]]:
    """``(beta, [A_r, A_g, A_b])`` for image ``index``, a function of (seed, index).

    ``tint`` > 0 multiplies each channel of A by ``1 + U(-tint, tint)``
    (coloured haze, clipped to [0, 1]).
    """
    _check_range("--beta", beta, lo_min=0.0)
    _check_range("--airlight", airlight, lo_min=0.0, hi_max=1.0)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index), 0x5EED])
    b = float(rng.uniform(beta[0], beta[1]))
    a = float(rng.uniform(airlight[0], airlight[1]))
    jitter = rng.uniform(-tint, tint, size=3) if tint > 0 else np.zeros(3)
    return b, [float(v) for v in np.clip(a * (1.0 + jitter), 0.0, 1.0)]


def _check_range(flag: str, rng: Sequence[float], lo_min: float, hi_max: Optional[float] = None) -> None:
    lo, hi = float(rng[0]), float(rng[1])
    if not (lo_min <= lo <= hi) or (hi_max is not None and hi > hi_max):
        bound = f" and <= {hi_max}" if hi_max is not None else ""
        raise EdgehazeError(f"{flag} {lo} {hi}: need {lo_min} <= LO <= HI{bound}")


# ------------------------------------------------------------------ datasets
DEPTH_FILE_EXTENSIONS = (".npy", ".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


def find_depth_file(depth_dir: Path, stem: str) -> Optional[Path]:
    """The depth map for image ``stem`` in ``depth_dir`` (same stem, any depth extension)."""
    for ext in DEPTH_FILE_EXTENSIONS:
        for cand in (depth_dir / f"{stem}{ext}", depth_dir / f"{stem}{ext.upper()}"):
            if cand.is_file():
                return cand
    return None


def make_hazy_dataset(
    clear_files: Sequence[Path],
    out: Union[str, Path],
    depth_dir: Optional[Path] = None,
    depth_provider: Optional[object] = None,
    depth_name: str = "",
    split: str = "train",
    seed: int = 0,
    beta: Tuple[float, float] = DEFAULT_BETA,
    airlight: Tuple[float, float] = DEFAULT_AIRLIGHT,
    tint: float = 0.0,
    depth_scale: Optional[float] = None,
    depth_kind: str = "depth",
    depth_mode: str = "normalised",
    skip_bad: bool = False,
    progress: bool = True,
) -> dict:
    """Make hazy/GT pairs from clear photos, in DehazeFormer's layout.

    Depth comes from ``depth_dir`` (one file per image, same stem) or from a
    depth teacher ``depth_provider`` (``.depth(x)`` relative inverse depth).
    Writes ``{out}/{split}/{GT,hazy}/NAME.png`` and ``meta/NAME.json``;
    returns ``{"written": n, "skipped": [{"name", "reason"}]}``.
    """
    import json

    from edgehaze.imageio import atomic_write_bytes, read_image, write_image

    if (depth_dir is None) == (depth_provider is None):
        raise EdgehazeError("give exactly one depth source: --depth DIR or --depth-model NAME")
    if depth_mode not in ("normalised", "metric"):
        raise EdgehazeError(f"--depth-mode must be 'normalised' or 'metric', not '{depth_mode}'")
    if not clear_files:
        raise EdgehazeError("no clear images to synthesise haze from")
    out = Path(out) / split
    skipped: List[dict] = []
    written = 0
    files = list(clear_files)
    iterator: object = files
    if progress:
        from tqdm import tqdm

        iterator = tqdm(files, desc=f"synth {split}", unit="img")
    for index, path in enumerate(iterator):  # type: ignore[arg-type]
        name = Path(path).stem
        try:
            clear = read_image(path)
            if depth_dir is not None:
                dfile = find_depth_file(Path(depth_dir), name)
                if dfile is None:
                    raise EdgehazeError(
                        f"{path}: no depth map '{name}.npy|.png|...' in --depth {depth_dir}"
                    )
                depth = load_depth(dfile, scale=depth_scale, kind=depth_kind)
                if depth_kind == "depth" and depth_mode == "normalised":
                    depth = normalise_depth(depth)
                source = str(dfile)
            else:
                depth = teacher_depth(depth_provider, clear)
                source = f"depth model {depth_name}"
            b, a = sample_params(seed, index, beta=beta, airlight=airlight, tint=tint)
            hazy, _t = synthesize(clear, depth, b, a)
        except EdgehazeError as exc:
            if not skip_bad:
                raise
            skipped.append({"name": name, "reason": str(exc)})
            continue
        write_image(out / "GT" / f"{name}.png", clear)
        write_image(out / "hazy" / f"{name}.png", hazy)
        meta = HazeParams(
            beta=b, airlight=a, depth_source=source,
            depth_mode="normalised (inverse depth from teacher)" if depth_dir is None else depth_mode,
            seed=seed, index=index, extra={"clear": str(path), "depth_kind": depth_kind},
        )
        atomic_write_bytes(out / "meta" / f"{name}.json", json.dumps(meta.to_dict(), indent=2).encode())
        written += 1
    return {"written": written, "skipped": skipped}
