"""Depth at a consistent scale (issue 16, item 2): the teacher runs on the whole
training image, its features are cropped with the RGB crop."""
from pathlib import Path

import pytest
import torch

from edgehaze.train.depth_crop import CropWithBox, FullImageDepth, crop_features


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgehaze.data.procedural import make_procedural_dataset

    root = tmp_path_factory.mktemp("procedural")
    make_procedural_dataset(root, n_train=3, n_test=1, size=(40, 56), seed=5)
    return root


def test_grid_aligned_crop_is_slicing_and_flip_follows_the_image() -> None:
    f = torch.rand(1, 4, 10, 14)  # a stride-4 level of a 40 x 56 image
    (c,) = crop_features([f], [8, 12, 16, 24, 0, 40, 56])
    assert torch.allclose(c, f[..., 2:6, 3:9], atol=1e-6)
    (cf,) = crop_features([f], [8, 12, 16, 24, 1, 40, 56])
    assert torch.allclose(cf, torch.flip(f[..., 2:6, 3:9], dims=[-1]), atol=1e-6)


def test_crop_with_box_matches_paired_dataset_augmentation(data: Path) -> None:
    from edgehaze.data.datasets import build_dataset

    plain = build_dataset(data, layout="dehazeformer", split="train", crop=24, flip=True, seed=7)
    boxed = CropWithBox(build_dataset(data, layout="dehazeformer", split="train", seed=7), 24, True, seed=7)
    for epoch in (0, 1):
        plain.set_epoch(epoch)
        boxed.set_epoch(epoch)
        for i in range(len(plain)):
            a, b = plain[i], boxed[i]
            assert torch.equal(a["hazy"], b["hazy"]) and torch.equal(a["gt"], b["gt"])
            assert b["box"].tolist()[2:4] == [24, 24] and b["box"].tolist()[5:] == [40, 56]


@pytest.mark.parametrize("use_cache", [False, True])
def test_cached_full_image_depth_cropped_equals_depth_on_full_image_cropped(
    tmp_path: Path, data: Path, use_cache: bool
) -> None:
    from edgehaze.data.datasets import build_dataset
    from edgehaze.models.dehazer import build_dehazer
    from edgehaze.train.teacher import DepthFeatureCache

    torch.manual_seed(0)
    model = build_dehazer(backbone="edge-xs", depth="tiny", depth_kwargs={"input_size": 28}).eval()
    boxed = CropWithBox(build_dataset(data, layout="dehazeformer", split="train"), 24, True, seed=3)
    cache = DepthFeatureCache(tmp_path / "cache", model.depth, boxed) if use_cache else None
    provider = FullImageDepth(boxed, cache)
    samples = [boxed[i] for i in range(len(boxed))]
    batch = {"hazy": torch.stack([s["hazy"] for s in samples]), "index": list(range(len(samples))),
             "box": torch.stack([s["box"] for s in samples])}
    for _ in range(2):  # the second pass reads the cache
        got = provider.features(model, batch)
        for j, s in enumerate(samples):
            full = model.depth_features(boxed.base[j]["hazy"][None])
            want = crop_features(full, s["box"].tolist(), [tuple(g.shape[-2:]) for g in got])
            for g, w in zip(got, want):
                assert torch.allclose(g[j:j + 1], w, atol=2e-3)  # float16 cache
    if use_cache:
        assert cache.hits == len(samples) and cache.misses == len(samples)
    # and it is not the crop's own depth (the point of the change)
    on_crop = model.depth_features(batch["hazy"])
    assert not torch.allclose(on_crop[-1], got[-1], atol=1e-3) or on_crop[-1].shape != got[-1].shape


def test_fused_training_uses_full_image_depth_with_crops(tmp_path: Path, data: Path) -> None:
    from edgehaze.train.config import TrainConfig, load_config
    from edgehaze.train.teacher import run_training

    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(f"""
name: t
out_dir: {tmp_path / 'run'}
stages: [rgb, fused]
model: {{backbone: edge-xs, depth: tiny, depth_kwargs: {{input_size: 28}}}}
data: {{root: {data}, layout: dehazeformer, crop: 24, flip: true, workers: 0}}
train: {{batch_size: 2, val_every: 100, log_every: 1, threads: 1, progress: false, depth_cache: true}}
rgb: {{steps: 2}}
fused: {{steps: 3}}
""")
    cfg = load_config(cfg_path, TrainConfig)  # depth_cache with crops is valid at full_image scale
    results = run_training(cfg)
    assert results["fused"].steps == 3
    assert any((tmp_path / "run" / "depth_cache").rglob("*.safetensors"))
