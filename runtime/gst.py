"""GStreamer pipeline strings for capture and output, jetson-utils style (pure functions, unit-tested).

Capture hands OpenCV frames that the Jetson's hardware already converted:
``nvarguscamerasrc`` (CSI) and ``nvv4l2decoder`` (MJPEG USB cameras, H.264/
H.265 streams) deliver NV12 in NVMM memory and ``nvvidconv`` (the VIC
engine) converts it to BGRx, flipped/rotated by ``flip-method``. OpenCV's
appsink takes BGRx itself from OpenCV 4.10 on (opencv/opencv#25602);
older builds (JetPack 5's 4.5, JetPack 6's 4.8) need one ``videoconvert``
BGRx -> BGR on the CPU. With BGRx frames the stream converts once, BGRx ->
the artifact's channel order, and nothing else touches the pixels.

Output encodes through the first encoder element present, hardware
first (``nvv4l2h264enc`` on Jetsons with NVENC, ``nvh264enc`` on desktop
GPUs, then ``x264enc``/``openh264enc`` in software; Orin Nano has no
hardware encoder), muxes by file extension, or publishes RTSP with
``rtspclientsink`` / RTP with ``udpsink``. Which elements exist is asked
of GStreamer (:func:`gst_has`); the builders take that as an argument.
"""
from __future__ import annotations

import re
from typing import Callable, Dict, List, Optional, Tuple

from .errors import RuntimeError_, Status

Have = Callable[[str], Optional[bool]]

#: jetson-utils' --input-flip names -> nvvidconv flip-method values
FLIP_METHODS = {"none": 0, "counterclockwise": 1, "rotate-180": 2, "clockwise": 3, "horizontal": 4,
                "upper-right-diagonal": 5, "vertical": 6, "upper-left-diagonal": 7}
#: the same names for GStreamer's software videoflip element
VIDEOFLIP = {"none": "none", "counterclockwise": "counterclockwise", "rotate-180": "rotate-180",
             "clockwise": "clockwise", "horizontal": "horizontal-flip", "upper-right-diagonal": "upper-right-diagonal",
             "vertical": "vertical-flip", "upper-left-diagonal": "upper-left-diagonal"}
APPSINK = "appsink drop=true max-buffers=1 sync=false"
INPUT_CODECS = ("mjpeg", "yuyv", "h264", "h265")
OUTPUT_CODECS = ("h264", "h265", "mjpeg", "mpeg4", "vp8", "vp9", "xvid")
#: encoders per codec, best first: (element, chain template); {kbps} / {bps} are the bitrate
ENCODERS: Dict[str, List[Tuple[str, str]]] = {
    "h264": [("nvv4l2h264enc", "videoconvert ! video/x-raw, format=BGRx ! nvvidconv ! video/x-raw(memory:NVMM), "
                               "format=NV12 ! nvv4l2h264enc bitrate={bps} insert-sps-pps=true ! h264parse"),
             ("nvh264enc", "videoconvert ! video/x-raw, format=NV12 ! nvh264enc bitrate={kbps} ! h264parse"),
             ("x264enc", "videoconvert ! video/x-raw, format=I420 ! x264enc bitrate={kbps} speed-preset=ultrafast "
                         "tune=zerolatency ! h264parse"),
             ("openh264enc", "videoconvert ! video/x-raw, format=I420 ! openh264enc bitrate={bps} ! h264parse")],
    "h265": [("nvv4l2h265enc", "videoconvert ! video/x-raw, format=BGRx ! nvvidconv ! video/x-raw(memory:NVMM), "
                               "format=NV12 ! nvv4l2h265enc bitrate={bps} insert-sps-pps=true ! h265parse"),
             ("nvh265enc", "videoconvert ! video/x-raw, format=NV12 ! nvh265enc bitrate={kbps} ! h265parse"),
             ("x265enc", "videoconvert ! video/x-raw, format=I420 ! x265enc bitrate={kbps} speed-preset=ultrafast "
                         "tune=zerolatency ! h265parse")],
    "mjpeg": [("nvjpegenc", "videoconvert ! video/x-raw, format=I420 ! nvjpegenc"),
              ("jpegenc", "videoconvert ! jpegenc")],
    "vp8": [("vp8enc", "videoconvert ! vp8enc target-bitrate={bps} deadline=1")],
    "vp9": [("nvv4l2vp9enc", "videoconvert ! video/x-raw, format=BGRx ! nvvidconv ! video/x-raw(memory:NVMM), "
                             "format=NV12 ! nvv4l2vp9enc bitrate={bps}"),
            ("vp9enc", "videoconvert ! vp9enc target-bitrate={bps} deadline=1")],
    "mpeg4": [("avenc_mpeg4", "videoconvert ! avenc_mpeg4 bitrate={bps} ! mpeg4videoparse")],
}
#: file extension -> (muxer, codecs it takes)
MUXERS = {".mp4": ("mp4mux", ("h264", "h265", "mpeg4")), ".m4v": ("mp4mux", ("h264", "h265", "mpeg4")),
          ".mov": ("qtmux", ("h264", "h265", "mjpeg", "mpeg4")),
          ".mkv": ("matroskamux", ("h264", "h265", "mjpeg", "vp8", "vp9", "mpeg4")),
          ".avi": ("avimux", ("h264", "mjpeg", "mpeg4")), ".ts": ("mpegtsmux", ("h264", "h265")),
          ".webm": ("webmmux", ("vp8", "vp9"))}
#: OpenCV/FFmpeg FOURCC per codec name (the writer without GStreamer)
FOURCC = {"h264": "avc1", "h265": "hvc1", "mjpeg": "MJPG", "mpeg4": "mp4v", "vp8": "VP80", "vp9": "VP90",
          "xvid": "XVID"}
RTP_PAYLOADERS = {"h264": "rtph264pay config-interval=1 pt=96", "h265": "rtph265pay config-interval=1 pt=96"}


def flip_method(name: str) -> int:
    """jetson-utils flip name -> nvvidconv ``flip-method``; an unknown name is BAD_ARGUMENT naming the choices."""
    if name not in FLIP_METHODS:
        raise RuntimeError_(Status.BAD_ARGUMENT, f"--input-flip {name!r}: use one of {', '.join(FLIP_METHODS)}")
    return FLIP_METHODS[name]


def _tail(bgrx_appsink: bool) -> str:
    """nvvidconv's BGRx into appsink: as is (OpenCV >= 4.10), else through one CPU videoconvert to BGR."""
    if bgrx_appsink:
        return f"video/x-raw, format=BGRx ! {APPSINK}"
    return f"video/x-raw, format=BGRx ! videoconvert ! video/x-raw, format=BGR ! {APPSINK}"


def csi_pipeline(sensor: int, width: Optional[int] = None, height: Optional[int] = None,
                 rate: Optional[float] = None, flip: str = "none", bgrx_appsink: bool = False) -> str:
    """A Jetson CSI camera: nvarguscamerasrc (ISP) -> NV12 in NVMM -> nvvidconv (VIC: flip + BGRx) -> appsink."""
    w, h, r = int(width or 1280), int(height or 720), int(round(rate or 30))
    return (f"nvarguscamerasrc sensor-id={int(sensor)} ! video/x-raw(memory:NVMM), width={w}, height={h}, "
            f"framerate={r}/1, format=NV12 ! nvvidconv flip-method={flip_method(flip)} ! {_tail(bgrx_appsink)}")


def v4l2_pipeline(device: str, codec: str, width: Optional[int], height: Optional[int], rate: Optional[float],
                  flip: str = "none", bgrx_appsink: bool = False) -> str:
    """A USB camera through GStreamer with hardware decoding: MJPEG by nvv4l2decoder, raw YUYV by nvvidconv."""
    caps = [f"width={int(width)}" if width else "", f"height={int(height)}" if height else "",
            f"framerate={int(round(rate))}/1" if rate else ""]
    extra = "".join(f", {c}" for c in caps if c)
    if codec == "mjpeg":
        head = f"v4l2src device={device} io-mode=2 ! image/jpeg{extra} ! nvv4l2decoder mjpeg=1"
    elif codec == "yuyv":
        head = f"v4l2src device={device} ! video/x-raw, format=YUY2{extra}"
    else:
        raise RuntimeError_(Status.BAD_ARGUMENT, f"--input-codec {codec}: a V4L2 camera gives mjpeg or yuyv")
    return f"{head} ! nvvidconv flip-method={flip_method(flip)} ! {_tail(bgrx_appsink)}"


def network_pipeline(uri: str, codec: str, have: Have, latency_ms: int = 200, flip: str = "none",
                     bgrx_appsink: bool = False) -> str:
    """An RTSP stream of ``codec`` decoded by nvv4l2decoder when present (Jetson), else by libav in software."""
    if codec not in ("h264", "h265"):
        raise RuntimeError_(Status.BAD_ARGUMENT, f"--input-codec {codec}: a network stream decodes h264 or h265")
    if not uri.lower().startswith(("rtsp://", "rtsps://")):
        raise RuntimeError_(Status.BAD_ARGUMENT, "--input-codec applies to rtsp:// streams (other URIs go "
                                                 "through FFmpeg, which reads the codec from the stream)")
    head = f"rtspsrc location={_quote(uri)} latency={int(latency_ms)} ! rtp{codec}depay ! {codec}parse"
    if have("nvv4l2decoder"):
        return f"{head} ! nvv4l2decoder ! nvvidconv flip-method={flip_method(flip)} ! {_tail(bgrx_appsink)}"
    flip_method(flip)  # validates the name
    turn = f" ! videoflip method={VIDEOFLIP[flip]}" if flip != "none" else ""
    return f"{head} ! avdec_{codec}{turn} ! videoconvert ! video/x-raw, format=BGR ! {APPSINK}"


def _quote(value: str) -> str:
    if '"' in value or "\n" in value:
        raise RuntimeError_(Status.BAD_ARGUMENT, f"{value!r}: a GStreamer location cannot hold a double quote")
    return f'"{value}"'


def encoder_chain(codec: str, have: Have, bitrate_kbps: int) -> Tuple[str, str]:
    """(element, ``videoconvert ! ... ! parser``) for the best encoder of ``codec`` present here."""
    if codec not in ENCODERS:
        raise RuntimeError_(Status.BAD_ARGUMENT, f"--output-codec {codec}: GStreamer encodes {', '.join(ENCODERS)}")
    for element, chain in ENCODERS[codec]:
        if have(element):
            return element, chain.format(kbps=int(bitrate_kbps), bps=int(bitrate_kbps) * 1000)
    names = ", ".join(e for e, _ in ENCODERS[codec])
    raise RuntimeError_(Status.UNSUPPORTED, f"--output-codec {codec}: no GStreamer encoder for it here ({names}); "
                                            "install gstreamer1.0-plugins-ugly (x264enc) or -good, or pick another codec")


def file_pipeline(path: str, codec: str, have: Have, bitrate_kbps: int = 4000) -> Tuple[str, str]:
    """(encoder element, ``appsrc ! encode ! mux ! filesink``) for a video file; the extension picks the muxer."""
    ext = "." + path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
    if ext not in MUXERS:
        raise RuntimeError_(Status.BAD_ARGUMENT, f"{path}: GStreamer output takes {', '.join(sorted(MUXERS))}")
    mux, codecs = MUXERS[ext]
    if codec not in codecs:
        raise RuntimeError_(Status.BAD_ARGUMENT, f"{path}: {ext} holds {', '.join(codecs)}, not {codec}; change "
                                                 "--output-codec or the extension (.mkv takes all)")
    element, chain = encoder_chain(codec, have, bitrate_kbps)
    return element, f"appsrc ! {chain} ! {mux} ! filesink location={_quote(path)}"


def rtsp_pipeline(uri: str, codec: str, have: Have, bitrate_kbps: int = 4000) -> Tuple[str, str]:
    """Publish to an RTSP server (``rtspclientsink``, e.g. mediamtx on the device) at ``rtsp://host:port/path``."""
    if re.match(r"(?i)rtsps?://@", uri):
        raise RuntimeError_(Status.UNSUPPORTED,
                            f"{uri}: serving RTSP (jetson-utils' rtsp://@:PORT/PATH) needs an RTSP server; run "
                            "one on the device (e.g. mediamtx) and publish to it: rtsp://127.0.0.1:8554/PATH")
    if codec not in RTP_PAYLOADERS:
        raise RuntimeError_(Status.BAD_ARGUMENT, f"--output-codec {codec}: RTSP output sends h264 or h265")
    if not have("rtspclientsink"):
        raise RuntimeError_(Status.UNSUPPORTED, f"{uri}: RTSP output needs GStreamer's rtspclientsink "
                                                "(gstreamer1.0-rtsp / gst-rtsp-server's plugin), not found here")
    element, chain = encoder_chain(codec, have, bitrate_kbps)
    return element, f"appsrc is-live=true ! {chain} ! rtspclientsink location={_quote(uri)}"


def rtp_pipeline(host: str, port: int, codec: str, have: Have, bitrate_kbps: int = 4000) -> Tuple[str, str]:
    """Send RTP over UDP to ``host:port`` (``rtp://host:port``, as jetson-utils)."""
    if codec not in RTP_PAYLOADERS:
        raise RuntimeError_(Status.BAD_ARGUMENT, f"--output-codec {codec}: RTP output sends h264 or h265")
    element, chain = encoder_chain(codec, have, bitrate_kbps)
    return element, (f"appsrc is-live=true ! {chain} ! {RTP_PAYLOADERS[codec]} ! "
                     f"udpsink host={host} port={int(port)} sync=false async=false")


def opencv_takes_bgrx(version: str) -> bool:
    """OpenCV's GStreamer appsink accepts BGRx (4 channels) from 4.10 on."""
    nums = [int(x) for x in re.findall(r"\d+", version)[:2]] + [0, 0]
    return (nums[0], nums[1]) >= (4, 10)


_GST_CACHE: Dict[str, Optional[bool]] = {}


def gst_has(element: str) -> Optional[bool]:
    """Is GStreamer element ``element`` installed? None when neither PyGObject nor gst-inspect-1.0 can tell."""
    if element in _GST_CACHE:
        return _GST_CACHE[element]
    found: Optional[bool] = None
    try:
        import gi

        gi.require_version("Gst", "1.0")
        from gi.repository import Gst

        Gst.init(None)
        found = Gst.ElementFactory.find(element) is not None
    except (ImportError, ValueError):
        import shutil
        import subprocess

        tool = shutil.which("gst-inspect-1.0")
        if tool is not None:
            found = subprocess.run([tool, "--exists", element], capture_output=True, timeout=10).returncode == 0
    _GST_CACHE[element] = found
    return found
