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
