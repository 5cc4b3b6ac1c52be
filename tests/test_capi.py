"""The C API (runtime/include/edgehaze_runtime.h, libedgehaze_runtime.so) driven by gcc-compiled C programs.

The library is built into a tmp folder by runtime/capi/build.py; tests/capi_test.c (with
AddressSanitizer where gcc has it) walks every status path and writes outputs that must equal
``runtime.run`` byte for byte; runtime/examples/dehaze_file.c is built the way runtime/README.md
says. The parity tests parse the header so its enum and options struct cannot drift from
``Status`` and ``Options``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

try:
    from _artifacts import make_artifact
except ImportError:  # tests/ imported as a package
    from tests._artifacts import make_artifact

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import runtime  # noqa: E402
from runtime import Options, Status  # noqa: E402

HEADER = REPO / "runtime" / "include" / "edgehaze_runtime.h"
W, H = 64, 48


def _c_toolchain_reason() -> str | None:
    if shutil.which("gcc") is None:
        return "no gcc on PATH: the C API tests compile C programs"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        return "no Python headers (Python.h): the library embeds CPython"
    return None


needs_gcc = pytest.mark.skipif(_c_toolchain_reason() is not None, reason=_c_toolchain_reason() or "")


def _asan_flags(tmp: Path) -> list[str]:
    """-fsanitize=address when gcc can build and run an ASan program here, else nothing."""
    probe = tmp / "asan_probe"
    src = tmp / "asan_probe.c"
    src.write_text("int main(void) { return 0; }\n")
    ok = subprocess.run(["gcc", "-fsanitize=address", str(src), "-o", str(probe)], capture_output=True).returncode == 0
    if ok and subprocess.run([str(probe)], capture_output=True).returncode == 0:
        # -lstdc++ linked (not as-needed): ASan resolves __cxa_throw at start-up; onnxruntime throws C++ exceptions
        return ["-fsanitize=address", "-fno-omit-frame-pointer", "-Wl,--no-as-needed", "-lstdc++", "-Wl,--as-needed"]
    return []


# ASan in a process that embeds CPython: leak checking is off (the interpreter keeps its arenas until exit)
ASAN_ENV = {"ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0"}


@pytest.fixture(scope="module")
def lib_dir(tmp_path_factory) -> Path:
    reason = _c_toolchain_reason()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("cffi", reason="cffi builds the library: pip install -e '.[capi]'")
    out = tmp_path_factory.mktemp("capi_lib")
    subprocess.run([sys.executable, str(REPO / "runtime" / "capi" / "build.py"), "--out", str(out)], check=True,
                   capture_output=True, text=True)
    assert (out / "libedgehaze_runtime.so").is_file() and (out / "include" / HEADER.name).is_file()
    return out


def compile_c(source: Path, exe: Path, lib: Path, extra: list[str] = ()) -> Path:
    cmd = ["gcc", "-O1", "-g", "-Wall", "-Wextra", "-Werror", str(source), f"-I{lib / 'include'}", f"-L{lib}",
           "-ledgehaze_runtime", f"-Wl,-rpath,{lib}", "-lpthread", *extra, "-o", str(exe)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stderr}"
    return exe


@pytest.fixture(scope="module")
def art(tmp_path_factory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("capi_art"))


def frames(n: int = 3, seed: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, H, W, 3), dtype=np.uint8)


def raw(path: Path, n: int = 1) -> np.ndarray:
    return np.fromfile(path, np.uint8).reshape(n, H, W, 3)


@needs_gcc
def test_c_program_status_paths_byte_equality_and_two_threads(lib_dir, art, tmp_path):
    asan = _asan_flags(tmp_path)
    exe = compile_c(REPO / "tests" / "capi_test.c", tmp_path / "capi_test", lib_dir, asan)
    x = frames()
    x.tofile(tmp_path / "frames.raw")
    out = tmp_path / "out"
    out.mkdir()
    done = subprocess.run([str(exe), str(art), str(tmp_path / "frames.raw"), str(W), str(H), str(out)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **ASAN_ENV})
    assert done.returncode == 0 and "PASSED" in done.stdout, done.stdout + done.stderr
    assert "FAIL" not in done.stdout
    for name in ("missing file", "frame below the artifact's minimum size", "out of another size",
                 "row stride below width*3", "padded row stride", "run after close (NULL handle)",
                 "device pointer on the CPU backend"):
        assert f"ok {name}:" in done.stdout  # the status path ran (and left a message: expect() checks that)
    assert done.stdout.count("ok thread ran 20 frames") == 2
    assert "AddressSanitizer" not in done.stderr

    with runtime.Dehazer(art) as d:  # the Python runtime, default options, as the C program's first handle
        np.testing.assert_array_equal(raw(out / "single.raw")[0], d.run(x[0]))
        assert not np.array_equal(x[0], d.run(x[0]))  # the graph really changes the frame
    with runtime.Dehazer(art, {"threads": 1}) as d:  # each thread's handle ran its own frame 20 times
        np.testing.assert_array_equal(raw(out / "thread0.raw")[0], d.run(x[1]))
        np.testing.assert_array_equal(raw(out / "thread1.raw")[0], d.run(x[2]))
    with runtime.Dehazer(art, {"threads": 1, "depth_every": 2, "graph_optimization": "basic"}) as d:
        want = np.stack([d.run(f) for f in x])
    got = raw(out / "sequence.raw", 3)
    np.testing.assert_array_equal(got, want)  # options set in C reach the runtime (frame 1 reuses frame 0's depth)
    with runtime.Dehazer(art) as d:
        assert not np.array_equal(got[1], d.run(x[1]))


@needs_gcc
def test_example_dehaze_file_matches_python_runtime(lib_dir, tmp_path_factory, tmp_path):
    """What runtime/README.md tells a new user to do, on a BGR single-graph artifact."""
    bgr = make_artifact(tmp_path_factory.mktemp("capi_bgr"), two_graph=False, channel_order="BGR", seed=3)
    exe = compile_c(REPO / "runtime" / "examples" / "dehaze_file.c", tmp_path / "dehaze_file", lib_dir)
    x = frames(1, seed=9)[0]
    x.tofile(tmp_path / "in.raw")
    done = subprocess.run([str(exe), str(bgr), str(tmp_path / "in.raw"), str(tmp_path / "out.raw"), str(W), str(H)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "channel order BGR" in done.stdout and "onnxruntime/CPUExecutionProvider" in done.stdout
    with runtime.Dehazer(bgr, {"threads": 2}) as d:
        assert (tmp_path / "out.raw").read_bytes() == d.run(x).tobytes()

    missing = subprocess.run([str(exe), str(tmp_path / "nope.onnx"), str(tmp_path / "in.raw"),
                              str(tmp_path / "o2.raw"), str(W), str(H)], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1
    assert f"status {int(Status.BAD_ARTIFACT)}: [BAD_ARTIFACT]" in missing.stderr and "nope.onnx" in missing.stderr


@needs_gcc
def test_embedded_runtime_that_cannot_load_is_internal_not_ok(lib_dir, art, tmp_path):
    """cffi alone returns 0 (EH_OK) when its init code fails; the C glue must say INTERNAL with a hint."""
    exe = compile_c(REPO / "runtime" / "examples" / "dehaze_file.c", tmp_path / "dehaze_file", lib_dir)
    frames(1)[0].tofile(tmp_path / "in.raw")
    env = {**os.environ, "EDGEHAZE_RUNTIME_DIR": str(tmp_path / "not_a_runtime")}
    done = subprocess.run([str(exe), str(art), str(tmp_path / "in.raw"), str(tmp_path / "o.raw"), str(W), str(H)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 1
    assert f"status {int(Status.INTERNAL)}" in done.stderr and "EDGEHAZE_RUNTIME_DIR" in done.stderr
    assert not (tmp_path / "o.raw").exists()


@needs_gcc
def test_unexpected_python_exception_is_internal_with_its_name(lib_dir, art, tmp_path):
    """Not a RuntimeError_ (a bug): EH_INTERNAL naming the exception, via a runtime whose Dehazer raises."""
    fake = tmp_path / "fake_runtime"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        f"import sys\nsys.path.insert(0, {str(REPO)!r})\n"
        "from runtime import Options, RuntimeError_, Status\n"
        "class Dehazer:\n"
        "    def __init__(self, path, options):\n"
        "        raise ZeroDivisionError('boom from the fake runtime')\n"
        "create = Dehazer  # eh_create calls runtime.create (paths and shipped model names)\n")
    exe = compile_c(REPO / "runtime" / "examples" / "dehaze_file.c", tmp_path / "dehaze_file", lib_dir)
    frames(1)[0].tofile(tmp_path / "in.raw")
    done = subprocess.run([str(exe), str(art), str(tmp_path / "in.raw"), str(tmp_path / "o.raw"), str(W), str(H)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "EDGEHAZE_RUNTIME_DIR": str(fake)})
    assert done.returncode == 1
    assert (f"eh_create failed with status {int(Status.INTERNAL)}: [INTERNAL] eh_create: ZeroDivisionError: "
            "boom from the fake runtime") in done.stderr


@needs_gcc
def test_overhead_benchmark_runs_and_reports(lib_dir, tmp_path):
    """benchmarks/capi_overhead.py end to end on a few frames (the numbers themselves are the benchmark's)."""
    out = tmp_path / "overhead.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "capi_overhead.py"), "--lib", str(lib_dir),
                           "--size", "48x64", "--frames", "5", "--model-frames", "2", "--repeats", "1",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert set(report["models"]) == {"identity", "tiny-conv"} and report["size"] == [48, 64]
    for r in report["models"].values():
        assert r["c_ms"] > 0 and r["python_ms"] > 0 and len(r["pairs_ms"]) == 1


# -- misuse: shared handles, stale handles, struct sizes, option bounds, the embedded interpreter ------------

@pytest.fixture(scope="module")
def misuse_exe(lib_dir, tmp_path_factory) -> tuple:
    """tests/capi_misuse.c, with AddressSanitizer where gcc has it (the program and its environment)."""
    tmp = tmp_path_factory.mktemp("capi_misuse")
    asan = _asan_flags(tmp)
    return compile_c(REPO / "tests" / "capi_misuse.c", tmp / "capi_misuse", lib_dir, asan), \
        {**os.environ, **(ASAN_ENV if asan else {})}


def _misuse(misuse_exe, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    exe, env = misuse_exe
    done = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)
    assert "AddressSanitizer" not in done.stderr, done.stderr
    return done


def identity_artifact(folder: Path) -> Path:
    """image -> dehazed = image with the artifact contract: a session opens in about a millisecond."""
    import onnx
    from onnx import TensorProto, helper

    try:
        from _artifacts import _add_metadata, sidecar_dict
    except ImportError:
        from tests._artifacts import _add_metadata, sidecar_dict
    dims = [1, "height", "width", 3]
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["dehazed"])], "identity",
                              [helper.make_tensor_value_info("image", TensorProto.UINT8, dims)],
                              [helper.make_tensor_value_info("dehazed", TensorProto.UINT8, dims)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "identity.onnx"
    onnx.save(model, str(path))
    meta = sidecar_dict("identity", two_graph=False, channel_order="RGB", dynamic=True, size=None)
    _add_metadata(path, meta)
    (folder / "identity.json").write_text(json.dumps(meta))
    return path


@needs_gcc
def test_one_handle_shared_by_two_threads_gives_each_call_its_own_frame(misuse_exe, tmp_path):
    """A capture thread and a worker thread on one handle: calls are serialised, never OK with wrong bytes;
    eh_close from another thread waits for the running call, later calls are EH_CLOSED."""
    art = make_artifact(tmp_path / "art", two_graph=False, seed=11)
    frames(2, seed=8).tofile(tmp_path / "frames.raw")
    done = _misuse(misuse_exe, "threads", art, tmp_path / "frames.raw", W, H, 300)
    assert done.returncode == 0 and "PASSED" in done.stdout, done.stdout + done.stderr
    assert done.stdout.count("300 ok, 0 wrong, 0 closed, 0 other") == 2


@needs_gcc
def test_stale_handle_is_closed_after_5000_create_close_cycles(misuse_exe, tmp_path):
    art = identity_artifact(tmp_path / "id")
    done = _misuse(misuse_exe, "stale", art, 5001, timeout=600)
    assert done.returncode == 0 and "PASSED" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    assert "5001 cycles, 8 stale copies: 0 calls on a stale copy not EH_CLOSED, 0 live handles closed" in done.stdout
    assert "ok stale copy of cycle 0: run: status 7" in done.stdout  # more than 4096 closes ago


@needs_gcc
def test_struct_sizes_option_bounds_and_channel_order(misuse_exe, art):
    done = _misuse(misuse_exe, "structs", art, W, H)
    assert done.returncode == 0 and "PASSED" in done.stdout, done.stdout + done.stderr


def test_options_are_refused_with_the_same_message_in_python_and_c(misuse_exe, art):
    """The C status paths of capi_misuse.c print the Python API's own messages for the same values."""
    out = _misuse(misuse_exe, "structs", art, W, H).stdout
    for kw in ({"threads": 100000}, {"inter_op_threads": -5}, {"threads": -1}, {"bypass": 2}):
        with pytest.raises(runtime.RuntimeError_) as info:
            runtime.Options(**kw)
        assert info.value.code == Status.BAD_ARGUMENT and f'"{info.value}"' in out


def test_python_options_refuse_wrong_types_instead_of_coercing():
    top = runtime.api.max_threads()
    for kw in ({"threads": "2"}, {"threads": 1.5}, {"threads": True}, {"spin": "no"}, {"spin": 1}, {"provider": None},
               {"provider": 3}, {"threads": top + 1}, {"inter_op_threads": -5}, {"temporal": "0.5"},
               {"depth_every": 2.0}, {"device_id": -1}, {"optimized_model_path": 5}):
        with pytest.raises(runtime.RuntimeError_) as info:
            runtime.Options(**kw)
        assert info.value.code == Status.BAD_ARGUMENT and next(iter(kw)) in info.value.message, kw
    assert runtime.Options(threads=top, inter_op_threads=0, spin=True, temporal=0.5).threads == top
    assert runtime.Options(threads=np.int64(3)).threads == 3  # an integer is an integer, whatever its type
    opts = runtime.Options()
    opts.threads = "4"  # assigned after construction: still refused when used
    with pytest.raises(runtime.RuntimeError_):
        runtime.Options.coerce(opts)


@needs_gcc
def test_non_utf8_path_opens(misuse_exe, art, tmp_path):
    """A valid Linux path that is not UTF-8 (bytes from the C host) loads; onnxruntime takes UTF-8 only."""
    folder = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9"))
    folder.mkdir()
    for p in art.parent.glob(art.stem + ".*"):
        shutil.copy(p, folder / p.name)
    exe, env = misuse_exe
    done = subprocess.run([exe, b"open", os.fsencode(folder / art.name)], capture_output=True, timeout=120, env=env)
    assert done.returncode == 0 and b"status 0" in done.stdout, done.stdout + done.stderr


@needs_gcc
def test_edgehaze_python_pointing_nowhere_names_the_variable(misuse_exe, art):
    exe, env = misuse_exe
    done = subprocess.run([str(exe), "open", str(art)], capture_output=True, text=True, timeout=60,
                          env={**env, "EDGEHAZE_PYTHON": "/nonexistent/python3"})
    assert done.returncode == 1 and f"status {int(Status.INTERNAL)}:" in done.stdout
    assert "EDGEHAZE_PYTHON=/nonexistent/python3 is not an executable python" in done.stdout
    assert "onnxruntime cannot" not in done.stdout


@needs_gcc
def test_library_without_cffi_at_run_time_names_cffi(misuse_exe, art, tmp_path):
    """The library imports cffi's _cffi_backend at every start: a python without it gets a status naming cffi."""
    bare = tmp_path / "bare"  # a venv with nothing installed (same Python as the library's libpython)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    exe, env = misuse_exe
    done = subprocess.run([str(exe), "open", str(art)], capture_output=True, text=True, timeout=60,
                          env={**env, "EDGEHAZE_PYTHON": str(bare / "bin" / "python")})
    assert done.returncode == 1 and f"status {int(Status.INTERNAL)}:" in done.stdout
    assert "has no cffi" in done.stdout and "pip install cffi" in done.stdout, done.stdout
    assert "Traceback" not in done.stderr


@needs_gcc
def test_runtime_that_cannot_import_names_the_missing_module(misuse_exe, art, tmp_path):
    """A runtime folder whose import fails on a missing module: one line naming it and the fix, no traceback."""
    fake = tmp_path / "fake_runtime"
    fake.mkdir()
    (fake / "__init__.py").write_text("import no_such_module_edgehaze\n")
    exe, env = misuse_exe
    done = subprocess.run([str(exe), "open", str(art)], capture_output=True, text=True, timeout=60,
                          env={**env, "EDGEHAZE_RUNTIME_DIR": str(fake)})
    assert done.returncode == 1 and f"status {int(Status.INTERNAL)}:" in done.stdout
    assert "cannot import no_such_module_edgehaze" in done.stdout and "requirements-device.txt" in done.stdout
    assert "Traceback" not in done.stderr


def test_build_without_cffi_is_one_line(tmp_path):
    code = ("import runpy, sys; sys.modules['cffi'] = None; sys.argv = ['build.py', '--out', sys.argv[1]]; "
            f"runpy.run_path({str(REPO / 'runtime' / 'capi' / 'build.py')!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "lib")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "needs cffi" in done.stderr and "pip install" in done.stderr
    assert not (tmp_path / "lib").exists()


# -- parity: the header against the Python runtime --------------------------------------------------------

def _header_api() -> str:
    return HEADER.read_text().split("EH_API_BEGIN", 1)[1].split("EH_API_END", 1)[0]


def test_header_status_enum_equals_python_status():
    body = re.search(r"typedef enum eh_status \{(.*?)\} eh_status;", _header_api(), re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    header = {name: int(value) for name, value in re.findall(r"EH_(\w+)\s*=\s*(\d+)", body)}
    assert header == {s.name: int(s.value) for s in Status}


# the one C layout per Python option type (runtime/capi/bridge.py converts by the same rule)
_C_TYPE = {"str": "const char *", "int": "int32_t", "bool": "int32_t", "float": "double"}


def _python_kind(annotation: str) -> str:
    return str(annotation).replace(" ", "").replace("|None", "")


def test_header_options_struct_has_exactly_the_python_options():
    body = re.search(r"typedef struct eh_options \{(.*?)\} eh_options;", _header_api(), re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    fields = [(re.sub(r"\s*\*\s*", " *", re.sub(r"\s+", " ", t)).strip(), n)  # "const char*" -> "const char *"
              for t, n in re.findall(r"^\s*([A-Za-z_][\w\s\*]*?)\s*\b(\w+)\s*;", body, re.M)]
    assert fields[0] == ("size_t", "struct_size"), "struct_size must be the first field (ABI growth)"
    header = {n: t for t, n in fields[1:]}
    python = {f.name: _C_TYPE.get(_python_kind(f.type), f"no C layout for {f.type!r}: extend _C_TYPE and bridge.py")
              for f in dataclasses.fields(Options)}
    assert list(header) == list(python), "eh_options must list every Options field, same names, same order"
    assert header == python


def test_every_header_struct_starts_with_struct_size():
    for name, body in re.findall(r"typedef struct (\w+) \{(.*?)\}", _header_api(), re.S):
        first = re.sub(r"/\*.*?\*/", "", body, flags=re.S).strip().split(";")[0].split()
        assert first == ["size_t", "struct_size"], f"{name} must start with size_t struct_size"


def test_import_runtime_needs_no_cffi():
    code = "import sys; sys.modules['cffi'] = None; import runtime; assert 'cffi' not in [m for m in sys.modules if sys.modules[m]]"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_runtime_readme_shows_the_real_header():
    readme = (REPO / "runtime" / "README.md").read_text()
    api = HEADER.read_text().split("EH_API_BEGIN", 1)[1].split("\n", 1)[1].split("/* EH_API_END", 1)[0].strip("\n")
    assert f"```c\n{api}\n```" in readme, "runtime/README.md must show the API part of the header verbatim"
