"""``edgehaze demo``: the whole chain on this CPU, from nothing, in minutes.

    edgehaze demo                       # runs/demo: data, teacher, stage 1+2, student, INT8, stream, report
    edgehaze demo --quick --out /tmp/d  # a smaller run (~1-2 minutes), e.g. to check an install
    edgehaze demo --force distill       # redo distillation and everything after it
    edgehaze demo --stages data teacher # only these stages
    edgehaze demo --data DIR            # on real data: DIR laid out like the shared data/ folder
    edgehaze demo --data DIR --full     # the real-data recipe of the shipped student (~45 min, runs/demo-full)
    edgehaze demo --procedural          # procedural scenes even when EDGEHAZE_SHARED is set

Data: with --data DIR (any of sots_indoor_train/ pairs, frida2/, cityscapes4/
and clear_outdoor/ photos, which get a geometric depth prior; optional
sots_indoor/, fohis_depth/, real_hazy/ + metrics/ to test on, and
video/dvd_gopro_fog_frames/ to stream), or $EDGEHAZE_SHARED/data when that
variable is set and the folder exists, the demo trains on real RGB-D
(edge-s at scale 8 with the guided apply and global context) and reports the real test sets
against the dark-channel prior; otherwise it generates procedural scenes.

Stages: data, teacher, rgb, fused, distill, export, stream, report. A stage
whose outputs exist is skipped; each writes its log to OUT/logs/STAGE.log.
The report is OUT/report.md (+ report.json, report/contact_sheet.png).
"""
from __future__ import annotations

import argparse


def add_parser(subparsers: "argparse._SubParsersAction") -> None:
    from edgehaze.demo import STAGE_NAMES  # light: the module imports torch lazily

    p = subparsers.add_parser(
        "demo",
        help="the whole chain on this CPU: procedural data, depth teacher, training, distillation, INT8, stream, report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default=None, help="run directory (default runs/demo; runs/demo-full with --full)")
    p.add_argument("--force", nargs="?", const="all", default=None, metavar="STAGE",
                   help="redo every stage, or STAGE and the ones after it")
    p.add_argument("--stages", nargs="+", default=None, choices=STAGE_NAMES, metavar="STAGE",
                   help=f"run only these stages ({', '.join(STAGE_NAMES)})")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch and ONNX Runtime (default 2; on a busy machine 1 can be faster)")
    p.add_argument("--quick", action="store_true", help="a much smaller run (for tests and install checks)")
    p.add_argument("--full", action="store_true",
                   help="real data only: the training recipe of the shipped student (longer stages, about 30 "
                        "minutes on 2 cores; default --out runs/demo-full)")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="real data folder laid out like the shared data/ (default: $EDGEHAZE_SHARED/data if it exists)")
    p.add_argument("--procedural", action="store_true", help="the procedural demo even when EDGEHAZE_SHARED is set")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (stage lines only)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgehaze.demo import run_demo
    from edgehaze.demo_real import resolve_data_dir

    data = resolve_data_dir(args.data, args.procedural)
    print(f"edgehaze demo: real data from {data}" if data is not None else
          "edgehaze demo: procedural scenes (pass --data DIR or set EDGEHAZE_SHARED for real data)")
    out = args.out or ("runs/demo-full" if args.full else "runs/demo")
    state = run_demo(out=out, quick=args.quick, force=args.force, stages=args.stages, threads=args.threads,
                     progress=not args.no_progress, data=data, full=args.full)
    total = sum((rec.get("wall_s") or 0.0) for rec in state["stages"].values())
    print(f"edgehaze demo: {len(state['stages'])} stage(s) done, {total:.0f} s of work in all "
          f"({state.get('last_invocation_s', 0.0):.0f} s this time)")
    return 0
