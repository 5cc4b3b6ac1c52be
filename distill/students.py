"""Student depth encoders: small stand-ins for the Depth Anything V2 teacher.

A student follows the teacher's contract (:class:`DepthProvider`:
``features(x01)`` finest first, ``feature_channels``, ``feature_strides``),
so it drops into any dehazer: ``build_dehazer(backbone="edge-s",
depth="student-s")``. Unlike a teacher it is trainable, so its weights are
stored in the dehazer checkpoint and no ``--depth-weights`` is needed.

``student-s`` / ``student-m`` are designed for the edge target (DEVELOPERS.md
"Targets"): INT8 3x3 convolutions run several times faster than depth-wise,
LayerNorm or attention layers, so the encoder is only dense 3x3 conv + BN +
ReLU (BN folds into the conv on export) plus 1x1 laterals and bilinear
upsampling. It pools the input by ``pool`` (4) first, so its finest output
sits at the stride of the ``edge-*`` backbones' first fusion point (4) and
the next at the second (8); two more downsamplings (strides 16 and 32) give
the wide receptive field that relative depth needs (a depth cue is a
whole-scene layout, not a local texture), and a top-down path (FPN-style)
brings that context back to the output strides.

``student-timm`` wraps any timm backbone (``features_only=True``, never
pretrained from the hub; ``weights=`` takes a local file) for comparison.

Every student records ``teacher_id`` (a build argument, so it survives a
checkpoint round trip): :func:`edgehaze.checkpoint.provenance_of` reports the
teacher, and its licence, for a dehazer whose student was distilled from it.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgehaze.errors import CheckpointError, ConfigError
from edgehaze.models.backbones.edge import ResidualBlock as ResBlock
from edgehaze.models.backbones.edge import conv_bn_relu
from edgehaze.models.contracts import DepthProvider
from edgehaze.models.registries import DEPTH_MODELS

#: the licence of weights trained by this project (the teacher's travels separately)
STUDENT_LICENSE = "edgehaze (trained here)"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _up_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


class ConvStudent(DepthProvider):
    """An INT8-friendly low-resolution CNN depth encoder (module docstring).

    widths: channels at strides ``pool * (1, 2, 4, 8)``.
    blocks: residual blocks per stride.
    pool: input average-pooling factor (the stride of the finest output).
    outputs: how many levels to return, finest first (<= len(widths)).
    teacher_id: the teacher this encoder was distilled from (provenance).
    """

    trainable = True

    def __init__(
        self,
        widths: Sequence[int] = (16, 32, 64, 128),
        blocks: Sequence[int] = (1, 1, 2, 2),
        pool: int = 4,
        outputs: int = 3,
        teacher_id: Optional[str] = None,
    ) -> None:
        super().__init__()
        widths, blocks = [int(w) for w in widths], [int(b) for b in blocks]
        if len(widths) != len(blocks) or len(widths) < 2:
            raise ConfigError(f"student widths {widths} and blocks {blocks} must be lists of the same length >= 2")
        if not 1 <= int(outputs) <= len(widths):
            raise ConfigError(f"student outputs must be in 1..{len(widths)}, got {outputs}")
        if int(pool) < 1:
            raise ConfigError(f"student pool must be >= 1, got {pool}")
        self.pool = int(pool)
        self.outputs = int(outputs)
        self.license = STUDENT_LICENSE
        self.teacher_id = teacher_id
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        stages = []
        cin = 3
        for i, (w, n) in enumerate(zip(widths, blocks)):
            stages.append(nn.Sequential(conv_bn_relu(cin, w, stride=1 if i == 0 else 2), *[ResBlock(w) for _ in range(n)]))
            cin = w
        self.stages = nn.ModuleList(stages)
        # top-down: lateral 1x1 from the coarser level, added, then a 3x3 conv-BN-ReLU
        self.laterals = nn.ModuleList(nn.Conv2d(widths[i + 1], widths[i], 1) for i in range(len(widths) - 1))
        self.smooth = nn.ModuleList(conv_bn_relu(widths[i], widths[i]) for i in range(len(widths) - 1))
        # linear 1x1 output heads: depth features are signed (no final ReLU)
        self.heads = nn.ModuleList(nn.Conv2d(widths[i], widths[i], 1) for i in range(self.outputs))
        self.feature_channels = widths[: self.outputs]
        self.feature_strides = [float(self.pool * 2**i) for i in range(self.outputs)]
        self._build_kwargs = {
            "widths": widths, "blocks": blocks, "pool": self.pool, "outputs": self.outputs, "teacher_id": teacher_id,
        }

    def features(self, image: torch.Tensor) -> List[torch.Tensor]:
        # Pool first, then normalise: the same numbers (both are per-pixel affine
        # maps and the pool averages valid pixels only), but the normalisation
        # runs on 1/pool^2 of the pixels, and the exported pooling node is then
        # identical to the edge backbone's, so ONNX Runtime computes it once.
        x = image
        if self.pool > 1:
            x = F.avg_pool2d(x, self.pool, self.pool, ceil_mode=True, count_include_pad=False)
        x = (x - self.mean) / self.std
        levels = []
        for stage in self.stages:
            x = stage(x)
            levels.append(x)
        top = levels[-1]
        merged = [top]
        for i in range(len(levels) - 2, -1, -1):
            top = self.smooth[i](levels[i] + _up_to(self.laterals[i](top), levels[i]))
            merged.append(top)
        merged = merged[::-1]  # finest first
        return [head(f) for head, f in zip(self.heads, merged[: self.outputs])]


def _read_state(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (student weights=); pass a local timm weight file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # several error types for bad files
        raise CheckpointError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


class TimmStudent(DepthProvider):
    """A timm backbone (``features_only``) as the student encoder.

    timm_name: any timm model name (``mobilenetv3_small_100``, ``resnet18``).
    out_indices: which timm feature levels to return (finest first).
    input_scale: average-pool the input by this factor first (cheaper; the
        strides scale with it).
    weights: optional local weight file (a timm/ImageNet state dict; the
        classifier keys are ignored). Nothing is ever downloaded.
    """

    trainable = True

    def __init__(
        self,
        timm_name: str = "mobilenetv3_small_100",
        out_indices: Sequence[int] = (1, 2, 3),
        input_scale: int = 1,
        weights: Optional[str] = None,
        teacher_id: Optional[str] = None,
    ) -> None:
        super().__init__()
        import timm

        try:
            self.body = timm.create_model(
                timm_name, features_only=True, pretrained=False, out_indices=tuple(int(i) for i in out_indices)
            )
        except (RuntimeError, ValueError, IndexError) as exc:
            raise ConfigError(f"student-timm: cannot build timm model '{timm_name}' with out_indices "
                              f"{list(out_indices)} ({exc})") from None
        if weights is not None:
            state = _read_state(Path(weights).expanduser())
            own = self.body.state_dict()
            missing = sorted(k for k in own if k not in state)
            if missing:
                raise CheckpointError(f"{weights}: not weights of timm '{timm_name}' (missing {missing[:3]})")
            bad = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
            if bad:
                raise CheckpointError(f"{weights}: tensor shapes differ from timm '{timm_name}' (e.g. {bad[0]})")
            self.body.load_state_dict({k: state[k] for k in own}, strict=True)
        if int(input_scale) < 1:
            raise ConfigError(f"student-timm input_scale must be >= 1, got {input_scale}")
        self.input_scale = int(input_scale)
        self.license = STUDENT_LICENSE
        self.teacher_id = teacher_id
        cfg = getattr(self.body, "pretrained_cfg", None) or {}
        self.register_buffer("mean", torch.tensor(cfg.get("mean", IMAGENET_MEAN)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", IMAGENET_STD)).view(1, 3, 1, 1), persistent=False)
        self.feature_channels = [int(c) for c in self.body.feature_info.channels()]
        self.feature_strides = [float(r * self.input_scale) for r in self.body.feature_info.reduction()]
        self._build_kwargs = {
            "timm_name": timm_name, "out_indices": [int(i) for i in out_indices], "input_scale": self.input_scale,
            "weights": None if weights is None else str(weights), "teacher_id": teacher_id,
        }

    def features(self, image: torch.Tensor) -> List[torch.Tensor]:
        x = (image - self.mean) / self.std
        if self.input_scale > 1:
            x = F.avg_pool2d(x, self.input_scale, self.input_scale, ceil_mode=True, count_include_pad=False)
        return list(self.body(x))


def _conv_factory(name: str, **defaults):  # type: ignore[no-untyped-def]
    @DEPTH_MODELS.register(name)
    def build(weights: Optional[str] = None, **kwargs) -> ConvStudent:  # type: ignore[no-untyped-def]
        model = ConvStudent(**{**defaults, **kwargs})
        if weights is not None:  # an encoder-only file (e.g. exported from a distilled dehazer)
            state = _read_state(Path(weights).expanduser())
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise CheckpointError(f"{weights}: does not fit '{name}' ({str(exc).splitlines()[0]})") from None
        model.model_id = name
        return model

    build.__name__ = name.replace("-", "_")
    build.__doc__ = f"INT8-friendly CNN student depth encoder, {defaults}."
    return build


student_s = _conv_factory("student-s", widths=(16, 32, 64, 128), blocks=(1, 1, 2, 2))
student_m = _conv_factory("student-m", widths=(32, 48, 96, 160), blocks=(1, 2, 2, 2))


@DEPTH_MODELS.register("student-timm")
def student_timm(**kwargs) -> TimmStudent:  # type: ignore[no-untyped-def]
    """A timm backbone as the student encoder (``timm_name=...``; local ``weights`` only)."""
    model = TimmStudent(**kwargs)
    model.model_id = "student-timm"
    return model


STUDENTS = ("student-s", "student-m", "student-timm")
