"""Find and validate an exported artifact (contract v1: see README.md).

An artifact is ``NAME.onnx`` (or ``NAME.engine``) plus the sidecar
``NAME.json``; the same keys live in the ONNX ``metadata_props`` so a lone
``.onnx`` still carries its contract. This module only reads files and
checks the declared contract; the graph's real inputs are checked by the
backend once a session exists (:func:`check_graph_io`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .engines import PRECISIONS, capability_text, cuda_device, describe_engines, select_engine, sidecar_for_engine
from .errors import RuntimeError_, Status
from .onnx_meta import decode_props, read_onnx_facts

FORMAT = "edgehaze-artifact"
SUPPORTED_VERSION = 1
CHANNEL_ORDERS = ("RGB", "BGR")


@dataclass
class Artifact:
    """Where an artifact's files are and what its sidecar says."""

    model_path: Path                 # NAME.onnx or NAME.engine (the "full" graph)
    kind: str                        # "onnx" | "engine"
    sidecar_path: Path | None        # None: metadata came from the ONNX metadata_props
    meta: dict = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.model_path.parent

    @property
    def channel_order(self) -> str:
        return self.meta["input"]["channel_order"]

    @property
    def depth_feature_names(self) -> list[str]:
        return [f["name"] for f in self.meta.get("depth_features") or []]

    def graph_path(self, role: str) -> Path | None:
        """Path of graph ``role`` ("full", "depth", "fuse"), None when not exported."""
        if role == "full":
            return self.model_path
        name = (self.meta.get("graphs") or {}).get(role)
        return self.folder / name if name else None

    @property
    def has_two_graph(self) -> bool:
        """True when the depth and fuse graphs are declared and present on disk."""
        if self.kind != "onnx":
            return False
        paths = [self.graph_path("depth"), self.graph_path("fuse")]
        return all(p is not None and p.is_file() for p in paths) and bool(self.depth_feature_names)


def resolve(artifact_path: str | Path, prefer_engine: bool = False) -> Artifact:
    """Locate the model file and sidecar from a path to ``.onnx``/``.engine``/``.json``, a stem or a folder.

    From a sidecar or a folder, ``prefer_engine`` picks a TensorRT engine
    recorded in the sidecar's ``engines`` (runtime/engines.py) when one was
    built by this device's TensorRT for this GPU; otherwise the ONNX graph.
    A sidecar whose ONNX graph is absent falls back to its engines.
    """
    if not isinstance(artifact_path, (str, Path)) or str(artifact_path) == "":
        raise RuntimeError_(Status.BAD_ARGUMENT, f"artifact_path must be a path, got {artifact_path!r}")
    path = Path(artifact_path)
    if path.is_dir():
        sidecars = [p for p in sorted(path.glob("*.json")) if _looks_like_sidecar(p)]
        models = [p for p in sorted(path.glob("*.onnx")) if p.name.count(".") == 1]
        engines = sorted(path.glob("*.engine"))
        if len(sidecars) == 1:
            path = sidecars[0]
        elif len(models) == 1:
            path = models[0]
        elif len(engines) == 1:
            path = engines[0]
        else:
            raise RuntimeError_(Status.BAD_ARTIFACT,
                                f"{path}: folder holds {len(sidecars)} sidecars and {len(models)} .onnx files; "
                                "pass the artifact file (NAME.onnx, NAME.engine or NAME.json) instead")
    suffix = path.suffix.lower()
    if suffix == ".json":
        meta = _read_sidecar(path)
        full = (meta.get("graphs") or {}).get("full")
        if not full:
            raise RuntimeError_(Status.BAD_ARTIFACT, f"{path}: sidecar has no graphs.full entry")
        model = path.parent / full
        if meta.get("engines") and (prefer_engine or not model.is_file()):
            engine = _recorded_engine(meta, path, required=not model.is_file())
            if engine is not None:
                return Artifact(engine, "engine", path, meta)
        if not model.is_file():
            engine = path.with_suffix(".engine")
            if engine.is_file():
                return Artifact(engine, "engine", path, meta)
            raise RuntimeError_(Status.BAD_ARTIFACT, f"{model}: graph named by sidecar {path.name} does not exist")
        return Artifact(model, "engine" if model.suffix == ".engine" else "onnx", path, meta)
    if suffix not in (".onnx", ".engine"):
        for cand in (path.with_name(path.name + ".onnx"), path.with_name(path.name + ".engine")):
            if cand.is_file():
                path, suffix = cand, cand.suffix
                break
    if not path.is_file():
        raise RuntimeError_(Status.BAD_ARTIFACT,
                            f"{path}: artifact not found (expected NAME.onnx, NAME.engine, NAME.json or a folder)")
    kind = "engine" if suffix == ".engine" else "onnx"
    sidecar = sidecar_for_engine(path) if kind == "engine" else path.with_suffix(".json")
    if sidecar.is_file():
        return Artifact(path, kind, sidecar, _read_sidecar(sidecar))
    if kind == "engine":
        raise RuntimeError_(Status.BAD_ARTIFACT,
                            f"{path}: a TensorRT engine needs its sidecar {sidecar.name} next to it")
    return Artifact(path, kind, None, {})  # metadata read from the ONNX by the backend


def _local_tensorrt() -> "tuple[str, tuple[int, int]] | None":
    """(TensorRT version, GPU compute capability) here, None without tensorrt or a GPU."""
    try:
        import tensorrt as trt
    except ImportError:
        return None
    try:
        cc, _ = cuda_device(0)
    except RuntimeError_:
        return None
    return str(trt.__version__), cc


def _recorded_engine(meta: dict, sidecar: Path, *, required: bool) -> Path | None:
    """The sidecar's engine that runs here; when the ONNX graph is absent (``required``) also the reason none does."""
    local = _local_tensorrt()
    if local is not None:
        found = select_engine(meta, sidecar.parent, *local)
        if found is not None or not required:
            return found
        raise RuntimeError_(Status.BAD_ARTIFACT,
                            f"{sidecar}: no ONNX graph and no engine built for TensorRT {local[0]} on compute "
                            f"capability {capability_text(local[1])} (recorded: {describe_engines(meta)}); copy "
                            f"the ONNX graph here and run python runtime/build_engine.py on it")
    if not required:
        return None
    present = [sidecar.parent / n for n in sorted(meta["engines"]) if (sidecar.parent / n).is_file()]
    return present[0] if present else None  # the backend then says what is missing (tensorrt / CUDA)


def _looks_like_sidecar(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _read_sidecar(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except OSError as exc:
        raise RuntimeError_(Status.BAD_ARTIFACT, f"{path}: cannot read sidecar ({exc.strerror})") from None
    except ValueError as exc:
        raise RuntimeError_(Status.BAD_ARTIFACT, f"{path}: sidecar is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise RuntimeError_(Status.BAD_ARTIFACT, f"{path}: sidecar must be a JSON object")
    return meta


def meta_from_metadata_props(props: dict[str, str], source: Path) -> dict:
    """Decode ONNX ``metadata_props`` (each value JSON-encoded) into a sidecar dict."""
    if "format" not in props:
        raise RuntimeError_(Status.BAD_ARTIFACT,
                            f"{source}: no sidecar {source.with_suffix('.json').name} and no edgehaze "
                            "metadata_props in the ONNX file; re-export with `edgehaze export`")
    return decode_props(props)


def validate_meta(meta: dict, source: Path) -> None:
    """Check the declared contract: format/version, uint8 NHWC 3-channel ``image`` -> ``dehazed``."""
    if meta.get("format") != FORMAT:
        raise RuntimeError_(Status.BAD_ARTIFACT, f"{source}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    version = meta.get("version")
    if version != SUPPORTED_VERSION:
        raise RuntimeError_(Status.BAD_ARTIFACT,
                            f"{source}: artifact contract version {version!r}; this runtime reads version "
                            f"{SUPPORTED_VERSION} (update the runtime or re-export)")
    for role, name in (("input", "image"), ("output", "dehazed")):
        spec = meta.get(role)
        if not isinstance(spec, dict):
            raise RuntimeError_(Status.BAD_ARTIFACT, f"{source}: sidecar has no '{role}' object")
        wrong = {k: spec.get(k) for k, v in (("name", name), ("dtype", "uint8"), ("layout", "NHWC"))
                 if spec.get(k) != v}
        if wrong:
            raise RuntimeError_(Status.BAD_ARTIFACT,
                                f"{source}: {role} contract {wrong} differs from name={name!r}, dtype='uint8', "
                                "layout='NHWC'")
        if spec.get("channel_order") not in CHANNEL_ORDERS:
            raise RuntimeError_(Status.BAD_ARTIFACT,
                                f"{source}: {role}.channel_order {spec.get('channel_order')!r} is not RGB or BGR")
    precision = meta.get("precision")
    if precision is not None and precision not in PRECISIONS:  # on TensorRT it chooses the build flags
        raise RuntimeError_(Status.BAD_ARTIFACT, f"{source}: precision {precision!r} is not one of {PRECISIONS}")
    _check_shape_ranges(meta.get("shape_ranges"), source)


def _check_shape_ranges(ranges, source: Path) -> None:
    """``shape_ranges``: min/opt/max, each [1, H, W, 3] of positive integers, min <= opt <= max."""
    if ranges is None:
        return
    if not isinstance(ranges, dict):
        raise RuntimeError_(Status.BAD_ARTIFACT, f"{source}: shape_ranges must be an object with min/opt/max, "
                                                 f"got {ranges!r}")
    shapes = {}
    for key in ("min", "opt", "max"):
        v = ranges.get(key)
        ok = (isinstance(v, list) and len(v) == 4 and all(isinstance(d, int) and not isinstance(d, bool) for d in v)
              and v[0] == 1 and v[3] == 3 and v[1] > 0 and v[2] > 0)
        if not ok:
            raise RuntimeError_(Status.BAD_ARTIFACT, f"{source}: shape_ranges.{key} is {v!r}; it must be "
                                                     "[1, H, W, 3] with H, W positive integers (NHWC)")
        shapes[key] = v
    if not all(shapes["min"][i] <= shapes["opt"][i] <= shapes["max"][i] for i in (1, 2)):
        raise RuntimeError_(Status.BAD_ARTIFACT, f"{source}: shape_ranges min {shapes['min']} <= opt {shapes['opt']} "
                                                 f"<= max {shapes['max']} does not hold")


# sidecar fields that must equal the graph's own copy in metadata_props (shape_ranges: see check_against_graph)
_SAME = (("input", "name"), ("input", "dtype"), ("input", "layout"), ("input", "channel_order"),
         ("output", "name"), ("output", "dtype"), ("output", "layout"), ("output", "channel_order"),
         ("precision",), ("dynamic",), ("version",))


def check_against_graph(artifact: "Artifact", roles: "tuple[str, ...]" = ("full",)) -> None:
    """The sidecar against each graph's own ``metadata_props`` (what ``edgehaze export`` wrote into it),
    and the precision against the graph's Q/DQ nodes; BAD_ARTIFACT naming both values.

    Read from the files, before any session: a sidecar that says BGR for an RGB graph would give the host
    swapped colours with OK, and on TensorRT the precision picks the build flags. ``shape_ranges.opt``
    and ``.max`` are TensorRT profile choices a user may edit (``build_engine.py --max``); ``.min`` may not
    go below the graph's (smaller frames break it), and a fixed-size export's ranges may not change.
    """
    meta = artifact.meta
    for role in roles:
        path = artifact.graph_path(role)
        facts = read_onnx_facts(path) if path is not None else None
        if facts is None:
            continue  # unreadable: onnxruntime names the problem when it loads the file
        own = decode_props(facts["metadata_props"])
        if artifact.sidecar_path is not None and own.get("format") == FORMAT:
            _compare(meta, own, artifact.sidecar_path, path)
        if role == "full" and meta.get("precision") in PRECISIONS:
            _check_precision(meta["precision"], facts["qdq"], artifact.sidecar_path or path, path)


def _get(meta: dict, keys: tuple):
    for k in keys:
        if not isinstance(meta, dict) or k not in meta:
            return _ABSENT
        meta = meta[k]
    return meta


_ABSENT = object()


def _compare(side: dict, own: dict, sidecar: Path, graph: Path) -> None:
    def refuse(field: str, a, b) -> None:
        raise RuntimeError_(Status.BAD_ARTIFACT,
                            f"{sidecar}: {field} is {a!r} but {graph.name}'s own metadata_props say {b!r}; the "
                            "sidecar was edited or belongs to another export: re-export, or put the graph's own "
                            "NAME.json beside it")

    for keys in _SAME:
        a, b = _get(side, keys), _get(own, keys)
        if a is not _ABSENT and b is not _ABSENT and a != b:
            refuse(".".join(keys), a, b)
    a, b = side.get("shape_ranges"), own.get("shape_ranges")
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return
    if own.get("dynamic") is False and a != b:
        refuse("shape_ranges (of a fixed-size export)", a, b)
    lo, glo = a.get("min"), b.get("min")
    if isinstance(glo, list) and len(glo) == 4 and (lo[1] < glo[1] or lo[2] < glo[2]):
        refuse("shape_ranges.min", lo, glo)


def _check_precision(precision: str, qdq: int, source: Path, graph: Path) -> None:
    if precision == "int8" and not qdq:
        raise RuntimeError_(Status.BAD_ARTIFACT,
                            f"{source}: precision is 'int8' but {graph.name} has no Q/DQ (QuantizeLinear/"
                            "DequantizeLinear) nodes: it is a float graph; fix the sidecar or re-export with --int8")
    if precision != "int8" and qdq:
        raise RuntimeError_(Status.BAD_ARTIFACT,
                            f"{source}: precision is {precision!r} but {graph.name} is an INT8 graph ({qdq} Q/DQ "
                            "nodes); fix the sidecar (precision 'int8') or re-export")


def check_graph_io(inputs: list[tuple[str, str, list]], outputs: list[tuple[str, str, list]],
                   source: Path, expect_inputs: list[str], expect_outputs: list[str]) -> None:
    """Check a graph's real I/O against the contract.

    ``inputs``/``outputs`` are (name, onnx type string, shape) triples as ONNX
    Runtime reports them; ``image`` and ``dehazed`` must be ``tensor(uint8)``
    of shape [1, H, W, 3].
    """
    got_in = [n for n, _, _ in inputs]
    got_out = [n for n, _, _ in outputs]
    if sorted(got_in) != sorted(expect_inputs) or not set(expect_outputs) <= set(got_out):
        raise RuntimeError_(Status.BAD_ARTIFACT,
                            f"{source}: graph inputs {got_in} / outputs {got_out} do not follow the edgehaze "
                            f"contract (expected inputs {expect_inputs}, outputs {expect_outputs})")
    for name, typ, shape in inputs + outputs:
        if name not in ("image", "dehazed"):
            continue
        batch_ok = len(shape) == 4 and (shape[0] in (1, None) or isinstance(shape[0], str))
        if typ != "tensor(uint8)" or not batch_ok or shape[3] != 3:
            raise RuntimeError_(Status.BAD_ARTIFACT,
                                f"{source}: '{name}' is {typ} {shape}; the contract needs tensor(uint8) "
                                "[1, H, W, 3] (NHWC, 3 channels)")
