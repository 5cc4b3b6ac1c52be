"""``edgehaze eval``: score a trained model on a dataset.

    edgehaze eval --checkpoint runs/x/best.safetensors --data DATA [--out DIR]
    edgehaze eval --model edgehaze-s --data DATA    # a shipped model as a device runs it (INT8, torch-free runtime)

``--model`` takes a shipped model name (``edgehaze models``; the variant
follows each image's size) or an exported artifact, and runs it through the
torch-free runtime; ``--checkpoint`` also takes a shipped name (its FP32
checkpoint, in torch).

DATA is any supported layout (``--layout auto`` detects RESIDE, DehazeFormer,
RW2AH, or a plain folder of real hazy photos), or ``--hazy DIR [--clear DIR]``.
Writes ``metrics.csv`` (one row per image), ``summary.json`` (means, count,
skipped files and metrics) and ``contact_sheet.png`` (hazy | output | GT,
plus the depth teacher's map when the model has one) into ``--out``.

NIQE and FADE need the official statistics files (NIQE:
``modelparameters.mat`` from the LIVE NIQE release; FADE: the two
``natural_*_image_features_ps8.mat`` files from the LIVE FADE release):
pass ``--niqe-params FILE`` / ``--fade-stats DIR``, or ``--shared-stats DIR``
for a folder holding ``niqe/`` and ``fade/``. Without them they are skipped.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: "argparse._SubParsersAction") -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a model on a dataset (PSNR/SSIM/PSNR-Y, NIQE/FADE, contact sheet)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", type=Path, help="model file (.safetensors checkpoint or exported .onnx), or a "
                                                  "shipped model name (its FP32 checkpoint)")
    p.add_argument("--model", default=None, help="a shipped model name (edgehaze-s, edgehaze-s@1080) or an artifact, "
                                                 "run through the torch-free runtime (what a device runs)")
    p.add_argument("--method", choices=["model", "dcp"], default="model",
                   help="model (--checkpoint) or dcp: evaluate the dark-channel prior itself")
    p.add_argument("--no-dcp", action="store_true",
                   help="skip the dark-channel prior baseline columns (default: scored on the same images)")
    p.add_argument("--data", type=Path, help="dataset folder")
    p.add_argument("--layout", default="auto", help="auto, reside, dehazeformer, rw2ah, hazy-only")
    p.add_argument("--split", default=None, help="train/test for layouts with splits (default: test)")
    p.add_argument("--hazy", type=Path, help="folder of hazy images (instead of --data)")
    p.add_argument("--clear", type=Path, help="folder of ground-truth images for --hazy")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: eval/<checkpoint>_<data>)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable/mismatched pairs and list them")
    p.add_argument("--max-images", type=int, default=None, metavar="N", help="evaluate the first N pairs only")
    p.add_argument("--niqe-params", type=Path, help="official NIQE modelparameters.mat (or .npz)")
    p.add_argument("--fade-stats", type=Path, help="folder with the official FADE *_ps8.mat files")
    p.add_argument("--shared-stats", type=Path, metavar="DIR", help="folder with niqe/ and fade/ statistics")
    p.add_argument("--depth-weights", help="teacher weights, if the checkpoint's recorded path moved")
    p.add_argument("--sheet-rows", type=int, default=8, help="images on the contact sheet")
    p.add_argument("--save-images", action="store_true", help="also write each output to OUT/images/")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgehaze.data.datasets import PairedDataset
    from edgehaze.data.evaluation import NoReferenceStats, evaluate
    from edgehaze.data.layouts import find_pairs
    from edgehaze.data.runners import make_runner
    from edgehaze.errors import EdgehazeError

    if (args.data is None) == (args.hazy is None):
        raise EdgehazeError("give the dataset as --data DIR, or as --hazy DIR [--clear DIR]")
    if args.clear is not None and args.hazy is None:
        raise EdgehazeError("--clear needs --hazy")
    if args.max_images is not None and args.max_images < 1:
        raise EdgehazeError(f"--max-images {args.max_images}: must be at least 1")

    stats = NoReferenceStats()
    if args.shared_stats is not None:
        stats = NoReferenceStats.from_folder(args.shared_stats)
    if args.niqe_params is not None:
        if not args.niqe_params.is_file():
            raise EdgehazeError(f"--niqe-params {args.niqe_params}: no such file")
        stats.niqe_params = args.niqe_params
    if args.fade_stats is not None:
        if not args.fade_stats.is_dir():
            raise EdgehazeError(f"--fade-stats {args.fade_stats}: no such folder")
        stats.fade_stats = args.fade_stats

    pairs = find_pairs(args.data, layout=args.layout, split=args.split, hazy_dir=args.hazy, clear_dir=args.clear)
    if args.max_images is not None:
        pairs.pairs = pairs.pairs[: args.max_images]
    dataset = PairedDataset(pairs, skip_bad=args.skip_bad)
    from edgehaze.dcp import dcp_runner
    from edgehaze.data.runners import Runner

    if args.method == "dcp":
        runner = Runner(run=dcp_runner(), info={"kind": "dark-channel prior", "params": "patch 15, omega 0.95, "
                                                "t0 0.1, guided filter r 60 eps 1e-4"})
        label = "dcp"
    elif args.model is not None:
        if args.checkpoint is not None:
            raise EdgehazeError("--model and --checkpoint exclude each other: pass one")
        import edgehaze.runtime as rt
        from edgehaze.demo import _runtime_runner

        try:
            runner = _runtime_runner(args.model, args.threads or 2)
        except rt.RuntimeError_ as exc:  # one line naming the file, or the shipped names
            raise EdgehazeError(f"--model: {exc.message}") from None
        runner.info["model"] = args.model
        label = Path(args.model).stem
    elif args.checkpoint is None:
        raise EdgehazeError("--checkpoint or --model is required (or --method dcp for the dark-channel prior alone)")
    else:
        from edgehaze.model_zoo import shipped_checkpoint

        shipped = shipped_checkpoint(str(args.checkpoint))
        runner = make_runner(shipped or args.checkpoint, depth_weights=args.depth_weights, threads=args.threads)
        label = args.checkpoint.stem
    baseline = None if (args.no_dcp or args.method == "dcp") else dcp_runner()

    data_name = (args.data or args.hazy).resolve().name
    out = args.out or Path("eval") / f"{label}_{data_name}"
    summary = evaluate(
        runner, dataset, out, stats=stats, sheet_rows=args.sheet_rows, save_outputs=args.save_images,
        extra_summary={"checkpoint": str(args.checkpoint), "data": str(args.data or args.hazy),
                       "layout": pairs.layout,
                       # a shipped name or artifact replaces the model description; a checkpoint keeps its own
                       **({"model": args.model} if args.model is not None else {})},
        baseline=baseline,
    )
    shown = ", ".join(f"{k} {v:.4f}" for k, v in summary["metrics"].items() if v is not None)
    print(f"{summary['count']} images ({pairs.layout}): {shown}")
    if summary.get("baseline"):
        base = ", ".join(f"{k} {v:.4f}" for k, v in summary["baseline"]["metrics"].items() if v is not None)
        print(f"  dark-channel prior on the same images: {base}")
    for name, why in summary["metrics_skipped"].items():
        print(f"  {name} skipped: {why}")
    if summary["skipped"]:
        print(f"  {len(summary['skipped'])} pairs skipped (see summary.json)")
    print(f"wrote {out}/metrics.csv, summary.json, contact_sheet.png")
    return 0
