"""Model checkpoints: one safetensors file that rebuilds the model alone.

The file holds the weights plus, in the safetensors metadata header, the
``build_dehazer`` arguments and provenance (depth model id, licence, what it
was trained on), so ``--checkpoint`` alone rebuilds the model. Frozen teacher
weights are not stored (hundreds of MB, and their licence stays with their
own file): the checkpoint records the teacher id and the path it was loaded
from, and ``load_dehazer(..., depth_weights=...)`` can point elsewhere.

safetensors never executes code on load; writes are atomic (temp file in the
same folder, then ``os.replace``), so a crash never leaves a half-written file
under the final name.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from edgehaze.errors import CheckpointError
from edgehaze.fsutil import atomic_write

FORMAT = "edgehaze-checkpoint"
VERSION = 1

def provenance_of(model: "torch.nn.Module") -> Dict[str, Any]:
    """Teacher id and licence of a dehazer's depth branch (or its teacher's)."""
    depth = getattr(model, "depth", None)
    if depth is None:
        return {"depth": None, "teacher": None, "license": None}
    # A distilled student names the teacher it learned from; as a derivative
    # it carries that teacher's licence, not only its own.
    from edgehaze.models.depth import teacher_licenses

    teacher = getattr(depth, "teacher_id", None) or depth.model_id
    licence = teacher_licenses().get(teacher) or getattr(depth, "teacher_license", None) or getattr(depth, "license", None)
    return {"depth": depth.model_id, "teacher": teacher, "license": licence}


def save_dehazer(
    path: "str | os.PathLike[str]",
    model: "torch.nn.Module",
    depth_weights: Optional[str] = None,
    extra: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write a self-describing checkpoint of a ``DepthGuidedDehazer``."""
    from safetensors.torch import save_file

    from edgehaze import __version__

    state = {k: v.detach().cpu().contiguous() for k, v in model.persistent_state_dict().items()}
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "build": model.build_args(depth_weights=depth_weights),
        "provenance": provenance_of(model),
        "extra": extra or {},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "edgehaze_version": __version__,
    }
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"edgehaze": json.dumps(meta)}))
    return Path(path)


def read_metadata(path: "str | os.PathLike[str]") -> Dict[str, Any]:
    """The checkpoint's metadata dict (build args, provenance, extra)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file (check the --checkpoint path)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get("edgehaze")
    except Exception as exc:  # safetensors raises several types for bad files
        raise CheckpointError(
            f"{path}: not a readable edgehaze checkpoint ({exc.__class__.__name__}: {exc}); "
            "pass a .safetensors file written by `edgehaze train`/`distill`"
        ) from None
    if raw is None:
        raise CheckpointError(f"{path}: a safetensors file without edgehaze metadata; it was not written by edgehaze")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {meta.get('format')!r}")
    return meta


def load_dehazer(
    path: "str | os.PathLike[str]",
    depth_weights: Optional[str] = None,
    map_location: str = "cpu",
    strict_finite: bool = True,
) -> Tuple["torch.nn.Module", Dict[str, Any]]:
    """Rebuild the model stored at ``path``; returns ``(model, metadata)``.

    ``depth_weights`` overrides the teacher weights path recorded at save time
    (needed when the checkpoint moved to another machine).
    """
    from safetensors.torch import load_file

    from edgehaze.models.dehazer import build_dehazer

    meta = read_metadata(path)
    build = dict(meta["build"])
    if depth_weights is not None:
        build["depth_weights"] = depth_weights
    model = build_dehazer(**build)
    try:
        state = load_file(str(path), device=map_location)
    except Exception as exc:
        raise CheckpointError(f"{path}: weights cannot be read ({exc}); the file may be truncated") from None
    if strict_finite:
        bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise CheckpointError(f"{path}: {len(bad)} tensor(s) hold NaN/Inf (e.g. {bad[0]}); the training run diverged")
    expected = model.persistent_state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the model they describe "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the model they describe ({str(exc).splitlines()[0]})") from None
    model.eval()
    return model, meta
