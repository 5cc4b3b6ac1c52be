"""Build a TensorRT engine on the device from an exported graph: ``python runtime/build_engine.py MODEL.onnx``.

    python runtime/build_engine.py models/edge-s.onnx                       # fp16 (int8 for an INT8 export)
    python runtime/build_engine.py models/edge-s.onnx --precision int8 --max 1x720x1280x3
    python runtime/build_engine.py models/edge-s.onnx --dla 0               # Xavier / Orin DLA core 0

An engine belongs to the TensorRT version and the GPU architecture that
built it, so it is built where it runs: needs only the ``tensorrt`` Python
package (JetPack ships it) and the artifact's sidecar; no torch, no
edgehaze. Writes ``NAME.<trt-version>.sm<XY>.<precision>.engine`` beside the
ONNX file and records an engine block (TensorRT version, compute
capability, precision, profile, build flags) in the sidecar ``NAME.json``,
both atomically; the runtime checks that block before it loads the engine
(runtime/engines.py). Shapes are NHWC ``1xHxWx3`` (``image:`` prefix
allowed, as trtexec writes them); they default to the sidecar's
``shape_ranges``.
"""
from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

if not __package__:  # run as a script: make the runtime folder importable as a package
    _here = Path(__file__).resolve().parent
    if sys.path and Path(sys.path[0] or ".").resolve() == _here:
        sys.path.pop(0)  # our module names (errors, api, ...) must not shadow top-level modules
    sys.path.insert(0, str(_here.parent))
    importlib.import_module(_here.name)
    __package__ = _here.name

from .artifact import resolve, validate_meta  # noqa: E402
from .engines import (DEFAULT_WORKSPACE_MIB, PRECISIONS, arch_tag, capability_text, cuda_device,  # noqa: E402
                      engine_filename, record_engine, write_bytes_atomic)
from .errors import RuntimeError_, Status  # noqa: E402

TRT_MISSING = ("the tensorrt Python package is not installed; it ships with JetPack (python3-libnvinfer, "
               "system Python) or `pip install tensorrt` on an x86 GPU machine")


@dataclass
class BuildPlan:
    """Everything decided before TensorRT is touched (so it is tested without a GPU)."""

    onnx: Path
    sidecar: Path
    engine: Path
    precision: str
    profile: dict                    # {"image": {"min": [...], "opt": [...], "max": [...]}}
    trt_version: str
    compute_capability: tuple
    device_name: str
    dla_core: Optional[int] = None
    workspace_mib: int = DEFAULT_WORKSPACE_MIB
    timing_cache: Optional[Path] = None
    opt_level: Optional[int] = None
    command: str = ""
    warnings: List[str] = field(default_factory=list)

    def block(self, built_s: float) -> dict:
        """The sidecar's engine block for this build."""
        return {
            "file": self.engine.name, "onnx": self.onnx.name, "tensorrt": self.trt_version,
            "compute_capability": capability_text(self.compute_capability), "device": self.device_name,
            "precision": self.precision, "profile": self.profile,
            "flags": {"fp16": self.precision in ("fp16", "int8"), "int8": self.precision == "int8",
                      "dla_core": self.dla_core, "gpu_fallback": self.dla_core is not None,
                      "workspace_mib": self.workspace_mib,
                      "timing_cache": str(self.timing_cache) if self.timing_cache else None,
                      "builder_optimization_level": self.opt_level},
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "build_s": round(built_s, 1),
            "command": self.command,
        }


def parse_shape(text: str, flag: str) -> List[int]:
    """``1x480x640x3`` or ``image:1x480x640x3`` -> [1, 480, 640, 3] (NHWC, batch 1, 3 channels)."""
    body = text.split(":", 1)[1] if ":" in text else text
    if ":" in text and text.split(":", 1)[0] != "image":
        raise RuntimeError_(Status.BAD_ARGUMENT, f"{flag} {text}: the engine's one input is 'image' "
                                                 "(write image:1xHxWx3 or 1xHxWx3)")
    try:
        dims = [int(v) for v in body.lower().split("x")]
    except ValueError:
        dims = []
    if len(dims) != 4 or dims[0] != 1 or dims[3] != 3 or min(dims) < 1:
        raise RuntimeError_(Status.BAD_ARGUMENT, f"{flag} {text}: give an NHWC shape 1xHxWx3, e.g. 1x480x640x3")
    return dims


def plan_profile(meta: dict, given: dict, source: Path) -> dict:
    """min/opt/max of ``image``: the flags where given, else the sidecar's ``shape_ranges``; checked for order."""
    ranges = meta.get("shape_ranges") or {}
    prof = {}
    for key in ("min", "opt", "max"):
        if given.get(key):
            prof[key] = parse_shape(given[key], f"--{key}")
        elif ranges.get(key):
            prof[key] = [int(v) for v in ranges[key]]
        else:
            raise RuntimeError_(Status.BAD_ARGUMENT, f"{source}: the sidecar has no shape_ranges.{key}; pass --{key} 1xHxWx3")
    lo, opt, hi = prof["min"], prof["opt"], prof["max"]
    if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
        raise RuntimeError_(Status.BAD_ARGUMENT, f"--min {lo} <= --opt {opt} <= --max {hi} must hold per dimension")
    floor = ranges.get("min")
    if floor and (lo[1] < int(floor[1]) or lo[2] < int(floor[2])):
        raise RuntimeError_(Status.BAD_ARGUMENT, f"--min {lo} is below the graph's minimum {floor} "
                                                 f"(shape_ranges.min in {source.name})")
    if meta.get("dynamic") is False and not (lo == opt == hi == [int(v) for v in ranges.get("opt", opt)]):
        raise RuntimeError_(Status.BAD_ARGUMENT, f"{source}: the graph was exported for one size "
                                                 f"{ranges.get('opt')}; drop --min/--opt/--max or export dynamic")
    return {"image": prof}


def plan_build(args: argparse.Namespace, trt_version: str, compute_capability: tuple, device_name: str,
               argv: Optional[List[str]] = None) -> BuildPlan:
    """Check the request against the artifact and name the engine; touches no TensorRT."""
    art = resolve(args.model)
    if art.kind != "onnx" or art.sidecar_path is None:
        what = "an ONNX graph" if art.kind != "onnx" else f"its sidecar {art.model_path.with_suffix('.json').name}"
        raise RuntimeError_(Status.BAD_ARTIFACT, f"{art.model_path}: building an engine needs {what} "
                                                 "(copy NAME.onnx and NAME.json from the export)")
    validate_meta(art.meta, art.sidecar_path)
    precision = args.precision or ("int8" if art.meta.get("precision") == "int8" else "fp16")
    if precision not in PRECISIONS:
        raise RuntimeError_(Status.BAD_ARGUMENT, f"--precision {precision} must be one of {PRECISIONS}")
    if args.dla is not None and (args.dla < 0 or precision == "fp32"):
        raise RuntimeError_(Status.BAD_ARGUMENT, f"--dla {args.dla}: DLA cores run fp16 or int8 only and are "
                                                 "numbered from 0 (use --precision fp16|int8)")
    if args.workspace_mib < 64:
        raise RuntimeError_(Status.BAD_ARGUMENT, f"--workspace-mib {args.workspace_mib}: give at least 64 MiB")
    profile = plan_profile(art.meta, {"min": args.min, "opt": args.opt, "max": args.max}, art.sidecar_path)
    stem = art.model_path.name[: -len(".onnx")]
    engine = art.folder / engine_filename(stem, trt_version, compute_capability, precision, args.dla)
    cache = None
    if not args.no_timing_cache:
        cache = Path(args.timing_cache) if args.timing_cache else (
            art.folder / "trt_cache" / f"timing.{trt_version}.{arch_tag(compute_capability)}.cache")
    plan = BuildPlan(onnx=art.model_path, sidecar=art.sidecar_path, engine=engine, precision=precision,
                     profile=profile, trt_version=trt_version, compute_capability=tuple(compute_capability),
                     device_name=device_name, dla_core=args.dla, workspace_mib=int(args.workspace_mib),
                     timing_cache=cache, opt_level=args.opt_level,
                     command=" ".join(shlex.quote(a) for a in ["python", "runtime/build_engine.py", *(argv or [])]))
    if precision == "int8" and art.meta.get("precision") != "int8":
        plan.warnings.append(f"{art.model_path.name} is a {art.meta.get('precision')} export: --precision int8 "
                             "needs Q/DQ nodes in the graph (an INT8 export); this build will fail without them")
    return plan


def _import_trt():
    try:
        import tensorrt as trt
    except ImportError:
        raise RuntimeError_(Status.BACKEND_UNAVAILABLE, TRT_MISSING) from None
    return trt


def _parse(trt, builder, plan: BuildPlan, logger):
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # required by TensorRT 8, implied by 10
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(plan.onnx)):  # from the file: external weights are found beside it
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError_(Status.BAD_ARTIFACT, f"{plan.onnx}: TensorRT {trt.__version__}'s ONNX parser rejects "
                                                 f"it: {errors}")
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if names != ["image"]:
        raise RuntimeError_(Status.BAD_ARTIFACT, f"{plan.onnx}: inputs {names}; an engine is built from the full "
                                                 "graph (one input 'image'), not a depth/fuse graph")
    qdq = {trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE}
    has_qdq = any(network.get_layer(i).type in qdq for i in range(network.num_layers))
    if plan.precision == "int8" and not has_qdq:
        raise RuntimeError_(Status.BAD_ARTIFACT, f"{plan.onnx}: no Q/DQ nodes, so nothing says what runs in INT8 "
                                                 "(no calibrator here); export with --int8 or use --precision fp16")
    if plan.precision != "int8" and has_qdq:
        raise RuntimeError_(Status.BAD_ARGUMENT, f"{plan.onnx}: an INT8 (Q/DQ) graph; build it with --precision int8")
    return network, parser


def _configure(trt, builder, network, plan: BuildPlan):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(plan.workspace_mib) << 20)
    if plan.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # float parts of an INT8 graph in fp16
    if plan.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    if plan.dla_core is not None:
        if builder.num_DLA_cores <= plan.dla_core:
            raise RuntimeError_(Status.BAD_ARGUMENT, f"--dla {plan.dla_core}: this device has "
                                                     f"{builder.num_DLA_cores} DLA core(s)")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(plan.dla_core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)  # layers a DLA cannot run go to the GPU
    if plan.opt_level is not None:
        if not hasattr(config, "builder_optimization_level"):
            raise RuntimeError_(Status.BAD_ARGUMENT, f"--opt-level needs TensorRT >= 8.6 (this is {trt.__version__})")
        config.builder_optimization_level = int(plan.opt_level)
    profile = builder.create_optimization_profile()
    shapes = plan.profile["image"]
    profile.set_shape("image", tuple(shapes["min"]), tuple(shapes["opt"]), tuple(shapes["max"]))
    config.add_optimization_profile(profile)
    cache = None
    if plan.timing_cache is not None:
        data = plan.timing_cache.read_bytes() if plan.timing_cache.is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, False)  # ignore_mismatch=False: a cache of another device is refused
    return config, cache


def build(plan: BuildPlan, trt=None, verbose: bool = False) -> bytes:
    """Parse, configure, build; write the timing cache back. Returns the serialized engine."""
    trt = trt or _import_trt()
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, plan, logger)
    config, _cache = _configure(trt, builder, network, plan)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError_(Status.INTERNAL, f"{plan.onnx}: TensorRT failed to build the engine (see its log above; "
                                             "a smaller --workspace-mib or --max helps on 4 GB boards)")
    if plan.timing_cache is not None:
        write_bytes_atomic(plan.timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="runtime/build_engine.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="NAME.onnx (the full graph; NAME.json beside it), or its sidecar/folder")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="default: int8 for an INT8 (Q/DQ) export, else fp16")
    for key in ("min", "opt", "max"):
        p.add_argument(f"--{key}", default=None, metavar="1xHxWx3",
                       help=f"{key} shape of the optimisation profile (default: shape_ranges.{key} of the sidecar)")
    p.add_argument("--dla", type=int, default=None, metavar="N", help="build for DLA core N (GPU fallback on)")
    p.add_argument("--workspace-mib", type=int, default=DEFAULT_WORKSPACE_MIB,
                   help=f"builder workspace limit in MiB (default {DEFAULT_WORKSPACE_MIB}: fits 4-8 GB boards)")
    p.add_argument("--timing-cache", default=None,
                   help="timing cache file (default: trt_cache/timing.<trt>.<sm>.cache beside the model)")
    p.add_argument("--no-timing-cache", action="store_true", help="do not read or write a timing cache")
    p.add_argument("--opt-level", type=int, default=None, choices=range(6), metavar="0-5",
                   help="builder optimisation level (TensorRT >= 8.6; lower builds faster)")
    p.add_argument("--device-id", type=int, default=0, help="GPU index")
    p.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")
    return p


def log(msg: str) -> None:
    print(f"[build_engine] {msg}", file=sys.stderr, flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        resolve(args.model)  # a wrong path is reported before anything is imported
        trt = _import_trt()
        cc, device = cuda_device(args.device_id)
        plan = plan_build(args, str(trt.__version__), cc, device, argv)
        for w in plan.warnings:
            log(f"warning: {w}")
        log(f"building {plan.engine.name} ({plan.precision}, profile {plan.profile['image']}) with TensorRT "
            f"{plan.trt_version} on {device} (compute capability {capability_text(cc)})")
        t0 = time.perf_counter()
        data = build(plan, trt, verbose=args.verbose)
        write_bytes_atomic(plan.engine, data)
        record_engine(plan.sidecar, plan.block(time.perf_counter() - t0))
        log(f"wrote {plan.engine} ({len(data) / 2**20:.1f} MiB) and its engine block in {plan.sidecar.name}")
        print(plan.engine)
        return 0
    except RuntimeError_ as exc:
        log(f"error {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
