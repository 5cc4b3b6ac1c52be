"""benchmarks/depth_gain.py (issue 16 items 5-6) and oracle depth: a tiny end-to-end run on a fake data
folder, the oracle's exact start, validation never reading a test split, the targets from hand-made numbers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgehaze.errors import ConfigError, EdgehazeError

try:
    from _real_folders import fake_real_folders, load_benchmark
except ImportError:  # run from the repository root
    from tests._real_folders import fake_real_folders, load_benchmark

G = load_benchmark("depth_gain")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    """A fake shared data folder and its synth output, as `edgehaze synth --rgbd` writes it."""
    return fake_real_folders(tmp_path_factory.mktemp("depth_gain"))


# ---------------------------------------------------------------- oracle depth
def _oracle_folder(tmp_path: Path, images: dict) -> Path:
    """An oracle folder for ``{name: (image H x W x 3, depth H x W)}``, images written as PNG."""
    from edgehaze.imageio import write_image
    from edgehaze.models.depth.oracle import table_entries, write_oracle_table

    pairs = []
    for name, (img, depth) in images.items():
        write_image(tmp_path / f"{name}.png", img)
        np.save(tmp_path / f"{name}.npy", depth.astype(np.float32))
        pairs.append((tmp_path / f"{name}.png", tmp_path / f"{name}.npy"))
    return write_oracle_table(tmp_path / "oracle", table_entries(pairs)).parent


def test_oracle_starts_exactly_at_stage_1_and_its_depth_reaches_the_fusion(tmp_path: Path) -> None:
    from edgehaze.imageio import read_image, to_tensor
    from edgehaze.models.dehazer import build_dehazer
    from edgehaze.train.teacher import init_z1, load_stage1_weights

    rng = np.random.default_rng(0)
    h, w = 40, 56
    yy, xx = np.mgrid[0:h, 0:w]
    near, far = 0.5 + xx / w, 3.0 - 2.0 * yy / h
    folder = _oracle_folder(tmp_path, {"a": (rng.uniform(0.1, 0.9, (h, w, 3)), near),
                                       "b": (rng.uniform(0.1, 0.9, (h, w, 3)), far)})
    kw = {"scale": 8, "apply": "guided", "context": True}
    torch.manual_seed(0)
    rgb = build_dehazer("edge-xs", depth=None, backbone_kwargs=kw).eval()
    with torch.no_grad():  # a "trained" stage 1: the fresh edge backbone is the identity (zero heads)
        for p in rgb.parameters():
            p.add_(0.05 * torch.randn_like(p))
    fused = build_dehazer("edge-xs", depth="oracle", depth_weights=str(folder), fusion="lite", backbone_kwargs=kw,
                          depth_image_size=[h, w]).eval()
    load_stage1_weights(fused, rgb.state_dict())
    x = torch.cat([to_tensor(read_image(tmp_path / "a.png")), to_tensor(read_image(tmp_path / "b.png"))])
    feats = fused.depth_features(x)
    assert [f.shape[1] for f in feats] == list(fused.depth.feature_channels)
    assert not torch.equal(feats[1][0], feats[1][1])  # each image gets its own depth
    with torch.no_grad():
        y0 = rgb(x)
        assert (y0 - x).abs().max() > 1e-3
        assert torch.equal(fused(x), y0)  # Z1 = Z2 = 0: exactly the stage-1 model
        init_z1(fused, 0.05, seed=0)  # a small non-zero Z1 with Z2 still zero: still exact
        assert torch.equal(fused(x), y0)
        for block in fused.fused_blocks():
            torch.nn.init.normal_(block.z2.weight, std=0.05)
        assert not torch.equal(fused(x), y0)  # ... and the oracle depth does reach the output once Z2 opens
        zeroed = fused(x, depth_feats=[torch.zeros_like(f) for f in feats])
        assert not torch.equal(fused(x), zeroed)


def test_oracle_refuses_unknown_images_and_crops(tmp_path: Path) -> None:
    from edgehaze.imageio import read_image, to_tensor
    from edgehaze.models.dehazer import build_depth

    rng = np.random.default_rng(1)
    folder = _oracle_folder(tmp_path, {"a": (rng.uniform(0, 1, (32, 48, 3)), np.ones((32, 48)))})
    oracle = build_depth("oracle", weights=str(folder))
    x = to_tensor(read_image(tmp_path / "a.png"))
    assert oracle.features(x)[0].shape[-2:] == (8, 12)  # stride 4
    with pytest.raises(EdgehazeError, match="not in its table.*depth_scale: full_image"):
        oracle.features(x[..., :16, :16])  # a crop is another image
    with pytest.raises(ConfigError, match="needs its table"):
        build_depth("oracle")
    bad = tmp_path / "bad.npy"
    np.save(bad, np.ones((10, 10), np.float32))
    from edgehaze.models.depth.oracle import table_entries

    with pytest.raises(EdgehazeError, match="does not match"):
        table_entries([(tmp_path / "a.png", bad)])


def test_oracle_encoding_is_scale_invariant_and_puts_sky_far() -> None:
    from edgehaze.models.depth.oracle import D_MAX, normalise_depth

    d = np.linspace(1.0, 20.0, 100).reshape(10, 10).astype(np.float32)
    assert np.allclose(normalise_depth(d), normalise_depth(d * 37.0), atol=1e-6)  # relative vs metric alike
    d[0, 0] = 1000.0  # FRIDA2 sky
    assert normalise_depth(d)[0, 0] == D_MAX


# ---------------------------------------------------------------- the protocol
def test_every_row_validates_on_val_and_a_test_split_is_refused(folders: dict, tmp_path: Path) -> None:
    from edgehaze.train.config import replace
    from edgehaze.train.data import build_val_set

    run = G.DepthGain(tmp_path / "out", G.QUICK, [0], list(G.ROWS), folders["data"], folders["synth"],
                      progress=False)
    val_dir = (folders["synth"] / "val").resolve()
    configs = [run._train_cfg(0, "stage1", "stage1")]
    configs += [run._train_cfg(0, n, G.ROWS[n].kind) for n in G.ROWS if G.ROWS[n].kind in ("control", "fused")]
    configs.append(run._distill_cfg(0))
    for cfg in configs:
        assert cfg.data.val_split == "val" and cfg.data.val_root is None and cfg.data.train_split == "train"
        pairs = build_val_set(cfg.data).pairs
        assert pairs and all(Path(p.hazy).resolve().parent.parent == val_dir for p in pairs)
    with pytest.raises(ConfigError, match="data.val_split: test"):
        replace(configs[1], data=replace(configs[1].data, val_split="test")).validate("x")


def test_a_released_teacher_is_loaded_by_name_and_needs_its_weights(folders: dict, tmp_path: Path) -> None:
    """--teacher-model dav2-l: the teacher rows load that model from --teacher; without weights, a clear error."""
    from dataclasses import replace

    budget = replace(G.QUICK, teacher_model="dav2-l", teacher_input=518)
    run = G.DepthGain(tmp_path / "out", budget, [0], ["teacher"], folders["data"], folders["synth"],
                      teacher=str(tmp_path / "dav2-l.pth"), progress=False)
    model = run._model_section(G.ROWS["teacher"])
    assert model["depth"] == "dav2-l" and model["depth_weights"] == str((tmp_path / "dav2-l.pth").resolve())
    assert model["depth_kwargs"] == {"input_size": 518}
    assert run._model_section(G.ROWS["oracle"])["depth"] == "oracle"
    bare = G.DepthGain(tmp_path / "out2", budget, [0], ["teacher"], folders["data"], folders["synth"], progress=False)
    with pytest.raises(ConfigError, match="--teacher-model dav2-l needs its weights"):
        bare.prepare_teacher()
    args = G.parse_args(["--teacher-model", "dav2-l", "--teacher-input", "518", "--quick"])
    assert G.budget_from_args(args).teacher_model == "dav2-l" and G.budget_from_args(args).teacher_input == 518


def test_targets_and_comparisons_from_hand_made_runs() -> None:
    def run(seed, name, sots, frida):
        return {"seed": seed, "run": name, "cpu_s": 1.0,
                "rows": {name: {"sots-indoor": {"psnr": sots, "ssim": 0.8, "halo": 3.0},
                                "frida2-U080": {"psnr": frida, "ssim": 0.7, "halo": 2.0},
                                "frida2-K080": {"psnr": frida + 1.0, "ssim": 0.7, "halo": 2.0}}}}

    runs = [run(s, "control", 20.0 + s, 15.0) for s in range(3)]
    runs += [run(s, "teacher", 20.6 + s + (0.3 if s == 1 else 0.0), 15.1) for s in range(3)]
    runs += [run(s, "student", 20.5 + s, 15.0) for s in range(3)]
    teacher = {"trained": {"test": {"images": 5, "abs_rel": 0.12, "delta1": 0.9}}}
    r = G.build_results(runs, G.QUICK, [0, 1, 2], ["control", "teacher", "student"], {}, teacher, None)
    gain = next(c for c in r["comparisons"] if (c["higher"], c["lower"], c["group"]) == ("teacher", "control",
                                                                                          "sots-indoor"))
    assert gain["n"] == 3 and gain["wins"] == 3 and gain["diff_mean"] == pytest.approx(0.7)
    frida = next(c for c in r["comparisons"] if (c["higher"], c["group"]) == ("teacher", "frida2"))
    assert frida["diff_mean"] == pytest.approx(0.1)  # mean over the fog types, per seed
    t = {x["target"].split(" ")[0]: x for x in r["targets"]}
    assert t["fused"]["met"] is True and "+0.60, +0.90, +0.60" in t["fused"]["value"]
    assert t["student"]["met"] is False and "71%" in t["student"]["value"]  # 0.5 of 0.7
    assert t["depth"]["met"] is True
    runs[3] = run(0, "teacher", 20.4, 15.1)  # one seed below +0.5 dB: the target is not met
    r = G.build_results(runs, G.QUICK, [0, 1, 2], ["control", "teacher", "student"], {}, teacher, None)
    assert next(x for x in r["targets"] if x["target"].startswith("fused"))["met"] is False
    md = G.markdown({**r, "synth": "S", "data_dir": "D", "image_size": [460, 620]})
    assert "| `teacher` - `control` | depth gain" in md and "**not met**" in md and "last checkpoint" in md


# ---------------------------------------------------------------- the whole script, tiny
def test_tiny_run_end_to_end_resumes_and_never_reads_test_data(folders: dict, tmp_path: Path, monkeypatch,
                                                               capsys) -> None:
    import edgehaze.data.datasets as datasets
    import edgehaze.imageio as imageio
    import edgehaze.train.data as train_data
    import edgehaze.train.teacher as teacher_mod

    synth_test = (folders["synth"] / "test").resolve()
    read, validated = [], []
    real_read, real_val = imageio.read_image, teacher_mod.build_val_set

    def recording_read(path, *a, **k):
        read.append(Path(path).resolve())
        return real_read(path, *a, **k)

    def recording_val(cfg, *a, **k):
        val = real_val(cfg, *a, **k)
        validated.extend(Path(p.hazy).resolve() for p in val.pairs)
        return val

    monkeypatch.setattr(imageio, "read_image", recording_read)
    monkeypatch.setattr(datasets, "read_image", recording_read)
    monkeypatch.setattr(teacher_mod, "build_val_set", recording_val)
    monkeypatch.setattr(train_data, "build_val_set", recording_val)  # distillation imports it when it runs
    out = tmp_path / "out"
    argv = ["--quick", "--out", str(out), "--data", str(folders["data"]), "--synth", str(folders["synth"]),
            "--rows", "int8", "oracle", "teacher-z1", "--no-progress"]
    assert G.main(argv) == 0
    md = (out / "report.md").read_text()
    for set_name in ("sots-indoor", "frida2-U080"):
        assert f"### {set_name}" in md
    assert "| hazy input |" in md and "| dark-channel prior |" in md and "| `oracle` fused, oracle depth" in md
    assert "| `teacher` - `control` |" in md and "| `oracle` - `control` |" in md and "last checkpoint" in md
    results = json.loads((out / "results.json").read_text())
    assert results["rows"] == ["control", "teacher", "oracle", "student", "int8", "teacher-z1"]
    assert not results["partial"] and {c["group"] for c in results["comparisons"]} == {"sots-indoor", "frida2"}
    for name in ("teacher", "oracle", "teacher-z1"):
        branch = results["table"][name]["branch"]
        assert branch["grad_z2_first"]["mean"] > 0 and branch["z2_norm"]["mean"] > 0  # item 6 measured
        assert "sots-indoor" in results["table"][name]["depth_effect"]
    run = json.loads((out / "seed0" / "oracle" / "result.json").read_text())
    assert run["config"]["model"]["depth"] == "oracle" and run["config"]["model"]["depth_image_size"] == [48, 64]
    assert run["config"]["fused"]["init"].endswith("stage1/rgb/last.safetensors")
    control = json.loads((out / "seed0" / "control" / "result.json").read_text())["config"]
    assert control["stages"] == ["control"] and control["fused"]["steps"] == run["config"]["fused"]["steps"]
    # validation (5 training runs and the distillation, 1 image each) read the val split only, and nothing
    # ever read the synth's test split
    assert len(validated) >= 6 and all(p.parent.parent == (folders["synth"] / "val").resolve() for p in validated)
    assert not [p for p in read if synth_test in p.parents]
    # a second invocation redoes nothing
    stamp = (out / "seed0" / "teacher" / "result.json").stat().st_mtime_ns
    capsys.readouterr()
    assert G.main(argv) == 0
    assert (out / "seed0" / "teacher" / "result.json").stat().st_mtime_ns == stamp
