"""TensorRT engines from the ONNX graph, and torch-tensorrt compilation.

GPU machines only; neither package installs on a CPU-only machine, so both
are imported lazily and a missing one raises an :class:`EdgehazeError` with
the install hint. This code is written against the TensorRT 10 builder API
(explicit-quantisation networks: the ONNX QDQ nodes decide what runs in
INT8, so no calibrator is used) but has NOT been run here: it is not
verified until someone runs ``tests/test_export.py`` on a GPU machine.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from edgehaze.errors import EdgehazeError
from edgehaze.export.targets import TRT_HINT


def _import(name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise EdgehazeError(f"{name} is not installed: {TRT_HINT}") from None


def build_engine(
    onnx_path: "str | Path",
    engine_path: "str | Path",
    precision: str,
    shape_ranges: Dict[str, Sequence[int]],
    workspace_gib: float = 4.0,
) -> Path:
    """Build and atomically write a serialized TensorRT engine.

    ``precision``: ``fp16`` (FP16 kernels allowed) or ``int8`` (the ONNX must
    carry QDQ nodes; FP16 is allowed as well for the float parts).
    ``shape_ranges``: min/opt/max NHWC shapes of ``image`` (the sidecar's),
    used as the optimisation profile; every other input (depth features in
    a fuse graph) must then have static shapes.
    """
    from edgehaze.fsutil import atomic_write

    trt = _import("tensorrt")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # implicit in TRT 10
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EdgehazeError(f"{onnx_path}: TensorRT cannot parse the ONNX graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    profile.set_shape(name, tuple(shape_ranges["min"]), tuple(shape_ranges["opt"]), tuple(shape_ranges["max"]))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgehazeError(f"{onnx_path}: TensorRT failed to build an engine (see the TensorRT log above)")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(bytes(serialized))

    atomic_write(engine_path, write)
    return Path(engine_path)


def compile_torch_tensorrt(
    graph: "torch.nn.Module",  # noqa: F821
    out_path: "str | Path",
    precision: str,
    shape_ranges: Dict[str, Sequence[int]],
) -> Path:
    """``torch_tensorrt.compile`` of the uint8 graph, saved as TorchScript."""
    import torch

    from edgehaze.fsutil import atomic_write

    torch_trt = _import("torch_tensorrt")
    if not torch.cuda.is_available():
        raise EdgehazeError(f"--format torchtrt needs a CUDA GPU; none is visible. {TRT_HINT}")
    dtypes = {torch.float16} if precision == "fp16" else {torch.float16, torch.int8}
    spec = torch_trt.Input(
        min_shape=tuple(shape_ranges["min"]), opt_shape=tuple(shape_ranges["opt"]),
        max_shape=tuple(shape_ranges["max"]), dtype=torch.uint8,
    )
    compiled = torch_trt.compile(graph.cuda().eval(), ir="ts", inputs=[spec], enabled_precisions=dtypes)
    atomic_write(out_path, lambda tmp: torch.jit.save(compiled, tmp))
    return Path(out_path)


def engine_available() -> Optional[str]:
    """None when TensorRT can be used here, else the reason (for tests to skip)."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return f"tensorrt not installed ({TRT_HINT})"
    return None
