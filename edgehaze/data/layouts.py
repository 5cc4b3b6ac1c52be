"""Folder layouts of paired dehazing datasets, and how hazy files find their GT.

Every public dehazing dataset arranges its files a little differently. Each
layout here knows one arrangement: how to recognise it (``detect``) and how
to list ``(hazy, gt)`` pairs from it (``pairs``). They live in one registry,
:data:`DATASET_LAYOUTS`, so ``--layout NAME`` and ``auto`` detection share
the same code. A hazy file whose GT is missing is *kept* with ``gt=None``;
the dataset decides (error, or skip and count) so the user hears about it.

Layouts:

``reside``
    RESIDE originals: ``hazy/`` (or ``haze/``) next to ``gt/``, ``GT/`` or
    ``clear/``. Several hazy renderings share one GT; the GT id is the hazy
    name up to the first ``_`` and its extension may differ:
    ITS ``1_1_0.90179.png`` -> ``1.png``; SOTS-indoor ``1400_1.png`` ->
    ``1400.png``; OTS ``0005_0.8_0.04.jpg`` -> ``0005.jpg``; SOTS-outdoor
    ``0001_0.8_0.2.jpg`` -> ``0001.png``. An exact name match wins first.
``dehazeformer``
    DehazeFormer's layout, as RESIDE-6K ships: ``{train,test}/{GT,hazy}/``
    with equal file names (``edgehaze synth`` writes this too).
``rw2ah``
    SGDN's RW2AH: ``{train,test}/{gt,input}/`` with equal names.
``folders``
    Two explicit folders (``--hazy DIR --clear DIR``), matched like ``reside``
    (exact name first, then the id before the first ``_``). Never auto-detected.
``hazy-only``
    Real haze without ground truth: a folder of images (or its ``hazy/``).
    Only no-reference metrics apply.

``auto`` tries ``dehazeformer``, ``rw2ah``, ``reside``, ``hazy-only`` in that
order and says what it expected when nothing matches.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from edgehaze.errors import EdgehazeError
from edgehaze.imageio import list_images
from edgehaze.registry import Registry

DATASET_LAYOUTS = Registry("dataset layout")

HAZY_DIR_NAMES = ("hazy", "haze", "Hazy", "HAZY")
GT_DIR_NAMES = ("gt", "GT", "clear", "Clear", "gt_clear")
AUTO_ORDER = ("dehazeformer", "rw2ah", "reside", "hazy-only")


@dataclass(frozen=True)
class Pair:
    """One sample: a hazy file, its ground truth (``None`` if missing/none)."""

    hazy: Path
    gt: Optional[Path]
    name: str


@dataclass
class PairList:
    """What a layout found under a root.

    ``has_gt`` says whether the layout promises ground truth; when it does, a
    pair with ``gt=None`` is a *missing* GT (bad data), not real haze.
    """

    layout: str
    root: Path
    pairs: List[Pair] = field(default_factory=list)
    has_gt: bool = True

    @property
    def missing_gt(self) -> List[Pair]:
        return [p for p in self.pairs if self.has_gt and p.gt is None]

    def __len__(self) -> int:
        return len(self.pairs)


@dataclass(frozen=True)
class Layout:
    """A registered layout: ``detect(root, split)`` and ``pairs(root, split)``."""

    name: str
    detect: Callable[[Path, Optional[str]], bool]
    find: Callable[[Path, Optional[str]], PairList]
    description: str = ""


def _first_dir(root: Path, names: Sequence[str]) -> Optional[Path]:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def gt_id(hazy_stem: str) -> str:
    """RESIDE naming rule: the GT id is the hazy name up to the first ``_``."""
    return hazy_stem.split("_", 1)[0]


def match_pairs(hazy_files: Sequence[Path], gt_files: Sequence[Path], rule: str) -> List[Pair]:
    """Pair hazy files with GT files by stem.

    rule ``equal``: the GT has the same stem (extension may differ).
    rule ``reside``: same stem if one exists, else the stem up to the first ``_``.
    """
    by_stem: Dict[str, Path] = {}
    for g in gt_files:
        by_stem.setdefault(g.stem, g)
    out: List[Pair] = []
    for h in hazy_files:
        gt = by_stem.get(h.stem)
        if gt is None and rule == "reside":
            gt = by_stem.get(gt_id(h.stem))
        out.append(Pair(hazy=h, gt=gt, name=h.stem))
    return out


def _split_root(root: Path, split: Optional[str], hazy: str, gt: str) -> Optional[Path]:
    """The folder holding ``hazy``/``gt``: ``root/split`` or ``root`` itself."""
    splits = [split] if split else ["test", "train"]
    for s in splits:
        if (root / s / hazy).is_dir() and (root / s / gt).is_dir():
            return root / s
    if (root / hazy).is_dir() and (root / gt).is_dir() and root.name in ("train", "test", "val"):
        return root
    return None


def _equal_names_layout(name: str, hazy: str, gt: str) -> Layout:
    def detect(root: Path, split: Optional[str]) -> bool:
        return _split_root(root, split, hazy, gt) is not None

    def find(root: Path, split: Optional[str]) -> PairList:
        base = _split_root(root, split, hazy, gt)
        if base is None:
            where = f"{root}/{split or '{train,test}'}"
            raise EdgehazeError(f"{where}: layout '{name}' needs folders '{hazy}/' and '{gt}/' there")
        pairs = match_pairs(list_images(base / hazy), list_images(base / gt), rule="equal")
        return PairList(layout=name, root=base, pairs=pairs, has_gt=True)

    return Layout(name, detect, find, f"{{train,test}}/{{{gt},{hazy}}}/ with equal file names")


@DATASET_LAYOUTS.register("dehazeformer")
def _dehazeformer() -> Layout:
    return _equal_names_layout("dehazeformer", "hazy", "GT")


@DATASET_LAYOUTS.register("rw2ah")
def _rw2ah() -> Layout:
    return _equal_names_layout("rw2ah", "input", "gt")


@DATASET_LAYOUTS.register("reside")
def _reside() -> Layout:
    def dirs(root: Path, split: Optional[str]) -> "tuple[Optional[Path], Optional[Path]]":
        for base in ([root / split] if split and (root / split).is_dir() else []) + [root]:
            h, g = _first_dir(base, HAZY_DIR_NAMES), _first_dir(base, GT_DIR_NAMES)
            if h is not None and g is not None:
                return h, g
        return None, None

    def detect(root: Path, split: Optional[str]) -> bool:
        return dirs(root, split)[0] is not None

    def find(root: Path, split: Optional[str]) -> PairList:
        h, g = dirs(root, split)
        if h is None or g is None:
            raise EdgehazeError(
                f"{root}: layout 'reside' needs a hazy folder ({'/'.join(HAZY_DIR_NAMES)}) "
                f"and a GT folder ({'/'.join(GT_DIR_NAMES)}) inside it"
            )
        pairs = match_pairs(list_images(h), list_images(g), rule="reside")
        return PairList(layout="reside", root=root, pairs=pairs, has_gt=True)

    return Layout("reside", detect, find, "hazy/ + gt/|GT/|clear/, GT id = hazy name up to the first '_'")


@DATASET_LAYOUTS.register("hazy-only")
def _hazy_only() -> Layout:
    def folder(root: Path) -> Optional[Path]:
        sub = _first_dir(root, HAZY_DIR_NAMES)
        if sub is not None and _first_dir(root, GT_DIR_NAMES) is None:
            return sub
        if root.is_file() or (root.is_dir() and list_images(root)):
            return root
        return None

    def detect(root: Path, split: Optional[str]) -> bool:
        return folder(root) is not None

    def find(root: Path, split: Optional[str]) -> PairList:
        src = folder(root)
        if src is None:
            raise EdgehazeError(f"{root}: no images found (layout 'hazy-only' wants a folder of hazy images)")
        pairs = [Pair(hazy=p, gt=None, name=p.stem) for p in list_images(src)]
        return PairList(layout="hazy-only", root=root, pairs=pairs, has_gt=False)

    return Layout("hazy-only", detect, find, "a folder of hazy images without ground truth")


def folder_pairs(hazy_dir: Path, clear_dir: Optional[Path]) -> PairList:
    """Generic ``--hazy DIR [--clear DIR]`` pairing (exact name, then RESIDE id)."""
    hazy_dir = Path(hazy_dir)
    if not hazy_dir.exists():
        raise EdgehazeError(f"--hazy {hazy_dir}: no such folder")
    hazy = list_images(hazy_dir)
    if not hazy:
        raise EdgehazeError(f"--hazy {hazy_dir}: no images found (extensions: png, jpg, bmp, ...)")
    if clear_dir is None:
        return PairList("hazy-only", hazy_dir, [Pair(h, None, h.stem) for h in hazy], has_gt=False)
    clear_dir = Path(clear_dir)
    if not clear_dir.is_dir():
        raise EdgehazeError(f"--clear {clear_dir}: no such folder")
    return PairList("folders", hazy_dir, match_pairs(hazy, list_images(clear_dir), rule="reside"), has_gt=True)


def detect_layout(root: Path, split: Optional[str] = None) -> str:
    """Name of the first layout (in :data:`AUTO_ORDER`) that recognises ``root``."""
    root = Path(root)
    if not root.exists():
        raise EdgehazeError(f"{root}: no such dataset folder")
    for name in AUTO_ORDER:
        if DATASET_LAYOUTS.build(name).detect(root, split):
            return name
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    raise EdgehazeError(
        f"{root}: cannot tell the dataset layout (sub-folders: {', '.join(subdirs) or 'none'}; "
        "no images). Expected {train,test}/{GT,hazy}/ (dehazeformer), {train,test}/{gt,input}/ (rw2ah), "
        "hazy/ + gt/|GT/|clear/ (reside), or a folder of hazy images; or pass --hazy DIR --clear DIR"
    )


def find_pairs(
    root: Optional[Path] = None,
    layout: str = "auto",
    split: Optional[str] = None,
    hazy_dir: Optional[Path] = None,
    clear_dir: Optional[Path] = None,
) -> PairList:
    """List the pairs of a dataset.

    Either ``root`` (+ ``layout``, ``auto`` by default, and ``split`` for
    layouts with train/test folders; ``None`` prefers ``test``) or explicit
    ``hazy_dir`` (+ ``clear_dir``; none means real haze without GT).
    """
    if hazy_dir is not None:
        return folder_pairs(Path(hazy_dir), Path(clear_dir) if clear_dir is not None else None)
    if root is None:
        raise EdgehazeError("no dataset given: pass --data DIR, or --hazy DIR [--clear DIR]")
    root = Path(root)
    if layout in ("auto", "", None):
        layout = detect_layout(root, split)
    if layout == "folders":
        raise EdgehazeError("layout 'folders' takes --hazy DIR --clear DIR instead of a root folder")
    try:
        spec: Layout = DATASET_LAYOUTS.build(layout)
    except KeyError as exc:
        raise EdgehazeError(f"--layout {layout}: {exc.args[0]} (or 'auto')") from None
    found = spec.find(root, split)
    if not found.pairs:
        raise EdgehazeError(f"{found.root}: layout '{layout}' found no hazy images")
    return found


def layout_names() -> List[str]:
    """All layout names accepted by ``--layout`` (besides ``auto`` and ``folders``)."""
    return DATASET_LAYOUTS.names()
