"""Model report: what the depth branch costs on top of the RGB backbone.

The paper reports, for DehazeFormer, +0.78M parameters and +10.22 GFLOPs for
its fusion modules (Table 1), the depth model counted separately (Table 8:
25M / 98M / 335M for DAv2-S/B/L). This report gives the same split for any
``DepthGuidedDehazer`` at a given resolution:

* backbone: the bare RGB network (fused blocks bypassed),
* depth: the depth provider (teacher or student) on its own,
* fusion: Z1 + RDF + Z2 of every fusion point (params), and the FLOPs the
  fused forward adds over the bare backbone and the depth passes (for the
  baselines of :mod:`edgehaze.models.fusion_modes`: the zero-initialised
  input extension; SelfPromer's encoder, prompt blocks and its prompt-free
  first pass).

FLOPs come from ``torch.utils.flop_counter`` (2 per multiply-add; element-wise
ops not counted), via :mod:`edgehaze.metrics.cost`.
"""
from __future__ import annotations

from typing import Dict

import torch

from edgehaze.metrics.cost import count_flops, count_params
from edgehaze.models.dehazer import DepthGuidedDehazer


def fusion_params(model: DepthGuidedDehazer) -> int:
    """Parameters of all fusion blocks (Z1, RDF, Z2), without the wrapped blocks."""
    total = 0
    for block in model.fused_blocks():
        total += count_params(block.z1) + count_params(block.rdf) + count_params(block.z2)
    return total


def depth_flops(model: DepthGuidedDehazer, x: torch.Tensor) -> int:
    """FLOPs of the depth model's own passes in one forward of ``model``.

    gated: the provider's features of the image; input-channel: the teacher's
    depth map of it; selfpromer: the teacher's depth maps of the image and
    of the clear estimate, once per round (the estimate's own backbone pass
    is counted with the fusion: it exists only because of the prompt)."""
    from edgehaze.models.fusion_modes import INPUT_CHANNEL, SELFPROMER, teacher_depth

    mode = getattr(model, "fusion_mode", "gated")
    if mode == INPUT_CHANNEL:
        return count_flops(lambda t: teacher_depth(model.depth, t), x)
    if mode == SELFPROMER:
        return model.fusion_cfg.rounds * count_flops(lambda t: teacher_depth(model.depth, t), torch.cat([x, x]))
    return count_flops(model.depth, x)  # DepthProvider.forward = features


def model_report(model: DepthGuidedDehazer, height: int, width: int) -> Dict[str, Dict[str, float]]:
    """Params and FLOPs of backbone, depth branch and fusion at ``height x width``."""
    x = torch.rand(1, 3, height, width)
    was_training = model.training
    model.eval()
    try:
        total_params = count_params(model)
        fuse_p = fusion_params(model)
        depth_p = count_params(model.depth) if model.depth is not None else 0
        backbone_p = total_params - fuse_p - depth_p
        # Fused blocks with no depth feature set behave as the bare blocks.
        backbone_f = count_flops(model.backbone, x)
        depth_f = 0
        fused_f = backbone_f
        if model.depth is not None:
            depth_f = depth_flops(model, x)
            fused_f = count_flops(model, x) - depth_f
    finally:
        model.train(was_training)
    return {
        "input": {"height": height, "width": width},
        "backbone": {"arch": model.backbone.arch, "params": backbone_p, "flops": backbone_f},
        "depth": {
            "model": model.depth.model_id if model.depth is not None else None,
            "params": depth_p,
            "flops": depth_f,
        },
        "fusion": {
            "points": [p.name for p in model.points],
            "params": fuse_p,
            "flops": fused_f - backbone_f,
        },
        "total": {"params": total_params, "flops": fused_f + depth_f},
    }


def format_report(report: Dict[str, Dict[str, float]]) -> str:
    """A small Markdown table of :func:`model_report`'s numbers."""
    h, w = report["input"]["height"], report["input"]["width"]

    def row(name: str, part: Dict[str, float]) -> str:
        return f"| {name} | {part['params'] / 1e6:.3f} M | {part['flops'] / 1e9:.2f} G |"

    lines = [
        f"Model cost at {w}x{h} (FLOPs = 2 x multiply-adds)",
        "",
        "| part | params | FLOPs |",
        "|---|---|---|",
        row(f"backbone ({report['backbone']['arch']})", report["backbone"]),
    ]
    if report["depth"]["model"]:
        lines.append(row(f"depth ({report['depth']['model']})", report["depth"]))
        lines.append(row(f"fusion (+{len(report['fusion']['points'])} blocks)", report["fusion"]))
    lines.append(row("total", report["total"]))
    return "\n".join(lines)
