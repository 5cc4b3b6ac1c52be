"""The runtime on a GPU, each path compared with the CPU output (run by gpu_check.sh; issue 17 item 7).

Sections, each reported even when another fails, skipped with a message
when what it needs is absent:

1. ``cuda``      ONNX Runtime's CUDA provider (full graph and depth_every=2)
2. ``trt_ep``    ONNX Runtime's TensorRT provider (profiles, caches; the two-graph mode
                 exercises the fuse graph's depth-feature profiles)
3. ``engine``    ``runtime/build_engine.py`` fp32 and fp16 engines run by the runtime; the
                 folder picks the engine; a mismatched engine block and depth_every=2 are refused
4. ``checker``   the export checker's verdict (``edgehaze export --check trt --onnx`` /
                 ``edgehaze.export.trt_check`` when present) next to TensorRT's own parser

Every comparison is against ``provider=cpu`` on the same frames (a tiny
contract artifact from tests/_artifacts.py, built here with torch on the
CPU): max and mean absolute difference in uint8 levels, node placement,
median ms per frame. Results: stdout and ``$OUT/runtime_gpu_check.json``.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
import runtime  # noqa: E402
from runtime import RuntimeError_, Status  # noqa: E402

RESULTS: dict = {}
WORK = Path(tempfile.mkdtemp(prefix="eh-rt-gpu-"))
LIMITS = {"fp32": 1, "fp16": 4}  # max |difference| in uint8 levels vs the CPU (rounding ties; fp16 arithmetic)


def section(name):
    def deco(fn):
        t0 = time.time()
        try:
            RESULTS[name] = fn()
        except Exception as exc:  # report and carry on
            traceback.print_exc()
            RESULTS[name] = {"error": f"{exc.__class__.__name__}: {exc}"}
        RESULTS[name + "_wall_s"] = round(time.time() - t0, 1)
        print(f"== {name}: {json.dumps(RESULTS[name])}", flush=True)
        return fn
    return deco


def frames() -> list:
    rng = np.random.default_rng(0)
    sizes = [(240, 320)] * 4 + [(480, 640)] * 2   # a size change re-binds the buffers
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def run_all(path, options: dict) -> tuple:
    """(outputs, median ms, backend name, node placement) of the runtime on frames()."""
    outs, times = [], []
    with runtime.Dehazer(path, options) as d:
        for f in frames():
            t = time.perf_counter()
            outs.append(d.run(f).copy())
            times.append((time.perf_counter() - t) * 1e3)
        return outs, round(statistics.median(times[1:]), 3), d.backend_name, d.node_providers


def compare(got: list, ref: list, limit: int) -> dict:
    diffs = [np.abs(a.astype(np.int16) - b.astype(np.int16)) for a, b in zip(got, ref)]
    worst = int(max(d.max() for d in diffs))
    return {"max_abs": worst, "mean_abs": round(float(np.mean([d.mean() for d in diffs])), 4),
            "pixels_differ": round(float(np.mean([(d > 0).mean() for d in diffs])), 5),
            "pass": worst <= limit}


ART: dict = {}
REF: dict = {}


@section("setup")
def _setup():
    from _artifacts import make_artifact

    ART["onnx"] = make_artifact(WORK / "art", two_graph=True)
    REF["full"] = run_all(ART["onnx"], {"provider": "cpu"})[0]
    REF["two"] = run_all(ART["onnx"], {"provider": "cpu", "depth_every": 2})[0]
    import onnxruntime as ort

    out = {"onnxruntime": ort.__version__, "providers": runtime.available_providers()}
    try:
        import tensorrt as trt
        out["tensorrt"] = trt.__version__
    except ImportError:
        out["tensorrt"] = None
    try:
        from runtime.engines import cuda_device
        cc, name = cuda_device(0)
        out["gpu"], out["compute_capability"] = name, f"{cc[0]}.{cc[1]}"
    except RuntimeError_ as exc:
        out["gpu"] = f"none ({exc.message})"
    return out


def provider_section(provider: str, full_name: str) -> dict:
    if full_name not in runtime.available_providers():
        return {"skipped": f"{full_name} is not available in this onnxruntime "
                           f"({runtime.available_providers()}); install onnxruntime-gpu"}
    out = {}
    extra = {"trt_cache_dir": str(WORK / "trt_cache")} if provider == "trt" else {}
    for mode, opts, ref in (("full", {}, REF["full"]), ("depth_every_2", {"depth_every": 2}, REF["two"])):
        got, ms, name, placement = run_all(ART["onnx"], {"provider": provider, **opts, **extra})
        out[mode] = {"backend": name, "placement": placement, "ms_median": ms, **compare(got, ref, LIMITS["fp32"])}
    return out


@section("cuda")
def _cuda():
    return provider_section("cuda", "CUDAExecutionProvider")


@section("trt_ep")
def _trt_ep():
    return provider_section("trt", "TensorrtExecutionProvider")


def build(precision: str) -> Path:
    cmd = [sys.executable, str(ROOT / "runtime" / "build_engine.py"), str(ART["onnx"]), "--precision", precision,
           "--max", "1x480x640x3", "--workspace-mib", "512"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    if r.returncode != 0:
        raise RuntimeError(f"build_engine.py {precision} failed: {r.stderr.strip()[-600:]}")
    return Path(r.stdout.strip().splitlines()[-1])


@section("engine")
def _engine():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return {"skipped": "the tensorrt Python package is not installed here (no engine can be built)"}
    out = {}
    for precision in ("fp32", "fp16"):
        t0 = time.time()
        engine = build(precision)
        got, ms, name, _ = run_all(engine, {})
        out[precision] = {"engine": engine.name, "build_s": round(time.time() - t0, 1), "backend": name,
                          "ms_median": ms, **compare(got, REF["full"], LIMITS[precision])}
    with runtime.Dehazer(ART["onnx"].parent) as d:  # the folder: auto takes an engine built here
        out["folder_picks"] = f"{d.artifact.model_path.name} on {d.backend_name}"
    sidecar = ART["onnx"].with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    fake = WORK / "mismatch"
    fake.mkdir()
    for f in ART["onnx"].parent.iterdir():
        if f.is_file():
            shutil.copy(f, fake / f.name)
    name = out["fp16"]["engine"]
    meta["engines"][name]["tensorrt"] = "0.0.1"
    (fake / sidecar.name).write_text(json.dumps(meta))
    for label, path, opts, code in (("mismatched_block", fake / name, {}, Status.BAD_ARTIFACT),
                                    ("depth_every_2", ART["onnx"].parent / name, {"depth_every": 2}, Status.BAD_ARGUMENT)):
        try:
            runtime.create(path, opts).close()
            out[label] = "NOT refused"
        except RuntimeError_ as exc:
            out[label] = f"refused {exc.code.name}" + ("" if exc.code == code else f" (expected {code.name})")
    return out


def parser_verdict(path: Path) -> dict:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if hasattr(
        trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(path))
    return {"parses": bool(ok), "errors": [str(parser.get_error(i)) for i in range(parser.num_errors)][:5]}


@section("checker")
def _checker():
    try:
        from edgehaze.export import trt_check
    except ImportError as exc:
        return {"skipped": f"the export checker is not in this tree ({exc})"}
    out = {}
    cli = subprocess.run([sys.executable, "-m", "edgehaze", "export", "--help"], capture_output=True, text=True,
                         timeout=120)
    if "--check" in cli.stdout:
        r = subprocess.run([sys.executable, "-m", "edgehaze", "export", "--check", "trt", "--onnx", str(ART["onnx"])],
                           capture_output=True, text=True, timeout=120)
        out["cli"] = {"rc": r.returncode, "tail": (r.stdout + r.stderr).strip().splitlines()[-6:]}
    else:
        out["cli"] = "edgehaze export has no --check here; checked through edgehaze.export.trt_check"
    try:
        import tensorrt as trt
        family = "10" if trt.__version__.startswith("10") else "8.6"
    except ImportError:
        trt, family = None, None
    for report in trt_check.check_artifact(ART["onnx"].with_suffix(".json")):
        row = {"checker": {r: report.ok(r) for r in report.releases}, "rules": report.rules()}
        if trt is not None:
            row["tensorrt_parser"] = parser_verdict(Path(report.graph) if Path(report.graph).is_file()
                                                    else ART["onnx"].parent / Path(report.graph).name)
            mine = [r for r in report.releases if r.startswith(family)]
            row["agree"] = bool(mine) and report.ok(mine[0]) == row["tensorrt_parser"]["parses"]
        out[Path(report.graph).name] = row
    if trt is None:
        out["tensorrt_parser"] = "skipped: tensorrt is not installed (the checker's verdict is unconfirmed)"
    return out


if __name__ == "__main__":
    try:
        print(json.dumps(RESULTS, indent=2))
        target = Path(os.environ.get("OUT", "/tmp")) / "runtime_gpu_check.json"
        target.write_text(json.dumps(RESULTS, indent=2))
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
