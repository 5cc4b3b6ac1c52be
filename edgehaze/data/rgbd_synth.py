"""Physically varied haze on real RGB-D scenes, written as a paired dataset.

Each scene (:mod:`edgehaze.data.rgbd`) is hazed ``variants`` times with
``I = J t + A (1 - t)``, each time with its own draw of (:class:`HazeRecipe`):

* ``beta``: per unit of relative depth (``beta_rel``, relative scenes) or
  from a meteorological visibility ``V`` in metres (``beta = 3 / V``,
  Koschmieder: contrast falls to 5 % at ``V``; metric scenes);
* non-homogeneous fog (probability ``nonhomogeneous``): ``beta`` times
  ``exp(s * n)``, ``n`` a smooth unit-variance noise field (a coarse
  Gaussian lattice, bicubically enlarged), ``s`` up to ``fog_var``;
* airlight level ``A`` in ``airlight`` and a per-channel tint;
* exposure: clear image and airlight scaled together (a camera's exposure,
  the ground truth is the scaled clear image);
* sensor noise (Gaussian, probability ``noise``) and JPEG compression
  (probability ``jpeg``) on the hazy image only: what a camera delivers.

Draws depend on ``(seed, scene name, variant)`` only, so a dataset is
reproducible and adding scenes does not change the others.

Output: DehazeFormer's layout, ``OUT/{train,val,test}/{hazy,GT}/NAME.png``
(``NAME = <scene>_<k>``, the GT repeated per variant so every tool reads the
folder as it is), ``meta/NAME.json`` (every parameter) and
``depth/<scene>.npy`` (the scene's depth, float16, for depth teachers).
``--keep-pairs`` also copies a pairs source's own hazy images (train/val
scenes only) and FRIDA2's own fog renderings.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgehaze.data.rgbd import RGBDScene, scene_split
from edgehaze.errors import EdgehazeError

FRIDA2_FOG_TYPES = ("fog_U080", "fog_K080", "fog_L080", "fog_M080")


@dataclass(frozen=True)
class HazeRecipe:
    """Ranges of one haze synthesis (see the module docstring)."""

    beta_rel: Tuple[float, float] = (0.3, 2.2)
    visibility_m: Tuple[float, float] = (40.0, 600.0)
    airlight: Tuple[float, float] = (0.7, 1.0)
    tint: float = 0.05
    nonhomogeneous: float = 0.5
    fog_var: float = 0.5
    exposure: Tuple[float, float] = (0.8, 1.1)
    noise: float = 0.4
    noise_sigma: Tuple[float, float] = (0.002, 0.02)
    jpeg: float = 0.3
    jpeg_quality: Tuple[int, int] = (60, 95)

    def validate(self) -> None:
        for name in ("beta_rel", "visibility_m", "airlight", "exposure", "noise_sigma", "jpeg_quality"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise EdgehazeError(f"--{name.replace('_', '-')} {lo} {hi}: need 0 <= LO <= HI")
        if self.airlight[1] > 1.0:
            raise EdgehazeError(f"--airlight {self.airlight[0]} {self.airlight[1]}: airlight is at most 1")
        if self.visibility_m[0] <= 0:
            raise EdgehazeError("--visibility-m: LO must be > 0 metres")
        for name in ("nonhomogeneous", "noise", "jpeg"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise EdgehazeError(f"--{name} {getattr(self, name)}: a probability in [0, 1]")


def _rng(seed: int, scene: str, variant: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}/{scene}/{variant}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def smooth_field(rng: np.random.Generator, shape: Tuple[int, int], cells: int = 6) -> np.ndarray:
    """Unit-variance, zero-mean smooth noise of ``shape`` (a coarse lattice, bicubic)."""
    import cv2

    h, w = shape
    gh = max(2, int(round(cells * h / max(h, w))) + 1)
    gw = max(2, int(round(cells * w / max(h, w))) + 1)
    field = cv2.resize(rng.standard_normal((gh, gw)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    field = field - field.mean()
    return field / max(float(field.std()), 1e-6)


def render_variant(scene: RGBDScene, recipe: HazeRecipe, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray, Dict]:
    """One hazy image and its ground truth for ``scene`` (float32 [0, 1]) and what made them."""
    from edgehaze.data.synthesis import apply_haze

    h, w = scene.depth.shape
    params: Dict = {}
    if scene.metric:
        vis = float(np.exp(rng.uniform(np.log(recipe.visibility_m[0]), np.log(recipe.visibility_m[1]))))
        beta = 3.0 / vis
        params["visibility_m"] = vis
    else:
        beta = float(rng.uniform(*recipe.beta_rel))
    params["beta"] = beta
    beta_map = np.full((h, w), beta, np.float64)
    if rng.random() < recipe.nonhomogeneous:
        s = float(rng.uniform(0.1, recipe.fog_var))
        beta_map = beta_map * np.exp(s * smooth_field(rng, (h, w)))
        params["fog_var"] = s
    t = np.exp(-beta_map * scene.depth.astype(np.float64))
    level = float(rng.uniform(*recipe.airlight))
    tint = rng.uniform(-recipe.tint, recipe.tint, size=3) if recipe.tint > 0 else np.zeros(3)
    airlight = np.clip(level * (1.0 + tint), 0.0, 1.0)
    gain = float(rng.uniform(*recipe.exposure))
    clear = np.clip(scene.clear.astype(np.float64) * gain, 0.0, 1.0)
    hazy = apply_haze(clear, t, np.clip(airlight * gain, 0.0, 1.0))
    params.update(airlight=[float(a) for a in airlight], exposure=gain)
    if rng.random() < recipe.noise:
        sigma = float(rng.uniform(*recipe.noise_sigma))
        hazy = hazy + rng.normal(0.0, sigma, hazy.shape)
        params["noise_sigma"] = sigma
    hazy = np.clip(hazy, 0.0, 1.0).astype(np.float32)
    if rng.random() < recipe.jpeg:
        q = int(rng.integers(recipe.jpeg_quality[0], recipe.jpeg_quality[1] + 1))
        hazy = jpeg_roundtrip(hazy, q)
        params["jpeg_quality"] = q
    return hazy, clear.astype(np.float32), params


def jpeg_roundtrip(img01: np.ndarray, quality: int) -> np.ndarray:
    """``img01`` encoded as JPEG at ``quality`` and decoded (OpenCV)."""
    import cv2

    bgr = np.round(np.clip(img01, 0, 1)[:, :, ::-1] * 255.0).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise EdgehazeError("JPEG encoding failed")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float32) / 255.0


@dataclass
class RGBDSource:
    """One ``--rgbd`` folder: its scenes, layout and test rule."""

    root: Path
    layout: str
    scenes: List[RGBDScene]
    test_every: int
    pairs: List = field(default_factory=list)  # pairs layout: its (hazy, gt) pairs, for --keep-pairs


def load_source(root: "str | Path", layout: str = "auto", test_every: Optional[int] = None,
                depth_scale: Optional[float] = None, depth_kind: str = "depth") -> RGBDSource:
    """Read an RGB-D folder; FRIDA2 defaults to every 5th scene as test, others to none."""
    from edgehaze.data import rgbd

    root = Path(root)
    if not root.is_dir():
        raise EdgehazeError(f"--rgbd {root}: no such folder")
    if layout == "auto":
        layout = rgbd.detect_rgbd_layout(root)
    pairs: List = []
    if layout == "pairs":
        from edgehaze.data.layouts import find_pairs

        scenes = rgbd.load_pair_scenes(root)
        pairs = find_pairs(root, None, "reside").pairs
    elif layout == "frida2":
        scenes = rgbd.load_frida2_scenes(root)
    elif layout == "generic":
        scenes = rgbd.load_generic_scenes(root, depth_scale=depth_scale, depth_kind=depth_kind)
    else:
        raise EdgehazeError(f"--rgbd-layout {layout}: choose auto, {', '.join(rgbd.RGBD_LAYOUTS)}")
    if test_every is None:
        test_every = rgbd.FRIDA2_TEST_EVERY if layout == "frida2" else 0
    return RGBDSource(root=root, layout=layout, scenes=scenes, test_every=int(test_every), pairs=pairs)


def _own_pairs(source: RGBDSource, scene: RGBDScene) -> List[Tuple[str, Path]]:
    """The source's own hazy renderings of ``scene``: ``(suffix, path)``."""
    if source.layout == "pairs":
        from edgehaze.data.layouts import gt_id

        return [(f"orig{p.name.split('_', 1)[-1]}", Path(p.hazy)) for p in source.pairs if gt_id(p.name) == scene.name]
    if source.layout == "frida2":
        stem = scene.name.split("-", 1)[-1]
        return [(fog.split("_")[1], source.root / fog / f"{stem}.png") for fog in FRIDA2_FOG_TYPES
                if (source.root / fog / f"{stem}.png").is_file()]
    return []


def variants_per_source(variants: "int | Sequence[int]", n_sources: int) -> List[int]:
    """``--variants``: one count for every source, or one per ``--rgbd`` in order.

    Per-source counts balance a mix: 35 indoor scenes beside 66 road scenes
    are under a third of the pairs at equal counts, and the indoor share is
    what decides quality indoors (``configs/real_edge-s.yaml``).
    """
    counts = [int(variants)] * n_sources if isinstance(variants, int) else [int(v) for v in variants]
    if len(counts) == 1 and n_sources > 1:
        counts = counts * n_sources
    if len(counts) != n_sources:
        raise EdgehazeError(f"--variants {' '.join(map(str, counts))}: give one count, or one per --rgbd "
                            f"({n_sources} given)")
    return counts


def make_rgbd_dataset(
    sources: Sequence[RGBDSource], out: "str | Path", variants: "int | Sequence[int]" = 8,
    recipe: HazeRecipe = HazeRecipe(),
    seed: int = 0, val_every: int = 7, keep_pairs: bool = False, test_variants: Optional[int] = None,
    progress: bool = True,
) -> Dict[str, int]:
    """Write the hazed dataset (module docstring); returns images written per split.

    ``variants``: renderings per scene, one count or one per source
    (:func:`variants_per_source`).
    """
    from edgehaze.fsutil import atomic_write_bytes
    from edgehaze.imageio import read_image

    recipe.validate()
    per_source = variants_per_source(variants, len(sources))
    if min(per_source) < (0 if keep_pairs else 1):
        raise EdgehazeError(f"--variants {' '.join(map(str, per_source))}: need at least 1 (or 0 with --keep-pairs: "
                            "the original pairs only)")
    out = Path(out)
    jobs: List[Tuple[RGBDSource, RGBDScene, str, int]] = []
    for src, n_src in zip(sources, per_source):
        split = scene_split([s.name for s in src.scenes], test_every=src.test_every, val_every=val_every)
        where = {name: part for part, names in split.items() for name in names}
        jobs += [(src, s, where[s.name], n_src) for s in src.scenes]
    counts = {"train": 0, "val": 0, "test": 0}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="synth rgbd", unit="scene")
    for src, scene, split, n_src in jobs:
        base = out / split
        depth16 = scene.depth.astype(np.float16)
        atomic_write_bytes(base / "depth" / f"{scene.name}.npy", _npy_bytes(depth16))
        n = n_src if split != "test" or test_variants is None else test_variants
        for k in range(n):
            hazy, gt, params = render_variant(scene, recipe, _rng(seed, scene.name, k))
            name = f"{scene.name}_{k}"
            _write_pair(base, name, hazy, gt, {"scene": scene.name, "source": scene.source, "split": split,
                                               "metric_depth": scene.metric, "seed": seed, "variant": k,
                                               "recipe": asdict(recipe), **params})
            counts[split] += 1
        if keep_pairs and split != "test":
            for suffix, path in _own_pairs(src, scene):
                _write_pair(base, f"{scene.name}_{suffix}", read_image(path), scene.clear,
                            {"scene": scene.name, "split": split, "hazy": str(path), "kind": "original pair"})
                counts[split] += 1
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    info = {"counts": counts, "sources": [{"root": str(s.root), "layout": s.layout, "scenes": len(s.scenes),
                                            "test_every": s.test_every} for s in sources],
            "variants": per_source if len(set(per_source)) > 1 else per_source[0], "seed": seed, "val_every": val_every, "recipe": asdict(recipe)}
    atomic_write_bytes(out / "synth.json", json.dumps(info, indent=2).encode())
    return counts


def _write_pair(base: Path, name: str, hazy: np.ndarray, gt: np.ndarray, meta: Dict) -> None:
    from edgehaze.fsutil import atomic_write_bytes
    from edgehaze.imageio import write_image

    write_image(base / "hazy" / f"{name}.png", hazy)
    write_image(base / "GT" / f"{name}.png", gt)
    atomic_write_bytes(base / "meta" / f"{name}.json", json.dumps(meta, indent=2, default=float).encode())


def _npy_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()
