"""Video outputs with jetson-utils URI conventions (needs OpenCV).

``display://0``         a window (cv2.imshow); a clear error where OpenCV has no GUI or there is no display
``out.mp4|.m4v|.mov``   video file, fourcc mp4v;  ``.avi`` MJPG;  ``.mkv`` XVID  (``codec=`` overrides: a name
                        such as h264 goes through a GStreamer encoder when present, see runtime/gst.py)
``rtsp://host:port/p``  publish to an RTSP server (GStreamer rtspclientsink); ``rtp://host:port`` UDP RTP
``folder/`` or a path without extension, ``frames/%06d.png``   numbered images
``null``                discard (benchmarks)

Files appear atomically: a video is written to ``.NAME.partial.EXT`` and
renamed on ``close()`` (also on Ctrl-C / SIGTERM), images to a temp name
and renamed one by one. Every output failure (a folder that cannot be
created, a path under a file, a folder where a file should be, a write or
rename that fails, a full disk) is ``RuntimeError_(IO)`` naming the path,
with the temporary file removed; :func:`check_output` finds what it can
before a stream starts (the stream tool calls it before loading the model). A frame whose size differs from the video's first
frame is resized to the writer's size (one file per stream; counted in
``resized``), since a video container cannot change resolution midway.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np

from .errors import RuntimeError_, Status, mask_uri
from .gst import (ENCODERS, FOURCC, MUXERS, OUTPUT_CODECS, Have, file_pipeline, gst_has, rtp_pipeline,
                  rtsp_pipeline)
from .sources import IMAGE_EXTS, _cv2, opencv_has

VIDEO_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "XVID"}


class Sink:
    uri: str = ""
    frames = 0
    resized = 0

    def write(self, frame_bgr: np.ndarray) -> bool:
        """Write one BGR frame; False asks the stream to stop (e.g. the window was closed)."""
        raise NotImplementedError

    def close(self) -> None: ...


class NullSink(Sink):
    uri = "null"

    def write(self, frame_bgr):
        self.frames += 1
        return True


def plan_video(path: str, codec: str | None, gstreamer: bool, have: Have) -> tuple[str, str]:
    """How a video file is written: ("gstreamer", codec name) or ("opencv", FOURCC).

    No ``--output-codec``: OpenCV with the extension's FOURCC (as before).
    A codec *name* (h264, h265, mjpeg, ...) goes through GStreamer when
    OpenCV has it and an encoder element for it exists (hardware first),
    else through OpenCV's FFmpeg with that codec's FOURCC. A 4-character
    code that is not a name is a FOURCC for OpenCV.
    """
    ext = Path(path).suffix.lower()
    if codec is None:
        if ext not in VIDEO_FOURCC:
            raise RuntimeError_(Status.BAD_ARGUMENT, f"{path}: unknown video extension; use one of "
                                                     f"{sorted(VIDEO_FOURCC)} or give --output-codec")
        return "opencv", VIDEO_FOURCC[ext]
    name = codec.lower()
    if name not in OUTPUT_CODECS:
        if len(codec) == 4:
            return "opencv", codec
        raise RuntimeError_(Status.BAD_ARGUMENT, f"--output-codec {codec!r}: use {'|'.join(OUTPUT_CODECS)} or a "
                                                 "4-character FOURCC")
    if gstreamer and name in ENCODERS and ext in MUXERS:
        try:
            file_pipeline(path, name, have)  # the container takes it and an encoder exists
            return "gstreamer", name
        except RuntimeError_ as exc:
            if exc.code != Status.UNSUPPORTED:  # a container/codec mismatch is the user's to fix
                raise
    return "opencv", FOURCC[name]


class VideoFileSink(Sink):
    def __init__(self, path: str | Path, fps: float, codec: str | None = None, bitrate_kbps: int = 4000,
                 log=None) -> None:
        self.path = Path(path)
        self.uri = str(self.path)
        gstreamer = codec is not None and opencv_has("GStreamer")
        self.backend, self.codec = plan_video(str(self.path), codec, gstreamer, gst_has)
        self.bitrate_kbps = int(bitrate_kbps)
        self.fps = fps if fps and fps > 0 else 30.0
        self._tmp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self._writer = None
        self._size: tuple[int, int] | None = None
        self._resize_buf: np.ndarray | None = None
        self._log = log or (lambda msg: None)

    def _make_writer(self, cv2, w: int, h: int):
        if self.backend == "gstreamer":
            element, pipeline = file_pipeline(str(self._tmp), self.codec, gst_has, self.bitrate_kbps)
            self._log(f"{self.path}: {self.codec} through GStreamer {element}")
            return cv2.VideoWriter(pipeline, cv2.CAP_GSTREAMER, 0, self.fps, (w, h), True), pipeline
        return cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*self.codec), self.fps, (w, h)), self.codec

    def _open(self, w: int, h: int) -> None:
        cv2 = _cv2()
        _mkdir(self.path.parent, self.uri)
        writer, what = self._make_writer(cv2, w, h)
        if not writer.isOpened():
            hint = ("; pip's OpenCV has no H.264/H.265 encoder: use JetPack's OpenCV (GStreamer) or mjpeg/mpeg4"
                    if self.backend == "opencv" and self.codec in ("avc1", "hvc1") else "")
            raise RuntimeError_(Status.IO, f"{self.path}: OpenCV cannot write {what} video here{hint}")
        self._writer, self._size = writer, (w, h)
        self._resize_buf = np.empty((h, w, 3), np.uint8)

    def write(self, frame_bgr):
        h, w = frame_bgr.shape[:2]
        if self._writer is None:
            self._open(w, h)
        if (w, h) != self._size:
            cv2 = _cv2()
            frame_bgr = cv2.resize(frame_bgr, self._size, dst=self._resize_buf, interpolation=cv2.INTER_AREA)
            self.resized += 1
        self._writer.write(frame_bgr)
        self.frames += 1
        return True

    def close(self) -> None:
        if self._writer is None:
            return
        self._writer.release()
        self._writer = None
        try:
            if self.frames and not self._tmp.stat().st_size:
                raise RuntimeError_(Status.IO, f"{self.path}: OpenCV wrote an empty video (disk full?)")
            os.replace(self._tmp, self.path)
        except OSError as exc:
            raise RuntimeError_(Status.IO, f"{self.path}: cannot finish the video ({exc.strerror or exc})") from None
        finally:
            _remove(self._tmp)


class NetworkSink(VideoFileSink):
    """``rtsp://host:port/path`` (publish with rtspclientsink) or ``rtp://host:port`` (udpsink), via GStreamer."""

    def __init__(self, uri: str, fps: float, codec: str | None = None, bitrate_kbps: int = 4000, log=None) -> None:
        if not opencv_has("GStreamer"):
            raise RuntimeError_(Status.UNSUPPORTED,
                                f"{mask_uri(uri)}: network output needs OpenCV built with GStreamer (GStreamer: NO "
                                "here; pip's opencv-python has none): use JetPack's OpenCV, or write a file")
        self.uri, self.fps = mask_uri(uri), fps if fps and fps > 0 else 30.0
        self.codec, self.bitrate_kbps = (codec or "h264").lower(), int(bitrate_kbps)
        self._target = uri
        self._writer, self._size, self._resize_buf = None, None, None
        self._log = log or (lambda msg: None)
        self._element, self._pipeline = self._build()  # checks elements now: fail before the first frame

    def _build(self) -> tuple[str, str]:
        m = re.fullmatch(r"(?i)rtp://([^:/]+):(\d+)/?", self._target)
        if m:
            return rtp_pipeline(m.group(1), int(m.group(2)), self.codec, gst_has, self.bitrate_kbps)
        return rtsp_pipeline(self._target, self.codec, gst_has, self.bitrate_kbps)

    def _make_writer(self, cv2, w: int, h: int):
        self._log(f"{self.uri}: {self.codec} through GStreamer {self._element}")
        return cv2.VideoWriter(self._pipeline, cv2.CAP_GSTREAMER, 0, self.fps, (w, h), True), mask_uri(self._pipeline)

    def _open(self, w: int, h: int) -> None:
        writer, _ = self._make_writer(_cv2(), w, h)
        if not writer.isOpened():
            raise RuntimeError_(Status.IO, f"{self.uri}: GStreamer cannot open the output (server down or refused?)")
        self._writer, self._size = writer, (w, h)
        self._resize_buf = np.empty((h, w, 3), np.uint8)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


class ImageFolderSink(Sink):
    def __init__(self, pattern: str | Path) -> None:
        pattern = self.pattern_of(pattern)
        self.pattern, self.uri = pattern, pattern
        _mkdir(Path(pattern % 0).parent, pattern)

    @staticmethod
    def pattern_of(target: str | Path) -> str:
        """``out/`` -> ``out/%06d.png``, ``x.png`` -> ``x_%06d.png``; a pattern must take one integer."""
        pattern = str(target)
        if "%" not in pattern:
            p = Path(pattern)
            pattern = (str(p.with_name(p.stem + "_%06d" + p.suffix)) if p.suffix.lower() in IMAGE_EXTS
                       else str(p / "%06d.png"))
        try:
            pattern % 0
        except (TypeError, ValueError):
            raise RuntimeError_(Status.BAD_ARGUMENT,
                                f"{pattern}: image output pattern needs exactly one integer field like %06d") from None
        if Path(pattern % 0).suffix.lower() not in IMAGE_EXTS:
            raise RuntimeError_(Status.BAD_ARGUMENT, f"{pattern}: image extension must be one of {IMAGE_EXTS}")
        return pattern

    def write(self, frame_bgr):
        cv2 = _cv2()
        path = Path(self.pattern % self.frames)
        tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
        try:
            if path.is_dir():
                raise RuntimeError_(Status.IO, f"{path}: is a folder, where the output pattern {self.pattern} puts "
                                               "an image; move it or choose another --output")
            _mkdir(path.parent, self.pattern)  # a pattern may put frames in several folders
            try:
                ok = cv2.imwrite(str(tmp), frame_bgr)
            except cv2.error as exc:
                raise RuntimeError_(Status.IO, f"{path}: cannot write image ({str(exc).strip().splitlines()[-1]})") \
                    from None
            if not ok:
                raise RuntimeError_(Status.IO, f"{path}: cannot write image (disk full, or no write permission?)")
            os.replace(tmp, path)
        except OSError as exc:
            raise RuntimeError_(Status.IO, f"{path}: cannot write image ({exc.strerror or exc})") from None
        finally:
            _remove(tmp)
        self.frames += 1
        return True


class DisplaySink(Sink):
    def __init__(self, uri: str, title: str = "edgehaze") -> None:
        self.uri, self.title = uri, title
        if not opencv_has_gui():
            raise RuntimeError_(Status.UNSUPPORTED,
                                f"{uri}: this OpenCV has no GUI (opencv-python-headless?); install opencv-python "
                                "or write to a file / null, or pass --headless")
        if os.name == "posix" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise RuntimeError_(Status.UNSUPPORTED,
                                f"{uri}: no display (DISPLAY/WAYLAND_DISPLAY unset; headless machine or ssh "
                                "without -X); write to a file or null, or pass --headless")
        self._shown = False

    def write(self, frame_bgr):
        cv2 = _cv2()
        cv2.imshow(self.title, frame_bgr)
        self._shown = True
        self.frames += 1
        key = cv2.waitKey(1) & 0xFF
        if key in (27, ord("q")):
            return False
        return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1

    def close(self) -> None:
        if self._shown:
            _cv2().destroyWindow(self.title)


def opencv_has_gui() -> bool:
    """True when cv2.getBuildInformation() reports a GUI backend (GUI: GTK3/QT/...; not NONE)."""
    for line in _cv2().getBuildInformation().splitlines():
        m = re.match(r"\s*GUI:\s*(\S+)", line)
        if m:
            return m.group(1).upper() != "NONE"
    return any(opencv_has(name) for name in ("GTK+", "GTK+ 2.x", "QT", "Win32 UI", "Cocoa"))


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass  # absent (the usual case) or beyond help; never hide the error being reported


def _mkdir(folder: Path, uri: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RuntimeError_(Status.IO, f"{uri}: cannot create the folder {folder} ({exc.strerror or exc})") from None


def check_writable_folder(folder: Path, uri: str) -> None:
    """IO unless files can be created in ``folder`` (or, when it does not exist yet, in the nearest folder
    above it, where it would be created). A probe folder is made and removed: permission bits say nothing
    to root, and /proc or a read-only mount refuse only when asked. Nothing else is created."""
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise RuntimeError_(Status.IO, f"{uri}: {existing} is not a folder, so nothing can be written under it")
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".edgehaze-probe-"))
    except OSError as exc:
        raise RuntimeError_(Status.IO, f"{uri}: cannot create files in {existing} ({exc.strerror or exc})") from None


def check_output(uri: str, *, codec: str | None = None, headless: bool = False) -> None:
    """What :func:`open_sink` and the first frame would find wrong with a file output, found now (before a
    model loads): a folder that cannot be created or written, a path under a file, a folder where the
    video or the first image goes. Other outputs are checked when opened."""
    kind, target = _classify(str(uri).strip(), codec)
    if kind == "video":
        path = Path(target)
        if path.is_dir():
            raise RuntimeError_(Status.IO, f"{target}: is a folder; give a video file name (e.g. {path / 'out.mp4'})")
        check_writable_folder(path.parent, target)
    elif kind == "images":
        first = Path(ImageFolderSink.pattern_of(target) % 0)
        if first.is_dir():
            raise RuntimeError_(Status.IO, f"{first}: is a folder, where the first image goes; move it or choose "
                                           "another --output")
        check_writable_folder(first.parent, target)


def _classify(uri: str, codec: str | None) -> tuple[str, str]:
    """("null" | "display" | "network" | "video" | "images", target) for an output URI."""
    if uri.lower() in ("null", "null://", "none", ""):
        return "null", uri
    if re.fullmatch(r"display://\d*", uri):
        return "display", uri
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme in ("rtsp", "rtsps", "rtp"):
        return "network", uri
    if scheme == "file":
        uri = uri[len("file://"):]
    elif scheme:
        raise RuntimeError_(Status.UNSUPPORTED,
                            f"{mask_uri(uri)}: output scheme {scheme!r} is not supported by the stream tool; "
                            "use display://0, rtsp://, rtp://, a video file, an image folder or null")
    ext = "" if uri.endswith(("/", os.sep)) else Path(uri).suffix.lower()
    if ext in VIDEO_FOURCC or ext in MUXERS or (codec and ext and ext not in IMAGE_EXTS):
        return "video", uri
    if ext in IMAGE_EXTS or ext == "" or "%" in uri:
        return "images", uri
    raise RuntimeError_(Status.BAD_ARGUMENT,
                        f"{uri}: unknown output extension {ext!r}; use a video ({', '.join(sorted(VIDEO_FOURCC))}, "
                        "or --output-codec), an image folder/pattern, display://0 or null")


def open_sink(uri: str, *, fps: float = 30.0, headless: bool = False, codec: str | None = None,
              log=None, bitrate_kbps: int = 4000) -> Sink:
    """Build the sink for an output URI (nothing is created on disk before the first frame, except an
    image output's folder)."""
    kind, target = _classify(str(uri).strip(), codec)
    if kind == "null":
        return NullSink()
    if kind == "display":
        if headless:
            if log:
                log(f"--headless: {target} replaced by null output")
            return NullSink()
        return DisplaySink(target)
    if kind == "network":
        return NetworkSink(target, fps, codec, bitrate_kbps, log)
    if kind == "video":
        return VideoFileSink(target, fps, codec, bitrate_kbps, log)
    return ImageFolderSink(target)
