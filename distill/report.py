"""Teacher vs student: cost and quality, as ``report.json`` + ``report.md``.

What a user deciding whether the student may replace the teacher needs:

* parameters of the whole dehazer and of its depth branch (encoder) and the
  fusion blocks;
* FLOPs of one forward pass at the evaluation size (``FlopCounterMode``
  via :mod:`edgehaze.metrics.cost`: convolutions and matmuls, 2 per MAC);
* CPU latency, median of a few runs after a warm-up, at that size;
* PSNR / SSIM / PSNR-Y on the validation pairs (outputs clamped to [0, 1])
  for the teacher, the student and, given a stage-1 checkpoint, the RGB-only
  backbone;
* the feature error per fusion point (mean L1 and MSE between the student's
  and the teacher's fused features) on the same pairs.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from edgehaze.fsutil import atomic_write


def params_of(model: nn.Module) -> Dict[str, int]:
    """Parameters: whole dehazer, depth branch, fusion blocks (without the wrapped block)."""
    from edgehaze.metrics.cost import count_params

    depth = count_params(model.depth) if getattr(model, "depth", None) is not None else 0
    fusion = sum(count_params(b) - count_params(b.block) for b in model.fused_blocks()) if hasattr(model, "fused_blocks") else 0
    return {"total": count_params(model), "depth": depth, "fusion": fusion}


def flops_of(model: nn.Module, size: Sequence[int]) -> Dict[str, int]:
    """FLOPs of one forward pass of the dehazer and of its depth branch at ``size`` (H, W)."""
    from edgehaze.metrics.cost import count_flops

    x = torch.rand(1, 3, int(size[0]), int(size[1]), generator=torch.Generator().manual_seed(0))
    total = count_flops(model, x)
    depth = count_flops(model.depth, x) if getattr(model, "depth", None) is not None else 0
    return {"total": total, "depth": depth}


@torch.no_grad()
def cpu_latency_ms(model: nn.Module, size: Sequence[int], runs: int = 5, warmup: int = 1) -> Dict[str, float]:
    """Median (and min) wall time of one forward pass on the CPU, in milliseconds."""
    model = model.to("cpu").eval()
    x = torch.rand(1, 3, int(size[0]), int(size[1]), generator=torch.Generator().manual_seed(0))
    for _ in range(max(0, warmup)):
        model(x)
    times: List[float] = []
    for _ in range(max(1, runs)):
        t0 = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "runs": len(times),
            "threads": torch.get_num_threads()}


@torch.no_grad()
def evaluate(
    models: Dict[str, nn.Module],
    dataset: Any,
    teacher: Optional[nn.Module] = None,
    student: Optional[nn.Module] = None,
    device: "torch.device | str" = "cpu",
    limit: Optional[int] = None,
) -> Dict[str, Any]:
    """Mean PSNR/SSIM/PSNR-Y per model over ``dataset`` (one image at a time, full size).

    With ``teacher`` and ``student`` given, also the mean L1 and MSE between
    their fused features per fusion point (``feature_error``).
    """
    from edgehaze.distill.distiller import fused_forward
    from edgehaze.metrics.fullref import psnr_torch, psnr_y_torch, ssim_torch

    sums: Dict[str, Dict[str, float]] = {k: {"psnr": 0.0, "ssim": 0.0, "psnr_y": 0.0} for k in models}
    feat: Dict[str, Dict[str, float]] = {}
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for m in models.values():
        m.eval()
    for i in range(n):
        sample = dataset[i]
        x = sample["hazy"][None].to(device)
        gt = sample["gt"][None].to(device)
        for name, model in models.items():
            if model is student and teacher is not None:
                continue  # evaluated below with its fused features
            out = model(x).clamp(0, 1)
            _accumulate(sums[name], out, gt, psnr_torch, ssim_torch, psnr_y_torch)
        if teacher is not None and student is not None:
            t_out, t_fused = fused_forward(teacher, x)
            s_out, s_fused = fused_forward(student, x)
            for name, model in models.items():
                if model is student:
                    _accumulate(sums[name], s_out.clamp(0, 1), gt, psnr_torch, ssim_torch, psnr_y_torch)
            for p, s, t in zip(student.points, s_fused, t_fused):
                e = feat.setdefault(p.name, {"l1": 0.0, "mse": 0.0, "teacher_abs": 0.0})
                e["l1"] += float((s - t).abs().mean())
                e["mse"] += float(((s - t) ** 2).mean())
                e["teacher_abs"] += float(t.abs().mean())
    result: Dict[str, Any] = {"images": n, "quality": {k: {m: v / max(n, 1) for m, v in s.items()} for k, s in sums.items()}}
    if feat:
        result["feature_error"] = {p: {m: v / max(n, 1) for m, v in e.items()} for p, e in feat.items()}
    return result


def _accumulate(acc: Dict[str, float], out, gt, psnr_torch, ssim_torch, psnr_y_torch) -> None:  # type: ignore[no-untyped-def]
    acc["psnr"] += float(psnr_torch(out, gt).mean())
    acc["ssim"] += float(ssim_torch(out, gt).mean())
    acc["psnr_y"] += float(psnr_y_torch(out, gt).mean())


def build_report(
    teacher: nn.Module,
    student: nn.Module,
    val_set: Any,
    eval_size: Sequence[int] = (480, 640),
    latency_runs: int = 5,
    stage1: Optional[nn.Module] = None,
    val_limit: Optional[int] = None,
    info: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """The report dict (see module docstring); ``info`` is copied in as is."""
    teacher, student = teacher.to("cpu").eval(), student.to("cpu").eval()
    models: Dict[str, nn.Module] = {"teacher": teacher, "student": student}
    if stage1 is not None:
        models["rgb_only"] = stage1.to("cpu").eval()
    report: Dict[str, Any] = {"info": dict(info or {}), "eval_size": [int(s) for s in eval_size], "models": {}}
    for name, model in models.items():
        report["models"][name] = {
            "depth": model.depth.model_id if getattr(model, "depth", None) is not None else None,
            "params": params_of(model),
            "flops": flops_of(model, eval_size),
            "cpu_latency": cpu_latency_ms(model, eval_size, runs=latency_runs),
        }
    if val_set is not None:
        ev = evaluate(models, val_set, teacher=teacher, student=student, limit=val_limit)
        report["val_images"] = ev["images"]
        for name, q in ev["quality"].items():
            report["models"][name]["quality"] = q
        report["feature_error"] = ev.get("feature_error", {})
    return report


def _fmt_int(n: int) -> str:
    return f"{n / 1e6:.3f} M" if n >= 1e5 else f"{n:,}"


def render_markdown(report: Dict[str, Any]) -> str:
    """``report.md``: the same numbers as ``report.json``, as tables."""
    info = report.get("info", {})
    h, w = report["eval_size"]
    lines = ["# Distillation report", ""]
    for key in ("teacher", "teacher_license", "student", "teacher_checkpoint", "student_checkpoint", "steps"):
        if key in info:
            lines.append(f"- {key.replace('_', ' ')}: `{info[key]}`")
    lines += ["", f"## Cost at {w}x{h} (CPU, {next(iter(report['models'].values()))['cpu_latency']['threads']} threads)", "",
              "| model | depth | params (total) | params (depth) | params (fusion) | GFLOPs (total) | GFLOPs (depth) | latency ms (median) |",
              "|---|---|---|---|---|---|---|---|"]
    for name, m in report["models"].items():
        p, f = m["params"], m["flops"]
        lines.append(f"| {name} | {m['depth']} | {_fmt_int(p['total'])} | {_fmt_int(p['depth'])} | {_fmt_int(p['fusion'])} | "
                     f"{f['total'] / 1e9:.3f} | {f['depth'] / 1e9:.3f} | {m['cpu_latency']['median_ms']:.1f} |")
    if "val_images" in report:
        lines += ["", f"## Quality on {report['val_images']} validation image(s)", "",
                  "| model | PSNR | SSIM | PSNR-Y |", "|---|---|---|---|"]
        for name, m in report["models"].items():
            q = m.get("quality")
            if q:
                lines.append(f"| {name} | {q['psnr']:.3f} | {q['ssim']:.4f} | {q['psnr_y']:.3f} |")
        if report.get("feature_error"):
            lines += ["", "## Fused-feature error per fusion point (student vs teacher)", "",
                      "| point | L1 | MSE | mean abs of teacher feature |", "|---|---|---|---|"]
            for p, e in report["feature_error"].items():
                lines.append(f"| {p} | {e['l1']:.5f} | {e['mse']:.6f} | {e['teacher_abs']:.5f} |")
    return "\n".join(lines) + "\n"


def write_report(run_dir: "str | Path", report: Dict[str, Any]) -> Dict[str, Path]:
    """Write ``report.json`` and ``report.md`` atomically into ``run_dir``."""
    run_dir = Path(run_dir)
    paths = {"json": run_dir / "report.json", "md": run_dir / "report.md"}
    text_json = json.dumps(report, indent=2, sort_keys=False, default=float) + "\n"
    text_md = render_markdown(report)
    atomic_write(paths["json"], lambda tmp: Path(tmp).write_text(text_json, encoding="utf-8"))
    atomic_write(paths["md"], lambda tmp: Path(tmp).write_text(text_md, encoding="utf-8"))
    return paths
