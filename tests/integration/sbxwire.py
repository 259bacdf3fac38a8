"""A small, independent implementation of the sbx wire protocol for tests (PROTOCOL.md).

Written from the spec rather than from libsbxproto, so the integration tests also check that the
agent speaks what the document says. Standard library only.
"""
import os
import shutil
import socket
import struct
import subprocess
import tempfile
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


def unpack(b, i=0):
    """Decode one value at b[i:]; returns (value, next index)."""
    t = b[i]
    if t <= 0x7F:
        return t, i + 1
    if t >= 0xE0:
        return t - 256, i + 1
    if 0x80 <= t <= 0x8F:
        return _map(b, i + 1, t & 15)
    if 0x90 <= t <= 0x9F:
        return _arr(b, i + 1, t & 15)
    if 0xA0 <= t <= 0xBF:
        n = t & 31
        return bytes(b[i + 1:i + 1 + n]).decode("utf-8", "replace"), i + 1 + n
    if t == 0xC0:
        return None, i + 1
    if t == 0xC2:
        return False, i + 1
    if t == 0xC3:
        return True, i + 1
    if t in (0xC4, 0xC5, 0xC6):
        w = {0xC4: 1, 0xC5: 2, 0xC6: 4}[t]
        n = int.from_bytes(b[i + 1:i + 1 + w], "big")
        return bytes(b[i + 1 + w:i + 1 + w + n]), i + 1 + w + n
    if t in (0xD9, 0xDA, 0xDB):
        w = {0xD9: 1, 0xDA: 2, 0xDB: 4}[t]
        n = int.from_bytes(b[i + 1:i + 1 + w], "big")
        return bytes(b[i + 1 + w:i + 1 + w + n]).decode("utf-8", "replace"), i + 1 + w + n
    if t == 0xCA:
        return struct.unpack(">f", b[i + 1:i + 5])[0], i + 5
    if t == 0xCB:
        return struct.unpack(">d", b[i + 1:i + 9])[0], i + 9
    if 0xCC <= t <= 0xCF:
        w = 1 << (t - 0xCC)
        return int.from_bytes(b[i + 1:i + 1 + w], "big"), i + 1 + w
    if 0xD0 <= t <= 0xD3:
        w = 1 << (t - 0xD0)
        return int.from_bytes(b[i + 1:i + 1 + w], "big", signed=True), i + 1 + w
    if t in (0xDC, 0xDD):
        w = 2 if t == 0xDC else 4
        return _arr(b, i + 1 + w, int.from_bytes(b[i + 1:i + 1 + w], "big"))
    if t in (0xDE, 0xDF):
        w = 2 if t == 0xDE else 4
        return _map(b, i + 1 + w, int.from_bytes(b[i + 1:i + 1 + w], "big"))
    raise ValueError("msgpack type 0x%02x" % t)


def _arr(b, i, n):
    out = []
    for _ in range(n):
        v, i = unpack(b, i)
        out.append(v)
    return out, i


def _map(b, i, n):
    out = {}
    for _ in range(n):
        k, i = unpack(b, i)
        v, i = unpack(b, i)
        out[k] = v
    return out, i


def frame(payload):
    return struct.pack(">I", len(payload)) + payload


class RemoteError(Exception):
    def __init__(self, err):
        super().__init__("%s: %s" % (err.get("code"), err.get("message")))
        self.err = err
        self.code = err.get("code")


class Conn:
    """One protocol connection. Messages not yet consumed wait in self.pending."""

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
        self.window = 1 << 20
        self.closed = False

    def close(self):
        self.sock.close()

    def send_raw(self, data):
        self.sock.sendall(data)

    def send(self, msg):
        self.sock.sendall(frame(pack(msg)))

    def _read_frame(self):
        while True:
            if len(self.buf) >= 4:
                n = int.from_bytes(self.buf[:4], "big")
                if len(self.buf) >= 4 + n:
                    payload = bytes(self.buf[4:4 + n])
                    del self.buf[:4 + n]
                    return payload
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                self.closed = True
                return None
            self.buf += chunk

    def recv(self):
        """Next message as a list ([kind, ...]); data frames as [3, stream, bytes]. None on EOF."""
        if self.pending:
            return self.pending.pop(0)
        payload = self._read_frame()
        if payload is None:
            return None
        msg, end = unpack(payload)
        assert end == len(payload), "trailing bytes in a frame from the agent"
        return msg

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
                    payload = self._read_frame()
                    if payload is None:
                        raise EOFError("connection closed while waiting for %d" % rid)
                    m, _ = unpack(payload)
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
        return r

    def credit(self, stream, n):
        self.send([2, "stream.credit", {"stream": stream, "bytes": n}])

    def end(self, stream):
        self.send([2, "stream.end", {"stream": stream}])

    def data(self, stream, payload):
        self.send_raw(frame(bytes([0x93, 0x03]) + pack(stream) + pack(payload)))


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
                        if grant and consumed[m[1]] >= conn.window // 2:
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
            if grant and consumed[m[1]] >= conn.window // 2:
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

    def __init__(self, binary, extra=(), env=None):
        self.dir = tempfile.mkdtemp(prefix="sbx-agent-")
        self.sock = os.path.join(self.dir, "agent.sock")
        self.addr = "unix:" + self.sock
        self.log = open(os.path.join(self.dir, "agent.log"), "w+")
        self.proc = subprocess.Popen([binary, "--listen", self.addr, *extra], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env)
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

    def alive(self):
        return self.proc.poll() is None

    def rss_kb(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
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
        case.assertTrue(alive, "the agent died during the test:\n" + self.logtext())

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
