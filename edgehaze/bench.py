"""Latency benchmarks: torch eager vs ONNX Runtime FP32 / INT8 (vs TensorRT).

What a user choosing a model and an engine for a device needs: median and
90th-percentile latency of one frame, and the FPS the median gives, per
model, engine and frame size, measured the way the model will run:

* torch models run eagerly under ``torch.no_grad()`` on ``float32 1x3xHxW``
  tensors (:func:`bench_torch`);
* exported artifacts run through the shipped runtime (``runtime.create`` /
  ``runtime.run`` with preallocated uint8 buffers, :func:`bench_onnx`), so the
  number includes exactly what a deployment pays (uint8 in, uint8 out, the
  normalisation inside the graph);
* TensorRT (ORT's TensorRT provider, or a ``.engine`` file) is tried only
  when present; otherwise the case is listed as skipped with the reason.

The measurement core (:func:`time_callable`) is shared; a case is a
:class:`BenchCase` (a name, a role, an engine and a way to build a
zero-argument callable for a size), so later additions (per-node ORT
profiling, a Pareto sweep over models) add case builders or post-processing
without touching the timing loop.
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgehaze.errors import EdgehazeError

Size = Tuple[int, int]  # (height, width)


# ---------------------------------------------------------------- timing core
def time_callable(fn: Callable[[], Any], warmup: int = 5, runs: int = 30) -> Dict[str, float]:
    """Time ``fn()``: ``warmup`` untimed calls, then ``runs`` timed ones.

    Returns ``median_ms``, ``p90_ms`` (nearest-rank 90th percentile),
    ``mean_ms``, ``min_ms``, ``max_ms``, ``fps`` (1000 / median) and ``runs``.
    """
    if runs < 1:
        raise EdgehazeError(f"--runs must be >= 1, got {runs}")
    for _ in range(max(0, int(warmup))):
        fn()
    times: List[float] = []
    for _ in range(int(runs)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, max(0, math.ceil(0.9 * len(ordered)) - 1))]
    median = statistics.median(ordered)
    return {
        "median_ms": median,
        "p90_ms": p90,
        "mean_ms": statistics.fmean(ordered),
        "min_ms": ordered[0],
        "max_ms": ordered[-1],
        "fps": 1000.0 / median if median > 0 else float("inf"),
        "runs": len(ordered),
        "warmup": int(warmup),
    }


def parse_size(text: str) -> Size:
    """``"480x640"`` -> ``(480, 640)``: height x width (as ``--sizes`` takes them)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise EdgehazeError(f"--sizes {text!r}: write HEIGHTxWIDTH, e.g. 480x640") from None
    if h < 8 or w < 8:
        raise EdgehazeError(f"--sizes {text!r}: both sides must be >= 8")
    return h, w


# ---------------------------------------------------------------- engines
def bench_torch(model: Any, size: Size, warmup: int = 5, runs: int = 30, threads: Optional[int] = None,
                seed: int = 0) -> Dict[str, Any]:
    """Torch eager latency of ``model(x)`` for one ``1 x 3 x H x W`` float frame on the CPU."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    model = model.to("cpu").eval()
    x = torch.rand(1, 3, int(size[0]), int(size[1]), generator=torch.Generator().manual_seed(seed))

    def call() -> None:
        with torch.no_grad():
            model(x)

    stats = time_callable(call, warmup, runs)
    stats.update(engine="torch-eager", device="cpu", threads=torch.get_num_threads(), size=[int(size[0]), int(size[1])])
    return stats


def _runtime() -> Any:
    import edgehaze.runtime as runtime  # the shipped, torch-free runtime

    return runtime


def bench_onnx(path: "str | Path", size: Size, threads: int = 2, warmup: int = 5, runs: int = 30,
               provider: str = "cpu", depth_every: int = 1, seed: int = 0) -> Dict[str, Any]:
    """Latency of an exported artifact through ``runtime.create`` / ``runtime.run``.

    Frames are random uint8 ``H x W x 3`` in the artifact's channel order,
    written into one preallocated output buffer (the runtime's steady state).
    """
    runtime = _runtime()
    try:
        handle = runtime.create(str(path), {"provider": provider, "threads": int(threads), "depth_every": int(depth_every)})
    except runtime.RuntimeError_ as exc:
        raise EdgehazeError(f"{path}: cannot open the artifact ({exc})") from None
    try:
        h, w = int(size[0]), int(size[1])
        frame = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
        out = np.empty_like(frame)
        try:
            runtime.run(handle, frame, out)
        except runtime.RuntimeError_ as exc:
            raise EdgehazeError(f"{path}: cannot run at {h}x{w} ({exc})") from None
        stats = time_callable(lambda: runtime.run(handle, frame, out), warmup, runs)
        meta = handle.meta
        stats.update(
            engine=f"onnxruntime-{str(meta.get('precision', '?'))}" if not str(path).endswith(".engine") else "tensorrt",
            backend=handle.backend_name,
            precision=meta.get("precision"),
            threads=int(threads),
            depth_every=int(depth_every),
            size=[h, w],
        )
        return stats
    finally:
        runtime.close(handle)


def tensorrt_available() -> Tuple[bool, str]:
    """(usable, why not): ORT's TensorRT provider here, checked without importing tensorrt."""
    try:
        providers = _runtime().available_providers()
    except Exception as exc:  # pragma: no cover - a broken onnxruntime install
        return False, f"onnxruntime unusable ({exc})"
    if "TensorrtExecutionProvider" in providers:
        return True, ""
    return False, "onnxruntime has no TensorrtExecutionProvider here; it needs a GPU build with TensorRT"


# ---------------------------------------------------------------- cases
@dataclass
class BenchCase:
    """One model on one engine. ``make(size)`` returns the stats dict for a frame size."""

    name: str
    role: str  # rgb-only | teacher | student | model
    engine: str  # torch-eager | onnxruntime-fp32 | onnxruntime-int8 | tensorrt
    make: Callable[[Size], Dict[str, Any]]
    info: Dict[str, Any] = field(default_factory=dict)


def role_of_depth(depth: Optional[str]) -> str:
    """``rgb-only`` (no depth branch), ``student`` (a distilled encoder) or ``teacher``."""
    if not depth:
        return "rgb-only"
    if str(depth).startswith("student"):
        return "student"
    return "teacher"


def _params_flops(model: Any, size: Size) -> Dict[str, Any]:
    import torch

    from edgehaze.metrics.cost import count_flops, count_params

    x = torch.rand(1, 3, int(size[0]), int(size[1]))
    return {"params": count_params(model), "flops": count_flops(model, x)}


def _label(path: "str | Path") -> str:
    """A file's name, with its folder when the name alone says nothing (``fused/last.safetensors``)."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.stem in ("last", "best", "model") else p.name


def checkpoint_case(path: "str | Path", warmup: int, runs: int, threads: int,
                    depth_weights: Optional[str] = None, cost: bool = False) -> BenchCase:
    """A dehazer checkpoint, torch eager."""
    from edgehaze.checkpoint import load_dehazer

    model, meta = load_dehazer(path, depth_weights=depth_weights)
    model.eval()
    build = meta.get("build", {})

    def make(size: Size) -> Dict[str, Any]:
        stats = bench_torch(model, size, warmup, runs, threads)
        if cost:
            stats.update(_params_flops(model, size))
        return stats

    return BenchCase(_label(path), role_of_depth(build.get("depth")), "torch-eager", make,
                     {"path": str(path), "backbone": build.get("backbone"), "depth": build.get("depth")})


def teacher_case(teacher: str, backbone: str, warmup: int, runs: int, threads: int,
                 depth_weights: Optional[str] = None, depth_kwargs: Optional[Dict[str, Any]] = None) -> BenchCase:
    """``backbone`` fused with depth teacher ``teacher`` (random fusion weights: latency does not depend on them)."""
    from edgehaze.models.dehazer import build_dehazer

    model = build_dehazer(backbone, depth=teacher, depth_weights=depth_weights, depth_kwargs=depth_kwargs or None).eval()
    return BenchCase(f"{backbone}+{teacher}", "teacher", "torch-eager",
                     lambda size: bench_torch(model, size, warmup, runs, threads),
                     {"backbone": backbone, "depth": teacher, "depth_weights": depth_weights})


def artifact_case(path: "str | Path", warmup: int, runs: int, threads: int, provider: str = "cpu",
                  depth_every: int = 1) -> BenchCase:
    """An exported artifact through the runtime (ONNX Runtime, or a TensorRT ``.engine``)."""
    runtime = _runtime()
    from edgehaze.runtime.artifact import resolve

    try:
        meta = resolve(path).meta
    except runtime.RuntimeError_ as exc:
        raise EdgehazeError(f"{path}: not an edgehaze artifact ({exc}); pass an exported NAME.onnx") from None
    model = meta.get("model") or {}
    precision = meta.get("precision", "?")
    engine = "tensorrt" if str(path).endswith(".engine") or provider == "trt" else f"onnxruntime-{precision}"
    return BenchCase(Path(path).name, role_of_depth(model.get("depth")), engine,
                     lambda size: bench_onnx(path, size, threads, warmup, runs, provider, depth_every),
                     {"path": str(path), "precision": precision, "backbone": model.get("backbone"),
                      "depth": model.get("depth"), "provider": provider})


# ---------------------------------------------------------------- running and reporting
def machine_info(threads: int) -> Dict[str, Any]:
    """Where the numbers were taken (they mean little without it)."""
    info: Dict[str, Any] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                            "cpu_count": os.cpu_count(), "threads": int(threads), "python": platform.python_version()}
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def run_cases(cases: Sequence[BenchCase], sizes: Sequence[Size], progress: bool = True) -> List[Dict[str, Any]]:
    """Every case at every size: one result row each (errors become a row with ``error``)."""
    rows: List[Dict[str, Any]] = []
    jobs = [(c, s) for c in cases for s in sizes]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="bench", unit="case", dynamic_ncols=True)
    for case, size in jobs:
        row: Dict[str, Any] = {"name": case.name, "role": case.role, "engine": case.engine,
                               "size": [int(size[0]), int(size[1])], **{f"info_{k}": v for k, v in case.info.items()}}
        if bar is not None:
            bar.set_postfix_str(f"{case.name} {case.engine} {size[0]}x{size[1]}")
        try:
            row.update(case.make(size))
        except EdgehazeError as exc:
            row["error"] = str(exc)
        rows.append(row)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return rows


def markdown_table(rows: Sequence[Dict[str, Any]], notes: Sequence[str] = ()) -> str:
    """The results as a Markdown table (one line per model, engine and size)."""
    lines = ["| model | role | engine | size (HxW) | median ms | p90 ms | FPS |",
             "|---|---|---|---|---:|---:|---:|"]
    for r in rows:
        size = f"{r['size'][0]}x{r['size'][1]}"
        if "error" in r:
            lines.append(f"| {r['name']} | {r['role']} | {r['engine']} | {size} | - | - | - ({r['error']}) |")
        else:
            lines.append(f"| {r['name']} | {r['role']} | {r['engine']} | {size} | {r['median_ms']:.1f} | "
                         f"{r['p90_ms']:.1f} | {r['fps']:.1f} |")
    for n in notes:
        lines.append(f"\n{n}")
    return "\n".join(lines) + "\n"


def write_json(path: "str | Path", data: Dict[str, Any]) -> Path:
    """Write the bench result atomically."""
    from edgehaze.fsutil import atomic_write

    text = json.dumps(data, indent=2, default=str).encode()
    path = Path(path)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(text))
    return path


def run_bench(
    checkpoints: Sequence["str | Path"] = (),
    onnx: Sequence["str | Path"] = (),
    sizes: Sequence[Size] = ((480, 640),),
    runs: int = 30,
    warmup: int = 5,
    threads: int = 2,
    teacher: "Optional[str | Sequence[str]]" = None,
    teacher_backbone: str = "edge-s",
    depth_weights: Optional[str] = None,
    depth_kwargs: Optional[Dict[str, Any]] = None,
    tensorrt: bool = True,
    progress: bool = True,
) -> Dict[str, Any]:
    """Benchmark models on every engine available; returns ``{"results", "notes", "machine", ...}``.

    ``teacher``: one depth teacher id or several (rows side by side, e.g.
    ``dav2-l`` and ``da3-mono-l``), each fused into ``teacher_backbone``;
    ``depth_weights`` then belongs to a single teacher.
    """
    teachers = [teacher] if isinstance(teacher, str) else list(teacher or [])
    if len(teachers) > 1 and depth_weights is not None:
        raise EdgehazeError(f"--depth-weights names one teacher's weights, but {len(teachers)} teachers were given "
                            f"({', '.join(teachers)}); time them one at a time, or with --random-depth")
    if not checkpoints and not onnx and not teachers:
        raise EdgehazeError("nothing to benchmark: pass --checkpoint CKPT, --onnx MODEL.onnx and/or --teacher NAME")
    for p in list(checkpoints) + list(onnx):
        if not Path(p).exists():
            raise EdgehazeError(f"{p}: no such file")
    cases: List[BenchCase] = []
    notes: List[str] = []
    for p in checkpoints:
        cases.append(checkpoint_case(p, warmup, runs, threads, depth_weights))
    for name in teachers:
        cases.append(teacher_case(name, teacher_backbone, warmup, runs, threads, depth_weights, depth_kwargs))
    trt_ok, trt_why = tensorrt_available() if tensorrt else (False, "not requested")
    for p in onnx:
        if str(p).endswith(".engine"):
            if trt_ok:
                cases.append(artifact_case(p, warmup, runs, threads, provider="auto"))
            else:
                notes.append(f"TensorRT: skipped {Path(p).name}: {trt_why}.")
            continue
        cases.append(artifact_case(p, warmup, runs, threads, provider="cpu"))
        if trt_ok:
            cases.append(artifact_case(p, warmup, runs, threads, provider="trt"))
    if onnx and not trt_ok and tensorrt:
        notes.append(f"TensorRT: skipped: {trt_why}.")
    rows = run_cases(cases, sizes, progress)
    return {
        "results": rows,
        "notes": notes,
        "sizes": [list(s) for s in sizes],
        "runs": int(runs),
        "warmup": int(warmup),
        "threads": int(threads),
        "machine": machine_info(threads),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


__all__ = [
    "BenchCase",
    "artifact_case",
    "bench_onnx",
    "bench_torch",
    "checkpoint_case",
    "machine_info",
    "markdown_table",
    "parse_size",
    "role_of_depth",
    "run_bench",
    "run_cases",
    "teacher_case",
    "tensorrt_available",
    "time_callable",
    "write_json",
]
