"""``edgehaze dehaze IMAGES... --out DIR [--checkpoint CKPT_OR_NAME]``.

Without ``--checkpoint`` the shipped default model (``edgehaze models``) dehazes:
its FP32 checkpoint from ``runtime/models/`` (sha256 checked), at the internal
scale its manifest gives the image's size (the 1080p variant's scale for large
photos). ``--checkpoint edgehaze-s`` names a shipped model; a path is your own.

Any size (the model pads and crops itself), PNG/JPG/BMP/TIFF, RGBA (alpha
dropped), grayscale and 16-bit inputs (read as float RGB in [0, 1]). A file
that cannot be read is reported by name and skipped; the rest are still
processed and the command exits 1 at the end if anything failed.

Images above ``--max-pixels`` (default 4096x4096) are dehazed in
overlapping tiles of ``--tile`` pixels (edgehaze/tiling.py: aligned tiles,
overlaps cropped; depth models get whole-image depth features), so memory
stays bounded; ``--tile 0`` refuses such images instead, naming the limit.
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
    p.add_argument("--checkpoint", help="edgehaze checkpoint (.safetensors) or a shipped model name (edgehaze-s); "
                                        "default: the shipped default model")
    p.add_argument("--method", choices=["model", "dcp"], default="model",
                   help="model (the checkpoint) or dcp: the dark-channel prior (He et al.), the baseline to beat")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--depth-weights", default=None, help="teacher weights path, if it moved since training")
    p.add_argument("--ext", default=".png", choices=[".png", ".jpg", ".bmp", ".tif"], help="output format")
    p.add_argument("--bits", type=int, default=8, choices=[8, 16], help="PNG/TIFF output bit depth")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip them)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="images with more pixels are processed in tiles (default 16777216 = 4096x4096)")
    p.add_argument("--tile", type=int, default=None, metavar="PX",
                   help="tile side for images over --max-pixels (default 1024; 0 refuses such images)")
    p.add_argument("--tile-overlap", type=int, default=None, metavar="PX",
                   help="context kept around each tile and cropped away (default 64)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from edgehaze.checkpoint import load_dehazer
    from edgehaze.errors import EdgehazeError
    from edgehaze.imageio import list_images, read_image, to_image, to_tensor, write_image
    from edgehaze.tiling import (DEFAULT_MAX_PIXELS, DEFAULT_OVERLAP, DEFAULT_TILE, dehaze_tiled, plan_tiles,
                                 tile_alignment)

    max_pixels = DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels
    tile = DEFAULT_TILE if args.tile is None else args.tile
    overlap = DEFAULT_OVERLAP if args.tile_overlap is None else args.tile_overlap
    if max_pixels < 1:
        raise EdgehazeError(f"--max-pixels must be >= 1, got {max_pixels}")
    if tile < 0 or (0 < tile < 2 * overlap + 32) or overlap < 0:
        raise EdgehazeError(
            f"--tile {tile} with --tile-overlap {overlap}: the tile must be 0 (no tiling) or at least "
            f"2*overlap+32 = {2 * overlap + 32} px, and the overlap >= 0"
        )
    if args.ext not in (".png", ".tif") and args.bits == 16:
        raise EdgehazeError(f"--bits 16 needs --ext .png or .tif, not {args.ext}")
    if args.threads:
        torch.set_num_threads(args.threads)
    files = list_images(args.images)
    if not files:
        raise EdgehazeError(f"no images found in {' '.join(args.images)} (supported: png, jpg, bmp, tif, webp)")
    if args.method == "dcp":
        from edgehaze.dcp import dcp_runner

        model, tile = None, 0  # the prior is cheap per pixel and global (airlight): whole images, no tiles
        shipped = None
        max_pixels = max(max_pixels, 1 << 40)
        run_dcp = dcp_runner()
    else:
        from edgehaze.model_zoo import shipped_checkpoint, shipped_label, shipped_scales

        shipped = shipped_checkpoint(args.checkpoint)  # None: a path of your own
        model, meta = load_dehazer(shipped or args.checkpoint, depth_weights=args.depth_weights)
        if shipped is not None:
            scale_for = shipped_scales(args.checkpoint)
            print(f"edgehaze dehaze: {shipped_label(args.checkpoint)}")
    scaled: dict = {}
    if model is not None and shipped is not None:
        from edgehaze.export.fused import internal_scale

        def model_for(h: int, w: int):
            """The shipped model at the internal scale its manifest gives this image size (copies cached)."""
            s = scale_for(h, w)
            if s == model.backbone.scale:
                return model
            if s not in scaled:
                scaled[s] = internal_scale(model, s).eval()
            return scaled[s]
    else:
        def model_for(h: int, w: int):
            return model
    if tile:
        try:  # the overlap is rounded up to the model's alignment: check the tile still has a core
            plan_tiles(1, 1, tile, overlap, tile_alignment(model))
        except ValueError as exc:
            raise EdgehazeError(f"--tile {tile} / --tile-overlap {overlap}: {exc}") from None
    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file of that name, no permission, read-only disk
        raise EdgehazeError(f"--out {out_dir}: cannot create the output folder ({exc.strerror or exc})") from None

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
        h, w = image.shape[:2]
        if h * w > max_pixels:
            if tile == 0:
                reason = (f"{path}: {w}x{h} = {h * w / 1e6:.1f} MP is over --max-pixels {max_pixels}; "
                          f"raise --max-pixels or allow tiling with --tile {DEFAULT_TILE}")
                failed.append((path, reason))
                tqdm.write(f"skipped: {reason}", file=sys.stderr)
                continue
            result = dehaze_tiled(model_for(h, w), image, tile=tile, overlap=overlap, bits=args.bits)
            del image
        elif model is None:
            result = run_dcp(image)
        else:
            with torch.inference_mode():
                result = to_image(model_for(h, w)(to_tensor(image)))
        try:
            write_image(target, result, bits=args.bits)
        except OSError as exc:  # full disk, read-only folder, quota: the earlier file is intact (atomic write)
            raise EdgehazeError(
                f"{target}: cannot write ({exc.strerror or exc}); free some space or pass another --out "
                f"({written} image(s) written before this one)"
            ) from None
        written += 1

    print(f"dehazed {written} image(s) into {out_dir}" + (f", {skipped} already there (use --overwrite)" if skipped else ""))
    if failed:
        print(f"{len(failed)} file(s) could not be dehazed:", file=sys.stderr)
        for path, reason in failed:
            print(f"  {reason}", file=sys.stderr)
        return 1
    return 0
