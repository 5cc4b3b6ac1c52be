"""``export_checkpoint``: checkpoint -> verified artifact (graphs + sidecar).

Every export checks itself before anything is written under its final name:
the FP32 graph must match PyTorch (uint8 output within 1 level, the float
path within 1e-4), an INT8/FP16 graph must stay within ``max_psnr_drop`` dB
of FP32 on hold-out images, and a two-graph export must chain to the single
graph's output.
"""
from __future__ import annotations

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


def export_checkpoint(
    checkpoint: "str | Path",
    out: Optional["str | Path"] = None,
    name: Optional[str] = None,
    fmt: str = "onnx",
    precision: str = "fp32",
    dynamic: bool = True,
    imgsz: Optional[Sequence[int]] = None,
    channel_order: str = "RGB",
    two_graph: bool = False,
    opset: int = 17,
    calib: Optional[str] = None,
    calib_images: int = 32,
    holdout_images: int = 8,
    calib_size: Tuple[int, int] = (240, 320),
    method: str = "qat",
    qat_steps: int = 300,
    max_psnr_drop: float = 0.2,
    force: bool = False,
    ort_optimize: bool = False,
    fused: bool = True,
    internal_scale: Optional[int] = None,
    depth_weights: Optional[str] = None,
    workspace: float = 4.0,
    log: Callable[[str], None] = _stderr,
    progress: bool = True,
) -> ExportResult:
    """Export ``checkpoint`` to ``out/NAME.{onnx,json}`` (+ two-graph, engines); see module docstring."""
    import onnx
    import torch

    from edgehaze.checkpoint import load_dehazer
    from edgehaze.export import fused as FU
    from edgehaze.export import graphs as G
    from edgehaze.export import metadata as M
    from edgehaze.export import onnx_export as O
    from edgehaze.export import quantize as Q
    from edgehaze.export.targets import resolve_formats, require_module

    checkpoint = Path(checkpoint)
    channel_order = channel_order.upper()
    if channel_order not in ("RGB", "BGR"):
        raise EdgehazeError(f"--channel-order {channel_order}: use RGB or BGR")
    if method not in ("qat", "ptq"):
        raise EdgehazeError(f"--method {method}: use qat or ptq")
    if two_graph and precision == "int8" and method == "qat":
        raise EdgehazeError("--two-graph with --int8 needs --method ptq (each graph is calibrated on its own; "
                            "QAT trains the network as one)")
    if precision == "int8" and calib is None:
        Q.load_calibration(None, calib_images, holdout_images)  # raises the "--calib needed" error early
    targets = resolve_formats(fmt, precision)
    for t in targets:
        if t.gpu_only:
            require_module(t)
    trace_size, check_sizes = _check_sizes(dynamic, imgsz)

    model, meta = load_dehazer(checkpoint, depth_weights=depth_weights)
    model.eval()
    if internal_scale is not None:
        model, meta["build"] = _rescaled(model, meta["build"], int(internal_scale), checkpoint)
        log(f"internal scale {internal_scale}: the network runs at 1/{internal_scale} of the frame")
    if two_graph and model.depth is None:
        raise EdgehazeError(f"--two-graph: {checkpoint} has no depth branch; the single graph is all there is")
    # the fused full-resolution apply step (edge-* backbones; export/fused.py), and two graphs in that layout
    # when the network can take the pooled frame (a CNN student pooling by a multiple of the backbone's scale)
    fusable = fused and dynamic and precision in ("fp32", "int8") and G.has_correction_maps(model)
    split = two_graph and fusable and FU.prepool_factor(model) > 1
    fuse_apply = fusable and (split or not two_graph)
    if two_graph and precision == "int8" and not split:
        raise EdgehazeError(f"--two-graph with --int8: {checkpoint} is not in the fused layout (it needs an edge-* "
                            "backbone and a CNN student whose pool is a multiple of the backbone's scale, dynamic "
                            "size); export the two graphs at fp32 or fp16, or the single INT8 graph")
    name = name or checkpoint.stem + ("" if precision == "fp32" else f"-{precision}") + (
        f"-s{internal_scale}" if internal_scale is not None else "")
    out_dir = Path(out) if out is not None else checkpoint.parent / "export"
    torch.manual_seed(0)

    # -- FP32 graph, verified against torch ------------------------------------
    float_model = G.FloatModel(model).eval()
    full = G.FullGraph(float_model, channel_order).eval()
    example = torch.randint(0, 256, (1, trace_size[0], trace_size[1], 3), dtype=torch.uint8)
    log(f"exporting {checkpoint.name} ({meta['build'].get('backbone')}, depth={meta['build'].get('depth')}) "
        f"to ONNX opset {opset}, {'dynamic H x W' if dynamic else f'{trace_size[0]}x{trace_size[1]}'}")
    fp32 = O.export_module(full, (example,), ["image"], ["dehazed"], dynamic, opset)
    try:
        parity = {
            "uint8_max_diff": O.check_uint8_parity(fp32, full, check_sizes),
            "float_max_abs": O.check_float_parity(float_model, check_sizes, dynamic=dynamic),
            "sizes": [list(s) for s in check_sizes],
        }
    except Exception as exc:  # ONNX Runtime raises its own types for shape errors
        if isinstance(exc, EdgehazeError) or not dynamic:
            raise
        raise EdgehazeError(
            f"the dynamic-size graph fails at sizes other than the trace size {trace_size} "
            f"({exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}); some layer traces its shape as a "
            "constant - export at a fixed size with --imgsz H W"
        ) from None
    if parity["uint8_max_diff"] > UINT8_TOL or parity["float_max_abs"] > FLOAT_TOL:
        raise EdgehazeError(
            f"exported FP32 graph differs from PyTorch (uint8 max diff {parity['uint8_max_diff']} > {UINT8_TOL} "
            f"or float max abs {parity['float_max_abs']:.2e} > {FLOAT_TOL:g}); this is a bug, please report it"
        )
    log(f"FP32 parity with PyTorch: uint8 max diff {parity['uint8_max_diff']}, float max abs {parity['float_max_abs']:.2e}")

    # -- fused full-resolution apply step ------------------------------------------------
    if fuse_apply:
        core32 = FU.export_core(model, opset=opset)
        fused32 = FU.fused_graph(core32, channel_order)
        parity["fused_uint8_max_diff"] = FU.uint8_difference(fused32, fp32, check_sizes)
        if parity["fused_uint8_max_diff"] > UINT8_TOL:
            raise EdgehazeError(f"the fused apply graph differs from the plain graph by {parity['fused_uint8_max_diff']} "
                                "levels; this is a bug, please report it (fused=False exports the plain graph)")
        log(f"fused apply step: uint8 max diff {parity['fused_uint8_max_diff']} vs the plain graph")

    # -- precision ------------------------------------------------------------
    accuracy: Dict[str, Any] = {}
    final = fused32 if fuse_apply else fp32
    if precision == "fp16":
        final = O.to_fp16(fp32)
        holdout = Q.procedural_samples(2, calib_size, seed=999)
        accuracy = Q.evaluate_pair(fp32.SerializeToString(), final.SerializeToString(), holdout)
        Q.check_drop(accuracy, max_psnr_drop, force, log)
    elif precision == "int8":
        data = Q.load_calibration(calib, calib_images, holdout_images, calib_size)
        log(f"INT8 by {method.upper()}: {len(data.calib)} calibration / {len(data.holdout)} hold-out images "
            f"from {data.source}")
        if method == "qat":
            prepool = FU.prepool_factor(model) if fuse_apply else 1
            qfloat = Q.qat_quantize(model, data.calib, steps=qat_steps, progress=progress, prepool=prepool)
            if fuse_apply:
                final = FU.fused_graph(FU.export_core_module(qfloat.core, int(model.backbone.scale), prepool, opset=opset,
                                                               guide=FU.guide_spec(model)),
                                       channel_order)
            else:
                final = O.export_module(G.FullGraph(qfloat, channel_order), (example,), ["image"], ["dehazed"], dynamic, opset)
        elif fuse_apply:
            final = FU.fused_graph(FU.quantize_core(core32, [h for h, _ in data.calib]), channel_order)
        else:
            final = Q.ptq_onnx(fp32, data.calib)
        qdq = sum(n.op_type == "QuantizeLinear" and not n.name.startswith("fused/") for n in final.graph.node)
        if qdq == 0:
            raise EdgehazeError("quantisation produced no QDQ nodes; this is a bug, please report it")
        accuracy = Q.evaluate_pair(fp32.SerializeToString(), final.SerializeToString(), data.holdout)
        accuracy.update(method=method, calibration=data.source, calibration_images=len(data.calib),
                        qat_steps=qat_steps if method == "qat" else 0, qdq_nodes=qdq)
        log(f"hold-out: FP32 {accuracy['psnr_fp32']} dB, INT8 {accuracy['psnr']} dB "
            f"(drop {accuracy['psnr_drop']} dB), SSIM {accuracy['ssim_fp32']} -> {accuracy['ssim']}, "
            f"INT8 vs FP32 {accuracy['psnr_vs_fp32']} dB")
        Q.check_drop(accuracy, max_psnr_drop, force, log)
    accuracy["parity_fp32"] = parity

    sidecar = M.build_sidecar(
        name=name, precision=precision, opset=opset, dynamic=dynamic, imgsz=trace_size, channel_order=channel_order,
        build=meta["build"], provenance=meta.get("provenance") or {}, depth_features=G.depth_feature_specs(model),
        two_graph=two_graph, accuracy=accuracy,
    )
    files: Dict[str, Path] = {}

    # -- two graphs for streams -----------------------------------------------
    if split:
        d32, f32 = FU.export_split_cores(model, opset=opset)
        if precision == "int8":  # each graph calibrated on the same images (the fuse core on the FP32 features)
            images = [h for h, _ in data.calib]
            d32, f32 = FU.quantize_core(d32, images), FU.quantize_core(f32, images, extra_inputs=d32)
        depth_onnx, fuse_onnx = FU.fused_graph(d32, channel_order, "depth"), FU.fused_graph(f32, channel_order, "fuse")
    elif two_graph:
        feat_names = [f["name"] for f in G.depth_feature_specs(model)]
        dgraph = G.DepthGraph(model, channel_order).eval()
        fgraph = G.FuseGraph(float_model, channel_order).eval()
        with torch.no_grad():
            feats = dgraph(example)
        depth_onnx = O.export_module(dgraph, (example,), ["image"], feat_names, dynamic, opset)
        fuse_onnx = O.export_module(fgraph, (example, *feats), ["image", *feat_names], ["dehazed"], dynamic, opset)
        if precision == "fp16":
            depth_onnx, fuse_onnx = O.to_fp16(depth_onnx), O.to_fp16(fuse_onnx)
    if two_graph:
        chain = chain_difference(final, depth_onnx, fuse_onnx, check_sizes)
        # INT8: the features cross a graph boundary as float, so they are quantised twice (the depth graph's
        # output, the fuse graph's input): a level or two of rounding, not a wiring error
        if chain > (INT8_CHAIN_TOL if precision == "int8" else UINT8_TOL):
            raise EdgehazeError(f"two-graph export: chained graphs differ from the single graph by {chain} levels")
        sidecar["accuracy"]["two_graph_max_diff"] = chain
        log(f"two-graph: depth -> fuse equals the single graph within {chain} level(s)")

    # -- write (atomic) -----------------------------------------------------------
    files["onnx"] = M.save_onnx(final, out_dir / f"{name}.onnx", sidecar)
    if two_graph:
        files["depth"] = M.save_onnx(depth_onnx, out_dir / sidecar["graphs"]["depth"], sidecar)
        files["fuse"] = M.save_onnx(fuse_onnx, out_dir / sidecar["graphs"]["fuse"], sidecar)
    if ort_optimize:
        opt_path = out_dir / f"{name}.ort.onnx"
        O.session(files["onnx"], optimized_path=str(opt_path))
        files["ort"] = opt_path
        sidecar["ort_optimized"] = opt_path.name
    files["sidecar"] = M.write_sidecar(out_dir / f"{name}.json", sidecar)

    # -- GPU targets ------------------------------------------------------------------
    for t in targets:
        if t.name == "engine":
            from edgehaze.export.tensorrt_build import build_engine

            files["engine"] = build_engine(files["onnx"], out_dir / f"{name}.engine", precision,
                                           sidecar["shape_ranges"], workspace)
        elif t.name == "torchtrt":
            from edgehaze.export.tensorrt_build import compile_torch_tensorrt

            graph = G.FullGraph(float_model, channel_order) if precision != "int8" else G.FullGraph(qfloat, channel_order)
            files["torchtrt"] = compile_torch_tensorrt(graph, out_dir / f"{name}.ts", precision, sidecar["shape_ranges"])

    nxt = [
        f"python runtime/stream.py --model {files['onnx']}",
        f"edgehaze bench --model {files['onnx']}",
        f"edgehaze eval --checkpoint {files['onnx']} --data DATA",
    ]
    return ExportResult(files=files, sidecar=sidecar, parity=parity, next_commands=nxt)


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
