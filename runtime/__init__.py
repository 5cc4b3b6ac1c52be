"""edgehaze runtime: run an exported artifact with numpy + onnxruntime (or TensorRT) only.

No torch and no ``edgehaze`` import anywhere in this folder: copy it to a
device and ``import runtime``, or use it installed as ``edgehaze.runtime``.
OpenCV is needed only by the stream tool (``python runtime/stream.py``).

    import runtime
    h = runtime.create("edgehaze-s", {"threads": 2})   # a shipped model (runtime.list_models()) or a path
    h = runtime.create("model.onnx", {"provider": "auto", "threads": 2})
    out = runtime.run(h, frame_rgb_uint8)      # or runtime.run(h, frame, out=buf)
    print(h.backend_name); runtime.close(h)
"""
from .api import Dehazer, Options, close, create, run
from .backends import available_providers
from .errors import RuntimeError_, Status, mask_text, mask_uri
from .zoo import ModelDehazer, default_model, list_models

__all__ = ["Dehazer", "ModelDehazer", "Options", "RuntimeError_", "Status", "available_providers", "close", "create",
           "default_model", "list_models", "mask_text", "mask_uri", "run"]
__version__ = "0.1.0"
