"""Paired hazy/clear datasets for training and evaluation.

:class:`PairedDataset` turns a :class:`~edgehaze.data.layouts.PairList` into
samples ``dict(hazy=3xHxW, gt=3xHxW, name=str)`` (float32 tensors in [0, 1];
``gt`` is absent for real haze without ground truth).

Augmentation is random crop + horizontal flip only. Rotations and vertical
flips are left out on purpose: the depth prior (ground below, sky above,
haze thicker toward the horizon) is what a depth-guided dehazer learns from.

Randomness comes from ``numpy.random.default_rng((seed, epoch, index))`` and
nothing else, so a sample is the same in any DataLoader worker, in any order,
and differs from epoch to epoch (call :meth:`PairedDataset.set_epoch`; with
``persistent_workers=True`` the workers keep the epoch they were started
with, so leave that off or re-create the loader).

Bad data (unreadable or truncated files, hazy without GT, size mismatch in a
pair, image smaller than the crop) raises an :class:`EdgehazeError` naming the
files, or with ``skip_bad=True`` is recorded in :attr:`PairedDataset.skipped`
(``(name, reason)``) and left out. Missing GT and mismatched sizes (read from
file headers, cheap) are found when the dataset is built; a file that only
fails on full decode is found when it is read: it is then recorded and the
next good sample is returned in its place (``skipped`` lists what the current
process saw; in DataLoader workers that is the worker's copy).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from edgehaze.data.layouts import Pair, PairList, find_pairs
from edgehaze.errors import EdgehazeError, ImageReadError
from edgehaze.imageio import read_image

if TYPE_CHECKING:  # pragma: no cover
    import torch

CropSize = Union[None, int, Tuple[int, int]]


def image_size(path: Path) -> Tuple[int, int]:
    """(height, width) from the file header, upright (EXIF orientation applied)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            try:
                if int(im.getexif().get(0x0112, 1)) in (5, 6, 7, 8):
                    w, h = h, w
            except Exception:
                pass
            return h, w
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        # fall back to a full read (formats Pillow cannot open lazily)
        try:
            img = read_image(path)
        except ImageReadError:
            raise ImageReadError(path, str(exc) or "not a recognised image") from None
        return img.shape[0], img.shape[1]


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The one source of augmentation randomness: a function of (seed, epoch, index)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(index)])


def crop_box(shape: Tuple[int, int], crop: Tuple[int, int], rng: np.random.Generator) -> Tuple[int, int]:
    """Top-left corner of a random ``crop`` window inside an image of ``shape``."""
    h, w = shape
    ch, cw = crop
    return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))


class PairedDataset:
    """A torch-style map dataset of hazy/GT pairs (see module docstring).

    pairs: a PairList (from :func:`find_pairs`) or a list of Pair (then GT is
        expected when any pair has one).
    crop: None (full images), an int, or (h, w): random crop for training.
    flip: random horizontal flip (p = 0.5).
    seed: base seed; samples depend on (seed, epoch, index) only.
    skip_bad: record and leave out bad pairs instead of raising.
    check_sizes: compare hazy/GT sizes from file headers up front.
    cache: keep each decoded pair in memory (8-bit images as uint8, 1/4 of
        float32), so every epoch after the first crops from memory instead of
        decoding PNGs again. Decoding is ~40 % of a CPU training step at small
        crops; the cache lives in the process that reads, so it pays with
        ``workers: 0`` (DataLoader workers are re-created each epoch).
    """

    def __init__(
        self,
        pairs: Union[PairList, Sequence[Pair]],
        crop: CropSize = None,
        flip: bool = False,
        seed: int = 0,
        skip_bad: bool = False,
        check_sizes: bool = True,
        cache: bool = False,
    ) -> None:
        self._cache: Optional[Dict[int, Tuple[np.ndarray, Optional[np.ndarray]]]] = {} if cache else None
        if isinstance(pairs, PairList):
            has_gt, items = pairs.has_gt, list(pairs.pairs)
        else:
            items = list(pairs)
            has_gt = any(p.gt is not None for p in items)
        if isinstance(crop, int):
            crop = (crop, crop)
        if crop is not None and (len(crop) != 2 or min(crop) <= 0):
            raise EdgehazeError(f"crop must be a positive size, got {crop}")
        self.crop: Optional[Tuple[int, int]] = tuple(crop) if crop is not None else None  # type: ignore[assignment]
        self.flip = bool(flip)
        self.seed = int(seed)
        self.epoch = 0
        self.skip_bad = bool(skip_bad)
        self.has_gt = has_gt
        self.skipped: List[Tuple[str, str]] = []
        self.pairs: List[Pair] = []
        for pair in items:
            problem = self._check(pair, check_sizes)
            if problem is None:
                self.pairs.append(pair)
            else:
                self._bad(pair, problem)
        if not self.pairs:
            reasons = "; ".join(f"{n}: {r}" for n, r in self.skipped[:3])
            raise EdgehazeError(f"no usable image pairs left ({len(self.skipped)} skipped: {reasons})")

    # ------------------------------------------------------------ validation
    def _bad(self, pair: Pair, reason: str) -> None:
        if not self.skip_bad:
            raise EdgehazeError(f"{reason} (pass --skip-bad to skip such pairs)")
        self.skipped.append((pair.name, reason))

    def _check(self, pair: Pair, check_sizes: bool) -> Optional[str]:
        if self.has_gt and pair.gt is None:
            return f"{pair.hazy}: no ground-truth image found for it"
        if not check_sizes:
            return None
        try:
            hs = image_size(pair.hazy)
            gs = image_size(pair.gt) if pair.gt is not None else hs
        except ImageReadError as exc:
            return str(exc)
        if hs != gs:
            return f"size mismatch: {pair.hazy} is {hs[1]}x{hs[0]} but {pair.gt} is {gs[1]}x{gs[0]}"
        if self.crop is not None and (hs[0] < self.crop[0] or hs[1] < self.crop[1]):
            return f"{pair.hazy} is {hs[1]}x{hs[0]}, smaller than the crop {self.crop[1]}x{self.crop[0]}"
        return None

    # ------------------------------------------------------------ access
    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation of this epoch (crops differ across epochs)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.pairs)

    def load_pair(self, index: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """The full, un-augmented images of pair ``index`` (H x W x 3 float32)."""
        hazy, gt = self._stored_pair(index)
        return _as_float(hazy), (_as_float(gt) if gt is not None else None)

    def _stored_pair(self, index: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Pair ``index`` as kept in the cache (uint8 for 8-bit images) or freshly decoded."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        hazy, gt = self._decode_pair(index)
        if self._cache is not None:
            hazy, gt = _compact(hazy), (_compact(gt) if gt is not None else None)
            self._cache[index] = (hazy, gt)
        return hazy, gt

    def _decode_pair(self, index: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        pair = self.pairs[index]
        hazy = read_image(pair.hazy)
        gt = read_image(pair.gt) if pair.gt is not None else None
        if gt is not None and gt.shape != hazy.shape:
            raise EdgehazeError(
                f"size mismatch: {pair.hazy} is {hazy.shape[1]}x{hazy.shape[0]} "
                f"but {pair.gt} is {gt.shape[1]}x{gt.shape[0]}"
            )
        if self.crop is not None and (hazy.shape[0] < self.crop[0] or hazy.shape[1] < self.crop[1]):
            raise EdgehazeError(f"{pair.hazy} is smaller than the crop {self.crop[1]}x{self.crop[0]}")
        return hazy, gt

    def augment(
        self, index: int, hazy: np.ndarray, gt: Optional[np.ndarray]
    ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Apply this epoch's crop/flip for ``index`` to both images identically."""
        if self.crop is None and not self.flip:
            return hazy, gt
        rng = sample_rng(self.seed, self.epoch, index)
        if self.crop is not None:
            top, left = crop_box(hazy.shape[:2], self.crop, rng)
            sl = (slice(top, top + self.crop[0]), slice(left, left + self.crop[1]))
            hazy = hazy[sl]
            gt = gt[sl] if gt is not None else None
        if self.flip and rng.random() < 0.5:
            hazy = hazy[:, ::-1]
            gt = gt[:, ::-1] if gt is not None else None
        return hazy, gt

    def __getitem__(self, index: int) -> Dict[str, Any]:
        import torch

        n = len(self.pairs)
        if not -n <= index < n:
            raise IndexError(index)
        index %= n
        for attempt in range(n):
            i = (index + attempt) % n
            try:
                hazy, gt = self._stored_pair(i)
            except EdgehazeError as exc:
                if not self.skip_bad:
                    raise
                self.skipped.append((self.pairs[i].name, str(exc)))
                continue
            hazy, gt = self.augment(index, hazy, gt)  # crop first: only the crop is converted to float
            sample: Dict[str, Any] = {"hazy": _chw(torch, _as_float(hazy)), "name": self.pairs[i].name}
            if gt is not None:
                sample["gt"] = _chw(torch, _as_float(gt))
            return sample
        raise EdgehazeError(f"every pair failed to load; first problems: {self.skipped[:3]}")

    def summary(self) -> Dict[str, Any]:
        """Counts for logs/reports: usable pairs and what was skipped, why."""
        return {
            "pairs": len(self.pairs),
            "skipped": [{"name": n, "reason": r} for n, r in self.skipped],
        }


def _compact(img: np.ndarray) -> np.ndarray:
    """``img`` as uint8 when that is exact (an 8-bit source), else unchanged."""
    u8 = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    if np.array_equal(u8.astype(np.float32) / np.float32(255.0), img):
        return u8
    return img


def _as_float(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) / np.float32(255.0) if img.dtype == np.uint8 else img


def _chw(torch: Any, img: np.ndarray) -> "torch.Tensor":
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32))


def build_dataset(
    root: Optional[Union[str, Path]] = None,
    layout: str = "auto",
    split: Optional[str] = None,
    hazy_dir: Optional[Union[str, Path]] = None,
    clear_dir: Optional[Union[str, Path]] = None,
    **kwargs: Any,
) -> PairedDataset:
    """Find the pairs under ``root`` (or ``hazy_dir``/``clear_dir``) and wrap them.

    ``kwargs`` go to :class:`PairedDataset` (crop, flip, seed, skip_bad).
    """
    pairs = find_pairs(
        Path(root) if root is not None else None,
        layout=layout,
        split=split,
        hazy_dir=Path(hazy_dir) if hazy_dir is not None else None,
        clear_dir=Path(clear_dir) if clear_dir is not None else None,
    )
    return PairedDataset(pairs, **kwargs)
