"""Outdoor scenes for haze synthesis: Cityscapes stereo depth and a depth proxy for plain photos.

Two sources of outdoor content, each read into :class:`edgehaze.data.rgbd.RGBDScene`
with *metric* depth (metres), so the same visibility draw (``beta = 3 / V``,
:mod:`edgehaze.data.rgbd_synth`) hazes them like FRIDA2's roads:

``cityscapes``  ``clear/<id>.png`` + ``disparity/<id>.png`` (16-bit, ``(p - 1) / 256``
                px, 0 = invalid) + ``camera/<id>.json`` (baseline, fx). The
                semi-dense SGM disparity is densified (:func:`densify_disparity`):
                measured values are kept exactly, holes connected to the top of
                the frame that look like sky become sky, the other holes take the
                farther of their row neighbours (occlusions lie behind the
                occluder) and are smoothed.
``photos``      clear photos without depth (``clear_outdoor/<set>/*.jpg``) with a
                geometric prior (:func:`geometric_depth`): sky far, a ground
                plane seen by a level camera below the horizon, everything
                standing above the horizon at the horizon's distance, the log-depth
                varied by a smooth random field so no two renderings of a photo
                share one layout. A prior, not a measurement: how much it helps was
                measured by the dehazer trained on it (configs/README.md, "Outdoor").

Both carry a ``sky`` mask, so the renderer can put the sky at its own (far)
distance and haze turns it into the airlight, as real haze does.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from edgehaze.errors import EdgehazeError

#: a depth of at most this (metres) counts as near ground; the prior's farthest non-sky depth
FAR_M = 3000.0
#: nearest depth the ground-plane prior gives (metres)
NEAR_M = 2.0
#: how far (in camera heights) things above the horizon rise above the eye: sets their distance
STANDING_HEIGHT = 2.0
#: where the horizon sits (fraction of the height from the top) when no sky is seen
DEFAULT_HORIZON = 0.45
#: longer side of photos and Cityscapes frames as written for training (area-resized)
OUTDOOR_MAX_SIDE = 1024


# ------------------------------------------------------------------ sky
def sky_mask(img01: np.ndarray) -> np.ndarray:
    """Pixels of ``img01`` that look like open sky: bright, smooth, not green, connected to the top edge.

    A heuristic of the kind haze-removal papers use to keep the sky out of the
    transmission estimate: sky is the brightest smooth region and it touches
    the top of a level camera's frame. Grey overcast sky qualifies; so can a
    white wall filling the top of the frame, which then gets hazed as sky.
    """
    import cv2

    img = np.asarray(img01, np.float32)
    h, w = img.shape[:2]
    scale = 256.0 / max(h, w)
    small = cv2.resize(img, (max(8, round(w * scale)), max(8, round(h * scale))), interpolation=cv2.INTER_AREA)
    lum = small.mean(axis=2)
    blur = cv2.GaussianBlur(lum, (0, 0), 1.0)
    grad = np.hypot(cv2.Sobel(blur, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(blur, cv2.CV_32F, 0, 1, ksize=3))
    r, g, b = small[..., 0], small[..., 1], small[..., 2]
    bright = lum > max(0.45, float(np.percentile(lum, 60)))
    not_green = g < np.maximum(r, b) + 0.04
    candidate = (bright & (grad < 0.06) & not_green).astype(np.uint8)
    candidate = cv2.morphologyEx(candidate, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, labels = cv2.connectedComponents(candidate, connectivity=4)
    top = set(int(v) for v in np.unique(labels[: max(1, labels.shape[0] // 20)]) if v)
    mask = np.isin(labels, list(top)) if top else np.zeros_like(candidate, bool)
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    return cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)


def horizon_row(sky: np.ndarray) -> float:
    """The horizon as a row (float): the median lowest sky row of the columns that see sky, else a default."""
    h, w = sky.shape
    cols = sky.any(axis=0)
    if cols.mean() < 0.2:
        return DEFAULT_HORIZON * h
    lowest = h - 1 - np.argmax(sky[::-1, :], axis=0)
    return float(np.clip(np.median(lowest[cols]) + 1, 0.15 * h, 0.75 * h))


# ------------------------------------------------------------------ the geometric prior
def geometric_depth(img01: np.ndarray, camera_height: float = 2.0,
                    fov_deg: float = 60.0) -> Tuple[np.ndarray, np.ndarray]:
    """``(depth in metres, sky mask)`` for a photo without depth (module docstring).

    Below the horizon row ``y_h`` a level pinhole camera at ``camera_height``
    sees flat ground at ``d = height * f / (y - y_h)`` (``f`` from the
    horizontal field of view). Above it, what is not sky stands on that
    ground: a wall ``STANDING_HEIGHT`` camera heights above the eye, seen at
    ``y_h - y`` pixels above the horizon, is at most ``k * height * f / (y_h - y)``
    away, so pixels just over the horizon are far (capped at :data:`FAR_M`)
    and the top of a frame filled by buildings or trees is near. The sky is
    marked and given :data:`FAR_M` here (the renderer puts it farther). Layout the prior
    cannot know (a wall in front, a valley behind) is left to the renderer's
    non-homogeneous fog, which multiplies ``beta * d`` by a smooth random field.
    """
    img = np.asarray(img01, np.float32)
    h, w = img.shape[:2]
    sky = sky_mask(img)
    y_h = horizon_row(sky)
    f = 0.5 * w / np.tan(np.deg2rad(fov_deg) / 2.0)
    rows = np.arange(h, dtype=np.float64) + 0.5
    below = rows - y_h
    ground = camera_height * f / np.maximum(below, 1e-6)
    standing = STANDING_HEIGHT * camera_height * f / np.maximum(-below, 1e-6)
    column = np.clip(np.where(below > 0, ground, standing), NEAR_M, FAR_M)
    depth = np.repeat(column[:, None], w, axis=1)
    depth[sky] = FAR_M
    return depth.astype(np.float32), sky


def field_depth(img01: np.ndarray, name: str, median_m: float = 300.0, spread: float = 1.0
                ) -> Tuple[np.ndarray, np.ndarray]:
    """``(depth, sky)`` with no geometry: the sky marked, elsewhere ``median_m * exp(spread * n)``.

    ``n`` is a smooth unit-variance random field seeded by ``name``: the
    "smooth random transmission" proxy, the alternative the geometric prior
    was measured against.
    """
    import hashlib

    from edgehaze.data.rgbd_synth import smooth_field

    img = np.asarray(img01, np.float32)
    sky = sky_mask(img)
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little"))
    depth = median_m * np.exp(spread * smooth_field(rng, img.shape[:2], cells=4))
    depth = np.clip(depth, NEAR_M, FAR_M)
    depth[sky] = FAR_M
    return depth.astype(np.float32), sky


#: depth proxies for photos without depth (``--depth-proxy``)
DEPTH_PROXIES = ("geometric", "field")


# ------------------------------------------------------------------ Cityscapes
def read_cityscapes_disparity(path: "str | Path") -> Tuple[np.ndarray, np.ndarray]:
    """``(disparity in pixels, valid)`` from a Cityscapes 16-bit disparity PNG (``(p - 1) / 256``, 0 = invalid)."""
    import cv2

    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.dtype != np.uint16 or raw.ndim != 2:
        raise EdgehazeError(f"{path}: not a 16-bit Cityscapes disparity PNG")
    valid = raw > 0
    disp = np.where(valid, (raw.astype(np.float64) - 1.0) / 256.0, 0.0)
    valid &= disp > 0
    return disp.astype(np.float32), valid


def densify_disparity(disp: np.ndarray, valid: np.ndarray, sky: Optional[np.ndarray] = None) -> np.ndarray:
    """A hole-free disparity map that equals ``disp`` wherever ``valid``.

    ``sky`` holes get disparity 0 (infinitely far). Every other hole takes the
    smaller (farther) of the nearest valid disparities to its left and right
    on its row, the usual occlusion fill for a rectified stereo pair (the
    hidden surface lies behind its occluder); rows with nothing valid take the
    nearest filled row. The fill is then smoothed (a normalised box blur over
    the filled pixels only), so measured values stay exactly as measured.
    """
    import cv2

    d = np.asarray(disp, np.float32)
    ok = np.asarray(valid, bool) & np.isfinite(d)
    h, w = d.shape
    sky = np.zeros_like(ok) if sky is None else (np.asarray(sky, bool) & ~ok)
    known = ok | sky
    base = np.where(ok, d, 0.0).astype(np.float32)
    idx = np.where(known, np.arange(w)[None, :], -1)
    left_i = np.maximum.accumulate(idx, axis=1)
    idx_r = np.where(known, np.arange(w)[None, :], w)
    right_i = np.minimum.accumulate(idx_r[:, ::-1], axis=1)[:, ::-1]
    rr = np.arange(h)[:, None]
    left = np.where(left_i >= 0, base[rr, np.clip(left_i, 0, w - 1)], np.inf)
    right = np.where(right_i < w, base[rr, np.clip(right_i, 0, w - 1)], np.inf)
    fill = np.minimum(left, right)
    empty_rows = ~np.isfinite(fill).any(axis=1)
    filled = np.where(known, base, fill)
    if empty_rows.all():
        return np.zeros_like(d)
    good = np.flatnonzero(~empty_rows)
    for r in np.flatnonzero(empty_rows):
        filled[r] = filled[good[np.argmin(np.abs(good - r))]]
    filled = np.where(np.isfinite(filled), filled, 0.0).astype(np.float32)
    holes = ~known
    if holes.any():
        k = max(3, (min(h, w) // 64) | 1)
        weight = cv2.blur(np.ones_like(filled), (k, k))
        smooth = cv2.blur(filled, (k, k)) / np.maximum(weight, 1e-6)
        filled = np.where(holes, smooth, filled)
    filled[sky] = 0.0
    filled[ok] = d[ok]
    return filled.astype(np.float32)


def load_cityscapes_scenes(root: "str | Path", max_side: int = OUTDOOR_MAX_SIDE) -> List["RGBDScene"]:
    """Cityscapes scenes (``clear/``, ``disparity/``, ``camera/``): metric depth, densified, sky marked."""
    import cv2

    from edgehaze.data.rgbd import SKY_DEPTH_M, RGBDScene, _read

    root = Path(root)
    if not all((root / d).is_dir() for d in ("clear", "disparity", "camera")):
        raise EdgehazeError(f"{root}: the Cityscapes layout needs clear/, disparity/ and camera/ (FORMAT.md)")
    scenes = []
    for img_path in sorted((root / "clear").glob("*.png")):
        stem = img_path.stem
        cam_path = root / "camera" / f"{stem}.json"
        try:
            cam = json.loads(cam_path.read_text())
            baseline, fx = float(cam["extrinsic"]["baseline"]), float(cam["intrinsic"]["fx"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EdgehazeError(f"{cam_path}: no usable extrinsic.baseline / intrinsic.fx ({exc})") from None
        disp, valid = read_cityscapes_disparity(root / "disparity" / f"{stem}.png")
        clear = _read(img_path)
        if clear.shape[:2] != disp.shape:
            raise EdgehazeError(f"{img_path}: {clear.shape[:2]} but its disparity is {disp.shape}")
        sky = sky_mask(clear) & ~valid
        dense = densify_disparity(disp, valid, sky)
        depth = np.where(dense > 0, baseline * fx / np.maximum(dense, 1e-6), SKY_DEPTH_M)
        depth = np.minimum(depth, SKY_DEPTH_M).astype(np.float32)
        f = min(1.0, max_side / max(clear.shape[:2]))
        if f < 1.0:
            size = (round(clear.shape[1] * f), round(clear.shape[0] * f))
            clear = cv2.resize(clear, size, interpolation=cv2.INTER_AREA)
            depth = cv2.resize(depth, size, interpolation=cv2.INTER_NEAREST)
            valid = cv2.resize(valid.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
            sky = cv2.resize(sky.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        scenes.append(RGBDScene(name=f"cityscapes-{stem}", clear=clear, depth=depth, valid=valid, metric=True,
                                source=str(root / "disparity" / f"{stem}.png"), sky=sky))
    if not scenes:
        raise EdgehazeError(f"{root / 'clear'}: no .png scene")
    return scenes


# ------------------------------------------------------------------ photos without depth
def list_photos(root: "str | Path") -> List[Path]:
    """Every image under ``root`` (one folder level of sets, or flat), sorted by relative path."""
    from edgehaze.imageio import list_images

    root = Path(root)
    if not root.is_dir():
        return []
    files = list(list_images(root))
    for sub in (p for p in root.iterdir() if p.is_dir()):
        files += list_images(sub)
    return sorted(files, key=lambda p: str(p.relative_to(root)))


def photo_name(root: Path, path: Path) -> str:
    """A scene name unique across a photo folder's sets: ``<set>-<stem>``."""
    rel = path.relative_to(root)
    return "-".join([*rel.parts[:-1], rel.stem])


def load_photo_scenes(root: "str | Path", max_side: int = OUTDOOR_MAX_SIDE, proxy: str = "geometric",
                      names: Optional[set] = None) -> List["RGBDScene"]:
    """Clear photos with a depth proxy (:data:`DEPTH_PROXIES`; :func:`geometric_depth`), shrunk to ``max_side``."""
    import cv2

    from edgehaze.data.rgbd import RGBDScene, _read

    if proxy not in DEPTH_PROXIES:
        raise EdgehazeError(f"--depth-proxy {proxy}: choose one of {', '.join(DEPTH_PROXIES)}")
    root = Path(root)
    files = list_photos(root)
    if not files:
        raise EdgehazeError(f"--rgbd {root}: no photos (want images directly inside or one folder level down)")
    scenes = []
    for path in files:
        if names is not None and photo_name(root, path) not in names:
            continue
        clear = _read(path)
        f = min(1.0, max_side / max(clear.shape[:2]))
        if f < 1.0:
            clear = cv2.resize(clear, (round(clear.shape[1] * f), round(clear.shape[0] * f)),
                               interpolation=cv2.INTER_AREA)
        name = photo_name(root, path)
        depth, sky = geometric_depth(clear) if proxy == "geometric" else field_depth(clear, name)
        scenes.append(RGBDScene(name=name, clear=clear, depth=depth, valid=np.zeros(depth.shape, bool),
                                metric=True, source=f"{proxy} depth proxy: {path}", sky=sky))
    return scenes
