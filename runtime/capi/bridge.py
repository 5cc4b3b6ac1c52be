"""Python side of libedgehaze_runtime.so: the ``@ffi.def_extern`` functions behind glue.c's eh_* calls.

build.py embeds this text in the library's init code, which runs it once per process with the
library's ``ffi``/``lib`` and the imported ``runtime`` package, then calls :func:`install`.
Failures are ``RuntimeError_`` (their ``Status`` number is returned and the message goes to the
thread-local ``eh_last_error``); anything else becomes ``EH_INTERNAL`` with the exception named.
Caller buffers are wrapped where they lie (``np.frombuffer(ffi.buffer(ptr, n))``, or a
``__cuda_array_interface__`` object for device memory), never copied; the wrappers are kept per
handle and reused while the caller passes the same pointer, size and stride, so a steady-state
frame costs a few attribute reads before ``Dehazer.run``.
"""
import collections
import dataclasses
import os

import numpy as np

_KEEP_CLOSED = 4096  # closed handle addresses remembered, so a stale copy reads EH_CLOSED, not garbage


def _c_kind(annotation: str) -> str:
    """How an Options field is laid out in eh_options (tests/test_capi.py checks the header agrees)."""
    base = str(annotation).replace(" ", "").replace("|None", "").replace("Optional[", "").rstrip("]")
    return {"str": "const char *", "int": "int32_t", "bool": "int32_t", "float": "double"}[base]


def install(ffi, lib, runtime) -> None:  # noqa: C901 - one closure per exported call, kept together
    Status, RuntimeError_, Options = runtime.Status, runtime.RuntimeError_, runtime.Options
    image_size = ffi.sizeof("eh_image")
    options_size = ffi.sizeof("eh_options")
    handles: dict[int, "_Handle"] = {}
    closed: collections.OrderedDict[int, None] = collections.OrderedDict()
    strings: dict[str, object] = {}  # default option strings, alive for the process
    orders = {0: None, 1: "RGB", 2: "BGR"}
    order_codes = {"RGB": 1, "BGR": 2}

    c_fields = dict(ffi.typeof("eh_options").fields)
    layout = []  # (field name, C kind, end offset in eh_options)
    missing = []
    for f in dataclasses.fields(Options):
        if f.name in c_fields:
            cf = c_fields[f.name]
            layout.append((f.name, _c_kind(f.type), cf.offset + ffi.sizeof(cf.type)))
        else:
            missing.append(f.name)

    def check_layout() -> None:
        if missing:
            raise RuntimeError_(Status.INTERNAL, f"this library's eh_options lacks option(s) {missing} of the "
                                                 "Python runtime; rebuild it (python runtime/capi/build.py)")

    class _Handle:
        __slots__ = ("dehazer", "keep", "name", "views")

        def __init__(self, dehazer) -> None:
            self.dehazer = dehazer
            self.keep = ffi.new_handle(self)  # its address is the eh_handle* the caller holds
            self.name = ffi.new("char[]", dehazer.backend_name.encode())
            self.views: dict[str, tuple] = {}

    def address(ptr) -> int:
        return int(ffi.cast("uintptr_t", ptr))

    def lookup(ptr) -> _Handle:
        if ptr == ffi.NULL:
            raise RuntimeError_(Status.CLOSED, "handle is NULL (eh_close set it to NULL, or eh_create failed)")
        key = address(ptr)
        state = handles.get(key)
        if state is None:
            if key in closed:
                raise RuntimeError_(Status.CLOSED, "handle was closed by eh_close")
            raise RuntimeError_(Status.BAD_ARGUMENT, "handle did not come from eh_create")
        return state

    def guarded(name: str):
        """def_extern for ``name``: RuntimeError_ -> its code; anything else -> EH_INTERNAL (onerror)."""

        def onerror(exc_type, exc, tb) -> None:
            lib.eh__set_error(f"internal error in {name.replace('eh__py_', 'eh_')}: "
                              f"{exc_type.__name__}: {exc}".encode(errors="replace"))

        def wrap(fn):
            def call(*args):
                try:
                    return fn(*args)
                except RuntimeError_ as err:
                    lib.eh__set_error(str(err).encode(errors="replace"))
                    return int(err.code)

            call.__name__ = name
            return ffi.def_extern(name=name, error=int(Status.INTERNAL), onerror=onerror)(call)

        return wrap

    def c_string(text: str | None):
        if text is None:
            return ffi.NULL
        if text not in strings:
            strings[text] = ffi.new("char[]", text.encode())
        return strings[text]

    def options_from_c(p) -> "Options":
        check_layout()
        if p == ffi.NULL:
            return Options()
        size = p.struct_size
        if size == 0 or size > options_size:
            raise RuntimeError_(Status.BAD_ARGUMENT, f"eh_options.struct_size is {size}, this library's is "
                                                     f"{options_size}: call eh_options_init(&opts) first")
        defaults, kw = Options(), {}
        for name, kind, end in layout:
            if end > size:  # an older caller's smaller struct: the field it does not know keeps its default
                continue
            value = getattr(p, name)
            if kind == "const char *":
                kw[name] = os.fsdecode(ffi.string(value)) if value != ffi.NULL else getattr(defaults, name)
            elif kind == "double":
                kw[name] = float(value)
            elif isinstance(getattr(defaults, name), bool):
                if value not in (0, 1):
                    raise RuntimeError_(Status.BAD_ARGUMENT, f"eh_options.{name} is a flag (0 or 1), got {value}")
                kw[name] = bool(value)
            else:
                kw[name] = int(value)
        return Options(**kw)

    def wrap_image(state: _Handle, img, what: str, writable: bool):
        """The caller's eh_image as an array (host) or a __cuda_array_interface__ object, without a copy."""
        if img == ffi.NULL:
            raise RuntimeError_(Status.BAD_ARGUMENT, f"{what} is NULL")
        if img.struct_size != image_size:
            raise RuntimeError_(Status.BAD_ARGUMENT, f"{what}->struct_size is {img.struct_size}, expected "
                                                     f"sizeof(eh_image) = {image_size} (use EH_IMAGE_INIT)")
        data, device = address(img.data), address(img.device_data)
        key = (data, device, img.width, img.height, img.row_stride, img.channel_order)
        cached = state.views.get(what)
        if cached is not None and cached[0] == key:
            return cached[1]
        w, h, stride, order = key[2:]
        if w < 1 or h < 1:
            raise RuntimeError_(Status.SHAPE, f"{what} is {w}x{h} (WxH); width and height must be >= 1")
        if order not in orders:
            raise RuntimeError_(Status.BAD_ARGUMENT, f"{what}->channel_order is {order}; use EH_CHANNELS_*")
        want = state.dehazer.channel_order
        if orders[order] not in (None, want):
            raise RuntimeError_(Status.BAD_ARGUMENT, f"{what} is {orders[order]} but "
                                                     f"{state.dehazer.artifact.model_path.name} takes {want}: "
                                                     "swap the channels, or export with --channel-order "
                                                     f"{orders[order]}")
        packed = w * 3
        if stride == 0:
            stride = packed
        if stride < packed:
            raise RuntimeError_(Status.BAD_ARGUMENT, f"{what}->row_stride {stride} is less than width*3 = {packed}")
        if stride != packed:
            raise RuntimeError_(Status.BAD_ARGUMENT, f"{what}->row_stride {stride} pads rows (width*3 = {packed}); "
                                                     "the backends bind packed rows only and never copy: set "
                                                     "row_stride to 0 or width*3")
        if (data == 0) == (device == 0):
            raise RuntimeError_(Status.BAD_ARGUMENT, f"{what}: set exactly one of data (host) and device_data "
                                                     "(CUDA)")
        if data:
            arr = np.frombuffer(ffi.buffer(img.data, h * stride), np.uint8).reshape(h, w, 3)
            if not writable:
                arr.flags.writeable = False
            view = arr
        else:
            view = _DeviceImage(device, h, w, readonly=not writable)
        state.views[what] = (key, view)
        return view

    @guarded("eh__py_options_init")
    def _options_init(p) -> int:
        check_layout()
        if p == ffi.NULL:
            raise RuntimeError_(Status.BAD_ARGUMENT, "eh_options_init: opts is NULL")
        defaults = Options()
        p.struct_size = options_size
        for name, kind, _ in layout:
            value = getattr(defaults, name)
            setattr(p, name, c_string(value) if kind == "const char *" else value)
        return 0

    @guarded("eh__py_create")
    def _create(path, opts, out) -> int:
        if out == ffi.NULL:
            raise RuntimeError_(Status.BAD_ARGUMENT, "eh_create: out is NULL (pass &handle)")
        if path == ffi.NULL:
            raise RuntimeError_(Status.BAD_ARGUMENT, "eh_create: path is NULL")
        state = _Handle(runtime.Dehazer(os.fsdecode(ffi.string(path)), options_from_c(opts)))
        key = address(state.keep)
        handles[key] = state
        closed.pop(key, None)
        out[0] = ffi.cast("eh_handle *", state.keep)
        return 0

    @guarded("eh__py_run")
    def _run(handle, src, dst) -> int:
        state = lookup(handle)
        state.dehazer.run(wrap_image(state, src, "in", False), wrap_image(state, dst, "out", True))
        return 0

    @guarded("eh__py_close")
    def _close(pp) -> int:
        if pp == ffi.NULL:
            raise RuntimeError_(Status.BAD_ARGUMENT, "eh_close: pass &handle, not NULL")
        if pp[0] != ffi.NULL:
            key = address(pp[0])
            state = handles.pop(key, None)
            if state is None and key not in closed:
                raise RuntimeError_(Status.BAD_ARGUMENT, "eh_close: handle did not come from eh_create")
            closed[key] = None
            while len(closed) > _KEEP_CLOSED:
                closed.popitem(last=False)
            pp[0] = ffi.NULL
            if state is not None:
                state.views.clear()
                state.dehazer.close()
        return 0

    @guarded("eh__py_backend_name")
    def _backend_name(handle, name) -> int:
        state = lookup(handle)
        if name == ffi.NULL:
            raise RuntimeError_(Status.BAD_ARGUMENT, "eh_get_backend_name: name is NULL")
        name[0] = state.name
        return 0

    @guarded("eh__py_channel_order")
    def _channel_order(handle, order) -> int:
        state = lookup(handle)
        if order == ffi.NULL:
            raise RuntimeError_(Status.BAD_ARGUMENT, "eh_get_channel_order: order is NULL")
        order[0] = order_codes[state.dehazer.channel_order]
        return 0


class _DeviceImage:
    """CUDA memory the caller owns, described by ``__cuda_array_interface__`` (v3) for the runtime."""

    def __init__(self, ptr: int, h: int, w: int, *, readonly: bool) -> None:
        self.__cuda_array_interface__ = {"shape": (h, w, 3), "typestr": "|u1", "data": (ptr, readonly),
                                         "strides": None, "version": 3}
