"""How much a video flickers: the warping error (Lai et al. 2018) and tOF (TecoGAN).

numpy + OpenCV only (no torch, no edgehaze), so ``runtime/stream.py
--stats-json`` and ``benchmarks/temporal.py`` share one implementation.

**Warping error** (Lai et al., "Learning Blind Video Temporal Consistency",
ECCV 2018, eq. 9): for each pair of consecutive frames, the optical flow is
computed on the *input* video (OpenCV's DIS flow, preset MEDIUM); output
frame ``t`` is warped onto frame ``t-1`` along it; pixels whose forward and
backward flows disagree (occlusions, Ruder et al. 2016's test
``|w + w_b|^2 > 0.01 (|w|^2 + |w_b|^2) + 0.5``) or whose warp leaves the
frame are masked; the error is the mean squared difference (values in [0, 1],
over the three channels) over the valid pixels, averaged over the pairs.
Computed on the input itself it says how much the scene "flickers" already
(noise, exposure); the ratio output / input says what the dehazer adds.

**tOF** (Chu et al., TecoGAN, ACM TOG 2020): the mean per-pixel Euclidean
distance between the Farneback optical flow of consecutive output frames and
that of consecutive ground-truth frames (TecoGAN's parameters 0.5, 3, 15, 3,
5, 1.2, 0 on grey frames; TecoGAN crops borders to multiples of 32, we use
the whole frame).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import numpy as np


def _cv2():
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - OpenCV ships with the runtime's stream extra
        raise ImportError(f"the flicker measure needs OpenCV ({exc}); pip install opencv-python-headless") from None
    return cv2


def _grey(frame: np.ndarray) -> np.ndarray:
    cv2 = _cv2()
    return frame if frame.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)


class FlowPair:
    """DIS optical flow between consecutive *input* frames and the valid (non-occluded) mask.

    ``flow`` maps pixel ``x`` of frame ``t-1`` to ``x + flow(x)`` in frame ``t``;
    ``valid`` is the forward-backward consistency mask on frame ``t-1``'s grid.
    """

    def __init__(self) -> None:
        cv2 = _cv2()
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    def __call__(self, prev: np.ndarray, cur: np.ndarray) -> "tuple[np.ndarray, np.ndarray, np.ndarray]":
        """``(map_x, map_y, valid)``: where to sample frame ``t`` for each pixel of ``t-1``, and the mask."""
        cv2 = _cv2()
        g0, g1 = _grey(prev), _grey(cur)
        fw = self._dis.calc(g0, g1, None)
        bw = self._dis.calc(g1, g0, None)
        h, w = g0.shape
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        map_x, map_y = xs + fw[..., 0], ys + fw[..., 1]
        bw_w = cv2.remap(bw, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        diff = ((fw + bw_w) ** 2).sum(-1)
        bound = 0.01 * ((fw ** 2).sum(-1) + (bw_w ** 2).sum(-1)) + 0.5
        inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
        return map_x, map_y, (diff <= bound) & inside


def pair_warping_error(prev_out: np.ndarray, cur_out: np.ndarray, map_x: np.ndarray, map_y: np.ndarray,
                       valid: np.ndarray) -> float:
    """Mean squared difference (in [0, 1] units) between ``prev_out`` and ``cur_out`` warped onto it, valid pixels."""
    cv2 = _cv2()
    n = int(valid.sum())
    if n == 0:
        return 0.0
    warped = cv2.remap(np.ascontiguousarray(cur_out), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    d = (warped.astype(np.float32) - prev_out.astype(np.float32)) / 255.0
    return float(((d ** 2).mean(-1) * valid).sum() / n)


@dataclass
class WarpingError:
    """Running warping error of an input video and of one or more output videos of it.

    ``add(input_frame, {"name": output_frame, ...})`` once per frame (uint8
    H x W x 3, same channel order throughout); ``result()`` gives the means
    and each output's ratio to the input's. ``max_side``: frames are resized
    so their longer side is at most this (None: full size) before the flow.
    """

    max_side: Optional[int] = None
    pairs: int = 0
    _sum: dict = field(default_factory=dict)
    _prev: Optional[tuple] = None
    _flow: Optional[FlowPair] = None

    def _fit(self, frame: np.ndarray) -> np.ndarray:
        if self.max_side is None or max(frame.shape[:2]) <= self.max_side:
            return frame.copy()  # callers reuse their buffers
        cv2 = _cv2()
        f = self.max_side / max(frame.shape[:2])
        return cv2.resize(frame, (max(1, round(frame.shape[1] * f)), max(1, round(frame.shape[0] * f))),
                          interpolation=cv2.INTER_AREA)

    def add(self, input_frame: np.ndarray, outputs: dict) -> None:
        cur = (self._fit(input_frame), {k: self._fit(v) for k, v in outputs.items()})
        prev, self._prev = self._prev, cur
        if prev is None or prev[0].shape != cur[0].shape:  # a size change starts a new clip
            return
        self._flow = self._flow or FlowPair()
        mx, my, valid = self._flow(prev[0], cur[0])
        self._sum["input"] = self._sum.get("input", 0.0) + pair_warping_error(prev[0], cur[0], mx, my, valid)
        for k, v in cur[1].items():
            if k in prev[1]:
                self._sum[k] = self._sum.get(k, 0.0) + pair_warping_error(prev[1][k], v, mx, my, valid)
        self.pairs += 1

    def result(self) -> dict:
        """``{"pairs", "input", NAME..., "ratio": {NAME: out/in}}`` (warping errors are means over pairs)."""
        r: dict = {"pairs": self.pairs}
        if not self.pairs:
            return r
        mean = {k: v / self.pairs for k, v in self._sum.items()}
        r.update(mean)
        base = mean.get("input", 0.0)
        r["ratio"] = {k: (v / base if base > 0 else float("nan")) for k, v in mean.items() if k != "input"}
        return r


def warping_error(inputs: Sequence[np.ndarray], outputs: Optional[Sequence[np.ndarray]] = None) -> float:
    """Warping error of ``outputs`` (default: the input video itself) along the input video's flow."""
    m = WarpingError()
    outs = inputs if outputs is None else outputs
    for x, y in zip(inputs, outs):
        m.add(x, {"out": y})
    return m.result().get("out", 0.0)


def tof(outputs: Iterable[np.ndarray], ground_truth: Iterable[np.ndarray]) -> float:
    """TecoGAN's tOF: mean |OF(out_{t-1}, out_t) - OF(gt_{t-1}, gt_t)| (per-pixel L2 of the flow difference)."""
    cv2 = _cv2()
    total, pairs, prev = 0.0, 0, None
    for o, g in zip(outputs, ground_truth):
        cur = (_grey(o), _grey(g))
        if prev is not None:
            fo = cv2.calcOpticalFlowFarneback(prev[0], cur[0], None, 0.5, 3, 15, 3, 5, 1.2, 0)
            fg = cv2.calcOpticalFlowFarneback(prev[1], cur[1], None, 0.5, 3, 15, 3, 5, 1.2, 0)
            total += float(np.sqrt(((fo - fg) ** 2).sum(-1)).mean())
            pairs += 1
        prev = cur
    return total / pairs if pairs else 0.0


__all__ = ["FlowPair", "WarpingError", "pair_warping_error", "warping_error", "tof"]
