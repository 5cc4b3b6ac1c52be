"""``fusion: input-channel``: the depth map as a fourth input channel.

UDPNet's baseline (feed Depth Anything V2's depth map to an existing
dehazer as an extra input channel) on any backbone: every convolution that
reads the image (the backbone's declared input points) becomes

    conv([I, d]) = conv_rgb(I) + conv_d(d)

where ``conv_rgb`` is the original convolution (same parameters, same keys
under ``.block``) and ``conv_d`` a one-input-channel copy of its geometry
(kernel, stride, padding and padding mode, dilation) whose weight starts at
exactly zero and has no bias. So the model at initialisation computes the
RGB model bit for bit, and ``conv_d`` receives a gradient from the first
step (``dL/dW_d`` is ``dL/dy`` correlated with ``d``, not zero).

``d`` is the teacher's depth map, min-max normalised per image
(:func:`edgehaze.models.fusion_modes.minmax_normalised`), brought to each
input point by the backbone's own :meth:`~edgehaze.models.contracts.Backbone.input_view`
(the padding, value range and downscaled copies the image gets on its way
there), so the fourth channel stays aligned with the other three, as if the
network had been given a 4-channel image.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from edgehaze.errors import ConfigError


def zero_extension(conv: nn.Conv2d, channels: int = 1) -> nn.Conv2d:
    """A copy of ``conv``'s geometry for ``channels`` more input channels, zero weight, no bias.

    Made by copying the module, so a subclass with its own padding (e.g.
    DehazeFormer's reflect-padded conv) pads the extra channel the same way."""
    if not isinstance(conv, nn.Conv2d):
        raise ConfigError(f"input point is a {type(conv).__name__}, not a Conv2d; the backbone declares it wrongly")
    if conv.groups != 1:
        raise ConfigError(f"input point conv has groups={conv.groups}; only dense convolutions can take an extra channel")
    ext = copy.deepcopy(conv)
    kh, kw = conv.kernel_size
    ext.in_channels = channels
    ext.weight = nn.Parameter(torch.zeros(conv.out_channels, channels, kh, kw, dtype=conv.weight.dtype,
                                          device=conv.weight.device))
    ext.register_parameter("bias", None)
    return ext


class InputChannelBlock(nn.Module):
    """``block(x) + z2(d)``: a conv reading the image, extended by a depth channel.

    Attribute names follow :class:`~edgehaze.models.fusion.FusedBlock` so
    training (stage-1 weights under ``.block``, fusion parts ``z1``/``rdf``/``z2``
    for ``finetune: depth`` and the gradient probes) treats both alike:
    ``z2`` is the zero-initialised extension; ``z1`` and ``rdf`` are empty.
    """

    def __init__(self, block: nn.Conv2d) -> None:
        super().__init__()
        self.block = block
        self.z1: nn.Module = nn.Identity()
        self.rdf: nn.Module = nn.Identity()
        self.z2 = zero_extension(block)
        self._depth: Optional[torch.Tensor] = None
        self.last_output: Optional[torch.Tensor] = None
        self.keep_output = False

    def set_depth(self, depth: Optional[torch.Tensor]) -> None:
        """The depth channel as this conv's input sees it (B x 1 x h x w), or None for RGB only."""
        self._depth = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        if self._depth is None:
            return y
        out = y + self.z2(self._depth.to(x.dtype))
        if self.keep_output:
            self.last_output = out
        return out
