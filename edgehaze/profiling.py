"""Where the time goes: ONNX Runtime's per-node profile, summarised.

Optimising without a profile guesses. ORT can record every kernel it runs
(``SessionOptions.enable_profiling``) into a Chrome-trace JSON; this module
runs a graph a few times with profiling on and folds that trace into what a
person optimising the edge pipeline asks:

* the top nodes by time (name, op type, output shape, mean us per run);
* time per op type (Conv vs QLinearConv vs Resize vs Mul ...);
* time in ``QuantizeLinear``/``DequantizeLinear`` nodes (the cost of the
  float<->int8 boundaries INT8 adds);
* time at *full resolution* (a node whose output has the frame's H and W,
  possibly padded to whole cells, as two of its dimensions: the apply step,
  the uint8 conversions) vs *low
  resolution* (everything else: the network proper).

``summarise_profile(path, frame_hw)`` works on any saved ORT profile;
``profile_onnx(model, frame_hw)`` produces one and summarises it.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")


def _shape_of(args: Dict[str, Any]) -> List[int]:
    """First output's shape from an ORT node event's ``output_type_shape``."""
    shapes = args.get("output_type_shape") or []
    for entry in shapes:
        if isinstance(entry, dict):
            for dims in entry.values():
                return [int(d) for d in dims]
    return []


#: a graph may pad the frame to whole cells of its internal scale; padded sides count as full resolution
MAX_PAD = 64


def _near(d: int, size: int) -> bool:
    return size <= d < size + MAX_PAD


def is_full_resolution(shape: Sequence[int], frame_hw: Tuple[int, int]) -> bool:
    """True when the frame's H and W (or both padded by less than ``MAX_PAD``) appear in order among the dims.

    A pair of adjacent dims counts as one when its product matches (``cells x
    scale``: the fused graph's upsampling writes 1 x 3 x h x s x W).
    """
    h, w = frame_hw
    dims = list(shape)
    spans = [(i, i, d) for i, d in enumerate(dims)] + [(i, i + 1, dims[i] * dims[i + 1]) for i in range(len(dims) - 1)]
    return any(_near(a, h) and any(_near(b, w) for j0, _, b in spans if j0 > end) for _, end, a in spans)


def summarise_profile(path: "str | Path", frame_hw: Tuple[int, int], runs: Optional[int] = None,
                      top: int = 15) -> Dict[str, Any]:
    """Fold an ORT profile JSON into per-node / per-op / QDQ / resolution totals.

    ``runs``: how many inferences the profile holds (to report per-run
    figures); by default the count of ``model_run`` events.
    """
    events = json.loads(Path(path).read_text())
    per_node: Dict[str, Dict[str, Any]] = {}
    model_runs = []
    for ev in events:
        if ev.get("cat") == "Session" and ev.get("name") == "model_run":
            model_runs.append(float(ev.get("dur", 0)))
        if ev.get("cat") != "Node" or not str(ev.get("name", "")).endswith("_kernel_time"):
            continue
        args = ev.get("args", {})
        name = ev["name"][: -len("_kernel_time")]
        rec = per_node.setdefault(name, {"name": name, "op": args.get("op_name", "?"), "shape": _shape_of(args),
                                         "total_us": 0.0, "calls": 0})
        rec["total_us"] += float(ev.get("dur", 0))
        rec["calls"] += 1
    n_runs = runs or len(model_runs) or max((r["calls"] for r in per_node.values()), default=1)
    n_runs = max(1, n_runs)
    nodes = sorted(per_node.values(), key=lambda r: -r["total_us"])
    for r in nodes:
        r["us_per_run"] = round(r["total_us"] / n_runs, 1)
        r["full_res"] = is_full_resolution(r["shape"], frame_hw)
    total = sum(r["total_us"] for r in nodes) / n_runs
    by_op: Dict[str, float] = defaultdict(float)
    for r in nodes:
        by_op[r["op"]] += r["total_us"] / n_runs
    qdq = sum(v for k, v in by_op.items() if k in QDQ_OPS)
    full = sum(r["total_us"] for r in nodes if r["full_res"]) / n_runs
    run_us = float(np.median(model_runs)) if model_runs else None

    def pct(v: float) -> float:
        return round(100.0 * v / total, 1) if total > 0 else 0.0

    return {
        "frame_hw": list(frame_hw),
        "runs": n_runs,
        "nodes": len(nodes),
        "kernel_us_per_run": round(total, 1),
        "model_run_us_median": round(run_us, 1) if run_us is not None else None,
        "top_nodes": [{k: r[k] for k in ("name", "op", "shape", "us_per_run", "full_res")} | {"pct": pct(r["total_us"] / n_runs)}
                      for r in nodes[:top]],
        "by_op": [{"op": k, "us_per_run": round(v, 1), "pct": pct(v)} for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])],
        "qdq_us_per_run": round(qdq, 1),
        "qdq_pct": pct(qdq),
        "full_res_us_per_run": round(full, 1),
        "full_res_pct": pct(full),
        "low_res_us_per_run": round(total - full, 1),
        "low_res_pct": pct(total - full),
    }


def profile_onnx(model: "str | Path | bytes", frame_hw: Tuple[int, int], runs: int = 10, warmup: int = 3,
                 threads: int = 2, top: int = 15, keep_trace: Optional["str | Path"] = None) -> Dict[str, Any]:
    """Run an artifact graph (uint8 ``image`` NHWC input) ``runs`` times with ORT profiling; summarise.

    Warm-up runs happen in a separate, unprofiled session so the profile
    holds steady-state kernels only. ``keep_trace`` copies the raw trace
    there (open it in chrome://tracing or Perfetto).
    """
    import onnxruntime as ort

    src = model if isinstance(model, bytes) else str(model)
    h, w = frame_hw
    img = np.random.default_rng(0).integers(0, 256, size=(1, h, w, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "ort_profile")
        sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        feeds = {}
        for inp in sess.get_inputs():
            if inp.name == "image":
                feeds[inp.name] = img
            else:  # two-graph fuse inputs: zeros of a shape derived from the frame
                raise ValueError(f"profile_onnx runs single-input graphs; {inp.name} needs a value")
        for _ in range(warmup):
            sess.run(None, feeds)
        # ORT profiles from session start: drop the warm-up by counting from the end
        for _ in range(runs):
            sess.run(None, feeds)
        trace = sess.end_profiling()
        events = json.loads(Path(trace).read_text())
        run_events = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
        if len(run_events) > runs:  # keep the last ``runs`` inferences only
            start = run_events[-runs]["ts"]
            events = [e for e in events if e.get("cat") != "Node" or e.get("ts", 0) >= start]
            events = [e for e in events if not (e.get("cat") == "Session" and e.get("name") == "model_run"
                                                and e.get("ts", 0) < start)]
        trimmed = Path(tmp) / "trimmed.json"
        trimmed.write_text(json.dumps(events))
        if keep_trace is not None:
            Path(keep_trace).parent.mkdir(parents=True, exist_ok=True)
            Path(keep_trace).write_text(json.dumps(events))
        return summarise_profile(trimmed, frame_hw, runs=runs, top=top)


def format_profile(summary: Dict[str, Any], title: str = "") -> str:
    """Markdown: headline split, top nodes, op types."""
    s = summary
    lines = [f"### ORT profile {title} ({s['frame_hw'][0]}x{s['frame_hw'][1]}, {s['runs']} runs)".rstrip(), ""]
    lines.append(f"kernel time {s['kernel_us_per_run'] / 1000:.2f} ms/run; full resolution {s['full_res_pct']}%, "
                 f"low resolution {s['low_res_pct']}%, Quantize/DequantizeLinear {s['qdq_pct']}%")
    lines += ["", "| node | op | output shape | us/run | % | full-res |", "|---|---|---|---:|---:|---|"]
    for r in s["top_nodes"]:
        lines.append(f"| {r['name'][-48:]} | {r['op']} | {'x'.join(map(str, r['shape']))} | {r['us_per_run']:.0f} | "
                     f"{r['pct']} | {'yes' if r['full_res'] else ''} |")
    lines += ["", "| op type | us/run | % |", "|---|---:|---:|"]
    for r in s["by_op"][:12]:
        lines.append(f"| {r['op']} | {r['us_per_run']:.0f} | {r['pct']} |")
    return "\n".join(lines) + "\n"


__all__ = ["summarise_profile", "profile_onnx", "format_profile", "is_full_resolution", "QDQ_OPS"]
