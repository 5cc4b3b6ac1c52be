"""DehazeFormer (Song et al., "Vision Transformers for Single Image Dehazing",
IEEE TIP 2023), module for module the network of the official
IDKiro/DehazeFormer code, so its released checkpoints load unchanged.

What is kept exactly as the official model, because released weights and
published numbers depend on it:

* module and parameter names (a state dict here has the official keys minus
  the ``module.`` prefix of their DataParallel checkpoints), including the
  ``relative_positions`` buffers of every window attention;
* the variants' embed dims, depths, heads, MLP ratios, attention ratios
  (attention in the *last* blocks of a stage) and conv types;
* RLN (LayerNorm over C, H, W whose lost mean/std are given back through the
  1x1 convs ``meta1``/``meta2``), SKFusion, 3x3 reflect-padded patch embed and
  unembed, 2x2 stride-2 patch merge, 1x1 + PixelShuffle patch split;
* reflect padding of the image to a multiple of 4 (cropped back at the end),
  reflect padding inside attention to a multiple of the window, and shifted
  windows made by reflect-padding ``shift`` rows/columns on the top/left
  (not by ``torch.roll``, which would wrap the far border in);
* the output ``J = K * I - B + I`` with ``K, B`` the 1 + 3 output channels,
  computed on the padded input.

One departure, which changes nothing where the official model runs: PyTorch's
reflect padding refuses pads as large as the map, so the official model fails
on small inputs (e.g. 19 x 23: at stride 4 the shifted attention needs 7 rows
of padding on a 5-row map). Here such pads are applied in legal steps (see
:func:`reflect_pad`), so any H, W works; when one step suffices the result is
the official one bit for bit.

Ranges: :meth:`DehazeFormer.forward_official` is the official forward
([-1, 1] in and out); :meth:`DehazeFormer.forward` follows the backbone
contract ([0, 1] in and out) and returns the raw ``(J + 1) / 2`` without
clamping, so training sees the true error; clamping for display or metrics is
the caller's job, as in the official test script.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.init import _calculate_fan_in_and_fan_out

from edgehaze.errors import CheckpointError
from edgehaze.models.backbones.official_io import WEIGHTS_OPTION as _WEIGHTS_OPTION
from edgehaze.models.backbones.official_io import read_official_state
from edgehaze.models.contracts import Backbone, FusionPoint, InputPoint
from edgehaze.models.registries import BACKBONES

#: image side multiple the network works on (two stride-2 merges)
PATCH_SIZE = 4
WINDOW_SIZE = 8

#: official variant configurations (models/dehazeformer.py of IDKiro/DehazeFormer).
#: D, W and L are listed so a checkpoint of theirs can be recognised by name;
#: only T, S, B and M are registered as backbones.
VARIANTS: Dict[str, dict] = {
    "dehazeformer-t": dict(depths=(4, 4, 4, 2, 2), attn_ratio=(0, 1 / 2, 1, 0, 0)),
    "dehazeformer-s": dict(depths=(8, 8, 8, 4, 4)),
    "dehazeformer-b": dict(depths=(16, 16, 16, 8, 8)),
    "dehazeformer-d": dict(depths=(32, 32, 32, 16, 16)),
    "dehazeformer-w": dict(embed_dims=(48, 96, 192, 96, 48), depths=(16, 16, 16, 8, 8)),
    "dehazeformer-m": dict(depths=(12, 12, 12, 6, 6), conv_type=("Conv",) * 5),
    "dehazeformer-l": dict(
        embed_dims=(48, 96, 192, 96, 48), depths=(16, 16, 16, 12, 12), conv_type=("Conv",) * 5
    ),
}
REGISTERED_VARIANTS = ("dehazeformer-t", "dehazeformer-s", "dehazeformer-b", "dehazeformer-m")

#: stride of each stage's output (layer1..layer5) relative to the input image
STAGE_STRIDES = (1, 2, 4, 2, 1)


# --------------------------------------------------------------------------- padding


def _pad_one_dim(x: torch.Tensor, before: int, after: int, dim: int) -> torch.Tensor:
    """Reflect-pad one spatial dim (-1: W, -2: H) in steps each legal for PyTorch."""
    while before > 0 or after > 0:
        size = x.shape[dim]
        if size == 1:  # nothing to reflect: repeat the single row/column
            mode, b, a = "replicate", before, after
        else:
            mode, b, a = "reflect", min(before, size - 1), min(after, size - 1)
        pads = (b, a, 0, 0) if dim == -1 else (0, 0, b, a)
        x = F.pad(x, pads, mode=mode)
        before, after = before - b, after - a
    return x


def reflect_pad(x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    """``F.pad(x, (left, right, top, bottom), 'reflect')`` that also works when
    a pad is not smaller than the map (official DehazeFormer crashes there).

    When PyTorch allows the pad in one go, this *is* that one call, so results
    equal the official model's wherever the official model runs.
    """
    h, w = x.shape[-2:]
    if left < w and right < w and top < h and bottom < h:
        if left == right == top == bottom == 0:
            return x
        return F.pad(x, (left, right, top, bottom), mode="reflect")
    return _pad_one_dim(_pad_one_dim(x, left, right, dim=-1), top, bottom, dim=-2)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad the bottom and right of ``x`` to sides that are multiples of ``multiple``.

    The official test procedure of every padded backbone here (DehazeFormer,
    MB-TaylorFormer, OKNet, SGDN, CoA); the caller crops the output back.
    """
    h, w = x.shape[-2:]
    m = int(multiple)
    return reflect_pad(x, 0, (m - w % m) % m, 0, (m - h % m) % m)


class ReflectConv2d(nn.Conv2d):
    """``nn.Conv2d(..., padding_mode='reflect')`` (same parameters and names)
    whose padding goes through :func:`reflect_pad`, so tiny maps work too."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["padding_mode"] = "reflect"
        super().__init__(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self.padding  # type: ignore[misc]
        x = reflect_pad(x, pw, pw, ph, ph)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _trunc_normal_scaled_(weight: torch.Tensor, gain: float = 1.0) -> None:
    """Xavier-style truncated normal, scaled by ``gain`` (official init)."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(weight)
    nn.init.trunc_normal_(weight, std=gain * math.sqrt(2.0 / float(fan_in + fan_out)))


def _depth_gain(network_depth: int) -> float:
    """Official residual-branch init gain: (8 * total blocks) ** -1/4."""
    return (8 * network_depth) ** (-1 / 4)


# --------------------------------------------------------------------------- blocks


class RLN(nn.Module):
    """Rescale LayerNorm: normalise over (C, H, W), and return the affine
    rescale/rebias (``meta1(std)``, ``meta2(mean)``) that the block applies to
    its branch output, so the statistics the norm removed are not lost."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones((1, dim, 1, 1)))
        self.bias = nn.Parameter(torch.zeros((1, dim, 1, 1)))
        self.meta1 = nn.Conv2d(1, dim, 1)
        self.meta2 = nn.Conv2d(1, dim, 1)
        nn.init.trunc_normal_(self.meta1.weight, std=0.02)
        nn.init.constant_(self.meta1.bias, 1)
        nn.init.trunc_normal_(self.meta2.weight, std=0.02)
        nn.init.constant_(self.meta2.bias, 0)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = torch.sqrt((x - mean).pow(2).mean(dim=(1, 2, 3), keepdim=True) + self.eps)
        normalized = (x - mean) / std * self.weight + self.bias
        return normalized, self.meta1(std), self.meta2(mean)


class Mlp(nn.Module):
    """1x1 conv -> ReLU -> 1x1 conv (the block's channel mixer)."""

    def __init__(self, network_depth: int, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Conv2d(in_features, hidden_features, 1),
            nn.ReLU(True),
            nn.Conv2d(hidden_features, in_features, 1),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                _trunc_normal_scaled_(m.weight, _depth_gain(network_depth))
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


def relative_positions_log(window_size: int) -> torch.Tensor:
    """(N, N, 2) log-spaced relative offsets between the N = ws*ws window
    positions, sign(d) * log(1 + |d|): the input of the bias MLP."""
    coords = torch.stack(
        torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    ).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    return torch.sign(rel) * torch.log(1.0 + rel.abs())


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, ws*ws, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, c)


def window_reverse(windows: torch.Tensor, window_size: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, ws*ws, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window_size, w // window_size, window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


class WindowAttention(nn.Module):
    """Multi-head attention inside one window, with a relative-position bias
    produced by a small MLP (``meta``) from the log-spaced offsets."""

    def __init__(self, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.register_buffer("relative_positions", relative_positions_log(window_size))
        self.meta = nn.Sequential(nn.Linear(2, 256), nn.ReLU(True), nn.Linear(256, num_heads))

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        b_, n, _ = qkv.shape
        qkv = qkv.reshape(b_, n, 3, self.num_heads, self.dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.meta(self.relative_positions).permute(2, 0, 1)  # heads, N, N
        attn = torch.softmax(attn + bias.unsqueeze(0), dim=-1)
        return (attn @ v).transpose(1, 2).reshape(b_, n, self.dim)


class Attention(nn.Module):
    """The token mixer of a DehazeFormer block: (shifted) window attention on
    V, plus a parallel conv branch on V (``DWConv``: 5x5 depth-wise; ``Conv``:
    two 3x3 convs), merged by a 1x1 ``proj``. Blocks without attention keep
    only the conv branch (``Conv`` blocks then have no V/proj at all)."""

    def __init__(
        self,
        network_depth: int,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int,
        use_attn: bool = False,
        conv_type: Optional[str] = None,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.use_attn = use_attn
        self.conv_type = conv_type

        if conv_type == "Conv":
            self.conv = nn.Sequential(
                ReflectConv2d(dim, dim, kernel_size=3, padding=1),
                nn.ReLU(True),
                ReflectConv2d(dim, dim, kernel_size=3, padding=1),
            )
        elif conv_type == "DWConv":
            self.conv = ReflectConv2d(dim, dim, kernel_size=5, padding=2, groups=dim)
        elif conv_type is not None:
            raise ValueError(f"conv_type must be 'Conv', 'DWConv' or None, not {conv_type!r}")
        if conv_type == "DWConv" or use_attn:
            self.V = nn.Conv2d(dim, dim, 1)
            self.proj = nn.Conv2d(dim, dim, 1)
        if use_attn:
            self.QK = nn.Conv2d(dim, dim * 2, 1)
            self.attn = WindowAttention(dim, window_size, num_heads)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # QK keeps plain Xavier scale; every other conv is depth-scaled
                is_qk = m.weight.shape[0] == dim * 2
                _trunc_normal_scaled_(m.weight, 1.0 if is_qk else _depth_gain(network_depth))
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)

    def _pad_to_windows(self, x: torch.Tensor) -> torch.Tensor:
        """Reflect-pad to whole windows; a shifted block puts ``shift`` extra
        rows/columns on the top/left, which moves the window grid by ``shift``."""
        ws, s = self.window_size, self.shift_size
        h, w = x.shape[-2:]
        mod_h, mod_w = (ws - h % ws) % ws, (ws - w % ws) % ws
        if s > 0:
            return reflect_pad(x, s, (ws - s + mod_w) % ws, s, (ws - s + mod_h) % ws)
        return reflect_pad(x, 0, mod_w, 0, mod_h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if not self.use_attn:
            if self.conv_type == "Conv":
                return self.conv(x)  # conv-only Conv block: no projection
            return self.proj(self.conv(self.V(x)))

        v = self.V(x)
        qkv = self._pad_to_windows(torch.cat([self.QK(x), v], dim=1))
        hp, wp = qkv.shape[-2:]
        windows = window_partition(qkv.permute(0, 2, 3, 1), self.window_size)
        out = window_reverse(self.attn(windows), self.window_size, hp, wp)
        s = self.shift_size
        attn_out = out[:, s : s + h, s : s + w, :].permute(0, 3, 1, 2)
        if self.conv_type in ("Conv", "DWConv"):
            return self.proj(self.conv(v) + attn_out)
        return self.proj(attn_out)


class TransformerBlock(nn.Module):
    """DehazeFormer block: ``x + mixer(RLN(x))`` (rescaled back by RLN's
    meta outputs) then ``x + mlp(x)``. Blocks without attention skip the norm."""

    def __init__(
        self,
        network_depth: int,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        window_size: int,
        shift_size: int,
        use_attn: bool,
        conv_type: Optional[str],
    ) -> None:
        super().__init__()
        self.use_attn = use_attn
        self.norm1 = RLN(dim) if use_attn else nn.Identity()
        self.attn = Attention(
            network_depth, dim, num_heads, window_size, shift_size, use_attn=use_attn, conv_type=conv_type
        )
        self.mlp = Mlp(network_depth, dim, hidden_features=int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_attn:
            normed, rescale, rebias = self.norm1(x)
            x = x + (self.attn(normed) * rescale + rebias)
        else:
            x = x + self.attn(x)
        return x + self.mlp(x)


class BasicLayer(nn.Module):
    """One stage: ``depth`` blocks, every second one shifted by half a window;
    the last ``attn_ratio * depth`` blocks use attention."""

    def __init__(
        self,
        network_depth: int,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        window_size: int,
        attn_ratio: float,
        conv_type: Optional[str],
    ) -> None:
        super().__init__()
        self.dim = dim
        self.depth = depth
        first_attn = depth - attn_ratio * depth  # official float formula ('last' placement)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                network_depth,
                dim,
                num_heads,
                mlp_ratio,
                window_size,
                shift_size=0 if i % 2 == 0 else window_size // 2,
                use_attn=i >= first_attn,
                conv_type=conv_type,
            )
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class PatchEmbed(nn.Module):
    """Strided conv into ``embed_dim`` channels (embed: 3x3 stride 1; merge:
    2x2 stride 2)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, kernel_size: Optional[int] = None) -> None:
        super().__init__()
        kernel_size = patch_size if kernel_size is None else kernel_size
        self.proj = ReflectConv2d(
            in_chans, embed_dim, kernel_size=kernel_size, stride=patch_size,
            padding=(kernel_size - patch_size + 1) // 2,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class PatchUnEmbed(nn.Module):
    """Conv to ``out_chans * patch_size**2`` channels then PixelShuffle (split:
    1x1, x2 up; unembed: 3x3, no up)."""

    def __init__(self, patch_size: int, out_chans: int, embed_dim: int, kernel_size: Optional[int] = None) -> None:
        super().__init__()
        kernel_size = 1 if kernel_size is None else kernel_size
        self.proj = nn.Sequential(
            ReflectConv2d(embed_dim, out_chans * patch_size**2, kernel_size=kernel_size, padding=kernel_size // 2),
            nn.PixelShuffle(patch_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class SKFusion(nn.Module):
    """Selective-kernel fusion of ``height`` same-shape maps: channel weights
    from the pooled sum, softmax across the maps, weighted sum."""

    def __init__(self, dim: int, height: int = 2, reduction: int = 8) -> None:
        super().__init__()
        self.height = height
        hidden = max(int(dim / reduction), 4)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, hidden, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(hidden, dim * height, 1, bias=False),
        )

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        b, c, h, w = feats[0].shape
        stacked = torch.cat(list(feats), dim=1).view(b, self.height, c, h, w)
        weights = self.mlp(self.avg_pool(stacked.sum(dim=1)))
        weights = torch.softmax(weights.view(b, self.height, c, 1, 1), dim=1)
        return (stacked * weights).sum(dim=1)


# --------------------------------------------------------------------------- network


class DehazeFormer(Backbone):
    """The five-stage U-shaped DehazeFormer (see module docstring).

    Stages ``layer1``..``layer5`` run at strides 1, 2, 4, 2, 1; they are the
    DF-block stages where depth features are fused (paper Table 7).
    """

    def __init__(
        self,
        in_chans: int = 3,
        out_chans: int = 4,
        window_size: int = WINDOW_SIZE,
        embed_dims: Sequence[int] = (24, 48, 96, 48, 24),
        mlp_ratios: Sequence[float] = (2.0, 4.0, 4.0, 2.0, 2.0),
        depths: Sequence[int] = (16, 16, 16, 8, 8),
        num_heads: Sequence[int] = (2, 4, 6, 1, 1),
        attn_ratio: Sequence[float] = (1 / 4, 1 / 2, 3 / 4, 0, 0),
        conv_type: Sequence[Optional[str]] = ("DWConv",) * 5,
    ) -> None:
        super().__init__()
        if embed_dims[1] != embed_dims[3] or embed_dims[0] != embed_dims[4]:
            raise ValueError(f"embed_dims must mirror (d0, d1, d2, d1, d0), got {tuple(embed_dims)}")
        if out_chans != 4:
            raise ValueError("out_chans must be 4: one K channel and three B channels (J = K*I - B + I)")
        self.patch_size = PATCH_SIZE
        self.window_size = window_size
        self.embed_dims = tuple(embed_dims)
        network_depth = sum(depths)

        def stage(i: int) -> BasicLayer:
            return BasicLayer(
                network_depth, embed_dims[i], depths[i], num_heads[i], mlp_ratios[i],
                window_size, attn_ratio[i], conv_type[i],
            )

        # same attribute order as the official model, so state dicts list keys alike
        self.patch_embed = PatchEmbed(1, in_chans, embed_dims[0], kernel_size=3)
        self.layer1 = stage(0)
        self.patch_merge1 = PatchEmbed(2, embed_dims[0], embed_dims[1])
        self.skip1 = nn.Conv2d(embed_dims[0], embed_dims[0], 1)
        self.layer2 = stage(1)
        self.patch_merge2 = PatchEmbed(2, embed_dims[1], embed_dims[2])
        self.skip2 = nn.Conv2d(embed_dims[1], embed_dims[1], 1)
        self.layer3 = stage(2)
        self.patch_split1 = PatchUnEmbed(2, embed_dims[3], embed_dims[2])
        self.fusion1 = SKFusion(embed_dims[3])
        self.layer4 = stage(3)
        self.patch_split2 = PatchUnEmbed(2, embed_dims[4], embed_dims[3])
        self.fusion2 = SKFusion(embed_dims[4])
        self.layer5 = stage(4)
        self.patch_unembed = PatchUnEmbed(1, out_chans, embed_dims[4], kernel_size=3)

    # ---- contract

    def fusion_points(self) -> List[FusionPoint]:
        """The five DF stages. Their maps are those of the image reflect-padded
        to a multiple of 4, so an H x W input gives ceil(H/4)*4/stride rows
        (19 x 23 -> 20 x 24 at stride 1, 5 x 6 at stride 4)."""
        return [
            FusionPoint(name=f"layer{i + 1}", channels=self.embed_dims[i], stride=STAGE_STRIDES[i])
            for i in range(5)
        ]

    def input_points(self) -> List[InputPoint]:
        """The 3x3 patch embedding, the one layer that reads the image."""
        return [InputPoint("patch_embed.proj")]

    def input_view(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """As the patch embedding sees the image: mapped to [-1, 1], reflect-padded to a multiple of 4."""
        if name != "patch_embed.proj":
            return super().input_view(name, x)
        return pad_to_multiple(x * 2 - 1, self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] image -> raw (unclamped) [0, 1]-range restored image, same size."""
        return (self.forward_official(x * 2 - 1) + 1) / 2

    # ---- the official network

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Padded [-1, 1] image -> (K, B) map with 4 channels, same size."""
        x = self.layer1(self.patch_embed(x))
        skip1 = x
        x = self.layer2(self.patch_merge1(x))
        skip2 = x
        x = self.patch_split1(self.layer3(self.patch_merge2(x)))
        x = self.fusion1([x, self.skip2(skip2)]) + x
        x = self.patch_split2(self.layer4(x))
        x = self.fusion2([x, self.skip1(skip1)]) + x
        return self.patch_unembed(self.layer5(x))

    def forward_official(self, x: torch.Tensor) -> torch.Tensor:
        """The official forward: [-1, 1] image in, ``J = K*I - B + I`` out
        (same size, not clamped), the image reflect-padded to a multiple of 4."""
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.patch_size)
        k, b = torch.split(self.forward_features(x), (1, 3), dim=1)
        return (k * x - b + x)[:, :, :h, :w]

    # ---- official checkpoints

    def load_official_state(self, state: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
        """Load an official state dict (``module.`` already stripped).

        Every parameter must be present with its shape; the constant
        ``relative_positions`` buffers may be absent. Any other mismatch is a
        :class:`CheckpointError` naming ``source``, this variant, the variant
        the file looks like, and the fix.
        """
        own = self.state_dict()
        missing = [k for k in own if k not in state and not k.endswith("relative_positions")]
        unexpected = [k for k in state if k not in own]
        wrong_shape = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or wrong_shape:
            raise CheckpointError(_mismatch_message(self, state, source, missing, unexpected, wrong_shape))
        merged = {k: state.get(k, v) for k, v in own.items()}
        self.load_state_dict(merged, strict=True)


# --------------------------------------------------------------------------- checkpoint I/O


def load_official_dehazeformer_state(path: str | Path) -> Dict[str, torch.Tensor]:
    """Read an official DehazeFormer checkpoint into a plain state dict.

    Accepts the released layout ``{'state_dict': {'module.' + name: tensor}}``
    and bare state dicts with or without ``module.``. Loaded with
    ``weights_only=True`` (no pickled code runs), by the reader every
    third-party backbone shares (:func:`official_io.read_official_state`).
    """
    return read_official_state(path, "DehazeFormer", containers=("state_dict",),
                               example="dehazeformer-t.pth from the IDKiro/DehazeFormer release")


@lru_cache(maxsize=None)
def _variant_shapes(name: str) -> Dict[str, Tuple[int, ...]]:
    """Key -> shape of a variant's state dict (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = DehazeFormer(**VARIANTS[name])
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


_STAGE_NAMES = tuple(f"layer{i}" for i in range(1, 6))


def _blocks_per_stage(keys: Sequence[str]) -> Tuple[int, ...]:
    """Number of blocks in layer1..layer5 as seen in state-dict keys."""
    counts = [0] * 5
    for key in keys:
        parts = key.split(".")
        if len(parts) > 2 and parts[1] == "blocks" and parts[0] in _STAGE_NAMES and parts[2].isdigit():
            i = _STAGE_NAMES.index(parts[0])
            counts[i] = max(counts[i], int(parts[2]) + 1)
    return tuple(counts)



def identify_dehazeformer_variant(state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """The official variant whose parameters ``state`` matches exactly, if any.

    Variants are first narrowed by their block counts (cheap), then the
    survivors' full key/shape lists are compared."""
    given = {k: tuple(v.shape) for k, v in state.items() if not k.endswith("relative_positions")}
    depths = _blocks_per_stage(list(given))
    for name, config in VARIANTS.items():
        if tuple(config["depths"]) != depths:
            continue
        expected = {k: s for k, s in _variant_shapes(name).items() if not k.endswith("relative_positions")}
        if given == expected:
            return name
    return None


def _mismatch_message(
    model: DehazeFormer,
    state: Mapping[str, torch.Tensor],
    source: str,
    missing: List[str],
    unexpected: List[str],
    wrong_shape: List[str],
) -> str:
    variant = model.arch or "this DehazeFormer configuration"
    own = model.state_dict()
    details = []
    if missing:
        details.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        details.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if wrong_shape:
        k = wrong_shape[0]
        details.append(
            f"{len(wrong_shape)} shape mismatches (e.g. {k}: file {tuple(state[k].shape)}, "
            f"model {tuple(own[k].shape)})"
        )
    guess = identify_dehazeformer_variant(state)
    if guess in REGISTERED_VARIANTS:
        fix = f"it is a {guess} checkpoint: build the backbone {guess} (--backbone {guess}, config model.backbone), or pass a {variant} file with {_WEIGHTS_OPTION}"
    elif guess is not None:
        fix = f"it is a {guess} checkpoint, a variant edgehaze does not register; pass a {variant} file with {_WEIGHTS_OPTION}"
    else:
        fix = f"it matches no official DehazeFormer variant; pass an official {variant} checkpoint with {_WEIGHTS_OPTION}"
    return f"{source}: does not fit {variant} ({'; '.join(details)}); {fix}"


# --------------------------------------------------------------------------- factories


def _build(name: str, weights: str | Path | None) -> DehazeFormer:
    model = DehazeFormer(**VARIANTS[name])
    model.arch = name
    # The weights path is deliberately not part of the rebuild arguments: a
    # checkpoint that stores build_kwargs() stores the trained weights too, and
    # a path from another machine would make rebuilding fail.
    model._build_kwargs = {}
    if weights is not None:
        model.load_official_state(load_official_dehazeformer_state(weights), source=str(weights))
    return model


@BACKBONES.register("dehazeformer-t")
def dehazeformer_t(weights: str | Path | None = None) -> DehazeFormer:
    """DehazeFormer-T (official ``dehazeformer_t``); ``weights``: official .pth."""
    return _build("dehazeformer-t", weights)


@BACKBONES.register("dehazeformer-s")
def dehazeformer_s(weights: str | Path | None = None) -> DehazeFormer:
    """DehazeFormer-S (official ``dehazeformer_s``); ``weights``: official .pth."""
    return _build("dehazeformer-s", weights)


@BACKBONES.register("dehazeformer-b")
def dehazeformer_b(weights: str | Path | None = None) -> DehazeFormer:
    """DehazeFormer-B (official ``dehazeformer_b``); ``weights``: official .pth."""
    return _build("dehazeformer-b", weights)


@BACKBONES.register("dehazeformer-m")
def dehazeformer_m(weights: str | Path | None = None) -> DehazeFormer:
    """DehazeFormer-M (official ``dehazeformer_m``, the variant the depth-fusion
    paper reports: 4.63M parameters); ``weights``: official .pth."""
    return _build("dehazeformer-m", weights)
