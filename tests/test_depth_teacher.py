"""The real-scene depth teacher (issue 16, item 4): its loss and metrics, and
that what it saves loads like DAv2 weights."""
import os
from pathlib import Path

import pytest
import torch

from edgehaze.depth_teacher import aligned_metrics, masked_ssi_loss


def test_ssi_loss_ignores_scale_shift_and_invalid_pixels() -> None:
    torch.manual_seed(0)
    target = torch.rand(2, 12, 16) + 0.1
    valid = torch.rand(2, 12, 16) > 0.3
    pred = 3.0 * target + 0.5
    pred[~valid] = 100.0 * torch.rand(int((~valid).sum()))  # garbage where depth is unknown
    assert float(masked_ssi_loss(pred, target, valid)) == pytest.approx(0.0, abs=1e-5)
    assert float(masked_ssi_loss(torch.rand(2, 12, 16), target, valid)) > 0.3


def test_aligned_metrics_perfect_and_wrong() -> None:
    g = torch.rand(20, 20) + 0.2
    v = torch.ones(20, 20, dtype=torch.bool)
    m = aligned_metrics(2.0 * g - 0.1, g, v)
    assert m["abs_rel"] == pytest.approx(0.0, abs=1e-6) and m["delta1"] == 1.0
    bad = aligned_metrics(torch.rand(20, 20), g, v)
    assert bad["abs_rel"] > 0.1 and bad["delta1"] < 1.0


def test_augmented_crop_keeps_image_and_depth_aligned() -> None:
    """A crop that moved the image but not the depth (or the reverse) would teach the wrong depth."""
    from edgehaze.depth_teacher import _augment, _relative_batch

    torch.manual_seed(0)
    h, w = 24, 32
    coarse = 0.3 + 0.4 * torch.rand(3, 1, 4, 6)           # per-image smooth random structure, away from the clamp
    pattern = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    inv = pattern.clone()
    x = pattern[:, None].expand(3, 3, h, w).contiguous()  # grey image = inverse depth
    valid = torch.ones(3, h, w, dtype=torch.bool)
    valid[:, :4] = False                                   # an invalid band (sky) travels with the crop too
    gen = torch.Generator().manual_seed(1)
    xa, inva, va = _augment(x, inv, valid, gen, min_scale=0.5)
    assert xa.shape == x.shape and inva.shape == inv.shape and va.dtype == torch.bool
    for i in range(3):
        g, d = xa[i].mean(0)[va[i]], inva[i][va[i]]
        corr = torch.corrcoef(torch.stack([g, d]))[0, 1]
        assert corr > 0.9, f"image {i}: crop of image and depth disagree (corr {float(corr):.3f})"
    assert not torch.equal(xa, x), "augmentation changed nothing"
    rel = _relative_batch(inva, va)
    assert float(rel[va].max()) == pytest.approx(1.0) and bool((rel[~va] == 1.5).all())


def test_ramp_reference_is_exact_on_a_floor_and_not_on_a_wall() -> None:
    import numpy as np

    from edgehaze.depth_teacher import ramp_reference

    h, w = 12, 16
    floor_inv = np.linspace(0.2, 1.0, h, dtype=np.float32)[:, None].repeat(w, 1)   # nearer down the frame
    wall_inv = np.linspace(0.2, 1.0, w, dtype=np.float32)[None, :].repeat(h, 0)    # depth varies across, not down
    scene = lambda inv: {"clear": np.zeros((h, w, 3), np.float32), "depth": 1.0 / inv,  # noqa: E731
                         "valid": np.ones((h, w), bool)}
    assert ramp_reference([scene(floor_inv)])["abs_rel"] == pytest.approx(0.0, abs=1e-4)
    assert ramp_reference([scene(wall_inv)])["abs_rel"] > 0.2
    assert ramp_reference([]) == {"images": 0}


SHARED = Path(os.environ.get("EDGEHAZE_SHARED", "/work/shared"))


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "data" / "frida2").is_dir(), reason="shared RGB-D data not present (EDGEHAZE_SHARED)")
def test_trained_folder_loads_like_dav2_weights(tmp_path: Path) -> None:
    from edgehaze.depth_teacher import train_real_teacher
    from edgehaze.models.dehazer import build_dehazer

    report = train_real_teacher(SHARED, tmp_path / "teacher", steps=2, batch_size=2)
    assert report["trained"]["test_sots_indoor"]["images"] == 15
    model = build_dehazer(backbone="edge-xs", depth="tiny", depth_weights=str(tmp_path / "teacher"),
                          depth_kwargs={"input_size": 98})
    assert model(torch.rand(1, 3, 60, 80)).shape == (1, 3, 60, 80)
