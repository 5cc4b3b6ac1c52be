"""Depth Anything 3 monocular teachers: official-code fidelity, licence, errors.

The fidelity test follows tests/official_code.py (live comparison): the
official files are extracted from a bare git mirror of
ByteDance-Seed/Depth-Anything-3 (``EDGEHAZE_OFFICIAL_CODE``, default
/work/.mirror, as the ``fetch`` tool leaves it) into a temporary folder, never
committed; without the mirror, or without ``einops``/``addict`` (dev extra),
the test is skipped with that reason. Weights are fixed random
(``seeded_state`` over the official keys), written as an official-format
``model.safetensors`` (``model.`` prefix) + ``config.json``.
"""
from __future__ import annotations

import importlib
import json
import re
import sys

import pytest
import torch

import edgehaze.models.depth  # noqa: F401  (registration)
from edgehaze.errors import CheckpointError, MissingWeightsError
from edgehaze.models.depth.da3 import Da3MonoTeacher
from edgehaze.models.registries import DEPTH_MODELS
from tests.official_code import extract, import_from, mirror_dir, seeded_state

torch.set_num_threads(2)
REPO = "ByteDance-Seed/Depth-Anything-3"
#: the official commit the fidelity numbers were taken at (mirror HEAD must be it or later)
PINNED = "2c21ea849ceec7b469a3e62ea0c0e270afc3281a"
_FILES = [f"src/depth_anything_3/{p}" for p in (
    "model/dinov2/dinov2.py", "model/dinov2/vision_transformer.py", "model/dinov2/layers/__init__.py",
    "model/dinov2/layers/block.py", "model/dinov2/layers/attention.py", "model/dinov2/layers/drop_path.py",
    "model/dinov2/layers/layer_scale.py", "model/dinov2/layers/mlp.py", "model/dinov2/layers/patch_embed.py",
    "model/dinov2/layers/rope.py", "model/dinov2/layers/swiglu_ffn.py", "model/dpt.py",
    "model/utils/head_utils.py", "model/reference_view_selector.py", "utils/logger.py", "utils/constants.py")]
# official vits/vitl mono configs: (name, out_layers, dim_in, features, out_channels)
_SIZES = {"vits": ([2, 5, 8, 11], 384, 64, [48, 96, 192, 384]),
          "vitl": ([4, 11, 17, 23], 1024, 256, [256, 512, 1024, 1024])}


def _official_modules(tmp_path_factory):
    pytest.importorskip("einops", reason="the official DA3 code needs einops (dev extra)")
    pytest.importorskip("addict", reason="the official DA3 code needs addict (dev extra)")
    if mirror_dir(REPO) is None:
        pytest.skip(f"no mirror of {REPO} (set EDGEHAZE_OFFICIAL_CODE to a bare clone)")
    root = extract(REPO, _FILES, tmp_path_factory.mktemp("da3_official"))
    (root / "src/depth_anything_3/model/__init__.py").write_text("")  # the real one imports the whole API
    dinov2 = import_from(root / "src", "depth_anything_3.model.dinov2.dinov2")
    sys.path.insert(0, str(root / "src"))  # second module of the same package
    try:
        dpt = importlib.import_module("depth_anything_3.model.dpt")
    finally:
        sys.path.remove(str(root / "src"))
    return dinov2, dpt


class _OfficialMono(torch.nn.Module):
    """DepthAnything3Net's monocular path: backbone -> DPT head (patch_start_idx 0)."""

    def __init__(self, dinov2, dpt, size: str):
        super().__init__()
        layers, dim, feats, chans = _SIZES[size]
        self.backbone = dinov2.DinoV2(name=size, out_layers=layers, alt_start=-1, qknorm_start=-1,
                                      rope_start=-1, cat_token=False)
        self.head = dpt.DPT(dim_in=dim, output_dim=1, features=feats, out_channels=chans)

    def forward(self, x):
        feats, _ = self.backbone(x[:, None])
        out = self.head(feats, x.shape[-2], x.shape[-1], patch_start_idx=0)
        return out["depth"][:, 0], out["sky"][:, 0]


def _write_release(tmp_path, official) -> str:
    from safetensors.torch import save_file

    shapes = {k: tuple(v.shape) for k, v in official.state_dict().items()}
    state = seeded_state(shapes, seed=3)
    with torch.no_grad():  # keep exp() in range: small last-conv weights
        for k in state:
            if "output_conv2.2" in k:
                state[k] = state[k] * 0.1
    official.load_state_dict(state, strict=True)
    folder = tmp_path / "DA3MONO"
    folder.mkdir()
    save_file({"model." + k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_name": "da3mono-large"}))
    return str(folder)


def _fidelity(official, ours: Da3MonoTeacher, x: torch.Tensor, second: str = "sky"):
    """Largest |ours - official| / official range of depth, the model's ``second`` output
    (``ours.depth_and_<second>``; sky here, confidence for DA3-Small/Base) and the four levels."""
    taps = []
    hooks = [getattr(official.head.scratch, f"refinenet{i}").register_forward_hook(
        lambda m, a, out: taps.append(out)) for i in (4, 3, 2, 1)]
    with torch.no_grad():
        ref_depth, ref_second = official(x)
        depth, other = getattr(ours, f"depth_and_{second}")(x)
        feats = ours.neck_features(x)
    for h in hooks:
        h.remove()
    rows = {"depth": (depth, ref_depth), second: (other, ref_second)}
    for i, (f, r) in enumerate(zip(feats, taps[::-1])):
        rows[f"level{i}"] = (f, r)
    out = {}
    for name, (a, r) in rows.items():
        assert a.shape == r.shape, name
        out[name] = float((a - r).abs().max() / (r.max() - r.min()).clamp_min(1e-12))
    return out


@pytest.fixture(scope="module")
def official_code(tmp_path_factory):
    return _official_modules(tmp_path_factory)


@pytest.mark.parametrize("size, shape", [("vits", (1, 3, 518, 518)), ("vits", (1, 3, 350, 476)),
                                         ("vits", (2, 3, 266, 392))])
def test_official_da3_mono_structure_matches(official_code, tmp_path, size, shape):
    """A ViT-S-sized DA3 mono net (same code path as Large, fast): depth, sky
    and the four fusion levels within 1e-5 of each output's range."""
    official = _OfficialMono(*official_code, size).eval()
    path = _write_release(tmp_path, official)
    ours = Da3MonoTeacher("da3-mono-l", weights=path, arch=size)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(5))
    errs = _fidelity(official, ours, x)
    print(size, shape, errs)
    assert max(errs.values()) < 1e-5, errs


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(1, 3, 518, 518), (1, 3, 518, 686), (2, 3, 364, 518)])
def test_official_da3_mono_large_matches(official_code, tmp_path, shape):
    official = _OfficialMono(*official_code, "vitl").eval()
    path = _write_release(tmp_path, official)
    ours = DEPTH_MODELS.build("da3-mono-l", weights=path)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(5))
    errs = _fidelity(official, ours, x)
    print("vitl", shape, errs)
    assert max(errs.values()) < 1e-5, errs


def test_inverse_depth_contract_and_sky_zeroed():
    t = DEPTH_MODELS.build("da3-tiny", input_size=56, seed=1)
    px = torch.randn(2, 3, 56, 70)
    with torch.no_grad():
        depth, sky = t.depth_and_sky(px)
        inv = t.depth_from_pixels(px)
    is_sky = sky >= 0.3
    torch.testing.assert_close(inv[~is_sky], 1.0 / depth[~is_sky])
    assert (inv[is_sky] == 0).all()
    with torch.no_grad():  # force all-sky: the sky bias dominates
        t.sky_head[2].bias.fill_(10.0)
        assert (t.depth_from_pixels(px) == 0).all()


def test_registry_licences_and_feature_shapes():
    for name in ("da3-mono-l", "da3-metric-l"):
        assert name in DEPTH_MODELS
    big = DEPTH_MODELS.build("da3-mono-l", random_init=True)
    assert big.feature_channels == [256] * 4 and big.license.startswith("none")
    assert Da3MonoTeacher("da3-mono-l", random_init=True).model_id == "da3-mono-l"
    from edgehaze.models.depth.da3 import _RELEASES

    assert _RELEASES["da3-mono-l"].license == _RELEASES["da3-metric-l"].license == "Apache-2.0"
    t = DEPTH_MODELS.build("da3-tiny", input_size=56)
    x = torch.rand(2, 3, 45, 61)
    feats = t.features(x)
    assert [f.shape[:2] for f in feats] == [(2, 16)] * 4 and t.depth(x).shape == (2, 45, 61)


@pytest.mark.parametrize("name, where", [("da3-mono-l", "depth-anything/DA3MONO-LARGE"),
                                         ("da3-metric-l", "depth-anything/DA3METRIC-LARGE"),
                                         ("da3-s", "depth-anything/DA3-SMALL"), ("da3-b", "depth-anything/DA3-BASE")])
def test_missing_weights_say_where_they_are_published(name, where):
    with pytest.raises(MissingWeightsError) as err:
        DEPTH_MODELS.build(name)
    msg = str(err.value)
    assert "--depth-weights" in msg and where in msg and "nothing is downloaded" in msg


def test_foreign_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"encoder.weight": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*not a Depth Anything 3"):
        DEPTH_MODELS.build("da3-tiny", weights=str(path))


def test_fidelity_check_sees_the_final_norm_eps(official_code, tmp_path):
    """The comparison can fail: DAv2's final-norm eps (1e-6) instead of DA3's 1e-5 shows."""
    official = _OfficialMono(*official_code, "vits").eval()
    ours = Da3MonoTeacher("da3-mono-l", weights=_write_release(tmp_path, official), arch="vits")
    ours.model.backbone.layernorm.eps = 1e-6
    x = torch.randn(1, 3, 350, 476, generator=torch.Generator().manual_seed(5))
    errs = _fidelity(official, ours, x)
    assert all(v > 0 and v == v for v in errs.values()), errs


def test_parameters_are_the_official_models(official_code):
    """No unused tensors: the module holds exactly the official parameters (the
    coarsest refinenet's first residual unit and the mask token are not built)."""
    official = _OfficialMono(*official_code, "vits")
    ours = Da3MonoTeacher("da3-mono-l", random_init=True, arch="vits")
    n_official = sum(p.numel() for p in official.parameters())
    assert sum(p.numel() for p in ours.parameters()) == n_official
    # the official blocks fuse q/k/v in one Linear: two tensors where transformers has six
    fused = 4 * len(official.backbone.pretrained.blocks)
    assert len(list(ours.parameters())) == len(list(official.parameters())) + fused
