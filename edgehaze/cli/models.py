"""``edgehaze models``: the shipped models (``runtime/models/``), and the one command that regenerates them.

    edgehaze models                                        # names, files, sizes, licences, headline numbers
    edgehaze models --verify                               # check every shipped file against its sha256
    edgehaze models pack --run runs/demo-full --name edgehaze-s   # a finished demo run -> the shipped files
    edgehaze models card edgehaze-s                        # re-render the card from the manifest

``pack`` copies the run's student checkpoint (FP32 safetensors) and its INT8
artifacts (640x480 and, from a real-data run, the 1080p one at internal
scale 16) into ``runtime/models/NAME/``, measures flicker through
``runtime/stream.py``, and writes ``manifest.json`` (sha256, sizes,
precision, input range, recipe) and the model card ``NAME.md`` from the
run's ``report.json``. Commit the result with ``git add runtime/models``.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: "argparse._SubParsersAction") -> None:
    p = subparsers.add_parser(
        "models",
        help="list the shipped models (runtime/models/), verify them, or pack a finished demo run into them",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--verify", action="store_true", help="check every shipped file against the manifest's sha256")
    p.add_argument("--models-dir", default=None, help="another models folder (default: runtime/models)")
    sub = p.add_subparsers(dest="models_command", metavar="{pack,card}")
    pk = sub.add_parser("pack", help="regenerate the shipped files of NAME from a finished `edgehaze demo` run",
                        description="Copy a finished demo run's student into runtime/models/NAME/ and write the "
                                    "manifest and the model card from its report.json.")
    pk.add_argument("--run", required=True, help="run directory of `edgehaze demo` (e.g. runs/demo-full)")
    pk.add_argument("--name", required=True, help="model name (e.g. edgehaze-s)")
    pk.add_argument("--no-default", action="store_true", help="do not make NAME the default model")
    pk.add_argument("--no-measure", action="store_true", help="skip the flicker measurement (runtime/stream.py)")
    pk.add_argument("--commit", default=None, help="the commit the run was made from (default: HEAD when packing)")
    pk.add_argument("--threads", type=int, default=2, help="threads for the flicker measurement")
    pk.add_argument("--models-dir", dest="pack_models_dir", default=None, help=argparse.SUPPRESS)
    cd = sub.add_parser("card", help="re-render NAME.md from manifest.json")
    cd.add_argument("name")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgehaze.errors import EdgehazeError

    folder = Path(args.models_dir) if args.models_dir else None
    if args.models_command == "pack":
        from edgehaze.model_zoo import pack

        pack(args.run, args.name, models_dir=args.pack_models_dir or folder, default=not args.no_default,
             measure=not args.no_measure, threads=args.threads, commit=args.commit)
        print("next: git add runtime/models && git commit  (the files are tracked; sizes in the manifest)")
        return 0
    import edgehaze.runtime as rt

    try:
        if args.models_command == "card":
            from edgehaze.fsutil import atomic_write
            from edgehaze.model_card import render_card

            target = folder or rt.zoo.models_dir()
            entry = rt.zoo.read_manifest(target)["models"].get(args.name)
            if entry is None:
                raise EdgehazeError(f"{args.name}: not in {target / 'manifest.json'} (edgehaze models lists them)")
            text = render_card(args.name, entry)
            atomic_write(target / f"{args.name}.md", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
            print(f"wrote {target / (args.name + '.md')}")
            return 0
        models = rt.list_models(folder)
        if args.verify:
            for m in models:
                paths = rt.zoo.verify_model(m["name"], folder)
                print(f"{m['name']}: {len(paths)} file(s) match the manifest's sha256")
            return 0
    except rt.RuntimeError_ as exc:
        raise EdgehazeError(exc.message) from None
    for m in models:
        print(_describe(m))
    return 0


def _describe(m: dict) -> str:
    """A model's block of lines: name, files and sizes, licence, headline numbers, card."""
    h = m["headline"]
    lines = [f"{m['name']}{' (default)' if m['default'] else ''}: {m['summary']}; {m['bytes'] / 1e6:.2f} MB in all"]
    for key, v in sorted(m["variants"].items(), key=lambda kv: kv[1]["min_side"]):
        when = (f"frames with shorter side >= {v['min_side']}" if v["min_side"] else
                "smaller frames" if len(m["variants"]) > 1 else "all frame sizes")
        lines.append(f"  {m['name']}@{key}: {v['file']} ({v['size'] / 1e3:.0f} kB, {v['precision']}, internal scale "
                     f"{v['internal_scale']}, {when})")
    for key, why in m["missing_variants"].items():
        lines.append(f"  {m['name']}@{key}: not shipped ({why})")
    if m["checkpoint"]:
        lines.append(f"  FP32 checkpoint: {m['checkpoint']}")
    if h.get("psnr_int8") is not None:
        prior = f", dark-channel prior {h['psnr_prior']:.2f}" if h.get("psnr_prior") is not None else ""
        hazy = f", hazy input {h['psnr_hazy']:.2f}" if h.get("psnr_hazy") is not None else ""
        lines.append(f"  {h['psnr_set']}: INT8 PSNR {h['psnr_int8']:.2f} dB{prior}{hazy}")
    if h.get("fade_int8") is not None:
        lines.append(f"  {h['fade_set']}: INT8 FADE {h['fade_int8']:.3f} (lower is less haze), dark-channel prior "
                     f"{h['fade_prior']:.3f}, hazy input {h['fade_hazy']:.3f}")
    fps = [f"{k[4:]} {v:.1f} FPS" for k, v in h.items() if k.startswith("fps_")]
    if fps:
        lines.append("  stream (runtime/stream.py, the run's machine): " + ", ".join(fps))
    lines.append(f"  licence: code {m['licence'].get('code')}; weights {m['licence'].get('weights')}")
    lines.append(f"  card: runtime/models/{m['card']}")
    return "\n".join(lines)
