"""``edgehaze demo``: the whole chain on one CPU, from nothing, in minutes.

On a fresh machine with no weights and no data:

1. ``data``     procedural RGB-D scenes with exact depth, hazed from that depth;
2. ``teacher``  a small Depth Anything V2-architecture network pre-trained on
   that exact depth (:mod:`edgehaze.demo_teacher`), saved as a Hugging Face
   folder and from then on loaded like DAv2-L
   (``build_dehazer(depth="tiny", depth_weights=FOLDER)``);
3. ``rgb``      stage 1: the RGB-only backbone (:mod:`edgehaze.train`);
4. ``fused``    stage 2: fused with the teacher, plus a control run that
   continues the RGB-only model for the same steps without depth, so the
   report can tell the depth's gain from the extra training;
5. ``distill``  a student depth encoder from the fused teacher (:mod:`edgehaze.distill`);
6. ``export``   the student to ONNX FP32 (with the two-graph export) and INT8
   (:mod:`edgehaze.export`);
7. ``stream``   a generated hazy video (a camera panning and zooming over a
   procedural scene, hazed with exact depth) through the torch-free runtime
   (``python runtime/stream.py`` in a subprocess);
8. ``report``   ``report.md`` + ``report.json``: quality, cost, CPU latency,
   stream FPS, the teacher's depth quality and the time of every stage.

Each stage is skipped when its outputs exist (and no earlier stage ran in
this invocation); ``--force`` redoes everything, ``--force STAGE`` that stage
and the ones after it. Each stage's output (progress bars included) is also
written to ``logs/STAGE.log``; a failing stage stops the demo with an error
naming the stage and that log.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from edgehaze.errors import ConfigError, EdgehazeError

#: the evaluation size of the latency/FLOPs columns (H, W): VGA, a typical edge camera
EVAL_SIZE = (480, 640)
ROW_ORDER = ("rgb", "fused", "student_fp32", "student_int8")
ROW_TITLES = {
    "rgb": "RGB-only (stage 1)",
    "fused": "fused teacher (stage 2)",
    "student_fp32": "student FP32",
    "student_int8": "student INT8",
    "control": "RGB-only, same extra steps (control)",
    "student_torch": "student (torch)",
}


# ---------------------------------------------------------------- sizes
@dataclass(frozen=True)
class DemoSizes:
    """Everything that sets the demo's run time (see ``FULL`` and ``QUICK``)."""

    n_train: int
    n_test: int
    size: Tuple[int, int]  # procedural scene (H, W)
    teacher_steps: int
    teacher_batch: int
    teacher_input: int  # teacher input side (multiple of 14)
    backbone: str
    crop: Optional[int]  # training crop side (None: whole scenes, what the teacher was trained on)
    batch: int
    rgb_steps: int
    fused_steps: int
    val_every: int
    distill_steps: int
    export_method: str  # ptq | qat
    qat_steps: int
    calib_images: int
    holdout_images: int
    calib_size: Tuple[int, int]
    video_frames: int
    video_size: Tuple[int, int]  # (H, W)
    latency_runs: int
    latency_warmup: int
    #: fusion variant: "lite" is the conv-only, INT8-friendly form of the paper's
    #: RDF block (same zero-conv equations and ASG blend). The paper's "full"
    #: block exports at any size too, but its window attention, LayerNorm and
    #: depth-wise convs run 4-10x below the INT8 conv rate on the target CPU.
    fusion: str = "lite"
    #: student encoder (student-s) widths/blocks: smaller than the demo's small teacher
    student_widths: Tuple[int, ...] = (8, 16, 32, 64)
    student_blocks: Tuple[int, ...] = (1, 1, 1, 1)


FULL = DemoSizes(
    n_train=128, n_test=16, size=(96, 128),
    teacher_steps=400, teacher_batch=8, teacher_input=98,
    backbone="edge-s", crop=None, batch=8, rgb_steps=400, fused_steps=300, val_every=100,
    distill_steps=300,
    export_method="ptq", qat_steps=0, calib_images=32, holdout_images=8, calib_size=(96, 128),
    video_frames=60, video_size=(240, 320),
    latency_runs=10, latency_warmup=3,
)

QUICK = DemoSizes(
    n_train=24, n_test=4, size=(64, 96),
    teacher_steps=60, teacher_batch=8, teacher_input=56,
    backbone="edge-xs", crop=None, batch=8, rgb_steps=40, fused_steps=40, val_every=20,
    distill_steps=20,
    export_method="ptq", qat_steps=0, calib_images=8, holdout_images=4, calib_size=(64, 96),
    video_frames=12, video_size=(96, 128),
    latency_runs=3, latency_warmup=1,
)


# ---------------------------------------------------------------- logging per stage
class _Tee:
    """A text stream that writes to the terminal stream and to a log file."""

    def __init__(self, stream: Any, log: Any) -> None:
        self._stream = stream
        self._log = log

    def write(self, text: str) -> int:
        self._log.write(text)
        return self._stream.write(text)

    def flush(self) -> None:
        self._log.flush()
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ...
        return getattr(self._stream, name)


@contextlib.contextmanager
def _tee_output(path: Path) -> Iterator[Any]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as log:
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(out, log), _Tee(err, log)
        try:
            yield log
        finally:
            sys.stdout, sys.stderr = out, err


# ---------------------------------------------------------------- the stages
@dataclass
class Stage:
    name: str
    title: str
    run: Callable[["Demo"], Dict[str, Any]]
    outputs: Callable[["Demo"], List[Path]]


def _final(stage_dir: Path) -> Path:
    """A stage's final weights (the report names them; ``best`` is chosen on the training hold-out)."""
    return stage_dir / "last.safetensors"


class Demo:
    """One demo run directory and the work done in it."""

    #: the stages this kind of demo runs (the real-data demo has its own, same names)
    stages: List["Stage"] = []

    def __init__(self, out: "str | Path", quick: bool = False, threads: int = 2, progress: bool = True,
                 sizes: Optional[Any] = None) -> None:
        self.out = Path(out).resolve()
        self.quick = quick
        self.sizes = sizes or self.default_sizes(quick)
        self.threads = int(threads)
        self.progress = progress
        self.state_path = self.out / "demo_state.json"
        self.state: Dict[str, Any] = self._load_state()

    @staticmethod
    def default_sizes(quick: bool) -> Any:
        return QUICK if quick else FULL

    def state_extra(self) -> Dict[str, Any]:
        """What else the state file records about this kind of demo (the real-data demo: its data folder)."""
        return {}

    @property
    def mode(self) -> str:
        """What the state file records: a demo in ``out`` is only resumed in the same mode."""
        return "quick" if self.quick else "full"

    # -- paths ------------------------------------------------------------
    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def teacher_weights(self) -> Path:
        return self.out / "teacher" / "depth-anything-tiny"

    @property
    def stage1_ckpt(self) -> Path:
        return _final(self.out / "stage1" / "rgb")

    @property
    def stage2_ckpt(self) -> Path:
        return _final(self.out / "stage2" / "fused")

    @property
    def control_ckpt(self) -> Path:
        return _final(self.out / "control" / "rgb")

    @property
    def student_ckpt(self) -> Path:
        return self.out / "distill" / "student.safetensors"

    @property
    def onnx_fp32(self) -> Path:
        return self.out / "export" / "student-fp32.onnx"

    @property
    def onnx_int8(self) -> Path:
        return self.out / "export" / "student-int8.onnx"

    # -- state ------------------------------------------------------------
    def _load_state(self) -> Dict[str, Any]:
        if self.state_path.is_file():
            try:
                return json.loads(self.state_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                pass
        return {"stages": {}}

    def save_state(self) -> None:
        from edgehaze.fsutil import atomic_write

        self.state["mode"] = self.mode
        self.state.update(self.state_extra())
        self.state["sizes"] = asdict(self.sizes)
        text = json.dumps(self.state, indent=2, default=str).encode()
        atomic_write(self.state_path, lambda tmp: Path(tmp).write_bytes(text))

    def result(self, stage: str) -> Dict[str, Any]:
        return (self.state["stages"].get(stage) or {}).get("result") or {}

    # -- configs ------------------------------------------------------------
    def train_config(self, stage: str) -> Any:
        """The :class:`edgehaze.train.config.TrainConfig` of stage ``rgb``, ``fused`` or ``control``."""
        from edgehaze.train.config import TrainConfig, from_dict

        return from_dict(TrainConfig, self.train_config_dict(stage), f"demo ({stage})")

    def train_config_dict(self, stage: str) -> Dict[str, Any]:
        """:meth:`train_config` as a plain dict (a subclass edits it before it is checked)."""
        s = self.sizes
        steps = {"rgb": s.rgb_steps, "fused": s.fused_steps, "control": s.fused_steps}[stage]
        # stage 2 and its control share the schedule: warm restarts over the same steps
        tail = {"steps": steps, "lr": 1.0e-3, "scheduler": "cosine_restarts",
                "restart_every": max(1, steps // 2), "eta_min": 1.0e-5}
        cfg: Dict[str, Any] = {
            "name": stage,
            "out_dir": str(self.out / {"rgb": "stage1", "fused": "stage2", "control": "control"}[stage]),
            "seed": 0,
            "model": {
                "backbone": s.backbone,
                "depth": "tiny",
                "depth_weights": str(self.teacher_weights),
                "depth_kwargs": {"input_size": s.teacher_input},
                "fusion": s.fusion,
            },
            "data": {"root": str(self.data), "layout": "dehazeformer", "train_split": "train", "val_split": "holdout",
                     "crop": s.crop, "flip": True, "workers": 0},
            "train": {"lr": 2.0e-3, "weight_decay": 0.0, "batch_size": s.batch, "grad_clip": 1.0, "amp": "off",
                      "val_every": s.val_every, "log_every": 10, "threads": self.threads, "device": "cpu",
                      "progress": self.progress},
            "loss": {"l1": 1.0},
        }
        if stage == "rgb":
            cfg.update(stages=["rgb"], rgb={"steps": steps, "scheduler": "cosine", "eta_min": 1.0e-5})
        elif stage == "fused":
            cfg.update(stages=["fused"], fused={**tail, "finetune": "all", "init": str(self.stage1_ckpt)})
        else:  # control: continue stage 1 without depth, same steps and schedule as stage 2
            cfg.update(stages=["rgb"], rgb={**tail, "init": str(self.stage1_ckpt)})
        return cfg

    def distill_config(self) -> Any:
        """The checked :class:`edgehaze.distill.distiller.DistillConfig` of the distill stage."""
        from edgehaze.distill.distiller import DistillConfig
        from edgehaze.train.config import from_dict

        result = from_dict(DistillConfig, self.distill_config_dict(), "demo (distill)")
        result.validate("demo (distill)")
        return result

    def distill_config_dict(self) -> Dict[str, Any]:
        """:meth:`distill_config` as a plain dict."""
        s = self.sizes
        cfg = {
            "name": "distill",
            "out_dir": str(self.out / "distill"),
            "teacher": {"checkpoint": str(self.stage2_ckpt), "stage1": str(self.stage1_ckpt)},
            "student": {"depth": "student-s",
                        "depth_kwargs": {"widths": list(s.student_widths), "blocks": list(s.student_blocks)}},
            "data": {"root": str(self.data), "layout": "dehazeformer", "train_split": "train", "val_split": "holdout",
                     "crop": None, "flip": False, "workers": 0},
            "train": {"batch_size": s.batch, "val_every": max(1, s.distill_steps // 2), "log_every": 10,
                      "device": "cpu", "threads": self.threads, "progress": self.progress},
            "distill": {"steps": s.distill_steps, "lr": 2.0e-3, "cache_teacher": "auto"},
            "report": {"eval_size": list(EVAL_SIZE), "latency_runs": 1},
        }
        return cfg


def _stage_data(demo: Demo) -> Dict[str, Any]:
    from edgehaze.fsutil import atomic_write
    from edgehaze.data.procedural import make_procedural_dataset

    s = demo.sizes
    if demo.data.exists():
        shutil.rmtree(demo.data)
    counts = make_procedural_dataset(demo.data, s.n_train, s.n_test, size=s.size, seed=0, progress=demo.progress)
    info = {"counts": counts, "size": list(s.size), "root": str(demo.data)}
    text = json.dumps(info, indent=2).encode()
    atomic_write(demo.data / "done.json", lambda tmp: Path(tmp).write_bytes(text))
    return info


def _stage_teacher(demo: Demo) -> Dict[str, Any]:
    import torch

    from edgehaze.fsutil import atomic_write
    from edgehaze.demo_teacher import depth_quality, load_depth_split, load_teacher, pretrain_teacher
    from edgehaze.models.dehazer import build_depth

    s = demo.sizes
    info = pretrain_teacher(demo.data, demo.teacher_weights, steps=s.teacher_steps, batch_size=s.teacher_batch,
                            input_size=s.teacher_input, progress=demo.progress)
    test = load_depth_split(demo.data, "test")
    trained = depth_quality(load_teacher(demo.teacher_weights, s.teacher_input), test)
    torch.manual_seed(0)
    random = depth_quality(build_depth("tiny", input_size=s.teacher_input), test)
    info.update(quality={"trained": trained, "random_init": random, "split": "test"})
    info["losses"] = [list(x) for x in info["losses"]]
    print(f"teacher depth on the test scenes (hazy): Pearson {trained['hazy']['pearson']:.3f} "
          f"(random init {random['hazy']['pearson']:.3f}), AbsRel {trained['hazy']['abs_rel']:.3f} "
          f"(random init {random['hazy']['abs_rel']:.3f})")
    text = json.dumps(info, indent=2).encode()
    atomic_write(demo.out / "teacher" / "quality.json", lambda tmp: Path(tmp).write_bytes(text))
    return info


def _run_train(demo: Demo, stage: str) -> Dict[str, Any]:
    from edgehaze.train.teacher import find_resumable, run_training

    cfg = demo.train_config(stage)
    run_dir = cfg.run_dir()
    resume = find_resumable(run_dir)  # an interrupted demo continues where it stopped
    results = run_training(cfg, resume=resume)
    (res,) = results.values()
    return {"steps": res.steps, "best_metric": res.best_metric, "best": str(res.best_path),
            "last": str(res.last_path), "run_dir": str(run_dir)}


def _stage_rgb(demo: Demo) -> Dict[str, Any]:
    return _run_train(demo, "rgb")


def _stage_fused(demo: Demo) -> Dict[str, Any]:
    info = {"fused": _run_train(demo, "fused")}
    print("control: the RGB-only model continued for the same steps without depth")
    info["control"] = _run_train(demo, "control")
    return info


def _stage_distill(demo: Demo) -> Dict[str, Any]:
    from edgehaze.distill.run import run_distill

    cfg = demo.distill_config()
    report = run_distill(cfg, resume=False, progress=demo.progress)
    return {"student": str(demo.student_ckpt), "steps": cfg.distill.steps,
            "quality": {k: v.get("quality") for k, v in (report.get("models") or {}).items()}}


def _stage_export(demo: Demo) -> Dict[str, Any]:
    from edgehaze.export import export_checkpoint

    s = demo.sizes
    out = demo.onnx_fp32.parent
    info: Dict[str, Any] = {}
    res = export_checkpoint(demo.student_ckpt, out=out, name=demo.onnx_fp32.stem, precision="fp32",
                            two_graph=True, progress=demo.progress)
    info["fp32"] = {"files": {k: str(v) for k, v in res.files.items()}, "accuracy": res.sidecar.get("accuracy")}
    res = export_checkpoint(demo.student_ckpt, out=out, name=demo.onnx_int8.stem, precision="int8",
                            calib=str(demo.data / "train"), calib_images=s.calib_images,
                            holdout_images=s.holdout_images, calib_size=s.calib_size, method=s.export_method,
                            qat_steps=s.qat_steps, max_psnr_drop=0.5, force=True, progress=demo.progress)
    info["int8"] = {"files": {k: str(v) for k, v in res.files.items()}, "accuracy": res.sidecar.get("accuracy"),
                    "method": s.export_method}
    return info


def _stage_stream(demo: Demo) -> Dict[str, Any]:
    s = demo.sizes
    folder = demo.out / "stream"
    video = make_hazy_video(folder / "hazy.mp4", s.video_frames, s.video_size, seed=7)
    runs = {"int8": run_stream(demo.onnx_int8, video["path"], folder / "dehazed-int8.mp4",
                               folder / "stats-int8.json", demo.threads, folder / "stream-int8.log")}
    fp32_two_graph = demo.onnx_fp32.with_name(demo.onnx_fp32.stem + ".depth.onnx").is_file()
    if fp32_two_graph:
        runs["fp32_depth_every_4"] = run_stream(demo.onnx_fp32, video["path"], folder / "dehazed-fp32-de4.mp4",
                                                folder / "stats-fp32-de4.json", demo.threads,
                                                folder / "stream-fp32-de4.log", depth_every=4)
    return {"video": video, "runs": runs}


def _stage_report(demo: Demo) -> Dict[str, Any]:
    return write_report(demo)


# ---------------------------------------------------------------- the video
def make_hazy_video(path: "str | Path", frames: int, size: Tuple[int, int], seed: int = 7,
                    fps: float = 15.0) -> Dict[str, Any]:
    """A hazy camera pass over one procedural scene, written as an mp4v video.

    The scene is rendered once, larger than the frame, and hazed from its
    exact depth (the procedural beta range, depth / ``far``); the camera then
    pans across it left to right while zooming in and out (a crop window
    that moves and changes size, resized to ``size``). Written to a
    temporary name and renamed, so a half-written video is never left
    under the final name.
    """
    import cv2

    from edgehaze.data.procedural import DEFAULT_FAR, PROCEDURAL_BETA, render_scene
    from edgehaze.data.synthesis import sample_params, synthesize

    if frames < 2:
        raise ConfigError(f"the demo video needs at least 2 frames, got {frames}")
    h, w = int(size[0]), int(size[1])
    big_h, big_w = int(round(h * 1.25)), int(round(w * 2.0))
    scene = render_scene(seed, big_h, big_w)
    beta, airlight = sample_params(seed, 0, beta=PROCEDURAL_BETA)
    hazy, _t = synthesize(scene.rgb, scene.depth / DEFAULT_FAR, beta, airlight)
    hazy_u8 = np.clip(np.rint(np.asarray(hazy) * 255.0), 0, 255).astype(np.uint8)[:, :, ::-1]  # BGR
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
    if not writer.isOpened():
        raise EdgehazeError(f"{path}: OpenCV cannot write mp4v video here")
    try:
        for k in range(frames):
            a = k / (frames - 1)
            zoom = 1.0 - 0.25 * math.sin(math.pi * a)  # 1 -> 0.75 -> 1
            ch = max(8, int(round(big_h * 0.8 * zoom)))
            cw = min(big_w, max(8, int(round(ch * w / h))))
            x0 = int(round(a * (big_w - cw)))
            y0 = (big_h - ch) // 2
            crop = hazy_u8[y0 : y0 + ch, x0 : x0 + cw]
            writer.write(cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA))
    finally:
        writer.release()
    os.replace(tmp, path)
    return {"path": str(path), "frames": frames, "size": [h, w], "fps": fps, "scene_seed": seed,
            "beta": float(beta), "airlight": [float(v) for v in np.atleast_1d(airlight)]}


def stream_tool() -> Path:
    """``runtime/stream.py`` of this installation (the torch-free stream tool)."""
    import edgehaze.runtime

    return Path(edgehaze.runtime.__file__).resolve().parent / "stream.py"


def run_stream(model: Path, video: "str | Path", output: "str | Path", stats_json: Path, threads: int, log: Path,
               depth_every: int = 1, side_by_side: bool = True) -> Dict[str, Any]:
    """Run ``python runtime/stream.py`` on ``video`` in a subprocess; returns its FPS and stage timings.

    ``output``: a video file, or ``"null"`` to measure the stream without writing (the benchmarks' sink).
    """
    cmd = [sys.executable, str(stream_tool()), "--model", str(model), "--input", str(video), "--output", str(output),
           "--stats-json", str(stats_json), "--threads", str(threads), "--provider", "cpu", "--stats-interval", "0"]
    if side_by_side:
        cmd.append("--side-by-side")
    if depth_every > 1:
        cmd += ["--depth-every", str(depth_every)]
    print("$ " + " ".join(cmd))
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True)
    tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
    for line in tail:
        print(f"  {line}")
    if proc.returncode != 0 or not stats_json.is_file():
        raise EdgehazeError(f"runtime/stream.py exited with {proc.returncode} on {Path(model).name} (its log: {log})")
    stats = json.loads(stats_json.read_text(encoding="utf-8"))
    stages = {k: v.get("median") for k, v in (stats.get("stages_ms") or {}).items()}
    return {"model": str(model), "output": str(output), "fps": stats.get("fps"), "frames": stats.get("frames"),
            "wall_s": stats.get("wall_s"), "stages_median_ms": stages, "backend": stats.get("backend"),
            "depth_every": stats.get("depth_every", depth_every), "depth_refreshes": stats.get("depth_refreshes"),
            "temporal": stats.get("temporal"), "stats_json": str(stats_json), "log": str(log)}


# ---------------------------------------------------------------- the report
def _runtime_runner(path: Path, threads: int) -> Any:
    """A :class:`~edgehaze.data.runners.Runner` over the shipped runtime (``runtime.create/run``)."""
    import edgehaze.runtime as runtime
    from edgehaze.data.runners import Runner

    handle = runtime.create(str(path), {"provider": "cpu", "threads": threads})
    bgr = handle.channel_order == "BGR"

    def run(img01: np.ndarray) -> np.ndarray:
        u8 = np.clip(np.rint(np.asarray(img01, np.float32) * 255.0), 0, 255).astype(np.uint8)
        if bgr:
            u8 = u8[..., ::-1]
        out = runtime.run(handle, np.ascontiguousarray(u8))
        if bgr:
            out = out[..., ::-1]
        return out.astype(np.float32) / 255.0

    return Runner(run=run, info={"kind": "onnx (edgehaze runtime)", "path": str(path), "backend": handle.backend_name,
                                 "precision": handle.meta.get("precision")})


def _torch_runner(model: Any) -> Any:
    import torch

    from edgehaze.data.runners import Runner
    from edgehaze.imageio import to_image, to_tensor

    def run(img01: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return to_image(model(to_tensor(img01)).clamp(0.0, 1.0))

    depth_fn = None
    provider = getattr(model, "depth", None)
    if provider is not None and callable(getattr(provider, "depth", None)):

        def depth_fn(img01: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return provider.depth(to_tensor(img01))[0].float().numpy()

    return Runner(run=run, depth=depth_fn, info={"kind": "checkpoint (torch eager)"})


def _cost(model: Any, size: Tuple[int, int]) -> Dict[str, int]:
    import torch

    from edgehaze.metrics.cost import count_flops, count_params

    x = torch.rand(1, 3, size[0], size[1], generator=torch.Generator().manual_seed(0))
    depth = getattr(model, "depth", None)
    return {"params": count_params(model), "flops": count_flops(model, x),
            "depth_params": count_params(depth) if depth is not None else 0}


def _num(v: Any, fmt: str) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


#: fused-vs-control differences below this (dB) are called a tie: one seed, one run
TIE_DB = 0.3


def _verdict(rows: Dict[str, Dict[str, Any]]) -> Tuple[str, Dict[str, Optional[float]]]:
    """What the numbers say about the depth teacher and the student, in words (honest either way)."""

    def psnr(key: str) -> Optional[float]:
        return (rows.get(key) or {}).get("psnr")

    rgb, fused, control, s32, s8 = (psnr(k) for k in ("rgb", "fused", "control", "student_fp32", "student_int8"))
    gains: Dict[str, Optional[float]] = {
        "fused_vs_rgb_db": None if None in (fused, rgb) else fused - rgb,
        "fused_vs_control_db": None if None in (fused, control) else fused - control,
        "student_fp32_vs_fused_db": None if None in (s32, fused) else s32 - fused,
        "int8_vs_fp32_db": None if None in (s8, s32) else s8 - s32,
    }
    text: List[str] = []
    g, c = gains["fused_vs_rgb_db"], gains["fused_vs_control_db"]
    if g is not None:
        text.append(f"The fused teacher is {abs(g):.2f} dB PSNR {'above' if g >= 0 else 'below'} the stage-1 RGB-only model.")
    if c is not None:
        said = f"Against the RGB-only model trained for the same extra steps (the fair control) it is {abs(c):.2f} dB "
        if abs(c) < TIE_DB:
            text.append(said + f"{'better' if c >= 0 else 'worse'}: a tie (one seed; seeds move a run by about "
                        f"{TIE_DB} dB), so this run does not show that depth helps (3 seeds on real images: "
                        "`benchmarks/depth_gain.py`).")
        elif c > 0:
            text.append(said + "better: in this run the depth teacher helps (one seed).")
        else:
            text.append(said + "worse: in this budget the depth teacher does **not** help; "
                        "the stage-1 gap comes from the extra training.")
    s = gains["student_fp32_vs_fused_db"]
    if s is not None:
        text.append(f"The student (FP32 ONNX) is {abs(s):.2f} dB {'above' if s >= 0 else 'below'} the fused teacher.")
    q = gains["int8_vs_fp32_db"]
    if q is not None:
        text.append(f"INT8 changes PSNR by {q:+.2f} dB against FP32.")
    return " ".join(text), gains


def load_model_rows(demo: "Demo") -> Tuple[Dict[str, Dict[str, Any]], Dict[str, Any]]:
    """Every demo model's report row (title, engine, file, params/FLOPs at 640x480) and the loaded torch models.

    The student's ONNX rows carry its float network's params/FLOPs (INT8 runs the same operations).
    """
    from edgehaze.checkpoint import load_dehazer

    torch_models = {
        "rgb": demo.stage1_ckpt,
        "fused": demo.stage2_ckpt,
        "control": demo.control_ckpt,
        "student_torch": demo.student_ckpt,
    }
    rows: Dict[str, Dict[str, Any]] = {}
    loaded: Dict[str, Any] = {}
    for key, path in torch_models.items():
        model, meta = load_dehazer(path)
        model.eval()
        loaded[key] = model
        rows[key] = {"title": ROW_TITLES[key], "engine": "torch eager", "file": str(path),
                     "build": meta.get("build"), **_cost(model, EVAL_SIZE)}
    student_cost = {k: rows["student_torch"][k] for k in ("params", "flops", "depth_params")}
    for key, path in (("student_fp32", demo.onnx_fp32), ("student_int8", demo.onnx_int8)):
        sidecar = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        rows[key] = {"title": ROW_TITLES[key], "engine": f"ONNX Runtime CPU (threads: {demo.threads})",
                     "file": str(path), "precision": sidecar.get("precision"),
                     "export_accuracy": sidecar.get("accuracy"), **student_cost}
    return rows, loaded


def score_model_rows(demo: "Demo", rows: Dict[str, Dict[str, Any]], loaded: Dict[str, Any], dataset: Any,
                     folder: Path) -> None:
    """Fill ``rows`` in place: quality on ``dataset`` (each model through ``evaluate()``) and CPU latency at 640x480.

    Torch checkpoints run eager, the artifacts through the shipped runtime,
    so every number is what a user of that form of the model gets.
    """
    from edgehaze.bench import bench_onnx, bench_torch
    from edgehaze.data.evaluation import evaluate

    s = demo.sizes
    for key in ("rgb", "fused", "control", "student_torch", "student_fp32", "student_int8"):
        runner = (_torch_runner(loaded[key]) if key in loaded
                  else _runtime_runner(demo.onnx_fp32 if key == "student_fp32" else demo.onnx_int8, demo.threads))
        summary = evaluate(runner, dataset, folder / "eval" / key, save_outputs=True, progress=demo.progress,
                           sheet_rows=4)
        rows[key].update({m: summary["metrics"].get(m) for m in ("psnr", "ssim", "psnr_y")})
        rows[key]["psnr_hazy"] = summary["metrics"].get("psnr_hazy")
        rows[key]["contact_sheet"] = summary["files"]["contact_sheet"]
    for key in ("rgb", "fused", "student_torch"):
        rows[key]["latency"] = bench_torch(loaded[key], EVAL_SIZE, s.latency_warmup, s.latency_runs, demo.threads)
    for key, path in (("student_fp32", demo.onnx_fp32), ("student_int8", demo.onnx_int8)):
        rows[key]["latency"] = bench_onnx(path, EVAL_SIZE, demo.threads, s.latency_warmup, s.latency_runs)
    rows["control"]["latency"] = rows["rgb"]["latency"]  # the same network as stage 1


def model_sheet(demo: "Demo", dataset: Any, loaded: Dict[str, Any], folder: Path) -> Path:
    """One contact sheet with every model side by side (+ teacher depth, + exact depth where the data has it)."""
    import torch

    from edgehaze.data.evaluation import contact_sheet, depth_colour
    from edgehaze.imageio import read_image, write_image

    sheet_rows = []
    teacher = getattr(loaded["fused"], "depth", None)
    for i in range(min(4, len(dataset))):
        pair = dataset.pairs[i]
        hazy, gt = dataset.load_pair(i)
        tiles = [hazy] + [read_image(folder / "eval" / k / "images" / f"{pair.name}.png") for k in ROW_ORDER] + [gt]
        with torch.no_grad():
            tiles.append(depth_colour(teacher.depth(torch.from_numpy(hazy).permute(2, 0, 1)[None])[0].numpy()))
        exact = demo.data / "test" / "depth" / f"{Path(pair.name).stem}.npy"
        if exact.is_file():
            tiles.append(depth_colour(1.0 / np.maximum(np.load(exact), 0.1)))
        sheet_rows.append(tiles)
    return write_image(folder / "contact_sheet.png", contact_sheet(sheet_rows, tile_h=128))


def stage_times(demo: "Demo") -> Tuple[Dict[str, Dict[str, Any]], float]:
    """Wall/CPU seconds of every stage before the report, and their total."""
    stages = {name: {k: rec.get(k) for k in ("wall_s", "cpu_s", "status")}
              for name, rec in demo.state["stages"].items() if name != "report"}
    return stages, sum(v.get("wall_s") or 0.0 for v in stages.values())


def write_report_files(demo: "Demo", report: Dict[str, Any], md: str) -> None:
    """``report.json`` and ``report.md``, each written atomically, and the markdown printed."""
    from edgehaze.fsutil import atomic_write

    atomic_write(demo.out / "report.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2, default=str)))
    atomic_write(demo.out / "report.md", lambda tmp: Path(tmp).write_text(md, encoding="utf-8"))
    print(md)


def write_report(demo: "Demo") -> Dict[str, Any]:
    """Evaluate, time and describe the demo's models: ``report.md`` + ``report.json`` (+ contact sheets)."""
    from edgehaze.bench import machine_info
    from edgehaze.data.datasets import PairedDataset
    from edgehaze.data.layouts import find_pairs

    s = demo.sizes
    folder = demo.out / "report"
    dataset = PairedDataset(find_pairs(demo.data, layout="dehazeformer", split="test"), crop=None, flip=False)
    rows, loaded = load_model_rows(demo)
    score_model_rows(demo, rows, loaded, dataset, folder)
    sheet = model_sheet(demo, dataset, loaded, folder)
    verdict, gains = _verdict(rows)
    stages, total = stage_times(demo)
    report = {
        "mode": demo.mode,
        "eval_size": list(EVAL_SIZE),
        "test_split": {"root": str(demo.data), "images": len(dataset), "size": list(s.size)},
        "rows": rows,
        "verdict": verdict,
        "gains_db": gains,
        "teacher_depth": demo.result("teacher").get("quality"),
        "teacher_pretraining": {k: demo.result("teacher").get(k) for k in ("steps", "batch_size", "input_size",
                                                                             "train_images", "losses", "weights")},
        "stream": demo.result("stream"),
        "stages": stages,
        "total_wall_s_before_report": total,
        "contact_sheet": str(sheet),
        "sizes": asdict(s),
        "threads": demo.threads,
        "machine": machine_info(demo.threads),
    }
    write_report_files(demo, report, _markdown(report))
    return {"report": str(demo.out / "report.md"), "verdict": verdict, "gains_db": gains}


def model_table_lines(r: Dict[str, Any]) -> List[str]:
    """The models table (params, FLOPs, quality, CPU latency) and the lines that explain it, the verdict included."""
    h, w = r["eval_size"]
    lines = [
        f"| model | engine | params (M) | of which depth (M) | GFLOPs @{w}x{h} | PSNR | SSIM | PSNR-Y | "
        f"CPU median ms @{w}x{h} | FPS |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in (*ROW_ORDER, "control"):
        row = r["rows"][key]
        lat = row.get("latency") or {}
        lines.append(
            f"| {row['title']} | {row['engine']} | {_num(row['params'] / 1e6, '.3f')} | "
            f"{_num(row.get('depth_params', 0) / 1e6, '.3f')} | {_num(row['flops'] / 1e9, '.2f')} | "
            f"{_num(row.get('psnr'), '.2f')} | {_num(row.get('ssim'), '.4f')} | {_num(row.get('psnr_y'), '.2f')} | "
            f"{_num(lat.get('median_ms'), '.1f')} | {_num(lat.get('fps'), '.1f')} |"
        )
    hazy = r["rows"]["rgb"].get("psnr_hazy")
    st = r["rows"]["student_torch"]
    lines += [
        "",
        f"Hazy input (no model): PSNR {_num(hazy, '.2f')} dB. The student's network run in torch eager: "
        f"{_num((st.get('latency') or {}).get('median_ms'), '.1f')} ms (PSNR {_num(st.get('psnr'), '.2f')}). "
        "The student rows' params/FLOPs are those of its float network (INT8 runs the same operations). "
        "The control row continues stage 1 for as many steps as stage 2, with the same schedule, without depth; "
        "it has stage 1's latency.",
        "",
        "**Verdict.** " + (r["verdict"] or "not enough results for a verdict."),
        "",
    ]
    return lines


def _markdown(r: Dict[str, Any]) -> str:
    h, w = r["eval_size"]
    lines = [
        f"# edgehaze demo report ({r['mode']})",
        "",
        f"Procedural test split: {r['test_split']['images']} scenes of {r['test_split']['size'][1]}x"
        f"{r['test_split']['size'][0]} (hazed with exact depth). Params and FLOPs at {w}x{h}; CPU latency is the "
        f"median of {r['sizes']['latency_runs']} runs at {w}x{h} (threads: {r['threads']}) on this machine "
        f"({r['machine'].get('processor')}, {r['machine'].get('cpu_count')} CPUs visible).",
        "",
        *model_table_lines(r),
        f"Scale: backbone `{r['sizes']['backbone']}`, fusion `{r['sizes']['fusion']}` at every fusion point. The "
        "demo's depth teacher is a small stand-in trained here, so the student is not much smaller or faster than "
        "it; Depth Anything V2-L has ~335 M parameters. Time the real teacher against the student with "
        "`edgehaze bench --teacher dav2-l --depth-weights depth_anything_v2_vitl.pth --checkpoint "
        "distill/student.safetensors`.",
        "",
    ]
    lines += _teacher_lines(r)
    stream = r.get("stream") or {}
    if stream.get("runs"):
        v = stream.get("video") or {}
        lines += ["## Stream (torch-free runtime, `python runtime/stream.py`)", "",
                  f"Input: {v.get('frames')} hazy frames of {v.get('size', [0, 0])[1]}x{v.get('size', [0, 0])[0]} "
                  f"(a camera panning and zooming over a procedural scene), `{Path(str(v.get('path'))).name}`.", "",
                  *stream_table_lines(stream["runs"].values()),
                  "", "Stream FPS includes decoding and writing the side-by-side video; stage times are medians.", ""]
    lines += stage_time_lines(r)
    lines += [f"Contact sheet (`report/contact_sheet.png`): hazy | RGB-only | fused | student FP32 | student INT8 | "
              "GT | teacher depth | exact inverse depth. Per-model sheets and per-image metrics: `report/eval/*/`.", ""]
    return "\n".join(lines)


def _teacher_lines(r: Dict[str, Any]) -> List[str]:
    td = r.get("teacher_depth") or {}
    if not td:
        return []
    t, z = td["trained"], td["random_init"]
    pre = r["teacher_pretraining"]
    lines = [
        "## Depth teacher",
        "",
        f"Depth Anything V2 architecture (`tiny` size, transformers `DepthAnythingForDepthEstimation`), "
        f"pre-trained for {pre.get('steps')} steps (batch {pre.get('batch_size')}, input side "
        f"{pre.get('input_size')}) on the exact depth of {pre.get('train_images')} procedural scenes, clear and "
        f"hazy, with a scale-and-shift-invariant loss; loaded by the demo like DAv2-L "
        f"(`build_dehazer(depth=\"tiny\", depth_weights={Path(str(pre.get('weights'))).name}/)`). "
        f"Quality on the {td.get('split')} scenes (inverse depth; AbsRel and delta<1.25 after least-squares "
        "scale and shift):",
        "",
        "| teacher | input | Pearson | AbsRel | delta<1.25 |",
        "|---|---|---:|---:|---:|",
    ]
    for name, q in (("pre-trained", t), ("random init (same architecture)", z)):
        for kind in ("clear", "hazy"):
            lines.append(f"| {name} | {kind} | {q[kind]['pearson']:.3f} | {q[kind]['abs_rel']:.3f} | "
                         f"{q[kind]['delta1']:.3f} |")
    return lines + [""]


def stream_table_lines(runs: Any, first: str = "artifact") -> List[str]:
    """One row per ``run_stream`` result: artifact, depth every, smoothing, backend, FPS and the five stage medians."""
    lines = [f"| {first} | depth every | smoothing | backend | FPS | capture ms | pre ms | infer ms | post ms | write ms |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for run in runs:
        sm = run.get("stages_median_ms") or {}
        lines.append(f"| {run.get('label') or Path(run['model']).name} | {run.get('depth_every')} | "
                     f"{_num(run.get('temporal'), '.2g')} | "
                     f"{run.get('backend')} | {_num(run.get('fps'), '.1f')} | "
                     + " | ".join(_num(sm.get(k), '.2f') for k in ("capture", "pre", "infer", "post", "write")) + " |")
    return lines


def stage_time_lines(r: Dict[str, Any]) -> List[str]:
    """The time-per-stage table."""
    lines = ["## Time per stage", "", "| stage | wall s | CPU s |", "|---|---:|---:|"]
    for name, st_ in r["stages"].items():
        if st_.get("wall_s") is not None:
            lines.append(f"| {name} | {st_['wall_s']:.1f} | {_num(st_.get('cpu_s'), '.1f')} |")
    return lines + [f"| total (before this report) | {r['total_wall_s_before_report']:.1f} | |", ""]


STAGES: List[Stage] = [
    Stage("data", "generating procedural RGB-D scenes", _stage_data, lambda d: [d.data / "done.json"]),
    Stage("teacher", "pre-training the depth teacher on exact depth", _stage_teacher,
          lambda d: [d.out / "teacher" / "quality.json", d.teacher_weights / "config.json"]),
    Stage("rgb", "training stage 1 (RGB only)", _stage_rgb, lambda d: [d.out / "stage1" / "rgb" / "last.safetensors"]),
    Stage("fused", "training stage 2 (fused with the teacher) + RGB-only control", _stage_fused,
          lambda d: [d.out / "stage2" / "fused" / "last.safetensors", d.out / "control" / "rgb" / "last.safetensors"]),
    Stage("distill", "distilling the student depth encoder", _stage_distill, lambda d: [d.student_ckpt]),
    Stage("export", "exporting the student to ONNX FP32 and INT8", _stage_export,
          lambda d: [d.onnx_fp32, d.onnx_int8]),
    Stage("stream", "streaming a hazy video through the runtime", _stage_stream,
          lambda d: [d.out / "stream" / "stats-int8.json"]),
    Stage("report", "writing the report", _stage_report, lambda d: [d.out / "report.md", d.out / "report.json"]),
]
STAGE_NAMES = [s.name for s in STAGES]
Demo.stages = STAGES


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


def run_demo(
    out: "str | Path" = "runs/demo",
    quick: bool = False,
    force: Optional[str] = None,
    stages: Optional[Sequence[str]] = None,
    threads: int = 2,
    progress: bool = True,
    sizes: Optional[Any] = None,
    print_fn: Callable[[str], None] = print,
    data: "Optional[str | Path]" = None,
    full: bool = False,
) -> Dict[str, Any]:
    """Run (or resume) the demo in ``out``; returns the state (per-stage status, times, results).

    force: None, ``"all"`` or a stage name (that stage and all after it are redone).
    stages: run only these stages (the others must have run before when needed).
    data: a real data folder (:mod:`edgehaze.demo_real`: same stages on real
    RGB-D, sizes ``REAL``/``REAL_QUICK``); None: the procedural demo.
    full: with ``data``, the real-data training recipe (sizes ``REAL_FULL``,
    about 30 minutes): the shipped student.
    """
    import torch

    if threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    unknown = [s for s in (stages or []) if s not in STAGE_NAMES]
    if unknown:
        raise ConfigError(f"--stages {unknown[0]}: unknown stage; stages are {', '.join(STAGE_NAMES)}")
    if force not in (None, "all") and force not in STAGE_NAMES:
        raise ConfigError(f"--force {force}: unknown stage; use --force (everything) or one of {', '.join(STAGE_NAMES)}")
    if full and data is None:
        raise ConfigError("--full is the real-data recipe: give --data DIR (or set EDGEHAZE_SHARED)")
    if data is not None:
        from edgehaze.demo_real import RealDemo

        demo: Demo = RealDemo(out, data, quick=quick, threads=threads, progress=progress, sizes=sizes, full=full)
    else:
        demo = Demo(out, quick=quick, threads=threads, progress=progress, sizes=sizes)
    _check_same_kind(demo, force)
    if force == "all" and demo.out.exists():
        for s in demo.stages:  # keep nothing stale, but never delete what the demo did not write
            _remove(_stage_dirs(demo, s.name))
        demo.state = {"stages": {}}
    demo.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    t_total = time.perf_counter()
    _run_stages(demo, list(stages) if stages else STAGE_NAMES, force, print_fn)
    demo.state["last_invocation_s"] = time.perf_counter() - t_total
    demo.save_state()
    return demo.state


def _check_same_kind(demo: Demo, force: Optional[str]) -> None:
    """A run directory holds one kind of demo (mode and data folder); another needs --force or another --out."""
    if force == "all":
        return
    old_mode = demo.state.get("mode")
    if old_mode not in (None, demo.mode):
        raise ConfigError(f"{demo.out} holds a {old_mode} demo; rerun with --force to redo it as a "
                          f"{demo.mode} demo, or pick another --out")
    old_data, new_data = demo.state.get("data_dir"), demo.state_extra().get("data_dir")
    if old_mode is not None and old_data != new_data:
        raise ConfigError(f"{demo.out} holds a demo on --data {old_data}; rerun with --force to redo it on "
                          f"{new_data}, or pick another --out")


def _remove(paths: Sequence[Path]) -> None:
    for p in paths:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _run_stages(demo: Demo, selected: Sequence[str], force: Optional[str], print_fn: Callable[[str], None]) -> None:
    """Each selected stage in order: skipped when done (and nothing upstream ran), else run with its log."""
    forced_from = 0 if force == "all" else (STAGE_NAMES.index(force) if force else len(demo.stages))
    n = len(demo.stages)
    upstream_ran = False
    for i, stage in enumerate(demo.stages, start=1):
        rec = demo.state["stages"].get(stage.name) or {}
        if stage.name not in selected:
            continue
        done = all(p.exists() for p in stage.outputs(demo)) and rec.get("status") == "done"
        if done and not upstream_ran and i - 1 < forced_from:
            print_fn(f"[{i}/{n}] {stage.title} ... skipped (done in an earlier run: {_fmt_s(rec.get('wall_s', 0))})")
            rec["skipped_last_run"] = True
            demo.state["stages"][stage.name] = rec
            continue
        if i - 1 >= forced_from or upstream_ran:
            _remove(_stage_dirs(demo, stage.name))
        print_fn(f"[{i}/{n}] {stage.title} ...")
        wall = _run_one(demo, stage, i, n)
        upstream_ran = True
        print_fn(f"[{i}/{n}] {stage.title} ... done in {_fmt_s(wall)}")
        if stage.name == "report":
            print_fn(f"report: {demo.out / 'report.md'}")


def _run_one(demo: Demo, stage: Stage, i: int, n: int) -> float:
    """Run one stage with its output teed to ``logs/STAGE.log``; record it in the state; returns its wall time."""
    log_path = demo.out / "logs" / f"{stage.name}.log"
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        with _tee_output(log_path) as log:
            try:
                result = stage.run(demo)
            except BaseException:
                log.write("\n" + traceback.format_exc())
                raise
    except KeyboardInterrupt:
        demo.save_state()
        raise
    except Exception as exc:
        demo.state["stages"][stage.name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                                            "log": str(log_path)}
        demo.save_state()
        what = str(exc) if isinstance(exc, EdgehazeError) else f"{type(exc).__name__}: {exc}"
        raise EdgehazeError(f"demo stage {i}/{n} '{stage.name}' ({stage.title}) failed: {what.splitlines()[0] if what else ''} "
                            f"(full log: {log_path})") from None
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    demo.state["stages"][stage.name] = {"status": "done", "wall_s": wall, "cpu_s": cpu, "result": result,
                                        "log": str(log_path), "skipped_last_run": False,
                                        "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    demo.save_state()
    return wall


def _stage_dirs(demo: Demo, stage: str) -> List[Path]:
    """What a stage writes (removed before it is redone)."""
    o = demo.out
    return {
        "data": [o / "data"],
        "teacher": [o / "teacher"],
        "rgb": [o / "stage1"],
        "fused": [o / "stage2", o / "control"],
        "distill": [o / "distill"],
        "export": [o / "export"],
        "stream": [o / "stream"],
        "report": [o / "report", o / "report.md", o / "report.json"],
    }[stage]


__all__ = ["Demo", "DemoSizes", "FULL", "QUICK", "STAGES", "STAGE_NAMES", "run_demo"]
