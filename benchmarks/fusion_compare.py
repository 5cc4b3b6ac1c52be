"""The paper's backbones and its competitors at an equal budget on real images (issue 20, item 4).

    python benchmarks/fusion_compare.py --out runs/fusion_compare [--data $EDGEHAZE_SHARED/data] [--synth data/real]
        [--backbones edge-s,coa] [--cost-only all] [--seeds 0 1 2] [--rows control full input-channel selfpromer]
        [--stage1-steps N] [--stage2-steps N] [--crop N] [--batch N] [--teacher FOLDER] [--threads 1]
        [--speed] [--report-only] [--quick]

Why: the paper says its gated fusion is plug-and-play across backbones and
beats the other ways of using depth (its Tables 1-2: SelfPromer, PromptHaze),
and UDPNet says depth as a fourth input channel is enough. This asks the
same question on this machine, with the same budget for every way of using
depth on a backbone, so a user can see whether the gated fusion is worth its
cost against the simpler ways.

Per trained backbone and seed (the protocol of ``benchmarks/depth_gain.py``,
issue 16):

* ``stage1``: the RGB-only backbone, ``--stage1-steps`` steps (shared start);
* ``control``: stage 1 continued without depth for stage 2's steps and
  schedule (``edgehaze train``'s control stage): the RGB model at the rows'
  total budget;
* ``full`` (the paper's gated fusion), ``lite`` (its conv-only variant, on
  request), ``input-channel`` (UDPNet: the depth map as a zero-initialised
  4th input channel), ``selfpromer`` (SelfPromer's depth-consistency prompt):
  stage 2 from stage 1 with the real-scene depth teacher
  (:mod:`edgehaze.depth_teacher`, loaded as ``depth=tiny``), same steps,
  learning rate and schedule as the control.

Data: training on ``--synth``'s ``train/`` split (``edgehaze synth --rgbd
sots_indoor_train --rgbd frida2 --variants 4 --keep-pairs``), validation on
its ``val/`` split (logged, never used to pick), scores on the SOTS-indoor
test pairs through :mod:`edgehaze.quality`, with the hazy input and the
dark-channel prior on the same images in the same run. Every model is its
**last** checkpoint. Learning rates are each backbone's official one
(:data:`RECIPES`), stage 2 at half of it. Parameters and FLOPs of every row
come from :mod:`edgehaze.models.cost_table` (the teacher used here; the
depth passes counted apart); the backbones not trained (``--cost-only``)
are listed with their cost only.

``--speed`` trains nothing: it times a few optimiser steps of every
(backbone, row) at the budget's crop and batch and prints the estimated
CPU time of the whole comparison.

Outputs in ``--out``: ``report.md``, ``results.json``, ``plan.json``,
``teacher/``, ``baselines.json``, ``costs.json``, and ``BACKBONE/seedS/ROW/``
per run (``result.json``, ``run.log``, the training run). A finished run is
not redone, an interrupted one resumes from its last state, and a folder is
only resumed with the same budget.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a script: make the repo importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.reproduce import _last, _logged, _write_json, _write_text, check_ordering, summarise  # noqa: E402
from edgehaze.errors import ConfigError, EdgehazeError  # noqa: E402

TEST_SET = "sots-indoor"
METRICS = ("psnr", "ssim", "halo")


@dataclass(frozen=True)
class Recipe:
    """How a backbone trains here: its build options and its official learning rate."""

    kwargs: Dict[str, Any] = field(default_factory=dict)
    lr: float = 2e-4


#: official learning rates (the paper: "set according to each baseline"); edge-s: configs/real_edge-s.yaml
RECIPES: Dict[str, Recipe] = {
    "edge-s": Recipe({"scale": 8, "apply": "guided", "context": True}, 2e-3),
    "edge-xs": Recipe({}, 2e-3),
    "coa": Recipe({}, 1e-4),  # YanZhang-zy/CoA option/*.py start_lr
    "coa-r": Recipe({}, 1e-4),
    "dehazeformer-t": Recipe({}, 4e-4),  # IDKiro/DehazeFormer configs
    "dehazeformer-s": Recipe({}, 2e-4),
    "dehazeformer-b": Recipe({}, 2e-4),
    "dehazeformer-m": Recipe({}, 2e-4),
    "oknet": Recipe({}, 2e-4),  # c-yn/OKNet Dehazing/ITS/main.py
    "mb-taylorformer-b": Recipe({}, 2e-4),  # MB-TaylorFormer-B.yml
    "mb-taylorformer-l": Recipe({}, 2e-4),
    "sgdn": Recipe({}, 4e-4),  # options/train/SGDN/train_SGDN.yml
}


@dataclass(frozen=True)
class Row:
    name: str
    title: str
    fusion: Optional[str]  # None: the RGB-only control


ROWS: Dict[str, Row] = {r.name: r for r in [
    Row("control", "RGB-only control (stage 1 continued, equal budget)", None),
    Row("full", "gated fusion (the paper's)", "full"),
    Row("lite", "gated fusion, conv-only variant", "lite"),
    Row("input-channel", "depth as a 4th input channel (UDPNet)", "input-channel"),
    Row("selfpromer", "SelfPromer depth-consistency prompt", "selfpromer"),
]}
DEFAULT_ROWS = ("control", "full", "input-channel", "selfpromer")

#: the paper's Table 2 (a synthetic test set) PSNR: baseline, +SelfPromer, +PromptHaze, +Ours
PAPER_TABLE2: Dict[str, Tuple[float, float, float, float]] = {
    "mb-taylorformer-b": (37.74, 38.48, 38.94, 39.33),
    "dehazeformer-m": (38.14, 39.33, 39.71, 40.10),
    "oknet": (37.54, 38.29, 38.22, 38.70),
    "coa": (35.85, 36.39, 36.91, 37.77),
    "sgdn": (38.97, 39.49, 39.34, 39.99),
}


@dataclass(frozen=True)
class Budget:
    """Everything that sets the recipe and the run time; identical for every row of a backbone."""

    backbones: Tuple[str, ...] = ("edge-s", "coa")
    crop: int = 128
    batch: int = 4
    stage1_steps: int = 1500
    stage2_steps: int = 500
    val_limit: int = 24
    log_every: int = 25
    teacher_steps: int = 1500
    teacher_batch: int = 8
    teacher_input: int = 98
    cost_size: Tuple[int, int] = (256, 256)
    threads: int = 1


DEFAULT = Budget()
QUICK = Budget(backbones=("edge-xs", "coa-r"), crop=32, batch=2, stage1_steps=2, stage2_steps=2, val_limit=1,
               log_every=1, teacher_steps=2, teacher_batch=2, teacher_input=28, cost_size=(32, 32))


def recipe_of(backbone: str) -> Recipe:
    if backbone not in RECIPES:
        raise ConfigError(f"--backbones {backbone}: no training recipe here (known: {', '.join(sorted(RECIPES))}); "
                          "list it under --cost-only instead")
    return RECIPES[backbone]


class Comparison:
    """One output folder: teacher, baselines and costs once, then backbones x seeds x rows of runs."""

    def __init__(self, out: "str | Path", budget: Budget, seeds: Sequence[int], rows: Sequence[str],
                 data_dir: "str | Path", synth: "str | Path", teacher: Optional[str] = None,
                 cost_only: Sequence[str] = (), progress: bool = True) -> None:
        self.out = Path(out).resolve()
        self.budget = budget
        self.seeds = [int(s) for s in seeds]
        self.rows = list(rows)
        self.data_dir = Path(data_dir).resolve()
        self.synth = Path(synth).resolve()
        self.given_teacher = Path(teacher).resolve() if teacher else None
        self.cost_only = [b for b in cost_only if b not in budget.backbones]
        self.progress = progress
        for b in budget.backbones:
            recipe_of(b)

    # -- paths
    @property
    def teacher(self) -> Path:
        return self.given_teacher or self.out / "teacher" / "depth-anything-tiny"

    def run_dir(self, backbone: str, seed: int, name: str) -> Path:
        return self.out / backbone / f"seed{seed}" / name

    def ckpt(self, backbone: str, seed: int, name: str) -> Path:
        stage = "rgb" if name == "stage1" else ("control" if ROWS[name].fusion is None else "fused")
        return self.run_dir(backbone, seed, name) / stage / "last.safetensors"

    # -- checks and shared preparation
    def check_plan(self) -> None:
        """A folder is resumed with the same budget only (threads change speed, not numbers).

        Backbones may be added to a finished comparison (its runs are kept and
        the new backbones train at the same budget); dropping one needs another
        ``--out``.
        """
        plan = json.loads(json.dumps({"budget": {k: v for k, v in asdict(self.budget).items() if k != "threads"}}))
        path = self.out / "plan.json"
        if path.is_file():
            old = json.loads(path.read_text(encoding="utf-8")).get("budget", {})
            same = {k: v for k, v in old.items() if k != "backbones"} == {k: v for k, v in plan["budget"].items() if k != "backbones"}
            if not same or not set(old.get("backbones", [])) <= set(plan["budget"]["backbones"]):
                raise ConfigError(f"{self.out} holds a comparison with another budget ({path}); "
                                  "pick another --out (or delete it) to change steps, crop or batch, or to drop a backbone")
            if old.get("backbones") == plan["budget"]["backbones"]:
                return
        _write_json(path, plan)

    def test_set(self) -> Any:
        from edgehaze.quality import benchmark_sets

        sets = [s for s in benchmark_sets(self.data_dir, [TEST_SET]) if s.has_gt]
        if not sets:
            raise ConfigError(f"--data {self.data_dir}: no sots_indoor/ test pairs to score")
        return sets[0]

    def check_synth(self) -> None:
        for split in ("train", "val"):
            if not (self.synth / split / "hazy").is_dir():
                raise ConfigError(f"--synth {self.synth}: no {split}/hazy/ (run `edgehaze synth --rgbd ... "
                                  "--keep-pairs --out DIR`, which writes train/ val/ test/)")

    def prepare_baselines(self) -> Dict[str, Any]:
        """The hazy input and the dark-channel prior on the test images (deterministic: once per folder)."""
        from edgehaze.quality import baseline_methods, score_set

        path = self.out / "baselines.json"
        if not path.is_file():
            scores, _ = score_set(baseline_methods(), self.test_set(),
                                  progress=False)
            _write_json(path, {m: {**sc.metrics, "ms": sc.ms, "images": sc.count} for m, sc in scores.items()})
        return json.loads(path.read_text(encoding="utf-8"))

    def prepare_teacher(self) -> Dict[str, Any]:
        """Train the real-scene depth teacher once (or take ``--teacher``); its AbsRel/delta1 on the scenes."""
        from edgehaze.depth_teacher import EVAL_PARTS, evaluate, real_depth_scenes, train_real_teacher
        from edgehaze.models.dehazer import build_depth

        qpath = self.out / "teacher" / "quality.json"
        if qpath.is_file() and (self.teacher / "config.json").is_file():
            return json.loads(qpath.read_text(encoding="utf-8"))
        b = self.budget
        meta = self.synth / "synth.json"
        val_every = int(json.loads(meta.read_text()).get("val_every", 7)) if meta.is_file() else None
        with _logged(self.out / "teacher" / "run.log"):
            if self.given_teacher is not None:
                scenes = real_depth_scenes(self.data_dir, val_every=val_every)
                net = build_depth("tiny", weights=str(self.teacher), input_size=b.teacher_input)
                info: Dict[str, Any] = {"given": str(self.teacher),
                                        "trained": {k: evaluate(net, scenes[k]) for k in EVAL_PARTS}}
            else:
                info = train_real_teacher(self.data_dir, self.teacher, steps=b.teacher_steps,
                                          batch_size=b.teacher_batch, input_size=b.teacher_input, seed=0,
                                          log_every=max(1, b.teacher_steps // 10), val_every=val_every)
        info["losses"] = [list(x) for x in info.get("losses", [])]
        _write_json(qpath, info)
        return info

    def prepare_costs(self) -> Dict[str, Any]:
        """Params/FLOPs of every backbone and what each row's fusion adds (the teacher used here);
        each backbone counted once per folder."""
        from edgehaze.models.cost_table import cost_rows

        path = self.out / "costs.json"
        table = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        have = {r["backbone"] for r in table["rows"]} if table else set()
        missing = [b for b in [*self.budget.backbones, *self.cost_only] if b not in have]
        if missing:
            modes = [r.fusion for r in ROWS.values() if r.fusion]
            new = cost_rows(missing, modes, self.budget.cost_size, depth="tiny",
                            depth_kwargs={"input_size": self.budget.teacher_input})
            if table is not None:
                new["rows"] = table["rows"] + new["rows"]
            _write_json(path, new)
            table = new
        return table  # type: ignore[return-value]

    # -- configs and runs
    def train_cfg(self, backbone: str, seed: int, name: str) -> Any:
        """The ``edgehaze train`` config of ``stage1`` or a row (validation on ``val``, never the test set)."""
        from edgehaze.train.config import TrainConfig, from_dict

        b, recipe = self.budget, recipe_of(backbone)
        row = ROWS.get(name)
        model: Dict[str, Any] = {"backbone": backbone, "backbone_kwargs": dict(recipe.kwargs), "depth": None}
        if row is not None and row.fusion:
            model.update(depth="tiny", depth_weights=str(self.teacher), fusion=row.fusion,
                         depth_kwargs={"input_size": b.teacher_input})
        steps = b.stage1_steps if name == "stage1" else b.stage2_steps
        cfg: Dict[str, Any] = {
            "name": name, "out_dir": str(self.run_dir(backbone, seed, name)), "seed": seed, "model": model,
            "data": {"root": str(self.synth), "layout": "dehazeformer", "train_split": "train", "val_split": "val",
                     "val_limit": b.val_limit, "crop": b.crop, "flip": True, "workers": 0, "cache_images": True},
            "train": {"lr": recipe.lr, "weight_decay": 0.0, "batch_size": b.batch, "grad_clip": 1.0, "amp": "off",
                      "val_every": max(1, steps // 2), "log_every": b.log_every, "threads": b.threads,
                      "device": "cpu", "progress": False, "depth_scale": "full_image",
                      "depth_cache": bool(row is not None and row.fusion)},  # the frozen teacher once per image
            "loss": {"l1": 1.0},
        }
        if row is None:
            cfg.update(stages=["rgb"], rgb={"steps": steps, "scheduler": "cosine", "eta_min": recipe.lr / 100})
        else:
            stage1 = self.ckpt(backbone, seed, "stage1")
            cfg.update(stages=["control" if row.fusion is None else "fused"],
                       fused={"steps": steps, "lr": recipe.lr / 2, "scheduler": "cosine_restarts",
                              "restart_every": max(1, steps // 2), "eta_min": recipe.lr / 100, "finetune": "all",
                              "init": str(stage1)})
        where = f"fusion_compare ({backbone}, {name}, seed {seed})"
        result = from_dict(TrainConfig, cfg, where)
        result.validate(where)
        return result

    def _train(self, backbone: str, seed: int, name: str) -> Dict[str, Any]:
        from edgehaze.train.config import to_dict
        from edgehaze.train.teacher import find_resumable, run_training

        cfg = self.train_cfg(backbone, seed, name)
        run_training(cfg, resume=find_resumable(cfg.run_dir()))
        _last(self.ckpt(backbone, seed, name).parent)
        return to_dict(cfg)

    def do_run(self, backbone: str, seed: int, name: str) -> Dict[str, Any]:
        """Train stage 1 or one row for one seed and score it; cached in ``result.json``."""
        folder = self.run_dir(backbone, seed, name)
        done = folder / "result.json"
        if done.is_file():
            return json.loads(done.read_text(encoding="utf-8"))
        t0, c0 = time.perf_counter(), time.process_time()
        extra: Dict[str, Any] = {}
        with _logged(folder / "run.log"):
            config = self._train(backbone, seed, name)
            if name != "stage1":
                extra["scores"] = self.score(self.ckpt(backbone, seed, name), name)
            if name in ROWS and ROWS[name].fusion:
                extra["depth_effect"] = self.depth_effect(self.ckpt(backbone, seed, name))
        result = {"backbone": backbone, "seed": seed, "run": name, "wall_s": time.perf_counter() - t0,
                  "cpu_s": time.process_time() - c0, "config": config, **extra}
        _write_json(done, result)
        return result

    def score(self, ckpt: Path, name: str) -> Dict[str, float]:
        """PSNR, SSIM, halo and ms per image on the test pairs (:mod:`edgehaze.quality`)."""
        from edgehaze.data.runners import make_runner
        from edgehaze.quality import score_set

        scores, _ = score_set({name: make_runner(ckpt, threads=self.budget.threads)}, self.test_set(), progress=False)
        return {**scores[name].metrics, "ms": scores[name].ms, "images": scores[name].count}

    def depth_effect(self, ckpt: Path) -> float:
        """Mean |output - output with the depth input zeroed| on the test images, in grey levels.

        Near 0: the depth path is still (nearly) shut, and the row's
        difference from the control comes from fine-tuning, not from depth."""
        import torch

        from edgehaze.checkpoint import load_dehazer
        from edgehaze.imageio import read_image, to_tensor

        model, _ = load_dehazer(ckpt)
        model.eval()
        total = []
        with torch.no_grad():
            for hazy in self.test_set().hazy:
                x = to_tensor(read_image(hazy))
                feats = model.depth_features(x)
                y = model(x, depth_feats=feats).clamp(0, 1)
                y0 = model(x, depth_feats=[torch.zeros_like(f) for f in feats]).clamp(0, 1)
                total.append(float((y - y0).abs().mean()) * 255.0)
        return sum(total) / max(1, len(total))

    # -- everything
    def units(self) -> List[Tuple[str, int, str]]:
        """(backbone, seed, run) in order: stage 1 before the rows that start from it."""
        return [(b, s, n) for b in self.budget.backbones for s in self.seeds for n in ("stage1", *self.rows)]

    def run(self) -> Dict[str, Any]:
        import torch

        torch.set_num_threads(self.budget.threads)
        self.out.mkdir(parents=True, exist_ok=True)
        self.check_plan()
        self.check_synth()
        t_start = time.perf_counter()
        shared: List[Tuple[str, Callable[[], Any]]] = [
            ("baselines", self.prepare_baselines), ("teacher", self.prepare_teacher), ("costs", self.prepare_costs)]
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(shared) + len(self.units()), desc="fusion_compare", unit="run", dynamic_ncols=True,
                       file=sys.stderr)
        runs: List[Dict[str, Any]] = []
        try:
            for label, fn in shared:
                if bar is not None:
                    bar.set_postfix_str(label)
                fn()
                if bar is not None:
                    bar.update(1)
            for backbone, seed, name in self.units():
                if bar is not None:
                    bar.set_postfix_str(f"{backbone} seed {seed} {name}")
                runs.append(self.do_run(backbone, seed, name))
                if bar is not None:
                    bar.update(1)
                self.write_report(runs, time.perf_counter() - t_start, partial=True)
        finally:
            if bar is not None:
                bar.close()
        return self.write_report(runs, time.perf_counter() - t_start, partial=False)

    def report_only(self) -> Dict[str, Any]:
        """The report from the runs finished so far (e.g. while a long run is still going)."""
        if not (self.out / "plan.json").is_file():
            raise EdgehazeError(f"{self.out}: no comparison here (no plan.json); run it first")
        self.check_plan()
        runs = [json.loads(p.read_text(encoding="utf-8")) for b, s, n in self.units()
                if (p := self.run_dir(b, s, n) / "result.json").is_file()]
        return self.write_report(runs, None, partial=len(runs) < len(self.units()))

    def write_report(self, runs: List[Dict[str, Any]], wall: Optional[float], partial: bool) -> Dict[str, Any]:
        def read(name: str) -> Dict[str, Any]:
            path = self.out / name
            return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

        results = build_results(runs, self.budget, self.seeds, self.rows, read("baselines.json"),
                                read("teacher/quality.json"), read("costs.json"), self.cost_only, wall, partial)
        results.update(data_dir=str(self.data_dir), synth=str(self.synth), teacher_weights=str(self.teacher))
        _write_json(self.out / "results.json", results)
        _write_text(self.out / "report.md", markdown(results))
        return results


# ---------------------------------------------------------------- results
def _cost_of(costs: Dict[str, Any], backbone: str, fusion: Optional[str]) -> Dict[str, Any]:
    """Params and FLOPs of a row's model (backbone + what its fusion adds; depth passes apart)."""
    row = next((r for r in costs.get("rows", []) if r["backbone"] == backbone), None)
    if row is None:
        return {}
    add = row["modes"].get(fusion, {}) if fusion else {}
    return {"params": row["params"] + add.get("params", 0), "flops": row["flops"] + add.get("flops", 0),
            "depth_flops": (costs.get("depth_passes", {}).get(fusion) or {}).get("flops") if fusion else 0}


def build_results(runs: List[Dict[str, Any]], budget: Budget, seeds: Sequence[int], rows: Sequence[str],
                  baselines: Dict[str, Any], teacher: Dict[str, Any], costs: Dict[str, Any],
                  cost_only: Sequence[str], wall: Optional[float], partial: bool) -> Dict[str, Any]:
    """Per backbone and row: metrics over seeds, the paired gain over the control, cost, time."""
    table: Dict[str, Dict[str, Any]] = {}
    for backbone in budget.backbones:
        per_row: Dict[str, Any] = {}
        for name in rows:
            done = [r for r in runs if r["backbone"] == backbone and r["run"] == name and "scores" in r]
            cell: Dict[str, Any] = {m: summarise([r["scores"].get(m) for r in done]) for m in METRICS}
            cell["psnr_by_seed"] = {int(r["seed"]): r["scores"].get("psnr") for r in done}
            cell["depth_effect"] = summarise([r.get("depth_effect") for r in done if "depth_effect" in r])
            cell["cpu_s"] = sum(r.get("cpu_s", 0.0) for r in done)
            cell["cost"] = _cost_of(costs, backbone, ROWS[name].fusion)
            per_row[name] = cell
        for name, cell in per_row.items():
            if name != "control" and "control" in per_row:
                cell["vs_control"] = check_ordering(cell["psnr_by_seed"], per_row["control"]["psnr_by_seed"])
        stage1 = [r for r in runs if r["backbone"] == backbone and r["run"] == "stage1"]
        table[backbone] = {"rows": per_row, "stage1_cpu_s": sum(r.get("cpu_s", 0.0) for r in stage1),
                           "recipe": asdict(recipe_of(backbone))}
    return {"budget": asdict(budget), "seeds": list(seeds), "rows": list(rows), "test_set": TEST_SET,
            "baselines": baselines, "teacher": {k: v for k, v in teacher.items() if k != "losses"},
            "table": table, "cost_only": [r for r in costs.get("rows", []) if r["backbone"] in cost_only],
            "depth_passes": costs.get("depth_passes", {}), "cost_size": list(budget.cost_size),
            "runs": runs, "wall_s": wall, "partial": partial}


# ---------------------------------------------------------------- report
def _ms(s: Dict[str, Any], digits: int) -> str:
    """``mean ± std [min, max]`` over seeds."""
    if not s or not s.get("n"):
        return "-"
    if s["n"] == 1:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f} [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"


#: check_ordering's verdicts, said of a depth row against the control
VERDICTS = {"reproduced": "better", "within noise": "within noise", "not reproduced": "not better"}


def _gain(check: Optional[Dict[str, Any]]) -> Tuple[str, str]:
    """``+0.12 ± 0.05 (3/3 seeds > 0)`` and the verdict (better: the mean gain is at least
    benchmarks/reproduce.py's TIE_DB and above its spread over seeds, every seed agreeing)."""
    if not check or check.get("status") == "missing":
        return "-", ""
    spread = f" ± {check['diff_std']:.2f}" if check["n"] > 1 else ""
    return f"{check['diff_mean']:+.2f}{spread} ({check['wins']}/{check['n']} seeds > 0)", VERDICTS[check["status"]]


def _protocol_lines(r: Dict[str, Any]) -> List[str]:
    b = r["budget"]
    t = r.get("teacher") or {}
    test = ((t.get("trained") or {}).get("test") or {})
    lines = [f"Protocol: per backbone and seed, stage 1 RGB-only for {b['stage1_steps']} steps (each backbone's "
             f"official learning rate, cosine), then every row {b['stage2_steps']} more steps from it at half that "
             f"rate (cosine with a restart half-way); crop {b['crop']}, batch {b['batch']}, L1 loss; training on "
             "the synthesised real-scene pairs, validation on their val split (logged only), the **last** "
             f"checkpoint scored on the {r['test_set']} test pairs, with the hazy input and the dark-channel "
             f"prior on the same images. Seeds: {', '.join(map(str, r['seeds']))}. Depth: the real-scene "
             f"stand-in teacher (Depth Anything architecture, `tiny`, input {b['teacher_input']}).",
             ""]
    if test:
        lines += [f"Teacher on the test scenes: AbsRel {test.get('abs_rel', float('nan')):.3f}, "
                  f"delta<1.25 {test.get('delta1', float('nan')):.3f}.", ""]
    base = r.get("baselines") or {}
    if base:
        lines.append("Same run, same images: " + "; ".join(
            f"{m} {v.get('psnr', float('nan')):.2f} dB / SSIM {v.get('ssim', float('nan')):.3f}"
            for m, v in base.items()) + ".")
        lines.append("")
    return lines


def _main_table(r: Dict[str, Any]) -> List[str]:
    h, w = r["cost_size"]
    lines = [f"| backbone | row | params | GFLOPs ({w}x{h}) | PSNR | SSIM | PSNR minus control (paired) | verdict "
             "| depth effect (grey levels) | CPU h |", "|---|---|---:|---:|---|---|---|---|---:|---:|"]
    for backbone, entry in r["table"].items():
        for name, cell in entry["rows"].items():
            cost = cell.get("cost") or {}
            params = f"{cost['params'] / 1e6:.3f} M" if cost else "-"
            flops = f"{cost['flops'] / 1e9:.2f}" if cost else "-"
            gain, verdict = _gain(cell.get("vs_control"))
            effect = _ms(cell.get("depth_effect") or {}, 2) if ROWS[name].fusion else ""
            lines.append(f"| {backbone} | {name} | {params} | {flops} | {_ms(cell['psnr'], 2)} | "
                         f"{_ms(cell['ssim'], 4)} | {gain} | {verdict} | {effect} | {cell['cpu_s'] / 3600:.2f} |")
    passes = r.get("depth_passes") or {}
    if passes:
        lines += ["", "Depth model passes per image (not in the GFLOPs above): " + "; ".join(
            f"{m} {v['flops'] / 1e9:.3g} G" for m, v in passes.items()) + "."]
    return lines


def _cost_only_lines(r: Dict[str, Any]) -> List[str]:
    from edgehaze.models.cost_table import cost_cell

    rows = r.get("cost_only") or []
    if not rows:
        return []
    modes = list(rows[0]["modes"])
    lines = ["", "## Not trained here (cost only)", "",
             "| backbone | params | GFLOPs | " + " | ".join(f"+ {m}" for m in modes) + " |",
             "|---|---:|---:|" + "---:|" * len(modes)]
    for row in rows:
        adds = [cost_cell(row["modes"][m]["params"], row["modes"][m]["flops"], "+") for m in modes]
        lines.append(f"| {row['backbone']} | {row['params'] / 1e6:.3f} M | {row['flops'] / 1e9:.2f} | "
                     + " | ".join(adds) + " |")
    return lines


def _paper_lines(r: Dict[str, Any]) -> List[str]:
    lines = ["", "## The paper, for reference", "",
             "Its Table 2 (a synthetic test set, full training): PSNR of the backbone and what each way of using "
             "depth adds. PromptHaze has no public code and is not built here.", "",
             "| backbone | paper baseline | +SelfPromer | +PromptHaze | +Ours |", "|---|---:|---:|---:|---:|"]
    for name, (base, sp, ph, ours) in PAPER_TABLE2.items():
        mark = " (trained here)" if name in r["table"] else ""
        lines.append(f"| {name}{mark} | {base:.2f} | {sp - base:+.2f} | {ph - base:+.2f} | {ours - base:+.2f} |")
    return lines


def markdown(r: Dict[str, Any]) -> str:
    title = "# Backbones and ways of using depth at an equal budget (issue 20, item 4)"
    lines = [title, ""]
    if r.get("partial"):
        lines += ["**Partial**: some runs are still missing; the numbers cover the finished ones.", ""]
    lines += _protocol_lines(r) + _main_table(r) + _cost_only_lines(r) + _paper_lines(r)
    if r.get("wall_s"):
        lines += ["", f"Wall time of this invocation: {r['wall_s'] / 3600:.2f} h."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- speed
def _step_seconds(backbone: str, fusion: Optional[str], budget: Budget, teacher: Optional[str],
                  steps: int = 3) -> float:
    """Median seconds of one optimiser step at the budget's crop and batch (depth features
    precomputed, as the training cache gives them; random weights: speed only)."""
    import statistics

    import torch

    from edgehaze.models.dehazer import build_dehazer

    recipe = recipe_of(backbone)
    depth_kwargs: Dict[str, Any] = {"input_size": budget.teacher_input}
    if teacher is None:
        depth_kwargs["random_init"] = True
    torch.manual_seed(0)
    model = build_dehazer(backbone, depth="tiny" if fusion else None, depth_weights=teacher if fusion else None,
                          fusion=fusion or "full", backbone_kwargs=dict(recipe.kwargs),
                          depth_kwargs=depth_kwargs if fusion else None).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=recipe.lr)
    x = torch.rand(budget.batch, 3, budget.crop, budget.crop)
    gt = torch.rand_like(x)
    feats = model.depth_features(x, reference=gt) if model.uses_reference_depth else model.depth_features(x)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = (model(x, depth_feats=feats) - gt).abs().mean() if fusion else (model(x) - gt).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return float(statistics.median(times))


def _eval_seconds(backbone: str, fusion: Optional[str], budget: Budget, size: Tuple[int, int]) -> float:
    """Seconds of one inference at ``size`` (a test image), depth included."""
    import torch

    from edgehaze.models.dehazer import build_dehazer

    model = build_dehazer(backbone, depth="tiny" if fusion else None, fusion=fusion or "full",
                          backbone_kwargs=dict(recipe_of(backbone).kwargs),
                          depth_kwargs={"input_size": budget.teacher_input, "random_init": True} if fusion else None)
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        model.eval()(x)
        t0 = time.perf_counter()
        model(x)
        return time.perf_counter() - t0


def estimate(budget: Budget, seeds: Sequence[int], rows: Sequence[str], test_images: int,
             test_size: Tuple[int, int], teacher: Optional[str] = None, log: Callable[[str], None] = print
             ) -> Dict[str, Any]:
    """Measured seconds per step / per test image of every (backbone, row), and the whole run's CPU hours
    (training, the two validations per run on ``val_limit`` images, scoring the test images twice for
    fused rows: scores and depth effect)."""
    out: Dict[str, Any] = {"backbones": {}, "total_h": 0.0}
    for backbone in budget.backbones:
        rgb = _step_seconds(backbone, None, budget, teacher)
        per_row = {"stage1": {"step_s": rgb, "eval_s": _eval_seconds(backbone, None, budget, test_size)}}
        for name in rows:
            fusion = ROWS[name].fusion
            step = rgb if fusion is None else _step_seconds(backbone, fusion, budget, teacher)
            ev = per_row["stage1"]["eval_s"] if fusion is None else _eval_seconds(backbone, fusion, budget, test_size)
            per_row[name] = {"step_s": step, "eval_s": ev}
        secs = budget.stage1_steps * rgb + 2 * budget.val_limit * per_row["stage1"]["eval_s"]
        for name in rows:
            passes = 2 if ROWS[name].fusion else 1
            secs += (budget.stage2_steps * per_row[name]["step_s"]
                     + (2 * budget.val_limit + passes * test_images) * per_row[name]["eval_s"])
        hours = secs * len(seeds) / 3600
        out["backbones"][backbone] = {"rows": per_row, "hours": hours}
        out["total_h"] += hours
        log(f"{backbone}: " + ", ".join(f"{n} {v['step_s']:.2f} s/step {v['eval_s']:.2f} s/img"
                                        for n, v in per_row.items()) + f" -> {hours:.1f} CPU h for {len(seeds)} seeds")
    log(f"total: {out['total_h']:.1f} CPU h (+ the depth teacher, {budget.teacher_steps} steps, once)")
    return out


# ---------------------------------------------------------------- command line
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    shared = os.environ.get("EDGEHAZE_SHARED")
    ap.add_argument("--out", required=True, help="output folder (resumed when it exists)")
    ap.add_argument("--data", default=str(Path(shared) / "data") if shared else None,
                    help="the shared data folder (sots_indoor/ test pairs, sots_indoor_train/ and frida2/ for the "
                         "teacher); default $EDGEHAZE_SHARED/data")
    ap.add_argument("--synth", default="data/real",
                    help="`edgehaze synth --rgbd ... --keep-pairs` output (train/ val/)")
    ap.add_argument("--backbones", default=None, help="comma-separated backbones to train (default edge-s,coa)")
    ap.add_argument("--cost-only", default="all", help="backbones listed with their cost only: 'all' (every other "
                                                       "registered backbone), 'none' or a comma-separated list")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS), choices=sorted(ROWS))
    ap.add_argument("--stage1-steps", type=int, default=None)
    ap.add_argument("--stage2-steps", type=int, default=None)
    ap.add_argument("--crop", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--teacher", default=None,
                    help="an already trained real-scene teacher folder (else trained here)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--speed", action="store_true",
                    help="time a few steps of every run and estimate the total; no training")
    ap.add_argument("--report-only", action="store_true", help="write report.md from the finished runs and stop")
    ap.add_argument("--quick", action="store_true", help="a tiny budget (smoke test)")
    return ap.parse_args(argv)


def budget_from_args(args: argparse.Namespace) -> Budget:
    base = QUICK if args.quick else DEFAULT
    changes: Dict[str, Any] = {}
    if args.backbones:
        changes["backbones"] = tuple(b.strip() for b in args.backbones.split(",") if b.strip())
    for key in ("stage1_steps", "stage2_steps", "crop", "batch", "threads"):
        value = getattr(args, key)
        if value is not None:
            if value < 1:
                raise ConfigError(f"--{key.replace('_', '-')} must be >= 1, got {value}")
            changes[key] = value
    budget = replace(base, **changes)
    for b in budget.backbones:
        recipe_of(b)
    if "control" not in args.rows:
        raise ConfigError("--rows: 'control' is needed (every depth row is judged against it)")
    return budget


def cost_only_list(spec: str, trained: Sequence[str]) -> List[str]:
    from edgehaze.models.cost_table import resolve_backbones

    if spec == "none":
        return []
    return [b for b in resolve_backbones(spec) if b not in trained]


def run_speed(comp: Comparison, teacher: Optional[str]) -> Dict[str, Any]:
    """``--speed``: the estimate for this comparison, at the test images' size, on the budget's threads."""
    import torch

    from edgehaze.imageio import read_image

    torch.set_num_threads(comp.budget.threads)
    test = comp.test_set()
    h, w = read_image(test.hazy[0]).shape[:2]
    return estimate(comp.budget, comp.seeds, comp.rows, len(test.hazy), (int(h), int(w)), teacher=teacher)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        budget = budget_from_args(args)
        if not args.data:
            raise ConfigError("--data: pass the shared data folder or set EDGEHAZE_SHARED")
        comp = Comparison(args.out, budget, args.seeds, args.rows, args.data, args.synth, teacher=args.teacher,
                          cost_only=cost_only_list(args.cost_only, budget.backbones), progress=not args.report_only)
        if args.speed:
            run_speed(comp, args.teacher)
            return 0
        results = comp.report_only() if args.report_only else comp.run()
    except EdgehazeError as exc:
        print(f"fusion_compare: error: {exc}", file=sys.stderr)
        return 2
    print(markdown(results))
    print(f"written: {comp.out / 'report.md'}, {comp.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
