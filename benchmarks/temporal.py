"""Flicker benchmark: warping error of real video dehazed per frame and with the runtime's smoothing.

    python benchmarks/temporal.py --model runs/demo/export/student-int8.onnx
    python benchmarks/temporal.py --model M.onnx --strength 0.7 --out runs/temporal

For each clip, the artifact runs through the runtime (``runtime.Dehazer``,
what ``runtime/stream.py`` runs) three ways: per frame (``temporal=0``,
today's output), with map smoothing (``temporal=STRENGTH``) and with
smoothing plus the clear-frame bypass. The warping error (Lai et al. 2018,
:mod:`runtime.flicker`, flow on the input video) of the input and of each
output, and each output's ratio to the input's, go to ``OUT/report.json``
and ``OUT/report.md``. Target: ratio at most 1.0 with smoothing on, every clip.
The floor column (:func:`held_maps`) applies the clip's mean correction maps
to every frame: the warping error a perfectly stable version of the same
correction would have (a gain g > 1 raises the input's own frame-to-frame
differences by about g^2), so per-frame / floor is the model's flicker proper.

Clips: ``$EDGEHAZE_SHARED/data/video/dvd_gopro_fog_frames`` (62 frames of a
real foggy drive, natural numeric order) at its own size and resampled to
640x360; panning clips over real hazy photos
(``$EDGEHAZE_SHARED/data/real_hazy``: a 640x480 window sliding 3 px per
frame across each photo, resized so the window covers 80 % of its height),
and a still (one photo repeated: smoothing must give per-frame output).

Cost: median per-frame time of ``Dehazer.run`` off / on / on + bypass on the
fog clip at 640x480 and 1920x1080, as a share of the per-frame time, with
the load average recorded.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import runtime  # noqa: E402
from edgehaze.fsutil import atomic_write  # noqa: E402
from runtime.flicker import WarpingError, tof  # noqa: E402
from runtime.temporal import haze_score  # noqa: E402

SHARED = Path(os.environ.get("EDGEHAZE_SHARED", "/work/shared"))
FOG = SHARED / "data/video/dvd_gopro_fog_frames"
PHOTOS = SHARED / "data/real_hazy"
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp")


def _cv2():
    import cv2

    return cv2


def natural_frames(folder: Path) -> List[Path]:
    """Image files of ``folder`` in natural numeric order (frame_2 before frame_10)."""
    key = lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]  # noqa: E731
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXT), key=key)


def read_rgb(path: Path) -> np.ndarray:
    cv2 = _cv2()
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise SystemExit(f"{path}: OpenCV cannot read it (corrupt or unsupported image)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def resized(frames: Sequence[np.ndarray], hw: tuple) -> List[np.ndarray]:
    cv2 = _cv2()
    return [np.ascontiguousarray(cv2.resize(f, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)) for f in frames]


def panning_clip(photo: np.ndarray, hw: tuple = (480, 640), frames: int = 30, step: int = 3) -> List[np.ndarray]:
    """A window of ``hw`` sliding ``step`` px per frame across ``photo`` (resized so the window is 80 % of its height)."""
    cv2 = _cv2()
    h, w = hw
    f = h / (0.8 * photo.shape[0])
    big = cv2.resize(photo, (max(w + step * frames + 2, round(photo.shape[1] * f)), round(photo.shape[0] * f)),
                     interpolation=cv2.INTER_AREA)
    y0 = (big.shape[0] - h) // 2
    return [np.ascontiguousarray(big[y0:y0 + h, k * step:k * step + w]) for k in range(frames)]


def clips(fog: Path, photos: Path, n_photos: int) -> Dict[str, List[np.ndarray]]:
    """The clips measured (module docstring); a missing folder is skipped with a note."""
    out: Dict[str, List[np.ndarray]] = {}
    if fog.is_dir():
        frames = [read_rgb(p) for p in natural_frames(fog)]
        h, w = frames[0].shape[:2]
        out[f"fog {w}x{h}"] = frames
        out["fog 640x360"] = resized(frames, (360, 640))
    else:
        print(f"(no fog video at {fog}: set EDGEHAZE_SHARED or --fog)")
    if photos.is_dir():
        files = sorted(p for p in photos.rglob("*") if p.suffix.lower() in IMAGE_EXT)[:n_photos]
        for p in files:
            out[f"pan {p.parent.name}/{p.name}"] = panning_clip(read_rgb(p))
        if files:
            still = panning_clip(read_rgb(files[0]), frames=1)[0]
            out[f"still {files[0].name}"] = [still] * 10
    else:
        print(f"(no photos at {photos}: set EDGEHAZE_SHARED or --photos)")
    return out


def dehaze(model: str, frames: Sequence[np.ndarray], options: dict) -> "tuple[List[np.ndarray], List[float], object]":
    """Outputs and per-frame times (ms) of ``Dehazer.run`` over ``frames`` (one warm-up call first)."""
    outs, times = [], []
    with runtime.Dehazer(model, {"threads": 2, **options}) as d:
        d.run(frames[0])
        if d._temporal is not None:
            d._temporal.forget()
        if d._gate is not None:
            d._gate.clear, d._gate.bypassed = None, 0
        for f in frames:
            out = np.empty_like(f)
            t0 = time.perf_counter()
            d.run(f, out)
            times.append((time.perf_counter() - t0) * 1e3)
            outs.append(out)
        counters = {"scene_cuts": d.scene_cuts, "bypassed": d._gate.bypassed if d._gate else 0,
                    "bypass_toggles": d._gate.toggles if d._gate else 0}
    return outs, times, counters


def dcp_frames(frames: Sequence[np.ndarray]) -> List[np.ndarray]:
    """The dark-channel prior (edgehaze.dcp, He et al.) run per frame: the classic per-frame reference."""
    from edgehaze.dcp import dehaze_dcp

    return [np.round(dehaze_dcp(f.astype(np.float32) / 255.0)[0] * 255.0).astype(np.uint8) for f in frames]


def held_maps(model: str, frames: Sequence[np.ndarray]) -> Optional[List[np.ndarray]]:
    """Each frame dehazed with the clip's mean correction maps (None: not a one-input fused edge-* graph).

    The flicker floor of the model's correction: what a perfectly stable
    version of it (the same gain/offset grid on every frame) would score.
    Any dehazer raises contrast, and the warping error of ``g * I + b``
    is ``g^2`` times the input's, so the target "at most the input's" is
    out of reach for any model whose gain exceeds 1; this column separates
    that from flicker. The maps are the graph's own (``fused/gain_offset_low``:
    ``1 + K`` and ``255 B``, after the guided refit), upsampled bilinearly by
    the graph's scale as its apply step does.
    """
    import onnxruntime as ort

    from runtime.errors import RuntimeError_
    from runtime.temporal import smoothing_graph

    try:
        graph, scale = smoothing_graph(str(model))
    except RuntimeError_ as exc:
        print(f"(no held-maps floor: {exc})")
        return None
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])
    if [i.name for i in sess.get_inputs() if not i.name.startswith("temporal/")] != ["image"]:
        print("(no held-maps floor: the graph takes more than the image)")
        return None
    maps = []
    for f in frames:
        h, w = -(-f.shape[0] // scale), -(-f.shape[1] // scale)
        feeds = {"image": np.ascontiguousarray(f)[None], "temporal/prev_maps": np.zeros((1, 6, h, w), np.float32),
                 "temporal/prev_pooled": np.zeros((1, 3, h, w), np.float32), "temporal/weight": np.zeros(1, np.float32)}
        maps.append(sess.run(["temporal/maps"], feeds)[0][0])
    mean = np.mean(maps, axis=0)
    cv2 = _cv2()
    up = np.stack([cv2.resize(c, (c.shape[1] * scale, c.shape[0] * scale), interpolation=cv2.INTER_LINEAR) for c in mean])
    out = []
    for f in frames:
        m = up[:, : f.shape[0], : f.shape[1]].transpose(1, 2, 0)
        out.append(np.clip(np.rint(f.astype(np.float32) * m[..., :3] + m[..., 3:]), 0, 255).astype(np.uint8))
    return out


def measure_clip(model: str, frames: Sequence[np.ndarray], strength: float,
                 gt: Optional[Sequence[np.ndarray]] = None, dcp: bool = True) -> dict:
    variants = {"per_frame": {}, "smoothed": {"temporal": strength}, "smoothed_bypass": {"temporal": strength, "bypass": True}}
    outs, info = {}, {}
    for name, opts in variants.items():
        outs[name], _, info[name] = dehaze(model, frames, opts)
    if dcp:
        outs["dcp"] = dcp_frames(frames)
    held = held_maps(model, frames)
    if held is not None:
        outs["held_maps"] = held
    m = WarpingError()
    for k, f in enumerate(frames):
        m.add(f, {name: o[k] for name, o in outs.items()})
    r = m.result()
    r["counters"] = info
    if gt is not None:  # TecoGAN's tOF against the ground-truth video
        r["tof"] = {name: tof(o, gt) for name, o in outs.items()}
    r["max_diff_smoothed_vs_per_frame"] = int(max(np.abs(a.astype(int) - b).max()
                                                  for a, b in zip(outs["per_frame"], outs["smoothed"])))
    return r


def measure_cost(model: str, frames: Sequence[np.ndarray], strength: float, repeats: int = 3) -> dict:
    """Median ms per frame off / smoothed / smoothed + bypass / bypass, the variants interleaved frame by frame.

    Every variant's handle stays open and each frame goes through all of
    them in turn, so a change of machine load hits them alike (this VM's
    load drifts by several percent within a minute).
    """
    variants = {"per_frame": {}, "smoothed": {"temporal": strength}, "smoothed_bypass": {"temporal": strength, "bypass": True},
                "bypass_only": {"bypass": True}}
    samples: Dict[str, list] = {k: [] for k in variants}
    handles = {k: runtime.Dehazer(model, {"threads": 2, **o}) for k, o in variants.items()}
    try:
        out = np.empty_like(frames[0])
        for d in handles.values():
            d.run(frames[0], out)  # warm-up
        for _ in range(repeats):
            for f in frames:
                for name, d in handles.items():
                    t0 = time.perf_counter()
                    d.run(f, out)
                    samples[name].append((time.perf_counter() - t0) * 1e3)
    finally:
        for d in handles.values():
            d.close()
    med = {k: float(np.median(v)) for k, v in samples.items()}
    base = med["per_frame"]
    score = []
    for f in frames:  # the bypass's own work, timed alone
        t0 = time.perf_counter()
        haze_score(f)
        score.append((time.perf_counter() - t0) * 1e3)
    med["haze_score"] = float(np.median(score))
    return {"median_ms": med, "share_pct": {**{k: 100.0 * (v - base) / base for k, v in med.items() if k not in ("per_frame", "haze_score")},
                                         "haze_score": 100.0 * med["haze_score"] / base},
            "load_avg": os.getloadavg()}


def markdown(report: dict) -> str:
    lines = [f"# Flicker: warping error (Lai et al. 2018), model `{report['model']}`, strength {report['strength']}", "",
             "| clip | pairs | input | per frame (ratio) | smoothed (ratio) | smoothed + bypass (ratio) | bypassed "
             "| max diff smoothed vs per frame | dark-channel prior per frame (ratio) | mean maps held (floor, ratio) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in report["clips"].items():
        if not r.get("pairs"):
            continue
        ratio = r["ratio"]
        cell = lambda k: f"{r[k]:.3e} ({ratio[k]:.3f})" if r["input"] > 0 else f"{r[k]:.3e} (-)"  # noqa: E731
        lines.append(f"| {name} | {r['pairs']} | {r['input']:.3e} | {cell('per_frame')} | {cell('smoothed')} | "
                     f"{cell('smoothed_bypass')} | {r['counters']['smoothed_bypass']['bypassed']} | "
                     f"{r['max_diff_smoothed_vs_per_frame']} | {cell('dcp') if 'dcp' in r else '-'} | "
                     f"{cell('held_maps') if 'held_maps' in r else '-'} |")
    lines += ["", "| size | per frame ms | smoothed ms (+%) | smoothed + bypass ms (+%) | bypass only ms (+%) "
              "| haze score alone ms (%) | load |", "|---|---:|---:|---:|---:|---:|---|"]
    for size, c in report["cost"].items():
        m, s = c["median_ms"], c["share_pct"]
        lines.append(f"| {size} | {m['per_frame']:.2f} | {m['smoothed']:.2f} ({s['smoothed']:+.1f}) | "
                     f"{m['smoothed_bypass']:.2f} ({s['smoothed_bypass']:+.1f}) | {m['bypass_only']:.2f} "
                     f"({s['bypass_only']:+.1f}) | {m['haze_score']:.3f} ({s['haze_score']:.2f}) | "
                     f"{', '.join(f'{v:.2f}' for v in c['load_avg'])} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="artifact (NAME.onnx of an edge-* fused export)")
    p.add_argument("--strength", type=float, default=0.7, help="--temporal strength measured")
    p.add_argument("--fog", type=Path, default=FOG)
    p.add_argument("--photos", type=Path, default=PHOTOS)
    p.add_argument("--photos-n", type=int, default=4, help="panning clips (one per photo)")
    p.add_argument("--clip", type=Path, action="append", default=[], help="another clip: a folder of frames")
    p.add_argument("--clip-gt", type=Path, action="append", default=[],
                   help="its ground-truth frames (same count and order; one per --clip, in order): adds tOF")
    p.add_argument("--cost-frames", type=int, default=30, help="frames per cost run")
    p.add_argument("--no-cost", action="store_true", help="skip the timing runs")
    p.add_argument("--cost-only", action="store_true", help="only the timing runs (on the fog clip)")
    p.add_argument("--no-dcp", action="store_true", help="skip the dark-channel prior reference")
    p.add_argument("--clear-photos", type=Path, default=SHARED / "data/sots_indoor/gt",
                   help="clear photos made into panning clips too (the bypass should pass them)")
    p.add_argument("--out", type=Path, default=Path("runs/temporal"))
    a = p.parse_args(argv)
    if not Path(a.model).exists():
        raise SystemExit(f"--model {a.model}: no such artifact; export one with `edgehaze export` (or run "
                         "`edgehaze demo --quick`)")
    report: dict = {"model": str(a.model), "strength": a.strength, "clips": {}, "cost": {}}
    all_clips = clips(a.fog, a.photos, a.photos_n)
    if a.clear_photos.is_dir():
        for f in sorted(p for p in a.clear_photos.iterdir() if p.suffix.lower() in IMAGE_EXT)[:2]:
            all_clips[f"clear pan {f.name}"] = panning_clip(read_rgb(f))
    gts: Dict[str, List[np.ndarray]] = {}
    for k, folder in enumerate(a.clip):
        if not folder.is_dir():
            raise SystemExit(f"--clip {folder}: not a folder of frames")
        all_clips[f"clip {folder.name}"] = [read_rgb(f) for f in natural_frames(folder)]
        if k < len(a.clip_gt):
            gts[f"clip {folder.name}"] = [read_rgb(f) for f in natural_frames(a.clip_gt[k])]
            if len(gts[f"clip {folder.name}"]) != len(all_clips[f"clip {folder.name}"]):
                raise SystemExit(f"--clip-gt {a.clip_gt[k]}: frame count differs from --clip {folder}")
    for name, frames in ({} if a.cost_only else all_clips).items():
        report["clips"][name] = measure_clip(a.model, frames, a.strength, gts.get(name), dcp=not a.no_dcp)
        r = report["clips"][name]
        print(f"{name}: input {r.get('input', 0):.3e}  ratios {r.get('ratio')}", flush=True)
    fog = next((f for n, f in all_clips.items() if n.startswith("fog") and "640x360" not in n), None)
    if fog is not None and not a.no_cost:
        for hw in ((480, 640), (1080, 1920)):
            report["cost"][f"{hw[1]}x{hw[0]}"] = measure_cost(a.model, resized(fog[:a.cost_frames], hw), a.strength)
            print(f"cost {hw}: {report['cost'][f'{hw[1]}x{hw[0]}']}", flush=True)
    atomic_write(a.out / "report.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    atomic_write(a.out / "report.md", lambda tmp: Path(tmp).write_text(markdown(report)))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
