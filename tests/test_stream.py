"""runtime/stream.py: files, image folders, flaky live sources, stats, SIGTERM, credential masking."""
from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

try:
    from _artifacts import make_artifact, moving_frames, write_video
except ImportError:  # tests/ imported as a package
    from tests._artifacts import make_artifact, moving_frames, write_video

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import runtime  # noqa: E402
from runtime import RuntimeError_, Status  # noqa: E402
from runtime.sinks import NullSink, Sink, open_sink  # noqa: E402
from runtime.sources import Read, Source, open_source  # noqa: E402
from runtime.stream import STAGES, Stream, main  # noqa: E402

BLOCK_TORCH = ("import sys, runpy; sys.modules['torch'] = None; sys.modules['edgehaze'] = None; "
               "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


@pytest.fixture(scope="module")
def art(tmp_path_factory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("art"))


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("vid") / "in.mp4", moving_frames(20))


def decode(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            return frames
        frames.append(f)


def expected_bgr(art: Path, frames_bgr, **options) -> list[np.ndarray]:
    """What the stream should write: BGR -> artifact order (RGB) -> run() -> BGR."""
    with runtime.Dehazer(art, options) as d:
        return [cv2.cvtColor(d.run(cv2.cvtColor(f, cv2.COLOR_BGR2RGB)), cv2.COLOR_RGB2BGR) for f in frames_bgr]


def read_folder(folder: Path) -> list[np.ndarray]:
    return [cv2.imread(str(p)) for p in sorted(folder.glob("*.png"))]


def test_video_file_to_video_file(art, video, tmp_path):
    out, stats = tmp_path / "out.mp4", tmp_path / "stats.json"
    assert main(["--model", str(art), "--input", str(video), "--output", str(out),
                 "--stats-json", str(stats), "--stats-interval", "0"]) == 0
    written, source = decode(out), decode(video)
    assert len(written) == len(source) == 20
    want = expected_bgr(art, source)
    err = [np.abs(a.astype(int) - b).mean() for a, b in zip(written, want)]
    moved = [np.abs(a.astype(int) - b).mean() for a, b in zip(written, source)]
    assert max(err) < 3.0 < min(moved), (err, moved)  # codec loss only, and the model really ran
    assert not list(tmp_path.glob(".*partial*"))


def test_video_file_to_image_folder_equals_run(art, video, tmp_path):
    out, stats = tmp_path / "frames", tmp_path / "s.json"
    assert main(["--model", str(art), "--input", f"file://{video}", "--output", str(out) + "/",
                 "--stats-json", str(stats), "--stats-interval", "0"]) == 0
    written = read_folder(out)
    want = expected_bgr(art, decode(video))
    assert len(written) == len(want) == 20
    for a, b in zip(written, want):
        np.testing.assert_array_equal(a, b)


def test_stats_json_is_well_formed(art, video, tmp_path):
    stats = tmp_path / "s.json"
    assert main(["--model", str(art), "--input", str(video), "--output", "null", "--max-frames", "12",
                 "--stats-json", str(stats), "--stats-interval", "0", "--threads", "1"]) == 0
    s = json.loads(stats.read_text())
    assert s["frames"] == 12 and s["stopped_by"] == "max_frames"
    assert s["backend"] == "onnxruntime/CPUExecutionProvider" and s["live"] is False
    assert s["fps"] > 0 and s["wall_s"] > 0 and s["frame_size"] == [64, 48]
    assert set(s["stages_ms"]) == set(STAGES)
    for stage in STAGES:
        entry = s["stages_ms"][stage]
        assert set(entry) == {"median", "mean", "p90", "max", "count"}
        assert entry["count"] == 12
        assert all(isinstance(entry[k], float) and math.isfinite(entry[k]) and entry[k] >= 0
                   for k in ("median", "mean", "p90", "max"))
    for key in ("dropped", "undecodable", "reopens", "resolution_changes", "depth_refreshes", "captured"):
        assert isinstance(s[key], int)
    assert s["dropped"] == 0 and s["depth_every"] == 1


def test_depth_refresh_every_n_on_static_scene_matches_n1(art, tmp_path):
    still = moving_frames(1)[0]
    src = tmp_path / "still"
    src.mkdir()
    for i in range(7):
        cv2.imwrite(str(src / f"{i:03d}.png"), still)
    outs = {}
    for n in (1, 3):
        out, stats = tmp_path / f"n{n}", tmp_path / f"n{n}.json"
        assert main(["--model", str(art), "--input", str(src), "--output", str(out), "--depth-every", str(n),
                     "--stats-json", str(stats), "--stats-interval", "0"]) == 0
        outs[n] = read_folder(out)
        assert json.loads(stats.read_text())["depth_refreshes"] == (0 if n == 1 else 3)
    assert len(outs[1]) == len(outs[3]) == 7
    for a, b in zip(outs[1], outs[3]):
        np.testing.assert_array_equal(a, b)


def test_depth_every_needs_two_graph_export(tmp_path, video, capsys):
    single = make_artifact(tmp_path, two_graph=False)
    assert main(["--model", str(single), "--input", str(video), "--output", "null", "--depth-every", "4"]) == 2
    assert "[BAD_ARGUMENT]" in capsys.readouterr().err


class FlakyCamera(Source):
    """A live source that drops every ``fail_every`` frames (LOST) and has undecodable frames."""

    live = True
    uri = "fake://cam"

    def __init__(self, frames, fail_every: int, bad_at=(), fail_opens_after: int | None = None) -> None:
        self.frames, self.fail_every, self.bad_at = frames, fail_every, set(bad_at)
        self.fail_opens_after = fail_opens_after
        self.i = self.opens = self.since_open = 0
        self.is_open = False

    def open(self):
        if self.fail_opens_after is not None and self.opens >= self.fail_opens_after:
            raise RuntimeError_(Status.IO, f"{self.uri}: camera gone")
        self.opens += 1
        self.since_open = 0
        self.is_open = True

    def read(self, buf):
        if not self.is_open:
            return Read.LOST, None
        if self.i >= len(self.frames):
            return Read.EOF, None
        if self.fail_every and self.since_open == self.fail_every:
            self.is_open = False
            return Read.LOST, None
        self.since_open += 1
        self.i += 1
        if self.i - 1 in self.bad_at:
            return Read.BAD, None
        return Read.OK, self.frames[self.i - 1].copy()

    def close(self):
        self.is_open = False


class Recorder(Sink):
    uri = "memory"

    def __init__(self, delay_s: float = 0.0) -> None:
        self.images, self.delay_s = [], delay_s

    def write(self, frame_bgr):
        self.images.append(frame_bgr.copy())
        self.frames += 1
        time.sleep(self.delay_s)
        return True


def test_flaky_live_source_is_reopened_and_the_stream_goes_on(art):
    frames = moving_frames(30)
    cam = FlakyCamera(frames, fail_every=7, bad_at={10, 20})
    sink = Recorder()
    with runtime.Dehazer(art) as d:
        stream = Stream(d, cam, sink, stats_interval=0,
                        capture_options=dict(drop_stale=False, backoff_s=0.001, max_reopen=3))
        stats = stream.run()
    assert stats.extra["reopens"] == 4          # LOST after frames 7, 14, 21, 28
    assert cam.opens == 5
    assert stats.extra["undecodable"] == 2
    assert stats.frames == len(sink.images) == 28
    good = [f for i, f in enumerate(frames) if i not in (10, 20)]
    for a, b in zip(sink.images, expected_bgr(art, good)):
        np.testing.assert_array_equal(a, b)


def test_source_that_stays_down_ends_with_io_error_and_finalised_output(art, tmp_path):
    cam = FlakyCamera(moving_frames(20), fail_every=5, fail_opens_after=1)
    sink = open_sink(str(tmp_path / "partial.avi"), fps=10)
    with runtime.Dehazer(art) as d:
        stream = Stream(d, cam, sink, stats_interval=0,
                        capture_options=dict(backoff_s=0.001, max_reopen=3, drop_stale=False),
                        stats_json=str(tmp_path / "s.json"))
        with pytest.raises(RuntimeError_) as info:
            stream.run()
    assert info.value.code == Status.IO and "3 reopen attempts" in info.value.message
    assert len(decode(tmp_path / "partial.avi")) == 5  # what arrived before the loss is kept
    assert json.loads((tmp_path / "s.json").read_text())["stopped_by"] == "error"


def test_live_sources_drop_stale_frames_files_do_not(art):
    frames = moving_frames(25)
    with runtime.Dehazer(art) as d:
        live = Stream(d, FlakyCamera(frames, fail_every=0), Recorder(delay_s=0.01), stats_interval=0,
                      capture_options=dict(queue_size=1))
        s = live.run()
        assert s.extra["dropped"] > 0 and s.frames + s.extra["dropped"] == s.extra["captured"] == 25

        class FileLike(FlakyCamera):
            live = False

        sink = Recorder(delay_s=0.01)
        s = Stream(d, FileLike(frames, fail_every=0), sink, stats_interval=0,
                   capture_options=dict(queue_size=1)).run()
    assert s.extra["dropped"] == 0 and s.frames == 25
    for a, b in zip(sink.images, expected_bgr(art, frames)):  # every frame, in order
        np.testing.assert_array_equal(a, b)


def test_resolution_change_and_undecodable_images(art, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    big, small = moving_frames(4, 48, 64), moving_frames(3, 40, 56, seed=1)
    for i, f in enumerate(big + small):
        cv2.imwrite(str(src / f"{i:03d}.png"), f)
    (src / "003b.png").write_bytes(b"\x89PNG broken")  # sorted between frame 3 and 4
    folder, stats = tmp_path / "out", tmp_path / "s.json"
    assert main(["--model", str(art), "--input", str(src / "*.png"), "--output", str(folder / "%04d.png"),
                 "--stats-json", str(stats), "--stats-interval", "0"]) == 0
    s = json.loads(stats.read_text())
    assert s["undecodable"] == 1 and s["resolution_changes"] == 1 and s["frames"] == 7
    written = read_folder(folder)
    assert [w.shape for w in written] == [(48, 64, 3)] * 4 + [(40, 56, 3)] * 3
    for a, b in zip(written, expected_bgr(art, big + small)):
        np.testing.assert_array_equal(a, b)

    video = tmp_path / "out.mkv"  # one video per stream: later frames are resized to the first size
    assert main(["--model", str(art), "--input", str(src), "--output", str(video), "--stats-json", str(stats),
                 "--stats-interval", "0"]) == 0
    s = json.loads(stats.read_text())
    assert s["output_resized"] == 3
    assert [f.shape for f in decode(video)] == [(48, 64, 3)] * 7


def test_side_by_side_and_input_size(art, video, tmp_path):
    out = tmp_path / "sbs"
    assert main(["--model", str(art), "--input", str(video), "--output", str(out), "--side-by-side",
                 "--input-width", "80", "--input-height", "60", "--max-frames", "3", "--stats-interval", "0"]) == 0
    written = read_folder(out)
    assert len(written) == 3 and written[0].shape == (60, 160, 3)
    first = cv2.resize(decode(video)[0], (80, 60), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(written[0][:, :80], first)
    np.testing.assert_array_equal(written[0][:, 80:], expected_bgr(art, [first])[0])


def test_uri_errors(tmp_path):
    for uri, code in [("ftp://host/x", Status.BAD_ARGUMENT), (str(tmp_path / "missing.mp4"), Status.IO)]:
        with pytest.raises(RuntimeError_) as info:
            open_source(uri)
        assert info.value.code == code
    if "GStreamer:                   NO" in cv2.getBuildInformation():
        with pytest.raises(RuntimeError_) as info:
            open_source("csi://0")
        assert info.value.code == Status.UNSUPPORTED and "GStreamer" in info.value.message
    with pytest.raises(RuntimeError_) as info:
        open_sink(str(tmp_path / "out.xyz"))
    assert info.value.code == Status.BAD_ARGUMENT
    assert isinstance(open_sink("display://0", headless=True), NullSink)
    from runtime.sinks import opencv_has_gui
    if not opencv_has_gui():
        with pytest.raises(RuntimeError_) as info:
            open_sink("display://0")
        assert info.value.code == Status.UNSUPPORTED and "GUI" in info.value.message
    assert open_source("0").live and open_source("v4l2:///dev/video1").uri == "v4l2:///dev/video1"


def test_rtsp_credentials_never_printed(art, tmp_path):
    stats = tmp_path / "s.json"
    res = subprocess.run([sys.executable, "runtime/stream.py", "--model", str(art),
                          "--input", "rtsp://admin:s3cr3tpw@127.0.0.1:9/live", "--output", "null",
                          "--max-reopen", "1", "--reopen-backoff", "0.01", "--input-timeout", "1",
                          "--stats-json", str(stats)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    everything = res.stdout + res.stderr + stats.read_text()
    assert "s3cr3tpw" not in everything and "admin" not in everything
    assert "[IO] rtsp://***:***@127.0.0.1:9/live" in res.stderr


def test_sigterm_finalises_the_video_and_stats(art, video, tmp_path):
    out, stats = tmp_path / "live.mp4", tmp_path / "s.json"
    proc = subprocess.Popen([sys.executable, "-c", BLOCK_TORCH, "runtime/stream.py", "--model", str(art),
                             "--input", str(video), "--input-loop", "-1", "--input-rate", "200",
                             "--output", str(out), "--stats-json", str(stats), "--stats-interval", "0.1"],
                            cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline, seen = time.time() + 30, 0
    try:
        while time.time() < deadline and seen < 10:
            line = proc.stderr.readline()
            if not line:
                break
            if line.startswith("[stream] frames "):
                seen = int(line.split()[2])
        assert seen >= 10, "stream produced no progress"
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=30)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, rest
    s = json.loads(stats.read_text())
    assert s["stopped_by"] == "signal:SIGTERM" and s["frames"] >= 10
    assert len(decode(out)) == s["frames"] == s["output_frames"]
    assert not list(tmp_path.glob(".*partial*"))
    assert "finishing" in rest


# -- output failures: one "[stream] error [IO] ..." line, exit 2, input released, no temporary files -------

def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("[stream] error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("case", ["proc", "dev_full", "under_a_file", "frame_name_is_a_folder", "stats_under_a_file",
                                  "video_name_is_a_folder"])
def test_unwritable_output_is_one_io_line_before_the_model_loads(tmp_path, capsys, case):
    """Checked before the model loads: the --model given does not even exist, and the IO error comes first."""
    src = tmp_path / "src"
    src.mkdir()
    cv2.imwrite(str(src / "0.png"), moving_frames(1)[0])
    (tmp_path / "afile").write_text("x")
    (tmp_path / "seq" / "000000.png").mkdir(parents=True)
    (tmp_path / "clip.mp4").mkdir()
    output, extra = {"proc": ("/proc/nope/out.mp4", []), "dev_full": ("/dev/full", []),
                     "under_a_file": (str(tmp_path / "afile" / "out.mp4"), []),
                     "frame_name_is_a_folder": (str(tmp_path / "seq" / "%06d.png"), []),
                     "stats_under_a_file": ("null", ["--stats-json", str(tmp_path / "afile" / "s.json")]),
                     "video_name_is_a_folder": (str(tmp_path / "clip.mp4"), [])}[case]
    code = main(["--model", str(tmp_path / "no_model.onnx"), "--input", str(src), "--output", output, *extra])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and line.startswith("[stream] error [IO] "), line
    assert "no_model" not in line  # the output was checked first
    assert not list(tmp_path.rglob("*.tmp*")) and not list(tmp_path.rglob(".*partial*"))


class _CountingFolder(Source):
    """A file source that records whether the stream released it."""

    uri = "fake://frames"

    def __init__(self, frames) -> None:
        self.frames, self.i, self.closed = frames, 0, 0

    def open(self):
        self.i = 0

    def read(self, buf):
        if self.i >= len(self.frames):
            return Read.EOF, None
        self.i += 1
        return Read.OK, self.frames[self.i - 1].copy()

    def close(self):
        self.closed += 1


def test_output_failing_mid_stream_releases_input_and_leaves_no_temp_files(art, tmp_path):
    """Frame 2's name is a folder: the first frames are written, then IO naming it; the source is closed."""
    (tmp_path / "out" / "000002.png").mkdir(parents=True)
    src = _CountingFolder(moving_frames(6))
    with runtime.Dehazer(art) as d:
        stream = Stream(d, src, open_sink(str(tmp_path / "out" / "%06d.png")), stats_interval=0)
        with pytest.raises(RuntimeError_) as info:
            stream.run()
    assert info.value.code == Status.IO and "000002.png" in info.value.message
    assert src.closed >= 1 and stream.stats.stopped_by == "error"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["000000.png", "000001.png", "000002.png"]
    assert not list(tmp_path.rglob(".*tmp*"))


def test_output_failing_mid_stream_through_main_is_one_line_exit_2(art, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for i, f in enumerate(moving_frames(4)):
        cv2.imwrite(str(src / f"{i}.png"), f)
    (tmp_path / "out" / "000001.png").mkdir(parents=True)
    code = main(["--model", str(art), "--input", str(src), "--output", str(tmp_path / "out" / "%06d.png"),
                 "--temporal", "0"])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and line.startswith("[stream] error [IO] ") and "000001.png" in line
    assert (tmp_path / "out" / "000000.png").is_file() and not list(tmp_path.rglob(".*tmp*"))


def test_max_reopen_zero_says_no_reopen(art):
    cam = FlakyCamera(moving_frames(10), fail_every=3)
    with runtime.Dehazer(art) as d:
        stream = Stream(d, cam, Recorder(), stats_interval=0,
                        capture_options=dict(backoff_s=0.001, max_reopen=0, drop_stale=False))
        with pytest.raises(RuntimeError_) as info:
            stream.run()
    assert info.value.code == Status.IO and "not reopened (--max-reopen 0)" in info.value.message
    assert "0 attempts" not in info.value.message
    assert main(["--model", "m.onnx", "--input", "x", "--max-reopen", "-1", "--output", "null"]) == 2
