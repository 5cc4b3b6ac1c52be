"""Flicker of trained runs on validation images: choosing an anti-flicker setting without test video.

    python benchmarks/flicker_val.py --val runs/demo-full/data/val RUN_DIR [RUN_DIR ...]
    python benchmarks/flicker_val.py --val runs/demo-full/data/val --frame-height 1080 --size 1080 1440 A.onnx B.onnx

For each ``edgehaze train`` run directory (its last stage's ``last.safetensors``
exported once to ``RUN/flicker_val.onnx`` by ``edgehaze export --dynamic``),
panning clips (``--size`` windows sliding ``--step`` px a frame for
``--frames`` frames, :func:`benchmarks.temporal.panning_clip`) over the first
validation image of each scene (the name before the last ``_``) are dehazed
per frame, and the warping error of the output (Lai et al. 2018,
``runtime.flicker``) is compared with the floor of the same model's mean maps
held fixed (:func:`benchmarks.temporal.held_maps`). Printed with the run's
last logged validation PSNR/SSIM (``val_log.csv``, ``val_limit`` pairs) and
the export's PSNR on the whole validation split, split into re-rendered
pairs and pairs with the sources' own haze (:func:`val_psnr`): the table of
configs/README.md, "Flicker". Only validation images are read, so the choice stays off the test
sets (the real fog drive scores the chosen model afterwards).

An artifact (``.onnx``) instead of a run directory is measured as it is:
how the 1080p artifact's internal scale is chosen (configs/README.md,
"Flicker"). ``--frame-height H`` resizes the validation pairs (bicubic,
aspect kept) to frames of height ``H`` before scoring, so an artifact is
scored at the frame size it serves; the pans take ``--size`` windows.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from edgehaze.fsutil import atomic_write  # noqa: E402
from runtime.flicker import WarpingError  # noqa: E402
from temporal import IMAGE_EXT, dehaze, held_maps, panning_clip, read_rgb  # noqa: E402


def scene_heads(folder: Path) -> List[Path]:
    """The first image (sorted) of each scene, a scene being the file name before its last ``_``."""
    heads: Dict[str, Path] = {}
    for p in sorted(q for q in folder.iterdir() if q.suffix.lower() in IMAGE_EXT):
        heads.setdefault(p.stem.rsplit("_", 1)[0], p)
    return list(heads.values())


def export_run(run: Path) -> Path:
    """``RUN/flicker_val.onnx`` from the run's last checkpoint (exported once)."""
    ckpts = sorted(run.glob("*/last.safetensors"))
    if not ckpts:
        raise SystemExit(f"{run}: no STAGE/last.safetensors (an `edgehaze train` run directory?)")
    onnx = run / "flicker_val.onnx"
    if not onnx.exists():
        subprocess.run([sys.executable, "-m", "edgehaze", "export", "--checkpoint", str(ckpts[-1]), "--out", str(run),
                        "--name", "flicker_val", "--dynamic"], check=True, capture_output=True)
    return onnx


def last_val(run: Path) -> Dict[str, float]:
    rows = list(csv.DictReader((run / "val_log.csv").open())) if (run / "val_log.csv").is_file() else []
    return {k: float(rows[-1][k]) for k in ("psnr", "ssim")} if rows else {}


def source_haze(path: Path) -> bool:
    """A validation pair whose haze came with the source (``SCENE_orig3``, FRIDA2's ``SCENE_K080``), not our renderer."""
    return not path.stem.rsplit("_", 1)[-1].isdigit()


def to_height(image: np.ndarray, height: Optional[int]) -> np.ndarray:
    """``image`` resized (bicubic, aspect kept) to ``height`` rows; as is for None."""
    if not height or image.shape[0] == height:
        return image
    import cv2

    width = round(image.shape[1] * height / image.shape[0])
    return np.ascontiguousarray(cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC))


def val_psnr(model: Path, val_root: Path, height: Optional[int] = None) -> Dict[str, float]:
    """Mean PSNR (dB) of the exported model on ``val_root/hazy`` vs ``val_root/GT``: re-rendered pairs and source-haze pairs.

    The split's renderings come from the same renderer as the training
    pairs; the pairs with the sources' own haze (RESIDE's indoor haze,
    FRIDA2's fog) are the validation images closest to the real test sets,
    and the ones that show what a setting costs there. ``height``: both
    images of each pair resized to that many rows first (:func:`to_height`).
    """
    from edgehaze.metrics import psnr

    sums: Dict[str, list] = {"rendered": [], "source_haze": []}
    hazy = sorted(q for q in (val_root / "hazy").iterdir() if q.suffix.lower() in IMAGE_EXT)
    outs, _, _ = dehaze(str(model), [to_height(read_rgb(q), height) for q in hazy], {})
    for q, out in zip(hazy, outs):
        gt = to_height(read_rgb(val_root / "GT" / q.name), height)
        sums["source_haze" if source_haze(q) else "rendered"].append(psnr(out.astype(np.float32) / 255, gt.astype(np.float32) / 255))
    return {f"val_psnr_{k}": float(np.mean(v)) for k, v in sums.items() if v}


def measure(model: Path, images: Sequence[Path], size: tuple, frames: int, step: int) -> Dict[str, float]:
    ratios, errors = [], []
    for path in images:
        clip = panning_clip(read_rgb(path), hw=size, frames=frames, step=step)
        outs, _, _ = dehaze(str(model), clip, {})
        held = held_maps(str(model), clip)
        if held is None:
            raise SystemExit(f"{model}: not a fused edge-* graph (no correction maps to hold)")
        m = WarpingError()
        for k, f in enumerate(clip):
            m.add(f, {"out": outs[k], "held": held[k]})
        r = m.result()
        ratios.append(r["out"] / r["held"])
        errors.append(r["out"])
    return {"clips": len(images), "per_frame_over_floor": float(np.median(ratios)), "warping_error": float(np.mean(errors))}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path,
                   help="edgehaze train run directories (or exported .onnx artifacts, measured as they are)")
    p.add_argument("--val", type=Path, required=True,
                   help="the validation split (hazy/ and GT/; e.g. runs/demo-full/data/val)")
    p.add_argument("--size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--step", type=int, default=3)
    p.add_argument("--frame-height", type=int, default=None, metavar="H",
                   help="score the validation pairs resized to frames of this height (e.g. 1080)")
    a = p.parse_args(argv)
    if not (a.val / "hazy").is_dir() or not (a.val / "GT").is_dir():
        raise SystemExit(f"--val {a.val}: not a validation split (needs hazy/ and GT/; e.g. runs/demo-full/data/val)")
    images = scene_heads(a.val / "hazy")
    print("| run | val_log PSNR / SSIM | val PSNR rendered / source haze | per frame / floor (median) | warping error |\n"
          "|---|---|---|---:|---:|")
    for run in a.runs:
        artifact = run.suffix == ".onnx"
        if artifact and not run.is_file():
            raise SystemExit(f"{run}: no such artifact (pass an exported .onnx or an edgehaze train run directory)")
        model = run if artifact else export_run(run)
        r = {**measure(model, images, tuple(a.size), a.frames, a.step), **val_psnr(model, a.val, a.frame_height),
             **({} if artifact else last_val(run)), "size": list(a.size), "frame_height": a.frame_height}
        logged = f"{r['psnr']:.2f} / {r['ssim']:.3f}" if "psnr" in r else "-"
        print(f"| {run} | {logged} | {r.get('val_psnr_rendered', float('nan')):.2f} / "
              f"{r.get('val_psnr_source_haze', float('nan')):.2f} | {r['per_frame_over_floor']:.2f} | "
              f"{r['warping_error']:.2e} |", flush=True)
        # not RUN/flicker_val.json: that is the exported artifact's sidecar, which the next run reads
        report = run.with_suffix(".flicker_val.json") if artifact else run / "flicker_val_report.json"
        atomic_write(report, lambda tmp: Path(tmp).write_text(json.dumps(r, indent=2)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
