"""``edgehaze synth``: build paired training/test data.

Two sources:

* your own clear photos + depth (files, or a depth teacher):
  ``edgehaze synth --clear DIR --depth DIR --out DATA`` or
  ``edgehaze synth --clear DIR --depth-model dav2-s --depth-weights W.pth --out DATA``
* procedural RGB-D scenes with exact depth (quickstart, tests):
  ``edgehaze synth --procedural 200 --out DATA``
* real RGB-D folders, hazed many times with physically varied haze
  (:mod:`edgehaze.data.rgbd_synth`): FRIDA2 (``clear/`` + ``depth_cm/``),
  generic ``clear/`` + ``depth/``, or hazy/clear pairs whose transmission
  gives the depth back (RESIDE: ``hazy/`` + ``gt/``):
  ``edgehaze synth --rgbd sots_indoor_train --rgbd frida2 --variants 8 --keep-pairs --out DATA``
  writes ``DATA/{train,val,test}/`` split by scene (FRIDA2: every 5th scene
  is test; every 7th remaining scene is validation).

Either way the output is DehazeFormer's layout, ``DATA/{train,test}/{GT,hazy}/``
with a ``meta/NAME.json`` per image (beta, airlight, depth source), which
``edgehaze train`` and ``edgehaze eval`` read directly.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: "argparse._SubParsersAction") -> None:
    p = subparsers.add_parser(
        "synth",
        help="make hazy/clear pairs (from clear photos + depth, or procedural scenes)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("source (one of)")
    src.add_argument("--clear", type=Path, help="folder (or glob) of clear images")
    src.add_argument("--procedural", type=int, metavar="N", help="generate N procedural RGB-D scenes")
    src.add_argument("--rgbd", type=Path, action="append", metavar="DIR",
                     help="real RGB-D folder (repeatable): FRIDA2, clear/+depth/, or hazy/+gt/ pairs")
    rg = p.add_argument_group("--rgbd options")
    rg.add_argument("--rgbd-layout", choices=["auto", "pairs", "frida2", "generic", "cityscapes", "photos"],
                    default="auto", help="auto detects; photos = clear photos without depth (a depth proxy)")
    rg.add_argument("--depth-proxy", choices=["geometric", "field"], default="geometric",
                    help="depth for photos without depth: the geometric prior (sky far, ground near) or a smooth "
                         "random field (edgehaze.data.outdoor)")
    rg.add_argument("--clear-frames", type=float, default=None,
                    help="probability that a rendering is the clear image itself (identity pair; default 0.1)")
    rg.add_argument("--blur", type=float, default=None, help="probability of optics blur (default 0.2)")
    rg.add_argument("--variants", type=int, nargs="+", default=[8],
                    help="hazy renderings per scene (default 8); one count, or one per --rgbd in order "
                         "(e.g. --variants 12 4 to weight the first source up)")
    rg.add_argument("--test-variants", type=int, default=None, help="renderings per test scene (default: --variants)")
    rg.add_argument("--test-every", type=int, default=None,
                    help="every K-th scene is test (default: 5 for FRIDA2, 0 = none otherwise)")
    rg.add_argument("--val-every", type=int, default=7, help="every K-th remaining scene is validation (default 7)")
    rg.add_argument("--keep-pairs", action="store_true",
                    help="also copy the source's own hazy images (pairs, FRIDA2 fog types) of train/val scenes")
    rg.add_argument("--beta-rel", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                    help="beta per unit of relative depth (default 0.3 2.2)")
    rg.add_argument("--visibility-m", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                    help="metric scenes: visibility range in metres, beta = 3/V, log-uniform (default 50 20000)")
    rg.add_argument("--nonhomogeneous", type=float, default=None, help="probability of patchy fog (default 0.5)")
    rg.add_argument("--noise", type=float, default=None, help="probability of sensor noise (default 0.4)")
    rg.add_argument("--jpeg", type=float, default=None, help="probability of JPEG compression (default 0.3)")
    rg.add_argument("--exposure", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                    help="exposure gain range on scene and airlight (default 0.8 1.1)")
    dep = p.add_argument_group("depth for --clear (one of)")
    dep.add_argument("--depth", type=Path, metavar="DIR", help="depth maps, same stem as each image (.npy, 16-bit .png, 8-bit)")
    dep.add_argument("--depth-model", metavar="NAME", help="depth teacher (e.g. dav2-s, dav2-l; 'tiny' for tests)")
    dep.add_argument("--depth-weights", metavar="PATH", help="local weights of --depth-model (nothing is downloaded)")
    dep.add_argument("--depth-input-size", type=int, default=None, metavar="PX",
                     help="shorter side the teacher runs at (its default: 518; smaller is faster, coarser)")
    dep.add_argument("--depth-scale", type=float, default=None,
                     help="multiply integer depth files by this (e.g. 0.001 for millimetres)")
    dep.add_argument("--depth-kind", choices=["depth", "inverse"], default="depth",
                     help="depth files hold depth (larger = farther) or inverse depth/disparity")
    dep.add_argument("--depth-mode", choices=["normalised", "metric"], default="normalised",
                     help="normalised: depth / max (beta is per scene depth, default); metric: beta is per metre")
    p.add_argument("--out", type=Path, required=True, help="output dataset folder")
    p.add_argument("--split", choices=["train", "test"], default="train", help="split to write for --clear")
    p.add_argument("--beta", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                   help="scattering coefficient range (default 0.6 1.8 for --clear, 1.0 2.5 procedural)")
    p.add_argument("--airlight", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                   help="airlight range in [0, 1] (default 0.7 1.0)")
    p.add_argument("--tint", type=float, default=None,
                   help="per-channel airlight jitter (default 0 = grey haze; --rgbd: 0.05)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=(128, 128), help="procedural image size")
    p.add_argument("--test-fraction", type=float, default=0.2, help="procedural: share of images in test/")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images / missing depth and list them")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgehaze.data.synthesis import DEFAULT_AIRLIGHT, DEFAULT_BETA
    from edgehaze.errors import EdgehazeError

    if sum(x is not None for x in (args.clear, args.procedural, args.rgbd)) != 1:
        raise EdgehazeError("give exactly one source: --clear DIR, --procedural N or --rgbd DIR")
    if args.rgbd:
        return _run_rgbd(args)
    airlight = tuple(args.airlight) if args.airlight else DEFAULT_AIRLIGHT
    args.tint = args.tint or 0.0
    if args.procedural is not None:
        from edgehaze.data.procedural import PROCEDURAL_BETA, make_procedural_dataset

        if args.procedural < 1:
            raise EdgehazeError(f"--procedural {args.procedural}: need at least 1 image")
        if not 0.0 <= args.test_fraction <= 1.0:
            raise EdgehazeError(f"--test-fraction {args.test_fraction}: must be in [0, 1]")
        if min(args.size) < 8:
            raise EdgehazeError(f"--size {args.size[0]} {args.size[1]}: use at least 8 x 8")
        n_test = int(round(args.procedural * args.test_fraction))
        if args.test_fraction > 0 and n_test == 0:
            n_test = 1
        n_train = args.procedural - n_test
        make_procedural_dataset(
            args.out, n_train, n_test, size=tuple(args.size), seed=args.seed,
            beta=tuple(args.beta) if args.beta else PROCEDURAL_BETA, airlight=airlight,
            tint=args.tint, progress=True,
        )
        print(f"wrote {n_train} train + {n_test} test procedural pairs to {args.out}")
        print(f"next: edgehaze eval --checkpoint CKPT --data {args.out}   (or train on {args.out}/train)")
        return 0

    from edgehaze.data.synthesis import make_hazy_dataset
    from edgehaze.imageio import list_images

    if (args.depth is None) == (args.depth_model is None):
        raise EdgehazeError("--clear needs exactly one depth source: --depth DIR or --depth-model NAME")
    files = list_images(args.clear)
    if not files:
        raise EdgehazeError(f"--clear {args.clear}: no images found")
    provider = None
    if args.depth_model is not None:
        from edgehaze.models.dehazer import build_depth

        try:
            extra = {"input_size": args.depth_input_size} if args.depth_input_size else {}
            provider = build_depth(args.depth_model, weights=args.depth_weights, **extra)
        except KeyError as exc:
            raise EdgehazeError(f"--depth-model: {exc.args[0]}") from None
        provider.eval()
    elif not args.depth.is_dir():
        raise EdgehazeError(f"--depth {args.depth}: no such folder")
    result = make_hazy_dataset(
        files, args.out, depth_dir=args.depth, depth_provider=provider,
        depth_name=args.depth_model or "", split=args.split, seed=args.seed,
        beta=tuple(args.beta) if args.beta else DEFAULT_BETA, airlight=airlight, tint=args.tint,
        depth_scale=args.depth_scale, depth_kind=args.depth_kind, depth_mode=args.depth_mode,
        skip_bad=args.skip_bad,
    )
    print(f"wrote {result['written']} pairs to {args.out / args.split}")
    for item in result["skipped"]:
        print(f"skipped {item['name']}: {item['reason']}")
    return 0 if result["written"] else 2


def _run_rgbd(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from edgehaze.data.rgbd_synth import HazeRecipe, load_source, make_rgbd_dataset

    recipe = HazeRecipe()
    overrides = {"beta_rel": args.beta_rel, "visibility_m": args.visibility_m, "airlight": args.airlight,
                 "tint": args.tint, "nonhomogeneous": args.nonhomogeneous, "noise": args.noise,
                 "jpeg": args.jpeg, "exposure": args.exposure, "clear": args.clear_frames, "blur": args.blur}
    recipe = replace(recipe, **{k: (tuple(v) if isinstance(v, list) else v)
                                for k, v in overrides.items() if v is not None})
    sources = []
    for root in args.rgbd:
        src = load_source(root, layout=args.rgbd_layout, test_every=args.test_every,
                          depth_scale=args.depth_scale, depth_kind=args.depth_kind, depth_proxy=args.depth_proxy)
        print(f"{root}: {len(src.scenes)} scenes ({src.layout}; test every {src.test_every or 'none'})")
        sources.append(src)
    counts = make_rgbd_dataset(sources, args.out, variants=args.variants, recipe=recipe, seed=args.seed,
                               val_every=args.val_every, keep_pairs=args.keep_pairs,
                               test_variants=args.test_variants)
    print(f"wrote {counts['train']} train, {counts['val']} val, {counts['test']} test pairs to {args.out}")
    print(f"next: edgehaze train --config configs/real_edge-s.yaml data.root={args.out}")
    return 0
