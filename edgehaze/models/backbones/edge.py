"""An edge-first dehazing backbone: low-resolution CNN, full-resolution apply.

Design (DEVELOPERS.md "Targets"): INT8 3x3 convs run at ~190 GMAC/s on the
target CPU while thin, depth-wise and attention layers run 4-10x slower, so
the network is made of wide dense 3x3 conv + BN + ReLU blocks (BN folds into
the conv on export; no LayerNorm) and works at 1/``scale`` of the input
resolution. It predicts smooth per-pixel correction maps - a gain ``K`` and
an offset ``B`` per colour channel - which are upsampled bilinearly and
applied to the full-resolution input in one step: ``J = K * I + B + I``
(DehazeFormer's output form, ``K*I - B + I``, with the sign folded into B).
A 1080p frame therefore costs little more than its low-resolution copy.

Fusion points are the residual stages at strides ``scale`` and ``2*scale``.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgehaze.models.contracts import Backbone, FusionPoint
from edgehaze.models.registries import BACKBONES


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input, then ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(channels, channels)
        self.conv2 = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.conv2(self.conv1(x)))


class Stage(nn.Sequential):
    """A run of residual blocks at one resolution (a fusion point)."""

    def __init__(self, channels: int, blocks: int) -> None:
        super().__init__(*[ResidualBlock(channels) for _ in range(blocks)])


def upsample_maps(maps: torch.Tensor, scale: int, size: Sequence[int]) -> torch.Tensor:
    """Bilinear upsampling by exactly ``scale`` (half-pixel centres), cropped to ``size``.

    Why not "resize to ``size``": a frame whose side is not a multiple of
    ``scale`` has a partial last cell, and stretching ``ceil(H/scale)`` cells
    over ``H`` pixels would shift every cell off the pixels it pooled (by up
    to half a cell at the far edge). Upsampling by the pooling factor keeps
    cell ``i`` centred on pixels ``[i*scale, (i+1)*scale)``; for sides that
    are multiples of ``scale`` the two are the same function. It is also
    what the fused export computes with two small matrix products
    (:mod:`edgehaze.export.fused`).
    """
    if scale > 1:
        maps = F.interpolate(maps, scale_factor=float(scale), mode="bilinear", align_corners=False)
    return maps[..., : size[0], : size[1]]


def apply_correction(x: torch.Tensor, maps: torch.Tensor, scale: int) -> torch.Tensor:
    """``J = K*I + B + I`` with the maps upsampled to ``x`` (:func:`upsample_maps`)."""
    maps = upsample_maps(maps, scale, x.shape[-2:])
    gain, offset = maps[:, :3], maps[:, 3:]
    return x * gain + offset + x


class EdgeDehazer(Backbone):
    """Low-resolution correction-map dehazer (see module docstring).

    width: channels at stride ``scale`` (doubled at ``2*scale`` and ``4*scale``
        up to ``max_width``).
    scale: internal downscale factor (4 -> a 640x480 frame is processed at
        160x120). Any input size works: the input is average-pooled by
        ``scale`` with ceil mode (a last, partial cell averages the pixels it
        has), and the maps are upsampled by exactly ``scale`` and cropped to
        the input, so every map cell stays centred on the pixels it pooled.
    blocks: residual blocks per stage (stride scale, 2*scale, 4*scale).
    """

    def __init__(self, width: int = 32, scale: int = 4, blocks: Sequence[int] = (2, 2, 1), max_width: int = 64) -> None:
        super().__init__()
        if scale < 1:
            raise ValueError("scale must be >= 1")
        self.scale = int(scale)
        self.width = int(width)
        w1, w2, w3 = width, min(2 * width, max_width), min(4 * width, max_width)
        self.widths = (w1, w2, w3)
        self.stem = conv_bn_relu(3, w1)
        self.stage1 = Stage(w1, blocks[0])
        self.down2 = conv_bn_relu(w1, w2, stride=2)
        self.stage2 = Stage(w2, blocks[1])
        self.down3 = conv_bn_relu(w2, w3, stride=2)
        self.stage3 = Stage(w3, blocks[2])
        self.lat3 = nn.Conv2d(w3, w2, 1)
        self.up2 = conv_bn_relu(w2, w2)
        self.lat2 = nn.Conv2d(w2, w1, 1)
        self.up1 = conv_bn_relu(w1, w1)
        self.head = nn.Conv2d(w1, 6, 3, padding=1)
        # Start as the identity mapping J = I: the correction maps are zero.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def fusion_points(self) -> List[FusionPoint]:
        return [
            FusionPoint("stage1", self.widths[0], float(self.scale)),
            FusionPoint("stage2", self.widths[1], float(2 * self.scale)),
        ]

    def correction_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Low-resolution maps (B x 6 x H/scale x W/scale): gain K, offset B."""
        small = x
        if self.scale > 1:
            small = F.avg_pool2d(x, self.scale, self.scale, ceil_mode=True, count_include_pad=False)
        f1 = self.stage1(self.stem(small))
        f2 = self.stage2(self.down2(f1))
        f3 = self.stage3(self.down3(f2))
        u2 = self.up2(f2 + F.interpolate(self.lat3(f3), size=f2.shape[-2:], mode="bilinear", align_corners=False))
        u1 = self.up1(f1 + F.interpolate(self.lat2(u2), size=f1.shape[-2:], mode="bilinear", align_corners=False))
        return self.head(u1)

    def apply_maps(self, x: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """Upsample the maps to ``x``'s size and apply ``J = K*I + B + I``."""
        return apply_correction(x, maps, self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply_maps(x, self.correction_maps(x))


def _factory(name: str, **defaults):  # type: ignore[no-untyped-def]
    @BACKBONES.register(name)
    def build(**kwargs) -> EdgeDehazer:  # type: ignore[no-untyped-def]
        args = {**defaults, **kwargs}
        model = EdgeDehazer(**args)
        model.arch = name
        model._build_kwargs = args
        return model

    build.__name__ = name.replace("-", "_")
    build.__doc__ = f"Edge correction-map dehazer, {defaults}."
    return build


edge_xs = _factory("edge-xs", width=24, scale=4, blocks=(1, 2, 1))
edge_s = _factory("edge-s", width=32, scale=4, blocks=(2, 2, 1))
edge_m = _factory("edge-m", width=40, scale=4, blocks=(2, 2, 1), max_width=64)
