"""``edgehaze report``: parameters and FLOPs of backbone, depth branch and fusion.

``--backbones all`` prints every backbone beside the paper's Table 1 and what
each fusion mode adds to it (:mod:`edgehaze.models.cost_table`)."""
from __future__ import annotations

import argparse
import json


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("report", help="parameters and FLOPs of a model (backbone / depth / fusion)", description=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="an edgehaze checkpoint")
    src.add_argument("--backbone", help="a backbone name (edge-s, dehazeformer-t, ...)")
    src.add_argument("--backbones", help="'all' or a comma-separated list: each backbone beside the paper's "
                     "Table 1, and what each --modes adds (depth model --depth, default dav2-l, without weights)")
    p.add_argument("--modes", default=",".join(("full", "lite", "input-channel", "selfpromer")),
                   help="with --backbones: comma-separated fusion variants/modes to cost")
    p.add_argument("--depth", default=None, help="depth model name (tiny, dav2-l, da3-mono-l, student-s, ...)")
    p.add_argument("--depth-weights", default=None, help="local weights of the depth model")
    p.add_argument(
        "--random-depth",
        action="store_true",
        help="count a teacher's architecture without its weights (random init; costs only)",
    )
    p.add_argument("--depth-input-size", type=int, default=None,
                   help="teacher input side (multiple of 14; default 518): its cost depends on it")
    p.add_argument("--fusion", default="full", help="fusion variant (full, lite, cfe-dai, cfe-dai-asg, no-zc, ...) or baseline mode (input-channel, selfpromer)")
    p.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"))
    p.add_argument("--json", dest="json_out", default=None, help="also write the numbers to this JSON file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgehaze.checkpoint import load_dehazer
    from edgehaze.fsutil import atomic_write_text
    from edgehaze.models.dehazer import build_dehazer
    from edgehaze.models.report import format_report, model_report

    from edgehaze.errors import EdgehazeError

    if args.backbones:
        return run_table(args)
    if args.checkpoint:
        if args.random_depth or args.depth_input_size:
            raise EdgehazeError(f"{args.checkpoint}: --random-depth and --depth-input-size build a model by name; "
                                "drop them with --checkpoint (it rebuilds the model it holds)")
        model, _ = load_dehazer(args.checkpoint, depth_weights=args.depth_weights)
    else:
        if args.random_depth and (args.depth is None or args.depth_weights or args.depth.startswith("student")):
            raise EdgehazeError("--random-depth counts a --depth teacher (dav2-l, da3-mono-l, ...) without weights: "
                                "pass --depth NAME and drop --depth-weights")
        depth_kwargs = {"random_init": True} if args.random_depth else {}
        if args.depth_input_size:
            depth_kwargs["input_size"] = args.depth_input_size
        model = build_dehazer(
            backbone=args.backbone,
            depth=args.depth,
            depth_weights=args.depth_weights,
            fusion=args.fusion,
            depth_kwargs=depth_kwargs or None,
        )
    report = model_report(model, *args.size)
    print(format_report(report))
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps(report, indent=2))
    return 0


def run_table(args: argparse.Namespace) -> int:
    """``--backbones``: the cost table (counted on the meta device, depth without weights)."""
    import sys

    from edgehaze.errors import EdgehazeError
    from edgehaze.fsutil import atomic_write_text
    from edgehaze.models.cost_table import cost_rows, format_cost_table, resolve_backbones

    if args.depth_weights or args.random_depth:
        raise EdgehazeError("--backbones counts architectures without weights (weights do not change a count): "
                            "drop --depth-weights / --random-depth")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes:
        raise EdgehazeError("--modes: give at least one fusion variant or mode (full, lite, input-channel, selfpromer)")
    depth_kwargs = {"input_size": args.depth_input_size} if args.depth_input_size else {}
    table = cost_rows(resolve_backbones(args.backbones), modes, tuple(args.size), depth=args.depth or "dav2-l",
                      depth_kwargs=depth_kwargs, progress=lambda name: print(f"counting {name} ...", file=sys.stderr))
    print(format_cost_table(table))
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps(table, indent=2))
    return 0
