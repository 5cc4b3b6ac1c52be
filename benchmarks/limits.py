"""This machine's own ceilings, measured in the same process as the model benchmark.

A model's speed means little on its own: "12 ms" is good or bad depending on
what the CPU can do at all. So every model figure in the speed report is also
stated as a *fraction of a ceiling*: effective GMAC/s (the model's
multiply-accumulates divided by its latency) over the rate ONNX Runtime
reaches on a wide, dense INT8 3x3 convolution - the best case the networks
here are designed around.

Ceilings (all through ONNX Runtime on the CPU provider with the same thread
count as the models, except memory bandwidth which is a plain copy):

* ``conv_int8_gmacs`` - a stack of ``width -> width`` 3x3 convolutions at
  ``H x W`` in QDQ form (uint8 activations, per-channel int8 weights), which
  ORT fuses into QLinearConv, the way an exported INT8 student runs;
* ``conv_fp32_gmacs`` - the same stack in FP32;
* ``gemm_fp32_gflops`` - one ``n x n x n`` FP32 MatMul (2 flops per MAC);
* ``membw_gbs`` - ``numpy.copyto`` of a buffer far bigger than the caches
  (read + write bytes per second), the bound on full-resolution
  element-wise work such as applying correction maps to a 1080p frame.

Run ``python benchmarks/limits.py`` to print them as JSON.
"""
from __future__ import annotations

import json
import statistics
import time
from typing import Callable, Dict, List, Optional

import numpy as np


def _median_ms(fn: Callable[[], object], warmup: int, runs: int) -> float:
    for _ in range(warmup):
        fn()
    times: List[float] = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return float(statistics.median(times))


def session(model_bytes: bytes, threads: int = 2):  # type: ignore[no-untyped-def]
    """A CPU session with ``threads`` intra-op threads and full graph optimisation."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the model benchmarks run
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def conv_stack(width: int = 64, layers: int = 6, int8: bool = True, seed: int = 0) -> bytes:
    """ONNX bytes of ``layers`` 3x3 ``width -> width`` conv + ReLU, FP32 or QDQ INT8.

    Input ``x`` is float32 N x width x H x W (H, W dynamic). In INT8 form each
    conv is ``DQ(Q(x)) -> Conv(DQ(w_int8 per-channel)) -> Relu``, which ORT's
    QDQ fusion turns into QLinearConv with the ReLU folded, i.e. the kernel
    an exported INT8 network runs.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "x"
    act_scale = np.array(4.0 / 255.0, np.float32)
    for i in range(layers):
        w = (rng.standard_normal((width, width, 3, 3)) * (2.0 / (9 * width)) ** 0.5).astype(np.float32)
        b = np.zeros(width, np.float32)
        inits.append(numpy_helper.from_array(b, f"b{i}"))
        if int8:
            w_scale = (np.abs(w).reshape(width, -1).max(1) / 127.0).astype(np.float32)
            w_q = np.clip(np.round(w / w_scale[:, None, None, None]), -127, 127).astype(np.int8)
            inits += [
                numpy_helper.from_array(w_q, f"wq{i}"),
                numpy_helper.from_array(w_scale, f"ws{i}"),
                numpy_helper.from_array(np.zeros(width, np.int8), f"wz{i}"),
                numpy_helper.from_array(act_scale, f"as{i}"),
                numpy_helper.from_array(np.array(0, np.uint8), f"az{i}"),
            ]
            nodes += [
                helper.make_node("QuantizeLinear", [x, f"as{i}", f"az{i}"], [f"q{i}"]),
                helper.make_node("DequantizeLinear", [f"q{i}", f"as{i}", f"az{i}"], [f"dq{i}"]),
                helper.make_node("DequantizeLinear", [f"wq{i}", f"ws{i}", f"wz{i}"], [f"w{i}"], axis=0),
            ]
            conv_in = f"dq{i}"
        else:
            inits.append(numpy_helper.from_array(w, f"w{i}"))
            conv_in = x
        nodes += [
            helper.make_node("Conv", [conv_in, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
        ]
        x = f"r{i}"
    if int8:  # quantise the output too, as the next layer of a real network would
        inits += [numpy_helper.from_array(act_scale, "aso"), numpy_helper.from_array(np.array(0, np.uint8), "azo")]
        nodes += [helper.make_node("QuantizeLinear", [x, "aso", "azo"], ["qo"]),
                  helper.make_node("DequantizeLinear", ["qo", "aso", "azo"], ["y"])]
    else:
        nodes.append(helper.make_node("Identity", [x], ["y"]))
    graph = helper.make_graph(
        nodes, "conv_stack",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width, "h", "w"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def conv_gmacs(int8: bool, width: int = 64, size=(120, 160), layers: int = 6, threads: int = 2,
               warmup: int = 5, runs: int = 20) -> Dict[str, float]:
    """GMAC/s of the conv stack (median latency)."""
    sess = session(conv_stack(width, layers, int8), threads)
    x = np.random.default_rng(1).random((1, width, size[0], size[1]), dtype=np.float32)
    ms = _median_ms(lambda: sess.run(None, {"x": x}), warmup, runs)
    macs = layers * width * width * 9 * size[0] * size[1]
    return {"gmacs": macs / (ms * 1e-3) / 1e9, "ms": ms, "macs": macs}


def gemm_gflops(n: int = 1024, threads: int = 2, warmup: int = 3, runs: int = 10) -> Dict[str, float]:
    """FP32 MatMul GFLOP/s (2 flops per multiply-accumulate) through ONNX Runtime."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = session(model.SerializeToString(), threads)
    rng = np.random.default_rng(2)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    ms = _median_ms(lambda: sess.run(None, {"a": a, "b": b}), warmup, runs)
    return {"gflops": 2 * n**3 / (ms * 1e-3) / 1e9, "ms": ms}


def memory_bandwidth(mbytes: int = 256, warmup: int = 2, runs: int = 8) -> Dict[str, float]:
    """Copy bandwidth in GB/s (bytes read + bytes written per second) of a large numpy copy."""
    n = mbytes * 1024 * 1024
    src = np.ones(n, np.uint8)
    dst = np.empty_like(src)
    ms = _median_ms(lambda: np.copyto(dst, src), warmup, runs)
    return {"gbs": 2 * n / (ms * 1e-3) / 1e9, "ms": ms}


def measure_limits(threads: int = 2, width: int = 64, size=(120, 160), quick: bool = False) -> Dict[str, object]:
    """All ceilings in one call (``quick``: fewer runs, for tests and smoke checks)."""
    runs = 5 if quick else 20
    i8 = conv_gmacs(True, width, size, threads=threads, runs=runs, warmup=2 if quick else 5)
    f32 = conv_gmacs(False, width, size, threads=threads, runs=runs, warmup=2 if quick else 5)
    gemm = gemm_gflops(256 if quick else 1024, threads=threads, runs=3 if quick else 10)
    bw = memory_bandwidth(32 if quick else 256, runs=3 if quick else 8)
    return {
        "threads": threads,
        "conv": {"width": width, "size": list(size), "kernel": 3},
        "conv_int8_gmacs": round(i8["gmacs"], 2),
        "conv_fp32_gmacs": round(f32["gmacs"], 2),
        "int8_over_fp32": round(i8["gmacs"] / f32["gmacs"], 3),
        "gemm_fp32_gflops": round(gemm["gflops"], 2),
        "membw_gbs": round(bw["gbs"], 2),
    }


def ceiling_fraction(macs: float, latency_ms: float, ceiling_gmacs: float) -> Optional[float]:
    """Effective GMAC/s of a model (``macs`` per frame at ``latency_ms``) over the ceiling."""
    if latency_ms <= 0 or ceiling_gmacs <= 0:
        return None
    return macs / (latency_ms * 1e-3) / 1e9 / ceiling_gmacs


if __name__ == "__main__":
    print(json.dumps(measure_limits(), indent=2))
