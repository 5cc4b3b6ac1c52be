"""Official third-party code for the fidelity tests, without committing it.

Two checks per backbone, so that CI (no internet beyond package registries)
still compares against the official network:

1. **Committed references** (``tests/official_refs/<name>.pt``): the output of
   the *official* model on a seeded input, with weights that are a pure
   function of the seed and the official state-dict keys and shapes
   (:func:`seeded_state`). The test rebuilds those weights, writes them in the
   official checkpoint layout, loads the file through edgehaze's loader and
   compares. The files are written by ``tests/make_official_refs.py`` from the
   official code; they hold tensors only (no official code, no weights).
2. **Live comparison**, when the official repository is on this machine: a
   bare git mirror (as the ``fetch`` tool leaves under ``/work/.mirror``, or
   ``git clone --mirror`` anywhere) found through ``EDGEHAZE_OFFICIAL_CODE``
   (default ``/work/.mirror``, entries named ``owner+repo/repo``). The needed
   files are extracted to a temporary folder and imported there; when the
   mirror is absent the test is skipped with that reason.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Tuple

import torch

REFS = Path(__file__).parent / "official_refs"


def mirror_dir(repo: str) -> Optional[Path]:
    """The bare git dir of ``owner/name``, or None when it is not here."""
    root = Path(os.environ.get("EDGEHAZE_OFFICIAL_CODE", "/work/.mirror"))
    for cand in (root / repo.replace("/", "+") / "repo", root / repo.replace("/", "+"), root / (repo.split("/")[1] + ".git")):
        if (cand / "HEAD").is_file():
            return cand
    return None


def extract(repo: str, files: Iterable[str], dest: Path) -> Optional[Path]:
    """Write ``files`` of the mirror's HEAD under ``dest``; None without a mirror."""
    git_dir = mirror_dir(repo)
    if git_dir is None:
        return None
    for name in files:
        blob = subprocess.run(["git", "--git-dir", str(git_dir), "show", f"HEAD:{name}"],
                              check=True, capture_output=True).stdout
        out = dest / name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(blob)
    return dest


def import_from(root: Path, module: str):  # type: ignore[no-untyped-def]
    """Import ``module`` (dotted) with ``root`` first on sys.path, then forget the path."""
    sys.path.insert(0, str(root))
    try:
        for name in [m for m in sys.modules if m == module.split(".")[0] or m.startswith(module.split(".")[0] + ".")]:
            del sys.modules[name]
        return importlib.import_module(module)
    finally:
        sys.path.remove(str(root))


def seeded_state(shapes: Mapping[str, Tuple[int, ...]], seed: int, float_keys: Optional[Iterable[str]] = None) -> Dict[str, torch.Tensor]:
    """Random weights that depend only on the seed and the (sorted) keys and
    shapes, so the official model and ours get the same ones without sharing
    code. Matrices get std 1/sqrt(fan-in) (keeps activations in range through
    deep nets), vectors 1 +- 0.1 for scales (key ending ``weight``) and +- 0.1
    otherwise."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key in sorted(shapes):
        shape = tuple(shapes[key])
        noise = torch.randn(shape, generator=gen, dtype=torch.float64)
        if len(shape) >= 2:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod()))
            value = noise / fan_in ** 0.5
        elif key.endswith("weight"):
            value = 1 + 0.1 * noise
        else:
            value = 0.1 * noise
        state[key] = value.float()
    return state


def seeded_image(h: int, w: int, seed: int) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def check_size_and_fusion_points(model: torch.nn.Module, size: Tuple[int, int], multiple: int) -> None:
    """``model`` (a backbone) returns an image of the input's size, and each
    declared fusion point outputs its declared channels at its stride of the
    image padded to ``multiple``."""
    seen = {}
    hooks = [model.get_submodule(p.name).register_forward_hook(
        lambda _m, _i, out, n=p.name: seen.__setitem__(n, tuple(out.shape))) for p in model.fusion_points()]
    try:
        with torch.no_grad():
            y = model(seeded_image(*size, seed=3))
    finally:
        for h in hooks:
            h.remove()
    assert y.shape == (1, 3, *size) and torch.isfinite(y).all()
    hp, wp = (-(-s // multiple) * multiple for s in size)
    assert set(seen) == {p.name for p in model.fusion_points()}
    for p in model.fusion_points():
        assert seen[p.name] == (1, p.channels, hp // p.stride, wp // p.stride), p.name


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max |ref|."""
    return float((ours.double() - ref.double()).abs().max() / ref.double().abs().max())
