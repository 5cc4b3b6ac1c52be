"""``edgehaze distill``: train a compact student depth encoder from a depth-fused teacher (DAv2, DA3, ...).

Examples::

    edgehaze distill --teacher dav2-l --teacher-ckpt runs/teacher/best.safetensors \\
        --depth-weights ~/weights/depth_anything_v2_vitl.pth --data data/reside6k
    edgehaze distill --teacher da3-mono-l --teacher-ckpt runs/teacher_da3/best.safetensors \\
        --depth-weights ~/weights/DA3MONO-LARGE --data data/reside6k     # Apache-2.0 teacher
    edgehaze distill --config configs/distill_edge-s_student-s.yaml --resume
    torchrun --nproc_per_node 4 -m edgehaze distill --config ... # DDP

The run directory gets the student checkpoints and ``report.md``/``report.json``.
"""
from __future__ import annotations

import argparse
from typing import List


def add_parser(subparsers: "argparse._SubParsersAction") -> None:
    p = subparsers.add_parser(
        "distill",
        help="distil a small student depth encoder from a depth-fused (DAv2, DA3) teacher dehazer",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--config", help="YAML config (see configs/distill_*.yaml); flags below override it")
    p.add_argument("--teacher", help="expected teacher depth model id, e.g. dav2-l or da3-mono-l (checked against --teacher-ckpt)")
    p.add_argument("--teacher-ckpt", help="fused teacher checkpoint from `edgehaze train` (.safetensors)")
    p.add_argument("--depth-weights", help="the teacher's depth weights (overrides the path recorded in the checkpoint)")
    p.add_argument("--student", help="student encoder: student-s, student-m, student-timm (default: student-s)")
    p.add_argument("--stage1", help="optional RGB-only (stage-1) checkpoint, reported for comparison")
    p.add_argument("--data", help="dataset root (data.root)")
    p.add_argument("--out", help="run directory (out_dir)")
    p.add_argument("--steps", type=int, help="optimiser steps (distill.steps)")
    p.add_argument("--freeze", choices=["backbone_and_fusion", "none"], help="what stays frozen (distill.freeze)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last.state.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. loss.feature=mse train.lr=5e-4")
    p.set_defaults(func=run)


def _flag_overrides(args: argparse.Namespace) -> List[str]:
    pairs = [
        ("teacher.depth", args.teacher), ("teacher.checkpoint", args.teacher_ckpt),
        ("teacher.depth_weights", args.depth_weights), ("teacher.stage1", args.stage1),
        ("student.depth", args.student), ("data.root", args.data), ("out_dir", args.out),
        ("distill.steps", args.steps), ("distill.freeze", args.freeze),
    ]
    # paths are strings even when they look like numbers/YAML
    return [f"{k}={v}" if k == "distill.steps" else f"{k}={_quote(str(v))}" for k, v in pairs if v is not None]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def run(args: argparse.Namespace) -> int:
    from edgehaze.distill.distiller import DistillConfig, check_teacher_weights
    from edgehaze.train.config import apply_overrides, from_dict, read_yaml

    where = args.config or "defaults"
    data = read_yaml(args.config) if args.config else {}
    data = apply_overrides(DistillConfig, data, list(args.overrides) + _flag_overrides(args), where=f"{where} (overrides)")
    cfg = from_dict(DistillConfig, data, where)
    # the teacher's weights first: the most likely mistake, and cheap to check
    check_teacher_weights(cfg.teacher.checkpoint, cfg.teacher.depth, cfg.teacher.depth_weights)
    cfg.validate(where)

    from edgehaze.distill.run import run_distill

    report = run_distill(cfg, resume=args.resume, progress=False if args.no_progress else None)
    if report:
        run_dir = cfg.run_dir()
        s, t = report["models"]["student"], report["models"]["teacher"]
        print(f"student {cfg.student.depth}: depth branch {s['params']['depth'] / 1e6:.3f} M params "
              f"(teacher {t['params']['depth'] / 1e6:.3f} M), {s['cpu_latency']['median_ms']:.1f} ms vs "
              f"{t['cpu_latency']['median_ms']:.1f} ms on CPU")
        if "quality" in s:
            print(f"PSNR student {s['quality']['psnr']:.2f} dB, teacher {t['quality']['psnr']:.2f} dB")
        print(f"report: {run_dir / 'report.md'}")
        print(f"next: edgehaze export --checkpoint {run_dir / 'student.safetensors'}")
    return 0
