"""The runtime on a GPU, each path compared with the CPU output (run by gpu_check.sh; issue 17 item 7).

Sections, each reported even when another fails, skipped with a message
when what it needs is absent:

1. ``cuda``      ONNX Runtime's CUDA provider (full graph and depth_every=2)
2. ``trt_ep``    ONNX Runtime's TensorRT provider (profiles, caches; the two-graph mode
                 exercises the fuse graph's depth-feature profiles; the INT8 graph trt_int8_enable)
3. ``engine``    ``runtime/build_engine.py`` fp32, fp16 and int8 engines run by the runtime; the
                 folder picks the engine; a mismatched engine block and depth_every=2 are refused
4. ``checker``   the export checker's verdict (``edgehaze export --check trt --onnx`` /
                 ``edgehaze.export.trt_check``) next to TensorRT's own parser, on graphs it passes
                 (the trt flavour) and fails (the cpu-flavour contract artifact)

The artifacts are made here with torch on the CPU: ``edgehaze export
--target trt`` of a tiny perturbed edge-xs + student-s checkpoint (FP32
two-graph, and INT8 by PTQ), the flavour TensorRT is meant to take, and the
cpu-flavour contract artifact of tests/_artifacts.py (uint8 layout ops
inside), which the checker fails. Every comparison is against
``provider=cpu`` on the same frames: max and mean absolute difference in
uint8 levels, node placement, median ms per frame. Results: stdout and
``$OUT/runtime_gpu_check.json``.
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
#: max |difference| in uint8 levels vs the CPU: rounding ties; fp16 arithmetic; INT8 kernels that requantise
#: in another order than ONNX Runtime's, with fp16 between them (polygraphy's usual atol for int8 is 4)
LIMITS = {"fp32": 1, "fp16": 4, "int8": 8}


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


def tiny_checkpoint() -> Path:
    """A small edge-xs + student-s dehazer, perturbed so that no zero-initialised path makes it the identity."""
    import torch

    from edgehaze import build_dehazer
    from edgehaze.checkpoint import save_dehazer

    model = build_dehazer("edge-xs", depth="student-s", fusion="lite",
                          depth_kwargs={"widths": [8, 16, 16, 16], "blocks": [1, 1, 1, 1]})
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.03)
    path = WORK / "student.safetensors"
    save_dehazer(path, model.eval())
    return path


def trt_exports() -> None:
    """``ART['trt']``: FP32 two-graph trt flavour; ``ART['trt_int8']``: INT8 (PTQ) trt flavour, full graph."""
    from edgehaze.export import export_checkpoint

    ckpt, quiet = tiny_checkpoint(), dict(log=lambda _m: None, progress=False)
    ART["trt"] = export_checkpoint(ckpt, out=WORK / "trt", two_graph=True, target="trt", **quiet).files["onnx"]
    ART["trt_int8"] = export_checkpoint(ckpt, out=WORK / "trt_int8", target="trt", precision="int8", method="ptq",
                                        calib="procedural", calib_images=8, holdout_images=2, calib_size=(96, 128),
                                        **quiet).files["onnx"]


@section("setup")
def _setup():
    from _artifacts import make_artifact

    ART["helper"] = make_artifact(WORK / "art", two_graph=True)  # cpu flavour: the checker's FAIL case
    trt_exports()
    REF["full"] = run_all(ART["trt"], {"provider": "cpu"})[0]
    REF["two"] = run_all(ART["trt"], {"provider": "cpu", "depth_every": 2})[0]
    REF["int8"] = run_all(ART["trt_int8"], {"provider": "cpu"})[0]
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
    modes = [("full", ART["trt"], {}, REF["full"], "fp32"),
             ("depth_every_2", ART["trt"], {"depth_every": 2}, REF["two"], "fp32"),
             ("int8", ART["trt_int8"], {}, REF["int8"], "int8")]
    for mode, path, opts, ref, limit in modes:
        got, ms, name, placement = run_all(path, {"provider": provider, **opts, **extra})
        out[mode] = {"backend": name, "placement": placement, "ms_median": ms, **compare(got, ref, LIMITS[limit])}
    return out


@section("cuda")
def _cuda():
    return provider_section("cuda", "CUDAExecutionProvider")


@section("trt_ep")
def _trt_ep():
    return provider_section("trt", "TensorrtExecutionProvider")


def build(model: Path, precision: str) -> Path:
    cmd = [sys.executable, str(ROOT / "runtime" / "build_engine.py"), str(model), "--precision", precision,
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
    for precision, model, ref in (("fp32", ART["trt"], REF["full"]), ("fp16", ART["trt"], REF["full"]),
                                  ("int8", ART["trt_int8"], REF["int8"])):
        t0 = time.time()
        try:
            engine = build(model, precision)
        except RuntimeError as exc:  # one failed build is reported; the others still run
            out[precision] = {"error": str(exc)}
            continue
        got, ms, name, _ = run_all(engine, {})
        out[precision] = {"engine": engine.name, "build_s": round(time.time() - t0, 1), "backend": name,
                          "ms_median": ms, **compare(got, ref, LIMITS[precision])}
    if "engine" not in out["fp16"]:
        return out
    folder = ART["trt"].parent
    with runtime.Dehazer(folder) as d:  # the folder: auto takes an engine built here
        out["folder_picks"] = f"{d.artifact.model_path.name} on {d.backend_name}"
    sidecar = ART["trt"].with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    fake = WORK / "mismatch"
    fake.mkdir()
    for f in folder.iterdir():
        if f.is_file():
            shutil.copy(f, fake / f.name)
    name = out["fp16"]["engine"]
    meta["engines"][name]["tensorrt"] = "0.0.1"
    (fake / sidecar.name).write_text(json.dumps(meta))
    for label, path, opts, code in (("mismatched_block", fake / name, {}, Status.BAD_ARTIFACT),
                                    ("depth_every_2", folder / name, {"depth_every": 2}, Status.BAD_ARGUMENT)):
        try:
            runtime.create(path, opts).close()
            out[label] = "NOT refused"
        except RuntimeError_ as exc:
            out[label] = f"refused {exc.code.name}" + ("" if exc.code == code else f" (expected {code.name})")
    return out


def parser_verdict(path: Path, profile: "dict | None", int8: bool) -> dict:
    """TensorRT's own verdict on one graph: does its ONNX parser take it, and does it build with ``profile``.

    The build is the part the checker's uint8 and profile rules predict (TensorRT refuses uint8 inside a
    network and a dynamic input without a profile at build time, not at parse time).
    """
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if hasattr(
        trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(path))
    out = {"parses": bool(ok), "errors": [str(parser.get_error(i)) for i in range(parser.num_errors)][:5]}
    if not ok:
        return {**out, "builds": False}
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 512 << 20)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    dynamic = [t for t in inputs if any(d < 0 for d in tuple(t.shape))]
    if dynamic:
        prof = builder.create_optimization_profile()
        for t in dynamic:
            shapes = (profile or {}).get(t.name)
            if not shapes:
                return {**out, "builds": False, "build_error": f"no profile for dynamic input {t.name}"}
            prof.set_shape(t.name, *(tuple(shapes[k]) for k in ("min", "opt", "max")))
        config.add_optimization_profile(prof)
    out["builds"] = builder.build_serialized_network(network, config) is not None
    return out


@section("checker")
def _checker():
    try:
        from edgehaze.export import trt_check
    except ImportError as exc:
        return {"skipped": f"the export checker is not in this tree ({exc})"}
    out = {}
    for key in ("trt_int8", "helper"):  # the CLI's exit status: 0 on the trt flavour, 1 on the cpu one
        r = subprocess.run([sys.executable, "-m", "edgehaze", "export", "--check", "trt", "--onnx", str(ART[key])],
                           capture_output=True, text=True, timeout=120)
        out[f"cli_{key}"] = {"rc": r.returncode, "verdict": [ln for ln in r.stdout.splitlines()
                                                             if ln.startswith("verdict")]}
    try:
        import tensorrt as trt
        family = "10" if trt.__version__.startswith("10") else "8.6"
    except ImportError:
        trt, family = None, None
    for key in ("trt", "trt_int8", "helper"):
        for report in trt_check.check_artifact(ART[key].with_suffix(".json")):
            row = {"checker": {r: report.ok(r) for r in report.releases}, "rules": report.rules()}
            if trt is not None:
                int8 = trt_check.precision_of_graph({}, report.graph) == "int8"
                row["tensorrt"] = parser_verdict(Path(report.graph), report.profile, int8)
                mine = [r for r in report.releases if r.startswith(family)]
                row["agree"] = bool(mine) and report.ok(mine[0]) == row["tensorrt"]["builds"]
            out[f"{key}/{Path(report.graph).name}"] = row
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
