"""Small ONNX artifacts that follow the artifact contract (/work/notes/artifact.md).

The real exporter (`edgehaze export`) writes these for trained models; the
runtime tests need artifacts now and need them tiny, so this helper builds
a random-initialised toy dehazer with the same interface:

- ``NAME.onnx``        image uint8 [1,H,W,3] -> dehazed uint8 [1,H,W,3]
- ``NAME.depth.onnx``  image -> depth_0 float32 [1,C,ceil(H/2),ceil(W/2)]
- ``NAME.fuse.onnx``   image, depth_0 -> dehazed
- ``NAME.json``        the sidecar, also stored in each graph's metadata_props

The full graph is literally ``fuse(image, depth(image))`` so the chain of
the two-graph export equals the single graph (what the runtime's
depth-refresh mode relies on). Tests may import torch; the runtime may not.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

DEPTH_CHANNELS = 4


class _TinyDepth(nn.Module):
    """uint8 NHWC image -> one float32 NCHW feature map at stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, DEPTH_CHANNELS, 3, stride=2, padding=1)
        self.mix = nn.Conv2d(DEPTH_CHANNELS, DEPTH_CHANNELS, 3, padding=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        return torch.tanh(self.mix(torch.relu(self.down(x))))


class _TinyFuse(nn.Module):
    """Image + depth features -> uint8 NHWC image (gated residual, like the real fusion)."""

    def __init__(self) -> None:
        super().__init__()
        self.rgb = nn.Conv2d(3, 8, 3, padding=1)
        self.gate = nn.Conv2d(DEPTH_CHANNELS, 8, 1)
        self.head = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, image: torch.Tensor, depth_0: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        d = F.interpolate(depth_0, size=x.shape[-2:], mode="bilinear", align_corners=False)
        h = torch.relu(self.rgb(x)) * torch.sigmoid(self.gate(d))
        y = (x + 0.25 * torch.tanh(self.head(h))).clamp(0.0, 1.0)
        return torch.round(y * 255.0).to(torch.uint8).permute(0, 2, 3, 1)


class _TinyFull(nn.Module):
    def __init__(self, depth: _TinyDepth, fuse: _TinyFuse) -> None:
        super().__init__()
        self.depth = depth
        self.fuse = fuse

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fuse(image, self.depth(image))


def sidecar_dict(name: str, *, two_graph: bool, channel_order: str, dynamic: bool,
                 size: tuple[int, int] | None) -> dict:
    """The contract's sidecar for a tiny artifact."""
    graphs = {"full": f"{name}.onnx"}
    if two_graph:
        graphs.update(depth=f"{name}.depth.onnx", fuse=f"{name}.fuse.onnx")
    h, w = size if size else (48, 64)
    meta = {
        "format": "edgehaze-artifact",
        "version": 1,
        "graphs": graphs,
        "input": {"name": "image", "layout": "NHWC", "dtype": "uint8",
                  "channel_order": channel_order, "range": [0, 255]},
        "output": {"name": "dehazed", "layout": "NHWC", "dtype": "uint8",
                   "channel_order": channel_order, "range": [0, 255]},
        "size_multiple": 1,
        "dynamic": dynamic,
        "shape_ranges": ({"min": [1, 8, 8, 3], "opt": [1, 48, 64, 3], "max": [1, 1080, 1920, 3]}
                         if dynamic else
                         {"min": [1, h, w, 3], "opt": [1, h, w, 3], "max": [1, h, w, 3]}),
        "precision": "fp32",
        "opset": 17,
        "model": {"backbone": "tiny-test", "depth": "tiny-test", "fusion": "gate"},
        "teacher": "none",
        "license": "Apache-2.0",
        "accuracy": {"psnr_fp32": 0.0, "psnr": 0.0, "ssim": 0.0, "psnr_drop": 0.0},
        "created": "2026-01-01T00:00:00Z",
        "edgehaze_version": "0.1.0",
    }
    if two_graph:
        meta["depth_features"] = [{"name": "depth_0", "channels": DEPTH_CHANNELS, "stride": 2}]
    return meta


def _export(module: nn.Module, args: tuple, path: Path, input_names: list[str],
            output_names: list[str], dynamic: bool) -> None:
    axes = {}
    if dynamic:
        for n in input_names + output_names:
            axes[n] = {2: "fh", 3: "fw"} if n.startswith("depth_") else {1: "height", 2: "width"}
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but is what the contract pins
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                          dynamic_axes=axes or None, opset_version=17, dynamo=False)


def _add_metadata(path: Path, meta: dict) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = json.dumps(value)
    onnx.save(model, str(path))


def make_artifact(folder: Path, name: str = "tiny", *, two_graph: bool = True,
                  channel_order: str = "RGB", dynamic: bool = True,
                  size: tuple[int, int] | None = None, sidecar: bool = True,
                  metadata: bool = True, seed: int = 0) -> Path:
    """Write a tiny contract-following artifact into ``folder``; return ``NAME.onnx``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    depth, fuse = _TinyDepth().eval(), _TinyFuse().eval()
    full = _TinyFull(depth, fuse).eval()
    h, w = size if size else (48, 64)
    image = torch.randint(0, 256, (1, h, w, 3), dtype=torch.uint8)
    meta = sidecar_dict(name, two_graph=two_graph, channel_order=channel_order,
                        dynamic=dynamic, size=size)
    paths = [folder / f"{name}.onnx"]
    with torch.no_grad():
        _export(full, (image,), paths[0], ["image"], ["dehazed"], dynamic)
        if two_graph:
            feats = depth(image)
            paths.append(folder / f"{name}.depth.onnx")
            _export(depth, (image,), paths[-1], ["image"], ["depth_0"], dynamic)
            paths.append(folder / f"{name}.fuse.onnx")
            _export(fuse, (image, feats), paths[-1], ["image", "depth_0"], ["dehazed"], dynamic)
    if metadata:
        for p in paths:
            _add_metadata(p, meta)
    if sidecar:
        (folder / f"{name}.json").write_text(json.dumps(meta, indent=2))
    return paths[0]


def make_wrong_contract_onnx(path: Path) -> Path:
    """A valid ONNX file whose input is float32 NCHW named ``x`` (not our contract)."""
    path = Path(path)
    conv = nn.Conv2d(3, 3, 1).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(conv, (torch.zeros(1, 3, 8, 8),), str(path), input_names=["x"],
                          output_names=["y"], opset_version=17, dynamo=False)
    return path


def write_video(path: Path, frames) -> Path:
    """Write uint8 BGR frames to an mp4v video (what the stream tests read back)."""
    import cv2

    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 20.0, (w, h))
    assert writer.isOpened(), "cv2 cannot write mp4v here"
    for f in frames:
        writer.write(f)
    writer.release()
    return Path(path)


def moving_frames(n: int = 20, h: int = 48, w: int = 64, seed: int = 0):
    """Smooth, distinct frames (a gradient that drifts) so codec loss stays small."""
    import numpy as np

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for i in range(n):
        r = 128 + 100 * np.sin((xx + 2 * i) / 9.0)
        g = 128 + 100 * np.cos((yy - i) / 7.0)
        b = 128 + 60 * np.sin((xx + yy + 3 * i) / 13.0)
        out.append(np.clip(np.stack([b, g, r], -1), 0, 255).astype(np.uint8))
    return out


def const_core(maps, scale: int, prepool: int, guide=None):  # type: ignore[no-untyped-def]
    """A fused-graph "core" that ignores its input and returns ``maps``, with the fused metadata (and guide)."""
    from onnx import TensorProto, helper, numpy_helper

    from edgehaze.export.fused import _set_meta

    core = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["m"], ["maps"]), helper.make_node("Shape", ["x_low"], ["unused"])],
        "const_core", [helper.make_tensor_value_info("x_low", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("maps", TensorProto.FLOAT, list(maps.shape))],
        [numpy_helper.from_array(maps, "m")]), opset_imports=[helper.make_opsetid("", 17)])
    core.ir_version = 8
    _set_meta(core, scale, prepool, guide)
    return core
