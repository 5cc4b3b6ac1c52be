"""The TensorRT flavour of every export (``--target trt``), checked by our TensorRT checker and in ONNX Runtime.

The checker passes the trt flavour of each kind of graph (plain, fused, two-graph; FP32 and INT8) and
names the rules today's CPU flavour breaks (asymmetric uint8 Q/DQ, uint8 layout ops). Accuracy is
measured in ONNX Runtime on CPU: the trt FP32 graph equals the cpu one, INT8 stays within 0.1 dB.
"""
from __future__ import annotations

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
from edgehaze.export.trt_check import check_artifact  # noqa: E402

QUIET = dict(log=lambda _m: None, progress=False)
INT8 = dict(precision="int8", calib="procedural", calib_images=4, holdout_images=2, calib_size=(48, 64))
#: the issue's bound on the TensorRT flavour's INT8 accuracy (hold-out PSNR drop vs FP32, ONNX Runtime CPU)
MAX_DROP_DB = 0.1


def _perturbed(model, seed: int, scale: float):  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model.eval()


@pytest.fixture(scope="module")
def edge_ckpt(tmp_path_factory) -> Path:
    torch.set_num_threads(2)
    path = tmp_path_factory.mktemp("ckpt") / "edge.safetensors"
    save_dehazer(path, _perturbed(build_dehazer("edge-s", depth=None), 0, 0.02))
    return path


@pytest.fixture(scope="module")
def student_ckpt(tmp_path_factory) -> Path:
    """edge-xs + a CNN student pooling by the backbone's scale: the fused two-graph layout."""
    path = tmp_path_factory.mktemp("ckpt") / "student.safetensors"
    model = build_dehazer("edge-xs", depth="student-s", fusion="lite",
                          depth_kwargs={"widths": [8, 16, 16, 16], "blocks": [1, 1, 1, 1]})
    save_dehazer(path, _perturbed(model, 2, 0.03))
    return path


def _run(path: Path, img: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["dehazed"], {"image": img})[0]


def _float_convs(path: Path) -> list:
    """Convs that TensorRT would not run in INT8: it fuses DQ(activation) + DQ(weights) -> Conv, so both must be DQs."""
    nodes = onnx.load(str(path)).graph.node
    producer = {o: n.op_type for n in nodes for o in n.output}
    return [n.name for n in nodes if n.op_type == "Conv"
            and [producer.get(i) for i in n.input[:2]] != ["DequantizeLinear", "DequantizeLinear"]]


def _passes(path: Path) -> list:
    reports = check_artifact(path)
    for r in reports:
        assert r.ok(), "\n".join(r.lines())
    return reports


@pytest.mark.parametrize("fused, order", [(False, "RGB"), (True, "BGR")], ids=["plain-rgb", "fused-bgr"])
def test_fp32_trt_flavour_passes_and_equals_the_cpu_flavour(edge_ckpt, tmp_path, fused, order):
    """BGR: the flavour OpenCV frames go into without a per-frame channel swap (runtime/README.md)."""
    cpu = export_checkpoint(edge_ckpt, out=tmp_path, fused=fused, channel_order=order, **QUIET)
    trt = export_checkpoint(edge_ckpt, out=tmp_path, fused=fused, channel_order=order, target="trt", **QUIET)
    assert trt.sidecar["input"]["channel_order"] == trt.sidecar["output"]["channel_order"] == order
    assert trt.files["onnx"].name == "edge-trt.onnx" and cpu.files["onnx"].name == "edge.onnx"
    assert (trt.sidecar["target"], cpu.sidecar["target"]) == ("trt", "cpu")
    _passes(trt.files["onnx"])
    (cpu_report,) = check_artifact(cpu.files["onnx"])
    assert "uint8" in cpu_report.rules()
    # the CPU flavour's byte transpose of the input is what the checker names
    first = onnx.load(str(cpu.files["onnx"])).graph.node
    byte_ops = {n.name for n in first if n.op_type == "Transpose" and "image" in n.input}
    assert byte_ops and byte_ops <= {f.node for f in cpu_report.findings if f.rule == "uint8"}
    # uint8 only at the ends: Cast in, Round -> Clip -> Cast out
    nodes = onnx.load(str(trt.files["onnx"])).graph.node
    producers = {o: n for n in nodes for o in n.output}
    out_cast = producers["dehazed"]
    assert out_cast.op_type == "Cast" and producers[out_cast.input[0]].op_type == "Clip"
    assert {n.op_type for n in nodes if "image" in n.input} == {"Cast"}
    img = np.random.default_rng(1).integers(0, 256, (1, 45, 61, 3), dtype=np.uint8)
    assert np.array_equal(_run(trt.files["onnx"], img), _run(cpu.files["onnx"], img))


def test_fp16_flavours_through_the_checker(edge_ckpt, tmp_path):
    trt = export_checkpoint(edge_ckpt, out=tmp_path, precision="fp16", target="trt", **QUIET)
    cpu = export_checkpoint(edge_ckpt, out=tmp_path, precision="fp16", **QUIET)
    assert (trt.sidecar["precision"], trt.sidecar["target"], cpu.sidecar["target"]) == ("fp16", "trt", "cpu")
    _passes(trt.files["onnx"])
    (report,) = check_artifact(cpu.files["onnx"])
    assert report.rules() == ["uint8"]
    assert trt.sidecar["accuracy"]["psnr_drop"] <= MAX_DROP_DB


def test_int8_ptq_trt_flavour_is_symmetric_and_within_0_1_db(edge_ckpt, tmp_path):
    trt = export_checkpoint(edge_ckpt, out=tmp_path, target="trt", method="ptq", **INT8, **QUIET)
    _passes(trt.files["onnx"])
    assert _float_convs(trt.files["onnx"]) == []  # Q/DQ where TensorRT fuses them: every conv in INT8
    acc = trt.sidecar["accuracy"]
    assert acc["qdq_nodes"] > 10 and acc["psnr_drop"] <= MAX_DROP_DB and acc["psnr_vs_fp32"] > 35, acc
    m = onnx.load(str(trt.files["onnx"]))
    zps = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    qdq = [n for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert all(zps[n.input[2]].dtype == np.int8 and not zps[n.input[2]].any() for n in qdq)
    # per-channel weights: the conv weights' scales have one value per output channel
    assert any(onnx.numpy_helper.to_array(next(i for i in m.graph.initializer if i.name == n.input[1])).size > 1
               for n in qdq if n.op_type == "DequantizeLinear")
    cpu = export_checkpoint(edge_ckpt, out=tmp_path, method="ptq", **INT8, **QUIET)
    (report,) = check_artifact(cpu.files["onnx"])
    assert {"qdq-zero-point", "qdq-type", "uint8"} <= set(report.rules())
    assert "fused/to_uint8" in {f.node for f in report.findings if f.rule == "qdq-type"}  # the rounding Q


def test_two_graph_int8_trt_flavour_passes_with_profiles_for_the_depth_inputs(student_ckpt, tmp_path):
    res = export_checkpoint(student_ckpt, out=tmp_path, two_graph=True, target="trt", method="ptq", **INT8, **QUIET)
    reports = _passes(res.files["onnx"])
    assert len(reports) == 3
    prof = res.sidecar["profiles"]["fuse"]
    names = [f["name"] for f in res.sidecar["depth_features"]]
    assert set(prof) == {"image", *names}
    depth = ort.InferenceSession(str(res.files["depth"]), providers=["CPUExecutionProvider"])
    for key in ("min", "max"):  # the recorded feature shapes are the depth graph's at those frame sizes
        feats = depth.run(names, {"image": np.zeros(prof["image"][key], np.uint8)})
        assert [list(f.shape) for f in feats] == [prof[n][key] for n in names]
    assert res.sidecar["accuracy"]["two_graph_max_diff"] <= 3 and res.sidecar["accuracy"]["psnr_drop"] <= MAX_DROP_DB
    # without the measured feature ranges the fuse graph's dynamic inputs fail the profile rule
    from edgehaze.export.trt_check import check_model

    bare = check_model(res.files["fuse"], {"image": prof["image"]})
    assert {f.node for f in bare.findings if f.rule == "profile"} == set(names)
    # the cpu flavour of the same two-graph export: each graph names its uint8 rule, none lacks a profile
    cpu = export_checkpoint(student_ckpt, out=tmp_path, two_graph=True, method="ptq", **INT8, **QUIET)
    cpu_reports = check_artifact(cpu.files["onnx"])
    assert len(cpu_reports) == 3 and all("uint8" in r.rules() and "profile" not in r.rules() for r in cpu_reports)
    assert set(cpu.sidecar["profiles"]["fuse"]) == {"image", *names} and cpu.sidecar["target"] == "cpu"


def test_sidecar_without_profiles_names_the_missing_inputs_and_the_fix(tmp_path):
    """tests/_artifacts' contract artifact records only shape_ranges (no ``profiles``, as before per-graph
    profiles): its fuse graph's depth input has no profile, and the finding says to re-export."""
    try:
        from _artifacts import make_artifact
    except ImportError:  # tests/ imported as a package
        from tests._artifacts import make_artifact

    art = make_artifact(tmp_path, two_graph=True)
    fuse = next(r for r in check_artifact(art.with_suffix(".json")) if r.graph.endswith(".fuse.onnx"))
    missing = [f for f in fuse.findings if f.rule == "profile"]
    assert [f.node for f in missing] == ["depth_0"] and "re-export with edgehaze export" in missing[0].message


@pytest.mark.slow  # NNCF compiles its extension on first use (minutes on 2 cores); ~10 s after that
def test_int8_qat_trt_flavour_uses_signed_activations(edge_ckpt, tmp_path):
    res = export_checkpoint(edge_ckpt, out=tmp_path, target="trt", qat_steps=3, **INT8, **QUIET)
    _passes(res.files["onnx"])
    assert _float_convs(res.files["onnx"]) == []
    acc = res.sidecar["accuracy"]
    assert acc["method"] == "qat" and acc["psnr_drop"] <= MAX_DROP_DB, acc
    cpu = export_checkpoint(edge_ckpt, out=tmp_path, qat_steps=3, **INT8, **QUIET)
    (report,) = check_artifact(cpu.files["onnx"])
    assert {"qdq-type", "qdq-zero-point", "uint8"} <= set(report.rules()), report.rules()


def test_cli_check_prints_verdict_and_gpu_commands(edge_ckpt, tmp_path, capsys):
    from edgehaze.cli import main

    assert main(["export", "--checkpoint", str(edge_ckpt), "--out", str(tmp_path), "--target", "trt",
                 "--check", "trt"]) == 0
    out = capsys.readouterr().out
    assert "TensorRT 8.6 PASS, TensorRT 10 PASS" in out and "verdict: PASS" in out
    assert f"trtexec --onnx={tmp_path / 'edge-trt.onnx'}" in out
    assert "--minShapes=image:1x32x32x3" in out and "--maxShapes=image:1x1080x1920x3" in out
    assert "polygraphy run" in out
    assert f"python runtime/build_engine.py {tmp_path / 'edge-trt.onnx'}" in out  # the engine is built on the device
    assert main(["export", "--checkpoint", str(edge_ckpt), "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["export", "--check", "trt", "--onnx", str(tmp_path / "edge.onnx")]) == 1
    out = capsys.readouterr().out
    assert "verdict: FAIL" in out and "[uint8]" in out and "(cpu flavour, fp32)" in out
    assert main(["export", "--check", "trt", "--onnx", str(tmp_path / "missing.onnx")]) == 2
    assert "--onnx" in capsys.readouterr().err
    assert main(["export", "--onnx", str(tmp_path / "edge.onnx")]) == 2
    assert "add --check trt" in capsys.readouterr().err


def test_engine_format_builds_from_the_trt_flavour_only():
    from edgehaze.export.targets import EXPORT_TARGETS, resolve_flavour

    engine, onnx_t = EXPORT_TARGETS["engine"], EXPORT_TARGETS["onnx"]
    assert resolve_flavour(None, [engine]).name == "trt" and resolve_flavour(None, [onnx_t]).name == "cpu"
    with pytest.raises(EdgehazeError, match="--target trt"):
        resolve_flavour("cpu", [engine])
    with pytest.raises(EdgehazeError, match="--target gpu"):
        resolve_flavour("gpu", [onnx_t])


def test_unknown_export_option_is_named(edge_ckpt, tmp_path):
    with pytest.raises(TypeError, match="presicion"):
        export_checkpoint(edge_ckpt, out=tmp_path, presicion="int8")
