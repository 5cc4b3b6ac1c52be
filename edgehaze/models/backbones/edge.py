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

Edge-aware apply (``apply="guided"``, the default of the shipped models):
maps at 1/8 of the frame, upsampled bilinearly, cannot follow a depth edge,
and leave dark or bright rims beside poles and trees. So the network's
low-resolution result ``J_l = (1 + K) I_l + B`` is refitted, before
upsampling, as a local linear function of the pooled frame ``I_l`` in
windows of ``(2 r + 1)^2`` cells, per channel (He and Sun's fast guided
filter; Wu et al., "Fast End-to-End Trainable Guided Filter", CVPR 2018)::

    a = (cov(I_l, J_l) + eps * mean(1 + K)) / (var(I_l) + eps),   b = mean(J_l) - a mean(I_l)
    K' = mean(a) - 1,  B' = mean(b)                               (means over the window)

The ridge term pulls ``a`` towards the network's own gain instead of 0 (a
plain guided filter's prior, which would flatten texture), so where ``K``
and ``B`` are constant over a window the refit returns them exactly; across
an edge it finds the line through both sides' intensities, and the full-
resolution frame then selects its side pixel by pixel. ``eps`` (per
channel) is learnt. The apply step itself is unchanged (``K'``, ``B'``
upsampled and applied as ``J = (1 + K') I + B'``), so the fused export's
full-resolution cost does not grow: the refit is ~10 low-resolution passes.
"""
from __future__ import annotations

import math
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgehaze.models.contracts import Backbone, FusionPoint, InputPoint
from edgehaze.models.registries import BACKBONES


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class GlobalContext(nn.Module):
    """``x + W2 relu(W1 mean(x))``: a frame-level summary added back everywhere (W2 starts at zero)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels, 1)
        self.expand = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.expand.weight)
        nn.init.zeros_(self.expand.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = x.mean(dim=(2, 3), keepdim=True)
        return torch.relu(x + self.expand(torch.relu(self.reduce(g))))


class PhysicsHead(nn.Module):
    """Correction maps from a transmission map and a global airlight (the scattering model).

    ``1/t = 1 + softplus(z) - ln 2`` per cell and ``A = sigmoid(.)`` per
    channel from the deepest features' spatial mean; the maps are gain
    ``K = 1/t - 1`` (the same for every channel) and offset ``B = -A K``, so
    ``J = (1 + K) I + B = (I - A) / t + A``. One degree of freedom per cell
    instead of six: colour casts and per-channel drifts cannot be learnt, the
    physics holds for any scene. ``z`` starts at 0, so the model starts as
    the identity (``K = 0``) with a healthy gradient (``softplus'(0) = 1/2``;
    ``K`` may go slightly negative, ``t`` a little above 1: haze added back).
    """

    def __init__(self, channels: int, context_channels: int) -> None:
        super().__init__()
        self.transmission = nn.Conv2d(channels, 1, 3, padding=1)
        self.airlight = nn.Conv2d(context_channels, 3, 1)
        nn.init.zeros_(self.transmission.weight)
        nn.init.zeros_(self.transmission.bias)
        nn.init.zeros_(self.airlight.weight)
        nn.init.constant_(self.airlight.bias, math.log(0.9 / 0.1))  # A = 0.9 to start

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        k = F.softplus(self.transmission(x)) - math.log(2.0)
        a = torch.sigmoid(self.airlight(context.mean(dim=(2, 3), keepdim=True)))
        return torch.cat([k.expand(-1, 3, -1, -1), -a * k], dim=1)


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


def pool_frame(x: torch.Tensor, scale: int) -> torch.Tensor:
    """The network's view of the frame: ceil-mode average pooling by ``scale`` (partial cells average what they hold)."""
    if scale <= 1:
        return x
    return F.avg_pool2d(x, scale, scale, ceil_mode=True, count_include_pad=False)


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over ``(2r+1)^2`` cells; at the borders, over the cells that exist."""
    k = 2 * int(radius) + 1
    return F.avg_pool2d(x, k, 1, int(radius), count_include_pad=False)


def guided_refit(guide: torch.Tensor, maps: torch.Tensor, radius: int, eps: torch.Tensor) -> torch.Tensor:
    """Correction maps refitted as local linear functions of ``guide`` (module docstring).

    ``guide``: B x 3 x h x w pooled frame; ``maps``: B x 6 x h x w (``K``, ``B``);
    ``eps``: 3 values (one per channel). Returns refitted B x 6 x h x w maps.
    """
    eps = eps.reshape(1, 3, 1, 1)
    gain, offset = 1.0 + maps[:, :3], maps[:, 3:]
    target = guide * gain + offset
    mean_i, mean_j = box_mean(guide, radius), box_mean(target, radius)
    cov = box_mean(guide * target, radius) - mean_i * mean_j
    var = box_mean(guide * guide, radius) - mean_i * mean_i
    a = (cov + eps * box_mean(gain, radius)) / (var + eps)
    b = mean_j - a * mean_i
    return torch.cat([box_mean(a, radius) - 1.0, box_mean(b, radius)], dim=1)


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
    context: add a global context to the deepest stage (its spatial mean,
        two 1x1 convs, broadcast back; the last conv zero-initialised, so a
        new model is the plain network). Haze density and airlight are
        properties of the whole frame; without it the network judges them
        from a ~50-cell window and mixes up light indoor haze with dense
        outdoor fog when trained on both.
    head: ``free`` (six free maps, gain and offset per channel) or
        ``physics`` (the scattering model inverted: one transmission map and a
        global airlight, ``J = (I - A) / t + A`` written as gain ``1/t - 1``
        and offset ``-A (1/t - 1)``; :class:`PhysicsHead`).
    apply: ``bilinear`` (maps upsampled as predicted) or ``guided`` (refitted
        to the pooled frame first, :func:`guided_refit`; window radius
        ``guide_radius`` cells, ``eps`` learnt from ``guide_eps``).
    """

    def __init__(self, width: int = 32, scale: int = 4, blocks: Sequence[int] = (2, 2, 1), max_width: int = 64,
                 apply: str = "bilinear", guide_radius: int = 1, guide_eps: float = 1e-3,
                 context: bool = False, head: str = "free") -> None:
        super().__init__()
        if scale < 1:
            raise ValueError("scale must be >= 1")
        if apply not in ("bilinear", "guided"):
            raise ValueError(f"apply must be 'bilinear' or 'guided', not {apply!r}")
        if head not in ("free", "physics"):
            raise ValueError(f"head must be 'free' or 'physics', not {head!r}")
        if guide_radius < 1 or guide_eps <= 0:
            raise ValueError("guide_radius must be >= 1 and guide_eps > 0")
        self.scale = int(scale)
        self.width = int(width)
        self.apply = apply
        self.guide_radius = int(guide_radius)
        if apply == "guided":
            self.guide_log_eps = nn.Parameter(torch.full((3,), math.log(guide_eps)))
        w1, w2, w3 = width, min(2 * width, max_width), min(4 * width, max_width)
        self.widths = (w1, w2, w3)
        self.stem = conv_bn_relu(3, w1)
        self.stage1 = Stage(w1, blocks[0])
        self.down2 = conv_bn_relu(w1, w2, stride=2)
        self.stage2 = Stage(w2, blocks[1])
        self.down3 = conv_bn_relu(w2, w3, stride=2)
        self.stage3 = Stage(w3, blocks[2])
        self.context = GlobalContext(w3) if context else None
        self.lat3 = nn.Conv2d(w3, w2, 1)
        self.up2 = conv_bn_relu(w2, w2)
        self.lat2 = nn.Conv2d(w2, w1, 1)
        self.up1 = conv_bn_relu(w1, w1)
        self.head_kind = head
        if head == "physics":
            self.head = PhysicsHead(w1, w3)
        else:
            self.head = nn.Conv2d(w1, 6, 3, padding=1)
            # Start as the identity mapping J = I: the correction maps are zero.
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def fusion_points(self) -> List[FusionPoint]:
        return [
            FusionPoint("stage1", self.widths[0], float(self.scale)),
            FusionPoint("stage2", self.widths[1], float(2 * self.scale)),
        ]

    def input_points(self) -> List[InputPoint]:
        """The stem's conv, the one layer that reads the (pooled) frame."""
        return [InputPoint("stem.0")]

    def input_view(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """As the stem sees the frame: average-pooled by ``scale`` (:func:`pool_frame`)."""
        if name != "stem.0":
            return super().input_view(name, x)
        return pool_frame(x, self.scale)

    def correction_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Low-resolution maps (B x 6 x H/scale x W/scale): gain K, offset B."""
        small = pool_frame(x, self.scale)
        f1 = self.stage1(self.stem(small))
        f2 = self.stage2(self.down2(f1))
        f3 = self.stage3(self.down3(f2))
        if self.context is not None:
            f3 = self.context(f3)
        u2 = self.up2(f2 + F.interpolate(self.lat3(f3), size=f2.shape[-2:], mode="bilinear", align_corners=False))
        u1 = self.up1(f1 + F.interpolate(self.lat2(u2), size=f1.shape[-2:], mode="bilinear", align_corners=False))
        if self.head_kind == "physics":
            return self.head(u1, f3)
        return self.head(u1)

    def guide_eps(self) -> torch.Tensor:
        """The guided refit's per-channel ``eps`` (3 values)."""
        return self.guide_log_eps.exp()

    def refit_maps(self, small: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """The maps the apply step uses: refitted to the pooled frame ``small`` when ``apply="guided"``."""
        if self.apply != "guided":
            return maps
        return guided_refit(small, maps, self.guide_radius, self.guide_eps())

    def apply_maps(self, x: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """Refit (guided), upsample the maps to ``x``'s size and apply ``J = K*I + B + I``."""
        if self.apply == "guided":
            maps = self.refit_maps(pool_frame(x, self.scale), maps)
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
