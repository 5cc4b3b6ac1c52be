"""The paper's RGB-Depth Fusion (RDF) block and the zero-convolution wrapper.

Equations follow ``shared/docs/method.md`` (our reconstruction of the paper):

* Eq. 2, fusion block:   ``y = F(x) + Z2(RDF(F(x), Z1(c)))``
* Eq. 3-4, ASG:          ``M = sigmoid(ASG(F_h)); F_g = M * F_h + (1 - M) * F_rgb``
* Eq. 5, CFE:            ``F_c = F_rgb + MHSA(LN(F_rgb))`` (window attention)
* Eq. 6, DAI:            channel-wise cross-attention, RGB = query and value,
                         depth = key, 1x1 + 3x3 depth-wise projections, learnable
                         temperature per head
* Eq. 7-8, ACG:          ``w = sigmoid(ChannelConv(GAP(F_dai))); F_f = F_c + w * F_dai``
* Eq. 9, D-FFN:          ``F_h = F_f + Conv2(GELU(DWConv(Conv1(LN(F_f)))))``

Every part can be switched off for the paper's ablations (Table 3: CFE+DAI,
+ASG, full; Table 6: pre-/post-zero-convolution), see :class:`FusionConfig`.

``style="lite"`` (variant ``"lite"``) keeps the same data flow and the same
zero-convolution equations but builds each part from dense convolutions and
ReLU (:class:`LiteRGBDepthFusion`): on a CPU, INT8 window attention,
LayerNorm and depth-wise convolutions run several times slower per MAC than
a dense 3x3 convolution, and they break on frame sizes that are not a
multiple of the window once traced. The paper's variants are unchanged.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from edgehaze.errors import ConfigError


#: "paper": the RDF of the paper; "lite": the conv-only, INT8-friendly RDF
FUSION_STYLES = ("paper", "lite")


@dataclass(frozen=True)
class FusionConfig:
    """Switches and sizes of the fusion block.

    cfe/dai/acg/ffn/asg: the HGDF parts and the spatial gate (Table 3).
    pre_zc/post_zc: zero-initialised Z1/Z2 (Table 6). Off means an ordinary
        (randomly initialised) 1x1 conv; Z1 becomes the identity when the
        depth channels already equal the RGB channels.
    window: CFE window size (a window covering the whole map = global).
    heads: attention heads for CFE and DAI (clipped to divide the channels).
    ffn_expansion: hidden width factor of the D-FFN.
    depth_channels: width the depth features are projected to inside the
        block (Z1's output). 0 means "the RGB channel count".
    style: "paper" (window attention, channel cross-attention, LayerNorm,
        depth-wise convs) or "lite" (:class:`LiteRGBDepthFusion`, for INT8 CPUs).
    """

    cfe: bool = True
    dai: bool = True
    acg: bool = True
    ffn: bool = True
    asg: bool = True
    pre_zc: bool = True
    post_zc: bool = True
    window: int = 8
    heads: int = 2
    ffn_expansion: float = 2.0
    depth_channels: int = 0
    style: str = "paper"

    def __post_init__(self) -> None:
        if self.style not in FUSION_STYLES:
            raise ConfigError(f"unknown fusion style '{self.style}'; known: {list(FUSION_STYLES)}")

    @classmethod
    def from_dict(cls, data: dict) -> "FusionConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown fusion option(s) {unknown}; known: {sorted(known)}"
            )
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)


#: Named variants: the paper's ablation rows plus the default.
FUSION_VARIANTS = {
    "full": FusionConfig(),
    # Table 3
    "cfe-dai": FusionConfig(acg=False, ffn=False, asg=False),
    "cfe-dai-asg": FusionConfig(acg=False, ffn=False),
    # Table 6
    "no-zc": FusionConfig(pre_zc=False, post_zc=False),
    "pre-zc": FusionConfig(post_zc=False),
    "post-zc": FusionConfig(pre_zc=False),
    # INT8-friendly: dense convs + ReLU in place of attention / LayerNorm / depth-wise
    # (CFE off: the wrapped residual stage already gives spatial context)
    "lite": FusionConfig(style="lite", cfe=False, ffn_expansion=1.0),
}


def resolve_fusion(fusion: "str | dict | FusionConfig | None") -> FusionConfig:
    """Turn a variant name, a dict of options or a config into a FusionConfig."""
    if fusion is None:
        return FusionConfig()
    if isinstance(fusion, FusionConfig):
        return fusion
    if isinstance(fusion, str):
        if fusion not in FUSION_VARIANTS:
            raise ConfigError(
                f"unknown fusion variant '{fusion}'; known: {sorted(FUSION_VARIANTS)}"
            )
        return FUSION_VARIANTS[fusion]
    if isinstance(fusion, dict):
        data = dict(fusion)
        base = FUSION_VARIANTS[data.pop("variant")] if "variant" in data else FusionConfig()
        merged = {**base.to_dict(), **data}
        return FusionConfig.from_dict(merged)
    raise ConfigError(f"fusion must be a variant name or a mapping, got {type(fusion).__name__}")


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a B x C x H x W map."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        var = (x - mean).pow(2).mean(dim=1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


def zero_conv(cin: int, cout: int) -> nn.Conv2d:
    """A 1x1 convolution whose weight and bias start at exactly zero."""
    conv = nn.Conv2d(cin, cout, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _heads_for(channels: int, heads: int) -> int:
    heads = max(1, min(heads, channels))
    while channels % heads:
        heads -= 1
    return heads


class WindowSelfAttention(nn.Module):
    """CFE's MHSA, restricted to non-overlapping windows.

    Departure from the paper (named in method.md §4.1): global spatial
    attention is quadratic in H*W and impossible at full resolution on an
    edge device, so attention runs inside ``window x window`` tiles. The map
    is replicate-padded to a multiple of the window and cropped back; the
    padded tokens are masked out as keys, so a border window attends only to
    real tokens and the result does not depend on how much padding a size
    needs (padded queries are computed and cropped away).
    """

    def __init__(self, channels: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads = _heads_for(channels, heads)
        self.window = window
        self.qkv = nn.Conv2d(channels, channels * 3, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        ws = self.window
        pad_h = (ws - h % ws) % ws
        pad_w = (ws - w % ws) % ws
        # Always pad while tracing: a Python `if` on sizes would be frozen at
        # the trace size and break dynamic-shape ONNX graphs. Replicate padding
        # works for maps of any size (reflect needs pad < size).
        if torch.jit.is_tracing() or pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        hp, wp = x.shape[-2:]
        # 1 on real tokens, 0 on padding, in the same window layout as k.
        real = F.pad(x.new_ones(1, 1, h, w), (0, pad_w, 0, pad_h), value=0.0)
        qkv = self.qkv(x)
        nh, nw = hp // ws, wp // ws
        d = c // self.heads
        # B, 3, heads, d, nh, ws, nw, ws -> (B*nh*nw), 3, heads, ws*ws, d
        qkv = qkv.reshape(b, 3, self.heads, d, nh, ws, nw, ws)
        qkv = qkv.permute(1, 0, 4, 6, 2, 5, 7, 3).reshape(3, b * nh * nw, self.heads, ws * ws, d)
        q, k, v = qkv[0], qkv[1], qkv[2]
        real = real.reshape(1, nh, ws, nw, ws).permute(0, 1, 3, 2, 4).reshape(nh * nw, 1, 1, ws * ws)
        # Additive key mask, finite so fp16/INT8 graphs stay NaN-free; every
        # window holds at least one real token (padding < window).
        key_bias = ((real - 1.0) * 1e4).repeat(b, 1, 1, 1)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * (d ** -0.5) + key_bias, dim=-1)
        out = attn @ v  # (B*nh*nw), heads, ws*ws, d
        out = out.reshape(b, nh, nw, self.heads, ws, ws, d)
        out = out.permute(0, 3, 6, 1, 4, 2, 5).reshape(b, c, hp, wp)
        out = self.proj(out)
        return out[:, :, :h, :w]


class DepthAwareInteraction(nn.Module):
    """DAI: channel-wise cross-attention, RGB as query and value, depth as key.

    Each projection is a 1x1 conv followed by a 3x3 depth-wise conv. Q and K
    are L2-normalised along the spatial axis, so the C x C attention map is a
    cosine similarity scaled by a learnable per-head temperature.
    """

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = _heads_for(channels, heads)

        def proj() -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(channels, channels, 1),
                nn.Conv2d(channels, channels, 3, padding=1, groups=channels),
            )

        self.q = proj()
        self.k = proj()
        self.v = proj()
        self.temperature = nn.Parameter(torch.ones(self.heads, 1, 1))
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        b, c, h, w = rgb.shape
        d = c // self.heads
        q = self.q(rgb).reshape(b, self.heads, d, h * w)
        k = self.k(depth).reshape(b, self.heads, d, h * w)
        v = self.v(rgb).reshape(b, self.heads, d, h * w)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.temperature, dim=-1)
        out = (attn @ v).reshape(b, c, h, w)
        return self.out(out)


class AdaptiveChannelGate(nn.Module):
    """ACG: ECA-style gate, ``sigmoid(Conv1d(GAP(x)))`` across channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        # ECA's adaptive kernel size: odd, growing with log2(C).
        k = int(abs((math.log2(channels) + 1) / 2))
        k = k if k % 2 else k + 1
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3))  # B x C
        w = self.conv(pooled.unsqueeze(1)).squeeze(1)
        return torch.sigmoid(w)[:, :, None, None]


class DynamicFFN(nn.Module):
    """D-FFN: LN -> 1x1 expand -> 3x3 depth-wise -> GELU -> 1x1 back, residual."""

    def __init__(self, channels: int, expansion: float) -> None:
        super().__init__()
        hidden = max(1, int(round(channels * expansion)))
        self.norm = ChannelLayerNorm(channels)
        self.conv1 = nn.Conv2d(channels, hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.conv2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.gelu(self.dwconv(self.conv1(self.norm(x)))))


class SpatialGate(nn.Module):
    """ASG: a small conv net giving a one-channel spatial map (before sigmoid)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(4, channels // 2)
        self.net = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(hidden, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class RGBDepthFusion(nn.Module):
    """RDF = HGDF (CFE, DAI, ACG, D-FFN) followed by ASG (paper Eqs. 3-9)."""

    def __init__(self, channels: int, cfg: FusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.cfe_norm = ChannelLayerNorm(channels) if cfg.cfe else None
        self.cfe = WindowSelfAttention(channels, cfg.heads, cfg.window) if cfg.cfe else None
        self.dai = DepthAwareInteraction(channels, cfg.heads) if cfg.dai else None
        self.acg = AdaptiveChannelGate(channels) if (cfg.acg and cfg.dai) else None
        self.ffn = DynamicFFN(channels, cfg.ffn_expansion) if cfg.ffn else None
        self.asg = SpatialGate(channels) if cfg.asg else None

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        f = rgb
        if self.cfe is not None:
            f = f + self.cfe(self.cfe_norm(f))
        if self.dai is not None:
            f_dai = self.dai(f, depth)
            if self.acg is not None:
                f = f + self.acg(f_dai) * f_dai
            else:
                f = f + f_dai
        else:
            # Without DAI the depth must still enter: plain additive injection.
            f = f + depth
        if self.ffn is not None:
            f = self.ffn(f)
        if self.asg is not None:
            m = torch.sigmoid(self.asg(f))
            f = m * f + (1.0 - m) * rgb
        return f


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2)


class LiteRGBDepthFusion(nn.Module):
    """The RDF data flow from dense convolutions: the INT8-friendly variant.

    Each part keeps its role and its switch in :class:`FusionConfig`:

    * CFE (context):       ``F_c = F + ReLU(Conv3x3(F))``
    * DAI (depth interplay): ``F_dai = Conv1x1(ReLU(Conv1x1(F_c) + Conv1x1(D)))``
      (a pointwise MLP over the concatenated RGB and depth features, written
      as two convolutions so no Concat node is needed; both inputs already
      carry spatial context from their own 3x3 stacks)
    * ACG (channel gate):  ``w = sigmoid(Conv1x1(GAP(F_dai))); F_f = F_c + w * F_dai``
    * FFN:                 ``F_h = F_f + Conv1x1(ReLU(Conv1x1(F_f)))``
    * ASG (spatial gate):  ``M = sigmoid(Conv1x1(ReLU(Conv3x3(F_h))))`` (C/4 hidden),
      ``F_g = M * F_h + (1 - M) * F_rgb`` (computed as ``F_rgb + M * (F_h - F_rgb)``)

    No LayerNorm, attention, depth-wise or GELU: every layer is a dense conv,
    ReLU, a global average or a sigmoid on a one-channel map, so it quantises
    and runs at the dense-conv rate.
    """

    def __init__(self, channels: int, cfg: FusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = channels
        self.cfe = _conv(c, c, 3) if cfg.cfe else None
        if cfg.dai:
            self.dai_rgb, self.dai_depth, self.dai_out = _conv(c, c, 1), _conv(c, c, 1), _conv(c, c, 1)
        else:
            self.dai_rgb = self.dai_depth = self.dai_out = None
        self.acg = _conv(c, c, 1) if (cfg.acg and cfg.dai) else None
        hidden = max(1, int(round(c * cfg.ffn_expansion)))
        self.ffn = nn.Sequential(_conv(c, hidden, 1), nn.ReLU(inplace=True), _conv(hidden, c, 1)) if cfg.ffn else None
        gate_hidden = max(4, c // 4)
        self.asg = nn.Sequential(_conv(c, gate_hidden, 3), nn.ReLU(inplace=True), _conv(gate_hidden, 1, 1)) if cfg.asg else None

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        f = rgb
        if self.cfe is not None:
            f = f + F.relu(self.cfe(f))
        if self.dai_out is not None:
            f_dai = self.dai_out(F.relu(self.dai_rgb(f) + self.dai_depth(depth)))
            if self.acg is not None:
                f = f + torch.sigmoid(self.acg(f_dai.mean(dim=(2, 3), keepdim=True))) * f_dai
            else:
                f = f + f_dai
        else:
            f = f + depth
        if self.ffn is not None:
            f = f + self.ffn(f)
        if self.asg is not None:
            m = torch.sigmoid(self.asg(f))
            f = rgb + m * (f - rgb)
        return f


class FusedBlock(nn.Module):
    """Wraps a backbone block ``F``: ``y = F(x) + Z2(RDF(F(x), Z1(c)))``.

    The depth feature ``c`` for the current forward pass is handed in by
    :class:`edgehaze.models.dehazer.DepthGuidedDehazer` through
    :meth:`set_depth` just before the backbone runs, so the backbone's own
    code is never edited. ``c`` is resized (bilinear) to ``F(x)``'s size.
    Without a depth feature set, the block is exactly ``F``.
    """

    def __init__(self, block: nn.Module, channels: int, depth_channels: int, cfg: FusionConfig) -> None:
        super().__init__()
        self.block = block
        inner = cfg.depth_channels or channels
        if inner != channels:
            raise ConfigError("depth_channels other than the block's channels is not supported")
        if cfg.pre_zc:
            self.z1: nn.Module = zero_conv(depth_channels, channels)
        elif depth_channels == channels:
            self.z1 = nn.Identity()
        else:
            self.z1 = nn.Conv2d(depth_channels, channels, 1)
        self.rdf = LiteRGBDepthFusion(channels, cfg) if cfg.style == "lite" else RGBDepthFusion(channels, cfg)
        self.z2: nn.Module = zero_conv(channels, channels) if cfg.post_zc else nn.Conv2d(channels, channels, 1)
        self._depth: Optional[torch.Tensor] = None
        #: the last fused output (for feature distillation); None when unused
        self.last_output: Optional[torch.Tensor] = None
        self.keep_output = False

    def set_depth(self, depth: Optional[torch.Tensor]) -> None:
        self._depth = depth

    def forward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        y = self.block(*args, **kwargs)
        if self._depth is None:
            return y
        # Always resize (an exact identity at equal size) so a traced ONNX
        # graph keeps the resize for every input size.
        c = F.interpolate(self._depth, size=y.shape[-2:], mode="bilinear", align_corners=False)
        out = y + self.z2(self.rdf(y, self.z1(c)))
        if self.keep_output:
            self.last_output = out
        return out
