"""OKNet backbone against the official c-yn/OKNet code (see
tests/official_code.py for how the official code is reached), checkpoint
layout, fusion points, errors. Tiny CPU inputs only."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from edgehaze.errors import CheckpointError
from edgehaze.models.backbones.oknet import OKNet, oknet
from edgehaze.models.registries import BACKBONES

sys.path.insert(0, str(Path(__file__).parent))
import make_official_refs  # noqa: E402
import official_code  # noqa: E402

torch.set_num_threads(2)
TOL = 1e-5  # relative: max |ours - official| / max |official|


def _official_file(model: OKNet, state: dict, path: Path) -> Path:
    """The released layout (eval.py: ``torch.load(...)['model']``)."""
    assert state.keys() == model.state_dict().keys()
    torch.save({"model": state}, path)
    return path


def _shapes(model) -> dict:  # type: ignore[no-untyped-def]
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def shapes() -> dict:
    with torch.device("meta"):
        return _shapes(OKNet())


def test_committed_official_reference_reproduced_through_official_checkpoint(shapes, tmp_path):
    ref = torch.load(official_code.REFS / "oknet.pt", weights_only=True)
    path = _official_file(OKNet(), official_code.seeded_state(shapes, ref["seed"]), tmp_path / "oknet.pkl")
    model = oknet(weights=path).eval().double()  # refs are float64 (make_official_refs)
    with torch.no_grad():
        out = model(ref["input"])
    assert out.shape == ref["output"].shape == ref["input"].shape
    assert official_code.relative_error(out, ref["output"]) < TOL


@pytest.mark.parametrize("size", [(21, 18), (12, 12)])
def test_live_official_code_gives_same_output(tmp_path, size):
    got = make_official_refs.official_model("oknet", tmp_path)
    if got is None:
        pytest.skip("official c-yn/OKNet mirror absent (set EDGEHAZE_OFFICIAL_CODE)")
    official, _ = got
    assert _shapes(official) == _shapes(OKNet())  # same names and shapes: official files load
    ours = oknet(weights=_official_file(OKNet(), official.state_dict(), tmp_path / "w.pkl")).eval()
    x = official_code.seeded_image(*size, seed=7)
    with torch.no_grad():
        want = make_official_refs.SPECS["oknet"].run(official, x)
        assert official_code.relative_error(ours(x), want) < TOL
        # the official multi-output forward on a padded input, all three scales
        xp = torch.nn.functional.pad(x, (0, (4 - size[1] % 4) % 4, 0, (4 - size[0] % 4) % 4), "reflect")
        for a, b in zip(ours.forward_official(xp), official(xp)):
            assert official_code.relative_error(a, b) < TOL


def test_registered_with_official_parameter_count(shapes):
    with torch.device("meta"):
        model = BACKBONES.build("oknet")
    # 4,722,857 = the official build_net(), counted with the official code. The paper's
    # Table 1 says 4.42M: about the count without FGM.conv (295,168 parameters the
    # official forward never uses) - 4,427,689.
    assert sum(p.numel() for p in model.parameters()) == 4_722_857
    assert sum(p.numel() for p in model.bottelneck.fgm.conv.parameters()) == 295_168
    assert model.arch == "oknet" and model.build_kwargs() == {}
    assert shapes["bottelneck.dw_33.weight"] == (128, 1, 63, 63)
    assert shapes["Encoder.0.layers.3.main.1.main.0.weight"] == (32, 32, 3, 3)
    assert shapes["feat_extract.3.main.0.weight"] == (128, 64, 4, 4)  # ConvTranspose2d


@pytest.mark.parametrize("size", [(19, 23), (5, 3), (8, 8)])
def test_any_size_same_size_output_and_fusion_point_shapes(size):
    torch.manual_seed(0)
    official_code.check_size_and_fusion_points(oknet().eval(), size, multiple=4)


def test_wrong_or_bad_checkpoint_is_one_line_error(tmp_path):
    state = OKNet().state_dict()
    partial = tmp_path / "partial.pkl"
    torch.save({"model": {k: v for k, v in state.items() if not k.startswith("Decoder")}}, partial)
    with pytest.raises(CheckpointError, match="partial.pkl: does not fit OKNet.*missing keys.*--backbone-weights"):
        oknet(weights=partial)
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"nope")
    with pytest.raises(CheckpointError) as err:
        oknet(weights=garbage)
    assert "garbage.pkl" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="not found"):
        oknet(weights=tmp_path / "missing.pkl")
