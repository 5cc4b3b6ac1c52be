"""DehazeFormer backbone: official checkpoint layout, any-size input, ranges,
fusion points, and clear errors for wrong files. Tiny CPU inputs only."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from edgehaze.errors import CheckpointError
from edgehaze.models.backbones.dehazeformer import (
    DehazeFormer,
    dehazeformer_s,
    dehazeformer_t,
    load_official_dehazeformer_state,
    reflect_pad,
)
from edgehaze.models.registries import BACKBONES

torch.set_num_threads(2)

ODD = (19, 23)


def _perturbed(model: DehazeFormer, seed: int = 0) -> DehazeFormer:
    """Move every parameter off its init constant (zero biases, RLN 1/0), so a
    key that failed to load would show in the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _image(h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _save_official(state: dict, path) -> None:
    """The layout of the released files: DataParallel keys under 'state_dict'."""
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, path)


@pytest.fixture(scope="module")
def tiny() -> DehazeFormer:
    torch.manual_seed(0)
    return _perturbed(dehazeformer_t())


def test_official_checkpoint_loads_and_reproduces_output(tiny, tmp_path):
    path = tmp_path / "dehazeformer-t.pth"
    _save_official(tiny.state_dict(), path)
    loaded = dehazeformer_t(weights=str(path)).eval()
    x = _image(*ODD)
    with torch.no_grad():
        assert torch.equal(loaded(x), tiny(x))
    for k, v in tiny.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_bare_state_dicts_load_with_or_without_module_prefix(tiny, tmp_path):
    bare = tmp_path / "bare.pth"
    torch.save(tiny.state_dict(), bare)
    prefixed = tmp_path / "prefixed.pth"
    torch.save({"module." + k: v for k, v in tiny.state_dict().items()}, prefixed)
    assert load_official_dehazeformer_state(bare).keys() == tiny.state_dict().keys()
    assert load_official_dehazeformer_state(prefixed).keys() == tiny.state_dict().keys()
    x = _image(*ODD)
    with torch.no_grad():
        assert torch.equal(dehazeformer_t(weights=prefixed).eval()(x), tiny(x))


def test_relative_position_buffers_are_official_keys_and_may_be_absent(tiny, tmp_path):
    state = tiny.state_dict()
    buffers = [k for k in state if k.endswith("relative_positions")]
    # T: layer2 has attention in its last 2 of 4 blocks, layer3 in all 4
    assert buffers == [f"layer2.blocks.{i}.attn.attn.relative_positions" for i in (2, 3)] + [
        f"layer3.blocks.{i}.attn.attn.relative_positions" for i in range(4)
    ]
    assert state[buffers[0]].shape == (64, 64, 2)
    path = tmp_path / "no-buffers.pth"
    _save_official({k: v for k, v in state.items() if k not in buffers}, path)
    x = _image(*ODD)
    with torch.no_grad():
        assert torch.equal(dehazeformer_t(weights=path).eval()(x), tiny(x))


def test_official_parameter_names_per_variant(tiny):
    t = tiny.state_dict()
    assert t["patch_embed.proj.weight"].shape == (24, 3, 3, 3)
    assert t["layer1.blocks.0.attn.conv.weight"].shape == (24, 1, 5, 5)  # DWConv
    assert "layer1.blocks.0.norm1.meta1.weight" not in t  # no attention in T's layer1
    assert t["layer2.blocks.2.norm1.meta1.weight"].shape == (48, 1, 1, 1)
    assert t["layer2.blocks.2.attn.QK.weight"].shape == (96, 48, 1, 1)
    assert "layer2.blocks.1.attn.QK.weight" not in t
    assert t["layer3.blocks.0.attn.attn.meta.2.weight"].shape == (6, 256)
    assert t["fusion1.mlp.2.weight"].shape == (96, 6, 1, 1)
    assert t["patch_split1.proj.0.weight"].shape == (192, 96, 1, 1)
    assert t["patch_unembed.proj.0.weight"].shape == (4, 24, 3, 3)
    with torch.device("meta"):
        m = BACKBONES.build("dehazeformer-m").state_dict()
    assert m["layer1.blocks.11.attn.conv.0.weight"].shape == (24, 24, 3, 3)  # Conv
    assert "layer1.blocks.0.attn.V.weight" not in m  # conv-only Conv block: no V / proj
    assert m["layer1.blocks.9.attn.V.weight"].shape == (24, 24, 1, 1)  # last 1/4 of 12 blocks


@pytest.mark.parametrize("size", [ODD, (8, 8), (33, 41), (5, 3), (1, 2)])
def test_any_size_gives_same_size_output(tiny, size):
    x = _image(*size)
    with torch.no_grad():
        y = tiny(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


def test_forward_is_official_forward_in_unit_range(tiny):
    x = _image(*ODD)
    with torch.no_grad():
        official = tiny.forward_official(2 * x - 1)
        assert torch.allclose(tiny(x), (official + 1) / 2, rtol=0, atol=1e-6)


def test_gradients_reach_every_parameter_on_odd_input(tiny):
    model = copy.deepcopy(tiny).train()
    model(_image(*ODD)).square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad


def test_fusion_points_are_the_five_stages_with_declared_shapes(tiny):
    points = tiny.fusion_points()
    assert [(p.name, p.channels, p.stride) for p in points] == [
        ("layer1", 24, 1), ("layer2", 48, 2), ("layer3", 96, 4), ("layer4", 48, 2), ("layer5", 24, 1),
    ]
    seen = {}
    handles = [
        tiny.get_submodule(p.name).register_forward_hook(
            lambda _m, _i, out, name=p.name: seen.__setitem__(name, tuple(out.shape))
        )
        for p in points
    ]
    try:
        with torch.no_grad():
            tiny(_image(*ODD))
    finally:
        for h in handles:
            h.remove()
    # the net works on the image reflect-padded to a multiple of 4 (19x23 -> 20x24)
    h, w = (4 * math.ceil(s / 4) for s in ODD)
    for p in points:
        assert seen[p.name] == (1, p.channels, h // p.stride, w // p.stride), p.name


def test_wrapping_a_fusion_point_changes_the_output(tiny):
    """Fusion is plugged in by replacing the named module: forward must route
    through the attribute."""

    class AddOne(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x) + 1.0

    model = copy.deepcopy(tiny)
    x = _image(*ODD)
    with torch.no_grad():
        before = model(x)
        model.layer3 = AddOne(model.layer3)
        after = model(x)
    assert not torch.allclose(before, after)


def test_wrong_variant_checkpoint_names_file_variants_and_fix(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "dehazeformer-s.pth"
    _save_official(dehazeformer_s().state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        dehazeformer_t(weights=path)
    msg = str(err.value)
    assert str(path) in msg
    assert "does not fit dehazeformer-t" in msg
    assert "it is a dehazeformer-s checkpoint" in msg and "--backbone dehazeformer-s" in msg


def test_unknown_layout_and_bad_files_are_checkpoint_errors(tiny, tmp_path):
    partial = tmp_path / "partial.pth"
    state = tiny.state_dict()
    _save_official({k: v for k, v in state.items() if not k.startswith("layer5")}, partial)
    with pytest.raises(CheckpointError, match="missing keys.*matches no official DehazeFormer variant"):
        dehazeformer_t(weights=partial)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth.*--backbone-weights") as err:
        dehazeformer_t(weights=garbage)
    assert "\n" not in str(err.value)  # the CLI prints it on one line

    not_tensors = tmp_path / "config.pth"
    torch.save({"state_dict": {"module.lr": 0.1}}, not_tensors)
    with pytest.raises(CheckpointError, match="not a DehazeFormer checkpoint"):
        dehazeformer_t(weights=not_tensors)


def test_missing_weights_file_names_the_flag(tmp_path):
    missing = tmp_path / "nowhere" / "dehazeformer-t.pth"
    with pytest.raises(CheckpointError) as err:
        dehazeformer_t(weights=missing)
    assert str(missing) in str(err.value) and "--backbone-weights" in str(err.value)


# Parameter counts of the official models (IDKiro/DehazeFormer
# models/dehazeformer.py, counted with the official code; the README lists
# none; the depth-fusion paper's "4.63M" DehazeFormer is the M variant).
OFFICIAL_PARAMS = {
    "dehazeformer-t": 687_404,
    "dehazeformer-s": 1_284_884,
    "dehazeformer-b": 2_517_612,
    "dehazeformer-m": 4_635_952,
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_variants_registered_with_official_parameter_counts(name):
    with torch.device("meta"):
        model = BACKBONES.build(name)
        rebuilt = BACKBONES.build(model.arch, **model.build_kwargs())
    assert model.arch == name
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name]
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


def test_reflect_pad_is_torch_reflect_where_legal_and_extends_it():
    x = torch.randn(1, 2, 5, 6)
    assert torch.equal(reflect_pad(x, 4, 5, 3, 2), F.pad(x, (4, 5, 3, 2), mode="reflect"))
    big = reflect_pad(x, 4, 7, 4, 7)  # 7 >= 5 rows: torch alone refuses
    assert big.shape == (1, 2, 16, 17)
    assert torch.equal(big[..., 4:9, 4:10], x)
    # the first legal step is plain reflect; the rest reflects again beyond it
    assert torch.equal(big[..., 4:9, :15], F.pad(x, (4, 5, 0, 0), mode="reflect"))
    one = torch.randn(1, 1, 1, 1)
    assert torch.equal(reflect_pad(one, 2, 1, 0, 3), one.expand(1, 1, 4, 4))


def test_truncated_checkpoint_is_a_one_line_checkpoint_error(tiny, tmp_path):
    good = tmp_path / "good.pth"
    _save_official(tiny.state_dict(), good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError) as err:
        dehazeformer_t(weights=cut)
    assert "cut.pth" in str(err.value) and "\n" not in str(err.value)
