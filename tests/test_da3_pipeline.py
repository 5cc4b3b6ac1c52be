"""DA3 teachers through the whole chain: distill, the licence into INT8 artifacts, report and bench rows.

The DA3 weights here are written in the release's own layout
(``model.safetensors`` with ``model.backbone.pretrained.*`` / ``model.head.*``
keys and a ``config.json``), from a seeded network, so every test goes through
the same loader a downloaded release does. Fidelity to the official code is
tests/test_da3.py's job.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import edgehaze.models.depth  # noqa: F401  (registration)
from edgehaze.models.depth import dav2_convert
from edgehaze.models.registries import DEPTH_MODELS

torch.set_num_threads(2)
QUIET = dict(log=lambda _m: None, progress=False)
#: what the DA3 mono release lacks against DAv2's layout (the loader fills both)
_ABSENT = ("pretrained.mask_token", "depth_head.scratch.refinenet4.resConfUnit1.")


def write_release(teacher, folder: Path) -> Path:
    """``teacher`` (a ``Da3MonoTeacher``) saved as a DA3 monocular release folder."""
    from safetensors.torch import save_file

    official = dav2_convert.transformers_to_official(teacher.model.state_dict())
    state = {}
    for key, value in official.items():
        if key.startswith(_ABSENT):
            continue
        name = "backbone." + key if key.startswith("pretrained.") else "head." + key[len("depth_head."):]
        state["model." + name] = value
    for key, value in teacher.sky_head.state_dict().items():
        state["model.head.scratch.sky_output_conv2." + key] = value
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_name": "da3mono-large"}))
    return folder


@pytest.fixture(scope="module")
def tiny_release(tmp_path_factory) -> Path:
    """A seeded tiny DA3 mono network as a release folder (sky branch nudged so some pixels are sky)."""
    source = DEPTH_MODELS.build("da3-tiny", input_size=28, seed=4)
    with torch.no_grad():
        source.sky_head[2].bias.fill_(0.2)
    return write_release(source, tmp_path_factory.mktemp("da3") / "DA3-TINY")


def _fused_teacher(depth: str, weights: Path, input_size: int = 28, seed: int = 0):
    """edge-s fused with a DA3 teacher loaded from ``weights``; z1/z2 off zero so the fusion matters."""
    from edgehaze import build_dehazer

    torch.manual_seed(seed)
    model = build_dehazer("edge-s", depth=depth, depth_weights=str(weights), depth_kwargs={"input_size": input_size})
    with torch.no_grad():
        for block in model.fused_blocks():
            torch.nn.init.normal_(block.z1.weight, std=0.3)
            torch.nn.init.normal_(block.z2.weight, std=0.1)
        torch.nn.init.normal_(model.backbone.head.weight, std=0.02)
    return model.eval().requires_grad_(False)


def test_release_folder_round_trips(tiny_release):
    """The layout written here is the one the loader reads: same depth, sky and features as the source."""
    source = DEPTH_MODELS.build("da3-tiny", input_size=28, seed=4)
    with torch.no_grad():
        source.sky_head[2].bias.fill_(0.2)
    loaded = DEPTH_MODELS.build("da3-tiny", input_size=28, seed=9, weights=str(tiny_release))
    x = torch.rand(2, 3, 30, 44, generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded.depth(x), source.depth(x))
    assert all(torch.equal(a, b) for a, b in zip(loaded.features(x), source.features(x)))
    with torch.no_grad():
        _, sky = loaded.depth_and_sky(loaded.preprocess(x))
    assert 0 < float((sky >= 0.3).float().mean()) < 1  # some sky, zeroed in depth(); the rest finite
    assert torch.isfinite(loaded.depth(x)).all()


def test_distill_cli_from_a_da3_teacher_then_int8(tmp_path, tiny_release, capsys):
    """`edgehaze distill --teacher <DA3 id>` end to end, and its student exported to INT8 carries the teacher."""
    from edgehaze.checkpoint import load_dehazer, read_metadata, save_dehazer
    from edgehaze.cli import main
    from edgehaze.data.procedural import make_procedural_dataset
    from edgehaze.export import export_checkpoint
    from edgehaze.export.metadata import read_metadata_props

    make_procedural_dataset(tmp_path / "data", 4, 1, size=(32, 48), seed=0)
    ckpt = save_dehazer(tmp_path / "teacher.safetensors", _fused_teacher("da3-tiny", tiny_release))
    out = tmp_path / "run"
    rc = main(["distill", "--teacher", "da3-tiny", "--teacher-ckpt", str(ckpt), "--depth-weights", str(tiny_release),
               "--data", str(tmp_path / "data"), "--out", str(out), "--steps", "2", "--no-progress",
               "data.crop=null", "data.flip=false", "data.workers=0", "train.batch_size=2", "train.device=cpu",
               "train.val_every=100", "student.z1_fit_batches=1", "report.eval_size=[32, 48]", "report.latency_runs=1"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["info"]["teacher"] == "da3-tiny" and report["info"]["steps"] == 2
    assert report["models"]["teacher"]["params"]["depth"] > 0 and set(report["feature_error"]) == {"stage1", "stage2"}
    meta = read_metadata(out / "student.safetensors")
    assert meta["provenance"]["teacher"] == meta["extra"]["teacher"] == "da3-tiny"
    student, _ = load_dehazer(out / "student.safetensors")  # needs neither the teacher nor its weights
    assert student.depth.model_id == "student-s" and student(torch.rand(1, 3, 32, 48)).shape == (1, 3, 32, 48)

    res = export_checkpoint(out / "student.safetensors", out=tmp_path / "export", precision="int8", method="ptq",
                            calib="procedural", calib_images=3, holdout_images=2, calib_size=(32, 48), force=True, **QUIET)
    props = read_metadata_props(res.files["onnx"])
    assert props["teacher"] == res.sidecar["teacher"] == "da3-tiny"
    assert props["license"] == res.sidecar["license"] == meta["provenance"]["license"]
    assert props["precision"] == "int8"


def test_da3_licence_travels_into_the_int8_artifact(tmp_path):
    """A student of da3-mono-l (the id build_student records) exports INT8 with Apache-2.0 in sidecar and ONNX.

    The licence follows the teacher id through the licence table, so it also
    survives a reload and re-save of the student checkpoint.
    """
    from edgehaze import build_dehazer
    from edgehaze.checkpoint import load_dehazer, read_metadata, save_dehazer
    from edgehaze.export import export_checkpoint
    from edgehaze.export.metadata import read_metadata_props

    torch.manual_seed(0)
    student = build_dehazer("edge-xs", depth="student-s", fusion="lite",
                            depth_kwargs={"widths": [8, 16, 16, 16], "blocks": [1, 1, 1, 1], "teacher_id": "da3-mono-l"})
    first = save_dehazer(tmp_path / "student.safetensors", student.eval())
    again = save_dehazer(tmp_path / "again.safetensors", load_dehazer(first)[0])
    for path in (first, again):
        prov = read_metadata(path)["provenance"]
        assert (prov["teacher"], prov["license"]) == ("da3-mono-l", "Apache-2.0")
    res = export_checkpoint(again, out=tmp_path / "export", precision="int8", method="ptq", calib="procedural",
                            calib_images=3, holdout_images=2, calib_size=(32, 48), force=True, **QUIET)
    sidecar = json.loads(res.files["onnx"].with_suffix(".json").read_text())
    props = read_metadata_props(res.files["onnx"])
    for meta in (sidecar, props):
        assert (meta["teacher"], meta["license"], meta["precision"]) == ("da3-mono-l", "Apache-2.0", "int8")


def test_every_released_teacher_has_its_licence_in_the_table():
    from edgehaze.models.depth import teacher_licenses

    table = teacher_licenses()
    assert table["da3-mono-l"] == table["da3-metric-l"] == table["dav2-s"] == "Apache-2.0"
    assert table["dav2-b"] == table["dav2-l"] == "CC-BY-NC-4.0" and table["dsv2-l"] == "MIT"
    assert "tiny" not in table and "da3-tiny" not in table  # random test teachers carry their own


def test_distill_cli_da3_without_weights_names_the_release(capsys):
    from edgehaze.cli import main

    for name, where in (("da3-mono-l", "DA3MONO-LARGE"), ("da3-metric-l", "DA3METRIC-LARGE"),
                        ("da3-s", "DA3-SMALL"), ("da3-b", "DA3-BASE")):
        assert main(["distill", "--teacher", name]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--depth-weights" in err and where in err


def test_report_and_bench_take_da3_ids(tmp_path, capsys):
    from edgehaze.cli import main

    out = tmp_path / "report.json"
    assert main(["report", "--backbone", "edge-xs", "--depth", "da3-tiny", "--random-depth", "--depth-input-size", "28",
                 "--size", "32", "48", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["depth"]["model"] == "da3-tiny" and rep["depth"]["params"] > 0 and rep["depth"]["flops"] > 0
    bench = tmp_path / "bench.json"
    assert main(["bench", "--teacher", "tiny", "da3-tiny", "--random-depth", "--backbone", "edge-xs",
                 "--depth-input-size", "28", "--sizes", "32x48", "--runs", "2", "--warmup", "0", "--threads", "1",
                 "--no-progress", "--json", str(bench)]) == 0
    rows = json.loads(bench.read_text())["results"]
    assert [r["name"] for r in rows] == ["edge-xs+tiny", "edge-xs+da3-tiny"]
    assert all(r["role"] == "teacher" and r["median_ms"] > 0 for r in rows)
    capsys.readouterr()
    assert main(["bench", "--teacher", "dav2-l", "da3-mono-l", "--depth-weights", "w.pth"]) == 2
    assert "one at a time" in capsys.readouterr().err
    assert main(["report", "--backbone", "edge-xs", "--depth", "student-s", "--random-depth"]) == 2
    assert "--random-depth" in capsys.readouterr().err


@pytest.mark.slow  # three ViT-L builds and a 1.3 GB release file: about a minute or two
def test_da3_mono_large_release_to_int8_carries_apache(tmp_path):
    """The real id on a ViT-L release-format file: fused teacher -> distill -> INT8, Apache-2.0 throughout."""
    from edgehaze.checkpoint import save_dehazer
    from edgehaze.data.procedural import make_procedural_dataset
    from edgehaze.distill.distiller import DistillConfig
    from edgehaze.distill.run import run_distill
    from edgehaze.export import export_checkpoint
    from edgehaze.export.metadata import read_metadata_props
    from edgehaze.train.config import from_dict

    release = write_release(DEPTH_MODELS.build("da3-mono-l", random_init=True), tmp_path / "DA3MONO-LARGE")
    teacher = _fused_teacher("da3-mono-l", release, input_size=28)
    assert teacher.depth.license == "Apache-2.0"
    ckpt = save_dehazer(tmp_path / "teacher.safetensors", teacher)
    del teacher
    make_procedural_dataset(tmp_path / "data", 4, 1, size=(32, 48), seed=0)
    cfg = from_dict(DistillConfig, {
        "out_dir": str(tmp_path / "run"),
        "teacher": {"checkpoint": str(ckpt), "depth": "da3-mono-l", "depth_weights": str(release)},
        "data": {"root": str(tmp_path / "data"), "crop": None, "flip": False, "workers": 0},
        "train": {"batch_size": 2, "val_every": 100, "device": "cpu", "progress": False},
        "distill": {"steps": 1}, "student": {"z1_fit_batches": 1},
        "report": {"eval_size": [32, 48], "latency_runs": 1},
    })
    cfg.validate()
    report = run_distill(cfg)
    assert report["info"]["teacher_license"] == "Apache-2.0"
    res = export_checkpoint(tmp_path / "run" / "student.safetensors", out=tmp_path / "export", precision="int8",
                            method="ptq", calib="procedural", calib_images=3, holdout_images=2, calib_size=(32, 48),
                            force=True, **QUIET)
    props = read_metadata_props(res.files["onnx"])
    assert (props["teacher"], props["license"]) == ("da3-mono-l", "Apache-2.0")
    assert (res.sidecar["teacher"], res.sidecar["license"]) == ("da3-mono-l", "Apache-2.0")
