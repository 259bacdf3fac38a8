"""The gateway's HTTP/1.1 server and WebSocket endpoint (gateway/http.c), driven with raw sockets
against gw_http_echo (tests/gateway/http_echo.c). Stdlib only.

GW_HTTP_ECHO names the echo binary (ctest passes it); SBX_BUILD/tests/gw_http_echo otherwise.
"""

import base64
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import time
import unittest

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TIMEOUT = 10


def echo_binary(fast=False):
    """gw_http_echo, or (@fast) gw_http_echo_fast: GW_WS_PING_MS 200, GW_WS_DEAD_MS 800."""
    path = os.environ.get("GW_HTTP_ECHO_FAST" if fast else "GW_HTTP_ECHO")
    if not path:
        path = os.path.join(os.environ.get("SBX_BUILD", "build"), "tests",
                            "gw_http_echo_fast" if fast else "gw_http_echo")
    return path


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return buf


def read_head(sock):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(1)
        if not chunk:
            raise EOFError("connection closed in the response head: %r" % buf)
        buf += chunk
    lines = buf.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers


def read_response(sock):
    status, headers = read_head(sock)
    body = recv_exact(sock, int(headers.get("content-length", "0")))
    return status, headers, body


def frame(opcode, payload, fin=True, mask=True):
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", first, (0x80 if mask else 0) | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, n)
    else:
        head = struct.pack("!BBQ", first, (0x80 if mask else 0) | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


def recv_frame(sock):
    """(fin, opcode, payload) of the next frame from the server (never masked)."""
    b0, b1 = recv_exact(sock, 2)
    if b1 & 0x80:
        raise AssertionError("server frame is masked")
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", recv_exact(sock, 2))
    elif n == 127:
        (n,) = struct.unpack("!Q", recv_exact(sock, 8))
    return bool(b0 & 0x80), b0 & 0x0F, recv_exact(sock, n)


def recv_message(sock):
    """(opcode, payload) of the next data or control message, fragments joined."""
    fin, op, data = recv_frame(sock)
    while not fin and op < 8:
        fin, cop, more = recv_frame(sock)
        if cop >= 8:
            continue
        data += more
    return op, data


def close_code(payload):
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


def assert_eof(testcase, sock):
    """The server closed the socket (EOF or a reset after the close exchange)."""
    sock.settimeout(TIMEOUT)
    try:
        data = sock.recv(1)
    except ConnectionResetError:
        return
    testcase.assertEqual(data, b"")


def send_until_refused(sock, data, limit, budget=8.0, stall=1.5):
    """Send @data over and over (non-blocking) until @limit bytes went, @budget seconds passed,
    or the peer took nothing for @stall seconds. Returns the bytes sent."""
    sock.setblocking(False)
    sent, off = 0, 0
    t0 = last = time.monotonic()
    while sent < limit and time.monotonic() - t0 < budget:
        try:
            n = sock.send(data[off:] if off else data)
        except BlockingIOError:
            if time.monotonic() - last > stall:
                break
            time.sleep(0.01)
            continue
        sent += n
        off = (off + n) % len(data)
        last = time.monotonic()
    sock.setblocking(True)
    return sent


class EchoCase(unittest.TestCase):
    """A gw_http_echo for the class (@FAST: gw_http_echo_fast) and raw-socket helpers."""

    FAST = False

    @classmethod
    def setUpClass(cls):
        cls.proc = subprocess.Popen([echo_binary(cls.FAST)], stdout=subprocess.PIPE)
        line = cls.proc.stdout.readline()
        cls.port = int(line)

    @classmethod
    def tearDownClass(cls):
        cls.proc.send_signal(signal.SIGTERM)
        rc = cls.proc.wait(timeout=30)
        cls.proc.stdout.close()
        if rc != 0:
            raise AssertionError("gw_http_echo exited with %d (leak or handles left?)" % rc)

    def read_chunk(self, sock):
        """One chunk of a chunked body: its bytes (b"" for the last chunk, after its CRLF)."""
        line = b""
        while not line.endswith(b"\r\n"):
            c = sock.recv(1)
            if not c:
                raise EOFError("connection closed in a chunk size line: %r" % line)
            line += c
        n = int(line.split(b";")[0], 16)
        data = recv_exact(sock, n + 2)
        self.assertEqual(data[-2:], b"\r\n")
        return data[:-2]

    def connect(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
        self.addCleanup(s.close)
        return s

    def request(self, sock, method, target, body=b"", headers=()):
        head = "%s %s HTTP/1.1\r\nHost: x\r\n" % (method, target)
        for h in headers:
            head += h + "\r\n"
        if body:
            head += "Content-Length: %d\r\n" % len(body)
        sock.sendall(head.encode() + b"\r\n" + body)
        return read_response(sock)

    def stats(self):
        s = self.connect()
        status, _, body = self.request(s, "GET", "/stats")
        self.assertEqual(status, 200)
        return json.loads(body)

    def ws_connect(self, extra=b"", headers=()):
        s = self.connect()
        key = base64.b64encode(os.urandom(16))
        head = (
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n"
        )
        for h in headers:
            head += h.encode() + b"\r\n"
        s.sendall(head + b"\r\n" + extra)
        status, hdrs = read_head(s)
        self.assertEqual(status, 101)
        want = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
        self.assertEqual(hdrs.get("sec-websocket-accept"), want)
        return s, hdrs


class TestHttp(EchoCase):
    # --- REST ---------------------------------------------------------------------------------

    def test_echo_request(self):
        s = self.connect()
        status, hdrs, body = self.request(s, "POST", "/a%20b/c?x=%20&y", b'{"k":1}',
                                          ["X-Mixed-Case: v "])
        self.assertEqual(status, 200)
        self.assertEqual(hdrs["content-type"], "application/json")
        j = json.loads(body)
        self.assertEqual(j["method"], "POST")
        self.assertEqual(j["path"], "/a b/c")
        self.assertEqual(j["query"], "x=%20&y")
        self.assertEqual(j["body"], '{"k":1}')
        self.assertEqual(j["headers"]["x-mixed-case"], "v")
        self.assertFalse(j["websocket"])

    def test_keep_alive(self):
        s = self.connect()
        for i in range(3):
            status, hdrs, body = self.request(s, "GET", "/n%d?i=%d" % (i, i))
            self.assertEqual(status, 200)
            self.assertNotIn("connection", hdrs)
            self.assertEqual(json.loads(body)["path"], "/n%d" % i)

    def test_pipelined(self):
        s = self.connect()
        s.sendall(b"GET /p1 HTTP/1.1\r\nHost: x\r\n\r\nGET /p2 HTTP/1.1\r\nHost: x\r\n\r\n")
        for path in ("/p1", "/p2"):
            status, _, body = read_response(s)
            self.assertEqual(status, 200)
            self.assertEqual(json.loads(body)["path"], path)

    def test_behind_a_slow_answer(self):
        s = self.connect()
        s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = read_response(s)
        self.assertEqual((status, json.loads(body)), (200, {"slow": True}))
        status, _, body = read_response(s)
        self.assertEqual((status, json.loads(body)["path"]), (200, "/after"))

    def test_empty_header_and_chunked_body(self):
        s = self.connect()
        s.sendall(b"POST /c HTTP/1.1\r\nHost: x\r\nX-Empty:\r\nX-Next: v\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        status, _, body = read_response(s)
        self.assertEqual(status, 200)
        j = json.loads(body)
        self.assertEqual(j["body"], "abcde")
        self.assertEqual(j["headers"]["x-empty"], "")
        self.assertEqual(j["headers"]["x-next"], "v")

    def test_connection_close(self):
        s = self.connect()
        status, hdrs, _ = self.request(s, "GET", "/", headers=["Connection: close"])
        self.assertEqual(status, 200)
        self.assertEqual(hdrs.get("connection"), "close")
        assert_eof(self, s)

    def test_bad_request_line(self):
        s = self.connect()
        s.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        status, hdrs, body = read_response(s)
        self.assertEqual(status, 400)
        self.assertEqual(json.loads(body)["code"], "BAD_REQUEST")
        assert_eof(self, s)

    def test_nul_in_path(self):
        s = self.connect()
        status, _, body = self.request(s, "GET", "/a%00b")
        self.assertEqual(status, 400)
        self.assertEqual(json.loads(body)["code"], "BAD_REQUEST")

    def test_oversized_head(self):
        s = self.connect()
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (70 << 10) + b"\r\n\r\n")
        status, _, _ = read_response(s)
        self.assertEqual(status, 431)

    def test_too_many_headers(self):
        s = self.connect()
        status, _, _ = self.request(s, "GET", "/", headers=["X-H%d: v" % i for i in range(80)])
        self.assertEqual(status, 431)

    def test_oversized_body(self):
        s = self.connect()
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (2 << 20))
        status, _, _ = read_response(s)
        self.assertEqual(status, 413)

    def test_slow_answer(self):
        s = self.connect()
        status, _, body = self.request(s, "GET", "/slow")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body), {"slow": True})

    def test_slow_abandoned(self):
        before = self.stats()["abandoned"]
        s = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
        s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.1)  # let the request reach the handler before leaving
        s.close()
        deadline = time.monotonic() + TIMEOUT
        while self.stats()["abandoned"] == before:
            self.assertLess(time.monotonic(), deadline, "abandon callback never ran")
            time.sleep(0.05)
        # The server still answers, and the dropped /slow timer did not answer a freed request.
        time.sleep(0.6)
        self.test_echo_request()

    # --- WebSocket handshake ------------------------------------------------------------------

    # --- streamed answers (gw_http_stream_*) ---------------------------------------------------

    def test_stream_chunked_live(self):
        s = self.connect()
        t0 = time.monotonic()
        s.sendall(b"GET /stream?n=3&ms=400 HTTP/1.1\r\nHost: x\r\n\r\n")
        status, hdrs = read_head(s)
        self.assertEqual(status, 200)
        self.assertEqual(hdrs.get("transfer-encoding"), "chunked")
        self.assertNotIn("content-length", hdrs)
        self.assertEqual(hdrs.get("x-stream"), "yes")
        first = self.read_chunk(s)
        # The first chunk arrives before the stream ends (about 800 ms later).
        self.assertLess(time.monotonic() - t0, 0.6)
        self.assertTrue(first.startswith(b"chunk 0\n"), first)
        self.assertTrue(self.read_chunk(s).startswith(b"chunk 1\n"))
        self.assertTrue(self.read_chunk(s).startswith(b"chunk 2\n"))
        self.assertEqual(self.read_chunk(s), b"")
        self.assertGreater(time.monotonic() - t0, 0.7)
        # Keep-alive: the connection serves the next request.
        status, _, body = self.request(s, "GET", "/after-stream")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["path"], "/after-stream")

    def test_stream_pipelined_request_waits(self):
        s = self.connect()
        s.sendall(b"GET /stream?n=2&ms=200 HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _ = read_head(s)
        self.assertEqual(status, 200)
        self.assertTrue(self.read_chunk(s).startswith(b"chunk 0"))
        self.assertTrue(self.read_chunk(s).startswith(b"chunk 1"))
        self.assertEqual(self.read_chunk(s), b"")
        status, _, body = read_response(s)
        self.assertEqual(json.loads(body)["path"], "/next")

    def test_stream_http10(self):
        s = self.connect()
        s.sendall(b"GET /stream?n=2&size=20 HTTP/1.0\r\n\r\n")
        status, hdrs = read_head(s)
        self.assertEqual(status, 200)
        self.assertNotIn("transfer-encoding", hdrs)
        self.assertEqual(hdrs.get("connection"), "close")
        body = b""
        while True:
            c = s.recv(65536)
            if not c:
                break
            body += c
        self.assertEqual(body, b"chunk 0\n" + b"." * 12 + b"chunk 1\n" + b"." * 12)

    def test_stream_back_pressure(self):
        # 32 MiB paced by the drain callback; the client reads slowly at first.
        s = self.connect()
        n, size = 512, 65536
        s.sendall(b"GET /stream?n=%d&size=%d HTTP/1.1\r\nHost: x\r\n\r\n" % (n, size))
        status, hdrs = read_head(s)
        self.assertEqual(status, 200)
        time.sleep(0.5)
        total = 0
        i = 0
        while True:
            c = self.read_chunk(s)
            if not c:
                break
            self.assertTrue(c.startswith(b"chunk %d\n" % i), c[:20])
            total += len(c)
            i += 1
        self.assertEqual(total, n * size)
        self.assertEqual(i, n)

    def test_stream_abandoned(self):
        before = self.stats()["streams_abandoned"]
        s = self.connect()
        s.sendall(b"GET /stream?n=1000&ms=50 HTTP/1.1\r\nHost: x\r\n\r\n")
        read_head(s)
        self.read_chunk(s)
        s.close()
        deadline = time.monotonic() + TIMEOUT
        while self.stats()["streams_abandoned"] == before:
            self.assertLess(time.monotonic(), deadline, "the stream was not abandoned")
            time.sleep(0.05)

    def test_handshake(self):
        s, hdrs = self.ws_connect(headers=["Sec-WebSocket-Extensions: permessage-deflate"])
        self.assertEqual(hdrs.get("upgrade", "").lower(), "websocket")
        self.assertEqual(hdrs.get("x-echo"), "yes")
        self.assertNotIn("sec-websocket-extensions", hdrs)

    def test_bad_version(self):
        s = self.connect()
        key = base64.b64encode(os.urandom(16)).decode()
        status, _, _ = self.request(s, "GET", "/ws", headers=[
            "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 8",
            "Sec-WebSocket-Key: " + key])
        self.assertIn(status, (400, 426))

    def test_bad_key(self):
        s = self.connect()
        status, _, _ = self.request(s, "GET", "/ws", headers=[
            "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: c2hvcnQ="])
        self.assertEqual(status, 400)

    # --- WebSocket frames ---------------------------------------------------------------------

    def test_text_echo(self):
        s, _ = self.ws_connect()
        for text in (b"hello", b"x" * 200, b"y" * 70000, b""):
            s.sendall(frame(1, text))
            self.assertEqual(recv_message(s), (1, text))

    def test_frames_right_after_head(self):
        s, _ = self.ws_connect(extra=frame(1, b"early") + frame(1, b"bird"))
        self.assertEqual(recv_message(s), (1, b"early"))
        self.assertEqual(recv_message(s), (1, b"bird"))

    def test_fragmented(self):
        s, _ = self.ws_connect()
        s.sendall(frame(1, b"hel", fin=False) + frame(0, b"lo ", fin=False) + frame(9, b"mid")
                  + frame(0, b"world"))
        self.assertEqual(recv_message(s), (10, b"mid"))
        self.assertEqual(recv_message(s), (1, b"hello world"))

    def test_ping_pong(self):
        s, _ = self.ws_connect()
        s.sendall(frame(9, b"abc"))
        self.assertEqual(recv_message(s), (10, b"abc"))

    def test_pause(self):
        s, _ = self.ws_connect()
        t0 = time.monotonic()
        s.sendall(frame(1, b"pause") + frame(1, b"x1") + frame(1, b"x2"))
        self.assertEqual(recv_message(s), (1, b"resumed"))
        self.assertGreater(time.monotonic() - t0, 0.25)
        self.assertEqual(recv_message(s), (1, b"x1"))
        self.assertEqual(recv_message(s), (1, b"x2"))

    def test_queued(self):
        s, _ = self.ws_connect()
        s.sendall(frame(1, b"queued?"))
        op, data = recv_message(s)
        self.assertEqual(op, 1)
        self.assertTrue(data.startswith(b"queued="), data)

    def test_client_close(self):
        before = self.stats()["ws_closed"]
        s, _ = self.ws_connect()
        s.sendall(frame(8, struct.pack("!H", 1000) + b"done"))
        op, data = recv_message(s)
        self.assertEqual(op, 8)
        self.assertEqual(close_code(data), 1000)
        assert_eof(self, s)
        st = self.stats()
        self.assertEqual(st["ws_closed"], before + 1)
        self.assertEqual(st["last_close"], 1000)

    def test_server_close(self):
        s, _ = self.ws_connect()
        s.sendall(frame(1, b"close-me"))
        op, data = recv_message(s)
        self.assertEqual(op, 8)
        self.assertEqual(close_code(data), 4000)
        self.assertEqual(data[2:], b"bye")
        s.sendall(frame(8, data[:2]))
        assert_eof(self, s)

    def test_too_big(self):
        s, _ = self.ws_connect()
        # A text frame announcing 200 MiB, then a little of it.
        s.sendall(struct.pack("!BBQ", 0x81, 0xFF, 200 << 20) + os.urandom(4) + b"x" * 100)
        op, data = recv_message(s)
        self.assertEqual(op, 8)
        self.assertEqual(close_code(data), 1009)
        assert_eof(self, s)
        self.test_text_echo()

    def test_too_big_fragmented(self):
        s, _ = self.ws_connect()
        chunk = 60 << 20  # two frames of 60 MiB: each under the cap, together over it
        s.sendall(struct.pack("!BBQ", 0x02, 0xFF, chunk) + os.urandom(4))  # binary
        s.sendall(b"\0" * chunk)
        s.sendall(struct.pack("!BBQ", 0x80, 0xFF, chunk) + os.urandom(4) + b"x" * 10)
        op, data = recv_message(s)
        self.assertEqual(op, 8)
        self.assertEqual(close_code(data), 1009)

    def test_unmasked(self):
        s, _ = self.ws_connect()
        s.sendall(frame(1, b"naked", mask=False))
        op, data = recv_message(s)
        self.assertEqual(op, 8)
        self.assertEqual(close_code(data), 1002)
        assert_eof(self, s)

    def test_pipelined_answers_not_read(self):
        # A client that pipelines requests and reads none of the answers: the server stops
        # reading it once 256 KiB of answers wait (it read on for ever, holding every answer:
        # 1.1 GB for 519 MB of requests). The kernel's buffers take some MB first.
        s = self.connect()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        req = b"GET /pipelined-and-never-read HTTP/1.1\r\nHost: x\r\n\r\n" * 1000
        sent = send_until_refused(s, req, 256 << 20)
        self.assertLess(sent, 64 << 20, "the server read on: %d bytes" % sent)
        # It is served again once it reads.
        s.settimeout(TIMEOUT)
        status, _, body = read_response(s)
        self.assertEqual(status, 200, body)

    def test_ping_flood_not_read(self):
        # Pings from a client that reads nothing: wslay queues a pong for each, so the server
        # stops reading once 64 wait behind output the client does not take (it read on,
        # 2.3 GB for 179 MB of pings).
        s, _ = self.ws_connect()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sent = send_until_refused(s, frame(9, b"") * 10000, 512 << 20)
        self.assertLess(sent, 128 << 20, "the server read on: %d bytes of pings" % sent)

    def test_close_answer_that_cannot_go_out(self):
        # The client sent its close frame, then reads nothing and trickles bytes: the server's
        # answer waits behind output the client does not take, and the connection ends within
        # WS_CLOSE_MS anyway (it stayed open for as long as the trickle went on).
        s, _ = self.ws_connect()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(frame(1, b"flood"))
        time.sleep(1)  # the flood fills what the socket takes
        s.sendall(frame(8, struct.pack("!H", 1000)))
        t0 = time.monotonic()
        gone = False
        while time.monotonic() - t0 < 15 and not gone:
            try:
                s.sendall(b"x")
            except OSError:
                gone = True
            time.sleep(0.3)
        self.assertTrue(gone, "the connection was still open 15 s after the client's close")
        self.assertLess(time.monotonic() - t0, 10)

    def test_stalled_client(self):
        a, _ = self.ws_connect()
        whole = frame(1, b"z" * 1000)
        a.sendall(whole[:300])  # and never the rest
        b, _ = self.ws_connect()
        b.sendall(frame(1, b"still here"))
        self.assertEqual(recv_message(b), (1, b"still here"))
        a.sendall(whole[300:])
        self.assertEqual(recv_message(a), (1, b"z" * 1000))

    def test_flood_read_slowly(self):
        s, _ = self.ws_connect()
        s.sendall(frame(1, b"flood"))
        size = 64 << 10
        time.sleep(0.5)  # a slow reader: let the server's queue fill past its high mark
        for i in range(320):
            op, data = recv_message(s)
            self.assertEqual(op, 1)
            self.assertEqual(len(data), size)
            self.assertEqual(data[:8], b"%08d" % i)
            want = bytes(ord("a") + (i + j) % 26 for j in range(8, 60))
            self.assertEqual(data[8:60], want)
            self.assertEqual(data[-1], ord("a") + (i + size - 1) % 26)
            if i % 64 == 0:
                time.sleep(0.05)
        op, data = recv_message(s)
        self.assertEqual(op, 1)
        self.assertTrue(data.startswith(b"flood-done drains="), data)
        self.assertGreaterEqual(int(data.split(b"=")[1]), 1)
        # The connection is still usable.
        s.sendall(frame(1, b"after"))
        self.assertEqual(recv_message(s), (1, b"after"))


class TestShutdown(unittest.TestCase):
    """gw_http_close: WebSockets get 1001, unanswered requests are abandoned, the loop ends."""

    def test_sigterm(self):
        proc = subprocess.Popen([echo_binary()], stdout=subprocess.PIPE)
        try:
            port = int(proc.stdout.readline())
            TestHttp.port = port
            t = TestHttp("test_handshake")
            w, _ = TestHttp.ws_connect(t)
            self.addCleanup(w.close)
            w.sendall(frame(1, b"hi"))
            self.assertEqual(recv_message(w), (1, b"hi"))
            slow = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            self.addCleanup(slow.close)
            slow.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            idle = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            self.addCleanup(idle.close)
            time.sleep(0.1)  # the /slow request reaches its handler
            proc.send_signal(signal.SIGTERM)
            op, data = recv_message(w)
            self.assertEqual(op, 8)
            self.assertEqual(close_code(data), 1001)
            w.sendall(frame(8, data[:2]))
            assert_eof(self, w)
            assert_eof(self, slow)
            assert_eof(self, idle)
            self.assertEqual(proc.wait(timeout=30), 0)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()


class OwnServerCase(unittest.TestCase):
    """A gw_http_echo (@FAST: gw_http_echo_fast) per test, which must exit 0 on SIGTERM."""

    FAST = False

    def setUp(self):
        self.proc = subprocess.Popen([echo_binary(self.FAST)], stdout=subprocess.PIPE)
        TestHttp.port = self.port = int(self.proc.stdout.readline())
        self.t = TestHttp("test_handshake")

    def tearDown(self):
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=30)
        self.proc.stdout.close()
        self.assertEqual(rc, 0)

    def conn(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
        self.addCleanup(s.close)
        return s


class TestConnCap(OwnServerCase):
    """GW_HTTP_FRESH_MAX (128): connections that have not sent a whole request share a pool whose
    oldest member goes when it is full, so idle connections cannot lock clients out.
    GW_HTTP_CONNS_MAX (1024): connections that did send one; one more is closed at once, and a
    freed slot is usable again."""

    FRESH = 128
    CAP = 1024


    def test_idle_flood_does_not_lock_out(self):
        idle = [self.conn() for _ in range(self.CAP + 100)]
        s = self.conn()
        status, _, _ = TestHttp.request(self.t, s, "GET", "/after-the-flood")
        self.assertEqual(status, 200)
        # The oldest idle ones were closed to make room; the newest are still there.
        assert_eof(self, idle[0])
        assert_eof(self, idle[-self.FRESH - 2])
        idle[-1].sendall(b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(read_response(idle[-1])[0], 200)

    def test_cap(self):
        conns = []
        for i in range(self.CAP):
            c = self.conn()
            status, _, _ = TestHttp.request(self.t, c, "GET", "/%d" % i)
            self.assertEqual(status, 200)
            conns.append(c)
        extra = self.conn()
        assert_eof(self, extra)
        conns[0].close()
        deadline = time.monotonic() + TIMEOUT
        while True:  # the slot is free once the server has seen the close
            s = socket.create_connection(("127.0.0.1", TestHttp.port), timeout=TIMEOUT)
            try:
                status, _, _ = TestHttp.request(self.t, s, "GET", "/again")
                break
            except (EOFError, ConnectionResetError):
                self.assertLess(time.monotonic(), deadline, "the freed slot never came back")
                time.sleep(0.05)
            finally:
                s.close()
        self.assertEqual(status, 200)


class TestLingerCap(OwnServerCase):
    """gw_http_echo_fast's cap of 64 connections (GW_HTTP_CONNS_MAX): connections answered with
    Connection: close linger up to 2 s for the client's EOF, and a client that never sends it
    kept them all in the cap. At the cap the oldest lingering one goes for the newcomer (which
    used to be closed at once)."""

    CAP = 64
    FAST = True

    def test_lingering_flood_does_not_lock_out(self):
        conns = []
        for i in range(self.CAP):
            c = self.conn()
            c.sendall(b"GET /%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % i)
            conns.append(c)
        for c in conns:  # all answered: lingering
            self.assertEqual(read_response(c)[0], 200)
        s = self.conn()
        s.sendall(b"GET /after-the-lingering HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(read_response(s)[0], 200)


class TestStreamStall(EchoCase):
    """A streamed answer (SSE build logs, progress) whose client reads nothing, on
    gw_http_echo_fast (dead after 800 ms without progress)."""

    FAST = True

    def test_client_that_takes_nothing_is_dropped(self):
        # 64 MiB that the client never reads: once the socket's buffers are full nothing moves,
        # and the stream is abandoned (its handler told) instead of holding on for ever.
        before = self.stats()["streams_abandoned"]
        s = self.connect()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /stream?n=1024&size=65536 HTTP/1.1\r\nHost: x\r\n\r\n")
        deadline = time.monotonic() + TIMEOUT
        while self.stats()["streams_abandoned"] == before:
            self.assertLess(time.monotonic(), deadline, "a client that read nothing was kept")
            time.sleep(0.1)

    def test_slow_reader_is_kept(self):
        # One that reads, however slowly (a chunk every 300 ms, under the 800 ms), gets it all.
        s = self.connect()
        s.sendall(b"GET /stream?n=8&size=65536 HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _ = read_head(s)
        self.assertEqual(status, 200)
        got = 0
        while True:
            time.sleep(0.3)
            c = self.read_chunk(s)
            if not c:
                break
            got += 1
        self.assertEqual(got, 8)


class TestPausedTimers(EchoCase):
    """The dead-peer check while the server does not read (gw_ws_pause), on gw_http_echo_fast
    (ping after 200 ms of silence, dead after 800 ms)."""

    FAST = True

    def recv_answering_pings(self, s):
        """The next data message; pings are answered as a live client's library does."""
        while True:
            op, data = recv_message(s)
            if op == 9:
                s.sendall(frame(10, data))
                continue
            return op, data

    def test_paused_socket_is_not_dead_for_its_silence(self):
        # The server reads nothing for 3 s, nearly four dead-peer periods: the client's pongs,
        # and anything else it sends, wait unread, so its silence is the server's own doing.
        # The server used to drop it as dead 800 ms in.
        s, _ = self.ws_connect()
        s.settimeout(TIMEOUT)
        s.sendall(frame(1, b"pause 3000") + frame(1, b"after"))
        self.assertEqual(self.recv_answering_pings(s), (1, b"resumed"))
        self.assertEqual(self.recv_answering_pings(s), (1, b"after"))
        # Reading again, the clock runs again: a client that answers nothing is dropped.
        s.settimeout(TIMEOUT)
        while True:
            try:
                op, _ = recv_message(s)
            except (EOFError, ConnectionResetError):
                break
            self.assertIn(op, (9, 8))  # unanswered pings, then the end

    def test_paused_socket_whose_peer_takes_nothing_is_dead(self):
        # Paused, and 20 MiB to write that the client never reads: the bytes that wait for it
        # do not move, which is what tells a gone or stuck peer while the server reads nothing.
        before = self.stats()["ws_closed"]
        s, _ = self.ws_connect()
        s.sendall(frame(1, b"pause-flood 60000"))
        deadline = time.monotonic() + TIMEOUT
        while self.stats()["ws_closed"] == before:
            self.assertLess(time.monotonic(), deadline, "a peer that read nothing was kept")
            time.sleep(0.1)


class TestTimers(unittest.TestCase):
    """GW_HTTP_FIRST_MS (10 s), GW_HTTP_IDLE_MS (30 s), GW_WS_PING_MS (20 s), GW_WS_DEAD_MS
    (60 s): about a minute."""

    def test_idle_ping_dead(self):
        proc = subprocess.Popen([echo_binary()], stdout=subprocess.PIPE)
        try:
            TestHttp.port = int(proc.stdout.readline())
            t = TestHttp("test_handshake")
            first = TestHttp.connect(t)  # never finishes its first request
            first.sendall(b"GET / HTTP/1.1\r\nHost")
            partial = TestHttp.connect(t)  # one request answered, then half of a second
            self.assertEqual(TestHttp.request(t, partial, "GET", "/one")[0], 200)
            partial.sendall(b"GET / HTTP/1.1\r\nHost")
            quiet, _ = TestHttp.ws_connect(t)  # never answers a ping
            lively, _ = TestHttp.ws_connect(t)
            for sock in (first, partial, quiet, lively):
                self.addCleanup(sock.close)
                sock.settimeout(75)
            t0 = time.monotonic()
            self.assertEqual(first.recv(1), b"")
            self.assertGreater(time.monotonic() - t0, 8)
            self.assertLess(time.monotonic() - t0, 20)
            op, data = recv_message(lively)
            self.assertEqual(op, 9)
            self.assertGreater(time.monotonic() - t0, 15)
            lively.sendall(frame(10, data))
            self.assertEqual(partial.recv(1), b"")  # the stalled request is dropped
            self.assertGreater(time.monotonic() - t0, 25)
            self.assertEqual(recv_message(quiet)[0], 9)
            with self.assertRaises(EOFError):
                recv_message(quiet)  # closed without a close frame (1006)
            self.assertGreater(time.monotonic() - t0, 55)
            lively.sendall(frame(1, b"alive"))
            while True:
                op, data = recv_message(lively)
                if op != 9:
                    break
                lively.sendall(frame(10, data))
            self.assertEqual((op, data), (1, b"alive"))
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=30)
            proc.stdout.close()
        self.assertEqual(rc, 0)


if __name__ == "__main__":
    unittest.main()
