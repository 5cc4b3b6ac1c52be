"""Depth at a consistent scale (issue 16, item 2).

At test time the depth teacher sees the whole image. If training ran it on
each random crop, the teacher would see the crop enlarged (a 256 crop
resized to 518 is about 2x, the whole 620x460 image about 1.1x) and produce
features with different statistics than at test. Here the teacher runs on the
*whole* training image (its features cached when ``train.depth_cache`` is on:
the teacher is frozen, so they never change), and each feature level is
cropped with the RGB crop's box and flipped with it. Training and test then
see the same depth features for the same pixels.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

#: ``box`` layout in a sample: top, left, crop height, crop width, flipped, full height, full width
BOX_FIELDS = ("top", "left", "height", "width", "flipped", "full_h", "full_w")


def crop_features(
    feats: Sequence[torch.Tensor], box: Sequence[int], out_sizes: Optional[Sequence[Tuple[int, int]]] = None
) -> List[torch.Tensor]:
    """Crop full-image feature maps (each ``1 x C x h x w``) to the image box ``box``.

    Each level covers the whole image, so the crop ``[top, top+height) x
    [left, left+width)`` in pixels is the same fraction of every level; it is
    sampled bilinearly at the centres of an output grid of
    ``round(height * h / full_h)`` rows (``out_sizes`` overrides), then
    flipped when the RGB crop was. Grid-aligned boxes reduce to slicing.
    """
    top, left, ch, cw, flipped, full_h, full_w = (int(v) for v in box)
    out = []
    for k, f in enumerate(feats):
        h, w = f.shape[-2:]
        oh, ow = out_sizes[k] if out_sizes is not None else (max(1, round(ch * h / full_h)), max(1, round(cw * w / full_w)))
        ys = top + (torch.arange(oh, dtype=torch.float32) + 0.5) * ch / oh  # pixel-space centres
        xs = left + (torch.arange(ow, dtype=torch.float32) + 0.5) * cw / ow
        gy = 2.0 * ys / full_h - 1.0  # align_corners=False: -1/+1 are the image's outer edges
        gx = 2.0 * xs / full_w - 1.0
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None].to(f)
        c = F.grid_sample(f, grid.expand(f.shape[0], -1, -1, -1), mode="bilinear", padding_mode="border", align_corners=False)
        out.append(torch.flip(c, dims=[-1]) if flipped else c)
    return out


class CropWithBox(torch.utils.data.Dataset):
    """Random crop + flip of a full-size dataset, recording the box in the sample.

    Same randomness as :class:`edgehaze.data.PairedDataset` (one generator
    per ``(seed, epoch, index)``: the crop corner first, then the flip), so
    resumed runs stay exact. ``base`` must have no crop/flip of its own.
    """

    def __init__(self, base: Any, crop: Optional[int], flip: bool, seed: int) -> None:
        self.base, self.crop, self.flip, self.seed, self.epoch = base, crop, flip, seed, 0
        self.pairs = base.pairs

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        from edgehaze.data.datasets import crop_box, sample_rng

        sample = dict(self.base[index])
        hazy, gt = sample["hazy"], sample.get("gt")
        full_h, full_w = hazy.shape[-2:]
        rng = sample_rng(self.seed, self.epoch, index)
        top, left, ch, cw = 0, 0, full_h, full_w
        if self.crop is not None:
            if full_h < self.crop or full_w < self.crop:
                from edgehaze.errors import EdgehazeError

                raise EdgehazeError(f"{self.pairs[index].hazy} is {full_w}x{full_h}, smaller than the crop {self.crop} (data.crop)")
            top, left = crop_box((full_h, full_w), (self.crop, self.crop), rng)
            ch = cw = self.crop
        flipped = bool(self.flip and rng.random() < 0.5)

        def cut(t: torch.Tensor) -> torch.Tensor:
            t = t[:, top:top + ch, left:left + cw]
            return torch.flip(t, dims=[-1]) if flipped else t

        sample["hazy"] = cut(hazy)
        if gt is not None:
            sample["gt"] = cut(gt)
        sample["box"] = torch.tensor([top, left, ch, cw, int(flipped), full_h, full_w])
        return sample


class FullImageDepth:
    """The batch's depth features: whole-image teacher features, cropped per sample.

    ``cache`` (a :class:`~edgehaze.train.teacher.DepthFeatureCache` over the
    full-size dataset) stores each image's features once; without it they are
    recomputed on the whole image every step (exact, slower).
    """

    def __init__(self, dataset: CropWithBox, cache: Any = None) -> None:
        self.dataset = dataset
        self.cache = cache

    def full_features(self, model: nn.Module, index: int, device: torch.device) -> List[torch.Tensor]:
        from edgehaze.train.teacher import reference_depth_kwargs

        whole = self._full(index, device)
        if self.cache is not None:
            return self.cache.features(model, {**whole, "index": [index]})
        return model.depth_features(whole["hazy"], **reference_depth_kwargs(model, whole))

    def _full(self, index: int, device: torch.device) -> Dict[str, Any]:
        """The whole pair (hazy, and gt when there is one) as a batch of one."""
        sample = self.dataset.base[index]
        out = {"hazy": sample["hazy"][None].to(device)}
        if sample.get("gt") is not None:
            out["gt"] = sample["gt"][None].to(device)
        return out

    def features(self, model: nn.Module, batch: Dict[str, Any]) -> List[torch.Tensor]:
        device = batch["hazy"].device
        per_image: List[List[torch.Tensor]] = []
        sizes = None
        for j, index in enumerate(int(i) for i in batch["index"]):
            full = self.full_features(model, index, device)
            cropped = crop_features(full, batch["box"][j].tolist(), sizes)
            sizes = sizes or [tuple(c.shape[-2:]) for c in cropped]  # one size per level for the batch
            per_image.append(cropped)
        return [torch.cat([img[k] for img in per_image]) for k in range(len(per_image[0]))]
