"""``DepthGuidedDehazer``: backbone + depth provider + fusion blocks.

Fusion is plugged in by declaration: the backbone lists its fusion points
(dotted module names) and this class replaces each chosen sub-module ``F`` by
a :class:`~edgehaze.models.fusion.FusedBlock` wrapping it. Before the
backbone runs, each fused block is handed the depth feature map whose stride
is closest to its own. With both zero-convolutions on, the output at
initialisation equals the bare backbone's output exactly, for any H x W.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from edgehaze.models.contracts import Backbone, DepthProvider, FusionPoint
from edgehaze.models.fusion import FusedBlock, FusionConfig, resolve_fusion
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
    fusion: variant name / options dict / :class:`FusionConfig`.
    points: names of the fusion points to use (default: all declared).
    """

    def __init__(
        self,
        backbone: Backbone,
        depth: Optional[DepthProvider] = None,
        fusion: Union[str, dict, FusionConfig, None] = None,
        points: Optional[Sequence[str]] = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.depth = depth
        self.fusion_cfg = resolve_fusion(fusion)
        declared: Dict[str, FusionPoint] = {p.name: p for p in backbone.fusion_points()}
        if points is None:
            points = list(declared)
        unknown = [p for p in points if p not in declared]
        if unknown:
            from edgehaze.errors import ConfigError

            raise ConfigError(
                f"unknown fusion point(s) {unknown} for backbone '{backbone.arch}'; "
                f"declared: {list(declared)}"
            )
        self.points: List[FusionPoint] = [declared[p] for p in points] if depth is not None else []
        self.levels: List[int] = []
        self.fused: nn.ModuleDict = nn.ModuleDict()
        if depth is None:
            return
        for point in self.points:
            level = nearest_level(point.stride, depth.feature_strides)
            parent, attr = _split_parent(backbone, point.name)
            block = FusedBlock(getattr(parent, attr), point.channels, depth.feature_channels[level], self.fusion_cfg)
            setattr(parent, attr, block)
            self.levels.append(level)
        # Keep handles without registering the blocks twice in the state dict.
        self._blocks = [_split_parent(backbone, p.name) for p in self.points]

    # -- helpers -------------------------------------------------------------
    def fused_blocks(self) -> List[FusedBlock]:
        return [getattr(parent, attr) for parent, attr in getattr(self, "_blocks", [])]

    def depth_features(self, image: torch.Tensor) -> List[torch.Tensor]:
        """The depth provider's multi-scale features for ``image`` ([0, 1])."""
        if self.depth is None:
            return []
        if not self.depth.trainable:
            with torch.no_grad():
                return [f.detach() for f in self.depth.features(image)]
        return self.depth.features(image)

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
        """
        if self.depth is None:
            return self.backbone(image)
        feats = self.depth_features(image) if depth_feats is None else depth_feats
        blocks = self.fused_blocks()
        try:
            for block, level in zip(blocks, self.levels):
                block.set_depth(feats[level])
            return self.backbone(image)
        finally:
            for block in blocks:
                block.set_depth(None)

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
        }

    def persistent_state_dict(self) -> Dict[str, torch.Tensor]:
        """State dict without frozen-teacher weights (rebuilt from their file)."""
        sd = self.state_dict()
        if self.depth is not None and not self.depth.trainable:
            sd = {k: v for k, v in sd.items() if not k.startswith("depth.")}
        return sd


def build_depth(name: str, weights: Optional[str] = None, **kwargs) -> DepthProvider:  # type: ignore[no-untyped-def]
    """Build a registered depth provider (teacher or student) by name."""
    import edgehaze.models.depth  # noqa: F401  (registration)

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
) -> DepthGuidedDehazer:
    """Build a dehazer: ``depth=None`` gives the bare backbone.

    >>> model = build_dehazer(backbone="edge-s", depth="tiny")  # doctest: +SKIP
    """
    bkw = dict(backbone_kwargs or {})
    if backbone_weights is not None:
        bkw["weights"] = backbone_weights
    net = build_backbone(backbone, **bkw)
    provider = build_depth(depth, weights=depth_weights, **(depth_kwargs or {})) if depth else None
    return DepthGuidedDehazer(net, provider, fusion=fusion, points=points)
