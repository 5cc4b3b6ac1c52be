"""The capture thread: read a source ahead of inference, keep frames fresh, survive drop-outs.

Live sources (cameras, network streams) keep a small queue and drop the
oldest frame when inference falls behind, so the output shows the newest
scene. Files are not live: their frames are never dropped; the thread
waits for room instead and delivers every frame in order.

Frames live in a small pool of buffers the consumer hands back, so the
steady state allocates nothing. A source that reports LOST is reopened
with exponential back-off (``backoff_s * 2**k``, capped at
``max_backoff_s``) at most ``max_reopen`` times in a row; a successful
frame resets the count.
"""
from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from .errors import RuntimeError_, Status
from .sources import Read, Source

FRAME, EOF, ERROR = "frame", "eof", "error"


class Item:
    """One queue entry: a frame (with its capture time in ms and sequence number), EOF or an error."""

    __slots__ = ("kind", "frame", "capture_ms", "seq", "error")

    def __init__(self, kind: str, frame=None, capture_ms: float = 0.0, seq: int = -1, error=None) -> None:
        self.kind, self.frame, self.capture_ms, self.seq, self.error = kind, frame, capture_ms, seq, error


class CaptureThread(threading.Thread):
    def __init__(self, source: Source, *, queue_size: int = 2, drop_stale: bool | None = None,
                 max_reopen: int = 5, backoff_s: float = 0.5, max_backoff_s: float = 8.0,
                 loop: int = 0, size: tuple[int, int] | None = None, rate: float | None = None,
                 log=None) -> None:
        super().__init__(name="edgehaze-capture", daemon=True)
        self.source = source
        self.drop_stale = source.live if drop_stale is None else drop_stale
        self.queue_size = max(1, int(queue_size))
        self.max_reopen, self.backoff_s, self.max_backoff_s = int(max_reopen), float(backoff_s), float(max_backoff_s)
        self.loop = int(loop)            # 0: play once, N: N extra passes, -1: forever (files only)
        self.size = size                 # (width, height) to resize frames to, or None
        self.rate = rate if (rate and not source.live) else None  # pace files like a camera
        self._log = log or (lambda msg: None)
        self._cv = threading.Condition()
        self._ready: deque[Item] = deque()
        self._free: list[np.ndarray] = []
        self._halt = threading.Event()
        self._raw: np.ndarray | None = None
        self._flipped: np.ndarray | None = None
        # counters (read by the stream's stats)
        self.captured = self.dropped = self.undecodable = self.reopens = self.loops_done = 0

    # -- consumer side ------------------------------------------------------------------------------
    def get(self, timeout: float) -> Item | None:
        """Next item, or None when nothing arrived within ``timeout`` seconds."""
        with self._cv:
            if not self._ready and not self._cv.wait_for(lambda: bool(self._ready), timeout):
                return None
            item = self._ready.popleft()
            self._cv.notify_all()
            return item

    def give_back(self, frame: np.ndarray) -> None:
        """Return a frame buffer to the pool once the consumer is done with it."""
        with self._cv:
            if len(self._free) < self.queue_size + 2:
                self._free.append(frame)

    def stop(self) -> None:
        self._halt.set()
        with self._cv:
            self._cv.notify_all()

    # -- producer side ------------------------------------------------------------------------------
    def _take_buffer(self) -> np.ndarray | None:
        with self._cv:
            return self._free.pop() if self._free else None

    def _publish(self, item: Item) -> None:
        with self._cv:
            if item.kind == FRAME and self.drop_stale:
                while sum(1 for it in self._ready if it.kind == FRAME) >= self.queue_size:
                    old = next(it for it in self._ready if it.kind == FRAME)
                    self._ready.remove(old)
                    self._free.append(old.frame)
                    self.dropped += 1
            elif item.kind == FRAME:
                self._cv.wait_for(lambda: len(self._ready) < self.queue_size or self._halt.is_set())
                if self._halt.is_set():
                    return
            self._ready.append(item)
            self._cv.notify_all()

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; False when stopped."""
        return not self._halt.wait(seconds)

    def _reopen(self, failures: int) -> bool:
        """Reopen after a LOST read; False once ``max_reopen`` consecutive attempts failed."""
        while failures < self.max_reopen:
            delay = min(self.backoff_s * (2 ** failures), self.max_backoff_s)
            failures += 1
            self._log(f"{self.source.uri}: source lost; reopening in {delay:.2f}s "
                      f"(attempt {failures}/{self.max_reopen})")
            if not self._sleep(delay):
                return False
            try:
                self.source.close()
                self.source.open()
            except RuntimeError_ as exc:
                self._log(f"reopen failed: {exc.message}")
                continue
            self.reopens += 1
            self._failures = failures
            return True
        self._failures = failures
        return False

    def _attempts(self) -> str:
        """How the reopening ended, for the IO error (``--max-reopen 0`` tries none)."""
        if self.max_reopen < 1:
            return "and not reopened (--max-reopen 0)"
        n = self.max_reopen
        return f"and {n} reopen attempt{'s' if n > 1 else ''} failed (--max-reopen {n})"

    def _read_one(self):
        """Read (flip by ``source.cpu_flip`` and resize to ``size``) one frame into a pooled buffer."""
        buf = self._take_buffer()
        flip = getattr(self.source, "cpu_flip", "none")
        if self.size is None and flip == "none":
            status, frame = self.source.read(buf)
            if status is not Read.OK and buf is not None:
                self.give_back(buf)
            return status, frame
        status, raw = self.source.read(self._raw)
        if status is not Read.OK:
            if buf is not None:
                self.give_back(buf)
            return status, None
        self._raw = raw
        if flip != "none":
            from .sources import apply_flip, flipped_shape
            want = flipped_shape(raw.shape, flip)
            if self.size is None:  # flip straight into the pooled buffer
                return status, apply_flip(raw, flip, dst=buf if buf is not None and buf.shape == want else None)
            prev = self._flipped  # the thread's own buffer before resizing, reused while the shape holds
            self._flipped = apply_flip(raw, flip, dst=prev if prev is not None and prev.shape == want else None)
            raw = self._flipped
        w, h = self.size
        if buf is not None and buf.shape != (h, w) + raw.shape[2:]:
            buf = None
        if raw.shape[:2] != (h, w):
            import cv2
            return status, cv2.resize(raw, (w, h), dst=buf, interpolation=cv2.INTER_AREA)
        if buf is None:
            return status, raw.copy()
        np.copyto(buf, raw)
        return status, buf

    def run(self) -> None:
        seq, self._failures = 0, 0
        next_due = time.perf_counter()
        try:
            try:
                self.source.open()
            except RuntimeError_ as exc:
                if not self.source.live:
                    raise
                self._log(exc.message)  # a camera that is not up yet gets the same back-off as a lost one
                if not self._reopen(0):
                    if not self._halt.is_set():
                        self._publish(Item(ERROR, error=RuntimeError_(
                            Status.IO, f"{self.source.uri}: cannot open {self._attempts()}")))
                    return
            while not self._halt.is_set():
                t0 = time.perf_counter()
                status, frame = self._read_one()
                capture_ms = (time.perf_counter() - t0) * 1000.0
                if status is Read.OK:
                    self._failures = 0
                    self.captured += 1
                    if self.rate:
                        next_due += 1.0 / self.rate
                        if not self._sleep(max(0.0, next_due - time.perf_counter())):
                            break
                    self._publish(Item(FRAME, frame, capture_ms, seq))
                    seq += 1
                elif status is Read.BAD:
                    self.undecodable += 1
                elif status is Read.EOF:
                    if self.loop == -1 or self.loops_done < self.loop:
                        self.loops_done += 1
                        self.source.rewind()
                        continue
                    self._publish(Item(EOF))
                    return
                else:  # LOST
                    if not self._reopen(self._failures):
                        if not self._halt.is_set():
                            self._publish(Item(ERROR, error=RuntimeError_(
                                Status.IO, f"{self.source.uri}: source lost, {self._attempts()}")))
                        return
        except RuntimeError_ as exc:
            self._publish(Item(ERROR, error=exc))
        except Exception as exc:  # never die silently: the consumer must learn why frames stopped
            self._publish(Item(ERROR, error=RuntimeError_(Status.INTERNAL, f"capture thread failed: {exc!r}")))
