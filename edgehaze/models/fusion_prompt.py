"""``fusion: selfpromer``: SelfPromer's depth-consistency prompt as a fusion mode.

What the official code (``supersupercong/SelfPromer``,
``basicsr/archs/femasr_arch.py`` and ``basicsr/models/femasr_model.py``)
does, and what is kept:

* **Depth maps.** ``d1`` = depth of the hazy input, ``d2`` = depth of a clear
  image: the ground truth in training (``optimize_parameters``), and at test
  time the model's own output without the prompt (``test``,
  ``inference_selfpromer.py``). Both normalised ``clip(d / max d, 0, 1)``
  (per image here, see :func:`~edgehaze.models.fusion_modes.max_normalised`).
  The official depth model is MiDaS; here it is the configured teacher.
* **Deep depth difference.** Both maps go through one encoder ``E`` (shared
  weights) to the resolution of the features being prompted, and the
  prompt is ``P = |E(d1) - E(d2)| * F`` with ``F`` the backbone features
  (official: ``prompt = depth_error * z_quant``).
* **Prompt embedding.** ``X = F + P``.
* **Prompt attention.** Transformer blocks
  ``X += Attn(LN(X), P); X += MLP(LN(X))`` whose attention takes its
  *queries* from ``LN(X) + P`` and keys/values from ``LN(X)`` (official
  ``Block``/``Attention``, MLP ratio 4, GELU, LayerNorm eps 1e-5, no qkv
  bias, a biased output projection).
* **Continuous self-prompt inference.** ``rounds`` times: dehaze without
  the prompt, take the depth of that result, dehaze again with the prompt;
  the next round starts from this output.

What differs, because the prompt is plugged into an existing backbone
rather than being the bottleneck of SelfPromer's own VQGAN:

* ``E``: the official one is the *frozen* encoder of its pretrained
  high-quality VQGAN (which has no counterpart for another backbone); here
  a small trainable convolutional encoder per fusion point (3x3 conv +
  SiLU, then 3x3 stride-2 conv + SiLU per halving, then a 1x1 to the
  point's width).
* Where and how much: the official prompts once, at its 1/8-resolution
  bottleneck, with 10 global-attention blocks; here the default point is
  the backbone's first declared fusion point at its coarsest stride (the
  encoder's deepest stage), with ``layers`` blocks of window attention
  (global attention is quadratic in the pixels).
* The branch output enters through a zero-initialised 1x1 convolution,
  ``y = F + Z(X)``, so the fused stage starts from the RGB model (the
  comparison protocol, as for the other modes); the official model is
  trained from its VQGAN's weights instead.
* The released ``inference_selfpromer.py`` never updates its input after the
  second round, so its rounds 3 and 4 repeat round 2; here each round
  starts from the previous output.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from edgehaze.models.fusion import ChannelLayerNorm, zero_conv
from edgehaze.models.fusion_modes import SelfPromerConfig


def _heads(channels: int, head_dim: int) -> int:
    heads = max(1, channels // head_dim)
    while channels % heads:
        heads -= 1
    return heads


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, window: int) -> torch.Tensor:
    """Softmax attention of B x C x H x W maps inside ``window x window`` tiles.

    Maps are replicate-padded to a multiple of the window and the padded
    positions masked out as keys (so a border tile attends only to real
    pixels, whatever the padding); the padded queries are cropped away.
    """
    b, c, h, w = q.shape
    ws = window
    pad_h, pad_w = (ws - h % ws) % ws, (ws - w % ws) % ws
    if torch.jit.is_tracing() or pad_h or pad_w:
        q, k, v = (F.pad(t, (0, pad_w, 0, pad_h), mode="replicate") for t in (q, k, v))
    hp, wp = q.shape[-2:]
    nh, nw, d = hp // ws, wp // ws, c // heads

    def tiles(t: torch.Tensor) -> torch.Tensor:  # -> (B*nh*nw) x heads x ws*ws x d
        t = t.reshape(b, heads, d, nh, ws, nw, ws).permute(0, 3, 5, 1, 4, 6, 2)
        return t.reshape(b * nh * nw, heads, ws * ws, d)

    real = F.pad(q.new_ones(1, 1, h, w), (0, pad_w, 0, pad_h), value=0.0)
    real = real.reshape(1, nh, ws, nw, ws).permute(0, 1, 3, 2, 4).reshape(nh * nw, 1, 1, ws * ws)
    key_bias = ((real - 1.0) * 1e4).repeat(b, 1, 1, 1)  # finite: fp16 / INT8 graphs stay NaN-free
    attn = torch.softmax(tiles(q) @ tiles(k).transpose(-2, -1) * d ** -0.5 + key_bias, dim=-1)
    out = (attn @ tiles(v)).reshape(b, nh, nw, heads, ws, ws, d)
    out = out.permute(0, 3, 6, 1, 4, 2, 5).reshape(b, c, hp, wp)
    return out[:, :, :h, :w]


class PromptAttention(nn.Module):
    """Official ``Attention`` with ``sr_ratio=1``: queries from ``x + prompt``, keys/values from ``x``."""

    def __init__(self, channels: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads, self.window = heads, window
        self.q = nn.Conv2d(channels, channels, 1, bias=False)
        self.kv = nn.Conv2d(channels, 2 * channels, 1, bias=False)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        k, v = self.kv(x).chunk(2, dim=1)
        return self.proj(window_attention(self.q(x + prompt), k, v, self.heads, self.window))


class PromptLayer(nn.Module):
    """Official ``Block``: ``x += attn(LN(x), prompt); x += MLP(LN(x))``."""

    def __init__(self, channels: int, cfg: SelfPromerConfig) -> None:
        super().__init__()
        hidden = max(1, int(channels * cfg.mlp_ratio))
        self.norm1 = ChannelLayerNorm(channels, eps=1e-5)
        self.attn = PromptAttention(channels, _heads(channels, cfg.head_dim), cfg.window)
        self.norm2 = ChannelLayerNorm(channels, eps=1e-5)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.GELU(), nn.Conv2d(hidden, channels, 1))

    def forward(self, x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), prompt)
        return x + self.mlp(self.norm2(x))


class PromptTransformer(nn.Module):
    """Prompt embedding (``x = F + P``) followed by the prompt-attention layers."""

    def __init__(self, channels: int, cfg: SelfPromerConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList([PromptLayer(channels, cfg) for _ in range(cfg.layers)])

    def forward(self, feat: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        x = feat + prompt
        for layer in self.layers:
            x = layer(x, prompt)
        return x


class DepthMapEncoder(nn.Module):
    """``E``: a one-channel depth map -> ``channels`` features at ``stride``."""

    def __init__(self, channels: int, stride: float, hidden: int = 32) -> None:
        super().__init__()
        hidden = min(hidden, channels)
        layers = [nn.Conv2d(1, hidden, 3, padding=1), nn.SiLU()]
        for _ in range(max(0, round(math.log2(max(stride, 1.0))))):
            layers += [nn.Conv2d(hidden, hidden, 3, stride=2, padding=1), nn.SiLU()]
        layers.append(nn.Conv2d(hidden, channels, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, depth: torch.Tensor) -> torch.Tensor:
        return self.net(depth)


class PromptFusedBlock(nn.Module):
    """Wraps a backbone block ``F``: ``y = F(x) + Z(T(F(x) + P, P))``, ``P = |E(d1) - E(d2)| * F(x)``.

    The depth input (set by the dehazer, :meth:`set_depth`) is the 2-channel
    map ``[d1, d2]`` at the image's size. Attribute names follow
    :class:`~edgehaze.models.fusion.FusedBlock` (``z1`` = E, ``rdf`` = T,
    ``z2`` = Z) so training treats both alike; without depth it is ``F``.
    """

    def __init__(self, block: nn.Module, channels: int, stride: float, cfg: SelfPromerConfig) -> None:
        super().__init__()
        self.block = block
        self.z1 = DepthMapEncoder(channels, stride)
        self.rdf = PromptTransformer(channels, cfg)
        self.z2 = zero_conv(channels, channels)
        self._depth: Optional[torch.Tensor] = None
        self.last_output: Optional[torch.Tensor] = None
        self.keep_output = False

    def set_depth(self, depth: Optional[torch.Tensor]) -> None:
        self._depth = depth

    def prompt(self, feat: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """``|E(d1) - E(d2)| * feat``, E's output resized (bilinear) to ``feat``'s size."""
        b = depth.shape[0]
        enc = self.z1(torch.cat([depth[:, :1], depth[:, 1:2]], dim=0))
        diff = torch.abs(enc[:b] - enc[b:])
        diff = F.interpolate(diff, size=feat.shape[-2:], mode="bilinear", align_corners=False)
        return diff * feat

    def forward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        y = self.block(*args, **kwargs)
        if self._depth is None:
            return y
        out = y + self.z2(self.rdf(y, self.prompt(y, self._depth.to(y.dtype))))
        if self.keep_output:
            self.last_output = out
        return out
