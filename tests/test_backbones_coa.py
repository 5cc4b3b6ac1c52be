"""CoA backbones (``coa``: the student as it trains, DEConv blocks; ``coa-r``:
re-parameterised) against the official YanZhang-zy/CoA code (see
tests/official_code.py for how the official code is reached), checkpoint
layouts, re-parameterisation, fusion points, errors. Tiny CPU inputs only."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from edgehaze import build_dehazer
from edgehaze.errors import CheckpointError
from edgehaze.models.backbones.coa import (
    CoA,
    coa,
    coa_r,
    nearest_exact_indices,
    normalise,
    reparameterise,
    reparameterise_state,
)
from edgehaze.models.registries import BACKBONES

sys.path.insert(0, str(Path(__file__).parent))
import make_official_refs  # noqa: E402
import official_code  # noqa: E402

torch.set_num_threads(2)
TOL = 1e-5  # relative: max |ours - official| / max |official|
FORMS = {"coa": (coa, False), "coa-r": (coa_r, True)}


def _official_file(state: dict, path: Path) -> Path:
    """The released layout: a bare ``torch.save(state_dict)`` (KD.py, EMA.py, reparam.py)."""
    torch.save(state, path)
    return path


def _shapes(model) -> dict:  # type: ignore[no-untyped-def]
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _meta_shapes(deploy: bool) -> dict:
    with torch.device("meta"):
        return _shapes(CoA(deploy=deploy))


@pytest.mark.parametrize("name", sorted(FORMS))
def test_committed_official_reference_reproduced_through_official_checkpoint(name, tmp_path):
    factory, deploy = FORMS[name]
    ref = torch.load(official_code.REFS / f"{name}.pt", weights_only=True)
    path = _official_file(official_code.seeded_state(_meta_shapes(deploy), ref["seed"]), tmp_path / "EMA.pth")
    model = factory(weights=path).eval().double()  # refs are float64 (make_official_refs)
    with torch.no_grad():
        out = model(ref["input"])
    assert ref["input"].shape[-2:] == (19, 23)  # not a multiple of 16: through the padding
    assert out.shape == ref["output"].shape
    assert official_code.relative_error(out, ref["output"]) < TOL


@pytest.mark.parametrize("name", sorted(FORMS))
@pytest.mark.parametrize("size", [(13, 21), (16, 32)])
def test_live_official_code_gives_same_output(name, size, tmp_path):
    pytest.importorskip("einops", reason="the official CoA code imports einops (dev extra)")
    got = make_official_refs.official_model(name, tmp_path)
    if got is None:
        pytest.skip("official YanZhang-zy/CoA mirror absent (set EDGEHAZE_OFFICIAL_CODE)")
    official, _ = got
    factory, deploy = FORMS[name]
    assert list(_shapes(official).items()) == list(_meta_shapes(deploy).items())  # names, order, shapes
    ours = factory(weights=_official_file(official.state_dict(), tmp_path / "w.pth")).eval()
    x = official_code.seeded_image(*size, seed=7)
    with torch.no_grad():
        assert official_code.relative_error(ours(x), make_official_refs.SPECS[name].run(official, x)) < TOL
        if size[0] % 16 == 0 and size[1] % 16 == 0:  # the official forward: output and the four distilled maps
            ours_out, ours_maps = ours.forward_official(normalise(x))
            off_out, off_maps = official(normalise(x))
            for a, b in zip([ours_out, *ours_maps], [off_out, *off_maps]):
                assert a.shape == b.shape and official_code.relative_error(a, b) < TOL


def test_registered_with_official_parameter_counts():
    with torch.device("meta"):
        train, deploy = BACKBONES.build("coa"), BACKBONES.build("coa-r")
    # counted with the official Student() and Student_x(); the paper's Table 1 says 3.75M for
    # CoA, which neither form (nor the 52.8M Res2Net-101 teacher) has
    assert sum(p.numel() for p in train.parameters()) == 2_997_544
    assert sum(p.numel() for p in deploy.parameters()) == 1_685_928
    assert train.arch == "coa" and deploy.arch == "coa-r" and train.build_kwargs() == {}
    shapes, shapes_r = _meta_shapes(False), _meta_shapes(True)
    assert shapes["conv_input.conv2d.weight"] == (8, 3, 11, 11)
    assert shapes["dense3.0.conv1.conv1_2.conv.weight"] == (64, 64, 3)  # the Conv1d of the horizontal difference
    assert shapes_r["dehaze.res0.conv2.weight"] == (128, 128, 3, 3)
    assert shapes["fusion4.up_convs.3.deconv.weight"] == (8, 4, 4, 4)
    assert shapes["fusion_1.down_convs.3.conv.weight"] == (64, 32, 4, 4)


def test_reparameterised_student_gives_the_same_output(tmp_path):
    torch.manual_seed(0)
    model = coa().eval()
    with torch.no_grad():  # non-trivial difference kernels and biases
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.05)
    deploy = reparameterise(model).eval()
    assert deploy.arch == "coa-r" and deploy.deploy
    x = torch.rand(2, 3, 21, 18)
    with torch.no_grad():
        assert torch.equal(deploy(x), model(x))  # the same sums in the same order
    # the release's reparam.py path: a training-form file -> a file coa-r loads
    path = _official_file(reparameterise_state(model.state_dict()), tmp_path / "EMA_r.pth")
    with torch.no_grad():
        assert torch.equal(coa_r(weights=path).eval()(x), model(x))


@pytest.mark.parametrize("size", [(19, 23), (5, 3), (16, 16)])
def test_any_size_same_size_output_and_fusion_point_shapes(size):
    torch.manual_seed(0)
    model = coa().eval()
    assert len(model.fusion_points()) == 9
    official_code.check_size_and_fusion_points(model, size, multiple=16)


def test_gated_fusion_starts_as_the_rgb_model_and_moves_with_depth():
    torch.manual_seed(0)
    model = build_dehazer("coa", depth="tiny", fusion="lite", depth_kwargs={"input_size": 28}).eval()
    assert len(model.fused_blocks()) == 9
    bare = coa().eval()
    bare.load_state_dict({k.replace(".block.", "."): v for k, v in model.backbone.state_dict().items()
                          if not any(f".{p}." in k for p in ("z1", "z2", "rdf"))})
    x = torch.rand(1, 3, 19, 23)
    with torch.no_grad():
        assert torch.equal(model(x), bare(x))
        for block in model.fused_blocks():
            block.z2.weight.add_(0.1)
        assert not torch.allclose(model(x), bare(x), atol=1e-4)


def test_wrong_form_or_bad_checkpoint_is_one_line_error(tmp_path):
    state = CoA().state_dict()
    partial = _official_file({k: v for k, v in state.items() if not k.startswith("fusion_1")}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="partial.pth: does not fit CoA.*missing keys.*--backbone-weights"):
        coa(weights=partial)
    deploy_file = _official_file(CoA(deploy=True).state_dict(), tmp_path / "EMA_r.pth")
    with pytest.raises(CheckpointError, match="EMA_r.pth: this is a re-parameterised CoA checkpoint.*'coa-r'"):
        coa(weights=deploy_file)
    with pytest.raises(CheckpointError, match="EMA.pth: this is a training-form CoA checkpoint.*'coa'"):
        coa_r(weights=_official_file(state, tmp_path / "EMA.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"nope")
    with pytest.raises(CheckpointError) as err:
        coa(weights=garbage)
    assert "garbage.pth" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="not found"):
        coa(weights=tmp_path / "missing.pth")


def test_upsampling_indices_are_pytorchs_nearest_exact():
    """The gather that replaces ``F.interpolate(mode='nearest-exact')`` (which
    PyTorch's ONNX exporter lacks) picks the same rows, at the official
    ``2h + 1`` output size and at others."""
    for h in range(1, 300):
        x = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1)
        for out in (2 * h + 1, h + 3, max(1, h // 2)):
            want = torch.nn.functional.interpolate(x, size=(out, 1), mode="nearest-exact").view(-1).long()
            assert torch.equal(nearest_exact_indices(h, out, x.device), want), (h, out)


@pytest.mark.slow  # ~25 s on 2 loaded cores (tracing the teacher too)
def test_exports_to_onnx_with_dynamic_sizes():
    ort = pytest.importorskip("onnxruntime")
    from export.onnx_export import export_module

    torch.manual_seed(0)
    model = build_dehazer("coa", depth="tiny", fusion="input-channel", depth_kwargs={"input_size": 28}).eval()
    with torch.no_grad():
        for block in model.fused_blocks():
            block.z2.weight.add_(0.05)  # depth moves the output
    onnx_model = export_module(model, (torch.rand(1, 3, 35, 50),), ["x"], ["y"], dynamic=True)
    sess = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    for h, w in ((21, 33), (64, 40)):  # neither is the trace size
        x = torch.rand(1, 3, h, w)
        with torch.no_grad():
            want = model(x)
        got = torch.from_numpy(sess.run(None, {"x": x.numpy()})[0])
        assert got.shape == want.shape and float((got - want).abs().max()) < 1e-3 * float(want.abs().max())
