"""edgehaze demo: the depth-teacher pretraining, the generated video, stage bookkeeping, the whole quick run."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from edgehaze import demo_teacher as dt
from edgehaze.errors import EdgehazeError


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from edgehaze.data.procedural import make_procedural_dataset

    root = tmp_path_factory.mktemp("proc")
    make_procedural_dataset(root, 8, 2, size=(48, 64), seed=3)
    return root


def test_ssi_loss_ignores_scale_and_shift():
    torch.manual_seed(0)
    target = torch.rand(2, 16, 16) + 0.1
    assert float(dt.ssi_loss(3.0 * target + 5.0, target)) < 1e-5
    assert float(dt.ssi_loss(torch.rand(2, 16, 16), target)) > 0.3
    aligned = dt.align_scale_shift(0.5 * target - 2.0, target)
    assert torch.allclose(aligned, target, atol=1e-5)


def test_depth_metrics_perfect_and_inverted():
    depth = np.linspace(1.0, 50.0, 64, dtype=np.float32).reshape(8, 8)
    perfect = dt.depth_metrics(2.0 / depth + 0.3, depth)
    assert perfect["pearson"] == pytest.approx(1.0)
    assert perfect["abs_rel"] == pytest.approx(0.0, abs=1e-6) and perfect["delta1"] == 1.0
    inverted = dt.depth_metrics(depth, depth)  # depth instead of inverse depth: ordering reversed
    assert inverted["pearson"] < 0


def test_teacher_pretraining_loss_falls_and_folder_loads_through_the_teacher_path(tiny_data, tmp_path):
    from edgehaze.models.dehazer import build_dehazer, build_depth

    data = dt.load_depth_split(tiny_data, "train")
    x = torch.from_numpy(data["hazy"]).permute(0, 3, 1, 2)
    y = dt.inverse_depth(torch.from_numpy(data["depth"]))
    torch.manual_seed(0)
    before = float(dt.ssi_loss(build_depth("tiny", input_size=28).depth(x), y))
    info = dt.pretrain_teacher(tiny_data, tmp_path / "teacher", steps=25, batch_size=8, lr=3e-3, input_size=28,
                               progress=False, log_every=1)
    assert (tmp_path / "teacher" / "config.json").is_file()
    teacher = dt.load_teacher(info["weights"], 28)
    after = float(dt.ssi_loss(teacher.depth(x), y))
    assert after < 0.8 * before, (before, after)
    losses = [l for _, l in info["losses"]]
    assert np.mean(losses[-5:]) < losses[0]
    # the same folder builds a fused dehazer through build_dehazer's teacher path, with the same depth
    model = build_dehazer("edge-xs", depth="tiny", depth_weights=info["weights"], depth_kwargs={"input_size": 28})
    assert torch.allclose(model.depth.depth(x[:2]), teacher.depth(x[:2]))
    assert model.depth.build_kwargs()["weights"] == info["weights"]


def test_hazy_video_moves_and_reads_back(tmp_path):
    import cv2

    from edgehaze.demo import make_hazy_video

    info = make_hazy_video(tmp_path / "v.mp4", 6, (48, 64), seed=1)
    cap = cv2.VideoCapture(info["path"])
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f.astype(np.float32))
    cap.release()
    assert len(frames) == 6 and frames[0].shape == (48, 64, 3)
    assert np.abs(frames[0] - frames[-1]).mean() > 3.0  # the camera pans
    assert not list(tmp_path.glob(".*partial*"))


def test_demo_argument_errors(tmp_path):
    from edgehaze.demo import run_demo
    from edgehaze.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown stage"):
        run_demo(tmp_path / "d", stages=["nope"], progress=False)
    with pytest.raises(ConfigError, match="--force"):
        run_demo(tmp_path / "d", force="nope", progress=False)


def test_failing_stage_names_itself_and_its_log(tmp_path):
    from edgehaze.demo import run_demo

    out = tmp_path / "d"
    with pytest.raises(EdgehazeError) as err:  # the teacher needs the data stage's output
        run_demo(out, quick=True, stages=["teacher"], progress=False, print_fn=lambda s: None)
    msg = str(err.value)
    assert "'teacher'" in msg and str(out / "logs" / "teacher.log") in msg
    log = (out / "logs" / "teacher.log").read_text()
    assert "Traceback" in log and "no depth maps" in log
    state = json.loads((out / "demo_state.json").read_text())
    assert state["stages"]["teacher"]["status"] == "failed"


@pytest.mark.slow
def test_quick_demo_end_to_end_then_skips_everything(tmp_path, capsys):
    from edgehaze.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--procedural", "--out", str(out), "--threads", "1", "--no-progress"]) == 0
    first = capsys.readouterr().out
    assert "[8/8] writing the report ... done in" in first
    report = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    for key, title in (("rgb", "RGB-only (stage 1)"), ("fused", "fused teacher (stage 2)"),
                       ("student_fp32", "student FP32"), ("student_int8", "student INT8")):
        row = report["rows"][key]
        assert f"| {title} |" in md
        for metric in ("params", "flops", "psnr", "ssim", "psnr_y"):
            assert math.isfinite(row[metric]) and row[metric] > 0, (key, metric)
        assert math.isfinite(row["latency"]["median_ms"]) and row["latency"]["fps"] > 0
    assert report["rows"]["student_int8"]["precision"] == "int8"
    assert "ONNX Runtime" in report["rows"]["student_int8"]["engine"]
    assert report["rows"]["fused"]["engine"] == "torch eager"
    # the teacher really learned depth: better than the same architecture at random init
    depth = report["teacher_depth"]
    for kind in ("clear", "hazy"):
        assert depth["trained"][kind]["pearson"] > depth["random_init"][kind]["pearson"] + 0.3
        assert depth["trained"][kind]["pearson"] > 0.6
    assert report["stream"]["runs"]["int8"]["frames"] > 0 and report["stream"]["runs"]["int8"]["fps"] > 0
    assert (out / "stream" / "dehazed-int8.mp4").is_file()
    assert (out / "report" / "contact_sheet.png").is_file()
    assert set(report["stages"]) >= {"data", "teacher", "rgb", "fused", "distill", "export", "stream"}

    mtime = (out / "report.md").stat().st_mtime_ns
    assert main(["demo", "--quick", "--procedural", "--out", str(out), "--no-progress"]) == 0
    second = capsys.readouterr().out
    stage_lines = [ln for ln in second.splitlines() if ln.startswith("[")]
    assert len(stage_lines) == 8 and all("skipped" in ln for ln in stage_lines), second
    assert (out / "report.md").stat().st_mtime_ns == mtime
