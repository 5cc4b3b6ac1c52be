"""Depth Anything 3 monocular teachers (DA3Mono-Large, DA3Metric-Large), Apache-2.0.

Facts from the official code (github.com/ByteDance-Seed/Depth-Anything-3,
``configs/da3mono-large.yaml``, ``model/dinov2``, ``model/dpt.py``): the
monocular models are Depth Anything V2-Large in structure -- plain DINOv2
ViT-L/14 (no QK-norm, no RoPE, no camera token, ``cat_token: False``), blocks
4, 11, 17, 23 tapped through the final LayerNorm, DAv2's DPT neck with 256
features and widths 256/512/1024/1024 -- so the network is transformers'
``DepthAnythingForDepthEstimation`` as for DAv2 (``dav2.build_config``), with
these differences handled here:

* the final backbone LayerNorm is ``nn.LayerNorm`` with its default eps 1e-5
  (the blocks' norms keep 1e-6): set on the transformers module after build;
* the head's last conv is followed by ``exp`` and predicts *depth* (larger =
  farther), not a ReLU'd inverse depth. The teacher contract is relative
  inverse depth (larger = nearer), so ``depth()`` returns ``1 / depth``;
* the coarsest refinenet has no first residual unit (``has_residual=False``);
  transformers' coarsest fusion layer never calls its ``residual_layer1``, so
  those weights are absent from the file and keep their (unused) init;
* a sky branch (``scratch.sky_output_conv2``, ReLU output; the official code
  calls ``sky < 0.3`` non-sky). We run it as our own ``sky_head`` and set
  the inverse depth to 0 (infinitely far) where it marks sky. The official
  post-processing that fills the sky with a 99th percentile of sampled
  depths uses ``torch.randint``; it is not reproduced.

Files: the release's ``model.safetensors`` (keys ``model.backbone.pretrained.*``
and ``model.head.*``) or its folder (with ``config.json``). Nothing is
downloaded. Position embeddings are resized with the official DINOv2 formula
(same as DAv2, ``dav2.use_official_pos_embedding``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from edgehaze.errors import CheckpointError, ConfigError, MissingWeightsError
from edgehaze.models.contracts import DepthProvider
from edgehaze.models.depth import dav2_convert
from edgehaze.models.depth.dav2 import (
    ARCHS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PATCH,
    _init_tiny,
    build_config,
    network_input_size,
    use_official_pos_embedding,
)
from edgehaze.models.registries import DEPTH_MODELS

#: official final-norm eps (``nn.LayerNorm`` default); blocks use 1e-6
FINAL_NORM_EPS = 1e-5
#: official ``compute_sky_mask`` threshold: sky where the sky output >= this
SKY_THRESHOLD = 0.3
_HF = "https://huggingface.co/depth-anything/{}"


@dataclass(frozen=True)
class _Da3Release:
    model_id: str
    arch: str
    license: str
    where: str


_RELEASES = {
    "da3-mono-l": _Da3Release("da3-mono-l", "vitl", "Apache-2.0",
                              f"model.safetensors (+ config.json) of {_HF.format('DA3MONO-LARGE')}"),
    "da3-metric-l": _Da3Release("da3-metric-l", "vitl", "Apache-2.0",
                                f"model.safetensors (+ config.json) of {_HF.format('DA3METRIC-LARGE')}"),
    "da3-tiny": _Da3Release("da3-tiny", "tiny", "none (random init)", "(none: random init)"),
}


def read_official_state(path: Path) -> Dict[str, torch.Tensor]:
    """The tensors of a DA3 release file (or folder), any ``model.`` prefix dropped."""
    if path.is_dir():
        path = path / "model.safetensors"
        if not path.is_file():
            raise CheckpointError(f"{path}: missing; pass the DA3 release folder or its model.safetensors (--depth-weights)")
    raw = dav2_convert.read_state_dict(path)
    return {(k[len("model."):] if k.startswith("model.") else k): v for k, v in raw.items()}


def split_official_state(state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """DA3 mono keys -> (DAv2-official-layout state, sky-head state).

    ``backbone.pretrained.*`` -> ``pretrained.*``, ``head.scratch.sky_output_conv2.*``
    -> the sky head, other ``head.*`` -> ``depth_head.*`` (DAv2's names, same
    modules). Raises ``ValueError`` on any other key.
    """
    dav2, sky = {}, {}
    for key, value in state.items():
        if key.startswith("backbone.pretrained."):
            dav2["pretrained." + key[len("backbone.pretrained."):]] = value
        elif key.startswith("head.scratch.sky_output_conv2."):
            sky[key[len("head.scratch.sky_output_conv2."):]] = value
        elif key.startswith("head."):
            dav2["depth_head." + key[len("head."):]] = value
        else:
            raise ValueError(f"unexpected key {key!r} (a DA3 monocular file has backbone.pretrained.* and head.*)")
    return dav2, sky


def _sky_head(features: int) -> nn.Sequential:
    """The official sky branch: conv3x3(features/2 -> 32), ReLU, conv1x1(32 -> 1), ReLU."""
    return nn.Sequential(nn.Conv2d(features // 2, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 1, 1), nn.ReLU())


class Da3MonoTeacher(DepthProvider):
    """A frozen DA3 monocular network with the DAv2 teacher interface.

    ``features`` are the DPT neck's four fusion outputs, finest first (as
    ``DepthAnythingTeacher``: same shapes for the same size, so fusion blocks
    and students are unchanged); ``depth`` is relative inverse depth, larger =
    nearer, 0 on sky. ``arch`` overrides the size (tests only).
    """

    trainable = False

    def __init__(self, model_id: str, weights: Optional[str | os.PathLike] = None, input_size: int = 518,
                 seed: int = 0, random_init: bool = False, arch: Optional[str] = None) -> None:
        super().__init__()
        if model_id not in _RELEASES:
            raise ConfigError(f"unknown DA3 teacher '{model_id}'; known: {', '.join(_RELEASES)}")
        if not isinstance(input_size, int) or input_size < PATCH:
            raise ConfigError(f"depth input_size must be an integer >= {PATCH}, got {input_size!r}")
        if random_init and weights is not None:
            raise ConfigError("random_init=True and depth weights are exclusive")
        release = _RELEASES[model_id]
        self.model_id, self.license, self.input_size = model_id, release.license, input_size
        self.spec = ARCHS[arch or release.arch]
        weights_path = None if random_init else _check_weights(release, weights)
        if random_init:
            self.license = "none (random init, cost measurements only)"
        from transformers import DepthAnythingForDepthEstimation
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.model = DepthAnythingForDepthEstimation(build_config(self.spec))
                self.sky_head = _sky_head(self.spec.features)
                if self.spec.name == "tiny":
                    _init_tiny(self.model)
        finally:
            hf_logging.set_verbosity(verbosity)
        self.model.backbone.layernorm.eps = FINAL_NORM_EPS
        if weights_path is not None:
            self._load(weights_path)
        use_official_pos_embedding(self.model)
        self.feature_channels = [self.spec.features] * 4
        self.feature_strides = [PATCH / 8, PATCH / 4, PATCH / 2, float(PATCH)]
        self._build_kwargs = {"weights": None if weights is None else str(weights), "input_size": input_size}
        if random_init:
            self._build_kwargs["random_init"] = True
        if release.arch == "tiny":
            self._build_kwargs["seed"] = seed
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "Da3MonoTeacher":
        """Stay in eval mode whatever is asked: the teacher is frozen."""
        return super().train(False)

    # -- weights --------------------------------------------------------------
    def _load(self, path: Path) -> None:
        where = _RELEASES[self.model_id].where
        state = read_official_state(path)
        try:
            dav2_state, sky_state = split_official_state(state)
            hf_state = dav2_convert.official_to_transformers(dav2_state)
        except ValueError as exc:
            raise CheckpointError(f"{path}: not a Depth Anything 3 monocular checkpoint ({exc}); pass {where}") from None
        own = self.model.state_dict()
        for key in own:  # the unused residual unit of the coarsest refinenet, mask token
            if ".fusion_stage.layers.0.residual_layer1." in key or key.endswith("mask_token"):
                hf_state.setdefault(key, own[key])
        missing = sorted(set(own) - set(hf_state))
        unexpected = sorted(set(hf_state) - set(own))
        bad = [k for k in own if k in hf_state and own[k].shape != hf_state[k].shape]
        if missing or unexpected or bad or set(sky_state) != set(self.sky_head.state_dict()):
            detail = bad[:1] and f"shape of {bad[0]} {tuple(hf_state[bad[0]].shape)} vs {tuple(own[bad[0]].shape)}"
            raise CheckpointError(
                f"{path}: does not match depth model '{self.model_id}' (a {self.spec.name} DA3 mono: "
                f"missing {missing[:3]}, unexpected {unexpected[:3]} {detail or ''}); pass {where}")
        self.model.load_state_dict(hf_state, strict=True)
        self.sky_head.load_state_dict(sky_state, strict=True)

    # -- pipeline -------------------------------------------------------------
    def preprocess(self, image01: torch.Tensor) -> torch.Tensor:
        """Resize (DAv2 ``image2tensor`` rule to ``input_size``, bicubic) and normalise."""
        if image01.dim() != 4 or image01.shape[1] != 3:
            raise ValueError(f"expected an RGB batch B x 3 x H x W, got shape {tuple(image01.shape)}")
        h, w = network_input_size(int(image01.shape[-2]), int(image01.shape[-1]), self.input_size)
        x = image01.to(self.mean.dtype)
        if (h, w) != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=False)
        return (x - self.mean) / self.std

    def neck_features(self, pixel_values: torch.Tensor) -> List[torch.Tensor]:
        """DPT fusion-stage outputs for a normalised input, finest first."""
        maps = self.model.backbone(pixel_values).feature_maps
        fused = self.model.neck(list(maps), pixel_values.shape[-2] // PATCH, pixel_values.shape[-1] // PATCH)
        return list(fused[::-1])

    def depth_and_sky(self, pixel_values: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The official outputs at the network-input size: depth (``exp``, larger =
        farther) and the sky map, each ``B x h x w``."""
        finest = self.neck_features(pixel_values)[0]
        head = self.model.head
        x = head.conv1(finest)
        size = (pixel_values.shape[-2] // PATCH * PATCH, pixel_values.shape[-1] // PATCH * PATCH)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        depth = torch.exp(head.conv3(head.activation1(head.conv2(x))))
        return depth.squeeze(1), self.sky_head(x).squeeze(1)

    def depth_from_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Relative inverse depth (larger = nearer) at the network-input size, 0 on sky."""
        depth, sky = self.depth_and_sky(pixel_values)
        return torch.where(sky >= SKY_THRESHOLD, torch.zeros_like(depth), 1.0 / depth)

    @torch.no_grad()
    def features(self, image01: torch.Tensor) -> List[torch.Tensor]:
        return self.neck_features(self.preprocess(image01))

    @torch.no_grad()
    def depth(self, image01: torch.Tensor) -> torch.Tensor:
        """Relative inverse depth (larger = nearer, 0 on sky), ``B x H x W`` like the input."""
        d = self.depth_from_pixels(self.preprocess(image01))
        d = F.interpolate(d[:, None], size=tuple(image01.shape[-2:]), mode="bilinear", align_corners=True)
        return d[:, 0]


def _check_weights(release: _Da3Release, weights) -> Optional[Path]:
    if weights is None:
        if release.arch == "tiny":
            return None
        raise MissingWeightsError(
            f"depth teacher '{release.model_id}' needs its pretrained weights and nothing is downloaded: "
            f"pass --depth-weights PATH with {release.where} (saved locally); "
            "for a random-initialised test teacher use the depth model 'da3-tiny'")
    path = Path(weights).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder (--depth-weights); pass the local path of {release.where}")
    return path


def _factory(model_id: str):
    def build(weights: Optional[str] = None, input_size: int = 518, random_init: bool = False) -> Da3MonoTeacher:
        return Da3MonoTeacher(model_id, weights=weights, input_size=input_size, random_init=random_init)

    build.__name__ = model_id.replace("-", "_")
    build.__doc__ = f"Frozen {model_id} teacher ({_RELEASES[model_id].license}); weights: {_RELEASES[model_id].where}."
    return build


for _mid in ("da3-mono-l", "da3-metric-l"):
    DEPTH_MODELS.register(_mid)(_factory(_mid))


@DEPTH_MODELS.register("da3-tiny")
def da3_tiny(weights: Optional[str] = None, input_size: int = 518, seed: int = 0) -> Da3MonoTeacher:
    """A random, seeded, tiny DA3-mono-architecture teacher (exp head + sky branch), for tests."""
    return Da3MonoTeacher("da3-tiny", weights=weights, input_size=input_size, seed=seed)


__all__ = ("Da3MonoTeacher", "read_official_state", "split_official_state")
