"""The TensorRT ONNX checker (export/trt_check.py) on small hand-made graphs: each rule names its node.

onnx only: no torch, no TensorRT. The exported flavours are checked in tests/test_export_trt.py.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgehaze.export.trt_check import check_model, gpu_commands  # noqa: E402

PROFILE = {"image": {"min": [1, 32, 32, 3], "opt": [1, 480, 640, 3], "max": [1, 1080, 1920, 3]}}


def _graph(nodes, inits, opset: int = 17, inputs=None):  # type: ignore[no-untyped-def]
    inputs = inputs or [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, "height", "width", 3])]
    g = helper.make_graph(nodes, "g", inputs,
                          [helper.make_tensor_value_info("dehazed", TensorProto.UINT8, [1, "height", "width", 3])],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _trt_style(act_zp=np.int8(0), act_scale=np.float32(0.05), transpose_first=False, extra=()):
    """image -Cast-> NCHW -Q/DQ-> Conv (DQ'd int8 per-channel weights) -> Relu -> Round/Clip -> NHWC -Cast-> dehazed."""
    w = np.random.default_rng(0).integers(-100, 100, (3, 3, 1, 1)).astype(np.int8)
    inits = [numpy_helper.from_array(np.asarray(act_scale, np.float32), "act_scale"),
             numpy_helper.from_array(np.asarray(act_zp), "act_zp"),
             numpy_helper.from_array(w, "w_q"), numpy_helper.from_array(np.full(3, 0.01, np.float32), "w_scale"),
             numpy_helper.from_array(np.zeros(3, np.int8), "w_zp"), numpy_helper.from_array(np.float32(0), "lo"),
             numpy_helper.from_array(np.float32(255), "hi")]
    if transpose_first:  # the CPU flavour's way: layout on bytes, then the Cast
        head = [helper.make_node("Transpose", ["image"], ["img_u8"], perm=[0, 3, 1, 2], name="to_nchw_bytes"),
                helper.make_node("Cast", ["img_u8"], ["x"], to=TensorProto.FLOAT, name="cast_in")]
    else:
        head = [helper.make_node("Cast", ["image"], ["xf"], to=TensorProto.FLOAT, name="cast_in"),
                helper.make_node("Transpose", ["xf"], ["x"], perm=[0, 3, 1, 2], name="to_nchw")]
    nodes = head + [
        helper.make_node("QuantizeLinear", ["x", "act_scale", "act_zp"], ["xq"], name="q_act"),
        helper.make_node("DequantizeLinear", ["xq", "act_scale", "act_zp"], ["xdq"], name="dq_act"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], axis=0, name="dq_w"),
        helper.make_node("Conv", ["xdq", "w"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        *extra,
        helper.make_node("Round", ["r"], ["rr"], name="round"),
        helper.make_node("Clip", ["rr", "lo", "hi"], ["cl"], name="clip"),
        helper.make_node("Transpose", ["cl"], ["nhwc"], perm=[0, 2, 3, 1], name="to_nhwc"),
        helper.make_node("Cast", ["nhwc"], ["dehazed"], to=TensorProto.UINT8, name="cast_out"),
    ]
    return _graph(nodes, inits)


def _where(report, rule):  # type: ignore[no-untyped-def]
    return sorted({f.node for f in report.findings if f.rule == rule})


def test_a_tensorrt_style_graph_passes_and_runs():
    m = _trt_style()
    onnx.checker.check_model(m)
    report = check_model(m, PROFILE)
    assert report.ok() and report.ok("8.6") and report.ok("10"), report.lines()
    ort = pytest.importorskip("onnxruntime")
    out = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"image": np.zeros((1, 8, 8, 3), np.uint8)})[0]
    assert out.shape == (1, 8, 8, 3) and out.dtype == np.uint8


def test_uint8_inside_names_the_node():
    report = check_model(_trt_style(transpose_first=True), PROFILE)
    assert report.rules() == ["uint8"] and _where(report, "uint8") == ["cast_in", "to_nchw_bytes"]
    text = "\n".join(report.lines())
    assert "Transpose node 'to_nchw_bytes': reads the uint8 graph input 'image'" in text
    assert "Cast node 'cast_in': reads the uint8 tensor 'img_u8' inside the graph" in text


def test_asymmetric_uint8_quantisation_names_type_and_zero_point():
    report = check_model(_trt_style(act_zp=np.uint8(128)), PROFILE)
    assert _where(report, "qdq-type") == ["dq_act", "q_act"]
    assert _where(report, "qdq-zero-point") == ["dq_act", "q_act"]
    assert "uint8" in report.rules()  # the quantised tensor itself is uint8 inside the graph
    assert not report.ok("8.6") and not report.ok("10")


@pytest.mark.parametrize("scale", [np.float32(-0.1), np.float32(0.0), np.float32(np.inf)])
def test_scales_must_be_positive_and_finite(scale):
    report = check_model(_trt_style(act_scale=scale), PROFILE)
    assert _where(report, "qdq-scale") == ["dq_act", "q_act"]


def test_activations_are_quantised_per_tensor():
    m = _trt_style(act_scale=np.full(3, 0.05, np.float32), act_zp=np.zeros(3, np.int8))
    for n in m.graph.node:
        if n.name in ("q_act", "dq_act"):
            n.attribute.extend([helper.make_attribute("axis", 1)])
    report = check_model(m, PROFILE)
    assert _where(report, "qdq-per-tensor") == ["dq_act", "q_act"]
    assert "qdq-per-tensor" not in {f.rule for f in report.findings if f.node == "dq_w"}  # weights may be per channel


def test_unsupported_ops_and_custom_domains():
    extra = (helper.make_node("Identity", ["r"], ["r2"], name="plain"),
             helper.make_node("Unique", ["r2"], ["u"], name="uniq"),
             helper.make_node("FusedConv", ["r2"], ["fc"], domain="com.microsoft", name="ms_op"))
    report = check_model(_trt_style(extra=extra), PROFILE)
    assert _where(report, "op") == ["ms_op", "uniq"]
    assert any("marked unsupported" in f.message for f in report.findings if f.node == "uniq")


def test_types_follow_each_release():
    """Relu on int32: listed for TensorRT 10, not 8.6; MatMul on int32: neither."""
    i32 = [helper.make_tensor_value_info("a", TensorProto.INT32, [2, 2])]
    nodes = [helper.make_node("Relu", ["a"], ["r"], name="relu_i32"),
             helper.make_node("MatMul", ["r", "r"], ["mm"], name="matmul_i32"),
             helper.make_node("Cast", ["mm"], ["dehazed"], to=TensorProto.UINT8, name="cast_out")]
    m = _graph(nodes, [], inputs=i32)
    del m.graph.output[:]
    m.graph.output.extend([helper.make_tensor_value_info("dehazed", TensorProto.UINT8, [2, 2])])
    report = check_model(m)
    by_node: dict = {}
    for f in report.findings:
        if f.rule == "dtype":
            by_node.setdefault(f.node, set()).update(f.releases)
    assert by_node == {"relu_i32": {"8.6"}, "matmul_i32": {"8.6", "10"}}


def test_int64_counts_as_int32_on_8_6():
    """TensorRT 8.6 casts INT64 down to INT32 (documented), so shape arithmetic in int64 passes."""
    inp = [helper.make_tensor_value_info("a", TensorProto.INT64, [2])]
    nodes = [helper.make_node("Add", ["a", "a"], ["s"], name="add_i64"),
             helper.make_node("Cast", ["s"], ["dehazed"], to=TensorProto.UINT8, name="cast_out")]
    m = _graph(nodes, [], inputs=inp)
    assert "dtype" not in check_model(m).rules()


def test_axes_must_be_constants_and_opset_in_range():
    extra = (helper.make_node("Shape", ["r"], ["shp"], name="shape"),
             helper.make_node("Slice", ["shp", "one", "two"], ["ax"], name="axis_from_shape"),
             helper.make_node("Unsqueeze", ["r", "ax"], ["ru"], name="unsq_dynamic_axes"))
    m = _trt_style(extra=extra)
    m.graph.initializer.extend([numpy_helper.from_array(np.array([1], np.int64), "one"),
                                numpy_helper.from_array(np.array([2], np.int64), "two")])
    assert _where(check_model(m, PROFILE), "const-input") == ["unsq_dynamic_axes"]
    m.opset_import[0].version = 21
    opset = [f for f in check_model(m, PROFILE).findings if f.rule == "opset"]
    assert len(opset) == 2 and {f.releases for f in opset} == {("8.6",), ("10",)}


def test_every_dynamic_input_needs_a_profile():
    m = _trt_style()
    report = check_model(m)
    assert _where(report, "profile") == ["image"] and "height, width" in str(report.findings[0])
    bad = {"image": {"min": [1, 32, 32, 4], "opt": [1, 480, 640, 3], "max": [1, 1080, 1920, 3]}}
    assert "fixed at 3" in str(check_model(m, bad).findings[0])
    bad = {"image": {"min": [1, 640, 32, 3], "opt": [1, 480, 640, 3], "max": [1, 1080, 1920, 3]}}
    assert "does not hold" in str(check_model(m, bad).findings[0])
    assert _where(check_model(m, {**PROFILE, "depth_0": PROFILE["image"]}), "profile") == ["depth_0"]


def test_gpu_commands_carry_precision_and_profile(tmp_path):
    trtexec, poly = gpu_commands(tmp_path / "m.onnx", PROFILE, "int8")
    assert trtexec.startswith("trtexec --onnx=") and "--int8 --fp16" in trtexec
    assert "--minShapes=image:1x32x32x3" in trtexec and "--maxShapes=image:1x1080x1920x3" in trtexec
    assert f"--saveEngine={tmp_path / 'm.engine'}" in trtexec
    assert poly.startswith("polygraphy run") and "--trt --onnxrt" in poly and "--trt-opt-shapes image:[1,480,640,3]" in poly
    fixed = {"image": {k: [1, 48, 64, 3] for k in ("min", "opt", "max")}}
    trtexec, _ = gpu_commands("m.onnx", fixed, "fp16")
    assert "Shapes" not in trtexec and "--fp16" in trtexec and "--int8" not in trtexec


def test_checker_imports_without_torch():
    code = ("import sys; import edgehaze.export.trt_check, edgehaze.export.trt_ops; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
