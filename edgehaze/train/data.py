"""Training data plumbing: datasets from the config, a resumable sampler.

Data order is a function of ``(seed, epoch)`` only (the permutation of
``torch.utils.data.DistributedSampler``), and each sample's augmentation a
function of ``(seed, epoch, index)`` (:class:`edgehaze.data.PairedDataset`).
A run resumed mid-epoch therefore re-creates the epoch's order and skips the
batches it had consumed, and sees exactly the batches an uninterrupted run
would have seen.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from edgehaze.errors import ConfigError, EdgehazeError
from edgehaze.train.config import HOLDOUT, DataConfig


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` that can start mid-epoch.

    ``set_position(epoch, skip)`` selects the epoch's permutation (from
    ``seed + epoch``) and drops the first ``skip`` indices of this rank's
    share (the samples already consumed). Works with one process too
    (``num_replicas=1, rank=0``).
    """

    def __init__(self, dataset: Any, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.skip = 0

    def set_position(self, epoch: int, skip: int = 0) -> None:
        self.set_epoch(epoch)
        self.skip = int(skip)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.skip:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.skip)


class EpochAwareDataset(Dataset):
    """Adds ``index`` to each sample and forwards ``set_epoch`` (augmentation)."""

    def __init__(self, base: Any) -> None:
        self.base = base

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        sample = dict(self.base[index])
        sample["index"] = index
        return sample


def batches_per_epoch(n_samples: int, batch_size: int, world_size: int) -> int:
    """Full micro-batches per epoch per rank (the last partial batch is dropped)."""
    per_rank = -(-n_samples // world_size)
    return per_rank // batch_size


def make_loader(
    dataset: Any, sampler: ResumableSampler, batch_size: int, workers: int, device: torch.device
) -> DataLoader:
    """A loader over this rank's share, dropping the last partial batch.

    ``persistent_workers`` stays off: workers are re-created each epoch so
    they see the dataset's current epoch (its augmentation).
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )


def _has_data(root: Path) -> bool:
    return root.is_dir() and any(root.iterdir())


def ensure_data(cfg: DataConfig, is_main: bool = True) -> None:
    """Generate the procedural dataset into ``root`` when configured and missing."""
    if cfg.root is None:
        raise ConfigError("data.root is not set; pass data.root=DIR")
    root = Path(cfg.root)
    if _has_data(root) or cfg.procedural is None:
        return
    if not is_main:
        return
    from edgehaze.data.procedural import make_procedural_dataset

    p = cfg.procedural
    if len(p.size) != 2:
        raise ConfigError(f"data.procedural.size needs [height, width], got {p.size}")
    print(f"edgehaze train: generating {p.n_train}+{p.n_test} procedural scenes into {root}")
    make_procedural_dataset(root, p.n_train, p.n_test, size=(p.size[0], p.size[1]), seed=p.seed, progress=True)


def _scene_key(pair: Any) -> str:
    """Pairs sharing a ground truth are one scene (SOTS: 3 hazy per clear)."""
    return str(pair.gt) if pair.gt is not None else str(pair.hazy)


def split_holdout(pairs: Any, every: int) -> Tuple[List[Any], List[Any]]:
    """(train, validation) pairs: every ``every``-th scene, in sorted order, is held out.

    Deterministic and disjoint by scene. With fewer than ``every`` scenes the
    last scene is held out, so validation is never empty when >= 2 scenes exist.
    """
    scenes = sorted({_scene_key(p) for p in pairs})
    held = {s for i, s in enumerate(scenes) if i % every == every - 1}
    if not held and len(scenes) >= 2:
        held = {scenes[-1]}
    if not held:
        raise EdgehazeError(f"data.val_split=holdout needs at least 2 training scenes, found {len(scenes)}")
    train = [p for p in pairs if _scene_key(p) not in held]
    val = [p for p in pairs if _scene_key(p) in held]
    return train, val


def _training_pairs(cfg: DataConfig) -> Any:
    from edgehaze.data.layouts import find_pairs

    if cfg.root is None:
        raise ConfigError("data.root is not set; pass data.root=DIR")
    try:
        return find_pairs(Path(cfg.root), layout=cfg.layout, split=cfg.train_split)
    except EdgehazeError as exc:
        raise EdgehazeError(f"data.root={cfg.root}: {exc}") from None


def build_train_set(cfg: DataConfig, seed: int) -> Any:
    """The training :class:`PairedDataset` (random crop/flip per the config).

    With ``val_split: holdout`` the held-out validation scenes are removed.
    """
    from edgehaze.data.datasets import PairedDataset

    pairs = _training_pairs(cfg)
    if cfg.val_split == HOLDOUT:
        pairs.pairs = split_holdout(pairs.pairs, cfg.holdout_every)[0]
    try:
        return PairedDataset(pairs, crop=cfg.crop, flip=cfg.flip, seed=seed, skip_bad=cfg.skip_bad,
                             cache=cfg.cache_images)
    except EdgehazeError as exc:
        raise EdgehazeError(f"data.root={cfg.root}: {exc}") from None


def build_val_set(cfg: DataConfig, limit: Optional[int] = None) -> Optional[Any]:
    """Full-size validation pairs (no augmentation), or None when not configured."""
    from edgehaze.data.datasets import PairedDataset
    from edgehaze.data.layouts import find_pairs

    if cfg.val_split is None and cfg.val_root is None:
        return None
    if cfg.val_split == HOLDOUT and cfg.val_root is None:
        pairs = _training_pairs(cfg)
        pairs.pairs = split_holdout(pairs.pairs, cfg.holdout_every)[1]
        limit = cfg.val_limit if limit is None else limit
        if limit is not None:
            pairs.pairs = pairs.pairs[:limit]
        return PairedDataset(pairs, crop=None, flip=False, skip_bad=cfg.skip_bad)
    root = Path(cfg.val_root or cfg.root or ".")
    layout = cfg.val_layout if cfg.val_root else cfg.layout
    try:
        pairs = find_pairs(root, layout=layout, split=cfg.val_split)
    except EdgehazeError as exc:
        raise EdgehazeError(f"validation data ({root}, split {cfg.val_split}): {exc}") from None
    if not pairs.has_gt:
        raise EdgehazeError(f"validation data {root} has no ground truth; set data.val_split/val_root to paired data")
    limit = cfg.val_limit if limit is None else limit
    if limit is not None:
        pairs.pairs = pairs.pairs[:limit]
    return PairedDataset(pairs, crop=None, flip=False, skip_bad=cfg.skip_bad)


def to_device(batch: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
