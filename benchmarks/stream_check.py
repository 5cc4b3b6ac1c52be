"""Stream check: a real video through the shipped path, with the machine's ceilings in the same run.

    python benchmarks/stream_check.py --video my_clip.mp4
    python benchmarks/stream_check.py --video my_clip.mp4 --checkpoint runs/pareto/edge-s_x8.safetensors --method ptq

What a user does, step by step, and nothing the benchmarks do privately:

1. measures this machine's ceilings (``benchmarks/limits.py``);
2. exports the checkpoint with ``edgehaze export``'s own code path
   (:func:`edgehaze.export.export_checkpoint`: INT8 by PTQ or QAT, the fused
   graph, its parity and accuracy checks) once per target size: the model's
   own internal scale for 640x480, ``--scale-1080`` (default twice it) for
   1920x1080, as ``edgehaze export --internal-scale`` does;
3. resamples the video to each size once, up front (MJPG .avi), so the
   stream decodes frames of that size as a camera would deliver them;
4. runs ``runtime/stream.py`` on each (null sink, depth every frame) and
   reads its stats JSON.

Writes ``OUT/report.md`` and ``OUT/report.json``: FPS, per-stage medians,
overhead share and pass/short against the targets (30 FPS at 640x480, aim
60; 25 FPS at 1080p; overhead at most 15 %), next to the ceilings and the
load average. Artifacts already exported to ``OUT`` are reused.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import limits as L  # noqa: E402
from benchmarks.speed_report import run_stream  # noqa: E402
from edgehaze.bench import parse_size  # noqa: E402
from edgehaze.errors import EdgehazeError  # noqa: E402

#: target frame rate (minimum, aim) per frame size, labelled WIDTHxHEIGHT
TARGETS = {"640x480": (60.0, None), "1920x1080": (30.0, None)}  # issue "Real haze": end-to-end floors
#: --sizes, HEIGHTxWIDTH like `edgehaze bench --sizes`
DEFAULT_SIZES = ("480x640", "1080x1920")


def resample_video(src: Path, dst: Path, size: Tuple[int, int], max_frames: Optional[int]) -> int:
    """``src`` resized to ``size`` (H, W) as MJPG .avi; returns the frame count."""
    import cv2

    cap = cv2.VideoCapture(str(src))
    if not cap.isOpened():
        raise SystemExit(f"--video {src}: OpenCV cannot open it (missing file or unsupported codec)")
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    tmp = dst.with_name(dst.stem + ".partial.avi")
    out = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), fps, (size[1], size[0]))
    n = 0
    try:
        while max_frames is None or n < max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            interp = cv2.INTER_AREA if frame.shape[0] > size[0] else cv2.INTER_LINEAR
            out.write(cv2.resize(frame, (size[1], size[0]), interpolation=interp))
            n += 1
    finally:
        cap.release()
        out.release()
    if n == 0:
        tmp.unlink(missing_ok=True)
        raise SystemExit(f"--video {src}: no frame could be read")
    os.replace(tmp, dst)
    return n


def export_for(checkpoint: Path, out: Path, key: str, scale: Optional[int], method: str, calib: str,
               qat_steps: int, log) -> Tuple[Path, Dict[str, Any]]:  # type: ignore[no-untyped-def]
    """The INT8 artifact for one size (reused when already in ``out``)."""
    from edgehaze.export import export_checkpoint

    name = f"{checkpoint.stem}-int8-{key}"
    onnx_path, side_path = out / f"{name}.onnx", out / f"{name}.json"
    if onnx_path.is_file() and side_path.is_file():
        log(f"reusing {onnx_path}")
        return onnx_path, json.loads(side_path.read_text())
    log(f"exporting {checkpoint} for {key} (INT8 by {method.upper()}"
        + (f", internal scale {scale}" if scale is not None else "") + ")")
    res = export_checkpoint(checkpoint, out=out, name=name, precision="int8", calib=calib, method=method,
                            qat_steps=qat_steps, internal_scale=scale, log=log)
    return res.files["onnx"], res.sidecar


def check(video: Path, checkpoint: Path, out: Path, sizes: Sequence[str] = DEFAULT_SIZES,
          scale_1080: Optional[int] = None, method: str = "qat", calib: str = "procedural", qat_steps: int = 300,
          max_frames: Optional[int] = 300, threads: int = 2, quick: bool = False,
          log=lambda m: print(m, file=sys.stderr, flush=True)) -> Dict[str, Any]:  # type: ignore[no-untyped-def]
    from edgehaze.checkpoint import read_metadata

    if not checkpoint.is_file():
        raise SystemExit(f"--checkpoint {checkpoint}: no such file (python benchmarks/pareto.py writes "
                         "runs/pareto/edge-s_x8.safetensors, the shipped default)")
    if not video.is_file():
        raise SystemExit(f"--video {video}: no such file")
    out.mkdir(parents=True, exist_ok=True)
    build = read_metadata(checkpoint).get("build") or {}
    trained_scale = (build.get("backbone_kwargs") or {}).get("scale")
    report: Dict[str, Any] = {"video": str(video), "checkpoint": str(checkpoint), "method": method,
                              "threads": threads, "load_start": list(os.getloadavg())}
    log("measuring the machine's ceilings")
    report["limits"] = L.measure_limits(threads, quick=quick)
    report["sizes"] = {}
    for text in sizes:
        try:
            h, w = parse_size(text)
        except EdgehazeError as exc:
            raise SystemExit(str(exc)) from None
        key = f"{w}x{h}"
        big = h * w > 640 * 480 * 1.5
        scale = (scale_1080 or (2 * trained_scale if trained_scale else None)) if big else None
        art, side = export_for(checkpoint, out, key, scale, method, calib, qat_steps, log)
        clip = out / f"{video.stem}-{key}.avi"
        frames = resample_video(video, clip, (h, w), max_frames)
        log(f"runtime/stream.py on {clip.name} ({frames} frames, {key})")
        res = run_stream(art, clip, threads)
        lo, aim = TARGETS.get(key, (None, None))
        fps = res.get("fps")
        report["sizes"][key] = {
            **res, "artifact": str(art), "internal_scale": (side.get("model") or {}).get("scale"),
            "psnr_drop": (side.get("accuracy") or {}).get("psnr_drop"), "video_frames": frames,
            "target_fps": lo, "aim_fps": aim,
            "status": None if lo is None or fps is None else ("pass" if fps >= lo else "short"),
            "overhead_status": None if res.get("overhead_pct") is None else
            ("pass" if res["overhead_pct"] <= 15 else "short"),
        }
    report["load_end"] = list(os.getloadavg())
    return report


def markdown(r: Dict[str, Any]) -> str:
    lim = r["limits"]
    lines = [f"# Stream check: {Path(r['video']).name}", "",
             f"Checkpoint `{r['checkpoint']}`, INT8 by {r['method'].upper()}; ONNX Runtime CPU, {r['threads']} threads; "
             f"load average {r['load_start'][0]:.2f} -> {r['load_end'][0]:.2f}.", "",
             f"Ceilings in this run: INT8 3x3 conv {lim['conv_int8_gmacs']} GMAC/s, FP32 {lim['conv_fp32_gmacs']} "
             f"GMAC/s, FP32 GEMM {lim['gemm_fp32_gflops']} GFLOP/s, copy {lim['membw_gbs']} GB/s.", "",
             "| size | internal scale | FPS | target | status | frame ms | infer | pre | post | capture (thread) "
             "| overhead % | INT8 PSNR drop dB |",
             "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key, s in r["sizes"].items():
        if "error" in s:
            lines.append(f"| {key} | error: {s['error']} |")
            continue
        st = s["stages_median_ms"]
        goal = f">= {s['target_fps']:g}" + (f" (aim {s['aim_fps']:g})" if s.get("aim_fps") else "") if s["target_fps"] else "-"
        lines.append(f"| {key} | {s['internal_scale']} | {s['fps']:.1f} | {goal} | {s['status'] or '-'} | {s['frame_ms']:.2f} | "
                     f"{st['infer']:.2f} | {st['pre']:.2f} | {st['post']:.2f} | {st['capture']:.2f} | "
                     f"{s['overhead_pct']} ({s['overhead_status']}) | {s['psnr_drop']} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--video", required=True, help="any video OpenCV reads (it is resampled to each size)")
    p.add_argument("--checkpoint", default="runs/pareto/edge-s_x8.safetensors", help="an edge-* dehazer checkpoint")
    p.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="HEIGHTxWIDTH per stream (as edgehaze bench)")
    p.add_argument("--scale-1080", type=int, default=None, help="internal scale for frames above 1.5x 640x480 "
                   "(default: twice the trained scale)")
    p.add_argument("--method", choices=["qat", "ptq"], default="qat",
                   help="INT8 method of the export (default qat, as edgehaze export; ptq is faster to run)")
    p.add_argument("--calib", default="procedural", help="calibration data for the export (folder or 'procedural')")
    p.add_argument("--qat-steps", type=int, default=300)
    p.add_argument("--max-frames", type=int, default=300, help="frames per stream (0: the whole video)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/stream_check")
    p.add_argument("--quick", action="store_true", help="quick ceilings (smoke runs)")
    a = p.parse_args(argv)
    from edgehaze.fsutil import atomic_write_text

    r = check(Path(a.video), Path(a.checkpoint), Path(a.out), a.sizes, a.scale_1080, a.method, a.calib, a.qat_steps,
              a.max_frames or None, a.threads, a.quick)
    atomic_write_text(Path(a.out) / "report.json", json.dumps(r, indent=2, default=float))
    atomic_write_text(Path(a.out) / "report.md", markdown(r))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
