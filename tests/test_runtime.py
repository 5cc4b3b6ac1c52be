"""The torch-free runtime API (runtime/): create/run/close on tiny contract artifacts."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

try:
    from _artifacts import make_artifact, make_wrong_contract_onnx
except ImportError:  # tests/ imported as a package
    from tests._artifacts import make_artifact, make_wrong_contract_onnx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import runtime  # noqa: E402
from runtime import RuntimeError_, Status  # noqa: E402


@pytest.fixture(scope="module")
def art(tmp_path_factory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("rgb"))


@pytest.fixture(scope="module")
def art_single_bgr(tmp_path_factory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("bgr"), two_graph=False, channel_order="BGR")


def reference(path: Path, frame: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"image": frame[None]})[0][0]


def frame(h=48, w=64, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def code_of(fn) -> RuntimeError_:
    with pytest.raises(RuntimeError_) as info:
        fn()
    return info.value


def test_run_equals_plain_onnxruntime_and_reports_backend(art):
    x = frame()
    h = runtime.create(art, {"threads": 1})
    assert h.backend_name == "onnxruntime/CPUExecutionProvider"
    assert h.channel_order == "RGB"
    np.testing.assert_array_equal(runtime.run(h, x), reference(art, x))
    out = np.zeros_like(x)
    assert runtime.run(h, x, out) is out
    np.testing.assert_array_equal(out, reference(art, x))
    runtime.close(h)
    runtime.close(h)  # idempotent
    assert code_of(lambda: runtime.run(h, x)).code == Status.CLOSED


@pytest.mark.parametrize("spin", [False, True])
def test_spin_option_reaches_the_session(art, spin):
    """Busy-waiting is off unless asked for (it starves the capture thread on a 2-core device)."""
    opts = {} if not spin else {"spin": True}
    with runtime.Dehazer(art, opts) as d:
        sess = d._backend.full
        assert sess.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == str(int(spin))
        np.testing.assert_array_equal(d.run(frame()), reference(art, frame()))


def test_frame_size_change_rebinds_outputs(art):
    with runtime.Dehazer(art) as d:
        for h_, w_ in [(48, 64), (37, 51), (48, 64)]:
            x = frame(h_, w_, seed=h_)
            out = np.empty_like(x)
            d.run(x, out)
            np.testing.assert_array_equal(out, reference(art, x))


def test_steady_state_allocates_no_frame_buffers(art):
    x = frame(240, 320)
    out = np.empty_like(x)
    with runtime.Dehazer(art) as d:
        d.run(x, out)  # warm-up binds the output once
        tracemalloc.start()
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(10):
            d.run(x, out)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    # one frame is 230 kB; per-frame numpy outputs would show up in the traced peak
    assert peak - base < x.nbytes // 4


def test_array_interface_objects_are_accepted(art):
    x = frame()

    class Exposes:
        def __init__(self, arr):
            self.__array_interface__ = arr.__array_interface__
            self._keep = arr

    with runtime.Dehazer(art) as d:
        np.testing.assert_array_equal(d.run(Exposes(x)), reference(art, x))
        # NHWC with a batch of one is accepted too
        np.testing.assert_array_equal(d.run(x[None]), reference(art, x))


def test_gpu_buffers_on_cpu_backend_are_unsupported(art):
    class FakeGpu:
        __cuda_array_interface__ = {"shape": (48, 64, 3), "typestr": "|u1", "data": (1234, False),
                                    "version": 3, "strides": None}

    with runtime.Dehazer(art, {"provider": "cpu"}) as d:
        err = code_of(lambda: d.run(FakeGpu()))
    assert err.code == Status.UNSUPPORTED and "CPU" in err.message


@pytest.mark.parametrize("bad, code", [
    (lambda: frame().astype(np.float32), Status.BAD_ARGUMENT),
    (lambda: frame()[:, ::2], Status.BAD_ARGUMENT),          # not C-contiguous
    (lambda: frame()[..., :2].copy(), Status.SHAPE),          # 2 channels
    (lambda: [[1, 2, 3]], Status.BAD_ARGUMENT),               # not an array
    (lambda: frame(4, 4), Status.SHAPE),                      # below shape_ranges.min (8x8)
])
def test_bad_frames_carry_codes(art, bad, code):
    with runtime.Dehazer(art) as d:
        err = code_of(lambda: d.run(bad()))
    assert err.code == code and int(err.code) == int(code)


def test_bad_out_buffer_and_options(art):
    with runtime.Dehazer(art) as d:
        assert code_of(lambda: d.run(frame(), np.empty((10, 10, 3), np.uint8))).code == Status.SHAPE
        ro = np.empty((48, 64, 3), np.uint8)
        ro.flags.writeable = False
        assert code_of(lambda: d.run(frame(), ro)).code == Status.BAD_ARGUMENT
    assert code_of(lambda: runtime.create(art, {"nope": 1})).code == Status.BAD_ARGUMENT
    assert code_of(lambda: runtime.create(art, {"provider": "tpu"})).code == Status.BAD_ARGUMENT
    assert code_of(lambda: runtime.create(art, {"depth_every": 0})).code == Status.BAD_ARGUMENT
    assert code_of(lambda: runtime.create(art, {"graph_optimization": "max"})).code == Status.BAD_ARGUMENT
    assert code_of(lambda: runtime.run("not a handle", frame())).code == Status.BAD_ARGUMENT


def test_unavailable_provider_is_backend_unavailable(art):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA provider is available here")
    err = code_of(lambda: runtime.create(art, {"provider": "cuda"}))
    assert err.code == Status.BACKEND_UNAVAILABLE and "CPUExecutionProvider" in err.message


def test_depth_refresh_every_n_equals_single_graph_on_static_scene(art):
    x = frame(seed=3)
    full = runtime.create(art)
    cached = runtime.create(art, {"depth_every": 3})
    assert cached.depth_every == 3
    for _ in range(7):
        np.testing.assert_array_equal(cached.run(x), full.run(x))
    assert cached.depth_refreshes == 3  # frames 0, 3, 6
    assert full.depth_refreshes == 0    # N=1 runs the single graph


def test_depth_cache_is_really_reused_between_refreshes(art):
    frames = [frame(seed=s) for s in range(6)]
    full, cached = runtime.create(art), runtime.create(art, {"depth_every": 2})
    differs = []
    for i, x in enumerate(frames):
        a, b = full.run(x), cached.run(x)
        if i % 2 == 0:  # refresh frames: features written in place into the cached buffers
            np.testing.assert_array_equal(a, b)
        else:           # stale features of the previous frame
            differs.append(not np.array_equal(a, b))
    assert any(differs)


def test_depth_every_without_two_graph_export_is_an_error(art_single_bgr):
    err = code_of(lambda: runtime.create(art_single_bgr, {"depth_every": 4}))
    assert err.code == Status.BAD_ARGUMENT and "two-graph" in err.message


def test_metadata_props_replace_a_missing_sidecar(art, tmp_path):
    for f in art.parent.glob("tiny*.onnx"):
        shutil.copy(f, tmp_path / f.name)
    with runtime.Dehazer(tmp_path / "tiny.onnx", {"depth_every": 2}) as d:
        assert d.artifact.sidecar_path is None
        assert d.meta["format"] == "edgehaze-artifact" and d.channel_order == "RGB"
        x = frame()
        np.testing.assert_array_equal(d.run(x), reference(art, x))


def test_artifact_path_forms(art):
    for p in (art, art.with_suffix(".json"), art.with_suffix(""), art.parent):
        with runtime.Dehazer(p) as d:
            assert d.artifact.model_path == art


def test_bad_artifacts_name_the_file(tmp_path, art):
    missing = tmp_path / "nothing.onnx"
    err = code_of(lambda: runtime.create(missing))
    assert err.code == Status.BAD_ARTIFACT and "nothing.onnx" in err.message

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf at all" * 10)
    err = code_of(lambda: runtime.create(garbage))
    assert err.code == Status.BAD_ARTIFACT and "garbage.onnx" in err.message and "not an ONNX" in err.message

    wrong = make_wrong_contract_onnx(tmp_path / "wrong.onnx")
    err = code_of(lambda: runtime.create(wrong))  # no sidecar, no metadata
    assert err.code == Status.BAD_ARTIFACT and "metadata_props" in err.message
    meta = json.loads(art.with_suffix(".json").read_text())
    meta["graphs"] = {"full": "wrong.onnx"}
    (tmp_path / "wrong.json").write_text(json.dumps(meta))
    err = code_of(lambda: runtime.create(wrong))  # sidecar says edgehaze, the graph does not
    assert err.code == Status.BAD_ARTIFACT and "wrong.onnx" in err.message and "contract" in err.message

    meta["graphs"] = {"full": "tiny.onnx"}
    meta["input"]["layout"] = "NCHW"
    shutil.copy(art, tmp_path / "tiny.onnx")
    (tmp_path / "tiny.json").write_text(json.dumps(meta))
    err = code_of(lambda: runtime.create(tmp_path / "tiny.onnx"))
    assert err.code == Status.BAD_ARTIFACT and "NCHW" in err.message

    (tmp_path / "tiny.json").write_text("{not json")
    err = code_of(lambda: runtime.create(tmp_path / "tiny.onnx"))
    assert err.code == Status.BAD_ARTIFACT and "tiny.json" in err.message


def test_frames_above_the_tensorrt_profile_run_on_onnxruntime(art, tmp_path):
    """shape_ranges.max bounds TensorRT profiles; ONNX Runtime runs a dynamic graph beyond it (portrait, 4K)."""
    side = json.loads(Path(str(art).replace(".onnx", ".json")).read_text())
    side["shape_ranges"]["opt"] = side["shape_ranges"]["max"] = [1, 40, 40, 3]  # a profile is min <= opt <= max
    for p in Path(art).parent.glob(Path(art).stem + "*.onnx"):
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / (Path(art).stem + ".json")).write_text(json.dumps(side))
    with runtime.Dehazer(tmp_path / Path(art).name) as d:
        x = frame(64, 48)  # taller and wider than the profile's max
        np.testing.assert_array_equal(d.run(x), reference(art, x))


def test_fixed_size_artifact_rejects_other_sizes(tmp_path):
    p = make_artifact(tmp_path, two_graph=False, dynamic=False, size=(32, 40))
    with runtime.Dehazer(p) as d:
        assert d.fixed_size == (32, 40)
        assert d.run(frame(32, 40)).shape == (32, 40, 3)
        err = code_of(lambda: d.run(frame(48, 64)))
    assert err.code == Status.SHAPE and "40x32" in err.message


def test_saving_the_optimised_graph(art, tmp_path):
    target = tmp_path / "opt.onnx"
    with runtime.Dehazer(art, {"optimized_model_path": str(target), "graph_optimization": "extended"}):
        pass
    assert target.is_file() and target.stat().st_size > 0


def test_tensorrt_engine_without_tensorrt_is_backend_unavailable(art, tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed: this test covers machines without it")
    except ImportError:
        pass
    (tmp_path / "tiny.engine").write_bytes(b"\0" * 16)
    shutil.copy(art.with_suffix(".json"), tmp_path / "tiny.json")
    err = code_of(lambda: runtime.create(tmp_path / "tiny.engine"))
    assert err.code == Status.BACKEND_UNAVAILABLE and "tensorrt" in err.message


def test_tensorrt_engine_matches_onnxruntime(art, tmp_path):
    """Build an engine from the tiny full graph and compare it with ORT (GPU machines only)."""
    trt = pytest.importorskip("tensorrt", reason="TensorRT engines need the tensorrt package and an NVIDIA "
                                                 "GPU (not installable on this machine); not verified here")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(art.read_bytes()), [parser.get_error(i) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("image", (1, 8, 8, 3), (1, 48, 64, 3), (1, 256, 256, 3))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    assert engine is not None
    (tmp_path / "tiny.engine").write_bytes(bytes(engine))
    shutil.copy(art.with_suffix(".json"), tmp_path / "tiny.json")
    x = frame()
    with runtime.Dehazer(tmp_path / "tiny.engine") as d:
        assert d.backend_name == "tensorrt"
        got = d.run(x)
    assert np.abs(got.astype(int) - reference(art, x)).max() <= 1


@pytest.mark.parametrize("uri, masked", [
    ("rtsp://user:secret@10.0.0.2:554/live", "rtsp://***:***@10.0.0.2:554/live"),
    ("rtsp://token@cam/x", "rtsp://***@cam/x"),
    ("see http://a:b@h/p?x=1&password=hunter2 and rtsp://c:d@e", "see http://***:***@h/p?x=1&password=*** and "
                                                                  "rtsp://***:***@e"),
    ("file:///data/clip.mp4", "file:///data/clip.mp4"),
])
def test_mask_uri(uri, masked):
    assert runtime.mask_text(uri) == masked


def test_errors_mask_credentials():
    err = RuntimeError_(Status.IO, "rtsp://admin:hunter2@cam/live: cannot open")
    assert "hunter2" not in str(err) and "hunter2" not in err.message and err.code == 6


def test_import_without_torch_or_edgehaze(art, tmp_path):
    """`import runtime` from a copied folder with torch/edgehaze blocked, and as another package name."""
    device_dir = tmp_path / "device"
    shutil.copytree(REPO / "runtime", device_dir / "runtime", ignore=shutil.ignore_patterns("__pycache__"))
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['edgehaze'] = None\n"
        "import numpy as np, runtime, runtime.stream, runtime.sources, runtime.sinks\n"
        f"h = runtime.create({str(art)!r}, {{'depth_every': 2}})\n"
        "out = runtime.run(h, np.zeros((48, 64, 3), np.uint8))\n"
        "assert out.shape == (48, 64, 3), out.shape\n"
        "assert runtime.__file__.startswith(sys.argv[1]), runtime.__file__\n"
        "bad = [m for m in sys.modules if m.startswith(('torch', 'edgehaze')) and sys.modules[m] is not None]\n"
        "assert not bad, bad\n"
        "print(h.backend_name)\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(device_dir)], cwd=device_dir,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "CPUExecutionProvider" in res.stdout

    # The same folder imported under the package name pyproject maps it to (edgehaze.runtime).
    code = (
        "import importlib.util, sys, types\n"
        "pkg = types.ModuleType('edgehaze'); pkg.__path__ = []; sys.modules['edgehaze'] = pkg\n"
        "spec = importlib.util.spec_from_file_location('edgehaze.runtime', sys.argv[1] + '/__init__.py',\n"
        "                                              submodule_search_locations=[sys.argv[1]])\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules['edgehaze.runtime'] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "import edgehaze.runtime.stream\n"
        "assert mod.Status.SHAPE == 4 and 'torch' not in sys.modules\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(REPO / "runtime")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_runtime_sources_import_neither_torch_nor_edgehaze():
    for path in (REPO / "runtime").glob("*.py"):
        text = path.read_text()
        for banned in ("import torch", "from torch", "import edgehaze", "from edgehaze"):
            assert banned not in text, f"{path.name} contains {banned!r}"


# -- a sidecar that contradicts its graph, bad option values, unwritable paths (issue 31) ----------------

def _lying_copy(art: Path, folder: Path, edit) -> Path:
    """The artifact's graphs with a sidecar edited by ``edit`` (the graphs' own metadata_props unchanged)."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in Path(art).parent.glob(Path(art).stem + "*.onnx"):
        shutil.copy(p, folder / p.name)
    meta = json.loads(Path(art).with_suffix(".json").read_text())
    edit(meta)
    (folder / Path(art).with_suffix(".json").name).write_text(json.dumps(meta))
    return folder / Path(art).name


@pytest.mark.parametrize("field, edit, both", [
    ("channel_order", lambda m: (m["input"].update(channel_order="BGR"), m["output"].update(channel_order="BGR")),
     ("'BGR'", "'RGB'")),
    ("precision fp16", lambda m: m.update(precision="fp16"), ("'fp16'", "'fp32'")),
    ("precision int8", lambda m: m.update(precision="int8"), ("'int8'", "'fp32'")),
    ("precision int3", lambda m: m.update(precision="int3"), ("'int3'", "fp32")),
    ("shape_ranges string", lambda m: m["shape_ranges"].update(min="32x32"), ("'32x32'", "[1, H, W, 3]")),
    ("shape_ranges.min below the graph's", lambda m: m["shape_ranges"].update(min=[1, 4, 4, 3]),
     ("[1, 4, 4, 3]", "[1, 8, 8, 3]")),
    ("dynamic", lambda m: m.update(dynamic=False), ("False", "True")),
    ("output dtype", lambda m: m["output"].update(dtype="float32"), ("float32", "uint8")),
])
def test_sidecar_contradicting_the_graph_is_bad_artifact_naming_both(art, tmp_path, field, edit, both):
    lying = _lying_copy(art, tmp_path / "lie", edit)
    for opts in ({}, {"depth_every": 2}):  # the two-graph mode checks the depth and fuse graphs too
        err = code_of(lambda: runtime.create(lying, opts))
        assert err.code == Status.BAD_ARTIFACT, (field, err)
        assert all(v in err.message for v in both), (field, err.message)


def test_precision_is_checked_against_the_graphs_qdq_nodes(tmp_path):
    """The graph's own metadata lying too: an int8 claim on a float graph is still refused (no Q/DQ nodes)."""
    p = make_artifact(tmp_path / "a", two_graph=False)
    import onnx

    model = onnx.load(str(p))
    for prop in model.metadata_props:
        if prop.key == "precision":
            prop.value = json.dumps("int8")
    onnx.save(model, str(p))
    meta = json.loads(p.with_suffix(".json").read_text())
    meta["precision"] = "int8"
    p.with_suffix(".json").write_text(json.dumps(meta))
    err = code_of(lambda: runtime.create(p))
    assert err.code == Status.BAD_ARTIFACT and "Q/DQ" in err.message and "int8" in err.message


def test_python_options_bounds_types_and_provider(art):
    for kw in ({"provider": None}, {"threads": "2"}, {"threads": 1.5}, {"spin": "no"}, {"threads": 100000},
               {"inter_op_threads": -5}):
        err = code_of(lambda: runtime.create(art, kw))
        assert err.code == Status.BAD_ARGUMENT and next(iter(kw)) in err.message, kw


def test_unwritable_optimized_model_path_is_io_naming_the_option(art, tmp_path):
    (tmp_path / "afile").write_text("x")
    for target in ("/proc/nope/opt.onnx", str(tmp_path / "afile" / "opt.onnx"), str(tmp_path)):
        err = code_of(lambda: runtime.create(art, {"optimized_model_path": target}))
        assert err.code == Status.IO and "optimized_model_path" in err.message and "onnxruntime cannot" not in \
            err.message, err


def test_non_utf8_path_runs(art, tmp_path):
    folder = Path(os.fsdecode(bytes(tmp_path) + b"/na\xefve"))
    folder.mkdir()
    for p in Path(art).parent.glob(Path(art).stem + ".*"):
        shutil.copy(p, folder / p.name)
    x = frame()
    with runtime.Dehazer(folder / Path(art).name, {"depth_every": 2}) as d:
        np.testing.assert_array_equal(d.run(x), reference(art, x))
