"""Video sources with jetson-utils URI conventions (needs OpenCV).

``0`` / ``/dev/video0`` / ``v4l2:///dev/video0``  a V4L2 camera (live)
``csi://0``                 a MIPI CSI camera through GStreamer nvarguscamerasrc (live; Jetson)
``rtsp://``, ``rtsps://``, ``rtmp://``, ``http(s)://``, ``udp://``   a network stream (live)
``file://PATH`` or PATH     a video file, an image file, a folder of images or a glob (not live)

A source reads one frame at a time into a caller buffer and reports
:class:`Read` ``OK``/``EOF``/``BAD`` (undecodable: skip it)/``LOST``
(dropped or stalled: reopen). Retrying is the capture thread's job.
Every URI that reaches a message is masked (no credentials in logs).
"""
from __future__ import annotations

import enum
import glob
import os
import re
from pathlib import Path

import numpy as np

from .errors import RuntimeError_, Status, mask_uri
from .gst import csi_pipeline, flip_method, gst_has, network_pipeline, opencv_takes_bgrx, v4l2_pipeline

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "rtp", "srt")


class Read(enum.Enum):
    OK = "ok"
    EOF = "eof"
    BAD = "bad"    # this frame could not be decoded; the next one may be fine
    LOST = "lost"  # the source dropped or stalled; reopen it


def _cv2():
    try:
        import cv2
    except ImportError as exc:
        raise RuntimeError_(Status.BACKEND_UNAVAILABLE,
                            f"OpenCV is needed for stream I/O ({exc}); pip install opencv-python(-headless)") from None
    return cv2


def opencv_has(feature: str) -> bool:
    """True when ``cv2.getBuildInformation()`` lists ``feature`` (e.g. "GStreamer") as YES."""
    info = _cv2().getBuildInformation()
    return any(re.match(rf"\s*{re.escape(feature)}:\s*YES", line) for line in info.splitlines())


class Source:
    """Interface every source implements (tests plug in fakes with the same four methods)."""

    uri: str = ""      # masked, safe to print
    live: bool = False  # live sources drop stale frames and reopen on failure
    cpu_flip: str = "none"  # --input-flip the capture thread applies (CSI/GStreamer sources flip in nvvidconv)

    def open(self) -> None: ...
    def read(self, buf: np.ndarray | None) -> tuple[Read, np.ndarray | None]: ...
    def close(self) -> None: ...

    def rewind(self) -> None:
        """Go back to the first frame (``--input-loop``); default: reopen."""
        self.close()
        self.open()


class CaptureSource(Source):
    """cv2.VideoCapture on a camera, a GStreamer pipeline, a network stream or a video file."""

    def __init__(self, target, *, api: int, live: bool, uri: str, width: int | None = None,
                 height: int | None = None, rate: float | None = None, timeout_s: float = 5.0,
                 fourcc: str | None = None, pipeline: bool = False) -> None:
        self._target, self._api, self.live, self.uri = target, api, live, mask_uri(uri)
        self._width, self._height, self._rate, self._timeout_s = width, height, rate, timeout_s
        self._fourcc = fourcc      # V4L2: the pixel format asked of the camera (MJPG by default)
        self.pipeline = pipeline   # the target is a GStreamer pipeline string (what tests and logs may show)
        self._cap = None

    def open(self) -> None:
        cv2 = _cv2()
        params: list[int] = []
        if self.live and self._api == cv2.CAP_FFMPEG:
            ms = int(self._timeout_s * 1000)
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        # OpenCV's own warnings may echo the URI (with its password): keep them quiet while opening.
        old = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        try:
            cap = cv2.VideoCapture(self._target, self._api, params)
        except cv2.error as exc:
            raise RuntimeError_(Status.IO, f"{self.uri}: cannot open ({str(exc).strip()[:200]})") from None
        finally:
            cv2.utils.logging.setLogLevel(old)
        if not cap.isOpened():
            raise RuntimeError_(Status.IO, f"{self.uri}: cannot open (not found, refused or unsupported codec)")
        if self._api == cv2.CAP_V4L2:
            for prop, value in v4l2_properties(cv2, self._fourcc, self._width, self._height, self._rate):
                cap.set(prop, value)
        self._cap = cap

    @property
    def fps(self) -> float:
        if self._cap is None:
            return 0.0
        return float(self._cap.get(_cv2().CAP_PROP_FPS) or 0.0)

    def read(self, buf):
        if self._cap is None:
            return Read.LOST, None
        try:
            ok, frame = self._cap.read(buf) if buf is not None else self._cap.read()
        except Exception:  # cv2.error from a broken decoder
            return Read.BAD, None
        if not ok or frame is None:
            return (Read.LOST if self.live else Read.EOF), None
        return Read.OK, _as_bgr(frame)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def natural_key(path: Path) -> list:
    """Sort key in natural numeric order (``frame_2`` before ``frame_10``: unpadded frame numbers are common)."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", str(path))]


class ImageSequenceSource(Source):
    """A folder, a glob or one image file, read in natural numeric order; unreadable files are BAD (skipped)."""

    live = False

    def __init__(self, files: list[Path], uri: str) -> None:
        self._files, self.uri, self._i = files, mask_uri(uri), 0

    def open(self) -> None:
        if not self._files:
            raise RuntimeError_(Status.IO, f"{self.uri}: no image files ({', '.join(IMAGE_EXTS)})")
        self._i = 0

    def read(self, buf):
        if self._i >= len(self._files):
            return Read.EOF, None
        path = self._files[self._i]
        self._i += 1
        cv2 = _cv2()
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            return Read.BAD, None
        if buf is not None and buf.shape == frame.shape:
            buf[...] = frame
            frame = buf
        return Read.OK, frame

    def close(self) -> None:
        pass

    def rewind(self) -> None:
        self._i = 0


def _as_bgr(frame: np.ndarray) -> np.ndarray:
    """BGR, or BGRx as a BGRx appsink (nvvidconv, OpenCV >= 4.10) gives it: the stream converts that once,
    straight into the artifact's channel order, instead of here and again there."""
    if frame.ndim == 3 and frame.shape[2] in (3, 4):
        return frame
    return _cv2().cvtColor(frame, _cv2().COLOR_GRAY2BGR)


V4L2_FOURCC = {"mjpeg": "MJPG", "yuyv": "YUYV"}


def v4l2_properties(cv2, fourcc: str | None, width: int | None, height: int | None,
                    rate: float | None) -> list:
    """(property, value) pairs set on a V4L2 capture, in the order drivers need: pixel format first.

    USB cameras send raw YUYV by default, which at 1080p fits USB 2 only at
    a few frames per second; MJPG gives the full rate, so it is asked for
    unless ``--input-codec yuyv``. The size and rate follow (a driver
    resets them when the format changes).
    """
    props = [(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*(fourcc or "MJPG")))]
    if width and height:
        props += [(cv2.CAP_PROP_FRAME_WIDTH, int(width)), (cv2.CAP_PROP_FRAME_HEIGHT, int(height))]
    if rate:
        props.append((cv2.CAP_PROP_FPS, float(rate)))
    props.append((cv2.CAP_PROP_BUFFERSIZE, 1))  # we keep our own small queue of fresh frames
    return props


def flipped_shape(shape: tuple, name: str) -> tuple:
    """The frame shape after --input-flip ``name`` (quarter turns and diagonal flips swap height and width)."""
    turned = name in ("counterclockwise", "clockwise", "upper-left-diagonal", "upper-right-diagonal")
    return (shape[1], shape[0]) + tuple(shape[2:]) if turned else tuple(shape)


def apply_flip(frame: np.ndarray, name: str, dst: np.ndarray | None = None) -> np.ndarray:
    """--input-flip on the CPU (sources whose pipeline cannot flip in nvvidconv); names as jetson-utils."""
    cv2 = _cv2()
    if name == "none":
        return frame
    if name in ("counterclockwise", "rotate-180", "clockwise"):
        code = {"counterclockwise": cv2.ROTATE_90_COUNTERCLOCKWISE, "rotate-180": cv2.ROTATE_180,
                "clockwise": cv2.ROTATE_90_CLOCKWISE}[name]
        return cv2.rotate(frame, code, dst=dst)
    if name in ("horizontal", "vertical"):
        return cv2.flip(frame, 1 if name == "horizontal" else 0, dst=dst)
    if name == "upper-left-diagonal":  # across the upper-left/lower-right diagonal: the transpose
        return cv2.transpose(frame, dst=dst)
    if name == "upper-right-diagonal":  # across the other diagonal
        return cv2.flip(cv2.transpose(frame), -1, dst=dst)
    flip_method(name)  # raises BAD_ARGUMENT naming the choices
    return frame


def _gstreamer_or_fail(uri: str, what: str) -> None:
    if not opencv_has("GStreamer"):
        raise RuntimeError_(Status.UNSUPPORTED,
                            f"{uri}: {what} needs OpenCV built with GStreamer (cv2.getBuildInformation() says "
                            "GStreamer: NO; pip's opencv-python has none); use the JetPack OpenCV or build OpenCV "
                            "with -DWITH_GSTREAMER=ON")


def _v4l2_source(device: str, cv2, codec: str | None, flip: str, common: dict) -> Source:
    """OpenCV's V4L2 backend asking for MJPG; with --input-codec and Jetson decoders, a GStreamer pipeline."""
    if codec is not None and codec not in V4L2_FOURCC:
        raise RuntimeError_(Status.BAD_ARGUMENT, f"--input-codec {codec}: a V4L2 camera gives {', '.join(V4L2_FOURCC)}")
    uri = f"v4l2://{device}"
    hw = codec is not None and opencv_has("GStreamer") and gst_has("nvvidconv") and (
        codec != "mjpeg" or gst_has("nvv4l2decoder"))
    if hw:
        text = v4l2_pipeline(device, codec, common["width"], common["height"], common["rate"], flip,
                             opencv_takes_bgrx(cv2.__version__))
        return CaptureSource(text, api=cv2.CAP_GSTREAMER, live=True, uri=uri, pipeline=True, **common)
    src = CaptureSource(device if not device.isdigit() else int(device),
                        api=cv2.CAP_V4L2 if os.name != "nt" else cv2.CAP_ANY, live=True, uri=uri,
                        fourcc=V4L2_FOURCC[codec or "mjpeg"], **common)
    src.cpu_flip = flip
    return src


def open_source(uri: str, *, width: int | None = None, height: int | None = None,
                rate: float | None = None, timeout_s: float = 5.0, flip: str = "none",
                codec: str | None = None) -> Source:
    """Build (not yet open) the source for a jetson-utils style input URI (``--input-flip``, ``--input-codec``)."""
    cv2 = _cv2()
    uri = str(uri).strip()
    flip_method(flip)
    common = dict(width=width, height=height, rate=rate, timeout_s=timeout_s)
    if re.fullmatch(r"\d+", uri):
        return _v4l2_source(f"/dev/video{uri}" if os.name != "nt" else uri, cv2, codec, flip, common)
    m = re.fullmatch(r"(?:v4l2://)?(/dev/video\d+)", uri)
    if m:
        return _v4l2_source(m.group(1), cv2, codec, flip, common)
    m = re.fullmatch(r"csi://(\d+)", uri)
    if m:
        if codec is not None:
            raise RuntimeError_(Status.BAD_ARGUMENT, f"--input-codec {codec}: CSI cameras give raw frames (drop it)")
        _gstreamer_or_fail(uri, "a CSI camera")
        text = csi_pipeline(int(m.group(1)), width, height, rate, flip, opencv_takes_bgrx(cv2.__version__))
        return CaptureSource(text, api=cv2.CAP_GSTREAMER, live=True, uri=uri, pipeline=True, **common)
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme in NETWORK_SCHEMES:
        if codec is not None:  # hardware decoding through GStreamer (jetson-utils' --input-codec)
            _gstreamer_or_fail(mask_uri(uri), f"--input-codec {codec}")
            text = network_pipeline(uri, codec, gst_has, flip=flip, bgrx_appsink=opencv_takes_bgrx(cv2.__version__))
            return CaptureSource(text, api=cv2.CAP_GSTREAMER, live=True, uri=uri, pipeline=True, **common)
        src = CaptureSource(uri, api=cv2.CAP_FFMPEG, live=True, uri=uri, **common)
        src.cpu_flip = flip
        return src
    if codec is not None:
        raise RuntimeError_(Status.BAD_ARGUMENT, f"--input-codec {codec}: applies to cameras and rtsp:// streams; "
                                                 "files are decoded by what their container says")
    if scheme == "file":
        uri = uri[len("file://"):]
    elif scheme:
        raise RuntimeError_(Status.BAD_ARGUMENT,
                            f"{mask_uri(uri)}: unknown input scheme {scheme!r}; use a camera index, /dev/videoN, "
                            "v4l2://, csi://, rtsp://, file:// or a path")
    src = _file_source(uri, cv2, common)
    src.cpu_flip = flip
    return src


def _file_source(uri: str, cv2, common: dict) -> Source:
    path = Path(uri).expanduser()
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS), key=natural_key)
        return ImageSequenceSource(files, str(path))
    if any(c in uri for c in "*?["):
        files = sorted((Path(p) for p in glob.glob(str(path)) if Path(p).suffix.lower() in IMAGE_EXTS), key=natural_key)
        return ImageSequenceSource(files, uri)
    if not path.is_file():
        raise RuntimeError_(Status.IO, f"{path}: input not found")
    if path.suffix.lower() in IMAGE_EXTS:
        return ImageSequenceSource([path], str(path))
    return CaptureSource(str(path), api=cv2.CAP_ANY, live=False, uri=str(path), **common)
