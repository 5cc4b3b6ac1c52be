"""Capture and output like jetson-utils (runtime/gst.py, sources.py, sinks.py): pipeline strings and behaviour.

GStreamer and a Jetson are not here, so every pipeline is a pure function
of the request and of which elements exist (passed in), tested as text;
the CPU parts (V4L2 properties, flips, BGRx frames, codec planning) run.
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

try:
    from _artifacts import make_artifact
except ImportError:  # tests/ imported as a package
    from tests._artifacts import make_artifact

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import runtime  # noqa: E402
from runtime import RuntimeError_, Status  # noqa: E402
from runtime import gst, sinks, sources  # noqa: E402
from runtime.sources import Read, Source  # noqa: E402
from runtime.stream import Stream  # noqa: E402

JETSON = {"nvarguscamerasrc", "nvvidconv", "nvv4l2decoder", "nvv4l2h264enc", "nvv4l2h265enc", "nvjpegenc",
          "x264enc", "jpegenc", "rtspclientsink", "mp4mux", "matroskamux"}
ORIN_NANO = JETSON - {"nvv4l2h264enc", "nvv4l2h265enc"}   # no hardware encoder on Orin Nano


def have(names):
    return lambda element: element in names


def err(fn) -> RuntimeError_:
    with pytest.raises(RuntimeError_) as info:
        fn()
    return info.value


def test_csi_pipeline_flips_and_converts_in_nvvidconv():
    text = gst.csi_pipeline(1, 1920, 1080, 60, flip="rotate-180", bgrx_appsink=True)
    assert text == ("nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM), width=1920, height=1080, "
                    "framerate=60/1, format=NV12 ! nvvidconv flip-method=2 ! video/x-raw, format=BGRx ! "
                    "appsink drop=true max-buffers=1 sync=false")
    assert "videoconvert" not in text  # no CPU conversion in the pipeline
    old = gst.csi_pipeline(0, flip="clockwise")  # OpenCV < 4.10 (JetPack 5/6): BGRx -> BGR once
    assert "width=1280, height=720, framerate=30/1" in old and "flip-method=3" in old
    assert old.endswith("format=BGRx ! videoconvert ! video/x-raw, format=BGR ! appsink drop=true max-buffers=1 sync=false")
    assert [gst.flip_method(n) for n in gst.FLIP_METHODS] == list(range(8))
    assert "--input-flip 'sideways'" in err(lambda: gst.flip_method("sideways")).message


def test_opencv_takes_bgrx_from_410():
    assert [gst.opencv_takes_bgrx(v) for v in ("4.5.4", "4.8.0", "4.10.0", "4.11.0-dev", "5.1.0")] == \
        [False, False, True, True, True]


def test_v4l2_pipeline_decodes_mjpeg_in_hardware():
    text = gst.v4l2_pipeline("/dev/video1", "mjpeg", 1920, 1080, 30, bgrx_appsink=False)
    assert text.startswith("v4l2src device=/dev/video1 io-mode=2 ! image/jpeg, width=1920, height=1080, "
                           "framerate=30/1 ! nvv4l2decoder mjpeg=1 ! nvvidconv flip-method=0 ! video/x-raw, format=BGRx")
    raw = gst.v4l2_pipeline("/dev/video0", "yuyv", None, None, None, flip="vertical", bgrx_appsink=True)
    assert raw == ("v4l2src device=/dev/video0 ! video/x-raw, format=YUY2 ! nvvidconv flip-method=6 ! "
                   "video/x-raw, format=BGRx ! appsink drop=true max-buffers=1 sync=false")


def test_rtsp_input_pipeline_hardware_or_software_decoder():
    uri = "rtsp://user:pw@cam:554/live"
    hw = gst.network_pipeline(uri, "h265", have(JETSON))
    assert hw.startswith('rtspsrc location="rtsp://user:pw@cam:554/live" latency=200 ! rtph265depay ! h265parse ! '
                         "nvv4l2decoder ! nvvidconv flip-method=0")
    sw = gst.network_pipeline(uri, "h264", have(set()), flip="horizontal")
    assert "avdec_h264 ! videoflip method=horizontal-flip ! videoconvert ! video/x-raw, format=BGR ! appsink" in sw
    assert "rtsp://" in err(lambda: gst.network_pipeline("http://x/y", "h264", have(JETSON))).message


@pytest.mark.parametrize("names, element", [(JETSON, "nvv4l2h264enc"), (ORIN_NANO, "x264enc"),
                                            ({"nvh264enc", "x264enc"}, "nvh264enc")])
def test_h264_file_uses_the_best_encoder_present(names, element):
    got, text = gst.file_pipeline("out/a b.mp4", "h264", have(names), bitrate_kbps=6000)
    assert got == element and text.startswith("appsrc ! videoconvert ! ")
    assert text.endswith(f' ! h264parse ! mp4mux ! filesink location="out/a b.mp4"')
    if element == "nvv4l2h264enc":  # hardware: NVMM NV12 from nvvidconv, bitrate in bit/s
        assert "nvvidconv ! video/x-raw(memory:NVMM), format=NV12 ! nvv4l2h264enc bitrate=6000000" in text
    if element == "x264enc":        # software: I420, kbit/s
        assert "format=I420 ! x264enc bitrate=6000 speed-preset=ultrafast tune=zerolatency" in text


def test_file_pipeline_errors_name_the_fix():
    e = err(lambda: gst.file_pipeline("a.mp4", "mjpeg", have(JETSON)))
    assert e.code == Status.BAD_ARGUMENT and ".mkv takes all" in e.message
    e = err(lambda: gst.file_pipeline("a.mkv", "h265", have({"x264enc"})))
    assert e.code == Status.UNSUPPORTED and "x265enc" in e.message
    assert gst.file_pipeline("a.mkv", "mjpeg", have(ORIN_NANO))[0] == "nvjpegenc"


def test_rtsp_and_rtp_output_pipelines():
    element, text = gst.rtsp_pipeline("rtsp://127.0.0.1:8554/dehazed", "h264", have(ORIN_NANO), 2000)
    assert element == "x264enc"
    assert text.startswith("appsrc is-live=true ! videoconvert ! video/x-raw, format=I420 ! x264enc bitrate=2000")
    assert text.endswith('! h264parse ! rtspclientsink location="rtsp://127.0.0.1:8554/dehazed"')
    e = err(lambda: gst.rtsp_pipeline("rtsp://@:8554/out", "h264", have(JETSON)))
    assert e.code == Status.UNSUPPORTED and "mediamtx" in e.message
    e = err(lambda: gst.rtsp_pipeline("rtsp://h:8554/x", "h264", have(JETSON - {"rtspclientsink"})))
    assert e.code == Status.UNSUPPORTED and "rtspclientsink" in e.message
    _, text = gst.rtp_pipeline("192.168.1.5", 5000, "h265", have(JETSON))
    assert "nvv4l2h265enc" in text and text.endswith(
        "h265parse ! rtph265pay config-interval=1 pt=96 ! udpsink host=192.168.1.5 port=5000 sync=false async=false")


def test_plan_video_names_fourccs_and_gstreamer():
    assert sinks.plan_video("a.mp4", None, True, have(JETSON)) == ("opencv", "mp4v")   # default as before
    assert sinks.plan_video("a.mp4", "h264", True, have(JETSON)) == ("gstreamer", "h264")
    assert sinks.plan_video("a.mp4", "h264", False, have(JETSON)) == ("opencv", "avc1")  # no GStreamer in OpenCV
    assert sinks.plan_video("a.mkv", "h265", True, have({"x264enc"})) == ("opencv", "hvc1")  # no h265 encoder
    assert sinks.plan_video("a.avi", "mjpeg", False, have(set())) == ("opencv", "MJPG")
    assert sinks.plan_video("a.avi", "MJPG", True, have(JETSON)) == ("opencv", "MJPG")  # a FOURCC stays one
    assert err(lambda: sinks.plan_video("a.mp4", "mjpeg", True, have(JETSON))).code == Status.BAD_ARGUMENT
    assert "--output-codec 'av1x2'" in err(lambda: sinks.plan_video("a.mp4", "av1x2", True, have(JETSON))).message


def test_mjpeg_by_name_writes_a_file_here(tmp_path):
    sink = sinks.open_sink(str(tmp_path / "o.avi"), fps=10, codec="mjpeg")
    for i in range(3):
        sink.write(np.full((48, 64, 3), 40 * i, np.uint8))
    sink.close()
    cap = cv2.VideoCapture(str(tmp_path / "o.avi"))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    cap.release()


def test_network_output_without_gstreamer_is_a_clear_error():
    if sources.opencv_has("GStreamer"):
        pytest.skip("this OpenCV has GStreamer")
    for uri in ("rtsp://127.0.0.1:8554/out", "rtp://10.0.0.2:5000"):
        e = err(lambda: sinks.open_sink(uri))
        assert e.code == Status.UNSUPPORTED and "GStreamer" in e.message


def test_v4l2_asks_for_mjpg_first_then_size_and_rate(monkeypatch):
    calls = []

    class FakeCap:
        def __init__(self, *a):
            pass

        def isOpened(self):
            return True

        def set(self, prop, value):
            calls.append((prop, value))
            return True

    monkeypatch.setattr(cv2, "VideoCapture", FakeCap)
    src = sources.open_source("/dev/video0", width=1920, height=1080, rate=30)
    src.open()
    assert calls[0] == (cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
    assert calls[1:4] == [(cv2.CAP_PROP_FRAME_WIDTH, 1920), (cv2.CAP_PROP_FRAME_HEIGHT, 1080), (cv2.CAP_PROP_FPS, 30.0)]
    calls.clear()
    sources.open_source("0", codec="yuyv").open()   # no GStreamer here: OpenCV V4L2 with the YUYV format
    assert calls[0] == (cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"YUYV"))


def test_sources_pick_gstreamer_pipelines_when_present(monkeypatch):
    monkeypatch.setattr(sources, "opencv_has", lambda feature: True)
    monkeypatch.setattr(sources, "gst_has", have(JETSON))
    csi = sources.open_source("csi://0", width=640, height=480, rate=30, flip="horizontal")
    assert csi.pipeline and "nvvidconv flip-method=4" in csi._target and csi.cpu_flip == "none"
    cam = sources.open_source("/dev/video2", codec="mjpeg", flip="clockwise")
    assert cam.pipeline and "nvv4l2decoder mjpeg=1 ! nvvidconv flip-method=3" in cam._target and cam.cpu_flip == "none"
    net = sources.open_source("rtsp://u:p@cam/live", codec="h264")
    assert net.pipeline and "nvv4l2decoder" in net._target and "u:p" not in net.uri
    plain = sources.open_source("/dev/video2", flip="clockwise")  # no --input-codec: OpenCV V4L2 + CPU flip
    assert not plain.pipeline and plain.cpu_flip == "clockwise"
    assert err(lambda: sources.open_source("csi://0", codec="h264")).code == Status.BAD_ARGUMENT


def test_csi_without_gstreamer_names_the_fix(monkeypatch):
    monkeypatch.setattr(sources, "opencv_has", lambda feature: False)
    e = err(lambda: sources.open_source("csi://0"))
    assert e.code == Status.UNSUPPORTED and "GStreamer" in e.message
    e = err(lambda: sources.open_source("rtsp://cam/x", codec="h264"))
    assert e.code == Status.UNSUPPORTED and "--input-codec h264" in e.message


def test_cpu_flips_match_their_names():
    a = np.arange(6, dtype=np.uint8).reshape(2, 3, 1).repeat(3, axis=2)   # [[0 1 2], [3 4 5]]
    f = lambda name: sources.apply_flip(a, name)[..., 0].tolist()  # noqa: E731
    assert f("none") == [[0, 1, 2], [3, 4, 5]]
    assert f("horizontal") == [[2, 1, 0], [5, 4, 3]]
    assert f("vertical") == [[3, 4, 5], [0, 1, 2]]
    assert f("rotate-180") == [[5, 4, 3], [2, 1, 0]]
    assert f("clockwise") == [[3, 0], [4, 1], [5, 2]]
    assert f("counterclockwise") == [[2, 5], [1, 4], [0, 3]]
    assert f("upper-left-diagonal") == [[0, 3], [1, 4], [2, 5]]
    assert f("upper-right-diagonal") == [[5, 2], [4, 1], [3, 0]]
    for name in gst.FLIP_METHODS:
        assert sources.flipped_shape(a.shape, name) == sources.apply_flip(a, name).shape


class FramesSource(Source):
    """A file-like source of given frames (BGR or BGRx)."""

    live = False

    def __init__(self, frames, cpu_flip="none"):
        self.frames, self.cpu_flip, self.uri, self.i = frames, cpu_flip, "frames", 0

    def open(self):
        self.i = 0

    def read(self, buf):
        if self.i >= len(self.frames):
            return Read.EOF, None
        self.i += 1
        return Read.OK, self.frames[self.i - 1].copy()

    def close(self):
        pass


class Keep(sinks.Sink):
    def __init__(self):
        self.got = []

    def write(self, frame_bgr):
        self.got.append(frame_bgr.copy())
        self.frames += 1
        return True


@pytest.fixture(scope="module")
def art(tmp_path_factory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("gst"), two_graph=False)


def run_stream(art, source, **kw):
    sink = Keep()
    with runtime.Dehazer(art) as d:
        Stream(d, source, sink, stats_interval=0, **kw).run()
    return sink.got


@pytest.mark.parametrize("side_by_side", [False, True])
def test_bgrx_frames_give_the_bgr_result(art, side_by_side):
    rng = np.random.default_rng(0)
    bgr = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    bgrx = [np.dstack([f, np.full(f.shape[:2], 255, np.uint8)]) for f in bgr]
    want = run_stream(art, FramesSource(bgr), side_by_side=side_by_side)
    got = run_stream(art, FramesSource(bgrx), side_by_side=side_by_side)
    assert len(got) == 3 and all(np.array_equal(a, b) for a, b in zip(got, want))


def test_cpu_flip_in_the_capture_thread(art):
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(3)]
    want = run_stream(art, FramesSource([np.ascontiguousarray(np.rot90(f, -1)) for f in frames]))
    got = run_stream(art, FramesSource(frames, cpu_flip="clockwise"))
    assert got[0].shape == (56, 40, 3) and all(np.array_equal(a, b) for a, b in zip(got, want))
    sized = run_stream(art, FramesSource(frames, cpu_flip="clockwise"),
                       capture_options={"size": (32, 48)})   # flip, then resize to --input-width/height
    assert sized[0].shape == (48, 32, 3)
