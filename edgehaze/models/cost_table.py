"""Every backbone's cost beside the paper's Table 1, and what each way of
using depth adds to it (``edgehaze report --backbones all``).

The paper's claim is "plug-and-play across backbones at a small cost"; its
Table 1 gives each backbone's parameters and FLOPs and what its fusion
(+Ours), SelfPromer and PromptHaze add. This module measures the same
numbers on our implementations:

* backbone: the bare RGB network;
* per fusion mode (gated ``full``/``lite``, ``input-channel``,
  ``selfpromer``): the parameters and FLOPs the mode adds to the backbone
  (:func:`edgehaze.models.report.model_report`'s ``fusion`` part: for
  SelfPromer this includes its prompt-free first backbone pass, which
  self-prompt inference needs), the depth model counted apart;
* the depth model's own passes per frame, once per mode (they do not depend
  on the backbone).

Counting runs on PyTorch's ``meta`` device: FLOPs come from
``torch.utils.flop_counter`` (2 per multiply-add, matmuls/convolutions/
attention only), which needs shapes, not values, so no weights are loaded
and a large teacher costs seconds. ``test_cost_table`` checks that the
backbone and fusion counts equal those of a real CPU forward. The depth
model's count is *higher* than a CPU forward's: on the CPU, PyTorch's fused
scaled-dot-product-attention kernel is not known to ``flop_counter`` (its
attention counts as 0), on meta it decomposes into counted matmuls.

What the paper does not say: the input size of its FLOPs column, and
whether "FLOPs" there means multiply-adds (the size-256 MAC counts of the
backbones' own papers are closer to its values than our FLOPs are). Both
our FLOPs and MACs are printed at the chosen size (default 256 x 256, the
size DehazeFormer, MB-TaylorFormer and OKNet report at).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from edgehaze.errors import ConfigError

#: fusion modes of the table (gated variants by name, then the two baselines)
MODES = ("full", "lite", "input-channel", "selfpromer")


@dataclass(frozen=True)
class PaperRow:
    """One backbone of the paper's Table 1: its name there, params (M) and
    FLOPs (G) as printed, and what +Ours / +SelfPromer / +PromptHaze add."""

    name: str
    params_m: float
    flops_g: float
    ours: Tuple[float, float]
    selfpromer: Tuple[float, float]
    prompthaze: Tuple[float, float]


#: the paper's Table 1 (RW2AH), keyed by our backbone of the same size: its
#: "MB-Taylorformer" (2.66M) is -B, "DehazeFormer" (4.63M) is -M, "CoA" is the
#: student CoA deploys (3.75M printed; the official student has 3.00M).
PAPER_TABLE1: Dict[str, PaperRow] = {
    "mb-taylorformer-b": PaperRow("MB-Taylorformer", 2.66, 24.36, (0.780, 10.22), (0.703, 9.24), (1.18, 13.61)),
    "dehazeformer-m": PaperRow("DehazeFormer", 4.63, 36.02, (0.780, 10.22), (0.703, 8.34), (1.18, 12.44)),
    "oknet": PaperRow("OKNet", 4.42, 30.28, (1.22, 15.45), (1.09, 13.82), (1.91, 21.33)),
    "coa": PaperRow("CoA", 3.75, 3.06, (1.22, 1.59), (1.09, 1.49), (1.91, 1.96)),
    "sgdn": PaperRow("SGDNet", 10.979, 40.54, (1.22, 15.45), (1.09, 13.82), (1.91, 21.33)),
}


def resolve_backbones(spec: "str | Sequence[str]") -> List[str]:
    """``"all"``, a comma-separated string or a list -> registered backbone names."""
    import edgehaze.models.backbones  # noqa: F401  (registration)
    from edgehaze.models.registries import BACKBONES

    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    if names == ["all"]:
        return BACKBONES.names()
    unknown = [n for n in names if n not in BACKBONES]
    if unknown or not names:
        raise ConfigError(f"--backbones {','.join(names) or '(empty)'}: unknown backbone(s) {unknown}; "
                          f"known: all, {', '.join(BACKBONES.names())}")
    return names


def _mode_cost(backbone: str, depth: str, mode: str, x: torch.Tensor, depth_kwargs: dict,
               depth_cost: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    """Params and FLOPs ``mode`` adds to ``backbone`` (with the backbone's FLOPs and the depth
    passes still in): one fused forward per row; the depth passes, which do not depend
    on the backbone, are counted once per mode into ``depth_cost``."""
    from edgehaze.metrics.cost import count_flops, count_params
    from edgehaze.models.dehazer import build_dehazer
    from edgehaze.models.report import depth_flops, fusion_params

    model = build_dehazer(backbone, depth=depth, fusion=mode, depth_kwargs=depth_kwargs).eval()
    if mode not in depth_cost:
        depth_cost[mode] = {"params": count_params(model.depth), "flops": depth_flops(model, x)}
    return {"params": fusion_params(model), "flops": count_flops(model, x) - depth_cost[mode]["flops"],
            "points": len(model.points)}


def cost_rows(backbones: Sequence[str], modes: Sequence[str] = MODES, size: Tuple[int, int] = (256, 256),
              depth: str = "dav2-l", depth_kwargs: Optional[dict] = None,
              progress: Optional[Callable[[str], None]] = None) -> Dict[str, object]:
    """Backbone and per-mode fusion costs of every backbone, the depth passes per mode, the paper's rows.

    The same split as :func:`edgehaze.models.report.model_report` (tested
    equal), counted on the meta device. ``depth_kwargs``: for the depth model
    (always built without weights, ``random_init``: weights do not change a
    count). ``progress``: called with a short label before each backbone."""
    from edgehaze.metrics.cost import count_flops, count_params
    from edgehaze.models.dehazer import build_backbone

    kwargs = {"random_init": True, **(depth_kwargs or {})}
    rows = []
    depth_cost: Dict[str, Dict[str, float]] = {}
    with torch.device("meta"):
        x = torch.rand(1, 3, *size)
        for name in backbones:
            if progress:
                progress(name)
            bare = build_backbone(name).eval()
            row = {"backbone": name, "params": count_params(bare), "flops": count_flops(bare, x), "modes": {},
                   "paper": PAPER_TABLE1[name].__dict__ if name in PAPER_TABLE1 else None}
            for mode in modes:
                cost = _mode_cost(name, depth, mode, x, kwargs, depth_cost)
                row["modes"][mode] = {**cost, "flops": cost["flops"] - row["flops"]}
            rows.append(row)
    return {"input": {"height": size[0], "width": size[1]}, "depth": depth, "depth_kwargs": kwargs,
            "modes": list(modes), "rows": rows, "depth_passes": depth_cost}


def cost_cell(params: float, flops: float, sign: str = "") -> str:
    """``1.234 M / 5.67 G``; small parameter counts in K, small FLOP counts with 3 significant digits."""
    p = f"{params / 1e6:.3f} M" if params >= 1e5 else f"{params / 1e3:.2f} K"
    f = f"{flops / 1e9:.2f} G" if flops >= 1e9 else f"{flops / 1e9:.3g} G"
    return f"{sign}{p} / {sign}{f}"


def _paper_pair(pair: Tuple[float, float]) -> str:
    return f"+{pair[0]:g} M / +{pair[1]:g} G"


def format_cost_table(table: Dict[str, object]) -> str:
    """Markdown: backbones beside the paper's Table 1, then what each fusion mode adds."""
    h, w = table["input"]["height"], table["input"]["width"]  # type: ignore[index]
    rows: List[dict] = table["rows"]  # type: ignore[assignment]
    modes: List[str] = table["modes"]  # type: ignore[assignment]
    lines = [f"Backbones at {w}x{h} (ours: torch.utils.flop_counter, FLOPs = 2 x MACs; the paper's Table 1 "
             "states neither its input size nor whether its FLOPs are MACs)", "",
             "| backbone | params | GFLOPs | GMACs | paper row | paper params | paper FLOPs |",
             "|---|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        p = r["paper"]
        paper = f"| {p['name']} | {p['params_m']:g} M | {p['flops_g']:g} G |" if p else "| | | |"
        lines.append(f"| {r['backbone']} | {r['params'] / 1e6:.3f} M | {r['flops'] / 1e9:.2f} | "
                     f"{r['flops'] / 2e9:.2f} {paper}")
    lines += ["", f"What each way of using depth adds (params / FLOPs; depth model `{table['depth']}` counted apart; "
              "selfpromer includes its prompt-free first backbone pass)", "",
              "| backbone | " + " | ".join(f"+ {m}" for m in modes) + " | paper +Ours | paper +SelfPromer |",
              "|---|" + "---:|" * (len(modes) + 2)]
    for r in rows:
        cells = [cost_cell(r["modes"][m]["params"], r["modes"][m]["flops"], "+") for m in modes]
        p = r["paper"]
        paper = [_paper_pair(p["ours"]), _paper_pair(p["selfpromer"])] if p else ["", ""]
        lines.append(f"| {r['backbone']} | " + " | ".join(cells + paper) + " |")
    passes: Dict[str, Dict[str, float]] = table["depth_passes"]  # type: ignore[assignment]
    lines += ["", "Depth model passes per frame (the same on every backbone): " + "; ".join(
        f"{m} {cost_cell(v['params'], v['flops'])}" for m, v in passes.items()),
        "(PromptHaze, the paper's other competitor, has no public code and is not built.)"]
    return "\n".join(lines)
