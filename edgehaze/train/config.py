"""Typed, validated YAML experiment configs.

A config is a tree of dataclasses. :func:`load_config` reads a YAML file,
applies ``key=value`` overrides with dotted keys (``train.lr=1e-4``,
``data.root=/data/RESIDE-6K``) and builds the dataclass tree, checking every
key and type on the way: an unknown key or a value of the wrong type is a
:class:`~edgehaze.errors.ConfigError` that names the dotted key and the file.

Reuse (the distillation command builds its own schema the same way): any
dataclass tree works with :func:`load_config` / :func:`from_dict` /
:func:`to_dict`; the sections :class:`DataConfig`, :class:`TrainSection`,
:class:`StageConfig`, :class:`LossConfig` and :class:`ModelConfig` are meant
to be embedded in other schemas.

YAML note: PyYAML reads ``4e-4`` (no dot) as a *string*. Float fields accept
such strings when they parse as a number, so configs may write either
``4e-4`` or ``4.0e-4``.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Type, TypeVar, Union

from edgehaze.errors import ConfigError

T = TypeVar("T")

STAGES = ("rgb", "fused", "control")
HOLDOUT = "holdout"
FINETUNE_MODES = ("all", "depth")
SCHEDULERS = ("constant", "cosine", "cosine_restarts")
AMP_MODES = ("auto", "off", "bf16", "fp16")


# ---------------------------------------------------------------- the schema
@dataclass
class ModelConfig:
    """What to build: ``build_dehazer`` arguments.

    backbone_weights: official backbone weights (e.g. a DehazeFormer release)
        loaded into the stage-1 backbone before training.
    depth/depth_weights/depth_kwargs: the depth teacher used by the fused
        stage (``depth_kwargs.input_size`` sets its input resolution).
    fusion/points: fusion variant (name or options) and fusion points.
    depth_image_size: ``[H, W]`` of the training/test images: each fusion
        point then takes the depth level whose stride is nearest relative
        to such an image (the teacher's resize to its input counted), not to
        the teacher's input. null: relative to the teacher's input.
    """

    backbone: str = "edge-s"
    backbone_kwargs: Dict[str, Any] = field(default_factory=dict)
    backbone_weights: Optional[str] = None
    depth: Optional[str] = "dav2-l"
    depth_weights: Optional[str] = None
    depth_kwargs: Dict[str, Any] = field(default_factory=dict)
    fusion: Union[str, Dict[str, Any]] = "full"
    points: Optional[List[str]] = None
    depth_image_size: Optional[List[int]] = None


@dataclass
class ProceduralConfig:
    """Generate a procedural dataset into ``data.root`` when it is missing."""

    n_train: int = 64
    n_test: int = 8
    size: List[int] = field(default_factory=lambda: [128, 128])
    seed: int = 0


@dataclass
class DataConfig:
    """Training/validation data (``edgehaze.data`` layouts).

    root/layout/train_split: the training pairs. val_root defaults to root,
    val_split picks the validation split (None: no validation).
    ``val_split: holdout`` (the default) carves validation from the training
    split itself: every ``holdout_every``-th scene (all pairs sharing one
    ground truth stay together) is held out and never trained on. A test split
    (``test``, SOTS) is never a validation split: choosing ``best`` on it would
    make the test numbers optimistic (see :func:`check_validation_not_test`).
    crop/flip: training augmentation (random crop side, horizontal flip).
    val_limit: validate on the first N pairs only (None: all).
    procedural: if set and root holds no data, generate it there first.
    cache_images: keep decoded training pairs in memory (uint8; pays with
        ``workers: 0``, where each epoch after the first decodes nothing).
    """

    root: Optional[str] = None
    layout: str = "auto"
    train_split: Optional[str] = "train"
    val_root: Optional[str] = None
    val_layout: str = "auto"
    val_split: Optional[str] = HOLDOUT
    holdout_every: int = 7
    crop: Optional[int] = 256
    flip: bool = True
    workers: int = 2
    val_limit: Optional[int] = None
    skip_bad: bool = False
    procedural: Optional[ProceduralConfig] = None
    cache_images: bool = False


@dataclass
class TrainSection:
    """Optimisation and run settings shared by every stage.

    lr: base learning rate (a stage's ``lr`` overrides it).
    batch_size: images per process per micro-batch; the effective batch is
        ``batch_size * accumulate * world_size``.
    grad_clip: max global gradient norm (0 = off).
    amp: ``auto`` (bf16 on CUDA where supported, else fp16 with GradScaler;
        off on CPU), ``off``, ``bf16``, ``fp16``.
    ema: EMA decay of the trained weights (0 = off); validation and the best
        checkpoint then use the EMA weights.
    val_every/ckpt_every/log_every: in optimiser steps (ckpt_every 0 = at
        each validation; also written at the end of a stage).
    depth_cache: cache the frozen teacher's features on disk (with
        ``depth_scale: crop`` it needs ``data.crop: null`` and ``data.flip: false``).
    depth_scale: ``full_image`` (default): the frozen teacher runs on the
        whole training image and its features are cropped/flipped with the
        RGB crop (:mod:`edgehaze.train.depth_crop`), as at test time where it
        sees the whole image; ``crop``: on each crop (the old behaviour, whose
        depth statistics differ between training and test).
    device: ``auto``, ``cpu``, ``cuda`` (under torchrun: the local rank's GPU).
    threads: torch CPU threads (0 = leave torch's default).
    """

    lr: float = 2e-4
    weight_decay: float = 0.01
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    batch_size: int = 16
    accumulate: int = 1
    grad_clip: float = 0.0
    amp: str = "auto"
    ema: float = 0.0
    val_every: int = 1000
    ckpt_every: int = 0
    log_every: int = 10
    depth_cache: bool = False
    depth_scale: str = "full_image"
    device: str = "auto"
    threads: int = 0
    metric: str = "psnr"
    progress: bool = True
    find_unused_parameters: bool = False


@dataclass
class StageConfig:
    """One training stage.

    steps: optimiser steps of this stage.
    lr: learning rate (None: ``train.lr``); eta_min: floor of the schedule.
    scheduler: ``cosine`` (one cycle over ``steps``), ``cosine_restarts``
        (``CosineAnnealingWarmRestarts`` with ``T_0 = restart_every`` steps,
        ``T_mult = restart_mult``) or ``constant``.
    finetune: fused stage only, the paper's Table 4: ``all`` trains the whole
        network, ``depth`` freezes the backbone (only the fusion blocks and a
        trainable depth provider learn).
    init: checkpoint to start from (rgb: an edgehaze checkpoint of the bare
        backbone; fused: the stage-1 checkpoint when stage 1 is not run in
        the same command).
    fusion_lr_scale: fused stage only: learning-rate factor for the fusion
        blocks (z1/rdf/z2). The zero-initialised branch opens slowly; a
        factor > 1 lets it contribute within a short budget while the
        pretrained backbone keeps its own rate. 1 = the paper's recipe.
    z1_init_std: fused stage only: initialise Z1 with N(0, std) instead of
        zero; Z2 stays zero, so the start is still exactly stage 1, but the
        fusion module sees the depth from the first step and Z2's gradient
        carries depth information (with Z1 = 0 it sees zeros until Z1 moves,
        and Z1 gets no gradient until Z2 moves). 0 = the paper's zero init.
        ``grad_z1``/``grad_z2`` in ``train_log.csv`` show the effect.
    """

    steps: int = 1000
    lr: Optional[float] = None
    eta_min: float = 1e-6
    scheduler: str = "cosine"
    restart_every: int = 0
    restart_mult: int = 1
    finetune: str = "all"
    init: Optional[str] = None
    fusion_lr_scale: float = 1.0
    z1_init_std: float = 0.0


@dataclass
class LossConfig:
    """Weights of the restoration loss terms (0 switches a term off).

    stability: weight of the single-frame stability term against flicker
        (:mod:`edgehaze.train.stability`: the output of a copy of each crop
        shifted by up to ``stability_shift`` pixels, optionally with Gaussian
        noise of ``stability_noise`` in [0, 1] units, must match the output
        of the crop); it needs ``data.crop`` larger than the shift.
    """

    l1: float = 1.0
    ssim: float = 0.0
    fft: float = 0.0
    stability: float = 0.0
    stability_shift: int = 8
    stability_noise: float = 0.0


@dataclass
class TrainConfig:
    """``edgehaze train``: the two-stage teacher recipe (paper §Overall Framework).

    stages: which stages this command runs, in order: ``[rgb, fused]``,
        ``[rgb]`` or ``[fused]``; add ``control`` (``[rgb, fused, control]``)
        for the equal-budget RGB-only control: stage 1's pick continued
        without depth for exactly the fused stage's steps, learning rate and
        schedule, so "fused minus control" isolates what depth adds.
    out_dir: the run directory (checkpoints, logs, resolved config);
        ``{name}`` is replaced by ``name``.
    """

    name: str = "experiment"
    out_dir: str = "runs/{name}"
    seed: int = 0
    stages: List[str] = field(default_factory=lambda: ["rgb", "fused"])
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainSection = field(default_factory=TrainSection)
    loss: LossConfig = field(default_factory=LossConfig)
    rgb: StageConfig = field(default_factory=lambda: StageConfig(scheduler="cosine"))
    fused: StageConfig = field(default_factory=lambda: StageConfig(scheduler="cosine_restarts"))

    def run_dir(self) -> Path:
        return Path(self.out_dir.replace("{name}", self.name))

    def validate(self, where: str = "config") -> None:
        """Cross-field checks (types were checked when the tree was built)."""
        _check_choice(self.stages, STAGES, "stages", where, many=True)
        if not self.stages:
            raise ConfigError(f"{where}: 'stages' is empty; use [rgb], [fused] or [rgb, fused]")
        if list(self.stages) != [s for s in STAGES if s in self.stages]:
            raise ConfigError(f"{where}: 'stages' must run rgb before fused (and control last), got {self.stages}")
        if "control" in self.stages and "rgb" not in self.stages and not self.fused.init:
            raise ConfigError(f"{where}: the 'control' stage continues stage 1: run [rgb, fused, control] or set fused.init=CHECKPOINT")
        if "fused" in self.stages and not self.model.depth:
            raise ConfigError(f"{where}: the fused stage needs 'model.depth' (e.g. dav2-l)")
        for name in ("rgb", "fused"):  # the control uses the fused stage's settings
            stage: StageConfig = getattr(self, name)
            _check_choice(stage.scheduler, SCHEDULERS, f"{name}.scheduler", where)
            _check_choice(stage.finetune, FINETUNE_MODES, f"{name}.finetune", where)
            _positive(stage.steps, f"{name}.steps", where)
            if stage.restart_every < 0 or stage.restart_mult < 1:
                raise ConfigError(f"{where}: '{name}.restart_every' must be >= 0 and 'restart_mult' >= 1")
            if stage.z1_init_std < 0:
                raise ConfigError(f"{where}: '{name}.z1_init_std' must be >= 0, got {stage.z1_init_std}")
            if not stage.fusion_lr_scale > 0:
                raise ConfigError(f"{where}: '{name}.fusion_lr_scale' must be > 0, got {stage.fusion_lr_scale}")
        if self.rgb.finetune != "all":
            raise ConfigError(f"{where}: 'rgb.finetune' must be 'all' (freezing applies to the fused stage)")
        t = self.train
        _check_choice(t.amp, AMP_MODES, "train.amp", where)
        _check_choice(t.metric, ("psnr", "ssim", "psnr_y"), "train.metric", where)
        for key in ("batch_size", "accumulate", "val_every", "log_every"):
            _positive(getattr(t, key), f"train.{key}", where)
        if len(t.betas) != 2:
            raise ConfigError(f"{where}: 'train.betas' needs two numbers, got {t.betas}")
        if not 0.0 <= t.ema < 1.0:
            raise ConfigError(f"{where}: 'train.ema' is a decay in [0, 1), got {t.ema}")
        _check_choice(t.depth_scale, ("full_image", "crop"), "train.depth_scale", where)
        size = self.model.depth_image_size
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise ConfigError(f"{where}: 'model.depth_image_size' needs [height, width] in pixels, got {size}")
        if self.model.depth == "oracle" and t.depth_scale != "full_image":
            raise ConfigError(f"{where}: 'model.depth: oracle' knows whole images only; it needs "
                              "'train.depth_scale: full_image' (the crops then take their part of it)")
        if t.depth_cache and t.depth_scale == "crop" and (self.data.crop is not None or self.data.flip):
            raise ConfigError(
                f"{where}: 'train.depth_cache: true' stores one feature set per image and is only valid "
                "without random augmentation; set 'data.crop: null' and 'data.flip: false' "
                "(or turn the cache off)"
            )
        check_stability(self.loss, self.data.crop, where)
        if self.data.root is None:
            raise ConfigError(f"{where}: 'data.root' is not set; pass data.root=DIR")
        check_validation_not_test(self.data, where)


def check_stability(loss: Any, crop: Optional[int], where: str) -> None:
    """The stability term's settings (``loss.stability*``), shared by ``edgehaze train`` and ``edgehaze distill``."""
    if loss.stability < 0 or loss.stability_noise < 0 or loss.stability_shift < 1:
        raise ConfigError(f"{where}: 'loss.stability' and 'loss.stability_noise' must be >= 0 and "
                          f"'loss.stability_shift' >= 1, got {loss.stability}, {loss.stability_noise}, {loss.stability_shift}")
    if loss.stability and crop is not None and crop <= loss.stability_shift:
        raise ConfigError(f"{where}: 'loss.stability' compares a crop with a copy shifted by up to "
                          f"'loss.stability_shift' ({loss.stability_shift}) px inside it: 'data.crop' "
                          f"({crop}) must be larger")


_TEST_NAMES = ("test", "testing", "sots")


def _looks_like_test(name: str) -> bool:
    """A split or folder name that denotes held-out test data (SOTS = RESIDE's test set)."""
    low = name.lower()
    if "train" in low:  # sots_indoor_train is training data
        return False
    return any(t in low for t in _TEST_NAMES)


def check_validation_not_test(data: "DataConfig", where: str) -> None:
    """ConfigError when validation (which picks ``best``) would read a test split.

    Checks ``data.val_split`` and every component of ``data.val_root``; also
    rejects ``holdout`` carved from a test split and ``holdout_every < 2``.
    """
    if data.val_split is not None and data.val_split != HOLDOUT and _looks_like_test(data.val_split):
        raise ConfigError(
            f"{where}: 'data.val_split: {data.val_split}' is a test split; validation chooses the best "
            f"checkpoint and must not see test data: use 'data.val_split: {HOLDOUT}' (every "
            "data.holdout_every-th training scene) or a validation split"
        )
    if data.val_root is not None and any(_looks_like_test(p) for p in Path(data.val_root).parts):
        raise ConfigError(
            f"{where}: 'data.val_root: {data.val_root}' looks like a test set; evaluate on it with "
            f"'edgehaze eval' after training and validate on 'data.val_split: {HOLDOUT}' instead"
        )
    if data.val_split == HOLDOUT:
        if data.train_split is not None and _looks_like_test(data.train_split):
            raise ConfigError(f"{where}: 'data.train_split: {data.train_split}' is a test split; train on a training split")
        if data.holdout_every < 2:
            raise ConfigError(f"{where}: 'data.holdout_every' must be >= 2, got {data.holdout_every}")


def check_positive(value: int, key: str, where: str) -> None:
    """ConfigError unless ``value >= 1`` (for other schemas' ``validate``)."""
    if value < 1:
        raise ConfigError(f"{where}: '{key}' must be >= 1, got {value}")


def check_choice(value: Any, choices: Sequence[str], key: str, where: str, many: bool = False) -> None:
    """ConfigError unless ``value`` (or each of them, ``many``) is one of ``choices``."""
    values = value if many else [value]
    bad = [v for v in values if v not in choices]
    if bad:
        raise ConfigError(f"{where}: '{key}' has {bad[0]!r}; choose from {list(choices)}")


_positive = check_positive  # names used by edgehaze.distill
_check_choice = check_choice


# ---------------------------------------------------------------- building
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check/convert ``value`` against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union:
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: '{key}' may not be null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, where)
            except ConfigError as exc:
                errors.append(str(exc))
        expected = " or ".join(_type_name(a) for a in args if a is not type(None))
        raise ConfigError(f"{where}: '{key}' should be {expected}, got {value!r} ({type(value).__name__})")
    if value is None:
        raise ConfigError(f"{where}: '{key}' may not be null (expected {_type_name(tp)})")
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' should be a mapping, got {value!r}")
        return from_dict(tp, value, where, prefix=f"{key}.")
    if origin in (list, List, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: '{key}' should be a list, got {value!r} ({type(value).__name__})")
        item = args[0] if args else Any
        return [_convert(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' should be a mapping, got {value!r} ({type(value).__name__})")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: '{key}' should be true/false, got {value!r} ({type(value).__name__})")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: '{key}' should be an integer, got {value!r} ({type(value).__name__})")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: '{key}' should be a number, got {value!r} ({type(value).__name__})")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: '{key}' should be a string, got {value!r} ({type(value).__name__})")
    raise ConfigError(f"{where}: '{key}' has an unsupported type {tp}")  # pragma: no cover


def from_dict(cls: Type[T], data: Dict[str, Any], where: str = "config", prefix: str = "") -> T:
    """Build dataclass ``cls`` from a plain dict, checking keys and types.

    Missing keys keep their defaults. ``where`` (usually the file name) and
    ``prefix`` (dotted path of this section) go into error messages.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: '{prefix.rstrip('.') or '<top>'}' should be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = [k for k in data if k not in known]
    if unknown:
        raise ConfigError(
            f"{where}: unknown key '{prefix}{unknown[0]}'; known keys here: {sorted(known)}"
        )
    kwargs = {k: _convert(v, hints[k], f"{prefix}{k}", where) for k, v in data.items()}
    return cls(**kwargs)  # type: ignore[call-arg]


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain dicts/lists (YAML/JSON ready)."""
    if is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_value(text: str) -> Any:
    """A command-line value: YAML scalar/list syntax, numbers like ``1e-4`` too."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return value


def _field_type(cls: Any, path: List[str], where: str, dotted: str) -> None:
    """Check that ``path`` names a field of the schema (for override errors)."""
    tp = cls
    for i, part in enumerate(path):
        base = tp
        if typing.get_origin(base) is Union:
            base = next((a for a in typing.get_args(base) if is_dataclass(a)), base)
        if not is_dataclass(base):
            if typing.get_origin(base) in (dict, Dict):
                return  # free-form mapping (backbone_kwargs.x=...)
            raise ConfigError(f"{where}: override '{dotted}': '{'.'.join(path[:i])}' has no sub-keys")
        hints = typing.get_type_hints(base)
        if part not in hints:
            known = sorted(hints)
            raise ConfigError(f"{where}: override '{dotted}': unknown key '{'.'.join(path[: i + 1])}'; known: {known}")
        tp = hints[part]


def apply_overrides(cls: Any, data: Dict[str, Any], overrides: Sequence[str], where: str = "overrides") -> Dict[str, Any]:
    """Set dotted ``key=value`` overrides in the raw config dict ``data``."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value (e.g. train.lr=1e-4)")
        dotted, raw = item.split("=", 1)
        dotted = dotted.strip()
        path = dotted.split(".")
        if not all(path):
            raise ConfigError(f"override '{item}': empty key component")
        _field_type(cls, path, where, dotted)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            node[part] = child
            node = child
        node[path[-1]] = parse_value(raw)
    return data


def read_yaml(path: Union[str, Path]) -> Dict[str, Any]:
    """The raw mapping of a YAML file (ConfigError when missing/invalid)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file (see configs/ for examples)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise ConfigError(f"{path}: not valid YAML ({first})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level should be a mapping of sections, got {type(data).__name__}")
    return data


def load_config(
    path: Optional[Union[str, Path]],
    cls: Type[T] = TrainConfig,  # type: ignore[assignment]
    overrides: Sequence[str] = (),
) -> T:
    """Read ``path`` (or start from defaults when None), apply overrides, validate.

    Calls ``validate(where)`` on the result when the schema defines it.
    """
    where = str(path) if path is not None else "defaults"
    data = read_yaml(path) if path is not None else {}
    if overrides:
        data = apply_overrides(cls, data, overrides, where=f"{where} (overrides)")
    cfg = from_dict(cls, data, where)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate(where)
    return cfg


def save_config(path: Union[str, Path], cfg: Any) -> None:
    """Write the resolved config as YAML (atomically) for the run's record."""
    import yaml

    from edgehaze.fsutil import atomic_write

    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)

    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    atomic_write(path, write)


def replace(cfg: T, **changes: Any) -> T:
    """``dataclasses.replace`` re-exported for callers building configs in code."""
    return dataclasses.replace(cfg, **changes)  # type: ignore[type-var]
