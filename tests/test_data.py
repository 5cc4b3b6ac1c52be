"""Dataset layouts, pairing rules, bad-data handling and deterministic augmentation."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edgehaze.data.datasets import PairedDataset, build_dataset
from edgehaze.data.layouts import DATASET_LAYOUTS, detect_layout, find_pairs, gt_id
from edgehaze.errors import EdgehazeError
from edgehaze.imageio import write_image


def _img(path: Path, h: int = 16, w: int = 20, seed: int = 0) -> None:
    write_image(path, np.random.default_rng(seed).random((h, w, 3)).astype(np.float32))


def test_registry_has_every_layout() -> None:
    assert {"reside", "dehazeformer", "rw2ah", "hazy-only"} <= set(DATASET_LAYOUTS.names())


@pytest.mark.parametrize(
    "hazy, gt",
    [
        ("1_1_0.90179.png", "1.png"),  # ITS
        ("1400_1.png", "1400.png"),  # SOTS indoor
        ("0005_0.8_0.04.jpg", "0005.jpg"),  # OTS
        ("0001_0.8_0.2.jpg", "0001.png"),  # SOTS outdoor: GT extension differs
    ],
)
def test_reside_naming_rule(tmp_path: Path, hazy: str, gt: str) -> None:
    _img(tmp_path / "hazy" / hazy)
    _img(tmp_path / "GT" / gt)
    _img(tmp_path / "GT" / "9999.png")  # an unrelated GT must not be picked
    found = find_pairs(tmp_path)
    assert found.layout == "reside"
    assert [(p.hazy.name, p.gt.name if p.gt else None) for p in found.pairs] == [(hazy, gt)]
    assert gt_id(Path(hazy).stem) == Path(gt).stem


@pytest.mark.parametrize("gt_dir", ["gt", "clear", "GT"])
def test_reside_gt_folder_names(tmp_path: Path, gt_dir: str) -> None:
    _img(tmp_path / "hazy" / "3_2.png")
    _img(tmp_path / gt_dir / "3.png")
    assert find_pairs(tmp_path).pairs[0].gt == tmp_path / gt_dir / "3.png"


def test_dehazeformer_layout_and_splits(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for n in ("a_1", "b_2"):  # underscores: equal-name match, not the RESIDE rule
            _img(tmp_path / split / "hazy" / f"{n}.png")
            _img(tmp_path / split / "GT" / f"{n}.png")
    _img(tmp_path / "train" / "hazy" / "only_train.png")
    _img(tmp_path / "train" / "GT" / "only_train.png")
    assert detect_layout(tmp_path) == "dehazeformer"
    test = find_pairs(tmp_path)  # test preferred by default
    assert len(test) == 2 and all(p.gt is not None and p.gt.stem == p.hazy.stem for p in test.pairs)
    assert len(find_pairs(tmp_path, split="train")) == 3
    assert len(find_pairs(tmp_path / "train", layout="dehazeformer")) == 3  # root is the split itself


def test_rw2ah_layout(tmp_path: Path) -> None:
    _img(tmp_path / "test" / "input" / "x.jpg")
    _img(tmp_path / "test" / "gt" / "x.jpg")
    found = find_pairs(tmp_path)
    assert found.layout == "rw2ah" and found.pairs[0].gt.name == "x.jpg"


def test_explicit_folders_and_hazy_only(tmp_path: Path) -> None:
    _img(tmp_path / "h" / "12_3.png")
    _img(tmp_path / "c" / "12.png")
    pl = find_pairs(hazy_dir=tmp_path / "h", clear_dir=tmp_path / "c")
    assert pl.layout == "folders" and pl.pairs[0].gt.name == "12.png"
    real = find_pairs(tmp_path / "h")
    assert real.layout == "hazy-only" and not real.has_gt and real.pairs[0].gt is None
    ds = PairedDataset(real)
    assert "gt" not in ds[0] and ds[0]["hazy"].shape == (3, 16, 20)


def test_auto_detect_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(EdgehazeError, match="cannot tell the dataset layout.*stuff"):
        find_pairs(tmp_path)
    with pytest.raises(EdgehazeError, match="no such"):
        find_pairs(tmp_path / "missing")
    with pytest.raises(EdgehazeError, match="unknown dataset layout 'nope'"):
        find_pairs(tmp_path, layout="nope")


def _bad_set(tmp_path: Path) -> Path:
    _img(tmp_path / "hazy" / "1_1.png")
    _img(tmp_path / "gt" / "1.png")
    _img(tmp_path / "hazy" / "2_1.png")  # no GT
    _img(tmp_path / "hazy" / "3_1.png", h=16, w=20)
    _img(tmp_path / "gt" / "3.png", h=18, w=20)  # size mismatch
    (tmp_path / "hazy" / "4_1.png").write_bytes(b"garbage")  # not an image
    _img(tmp_path / "gt" / "4.png")
    return tmp_path


def test_bad_pairs_raise_naming_files(tmp_path: Path) -> None:
    pairs = find_pairs(_bad_set(tmp_path))
    assert [p.name for p in pairs.missing_gt] == ["2_1"]
    with pytest.raises(EdgehazeError, match=r"2_1\.png: no ground-truth"):
        PairedDataset(pairs)


def test_bad_pairs_skipped_and_counted(tmp_path: Path) -> None:
    ds = build_dataset(_bad_set(tmp_path), skip_bad=True)
    assert len(ds) == 1 and ds[0]["name"] == "1_1"
    reasons = dict(ds.skipped)
    assert set(reasons) == {"2_1", "3_1", "4_1"}
    assert "size mismatch" in reasons["3_1"] and "3.png" in reasons["3_1"]
    assert "4_1.png" in reasons["4_1"]
    assert ds.summary()["pairs"] == 1 and len(ds.summary()["skipped"]) == 3


def test_truncated_file_found_on_read_is_skipped(tmp_path: Path) -> None:
    for i in (1, 2):
        _img(tmp_path / "hazy" / f"{i}_1.png", h=64, w=64, seed=i)
        _img(tmp_path / "gt" / f"{i}.png", h=64, w=64)
    data = (tmp_path / "hazy" / "1_1.png").read_bytes()
    (tmp_path / "hazy" / "1_1.png").write_bytes(data[: len(data) // 2])  # header intact
    strict = build_dataset(tmp_path)
    with pytest.raises(EdgehazeError, match="1_1.png"):
        strict[0]
    lenient = build_dataset(tmp_path, skip_bad=True)
    assert lenient[0]["name"] == "2_1" and lenient.skipped[0][0] == "1_1"


def _train_set(tmp_path: Path, n: int = 4) -> Path:
    for i in range(n):
        _img(tmp_path / "train" / "hazy" / f"{i}.png", h=40, w=48, seed=i)
        _img(tmp_path / "train" / "GT" / f"{i}.png", h=40, w=48, seed=100 + i)
    return tmp_path


def test_crop_flip_deterministic_by_seed_epoch_index(tmp_path: Path) -> None:
    root = _train_set(tmp_path)
    a = build_dataset(root, split="train", crop=16, flip=True, seed=7)
    b = build_dataset(root, split="train", crop=16, flip=True, seed=7)
    s = a[2]
    assert s["hazy"].shape == (3, 16, 16) and s["gt"].shape == (3, 16, 16)
    # order-independent: b reads other items first
    _ = b[0], b[3]
    assert np.array_equal(b[2]["hazy"].numpy(), s["hazy"].numpy())
    crops_by_epoch = []
    for epoch in range(4):
        a.set_epoch(epoch)
        crops_by_epoch.append(a[2]["hazy"].numpy())
    assert any(not np.array_equal(crops_by_epoch[0], c) for c in crops_by_epoch[1:])
    other_seed = build_dataset(root, split="train", crop=16, flip=True, seed=8)
    assert not all(np.array_equal(other_seed[i]["hazy"].numpy(), a[i]["hazy"].numpy()) for i in range(4))


def test_crop_is_aligned_between_hazy_and_gt(tmp_path: Path) -> None:
    root = tmp_path
    img = np.random.default_rng(0).random((30, 40, 3)).astype(np.float32)
    write_image(root / "hazy" / "5_1.png", img)
    write_image(root / "gt" / "5.png", img)  # identical: any misalignment shows
    ds = build_dataset(root, crop=(12, 9), flip=True, seed=3)
    for epoch in range(5):
        ds.set_epoch(epoch)
        s = ds[0]
        assert s["hazy"].shape == (3, 12, 9)
        assert np.array_equal(s["hazy"].numpy(), s["gt"].numpy())


def test_crop_larger_than_image_is_bad_data(tmp_path: Path) -> None:
    _train_set(tmp_path, n=1)
    with pytest.raises(EdgehazeError, match="smaller than the crop"):
        build_dataset(tmp_path, split="train", crop=64)


def test_dataloader_workers_give_same_samples(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    ds = build_dataset(_train_set(tmp_path), split="train", crop=16, flip=True, seed=1)
    ref = torch.stack([ds[i]["hazy"] for i in range(len(ds))])
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    got = torch.cat([b["hazy"] for b in loader])
    assert torch.equal(ref, got)


SHARED = Path(os.environ.get("EDGEHAZE_SHARED", "/work/shared")) / "data" / "sots_indoor"


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared SOTS-indoor sample not present")
def test_shared_sots_indoor_pairs() -> None:
    found = find_pairs(SHARED)
    assert found.layout == "reside" and len(found) == 30
    assert all(p.gt is not None and p.gt.stem == p.hazy.stem.split("_")[0] for p in found.pairs)
    ds = PairedDataset(found)
    assert ds[0]["hazy"].shape == ds[0]["gt"].shape == (3, 460, 620)


def test_image_cache_gives_the_same_samples_without_reading_files_again(tmp_path: Path) -> None:
    root = _train_set(tmp_path)
    plain = build_dataset(root, split="train", crop=8, flip=True, seed=3)
    cached = build_dataset(root, split="train", crop=8, flip=True, seed=3, cache=True)
    want = {}
    for epoch in range(3):
        plain.set_epoch(epoch)
        want.update({(epoch, i): plain[i]["hazy"].numpy() for i in range(len(plain))})
    for epoch in range(3):
        cached.set_epoch(epoch)
        for i in range(len(cached)):
            got = cached[i]["hazy"].numpy()
            assert got.dtype == np.float32 and np.array_equal(got, want[(epoch, i)])
        if epoch == 0:
            for f in root.rglob("*.png"):
                f.unlink()  # every later epoch must come from memory
    assert all(v[0].dtype == np.uint8 for v in cached._cache.values())  # 8-bit sources kept as uint8
    with pytest.raises(EdgehazeError):
        plain.load_pair(0)  # the uncached dataset reads files, and they are gone
