"""Training state that ``--resume`` restores, and the EMA of weights.

``last.state.pt`` holds everything besides the model weights (those are in
``last.safetensors``): optimiser, scheduler, GradScaler, EMA, the RNG states
of python/numpy/torch, step, epoch, position in the epoch, best metric. It is
written with ``torch.save`` and read with ``torch.load(weights_only=True)``,
so it holds only tensors, dicts, lists, numbers and strings: RNG states are
converted to tensors/lists here (python's state tuple and numpy's state dict
are not loadable under ``weights_only``).
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Union

import numpy as np
import torch
from torch import nn

from edgehaze.fsutil import atomic_write
from edgehaze.errors import CheckpointError

STATE_FORMAT = "edgehaze-train-state"


# ---------------------------------------------------------------- RNG
def rng_state() -> Dict[str, Any]:
    """python/numpy/torch(/cuda) RNG states as weights_only-safe values."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state: Dict[str, Any] = {
        "python": {"version": int(version), "state": list(internal), "gauss": gauss},
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# ---------------------------------------------------------------- files
def save_state(path: Union[str, Path], state: Dict[str, Any]) -> None:
    """Write a training-state dict atomically (``torch.save``)."""
    payload = {"format": STATE_FORMAT, **state}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_state(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a training-state file safely (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no training state to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        # torch's message runs over many lines and suggests weights_only=False,
        # which would execute a pickle payload: keep its first line only.
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(
            f"{path}: unreadable or unsafe training state ({exc.__class__.__name__}: {first}); "
            "it is truncated, not an edgehaze state file, or carries code; start a fresh run without --resume"
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not an edgehaze training-state file")
    return state


# ---------------------------------------------------------------- EMA
class EMA:
    """Exponential moving average of a model's trainable parameters and float buffers.

    Kept apart from the model (no deep copy: a frozen multi-hundred-MB teacher
    inside the model is not duplicated). ``swapped_in(model)`` temporarily
    loads the averaged weights for validation/saving.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.shadow: Dict[str, torch.Tensor] = {
            k: v.detach().clone().float() for k, v in self._tracked(model).items()
        }
        self.updates = 0

    @staticmethod
    def _tracked(model: nn.Module) -> Dict[str, torch.Tensor]:
        out = {n: p for n, p in model.named_parameters() if p.requires_grad}
        out.update({n: b for n, b in model.named_buffers() if b.is_floating_point() and not n.startswith("depth.")})
        return out

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))  # warm-up as timm's ModelEmaV2 users do
        for name, value in self._tracked(model).items():
            s = self.shadow[name]
            s.mul_(d).add_(value.detach().float(), alpha=1 - d)

    @contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[nn.Module]:
        tracked = self._tracked(model)
        backup = {n: v.detach().clone() for n, v in tracked.items()}
        with torch.no_grad():
            for n, v in tracked.items():
                v.copy_(self.shadow[n].to(v.dtype))
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, v in tracked.items():
                    v.copy_(backup[n])

    def state_dict(self) -> Dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        missing = set(self.shadow) - set(state["shadow"])
        if missing:
            raise CheckpointError(f"EMA state lacks {sorted(missing)[:3]}; it belongs to another model")
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        for k in self.shadow:
            self.shadow[k] = state["shadow"][k].clone().float()


def optional_state(obj: Optional[Any]) -> Optional[Dict[str, Any]]:
    return None if obj is None else obj.state_dict()
