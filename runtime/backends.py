"""Inference backends: ONNX Runtime (TensorRT / CUDA / CPU providers) and native TensorRT.

A backend moves uint8 buffers in and out of the exported graphs and knows
nothing about frames, streams or Python objects: the :class:`Dehazer`
hands it :class:`Buffer` records (pointer, shape, device), the same
arguments a C host passes to ``eh_run``. Outputs are bound once per
(pointer, shape) so the steady state allocates nothing.

Three calls, matching the artifact's graphs:

- ``run_full(src, dst)``      image -> dehazed (the single graph)
- ``refresh_depth(src)``      image -> cached depth features (two-graph export)
- ``run_fuse(src, dst)``      image + cached features -> dehazed
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .artifact import Artifact, check_against_graph, check_graph_io, meta_from_metadata_props, validate_meta
from .engines import check_engine, cuda_device, profile_bounds
from .errors import RuntimeError_, Status

PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
PROVIDER_ALIASES = {
    "trt": "TensorrtExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider",
}
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
OPT_LEVELS = ("disable", "basic", "extended", "all")


class Buffer:
    """A uint8 NHWC buffer [1, H, W, 3] the backend reads or writes: pointer, shape, device."""

    __slots__ = ("ptr", "shape", "device", "owner")

    def __init__(self, ptr: int, shape: tuple[int, int, int, int], device: str, owner: object) -> None:
        self.ptr = ptr
        self.shape = shape
        self.device = device   # "cpu" | "cuda"
        self.owner = owner     # keeps the memory alive while bound


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise RuntimeError_(Status.BACKEND_UNAVAILABLE,
                            f"onnxruntime is not installed ({exc}); pip install onnxruntime "
                            "(or onnxruntime-gpu on a CUDA machine)") from None
    return ort


def available_providers() -> list[str]:
    """ONNX Runtime providers usable here, best first (empty when onnxruntime is missing)."""
    try:
        ort = _import_ort()
    except RuntimeError_:
        return []
    have = set(ort.get_available_providers())
    return [p for p in PROVIDER_PREFERENCE if p in have]


def resolve_provider(choice: str) -> str:
    """Map "auto"/alias/full name to an available provider or raise BACKEND_UNAVAILABLE."""
    have = available_providers()
    if choice == "auto":
        if not have:
            raise RuntimeError_(Status.BACKEND_UNAVAILABLE, "onnxruntime has no usable provider")
        return have[0]
    name = PROVIDER_ALIASES.get(choice.lower(), choice)
    if name not in PROVIDER_PREFERENCE:
        raise RuntimeError_(Status.BAD_ARGUMENT,
                            f"provider {choice!r} is unknown; use auto, trt, cuda, cpu or one of {PROVIDER_PREFERENCE}")
    if name not in have:
        hint = " (install onnxruntime-gpu with CUDA/TensorRT libraries)" if name in GPU_PROVIDERS else ""
        raise RuntimeError_(Status.BACKEND_UNAVAILABLE,
                            f"provider {name} is not available; available: {have}{hint}")
    return name


class OrtBackend:
    """ONNX Runtime sessions for the full graph, or for the depth + fuse graphs."""

    def __init__(self, artifact: Artifact, *, provider: str = "auto", threads: int = 2,
                 inter_op_threads: int = 1, spin: bool = False, graph_optimization: str = "all",
                 optimized_model_path: str | Path | None = None, device_id: int = 0,
                 two_graph: bool = False, trt_cache_dir: str | Path | None = None) -> None:
        ort = _import_ort()
        self._ort = ort
        self.provider = resolve_provider(provider)
        self.explicit = provider != "auto"
        self.device = "cuda" if self.provider in GPU_PROVIDERS else "cpu"
        self.device_id = int(device_id)
        if graph_optimization not in OPT_LEVELS:
            raise RuntimeError_(Status.BAD_ARGUMENT,
                                f"graph_optimization {graph_optimization!r} must be one of {OPT_LEVELS}")
        self._threads, self._inter, self._spin = int(threads), int(inter_op_threads), bool(spin)  # Options checked them
        self._opt_level = graph_optimization
        self._optimized_path = Path(optimized_model_path) if optimized_model_path else None
        if self._optimized_path is not None:
            check_writable(self._optimized_path, "optimized_model_path")
        self._trt_cache_dir = Path(trt_cache_dir) if trt_cache_dir else artifact.folder / "trt_cache"
        self.artifact = artifact
        self._run_options = ort.RunOptions()
        # which provider runs each node: ONNX Runtime >= 1.24 records it when asked
        # (session.record_ep_graph_assignment_info); older ones tell it in a profiled run (GPU providers only)
        self._assignment_api = has_assignment_api(ort)
        self._profile_dir = None
        if not self._assignment_api and self.device == "cuda":
            self._profile_dir = tempfile.mkdtemp(prefix="edgehaze-ort-profile-")
        self._feature_profiles: dict = {}
        self.placement: dict = {}   # role -> {provider: nodes}
        self.fallback: dict = {}    # provider -> nodes not on self.provider (all graphs)

        first = None
        if not artifact.meta:  # no sidecar: the contract comes from the ONNX metadata_props
            first = self._session("full")
            artifact.meta = meta_from_metadata_props(first.get_modelmeta().custom_metadata_map,
                                                     artifact.model_path)
        validate_meta(artifact.meta, artifact.sidecar_path or artifact.model_path)
        check_against_graph(artifact, ("full", "depth", "fuse") if two_graph else ("full",))
        if two_graph and not artifact.has_two_graph:
            raise RuntimeError_(Status.BAD_ARGUMENT,
                                f"{artifact.model_path}: depth refresh every N>1 frames needs the two-graph "
                                "export (graphs.depth + graphs.fuse + depth_features in the sidecar); re-export "
                                "with the two-graph option or use depth_every=1")
        if two_graph:
            first = self._session("depth")
        elif first is None:
            first = self._session("full")
        feats = artifact.depth_feature_names
        self.two_graph = two_graph
        if two_graph:
            if self._profiles_needed():  # the fuse graph's depth inputs need TensorRT profiles too
                self._feature_profiles = measure_feature_profiles(first, artifact.meta, feats)
            self.depth, self.fuse, self.full = first, self._session("fuse"), None
            self._check(self.depth, "depth", ["image"], feats)
            self._check(self.fuse, "fuse", ["image", *feats], ["dehazed"])
        else:
            self.full, self.depth, self.fuse = first, None, None
            self._check(self.full, "full", ["image"], ["dehazed"])
        self._placement_from_sessions()
        self.name = backend_label(self.provider, self.placement)
        self.input_shape = first.get_inputs()[0].shape  # [1, H|name, W|name, 3]
        self._bind = {s: s.io_binding() for s in (self.full, self.depth, self.fuse) if s is not None}
        self._out_key: dict = {}
        self._feat_shape = None
        self._feats: list = []
        self._feat_names = feats

    # -- sessions ---------------------------------------------------------------------------------
    def _session(self, role: str):
        ort = self._ort
        path = self.artifact.graph_path(role)
        if path is None or not path.is_file():
            raise RuntimeError_(Status.BAD_ARTIFACT, f"{path or self.artifact.model_path}: {role} graph is missing")
        so = ort.SessionOptions()
        so.intra_op_num_threads = self._threads
        so.inter_op_num_threads = self._inter
        # ORT's workers busy-wait after each op by default; on a 2-core device that spinning steals the
        # cores from the capture thread and from other sessions (measured: benchmarks/README.md)
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self._spin else "0")
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self._opt_level]
        if self._assignment_api:
            so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
        elif self._profile_dir is not None:
            so.enable_profiling = True
            so.profile_file_prefix = str(Path(self._profile_dir) / role)
        if self._optimized_path is not None:
            p = self._optimized_path
            so.optimized_model_filepath = str(p if role == "full" else p.with_name(f"{p.stem}.{role}{p.suffix}"))
        source = str(path)
        if not _utf8(source):  # a valid Linux path that is not UTF-8: onnxruntime takes UTF-8 strings only
            source = path.read_bytes()  # (the graph then cannot use external data files; edgehaze's do not)
        try:
            return ort.InferenceSession(source, so, providers=self._provider_chain(role))
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if not _is_onnx(path):
                raise RuntimeError_(Status.BAD_ARTIFACT, f"{path}: not an ONNX model ({text})") from None
            raise RuntimeError_(Status.BAD_ARTIFACT, f"{path}: onnxruntime cannot load it ({text})") from None

    def _provider_chain(self, role: str) -> list:
        """The chosen provider first, then the weaker ones for nodes it cannot take."""
        chain = list(PROVIDER_PREFERENCE[PROVIDER_PREFERENCE.index(self.provider):])
        out = []
        for name in chain:
            if name not in available_providers():
                continue
            opts: dict = {}
            if name == "CUDAExecutionProvider":
                opts = {"device_id": self.device_id}
            elif name == "TensorrtExecutionProvider":
                opts = trt_provider_options(self.artifact.meta, role, device_id=self.device_id,
                                            cache_dir=self._trt_cache_dir, ort_version=self._ort.__version__,
                                            feature_profiles=self._feature_profiles)
            out.append((name, opts))
        return out

    def _profiles_needed(self) -> bool:
        return (self.provider == "TensorrtExecutionProvider" and bool(self.artifact.meta.get("dynamic"))
                and "TensorrtExecutionProvider" in available_providers())

    def _placement_from_sessions(self) -> None:
        """Which provider each node runs on; ``self.provider`` becomes the one that runs most of the graph."""
        sessions = {r: s for r, s in (("full", self.full), ("depth", self.depth), ("fuse", self.fuse)) if s}
        if self._assignment_api:
            self.placement = {r: placement_from_assignment(s.get_provider_graph_assignment_info())
                              for r, s in sessions.items()}
        elif self._profile_dir is not None:
            self.placement = self._placement_by_profiling(sessions)
        else:  # the CPU provider on an older onnxruntime: no other provider is registered, nothing can fall back
            self.placement = {}
        total: dict = {}
        for counts in self.placement.values():
            for prov, n in counts.items():
                total[prov] = total.get(prov, 0) + n
        if total and self.provider not in total:
            if self.explicit:
                raise RuntimeError_(Status.BACKEND_UNAVAILABLE,
                                    f"asked for {self.provider} but onnxruntime assigned it no node of "
                                    f"{self.artifact.model_path.name} (nodes per provider: {total}); see its log")
            self.provider = max(total, key=lambda p: total[p])
            self.device = "cuda" if self.provider in GPU_PROVIDERS else "cpu"
        self.fallback = {p: n for p, n in total.items() if p != self.provider}

    def _placement_by_profiling(self, sessions: dict) -> dict:
        """One profiled run at the profile's ``opt`` size; ONNX Runtime's trace names each node's provider."""
        meta = self.artifact.meta
        declared = next(iter(sessions.values())).get_inputs()[0].shape  # [1, H|name, W|name, 3]
        shape = (meta.get("shape_ranges") or {}).get("opt") or [d if isinstance(d, int) else 64 for d in declared]
        image = np.zeros([int(v) for v in shape], np.uint8)
        feeds = {"image": image}
        if "depth" in sessions:
            feats = sessions["depth"].run(self._feat_names_for(meta), feeds)
            sessions["fuse"].run(["dehazed"], {**feeds, **dict(zip(self._feat_names_for(meta), feats))})
        else:
            sessions["full"].run(["dehazed"], feeds)
        out = {}
        for role, sess in sessions.items():
            trace = Path(sess.end_profiling())
            try:
                out[role] = placement_from_profile(json.loads(trace.read_text()))
            finally:
                trace.unlink(missing_ok=True)
        shutil.rmtree(self._profile_dir, ignore_errors=True)
        return out

    @staticmethod
    def _feat_names_for(meta: dict) -> list:
        return [f["name"] for f in meta.get("depth_features") or []]

    def _check(self, session, role: str, inputs: list[str], outputs: list[str]) -> None:
        io = lambda items: [(i.name, i.type, list(i.shape)) for i in items]  # noqa: E731
        check_graph_io(io(session.get_inputs()), io(session.get_outputs()),
                       self.artifact.graph_path(role), inputs, outputs)

    # -- running ----------------------------------------------------------------------------------
    def _bind_image(self, binding, src: Buffer) -> None:
        binding.bind_input("image", src.device, self.device_id if src.device == "cuda" else 0,
                           np.uint8, src.shape, src.ptr)

    def _bind_out(self, session, binding, dst: Buffer) -> None:
        key = (dst.ptr, dst.shape, dst.device)
        if self._out_key.get(id(session)) != key:  # re-bind only when the buffer or shape changes
            binding.bind_output("dehazed", dst.device, self.device_id if dst.device == "cuda" else 0,
                                np.uint8, dst.shape, dst.ptr)
            self._out_key[id(session)] = key

    def _run(self, session, binding, role: str) -> None:
        try:
            session.run_with_iobinding(binding, self._run_options)
        except Exception as exc:
            raise RuntimeError_(Status.INTERNAL,
                                f"{self.artifact.graph_path(role)}: onnxruntime failed while running "
                                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None

    def run_full(self, src: Buffer, dst: Buffer) -> None:
        b = self._bind[self.full]
        self._bind_image(b, src)
        self._bind_out(self.full, b, dst)
        self._run(self.full, b, "full")

    def refresh_depth(self, src: Buffer) -> None:
        b = self._bind[self.depth]
        self._bind_image(b, src)
        if self._feat_shape == src.shape:
            self._run(self.depth, b, "depth")  # writes into the cached feature buffers
            return
        # New frame size: let onnxruntime allocate the features once, then keep them bound as
        # the depth graph's outputs and the fuse graph's inputs until the size changes again.
        b.clear_binding_outputs()
        for name in self._feat_names:
            b.bind_output(name, self.device, self.device_id)
        self._run(self.depth, b, "depth")
        self._feats = list(b.get_outputs())
        b.clear_binding_outputs()
        fb = self._bind[self.fuse]
        for name, value in zip(self._feat_names, self._feats):
            b.bind_ortvalue_output(name, value)
            fb.bind_ortvalue_input(name, value)
        self._feat_shape = src.shape

    def run_fuse(self, src: Buffer, dst: Buffer) -> None:
        if self._feat_shape != src.shape:
            raise RuntimeError_(Status.INTERNAL, "run_fuse called before refresh_depth for this frame size")
        b = self._bind[self.fuse]
        self._bind_image(b, src)
        self._bind_out(self.fuse, b, dst)
        self._run(self.fuse, b, "fuse")

    def close(self) -> None:
        self._bind.clear()
        self._feats = []
        self.full = self.depth = self.fuse = None


def has_assignment_api(ort) -> bool:
    """ONNX Runtime >= 1.24 reports each node's provider (``get_provider_graph_assignment_info``)."""
    return hasattr(ort.InferenceSession, "get_provider_graph_assignment_info")


MEMCPY_OPS = ("MemcpyFromHost", "MemcpyToHost")  # copies ORT inserts at device borders: not compute


def backend_label(provider: str, placement: dict) -> str:
    """``onnxruntime/P`` when provider P runs every node, ``onnxruntime/P+Q`` when nodes fell back to Q."""
    used = set()
    for counts in placement.values():
        used.update(p for p, n in counts.items() if n)
    rest = [p for p in PROVIDER_PREFERENCE if p in used and p != provider]
    return "onnxruntime/" + "+".join([provider] + rest)


def placement_from_assignment(subgraphs) -> dict:
    """Nodes per provider from ``InferenceSession.get_provider_graph_assignment_info()``."""
    counts: dict = {}
    for sg in subgraphs:
        n = sum(1 for node in sg.get_nodes() if node.op_type not in MEMCPY_OPS)
        if n:
            counts[sg.ep_name] = counts.get(sg.ep_name, 0) + n
    return counts


def placement_from_profile(events: list) -> dict:
    """Nodes per provider from an ONNX Runtime profiling trace (``*_kernel_time`` events of category Node).

    A TensorRT-provider subgraph appears as one fused node, so counts are
    kernels run, not ONNX nodes; what matters is whether any other
    provider ran something.
    """
    seen: dict = {}
    for ev in events:
        args = ev.get("args") or {}
        if ev.get("cat") != "Node" or not str(ev.get("name", "")).endswith("_kernel_time") or "provider" not in args:
            continue
        if args.get("op_name") in MEMCPY_OPS:
            continue
        seen[ev["name"]] = args["provider"]
    counts: dict = {}
    for prov in seen.values():
        counts[prov] = counts.get(prov, 0) + 1
    return counts


def _dims(shape) -> str:
    return "x".join(str(int(v)) for v in shape)


def trt_provider_options(meta: dict, role: str, *, device_id: int, cache_dir: "str | Path", ort_version: str,
                         feature_profiles: "dict | None" = None) -> dict:
    """ONNX Runtime TensorRT provider options for graph ``role`` of an artifact.

    Precision from the sidecar (``int8``: ``trt_int8_enable`` for the
    graph's Q/DQ nodes, no calibration table, with fp16 for the float
    parts); engine and timing caches in ``cache_dir``; explicit
    optimisation profiles (``trt_profile_{min,opt,max}_shapes``, format
    ``name:1x480x640x3,other:...``) for *every* dynamic input, which ONNX
    Runtime requires once any is given: ``image`` from ``shape_ranges`` and,
    for the fuse graph, the depth features (``feature_profiles``:
    name -> {min, opt, max}).
    """
    precision = meta.get("precision")
    opts = {"device_id": int(device_id), "trt_fp16_enable": precision in ("fp16", "int8"),
            "trt_int8_enable": precision == "int8",
            "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir),
            "trt_timing_cache_enable": True}
    if _version_tuple(ort_version) >= (1, 17):  # trt_timing_cache_path exists since 1.17; before, the engine cache dir
        opts["trt_timing_cache_path"] = str(cache_dir)
    ranges = meta.get("shape_ranges")
    if not (meta.get("dynamic") and ranges):
        return opts  # static shapes: TensorRT needs no profile
    shapes = {"image": {k: ranges[k] for k in ("min", "opt", "max")}}
    if role == "fuse":
        names = [f["name"] for f in meta.get("depth_features") or []]
        missing = [n for n in names if n not in (feature_profiles or {})]
        if missing:
            raise RuntimeError_(Status.INTERNAL, f"no TensorRT profile for the fuse graph's inputs {missing}")
        shapes.update({n: feature_profiles[n] for n in names})
    for key in ("min", "opt", "max"):
        opts[f"trt_profile_{key}_shapes"] = ",".join(f"{n}:{_dims(s[key])}" for n, s in shapes.items())
    return opts


def measure_feature_profiles(depth_session, meta: dict, names: list) -> dict:
    """Depth-feature shapes at the ``image`` profile's min/opt/max, measured by running the depth graph.

    The features' spatial size follows the depth branch's own resizing
    (a teacher resizes to its patch grid), so it is measured, not derived.
    A sidecar that states them is read instead and nothing runs:
    ``profiles.fuse`` (``edgehaze export`` measures them at the same
    ``image`` sizes) when its ``image`` entry is still ``shape_ranges``, or
    ``depth_features[i].shape_ranges``.
    """
    ranges = meta["shape_ranges"]
    recorded = (meta.get("profiles") or {}).get("fuse") or {}
    same_image = all(list(map(int, (recorded.get("image") or {}).get(k) or [])) == [int(v) for v in ranges[k]]
                     for k in ("min", "opt", "max"))
    if names and same_image and all(all(k in (recorded.get(n) or {}) for k in ("min", "opt", "max")) for n in names):
        return {n: {k: [int(v) for v in recorded[n][k]] for k in ("min", "opt", "max")} for n in names}
    declared = {f["name"]: f.get("shape_ranges") for f in meta.get("depth_features") or []}
    if names and all(declared.get(n) for n in names):
        return {n: declared[n] for n in names}
    out: dict = {n: {} for n in names}
    for key in ("min", "opt", "max"):
        feats = depth_session.run(names, {"image": np.zeros([int(v) for v in ranges[key]], np.uint8)})
        for n, f in zip(names, feats):
            out[n][key] = list(f.shape)
    return out


def _version_tuple(text: str) -> tuple:
    parts = []
    for piece in str(text).split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # os.fsdecode's surrogate escapes of undecodable bytes
        return False
    return True


def check_writable(path: Path, option: str) -> None:
    """IO naming ``option`` when ``path`` cannot be written (missing or unwritable folder, a folder at the
    path, a path onnxruntime cannot take): before onnxruntime, whose own error blames the model."""
    path = Path(path)
    if not _utf8(str(path)):
        raise RuntimeError_(Status.BAD_ARGUMENT, f"{option} {path!s}: onnxruntime writes UTF-8 paths only; "
                                                 "choose a UTF-8 path")
    folder = path.parent
    if path.is_dir():
        raise RuntimeError_(Status.IO, f"{option} {path}: is a folder; give a file path (e.g. {path / 'opt.onnx'})")
    if not folder.is_dir():
        raise RuntimeError_(Status.IO, f"{option} {path}: folder {folder} does not exist (or is not a folder); "
                                       "create it or choose another path")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".edgehaze-write-probe-")
    except OSError as exc:
        raise RuntimeError_(Status.IO, f"{option} {path}: cannot write in {folder} ({exc.strerror}); choose a "
                                       "writable folder") from None
    os.close(fd)
    os.unlink(probe)


def _is_onnx(path: Path) -> bool:
    """Cheap sniff: an ONNX ModelProto starts with field 1 (ir_version, varint: byte 0x08)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x08


class TensorRTBackend:
    """A serialized TensorRT engine (``NAME.engine``) run through the official ``tensorrt`` API.

    GPU only; ``tensorrt`` and ``cuda-python`` are imported lazily so the
    runtime imports without them. Host buffers are staged through device
    buffers allocated once per frame size; ``__cuda_array_interface__``
    buffers are used in place. The engine must have been built from the
    artifact's full graph (uint8 ``image`` -> uint8 ``dehazed``) with an
    optimisation profile covering the frame sizes used.
    """

    device = "cuda"

    def __init__(self, artifact: Artifact, *, device_id: int = 0, **_ignored) -> None:
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise RuntimeError_(Status.BACKEND_UNAVAILABLE,
                                f"{artifact.model_path}: the tensorrt Python package is not installed ({exc}); "
                                "it ships with JetPack / `pip install tensorrt` on an NVIDIA GPU machine, "
                                "or run the .onnx with provider=trt/cuda/cpu") from None
        try:
            try:
                from cuda.bindings import runtime as cudart
            except ImportError:
                from cuda import cudart  # cuda-python < 12.6
        except ImportError as exc:
            raise RuntimeError_(Status.BACKEND_UNAVAILABLE,
                                f"cuda-python is needed to run TensorRT engines ({exc}); pip install cuda-python") from None
        validate_meta(artifact.meta, artifact.sidecar_path or artifact.model_path)
        self._trt, self._cudart, self.device_id = trt, cudart, int(device_id)
        self.artifact = artifact
        self.two_graph = False
        self._cuda(cudart.cudaSetDevice(self.device_id))
        # refuse an engine of another TensorRT / GPU before TensorRT tries to deserialise it
        cc, _ = cuda_device(self.device_id)
        self.engine_block = check_engine(artifact.model_path, artifact.meta, str(trt.__version__), cc)
        self.shape_bounds = profile_bounds(self.engine_block)
        logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(logger)
        engine = self._runtime.deserialize_cuda_engine(artifact.model_path.read_bytes())
        if engine is None:
            onnx = artifact.folder / str((artifact.meta.get("graphs") or {}).get("full", "MODEL.onnx"))
            raise RuntimeError_(Status.BAD_ARTIFACT,
                                f"{artifact.model_path}: TensorRT {trt.__version__} cannot deserialize this engine "
                                "(built by another TensorRT version or for another GPU?); rebuild it on this device "
                                f"with: python runtime/build_engine.py {onnx}")
        self._engine = engine
        io = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            typ = "tensor(uint8)" if engine.get_tensor_dtype(name) == trt.DataType.UINT8 else str(
                engine.get_tensor_dtype(name))
            shape = [d if d >= 0 else None for d in engine.get_tensor_shape(name)]
            io.append((name, typ, shape, engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT))
        check_graph_io([x[:3] for x in io if x[3]], [x[:3] for x in io if not x[3]],
                       artifact.model_path, ["image"], ["dehazed"])
        self.input_shape = next(x[2] for x in io if x[0] == "image")
        self._context = engine.create_execution_context()
        self._stream = self._cuda(cudart.cudaStreamCreate())
        self._staging: dict[str, tuple] = {}  # name -> (shape, device pointer)
        self.name = "tensorrt"

    def _cuda(self, result):
        err = result[0] if isinstance(result, tuple) else result
        if int(err) != 0:
            raise RuntimeError_(Status.INTERNAL, f"CUDA call failed: {err}")
        return result[1] if isinstance(result, tuple) and len(result) > 1 else None

    def _device_ptr(self, name: str, buf: Buffer) -> int:
        if buf.device == "cuda":
            return buf.ptr
        shape, ptr = self._staging.get(name, (None, None))
        if shape != buf.shape:
            if ptr is not None:
                self._cuda(self._cudart.cudaFree(ptr))
            ptr = self._cuda(self._cudart.cudaMalloc(int(np.prod(buf.shape))))
            self._staging[name] = (buf.shape, ptr)
        return int(ptr)

    def run_full(self, src: Buffer, dst: Buffer) -> None:
        cudart, nbytes = self._cudart, int(np.prod(src.shape))
        d_in, d_out = self._device_ptr("image", src), self._device_ptr("dehazed", dst)
        if src.device == "cpu":
            self._cuda(cudart.cudaMemcpyAsync(d_in, src.ptr, nbytes,
                                              cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream))
        if not self._context.set_input_shape("image", src.shape):
            raise RuntimeError_(Status.SHAPE, f"{self.artifact.model_path}: engine profile does not accept {src.shape}")
        self._context.set_tensor_address("image", d_in)
        self._context.set_tensor_address("dehazed", d_out)
        if not self._context.execute_async_v3(self._stream):
            raise RuntimeError_(Status.INTERNAL, f"{self.artifact.model_path}: TensorRT execution failed")
        if dst.device == "cpu":
            self._cuda(cudart.cudaMemcpyAsync(dst.ptr, d_out, nbytes,
                                              cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._stream))
        self._cuda(cudart.cudaStreamSynchronize(self._stream))

    def refresh_depth(self, src: Buffer) -> None:  # pragma: no cover - engines are full-graph only
        raise RuntimeError_(Status.UNSUPPORTED, "TensorRT engines run the full graph only")

    run_fuse = refresh_depth

    def close(self) -> None:
        for _, ptr in self._staging.values():
            self._cudart.cudaFree(ptr)
        self._staging.clear()
        self._context = self._engine = None


def open_backend(artifact: Artifact, *, two_graph: bool, **options):
    """Pick the backend from the artifact kind (``.engine`` -> TensorRT, ``.onnx`` -> ONNX Runtime)."""
    if artifact.kind == "engine":
        if two_graph:  # checked before tensorrt is imported: the request is wrong on every machine
            raise RuntimeError_(Status.BAD_ARGUMENT,
                                f"{artifact.model_path}: depth_every > 1 needs the two-graph ONNX export; a TensorRT "
                                "engine runs the full graph only. Use depth_every=1 with the engine, or run the "
                                f"ONNX artifact ({(artifact.meta.get('graphs') or {}).get('full', 'NAME.onnx')}) with "
                                "provider=trt for depth refresh every N frames")
        return TensorRTBackend(artifact, device_id=options.get("device_id", 0))
    return OrtBackend(artifact, two_graph=two_graph, **options)
