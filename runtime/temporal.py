"""Video without flicker: causal smoothing of the low-resolution maps, scene cuts, a clear-frame bypass.

A correction-map dehazer (``edge-*``, the fused graph of export/fused.py)
computes, per frame, a grid of gain/offset coefficients at ``1/scale`` of the
frame (``fused/gain_offset_low``: 1 + K and 255 B, after the guided refit
when the model has one) and applies them to the full-resolution frame. A
per-frame network's coefficients jitter from frame to frame; blending them
with the previous frame's costs a few microseconds per cell and nothing at
full resolution. So:

- :func:`smoothing_graph` splices the blend into the artifact's fused graph,
  between the maps and the apply step, at load time: the graph also takes
  last frame's blended maps and pooled input and returns this frame's, so one
  session run per frame does everything and the full-resolution work is the
  plain graph's (a split into a maps graph and an apply graph handing the
  float frame over was measured slower: runtime/README.md). Needs the
  ``onnx`` package (lazily imported; only when smoothing is on).
- the blend: ``m_t = maps_t + w (m_{t-1} - maps_t)`` per cell, with
  ``w = strength * clip(1 - change / MOTION_SCALE, 0, 1)`` and ``change`` the
  cell's mean absolute change of the pooled input over RGB (a cell whose
  content moved takes the new maps, so nothing ghosts). Causal.
- one notion of "the scene changed": the first frame, a new frame size, a
  frame after bypassed ones, or a mean cell change above ``CUT_THRESHOLD``
  (the graph then takes no past for that frame); :class:`Dehazer` also
  refreshes held depth features (``depth_every > 1``) on it.
- :class:`HazeGate`: a dark-channel haze score on a strided subsample of the
  frame with hysteresis; clear frames pass through unchanged and the network
  is skipped.

numpy + onnxruntime (+ onnx for the rewrite); no torch, no edgehaze.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .errors import RuntimeError_, Status

#: the tensors the split cuts at (names written by export/fused.py)
MAPS, POOLED = "fused/gain_offset_low", "x_low"
#: a cell whose pooled input changed by this much (mean over RGB, [0, 1] units) keeps none of its past maps
MOTION_SCALE = 0.06
#: mean cell change above which the scene counts as cut (state reset, depth refreshed)
CUT_THRESHOLD = 0.12
#: ``runtime/stream.py``'s smoothing strength when ``--temporal`` is not given (where the graph allows it):
#: on the shipped student it halves the per-frame flicker of the real fog drive (11.6x -> 3.7x the input's
#: at 1080p, 6.9x -> 2.7x at 640x360) for about 1% of frame time; a still frame's output is unchanged
DEFAULT_STRENGTH = 0.7
#: haze-score hysteresis: bypass when the score stays below CLEAR_BELOW, dehaze again above HAZY_ABOVE.
#: Observed scores (5th / 50th / 95th percentile): SOTS-indoor clear 0.03 / 0.20 / 0.33, hazy 0.35 / 0.53 / 0.68;
#: real hazy photos 0.25-0.37 / 0.33-0.69; FRIDA2 clear (sky-heavy road scenes) 0.28 / 0.30 / 0.44, fog >= 0.52.
#: The band leans towards dehazing: passing a hazy frame through is the worse mistake.
CLEAR_BELOW, HAZY_ABOVE, HOLD_FRAMES = 0.20, 0.28, 5


# -- the graph rewrite ----------------------------------------------------------------------------
def smoothing_graph(model: "str | bytes", motion_scale: float = MOTION_SCALE, cut: float = CUT_THRESHOLD
                    ) -> "tuple[bytes, int]":
    """``(graph, scale)``: the fused graph with the blend spliced in between its maps and its apply step.

    Added inputs: ``temporal/prev_maps`` (1 x 6 x h x w, last frame's blended
    maps), ``temporal/prev_pooled`` (1 x 3 x h x w, last frame's pooled input)
    and ``temporal/weight`` ([1]: the strength, 0 to restart). Added outputs:
    ``temporal/maps`` (this frame's blended maps), ``x_low`` (its pooled
    input) and ``temporal/change`` (the mean cell change, for the scene-cut
    test). Every consumer of the maps reads the blend instead. With weight 0
    the blend is ``maps + 0 (prev - maps)`` = the maps exactly, so the output
    is the plain graph's. ``scale`` is the maps' stride (``fused/s``).
    """
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as exc:
        raise RuntimeError_(Status.BACKEND_UNAVAILABLE,
                            f"temporal smoothing adds its blend to the fused graph with the onnx package ({exc}); "
                            "pip install onnx, or run with temporal=0") from None
    m = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
    g = m.graph
    produced = {o for n in g.node for o in n.output}
    if MAPS not in produced or POOLED not in produced:
        raise RuntimeError_(Status.UNSUPPORTED,
                            f"{model if isinstance(model, str) else 'graph'}: no {MAPS} / {POOLED} tensors; "
                            "temporal smoothing needs the fused graph of an edge-* model (edgehaze export), "
                            "or run with temporal=0")
    inits = {i.name: i for i in g.initializer}
    scale = int(numpy_helper.to_array(inits["fused/s"]).reshape(-1)[0]) if "fused/s" in inits else 1
    blended = "temporal/maps"
    for n in g.node:  # the apply step reads the blend
        for k, name in enumerate(n.input):
            if name == MAPS:
                n.input[k] = blended
    def c(name: str, value: float) -> str:
        g.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def node(op: str, ins: list, out: str, **attrs) -> str:  # type: ignore[no-untyped-def]
        g.node.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    change = node("ReduceMean", [node("Abs", [node("Sub", [POOLED, "temporal/prev_pooled"], "temporal/diff")],
                                      "temporal/absdiff")], "temporal/cell_change", axes=[1], keepdims=1)
    mean = node("ReduceMean", [change], "temporal/change", keepdims=0)
    still = node("Cast", [node("LessOrEqual", [mean, c("temporal/cut", cut)], "temporal/same_scene")],
                 "temporal/same_scene_f", to=TensorProto.FLOAT)
    keep = node("Clip", [node("Sub", [c("temporal/one", 1.0), node("Mul", [change, c("temporal/inv_motion", 1.0 / motion_scale)],
                                                                    "temporal/moved")], "temporal/unmoved"),
                         c("temporal/zero", 0.0), c("temporal/one_max", 1.0)], "temporal/keep")
    w = node("Mul", [node("Mul", [keep, "temporal/weight"], "temporal/w_strength"), still], "temporal/w")
    delta = node("Mul", [w, node("Sub", ["temporal/prev_maps", MAPS], "temporal/past_minus_now")], "temporal/delta")
    node("Add", [MAPS, delta], blended)
    # the added nodes go after the maps' producer (a topological order: the graph is checked below)
    order = list(g.node)
    added = [n for n in order if n.name.startswith("temporal/")]
    rest = [n for n in order if not n.name.startswith("temporal/")]
    cut_at = next(k for k, n in enumerate(rest) if MAPS in n.output) + 1
    del g.node[:]
    g.node.extend(rest[:cut_at] + added + rest[cut_at:])
    f32 = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)  # noqa: E731
    g.input.extend([f32("temporal/prev_maps", [1, 6, "h", "w"]), f32("temporal/prev_pooled", [1, 3, "h", "w"]),
                    f32("temporal/weight", [1])])
    g.output.extend([f32(blended, [1, 6, "h", "w"]), f32(POOLED, [1, 3, "h", "w"]), f32(mean, [])])
    onnx.checker.check_model(m)
    return m.SerializeToString(), scale


# -- the clear-frame bypass -----------------------------------------------------------------------
def haze_score(frame: np.ndarray, step: Optional[int] = None) -> float:
    """Dark-channel haze score in [0, 1] of a uint8 H x W x 3 frame (He et al. 2009's statistic, cheap).

    On a strided subsample (about 1/8 of the frame per side): the dark
    channel (min over colours and a 3 x 3 neighbourhood), its median divided
    by an airlight estimate (the 99.9th percentile of the brightest colour,
    floored at 64). A haze of transmission t lifts the dark channel by
    about A (1 - t), so the score is near 1 - t; clear
    outdoor images have a dark channel near zero away from the sky (the
    median ignores a sky that fills less than half the frame).
    """
    h, w = frame.shape[:2]
    step = step or max(1, min(h, w) // 120)
    sub = frame[step // 2::step, step // 2::step]
    dark = np.minimum(np.minimum(sub[..., 0], sub[..., 1]), sub[..., 2])
    if dark.shape[0] >= 3 and dark.shape[1] >= 3:
        d = dark[1:-1, 1:-1].copy()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy or dx:
                    np.minimum(d, dark[1 + dy:dark.shape[0] - 1 + dy, 1 + dx:dark.shape[1] - 1 + dx], out=d)
        dark = d
    flat, bright = dark.ravel(), np.maximum(np.maximum(sub[..., 0], sub[..., 1]), sub[..., 2]).ravel()
    k, top = len(flat), min(len(bright) - 1, int(len(bright) * 0.999))
    med = float(np.partition(flat, k // 2)[k // 2])
    airlight = float(np.partition(bright, top)[top])
    return med / max(airlight, 64.0)


class HazeGate:
    """Clear-frame bypass with hysteresis: True (pass the frame through) while the frame is clear.

    The state flips to clear only after ``hold`` consecutive scores below
    ``clear_below`` and back to hazy after ``hold`` consecutive scores above
    ``hazy_above``; the first frame takes the side of the band's midpoint.
    """

    def __init__(self, clear_below: float = CLEAR_BELOW, hazy_above: float = HAZY_ABOVE, hold: int = HOLD_FRAMES) -> None:
        if not clear_below < hazy_above:
            raise RuntimeError_(Status.BAD_ARGUMENT, f"bypass band {clear_below} .. {hazy_above} is empty")
        self.clear_below, self.hazy_above, self.hold = float(clear_below), float(hazy_above), int(hold)
        self.clear: Optional[bool] = None
        self._run = 0
        self.toggles = 0
        self.bypassed = 0
        self.score = float("nan")

    def __call__(self, frame: np.ndarray) -> bool:
        s = self.score = haze_score(frame)
        if self.clear is None:
            self.clear = s < 0.5 * (self.clear_below + self.hazy_above)
        else:
            leaving = s > self.hazy_above if self.clear else s < self.clear_below
            self._run = self._run + 1 if leaving else 0
            if self._run >= self.hold:
                self.clear, self._run = not self.clear, 0
                self.toggles += 1
        self.bypassed += int(self.clear)
        return bool(self.clear)


# -- the runner -----------------------------------------------------------------------------------
class TemporalRunner:
    """Runs the smoothing graph of an ORT backend and keeps its state (used by :class:`Dehazer`).

    The state (last blended maps, last pooled input) lives in two numpy
    buffer pairs allocated once per frame size and swapped each frame: the
    graph reads one pair and writes the other, bound by pointer.
    """

    def __init__(self, backend, strength: float) -> None:
        if getattr(backend, "_ort", None) is None:
            raise RuntimeError_(Status.UNSUPPORTED, "temporal smoothing runs ONNX graphs (not .engine files); "
                                                    "use the .onnx artifact or temporal=0")
        if not 0.0 <= strength < 1.0:
            raise RuntimeError_(Status.BAD_ARGUMENT, f"temporal must be a strength in [0, 1), got {strength!r}")
        self.strength = float(strength)
        role = "fuse" if backend.two_graph else "full"
        graph, self.scale = smoothing_graph(str(backend.artifact.graph_path(role)))
        ort = backend._ort
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = backend._threads, backend._inter
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if backend._spin else "0")
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[backend._opt_level]
        self.session = ort.InferenceSession(graph, so, providers=backend._provider_chain(role))
        self.backend, self.role = backend, role
        self._b = self.session.io_binding()
        self._shape = None
        self._feats_bound: Optional[list] = None
        self._fresh = True      # the next frame starts over (first frame, new size, after bypassed frames)
        self.resets = 0         # frames that started over (first, new size, scene cut, after a bypass)
        self.cuts = 0           # scene cuts seen (mean cell change above CUT_THRESHOLD)
        self.change = 0.0       # the last frame's mean cell change

    def _buffers(self, shape: tuple) -> None:
        _, h, w, _ = shape
        ch, cw = -(-h // self.scale), -(-w // self.scale)
        self._maps = [np.zeros((1, 6, ch, cw), np.float32) for _ in range(2)]
        self._pooled = [np.zeros((1, 3, ch, cw), np.float32) for _ in range(2)]
        self._change = np.zeros((), np.float32)
        self._weight = np.zeros((1,), np.float32)
        b = self._b
        b.bind_input("temporal/weight", "cpu", 0, np.float32, (1,), self._weight.ctypes.data)
        b.bind_output("temporal/change", "cpu", 0, np.float32, (), self._change.ctypes.data)
        self._cur, self._shape, self._fresh = 0, shape, True

    def run(self, src, dst, restart: bool = False) -> bool:
        """Dehaze ``src`` into ``dst`` with the blend; True when this frame started over (new scene)."""
        if src.device != "cpu":
            raise RuntimeError_(Status.UNSUPPORTED, "temporal smoothing takes host frames (numpy); GPU buffers: temporal=0")
        if self._shape != src.shape:
            self._buffers(src.shape)
        b, prev, cur = self._b, self._cur, 1 - self._cur
        fresh = restart or self._fresh
        b.bind_input("image", "cpu", 0, np.uint8, src.shape, src.ptr)
        if self.role == "fuse" and self._feats_bound is not self.backend._feats:
            for name, value in zip(self.backend._feat_names, self.backend._feats):
                b.bind_ortvalue_input(name, value)
            self._feats_bound = self.backend._feats
        for name, arrs, out in (("temporal/prev_maps", self._maps, False), ("temporal/prev_pooled", self._pooled, False)):
            b.bind_input(name, "cpu", 0, np.float32, arrs[prev].shape, arrs[prev].ctypes.data)
        b.bind_output("temporal/maps", "cpu", 0, np.float32, self._maps[cur].shape, self._maps[cur].ctypes.data)
        b.bind_output(POOLED, "cpu", 0, np.float32, self._pooled[cur].shape, self._pooled[cur].ctypes.data)
        b.bind_output("dehazed", "cpu", 0, np.uint8, dst.shape, dst.ptr)
        self._weight[0] = 0.0 if fresh else self.strength
        self.backend._run(self.session, b, self.role)
        self.change = float(self._change)
        cut = not fresh and self.change > CUT_THRESHOLD  # the graph already took no past for this frame
        self.cuts += int(cut)
        self._cur, self._fresh = cur, False
        if fresh or cut:
            self.resets += 1
        return fresh or cut

    def forget(self) -> None:
        """The next frame starts over (frames were bypassed or the caller knows the scene changed)."""
        self._fresh = True

    def close(self) -> None:
        self._b = None
        self.session = None


__all__ = ["DEFAULT_STRENGTH", "smoothing_graph", "HazeGate", "haze_score", "TemporalRunner", "MAPS", "POOLED", "MOTION_SCALE",
           "CUT_THRESHOLD", "CLEAR_BELOW", "HAZY_ABOVE", "HOLD_FRAMES"]
