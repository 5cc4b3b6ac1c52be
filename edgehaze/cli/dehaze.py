"""``edgehaze dehaze IMAGES... --checkpoint CKPT --out DIR``.

Any size (the model pads and crops itself), PNG/JPG/BMP/TIFF, RGBA (alpha
dropped), grayscale and 16-bit inputs (read as float RGB in [0, 1]). A file
that cannot be read is reported by name and skipped; the rest are still
processed and the command exits 1 at the end if anything failed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser(
        "dehaze",
        help="dehaze images with a trained checkpoint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--checkpoint", required=True, help="edgehaze checkpoint (.safetensors)")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--depth-weights", default=None, help="teacher weights path, if it moved since training")
    p.add_argument("--ext", default=".png", choices=[".png", ".jpg", ".bmp", ".tif"], help="output format")
    p.add_argument("--bits", type=int, default=8, choices=[8, 16], help="PNG/TIFF output bit depth")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip them)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from edgehaze.checkpoint import load_dehazer
    from edgehaze.errors import EdgehazeError
    from edgehaze.imageio import list_images, read_image, to_image, to_tensor, write_image

    if args.threads:
        torch.set_num_threads(args.threads)
    files = list_images(args.images)
    if not files:
        raise EdgehazeError(f"no images found in {' '.join(args.images)} (supported: png, jpg, bmp, tif, webp)")
    model, meta = load_dehazer(args.checkpoint, depth_weights=args.depth_weights)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    failed: list[tuple[Path, str]] = []
    written = skipped = 0
    names_seen: set[str] = set()
    for path in tqdm(files, desc="dehaze", unit="img", disable=None):
        stem = path.stem
        if stem in names_seen:  # a.png and a.jpg in the inputs: keep both
            stem = f"{stem}_{path.suffix.lstrip('.')}"
        names_seen.add(stem)
        target = out_dir / f"{stem}{args.ext}"
        if target.exists() and not args.overwrite:
            skipped += 1
            continue
        try:
            image = read_image(path)
        except EdgehazeError as exc:
            failed.append((path, str(exc)))
            tqdm.write(f"skipped: {exc}", file=sys.stderr)
            continue
        with torch.inference_mode():
            restored = model(to_tensor(image))
        write_image(target, to_image(restored), bits=args.bits)
        written += 1

    print(f"dehazed {written} image(s) into {out_dir}" + (f", {skipped} already there (use --overwrite)" if skipped else ""))
    if failed:
        print(f"{len(failed)} file(s) could not be read:", file=sys.stderr)
        for path, reason in failed:
            print(f"  {reason}", file=sys.stderr)
        return 1
    return 0
