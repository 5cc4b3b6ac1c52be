"""MB-TaylorFormer against the official FVL2020 code (see tests/official_code.py),
checkpoint layout, fusion points. Tiny CPU inputs only."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from edgehaze.errors import CheckpointError
from edgehaze.models.backbones.mb_taylorformer import MBTaylorFormer, mb_taylorformer_b
from edgehaze.models.registries import BACKBONES

sys.path.insert(0, str(Path(__file__).parent))
import make_official_refs  # noqa: E402
import official_code  # noqa: E402

torch.set_num_threads(2)
TOL = 1e-5


def _shapes(model) -> dict:  # type: ignore[no-untyped-def]
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_committed_official_reference_reproduced_through_official_checkpoint(tmp_path):
    ref = torch.load(official_code.REFS / "mb-taylorformer-b.pt", weights_only=True)
    path = tmp_path / "ITS-MB-TaylorFormer-B.pth"
    torch.save({"params": official_code.seeded_state(_shapes(MBTaylorFormer()), ref["seed"])}, path)
    with torch.no_grad():
        out = mb_taylorformer_b(weights=path).eval().double()(ref["input"])  # refs are float64 (make_official_refs)
    assert out.shape == ref["input"].shape
    assert official_code.relative_error(out, ref["output"]) < TOL


def test_live_official_code_gives_same_output(tmp_path):
    got = make_official_refs.official_model("mb-taylorformer-b", tmp_path)
    if got is None:
        pytest.skip("official FVL2020/ICCV-2023-MB-TaylorFormer mirror absent (set EDGEHAZE_OFFICIAL_CODE)")
    pytest.importorskip("einops", reason="the official code needs einops (dev extra)")
    official, _ = got
    path = tmp_path / "w.pth"
    torch.save({"params": official.state_dict()}, path)
    ours = mb_taylorformer_b(weights=path).eval()
    x = official_code.seeded_image(17, 26, seed=5)
    with torch.no_grad():
        want = make_official_refs.SPECS["mb-taylorformer-b"].run(official, x)
        assert official_code.relative_error(ours(x), want) < TOL


def test_variants_registered_with_official_parameter_counts():
    with torch.device("meta"):
        b, large = BACKBONES.build("mb-taylorformer-b"), BACKBONES.build("mb-taylorformer-l")
    # counted on the official code with the Options/*.yml settings (paper Table 1: 2.66M for B)
    assert sum(p.numel() for p in b.parameters()) == 2_676_520
    assert sum(p.numel() for p in large.parameters()) > sum(p.numel() for p in b.parameters())
    assert _shapes(b)["patch_embed_encoder_level1.patch_embeds.0.patch_conv.dcn.weight"] == (24, 1, 3, 3)


def test_fusion_points_shapes_and_any_size():
    torch.manual_seed(0)
    model = mb_taylorformer_b().eval()
    seen = {}
    hooks = [model.get_submodule(p.name).register_forward_hook(
        lambda _m, _i, out, n=p.name: seen.__setitem__(n, tuple(out.shape))) for p in model.fusion_points()]
    with torch.no_grad():
        y = model(official_code.seeded_image(11, 13, seed=3))
    for h in hooks:
        h.remove()
    assert y.shape == (1, 3, 11, 13) and torch.isfinite(y).all()
    for p in model.fusion_points():
        assert seen[p.name] == (1, p.channels, 16 // p.stride, 16 // p.stride), p.name


def test_wrong_checkpoint_is_one_line_error(tmp_path):
    path = tmp_path / "oknet.pkl"
    torch.save({"params": {"x": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="oknet.pkl: does not fit mb-taylorformer-b.*--backbone-weights"):
        mb_taylorformer_b(weights=path)
