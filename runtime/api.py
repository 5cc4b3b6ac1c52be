"""The runtime API: ``create`` / ``run`` / ``close`` and the :class:`Dehazer` they wrap.

The three functions mirror the C contract in README.md (``eh_create``,
``eh_run``, ``eh_close``) so a C/C++ host and a Python host behave alike on
the same artifact. Frames are uint8 [H, W, 3] C-contiguous buffers in the
artifact's ``channel_order``; all maths happens inside the graph.

Passing ``out`` (a uint8 [H, W, 3] array you keep) makes ``run`` allocate
nothing in the steady state: the output buffer is bound to the backend once
and re-bound only when its address or the frame size changes.
A :class:`Dehazer` is not thread-safe; use one per thread.
"""
from __future__ import annotations

import numbers
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from .artifact import Artifact, resolve
from .backends import Buffer, open_backend
from .errors import RuntimeError_, Status
from .temporal import HazeGate, TemporalRunner


@dataclass
class Options:
    """``eh_options``: how to run an artifact (every field has a sane default)."""

    provider: str = "auto"            # auto | trt | cuda | cpu | full ORT provider name
    threads: int = 2                  # ORT intra-op threads (0 = ORT default: all cores)
    inter_op_threads: int = 1
    spin: bool = False                # ORT worker threads busy-wait between ops (see runtime/README.md)
    graph_optimization: str = "all"   # disable | basic | extended | all
    optimized_model_path: str | None = None  # save ORT's optimised graph here (depth/fuse get .depth/.fuse)
    depth_every: int = 1              # refresh depth features every N frames (N>1 needs the two-graph export)
    device_id: int = 0
    trt_cache_dir: str | None = None  # ORT TensorRT provider engine cache (default: ARTIFACT_DIR/trt_cache)
    temporal: float = 0.0             # causal smoothing of the low-res maps, strength in [0, 1) (0 = off, bit-exact)
    bypass: bool = False              # pass clear frames (dark-channel haze score, hysteresis) through unchanged

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse a wrong type or an out-of-range value (BAD_ARGUMENT) instead of coercing it.

        The C API builds its ``Options`` through here too, so both APIs give
        the same message for the same value. Thread counts are bounded by
        :func:`max_threads`: ONNX Runtime tries to start any number it is
        given (100000 threads hang ``create``).
        """
        for name in ("provider", "graph_optimization"):
            _check_str(name, getattr(self, name))
        for name in ("optimized_model_path", "trt_cache_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise RuntimeError_(Status.BAD_ARGUMENT, f"option {name} must be a path (str) or None, "
                                                         f"got {type(value).__name__} {value!r}")
        top = max_threads()
        for name in ("threads", "inter_op_threads"):
            _check_int(name, getattr(self, name), 0, top,
                       f"0 = onnxruntime's default, at most 4 x the {os.cpu_count() or 1} cores here")
        _check_int("depth_every", self.depth_every, 1, None, "")
        _check_int("device_id", self.device_id, 0, None, "")
        for name in ("spin", "bypass"):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise RuntimeError_(Status.BAD_ARGUMENT, f"option {name} must be True or False (C: 0 or 1), got "
                                                         f"{type(value).__name__} {value!r}")
        t = self.temporal
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, numbers.Real) or not 0.0 <= t < 1.0:
            raise RuntimeError_(Status.BAD_ARGUMENT, f"temporal must be a strength in [0, 1), got {t!r}")

    @classmethod
    def coerce(cls, options: "Options | dict | None") -> "Options":
        if options is None:
            return cls()
        if isinstance(options, cls):
            options.validate()  # fields may have been assigned after construction
            return options
        if isinstance(options, dict):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(options) - known)
            if unknown:
                raise RuntimeError_(Status.BAD_ARGUMENT, f"unknown option(s) {unknown}; known: {sorted(known)}")
            return cls(**options)
        raise RuntimeError_(Status.BAD_ARGUMENT, f"options must be Options, dict or None, got {type(options).__name__}")


def max_threads() -> int:
    """The most ``threads`` / ``inter_op_threads`` accepted: 4 x ``os.cpu_count()``.

    Above the core count threads only contend; the bound is there so a
    typo (``threads=100000``) is refused at once instead of hanging.
    """
    return 4 * (os.cpu_count() or 1)


def _check_str(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise RuntimeError_(Status.BAD_ARGUMENT, f"option {name} must be a string, got {type(value).__name__} "
                                                 f"{value!r}")


def _check_int(name: str, value: Any, lo: int, hi: "int | None", note: str) -> None:
    """An integer in [lo, hi]: bools, floats and strings are refused, never converted."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    if ok and lo <= value and (hi is None or value <= hi):
        return
    bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
    what = f"{type(value).__name__} {value!r}" if not ok else repr(value)
    raise RuntimeError_(Status.BAD_ARGUMENT, f"option {name} must be an integer {bound}"
                                             f"{f' ({note})' if note else ''}, got {what}")


class Dehazer:
    """An opened artifact: ``Dehazer(path, options).run(frame, out)``.

    Attributes a host may read: ``backend_name`` (which backend/provider
    really runs), ``channel_order`` (the order frames must be in), ``meta``
    (the sidecar), ``depth_every``, ``frames`` and ``depth_refreshes``.
    """

    def __init__(self, artifact_path: str | Path, options: Options | dict | None = None) -> None:
        self.options = Options.coerce(options)  # validated: types and bounds
        n = int(self.options.depth_every)
        # from a folder or sidecar, "auto" takes an engine built here by runtime/build_engine.py when one
        # matches this TensorRT and GPU; depth refresh and video smoothing need the ONNX graphs
        prefer_engine = self.options.provider == "auto" and n == 1 and not self.options.temporal
        self.artifact: Artifact = resolve(artifact_path, prefer_engine=prefer_engine)
        kw = asdict(self.options)
        kw.pop("depth_every")
        temporal, bypass = kw.pop("temporal"), kw.pop("bypass")
        self._backend = open_backend(self.artifact, two_graph=n > 1, **kw)
        self.backend_name: str = self._backend.name
        # ONNX Runtime: {graph role: {provider: nodes}} and the nodes not on the main provider (empty: none)
        self.node_providers: dict = getattr(self._backend, "placement", {})
        self.fallback: dict = getattr(self._backend, "fallback", {})
        self.device: str = self._backend.device
        self.meta: dict = self.artifact.meta
        self.channel_order: str = self.artifact.channel_order
        self.depth_every = n
        self.frames = 0
        self.depth_refreshes = 0
        self._since_refresh = n  # forces a refresh on the first frame
        self._fixed_hw = self._fixed_size()
        ranges = self.meta.get("shape_ranges") or {}
        lo, hi = ranges.get("min"), ranges.get("max")
        bounds = getattr(self._backend, "shape_bounds", None)  # an engine's own profile, from its engine block
        if bounds:
            lo, hi = bounds
        self._min_hw = (int(lo[1]), int(lo[2])) if lo else None
        # the maximum is a TensorRT optimisation-profile bound; ONNX Runtime runs a dynamic graph at any
        # size (a portrait 1080x1920 or a 4K frame), so only TensorRT-backed runs are held to it
        self._max_hw = (int(hi[1]), int(hi[2])) if hi and "tensorrt" in self.backend_name.lower() else None
        self._closed = False
        # video mode (runtime/temporal.py): map smoothing spliced into the graph, and the clear-frame gate
        self._temporal: TemporalRunner | None = None
        self.set_temporal(temporal)
        self._gate = HazeGate() if bypass else None
        self.scene_cuts = 0

    def set_temporal(self, strength: float) -> None:
        """Switch video smoothing on (``0 < strength < 1``) or off (0) on an open handle; the next frame starts over.

        Raises like the ``temporal`` option where the backend cannot smooth
        (a TensorRT ``.engine``: UNSUPPORTED; no ``onnx`` package:
        BACKEND_UNAVAILABLE; not an edge-* fused graph: UNSUPPORTED), and
        then leaves the handle as it was: ``runtime/stream.py``'s default
        tries smoothing this way and streams per frame when it is refused.
        """
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength < 1.0:
            raise RuntimeError_(Status.BAD_ARGUMENT, f"temporal must be a strength in [0, 1), got {strength!r}")
        if self._closed:
            raise RuntimeError_(Status.CLOSED, "set_temporal() on a closed handle")
        runner = TemporalRunner(self._backend, float(strength)) if strength > 0 else None
        if self._temporal is not None:
            self._temporal.close()
        self._temporal = runner
        self.options = replace(self.options, temporal=float(strength))

    # -- properties ---------------------------------------------------------------------------------
    @property
    def fixed_size(self) -> tuple[int, int] | None:
        """(H, W) when the artifact was exported for one frame size, else None."""
        return self._fixed_hw

    def _fixed_size(self) -> tuple[int, int] | None:
        shape = list(self._backend.input_shape)
        if isinstance(shape[1], int) and isinstance(shape[2], int) and shape[1] > 0 and shape[2] > 0:
            return int(shape[1]), int(shape[2])
        return None

    # -- running ------------------------------------------------------------------------------------
    def run(self, frame: Any, out: Any = None) -> Any:
        """Dehaze one uint8 [H, W, 3] frame into ``out`` (allocated when None) and return ``out``."""
        if self._closed:
            raise RuntimeError_(Status.CLOSED, "run() on a closed handle")
        src = self._buffer(frame, "frame", writable=False)
        h, w = src.shape[1], src.shape[2]
        self._check_size(h, w)
        if out is None:
            if src.device != "cpu":
                raise RuntimeError_(Status.BAD_ARGUMENT,
                                    "a GPU frame needs a GPU `out` buffer (__cuda_array_interface__) of the same shape")
            out = np.empty((h, w, 3), np.uint8)
        dst = self._buffer(out, "out", writable=True)
        if dst.shape != src.shape:
            raise RuntimeError_(Status.SHAPE, f"out has shape {dst.shape[1:]}, frame needs ({h}, {w}, 3)")
        if self._gate is not None and src.device == "cpu" and self._gate(src.owner.reshape(src.shape[1:])):
            np.copyto(dst.owner.reshape(dst.shape[1:]), src.owner.reshape(src.shape[1:]))  # clear: unchanged
            if self._temporal is not None:
                self._temporal.forget()
        elif self._temporal is not None:
            self._run_temporal(src, dst)
        elif self._backend.two_graph:
            self._refresh_if_due(src)
            self._backend.run_fuse(src, dst)
        else:
            self._backend.run_full(src, dst)
        self.frames += 1
        return out

    __call__ = run

    def _refresh_if_due(self, src: Buffer, force: bool = False) -> bool:
        """Depth features for this frame: refreshed every ``depth_every`` frames, on a new size or when forced."""
        due = force or self._since_refresh >= self.depth_every or self._backend._feat_shape != src.shape
        if due:
            self._backend.refresh_depth(src)
            self._since_refresh = 0
            self.depth_refreshes += 1
        self._since_refresh += 1
        return due

    def _run_temporal(self, src: Buffer, dst: Buffer) -> None:
        """One run of the smoothing graph; a scene change also refreshes held depth features (then runs again)."""
        t = self._temporal
        refreshed = self._refresh_if_due(src) if self._backend.two_graph else False
        new_scene = t.run(src, dst)
        self.scene_cuts = t.cuts
        if new_scene and self._backend.two_graph and not refreshed:  # held features belong to the old scene
            self._refresh_if_due(src, force=True)
            t.run(src, dst, restart=True)
            t.resets -= 1  # one frame, one restart

    def refresh_depth_next(self) -> None:
        """Make the next ``run`` recompute the depth features (e.g. after a scene cut)."""
        self._since_refresh = self.depth_every

    def _check_size(self, h: int, w: int) -> None:
        if self._fixed_hw is not None and (h, w) != self._fixed_hw:
            raise RuntimeError_(Status.SHAPE,
                                f"{self.artifact.model_path.name} was exported for {self._fixed_hw[1]}x"
                                f"{self._fixed_hw[0]} (WxH) frames, got {w}x{h}; resize or export dynamic")
        lo, hi = self._min_hw, self._max_hw
        if lo and not (lo[0] <= h and lo[1] <= w):
            raise RuntimeError_(Status.SHAPE, f"frame {w}x{h} (WxH) is below the artifact's minimum {lo[1]}x{lo[0]}")
        if hi and not (h <= hi[0] and w <= hi[1]):
            raise RuntimeError_(Status.SHAPE, f"frame {w}x{h} (WxH) is above the TensorRT profile's maximum "
                                              f"{hi[1]}x{hi[0]} (shape_ranges.max in the sidecar); resize frames "
                                              "to fit or run the ONNX graph")

    def _buffer(self, obj: Any, what: str, *, writable: bool) -> Buffer:
        """Describe a caller buffer without copying it; reject anything that is not uint8 HxWx3 C-contiguous."""
        if isinstance(obj, np.ndarray) or (hasattr(obj, "__array_interface__")
                                           and not hasattr(obj, "__cuda_array_interface__")):
            arr = obj if isinstance(obj, np.ndarray) else np.asarray(obj)
            iface = arr.__array_interface__
            shape = arr.shape
            if arr.dtype != np.uint8:
                raise RuntimeError_(Status.BAD_ARGUMENT, f"{what} must be uint8, got {arr.dtype}")
            if not arr.flags.c_contiguous:
                raise RuntimeError_(Status.BAD_ARGUMENT,
                                    f"{what} must be C-contiguous (np.ascontiguousarray(...) it once)")
            if writable and not arr.flags.writeable:
                raise RuntimeError_(Status.BAD_ARGUMENT, f"{what} is read-only")
            return Buffer(iface["data"][0], self._nhwc(shape, what), "cpu", arr)
        cuda = getattr(obj, "__cuda_array_interface__", None)
        if cuda is not None:
            if self.device != "cuda":
                raise RuntimeError_(Status.UNSUPPORTED,
                                    f"{what} is GPU memory (__cuda_array_interface__) but the backend "
                                    f"{self.backend_name} runs on the CPU; pass a host array or use "
                                    "provider=cuda/trt or a .engine")
            if cuda.get("typestr") != "|u1":
                raise RuntimeError_(Status.BAD_ARGUMENT, f"{what} must be uint8, got {cuda.get('typestr')}")
            shape = tuple(cuda["shape"])
            strides = cuda.get("strides")
            if strides is not None and tuple(strides) != _c_strides(shape):
                raise RuntimeError_(Status.BAD_ARGUMENT, f"{what} (GPU) must be C-contiguous")
            ptr, readonly = cuda["data"]
            if writable and readonly:
                raise RuntimeError_(Status.BAD_ARGUMENT, f"{what} (GPU) is read-only")
            return Buffer(int(ptr), self._nhwc(shape, what), "cuda", obj)
        raise RuntimeError_(Status.BAD_ARGUMENT,
                            f"{what} must be a numpy array or expose __array_interface__ "
                            f"(or __cuda_array_interface__ on GPU backends), got {type(obj).__name__}")

    @staticmethod
    def _nhwc(shape: tuple, what: str) -> tuple[int, int, int, int]:
        if len(shape) == 4 and shape[0] == 1:
            shape = shape[1:]
        if len(shape) != 3 or shape[2] != 3:
            raise RuntimeError_(Status.SHAPE, f"{what} must be [H, W, 3] (or [1, H, W, 3]), got {list(shape)}")
        if shape[0] < 1 or shape[1] < 1:
            raise RuntimeError_(Status.SHAPE, f"{what} is empty: {list(shape)}")
        return (1, int(shape[0]), int(shape[1]), 3)

    # -- lifetime -----------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the sessions/engine; further ``run`` calls raise CLOSED. Idempotent."""
        if not self._closed:
            if self._temporal is not None:
                self._temporal.close()
            self._backend.close()
            self._closed = True

    def __enter__(self) -> "Dehazer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Dehazer({self.artifact.model_path.name!r}, backend={self.backend_name!r}, "
                f"channel_order={self.channel_order!r}, depth_every={self.depth_every})")


def _c_strides(shape: tuple) -> tuple:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d
    return tuple(reversed(strides))


def create(artifact_path: str | Path, options: Options | dict | None = None) -> Dehazer:
    """``eh_create``: open an artifact, or a shipped model by name (``"edgehaze-s"``, ``"edgehaze-s@1080"``).

    A bare word naming no file is looked up in ``runtime/models/manifest.json``
    (runtime/zoo.py: files checked by sha256, variant chosen by frame size);
    paths keep working and win over names. The handle reports ``handle.backend_name``.
    """
    from .zoo import ModelDehazer, looks_like_name

    if looks_like_name(artifact_path):
        return ModelDehazer(artifact_path, options)
    return Dehazer(artifact_path, options)


def run(handle: Dehazer, frame: Any, out: Any = None) -> Any:
    """``eh_run``: dehaze ``frame`` (uint8 HxWx3) into ``out`` and return it."""
    if not isinstance(handle, Dehazer):
        raise RuntimeError_(Status.BAD_ARGUMENT, f"handle must come from create(), got {type(handle).__name__}")
    return handle.run(frame, out)


def close(handle: Dehazer) -> None:
    """``eh_close``: release a handle (idempotent)."""
    if not isinstance(handle, Dehazer):
        raise RuntimeError_(Status.BAD_ARGUMENT, f"handle must come from create(), got {type(handle).__name__}")
    handle.close()
