"""The package layout that pyproject.toml maps must match the folders."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def test_every_package_folder_is_listed_in_pyproject():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    mapping = cfg["package-dir"]
    found = set()
    for name, folder in mapping.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            parts = [name] + [p for p in rel.parts]
            dotted = ".".join(parts)
            # a folder mapped elsewhere is covered by its own mapping
            if any(dotted.startswith(m + ".") or dotted == m for m in mapping if m != name and m.startswith(name)):
                continue
            found.add(dotted)
    assert found == listed, f"pyproject packages differ from folders: missing {found - listed}, stale {listed - found}"


def test_mapped_folders_import_under_the_package_namespace():
    import edgehaze.distill
    import edgehaze.export
    import edgehaze.runtime

    assert Path(edgehaze.distill.__file__).parent.name == "distill"
    assert Path(edgehaze.export.__file__).parent.name == "export"
    assert Path(edgehaze.runtime.__file__).parent.name == "runtime"


def test_wheel_carries_the_shipped_models(tmp_path):
    """`pip install` must bring runtime/models (manifest, cards, ONNX, sidecars, safetensors): build a wheel and look."""
    import json
    import shutil
    import subprocess
    import zipfile

    src = tmp_path / "src"
    for folder in ("edgehaze", "distill", "export", "runtime"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "trt_cache"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("edgehaze-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    manifest = json.loads((ROOT / "runtime" / "models" / "manifest.json").read_text())
    want = {"edgehaze/runtime/models/manifest.json"}
    for name, entry in manifest["models"].items():
        want.add(f"edgehaze/runtime/models/{entry['card']}")
        want.add(f"edgehaze/runtime/models/{entry['checkpoint']['path']}")
        for v in entry["variants"].values():
            want |= {f"edgehaze/runtime/models/{v['file']['path']}", f"edgehaze/runtime/models/{v['sidecar']['path']}"}
    assert want <= names, f"missing from the wheel: {sorted(want - names)}"
