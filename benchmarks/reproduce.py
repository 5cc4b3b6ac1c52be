"""The paper's ablations in miniature, at an equal training budget per row.

    python benchmarks/reproduce.py --out runs/reproduce [--seeds 0 1 2] [--steps N]
                                   [--sots DIR] [--only ROWS ...] [--quick]

Why: the paper's tables (RGB-only vs fused, Tables 1/2; fusion modules,
Table 3; finetune depth vs all, Table 4; zero-convolution placement,
Table 6) were measured on RESIDE with DAv2-L. On a CPU we cannot repeat
that, but we can ask whether the same *orderings* appear when every row gets
the same small budget: same procedural RGB-D data (exact depth), same steps,
same seeds, and a depth teacher that really knows depth (the small Depth
Anything V2-architecture network that ``edgehaze demo`` pre-trains on the
exact procedural depth, :mod:`edgehaze.demo_teacher`, loaded through the
normal ``build_dehazer(depth="tiny", depth_weights=FOLDER)`` path).

Per seed:

* ``stage1``: the RGB-only backbone trained for ``S`` steps (shared start of
  every row of that seed).
* ``rgb``: stage 1 continued for another ``S`` steps *without* depth, with the
  schedule of stage 2: the RGB-only model at the same total budget (2S).
* fused rows (stage 2 for ``S`` steps from stage 1, ``finetune: all``):
  ``full``, ``cfe-dai``, ``cfe-dai-asg`` (Table 3), ``no-zc``, ``pre-zc``,
  ``post-zc`` (Table 6; both = ``full``), and ``ft-depth`` (``full`` with
  ``finetune: depth``, Table 4).
* ``student``: a small student depth encoder distilled from ``full``
  (:mod:`edgehaze.distill`) for ``S`` steps, the student vs its teacher.
* ``int8``: the student exported to ONNX FP32 and INT8 (PTQ,
  :mod:`edgehaze.export`), both evaluated through ONNX Runtime.

Every model is its *last* checkpoint (no selection on the test split) and is
evaluated on the procedural test split and, with ``--sots DIR`` (or
``EDGEHAZE_SHARED``), on the 30 real SOTS-indoor pairs (test data only).

Outputs in ``--out``: ``report.md`` (mean +- std and min/max over seeds, the
paper's orderings checked against the numbers), ``results.json``, and per
run ``seedS/ROW/{result.json,run.log,config.yaml,...}``. A run whose
``result.json`` exists is not redone (re-running continues where it
stopped; an interrupted training run resumes from its last state).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a script: make the repo importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgehaze.errors import ConfigError, EdgehazeError

METRICS = ("psnr", "ssim", "psnr_y")


# ---------------------------------------------------------------- budget
@dataclass(frozen=True)
class Budget:
    """Everything that sets the run time; identical for every row."""

    n_train: int = 96
    n_test: int = 16
    size: Tuple[int, int] = (96, 96)
    data_seed: int = 0
    teacher_steps: int = 300
    teacher_batch: int = 8
    teacher_input: int = 98  # multiple of 14
    backbone: str = "edge-xs"
    crop: int = 64
    batch: int = 8
    steps: int = 300  # per stage (stage 1, stage 2 / its RGB continuation, distillation)
    lr_stage1: float = 2.0e-3
    lr_stage2: float = 1.0e-3
    distill_lr: float = 2.0e-3
    student_widths: Tuple[int, ...] = (8, 16, 32, 64)
    student_blocks: Tuple[int, ...] = (1, 1, 1, 1)
    calib_images: int = 24
    holdout_images: int = 8
    threads: int = 1


DEFAULT = Budget()
QUICK = Budget(n_train=16, n_test=3, size=(64, 64), teacher_steps=15, teacher_input=56, crop=48, steps=6,
               calib_images=6, holdout_images=2)


# ---------------------------------------------------------------- rows
@dataclass(frozen=True)
class Row:
    name: str
    title: str
    table: str
    kind: str  # rgb | fused | student | int8
    fusion: str = "full"
    finetune: str = "all"
    needs: Tuple[str, ...] = ()


ROWS: Dict[str, Row] = {r.name: r for r in [
    Row("rgb", "RGB-only (stage 1 continued, same total steps)", "1/2", "rgb"),
    Row("full", "fused, full block (CFE+DAI+ACG+FFN+ASG, pre+post ZC)", "1/2, 3, 4, 6", "fused"),
    Row("cfe-dai", "fused, CFE + DAI", "3", "fused", fusion="cfe-dai"),
    Row("cfe-dai-asg", "fused, CFE + DAI + ASG", "3", "fused", fusion="cfe-dai-asg"),
    Row("ft-depth", "fused, finetune: depth (backbone frozen)", "4", "fused", finetune="depth"),
    Row("no-zc", "fused, no zero-conv", "6", "fused", fusion="no-zc"),
    Row("pre-zc", "fused, pre-ZC only", "6", "fused", fusion="pre-zc"),
    Row("post-zc", "fused, post-ZC only", "6", "fused", fusion="post-zc"),
    Row("student", "student encoder distilled from `full` (torch)", "distill", "student", needs=("full",)),
    Row("int8", "student ONNX FP32 vs INT8 (PTQ)", "export", "int8", needs=("full", "student")),
]}
#: the result rows a run writes (the int8 run writes two)
RESULT_ROWS: Dict[str, Tuple[str, ...]] = {name: (name,) for name in ROWS}
RESULT_ROWS["int8"] = ("onnx-fp32", "onnx-int8")
RESULT_TITLES = {**{r.name: r.title for r in ROWS.values()},
                 "onnx-fp32": "student, ONNX FP32", "onnx-int8": "student, ONNX INT8 (PTQ)"}
QUICK_ROWS = ("rgb", "full")


@dataclass(frozen=True)
class Ordering:
    """A claim ``higher > lower`` (by PSNR) with the paper's numbers behind it."""

    table: str
    higher: str
    lower: str
    paper: str  # the paper's values, for the report


PAPER_ORDERINGS: Tuple[Ordering, ...] = (
    Ordering("1/2", "full", "rgb", "SGDNet 29.12 -> +Ours 29.79 (Table 2 / RESIDE-6K ablation baseline)"),
    Ordering("3", "cfe-dai", "rgb", "CFE+DAI 29.48 > baseline 29.12"),
    Ordering("3", "cfe-dai-asg", "cfe-dai", "CFE+DAI+ASG 29.59 > CFE+DAI 29.48"),
    Ordering("3", "full", "cfe-dai-asg", "full 29.79 > CFE+DAI+ASG 29.59"),
    Ordering("4", "ft-depth", "rgb", "finetune depth 29.53 > baseline 29.12"),
    Ordering("4", "full", "ft-depth", "finetune all 29.79 > finetune depth 29.53"),
    Ordering("6", "no-zc", "rgb", "no ZC 29.22 > baseline 29.12"),
    Ordering("6", "post-zc", "no-zc", "post-ZC 29.47 > no ZC 29.22"),
    Ordering("6", "pre-zc", "post-zc", "pre-ZC 29.64 > post-ZC 29.47"),
    Ordering("6", "full", "pre-zc", "both ZC 29.79 > pre-ZC 29.64"),
)
#: not in the paper: what the toolkit promises (a student keeps a depth gain; INT8 costs < 0.5 dB)
TOOLKIT_CHECKS: Tuple[Ordering, ...] = (
    Ordering("Distillation", "student", "rgb", "(toolkit) the distilled student beats RGB-only"),
)
INT8_MAX_DROP_DB = 0.5
#: a mean PSNR difference smaller than this is a tie, whatever the seeds say
TIE_DB = 0.05


def select_rows(only: Optional[Sequence[str]], quick: bool) -> List[str]:
    """The runs to do, in execution order, with their dependencies added."""
    wanted = list(only) if only else (list(QUICK_ROWS) if quick else list(ROWS))
    bad = [r for r in wanted if r not in ROWS]
    if bad:
        raise ConfigError(f"--only {bad[0]}: unknown row; rows are {', '.join(ROWS)}")
    closed = set(wanted)
    for r in wanted:
        closed.update(ROWS[r].needs)
    return [r for r in ROWS if r in closed]


# ---------------------------------------------------------------- orderings (pure)
def check_ordering(higher: Dict[int, float], lower: Dict[int, float]) -> Dict[str, Any]:
    """Compare two rows seed by seed (paired: same seed = same stage 1, same data order).

    Returns ``{"n", "diff_mean", "diff_std", "wins", "status"}`` with
    status ``reproduced`` (mean difference at least ``TIE_DB`` and larger
    than its spread over seeds, or with one seed), ``within noise`` (mean > 0
    but below ``TIE_DB``, not beyond the spread, or not every seed agrees), ``not reproduced`` (mean
    difference <= 0) or ``missing`` (no common seed with finite numbers).
    """
    seeds = sorted(s for s in set(higher) & set(lower)
                   if math.isfinite(higher[s]) and math.isfinite(lower[s]))
    if not seeds:
        return {"n": 0, "diff_mean": None, "diff_std": None, "wins": 0, "status": "missing"}
    diffs = [higher[s] - lower[s] for s in seeds]
    n = len(diffs)
    mean = sum(diffs) / n
    std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else 0.0
    wins = sum(d > 0 for d in diffs)
    if mean <= 0:
        status = "not reproduced"
    elif mean < TIE_DB:
        status = "within noise"
    elif n == 1 or (mean > std and wins == n):
        status = "reproduced"
    else:
        status = "within noise"
    return {"n": n, "diff_mean": mean, "diff_std": std, "wins": wins, "status": status}


def ordering_sentence(o: Ordering, check: Dict[str, Any], split: str) -> str:
    """One plain sentence for the report, computed from ``check``."""
    where = f"Table {o.table}" if o.table[:1].isdigit() else o.table
    toolkit = o.paper.startswith("(toolkit) ")
    note = ("toolkit expectation: " + o.paper[len("(toolkit) "):]) if toolkit else f"paper: {o.paper}"
    if check["status"] == "missing":
        return f"{where}: {o.higher} > {o.lower} — not measured on {split} (row missing)."
    d, s, n, w = check["diff_mean"], check["diff_std"], check["n"], check["wins"]
    spread = f" (std {s:.2f} over {n} seeds, {w}/{n} seeds agree)" if n > 1 else " (1 seed)"
    if check["status"] == "not reproduced":
        return (f"{where}: {o.higher} < {o.lower} here by {-d:.2f} dB{spread} on {split}: "
                f"**not reproduced** ({note}).")
    if check["status"] == "within noise":
        return (f"{where}: {o.higher} > {o.lower} by {d:.2f} dB{spread} on {split}: within the "
                f"seed spread or under {TIE_DB} dB, **not clearly reproduced** ({note}).")
    return f"{where}: {o.higher} > {o.lower} by {d:.2f} dB{spread} on {split}: reproduced ({note})."


def per_seed(results: Dict[str, Any], split: str, metric: str = "psnr") -> Dict[str, Dict[int, float]]:
    """``{row: {seed: value}}`` from the results' runs."""
    out: Dict[str, Dict[int, float]] = {}
    for run in results.get("runs", []):
        for row, metrics in (run.get("rows") or {}).items():
            value = ((metrics or {}).get(split) or {}).get(metric)
            if value is not None:
                out.setdefault(row, {})[int(run["seed"])] = float(value)
    return out


def summarise(values: Sequence[float]) -> Dict[str, Any]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    n = len(vals)
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
    return {"n": n, "mean": mean, "std": std, "min": min(vals), "max": max(vals)}


# ---------------------------------------------------------------- plumbing
class _Tee:
    def __init__(self, *streams: Any) -> None:
        self._streams = streams

    def write(self, text: str) -> int:
        for s in self._streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self._streams:
            s.flush()

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def _logged(path: Path) -> Iterator[None]:
    """Send stdout/stderr of a run to its ``run.log`` (the outer progress bar keeps the terminal)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        with contextlib.redirect_stdout(_Tee(fh)), contextlib.redirect_stderr(_Tee(fh)):
            yield


def _write_json(path: Path, obj: Any) -> None:
    from edgehaze.fsutil import atomic_write

    text = json.dumps(obj, indent=2, default=str).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(text))


def _write_text(path: Path, text: str) -> None:
    from edgehaze.fsutil import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _last(stage_dir: Path) -> Path:
    """The last checkpoint of a stage: every row is judged at the same step, never picked on the test split."""
    path = stage_dir / "last.safetensors"
    if not path.is_file():
        raise EdgehazeError(f"{path}: missing after training (see the run's run.log)")
    return path


def shared_dir(arg: Optional[str]) -> Optional[Path]:
    """SOTS-indoor folder from ``--sots`` or ``$EDGEHAZE_SHARED/data/sots_indoor`` (None: not evaluated)."""
    if arg:
        p = Path(arg)
        if not (p / "hazy").is_dir():
            raise EdgehazeError(f"--sots {p}: expected a folder with hazy/ and gt/ (the 30 SOTS-indoor pairs)")
        return p
    env = os.environ.get("EDGEHAZE_SHARED")
    if env:
        for cand in (Path(env) / "data" / "sots_indoor", Path(env) / "sots_indoor"):
            if (cand / "hazy").is_dir():
                return cand
    return None


# ---------------------------------------------------------------- the reproduction
class Reproduction:
    """One output folder: shared data + teacher, then seeds x rows of runs."""

    def __init__(self, out: "str | Path", budget: Budget, seeds: Sequence[int], rows: Sequence[str],
                 sots: Optional[Path], progress: bool = True) -> None:
        self.out = Path(out).resolve()
        self.budget = budget
        self.seeds = [int(s) for s in seeds]
        self.rows = list(rows)
        self.sots = sots
        self.progress = progress
        self._datasets: Dict[str, Any] = {}

    # -- paths
    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def teacher(self) -> Path:
        return self.out / "teacher" / "depth-anything-tiny"

    def run_dir(self, seed: int, name: str) -> Path:
        return self.out / f"seed{seed}" / name

    # -- plan (a folder is only resumed with the same budget)
    def check_plan(self) -> None:
        # threads change the speed, not the numbers' meaning: not part of the plan
        plan = {"budget": {k: v for k, v in asdict(self.budget).items() if k != "threads"}}
        path = self.out / "plan.json"
        if path.is_file():
            old = json.loads(path.read_text(encoding="utf-8"))
            # a field added since that plan was written ran at its default (it did not exist yet)
            defaults = json.loads(json.dumps(asdict(type(self.budget)())))
            old_budget = {k: v for k, v in {**defaults, **(old.get("budget") or {})}.items() if k != "threads"}
            if old_budget != json.loads(json.dumps(plan["budget"])):
                raise ConfigError(f"{self.out} holds a reproduction with another budget ({path}); "
                                  "pick another --out (or delete it) to change --steps/--quick")
        else:
            _write_json(path, plan)

    # -- shared preparation
    def prepare_data(self) -> None:
        from edgehaze.data.procedural import make_procedural_dataset

        done = self.data / "done.json"
        if done.is_file():
            return
        if self.data.exists():
            shutil.rmtree(self.data)
        b = self.budget
        counts = make_procedural_dataset(self.data, b.n_train, b.n_test, size=b.size, seed=b.data_seed)
        _write_json(done, {"counts": counts, "size": list(b.size), "seed": b.data_seed})

    def prepare_teacher(self) -> Dict[str, Any]:
        """Pre-train the depth teacher once (``edgehaze.demo_teacher``), cached under the out dir."""
        from edgehaze.demo_teacher import depth_quality, load_depth_split, load_teacher, pretrain_teacher

        qpath = self.out / "teacher" / "quality.json"
        if qpath.is_file() and (self.teacher / "config.json").is_file():
            return json.loads(qpath.read_text(encoding="utf-8"))
        b = self.budget
        with _logged(self.out / "teacher" / "run.log"):
            info = pretrain_teacher(self.data, self.teacher, steps=b.teacher_steps, batch_size=b.teacher_batch,
                                    input_size=b.teacher_input, seed=0, progress=False)
            quality = depth_quality(load_teacher(self.teacher, b.teacher_input), load_depth_split(self.data, "test"))
        info["losses"] = [list(x) for x in info["losses"]]
        info["quality_test"] = quality
        _write_json(qpath, info)
        return info

    # -- configs
    def _train_cfg(self, seed: int, name: str, kind: str, fusion: str = "full", finetune: str = "all") -> Any:
        from edgehaze.train.config import TrainConfig, from_dict

        b = self.budget
        run = self.run_dir(seed, name)
        stage1 = self.run_dir(seed, "stage1") / "rgb" / "last.safetensors"
        tail = {"steps": b.steps, "lr": b.lr_stage2, "scheduler": "cosine_restarts",
                "restart_every": max(1, b.steps // 2), "eta_min": 1.0e-5}
        cfg: Dict[str, Any] = {
            "name": name,
            "out_dir": str(run),
            "seed": seed,
            "model": {"backbone": b.backbone, "depth": "tiny", "depth_weights": str(self.teacher),
                      "depth_kwargs": {"input_size": b.teacher_input}, "fusion": fusion},
            # no validation split: checkpoints are never chosen on the test data
            "data": {"root": str(self.data), "layout": "dehazeformer", "train_split": "train", "val_split": None,
                     "crop": b.crop, "flip": True, "workers": 0},
            "train": {"lr": b.lr_stage1, "weight_decay": 0.0, "batch_size": b.batch, "grad_clip": 1.0, "amp": "off",
                      "val_every": b.steps, "log_every": 10, "threads": b.threads, "device": "cpu",
                      "progress": False},
            "loss": {"l1": 1.0},
        }
        if kind == "stage1":
            cfg.update(stages=["rgb"], rgb={"steps": b.steps, "scheduler": "cosine", "eta_min": 1.0e-5})
        elif kind == "rgb":  # RGB-only at the fused rows' total budget: stage 1 + S more steps, stage 2's schedule
            cfg.update(stages=["rgb"], rgb={**tail, "init": str(stage1)})
        else:
            cfg.update(stages=["fused"], fused={**tail, "finetune": finetune, "init": str(stage1)})
        result = from_dict(TrainConfig, cfg, f"reproduce ({name}, seed {seed})")
        result.validate(f"reproduce ({name}, seed {seed})")
        return result

    def _distill_cfg(self, seed: int) -> Any:
        from edgehaze.distill.distiller import DistillConfig
        from edgehaze.train.config import from_dict

        b = self.budget
        cfg = {
            "name": "student",
            "out_dir": str(self.run_dir(seed, "student")),
            "seed": seed,
            "teacher": {"checkpoint": str(self.run_dir(seed, "full") / "fused" / "last.safetensors"),
                        "stage1": str(self.run_dir(seed, "stage1") / "rgb" / "last.safetensors")},
            "student": {"depth": "student-s",
                        "depth_kwargs": {"widths": list(b.student_widths), "blocks": list(b.student_blocks)}},
            "data": {"root": str(self.data), "layout": "dehazeformer", "train_split": "train", "val_split": None,
                     "crop": None, "flip": False, "workers": 0},
            "train": {"batch_size": b.batch, "val_every": b.steps, "log_every": 10, "device": "cpu",
                      "threads": b.threads, "progress": False},
            "distill": {"steps": b.steps, "lr": b.distill_lr, "cache_teacher": "auto"},
            "report": {"eval_size": list(b.size), "latency_runs": 1},
        }
        result = from_dict(DistillConfig, cfg, f"reproduce (student, seed {seed})")
        result.validate(f"reproduce (student, seed {seed})")
        return result

    # -- evaluation
    def _dataset(self, split: str) -> Any:
        from edgehaze.data.datasets import PairedDataset
        from edgehaze.data.layouts import find_pairs

        if split not in self._datasets:
            if split == "procedural":
                pairs = find_pairs(self.data, layout="dehazeformer", split="test")
            else:
                pairs = find_pairs(self.sots, layout="auto")  # type: ignore[arg-type]
            self._datasets[split] = PairedDataset(pairs, crop=None, flip=False)
        return self._datasets[split]

    def evaluate(self, model_path: Path, folder: Path, splits: Sequence[str]) -> Dict[str, Dict[str, float]]:
        from edgehaze.data.evaluation import evaluate
        from edgehaze.data.runners import make_runner

        runner = make_runner(model_path, threads=self.budget.threads)
        out: Dict[str, Dict[str, float]] = {}
        for split in splits:
            summary = evaluate(runner, self._dataset(split), folder / f"eval-{split}", progress=False, sheet_rows=4)
            out[split] = {m: float(summary["metrics"][m]) for m in (*METRICS, "psnr_hazy") if m in summary["metrics"]}
        return out

    def depth_effect(self, seed: int, name: str) -> float:
        """How much a trained fused model uses its depth branch (8-bit grey levels).

        Mean absolute change of the output on the procedural test images when
        the depth features are replaced by zeros. Zero-convolutions start the
        branch shut; a value near 0 means it is still (nearly) shut, and the
        row's PSNR differences then come from the backbone's fine-tuning, not
        from depth.
        """
        import torch

        from edgehaze.checkpoint import load_dehazer

        folder = self.run_dir(seed, name)
        path = folder / "student.safetensors" if ROWS[name].kind == "student" else folder / "fused" / "last.safetensors"
        model, _ = load_dehazer(path)
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for i in range(len(self._dataset("procedural"))):
                hazy, _gt = self._dataset("procedural").load_pair(i)
                x = torch.from_numpy(hazy).permute(2, 0, 1)[None].float()
                feats = model.depth_features(x)
                y = model(x, depth_feats=feats).clamp(0, 1)
                y0 = model(x, depth_feats=[torch.zeros_like(f) for f in feats]).clamp(0, 1)
                total += float((y - y0).abs().mean()) * 255.0
                count += 1
        return total / max(1, count)

    def splits(self) -> List[str]:
        return ["procedural"] + (["sots"] if self.sots is not None else [])

    # -- one run
    def _train(self, cfg: Any) -> Path:
        from edgehaze.train.config import to_dict
        from edgehaze.train.teacher import find_resumable, run_training

        run_dir = cfg.run_dir()
        results = run_training(cfg, resume=find_resumable(run_dir))
        (res,) = results.values()
        self._last_config = to_dict(cfg)
        return _last(Path(res.last_path).parent)

    def do_stage1(self, seed: int) -> Path:
        path = self.run_dir(seed, "stage1") / "rgb" / "last.safetensors"
        done = self.run_dir(seed, "stage1") / "result.json"
        if done.is_file() and path.is_file():
            return path
        cfg = self._train_cfg(seed, "stage1", "stage1")
        t0, c0 = time.perf_counter(), time.process_time()
        with _logged(self.run_dir(seed, "stage1") / "run.log"):
            self._train(cfg)
        _write_json(done, {"seed": seed, "run": "stage1", "wall_s": time.perf_counter() - t0,
                           "cpu_s": time.process_time() - c0, "config": self._last_config})
        return path

    def do_run(self, seed: int, name: str) -> Dict[str, Any]:
        """Train/distil/export one row for one seed and evaluate it; cached in ``result.json``."""
        row = ROWS[name]
        folder = self.run_dir(seed, name)
        done = folder / "result.json"
        if done.is_file():
            result = json.loads(done.read_text(encoding="utf-8"))
            if "depth_effect" not in result and row.kind in ("fused", "student"):  # runs from before this measure
                result["depth_effect"] = self.depth_effect(seed, name)
                _write_json(done, result)
            return result
        splits = self.splits()
        t0, c0 = time.perf_counter(), time.process_time()
        rows: Dict[str, Any] = {}
        extra: Dict[str, Any] = {}
        with _logged(folder / "run.log"):
            if row.kind in ("rgb", "fused"):
                cfg = self._train_cfg(seed, name, row.kind, row.fusion, row.finetune)
                ckpt = self._train(cfg)
                config = self._last_config
                rows[name] = self.evaluate(ckpt, folder, splits)
            elif row.kind == "student":
                from edgehaze.distill.run import run_distill
                from edgehaze.train.config import to_dict

                cfg = self._distill_cfg(seed)
                resume = (folder / "last.state.pt").is_file()
                run_distill(cfg, resume=resume, progress=False)
                config = to_dict(cfg)
                rows[name] = self.evaluate(folder / "student.safetensors", folder, splits)
            else:  # int8: export the student, evaluate FP32 and INT8 ONNX on the procedural split
                from edgehaze.export import export_checkpoint

                b = self.budget
                student = self.run_dir(seed, "student") / "student.safetensors"
                common = {"out": folder, "dynamic": False, "imgsz": list(b.size), "progress": False}
                config = {"checkpoint": str(student), "method": "ptq", "imgsz": list(b.size),
                          "calib": str(self.data / "train"), "calib_images": b.calib_images,
                          "holdout_images": b.holdout_images}
                fp32 = export_checkpoint(student, name="student-fp32", precision="fp32", **common)
                int8 = export_checkpoint(student, name="student-int8", precision="int8", calib=str(self.data / "train"),
                                         calib_images=b.calib_images, holdout_images=b.holdout_images,
                                         calib_size=tuple(b.size), method="ptq", max_psnr_drop=INT8_MAX_DROP_DB,
                                         force=True, **common)
                extra["export_accuracy"] = {"fp32": fp32.sidecar.get("accuracy"), "int8": int8.sidecar.get("accuracy")}
                # static-size graphs (the windowed CFE attention exports at a fixed size): procedural only
                rows["onnx-fp32"] = self.evaluate(folder / "student-fp32.onnx", folder / "fp32", ["procedural"])
                rows["onnx-int8"] = self.evaluate(folder / "student-int8.onnx", folder / "int8", ["procedural"])
        if row.kind in ("fused", "student"):
            extra["depth_effect"] = self.depth_effect(seed, name)
        result = {"seed": seed, "run": name, "rows": rows, "wall_s": time.perf_counter() - t0,
                  "cpu_s": time.process_time() - c0, "steps": self.budget.steps, "config": config, **extra}
        _write_json(done, result)
        return result

    # -- everything
    def run(self) -> Dict[str, Any]:
        import torch

        torch.set_num_threads(self.budget.threads)
        self.out.mkdir(parents=True, exist_ok=True)
        self.check_plan()
        t_start = time.perf_counter()
        units = 2 + len(self.seeds) * (1 + len(self.rows))
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=units, desc="reproduce", unit="run", dynamic_ncols=True, file=sys.stderr)

        def step(label: str, fn: Callable[[], Any]) -> Any:
            if bar is not None:
                bar.set_postfix_str(label)
            value = fn()
            if bar is not None:
                bar.update(1)
            return value

        runs: List[Dict[str, Any]] = []
        try:
            step("data", self.prepare_data)
            teacher = step("teacher", self.prepare_teacher)
            for seed in self.seeds:
                step(f"seed {seed} stage1", lambda: self.do_stage1(seed))
                for name in self.rows:
                    runs.append(step(f"seed {seed} {name}", lambda: self.do_run(seed, name)))
                    self.write_report(runs, teacher, time.perf_counter() - t_start, partial=True)
        finally:
            if bar is not None:
                bar.close()
        return self.write_report(runs, teacher, time.perf_counter() - t_start, partial=False)

    def report_only(self) -> Dict[str, Any]:
        """The report from the runs finished so far (e.g. while a long run is still going)."""
        if not (self.out / "plan.json").is_file():
            raise EdgehazeError(f"{self.out}: no reproduction here (no plan.json); run it first")
        self.check_plan()
        runs = [json.loads((self.run_dir(s, n) / "result.json").read_text(encoding="utf-8"))
                for s in self.seeds for n in self.rows if (self.run_dir(s, n) / "result.json").is_file()]
        qpath = self.out / "teacher" / "quality.json"
        teacher = json.loads(qpath.read_text(encoding="utf-8")) if qpath.is_file() else {}
        done = {(r["seed"], r["run"]) for r in runs}
        partial = any((s, n) not in done for s in self.seeds for n in self.rows)
        return self.write_report(runs, teacher, None, partial=partial)

    # -- report
    def write_report(self, runs: List[Dict[str, Any]], teacher: Dict[str, Any], wall: Optional[float],
                     partial: bool) -> Dict[str, Any]:
        results = build_results(runs, self.budget, self.seeds, self.rows, self.splits(), teacher, wall,
                                sots=str(self.sots) if self.sots else None, partial=partial)
        results["stage1_cpu_s"] = sum(
            json.loads((self.run_dir(s, "stage1") / "result.json").read_text()).get("cpu_s", 0.0)
            for s in self.seeds if (self.run_dir(s, "stage1") / "result.json").is_file())
        _write_json(self.out / "results.json", results)
        _write_text(self.out / "report.md", markdown(results))
        return results


def build_results(runs: List[Dict[str, Any]], budget: Budget, seeds: Sequence[int], rows: Sequence[str],
                  splits: Sequence[str], teacher: Dict[str, Any], wall: Optional[float], sots: Optional[str] = None,
                  partial: bool = False) -> Dict[str, Any]:
    """Aggregate runs: per row and split, mean/std/min/max of each metric; orderings checked."""
    results: Dict[str, Any] = {"runs": runs}
    table: Dict[str, Dict[str, Any]] = {}
    for run_name in rows:
        for row in RESULT_ROWS[run_name]:
            entry: Dict[str, Any] = {"title": RESULT_TITLES[row]}
            for split in splits:
                vals = {m: [((r["rows"].get(row) or {}).get(split) or {}).get(m) for r in runs if row in r["rows"]]
                        for m in METRICS}
                vals = {m: [v for v in vs if v is not None] for m, vs in vals.items()}
                if any(vals.values()):
                    entry[split] = {m: summarise(vs) for m, vs in vals.items()}
                    entry[split]["seeds"] = sorted(int(r["seed"]) for r in runs
                                                   if ((r["rows"].get(row) or {}).get(split)))
            effects = [r["depth_effect"] for r in runs if r.get("run") == run_name and r.get("depth_effect") is not None]
            if effects and row == run_name:
                entry["depth_effect"] = summarise(effects)
            table[row] = entry
    checks: List[Dict[str, Any]] = []
    for split in splits:
        values = per_seed(results, split)
        for kind, claims in (("paper", PAPER_ORDERINGS), ("toolkit", TOOLKIT_CHECKS)):
            for o in claims:
                if o.higher not in table or o.lower not in table:
                    continue
                c = check_ordering(values.get(o.higher, {}), values.get(o.lower, {}))
                checks.append({"kind": kind, "split": split, **asdict(o), **c,
                               "sentence": ordering_sentence(o, c, split)})
    int8 = []
    values = per_seed(results, "procedural")
    if "onnx-int8" in values and "onnx-fp32" in values:
        c = check_ordering(values["onnx-fp32"], values["onnx-int8"])
        if c["n"]:
            ok = c["diff_mean"] <= INT8_MAX_DROP_DB
            int8.append({**c, "drop_db": c["diff_mean"], "ok": ok,
                         "sentence": f"INT8 (PTQ) vs FP32 ONNX: PSNR drop {c['diff_mean']:.3f} dB "
                                     f"(std {c['diff_std']:.3f}, {c['n']} seeds) on procedural: "
                                     + ("within" if ok else "**over**") + f" the {INT8_MAX_DROP_DB} dB export gate."})
    cpu = sum(r.get("cpu_s", 0.0) for r in runs)
    done = {(int(r["seed"]), r["run"]) for r in runs}
    missing = [f"seed {s} {n}" for s in seeds for n in rows if (s, n) not in done]
    results.update({
        "table": table, "orderings": checks, "int8": int8, "budget": asdict(budget), "seeds": list(seeds),
        "rows": list(rows), "splits": list(splits), "sots": sots, "teacher": teacher, "wall_s": wall,
        "runs_cpu_s": cpu, "runs_wall_s": sum(r.get("wall_s", 0.0) for r in runs),
        "partial": partial or bool(missing), "missing_runs": missing,
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count()},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    return results


def _fmt(s: Optional[Dict[str, Any]], digits: int) -> str:
    if not s or s.get("mean") is None:
        return "-"
    if s["n"] == 1:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f} [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"


def markdown(r: Dict[str, Any]) -> str:
    """The report: tables per split, the orderings in words, the budget and the time."""
    b = r["budget"]
    lines = [f"# Ablations in miniature{' (partial: run in progress or stopped)' if r.get('partial') else ''}", "",
             f"Seeds: {', '.join(map(str, r['seeds']))}. Budget per row and seed: stage 1 {b['steps']} steps, then "
             f"{b['steps']} more steps (fused stage 2, or RGB-only continued for the `rgb` row); student distillation "
             f"{b['steps']} steps. Backbone `{b['backbone']}`, batch {b['batch']}, crop {b['crop']}, "
             f"{b['n_train']} procedural training scenes of {b['size'][1]}x{b['size'][0]} (exact depth), "
             f"{b['n_test']} test scenes. Every model is its last checkpoint (no selection on test data). "
             "Cells: mean ± std [min, max] over seeds.", ""]
    tq = (r.get("teacher") or {}).get("quality_test") or {}
    if tq:
        lines += [f"Depth teacher: Depth Anything V2 architecture (`tiny`), pre-trained {r['teacher'].get('steps')} steps "
                  f"on exact procedural depth; on the test scenes Pearson {tq['hazy']['pearson']:.3f} (hazy input), "
                  f"{tq['clear']['pearson']:.3f} (clear), AbsRel {tq['hazy']['abs_rel']:.3f} (hazy).", ""]
    for split in r["splits"]:
        label = {"procedural": "Procedural test split", "sots": f"SOTS-indoor (30 real pairs, {r.get('sots')})"}[split]
        effect_col = split == "procedural"
        lines += [f"## {label}", "", "| row | table | seeds | PSNR | SSIM | PSNR-Y |" + (" depth effect |" if effect_col else ""),
                  "|---|---|---:|---|---|---|" + ("---|" if effect_col else "")]
        hazy = None
        for row, entry in r["table"].items():
            cell = entry.get(split)
            if not cell:
                continue
            table = next((x.table for x in ROWS.values() if row in RESULT_ROWS[x.name]), "")
            lines.append(f"| `{row}` {entry['title']} | {table} | {len(cell.get('seeds', []))} | "
                         f"{_fmt(cell.get('psnr'), 2)} | {_fmt(cell.get('ssim'), 4)} | {_fmt(cell.get('psnr_y'), 2)} |"
                         + (f" {_fmt(entry.get('depth_effect'), 3)} |" if effect_col else ""))
        for run in r["runs"]:
            for metrics in run["rows"].values():
                hazy = hazy or (metrics.get(split) or {}).get("psnr_hazy")
        if hazy is not None:
            lines += ["", f"Hazy input (no model): PSNR {hazy:.2f} dB."]
        if effect_col:
            lines += ["", "Depth effect: mean absolute change of the output (8-bit grey levels) on these test "
                      "images when the model's depth features are replaced by zeros; near 0 = the depth branch is "
                      "(still) shut and the row differs from RGB-only only through its backbone fine-tuning."]
        lines.append("")
    if r.get("missing_runs"):
        lines += ["Runs not finished (their rows have fewer seeds or are absent): "
                  + ", ".join(r["missing_runs"]) + ".", ""]
    lines += ["## The paper's orderings, checked against these numbers (PSNR, paired by seed)", ""]
    for c in r["orderings"]:
        if c["kind"] == "paper":
            lines.append(f"- {c['sentence']}")
    lines += ["", "Toolkit checks (not claims of the paper):", ""]
    for c in r["orderings"]:
        if c["kind"] == "toolkit":
            lines.append(f"- {c['sentence']}")
    for c in r.get("int8", []):
        lines.append(f"- {c['sentence']}")
    paper = [c for c in r["orderings"] if c["kind"] == "paper"]
    counts = {s: sum(c["status"] == s for c in paper) for s in ("reproduced", "within noise", "not reproduced", "missing")}
    lines += ["", "Summary: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v) + f" (of {len(paper)} checks).",
              "", "## Time", "",
              (f"Wall time of this invocation: {r['wall_s'] / 60:.1f} min; " if r.get("wall_s") is not None
               else "Report rebuilt from the finished runs (--report-only); ")
              + f"wall time of the row runs: "
              f"{r.get('runs_wall_s', 0) / 60:.1f} min; CPU time of the row runs: "
              f"{r['runs_cpu_s'] / 60:.1f} min, of stage 1: {r.get('stage1_cpu_s', 0) / 60:.1f} min "
              f"(threads {b['threads']}, {r['machine']['cpus']} CPUs visible). Finished {r['finished']}.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- CLI
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/reproduce", help="output folder (resumable; default runs/reproduce)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default 0 1 2; --quick: 0)")
    p.add_argument("--steps", type=int, default=None, help=f"steps per stage (default {DEFAULT.steps})")
    p.add_argument("--stage2-lr", type=float, default=None,
                   help=f"learning rate of the extra steps after stage 1, the same for every row (default {DEFAULT.lr_stage2})")
    p.add_argument("--sots", default=None, help="SOTS-indoor folder (hazy/, gt/) for real test pairs; "
                                                "default $EDGEHAZE_SHARED/data/sots_indoor if set")
    p.add_argument("--only", nargs="+", default=None, metavar="ROW",
                   help=f"rows to run (dependencies added): {', '.join(ROWS)}")
    p.add_argument("--quick", action="store_true", help="tiny version: 1 seed, few steps, rows rgb + full")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared 2-core machine a second thread mostly spins)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild report.md/results.json from the finished runs in --out (train nothing)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        budget = QUICK if args.quick else DEFAULT
        if args.steps is not None:
            if args.steps < 1:
                raise ConfigError(f"--steps must be >= 1, got {args.steps}")
            budget = replace(budget, steps=args.steps)
        if args.stage2_lr is not None:
            if not args.stage2_lr > 0:
                raise ConfigError(f"--stage2-lr must be > 0, got {args.stage2_lr}")
            budget = replace(budget, lr_stage2=args.stage2_lr)
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        budget = replace(budget, threads=args.threads)
        seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
        rows = select_rows(args.only, args.quick)
        repro = Reproduction(args.out, budget, seeds, rows, shared_dir(args.sots), progress=not args.no_progress)
        results = repro.report_only() if args.report_only else repro.run()
    except EdgehazeError as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print(markdown(results))
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
