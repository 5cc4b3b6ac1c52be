"""Temporal stability learnt from single images (issue "Video that does not flicker").

Eilertsen, Mantiuk and Unger, "Single-frame Regularization for Temporally
Stable CNNs" (CVPR 2019): a per-frame network flickers because its output
jumps under the small changes that separate consecutive video frames (a few
pixels of motion, sensor noise); penalising the change of the output under
such transformations of single training images removes most of the flicker
without any video in the training data.

Why here (measured, benchmarks/README.md "Flicker"): the shipped student's
per-frame warping error on the real fog drive is 24x the input's, while the
same correction maps held fixed over the clip give 2.8x; a 4-pixel shift of a
frame moves its mean offset map by 11 grey levels, and noise of 2 grey
levels by 2. The RGB-only stage-1 network flickers as much as the fused
student, so the term belongs in every dehazer stage.

The term: each training crop ``x`` (S x S) is seen a second time as the
sub-crop ``x'`` of size S - m at a random offset ``(oy, ox)`` in ``[0, m]``,
optionally plus Gaussian noise of standard deviation ``noise`` (``[0, 1]``
units)::

    L_stab = mean | f(x') - f(x)[oy : oy + S - m, ox : ox + S - m] |

with ``m`` = ``shift`` pixels (8 covers every phase of the edge backbones'
pooling grid at internal scale 8). Both outputs get gradients, as in the
paper. Noise is off by default: a dehazer applies a gain ``g > 1`` to the
full-resolution frame, so noise ``n`` on the copy reaches its output as
``g n`` whatever the network does; at 2 grey levels that part alone was
~0.009 of the term (measured in training), larger than the shift's, and its
gradient only pushes the gain down (weaker dehazing). The depth features of the copy are the teacher's for the same window
(see :func:`sub_box`), so a fused model is regularised on the depth it will
really see.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

#: a window of a training crop: top, left, height, width (crop pixels, after any flip)
Window = Tuple[int, int, int, int]


@dataclass(frozen=True)
class StabilityTerm:
    """``L_stab`` of the module docstring; ``weight`` multiplies it in the total loss."""

    weight: float
    shift: int = 8
    noise: float = 0.0

    def window(self, height: int, width: int) -> Window:
        """A random window ``(oy, ox, height - shift, width - shift)`` (torch's global RNG: resumes exactly)."""
        if min(height, width) <= self.shift:
            raise ValueError(f"the stability term needs crops larger than its shift ({self.shift} px), got {height}x{width}")
        oy, ox = (int(v) for v in torch.randint(0, self.shift + 1, (2,)))
        return oy, ox, height - self.shift, width - self.shift

    def __call__(self, forward: Callable[[torch.Tensor, Window], torch.Tensor], hazy: torch.Tensor,
                 pred: torch.Tensor) -> torch.Tensor:
        """The term for a batch: ``forward(copy, window)`` dehazes the copy (the caller brings its depth)."""
        oy, ox, h, w = win = self.window(*hazy.shape[-2:])
        copy = hazy[..., oy:oy + h, ox:ox + w]
        if self.noise > 0:
            copy = copy + self.noise * torch.randn_like(copy)
        moved = forward(copy, win)
        return F.l1_loss(moved.float(), pred[..., oy:oy + h, ox:ox + w].float())


def stability_term(loss: Any) -> Optional[StabilityTerm]:
    """The term a config's ``loss`` section asks for (``stability`` > 0), else None (train and distill alike)."""
    if not loss.stability:
        return None
    return StabilityTerm(loss.stability, loss.stability_shift, loss.stability_noise)


def sub_box(box: Sequence[int], win: Window) -> list:
    """The image box (``edgehaze.train.depth_crop.BOX_FIELDS``) of window ``win`` of the crop ``box``.

    ``win`` is in the coordinates of the crop as the model saw it, i.e. after
    the flip: for a flipped crop, crop column ``c`` is image column
    ``left + width - 1 - c``, so the window's image columns start at
    ``left + width - ox - w`` (and :func:`crop_features` flips them back).
    """
    top, left, ch, cw, flipped, full_h, full_w = (int(v) for v in box)
    oy, ox, h, w = win
    new_left = left + cw - ox - w if flipped else left + ox
    return [top + oy, new_left, h, w, flipped, full_h, full_w]
