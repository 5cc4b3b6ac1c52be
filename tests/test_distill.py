"""edgehaze distill: students, the distillation loss, freezing, the run + report, the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


def make_teacher(seed: int = 0):
    """A tiny fused edge-s teacher whose fusion matters (z1/z2 nudged off zero)."""
    from edgehaze import build_dehazer

    torch.manual_seed(seed)
    t = build_dehazer("edge-s", depth="tiny", depth_kwargs={"input_size": 28})
    with torch.no_grad():
        for b in t.fused_blocks():
            torch.nn.init.normal_(b.z1.weight, std=0.3)
            torch.nn.init.normal_(b.z2.weight, std=0.1)
        torch.nn.init.normal_(t.backbone.head.weight, std=0.02)
    return t.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def teacher():
    return make_teacher()


def test_students_follow_the_depth_contract():
    from edgehaze import build_dehazer
    from edgehaze.models.dehazer import build_depth

    x = torch.rand(1, 3, 40, 56)
    for name, kw in [("student-s", {}), ("student-m", {}), ("student-timm", {"timm_name": "mobilenetv3_small_050"})]:
        enc = build_depth(name, **kw)
        assert enc.trainable and enc.model_id == name and enc.license
        feats = enc.features(x)
        assert [f.shape[1] for f in feats] == list(enc.feature_channels)
        for f, s in zip(feats, enc.feature_strides):  # declared strides are the real ones (ceil for odd sizes)
            assert f.shape[-2:] == (-(-40 // int(s)), -(-56 // int(s)))
    model = build_dehazer("edge-s", depth="student-s")
    assert model.levels == [0, 1]  # strides 4 and 8 meet edge-s's fusion points
    assert model(x).shape == x.shape
    from edgehaze.metrics.cost import count_params

    assert 2e5 < count_params(model.depth) < 2.5e6


def test_student_rejects_bad_timm_name():
    from edgehaze.errors import ConfigError
    from edgehaze.models.dehazer import build_depth

    with pytest.raises(ConfigError, match="no_such_net"):
        build_depth("student-timm", timm_name="no_such_net")


def test_student_copies_teacher_except_encoder_and_z1(teacher):
    from edgehaze.distill.distiller import build_student, z1_module_names

    s = build_student(teacher, "student-s")
    z1 = tuple(n + "." for n in z1_module_names(s))
    ts, ss = teacher.persistent_state_dict(), s.persistent_state_dict()
    shared = [k for k in ss if not k.startswith("depth.") and not k.startswith(z1)]
    assert shared and all(torch.equal(ss[k], ts[k]) for k in shared)
    assert s.depth.teacher_id == "tiny"
    assert s.build_args()["depth_kwargs"]["teacher_id"] == "tiny"


def test_lstsq_z1_starts_closer_than_normal_and_loss_falls(teacher):
    from edgehaze.distill.distiller import DistillLoss, apply_freeze, build_student, fused_forward, init_z1, set_train_mode

    torch.manual_seed(1)
    x = torch.rand(2, 3, 32, 32)
    loss_fn = DistillLoss("l1", output=1.0, gt=0.0)
    with torch.no_grad():
        t_out, t_fused = fused_forward(teacher, x)

    def feature_loss(model):
        set_train_mode(model, "backbone_and_fusion")
        with torch.no_grad():
            s_out, s_fused = fused_forward(model, x)
        return loss_fn(s_fused, t_fused, s_out, t_out)[1]

    torch.manual_seed(2)
    normal = build_student(teacher, "student-s")
    init_z1(normal, teacher, [], "normal")
    torch.manual_seed(2)
    fitted = build_student(teacher, "student-s")
    errors = init_z1(fitted, teacher, [x], "lstsq")
    assert set(errors) == {"stage1", "stage2"} and all(0 <= e < 1 for e in errors.values())
    ln, lf = feature_loss(normal), feature_loss(fitted)
    assert lf["feat0"] < ln["feat0"] and lf["feat1"] < ln["feat1"]

    # from the normal init (far from the teacher) a few steps must close the gap
    fitted = normal
    groups = apply_freeze(fitted, "backbone_and_fusion", lr=3e-3)
    opt = torch.optim.Adam(groups)
    history = []
    for _ in range(6):
        set_train_mode(fitted, "backbone_and_fusion")
        s_out, s_fused = fused_forward(fitted, x)
        loss, _ = loss_fn(s_fused, t_fused, s_out, t_out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    assert history[-1] < 0.9 * history[0], history


def test_freeze_modes_freeze_what_they_say(teacher):
    from edgehaze.distill.distiller import apply_freeze, build_student, set_train_mode

    s = build_student(teacher, "student-s")
    groups = apply_freeze(s, "backbone_and_fusion", lr=1e-3)
    z1_ids = {id(p) for b in s.fused_blocks() for p in b.z1.parameters()}
    enc_ids = {id(p) for p in s.depth.parameters()}
    for p in s.parameters():
        assert p.requires_grad == (id(p) in z1_ids | enc_ids)
    assert len(groups) == 1 and {id(p) for p in groups[0]["params"]} == z1_ids | enc_ids
    set_train_mode(s, "backbone_and_fusion")
    assert s.depth.training and not s.backbone.training
    assert not s.backbone.stage1.block[0].conv1[1].training  # frozen BN keeps its statistics
    frozen_before = {k: v.clone() for k, v in s.backbone.state_dict().items() if ".z1." not in k}
    opt = torch.optim.SGD(groups[0]["params"], lr=0.1)
    s(torch.rand(2, 3, 32, 32)).mean().backward()
    opt.step()
    after = s.backbone.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in frozen_before.items())

    s2 = build_student(teacher, "student-s")
    groups = apply_freeze(s2, "none", lr=1e-3, lr_scale=0.1)
    assert all(p.requires_grad for p in s2.parameters())
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-4)]
    assert sum(len(g["params"]) for g in groups) == len(list(s2.parameters()))


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, teacher):
    """A 3-step distillation run on procedural data, resumed to 5 steps."""
    from edgehaze.checkpoint import save_dehazer
    from edgehaze.data.procedural import make_procedural_dataset
    from edgehaze.distill.distiller import DistillConfig
    from edgehaze.distill.run import run_distill
    from edgehaze.train.config import from_dict

    root = tmp_path_factory.mktemp("distill")
    make_procedural_dataset(root / "data", 4, 1, size=(32, 48), seed=0)
    save_dehazer(root / "teacher.safetensors", teacher)
    raw = {
        "out_dir": str(root / "run"),
        "teacher": {"checkpoint": str(root / "teacher.safetensors")},
        "data": {"root": str(root / "data"), "crop": None, "flip": False, "workers": 0},
        "train": {"batch_size": 2, "val_every": 100, "log_every": 1, "device": "cpu", "progress": False},
        "distill": {"steps": 3, "lr": 2e-3},
        "student": {"z1_fit_batches": 1},
        "report": {"eval_size": [32, 48], "latency_runs": 1},
        "loss": {"stability": 0.5, "stability_shift": 4},  # the flicker term rides along (edgehaze.train.stability)
    }
    cfg = from_dict(DistillConfig, raw)
    cfg.validate()
    report = run_distill(cfg)
    first = json.loads((root / "run" / "report.json").read_text())
    raw["distill"]["steps"] = 5
    resumed = run_distill(from_dict(DistillConfig, raw), resume=True)
    return root, first, report, resumed


def test_report_numbers_match_a_recomputation(distilled):
    from edgehaze.checkpoint import load_dehazer
    from edgehaze.metrics.cost import count_params
    from edgehaze.metrics.fullref import psnr_torch

    root, _, _, report = distilled
    run = root / "run"
    on_disk = json.loads((run / "report.json").read_text())
    assert on_disk["info"]["steps"] == 5
    assert "| student | student-s |" in (run / "report.md").read_text()
    student, meta = load_dehazer(run / "student.safetensors")
    teacher, _ = load_dehazer(root / "teacher.safetensors")
    for name, model in (("student", student), ("teacher", teacher)):
        p = on_disk["models"][name]["params"]
        assert p["total"] == count_params(model) and p["depth"] == count_params(model.depth)
    assert on_disk["models"]["student"]["flops"]["depth"] > 0
    from edgehaze.train.config import DataConfig
    from edgehaze.train.data import build_val_set

    val = build_val_set(DataConfig(root=str(root / "data"), crop=None, flip=False))  # the held-out training scene
    with torch.no_grad():
        psnrs = [float(psnr_torch(student(val[i]["hazy"][None]).clamp(0, 1), val[i]["gt"][None])) for i in range(len(val))]
    assert on_disk["models"]["student"]["quality"]["psnr"] == pytest.approx(sum(psnrs) / len(psnrs), abs=1e-6)
    assert set(on_disk["feature_error"]) == {"stage1", "stage2"}
    # provenance: the student is a derivative of the teacher
    assert meta["provenance"]["teacher"] == "tiny"
    assert meta["extra"]["teacher"] == "tiny" and meta["extra"]["license"] == "none (random init)"
    assert student.depth.license == "edgehaze (trained here)"


def test_resume_continues_from_the_saved_step(distilled):
    from edgehaze.train.state import load_state

    root, first, _, _ = distilled
    assert first["info"]["steps"] == 3
    assert load_state(root / "run" / "last.state.pt")["step"] == 5
    logs = [json.loads(line) for line in (root / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in logs if "val" not in r]
    assert steps == [1, 2, 3, 4, 5]
    assert all(r["stability"] >= 0 for r in logs if "val" not in r)


def test_student_runs_without_transformers(distilled):
    root = distilled[0]
    code = textwrap.dedent(f"""
        import sys, torch
        from edgehaze.checkpoint import load_dehazer
        model, _ = load_dehazer({str(root / 'run' / 'student.safetensors')!r})
        out = model(torch.rand(1, 3, 32, 48))
        assert out.shape == (1, 3, 32, 48)
        print("transformers" in sys.modules)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "False"


def test_cli_missing_teacher_weights_is_one_clear_line(capsys):
    from edgehaze.cli import main

    assert main(["distill", "--teacher", "dav2-l"]) == 2
    err = capsys.readouterr().err
    assert "--depth-weights" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_cli_teacher_mismatch_and_missing_checkpoint(tmp_path, teacher, capsys):
    from edgehaze.checkpoint import save_dehazer
    from edgehaze.cli import main

    save_dehazer(tmp_path / "t.safetensors", teacher)
    assert main(["distill", "--teacher", "dav2-l", "--teacher-ckpt", str(tmp_path / "t.safetensors")]) == 2
    assert "'tiny', not 'dav2-l'" in capsys.readouterr().err
    assert main(["distill", "--teacher-ckpt", str(tmp_path / "nope.safetensors")]) == 2
    assert "nope.safetensors" in capsys.readouterr().err


@pytest.mark.parametrize("override, key", [
    ({"val_split": "test"}, "data.val_split"),
    ({"val_root": "/data/SOTS/indoor", "val_split": "val"}, "data.val_root"),
    ({"train_split": "test"}, "data.train_split"),
])
def test_distill_never_validates_on_a_test_split(tmp_path, override, key):
    """Validation picks best.safetensors, so (as in edgehaze train) a test split there is a ConfigError naming the key."""
    from edgehaze.distill.distiller import DistillConfig
    from edgehaze.errors import ConfigError
    from edgehaze.train.config import from_dict

    data = {"root": str(tmp_path), **override}
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict(DistillConfig, {"data": data}).validate()
    from_dict(DistillConfig, {"data": {"root": str(tmp_path)}}).validate()  # the default hold-out is fine
