"""Issue 16 item 2: each fusion point takes the depth level whose stride matches relative to the image
(``depth_image_size``), the choice survives a checkpoint, and the default stays the teacher-input one."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgehaze.errors import ConfigError

KW = {"scale": 8, "apply": "guided", "context": True}


def test_teacher_strides_relative_to_the_image_follow_its_resize() -> None:
    from edgehaze.models.dehazer import build_depth

    teacher = build_depth("tiny", input_size=98)
    nominal = list(teacher.feature_strides)  # relative to the 98 px network input
    # a 460x620 image is shrunk to 98x126 (shorter side 98, sides multiples of 14): ~4.7x coarser maps
    rel = teacher.image_strides(460, 620)
    factor = ((460 / 98) * (620 / 126)) ** 0.5
    assert rel == pytest.approx([s * factor for s in nominal])
    # at 518 on a 1080p frame (shrunk ~2x) the maps are 2x coarser relative to the frame
    assert build_depth("tiny", input_size=518).image_strides(1080, 1920)[0] == pytest.approx(1.75 * 1080 / 518, rel=0.02)


def test_a_provider_without_a_resize_keeps_its_nominal_strides() -> None:
    from edgehaze.models.dehazer import build_depth

    student = build_depth("student-s", widths=[8, 16, 32, 64], blocks=[1, 1, 1, 1])
    assert student.image_strides(460, 620) == [float(s) for s in student.feature_strides]


def test_levels_by_image_stride_and_they_survive_a_checkpoint(tmp_path: Path) -> None:
    from edgehaze.checkpoint import load_dehazer, save_dehazer
    from edgehaze.models.dehazer import build_dehazer

    torch.manual_seed(0)
    default = build_dehazer("edge-s", depth="tiny", depth_kwargs={"input_size": 98}, fusion="lite",
                            backbone_kwargs=KW)
    # nominal strides (1.75 .. 14) against fusion points at 8 and 16: the two coarsest levels
    assert default.levels == [2, 3] and "depth_image_size" not in default.build_args()
    model = build_dehazer("edge-s", depth="tiny", depth_kwargs={"input_size": 98}, fusion="lite", backbone_kwargs=KW,
                          depth_image_size=[460, 620])
    # relative to a 460x620 image the maps are at ~8.4, 17, 34, 67 px: points at 8 and 16 take levels 0 and 1
    assert model.levels == [0, 1]
    path = save_dehazer(tmp_path / "m.safetensors", model)
    loaded, meta = load_dehazer(path)
    assert meta["build"]["depth_image_size"] == [460, 620] and loaded.levels == [0, 1]
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # a teacher whose input is near the image size picks the same levels either way (SOTS at 518)
    near = build_dehazer("edge-s", depth="tiny", depth_kwargs={"input_size": 518}, fusion="lite", backbone_kwargs=KW,
                         depth_image_size=[460, 620])
    assert near.levels == [2, 3]


def test_config_passes_the_size_and_checks_it(tmp_path: Path) -> None:
    from edgehaze.train.config import TrainConfig, from_dict
    from edgehaze.train.teacher import build_fused_model

    def cfg(**model):
        c = from_dict(TrainConfig, {"stages": ["fused"], "data": {"root": str(tmp_path)}, "fused": {"init": "x"},
                                    "model": {"backbone": "edge-s", "backbone_kwargs": KW, "depth": "tiny",
                                              "depth_kwargs": {"input_size": 98}, "fusion": "lite", **model}})
        c.validate("t")
        return c

    assert build_fused_model(cfg(depth_image_size=[460, 620]), None, "none").levels == [0, 1]
    assert build_fused_model(cfg(), None, "none").levels == [2, 3]
    with pytest.raises(ConfigError, match="model.depth_image_size"):
        cfg(depth_image_size=[460])
    with pytest.raises(ConfigError, match="oracle.*depth_scale: full_image"):
        c = from_dict(TrainConfig, {"stages": ["fused"], "data": {"root": str(tmp_path)}, "fused": {"init": "x"},
                                    "model": {"depth": "oracle"}, "train": {"depth_scale": "crop"}})
        c.validate("t")
