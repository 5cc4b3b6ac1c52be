"""Tracing the graphs to ONNX, FP16 conversion, ONNX Runtime sessions and parity.

The TorchScript-based exporter (``dynamo=False``) is used: it is the one
NNCF's stripped QAT models export through with QDQ nodes, it keeps H and W
symbolic for our graphs, and it takes seconds where the dynamo exporter
takes a minute and specialises the depth teacher's resize to one size.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgehaze.errors import EdgehazeError

DEFAULT_OPSET = 17
#: example input size for tracing (H, W); odd sizes catch padding bugs
TRACE_SIZE = (96, 128)


def export_module(
    module: "torch.nn.Module",  # noqa: F821
    example: Tuple["torch.Tensor", ...],  # noqa: F821
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic: bool,
    opset: int = DEFAULT_OPSET,
) -> "onnx.ModelProto":  # noqa: F821
    """Trace ``module`` to an in-memory ONNX model.

    With ``dynamic``, every input/output's H and W axes are named
    ``height``/``width`` (NHWC uint8 images: axes 1, 2; NCHW depth features:
    axes 2, 3 with their own names since their size follows the network).
    """
    import onnx
    import torch

    if opset < 17:
        raise EdgehazeError(f"--opset {opset}: the artifact contract needs opset 17 or newer")
    axes: Dict[str, Dict[int, str]] = {}
    if dynamic:
        for name in list(input_names) + list(output_names):
            if name in ("image", "dehazed"):
                axes[name] = {1: "height", 2: "width"}
            else:
                axes[name] = {2: f"{name}_height", 3: f"{name}_width"}
    buf = io.BytesIO()
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            buf,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=axes or None,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(model)
    return model


def to_fp16(model: "onnx.ModelProto") -> "onnx.ModelProto":  # noqa: F821
    """Weights and activations in FP16; the uint8 I/O and its casts stay as they are."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)


def session(
    path_or_bytes: "str | Path | bytes", threads: int = 2, optimized_path: Optional[str] = None
) -> "onnxruntime.InferenceSession":  # noqa: F821
    """A CPU ONNX Runtime session with ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the runtime: no busy-waiting
    if optimized_path is not None:
        opts.optimized_model_filepath = optimized_path
    src = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def onnx_runner(path: "str | Path", threads: int = 2, channel_order: Optional[str] = None):  # type: ignore[no-untyped-def]
    """``img01 (H x W x 3 float RGB in [0, 1]) -> H x W x 3 float32 in [0, 1]`` for an artifact.

    Handles the uint8 quantisation and a BGR artifact's channel order, so it
    compares like for like with a PyTorch checkpoint in ``edgehaze eval``.
    """
    from edgehaze.export.metadata import read_metadata_props

    path = Path(path)
    if not path.is_file():
        raise EdgehazeError(f"{path}: no such ONNX file")
    if channel_order is None:
        channel_order = (read_metadata_props(path).get("input") or {}).get("channel_order", "RGB")
    bgr = str(channel_order).upper() == "BGR"
    sess = session(path, threads=threads)

    def run(img01: np.ndarray) -> np.ndarray:
        img = np.asarray(img01, dtype=np.float32)
        u8 = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
        if bgr:
            u8 = u8[..., ::-1]
        out = sess.run(["dehazed"], {"image": np.ascontiguousarray(u8[None])})[0][0]
        if bgr:
            out = out[..., ::-1]
        return out.astype(np.float32) / 255.0

    return run


def check_uint8_parity(
    model: "onnx.ModelProto", graph: "torch.nn.Module", sizes: Sequence[Tuple[int, int]], seed: int = 0  # noqa: F821
) -> int:
    """Largest |ONNX - torch| of the uint8 output over random images of ``sizes``."""
    import torch

    sess = session(model.SerializeToString())
    rng = np.random.default_rng(seed)
    worst = 0
    for h, w in sizes:
        img = rng.integers(0, 256, size=(1, h, w, 3), dtype=np.uint8)
        got = sess.run(["dehazed"], {"image": img})[0]
        with torch.no_grad():
            ref = graph(torch.from_numpy(img)).numpy()
        if got.shape != ref.shape:
            raise EdgehazeError(f"exported graph gives shape {got.shape} for input {img.shape}, torch {ref.shape}")
        worst = max(worst, int(np.abs(got.astype(np.int16) - ref.astype(np.int16)).max()))
    return worst


def check_float_parity(
    float_model: "torch.nn.Module", sizes: Sequence[Tuple[int, int]], dynamic: bool = True, seed: int = 0  # noqa: F821
) -> float:
    """Export the float path alone (image01 NCHW -> restored, unclamped) and compare with torch."""
    import torch

    h0, w0 = sizes[0]
    gen = torch.Generator().manual_seed(seed)
    example = (torch.rand(1, 3, h0, w0, generator=gen),)
    model = export_module(_NCHW(float_model), example, ["x01"], ["y"], dynamic=False if not dynamic else True)
    sess = session(model.SerializeToString())
    worst = 0.0
    for h, w in sizes:
        x = torch.rand(1, 3, h, w, generator=gen)
        got = sess.run(["y"], {"x01": x.numpy()})[0]
        with torch.no_grad():
            ref = float_model(x).numpy()
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


class _NCHW:  # built lazily so this module imports without torch
    def __new__(cls, inner):  # type: ignore[no-untyped-def]
        import torch

        class FloatIO(torch.nn.Module):
            def __init__(self, m: torch.nn.Module) -> None:
                super().__init__()
                self.m = m

            def forward(self, x01: torch.Tensor) -> torch.Tensor:
                return self.m(x01)

        return FloatIO(inner)


def latency_ms(path_or_bytes: "str | Path | bytes", size: Tuple[int, int], runs: int = 20, threads: int = 2,
               warmup: int = 3) -> float:
    """Median wall time (ms) of one ``image`` of ``size`` through the graph."""
    import time

    sess = session(path_or_bytes, threads=threads)
    img = np.random.default_rng(0).integers(0, 256, size=(1, size[0], size[1], 3), dtype=np.uint8)
    for _ in range(warmup):
        sess.run(None, {"image": img})
    times: List[float] = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {"image": img})
        times.append((time.perf_counter() - t) * 1000.0)
    return float(np.median(times))
