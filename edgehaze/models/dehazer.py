"""``DepthGuidedDehazer``: backbone + depth provider + fusion blocks.

Fusion is plugged in by declaration: the backbone lists its fusion points
(dotted module names) and this class replaces each chosen sub-module ``F`` by
a :class:`~edgehaze.models.fusion.FusedBlock` wrapping it. Before the
backbone runs, each fused block is handed the depth feature map whose stride
is closest to its own: relative to the teacher's input by default, or, with
``depth_image_size=(H, W)``, relative to an image of that size (the
teacher's resize to its input taken into account; the level is fixed when
the model is built, so trained weights always see the level they learned).
With both zero-convolutions on, the output at initialisation equals the
bare backbone's output exactly, for any H x W.

The two baselines of :mod:`edgehaze.models.fusion_modes` plug in the same
way: ``fusion: input-channel`` wraps the backbone's input points (the convs
that read the image) and hands them the normalised depth map;
``fusion: selfpromer`` wraps fusion points with prompt blocks fed the hazy
and clear depth maps. Both also start equal to the bare backbone.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import nn

import torch.nn.functional as F

from edgehaze.models.contracts import Backbone, DepthProvider, FusionPoint, InputPoint
from edgehaze.models.fusion import FusedBlock, FusionConfig
from edgehaze.models.fusion_modes import (
    GATED,
    INPUT_CHANNEL,
    SELFPROMER,
    check_depth_map_provider,
    max_normalised,
    minmax_normalised,
    mode_of,
    resolve_fusion_mode,
    teacher_depth,
)
from edgehaze.models.registries import BACKBONES, DEPTH_MODELS


def _split_parent(root: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    parts = dotted.split(".")
    parent = root
    for p in parts[:-1]:
        parent = getattr(parent, p)
    return parent, parts[-1]


def nearest_level(stride: float, depth_strides: Sequence[float]) -> int:
    """Index of the depth feature level whose stride is closest (log scale)."""
    return min(range(len(depth_strides)), key=lambda i: abs(math.log(depth_strides[i] / stride)))


class DepthGuidedDehazer(nn.Module):
    """An RGB dehazing backbone with depth features fused at chosen points.

    backbone: any :class:`Backbone`.
    depth: a :class:`DepthProvider` (teacher or student), or None for the
        bare backbone.
    fusion: variant name / options dict / :class:`FusionConfig`, or a
        baseline mode (``input-channel``, ``selfpromer``, or a dict with ``mode:``).
    points: names of the fusion points to use (default: all declared; for
        input-channel the input points; for selfpromer the first coarsest).
    depth_image_size: ``(H, W)`` of the images the model is trained and run
        on; each fusion point then takes the depth level whose stride is
        nearest relative to such an image (:meth:`DepthProvider.image_strides`).
        None: nearest relative to the depth model's input (the nominal strides).
    """

    def __init__(
        self,
        backbone: Backbone,
        depth: Optional[DepthProvider] = None,
        fusion: Union[str, dict, FusionConfig, None] = None,
        points: Optional[Sequence[str]] = None,
        depth_image_size: Optional[Sequence[int]] = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.depth_image_size = _image_size(depth_image_size)
        self.depth = depth
        self.fusion_cfg = resolve_fusion_mode(fusion)
        self.fusion_mode = mode_of(self.fusion_cfg)
        self.points: List[Union[FusionPoint, InputPoint]] = []
        self.levels: List[int] = []
        self.fused: nn.ModuleDict = nn.ModuleDict()
        #: channels / nominal strides of what depth_features() returns (per level)
        self.depth_input_channels: List[int] = []
        self.depth_input_strides: List[float] = []
        chosen = self._chosen_points(points) if (points is not None or depth is not None) else []
        if depth is None:
            return
        self.points = chosen
        if self.fusion_mode == GATED:
            self.depth_input_channels = list(depth.feature_channels)
            self.depth_input_strides = [float(s) for s in depth.feature_strides]
        else:
            check_depth_map_provider(depth, self.fusion_mode)
            self.depth_input_channels = [1 if self.fusion_mode == INPUT_CHANNEL else 2]
            self.depth_input_strides = [1.0]
        strides = self._level_strides()
        for point in self.points:
            parent, attr = _split_parent(backbone, point.name)
            level = 0 if self.fusion_mode != GATED else nearest_level(point.stride, strides)
            setattr(parent, attr, self._wrap(getattr(parent, attr), point, level))
            self.levels.append(level)
        # Keep handles without registering the blocks twice in the state dict.
        self._blocks = [_split_parent(backbone, p.name) for p in self.points]

    def _level_strides(self) -> List[float]:
        """The depth levels' strides the fusion points are matched against (see ``depth_image_size``)."""
        assert self.depth is not None
        if self.depth_image_size is None:
            return [float(s) for s in self.depth.feature_strides]
        return self.depth.image_strides(*self.depth_image_size)

    def _chosen_points(self, points: Optional[Sequence[str]]) -> List[Union[FusionPoint, InputPoint]]:
        """The declared points this mode uses: all by default (selfpromer: the
        first at the coarsest stride, where the official code prompts)."""
        backbone = self.backbone
        kind = "input point" if self.fusion_mode == INPUT_CHANNEL else "fusion point"
        listed = backbone.input_points() if self.fusion_mode == INPUT_CHANNEL else backbone.fusion_points()
        declared: Dict[str, Union[FusionPoint, InputPoint]] = {p.name: p for p in listed}
        if points is None:
            if self.fusion_mode == SELFPROMER:
                coarsest = max(p.stride for p in listed)
                return [next(p for p in listed if p.stride == coarsest)]
            return list(listed)
        unknown = [p for p in points if p not in declared]
        if unknown:
            from edgehaze.errors import ConfigError

            raise ConfigError(
                f"unknown {kind}(s) {unknown} for backbone '{backbone.arch}' with fusion '{self.fusion_mode}' "
                f"(model.points); declared: {list(declared)}"
            )
        return [declared[p] for p in points]

    def _wrap(self, module: nn.Module, point: Union[FusionPoint, InputPoint], level: int) -> nn.Module:
        if self.fusion_mode == INPUT_CHANNEL:
            from edgehaze.models.fusion_input import InputChannelBlock

            return InputChannelBlock(module)
        if self.fusion_mode == SELFPROMER:
            from edgehaze.models.fusion_prompt import PromptFusedBlock

            return PromptFusedBlock(module, point.channels, point.stride, self.fusion_cfg)
        return FusedBlock(module, point.channels, self.depth.feature_channels[level], self.fusion_cfg)

    # -- helpers -------------------------------------------------------------
    def fused_blocks(self) -> List[FusedBlock]:
        return [getattr(parent, attr) for parent, attr in getattr(self, "_blocks", [])]

    def depth_features(self, image: torch.Tensor, reference: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """What the fusion reads from the depth provider for ``image`` ([0, 1]).

        gated: the provider's multi-scale features. input-channel: the
        teacher's depth map, min-max normalised (B x 1 x H x W). selfpromer:
        the depth maps of ``image`` and of a clear image (B x 2 x H x W):
        ``reference`` (the ground truth, in training) or, without one, this
        model's own prompt-free output (the official self-prompt inference).
        """
        if self.depth is None:
            return []
        if self.fusion_mode == INPUT_CHANNEL:
            return [minmax_normalised(teacher_depth(self.depth, image))]
        if self.fusion_mode == SELFPROMER:
            if reference is None:
                with torch.no_grad():
                    reference = self.backbone(image)  # fused blocks unset: the bare backbone
            b = image.shape[0]
            pair = torch.cat([image, reference.detach()]).clamp(0.0, 1.0)
            d = max_normalised(teacher_depth(self.depth, pair))
            return [torch.cat([d[:b], d[b:]], dim=1)]
        if not self.depth.trainable:
            with torch.no_grad():
                return [f.detach() for f in self.depth.features(image)]
        return self.depth.features(image)

    @property
    def uses_reference_depth(self) -> bool:
        """True when training should pass the clear image to :meth:`depth_features`."""
        return self.depth is not None and self.fusion_mode == SELFPROMER

    def set_keep_fused_outputs(self, keep: bool) -> None:
        """Record each fused block's output (for feature distillation)."""
        for b in self.fused_blocks():
            b.keep_output = keep
            b.last_output = None

    def fused_outputs(self) -> List[Optional[torch.Tensor]]:
        return [b.last_output for b in self.fused_blocks()]

    # -- forward -------------------------------------------------------------
    def forward(self, image: torch.Tensor, depth_feats: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        """Dehaze ``image`` (B x 3 x H x W in [0, 1]).

        ``depth_feats`` lets a caller supply cached depth features (the
        two-graph export, streams that refresh depth every N frames).
        selfpromer without them runs its ``rounds`` of self-prompting.
        """
        if self.depth is None:
            return self.backbone(image)
        if depth_feats is not None:
            return self.run_with_depth(image, depth_feats, self.backbone)
        rounds = self.fusion_cfg.rounds if self.fusion_mode == SELFPROMER else 1
        out = image
        for _ in range(rounds):
            out = self.run_with_depth(out, self.depth_features(out), self.backbone)
        return out

    def run_with_depth(self, image: torch.Tensor, feats: Sequence[Optional[torch.Tensor]], fn) -> torch.Tensor:  # type: ignore[no-untyped-def]
        """``fn(image)`` (the backbone, or one of its methods) with every fused
        block handed its depth input from ``feats``; the blocks are cleared after."""
        blocks = self.fused_blocks()
        try:
            for block, level, point in zip(blocks, self.levels, self.points):
                block.set_depth(self._block_depth(point, feats[level], image))
            return fn(image)
        finally:
            for block in blocks:
                block.set_depth(None)

    def _block_depth(self, point: Union[FusionPoint, InputPoint], feat: Optional[torch.Tensor],
                     image: torch.Tensor) -> Optional[torch.Tensor]:
        """input-channel: the map at the image's size, as the input point sees the image."""
        if self.fusion_mode != INPUT_CHANNEL or feat is None:
            return feat
        # Always resized (an exact identity at equal size): traced graphs keep it for every size.
        feat = F.interpolate(feat, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return self.backbone.input_view(point.name, feat)

    # -- description ---------------------------------------------------------
    def build_args(self, depth_weights: Optional[str] = None) -> dict:
        """Arguments for :func:`build_dehazer` that rebuild this model."""
        return {
            "backbone": self.backbone.arch,
            # weights were loaded into this model; the checkpoint carries them
            "backbone_kwargs": {k: v for k, v in self.backbone.build_kwargs().items() if k != "weights"},
            "depth": self.depth.model_id if self.depth is not None else None,
            "depth_kwargs": (
                {k: v for k, v in self.depth.build_kwargs().items() if k != "weights"}
                if self.depth is not None
                else {}
            ),
            "depth_weights": depth_weights,
            "fusion": self.fusion_cfg.to_dict(),
            "points": [p.name for p in self.points] if self.depth is not None else None,
            # only when set: checkpoints without it rebuild with the nominal strides, as they were trained
            **({"depth_image_size": list(self.depth_image_size)} if self.depth_image_size is not None else {}),
        }

    def persistent_state_dict(self) -> Dict[str, torch.Tensor]:
        """State dict without frozen-teacher weights (rebuilt from their file)."""
        sd = self.state_dict()
        if self.depth is not None and not self.depth.trainable:
            sd = {k: v for k, v in sd.items() if not k.startswith("depth.")}
        return sd


def _image_size(size: Optional[Sequence[int]]) -> Optional[tuple]:
    """``depth_image_size`` checked: None or two positive integers (H, W)."""
    if size is None:
        return None
    vals = list(size)
    if len(vals) != 2 or not all(isinstance(v, int) and v > 0 for v in vals):
        from edgehaze.errors import ConfigError

        raise ConfigError(f"depth_image_size must be [height, width] in pixels, got {size!r}")
    return (vals[0], vals[1])


def build_depth(name: str, weights: Optional[str] = None, **kwargs) -> DepthProvider:  # type: ignore[no-untyped-def]
    """Build a registered depth provider (teacher or student) by name."""
    import edgehaze.models.depth  # noqa: F401  (registration)
    from edgehaze.models.depth import oracle  # noqa: F401  (registration; not in the teachers' list)

    _maybe_register_students()
    if weights is not None:
        kwargs["weights"] = weights
    return DEPTH_MODELS.build(name, **kwargs)


def build_backbone(name: str, **kwargs) -> Backbone:  # type: ignore[no-untyped-def]
    """Build a registered backbone by name."""
    import edgehaze.models.backbones  # noqa: F401  (registration)

    return BACKBONES.build(name, **kwargs)


def _maybe_register_students() -> None:
    """Student encoders live in ``edgehaze.distill``; register them if present."""
    try:
        import edgehaze.distill.students  # noqa: F401
    except ImportError:
        pass


def build_dehazer(
    backbone: str = "edge-s",
    depth: Optional[str] = None,
    depth_weights: Optional[str] = None,
    fusion: Union[str, dict, FusionConfig, None] = "full",
    points: Optional[Sequence[str]] = None,
    backbone_kwargs: Optional[dict] = None,
    depth_kwargs: Optional[dict] = None,
    backbone_weights: Optional[str] = None,
    depth_image_size: Optional[Sequence[int]] = None,
) -> DepthGuidedDehazer:
    """Build a dehazer: ``depth=None`` gives the bare backbone.

    >>> model = build_dehazer(backbone="edge-s", depth="tiny")  # doctest: +SKIP
    """
    bkw = dict(backbone_kwargs or {})
    if backbone_weights is not None:
        bkw["weights"] = backbone_weights
    net = build_backbone(backbone, **bkw)
    provider = build_depth(depth, weights=depth_weights, **(depth_kwargs or {})) if depth else None
    return DepthGuidedDehazer(net, provider, fusion=fusion, points=points, depth_image_size=depth_image_size)
