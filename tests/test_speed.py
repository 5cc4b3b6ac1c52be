"""Speed work: the fused apply graph, the lite fusion, profiling summaries, the Pareto script.

No timing assertions: timings only appear as positive, finite numbers.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

torch.set_num_threads(2)


def _model(backbone="edge-xs", fusion="lite", seed=0):
    from edgehaze import build_dehazer

    torch.manual_seed(seed)
    m = build_dehazer(backbone, depth="student-s", fusion=fusion,
                      depth_kwargs={"widths": [8, 16, 16, 16], "blocks": [1, 1, 1, 1]}).eval()
    # non-zero maps and fusion outputs, or the apply step would be the identity
    torch.nn.init.normal_(m.backbone.head.weight, std=0.05)
    torch.nn.init.normal_(m.backbone.head.bias, std=0.1)
    for blk in m.fused_blocks():
        torch.nn.init.normal_(blk.z2.weight, std=0.05)
    return m


def _session(model):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def tiny():
    from edgehaze.export.fused import export_fused

    m = _model()
    return m, export_fused(m)


@pytest.mark.parametrize("hw", [(37, 53), (61, 45), (8, 9)])
def test_fused_graph_equals_unfused_reference(tiny, hw):
    from edgehaze.export.graphs import FloatModel, FullGraph

    model, fused = tiny
    ref = FullGraph(FloatModel(model)).eval()
    img = np.random.default_rng(hw[0]).integers(0, 256, size=(1, *hw, 3), dtype=np.uint8)
    got = _session(fused).run(["dehazed"], {"image": img})[0]
    with torch.no_grad():
        want = ref(torch.from_numpy(img)).numpy()
    assert got.shape == want.shape == img.shape and got.dtype == np.uint8
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert diff.max() <= 1, diff.max()           # float association order may flip a rounding
    assert (diff > 0).mean() < 0.01
    assert np.abs(got.astype(np.int16) - img.astype(np.int16)).max() > 3  # the maps did something


def _const_core(maps: np.ndarray, scale: int, prepool: int, guide=None):
    """A "core" that ignores its input and returns ``maps``, carrying the fused-graph metadata."""
    try:
        from _artifacts import const_core
    except ImportError:  # run from the repository root as a package
        from tests._artifacts import const_core
    return const_core(maps, scale, prepool, guide)


@pytest.mark.parametrize("scale,prepool,sizes", [
    (4, 4, [(19, 27), (17, 25), (20, 28)]),      # partial last cells, and whole cells
    (3, 3, [(13, 19), (15, 21)]),                # odd scale
    (4, 1, [(18, 26)]),                          # core takes the whole frame
])
def test_fused_apply_matches_reference_on_random_maps(scale, prepool, sizes):
    """The fused tail alone (a core returning given maps) vs the model's own apply step, at odd sizes."""
    from edgehaze.export.fused import fused_graph, reference_apply

    rng = np.random.default_rng(scale)
    maps = (rng.standard_normal((1, 6, 5, 7)) * 0.3).astype(np.float32)
    for order in ("RGB", "BGR"):
        sess = _session(fused_graph(_const_core(maps, scale, prepool), order))
        for hw in sizes:
            img = rng.integers(0, 256, size=(1, *hw, 3), dtype=np.uint8)
            got = sess.run(["dehazed"], {"image": img})[0]
            want = reference_apply(np.ascontiguousarray(img[..., ::-1]) if order == "BGR" else img, maps, scale)
            if order == "BGR":
                want = want[..., ::-1]
            assert got.shape == img.shape
            assert np.abs(got.astype(np.int16) - want.astype(np.int16)).max() <= 1, (order, hw)


def test_upsample_weights_are_bilinear():
    """The 3-tap weights reproduce F.interpolate(scale_factor=s) on an edge-padded map."""
    import torch.nn.functional as F

    from edgehaze.export.fused import upsample_weights

    for s in (2, 3, 8, 16):
        w = torch.from_numpy(upsample_weights(s))
        row = torch.randn(1, 1, 1, 6)
        want = F.interpolate(row, scale_factor=(1.0, float(s)), mode="bilinear", align_corners=False)[0, 0, 0]
        pad = F.pad(row[0], (1, 1), mode="replicate")[0, 0]
        taps = torch.stack([pad[:-2], pad[1:-1], pad[2:]], dim=1)  # cells x 3
        got = (taps @ w.T).reshape(-1)
        assert torch.allclose(got, want, atol=1e-6), s
        assert torch.allclose(w.sum(1), torch.ones(s))


def test_apply_equals_resize_to_size_on_whole_cells():
    """Upsample-by-scale-and-crop is the old resize-to-size wherever the sides are multiples of the scale."""
    import torch.nn.functional as F

    from edgehaze.models.backbones.edge import upsample_maps

    maps = torch.randn(1, 6, 6, 8)
    assert torch.allclose(upsample_maps(maps, 8, (48, 64)),
                          F.interpolate(maps, size=(48, 64), mode="bilinear", align_corners=False), atol=1e-6)
    assert upsample_maps(maps, 8, (43, 57)).shape[-2:] == (43, 57)


def test_prepooled_core_is_the_same_network(tiny):
    """Pooling outside the core (the fused layout) gives the model's numbers at odd sizes."""
    from edgehaze.export.fused import prepool_factor, prepooled
    from edgehaze.export.graphs import FloatCore, FloatModel

    model, _ = tiny
    p = prepool_factor(model)
    assert p == model.backbone.scale == 4
    moved = FloatModel(model, core=FloatCore(prepooled(model, p)), prepool=p).eval()
    ref = FloatModel(model).eval()
    for hw in [(37, 53), (8, 9), (64, 48)]:
        x = torch.rand(1, 3, *hw)
        with torch.no_grad():
            assert torch.allclose(moved(x), ref(x), atol=1e-5), hw


def test_pool_image_matches_torch():
    import torch.nn.functional as F

    from edgehaze.export.fused import pool_image

    img = np.random.default_rng(0).random((13, 21, 3), dtype=np.float32)
    want = F.avg_pool2d(torch.from_numpy(img).permute(2, 0, 1)[None], 4, 4, ceil_mode=True, count_include_pad=False)
    assert np.allclose(pool_image(img, 4), want[0].permute(1, 2, 0).numpy(), atol=1e-6)


def test_int8_fused_graph_runs_convs_in_int8_and_stays_close(tiny):
    """Every conv becomes QLinearConv after ORT's QDQ fusion (no float Conv with dequantised weights)."""
    import onnxruntime as ort

    from edgehaze.export.fused import export_fused

    model, fused32 = tiny
    calib = [np.random.default_rng(i).random((40, 56, 3), dtype=np.float32) for i in range(4)]
    q = export_fused(model, "int8", calib)
    with __import__("tempfile").TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = f"{tmp}/opt.onnx"
        so.log_severity_level = 3
        ort.InferenceSession(q.SerializeToString(), so, providers=["CPUExecutionProvider"])
        import onnx

        ops = [n.op_type for n in onnx.load(f"{tmp}/opt.onnx").graph.node]
    assert ops.count("QLinearConv") > 10 and "Conv" not in ops
    img = np.random.default_rng(9).integers(0, 256, size=(1, 40, 56, 3), dtype=np.uint8)
    a = _session(fused32).run(["dehazed"], {"image": img})[0].astype(np.int16)
    b = _session(q).run(["dehazed"], {"image": img})[0].astype(np.int16)
    assert np.abs(a - b).mean() < 3


def test_fused_graph_bgr_is_rgb_flipped(tiny):
    from edgehaze.export.fused import export_fused

    model, fused_rgb = tiny
    fused_bgr = export_fused(model, channel_order="BGR")
    img = np.random.default_rng(1).integers(0, 256, size=(1, 29, 31, 3), dtype=np.uint8)
    rgb = _session(fused_rgb).run(["dehazed"], {"image": img})[0]
    bgr = _session(fused_bgr).run(["dehazed"], {"image": np.ascontiguousarray(img[..., ::-1])})[0]
    assert np.abs(bgr[..., ::-1].astype(np.int16) - rgb.astype(np.int16)).max() <= 1


def test_fused_graph_has_few_full_resolution_ops(tiny):
    """The point of fusing: no Resize, Clip, Round or Gather; one cast in, one quantise out."""
    _, fused = tiny
    ops = [n.op_type for n in fused.graph.node if n.name.startswith("fused/")]
    for bad in ("Resize", "Clip", "Round"):
        assert bad not in ops
    assert ops.count("QuantizeLinear") == 1 and ops.count("Cast") == 3 and "DequantizeLinear" not in ops  # frame + 2 counts
    assert ops.count("MatMul") == 3 and ops.count("Transpose") == 2


def test_int8_graph_keeps_quantisation_off_the_full_resolution_frame(tiny):
    """After ORT's own optimisation, no Quantize/DequantizeLinear or float transpose runs on a frame-sized tensor.

    Guards the layout barrier and the Cast: without them ORT re-quantises and
    transposes the float frame around an INT8 core (profiled: ~14 ms at 1080p).
    """
    from edgehaze.export.fused import export_fused
    from edgehaze.profiling import profile_onnx

    model, _ = tiny
    calib = [np.random.default_rng(i).random((40, 56, 3), dtype=np.float32) for i in range(3)]
    q = export_fused(model, "int8", calib).SerializeToString()
    prof = profile_onnx(q, (150, 210), runs=1, warmup=1, top=10_000)
    full = [(r["op"], r["name"]) for r in prof["top_nodes"] if r["full_res"]]
    assert full, "the profile should see the full-resolution apply step"
    offending = [(op, name) for op, name in full if op in ("QuantizeLinear", "DequantizeLinear") and name != "fused/to_uint8"]
    transposes = [name for op, name in full if op == "Transpose"]
    assert not offending, offending
    assert sorted(transposes) == ["fused/image_nchw", "fused/to_nhwc"], transposes


def test_internal_scale_changes_network_resolution_only(tiny):
    from edgehaze.export.fused import internal_scale

    model, _ = tiny
    big = internal_scale(model, 8)
    assert big.backbone.scale == 8 and big.depth.pool == 8 and model.backbone.scale == 4
    x = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        assert big.backbone.correction_maps(x).shape[-2:] == (5, 7)
        assert big(x).shape == x.shape


def test_lite_fusion_starts_as_bare_backbone_and_is_int8_friendly():
    from edgehaze.export.fused import export_core
    from edgehaze.models.fusion import FUSION_VARIANTS, FusionConfig, resolve_fusion

    assert resolve_fusion("lite").style == "lite" and FUSION_VARIANTS["full"].style == "paper"
    from edgehaze.errors import ConfigError

    with pytest.raises(ConfigError):
        FusionConfig(style="fancy")
    from edgehaze import build_dehazer

    torch.manual_seed(0)
    fused = build_dehazer("edge-xs", depth="student-s", fusion="lite").eval()
    bare = build_dehazer("edge-xs").eval()
    bare.backbone.load_state_dict({k.replace(".block.", ".", 1) if ".block." in k else k: v
                                   for k, v in fused.backbone.state_dict().items()
                                   if not any(t in k for t in (".z1.", ".z2.", ".rdf."))})
    torch.nn.init.normal_(fused.backbone.head.weight, std=0.05)
    bare.backbone.head.load_state_dict(fused.backbone.head.state_dict())
    x = torch.rand(1, 3, 45, 61)
    with torch.no_grad():
        assert torch.equal(fused(x), bare(x))  # zero convs: exact at init
    ops = {n.op_type for n in export_core(fused).graph.node}
    assert not ops & {"Softmax", "ReduceL2", "LayerNormalization", "Erf", "Gelu"}


def test_student_pools_before_normalising_same_numbers():
    import torch.nn.functional as F

    from edgehaze.models.dehazer import build_depth

    torch.manual_seed(0)
    s = build_depth("student-s").eval()
    x = torch.rand(1, 3, 37, 50)
    ref = F.avg_pool2d((x - s.mean) / s.std, s.pool, s.pool, ceil_mode=True, count_include_pad=False)
    got = (F.avg_pool2d(x, s.pool, s.pool, ceil_mode=True, count_include_pad=False) - s.mean) / s.std
    assert torch.allclose(ref, got, atol=1e-5)
    with torch.no_grad():
        feats = s.features(x)
    assert [f.shape[1] for f in feats] == s.feature_channels


def test_profile_summary_from_tiny_model(tiny, tmp_path):
    from edgehaze.profiling import format_profile, profile_onnx, summarise_profile

    _, fused = tiny
    trace = tmp_path / "trace.json"
    s = profile_onnx(fused.SerializeToString(), (48, 64), runs=3, warmup=1, keep_trace=trace, top=1000)
    assert s["runs"] == 3 and s["nodes"] > 10
    assert s["kernel_us_per_run"] > 0 and math.isfinite(s["kernel_us_per_run"])
    ops = {r["op"] for r in s["by_op"]}
    assert {"Conv", "MatMul", "QuantizeLinear"} <= ops
    assert math.isclose(s["full_res_us_per_run"] + s["low_res_us_per_run"], s["kernel_us_per_run"], rel_tol=1e-3, abs_tol=1)
    names = {r["name"]: r for r in s["top_nodes"]}
    # the uint8 conversions run at the frame's size, the network does not
    assert names["fused/to_uint8"]["full_res"] and names["fused/x255"]["full_res"]
    assert not any(r["full_res"] for r in s["top_nodes"] if r["op"] == "Conv")
    assert s["qdq_us_per_run"] > 0  # the fp32 fused graph's own uint8 conversion is a QuantizeLinear
    again = summarise_profile(trace, (48, 64), runs=3)
    assert again["nodes"] == s["nodes"]
    assert "ORT profile" in format_profile(s, "tiny") and json.dumps(s)


def test_is_full_resolution():
    from edgehaze.profiling import is_full_resolution

    assert is_full_resolution([1, 480, 640, 3], (480, 640))
    assert is_full_resolution([1, 3, 480, 640], (480, 640))
    assert not is_full_resolution([1, 32, 120, 160], (480, 640))
    assert not is_full_resolution([1, 640, 480, 3], (480, 640))
    assert is_full_resolution([1, 3, 60, 8, 640], (480, 640))      # cells x scale, then W
    assert is_full_resolution([1, 3, 1088, 1920], (1080, 1920))    # padded to whole cells
    assert not is_full_resolution([1, 3, 60, 8, 80], (480, 640))


def test_conv_stack_int8_is_fused_to_qlinearconv_and_ceiling_fraction():
    import onnx

    from benchmarks.limits import ceiling_fraction, conv_stack

    m = onnx.load_from_string(conv_stack(width=8, layers=2, int8=True))
    assert sum(n.op_type == "Conv" for n in m.graph.node) == 2
    assert sum(n.op_type == "QuantizeLinear" for n in m.graph.node) == 3
    assert ceiling_fraction(2e9, 10.0, 400.0) == pytest.approx(0.5)
    assert ceiling_fraction(1.0, 0.0, 1.0) is None


def test_pareto_two_tiny_points(tmp_path):
    from benchmarks.pareto import sweep

    r = sweep(points=["edge-xs:4", "edge-xs:8"], steps=1, batch=2, crop=32, n_train=2, n_test=1, data_size=(32, 48),
              sizes={"640x480": (32, 48), "1920x1080": (40, 64)}, rounds=1, threads=1, out=tmp_path, calib_n=1,
              progress=False, student_kwargs={"widths": [8, 8, 8, 8], "blocks": [1, 1, 1, 1]}, log=lambda m: None)
    assert [p["point"] for p in r["points"]] == ["edge-xs:4", "edge-xs:8"]
    for p in r["points"]:
        assert math.isfinite(p["psnr_fp32"]) and math.isfinite(p["psnr_int8"]) and 0 < p["ssim_fp32"] <= 1
        assert set(p["fps"]) == {"640x480:fp32", "640x480:int8", "1920x1080:fp32", "1920x1080:int8"}
        assert all(v > 0 for v in p["fps"].values())
        assert Path(p["checkpoint"]).is_file()
    assert r["points"][1]["gmac"]["640x480"] < r["points"][0]["gmac"]["640x480"]  # scale 8 is cheaper
    for name in ("pareto.json", "pareto.md", "pareto.svg"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "pareto.svg").read_text().startswith("<svg")


def test_bench_cli_profile_on_a_fused_artifact(tiny, tmp_path, capsys):
    from benchmarks.speed_report import write_artifact
    from edgehaze.cli import main

    model, fused = tiny
    path = write_artifact(fused, tmp_path, "tiny", "fp32", model.build_args())
    rc = main(["bench", "--onnx", str(path), "--sizes", "48x64", "--runs", "2", "--warmup", "1", "--no-progress",
               "--no-tensorrt", "--profile"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "ORT profile" in out and "full resolution" in out and "Quantize/DequantizeLinear" in out


def test_stream_check_exports_and_streams_a_video(tmp_path):
    """benchmarks/stream_check.py: ceilings, export per size (internal scale for the large one), stream, report."""
    import cv2

    from benchmarks.stream_check import check, markdown
    from edgehaze import build_dehazer
    from edgehaze.checkpoint import save_dehazer

    torch.manual_seed(0)
    model = build_dehazer("edge-xs", depth=None).eval()
    torch.nn.init.normal_(model.backbone.head.weight, std=0.02)
    ckpt = save_dehazer(tmp_path / "tiny.safetensors", model)
    video = tmp_path / "clip.avi"
    vw = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (80, 60))
    for i in range(6):
        vw.write(np.random.default_rng(i).integers(0, 256, (60, 80, 3), dtype=np.uint8))
    vw.release()
    r = check(video, ckpt, tmp_path / "out", sizes=["48x64", "480x640"], scale_1080=None, method="ptq",
              max_frames=4, quick=True, log=lambda _m: None)
    small, big = r["sizes"]["64x48"], r["sizes"]["640x480"]
    assert small["internal_scale"] == 4 and big["internal_scale"] == 4  # 640x480 is not a "large" frame
    assert small["frames"] == 4 and small["fps"] > 0 and big["status"] in ("pass", "short")
    assert r["limits"]["conv_int8_gmacs"] > 0
    text = markdown(r)
    assert "| 64x48 | 4 |" in text and "Ceilings in this run" in text
    # a large size gets twice the trained scale, as `edgehaze export --internal-scale` would
    r2 = check(video, ckpt, tmp_path / "out", sizes=["720x1280"], method="ptq", max_frames=2, quick=True,
               log=lambda _m: None)
    assert r2["sizes"]["1280x720"]["internal_scale"] == 8
