"""Real-data quality benchmark: hazy input, the dark-channel prior and your models, same images, same run.

    python benchmarks/quality.py --model fp32=runs/x/student-fp32.onnx --model int8=runs/x/student-int8.onnx \
        [--data $EDGEHAZE_SHARED/data] [--sets sots-indoor frida2 real-photos] --out runs/quality

Writes ``OUT/report.md`` (the table: PSNR, SSIM, halo on SOTS-indoor test
scenes and the FRIDA2 test split per fog type; FADE and NIQE on the real
photos), ``OUT/report.json`` and ``OUT/sheet-<set>.png`` (hazy | prior |
models | GT). Sets and metrics: :mod:`edgehaze.quality`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:  # type: ignore[no-untyped-def]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = os.environ.get("EDGEHAZE_SHARED")
    p.add_argument("--data", type=Path, default=Path(shared) / "data" if shared else None,
                   help="the shared data folder (default: $EDGEHAZE_SHARED/data)")
    p.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                   help="a model to score (.safetensors checkpoint or exported .onnx); repeatable")
    p.add_argument("--sets", nargs="*", default=None, help="set name prefixes (default: all found)")
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="test sets (report; never choose on them) or their validation counterparts (choose here)")
    p.add_argument("--max-side", type=int, default=1024, help="shrink real photos to this longer side")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/quality"))
    args = p.parse_args(argv)

    from edgehaze.data.runners import make_runner
    from edgehaze.errors import EdgehazeError
    from edgehaze.fsutil import atomic_write_text
    from edgehaze.imageio import write_image
    from edgehaze.data.evaluation import contact_sheet
    from edgehaze.quality import baseline_methods, benchmark_sets, markdown_table, score_set

    if args.data is None:
        raise SystemExit("give --data DIR (the shared data folder) or set EDGEHAZE_SHARED")
    methods = baseline_methods()
    for spec in args.model:
        name, sep, path = spec.partition("=")
        if not sep:
            raise SystemExit(f"--model {spec}: write NAME=PATH")
        try:
            methods[name] = make_runner(path, threads=args.threads)
        except EdgehazeError as exc:
            raise SystemExit(f"--model {spec}: {exc}")
    stats = args.data / "metrics"
    results, load = {}, os.getloadavg()[0]
    t0 = time.time()
    for evalset in benchmark_sets(args.data, args.sets, split=args.split):
        scores, sheet = score_set(methods, evalset, stats_dir=stats if stats.is_dir() else None,
                                  max_side=args.max_side if not evalset.has_gt else 0, keep_outputs=4)
        results[evalset.name] = scores
        write_image(args.out / f"sheet-{evalset.name}.png", contact_sheet(sheet))
        print("\n".join(markdown_table({evalset.name: scores}).splitlines()[2:]))  # this set's rows
    table = markdown_table(results)
    header = (f"# Quality on real data ({args.split} sets)\n\nMethods: {', '.join(methods)}; data {args.data}; "
              f"load {load:.2f} -> {os.getloadavg()[0]:.2f}; {time.time() - t0:.0f} s. Halo: grey levels of "
              "local error within 6 px of strong edges (edgehaze.metrics.halo), lower is better.\n\n")
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "report.md", header + table + "\n")
    atomic_write_text(args.out / "report.json", json.dumps(
        {s: {m: asdict(v) for m, v in per.items()} for s, per in results.items()}, indent=2))
    print(f"wrote {args.out}/report.md, report.json, sheet-*.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
