"""Status codes and the one exception type of the runtime, plus credential masking.

The codes mirror the ``eh_status`` enum of the C contract (README.md), so a
Python host and a C host report the same number for the same failure.
Every message goes through :func:`mask_text`, so a camera URI with a
password (``rtsp://user:secret@host``) never reaches a log, an error or a
stats file.
"""
from __future__ import annotations

import enum
import re


class Status(enum.IntEnum):
    """``eh_status`` codes (0 is success; never raised)."""

    OK = 0
    BAD_ARGUMENT = 1         # wrong type/dtype/layout/option value from the caller
    BAD_ARTIFACT = 2         # missing file, not ONNX, wrong I/O contract, bad sidecar
    BACKEND_UNAVAILABLE = 3  # requested provider / tensorrt / CUDA not installed or usable
    SHAPE = 4                # frame or output buffer shape outside what the model accepts
    UNSUPPORTED = 5          # valid request the chosen backend cannot do (e.g. GPU buffer on ORT-CPU)
    IO = 6                   # a source or sink cannot be opened / read / written
    CLOSED = 7               # the handle was closed
    INTERNAL = 8             # the backend failed while running (a bug or a broken install)


# scheme://user:password@host  or  scheme://user@host  (user info is a credential too)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/@\s'\"]+)@")
# ?password=... &token=... &key=... in query strings
_SECRET_QUERY = re.compile(r"(?i)(?P<key>[?&;](?:pass(?:word)?|pwd|token|key|secret|auth)=)[^&\s'\"]*")


def mask_uri(uri: str) -> str:
    """``rtsp://user:secret@host/x?token=t`` -> ``rtsp://***:***@host/x?token=***``."""
    return mask_text(uri)


def mask_text(text: str) -> str:
    """Mask every URI credential found anywhere in ``text``."""

    def _userinfo(m: re.Match) -> str:
        masked = "***:***" if ":" in m.group("userinfo") else "***"
        return f"{m.group('scheme')}{masked}@"

    text = _USERINFO.sub(_userinfo, str(text))
    return _SECRET_QUERY.sub(lambda m: m.group("key") + "***", text)


class RuntimeError_(Exception):
    """A runtime failure with an integer ``code`` (:class:`Status`) and a ``message``.

    Named with a trailing underscore so it does not shadow Python's builtin
    ``RuntimeError``; ``str(err)`` is ``"[CODE_NAME] message"``.
    """

    def __init__(self, code: Status | int, message: str) -> None:
        self.code = Status(code)
        self.message = mask_text(message)
        super().__init__(f"[{self.code.name}] {self.message}")
