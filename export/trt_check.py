"""Will TensorRT's ONNX parser take this graph? A check that needs only the ``onnx`` package.

No TensorRT runs on the machines this project is built on, so a graph meant
for TensorRT is checked here against what the TensorRT 8.6 and 10.x ONNX
parsers document (the table in :mod:`edgehaze.export.trt_ops`) and against
the rules of TensorRT's explicit (Q/DQ) INT8. Each rule has a name; a graph
that breaks one is reported with the node, the rule and the releases it
fails on:

``opset``            the default-domain opset is in the release's documented range
``op``               the operator is in the release's table (default ONNX domain, not marked unsupported)
``dtype``            every data input has a type the table lists for the operator
``const-input``      inputs the table says "must be an initializer" are constants
``attribute``        pooling is 2D/3D (10.x: no dilation); Resize uses a documented mode
``qdq-type``         Q/DQ quantise to int8 (a Q without zero-point quantises to uint8 in ONNX)
``qdq-zero-point``   zero-points are constant zeros (TensorRT INT8 is symmetric only)
``qdq-scale``        scales are constant, finite and positive; zero-point has the scale's shape
``qdq-per-tensor``   only constants (weights) are quantised per channel; activations per tensor
``uint8``            no uint8 tensor except graph inputs/outputs, and only Casts touch those
``profile``          every dynamic input dimension has a min/opt/max shape profile (the sidecar's)

:func:`check_artifact` checks every graph of an exported artifact with the
profiles its sidecar records; :func:`gpu_commands` gives the ``trtexec`` and
``polygraphy`` command lines that confirm the verdict with TensorRT itself
on a GPU machine. Passing here means the graph uses only what TensorRT
documents; it is not a TensorRT build.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from edgehaze.export.trt_ops import (RELEASES, RESIZE_COORDINATE_MODES, RESIZE_MODES, RESIZE_NEAREST_MODES,
                                     Release)

#: the releases checked by default
DEFAULT_RELEASES: Tuple[str, ...] = ("8.6", "10")
#: a shape profile: input name -> {"min": dims, "opt": dims, "max": dims}
Profile = Dict[str, Dict[str, Sequence[int]]]

#: inputs that carry shapes, indices or axes rather than the tensor an op computes on (not type-checked
#: against the op's data types: ONNX fixes them to int64/float whatever the data is)
_PARAM_INPUTS: Dict[str, Tuple[int, ...]] = {
    "Reshape": (1,), "Slice": (1, 2, 3, 4), "Pad": (1, 3), "Squeeze": (1,), "Unsqueeze": (1,), "Expand": (1,),
    "Tile": (1,), "Gather": (1,), "GatherElements": (1,), "GatherND": (1,), "Scatter": (1,),
    "ScatterElements": (1,), "ScatterND": (1,), "Resize": (1, 2, 3), "Upsample": (1,), "TopK": (1,), "Split": (1,),
    "CumSum": (1,), "OneHot": (0, 1), "ConstantOfShape": (0,), "Trilu": (1,), "ReverseSequence": (1,),
    "Dropout": (1, 2), "RoiAlign": (1, 2), "NonMaxSuppression": (2, 3, 4), "Where": (0,),
    **{op: (1,) for op in ("ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin "
                           "ReduceProd ReduceSum ReduceSumSquare").split()},
}
#: ops whose output type is chosen by the op (checked too): the table's types apply to what they make
_TYPED_OUTPUT = frozenset({"Cast", "CastLike", "ConstantOfShape", "Constant", "EyeLike", "RandomNormal",
                           "RandomUniform", "RandomNormalLike", "RandomUniformLike"})
_QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class Finding:
    """One broken rule: ``rule`` at ``node`` (an ``op`` node's name, or a graph input's name)."""

    rule: str
    node: str
    op: str
    message: str
    releases: Tuple[str, ...]

    def __str__(self) -> str:
        where = f"{self.op} node '{self.node}'" if self.op else f"'{self.node}'"
        return f"[{self.rule}] {where}: {self.message} (TensorRT {', '.join(self.releases)})"


@dataclass
class Report:
    """The verdict on one graph: findings (empty = passes) for the releases checked."""

    graph: str
    releases: Tuple[str, ...]
    findings: List[Finding] = field(default_factory=list)
    profile: Optional[Profile] = None

    def ok(self, release: Optional[str] = None) -> bool:
        return not any(release is None or release in f.releases for f in self.findings)

    def rules(self) -> List[str]:
        return sorted({f.rule for f in self.findings})

    def lines(self, limit: int = 40) -> List[str]:
        verdict = ", ".join(f"TensorRT {r} {'PASS' if self.ok(r) else 'FAIL'}" for r in self.releases)
        out = [f"{self.graph}: {verdict}"]
        out += [f"  {f}" for f in self.findings[:limit]]
        if len(self.findings) > limit:
            out.append(f"  ... {len(self.findings) - limit} more (rules: {', '.join(self.rules())})")
        return out


class _Graph:
    """The facts about a graph the rules read: types, constants, producers, consumers."""

    def __init__(self, model: Any) -> None:
        import onnx
        from onnx import numpy_helper, shape_inference

        self.model = model
        g = model.graph
        try:
            inferred = shape_inference.infer_shapes(model, strict_mode=False)
        except Exception:  # a graph onnx cannot infer still gets the other rules (types it knows)
            inferred = model
        self.types: Dict[str, int] = {}
        for vi in list(inferred.graph.value_info) + list(g.input) + list(g.output):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                self.types[vi.name] = vi.type.tensor_type.elem_type
        self._const_protos: Dict[str, Any] = {i.name: i for i in g.initializer}
        for n in g.node:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        self._const_protos[n.output[0]] = a.t
        for name, t in self._const_protos.items():
            self.types[name] = t.data_type
        self._arrays: Dict[str, np.ndarray] = {}
        self._to_array = numpy_helper.to_array
        self.inputs = [i for i in g.input if i.name not in self._const_protos]
        self.input_names = {i.name for i in self.inputs}
        self.output_names = {o.name for o in g.output}
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: Dict[str, list] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.type_name = onnx.TensorProto.DataType.Name

    def is_const(self, name: str) -> bool:
        return name in self._const_protos

    def array(self, name: str) -> Optional[np.ndarray]:
        if name not in self._const_protos:
            return None
        if name not in self._arrays:
            self._arrays[name] = self._to_array(self._const_protos[name])
        return self._arrays[name]

    def tname(self, name: str) -> Optional[str]:
        t = self.types.get(name)
        return None if t is None else self.type_name(t)


def _label(node: Any, index: int) -> str:
    return node.name or f"#{index} -> {node.output[0] if node.output else '?'}"


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


# -- rules that depend on the release -------------------------------------------------------------
def _op_rules(g: _Graph, rel: Release) -> Iterable[Tuple[str, str, str, str]]:
    """(rule, node, op, message) of the op, dtype, const-input and attribute rules for one release."""
    for k, n in enumerate(g.model.graph.node):
        label, op = _label(n, k), n.op_type
        if n.domain not in ("", "ai.onnx"):
            yield "op", label, op, f"operator of domain '{n.domain}': not an ONNX operator, TensorRT needs a plugin"
            continue
        if op not in rel.ops:
            why = "marked unsupported" if op in rel.unsupported else "not listed"
            yield "op", label, op, f"{why} in TensorRT {rel.name}'s ONNX operator table"
            continue
        yield from _dtype_rule(g, rel, n, label)
        for pos in rel.const_inputs.get(op, ()):
            if len(n.input) > pos and n.input[pos] and not g.is_const(n.input[pos]):
                yield "const-input", label, op, f"input {pos} ('{n.input[pos]}') must be an initializer"
        yield from _attribute_rule(rel, n, label)


def _dtype_rule(g: _Graph, rel: Release, n: Any, label: str) -> Iterable[Tuple[str, str, str, str]]:
    op = n.op_type
    allowed = rel.ops[op]
    skip = set(_PARAM_INPUTS.get(op, ()))
    if op in _QDQ:
        skip |= {1, 2}  # scale and zero-point: the qdq rules
    tensors = [(f"input '{x}'", x) for p, x in enumerate(n.input) if x and p not in skip]
    if op in _TYPED_OUTPUT or op == "QuantizeLinear":
        tensors += [(f"output '{y}'", y) for y in n.output if y]
    for what, name in tensors:
        t = g.tname(name)
        if t is None or t == "UINT8" and op not in ("Cast", "CastLike"):
            continue  # unknown to shape inference; uint8 is the uint8 rule's
        if op == "QuantizeLinear" and what.startswith("output"):
            allowed_here = rel.ops["DequantizeLinear"]  # what a Q makes is what a DQ reads
        else:
            allowed_here = allowed
        if rel.aliases.get(t, t) not in allowed_here:
            yield "dtype", label, op, f"{what} is {t}; TensorRT {rel.name} lists {', '.join(sorted(allowed_here))}"


def _attribute_rule(rel: Release, n: Any, label: str) -> Iterable[Tuple[str, str, str, str]]:
    op = n.op_type
    if op in rel.pools:
        kernel = _attr(n, "kernel_shape") or []
        if len(kernel) not in (2, 3):
            yield "attribute", label, op, f"{len(kernel)}-D pooling; TensorRT pools in 2D or 3D only"
        dil = _attr(n, "dilations") or []
        if rel.pool_dilations and any(d != 1 for d in dil):
            yield "attribute", label, op, f"dilations {list(dil)}; TensorRT {rel.name} needs none or all ones"
    if op == "Resize":
        checks = (("mode", "nearest", RESIZE_MODES), ("coordinate_transformation_mode", "half_pixel",
                                                       RESIZE_COORDINATE_MODES),
                  ("nearest_mode", "round_prefer_floor", RESIZE_NEAREST_MODES))
        for name, default, allowed in checks:
            v = _attr(n, name, default)
            if v not in allowed:
                yield "attribute", label, op, f"{name}={v}; TensorRT supports {', '.join(sorted(allowed))}"
        if rel.resize_antialias and _attr(n, "antialias", 0):
            yield "attribute", label, op, "antialias=1; TensorRT does not support antialiasing"


# -- rules that hold for every release -------------------------------------------------------------------
def _qdq_rules(g: _Graph) -> Iterable[Tuple[str, str, str, str]]:
    for k, n in enumerate(g.model.graph.node):
        if n.op_type not in _QDQ:
            continue
        label, op = _label(n, k), n.op_type
        x, scale = n.input[0], n.input[1] if len(n.input) > 1 else ""
        zp = n.input[2] if len(n.input) > 2 else ""
        qname = n.output[0] if op == "QuantizeLinear" else x  # the quantised tensor
        qtype = g.tname(zp) if zp else g.tname(qname) if op == "DequantizeLinear" else "UINT8"
        if qtype != "INT8":
            why = " (no zero-point input: ONNX quantises to uint8)" if not zp and op == "QuantizeLinear" else ""
            yield "qdq-type", label, op, f"quantised type {qtype}{why}; TensorRT INT8 needs int8"
        s = g.array(scale) if scale else None
        if s is None:
            yield "qdq-scale", label, op, f"scale '{scale}' is not a constant"
        elif s.size == 0 or not np.all(np.isfinite(s)) or not np.all(s > 0):
            yield "qdq-scale", label, op, f"scale '{scale}' has values that are not finite and positive ({s.ravel()[:4]})"
        if zp:
            z = g.array(zp)
            if z is None:
                yield "qdq-zero-point", label, op, f"zero-point '{zp}' is not a constant"
            elif np.any(z != 0):
                nz = int(np.count_nonzero(z))
                yield "qdq-zero-point", label, op, (f"zero-point '{zp}' is not 0 ({nz} of {z.size} values, e.g. "
                                                    f"{int(z.ravel()[np.flatnonzero(z)[0]])}): asymmetric; TensorRT is "
                                                    "symmetric only")
            elif s is not None and z.shape != s.shape:
                yield "qdq-scale", label, op, f"zero-point shape {list(z.shape)} differs from scale shape {list(s.shape)}"
        if s is not None and s.ndim > 1:
            yield "qdq-scale", label, op, f"scale of rank {s.ndim}: TensorRT INT8 takes a scalar or 1-D scale"
        elif s is not None and s.size > 1 and not g.is_const(x) and not _from_const(g, x):
            yield "qdq-per-tensor", label, op, (f"per-channel scale ({s.size} values) on '{x}', which is not a "
                                                "constant: TensorRT quantises activations per tensor")


def _from_const(g: _Graph, name: str) -> bool:
    """A DQ of weights reads a Q of a constant (float weights quantised in the graph) or an int8 initializer."""
    p = g.producer.get(name)
    return p is not None and p.op_type == "QuantizeLinear" and g.is_const(p.input[0])


def _uint8_rule(g: _Graph) -> Iterable[Tuple[str, str, str, str]]:
    seen = set()
    nodes = list(g.model.graph.node)
    index = {id(n): k for k, n in enumerate(nodes)}
    for name, t in g.types.items():
        if g.type_name(t) != "UINT8":
            continue
        users = g.consumers.get(name, [])
        prod = g.producer.get(name)
        if name in g.input_names:
            bad = [(u, f"reads the uint8 graph input '{name}'; TensorRT takes uint8 only through a Cast to float")
                   for u in users if u.op_type != "Cast"]
        elif name in g.output_names and prod is not None and prod.op_type == "Cast":
            bad = [(u, f"reads the uint8 graph output '{name}' inside the graph") for u in users]
        else:
            where = "initializer" if g.is_const(name) else "tensor"
            bad = [(u, f"reads the uint8 {where} '{name}' inside the graph") for u in users]
            if prod is not None:
                bad.insert(0, (prod, f"makes uint8 tensor '{name}' inside the graph"))
        for node, msg in bad:
            key = (id(node), msg)
            if key not in seen:
                seen.add(key)
                yield ("uint8", _label(node, index[id(node)]), node.op_type,
                       msg + " (uint8 is allowed only at network inputs/outputs)")


def _profile_rule(g: _Graph, profile: Optional[Profile], note: str = "") -> Iterable[Tuple[str, str, str, str]]:
    """``note``: where the profile came from and how to get one, added when an input has none."""
    profile = profile or {}
    for inp in g.inputs:
        dims = inp.type.tensor_type.shape.dim if inp.type.tensor_type.HasField("shape") else None
        if dims is None:
            yield "profile", inp.name, "", "graph input without a shape: TensorRT needs its rank"
            continue
        dynamic = [k for k, d in enumerate(dims) if not d.HasField("dim_value")]
        if not dynamic:
            continue
        ranges = profile.get(inp.name)
        names = [dims[k].dim_param or "?" for k in dynamic]
        if not ranges:
            yield "profile", inp.name, "", (f"dynamic dims {dynamic} ({', '.join(names)}) and no shape profile "
                                            f"for this input{note}")
            continue
        yield from _one_profile(inp.name, dims, ranges)
    for name in profile:
        if name not in g.input_names:
            yield "profile", name, "", "the profile names an input this graph does not have"


def _one_profile(name: str, dims: Any, ranges: Dict[str, Sequence[int]]) -> Iterable[Tuple[str, str, str, str]]:
    missing = [k for k in ("min", "opt", "max") if k not in ranges]
    if missing:
        yield "profile", name, "", f"profile has no {', '.join(missing)} shape"
        return
    lo, opt, hi = (list(ranges[k]) for k in ("min", "opt", "max"))
    if not len(lo) == len(opt) == len(hi) == len(dims):
        yield "profile", name, "", f"profile ranks {len(lo)}/{len(opt)}/{len(hi)} differ from the input's {len(dims)}"
        return
    for k, d in enumerate(dims):
        if d.HasField("dim_value") and not lo[k] == opt[k] == hi[k] == d.dim_value:
            yield "profile", name, "", f"dim {k} is fixed at {d.dim_value}, the profile gives {lo[k]}/{opt[k]}/{hi[k]}"
        elif not 1 <= lo[k] <= opt[k] <= hi[k]:
            yield "profile", name, "", f"dim {k}: min {lo[k]} <= opt {opt[k]} <= max {hi[k]} (all >= 1) does not hold"


# -- entry points ------------------------------------------------------------------------------------
def check_model(model: "Any | str | Path", profile: Optional[Profile] = None,
                releases: Sequence[str] = DEFAULT_RELEASES, name: Optional[str] = None,
                profile_note: str = "") -> Report:
    """Check one ONNX graph (a ModelProto or a path) against ``releases``; ``profile``: its shape profile.

    ``profile_note``: appended to a missing-profile finding (where profiles come from, how to get one).
    """
    import onnx

    if not isinstance(model, onnx.ModelProto):
        name = name or str(model)
        model = onnx.load(str(model))
    unknown = [r for r in releases if r not in RELEASES]
    if unknown:
        raise ValueError(f"TensorRT release {unknown[0]}: the table has {', '.join(RELEASES)}")
    g = _Graph(model)
    found: Dict[Tuple[str, str, str, str], List[str]] = {}
    for r in releases:
        rel = RELEASES[r]
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        if opset is not None and not rel.opsets[0] <= opset <= rel.opsets[1]:
            found.setdefault(("opset", "graph", "", f"opset {opset}; TensorRT {r} documents opsets "
                                                    f"{rel.opsets[0]}-{rel.opsets[1]}"), []).append(r)
        for item in _op_rules(g, rel):
            found.setdefault(item, []).append(r)
    for item in list(_qdq_rules(g)) + list(_uint8_rule(g)) + list(_profile_rule(g, profile, profile_note)):
        found.setdefault(item, []).extend(releases)
    findings = [Finding(rule, node, op, msg, tuple(dict.fromkeys(rs))) for (rule, node, op, msg), rs in found.items()]
    return Report(graph=name or model.graph.name, releases=tuple(releases), findings=findings, profile=profile)


def read_profiles(meta: Dict[str, Any]) -> Dict[str, Profile]:
    """Role -> profile from a sidecar: ``profiles`` when it has them, else ``shape_ranges`` for ``image``."""
    if isinstance(meta.get("profiles"), dict):
        return meta["profiles"]
    ranges = meta.get("shape_ranges")
    if not ranges:
        return {}
    return {role: {"image": ranges} for role in (meta.get("graphs") or {"full": None})}


def artifact_meta(path: "str | Path") -> Dict[str, Any]:
    """The sidecar of an artifact: ``NAME.json`` itself or beside ``NAME[.role].onnx``, else the graph's metadata copy."""
    import onnx

    path = Path(path)
    if path.suffix == ".json":
        return json.loads(path.read_text())
    side = path.parent / (path.name.split(".")[0] + ".json")
    if side.is_file():
        try:
            return json.loads(side.read_text())
        except ValueError:
            pass
    model = onnx.load(str(path), load_external_data=False)
    meta = {}
    for p in model.metadata_props:
        try:
            meta[p.key] = json.loads(p.value)
        except ValueError:
            continue
    return meta


def check_artifact(path: "str | Path", releases: Sequence[str] = DEFAULT_RELEASES) -> List[Report]:
    """Check every graph of an exported artifact (``NAME.onnx`` or ``NAME.json``) with its sidecar's profiles.

    A lone ONNX file without edgehaze metadata is checked alone, with no
    profile (its dynamic inputs then fail the ``profile`` rule).
    """
    path = Path(path)
    meta, folder = artifact_meta(path), path.parent
    graphs = meta.get("graphs") or {}
    profiles = read_profiles(meta)
    if path.suffix != ".json" and path.name not in graphs.values():
        return [check_model(path, profiles.get("full"), releases, profile_note=_profile_note(meta, path))]
    reports = []
    for role, fname in graphs.items():
        gp = folder / fname
        if gp.is_file():
            reports.append(check_model(gp, profiles.get(role), releases, profile_note=_profile_note(meta, gp, role)))
    return reports


def _profile_note(meta: Dict[str, Any], path: Path, role: str = "full") -> str:
    """Why a graph input may lack a profile: no sidecar, or a sidecar from before per-graph ``profiles``."""
    if not meta:
        return f" ({path.name} has no edgehaze sidecar or metadata: pass the exported NAME.onnx with its NAME.json)"
    if not isinstance(meta.get("profiles"), dict):
        return (f" (the sidecar has no 'profiles', only shape_ranges for 'image': re-export with edgehaze export, "
                f"which measures the {role} graph's other inputs)")
    return f" (the sidecar's profiles.{role} does not list it)"


def _dims(v: Sequence[int], sep: str) -> str:
    return sep.join(str(int(x)) for x in v)


def gpu_commands(onnx_path: "str | Path", profile: Optional[Profile], precision: str) -> List[str]:
    """``trtexec`` (build + time) and ``polygraphy run`` (TensorRT vs ONNX Runtime) for a GPU machine.

    ``precision``: int8 (explicit Q/DQ; FP16 allowed for the float parts), fp16 or fp32. Shapes come from
    ``profile``; polygraphy feeds the ``opt`` shapes. The uint8 tolerance is a suggestion: INT8 kernels
    round differently from ONNX Runtime's.
    """
    p = Path(onnx_path)
    flags = {"int8": ["--int8", "--fp16"], "fp16": ["--fp16"]}.get(precision, [])
    trt = ["trtexec", f"--onnx={p}", f"--saveEngine={p.with_suffix('.engine')}", *flags]
    poly = ["polygraphy", "run", str(p), "--trt", "--onnxrt", *flags, "--atol", "4" if precision == "int8" else "2",
            "--rtol", "0"]
    dyn = {k: v for k, v in (profile or {}).items() if not (v["min"] == v["opt"] == v["max"])}
    if dyn:
        for key, flag in (("min", "--minShapes"), ("opt", "--optShapes"), ("max", "--maxShapes")):
            trt.append(f"{flag}=" + ",".join(f"{k}:{_dims(v[key], 'x')}" for k, v in dyn.items()))
        for key in ("min", "opt", "max"):
            poly += [f"--trt-{key}-shapes", *(f"{k}:[{_dims(v[key], ',')}]" for k, v in dyn.items())]
        poly += ["--input-shapes", *(f"{k}:[{_dims(v['opt'], ',')}]" for k, v in dyn.items())]
    return [" ".join(trt), " ".join(poly)]


def precision_of_graph(meta: Dict[str, Any], model_path: "str | Path") -> str:
    """The artifact's precision from its sidecar, or int8 when the graph has Q/DQ nodes."""
    if meta.get("precision") in ("fp32", "fp16", "int8"):
        return str(meta["precision"])
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return "int8" if any(n.op_type in _QDQ for n in model.graph.node) else "fp32"


__all__ = ["DEFAULT_RELEASES", "Finding", "Report", "artifact_meta", "check_artifact", "check_model", "gpu_commands",
           "precision_of_graph", "read_profiles"]
