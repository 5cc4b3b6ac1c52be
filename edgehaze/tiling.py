"""Dehaze images larger than memory allows, one overlapping tile at a time.

The image is cut into a grid of *cores* that partition it; each tile is its
core grown by ``overlap`` pixels on every side (clipped at the image border),
the model runs on the tile, and only the core of the result is kept
("crop the overlaps"). Each output pixel therefore comes from exactly one
tile and the output can be written straight into a preallocated array of
the final storage type (no float accumulator as large as the image).

Why the seams vanish:

* every tile starts at a multiple of ``align`` (:func:`tile_alignment`): the
  edge backbone average-pools by ``scale`` and downsamples twice more, and
  DehazeFormer pads to 4 and attends in 8x8 windows at strides 1, 2 and 4,
  so an aligned tile sees the same pooling cells and windows as the whole
  image does;
* the ``overlap`` margin keeps each core away from the tile border, where
  zero/reflect padding differs from the real neighbours; the edge backbone's
  correction maps are smooth (bilinearly upsampled from 1/``scale``), so a
  margin of a few pooling cells is enough.

Measured (random-initialised models, noisy gradient images,
tests/robustness/test_properties.py): edge-xs, tile 128 / overlap 32, max
|tiled - untiled| 9e-4 on a 192x256 image (below one 8-bit level) and 4.8e-3
(mean 6e-4) on 200x270, where the model's own bilinear upsampling of its
maps is not an exact x4 and the right/bottom border shifts slightly;
dehazeformer-t, tile 256 / overlap 64 on 300x420: max 3.4e-2, mean 3.5e-3
(its receptive field is far larger: use a larger ``overlap``, e.g. 128).

A depth model sees a whole scene: the depth of a tile is not the crop of the
whole image's depth (relative depth is renormalised per input). So the depth
features are computed ONCE on the whole image, downscaled to at most
``depth_side`` pixels on its long side, and each tile gets its region of
those features resampled (:func:`crop_features`) through
``model(tile, depth_feats=...)``. Tiled and untiled outputs then still differ
where the depth model's input resolution differs (the untiled run feeds the
full image), so the tolerance with a depth model is looser than without one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

#: images above this many pixels are tiled by default (4096 x 4096)
DEFAULT_MAX_PIXELS = 4096 * 4096
DEFAULT_TILE = 1024
DEFAULT_OVERLAP = 64


@dataclass(frozen=True)
class Tile:
    """A tile (``y0:y1, x0:x1`` of the image) and the core it contributes (image coordinates)."""

    y0: int
    y1: int
    x0: int
    x1: int
    cy0: int
    cy1: int
    cx0: int
    cx1: int

    def core_in_tile(self) -> Tuple[slice, slice]:
        return slice(self.cy0 - self.y0, self.cy1 - self.y0), slice(self.cx0 - self.x0, self.cx1 - self.x0)


def tile_alignment(model: object) -> int:
    """Pixel multiple tile origins must sit on so the model's grids coincide (see module doc)."""
    backbone = getattr(model, "backbone", model)
    scale = getattr(backbone, "scale", None)
    align = 32  # DehazeFormer: 8x8 windows at stride 4
    if isinstance(scale, int) and scale > 0:
        align = math.lcm(align, scale * 4)  # pool by scale, then two stride-2 stages
    return align


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def plan_tiles(height: int, width: int, tile: int, overlap: int, align: int = 32) -> List[Tile]:
    """Aligned tiles of at most ``tile`` px a side whose cores partition ``height x width``."""
    if height < 1 or width < 1:
        raise ValueError(f"empty image {height}x{width}")
    overlap = _round_up(max(int(overlap), 0), align)
    core = tile - 2 * overlap
    core = (core // align) * align
    if core < align:
        raise ValueError(
            f"tile {tile} px is too small for overlap {overlap} px at alignment {align}: "
            f"use a tile of at least {2 * overlap + align} px"
        )
    tiles = []
    for cy0 in range(0, height, core):
        cy1 = min(cy0 + core, height)
        for cx0 in range(0, width, core):
            cx1 = min(cx0 + core, width)
            tiles.append(Tile(max(cy0 - overlap, 0), min(cy1 + overlap, height),
                              max(cx0 - overlap, 0), min(cx1 + overlap, width), cy0, cy1, cx0, cx1))
    return tiles


def run_tiled(
    fn: Callable[[np.ndarray, Tile], np.ndarray],
    image: np.ndarray,
    tiles: Sequence[Tile],
    out: Optional[np.ndarray] = None,
    progress: Optional[Callable[[int], None]] = None,
) -> np.ndarray:
    """Run ``fn(image_tile, tile) -> result_tile`` over ``tiles``; assemble the cores.

    ``out`` (``H x W x C``, any dtype) receives the result; allocated like the
    first result tile when None.
    """
    for tile in tiles:
        result = fn(image[tile.y0:tile.y1, tile.x0:tile.x1], tile)
        expected = (tile.y1 - tile.y0, tile.x1 - tile.x0)
        if tuple(result.shape[:2]) != expected:
            raise ValueError(f"tile function returned {result.shape[:2]}, expected {expected}")
        if out is None:
            out = np.empty((image.shape[0], image.shape[1], *result.shape[2:]), dtype=result.dtype)
        rows, cols = tile.core_in_tile()
        out[tile.cy0:tile.cy1, tile.cx0:tile.cx1] = result[rows, cols]
        if progress is not None:
            progress(1)
    assert out is not None
    return out


def crop_features(feats: Sequence["object"], tile: Tile, height: int, width: int) -> List["object"]:
    """Each whole-image feature map resampled to ``tile``'s region (bilinear, same stride)."""
    import torch
    import torch.nn.functional as F

    out = []
    th, tw = tile.y1 - tile.y0, tile.x1 - tile.x0
    for f in feats:
        fh, fw = f.shape[-2:]
        oh = max(1, round(th * fh / height))
        ow = max(1, round(tw * fw / width))
        ys = tile.y0 + (torch.arange(oh, dtype=torch.float32) + 0.5) * th / oh
        xs = tile.x0 + (torch.arange(ow, dtype=torch.float32) + 0.5) * tw / ow
        gy = (2.0 * ys / height - 1.0).view(oh, 1).expand(oh, ow)
        gx = (2.0 * xs / width - 1.0).view(1, ow).expand(oh, ow)
        grid = torch.stack([gx, gy], dim=-1).unsqueeze(0).expand(f.shape[0], oh, ow, 2).to(f.dtype)
        out.append(F.grid_sample(f, grid, mode="bilinear", padding_mode="border", align_corners=False))
    return out


def global_depth_features(model: "object", image: np.ndarray, depth_side: int = 1024) -> Optional[List["object"]]:
    """The whole image's depth features at most ``depth_side`` px on its long side (None without depth)."""
    if getattr(model, "depth", None) is None:
        return None
    import cv2

    from edgehaze.imageio import to_tensor

    h, w = image.shape[:2]
    factor = min(1.0, depth_side / max(h, w))
    small = image
    if factor < 1.0:
        size = (max(1, round(w * factor)), max(1, round(h * factor)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return list(model.depth_features(to_tensor(small)))  # type: ignore[attr-defined]


def to_storage(img01: np.ndarray, bits: int = 8) -> np.ndarray:
    """Float [0, 1] -> uint8/uint16 exactly as :func:`edgehaze.imageio.write_image` stores it."""
    top = 255.0 if bits == 8 else 65535.0
    dtype = np.uint8 if bits == 8 else np.uint16
    return np.round(np.clip(np.nan_to_num(img01.astype(np.float64)), 0.0, 1.0) * top).astype(dtype)


def dehaze_tiled(
    model: "object",
    image: np.ndarray,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    bits: Optional[int] = 8,
    depth_side: int = 1024,
    progress: Optional[Callable[[int], None]] = None,
) -> np.ndarray:
    """Dehaze a float ``H x W x 3`` image tile by tile.

    Returns uint8/uint16 (``bits`` 8/16) ready for ``write_image``, or float32
    in [0, 1] with ``bits=None``. Depth models get whole-image features
    (see the module docstring).
    """
    import torch

    from edgehaze.imageio import to_image, to_tensor

    h, w = image.shape[:2]
    tiles = plan_tiles(h, w, tile, overlap, tile_alignment(model))
    with torch.inference_mode():
        feats = global_depth_features(model, image, depth_side)

        def one(part: np.ndarray, t: Tile) -> np.ndarray:
            x = to_tensor(part)
            y = model(x) if feats is None else model(x, depth_feats=crop_features(feats, t, h, w))  # type: ignore[operator]
            result = to_image(y)
            return result if bits is None else to_storage(result, bits)

        return run_tiled(one, image, tiles, progress=progress)

