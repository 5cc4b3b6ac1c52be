"""CoA (Ma et al., "CoA: Towards Real Image Dehazing via Compression-and-Adaptation",
CVPR 2025): the compact dehazing network of the authors' code,
``YanZhang-zy/CoA`` (``model/Student.py`` and ``model/Student_x.py``), so the
released checkpoints load unchanged.

CoA is a training recipe (a Res2Net-101 teacher distilled into a small
student, then adapted to real haze with a CLIP loss and an EMA); the network
it deploys, and the one the depth-fusion paper fuses into ("ResidualBlock",
its Table 7), is the student. Two registered forms, as the release has them:

* ``coa``: the student as it trains (``Student``; files ``Student.pth`` and
  ``EMA.pth``). Each residual block's convolutions are DEA-Net's
  detail-enhanced convolutions (``DEConv``): a central-, horizontal-,
  vertical- and angular-difference convolution and a plain one, whose
  kernels are summed into one 3x3 kernel at every forward.
* ``coa-r``: the re-parameterised student (``Student_x``; file ``EMA_r.pth``,
  written by the release's ``reparam/reparam.py``): those sums stored as
  plain 3x3 convolutions. Same output, fewer parameters;
  :func:`reparameterise` turns a trained ``coa`` into ``coa-r``.

Kept exactly as the official model, because released weights depend on it:
module and parameter names (``conv_input``, ``dense0..3``, ``conv2x..16x``,
``conv1..4``/``fusion1..4`` (RDBs and encoder multi-scale blocks),
``dehaze.res0``, ``convd16x..2x``, ``dense_4..1``, ``conv_4..1``,
``fusion_4..1``, ``conv_output``), widths 8/16/32/64/128, one PReLU slope per
block, the 11x11 reflect-padded input convolution, the half/half channel
split at every scale (one half through the dense multi-scale block in its
``iter2`` mode, the other through an RDB), nearest-exact x2 upsampling to
``2h + 1`` then a 1x1 conv and a bilinear resize to the skip's size, and the
output conv with no residual to the image.

Input: the official data pipeline feeds the network CLIP-normalised images
(``preprocess_feature``: mean (0.4815, 0.4578, 0.4082), std (0.2686,
0.2613, 0.2758)) and takes its output as the [0, 1] image. ``forward`` does
that normalisation, so it takes the [0, 1] image like every backbone here.

Size: four stride-2 stages whose multi-scale blocks subtract exactly
doubled maps, so the official network needs sides that are multiples of
16 (its training and test crops are 256; ``Eval.py`` resizes photos to a
multiple of 16 and back). Here the image is reflect-padded on the bottom and
right to a multiple of 16 instead and the output cropped back, which keeps
every pixel. Not clamped (the official evaluation clamps).

Fusion points: the paper's "ResidualBlock", i.e. the nine residual stages
(``dense0..3`` and ``dehaze`` down, ``dense_4..1`` up; strides 1-16-1).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from edgehaze.errors import CheckpointError
from edgehaze.models.backbones.dehazeformer import pad_to_multiple, reflect_pad
from edgehaze.models.backbones.official_io import load_strict, read_official_state
from edgehaze.models.contracts import Backbone, FusionPoint, InputPoint
from edgehaze.models.registries import BACKBONES

PAD_MULTIPLE = 16
WIDTHS = (8, 16, 32, 64, 128)
#: the official ``preprocess_feature`` (CLIP's image normalisation)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
INPUT_KERNEL = 11
#: DEA-Net's angular-difference kernel: each tap minus its clockwise neighbour
_ANGULAR_ORDER = [3, 0, 1, 6, 4, 2, 7, 8, 5]


# ---------------------------------------------------------------- layers
class ConvLayer(nn.Module):
    """Reflect padding of ``k // 2`` then a conv (official ``ConvLayer``;
    padded through :func:`reflect_pad` so tiny maps work too)."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.pad = kernel_size // 2
        self.conv2d = nn.Conv2d(cin, cout, kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pad
        return self.conv2d(reflect_pad(x, p, p, p, p))


def nearest_exact_indices(size_in: int, size_out: int, device: torch.device) -> torch.Tensor:
    """Source rows of a nearest-exact resize, ``floor((i + 0.5) in / out)``,
    in integer arithmetic: PyTorch's ONNX exporter has no ``nearest-exact``,
    and a gather with these indices exports (with dynamic sizes). Equal to
    ``F.interpolate(mode='nearest-exact')``'s choice (tested)."""
    i = torch.arange(size_out, device=device)
    return torch.clamp(((2 * i + 1) * size_in) // (2 * size_out), max=size_in - 1)


class UpsampleConvLayer(nn.Module):
    """Nearest-exact resize to ``(h - 1) * stride + k`` per side, then a 1x1 conv."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.stride, self.kernel_size = stride, kernel_size
        self.conv2d = nn.Conv2d(cin, cout, kernel_size=1, stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        rows = nearest_exact_indices(h, (h - 1) * self.stride + self.kernel_size, x.device)
        cols = nearest_exact_indices(w, (w - 1) * self.stride + self.kernel_size, x.device)
        return self.conv2d(x.index_select(2, rows).index_select(3, cols))


class ConvBlock(nn.Module):
    """Conv (4x4, stride 2, pad 1 in the multi-scale blocks) + PReLU."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 4, stride: int = 2, padding: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride, padding, bias=True)
        self.act = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class DeconvBlock(nn.Module):
    """Transposed conv (4x4, stride 2, pad 1: exactly x2) + PReLU."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 4, stride: int = 2, padding: int = 1) -> None:
        super().__init__()
        self.deconv = nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, bias=True)
        self.act = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.deconv(x))


def _iter2(ft: torch.Tensor, memory: Sequence[torch.Tensor], there: nn.ModuleList, back: nn.ModuleList,
           n: int) -> torch.Tensor:
    """The official multi-scale blocks' ``iter2`` mode: for each remembered
    map (farthest scale first), go ``there`` to its scale, subtract it, come
    ``back``, and add the correction."""
    fusion = ft
    for i, target in enumerate(memory):
        cur = fusion
        for j in range(n - i):
            cur = there[j](cur)
        cur = cur - target
        for j in range(n - i):
            cur = back[n - i - j - 1](cur)
        fusion = fusion + cur
    return fusion


class EncoderMDC(nn.Module):
    """Dense multi-scale block of the encoder (official ``Encoder_MDCBlock1``,
    mode ``iter2``): corrects a coarse map by its error against every finer one."""

    def __init__(self, channels: int, scales: int) -> None:
        super().__init__()
        self.n = scales - 1
        widths = [channels // 2 ** i for i in range(scales)]
        self.up_convs = nn.ModuleList([DeconvBlock(widths[i], widths[i + 1]) for i in range(self.n)])
        self.down_convs = nn.ModuleList([ConvBlock(widths[i + 1], widths[i]) for i in range(self.n)])

    def forward(self, ft_l: torch.Tensor, ft_h_list: Sequence[torch.Tensor]) -> torch.Tensor:
        return _iter2(ft_l, ft_h_list, self.up_convs, self.down_convs, self.n)


class DecoderMDC(nn.Module):
    """Dense multi-scale block of the decoder (official ``Decoder_MDCBlock1``,
    mode ``iter2``): corrects a fine map by its error against every coarser one."""

    def __init__(self, channels: int, scales: int) -> None:
        super().__init__()
        self.n = scales - 1
        self.down_convs = nn.ModuleList([ConvBlock(channels * 2 ** i, channels * 2 ** (i + 1)) for i in range(self.n)])
        self.up_convs = nn.ModuleList([DeconvBlock(channels * 2 ** (i + 1), channels * 2 ** i) for i in range(self.n)])

    def forward(self, ft_h: torch.Tensor, ft_l_list: Sequence[torch.Tensor]) -> torch.Tensor:
        return _iter2(ft_h, ft_l_list, self.down_convs, self.up_convs, self.n)


class MakeDense(nn.Module):
    """``cat(x, relu(conv3x3(x)))`` (official ``make_dense``)."""

    def __init__(self, channels: int, growth: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, growth, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, F.relu(self.conv(x))), 1)


class RDB(nn.Module):
    """Residual dense block: dense layers, a 1x1 back to the width, plus the input."""

    def __init__(self, channels: int, layers: int, growth: int) -> None:
        super().__init__()
        self.dense_layers = nn.Sequential(*[MakeDense(channels + i * growth, growth) for i in range(layers)])
        self.conv_1x1 = nn.Conv2d(channels + layers * growth, channels, kernel_size=1, padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_1x1(self.dense_layers(x)) * 1.0 + x  # official scale 1.0


# ---------------------------------------------------------------- DEConv
class _DifferenceConv(nn.Module):
    """One difference convolution of DEConv: holds its ``conv`` (official
    names) and maps that weight to the equivalent 3x3 kernel."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def kernel(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class CentralDifferenceConv(_DifferenceConv):
    """``Conv2d_cd``: the centre tap minus the sum of all taps."""

    def __init__(self, dim: int) -> None:
        super().__init__(nn.Conv2d(dim, dim, 3, padding=1, bias=True))

    def kernel(self) -> torch.Tensor:
        w = self.conv.weight
        flat = w.reshape(w.shape[0], w.shape[1], 9)
        centre = (flat[:, :, 4] - flat.sum(2))[:, :, None]
        return torch.cat([flat[:, :, :4], centre, flat[:, :, 5:]], dim=2).reshape(w.shape)


class AngularDifferenceConv(_DifferenceConv):
    """``Conv2d_ad``: each tap minus its clockwise neighbour (theta 1)."""

    def __init__(self, dim: int) -> None:
        super().__init__(nn.Conv2d(dim, dim, 3, padding=1, bias=True))

    def kernel(self) -> torch.Tensor:
        w = self.conv.weight
        flat = w.reshape(w.shape[0], w.shape[1], 9)
        return (flat - 1.0 * flat[:, :, _ANGULAR_ORDER]).reshape(w.shape)


class LineDifferenceConv(_DifferenceConv):
    """``Conv2d_hd`` / ``Conv2d_vd``: a 3-tap Conv1d weight as the left column
    minus the right one (horizontal) or the top row minus the bottom (vertical)."""

    def __init__(self, dim: int, vertical: bool) -> None:
        super().__init__(nn.Conv1d(dim, dim, 3, padding=1, bias=True))
        self.vertical = vertical

    def kernel(self) -> torch.Tensor:
        w = self.conv.weight
        zero = torch.zeros_like(w[:, :, :1])
        if self.vertical:  # rows: (w0 w1 w2), 0, -(w0 w1 w2)
            taps = [w, zero.expand_as(w), -w]
        else:  # columns: w0 0 -w0 / w1 0 -w1 / w2 0 -w2
            taps = [torch.cat([w[:, :, k:k + 1], zero, -w[:, :, k:k + 1]], dim=2) for k in range(3)]
        return torch.cat(taps, dim=2).reshape(w.shape[0], w.shape[1], 3, 3)


class DEConv(nn.Module):
    """Detail-enhanced convolution (DEA-Net): five 3x3 kernels summed into one."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1_1 = CentralDifferenceConv(dim)
        self.conv1_2 = LineDifferenceConv(dim, vertical=False)
        self.conv1_3 = LineDifferenceConv(dim, vertical=True)
        self.conv1_4 = AngularDifferenceConv(dim)
        self.conv1_5 = nn.Conv2d(dim, dim, 3, padding=1, bias=True)

    def merged(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The summed kernel and bias (the official order of the sums, so the
        re-parameterised form is bit-identical)."""
        parts = (self.conv1_1, self.conv1_2, self.conv1_3, self.conv1_4)
        w = parts[0].kernel() + parts[1].kernel() + parts[2].kernel() + parts[3].kernel() + self.conv1_5.weight
        b = parts[0].conv.bias + parts[1].conv.bias + parts[2].conv.bias + parts[3].conv.bias + self.conv1_5.bias
        return w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.merged()
        return F.conv2d(x, w, b, stride=1, padding=1)


class ResidualBlock(nn.Module):
    """``x + 0.1 conv2(prelu(conv1(x)))``; DEConvs, or plain convs once re-parameterised."""

    def __init__(self, channels: int, deploy: bool) -> None:
        super().__init__()

        def conv() -> nn.Module:
            return nn.Conv2d(channels, channels, 3, padding=1, bias=True) if deploy else DEConv(channels)

        self.conv1 = conv()
        self.conv2 = conv()
        self.relu = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.add(self.conv2(self.relu(self.conv1(x))) * 0.1, x)


def _halves(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    c = x.shape[1] // 2
    a, b = x.split([c, c], dim=1)
    return a, b


# ---------------------------------------------------------------- network
class CoA(Backbone):
    """The CoA student U-net (see module docstring); ``deploy``: the re-parameterised form."""

    def __init__(self, deploy: bool = False, res_blocks: int = 1) -> None:
        super().__init__()
        c = WIDTHS
        self.deploy = deploy

        def stage(ch: int) -> nn.Sequential:
            return nn.Sequential(ResidualBlock(ch, deploy))

        # attribute order as the official model, so state dicts list keys alike
        self.conv_input = ConvLayer(3, c[0], kernel_size=INPUT_KERNEL, stride=1)
        self.dense0 = stage(c[0])
        for i in range(1, 5):  # encoder: down, RDB on one half, multi-scale block on the other, residual stage
            setattr(self, f"conv{2 ** i}x", ConvLayer(c[i - 1], c[i], kernel_size=3, stride=2))
            setattr(self, f"conv{i}", RDB(c[i - 1], 4, c[i - 1]))
            setattr(self, f"fusion{i}", EncoderMDC(c[i - 1], i + 1))
            if i < 4:
                setattr(self, f"dense{i}", stage(c[i]))
        self.dehaze = nn.Sequential()
        for i in range(res_blocks):
            self.dehaze.add_module(f"res{i}", ResidualBlock(c[4], deploy))
        for i in range(4, 0, -1):  # decoder: up, residual stage, RDB / multi-scale block on the halves
            setattr(self, f"convd{2 ** i}x", UpsampleConvLayer(c[i], c[i - 1], kernel_size=3, stride=2))
            setattr(self, f"dense_{i}", stage(c[i - 1]))
            setattr(self, f"conv_{i}", RDB(c[i - 1] // 2, 4, c[i - 1] // 2))
            setattr(self, f"fusion_{i}", DecoderMDC(c[i - 1] // 2, 6 - i))
        self.conv_output = ConvLayer(c[0], 3, kernel_size=3, stride=1)

    def fusion_points(self) -> List[FusionPoint]:
        """The nine residual stages, on the image padded to a multiple of 16."""
        c = WIDTHS
        down = [FusionPoint(f"dense{i}", c[i], 2 ** i) for i in range(4)] + [FusionPoint("dehaze", c[4], 16)]
        up = [FusionPoint(f"dense_{i}", c[i - 1], 2 ** (i - 1)) for i in range(4, 0, -1)]
        return down + up

    def input_points(self) -> List[InputPoint]:
        """The 11x11 input conv (the only one that reads the image)."""
        return [InputPoint("conv_input.conv2d")]

    def input_view(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """As the input conv sees the image: normalised, padded to a multiple
        of 16, then reflect-padded by 5 (the conv's own padding). A map with
        other than 3 channels (the depth channel) takes the channel-averaged
        normalisation: the image's per-channel one has no 1-channel form."""
        if name != "conv_input.conv2d":
            return super().input_view(name, x)
        p = INPUT_KERNEL // 2
        padded = self._pad(normalise(x))
        return reflect_pad(padded, p, p, p, p)

    @staticmethod
    def _pad(x: torch.Tensor) -> torch.Tensor:
        return pad_to_multiple(x, PAD_MULTIPLE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] image -> raw (unclamped) restored image, same size."""
        h, w = x.shape[-2:]
        return self.forward_official(self._pad(normalise(x)))[0][:, :, :h, :w]

    def forward_official(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """The official forward on a normalised image (sides multiples of 16):
        the output and the four encoder maps the distillation matches."""
        skips, bottom = self._encode(x)
        out = self._decode(skips, bottom)
        return out, [*skips[1:], bottom]

    def _encode(self, x: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Encoder: the full-resolution map and the 1/2-1/8 maps (skips), the 1/16 map."""
        res = self.conv_input(x)
        memory = [_halves(res)[0]]
        skips = [self.dense0(res) + res]
        for i in range(1, 5):
            down = getattr(self, f"conv{2 ** i}x")(skips[-1])
            a, b = _halves(down)
            a = getattr(self, f"fusion{i}")(a, memory)
            b = getattr(self, f"conv{i}")(b)
            memory.append(a)
            merged = torch.cat((a, b), dim=1)
            if i < 4:
                merged = getattr(self, f"dense{i}")(merged) + merged
                skips.append(merged)
        return skips, merged

    def _decode(self, skips: List[torch.Tensor], bottom: torch.Tensor) -> torch.Tensor:
        """Decoder: the bottleneck stage, then up through the skips (coarsest first)."""
        in_ft = bottom * 2
        feat = self.dehaze(in_ft) + in_ft - bottom
        memory = [_halves(feat)[0]]
        for i in range(4, 0, -1):
            skip = skips[i - 1]
            up = F.interpolate(getattr(self, f"convd{2 ** i}x")(feat), skip.size()[2:], mode="bilinear")
            feat = torch.add(up, skip)
            feat = getattr(self, f"dense_{i}")(feat) + feat - up
            a, b = _halves(feat)
            a = getattr(self, f"fusion_{i}")(a, memory)
            b = getattr(self, f"conv_{i}")(b)
            memory.append(a)
            feat = torch.cat((a, b), dim=1)
        return self.conv_output(feat)


def normalise(x: torch.Tensor) -> torch.Tensor:
    """The official ``preprocess_feature`` normalisation of a [0, 1] batch
    (channel-averaged for maps with other than 3 channels)."""
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device)
    std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device)
    if x.shape[1] != 3:
        mean, std = mean.mean().expand(x.shape[1]), std.mean().expand(x.shape[1])
    return (x - mean[:, None, None]) / std[:, None, None]


# ---------------------------------------------------------------- checkpoints
def reparameterise_state(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A ``coa`` state dict as ``coa-r``'s (the release's ``reparam/reparam.py``):
    each DEConv's five kernels and biases summed into one conv."""
    model = CoA(deploy=False)
    load_strict(model, state, "coa state", "CoA")
    return reparameterise(model).state_dict()


def reparameterise(model: CoA) -> CoA:
    """The re-parameterised (``coa-r``) copy of a ``coa`` model: same output."""
    if model.deploy:
        return model
    out = CoA(deploy=True).to(next(model.parameters()).dtype)
    state = {}
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if ".conv1_" not in name:
                state[name] = value
        for name, module in model.named_modules():
            if isinstance(module, DEConv):
                w, b = module.merged()
                state[f"{name}.weight"], state[f"{name}.bias"] = w.detach().clone(), b.detach().clone()
    load_strict(out, state, "re-parameterised CoA", "CoA (re-parameterised)")
    out.arch = "coa-r"
    out._build_kwargs = {}
    return out


def load_official_coa_state(path: "str | Path", deploy: bool) -> Dict[str, torch.Tensor]:
    """State dict of an official file (a bare ``torch.save(state_dict)``, as
    ``KD.py``/``EMA.py``/``reparam.py`` write them; DataParallel's prefix
    stripped), with a one-line hint when it is the other form's file."""
    name = "CoA (re-parameterised, coa-r)" if deploy else "CoA (coa)"
    state = read_official_state(path, name, containers=("state_dict", "model", "params"))
    has_deconv = any(".conv1_" in k for k in state)
    if has_deconv == deploy:
        other, files = ("coa", "Student.pth / EMA.pth") if deploy else ("coa-r", "EMA_r.pth")
        raise CheckpointError(
            f"{path}: this is a {'training-form' if has_deconv else 're-parameterised'} CoA checkpoint "
            f"({files}); load it as backbone '{other}'")
    return state


def _build(deploy: bool, weights: "str | Path | None") -> CoA:
    model = CoA(deploy=deploy)
    model.arch = "coa-r" if deploy else "coa"
    model._build_kwargs = {}
    if weights is not None:
        load_strict(model, load_official_coa_state(weights, deploy), str(weights), f"CoA ({model.arch})")
    return model


@BACKBONES.register("coa")
def coa(weights: "str | Path | None" = None) -> CoA:
    """The CoA student as it trains (DEConv blocks); ``weights``: official Student.pth / EMA.pth."""
    return _build(False, weights)


@BACKBONES.register("coa-r")
def coa_r(weights: "str | Path | None" = None) -> CoA:
    """The re-parameterised CoA student (plain 3x3 convs); ``weights``: official EMA_r.pth."""
    return _build(True, weights)
