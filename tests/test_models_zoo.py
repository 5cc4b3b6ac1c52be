"""The shipped models (runtime/models/): by name everywhere, integrity, re-export equality, cards, pack, C API.

Nothing here assumes which model is shipped: names, variants and numbers are
read from runtime/models/manifest.json. Tampering happens on copies in tmp
folders (``EDGEHAZE_MODELS_DIR``), never on the tracked files.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

try:
    from _artifacts import moving_frames, write_video
except ImportError:  # tests/ imported as a package
    from tests._artifacts import moving_frames, write_video

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import runtime  # noqa: E402
from runtime import RuntimeError_, Status, zoo  # noqa: E402

MODELS = REPO / "runtime" / "models"
MANIFEST = json.loads((MODELS / "manifest.json").read_text())
NAME = MANIFEST["default"]
ENTRY = MANIFEST["models"][NAME]


def hazy_frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth hazy-looking uint8 RGB frame (bright, low contrast)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 0.5 + 0.25 * np.sin(xx[..., None] / 17.0 + yy[..., None] / 23.0 + rng.uniform(0, 6, 3))
    return np.ascontiguousarray(np.clip((0.45 * base + 0.5) * 255, 0, 255).astype(np.uint8))


@pytest.fixture()
def models_copy(tmp_path, monkeypatch) -> Path:
    """A git-tracked copy of runtime/models that the runtime reads instead of the shipped one."""
    repo = tmp_path / "clone"
    shutil.copytree(MODELS, repo / "models")
    for cmd in (["init", "-q"], ["add", "-A"], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x"]):
        subprocess.run(["git", "-C", str(repo), *cmd], check=True, capture_output=True)
    monkeypatch.setenv(zoo.ENV_DIR, str(repo / "models"))
    return repo / "models"


# ---------------------------------------------------------------- the runtime, torch-free
def test_list_and_create_by_name_with_torch_blocked():
    """runtime.list_models/create(NAME) with torch and edgehaze unimportable; the variant follows the frame size."""
    script = f"""
import json, sys
sys.modules['torch'] = None; sys.modules['edgehaze'] = None
sys.path.insert(0, {str(REPO)!r})
import numpy as np, runtime
models = runtime.list_models()
name = runtime.default_model()
h = runtime.create(name, {{"threads": 1}})
seen = {{"first": h.variant}}
out = runtime.run(h, np.full((96, 128, 3), 180, np.uint8))
seen["small"] = [h.variant, list(out.shape)]
if "1080" in h._entry["variants"]:
    out = runtime.run(h, np.full((1080, 1920, 3), 180, np.uint8))
    seen["hd"] = [h.variant, list(out.shape), h.artifact.model_path.name]
runtime.close(h)
print(json.dumps({{"names": [m["name"] for m in models], "default": name, "seen": seen,
                  "torch": sys.modules.get("torch") is not None}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["default"] == NAME and NAME in got["names"] and not got["torch"]
    assert got["seen"]["first"] == ENTRY["default_variant"]
    small = zoo.choose_variant(ENTRY, 96, 128)
    assert got["seen"]["small"] == [small, [96, 128, 3]]
    if "1080" in ENTRY["variants"]:
        hd = ENTRY["variants"]["1080"]
        assert got["seen"]["hd"] == ["1080", [1080, 1920, 3], Path(hd["file"]["path"]).name]
    else:
        assert "1080" in ENTRY["missing_variants"]


def test_variant_rule_follows_the_shorter_side():
    entry = {"variants": {"640": {"min_side": 0}, "1080": {"min_side": 720}}}
    assert [zoo.choose_variant(entry, h, w) for h, w in ((480, 640), (719, 1280), (720, 1280), (1080, 1920),
                                                          (1920, 1080), (2160, 3840))] == \
        ["640", "640", "1080", "1080", "1080", "1080"]
    assert zoo.choose_variant({"variants": {"640": {"min_side": 0}}}, 2000, 3000) == "640"


def test_names_and_paths_both_work():
    variant = ENTRY["default_variant"]
    path = MODELS / ENTRY["variants"][variant]["file"]["path"]
    x = hazy_frame(64, 96)
    with runtime.create(str(path), {"threads": 1}) as plain, runtime.create(f"{NAME}@{variant}", {"threads": 1}) as named:
        assert type(plain) is runtime.Dehazer and isinstance(named, runtime.ModelDehazer)
        assert isinstance(named, runtime.Dehazer)  # runtime.run/close and the C API take it
        assert np.array_equal(plain.run(x), runtime.run(named, x))
        assert named.backend_name == plain.backend_name and named.channel_order == plain.channel_order
    with pytest.raises(RuntimeError_) as e:
        runtime.create("edgehaze-no-such-model")
    assert e.value.code == Status.BAD_ARTIFACT and NAME in e.value.message and "\n" not in str(e.value)
    with pytest.raises(RuntimeError_) as e:
        runtime.create(f"{NAME}@nope")
    assert e.value.code == Status.BAD_ARGUMENT and variant in e.value.message
    for key, why in ENTRY.get("missing_variants", {}).items():
        with pytest.raises(RuntimeError_) as e:
            runtime.create(f"{NAME}@{key}")
        assert why in e.value.message


# ---------------------------------------------------------------- integrity
def test_truncated_changed_and_missing_files_are_one_line_errors_that_say_how_to_restore(models_copy):
    rel = ENTRY["variants"][ENTRY["default_variant"]]["file"]["path"]
    target = models_copy / rel
    whole = target.read_bytes()
    target.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(RuntimeError_) as e:
        runtime.create(NAME)
    msg = e.value.message
    assert e.value.code == Status.BAD_ARTIFACT and "\n" not in msg and str(target) in msg and "truncated" in msg
    fix = msg.split("restore it with: ")[1]
    assert fix == f"git -C {models_copy.parent} checkout -- models/{rel}"
    subprocess.run(fix.split(), check=True, capture_output=True)  # the printed command really restores it
    runtime.create(NAME).close()

    flipped = bytearray(whole)
    flipped[len(flipped) // 2] ^= 0xFF
    target.write_bytes(bytes(flipped))  # same size, different bytes
    with pytest.raises(RuntimeError_) as e:
        runtime.create(NAME)
    assert "sha256" in e.value.message and "changed or corrupted" in e.value.message

    target.unlink()
    with pytest.raises(RuntimeError_) as e:
        runtime.create(NAME)
    assert "missing" in e.value.message and "checkout --" in e.value.message


def test_cli_error_is_one_line(models_copy, capsys):
    from edgehaze.cli import main

    ck = models_copy / ENTRY["checkpoint"]["path"]
    ck.write_bytes(ck.read_bytes()[:100])
    assert main(["models", "--verify"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(ck) in err[0] and "checkout --" in err[0]


def test_models_command_lists_names_sizes_licences_and_numbers(capsys):
    from edgehaze.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert f"{NAME} (default):" in out and ENTRY["licence"]["weights"] in out and f"runtime/models/{ENTRY['card']}" in out
    for key, v in ENTRY["variants"].items():
        assert f"{NAME}@{key}: {v['file']['path']} ({v['file']['size'] / 1e3:.0f} kB" in out
    h = ENTRY["headline"]
    if h.get("psnr_int8") is not None:
        assert f"INT8 PSNR {h['psnr_int8']:.2f} dB" in out


# ---------------------------------------------------------------- manifest and cards
def test_manifest_matches_the_files_and_the_cards_are_rendered_from_it():
    from edgehaze.model_card import render_card

    total = 0
    for name, entry in MANIFEST["models"].items():
        paths = zoo.verify_model(name)  # sizes and sha256
        total += sum(p.stat().st_size for p in paths)
        card = (MODELS / entry["card"]).read_text()
        assert card == render_card(name, entry), f"{entry['card']} is stale: edgehaze models card {name}"
        for set_name, per in entry["quality"].items():  # every number of the quality table is on the card
            for method, metrics in per.items():
                if method == "_count":
                    continue
                for metric, value in metrics.items():
                    spec = ".3f" if metric in ("ssim", "fade") else ".2f"
                    shown = format(value, spec) if math.isfinite(value) else "-"  # the hazy input vs itself: inf
                    assert f"| {set_name} | {per['_count']} | {method} |" in card and shown in card
        h = entry["headline"]
        if h.get("psnr_int8") is not None:
            assert h["psnr_int8"] == round(entry["quality"][h["psnr_set"]]["student INT8"]["psnr"], 2)
        assert entry["licence"]["code"] == "Apache-2.0" and entry["licence"]["weights"]
        assert entry["recipe"]["command"].startswith("edgehaze demo") and entry["recipe"]["data_sources"]
    assert total < 10e6


@pytest.fixture(scope="module")
def reexported(tmp_path_factory) -> Path:
    """`edgehaze export --checkpoint NAME`: the shipped FP32 checkpoint exported again, by name (FP32 ONNX)."""
    from edgehaze.cli import main

    out = tmp_path_factory.mktemp("reexport")
    assert main(["export", "--checkpoint", NAME, "--out", str(out)]) == 0
    return next(p for p in out.glob("*.onnx") if p.name.count(".") == 1)


def test_shipped_checkpoint_exported_again_equals_the_shipped_int8(reexported):
    """The re-exported FP32 graph and the shipped INT8 variant agree as closely as when the pack measured them."""
    from edgehaze.model_zoo import probe_image, probe_psnr, psnr_u8

    fp32 = reexported
    int8 = MODELS / ENTRY["variants"][ENTRY["default_variant"]]["file"]["path"]
    probe = ENTRY["probe"]
    got = probe_psnr(int8, fp32, tuple(probe["size"]), probe["seed"])
    # the export's FP32 graph is within 1 grey level of torch, so the pack's number comes back
    assert abs(got - probe["psnr_int8_vs_fp32"]) <= 0.5, (got, probe)
    # and the check can fail: the hazy input itself is far from the FP32 output
    frame = probe_image(tuple(probe["size"]), probe["seed"])
    with runtime.Dehazer(fp32) as d:
        assert psnr_u8(frame, d.run(frame)) < got - 10
    assert not list((MODELS / NAME).glob("export*")), "export by name must not write next to the shipped files"


# ---------------------------------------------------------------- the default model in the tools
def test_stream_without_model_uses_the_default(tmp_path, capsys):
    from runtime.stream import main as stream_main

    video = write_video(tmp_path / "in.mp4", moving_frames(4, 96, 128))
    stats = tmp_path / "s.json"
    assert stream_main(["--input", str(video), "--output", "null", "--stats-json", str(stats), "--stats-interval", "0",
                        "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert f"no --model: the shipped default {NAME}:" in err
    s = json.loads(stats.read_text())
    assert s["model"] == NAME and s["frames"] == 4


def test_dehaze_without_checkpoint_uses_the_default(tmp_path, capsys):
    import torch

    from edgehaze.checkpoint import load_dehazer
    from edgehaze.cli import main
    from edgehaze.imageio import read_image, to_image, to_tensor, write_image

    write_image(tmp_path / "in" / "a.png", hazy_frame(60, 80).astype(np.float32) / 255.0)
    assert main(["dehaze", str(tmp_path / "in"), "--out", str(tmp_path / "out")]) == 0
    assert f"edgehaze dehaze: {NAME} (the shipped FP32 checkpoint" in capsys.readouterr().out
    model, _ = load_dehazer(zoo.checkpoint_path(NAME))
    with torch.inference_mode():
        want = to_image(model(to_tensor(read_image(tmp_path / "in" / "a.png"))))
    assert np.abs(read_image(tmp_path / "out" / "a.png") - want).max() <= 1.5 / 255


def test_eval_by_model_name(tmp_path):
    from edgehaze.cli import main
    from edgehaze.imageio import write_image

    for i in range(2):
        clear = hazy_frame(48, 64, seed=i).astype(np.float32) / 255.0
        write_image(tmp_path / "clear" / f"{i}.png", clear)
        write_image(tmp_path / "hazy" / f"{i}.png", 0.6 * clear + 0.4)
    out = tmp_path / "eval"
    assert main(["eval", "--model", NAME, "--hazy", str(tmp_path / "hazy"), "--clear", str(tmp_path / "clear"),
                 "--out", str(out), "--no-dcp"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == NAME and summary["count"] == 2 and summary["metrics"]["psnr"] > 0


def test_stage1_can_start_from_the_shipped_backbone():
    from types import SimpleNamespace

    from safetensors.torch import load_file

    from edgehaze.models.dehazer import build_dehazer
    from edgehaze.train.teacher import load_stage1_weights, stage1_state_from_checkpoint

    arch = ENTRY["architecture"]
    cfg = SimpleNamespace(model=SimpleNamespace(backbone=arch["backbone"]))
    state = stage1_state_from_checkpoint(NAME, cfg)
    bare = build_dehazer(backbone=arch["backbone"], depth=None, backbone_kwargs=arch["backbone_kwargs"])
    load_stage1_weights(bare, state, NAME)
    shipped = load_file(str(zoo.checkpoint_path(NAME)))
    for k, v in bare.state_dict().items():
        if k.startswith("backbone."):
            src = next(s for s in (k, _fused_key(k, shipped)) if s in shipped)
            assert np.array_equal(v.numpy(), shipped[src].numpy()), k


def test_distillation_can_start_from_the_shipped_student():
    """student.init=NAME: the encoder and Z1 adapters come from the shipped checkpoint (not a fresh fit)."""
    import torch

    from edgehaze.checkpoint import load_dehazer
    from edgehaze.distill.distiller import DistillConfig, init_student_from
    from edgehaze.errors import CheckpointError
    from edgehaze.train.config import from_dict

    assert from_dict(DistillConfig, {"student": {"init": NAME}}, "t").student.init == NAME
    student, _ = load_dehazer(zoo.checkpoint_path(NAME))
    shipped = {k: v.clone() for k, v in student.persistent_state_dict().items() if k.startswith("depth.")}
    with torch.no_grad():
        for p in student.depth.parameters():
            p.add_(1.0)
    assert init_student_from(student, NAME) == str(zoo.checkpoint_path(NAME))
    for k, v in student.persistent_state_dict().items():
        if k.startswith("depth."):
            assert torch.equal(v, shipped[k]), k
    with pytest.raises(CheckpointError):
        init_student_from(student, str(REPO / "pyproject.toml"))


def _fused_key(key: str, shipped: dict) -> str:
    """``backbone.P.x`` of a bare model -> ``backbone.P.block.x`` of the fused checkpoint, for any fusion point P."""
    parts = key.split(".")
    for i in range(2, len(parts)):
        cand = ".".join(parts[:i] + ["block"] + parts[i:])
        if cand in shipped:
            return cand
    return key


# ---------------------------------------------------------------- pack
def _fake_run(run: Path, fp32: Path) -> dict:
    """A run directory laid out like `edgehaze demo --data DIR`'s, from the shipped files and a fresh FP32 export."""
    v = ENTRY["variants"]
    (run / "distill").mkdir(parents=True)
    (run / "export").mkdir()
    shutil.copy(MODELS / ENTRY["checkpoint"]["path"], run / "distill" / "student.safetensors")
    for key, dest in (("640", "student-int8"), ("1080", "student-int8-s16")):
        src = MODELS / v.get(key, v[ENTRY["default_variant"]])["file"]["path"]
        shutil.copy(src, run / "export" / f"{dest}.onnx")
        shutil.copy(src.with_suffix(".json"), run / "export" / f"{dest}.json")
    shutil.copy(fp32, run / "export" / "student-fp32.onnx")
    shutil.copy(fp32.with_suffix(".json"), run / "export" / "student-fp32.json")
    scores = {"hazy input": 12.5, "dark-channel prior": 19.25, "student FP32": 22.5, "student INT8": 22.75}
    report = {"quality": {"sots-indoor": {m: {"metrics": {"psnr": p, "ssim": 0.9, "halo": 10.0}, "ms": 1.0, "count": 30}
                                          for m, p in scores.items()},
                          "real-photos": {m: {"metrics": {"fade": 1.0 + i / 10, "niqe": 4.0}, "ms": 1.0, "count": 28}
                                          for i, m in enumerate(scores)}},
              "data": {"sources": {"sots_indoor_train": {}, "frida2": {}}},
              "stream": {"videos": {"vga": {"size": [480, 640], "kind": "real fog drive"},
                                    "1080p": {"size": [1080, 1920], "kind": "real fog drive"}},
                         "runs": {"vga": {"model": "x/student-int8.onnx", "output": "null", "fps": 101.5, "frames": 62,
                                          "temporal": 0.7, "backend": "onnxruntime/CPUExecutionProvider"},
                                  "1080p": {"model": "x/student-int8-s16.onnx", "output": "null", "fps": 40.3,
                                            "frames": 62, "temporal": 0.7, "backend": "onnxruntime/CPU"}}},
              "stages": {}, "machine": {"processor": "x86_64", "cpu_count": 2}, "threads": 2}
    sizes = {"calib_size": [480, 640], "hd_scale": 16, "hd_calib_size": [1080, 1920]}
    (run / "report.json").write_text(json.dumps(report))
    (run / "demo_state.json").write_text(json.dumps({"mode": "real-full", "data_dir": "/data", "sizes": sizes}))
    return report


def test_pack_writes_files_manifest_and_card_from_the_report(tmp_path, reexported):
    from edgehaze.errors import EdgehazeError
    from edgehaze.model_card import render_card
    from edgehaze.model_zoo import pack

    report = _fake_run(tmp_path / "run", reexported)
    folder = tmp_path / "models"
    with pytest.raises(EdgehazeError) as e:
        pack(tmp_path / "nope", "edgehaze-t", models_dir=folder, measure=False, log=lambda s: None)
    assert "\n" not in str(e.value) and "nope" in str(e.value)
    for _ in range(2):  # packing again replaces the folder whole
        entry = pack(tmp_path / "run", "edgehaze-t", models_dir=folder, measure=False, log=lambda s: None)
    assert sorted(p.name for p in folder.iterdir()) == ["edgehaze-t", "edgehaze-t.md", "manifest.json"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["default"] == "edgehaze-t" and manifest["models"]["edgehaze-t"] == entry
    for set_name, per in report["quality"].items():
        for method, sc in per.items():
            assert entry["quality"][set_name][method] == sc["metrics"]
    assert entry["headline"]["psnr_int8"] == 22.75 and entry["headline"]["psnr_prior"] == 19.25
    assert entry["headline"]["fade_int8"] == 1.3 and entry["headline"]["fade_prior"] == 1.1
    assert entry["headline"]["fps_1920x1080"] == 40.3 and entry["headline"]["fps_640x480"] == 101.5
    assert "research and non-commercial" in entry["licence"]["weights"]
    assert entry["variants"]["1080"]["min_side"] == 720 and entry["recipe"]["command"].endswith("--full")
    assert (folder / "edgehaze-t.md").read_text() == render_card("edgehaze-t", entry)
    assert "| sots-indoor | 30 | student INT8 | 22.75 |" in (folder / "edgehaze-t.md").read_text()
    assert entry["probe"]["psnr_int8_vs_fp32"] == pytest.approx(ENTRY["probe"]["psnr_int8_vs_fp32"], abs=0.5)
    with runtime.zoo.ModelDehazer("edgehaze-t", {"threads": 1}, folder=folder) as h:
        assert h.run(hazy_frame(48, 64)).shape == (48, 64, 3)


# ---------------------------------------------------------------- the C API and the quickstart
def test_c_api_opens_a_model_by_name(tmp_path):
    try:
        from test_capi import _c_toolchain_reason, compile_c
    except ImportError:  # tests/ imported as a package
        from tests.test_capi import _c_toolchain_reason, compile_c

    if _c_toolchain_reason():
        pytest.skip(_c_toolchain_reason())
    pytest.importorskip("cffi")
    lib = tmp_path / "lib"
    subprocess.run([sys.executable, str(REPO / "runtime" / "capi" / "build.py"), "--out", str(lib)], check=True,
                   capture_output=True, text=True)
    exe = compile_c(REPO / "runtime" / "examples" / "dehaze_file.c", tmp_path / "dehaze_file", lib)
    x = hazy_frame(48, 64)
    x.tofile(tmp_path / "in.raw")
    done = subprocess.run([str(exe), NAME, str(tmp_path / "in.raw"), str(tmp_path / "out.raw"), "64", "48"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    with runtime.create(NAME, {"threads": 2}) as h:
        assert (tmp_path / "out.raw").read_bytes() == h.run(x).tobytes()
    bad = subprocess.run([str(exe), "edgehaze-no-such-model", str(tmp_path / "in.raw"), str(tmp_path / "o.raw"), "64",
                          "48"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and f"status {int(Status.BAD_ARTIFACT)}" in bad.stderr and NAME in bad.stderr


def test_quickstart_dehazes_a_video_with_the_shipped_model(tmp_path, capsys, monkeypatch):
    from edgehaze.quickstart import pick_input, run_quickstart

    fog = tmp_path / "shared" / "data" / "video" / "dvd_gopro_fog_frames"
    fog.mkdir(parents=True)
    (fog / "frame_0_hazy.jpg").write_bytes(b"")
    picked = pick_input(None, tmp_path, {"EDGEHAZE_SHARED": str(tmp_path / "shared")})
    assert picked["uri"] == str(fog / "frame_*_hazy.jpg") and "real fog drive" in picked["kind"]

    video = write_video(tmp_path / "in.mp4", moving_frames(6, 96, 128))
    result = run_quickstart(out=tmp_path / "qs", given=str(video), threads=1)
    out = capsys.readouterr().out
    assert result["model"] == NAME and result["frames"] == 6 and result["fps"] > 0
    assert Path(result["video"]).stat().st_size > 0 and Path(result["contact_sheet"]).stat().st_size > 0
    assert "FPS through runtime/stream.py" in out and "edgehaze dehaze my_photos/" in out and "/dev/video0" in out
    import cv2

    sheet = cv2.imread(result["contact_sheet"])
    assert sheet.shape[1] == 1280 and sheet.shape[0] == 4 * round(96 * 1280 / 256)
