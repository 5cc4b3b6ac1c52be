"""What an ONNX file says about itself, read without onnx or onnxruntime: ``metadata_props`` and op types.

The runtime checks a sidecar against the copy of the contract that ``edgehaze
export`` stores in the graph's own ``metadata_props`` *before* a session
exists: on ONNX Runtime's TensorRT provider the sidecar's precision chooses
the engine's build flags, so a lying sidecar must be caught before the
build, and the ``onnx`` package is not a runtime requirement. A ModelProto
is protobuf; only its top level (``graph`` = field 7, ``metadata_props`` =
field 14) and the graph's nodes (field 1: ``name`` = 3, ``op_type`` = 4) are
read, everything else is skipped by its length.
"""
from __future__ import annotations

import json
import mmap
from pathlib import Path

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# the exporter's own uint8 <-> float steps (export/fused.py) are QuantizeLinear/DequantizeLinear nodes named
# fused/...; an INT8 (Q/DQ) graph is one with others (the count export/pipeline.py reports)
FUSED_PREFIX = "fused/"


class _Malformed(ValueError):
    pass


def _varint(buf, pos: int, end: int) -> "tuple[int, int]":
    value, shift = 0, 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _fields(buf, pos: int, end: int):
    """(field number, start, stop) of each length-delimited field in buf[pos:end]; other wire types skipped."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, pos = _varint(buf, pos, end)
            if pos + size > end:
                raise _Malformed("field runs past the end")
            yield number, pos, pos + size
            pos += size
        else:
            raise _Malformed(f"wire type {wire}")


def read_onnx_facts(path: "str | Path") -> "dict | None":
    """``{"metadata_props": {key: raw string}, "ops": set of op types, "qdq": Q/DQ nodes of the model}``
    of the main graph, or None when the file is not readable protobuf (onnxruntime then says what is
    wrong with it)."""
    try:
        with open(path, "rb") as fh:
            if fh.seek(0, 2) == 0:
                return None
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _facts(buf)
    except (OSError, ValueError):
        return None


def _facts(buf) -> dict:
    props: dict = {}
    ops: set = set()
    qdq = 0
    for number, start, stop in _fields(buf, 0, len(buf)):
        if number == 14:  # StringStringEntryProto: key = 1, value = 2
            entry = {n: bytes(buf[a:b]).decode("utf-8", "replace") for n, a, b in _fields(buf, start, stop)}
            if 1 in entry:
                props[entry[1]] = entry.get(2, "")
        elif number == 7:  # GraphProto: node = 1
            for gnum, gstart, gstop in _fields(buf, start, stop):
                if gnum == 1:
                    node = {n: bytes(buf[a:b]).decode("utf-8", "replace")
                            for n, a, b in _fields(buf, gstart, gstop) if n in (3, 4)}
                    op = node.get(4, "")
                    ops.add(op)
                    qdq += op in QDQ_OPS and not node.get(3, "").startswith(FUSED_PREFIX)
    return {"metadata_props": props, "ops": ops, "qdq": qdq}


def decode_props(props: dict) -> dict:
    """``metadata_props`` values are JSON-encoded sidecar values (plain strings stay strings)."""
    out = {}
    for key, value in props.items():
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out
