"""``edgehaze eval`` on tiny generated data with a real (random-initialised) checkpoint."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from edgehaze.cli import main
from edgehaze.data.datasets import build_dataset
from edgehaze.data.evaluation import NoReferenceStats, evaluate
from edgehaze.data.procedural import make_procedural_dataset
from edgehaze.data.runners import Runner, make_runner
from edgehaze.errors import EdgehazeError
from edgehaze.imageio import read_image

METRICS_DIR = Path(os.environ.get("EDGEHAZE_SHARED", "/work/shared")) / "data" / "metrics"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("procedural")
    make_procedural_dataset(root, n_train=0, n_test=3, size=(32, 48), seed=4)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    import edgehaze
    from edgehaze.checkpoint import save_dehazer

    torch.manual_seed(0)
    model = edgehaze.build_dehazer(backbone="edge-s", depth=None)
    path = tmp_path_factory.mktemp("ckpt") / "edge.safetensors"
    save_dehazer(path, model)
    return path


def _csv(path: Path) -> list:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_eval_paired(tmp_path: Path, data_dir: Path, checkpoint: Path) -> None:
    out = tmp_path / "ev"
    rc = main(["eval", "--checkpoint", str(checkpoint), "--data", str(data_dir), "--out", str(out),
               "--threads", "2"])
    assert rc == 0
    rows = _csv(out / "metrics.csv")
    assert [r["name"] for r in rows] == ["00000", "00001", "00002"]
    assert {"psnr", "ssim", "psnr_y", "psnr_hazy", "ms"} <= set(rows[0])
    summary = json.loads((out / "summary.json").read_text())
    assert {"count", "metrics", "metrics_skipped", "skipped", "files", "model", "layout"} <= set(summary)
    assert summary["count"] == 3 and summary["layout"] == "dehazeformer"
    assert summary["metrics"]["psnr"] == pytest.approx(np.mean([float(r["psnr"]) for r in rows]), abs=1e-5)
    assert 0 < summary["metrics"]["ssim"] <= 1
    assert "niqe" in summary["metrics_skipped"] and "fade" in summary["metrics_skipped"]
    sheet = read_image(out / "contact_sheet.png")
    assert sheet.shape[0] > 3 * 100 and sheet.shape[1] > 3 * 100  # 3 rows x (hazy | output | GT)


def test_eval_skip_bad_and_max_images(tmp_path: Path, data_dir: Path, checkpoint: Path) -> None:
    import shutil

    data = tmp_path / "d"
    shutil.copytree(data_dir, data)
    (data / "test" / "GT" / "00001.png").unlink()  # hazy without GT
    out = tmp_path / "ev"
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out)]) == 2
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out),
                 "--skip-bad"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["count"] == 2 and summary["skipped"][0]["name"] == "00001"
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(data_dir), "--out", str(out),
                 "--max-images", "1"]) == 0
    assert len(_csv(out / "metrics.csv")) == 1


def test_eval_hazy_only_gets_no_reference_metrics(tmp_path: Path, data_dir: Path, checkpoint: Path) -> None:
    if not (METRICS_DIR / "fade").is_dir():
        pytest.skip("shared FADE statistics not present")
    out = tmp_path / "ev"
    rc = main(["eval", "--checkpoint", str(checkpoint), "--data", str(data_dir / "test" / "hazy"),
               "--out", str(out), "--shared-stats", str(METRICS_DIR)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layout"] == "hazy-only" and not summary["has_gt"]
    assert summary["metrics"]["fade"] > 0
    assert set(summary["metrics_skipped"]) == {"psnr", "ssim", "psnr_y", "halo"}
    # 32 x 48 is below NIQE's 96 x 96 minimum: recorded per image, not a crash
    assert summary["metrics"]["niqe"] is None and summary["metric_errors"][0]["metric"] == "niqe"


def test_evaluate_with_stand_in_runner(tmp_path: Path, data_dir: Path) -> None:
    """An identity 'model' must score exactly the hazy input's PSNR."""
    from edgehaze.metrics import psnr

    ds = build_dataset(data_dir)
    summary = evaluate(Runner(run=lambda x: x, depth=lambda x: x.mean(axis=2)), ds, tmp_path, progress=False)
    hazy = read_image(data_dir / "test/hazy/00000.png").astype(np.float64)
    gt = read_image(data_dir / "test/GT/00000.png").astype(np.float64)
    row = _csv(tmp_path / "metrics.csv")[0]
    assert float(row["psnr"]) == pytest.approx(psnr(hazy, gt), abs=1e-5)
    assert summary["metrics"]["psnr"] == pytest.approx(summary["metrics"]["psnr_hazy"])
    assert summary["columns"]["contact_sheet"] == ["hazy", "output", "gt", "depth"]


def test_runner_and_flag_errors(tmp_path: Path, data_dir: Path, checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "m.xyz").write_bytes(b"x")
    with pytest.raises(EdgehazeError, match="cannot run '.xyz'"):
        make_runner(tmp_path / "m.xyz")
    (tmp_path / "broken.safetensors").write_bytes(b"not a checkpoint")
    assert main(["eval", "--checkpoint", str(tmp_path / "broken.safetensors"), "--data", str(data_dir)]) == 2
    assert "broken.safetensors" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(checkpoint)]) == 2
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(data_dir),
                 "--shared-stats", str(tmp_path / "nope")]) == 2
    with pytest.raises(EdgehazeError, match="neither"):
        NoReferenceStats.from_folder(tmp_path)


def test_runner_output_matches_model(tmp_path: Path, checkpoint: Path) -> None:
    import torch

    from edgehaze.checkpoint import load_dehazer
    from edgehaze.imageio import to_tensor

    img = np.random.default_rng(0).random((24, 40, 3)).astype(np.float32)
    runner = make_runner(checkpoint)
    model, _ = load_dehazer(checkpoint)
    with torch.no_grad():
        ref = model(to_tensor(img)).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    out = runner(img)
    assert out.shape == img.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-6)
    assert runner.depth is None and runner.info["backbone"] == "edge-s"


@pytest.mark.slow  # builds a tiny Depth Anything teacher (transformers import)
def test_eval_with_teacher_depth_column(tmp_path: Path, data_dir: Path) -> None:
    import edgehaze
    from edgehaze.checkpoint import save_dehazer

    model = edgehaze.build_dehazer(backbone="edge-s", depth="tiny", depth_kwargs={"input_size": 28})
    ckpt = save_dehazer(tmp_path / "t.safetensors", model)
    out = tmp_path / "ev"
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(data_dir), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["columns"]["contact_sheet"][-1] == "depth"
    assert summary["model"]["depth"] == "tiny"
