"""Model cost: parameter counts and FLOPs/MACs of one forward pass.

The paper reports the parameters and FLOPs that the depth branch adds; these
helpers give the numbers for any module so a caller can subtract "with" and
"without" variants. FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``
(it counts matmul/convolution/attention ops, 2 FLOPs per multiply-add, and
ignores cheap element-wise ops), so ``MACs = FLOPs / 2``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


def count_params(module: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for p in module.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def count_flops(module: torch.nn.Module, *inputs: Any, **kwargs: Any) -> int:
    """FLOPs of ``module(*inputs, **kwargs)`` under ``no_grad`` (2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(*inputs, **kwargs)
    return int(counter.get_total_flops())


def count_macs(module: torch.nn.Module, *inputs: Any, **kwargs: Any) -> int:
    """Multiply-accumulates of one forward pass: ``count_flops(...) // 2``."""
    return count_flops(module, *inputs, **kwargs) // 2


@dataclass(frozen=True)
class Cost:
    """Parameters and compute of one forward pass, for reports and tables."""

    params: int
    flops: int

    @property
    def macs(self) -> int:
        return self.flops // 2

    def __str__(self) -> str:
        return f"{self.params / 1e6:.3f} M params, {self.flops / 1e9:.3f} GFLOPs ({self.macs / 1e9:.3f} GMACs)"


def measure_cost(module: torch.nn.Module, *inputs: Any, **kwargs: Any) -> Cost:
    """:class:`Cost` of ``module`` on the given example inputs."""
    return Cost(params=count_params(module), flops=count_flops(module, *inputs, **kwargs))
