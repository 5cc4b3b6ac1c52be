"""OKNet (Cui et al., "Omni-Kernel Network for Image Restoration", AAAI 2024),
the network of the official c-yn/OKNet code (``Dehazing/ITS/models``; the OTS
model is the same), so its released checkpoints load unchanged.

Kept exactly as the official model, because released weights depend on it:

* module and parameter names (``Encoder``, ``feat_extract``, ``Decoder``,
  ``Convs``, ``ConvsOut``, ``FAM1/2``, ``SCM1/2`` and the omni-kernel module
  under the official spelling ``bottelneck``); the released files hold the
  state dict under ``'model'``;
* base width 32, 4 residual blocks per stage, GELU after every conv that has
  one, 63-wide depth-wise strips and square kernel in the omni-kernel module,
  its frequency-channel attention (FCA, through ``fft2``/``ifft2`` and ``abs``),
  spatial-channel attention and FGM;
* the multi-input encoder: nearest-neighbour 1/2 and 1/4 copies of the image
  through SCM, merged by FAM; the multi-output decoder (1/4, 1/2, full);
* the official test procedure: the [0, 1] image reflect-padded on the bottom
  and right to a multiple of 4, the full-resolution output cropped back.

``forward`` returns that full-resolution output, not clamped (the official
evaluation clamps before metrics); :meth:`OKNet.forward_official` returns the
official list of three outputs on an already padded input.

Fusion points: the paper (Table 9) fuses OKNet's "ResGroup"s, i.e. the three
encoder and three decoder stages (strides 1, 2, 4, 4, 2, 1).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from edgehaze.models.backbones.dehazeformer import pad_to_multiple
from edgehaze.models.backbones.official_io import load_strict, read_official_state
from edgehaze.models.contracts import Backbone, FusionPoint, InputPoint
from edgehaze.models.registries import BACKBONES

#: image side multiple the network needs (two stride-2 downsamplings)
PAD_MULTIPLE = 4
BASE_CHANNELS = 32
#: width of the omni-kernel's large depth-wise kernels
OMNI_KERNEL = 63
#: convolutions that read the image -> how many times the image is halved before them
_INPUT_SCALES = {"feat_extract.0.main.0": 0, "SCM2.main.0.main.0": 1, "SCM1.main.0.main.0": 2}


class BasicConv(nn.Module):
    """Conv (or transposed conv) with 'same' padding, optional GELU (official ``BasicConv``)."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int, relu: bool = True,
                 transpose: bool = False) -> None:
        super().__init__()
        if transpose:
            conv: nn.Module = nn.ConvTranspose2d(cin, cout, kernel_size, stride=stride, padding=kernel_size // 2 - 1)
        else:
            conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=kernel_size // 2)
        self.main = nn.Sequential(conv, nn.GELU()) if relu else nn.Sequential(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class ResBlock(nn.Module):
    """conv-GELU-conv plus identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.main = nn.Sequential(BasicConv(channels, channels, 3, 1), BasicConv(channels, channels, 3, 1, relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + x


class ResGroup(nn.Module):
    """A stage of residual blocks under ``layers`` (official ``EBlock``/``DBlock``)."""

    def __init__(self, channels: int, num_res: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[ResBlock(channels) for _ in range(num_res)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SCM(nn.Module):
    """Shallow convolution module: features of a downscaled copy of the image."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            BasicConv(3, channels // 4, 3, 1),
            BasicConv(channels // 4, channels // 2, 1, 1),
            BasicConv(channels // 2, channels // 2, 3, 1),
            BasicConv(channels // 2, channels, 1, 1, relu=False),
            nn.InstanceNorm2d(channels, affine=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class FAM(nn.Module):
    """Feature attention merge: a 3x3 conv over the concatenated pair."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.merge = BasicConv(channels * 2, channels, 3, 1, relu=False)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return self.merge(torch.cat([x1, x2], dim=1))


def _spectral_product(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``|ifft2(weight * fft2(x))|``: a real weight applied in the frequency domain."""
    return torch.abs(torch.fft.ifft2(weight * torch.fft.fft2(x, norm="backward"), dim=(-2, -1), norm="backward"))


class FGM(nn.Module):
    """Frequency gating module: ``alpha * |ifft(x1 * fft(x2))| + beta * x``
    (``conv`` is declared by the official code but never used; kept for its keys)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim * 2, 3, 1, 1)
        self.dwconv1 = nn.Conv2d(dim, dim, 1, 1)
        self.dwconv2 = nn.Conv2d(dim, dim, 1, 1)
        self.alpha = nn.Parameter(torch.zeros(dim, 1, 1))
        self.beta = nn.Parameter(torch.ones(dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _spectral_product(self.dwconv1(x), self.dwconv2(x)) * self.alpha + x * self.beta


class OmniKernel(nn.Module):
    """The omni-kernel module (official ``BottleNect``): global (FCA), large
    (63-wide strips and square) and local (1x1) depth-wise branches."""

    def __init__(self, dim: int, kernel: int = OMNI_KERNEL) -> None:
        super().__init__()
        pad = kernel // 2
        self.in_conv = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.GELU())
        self.out_conv = nn.Conv2d(dim, dim, 1)
        self.dw_13 = nn.Conv2d(dim, dim, (1, kernel), padding=(0, pad), groups=dim)
        self.dw_31 = nn.Conv2d(dim, dim, (kernel, 1), padding=(pad, 0), groups=dim)
        self.dw_33 = nn.Conv2d(dim, dim, kernel, padding=pad, groups=dim)
        self.dw_11 = nn.Conv2d(dim, dim, 1, groups=dim)
        self.act = nn.ReLU()
        self.conv = nn.Conv2d(dim, dim, 1)  # spatial-channel attention
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fac_conv = nn.Conv2d(dim, dim, 1)  # frequency-channel attention
        self.fac_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fgm = FGM(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.in_conv(x)
        fca = _spectral_product(self.fac_conv(self.fac_pool(out)), out)
        sca = self.fgm(self.conv(self.pool(fca)) * fca)
        out = x + self.dw_13(out) + self.dw_31(out) + self.dw_33(out) + self.dw_11(out) + sca
        return self.out_conv(self.act(out))


class OKNet(Backbone):
    """The three-scale OKNet U-net (see module docstring)."""

    def __init__(self, num_res: int = 4) -> None:
        super().__init__()
        c = BASE_CHANNELS
        self.widths = (c, 2 * c, 4 * c)
        # attribute order as the official model, so state dicts list keys alike
        self.Encoder = nn.ModuleList([ResGroup(c, num_res), ResGroup(2 * c, num_res), ResGroup(4 * c, num_res)])
        self.feat_extract = nn.ModuleList([
            BasicConv(3, c, 3, 1),
            BasicConv(c, 2 * c, 3, 2),
            BasicConv(2 * c, 4 * c, 3, 2),
            BasicConv(4 * c, 2 * c, 4, 2, transpose=True),
            BasicConv(2 * c, c, 4, 2, transpose=True),
            BasicConv(c, 3, 3, 1, relu=False),
        ])
        self.Decoder = nn.ModuleList([ResGroup(4 * c, num_res), ResGroup(2 * c, num_res), ResGroup(c, num_res)])
        self.Convs = nn.ModuleList([BasicConv(4 * c, 2 * c, 1, 1), BasicConv(2 * c, c, 1, 1)])
        self.ConvsOut = nn.ModuleList([BasicConv(4 * c, 3, 3, 1, relu=False), BasicConv(2 * c, 3, 3, 1, relu=False)])
        self.FAM1 = FAM(4 * c)
        self.SCM1 = SCM(4 * c)
        self.FAM2 = FAM(2 * c)
        self.SCM2 = SCM(2 * c)
        self.bottelneck = OmniKernel(4 * c)  # official spelling: checkpoint keys depend on it

    def fusion_points(self) -> List[FusionPoint]:
        """Encoder and decoder ResGroups, on the image padded to a multiple of 4."""
        c = self.widths
        return [
            FusionPoint("Encoder.0", c[0], 1), FusionPoint("Encoder.1", c[1], 2), FusionPoint("Encoder.2", c[2], 4),
            FusionPoint("Decoder.0", c[2], 4), FusionPoint("Decoder.1", c[1], 2), FusionPoint("Decoder.2", c[0], 1),
        ]

    def input_points(self) -> List[InputPoint]:
        """The first conv of the full-resolution stem and of the two SCMs (1/2, 1/4 copies)."""
        return [InputPoint(n) for n in _INPUT_SCALES]

    def input_view(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Padded to a multiple of 4, then nearest-downscaled as ``forward_official`` does for the SCMs."""
        if name not in _INPUT_SCALES:
            return super().input_view(name, x)
        x = pad_to_multiple(x, PAD_MULTIPLE)
        for _ in range(_INPUT_SCALES[name]):
            x = F.interpolate(x, scale_factor=0.5)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] image -> raw (unclamped) restored image, same size (official test procedure)."""
        h, w = x.shape[-2:]
        return self.forward_official(pad_to_multiple(x, PAD_MULTIPLE))[2][:, :, :h, :w]

    def forward_official(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The official forward on a padded image: outputs at 1/4, 1/2 and full size."""
        x_2 = F.interpolate(x, scale_factor=0.5)
        x_4 = F.interpolate(x_2, scale_factor=0.5)
        z2, z4 = self.SCM2(x_2), self.SCM1(x_4)
        res1 = self.Encoder[0](self.feat_extract[0](x))
        res2 = self.Encoder[1](self.FAM2(self.feat_extract[1](res1), z2))
        z = self.Encoder[2](self.FAM1(self.feat_extract[2](res2), z4))
        z = self.Decoder[0](self.bottelneck(z))
        out4 = self.ConvsOut[0](z) + x_4
        z = self.Decoder[1](self.Convs[0](torch.cat([self.feat_extract[3](z), res2], dim=1)))
        out2 = self.ConvsOut[1](z) + x_2
        z = self.Decoder[2](self.Convs[1](torch.cat([self.feat_extract[4](z), res1], dim=1)))
        return [out4, out2, self.feat_extract[5](z) + x]


def load_official_oknet_state(path: "str | Path") -> Dict[str, torch.Tensor]:
    """State dict of an official OKNet file (``{'model': state}``, as ``eval.py`` reads it)."""
    return read_official_state(path, "OKNet", containers=("model", "state_dict"))


@BACKBONES.register("oknet")
def oknet(weights: "str | Path | None" = None) -> OKNet:
    """OKNet (official ``build_net``: 4 residual blocks per stage); ``weights``: official .pkl/.pth."""
    model = OKNet()
    model.arch = "oknet"
    model._build_kwargs = {}
    if weights is not None:
        load_strict(model, load_official_oknet_state(weights), str(weights), "OKNet")
    return model
