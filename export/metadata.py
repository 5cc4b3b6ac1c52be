"""The artifact sidecar (contract v1) and its copy in ONNX ``metadata_props``.

The same top-level keys live in ``NAME.json`` and in the ONNX file (each
value JSON-encoded), so a lone ``.onnx`` still carries its contract. Writes
are atomic.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from edgehaze.fsutil import atomic_write

FORMAT = "edgehaze-artifact"
VERSION = 1
#: default TensorRT optimisation-profile ranges for dynamic graphs (N, H, W, C)
DEFAULT_SHAPE_RANGES = {"min": [1, 32, 32, 3], "opt": [1, 480, 640, 3], "max": [1, 1080, 1920, 3]}


def build_sidecar(
    *,
    name: str,
    precision: str,
    opset: int,
    dynamic: bool,
    imgsz: Optional[Sequence[int]],
    channel_order: str,
    build: Dict[str, Any],
    provenance: Dict[str, Any],
    depth_features: List[dict],
    two_graph: bool,
    accuracy: Optional[Dict[str, Any]] = None,
    size_multiple: int = 1,
    target: str = "cpu",
) -> Dict[str, Any]:
    """The sidecar dict for an artifact stem ``name``.

    ``target``: the graphs' flavour (``cpu``: ONNX Runtime on CPU; ``trt``:
    TensorRT, export/targets.py ``FLAVOURS``). ``profiles``: per graph
    (``graphs`` role), the min/opt/max shapes of each input, for TensorRT
    optimisation profiles; ``image``'s are ``shape_ranges`` (the export adds
    the fuse graph's depth features, measured).
    """
    from edgehaze import __version__

    io = {"layout": "NHWC", "dtype": "uint8", "channel_order": channel_order.upper(), "range": [0, 255]}
    graphs = {"full": f"{name}.onnx"}
    if two_graph and depth_features:
        graphs.update(depth=f"{name}.depth.onnx", fuse=f"{name}.fuse.onnx")
    if dynamic:
        ranges = {k: list(v) for k, v in DEFAULT_SHAPE_RANGES.items()}
    else:
        fixed = [1, int(imgsz[0]), int(imgsz[1]), 3]  # type: ignore[index]
        ranges = {"min": fixed, "opt": fixed, "max": fixed}
    fusion = build.get("fusion")
    meta: Dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "graphs": graphs,
        "input": {"name": "image", **io},
        "output": {"name": "dehazed", **io},
        "size_multiple": int(size_multiple),
        "dynamic": bool(dynamic),
        "shape_ranges": ranges,
        "profiles": {role: {"image": {k: list(v) for k, v in ranges.items()}} for role in graphs},
        "target": target,
        "precision": precision,
        "opset": int(opset),
        "model": {
            "backbone": build.get("backbone"),
            "depth": build.get("depth"),
            "fusion": fusion if isinstance(fusion, (str, type(None))) else fusion,
            # edge-* backbones: the network runs at 1/scale of the frame (edgehaze export --internal-scale)
            "scale": (build.get("backbone_kwargs") or {}).get("scale"),
        },
        "teacher": provenance.get("teacher"),
        "license": provenance.get("license"),
        "accuracy": accuracy or {},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "edgehaze_version": __version__,
    }
    if two_graph and depth_features:
        meta["depth_features"] = depth_features
    return meta


def write_sidecar(path: "str | Path", meta: Dict[str, Any]) -> Path:
    data = (json.dumps(meta, indent=2, sort_keys=False) + "\n").encode()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    atomic_write(path, write)
    return Path(path)


def embed_metadata(model: "onnx.ModelProto", meta: Dict[str, Any]) -> None:  # type: ignore[name-defined] # noqa: F821
    """Replace ``model.metadata_props`` with ``meta`` (values JSON-encoded)."""
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = json.dumps(value)
    model.doc_string = "edgehaze artifact v1: uint8 NHWC image -> uint8 NHWC dehazed (see sidecar keys)"


def read_metadata_props(path: "str | Path") -> Dict[str, Any]:
    """The sidecar dict stored in an ONNX file's ``metadata_props``."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: json.loads(p.value) for p in model.metadata_props}


def save_onnx(model: "onnx.ModelProto", path: "str | Path", meta: Optional[Dict[str, Any]] = None) -> Path:  # type: ignore[name-defined] # noqa: F821
    """Write ``model`` (with ``meta`` embedded if given) atomically."""
    import onnx

    if meta is not None:
        embed_metadata(model, meta)
    atomic_write(path, lambda tmp: onnx.save(model, tmp))
    return Path(path)
