"""Model runners: one call signature for every kind of trained model file.

``make_runner(path)`` returns a :class:`Runner`, a callable
``img01 (H x W x 3 float in [0, 1]) -> H x W x 3 float32 in [0, 1]``, so
evaluation and demos do not care whether the model is a PyTorch checkpoint
or an exported artifact. Which loader handles a file is chosen by its
extension through :data:`MODEL_RUNNERS`; an exporter adds its formats by
registering a factory for its extension (e.g. ``.onnx``), taking
``(path, **options) -> Runner``. ``make_runner`` imports ``edgehaze.export``
(if installed) before giving up on an unknown extension, so registering
there is enough.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np

from edgehaze.errors import EdgehazeError
from edgehaze.registry import Registry

MODEL_RUNNERS = Registry("model runner")

ImageFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class Runner:
    """A loaded model behind a numpy-in, numpy-out call.

    run: the dehazing function (output clipped to [0, 1]).
    depth: optional ``img01 -> H x W`` relative inverse depth (large = near)
        of the model's depth teacher, for visualisation; None when the model
        has no teacher that predicts depth.
    info: what was loaded (kind, path, architecture) for reports.
    """

    run: ImageFn
    depth: Optional[ImageFn] = None
    info: Dict[str, Any] = field(default_factory=dict)

    def __call__(self, img01: np.ndarray) -> np.ndarray:
        return self.run(img01)


def make_runner(path: "str | Path", **options: Any) -> Runner:
    """Load the model at ``path`` and return its :class:`Runner`.

    ``options`` go to the loader (for checkpoints: ``depth_weights``).
    """
    path = Path(path)
    if not path.exists():
        raise EdgehazeError(f"{path}: no such model file (check --checkpoint)")
    suffix = path.suffix.lower()
    if suffix not in MODEL_RUNNERS:
        try:  # exporters register their formats on import
            import edgehaze.export  # noqa: F401
        except ImportError:
            pass
    if suffix not in MODEL_RUNNERS:
        known = ", ".join(MODEL_RUNNERS.names())
        raise EdgehazeError(f"{path}: cannot run '{suffix}' model files (known: {known})")
    return MODEL_RUNNERS.build(suffix, path=path, **options)


@MODEL_RUNNERS.register(".safetensors")
def checkpoint_runner(path: Path, depth_weights: Optional[str] = None, threads: Optional[int] = None) -> Runner:
    """A PyTorch dehazer checkpoint written by ``edgehaze.checkpoint.save_dehazer``."""
    import torch

    from edgehaze.checkpoint import load_dehazer
    from edgehaze.imageio import to_image, to_tensor

    if threads:
        torch.set_num_threads(int(threads))
    model, meta = load_dehazer(path, depth_weights=depth_weights)
    model.eval()

    def run(img01: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = model(to_tensor(img01))
        return to_image(out.clamp(0.0, 1.0))

    depth_fn: Optional[ImageFn] = None
    provider = getattr(model, "depth", None)
    if provider is not None and callable(getattr(provider, "depth", None)):

        def depth_fn(img01: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                inv = provider.depth(to_tensor(img01))
            return inv[0].float().cpu().numpy()

    build = meta.get("build", {})
    info = {
        "kind": "checkpoint",
        "path": str(path),
        "backbone": build.get("backbone"),
        "depth": build.get("depth"),
        "fusion": build.get("fusion"),
        "provenance": meta.get("provenance"),
    }
    return Runner(run=run, depth=depth_fn, info=info)
