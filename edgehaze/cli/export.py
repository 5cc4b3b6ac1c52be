"""``edgehaze export``: checkpoint -> verified ONNX / TensorRT artifact.

The table in :mod:`edgehaze.export.targets` decides which flags each
``--format`` takes; a flag a target does not take is an error, not ignored.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgehaze.errors import EdgehazeError

#: argparse dests that are options of the export (checked against the target table when given)
_CHECKED = ("imgsz", "dynamic", "channel_order", "two_graph", "int8", "fp16", "calib", "qat_steps", "method",
            "max_psnr_drop", "force", "calib_images", "holdout_images", "ort_optimize", "opset", "workspace",
            "internal_scale", "target")


def add_parser(subparsers: "argparse._SubParsersAction") -> None:
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX (FP32/FP16/INT8) or TensorRT, verified against PyTorch",
        description="Export a dehazer checkpoint to a deployment artifact: NAME.onnx (uint8 NHWC image -> "
        "dehazed) + NAME.json sidecar (same keys in the ONNX metadata_props). Every export checks itself: "
        "FP32 against PyTorch, INT8/FP16 by PSNR on hold-out images.",
    )
    p.add_argument("--checkpoint", default=None,
                   help="dehazer checkpoint (.safetensors), or a shipped model name (edgehaze-s: its FP32 checkpoint "
                        "from runtime/models/, e.g. re-exported --target trt; output in runs/NAME/export/)")
    p.add_argument("--format", default="onnx", choices=["onnx", "engine", "torchtrt", "all"],
                   help="target (engine/torchtrt: GPU machines with the trt extra)")
    p.add_argument("--target", choices=["cpu", "trt"], default=None,
                   help="graph flavour: cpu (ONNX Runtime on CPU: asymmetric uint8 INT8, uint8 layout ops; the "
                        "default) or trt (TensorRT: symmetric int8, zero-point 0, uint8 only at the graph's ends; "
                        "the default with --format engine/torchtrt); NAME gets a -trt suffix")
    p.add_argument("--check", choices=["trt"], default=None,
                   help="check the graphs against what TensorRT 8.6 and 10.x document for their ONNX parser (ops, "
                        "types, Q/DQ, uint8, shape profiles) and print the trtexec/polygraphy commands; after the "
                        "export, or on an existing artifact with --onnx (exit 1 when a rule fails)")
    p.add_argument("--onnx", default=None, metavar="NAME.onnx",
                   help="with --check: an exported artifact to check (its sidecar's graphs and profiles) instead "
                        "of exporting")
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--int8", action="store_true", default=None, help="INT8 (QDQ) by QAT or PTQ; needs --calib")
    prec.add_argument("--fp16", action="store_true", default=None, help="FP16 weights and activations")
    p.add_argument("--calib", default=None, metavar="DATA",
                   help="calibration images: a dataset folder (any layout), a folder of images, or 'procedural'")
    p.add_argument("--calib-images", type=int, default=None, help="images used to calibrate (default 32)")
    p.add_argument("--holdout-images", type=int, default=None,
                   help="other images used to measure the PSNR drop (default 8)")
    p.add_argument("--method", choices=["qat", "ptq"], default=None,
                   help="qat: NNCF quantisation-aware fine-tuning (default); ptq: ONNX Runtime static quantisation")
    p.add_argument("--qat-steps", type=int, default=None, help="QAT fine-tuning steps (default 300)")
    p.add_argument("--max-psnr-drop", type=float, default=None, metavar="DB",
                   help="refuse when INT8 loses more PSNR than this on hold-out images (default 0.2)")
    p.add_argument("--force", action="store_true", default=None, help="write even when the drop is too large")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--imgsz", type=int, nargs=2, metavar=("H", "W"), default=None, help="fixed input size")
    size.add_argument("--dynamic", action="store_true", default=None, help="dynamic H x W (the default)")
    p.add_argument("--two-graph", action="store_true", default=None,
                   help="also write NAME.depth.onnx and NAME.fuse.onnx (depth cached across stream frames)")
    p.add_argument("--channel-order", choices=["RGB", "BGR"], default=None,
                   help="channel order of the uint8 input/output (BGR: OpenCV frames, default RGB)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (>= 17, default 17)")
    p.add_argument("--internal-scale", type=int, default=None, metavar="S",
                   help="edge-* backbones: run the network at 1/S of the frame instead of the trained scale "
                        "(e.g. 16 for 1080p streams of a model trained at 8: the same view of the scene as 480p)")
    p.add_argument("--ort-optimize", action="store_true", default=None,
                   help="also save ONNX Runtime's optimised graph as NAME.ort.onnx (CPU provider specific)")
    p.add_argument("--workspace", type=float, default=None, help="TensorRT builder workspace in GiB (default 4)")
    p.add_argument("--out", default=None, help="output folder (default: export/ next to the checkpoint)")
    p.add_argument("--name", default=None, help="artifact stem (default: checkpoint stem + precision)")
    p.add_argument("--depth-weights", default=None, help="teacher weights, when moved since training")
    p.set_defaults(func=run)


def print_trt_check(path: "str | Path") -> int:
    """The TensorRT checker's verdict on every graph of an artifact, and the GPU commands; 0 when all pass."""
    from edgehaze.export.trt_check import artifact_meta, check_artifact, gpu_commands, precision_of_graph, read_profiles

    path = Path(path)
    if not path.is_file():
        raise EdgehazeError(f"--onnx {path}: no such file; pass an exported NAME.onnx (or its NAME.json)")
    reports = check_artifact(path)
    meta = artifact_meta(path)
    profiles = read_profiles(meta)
    graphs = meta.get("graphs") or {"full": path.name}
    print(f"TensorRT check ({meta.get('target', 'unknown')} flavour, {meta.get('precision', '?')}):")
    for rep in reports:
        for line in rep.lines():
            print(line)
    ok = all(r.ok() for r in reports)
    print("verdict: " + ("PASS - every graph uses only what the TensorRT 8.6 and 10.x ONNX parsers document"
                         if ok else "FAIL - see the rules above (export with --target trt)"))
    print("confirm on a GPU machine with TensorRT:")
    for role, fname in graphs.items():
        gp = path.parent / fname
        if gp.suffix == ".onnx":
            for cmd in gpu_commands(gp, profiles.get(role), precision_of_graph(meta, gp)):
                print(f"  {cmd}")
    return 0 if ok else 1


def run(args: argparse.Namespace) -> int:
    if args.onnx is not None:
        if args.check is None:
            raise EdgehazeError("--onnx names an artifact to check: add --check trt")
        if args.checkpoint is not None:
            raise EdgehazeError("--onnx checks an existing artifact; --checkpoint exports one: pass one of them")
        return print_trt_check(args.onnx)
    if args.checkpoint is None:
        raise EdgehazeError("edgehaze export needs --checkpoint CKPT (or --check trt --onnx NAME.onnx to check an "
                            "existing artifact)")
    import torch

    from edgehaze.export import export_checkpoint
    from edgehaze.export.targets import check_flags, precision_of, resolve_formats

    from edgehaze.model_zoo import shipped_checkpoint

    torch.set_num_threads(min(2, torch.get_num_threads()))
    shipped = shipped_checkpoint(args.checkpoint)
    if shipped is not None:  # never write next to the shipped files
        print(f"edgehaze export: {args.checkpoint} is the shipped checkpoint {shipped}")
        args.out = args.out or str(Path("runs") / args.checkpoint / "export")
        args.checkpoint = str(shipped)
    given = [k for k in _CHECKED if getattr(args, k, None) not in (None, False)]
    precision = precision_of(bool(args.int8), bool(args.fp16))
    check_flags(resolve_formats(args.format, precision), given, precision)
    result = export_checkpoint(
        args.checkpoint,
        out=args.out,
        name=args.name,
        fmt=args.format,
        target=args.target,
        precision=precision,
        dynamic=args.imgsz is None,
        imgsz=args.imgsz,
        channel_order=args.channel_order or "RGB",
        two_graph=bool(args.two_graph),
        opset=args.opset or 17,
        calib=args.calib,
        calib_images=args.calib_images or 32,
        holdout_images=args.holdout_images or 8,
        method=args.method or "qat",
        qat_steps=300 if args.qat_steps is None else args.qat_steps,
        max_psnr_drop=0.2 if args.max_psnr_drop is None else args.max_psnr_drop,
        force=bool(args.force),
        ort_optimize=bool(args.ort_optimize),
        depth_weights=args.depth_weights,
        internal_scale=args.internal_scale,
        workspace=args.workspace or 4.0,
    )
    for role, path in result.files.items():
        print(f"{role:8s} {path}")
    acc = result.sidecar.get("accuracy", {})
    if result.sidecar["precision"] != "fp32":
        print(f"accuracy: PSNR drop {acc.get('psnr_drop')} dB, {result.sidecar['precision']} vs fp32 "
              f"{acc.get('psnr_vs_fp32')} dB on {acc.get('holdout_images')} hold-out image(s)")
    if any(k in result.files for k in ("engine", "torchtrt")):
        print("note: TensorRT outputs are built but not checked against ONNX Runtime here", file=sys.stderr)
    print("next:")
    for cmd in result.next_commands:
        print(f"  {cmd}")
    if args.check == "trt":
        return print_trt_check(result.files["onnx"])
    return 0
