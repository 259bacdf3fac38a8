#!/usr/bin/env python3
"""Conformance: the MUSTs of protocol/PROTOCOL.md, checked against the real agent.

PROTOCOL.md promises that a client can be written from it alone, so every MUST (and MUST NOT)
in it has a test. Where another test already checks one, Appendix C of PROTOCOL.md names it;
this file holds the tests for the MUSTs nothing else checked. A MUST on the agent is checked
directly; a MUST on the client is checked by what the agent does when a client breaks it.

Each class is named for the section it checks (TestMustS4Encoding checks §4) and each test's
docstring starts with the § it checks. As in test_conformance.py, every frame the agent sends is
decoded by sbxwire's strict client, so every test also checks the message shapes, the UTF-8 of
every str and the frame order the agent sends.
"""
import os
import pty
import re
import select
import socket
import struct
import sys
import tempfile
import time
import tty
import unittest

from conf import AGENT, DOC, AgentCase, map_raw, request_raw, w  # noqa: E402


def int_forms(v):
    """Every msgpack integer format that can hold the small non-negative value @v (§4.2,
    Appendix B): positive fixint, uint8..uint64, int8..int64."""
    out = [bytes([v])] if v < 128 else []
    out += [b"\xcc" + struct.pack(">B", v), b"\xcd" + struct.pack(">H", v),
            b"\xce" + struct.pack(">I", v), b"\xcf" + struct.pack(">Q", v)]
    if v < 128:
        out += [b"\xd0" + struct.pack(">b", v)]
    out += [b"\xd1" + struct.pack(">h", v), b"\xd2" + struct.pack(">i", v),
            b"\xd3" + struct.pack(">q", v)]
    return out


def is_error_note(m):
    return m[0] == 2 and m[1] == "error"


# --- §2 Transports and connections -----------------------------------------------------------

class TestMustS2Connections(AgentCase):
    def test_half_close_ends_the_connection(self):
        """§2.1 (a client MUST NOT half-close): the agent treats end-of-file from the client as
        the end of the connection and sends nothing more, not even the response to a request
        still pending; the process that request waited for keeps running (§10)."""
        r = self.conn.call("proc.spawn", {"argv": ["sleep", "1"], "stdout": "null",
                                          "stderr": "null"})
        self.conn.request("proc.wait", {"id": r["id"]})
        self.assertEqual(self.conn.call("ping"), {})  # the proc.wait has been read and started
        self.conn.sock.shutdown(socket.SHUT_WR)
        self.conn.sock.settimeout(10)
        m = self.conn.recv()
        self.assertIsNone(m, "the agent sent %r after the client's end-of-file" % (m,))
        other = self.agent.connect()
        try:
            ex = other.call("proc.wait", {"id": r["id"]})
            self.assertEqual((ex["code"], ex["signal"]), (0, None))
        finally:
            other.close()

    def test_peer_that_does_not_read_is_closed(self):
        """§2.1 (a client MUST read concurrently with writing): a peer that sends requests and
        never reads the answers is closed once the agent's unsent control output passes its hard
        bound (at least 2 × frame_max), well before all answers were sent; other connections go
        on."""
        path = os.path.join(self.tmp, "f")
        with open(path, "wb") as f:
            f.write(os.urandom(262144))
        c = self.agent.connect()
        fh = c.call("fs.open", {"path": path})["fh"]
        n = 96  # 96 answers of 256 KiB: 24 MiB, three times the v0.1 agent's 8 MiB bound
        first = c.next_id
        c.send_raw(b"".join(w.frame(w.pack([0, first + i, "fs.read",
                                            {"fh": fh, "len": 262144, "offset": 0}]))
                            for i in range(n)))
        c.next_id = first + n
        deadline = time.time() + 30
        while self.conn.call("info")["conns"] > 1:
            self.assertLess(time.time(), deadline, "the agent kept a peer that does not read")
            time.sleep(0.05)
        got = 0
        c.sock.settimeout(10)
        try:
            while True:
                m = c.recv()
                if m is None:
                    break
                if m[0] == 1:
                    self.assertIsNone(m[2], m)
                    got += 1
        except ConnectionResetError:
            pass  # closed with our unread bytes in flight: a reset instead of end-of-file
        c.close()
        self.assertLess(got, n)
        self.assertLessEqual(got * 262144, 16 << 20)  # the bound plus socket buffers, not 24 MiB
        self.assertEqual(self.conn.call("ping"), {})


def free_tcp_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class TestMustS2Tcp(unittest.TestCase):
    TOKEN = "tcp-s3cret"

    def setUp(self):
        # The free port may be taken again before the agent binds it (tests run in parallel):
        # the agent then exits at start-up, and another port is tried.
        for attempt in range(5):
            self.port = free_tcp_port()
            try:
                self.agent = w.Agent(AGENT, ["--listen", "tcp:127.0.0.1:%d" % self.port],
                                     env=dict(os.environ, SBX_AGENT_TOKEN=self.TOKEN))
                return
            except RuntimeError:
                if attempt == 4:
                    raise

    def tearDown(self):
        self.agent.finish(self, None)

    def tcp_hello(self, params):
        """hello on a fresh TCP connection: (the response, the open socket or None if the agent
        closed it after the response)."""
        deadline = time.time() + 10
        while True:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(10)
            try:
                s.connect(("127.0.0.1", self.port))
                break
            except ConnectionRefusedError:
                s.close()
                self.assertLess(time.time(), deadline, "nothing listens on the TCP port")
                time.sleep(0.05)
        s.sendall(w.frame(w.pack([0, 1, "hello", params])))
        buf = b""
        while len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
            chunk = s.recv(65536)
            self.assertTrue(chunk, "closed before the hello response")
            buf += chunk
        n = struct.unpack(">I", buf[:4])[0]
        msg = w.decode_message(buf[4:4 + n])
        self.assertEqual(buf[4 + n:], b"")
        s.settimeout(0.5)
        try:
            rest = s.recv(65536)
        except socket.timeout:
            return msg, s
        self.assertEqual(rest, b"", "bytes after the hello response")
        s.close()
        return msg, None

    def test_every_tcp_connection_presents_the_token(self):
        """§2.6, §6.5: every TCP connection MUST present the token in hello: without it, or
        with another one, hello fails AUTH and the connection is closed; with it, the
        connection works."""
        for params in ({"version": 1}, {"version": 1, "token": self.TOKEN + "x"}):
            m, s = self.tcp_hello(params)
            self.assertEqual(m[:2], [1, 1])
            self.assertEqual(m[2]["code"], "AUTH", params)
            self.assertIsNone(s, "a connection that failed AUTH stays open")
        m, s = self.tcp_hello({"version": 1, "token": self.TOKEN})
        self.assertIsNone(m[2], m)
        self.assertEqual(m[3]["version"], 1)
        self.assertIsNotNone(s)
        s.settimeout(10)
        s.sendall(w.frame(w.pack([0, 2, "ping", {}])))
        hdr = s.recv(4, socket.MSG_WAITALL)
        body = s.recv(struct.unpack(">I", hdr)[0], socket.MSG_WAITALL)
        self.assertEqual(w.decode_message(body), [1, 2, None, {}])
        s.close()


class PtyPort:
    """The host end of an emulated virtio-serial port: a pseudo-terminal in raw mode. The agent
    opens the slave side (through a symlink, serial:/path); the test reads and writes the master.
    Closing the master is what a host disconnecting looks like to the agent (§2.4)."""

    def __init__(self):
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)  # no line discipline between the two ends
        self.name = os.ttyname(self.slave)
        self.buf = b""

    def send(self, msg):
        data = w.frame(w.pack(msg))
        while data:
            data = data[os.write(self.master, data):]

    def recv(self, timeout=10):
        deadline = time.time() + timeout
        while True:
            if len(self.buf) >= 4:
                n = struct.unpack(">I", self.buf[:4])[0]
                if len(self.buf) >= 4 + n:
                    body, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
                    return w.decode_message(body)
            left = deadline - time.time()
            if left <= 0:
                raise AssertionError("nothing from the agent on the serial port")
            r, _, _ = select.select([self.master], [], [], left)
            if r:
                self.buf += os.read(self.master, 65536)

    def call(self, rid, method, params):
        self.send([0, rid, method, params])
        while True:
            m = self.recv()
            if m[0] == 1 and m[1] == rid:
                return m

    def close(self):
        os.close(self.master)
        os.close(self.slave)


class TestMustS2Serial(unittest.TestCase):
    def setUp(self):
        if not os.path.exists("/dev/ptmx"):
            self.skipTest("no pseudo-terminals here to stand in for a serial port")
        self.dir = tempfile.mkdtemp(prefix="sbx-musts-serial-")
        self.link = os.path.join(self.dir, "port")
        self.port = self.plug()
        self.agent = w.Agent(AGENT, ["--listen", "serial:" + self.link])

    def tearDown(self):
        self.port.close()
        self.agent.finish(self, None, self.dir)

    def plug(self):
        """A new host end; the port path points at it (replaced atomically)."""
        port = PtyPort()
        tmp = self.link + ".new"
        os.symlink(port.name, tmp)
        os.replace(tmp, self.link)
        return port

    def test_reconnected_host_starts_with_hello(self):
        """§2.4: when the host connects again a new logical connection begins, which MUST start
        with a new hello: the agent answers any other request HELLO_REQUIRED, as on a fresh
        connection. The process spawned on the earlier logical connection keeps running."""
        m = self.port.call(1, "ping", {})
        self.assertEqual(m[2]["code"], "HELLO_REQUIRED", m)
        m = self.port.call(2, "hello", {"version": 1})
        self.assertIsNone(m[2], m)
        first_conn = m[3]["conn"]
        m = self.port.call(3, "proc.spawn", {"argv": ["sleep", "30"], "stdout": "null",
                                             "stderr": "null"})
        self.assertIsNone(m[2], m)
        pid = m[3]["id"]
        self.assertEqual(self.port.call(4, "ping", {})[2:], [None, {}])
        # The host goes away and comes back (on serial: a new host end of the same port).
        old, self.port = self.port, self.plug()
        old.close()
        m = self.port.call(1, "ping", {})
        self.assertEqual((m[2] or {}).get("code"), "HELLO_REQUIRED", m)
        m = self.port.call(2, "hello", {"version": 1})
        self.assertIsNone(m[2], m)
        self.assertNotEqual(m[3]["conn"], first_conn)
        procs = {p["id"]: p for p in self.port.call(3, "proc.list", {})[3]["procs"]}
        self.assertEqual(procs[pid]["state"], "running")
        self.assertEqual(self.port.call(4, "proc.kill", {"id": pid, "signal": "KILL"})[2], None)


# --- §3 Framing ------------------------------------------------------------------------------

EXT_VALUES = [b"\xc7\x01\x01\x00", b"\xc8\x00\x01\x01\x00", b"\xc9\x00\x00\x00\x01\x01\x00",
              b"\xd4\x01\x00", b"\xd5\x01" + b"\x00" * 2, b"\xd6\xff" + b"\x00" * 4,
              b"\xd7\x01" + b"\x00" * 8, b"\xd8\x01" + b"\x00" * 16]


class TestMustS3Content(AgentCase):
    def nested(self, depth):
        v = []
        for _ in range(depth - 3):  # the message array is depth 1, params depth 2
            v = [v]
        return {"x": v}

    def test_every_rule_is_checked_with_a_readable_id(self):
        """§3.3: the body MUST be checked for every rule 1–7; a request whose id can be read is
        answered with a BAD_MESSAGE response to that id (result nil), and the connection stays
        open after each."""
        ping = w.pack("ping")
        cases = [
            ("1 truncated value", b"\x94\x00" + w.pack(101) + ping + b"\x81\xa1x"),
            ("1 reserved byte 0xc1", b"\x94\x00" + w.pack(102) + ping + b"\x81\xa1x\xc1"),
            ("2 trailing bytes", w.pack([0, 103, "ping", {}]) + b"\xc0"),
            ("3 depth 33", w.pack([0, 104, "ping", self.nested(33)])),
            ("4 65537 objects", w.pack([0, 105, "ping", {"x": [None] * 65530}])),
            ("5 array32 claiming 1000 elements",
             b"\x94\x00" + w.pack(106) + ping + b"\x81\xa1x\xdd\x00\x00\x03\xe8" + b"\xc0" * 5),
            ("5 map16 claiming 10 entries",
             b"\x94\x00" + w.pack(107) + ping + b"\x81\xa1x\xde\x00\x0a" + b"\xc0" * 15),
            ("7 method not a str", w.pack([0, 108, 5, {}])),
            ("7 params neither map nor nil", w.pack([0, 109, "ping", [1]])),
            ("7 method longer than 64 bytes", w.pack([0, 110, "a" * 65, {}])),
        ]
        for i, ext in enumerate(EXT_VALUES):
            cases.append(("6 ext 0x%02x" % ext[0],
                          b"\x94\x00" + w.pack(120 + i) + ping + b"\x81\xa1x" + ext))
        for what, body in cases:
            self.assertEqual(body[:2], b"\x94\x00", what)
            rid = body[2]  # a positive fixint: the id is readable (§3.3)
            self.conn.send_raw(w.frame(body))
            m = self.response(rid)
            self.assertEqual(m[2]["code"], "BAD_MESSAGE", (what, m))
            self.assertIsNone(m[3], what)
            self.assertEqual(self.conn.call("ping"), {}, what)
        # The limits themselves are allowed: depth 32, 65536 objects, a 64-byte method name.
        self.assertEqual(self.conn.call("ping", self.nested(32)), {})
        self.assertEqual(self.conn.call("ping", {"x": [None] * 65529}), {})
        self.assertEqual(self.err("a" * 64)["code"], "UNKNOWN_METHOD")

    def test_every_rule_is_checked_without_a_readable_id(self):
        """§3.3: a malformed message without a readable request id gets the error notification
        BAD_MESSAGE, and the connection stays open."""
        cases = [
            ("1 reserved byte", b"\xc1"),
            ("1 truncated array", b"\x93\x02"),
            ("2 trailing bytes", w.pack([2, "stream.credit", {"stream": 1, "bytes": 1}]) + b"\x01"),
            ("5 array32 claiming 2^32-1", b"\xdd\xff\xff\xff\xff\x02"),
            ("6 ext at the top", EXT_VALUES[3]),
            ("6 timestamp ext in a notification",
             b"\x93\x02" + w.pack("x") + b"\x81\xa1t" + EXT_VALUES[5]),
            ("7 not an array", w.pack({"a": 1})),
            ("7 unknown kind", w.pack([4, 1, 2])),
            ("7 notification of 4 elements", w.pack([2, "x", {}, 1])),
            ("7 data that is not bin", w.pack([3, 1, "text"])),
        ]
        for what, body in cases:
            self.conn.send_raw(w.frame(body))
            m = self.conn.wait_for(is_error_note, "error notification for " + what)
            self.assertEqual(m[2]["code"], "BAD_MESSAGE", (what, m))
            self.assertEqual(self.conn.call("ping"), {}, what)


# --- §4 Value encoding -----------------------------------------------------------------------

class TestMustS4Encoding(AgentCase):
    def test_every_integer_format_is_accepted(self):
        """§4.2: receivers MUST accept every integer format whose value is in range (0x01,
        cc 01, cd 00 01, d0 01 all mean 1): in request ids, hello's version, params, the stream
        id of a data message and of stream.end."""
        # request ids: 40 in the first format, 41 in the second, ...
        for i in range(len(int_forms(40))):
            rid = 40 + i
            form = int_forms(rid)[i]
            self.conn.send_raw(request_raw(form, "ping", b"\x80"))
            m = self.response(rid)
            self.assertEqual(m[2:], [None, {}], form.hex(" "))
        # hello's version, on fresh connections
        for form in int_forms(1):
            c = self.agent.connect(hello=False)
            try:
                c.send_raw(request_raw(b"\x01", "hello", map_raw([("version", form)])))
                m = self.response(1, c)
                self.assertIsNone(m[2], (form.hex(" "), m))
                self.assertEqual(m[3]["version"], 1)
            finally:
                c.close()
        # params: fs.read of 3 bytes at offset 1, every number in each format
        path = os.path.join(self.tmp, "f")
        with open(path, "wb") as f:
            f.write(b"abcdef")
        fh = self.conn.call("fs.open", {"path": path})["fh"]
        self.assertLess(fh, 128)
        for fh_form, len_form, off_form in zip(int_forms(fh), int_forms(3), int_forms(1)):
            rid = self.conn.next_id
            self.conn.next_id += 1
            self.conn.send_raw(request_raw(w.pack(rid), "fs.read", map_raw(
                [("fh", fh_form), ("len", len_form), ("offset", off_form)])))
            m = self.response(rid)
            self.assertIsNone(m[2], (len_form.hex(" "), m))
            self.assertEqual(m[3]["data"], b"bcd")
        # stream ids: each piece of stdin on its own sid encoding, then stream.end likewise
        r = self.conn.call("proc.spawn", {"argv": ["cat"], "stdin": "pipe", "stderr": "null"})
        sid = r["stdin"]
        want = b""
        for i, form in enumerate(int_forms(sid)):
            piece = b"<%d>" % i
            self.conn.send_raw(w.frame(b"\x93\x03" + form + w.pack(piece)))
            want += piece
        self.conn.send_raw(w.frame(b"\x93\x02" + w.pack("stream.end") +
                                   map_raw([("stream", b"\xcf" + struct.pack(">Q", sid))])))
        out = b""
        while True:
            m = self.conn.recv()
            self.assertIsNotNone(m)
            if m[0] == 3 and m[1] == r["stdout"]:
                out += m[2]
            elif m[0] == 2 and m[1] == "stream.cancel":
                self.fail("the agent refused a stream message: %r" % (m,))
            elif m[0] == 2 and m[1] == "proc.exit":
                break
        self.assertEqual(out, want)

    def test_duplicate_key_first_occurrence_wins(self):
        """§4.3: senders MUST NOT put a key twice in one map; if one does, the agent uses the
        first occurrence."""
        for pairs, name, value in (
                ([("name", w.pack("SBX_DUP1")), ("value", w.pack("first")),
                  ("value", w.pack("second"))], "SBX_DUP1", "first"),
                ([("name", w.pack("SBX_DUP2")), ("name", w.pack("SBX_DUP3")),
                  ("value", w.pack("v"))], "SBX_DUP2", "v")):
            rid = self.conn.next_id
            self.conn.next_id += 1
            self.conn.send_raw(request_raw(w.pack(rid), "env.set", map_raw(pairs)))
            m = self.response(rid)
            self.assertIsNone(m[2], m)
            self.assertEqual(self.conn.call("env.get", {"name": name})["value"], value)
        self.assertIsNone(self.conn.call("env.get", {"name": "SBX_DUP3"})["value"])


# --- §5 Messages -----------------------------------------------------------------------------

class TestMustS5Messages(AgentCase):
    def test_reused_id_is_not_detected(self):
        """§5.1: a client MUST NOT reuse an outstanding id; the agent does not detect it: each
        request still gets its own response, both with that id, in completion order (which is
        why the client could not tell them apart)."""
        r = self.conn.call("proc.spawn", {"argv": ["sleep", "0.5"], "stdout": "null",
                                          "stderr": "null"})
        self.conn.send([0, 500, "proc.wait", {"id": r["id"]}])
        self.conn.send([0, 500, "ping", {}])
        first = self.response(500)
        second = self.response(500)
        self.assertEqual(first[2:], [None, {}])  # ping's, finished first
        self.assertIsNone(second[2], second)
        self.assertEqual((second[3]["id"], second[3]["code"]), (r["id"], 0))

    def test_data_length_bounds(self):
        """§5.4: data length n MUST satisfy 0 < n ≤ chunk_max: exactly chunk_max is accepted;
        an empty message, or one byte more than chunk_max, on a live stdin stream cancels it
        with STREAM (§8.6)."""
        chunk = self.agent_limits()["chunk_max"]
        r = self.conn.call("proc.spawn", {"argv": ["cat"], "stdin": "pipe", "stderr": "null"})
        self.conn.data(r["stdin"], b"\x01" * chunk)
        got = 0
        while got < chunk:
            m = self.conn.recv()
            self.assertFalse(m[0] == 2 and m[1] == "stream.cancel", m)
            if m[0] == 3 and m[1] == r["stdout"]:
                got += len(m[2])
        for payload in (b"", b"\x02" * (chunk + 1)):
            self.conn.data(r["stdin"], payload)
            m = self.conn.wait_for(lambda m: m[0] == 2 and m[1] == "stream.cancel"
                                   and m[2]["stream"] == r["stdin"], "stream.cancel")
            self.assertEqual(m[2]["error"]["code"], "STREAM")
            # §8.6: the cancelled stdin is closed, so cat ends on its own.
            self.assertEqual(self.conn.call("proc.wait", {"id": r["id"]})["code"], 0)
            r = self.conn.call("proc.spawn", {"argv": ["cat"], "stdin": "pipe",
                                              "stderr": "null"})
        self.conn.end(r["stdin"])
        self.assertEqual(self.conn.call("proc.wait", {"id": r["id"]})["code"], 0)

    def agent_limits(self):
        c = self.agent.connect(hello=False)
        try:
            return c.hello()["limits"]
        finally:
            c.close()


# --- §6 Handshake ----------------------------------------------------------------------------

class TestMustS6Token(unittest.TestCase):
    TOKEN = "s3cret-Token"

    def setUp(self):
        self.agent = w.Agent(AGENT, env=dict(os.environ, SBX_AGENT_TOKEN=self.TOKEN))

    def tearDown(self):
        self.agent.finish(self, None)

    def test_token_is_compared_byte_for_byte(self):
        """§6.5: hello MUST carry the token equal to the agent's, byte for byte: a prefix, an
        extension, another letter case, an empty or a missing token all fail AUTH, and the
        connection is closed after the response."""
        for tok in (self.TOKEN[:-1], self.TOKEN + "x", self.TOKEN.lower(), "", None):
            c = self.agent.connect(hello=False)
            p = {"version": 1}
            if tok is not None:
                p["token"] = tok
            with self.assertRaises(w.RemoteError) as cm:
                c.call("hello", p)
            self.assertEqual(cm.exception.code, "AUTH", tok)
            self.assertIsNone(c.recv(), "still open after AUTH (token %r)" % tok)
            c.close()
        c = self.agent.connect(hello=False)
        self.assertEqual(c.call("hello", {"version": 1, "token": self.TOKEN})["version"], 1)
        self.assertEqual(c.call("ping"), {})
        c.close()


# Fields PROTOCOL.md defines for v1, by table.
HELLO_RESULT = {"version", "agent", "agent_version", "capabilities", "limits", "conn"}  # §6.4
HELLO_LIMITS = {"frame_max", "chunk_max", "stream_window", "max_streams", "max_procs",
                "max_conns"}  # §6.4, §23
INFO_RESULT = {"agent", "agent_version", "version", "pid", "uptime_ns", "load", "memory", "boot",
               "conns", "procs"}  # §12.3
SPAWN_RESULT = {"id", "pid", "stdin", "stdout", "stderr"}  # §14.2
EXIT_MAP = {"id", "pid", "code", "signal", "signo", "core", "duration_ns", "drained", "timed_out",
            "oom", "stdout_bytes", "stderr_bytes", "rusage"}  # §14.3
RUSAGE = {"maxrss_kb", "utime_us", "stime_us"}  # §14.3
STREAM_END = {"stream", "error", "truncated"}  # §8.4
ERROR_OBJECT = {"code", "message", "errno", "stage", "field", "path", "min", "max",
                "limit"}  # §7.1
LIFETIME = {"mode", "deadline_ns", "remaining_ms"}  # §12.5


class TestMustS6Hello(AgentCase):
    def test_only_fields_of_the_negotiated_version(self):
        """§6.3, §6.4: after hello both sides MUST use only the messages, methods and fields
        defined for the negotiated version: the agent's results, notifications and error objects
        carry no field this document does not define for v1, and hello.limits has the six."""
        c = self.agent.connect(hello=False)
        res = c.hello()
        c.close()
        self.assertEqual(set(res), HELLO_RESULT)
        self.assertEqual(set(res["limits"]), HELLO_LIMITS)
        self.assertEqual(set(self.conn.call("info")), INFO_RESULT)
        self.assertLessEqual(set(self.conn.call("lifetime.get")), LIFETIME)
        r, ex, _, _, _, _ = w.run(self.conn, {"argv": ["sh", "-c", "echo o; echo e >&2"]})
        self.assertEqual(set(r), SPAWN_RESULT)
        self.assertEqual(set(ex), EXIT_MAP)
        self.assertEqual(set(ex["rusage"]), RUSAGE)
        r = self.conn.call("proc.spawn", {"argv": ["true"], "stderr": "null"})
        m = self.conn.wait_for(lambda m: m[0] == 2 and m[1] == "stream.end", "stream.end")
        self.assertLessEqual(set(m[2]), STREAM_END)
        self.conn.call("proc.wait", {"id": r["id"]})
        errors = [self.err("proc.spawn", {"argv": ["/nonexistent/x"]}),  # errno, stage
                  self.err("proc.spawn", {"argv": [1]}),  # field
                  self.err("fs.stat", {"path": "/nonexistent/x"}),  # path
                  self.err("fs.write", {"fh": self.conn.call("fs.open", {
                      "path": os.path.join(self.tmp, "f"), "flags": ["write", "create"]})["fh"],
                      "data": b"x" * (262144 + 1)}),  # limit, max
                  self.err("proc.wait", {"id": 999999})]
        c = self.agent.connect(hello=False)
        errors.append(self.err("hello", {"version": 9, "min_version": 9}, c))  # min, max
        c.close()
        for e in errors:
            self.assertLessEqual(set(e), ERROR_OBJECT, e)


# --- §8 Streams ------------------------------------------------------------------------------

def is_cancel_of(sid):
    return lambda m: m[0] == 2 and m[1] == "stream.cancel" and m[2]["stream"] == sid


class TestMustS8Credit(AgentCase):
    def read_until_quiet(self, sid, want, quiet=0.5, timeout=20):
        """Bytes of stream @sid read until @want arrived or @timeout, then @quiet seconds
        more; other messages are kept."""
        got = 0
        deadline = time.time() + timeout
        old = self.conn.sock.gettimeout()
        try:
            while True:
                limit = quiet if got >= want else max(0.01, deadline - time.time())
                if got < want and time.time() >= deadline:
                    break
                self.conn.sock.settimeout(limit)
                try:
                    m = self.conn.wait_for(lambda m: m[0] == 3 and m[1] == sid, "data")
                except socket.timeout:
                    if got >= want:
                        break
                    continue
                got += len(m[2])
        finally:
            self.conn.sock.settimeout(old)
        return got

    def test_agent_sends_no_more_than_its_credit(self):
        """§8.3: the sender MUST NOT send beyond its credit: with no grant the agent sends
        exactly one stream_window of a process's output and stops; a grant of n bytes releases
        exactly n more."""
        window = self.conn.window
        r = self.conn.call("proc.spawn", {"argv": ["head", "-c", str(8 * window), "/dev/zero"],
                                          "stderr": "null"})
        sid = r["stdout"]
        self.assertEqual(self.read_until_quiet(sid, window), window)
        self.conn.credit(sid, 1000)
        self.assertEqual(self.read_until_quiet(sid, 1000), 1000)
        self.conn.send([2, "stream.cancel", {"stream": sid}])
        self.assertEqual(self.conn.call("proc.wait", {"id": r["id"]})["code"], 0)

    def test_client_data_beyond_credit_is_cancelled(self):
        """§8.3, §8.6: a client MUST NOT send beyond its credit: exactly the credit is accepted;
        one byte more is discarded and the stream cancelled with STREAM."""
        child = ("import fcntl, os, time; fcntl.fcntl(0, 1031, 4096); os.write(1, b'R'); "
                 "time.sleep(60)")  # F_SETPIPE_SZ: the agent can write 4 KiB, never half a window
        r = self.conn.call("proc.spawn", {"argv": [sys.executable, "-c", child], "stdin": "pipe",
                                          "stderr": "null"})
        sid = r["stdin"]
        m = self.conn.wait_for(lambda m: m[0] == 3 and m[1] == r["stdout"], "ready", timeout=20)
        self.assertEqual(m[2], b"R")
        window, chunk = self.conn.window, 262144
        for off in range(0, window, chunk):
            self.conn.data(sid, b"\x00" * min(chunk, window - off))
        self.assertEqual(self.conn.call("ping"), {})  # frames are handled in order (§9.1)
        self.assertEqual([m for m in self.conn.pending if is_cancel_of(sid)(m)], [],
                         "data within credit was refused")
        granted = sum(m[2]["bytes"] for m in self.conn.pending
                      if m[0] == 2 and m[1] == "stream.credit" and m[2]["stream"] == sid)
        self.conn.data(sid, b"\x00" * (granted + 1))
        m = self.conn.wait_for(is_cancel_of(sid), "stream.cancel", timeout=20)
        self.assertEqual(m[2]["error"]["code"], "STREAM")
        self.conn.call("proc.kill", {"id": r["id"], "signal": "KILL"})
        self.assertEqual(self.conn.call("proc.wait", {"id": r["id"]})["signal"], "SIGKILL")


# --- §11 Method catalogue and capabilities ---------------------------------------------------

def catalogue():
    """{capability: ([methods], implemented)} from the table of PROTOCOL.md §11."""
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    sec = text[text.index("## 11. Method catalogue"):text.index("## 12. Family")]
    out = {}
    for line in sec.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        cap = cells[0].strip("`")
        methods = re.findall(r"`([a-z_]+\.[a-z_.]+|hello|ping|info|shutdown)`", cells[1])
        out[cap] = (methods, cells[3] == "implemented in the v0.1 agent")
    return out


class TestMustS11Capabilities(AgentCase):
    SKIP = {"hello", "shutdown"}  # answered by the handshake; would power off under sbx-init

    def test_methods_follow_the_announced_capabilities(self):
        """§11: a client MUST NOT use a method whose capability was not announced; the agent
        announces exactly what it implements: every method of an announced capability is known
        (never UNKNOWN_METHOD), every method of one not announced is refused (UNKNOWN_METHOD or
        UNSUPPORTED) and does nothing."""
        cat = catalogue()
        self.assertIn("net", cat)
        self.assertIn("process.attach", cat)
        c = self.agent.connect(hello=False)
        caps = set(c.hello()["capabilities"])
        c.close()
        # fs.mktemp needs no params: keep what it creates in the scratch directory.
        self.conn.call("env.set", {"name": "TMPDIR", "value": self.tmp})
        for cap, (methods, implemented) in sorted(cat.items()):
            if cap == "pty" and "pty" not in caps and not os.path.exists("/dev/ptmx"):
                continue
            self.assertEqual(cap in caps, implemented, cap)
            for method in methods:
                if method in self.SKIP or (cap == "pty" and method == "proc.spawn"):
                    continue
                rid = self.conn.request(method, {})
                m = self.response(rid)
                code = (m[2] or {}).get("code")
                if cap in caps:
                    self.assertNotEqual(code, "UNKNOWN_METHOD", (cap, method))
                else:
                    self.assertIn(code, ("UNKNOWN_METHOD", "UNSUPPORTED"), (cap, method, m))
        self.assertEqual(self.conn.call("ping"), {})


if __name__ == "__main__":
    unittest.main()
