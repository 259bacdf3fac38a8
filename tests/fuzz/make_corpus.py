#!/usr/bin/env python3
"""Write the seed corpus for fuzz_decode: valid messages of every kind plus hostile ones.

Input format (see fuzz_decode.c): byte 0 = feed step (0 = all at once), then raw frames.
"""
import os
import struct
import sys


class Raw(bytes):
    """Bytes mp() passes through as they are: encodings it cannot make (invalid UTF-8 in a str,
    maps with repeated keys, containers too large to spell as Python values)."""


class RawStr(bytes):
    """Bytes packed as a msgpack str (not bin): how a hostile peer sends invalid UTF-8 text."""


def mp(v):
    """A tiny msgpack encoder: enough for seeds (nil, bool, int, str, bytes, list, dict)."""
    if isinstance(v, Raw):
        return bytes(v)
    if v is None:
        return b"\xc0"
    if v is True:
        return b"\xc3"
    if v is False:
        return b"\xc2"
    if isinstance(v, int):
        if 0 <= v <= 0x7F:
            return bytes([v])
        if -32 <= v < 0:
            return struct.pack("b", v)
        if 0 <= v <= 0xFFFFFFFF:
            return b"\xce" + struct.pack(">I", v)
        if v < 0:
            return b"\xd3" + struct.pack(">q", v)
        return b"\xcf" + struct.pack(">Q", v)
    if isinstance(v, str):
        b = v.encode()
        if len(b) < 32:
            return bytes([0xA0 | len(b)]) + b
        return b"\xd9" + bytes([len(b)]) + b if len(b) < 256 else b"\xda" + struct.pack(">H", len(b)) + b
    if isinstance(v, RawStr):
        n = len(v)
        head = bytes([0xA0 | n]) if n < 32 else b"\xd9" + bytes([n]) if n < 256 else \
            b"\xda" + struct.pack(">H", n)
        return head + bytes(v)
    if isinstance(v, bytes):
        if len(v) < 256:
            return b"\xc4" + bytes([len(v)]) + v
        return b"\xc5" + struct.pack(">H", len(v)) + v
    if isinstance(v, list):
        head = bytes([0x90 | len(v)]) if len(v) < 16 else b"\xdc" + struct.pack(">H", len(v))
        return head + b"".join(mp(x) for x in v)
    if isinstance(v, dict):
        head = bytes([0x80 | len(v)]) if len(v) < 16 else b"\xde" + struct.pack(">H", len(v))
        return head + b"".join(mp(k) + mp(x) for k, x in v.items())
    raise TypeError(v)


def frame(payload):
    return struct.pack(">I", len(payload)) + payload


# Agent frames, for the targets fed an agent's bytes (sbxconn, gw_agent, gw_link).
def resp(i, result):
    return frame(mp([1, i, None, result]))


def err_resp(i, code, msg, **extra):
    e = {"code": code, "message": msg}
    e.update(extra)
    return frame(mp([1, i, e, None]))


def note(method, params):
    return frame(mp([2, method, params]))


def data(sid, b):
    return frame(mp([3, sid, b]))


def end(sid, **extra):
    p = {"stream": sid}
    p.update(extra)
    return note("stream.end", p)


# The ops of gw_agent and gw_link (fuzz_gw_uv.h's fz_take_len16): agent bytes in runs of at most
# 0xFFFF, a read size, a cancel.
def agent(*frames):
    b = b"".join(frames)
    out = b""
    while True:
        n = min(len(b), 0xFFFF)
        out += bytes([1, n >> 8, n & 0xFF]) + b[:n]
        b = b[n:]
        if not b:
            return out


def split(n):
    return bytes([2, n])


def cancel(k):
    return bytes([3, k])


SEEDS = {
    "hello": [0, 1, "hello", {"version": 1, "client": "sbx", "capabilities": ["process"]}],
    "hello_token": [0, 2, "hello", {"version": 9, "min_version": 1, "token": "s3cret"}],
    "spawn_argv": [0, 3, "proc.spawn", {"argv": ["/bin/echo", "hi"], "env": {"A": "1"},
                                        "cwd": "/tmp", "stdin": "pipe", "timeout_ms": 1000}],
    "spawn_cmd": [0, 4, "proc.spawn", {"command": "ls -l", "stderr": "stdout", "uid": 1000,
                                       "gid": 1000, "groups": [1, 2], "kill_signal": "TERM"}],
    "kill": [0, 5, "proc.kill", {"id": 1, "signal": 9, "group": True}],
    "env_set": [0, 6, "env.set", {"vars": {"PATH": "/bin", "X": ""}}],
    "resp_ok": [1, 3, None, {"id": 1, "pid": 100, "stdout": 1, "stderr": 2, "stdin": None}],
    "resp_err": [1, 3, {"code": "ENOENT", "message": "exec: nope", "errno": 2, "stage": "exec"}, None],
    "notify_exit": [2, "proc.exit", {"id": 1, "code": 0, "signal": None, "drained": True,
                                     "rusage": {"maxrss_kb": 1000}}],
    "credit": [2, "stream.credit", {"stream": 1, "bytes": 1048576}],
    "end": [2, "stream.end", {"stream": 1, "error": {"code": "STREAM", "message": "x"}}],
    "negative": [0, 7, "x", {"a": -1, "b": -100000, "c": -(2**40), "d": 2**40}],
}


def main(out):
    os.makedirs(out, exist_ok=True)
    for name, msg in SEEDS.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(b"\x00" + frame(mp(msg)))
        with open(os.path.join(out, name + "_bytewise"), "wb") as f:
            f.write(b"\x01" + frame(mp(msg)))
    data = frame(bytes([0x93, 0x03, 0x05]) + mp(b"hi" * 100))
    with open(os.path.join(out, "data"), "wb") as f:
        f.write(b"\x07" + data + data)
    several = b"".join(frame(mp(m)) for m in SEEDS.values())
    with open(os.path.join(out, "several"), "wb") as f:
        f.write(b"\x03" + several)
    hostile = {
        "array32_huge": b"\x94\x00\x01\xa1x\xdd\xff\xff\xff\xff",
        "map32_huge": b"\x94\x00\x01\xa1x\xdf\xff\xff\xff\xff",
        "str32_huge": b"\x94\x00\x01\xa1x\xdb\xff\xff\xff\xff",
        "bin32_huge": b"\x94\x00\x01\xa1x\xc6\xff\xff\xff\xff",
        "deep": b"\x91" * 40 + b"\xc0",
        "ext": b"\x94\x00\x01\xa1x\xd4\x01\x02",
    }
    for name, payload in hostile.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(b"\x00" + frame(payload))
    with open(os.path.join(out, "len_huge"), "wb") as f:
        f.write(b"\x00\xff\xff\xff\xff\x93")
    with open(os.path.join(out, "len_zero"), "wb") as f:
        f.write(b"\x02\x00\x00\x00\x00")
    write_cover(out)


def cover_seeds():
    """Seeds for what the seeds above left unreached (README.md, "Coverage"), as seed-<what>."""
    big = frame(mp([0, 8, "transfer.upload", {"path": "/tmp/x", "bytes": b"u" * 2980}]))
    bigger = frame(mp([0, 9, "fs.write", {"fh": 1, "data": b"w" * 6000}]))
    small = frame(mp([2, "stream.credit", {"stream": 1, "bytes": 7}]))
    seeds = {}
    # Frames straddling reads through every read mode of byte 0's bits 0..2 (in place into
    # sbx_framer_space, buffers taken and replaced, given buffers that must grow).
    for lead in (3, 5, 7, 0xFF):
        seeds["seed-straddle-%02x" % lead] = bytes([lead]) + big + bigger + small
    # A given buffer grown past half the cap (fuzz_decode.c's is 64 KiB): the last step is to it.
    huge = frame(mp([0, 11, "fs.write", {"fh": 1, "data": b"h" * 34000}]))
    seeds["seed-straddle-grow-to-cap"] = b"\x07" + big + huge + small
    # Stream data whose stream id is a uint64 over 2^32-1: past the fast path, then refused.
    seeds["seed-data-stream-u64"] = b"\x00" + frame(b"\x93\x03\xcf" + (1 << 32).to_bytes(8, "big")
                                                    + mp(b"x"))
    err_full = {"code": "LIMIT", "message": "m", "errno": 28, "stage": "write", "field": "data",
                "limit": "stream_window", "min": 1, "max": 10, "path": b"/tmp/\xff"}
    err_odd = {"code": "EIO", "message": "m", "min": -1, "max": "10", "errno": 99999,
               "path": b"/a\x00b"}
    err_long = {"code": "ENAMETOOLONG", "message": "m", "path": "p" * 5000}
    seeds["seed-error-fields"] = b"\x00" + b"".join(
        frame(mp([1, i + 1, e, None])) for i, e in enumerate((err_full, err_odd, err_long)))
    # Params over the accessors' caps: bin and str over 4096 bytes, 4097 items and entries.
    over = (b"\x84" + mp("path") + mp(b"p" * 4097) + mp("command") + mp("c" * 4097)
            + mp("argv") + mp([1] * 4097) + mp("env") + b"\xde" + struct.pack(">H", 4097)
            + b"\x01\xc0" * 4097)
    seeds["seed-params-over-caps"] = b"\x00" + frame(b"\x94\x00\x0a" + mp("proc.spawn") + over)
    return seeds


def write_cover(out):
    os.makedirs(out, exist_ok=True)
    for name, data in cover_seeds().items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus", "frame"))
