"""Does depth help? The claim in miniature on real images (issue 16, items 5 and 6).

    python benchmarks/depth_gain.py --out runs/depth_gain [--data $EDGEHAZE_SHARED/data] [--synth data/real]
        [--seeds 0 1 2] [--stage1-steps N] [--stage2-steps N] [--rows ROW ...] [--teacher FOLDER]
        [--teacher-model dav2-l --teacher WEIGHTS --teacher-input 518]
        [--backbone edge-s] [--backbone-kwargs JSON] [--threads 1] [--report-only] [--quick]

Why: on procedural scenes the fused model and the RGB-only model tie and the
depth branch barely opens (``benchmarks/reproduce.py``). Here the same
question is asked on real images, at an equal budget, with the edge backbone
the product ships, and with the best depth there could be (the scene's own)
as a ceiling.

Data (nothing copied; ``--synth`` is the folder ``edgehaze synth --rgbd
sots_indoor_train --rgbd frida2 --variants 4 --keep-pairs`` wrote, with
``depth/<scene>.npy`` per split; ``--data`` the shared data folder):
training on ``--synth``'s ``train/`` split, validation on its ``val/`` split
(logged only), scores on the SOTS-indoor test pairs and FRIDA2's test scenes
per fog type (:mod:`edgehaze.quality`), with the hazy input and the
dark-channel prior on the same images in the same run.

Per seed (stage 1 shared by every row of that seed):

* ``stage1``  the RGB-only backbone, ``--stage1-steps`` steps;
* ``control`` stage 1 continued without depth for stage 2's steps and
  schedule (``edgehaze train``'s control stage);
* ``teacher`` fused stage 2 with the real-scene depth teacher
  (:mod:`edgehaze.depth_teacher`, trained here once or given by ``--teacher``);
* ``oracle``  fused stage 2 with oracle depth (:mod:`edgehaze.models.depth.oracle`:
  the training scenes' ``depth/<scene>.npy``; for each SOTS-indoor test
  pair the depth recovered from its own transmission; FRIDA2's metric
  depth), encoded into four fixed feature levels: the ceiling;
* ``student`` a student depth encoder distilled from ``teacher``;
  ``int8`` its INT8 export (PTQ, calibrated on training images), run by the
  shipped runtime;
* item 6, remedies for a shut branch: ``teacher-lr`` (fusion blocks at
  ``--lr-scale`` x lr), ``teacher-z1`` (Z1 ~ N(0, ``--z1-std``), Z2 still
  zero: the start is still exactly stage 1), ``teacher-long`` (stage 2
  ``--long-factor`` x longer) against ``control-long`` (the control at that
  budget).

Every model is its **last** checkpoint; no checkpoint is chosen on any split.
Each fused run logs the gradient norms reaching Z1 and Z2 (``grad_z1``,
``grad_z2``); the report summarises them with the final Z1/Z2 weight norms
and the depth effect (mean change of the output, in grey levels, when the
depth features are replaced by zeros).

Outputs in ``--out``: ``report.md``, ``results.json``, ``teacher/``,
``oracle/``, ``baselines.json``, ``seedS/ROW/`` per run (``result.json``,
``run.log``, the training run). A finished run (its ``result.json``) is not
redone, an interrupted one resumes from its last state, and a folder is only
resumed with the same budget.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a script: make the repo importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.reproduce import Reproduction, _fmt, _logged, _write_json, check_ordering, summarise  # noqa: E402
from edgehaze.errors import ConfigError, EdgehazeError  # noqa: E402

#: the real test sets scored (name prefixes of :func:`edgehaze.quality.benchmark_sets`)
TEST_SETS = ("sots-indoor", "frida2")
METRICS = ("psnr", "ssim", "halo")
#: the target of issue 16: the fused teacher beats the control by this much on SOTS-indoor, every seed
TARGET_GAIN_DB = 0.5
#: ... and the student keeps this share of the teacher's gain
TARGET_KEEP = 0.8
#: ... and the depth teacher's AbsRel on the test scenes is at most this
TARGET_ABS_REL = 0.15


# ---------------------------------------------------------------- budget
@dataclass(frozen=True)
class Budget:
    """Everything that sets the recipe and the run time; identical for every row."""

    backbone: str = "edge-s"
    backbone_kwargs: Dict[str, Any] = field(default_factory=lambda: {"scale": 8, "apply": "guided", "context": True})
    fusion: str = "lite"
    crop: int = 256
    batch: int = 8
    lr: float = 2e-3  # stage 1 (cosine)
    stage1_steps: int = 2000
    stage2_lr: float = 1e-3  # stage 2 and the control (cosine with warm restarts every half)
    stage2_steps: int = 1000
    val_limit: int = 24
    log_every: int = 25
    cache_images: bool = True
    teacher_steps: int = 600
    teacher_batch: int = 8
    teacher_input: int = 98
    teacher_model: str = "tiny"  # the depth model the teacher rows load: tiny (trained here) or e.g. dav2-l (--teacher)
    distill_steps: int = 1000
    distill_lr: float = 2e-3
    student_widths: Tuple[int, ...] = (8, 16, 32, 64)
    student_blocks: Tuple[int, ...] = (1, 1, 1, 1)
    calib_images: int = 32
    holdout_images: int = 8
    calib_size: Tuple[int, int] = (480, 640)
    lr_scale: float = 10.0  # remedy rows
    z1_std: float = 0.02
    long_factor: int = 3
    threads: int = 1
    # the data and the teacher (set by DepthGain): a folder is only resumed with the same ones
    synth: str = ""
    data_dir: str = ""
    teacher: str = ""  # a given teacher folder ("": trained here)


DEFAULT = Budget()
QUICK = Budget(backbone="edge-xs", crop=32, batch=2, stage1_steps=3, stage2_steps=2, val_limit=1, log_every=1,
               teacher_steps=2, teacher_batch=2, teacher_input=28, distill_steps=2, calib_images=2, holdout_images=1,
               calib_size=(48, 64), long_factor=2)


# ---------------------------------------------------------------- rows
@dataclass(frozen=True)
class Row:
    """One trained (or exported) model per seed."""

    name: str
    title: str
    kind: str  # control | fused | student | int8
    depth: Optional[str] = None  # fused: teacher | oracle
    remedy: Optional[str] = None  # fused: lr | z1 | long; control: long
    needs: Tuple[str, ...] = ()


ROWS: Dict[str, Row] = {r.name: r for r in [
    Row("control", "RGB-only control (stage 1 continued, stage 2's steps and schedule)", "control"),
    Row("teacher", "fused, real-scene depth teacher", "fused", depth="teacher", needs=("control",)),
    Row("oracle", "fused, oracle depth (the scene's own: the ceiling)", "fused", depth="oracle", needs=("control",)),
    Row("student", "student encoder distilled from `teacher` (torch)", "student", needs=("control", "teacher")),
    Row("int8", "that student, INT8 ONNX (PTQ) through the runtime", "int8", needs=("control", "teacher", "student")),
    Row("teacher-lr", "teacher, fusion blocks at lr-scale x lr", "fused", depth="teacher", remedy="lr",
        needs=("control",)),
    Row("teacher-z1", "teacher, Z1 ~ N(0, z1-std), Z2 zero (exact start)", "fused", depth="teacher", remedy="z1",
        needs=("control",)),
    Row("control-long", "control at teacher-long's budget", "control", remedy="long"),
    Row("teacher-long", "teacher, stage 2 long-factor x longer", "fused", depth="teacher", remedy="long",
        needs=("control-long",)),
]}


@dataclass(frozen=True)
class Comparison:
    """``higher - lower`` per seed (paired: same stage 1, same data order)."""

    higher: str
    lower: str
    what: str


COMPARISONS: Tuple[Comparison, ...] = (
    Comparison("teacher", "control", "depth gain with the real-scene teacher"),
    Comparison("oracle", "control", "ceiling: gain with the scene's own depth"),
    Comparison("oracle", "teacher", "what a better teacher could still add"),
    Comparison("student", "control", "the student's gain"),
    Comparison("int8", "student", "INT8 export vs the torch student"),
    Comparison("teacher-lr", "control", "remedy: fusion lr scale"),
    Comparison("teacher-z1", "control", "remedy: non-zero Z1"),
    Comparison("teacher-long", "control-long", "remedy: longer stage 2 (vs its own equal-budget control)"),
)


def select_rows(only: Optional[Sequence[str]]) -> List[str]:
    """The runs to do, in execution order, with their dependencies added."""
    wanted = list(only) if only else list(ROWS)
    bad = [r for r in wanted if r not in ROWS]
    if bad:
        raise ConfigError(f"--rows {bad[0]}: unknown row; rows are {', '.join(ROWS)}")
    closed = set(wanted)
    for r in wanted:
        closed.update(ROWS[r].needs)
    return [r for r in ROWS if r in closed]


def group_of(set_name: str) -> str:
    """The report's set group: ``sots-indoor`` or ``frida2`` (its fog types together)."""
    return "frida2" if set_name.startswith("frida2") else set_name


# ---------------------------------------------------------------- data checks (pure)
def scene_of(split_dir: Path, hazy: Path) -> str:
    """The scene of a synth image: ``meta/<stem>.json``'s ``scene``, else the name up to the last ``_``."""
    meta = split_dir / "meta" / f"{hazy.stem}.json"
    if meta.is_file():
        return str(json.loads(meta.read_text(encoding="utf-8"))["scene"])
    return hazy.stem.rsplit("_", 1)[0]


def check_synth(synth: Path) -> None:
    """``--synth`` holds train/ and val/ with hazy/, GT/ and depth/ (one-line error naming what is missing)."""
    for split in ("train", "val"):
        for sub in ("hazy", "GT", "depth"):
            if not (synth / split / sub).is_dir():
                raise ConfigError(f"--synth {synth}: no {split}/{sub}/ (make it with edgehaze synth --rgbd "
                                  "DIR --keep-pairs --out FOLDER, which writes depth/<scene>.npy per split)")


def find_synth_depths(synth: Path) -> List[Tuple[Path, Path]]:
    """``(hazy image, its scene's depth .npy)`` for every train/val image of ``--synth`` (never test)."""
    pairs = []
    for split in ("train", "val"):
        base = synth / split
        for hazy in sorted((base / "hazy").iterdir()):
            depth = base / "depth" / f"{scene_of(base, hazy)}.npy"
            if not depth.is_file():
                raise EdgehazeError(f"{hazy}: its scene's depth {depth} is missing")
            pairs.append((hazy, depth))
    return pairs


def _save_npy(path: Path, arr: Any) -> Path:
    import numpy as np

    from edgehaze.fsutil import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, np.asarray(arr, dtype=np.float32))

    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, write)


def oracle_test_depths(data_dir: Path, folder: Path) -> Tuple[List[Tuple[Path, Path]], Dict[str, int]]:
    """Oracle depth of the test images, written under ``folder``.

    SOTS-indoor: per test pair, the depth recovered from *that* pair's
    transmission (``recover_transmission`` + ``depth_from_transmission``).
    FRIDA2: each test scene's metric depth (sky far), for all its fog types.
    """
    from edgehaze.data.rgbd import depth_from_transmission, load_frida2_scenes, recover_transmission
    from edgehaze.imageio import read_image
    from edgehaze.quality import frida2_test, sots_indoor

    pairs: List[Tuple[Path, Path]] = []
    counts = {"sots-indoor": 0, "frida2": 0}
    sots = sots_indoor(data_dir)
    for hazy, gt in (zip(sots.hazy, sots.gt) if sots is not None else []):
        t, conf = recover_transmission(read_image(hazy), read_image(gt), 1.0)
        depth, _valid = depth_from_transmission([t], [conf])
        pairs.append((hazy, _save_npy(folder / "sots-indoor" / f"{hazy.stem}.npy", depth)))
        counts["sots-indoor"] += 1
    saved: Dict[str, Path] = {}
    for evalset in frida2_test(data_dir):
        for hazy in evalset.hazy:
            if hazy.stem not in saved:
                (scene,) = load_frida2_scenes(data_dir / "frida2", names=[hazy.stem])
                saved[hazy.stem] = _save_npy(folder / "frida2" / f"{hazy.stem}.npy", scene.depth)
            pairs.append((hazy, saved[hazy.stem]))
            counts["frida2"] += 1
    return pairs, counts


# ---------------------------------------------------------------- the experiment
class DepthGain(Reproduction):
    """One output folder: checks, teacher, oracle table and baselines, then seeds x rows of runs."""

    def __init__(self, out: "str | Path", budget: Budget, seeds: Sequence[int], rows: Sequence[str],
                 data_dir: "str | Path", synth: "str | Path", teacher: Optional[str] = None,
                 progress: bool = True) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.synth = Path(synth).resolve()
        self.given_teacher = Path(teacher).resolve() if teacher else None
        budget = replace(budget, synth=str(self.synth), data_dir=str(self.data_dir),
                         teacher=str(self.given_teacher or ""))
        super().__init__(out, budget, seeds, rows, None, progress)
        self._sets: Optional[List[Any]] = None

    # -- paths
    @property
    def data(self) -> Path:
        return self.synth

    @property
    def teacher(self) -> Path:
        return self.given_teacher or self.out / "teacher" / "depth-anything-tiny"

    @property
    def oracle(self) -> Path:
        return self.out / "oracle"

    def ckpt(self, seed: int, name: str) -> Path:
        """A row's last weights (student: the distillation's final student)."""
        row = ROWS[name]
        if row.kind == "student":
            return self.run_dir(seed, name) / "student.safetensors"
        stage = {"control": "control", "fused": "fused"}[row.kind]
        return self.run_dir(seed, name) / stage / "last.safetensors"

    # -- shared preparation
    def sets(self) -> List[Any]:
        """The real test sets with ground truth: SOTS-indoor, FRIDA2 per fog type."""
        from edgehaze.quality import benchmark_sets

        if self._sets is None:
            self._sets = [s for s in benchmark_sets(self.data_dir, TEST_SETS) if s.has_gt]
        return self._sets

    def prepare_data(self) -> None:
        """Check the folders, write the oracle table and score the baselines (each once)."""
        check_synth(self.synth)
        if not self.sets():
            raise ConfigError(f"--data {self.data_dir}: no sots_indoor/ or frida2/ test set to score")
        if not (self.oracle / "oracle.json").is_file():
            self.prepare_oracle()
        if not (self.out / "baselines.json").is_file():
            self.score_baselines()

    def prepare_oracle(self) -> None:
        from edgehaze.models.depth.oracle import table_entries, write_oracle_table

        train = find_synth_depths(self.synth)
        test, counts = oracle_test_depths(self.data_dir, self.oracle)
        entries = table_entries(train + test)
        write_oracle_table(self.oracle, entries, sources={"synth train+val": len(train), **counts})

    def score_baselines(self) -> None:
        """The hazy input and the dark-channel prior on every test image (deterministic: once per folder)."""
        from edgehaze.quality import baseline_methods, score_set

        out: Dict[str, Any] = {}
        for evalset in self.sets():
            scores, _ = score_set(baseline_methods(), evalset,
                                  progress=False)
            out[evalset.name] = {m: {**sc.metrics, "ms": sc.ms, "images": sc.count} for m, sc in scores.items()}
        _write_json(self.out / "baselines.json", out)

    def prepare_teacher(self) -> Dict[str, Any]:
        """Train the real-scene depth teacher once (or take ``--teacher``); its AbsRel/delta1 on the test scenes."""
        from edgehaze.depth_teacher import train_real_teacher

        qpath = self.out / "teacher" / "quality.json"
        if qpath.is_file() and (self.teacher / "config.json").is_file():
            return json.loads(qpath.read_text(encoding="utf-8"))
        b = self.budget
        val_every = int(json.loads((self.synth / "synth.json").read_text()).get("val_every", 7)) \
            if (self.synth / "synth.json").is_file() else None
        if b.teacher_model != "tiny" and self.given_teacher is None:
            raise ConfigError(f"--teacher-model {b.teacher_model} needs its weights: --teacher PATH (the official "
                              "checkpoint or a local Hugging Face folder; nothing is downloaded)")
        with _logged(self.out / "teacher" / "run.log"):
            if self.given_teacher is not None:
                info = _score_given_teacher(self.data_dir, self.teacher, b.teacher_input, val_every, b.teacher_model)
            else:
                info = train_real_teacher(self.data_dir, self.teacher, steps=b.teacher_steps,
                                          batch_size=b.teacher_batch, input_size=b.teacher_input, seed=0,
                                          log_every=max(1, b.teacher_steps // 10), val_every=val_every)
        info["losses"] = [list(x) for x in info.get("losses", [])]
        _write_json(qpath, info)
        return info

    # -- configs
    def _train_cfg(self, seed: int, name: str, kind: str, *_: Any) -> Any:
        """The ``edgehaze train`` config of ``stage1`` or a row (validation on ``val``, never test)."""
        from edgehaze.train.config import TrainConfig, from_dict

        b = self.budget
        row = ROWS.get(name)
        steps = b.stage2_steps * (b.long_factor if row is not None and row.remedy == "long" else 1)
        cfg: Dict[str, Any] = {
            "name": name, "out_dir": str(self.run_dir(seed, name)), "seed": seed,
            "model": self._model_section(row),
            "data": {"root": str(self.synth), "layout": "dehazeformer", "train_split": "train", "val_split": "val",
                     "val_limit": b.val_limit, "crop": b.crop, "flip": True, "workers": 0,
                     "cache_images": b.cache_images},
            "train": {"lr": b.lr, "weight_decay": 0.0, "batch_size": b.batch, "grad_clip": 1.0, "amp": "off",
                      "val_every": max(1, (b.stage1_steps if kind == "stage1" else steps) // 2),
                      "log_every": b.log_every, "threads": b.threads, "device": "cpu", "progress": False,
                      "depth_scale": "full_image",
                      # the frozen teacher's whole-image features once per image; the oracle is a lookup
                      "depth_cache": row is not None and row.depth == "teacher"},
            "loss": {"l1": 1.0},
        }
        if kind == "stage1":
            cfg.update(stages=["rgb"], rgb={"steps": b.stage1_steps, "scheduler": "cosine", "eta_min": 1.0e-5})
        else:
            stage1 = self.run_dir(seed, "stage1") / "rgb" / "last.safetensors"
            tail = {"steps": steps, "lr": b.stage2_lr, "scheduler": "cosine_restarts",
                    "restart_every": max(1, steps // 2), "eta_min": 1.0e-5, "finetune": "all", "init": str(stage1),
                    "fusion_lr_scale": b.lr_scale if row.remedy == "lr" else 1.0,
                    "z1_init_std": b.z1_std if row.remedy == "z1" else 0.0}
            cfg.update(stages=["control" if row.kind == "control" else "fused"], fused=tail)
        result = from_dict(TrainConfig, cfg, f"depth_gain ({name}, seed {seed})")
        result.validate(f"depth_gain ({name}, seed {seed})")
        return result

    def _model_section(self, row: Optional[Row]) -> Dict[str, Any]:
        b = self.budget
        model: Dict[str, Any] = {"backbone": b.backbone, "backbone_kwargs": dict(b.backbone_kwargs),
                                 "fusion": b.fusion, "depth": None}
        if row is not None and row.depth == "teacher":
            model.update(depth=b.teacher_model, depth_weights=str(self.teacher),
                         depth_kwargs={"input_size": b.teacher_input})
        elif row is not None and row.depth == "oracle":
            model.update(depth="oracle", depth_weights=str(self.oracle))
        if model["depth"]:  # each fusion point takes the depth level whose stride matches relative to the image
            model["depth_image_size"] = list(self.image_size())
        return model

    def image_size(self) -> Tuple[int, int]:
        """(H, W) of the first training image: the size the fusion levels are chosen for."""
        from edgehaze.imageio import read_image

        first = sorted((self.synth / "train" / "hazy").iterdir())[0]
        h, w = read_image(first).shape[:2]
        return int(h), int(w)

    def _distill_cfg(self, seed: int) -> Any:
        from edgehaze.distill.distiller import DistillConfig
        from edgehaze.train.config import from_dict

        b = self.budget
        cfg = {
            "name": "student", "out_dir": str(self.run_dir(seed, "student")), "seed": seed,
            "teacher": {"checkpoint": str(self.ckpt(seed, "teacher")),
                        "stage1": str(self.run_dir(seed, "stage1") / "rgb" / "last.safetensors")},
            "student": {"depth": "student-s",
                        "depth_kwargs": {"widths": list(b.student_widths), "blocks": list(b.student_blocks)}},
            "data": {"root": str(self.synth), "layout": "dehazeformer", "train_split": "train", "val_split": "val",
                     "val_limit": b.val_limit, "crop": b.crop, "flip": True, "workers": 0},
            "train": {"batch_size": b.batch, "val_every": max(1, b.distill_steps // 2), "log_every": b.log_every,
                      "device": "cpu", "threads": b.threads, "progress": False},
            "distill": {"steps": b.distill_steps, "lr": b.distill_lr, "cache_teacher": "auto"},
            "report": {"eval_size": list(b.calib_size), "latency_runs": 1, "val_limit": b.val_limit},
        }
        result = from_dict(DistillConfig, cfg, f"depth_gain (student, seed {seed})")
        result.validate(f"depth_gain (student, seed {seed})")
        return result

    # -- evaluation
    def score(self, runner: Any, name: str) -> Dict[str, Dict[str, float]]:
        """``runner`` on every test set: PSNR, SSIM, halo and ms per image."""
        from edgehaze.quality import score_set

        out = {}
        for evalset in self.sets():
            scores, _ = score_set({name: runner}, evalset, progress=False)
            out[evalset.name] = {**scores[name].metrics, "ms": scores[name].ms}
        return out

    def zeroed_depth_effect(self, ckpt: Path) -> Dict[str, float]:
        """Mean |output - output with zero depth features| in grey levels, per set group.

        Near 0: the depth branch is (still) shut, and a row's difference from
        the control comes from fine-tuning, not from depth.
        """
        import torch

        from edgehaze.checkpoint import load_dehazer
        from edgehaze.imageio import read_image, to_tensor

        model, _ = load_dehazer(ckpt)
        model.eval()
        sums: Dict[str, List[float]] = {}
        with torch.no_grad():
            for evalset in self.sets():
                for hazy in evalset.hazy:
                    x = to_tensor(read_image(hazy))
                    feats = model.depth_features(x)
                    y = model(x, depth_feats=feats).clamp(0, 1)
                    y0 = model(x, depth_feats=[torch.zeros_like(f) for f in feats]).clamp(0, 1)
                    sums.setdefault(group_of(evalset.name), []).append(float((y - y0).abs().mean()) * 255.0)
        return {g: sum(v) / len(v) for g, v in sums.items()}

    # -- one run
    def do_run(self, seed: int, name: str) -> Dict[str, Any]:
        """Train/distil/export one row for one seed and score it; cached in ``result.json``."""
        row = ROWS[name]
        folder = self.run_dir(seed, name)
        done = folder / "result.json"
        if done.is_file():
            return json.loads(done.read_text(encoding="utf-8"))
        t0, c0 = time.perf_counter(), time.process_time()
        extra: Dict[str, Any] = {}
        with _logged(folder / "run.log"):
            if row.kind in ("control", "fused"):
                self._train(self._train_cfg(seed, name, row.kind))
                config = self._last_config
                scores = self.score(self._torch_runner(self.ckpt(seed, name)), name)
            elif row.kind == "student":
                from edgehaze.distill.run import run_distill
                from edgehaze.train.config import to_dict

                cfg = self._distill_cfg(seed)
                run_distill(cfg, resume=(folder / "last.state.pt").is_file(), progress=False)
                config = to_dict(cfg)
                scores = self.score(self._torch_runner(self.ckpt(seed, name)), name)
            else:
                config, scores, extra = self._int8(seed, folder)
        if row.kind in ("fused", "student"):
            extra["depth_effect"] = self.zeroed_depth_effect(self.ckpt(seed, name))
        if row.kind == "fused":
            extra["branch"] = branch_stats(folder / "train_log.csv", self.ckpt(seed, name))
        result = {"seed": seed, "run": name, "rows": {name: scores}, "wall_s": time.perf_counter() - t0,
                  "cpu_s": time.process_time() - c0, "config": config, **extra}
        _write_json(done, result)
        return result

    def _torch_runner(self, ckpt: Path) -> Any:
        from edgehaze.data.runners import make_runner

        return make_runner(ckpt, threads=self.budget.threads)

    def _int8(self, seed: int, folder: Path) -> Tuple[Dict[str, Any], Dict[str, Any], Dict[str, Any]]:
        """The student exported to INT8 (PTQ, calibrated on training images), scored through the runtime."""
        from edgehaze.demo import _runtime_runner
        from edgehaze.export import export_checkpoint

        b = self.budget
        student = self.ckpt(seed, "student")
        calib = str(self.synth / "train")
        res = export_checkpoint(student, out=folder, name="student-int8", precision="int8", calib=calib,
                                calib_images=b.calib_images, holdout_images=b.holdout_images,
                                calib_size=tuple(b.calib_size), method="ptq", max_psnr_drop=0.5, force=True,
                                progress=False)
        config = {"checkpoint": str(student), "method": "ptq", "calib": calib, "calib_images": b.calib_images,
                  "calib_size": list(b.calib_size)}
        scores = self.score(_runtime_runner(folder / "student-int8.onnx", b.threads), "int8")
        return config, scores, {"export_accuracy": res.sidecar.get("accuracy")}

    # -- report
    def write_report(self, runs: List[Dict[str, Any]], teacher: Dict[str, Any], wall: Optional[float],
                     partial: bool) -> Dict[str, Any]:
        from edgehaze.fsutil import atomic_write_text

        base = self.out / "baselines.json"
        baselines = json.loads(base.read_text(encoding="utf-8")) if base.is_file() else {}
        results = build_results(runs, self.budget, self.seeds, self.rows, baselines, teacher, wall, partial)
        results.update(data_dir=str(self.data_dir), synth=str(self.synth), teacher_weights=str(self.teacher),
                       oracle=_oracle_sources(self.oracle), image_size=list(self.image_size()))
        _write_json(self.out / "results.json", results)
        atomic_write_text(self.out / "report.md", markdown(results))
        return results


def _score_given_teacher(data_dir: Path, folder: Path, input_size: int, val_every: Optional[int],
                         model: str = "tiny") -> Dict[str, Any]:
    """AbsRel / delta1 of a given teacher (``model`` loaded from ``folder``) on the val and test scenes.

    For the ``tiny`` stand-in also the untrained architecture on the same
    scenes; a released model (``dav2-l``...) cannot be built without its
    weights, so it has no untrained row.
    """
    import torch

    from edgehaze.demo_teacher import load_teacher
    from edgehaze.depth_teacher import EVAL_PARTS, evaluate, ramp_reference, real_depth_scenes
    from edgehaze.models.dehazer import build_depth

    scenes = real_depth_scenes(data_dir, val_every=val_every)
    torch.manual_seed(0)
    if model == "tiny":
        untrained = {k: evaluate(build_depth("tiny", input_size=input_size), scenes[k]) for k in EVAL_PARTS}
        trained = load_teacher(folder, input_size)
    else:
        untrained = {}
        trained = build_depth(model, weights=str(folder), input_size=input_size)
    return {"untrained": untrained, "trained": {k: evaluate(trained, scenes[k]) for k in EVAL_PARTS},
            "ramp": {k: ramp_reference(scenes[k]) for k in EVAL_PARTS},
            "given": str(folder), "model": model, "input_size": input_size, "train_images": None, "steps": None}


def _oracle_sources(folder: Path) -> Dict[str, Any]:
    path = folder / "oracle.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return {"sources": data.get("sources"), "encoding": data.get("encoding"), "images": len(data.get("entries", {}))}


def branch_stats(log: Path, ckpt: Path) -> Dict[str, Any]:
    """The fused stage's ``grad_z1``/``grad_z2`` over training and the final Z1/Z2 weight norms (item 6)."""
    import statistics

    from edgehaze.checkpoint import load_dehazer
    from edgehaze.train.logs import CsvLog

    rows = [r for r in CsvLog(log).rows() if r.get("stage") == "fused" and r.get("grad_z1") not in (None, "")]
    steps = [int(r["step"]) for r in rows]
    z1 = [float(r["grad_z1"]) for r in rows]
    z2 = [float(r["grad_z2"]) for r in rows]
    model, _ = load_dehazer(ckpt)
    norms = {part: math.sqrt(sum(float(p.detach().pow(2).sum()) for b in model.fused_blocks()
                                 for p in getattr(b, part).parameters())) for part in ("z1", "z2")}
    ratios = [b / a for a, b in zip(z1, z2) if a > 0]
    return {"steps": steps, "grad_z1": z1, "grad_z2": z2,
            "grad_z1_first": z1[0] if z1 else None, "grad_z1_last": z1[-1] if z1 else None,
            "grad_z2_first": z2[0] if z2 else None, "grad_z2_last": z2[-1] if z2 else None,
            "z2_over_z1_median": statistics.median(ratios) if ratios else None,
            "z1_norm": norms["z1"], "z2_norm": norms["z2"]}


# ---------------------------------------------------------------- aggregation (pure)
def per_seed(runs: List[Dict[str, Any]], group: str, metric: str = "psnr") -> Dict[str, Dict[int, float]]:
    """``{row: {seed: value}}``: a set group's metric (FRIDA2: the mean over its fog types) per run."""
    out: Dict[str, Dict[int, float]] = {}
    for run in runs:
        for row, per_set in (run.get("rows") or {}).items():
            vals = [m[metric] for s, m in per_set.items() if group_of(s) == group and m.get(metric) is not None]
            if vals:
                out.setdefault(row, {})[int(run["seed"])] = sum(vals) / len(vals)
    return out


def _cells(values: Dict[str, List[float]]) -> Dict[str, Any]:
    return {k: summarise(v) for k, v in values.items()}


def build_results(runs: List[Dict[str, Any]], budget: Budget, seeds: Sequence[int], rows: Sequence[str],
                  baselines: Dict[str, Any], teacher: Dict[str, Any], wall: Optional[float],
                  partial: bool = False) -> Dict[str, Any]:
    """Per row and set: mean/std/min/max over seeds; comparisons paired by seed; targets; item-6 summary."""
    table: Dict[str, Any] = {}
    for name in rows:
        mine = [r for r in runs if r.get("run") == name]
        sets = sorted({s for r in mine for s in (r["rows"].get(name) or {})})
        entry: Dict[str, Any] = {"title": ROWS[name].title, "seeds": sorted(int(r["seed"]) for r in mine)}
        entry["sets"] = {s: _cells({m: [r["rows"][name][s][m] for r in mine if m in r["rows"][name].get(s, {})]
                                    for m in METRICS}) for s in sets}
        effects = [r["depth_effect"] for r in mine if r.get("depth_effect")]
        if effects:
            entry["depth_effect"] = _cells({g: [e[g] for e in effects if g in e] for g in effects[0]})
        branch = [r["branch"] for r in mine if r.get("branch")]
        if branch:
            keys = ("grad_z1_first", "grad_z1_last", "grad_z2_first", "grad_z2_last", "z2_over_z1_median",
                    "z1_norm", "z2_norm")
            entry["branch"] = _cells({k: [b[k] for b in branch if b.get(k) is not None] for k in keys})
        table[name] = entry
    comparisons = []
    for group in ("sots-indoor", "frida2"):
        values = per_seed(runs, group)
        for c in COMPARISONS:
            if c.higher in values and c.lower in values:
                check = check_ordering(values[c.higher], values[c.lower])
                comparisons.append({"group": group, **asdict(c), **check,
                                    "per_seed": {s: values[c.higher][s] - values[c.lower][s]
                                                 for s in sorted(set(values[c.higher]) & set(values[c.lower]))}})
    done = {(int(r["seed"]), r["run"]) for r in runs}
    missing = [f"seed {s} {n}" for s in seeds for n in rows if (s, n) not in done]
    return {"runs": runs, "table": table, "comparisons": comparisons, "baselines": baselines,
            "targets": targets(comparisons, teacher), "teacher": teacher, "budget": asdict(budget),
            "seeds": list(seeds), "rows": list(rows), "wall_s": wall,
            "runs_cpu_s": sum(r.get("cpu_s", 0.0) for r in runs), "partial": partial or bool(missing),
            "missing_runs": missing, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _comparison(comparisons: List[Dict[str, Any]], higher: str, lower: str, group: str) -> Optional[Dict[str, Any]]:
    return next((c for c in comparisons if (c["higher"], c["lower"], c["group"]) == (higher, lower, group)
                 and c["n"]), None)


def targets(comparisons: List[Dict[str, Any]], teacher: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Issue 16's targets, each with the numbers that decide it (``met`` None: not measured)."""
    out = []
    gain = _comparison(comparisons, "teacher", "control", "sots-indoor")
    per = list(gain["per_seed"].values()) if gain else []
    out.append({"target": f"fused teacher >= control + {TARGET_GAIN_DB} dB on SOTS-indoor, every seed",
                "met": (min(per) >= TARGET_GAIN_DB) if per else None,
                "value": f"{', '.join(f'{d:+.2f}' for d in per)} dB per seed" if per else "not measured"})
    student = _comparison(comparisons, "student", "control", "sots-indoor")
    if gain and student and gain["diff_mean"] > 0:
        keep = student["diff_mean"] / gain["diff_mean"]
        out.append({"target": f"student keeps >= {TARGET_KEEP:.0%} of the teacher's gain (SOTS-indoor)",
                    "met": keep >= TARGET_KEEP, "value": f"{keep:.0%} ({student['diff_mean']:+.2f} of "
                                                         f"{gain['diff_mean']:+.2f} dB)"})
    else:
        out.append({"target": f"student keeps >= {TARGET_KEEP:.0%} of the teacher's gain (SOTS-indoor)",
                    "met": None if not (gain and student) else False,
                    "value": "no teacher gain to keep" if gain and student else "not measured"})
    test = ((teacher or {}).get("trained") or {}).get("test") or {}
    out.append({"target": f"depth teacher AbsRel <= {TARGET_ABS_REL} on the test scenes",
                "met": (test["abs_rel"] <= TARGET_ABS_REL) if test.get("images") else None,
                "value": f"{test['abs_rel']:.3f} ({test['images']} images)" if test.get("images") else "not measured"})
    oracle = _comparison(comparisons, "oracle", "control", "sots-indoor")
    out.append({"target": "oracle depth shows the ceiling (no threshold)", "met": None,
                "value": f"{oracle['diff_mean']:+.2f} dB over the control on SOTS-indoor" if oracle else "not measured"})
    return out


# ---------------------------------------------------------------- the report (pure)
def _protocol_lines(r: Dict[str, Any]) -> List[str]:
    b = r["budget"]
    h, w = (r.get("image_size") or [0, 0])
    return [
        "**Protocol.** Training: the `train/` split of `" + str(r.get("synth")) + "` (real RGB-D scenes re-hazed by "
        f"`edgehaze synth --rgbd`, plus the sources' own pairs), random {b['crop']} crops and flips. Validation: its `val/` "
        "split (scenes held out of training), logged only: **no checkpoint is chosen on any split; every row is its "
        "last checkpoint**. Test (never trained on, never validated on): the SOTS-indoor test pairs and FRIDA2's "
        "test scenes (every 5th scene) per fog type, from `" + str(r.get("data_dir")) + "`, scored with the hazy "
        "input and the dark-channel prior on the same images in the same run. The real-scene teacher trains on the "
        "same training scenes; INT8 calibrates on training images.",
        "",
        f"**Budget, equal for every row.** Backbone `{b['backbone']}` {json.dumps(b['backbone_kwargs'])}, fusion "
        f"`{b['fusion']}`, batch {b['batch']}, crop {b['crop']}, L1. Per seed, stage 1 (RGB only) trains "
        f"{b['stage1_steps']} steps (lr {b['lr']:g}, cosine); each row then trains {b['stage2_steps']} more steps "
        f"from it (lr {b['stage2_lr']:g}, cosine with warm restarts every half): the control without depth, the fused "
        f"rows with depth (`finetune: all`). The student distils {b['distill_steps']} steps from `teacher`. Depth "
        f"features are computed on the whole training image and cropped with it (`depth_scale: full_image`); each "
        f"fusion point takes the depth level whose stride is nearest relative to a {w}x{h} image.",
        "",
        "**Oracle depth.** The scene's own depth enters through the teacher's door "
        "(`edgehaze.models.depth.oracle`): a table from each image (SHA-1 of its 8-bit pixels) to its depth map "
        "(training: the synth's `depth/<scene>.npy`; SOTS-indoor test: recovered from each test pair's own "
        "transmission; FRIDA2 test: its metric depth), scaled by its 95th percentile, pooled to strides 4-32 and "
        "encoded with fixed maps (the depth, a bounded inverse depth, exp(-k d) for six k). Nothing in the encoder learns; the "
        "fusion blocks train exactly as in the teacher row. It knows relative depth, not the haze density.",
        "",
    ]


def _set_table(r: Dict[str, Any], set_name: str) -> List[str]:
    lines = [f"### {set_name}", "", "| row | seeds | PSNR | SSIM | halo (grey levels) |", "|---|---:|---|---|---|"]
    for method, m in (r["baselines"].get(set_name) or {}).items():
        cells = [_num(m.get(k), f) for k, f in (("psnr", ".2f"), ("ssim", ".4f"), ("halo", ".2f"))]
        lines.append(f"| {method} | - | " + " | ".join(cells) + " |")
    for name, e in r["table"].items():
        cell = e["sets"].get(set_name)
        if cell:
            lines.append(f"| `{name}` {e['title']} | {cell['psnr']['n']} | {_fmt(cell['psnr'], 2)} | "
                         f"{_fmt(cell['ssim'], 4)} | {_fmt(cell['halo'], 2)} |")
    return lines + [""]


def _num(v: Any, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and math.isfinite(v) else "-"


def _comparison_lines(r: Dict[str, Any]) -> List[str]:
    lines = ["## Depth gain, paired by seed (PSNR, dB)", "",
             "| comparison | what | set | mean diff | std | seeds agreeing | per seed | verdict |",
             "|---|---|---|---:|---:|---:|---|---|"]
    for c in r["comparisons"]:
        verdict = {"reproduced": "higher", "within noise": "within noise", "not reproduced": "not higher",
                   "missing": "missing"}[c["status"]]
        per = ", ".join(f"{d:+.2f}" for d in c["per_seed"].values())
        lines.append(f"| `{c['higher']}` - `{c['lower']}` | {c['what']} | {c['group']} | {c['diff_mean']:+.2f} | "
                     f"{c['diff_std']:.2f} | {c['wins']}/{c['n']} | {per} | {verdict} |")
    return lines + ["", "Verdict: `higher` when the mean difference is at least 0.05 dB, larger than its spread "
                        "over seeds and every seed agrees; FRIDA2 is the mean over its fog types.", ""]


def _branch_lines(r: Dict[str, Any]) -> List[str]:
    lines = ["## Why the branch stays shut (item 6)", "",
             "Gradient norms reaching Z1 and Z2 (all fusion blocks together), first and last logged window of the "
             "fused stage; the final weight norms of Z1 and Z2; the depth effect (mean change of the output in "
             "grey levels when the depth features are zeroed) on the test images. Means over seeds.", "",
             "| row | grad_z1 first -> last | grad_z2 first -> last | median grad_z2/grad_z1 | |Z1| | |Z2| | "
             "depth effect SOTS | depth effect FRIDA2 |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for name, e in r["table"].items():
        b, d = e.get("branch"), e.get("depth_effect") or {}
        if not b and not d:
            continue

        def m(key: str, fmt: str, src: Dict[str, Any] = b or {}) -> str:
            s = src.get(key)
            return format(s["mean"], fmt) if s and s.get("mean") is not None else "-"

        lines.append(f"| `{name}` | {m('grad_z1_first', '.2e')} -> {m('grad_z1_last', '.2e')} | "
                     f"{m('grad_z2_first', '.2e')} -> {m('grad_z2_last', '.2e')} | {m('z2_over_z1_median', '.0f')} | "
                     f"{m('z1_norm', '.3f')} | {m('z2_norm', '.3f')} | {m('sots-indoor', '.3f', d)} | "
                     f"{m('frida2', '.3f', d)} |")
    return lines + ["", "At the exact start Z2 = 0, so Z1 and the fusion module receive no gradient until Z2 "
                        "moves; a large grad_z2/grad_z1 ratio and a small |Z2| mean the branch opened little. "
                        "Remedy rows (`teacher-lr`, `teacher-z1`, `teacher-long`) are compared with their "
                        "equal-budget control above.", ""]


def markdown(r: Dict[str, Any]) -> str:
    """The report: protocol, per-set tables with the baselines, paired gains, targets, item 6, time."""
    lines = [f"# Does depth help? Real images, equal budget{' (partial)' if r.get('partial') else ''}", "",
             f"Seeds: {', '.join(map(str, r['seeds']))}. Cells: mean ± std [min, max] over seeds.", "",
             *_protocol_lines(r), "## Test sets", ""]
    sets = sorted({s for e in r["table"].values() for s in e["sets"]} | set(r["baselines"]),
                  key=lambda s: (s != "sots-indoor", s))
    for s in sets:
        lines += _set_table(r, s)
    lines += _comparison_lines(r)
    lines += ["## Targets (issue 16)", ""]
    for t in r["targets"]:
        mark = {True: "met", False: "**not met**", None: "-"}[t["met"]]
        lines.append(f"- {t['target']}: {t['value']} — {mark}.")
    tq = ((r.get("teacher") or {}).get("trained") or {})
    if tq.get("test", {}).get("images"):
        u = ((r["teacher"].get("untrained") or {}).get("test")) or {}
        ramp = ((r["teacher"].get("ramp") or {}).get("test")) or {}
        lines += ["", f"Depth teacher on the test scenes: AbsRel {tq['test']['abs_rel']:.3f} (untrained "
                      f"{_num(u.get('abs_rel'), '.3f')}; a vertical ramp {_num(ramp.get('abs_rel'), '.3f')}), "
                      f"delta<1.25 {tq['test']['delta1']:.3f} (untrained {_num(u.get('delta1'), '.3f')}; ramp "
                      f"{_num(ramp.get('delta1'), '.3f')})."]
    lines += [""] + _branch_lines(r)
    if r.get("missing_runs"):
        lines += ["Runs not finished: " + ", ".join(r["missing_runs"]) + ".", ""]
    b = r["budget"]
    lines += ["## Time", "", (f"Wall time of this invocation: {r['wall_s'] / 60:.1f} min; " if r.get("wall_s")
                              else "Report rebuilt from the finished runs; ")
              + f"CPU time of the row runs: {r['runs_cpu_s'] / 60:.1f} min (threads {b['threads']}). "
              f"Finished {r['finished']}.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- CLI
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = os.environ.get("EDGEHAZE_SHARED")
    p.add_argument("--out", default="runs/depth_gain", help="output folder (resumable)")
    p.add_argument("--data", default=str(Path(shared) / "data") if shared else None,
                   help="the shared data folder: sots_indoor/, frida2/ (default $EDGEHAZE_SHARED/data)")
    p.add_argument("--synth", default="data/real", help="edgehaze synth --rgbd output: train/ val/ with depth/")
    p.add_argument("--teacher", default=None,
                   help="the teacher's weights: a trained stand-in folder (default: train one) or, with "
                        "--teacher-model, the released model's checkpoint or local Hugging Face folder")
    p.add_argument("--teacher-model", default=None,
                   help=f"depth model of the teacher rows (default {DEFAULT.teacher_model}: the stand-in; e.g. "
                        "dav2-l or da3-mono-l with --teacher PATH and --teacher-input 518)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default 0 1 2; --quick: 0)")
    p.add_argument("--rows", nargs="+", default=None, metavar="ROW", help=f"rows (dependencies added): {', '.join(ROWS)}")
    p.add_argument("--backbone", default=None, help=f"backbone (default {DEFAULT.backbone})")
    p.add_argument("--backbone-kwargs", default=None, help=f"JSON (default {json.dumps(DEFAULT.backbone_kwargs)})")
    for flag, key in (("--stage1-steps", "stage1_steps"), ("--stage2-steps", "stage2_steps"),
                      ("--distill-steps", "distill_steps"), ("--teacher-steps", "teacher_steps"),
                      ("--teacher-input", "teacher_input"),
                      ("--long-factor", "long_factor")):
        p.add_argument(flag, type=int, default=None, help=f"default {getattr(DEFAULT, key)}")
    for flag, key in (("--lr-scale", "lr_scale"), ("--z1-std", "z1_std"), ("--stage2-lr", "stage2_lr")):
        p.add_argument(flag, type=float, default=None, help=f"default {getattr(DEFAULT, key)}")
    p.add_argument("--quick", action="store_true", help="tiny budget (tests): edge-xs, a few steps")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from the finished runs")
    return p.parse_args(argv)


def budget_from_args(args: argparse.Namespace) -> Budget:
    """The preset with the command line's changes, checked (one-line errors)."""
    budget = QUICK if args.quick else DEFAULT
    changes: Dict[str, Any] = {}
    for key in ("stage1_steps", "stage2_steps", "distill_steps", "teacher_steps", "teacher_input", "long_factor",
                "lr_scale", "z1_std", "stage2_lr", "backbone", "teacher_model", "threads"):
        value = getattr(args, key, None)
        if value is not None:
            if not isinstance(value, str) and not value > 0:
                raise ConfigError(f"--{key.replace('_', '-')} must be > 0, got {value}")
            changes[key] = value
    if args.backbone_kwargs is not None:
        try:
            changes["backbone_kwargs"] = dict(json.loads(args.backbone_kwargs))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"--backbone-kwargs: not a JSON object ({exc})") from None
    return replace(budget, **changes)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        if not args.data:
            raise ConfigError("--data DIR (the shared data folder) is needed, or set EDGEHAZE_SHARED")
        budget = budget_from_args(args)
        seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
        run = DepthGain(args.out, budget, seeds, select_rows(args.rows), args.data, args.synth, args.teacher,
                        progress=not args.no_progress)
        results = run.report_only() if args.report_only else run.run()
    except EdgehazeError as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print(markdown(results))
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
