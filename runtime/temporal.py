"""Video without flicker: causal smoothing of the low-resolution maps, scene cuts, a clear-frame bypass.

A correction-map dehazer (``edge-*``, the fused graph of export/fused.py)
computes, per frame, a grid of gain/offset coefficients at ``1/scale`` of the
frame (``fused/gain_offset_low``: 1 + K and 255 B, after the guided refit
when the model has one) and applies them to the full-resolution frame. A
per-frame network's coefficients jitter from frame to frame; blending them
with the previous frame's costs a few microseconds per cell and nothing at
full resolution. So:

- :func:`split_fused` cuts the artifact's fused graph at those maps into a
  **maps graph** (``image`` [+ depth features] -> pooled frame ``x_low``, the
  float frame ``fused/x255``, the maps) and an **apply graph** (``image``,
  ``fused/x255``, maps -> ``dehazed``). The float frame is handed from one to
  the other by pointer, so the chain does the same full-resolution work as
  the single graph (benchmarks/README.md measures it). Needs the ``onnx``
  package (lazily imported; only when smoothing is on).
- :class:`MapSmoother`: ``m_t = w m_{t-1} + (1 - w) maps_t`` per cell, with
  ``w = strength * clip(1 - change / MOTION_SCALE, 0, 1)`` and ``change`` the
  cell's mean absolute change of the pooled input (so a cell whose content
  moved takes the new maps and nothing ghosts). Causal (no look-ahead).
- :class:`SceneMonitor`: one notion of "the scene changed" (mean cell change
  above ``CUT_THRESHOLD``, or a new frame size) that resets the smoother and,
  with ``depth_every > 1``, refreshes the held depth features on that frame.
- :class:`HazeGate`: a dark-channel haze score on a strided subsample of the
  frame with hysteresis; clear frames pass through unchanged and the network
  is skipped.

numpy + onnxruntime (+ onnx for the split); no torch, no edgehaze.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .errors import RuntimeError_, Status

#: the tensors the split cuts at (names written by export/fused.py)
MAPS, X255, POOLED = "fused/gain_offset_low", "fused/x255", "x_low"
#: a cell whose pooled input changed by this much (mean over RGB, [0, 1] units) keeps none of its past maps
MOTION_SCALE = 0.06
#: mean cell change above which the scene counts as cut (state reset, depth refreshed)
CUT_THRESHOLD = 0.12
#: haze-score hysteresis: bypass when the score stays below CLEAR_BELOW, dehaze again above HAZY_ABOVE
CLEAR_BELOW, HAZY_ABOVE, HOLD_FRAMES = 0.10, 0.18, 5


# -- the graph split ------------------------------------------------------------------------------
def split_fused(model: "str | bytes") -> "tuple[bytes, bytes, int]":
    """``(maps graph, apply graph, scale)``: the two graphs serialized, cut from a fused ``image -> dehazed`` graph.

    ``scale`` is the maps' stride in frame pixels (the graph's ``fused/s`` constant).
    """
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError as exc:
        raise RuntimeError_(Status.BACKEND_UNAVAILABLE,
                            f"temporal smoothing splits the fused graph with the onnx package ({exc}); "
                            "pip install onnx, or run with temporal=0") from None
    m = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
    g = m.graph
    producer = {o: n for n in g.node for o in n.output}
    if MAPS not in producer or X255 not in producer or POOLED not in producer:
        raise RuntimeError_(Status.UNSUPPORTED,
                            f"{model if isinstance(model, str) else 'graph'}: no {MAPS}/{X255}/{POOLED} tensors; "
                            "temporal smoothing needs the fused graph of an edge-* model (edgehaze export), "
                            "run with temporal=0")
    padded = producer[X255].input[0]  # the byte frame the Cast reads: the apply graph takes its shape from x255

    def ancestors(outputs: list, stop: set) -> list:
        need, seen = list(outputs), set()
        keep = set()
        while need:
            t = need.pop()
            if t in seen or t in stop or t not in producer:
                continue
            seen.add(t)
            node = producer[t]
            keep.add(id(node))
            need.extend(i for i in node.input if i)
        return [n for n in g.node if id(n) in keep]

    f32 = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, None)  # noqa: E731
    inits = {i.name: i for i in g.initializer}

    def build(nodes: list, inputs: list, outputs: list, name: str) -> bytes:
        used = {i for n in nodes for i in n.input}
        graph = helper.make_graph(nodes, name, inputs, outputs, [inits[k] for k in inits if k in used])
        out = helper.make_model(graph, opset_imports=list(m.opset_import))
        out.ir_version = m.ir_version
        return out.SerializeToString()

    graph_inputs = [i for i in g.input if i.name not in inits]
    maps_nodes = ancestors([POOLED, X255, MAPS], set())
    apply_nodes = []
    for n in ancestors([o.name for o in g.output], {X255, MAPS}):
        if n.op_type == "Shape" and n.input[0] == padded:  # shape of the padded frame = shape of x255
            n = helper.make_node("Shape", [X255], list(n.output), name=n.name)
        apply_nodes.append(n)
    # the producers of the padded byte frame are no longer needed once its Shape reads x255
    apply_nodes = _prune(apply_nodes, [o.name for o in g.output], {X255, MAPS})
    image = next(i for i in graph_inputs if i.name == "image")
    maps_b = build(maps_nodes, graph_inputs, [f32(POOLED), f32(X255), f32(MAPS)], "edgehaze_maps")
    apply_b = build(apply_nodes, [image, f32(X255), f32(MAPS)], list(g.output), "edgehaze_apply")
    from onnx import numpy_helper

    scale = int(numpy_helper.to_array(inits["fused/s"]).reshape(-1)[0]) if "fused/s" in inits else 1
    return maps_b, apply_b, scale


def _prune(nodes: list, outputs: list, stop: set) -> list:
    """Keep only the nodes ``outputs`` depend on (after a rewrite), stopping at ``stop``."""
    producer = {o: n for n in nodes for o in n.output}
    need, keep = list(outputs), set()
    while need:
        t = need.pop()
        if t in stop or t not in producer or id(producer[t]) in keep:
            continue
        keep.add(id(producer[t]))
        need.extend(i for i in producer[t].input if i)
    return [n for n in nodes if id(n) in keep]


# -- the numpy parts ------------------------------------------------------------------------------
def cell_change(pooled: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """h x w mean absolute change over RGB of the pooled input (1 x 3 x h x w, [0, 1])."""
    return np.abs(pooled[0] - prev[0]).mean(axis=0)


class SceneMonitor:
    """Says when the scene changed: first frame, new size, or a mean cell change above ``cut``."""

    def __init__(self, cut: float = CUT_THRESHOLD) -> None:
        self.cut = float(cut)
        self.prev: Optional[np.ndarray] = None
        self.cuts = 0

    def restart(self) -> None:
        """Take this frame's maps as they are (they were recomputed after a scene change)."""
        np.copyto(self.smoothed, self.maps)
        self.smoother.state = self.maps.copy()

    def forget(self) -> None:
        self.prev = None

    def __call__(self, pooled: np.ndarray) -> "tuple[bool, Optional[np.ndarray]]":
        """``(changed, per-cell change or None)``; remembers ``pooled`` for the next frame."""
        prev = self.prev
        if self.prev is None or self.prev.shape != pooled.shape:
            self.prev = pooled.copy()
            return True, None
        change = cell_change(pooled, prev)
        np.copyto(self.prev, pooled)
        if float(change.mean()) > self.cut:
            self.cuts += 1
            return True, None
        return False, change


class MapSmoother:
    """Causal motion-aware blend of the low-resolution maps (module docstring)."""

    def __init__(self, strength: float, motion_scale: float = MOTION_SCALE) -> None:
        if not 0.0 <= strength < 1.0:
            raise RuntimeError_(Status.BAD_ARGUMENT, f"temporal strength must be in [0, 1), got {strength!r}")
        self.strength, self.motion_scale = float(strength), float(motion_scale)
        self.state: Optional[np.ndarray] = None
        self.resets = 0

    def reset(self) -> None:
        self.state = None

    def __call__(self, maps: np.ndarray, change: Optional[np.ndarray], out: np.ndarray) -> np.ndarray:
        """Blend ``maps`` (1 x C x h x w) into ``out``; ``change`` None (a scene change) restarts from ``maps``."""
        if change is None or self.state is None or self.state.shape != maps.shape:
            np.copyto(out, maps)
            self.state = maps.copy()
            self.resets += 1
            return out
        w = self.strength * np.clip(1.0 - change / self.motion_scale, 0.0, 1.0)
        # out = maps + w (state - maps), in place (two low-resolution passes)
        np.subtract(self.state, maps, out=out)
        out *= w
        out += maps
        np.copyto(self.state, out)
        return out


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
    dark = sub.min(axis=2)
    if dark.shape[0] >= 3 and dark.shape[1] >= 3:
        d = dark[1:-1, 1:-1].copy()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy or dx:
                    np.minimum(d, dark[1 + dy:dark.shape[0] - 1 + dy, 1 + dx:dark.shape[1] - 1 + dx], out=d)
        dark = d
    flat, bright = dark.ravel(), sub.max(axis=2).ravel()
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
    """Runs the split graphs of an ORT backend with smoothing between them (used by :class:`Dehazer`)."""

    def __init__(self, backend, strength: float) -> None:
        if getattr(backend, "_ort", None) is None:
            raise RuntimeError_(Status.UNSUPPORTED, "temporal smoothing runs ONNX graphs (not .engine files); "
                                                    "use the .onnx artifact or temporal=0")
        self.smoother = MapSmoother(strength)
        self.scene = SceneMonitor()
        role = "fuse" if backend.two_graph else "full"
        maps_g, apply_g, self.scale = split_fused(str(backend.artifact.graph_path(role)))
        ort = backend._ort
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = backend._threads, backend._inter
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if backend._spin else "0")
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[backend._opt_level]
        providers = backend._provider_chain(role)
        self.maps_s = ort.InferenceSession(maps_g, so, providers=providers)
        self.apply_s = ort.InferenceSession(apply_g, so, providers=providers)
        self.backend = backend
        self._mb, self._ab = self.maps_s.io_binding(), self.apply_s.io_binding()
        self._shape = None
        self._feats_bound: Optional[list] = None
        self.smooth_ms = 0.0  # time of the last frame's numpy work (change, cut test, blend)

    def _buffers(self, shape: tuple) -> None:
        """Low-resolution maps, pooled frame and float frame: allocated and bound once per frame size."""
        _, h, w, _ = shape
        s = self.scale
        ch, cw = -(-h // s), -(-w // s)
        self.pooled = np.empty((1, 3, ch, cw), np.float32)
        self.maps = np.empty((1, 6, ch, cw), np.float32)
        self.smoothed = np.empty_like(self.maps)
        self.x255 = np.empty((1, 3, ch * s, cw * s), np.float32)
        for b in (self._mb, self._ab):
            b.clear_binding_outputs()
        for name, arr in ((POOLED, self.pooled), (X255, self.x255), (MAPS, self.maps)):
            self._mb.bind_output(name, "cpu", 0, np.float32, arr.shape, arr.ctypes.data)
        self._ab.bind_input(X255, "cpu", 0, np.float32, self.x255.shape, self.x255.ctypes.data)
        self._ab.bind_input(MAPS, "cpu", 0, np.float32, self.smoothed.shape, self.smoothed.ctypes.data)
        self._shape = shape

    def run_maps(self, src) -> None:
        if src.device != "cpu":
            raise RuntimeError_(Status.UNSUPPORTED, "temporal smoothing takes host frames (numpy); GPU buffers: temporal=0")
        if self._shape != src.shape:
            self._buffers(src.shape)
        b = self._mb
        b.bind_input("image", "cpu", 0, np.uint8, src.shape, src.ptr)
        if self.backend.two_graph and self._feats_bound is not self.backend._feats:
            for name, value in zip(self.backend._feat_names, self.backend._feats):
                b.bind_ortvalue_input(name, value)
            self._feats_bound = self.backend._feats
        self.backend._run(self.maps_s, b, "full")

    def smooth(self) -> bool:
        """Blend this frame's maps; True when the scene changed (the state restarted)."""
        changed, change = self.scene(self.pooled)
        self.smoother(self.maps, change, self.smoothed)
        return changed

    def run_apply(self, src, dst) -> None:
        b = self._ab
        b.bind_input("image", "cpu", 0, np.uint8, src.shape, src.ptr)
        b.bind_output("dehazed", "cpu", 0, np.uint8, dst.shape, dst.ptr)
        self.backend._run(self.apply_s, b, "full")

    def restart(self) -> None:
        """Take this frame's maps as they are (they were recomputed after a scene change)."""
        np.copyto(self.smoothed, self.maps)
        self.smoother.state = self.maps.copy()

    def forget(self) -> None:
        """Start over (after bypassed frames): the next frame counts as a new scene."""
        self.scene.forget()
        self.smoother.reset()

    def close(self) -> None:
        self._mb = self._ab = None
        self.maps_s = self.apply_s = None


__all__ = ["split_fused", "MapSmoother", "SceneMonitor", "HazeGate", "haze_score", "cell_change", "TemporalRunner",
           "MAPS", "X255", "POOLED", "MOTION_SCALE", "CUT_THRESHOLD", "CLEAR_BELOW", "HAZY_ABOVE", "HOLD_FRAMES"]
