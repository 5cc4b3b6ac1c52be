"""Real RGB-D scenes: clear images with depth, from depth files or hazy/clear pairs.

Haze synthesis (:mod:`edgehaze.data.synthesis`) needs a clear image and its
depth. Real data comes in three forms, each read here into one
:class:`RGBDScene`:

``pairs``   hazy/clear benchmark pairs made with ``I = J t + A (1 - t)``
            (RESIDE: SOTS, ITS, OTS). The pair gives the transmission back,
            ``t = (A - I) / (A - J)``, per channel; the three channels agree
            where the model holds (SOTS-indoor: to ~1e-3), so ``t`` is their
            least-squares fit weighted by ``(A - J)^2`` and the confidence is
            low where ``J`` is close to ``A`` (nothing to measure there).
            ``-ln t`` is ``beta * d``: relative depth. A scene with several
            haze levels (``1400_1``, ``1400_5``, ...) gets the confidence-
            weighted mean of its normalised ``-ln t`` maps.
``frida2``  FRIDA2's layout: ``clear/NNNNNN.png`` + ``depth_cm/NNNNNN.png``
            (uint16 centimetres, 50000 = sky): metric depth in metres, sky
            marked (``sky`` mask, depth set to :data:`SKY_DEPTH_M`).
``generic`` ``clear/`` + ``depth/`` with the same stems (any depth file
            :func:`edgehaze.data.synthesis.load_depth` reads; ``--depth-scale``,
            ``--depth-kind`` as there).

Splits are written down here, by scene, so no test scene is ever trained on
and validation never reads a test split: :func:`scene_split`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgehaze.errors import EdgehazeError

#: FRIDA2 marks the sky with this depth (centimetres)
FRIDA2_SKY_CM = 50000
#: depth given to sky pixels (metres): far enough that any fog makes them airlight
SKY_DEPTH_M = 1000.0
#: transmission floor when taking -ln t (8-bit pairs cannot resolve thicker haze)
T_FLOOR = 0.02
#: below this ``A - J`` (per channel, summed in quadrature) a pair says nothing about t
MIN_CONTRAST = 0.04


@dataclass
class RGBDScene:
    """One clear image with depth (larger = farther)."""

    name: str
    clear: np.ndarray  # H x W x 3 float32 in [0, 1]
    depth: np.ndarray  # H x W float32; metres when ``metric`` else relative (max ~1)
    valid: np.ndarray  # H x W bool: measured (not filled in, not sky)
    metric: bool
    source: str
    sky: Optional[np.ndarray] = None  # H x W bool where known


# ------------------------------------------------------------------ transmission from pairs
def recover_transmission(
    hazy: np.ndarray, clear: np.ndarray, airlight: "float | Sequence[float]" = 1.0
) -> Tuple[np.ndarray, np.ndarray]:
    """``(t, confidence)`` of a hazy/clear pair made with airlight ``airlight``.

    Per pixel, ``A - I = t (A - J)`` holds in each channel; ``t`` is the
    least-squares solution over the channels,
    ``sum (A - I)(A - J) / sum (A - J)^2``, clipped to [0, 1]. ``confidence``
    is ``sqrt(sum (A - J)^2)``: how much contrast to the airlight there is to
    measure ``t`` from (0 where the clear pixel equals the airlight).
    """
    i = np.asarray(hazy, dtype=np.float64)
    j = np.asarray(clear, dtype=np.float64)
    if i.shape != j.shape or i.ndim != 3:
        raise EdgehazeError(f"hazy {i.shape} and clear {j.shape} must be the same H x W x 3")
    a = np.asarray(airlight, dtype=np.float64).reshape(1, 1, -1)
    di, dj = a - i, a - j
    energy = (dj * dj).sum(-1)
    t = (di * dj).sum(-1) / np.maximum(energy, 1e-12)
    return np.clip(t, 0.0, 1.0).astype(np.float32), np.sqrt(energy).astype(np.float32)


def estimate_airlight(hazy: np.ndarray, clear: np.ndarray, candidates: Optional[Sequence[float]] = None) -> float:
    """The grey airlight under which the three channels' ``t`` agree best.

    For each candidate ``A`` the per-channel ``t_c = (A - I_c) / (A - J_c)``
    is computed where the contrast is high, and the candidate with the
    smallest median spread across channels wins (RESIDE pairs: ``A = 1``).
    """
    i = np.asarray(hazy, dtype=np.float64)
    j = np.asarray(clear, dtype=np.float64)
    cands = np.linspace(0.6, 1.0, 41) if candidates is None else np.asarray(candidates, dtype=np.float64)
    best, best_spread = float(cands[-1]), np.inf
    for a in cands:
        dj = a - j
        ok = (np.abs(dj) > 0.1).all(-1)
        if ok.sum() < 16:
            continue
        tc = (a - i[ok]) / dj[ok]
        spread = float(np.median(tc.max(-1) - tc.min(-1)))
        if spread < best_spread:
            best, best_spread = float(a), spread
    return best


def depth_from_transmission(ts: Sequence[np.ndarray], confidences: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """Relative depth (max 1) and validity from one or more ``t`` maps of one scene.

    Each ``-ln t`` is ``beta_k d``; dividing by its own 99th percentile over
    confident pixels removes ``beta_k``, then the maps are averaged with the
    confidences as weights. Pixels no pair could measure are filled from
    their neighbours (OpenCV's inpainting) and marked not ``valid``.
    """
    import cv2

    num = np.zeros(ts[0].shape, np.float64)
    den = np.zeros(ts[0].shape, np.float64)
    for t, c in zip(ts, confidences):
        ok = c >= MIN_CONTRAST
        if ok.sum() < 16:
            continue
        ln = -np.log(np.clip(t.astype(np.float64), T_FLOOR, 1.0))
        scale = float(np.percentile(ln[ok], 99))
        if scale <= 1e-6:
            continue
        w = np.where(ok, c, 0.0)
        num += w * ln / scale
        den += w
    valid = den > 0
    if not valid.any():
        raise EdgehazeError("no pixel of these pairs has enough contrast to the airlight to recover depth")
    depth = np.where(valid, num / np.maximum(den, 1e-12), 0.0)
    if not valid.all():
        filled = cv2.inpaint(depth.astype(np.float32), (~valid).astype(np.uint8), 5, cv2.INPAINT_TELEA)
        depth = np.where(valid, depth, np.clip(filled.astype(np.float64), 0.0, None))
    depth = depth / max(float(depth.max()), 1e-6)
    return depth.astype(np.float32), valid


# ------------------------------------------------------------------ readers
def _read(path: Path) -> np.ndarray:
    from edgehaze.imageio import read_image

    return read_image(path)


def load_pair_scenes(root: "str | Path", airlight: Optional[float] = 1.0) -> List[RGBDScene]:
    """Scenes from RESIDE-style pairs: ``root/{hazy,gt}`` with ``<scene>_<k>`` hazy names.

    ``airlight=None`` estimates it per pair (:func:`estimate_airlight`).
    """
    from edgehaze.data.layouts import find_pairs

    root = Path(root)
    pairs = find_pairs(root, None, "reside")
    by_scene: Dict[str, List] = {}
    for p in pairs.pairs:
        if p.gt is None:
            raise EdgehazeError(f"{p.hazy}: no clear image for it in {root} (GT id = name up to the first '_')")
        by_scene.setdefault(Path(p.gt).stem, []).append(p)
    scenes = []
    for name, group in sorted(by_scene.items()):
        clear = _read(group[0].gt)
        ts, cs = [], []
        for p in group:
            hazy = _read(p.hazy)
            if hazy.shape != clear.shape:
                raise EdgehazeError(f"{p.hazy}: size {hazy.shape[1]}x{hazy.shape[0]} differs from its clear "
                                    f"image {p.gt} ({clear.shape[1]}x{clear.shape[0]})")
            a = estimate_airlight(hazy, clear) if airlight is None else airlight
            t, c = recover_transmission(hazy, clear, a)
            ts.append(t)
            cs.append(c)
        depth, valid = depth_from_transmission(ts, cs)
        scenes.append(RGBDScene(name=name, clear=clear, depth=depth, valid=valid, metric=False,
                                source=f"transmission of {len(group)} pair(s) in {root}"))
    if not scenes:
        raise EdgehazeError(f"{root}: no hazy/clear pairs found (want hazy/ and gt/ inside)")
    return scenes


def load_frida2_scenes(root: "str | Path", names: Optional[Sequence[str]] = None) -> List[RGBDScene]:
    """FRIDA2 scenes (``clear/`` + ``depth_cm/``): metric depth in metres, sky marked."""
    import cv2

    root = Path(root)
    clear_dir, depth_dir = root / "clear", root / "depth_cm"
    if not clear_dir.is_dir() or not depth_dir.is_dir():
        raise EdgehazeError(f"{root}: FRIDA2 layout needs clear/ and depth_cm/ (uint16 centimetres)")
    stems = sorted(p.stem for p in clear_dir.glob("*.png")) if names is None else list(names)
    scenes = []
    for stem in stems:
        raw = cv2.imread(str(depth_dir / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        if raw is None or raw.dtype != np.uint16:
            raise EdgehazeError(f"{depth_dir / (stem + '.png')}: not a uint16 depth PNG")
        sky = raw >= FRIDA2_SKY_CM
        depth = np.where(sky, SKY_DEPTH_M, raw.astype(np.float64) / 100.0).astype(np.float32)
        scenes.append(RGBDScene(name=f"frida2-{stem}", clear=_read(clear_dir / f"{stem}.png"), depth=depth,
                                valid=~sky, metric=True, source=str(depth_dir / f"{stem}.png"), sky=sky))
    return scenes


def load_generic_scenes(root: "str | Path", depth_scale: Optional[float] = None, depth_kind: str = "depth",
                        metric: bool = False) -> List[RGBDScene]:
    """``root/clear`` + ``root/depth`` with the same stems."""
    from edgehaze.data.synthesis import find_depth_file, load_depth, normalise_depth
    from edgehaze.imageio import list_images

    root = Path(root)
    files = list_images(root / "clear") if (root / "clear").is_dir() else []
    if not files or not (root / "depth").is_dir():
        raise EdgehazeError(f"{root}: generic RGB-D layout needs clear/ and depth/ with the same file stems")
    scenes = []
    for f in files:
        dfile = find_depth_file(root / "depth", f.stem)
        if dfile is None:
            raise EdgehazeError(f"{f}: no depth map '{f.stem}.*' in {root / 'depth'}")
        depth = load_depth(dfile, scale=depth_scale, kind=depth_kind)
        finite = np.isfinite(depth)
        if not metric:
            depth = normalise_depth(depth)
        scenes.append(RGBDScene(name=f.stem, clear=_read(f), depth=np.nan_to_num(depth, nan=1.0).astype(np.float32),
                                valid=finite, metric=metric, source=str(dfile)))
    return scenes


RGBD_LAYOUTS = ("pairs", "frida2", "generic", "cityscapes", "photos")


def detect_rgbd_layout(root: "str | Path") -> str:
    """``frida2`` (depth_cm/), ``generic`` (clear/ + depth/) or ``pairs`` (hazy/ + gt/)."""
    root = Path(root)
    if (root / "depth_cm").is_dir() and (root / "clear").is_dir():
        return "frida2"
    if (root / "depth").is_dir() and (root / "clear").is_dir():
        return "generic"
    if (root / "hazy").is_dir() and any((root / d).is_dir() for d in ("gt", "GT", "clear")):
        return "pairs"
    if all((root / d).is_dir() for d in ("clear", "disparity", "camera")):
        return "cityscapes"
    from edgehaze.data.outdoor import list_photos

    if list_photos(root):
        return "photos"
    raise EdgehazeError(f"--rgbd {root}: not an RGB-D folder (want clear/+depth_cm/ (FRIDA2), "
                        "clear/+depth/ (generic), hazy/+gt/ (pairs), clear/+disparity/+camera/ (Cityscapes) "
                        "or plain photos (a depth proxy is used))")


# ------------------------------------------------------------------ splits
#: FRIDA2's test scenes: every 5th (000005, 000010, ..., 000065), never trained on
FRIDA2_TEST_EVERY = 5
#: validation scenes: every 7th of the remaining training scenes (chooses checkpoints)
VAL_EVERY = 7
#: test scenes per layout (every k-th in sorted order; the rest train or validate). Clear outdoor
#: photos: every 10th is test; Cityscapes' four scenes: the 4th (hamburg) is test
DEFAULT_TEST_EVERY = {"frida2": FRIDA2_TEST_EVERY, "photos": 10, "cityscapes": 4}
#: layouts that validate on their own rule: Cityscapes' 3rd scene (dusseldorf) validates, every 9th
#: remaining photo validates (about a tenth of all photos, 66)
DEFAULT_VAL_EVERY = {"cityscapes": 3, "photos": 9}


def scene_split(names: Sequence[str], test_every: int = 0, val_every: int = VAL_EVERY) -> Dict[str, List[str]]:
    """``{"train", "val", "test"}`` scene names, by position in sorted order (1-based).

    ``test_every=k`` puts every k-th scene in test (FRIDA2: 5); of the rest,
    every ``val_every``-th goes to validation. Deterministic, written down,
    the same for every command that reads these folders.
    """
    out: Dict[str, List[str]] = {"train": [], "val": [], "test": []}
    rest = []
    for pos, name in enumerate(sorted(names), start=1):
        (out["test"] if test_every and pos % test_every == 0 else rest).append(name)
    for pos, name in enumerate(rest, start=1):
        (out["val"] if val_every and pos % val_every == 0 else out["train"]).append(name)
    return out
