"""Fusion block and DepthGuidedDehazer: the properties stage 2 relies on."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgehaze.models.contracts import DepthProvider
from edgehaze.models.dehazer import DepthGuidedDehazer, build_backbone, nearest_level
from edgehaze.models.fusion import (
    FUSION_VARIANTS,
    FusedBlock,
    FusionConfig,
    RGBDepthFusion,
    WindowSelfAttention,
    resolve_fusion,
)
from edgehaze.errors import ConfigError


class ConvDepth(DepthProvider):
    """A small trainable-free depth provider with two feature levels."""

    feature_channels = (8, 12)
    feature_strides = (4.0, 8.0)
    model_id = "test-conv"

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 12, 3, padding=1)

    def features(self, x):
        a = self.c1(F.avg_pool2d(x, 4, ceil_mode=True))
        return [a, self.c2(F.avg_pool2d(a, 2, ceil_mode=True))]


def _randomise(module: nn.Module, seed: int = 0) -> None:
    """Give every parameter random values (so the bare output is not trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _fused_pair(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    bare = build_backbone(arch)
    _randomise(bare, seed)
    bare.eval()
    reference = {k: v.clone() for k, v in bare.state_dict().items()}
    fused = build_backbone(arch)
    fused.load_state_dict(reference)
    model = DepthGuidedDehazer(fused, ConvDepth(), "full").eval()
    return bare, model


@pytest.mark.parametrize("size", [(1, 3, 37, 53), (2, 3, 29, 18), (1, 3, 64, 48)])
def test_zero_init_equals_bare_backbone_edge(size):
    bare, model = _fused_pair("edge-s")
    x = torch.rand(*size)
    with torch.no_grad():
        assert torch.equal(model(x), bare(x))


def test_zero_init_equals_bare_backbone_dehazeformer():
    pytest.importorskip("edgehaze.models.backbones.dehazeformer")
    bare, model = _fused_pair("dehazeformer-t", seed=1)
    x = torch.rand(1, 3, 23, 31)
    with torch.no_grad():
        assert torch.equal(model(x), bare(x))


def test_fused_model_differs_once_z2_moves():
    bare, model = _fused_pair("edge-s")
    x = torch.rand(1, 3, 32, 40)
    with torch.no_grad():
        for block in model.fused_blocks():
            block.z1.weight.normal_(0, 0.1)
            block.z2.weight.normal_(0, 0.1)
        assert not torch.allclose(model(x), bare(x))


def test_gradients_reach_z2_first_then_z1():
    _, model = _fused_pair("edge-s")
    model.train()
    x, target = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    block = model.fused_blocks()[0]

    F.l1_loss(model(x), target).backward()
    assert block.z2.weight.grad is not None and block.z2.weight.grad.abs().sum() > 0
    assert block.z1.weight.grad is None or block.z1.weight.grad.abs().sum() == 0
    opt.step()
    opt.zero_grad()

    F.l1_loss(model(x), target).backward()
    assert block.z1.weight.grad is not None and block.z1.weight.grad.abs().sum() > 0


def test_fusion_points_wrap_declared_modules_and_pick_nearest_level():
    _, model = _fused_pair("edge-s")
    names = [p.name for p in model.points]
    assert names == ["stage1", "stage2"]
    assert isinstance(model.backbone.stage1, FusedBlock)
    assert model.levels == [0, 1]
    assert nearest_level(16.0, [3.5, 7, 14, 28]) == 2


def test_bare_model_has_no_fusion_and_unknown_point_is_error():
    model = DepthGuidedDehazer(build_backbone("edge-s"), None)
    assert model.fused_blocks() == []
    with pytest.raises(ConfigError, match="unknown fusion point"):
        DepthGuidedDehazer(build_backbone("edge-s"), ConvDepth(), points=["nope"])


def test_persistent_state_dict_drops_frozen_teacher_only():
    _, model = _fused_pair("edge-s")
    assert not any(k.startswith("depth.") for k in model.persistent_state_dict())
    model.depth.trainable = True
    assert any(k.startswith("depth.") for k in model.persistent_state_dict())


def test_ablation_switches_change_the_module_as_stated():
    c = 16
    full = RGBDepthFusion(c, FUSION_VARIANTS["full"])
    assert all(m is not None for m in (full.cfe, full.dai, full.acg, full.ffn, full.asg))
    row1 = RGBDepthFusion(c, FUSION_VARIANTS["cfe-dai"])
    assert row1.cfe is not None and row1.dai is not None
    assert row1.acg is None and row1.ffn is None and row1.asg is None
    row2 = RGBDepthFusion(c, FUSION_VARIANTS["cfe-dai-asg"])
    assert row2.asg is not None and row2.acg is None and row2.ffn is None
    assert sum(p.numel() for p in row1.parameters()) < sum(p.numel() for p in row2.parameters())
    assert sum(p.numel() for p in row2.parameters()) < sum(p.numel() for p in full.parameters())

    def zero(m):
        return isinstance(m, nn.Conv2d) and not m.weight.any() and not m.bias.any()

    block = lambda cfg: FusedBlock(nn.Identity(), c, 8, cfg)  # noqa: E731
    assert zero(block(FusionConfig()).z1) and zero(block(FusionConfig()).z2)
    no_pre = block(FUSION_VARIANTS["post-zc"])
    assert not zero(no_pre.z1) and zero(no_pre.z2)
    no_post = block(FUSION_VARIANTS["pre-zc"])
    assert zero(no_post.z1) and not zero(no_post.z2)
    # without pre-ZC and with equal widths, Z1 is the identity
    assert isinstance(FusedBlock(nn.Identity(), c, c, FUSION_VARIANTS["no-zc"]).z1, nn.Identity)


def test_asg_blend_is_convex_between_fused_and_rgb():
    torch.manual_seed(0)
    rdf = RGBDepthFusion(8, FusionConfig(cfe=False, dai=False, ffn=False, acg=False, asg=True))
    rgb, depth = torch.rand(1, 8, 6, 6), torch.rand(1, 8, 6, 6)
    with torch.no_grad():
        out = rdf(rgb, depth)
        fused = rgb + depth
        m = torch.sigmoid(rdf.asg(fused))
        assert torch.allclose(out, m * fused + (1 - m) * rgb)


def test_window_attention_covering_map_is_global_attention():
    torch.manual_seed(0)
    attn = WindowSelfAttention(8, heads=2, window=8)
    x = torch.rand(1, 8, 8, 8)
    with torch.no_grad():
        out = attn(x)
        # global reference on the same weights
        qkv = attn.qkv(x).reshape(1, 3, 2, 4, 64)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        a = torch.softmax(q.transpose(-2, -1) @ k * 4 ** -0.5, dim=-1)
        ref = attn.proj((a @ v.transpose(-2, -1)).transpose(-2, -1).reshape(1, 8, 8, 8))
    assert torch.allclose(out, ref, atol=1e-6)
    # odd sizes are padded and cropped back
    assert attn(torch.rand(1, 8, 11, 13)).shape == (1, 8, 11, 13)


def test_resolve_fusion_rejects_unknown_names_and_keys():
    assert resolve_fusion({"variant": "cfe-dai", "window": 4}).window == 4
    with pytest.raises(ConfigError, match="unknown fusion variant"):
        resolve_fusion("nope")
    with pytest.raises(ConfigError, match="unknown fusion option"):
        resolve_fusion({"windw": 4})


def test_window_attention_exports_with_dynamic_sizes(tmp_path):
    """The padding must not be frozen at the trace size (dynamic ONNX graphs)."""
    import numpy as np
    import onnxruntime as ort

    torch.manual_seed(0)
    attn = WindowSelfAttention(8, heads=2, window=4).eval()
    path = tmp_path / "attn.onnx"
    torch.onnx.export(
        attn,
        (torch.rand(1, 8, 8, 8),),
        str(path),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {2: "h", 3: "w"}, "y": {2: "h", 3: "w"}},
        dynamo=False,
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for h, w in [(8, 8), (11, 13), (5, 6)]:
        x = torch.rand(1, 8, h, w)
        with torch.no_grad():
            ref = attn(x).numpy()
        got = sess.run(None, {"x": x.numpy()})[0]
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-5)
