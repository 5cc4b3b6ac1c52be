"""The fused full-resolution graph for correction-map backbones (``edge-*``).

A correction-map dehazer does almost nothing at full resolution - it
upsamples six smooth maps and applies ``J = K*I + B + I`` - yet the plain
export (``graphs.FullGraph``) spends a dozen full-resolution float passes on
it: Cast, /255, NHWC->NCHW transpose, the 6-channel Resize, two Slices,
Mul, Add, Add, Clip, *255, Round, Cast, NCHW->NHWC transpose. At 1080p each
pass moves 25-50 MB, which is most of the frame time.

This module builds the same function with the fewest full-resolution ops,
all in the frame's own NHWC layout::

    image (uint8 NHWC) --Transpose (bytes)--> NCHW --DequantizeLinear(1/255)--> x01 (float, [0, 1])
    x01 --core (AvgPool by scale, the network)--> maps (1x6xhxw, low res)
    maps --Slice, +1, *255 (low res)--> g = 255 (1 + K), b = 255 B   (1 x 3 x h x w each)
    G = Resize(g, sizes=Shape(x01)), B = Resize(b, sizes=Shape(x01))   (bilinear, half-pixel)
    QuantizeLinear(x01 * G + B, scale 1, zero point 0)   (round half to even, saturate to 0..255)
      --Transpose (bytes)--> dehazed (uint8 NHWC)

(``layout="nhwc"`` applies in the frame's layout instead; measured slower.)

``QuantizeLinear`` does the clamp, the rounding and the cast in one
vectorised pass, ``DequantizeLinear`` the cast and the /255. The core is a
separately exported ONNX graph (optionally INT8 by ORT static quantisation of
its convolutions), spliced in unchanged.

``internal_scale(model, s)`` gives a copy whose backbone (and CNN student)
works at ``1/s`` of the frame: the way a 1080p stream keeps the network's
cost near that of a 640x480 frame.
"""
from __future__ import annotations

import copy
import os
import tempfile
import warnings
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

#: op types the INT8 core quantises by default (the ones that pay, see benchmarks/README.md)
DEFAULT_QUANT_OPS = ("Conv", "Relu", "Add")
#: where the full-resolution apply runs ("nhwc" or "nchw"; see fused_graph)
DEFAULT_LAYOUT = "nchw"


def internal_scale(model: "torch.nn.Module", scale: int) -> "torch.nn.Module":  # noqa: F821
    """A copy of a DepthGuidedDehazer whose network runs at ``1/scale`` of the frame.

    Sets the edge backbone's ``scale`` and a CNN student's ``pool`` (their
    depth features keep matching: fusion blocks resize depth to the block's
    size). A model trained at one scale and run at another sees a smaller
    copy of the scene; ``benchmarks/pareto.py`` measures what that costs.
    """
    m = copy.deepcopy(model)
    if not hasattr(m.backbone, "scale"):
        raise ValueError(f"backbone {getattr(m.backbone, 'arch', '?')} has no internal scale")
    old = m.backbone.scale
    m.backbone.scale = int(scale)
    d = m.depth
    if d is not None and hasattr(d, "pool"):
        d.pool = max(1, int(round(d.pool * scale / old)))
        d.feature_strides = [float(d.pool * 2**i) for i in range(len(d.feature_strides))]
    return m


def export_core(model: "torch.nn.Module", trace_hw: Tuple[int, int] = (96, 128), opset: int = 17) -> "onnx.ModelProto":  # noqa: F821
    """The low-resolution part alone: ``x01`` (1x3xHxW float, dynamic) -> ``maps`` (1x6xhxw)."""
    from edgehaze.export.graphs import FloatCore, fold_batchnorm, has_correction_maps

    if not has_correction_maps(model):
        raise ValueError("the fused graph needs a correction-map backbone (edge-*)")
    return export_core_module(FloatCore(fold_batchnorm(copy.deepcopy(model)).eval()).eval(), trace_hw, opset)


def export_core_module(core: "torch.nn.Module", trace_hw: Tuple[int, int] = (96, 128), opset: int = 17) -> "onnx.ModelProto":  # noqa: F821
    """Export a ready core module (``FloatCore`` or NNCF's stripped QAT core): ``x01`` -> ``maps``."""
    import torch

    from edgehaze.export.onnx_export import export_module

    example = (torch.rand(1, 3, *trace_hw, generator=torch.Generator().manual_seed(0)),)
    return inline_constant_identities(export_module(core.eval(), example, ["x01"], ["maps"], dynamic=True, opset=opset))


def inline_constant_identities(model: "onnx.ModelProto") -> "onnx.ModelProto":  # noqa: F821
    """Replace ``Identity(initializer)`` nodes by a copy of the initializer.

    The TorchScript exporter deduplicates equal constants (e.g. the all-zero
    biases that folding untrained BatchNorms gives) and feeds the copies
    through Identity nodes. ORT's quantiser then cannot quantise those
    biases, and its QDQ fusion leaves such convolutions in float (a float
    Conv with dequantised weights: slower than no quantisation at all).
    """
    inits = {i.name: i for i in model.graph.initializer}
    keep = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            copy_ = type(inits[node.input[0]])()
            copy_.CopyFrom(inits[node.input[0]])
            copy_.name = node.output[0]
            model.graph.initializer.append(copy_)
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def quantize_core(core: "onnx.ModelProto", calib01: Sequence[np.ndarray],  # noqa: F821
                  op_types: Sequence[str] = DEFAULT_QUANT_OPS) -> "onnx.ModelProto":  # noqa: F821
    """ORT static INT8 (QDQ; per-channel int8 weights, uint8 activations, MinMax) of the core.

    ``calib01``: H x W x 3 float images in [0, 1] (8-bit values, as the
    graph sees them). Only ``op_types`` are quantised; the full-resolution
    AveragePool at the input is never quantised (a Q node there would be a
    full-resolution pass).
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    feeds = [{"x01": np.ascontiguousarray(np.transpose(np.rint(np.clip(c, 0, 1) * 255) / 255, (2, 0, 1))[None]
                                           .astype(np.float32))} for c in calib01]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "core.onnx"), os.path.join(tmp, "core.int8.onnx")
        onnx.save(core, src)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=list(op_types),
                            extra_options={"ActivationSymmetric": False})
        return onnx.load(dst)


def _const(name: str, value: np.ndarray) -> "onnx.TensorProto":  # noqa: F821
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(value), name)


def fused_graph(core: "onnx.ModelProto", channel_order: str = "RGB", layout: str = DEFAULT_LAYOUT,
                barrier: bool = True, apply: str = "float") -> "onnx.ModelProto":  # noqa: F821
    """Wrap a core (``x01`` -> ``maps``) into ``image`` uint8 NHWC -> ``dehazed`` uint8 NHWC (module docstring).

    ``layout``: where the full-resolution apply runs. "nhwc": in the frame's
    layout (DequantizeLinear on the frame, a float transpose feeds the core,
    the maps are resized straight to H x W x 3); "nchw": the uint8 frame is
    transposed (a byte-wide pass), dequantised once for both the core and
    the apply (ORT's NCHW bilinear kernel), and the uint8 result transposed
    back. Which is faster is measured (benchmarks/README.md).
    """
    import onnx
    from onnx import TensorProto, helper

    if layout not in ("nhwc", "nchw"):
        raise ValueError(f"layout {layout}: nhwc or nchw")
    bgr = channel_order.upper() == "BGR"
    nchw = layout == "nchw"
    g = core.graph
    pre = "fused/"
    c_axis = 1 if nchw else 3
    inits = [
        _const(pre + "inv255", np.array(1.0 / 255.0, np.float32)),
        _const(pre + "zp", np.array(0, np.uint8)),
        _const(pre + "one", np.array(1.0, np.float32)),
        _const(pre + "s255", np.array(255.0, np.float32)),
        _const(pre + "g_start", np.array([0], np.int64)),
        _const(pre + "b_start", np.array([3], np.int64)),
        _const(pre + "g_end", np.array([3], np.int64)),
        _const(pre + "b_end", np.array([6], np.int64)),
        _const(pre + "axis_c", np.array([c_axis], np.int64)),
        _const(pre + "rev", np.array([2, 1, 0], np.int64)),
    ]
    if nchw:  # transpose the bytes (1/4 of the float traffic), then one DequantizeLinear gives x01
        nodes = [helper.make_node("Transpose", ["image"], [pre + "image_nchw"], perm=[0, 3, 1, 2], name=pre + "to_nchw")]
        u8 = pre + "image_nchw"
        if bgr:
            nodes.append(helper.make_node("Gather", [u8, pre + "rev"], [pre + "image_rgb"], axis=1, name=pre + "bgr2rgb"))
            u8 = pre + "image_rgb"
        nodes.append(helper.make_node("DequantizeLinear", [u8, pre + "inv255", pre + "zp"], ["x01"], name=pre + "dequant"))
        x = "x01"
    else:
        nodes = [helper.make_node("DequantizeLinear", ["image", pre + "inv255", pre + "zp"], [pre + "x"], name=pre + "dequant")]
        x = pre + "x"
        core_in = x
        if bgr:  # the network wants RGB
            nodes.append(helper.make_node("Gather", [x, pre + "rev"], [pre + "x_rgb"], axis=3, name=pre + "bgr2rgb"))
            core_in = pre + "x_rgb"
        nodes.append(helper.make_node("Transpose", [core_in], ["x01"], perm=[0, 3, 1, 2], name=pre + "to_nchw"))
    nodes += list(g.node)
    maps = "maps"
    if nchw and barrier:
        # A reshape round trip: ORT's layout transformer does not move transposes through it, so
        # an INT8 core (which ORT runs in NHWC) does not drag the full-resolution Resize into
        # NHWC, where ORT's float bilinear kernel is about 2x slower.
        inits.append(_const(pre + "flat", np.array([1, 6, -1], np.int64)))
        nodes += [helper.make_node("Shape", ["maps"], [pre + "maps_shape"], name=pre + "maps_shape"),
                  helper.make_node("Reshape", ["maps", pre + "flat"], [pre + "maps_flat"], name=pre + "maps_flat"),
                  helper.make_node("Reshape", [pre + "maps_flat", pre + "maps_shape"], [pre + "maps_nchw"],
                                   name=pre + "maps_nchw")]
        maps = pre + "maps_nchw"
    if not nchw:
        nodes.append(helper.make_node("Transpose", ["maps"], [pre + "maps_nhwc"], perm=[0, 2, 3, 1], name=pre + "maps_nhwc"))
        maps = pre + "maps_nhwc"
    nodes += [
        helper.make_node("Slice", [maps, pre + "g_start", pre + "g_end", pre + "axis_c"], [pre + "k"], name=pre + "k"),
        helper.make_node("Slice", [maps, pre + "b_start", pre + "b_end", pre + "axis_c"], [pre + "b"], name=pre + "b"),
        helper.make_node("Add", [pre + "k", pre + "one"], [pre + "k1"], name=pre + "k_plus_1"),
        helper.make_node("Mul", [pre + "k1", pre + "s255"], [pre + "g_low"], name=pre + "g_255"),
        helper.make_node("Mul", [pre + "b", pre + "s255"], [pre + "b_low"], name=pre + "b_255"),
    ]
    g_low, b_low = pre + "g_low", pre + "b_low"
    if bgr and not nchw:  # apply in the frame's (BGR) order
        nodes += [helper.make_node("Gather", [g_low, pre + "rev"], [pre + "g_low_o"], axis=3, name=pre + "g_bgr"),
                  helper.make_node("Gather", [b_low, pre + "rev"], [pre + "b_low_o"], axis=3, name=pre + "b_bgr")]
        g_low, b_low = pre + "g_low_o", pre + "b_low_o"
    resize = dict(mode="linear", coordinate_transformation_mode="half_pixel", nearest_mode="floor")
    src = "x01" if nchw else x
    nodes += [
        helper.make_node("Shape", [src], [pre + "size"], name=pre + "size"),
        helper.make_node("Resize", [g_low, "", "", pre + "size"], [pre + "G"], name=pre + "resize_gain", **resize),
        helper.make_node("Resize", [b_low, "", "", pre + "size"], [pre + "B"], name=pre + "resize_offset", **resize),
        helper.make_node("Mul", [src, pre + "G"], [pre + "xg"], name=pre + "apply_gain"),
        helper.make_node("Add", [pre + "xg", pre + "B"], [pre + "j"], name=pre + "apply_offset"),
    ]
    if nchw:
        nodes.append(helper.make_node("QuantizeLinear", [pre + "j", pre + "one", pre + "zp"], [pre + "j8"], name=pre + "to_uint8"))
        last = pre + "j8"
        if bgr:
            nodes.append(helper.make_node("Gather", [last, pre + "rev"], [pre + "j8_bgr"], axis=1, name=pre + "rgb2bgr"))
            last = pre + "j8_bgr"
        nodes.append(helper.make_node("Transpose", [last], ["dehazed"], perm=[0, 2, 3, 1], name=pre + "to_nhwc"))
    else:
        nodes.append(helper.make_node("QuantizeLinear", [pre + "j", pre + "one", pre + "zp"], ["dehazed"], name=pre + "to_uint8"))
    if apply == "uint8":
        nodes, inits = _uint8_apply(nodes, inits, pre, bgr)
    graph = helper.make_graph(
        nodes, "edgehaze_fused",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, "height", "width", 3])],
        [helper.make_tensor_value_info("dehazed", TensorProto.UINT8, [1, "height", "width", 3])],
        list(g.initializer) + inits,
    )
    model = helper.make_model(graph, opset_imports=list(core.opset_import))
    model.ir_version = core.ir_version
    onnx.checker.check_model(model)
    return model


#: uint8 apply: gain (1 + K) in [0, 2] and offset 255 B in [-256, 254], 8 bits each
GAIN_SCALE, OFFSET_SCALE, OFFSET_ZP, PRODUCT_SCALE = 2.0 / 255.0, 2.0, 128, 2.0


def _uint8_apply(nodes: list, inits: list, pre: str, bgr: bool) -> tuple:
    """Replace the float full-resolution tail by QDQ-wrapped uint8 arithmetic in the frame's layout.

    The low-resolution maps are quantised (gain ``1 + K`` with step 2/255,
    offset ``255 B`` with step 2), resized as uint8 (ORT's integer NHWC
    bilinear kernel) and applied as DQ -> Mul -> Q and DQ -> Add -> Q, which
    ORT fuses into QLinearMul / QLinearAdd: every full-resolution tensor is
    one byte per value. Costs up to ~2 levels of rounding per pixel.
    """
    from onnx import helper

    keep_until = next(i for i, n in enumerate(nodes) if n.name == pre + "k")
    nodes = nodes[:keep_until]
    maps = nodes[-1].output[0] if nodes[-1].name.startswith(pre + "maps") else "maps"
    inits = inits + [
        _const(pre + "s_gain", np.array(GAIN_SCALE, np.float32)), _const(pre + "s_off", np.array(OFFSET_SCALE, np.float32)),
        _const(pre + "zp_off", np.array(OFFSET_ZP, np.uint8)), _const(pre + "s_prod", np.array(PRODUCT_SCALE, np.float32)),
        _const(pre + "unit", np.array(1.0, np.float32)), _const(pre + "c1", np.array([1], np.int64)),
    ]
    nodes += [
        helper.make_node("Transpose", [maps], [pre + "m_nhwc"], perm=[0, 2, 3, 1], name=pre + "maps_nhwc"),
        helper.make_node("Slice", [pre + "m_nhwc", pre + "g_start", pre + "g_end", pre + "axis_last"], [pre + "k"], name=pre + "k"),
        helper.make_node("Slice", [pre + "m_nhwc", pre + "b_start", pre + "b_end", pre + "axis_last"], [pre + "b"], name=pre + "b"),
        helper.make_node("Add", [pre + "k", pre + "unit"], [pre + "gain"], name=pre + "k_plus_1"),
        helper.make_node("Mul", [pre + "b", pre + "s255"], [pre + "off"], name=pre + "b_255"),
    ]
    inits.append(_const(pre + "axis_last", np.array([3], np.int64)))
    g, o = pre + "gain", pre + "off"
    if bgr:
        nodes += [helper.make_node("Gather", [g, pre + "rev"], [g + "_bgr"], axis=3, name=pre + "g_bgr"),
                  helper.make_node("Gather", [o, pre + "rev"], [o + "_bgr"], axis=3, name=pre + "b_bgr")]
        g, o = g + "_bgr", o + "_bgr"
    resize = dict(mode="linear", coordinate_transformation_mode="half_pixel", nearest_mode="floor")
    nodes += [
        helper.make_node("QuantizeLinear", [g, pre + "s_gain", pre + "zp"], [pre + "g8"], name=pre + "q_gain"),
        helper.make_node("QuantizeLinear", [o, pre + "s_off", pre + "zp_off"], [pre + "o8"], name=pre + "q_off"),
        helper.make_node("Shape", ["image"], [pre + "size"], name=pre + "size"),
        helper.make_node("Resize", [pre + "g8", "", "", pre + "size"], [pre + "G8"], name=pre + "resize_gain", **resize),
        helper.make_node("Resize", [pre + "o8", "", "", pre + "size"], [pre + "O8"], name=pre + "resize_offset", **resize),
        helper.make_node("DequantizeLinear", ["image", pre + "unit", pre + "zp"], [pre + "xf"], name=pre + "dq_image"),
        helper.make_node("DequantizeLinear", [pre + "G8", pre + "s_gain", pre + "zp"], [pre + "Gf"], name=pre + "dq_gain"),
        helper.make_node("Mul", [pre + "xf", pre + "Gf"], [pre + "xg"], name=pre + "apply_gain"),
        helper.make_node("QuantizeLinear", [pre + "xg", pre + "s_prod", pre + "zp"], [pre + "xg8"], name=pre + "q_prod"),
        helper.make_node("DequantizeLinear", [pre + "xg8", pre + "s_prod", pre + "zp"], [pre + "xgf"], name=pre + "dq_prod"),
        helper.make_node("DequantizeLinear", [pre + "O8", pre + "s_off", pre + "zp_off"], [pre + "Of"], name=pre + "dq_off"),
        helper.make_node("Add", [pre + "xgf", pre + "Of"], [pre + "j"], name=pre + "apply_offset"),
        helper.make_node("QuantizeLinear", [pre + "j", pre + "unit", pre + "zp"], ["dehazed"], name=pre + "to_uint8"),
    ]
    return nodes, inits


def reference_apply(image_u8: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """The unfused reference in numpy/torch terms: the export's ``FullGraph`` tail.

    ``image_u8``: 1 x H x W x 3 uint8; ``maps``: 1 x 6 x h x w float.
    Returns 1 x H x W x 3 uint8 = round(clamp(apply_maps(x, maps), 0, 1) * 255).
    """
    import torch

    from edgehaze.models.backbones.edge import EdgeDehazer

    x = torch.from_numpy(image_u8).permute(0, 3, 1, 2).float() / 255.0
    y = EdgeDehazer.apply_maps(x, torch.from_numpy(maps))
    return torch.round(torch.clamp(y, 0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def export_fused(model: "torch.nn.Module", precision: str = "fp32", calib01: Optional[Sequence[np.ndarray]] = None,  # noqa: F821
                 channel_order: str = "RGB", op_types: Optional[Sequence[str]] = None,
                 layout: str = DEFAULT_LAYOUT) -> "onnx.ModelProto":  # noqa: F821
    """Core export (+ INT8 PTQ) and the fused wrapper in one call."""
    core = export_core(model)
    if precision == "int8":
        if not calib01:
            raise ValueError("INT8 needs calibration images")
        core = quantize_core(core, calib01, op_types or DEFAULT_QUANT_OPS)
    elif precision != "fp32":
        raise ValueError(f"precision {precision}: fp32 or int8")
    return fused_graph(core, channel_order, layout)


def uint8_difference(a: "onnx.ModelProto", b: "onnx.ModelProto", sizes: Sequence[Tuple[int, int]], seed: int = 3) -> int:  # noqa: F821
    """Largest uint8 difference between two ``image`` -> ``dehazed`` graphs on random images of ``sizes``."""
    from edgehaze.export.onnx_export import session

    sa, sb = session(a.SerializeToString()), session(b.SerializeToString())
    rng = np.random.default_rng(seed)
    worst = 0
    for h, w in sizes:
        img = rng.integers(0, 256, size=(1, h, w, 3), dtype=np.uint8)
        ya, yb = sa.run(["dehazed"], {"image": img})[0], sb.run(["dehazed"], {"image": img})[0]
        worst = max(worst, int(np.abs(ya.astype(np.int16) - yb.astype(np.int16)).max()))
    return worst


__all__ = ["inline_constant_identities", "internal_scale", "export_core", "export_core_module", "uint8_difference", "quantize_core", "fused_graph", "export_fused", "reference_apply",
           "DEFAULT_QUANT_OPS"]
