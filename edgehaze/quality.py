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
  statistics files under ``metrics/``.

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
    """Hazy images with their clear ground truth (``gt`` None for real photos)."""

    name: str
    hazy: List[Path]
    gt: List[Optional[Path]]
    note: str = ""

    @property
    def has_gt(self) -> bool:
        return all(g is not None for g in self.gt)


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


def real_photos(data: Path) -> Optional[EvalSet]:
    from edgehaze.imageio import list_images

    root = data / "real_hazy"
    if not root.is_dir():
        return None
    files = [f for d in sorted(p for p in root.iterdir() if p.is_dir()) for f in list_images(d)]
    files += list_images(root)
    return EvalSet("real-photos", files, [None] * len(files), "real hazy photos, no ground truth")


def benchmark_sets(data: "str | Path", names: Optional[Sequence[str]] = None) -> List[EvalSet]:
    """Every set found under ``data`` (``names``: keep those whose name starts with one of them)."""
    data = Path(data)
    if not data.is_dir():
        raise EdgehazeError(f"--data {data}: no such folder (the shared data folder, or EDGEHAZE_SHARED/data)")
    sets = [s for s in [sots_indoor(data), *frida2_test(data), fohis_outdoor(data), real_photos(data)] if s is not None]
    if names:
        sets = [s for s in sets if any(s.name.startswith(n) for n in names)]
    if not sets:
        raise EdgehazeError(f"--data {data}: none of sots_indoor/, frida2/, real_hazy/ found")
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
    from edgehaze.imageio import read_image
    from edgehaze.metrics import psnr, ssim
    from edgehaze.metrics.halo import halo_measure

    norefs = _no_reference(stats_dir) if not evalset.has_gt else {}
    acc: Dict[str, Dict[str, List[float]]] = {m: {} for m in methods}
    times: Dict[str, List[float]] = {m: [] for m in methods}
    sheet: List[List[np.ndarray]] = []
    items = list(zip(evalset.hazy, evalset.gt))
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc=evalset.name, unit="img", leave=False)
    for hpath, gpath in items:
        hazy = _fit(read_image(hpath), max_side)
        gt = _fit(read_image(gpath), max_side) if gpath is not None else None
        row = [hazy]
        for name, run in methods.items():
            t0 = time.perf_counter()
            out = np.clip(np.asarray(run(hazy), dtype=np.float32), 0.0, 1.0)
            times[name].append(time.perf_counter() - t0)
            vals: Dict[str, float] = {}
            if gt is not None:
                vals["psnr"] = psnr(out, gt)
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


def markdown_table(results: Dict[str, Dict[str, Scores]], metrics: Sequence[str] = ("psnr", "ssim", "halo", "fade", "niqe")
                   ) -> str:
    """One row per (set, method): the metrics that set has, and ms per image."""
    lines = ["| set | method | " + " | ".join(m.upper() if m != "halo" else "halo (grey levels)" for m in metrics)
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
