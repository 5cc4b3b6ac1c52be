"""LPIPS (Zhang et al., CVPR 2018, "v0.1"): learned perceptual distance.

Deep features of both images are taken after the five ReLU stages of an
ImageNet backbone (AlexNet or VGG-16), normalised to unit length along
channels, their squared difference is weighted per channel by a learned
1 x 1 linear head, averaged over space and summed over the five stages.
Lower = more similar; identical images give 0.

Nothing is downloaded. Two local files are needed:

* the linear heads of the official release (``alex.pth`` or ``vgg.pth`` from
  https://github.com/richzhang/PerceptualSimilarity, ``lpips/weights/v0.1/``;
  keys ``lin{0..4}.model.1.weight``, shape ``1 x C x 1 x 1``), and
* the torchvision ImageNet backbone they were trained on
  (``alexnet-owt-7be5be79.pth`` or ``vgg16-397923af.pth`` from
  https://download.pytorch.org/models/; only the ``features.*`` keys are used).

The ``lpips`` pip package is not required: the network is rebuilt here from
torchvision's architecture definitions.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgehaze.errors import CheckpointError, EdgehazeError, MissingWeightsError

# Input scaling of LPIPS v0.1 (applied to images in [-1, 1]).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)

# Per backbone: torchvision ``features`` slice ends (each slice ends with a ReLU) and channels.
_NETS = {
    "alex": {"bounds": (2, 5, 8, 10, 12), "channels": (64, 192, 384, 256, 256), "backbone_file": "alexnet-owt-7be5be79.pth"},
    "vgg": {"bounds": (4, 9, 16, 23, 30), "channels": (64, 128, 256, 512, 512), "backbone_file": "vgg16-397923af.pth"},
}
_HEADS_URL = "https://github.com/richzhang/PerceptualSimilarity (lpips/weights/v0.1/{net}.pth)"
_BACKBONE_URL = "https://download.pytorch.org/models/{file}"


def _features_module(net: str) -> nn.Sequential:
    """torchvision's ``features`` of the backbone, uninitialised (every tensor is loaded from the file).

    Built on the meta device so the large classifier (unused) costs nothing.
    """
    import torchvision

    with torch.device("meta"):
        model = torchvision.models.alexnet(weights=None) if net == "alex" else torchvision.models.vgg16(weights=None)
    return model.features.to_empty(device="cpu")


def _load_state(path: Path, what: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise MissingWeightsError(f"LPIPS {what} file {path} does not exist")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/unsafe files
        raise CheckpointError(f"{path}: cannot load LPIPS {what} ({exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: LPIPS {what} must be a state dict, got {type(state).__name__}")
    return state


class LPIPS(nn.Module):
    """LPIPS distance with user-provided weights; ``forward(pred, gt) -> Tensor[B]``.

    ``pred`` and ``gt`` are ``B x 3 x H x W`` RGB in [0, 1]. All parameters are
    frozen; the module is put in eval mode.
    """

    def __init__(
        self,
        linear_weights: str | os.PathLike | None = None,
        backbone_weights: str | os.PathLike | None = None,
        net: str = "alex",
    ) -> None:
        super().__init__()
        if net not in _NETS:
            raise EdgehazeError(f"LPIPS net must be one of {sorted(_NETS)}, got '{net}'")
        spec = _NETS[net]
        if linear_weights is None or backbone_weights is None:
            raise MissingWeightsError(
                "LPIPS needs two local weight files and cannot download them: "
                f"linear_weights = the official {net}.pth heads ({_HEADS_URL.format(net=net)}) and "
                f"backbone_weights = torchvision's {spec['backbone_file']} "
                f"({_BACKBONE_URL.format(file=spec['backbone_file'])})"
            )
        self.net = net
        features = _features_module(net)
        starts = (0,) + spec["bounds"][:-1]
        self.stages = nn.ModuleList(nn.Sequential(*features[a:b]) for a, b in zip(starts, spec["bounds"]))
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in spec["channels"])
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self._load_backbone(Path(backbone_weights), features, spec["bounds"][-1])
        self._load_heads(Path(linear_weights), spec["channels"])
        self.requires_grad_(False)
        self.eval()

    def _load_backbone(self, path: Path, features: nn.Sequential, used: int) -> None:
        state = _load_state(path, "backbone")
        wanted = {k: v for k, v in features.state_dict().items() if int(k.split(".")[0]) < used}
        picked = {}
        for key, ref in wanted.items():
            value = state.get(f"features.{key}", state.get(key))
            if value is None:
                raise CheckpointError(f"{path}: LPIPS backbone key 'features.{key}' is missing; expected torchvision {self.net} weights")
            if tuple(value.shape) != tuple(ref.shape):
                raise CheckpointError(f"{path}: 'features.{key}' has shape {tuple(value.shape)}, expected {tuple(ref.shape)}")
            picked[key] = value
        features.load_state_dict(picked, strict=True)

    def _load_heads(self, path: Path, channels: tuple[int, ...]) -> None:
        state = _load_state(path, "linear heads")
        for i, (head, c) in enumerate(zip(self.heads, channels)):
            value = state.get(f"lin{i}.model.1.weight")
            if value is None:
                raise CheckpointError(f"{path}: key 'lin{i}.model.1.weight' is missing; expected the official LPIPS {self.net}.pth")
            if tuple(value.shape) != (1, c, 1, 1):
                raise CheckpointError(f"{path}: 'lin{i}.model.1.weight' has shape {tuple(value.shape)}, expected (1, {c}, 1, 1)")
            head.weight.data.copy_(value)

    def forward(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        if pred.shape != gt.shape or pred.dim() != 4 or pred.shape[1] != 3:
            raise EdgehazeError(f"LPIPS needs two B x 3 x H x W batches of the same shape, got {tuple(pred.shape)} and {tuple(gt.shape)}")
        x = ((pred * 2 - 1) - self.shift) / self.scale
        y = ((gt * 2 - 1) - self.shift) / self.scale
        total = pred.new_zeros(pred.shape[0])
        for stage, head in zip(self.stages, self.heads):
            x, y = stage(x), stage(y)
            fx = x / (torch.sqrt((x * x).sum(dim=1, keepdim=True)) + 1e-10)
            fy = y / (torch.sqrt((y * y).sum(dim=1, keepdim=True)) + 1e-10)
            total = total + head((fx - fy) ** 2).mean(dim=(1, 2, 3))
        return total


def lpips(
    pred01: np.ndarray,
    gt01: np.ndarray,
    linear_weights: str | os.PathLike | None = None,
    backbone_weights: str | os.PathLike | None = None,
    net: str = "alex",
) -> float:
    """LPIPS of two ``H x W x 3`` images in [0, 1] (builds the network; reuse :class:`LPIPS` for many)."""
    model = LPIPS(linear_weights, backbone_weights, net)
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(np.asarray(a, dtype=np.float32).transpose(2, 0, 1)))[None]  # noqa: E731
    with torch.no_grad():
        return float(model(to_t(pred01), to_t(gt01))[0])
