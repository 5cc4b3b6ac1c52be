"""``edgehaze bench``: latency and FPS of models on torch eager, ONNX Runtime FP32/INT8 (and TensorRT).

Examples::

    edgehaze bench --checkpoint runs/demo/stage2/fused/best.safetensors \\
        --onnx runs/demo/export/student-fp32.onnx runs/demo/export/student-int8.onnx
    edgehaze bench --teacher dav2-l --depth-weights ~/weights/depth_anything_v2_vitl.pth \\
        --sizes 480x640 1080x1920 --runs 10 --json bench.json
    edgehaze bench --teacher dav2-l da3-mono-l --random-depth --runs 5   # latency without weights

Checkpoints run in torch eager; exported artifacts run through the shipped
runtime (``runtime.create``/``run``, uint8 buffers); TensorRT is used when
present and otherwise listed as skipped. Prints a Markdown table; ``--json``
writes every number (median, p90, mean, min, FPS, the machine).
"""
from __future__ import annotations

import argparse


def add_parser(subparsers: "argparse._SubParsersAction") -> None:
    p = subparsers.add_parser(
        "bench",
        help="latency/FPS: torch eager vs ONNX Runtime FP32 vs INT8 (vs TensorRT), teacher vs student",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", nargs="+", default=[], metavar="CKPT", help="dehazer checkpoints (.safetensors), torch eager")
    p.add_argument("--onnx", nargs="+", default=[], metavar="MODEL", help="exported artifacts (NAME.onnx, or NAME.engine)")
    p.add_argument("--sizes", nargs="+", default=["480x640"], metavar="HxW", help="frame sizes, height x width (default 480x640)")
    p.add_argument("--runs", type=int, default=30, help="timed runs per case (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch and ONNX Runtime (default 2)")
    p.add_argument("--teacher", nargs="+", default=None, metavar="NAME",
                   help="also time a dehazer fused with each of these depth teachers (e.g. dav2-l da3-mono-l, tiny)")
    p.add_argument("--backbone", default="edge-s", help="backbone of the --teacher model (default edge-s)")
    p.add_argument("--depth-weights", default=None, help="the teacher's weights (--teacher; or checkpoints whose teacher moved)")
    p.add_argument("--depth-input-size", type=int, default=None, help="teacher input side (multiple of 14; default 518)")
    p.add_argument("--random-depth", action="store_true",
                   help="time the --teacher architectures without their weights (random init; latency only)")
    p.add_argument("--no-tensorrt", action="store_true", help="do not try TensorRT even where it is installed")
    p.add_argument("--json", default=None, metavar="OUT", help="write the results as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--profile", action="store_true",
                   help="also profile each --onnx graph per node with ONNX Runtime (top nodes, QDQ share, "
                        "full- vs low-resolution time; edgehaze.profiling)")
    p.add_argument("--pareto", default=None, metavar="OUT",
                   help="run the quality/speed Pareto sweep (benchmarks/pareto.py, source checkout) into OUT")
    p.set_defaults(func=run)


def _pareto(out: str) -> int:
    import importlib.util
    from pathlib import Path

    from edgehaze.errors import EdgehazeError

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "pareto.py"
    if not script.is_file():
        raise EdgehazeError(f"--pareto needs the source checkout ({script} is missing); run benchmarks/pareto.py there")
    import sys

    sys.path.insert(0, str(script.parents[1]))
    spec = importlib.util.spec_from_file_location("edgehaze_pareto", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return int(module.main(["--out", out]))


def _profile(models: list, sizes: list, threads: int) -> None:
    from edgehaze.profiling import format_profile, profile_onnx

    for model in models:
        if not str(model).endswith(".onnx"):
            continue
        for size in sizes:
            print(format_profile(profile_onnx(model, size, threads=threads), str(model)))


def run(args: argparse.Namespace) -> int:
    from edgehaze.bench import markdown_table, parse_size, run_bench, write_json

    sizes = [parse_size(s) for s in args.sizes]
    if args.pareto:
        return _pareto(args.pareto)
    from edgehaze.errors import EdgehazeError

    if args.random_depth and (args.depth_weights or not args.teacher or any(t.startswith("student") for t in args.teacher)):
        raise EdgehazeError("--random-depth times --teacher models without weights: pass --teacher NAME "
                            "and drop --depth-weights")
    depth_kwargs = {"input_size": args.depth_input_size} if args.depth_input_size else {}
    if args.random_depth:
        depth_kwargs["random_init"] = True
    result = run_bench(
        checkpoints=args.checkpoint,
        onnx=args.onnx,
        sizes=sizes,
        runs=args.runs,
        warmup=args.warmup,
        threads=args.threads,
        teacher=args.teacher,
        teacher_backbone=args.backbone,
        depth_weights=args.depth_weights,
        depth_kwargs=depth_kwargs or None,
        tensorrt=not args.no_tensorrt,
        progress=not args.no_progress,
    )
    print(markdown_table(result["results"], result["notes"]), end="")
    if args.profile:
        _profile(args.onnx, sizes, args.threads)
    if args.json:
        print(f"results: {write_json(args.json, result)}")
    return 1 if any("error" in r for r in result["results"]) else 0
