"""Depth Anything V2 (and Distill-Any-Depth) as frozen depth teachers.

The network is transformers' ``DepthAnythingForDepthEstimation`` (DINOv2 ViT
encoder + DPT neck + relative-depth head), configured exactly like the
official models (github.com/DepthAnything/Depth-Anything-V2, ``run.py`` and
``depth_anything_v2/dpt.py``):

=======  ========  ======  =====  ==============  ========  ======================
variant  encoder   hidden  depth  blocks taken    features  out_channels
=======  ========  ======  =====  ==============  ========  ======================
S        ViT-S/14  384     12     2, 5, 8, 11     64        48, 96, 192, 384
B        ViT-B/14  768     12     2, 5, 8, 11     128       96, 192, 384, 768
L        ViT-L/14  1024    24     4, 11, 17, 23   256       256, 512, 1024, 1024
=======  ========  ======  =====  ==============  ========  ======================

(blocks 0-based, each through the encoder's final LayerNorm; transformers
counts the patch embedding as stage 0, hence ``out_indices = blocks + 1``).
Distill-Any-Depth S/B/L is the same architecture with other weights.

Two places where transformers departs from the official model, and what we do
(method.md section 1):

* DINOv2's position embedding is resized in transformers with
  ``size=(h/14, w/14)``; the official code uses
  ``scale_factor=((h/14 + 0.1)/37, (w/14 + 0.1)/37)`` (bicubic), which maps
  coordinates differently (about 1.5 % of the depth range apart away from
  518 x 518). We swap the embeddings' class for one with the official formula.
* The relative head multiplies by ``config.max_depth``. We run the head's
  layers ourselves without that factor, and compute its upsampling size from
  the input's shape instead of ``int()``, so a dynamic-shape export is not
  frozen to one size (the DEVELOPERS note on DAv2 export).

Nothing is ever downloaded: a non-``tiny`` teacher needs ``weights`` (the CLI's
``--depth-weights``), an official ``.pth``, a Distill-Any-Depth
``.safetensors`` or a local Hugging Face model folder.
"""
from __future__ import annotations

import math
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
from edgehaze.models.registries import DEPTH_MODELS

PATCH = 14
#: the official pos-embed offset (DINOv2 ``interpolate_offset``)
POS_EMBED_OFFSET = 0.1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Dav2Arch:
    """One size of the Depth Anything V2 network (facts from the official code)."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    out_layers: Tuple[int, ...]  # 0-based encoder blocks fed to the DPT neck
    features: int  # DPT fusion width
    out_channels: Tuple[int, ...]  # reassemble (projection) widths


ARCHS = {
    "vits": Dav2Arch("vits", 384, 12, 6, (2, 5, 8, 11), 64, (48, 96, 192, 384)),
    "vitb": Dav2Arch("vitb", 768, 12, 12, (2, 5, 8, 11), 128, (96, 192, 384, 768)),
    "vitl": Dav2Arch("vitl", 1024, 24, 16, (4, 11, 17, 23), 256, (256, 512, 1024, 1024)),
    # for tests only: same structure, a few thousand times smaller
    "tiny": Dav2Arch("tiny", 32, 4, 2, (0, 1, 2, 3), 16, (8, 16, 32, 32)),
}

_HIDDEN_TO_ARCH = {a.hidden_size: a.name for a in ARCHS.values() if a.name != "tiny"}

_DAV2_HF = "https://huggingface.co/depth-anything/Depth-Anything-V2-{}"
_DAD_HF = "https://huggingface.co/xingyang1/Distill-Any-Depth"


@dataclass(frozen=True)
class TeacherRelease:
    """One published teacher: its id, size, weights' licence and where they are published."""

    model_id: str
    arch: str
    license: str
    where: str  # where the user finds the weights (for error messages)


_RELEASES = {
    "dav2-s": TeacherRelease("dav2-s", "vits", "Apache-2.0",
                       f"depth_anything_v2_vits.pth from {_DAV2_HF.format('Small')}"),
    "dav2-b": TeacherRelease("dav2-b", "vitb", "CC-BY-NC-4.0",
                       f"depth_anything_v2_vitb.pth from {_DAV2_HF.format('Base')}"),
    "dav2-l": TeacherRelease("dav2-l", "vitl", "CC-BY-NC-4.0",
                       f"depth_anything_v2_vitl.pth from {_DAV2_HF.format('Large')}"),
    "dsv2-s": TeacherRelease("dsv2-s", "vits", "MIT",
                       f"small/model.safetensors of the Distill-Any-Depth release ({_DAD_HF})"),
    "dsv2-b": TeacherRelease("dsv2-b", "vitb", "MIT",
                       f"base/model.safetensors of the Distill-Any-Depth release ({_DAD_HF})"),
    "dsv2-l": TeacherRelease("dsv2-l", "vitl", "MIT",
                       f"large/model.safetensors of the Distill-Any-Depth release ({_DAD_HF})"),
    "tiny": TeacherRelease("tiny", "tiny", "none (random init)", "(none: random init)"),
}


def build_config(arch: Dav2Arch):
    """transformers ``DepthAnythingConfig`` for one size, as the official model."""
    from transformers import DepthAnythingConfig, Dinov2Config

    backbone = Dinov2Config(
        hidden_size=arch.hidden_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        mlp_ratio=4,
        image_size=518,  # 37 x 37 position embeddings, as released
        patch_size=PATCH,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
        qkv_bias=True,
        out_indices=[i + 1 for i in arch.out_layers],
        apply_layernorm=True,
        reshape_hidden_states=False,
    )
    return DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=PATCH,
        reassemble_hidden_size=arch.hidden_size,
        reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=list(arch.out_channels),
        fusion_hidden_size=arch.features,
        head_hidden_size=32,
        depth_estimation_type="relative",
        max_depth=1,
    )


def network_input_size(height: int, width: int, input_size: int = 518) -> Tuple[int, int]:
    """The size the official ``image2tensor`` resizes an ``height x width`` image to.

    Official ``Resize(width=height=input_size, keep_aspect_ratio=True,
    ensure_multiple_of=14, resize_method='lower_bound')``: scale so that the
    shorter side reaches ``input_size``, round each side to the nearest
    multiple of 14 (half to even, like ``np.round``), and round up instead
    when that would fall below ``input_size``.
    """
    scale = max(input_size / height, input_size / width)

    def constrain(x: float) -> int:
        y = round(x / PATCH) * PATCH
        if y < input_size:
            y = math.ceil(x / PATCH) * PATCH
        return int(y)

    return constrain(scale * height), constrain(scale * width)


def _official_resize_matrix(rows: torch.Tensor, n_in: int, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``n_out x n_in`` matrix of the official bicubic resize along one axis.

    ``rows`` is ``arange(n_out)`` (float); everything is derived from tensors,
    so a dynamic-shape export keeps the size symbolic (``F.interpolate`` with a
    symbolic ``scale_factor`` gets specialised to the example size). Same
    arithmetic as PyTorch's CPU ``upsample_bicubic2d`` (A = -0.75, half-pixel
    source index ``(dst + 0.5) / scale - 0.5``, taps clamped to the border),
    with ``scale = (n_out + 0.1) / n_in`` (its inverse computed in float64
    and rounded once, as PyTorch does with a given ``scale_factor``). Where
    the boolean tensor ``keep`` is true it is the identity instead.
    """
    a = -0.75
    n_out = rows[-1:].double() + 1.0
    src = (rows + 0.5) * (n_in / (n_out + POS_EMBED_OFFSET)).to(rows.dtype) - 0.5
    x0 = torch.floor(src)
    t = src - x0

    def conv1(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def conv2(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = (conv2(t + 1), conv1(t), conv1(1 - t), conv2(2 - t))
    cols = torch.arange(n_in, device=rows.device, dtype=rows.dtype)
    matrix = torch.zeros_like(rows[:, None] * cols[None, :])
    for k, w in enumerate(weights):
        tap = torch.clamp(x0 + (k - 1), 0, n_in - 1)
        matrix = matrix + w[:, None] * (tap[:, None] == cols[None, :]).to(rows.dtype)
    if keep is None:
        return matrix
    return torch.where(keep, (rows[:, None] == cols[None, :]).to(rows.dtype), matrix)


def _official_interpolate_pos_encoding(self, embeddings: torch.Tensor, height, width) -> torch.Tensor:
    """DINOv2 position embeddings resized as in the official Depth Anything V2.

    ``scale_factor = ((h // 14 + 0.1) / sqrt(N), (w // 14 + 0.1) / sqrt(N))``,
    bicubic, no antialias; returned unchanged at the trained grid when square
    (as the official code). With a symbolic size (dynamic-shape export or
    tracing) the same resize is done as two matrix products built from tensor
    ops, since ``F.interpolate`` would freeze its scale to the example size.
    """
    num_patches = embeddings.shape[1] - 1
    num_positions = self.position_embeddings.shape[1] - 1
    side = int(math.sqrt(num_positions))
    patch_h, patch_w = self.patch_embeddings.patch_size
    rows, cols = height // patch_h, width // patch_w
    dim = embeddings.shape[-1]
    pos = self.position_embeddings.float()
    grid = pos[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    concrete = isinstance(height, int) and isinstance(width, int) and not torch.jit.is_tracing()
    if concrete:
        if num_patches == num_positions and height == width:
            return self.position_embeddings
        grid = F.interpolate(
            grid,
            scale_factor=((rows + POS_EMBED_OFFSET) / side, (cols + POS_EMBED_OFFSET) / side),
            mode="bicubic",
            align_corners=False,
            antialias=False,
        )
    else:
        r = torch.arange(rows, device=pos.device, dtype=pos.dtype)
        c = torch.arange(cols, device=pos.device, dtype=pos.dtype)
        # on the trained square grid the official code keeps the embeddings as they are
        keep = (r[-1:] == side - 1) & (c[-1:] == side - 1)
        m_rows = _official_resize_matrix(r, side, keep)
        m_cols = _official_resize_matrix(c, side, keep)
        grid = torch.matmul(torch.matmul(m_rows, grid), m_cols.transpose(0, 1))
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((pos[:, :1], grid), dim=1).to(embeddings.dtype)


def use_official_pos_embedding(model: nn.Module) -> None:
    """Make ``model``'s DINOv2 embeddings resize position embeddings the official way.

    Swaps the embeddings instance's class for a subclass overriding
    ``interpolate_pos_encoding`` (weights and state-dict names unchanged).
    """
    emb = model.backbone.embeddings
    base = type(emb)
    if getattr(base, "_edgehaze_official_pos", False):
        return
    emb.__class__ = type(
        "OfficialPos" + base.__name__,
        (base,),
        {"interpolate_pos_encoding": _official_interpolate_pos_encoding, "_edgehaze_official_pos": True},
    )


def _init_tiny(model: nn.Module) -> None:
    """Signal-preserving random init for ``tiny`` (transformers' std=0.02 init
    makes the tiny net's depth nearly constant, so tests could not see
    differences). Weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1)."""
    for name, p in model.named_parameters():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        is_weight = name.endswith("weight")
        if name.endswith("lambda1"):  # LayerScale
            nn.init.ones_(p)
        elif isinstance(module, nn.LayerNorm):
            nn.init.normal_(p, 1.0 if is_weight else 0.0, 0.1)
        elif isinstance(module, (nn.Conv2d, nn.Linear)) and is_weight:
            nn.init.normal_(p, 0.0, 1.0 / math.sqrt(p[0].numel()))
        elif isinstance(module, nn.ConvTranspose2d) and is_weight:  # kernel == stride
            nn.init.normal_(p, 0.0, 1.0 / math.sqrt(p.shape[0]))
        elif isinstance(module, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)):
            nn.init.normal_(p, 0.0, 0.1)
        else:  # cls token, mask token, position embeddings
            nn.init.normal_(p, 0.0, 1.0)
    with torch.no_grad():  # keep the final ReLU alive
        model.head.conv3.bias.add_(1.0)


class DinoDptTeacher(DepthProvider):
    """The frame shared by the frozen DINOv2 + DPT teachers (DAv2, DA3 mono).

    One place for what both families do the same way, so a fix to one reaches
    the other: building transformers' ``DepthAnythingForDepthEstimation`` for a
    size (seeded, tiny init), the official position-embedding resize, the
    official ``image2tensor`` preprocessing, the DPT neck's four fusion outputs
    (finest first) and the head's trunk up to its upsampling. A family sets
    ``releases`` / ``tiny_id`` / ``family`` and implements ``_load`` and
    ``depth_from_pixels``; ``_add_modules`` and ``_adjust`` are its hooks for
    extra modules (built under the same seed) and departures from DAv2.

    ``features(image01)`` returns the neck's fusion-stage outputs (strides
    1.75, 3.5, 7, 14 relative to the network input), each ``features``
    channels wide; ``depth(image01)`` relative inverse depth (larger =
    nearer) at the input's size. The input is any ``B x 3 x H x W`` RGB batch
    in [0, 1]; it is resized like the official ``image2tensor`` (bicubic,
    aspect kept, shorter side ``input_size``, sides multiples of 14) and
    normalised with ImageNet mean/std.

    Always in eval mode and without gradients: ``train()`` keeps it in eval,
    its parameters do not require grad, and its forward runs under
    ``torch.no_grad()`` (not ``inference_mode``: its outputs feed trainable
    fusion blocks, and inference tensors cannot be saved for backward).
    ``arch`` overrides the release's size (tests only).
    """

    trainable = False
    releases: Dict[str, TeacherRelease] = {}
    #: the family's sizes, by the names its ``releases`` use
    archs: Dict[str, Dav2Arch] = ARCHS
    tiny_id = ""
    family = ""
    #: what else ``--depth-weights`` accepts, for the missing-weights message
    other_sources = ""

    def __init__(self, model_id: str, weights: Optional[str | os.PathLike] = None, input_size: int = 518,
                 seed: int = 0, random_init: bool = False, arch: Optional[str] = None) -> None:
        super().__init__()
        if model_id not in self.releases:
            raise ConfigError(f"unknown {self.family} teacher '{model_id}'; known: {', '.join(self.releases)}")
        if not isinstance(input_size, int) or input_size < PATCH:
            raise ConfigError(f"depth input_size must be an integer >= {PATCH}, got {input_size!r}")
        # random_init: the architecture without its weights, asked for by
        # name, for cost reports and latency benchmarks only (never quality).
        if random_init and weights is not None:
            raise ConfigError("random_init=True and depth weights are exclusive")
        release = self.releases[model_id]
        self.model_id, self.license, self.input_size = model_id, release.license, input_size
        self.spec = self.archs[arch or release.arch]
        weights_path = None if random_init else check_weights(release, weights, self.tiny_id, self.other_sources)
        if random_init:
            self.license = "none (random init, cost measurements only)"
        from transformers import DepthAnythingForDepthEstimation
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.model = DepthAnythingForDepthEstimation(self._config())
                self._add_modules()
                if self.spec.name == "tiny":
                    _init_tiny(self.model)
            self._adjust()
            if weights_path is not None:
                self._load(weights_path)
        finally:
            hf_logging.set_verbosity(verbosity)
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

    # -- family hooks -------------------------------------------------------
    def _config(self):  # type: ignore[no-untyped-def]
        """transformers' configuration of the network for ``self.spec`` (DAv2's by default)."""
        return build_config(self.spec)

    def _add_modules(self) -> None:
        """Build modules beyond transformers' network (under the build seed)."""

    def _adjust(self) -> None:
        """Departures of the family from DAv2's configuration, before loading."""

    def _load(self, path: Path) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def depth_from_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Relative inverse depth ``B x h x w`` at the network-input size."""
        raise NotImplementedError

    # -- frozen -------------------------------------------------------------
    def train(self, mode: bool = True) -> "DinoDptTeacher":
        """Stay in eval mode whatever is asked: the teacher is frozen."""
        return super().train(False)

    # -- pipeline -----------------------------------------------------------
    def preprocess(self, image01: torch.Tensor) -> torch.Tensor:
        """Resize (official ``image2tensor`` rule, bicubic) and normalise a [0, 1] RGB batch."""
        if image01.dim() != 4 or image01.shape[1] != 3:
            raise ValueError(f"expected an RGB batch B x 3 x H x W, got shape {tuple(image01.shape)}")
        h, w = network_input_size(int(image01.shape[-2]), int(image01.shape[-1]), self.input_size)
        x = image01.to(self.mean.dtype)
        if (h, w) != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=False)
        return (x - self.mean) / self.std

    def neck_features(self, pixel_values: torch.Tensor) -> List[torch.Tensor]:
        """DPT fusion-stage outputs for a normalised network input, finest first.

        ``pixel_values`` sides should be multiples of 14 (as ``preprocess``
        makes them). No resizing here, so this is the graph to export.
        """
        maps = self.model.backbone(pixel_values).feature_maps
        rows = pixel_values.shape[-2] // PATCH
        cols = pixel_values.shape[-1] // PATCH
        fused = self.model.neck(list(maps), rows, cols)  # coarsest first
        return list(fused[::-1])

    def head_trunk(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The head's first conv on the finest level, upsampled to the patch grid's pixels.

        The size comes from the input's shape (no ``int()``), so a dynamic-shape
        export is not frozen to one size.
        """
        x = self.model.head.conv1(self.neck_features(pixel_values)[0])
        size = (pixel_values.shape[-2] // PATCH * PATCH, pixel_values.shape[-1] // PATCH * PATCH)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)

    @torch.no_grad()
    def features(self, image01: torch.Tensor) -> List[torch.Tensor]:
        return self.neck_features(self.preprocess(image01))

    @torch.no_grad()
    def depth(self, image01: torch.Tensor) -> torch.Tensor:
        """Relative inverse depth (larger = nearer), ``B x H x W`` like the input."""
        d = self.depth_from_pixels(self.preprocess(image01))
        d = F.interpolate(d[:, None], size=tuple(image01.shape[-2:]), mode="bilinear", align_corners=True)
        return d[:, 0]


def check_weights(release: TeacherRelease, weights: Optional[str | os.PathLike], tiny_id: str,
                  other_sources: str = "") -> Optional[Path]:
    """The local weights path of ``release``; a clear error naming where the
    official files are published when it is not given or not there (nothing is
    ever downloaded). None for the random ``tiny`` test teachers."""
    if weights is None:
        if release.arch == "tiny":
            return None
        raise MissingWeightsError(
            f"depth teacher '{release.model_id}' needs its pretrained weights and nothing is downloaded: "
            f"pass --depth-weights PATH with {release.where} (saved locally)"
            f"{', ' + other_sources if other_sources else ''}; "
            f"for a random-initialised test teacher use the depth model '{tiny_id}'"
        )
    path = Path(weights).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"{path}: no such file or folder (--depth-weights); pass the local path of {release.where}"
        )
    return path


class DepthAnythingTeacher(DinoDptTeacher):
    """A frozen Depth Anything V2 / Distill-Any-Depth network (see :class:`DinoDptTeacher`).

    Weights: an official ``.pth``, a Distill-Any-Depth ``.safetensors``, a
    transformers state dict or a local Hugging Face model folder.
    """

    releases = _RELEASES
    tiny_id = "tiny"
    family = "Depth Anything"
    other_sources = "or a local Hugging Face model folder of the same model"

    def _load(self, path: Path) -> None:
        load_weights(self.model, path, self.model_id)

    def depth_from_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Relative inverse depth ``B x h x w`` at the network-input size.

        The official head, without transformers' ``max_depth`` factor.
        """
        head = self.model.head
        x = head.activation1(head.conv2(self.head_trunk(pixel_values)))
        x = head.activation2(head.conv3(x))
        return x.squeeze(1)


# -- weights ----------------------------------------------------------------

def _arch_label(arch: Dav2Arch) -> str:
    return "tiny ViT" if arch.name == "tiny" else f"ViT-{arch.name[-1].upper()}"


def _arch_name_of(hidden_size: int, num_layers: int) -> str:
    name = _HIDDEN_TO_ARCH.get(hidden_size)
    if name is not None and ARCHS[name].num_layers == num_layers:
        return _arch_label(ARCHS[name])
    return f"an encoder of width {hidden_size} and {num_layers} blocks"


def _wrong_size(path: Path, model_id: str, found: str) -> CheckpointError:
    want = ARCHS[_RELEASES[model_id].arch]
    others = [r.model_id for r in _RELEASES.values() if _arch_label(ARCHS[r.arch]) == found
              and r.model_id[:4] == model_id[:4]]
    hint = f" or choose depth model '{others[0]}'" if others else ""
    return CheckpointError(
        f"{path}: holds {found}, but depth model '{model_id}' is a {_arch_label(want)} "
        f"(width {want.hidden_size}, {want.num_layers} blocks); pass its own weights "
        f"({_RELEASES[model_id].where}) with --depth-weights{hint}"
    )


def load_weights(model: nn.Module, path: str | os.PathLike, model_id: str) -> None:
    """Load Depth Anything V2 weights from ``path`` into a transformers ``model``.

    ``path`` is an official ``.pth`` (``pretrained.*``/``depth_head.*``), a
    Distill-Any-Depth ``.safetensors`` (official layout, or ``backbone.blocks.0.*``
    for large), a transformers ``state_dict`` file, or a local Hugging Face
    model folder (``config.json`` + weights; ``local_files_only=True``).
    Raises ``CheckpointError`` naming the file for anything else, including
    weights of another size.
    """
    path = Path(path)
    if path.is_dir():
        state = _read_hf_folder(path, model, model_id)
    else:
        raw = dav2_convert.read_state_dict(path)
        try:
            state = dav2_convert.official_to_transformers(raw)
        except ValueError as exc:
            raise CheckpointError(f"{path}: not a Depth Anything V2 checkpoint ({exc})") from None
    _load_checked(model, state, path, model_id)


def _read_hf_folder(path: Path, model: nn.Module, model_id: str) -> dict:
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"{path}: a folder without config.json; pass a Hugging Face model folder "
            "(config.json + model.safetensors) or a weight file to --depth-weights"
        )
    from transformers import DepthAnythingForDepthEstimation

    try:
        loaded, info = DepthAnythingForDepthEstimation.from_pretrained(
            str(path), local_files_only=True, output_loading_info=True
        )
    except Exception as exc:
        raise CheckpointError(
            f"{path}: cannot load it as a Depth Anything model folder ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]}); pass a DepthAnythingForDepthEstimation folder"
        ) from None
    incomplete = [k for k in ("missing_keys", "mismatched_keys") if info.get(k)]
    if incomplete:  # from_pretrained would have filled these with random values
        raise CheckpointError(
            f"{path}: its weights do not cover the model it declares ({incomplete[0]}: "
            f"{list(info[incomplete[0]])[:3]}); pass a complete Depth Anything V2 folder"
        )
    theirs, ours = loaded.config, model.config
    if theirs.depth_estimation_type != "relative":
        raise CheckpointError(
            f"{path}: a {theirs.depth_estimation_type}-depth model; the teacher needs the relative-depth "
            "Depth Anything V2 weights"
        )
    tb, ob = theirs.backbone_config, ours.backbone_config
    if (tb.hidden_size, tb.num_hidden_layers) != (ob.hidden_size, ob.num_hidden_layers):
        raise _wrong_size(path, model_id, _arch_name_of(tb.hidden_size, tb.num_hidden_layers))
    if list(tb.out_indices) != list(ob.out_indices) or theirs.fusion_hidden_size != ours.fusion_hidden_size:
        raise CheckpointError(
            f"{path}: takes encoder layers {list(tb.out_indices)} with fusion width {theirs.fusion_hidden_size}, "
            f"but '{model_id}' uses {list(ob.out_indices)} / {ours.fusion_hidden_size} like the official model; "
            "pass the matching Depth Anything V2 folder"
        )
    return loaded.state_dict()


def _load_checked(model: nn.Module, state: dict, path: Path, model_id: str) -> None:
    own = model.state_dict()
    width = state.get("backbone.embeddings.cls_token")
    layers = {int(k.split(".")[3]) for k in state if k.startswith("backbone.encoder.layer.")}
    if width is not None and (width.shape[-1], len(layers)) != (
        own["backbone.embeddings.cls_token"].shape[-1],
        model.config.backbone_config.num_hidden_layers,
    ):
        raise _wrong_size(path, model_id, _arch_name_of(width.shape[-1], len(layers)))
    state = dict(state)
    # Distill-Any-Depth large may drop the (inference-unused) mask token
    state.setdefault("backbone.embeddings.mask_token", own["backbone.embeddings.mask_token"])
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: does not match depth model '{model_id}' (missing {missing[:3]}"
            f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
            f"{'...' if len(unexpected) > 3 else ''}); pass {_RELEASES[model_id].where}"
        )
    bad = [k for k in own if own[k].shape != state[k].shape]
    if bad:
        raise CheckpointError(
            f"{path}: tensor shapes differ from depth model '{model_id}' (e.g. {bad[0]}: "
            f"{tuple(state[bad[0]].shape)} vs {tuple(own[bad[0]].shape)}); pass {_RELEASES[model_id].where}"
        )
    model.load_state_dict(state, strict=True)


# -- registry ---------------------------------------------------------------
def teacher_factory(cls: type, model_id: str):  # type: ignore[no-untyped-def]
    """The registry builder of one released ``cls`` teacher (weights, input size, random init)."""
    release = cls.releases[model_id]

    def build(weights: Optional[str] = None, input_size: int = 518, random_init: bool = False) -> DinoDptTeacher:
        return cls(model_id, weights=weights, input_size=input_size, random_init=random_init)

    build.__name__ = model_id.replace("-", "_")
    build.__doc__ = f"Frozen {model_id} teacher ({release.license}); weights: {release.where}."
    return build


for _mid in ("dav2-s", "dav2-b", "dav2-l", "dsv2-s", "dsv2-b", "dsv2-l"):
    DEPTH_MODELS.register(_mid)(teacher_factory(DepthAnythingTeacher, _mid))


@DEPTH_MODELS.register("tiny")
def tiny(weights: Optional[str] = None, input_size: int = 518, seed: int = 0,
         random_init: bool = False) -> DepthAnythingTeacher:
    """A randomly initialised, seeded, tiny Depth Anything network, for tests."""
    return DepthAnythingTeacher("tiny", weights=weights, input_size=input_size, seed=seed, random_init=random_init)


__all__ = (
    "ARCHS",
    "DepthAnythingTeacher",
    "DinoDptTeacher",
    "TeacherRelease",
    "build_config",
    "check_weights",
    "load_weights",
    "network_input_size",
    "teacher_factory",
    "use_official_pos_embedding",
)
