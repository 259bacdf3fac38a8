"""A small, independent implementation of the sbx wire protocol for tests (PROTOCOL.md).

Written from the spec rather than from libsbxproto, so the integration tests also check that the
agent speaks what the document says. Standard library only.

It is a strict client: every frame the agent sends is checked as it is read (framing, msgpack
subset, UTF-8 in str, message shapes, and the frame order of 8, 9.1, 9.2, 16.3, 18.5, 19.2 on
that connection), and anything a strict client would reject raises ProtocolViolation, an
AssertionError naming the rule and the offending message, so the test that meets it fails there.
What the client sends (send, send_raw, data) is never checked, only followed, so hostile tests
work unchanged.
"""
import contextlib
import os
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time


# --- msgpack ---------------------------------------------------------------------------------

def pack(v):
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
        if 0 <= v <= 0xFF:
            return b"\xcc" + bytes([v])
        if 0 <= v <= 0xFFFF:
            return b"\xcd" + struct.pack(">H", v)
        if 0 <= v <= 0xFFFFFFFF:
            return b"\xce" + struct.pack(">I", v)
        if v >= 0:
            return b"\xcf" + struct.pack(">Q", v)
        return b"\xd3" + struct.pack(">q", v)
    if isinstance(v, float):
        return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, str):
        v = v.encode()
        n = len(v)
        if n < 32:
            return bytes([0xA0 | n]) + v
        if n < 256:
            return b"\xd9" + bytes([n]) + v
        if n < 65536:
            return b"\xda" + struct.pack(">H", n) + v
        return b"\xdb" + struct.pack(">I", n) + v
    if isinstance(v, (bytes, bytearray, memoryview)):
        n = len(v)
        if n < 256:
            return b"\xc4" + bytes([n]) + bytes(v)
        if n < 65536:
            return b"\xc5" + struct.pack(">H", n) + bytes(v)
        return b"\xc6" + struct.pack(">I", n) + bytes(v)
    if isinstance(v, (list, tuple)):
        n = len(v)
        head = bytes([0x90 | n]) if n < 16 else (b"\xdc" + struct.pack(">H", n) if n < 65536
                                                 else b"\xdd" + struct.pack(">I", n))
        return head + b"".join(pack(x) for x in v)
    if isinstance(v, dict):
        n = len(v)
        head = bytes([0x80 | n]) if n < 16 else (b"\xde" + struct.pack(">H", n) if n < 65536
                                                 else b"\xdf" + struct.pack(">I", n))
        return head + b"".join(pack(k) + pack(x) for k, x in v.items())
    raise TypeError(type(v))


# --- strict msgpack decoding (PROTOCOL.md 3.3, 4.1, 4.4) --------------------------------------

FRAME_MAX = 4194304  # 3.1: frame body length, both directions
CHUNK_MAX = 262144  # 5.4: data of one stream data message
MAX_DEPTH = 32  # 4.1: containers open at once in one message
MAX_OBJECTS = 65536  # 4.1: msgpack objects in one message
U32_MAX = 0xFFFFFFFF


class ProtocolViolation(AssertionError, ValueError):
    """The agent put on the wire something PROTOCOL.md forbids (a strict client rejects it).

    An AssertionError, so that a test that meets one fails (rather than errors) at the frame that
    broke the rule; also a ValueError, which is what a malformed msgpack value raised before."""


_EXT = frozenset((0xC7, 0xC8, 0xC9, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8))


class _Decoder:
    """One msgpack value with the receiver checks of 3.3: no truncated value, no 0xc1, no ext
    type, depth <= 32, <= 65536 objects, no container claiming more elements than bytes are
    left, str values that are valid UTF-8; map keys must be str or bin (bin only for the data
    maps of 4.3; which maps those are is checked per message) and appear once."""

    __slots__ = ("b", "end", "objects")

    def __init__(self, b):
        self.b = b
        self.end = len(b)
        self.objects = 0

    def fail(self, i, why):
        raise ProtocolViolation("invalid msgpack (PROTOCOL.md 3.3, 4.1): %s at offset %d"
                                % (why, i))

    def take(self, i, n, what):
        if n > self.end - i:
            self.fail(i, "truncated %s: needs %d bytes, %d left" % (what, n, self.end - i))
        return i + n

    def value(self, i, depth):
        self.objects += 1
        if self.objects > MAX_OBJECTS:
            self.fail(i, "more than %d objects in one message" % MAX_OBJECTS)
        if i >= self.end:
            self.fail(i, "truncated value: no bytes left")
        b = self.b
        t = b[i]
        if t <= 0x7F:
            return t, i + 1
        if t >= 0xE0:
            return t - 256, i + 1
        if t <= 0x8F:
            return self.map(i + 1, t & 15, depth, i)
        if t <= 0x9F:
            return self.arr(i + 1, t & 15, depth, i)
        if t <= 0xBF:
            return self.str(i + 1, t & 31, i)
        if t == 0xC0:
            return None, i + 1
        if t == 0xC1:
            self.fail(i, "reserved byte 0xc1")
        if t == 0xC2:
            return False, i + 1
        if t == 0xC3:
            return True, i + 1
        if t in _EXT:
            self.fail(i, "ext type 0x%02x" % t)
        if t <= 0xC6:  # bin8/16/32
            w = 1 << (t - 0xC4)
            j = self.take(i + 1, w, "bin length")
            n = int.from_bytes(b[i + 1:j], "big")
            k = self.take(j, n, "bin of %d bytes" % n)
            return bytes(b[j:k]), k
        if t == 0xCA:
            j = self.take(i + 1, 4, "float32")
            return struct.unpack(">f", b[i + 1:j])[0], j
        if t == 0xCB:
            j = self.take(i + 1, 8, "float64")
            return struct.unpack(">d", b[i + 1:j])[0], j
        if t <= 0xCF:
            w = 1 << (t - 0xCC)
            j = self.take(i + 1, w, "uint%d" % (8 * w))
            return int.from_bytes(b[i + 1:j], "big"), j
        if t <= 0xD3:
            w = 1 << (t - 0xD0)
            j = self.take(i + 1, w, "int%d" % (8 * w))
            return int.from_bytes(b[i + 1:j], "big", signed=True), j
        if t <= 0xDB:  # str8/16/32
            w = 1 << (t - 0xD9)
            j = self.take(i + 1, w, "str length")
            return self.str(j, int.from_bytes(b[i + 1:j], "big"), i)
        if t <= 0xDD:
            w = 2 if t == 0xDC else 4
            j = self.take(i + 1, w, "array length")
            return self.arr(j, int.from_bytes(b[i + 1:j], "big"), depth, i)
        w = 2 if t == 0xDE else 4
        j = self.take(i + 1, w, "map length")
        return self.map(j, int.from_bytes(b[i + 1:j], "big"), depth, i)

    def str(self, j, n, i):
        k = self.take(j, n, "str of %d bytes" % n)
        raw = bytes(self.b[j:k])
        try:
            return raw.decode("utf-8"), k
        except UnicodeDecodeError as e:
            self.fail(i, "str is not valid UTF-8 (4.4: text is UTF-8, byte strings that are not "
                         "go as bin): bad byte at %d of %r" % (e.start, raw[:160]))

    def arr(self, j, n, depth, i):
        if depth >= MAX_DEPTH:
            self.fail(i, "nesting deeper than %d" % MAX_DEPTH)
        if n > self.end - j:
            self.fail(i, "array header claims %d elements, %d bytes left" % (n, self.end - j))
        out = []
        for _ in range(n):
            v, j = self.value(j, depth + 1)
            out.append(v)
        return out, j

    def map(self, j, n, depth, i):
        if depth >= MAX_DEPTH:
            self.fail(i, "nesting deeper than %d" % MAX_DEPTH)
        if 2 * n > self.end - j:
            self.fail(i, "map header claims %d entries, %d bytes left" % (n, self.end - j))
        out = {}
        for _ in range(n):
            at = j
            k, j = self.value(j, depth + 1)
            if type(k) is not str and type(k) is not bytes:
                self.fail(at, "map key %s is neither str nor bin (4.3)" % _show(k))
            if k in out:
                self.fail(at, "map key %r appears twice (4.3)" % (k,))
            out[k], j = self.value(j, depth + 1)
        return out, j


class _PeerDecoder(_Decoder):
    """How the agent reads what the client sent, for following the client's own frames: the
    same structural rules (what breaks them is BAD_MESSAGE and has no effect), but a str that is
    not UTF-8 is accepted (the agent does not validate it, 4.4), a key that is not a str is just
    an unknown key (4.3) and a repeated key keeps its first value."""

    __slots__ = ()

    def str(self, j, n, i):
        k = self.take(j, n, "str of %d bytes" % n)
        return bytes(self.b[j:k]).decode("utf-8", "surrogateescape"), k

    def map(self, j, n, depth, i):
        if depth >= MAX_DEPTH:
            self.fail(i, "nesting deeper than %d" % MAX_DEPTH)
        if 2 * n > self.end - j:
            self.fail(i, "map header claims %d entries, %d bytes left" % (n, self.end - j))
        out = {}
        for _ in range(n):
            k, j = self.value(j, depth + 1)
            v, j = self.value(j, depth + 1)
            if type(k) is str and k not in out:
                out[k] = v
        return out, j


def unpack(b, i=0):
    """Decode one value at b[i:] strictly (3.3, 4.1, 4.4); returns (value, next index). The depth
    and object limits count from this value. Raises ProtocolViolation on anything malformed."""
    return _Decoder(b).value(i, 0)


def decode_message(payload):
    """Decode a whole frame body as one message: one value and no trailing bytes (3.3)."""
    msg, end = _Decoder(payload).value(0, 0)
    if end != len(payload):
        raise ProtocolViolation("invalid msgpack (PROTOCOL.md 3.3 rule 2): %d trailing bytes after "
                                "the message %s" % (len(payload) - end, _show(msg)))
    return msg


def _show(v, limit=600):
    """A readable, bounded repr of a message for violation reports (long bin/str cut)."""
    def cut(x):
        if isinstance(x, (bytes, bytearray)) and len(x) > 48:
            return "<%d bytes %r...>" % (len(x), bytes(x[:24]))
        if isinstance(x, str) and len(x) > 120:
            return x[:120] + "...(%d chars)" % len(x)
        if isinstance(x, list):
            more = ["...%d more" % (len(x) - 32)] if len(x) > 32 else []
            return [cut(y) for y in x[:32]] + more
        if isinstance(x, dict):
            return {k: cut(y) for k, y in list(x.items())[:32]}
        return x
    r = repr(cut(v))
    return r if len(r) <= limit else r[:limit] + "..."


def _readable_request_id(body):
    """The id of a request frame as 3.3 defines it (array header of >= 2 elements, 0x00, a msgpack
    unsigned int that fits u32), or None: the agent answers such a frame with a response."""
    if not body:
        return None
    t = body[0]
    if 0x92 <= t <= 0x9F:
        n, i = t & 15, 1
    elif t == 0xDC and len(body) >= 3:
        n, i = int.from_bytes(body[1:3], "big"), 3
    elif t == 0xDD and len(body) >= 5:
        n, i = int.from_bytes(body[1:5], "big"), 5
    else:
        return None
    if n < 2 or len(body) <= i + 1 or body[i] != 0x00:
        return None
    i += 1
    t = body[i]
    if t <= 0x7F:
        return t
    if 0xCC <= t <= 0xCF:
        w = 1 << (t - 0xCC)
        if len(body) < i + 1 + w:
            return None
        v = int.from_bytes(body[i + 1:i + 1 + w], "big")
        return v if v <= U32_MAX else None
    return None


def _is_int(v):
    return type(v) is int


def _is_u32(v):
    return type(v) is int and 0 <= v <= U32_MAX


def _is_uint(v):
    return type(v) is int and 0 <= v < 1 << 64


def _is_sid(v):
    return type(v) is int and 1 <= v <= U32_MAX


def _is_bstr(v):
    return type(v) is str or type(v) is bytes


_KEY = re.compile(r"[a-z0-9_]{1,64}\Z")

# Notifications a v1 agent sends (21); anything else is outside the negotiated version (6.3).
_AGENT_NOTIFICATIONS = frozenset((
    "error", "stream.credit", "stream.end", "stream.cancel", "proc.exit", "repl.result",
    "fs.event", "transfer.done", "pack.progress", "pack.manifest"))

# Result keys that announce streams, per method: (key, direction, required). 8.1: "the agent hands
# ids out in the result of the request that creates the stream". repl.eval only with stream: true.
_STREAM_RESULTS = {
    "proc.spawn": (("stdin", "in", False), ("stdout", "out", False), ("stderr", "out", False)),
    "proc.attach": (("stdin", "in", False), ("stdout", "out", False), ("stderr", "out", False)),
    "repl.eval": (("stdout", "out", True), ("stderr", "out", True)),
    "fs.walk": (("stream", "out", True),),
    "fs.glob": (("stream", "out", True),),
    "transfer.upload": (("stream", "in", True),),
    "transfer.upload_tree": (("stream", "in", True),),
    "transfer.download": (("stream", "out", True),),
    "transfer.download_tree": (("stream", "out", True),),
    "pack.create": (("build_stdout", "out", False), ("build_stderr", "out", False),
                    ("archive", "out", True)),
    "net.connect": (("in", "in", True), ("out", "out", True)),
}


class _Stream:
    """What this connection has seen of one stream (both directions of traffic)."""

    __slots__ = ("sid", "dir", "what", "credit", "agent_final", "end_error", "client_end",
                 "client_cancel", "closed_by", "closed_rule", "upload")

    def __init__(self, sid, direction, what, credit):
        self.sid = sid
        self.dir = direction  # "out": agent -> client; "in": client -> agent
        self.what = what
        self.credit = credit  # out streams: upper bound of the agent's credit; None: unknown
        self.agent_final = None  # "stream.end" / "stream.cancel" once the agent sent one
        self.end_error = None  # the error of the agent's stream.end, if any
        self.client_end = False
        self.client_cancel = False
        self.closed_by = None  # the frame after which nothing may come about this sid
        self.closed_rule = None
        self.upload = False  # transfer.upload / upload_tree: transfer.done is its last frame

    def output_over(self):
        """An output stream is over for what must follow it (proc.exit, repl.result, a build's
        pack.progress): the agent ended or cancelled it, or the client cancelled it."""
        return bool(self.agent_final or self.client_cancel)

    def finished(self):
        """Finished as both sides see it on the wire (8.2): an end or cancel from the agent, a
        cancel from the client, or (in streams: the client is the sender) an end from the client."""
        return bool(self.agent_final or self.client_cancel
                    or (self.client_end and self.dir == "in"))


def recv_exact(s, n):
    """@n bytes from socket @s, or None when it ends first."""
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            return None
        b += c
    return b


def frame(payload):
    return struct.pack(">I", len(payload)) + payload


class RemoteError(Exception):
    def __init__(self, err):
        super().__init__("%s: %s" % (err.get("code"), err.get("message")))
        self.err = err
        self.code = err.get("code")


class Conn:
    """One protocol connection. Messages not yet consumed wait in self.pending.

    Every frame the agent sends is checked as it is read off the socket, whichever method reads
    it (recv, wait, wait_for): framing (3.1), strict msgpack (3.3, 4), message shapes (5, 7.1,
    the notification params of 8, 14.3, 16.3, 17.6, 18.5, 19), and the frame order the spec
    guarantees on this connection (8, 9, 14.3, 16.3, 18.5, 19.2), tracked from what both sides
    sent. A violation raises ProtocolViolation (an AssertionError) naming the rule, the stream
    or request, and the offending message. Frames the agent sent before it saw a client's cancel
    are legal (8.5), so only the agent's own end/cancel closes a stream for rule (a)."""

    def __init__(self, addr, timeout=30):
        if addr.startswith("unix:"):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(addr[5:])
        else:
            raise ValueError(addr)
        self.buf = bytearray()
        self.next_id = 1
        self.pending = []
        self.window = 1 << 20  # the credit an `in` stream starts with (stream_window)
        self.out_window = 1 << 20  # an `out` stream's: hello's recv_window, or stream_window
        self.closed = False
        # --- strict-client state ---
        self.limits = {"frame_max": FRAME_MAX, "chunk_max": CHUNK_MAX, "stream_window": 1 << 20}
        self._requests = {}  # request id -> [(method or None, params)], oldest first
        self._streams = {}  # sid -> _Stream, every stream announced on this connection
        self._procs = {}  # process id -> {"stdin": [sid], "out": [sid], "exited": bool}
        self._close_stdin = set()  # process ids the client sent proc.close_stdin for
        self._evals = {}  # (session, eval) -> {"sids": [sid], "done": bool}
        self._packs = {}  # pack job id -> state (19.2)
        self._watches = set()
        self._out = bytearray()  # bytes of a client frame not complete yet (send_raw)
        self._out_sync = True  # False once the client sent a frame length the agent refuses

    def close(self):
        self.sock.close()

    # --- sending; every client frame is noted for the order checks ---

    def send_raw(self, data):
        self.sock.sendall(data)
        self._note_raw(data)

    def send(self, msg):
        b = frame(pack(msg))
        self.sock.sendall(b)
        if self._out or not 0 < len(b) - 4 <= FRAME_MAX:
            self._note_raw(b)
        else:
            self._note(msg, b[4:])

    def _note_raw(self, data):
        """Follow the client's byte stream frame by frame (raw bytes may be partial frames,
        hostile content or several frames at once)."""
        if not self._out_sync:
            return
        self._out += data
        while len(self._out) >= 4:
            n = int.from_bytes(self._out[:4], "big")
            if n == 0 or n > FRAME_MAX:
                # 3.2: the agent closes the connection; nothing after this is read by it.
                self._out_sync = False
                self._out = bytearray()
                return
            if len(self._out) < 4 + n:
                return
            body = bytes(self._out[4:4 + n])
            del self._out[:4 + n]
            try:
                msg, end = _PeerDecoder(body).value(0, 0)
                if end != len(body):
                    msg = None  # trailing bytes: BAD_MESSAGE
            except ProtocolViolation:
                msg = None  # the agent answers BAD_MESSAGE (a response if the id is readable)
            self._note(msg, body)

    def _note(self, msg, body):
        """A client frame (decoded, or None if it is not valid msgpack) went out."""
        if type(msg) is list and msg and msg[0] == 0 and type(msg[0]) is int:
            rid = msg[1] if len(msg) >= 2 else None
            if not _is_u32(rid):
                return
            method = msg[2] if len(msg) >= 3 and type(msg[2]) is str else None
            params = msg[3] if len(msg) >= 4 else None
            if len(msg) != 4 or method is None:
                method = None  # BAD_MESSAGE: answered, creates nothing
            self._requests.setdefault(rid, []).append((method, params))
            if method == "proc.close_stdin" and isinstance(params, dict) \
                    and _is_u32(params.get("id")):
                self._close_stdin.add(params["id"])
            return
        if msg is None:
            rid = _readable_request_id(body)
            if rid is not None:
                self._requests.setdefault(rid, []).append((None, None))
            return
        if not (type(msg) is list and len(msg) == 3 and msg[0] == 2 and type(msg[0]) is int
                and isinstance(msg[2], dict)):
            return
        st = self._streams.get(msg[2].get("stream"))
        if st is None or type(msg[2].get("stream")) is not int:
            return
        if msg[1] == "stream.cancel":
            st.client_cancel = True
        elif msg[1] == "stream.end":
            st.client_end = True
        elif msg[1] == "stream.credit" and st.dir == "out" and st.credit is not None \
                and not st.client_cancel:
            b = msg[2].get("bytes")
            if b == 0 and type(b) is int:
                pass  # ignored by the agent (8.3)
            elif _is_u32(b) and st.credit + b <= U32_MAX:
                st.credit += b
            else:
                st.credit = None  # misuse (8.6): the two sides no longer agree on the credit

    # --- receiving ---

    def _violation(self, rule, text, msg=None):
        raise ProtocolViolation("agent frame violates PROTOCOL.md %s: %s%s" % (
            rule, text, "" if msg is None else "\n    offending message: " + _show(msg)))

    def _read_frame(self):
        while True:
            if len(self.buf) >= 4:
                n = int.from_bytes(self.buf[:4], "big")
                if n == 0 or n > self.limits["frame_max"]:
                    self._violation("3.1", "frame length %d outside 1..%d (header %r)" % (
                        n, self.limits["frame_max"], bytes(self.buf[:4])))
                if len(self.buf) >= 4 + n:
                    payload = bytes(self.buf[4:4 + n])
                    del self.buf[:4 + n]
                    return payload
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                self.closed = True
                return None
            self.buf += chunk

    def _next(self):
        """The next agent frame, decoded and checked; None on EOF."""
        payload = self._read_frame()
        if payload is None:
            return None
        try:
            msg = decode_message(payload)
        except ProtocolViolation as e:
            raise ProtocolViolation("agent frame: %s\n    frame body (%d bytes): %r" % (
                e, len(payload), payload[:300])) from None
        self._check(msg, payload)
        return msg

    def recv(self):
        """Next message as a list ([kind, ...]); data frames as [3, stream, bytes]. None on EOF."""
        if self.pending:
            return self.pending.pop(0)
        return self._next()

    # --- checks of one agent message ---

    def _check(self, msg, payload):
        if type(msg) is not list or not msg:
            self._violation("5", "a message is an array whose first element is the kind", msg)
        kind = msg[0]
        if type(kind) is not int or not 0 <= kind <= 3:
            self._violation("5", "kind %r is not 0..3" % (kind,), msg)
        # 5: the kind is a positive fixint; it follows the array header.
        t = payload[0]
        at = 1 if t <= 0x9F else (3 if t == 0xDC else 5)
        if payload[at] != kind:
            self._violation("5", "the kind is not encoded as a positive fixint (byte 0x%02x)"
                            % payload[at], msg)
        if kind == 3:
            self._check_data(msg)
        elif kind == 2:
            self._check_notification(msg)
        elif kind == 1:
            self._check_response(msg)
        else:
            self._violation("5.1", "the agent never sends requests (kind 0) in v1", msg)

    def _check_keys(self, v, msg, skip=None):
        """4.3: every map the protocol defines has str keys of <= 64 bytes of [a-z0-9_]. @skip is
        a data map (keys are data, e.g. env.list's env) whose own keys are not checked."""
        if isinstance(v, dict):
            if v is not skip:
                for k in v:
                    if type(k) is not str or not _KEY.match(k):
                        self._violation("4.3", "map key %r of a protocol map is not a str of "
                                        "1..64 bytes of [a-z0-9_]" % (k,), msg)
            for x in v.values():
                if isinstance(x, (dict, list)):
                    self._check_keys(x, msg, skip)
        elif isinstance(v, list):
            for x in v:
                if isinstance(x, (dict, list)):
                    self._check_keys(x, msg, skip)

    def _check_errormap(self, e, where, msg):
        """7.1: code and message are str (message <= 1024 bytes); typed optional fields."""
        if not isinstance(e, dict):
            self._violation("7.1", "%s is not an error map" % where, msg)
        code, text = e.get("code"), e.get("message")
        if type(code) is not str or not re.match(r"[A-Z][A-Z0-9_]*\Z", code):
            self._violation("7.1", "%s: code %r is not an upper-case str code" % (where, code), msg)
        if type(text) is not str:
            self._violation("7.1", "%s: message %r is not a str" % (where, _show(text)), msg)
        if len(text.encode()) > 1024:
            self._violation("7.1", "%s: message is %d bytes (max 1024)" % (
                where, len(text.encode())), msg)
        if "errno" in e and not _is_int(e["errno"]):
            self._violation("7.1", "%s: errno %r is not an int" % (where, e["errno"]), msg)
        if code.startswith("E") and not _is_int(e.get("errno")):
            self._violation("7.3", "%s: errno code %s without its errno number" % (where, code),
                            msg)
        for k in ("stage", "field", "limit"):
            if k in e and type(e[k]) is not str:
                self._violation("7.1", "%s: %s %r is not a str" % (where, k, e[k]), msg)
        if "path" in e and not _is_bstr(e["path"]):
            self._violation("7.1", "%s: path %r is not a bstr" % (where, e["path"]), msg)
        for k in ("min", "max"):
            if k in e and not _is_uint(e[k]):
                self._violation("7.1", "%s: %s %r is not a uint" % (where, k, e[k]), msg)

    def _check_data(self, msg):
        if len(msg) != 3:
            self._violation("5.4", "stream data must be [3, sid, bin]", msg)
        sid, data = msg[1], msg[2]
        if not _is_sid(sid):
            self._violation("5.4", "stream id %r is not a sid (1..2^32-1)" % (sid,), msg)
        if type(data) is not bytes:
            self._violation("5.4", "data is not bin", msg)
        if not 0 < len(data) <= self.limits["chunk_max"]:
            self._violation("5.4", "data length %d outside 1..chunk_max (%d)" % (
                len(data), self.limits["chunk_max"]), msg)
        self._stream_frame(sid, "data", msg, len(data))

    def _stream_frame(self, sid, what, msg, n=0):
        """A data message, stream.end, stream.cancel or stream.credit from the agent."""
        st = self._streams.get(sid)
        if st is None:
            self._violation("9.1 rule 3 [b]", "%s for stream %d, which no response on this "
                            "connection has announced (a stream is announced before it is used)"
                            % (what, sid), msg)
        if st.closed_by:
            self._violation(st.closed_rule, "%s for stream %d (%s) after %s, which is the last "
                            "frame about it" % (what, sid, st.what, st.closed_by), msg)
        if st.agent_final:
            self._violation("8.2/8.4/8.5 [a]", "%s for stream %d (%s) after the agent's own %s "
                            "for it: the stream is finished, nothing more may be sent"
                            % (what, sid, st.what, st.agent_final), msg)
        if what == "data":
            if st.dir != "out":
                self._violation("8.1/8.2", "data from the agent on stream %d (%s), an in stream "
                                "(the client is its sender)" % (sid, st.what), msg)
            if st.credit is not None:
                st.credit -= n
                if st.credit < 0:
                    self._violation("8.3", "data beyond credit on stream %d (%s): %d bytes more "
                                    "than the client granted" % (sid, st.what, -st.credit), msg)
        elif what == "stream.end":
            if st.dir != "out":
                self._violation("8.4", "stream.end from the agent on stream %d (%s), an in stream "
                                "(only its sender, the client, ends it)" % (sid, st.what), msg)
            st.agent_final = what
            st.end_error = msg[2].get("error")
            self._on_stream_finished(st, msg)
        elif what == "stream.cancel":
            st.agent_final = what
            self._on_stream_finished(st, msg)
        elif what == "stream.credit":
            if st.dir != "in":
                self._violation("8.3", "stream.credit from the agent on stream %d (%s), an out "
                                "stream (the agent is its sender)" % (sid, st.what), msg)

    def _on_stream_finished(self, st, msg):
        for job in self._packs.values():
            if job["archive"] == st.sid:
                if msg[1] == "stream.end" and "error" not in msg[2] and not (
                        job["last_part"] and job["done"]):
                    self._violation("19.2 step 4 / 19.5", "the archive stream %d of pack job %d "
                                    "ended without error before %s" % (
                                        st.sid, job["id"], "the last pack.manifest part"
                                        if not job["last_part"] else "pack.progress done"), msg)
                job["over"] = msg[1]

    def _check_response(self, msg):
        if len(msg) != 4:
            self._violation("5.2", "a response is [1, id, error, result]", msg)
        rid, err, res = msg[1], msg[2], msg[3]
        if not _is_u32(rid):
            self._violation("5.2", "response id %r is not a u32" % (rid,), msg)
        if err is not None:
            self._check_errormap(err, "error of response %d" % rid, msg)
            if res is not None:
                self._violation("5.2", "response %d has an error and a non-nil result" % rid, msg)
        elif not isinstance(res, dict):
            self._violation("5.2", "response %d: success with a result that is not a map (v1 "
                            "methods return a map)" % rid, msg)
        q = self._requests.get(rid)
        method, params = q[0] if q else (None, None)
        skip = res.get("env") if method == "env.list" and isinstance(res, dict) else None
        self._check_keys(msg[2:], msg, skip)
        if not q:
            if self._out_sync:
                self._violation("5.1", "response to id %d, which has no outstanding request on "
                                "this connection (every request gets exactly one response)"
                                % rid, msg)
            return
        q.pop(0)
        if not q:
            del self._requests[rid]
        if err is None and method is not None:
            self._on_result(rid, method, params, res, msg)

    def _announce(self, sid, direction, what, msg):
        if not _is_sid(sid):
            self._violation("8.1", "%s: %r is not a stream id" % (what, sid), msg)
        if sid in self._streams:
            self._violation("8.1", "%s: stream id %d announced again (ids are never reused; it "
                            "was %s)" % (what, sid, self._streams[sid].what), msg)
        st = _Stream(sid, direction, what,
                     self.limits.get("recv_window", self.limits["stream_window"])
                     if direction == "out" else None)
        self._streams[sid] = st
        return st

    def _on_result(self, rid, method, params, res, msg):
        params = params if isinstance(params, dict) else {}
        if method == "hello":
            lim = res.get("limits")
            if isinstance(lim, dict):
                for k in ("frame_max", "chunk_max", "stream_window"):
                    if not _is_uint(lim.get(k)):
                        self._violation("6.4", "hello limits.%s %r is not a uint" % (k, lim.get(k)),
                                        msg)
                    self.limits[k] = lim[k]
                if lim["frame_max"] != FRAME_MAX:
                    self._violation("3.1", "a v1 agent announces frame_max 4194304", msg)
            asked, got = params.get("recv_window"), res.get("recv_window")
            if got is not None and got != asked:
                self._violation("6.4", "hello result recv_window %r, asked %r" % (got, asked), msg)
            if asked is not None and got is None:
                self._violation("6.4", "hello result without the recv_window asked", msg)
            if got is not None:
                self.limits["recv_window"] = got
            return
        if method == "fs.watch":
            if not _is_u32(res.get("watch")):
                self._violation("17.6", "fs.watch result watch %r is not a u32"
                                % (res.get("watch"),), msg)
            self._watches.add(res["watch"])
            return
        if method == "proc.wait":
            p = self._procs.get(res.get("id"))
            if p is not None and not p["exited"]:
                self._violation("9.2 [c]", "proc.wait response for process %d before its proc.exit "
                                "on the connection that spawned it (proc.exit is sent first)"
                                % res["id"], msg)
            return
        keys = _STREAM_RESULTS.get(method)
        if keys is None or (method == "repl.eval" and params.get("stream") is not True):
            return
        if method in ("proc.spawn", "proc.attach"):
            pid = params.get("id") if method == "proc.attach" else res.get("id")
            if not _is_u32(pid):
                self._violation("14.2", "%s result id %r is not a u32" % (method, pid), msg)
            proc = self._procs.setdefault(pid, {"stdin": [], "out": [], "exited": False})
            if proc["exited"] and method == "proc.spawn":
                self._violation("14.2/9.2 [c]", "proc.spawn response (request %d) for process %d "
                                "after its proc.exit" % (rid, pid), msg)
            label = "%%s of process %d (%%s request %%d)" % pid
        elif method == "repl.eval":
            key = (params.get("session"), res.get("eval"))
            if not _is_u32(key[1]):
                self._violation("16.3", "repl.eval stream result eval %r is not a u32"
                                % (res.get("eval"),), msg)
            ev = self._evals[key] = {"sids": [], "done": False}
            label = "%%s of eval %r/%r (%%s request %%d)" % key
        elif method == "pack.create":
            if not _is_u32(res.get("id")):
                self._violation("19.1", "pack.create result id %r is not a u32" % (res.get("id"),),
                                msg)
            job = self._packs[res["id"]] = {"id": res["id"], "archive": res.get("archive"),
                                            "build": [], "over": None, "last_part": False,
                                            "done": False, "part": 0}
            label = "%%s of pack job %d (%%s request %%d)" % res["id"]
        else:
            label = "%s of %s request %d"
        for key, direction, required in keys:
            if key not in res:
                if required or method in ("proc.spawn", "proc.attach"):
                    self._violation("4.3/%s" % method, "result of %s request %d lacks %r" % (
                        method, rid, key), msg)
                continue
            sid = res[key]
            if sid is None:
                if required:
                    self._violation("%s" % method, "result of %s request %d: %s is nil" % (
                        method, rid, key), msg)
                continue
            st = self._announce(sid, direction, label % (key, method, rid), msg)
            if method in ("proc.spawn", "proc.attach"):
                proc["stdin" if key == "stdin" else "out"].append(sid)
            elif method == "repl.eval":
                ev["sids"].append(sid)
            elif method == "pack.create" and key != "archive":
                job["build"].append(sid)
            elif method in ("transfer.upload", "transfer.upload_tree"):
                st.upload = True

    def _check_notification(self, msg):
        if len(msg) != 3:
            self._violation("5.3", "a notification is [2, method, params]", msg)
        method, p = msg[1], msg[2]
        if type(method) is not str or len(method.encode()) > 64:
            self._violation("5.3", "notification method %r is not a str of <= 64 bytes"
                            % (method,), msg)
        if not isinstance(p, dict):
            self._violation("5.3", "notification params are not a map", msg)
        if method not in _AGENT_NOTIFICATIONS:
            self._violation("21/6.3", "%r is not a notification a v1 agent sends" % method, msg)
        self._check_keys(p, msg)
        if method == "error":
            self._check_errormap(p, "error notification", msg)
            return
        if "error" in p and method in ("stream.end", "stream.cancel", "transfer.done"):
            self._check_errormap(p["error"], "%s error" % method, msg)
        if method in ("stream.end", "stream.cancel", "stream.credit", "transfer.done"):
            if not _is_sid(p.get("stream")):
                self._violation("5.3/8", "%s stream %r is not a sid" % (method, p.get("stream")),
                                msg)
        if method == "stream.credit":
            if not _is_u32(p.get("bytes")) or p["bytes"] < 1:
                self._violation("8.3", "stream.credit bytes %r is not 1..2^32-1"
                                % (p.get("bytes"),), msg)
        if method == "stream.end" and "truncated" in p and type(p["truncated"]) is not bool:
            self._violation("8.4", "stream.end truncated %r is not a bool" % (p["truncated"],), msg)
        if method in ("stream.end", "stream.cancel", "stream.credit"):
            self._stream_frame(p["stream"], method, msg)
        elif method == "proc.exit":
            self._on_proc_exit(p, msg)
        elif method == "transfer.done":
            self._on_transfer_done(p, msg)
        elif method == "repl.result":
            self._on_repl_result(p, msg)
        elif method == "fs.event":
            if not _is_u32(p.get("watch")) or type(p.get("kind")) is not str:
                self._violation("17.6", "fs.event needs watch: u32 and kind: str", msg)
            if p["watch"] not in self._watches:
                self._violation("17.6", "fs.event for watch %d, never issued on this connection"
                                % p["watch"], msg)
            if p.get("path") is not None and not _is_bstr(p["path"]):
                self._violation("17.6", "fs.event path is not a bstr or nil", msg)
        elif method in ("pack.progress", "pack.manifest"):
            self._on_pack(method, p, msg)

    def _check_type(self, rule, what, p, k, ok, msg):
        """Field @k of @what's params @p, when present, must satisfy @ok."""
        if k in p and not ok(p[k]):
            self._violation(rule, "%s %s %r has the wrong type" % (what, k, p[k]), msg)

    def _on_proc_exit(self, p, msg):
        pid = p.get("id")
        if not _is_u32(pid) or not _is_u32(p.get("pid")):
            self._violation("14.3", "proc.exit id/pid %r/%r are not u32" % (pid, p.get("pid")), msg)
        for k, ok in (("code", lambda v: v is None or _is_int(v)),
                      ("signal", lambda v: v is None or type(v) is str),
                      ("signo", lambda v: v is None or _is_int(v)),
                      ("core", lambda v: type(v) is bool), ("drained", lambda v: type(v) is bool),
                      ("timed_out", lambda v: type(v) is bool), ("oom", lambda v: type(v) is bool),
                      ("duration_ns", _is_uint),
                      ("stdout_bytes", _is_uint), ("stderr_bytes", _is_uint),
                      ("rusage", lambda v: isinstance(v, dict))):
            self._check_type("14.3", "proc.exit", p, k, ok, msg)
        proc = self._procs.get(pid)
        if proc is None:
            self._violation("14.3", "proc.exit for process %d, which was not spawned (or attached) "
                            "on this connection, or before its proc.spawn response" % pid, msg)
        if proc["exited"]:
            self._violation("9.2 [c]", "a second proc.exit for process %d" % pid, msg)
        for sid in proc["out"]:
            st = self._streams[sid]
            if not st.output_over():
                self._violation("9.2 [c]", "proc.exit for process %d while its output stream %d "
                                "(%s) is neither ended nor cancelled (output ends first)"
                                % (pid, sid, st.what), msg)
        for sid in proc["stdin"]:
            st = self._streams[sid]
            if not (st.finished() or pid in self._close_stdin):
                self._violation("9.2 step 3 [c]", "proc.exit for process %d while its stdin "
                                "stream %d is still open (the agent cancels it with EPIPE first)"
                                % (pid, sid), msg)
        proc["exited"] = True
        for sid in proc["out"] + proc["stdin"]:
            self._streams[sid].closed_by = "proc.exit of process %d" % pid
            self._streams[sid].closed_rule = "9.2 [c]"

    def _on_transfer_done(self, p, msg):
        sid = p["stream"]
        for k, ok in (("size", _is_uint), ("files", _is_uint),
                      ("sha256", lambda v: type(v) is str)):
            self._check_type("18.5", "transfer.done", p, k, ok, msg)
        st = self._streams.get(sid)
        if st is None:
            self._violation("9.1 rule 3 [b]", "transfer.done for stream %d, which no response on "
                            "this connection has announced" % sid, msg)
        if not st.upload:
            self._violation("18.5", "transfer.done for stream %d (%s), not an upload"
                            % (sid, st.what), msg)
        if st.closed_by:
            self._violation("18.5 [d]", "transfer.done for stream %d after %s, the last frame "
                            "about it" % (sid, st.closed_by), msg)
        if not st.finished():
            self._violation("18.1/18.5 [d]", "transfer.done for upload stream %d while the stream "
                            "is still open (no stream.end or stream.cancel from either side; a "
                            "failing upload cancels it first)" % sid, msg)
        st.closed_by = "transfer.done"
        st.closed_rule = "18.5 [d]"

    def _on_repl_result(self, p, msg):
        key = (p.get("session"), p.get("eval"))
        if not (_is_u32(key[0]) and _is_u32(key[1])):
            self._violation("16.3", "repl.result session/eval %r are not u32" % (key,), msg)
        ev = self._evals.get(key)
        if ev is None:
            self._violation("16.3", "repl.result for eval %r/%r, not started with stream: true on "
                            "this connection" % key, msg)
        if ev["done"]:
            self._violation("16.3", "a second repl.result for eval %r/%r" % key, msg)
        for sid in ev["sids"]:
            st = self._streams[sid]
            if not st.output_over():
                self._violation("16.3 [e]", "repl.result for eval %r/%r before its stream %d (%s) "
                                "ended (both streams end, then repl.result)"
                                % (key + (sid, st.what)), msg)
            if isinstance(st.end_error, dict) and st.end_error.get("code") == "CANCELLED":
                self._violation("16.3 [e]", "repl.result for eval %r/%r after its streams ended "
                                "CANCELLED (then no repl.result follows)" % key, msg)
        ev["done"] = True
        for sid in ev["sids"]:
            self._streams[sid].closed_by = "repl.result of eval %r/%r" % key
            self._streams[sid].closed_rule = "16.3 [e]"

    def _on_pack(self, method, p, msg):
        job = self._packs.get(p.get("id"))
        if job is None:
            self._violation("19.4/19.5", "%s for pack job %r, not created on this connection"
                            % (method, p.get("id")), msg)
        if job["over"]:
            self._violation("19.2 step 4 [f]", "%s for pack job %d after the agent's %s on its "
                            "archive stream (nothing is sent about the job after that)"
                            % (method, job["id"], job["over"]), msg)
        if method == "pack.progress":
            if type(p.get("phase")) is not str or not _is_uint(p.get("bytes")) \
                    or not _is_uint(p.get("files")):
                self._violation("19.4", "pack.progress needs phase: str, bytes, files: uint", msg)
            if p["phase"] == "build":
                for sid in job["build"]:
                    st = self._streams[sid]
                    if not st.output_over():
                        self._violation("19.2 step 1 [f]", "pack.progress build for job %d "
                                        "before its build stream %d ended" % (job["id"], sid), msg)
            elif p["phase"] == "done":
                if not job["last_part"]:
                    self._violation("19.2 step 4 [f]", "pack.progress done for job %d before the "
                                    "last pack.manifest part" % job["id"], msg)
                job["done"] = True
        else:
            if not _is_uint(p.get("part")) or type(p.get("last")) is not bool \
                    or not isinstance(p.get("files"), list):
                self._violation("19.5", "pack.manifest needs part: uint, last: bool, files: list",
                                msg)
            if job["last_part"]:
                self._violation("19.5 [f]", "pack.manifest part %d for job %d after the last part"
                                % (p["part"], job["id"]), msg)
            if p["part"] != job["part"]:
                self._violation("19.5", "pack.manifest part %d for job %d, expected part %d"
                                % (p["part"], job["id"], job["part"]), msg)
            job["part"] += 1
            job["last_part"] = p["last"]

    # --- request helpers ---

    def request(self, method, params=None):
        rid = self.next_id
        self.next_id += 1
        self.send([0, rid, method, params if params is not None else {}])
        return rid

    def wait(self, rid):
        """Wait for the response to rid; other messages are kept in order for recv()."""
        kept = []
        try:
            while True:
                m = self.pending.pop(0) if self.pending else None
                if m is None:
                    m = self._next()
                    if m is None:
                        raise EOFError("connection closed while waiting for %d" % rid)
                if m[0] == 1 and m[1] == rid:
                    if m[2] is not None:
                        raise RemoteError(m[2])
                    return m[3]
                kept.append(m)
        finally:
            self.pending = kept + self.pending

    def wait_for(self, pred, what, timeout=None):
        """Next message satisfying pred; others are kept in order for later. With @timeout the
        socket timeout is that many seconds while waiting."""
        kept = []
        old = self.sock.gettimeout()
        if timeout is not None:
            self.sock.settimeout(timeout)
        try:
            while True:
                m = self.recv()
                if m is None:
                    raise EOFError("connection closed waiting for " + what)
                if pred(m):
                    return m
                kept.append(m)
        finally:
            self.pending = kept + self.pending
            self.sock.settimeout(old)

    def call(self, method, params=None):
        return self.wait(self.request(method, params))

    def hello(self, **kw):
        p = {"version": 1, "client": "sbxwire"}
        p.update(kw)
        r = self.call("hello", p)
        self.window = r["limits"]["stream_window"]
        self.out_window = r.get("recv_window", self.window)
        return r

    def credit(self, stream, n):
        self.send([2, "stream.credit", {"stream": stream, "bytes": n}])

    def end(self, stream):
        self.send([2, "stream.end", {"stream": stream}])

    def data(self, stream, payload):
        self.data_many(stream, [payload])

    def fill(self, stream, reserve, settle=1.0):
        """Send on `in` stream @stream in chunks, within credit but keeping @reserve bytes of
        it, until the agent grants no credit back for @settle seconds: its reader (a child, a
        socket) takes nothing more and what was sent last waits in the agent. Returns (the bytes
        sent, the credit left, at least @reserve)."""
        credit, sent = self.window, bytearray()
        block = os.urandom(CHUNK_MAX)
        while True:
            while credit > reserve:
                n = min(CHUNK_MAX, credit - reserve)
                self.data(stream, block[:n])
                sent += block[:n]
                credit -= n
            try:
                m = self.wait_for(lambda m: m[0] == 2 and m[1] == "stream.credit"
                                  and m[2]["stream"] == stream, "credit", timeout=settle)
            except socket.timeout:
                return bytes(sent), credit
            credit += m[2]["bytes"]

    def data_many(self, stream, payloads):
        """One data frame per payload of @payloads, all in one write."""
        head = bytes([0x93, 0x03]) + pack(stream)
        b = b"".join(frame(head + pack(p)) for p in payloads)
        self.sock.sendall(b)
        if self._out:
            self._note_raw(b)
        # else: client data changes nothing the checks follow


def run(conn, params, stdin=None, sink=None, grant=True):
    """Spawn, feed stdin, collect output; returns (exit map, {stream: bytes}, order of events)."""
    r = conn.call("proc.spawn", params)
    outs = {}
    ended = set()
    want_end = {s for s in (r["stdout"], r["stderr"]) if s is not None}
    consumed = {}
    events = []
    if stdin is not None:
        credit = conn.window
        off = 0
        sid = r["stdin"]
        while off < len(stdin):
            while credit == 0:
                m = conn.recv()
                if m[0] == 2 and m[1] == "stream.credit" and m[2]["stream"] == sid:
                    credit += m[2]["bytes"]
                else:
                    conn.pending.append(m)
                    # Keep output flowing while we wait for stdin credit.
                    if m[0] == 3:
                        conn.pending.pop()
                        outs.setdefault(m[1], bytearray()).extend(m[2])
                        consumed[m[1]] = consumed.get(m[1], 0) + len(m[2])
                        if grant and consumed[m[1]] >= conn.out_window // 2:
                            conn.credit(m[1], consumed[m[1]])
                            consumed[m[1]] = 0
                    elif m[0] == 2 and m[1] == "stream.end":
                        conn.pending.pop()
                        ended.add(m[2]["stream"])
                        events.append(("end", m[2]["stream"]))
                    elif m[0] == 2 and m[1] == "proc.exit":
                        pass
            n = min(credit, 256 * 1024, len(stdin) - off)
            conn.data(sid, stdin[off:off + n])
            off += n
            credit -= n
        conn.end(sid)
    exitmap = None
    while exitmap is None:
        m = conn.recv()
        if m is None:
            raise EOFError("agent closed the connection")
        if m[0] == 3:
            if sink is not None:
                sink(m[1], m[2])
            else:
                outs.setdefault(m[1], bytearray()).extend(m[2])
            events.append(("data", m[1]))
            consumed[m[1]] = consumed.get(m[1], 0) + len(m[2])
            if grant and consumed[m[1]] >= conn.out_window // 2:
                conn.credit(m[1], consumed[m[1]])
                consumed[m[1]] = 0
        elif m[0] == 2 and m[1] == "stream.end":
            ended.add(m[2]["stream"])
            events.append(("end", m[2]["stream"]))
        elif m[0] == 2 and m[1] == "proc.exit" and m[2]["id"] == r["id"]:
            exitmap = m[2]
            events.append(("exit", None))
    return r, exitmap, {k: bytes(v) for k, v in outs.items()}, events, ended, want_end


class Agent:
    """A real sbx-agent on a unix socket in a temporary directory."""

    def __init__(self, binary, extra=(), env=None, session_leader=False, cwd=None,
                 nofile=None):
        """@session_leader: the agent leads a session of its own with no controlling terminal, as
        sbx-init starts it (setsid). @cwd: its working directory (default: ours). @nofile: the
        soft RLIMIT_NOFILE it starts with (the image's, which its processes get back)."""
        self.dir = tempfile.mkdtemp(prefix="sbx-agent-")
        self.sock = os.path.join(self.dir, "agent.sock")
        self.addr = "unix:" + self.sock
        self.log = open(os.path.join(self.dir, "agent.log"), "w+")
        self.proc = subprocess.Popen([os.path.abspath(binary), "--listen", self.addr, *extra],
                                     stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env,
                                     start_new_session=session_leader, cwd=cwd,
                                     preexec_fn=None if nofile is None else
                                     lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (
                                         nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1])))
        deadline = time.time() + 10
        # The socket file appears at bind(), before listen(): wait until a connect succeeds
        # (a connect in between is refused, which made tests flaky on a loaded machine).
        while not self._accepting():
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("agent did not start: " + self.logtext())
            time.sleep(0.01)

    def _accepting(self):
        if not os.path.exists(self.sock):
            return False
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self.sock)
            return True
        except OSError:
            return False
        finally:
            s.close()

    def logtext(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def connect(self, hello=True):
        # The socket file appears at bind(), a moment before listen(): retry a refusal briefly.
        deadline = time.time() + 5
        while True:
            try:
                c = Conn(self.addr)
                break
            except ConnectionRefusedError:
                if time.time() > deadline:
                    raise
                time.sleep(0.01)
        if hello:
            c.hello()
        return c

    @contextlib.contextmanager
    def stopped(self):
        """The agent stopped (SIGSTOP) for the block, as a paused VM's would be; then continued."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)

    def alive(self):
        return self.proc.poll() is None

    def rss_kb(self, field="VmRSS"):
        """The agent's resident set in KiB (@field "VmHWM": its peak so far)."""
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return -1

    def finish(self, case, conn, *dirs):
        """A test's tearDown: close @conn (if any), stop the agent (a sanitizer report in its log fails
        the test), remove @dirs, and fail @case if the agent had died during the test."""
        alive = self.alive()
        if conn is not None:
            conn.close()
        try:
            self.stop()
        finally:
            for d in dirs:
                shutil.rmtree(d, ignore_errors=True)
        log = self.logtext()
        shutil.rmtree(self.dir, ignore_errors=True)  # the socket and the log
        case.assertTrue(alive, "the agent died during the test:\n" + log)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)  # a sanitized agent checks for leaks on the way out
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        # In a sanitizer build, LeakSanitizer runs at exit and reports into the agent's log.
        text = self.logtext()
        if "LeakSanitizer" in text or "AddressSanitizer" in text or "runtime error:" in text:
            raise AssertionError("sanitizer report from the agent:\n" + text[-6000:])


class Relay:
    """A unix socket between a client and the agent that passes frames both ways: an agent that
    misbehaves on demand. hold() stops reading what the client sends (an agent that takes no
    bytes, as a paused VM); @edit(msg, asked) may rewrite each message of the agent (a broken
    agent), where @asked maps the client's request ids to their methods; it returns the message,
    another one, one packed already (bytes), or None to drop it (an agent that never answers)."""

    def __init__(self, agent_path, path, edit=None):
        self.agent_path = agent_path
        self.edit = edit
        self.asked = {}
        self.held = threading.Event()
        self.socks = []
        self.ls = socket.socket(socket.AF_UNIX)
        self.ls.bind(path)
        self.ls.listen(4)
        self.addr = "unix:" + path
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            a = socket.socket(socket.AF_UNIX)
            a.connect(self.agent_path)
            self.socks += [c, a]
            threading.Thread(target=self._pump, args=(c, a, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(a, c, True), daemon=True).start()

    def _pump(self, src, dst, from_agent):
        try:
            while True:
                if not from_agent and self.held.is_set():
                    return  # nothing more is read from the client
                head = recv_exact(src, 4)
                body = recv_exact(src, struct.unpack(">I", head)[0]) if head else None
                if body is None:
                    break
                msg = decode_message(body)
                if not from_agent and msg[0] == 0:
                    self.asked[msg[1]] = msg[2]
                elif from_agent and self.edit is not None:
                    new = self.edit(msg, self.asked)
                    if new is None:
                        continue
                    if isinstance(new, bytes):  # a message packed already
                        head, body = b"", frame(new)
                    elif new is not msg:
                        head, body = b"", frame(pack(new))
                dst.sendall(head + body)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        self.ls.close()
        for s in self.socks:
            s.close()
