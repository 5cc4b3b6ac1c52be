"""The table of export targets: which formats exist and which flags each takes.

As in Ultralytics' exporter, one table drives the command line: a flag that a
target does not take is an error naming the flag and the targets that do,
instead of being silently ignored. GPU-only targets say so, and the packages
they import are listed so a missing one gives an install hint, not a
traceback.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, FrozenSet, Iterable, Optional, Sequence, Tuple

from edgehaze.errors import EdgehazeError

TRT_HINT = "install the trt extra on a GPU machine: pip install edgehaze[trt]"

#: flags every target takes
COMMON_FLAGS = frozenset({"imgsz", "dynamic", "out", "channel_order", "two_graph", "int8", "fp16", "internal_scale",
                          "target"})
#: flags of the INT8 calibration/QAT path
INT8_FLAGS = frozenset({"calib", "qat_steps", "method", "max_psnr_drop", "force", "calib_images", "holdout_images"})


@dataclass(frozen=True)
class ExportTarget:
    """One export format.

    name: the ``--format`` value.
    suffix: file suffix of the artifact's main graph.
    precisions: precisions it can produce (fp32, fp16, int8).
    gpu_only: needs an NVIDIA GPU and its packages (never verified here).
    requires: python modules imported lazily when the target runs.
    flags: option names (argparse dests) valid with this target.
    """

    name: str
    suffix: str
    precisions: Tuple[str, ...]
    gpu_only: bool
    requires: Tuple[str, ...]
    flags: FrozenSet[str]
    description: str


EXPORT_TARGETS: Dict[str, ExportTarget] = {
    t.name: t
    for t in (
        ExportTarget(
            "onnx", ".onnx", ("fp32", "fp16", "int8"), False, ("onnx", "onnxruntime"),
            COMMON_FLAGS | INT8_FLAGS | {"ort_optimize", "opset"},
            "ONNX graph (uint8 NHWC in/out), FP32, FP16 or INT8 QDQ; runs in ONNX Runtime",
        ),
        ExportTarget(
            "engine", ".engine", ("fp16", "int8"), True, ("tensorrt",),
            COMMON_FLAGS | INT8_FLAGS | {"opset", "workspace"},
            "TensorRT engine built from the ONNX graph (explicit-QDQ INT8 or FP16)",
        ),
        ExportTarget(
            "torchtrt", ".ts", ("fp16", "int8"), True, ("torch_tensorrt",),
            (COMMON_FLAGS - {"two_graph"}) | INT8_FLAGS,
            "torch_tensorrt.compile of the PyTorch graph, saved as TorchScript",
        ),
    )
}


@dataclass(frozen=True)
class Flavour:
    """How a graph is written for the engine that runs it (``--target``); the sidecar records ``target``.

    name: the ``--target`` value. activations: the INT8 activation type
    (``uint8`` asymmetric for ONNX Runtime's CPU kernels, ``int8`` symmetric
    with zero-point 0 for TensorRT). nncf_preset: the NNCF
    ``QuantizationPreset`` of ``--method qat``. bytes_inside: the frame's
    layout ops run on uint8 inside the graph (CPU: a quarter of the memory
    traffic); when False uint8 exists only at the graph's ends, through Casts.
    int32_bias: ONNX Runtime's PTQ quantises conv biases to int32 (CPU:
    QLinearConv takes them); TensorRT's DequantizeLinear reads int8 only, so
    there biases stay float (TensorRT folds them into the INT8 conv).
    suffix: added to the default artifact name, so both flavours can sit side
    by side.
    """

    name: str
    activations: str
    symmetric: bool
    nncf_preset: str
    bytes_inside: bool
    int32_bias: bool
    suffix: str
    description: str


FLAVOURS: Dict[str, Flavour] = {
    f.name: f
    for f in (
        Flavour("cpu", "uint8", False, "MIXED", True, True, "",
                "ONNX Runtime on CPU: asymmetric uint8 activations (QLinearConv on VNNI), uint8 layout ops"),
        Flavour("trt", "int8", True, "PERFORMANCE", False, False, "-trt",
                "TensorRT 8.6/10.x (and ORT's TensorRT provider): symmetric int8, zero-point 0, per-channel "
                "weights; uint8 only at the graph's ends (Cast in; Round, Clip, Cast out)"),
    )
}


def resolve_flavour(target: Optional[str], formats: Sequence[ExportTarget]) -> Flavour:
    """``--target`` -> its flavour; unset: ``trt`` when a TensorRT format is asked for, else ``cpu``."""
    gpu = [t.name for t in formats if t.gpu_only]
    if target is None:
        return FLAVOURS["trt" if gpu else "cpu"]
    if target not in FLAVOURS:
        raise EdgehazeError(f"--target {target}: unknown; choose one of {', '.join(FLAVOURS)}")
    if target != "trt" and gpu:
        raise EdgehazeError(f"--format {gpu[0]} builds from the TensorRT flavour (symmetric int8, no uint8 inside); "
                            f"--target {target} makes a graph TensorRT cannot build from: use --target trt")
    return FLAVOURS[target]


def available(target: ExportTarget) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in target.requires)


def resolve_formats(fmt: str, precision: Optional[str] = None) -> Sequence[ExportTarget]:
    """``onnx|engine|torchtrt|all`` -> the targets to run.

    ``all``: ONNX plus every GPU target whose packages are installed and
    which makes ``precision`` (the others are skipped, not errors).
    """
    if fmt == "all":
        return [t for t in EXPORT_TARGETS.values()
                if t.name == "onnx" or (available(t) and (precision is None or precision in t.precisions))]
    if fmt not in EXPORT_TARGETS:
        raise EdgehazeError(f"--format {fmt}: unknown target; choose one of {', '.join(EXPORT_TARGETS)} or all")
    return [EXPORT_TARGETS[fmt]]


def precision_of(int8: bool, fp16: bool) -> str:
    if int8 and fp16:
        raise EdgehazeError("--int8 and --fp16 exclude each other; pick one precision")
    return "int8" if int8 else "fp16" if fp16 else "fp32"


def check_flags(targets: Iterable[ExportTarget], given: Iterable[str], precision: str) -> None:
    """Refuse flags a requested target does not take, and precisions it cannot make."""
    targets = list(targets)
    for target in targets:
        bad = sorted(f for f in given if f not in target.flags)
        if bad:
            takers = {f: [t.name for t in EXPORT_TARGETS.values() if f in t.flags] for f in bad}
            detail = "; ".join(f"--{f.replace('_', '-')} (taken by: {', '.join(v) or 'none'})" for f, v in takers.items())
            raise EdgehazeError(f"--format {target.name} does not take {detail}")
        if precision not in target.precisions:
            raise EdgehazeError(
                f"--format {target.name} makes {'/'.join(target.precisions)}, not {precision}; "
                f"add {' or '.join('--' + p for p in target.precisions if p != 'fp32')}"
            )
    if precision != "int8":
        bad = sorted(f for f in given if f in INT8_FLAGS)
        if bad:
            raise EdgehazeError(f"{', '.join('--' + b.replace('_', '-') for b in bad)} only apply with --int8")


def require_module(target: ExportTarget) -> None:
    """Import check for a target's packages, with an install hint when missing."""
    import importlib.util

    missing = [m for m in target.requires if importlib.util.find_spec(m) is None]
    if missing:
        hint = TRT_HINT if target.gpu_only else "pip install " + " ".join(missing)
        raise EdgehazeError(f"--format {target.name} needs {', '.join(missing)}, not installed: {hint}")
