"""The few OSC 1.0 messages the DR2Studio Remote Script speaks, encoded and decoded with the standard
library only (Live's embedded Python has no python-osc, and a Remote Script ships as plain files).

Types: ``s`` strings, ``i`` 32-bit ints, ``f`` 32-bit floats, ``d`` doubles, ``h`` 64-bit ints,
``T``/``F``/``N``. Bundles are not used by the placement protocol and are refused.
"""
from __future__ import annotations

import struct

__all__ = ["OscError", "encode", "decode"]


class OscError(ValueError):
    """A packet that is not an OSC message this script reads."""


def _pad(data: bytes) -> bytes:
    return data + b"\x00" * (4 - len(data) % 4)


def _string(text: str) -> bytes:
    return _pad(text.encode("utf-8"))


def encode(address: str, args: list) -> bytes:
    """One OSC message: ``bool`` is sent as T/F, ``int`` as i, ``float`` as f, ``str`` as s."""
    tags, body = ",", b""
    for value in args:
        if isinstance(value, bool):
            tags += "T" if value else "F"
        elif isinstance(value, int):
            tags += "i"
            body += struct.pack(">i", value)
        elif isinstance(value, float):
            tags += "f"
            body += struct.pack(">f", value)
        elif isinstance(value, str):
            tags += "s"
            body += _string(value)
        elif value is None:
            tags += "N"
        else:
            raise OscError("cannot send a %s over OSC" % type(value).__name__)
    return _string(address) + _string(tags) + body


def _read_string(data: bytes, at: int) -> tuple:
    end = data.find(b"\x00", at)
    if end < 0:
        raise OscError("unterminated string at byte %d" % at)
    try:
        text = data[at:end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OscError("string at byte %d is not UTF-8: %s" % (at, exc)) from None
    return text, (end // 4 + 1) * 4


def decode(data: bytes) -> tuple:
    """``(address, [args])`` of one OSC message; :class:`OscError` for anything else."""
    if data.startswith(b"#bundle"):
        raise OscError("OSC bundles are not read here; send single messages")
    if not data.startswith(b"/"):
        raise OscError("not an OSC message (%d bytes)" % len(data))
    address, at = _read_string(data, 0)
    if at >= len(data):
        return address, []
    tags, at = _read_string(data, at)
    if not tags.startswith(","):
        raise OscError("%s: type tags must start with ','" % address)
    args = []
    for tag in tags[1:]:
        if tag in "if":
            if at + 4 > len(data):
                raise OscError("%s: argument data ends early" % address)
            args.append(struct.unpack(">" + tag, data[at:at + 4])[0])
            at += 4
        elif tag in "dh":
            if at + 8 > len(data):
                raise OscError("%s: argument data ends early" % address)
            args.append(struct.unpack(">" + ("d" if tag == "d" else "q"), data[at:at + 8])[0])
            at += 8
        elif tag == "s":
            text, at = _read_string(data, at)
            args.append(text)
        elif tag in "TFN":
            args.append({"T": True, "F": False, "N": None}[tag])
        else:
            raise OscError("%s: OSC type '%s' is not read here (use s, i, f)" % (address, tag))
    return address, args
