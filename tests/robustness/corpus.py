"""A bad-input corpus, generated at test time (nothing binary is committed).

:func:`build_corpus` writes every entry into a folder and returns a
:class:`Corpus` (``corpus["truncated.png"]`` -> its path). Entries are what
users really feed the tools: truncated and empty files, images in every
pixel layout, odd and huge sizes, mismatched pairs, foreign/corrupt/unsafe
checkpoints, not-ONNX and wrong-contract models, bad configs, missing
weight paths and an unreachable stream URI carrying a password.

The pickle payload (``payload.pth`` / ``payload_run/last.state.pt``) would
create :attr:`Corpus.marker` if anything unpickled it with code execution
allowed; every loader in edgehaze must leave the marker absent.

Needs torch (checkpoints, ONNX export) except for the image entries; the
8000x8000 image is written only with ``huge=True`` (a flat PNG: 192 MB in
memory for a moment, ~200 KB on disk).
"""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

import numpy as np

#: a password that must never appear in any command's output
SECRET = "s3cr3t-Pa55"
#: loopback, port 9 (discard): nothing listens, so the connection is refused at once
RTSP_URI = f"rtsp://user:{SECRET}@127.0.0.1:9/stream"
#: the non-UTF-8 file name (latin-1 'é' byte) of a valid image
NON_UTF8_NAME = b"haze_caf\xe9.png"

_TESTS_DIR = Path(__file__).resolve().parents[1]


@dataclass
class Corpus:
    """The generated entries: ``corpus[name]`` is a path (``str`` for URIs)."""

    root: Path
    entries: Dict[str, object] = field(default_factory=dict)
    notes: Dict[str, str] = field(default_factory=dict)

    @property
    def marker(self) -> Path:
        """Created only if a pickle payload ever runs."""
        return self.root / "PAYLOAD_RAN"

    def __getitem__(self, name: str):  # type: ignore[no-untyped-def]
        return self.entries[name]

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def add(self, name: str, value: object, note: str) -> None:
        self.entries[name] = value
        self.notes[name] = note


def _png(path: Path, arr: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(arr).save(path)
    return path


def _gradient(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / max(w - 1, 1), yy / max(h - 1, 1), 0.5 + 0.0 * xx], axis=2)
    noise = rng.uniform(-0.05, 0.05, size=(h, w, 3)).astype(np.float32)
    return (np.clip(base * 0.8 + 0.1 + noise, 0, 1) * 255).astype(np.uint8)


def _load_artifacts_helper():  # type: ignore[no-untyped-def]
    """tests/_artifacts.py (tiny contract-following ONNX artifacts), imported by path."""
    name = "_edgehaze_test_artifacts"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _TESTS_DIR / "_artifacts.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


class _Payload:
    """Unpickling this calls ``Path.touch(marker)``: a harmless stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (pathlib.Path.touch, (pathlib.PosixPath(str(self.marker)),))


# ------------------------------------------------------------------ images
def add_images(c: Corpus, huge: bool = False) -> None:
    from PIL import Image

    d = c.root / "images"
    d.mkdir(parents=True, exist_ok=True)
    good = _gradient(24, 32)
    c.add("good.png", _png(d / "good.png", good), "24x32 RGB gradient")

    full_png = (d / "good.png").read_bytes()
    (d / "truncated.png").write_bytes(full_png[: len(full_png) // 2])
    c.add("truncated.png", d / "truncated.png", "PNG cut in half")
    Image.fromarray(_gradient(40, 48, 1)).save(d / "_full.jpg", quality=90)
    full_jpg = (d / "_full.jpg").read_bytes()
    (d / "_full.jpg").unlink()
    (d / "truncated.jpg").write_bytes(full_jpg[: len(full_jpg) // 2])
    c.add("truncated.jpg", d / "truncated.jpg", "JPEG cut in half")
    (d / "empty.png").write_bytes(b"")
    c.add("empty.png", d / "empty.png", "zero-byte file")
    (d / "text.png").write_text("this is not an image\n")
    c.add("text.png", d / "text.png", "a text file named .png")

    rgba = np.concatenate([good, np.full((24, 32, 1), 200, np.uint8)], axis=2)
    c.add("rgba.png", _png(d / "rgba.png", rgba), "RGBA (alpha dropped)")
    c.add("gray.png", _png(d / "gray.png", good[:, :, 0]), "8-bit grayscale")
    sixteen = (good.astype(np.uint16) * 257)[:, :, ::-1]  # cv2 writes BGR
    import cv2

    cv2.imwrite(str(d / "16bit.png"), np.ascontiguousarray(sixteen))
    c.add("16bit.png", d / "16bit.png", "16-bit RGB PNG")
    Image.fromarray(good).convert("P", palette=Image.Palette.ADAPTIVE).save(d / "palette.png")
    c.add("palette.png", d / "palette.png", "palette (P mode) PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display: stored 20 wide x 12 high, shown 12 x 20
    Image.fromarray(_gradient(12, 20, 2)).save(d / "exif_rot.jpg", exif=exif.tobytes(), quality=95)
    c.add("exif_rot.jpg", d / "exif_rot.jpg", "JPEG stored 20x12 with EXIF orientation 6 (upright 12x20)")
    c.add("1x1.png", _png(d / "1x1.png", good[:1, :1]), "a single pixel")
    c.add("3x5.png", _png(d / "3x5.png", good[:3, :5]), "3 high x 5 wide")

    nd = c.root / "nonutf8"
    nd.mkdir(exist_ok=True)
    raw = os.path.join(os.fsencode(nd), NON_UTF8_NAME)
    with open(raw, "wb") as fh:
        fh.write(full_png)
    c.add("nonutf8", Path(os.fsdecode(raw)), "valid PNG whose file name is not UTF-8 (latin-1 byte)")
    if huge:
        add_huge(c)


def add_huge(c: Corpus, side: int = 8000) -> None:
    """A flat ``side x side`` PNG (compresses to a few hundred KB)."""
    import cv2

    path = c.root / "huge" / f"huge_{side}.png"  # its own folder: folder-wide cells must not hit it
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        arr = np.full((side, side, 3), 150, np.uint8)
        arr[: side // 2] = 110  # two flat halves: a hazy-ish frame with one edge
        ok = cv2.imwrite(str(path), arr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        assert ok, "cv2 could not write the huge PNG"
        del arr
    c.add("huge.png", path, f"{side}x{side} flat PNG ({side * side / 1e6:.0f} MP)")


# ------------------------------------------------------------------- pairs
def add_pairs(c: Corpus) -> None:
    mism = c.root / "pairs_mismatch"
    for sub in ("hazy", "clear"):
        (mism / sub).mkdir(parents=True, exist_ok=True)
    _png(mism / "hazy" / "a.png", _gradient(32, 32, 3))
    _png(mism / "clear" / "a.png", _gradient(36, 40, 4))
    _png(mism / "hazy" / "b.png", _gradient(32, 32, 7))
    _png(mism / "clear" / "b.png", _gradient(32, 32, 8))
    c.add("pairs_mismatch", mism, "hazy/a.png 32x32 vs clear/a.png 36x40 (plus a good pair b)")

    miss = c.root / "pairs_missing_gt"
    for sub in ("hazy", "clear"):
        (miss / sub).mkdir(parents=True, exist_ok=True)
    for stem in ("a", "b"):
        _png(miss / "hazy" / f"{stem}.png", _gradient(32, 32, 5))
    _png(miss / "clear" / "a.png", _gradient(32, 32, 6))
    c.add("pairs_missing_gt", miss, "hazy/b.png has no GT")


# ------------------------------------------------------------- checkpoints
def tiny_model(seed: int = 0, backbone: str = "edge-xs"):  # type: ignore[no-untyped-def]
    """A small dehazer whose output is NOT the identity (random head)."""
    import torch

    from edgehaze import build_dehazer

    torch.manual_seed(seed)
    model = build_dehazer(backbone)
    head = getattr(model.backbone, "head", None)
    if head is not None:
        with torch.no_grad():
            head.weight.normal_(0.0, 0.05)
            head.bias.normal_(0.0, 0.02)
    return model.eval()


def add_checkpoints(c: Corpus) -> None:
    import torch
    from safetensors.torch import save_file

    from edgehaze.checkpoint import FORMAT, VERSION, save_dehazer

    d = c.root / "ckpt"
    d.mkdir(parents=True, exist_ok=True)
    model = tiny_model()
    good = save_dehazer(d / "good.safetensors", model)
    c.add("good.ckpt", good, "edge-xs checkpoint (random, non-identity head)")

    save_file({"encoder.weight": torch.randn(8, 3), "decoder.bias": torch.randn(4)}, str(d / "foreign.safetensors"))
    c.add("foreign.ckpt", d / "foreign.safetensors", "safetensors of another model (no edgehaze metadata)")

    other = tiny_model(backbone="edge-s")
    meta = {"format": FORMAT, "version": VERSION, "build": other.build_args(), "provenance": {},
            "extra": {}, "created": "2026-01-01T00:00:00+00:00", "edgehaze_version": "0"}
    state = {k: v.contiguous() for k, v in model.persistent_state_dict().items()}
    save_file(state, str(d / "mismatch.safetensors"), metadata={"edgehaze": json.dumps(meta)})
    c.add("mismatch.ckpt", d / "mismatch.safetensors", "edge-s metadata over edge-xs weights")

    nan_model = tiny_model()
    with torch.no_grad():
        next(iter(nan_model.parameters())).view(-1)[0] = float("nan")
    c.add("nan.ckpt", save_dehazer(d / "nan.safetensors", nan_model), "one NaN weight")

    data = good.read_bytes()
    (d / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    c.add("truncated.ckpt", d / "truncated.safetensors", "checkpoint cut in half")

    moved = {"format": FORMAT, "version": VERSION,
             "build": {"backbone": "edge-xs", "depth": "dav2-s",
                       "depth_weights": str(c.root / "gone" / "depth_anything_v2_vits.pth")},
             "provenance": {"depth": "dav2-s", "teacher": "dav2-s", "license": "Apache-2.0"},
             "extra": {}, "created": "2026-01-01T00:00:00+00:00", "edgehaze_version": "0"}
    save_file(state, str(d / "teacher_moved.safetensors"), metadata={"edgehaze": json.dumps(moved)})
    c.add("teacher_moved.ckpt", d / "teacher_moved.safetensors",
          "dav2-s fused checkpoint whose recorded teacher weights path does not exist")
    c.add("missing_depth_weights", c.root / "nowhere" / "depth_anything_v2_vits.pth", "a --depth-weights path that does not exist")

    torch.save({"state_dict": {"w": _Payload(c.marker)}}, str(d / "payload.pth"))
    c.add("payload.pth", d / "payload.pth", "torch.save pickle whose unpickling would create the marker")
    run = c.root / "payload_run"
    (run / "rgb").mkdir(parents=True, exist_ok=True)
    torch.save({"step": _Payload(c.marker)}, str(run / "last.state.pt"))
    torch.save({"step": _Payload(c.marker)}, str(run / "rgb" / "last.state.pt"))
    c.add("payload_run", run, "a train run folder whose rgb/last.state.pt carries the payload")


# ------------------------------------------------------------------- ONNX
def add_onnx(c: Corpus) -> None:
    helper = _load_artifacts_helper()
    d = c.root / "onnx"
    d.mkdir(parents=True, exist_ok=True)
    (d / "not_onnx.onnx").write_text("definitely not protobuf\n" * 8)
    c.add("not_onnx.onnx", d / "not_onnx.onnx", "a text file named .onnx")
    c.add("wrong_contract.onnx", helper.make_wrong_contract_onnx(d / "wrong_contract.onnx"),
          "valid ONNX with a float32 NCHW input 'x'")
    c.add("artifact.onnx", helper.make_artifact(d / "artifact", "tiny", two_graph=False),
          "a contract-following tiny artifact")
    frames = helper.moving_frames(6, 48, 64)
    c.add("clip.mp4", helper.write_video(d / "clip.mp4", frames), "6-frame 64x48 mp4v clip")


# ----------------------------------------------------------------- configs
def add_configs(c: Corpus) -> None:
    import yaml

    d = c.root / "configs"
    d.mkdir(parents=True, exist_ok=True)
    repo = _TESTS_DIR.parent
    base = yaml.safe_load((repo / "configs" / "quickstart.yaml").read_text())
    base["out_dir"] = str(c.root / "train_runs" / "{name}")
    base.setdefault("data", {})["root"] = str(c.root / "train_data")
    base["data"]["procedural"] = {"n_train": 4, "n_test": 2, "size": [64, 64], "seed": 0}
    base.setdefault("train", {})["batch_size"] = 2
    for stage in ("rgb", "fused"):
        if isinstance(base.get(stage), dict):
            base[stage]["steps"] = 2
    unknown = json.loads(json.dumps(base))
    unknown["train"]["learning_rate_typo"] = 1.0e-3
    (d / "unknown_key.yaml").write_text(yaml.safe_dump(unknown, sort_keys=False))
    c.add("unknown_key.yaml", d / "unknown_key.yaml", "train config with train.learning_rate_typo")
    run = c.root / "payload_run"
    if run.is_dir():  # make it a resumable run of `edgehaze train --resume RUN_DIR`
        stored = json.loads(json.dumps(base))
        stored["out_dir"] = str(run)
        (run / "config.yaml").write_text(yaml.safe_dump(stored, sort_keys=False))
    wrong = json.loads(json.dumps(base))
    wrong["train"]["lr"] = "fast"
    (d / "wrong_type.yaml").write_text(yaml.safe_dump(wrong, sort_keys=False))
    c.add("wrong_type.yaml", d / "wrong_type.yaml", "train config with train.lr: 'fast'")

    dist_path = repo / "configs" / "distill_quickstart.yaml"
    if dist_path.is_file():
        dist = yaml.safe_load(dist_path.read_text()) or {}
        dist["out_dir"] = str(c.root / "distill_runs" / "x")
        du = json.loads(json.dumps(dist))
        du["distill_typo"] = 1
        (d / "distill_unknown_key.yaml").write_text(yaml.safe_dump(du, sort_keys=False))
        c.add("distill_unknown_key.yaml", d / "distill_unknown_key.yaml", "distill config with a top-level typo key")
        dw = json.loads(json.dumps(dist))
        section = dw.get("distill") if isinstance(dw.get("distill"), dict) else None
        if section is not None:
            section["steps"] = "many"
        else:
            dw["distill"] = {"steps": "many"}
        (d / "distill_wrong_type.yaml").write_text(yaml.safe_dump(dw, sort_keys=False))
        c.add("distill_wrong_type.yaml", d / "distill_wrong_type.yaml", "distill config with distill.steps: 'many'")


def build_corpus(root: "str | os.PathLike[str]", *, huge: bool = False, models: bool = True,
                 onnx: bool = True, configs: bool = True) -> Corpus:
    """Write the corpus under ``root``; ``models``/``onnx``/``configs`` need torch."""
    c = Corpus(Path(root))
    c.root.mkdir(parents=True, exist_ok=True)
    add_images(c, huge=huge)
    add_pairs(c)
    c.add("rtsp", RTSP_URI, "rtsp URI with a password, loopback port 9 (refused)")
    c.add("missing_file", c.root / "does_not_exist.png", "a path that does not exist")
    if models:
        add_checkpoints(c)
    if onnx:
        add_onnx(c)
    if configs:
        add_configs(c)
    return c


def main(argv: Optional[list] = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="write the robustness corpus into a folder")
    p.add_argument("out")
    p.add_argument("--huge", action="store_true")
    a = p.parse_args(argv)
    c = build_corpus(a.out, huge=a.huge)
    for name, value in c.entries.items():
        print(f"{name:28s} {value}  -- {c.notes[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
