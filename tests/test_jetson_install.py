"""The Jetson install (runtime/requirements-jetson.txt, pyproject's trt extra) and Python 3.8 syntax of runtime/.

A Jetson must keep JetPack's OpenCV (GStreamer), its TensorRT and the
Jetson onnxruntime-gpu: the runtime's requirement set may pull none of
them, nor torch, also transitively. The resolution is done by pip itself
for the Jetson platforms (aarch64, Python 3.8 for JetPack 5 and 3.10 for
JetPack 6) when a package registry is reachable, and skipped otherwise.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
REQS = ROOT / "runtime" / "requirements-jetson.txt"
BANNED = re.compile(r"^(torch.*|opencv.*|onnxruntime.*|tensorrt.*|nvidia-.*)$")
JETPACKS = {"JetPack 5 (Python 3.8)": "3.8", "JetPack 6 (Python 3.10)": "3.10"}

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def requirements() -> list[Requirement]:
    lines = [ln.split("#", 1)[0].strip() for ln in REQS.read_text().splitlines()]
    return [Requirement(ln) for ln in lines if ln]


def for_python(version: str) -> list[str]:
    """The requirement lines that apply on a Jetson with this Python (markers evaluated for it, not for us)."""
    env = {"python_version": version, "python_full_version": version + ".0", "platform_machine": "aarch64",
           "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix", "implementation_name": "cpython"}
    out = []
    for req in requirements():
        if req.marker is None or req.marker.evaluate(env):
            out.append(f"{req.name}{req.specifier}")
    return out


def pip_plan(tmp_path: Path, python: str, reqs: list[str], no_deps: bool = False) -> subprocess.CompletedProcess:
    report = tmp_path / f"plan-{python}.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--only-binary=:all:",
           "--platform", "manylinux2014_aarch64", "--platform", "manylinux_2_17_aarch64",
           "--python-version", python, "--target", str(tmp_path / "target"), "--report", str(report), "-q",
           *(["--no-deps"] if no_deps else []), *reqs]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    r.report = json.loads(report.read_text()) if r.returncode == 0 else None
    return r


def test_the_set_names_nothing_jetpack_provides():
    names = [r.name.lower() for r in requirements()]
    assert names and not [n for n in names if BANNED.match(n)], names
    # the Python-version markers are what select JetPack 5's CUDA 11 bindings vs JetPack 6's CUDA 12 ones
    assert any("cuda-python" in ln and "<12" in ln for ln in for_python("3.8"))
    assert any("cuda-python" in ln and "<13" in ln for ln in for_python("3.10"))


@pytest.mark.parametrize("jetpack", list(JETPACKS))
def test_the_set_resolves_without_torch_opencv_or_onnxruntime(tmp_path, jetpack):
    python = JETPACKS[jetpack]
    probe = pip_plan(tmp_path, python, ["numpy<2"], no_deps=True)
    if probe.returncode != 0:
        pytest.skip(f"no package registry reachable from here (pip: {probe.stderr.strip().splitlines()[-1:]})")
    r = pip_plan(tmp_path, python, for_python(python))
    assert r.returncode == 0, f"{jetpack}: {REQS.name} does not resolve:\n{r.stderr[-2000:]}"
    plan = {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in r.report["install"]}
    assert "numpy" in plan and Version(plan["numpy"]) < Version("2")
    assert not [n for n in plan if BANNED.match(n)], f"{jetpack} would install {plan}"
    major = 11 if python == "3.8" else 12
    assert Version(plan["cuda-python"]).major == major


def test_trt_extra_admits_every_jetpack_tensorrt():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    reqs = [Requirement(r) for r in extras["trt"]]
    trt = next(r for r in reqs if r.name == "tensorrt")
    for version in ("8.5.2.2", "8.6.2.3", "10.3.0", "10.7.0"):   # JetPack 5.1, 6.0, 6.1, 6.2
        assert trt.specifier.contains(version), f"tensorrt{trt.specifier} excludes {version}"
    on_jetson = {"platform_machine": "aarch64", "python_version": "3.10"}
    assert not [r for r in reqs if r.name != "tensorrt" and (r.marker is None or r.marker.evaluate(on_jetson))], \
        "on a Jetson the trt extra must not pull torch-tensorrt (it needs TensorRT 10 and torch)"
    assert Marker("platform_machine == 'x86_64'").evaluate({"platform_machine": "x86_64"})


def vermin(*args: str) -> subprocess.CompletedProcess:
    run_vermin = "import sys, vermin; sys.exit(vermin.main())"  # the package has no __main__
    return subprocess.run([sys.executable, "-c", run_vermin, "-t=3.8-", "--no-tips", "--violations", *args],
                          capture_output=True, text=True, timeout=120)


def test_runtime_is_python_38_syntax(tmp_path):
    """vermin (the dev extra) over runtime/; files without postponed annotations are also checked for them."""
    files = sorted(p for p in (ROOT / "runtime").rglob("*.py"))
    r = vermin(*map(str, files))
    assert r.returncode == 0, r.stdout + r.stderr
    eager = [str(p) for p in files if "from __future__ import annotations" not in p.read_text()]
    r = vermin("--eval-annotations", *eager)
    assert r.returncode == 0, r.stdout + r.stderr
    # the check can fail: a 3.9 string method and a 3.9 annotation in a file without the future import
    (tmp_path / "a.py").write_text('def f(x: list[int]) -> str:\n    return "ab".removeprefix("a")\n')
    r = vermin("--eval-annotations", str(tmp_path / "a.py"))
    assert r.returncode != 0 and "removeprefix" in r.stdout and "list[..]" in r.stdout
