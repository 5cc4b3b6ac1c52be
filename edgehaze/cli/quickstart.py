"""``edgehaze quickstart``: the shipped model dehazes a hazy video through runtime/stream.py (``./dev quickstart``).

    edgehaze quickstart                        # the real fog drive with EDGEHAZE_SHARED set, else a procedural video
    edgehaze quickstart --input my_video.mp4   # your own video, image folder or glob

Writes OUT/dehazed-side-by-side.mp4 (before | after) and OUT/contact_sheet.png,
prints the stream's FPS and the next commands. No training: the training
chain is ``edgehaze demo`` (``./dev demo``).
"""
from __future__ import annotations

import argparse


def add_parser(subparsers: "argparse._SubParsersAction") -> None:
    p = subparsers.add_parser(
        "quickstart",
        help="dehaze a hazy video with the shipped model (runtime/stream.py): FPS, before|after video, contact sheet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--input", default=None, help="a video, image folder or glob (default: the real fog drive under "
                                                 "$EDGEHAZE_SHARED, else a procedurally rendered hazy video)")
    p.add_argument("--out", default="runs/quickstart", help="output folder (default runs/quickstart)")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime threads (default 2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgehaze.quickstart import run_quickstart

    run_quickstart(out=args.out, given=args.input, threads=args.threads)
    return 0
