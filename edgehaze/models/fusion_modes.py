"""The competing ways of using depth, selectable as ``model.fusion``.

* ``gated`` (every variant of :mod:`edgehaze.models.fusion`: ``full``,
  ``lite``, the ablation rows): the paper's zero-convolution RDF blocks at the
  backbone's fusion points, fed the depth teacher's multi-scale features.
* ``input-channel`` (:mod:`edgehaze.models.fusion_input`; UDPNet's idea):
  the teacher's depth *map*, normalised, as a fourth input channel of every
  convolution that reads the image, through a zero-initialised extension
  of that convolution, so the model starts as the RGB model.
* ``selfpromer`` (:mod:`edgehaze.models.fusion_prompt`; Wang et al.,
  "SelfPromer: Self-Prompt Dehazing Transformers with Depth-Consistency",
  AAAI 2024, official code ``supersupercong/SelfPromer``): a prompt made
  from the difference between the depth of the hazy image and the depth of
  a clear one (the ground truth in training, the model's own first,
  prompt-free output at test time), added to the features and to the
  queries of a prompt-attention block.

All three present what they need from the depth model to the rest of the
system in the same form: a list of maps from
``DepthGuidedDehazer.depth_features(image)``, so the training cache, the
whole-image depth crop, tiling and the two-graph export need not know which
mode is in use. ``input-channel`` hands over one 1-channel map (the
normalised depth), ``selfpromer`` one 2-channel map (hazy depth, clear
depth), both at the image's size.

PromptHaze (the paper's other prompt competitor) has no public code, so it
is not built.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Optional, Union

import torch
import torch.nn.functional as F

from edgehaze.errors import ConfigError
from edgehaze.models.fusion import FusionConfig, resolve_fusion

GATED = "gated"
INPUT_CHANNEL = "input-channel"
SELFPROMER = "selfpromer"
MODES = (GATED, INPUT_CHANNEL, SELFPROMER)


@dataclass(frozen=True)
class InputChannelConfig:
    """``fusion: input-channel`` (no options: the extension is fully determined
    by the convolutions it extends)."""

    mode: str = INPUT_CHANNEL

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SelfPromerConfig:
    """``fusion: selfpromer`` options.

    layers: prompt-attention transformer blocks per fusion point (the
        official network has 10, all at its single 1/8-resolution bottleneck).
    window: attention window (the official attention is global over the
        1/8-resolution map; windows keep it linear in the pixels at any
        fusion point; a window covering the map is global).
    head_dim: channels per attention head (official: 256 channels, 8 heads).
    mlp_ratio: hidden width of each block's MLP (official 4).
    rounds: continuous self-prompt inference rounds (each round dehazes the
        previous round's output).
    """

    mode: str = SELFPROMER
    layers: int = 1
    window: int = 8
    head_dim: int = 32
    mlp_ratio: float = 4.0
    rounds: int = 1

    def __post_init__(self) -> None:
        for name in ("layers", "window", "head_dim", "rounds"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"fusion option '{name}' of mode selfpromer must be an integer >= 1, got {value!r}")
        if not self.mlp_ratio > 0:
            raise ConfigError(f"fusion option 'mlp_ratio' of mode selfpromer must be > 0, got {self.mlp_ratio!r}")

    def to_dict(self) -> dict:
        return asdict(self)


AnyFusionConfig = Union[FusionConfig, InputChannelConfig, SelfPromerConfig]
_MODE_CONFIGS = {INPUT_CHANNEL: InputChannelConfig, SELFPROMER: SelfPromerConfig}


def resolve_fusion_mode(fusion: "str | dict | AnyFusionConfig | None") -> AnyFusionConfig:
    """A fusion name / options dict / config -> the config of its mode.

    ``"input-channel"`` and ``"selfpromer"`` (or a dict with ``mode:``) pick
    the baselines; anything else is a variant of the gated fusion
    (:func:`edgehaze.models.fusion.resolve_fusion`)."""
    if isinstance(fusion, (InputChannelConfig, SelfPromerConfig)):
        return fusion
    if isinstance(fusion, str) and fusion in _MODE_CONFIGS:
        return _MODE_CONFIGS[fusion]()
    if isinstance(fusion, dict) and "mode" in fusion:
        data = dict(fusion)
        mode = data.pop("mode")
        if mode == GATED:
            return resolve_fusion(data)
        if mode not in _MODE_CONFIGS:
            raise ConfigError(f"unknown fusion mode '{mode}' (model.fusion.mode); known: {list(MODES)}")
        cls = _MODE_CONFIGS[mode]
        known = {f.name for f in fields(cls)} - {"mode"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown} for fusion mode '{mode}' (model.fusion); known: {sorted(known)}")
        return cls(**data)
    try:
        return resolve_fusion(fusion)
    except ConfigError as exc:
        if isinstance(fusion, str):
            raise ConfigError(f"{exc} (or a fusion mode: {list(_MODE_CONFIGS)})") from None
        raise


def mode_of(cfg: AnyFusionConfig) -> str:
    """``gated``, ``input-channel`` or ``selfpromer``."""
    return getattr(cfg, "mode", GATED)


# ---------------------------------------------------------------- depth maps
def teacher_depth(depth: torch.nn.Module, image01: torch.Tensor) -> torch.Tensor:
    """The depth teacher's relative inverse depth, ``B x 1 x H x W`` like the image.

    Frozen (no gradient). While tracing for ONNX the teacher's resize is
    computed from the traced image size (:func:`edgehaze.export.graphs.teacher_pixels`),
    so the exported graph keeps dynamic H x W."""
    if torch.jit.is_tracing() and hasattr(depth, "depth_from_pixels") and hasattr(depth, "input_size"):
        from edgehaze.export.graphs import teacher_pixels

        with torch.no_grad():
            d = depth.depth_from_pixels(teacher_pixels(depth, image01))[:, None]
        return F.interpolate(d, size=image01.shape[-2:], mode="bilinear", align_corners=True)
    with torch.no_grad():
        return depth.depth(image01)[:, None]


def check_depth_map_provider(depth: Optional[torch.nn.Module], mode: str) -> None:
    """Both baselines read a depth *map*: a teacher with ``depth(image)``."""
    if depth is not None and not callable(getattr(depth, "depth", None)):
        raise ConfigError(
            f"fusion '{mode}' needs a depth map, and depth model '{getattr(depth, 'model_id', '?')}' gives only "
            "features (a distilled student); use a depth teacher (model.depth: dav2-s/b/l, da3-*, tiny)"
        )


def minmax_normalised(d: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each image's map scaled to [0, 1] by its own min and max.

    Relative inverse depth is known only up to scale and shift (Depth
    Anything's affine-invariant output), so both are removed per image; the
    result does not depend on the other images in the batch."""
    lo = d.amin(dim=(1, 2, 3), keepdim=True)
    hi = d.amax(dim=(1, 2, 3), keepdim=True)
    return (d - lo) / torch.clamp(hi - lo, min=eps)


def max_normalised(d: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """SelfPromer's normalisation, ``clip(d / max(d), 0, 1)``, per image.

    The official code divides by the maximum over the whole batch
    (``torch.max(depth1)``); per image makes an image's result independent of
    its batch (identical at batch size 1, the official test setting)."""
    hi = d.amax(dim=(1, 2, 3), keepdim=True)
    return torch.clamp(d / torch.clamp(hi, min=eps), 0.0, 1.0)
