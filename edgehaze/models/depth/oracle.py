"""Oracle depth: a depth "teacher" that is handed each image's true depth (issue 16, item 5).

Why: to say how much depth *can* add to a dehazer, the fused model is also
trained and scored with the scene's own depth in place of a depth network's
guess (the ceiling of what any depth teacher could give it). That depth has
to reach the fusion blocks through the same door as a teacher's features, so
that training (whole-image features cropped with the RGB crop, the feature
cache), validation, evaluation and the "depth zeroed" measurement all run
unchanged. This module is that door:

* the *table* (``depth_weights=FOLDER``, :func:`write_oracle_table`) maps each
  known image, keyed by the SHA-1 of its 8-bit pixels and its size, to a depth
  map file (``.npy``, H x W, larger = farther; relative or metric, sky as
  :data:`edgehaze.data.rgbd.SKY_DEPTH_M`);
* :class:`OracleDepth` looks each image of a batch up in it and *encodes* its
  depth into four feature levels with fixed, parameter-free maps: the
  scale-normalised depth average-pooled to strides 4, 8, 16, 32 of the
  image, then at each level (:func:`encode_depth`) the depth itself, a
  bounded inverse depth and ``exp(-k d)`` for several ``k`` (transmissions
  at several haze densities). Pooling before encoding keeps the lookup cheap
  enough to run on every training step (no feature cache needed).

What is learned is only what a teacher row learns too: the dehazer's fusion
blocks (Z1 reads :data:`CHANNELS` maps instead of the teacher's width). The
depth is normalised per image by a high percentile of its valid pixels, so
the oracle knows relative depth, not the haze density (``beta``) of the image.
An image that is not in the table (e.g. a random crop: the oracle needs
``train.depth_scale: full_image``) is an error, never a guess.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from edgehaze.errors import ConfigError, EdgehazeError
from edgehaze.models.contracts import DepthProvider
from edgehaze.models.registries import DEPTH_MODELS

#: the table file inside an oracle folder
TABLE = "oracle.json"
#: ``exp(-k d)`` maps of the encoding (d: depth over its 95th percentile)
TRANSMISSION_KS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: normalised depth is clipped here; sky and unmeasured far pixels take this value
D_MAX = 4.0
#: feature maps per level: normalised depth, bounded inverse depth, the transmissions
CHANNELS = 2 + len(TRANSMISSION_KS)
#: strides of the four levels relative to the image (the oracle runs at the image's own size)
STRIDES = (4.0, 8.0, 16.0, 32.0)
#: the scale of a depth map: this percentile of its valid pixels
SCALE_PERCENTILE = 95.0


def image_key(image01: "np.ndarray | torch.Tensor") -> str:
    """SHA-1 of an image's 8-bit pixels (H x W x 3 array or 3 x H x W tensor in [0, 1]) and its size.

    8-bit rounding makes the key the same for an image read from a PNG as a
    float array and for the same image as a batch tensor.
    """
    if isinstance(image01, torch.Tensor):
        if image01.dim() != 3 or image01.shape[0] != 3:
            raise ValueError(f"expected a 3 x H x W image tensor, got shape {tuple(image01.shape)}")
        arr = image01.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    else:
        arr = np.asarray(image01, dtype=np.float32)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 image, got shape {arr.shape}")
        arr = np.rint(np.clip(arr, 0, 1) * 255).astype(np.uint8)
    arr = np.ascontiguousarray(arr)
    return f"{arr.shape[0]}x{arr.shape[1]}-{hashlib.sha1(arr.tobytes()).hexdigest()}"


def normalise_depth(depth: np.ndarray) -> np.ndarray:
    """Depth over the 95th percentile of its valid pixels, clipped to [0, D_MAX]; sky/invalid -> D_MAX.

    Valid: finite, > 0 and nearer than the sky depth. Scale-invariant, so a
    relative (SOTS) and a metric (FRIDA2) map of the same scene encode alike.
    """
    from edgehaze.data.rgbd import SKY_DEPTH_M

    d = np.asarray(depth, dtype=np.float32)
    valid = np.isfinite(d) & (d > 0) & (d < 0.99 * SKY_DEPTH_M)
    scale = float(np.percentile(d[valid], SCALE_PERCENTILE)) if valid.any() else 1.0
    near = np.isfinite(d) & (d < 0.99 * SKY_DEPTH_M)
    out = np.where(near, np.clip(np.nan_to_num(d) / max(scale, 1e-6), 0.0, D_MAX), D_MAX)
    return out.astype(np.float32)


def encode_depth(depth_n: torch.Tensor) -> torch.Tensor:
    """``B x 1 x H x W`` normalised depth -> ``B x CHANNELS x H x W`` fixed feature maps.

    Scaled depth, bounded inverse depth ``1 / (1 + d)`` (what relative-depth
    teachers predict) and ``exp(-k d)`` per ``k`` in :data:`TRANSMISSION_KS`.
    """
    maps = [depth_n / D_MAX, 1.0 / (1.0 + depth_n)] + [torch.exp(-k * depth_n) for k in TRANSMISSION_KS]
    return torch.cat(maps, dim=1)


class OracleDepth(DepthProvider):
    """The frozen "teacher" that knows each image's depth (module docstring)."""

    trainable = False

    def __init__(self, weights: "Optional[str | os.PathLike]" = None) -> None:
        super().__init__()
        if weights is None:
            raise ConfigError("depth 'oracle' needs its table: model.depth_weights=FOLDER (written by "
                              "edgehaze.models.depth.oracle.write_oracle_table)")
        self.folder = Path(weights)
        self.model_id = "oracle"
        self.license = "n/a (the evaluated data's own depth)"
        self.feature_channels = [CHANNELS] * len(STRIDES)
        self.feature_strides = list(STRIDES)
        self.table = read_table(self.folder)
        self._maps: Dict[str, np.ndarray] = {}
        self._build_kwargs = {"weights": str(weights)}

    def depth_map(self, key: str) -> np.ndarray:
        """The normalised depth of the image with ``key`` (loaded once, kept)."""
        if key not in self._maps:
            entry = self.table.get(key)
            if entry is None:
                raise EdgehazeError(
                    f"depth 'oracle' ({self.folder}): image {key} is not in its table; the oracle only knows the "
                    "whole images it was built for (training needs train.depth_scale: full_image)")
            path = Path(entry)
            self._maps[key] = normalise_depth(np.load(path if path.is_absolute() else self.folder / path))
        return self._maps[key]

    @torch.no_grad()
    def features(self, image: torch.Tensor) -> List[torch.Tensor]:
        maps = []
        for b in range(image.shape[0]):
            key = image_key(image[b])
            d = self.depth_map(key)
            if d.shape != tuple(image.shape[-2:]):
                raise EdgehazeError(f"depth 'oracle' ({self.folder}): the depth of image {key} is "
                                    f"{d.shape[1]}x{d.shape[0]}, the image {image.shape[-1]}x{image.shape[-2]}")
            maps.append(torch.from_numpy(d))
        d = torch.stack(maps)[:, None].to(image.device, torch.float32)
        return [encode_depth(F.avg_pool2d(d, int(s), int(s), ceil_mode=True)) for s in STRIDES]


def read_table(folder: "str | os.PathLike") -> Dict[str, str]:
    """``{image key: depth file}`` of an oracle folder (one-line error when it is not one)."""
    path = Path(folder) / TABLE
    if not path.is_file():
        raise ConfigError(f"depth 'oracle': {path} not found (model.depth_weights must be an oracle folder "
                          "written by write_oracle_table)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return dict(data["entries"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"depth 'oracle': {path} is not an oracle table ({exc})") from None


def write_oracle_table(folder: "str | os.PathLike", entries: Mapping[str, "str | os.PathLike"],
                       sources: Optional[Mapping[str, int]] = None) -> Path:
    """Write ``folder/oracle.json`` (atomically) from ``{image key: depth .npy path}``.

    ``sources``: how many images each source contributed (recorded for the
    report). Depth files inside ``folder`` are stored relative to it.
    """
    from edgehaze.fsutil import atomic_write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rel = {}
    for key, p in entries.items():
        p = Path(p).resolve()
        rel[key] = str(p.relative_to(folder.resolve())) if folder.resolve() in p.parents else str(p)
    body = {"version": 1, "encoding": {"channels": CHANNELS, "strides": list(STRIDES), "ks": list(TRANSMISSION_KS),
                                       "d_max": D_MAX, "scale_percentile": SCALE_PERCENTILE},
            "sources": dict(sources or {}), "entries": rel}
    return atomic_write_text(folder / TABLE, json.dumps(body, indent=1))


def table_entries(images: Sequence[Tuple["str | os.PathLike", "str | os.PathLike"]]) -> Dict[str, str]:
    """``{key: depth file}`` for ``(image file, depth .npy)`` pairs; a depth whose size differs is an error."""
    from edgehaze.imageio import read_image

    out: Dict[str, str] = {}
    shapes: Dict[str, Tuple[int, ...]] = {}
    for image_path, depth_path in images:
        img = read_image(image_path)
        if str(depth_path) not in shapes:
            shapes[str(depth_path)] = tuple(np.load(depth_path, mmap_mode="r").shape)
        if shapes[str(depth_path)] != img.shape[:2]:
            raise EdgehazeError(f"{depth_path}: depth {shapes[str(depth_path)]} does not match {image_path} "
                                f"({img.shape[0]}x{img.shape[1]})")
        out[image_key(img)] = str(depth_path)
    return out


@DEPTH_MODELS.register("oracle")
def oracle(weights: Optional[str] = None) -> OracleDepth:
    """The depth of each known image, encoded into four levels (``weights``: the oracle folder)."""
    return OracleDepth(weights)


__all__ = ["CHANNELS", "OracleDepth", "STRIDES", "encode_depth", "image_key", "normalise_depth", "read_table",
           "table_entries", "write_oracle_table"]
