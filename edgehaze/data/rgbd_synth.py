"""Physically varied haze on real RGB-D scenes, written as a paired dataset.

Each scene (:mod:`edgehaze.data.rgbd`) is hazed ``variants`` times with
``I = J t + A (1 - t)``, each time with its own draw of (:class:`HazeRecipe`):

* a clear frame (probability ``clear``): the hazy image *is* the clear
  one, an identity pair, so a model learns to leave haze-free scenes alone;
* ``beta``: per unit of relative depth (``beta_rel``, relative scenes) or
  from a meteorological visibility ``V`` in metres (``beta = 3 / V``,
  Koschmieder: contrast falls to 5 % at ``V``; metric scenes), log-uniform
  from dense fog (50 m) to the light haze most outdoor cameras see (20 km);
* the sky (scenes with a ``sky`` mask) at its own distance, log-uniform in
  ``sky_depth_m``: thick haze turns it into the airlight, light haze leaves
  some of its colour;
* non-homogeneous fog (probability ``nonhomogeneous``): ``beta`` times
  ``exp(s * n)``, ``n`` a smooth unit-variance noise field (a coarse
  Gaussian lattice, bicubically enlarged), ``s`` up to ``fog_var``;
* airlight level ``A`` in ``airlight`` and a tint of one of three kinds
  (``tint_kinds``: grey within ``tint``, bluish, warm smog; ``tint_strength``);
* exposure: clear image and airlight scaled together (a camera's exposure,
  the ground truth is the scaled clear image);
* optics blur (Gaussian, probability ``blur``), sensor noise (Gaussian,
  probability ``noise``) and JPEG compression (probability ``jpeg``) on the
  hazy image only: what a camera delivers.

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
    visibility_m: Tuple[float, float] = (50.0, 20000.0)
    sky_depth_m: Tuple[float, float] = (3000.0, 30000.0)
    clear: float = 0.1
    airlight: Tuple[float, float] = (0.7, 1.0)
    tint: float = 0.05
    tint_kinds: Tuple[float, float, float] = (0.5, 0.25, 0.25)  # grey, bluish, warm smog
    tint_strength: Tuple[float, float] = (0.02, 0.1)
    nonhomogeneous: float = 0.5
    fog_var: float = 0.5
    exposure: Tuple[float, float] = (0.8, 1.1)
    blur: float = 0.2
    blur_sigma: Tuple[float, float] = (0.3, 1.2)
    noise: float = 0.4
    noise_sigma: Tuple[float, float] = (0.002, 0.02)
    jpeg: float = 0.3
    jpeg_quality: Tuple[int, int] = (60, 95)

    def validate(self) -> None:
        for name in ("beta_rel", "visibility_m", "sky_depth_m", "airlight", "tint_strength", "exposure",
                     "blur_sigma", "noise_sigma", "jpeg_quality"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise EdgehazeError(f"--{name.replace('_', '-')} {lo} {hi}: need 0 <= LO <= HI")
        if self.airlight[1] > 1.0:
            raise EdgehazeError(f"--airlight {self.airlight[0]} {self.airlight[1]}: airlight is at most 1")
        if self.visibility_m[0] <= 0:
            raise EdgehazeError("--visibility-m: LO must be > 0 metres")
        for name in ("clear", "nonhomogeneous", "blur", "noise", "jpeg"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise EdgehazeError(f"--{name} {getattr(self, name)}: a probability in [0, 1]")
        kinds = self.tint_kinds
        if len(kinds) != 3 or min(kinds) < 0 or not 0.999 <= sum(kinds) <= 1.001:
            raise EdgehazeError(f"--tint-kinds {' '.join(map(str, kinds))}: three probabilities (grey, bluish, "
                                "warm) that add up to 1")


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
    gain = float(rng.uniform(*recipe.exposure))
    clear = np.clip(scene.clear.astype(np.float64) * gain, 0.0, 1.0)
    if rng.random() < recipe.clear:
        params.update(clear_frame=True, exposure=gain)
        frame = clear.astype(np.float32)
        return frame, frame.copy(), params
    depth = scene.depth.astype(np.float64)
    if scene.metric:
        vis = float(np.exp(rng.uniform(np.log(recipe.visibility_m[0]), np.log(recipe.visibility_m[1]))))
        beta = 3.0 / vis
        params["visibility_m"] = vis
    else:
        beta = float(rng.uniform(*recipe.beta_rel))
    params["beta"] = beta
    if scene.metric and scene.sky is not None and scene.sky.any():
        sky_d = float(np.exp(rng.uniform(np.log(recipe.sky_depth_m[0]), np.log(recipe.sky_depth_m[1]))))
        depth = np.where(scene.sky, max(sky_d, float(depth[~scene.sky].max(initial=0.0))), depth)
        params["sky_depth"] = sky_d
    beta_map = np.full((h, w), beta, np.float64)
    if rng.random() < recipe.nonhomogeneous:
        s = float(rng.uniform(0.1, recipe.fog_var))
        beta_map = beta_map * np.exp(s * smooth_field(rng, (h, w)))
        params["fog_var"] = s
    t = np.exp(-beta_map * depth)
    level = float(rng.uniform(*recipe.airlight))
    kind, tint = airlight_tint(recipe, rng)
    airlight = np.clip(level * tint, 0.0, 1.0)
    hazy = apply_haze(clear, t, np.clip(airlight * gain, 0.0, 1.0))
    params.update(airlight=[float(a) for a in airlight], tint_kind=kind, exposure=gain)
    if rng.random() < recipe.blur:
        import cv2

        sigma = float(rng.uniform(*recipe.blur_sigma))
        hazy = cv2.GaussianBlur(hazy, (0, 0), sigma)
        params["blur_sigma"] = sigma
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


def airlight_tint(recipe: HazeRecipe, rng: np.random.Generator) -> Tuple[str, np.ndarray]:
    """``(kind, per-channel factor)``: grey (within +-``tint``), bluish (daylight haze) or warm (smog, dust)."""
    kind = ("grey", "bluish", "warm")[int(rng.choice(3, p=np.asarray(recipe.tint_kinds, np.float64)
                                                      / sum(recipe.tint_kinds)))]
    if kind == "grey":
        return kind, 1.0 + (rng.uniform(-recipe.tint, recipe.tint, size=3) if recipe.tint > 0 else np.zeros(3))
    a = float(rng.uniform(*recipe.tint_strength))
    return kind, np.array([1.0 - 2 * a, 1.0 - a, 1.0]) if kind == "bluish" else np.array([1.0, 1.0 - a, 1.0 - 2.5 * a])


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
    val_every: Optional[int] = None  # None: the dataset's val_every (a source with few scenes sets its own)


def load_source(root: "str | Path", layout: str = "auto", test_every: Optional[int] = None,
                depth_scale: Optional[float] = None, depth_kind: str = "depth",
                depth_proxy: str = "geometric") -> RGBDSource:
    """Read an RGB-D folder; its default test rule is :data:`edgehaze.data.rgbd.DEFAULT_TEST_EVERY`'s.

    ``photos`` (clear photos without depth) get ``depth_proxy``
    (:mod:`edgehaze.data.outdoor`); Cityscapes' four scenes split one for
    validation and one for test.
    """
    from edgehaze.data import outdoor
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
    elif layout == "cityscapes":
        scenes = outdoor.load_cityscapes_scenes(root)
    elif layout == "photos":
        scenes = outdoor.load_photo_scenes(root, proxy=depth_proxy)
    else:
        raise EdgehazeError(f"--rgbd-layout {layout}: choose auto, {', '.join(rgbd.RGBD_LAYOUTS)}")
    if test_every is None:
        test_every = rgbd.DEFAULT_TEST_EVERY.get(layout, 0)
    return RGBDSource(root=root, layout=layout, scenes=scenes, test_every=int(test_every), pairs=pairs,
                      val_every=rgbd.DEFAULT_VAL_EVERY.get(layout))


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
        split = scene_split([s.name for s in src.scenes], test_every=src.test_every,
                            val_every=src.val_every or val_every)
        where = {name: part for part, names in split.items() for name in names}
        jobs += [(src, s, where[s.name], n_src) for s in src.scenes]
    counts = {"train": 0, "val": 0, "test": 0}
    # training pairs per source folder and how many are clear frames: a mix's shares, for reports
    train_pairs = {src.root.name: {"pairs": 0, "clear_frames": 0} for src in sources}
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
            if split == "train":
                train_pairs[src.root.name]["pairs"] += 1
                train_pairs[src.root.name]["clear_frames"] += int(bool(params.get("clear_frame")))
        if keep_pairs and split != "test":
            for suffix, path in _own_pairs(src, scene):
                _write_pair(base, f"{scene.name}_{suffix}", read_image(path), scene.clear,
                            {"scene": scene.name, "split": split, "hazy": str(path), "kind": "original pair"})
                counts[split] += 1
                if split == "train":
                    train_pairs[src.root.name]["pairs"] += 1
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    total = max(1, counts["train"])
    for row in train_pairs.values():
        row["share"] = round(row["pairs"] / total, 4)
    info = {"counts": counts, "train_shares": train_pairs, "sources": [{"root": str(s.root), "layout": s.layout, "scenes": len(s.scenes),
                                            "test_every": s.test_every, "val_every": s.val_every or val_every}
                                           for s in sources],
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
