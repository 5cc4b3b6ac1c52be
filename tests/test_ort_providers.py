"""ONNX Runtime GPU provider options and node placement (runtime/backends.py), checked on the CPU.

The TensorRT provider's options are a pure function of the sidecar (tested
as strings); the depth-feature profiles are measured with the real depth
graph; which provider ran each node is read with both documented ONNX
Runtime mechanisms (graph assignment info and a profiling trace), which
must agree on a CPU session.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

try:
    from _artifacts import make_artifact
except ImportError:  # tests/ imported as a package
    from tests._artifacts import make_artifact

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import runtime  # noqa: E402
from runtime.backends import (backend_label, measure_feature_profiles, placement_from_assignment,  # noqa: E402
                              placement_from_profile, trt_provider_options)


@pytest.fixture(scope="module")
def art(tmp_path_factory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("prov"))


def meta_of(art: Path, **changes) -> dict:
    meta = json.loads(art.with_suffix(".json").read_text())
    meta.update(changes)
    return meta


def test_trt_options_int8_fp16_caches_and_image_profile(art):
    opts = trt_provider_options(meta_of(art, precision="int8"), "full", device_id=1, cache_dir="/c",
                                ort_version="1.20.1")
    assert opts["trt_int8_enable"] is True and opts["trt_fp16_enable"] is True and opts["device_id"] == 1
    assert opts["trt_engine_cache_enable"] is True and opts["trt_engine_cache_path"] == "/c"
    assert opts["trt_timing_cache_enable"] is True and opts["trt_timing_cache_path"] == "/c"
    assert opts["trt_profile_min_shapes"] == "image:1x8x8x3"
    assert opts["trt_profile_opt_shapes"] == "image:1x48x64x3"
    assert opts["trt_profile_max_shapes"] == "image:1x1080x1920x3"
    fp16 = trt_provider_options(meta_of(art, precision="fp16"), "full", device_id=0, cache_dir="/c",
                                ort_version="1.16.3")
    assert fp16["trt_fp16_enable"] is True and fp16["trt_int8_enable"] is False
    assert "trt_timing_cache_path" not in fp16  # before 1.17 the timing cache lives in the engine cache dir
    fp32 = trt_provider_options(meta_of(art), "full", device_id=0, cache_dir="/c", ort_version="1.20")
    assert fp32["trt_fp16_enable"] is False and fp32["trt_int8_enable"] is False


def test_fixed_size_graph_needs_no_profile(art):
    opts = trt_provider_options(meta_of(art, dynamic=False), "full", device_id=0, cache_dir="/c", ort_version="1.20")
    assert not any(k.startswith("trt_profile_") for k in opts)


def test_fuse_graph_profiles_cover_every_dynamic_input(art):
    meta = meta_of(art)
    depth = ort.InferenceSession(str(art.with_name("tiny.depth.onnx")), providers=["CPUExecutionProvider"])
    feats = measure_feature_profiles(depth, meta, ["depth_0"])
    # the tiny depth branch has stride 2 (ceil): 8x8 -> 4x4, 48x64 -> 24x32, 1080x1920 -> 540x960
    assert feats == {"depth_0": {"min": [1, 4, 4, 4], "opt": [1, 4, 24, 32], "max": [1, 4, 540, 960]}}
    opts = trt_provider_options(meta, "fuse", device_id=0, cache_dir="/c", ort_version="1.20", feature_profiles=feats)
    assert opts["trt_profile_min_shapes"] == "image:1x8x8x3,depth_0:1x4x4x4"
    assert opts["trt_profile_max_shapes"] == "image:1x1080x1920x3,depth_0:1x4x540x960"
    declared = meta_of(art)
    declared["depth_features"][0]["shape_ranges"] = feats["depth_0"]
    assert measure_feature_profiles(None, declared, ["depth_0"]) == feats  # a sidecar that states them: no run
    with pytest.raises(runtime.RuntimeError_):
        trt_provider_options(meta, "fuse", device_id=0, cache_dir="/c", ort_version="1.20")



def test_fuse_profiles_recorded_by_the_export_are_read_not_measured(art):
    """``edgehaze export`` records ``profiles.fuse``; the runtime uses it while its ``image`` entry is current."""
    meta = meta_of(art)
    feats = {"min": [1, 4, 4, 4], "opt": [1, 4, 24, 32], "max": [1, 4, 540, 960]}
    meta["profiles"] = {"fuse": {"image": dict(meta["shape_ranges"]), "depth_0": feats}}
    assert measure_feature_profiles(None, meta, ["depth_0"]) == {"depth_0": feats}  # None: nothing may run
    # a sidecar whose shape_ranges were edited after the export: the recorded shapes are stale, so measure
    stale = meta_of(art)
    stale["profiles"] = {"fuse": {"image": {**stale["shape_ranges"], "max": [1, 720, 1280, 3]},
                                  "depth_0": {**feats, "max": [1, 4, 360, 640]}}}
    depth = ort.InferenceSession(str(art.with_name("tiny.depth.onnx")), providers=["CPUExecutionProvider"])
    assert measure_feature_profiles(depth, stale, ["depth_0"]) == {"depth_0": feats}

def test_placement_is_reported_per_graph(art):
    with runtime.Dehazer(art) as d:
        assert d.backend_name == "onnxruntime/CPUExecutionProvider"
        assert set(d.node_providers) == {"full"} and list(d.node_providers["full"]) == ["CPUExecutionProvider"]
        assert d.node_providers["full"]["CPUExecutionProvider"] > 10 and d.fallback == {}
    with runtime.Dehazer(art, {"depth_every": 2}) as d:
        assert set(d.node_providers) == {"depth", "fuse"}


def test_assignment_info_and_profiling_trace_agree(art, tmp_path):
    if not runtime.backends.has_assignment_api(ort):
        pytest.skip(f"onnxruntime {ort.__version__} has no graph assignment info (>= 1.24); profiling is used")
    so = ort.SessionOptions()
    so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp_path / "p")
    sess = ort.InferenceSession(str(art), so, providers=["CPUExecutionProvider"])
    sess.run(None, {"image": np.zeros((1, 48, 64, 3), np.uint8)})
    trace = json.loads(Path(sess.end_profiling()).read_text())
    by_profile = placement_from_profile(trace)
    assert by_profile == placement_from_assignment(sess.get_provider_graph_assignment_info())
    assert list(by_profile) == ["CPUExecutionProvider"] and by_profile["CPUExecutionProvider"] > 10


def test_fallback_shows_in_the_backend_name():
    fell = {"full": {"TensorrtExecutionProvider": 3, "CUDAExecutionProvider": 2}}
    assert backend_label("TensorrtExecutionProvider", fell) == \
        "onnxruntime/TensorrtExecutionProvider+CUDAExecutionProvider"
    assert backend_label("CUDAExecutionProvider", {"full": {"CUDAExecutionProvider": 9}}) == \
        "onnxruntime/CUDAExecutionProvider"
    events = [{"cat": "Node", "name": "TRTKernel_graph_0_kernel_time",
               "args": {"provider": "TensorrtExecutionProvider", "op_name": "TRTKernel_graph_0"}},
              {"cat": "Node", "name": "copy_kernel_time", "args": {"provider": "CUDAExecutionProvider",
                                                                 "op_name": "MemcpyFromHost"}},
              {"cat": "Node", "name": "Resize_3_kernel_time", "args": {"provider": "CUDAExecutionProvider",
                                                                     "op_name": "Resize"}},
              {"cat": "Node", "name": "Resize_3_fence_before", "args": {}},
              {"cat": "Session", "name": "model_run", "args": {}}]
    assert placement_from_profile(events) == {"TensorrtExecutionProvider": 1, "CUDAExecutionProvider": 1}


@pytest.mark.parametrize("two_graph", [False, True])
def test_older_onnxruntime_gets_placement_from_one_profiled_run(art, monkeypatch, two_graph):
    """ONNX Runtime < 1.24 (JetPack's): the GPU path profiles one run; forced here on the CPU provider."""
    from runtime import backends
    from runtime.artifact import resolve

    want = backends.OrtBackend(resolve(art), provider="cpu", two_graph=two_graph).placement
    monkeypatch.setattr(backends, "has_assignment_api", lambda _ort: False)
    monkeypatch.setattr(backends, "GPU_PROVIDERS", ("CPUExecutionProvider",))  # take the GPU branch
    b = backends.OrtBackend(resolve(art), provider="cpu", two_graph=two_graph)
    assert b.placement == want and b.fallback == {}
    assert b._profile_dir is not None and not Path(b._profile_dir).exists()  # trace files removed
