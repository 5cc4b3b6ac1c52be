"""edgehaze export: parity with PyTorch, INT8 accuracy gate, metadata, two-graph, CLI table."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from edgehaze import build_dehazer  # noqa: E402
from edgehaze.checkpoint import save_dehazer  # noqa: E402
from edgehaze.errors import EdgehazeError  # noqa: E402
from edgehaze.export import export_checkpoint  # noqa: E402
from edgehaze.export import graphs as G  # noqa: E402
from edgehaze.export.metadata import read_metadata_props  # noqa: E402
from edgehaze.export.onnx_export import check_float_parity  # noqa: E402
from edgehaze.export.quantize import AccuracyDropError  # noqa: E402

QUIET = dict(log=lambda _m: None, progress=False)


def _perturbed(model: "torch.nn.Module", seed: int = 0, scale: float = 0.05) -> "torch.nn.Module":
    """Random non-identity weights (the edge head starts at zero = identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model.eval()


@pytest.fixture(scope="module")
def bare_ckpt(tmp_path_factory) -> Path:
    torch.set_num_threads(2)
    path = tmp_path_factory.mktemp("ckpt") / "edge.safetensors"
    save_dehazer(path, _perturbed(build_dehazer("edge-s", depth=None), scale=0.02))
    return path


@pytest.fixture(scope="module")
def fused_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "fused.safetensors"
    model = build_dehazer("edge-s", depth="tiny", depth_kwargs={"input_size": 42})
    save_dehazer(path, _perturbed(model, seed=1))
    return path


def _session(path: Path) -> "ort.InferenceSession":
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_fp32_onnx_matches_torch_on_odd_sizes(bare_ckpt, tmp_path):
    res = export_checkpoint(bare_ckpt, out=tmp_path, **QUIET)
    sess = _session(res.files["onnx"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, inp.type, inp.shape) == ("image", "tensor(uint8)", [1, "height", "width", 3])
    assert (out.name, out.type) == ("dehazed", "tensor(uint8)")

    from edgehaze.checkpoint import load_dehazer

    model, _ = load_dehazer(bare_ckpt)
    full = G.FullGraph(G.FloatModel(model.eval()))
    img = np.random.default_rng(3).integers(0, 256, size=(1, 45, 61, 3), dtype=np.uint8)
    got = sess.run(["dehazed"], {"image": img})[0]
    with torch.no_grad():
        ref = full(torch.from_numpy(img)).numpy()
    assert got.shape == (1, 45, 61, 3)
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    assert (got != img).any(), "the perturbed model must not be the identity"
    # the float core (before clamping/rounding) agrees within 1e-4 on odd sizes
    assert check_float_parity(G.FloatModel(model), [(45, 61), (33, 70)]) <= 1e-4


def test_bgr_channel_order_flips_io(bare_ckpt, tmp_path):
    fixed = dict(dynamic=False, imgsz=(40, 52), **QUIET)
    rgb = export_checkpoint(bare_ckpt, out=tmp_path, name="rgb", **fixed)
    bgr = export_checkpoint(bare_ckpt, out=tmp_path, name="bgr", channel_order="BGR", **fixed)
    img = np.random.default_rng(0).integers(0, 256, size=(1, 40, 52, 3), dtype=np.uint8)
    a = _session(rgb.files["onnx"]).run(None, {"image": img})[0]
    b = _session(bgr.files["onnx"]).run(None, {"image": np.ascontiguousarray(img[..., ::-1])})[0]
    assert np.array_equal(a, b[..., ::-1])
    assert bgr.sidecar["input"]["channel_order"] == "BGR"


def test_metadata_round_trips(bare_ckpt, tmp_path):
    res = export_checkpoint(bare_ckpt, out=tmp_path, dynamic=False, imgsz=(48, 64), **QUIET)
    sidecar = json.loads(res.files["sidecar"].read_text())
    assert sidecar == read_metadata_props(res.files["onnx"]) == json.loads(json.dumps(res.sidecar))
    assert sidecar["format"] == "edgehaze-artifact" and sidecar["version"] == 1
    assert sidecar["dynamic"] is False and sidecar["shape_ranges"]["opt"] == [1, 48, 64, 3]
    assert sidecar["graphs"] == {"full": res.files["onnx"].name}
    assert sidecar["model"]["backbone"] == "edge-s" and sidecar["precision"] == "fp32"
    # fixed size: the graph's input has concrete dims
    assert _session(res.files["onnx"]).get_inputs()[0].shape == [1, 48, 64, 3]
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.slow  # ~35 s on 2 busy cores (three graphs with a depth teacher)
def test_internal_scale_export_runs_the_network_coarser(bare_ckpt, tmp_path):
    """--internal-scale: the graph is the rescaled model (checked by the export itself), and the sidecar says so."""
    from edgehaze.checkpoint import load_dehazer
    from edgehaze.export.fused import internal_scale

    res = export_checkpoint(bare_ckpt, out=tmp_path, internal_scale=8, **QUIET)
    assert res.files["onnx"].name == "edge-s8.onnx"
    assert res.sidecar["model"]["scale"] == 8
    model, _ = load_dehazer(bare_ckpt)
    assert model.backbone.scale == 4
    ref = G.FullGraph(G.FloatModel(internal_scale(model.eval(), 8)))
    img = np.random.default_rng(5).integers(0, 256, size=(1, 50, 70, 3), dtype=np.uint8)
    got = _session(res.files["onnx"]).run(["dehazed"], {"image": img})[0]
    with torch.no_grad():
        want = ref(torch.from_numpy(img)).numpy()
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    with pytest.raises(EdgehazeError, match="internal-scale 0"):
        export_checkpoint(bare_ckpt, out=tmp_path / "bad", internal_scale=0, **QUIET)


def test_two_graph_chain_equals_single_graph(fused_ckpt, tmp_path):
    res = export_checkpoint(fused_ckpt, out=tmp_path, two_graph=True, dynamic=False, imgsz=(56, 72), **QUIET)
    meta = res.sidecar
    assert set(meta["graphs"]) == {"full", "depth", "fuse"}
    names = [f["name"] for f in meta["depth_features"]]
    assert names and names[0] == "depth_0"
    assert meta["teacher"] == "tiny"
    depth, fuse, full = (_session(res.files[k]) for k in ("depth", "fuse", "onnx"))
    assert [o.name for o in depth.get_outputs()] == names
    assert [i.name for i in fuse.get_inputs()] == ["image", *names]
    img = np.random.default_rng(5).integers(0, 256, size=(1, 56, 72, 3), dtype=np.uint8)
    feats = depth.run(names, {"image": img})
    chained = fuse.run(["dehazed"], {"image": img, **dict(zip(names, feats))})[0]
    single = full.run(["dehazed"], {"image": img})[0]
    assert np.abs(chained.astype(int) - single.astype(int)).max() <= 1
    assert read_metadata_props(res.files["depth"])["graphs"] == meta["graphs"]


@pytest.fixture(scope="module")
def student_ckpt(tmp_path_factory) -> Path:
    """edge-xs + a CNN student pooling by the backbone's scale: the fused layout."""
    path = tmp_path_factory.mktemp("ckpt") / "student.safetensors"
    model = build_dehazer("edge-xs", depth="student-s", fusion="lite",
                          depth_kwargs={"widths": [8, 16, 16, 16], "blocks": [1, 1, 1, 1]})
    save_dehazer(path, _perturbed(model, seed=2, scale=0.03))
    return path


def test_two_graph_int8_in_the_fused_layout(student_ckpt, tmp_path):
    """--two-graph --int8 (PTQ): depth and fuse graphs in the fused layout; the chain equals the single INT8 graph,
    and the runtime's depth-every-N path runs it."""
    import edgehaze.runtime as runtime

    res = export_checkpoint(student_ckpt, out=tmp_path, two_graph=True, precision="int8", method="ptq",
                            calib="procedural", calib_images=4, holdout_images=2, calib_size=(48, 64), **QUIET)
    meta = res.sidecar
    assert set(meta["graphs"]) == {"full", "depth", "fuse"} and meta["accuracy"]["two_graph_max_diff"] <= 1
    names = [f["name"] for f in meta["depth_features"]]
    depth, fuse = _session(res.files["depth"]), _session(res.files["fuse"])
    assert [i.name for i in fuse.get_inputs()] == ["image", *names]
    fuse_ops = {n.op_type for n in onnx.load(str(res.files["fuse"])).graph.node}
    assert "QuantizeLinear" in fuse_ops and "MatMul" in fuse_ops  # INT8 core + the fused apply step
    assert any(n.name == "fused/apply_gain" for n in onnx.load(str(res.files["fuse"])).graph.node)
    img = np.random.default_rng(6).integers(0, 256, size=(1, 45, 61, 3), dtype=np.uint8)
    with runtime.Dehazer(res.files["onnx"], {"depth_every": 3}) as cached, runtime.Dehazer(res.files["onnx"]) as single:
        for _ in range(4):  # a static scene: refreshing depth or not gives the single graph's output
            a, b = cached.run(img[0]), single.run(img[0])
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
        assert cached.depth_refreshes == 2


def test_two_graph_int8_refusals(student_ckpt, bare_ckpt, tmp_path):
    with pytest.raises(EdgehazeError, match="--method ptq"):
        export_checkpoint(student_ckpt, out=tmp_path, two_graph=True, precision="int8", calib="procedural", **QUIET)
    with pytest.raises(EdgehazeError, match="no depth branch"):
        export_checkpoint(bare_ckpt, out=tmp_path, two_graph=True, precision="int8", method="ptq",
                          calib="procedural", **QUIET)


def _count(path: Path, op: str) -> int:
    return sum(n.op_type == op for n in onnx.load(str(path)).graph.node)


@pytest.mark.slow  # ~30 s: NNCF calibration + QAT
def test_int8_qat_has_qdq_and_small_drop(bare_ckpt, tmp_path):
    res = export_checkpoint(
        bare_ckpt, out=tmp_path, precision="int8", calib="procedural", calib_images=4, holdout_images=2,
        calib_size=(48, 64), qat_steps=3, max_psnr_drop=0.2, **QUIET,
    )
    acc = res.sidecar["accuracy"]
    assert _count(res.files["onnx"], "QuantizeLinear") > 10
    assert acc["psnr_drop"] <= 0.2 and acc["psnr_vs_fp32"] > 30
    assert res.sidecar["precision"] == "int8" and res.files["onnx"].name == "edge-int8.onnx"
    # the full-resolution apply step stays in float: the only Q/DQ node outside the QAT core is the final
    # uint8 conversion, and the upsampled maps feed the float apply directly
    m = onnx.load(str(res.files["onnx"]))
    producers = {o: n for n in m.graph.node for o in n.output}
    assert [n.name for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
            and n.name.startswith("fused/")] == ["fused/to_uint8"]
    apply_gain = next(n for n in m.graph.node if n.name == "fused/apply_gain")
    assert [producers[i].op_type for i in apply_gain.input] == ["Cast", "Reshape"]
    # NNCF's QDQ units are ones ORT fuses (uint8 activations): only the maps head stays a float Conv
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(res.files["onnx"]), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert ops.count("QLinearConv") > 5 and ops.count("Conv") + ops.count("FusedConv") <= 1, ops
    out = _session(res.files["onnx"]).run(None, {"image": np.zeros((1, 33, 47, 3), np.uint8)})[0]
    assert out.shape == (1, 33, 47, 3) and out.dtype == np.uint8
    assert producers  # graph is well-formed


def test_int8_refused_when_drop_passes_threshold(bare_ckpt, tmp_path):
    kw = dict(out=tmp_path, precision="int8", calib="procedural", calib_images=3, holdout_images=2,
              calib_size=(48, 64), method="ptq", dynamic=False, imgsz=(48, 64), **QUIET)
    with pytest.raises(AccuracyDropError, match="--max-psnr-drop"):
        export_checkpoint(bare_ckpt, max_psnr_drop=-50.0, **kw)
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob("*.json"))
    res = export_checkpoint(bare_ckpt, max_psnr_drop=-50.0, force=True, **kw)
    assert res.files["onnx"].is_file() and _count(res.files["onnx"], "QuantizeLinear") > 0


def test_int8_needs_calibration(bare_ckpt, tmp_path):
    with pytest.raises(EdgehazeError, match="--calib"):
        export_checkpoint(bare_ckpt, out=tmp_path, precision="int8", **QUIET)


def test_cli_rejects_flags_the_target_does_not_take(bare_ckpt, capsys):
    from edgehaze.cli import main

    assert main(["export", "--checkpoint", str(bare_ckpt), "--format", "engine", "--ort-optimize"]) == 2
    assert "does not take --ort-optimize" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(bare_ckpt), "--calib", "x"]) == 2
    assert "only apply with --int8" in capsys.readouterr().err


def test_cli_exports_and_prints_next_commands(bare_ckpt, tmp_path, capsys):
    from edgehaze.cli import main

    assert main(["export", "--checkpoint", str(bare_ckpt), "--out", str(tmp_path), "--imgsz", "40", "56"]) == 0
    out = capsys.readouterr().out
    assert "runtime/stream.py --model" in out and "edgehaze eval --checkpoint" in out
    assert (tmp_path / "edge.onnx").is_file() and (tmp_path / "edge.json").is_file()


def test_onnx_runner_registered_for_eval(bare_ckpt, tmp_path):
    runners = pytest.importorskip("edgehaze.data.runners")
    res = export_checkpoint(bare_ckpt, out=tmp_path, **QUIET)
    run = runners.make_runner(res.files["onnx"])
    img = np.random.default_rng(0).random((30, 41, 3)).astype(np.float32)
    out = run(img)
    assert out.shape == img.shape and out.dtype == np.float32 and 0 <= out.min() <= out.max() <= 1


def test_tensorrt_engine(bare_ckpt, tmp_path):
    from edgehaze.export.tensorrt_build import engine_available

    reason = engine_available()
    if reason is not None:
        pytest.skip(reason)
    if not torch.cuda.is_available():  # pragma: no cover - GPU machines only
        pytest.skip("TensorRT installed but no CUDA GPU visible")
    res = export_checkpoint(bare_ckpt, out=tmp_path, fmt="engine", precision="fp16", **QUIET)  # pragma: no cover
    assert res.files["engine"].stat().st_size > 0  # pragma: no cover


def test_gpu_target_without_tensorrt_gives_install_hint(bare_ckpt, tmp_path):
    from edgehaze.export.tensorrt_build import engine_available

    if engine_available() is None:
        pytest.skip("tensorrt is installed here")
    with pytest.raises(EdgehazeError, match=r"pip install edgehaze\[trt\]"):
        export_checkpoint(bare_ckpt, out=tmp_path, fmt="engine", precision="fp16", **QUIET)


def test_ptq_ranges_ignore_a_rare_extreme_activation(tmp_path) -> None:
    """Percentile calibration (CALIB_PERCENTILE): one outlier pixel must not stretch the activation range."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, quantize_static

    from edgehaze.export.quantize import ort_static_options

    w = numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 64, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 64, 64])], [w])
    src = tmp_path / "f.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    rng = np.random.default_rng(0)
    batches = [rng.uniform(0, 1, (1, 1, 64, 64)).astype(np.float32) for _ in range(8)]
    batches[3][0, 0, 5, 5] = 50.0  # one extreme pixel in 32768

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"x": b} for b in batches])

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.it, None)

    def input_scale(**override) -> float:  # type: ignore[no-untyped-def]
        dst = tmp_path / f"q{len(override)}.onnx"
        quantize_static(str(src), str(dst), Reader(), **{**ort_static_options("cpu"), **override})
        inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(dst)).graph.initializer}
        return float(next(v for k, v in inits.items() if k.startswith("x") and k.endswith("scale")))

    assert ort_static_options("cpu")["calibrate_method"] == CalibrationMethod.Percentile
    shipped, minmax = input_scale(), input_scale(calibrate_method=CalibrationMethod.MinMax)
    assert minmax > 40 / 255 and shipped < 2 / 255, (shipped, minmax)
