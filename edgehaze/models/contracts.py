"""The two contracts every pluggable network follows.

*Backbones* (RGB dehazers) take an image in [0, 1] (B x 3 x H x W, any H and
W) and return the restored image in the same range and size. Each declares
its fusion points: the sub-modules whose output a depth-fusion block may
refine, by dotted module name, with the channel count and the stride of that
output relative to the input image. Fusion is plugged in from outside by
wrapping those sub-modules, so no backbone file knows about depth.

Backbones also declare their *input points* (:meth:`Backbone.input_points`):
the convolutions that read the image itself, and how the image reaches each
(:meth:`Backbone.input_view`: padding, value range, downscaled copies). The
depth-as-input baseline (``fusion: input-channel``) extends exactly those
convolutions with one more input channel.

*Depth providers* (frozen teachers such as Depth Anything V2, or trainable
student encoders) take the same [0, 1] image and return multi-scale feature
maps, finest first, with their channel counts and nominal strides declared.
A student is therefore a drop-in for a teacher.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import List, Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class FusionPoint:
    """A place in a backbone where depth features can be fused.

    name: dotted name of the sub-module ``F`` whose output is refined
        (``y = F(x) + Z2(RDF(F(x), Z1(c)))``).
    channels: channels of ``F``'s output.
    stride: spatial stride of ``F``'s output relative to the backbone input.
    """

    name: str
    channels: int
    stride: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class InputPoint:
    """A convolution that reads the image (3 input channels).

    name: dotted name of the ``nn.Conv2d`` (or subclass) inside the backbone.
    The geometry and value range of the image as that conv sees it are
    given by :meth:`Backbone.input_view`.
    """

    name: str

    def to_dict(self) -> dict:
        return asdict(self)


class Backbone(nn.Module):
    """Base class for RGB dehazing backbones (see module docstring)."""

    #: registry name, set by the factory
    arch: str = ""

    def fusion_points(self) -> List[FusionPoint]:  # pragma: no cover - abstract
        raise NotImplementedError

    def input_points(self) -> List[InputPoint]:
        """The convolutions that read the image (for ``fusion: input-channel``)."""
        from edgehaze.errors import ConfigError

        raise ConfigError(
            f"backbone '{self.arch}' declares no input points, so fusion 'input-channel' cannot extend its "
            "first layer; pick another fusion (model.fusion) or backbone"
        )

    def input_view(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B x C x H x W, aligned with the [0, 1] input image) as the
        input point ``name`` sees the image: the same padding, resampling and
        value mapping, so an extra channel stays aligned with the RGB ones."""
        raise NotImplementedError(f"backbone '{self.arch}' has no input point '{name}'")

    def build_kwargs(self) -> dict:
        """Keyword arguments that rebuild this backbone with its factory."""
        return dict(getattr(self, "_build_kwargs", {}))


class DepthProvider(nn.Module):
    """Base class for depth feature providers (teachers and students).

    Attributes set by subclasses:
      feature_channels: channels of each returned feature map, finest first.
      feature_strides: nominal stride of each map relative to the input image.
      model_id: registry name (``dav2-l``, ``tiny``, ``student-s`` ...).
      license: licence of the weights (travels into every artifact).
      trainable: False for frozen teachers; their weights are not stored in
        dehazer checkpoints (they are rebuilt from ``depth_weights``).
    """

    feature_channels: Sequence[int] = ()
    feature_strides: Sequence[float] = ()
    model_id: str = ""
    license: str = "unknown"
    trainable: bool = False

    def features(self, image: torch.Tensor) -> List[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, image: torch.Tensor) -> List[torch.Tensor]:
        return self.features(image)

    def build_kwargs(self) -> dict:
        return dict(getattr(self, "_build_kwargs", {}))

    def image_strides(self, height: int, width: int) -> List[float]:
        """Stride of each returned map relative to an image of ``height x width``.

        ``feature_strides`` are relative to the network's input. A provider
        that resizes the image first (the ViT teachers: shorter side to
        ``input_size``) exposes that resize as ``preprocess``; its maps are
        then coarser or finer relative to the image by the resize factor
        (a 98 px teacher input on a 460 px image: 4.7x coarser). Why: a
        fusion point should take the level whose stride matches relative to
        the *image* it refines, not to the teacher's input (issue 16, item 2).
        """
        nominal = [float(s) for s in self.feature_strides]
        prep = getattr(self, "preprocess", None)
        if not callable(prep):
            return nominal
        with torch.no_grad():
            net_h, net_w = prep(torch.zeros(1, 3, int(height), int(width))).shape[-2:]
        factor = ((height / net_h) * (width / net_w)) ** 0.5  # aspect kept up to rounding to the patch
        return [s * factor for s in nominal]
