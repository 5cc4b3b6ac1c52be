"""DA3-Small / DA3-Base teachers: official-code fidelity, the release loader, licence, errors.

As tests/test_da3.py: the official files are extracted from a bare git mirror
of ByteDance-Seed/Depth-Anything-3 (``EDGEHAZE_OFFICIAL_CODE``, default
/work/.mirror) into a temporary folder, never committed; without the mirror,
without the pinned commit in it, or without ``einops``/``addict`` (dev extra)
the fidelity tests are skipped with that reason. Weights are fixed random
(``seeded_state`` over the official model's keys, camera encoder/decoder and
the head's ray chain included, as in a release), written as the release's
``model.safetensors`` (``model.`` prefix) + ``config.json``.
"""
from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys

import pytest
import torch
import yaml

import edgehaze.models.depth  # noqa: F401  (registration)
from edgehaze.errors import CheckpointError
from edgehaze.models.depth import da3_anyview
from edgehaze.models.depth.da3_anyview import Da3AnyViewTeacher
from edgehaze.models.registries import DEPTH_MODELS
from tests.official_code import extract, mirror_dir, seeded_state
from tests.test_da3 import _FILES as _MONO_FILES
from tests.test_da3 import PINNED, REPO, _fidelity

torch.set_num_threads(2)
_FILES = _MONO_FILES + [f"src/depth_anything_3/{p}" for p in (
    "model/dualdpt.py", "model/cam_enc.py", "model/cam_dec.py", "model/utils/attention.py",
    "model/utils/block.py", "model/utils/transform.py", "utils/geometry.py",
    "configs/da3-small.yaml", "configs/da3-base.yaml")]
_CONFIG_NAME = {"vits": "da3-small", "vitb": "da3-base"}


def _official_modules(tmp_path_factory):
    pytest.importorskip("einops", reason="the official DA3 code needs einops (dev extra)")
    pytest.importorskip("addict", reason="the official DA3 code needs addict (dev extra)")
    git_dir = mirror_dir(REPO)
    if git_dir is None:
        pytest.skip(f"no mirror of {REPO} (set EDGEHAZE_OFFICIAL_CODE to a bare clone)")
    pinned = subprocess.run(["git", "--git-dir", str(git_dir), "merge-base", "--is-ancestor", PINNED, "HEAD"],
                            capture_output=True)
    if pinned.returncode != 0:
        pytest.skip(f"the mirror of {REPO} does not contain the pinned commit {PINNED[:12]}")
    root = extract(REPO, _FILES, tmp_path_factory.mktemp("da3_official"))
    (root / "src/depth_anything_3/model/__init__.py").write_text("")  # the real one imports the whole API
    for name in [m for m in sys.modules if m == "depth_anything_3" or m.startswith("depth_anything_3.")]:
        del sys.modules[name]  # another test's extraction
    sys.path.insert(0, str(root / "src"))
    try:
        modules = [importlib.import_module(f"depth_anything_3.model.{m}")
                   for m in ("dinov2.dinov2", "dualdpt", "cam_enc", "cam_dec")]
    finally:
        sys.path.remove(str(root / "src"))
    configs = {size: yaml.safe_load((root / f"src/depth_anything_3/configs/{name}.yaml").read_text())
               for size, name in _CONFIG_NAME.items()}
    return modules, configs


def _args(section: dict) -> dict:
    """A config section's constructor arguments (``as_params``: everything but ``__object__``)."""
    return {k: v for k, v in section.items() if k != "__object__"}


class _OfficialAnyView(torch.nn.Module):
    """DepthAnything3Net's modules, built from the official config under its attribute names
    (so the state-dict keys are the release's), run on one view without camera input:
    backbone -> DualDPT."""

    def __init__(self, official, size: str):
        super().__init__()
        (dinov2, dualdpt, cam_enc, cam_dec), configs = official
        config = configs[size]
        self.backbone = dinov2.DinoV2(**_args(config["net"]))
        self.head = dualdpt.DualDPT(**_args(config["head"]))
        self.cam_enc = cam_enc.CameraEnc(**_args(config["cam_enc"]))
        self.cam_dec = cam_dec.CameraDec(**_args(config["cam_dec"]))

    def forward(self, x):
        feats, _ = self.backbone(x[:, None])
        out = self.head(feats, x.shape[-2], x.shape[-1], patch_start_idx=0)
        return out["depth"][:, 0], out["depth_conf"][:, 0]


def _write_release(tmp_path, official, size: str) -> str:
    from safetensors.torch import save_file

    state = seeded_state({k: tuple(v.shape) for k, v in official.state_dict().items()}, seed=3)
    with torch.no_grad():  # keep exp() in range: small last-conv weights
        for k in state:
            if k.startswith("head.scratch.output_conv2.2."):
                state[k] = state[k] * 0.1
    official.load_state_dict(state, strict=True)
    folder = tmp_path / _CONFIG_NAME[size].upper()
    folder.mkdir()
    save_file({"model." + k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_name": _CONFIG_NAME[size]}))
    return str(folder)


@pytest.fixture(scope="module")
def official_code(tmp_path_factory):
    return _official_modules(tmp_path_factory)


@pytest.fixture(scope="module")
def small_pair(official_code, tmp_path_factory):
    """The official DA3-Small-sized network and ours loaded from its release-format file."""
    official = _OfficialAnyView(official_code, "vits").eval()
    path = _write_release(tmp_path_factory.mktemp("da3s"), official, "vits")
    return official, DEPTH_MODELS.build("da3-s", weights=path)


@pytest.mark.parametrize("shape", [(1, 3, 518, 518), (1, 3, 350, 476), (2, 3, 266, 392)])
def test_official_da3_small_matches(small_pair, shape):
    """DA3-Small: depth, confidence and the four fusion levels within 1e-5 of each output's range."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(5))
    errs = _fidelity(*small_pair, x, second="confidence")
    print("vits", shape, errs)
    assert max(errs.values()) < 1e-5, errs


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(1, 3, 518, 518), (1, 3, 518, 686), (2, 3, 364, 518)])
def test_official_da3_base_matches(official_code, tmp_path, shape):
    official = _OfficialAnyView(official_code, "vitb").eval()
    ours = DEPTH_MODELS.build("da3-b", weights=_write_release(tmp_path, official, "vitb"))
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(5))
    errs = _fidelity(official, ours, x, second="confidence")
    print("vitb", shape, errs)
    assert max(errs.values()) < 1e-5, errs


def _spread_everywhere(rows, cols, spread, device, _real=da3_anyview.token_positions):
    return _real(rows, cols, True, device)


@pytest.mark.parametrize("name, value", [
    ("token_positions", _spread_everywhere),  # global blocks given the local (spread) RoPE positions
    ("ROPE_BASE", 10000.0),  # the usual RoPE base instead of DA3's 100
    ("add_uv_embedding", lambda x, aspect: x),  # no UV position embedding in the head
])
def test_fidelity_check_sees_each_departure(small_pair, monkeypatch, name, value):
    """The comparison can fail: each DA3 departure, undone, moves the outputs far past 1e-5."""
    monkeypatch.setattr(da3_anyview, name, value)
    x = torch.randn(1, 3, 224, 308, generator=torch.Generator().manual_seed(5))
    errs = _fidelity(*small_pair, x, second="confidence")
    print(name, errs)
    assert errs["depth"] > 1e-3, errs


def test_parameters_are_the_official_depth_path(official_code):
    """Exactly the official backbone and main head: the ray chain and camera encoder/decoder
    (pose only) and transformers' unused residual unit and mask token are not built."""
    official = _OfficialAnyView(official_code, "vits")
    depth_path = [p for k, p in official.named_parameters()
                  if not re.match(r"cam_enc\.|cam_dec\.|head\.scratch\.\w+_aux\.", k)]
    ours = Da3AnyViewTeacher("da3-s", random_init=True)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in depth_path)
    # the official blocks fuse q/k/v in one Linear: two tensors where transformers has six
    assert len(list(ours.parameters())) == len(depth_path) + 4 * len(official.backbone.pretrained.blocks)


def test_inverse_depth_contract():
    t = DEPTH_MODELS.build("da3-s-tiny", input_size=56, seed=1)
    px = torch.randn(2, 3, 56, 70)
    with torch.no_grad():
        depth, conf = t.depth_and_confidence(px)
        inv = t.depth_from_pixels(px)
    torch.testing.assert_close(inv, 1.0 / depth)
    assert (depth > 0).all() and (conf > 1).all()
    x = torch.rand(2, 3, 45, 61)
    feats = t.features(x)
    assert [f.shape[:2] for f in feats] == [(2, 16)] * 4 and t.depth(x).shape == (2, 45, 61)


def test_onnx_export_keeps_sizes_dynamic(tmp_path):
    """The teacher traced to ONNX at one size serves others (RoPE positions and the UV
    embedding follow the traced input size instead of freezing the example's)."""
    ort = pytest.importorskip("onnxruntime")
    teacher = DEPTH_MODELS.build("da3-s-tiny", input_size=56, seed=1)

    class Outputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.teacher = teacher

        def forward(self, px):
            return (*self.teacher.neck_features(px), self.teacher.depth_from_pixels(px))

    path = str(tmp_path / "da3s.onnx")
    torch.onnx.export(Outputs(), (torch.randn(1, 3, 56, 70),), path, input_names=["px"], opset_version=17,
                      dynamic_axes={"px": {0: "b", 2: "h", 3: "w"}}, dynamo=False)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 70, 42), (2, 3, 98, 56)]:
        px = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            ref = Outputs()(px)
        for got, want in zip(session.run(None, {"px": px.numpy()}), ref):
            assert got.shape == tuple(want.shape)
            assert float((torch.from_numpy(got) - want).abs().max() / (want.max() - want.min())) < 1e-4, shape


def test_sizes_are_the_official_configs(official_code):
    """ARCHS against configs/da3-{small,base}.yaml (encoder size, taps, starts, head widths)."""
    _, configs = official_code
    for size, config in configs.items():
        arch, net, head = da3_anyview.ARCHS[size], config["net"], config["head"]
        assert (net["name"], net["cat_token"], net["out_layers"]) == (size, True, list(arch.out_layers))
        assert net["alt_start"] == net["qknorm_start"] == net["rope_start"] == arch.alt_start
        assert (head["dim_in"], head["output_dim"]) == (2 * arch.hidden_size, 2)
        assert (head["features"], head["out_channels"]) == (arch.features, list(arch.out_channels))


def test_registry_licences_and_feature_widths():
    from edgehaze.models.depth import teacher_licenses

    table = teacher_licenses()
    assert table["da3-s"] == table["da3-b"] == "Apache-2.0" and "da3-s-tiny" not in table
    t = DEPTH_MODELS.build("da3-s", random_init=True)
    assert t.feature_channels == [64] * 4 and t.license.startswith("none") and t.model_id == "da3-s"
    assert t.feature_strides == [1.75, 3.5, 7.0, 14.0]


def test_other_files_are_refused(tmp_path):
    """A foreign file, a DA3 mono file (sky branch), another model's folder, another size."""
    from safetensors.torch import save_file

    from tests.test_da3_pipeline import write_release

    foreign = tmp_path / "model.safetensors"
    save_file({"encoder.weight": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match=re.escape(str(foreign)) + ".*not a DA3-Small/Base"):
        DEPTH_MODELS.build("da3-s-tiny", weights=str(foreign))
    mono = write_release(DEPTH_MODELS.build("da3-tiny", input_size=28), tmp_path / "mono")
    with pytest.raises(CheckpointError, match="sky branch.*da3-mono-l"):
        DEPTH_MODELS.build("da3-s-tiny", weights=str(mono))
    tiny = write_anyview_release(DEPTH_MODELS.build("da3-s-tiny", input_size=28), tmp_path / "tiny")
    (tiny / "config.json").write_text(json.dumps({"model_name": "da3-large"}))
    with pytest.raises(CheckpointError, match="'da3-large' release.*'da3-small'.*DA3-SMALL"):
        DEPTH_MODELS.build("da3-s", weights=str(tiny))
    (tiny / "config.json").write_text(json.dumps({"model_name": "da3-small"}))
    with pytest.raises(CheckpointError, match="does not match depth model 'da3-s'.*shape of"):
        DEPTH_MODELS.build("da3-s", weights=str(tiny))


def write_anyview_release(teacher: Da3AnyViewTeacher, folder):
    """``teacher`` saved as a DA3-Small/Base release folder (the loader's inverse; pose tensors absent)."""
    from safetensors.torch import save_file

    from edgehaze.models.depth import dav2_convert

    state = dict(teacher.model.state_dict())
    release = {"backbone.pretrained.camera_token": state.pop("backbone.camera_token")}
    for key in [k for k in state if ".attention.q_norm." in k or ".attention.k_norm." in k]:
        i, kind, param = re.match(r"backbone\.encoder\.layer\.(\d+)\.attention\.([qk])_norm\.(\w+)$", key).groups()
        release[f"backbone.pretrained.blocks.{i}.attn.{kind}_norm.{param}"] = state.pop(key)
    for param in ("weight", "bias"):
        release[f"head.norm.{param}"] = state.pop(f"neck.token_norm.{param}")
    for key, value in dav2_convert.transformers_to_official(state).items():
        release["backbone." + key if key.startswith("pretrained.") else "head." + key[len("depth_head."):]] = value
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"model." + k: v.contiguous() for k, v in release.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_name": "da3-small"}))
    return folder


def test_release_folder_round_trips(tmp_path):
    """The layout written above is the one the loader reads: same depth and features as the source."""
    source = DEPTH_MODELS.build("da3-s-tiny", input_size=28, seed=4)
    folder = write_anyview_release(source, tmp_path / "DA3-TINY")
    loaded = DEPTH_MODELS.build("da3-s-tiny", input_size=28, seed=9, weights=str(folder))
    x = torch.rand(2, 3, 30, 44, generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded.depth(x), source.depth(x))
    assert all(torch.equal(a, b) for a, b in zip(loaded.features(x), source.features(x)))


# -- through the chain: distill, INT8 metadata, report and bench rows -----------------------
@pytest.mark.slow  # about 15-40 s; the same CLI path as tests/test_da3_pipeline.py's DA3 mono test
def test_distill_cli_from_a_da3_small_architecture_teacher_then_int8(tmp_path, capsys):
    """`edgehaze distill --teacher da3-s-tiny` (DA3-Small's architecture, release-format file) end to
    end, and its student exported to INT8 carries the teacher id and licence."""
    from edgehaze.checkpoint import read_metadata, save_dehazer
    from edgehaze.cli import main
    from edgehaze.data.procedural import make_procedural_dataset
    from edgehaze.export import export_checkpoint
    from edgehaze.export.metadata import read_metadata_props
    from tests.test_da3_pipeline import QUIET, _fused_teacher

    release = write_anyview_release(DEPTH_MODELS.build("da3-s-tiny", input_size=28, seed=4), tmp_path / "DA3-TINY")
    make_procedural_dataset(tmp_path / "data", 4, 1, size=(32, 48), seed=0)
    ckpt = save_dehazer(tmp_path / "teacher.safetensors", _fused_teacher("da3-s-tiny", release))
    out = tmp_path / "run"
    rc = main(["distill", "--teacher", "da3-s-tiny", "--teacher-ckpt", str(ckpt), "--depth-weights", str(release),
               "--data", str(tmp_path / "data"), "--out", str(out), "--steps", "2", "--no-progress",
               "data.crop=null", "data.flip=false", "data.workers=0", "train.batch_size=2", "train.device=cpu",
               "train.val_every=100", "student.z1_fit_batches=1", "report.eval_size=[32, 48]", "report.latency_runs=1"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["info"]["teacher"] == "da3-s-tiny" and report["models"]["teacher"]["params"]["depth"] > 0
    meta = read_metadata(out / "student.safetensors")
    assert meta["provenance"]["teacher"] == "da3-s-tiny"
    res = export_checkpoint(out / "student.safetensors", out=tmp_path / "export", precision="int8", method="ptq",
                            calib="procedural", calib_images=3, holdout_images=2, calib_size=(32, 48), force=True,
                            **QUIET)
    props = read_metadata_props(res.files["onnx"])
    assert props["teacher"] == res.sidecar["teacher"] == "da3-s-tiny"
    assert props["license"] == meta["provenance"]["license"] and props["precision"] == "int8"


def test_report_and_bench_take_da3_small_base(tmp_path, capsys):
    from edgehaze.cli import main

    out = tmp_path / "report.json"
    assert main(["report", "--backbone", "edge-xs", "--depth", "da3-s", "--random-depth", "--depth-input-size", "28",
                 "--size", "32", "48", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["depth"]["model"] == "da3-s" and rep["depth"]["params"] > 20e6 and rep["depth"]["flops"] > 0
    bench = tmp_path / "bench.json"
    assert main(["bench", "--teacher", "da3-s", "da3-b", "--random-depth", "--backbone", "edge-xs",
                 "--depth-input-size", "28", "--sizes", "32x48", "--runs", "2", "--warmup", "0", "--threads", "1",
                 "--no-progress", "--json", str(bench)]) == 0
    rows = json.loads(bench.read_text())["results"]
    assert [r["name"] for r in rows] == ["edge-xs+da3-s", "edge-xs+da3-b"]
    assert all(r["role"] == "teacher" and r["median_ms"] > 0 for r in rows)
    capsys.readouterr()
