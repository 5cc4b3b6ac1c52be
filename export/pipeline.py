"""``export_checkpoint``: checkpoint -> verified artifact (graphs + sidecar).

Every export checks itself before anything is written under its final name:
the FP32 graph must match PyTorch (uint8 output within 1 level, the float
path within 1e-4), an INT8/FP16 graph must stay within ``max_psnr_drop`` dB
of FP32 on hold-out images, and a two-graph export must chain to the single
graph's output.

The export is a table of steps (:data:`STEPS`, each with the condition that
runs it) over one state object, and a table of the GPU formats' build steps
(:data:`FORMAT_STEPS`, keyed like :data:`edgehaze.export.targets.EXPORT_TARGETS`),
as in Ultralytics' exporter. The flavour (``ExportOptions.target``:
:data:`edgehaze.export.targets.FLAVOURS`) decides how each step writes its
graph: for ONNX Runtime on CPU or for TensorRT.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from edgehaze.errors import EdgehazeError

#: tolerances of the FP32 parity check
UINT8_TOL = 1
#: an INT8 depth -> fuse chain against the single INT8 graph (features quantised on both sides of the cut)
INT8_CHAIN_TOL = 3
FLOAT_TOL = 1e-4


@dataclass
class ExportResult:
    files: Dict[str, Path]
    sidecar: Dict[str, Any]
    parity: Dict[str, Any] = field(default_factory=dict)
    next_commands: List[str] = field(default_factory=list)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


@dataclass
class ExportOptions:
    """Everything an export can be asked for; the defaults are ``edgehaze export``'s.

    fmt: ``--format`` (onnx, engine, torchtrt, all). target: the flavour
    (``cpu``, ``trt``; None: ``trt`` when ``fmt`` builds TensorRT, else
    ``cpu``). fused: the fused full-resolution apply graph for edge-*
    backbones. The rest are the CLI flags of the same names.
    """

    out: "Optional[str | Path]" = None
    name: Optional[str] = None
    fmt: str = "onnx"
    precision: str = "fp32"
    target: Optional[str] = None
    dynamic: bool = True
    imgsz: Optional[Sequence[int]] = None
    channel_order: str = "RGB"
    two_graph: bool = False
    opset: int = 17
    calib: Optional[str] = None
    calib_images: int = 32
    holdout_images: int = 8
    calib_size: Tuple[int, int] = (240, 320)
    method: str = "qat"
    qat_steps: int = 300
    max_psnr_drop: float = 0.2
    force: bool = False
    ort_optimize: bool = False
    fused: bool = True
    internal_scale: Optional[int] = None
    depth_weights: Optional[str] = None
    workspace: float = 4.0
    log: Callable[[str], None] = _stderr
    progress: bool = True


@dataclass
class _Export:
    """The state the steps share: what was asked, what was built so far."""

    checkpoint: Path
    opt: ExportOptions
    flavour: Any = None
    formats: Sequence[Any] = ()
    trace_size: Tuple[int, int] = (0, 0)
    check_sizes: List[Tuple[int, int]] = field(default_factory=list)
    model: Any = None
    meta: Dict[str, Any] = field(default_factory=dict)
    name: str = ""
    out_dir: Path = Path(".")
    split: bool = False
    fuse_apply: bool = False
    float_model: Any = None
    example: Any = None
    fp32: Any = None
    core32: Any = None
    final: Any = None
    qfloat: Any = None
    data: Any = None
    parity: Dict[str, Any] = field(default_factory=dict)
    accuracy: Dict[str, Any] = field(default_factory=dict)
    sidecar: Dict[str, Any] = field(default_factory=dict)
    depth_onnx: Any = None
    fuse_onnx: Any = None
    files: Dict[str, Path] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return self.flavour.name


def _check_sizes(dynamic: bool, imgsz: Optional[Sequence[int]]) -> Tuple[Tuple[int, int], List[Tuple[int, int]]]:
    from edgehaze.export.onnx_export import TRACE_SIZE

    if dynamic:
        return TRACE_SIZE, [TRACE_SIZE, (45, 61), (67, 50)]
    if imgsz is None or len(imgsz) != 2 or min(imgsz) < 8:
        raise EdgehazeError("--imgsz takes H W (both >= 8), or use --dynamic")
    size = (int(imgsz[0]), int(imgsz[1]))
    return size, [size]


def _rescaled(model: "torch.nn.Module", build: Dict[str, Any], scale: int,  # noqa: F821
              checkpoint: Path) -> "Tuple[torch.nn.Module, Dict[str, Any]]":  # noqa: F821
    """``--internal-scale``: the model (and its build record) with the network at 1/``scale`` of the frame."""
    from edgehaze.export.fused import internal_scale

    if not hasattr(model.backbone, "scale"):
        raise EdgehazeError(f"--internal-scale: {checkpoint} has a {build.get('backbone')} backbone, which works at "
                            "full resolution; only edge-* backbones have an internal scale")
    if scale < 1:
        raise EdgehazeError(f"--internal-scale {scale}: must be >= 1 (the model was trained at {model.backbone.scale})")
    model = internal_scale(model, scale).eval()
    build = {**build, "backbone_kwargs": {**(build.get("backbone_kwargs") or {}), "scale": scale}}
    if model.depth is not None and hasattr(model.depth, "pool"):
        build["depth_kwargs"] = {**(build.get("depth_kwargs") or {}), "pool": int(model.depth.pool)}
    return model, build


# -- the steps ---------------------------------------------------------------------------------------
def _validate(e: _Export) -> None:
    """Flags that exclude each other, before any model is loaded."""
    from edgehaze.export import quantize as Q
    from edgehaze.export.targets import require_module, resolve_flavour, resolve_formats

    o = e.opt
    o.channel_order = o.channel_order.upper()
    if o.channel_order not in ("RGB", "BGR"):
        raise EdgehazeError(f"--channel-order {o.channel_order}: use RGB or BGR")
    if o.method not in ("qat", "ptq"):
        raise EdgehazeError(f"--method {o.method}: use qat or ptq")
    if o.two_graph and o.precision == "int8" and o.method == "qat":
        raise EdgehazeError("--two-graph with --int8 needs --method ptq (each graph is calibrated on its own; "
                            "QAT trains the network as one)")
    if o.precision == "int8" and o.calib is None:
        Q.load_calibration(None, o.calib_images, o.holdout_images)  # raises the "--calib needed" error early
    e.formats = resolve_formats(o.fmt, o.precision)
    e.flavour = resolve_flavour(o.target, e.formats)
    for t in e.formats:
        if t.gpu_only:
            require_module(t)
    e.trace_size, e.check_sizes = _check_sizes(o.dynamic, o.imgsz)


def _load(e: _Export) -> None:
    """The model (rescaled when asked), the layout it exports in, the artifact's name and folder."""
    from edgehaze.checkpoint import load_dehazer
    from edgehaze.export import fused as FU
    from edgehaze.export import graphs as G

    o = e.opt
    e.model, e.meta = load_dehazer(e.checkpoint, depth_weights=o.depth_weights)
    e.model.eval()
    if o.internal_scale is not None:
        e.model, e.meta["build"] = _rescaled(e.model, e.meta["build"], int(o.internal_scale), e.checkpoint)
        o.log(f"internal scale {o.internal_scale}: the network runs at 1/{o.internal_scale} of the frame")
    if o.two_graph and e.model.depth is None:
        raise EdgehazeError(f"--two-graph: {e.checkpoint} has no depth branch; the single graph is all there is")
    # the fused full-resolution apply step (edge-* backbones; export/fused.py), and two graphs in that layout
    # when the network can take the pooled frame (a CNN student pooling by a multiple of the backbone's scale)
    fusable = o.fused and o.dynamic and o.precision in ("fp32", "int8") and G.has_correction_maps(e.model)
    e.split = o.two_graph and fusable and FU.prepool_factor(e.model) > 1
    e.fuse_apply = fusable and (e.split or not o.two_graph)
    if o.two_graph and o.precision == "int8" and not e.split:
        raise EdgehazeError(f"--two-graph with --int8: {e.checkpoint} is not in the fused layout (it needs an edge-* "
                            "backbone and a CNN student whose pool is a multiple of the backbone's scale, dynamic "
                            "size); export the two graphs at fp32 or fp16, or the single INT8 graph")
    e.name = o.name or e.checkpoint.stem + ("" if o.precision == "fp32" else f"-{o.precision}") + (
        f"-s{o.internal_scale}" if o.internal_scale is not None else "") + e.flavour.suffix
    e.out_dir = Path(o.out) if o.out is not None else e.checkpoint.parent / "export"


def _fp32(e: _Export) -> None:
    """The FP32 graph in the flavour, checked against torch at the trace size and two odd sizes."""
    import torch

    from edgehaze.export import graphs as G
    from edgehaze.export import onnx_export as O
    from edgehaze.export.trt_graphs import full_graph

    o = e.opt
    torch.manual_seed(0)
    e.float_model = G.FloatModel(e.model).eval()
    full = full_graph(e.float_model, o.channel_order, e.target)
    e.example = torch.randint(0, 256, (1, e.trace_size[0], e.trace_size[1], 3), dtype=torch.uint8)
    o.log(f"exporting {e.checkpoint.name} ({e.meta['build'].get('backbone')}, depth={e.meta['build'].get('depth')}) "
          f"to ONNX opset {o.opset}, {'dynamic H x W' if o.dynamic else f'{e.trace_size[0]}x{e.trace_size[1]}'}, "
          f"{e.target} flavour")
    e.fp32 = O.export_module(full, (e.example,), ["image"], ["dehazed"], o.dynamic, o.opset)
    try:
        e.parity = {
            "uint8_max_diff": O.check_uint8_parity(e.fp32, full, e.check_sizes),
            "float_max_abs": O.check_float_parity(e.float_model, e.check_sizes, dynamic=o.dynamic),
            "sizes": [list(s) for s in e.check_sizes],
        }
    except Exception as exc:  # ONNX Runtime raises its own types for shape errors
        if isinstance(exc, EdgehazeError) or not o.dynamic:
            raise
        raise EdgehazeError(
            f"the dynamic-size graph fails at sizes other than the trace size {e.trace_size} "
            f"({exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}); some layer traces its shape as a "
            "constant - export at a fixed size with --imgsz H W"
        ) from None
    p = e.parity
    if p["uint8_max_diff"] > UINT8_TOL or p["float_max_abs"] > FLOAT_TOL:
        raise EdgehazeError(
            f"exported FP32 graph differs from PyTorch (uint8 max diff {p['uint8_max_diff']} > {UINT8_TOL} "
            f"or float max abs {p['float_max_abs']:.2e} > {FLOAT_TOL:g}); this is a bug, please report it"
        )
    o.log(f"FP32 parity with PyTorch: uint8 max diff {p['uint8_max_diff']}, float max abs {p['float_max_abs']:.2e}")
    e.final = e.fp32


def _fused(e: _Export) -> None:
    """The fused full-resolution apply graph (edge-*), equal to the plain graph within a level."""
    from edgehaze.export import fused as FU

    e.core32 = FU.export_core(e.model, opset=e.opt.opset)
    fused32 = FU.fused_graph(e.core32, e.opt.channel_order, target=e.target)
    e.parity["fused_uint8_max_diff"] = FU.uint8_difference(fused32, e.fp32, e.check_sizes)
    if e.parity["fused_uint8_max_diff"] > UINT8_TOL:
        raise EdgehazeError(f"the fused apply graph differs from the plain graph by {e.parity['fused_uint8_max_diff']} "
                            "levels; this is a bug, please report it (fused=False exports the plain graph)")
    e.opt.log(f"fused apply step: uint8 max diff {e.parity['fused_uint8_max_diff']} vs the plain graph")
    e.final = fused32


def _fp16(e: _Export) -> None:
    from edgehaze.export import onnx_export as O
    from edgehaze.export import quantize as Q

    e.final = O.to_fp16(e.fp32)
    holdout = Q.procedural_samples(2, e.opt.calib_size, seed=999)
    e.accuracy = Q.evaluate_pair(e.fp32.SerializeToString(), e.final.SerializeToString(), holdout)
    Q.check_drop(e.accuracy, e.opt.max_psnr_drop, e.opt.force, e.opt.log)


def _int8(e: _Export) -> None:
    """INT8 by QAT (NNCF) or PTQ (ONNX Runtime) in the flavour, refused when the hold-out PSNR drops too much."""
    from edgehaze.export import fused as FU
    from edgehaze.export import onnx_export as O
    from edgehaze.export import quantize as Q
    from edgehaze.export.trt_graphs import full_graph

    o = e.opt
    e.data = Q.load_calibration(o.calib, o.calib_images, o.holdout_images, o.calib_size)
    o.log(f"INT8 by {o.method.upper()} ({e.flavour.activations} activations, {e.target} flavour): {len(e.data.calib)} "
          f"calibration / {len(e.data.holdout)} hold-out images from {e.data.source}")
    if o.method == "qat":
        prepool = FU.prepool_factor(e.model) if e.fuse_apply else 1
        e.qfloat = Q.qat_quantize(e.model, e.data.calib, steps=o.qat_steps, progress=o.progress, prepool=prepool,
                                  target=e.target)
        if e.fuse_apply:
            core = FU.export_core_module(e.qfloat.core, int(e.model.backbone.scale), prepool, opset=o.opset,
                                         guide=FU.guide_spec(e.model))
            e.final = FU.fused_graph(core, o.channel_order, target=e.target)
        else:
            e.final = O.export_module(full_graph(e.qfloat, o.channel_order, e.target), (e.example,), ["image"],
                                      ["dehazed"], o.dynamic, o.opset)
    elif e.fuse_apply:
        core8 = FU.quantize_core(e.core32, [h for h, _ in e.data.calib], target=e.target)
        e.final = FU.fused_graph(core8, o.channel_order, target=e.target)
    else:
        e.final = Q.ptq_onnx(e.fp32, e.data.calib, target=e.target)
    qdq = sum(n.op_type == "QuantizeLinear" and not n.name.startswith("fused/") for n in e.final.graph.node)
    if qdq == 0:
        raise EdgehazeError("quantisation produced no QDQ nodes; this is a bug, please report it")
    acc = Q.evaluate_pair(e.fp32.SerializeToString(), e.final.SerializeToString(), e.data.holdout)
    acc.update(method=o.method, calibration=e.data.source, calibration_images=len(e.data.calib),
               qat_steps=o.qat_steps if o.method == "qat" else 0, qdq_nodes=qdq)
    o.log(f"hold-out: FP32 {acc['psnr_fp32']} dB, INT8 {acc['psnr']} dB (drop {acc['psnr_drop']} dB), "
          f"SSIM {acc['ssim_fp32']} -> {acc['ssim']}, INT8 vs FP32 {acc['psnr_vs_fp32']} dB")
    Q.check_drop(acc, o.max_psnr_drop, o.force, o.log)
    e.accuracy = acc


def _sidecar(e: _Export) -> None:
    from edgehaze.export import graphs as G
    from edgehaze.export import metadata as M

    o = e.opt
    e.accuracy["parity_fp32"] = e.parity
    e.sidecar = M.build_sidecar(
        name=e.name, precision=o.precision, opset=o.opset, dynamic=o.dynamic, imgsz=e.trace_size,
        channel_order=o.channel_order, build=e.meta["build"], provenance=e.meta.get("provenance") or {},
        depth_features=G.depth_feature_specs(e.model), two_graph=o.two_graph, accuracy=e.accuracy, target=e.target,
    )


def _two_graph(e: _Export) -> None:
    """``NAME.depth.onnx`` + ``NAME.fuse.onnx``, whose chain equals the single graph; their shape profiles."""
    from edgehaze.export import fused as FU
    from edgehaze.export import graphs as G
    from edgehaze.export import onnx_export as O
    from edgehaze.export.trt_graphs import io_graphs

    o = e.opt
    if e.split:
        d32, f32 = FU.export_split_cores(e.model, opset=o.opset)
        if o.precision == "int8":  # each graph calibrated on the same images (the fuse core on the FP32 features)
            images = [h for h, _ in e.data.calib]
            d32, f32 = (FU.quantize_core(d32, images, target=e.target),
                        FU.quantize_core(f32, images, extra_inputs=d32, target=e.target))
        e.depth_onnx = FU.fused_graph(d32, o.channel_order, "depth", target=e.target)
        e.fuse_onnx = FU.fused_graph(f32, o.channel_order, "fuse", target=e.target)
    else:
        import torch

        _, depth_cls, fuse_cls = io_graphs(e.target)
        feat_names = [f["name"] for f in G.depth_feature_specs(e.model)]
        dgraph = depth_cls(e.model, o.channel_order).eval()
        fgraph = fuse_cls(e.float_model, o.channel_order).eval()
        with torch.no_grad():
            feats = dgraph(e.example)
        e.depth_onnx = O.export_module(dgraph, (e.example,), ["image"], feat_names, o.dynamic, o.opset)
        e.fuse_onnx = O.export_module(fgraph, (e.example, *feats), ["image", *feat_names], ["dehazed"], o.dynamic,
                                      o.opset)
        if o.precision == "fp16":
            e.depth_onnx, e.fuse_onnx = O.to_fp16(e.depth_onnx), O.to_fp16(e.fuse_onnx)
    chain = chain_difference(e.final, e.depth_onnx, e.fuse_onnx, e.check_sizes)
    # INT8: the features cross a graph boundary as float, so they are quantised twice (the depth graph's
    # output, the fuse graph's input): a level or two of rounding, not a wiring error
    if chain > (INT8_CHAIN_TOL if o.precision == "int8" else UINT8_TOL):
        raise EdgehazeError(f"two-graph export: chained graphs differ from the single graph by {chain} levels")
    e.sidecar["accuracy"]["two_graph_max_diff"] = chain
    e.sidecar["profiles"]["fuse"] = fuse_profile(e.depth_onnx, e.sidecar["shape_ranges"])
    o.log(f"two-graph: depth -> fuse equals the single graph within {chain} level(s)")


def _write(e: _Export) -> None:
    """Every graph and the sidecar, each atomically."""
    from edgehaze.export import metadata as M
    from edgehaze.export import onnx_export as O

    o = e.opt
    e.files["onnx"] = M.save_onnx(e.final, e.out_dir / f"{e.name}.onnx", e.sidecar)
    if o.two_graph:
        e.files["depth"] = M.save_onnx(e.depth_onnx, e.out_dir / e.sidecar["graphs"]["depth"], e.sidecar)
        e.files["fuse"] = M.save_onnx(e.fuse_onnx, e.out_dir / e.sidecar["graphs"]["fuse"], e.sidecar)
    if o.ort_optimize:
        opt_path = e.out_dir / f"{e.name}.ort.onnx"
        O.session(e.files["onnx"], optimized_path=str(opt_path))
        e.files["ort"] = opt_path
        e.sidecar["ort_optimized"] = opt_path.name
    e.files["sidecar"] = M.write_sidecar(e.out_dir / f"{e.name}.json", e.sidecar)


def _engine(e: _Export) -> None:
    from edgehaze.export.tensorrt_build import build_engine

    e.files["engine"] = build_engine(e.files["onnx"], e.out_dir / f"{e.name}.engine", e.opt.precision,
                                     e.sidecar["shape_ranges"], e.opt.workspace)


def _torchtrt(e: _Export) -> None:
    from edgehaze.export.tensorrt_build import compile_torch_tensorrt
    from edgehaze.export.trt_graphs import full_graph

    model = e.qfloat if e.opt.precision == "int8" else e.float_model
    graph = full_graph(model, e.opt.channel_order, e.target)
    e.files["torchtrt"] = compile_torch_tensorrt(graph, e.out_dir / f"{e.name}.ts", e.opt.precision,
                                                 e.sidecar["shape_ranges"])


#: the export, in order: (name, step, runs when)
STEPS: Tuple[Tuple[str, Callable[[_Export], None], Callable[[_Export], bool]], ...] = (
    ("validate", _validate, lambda e: True),
    ("load", _load, lambda e: True),
    ("fp32", _fp32, lambda e: True),
    ("fused", _fused, lambda e: e.fuse_apply),
    ("fp16", _fp16, lambda e: e.opt.precision == "fp16"),
    ("int8", _int8, lambda e: e.opt.precision == "int8"),
    ("sidecar", _sidecar, lambda e: True),
    ("two_graph", _two_graph, lambda e: e.opt.two_graph),
    ("write", _write, lambda e: True),
)
#: the GPU formats' build steps, after the ONNX graphs are written (``--format`` names, export/targets.py)
FORMAT_STEPS: Dict[str, Callable[[_Export], None]] = {"engine": _engine, "torchtrt": _torchtrt}


def export_checkpoint(checkpoint: "str | Path", out: "Optional[str | Path]" = None,
                      options: Optional[ExportOptions] = None, **fields: Any) -> ExportResult:
    """Export ``checkpoint`` to ``out/NAME.{onnx,json}`` (+ two-graph, engines); see module docstring.

    ``options``: an :class:`ExportOptions`; ``fields``: any of its fields by
    name, overriding it (``export_checkpoint(ckpt, out, precision="int8",
    calib="procedural")``).
    """
    names = {f.name for f in dataclasses.fields(ExportOptions)}
    unknown = sorted(set(fields) - names)
    if unknown:
        raise TypeError(f"export_checkpoint: unknown option(s) {', '.join(unknown)}; options: {', '.join(sorted(names))}")
    opt = dataclasses.replace(options or ExportOptions(), **fields)
    if out is not None:
        opt.out = out
    e = _Export(checkpoint=Path(checkpoint), opt=opt)
    for _name, step, when in STEPS:
        if when(e):
            step(e)
    for t in e.formats:
        if t.name in FORMAT_STEPS:
            FORMAT_STEPS[t.name](e)
    nxt = [
        f"python runtime/stream.py --model {e.files['onnx']}",
        f"edgehaze bench --model {e.files['onnx']}",
        f"edgehaze eval --checkpoint {e.files['onnx']} --data DATA",
    ]
    if e.target == "trt":  # the engine is built where it runs: TensorRT version and GPU are in it
        nxt += [f"edgehaze export --check trt --onnx {e.files['onnx']}",
                f"python runtime/build_engine.py {e.files['onnx']}   # on the device, with its TensorRT"]
    return ExportResult(files=e.files, sidecar=e.sidecar, parity=e.parity, next_commands=nxt)


def fuse_profile(depth_onnx: Any, ranges: Dict[str, Sequence[int]]) -> Dict[str, Dict[str, List[int]]]:
    """The fuse graph's profile: ``image``'s ranges and each depth feature's shape at those frame sizes.

    The features' sizes follow the network's own arithmetic (strided convs,
    a teacher's resize), so they are measured: the depth graph runs once on
    a black frame of each of the min/opt/max sizes.
    """
    import numpy as np

    from edgehaze.export.onnx_export import session

    sess = session(depth_onnx.SerializeToString())
    names = [o.name for o in sess.get_outputs()]
    prof: Dict[str, Dict[str, List[int]]] = {"image": {k: [int(v) for v in ranges[k]] for k in ("min", "opt", "max")}}
    for key in ("min", "opt", "max"):
        feats = sess.run(names, {"image": np.zeros(tuple(ranges[key]), np.uint8)})
        for n, f in zip(names, feats):
            prof.setdefault(n, {})[key] = [int(v) for v in f.shape]
    return prof


def chain_difference(full: Any, depth: Any, fuse: Any, sizes: Sequence[Tuple[int, int]], seed: int = 1) -> int:
    """Largest uint8 difference between ``depth -> fuse`` and the single graph."""
    import numpy as np

    from edgehaze.export.onnx_export import session

    s_full, s_depth, s_fuse = (session(m.SerializeToString()) for m in (full, depth, fuse))
    names = [o.name for o in s_depth.get_outputs()]
    rng = np.random.default_rng(seed)
    worst = 0
    for h, w in sizes:
        img = rng.integers(0, 256, size=(1, h, w, 3), dtype=np.uint8)
        feats = s_depth.run(names, {"image": img})
        chained = s_fuse.run(["dehazed"], {"image": img, **dict(zip(names, feats))})[0]
        single = s_full.run(["dehazed"], {"image": img})[0]
        worst = max(worst, int(np.abs(chained.astype(np.int16) - single.astype(np.int16)).max()))
    return worst
