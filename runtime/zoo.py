"""Shipped models by name: ``runtime.create("edgehaze-s")``, ``runtime.list_models()``, integrity checks.

Why it lives in the runtime: ``runtime/`` is what travels to a device (copied,
or installed as ``edgehaze.runtime``), so the shipped artifacts sit in
``runtime/models/`` next to this file and a device opens them with numpy and
onnxruntime alone (no torch, no ``edgehaze``). ``runtime/models/manifest.json``
(written by ``edgehaze models pack``) lists each model's files with their
sha256 and size, precision, input range and the recipe that made them.

- **Variants.** A model has one INT8 artifact per frame class (``640``: the
  trained internal scale, ``1080``: the same weights at internal scale 16).
  Opened by name, the handle picks the variant from each frame's shorter side
  (each variant's ``min_side`` in the manifest; a new size re-picks, the way a
  new size already restarts video smoothing); ``NAME@VARIANT`` pins one.
- **Integrity.** Every file is checked against the manifest (size, then
  sha256) before it is opened; a missing, truncated or changed file is one
  ``BAD_ARTIFACT`` line naming it and the command that restores it.
- **Names and paths.** A string is a model name only when it is a bare word
  (no ``/``, no artifact suffix) and no file, folder or ``NAME.onnx`` of that
  name exists: paths keep working and win.
``EDGEHAZE_MODELS_DIR`` points at another models folder (tests, a device
that keeps models elsewhere).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from .api import Dehazer, Options
from .errors import RuntimeError_, Status

FORMAT = "edgehaze-models"
VERSION = 1
MANIFEST = "manifest.json"
ENV_DIR = "EDGEHAZE_MODELS_DIR"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*(@[A-Za-z0-9_.-]+)?$")
_SUFFIXES = (".onnx", ".engine", ".json", ".safetensors", ".pt", ".pth")
_verified: dict = {}  # (path, size, mtime_ns) -> sha256 already checked in this process


def models_dir() -> Path:
    """The folder holding ``manifest.json``: ``$EDGEHAZE_MODELS_DIR`` or ``runtime/models``."""
    env = os.environ.get(ENV_DIR)
    return Path(env) if env else Path(__file__).resolve().parent / "models"


def read_manifest(folder: "Path | None" = None) -> dict:
    """The manifest as a dict; a one-line ``BAD_ARTIFACT`` when it is missing or unreadable."""
    folder = folder or models_dir()
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        raise RuntimeError_(Status.BAD_ARTIFACT, f"{path}: no model manifest ({restore_hint(path)})") from None
    except ValueError as exc:
        raise RuntimeError_(Status.BAD_ARTIFACT, f"{path}: not valid JSON ({exc}); {restore_hint(path)}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("models"), dict):
        raise RuntimeError_(Status.BAD_ARTIFACT, f"{path}: not an {FORMAT} manifest; {restore_hint(path)}")
    if data.get("version") != VERSION:
        raise RuntimeError_(Status.BAD_ARTIFACT, f"{path}: manifest version {data.get('version')!r}, this runtime "
                                                 f"reads {VERSION} (update the runtime)")
    return data


def default_model(folder: "Path | None" = None) -> str:
    """The name ``runtime/stream.py`` and ``edgehaze dehaze`` use when no model is given."""
    data = read_manifest(folder)
    name = data.get("default")
    if name not in data["models"]:
        raise RuntimeError_(Status.BAD_ARTIFACT, f"{(folder or models_dir()) / MANIFEST}: default model {name!r} is "
                                                 "not among its models")
    return name


def list_models(folder: "Path | None" = None) -> "list[dict]":
    """One dict per shipped model: name, default, variants (file, size, precision, frame class), licence, headline."""
    data = read_manifest(folder)
    out = []
    for name, entry in data["models"].items():
        variants = {k: {"file": v["file"]["path"], "size": v["file"]["size"], "precision": v.get("precision"),
                        "internal_scale": v.get("internal_scale"), "min_side": v.get("min_side", 0)}
                    for k, v in entry.get("variants", {}).items()}
        files = [v["file"] for v in entry.get("variants", {}).values()] + [
            v["sidecar"] for v in entry.get("variants", {}).values() if v.get("sidecar")]
        if entry.get("checkpoint"):
            files.append(entry["checkpoint"])
        out.append({"name": name, "default": name == data.get("default"), "variants": variants,
                    "missing_variants": entry.get("missing_variants") or {},
                    "checkpoint": (entry.get("checkpoint") or {}).get("path"),
                    "bytes": sum(int(f["size"]) for f in files), "licence": entry.get("licence") or {},
                    "headline": entry.get("headline") or {}, "card": entry.get("card"),
                    "summary": entry.get("summary", "")})
    return out


def looks_like_name(spec: Any) -> bool:
    """True for a bare word like ``edgehaze-s`` or ``edgehaze-s@1080`` that names no existing file or folder."""
    if not isinstance(spec, str) or not _NAME.match(spec):
        return False
    if Path(spec).suffix.lower() in _SUFFIXES:
        return False
    return not any(Path(p).exists() for p in (spec, spec + ".onnx", spec + ".engine", spec + ".json"))


def split_name(spec: str) -> "tuple[str, str | None]":
    """``"edgehaze-s@1080"`` -> ``("edgehaze-s", "1080")``; no ``@``: variant None."""
    name, _, variant = spec.partition("@")
    return name, (variant or None)


def model_entry(spec: str, folder: "Path | None" = None) -> "tuple[str, dict, str | None]":
    """(name, manifest entry, pinned variant or None) for ``NAME`` / ``NAME@VARIANT``; a one-line error otherwise."""
    name, variant = split_name(spec)
    data = read_manifest(folder)
    entry = data["models"].get(name)
    if entry is None:
        known = ", ".join(sorted(data["models"])) or "none"
        raise RuntimeError_(Status.BAD_ARTIFACT, f"{spec}: no such artifact file, and not a shipped model name "
                                                 f"(shipped: {known}; list them with runtime.list_models() or "
                                                 "`edgehaze models`)")
    if variant is not None and variant not in entry.get("variants", {}):
        why = (entry.get("missing_variants") or {}).get(variant)
        if why:
            raise RuntimeError_(Status.BAD_ARTIFACT, f"{spec}: {name} ships no {variant} variant: {why}")
        raise RuntimeError_(Status.BAD_ARGUMENT, f"{spec}: {name} has variants "
                                                 f"{', '.join(entry.get('variants', {}))}; use {name}@VARIANT with one "
                                                 "of them, or the bare name to choose by frame size")
    return name, entry, variant


def choose_variant(entry: dict, height: int, width: int) -> str:
    """The variant for a ``height`` x ``width`` frame: the largest ``min_side`` not above the frame's shorter side."""
    side = min(int(height), int(width))
    ranked = sorted(entry["variants"].items(), key=lambda kv: int(kv[1].get("min_side", 0)))
    chosen = ranked[0][0]
    for key, v in ranked:
        if int(v.get("min_side", 0)) <= side:
            chosen = key
    return chosen


def default_variant(entry: dict) -> str:
    """The variant opened before any frame is seen: the manifest's ``default_variant`` or the smallest."""
    key = entry.get("default_variant")
    return key if key in entry["variants"] else choose_variant(entry, 1, 1)


def describe(spec: str, folder: "Path | None" = None) -> str:
    """One line saying which files a name stands for and which frames each serves (stream.py prints it)."""
    name, entry, pinned = model_entry(spec, folder)
    parts = []
    for key, v in sorted(entry["variants"].items(), key=lambda kv: int(kv[1].get("min_side", 0))):
        if pinned is not None and key != pinned:
            continue
        scale = f", internal scale {v['internal_scale']}" if v.get("internal_scale") else ""
        when = ("" if pinned is not None or len(entry["variants"]) == 1 else
                f", frames from {v['min_side']} rows" if v.get("min_side") else ", smaller frames")
        parts.append(f"{Path(v['file']['path']).name} ({v.get('precision', '?').upper()}{scale}{when})")
    return f"{name}: " + "; ".join(parts)


# ---------------------------------------------------------------- integrity
def _git_root(path: Path) -> "Path | None":
    for parent in path.resolve().parents:
        if (parent / ".git").exists():
            return parent
    return None


def restore_hint(path: Path) -> str:
    """How to get a shipped file back: ``git checkout -- PATH`` in a clone, else reinstall or copy again."""
    root = _git_root(path)
    if root is not None:
        rel = path.resolve().relative_to(root).as_posix()
        here = Path.cwd().resolve()
        return (f"restore it with: git checkout -- {rel}" if here == root else
                f"restore it with: git -C {root} checkout -- {rel}")
    return "restore it by reinstalling edgehaze (pip install --force-reinstall edgehaze) or copying runtime/models/ again"


def sha256_file(path: Path) -> str:
    """The file's sha256 (hex), read in 1 MiB blocks: what the manifest records and loading checks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(record: dict, folder: "Path | None" = None) -> Path:
    """The path of a manifest file record after checking it is there, whole and unchanged; else BAD_ARTIFACT."""
    folder = folder or models_dir()
    path = folder / record["path"]
    try:
        st = path.stat()
    except OSError:
        raise RuntimeError_(Status.BAD_ARTIFACT, f"{path}: shipped model file is missing; {restore_hint(path)}") from None
    key = (str(path), st.st_size, st.st_mtime_ns)
    if _verified.get(key) == record["sha256"]:
        return path
    if st.st_size != int(record["size"]):
        what = "truncated" if st.st_size < int(record["size"]) else "replaced"
        raise RuntimeError_(Status.BAD_ARTIFACT, f"{path}: {st.st_size} bytes where {folder / MANIFEST} records "
                                                 f"{record['size']} ({what}); {restore_hint(path)}")
    digest = sha256_file(path)
    if digest != record["sha256"]:
        raise RuntimeError_(Status.BAD_ARTIFACT, f"{path}: sha256 {digest[:16]}... differs from {record['sha256'][:16]}"
                                                 f"... in {folder / MANIFEST} (changed or corrupted); "
                                                 f"{restore_hint(path)}")
    _verified[key] = record["sha256"]
    return path


def variant_path(spec_or_entry: "str | dict", variant: str, folder: "Path | None" = None) -> Path:
    """The verified ONNX file of one variant (its sidecar checked too)."""
    entry = model_entry(spec_or_entry, folder)[1] if isinstance(spec_or_entry, str) else spec_or_entry
    v = entry["variants"][variant]
    if v.get("sidecar"):
        verify_file(v["sidecar"], folder)
    return verify_file(v["file"], folder)


def checkpoint_path(spec: str, folder: "Path | None" = None) -> Path:
    """The verified FP32 checkpoint (``.safetensors``) a shipped model was exported from."""
    name, entry, _ = model_entry(spec, folder)
    record = entry.get("checkpoint")
    if not record:
        raise RuntimeError_(Status.BAD_ARTIFACT, f"{name}: the manifest records no FP32 checkpoint for it")
    return verify_file(record, folder)


def verify_model(spec: str, folder: "Path | None" = None) -> "list[Path]":
    """Check every file of a shipped model; returns their paths (``edgehaze models --verify``)."""
    name, entry, _ = model_entry(spec, folder)
    paths = [variant_path(entry, k, folder) for k in entry["variants"]]
    if entry.get("checkpoint"):
        paths.append(verify_file(entry["checkpoint"], folder))
    return paths


# ---------------------------------------------------------------- the handle
class ModelDehazer(Dehazer):
    """A shipped model opened by name: one :class:`Dehazer` per variant, the active one chosen by frame size.

    It is a ``Dehazer`` (``runtime.run``/``close`` and the C API take it) that
    delegates what it does not define to the active variant's handle
    (``backend_name``, ``channel_order``, ``meta``, ``fixed_size``, ...).
    Variants open on first use and stay open; ``set_temporal`` applies to
    every open variant and to those opened later. ``on_variant`` (a callable
    taking one line) hears each switch; ``runtime/stream.py`` logs it.
    """

    def __init__(self, spec: str, options: "Options | dict | None" = None,
                 folder: "Path | None" = None) -> None:  # noqa: D107 - Dehazer.__init__ is not called on purpose
        self.__dict__["_active"] = None
        self.model_name, self._entry, self._pinned = model_entry(spec, folder)
        self.spec = spec
        self._folder = folder
        self._options = Options.coerce(options)
        self._handles: dict = {}
        self._closed = False
        self.on_variant: "Callable[[str], None] | None" = None
        self.variant = self._pinned or default_variant(self._entry)
        self._active = self._open(self.variant)

    def _open(self, key: str) -> Dehazer:
        handle = self._handles.get(key)
        if handle is None:
            handle = Dehazer(variant_path(self._entry, key, self._folder), self._options)
            self._handles[key] = handle
        return handle

    def __getattr__(self, name: str) -> Any:
        active = self.__dict__.get("_active")
        if active is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(active, name)

    @property
    def frames(self) -> int:
        return sum(h.frames for h in self._handles.values())

    @property
    def depth_refreshes(self) -> int:
        return sum(h.depth_refreshes for h in self._handles.values())

    def run(self, frame: Any, out: Any = None) -> Any:
        """Dehaze with the variant for this frame's size (opened on first use), into ``out``."""
        if self._closed:
            raise RuntimeError_(Status.CLOSED, "run() on a closed handle")
        if self._pinned is None:
            hw = _frame_hw(frame)
            if hw is not None:
                key = choose_variant(self._entry, *hw)
                if key != self.variant:
                    self._active = self._open(key)
                    self.variant = key
                    if self.on_variant is not None:
                        self.on_variant(f"{self.model_name}: {hw[1]}x{hw[0]} frames -> variant {key} "
                                        f"({self._active.artifact.model_path.name})")
        return self._active.run(frame, out)

    __call__ = run

    def set_temporal(self, strength: float) -> None:
        """Smoothing on every open variant (the active one first: a refusal changes nothing) and later ones."""
        self._active.set_temporal(strength)
        for h in self._handles.values():
            if h is not self._active:
                h.set_temporal(strength)
        self._options = replace(self._options, temporal=float(strength))

    def refresh_depth_next(self) -> None:
        for h in self._handles.values():
            h.refresh_depth_next()

    def close(self) -> None:
        """Close every opened variant; idempotent."""
        for h in self._handles.values():
            h.close()
        self._closed = True

    def __repr__(self) -> str:
        return (f"ModelDehazer({self.spec!r}, variant={self.variant!r}, backend={self.backend_name!r}, "
                f"channel_order={self.channel_order!r})")


def _frame_hw(frame: Any) -> "tuple[int, int] | None":
    """(H, W) of a frame buffer without touching its data; None when it has no readable shape."""
    shape = getattr(frame, "shape", None)
    if shape is None:
        for attr in ("__array_interface__", "__cuda_array_interface__"):
            iface = getattr(frame, attr, None)
            if isinstance(iface, dict):
                shape = iface.get("shape")
                break
    if shape is None:
        return None
    shape = tuple(shape)
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 3:
        return None
    try:
        return int(shape[0]), int(shape[1])
    except (TypeError, ValueError):
        return None


def open_model(spec: str, options: "Options | dict | None" = None) -> ModelDehazer:
    """``runtime.create(NAME)``: a shipped model by name, its files checked first."""
    return ModelDehazer(spec, options)
