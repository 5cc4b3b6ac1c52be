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
  it is removed (those weights are absent from the file, and parameter counts
  are the release's);
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

from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from edgehaze.errors import CheckpointError
from edgehaze.models.depth import dav2_convert
from edgehaze.models.depth.dav2 import DinoDptTeacher, TeacherRelease, teacher_factory
from edgehaze.models.registries import DEPTH_MODELS

#: official final-norm eps (``nn.LayerNorm`` default); blocks use 1e-6
FINAL_NORM_EPS = 1e-5
#: official ``compute_sky_mask`` threshold: sky where the sky output >= this
SKY_THRESHOLD = 0.3
_HF = "https://huggingface.co/depth-anything/{}"


_RELEASES = {
    "da3-mono-l": TeacherRelease("da3-mono-l", "vitl", "Apache-2.0",
                                 f"model.safetensors (+ config.json) of {_HF.format('DA3MONO-LARGE')}"),
    "da3-metric-l": TeacherRelease("da3-metric-l", "vitl", "Apache-2.0",
                                   f"model.safetensors (+ config.json) of {_HF.format('DA3METRIC-LARGE')}"),
    "da3-tiny": TeacherRelease("da3-tiny", "tiny", "none (random init)", "(none: random init)"),
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


def adjust_to_release(model: nn.Module) -> None:
    """Where a DA3 release departs from transformers' DAv2 network, for every DA3 size.

    The final backbone LayerNorm has eps 1e-5 (``nn.LayerNorm``'s default);
    the coarsest refinenet has no first residual unit (transformers builds one
    it never calls) and there is no mask token (masked training only): both
    are dropped, so parameter counts are the release's.
    """
    model.backbone.layernorm.eps = FINAL_NORM_EPS
    model.neck.fusion_stage.layers[0].residual_layer1 = None
    model.backbone.embeddings.mask_token = None


def state_mismatch(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> str:
    """What keeps ``state`` from loading strictly into a module whose state is ``own``
    ('' when keys and shapes all match), short enough for a one-line error."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = [k for k in own if k in state and own[k].shape != state[k].shape]
    if not (missing or unexpected or bad):
        return ""
    detail = f", shape of {bad[0]} {tuple(state[bad[0]].shape)} vs {tuple(own[bad[0]].shape)}" if bad else ""
    return f"missing {missing[:3]}, unexpected {unexpected[:3]}{detail}"


def _sky_head(features: int) -> nn.Sequential:
    """The official sky branch: conv3x3(features/2 -> 32), ReLU, conv1x1(32 -> 1), ReLU."""
    return nn.Sequential(nn.Conv2d(features // 2, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 1, 1), nn.ReLU())


class Da3MonoTeacher(DinoDptTeacher):
    """A frozen DA3 monocular network with the DAv2 teacher interface.

    The frame (build, preprocessing, position embeddings, neck features) is
    :class:`~edgehaze.models.depth.dav2.DinoDptTeacher`, shared with DAv2.
    ``features`` are the DPT neck's four fusion outputs, finest first (same
    shapes as ``DepthAnythingTeacher`` for the same size, so fusion blocks and
    students are unchanged); ``depth`` is relative inverse depth, larger =
    nearer, 0 on sky. ``arch`` overrides the size (tests only).
    """

    releases = _RELEASES
    tiny_id = "da3-tiny"
    family = "DA3"

    def _add_modules(self) -> None:
        self.sky_head = _sky_head(self.spec.features)

    def _adjust(self) -> None:
        adjust_to_release(self.model)

    # -- weights --------------------------------------------------------------
    def _load(self, path: Path) -> None:
        where = _RELEASES[self.model_id].where
        state = read_official_state(path)
        try:
            dav2_state, sky_state = split_official_state(state)
            hf_state = dav2_convert.official_to_transformers(dav2_state)
        except ValueError as exc:
            raise CheckpointError(f"{path}: not a Depth Anything 3 monocular checkpoint ({exc}); pass {where}") from None
        hf_state.pop("backbone.embeddings.mask_token", None)  # not in the release; dropped if a file has one
        differs = (state_mismatch(self.model.state_dict(), hf_state)
                   or state_mismatch(self.sky_head.state_dict(), sky_state))
        if differs:
            raise CheckpointError(f"{path}: does not match depth model '{self.model_id}' "
                                  f"(a {self.spec.name} DA3 mono: {differs}); pass {where}")
        self.model.load_state_dict(hf_state, strict=True)
        self.sky_head.load_state_dict(sky_state, strict=True)

    # -- outputs --------------------------------------------------------------
    def depth_and_sky(self, pixel_values: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The official outputs at the network-input size: depth (``exp``, larger =
        farther) and the sky map, each ``B x h x w``."""
        x = self.head_trunk(pixel_values)
        head = self.model.head
        depth = torch.exp(head.conv3(head.activation1(head.conv2(x))))
        return depth.squeeze(1), self.sky_head(x).squeeze(1)

    def depth_from_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Relative inverse depth (larger = nearer) at the network-input size, 0 on sky."""
        depth, sky = self.depth_and_sky(pixel_values)
        return torch.where(sky >= SKY_THRESHOLD, torch.zeros_like(depth), 1.0 / depth)


for _mid in ("da3-mono-l", "da3-metric-l"):
    DEPTH_MODELS.register(_mid)(teacher_factory(Da3MonoTeacher, _mid))


@DEPTH_MODELS.register("da3-tiny")
def da3_tiny(weights: Optional[str] = None, input_size: int = 518, seed: int = 0,
             random_init: bool = False) -> Da3MonoTeacher:
    """A random, seeded, tiny DA3-mono-architecture teacher (exp head + sky branch), for tests."""
    return Da3MonoTeacher("da3-tiny", weights=weights, input_size=input_size, seed=seed, random_init=random_init)


__all__ = ("Da3MonoTeacher", "adjust_to_release", "read_official_state", "split_official_state", "state_mismatch")
