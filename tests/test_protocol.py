"""The training protocol (issue 16, item 1): validation never reads a test split,
it is carved from the training scenes, and the RGB-only control has the fused
stage's exact budget and schedule."""
import csv
from pathlib import Path

import pytest

from edgehaze.errors import ConfigError
from edgehaze.train.config import TrainConfig, load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgehaze.data.procedural import make_procedural_dataset

    root = tmp_path_factory.mktemp("procedural")
    make_procedural_dataset(root, n_train=8, n_test=2, size=(32, 32), seed=3)
    return root


def _config(tmp: Path, data: Path, *overrides: str) -> TrainConfig:
    text = f"""
name: t
out_dir: {tmp / 'run'}
stages: [rgb]
model: {{backbone: edge-xs, depth: tiny, depth_kwargs: {{input_size: 28}}}}
data: {{root: {data}, layout: dehazeformer, crop: 24, flip: true, workers: 0, holdout_every: 4}}
train: {{lr: 3.0e-3, weight_decay: 0.0, batch_size: 2, val_every: 2, log_every: 1, threads: 1, progress: false}}
rgb: {{steps: 4, scheduler: cosine, eta_min: 1.0e-5}}
fused: {{steps: 5, lr: 1.0e-3, scheduler: cosine_restarts, restart_every: 3}}
"""
    path = tmp / "cfg.yaml"
    path.write_text(text)
    return load_config(path, TrainConfig, list(overrides))


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.val_split=test", "data.val_split"),
        ("data.val_root=/data/RESIDE/SOTS/indoor", "data.val_root"),
        ("data.val_root=/work/shared/data/sots_indoor", "data.val_root"),
        ("data.train_split=test", "data.train_split"),
    ],
)
def test_validation_on_a_test_split_is_an_error_naming_the_key(tmp_path: Path, tiny_data: Path, override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _config(tmp_path, tiny_data, override)


def test_training_folder_named_sots_train_is_allowed(tmp_path: Path, tiny_data: Path) -> None:
    cfg = _config(tmp_path, tiny_data, "data.val_root=/work/shared/data/sots_indoor_train", "data.val_split=train")
    assert cfg.data.val_root.endswith("sots_indoor_train")


def test_no_shipped_config_validates_on_a_test_split() -> None:
    configs = sorted((REPO / "configs").glob("train_*.yaml"))
    assert configs
    for path in configs:
        cfg = load_config(path, TrainConfig)  # raises on a test split
        assert cfg.data.val_split == "holdout", path


def test_holdout_is_disjoint_by_scene_and_never_empty(tmp_path: Path, tiny_data: Path) -> None:
    from edgehaze.train.data import build_train_set, build_val_set

    cfg = _config(tmp_path, tiny_data)
    train, val = build_train_set(cfg.data, 0), build_val_set(cfg.data)
    train_gt = {str(p.gt) for p in train.pairs.pairs} if hasattr(train.pairs, "pairs") else {str(p.gt) for p in train.pairs}
    val_gt = {str(p.gt) for p in val.pairs.pairs} if hasattr(val.pairs, "pairs") else {str(p.gt) for p in val.pairs}
    assert len(train_gt) == 6 and len(val_gt) == 2  # 8 scenes, every 4th held out
    assert not train_gt & val_gt
    assert all("/train/" in g or "\\train\\" in g for g in val_gt)  # carved from the training split


def test_split_holdout_keeps_a_scenes_pairs_together() -> None:
    from types import SimpleNamespace

    from edgehaze.train.data import split_holdout

    pairs = [SimpleNamespace(hazy=f"h{s}_{k}", gt=f"g{s}") for s in range(10) for k in range(3)]
    train, val = split_holdout(pairs, 7)
    assert {p.gt for p in val} == {"g6"} and len(val) == 3
    assert len(train) == 27


def _rows(run: Path, stage: str):
    with open(run / "train_log.csv", newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["stage"] == stage]


def test_control_has_the_fused_stage_steps_and_schedule(tmp_path: Path, tiny_data: Path, capsys: pytest.CaptureFixture) -> None:
    from edgehaze.train.teacher import run_training

    cfg = _config(tmp_path, tiny_data, "stages=[rgb, fused, control]")
    results = run_training(cfg)
    assert results["control"].steps == results["fused"].steps == 5
    fused, control = _rows(tmp_path / "run", "fused"), _rows(tmp_path / "run", "control")
    assert [r["step"] for r in control] == [r["step"] for r in fused]
    assert [float(r["lr"]) for r in control] == pytest.approx([float(r["lr"]) for r in fused])
    assert "fused minus control" in capsys.readouterr().out


def test_control_needs_stage_one(tmp_path: Path, tiny_data: Path) -> None:
    with pytest.raises(ConfigError, match="control"):
        _config(tmp_path, tiny_data, "stages=[fused, control]")


def test_zero_conv_gradient_norms_are_logged_and_small_z1_keeps_the_exact_start(tmp_path: Path, tiny_data: Path) -> None:
    import torch

    from edgehaze.train.teacher import build_fused_model, init_z1, run_training

    cfg = _config(tmp_path, tiny_data, "stages=[rgb, fused]", "fused.z1_init_std=0.01")
    run_training(cfg)
    rows = _rows(tmp_path / "run", "fused")
    assert len(rows) == 5 and all("grad_z1" in r and "grad_z2" in r for r in rows)
    assert float(rows[0]["grad_z2"]) > 0  # Z2 gets a gradient from the first step
    # a non-zero Z1 with Z2 = 0: still exactly the stage-1 output
    model = build_fused_model(cfg, None, "random").eval()
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        before = model(x)
        init_z1(model, 0.01, 0)
        assert any(float(b.z1.weight.abs().sum()) > 0 for b in model.fused_blocks())
        assert torch.equal(model(x), before)
