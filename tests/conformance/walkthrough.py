#!/usr/bin/env python3
"""PROTOCOL.md §24 ("Writing a client") from the real agent's bytes.

Runs the exchange §24 describes against a real sbx-agent (sbxwire.Agent on a unix socket),
captures the raw frames both sides sent, and renders every example block of §24 (value notation,
annotated dump, plain hex dump) from those bytes. The generated blocks sit between marker lines
in PROTOCOL.md:

    <!-- walkthrough:begin NAME -->
    ...generated...
    <!-- walkthrough:end NAME -->

Usage:
    walkthrough.py [BUILD_DIR]            print the generated blocks
    walkthrough.py --write [BUILD_DIR]    rewrite the blocks in PROTOCOL.md in place
    walkthrough.py --check [BUILD_DIR]    exit 1 with a diff if PROTOCOL.md differs
    (--doc FILE works on another copy of PROTOCOL.md)

BUILD_DIR defaults to $SBX_BUILD, then to ../../build next to this file; the agent is
BUILD_DIR/bin/sbx-agent.

Byte fidelity: client frames are exactly the bytes this script sends. Agent frames are exactly
the bytes the agent sent, except the values listed in PINNED (they differ from run to run):
each is replaced, in place, by the shortest msgpack encoding of a fixed example value, and the
length prefix is recomputed. That is the encoding the agent itself uses: every agent frame is
verified to use shortest encodings (so the splice reproduces the agent's choice), and nothing else
in the frame is touched. The exchange is run twice, on two fresh agents; if the two renderings
differ, some varying value is not pinned and the script fails instead of writing a flaky example.

Standard library only (plus tests/integration/sbxwire.py for the Agent fixture and the client
encoder).
"""
import difflib
import json
import os
import re
import shutil
import socket
import struct
import sys

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(SRC, "tests", "integration"))
import sbxwire  # noqa: E402

DOC = os.path.join(SRC, "protocol", "PROTOCOL.md")
SECTION = "## 24."          # the generated blocks must lie inside this section ...
NEXT_SECTION = "\n## 25."   # ... which ends here
TIMEOUT = 60                # seconds per socket read; generous for a loaded 2-core machine

# Values that vary between runs, by path inside the result map (responses) or the params map
# (notifications) of an agent frame, with the fixed example value they are rendered as. Only
# these are rewritten; PROTOCOL.md §24's introduction lists them (keep the two in step).
PINNED = {
    ("conn",): 1,                    # hello: sbxwire.Agent's readiness probe is connection 1
    ("pid",): 412,                   # proc.spawn result, proc.exit
    ("duration_ns",): 1843211,       # proc.exit
    ("rusage", "maxrss_kb"): 1536,   # proc.exit
    ("rusage", "utime_us"): 0,       # proc.exit
    ("rusage", "stime_us"): 912,     # proc.exit
}
PINNED_NOTE = " (varies: example value)"

WIDTH = 100  # the longest line of value notation in PROTOCOL.md


# --- a msgpack decoder that keeps byte spans -------------------------------------------------

class Node:
    """One decoded msgpack value: raw span [start, end), header [start, hdr), format name."""
    __slots__ = ("start", "hdr", "end", "fmt", "kind", "value", "items")

    def __init__(self, start, hdr, end, fmt, kind, value, items=None):
        self.start, self.hdr, self.end = start, hdr, end
        self.fmt, self.kind, self.value, self.items = fmt, kind, value, items


_INT_FMT = {0xCC: ("uint8", 1, False), 0xCD: ("uint16", 2, False), 0xCE: ("uint32", 4, False),
            0xCF: ("uint64", 8, False), 0xD0: ("int8", 1, True), 0xD1: ("int16", 2, True),
            0xD2: ("int32", 4, True), 0xD3: ("int64", 8, True)}
_LEN_FMT = {0xD9: ("str8", 1, "str"), 0xDA: ("str16", 2, "str"), 0xDB: ("str32", 4, "str"),
            0xC4: ("bin8", 1, "bin"), 0xC5: ("bin16", 2, "bin"), 0xC6: ("bin32", 4, "bin"),
            0xDC: ("array16", 2, "array"), 0xDD: ("array32", 4, "array"),
            0xDE: ("map16", 2, "map"), 0xDF: ("map32", 4, "map")}


def _need(b, i, n):
    if i + n > len(b):
        raise ValueError("truncated msgpack value at offset %d" % i)


def decode(b, i=0, depth=0):
    if depth > 32:
        raise ValueError("nesting deeper than 32")
    _need(b, i, 1)
    t = b[i]
    if t <= 0x7F:
        return Node(i, i + 1, i + 1, "positive fixint", "int", t)
    if t >= 0xE0:
        return Node(i, i + 1, i + 1, "negative fixint", "int", t - 256)
    if t == 0xC0:
        return Node(i, i + 1, i + 1, "nil", "nil", None)
    if t in (0xC2, 0xC3):
        return Node(i, i + 1, i + 1, "true" if t == 0xC3 else "false", "bool", t == 0xC3)
    if t in _INT_FMT:
        name, w, signed = _INT_FMT[t]
        _need(b, i + 1, w)
        return Node(i, i + 1, i + 1 + w, name, "int",
                    int.from_bytes(b[i + 1:i + 1 + w], "big", signed=signed))
    if t in (0xCA, 0xCB):
        w = 4 if t == 0xCA else 8
        _need(b, i + 1, w)
        v = struct.unpack(">f" if w == 4 else ">d", b[i + 1:i + 1 + w])[0]
        return Node(i, i + 1, i + 1 + w, "float32" if w == 4 else "float64", "float", v)
    if 0xA0 <= t <= 0xBF:
        name, hdr, n, kind = "fixstr", i + 1, t & 31, "str"
    elif 0x90 <= t <= 0x9F:
        name, hdr, n, kind = "fixarray", i + 1, t & 15, "array"
    elif 0x80 <= t <= 0x8F:
        name, hdr, n, kind = "fixmap", i + 1, t & 15, "map"
    elif t in _LEN_FMT:
        name, w, kind = _LEN_FMT[t]
        _need(b, i + 1, w)
        hdr, n = i + 1 + w, int.from_bytes(b[i + 1:i + 1 + w], "big")
    else:
        raise ValueError("msgpack format byte 0x%02x is not allowed (ext or 0xc1)" % t)
    if kind in ("str", "bin"):
        _need(b, hdr, n)
        raw = bytes(b[hdr:hdr + n])
        if kind == "str":
            raw = raw.decode("utf-8")  # the agent sends only valid UTF-8 as str (§4.4)
        return Node(i, hdr, hdr + n, name, kind, raw)
    j, items = hdr, []
    for _ in range(n):
        if kind == "array":
            e = decode(b, j, depth + 1)
            items.append(e)
            j = e.end
        else:
            k = decode(b, j, depth + 1)
            v = decode(b, k.end, depth + 1)
            items.append((k, v))
            j = v.end
    value = ([e.value for e in items] if kind == "array"
             else {k.value: v.value for k, v in items})
    return Node(i, hdr, j, name, kind, value, items)


def decode_message(payload):
    root = decode(payload)
    if root.end != len(payload):
        raise ValueError("trailing bytes after the message")
    if root.kind != "array" or not root.items or root.items[0].kind != "int":
        raise ValueError("not a message")
    return root


# --- shortest encodings ----------------------------------------------------------------------

def shortest_int(v):
    if 0 <= v <= 0x7F:
        return bytes([v])
    if -32 <= v < 0:
        return struct.pack("b", v)
    if v >= 0:
        for t, fmt in ((0xCC, ">B"), (0xCD, ">H"), (0xCE, ">I"), (0xCF, ">Q")):
            if v < 1 << (8 * struct.calcsize(fmt)):
                return bytes([t]) + struct.pack(fmt, v)
    for t, fmt in ((0xD0, ">b"), (0xD1, ">h"), (0xD2, ">i"), (0xD3, ">q")):
        if v >= -(1 << (8 * struct.calcsize(fmt) - 1)):
            return bytes([t]) + struct.pack(fmt, v)
    raise ValueError(v)


def shortest_header(kind, n):
    if kind == "str":
        if n < 32:
            return bytes([0xA0 | n])
        return b"\xd9" + bytes([n]) if n < 256 else (
            b"\xda" + struct.pack(">H", n) if n < 65536 else b"\xdb" + struct.pack(">I", n))
    if kind == "bin":
        return b"\xc4" + bytes([n]) if n < 256 else (
            b"\xc5" + struct.pack(">H", n) if n < 65536 else b"\xc6" + struct.pack(">I", n))
    fix, h16, h32 = (0x90, b"\xdc", b"\xdd") if kind == "array" else (0x80, b"\xde", b"\xdf")
    if n < 16:
        return bytes([fix | n])
    return h16 + struct.pack(">H", n) if n < 65536 else h32 + struct.pack(">I", n)


def check_shortest(b, node, where):
    """The agent encodes every value in its shortest form (§4.2 SHOULD). Checked, because the
    pinning below re-encodes values that way and so must match the agent's choice."""
    if node.kind == "int":
        want = shortest_int(node.value)
    elif node.kind in ("str", "bin"):
        want = shortest_header(node.kind, node.end - node.hdr)
    elif node.kind in ("array", "map"):
        want = shortest_header(node.kind, len(node.items))
    else:
        want = None
    got = bytes(b[node.start:node.hdr if node.kind in ("str", "bin", "array", "map")
                  else node.end])
    if want is not None and got != want:
        raise AssertionError("%s: the agent encoded %r as %s, not the shortest form %s" %
                             (where, node.value, got.hex(" "), want.hex(" ")))
    if node.kind == "array":
        for e in node.items:
            check_shortest(b, e, where)
    elif node.kind == "map":
        for k, v in node.items:
            check_shortest(b, k, where)
            check_shortest(b, v, where)


# --- pinning ---------------------------------------------------------------------------------

def body_map(root):
    """The result map of a response or the params map of a notification, else None."""
    kind = root.items[0].value
    slot = {1: 3, 2: 2}.get(kind)
    if slot is None or len(root.items) <= slot or root.items[slot].kind != "map":
        return None
    return root.items[slot]


def find(mapnode, path):
    node = mapnode
    for key in path:
        if node is None or node.kind != "map":
            return None
        node = next((v for k, v in node.items if k.value == key), None)
    return node


def pin(frame):
    """frame (length prefix + payload) from the agent -> (frame with PINNED values replaced,
    set of pinned paths present). Every byte outside the pinned values is kept as sent."""
    payload = frame[4:]
    root = decode_message(payload)
    check_shortest(payload, root, "agent frame %s" % payload[:24].hex(" "))
    body = body_map(root)
    splices, present = [], set()
    for path, value in PINNED.items():
        node = find(body, path)
        if node is None:
            continue
        if node.kind != "int":
            raise AssertionError("pinned field %s is a %s, not an integer" %
                                 (".".join(path), node.kind))
        splices.append((node.start, node.end, shortest_int(value)))
        present.add(path)
    out = bytearray(payload)
    for start, end, new in sorted(splices, reverse=True):
        out[start:end] = new
    return sbxwire.frame(bytes(out)), present


# --- rendering -------------------------------------------------------------------------------

def quote_bytes(b):
    out = []
    for c in b:
        ch = chr(c)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif 0x20 <= c < 0x7F:
            out.append(ch)
        else:
            out.append("\\x%02x" % c)
    return '"' + "".join(out) + '"'


def notation(v):
    """Value notation as PROTOCOL.md writes messages: [0, 1, "hello", {"version": 1}]."""
    if v is None:
        return "nil"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, bytes):
        return "bin " + quote_bytes(v)
    if isinstance(v, list):
        return "[" + ", ".join(notation(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(notation(k) + ": " + notation(x) for k, x in v.items()) + "}"
    raise TypeError(type(v))


def wrap_code(text, width=WIDTH):
    """`text` as an inline code span, broken at spaces outside string literals so that no line
    is longer than width (a line break inside a code span renders as a space)."""
    s = "`" + text + "`"
    if "`" in text:
        raise ValueError("backtick in value notation")
    breaks, in_str, esc = [], False, False
    for i, ch in enumerate(s):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch == " ":
            breaks.append(i)
    lines, start, last = [], 0, None
    for i in breaks + [len(s)]:
        if i - start > width and last is not None:
            lines.append(s[start:last])
            start = last + 1
        last = i
    lines.append(s[start:])
    return "\n".join(lines)


def hexdump(frame):
    L = len(frame) - 4
    out = ["frame length L = %d (0x%08x), total %d bytes" % (L, L, len(frame))]
    for off in range(0, len(frame), 16):
        chunk = frame[off:off + 16]
        text = "".join(chr(c) if 0x20 <= c < 0x7F else "." for c in chunk)
        out.append("%04x  %-47s  |%s|" % (off, chunk.hex(" "), text))
    return "\n".join(out)


KIND_NAMES = {0: "request", 1: "response", 2: "notification", 3: "stream data"}
ROLES = {0: ["id", "method", "params"], 1: ["id", "error", "result"],
         2: ["method", "params"], 3: ["stream", "data"]}
ONE_LINE = 16  # a str whose encoding is at most this many bytes is shown on one line


def annotate(frame, pinned_paths=()):
    """The annotated dump: one line per value (long strings and bin over several lines), hex on
    the left, explanation on the right, indented by nesting."""
    payload = frame[4:]
    root = decode_message(payload)
    rows = [(frame[:4], 0, "length prefix: L = %d (big-endian u32)" % (len(frame) - 4))]
    kind = root.items[0].value
    body = body_map(root)

    def plural(n, one, many):
        return "%d %s" % (n, one if n == 1 else many)

    def emit(node, indent, label, path):
        b = payload
        note = PINNED_NOTE if path is not None and tuple(path) in pinned_paths else ""
        if node.kind in ("int", "float"):
            rows.append((b[node.start:node.end], indent, "%s%s %r%s" %
                         (label, node.fmt, node.value, note)))
        elif node.kind in ("nil", "bool"):
            rows.append((b[node.start:node.end], indent, label + node.fmt))
        elif node.kind == "str" and node.end - node.start <= ONE_LINE:
            rows.append((b[node.start:node.end], indent, "%s%s(%d) %s" % (
                label, node.fmt, node.end - node.hdr, notation(node.value))))
        elif node.kind in ("str", "bin"):
            n = node.end - node.hdr
            rows.append((b[node.start:node.hdr], indent, "%s%s, %s%s" % (
                label, node.fmt, plural(n, "byte", "bytes"), ":" if node.kind == "str" else "")))
            for off in range(node.hdr, node.end, 16):
                chunk = b[off:min(off + 16, node.end)]
                prefix = "payload " if node.kind == "bin" and off == node.hdr else ""
                rows.append((chunk, indent + 2, prefix + quote_bytes(chunk)))
        elif node.kind == "array":
            rows.append((b[node.start:node.hdr], indent, "%s%s, %s" % (
                label, node.fmt, plural(len(node.items), "element", "elements"))))
            for e in node.items:
                emit(e, indent + 2, "", None)
        else:
            rows.append((b[node.start:node.hdr], indent, "%s%s, %s" % (
                label, node.fmt, plural(len(node.items), "entry", "entries"))))
            for k, v in node.items:
                emit(k, indent + 2, "key ", None)
                sub = None
                if path is not None and isinstance(k.value, str):
                    sub = list(path) + [k.value]
                emit(v, indent + 4, "", sub)

    rows.append((payload[root.start:root.hdr], 0, "%s, %d elements" % (root.fmt,
                                                                       len(root.items))))
    first = root.items[0]
    rows.append((payload[first.start:first.end], 2, "kind=%s: %s %d" % (
        KIND_NAMES.get(kind, "?"), first.fmt, first.value)))
    for role, node in zip(ROLES.get(kind, []), root.items[1:]):
        emit(node, 2, role + ": ", [] if node is body else None)
    col = max(len(h.hex(" ")) for h, _, _ in rows) + 2
    return "\n".join((h.hex(" ").ljust(col) + " " * ind + text).rstrip()
                     for h, ind, text in rows)


def render(frame, annotated, pinned_paths=()):
    value = decode_message(frame[4:]).value
    parts = [wrap_code(notation(value)), ""]
    if annotated:
        parts += ["```", annotate(frame, pinned_paths), "```"]
    parts += ["```", hexdump(frame), "```"]
    return "\n".join(parts)


# --- the exchange ----------------------------------------------------------------------------

class Wire:
    """A raw client connection that records the exact bytes of every frame in both directions."""

    def __init__(self, addr):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(addr[len("unix:"):])
        self.buf = bytearray()
        self.got = []   # raw frames from the agent, in arrival order

    def send(self, msg):
        data = sbxwire.frame(sbxwire.pack(msg))
        self.sock.sendall(data)
        return data

    def send_raw(self, data):
        self.sock.sendall(data)
        return data

    def read(self):
        """The next raw frame (prefix + payload) from the agent; None at end of file."""
        while True:
            if len(self.buf) >= 4:
                n = int.from_bytes(self.buf[:4], "big")
                if n == 0 or n > 4194304:
                    raise AssertionError("the agent sent a frame of length %d" % n)
                if len(self.buf) >= 4 + n:
                    f = bytes(self.buf[:4 + n])
                    del self.buf[:4 + n]
                    decode_message(f[4:])
                    self.got.append(f)
                    return f
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                if self.buf:
                    raise AssertionError("the agent closed the connection inside a frame")
                return None
            self.buf += chunk

    def read_until(self, pred, what):
        """Read frames until one whose decoded message satisfies pred; return it (raw)."""
        while True:
            f = self.read()
            if f is None:
                raise AssertionError("connection closed while waiting for " + what)
            if pred(decode_message(f[4:]).value):
                return f

    def close(self):
        self.sock.close()


def is_response(rid):
    return lambda m: m[0] == 1 and m[1] == rid


def exchange(agent_path):
    """Run §24's exchange once against a fresh agent: {name: (raw frame, sent_by_agent)}."""
    agent = sbxwire.Agent(agent_path)
    out = {}
    try:
        # §24.2-24.10, one connection: hello, spawn echo hi, data, credit, ends, exit, error.
        c = Wire(agent.addr)
        out["hello-request"] = (c.send([0, 1, "hello", {"version": 1, "client": "example/1.0"}]),
                                False)
        out["hello-response"] = (c.read_until(is_response(1), "the hello response"), True)
        out["spawn-request"] = (c.send([0, 2, "proc.spawn", {"argv": ["echo", "hi"]}]), False)
        out["spawn-response"] = (c.read_until(is_response(2), "the proc.spawn response"), True)
        spawned = decode_message(out["spawn-response"][0][4:]).value
        if spawned[2] is not None:
            raise AssertionError("proc.spawn of echo failed: %r" % (spawned[2],))
        res = spawned[3]
        if (res["stdout"], res["stderr"]) != (1, 2):
            raise AssertionError("expected stdout stream 1 and stderr stream 2, got %r" % res)
        data, ends, credit_sent = [], {}, False
        while True:
            f = c.read_until(lambda m: m[0] == 3 or (m[0] == 2 and m[1] in
                                                      ("stream.end", "proc.exit")),
                             "echo's output and proc.exit")
            m = decode_message(f[4:]).value
            if m[0] == 3:
                data.append((m[1], f))
                if not credit_sent:  # §24.7: what a client sends after consuming half a window
                    out["credit"] = (c.send([2, "stream.credit",
                                             {"stream": 1, "bytes": 524288}]), False)
                    credit_sent = True
            elif m[1] == "stream.end":
                ends[m[2]["stream"]] = f
            else:
                out["proc-exit"] = (f, True)
                break
        if [(s, decode_message(f[4:]).value[2]) for s, f in data] != [(1, b"hi\n")]:
            raise AssertionError("expected one data frame, \"hi\\n\" on stream 1, got %r" %
                                 [decode_message(f[4:]).value for _, f in data])
        out["data"] = (data[0][1], True)
        if sorted(ends) != [1, 2]:
            raise AssertionError("expected stream.end for streams 1 and 2, got %r" % sorted(ends))
        out["stream-end"] = (ends[1], True)
        # §24.8 says stream 2's end differs from stream 1's only in the last byte.
        if ends[2][:-1] != ends[1][:-1] or ends[2][-1:] != b"\x02":
            raise AssertionError("stream.end for stream 2 is not stream 1's with a last byte 02")
        out["enoent-request"] = (c.send([0, 3, "proc.spawn", {"argv": ["nosuch"]}]), False)
        out["enoent-response"] = (c.read_until(is_response(3), "the ENOENT response"), True)
        # §24.11: the client cancelling stream 1 (finished by now, so the agent ignores it).
        out["cancel"] = (c.send([2, "stream.cancel", {"stream": 1}]), False)
        # A round trip after the cancel proves the agent took it without complaint.
        c.send([0, 4, "ping", {}])
        pong = decode_message(c.read_until(is_response(4), "the ping response")[4:]).value
        if pong[2] is not None:
            raise AssertionError("ping after stream.cancel failed: %r" % (pong[2],))
        unexpected = [decode_message(f[4:]).value for f in c.got
                      if f not in [v[0] for v in out.values()] and f != ends[2]
                      and decode_message(f[4:]).value[:2] != [1, 4]]
        if unexpected:
            raise AssertionError("unexpected frames from the agent: %r" % unexpected)
        c.close()

        # §24.11: a request before hello.
        c = Wire(agent.addr)
        c.send([0, 7, "ping", {}])
        out["hello-required"] = (c.read_until(is_response(7), "the HELLO_REQUIRED response"),
                                 True)
        c.close()

        # §24.11: a frame header announcing 16 MiB; the agent sends an error (best effort) and
        # closes. On a unix socket the notification does arrive.
        c = Wire(agent.addr)
        c.send_raw(struct.pack(">I", 16 << 20))
        errs = []
        while True:
            f = c.read()
            if f is None:
                break
            if decode_message(f[4:]).value[:2] == [2, "error"]:
                errs.append(f)
        if len(errs) != 1:
            raise AssertionError("expected one error notification before the close, got %d" %
                                 len(errs))
        out["frame-too-large"] = (errs[0], True)
        c.close()
        if not agent.alive():
            raise AssertionError("the agent died:\n" + agent.logtext())
    finally:
        agent.stop()  # raises on a sanitizer report in the agent's log
        shutil.rmtree(agent.dir, ignore_errors=True)
    return out


# name -> annotated dump too (else the plain hex dump only)
EXAMPLES = {
    "hello-request": True, "hello-response": True,
    "spawn-request": True, "spawn-response": True,
    "data": True, "credit": True, "stream-end": True, "proc-exit": True,
    "enoent-request": False, "enoent-response": True,
    "hello-required": False, "cancel": False, "frame-too-large": False,
}


def generate(agent_path):
    frames = exchange(agent_path)
    blocks = {}
    for name, annotated in EXAMPLES.items():
        f, from_agent = frames[name]
        present = ()
        if from_agent:
            f, present = pin(f)
        blocks[name] = render(f, annotated, present)
    return blocks


# --- PROTOCOL.md -----------------------------------------------------------------------------

def begin(name):
    return "<!-- walkthrough:begin %s -->\n" % name


def end(name):
    return "<!-- walkthrough:end %s -->" % name


def section_bounds(text):
    start = text.find("\n" + SECTION)
    stop = text.find(NEXT_SECTION, start + 1)
    if start < 0 or stop < 0:
        raise SystemExit("walkthrough.py: cannot find sections 24 and 25 in PROTOCOL.md")
    return start, stop


MARKER = re.compile(r"^<!-- walkthrough:(begin|end) ([a-z0-9-]+) -->$", re.M)


def regions(text):
    """{name: (start, end)} of the generated text between each marker pair inside §24."""
    lo, hi = section_bounds(text)
    found, open_name, open_at = {}, None, None
    for m in MARKER.finditer(text, lo, hi):
        what, name = m.group(1), m.group(2)
        if name not in EXAMPLES:
            raise SystemExit("walkthrough.py: unknown example %r in a §24 marker" % name)
        if what == "begin":
            if open_name is not None or name in found:
                raise SystemExit("walkthrough.py: §24 marker %r out of place" % m.group(0))
            open_name, open_at = name, m.end() + 1
        else:
            if open_name != name:
                raise SystemExit("walkthrough.py: §24 marker %r out of place" % m.group(0))
            found[name] = (open_at, m.start())
            open_name = None
    missing = [n for n in EXAMPLES if n not in found]
    if missing or open_name is not None:
        raise SystemExit("walkthrough.py: PROTOCOL.md §24 needs one pair of lines "
                         "'<!-- walkthrough:begin NAME -->' ... '<!-- walkthrough:end NAME -->' "
                         "for each of: %s" % ", ".join(missing or [open_name]))
    return found


def apply(text, blocks):
    spans = regions(text)
    for name in sorted(spans, key=lambda n: spans[n][0], reverse=True):
        s, e = spans[name]
        text = text[:s] + blocks[name] + "\n" + text[e:]
    return text


def main(argv):
    mode, build, doc = "print", None, DOC
    args = list(argv)
    while args:
        a = args.pop(0)
        if a in ("--write", "--check"):
            mode = a[2:]
        elif a == "--doc" and args:
            doc = args.pop(0)
        elif a in ("-h", "--help"):
            print(__doc__)
            return 0
        elif a.startswith("-"):
            raise SystemExit("walkthrough.py: unknown option " + a)
        else:
            build = a
    build = build or os.environ.get("SBX_BUILD") or os.path.join(SRC, "build")
    agent_path = os.path.join(build, "bin", "sbx-agent")
    if not os.path.exists(agent_path):
        raise SystemExit("walkthrough.py: no agent at " + agent_path)

    first = generate(agent_path)
    second = generate(agent_path)
    if first != second:
        for name in EXAMPLES:
            if first[name] != second[name]:
                sys.stdout.writelines(difflib.unified_diff(
                    first[name].splitlines(True), second[name].splitlines(True),
                    "run 1: " + name, "run 2: " + name))
        print("\nwalkthrough.py: the agent's bytes differ between two runs: a varying value is "
              "not pinned (add its path to PINNED, and to §24's list of pinned fields)")
        return 1

    if mode == "print":
        for name in EXAMPLES:
            print(begin(name) + first[name] + "\n" + end(name))
        return 0
    with open(doc, encoding="utf-8") as f:
        text = f.read()
    new = apply(text, first)
    if mode == "write":
        if new != text:
            with open(doc, "w", encoding="utf-8") as f:
                f.write(new)
            print("walkthrough.py: rewrote the §24 examples in " + doc)
        else:
            print("walkthrough.py: " + doc + " is up to date")
        return 0
    if new != text:
        sys.stdout.writelines(difflib.unified_diff(
            text.splitlines(True), new.splitlines(True), doc + " (now)",
            doc + " (from the agent)", n=2))
        print("\nwalkthrough.py: PROTOCOL.md §24 differs from the agent's real bytes (above). If "
              "the agent's change is intended, run tests/conformance/walkthrough.py --write and "
              "update the prose of §24 to match.")
        return 1
    print("walkthrough.py: PROTOCOL.md §24 matches the agent's bytes (%d examples)" %
          len(EXAMPLES))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
