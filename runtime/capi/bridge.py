"""Python side of libedgehaze_runtime.so: the ``@ffi.def_extern`` functions behind glue.c's eh_* calls.

build.py embeds this text in the library's init code, which runs it once per process with the
library's ``ffi``/``lib`` and the imported ``runtime`` package, then calls :func:`install`.
Failures are ``RuntimeError_`` (their ``Status`` number is returned and the message goes to the
thread-local ``eh_last_error``); anything else becomes ``EH_INTERNAL`` with the exception named.
Caller buffers are wrapped where they lie (``np.frombuffer(ffi.buffer(ptr, n))``, or a
``__cuda_array_interface__`` object for device memory), never copied; the wrappers are kept per
handle and reused while the caller passes the same pointer, size and stride, so a steady-state
frame costs a few attribute reads before ``Dehazer.run``.

Handles, their generations and the per-handle lock live in glue.c's handle table: a call reaches
this file only for an open handle, with the bridge's ``_Handle`` (as a cffi handle) that its slot holds.
"""
import dataclasses
import os

try:
    import numpy as np
except ImportError:  # the loader (build.py) reports it: the runtime cannot import either
    np = None

_ORDERS = {0: None, 1: "RGB", 2: "BGR"}  # eh_channel_order -> the sidecar's channel_order (0: whatever it is)
_ORDER_CODES = {"RGB": 1, "BGR": 2}


def _c_kind(annotation: str) -> str | None:
    """How an Options field is laid out in eh_options (tests/test_capi.py checks the header agrees)."""
    base = str(annotation).replace(" ", "").replace("|None", "")
    return {"str": "const char *", "int": "int32_t", "bool": "int32_t", "float": "double"}.get(base)


class _DeviceImage:
    """CUDA memory the caller owns, described by ``__cuda_array_interface__`` (v3) for the runtime."""

    def __init__(self, ptr: int, h: int, w: int, *, readonly: bool) -> None:
        self.__cuda_array_interface__ = {"shape": (h, w, 3), "typestr": "|u1", "data": (ptr, readonly),
                                         "strides": None, "version": 3}


class _Handle:
    """What a handle-table slot holds: a Dehazer, its C strings and the caller's wrapped buffers."""

    __slots__ = ("dehazer", "keep", "name", "views")

    def __init__(self, ffi, dehazer) -> None:
        self.dehazer = dehazer
        self.keep = ffi.new_handle(self)  # the void* glue.c's slot holds (kept alive in Bridge.handles)
        self.name = ffi.new("char[]", dehazer.backend_name.encode())
        self.views: dict = {}  # "in"/"out" -> (key of the eh_image, wrapped buffer)


class Bridge:
    """The eh_* calls over ``runtime``; each public method returns an eh_status or raises RuntimeError_."""

    def __init__(self, ffi, lib, runtime) -> None:
        self.ffi, self.lib, self.rt = ffi, lib, runtime
        self.Status, self.Error = runtime.Status, runtime.RuntimeError_
        self.image_size = ffi.sizeof("eh_image")
        self.options_size = ffi.sizeof("eh_options")
        self.size_field = ffi.sizeof("size_t")  # struct_size itself: a struct_size below it covers nothing
        self.image_fields = {n: f.offset + ffi.sizeof(f.type) for n, f in ffi.typeof("eh_image").fields}
        self.handles: dict = {}  # address of _Handle.keep -> _Handle, open handles only
        self.strings: dict = {}  # default option strings handed to C, alive for the process
        c_fields = dict(ffi.typeof("eh_options").fields)
        self.layout = []  # (field name, C kind, end offset in eh_options)
        self.missing = []
        for f in dataclasses.fields(runtime.Options):
            kind = _c_kind(f.type)
            if f.name in c_fields and kind is not None:
                cf = c_fields[f.name]
                self.layout.append((f.name, kind, cf.offset + ffi.sizeof(cf.type)))
            else:  # an option the header does not carry (yet): eh_create says so instead of ignoring it
                self.missing.append(f.name)

    # -- helpers ------------------------------------------------------------------------------------
    def fail(self, code, message: str):
        return self.Error(getattr(self.Status, code), message)

    def address(self, ptr) -> int:
        return int(self.ffi.cast("uintptr_t", ptr))

    def lookup(self, ptr) -> _Handle:
        """The _Handle a table slot holds (glue.c checked the handle's generation and holds its lock)."""
        return self.ffi.from_handle(ptr)

    def check_size(self, p, field: str, size: int, full: int) -> None:
        """The ABI rule of every struct: ``struct_size`` at least covers itself; a smaller (older) struct
        gets defaults for the fields it does not reach; a larger (newer) one is accepted when the fields
        this library does not know are all zero (their "as before" value), else refused."""
        if size < self.size_field:
            raise self.fail("BAD_ARGUMENT", f"{field} is {size}, smaller than the struct_size field itself "
                                            f"({self.size_field} bytes); set it to sizeof (this library's is {full})")
        if size > full:
            tail = bytes(self.ffi.buffer(self.ffi.cast("char *", p), size)[full:])
            if any(tail):
                first = full + next(i for i, b in enumerate(tail) if b)
                raise self.fail("BAD_ARGUMENT", f"{field} is {size}, this library's is {full}, and byte "
                                                f"{first} of the newer fields is set: a field this library does not "
                                                "have cannot be honoured; use a library as new as your header")

    def check_layout(self) -> None:
        if self.missing:
            raise self.fail("INTERNAL", f"this library's eh_options lacks option(s) {self.missing} of the Python "
                                        "runtime; rebuild it (python runtime/capi/build.py)")

    def c_string(self, text):
        if text is None:
            return self.ffi.NULL
        if text not in self.strings:
            self.strings[text] = self.ffi.new("char[]", text.encode())
        return self.strings[text]

    def options_from_c(self, p):
        """eh_options -> Options; fields past an older caller's struct_size keep their defaults."""
        self.check_layout()
        defaults = self.rt.Options()
        if p == self.ffi.NULL:
            return defaults
        size = p.struct_size
        self.check_size(p, "eh_options.struct_size", size, self.options_size)
        kw = {}
        for name, kind, end in self.layout:
            if end > size:
                continue
            value = getattr(p, name)
            if kind == "const char *":
                kw[name] = os.fsdecode(self.ffi.string(value)) if value != self.ffi.NULL else getattr(defaults, name)
            elif kind == "double":
                kw[name] = float(value)
            elif isinstance(getattr(defaults, name), bool):
                kw[name] = bool(value) if value in (0, 1) else value  # Options refuses anything else, same words
            else:
                kw[name] = int(value)
        return self.rt.Options(**kw)  # validates types and bounds exactly as the Python API does

    def wrap_image(self, state: _Handle, img, what: str, writable: bool):
        """The caller's eh_image as an array (host) or a __cuda_array_interface__ object, without a copy."""
        ffi = self.ffi
        if img == ffi.NULL:
            raise self.fail("BAD_ARGUMENT", f"{what} is NULL")
        size = img.struct_size
        if size == self.image_size:
            key = (self.address(img.data), self.address(img.device_data), img.width, img.height, img.row_stride,
                   img.channel_order)
        else:
            key = self._image_key(img, what, size)
        cached = state.views.get(what)
        if cached is not None and cached[0] == key:
            return cached[1]
        view = self._new_view(state, img, what, writable, key)
        state.views[what] = (key, view)
        return view

    def _image_key(self, img, what: str, size: int) -> tuple:
        """An eh_image of another struct_size (the rule of :meth:`check_size`): fields it does not
        reach take their zero default (row_stride 0 = packed, channel_order EH_CHANNELS_ARTIFACT)."""
        self.check_size(img, f"{what}->struct_size", size, self.image_size)
        ends = self.image_fields
        short = [n for n in ("data", "device_data", "width", "height") if ends[n] > size]
        if short:
            raise self.fail("BAD_ARGUMENT", f"{what}->struct_size {size} ends before {short[0]}; set it to "
                                            f"sizeof(eh_image) = {self.image_size} (EH_IMAGE_INIT does)")
        stride = img.row_stride if ends["row_stride"] <= size else 0
        order = img.channel_order if ends["channel_order"] <= size else 0
        return (self.address(img.data), self.address(img.device_data), img.width, img.height, stride, order)

    def _new_view(self, state: _Handle, img, what: str, writable: bool, key: tuple):
        data, device, w, h, stride, order = key
        if w < 1 or h < 1:
            raise self.fail("SHAPE", f"{what} is {w}x{h} (WxH); width and height must be >= 1")
        if order not in _ORDERS:
            order = int(self.ffi.cast("int32_t", order))  # the enum reads unsigned: -1 would print as 4294967295
            raise self.fail("BAD_ARGUMENT", f"{what}->channel_order is {order}; use EH_CHANNELS_ARTIFACT (0), "
                                            "EH_CHANNELS_RGB (1) or EH_CHANNELS_BGR (2)")
        want = state.dehazer.channel_order
        if _ORDERS[order] not in (None, want):
            raise self.fail("BAD_ARGUMENT", f"{what} is {_ORDERS[order]} but {state.dehazer.artifact.model_path.name}"
                                            f" takes {want}: swap the channels, or export with --channel-order "
                                            f"{_ORDERS[order]}")
        packed = w * 3
        stride = stride or packed
        if stride < packed:
            raise self.fail("BAD_ARGUMENT", f"{what}->row_stride {stride} is less than width*3 = {packed}")
        if stride != packed:
            raise self.fail("BAD_ARGUMENT", f"{what}->row_stride {stride} pads rows (width*3 = {packed}); the "
                                            "backends bind packed rows only and never copy: set row_stride to 0 "
                                            "or width*3")
        if (data == 0) == (device == 0):
            raise self.fail("BAD_ARGUMENT", f"{what}: set exactly one of data (host) and device_data (CUDA)")
        if device:
            return _DeviceImage(device, h, w, readonly=not writable)
        arr = np.frombuffer(self.ffi.buffer(self.ffi.cast("uint8_t *", data), h * stride), np.uint8).reshape(h, w, 3)
        if not writable:
            arr.flags.writeable = False
        return arr

    # -- the calls ----------------------------------------------------------------------------------
    def options_init(self, p) -> int:
        self.check_layout()
        if p == self.ffi.NULL:
            raise self.fail("BAD_ARGUMENT", "eh_options_init: opts is NULL")
        defaults = self.rt.Options()
        p.struct_size = self.options_size
        for name, kind, _ in self.layout:
            value = getattr(defaults, name)
            setattr(p, name, self.c_string(value) if kind == "const char *" else value)
        return 0

    def create(self, path, opts, out) -> int:
        """A new _Handle in ``*out`` (glue.c files it in a table slot and hands the caller a handle)."""
        ffi = self.ffi
        if path == ffi.NULL:
            raise self.fail("BAD_ARGUMENT", "eh_create: path is NULL")
        # create(): a path, or a shipped model name ("edgehaze-s") checked against runtime/models/manifest.json
        state = _Handle(ffi, self.rt.create(os.fsdecode(ffi.string(path)), self.options_from_c(opts)))
        self.handles[self.address(state.keep)] = state
        out[0] = state.keep
        return 0

    def run(self, handle, src, dst) -> int:
        state = self.lookup(handle)
        state.dehazer.run(self.wrap_image(state, src, "in", False), self.wrap_image(state, dst, "out", True))
        return 0

    def close(self, handle) -> int:
        state = self.handles.pop(self.address(handle), None)
        if state is not None:
            state.views.clear()
            state.dehazer.close()
        return 0

    def backend_name(self, handle, name) -> int:
        state = self.lookup(handle)
        if name == self.ffi.NULL:
            raise self.fail("BAD_ARGUMENT", "eh_get_backend_name: name is NULL")
        name[0] = state.name
        return 0

    def channel_order(self, handle, order) -> int:
        state = self.lookup(handle)
        if order == self.ffi.NULL:
            raise self.fail("BAD_ARGUMENT", "eh_get_channel_order: order is NULL")
        order[0] = _ORDER_CODES[state.dehazer.channel_order]
        return 0


def install(ffi, lib, runtime) -> Bridge:
    """Attach each Bridge call to its extern "Python" name: RuntimeError_ -> its code, else EH_INTERNAL."""
    bridge = Bridge(ffi, lib, runtime)
    calls = {"eh__py_options_init": bridge.options_init, "eh__py_create": bridge.create, "eh__py_run": bridge.run,
             "eh__py_close": bridge.close, "eh__py_backend_name": bridge.backend_name,
             "eh__py_channel_order": bridge.channel_order}
    for name, method in calls.items():
        _attach(ffi, lib, runtime, name, method)
    return bridge


def _attach(ffi, lib, runtime, name: str, method) -> None:
    error_type, internal = runtime.RuntimeError_, int(runtime.Status.INTERNAL)
    public = name.replace("eh__py_", "eh_")

    def onerror(exc_type, exc, tb) -> None:  # cffi returns `internal` after this
        lib.eh__set_error(f"[INTERNAL] {public}: {exc_type.__name__}: {exc}".encode(errors="replace"))

    def call(*args):
        try:
            return method(*args)
        except error_type as err:
            lib.eh__set_error(str(err).encode(errors="replace"))
            return int(err.code)

    ffi.def_extern(name=name, error=internal, onerror=onerror)(call)
