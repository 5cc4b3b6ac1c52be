"""``edgehaze report``: parameters and FLOPs of backbone, depth branch and fusion."""
from __future__ import annotations

import argparse
import json


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("report", help="parameters and FLOPs of a model (backbone / depth / fusion)", description=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="an edgehaze checkpoint")
    src.add_argument("--backbone", help="a backbone name (edge-s, dehazeformer-t, ...)")
    p.add_argument("--depth", default=None, help="depth model name (tiny, dav2-l, student-s, ...)")
    p.add_argument("--depth-weights", default=None, help="local weights of the depth model")
    p.add_argument(
        "--random-depth",
        action="store_true",
        help="count a teacher's architecture without its weights (random init; costs only)",
    )
    p.add_argument("--fusion", default="full", help="fusion variant (full, cfe-dai, cfe-dai-asg, no-zc, ...)")
    p.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"))
    p.add_argument("--json", dest="json_out", default=None, help="also write the numbers to this JSON file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgehaze.checkpoint import load_dehazer
    from edgehaze.fsutil import atomic_write_text
    from edgehaze.models.dehazer import build_dehazer
    from edgehaze.models.report import format_report, model_report

    if args.checkpoint:
        model, _ = load_dehazer(args.checkpoint, depth_weights=args.depth_weights)
    else:
        depth_kwargs = {"random_init": True} if args.random_depth else None
        model = build_dehazer(
            backbone=args.backbone,
            depth=args.depth,
            depth_weights=args.depth_weights,
            fusion=args.fusion,
            depth_kwargs=depth_kwargs,
        )
    report = model_report(model, *args.size)
    print(format_report(report))
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps(report, indent=2))
    return 0
