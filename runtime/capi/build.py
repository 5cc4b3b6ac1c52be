"""Build libedgehaze_runtime.so: the C API of runtime/include/edgehaze_runtime.h over the Python runtime.

    python runtime/capi/build.py --out DIR        # -> DIR/libedgehaze_runtime.so, DIR/include/edgehaze_runtime.h

cffi's embedding mode compiles one shared library that starts CPython on the first call (once per
process), imports this ``runtime`` folder and runs bridge.py, whose ``@ffi.def_extern`` functions
turn ``RuntimeError_`` codes into ``eh_status`` numbers. The C side (glue.c) keeps the ABI version
and the thread-local last error in C. The library records, at build time, the runtime folder and
the interpreter that built it (whose site-packages hold numpy and onnxruntime); EDGEHAZE_RUNTIME_DIR
and EDGEHAZE_PYTHON override them at run time. Needs cffi, a C compiler and the Python headers to
build (on a device: ``pip install -r runtime/requirements-device.txt`` and ``apt install gcc
python3-dev``), and cffi again at every start of the library (its ``_cffi_backend`` module, in the
environment of the embedded interpreter). ``import runtime`` never needs cffi. A missing piece is one
line naming it and the fix, not a traceback.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNTIME_DIR = HERE.parent
HEADER = RUNTIME_DIR / "include" / "edgehaze_runtime.h"
MODULE = "libedgehaze_runtime"  # the .so's name is also the embedded module's name

# the extern "Python" functions bridge.py defines (static: only glue.c calls them), and its error setter
_PYTHON_SIDE = """
extern "Python" int eh__py_options_init(eh_options *opts);
extern "Python" int eh__py_create(const char *path, const eh_options *opts, void **state);
extern "Python" int eh__py_run(void *state, const eh_image *in, eh_image *out);
extern "Python" int eh__py_close(void *state);
extern "Python" int eh__py_backend_name(void *state, const char **name);
extern "Python" int eh__py_channel_order(void *state, eh_channel_order *order);
void eh__set_error(const char *message);
void eh__startup_failed(const char *message);
"""


def api_text(header: Path = HEADER) -> str:
    """The declarations between EH_API_BEGIN and EH_API_END (what cffi parses; no preprocessor lines)."""
    m = re.search(r"EH_API_BEGIN[^\n]*\n(.*?)/\* EH_API_END", header.read_text(), re.S)
    if m is None:
        raise SystemExit(f"{header}: no EH_API_BEGIN/EH_API_END markers; restore them around the declarations")
    return m.group(1)


# Run once when the library starts. A failure is handed to the C side (eh__startup_failed) as one line
# instead of raised: every call then returns EH_INTERNAL with it, and no traceback lands on the host's stderr.
_LOADER = """
import importlib, os, sys
from {module} import ffi as _ffi, lib as _lib


def _load_runtime():
    env = os.environ.get('EDGEHAZE_RUNTIME_DIR')
    folder = os.path.abspath(env or {runtime_dir})
    if not os.path.isfile(os.path.join(folder, '__init__.py')):
        where = 'EDGEHAZE_RUNTIME_DIR=' + folder if env else folder + ' (the runtime folder this library was built from)'
        return None, (where + ' is not the edgehaze runtime folder (no __init__.py); set EDGEHAZE_RUNTIME_DIR to '
                      'the runtime/ folder (see runtime/README.md)')
    sys.path.insert(0, os.path.dirname(folder))
    try:
        return importlib.import_module(os.path.basename(folder)), None
    except ImportError as exc:
        missing = getattr(exc, 'name', None) or str(exc)
        return None, ('the embedded Python (' + sys.executable + ') cannot import ' + missing + ', which the runtime '
                      'in ' + folder + ' needs: pip install -r runtime/requirements-device.txt into that environment, '
                      'or set EDGEHAZE_PYTHON to a python with numpy, onnxruntime and cffi')
    except Exception as exc:
        return None, 'the runtime in ' + folder + ' failed to import: ' + type(exc).__name__ + ': ' + str(exc)


_runtime, _failure = _load_runtime()
"""


def _init_code() -> str:
    """Python run once when the library starts: find the runtime folder, import it, attach bridge.py."""
    bridge = (HERE / "bridge.py").read_text()
    return (
        _LOADER.format(module=MODULE, runtime_dir=json.dumps(str(RUNTIME_DIR)))
        + bridge
        + "\nif _failure is None:\n    install(_ffi, _lib, _runtime)\n"
        + "else:\n    _lib.eh__startup_failed(('[INTERNAL] ' + _failure).encode(errors='replace'))\n"
    )


def _link_args() -> dict:
    """Link libpython of this (shared-build) interpreter, and find it again at run time (rpath)."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        raise SystemExit(f"{sys.executable} is a static Python build; the C API needs libpython "
                         "(a --enable-shared build, as pyenv's PYTHON_CONFIGURE_OPTS=--enable-shared)")
    libdir = sysconfig.get_config_var("LIBDIR")
    return {"library_dirs": [libdir], "extra_link_args": [f"-Wl,-rpath,{libdir}"],
            "extra_compile_args": ["-fvisibility=hidden", "-O2"]}


def _toolchain() -> None:
    """One line (SystemExit) for each missing build piece: cffi, the Python headers, a C compiler."""
    try:
        import cffi  # noqa: F401  (the build's first cffi import)
    except ImportError:
        raise SystemExit(f"runtime/capi/build.py needs cffi, which {sys.executable} lacks: pip install cffi (on a "
                         "device: pip install -r runtime/requirements-device.txt); the library needs it at run "
                         "time too") from None
    include = Path(sysconfig.get_paths()["include"])
    if not (include / "Python.h").is_file():
        ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
        raise SystemExit(f"no Python headers for {sys.executable} ({include}/Python.h is missing): sudo apt install "
                         f"python{ver}-dev (or python3-dev), or use a Python built with its headers")
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        raise SystemExit(f"no C compiler: {cc} (the compiler {sys.executable} was built with) is not on PATH: "
                         "sudo apt install gcc (or set CC)")


def build(out_dir: str | Path, *, verbose: bool = False) -> Path:
    """Compile DIR/libedgehaze_runtime.so (and copy the header to DIR/include/); return the library path."""
    _toolchain()
    import cffi

    out_dir = Path(out_dir).resolve()
    (out_dir / "include").mkdir(parents=True, exist_ok=True)
    ffi = cffi.FFI()
    ffi.cdef(api_text() + _PYTHON_SIDE)
    ffi.embedding_api("")  # embedding mode; the exported functions are glue.c's, with explicit visibility
    preamble = (f"static const char eh__build_python[] = {json.dumps(sys.executable)};\n"
                + (HERE / "glue.c").read_text())
    ffi.set_source(MODULE, preamble, include_dirs=[str(HEADER.parent)], py_limited_api=False, **_link_args())
    ffi.embedding_init_code(_init_code())
    with tempfile.TemporaryDirectory(prefix="eh_capi_build_") as tmp:
        try:
            built = Path(ffi.compile(tmpdir=tmp, target=f"{MODULE}.*", verbose=verbose))
        except ImportError as exc:  # Python >= 3.12 has no distutils: cffi compiles through setuptools
            raise SystemExit(f"compiling needs {exc.name or exc}: pip install setuptools") from None
        except Exception as exc:  # cffi's VerificationError / setuptools' CompileError, LinkError
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise SystemExit(f"compiling libedgehaze_runtime failed ({type(exc).__name__}: {first}); rerun with "
                             "--verbose for the compiler's output") from None
        target = out_dir / built.name
        tmp_target = out_dir / f".{built.name}.partial"
        shutil.copy2(built, tmp_target)
        tmp_target.replace(target)  # atomic: a running program never sees half a library
    shutil.copy2(HEADER, out_dir / "include" / HEADER.name)
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for libedgehaze_runtime.so and include/edgehaze_runtime.h")
    p.add_argument("--verbose", action="store_true", help="show the compiler commands")
    args = p.parse_args(argv)
    lib = build(args.out, verbose=args.verbose)
    print(f"built {lib}\nheader {Path(args.out).resolve() / 'include' / HEADER.name}\n"
          f"link: gcc prog.c -I{Path(args.out).resolve() / 'include'} -L{lib.parent} -ledgehaze_runtime "
          f"-Wl,-rpath,{lib.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
