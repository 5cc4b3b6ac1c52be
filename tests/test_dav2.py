"""Depth Anything V2 teachers: loading the released layouts, features, fidelity."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from edgehaze.errors import CheckpointError, MissingWeightsError
from edgehaze.models.depth import dav2_convert
from edgehaze.models.depth.dav2 import (
    ARCHS,
    Dav2Arch,
    build_config,
    network_input_size,
)
from edgehaze.models.registries import DEPTH_MODELS

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def source():
    """A tiny teacher whose weights the loaders must reproduce."""
    return DEPTH_MODELS.build("tiny", input_size=56, seed=1)


@pytest.fixture(scope="module")
def image():
    torch.manual_seed(0)
    return torch.rand(2, 3, 45, 61)


def _official_layout(model) -> dict:
    return dav2_convert.transformers_to_official(model.state_dict())


def test_registry_names_and_licences():
    for name in ("dav2-s", "dav2-b", "dav2-l", "dsv2-s", "dsv2-b", "dsv2-l", "tiny"):
        assert name in DEPTH_MODELS
    t = DEPTH_MODELS.build("tiny", input_size=28)
    assert (t.model_id, t.license, t.trainable) == ("tiny", "none (random init)", False)
    assert t.build_kwargs() == {"weights": None, "input_size": 28, "seed": 0}


def test_configs_follow_the_official_model():
    expect = {
        "vits": (384, 12, [3, 6, 9, 12], 64, [48, 96, 192, 384]),
        "vitb": (768, 12, [3, 6, 9, 12], 128, [96, 192, 384, 768]),
        "vitl": (1024, 24, [5, 12, 18, 24], 256, [256, 512, 1024, 1024]),
    }
    for name, (hidden, depth, out_idx, features, out_ch) in expect.items():
        cfg = build_config(ARCHS[name])
        b = cfg.backbone_config
        assert (b.hidden_size, b.num_hidden_layers, list(b.out_indices)) == (hidden, depth, out_idx)
        assert (cfg.fusion_hidden_size, list(cfg.neck_hidden_sizes)) == (features, out_ch)
        assert b.apply_layernorm and b.image_size == 518 and b.patch_size == 14
        assert cfg.depth_estimation_type == "relative" and cfg.max_depth == 1


def test_official_keys_are_fused_and_named_like_the_release(source):
    sd = _official_layout(source.model)
    assert all(k.startswith(("pretrained.", "depth_head.")) for k in sd)
    c = ARCHS["tiny"].hidden_size
    assert sd["pretrained.blocks.0.attn.qkv.weight"].shape == (3 * c, c)
    assert sd["pretrained.blocks.3.ls2.gamma"].shape == (c,)
    assert "depth_head.scratch.refinenet4.resConfUnit2.conv1.weight" in sd
    assert "depth_head.scratch.output_conv2.2.bias" in sd
    back = dav2_convert.official_to_transformers(sd)
    own = source.model.state_dict()
    assert set(back) == set(own)
    assert all(torch.equal(back[k], own[k]) for k in own)


def test_official_pth_loads_and_reproduces_depth(tmp_path, source, image):
    path = tmp_path / "depth_anything_v2_vits.pth"
    torch.save(_official_layout(source.model), path)
    other = DEPTH_MODELS.build("tiny", input_size=56, seed=2)
    assert not torch.allclose(other.depth(image), source.depth(image), atol=1e-3)  # seeds differ
    loaded = DEPTH_MODELS.build("tiny", weights=str(path), input_size=56, seed=2)
    torch.testing.assert_close(loaded.depth(image), source.depth(image), atol=1e-6, rtol=0)
    for a, b in zip(loaded.features(image), source.features(image)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_distill_any_depth_large_layout_loads(tmp_path, source, image):
    """Distill-Any-Depth large: ``backbone.`` prefix, blocks in one chunk, no mask token."""
    from safetensors.torch import save_file

    sd = {}
    for k, v in _official_layout(source.model).items():
        k = re.sub(r"^pretrained\.blocks\.(\d+)\.", r"backbone.blocks.0.\1.", k)
        sd[k.replace("pretrained.", "backbone.", 1)] = v.contiguous()
    del sd["backbone.mask_token"]
    path = tmp_path / "model.safetensors"
    save_file(sd, str(path))
    loaded = DEPTH_MODELS.build("tiny", weights=str(path), input_size=56, seed=2)
    torch.testing.assert_close(loaded.depth(image), source.depth(image), atol=1e-6, rtol=0)


def test_hugging_face_folder_loads(tmp_path, source, image):
    source.model.save_pretrained(tmp_path / "hf")
    loaded = DEPTH_MODELS.build("tiny", weights=str(tmp_path / "hf"), input_size=56, seed=2)
    torch.testing.assert_close(loaded.depth(image), source.depth(image), atol=1e-6, rtol=0)
    # the folder's weight file alone (save_pretrained writes the legacy attention names)
    alone = DEPTH_MODELS.build("tiny", weights=str(tmp_path / "hf" / "model.safetensors"), input_size=56, seed=2)
    torch.testing.assert_close(alone.depth(image), source.depth(image), atol=1e-6, rtol=0)


def test_weights_of_another_size_are_refused(tmp_path):
    from transformers import DepthAnythingForDepthEstimation

    wider = Dav2Arch("wider", 64, 4, 2, (0, 1, 2, 3), 16, (8, 16, 32, 32))
    net = DepthAnythingForDepthEstimation(build_config(wider))
    path = tmp_path / "wider.pth"
    torch.save(dav2_convert.transformers_to_official(net.state_dict()), path)
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*width 32"):
        DEPTH_MODELS.build("tiny", weights=str(path))
    net.save_pretrained(tmp_path / "wider_hf")
    with pytest.raises(CheckpointError, match="wider_hf.*width 32"):
        DEPTH_MODELS.build("tiny", weights=str(tmp_path / "wider_hf"))


def test_unreadable_or_foreign_files_are_refused(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match="nope.pth.*--depth-weights"):
        DEPTH_MODELS.build("dav2-s", weights=str(missing))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        DEPTH_MODELS.build("tiny", weights=str(junk))
    foreign = tmp_path / "foreign.pth"
    torch.save({"encoder.weight": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pth.*not a Depth Anything V2"):
        DEPTH_MODELS.build("tiny", weights=str(foreign))


@pytest.mark.parametrize("name, where", [
    ("dav2-s", "depth-anything/Depth-Anything-V2-Small"),
    ("dav2-l", "depth-anything/Depth-Anything-V2-Large"),
    ("dsv2-b", "Distill-Any-Depth"),
])
def test_missing_weights_say_how_to_get_them(name, where):
    with pytest.raises(MissingWeightsError) as err:
        DEPTH_MODELS.build(name)
    msg = str(err.value)
    assert "--depth-weights" in msg and where in msg and "nothing is downloaded" in msg


def test_features_declared_channels_finest_first(source, image):
    feats = source.features(image)
    assert len(feats) == len(source.feature_channels) == len(source.feature_strides) == 4
    net_h, net_w = network_input_size(45, 61, 56)
    for f, c, s in zip(feats, source.feature_channels, source.feature_strides):
        assert f.shape[:2] == (2, c)
        assert f.shape[-2:] == (round(net_h / s), round(net_w / s))
    areas = [f.shape[-2] * f.shape[-1] for f in feats]
    assert areas == sorted(areas, reverse=True)
    assert source.feature_strides == [1.75, 3.5, 7.0, 14.0]


def test_feature_channels_per_variant_match_the_neck():
    """Declared channels are what each size's neck fusion layers put out."""
    from transformers.models.depth_anything.modeling_depth_anything import DepthAnythingNeck

    for arch, channels in (("vits", 64), ("vitb", 128), ("vitl", 256)):
        neck = DepthAnythingNeck(build_config(ARCHS[arch]))
        assert [layer.projection.out_channels for layer in neck.fusion_stage.layers] == [channels] * 4
        assert [conv.in_channels for conv in neck.convs] == list(ARCHS[arch].out_channels)


def test_teacher_is_frozen(source, image):
    assert not any(p.requires_grad for p in source.parameters())
    source.train()
    assert not source.training and not any(m.training for m in source.modules())
    x = image.clone().requires_grad_(True)
    feats = source.features(x)
    assert all(f.grad_fn is None and not f.requires_grad for f in feats)
    # features can feed a trainable block (no inference-mode tensors)
    conv = torch.nn.Conv2d(feats[0].shape[1], 1, 1)
    conv(feats[0]).mean().backward()
    assert conv.weight.grad is not None


@pytest.mark.parametrize("size", [(33, 47), (61, 29), (14, 14), (100, 15)])
def test_odd_input_sizes(source, size):
    x = torch.rand(1, 3, *size)
    d = source.depth(x)
    assert d.shape == (1, *size) and torch.isfinite(d).all() and (d >= 0).all()


def test_network_input_size_follows_official_resize():
    assert network_input_size(518, 518) == (518, 518)
    assert network_input_size(480, 640) == (518, 686)
    assert network_input_size(640, 480) == (686, 518)
    assert network_input_size(1080, 1920) == (518, 924)
    assert network_input_size(100, 50) == (1036, 518)
    # lower bound: rounding 504 would fall below 510, so it rounds up
    assert network_input_size(1000, 1000, 510) == (518, 518)


def test_head_equals_transformers_head_with_max_depth_one(source):
    px = torch.randn(1, 3, 56, 70)
    with torch.no_grad():
        theirs = source.model(px).predicted_depth
    torch.testing.assert_close(source.depth_from_pixels(px), theirs, atol=0, rtol=0)


def test_official_position_embedding_formula(source):
    from transformers.models.dinov2.modeling_dinov2 import Dinov2Embeddings

    emb = source.model.backbone.embeddings
    dim = emb.position_embeddings.shape[-1]
    pos = emb.position_embeddings.detach()
    grid = pos[:, 1:].reshape(1, 37, 37, dim).permute(0, 3, 1, 2)

    def ours(h, w):
        return emb.interpolate_pos_encoding(torch.zeros(1, (h // 14) * (w // 14) + 1, dim), h, w).detach()

    def transformers_default(h, w):
        return Dinov2Embeddings.interpolate_pos_encoding(
            emb, torch.zeros(1, (h // 14) * (w // 14) + 1, dim), h, w).detach()

    assert torch.equal(ours(518, 518), transformers_default(518, 518))
    for h, w in [(518, 686), (350, 462), (252, 252)]:
        rows, cols = h // 14, w // 14
        official = F.interpolate(grid, scale_factor=((rows + 0.1) / 37, (cols + 0.1) / 37), mode="bicubic")
        official = torch.cat([pos[:, :1], official.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)
        torch.testing.assert_close(ours(h, w), official, atol=1e-6, rtol=0)
        assert (ours(h, w) - transformers_default(h, w)).abs().max() > 1e-2


def test_symbolic_resize_matrix_equals_official_interpolate():
    """The tensor-only resize used under dynamic-shape export is the official bicubic."""
    from edgehaze.models.depth.dav2 import _official_resize_matrix

    torch.manual_seed(0)
    grid = torch.randn(1, 3, 37, 37, dtype=torch.float64)
    for rows, cols in [(37, 49), (25, 33), (5, 80)]:
        ref = F.interpolate(grid, scale_factor=((rows + 0.1) / 37, (cols + 0.1) / 37), mode="bicubic")
        m_r = _official_resize_matrix(torch.arange(rows, dtype=torch.float64), 37)
        m_c = _official_resize_matrix(torch.arange(cols, dtype=torch.float64), 37)
        torch.testing.assert_close(m_r @ grid @ m_c.T, ref, atol=1e-12, rtol=0)
    keep = torch.tensor([True])
    eye = _official_resize_matrix(torch.arange(37, dtype=torch.float64), 37, keep)
    assert torch.equal(eye, torch.eye(37, dtype=torch.float64))


@pytest.mark.slow
def test_dynamic_shape_export_keeps_sizes_symbolic(source):
    """One exported graph serves several input sizes (no int() / frozen scale)."""
    from torch.export import Dim

    class Depth(torch.nn.Module):
        def __init__(self, teacher):
            super().__init__()
            self.teacher = teacher

        def forward(self, px):
            return self.teacher.depth_from_pixels(px)

    net = Depth(source).eval()
    ph, pw = Dim("ph", min=2, max=64), Dim("pw", min=2, max=64)
    ep = torch.export.export(net, (torch.randn(1, 3, 56, 70),), dynamic_shapes={"px": {2: 14 * ph, 3: 14 * pw}})
    for size in [(98, 42), (518, 518), (518, 686)]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(ep.module()(x), net(x), atol=1e-4, rtol=0)
