"""Depth Anything 3 DA3-Small / DA3-Base as monocular teachers (Apache-2.0).

DA3-Small and DA3-Base are the "any-view" DA3 models: one network for one or
many views, here run on one view (no camera input, no pose output). Facts from
the official code (github.com/ByteDance-Seed/Depth-Anything-3,
``configs/da3-{small,base}.yaml``, ``model/dinov2/vision_transformer.py``,
``model/dinov2/layers/{attention,rope}.py``, ``model/dualdpt.py``,
``model/utils/head_utils.py``):

=====  ========  ======  =====  ==========  ========  ==================
id     encoder   hidden  depth  blocks      features  out_channels
=====  ========  ======  =====  ==========  ========  ==================
da3-s  ViT-S/14  384     12     5, 7, 9, 11  64       48, 96, 192, 384
da3-b  ViT-B/14  768     12     5, 7, 9, 11  128      96, 192, 384, 768
=====  ========  ======  =====  ==========  ========  ==================

From block 4 on (``alt_start = qknorm_start = rope_start = 4``) the encoder
departs from DINOv2:

* **QK-norm**: a LayerNorm over each head's queries and keys (eps 1e-5);
* **2-D RoPE** (base 100): the first half of each head's channels rotates
  with the token's row, the second half with its column. Blocks alternate
  between "local" (even: per view) and "global" (odd: across views)
  attention; with one view both attend over the same tokens, but local
  blocks place patch (r, c) at (r + 1, c + 1) while global blocks place every
  patch at (1, 1); the class token sits at (0, 0) in both;
* a **camera token** replaces the class token before block 4 (the
  reference-view row of ``camera_token``; the second row is for other views).

Each tapped (odd, global) block gives ``[local, LayerNorm(x)]``: the last
local block's tokens, un-normed, concatenated with the tapped block's normed
tokens, so the head reads ``2 x hidden`` channels. The head (``DualDPT``) is
DAv2's DPT with: a LayerNorm over those tokens first; a sinusoidal UV
position embedding (x 0.1) added after each projection and again after the
final upsampling; two output channels, depth (``exp``, larger = farther) and
confidence (``exp + 1``); no sky branch. Its second ("ray") fusion chain and
the camera encoder/decoder serve pose and are not built; their tensors in the
release are skipped.

The network is transformers' ``DepthAnythingForDepthEstimation`` (through
:class:`~edgehaze.models.depth.dav2.DinoDptTeacher`, with DA3's
:func:`~edgehaze.models.depth.da3.adjust_to_release`), its attention subclassed
for QK-norm and RoPE, its blocks driven by :meth:`Da3AnyViewTeacher.tokens`.
``depth`` is relative inverse depth (``1 / depth``, larger = nearer);
``features`` are the main fusion chain's four outputs, finest first,
``features`` channels each.

Preprocessing is the frame's (DAv2's rule: shorter side to ``input_size``,
518 by default, bicubic). The official API's default differs (longer side to
504 with OpenCV on the uint8 image, then each side to a multiple of 14); pass
``input_size`` to move closer to it. Fidelity is checked on the network's
normalised input, where the two agree to float precision.

Files: the release's ``model.safetensors`` (keys ``model.backbone.pretrained.*``,
``model.head.*``, ``model.cam_enc.*``, ``model.cam_dec.*``) or its folder
(whose ``config.json`` names the size). Nothing is downloaded.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from edgehaze.errors import CheckpointError
from edgehaze.models.depth import dav2_convert
from edgehaze.models.depth.da3 import adjust_to_release, read_official_state, split_official_state, state_mismatch
from edgehaze.models.depth.dav2 import PATCH, Dav2Arch, DinoDptTeacher, TeacherRelease, build_config, teacher_factory
from edgehaze.models.registries import DEPTH_MODELS

#: RoPE frequency base (official ``rope_freq``)
ROPE_BASE = 100.0
#: UV position embedding: frequency base and the factor it is added with
UV_BASE = 100.0
UV_RATIO = 0.1
#: LayerNorm eps of QK-norm and of the head's token norm (``nn.LayerNorm`` default)
NORM_EPS = 1e-5
_HF = "https://huggingface.co/depth-anything/{}"


@dataclass(frozen=True)
class Da3Arch(Dav2Arch):
    """One DA3 any-view size: DAv2's fields plus the first block with QK-norm,
    RoPE, alternating attention and the camera token (all the same block in
    the released configs)."""

    alt_start: int = 4


ARCHS = {
    "vits": Da3Arch("vits", 384, 12, 6, (5, 7, 9, 11), 64, (48, 96, 192, 384), 4),
    "vitb": Da3Arch("vitb", 768, 12, 12, (5, 7, 9, 11), 128, (96, 192, 384, 768), 4),
    # for tests only: the same structure (local and global taps), tiny
    "tiny": Da3Arch("tiny", 32, 6, 2, (2, 3, 4, 5), 16, (8, 16, 32, 32), 2),
}

_RELEASES = {
    "da3-s": TeacherRelease("da3-s", "vits", "Apache-2.0",
                            f"model.safetensors (+ config.json) of {_HF.format('DA3-SMALL')}"),
    "da3-b": TeacherRelease("da3-b", "vitb", "Apache-2.0",
                            f"model.safetensors (+ config.json) of {_HF.format('DA3-BASE')}"),
    "da3-s-tiny": TeacherRelease("da3-s-tiny", "tiny", "none (random init)", "(none: random init)"),
}
#: ``model_name`` in each release's config.json (the official config names)
_CONFIG_NAMES = {"da3-s": "da3-small", "da3-b": "da3-base"}


# -- RoPE and the UV embedding ----------------------------------------------------
def token_positions(rows: int, cols: int, spread: bool, device: torch.device) -> torch.Tensor:
    """``(1 + rows*cols) x 2`` integer (row, col) RoPE positions: the class token at
    (0, 0), then the patches in raster order at (r + 1, c + 1) when ``spread``
    (local blocks) or all at (1, 1) (global blocks)."""
    r, c = torch.arange(rows, device=device), torch.arange(cols, device=device)
    grid = torch.stack(torch.meshgrid(r, c, indexing="ij"), dim=-1).reshape(-1, 2)
    grid = grid + 1 if spread else torch.ones_like(grid)
    return torch.cat([torch.zeros_like(grid[:1]), grid])


def rope_tables(positions: torch.Tensor, head_dim: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (``N x head_dim``) of the 2-D RoPE: the first half of the head's
    channels turns with the row, the second with the column, each half as 1-D
    RoPE (frequencies ``ROPE_BASE ** (-2i / half)``, angles repeated twice)."""
    half = head_dim // 2
    inv_freq = 1.0 / ROPE_BASE ** (torch.arange(0, half, 2, device=positions.device).float() / half)
    angles = [positions[:, axis, None].float() * inv_freq for axis in (0, 1)]
    angles = torch.cat([torch.cat((a, a), dim=-1) for a in angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``B x heads x N x head_dim`` queries or keys, each half of the channels on its own."""
    from transformers.models.llama.modeling_llama import rotate_half

    halves = zip(x.chunk(2, dim=-1), cos.chunk(2, dim=-1), sin.chunk(2, dim=-1))
    return torch.cat([t * c + rotate_half(t) * s for t, c, s in halves], dim=-1)


def _sincos(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """``len(pos) x dim`` sinusoidal embedding: sines then cosines of ``pos * UV_BASE ** (-i / (dim/2))``."""
    omega = torch.arange(dim // 2, dtype=torch.float32, device=pos.device) / (dim / 2.0)
    angles = pos[:, None] * (1.0 / UV_BASE ** omega)[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def add_uv_embedding(x: torch.Tensor, aspect: float) -> torch.Tensor:
    """``x`` (``B x C x h x w``) plus ``UV_RATIO`` times the head's UV position embedding.

    UV spans the image's aspect (``aspect`` = width / height) normalised by its
    diagonal, at pixel centres; the first ``C/2`` channels embed u, the rest v.
    """
    channels, h, w = x.shape[1], x.shape[-2], x.shape[-1]
    diag = (aspect ** 2 + 1.0) ** 0.5
    span_u, span_v = aspect / diag, 1.0 / diag
    u = torch.linspace(-span_u * (w - 1) / w, span_u * (w - 1) / w, w, dtype=x.dtype, device=x.device)
    v = torch.linspace(-span_v * (h - 1) / h, span_v * (h - 1) / h, h, dtype=x.dtype, device=x.device)
    emb_u = _sincos(u, channels // 2)[None].expand(h, w, -1)
    emb_v = _sincos(v, channels // 2)[:, None].expand(h, w, -1)
    pe = torch.cat([emb_u, emb_v], dim=-1) * UV_RATIO
    return x + pe.permute(2, 0, 1)[None].to(x.dtype)


@functools.lru_cache(maxsize=None)
def _attention_class():  # type: ignore[no-untyped-def]
    """transformers' DINOv2 attention with DA3's QK-norm and 2-D RoPE (built on first use)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.dinov2.modeling_dinov2 import Dinov2Attention, eager_attention_forward

    class Da3Attention(Dinov2Attention):
        """Queries and keys LayerNorm'd per head, then rotated by ``rope`` (cos, sin) when given."""

        def __init__(self, config) -> None:  # type: ignore[no-untyped-def]
            super().__init__(config)
            self.q_norm = nn.LayerNorm(self.head_dim, eps=NORM_EPS)
            self.k_norm = nn.LayerNorm(self.head_dim, eps=NORM_EPS)

        def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                    rope: Optional[Tuple[torch.Tensor, torch.Tensor]] = None, **kwargs):  # type: ignore[no-untyped-def]
            shape = (*hidden_states.shape[:-1], -1, self.head_dim)
            q = self.q_norm(self.q_proj(hidden_states).view(shape).transpose(1, 2))
            k = self.k_norm(self.k_proj(hidden_states).view(shape).transpose(1, 2))
            v = self.v_proj(hidden_states).view(shape).transpose(1, 2)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
            out, weights = attend(self, q, k, v, attention_mask, dropout=0.0, scaling=self.scaling, **kwargs)
            return self.o_proj(out.reshape(*hidden_states.shape[:-1], -1).contiguous()), weights

    Da3Attention.__module__, Da3Attention.__qualname__ = __name__, "Da3Attention"
    return Da3Attention


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    """``Da3Attention`` as a module attribute (built on first use, so importing this
    module does not import transformers; pickle finds the class by this name)."""
    if name == "Da3Attention":
        return _attention_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- the release file -----------------------------------------------------------------
#: release tensors the monocular depth path does not use: the camera encoder and
#: decoder (pose in / out) and the head's second ("ray") fusion chain and outputs
_UNUSED = re.compile(r"^(cam_enc|cam_dec)\.|^head\.scratch\.(refinenet\d_aux|output_conv1_aux|output_conv2_aux)\.")
_QK_NORM = re.compile(r"^backbone\.pretrained\.blocks\.(\d+)\.attn\.([qk])_norm\.(weight|bias)$")


def release_to_transformers(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """DA3-Small/Base release keys (``model.`` dropped) -> our module's state dict.

    The DINOv2/DPT part goes through DAv2's renaming
    (:func:`~edgehaze.models.depth.dav2_convert.official_to_transformers`); QK-norms go
    to ``...attention.{q,k}_norm``, ``camera_token`` to ``backbone.camera_token``,
    the head's token norm to ``neck.token_norm``; pose-only tensors are dropped.
    Raises ``ValueError`` on a key of neither kind (or a sky branch: a DA3 mono file).
    """
    ours: Dict[str, torch.Tensor] = {}
    rest: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = _QK_NORM.match(key)
        if _UNUSED.match(key):
            continue
        if match:
            ours["backbone.encoder.layer.{}.attention.{}_norm.{}".format(*match.groups())] = value
        elif key == "backbone.pretrained.camera_token":
            ours["backbone.camera_token"] = value
        elif key.startswith("head.norm."):
            ours["neck.token_norm." + key[len("head.norm."):]] = value
        else:
            rest[key] = value
    dav2_state, sky = split_official_state(rest)
    if sky:
        raise ValueError("it has a sky branch, as DA3 monocular files do (depth models da3-mono-l / da3-metric-l)")
    ours.update(dav2_convert.official_to_transformers(dav2_state))
    return ours


def _check_config_name(path: Path, model_id: str, where: str) -> None:
    """A release folder's ``config.json`` names its model; refuse another DA3 model's folder."""
    config = path / "config.json" if path.is_dir() else path.parent / "config.json"
    try:
        name = json.loads(config.read_text()).get("model_name")
    except (OSError, ValueError, AttributeError):
        return  # no (readable) config: the tensors decide
    want = _CONFIG_NAMES.get(model_id)
    if want and isinstance(name, str) and name.startswith("da3") and name != want:
        raise CheckpointError(f"{config}: a '{name}' release, but depth model '{model_id}' is '{want}'; pass {where}")


# -- the teacher ------------------------------------------------------------------------
class Da3AnyViewTeacher(DinoDptTeacher):
    """A frozen DA3-Small/Base network, run on one view, with the DAv2 teacher interface.

    The frame (build, preprocessing, official position-embedding resize) is
    :class:`~edgehaze.models.depth.dav2.DinoDptTeacher`; this class adds what
    transformers lacks (module doc). ``features`` are the main fusion chain's
    outputs, finest first (strides 1.75, 3.5, 7, 14; ``features`` channels);
    ``depth`` is relative inverse depth, larger = nearer (the model has no sky
    output). ``arch`` overrides the size (tests only).
    """

    releases = _RELEASES
    archs = ARCHS
    tiny_id = "da3-s-tiny"
    family = "DA3-Small/Base"

    def _config(self):  # type: ignore[no-untyped-def]
        config = build_config(self.spec)
        config.reassemble_hidden_size = 2 * self.spec.hidden_size  # [local, normed] tokens
        return config

    def _add_modules(self) -> None:
        backbone, hidden = self.model.backbone, self.spec.hidden_size
        attention = _attention_class()
        for layer in backbone.encoder.layer[self.spec.alt_start:]:
            layer.attention = attention(backbone.config)
        backbone.camera_token = nn.Parameter(torch.randn(1, 2, hidden))  # reference view, other views
        self.model.neck.token_norm = nn.LayerNorm(2 * hidden, eps=NORM_EPS)
        head = self.model.head
        head.conv3 = nn.Conv2d(head.conv3.in_channels, 2, kernel_size=1)  # depth, confidence

    def _adjust(self) -> None:
        adjust_to_release(self.model)

    def _load(self, path: Path) -> None:
        where = self.releases[self.model_id].where
        _check_config_name(path, self.model_id, where)
        try:
            state = release_to_transformers(read_official_state(path))
        except ValueError as exc:
            raise CheckpointError(f"{path}: not a DA3-Small/Base checkpoint ({exc}); pass {where}") from None
        state.pop("backbone.embeddings.mask_token", None)
        differs = state_mismatch(self.model.state_dict(), state)
        if differs:
            raise CheckpointError(f"{path}: does not match depth model '{self.model_id}' "
                                  f"(a {self.spec.name} DA3 any-view model: {differs}); pass {where}")
        self.model.load_state_dict(state, strict=True)

    # -- forward ----------------------------------------------------------------------
    def tokens(self, pixel_values: torch.Tensor) -> List[torch.Tensor]:
        """The four tapped ``B x rows*cols x 2C`` token maps ``[local, LayerNorm(x)]`` (module doc)."""
        backbone, spec = self.model.backbone, self.spec
        rows, cols = pixel_values.shape[-2] // PATCH, pixel_values.shape[-1] // PATCH
        head_dim = spec.hidden_size // spec.num_heads
        ropes = [rope_tables(token_positions(rows, cols, spread, pixel_values.device), head_dim)
                 for spread in (True, False)]  # local, global
        x = backbone.embeddings(pixel_values)
        local, taps = x, []
        for i, layer in enumerate(backbone.encoder.layer):
            is_global = i >= spec.alt_start and i % 2 == 1
            if i == spec.alt_start:
                camera = backbone.camera_token[:, :1].expand(x.shape[0], -1, -1).to(x.dtype)
                x = torch.cat([camera, x[:, 1:]], dim=1)
            x = layer(x) if i < spec.alt_start else layer(x, rope=ropes[is_global])
            if not is_global:
                local = x
            if i in spec.out_layers:
                taps.append(torch.cat([local, backbone.layernorm(x)], dim=-1)[:, 1:])
        return taps

    def neck_features(self, pixel_values: torch.Tensor) -> List[torch.Tensor]:
        """The main fusion chain's outputs for a normalised network input, finest first.

        Sides should be multiples of 14 (as ``preprocess`` makes them).
        """
        neck = self.model.neck
        rows, cols = pixel_values.shape[-2] // PATCH, pixel_values.shape[-1] // PATCH
        aspect = pixel_values.shape[-1] / pixel_values.shape[-2]
        maps = []
        for i, tokens in enumerate(self.tokens(pixel_values)):
            x = neck.token_norm(tokens)
            x = x.reshape(x.shape[0], rows, cols, -1).permute(0, 3, 1, 2).contiguous()
            layer = neck.reassemble_stage.layers[i]
            x = layer.resize(add_uv_embedding(layer.projection(x), aspect))
            maps.append(neck.convs[i](x))
        return list(neck.fusion_stage(maps)[::-1])

    def head_trunk(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """DAv2's trunk (first conv, upsampled to the patch grid's pixels) plus the UV embedding."""
        aspect = pixel_values.shape[-1] / pixel_values.shape[-2]
        return add_uv_embedding(super().head_trunk(pixel_values), aspect)

    def depth_and_confidence(self, pixel_values: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The official outputs at the network-input size, each ``B x h x w``: depth
        (``exp``, larger = farther) and confidence (``exp + 1``)."""
        head = self.model.head
        logits = head.conv3(head.activation1(head.conv2(self.head_trunk(pixel_values))))
        return torch.exp(logits[:, 0]), torch.exp(logits[:, 1]) + 1

    def depth_from_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Relative inverse depth (larger = nearer) at the network-input size."""
        return 1.0 / self.depth_and_confidence(pixel_values)[0]


for _mid in ("da3-s", "da3-b"):
    DEPTH_MODELS.register(_mid)(teacher_factory(Da3AnyViewTeacher, _mid))


@DEPTH_MODELS.register("da3-s-tiny")
def da3_s_tiny(weights: Optional[str] = None, input_size: int = 518, seed: int = 0,
               random_init: bool = False) -> Da3AnyViewTeacher:
    """A random, seeded, tiny DA3-Small-architecture teacher (QK-norm, RoPE, camera token, UV head), for tests."""
    return Da3AnyViewTeacher("da3-s-tiny", weights=weights, input_size=input_size, seed=seed, random_init=random_init)


__all__ = ("ARCHS", "Da3AnyViewTeacher", "add_uv_embedding", "apply_rope", "release_to_transformers",
           "rope_tables", "token_positions")
