"""edgehaze train: loss goes down, stage-2 step 0 = stage 1, freezing, resume after SIGKILL, DDP, depth cache."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from edgehaze.errors import CheckpointError, ConfigError
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
data: {{root: {data}, layout: dehazeformer, crop: 24, flip: true, workers: 0}}
train: {{lr: 3.0e-3, weight_decay: 0.0, batch_size: 4, val_every: 1000, log_every: 1, threads: 1, progress: false}}
rgb: {{steps: 12, scheduler: cosine, eta_min: 1.0e-5}}
fused: {{steps: 6, lr: 1.0e-3, scheduler: cosine_restarts, restart_every: 3}}
"""
    path = tmp / "cfg.yaml"
    path.write_text(text)
    return load_config(path, TrainConfig, list(overrides))


def _log(run: Path) -> List[Dict[str, str]]:
    with open(run / "train_log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------- the stage-1 -> stage-2 handover
def test_key_mapping_for_wrapped_modules() -> None:
    from edgehaze.train.teacher import fused_state_from_stage1

    sd = {
        "backbone.stage1.0.conv.weight": torch.zeros(1),
        "backbone.stage10.weight": torch.zeros(1),  # not 'stage1.' + rest
        "backbone.head.bias": torch.zeros(1),
        "stage2.1.bn.running_mean": torch.zeros(1),  # a bare backbone state dict
    }
    out = fused_state_from_stage1(sd, ["stage1", "stage2"])
    assert sorted(out) == [
        "backbone.head.bias",
        "backbone.stage1.block.0.conv.weight",
        "backbone.stage10.weight",
        "backbone.stage2.block.1.bn.running_mean",
    ]


def test_loss_goes_down_and_stage2_starts_as_stage1(tmp_path: Path, tiny_data: Path) -> None:
    from edgehaze.checkpoint import load_dehazer
    from edgehaze.train.state import load_state
    from edgehaze.train.teacher import build_fused_model, run_training, stage1_state_from_checkpoint

    cfg = _config(tmp_path, tiny_data, "rgb.steps=20", "train.val_every=10")
    results = run_training(cfg)
    rows = _log(tmp_path / "run")
    losses = [float(r["loss"]) for r in rows]
    assert len(losses) == 20
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4, losses
    assert [int(r["step"]) for r in rows] == list(range(1, 21))
    # validation metrics were logged and the best checkpoint written
    with open(tmp_path / "run" / "val_log.csv", newline="") as fh:
        val = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in val] == [10, 20] and all(float(r["psnr"]) > 5 for r in val)
    rgb = results["rgb"]
    assert rgb.best_path is not None and rgb.best_path.is_file()
    # the state file is weights_only-loadable and says the stage finished
    state = load_state(rgb.stage_dir / "last.state.pt")
    assert state["finished"] and state["step"] == 20

    stage1, meta = load_dehazer(rgb.last_path)
    assert meta["build"]["depth"] is None and meta["extra"]["step"] == 20
    fused = build_fused_model(cfg, stage1_state_from_checkpoint(str(rgb.last_path), cfg), "test")
    assert len(fused.fused_blocks()) == 2
    x = torch.rand(2, 3, 40, 36)
    with torch.no_grad():
        assert torch.equal(fused.eval()(x), stage1.eval()(x))


def test_stage1_checkpoint_of_another_backbone_is_refused(tmp_path: Path, tiny_data: Path) -> None:
    from edgehaze.checkpoint import save_dehazer
    from edgehaze.models.dehazer import build_dehazer
    from edgehaze.train.teacher import stage1_state_from_checkpoint

    path = tmp_path / "s.safetensors"
    save_dehazer(path, build_dehazer("edge-s"))
    cfg = _config(tmp_path, tiny_data)
    with pytest.raises(ConfigError, match="edge-s"):
        stage1_state_from_checkpoint(str(path), cfg)


def test_finetune_depth_freezes_exactly_the_backbone(tmp_path: Path, tiny_data: Path) -> None:
    from edgehaze.models.dehazer import build_dehazer
    from edgehaze.train.ddp import DistContext
    from edgehaze.train.data import build_train_set
    from edgehaze.train.losses import RestorationLoss
    from edgehaze.train.teacher import configure_finetune, make_step_fn, train_mode_keeping_frozen_norms
    from edgehaze.train.trainer import Trainer

    cfg = _config(tmp_path, tiny_data, "stages=[fused]", "fused.finetune=depth")
    torch.manual_seed(0)
    model = build_dehazer("edge-xs", depth="tiny", depth_kwargs={"input_size": 28})
    # a stage-1 backbone has left edge-xs's zero-initialised head (gradients flow back)
    torch.nn.init.normal_(model.backbone.head.weight, std=0.05)
    trainable = configure_finetune(model, "depth")
    fusion = {id(p) for b in model.fused_blocks() for part in ("z1", "rdf", "z2") for p in getattr(b, part).parameters()}
    assert {id(p) for p in trainable} == fusion
    for name, p in model.named_parameters():
        in_fusion = any(f".{part}." in name for part in ("z1", "rdf", "z2"))
        assert p.requires_grad == in_fusion, name
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(
        model=model,
        step_fn=make_step_fn(RestorationLoss()),
        train_set=build_train_set(cfg.data, 0),
        stage="fused",
        stage_dir=tmp_path / "fz",
        train=cfg.train,
        schedule=cfg.fused,
        ctx=DistContext(),
        params=trainable,
        set_train_mode=train_mode_keeping_frozen_norms,
    )
    trainer.set_train_mode(model)
    for _ in range(2):
        trainer.train_step()
    after = model.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed, "nothing trained"
    assert all(any(f".{part}." in k for part in ("z1", "rdf", "z2")) for k in changed), changed
    assert any(".z2." in k for k in changed)
    # running statistics of the frozen backbone's BatchNorms did not move either
    assert not any("running_" in k for k in changed)


# ---------------------------------------------------------------- resume after SIGKILL
def _cli(cfg: Path, *args: str) -> List[str]:
    return [sys.executable, "-m", "edgehaze", "train", "--config", str(cfg), *args]


def _env() -> Dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path: Path, tiny_data: Path) -> None:
    base = [
        "stages=[rgb,fused]",
        "rgb.steps=3",
        "fused.steps=12",
        "train.ckpt_every=3",
        "train.val_every=1000",
        "train.ema=0.9",
    ]
    _config(tmp_path, tiny_data)  # writes cfg.yaml
    cfg = tmp_path / "cfg.yaml"
    ref = subprocess.run(
        _cli(cfg, *base, f"out_dir={tmp_path / 'ref'}"), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert ref.returncode == 0, ref.stderr[-2000:]

    run = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli(cfg, *base, f"out_dir={run}"), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    state = run / "fused" / "last.state.pt"
    deadline = time.time() + 240
    while not state.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"

    resumed = subprocess.run(_cli(cfg, *base, f"out_dir={run}", "--resume", "auto"), env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    a, b = _log(tmp_path / "ref"), _log(run)
    assert [(r["stage"], r["step"]) for r in a] == [(r["stage"], r["step"]) for r in b]
    for ra, rb in zip(a, b):
        for key in ("loss", "l1", "lr"):
            assert abs(float(ra[key]) - float(rb[key])) <= 1e-6, (ra, rb)
    from safetensors.torch import load_file

    wa, wb = load_file(str(tmp_path / "ref" / "fused" / "last.safetensors")), load_file(str(run / "fused" / "last.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_fresh_run_into_existing_run_dir_is_refused(tmp_path: Path, tiny_data: Path) -> None:
    from edgehaze.train.teacher import run_training

    cfg = _config(
        tmp_path, tiny_data, "rgb.steps=2", "train.accumulate=2", "train.grad_clip=0.5", "loss.ssim=0.5", "loss.fft=0.1"
    )
    run_training(cfg)
    row = _log(tmp_path / "run")[0]
    assert {"l1", "ssim", "fft", "grad_norm", "lr"} <= set(row)
    assert float(row["loss"]) == pytest.approx(float(row["l1"]) + 0.5 * float(row["ssim"]) + 0.1 * float(row["fft"]), rel=1e-5)
    with pytest.raises(ConfigError, match="--resume"):
        run_training(cfg)
    # resuming a finished run does nothing and keeps the log
    run_training(cfg, resume=True)
    assert len(_log(tmp_path / "run")) == 2
    from edgehaze.cli import main

    assert main(["train", "--resume", str(tmp_path / "run")]) == 0  # the config stored in the run
    assert len(_log(tmp_path / "run")) == 2
    assert main(["train", "--resume", str(tmp_path)]) == 2  # not a run directory: one-line error


def test_corrupt_state_is_a_checkpoint_error(tmp_path: Path, tiny_data: Path) -> None:
    from edgehaze.train.state import load_state

    bad = tmp_path / "last.state.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_state(bad)


# ---------------------------------------------------------------- depth cache
def test_depth_cache_serves_the_teachers_features(tmp_path: Path, tiny_data: Path) -> None:
    from edgehaze.models.dehazer import build_dehazer
    from edgehaze.train.data import EpochAwareDataset, build_train_set
    from edgehaze.train.teacher import DepthFeatureCache

    cfg = _config(tmp_path, tiny_data, "data.crop=null", "data.flip=false", "train.depth_cache=true")
    ds = build_train_set(cfg.data, 0)
    model = build_dehazer("edge-xs", depth="tiny", depth_kwargs={"input_size": 28})
    cache = DepthFeatureCache(tmp_path / "cache", model.depth, ds)
    items = [EpochAwareDataset(ds)[i] for i in (0, 3)]
    batch = {"hazy": torch.stack([s["hazy"] for s in items]), "index": torch.tensor([0, 3])}
    first = cache.features(model, batch)
    again = cache.features(model, batch)
    direct = model.depth_features(batch["hazy"])
    assert cache.misses == 2 and cache.hits == 2
    for a, b, c in zip(first, again, direct):
        assert torch.equal(a, b)
        assert torch.allclose(a, c, rtol=1e-3, atol=1e-3)  # float16 storage
    # a model fed cached features computes what it computes from the image
    with torch.no_grad():
        assert torch.allclose(model(batch["hazy"], depth_feats=again), model(batch["hazy"]), atol=1e-2)


# ---------------------------------------------------------------- DDP
@pytest.mark.slow
def test_two_process_gloo_ddp(tmp_path: Path, tiny_data: Path) -> None:
    _config(tmp_path, tiny_data)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
        "-m", "edgehaze", "train", "--config", str(tmp_path / "cfg.yaml"),
        "stages=[rgb,fused]", "rgb.steps=3", "fused.steps=3", "train.batch_size=2", "train.val_every=3",
    ]
    out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "2 processes (gloo)" in out.stdout
    assert "rgb parameters identical on 2 ranks" in out.stdout
    assert "fused parameters identical on 2 ranks" in out.stdout
    for stage in ("rgb", "fused"):
        assert (tmp_path / "run" / stage / "last.safetensors").is_file()
        assert (tmp_path / "run" / stage / "best.safetensors").is_file()
    rows = _log(tmp_path / "run")
    assert [(r["stage"], int(r["step"])) for r in rows] == [("rgb", 1), ("rgb", 2), ("rgb", 3), ("fused", 1), ("fused", 2), ("fused", 3)]


def test_fusion_lr_scale_gives_the_fusion_blocks_their_own_rate():
    """`fused.fusion_lr_scale` puts z1/rdf/z2 in a group at scale x lr."""
    from edgehaze.models.dehazer import build_dehazer
    from edgehaze.train.teacher import configure_finetune, fusion_param_groups
    from edgehaze.train.trainer import param_groups

    model = build_dehazer(backbone="edge-xs", depth="tiny", depth_kwargs={"input_size": 28})
    params = configure_finetune(model, "all")
    groups = param_groups(fusion_param_groups(model, params, 10.0), 1e-3)
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-2)]
    fusion = {id(p) for b in model.fused_blocks() for part in (b.z1, b.rdf, b.z2) for p in part.parameters()}
    assert {id(p) for p in groups[1]["params"]} == fusion
    assert not fusion & {id(p) for p in groups[0]["params"]}
    assert sum(len(g["params"]) for g in groups) == len(params)
