"""TensorRT engines built on the device: names, the sidecar's engine block, and the load-time check.

A serialized TensorRT engine runs only with the TensorRT version that built
it and on GPUs of the architecture (compute capability) it was built for.
``runtime/build_engine.py`` therefore names each engine after both,
``NAME.<trt-version>.sm<XY>[-dla<N>].<precision>.engine`` (several can sit
side by side: fp16 and int8, Orin and Xavier), and records how it was built
in the artifact's sidecar under ``engines`` (one *engine block* per file):

    "engines": {"edge-s.10.3.0.sm87.int8.engine": {
        "file": ..., "onnx": "edge-s.onnx", "tensorrt": "10.3.0", "compute_capability": "8.7",
        "device": "Orin", "precision": "int8", "profile": {"image": {"min": [...], "opt": [...], "max": [...]}},
        "flags": {"fp16": true, "int8": true, "dla_core": null, "gpu_fallback": false, "workspace_mib": 1024,
                  "timing_cache": "...", "builder_optimization_level": null}, "built": "...", "command": "..."}}

Before deserialising an engine the runtime compares its block with the
TensorRT and GPU it runs on (:func:`check_engine`) and refuses a mismatch
with the command that rebuilds it, instead of letting TensorRT fail with a
serialization error (or worse). Nothing here imports tensorrt: these parts
are plain data and are tested without a GPU.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .errors import RuntimeError_, Status

PRECISIONS = ("fp32", "fp16", "int8")
#: MiB of builder workspace by default: leaves room on 4 GB boards (Orin Nano 4GB, Jetson Nano), whose
#: memory the GPU shares with the CPU; TensorRT's own default is the whole device memory
DEFAULT_WORKSPACE_MIB = 1024
_ENGINE_NAME = re.compile(r"^(?P<stem>.+?)\.(?P<trt>\d+(?:\.\d+)*)\.(?P<arch>sm\d+(?:-dla\d+)?)"
                          r"\.(?P<precision>fp32|fp16|int8)\.engine$")
BUILD_SCRIPT = "runtime/build_engine.py"


def arch_tag(compute_capability: Sequence[int], dla_core: Optional[int] = None) -> str:
    """``(8, 7)`` -> ``"sm87"``; with a DLA core ``"sm87-dla0"`` (a DLA engine runs on that core only)."""
    major, minor = (int(v) for v in compute_capability)
    return f"sm{major}{minor}" + (f"-dla{int(dla_core)}" if dla_core is not None else "")


def engine_filename(stem: str, trt_version: str, compute_capability: Sequence[int], precision: str,
                    dla_core: Optional[int] = None) -> str:
    """``NAME.<trt-version>.<sm-arch>.<precision>.engine``: what built it is in the name."""
    if precision not in PRECISIONS:
        raise RuntimeError_(Status.BAD_ARGUMENT, f"precision {precision!r} must be one of {PRECISIONS}")
    if not re.fullmatch(r"\d+(?:\.\d+)*", str(trt_version)):
        raise RuntimeError_(Status.BAD_ARGUMENT, f"TensorRT version {trt_version!r} is not dotted digits")
    return f"{stem}.{trt_version}.{arch_tag(compute_capability, dla_core)}.{precision}.engine"


def parse_engine_filename(name: str) -> Optional[Dict[str, str]]:
    """The parts of a versioned engine name (``stem``, ``trt``, ``arch``, ``precision``), None for ``NAME.engine``."""
    m = _ENGINE_NAME.match(Path(name).name)
    return m.groupdict() if m else None


def sidecar_for_engine(engine: Path) -> Path:
    """``NAME.10.3.0.sm87.int8.engine`` -> ``NAME.json``; a plain ``NAME.engine`` -> ``NAME.json``."""
    parts = parse_engine_filename(engine.name)
    return engine.with_name(parts["stem"] + ".json") if parts else engine.with_suffix(".json")


def capability_text(compute_capability: Sequence[int]) -> str:
    major, minor = (int(v) for v in compute_capability)
    return f"{major}.{minor}"


def engine_block(meta: dict, engine_name: str) -> Optional[dict]:
    """The sidecar's block for ``engine_name`` (a file name), None when it has none."""
    engines = meta.get("engines") or {}
    block = engines.get(Path(engine_name).name) if isinstance(engines, dict) else None
    return block if isinstance(block, dict) else None


def _shape_flag(shape: Sequence[int]) -> str:
    return "x".join(str(int(v)) for v in shape)


def rebuild_command(block: dict, onnx_path: "str | Path | None" = None) -> str:
    """The ``build_engine.py`` command line that rebuilds the engine ``block`` describes, on this device."""
    onnx = str(onnx_path) if onnx_path is not None else str(block.get("onnx") or "MODEL.onnx")
    args = ["python", BUILD_SCRIPT, onnx, "--precision", str(block.get("precision", "fp16"))]
    image = ((block.get("profile") or {}).get("image")) or {}
    for key in ("min", "opt", "max"):
        if image.get(key):
            args += [f"--{key}", _shape_flag(image[key])]
    flags = block.get("flags") or {}
    if flags.get("dla_core") is not None:
        args += ["--dla", str(int(flags["dla_core"]))]
    if flags.get("workspace_mib") and int(flags["workspace_mib"]) != DEFAULT_WORKSPACE_MIB:
        args += ["--workspace-mib", str(int(flags["workspace_mib"]))]
    return " ".join(shlex.quote(a) for a in args)


def check_engine(engine: Path, meta: dict, trt_version: str, compute_capability: Sequence[int],
                 onnx_path: "Path | None" = None) -> Optional[dict]:
    """Refuse an engine built by another TensorRT or for another GPU; return its block (None: unrecorded).

    A versioned name (``build_engine.py``'s) must have a block: a sidecar
    rewritten by a re-export has lost it, and the engine may be stale. A
    plain ``NAME.engine`` (``edgehaze export --format engine``) without one
    is loaded as before; TensorRT's own deserialisation then decides.
    """
    block = engine_block(meta, engine.name)
    onnx = onnx_path if onnx_path is not None else engine.parent / str((meta.get("graphs") or {}).get("full", "MODEL.onnx"))
    if block is None:
        if parse_engine_filename(engine.name) is not None:
            raise RuntimeError_(Status.BAD_ARTIFACT,
                                f"{engine}: its sidecar has no engine block for it (rewritten by a re-export?); "
                                f"rebuild it with: python {BUILD_SCRIPT} {onnx}")
        return None
    here_cc = capability_text(compute_capability)
    built_trt, built_cc = str(block.get("tensorrt")), str(block.get("compute_capability"))
    problems = []
    if built_trt != str(trt_version):
        problems.append(f"TensorRT {built_trt} built it, this device has TensorRT {trt_version}")
    if built_cc != here_cc:
        problems.append(f"it was built for compute capability {built_cc} ({block.get('device', '?')}), "
                        f"this GPU is {here_cc}")
    if problems:
        raise RuntimeError_(Status.BAD_ARTIFACT,
                            f"{engine}: {'; '.join(problems)}; TensorRT engines run only where they were built. "
                            f"Rebuild it here with: {rebuild_command(block, onnx)}")
    return block


def profile_bounds(block: Optional[dict]) -> Optional[Tuple[List[int], List[int]]]:
    """(min, max) NHWC shapes of the engine's ``image`` profile, None when not recorded."""
    image = ((block or {}).get("profile") or {}).get("image") or {}
    if image.get("min") and image.get("max"):
        return [int(v) for v in image["min"]], [int(v) for v in image["max"]]
    return None


def select_engine(meta: dict, folder: Path, trt_version: str, compute_capability: Sequence[int]) -> Optional[Path]:
    """The engine file of ``meta['engines']`` that runs here (same TensorRT, same GPU, on the GPU), or None.

    Preference among matches: the artifact's own precision, then int8,
    fp16, fp32 (the fastest first). DLA engines are never picked
    implicitly: pass their file to use a DLA core.
    """
    here_cc = capability_text(compute_capability)
    order = [meta.get("precision")] + ["int8", "fp16", "fp32"]
    found = []
    for name, block in (meta.get("engines") or {}).items():
        if not isinstance(block, dict) or (block.get("flags") or {}).get("dla_core") is not None:
            continue
        if str(block.get("tensorrt")) != str(trt_version) or str(block.get("compute_capability")) != here_cc:
            continue
        path = folder / name
        if path.is_file():
            rank = order.index(block.get("precision")) if block.get("precision") in order else len(order)
            found.append((rank, name, path))
    return min(found)[2] if found else None


def describe_engines(meta: dict) -> str:
    """One line per recorded engine (for error messages)."""
    rows = [f"{n} (TensorRT {b.get('tensorrt')}, sm {b.get('compute_capability')}, {b.get('precision')})"
            for n, b in (meta.get("engines") or {}).items() if isinstance(b, dict)]
    return "; ".join(rows) if rows else "none"


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync, rename: never a half-written engine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def record_engine(sidecar: Path, block: dict) -> dict:
    """Add (or replace) ``block`` under ``engines[block['file']]`` in the sidecar, atomically; return the new meta.

    The sidecar is re-read just before writing so a concurrent build of
    another precision is not lost (last writer wins per engine file).
    """
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        raise RuntimeError_(Status.BAD_ARTIFACT, f"{sidecar}: cannot read the sidecar to record the engine ({exc})") from None
    engines = meta.get("engines")
    if not isinstance(engines, dict):
        engines = {}
    engines[block["file"]] = block
    meta["engines"] = engines
    write_bytes_atomic(sidecar, (json.dumps(meta, indent=2) + "\n").encode())
    return meta


# -- the GPU this runs on (no torch; cuda-python when present, else the CUDA driver through ctypes) ----------
def cuda_device(device_id: int = 0) -> Tuple[Tuple[int, int], str]:
    """(compute capability, device name) of GPU ``device_id``.

    Uses cuda-python's runtime API when it is installed, else the CUDA
    driver library (``libcuda.so``, present wherever an NVIDIA driver or
    JetPack is) through ctypes: ``cuInit``, ``cuDeviceGet``,
    ``cuDeviceGetAttribute`` (attributes 75/76 are the capability's major
    and minor), ``cuDeviceGetName``.
    """
    try:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # cuda-python < 12.6
    except ImportError:
        return _cuda_device_ctypes(device_id)
    attr = cudart.cudaDeviceAttr
    vals = []
    for key in (attr.cudaDevAttrComputeCapabilityMajor, attr.cudaDevAttrComputeCapabilityMinor):
        err, value = cudart.cudaDeviceGetAttribute(key, int(device_id))
        if int(err) != 0:
            raise RuntimeError_(Status.BACKEND_UNAVAILABLE, f"CUDA device {device_id}: cannot query it ({err})")
        vals.append(int(value))
    err, props = cudart.cudaGetDeviceProperties(int(device_id))
    raw = props.name if int(err) == 0 else b"?"
    name = (raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)).rstrip("\0")
    return (vals[0], vals[1]), name


def _cuda_device_ctypes(device_id: int) -> Tuple[Tuple[int, int], str]:
    import ctypes
    import ctypes.util

    lib = None
    for cand in ("libcuda.so.1", "libcuda.so", ctypes.util.find_library("cuda")):
        if not cand:
            continue
        try:
            lib = ctypes.CDLL(cand)
            break
        except OSError:
            continue
    if lib is None:
        raise RuntimeError_(Status.BACKEND_UNAVAILABLE,
                            "no CUDA driver (libcuda.so) here and cuda-python is not installed; "
                            "an NVIDIA GPU with its driver (or JetPack) is needed")
    dev, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    name = ctypes.create_string_buffer(256)
    for call, args in (("cuInit", (0,)), ("cuDeviceGet", (ctypes.byref(dev), int(device_id)))):
        rc = getattr(lib, call)(*args)
        if rc != 0:
            raise RuntimeError_(Status.BACKEND_UNAVAILABLE, f"CUDA driver: {call} failed with error {rc}")
    for value, attr in ((major, 75), (minor, 76)):
        if lib.cuDeviceGetAttribute(ctypes.byref(value), attr, dev) != 0:
            raise RuntimeError_(Status.BACKEND_UNAVAILABLE, f"CUDA driver: cannot read device {device_id}'s capability")
    lib.cuDeviceGetName(name, 256, dev)
    return (major.value, minor.value), name.value.decode(errors="replace")
