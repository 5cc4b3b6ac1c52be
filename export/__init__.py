"""``edgehaze.export``: checkpoint -> verified deployment artifact.

Targets (:data:`EXPORT_TARGETS`): ONNX FP32/FP16/INT8-QDQ (here), TensorRT
engines and torch-tensorrt (GPU machines). The artifact contract (uint8 NHWC
``image`` -> ``dehazed``, sidecar JSON == ONNX ``metadata_props``) is shared
with ``runtime/``; see export/README.md.

Importing this package registers the ``.onnx`` model runner used by
``edgehaze eval --checkpoint X.onnx``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from edgehaze.export.onnx_export import onnx_runner
from edgehaze.export.pipeline import ExportResult, export_checkpoint
from edgehaze.export.targets import EXPORT_TARGETS, ExportTarget

__all__ = ["EXPORT_TARGETS", "ExportResult", "ExportTarget", "export_checkpoint", "onnx_runner"]


def _register_runner() -> None:
    try:
        from edgehaze.data.runners import MODEL_RUNNERS, Runner
    except ImportError:  # the data package is optional for exporting
        return
    if ".onnx" in MODEL_RUNNERS:
        return

    @MODEL_RUNNERS.register(".onnx")
    def onnx_model_runner(path: Path, threads: Optional[int] = None, **_: Any) -> Runner:
        """An exported edgehaze artifact (ONNX Runtime, CPU)."""
        from edgehaze.export.metadata import read_metadata_props

        meta = read_metadata_props(path)
        info = {"kind": "onnx", "path": str(path), "precision": meta.get("precision"), "model": meta.get("model")}
        return Runner(run=onnx_runner(path, threads=threads or 2), info=info)


_register_runner()
