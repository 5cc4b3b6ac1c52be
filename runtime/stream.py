"""Dehaze a camera feed, a network stream, a video or an image folder: ``python runtime/stream.py``.

    python runtime/stream.py --input hazy.mp4 --output out.mp4     # the shipped default model (edgehaze models)
    python runtime/stream.py --model model.onnx --input csi://0 --output display://0
    python runtime/stream.py --model model.onnx --input rtsp://user:pw@cam/stream --output out.mp4 \\
        --depth-every 4 --stats-json stats.json
    python runtime/stream.py --model model.onnx --input clip.mp4 --output frames/ --side-by-side

URIs and ``--input-*`` options follow jetson-utils (videoSource/videoOutput).
A capture thread reads ahead (live sources drop stale frames, files do not),
the main thread times five stages per frame (capture, pre, infer, post,
write) and prints FPS and median milliseconds every ``--stats-interval``
seconds and at the end; ``--stats-json`` gets the same numbers. Ctrl-C and
SIGTERM stop cleanly: the video file is finalised and the stats written.
Needs numpy, onnxruntime (or tensorrt) and OpenCV; never torch.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

if not __package__:  # run as a script: make the runtime folder importable as a package
    _here = Path(__file__).resolve().parent
    if sys.path and Path(sys.path[0] or ".").resolve() == _here:
        sys.path.pop(0)  # our module names (errors, api, ...) must not shadow top-level modules
    sys.path.insert(0, str(_here.parent))
    importlib.import_module(_here.name)
    __package__ = _here.name

import numpy as np  # noqa: E402

from .api import Dehazer, Options, create  # noqa: E402
from .capture import EOF, ERROR, CaptureThread  # noqa: E402
from .errors import RuntimeError_, Status, mask_text  # noqa: E402
from .gst import FLIP_METHODS, INPUT_CODECS, OUTPUT_CODECS  # noqa: E402
from .sinks import Sink, check_output, check_writable_folder, open_sink  # noqa: E402
from .sources import Source, _cv2, open_source  # noqa: E402
from .temporal import DEFAULT_STRENGTH  # noqa: E402

STAGES = ("capture", "pre", "infer", "post", "write")
_KEEP = 20000  # samples per stage kept for medians (bounded memory on endless streams)


def log(msg: str) -> None:
    """Every line the tool prints goes through here: credentials in URIs are masked."""
    print(f"[stream] {mask_text(msg)}", file=sys.stderr, flush=True)


class StreamStats:
    """Per-stage timings (ms) and the stream's counters; ``to_dict`` is the stats JSON."""

    def __init__(self) -> None:
        self.samples = {s: deque(maxlen=_KEEP) for s in STAGES}
        self.frames = 0
        self.t_start = time.perf_counter()
        self.t_end: float | None = None
        self.resolution_changes = 0
        self.frame_size: list[int] | None = None
        self.stopped_by = "running"
        self.extra: dict = {}

    def add(self, stage: str, ms: float) -> None:
        self.samples.setdefault(stage, deque(maxlen=_KEEP)).append(ms)  # "flicker" only with --flicker-stats

    @property
    def wall_s(self) -> float:
        return (self.t_end or time.perf_counter()) - self.t_start

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def stage_summary(self) -> dict:
        out = {}
        for stage, values in self.samples.items():
            a = np.asarray(values, dtype=np.float64)
            out[stage] = ({"median": float(np.median(a)), "mean": float(a.mean()),
                           "p90": float(np.percentile(a, 90)), "max": float(a.max()), "count": int(a.size)}
                          if a.size else {"median": 0.0, "mean": 0.0, "p90": 0.0, "max": 0.0, "count": 0})
        return out

    def line(self) -> str:
        med = self.stage_summary()
        stages = "  ".join(f"{s} {med[s]['median']:.2f}" for s in STAGES)
        ex = self.extra
        return (f"frames {self.frames}  fps {self.fps:.1f}  |  {stages}  ms (median)  |  dropped "
                f"{ex.get('dropped', 0)}  undecodable {ex.get('undecodable', 0)}  reopens {ex.get('reopens', 0)}")

    def to_dict(self) -> dict:
        return {"frames": self.frames, "wall_s": round(self.wall_s, 4), "fps": round(self.fps, 3),
                "stages_ms": self.stage_summary(), "resolution_changes": self.resolution_changes,
                "frame_size": self.frame_size, "stopped_by": self.stopped_by, **self.extra}


def write_json_atomic(path: str | Path, data: dict) -> None:
    """Write ``data`` to a temp file beside ``path`` and rename it; IO (temp file removed) when that fails."""
    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise RuntimeError_(Status.IO, f"{path}: cannot write the stats ({exc.strerror or exc})") from None


class Stream:
    """Capture -> pre -> infer -> post -> write, with buffers allocated once per frame size."""

    def __init__(self, dehazer: Dehazer, source: Source, sink: Sink, *, side_by_side: bool = False,
                 max_frames: int | None = None, stats_interval: float = 5.0, stats_json: str | None = None,
                 capture_options: dict | None = None, info: dict | None = None,
                 flicker_side: int | None = None) -> None:
        self.dehazer, self.source, self.sink = dehazer, source, sink
        self.side_by_side, self.max_frames = side_by_side, max_frames
        self.stats_interval, self.stats_json = stats_interval, stats_json
        self.capture_options = capture_options or {}
        self.stats = StreamStats()
        self.info = info or {}
        self.stop_event = threading.Event()
        self.stop_reason = "signal"
        self._shape = None
        self._in_rgb = self.dehazer.channel_order != "BGR"
        self._out_rgb = self.dehazer.meta["output"]["channel_order"] != "BGR"
        # --flicker-stats: warping error of input and output (runtime/flicker.py), on frames of this longer side
        self.flicker = None
        if flicker_side:
            from .flicker import WarpingError
            self.flicker = WarpingError(max_side=flicker_side)

    def request_stop(self, reason: str = "signal") -> None:
        self.stop_reason = reason
        self.stop_event.set()

    def _buffers(self, frame: np.ndarray) -> None:
        """(Re)allocate the per-size buffers; the runtime re-binds because their address changes."""
        h, w = frame.shape[:2]
        if self._shape is not None:
            self.stats.resolution_changes += 1
            log(f"resolution changed to {w}x{h}; buffers re-allocated")
        self._shape = frame.shape
        mh, mw = self.dehazer.fixed_size or (h, w)
        self._model_in = np.empty((mh, mw, 3), np.uint8)   # model-size, model channel order
        self._out = np.empty((mh, mw, 3), np.uint8)        # dehazer output
        self._out_bgr = np.empty((mh, mw, 3), np.uint8) if self._out_rgb else self._out
        self._resize = (mh, mw) != (h, w)
        self._sbs = np.empty((mh, 2 * mw, 3), np.uint8) if self.side_by_side else None
        bgrx = frame.ndim == 3 and frame.shape[2] == 4  # a BGRx appsink (runtime/gst.py)
        self._small4 = np.empty((mh, mw, 4), np.uint8) if bgrx and self._resize else None
        self.stats.frame_size = [w, h]

    def _pre(self, frame: np.ndarray) -> np.ndarray:
        cv2 = _cv2()
        src = frame
        if frame.shape[2] == 4:  # BGRx from nvvidconv: one conversion, straight into the artifact's order
            code = cv2.COLOR_BGRA2RGB if self._in_rgb else cv2.COLOR_BGRA2BGR
            if self._resize:
                src = cv2.resize(frame, (self._model_in.shape[1], self._model_in.shape[0]), dst=self._small4,
                                 interpolation=cv2.INTER_AREA)
            return cv2.cvtColor(src, code, dst=self._model_in)
        if self._resize:
            src = cv2.resize(frame, (self._model_in.shape[1], self._model_in.shape[0]),
                             dst=self._model_in, interpolation=cv2.INTER_AREA)
            if self._in_rgb:
                cv2.cvtColor(src, cv2.COLOR_BGR2RGB, dst=self._model_in)
            return self._model_in
        if self._in_rgb:  # OpenCV frames are BGR; convert only when the artifact wants RGB
            return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB, dst=self._model_in)
        return frame

    def _post(self, frame_bgr: np.ndarray) -> np.ndarray:
        cv2 = _cv2()
        out = self._out
        if self._out_rgb:
            out = cv2.cvtColor(self._out, cv2.COLOR_RGB2BGR, dst=self._out_bgr)
        if self._sbs is None:
            return out
        w = out.shape[1]
        left = self._sbs[:, :w]
        if frame_bgr.shape[2] == 4:
            small = cv2.resize(frame_bgr, (w, out.shape[0]), dst=self._small4, interpolation=cv2.INTER_AREA) \
                if self._resize else frame_bgr
            cv2.cvtColor(small, cv2.COLOR_BGRA2BGR, dst=left)
        elif self._resize:
            cv2.resize(frame_bgr, (w, out.shape[0]), dst=left, interpolation=cv2.INTER_AREA)
        else:
            np.copyto(left, frame_bgr)
        np.copyto(self._sbs[:, w:], out)
        return self._sbs

    def _counters(self, cap: CaptureThread) -> None:
        self.stats.extra.update(
            captured=cap.captured, dropped=cap.dropped, undecodable=cap.undecodable, reopens=cap.reopens,
            loops=cap.loops_done, output_resized=self.sink.resized, output_frames=self.sink.frames,
            depth_every=self.dehazer.depth_every, depth_refreshes=self.dehazer.depth_refreshes, **self.info)
        self.stats.extra.update(video_counters(self.dehazer))
        if self.flicker is not None:
            self.stats.extra["flicker"] = self.flicker.result()

    def _report(self, cap: CaptureThread) -> None:
        self._counters(cap)
        log(self.stats.line())
        if self.stats_json:
            write_json_atomic(self.stats_json, self.stats.to_dict())

    def run(self) -> StreamStats:
        """Run until EOF, ``max_frames``, a stop request or an error; always finalise the sink and stats."""
        cap = CaptureThread(self.source, log=log, **self.capture_options)
        cap.start()
        stats, perf = self.stats, time.perf_counter
        stats.t_start = last_report = perf()
        error = None
        try:
            while not self.stop_event.is_set():
                if self.max_frames is not None and stats.frames >= self.max_frames:
                    self.stop_reason = "max_frames"
                    break
                item = cap.get(timeout=0.1)
                if item is None:
                    continue
                if item.kind == EOF:
                    self.stop_reason = "end_of_input"
                    break
                if item.kind == ERROR:
                    self.stop_reason = "error"
                    error = item.error
                    break
                frame = item.frame
                if frame.shape != self._shape:
                    self._buffers(frame)
                t0 = perf()
                model_in = self._pre(frame)
                t1 = perf()
                self.dehazer.run(model_in, out=self._out)
                t2 = perf()
                result = self._post(frame)
                t3 = perf()
                keep_going = self.sink.write(result)
                t4 = perf()
                cap.give_back(frame)
                stats.frames += 1
                stats.add("capture", item.capture_ms)
                stats.add("pre", (t1 - t0) * 1e3)
                stats.add("infer", (t2 - t1) * 1e3)
                stats.add("post", (t3 - t2) * 1e3)
                stats.add("write", (t4 - t3) * 1e3)
                if self.flicker is not None:  # its own stage: optical flow is not part of dehazing
                    self.flicker.add(model_in, {"output": self._out})  # both in the artifact's channel order
                    stats.add("flicker", (perf() - t4) * 1e3)
                if not keep_going:
                    self.stop_reason = "display_closed"
                    break
                if self.stats_interval > 0 and t4 - last_report >= self.stats_interval:
                    last_report = t4
                    self._report(cap)
        except BaseException:
            self.stop_reason = "error"
            raise
        finally:
            cap.stop()
            stats.t_end = perf()
            stats.stopped_by = self.stop_reason
            try:
                self.sink.close()
            finally:
                self._report(cap)
                cap.join(timeout=2.0)
                if not cap.is_alive():  # a read blocked in the driver keeps its source; the process exit frees it
                    self.source.close()
        if error is not None:
            raise error
        return stats


def video_counters(dehazer: Dehazer) -> dict:
    """Stats of the video mode (runtime/temporal.py): smoothing strength, resets, scene cuts, bypass decisions."""
    t, g = getattr(dehazer, "_temporal", None), getattr(dehazer, "_gate", None)
    out = {"temporal": dehazer.options.temporal, "scene_cuts": getattr(dehazer, "scene_cuts", 0),
           "temporal_resets": t.resets if t is not None else 0, "bypass": g is not None}
    if g is not None:
        out.update(bypassed=g.bypassed, bypass_toggles=g.toggles, haze_score=round(g.score, 4),
                   bypass_state="clear" if g.clear else "hazy")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="runtime/stream.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--doctor", action="store_true",
                   help="print what this machine can run (OpenCV build, GStreamer elements, onnxruntime providers, "
                        "TensorRT/CUDA versions, GPU, cameras) with warnings, and exit")
    p.add_argument("--model", help="artifact (NAME.onnx, NAME.engine, NAME.json or its folder) or a shipped model "
                                   "name (edgehaze-s, edgehaze-s@1080; runtime/models/); default: the shipped "
                                   "default model")
    p.add_argument("--input", help="0, /dev/video0, v4l2:///dev/video0, csi://0, rtsp://..., "
                                   "file://..., a video, an image folder or a glob (required)")
    p.add_argument("--output", default=None,
                   help="display://0 (default unless --headless), video file (.mp4/.avi/.mkv), image folder "
                        "or pattern (frames/%%06d.png), null")
    p.add_argument("--input-width", type=int, default=None)
    p.add_argument("--input-height", type=int, default=None)
    p.add_argument("--input-rate", type=float, default=None,
                   help="camera frame rate; for files, play at this rate instead of as fast as possible")
    p.add_argument("--input-loop", type=int, default=0, help="files: extra passes (-1 = forever)")
    p.add_argument("--input-timeout", type=float, default=5.0, help="network open/read timeout in seconds")
    p.add_argument("--headless", action="store_true", help="no window: display:// outputs become null")
    p.add_argument("--side-by-side", action="store_true", help="write input | dehazed next to each other")
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--stats-json", default=None, help="write timings and counters here (JSON)")
    p.add_argument("--stats-interval", type=float, default=5.0, help="seconds between progress lines (0: none)")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    p.add_argument("--spin", action="store_true",
                   help="let onnxruntime's threads busy-wait between ops (off by default: it starves capture)")
    p.add_argument("--provider", default="auto", help="auto | trt | cuda | cpu (onnxruntime provider)")
    p.add_argument("--graph-opt", default="all", choices=("disable", "basic", "extended", "all"))
    p.add_argument("--save-optimized", default=None, help="save onnxruntime's optimised graph to this path")
    p.add_argument("--depth-every", type=int, default=1,
                   help="recompute depth features every N frames (N>1 needs the two-graph export)")
    p.add_argument("--temporal", type=float, default=None, metavar="STRENGTH",
                   help="causal smoothing of the low-resolution maps, strength in [0, 1) (edge-* fused ONNX graphs, "
                        f"needs the onnx package); default {DEFAULT_STRENGTH} where the model allows it, else per "
                        "frame; 0: off (per-frame output, bit-exact)")
    p.add_argument("--bypass", action="store_true",
                   help="pass clear frames through unchanged (dark-channel haze score with hysteresis)")
    p.add_argument("--flicker-stats", type=int, nargs="?", const=480, default=None, metavar="SIDE",
                   help="add the warping error of input and output (Lai et al. 2018) to the stats, on frames "
                        "resized to this longer side (default 480); costs optical flow per frame")
    p.add_argument("--queue-size", type=int, default=2, help="frames buffered ahead of inference")
    p.add_argument("--max-reopen", type=int, default=5, help="consecutive reopen attempts of a lost live source")
    p.add_argument("--reopen-backoff", type=float, default=0.5, help="first reopen delay in s (doubles, max 8 s)")
    p.add_argument("--input-flip", default="none", choices=tuple(FLIP_METHODS),
                   help="flip/rotate the input (CSI and GStreamer-decoded inputs: in nvvidconv; others on the CPU)")
    p.add_argument("--input-codec", default=None, choices=INPUT_CODECS,
                   help="cameras: the pixel format asked for (mjpeg is the default request, yuyv raw) through "
                        "GStreamer hardware decoding when present; rtsp://: h264|h265 decoded by nvv4l2decoder")
    p.add_argument("--output-codec", default=None,
                   help=f"{'|'.join(OUTPUT_CODECS)} (hardware encoder through GStreamer when present, else "
                        "software x264enc/..., else OpenCV's FOURCC) or a 4-character FOURCC; default: by extension")
    p.add_argument("--output-bitrate", type=int, default=4000, help="kbit/s for GStreamer encoders (default 4000)")
    p.add_argument("--output-fps", type=float, default=None, help="video output frame rate (default: the input's)")
    return p


def default_smoothing(dehazer: Dehazer) -> None:
    """``--temporal`` not given: smooth at :data:`DEFAULT_STRENGTH` where the opened model allows it.

    A TensorRT engine, a graph without correction maps or a missing onnx
    package streams per frame, with one line saying why and how to choose.
    GPU backends too, unless asked: the smoothing graph is a second session
    (with ORT's TensorRT provider, a second engine build at start-up), which
    has not been measured on a GPU.
    """
    if dehazer.device != "cpu":
        log(f"video smoothing off on {dehazer.backend_name} by default (--temporal {DEFAULT_STRENGTH} turns it on)")
        return
    try:
        dehazer.set_temporal(DEFAULT_STRENGTH)
        log(f"video smoothing {DEFAULT_STRENGTH} (the default; --temporal 0 for per-frame output)")
    except RuntimeError_ as exc:
        if exc.code not in (Status.UNSUPPORTED, Status.BACKEND_UNAVAILABLE):
            raise
        log(f"video smoothing off: {exc}")


def check_outputs(args: argparse.Namespace) -> None:
    """IO now, not after the model loaded and a frame was computed, when ``--output`` or ``--stats-json``
    cannot be written (runtime/sinks.py: check_output)."""
    check_output(args.output or ("null" if args.headless else "display://0"), codec=args.output_codec,
                 headless=args.headless)
    if args.stats_json:
        stats = Path(args.stats_json)
        if stats.is_dir():
            raise RuntimeError_(Status.IO, f"--stats-json {stats}: is a folder; give a file name")
        check_writable_folder(stats.parent, f"--stats-json {stats}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.doctor:
        from .doctor import main as doctor
        return doctor()
    missing = [f"--{k}" for k in ("input",) if not getattr(args, k)]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)} (or --doctor)")
    stream, previous = None, {}
    try:
        for flag in ("input_width", "input_height", "max_frames", "queue_size"):
            value = getattr(args, flag)
            if value is not None and value < 1:
                raise RuntimeError_(Status.BAD_ARGUMENT, f"--{flag.replace('_', '-')} must be >= 1, got {value}")
        if (args.input_width is None) != (args.input_height is None):
            raise RuntimeError_(Status.BAD_ARGUMENT, "give both --input-width and --input-height")
        size = (args.input_width, args.input_height) if args.input_width else None
        if args.max_reopen < 0:
            raise RuntimeError_(Status.BAD_ARGUMENT, f"--max-reopen must be >= 0, got {args.max_reopen}")
        check_outputs(args)  # before the model loads: an output that cannot be written fails in a second
        if not args.model:
            from .zoo import default_model, describe
            args.model = default_model()
            log(f"no --model: the shipped default {describe(args.model)} (--model NAME_OR_PATH for another)")
        dehazer = create(args.model, Options(provider=args.provider, threads=args.threads, spin=args.spin,
                                              graph_optimization=args.graph_opt,
                                              optimized_model_path=args.save_optimized,
                                              depth_every=args.depth_every,
                                              temporal=args.temporal or 0.0, bypass=args.bypass))
        log(f"model {args.model} on {dehazer.backend_name} ({args.threads} threads), channel order "
            f"{dehazer.channel_order}, depth every {dehazer.depth_every} frame(s)")
        if hasattr(dehazer, "on_variant"):  # a shipped model by name: say when the frame size picks another variant
            dehazer.on_variant = log
        if args.temporal is None:
            default_smoothing(dehazer)
        source = open_source(args.input, width=args.input_width, height=args.input_height,
                             rate=args.input_rate, timeout_s=args.input_timeout, flip=args.input_flip,
                             codec=args.input_codec)
        output = args.output or ("null" if args.headless else "display://0")
        fps = args.output_fps or args.input_rate
        if fps is None and not source.live and hasattr(source, "fps"):  # never open a camera twice
            source.open()
            fps = source.fps or None
            source.close()
        sink = open_sink(output, fps=fps or 30.0, headless=args.headless, codec=args.output_codec, log=log,
                         bitrate_kbps=args.output_bitrate)
        info = {"model": str(args.model), "backend": dehazer.backend_name, "input": source.uri,
                "output": sink.uri, "live": source.live, "threads": args.threads}
        stream = Stream(dehazer, source, sink, side_by_side=args.side_by_side, max_frames=args.max_frames,
                        stats_interval=args.stats_interval, stats_json=args.stats_json, info=info,
                        capture_options=dict(queue_size=args.queue_size, max_reopen=args.max_reopen,
                                             backoff_s=args.reopen_backoff, loop=args.input_loop, size=size,
                                             rate=args.input_rate),
                        flicker_side=args.flicker_stats)

        def _on_signal(signum, _frame):
            name = signal.Signals(signum).name
            if stream.stop_event.is_set():  # a second signal: the user does not want to wait
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
                return
            log(f"{name}: finishing (output finalised, stats written)")
            stream.request_stop(f"signal:{name}")

        previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        log(f"streaming {source.uri} -> {sink.uri}")
        stats = stream.run()
        log(f"done ({stats.stopped_by}): {stats.line()}")
        return 0
    except RuntimeError_ as exc:
        log(f"error {exc}")
        return 2
    except OSError as exc:  # an output failure the sinks did not foresee: still one line and exit 2
        log(f"error [IO] {exc}")
        return 2
    finally:
        for sig, handler in previous.items():  # main() may run inside a host process (tests, apps)
            signal.signal(sig, handler)
        if stream is not None:
            stream.dehazer.close()


if __name__ == "__main__":
    sys.exit(main())
