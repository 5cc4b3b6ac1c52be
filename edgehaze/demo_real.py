"""``edgehaze demo --data DIR``: the quickstart on real data, same stages as the procedural demo.

``DIR`` is laid out like the project's shared data folder: ``sots_indoor_train/``
(RESIDE hazy/clear pairs, depth recovered from their transmission) and/or
``frida2/`` (clear + metric depth) to train on; optionally ``sots_indoor/``
(test only), ``fohis_depth/``, ``real_hazy/`` + ``metrics/`` (more test sets)
and ``video/dvd_gopro_fog_frames/`` (a real fog drive to stream).

1. ``data``     the RGB-D scenes re-hazed ``variants`` times each
   (:func:`edgehaze.data.rgbd_synth.make_rgbd_dataset`, ``keep_pairs``: the
   sources' own hazy images too) into ``OUT/data/{train,val,test}``, split by
   scene (FRIDA2: every 5th scene is test; every ``val_scene_every``-th
   remaining scene validates);
2. ``teacher``  the real-scene depth teacher (:func:`edgehaze.depth_teacher.train_real_teacher`,
   same split), scored on val and the test scenes;
3. ``rgb``      stage 1 with the preset's backbone (edge-s, scale 8, guided apply);
4. ``fused``    stage 2 with the teacher + the equal-budget RGB-only control;
5. ``distill``  the student depth encoder;
6. ``export``   FP32 + INT8 at the trained scale (640x480) and INT8 at
   ``internal_scale=hd_scale`` (the 1080p artifact);
7. ``stream``   the real fog drive as a 640x480 and a 1080p mp4 through
   ``runtime/stream.py`` (the procedural video when ``DIR`` has no ``video/``);
8. ``report``   the synthetic test split's table plus the real test sets
   (:mod:`edgehaze.quality`) against the hazy input and the dark-channel prior.

Validation never reads a test split and never chooses a checkpoint: every
model is its stage's last step. What the stages take is :class:`RealSizes`
(``REAL``; ``REAL_QUICK`` for tests).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from edgehaze import demo as D
from edgehaze.errors import ConfigError, EdgehazeError

#: training sources a data folder may hold, with their rgbd layout: indoor rooms (depth from their
#: transmission), synthetic roads (metric depth), real streets (stereo depth) and clear outdoor photos
#: (the geometric depth prior, edgehaze.data.outdoor)
SOURCES = {"sots_indoor_train": "pairs", "frida2": "frida2", "cityscapes4": "cityscapes", "clear_outdoor": "photos"}
#: stage 1 of the recipe (``REAL_FULL``), the steps of ``configs/real_edge-s.yaml``
RECIPE_RGB_STEPS = 9000
#: the real fog drive (frame_<k>_hazy.jpg, k = 0, 1, ...)
FOG_FRAMES = Path("video") / "dvd_gopro_fog_frames"


@dataclass(frozen=True)
class RealSizes:
    """Everything that sets the real-data demo's run time and recipe (``REAL``, ``REAL_FULL``, ``REAL_QUICK``)."""

    # data (edgehaze synth --rgbd): renderings per scene, per training source. The indoor
    # scenes get three times the road scenes' renderings: at equal counts they are under a
    # third of the pairs, and at 6000 steps 12/4 gave +0.5 dB on SOTS-indoor over 4/4 with
    # FRIDA2 unchanged (configs/README.md, "Real-data recipe").
    variants: Dict[str, int] = field(default_factory=lambda: {"sots_indoor_train": 12, "frida2": 4,
                                                              "cityscapes4": 24, "clear_outdoor": 1})
    depth_proxy: str = "geometric"  # depth for photos without depth (edgehaze.data.outdoor.DEPTH_PROXIES)
    test_variants: int = 1
    airlight: Tuple[float, float] = (0.7, 1.0)
    val_scene_every: int = 7  # every K-th remaining scene validates (never a test scene)
    seed: int = 0
    # depth teacher
    teacher_steps: int = 600
    teacher_batch: int = 8
    teacher_input: int = 98
    # stage 1 / 2
    backbone: str = "edge-s"
    backbone_kwargs: Dict[str, Any] = field(
        default_factory=lambda: {"scale": 8, "apply": "guided", "context": True, "guide_radius": 4})
    crop: Optional[int] = 256
    batch: int = 8
    lr: float = 2e-3
    rgb_steps: int = 1500
    fused_steps: int = 300
    val_every: int = 500
    val_limit: Optional[int] = 24
    fusion: str = "lite"
    # weight of the single-frame stability term against flicker (edgehaze.train.stability), in
    # every stage that trains the dehazer (stage 1, fused, control, distillation); 0 = off
    stability: float = 0.0
    # distillation
    distill_steps: int = 300
    distill_crop: Optional[int] = 256
    student_widths: Tuple[int, ...] = (8, 16, 32, 64)
    student_blocks: Tuple[int, ...] = (1, 1, 1, 1)
    # export
    export_method: str = "ptq"
    qat_steps: int = 0
    calib_images: int = 32
    holdout_images: int = 8
    calib_size: Tuple[int, int] = (480, 640)
    hd_scale: int = 16
    hd_calib_size: Tuple[int, int] = (1080, 1920)
    # stream
    video_frames: int = 0  # 0: every frame of the fog drive (procedural fallback: 60)
    video_size: Tuple[int, int] = (480, 640)
    video_hd_size: Tuple[int, int] = (1080, 1920)
    video_fps: float = 30.0
    # report
    latency_runs: int = 10
    latency_warmup: int = 3
    quality_max_side: int = 1024  # real photos (no GT) shrunk to this longer side
    quality_sets: Optional[Tuple[str, ...]] = None  # set-name prefixes (None: every set found)

    def variants_for(self, names: Sequence[str]) -> List[int]:
        """Renderings per scene for the training sources ``names`` (in order); 4 for a source not listed."""
        return [int(self.variants.get(n, 4)) for n in names]


#: the quickstart on real data (``edgehaze demo --data DIR``): about 10 minutes on 2 cores
REAL = RealSizes()

#: the real-data training recipe (``edgehaze demo --data DIR --full``): the shipped student, about
#: 30 minutes on 2 cores. Stage 1 is ``configs/real_edge-s.yaml`` (a test keeps the two equal).
#: The stability weight: the largest whose PSNR on the validation pairs with the sources' own haze stays
#: within 0.3 dB of weight 0 (1: -0.10 dB and 2.7x less flicker on validation pans; 4: -0.96 dB;
#: configs/README.md, "Flicker").
REAL_FULL = RealSizes(teacher_steps=1500, rgb_steps=RECIPE_RGB_STEPS, fused_steps=1000, val_every=2000,
                      distill_steps=1000, stability=1.0)

REAL_QUICK = RealSizes(
    variants={"sots_indoor_train": 1, "frida2": 1, "cityscapes4": 1, "clear_outdoor": 1}, test_variants=1,
    val_scene_every=2,
    teacher_steps=4, teacher_batch=4, teacher_input=28,
    backbone="edge-xs", crop=48, batch=4, rgb_steps=4, fused_steps=4, val_every=4, val_limit=2,
    distill_steps=4, distill_crop=48,
    calib_images=4, holdout_images=2, calib_size=(48, 64), hd_calib_size=(72, 128),
    video_frames=4, video_size=(48, 64), video_hd_size=(72, 128),
    latency_runs=1, latency_warmup=0, quality_max_side=192,  # NIQE needs 96 px on the shorter side
    quality_sets=("sots-indoor", "frida2", "cityscapes", "fohis", "real-photos"),  # the photo sets take minutes
)


# ---------------------------------------------------------------- the data folder
def find_sources(data_dir: "str | Path", flag: str = "--data") -> Dict[str, Path]:
    """The training sources in ``data_dir`` (``{name: folder}``); a one-line error naming the fix when none."""
    root = Path(data_dir)
    if not root.is_dir():
        raise ConfigError(f"{flag} {root}: no such folder (a data folder laid out like the shared data/, or "
                          "--procedural for the procedural demo)")
    found = {name: root / name for name in SOURCES if (root / name).is_dir()}
    if not found:
        raise ConfigError(f"{flag} {root}: holds neither {' nor '.join(n + '/' for n in SOURCES)} (lay it out like "
                          "the shared data folder, or pass --procedural for the procedural demo)")
    return found


def resolve_data_dir(data: "Optional[str | Path]", procedural: bool,
                     environ: Optional[Mapping[str, str]] = None) -> Optional[Path]:
    """The demo's real data folder, or None for the procedural demo.

    ``--data DIR`` wins; else ``$EDGEHAZE_SHARED/data`` when that variable is
    set and the folder exists; ``--procedural`` forces the procedural demo.
    """
    if procedural and data is not None:
        raise ConfigError("--procedural and --data exclude each other: drop one")
    if procedural:
        return None
    if data is not None:
        find_sources(data)
        return Path(data).resolve()
    shared = (environ if environ is not None else os.environ).get("EDGEHAZE_SHARED")
    if not shared or not (Path(shared) / "data").is_dir():
        return None
    find_sources(Path(shared) / "data", flag="EDGEHAZE_SHARED=" + shared + ":")
    return (Path(shared) / "data").resolve()


# ---------------------------------------------------------------- the run
class RealDemo(D.Demo):
    """A demo run directory whose stages train on the real data in ``data_dir``."""

    def __init__(self, out: "str | Path", data_dir: "str | Path", quick: bool = False, threads: int = 2,
                 progress: bool = True, sizes: Optional[RealSizes] = None, full: bool = False) -> None:
        if quick and full:
            raise ConfigError("--quick and --full exclude each other: drop one")
        self.data_dir = Path(data_dir).resolve()
        self.sources = find_sources(self.data_dir)
        self.full = full
        super().__init__(out, quick=quick, threads=threads, progress=progress,
                         sizes=sizes or (REAL_FULL if full else None))

    @staticmethod
    def default_sizes(quick: bool) -> RealSizes:
        return REAL_QUICK if quick else REAL

    @property
    def mode(self) -> str:
        return "real-quick" if self.quick else "real-full" if self.full else "real"

    def state_extra(self) -> Dict[str, Any]:
        return {"data_dir": str(self.data_dir)}

    @property
    def onnx_hd(self) -> Path:
        """The 1080p artifact: the same student with its network at 1/``hd_scale`` of the frame."""
        return self.onnx_int8.with_name(f"student-int8-s{self.sizes.hd_scale}.onnx")

    def train_config_dict(self, stage: str) -> Dict[str, Any]:
        """The procedural demo's config with the preset's backbone kwargs and lr, validated on ``val``."""
        s = self.sizes
        cfg = super().train_config_dict(stage)
        cfg["model"]["backbone_kwargs"] = dict(s.backbone_kwargs)
        # decoded pairs kept in memory (~1.4 GB for the recipe's 818): re-reading the PNGs every step
        # made stage 1 1.8x slower here (6.8 vs 12.4 steps/s on 2 threads)
        cfg["data"].update(val_split="val", val_limit=s.val_limit, cache_images=True)
        cfg["train"]["lr"] = s.lr
        if s.stability:
            cfg["loss"]["stability"] = s.stability
        return cfg

    def distill_config_dict(self) -> Dict[str, Any]:
        """The procedural demo's distillation, with a student that pools the frame as the backbone does.

        ``pool`` = the backbone's scale: the whole network then takes the frame
        pooled once, outside the INT8 core (:func:`edgehaze.export.fused.prepool_factor`);
        with the student's default pool of 4 under a scale-8 backbone the core
        took the full frame and pooled it three times (at 1080p: 31 ms a frame,
        under the 30 FPS floor).
        """
        cfg = super().distill_config_dict()
        cfg["student"]["depth_kwargs"]["pool"] = int(self.sizes.backbone_kwargs.get("scale", 4))
        cfg["data"].update(val_split="val", val_limit=self.sizes.val_limit, crop=self.sizes.distill_crop,
                           flip=self.sizes.distill_crop is not None, cache_images=True)
        if self.sizes.stability:
            cfg["loss"] = {**cfg.get("loss", {}), "stability": self.sizes.stability}
        return cfg


def _stage_data(demo: RealDemo) -> Dict[str, Any]:
    """Re-haze the real RGB-D scenes into ``OUT/data`` (split by scene); the splits are written down."""
    from edgehaze.data.rgbd import scene_split
    from edgehaze.data.rgbd_synth import HazeRecipe, load_source, make_rgbd_dataset
    from edgehaze.fsutil import atomic_write_bytes

    s = demo.sizes
    sources = []
    for name, root in demo.sources.items():
        src = load_source(root, layout=SOURCES[name], depth_proxy=s.depth_proxy)
        print(f"{root}: {len(src.scenes)} scenes ({src.layout}; test every {src.test_every or 'none'})")
        sources.append(src)
    if demo.data.exists():
        shutil.rmtree(demo.data)
    recipe = HazeRecipe(airlight=tuple(s.airlight))
    names = [src.root.name for src in sources]
    variants = s.variants_for(names)
    counts = make_rgbd_dataset(sources, demo.data, variants=variants, recipe=recipe, seed=s.seed,
                               val_every=s.val_scene_every, keep_pairs=True, test_variants=s.test_variants,
                               progress=demo.progress)
    splits = {src.root.name: scene_split([sc.name for sc in src.scenes], test_every=src.test_every,
                                         val_every=src.val_every or s.val_scene_every) for src in sources}
    for part in ("train", "val"):
        if not counts[part]:
            raise ConfigError(f"--data {demo.data_dir}: no {part} scene after the split (every "
                              f"{s.val_scene_every}-th remaining scene validates); add scenes or change "
                              "val_scene_every in the preset")
    info = {"counts": counts, "root": str(demo.data), "data_dir": str(demo.data_dir), "splits": splits,
            "train_shares": json.loads((demo.data / "synth.json").read_text())["train_shares"],
            "sources": {src.root.name: {"layout": src.layout, "scenes": len(src.scenes),
                                        "test_every": src.test_every} for src in sources},
            "variants": dict(zip(names, variants)), "recipe": asdict(recipe)}
    atomic_write_bytes(demo.data / "done.json", json.dumps(info, indent=2).encode())
    print(f"wrote {counts['train']} train, {counts['val']} val, {counts['test']} test pairs to {demo.data}")
    return info


def _stage_teacher(demo: RealDemo) -> Dict[str, Any]:
    """The real-scene depth teacher on the same scene split; its quality on val and the test scenes."""
    from edgehaze.depth_teacher import train_real_teacher
    from edgehaze.fsutil import atomic_write_bytes

    s = demo.sizes
    info = train_real_teacher(demo.data_dir, demo.teacher_weights, steps=s.teacher_steps,
                              batch_size=s.teacher_batch, input_size=s.teacher_input, seed=s.seed,
                              log_every=max(1, s.teacher_steps // 10), val_every=s.val_scene_every)
    info["losses"] = [list(x) for x in info["losses"]]
    for part, q in info["trained"].items():
        if q.get("images"):
            print(f"teacher depth on {part} ({q['images']} images): AbsRel {q['abs_rel']:.3f} "
                  f"(untrained {info['untrained'][part]['abs_rel']:.3f}, a vertical ramp "
                  f"{info['ramp'][part]['abs_rel']:.3f}), delta<1.25 {q['delta1']:.3f}")
    atomic_write_bytes(demo.out / "teacher" / "quality.json", json.dumps(info, indent=2).encode())
    return info


def _stage_export(demo: RealDemo) -> Dict[str, Any]:
    """FP32 + INT8 at the trained scale (the procedural demo's export), then INT8 at ``hd_scale`` for 1080p."""
    from edgehaze.export import export_checkpoint

    s = demo.sizes
    info = D._stage_export(demo)
    res = export_checkpoint(demo.student_ckpt, out=demo.onnx_hd.parent, name=demo.onnx_hd.stem, precision="int8",
                            calib=str(demo.data / "train"), calib_images=s.calib_images,
                            holdout_images=s.holdout_images, calib_size=s.hd_calib_size, method=s.export_method,
                            qat_steps=s.qat_steps, max_psnr_drop=0.5, force=True, internal_scale=s.hd_scale,
                            progress=demo.progress)
    info["int8_hd"] = {"files": {k: str(v) for k, v in res.files.items()}, "accuracy": res.sidecar.get("accuracy"),
                       "method": s.export_method, "internal_scale": s.hd_scale}
    return info


# ---------------------------------------------------------------- the stream
def fog_frames(data_dir: "str | Path") -> List[Path]:
    """The fog drive's ``frame_<k>_hazy.jpg`` in numeric order (empty when ``DIR`` has none)."""
    folder = Path(data_dir) / FOG_FRAMES
    if not folder.is_dir():
        return []

    def index(p: Path) -> int:
        try:
            return int(p.name.split("_")[1])
        except (IndexError, ValueError):
            raise EdgehazeError(f"{p}: not named frame_<number>_hazy.jpg (the fog drive's frame names)") from None

    return sorted(folder.glob("frame_*_hazy.jpg"), key=index)


def fit_frame(bgr: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """``bgr`` scaled to cover ``size`` (H, W) and centre-cropped: a 16:9 frame becomes 4:3 without stretching."""
    import cv2

    h, w = int(size[0]), int(size[1])
    if bgr.shape[:2] == (h, w):
        return bgr
    f = max(h / bgr.shape[0], w / bgr.shape[1])
    nh, nw = max(h, int(round(bgr.shape[0] * f))), max(w, int(round(bgr.shape[1] * f)))
    scaled = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    y0, x0 = (nh - h) // 2, (nw - w) // 2
    return np.ascontiguousarray(scaled[y0:y0 + h, x0:x0 + w])


def write_clips(frames: Sequence[Path], clips: Dict[str, Tuple[Path, Tuple[int, int]]],
                fps: float) -> Dict[str, Dict[str, Any]]:
    """One mp4v video per ``{label: (path, (H, W))}`` from the same frames, each written to a temporary name and renamed."""
    import cv2

    if len(frames) < 2:
        raise EdgehazeError(f"{frames[0].parent if frames else FOG_FRAMES}: need at least 2 frames for a video")
    writers, tmps = {}, {}
    try:
        for label, (path, (h, w)) in clips.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmps[label] = path.with_name(f".{path.stem}.partial{path.suffix}")
            writers[label] = cv2.VideoWriter(str(tmps[label]), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
            if not writers[label].isOpened():
                raise EdgehazeError(f"{path}: OpenCV cannot write mp4v video here")
        for f in frames:
            bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if bgr is None:
                raise EdgehazeError(f"{f}: not a readable image (the fog drive's frames are JPEGs)")
            for label, (_path, size) in clips.items():
                writers[label].write(fit_frame(bgr, size))
    finally:
        for wr in writers.values():
            wr.release()
    for label, (path, _size) in clips.items():
        os.replace(tmps[label], path)
    return {label: {"path": str(path), "frames": len(frames), "size": list(size), "fps": fps,
                    "source": str(frames[0].parent), "kind": "real fog drive"}
            for label, (path, size) in clips.items()}


def _stage_stream(demo: RealDemo) -> Dict[str, Any]:
    """The 640x480 artifact on the VGA clip, the 1080p artifact on the 1080p clip: FPS on a null sink, then a side-by-side video."""
    s = demo.sizes
    folder = demo.out / "stream"
    clips = {"vga": (folder / "hazy-vga.mp4", tuple(s.video_size)), "1080p": (folder / "hazy-1080p.mp4",
                                                                            tuple(s.video_hd_size))}
    frames = fog_frames(demo.data_dir)
    if frames:
        videos = write_clips(frames[:s.video_frames] if s.video_frames else frames, clips, s.video_fps)
    else:
        print(f"{demo.data_dir / FOG_FRAMES}: not there; streaming the procedural video instead")
        videos = {label: {**D.make_hazy_video(path, s.video_frames or 60, size, seed=7, fps=s.video_fps),
                          "kind": "procedural (no video/ in the data folder)"} for label, (path, size) in clips.items()}
    runs: Dict[str, Any] = {}
    load_before = os.getloadavg()[0]
    for label, model in (("vga", demo.onnx_int8), ("1080p", demo.onnx_hd)):
        video = videos[label]["path"]
        runs[label] = D.run_stream(model, video, "null", folder / f"stats-{label}.json", demo.threads,
                                   folder / f"stream-{label}.log", side_by_side=False)
        runs[label]["label"] = f"{model.name} on the {label} clip (null sink)"
        runs[f"{label}_video"] = D.run_stream(model, video, folder / f"dehazed-{label}.mp4",
                                              folder / f"stats-{label}-video.json", demo.threads,
                                              folder / f"stream-{label}-video.log")
        runs[f"{label}_video"]["label"] = f"{model.name} on the {label} clip (writing the side-by-side mp4)"
    return {"videos": videos, "runs": runs, "load_avg": [load_before, os.getloadavg()[0]]}


STAGES: List[D.Stage] = [
    D.Stage("data", "re-hazing the real RGB-D scenes (split by scene)", _stage_data,
            lambda d: [d.data / "done.json"]),
    D.Stage("teacher", "training the depth teacher on real RGB-D", _stage_teacher,
            lambda d: [d.out / "teacher" / "quality.json", d.teacher_weights / "config.json"]),
    D.Stage("rgb", "training stage 1 (RGB only)", D._stage_rgb,
            lambda d: [d.out / "stage1" / "rgb" / "last.safetensors"]),
    D.Stage("fused", "training stage 2 (fused with the teacher) + RGB-only control", D._stage_fused,
            lambda d: [d.out / "stage2" / "fused" / "last.safetensors", d.out / "control" / "rgb" / "last.safetensors"]),
    D.Stage("distill", "distilling the student depth encoder", D._stage_distill, lambda d: [d.student_ckpt]),
    D.Stage("export", "exporting the student: FP32, INT8, INT8 for 1080p", _stage_export,
            lambda d: [d.onnx_fp32, d.onnx_int8, d.onnx_hd]),
    D.Stage("stream", "streaming the fog drive at 640x480 and 1080p through the runtime", _stage_stream,
            lambda d: [d.out / "stream" / "stats-vga.json", d.out / "stream" / "stats-1080p.json"]),
    D.Stage("report", "writing the report", lambda d: write_real_report(d),
            lambda d: [d.out / "report.md", d.out / "report.json"]),
]
RealDemo.stages = STAGES
assert [s.name for s in STAGES] == D.STAGE_NAMES, "the real demo's stages keep the procedural demo's names"


# ---------------------------------------------------------------- the report
def real_quality(demo: RealDemo, folder: Path) -> Tuple[Dict[str, Any], str, List[str]]:
    """The real test sets of ``DIR`` scored for the hazy input, the prior and the student (FP32, INT8) through the runtime.

    Returns ``(per set and method: Scores as dicts, the markdown table, notes)``.
    """
    from edgehaze.data.evaluation import contact_sheet
    from edgehaze.imageio import write_image
    from edgehaze.quality import baseline_methods, benchmark_sets, markdown_table, score_set

    s = demo.sizes
    notes: List[str] = []
    try:
        sets = [e for e in benchmark_sets(demo.data_dir, s.quality_sets) if e.hazy]
    except EdgehazeError as exc:
        return {}, "", [f"no real test set scored: {exc}"]
    methods = {**baseline_methods(),
               "student FP32": D._runtime_runner(demo.onnx_fp32, demo.threads),
               "student INT8": D._runtime_runner(demo.onnx_int8, demo.threads)}
    stats = demo.data_dir / "metrics"
    if not stats.is_dir():
        notes.append(f"{stats}: not there, so FADE and NIQE are not computed on the real photos")
    results: Dict[str, Any] = {}
    for evalset in sets:
        scores, sheet = score_set(methods, evalset, stats_dir=stats if stats.is_dir() else None,
                                  max_side=s.quality_max_side if not evalset.has_gt else 0, keep_outputs=4,
                                  progress=demo.progress)
        results[evalset.name] = scores
        if sheet:
            write_image(folder / f"sheet-{evalset.name}.png", contact_sheet(sheet))
    table = markdown_table(results) if results else ""
    return {k: {m: asdict(v) for m, v in per.items()} for k, per in results.items()}, table, notes


def _synth_rows(demo: RealDemo, folder: Path) -> Optional[Dict[str, Any]]:
    """The procedural demo's models table on ``OUT/data``'s synthetic test split (None when it has no test split)."""
    from edgehaze.data.datasets import PairedDataset
    from edgehaze.data.layouts import find_pairs

    if not (demo.data / "test" / "hazy").is_dir():
        return None
    dataset = PairedDataset(find_pairs(demo.data, layout="dehazeformer", split="test"), crop=None, flip=False)
    rows, loaded = D.load_model_rows(demo)
    D.score_model_rows(demo, rows, loaded, dataset, folder)
    sheet = D.model_sheet(demo, dataset, loaded, folder)
    verdict, gains = D._verdict(rows)
    return {"rows": rows, "verdict": verdict, "gains_db": gains, "images": len(dataset), "contact_sheet": str(sheet)}


def write_real_report(demo: RealDemo) -> Dict[str, Any]:
    """``report.md`` + ``report.json``: real test sets against the prior, the synthetic test split, teacher, stream."""
    from edgehaze.bench import machine_info

    folder = demo.out / "report"
    quality, table, notes = real_quality(demo, folder)
    synth = _synth_rows(demo, folder)
    stages, total = D.stage_times(demo)
    report = {
        "mode": demo.mode, "data_dir": str(demo.data_dir), "eval_size": list(D.EVAL_SIZE),
        "data": demo.result("data"), "quality": quality, "quality_table": table, "quality_notes": notes,
        "synthetic_test": synth, "teacher": {k: demo.result("teacher").get(k) for k in
                                             ("untrained", "trained", "ramp", "train_images", "steps", "input_size",
                                              "size")},
        "export": demo.result("export"), "stream": demo.result("stream"), "stages": stages,
        "total_wall_s_before_report": total, "sizes": asdict(demo.sizes), "threads": demo.threads,
        "machine": machine_info(demo.threads),
        "checkpoints": {"rgb": str(demo.stage1_ckpt), "fused": str(demo.stage2_ckpt),
                        "student": str(demo.student_ckpt), "chosen_by": "last step (no checkpoint selection)"},
    }
    if synth is not None:  # the procedural table's lines read these
        report.update(rows=synth["rows"], verdict=synth["verdict"])
    D.write_report_files(demo, report, real_markdown(report))
    return {"report": str(demo.out / "report.md"), "sets": list(quality)}


def _ordinal(k: int) -> str:
    return f"{k}{'th' if 10 <= k % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(k % 10, 'th')}"


def _protocol_lines(r: Dict[str, Any]) -> List[str]:
    data = r.get("data") or {}
    counts = data.get("counts") or {}
    srcs = ", ".join(f"`{n}/` {v['scenes']} scenes ({v['layout']})" for n, v in (data.get("sources") or {}).items())
    sets = ", ".join(f"`{k}`" for k in r.get("quality") or {}) or "none"
    variants = data.get("variants")
    times = (", ".join(f"`{n}/` {k}" for n, k in variants.items()) if isinstance(variants, dict) else str(variants))
    held = []
    for name, sp in (data.get("splits") or {}).items():
        test, val = sp.get("test") or [], sp.get("val") or []
        if test or val:
            show = (lambda xs: ", ".join(xs) if len(xs) <= 4 else f"{len(xs)} ({xs[0]}, ...)")
            held.append(f"`{name}/` test {show(test) if test else 'none'}, validation {show(val) if val else 'none'}")
    shares = data.get("train_shares") or {}
    share_txt = "; ".join(f"`{n}/` {v['pairs']} ({100 * v['share']:.0f}%, {v['clear_frames']} clear frames)"
                          for n, v in shares.items())
    return [
        f"Data: `{r['data_dir']}` ({srcs}); each scene re-hazed ({times}) time(s) plus the sources' "
        f"own hazy images: {counts.get('train')} train, {counts.get('val')} val, {counts.get('test')} test pairs "
        "in `data/`." + (f" Training pairs per source: {share_txt}." if share_txt else ""),
        "",
        "**Protocol.** Splits are by scene and written down in `data/done.json` ("
        + ("; ".join(held) if held else "no held-out scene") + f"); of the other scenes every "
        f"{_ordinal(r['sizes']['val_scene_every'])} validates unless its source has its own rule. The test scenes "
        f"and every image of the real test sets ({sets}) were never trained on: not by the dehazer, the depth "
        "teacher or the INT8 calibration. Validation only logs; no checkpoint is chosen on any split: every model "
        "is its stage's **last** one (`last.safetensors`; the student `distill/student.safetensors`, its final "
        "step). The `fohis-outdoor` pair also served as validation when the outdoor recipe was chosen.",
        "",
    ]


def _teacher_lines(r: Dict[str, Any]) -> List[str]:
    t = r.get("teacher") or {}
    if not t.get("trained"):
        return []
    lines = ["## Depth teacher (real RGB-D)", "",
             f"Depth Anything V2 architecture (`tiny`), {t.get('steps')} steps on {t.get('train_images')} training "
             f"scenes (input side {t.get('input_size')}, images {t.get('size')}); inverse depth after least-squares "
             "scale and shift. Parts with no scenes are left out. The ramp is a depth-blind guess (inverse depth "
             "growing down the frame), the line a teacher has to beat.", "",
             "| part | images | AbsRel | delta<1.25 | AbsRel untrained | delta<1.25 untrained | AbsRel ramp |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for part, q in t["trained"].items():
        if q.get("images"):
            u, ramp = t["untrained"][part], ((t.get("ramp") or {}).get(part) or {})
            lines.append(f"| {part} | {q['images']} | {q['abs_rel']:.3f} | {q['delta1']:.3f} | {u['abs_rel']:.3f} | "
                         f"{u['delta1']:.3f} | {D._num(ramp.get('abs_rel'), '.3f')} |")
    return lines + [""]


def _stream_lines(r: Dict[str, Any]) -> List[str]:
    st = r.get("stream") or {}
    if not st.get("runs"):
        return []
    v = st.get("videos") or {}
    clips = "; ".join(f"{k}: {x.get('frames')} frames of {x['size'][1]}x{x['size'][0]} ({x.get('kind')})"
                      for k, x in v.items())
    return ["## Stream (torch-free runtime, `python runtime/stream.py`)", "", f"Input: {clips}.", "",
            *D.stream_table_lines(st["runs"].values(), first="run"), "",
            "The null-sink rows are the stream's own rate (decode, infer, nothing written); the video rows also "
            "encode the side-by-side mp4. Stage times are medians. Load average (1 min) before -> after: "
            + " -> ".join(D._num(x, ".2f") for x in st.get("load_avg") or []) + " (other work on the machine lowers "
            "these FPS).", ""]


def real_markdown(r: Dict[str, Any]) -> str:
    """The real-data demo's report."""
    lines = [f"# edgehaze demo report ({r['mode']})", "", *_protocol_lines(r),
             "## Real test sets", "",
             "Hazy input, the dark-channel prior (He et al.; `edgehaze.dcp`) and the student as exported (FP32 and "
             "INT8, through the shipped runtime), on the same images in the same run. Halo: grey levels of local "
             "error within 6 px of strong edges (lower is better); FADE/NIQE on real photos without ground truth.", ""]
    lines += [r["quality_table"], ""] if r.get("quality_table") else []
    lines += [f"Note: {n}." for n in r.get("quality_notes") or []] + [""]
    from edgehaze.quality import target_lines

    targets = target_lines(r.get("quality") or {})
    if targets:
        lines += ["### Targets (the INT8 student)", "", *targets, ""]
    synth = r.get("synthetic_test")
    if synth is not None:
        h, w = r["eval_size"]
        lines += ["## Synthetic test split", "",
                  f"`data/test`: {synth['images']} images, the test scenes re-hazed by the recipe. Params and FLOPs at "
                  f"{w}x{h}; CPU latency is the median of {r['sizes']['latency_runs']} runs at {w}x{h} "
                  f"(threads: {r['threads']}).", "", *D.model_table_lines(r)]
    else:
        lines += ["No synthetic test split (the data folder has no FRIDA2 test scene).", ""]
    lines += _teacher_lines(r) + _stream_lines(r) + D.stage_time_lines(r)
    return "\n".join(lines)


__all__ = ["REAL", "REAL_FULL", "REAL_QUICK", "RealDemo", "RealSizes", "STAGES", "find_sources", "fog_frames", "fit_frame",
           "real_quality", "resolve_data_dir", "write_clips", "write_real_report"]
