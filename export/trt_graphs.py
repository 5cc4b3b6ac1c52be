"""The plain graphs (``graphs.FullGraph`` and the two stream graphs) in the TensorRT flavour.

The CPU flavour moves the frame as bytes: it transposes the uint8 image,
casts it, and at the end casts back and transposes the uint8 result (a
quarter of the memory traffic of float). TensorRT takes uint8 only at a
network's inputs and outputs, through a Cast, so here the image is cast to
float first, every layout op runs in float, and the output ends in Round,
Clip(0, 255) and the Cast to uint8. The numbers are the CPU flavour's:
clamping to [0, 1] before x255 and clipping to [0, 255] after rounding give
the same integers.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from edgehaze.export.graphs import DepthGraph, FloatModel, FullGraph, FuseGraph


def uint8_to_float_trt(image: torch.Tensor, bgr: bool) -> torch.Tensor:
    """1 x H x W x 3 uint8 -> 1 x 3 x H x W float32 in [0, 1], RGB: the Cast first."""
    x = image.to(torch.float32).permute(0, 3, 1, 2) / 255.0
    return x.flip(1) if bgr else x


def float_to_uint8_trt(y: torch.Tensor, bgr: bool) -> torch.Tensor:
    """1 x 3 x H x W float -> 1 x H x W x 3 uint8: layout in float, then Round, Clip, Cast at the end."""
    y = y * 255.0
    if bgr:
        y = y.flip(1)
    return torch.clamp(torch.round(y.permute(0, 2, 3, 1)), 0.0, 255.0).to(torch.uint8)


class TrtFullGraph(FullGraph):
    """:class:`FullGraph` with uint8 only at its ends (same module names, so the core's nodes keep theirs)."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return float_to_uint8_trt(self.float_model(uint8_to_float_trt(image, self.bgr)), self.bgr)


class TrtDepthGraph(DepthGraph):
    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return self.core(uint8_to_float_trt(image, self.bgr))


class TrtFuseGraph(FuseGraph):
    def forward(self, image: torch.Tensor, *depth_feats: torch.Tensor) -> torch.Tensor:
        x = uint8_to_float_trt(image, self.bgr)
        return float_to_uint8_trt(self.float_model(x, *depth_feats), self.bgr)


def io_graphs(target: str) -> Tuple[type, type, type]:
    """``(FullGraph, DepthGraph, FuseGraph)`` classes of a flavour (``cpu`` or ``trt``)."""
    if target == "trt":
        return TrtFullGraph, TrtDepthGraph, TrtFuseGraph
    return FullGraph, DepthGraph, FuseGraph


def full_graph(float_model: FloatModel, channel_order: str, target: str) -> nn.Module:
    """The single uint8 graph of ``float_model`` in ``target``'s flavour."""
    return io_graphs(target)[0](float_model, channel_order).eval()
