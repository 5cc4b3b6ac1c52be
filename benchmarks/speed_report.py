"""The speed report: the edge student pipeline against its targets, in one run.

    python benchmarks/speed_report.py                       # untrained default model
    python benchmarks/speed_report.py --checkpoint runs/pareto/edge-s_x4.safetensors --teacher
    python benchmarks/speed_report.py --profile             # + ORT per-node profiles

Writes ``runs/bench/report.md`` and ``runs/bench/report.json``:

* the machine's ceilings (``benchmarks/limits.py``), measured in this run;
* latency of eager torch vs ORT FP32 (the plain export) vs ORT FP32 / INT8
  (the fused graph, ``edgehaze.export.fused``) at 640x480 and 1080p, timed
  *interleaved* (A, B, C, A, B, C, ...) so machine load hits all alike, with
  the effective GMAC/s of each as a fraction of the INT8 conv ceiling;
* INT8 vs FP32 PSNR on held-out images (never used for calibration);
* ``runtime/stream.py`` end to end on a video file: FPS and the share of
  capture / pre / post / write in the frame time;
* optionally the teacher (DAv2-L architecture, random weights: timing only)
  end to end vs the student, in the same process.

Each target gets the measured figure and pass/short. Numbers depend on the
machine's load: the report records ``os.getloadavg()`` next to them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import limits as L  # noqa: E402

Size = Tuple[int, int]
SIZES = {"640x480": (480, 640), "1920x1080": (1080, 1920)}


# --------------------------------------------------------------------------- timing
def interleaved(cases: Dict[str, Callable[[], Any]], rounds: int = 10, warmup: int = 2) -> Dict[str, Dict[str, float]]:
    """Median/min ms of each case, run A, B, C, A, B, C, ... so load drifts hit all alike."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times: Dict[str, List[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for k, fn in cases.items():
            t = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t) * 1e3)
    return {k: {"median_ms": round(statistics.median(v), 3), "min_ms": round(min(v), 3), "runs": len(v)}
            for k, v in times.items()}


def ort_session(model: "bytes | str", threads: int = 2, optimized_path: Optional[str] = None):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    # no busy-waiting: interleaved sessions would otherwise spin on the cores the next one needs
    # (measured: up to 3x slower medians for whichever case follows a spinning session)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), so,
                                providers=["CPUExecutionProvider"])


def core_runner(sess, size: Size, prepool: int) -> Callable[[], Any]:  # type: ignore[no-untyped-def]
    """Zero-argument callable: the network alone (``x_low``: the frame pooled by ``prepool`` -> ``maps``)."""
    h, w = -(-size[0] // prepool), -(-size[1] // prepool)
    feed = {"x_low": np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)}
    return lambda: sess.run(["maps"], feed)


def ort_runner(sess, size: Size) -> Callable[[], Any]:  # type: ignore[no-untyped-def]
    """Zero-argument callable: one frame through an ``image`` -> ``dehazed`` graph with bound buffers."""
    img = np.random.default_rng(0).integers(0, 256, size=(1, size[0], size[1], 3), dtype=np.uint8)
    out = np.empty_like(img)
    b = sess.io_binding()
    b.bind_cpu_input("image", img)
    b.bind_output("dehazed", "cpu", 0, np.uint8, list(out.shape), out.ctypes.data)

    def run(keep=(img, out)):  # the bound buffers must outlive the binding
        sess.run_with_iobinding(b)
        return keep[1]

    return run


# --------------------------------------------------------------------------- models
def default_model(backbone: str = "edge-s", depth: str = "student-s", fusion: str = "lite", scale: int = 8,
                  seed: int = 0):  # type: ignore[no-untyped-def]
    """An untrained dehazer with non-zero maps (a zero head would make the apply step trivial)."""
    import torch

    from edgehaze import build_dehazer

    torch.manual_seed(seed)
    m = build_dehazer(backbone, depth=depth, fusion=fusion, backbone_kwargs={"scale": scale},
                      depth_kwargs={"pool": scale}).eval()
    torch.nn.init.normal_(m.backbone.head.weight, std=0.01)
    torch.nn.init.normal_(m.backbone.head.bias, std=0.05)
    for blk in m.fused_blocks():
        torch.nn.init.normal_(blk.z2.weight, std=0.02)
    return m


def load_model(checkpoint: Optional[str]):  # type: ignore[no-untyped-def]
    if checkpoint is None:
        return default_model(), {"trained": False}
    from edgehaze.checkpoint import load_dehazer

    m, meta = load_dehazer(checkpoint)
    return m.eval(), {"trained": True, "checkpoint": str(checkpoint), "build": meta.get("build")}


def model_macs(model, size: Size) -> int:  # type: ignore[no-untyped-def]
    import torch

    from edgehaze.metrics.cost import count_macs

    with torch.no_grad():
        return int(count_macs(model, torch.rand(1, 3, *size)))


def holdout(n: int, size: Size, seed: int) -> List[Tuple[np.ndarray, np.ndarray]]:
    from edgehaze.export.quantize import procedural_samples

    return procedural_samples(n, size, seed=seed)


def psnr_of(sess, samples) -> float:  # type: ignore[no-untyped-def]
    from edgehaze.metrics.fullref import psnr

    vals = []
    for hazy, gt in samples:
        u8 = np.clip(np.rint(hazy * 255), 0, 255).astype(np.uint8)[None]
        out = sess.run(["dehazed"], {"image": u8})[0][0].astype(np.float32) / 255.0
        vals.append(psnr(out, gt))
    return float(np.mean(vals))


def write_artifact(model_onnx, folder: Path, name: str, precision: str, build: dict) -> Path:  # type: ignore[no-untyped-def]
    """The fused graph as a runtime artifact (ONNX + sidecar, the contract's metadata)."""
    from edgehaze.export import metadata as M

    side = M.build_sidecar(name=name, precision=precision, opset=17, dynamic=True, imgsz=None, channel_order="RGB",
                           build=build, provenance={}, depth_features=[], two_graph=False, accuracy={})
    path = M.save_onnx(model_onnx, folder / f"{name}.onnx", side)
    M.write_sidecar(folder / f"{name}.json", side)
    return path


# --------------------------------------------------------------------------- stream
def write_video(path: Path, size: Size, frames: int, seed: int = 7) -> Path:
    """A short procedural hazy clip (MJPG .avi: every OpenCV build writes and reads it)."""
    import cv2

    from edgehaze.export.quantize import procedural_samples

    h, w = size
    base = procedural_samples(4, (240, 320), seed=seed)
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (w, h))
    for i in range(frames):
        img = base[i % len(base)][0]
        shift = i % 16
        big = cv2.resize(np.roll(img, shift, axis=1), (w, h), interpolation=cv2.INTER_LINEAR)
        vw.write(cv2.cvtColor(np.clip(big * 255, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
    vw.release()
    return path


def run_stream(model_path: Path, video: Path, threads: int = 2, output: str = "null",
               depth_every: int = 1, timeout: float = 600) -> Dict[str, Any]:
    """``runtime/stream.py`` on ``video`` in a subprocess; its stats JSON plus derived shares."""
    with tempfile.TemporaryDirectory() as tmp:
        stats = Path(tmp) / "stats.json"
        cmd = [sys.executable, str(ROOT / "runtime" / "stream.py"), "--model", str(model_path), "--input", str(video),
               "--output", output, "--headless", "--stats-json", str(stats), "--stats-interval", "0",
               "--threads", str(threads), "--depth-every", str(depth_every)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            return {"error": proc.stderr.strip().splitlines()[-1:] or ["stream failed"]}
        data = json.loads(stats.read_text())
    st = data["stages_ms"]
    frame_ms = 1000.0 / data["fps"] if data["fps"] else float("nan")
    overhead = sum(st[s]["mean"] for s in ("pre", "post", "write"))
    return {"fps": data["fps"], "frames": data["frames"], "frame_ms": round(frame_ms, 3),
            "stages_median_ms": {k: round(v["median"], 3) for k, v in st.items()},
            "capture_mean_ms": round(st["capture"]["mean"], 3),
            "overhead_ms": round(overhead, 3),
            "overhead_pct": round(100.0 * overhead / frame_ms, 2) if frame_ms == frame_ms else None,
            "capture_pct": round(100.0 * st["capture"]["mean"] / frame_ms, 2) if frame_ms == frame_ms else None}


# --------------------------------------------------------------------------- teacher
def teacher_model(name: str = "dav2-l"):  # type: ignore[no-untyped-def]
    """The teacher's architecture with random weights (``random_init``): timing only."""
    from edgehaze import build_dehazer

    return build_dehazer("edge-s", depth=name, fusion="full", depth_kwargs={"random_init": True}).eval()


# --------------------------------------------------------------------------- the report
def build_report(checkpoint: Optional[str] = None, threads: int = 2, rounds: int = 10, teacher: bool = False,
                 profile: bool = False, stream_frames: int = 120, scale_1080: Optional[int] = None, calib_n: int = 16,
                 holdout_n: int = 8, out_dir: "str | Path" = "runs/bench", quick: bool = False,
                 log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> Dict[str, Any]:
    import torch

    from edgehaze.export import graphs as G
    from edgehaze.export import onnx_export as O
    from edgehaze.export.fused import export_core, fused_graph, internal_scale, prepool_factor, quantize_core

    torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: Dict[str, Any] = {"load_start": list(os.getloadavg()), "threads": threads}
    log("measuring the machine's ceilings")
    report["limits"] = L.measure_limits(threads, quick=quick)
    ceiling = report["limits"]["conv_int8_gmacs"]

    model, info = load_model(checkpoint)
    report["model"] = {**info, "backbone": model.backbone.arch, "scale": model.backbone.scale,
                       "depth": getattr(model.depth, "model_id", None), "fusion": model.fusion_cfg.to_dict()}
    calib = [h for h, _ in holdout(calib_n, (240, 320), seed=100)]
    test = holdout(holdout_n, (240, 320), seed=5000)

    graphs: Dict[str, Dict[str, bytes]] = {}
    scale_1080 = scale_1080 or 2 * model.backbone.scale  # 1080p has 2.25x the lines of 480p
    variants = {"640x480": model, "1920x1080": internal_scale(model, scale_1080) if scale_1080 != model.backbone.scale else model}
    for key, m in variants.items():
        log(f"exporting {key} graphs (plain FP32, fused FP32, fused INT8)")
        ex = torch.randint(0, 256, (1, 96, 128, 3), dtype=torch.uint8)
        plain = O.export_module(G.FullGraph(G.FloatModel(m)).eval(), (ex,), ["image"], ["dehazed"], True)
        core32 = export_core(m)
        core8 = quantize_core(core32, calib)
        graphs[key] = {"plain_fp32": plain.SerializeToString(),
                       "fused_fp32": fused_graph(core32).SerializeToString(),
                       "fused_int8": fused_graph(core8).SerializeToString(),
                       "core_fp32": core32.SerializeToString(), "core_int8": core8.SerializeToString()}

    # accuracy: INT8 vs FP32 on held-out images (640x480 graphs; the network is size-agnostic)
    s32, s8 = ort_session(graphs["640x480"]["fused_fp32"], threads), ort_session(graphs["640x480"]["fused_int8"], threads)
    p32, p8 = psnr_of(s32, test), psnr_of(s8, test)
    report["accuracy"] = {"psnr_fp32": round(p32, 3), "psnr_int8": round(p8, 3), "psnr_drop": round(p32 - p8, 3),
                          "holdout_images": len(test), "calibration_images": len(calib), "trained": info["trained"]}

    # latency, interleaved per size
    report["latency"] = {}
    for key, size in SIZES.items():
        m = variants[key]
        macs = model_macs(m, size)
        log(f"timing {key}: ORT plain FP32, fused FP32/INT8, network alone FP32/INT8 (interleaved, {rounds} rounds), "
            "then torch eager")
        x = torch.rand(1, 3, *size)

        def eager(m=m, x=x):  # type: ignore[no-untyped-def]
            with torch.no_grad():
                return m(x)

        sessions = {k: ort_session(v, threads) for k, v in graphs[key].items()}
        cases = {f"ort_{k}": (core_runner(s, size, prepool_factor(m)) if k.startswith("core") else ort_runner(s, size))
                 for k, s in sessions.items()}
        t = interleaved(cases, rounds=rounds)
        # eager apart: torch's OpenMP workers spin after each call and would slow whichever ORT case came next
        t["eager_fp32"] = interleaved({"eager_fp32": eager}, rounds=max(3, rounds // 2))["eager_fp32"]
        rows = {}
        for k, v in t.items():
            ms = v["median_ms"]
            rows[k] = {**v, "fps": round(1000.0 / ms, 2), "gmacs_effective": round(macs / (ms * 1e-3) / 1e9, 2),
                       "ceiling_fraction": round(L.ceiling_fraction(macs, ms, ceiling) or 0.0, 3)}
        report["latency"][key] = {"macs": macs, "internal_scale": m.backbone.scale, "cases": rows}
        if profile:
            from edgehaze.profiling import profile_onnx

            report.setdefault("profile", {})[key] = {
                k: profile_onnx(graphs[key][k], size, runs=5 if quick else 10, threads=threads)
                for k in ("plain_fp32", "fused_fp32", "fused_int8")}

    # what pays: INT8 op sets (640x480), timed interleaved
    log("INT8 op sets (640x480)")
    core = export_core(model)
    opsets = {"Conv": ["Conv"], "Conv+Relu+Add": ["Conv", "Relu", "Add"],
              "Conv+Relu+Add+Mul+Resize+Sigmoid+ReduceMean+Sub": ["Conv", "Relu", "Add", "Mul", "Resize", "Sigmoid",
                                                                  "ReduceMean", "Sub"]}
    og = {k: fused_graph(quantize_core(core, calib, ops)).SerializeToString() for k, ops in opsets.items()}
    og["fp32"] = graphs["640x480"]["fused_fp32"]
    t = interleaved({k: ort_runner(ort_session(v, threads), (480, 640)) for k, v in og.items()}, rounds=rounds)
    report["int8_opsets"] = {k: {**t[k], "psnr_drop": (None if k == "fp32" else round(p32 - psnr_of(ort_session(v, threads), test), 3))}
                             for k, v in og.items()}

    report["stream"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for key, size in SIZES.items():
            art = write_artifact_bytes(graphs[key]["fused_int8"], tmp, f"student-{key}", "int8", model)
            video = write_video(tmp / f"clip-{key}.avi", size, stream_frames)
            log(f"runtime/stream.py on a {key} video ({stream_frames} frames)")
            report["stream"][key] = run_stream(art, video, threads)
        (out_dir / "artifacts").mkdir(exist_ok=True)
        for key in SIZES:  # keep the shipped-form graphs for inspection / edgehaze bench --onnx
            for k in ("fused_fp32", "fused_int8"):
                (out_dir / "artifacts" / f"student-{key}-{k}.onnx").write_bytes(graphs[key][k])

    if teacher:
        log("teacher (DAv2-L architecture, random weights) vs student at 640x480, same process")
        tm = teacher_model()
        x = torch.rand(1, 3, 480, 640)

        def teach():  # type: ignore[no-untyped-def]
            with torch.no_grad():
                return tm(x)

        stud = ort_runner(ort_session(graphs["640x480"]["fused_int8"], threads), (480, 640))
        t = interleaved({"teacher_eager": teach, "student_ort_int8": stud}, rounds=2 if quick else 3, warmup=1)
        report["teacher"] = {**t, "speedup": round(t["teacher_eager"]["median_ms"] / t["student_ort_int8"]["median_ms"], 1)}
        del tm

    report["load_end"] = list(os.getloadavg())
    report["targets"] = targets(report)
    return report


def write_artifact_bytes(onnx_bytes: bytes, folder: Path, name: str, precision: str, model) -> Path:  # type: ignore[no-untyped-def]
    import onnx

    return write_artifact(onnx.load_from_string(onnx_bytes), folder, name, precision, model.build_args())


def targets(r: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Each target of the brief with the measured figure and pass/short."""
    rows: List[Dict[str, Any]] = []

    def add(name: str, value: Any, goal: str, ok: Optional[bool]) -> None:
        rows.append({"target": name, "measured": value, "goal": goal,
                     "status": "n/a" if ok is None else ("pass" if ok else "short")})

    for key, lo, aim in (("640x480", 30, 60), ("1920x1080", 25, None)):
        s = r["stream"].get(key, {})
        fps = s.get("fps")
        add(f"stream FPS {key} (INT8, end to end)", fps, f">= {lo}" + (f" (aim {aim})" if aim else ""),
            None if fps is None else fps >= lo)
        ov = s.get("overhead_pct")
        add(f"stream overhead {key} (pre+post+write share)", ov, "<= 15%", None if ov is None else ov <= 15)
    for key in SIZES:
        c = r["latency"][key]["cases"]
        ratio = c["ort_fused_int8"]["median_ms"] / c["ort_fused_fp32"]["median_ms"]
        add(f"INT8 / FP32 latency {key} (whole graph)", round(ratio, 3), "<= 0.5", ratio <= 0.5)
        if "ort_core_int8" in c:
            ratio = c["ort_core_int8"]["median_ms"] / c["ort_core_fp32"]["median_ms"]
            add(f"INT8 / FP32 latency {key} (the network alone)", round(ratio, 3), "<= 0.5", ratio <= 0.5)
    a = r["accuracy"]
    add("INT8 PSNR loss (hold-out)", a["psnr_drop"], "<= 0.1 dB", a["psnr_drop"] <= 0.1)
    c = r["latency"]["640x480"]["cases"]
    if "ort_core_int8" in c:
        frac = c["ort_core_int8"]["ceiling_fraction"]
        add("student INT8 network share of the INT8 conv ceiling (640x480)", frac, ">= 0.6", frac >= 0.6)
    frac = c["ort_fused_int8"]["ceiling_fraction"]
    add("student INT8 whole graph share of the INT8 conv ceiling (640x480)", frac, ">= 0.6", frac >= 0.6)
    if "teacher" in r:
        sp = r["teacher"]["speedup"]
        add("teacher / student end to end (640x480)", sp, ">= 300x", sp >= 300)
    return rows


def markdown(r: Dict[str, Any]) -> str:
    lim = r["limits"]
    lines = ["# Speed report: edge student pipeline", "",
             f"Load average at start {r['load_start'][0]:.2f}, at end {r['load_end'][0]:.2f} (2-core machine; "
             f"figures under load are lower bounds). ONNX Runtime CPU, {r['threads']} intra-op threads, "
             "1 inter-op thread, sequential execution, graph optimisation ALL.", "",
             f"Model: {r['model']['backbone']} (scale {r['model']['scale']}) + {r['model']['depth']}, fusion "
             f"{r['model']['fusion'].get('style', 'paper')}; trained: {r['model']['trained']}", "",
             "## Targets", "", "| target | measured | goal | status |", "|---|---|---|---|"]
    for t in r["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {t['goal']} | {t['status']} |")
    lines += ["", "## Ceilings (this run)", "",
              f"INT8 3x3 conv {lim['conv_int8_gmacs']} GMAC/s, FP32 3x3 conv {lim['conv_fp32_gmacs']} GMAC/s "
              f"({lim['conv']['width']}->{lim['conv']['width']} ch at {lim['conv']['size'][1]}x{lim['conv']['size'][0]}), "
              f"FP32 GEMM {lim['gemm_fp32_gflops']} GFLOP/s, copy bandwidth {lim['membw_gbs']} GB/s.", "",
              "## Latency (interleaved, median)", ""]
    for key, v in r["latency"].items():
        lines += [f"### {key} (internal scale {v['internal_scale']}, {v['macs'] / 1e9:.2f} GMAC)", "",
                  "| engine | median ms | FPS | eff. GMAC/s | share of INT8 conv ceiling |", "|---|---:|---:|---:|---:|"]
        for k, c in v["cases"].items():
            lines.append(f"| {k} | {c['median_ms']:.2f} | {c['fps']:.1f} | {c['gmacs_effective']:.1f} | {c['ceiling_fraction']:.2f} |")
        lines.append("")
    a = r["accuracy"]
    lines += ["## INT8 accuracy (hold-out, never calibrated on)", "",
              f"PSNR FP32 {a['psnr_fp32']} dB, INT8 {a['psnr_int8']} dB, drop {a['psnr_drop']} dB on "
              f"{a['holdout_images']} images ({a['calibration_images']} calibration images).", "",
              "## Stream (runtime/stream.py, video file in, null sink)", "",
              "| size | FPS | frame ms | pre | infer | post | write | capture (thread) | overhead % |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, s in r["stream"].items():
        if "error" in s:
            lines.append(f"| {key} | error: {s['error']} |")
            continue
        st = s["stages_median_ms"]
        lines.append(f"| {key} | {s['fps']:.1f} | {s['frame_ms']:.2f} | {st['pre']:.2f} | {st['infer']:.2f} | "
                     f"{st['post']:.2f} | {st['write']:.2f} | {st['capture']:.2f} | {s['overhead_pct']} |")
    if "int8_opsets" in r:
        lines += ["", "## Quantise what pays (640x480, interleaved)", "", "| quantised op types | median ms | PSNR drop dB |",
                  "|---|---:|---:|"]
        for k, v in r["int8_opsets"].items():
            lines.append(f"| {k} | {v['median_ms']:.2f} | {v['psnr_drop']} |")
    if "teacher" in r:
        t = r["teacher"]
        lines += ["", "## Teacher vs student (640x480, same process)", "",
                  f"Teacher (DAv2-L architecture + edge-s, paper fusion, torch eager, random weights) "
                  f"{t['teacher_eager']['median_ms']:.0f} ms; student (fused INT8, ORT) "
                  f"{t['student_ort_int8']['median_ms']:.2f} ms: {t['speedup']}x."]
    if "profile" in r:
        from edgehaze.profiling import format_profile

        lines += ["", "## ORT profiles", ""]
        for key, profs in r["profile"].items():
            for k, p in profs.items():
                lines.append(format_profile(p, f"{k} {key}"))
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="a trained dehazer (.safetensors); default: untrained edge-s")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--teacher", action="store_true", help="also time the DAv2-L teacher (slow)")
    p.add_argument("--profile", action="store_true", help="ORT per-node profiles of the plain and fused graphs")
    p.add_argument("--scale-1080", type=int, default=None, help="internal scale for 1080p frames (default 2x the model's)")
    p.add_argument("--frames", type=int, default=120, help="frames per stream run")
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    from edgehaze.fsutil import atomic_write_text

    r = build_report(a.checkpoint, a.threads, a.rounds, a.teacher, a.profile, a.frames, a.scale_1080,
                     out_dir=a.out, quick=a.quick)
    out = Path(a.out)
    atomic_write_text(out / "report.json", json.dumps(r, indent=2, default=float))
    atomic_write_text(out / "report.md", markdown(r))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
