"""SGDN (Fang et al., "Guided Real Image Dehazing using YCbCr Color Space",
AAAI 2025; the depth-fusion paper's "SGDNet"), the network of the official
fiwy0527/AAAI25_SGDN code (``basicsr/archs/SGDN_arch.py``, default
arguments, as ``options/*/SGDN/*.yml`` build it), so its released
checkpoints (BasicSR's ``{'params': state}``) load unchanged.

Kept exactly as the official model:

* module and parameter names (``inconv``, ``layers``, ``skips``, ``downs``,
  ``fusions``, ``sDiffPropagator``, ``decoder1..4``, ``up2..4``,
  ``outconv``/``outconv128``/``outconv64``; inside, ``token_mixer.attention``
  (LSK attention), ``gdfn.mlp``, ``iam.rgb_cab``/``ycbcr_cab``, ``pim``, ...),
  including modules the forward never uses (``pim.processpha``: the official
  forward passes both amplitude and phase through ``processmag``);
* one set of encoder weights shared by the RGB image and its YCbCr copy
  (kornia's ``rgb_to_ycbcr``: BT.601, chroma offset 0.5); the Bi-Color
  Guidance Bridges (average-pooled RGB / max-pooled YCbCr features; the
  phase-integration module at the first level, FFT amplitude and phase
  through 1x1 convs with the two phases summed; transposed-attention with
  tanh on RGB and softmax spatial attention on YCbCr at the deeper levels;
  bilinear x2 (align corners) back; the interaction attention block); the
  colour-enhancement weights ``softmax(GAP(x - mean_c(x)))``; SK fusion of
  the skips; LayerNorm with bias over channels (eps 1e-5);
* the three outputs (full, 1/2, 1/4 resolution; ``forward`` returns the
  first, as the official test does), the residual ``outconv(x) + image``.

Size: the official test feeds images whose sides are multiples of 8 (three
stride-2 stages, each bridge pooling by 2). Here any H x W works: the image
is reflect-padded on the bottom and right to a multiple of 8 (the official
``pad_img``) and the output cropped back. Not clamped.

Numerics: the phase-integration module takes ``angle()`` of real-input FFT
values whose imaginary part is zero up to rounding (the DC and Nyquist
bins), so such a phase is +pi or -pi depending on the sign of a rounding
error, and the 1x1 conv mixing phases carries the flip into other
channels. Two correct implementations (or float32 vs float64 of the
official one) therefore differ by ~1e-4 of the output; this module runs the
same operations in the same order as the official one, which on the same
machine gives identical results.

Fusion points (the paper's Table 7: SGDNet's own stages): the four encoder
stages (each run on both colour spaces) and the four decoder stages.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.init import _calculate_fan_in_and_fan_out

from edgehaze.models.backbones.dehazeformer import pad_to_multiple
from edgehaze.models.backbones.official_io import load_strict, read_official_state
from edgehaze.models.contracts import Backbone, FusionPoint, InputPoint
from edgehaze.models.registries import BACKBONES

PAD_MULTIPLE = 8
BASE_DIM = 32
ENCODER_DEPTHS = (4, 4, 6, 8)
DECODER_DEPTHS = (8, 6, 4, 4)
HEADS = 8


def rgb_to_ycbcr(image: torch.Tensor) -> torch.Tensor:
    """BT.601 YCbCr of a [0, 1] RGB batch (kornia's ``rgb_to_ycbcr``, offset 0.5)."""
    r, g, b = image[..., 0, :, :], image[..., 1, :, :], image[..., 2, :, :]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return torch.stack([y, (b - y) * 0.564 + 0.5, (r - y) * 0.713 + 0.5], dim=-3)


def _init_scaled(module: nn.Module, depth: int) -> None:
    """The official init of the conv layers in ``Mlp``/``ConvLayer``: truncated
    normal with std ``(8 depth)^(-1/4) sqrt(2 / (fan_in + fan_out))``, zero bias."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_in, fan_out = _calculate_fan_in_and_fan_out(m.weight)
            nn.init.trunc_normal_(m.weight, std=(8 * depth) ** -0.25 * math.sqrt(2.0 / float(fan_in + fan_out)))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ChannelNorm(nn.Module):
    """LayerNorm with bias over channels, on the official (B, H*W, C) layout (``body``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = _LayerNormBody(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.body(x.permute(0, 2, 3, 1).reshape(b, h * w, c))
        return tokens.reshape(b, h, w, c).permute(0, 3, 1, 2)


class _LayerNormBody(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(-1, keepdim=True)
        sigma = x.var(-1, keepdim=True, unbiased=False)
        return (x - mu) / torch.sqrt(sigma + 1e-5) * self.weight + self.bias


class LSKAttention(nn.Module):
    """Large-selective-kernel attention (LSKNet): 5x5 and dilated 7x7 depth-wise
    branches, mixed by a spatial gate from their channel mean and max."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.to_hidden = nn.Conv2d(dim, dim * 2, 1, bias=False)
        self.to_hidden_dw = nn.Conv2d(dim * 2, dim * 2, 3, padding=1, groups=dim * 2, bias=False)
        self.conv0 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv_spatial = nn.Conv2d(dim, dim, 7, padding=9, groups=dim, dilation=3)
        self.conv1 = nn.Conv2d(dim, dim // 2, 1)
        self.conv2 = nn.Conv2d(dim, dim // 2, 1)
        self.conv_squeeze = nn.Conv2d(2, 2, 7, padding=3)
        self.conv = nn.Conv2d(dim // 2, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.to_hidden_dw(self.to_hidden(x)).chunk(2, dim=1)
        a1 = self.conv1(self.conv0(x1))
        a2 = self.conv2(self.conv_spatial(x2))
        both = torch.cat([a1, a2], dim=1)
        pooled = torch.cat([torch.mean(both, dim=1, keepdim=True), torch.max(both, dim=1, keepdim=True)[0]], dim=1)
        gate = self.conv_squeeze(pooled).sigmoid()
        return x * self.conv(a1 * gate[:, 0, :, :].unsqueeze(1) + a2 * gate[:, 1, :, :].unsqueeze(1))


class ConvLayer(nn.Module):
    """The token mixer: LSK attention under ``attention``."""

    def __init__(self, net_depth: int, dim: int) -> None:
        super().__init__()
        self.attention = LSKAttention(dim)
        _init_scaled(self, net_depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(x)


class Mlp(nn.Module):
    """dw 3x3, 1x1 up (x4), ReLU, 1x1 down, dw 3x3 (under ``mlp``)."""

    def __init__(self, net_depth: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim),
            nn.Conv2d(dim, hidden, 1),
            nn.ReLU(True),
            nn.Conv2d(hidden, dim, 1),
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim),
        )
        _init_scaled(self, net_depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class BasicBlock(nn.Module):
    """``x += mixer(LN(x)); x += mlp(LN(x))`` (drop-path is the identity at test time)."""

    def __init__(self, net_depth: int, dim: int) -> None:
        super().__init__()
        self.norm1 = ChannelNorm(dim)
        self.token_mixer = ConvLayer(net_depth, dim)
        self.norm2 = ChannelNorm(dim)
        self.gdfn = Mlp(net_depth, dim, dim * 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mixer(self.norm1(x))
        return x + self.gdfn(self.norm2(x))


class BasicLayer(nn.Module):
    """A stage: ``depth`` blocks under ``blocks``."""

    def __init__(self, net_depth: int, dim: int, depth: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([BasicBlock(net_depth, dim) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class PatchEmbed(nn.Module):
    """Reflect-padded conv, stride ``patch_size`` (under ``proj``)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, kernel_size: Optional[int] = None) -> None:
        super().__init__()
        k = patch_size if kernel_size is None else kernel_size
        self.proj = nn.Conv2d(in_chans, embed_dim, k, stride=patch_size, padding=(k - patch_size + 1) // 2,
                              padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class PatchUnEmbed(nn.Module):
    """Reflect-padded conv to ``out * p^2`` channels, pixel shuffle by ``p`` (under ``proj``)."""

    def __init__(self, patch_size: int, out_chans: int, embed_dim: int, kernel_size: int = 1) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans * patch_size ** 2, kernel_size, padding=kernel_size // 2,
                      padding_mode="reflect"),
            nn.PixelShuffle(patch_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def _heads_split(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, c, h, w = t.shape
    return t.reshape(b, heads, c // heads, h * w)


def _heads_merge(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, heads, c, _ = t.shape
    return t.reshape(b, heads * c, h, w)


class CAB(nn.Module):
    """Channel cross-attention: queries from ``x``, keys/values from ``y``
    (1x1 + dw 3x3 projections, L2-normalised over pixels, learnt temperature)."""

    def __init__(self, dim: int, heads: int = HEADS) -> None:
        super().__init__()
        self.num_heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.q = nn.Conv2d(dim, dim, 1, bias=False)
        self.q_dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)
        self.kv = nn.Conv2d(dim, dim * 2, 1, bias=False)
        self.kv_dwconv = nn.Conv2d(dim * 2, dim * 2, 3, padding=1, groups=dim * 2, bias=False)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        k, v = self.kv_dwconv(self.kv(y)).chunk(2, dim=1)
        q = F.normalize(_heads_split(self.q_dwconv(self.q(x)), self.num_heads), dim=-1)
        k = F.normalize(_heads_split(k, self.num_heads), dim=-1)
        attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)
        return self.project_out(_heads_merge(attn @ _heads_split(v, self.num_heads), h, w))


class IEL(nn.Module):
    """Intensity enhancement: 1x1 up (2.66 x 2), dw 3x3, two tanh-residual dw
    branches multiplied, 1x1 down."""

    def __init__(self, dim: int, expansion: float = 2.66) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=False)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=False)
        self.dwconv1 = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False)
        self.dwconv2 = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=False)
        self.Tanh = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        x1 = self.Tanh(self.dwconv1(x1)) + x1
        x2 = self.Tanh(self.dwconv2(x2)) + x2
        return self.project_out(x1 * x2)


class IAM(nn.Module):
    """``x += CAB(LN(x), LN(y)); return IEL(LN(x))`` (one LayerNorm for all three)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gdfn = IEL(dim)
        self.norm = ChannelNorm(dim)
        self.ffn = CAB(dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x + self.ffn(self.norm(x), self.norm(y))
        return self.gdfn(self.norm(x))


class IAMB(nn.Module):
    """Interaction attention: each colour space attends to the other; 1x1 over their sum."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 1)
        self.rgb_cab = IAM(dim)
        self.ycbcr_cab = IAM(dim)

    def forward(self, rgb: torch.Tensor, ycbcr: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out_rgb = self.rgb_cab(rgb, ycbcr)
        out_ycbcr = self.ycbcr_cab(ycbcr, rgb)
        return self.proj(out_ycbcr + out_rgb), out_rgb, out_ycbcr


class TransposedAttention(nn.Module):
    """Channel ("transposed") attention, one 1x1 then a grouped 3x3 to q, k, v.

    ``spatial=False`` (official ``MDHTAttention``): q, k normalised over
    pixels, tanh of the scaled scores, biased convs. ``spatial=True``
    (official ``SpatialAttention``): normalised over channels, softmax, no bias.
    """

    def __init__(self, dim: int, spatial: bool, heads: int = HEADS) -> None:
        super().__init__()
        bias = not spatial
        self.spatial = spatial
        self.num_heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim, dim * 3, 3, padding=1, groups=dim, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)
        self.act = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        q, k, v = (_heads_split(t, self.num_heads) for t in self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1))
        axis = -2 if self.spatial else -1
        q, k = F.normalize(q, dim=axis), F.normalize(k, dim=axis)
        attn = (q @ k.transpose(-2, -1)) * self.temperature
        attn = attn.softmax(dim=-1) if self.spatial else self.act(attn)
        return self.project_out(_heads_merge(attn @ v, h, w))


def _point_mlp(channel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channel, channel, 1), nn.LeakyReLU(0.1, inplace=True), nn.Conv2d(channel, channel, 1))


class PIM(nn.Module):
    """Phase integration: amplitudes and phases of both spectra through
    ``processmag`` (as the official forward does; ``processpha`` is declared
    and unused), the phases summed, both maps rebuilt with the mixed phase."""

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.processmag = _point_mlp(channel)
        self.processpha = _point_mlp(channel)

    def forward(self, rgb: torch.Tensor, ycbcr: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        rgb_fft = torch.fft.rfft2(rgb, norm="backward")
        ycbcr_fft = torch.fft.rfft2(ycbcr, norm="backward")
        rgb_amp = self.processmag(torch.abs(rgb_fft))
        rgb_phase = self.processmag(torch.angle(rgb_fft))
        ycbcr_amp = self.processmag(torch.abs(ycbcr_fft))
        ycbcr_phase = self.processmag(torch.angle(ycbcr_fft))
        mixed = torch.exp(1j * (rgb_phase + ycbcr_phase))
        return (torch.fft.irfft2(rgb_amp * mixed, norm="backward"),
                torch.fft.irfft2(ycbcr_amp * mixed, norm="backward"))


class BiColorGuidanceBridge(nn.Module):
    """BGB (official ``BI_color_Guidance_Bridge``), see the module docstring."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.detail_pool = nn.MaxPool2d(2, 2)
        self.smooth_pool = nn.AvgPool2d(2, 2)
        self.iam = IAMB(dim)
        self.detail_attention = TransposedAttention(dim, spatial=True)
        self.color_attention = TransposedAttention(dim, spatial=False)
        self.pim = PIM(dim)
        self.pixel_shuffle = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.rgb_feat_conv = nn.Sequential(nn.Conv2d(dim // 2, dim, 3, padding=1, stride=2, groups=dim // 2),
                                           nn.Softmax(dim=1))
        self.ycbcr_feat_conv = nn.Sequential(nn.Conv2d(dim // 2, dim, 3, padding=1, stride=2, groups=dim // 2),
                                             nn.Softmax(dim=1))

    def forward(self, rgb: torch.Tensor, ycbcr: torch.Tensor,
                previous: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> Tuple[torch.Tensor, ...]:
        down0, down1 = self.smooth_pool(rgb), self.detail_pool(ycbcr)
        if previous is not None:
            down0 = self.color_attention(down0 * self.rgb_feat_conv(previous[0]))
            down1 = self.detail_attention(down1 * self.ycbcr_feat_conv(previous[1]))
        else:
            down0, down1 = self.pim(down0, down1)
        fused, rgb_feat, ycbcr_feat = self.iam(self.pixel_shuffle(down0), self.pixel_shuffle(down1))
        return fused, rgb_feat, ycbcr_feat, down0, down1


class SKFusion(nn.Module):
    """Selective-kernel fusion of two maps: softmax weights from their pooled sum."""

    def __init__(self, dim: int, height: int = 2, reduction: int = 8) -> None:
        super().__init__()
        self.height = height
        d = max(int(dim / reduction), 4)
        self.mlp = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, d, 1, bias=False), nn.ReLU(True),
                                 nn.Conv2d(d, dim * height, 1, bias=False))
        self.softmax = nn.Softmax(dim=1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        b, c, h, w = feats[0].shape
        stacked = torch.cat(list(feats), dim=1).view(b, self.height, c, h, w)
        attn = self.softmax(self.mlp(torch.sum(stacked, dim=1)).view(b, self.height, c, 1, 1))
        return torch.sum(stacked * attn, dim=1)


def colour_weights(x: torch.Tensor) -> torch.Tensor:
    """CEM: ``softmax_c(GAP(x - mean_c(x)))`` (B x C x 1 x 1)."""
    return F.softmax(F.adaptive_avg_pool2d(x - torch.mean(x, dim=1, keepdim=True), (1, 1)), 1)


class SGDN(Backbone):
    """The SGDN U-net with its RGB/YCbCr twin encoder (see module docstring)."""

    def __init__(self, base_dim: int = BASE_DIM, encoder_depths: Sequence[int] = ENCODER_DEPTHS,
                 decoder_depths: Sequence[int] = DECODER_DEPTHS) -> None:
        super().__init__()
        n = len(encoder_depths)
        dims = [2 ** i * base_dim for i in range(n)]
        self.dims = tuple(dims)
        net_depth = sum(encoder_depths)
        # attribute order as the official model, so state dicts list keys alike
        self.inconv = PatchEmbed(1, 3, dims[0], kernel_size=3)
        self.layers = nn.ModuleList()
        self.skips = nn.ModuleList()
        self.downs = nn.ModuleList()
        self.fusions = nn.ModuleList()
        self.sDiffPropagator = nn.ModuleList()  # official name
        # the official decoder stages have 2 blocks each (decoder_depths only sets drop-path rates)
        self.decoder4 = BasicLayer(8, dims[3], 2)
        self.up4 = PatchUnEmbed(2, dims[2], dims[3])
        self.decoder3 = BasicLayer(8, dims[2], 2)
        self.up3 = PatchUnEmbed(2, dims[1], dims[2])
        self.decoder2 = BasicLayer(8, dims[1], 2)
        self.up2 = PatchUnEmbed(2, base_dim, dims[1])
        self.decoder1 = BasicLayer(8, base_dim, 2)
        for i in range(n):
            self.layers.append(BasicLayer(net_depth, dims[i], encoder_depths[i]))
        for i in range(n - 1):  # the official code builds n bridges and deletes the last
            self.sDiffPropagator.append(BiColorGuidanceBridge(dims[i]))
        for i in range(n - 1):
            self.downs.append(PatchEmbed(2, dims[i], dims[i + 1]))
            self.skips.append(nn.Conv2d(dims[i], dims[i], 1))
            self.fusions.append(SKFusion(dims[i]))
        self.outconv = PatchUnEmbed(1, 3, dims[0], kernel_size=3)
        self.outconv128 = PatchUnEmbed(1, 3, 64, kernel_size=3)
        self.outconv64 = PatchUnEmbed(1, 3, 128, kernel_size=3)

    def fusion_points(self) -> List[FusionPoint]:
        """Encoder stages (strides 1-8, each run on the RGB and the YCbCr
        features) and decoder stages (8-1), on the image padded to a multiple of 8."""
        d = self.dims
        enc = [FusionPoint(f"layers.{i}", d[i], 2 ** i) for i in range(4)]
        dec = [FusionPoint(f"decoder{i + 1}", d[i], 2 ** i) for i in (3, 2, 1, 0)]
        return enc + dec

    def input_points(self) -> List[InputPoint]:
        """The input conv (it reads the RGB image and its YCbCr copy)."""
        return [InputPoint("inconv.proj")]

    def input_view(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """As the input conv sees the image: reflect-padded to a multiple of 8."""
        if name != "inconv.proj":
            return super().input_view(name, x)
        return pad_to_multiple(x, PAD_MULTIPLE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] image -> raw (unclamped) restored image, same size."""
        h, w = x.shape[-2:]
        return self.forward_official(pad_to_multiple(x, PAD_MULTIPLE))[0][:, :, :h, :w]

    def _encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
        """Both colour spaces through the shared encoder and the bridges."""
        feat, ycc = self.inconv(x), self.inconv(rgb_to_ycbcr(x))
        bridged: List[torch.Tensor] = []
        previous = None
        for i, bridge in enumerate(self.sDiffPropagator):
            feat, ycc = self.layers[i](feat), self.layers[i](ycc)
            fused, rgb_mid, ycc_mid, down0, down1 = bridge(feat, ycc, previous)
            bridged.append(fused)
            previous = (down0, down1)
            feat, ycc = self.downs[i](feat + rgb_mid), self.downs[i](ycc + ycc_mid)
        return self.layers[-1](feat), self.layers[-1](ycc), bridged

    def forward_official(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The official forward (sides multiples of 8): outputs at full, 1/2 and 1/4 size."""
        feat, ycc, bridged = self._encode(x)
        out = self.decoder4(feat * colour_weights(ycc) + ycc)
        out = self.decoder3(self.fusions[2]([self.skips[2](bridged[2]), self.up4(out)]))
        out_64 = self.outconv64(out)
        out = self.decoder2(self.fusions[1]([self.skips[1](bridged[1]), self.up3(out)]))
        out_128 = self.outconv128(out)
        out = self.decoder1(self.fusions[0]([self.skips[0](bridged[0]), self.up2(out)]))
        return [self.outconv(out) + x, out_128, out_64]


def load_official_sgdn_state(path: "str | Path") -> Dict[str, torch.Tensor]:
    """State dict of an official file (BasicSR ``{'params': state}``; ``params_ema`` also read)."""
    return read_official_state(path, "SGDN", containers=("params", "params_ema", "state_dict"))


@BACKBONES.register("sgdn")
def sgdn(weights: "str | Path | None" = None) -> SGDN:
    """SGDN (official defaults: base 32, encoder depths 4/4/6/8); ``weights``: official .pth."""
    model = SGDN()
    model.arch = "sgdn"
    model._build_kwargs = {}
    if weights is not None:
        load_strict(model, load_official_sgdn_state(weights), str(weights), "SGDN")
    return model
