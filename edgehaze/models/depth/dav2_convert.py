"""Reading Depth Anything V2 weight files and renaming them for transformers.

Three layouts exist in the wild for the same network:

* **official** (``depth_anything_v2_vit{s,b,l}.pth`` from the
  depth-anything/Depth-Anything-V2-* repos, and Distill-Any-Depth small/base
  ``model.safetensors``): ``pretrained.*`` for the DINOv2 encoder with a fused
  ``attn.qkv`` and LayerScale ``ls1.gamma``, ``depth_head.*`` for the DPT head.
* **dad-large** (Distill-Any-Depth large ``model.safetensors``): the same
  tensors, but the encoder is prefixed ``backbone.`` and its blocks sit in one
  "block chunk" (``backbone.blocks.0.<i>.*``); ``mask_token`` may be absent.
* **transformers** (``DepthAnythingForDepthEstimation`` ``state_dict`` /
  ``model.safetensors`` from a Hugging Face folder): ``backbone.embeddings.*``,
  ``backbone.encoder.layer.<i>.attention.{q,k,v,o}_proj``, ``neck.*``,
  ``head.*``.

The renaming is a fixed table (facts from the official code and transformers'
module names); the q/k/v split follows the official attention, which reshapes
the fused projection as ``(3, heads, head_dim)``: rows ``[0, C)`` are the
queries, ``[C, 2C)`` the keys, ``[2C, 3C)`` the values.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, Mapping

import torch

from edgehaze.errors import CheckpointError

StateDict = Dict[str, torch.Tensor]

OFFICIAL = "official"
DAD_LARGE = "dad-large"
TRANSFORMERS = "transformers"

# official per-block name -> transformers per-block name (qkv handled apart)
_BLOCK_RENAMES = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "attn.proj.weight": "attention.o_proj.weight",
    "attn.proj.bias": "attention.o_proj.bias",
    "ls1.gamma": "layer_scale1.lambda1",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "ls2.gamma": "layer_scale2.lambda1",
}

# official encoder top-level name (without its prefix) -> transformers name
_ENCODER_RENAMES = {
    "cls_token": "backbone.embeddings.cls_token",
    "mask_token": "backbone.embeddings.mask_token",
    "pos_embed": "backbone.embeddings.position_embeddings",
    "patch_embed.proj.weight": "backbone.embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "backbone.embeddings.patch_embeddings.projection.bias",
    "norm.weight": "backbone.layernorm.weight",
    "norm.bias": "backbone.layernorm.bias",
}

# the DPT fusion blocks count from the finest (refinenet1) in the official
# code and from the coarsest (fusion_stage.layers.0) in transformers
_REFINENET_TO_FUSION_LAYER = {1: 3, 2: 2, 3: 1, 4: 0}
_FUSION_UNIT_RENAMES = {
    "out_conv": "projection",
    "resConfUnit1.conv1": "residual_layer1.convolution1",
    "resConfUnit1.conv2": "residual_layer1.convolution2",
    "resConfUnit2.conv1": "residual_layer2.convolution1",
    "resConfUnit2.conv2": "residual_layer2.convolution2",
}


# transformers < 5 (and its save_pretrained, which still writes them) name the
# DINOv2 attention projections like this
_LEGACY_ATTENTION = (
    ("attention.attention.query.", "attention.q_proj."),
    ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
)


def _current_transformers_name(key: str) -> str:
    for old, new in _LEGACY_ATTENTION:
        if old in key:
            return key.replace(old, new)
    return key


def _head_renames() -> Dict[str, str]:
    """Fixed official -> transformers names of the DPT head (``depth_head.*``)."""
    table: Dict[str, str] = {}
    for i in range(4):
        for p in ("weight", "bias"):
            table[f"depth_head.projects.{i}.{p}"] = f"neck.reassemble_stage.layers.{i}.projection.{p}"
            if i != 2:  # the third reassemble layer keeps the patch grid (Identity)
                table[f"depth_head.resize_layers.{i}.{p}"] = f"neck.reassemble_stage.layers.{i}.resize.{p}"
        table[f"depth_head.scratch.layer{i + 1}_rn.weight"] = f"neck.convs.{i}.weight"
    for ref, layer in _REFINENET_TO_FUSION_LAYER.items():
        for old, new in _FUSION_UNIT_RENAMES.items():
            for p in ("weight", "bias"):
                table[f"depth_head.scratch.refinenet{ref}.{old}.{p}"] = (
                    f"neck.fusion_stage.layers.{layer}.{new}.{p}"
                )
    for p in ("weight", "bias"):
        table[f"depth_head.scratch.output_conv1.{p}"] = f"head.conv1.{p}"
        table[f"depth_head.scratch.output_conv2.0.{p}"] = f"head.conv2.{p}"
        table[f"depth_head.scratch.output_conv2.2.{p}"] = f"head.conv3.{p}"
    return table


_HEAD_RENAMES = _head_renames()
_HEAD_RENAMES_INV = {v: k for k, v in _HEAD_RENAMES.items()}
_BLOCK_RENAMES_INV = {v: k for k, v in _BLOCK_RENAMES.items()}
_ENCODER_RENAMES_INV = {v: k for k, v in _ENCODER_RENAMES.items()}

# "<prefix>.blocks.<i>.<rest>" or chunked "<prefix>.blocks.<chunk>.<i>.<rest>"
_BLOCK_KEY = re.compile(r"^(?:pretrained|backbone)\.blocks\.(?:\d+\.)?(\d+)\.(.+)$")


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Name the key layout of a Depth Anything V2 state dict (see module doc).

    Raises ``ValueError`` when the keys belong to none of them.
    """
    keys = list(state_dict)
    if any(k.startswith("backbone.embeddings.") for k in keys) and any(k.startswith("neck.") for k in keys):
        return TRANSFORMERS
    has_head = any(k.startswith("depth_head.") for k in keys)
    if has_head and any(k.startswith("pretrained.blocks.") for k in keys):
        return OFFICIAL
    if has_head and any(k.startswith("backbone.blocks.") for k in keys):
        return DAD_LARGE
    raise ValueError("keys match no Depth Anything V2 layout (official 'pretrained.*'/'depth_head.*', "
                     "Distill-Any-Depth 'backbone.blocks.*', or transformers 'backbone.embeddings.*'/'neck.*')")


def official_to_transformers(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Rename an official (or Distill-Any-Depth) DAv2 state dict to transformers' names.

    Splits each fused ``attn.qkv`` into ``q_proj``/``k_proj``/``v_proj``. A
    transformers state dict passes through (legacy attention names updated).
    Raises ``ValueError`` naming the first key that has no counterpart.
    """
    layout = detect_layout(state_dict)
    if layout == TRANSFORMERS:
        return {_current_transformers_name(k): v for k, v in state_dict.items()}
    prefix = "pretrained." if layout == OFFICIAL else "backbone."
    out: StateDict = {}
    for key, value in state_dict.items():
        if key in _HEAD_RENAMES:
            out[_HEAD_RENAMES[key]] = value
            continue
        match = _BLOCK_KEY.match(key)
        if match:
            i, rest = int(match.group(1)), match.group(2)
            dst = f"backbone.encoder.layer.{i}."
            if rest in ("attn.qkv.weight", "attn.qkv.bias"):
                kind = rest.rsplit(".", 1)[1]
                if value.shape[0] % 3:
                    raise ValueError(f"{key}: first dimension {value.shape[0]} is not 3 x hidden size")
                q, k, v = value.chunk(3, dim=0)
                out[dst + f"attention.q_proj.{kind}"] = q.contiguous()
                out[dst + f"attention.k_proj.{kind}"] = k.contiguous()
                out[dst + f"attention.v_proj.{kind}"] = v.contiguous()
                continue
            if rest in _BLOCK_RENAMES:
                out[dst + _BLOCK_RENAMES[rest]] = value
                continue
        elif key.startswith(prefix) and key[len(prefix):] in _ENCODER_RENAMES:
            out[_ENCODER_RENAMES[key[len(prefix):]]] = value
            continue
        raise ValueError(f"unexpected key '{key}' (not part of Depth Anything V2 with a relative-depth DPT head)")
    return out


def transformers_to_official(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """The inverse of :func:`official_to_transformers` (fuses q/k/v back into ``attn.qkv``).

    Used to write official-layout files, e.g. in tests that check the loader.
    """
    out: StateDict = {}
    layer_key = re.compile(r"^backbone\.encoder\.layer\.(\d+)\.(.+)$")
    qkv: Dict[tuple, Dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if key in _HEAD_RENAMES_INV:
            out[_HEAD_RENAMES_INV[key]] = value
        elif key in _ENCODER_RENAMES_INV:
            out["pretrained." + _ENCODER_RENAMES_INV[key]] = value
        elif (m := layer_key.match(key)) is not None:
            i, rest = int(m.group(1)), m.group(2)
            qm = re.match(r"^attention\.([qkv])_proj\.(weight|bias)$", rest)
            if qm:
                qkv.setdefault((i, qm.group(2)), {})[qm.group(1)] = value
            elif rest in _BLOCK_RENAMES_INV:
                out[f"pretrained.blocks.{i}.{_BLOCK_RENAMES_INV[rest]}"] = value
            else:
                raise ValueError(f"unexpected key '{key}'")
        else:
            raise ValueError(f"unexpected key '{key}'")
    for (i, kind), parts in qkv.items():
        out[f"pretrained.blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def read_state_dict(path: os.PathLike | str) -> StateDict:
    """Read a weight file safely (safetensors, or ``torch.load(weights_only=True)``).

    Accepts a plain state dict or one wrapped under ``state_dict``/``model``,
    and strips a DataParallel ``module.`` prefix. Raises ``CheckpointError``
    naming the file when it cannot be read.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, unsafe pickle, not a checkpoint at all
        raise CheckpointError(
            f"{path}: cannot read it as a weight file ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "pass an intact .pth/.safetensors file or a Hugging Face model folder"
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: does not hold a state dict of tensors; pass the model's weight file")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)
