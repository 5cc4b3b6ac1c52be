"""Evaluate a model runner on a dataset: per-image metrics, summary, contact sheet.

Full-reference metrics (PSNR, SSIM, PSNR-Y; plus the hazy input's PSNR as
the baseline to beat) need ground truth. No-reference metrics (NIQE, FADE)
need the official statistics files, which users download themselves; when
their paths are not given those metrics are skipped and the summary says so.
A dataset without ground truth (real haze) gets the no-reference ones only.
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from edgehaze.data.datasets import PairedDataset
from edgehaze.data.runners import Runner
from edgehaze.errors import EdgehazeError
from edgehaze.imageio import atomic_write_bytes, write_image

FULL_REFERENCE = ("psnr", "ssim", "psnr_y", "halo")


@dataclass
class NoReferenceStats:
    """Where the official NIQE/FADE statistics are (None: metric skipped)."""

    niqe_params: Optional[Path] = None
    fade_stats: Optional[Path] = None

    @classmethod
    def from_folder(cls, folder: Path) -> "NoReferenceStats":
        """Find the files in a folder laid out like ``metrics/{niqe,fade}/``."""
        folder = Path(folder)
        if not folder.is_dir():
            raise EdgehazeError(f"--shared-stats {folder}: no such folder")
        niqe = next(
            (p for p in (folder / "niqe" / "modelparameters.mat", folder / "modelparameters.mat",
                         folder / "niqe" / "basicsr" / "niqe_pris_params.npz") if p.is_file()),
            None,
        )
        fade_dir = next(
            (d for d in (folder / "fade", folder) if (d / "natural_fogfree_image_features_ps8.mat").is_file()),
            None,
        )
        if niqe is None and fade_dir is None:
            raise EdgehazeError(
                f"--shared-stats {folder}: found neither niqe/modelparameters.mat nor "
                "fade/natural_fogfree_image_features_ps8.mat inside"
            )
        return cls(niqe, fade_dir)


def _metric_functions(has_gt: bool, stats: NoReferenceStats) -> Tuple[Dict[str, Callable], Dict[str, str]]:
    """Metric name -> fn(pred, gt, hazy) and the metrics skipped, with why."""
    import edgehaze.metrics as M

    fns: Dict[str, Callable] = {}
    skipped: Dict[str, str] = {}
    if has_gt:
        for name in FULL_REFERENCE:
            if name == "halo":  # grey levels of local error beside strong edges (edgehaze.metrics.halo)
                from edgehaze.metrics.halo import halo_measure

                fns[name] = lambda pred, gt, hazy: halo_measure(pred, gt)["halo"]
                continue
            if not hasattr(M, name):
                skipped[name] = f"edgehaze.metrics has no '{name}'"
                continue
            fn = getattr(M, name)
            fns[name] = lambda pred, gt, hazy, fn=fn: fn(pred, gt)
        if "psnr" in fns:
            fns["psnr_hazy"] = lambda pred, gt, hazy, fn=M.psnr: fn(hazy, gt)
    else:
        skipped.update({n: "dataset has no ground truth" for n in FULL_REFERENCE})
    if stats.niqe_params is not None:
        fns["niqe"] = lambda pred, gt, hazy, p=stats.niqe_params: M.niqe(pred, p)
    else:
        skipped["niqe"] = "no --niqe-params / --shared-stats given (official NIQE modelparameters.mat)"
    if stats.fade_stats is not None:
        fns["fade"] = lambda pred, gt, hazy, p=stats.fade_stats: M.fade(pred, p)
    else:
        skipped["fade"] = "no --fade-stats / --shared-stats given (official FADE *_ps8.mat files)"
    return fns, skipped


def depth_colour(inverse_depth: np.ndarray) -> np.ndarray:
    """Relative inverse depth -> RGB float image (inferno; bright = near)."""
    import cv2

    d = np.nan_to_num(inverse_depth.astype(np.float64))
    lo, hi = np.percentile(d, 1), np.percentile(d, 99)
    norm = np.clip((d - lo) / max(hi - lo, 1e-12), 0, 1)
    bgr = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    return bgr[:, :, ::-1].astype(np.float32) / 255.0


def _fit(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Resize keeping aspect into an ``h x w`` tile, padded with dark grey."""
    import cv2

    ih, iw = img.shape[:2]
    s = min(h / ih, w / iw)
    nh, nw = max(1, round(ih * s)), max(1, round(iw * s))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    small = cv2.resize(img.astype(np.float32), (nw, nh), interpolation=interp)
    tile = np.full((h, w, 3), 0.15, np.float32)
    top, left = (h - nh) // 2, (w - nw) // 2
    tile[top : top + nh, left : left + nw] = np.clip(small, 0, 1)
    return tile


def contact_sheet(rows: List[List[np.ndarray]], tile_h: int = 160) -> np.ndarray:
    """Stack rows of images (each row: hazy | output | GT | depth ...) into one image."""
    if not rows:
        raise ValueError("no rows for the contact sheet")
    first = rows[0][0]
    tile_w = max(16, round(tile_h * first.shape[1] / first.shape[0]))
    ncols = max(len(r) for r in rows)
    gap = 4
    sheet = np.ones((len(rows) * (tile_h + gap) - gap, ncols * (tile_w + gap) - gap, 3), np.float32)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = i * (tile_h + gap), j * (tile_w + gap)
            sheet[y : y + tile_h, x : x + tile_w] = _fit(img, tile_h, tile_w)
    return sheet


def evaluate(
    runner: Runner,
    dataset: PairedDataset,
    out: Path,
    stats: Optional[NoReferenceStats] = None,
    sheet_rows: int = 8,
    save_outputs: bool = False,
    progress: bool = True,
    extra_summary: Optional[Dict[str, Any]] = None,
    baseline: Optional[Runner] = None,
) -> Dict[str, Any]:
    """Run ``runner`` on every pair, write ``metrics.csv``, ``summary.json``, ``contact_sheet.png``.

    ``baseline`` (the dark-channel prior, :func:`edgehaze.dcp.dcp_runner`, by
    default in ``edgehaze eval``) runs on the same images in the same run: its
    metrics are the ``dcp_*`` columns and ``summary["baseline"]``, and its
    output is a contact-sheet column. Returns the summary dict. Images that
    fail to load are skipped (and listed) when the dataset has ``skip_bad``,
    else the error propagates.
    """
    out = Path(out)
    stats = stats or NoReferenceStats()
    fns, metric_skips = _metric_functions(dataset.has_gt, stats)
    names = list(fns)
    rows: List[Dict[str, Any]] = []
    sheet: List[List[np.ndarray]] = []
    metric_errors: List[Dict[str, str]] = []
    times: List[float] = []
    indices = range(len(dataset))
    iterator: Any = indices
    if progress:
        from tqdm import tqdm

        iterator = tqdm(indices, desc="eval", unit="img")
    for i in iterator:
        pair = dataset.pairs[i]
        try:
            hazy, gt = dataset.load_pair(i)
        except EdgehazeError as exc:
            if not dataset.skip_bad:
                raise
            dataset.skipped.append((pair.name, str(exc)))
            continue
        t0 = time.perf_counter()
        pred = np.asarray(runner(hazy), dtype=np.float32)
        times.append(time.perf_counter() - t0)
        if pred.shape != hazy.shape:
            raise EdgehazeError(f"the model returned {pred.shape} for {pair.hazy} of shape {hazy.shape}")
        pred = np.clip(pred, 0.0, 1.0)
        row: Dict[str, Any] = {"name": pair.name, "hazy": str(pair.hazy), "gt": str(pair.gt or "")}
        p64, h64 = pred.astype(np.float64), hazy.astype(np.float64)
        g64 = gt.astype(np.float64) if gt is not None else None
        _score(fns, p64, g64, h64, row, "", pair.name, metric_errors)
        row["ms"] = 1000.0 * times[-1]
        base = None
        if baseline is not None:
            base = np.clip(np.asarray(baseline(hazy), dtype=np.float32), 0.0, 1.0)
            _score({k: f for k, f in fns.items() if k != "psnr_hazy"}, base.astype(np.float64), g64, h64, row,
                   "dcp_", pair.name, metric_errors)
        rows.append(row)
        if save_outputs:
            write_image(out / "images" / f"{pair.name}.png", pred)
        if len(sheet) < sheet_rows:
            tiles = [hazy] + ([base] if base is not None else []) + [pred] + ([gt] if gt is not None else [])
            if runner.depth is not None:
                tiles.append(depth_colour(runner.depth(hazy)))
            sheet.append(tiles)

    if not rows:
        raise EdgehazeError(f"no image could be evaluated ({len(dataset.skipped)} skipped)")
    base_names = [f"dcp_{n}" for n in names if n != "psnr_hazy"] if baseline is not None else []
    columns = ["name"] + names + base_names + ["ms", "hazy", "gt"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    # surrogateescape: a file name that is not UTF-8 goes into the CSV as its original bytes
    atomic_write_bytes(out / "metrics.csv", buf.getvalue().encode("utf-8", "surrogateescape"))

    def mean_of(name: str) -> Optional[float]:
        vals = [r[name] for r in rows if name in r and not math.isnan(r[name])]
        return float(np.mean(vals)) if vals else None

    means: Dict[str, Optional[float]] = {name: mean_of(name) for name in names}
    sheet_path = write_image(out / "contact_sheet.png", contact_sheet(sheet))
    summary: Dict[str, Any] = {
        "count": len(rows),
        "metrics": means,
        "metrics_skipped": metric_skips,
        "metric_errors": metric_errors,
        "skipped": [{"name": n, "reason": r} for n, r in dataset.skipped],
        "mean_ms_per_image": 1000.0 * float(np.mean(times)),
        "has_gt": dataset.has_gt,
        "baseline": ({"name": getattr(baseline, "name", "baseline"),
                      "metrics": {n[4:]: mean_of(n) for n in base_names}} if baseline is not None else None),
        "columns": {"contact_sheet": ["hazy"] + (["dark-channel prior"] if baseline is not None else []) + ["output"]
                    + (["gt"] if dataset.has_gt else [])
                    + (["depth"] if runner.depth is not None else [])},
        "files": {"csv": str(out / "metrics.csv"), "contact_sheet": str(sheet_path)},
        "model": runner.info,
    }
    summary.update(extra_summary or {})
    atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=2, default=str).encode())
    return summary


def _score(fns: Dict[str, Callable], pred: np.ndarray, gt: Optional[np.ndarray], hazy: np.ndarray,
           row: Dict[str, Any], prefix: str, name: str, errors: List[Dict[str, str]]) -> None:
    """Every metric of ``fns`` on one output, into ``row`` as ``prefix + metric`` (NaN and a note on failure)."""
    for metric, fn in fns.items():
        try:
            row[prefix + metric] = float(fn(pred, gt, hazy))
        except EdgehazeError as exc:  # e.g. NIQE on a tiny image
            row[prefix + metric] = float("nan")
            errors.append({"name": name, "metric": prefix + metric, "reason": str(exc)})
