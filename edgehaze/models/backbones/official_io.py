"""Reading the released checkpoints of third-party backbones safely.

Each official repository wraps its state dict differently (OKNet: under
``'model'``; MB-TaylorFormer and others: ``'state_dict'`` or ``'params'``, often
with DataParallel's ``module.`` prefix). This module reads any of those with
``weights_only=True`` (no pickled code runs) and loads them strictly, every
problem becoming a one-line :class:`CheckpointError` naming the file, the
option and the fix.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Dict, Mapping, Sequence

import torch
from torch import nn

from edgehaze.errors import CheckpointError

#: how users pass official weights (named in error messages)
WEIGHTS_OPTION = "--backbone-weights (config key model.backbone_weights)"


def read_official_state(
    path: "str | Path", model_name: str, containers: Sequence[str], example: str = ""
) -> Dict[str, torch.Tensor]:
    """State dict of an official checkpoint: unwraps the first of
    ``containers`` present (e.g. ``'model'``), strips ``module.``.

    ``example`` (e.g. ``"dehazeformer-t.pth from the IDKiro/DehazeFormer
    release"``) is named in the file-not-found message, so a user learns
    which file is meant."""
    path = Path(path)
    if not path.is_file():
        which = f" (e.g. {example})" if example else ""
        raise CheckpointError(
            f"{path}: {model_name} weights file not found; pass an existing official checkpoint{which} "
            f"with {WEIGHTS_OPTION}, or leave it out to start from random initialisation"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: cannot read as a {model_name} checkpoint (not a torch file, or it holds pickled "
            f"objects other than tensors, not loaded for safety); pass an official .pth file with {WEIGHTS_OPTION}"
        ) from None
    except Exception as exc:  # truncated or damaged file
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(
            f"{path}: cannot read as a {model_name} checkpoint (truncated or damaged file: {reason}); "
            f"pass an official .pth file with {WEIGHTS_OPTION}"
        ) from None
    if isinstance(obj, Mapping):
        for key in containers:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        wrapped = " or ".join(f"{{'{c}': {{name: tensor}}}}" for c in containers)
        raise CheckpointError(
            f"{path}: not a {model_name} checkpoint (expected {wrapped} or a bare state dict); "
            f"pass an official .pth file with {WEIGHTS_OPTION}"
        )
    prefix = "module."
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in obj.items()}


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, model_name: str) -> None:
    """Load ``state`` into ``model``: same keys, same shapes, else a one-line error."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            details.append(
                f"{len(wrong)} shape mismatches (e.g. {k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
            )
        raise CheckpointError(
            f"{source}: does not fit {model_name} ({'; '.join(details)}); "
            f"pass an official {model_name} checkpoint with {WEIGHTS_OPTION}"
        )
    model.load_state_dict(dict(state), strict=True)
