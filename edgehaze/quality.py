"""The real-data quality benchmark: test sets, methods, one table.

Sets (from a folder laid out like the project's ``shared/data``; each is
skipped with a note when absent):

* ``sots-indoor``: RESIDE SOTS-indoor, 15 test scenes x 2 haze levels (PSNR,
  SSIM, halo). Test only: nothing here is trained on or selects a checkpoint.
* ``frida2-<fog>``: the FRIDA2 test scenes (every 5th scene,
  :data:`edgehaze.data.rgbd.FRIDA2_TEST_EVERY`) for each fog type
  (``U080`` homogeneous, ``K080`` heterogeneous, ``L080`` cloudy,
  ``M080`` cloudy heterogeneous).
* ``fohis-outdoor``: one real outdoor photo with the haze its FoHIS authors
  simulated from its measured depth (``fohis_depth/``): the only outdoor
  pair of a real scene here, so a check that a model trained largely
  indoors does not fall below the hazy input outdoors (test only).
* ``real-photos``: real hazy photos without ground truth (FADE fog density,
  lower = less fog; NIQE naturalness, lower = better), with the official
  statistics files under ``metrics/``; every 4th photo (sorted) validates
  and is left out of the test set.
* ``cityscapes``: the Cityscapes test scene (real stereo depth,
  :mod:`edgehaze.data.outdoor`) hazed at fixed visibilities from fog (150 m)
  to light haze (20 km), grey airlight, sky at 10 km.
* ``clear-photos``: the clear outdoor test photos as they are: the output
  should be the input (PSNR of output vs input; 30 dB or more = left alone).
* ``light-haze``: the same photos under light haze (visibility 5 and 20 km,
  geometric depth prior): never worse than the hazy input.

``split="val"`` gives the validation counterparts (FRIDA2's validation
scenes with their own fog, Cityscapes' validation scene, the validation
photos, the validation real photos, and the ``fohis`` pair, which therefore
also chooses): what recipes are chosen on. Test sets choose nothing.

Methods are :class:`edgehaze.data.runners.Runner`-like callables
``img01 -> img01``: the hazy input itself, the dark-channel prior
(:mod:`edgehaze.dcp`), and any model (``make_runner(path)``: a checkpoint or
an exported ONNX artifact). All run on the same images in the same run.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgehaze.errors import EdgehazeError

Method = Callable[[np.ndarray], np.ndarray]
FRIDA2_FOGS = {"U080": "homogeneous", "K080": "heterogeneous", "L080": "cloudy", "M080": "cloudy heterogeneous"}


@dataclass
class EvalSet:
    """Hazy images with their clear ground truth (``gt`` None for real photos).

    ``render``, when given, makes item ``i`` in memory (``(hazy, gt)``, float32
    [0, 1]) instead of reading ``hazy[i]`` / ``gt[i]``, which then only name it.
    """

    name: str
    hazy: List[Path]
    gt: List[Optional[Path]]
    note: str = ""
    render: Optional[Callable[[int], Tuple[np.ndarray, Optional[np.ndarray]]]] = None

    @property
    def has_gt(self) -> bool:
        return all(g is not None for g in self.gt)

    def load(self, i: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        from edgehaze.imageio import read_image

        if self.render is not None:
            return self.render(i)
        return read_image(self.hazy[i]), (read_image(self.gt[i]) if self.gt[i] is not None else None)


#: visibilities (metres) of the rendered outdoor sets, fog to light haze
CITYSCAPES_VISIBILITIES = (150.0, 1000.0, 5000.0, 20000.0)
LIGHT_HAZE_VISIBILITIES = (5000.0, 20000.0)
#: their airlight (grey) and sky distance (metres)
EVAL_AIRLIGHT = 0.85
EVAL_SKY_M = 10000.0
#: every k-th real photo (sorted) validates; the rest are the test set
REAL_PHOTOS_VAL_EVERY = 4


def render_fixed(clear: np.ndarray, depth: np.ndarray, sky: Optional[np.ndarray], visibility_m: float
                 ) -> np.ndarray:
    """``clear`` under homogeneous grey haze of ``visibility_m`` (sky at :data:`EVAL_SKY_M`): the eval sets' haze."""
    from edgehaze.data.synthesis import apply_haze

    d = depth.astype(np.float64)
    if sky is not None:
        d = np.where(sky, EVAL_SKY_M, d)
    t = np.exp(-3.0 / visibility_m * d)
    return np.clip(apply_haze(clear, t, EVAL_AIRLIGHT), 0.0, 1.0).astype(np.float32)


def _rendered_set(name: str, scenes: list, visibilities: Sequence[float], note: str) -> EvalSet:
    items = [(sc, v) for sc in scenes for v in visibilities]

    def render(i: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        sc, v = items[i]
        return render_fixed(sc.clear, sc.depth, sc.sky, v), sc.clear

    labels = [Path(f"{sc.name}@{v:g}m") for sc, v in items]
    return EvalSet(name, labels, labels, note, render=render)


def cityscapes_set(data: Path, split: str = "test") -> Optional[EvalSet]:
    from edgehaze.data.outdoor import load_cityscapes_scenes
    from edgehaze.data.rgbd import DEFAULT_TEST_EVERY, DEFAULT_VAL_EVERY, scene_split

    root = data / "cityscapes4"
    if not (root / "disparity").is_dir():
        return None
    stems = [p.stem for p in sorted((root / "clear").glob("*.png"))]
    names = {f"cityscapes-{s}" for s in scene_split(stems, DEFAULT_TEST_EVERY["cityscapes"],
                                                    DEFAULT_VAL_EVERY["cityscapes"])[split]}
    scenes = [sc for sc in load_cityscapes_scenes(root) if sc.name in names]
    if not scenes:
        return None
    return _rendered_set("cityscapes" + ("-val" if split == "val" else ""), scenes, CITYSCAPES_VISIBILITIES,
                         f"Cityscapes {split} scene(s) {', '.join(sc.name for sc in scenes)} at "
                         f"{', '.join(f'{v:g}' for v in CITYSCAPES_VISIBILITIES)} m visibility")


def outdoor_photo_sets(data: Path, split: str = "test") -> List[EvalSet]:
    """``clear-photos`` (identity: the output should be the input) and ``light-haze`` on the split's photos."""
    from edgehaze.data.outdoor import list_photos, load_photo_scenes, photo_name
    from edgehaze.data.rgbd import DEFAULT_TEST_EVERY, DEFAULT_VAL_EVERY, scene_split

    root = data / "clear_outdoor"
    files = list_photos(root) if root.is_dir() else []
    if not files:
        return []
    split_names = scene_split([photo_name(root, f) for f in files], DEFAULT_TEST_EVERY["photos"],
                              DEFAULT_VAL_EVERY["photos"])[split]
    scenes = load_photo_scenes(root, max_side=640, names=set(split_names))
    suffix = "-val" if split == "val" else ""
    clear = _rendered_set("clear-photos" + suffix, scenes, (float("inf"),),
                          f"{len(scenes)} clear outdoor {split} photos: the output should equal the input")
    light = _rendered_set("light-haze" + suffix, scenes, LIGHT_HAZE_VISIBILITIES,
                          f"the same photos under light haze ({', '.join(f'{v:g}' for v in LIGHT_HAZE_VISIBILITIES)} m, "
                          "geometric depth prior)")
    return [clear, light]


def frida2_val(data: Path) -> List[EvalSet]:
    """FRIDA2's validation scenes (never test) with their own four fogs."""
    from edgehaze.data.rgbd import FRIDA2_TEST_EVERY, VAL_EVERY, scene_split

    root = data / "frida2"
    if not (root / "clear").is_dir():
        return []
    stems = [p.stem for p in sorted((root / "clear").glob("*.png"))]
    val = scene_split(stems, test_every=FRIDA2_TEST_EVERY, val_every=VAL_EVERY)["val"]
    hazy = [root / f"fog_{fog}" / f"{s}.png" for s in val for fog in FRIDA2_FOGS]
    gt = [root / "clear" / f"{s}.png" for s in val for _ in FRIDA2_FOGS]
    keep = [i for i, h in enumerate(hazy) if h.is_file()]
    if not keep:
        return []
    return [EvalSet("frida2-val", [hazy[i] for i in keep], [gt[i] for i in keep],
                    f"FRIDA2 validation scenes ({len(val)}), their four fogs")]


def sots_indoor(data: Path) -> Optional[EvalSet]:
    from edgehaze.data.layouts import find_pairs

    root = data / "sots_indoor"
    if not root.is_dir():
        return None
    pairs = find_pairs(root, None, "reside").pairs
    return EvalSet("sots-indoor", [p.hazy for p in pairs], [p.gt for p in pairs], "RESIDE SOTS-indoor test")


def frida2_test(data: Path) -> List[EvalSet]:
    from edgehaze.data.rgbd import FRIDA2_TEST_EVERY, scene_split

    root = data / "frida2"
    if not (root / "clear").is_dir():
        return []
    stems = [p.stem for p in sorted((root / "clear").glob("*.png"))]
    test = scene_split(stems, test_every=FRIDA2_TEST_EVERY)["test"]
    sets = []
    for fog, kind in FRIDA2_FOGS.items():
        hazy = [root / f"fog_{fog}" / f"{s}.png" for s in test]
        if all(h.is_file() for h in hazy):
            sets.append(EvalSet(f"frida2-{fog}", hazy, [root / "clear" / f"{s}.png" for s in test],
                                f"FRIDA2 test scenes ({len(test)}), {kind} fog"))
    return sets


def fohis_outdoor(data: Path) -> Optional[EvalSet]:
    root = data / "fohis_depth"
    hazy, gt = root / "result.jpg", root / "img.jpg"
    if not (hazy.is_file() and gt.is_file()):
        return None
    return EvalSet("fohis-outdoor", [hazy], [gt], "FoHIS outdoor photo, haze simulated from its depth")


def real_photos(data: Path, split: str = "test") -> Optional[EvalSet]:
    """The real hazy photos of ``split``: every :data:`REAL_PHOTOS_VAL_EVERY`-th (sorted) validates."""
    from edgehaze.imageio import list_images

    root = data / "real_hazy"
    if not root.is_dir():
        return None
    files = [f for d in sorted(p for p in root.iterdir() if p.is_dir()) for f in list_images(d)]
    files += list_images(root)
    val = {k for k in range(len(files)) if (k + 1) % REAL_PHOTOS_VAL_EVERY == 0}
    files = [f for k, f in enumerate(files) if (k in val) == (split == "val")]
    return EvalSet("real-photos" + ("-val" if split == "val" else ""), files, [None] * len(files),
                   f"real hazy photos ({split}: {'every' if split == 'val' else 'all but every'} "
                   f"{REAL_PHOTOS_VAL_EVERY}th), no ground truth")


SPLITS = ("test", "val")


def _set_factories(data: Path, split: str) -> List[Tuple[Tuple[str, ...], Callable[[], object]]]:
    """``(names the factory can make, factory)`` per kind of set: a set is only loaded when asked for."""
    if split == "test":
        return [(("sots-indoor",), lambda: sots_indoor(data)),
                (tuple(f"frida2-{f}" for f in FRIDA2_FOGS), lambda: frida2_test(data)),
                (("cityscapes",), lambda: cityscapes_set(data)),
                (("fohis-outdoor",), lambda: fohis_outdoor(data)),
                (("clear-photos", "light-haze"), lambda: outdoor_photo_sets(data)),
                (("real-photos",), lambda: real_photos(data))]
    return [(("frida2-val",), lambda: frida2_val(data)),
            (("cityscapes-val",), lambda: cityscapes_set(data, "val")),
            (("fohis-outdoor",), lambda: fohis_outdoor(data)),
            (("clear-photos-val", "light-haze-val"), lambda: outdoor_photo_sets(data, "val")),
            (("real-photos-val",), lambda: real_photos(data, "val"))]


def benchmark_sets(data: "str | Path", names: Optional[Sequence[str]] = None, split: str = "test") -> List[EvalSet]:
    """Every set of ``split`` found under ``data`` (``names``: keep those whose name starts with one of them)."""
    data = Path(data)
    if not data.is_dir():
        raise EdgehazeError(f"--data {data}: no such folder (the shared data folder, or EDGEHAZE_SHARED/data)")
    if split not in SPLITS:
        raise EdgehazeError(f"--split {split}: choose one of {', '.join(SPLITS)}")

    def wanted(name: str) -> bool:
        return not names or any(name.startswith(n) for n in names)

    def may_make(name: str) -> bool:  # "frida2" asks for frida2-U080..., "cityscapes-val" for cityscapes-val
        return not names or any(name.startswith(n) or n.startswith(name) for n in names)

    sets: List[EvalSet] = []
    for makes, factory in _set_factories(data, split):
        if not any(may_make(m) for m in makes):
            continue
        made = factory()
        for s in (made if isinstance(made, list) else [made]):
            if isinstance(s, EvalSet) and wanted(s.name):
                sets.append(s)
    if not sets:
        raise EdgehazeError(f"--data {data}: no {split} set found (sots_indoor/, frida2/, cityscapes4/, "
                            "clear_outdoor/, fohis_depth/, real_hazy/)")
    return sets


@dataclass
class Scores:
    """Mean metrics of one method on one set, and its per-image outputs' timing."""

    metrics: Dict[str, float] = field(default_factory=dict)
    ms: float = float("nan")
    count: int = 0


def _no_reference(stats_dir: Optional[Path]) -> Dict[str, Callable[[np.ndarray], float]]:
    from edgehaze.metrics import fade, niqe

    if stats_dir is None:
        return {}
    out: Dict[str, Callable[[np.ndarray], float]] = {}
    if (stats_dir / "fade" / "natural_fogfree_image_features_ps8.mat").is_file():
        out["fade"] = lambda img: float(fade(img, stats_dir / "fade"))
    if (stats_dir / "niqe" / "modelparameters.mat").is_file():
        out["niqe"] = lambda img: float(niqe(img, stats_dir / "niqe" / "modelparameters.mat"))
    return out


def score_set(methods: Dict[str, Method], evalset: EvalSet, stats_dir: Optional[Path] = None,
              max_side: int = 0, keep_outputs: int = 0, progress: bool = True
              ) -> Tuple[Dict[str, Scores], List[List[np.ndarray]]]:
    """Every method on every image of ``evalset``; the first ``keep_outputs`` rows of outputs for a sheet."""
    from edgehaze.metrics import psnr, ssim
    from edgehaze.metrics.halo import halo_measure

    norefs = _no_reference(stats_dir) if not evalset.has_gt else {}
    acc: Dict[str, Dict[str, List[float]]] = {m: {} for m in methods}
    times: Dict[str, List[float]] = {m: [] for m in methods}
    sheet: List[List[np.ndarray]] = []
    items = range(len(evalset.hazy))
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc=evalset.name, unit="img", leave=False)
    for i in items:
        hazy, gt = evalset.load(i)
        hazy = _fit(hazy, max_side)
        gt = _fit(gt, max_side) if gt is not None else None
        row = [hazy]
        for name, run in methods.items():
            t0 = time.perf_counter()
            out = np.clip(np.asarray(run(hazy), dtype=np.float32), 0.0, 1.0)
            times[name].append(time.perf_counter() - t0)
            vals: Dict[str, float] = {}
            if gt is not None:
                vals["psnr"] = psnr(out, gt)
                if name != "hazy input":  # how far the method moved the input (clear / light-haze sets)
                    vals["psnr_in"] = psnr(out, hazy)
                vals["ssim"] = ssim(out, gt)
                vals["halo"] = halo_measure(out, gt)["halo"]
            for metric, fn in norefs.items():
                vals[metric] = fn(out)
            for metric, v in vals.items():
                acc[name].setdefault(metric, []).append(float(v))
            row.append(out)
        if gt is not None:
            row.append(gt)
        if len(sheet) < keep_outputs:
            sheet.append(row)
    result = {}
    for name in methods:
        means = {k: float(np.nanmean(v)) if not all(math.isnan(x) for x in v) else float("nan")
                 for k, v in acc[name].items()}
        result[name] = Scores(means, 1000.0 * float(np.median(times[name])) if times[name] else float("nan"),
                              len(times[name]))
    return result, sheet


def _fit(img: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink (area) so the longer side is at most ``max_side`` (0: as is). Large photos stay tractable for FADE."""
    if not max_side or max(img.shape[:2]) <= max_side:
        return img
    import cv2

    f = max_side / max(img.shape[:2])
    return cv2.resize(img, (max(1, round(img.shape[1] * f)), max(1, round(img.shape[0] * f))),
                      interpolation=cv2.INTER_AREA)


def hazy_input(img01: np.ndarray) -> np.ndarray:
    """The "method" that does nothing: the floor every dehazer must beat."""
    return img01


def baseline_methods() -> Dict[str, Method]:
    """The two rows every real-data report puts beside its models: the hazy input and the dark-channel prior."""
    from edgehaze.dcp import dcp_runner

    return {"hazy input": hazy_input, "dark-channel prior": dcp_runner()}


METRIC_TITLES = {"halo": "halo (grey levels)", "psnr_in": "PSNR vs input"}


def markdown_table(results: Dict[str, Dict[str, Scores]],
                   metrics: Sequence[str] = ("psnr", "ssim", "halo", "psnr_in", "fade", "niqe")) -> str:
    """One row per (set, method): the metrics that set has, and ms per image."""
    lines = ["| set | method | " + " | ".join(METRIC_TITLES.get(m, m.upper()) for m in metrics)
             + " | ms/img |", "|---|---|" + "---:|" * (len(metrics) + 1)]
    for set_name, per_method in results.items():
        for method, sc in per_method.items():
            cells = []
            for m in metrics:
                v = sc.metrics.get(m)
                cells.append("" if v is None or (isinstance(v, float) and math.isnan(v))
                             else (f"{v:.3f}" if m in ("ssim", "fade") else f"{v:.2f}"))
            lines.append(f"| {set_name} | {method} | " + " | ".join(cells) + f" | {sc.ms:.1f} |")
    return "\n".join(lines)


def target_rows(quality: Dict[str, Dict[str, Dict]], model: str = "student INT8") -> List[Tuple[str, str, bool]]:
    """The outdoor-haze targets checked on one run's test scores: ``(target, measured, met)`` rows.

    ``quality``: per set, per method, a :class:`Scores` as a dict (``{"metrics": ...}``) or the
    metrics themselves (a model card's manifest). The
    targets are the project's (README, "Targets"): never below the hazy input on a set with ground
    truth; clear photos left alone (>= 30 dB of the input); the prior + 3 dB on SOTS-indoor and every
    FRIDA2 fog; on real photos FADE at most 1.2x the prior's and NIQE below the input's.
    """
    rows: List[Tuple[str, str, bool]] = []

    def m(set_name: str, method: str, metric: str) -> Optional[float]:
        scores = (quality.get(set_name) or {}).get(method) or {}
        v = scores.get("metrics", scores).get(metric)  # a Scores dict, or the model card's {metric: value}
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    for set_name in quality:
        ours, hazy, prior = m(set_name, model, "psnr"), m(set_name, "hazy input", "psnr"), \
            m(set_name, "dark-channel prior", "psnr")
        if ours is None:
            continue
        if set_name.startswith("clear-photos"):
            rows.append((f"{set_name}: output within 30 dB of the input", f"{ours:.2f} dB", ours >= 30.0))
            continue
        if hazy is not None and not math.isinf(hazy):
            rows.append((f"{set_name}: at least the hazy input", f"{ours:.2f} vs {hazy:.2f} dB", ours >= hazy))
        if prior is not None and (set_name.startswith("sots-indoor") or set_name.startswith("frida2")):
            rows.append((f"{set_name}: the prior + 3 dB", f"{ours - prior:+.2f} dB", ours >= prior + 3.0))
        elif prior is not None:
            rows.append((f"{set_name}: at least the prior", f"{ours - prior:+.2f} dB", ours >= prior))
    fade, fade_p = m("real-photos", model, "fade"), m("real-photos", "dark-channel prior", "fade")
    if fade is not None and fade_p:
        rows.append(("real-photos: FADE at most 1.2x the prior's", f"{fade:.3f} = {fade / fade_p:.2f}x",
                     fade <= 1.2 * fade_p))
    niqe, niqe_in = m("real-photos", model, "niqe"), m("real-photos", "hazy input", "niqe")
    if niqe is not None and niqe_in is not None:
        rows.append(("real-photos: NIQE below the input's", f"{niqe:.2f} vs {niqe_in:.2f}", niqe < niqe_in))
    return rows


def target_lines(quality: Dict[str, Dict[str, Dict]], model: str = "student INT8") -> List[str]:
    """:func:`target_rows` as a markdown table (empty when nothing can be checked)."""
    rows = target_rows(quality, model)
    if not rows:
        return []
    return ["| target | measured | met |", "|---|---:|:---:|",
            *[f"| {t} | {v} | {'yes' if ok else '**no**'} |" for t, v, ok in rows]]
