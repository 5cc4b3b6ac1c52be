"""The single-frame stability term against flicker (edgehaze.train.stability)."""
from pathlib import Path

import pytest
import torch

from edgehaze.train.depth_crop import crop_features
from edgehaze.train.stability import StabilityTerm, sub_box

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("flipped", [0, 1])
def test_window_box_gives_the_window_of_the_crops_features(flipped: int) -> None:
    full = torch.rand(1, 3, 40, 56)  # a stride-1 "feature" level: the image itself
    box = [6, 10, 24, 32, flipped, 40, 56]
    (crop,) = crop_features([full], box)
    win = (3, 5, 16, 20)
    (inner,) = crop_features([full], sub_box(box, win))
    assert torch.allclose(inner, crop[..., 3:19, 5:25], atol=1e-6)


def test_shift_equivariant_noise_free_model_has_zero_term() -> None:
    conv = torch.nn.Conv2d(3, 3, 1)  # pointwise: a window of the output is the output of the window
    term = StabilityTerm(weight=1.0, shift=6, noise=0.0)
    x = torch.rand(2, 3, 20, 20)
    with torch.no_grad():
        assert float(term(lambda copy, win: conv(copy), x, conv(x))) == pytest.approx(0.0, abs=1e-7)


def test_term_sees_a_model_that_depends_on_the_framing() -> None:
    def global_gain(x: torch.Tensor) -> torch.Tensor:  # the output depends on the whole view's mean
        return x * 3.0 * x.mean(dim=(1, 2, 3), keepdim=True)

    torch.manual_seed(0)
    x = torch.rand(2, 3, 20, 20)
    x[..., :4, :] = 1.0  # a bright band that a shifted window may leave out
    terms = [float(StabilityTerm(1.0, shift=8, noise=0.0)(lambda c, w: global_gain(c), x, global_gain(x)))
             for _ in range(8)]
    assert max(terms) > 1e-3


def test_window_needs_a_crop_larger_than_the_shift() -> None:
    with pytest.raises(ValueError, match="larger than its shift"):
        StabilityTerm(1.0, shift=8).window(8, 32)


def test_config_rejects_a_crop_not_larger_than_the_shift(tmp_path: Path) -> None:
    from edgehaze.errors import ConfigError
    from edgehaze.train.config import TrainConfig, from_dict

    cfg = from_dict(TrainConfig, {"data": {"root": str(tmp_path), "crop": 8, "val_split": None},
                                  "stages": ["rgb"], "loss": {"stability": 1.0}}, "t")
    with pytest.raises(ConfigError, match="loss.stability_shift"):
        cfg.validate("t")
    from edgehaze.distill.distiller import DistillConfig  # the distiller shares the check

    dcfg = from_dict(DistillConfig, {"data": {"root": str(tmp_path), "crop": 8}, "loss": {"stability": 1.0}}, "d")
    with pytest.raises(ConfigError, match="loss.stability_shift"):
        dcfg.validate("d")


def _train(tmp_path: Path, data: Path) -> Path:
    from edgehaze.train.config import TrainConfig, from_dict
    from edgehaze.train.teacher import run_training

    raw = {"name": "t", "out_dir": str(tmp_path / "run"), "stages": ["rgb", "fused"],
           "model": {"backbone": "edge-xs", "depth": "tiny", "depth_kwargs": {"input_size": 28}},
           "data": {"root": str(data), "layout": "dehazeformer", "crop": 24, "flip": True, "workers": 0},
           "train": {"batch_size": 2, "val_every": 100, "log_every": 1, "threads": 1, "progress": False},
           "rgb": {"steps": 3}, "fused": {"steps": 2}, "loss": {"l1": 1.0, "stability": 1.0, "stability_shift": 4}}
    cfg = from_dict(TrainConfig, raw, "t")
    cfg.validate("t")
    run_training(cfg)
    return tmp_path / "run"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgehaze.data.procedural import make_procedural_dataset

    root = tmp_path_factory.mktemp("procedural")
    make_procedural_dataset(root, n_train=3, n_test=1, size=(40, 56), seed=5)
    return root


def test_both_stages_train_with_the_term_and_log_it(tmp_path: Path, data: Path) -> None:
    import csv

    run = _train(tmp_path, data)
    rows = list(csv.DictReader((run / "train_log.csv").open()))
    stages = {r["stage"] for r in rows if r.get("stability") not in (None, "")}
    assert stages == {"rgb", "fused"}, rows[:2]
    assert all(float(r["stability"]) >= 0 for r in rows if r.get("stability"))
