"""The fused full-resolution graph for correction-map backbones (``edge-*``).

A correction-map dehazer does almost nothing at full resolution: it pools
the frame for its low-resolution network, upsamples six smooth maps and
applies ``J = K*I + B + I``. The plain export (``graphs.FullGraph``) spends
a dozen full-resolution float passes on that (Cast, /255, transposes,
AveragePool, a 6-channel Resize, Slices, Mul, Add, Add, Clip, *255, Round,
Cast, transpose), and ONNX Runtime's bilinear Resize alone costs ~2 ns per
output value on this CPU (~13 ms for six 1080p maps). This module builds the
same function from the ops ORT runs near memory speed::

    image (uint8 NHWC) -Transpose (bytes)-> NCHW -Pad (bytes, to multiples of s)->
        -Cast-> x255 (float, 0..255, zero-padded)
    x255 -Reshape, ReduceSum, ReduceSum, x 1/(255 count) (low res)-> x_low   (the pooling, as the model does it)
    x_low -core (the network, INT8 or float)-> maps (1 x 6 x h x w)
    maps [-guided refit on x_low (edge.guided_refit, low resolution), when the backbone's apply is "guided"]
    maps -> 1 + K, 255 B -edge Pad, 3-tap stack, MatMul (w -> W: 3 x s weights)->
        -3-tap stack, MatMul (h -> H: s x 3 weights)-> G = 1 + K, B = 255 B at full size
    QuantizeLinear(x255 * G + B, scale 1)  (clamp, round half to even, cast in one pass)
        -Slice (crop the padding, bytes)-> -Transpose (bytes)-> dehazed (uint8 NHWC)

Bilinear upsampling by an integer factor ``s`` (half-pixel centres) is a
3-tap filter whose weights depend only on the position inside a cell, so
each direction is one batched matrix product with K = 3 over the
edge-padded maps: exact, and 4-5x faster than ORT's Resize here
(benchmarks/README.md). The pooling is a reshape and two reductions over
the zero-padded frame, divided by each cell's count of real pixels (ceil
mode without padding, as ``F.avg_pool2d(ceil_mode=True,
count_include_pad=False)``). Frames whose sides are not multiples of ``s``
are padded with zeros as bytes and cropped as bytes; the function is
:func:`edgehaze.models.backbones.edge.apply_correction` at every size.

The core is exported separately (:func:`export_core`; optionally INT8 by
ORT static quantisation, :func:`quantize_core`) with the pooling taken out
(:func:`prepooled`), so no quantised op ever sees a full-resolution tensor.
BGR frames are handled at low resolution (the pooled input and the maps are
reordered), never by a full-resolution gather.

``internal_scale(model, s)`` gives a copy whose backbone (and CNN student)
works at ``1/s`` of the frame: the way a 1080p stream keeps the network's
cost near that of a 640x480 frame.
"""
from __future__ import annotations

import copy
import json
import os
import tempfile
import warnings
from typing import Optional, Sequence, Tuple

import numpy as np

#: op types the INT8 core quantises by default (the ones that pay, see benchmarks/README.md)
DEFAULT_QUANT_OPS = ("Conv", "Relu", "Add")
#: metadata keys a core carries so that :func:`fused_graph` knows how to wrap it
META_SCALE, META_PREPOOL = "edgehaze.fused.scale", "edgehaze.fused.prepool"
#: the guided refit's radius (cells) and per-channel eps, when the backbone applies its maps guided
META_GUIDE = "edgehaze.fused.guide"


def guide_spec(model: "torch.nn.Module") -> Optional[dict]:  # noqa: F821
    """``{"radius", "eps"}`` of an edge backbone with ``apply="guided"``, else None."""
    b = model.backbone
    if getattr(b, "apply", "bilinear") != "guided":
        return None
    return {"radius": int(b.guide_radius), "eps": [float(v) for v in b.guide_eps().detach().cpu()]}


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


def prepool_factor(model: "torch.nn.Module") -> int:  # noqa: F821
    """How much of the model's input pooling can move out of the core: ``scale`` or 1.

    The backbone pools the frame by ``scale``; a CNN student pools it by
    ``pool``. When ``pool`` is a multiple of ``scale`` (or there is no depth
    branch) the whole network can take the frame pooled once by ``scale``,
    outside the core. Otherwise (a depth model that needs the full frame, such
    as a DAv2 teacher) the core takes the full frame (factor 1).
    """
    s = int(getattr(model.backbone, "scale", 1))  # full-resolution backbones have no scale
    d = model.depth
    if s <= 1:
        return 1
    if d is None:
        return s
    pool = getattr(d, "pool", None)
    return s if isinstance(pool, int) and pool % s == 0 else 1


def prepooled(model: "torch.nn.Module", factor: int) -> "torch.nn.Module":  # noqa: F821
    """A copy whose network takes its input already average-pooled by ``factor``.

    Same numbers as ``model`` on the pooled input (the backbone's and the
    student's first op is that same ceil-mode average pool); only the
    pooling moves out (into the fused graph, where it is a cheap reduction).
    """
    m = copy.deepcopy(model)
    if factor == 1:
        return m
    if m.backbone.scale % factor:
        raise ValueError(f"prepool {factor} does not divide the backbone scale {m.backbone.scale}")
    m.backbone.scale //= factor
    d = m.depth
    if d is not None:
        if not hasattr(d, "pool") or d.pool % factor:
            raise ValueError(f"prepool {factor}: the depth branch cannot take a pooled input")
        d.pool //= factor  # feature_strides stay: they are nominal strides in frame pixels
    return m


def pool_image(img: np.ndarray, factor: int) -> np.ndarray:
    """H x W x C float image average-pooled by ``factor`` (ceil mode, partial cells average what they hold)."""
    if factor == 1:
        return img
    rows, cols = np.arange(0, img.shape[0], factor), np.arange(0, img.shape[1], factor)
    sums = np.add.reduceat(np.add.reduceat(img.astype(np.float64), rows, axis=0), cols, axis=1)
    counts = np.minimum(factor, img.shape[0] - rows)[:, None] * np.minimum(factor, img.shape[1] - cols)[None, :]
    return (sums / counts[..., None]).astype(np.float32)


def export_core(model: "torch.nn.Module", trace_hw: Tuple[int, int] = (24, 32), opset: int = 17) -> "onnx.ModelProto":  # noqa: F821
    """The network alone: ``x_low`` (1x3xhxw: the frame pooled by :func:`prepool_factor`) -> ``maps``."""
    from edgehaze.export.graphs import FloatCore, fold_batchnorm, has_correction_maps

    if not has_correction_maps(model):
        raise ValueError("the fused graph needs a correction-map backbone (edge-*)")
    factor = prepool_factor(model)
    core = FloatCore(prepooled(fold_batchnorm(copy.deepcopy(model)), factor)).eval()
    hw = trace_hw if factor > 1 else (trace_hw[0] * 4, trace_hw[1] * 4)
    return export_core_module(core, int(model.backbone.scale), factor, hw, opset, guide=guide_spec(model))


def export_core_module(core: "torch.nn.Module", scale: int, prepool: int, trace_hw: Tuple[int, int] = (24, 32),  # noqa: F821
                       opset: int = 17, guide: Optional[dict] = None) -> "onnx.ModelProto":  # noqa: F821
    """Export a ready core module (``FloatCore`` of a :func:`prepooled` model, or NNCF's stripped QAT core).

    ``scale``: the maps' stride in frame pixels (the backbone's scale before
    prepooling); ``prepool``: the factor the core's input is pooled by;
    ``guide``: :func:`guide_spec` of the model (the fused graph refits the maps).
    """
    import torch

    example = torch.rand(1, 3, *trace_hw, generator=torch.Generator().manual_seed(0))
    return _export(core, (example,), ["x_low"], ["maps"], scale, prepool, opset, guide)


def _export(module: "torch.nn.Module", example: tuple, inputs: Sequence[str], outputs: Sequence[str],  # noqa: F821
            scale: int, prepool: int, opset: int, guide: Optional[dict] = None) -> "onnx.ModelProto":  # noqa: F821
    """Trace a core (dynamic sizes), inline its constant identities, record ``scale`` / ``prepool`` / ``guide``."""
    from edgehaze.export.onnx_export import export_module

    model = inline_constant_identities(export_module(module.eval(), example, list(inputs), list(outputs), dynamic=True,
                                                     opset=opset))
    _set_meta(model, scale, prepool, guide)
    return model


def export_split_cores(model: "torch.nn.Module", trace_hw: Tuple[int, int] = (24, 32),  # noqa: F821
                       opset: int = 17) -> "Tuple[onnx.ModelProto, onnx.ModelProto]":  # noqa: F821
    """The network cut at the depth features, for streams that refresh depth every N frames.

    ``depth core``: ``x_low`` -> ``depth_0 .. depth_{k-1}`` (the used levels);
    ``fuse core``: ``x_low`` + those features -> ``maps``. Needs the fused
    layout (:func:`prepool_factor` > 1: a CNN student pooling by a multiple
    of the backbone's scale).
    """
    import torch

    from edgehaze.export.graphs import DepthCore, FloatCore, depth_feature_specs, fold_batchnorm

    factor = prepool_factor(model)
    if model.depth is None or factor == 1:
        raise ValueError("split cores need a depth student that takes the pooled frame (prepool_factor > 1)")
    m = prepooled(fold_batchnorm(copy.deepcopy(model)).eval(), factor)
    names = [f["name"] for f in depth_feature_specs(model)]
    depth = DepthCore(m).eval()
    fuse = FloatCore(m).eval()
    example = torch.rand(1, 3, *trace_hw, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = depth(example)
    scale = int(model.backbone.scale)
    return (_export(depth, (example,), ["x_low"], names, scale, factor, opset),
            _export(fuse, (example, *feats), ["x_low", *names], ["maps"], scale, factor, opset, guide_spec(model)))


def _set_meta(model: "onnx.ModelProto", scale: int, prepool: int, guide: Optional[dict] = None) -> None:  # noqa: F821
    import onnx

    ours = (META_SCALE, META_PREPOOL, META_GUIDE)
    keep = {p.key: p.value for p in model.metadata_props if p.key not in ours}
    new = {META_SCALE: str(scale), META_PREPOOL: str(prepool)}
    if guide is not None:
        new[META_GUIDE] = json.dumps(guide)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {**keep, **new})


def guide_meta(core: "onnx.ModelProto") -> Optional[dict]:  # noqa: F821
    """The guided refit recorded on a core (:func:`guide_spec`), or None (bilinear apply)."""
    props = {p.key: p.value for p in core.metadata_props}
    return json.loads(props[META_GUIDE]) if META_GUIDE in props else None


def core_meta(core: "onnx.ModelProto") -> Tuple[int, int]:  # noqa: F821
    """``(scale, prepool)`` recorded on a core by :func:`export_core_module`."""
    props = {p.key: p.value for p in core.metadata_props}
    if META_SCALE not in props or META_PREPOOL not in props:
        raise ValueError("this core carries no edgehaze.fused scale/prepool metadata; export it with export_core")
    return int(props[META_SCALE]), int(props[META_PREPOOL])


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
                  op_types: Sequence[str] = DEFAULT_QUANT_OPS,
                  extra_inputs: Optional["onnx.ModelProto"] = None,  # noqa: F821
                  target: str = "cpu") -> "onnx.ModelProto":  # noqa: F821
    """ORT static INT8 (QDQ; per-channel int8 weights, percentile activation ranges) of the core.

    ``calib01``: H x W x 3 float images in [0, 1] at frame resolution
    (rounded to 8-bit values and pooled as the fused graph does before the
    core sees them). Only ``op_types`` are quantised. ``extra_inputs``: for a
    fuse core, the (float) depth core whose outputs feed its other inputs.
    ``target``: the activations' flavour (cpu: uint8 asymmetric; trt: int8
    symmetric, :func:`edgehaze.export.quantize.ort_static_options`).
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    from edgehaze.export.quantize import float_nodes, ort_static_options

    scale, prepool = core_meta(core)
    feeds = [{"x_low": np.ascontiguousarray(np.transpose(pool_image(np.rint(np.clip(c, 0, 1) * 255) / 255, prepool),
                                                         (2, 0, 1))[None].astype(np.float32))} for c in calib01]
    if extra_inputs is not None:
        from edgehaze.export.onnx_export import session

        dsess = session(extra_inputs.SerializeToString())
        names = [o.name for o in dsess.get_outputs()]
        for f in feeds:
            f.update(zip(names, dsess.run(names, {"x_low": f["x_low"]})))

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
            quantize_static(src, dst, Reader(), op_types_to_quantize=list(op_types), nodes_to_exclude=float_nodes(core),
                            **ort_static_options(target))
        out = onnx.load(dst)
    _set_meta(out, scale, prepool, guide_meta(core))
    return out


class _Builder:
    """Appends nodes and constants under the ``fused/`` prefix (names stay unique and readable)."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: list = []
        self._consts: dict = {}

    def const(self, name: str, value: np.ndarray) -> str:
        """An initializer ``fused/name``; asking again for the same name and value gives the same one."""
        from onnx import numpy_helper

        value = np.asarray(value)
        full = "fused/" + name
        if full in self._consts:
            old = self._consts[full]
            if old.dtype != value.dtype or not np.array_equal(old, value):
                raise ValueError(f"constant {full} defined twice with different values")
            return full
        self._consts[full] = value
        self.inits.append(numpy_helper.from_array(value, full))
        return full

    def op(self, op_type: str, inputs: Sequence[str], name: str, **attrs) -> str:  # type: ignore[no-untyped-def]
        from onnx import helper

        out = "fused/" + name
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def rename_output(self, old: str, new: str) -> None:
        """Give the last node producing ``old`` the graph-level name ``new``."""
        for n in reversed(self.nodes):
            if old in n.output:
                n.output[list(n.output).index(old)] = new
                return
        raise KeyError(old)


def upsample_weights(scale: int) -> np.ndarray:
    """``scale x 3``: the bilinear (half-pixel) weights of cells ``i-1, i, i+1`` for each position in cell ``i``.

    Position ``b`` of a cell samples the map at ``i + d``, ``d = (b + 0.5) / scale - 0.5``
    in ``(-0.5, 0.5)``: weight ``-d`` on the previous cell (``d < 0``), ``1 - |d|`` on its
    own, ``d`` on the next (``d > 0``). With the maps edge-padded by one cell this
    is exactly ``F.interpolate(scale_factor=scale, mode="bilinear", align_corners=False)``.
    """
    d = (np.arange(scale, dtype=np.float64) + 0.5) / scale - 0.5
    return np.stack([np.maximum(0.0, -d), 1.0 - np.abs(d), np.maximum(0.0, d)], axis=1).astype(np.float32)


def _stack3(b: _Builder, x: str, axis: int, name: str) -> str:
    """``x`` (edge-padded by one along ``axis``) -> its three shifted views stacked on a new axis after ``axis``."""
    ax = b.const(f"{name}_axis", np.array([axis], np.int64))
    views = []
    for k, (lo, hi) in enumerate(((0, -2), (1, -1), (2, np.iinfo(np.int64).max))):
        v = b.op("Slice", [x, b.const(f"{name}_lo{k}", np.array([lo], np.int64)),
                           b.const(f"{name}_hi{k}", np.array([hi], np.int64)), ax], f"{name}_tap{k}")
        views.append(b.op("Unsqueeze", [v, b.const(f"{name}_ax{k}", np.array([axis + 1], np.int64))], f"{name}_tap{k}_u"))
    return b.op("Concat", views, f"{name}_stack", axis=axis + 1)


def _barrier(b: _Builder, x: str, name: str) -> str:
    """A reshape round trip (free: ORT aliases reshapes) that ORT's transpose optimiser does not cross.

    Without it, an INT8 core (which ORT runs in NHWC) makes the optimiser
    push the frame's byte transpose down past the Pad and the conversion to
    float, and ORT then re-quantises and transposes the *float* frame: ~14 ms
    of extra full-resolution passes at 1080p (profiled).
    """
    shape = b.op("Shape", [x], f"{name}_shape")
    flat = b.op("Reshape", [x, b.const(f"{name}_flat_shape", np.array([-1], np.int64))], f"{name}_flat")
    return b.op("Reshape", [flat, shape], f"{name}_kept")


def _box(b: _Builder, x: str, radius: int, name: str) -> str:
    """Mean over (2r+1)^2 cells, borders averaging the cells that exist (``edge.box_mean``)."""
    k = 2 * radius + 1
    return b.op("AveragePool", [x], name, kernel_shape=[k, k], strides=[1, 1], pads=[radius] * 4, count_include_pad=0)


def _guided_refit(b: _Builder, guide: str, maps: str, spec: dict) -> str:
    """The low-resolution guided refit of the maps (:func:`edgehaze.models.backbones.edge.guided_refit`)."""
    r = int(spec["radius"])
    i64 = lambda name, v: b.const(name, np.array(v, np.int64))  # noqa: E731
    eps = b.const("guide_eps", np.asarray(spec["eps"], np.float32).reshape(1, 3, 1, 1))
    k = b.op("Slice", [maps, i64("g_k_lo", [0]), i64("g_k_hi", [3]), i64("g_axis", [1])], "guide_k")
    off = b.op("Slice", [maps, i64("g_b_lo", [3]), i64("g_b_hi", [6]), i64("g_axis2", [1])], "guide_b")
    one = b.const("guide_one", np.array(1.0, np.float32))
    gain = b.op("Add", [one, k], "guide_gain")
    target = b.op("Add", [b.op("Mul", [guide, gain], "guide_ig"), off], "guide_target")
    mean_i, mean_j = _box(b, guide, r, "guide_mean_i"), _box(b, target, r, "guide_mean_j")
    cov = b.op("Sub", [_box(b, b.op("Mul", [guide, target], "guide_ij"), r, "guide_mean_ij"),
                       b.op("Mul", [mean_i, mean_j], "guide_mi_mj")], "guide_cov")
    var = b.op("Sub", [_box(b, b.op("Mul", [guide, guide], "guide_ii"), r, "guide_mean_ii"),
                       b.op("Mul", [mean_i, mean_i], "guide_mi_mi")], "guide_var")
    num = b.op("Add", [cov, b.op("Mul", [eps, _box(b, gain, r, "guide_mean_gain")], "guide_prior")], "guide_num")
    a = b.op("Div", [num, b.op("Add", [var, eps], "guide_den")], "guide_a")
    bb = b.op("Sub", [mean_j, b.op("Mul", [a, mean_i], "guide_a_mi")], "guide_bb")
    k2 = b.op("Sub", [_box(b, a, r, "guide_mean_a"), one], "guide_k_refit")
    return b.op("Concat", [k2, _box(b, bb, r, "guide_mean_b")], "maps_refit", axis=1)


def fused_graph(core: "onnx.ModelProto", channel_order: str = "RGB", role: str = "full",  # noqa: F821
                target: str = "cpu") -> "onnx.ModelProto":  # noqa: F821
    """Wrap a core (``x_low`` -> ``maps``) into ``image`` uint8 NHWC -> ``dehazed`` uint8 NHWC (module docstring).

    The core's ``scale`` (the maps' stride) and ``prepool`` (what its input
    is pooled by: ``scale`` or 1) come from its metadata (:func:`core_meta`).
    ``role``: ``full`` (the single graph); ``depth`` (a depth core of
    :func:`export_split_cores`: ``image`` -> its depth features, no apply
    step); ``fuse`` (a fuse core: ``image`` + the depth features ->
    ``dehazed``). ``target``: ``cpu`` moves the frame as bytes (Transpose,
    Pad, Slice on uint8; one uint8 QuantizeLinear rounds); ``trt`` casts the
    frame to float first and ends in Round, Clip(0, 255), Cast, so uint8
    exists only at the graph's ends (what TensorRT accepts). Same numbers.
    """
    from onnx import TensorProto, helper

    if role not in ("full", "depth", "fuse"):
        raise ValueError(f"role {role}: full, depth or fuse")
    if target not in ("cpu", "trt"):
        raise ValueError(f"target {target}: cpu or trt")
    scale, prepool = core_meta(core)
    if prepool not in (1, scale):
        raise ValueError(f"core prepool {prepool}: must be 1 or the scale {scale}")
    bgr = channel_order.upper() == "BGR"
    b = _Builder()
    frame = _frame_input(b, scale, target)
    x_low = _pooled_input(b, frame, scale, prepool) if prepool > 1 else frame.x01_unpadded(b)
    if bgr:  # the network wants RGB: reorder its (low-resolution) input, never the frame
        x_low = b.op("Gather", [x_low, b.const("rev3", np.array([2, 1, 0], np.int64))], "x_low_rgb", axis=1)
    b.rename_output(x_low, "x_low")
    image_in = helper.make_tensor_value_info("image", TensorProto.UINT8, [1, "height", "width", 3])
    if role == "depth":
        return _assemble(core, b.nodes, b.inits, [image_in], list(core.graph.output))

    gain, offset = _full_maps(b, core, frame, scale, prepool, bgr)
    # 255 J = (255 x) (1 + K) + 255 B, to bytes, crop the padding, back to NHWC
    j = b.op("Add", [b.op("Mul", [frame.x255, gain], "apply_gain"), offset], "apply_offset")
    _frame_output(b, j, frame, scale, target)

    extra_inputs = [i for i in core.graph.input if i.name != "x_low"]
    if role == "fuse" and not extra_inputs:
        raise ValueError("role fuse needs a fuse core (x_low + depth features -> maps)")
    return _assemble(core, b.nodes, b.inits, [image_in, *extra_inputs],
                     [helper.make_tensor_value_info("dehazed", TensorProto.UINT8, [1, "height", "width", 3])])


class _Frame:
    """The frame's tensors in the fused graph: sizes, the padded float frame ``x255`` and how to get x in [0, 1]."""

    def __init__(self, hw: str, cells: str, img: str, img_p: str, x255: str, target: str) -> None:
        self.hw, self.cells, self.img, self.img_p, self.x255, self.target = hw, cells, img, img_p, x255, target

    def x01_unpadded(self, b: _Builder) -> str:
        """The whole frame in [0, 1] (scale 1: the core takes the frame itself)."""
        inv = b.const("inv255", np.array(1.0 / 255.0, np.float32))
        if self.target == "trt":
            return b.op("Mul", [self.img, inv], "x01_unpadded")
        return b.op("DequantizeLinear", [self.img, inv, b.const("zp", np.array(0, np.uint8))], "x01_unpadded")


def _frame_input(b: _Builder, scale: int, target: str) -> _Frame:
    """image -> NCHW, zero-padded to whole cells, as float 0..255 (``x255``); the frame's sizes."""
    from onnx import TensorProto

    i64 = lambda name, v: b.const(name, np.array(v, np.int64))  # noqa: E731
    if target == "trt":  # uint8 only at the input: one Cast, then everything in float
        src = b.op("Cast", ["image"], "image_f", to=TensorProto.FLOAT)
        img = b.op("Transpose", [src], "image_nchw", perm=[0, 3, 1, 2])
    else:  # bytes to NCHW behind a layout barrier
        src = "image"
        img = _barrier(b, b.op("Transpose", ["image"], "image_nchw", perm=[0, 3, 1, 2]), "image_nchw")
    # sizes: H, W of the frame; h, w = ceil(H / s), ceil(W / s); the padded frame is (h s) x (w s)
    s = i64("s", [scale])
    hw = b.op("Slice", [b.op("Shape", [src], "frame_shape"), i64("hw_lo", [1]), i64("hw_hi", [3])], "frame_hw")
    cells = b.op("Div", [b.op("Add", [hw, i64("s_minus_1", [scale - 1])], "hw_up"), s], "cells_hw")
    pad_hw = b.op("Sub", [b.op("Mul", [cells, s], "padded_hw"), hw], "pad_hw")
    img_p = img
    if scale > 1:
        pads = b.op("Concat", [i64("pads_head", [0, 0, 0, 0, 0, 0]), pad_hw], "pads", axis=0)
        pad_value = (b.const("pad_value", np.array(0.0, np.float32)) if target == "trt"
                     else b.const("zp", np.array(0, np.uint8)))
        img_p = b.op("Pad", [img, pads, pad_value], "image_padded", mode="constant")
    if target == "trt":
        x255 = img_p
    else:
        # Cast, not DequantizeLinear: ORT's QDQ passes would duplicate a DequantizeLinear per consumer
        # (one more full-resolution pass each); the 1/255 is folded into the low-resolution factors
        x255 = b.op("Cast", [img_p], "x255", to=TensorProto.FLOAT)
    return _Frame(hw, cells, img, img_p, x255, target)


def _pooled_input(b: _Builder, frame: _Frame, scale: int, prepool: int) -> str:
    """The frame pooled by s: sums over whole cells / real pixels per cell (ceil mode, no padding counted)."""
    from onnx import TensorProto

    i64 = lambda name, v: b.const(name, np.array(v, np.int64))  # noqa: E731
    s = i64("s", [scale])
    sum_w = b.op("ReduceSum", [b.op("Reshape", [frame.x255, i64("by_cols", [1, 3, -1, scale])], "x255_cols"),
                               i64("last_axis", [3])], "sum_cols", keepdims=0)
    rows_shape = b.op("Concat", [i64("rows_head", [1, 3, -1, scale]),
                                 b.op("Slice", [frame.cells, i64("w_lo", [1]), i64("w_hi", [2])], "cells_w")],
                      "rows_shape", axis=0)
    sums = b.op("ReduceSum", [b.op("Reshape", [sum_w, rows_shape], "x255_rows"), i64("row_axis", [3])], "sum_cells",
                keepdims=0)
    counts = []
    for k, axis_name in enumerate(("rows", "cols")):
        size = b.op("Slice", [frame.hw, i64(f"{axis_name}_lo", [k]), i64(f"{axis_name}_hi", [k + 1])],
                    f"frame_{axis_name}")
        start = b.op("Range", [i64(f"zero_{axis_name}", 0), b.op("Squeeze", [size], f"{axis_name}_scalar"),
                               i64(f"step_{axis_name}", scale)], f"{axis_name}_starts")
        n = b.op("Min", [b.op("Sub", [size, start], f"{axis_name}_left"), s], f"{axis_name}_count")
        counts.append(b.op("Cast", [n], f"{axis_name}_count_f", to=TensorProto.FLOAT))
    rows_c = b.op("Unsqueeze", [counts[0], i64("col_axis", [1])], "rows_count_col")
    count255 = b.op("Mul", [b.op("Mul", [rows_c, counts[1]], "cell_count"),
                            b.const("f255", np.array(255.0, np.float32))], "cell_count_255")
    return b.op("Mul", [sums, b.op("Reciprocal", [count255], "inv_cell_count")], "x_pooled")


def _full_maps(b: _Builder, core: "onnx.ModelProto", frame: _Frame, scale: int, prepool: int,  # noqa: F821
               bgr: bool) -> Tuple[str, str]:
    """maps -> 1 + K and 255 B (low resolution, ``fused/gain_offset_low``), upsampled to the padded frame."""
    i64 = lambda name, v: b.const(name, np.array(v, np.int64))  # noqa: E731
    maps = "maps"
    guide = guide_meta(core)
    if guide is not None:  # refit to the pooled frame (RGB, [0, 1]) as the model's apply step does
        pooled = "x_low" if prepool > 1 else b.op(
            "AveragePool", ["x_low"], "guide_pool", kernel_shape=[scale, scale], strides=[scale, scale],
            ceil_mode=1, count_include_pad=0)
        maps = _guided_refit(b, pooled, maps, guide)
    if bgr:
        maps = b.op("Gather", [maps, i64("rev6", [2, 1, 0, 5, 4, 3])], "maps_bgr", axis=1)
    mul = b.const("map_mul", np.array([1.0] * 3 + [255.0] * 3, np.float32).reshape(1, 6, 1, 1))
    add = b.const("map_add", np.array([1.0] * 3 + [0.0] * 3, np.float32).reshape(1, 6, 1, 1))
    gb = b.op("Add", [b.op("Mul", [maps, mul], "maps_255"), add], "gain_offset_low")  # runtime/temporal.py splices here
    if scale == 1:
        return (b.op("Slice", [gb, i64("gain_lo", [0]), i64("gain_hi", [3]), i64("c_axis", [1])], "gain_full"),
                b.op("Slice", [gb, i64("offset_lo", [3]), i64("offset_hi", [6]), i64("c_axis2", [1])], "offset_full"))
    wts = upsample_weights(scale)
    gbp = b.op("Pad", [gb, i64("edge_pads", [0, 0, 1, 1, 0, 0, 1, 1])], "maps_edge", mode="edge")
    cols = b.op("MatMul", [_stack3(b, gbp, 3, "cols"), b.const("w_cols", np.ascontiguousarray(wts.T))], "up_cols")
    wide = b.op("Reshape", [cols, i64("merge_cols", [0, 0, 0, -1])], "maps_wide")  # 1 x 6 x (h+2) x W'
    full_shape = b.op("Shape", [frame.img_p], "padded_shape")
    halves = []
    for name, lo, hi in (("gain", 0, 3), ("offset", 3, 6)):
        part = b.op("Slice", [wide, i64(f"{name}_lo", [lo]), i64(f"{name}_hi", [hi]), i64(f"{name}_axis", [1])],
                    f"{name}_wide")
        up = b.op("MatMul", [b.const(f"w_rows_{name}", wts), _stack3(b, part, 2, f"{name}_rows")], f"{name}_up")
        halves.append(b.op("Reshape", [up, full_shape], f"{name}_full"))
    return halves[0], halves[1]


def _frame_output(b: _Builder, j: str, frame: _Frame, scale: int, target: str) -> None:
    """255 J (float, padded NCHW) -> ``dehazed``: rounded, clamped to 0..255, cropped, NHWC uint8."""
    from onnx import TensorProto, helper

    def crop(x: str) -> str:
        if scale == 1:
            return x
        lo, axes = b.const("crop_lo", np.array([0, 0], np.int64)), b.const("crop_axes", np.array([2, 3], np.int64))
        return b.op("Slice", [x, lo, frame.hw, axes], "crop")

    if target == "trt":  # float to the end; Round (half to even, as QuantizeLinear), Clip, then the one Cast
        nhwc = b.op("Transpose", [crop(j)], "to_nhwc", perm=[0, 2, 3, 1])
        lo, hi = b.const("clip_lo", np.array(0.0, np.float32)), b.const("clip_hi", np.array(255.0, np.float32))
        clipped = b.op("Clip", [b.op("Round", [nhwc], "round"), lo, hi], "clip")
        b.nodes.append(helper.make_node("Cast", [clipped], ["dehazed"], to=TensorProto.UINT8, name="fused/to_uint8"))
        return
    # clamp, round half to even and cast in one pass
    j8 = b.op("QuantizeLinear", [j, b.const("one", np.array(1.0, np.float32)), b.const("zp", np.array(0, np.uint8))],
              "to_uint8")
    b.nodes.append(helper.make_node("Transpose", [crop(j8)], ["dehazed"], perm=[0, 2, 3, 1], name="fused/to_nhwc"))


def _assemble(core: "onnx.ModelProto", nodes: list, inits: list, inputs: list, outputs: list) -> "onnx.ModelProto":  # noqa: F821
    """Splice the core's nodes in after the ``x_low`` producer; a checked model on the core's opset."""
    import onnx
    from onnx import helper

    cut = _index_of(nodes, "x_low") + 1
    graph = helper.make_graph(nodes[:cut] + list(core.graph.node) + nodes[cut:], "edgehaze_fused", inputs, outputs,
                              list(core.graph.initializer) + inits)
    model = helper.make_model(graph, opset_imports=list(core.opset_import))
    model.ir_version = core.ir_version
    onnx.checker.check_model(model)
    return model


def _index_of(nodes: list, output: str) -> int:
    return next(i for i, n in enumerate(nodes) if output in n.output)


def reference_apply(image_u8: np.ndarray, maps: np.ndarray, scale: int, guide: Optional[dict] = None) -> np.ndarray:
    """The unfused reference: the model's own apply step, in numpy/torch terms.

    ``image_u8``: 1 x H x W x 3 uint8; ``maps``: 1 x 6 x h x w float at stride
    ``scale``; ``guide``: a :func:`guide_spec` (refit first, as ``apply="guided"``).
    Returns 1 x H x W x 3 uint8 = round(clamp(apply_correction(x, maps), 0, 1) * 255).
    """
    import torch

    from edgehaze.models.backbones.edge import apply_correction, guided_refit, pool_frame

    x = torch.from_numpy(image_u8).permute(0, 3, 1, 2).float() / 255.0
    m = torch.from_numpy(maps)
    if guide is not None:
        m = guided_refit(pool_frame(x, scale), m, int(guide["radius"]), torch.tensor(guide["eps"], dtype=torch.float32))
    y = apply_correction(x, m, scale)
    return torch.round(torch.clamp(y, 0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def export_fused(model: "torch.nn.Module", precision: str = "fp32", calib01: Optional[Sequence[np.ndarray]] = None,  # noqa: F821
                 channel_order: str = "RGB", op_types: Optional[Sequence[str]] = None) -> "onnx.ModelProto":  # noqa: F821
    """Core export (+ INT8 PTQ) and the fused wrapper in one call."""
    core = export_core(model)
    if precision == "int8":
        if not calib01:
            raise ValueError("INT8 needs calibration images")
        core = quantize_core(core, calib01, op_types or DEFAULT_QUANT_OPS)
    elif precision != "fp32":
        raise ValueError(f"precision {precision}: fp32 or int8")
    return fused_graph(core, channel_order)


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


__all__ = ["inline_constant_identities", "internal_scale", "prepool_factor", "prepooled", "pool_image", "export_core",
           "export_core_module", "guide_spec", "guide_meta", "export_split_cores", "core_meta", "upsample_weights", "uint8_difference", "quantize_core", "fused_graph",
           "export_fused", "reference_apply", "DEFAULT_QUANT_OPS"]
