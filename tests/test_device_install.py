"""The device install of runtime/README.md, word for word, in a fresh venv: no torch, no edgehaze package.

``python -m venv`` (no system site-packages), ``pip install -r runtime/requirements-device.txt``,
the runtime folder copied on its own (as to a device), ``runtime/capi/build.py``, then
runtime/examples/dehaze_file.c compiled and run as the README says; its output must equal the
development runtime's bytes. Then cffi is removed from that venv: the library must say so in
its status message, and build.py in one line. Packages come from pip's configured indexes (PyPI
or a local mirror); without one the test skips.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
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

W, H = 64, 48


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


def test_fresh_venv_with_the_device_requirements_builds_and_runs_the_c_example(tmp_path):
    if shutil.which("gcc") is None:
        pytest.skip("no gcc: the C library is compiled")
    probe = _run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp_path / "probe", "cffi"],
                 timeout=300)
    if probe.returncode != 0:
        pytest.skip(f"no package index reachable ({probe.stderr.strip().splitlines()[-1:]})")

    venv = tmp_path / "venv"
    made = _run([sys.executable, "-m", "venv", venv], timeout=300)  # a plain venv: no system site-packages
    assert made.returncode == 0, made.stderr
    py = venv / "bin" / "python"
    device = tmp_path / "device"  # the runtime folder alone, as copied to a device
    shutil.copytree(REPO / "runtime", device / "runtime", ignore=shutil.ignore_patterns("__pycache__"))
    req = device / "runtime" / "requirements-device.txt"
    done = _run([py, "-m", "pip", "install", "-q", "-r", req], timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    # the environment has what the device needs and nothing of the development machine's
    have = _run([py, "-c", "import importlib.util as u; print([m for m in ('numpy', 'onnxruntime', 'cffi', "
                           "'torch', 'edgehaze', 'cv2') if u.find_spec(m)])"], cwd=tmp_path, timeout=60)
    assert have.stdout.strip() == "['numpy', 'onnxruntime', 'cffi']", have.stdout + have.stderr

    lib = tmp_path / "capi"
    built = _run([py, device / "runtime" / "capi" / "build.py", "--out", lib], cwd=device, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    exe = tmp_path / "dehaze_file"
    cc = _run(["gcc", "-O2", device / "runtime" / "examples" / "dehaze_file.c", f"-I{lib / 'include'}", f"-L{lib}",
               "-ledgehaze_runtime", f"-Wl,-rpath,{lib}", "-o", exe], timeout=300)
    assert cc.returncode == 0, cc.stderr

    art = make_artifact(tmp_path / "art", two_graph=False)
    x = np.random.default_rng(5).integers(0, 256, (H, W, 3), dtype=np.uint8)
    x.tofile(tmp_path / "in.raw")
    ran = _run([exe, art, tmp_path / "in.raw", tmp_path / "out.raw", W, H], cwd=tmp_path, timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    with runtime.Dehazer(art, {"threads": 2}) as d:
        assert (tmp_path / "out.raw").read_bytes() == d.run(x).tobytes()

    # without cffi: the library names it and the fix (a status, no false OK), build.py says it in one line
    gone = _run([py, "-m", "pip", "uninstall", "-y", "-q", "cffi"], timeout=300)
    assert gone.returncode == 0, gone.stderr
    (tmp_path / "out.raw").unlink()
    ran = _run([exe, art, tmp_path / "in.raw", tmp_path / "out.raw", W, H], cwd=tmp_path, timeout=300)
    assert ran.returncode == 1 and not (tmp_path / "out.raw").exists()
    assert f"status {int(runtime.Status.INTERNAL)}" in ran.stderr and "pip install cffi" in ran.stderr, ran.stderr
    again = _run([py, device / "runtime" / "capi" / "build.py", "--out", tmp_path / "capi2"], timeout=300)
    assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1, again.stderr
    assert "needs cffi" in again.stderr and "Traceback" not in again.stderr
