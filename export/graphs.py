"""The modules that get exported: uint8 NHWC in, uint8 NHWC out.

The artifact contract puts every conversion inside the graph, so the runtime
only moves uint8 buffers: ``image`` (1 x H x W x 3 uint8) -> cast, /255,
NHWC->NCHW (and BGR->RGB if asked) -> the float model -> clamp to [0, 1],
*255, round, cast -> NCHW->NHWC -> ``dehazed``.

The float model is split in two so quantisation touches only what pays:

* the *core* - the low-resolution network (and the depth branch), which
  holds all the convolutions; this is what gets INT8 QDQ nodes;
* the *apply* step - for correction-map backbones (``edge-*``), the
  full-resolution ``J = K*I + B + I`` with its bilinear upsampling, kept in
  float together with the uint8 conversions (cheap, and precision-critical).

Backbones without ``correction_maps`` are quantised whole.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


def uint8_to_float(image: torch.Tensor, bgr: bool) -> torch.Tensor:
    """1 x H x W x 3 uint8 -> 1 x 3 x H x W float32 in [0, 1], RGB."""
    x = image.permute(0, 3, 1, 2).to(torch.float32) / 255.0
    return x.flip(1) if bgr else x


def float_to_uint8(y: torch.Tensor, bgr: bool) -> torch.Tensor:
    """1 x 3 x H x W float -> 1 x H x W x 3 uint8 (clamped, rounded)."""
    y = torch.round(torch.clamp(y, 0.0, 1.0) * 255.0).to(torch.uint8)
    if bgr:
        y = y.flip(1)
    return y.permute(0, 2, 3, 1)


def has_correction_maps(model: nn.Module) -> bool:
    b = model.backbone
    return hasattr(b, "correction_maps") and hasattr(b, "apply_maps")


# -- depth features that trace with dynamic H x W ----------------------------
def _dynamic_teacher_size(image01: torch.Tensor, input_size: int, patch: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``network_input_size`` in tensor ops, so a traced graph keeps H x W symbolic.

    Same rule as :func:`edgehaze.models.depth.dav2.network_input_size`:
    shorter side to ``input_size``, each side rounded (half to even) to a
    multiple of ``patch``, rounded up instead when that falls below it.
    """
    h = torch.as_tensor(image01.shape[-2]).to(torch.float64)
    w = torch.as_tensor(image01.shape[-1]).to(torch.float64)
    s = torch.maximum(input_size / h, input_size / w)

    def constrain(x: torch.Tensor) -> torch.Tensor:
        y = torch.round(x / patch) * patch
        y = torch.where(y < input_size, torch.ceil(x / patch) * patch, y)
        return y.to(torch.int64)

    return constrain(s * h), constrain(s * w)


def teacher_pixels(depth: nn.Module, image01: torch.Tensor) -> torch.Tensor:
    """A DAv2-style teacher's normalised network input; while tracing, its
    resize is computed from the traced image size (dynamic H x W graphs)."""
    if not torch.jit.is_tracing():
        return depth.preprocess(image01)
    from edgehaze.models.depth.dav2 import PATCH

    h, w = _dynamic_teacher_size(image01, depth.input_size, PATCH)
    x = F.interpolate(image01.to(depth.mean.dtype), size=(h, w), mode="bicubic", align_corners=False)
    return (x - depth.mean) / depth.std


def depth_features(model: nn.Module, image01: torch.Tensor) -> List[torch.Tensor]:
    """What ``model``'s fusion reads from its depth branch, with the teacher's
    resize traced dynamically (the baseline modes trace theirs in
    ``model.depth_features``)."""
    if getattr(model, "fusion_mode", "gated") != "gated":
        return list(model.depth_features(image01))
    depth = model.depth
    if hasattr(depth, "neck_features") and hasattr(depth, "input_size") and torch.jit.is_tracing():
        return list(depth.neck_features(teacher_pixels(depth, image01)))
    return list(depth.features(image01))


class FloatCore(nn.Module):
    """The quantisable part: image01 (+ optional depth features) -> maps or image.

    For correction-map backbones it returns the low-resolution maps; for
    others the restored image. ``forward(image01, *depth_feats)``: with no
    features given and a depth branch present, it computes them.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.maps = has_correction_maps(model)
        rounds = getattr(getattr(model, "fusion_cfg", None), "rounds", 1)
        if self.maps and rounds > 1:
            from edgehaze.errors import EdgehazeError

            raise EdgehazeError(
                f"fusion selfpromer with rounds={rounds} cannot be exported with backbone '{model.backbone.arch}': "
                "each round needs the full-resolution apply step, which runs outside the core; "
                "build the model with fusion {mode: selfpromer, rounds: 1}"
            )

    def forward(self, image01: torch.Tensor, *depth_feats: torch.Tensor) -> torch.Tensor:
        m = self.model
        if m.depth is None:
            return m.backbone.correction_maps(image01) if self.maps else m.backbone(image01)
        if depth_feats:  # the used levels only, as the depth graph outputs them
            feats: List[Optional[torch.Tensor]] = [None] * len(_input_channels(m))
            for level, f in zip(used_levels(m), depth_feats):
                feats[level] = f
        elif not self.maps and getattr(m, "fusion_mode", "gated") != "gated":
            return m(image01)  # the baselines trace their own depth maps (and selfpromer's rounds)
        else:
            feats = depth_features(m, image01)
        if not self.maps:
            return m(image01, depth_feats=feats)
        return m.run_with_depth(image01, feats, m.backbone.correction_maps)


class FloatModel(nn.Module):
    """``core`` + the float apply step: image01 -> restored image (unclamped).

    ``prepool``: the core takes the input already average-pooled by this
    factor (ceil mode, partial cells average what they hold) - the fused
    export's layout, where the pooling runs outside the quantised core
    (:func:`edgehaze.export.fused.prepooled`).
    """

    def __init__(self, model: nn.Module, core: Optional[nn.Module] = None, prepool: int = 1) -> None:
        super().__init__()
        self.apply_maps = model.backbone.apply_maps if has_correction_maps(model) else None
        self.core = core if core is not None else FloatCore(model)
        self.prepool = int(prepool)

    def forward(self, image01: torch.Tensor, *depth_feats: torch.Tensor) -> torch.Tensor:
        x = image01
        if self.prepool > 1:
            x = F.avg_pool2d(x, self.prepool, self.prepool, ceil_mode=True, count_include_pad=False)
        out = self.core(x, *depth_feats)
        return self.apply_maps(image01, out) if self.apply_maps is not None else out


class FullGraph(nn.Module):
    """The single graph: ``image`` (uint8 NHWC) -> ``dehazed`` (uint8 NHWC)."""

    def __init__(self, float_model: FloatModel, channel_order: str = "RGB") -> None:
        super().__init__()
        self.float_model = float_model
        self.bgr = channel_order.upper() == "BGR"

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return float_to_uint8(self.float_model(uint8_to_float(image, self.bgr)), self.bgr)


class DepthCore(nn.Module):
    """The depth branch alone on the network's input: ``x`` -> the used feature levels (float NCHW)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        feats = depth_features(self.model, x)
        return tuple(feats[i] for i in used_levels(self.model))


class DepthGraph(nn.Module):
    """Stream graph 1: ``image`` -> ``depth_0 .. depth_{k-1}`` (float NCHW)."""

    def __init__(self, model: nn.Module, channel_order: str = "RGB") -> None:
        super().__init__()
        self.core = DepthCore(model)
        self.bgr = channel_order.upper() == "BGR"

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return self.core(uint8_to_float(image, self.bgr))


class FuseGraph(nn.Module):
    """Stream graph 2: ``image`` + cached depth features -> ``dehazed``."""

    def __init__(self, float_model: FloatModel, channel_order: str = "RGB") -> None:
        super().__init__()
        self.float_model = float_model
        self.bgr = channel_order.upper() == "BGR"

    def forward(self, image: torch.Tensor, *depth_feats: torch.Tensor) -> torch.Tensor:
        return float_to_uint8(self.float_model(uint8_to_float(image, self.bgr), *depth_feats), self.bgr)


def used_levels(model: nn.Module) -> List[int]:
    """Depth feature levels some fusion block reads (the two-graph export passes only these)."""
    return sorted(set(model.levels))


def depth_feature_specs(model: nn.Module) -> List[dict]:
    """The sidecar's ``depth_features``: ``depth_i`` is the i-th *used* level, finest first."""
    if model.depth is None:
        return []
    channels, strides = _input_channels(model), _input_strides(model)
    return [
        {"name": f"depth_{i}", "channels": int(channels[lv]), "stride": float(strides[lv]), "level": lv}
        for i, lv in enumerate(used_levels(model))
    ]


def _input_channels(model: nn.Module) -> List[int]:
    """Channels per level of what the fusion reads (the provider's features, or a baseline's depth maps)."""
    return list(getattr(model, "depth_input_channels", None) or model.depth.feature_channels)


def _input_strides(model: nn.Module) -> List[float]:
    return list(getattr(model, "depth_input_strides", None) or model.depth.feature_strides)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every ``Conv2d`` directly followed by ``BatchNorm2d`` in a Sequential.

    Done before quantisation so QDQ wraps the folded weights (a BN left after
    a quantised conv cannot be folded by the exporter or runtime).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for name, child in module.named_children():
        if isinstance(child, nn.Sequential):
            items = list(child)
            for i in range(len(items) - 1):
                if isinstance(items[i], nn.Conv2d) and isinstance(items[i + 1], nn.BatchNorm2d):
                    child[i] = fuse_conv_bn_eval(items[i].eval(), items[i + 1].eval())
                    child[i + 1] = nn.Identity()
        fold_batchnorm(child)
    return module


