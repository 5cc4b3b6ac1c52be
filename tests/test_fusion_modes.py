"""The depth baselines as fusion modes (input-channel, selfpromer): start equal
to the RGB model, the depth channel aligned with the image on every backbone,
prompt built from the depth difference, checkpoints, training with the
ground truth's depth, ONNX export with dynamic sizes. Tiny CPU inputs only."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from edgehaze import build_dehazer
from edgehaze.checkpoint import load_dehazer, save_dehazer
from edgehaze.errors import ConfigError
from edgehaze.models.dehazer import build_backbone
from edgehaze.models.fusion import FusionConfig
from edgehaze.models.fusion_input import InputChannelBlock
from edgehaze.models.fusion_modes import (
    InputChannelConfig,
    SelfPromerConfig,
    max_normalised,
    minmax_normalised,
    resolve_fusion_mode,
    teacher_depth,
)
from edgehaze.models.fusion_prompt import PromptFusedBlock

torch.set_num_threads(1)
TINY = {"input_size": 28}
MODES = ("input-channel", "selfpromer")
BACKBONES = ("edge-xs", "dehazeformer-t", "oknet", "mb-taylorformer-b", "sgdn", "coa")


def _model(backbone: str, fusion, seed: int = 0):  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    return build_dehazer(backbone, depth="tiny", fusion=fusion, depth_kwargs=TINY).eval()


def _perturb(module: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * scale)


def test_mode_names_and_options_resolve_and_bad_ones_name_the_key():
    assert resolve_fusion_mode("input-channel") == InputChannelConfig()
    assert resolve_fusion_mode({"mode": "selfpromer", "layers": 2}) == SelfPromerConfig(layers=2)
    assert resolve_fusion_mode("lite") == resolve_fusion_mode({"mode": "gated", "variant": "lite"})
    assert isinstance(resolve_fusion_mode(None), FusionConfig)
    for cfg in (InputChannelConfig(), SelfPromerConfig(rounds=2)):
        assert resolve_fusion_mode(cfg.to_dict()) == cfg  # what a checkpoint stores
    with pytest.raises(ConfigError, match="unknown option.*'heads'.*selfpromer.*model.fusion"):
        resolve_fusion_mode({"mode": "selfpromer", "heads": 4})
    with pytest.raises(ConfigError, match="unknown fusion mode 'udp'"):
        resolve_fusion_mode({"mode": "udp"})
    with pytest.raises(ConfigError, match="rounds.*>= 1"):
        SelfPromerConfig(rounds=0)
    with pytest.raises(ConfigError, match="input-channel"):
        resolve_fusion_mode("inputchannel")


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_starts_exactly_as_the_rgb_backbone(backbone, mode):
    model = _model(backbone, mode)
    assert model.fused_blocks(), "no block was wrapped"
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # a non-trivial RGB model (edge's head starts at the identity)
        for name, p in model.backbone.named_parameters():
            if not any(f".{part}." in name for part in ("z1", "z2", "rdf")):
                p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    bare = build_backbone(backbone).eval()
    bare.load_state_dict({k.replace(".block.", "."): v for k, v in model.backbone.state_dict().items()
                          if not any(f".{p}." in k for p in ("z1", "z2", "rdf"))})
    x = torch.rand(2, 3, 19, 23)
    with torch.no_grad():
        fused, rgb = model(x), bare(x)
        assert fused.shape == x.shape
        assert torch.equal(fused, rgb)
        # the equality is not vacuous: once the zero-initialised layer moves, depth changes the output
        for block in model.fused_blocks():
            block.z2.weight.add_(0.1)
        assert not torch.allclose(model(x), rgb, atol=1e-4)


@pytest.mark.parametrize("backbone", BACKBONES + ("edge-s",))
def test_input_view_is_what_each_input_conv_receives(backbone):
    """The depth channel goes through the same padding/resampling/range as the image."""
    torch.manual_seed(0)
    net = build_backbone(backbone).eval()
    seen = {}
    for p in net.input_points():
        net.get_submodule(p.name).register_forward_pre_hook(
            lambda _m, args, n=p.name: seen.setdefault(n, args[0].clone()))
    x = torch.rand(1, 3, 19, 23)
    with torch.no_grad():
        net(x)
        assert set(seen) == {p.name for p in net.input_points()}
        for p in net.input_points():
            assert torch.equal(net.input_view(p.name, x), seen[p.name]), p.name


def test_input_channel_is_a_four_channel_first_conv():
    model = _model("oknet", "input-channel")
    _perturb(model, 1)
    block = model.backbone.get_submodule("feat_extract.0.main.0")
    assert isinstance(block, InputChannelBlock) and block.z2.bias is None
    x, d = torch.rand(1, 3, 12, 16), torch.rand(1, 1, 12, 16)
    conv4 = torch.nn.Conv2d(4, block.block.out_channels, 3, padding=1)
    with torch.no_grad():
        conv4.weight.copy_(torch.cat([block.block.weight, block.z2.weight], dim=1))
        conv4.bias.copy_(block.block.bias)
        block.set_depth(d)
        assert torch.allclose(block(x), conv4(torch.cat([x, d], dim=1)), atol=1e-5)
        block.set_depth(None)
    # the dehazer hands it the teacher's map, min-max normalised per image
    img = torch.rand(2, 3, 12, 16)
    (feat,) = model.depth_features(img)
    assert feat.shape == (2, 1, 12, 16)
    assert torch.allclose(feat.amin(dim=(1, 2, 3)), torch.zeros(2)) and torch.allclose(feat.amax(dim=(1, 2, 3)), torch.ones(2))
    assert torch.allclose(feat, minmax_normalised(teacher_depth(model.depth, img)))


def test_input_channel_extension_learns_from_the_first_step():
    model = _model("dehazeformer-t", "input-channel").train()  # (edge's head starts at zero: no gradient at all)
    x = torch.rand(2, 3, 16, 16)
    F.l1_loss(model(x), torch.rand_like(x)).backward()
    (block,) = model.fused_blocks()
    assert block.z2.weight.grad is not None and block.z2.weight.grad.abs().sum() > 0


def test_selfpromer_prompt_is_the_depth_difference_times_the_features():
    model = _model("dehazeformer-t", "selfpromer")
    (block,) = model.fused_blocks()
    assert isinstance(block, PromptFusedBlock) and [p.name for p in model.points] == ["layer3"]
    feat = torch.randn(2, model.points[0].channels, 5, 6)
    same = torch.rand(2, 1, 19, 23).repeat(1, 2, 1, 1)  # hazy depth == clear depth: no haze residual
    assert torch.equal(block.prompt(feat, same), torch.zeros_like(feat))
    differ = torch.rand(2, 2, 19, 23)
    enc = block.z1(torch.cat([differ[:, :1], differ[:, 1:]]))
    want = F.interpolate((enc[:2] - enc[2:]).abs(), size=(5, 6), mode="bilinear", align_corners=False) * feat
    assert torch.allclose(block.prompt(feat, differ), want)


def test_selfpromer_depth_pair_uses_the_reference_or_the_models_own_first_pass():
    model = _model("edge-xs", "selfpromer")
    _perturb(model, 2)
    hazy, clear = torch.rand(1, 3, 20, 24), torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        (pair,) = model.depth_features(hazy, reference=clear)
        assert pair.shape == (1, 2, 20, 24)
        assert torch.allclose(pair[:, :1], max_normalised(teacher_depth(model.depth, hazy)), atol=1e-6)
        assert torch.allclose(pair[:, 1:], max_normalised(teacher_depth(model.depth, clear)), atol=1e-6)
        (own,) = model.depth_features(hazy)
        first = model.backbone(hazy).clamp(0, 1)  # the prompt-free output
        assert torch.allclose(own[:, 1:], max_normalised(teacher_depth(model.depth, first)), atol=1e-6)
        # rounds: the second round dehazes the first round's output
        two = _model("edge-xs", {"mode": "selfpromer", "rounds": 2})
        two.load_state_dict(model.state_dict())
        assert torch.allclose(two(hazy), model(model(hazy)), atol=1e-6)


def test_baselines_need_a_depth_map_and_declared_points():
    with pytest.raises(ConfigError, match="needs a depth map.*student-s"):
        build_dehazer("edge-xs", depth="student-s", fusion="input-channel",
                      depth_kwargs={"widths": [8, 16, 16, 16], "blocks": [1, 1, 1, 1]})
    with pytest.raises(ConfigError, match="unknown input point.*'stage1'.*declared: \\['stem.0'\\]"):
        build_dehazer("edge-xs", depth="tiny", fusion="input-channel", points=["stage1"], depth_kwargs=TINY)


@pytest.mark.parametrize("mode", [*MODES, {"mode": "selfpromer", "layers": 2, "rounds": 2}])
def test_checkpoint_round_trip_rebuilds_the_same_model(mode, tmp_path):
    model = _model("edge-xs", mode)
    _perturb(model, 3)
    path = save_dehazer(tmp_path / "m.safetensors", model)
    again, meta = load_dehazer(path)
    assert meta["build"]["fusion"] == model.fusion_cfg.to_dict()
    assert again.fusion_cfg == model.fusion_cfg and [p.name for p in again.points] == [p.name for p in model.points]
    x = torch.rand(1, 3, 17, 21)
    with torch.no_grad():
        assert torch.equal(again.eval()(x), model(x))


@pytest.mark.parametrize("mode", MODES)
def test_fused_stage_trains_from_stage1_with_ground_truth_depth(mode, tmp_path):
    from edgehaze.data.procedural import make_procedural_dataset
    from edgehaze.train.config import TrainConfig, load_config
    from edgehaze.train.teacher import DepthFeatureCache, reference_depth_kwargs, run_training

    data = tmp_path / "data"
    make_procedural_dataset(data, n_train=4, n_test=1, size=(32, 32), seed=3)
    (tmp_path / "cfg.yaml").write_text(f"""
name: t
out_dir: {tmp_path / 'run'}
stages: [rgb, fused]
model: {{backbone: edge-xs, depth: tiny, depth_kwargs: {{input_size: 28}}, fusion: {mode}}}
data: {{root: {data}, layout: dehazeformer, crop: 24, flip: true, workers: 0}}
train: {{lr: 3.0e-3, weight_decay: 0.0, batch_size: 2, val_every: 1000, log_every: 1, threads: 1, progress: false,
         depth_cache: true}}
rgb: {{steps: 2, scheduler: cosine, eta_min: 1.0e-5}}
fused: {{steps: 2, lr: 1.0e-3, scheduler: cosine_restarts, restart_every: 2}}
""")
    cfg = load_config(tmp_path / "cfg.yaml", TrainConfig, [])
    results = run_training(cfg)
    fused, meta = load_dehazer(results["fused"].last_path)
    assert meta["build"]["fusion"]["mode"] == mode and fused.fused_blocks()
    cached = sorted((tmp_path / "run" / "depth_cache").rglob("*.safetensors"))
    assert cached, "the whole-image depth maps were cached"
    # training hands selfpromer the ground truth's depth; the cache of a mode never serves another
    batch = {"hazy": torch.rand(2, 3, 8, 8), "gt": torch.rand(2, 3, 8, 8)}
    kwargs = reference_depth_kwargs(fused, batch, [1])
    assert (mode == "selfpromer") == ("reference" in kwargs)
    if kwargs:
        assert torch.equal(kwargs["reference"], batch["gt"][[1]])
    keys = {DepthFeatureCache(tmp_path, fused.depth, None, mode=m).teacher_key for m in ("gated", mode)}
    assert len(keys) == 2


@pytest.mark.slow  # ~30 s each on 2 loaded cores (export, parity at several sizes)
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_exports_to_onnx_with_dynamic_sizes(mode, tmp_path):
    pytest.importorskip("onnxruntime")
    from edgehaze.export import export_checkpoint

    model = _model("edge-xs", mode)
    _perturb(model, 4, scale=0.02)
    path = save_dehazer(tmp_path / "m.safetensors", model)
    res = export_checkpoint(path, out=tmp_path / "export", log=lambda _m: None, progress=False)
    assert res.parity["uint8_max_diff"] <= 1 and res.parity["float_max_abs"] < 1e-4
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(str(res.files["onnx"]), providers=["CPUExecutionProvider"])
    for h, w in ((37, 45), (64, 52)):  # neither is the trace size
        img = np.random.default_rng(h).integers(0, 256, size=(1, h, w, 3), dtype=np.uint8)
        got = sess.run(None, {sess.get_inputs()[0].name: img})[0]
        with torch.no_grad():
            want = model(torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255)
        want = torch.round(want.clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        assert got.shape == want.shape and np.abs(got.astype(int) - want.astype(int)).max() <= 1
