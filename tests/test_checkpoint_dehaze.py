"""Checkpoints rebuild the model alone; `edgehaze dehaze` on mixed inputs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from edgehaze.checkpoint import load_dehazer, read_metadata, save_dehazer
from edgehaze.cli import main
from edgehaze.errors import CheckpointError
from edgehaze.models.dehazer import build_dehazer


@pytest.fixture(scope="module")
def fused_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_dehazer(backbone="edge-s", depth="tiny", depth_kwargs={"input_size": 42})
    with torch.no_grad():
        for block in model.fused_blocks():
            block.z2.weight.normal_(0, 0.05)
        model.backbone.head.weight.normal_(0, 0.01)
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_dehazer(path, model, extra={"note": "test"})
    return path, model.eval()


def test_checkpoint_rebuilds_the_same_model(fused_checkpoint):
    path, model = fused_checkpoint
    loaded, meta = load_dehazer(path)
    x = torch.rand(1, 3, 33, 47)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert meta["build"]["backbone"] == "edge-s"
    assert meta["build"]["depth"] == "tiny"
    assert meta["provenance"]["teacher"] == "tiny"
    assert meta["extra"] == {"note": "test"}
    # the frozen teacher's weights are not stored in the file
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        assert not any(k.startswith("depth.") for k in fh.keys())


def test_teacher_licence_travels_into_provenance(tmp_path):
    model = build_dehazer(backbone="edge-xs", depth="tiny", depth_kwargs={"input_size": 28})
    model.depth.model_id = "dav2-l"  # pretend: the licence table decides
    path = save_dehazer(tmp_path / "m.safetensors", model)
    assert read_metadata(path)["provenance"]["license"] == "CC-BY-NC-4.0"


def test_bad_checkpoints_give_clear_errors(tmp_path, fused_checkpoint):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_dehazer(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_dehazer(junk)
    good, _ = fused_checkpoint
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError):
        load_dehazer(truncated)


def test_nan_weights_are_refused(tmp_path):
    model = build_dehazer(backbone="edge-xs")
    with torch.no_grad():
        model.backbone.head.weight.fill_(float("nan"))
    path = save_dehazer(tmp_path / "nan.safetensors", model)
    with pytest.raises(CheckpointError, match="NaN"):
        load_dehazer(path)


def test_dehaze_cli_on_mixed_inputs(tmp_path, fused_checkpoint, capsys):
    ckpt, model = fused_checkpoint
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (31, 45, 3), dtype=np.uint8)).save(src / "rgb.png")
    Image.fromarray(rng.integers(0, 255, (20, 17, 3), dtype=np.uint8)).save(src / "photo.jpg")
    Image.fromarray(rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)).save(src / "bitmap.bmp")
    Image.fromarray(rng.integers(0, 255, (19, 23, 4), dtype=np.uint8), "RGBA").save(src / "alpha.png")
    Image.fromarray(rng.integers(0, 255, (21, 22), dtype=np.uint8), "L").save(src / "gray.png")
    Image.fromarray(rng.integers(0, 65535, (18, 25), dtype=np.uint16)).save(src / "deep.png")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"

    rc = main(["dehaze", str(src), "--checkpoint", str(ckpt), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "broken.png" in err
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(["rgb.png", "photo.png", "bitmap.png", "alpha.png", "gray.png", "deep.png"])
    for name, shape in [("rgb.png", (31, 45)), ("gray.png", (21, 22)), ("deep.png", (18, 25))]:
        assert np.asarray(Image.open(out / name)).shape == (*shape, 3)

    # the output is the model's output on the same image
    from edgehaze.imageio import read_image, to_image, to_tensor

    with torch.no_grad():
        expected = to_image(model(to_tensor(read_image(src / "rgb.png"))))
    got = read_image(out / "rgb.png")
    assert np.abs(got - expected).max() <= 1 / 255 + 1e-6


def test_dehaze_cli_without_images_is_a_clear_error(tmp_path, fused_checkpoint, capsys):
    ckpt, _ = fused_checkpoint
    (tmp_path / "empty").mkdir()
    rc = main(["dehaze", str(tmp_path / "empty"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "no images found" in capsys.readouterr().err


def test_report_cli_counts_fusion(tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = main(["report", "--backbone", "edge-s", "--depth", "tiny", "--size", "48", "64", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    model = build_dehazer(backbone="edge-s", depth="tiny")
    bare = build_dehazer(backbone="edge-s")
    assert data["total"]["params"] == sum(p.numel() for p in model.parameters())
    assert data["backbone"]["params"] == sum(p.numel() for p in bare.parameters())
    assert data["fusion"]["params"] > 0 and data["fusion"]["flops"] > 0
    assert "fusion (+2 blocks)" in capsys.readouterr().out
