"""MB-TaylorFormer (Qiu et al., "MB-TaylorFormer: Multi-branch Efficient
Transformer Expanded by Taylor Formula for Image Dehazing", ICCV 2023), the
network of the official FVL2020/ICCV-2023-MB-TaylorFormer code
(``basicsr/models/archs/MB_TaylorFormer.py`` with the settings of
``Dehazing/Options/MB-TaylorFormer-{B,L}.yml``), so its released checkpoints
(``{'params': state}``, as ``Dehazing/test.py`` reads them) load unchanged.

Kept exactly as the official model:

* module and parameter names (``patch_embed``, ``patch_embed_encoder_level1``
  ... ``refinement``, ``output``), including deformable convs as
  ``torchvision.ops.DeformConv2d`` (key ``dcn.weight``);
* the multi-branch patch embedding: a chain of ``num_path`` depth-wise
  deformable 3x3 convs (offsets from a depth-wise 3x3 + 1x1 to 18 channels,
  clamped to ``offset_clamp``) + 1x1 + Hardswish, each link feeding a branch;
* T-MSA, the first-order Taylor expansion of softmax attention, linear in the
  number of pixels: ``(sum v + q (k^T v)) / (N + q sum k)`` with q, k
  L2-normalised over channels and divided by ``qk_norm``, times a learnable
  temperature and the sigmoid of the multi-scale convolutional correction
  (MSAR, ``refine_att``: grouped convs over (q, k), kernels 3/5/7 by head
  count); bias-free LayerNorm; gated depth-wise FFN (2.66);
* SKFF fusion of the branches, pixel-(un)shuffle down/up-sampling, skip
  concatenations, the final residual ``output(x) + image``;
* the official test procedure: the [0, 1] image reflect-padded on the bottom
  and right to a multiple of 8, the output cropped back.

Fusion points (paper Table 9: "MHCA"): the outputs of the eight MHCA stages.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import DeformConv2d

from edgehaze.models.backbones.dehazeformer import pad_to_multiple
from edgehaze.models.backbones.official_io import load_strict, read_official_state
from edgehaze.models.contracts import Backbone, FusionPoint, InputPoint
from edgehaze.models.registries import BACKBONES

PAD_MULTIPLE = 8
FFN_EXPANSION = 2.66

#: official Options/*.yml (network_g); dims and heads are shared
VARIANTS: Dict[str, dict] = {
    "mb-taylorformer-b": dict(num_blocks=(2, 3, 3, 4), num_path=(2, 2, 2, 2)),
    "mb-taylorformer-l": dict(num_blocks=(4, 6, 6, 8), num_path=(2, 3, 3, 3)),
}

#: MSAR kernel size -> heads it serves, per head count (official ``Attention``)
MSAR_WINDOWS: Dict[int, Dict[int, int]] = {1: {3: 1}, 2: {3: 2}, 4: {3: 2, 5: 2}, 8: {3: 2, 5: 3, 7: 3}}


class BiasFreeLayerNorm(nn.Module):
    """LayerNorm over channels without mean subtraction or bias (``body.weight``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.permute(0, 2, 3, 1)
        t = t / torch.sqrt(t.var(-1, keepdim=True, unbiased=False) + 1e-5) * self.weight
        return t.permute(0, 3, 1, 2)


class LayerNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = BiasFreeLayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class FeedForward(nn.Module):
    """Gated depth-wise FFN: ``out(gelu(a) * b)``, ``a, b`` from 1x1 + dw 3x3."""

    def __init__(self, dim: int, expansion: float = FFN_EXPANSION) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=False)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=False)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(a) * b)


class MultiScaleRefinement(nn.Module):
    """MSAR (official ``refine_att``): per-head spatial weights from grouped
    convs over the stacked normalised (q, k) of each head."""

    def __init__(self, head_channels: int, windows: Dict[int, int]) -> None:
        super().__init__()
        self.conv_list = nn.ModuleList(
            nn.Conv2d(heads * head_channels * 2, heads, kernel, padding=kernel // 2, groups=heads)
            for kernel, heads in windows.items()
        )
        self.channel_splits = [heads * head_channels * 2 for heads in windows.values()]

    def forward(self, q: torch.Tensor, k: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """q: B x h x N x Ch, k: B x h x Ch x N -> B x h x N x 1."""
        b, heads, n, ch = q.shape
        h, w = size
        qk = torch.cat([q.transpose(-1, -2), k], dim=2).reshape(b, heads * 2 * ch, h, w)
        att = torch.cat([conv(part) for conv, part in zip(self.conv_list, torch.split(qk, self.channel_splits, 1))], 1)
        return att.reshape(b, heads, n, 1)


class TaylorAttention(nn.Module):
    """T-MSA (official ``Attention``; see module docstring)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: float) -> None:
        super().__init__()
        self.norm = qk_norm
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=False)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=False)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=False)
        self.refine_att = MultiScaleRefinement(dim // num_heads, MSAR_WINDOWS[num_heads])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        heads, n = self.num_heads, h * w
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        q = q.reshape(b, heads, c // heads, n).transpose(-1, -2)  # B h N Ch
        k = k.reshape(b, heads, c // heads, n)  # B h Ch N
        v = v.reshape(b, heads, c // heads, n).transpose(-1, -2)  # B h N Ch
        q = q / (torch.norm(q, p=2, dim=-1, keepdim=True) / self.norm + 1e-6)
        k = k / (torch.norm(k, p=2, dim=-2, keepdim=True) / self.norm + 1e-6)
        refine = torch.sigmoid(self.refine_att(q, k, (h, w)))
        numerator = v.sum(dim=-2, keepdim=True) + q @ (k @ v)
        # as the official code: q times sum(k) repeated Ch times (same rounding)
        denominator = n + q @ k.sum(dim=-1, keepdim=True).repeat(1, 1, 1, c // heads) + 1e-6
        out = numerator / denominator * self.temperature * refine
        return self.project_out(out.transpose(-1, -2).reshape(b, c, h, w))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: float) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = TaylorAttention(dim, num_heads, qk_norm)
        self.norm2 = LayerNorm(dim)
        self.ffn = FeedForward(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class MHCAEncoder(nn.Module):
    """One branch: ``num_layers`` transformer blocks (keys ``MHCA_layers``)."""

    def __init__(self, dim: int, num_layers: int, num_heads: int, qk_norm: float) -> None:
        super().__init__()
        self.MHCA_layers = nn.ModuleList(TransformerBlock(dim, num_heads, qk_norm) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.MHCA_layers:
            x = layer(x)
        return x


class SKFF(nn.Module):
    """Selective-kernel fusion of the branches (softmax over branches per channel)."""

    def __init__(self, channels: int, height: int, reduction: int = 8) -> None:
        super().__init__()
        self.height = height
        d = max(int(channels / reduction), 4)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(nn.Conv2d(channels, d, 1, bias=False), nn.PReLU())
        self.fcs = nn.ModuleList(nn.Conv2d(d, channels, 1, bias=False) for _ in range(height))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack(list(feats), dim=1)  # B x branches x C x H x W
        z = self.conv_du(self.avg_pool(stacked.sum(dim=1)))
        weights = torch.stack([fc(z) for fc in self.fcs], dim=1).softmax(dim=1)
        return (stacked * weights).sum(dim=1)


class MHCAStage(nn.Module):
    """Branches in parallel, one per embedded input, fused by SKFF (official ``MHCA_stage``)."""

    def __init__(self, dim: int, num_layers: int, num_heads: int, num_path: int, qk_norm: float) -> None:
        super().__init__()
        self.mhca_blks = nn.ModuleList(MHCAEncoder(dim, num_layers, num_heads, qk_norm) for _ in range(num_path))
        self.aggregate = SKFF(dim, height=num_path)

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.aggregate([enc(x) for x, enc in zip(inputs, self.mhca_blks)])


class DeformableEmbed(nn.Module):
    """Depth-wise deformable 3x3 + 1x1 + Hardswish (official ``DWConv2d_BN``)."""

    def __init__(self, cin: int, cout: int, offset_clamp: Tuple[float, float]) -> None:
        super().__init__()
        self.offset_clamp = tuple(offset_clamp)
        self.offset_generator = nn.Sequential(
            nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.Conv2d(cin, 18, 1, bias=False)
        )
        self.dcn = DeformConv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pwconv = nn.Conv2d(cin, cout, 1, bias=False)
        self.act = nn.Hardswish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.offset_generator(x).clamp(self.offset_clamp[0], self.offset_clamp[1])
        return self.act(self.pwconv(self.dcn(x, offset)))


class DWCPatchEmbed(nn.Module):
    def __init__(self, cin: int, cout: int, offset_clamp: Tuple[float, float]) -> None:
        super().__init__()
        self.patch_conv = DeformableEmbed(cin, cout, offset_clamp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch_conv(x)


class PatchEmbedStage(nn.Module):
    """A chain of deformable embeddings; every link's output feeds one branch."""

    def __init__(self, dim: int, num_path: int, offset_clamp: Tuple[float, float]) -> None:
        super().__init__()
        self.patch_embeds = nn.ModuleList(DWCPatchEmbed(dim, dim, offset_clamp) for _ in range(num_path))

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        outs = []
        for embed in self.patch_embeds:
            x = embed(x)
            outs.append(x)
        return outs


class OverlapPatchEmbed(nn.Module):
    def __init__(self, cin: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Downsample(nn.Module):
    """dw 3x3, 1x1 to cout/4, pixel-unshuffle by 2."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
                                  nn.Conv2d(cin, cout // 4, 1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """dw 3x3, 1x1 to 4 cout, pixel-shuffle by 2."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
                                  nn.Conv2d(cin, cout * 4, 1, bias=False), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class MBTaylorFormer(Backbone):
    """The four-level MB-TaylorFormer U-net (see module docstring)."""

    def __init__(
        self,
        dim: Sequence[int] = (24, 48, 72, 96),
        num_blocks: Sequence[int] = (2, 3, 3, 4),
        heads: Sequence[int] = (1, 2, 4, 8),
        num_path: Sequence[int] = (2, 2, 2, 2),
        qk_norm: float = 0.5,
        offset_clamp: Tuple[float, float] = (-3.0, 3.0),
    ) -> None:
        super().__init__()
        self.dims = tuple(dim)

        def embed(d: int, level: int) -> PatchEmbedStage:
            return PatchEmbedStage(d, num_path[level], offset_clamp)

        def stage(d: int, level: int) -> MHCAStage:
            return MHCAStage(d, num_blocks[level], heads[level], num_path[level], qk_norm)

        # attribute order as the official model, so state dicts list keys alike
        self.patch_embed = OverlapPatchEmbed(3, dim[0])
        self.patch_embed_encoder_level1 = embed(dim[0], 0)
        self.encoder_level1 = stage(dim[0], 0)
        self.down1_2 = Downsample(dim[0], dim[1])
        self.patch_embed_encoder_level2 = embed(dim[1], 1)
        self.encoder_level2 = stage(dim[1], 1)
        self.down2_3 = Downsample(dim[1], dim[2])
        self.patch_embed_encoder_level3 = embed(dim[2], 2)
        self.encoder_level3 = stage(dim[2], 2)
        self.down3_4 = Downsample(dim[2], dim[3])
        self.patch_embed_latent = embed(dim[3], 3)
        self.latent = stage(dim[3], 3)
        self.up4_3 = Upsample(dim[3], dim[2])
        self.reduce_chan_level3 = nn.Sequential(nn.Conv2d(dim[2] * 2, dim[2], 1, bias=False))
        self.patch_embed_decoder_level3 = embed(dim[2], 2)
        self.decoder_level3 = stage(dim[2], 2)
        self.up3_2 = Upsample(dim[2], dim[1])
        self.reduce_chan_level2 = nn.Sequential(nn.Conv2d(dim[1] * 2, dim[1], 1, bias=False))
        self.patch_embed_decoder_level2 = embed(dim[1], 1)
        self.decoder_level2 = stage(dim[1], 1)
        self.up2_1 = Upsample(dim[1], dim[0])
        # level 1 of the decoder and the refinement run at dim[1] with level 1's branches and heads
        self.patch_embed_decoder_level1 = PatchEmbedStage(dim[1], num_path[0], offset_clamp)
        self.decoder_level1 = MHCAStage(dim[1], num_blocks[0], heads[0], num_path[0], qk_norm)
        self.patch_embed_refinement = PatchEmbedStage(dim[1], num_path[0], offset_clamp)
        self.refinement = MHCAStage(dim[1], num_blocks[0], heads[0], num_path[0], qk_norm)
        self.output = nn.Sequential(nn.Conv2d(dim[1], 3, 3, padding=1, bias=False))

    def fusion_points(self) -> List[FusionPoint]:
        """The eight MHCA stages, on the image padded to a multiple of 8."""
        d = self.dims
        names = [("encoder_level1", d[0], 1), ("encoder_level2", d[1], 2), ("encoder_level3", d[2], 4),
                 ("latent", d[3], 8), ("decoder_level3", d[2], 4), ("decoder_level2", d[1], 2),
                 ("decoder_level1", d[1], 1), ("refinement", d[1], 1)]
        return [FusionPoint(n, c, s) for n, c, s in names]

    def input_points(self) -> List[InputPoint]:
        """The overlapping 3x3 patch embedding, the one layer that reads the image."""
        return [InputPoint("patch_embed.proj")]

    def input_view(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """As the patch embedding sees the image: reflect-padded to a multiple of 8."""
        if name != "patch_embed.proj":
            return super().input_view(name, x)
        return pad_to_multiple(x, PAD_MULTIPLE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] image -> raw (unclamped) restored image, same size (official test procedure)."""
        h, w = x.shape[-2:]
        return self.forward_official(pad_to_multiple(x, PAD_MULTIPLE))[:, :, :h, :w]

    def forward_official(self, image: torch.Tensor) -> torch.Tensor:
        """The official forward on an image whose sides are multiples of 8."""
        e1_in = self.patch_embed(image)
        e1 = self.encoder_level1(self.patch_embed_encoder_level1(e1_in)) + e1_in
        e2_in = self.down1_2(e1)
        e2 = self.encoder_level2(self.patch_embed_encoder_level2(e2_in)) + e2_in
        e3_in = self.down2_3(e2)
        e3 = self.encoder_level3(self.patch_embed_encoder_level3(e3_in)) + e3_in
        l_in = self.down3_4(e3)
        latent = self.latent(self.patch_embed_latent(l_in)) + l_in
        d3_in = self.reduce_chan_level3(torch.cat([self.up4_3(latent), e3], 1))
        d3 = self.decoder_level3(self.patch_embed_decoder_level3(d3_in)) + d3_in
        d2_in = self.reduce_chan_level2(torch.cat([self.up3_2(d3), e2], 1))
        d2 = self.decoder_level2(self.patch_embed_decoder_level2(d2_in)) + d2_in
        d1_in = torch.cat([self.up2_1(d2), e1], 1)
        d1 = self.decoder_level1(self.patch_embed_decoder_level1(d1_in)) + d1_in
        d1 = self.refinement(self.patch_embed_refinement(d1)) + d1
        return self.output(d1) + image


def load_official_mb_taylorformer_state(path: "str | Path") -> Dict[str, torch.Tensor]:
    """State dict of an official file (``{'params': state}``, as ``Dehazing/test.py`` reads it)."""
    return read_official_state(path, "MB-TaylorFormer", containers=("params", "state_dict"))


def _build(name: str, weights: "str | Path | None") -> MBTaylorFormer:
    model = MBTaylorFormer(**VARIANTS[name])
    model.arch = name
    model._build_kwargs = {}
    if weights is not None:
        load_strict(model, load_official_mb_taylorformer_state(weights), str(weights), name)
    return model


@BACKBONES.register("mb-taylorformer-b")
def mb_taylorformer_b(weights: "str | Path | None" = None) -> MBTaylorFormer:
    """MB-TaylorFormer-B (Options/MB-TaylorFormer-B.yml; the paper's 2.66M); ``weights``: official .pth."""
    return _build("mb-taylorformer-b", weights)


@BACKBONES.register("mb-taylorformer-l")
def mb_taylorformer_l(weights: "str | Path | None" = None) -> MBTaylorFormer:
    """MB-TaylorFormer-L (Options/MB-TaylorFormer-L.yml); ``weights``: official .pth."""
    return _build("mb-taylorformer-l", weights)
