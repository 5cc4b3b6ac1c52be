"""Engines built on the device (runtime/engines.py, runtime/build_engine.py), checked without a GPU.

The engine block in the sidecar is plain data, so naming, the load-time
TensorRT/GPU check, engine selection from a folder and the sidecar update
are tested with fake blocks. The builder's TensorRT calls run against a
small stand-in module that records what was configured; the real build is
benchmarks/gpu_check.sh's job on a GPU machine.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

try:
    from _artifacts import make_artifact
except ImportError:  # tests/ imported as a package
    from tests._artifacts import make_artifact

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import runtime  # noqa: E402
import runtime.artifact as artifact_mod  # noqa: E402
from runtime import RuntimeError_, Status  # noqa: E402
from runtime import build_engine as be  # noqa: E402
from runtime.artifact import resolve  # noqa: E402
from runtime.engines import (check_engine, engine_filename, parse_engine_filename, record_engine,  # noqa: E402
                             rebuild_command, select_engine, sidecar_for_engine)

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def art_src(tmp_path_factory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("eng"), two_graph=True)


@pytest.fixture
def art(art_src, tmp_path) -> Path:
    """A private copy (tests write engine blocks into the sidecar)."""
    for f in art_src.parent.iterdir():
        shutil.copy(f, tmp_path / f.name)
    return tmp_path / art_src.name


def block(name: str, trt: str = "10.3.0", cc: str = "8.7", precision: str = "int8", dla=None) -> dict:
    return {"file": name, "onnx": "tiny.onnx", "tensorrt": trt, "compute_capability": cc, "device": "Orin",
            "precision": precision,
            "profile": {"image": {"min": [1, 8, 8, 3], "opt": [1, 48, 64, 3], "max": [1, 720, 1280, 3]}},
            "flags": {"fp16": True, "int8": precision == "int8", "dla_core": dla, "gpu_fallback": dla is not None,
                      "workspace_mib": 1024, "timing_cache": None, "builder_optimization_level": None}}


def add_engine(art: Path, **kw) -> Path:
    name = engine_filename("tiny", kw.get("trt", "10.3.0"), [int(v) for v in kw.get("cc", "8.7").split(".")],
                           kw.get("precision", "int8"), kw.get("dla"))
    (art.parent / name).write_bytes(b"not a real engine")
    record_engine(art.with_suffix(".json"), block(name, **kw))
    return art.parent / name


def err(fn) -> RuntimeError_:
    with pytest.raises(RuntimeError_) as info:
        fn()
    return info.value


def test_engine_names_carry_version_arch_and_precision():
    name = engine_filename("edge-s", "8.6.2.3", (8, 7), "fp16")
    assert name == "edge-s.8.6.2.3.sm87.fp16.engine"
    assert engine_filename("edge-s", "10.3.0", (7, 2), "int8", dla_core=1) == "edge-s.10.3.0.sm72-dla1.int8.engine"
    assert parse_engine_filename(name) == {"stem": "edge-s", "trt": "8.6.2.3", "arch": "sm87", "precision": "fp16"}
    assert parse_engine_filename("edge-s.engine") is None
    assert sidecar_for_engine(Path("m/edge-s.8.6.2.3.sm87.fp16.engine")) == Path("m/edge-s.json")
    assert sidecar_for_engine(Path("m/edge-s.engine")) == Path("m/edge-s.json")
    assert err(lambda: engine_filename("x", "10.3", (8, 7), "bf16")).code == Status.BAD_ARGUMENT


def test_matching_block_passes_and_mismatches_name_the_rebuild(art):
    eng = add_engine(art)
    meta = json.loads(art.with_suffix(".json").read_text())
    assert check_engine(eng, meta, "10.3.0", (8, 7))["precision"] == "int8"
    e = err(lambda: check_engine(eng, meta, "8.6.2.3", (8, 7)))
    assert e.code == Status.BAD_ARTIFACT and "TensorRT 10.3.0 built it" in e.message and "8.6.2.3" in e.message
    assert "python runtime/build_engine.py" in e.message and "--precision int8" in e.message
    assert "--max 1x720x1280x3" in e.message and str(art) in e.message
    e = err(lambda: check_engine(eng, meta, "10.3.0", (8, 6)))
    assert "compute capability 8.7" in e.message and "this GPU is 8.6" in e.message


def test_versioned_engine_without_block_is_refused_legacy_engine_is_not(art):
    versioned = art.parent / engine_filename("tiny", "10.3.0", (8, 7), "fp16")
    versioned.write_bytes(b"x")
    meta = json.loads(art.with_suffix(".json").read_text())
    e = err(lambda: check_engine(versioned, meta, "10.3.0", (8, 7)))
    assert e.code == Status.BAD_ARTIFACT and "no engine block" in e.message and "build_engine.py" in e.message
    assert check_engine(art.with_suffix(".engine"), meta, "10.3.0", (8, 7)) is None


def test_rebuild_command_keeps_dla_and_workspace():
    b = block("x", dla=0)
    b["flags"]["workspace_mib"] = 512
    cmd = rebuild_command(b, "models/tiny.onnx")
    assert cmd.startswith("python runtime/build_engine.py models/tiny.onnx --precision int8 --min 1x8x8x3")
    assert cmd.endswith("--dla 0 --workspace-mib 512")


def test_record_engine_is_atomic_and_keeps_other_engines(art):
    side = art.with_suffix(".json")
    a = add_engine(art, precision="int8")
    b = add_engine(art, precision="fp16")
    meta = json.loads(side.read_text())
    assert set(meta["engines"]) == {a.name, b.name}
    assert meta["format"] == "edgehaze-artifact" and meta["graphs"]["full"] == "tiny.onnx"  # the rest is kept
    assert not [p for p in side.parent.iterdir() if p.name.endswith(".tmp")]


def test_select_engine_prefers_a_match_for_this_device(art):
    add_engine(art, trt="10.3.0", cc="8.7", precision="fp16")
    i8 = add_engine(art, trt="10.3.0", cc="8.7", precision="int8")
    add_engine(art, trt="10.3.0", cc="8.7", precision="int8", dla=0)   # DLA: never picked implicitly
    other = add_engine(art, trt="8.6.2.3", cc="7.2", precision="fp16")
    meta = json.loads(art.with_suffix(".json").read_text())
    assert select_engine(meta, art.parent, "10.3.0", (8, 7)) == i8
    assert select_engine(meta, art.parent, "8.6.2.3", (7, 2)) == other
    assert select_engine(meta, art.parent, "10.0.1", (8, 9)) is None
    i8.unlink()
    assert select_engine(meta, art.parent, "10.3.0", (8, 7)).name.endswith(".fp16.engine")


def test_runtime_finds_an_engine_from_folder_or_sidecar(art, monkeypatch):
    eng = add_engine(art)
    # without tensorrt (this machine) the folder opens the ONNX graph as before
    monkeypatch.setattr(artifact_mod, "_local_tensorrt", lambda: None)
    assert resolve(art.parent, prefer_engine=True).kind == "onnx"
    # on a device whose TensorRT and GPU match the block, the engine is taken
    monkeypatch.setattr(artifact_mod, "_local_tensorrt", lambda: ("10.3.0", (8, 7)))
    for path in (art.parent, art.with_suffix(".json")):
        got = resolve(path, prefer_engine=True)
        assert got.kind == "engine" and got.model_path == eng and got.sidecar_path == art.with_suffix(".json")
    assert resolve(art.parent).kind == "onnx"          # prefer_engine off: the ONNX graph
    got = resolve(eng)                                 # the engine file itself finds NAME.json
    assert got.kind == "engine" and got.sidecar_path == art.with_suffix(".json")
    # another device: ONNX graph, or (when it was not copied) a clear error naming what is recorded
    monkeypatch.setattr(artifact_mod, "_local_tensorrt", lambda: ("8.6.2.3", (7, 2)))
    assert resolve(art.parent, prefer_engine=True).kind == "onnx"
    art.unlink()
    e = err(lambda: resolve(art.with_suffix(".json")))
    assert e.code == Status.BAD_ARTIFACT and "TensorRT 8.6.2.3" in e.message and eng.name in e.message


def test_depth_every_on_an_engine_is_the_documented_error(art):
    eng = add_engine(art)
    e = err(lambda: runtime.create(eng, {"depth_every": 4}))
    assert e.code == Status.BAD_ARGUMENT and "full graph only" in e.message and "depth_every=1" in e.message


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed: this covers machines without it")
def test_engine_with_block_without_tensorrt_is_backend_unavailable(art):
    eng = add_engine(art)
    assert err(lambda: runtime.create(eng)).code == Status.BACKEND_UNAVAILABLE


def args(model, *extra) -> object:
    return be.build_parser().parse_args([str(model), *extra])


def test_plan_defaults_come_from_the_sidecar(art):
    plan = be.plan_build(args(art), "10.3.0", (8, 7), "Orin")
    assert plan.precision == "fp16"          # an fp32 export builds in fp16 by default
    assert plan.engine == art.parent / "tiny.10.3.0.sm87.fp16.engine"
    assert plan.profile == {"image": {"min": [1, 8, 8, 3], "opt": [1, 48, 64, 3], "max": [1, 1080, 1920, 3]}}
    assert plan.timing_cache == art.parent / "trt_cache" / "timing.10.3.0.sm87.cache"
    assert plan.workspace_mib == 1024
    plan = be.plan_build(args(art, "--opt", "image:1x480x640x3", "--max", "1x720x1280x3", "--dla", "0",
                              "--no-timing-cache"), "8.6.2.3", (8, 7), "Orin")
    assert plan.profile["image"]["opt"] == [1, 480, 640, 3] and plan.timing_cache is None
    assert plan.engine.name == "tiny.8.6.2.3.sm87-dla0.fp16.engine"


@pytest.mark.parametrize("extra, words", [
    (["--min", "480x640"], "--min 480x640: give an NHWC shape"),
    (["--min", "1x4x4x3"], "below the graph's minimum"),
    (["--opt", "1x2000x2000x3"], "must hold per dimension"),
    (["--max", "depth_0:1x4x4x3"], "one input is 'image'"),
    (["--dla", "0", "--precision", "fp32"], "DLA cores run fp16 or int8"),
    (["--workspace-mib", "8"], "at least 64 MiB"),
])
def test_bad_build_flags_name_the_flag(art, extra, words):
    e = err(lambda: be.plan_build(args(art, *extra), "10.3.0", (8, 7), "Orin"))
    assert e.code == Status.BAD_ARGUMENT and words in e.message


def test_fixed_size_export_keeps_its_size(tmp_path):
    fixed = make_artifact(tmp_path, two_graph=False, dynamic=False, size=(32, 48))
    plan = be.plan_build(args(fixed), "10.3.0", (8, 7), "Orin")
    assert plan.profile["image"]["min"] == plan.profile["image"]["max"] == [1, 32, 48, 3]
    e = err(lambda: be.plan_build(args(fixed, "--max", "1x64x64x3"), "10.3.0", (8, 7), "Orin"))
    assert "exported for one size" in e.message


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed: this covers machines without it")
def test_cli_without_tensorrt_is_one_line(art):
    r = subprocess.run([sys.executable, str(REPO / "runtime" / "build_engine.py"), str(art)],
                       capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ""})
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "[BACKEND_UNAVAILABLE]" in lines[0] and "tensorrt" in lines[0]
    r = subprocess.run([sys.executable, str(REPO / "runtime" / "build_engine.py"), str(art.parent / "nope.onnx")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "nope.onnx" in r.stderr and "[BAD_ARTIFACT]" in r.stderr


# -- the builder's TensorRT calls against a recording stand-in -------------------------------------------
def fake_tensorrt(qdq: bool = False, dla_cores: int = 2) -> types.ModuleType:
    """Just the tensorrt surface build() uses; records what was set."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"
    trt.record = rec = {"flags": set(), "profile": None, "cache_in": None}
    enum = lambda *names: types.SimpleNamespace(**{n: n for n in names})  # noqa: E731
    trt.BuilderFlag = enum("FP16", "INT8", "GPU_FALLBACK")
    trt.MemoryPoolType = enum("WORKSPACE")
    trt.DeviceType = enum("GPU", "DLA")
    trt.LayerType = enum("CONVOLUTION", "QUANTIZE", "DEQUANTIZE")
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace()  # TensorRT 10: no EXPLICIT_BATCH
    trt.Logger = type("Logger", (), {"WARNING": 2, "VERBOSE": 4, "__init__": lambda self, level=2: None})
    layers = ["CONVOLUTION"] + (["QUANTIZE", "DEQUANTIZE"] if qdq else [])

    class Network:
        num_inputs, num_layers = 1, len(layers)

        def get_input(self, i):
            return types.SimpleNamespace(name="image")

        def get_layer(self, i):
            return types.SimpleNamespace(type=layers[i])

    class Parser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            rec["parsed"] = path
            return True

    class Cache:
        def serialize(self):
            return b"timing-cache-bytes"

    class Config:
        builder_optimization_level, default_device_type, DLA_core = 3, "GPU", -1  # TensorRT >= 8.6 attributes

        def set_memory_pool_limit(self, pool, size):
            rec["workspace"] = size

        def set_flag(self, flag):
            rec["flags"].add(flag)

        def add_optimization_profile(self, profile):
            rec["profile"] = profile.shapes

        def create_timing_cache(self, data):
            rec["cache_in"] = data
            return Cache()

        def set_timing_cache(self, cache, ignore_mismatch):
            rec["ignore_mismatch"] = ignore_mismatch

        def get_timing_cache(self):
            return Cache()

        def __setattr__(self, key, value):
            rec[key] = value

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            self.shapes = {name: (lo, opt, hi)}

    class Builder:
        num_DLA_cores = dla_cores

        def __init__(self, logger):
            pass

        def create_network(self, flags):
            rec["network_flags"] = flags
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"serialized-engine"

    trt.Builder, trt.OnnxParser = Builder, Parser
    return trt


def run_cli(monkeypatch, trt, argv) -> int:
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(be, "cuda_device", lambda device_id=0: ((8, 7), "Orin"))
    return be.main(argv)


def test_build_writes_the_engine_block_and_timing_cache(art, monkeypatch):
    trt = fake_tensorrt()
    assert run_cli(monkeypatch, trt, [str(art), "--max", "1x720x1280x3", "--dla", "1", "--opt-level", "2"]) == 0
    eng = art.parent / "tiny.10.3.0.sm87-dla1.fp16.engine"
    assert eng.read_bytes() == b"serialized-engine"
    rec = trt.record
    assert rec["parsed"] == str(art) and rec["network_flags"] == 0
    assert rec["flags"] == {"FP16", "GPU_FALLBACK"} and rec["workspace"] == 1024 << 20
    assert rec["default_device_type"] == "DLA" and rec["DLA_core"] == 1 and rec["builder_optimization_level"] == 2
    assert rec["profile"] == {"image": ((1, 8, 8, 3), (1, 48, 64, 3), (1, 720, 1280, 3))}
    assert rec["cache_in"] == b"" and rec["ignore_mismatch"] is False
    cache = art.parent / "trt_cache" / "timing.10.3.0.sm87.cache"
    assert cache.read_bytes() == b"timing-cache-bytes"
    meta = json.loads(art.with_suffix(".json").read_text())
    b = meta["engines"][eng.name]
    assert (b["tensorrt"], b["compute_capability"], b["precision"], b["device"]) == ("10.3.0", "8.7", "fp16", "Orin")
    assert b["flags"]["dla_core"] == 1 and b["flags"]["gpu_fallback"] is True
    assert b["command"].startswith("python runtime/build_engine.py ") and "--dla 1" in b["command"]
    assert check_engine(eng, meta, "10.3.0", (8, 7)) == b   # what the runtime checks before loading
    # a second build reads the timing cache back
    assert run_cli(monkeypatch, fake_tensorrt(), [str(art)]) == 0
    assert sys.modules["tensorrt"].record["cache_in"] == b"timing-cache-bytes"


def test_build_refuses_int8_without_qdq_and_fp16_with_qdq(art, monkeypatch, capsys):
    assert run_cli(monkeypatch, fake_tensorrt(qdq=False), [str(art), "--precision", "int8"]) == 2
    assert "no Q/DQ nodes" in capsys.readouterr().err
    assert run_cli(monkeypatch, fake_tensorrt(qdq=True), [str(art)]) == 2
    assert "build it with --precision int8" in capsys.readouterr().err
    assert run_cli(monkeypatch, fake_tensorrt(qdq=True), [str(art), "--precision", "int8"]) == 0
    assert sys.modules["tensorrt"].record["flags"] == {"FP16", "INT8"}
    assert run_cli(monkeypatch, fake_tensorrt(dla_cores=0), [str(art), "--dla", "0"]) == 2
    assert "0 DLA core(s)" in capsys.readouterr().err
    assert not list(art.parent.glob("*.tmp")) and not list(art.parent.glob(".*.tmp"))
