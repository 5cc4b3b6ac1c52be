"""What TensorRT's ONNX parser documents it accepts: a data table, per TensorRT release.

Facts read from ``docs/operators.md`` of github.com/onnx/onnx-tensorrt at the
tags ``8.6-GA`` (TensorRT 8.6, JetPack 6.0) and ``10.1-GA`` (TensorRT 10.x;
the newest 10.x table in that repository's history here, equal to ``main``
apart from LayerNormalization's note). Only the facts are kept: each
supported operator with the data types its "Supported Types" column lists,
the operators marked ``N``, the opset range and the per-operator
restrictions that can be checked on a graph. ``trt_check`` reads this table;
nothing here imports anything.

Type names are ONNX ``TensorProto`` names. Two documented conversions are
applied by :mod:`edgehaze.export.trt_check`, not written into the table:
TensorRT 8.6 "will attempt to cast down INT64 to INT32 and DOUBLE down to
FLOAT" (so INT64 counts as INT32 and DOUBLE as FLOAT there); 10.x casts
DOUBLE down to FLOAT. In 10.x INT8/INT4/FP8 are "quantized types" (only
through QuantizeLinear/DequantizeLinear) and "UINT8 is only supported as
network input or output tensor types".
"""
from __future__ import annotations

from typing import Dict, FrozenSet, Tuple


def _table(groups: Dict[str, str]) -> Dict[str, FrozenSet[str]]:
    """``{"TYPE TYPE ...": "Op Op ..."}`` -> ``{op: frozenset(types)}`` (a compact way to write the doc's column)."""
    out: Dict[str, FrozenSet[str]] = {}
    for types, ops in groups.items():
        for op in ops.split():
            assert op not in out, op
            out[op] = frozenset(types.split())
    return out


# -- TensorRT 8.6 (onnx-tensorrt 8.6-GA) -------------------------------------------------------------
_OPS_8_6 = _table({
    "FLOAT16 FLOAT": "Acos Acosh Asin Asinh Atan Atanh BatchNormalization Ceil Celu Cos Cosh CumSum Dropout Einsum Erf "
                     "Exp Floor GRU GridSample GroupNormalization ImageScaler InstanceNormalization IsInf LRN LSTM "
                     "LayerNormalization Log LogSoftmax LpNormalization MatMul MeanVarianceNormalization "
                     "NonMaxSuppression NonZero Pow QuantizeLinear RNN RandomNormal RandomNormalLike RandomUniform "
                     "RandomUniformLike Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean "
                     "ReduceMin ReduceProd ReduceSum ReduceSumSquare Resize RoiAlign Scan Sin Sinh Softmax Sqrt Tan "
                     "Upsample",
    "FLOAT16 FLOAT INT32": "Abs Add ArgMax ArgMin DepthToSpace Div Equal Greater GreaterOrEqual IsNaN Less LessOrEqual "
                           "Max Mean Min Mod Mul Neg Range Shrink SpaceToDepth Sub Sum TopK",
    "FLOAT16 FLOAT INT8": "Clip Conv ConvTranspose Elu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool HardSigmoid "
                          "HardSwish LeakyRelu LpPool MaxPool PRelu ParametricSoftplus Relu Round ScaledTanh Selu "
                          "Sigmoid Softplus Softsign Tanh ThresholdedRelu",
    "BOOL FLOAT16 FLOAT INT32 INT8": "Concat Constant Gather GatherElements GatherND Identity Reshape ReverseSequence "
                                     "Shape Size Slice Squeeze Transpose Trilu Unsqueeze",
    "BOOL FLOAT16 FLOAT INT32": "Expand EyeLike Flatten If Loop OneHot Split Tile Where",
    "FLOAT16 FLOAT INT32 INT8": "AveragePool Pad Scatter ScatterElements ScatterND Sign",
    "BOOL": "And Not Or Xor",
    "BOOL FLOAT16 FLOAT INT32 INT8 UINT8": "Cast",
    "FLOAT": "ConstantOfShape",
    "INT8": "DequantizeLinear",
})
_UNSUPPORTED_8_6 = frozenset(
    "Bernoulli BitShift BlackmanWindow Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear "
    "HammingWindow HannWindow Hardmax MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix Multinomial "
    "NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement QLinearConv QLinearMatMul STFT "
    "SequenceAt SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength SequenceMap "
    "SoftmaxCrossEntropyLoss SplitToSequence StringNormalizer TfIdfVectorizer Unique".split())

# -- TensorRT 10.x (onnx-tensorrt 10.1-GA) -----------------------------------------------------------
_OPS_10 = _table({
    "BFLOAT16 FLOAT16 FLOAT": "Acos Acosh Asin Asinh Atan Atanh AveragePool BatchNormalization Ceil Celu Clip Conv "
                              "ConvTranspose Cos Cosh CumSum Dropout Einsum Elu Erf Exp Floor GRU Gemm "
                              "GlobalAveragePool GlobalLpPool GlobalMaxPool GroupNormalization HardSigmoid HardSwish "
                              "Hardmax ImageScaler InstanceNormalization IsInf LRN LSTM LayerNormalization LeakyRelu "
                              "Log LogSoftmax LpNormalization LpPool MatMul MaxPool MeanVarianceNormalization PRelu "
                              "ParametricSoftplus Pow QuantizeLinear RNN RandomNormal RandomNormalLike RandomUniform "
                              "RandomUniformLike Reciprocal Resize Round ScaledTanh Scan Selu Sigmoid Sin Sinh Softmax "
                              "Softplus Softsign Sqrt Tan Tanh ThresholdedRelu Upsample",
    "BFLOAT16 FLOAT16 FLOAT INT32 INT64": "Abs Add ArgMax ArgMin DepthToSpace Div Equal Greater GreaterOrEqual IsNaN "
                                          "Less LessOrEqual Max Min Mod Mul Neg Pad Range ReduceL1 ReduceL2 "
                                          "ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd "
                                          "ReduceSum ReduceSumSquare Relu Scatter ScatterElements ScatterND Shrink "
                                          "Sign SpaceToDepth Sub Sum TopK",
    "BFLOAT16 BOOL FLOAT16 FLOAT INT32 INT64": "Concat Constant Expand EyeLike Flatten Gather GatherElements GatherND "
                                               "Identity If Loop OneHot Reshape ReverseSequence Shape Size Slice Split "
                                               "Squeeze Tile Transpose Trilu Unsqueeze Where "
                                               "ConstantOfShape",  # the doc writes "INF64" for ConstantOfShape
    "FLOAT16 FLOAT": "DeformConv GridSample Mish NonMaxSuppression NonZero RoiAlign",
    "BOOL": "And Not Or Xor",
    "BFLOAT16 BOOL FLOAT16 FLOAT INT32 INT64 UINT8": "Cast CastLike",
    "BFLOAT16 FLOAT16 FLOAT FLOAT8E4M3FN INT32 INT64": "Mean",
    "BFLOAT16 FLOAT16 FLOAT INT32 INT64 INT8": "Gelu",
    "FLOAT8E4M3FN INT4 INT8": "DequantizeLinear",
})
_UNSUPPORTED_10 = frozenset(
    "AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor BlackmanWindow CenterCropPad Col2Im "
    "Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear HammingWindow HannWindow ImageDecoder "
    "MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional "
    "OptionalGetElement OptionalHasElement QLinearConv QLinearMatMul RegexFullMatch STFT SequenceAt "
    "SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength SequenceMap SoftmaxCrossEntropyLoss "
    "SplitToSequence StringConcat StringNormalizer StringSplit TfIdfVectorizer Unique".split())

# -- restrictions a graph can be checked for (the doc's "Restrictions" column) -----------------------
#: inputs that "must be an initializer" / "a constant tensor": op -> input positions
_CONST_8_6 = {"Slice": (3,), "Squeeze": (1,), "Unsqueeze": (1,), "CumSum": (1,)}
_REDUCE = ("ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum "
           "ReduceSumSquare").split()
_CONST_10 = {**_CONST_8_6, "Pad": (3,), **{op: (1,) for op in _REDUCE}}
#: pooling: "2D or 3D pooling only" (both); "`dilations` must be empty or all ones" (10.x)
_POOL_8_6 = ("AveragePool", "MaxPool")
_POOL_10 = ("AveragePool", "MaxPool", "LpPool")
#: Resize: the documented modes (both releases); 10.x also "Antialiasing is not supported"
RESIZE_COORDINATE_MODES = frozenset({"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric",
                                     "align_corners"})
RESIZE_MODES = frozenset({"nearest", "linear"})
RESIZE_NEAREST_MODES = frozenset({"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"})


class Release:
    """One TensorRT release's documented ONNX support (see the module docstring)."""

    def __init__(self, name: str, ops: Dict[str, FrozenSet[str]], unsupported: FrozenSet[str],
                 opsets: Tuple[int, int], const_inputs: Dict[str, Tuple[int, ...]], pools: Tuple[str, ...],
                 pool_dilations: bool, resize_antialias: bool, aliases: Dict[str, str], tag: str) -> None:
        self.name, self.ops, self.unsupported, self.opsets = name, ops, unsupported, opsets
        self.const_inputs, self.pools, self.pool_dilations = const_inputs, pools, pool_dilations
        self.resize_antialias, self.aliases, self.tag = resize_antialias, aliases, tag


RELEASES: Dict[str, Release] = {
    "8.6": Release("8.6", _OPS_8_6, _UNSUPPORTED_8_6, (1, 17), _CONST_8_6, _POOL_8_6, pool_dilations=False,
                   resize_antialias=False, aliases={"INT64": "INT32", "DOUBLE": "FLOAT"}, tag="8.6-GA"),
    "10": Release("10", _OPS_10, _UNSUPPORTED_10, (9, 20), _CONST_10, _POOL_10, pool_dilations=True,
                  resize_antialias=True, aliases={"DOUBLE": "FLOAT"}, tag="10.1-GA"),
}
