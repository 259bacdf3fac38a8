"""The HTTP ingress of sbx-gateway (gateway/ingress.c, gsock.c): POST expose/http + exposeHttp,
then requests to --http-listen routed by Host into the sandbox through the agent's net.connect.

The addr backend (a root sbx-agent on this machine) is the "guest": a Python HTTP server started
here on 127.0.0.1 is reached by the gateway only through net.connect on its link. Raw sockets
drive the ingress (unknown hosts, bad heads, big bodies byte-exact, keep-alive, half-close, a
server closing mid-response, a slowloris head, 100 concurrent requests), a restart of the
gateway keeps the mappings, and a real SDK program (sdk/expose_http.ts) exposes a port and a
deno.run pid.

    SBX_BUILD=/path/to/build python3 tests/gateway/test_ingress.py [-v] [Class[.test]]
"""
import base64
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sdkharness as h  # noqa: E402

# The guest's HTTP server: deterministic bodies, an echo digest, a response cut short.
SERVER = r'''
import hashlib, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

def pattern(n):
    block = hashlib.sha256(b"sbx-ingress").digest() * 2048   # 64 KiB
    full, rest = divmod(n, len(block))
    return block, full, rest

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def do_GET(self):
        if self.path.startswith("/big/"):
            n = int(self.path[5:])
            block, full, rest = pattern(n)
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            for _ in range(full):
                self.wfile.write(block)
            self.wfile.write(block[:rest])
            return
        if self.path == "/partial":
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            self.wfile.write(b"p" * 100000)
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        body = ("hello from the guest %s host=%s\n" % (self.path, self.headers.get("host"))).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        d = hashlib.sha256()
        left = n
        while left > 0:
            b = self.rfile.read(min(left, 1 << 16))
            if not b:
                break
            d.update(b)
            left -= len(b)
        body = ("%d %s\n" % (n - left, d.hexdigest())).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer.request_queue_size = 256
srv = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
print("ready", flush=True)
srv.serve_forever()
'''


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def refused_port(case):
    """A port on 127.0.0.1 that refuses connections for the whole test: bound, never listening,
    so no test running beside this one can start listening there."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    case.addCleanup(s.close)
    return s.getsockname()[1]


def big_digest(n):
    block = hashlib.sha256(b"sbx-ingress").digest() * 2048
    d = hashlib.sha256()
    full, rest = divmod(n, len(block))
    for _ in range(full):
        d.update(block)
    d.update(block[:rest])
    return d.hexdigest()


class GuestServer:
    """The Python server above on 127.0.0.1:port (a child of this test: the addr backend's guest
    is this machine)."""

    def __init__(self, port=None):
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="sbxgw-ig-srv-")
        path = os.path.join(self.dir, "srv.py")
        with open(path, "w") as f:
            f.write(SERVER)
        self.proc = subprocess.Popen([sys.executable, path, str(self.port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        line = self.proc.stdout.readline()
        if b"ready" not in line:
            raise RuntimeError("guest server did not start")

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()


class RawGuest(h.RawServer):
    """A guest server that answers as @answer(head) says (bytes, or None to say nothing, or
    (bytes, True) to close the connection after them) for each request head it reads, never
    closes a connection first otherwise, and keeps every byte it got (self.got) for the test to
    look at."""

    def __init__(self, answer):
        self.answer = answer
        self.got = bytearray()
        self.lock = threading.Lock()
        super().__init__(self._serve)

    def _serve(self, c):
        buf = b""
        while True:
            b = c.recv(65536)
            if not b:
                return
            with self.lock:
                self.got += b
            buf += b
            while b"\r\n\r\n" in buf:
                head, _, buf = buf.partition(b"\r\n\r\n")
                out = self.answer(head)
                close = isinstance(out, tuple)
                if close:
                    out = out[0]
                if out:
                    c.sendall(out)
                if close:
                    c.shutdown(socket.SHUT_RDWR)
                    return


def recv_until_eof(s, timeout=60):
    s.settimeout(timeout)
    out = bytearray()
    while True:
        b = s.recv(1 << 20)
        if not b:
            return bytes(out)
        out += b


def recv_exactly(s, n, timeout=30):
    s.settimeout(timeout)
    out = bytearray()
    while len(out) < n:
        b = s.recv(n - len(out))
        if not b:
            break
        out += b
    return bytes(out)


def read_response(f):
    """One HTTP/1.1 response with Content-Length from file object @f: (status, headers, body)."""
    line = f.readline()
    if not line:
        raise EOFError("connection closed before a response")
    status = int(line.split()[1])
    hdrs = {}
    while True:
        ln = f.readline()
        if ln in (b"\r\n", b"\n", b""):
            break
        k, _, v = ln.decode("latin-1").partition(":")
        hdrs[k.strip().lower()] = v.strip()
    n = int(hdrs.get("content-length", "0"))
    body = f.read(n) if n else b""
    return status, hdrs, body


class IngressCase(unittest.TestCase):
    """A fresh agent and gateway (--http-listen 127.0.0.1:0) per test; one workload user per
    class. self.ig_port is the ingress's port (from its log line)."""

    with_deno = False

    @classmethod
    def setUpClass(cls):
        h.cache_deps()
        cls.user = h.WorkloadUser()

    @classmethod
    def tearDownClass(cls):
        cls.user.close()

    def setUp(self):
        self.agent = h.start_agent(with_deno=self.with_deno)
        self.servers = []
        self.wss = []
        try:
            self.gw = self.start_gateway()
        except BaseException:
            self.agent.stop()
            raise

    def start_gateway(self, data=None, ingress=True, more=()):
        extra = (["--http-listen", "127.0.0.1:0"] if ingress else []) + list(more)
        gw = h.Gateway(backend="addr:" + self.agent.addr, user=self.user.name,
                       cwd=self.user.home, extra=extra, data=data)
        if ingress:
            # The log is appended to across restarts on one data dir: the last line is ours.
            m = re.findall(r"ingress on 127\.0\.0\.1:(\d+)", gw.logtext())
            if not m:
                gw.stop()
                raise RuntimeError("no 'ingress on' line in the log:\n" + gw.logtext())
            self.ig_port = int(m[-1])
        return gw

    def tearDown(self):
        for ws in self.wss:
            ws.close()
        for s in self.servers:
            s.stop()
        alive = self.gw.alive()
        log = self.gw.logtext()
        rc = self.gw.stop()
        self.agent.stop()
        self.assertTrue(alive, "sbx-gateway died during the test:\n" + log[-4000:])
        self.assertIn(rc, (0, -15), "exit status %s on SIGTERM:\n%s" % (rc, log[-4000:]))
        for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            self.assertNotIn(bad, log, log[-6000:])

    # --- helpers ---

    def server(self, port=None):
        s = GuestServer(port)
        self.servers.append(s)
        return s

    def sandbox(self, gw=None):
        """A duration sandbox (outlives its WebSocket) and a raw session on it: (id, ws)."""
        gw = gw or self.gw
        ws = h.open_create_ws(gw, {"stop_at_ms": int(time.time() * 1000) + 600000})
        self.wss.append(ws)
        return ws.headers["x-deno-sandbox-id"], ws

    def expose(self, sid, ws, port=None, pid=None, gw=None):
        gw = gw or self.gw
        domain = gw.rest("POST", "/api/v3/sandbox/%s/expose/http" % sid, {})["domain"]
        params = {"domain": domain}
        if port is not None:
            params["port"] = port
        if pid is not None:
            params["pid"] = pid
        r = ws.call("exposeHttp", params)
        self.assertEqual(r["result"], {"ok": None}, r)
        return domain

    def request(self, domain, path="/", method="GET", body=None, timeout=60, port=None):
        """One request on a new connection (Connection: close): (status, headers, body)."""
        s = socket.create_connection(("127.0.0.1", port or self.ig_port), timeout=timeout)
        try:
            head = "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n" % (method, path, domain)
            if body is not None:
                head += "Content-Length: %d\r\n" % len(body)
            s.sendall(head.encode() + b"\r\n" + (body or b""))
            f = s.makefile("rb")
            return read_response(f)
        finally:
            s.close()

    def raw(self, data, timeout=30):
        s = socket.create_connection(("127.0.0.1", self.ig_port), timeout=timeout)
        try:
            s.sendall(data)
            return recv_until_eof(s, timeout)
        finally:
            s.close()


class TestIngress(IngressCase):
    def test_unknown_host_404(self):
        out = self.raw(b"GET / HTTP/1.1\r\nHost: nobody-here.sbx.localhost:8080\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 404 "), out)
        self.assertIn(b"nobody-here.sbx.localhost", out)

    def test_bad_heads(self):
        out = self.raw(b"GET / HTTP/1.1\r\nX: y\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 400 "), out)
        self.assertIn(b"no Host", out)
        out = self.raw(b"NOT HTTP AT ALL\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 400 "), out)
        out = self.raw(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 400 "), out)
        out = self.raw(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * (70 << 10) + b"\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 431 "), out)
        # An address or junk as Host: 404 without echoing it.
        out = self.raw(b"GET / HTTP/1.1\r\nHost: <script>\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 404 "), out)
        self.assertNotIn(b"<script>", out)

    def test_expose_port_keepalive(self):
        srv = self.server()
        sid, ws = self.sandbox()
        domain = self.expose(sid, ws, port=srv.port)
        self.assertTrue(domain.endswith(".sbx.localhost"), domain)
        self.assertRegex(domain.split(".")[0], r"^[0-9a-z]{20}-[0-9a-z]{8}$")
        self.assertIn(sid.split("_")[-1], domain)
        # Host matching: case and port do not matter.
        st, _, body = self.request(domain.upper() + ":" + str(self.ig_port), "/x")
        self.assertEqual(st, 200, body)
        self.assertIn(b"hello from the guest /x", body)
        # Keep-alive: several requests on one connection, pipelined too.
        s = socket.create_connection(("127.0.0.1", self.ig_port), timeout=30)
        f = s.makefile("rb")
        for i in range(5):
            s.sendall(("GET /k%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (i, domain)).encode())
            st, _, body = read_response(f)
            self.assertEqual((st, body.split()[4]), (200, b"/k%d" % i))
        s.sendall(b"".join(("GET /p%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (i, domain)).encode()
                           for i in range(3)))
        for i in range(3):
            st, _, body = read_response(f)
            self.assertIn(b"/p%d" % i, body)
        s.close()

    def test_expose_errors(self):
        sid, ws = self.sandbox()
        r = ws.call("exposeHttp", {"domain": "nope.sbx.localhost", "port": 80})
        self.assertEqual(r["result"]["error"]["constructorName"], "NotFound", r)
        self.assertIn("not handed out", r["result"]["error"]["message"])
        domain = self.gw.rest("POST", "/api/v3/sandbox/%s/expose/http" % sid, {})["domain"]
        for bad in ({"domain": domain}, {"domain": domain, "port": 0},
                    {"domain": domain, "port": 70000}, {"domain": domain, "port": "80"},
                    {"domain": domain, "port": 80, "pid": 1}, {"port": 80}):
            r = ws.call("exposeHttp", bad)
            self.assertEqual(r["result"]["error"]["constructorName"], "TypeError", (bad, r))
        # Handed out, not mapped yet: 404 naming exposeHttp.
        st, _, body = self.request(domain)
        self.assertEqual(st, 404, body)
        self.assertIn(b"exposeHttp", body)
        # Another sandbox cannot map this sandbox's domain.
        sid2, ws2 = self.sandbox()
        r = ws2.call("exposeHttp", {"domain": domain, "port": 80})
        self.assertEqual(r["result"]["error"]["constructorName"], "NotFound", r)
        # The Python SDK's body {port} maps at once.
        srv = self.server()
        d2 = self.gw.rest("POST", "/api/v3/sandbox/%s/expose/http" % sid2,
                          {"port": srv.port})["domain"]
        self.assertEqual(self.request(d2)[0], 200)

    def test_mapping_before_listen(self):
        port = free_port()
        sid, ws = self.sandbox()
        domain = self.expose(sid, ws, port=port)
        st, _, body = self.request(domain)
        self.assertEqual(st, 502, body)
        self.assertIn(b"ECONNREFUSED", body)
        self.server(port)
        st, _, body = self.request(domain)
        self.assertEqual(st, 200, body)

    def test_link_idle_reopen(self):
        """The gateway's agent link closes when idle (GW_LINK_IDLE_MS); the next connection
        opens a new one."""
        srv = self.server()
        sid, ws = self.sandbox()
        domain = self.expose(sid, ws, port=srv.port)
        self.assertEqual(self.request(domain)[0], 200)
        time.sleep(11)
        st, _, body = self.request(domain)
        self.assertEqual(st, 200, body)

    def test_concurrent_100(self):
        srv = self.server()
        sid, ws = self.sandbox()
        domain = self.expose(sid, ws, port=srv.port)
        results = [None] * 100

        def one(i):
            try:
                results[i] = self.request(domain, "/c%d" % i)
            except Exception as e:  # noqa: BLE001 - reported below
                results[i] = e

        t0 = time.monotonic()
        ts = [threading.Thread(target=one, args=(i,)) for i in range(100)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        h.note("100 concurrent requests in %.2fs" % (time.monotonic() - t0))
        for i, r in enumerate(results):
            self.assertIsInstance(r, tuple, r)
            self.assertEqual(r[0], 200, r)
            self.assertIn(b"/c%d " % i, r[2])

    def test_big_response_64mib(self):
        srv = self.server()
        sid, ws = self.sandbox()
        domain = self.expose(sid, ws, port=srv.port)
        n = 64 << 20
        s = socket.create_connection(("127.0.0.1", self.ig_port), timeout=120)
        s.sendall(("GET /big/%d HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                   % (n, domain)).encode())
        t0 = time.monotonic()
        f = s.makefile("rb")
        st, hdrs, _ = read_response_head(f)
        self.assertEqual(st, 200)
        d = hashlib.sha256()
        got = 0
        while got < n:
            b = f.read(min(1 << 20, n - got))
            if not b:
                break
            d.update(b)
            got += len(b)
        dt = time.monotonic() - t0
        s.close()
        h.note("64 MiB response in %.2fs (%.0f MiB/s)" % (dt, 64 / dt))
        self.assertEqual(got, n)
        self.assertEqual(d.hexdigest(), big_digest(n))

    def test_slow_reader_backpressure(self):
        """A client that does not read holds the guest at the agent's window: the gateway's
        memory does not grow with the response."""
        srv = self.server()
        sid, ws = self.sandbox()
        domain = self.expose(sid, ws, port=srv.port)
        n = 64 << 20
        rss0 = rss_kib(self.gw.proc.pid)
        s = socket.create_connection(("127.0.0.1", self.ig_port), timeout=120)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        s.sendall(("GET /big/%d HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                   % (n, domain)).encode())
        time.sleep(3)
        grown = rss_kib(self.gw.proc.pid) - rss0
        h.note("gateway RSS grew %d KiB with a 64 MiB response unread" % grown)
        self.assertLess(grown, 24 << 10)
        f = s.makefile("rb")
        st, _, _ = read_response_head(f)
        self.assertEqual(st, 200)
        d = hashlib.sha256()
        got = 0
        while got < n:
            b = f.read(min(1 << 20, n - got))
            if not b:
                break
            d.update(b)
            got += len(b)
        s.close()
        self.assertEqual((got, d.hexdigest()), (n, big_digest(n)))

    def test_post_16mib(self):
        srv = self.server()
        sid, ws = self.sandbox()
        domain = self.expose(sid, ws, port=srv.port)
        body = os.urandom(16 << 20)
        t0 = time.monotonic()
        st, _, out = self.request(domain, "/up", "POST", body, timeout=120)
        h.note("16 MiB POST in %.2fs" % (time.monotonic() - t0))
        self.assertEqual(st, 200, out)
        self.assertEqual(out.decode().split(), [str(len(body)), hashlib.sha256(body).hexdigest()])

    def test_client_half_close(self):
        srv = self.server()
        sid, ws = self.sandbox()
        domain = self.expose(sid, ws, port=srv.port)
        s = socket.create_connection(("127.0.0.1", self.ig_port), timeout=30)
        s.sendall(("GET /half HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                   % domain).encode())
        s.shutdown(socket.SHUT_WR)
        out = recv_until_eof(s, 30)
        s.close()
        self.assertTrue(out.startswith(b"HTTP/1.1 200"), out)
        self.assertIn(b"hello from the guest /half", out)

    def test_server_closes_mid_response(self):
        srv = self.server()
        sid, ws = self.sandbox()
        domain = self.expose(sid, ws, port=srv.port)
        s = socket.create_connection(("127.0.0.1", self.ig_port), timeout=30)
        s.sendall(("GET /partial HTTP/1.1\r\nHost: %s\r\n\r\n" % domain).encode())
        out = recv_until_eof(s, 30)  # must end (EOF), not hang
        s.close()
        head, _, body = out.partition(b"\r\n\r\n")
        self.assertIn(b"Content-Length: 1000000", head)
        self.assertEqual(body, b"p" * 100000)

    def test_slowloris_head(self):
        s = socket.create_connection(("127.0.0.1", self.ig_port), timeout=30)
        s.sendall(b"GET / HTTP/1.1\r\nHost: slow")
        t0 = time.monotonic()
        # Others are served meanwhile.
        out = self.raw(b"GET / HTTP/1.1\r\nHost: other.sbx.localhost\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 404"), out)
        out = recv_until_eof(s, 30)
        dt = time.monotonic() - t0
        s.close()
        self.assertTrue(out.startswith(b"HTTP/1.1 408"), out)
        self.assertGreater(dt, 8)
        self.assertLess(dt, 15)

    def restart_with(self, *flags):
        """The gateway again, with @flags: (sid, ws) of a new sandbox on it."""
        self.gw.stop()
        self.gw = self.start_gateway(more=flags)
        return self.sandbox()

    def quiet_conn(self, domain, g, path="/quiet"):
        """A connection whose request went through to the guest @g (a RawGuest), which says
        nothing back: a relay that moves no byte from now on."""
        s = socket.create_connection(("127.0.0.1", self.ig_port), timeout=30)
        want = bytes(g.got).count(path.encode()) + 1
        s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, domain)).encode())
        deadline = time.monotonic() + 30
        while bytes(g.got).count(path.encode()) < want:
            self.assertLess(time.monotonic(), deadline, "the request never reached the guest")
            time.sleep(0.02)
        return s

    def test_idle_relay_closed(self):
        """--ingress-idle-timeout: a relayed connection that moves no byte either way for that
        long is closed; one whose requests keep coming is not, however long it lives."""
        sid, ws = self.restart_with("--ingress-idle-timeout", "2s")
        one = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"
        g = self.raw_guest(lambda head: None if b"/quiet" in head else one)
        domain = self.expose(sid, ws, port=g.port)
        t0 = time.monotonic()
        s = self.quiet_conn(domain, g)
        busy = socket.create_connection(("127.0.0.1", self.ig_port), timeout=30)
        f = busy.makefile("rb")
        for _ in range(5):  # 5 s of requests 1 s apart
            busy.sendall(("GET /a HTTP/1.1\r\nHost: %s\r\n\r\n" % domain).encode())
            self.assertEqual(read_response(f)[2], b"one")
            time.sleep(1)
        self.assertEqual(recv_until_eof(s, 30), b"")
        dt = time.monotonic() - t0
        s.close()
        self.assertGreater(dt, 1.5)
        self.assertLess(dt, 20)
        busy.sendall(("GET /a HTTP/1.1\r\nHost: %s\r\n\r\n" % domain).encode())
        self.assertEqual(read_response(f)[2], b"one")
        busy.close()

    def test_max_conns_closes_the_idlest(self):
        """At --ingress-max-conns open connections a new one is served: the connection idle
        longest is closed for it, not the newcomer (quiet connections held open cannot lock
        clients out), and the others go on."""
        sid, ws = self.restart_with("--ingress-max-conns", "3")
        one = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"
        g = self.raw_guest(lambda head: None if b"/quiet" in head else one)
        domain = self.expose(sid, ws, port=g.port)
        srv = self.server()
        other = self.expose(sid, ws, port=srv.port)
        held = []
        for _ in range(3):
            held.append(self.quiet_conn(domain, g))
            time.sleep(0.3)
        # The second is the newest to move now: the first is the idlest.
        held[1].sendall(("GET /a HTTP/1.1\r\nHost: %s\r\n\r\n" % domain).encode())
        self.assertEqual(recv_exactly(held[1], len(one) * 1), one)
        st, _, body = self.request(other, "/new")
        self.assertEqual(st, 200, body)
        self.assertIn(b"hello from the guest /new", body)
        self.assertEqual(recv_until_eof(held[0], 30), b"")
        for s in held[1:]:
            s.sendall(("GET /a HTTP/1.1\r\nHost: %s\r\n\r\n" % domain).encode())
        self.assertEqual(recv_exactly(held[1], len(one)), one)
        # held[2] had no answer to its first request: this one answers that.
        self.assertEqual(recv_exactly(held[2], len(one)), one)
        for s in held:
            s.close()
        self.assertIn("closed the one idle longest", self.gw.logtext())

    def test_restart_keeps_mappings(self):
        srv = self.server()
        sid, ws = self.sandbox()
        domain = self.expose(sid, ws, port=srv.port)
        self.assertEqual(self.request(domain)[0], 200)
        ws.close()
        self.wss.remove(ws)
        with open(os.path.join(self.gw.data, "expose.json")) as f:
            saved = json.load(f)
        self.assertIn(domain, [d["domain"] for d in saved["domains"]])
        self.assertEqual(self.gw.stop(keep_data=True), 0)
        self.gw = self.start_gateway(data=self.gw.data)
        st, _, body = self.request(domain)
        self.assertEqual(st, 200, body + self.gw.logtext().encode()[-3000:])

    def test_gone_sandbox(self):
        srv = self.server()
        sid, ws = self.sandbox()
        domain = self.expose(sid, ws, port=srv.port)
        self.assertEqual(self.request(domain)[0], 200)
        # A connection relaying when the sandbox stops is closed.
        s = socket.create_connection(("127.0.0.1", self.ig_port), timeout=30)
        s.sendall(("GET /a HTTP/1.1\r\nHost: %s\r\n\r\n" % domain).encode())
        f = s.makefile("rb")
        self.assertEqual(read_response(f)[0], 200)
        self.gw.rest("DELETE", "/api/v3/sandbox/%s" % sid)
        self.assertEqual(recv_until_eof(s, 30), b"")
        s.close()
        st, _, body = self.request(domain)
        self.assertEqual(st, 502, body)
        self.assertIn(b"not running", body)
        # A sandbox the gateway no longer knows (a restart without it): 404 and pruned.
        self.assertEqual(self.gw.stop(keep_data=True), 0)
        os.unlink(os.path.join(self.gw.data, "sandboxes", sid + ".json"))
        self.gw = self.start_gateway(data=self.gw.data)
        st, _, body = self.request(domain)
        self.assertEqual(st, 404, body)
        with open(os.path.join(self.gw.data, "expose.json")) as f:
            self.assertEqual(json.load(f)["domains"], [])

    def test_keepalive_other_host_not_relayed(self):
        """A connection is routed by its first request's Host. A later request on it for another
        domain (a proxy in front reuses its upstream connections for every domain) must not
        reach the first sandbox: the client gets the answers before it, then EOF."""
        srv = self.server()
        sid, ws = self.sandbox()
        domain = self.expose(sid, ws, port=srv.port)
        sid2, ws2 = self.sandbox()
        other = self.expose(sid2, ws2, port=refused_port(self))
        s = socket.create_connection(("127.0.0.1", self.ig_port), timeout=30)
        f = s.makefile("rb")
        s.sendall(("GET /one HTTP/1.1\r\nHost: %s\r\n\r\n" % domain).encode())
        st, _, body = read_response(f)
        self.assertEqual(st, 200, body)
        # Same domain (case, port, a head split in pieces): still relayed.
        head = "GET /two HTTP/1.1\r\nHo" + "st: %s:%d\r\n\r\n" % (domain.upper(), self.ig_port)
        for part in (head[:20], head[20:24], head[24:]):
            s.sendall(part.encode())
            time.sleep(0.05)
        st, _, body = read_response(f)
        self.assertIn(b"/two", body)
        # Another sandbox's domain: not answered by this sandbox's server.
        s.sendall(("GET /three HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                   % other).encode())
        rest = recv_until_eof(s, 30)
        self.assertEqual(rest, b"")
        s.close()
        # Pipelined in one write: the first answered, the rest refused, whatever follows.
        s = socket.create_connection(("127.0.0.1", self.ig_port), timeout=30)
        s.sendall(("GET /p1 HTTP/1.1\r\nHost: %s\r\n\r\n"
                   "POST /p2 HTTP/1.1\r\nHost: %s\r\nContent-Length: 5\r\n\r\nhello"
                   "GET /p3 HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                   "GET /p4 HTTP/1.1\r\nHost: %s\r\n\r\n" % (domain, domain, other, domain)).encode())
        out = recv_until_eof(s, 30)
        s.close()
        self.assertIn(b"/p1 ", out)
        self.assertIn(b"\r\n\r\n5 ", out)  # the POST's echo: "5 <sha256>"
        self.assertNotIn(b"/p3", out)
        self.assertNotIn(b"/p4", out)
        self.assertEqual(out.count(b"HTTP/1.1 200"), 2, out)
        # A later request without Host, or with two: refused too.
        for bad in ("GET /n HTTP/1.1\r\nConnection: close\r\n\r\n",
                    "GET /n HTTP/1.1\r\nHost: %s\r\nHost: %s\r\nConnection: close\r\n\r\n"
                    % (domain, other)):
            s = socket.create_connection(("127.0.0.1", self.ig_port), timeout=30)
            s.sendall(("GET /ok HTTP/1.1\r\nHost: %s\r\n\r\n" % domain + bad).encode())
            out = recv_until_eof(s, 30)
            s.close()
            self.assertEqual(out.count(b"HTTP/1.1 200"), 1, out)
            self.assertNotIn(b"/n ", out)
        # The other domain on a connection of its own is routed to its sandbox (502: nothing
        # listens there).
        self.assertEqual(self.request(other)[0], 502)

    def raw_guest(self, answer):
        g = RawGuest(answer)
        self.servers.append(g)
        return g

    def test_guest_answers_only_what_was_asked(self):
        """The guest is the workload's: an answer it sends to a request it was never sent (a
        proxy in front would take it for the answer to its next request on the connection, for
        another domain) does not reach the client; the client gets EOF there, though the guest
        keeps its connection open."""
        forged = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nFORGED"
        one = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"
        g = self.raw_guest(lambda head: one + forged)
        sid, ws = self.sandbox()
        domain = self.expose(sid, ws, port=g.port)
        sid2, ws2 = self.sandbox()
        other = self.expose(sid2, ws2, port=free_port())
        # One request, then the next for another domain once the answer came.
        s = socket.create_connection(("127.0.0.1", self.ig_port), timeout=30)
        s.sendall(("GET /a HTTP/1.1\r\nHost: %s\r\n\r\n" % domain).encode())
        f = s.makefile("rb")
        self.assertEqual(read_response(f)[2], b"one")
        try:
            s.sendall(("GET /b HTTP/1.1\r\nHost: %s\r\n\r\n" % other).encode())
        except OSError:
            pass  # already closed: as good
        self.assertEqual(f.read(), b"")
        s.close()
        # Pipelined, and ahead of any answer: the answer to the first, then EOF.
        s = socket.create_connection(("127.0.0.1", self.ig_port), timeout=30)
        s.sendall(("GET /c HTTP/1.1\r\nHost: %s\r\n\r\nGET /d HTTP/1.1\r\nHost: %s\r\n\r\n"
                   % (domain, other)).encode())
        self.assertEqual(recv_until_eof(s, 30), one)
        s.close()
        self.assertNotIn(other.encode(), bytes(g.got))
        # Not HTTP at all: nothing of it reaches the client.
        g.answer = lambda head: b"SSH-2.0-not-http\r\n"
        self.assertEqual(self.raw(("GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % domain).encode()),
                         b"")

    def test_guest_framing_is_what_the_relay_read(self):
        """A proxy in front must read the guest's answers as the relay did: a 204 (or 304, 1xx)
        ends at its head whatever its Content-Length says, so bytes behind it are an answer to
        nothing; a chunked body goes out in chunks of the relay's own (extensions, a bare LF in
        one, trailers gone); framing two parsers may read apart (two lengths, a length and a
        Transfer-Encoding, a Transfer-Encoding not just "chunked"; a CR not followed by LF or a
        folded line in the head) is not passed on at all."""
        hidden = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        answers = {
            b"/204": b"HTTP/1.1 204 No Content\r\nContent-Length: 38\r\n\r\n" + hidden,
            b"/100": b"HTTP/1.1 100 Continue\r\nContent-Length: 38\r\n\r\n" + hidden
                     + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            b"/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello"
                         b"\r\n0;x\n\nHTTP/1.1 204 No Content\r\nX: y\r\n\r\n",
            b"/gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            b"/both": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
                      b"0\r\n\r\n",
            b"/two": b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            b"/crlf": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\r\n",
            b"/blank": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked  \r\n\r\n2\r\nok\r\n0\r\n\r\n",
            # http-parser takes any byte after a status line's CR, or the head's last CR, for
            # the LF; a proxy may end the line (and so the head) elsewhere
            b"/barecr": b"HTTP/1.1 200 OK\rContent-Length: 0\r\n\r\n" + hidden,
            b"/lastcr": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\rX" + hidden,
            b"/fold": b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n" + hidden,
            b"/barelf": b"HTTP/1.1 200 OK\r\nX: a\nContent-Length: 0\r\n\r\n" + hidden,
            b"/clspace": b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n" + hidden,
            b"/te10": b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + hidden,
            # a 1xx goes out whole though the head behind it in the same read is refused
            b"/1xx": b"HTTP/1.1 100 Continue\r\n\r\nXYZ",
            # empty lines before an answer are dropped, as between answers
            b"/lead": b"\r\n\rHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        }
        g = self.raw_guest(lambda head: answers[head.split(b" ")[1]])
        sid, ws = self.sandbox()
        domain = self.expose(sid, ws, port=g.port)
        sid2, ws2 = self.sandbox()
        other = self.expose(sid2, ws2, port=free_port())
        want = {
            b"/204": b"HTTP/1.1 204 No Content\r\nContent-Length: 38\r\n\r\n",
            # the 1xx ends at its head: what follows is the final answer, then nothing more
            b"/100": b"HTTP/1.1 100 Continue\r\nContent-Length: 38\r\n\r\n" + hidden,
            b"/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
                         b"0\r\n\r\n",
            b"/gzip": b"", b"/both": b"", b"/two": b"",
            b"/crlf": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            # spaces after "chunked" are the header's, not another coding
            b"/blank": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked  \r\n\r\n2\r\nok\r\n0\r\n\r\n",
            b"/barecr": b"", b"/lastcr": b"", b"/fold": b"", b"/barelf": b"", b"/clspace": b"",
            b"/te10": b"",
            b"/1xx": b"HTTP/1.1 100 Continue\r\n\r\n",
            b"/lead": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        }
        for path, out in want.items():
            # The request, then one for another domain at once (a proxy reusing the connection).
            s = socket.create_connection(("127.0.0.1", self.ig_port), timeout=30)
            s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\n\r\nGET /x HTTP/1.1\r\nHost: %s\r\n\r\n"
                       % (path.decode(), domain, other)).encode())
            self.assertEqual(recv_until_eof(s, 30), out, path)
            s.close()
        # An empty line after an answer on a connection kept alive is not taken for an answer.
        s = socket.create_connection(("127.0.0.1", self.ig_port), timeout=30)
        f = s.makefile("rb")
        s.sendall(("GET /crlf HTTP/1.1\r\nHost: %s\r\n\r\n" % domain).encode())
        self.assertEqual(read_response(f)[2], b"ok")
        time.sleep(0.2)
        s.sendall(("GET /crlf HTTP/1.1\r\nHost: %s\r\n\r\n" % domain).encode())
        self.assertEqual(read_response(f)[2], b"ok")
        s.close()

    def test_client_framing_is_what_the_relay_read(self):
        """A proxy in front that passes a request on as it came must end it where the relay does,
        or the proxy's next request on the connection, for any domain, reaches this guest as a
        body. http-parser (as Debian builds it) reads more than the canonical form, so the relay
        takes only that: framing headers read one way (no two lengths, no length with chunked,
        no Transfer-Encoding but chunked), heads whose lines end in CRLF and are not folded,
        chunked bodies in RFC 9112's form. A first request otherwise is a 400; a later one, or a
        body, is not sent on: the client gets the answers before it, then EOF."""
        def answer(head):
            if not head.split(b"\r\n")[0].endswith(b"HTTP/1.1"):
                return None  # a chunked body's bytes
            return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        g = self.raw_guest(answer)
        sid, ws = self.sandbox()
        domain = self.expose(sid, ws, port=g.port)
        ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        post = "POST /%s HTTP/1.1\r\nHost: %s\r\n"
        heads = {
            "gzip": post + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            "cr": post + "X: a\rContent-Length: 3\r\n\r\nabc",
            "fold": post + "X: a\r\n b\r\nContent-Length: 3\r\n\r\nabc",
            "lastcr": post + "Content-Length: 3\r\n\rXabc",
            # http-parser takes "Content-Length :" for Content-Length, a proxy may not
            "clspace": post + "Content-Length : 3\r\n\r\nabc",
            "tespace": post + "Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
            # a proxy may replace a bare LF with a space (RFC 9112 2.2)
            "barelf": post + "X: a\nContent-Length: 3\r\n\r\nabc",
            # chunked means nothing in HTTP/1.0 (RFC 9112 6.1)
            "te10": "POST /%s HTTP/1.0\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "0\r\n\r\n",
            # a CONNECT has no content; http-parser tunnels what a proxy may read as a body
            "connect": "CONNECT /%s HTTP/1.1\r\nHost: %s\r\nContent-Length: 3\r\n\r\nabc",
            # only the H of the version is checked by http-parser
            "hver": "POST /%s H\r\nX/1.1\r\nHost: %s\r\nContent-Length: 3\r\n\r\nabc",
        }
        for name, fmt in heads.items():
            before = len(g.got)
            req = fmt % (name, domain)
            # First on its connection: answered 400 by the gateway, nothing to the guest. (A
            # first head ends only at an LF, so "lastcr" waits there: see test_slowloris_head.)
            if name != "lastcr":
                out = self.raw(req.encode())
                self.assertTrue(out.startswith(b"HTTP/1.1 400 "), (name, out))
                if name != "cr":  # http-parser refuses a CR inside a header line itself
                    self.assertIn(b"ambiguous HTTP request framing", out, name)
            # Behind a request on a connection kept alive: not sent on.
            out = self.raw(("GET /ok HTTP/1.1\r\nHost: %s\r\n\r\n" % domain + req).encode())
            self.assertEqual(out, ok, name)
            self.assertNotIn(("/" + name).encode(), bytes(g.got[before:]), name)
        # Two lengths, or a length and chunked: http-parser refuses them itself.
        for rest in ("Content-Length: 1\r\nContent-Length: 1\r\n\r\nx",
                     "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"):
            out = self.raw(("POST / HTTP/1.1\r\nHost: %s\r\n%s" % (domain, rest)).encode())
            self.assertTrue(out.startswith(b"HTTP/1.1 400 "), (rest, out))
        # Chunked bodies in the canonical form pass as they came, extensions and trailers too.
        chunked = "POST /c HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n" % domain
        after = "GET /after HTTP/1.1\r\nHost: %s\r\n\r\n" % domain
        body = b"5;a=b\r\nhello\r\n00A\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n"
        before = len(g.got)
        s = socket.create_connection(("127.0.0.1", self.ig_port), timeout=30)
        s.sendall(chunked.encode() + body + after.encode())
        f = s.makefile("rb")
        self.assertEqual(read_response(f)[2], b"ok")
        self.assertEqual(read_response(f)[2], b"ok")
        s.close()
        self.assertIn(body + after.encode(), bytes(g.got[before:]))
        # Not canonical: the body goes no further than its last canonical read, and the request
        # behind it (which a proxy reading the body otherwise would have sent for any domain)
        # not at all. Each of these http-parser takes.
        bad = {
            "data not followed by CRLF": b"5\r\nhelloXX0\r\n\r\n",
            "bare LF after the size": b"5\nhello\r\n0\r\n\r\n",
            "space after the size": b"5 \r\nhello\r\n0\r\n\r\n",
            "bare LF in an extension": b"5;x\nhello\r\n0\r\n\r\n",
            "bare LF at the end": b"5\r\nhello\r\n0\r\n\n",
            "bare LF after a trailer": b"5\r\nhello\r\n0\r\nX: 1\n\r\n",
            "folded trailer": b"5\r\nhello\r\n0\r\nX: 1\r\n folded\r\n\r\n",
            "tab-folded trailer": b"5\r\nhello\r\n0\r\nX: 1\r\n\tfolded\r\n\r\n",
            "17 digits": b"00000000000000005\r\nhello\r\n0\r\n\r\n",
        }
        smuggled = "GET /smuggled HTTP/1.1\r\nHost: %s\r\n\r\n" % domain
        for why, b in bad.items():
            print("CASE", why, file=sys.stderr)
            before = len(g.got)
            out = self.raw(chunked.encode() + b + smuggled.encode())
            self.assertEqual(out, ok, why)  # the POST's answer (the guest answers its head)
            time.sleep(0.05)
            self.assertNotIn(b"/smuggled", bytes(g.got[before:]), why)

    def test_upgrade_raw_only_when_the_guest_accepts(self):
        """After an Upgrade or CONNECT request the connection goes raw only when the guest
        accepts it (101, or a 2xx to CONNECT). Refused, the client's next request is a request
        again: one for another domain does not reach the guest. Accepted, the bytes the client
        sent behind the request reach the guest as they are."""
        def answer(head):
            line = head.split(b"\r\n")[0]
            if b"/refuse" in line:
                return b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\nno"
            if b"/close" in line:  # no length: the body ends with the connection
                return b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\nbye", True
            if b"/bare101" in line:  # no Upgrade header: a proxy would not switch
                return b"HTTP/1.1 101 Switching Protocols\r\n\r\nraw"
            if b"/accept" in line:
                return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\n"
                        b"Connection: Upgrade\r\n\r\nupgraded:")
            if line.startswith(b"CONNECT"):
                return b"HTTP/1.1 200 Connection Established\r\n\r\ntunnel:"
            if line.startswith(b"HEAD"):
                return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
            return b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nget"
        g = self.raw_guest(answer)
        sid, ws = self.sandbox()
        domain = self.expose(sid, ws, port=g.port)
        sid2, ws2 = self.sandbox()
        other = self.expose(sid2, ws2, port=free_port())
        up = "Upgrade: echo\r\nConnection: Upgrade\r\n"
        # Refused: the next request for this domain is answered, the one for another is not.
        s = socket.create_connection(("127.0.0.1", self.ig_port), timeout=30)
        s.sendall(("GET /refuse HTTP/1.1\r\nHost: %s\r\n%s\r\n"
                   "GET /next HTTP/1.1\r\nHost: %s\r\n\r\n"
                   "GET /other HTTP/1.1\r\nHost: %s\r\n\r\n" % (domain, up, domain, other)).encode())
        out = recv_until_eof(s, 30)
        s.close()
        self.assertEqual(out, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\nno"
                         b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nget")
        self.assertIn(b"/next", bytes(g.got))
        self.assertNotIn(other.encode(), bytes(g.got))
        # Refused, the answer ending with the guest's connection: the client gets it, then EOF
        # (its bytes behind the request were held; nothing can answer them now).
        s = socket.create_connection(("127.0.0.1", self.ig_port), timeout=30)
        s.sendall(("GET /close HTTP/1.1\r\nHost: %s\r\n%s\r\nGET /after HTTP/1.1\r\nHost: %s"
                   "\r\n\r\n" % (domain, up, domain)).encode())
        self.assertEqual(recv_until_eof(s, 30),
                         b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\nbye")
        s.close()
        # A 101 without the Upgrade and Connection headers a proxy switches on: not passed on.
        s = socket.create_connection(("127.0.0.1", self.ig_port), timeout=30)
        s.sendall(("GET /bare101 HTTP/1.1\r\nHost: %s\r\n%s\r\nGET /o HTTP/1.1\r\nHost: %s\r\n"
                   "\r\n" % (domain, up, other)).encode())
        self.assertEqual(recv_until_eof(s, 30), b"")
        s.close()
        self.assertNotIn(other.encode(), bytes(g.got))
        # Accepted: what followed the request is the new protocol's, even when it looks like
        # HTTP for another domain.
        tail = ("raw bytes\r\n\r\nGET /x HTTP/1.1\r\nHost: %s\r\n\r\n" % other).encode()
        s = socket.create_connection(("127.0.0.1", self.ig_port), timeout=30)
        s.sendall(("GET /accept HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (domain, up)).encode() + tail)
        deadline = time.time() + 30
        while tail not in bytes(g.got) and time.time() < deadline:
            time.sleep(0.05)
        self.assertIn(tail, bytes(g.got))
        s.settimeout(30)
        head = s.recv(4096)
        s.close()
        self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
        # CONNECT accepted by a 2xx: raw too.
        s = socket.create_connection(("127.0.0.1", self.ig_port), timeout=30)
        s.sendall(("CONNECT db:5432 HTTP/1.1\r\nHost: %s\r\n\r\n" % domain).encode()
                  + b"after-connect")
        deadline = time.time() + 30
        while b"after-connect" not in bytes(g.got) and time.time() < deadline:
            time.sleep(0.05)
        self.assertIn(b"after-connect", bytes(g.got))
        s.close()
        # HEAD: its answer has no body, whatever its Content-Length says.
        s = socket.create_connection(("127.0.0.1", self.ig_port), timeout=30)
        s.sendall(("HEAD / HTTP/1.1\r\nHost: %s\r\n\r\nGET / HTTP/1.1\r\nHost: %s\r\n\r\n"
                   "GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % (domain, domain, other)).encode())
        out = recv_until_eof(s, 30)
        s.close()
        self.assertEqual(out, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
                         b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nget")

    def test_leading_empty_lines(self):
        """Empty lines before the request line are skipped (RFC 9112 2.2), not a 400."""
        srv = self.server()
        sid, ws = self.sandbox()
        domain = self.expose(sid, ws, port=srv.port)
        out = self.raw(("\r\n\r\nGET /lead HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                        % domain).encode())
        self.assertTrue(out.startswith(b"HTTP/1.1 200"), out)
        self.assertIn(b"/lead", out)

    def test_no_ingress_503(self):
        gw = self.start_gateway(ingress=False)
        try:
            sid, ws = self.sandbox(gw)
            with self.assertRaises(urllib.error.HTTPError) as cm:
                gw.rest("POST", "/api/v3/sandbox/%s/expose/http" % sid, {})
            self.assertEqual(cm.exception.code, 503)
            self.assertIn(b"--http-listen", cm.exception.read())
            r = ws.call("exposeHttp", {"domain": "x.sbx.localhost", "port": 80})
            self.assertIn("--http-listen", r["result"]["error"]["message"])
        finally:
            for w in self.wss:
                w.close()
            self.wss = []
            gw.stop()


class TestIngressSDK(IngressCase):
    with_deno = True

    def test_sdk_expose_port_and_pid(self):
        port = free_port()
        rc, out, err = h.run_program(self.gw, "expose_http.ts", timeout=180, env={
            "SBXGW_HOME": self.user.home, "SBXGW_INGRESS": "127.0.0.1:%d" % self.ig_port,
            "SBXGW_PORT": str(port)})
        if rc != 0:
            self.fail("expose_http.ts exited %s\n--- stdout\n%s\n--- stderr\n%s\n--- log\n%s"
                      % (rc, out[-4000:], err[-6000:], self.gw.logtext()[-4000:]))
        self.assertIn("expose_http ok", out)


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1])
    return 0


def read_response_head(f):
    line = f.readline()
    status = int(line.split()[1])
    hdrs = {}
    while True:
        ln = f.readline()
        if ln in (b"\r\n", b"\n", b""):
            break
        k, _, v = ln.decode("latin-1").partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, None


if __name__ == "__main__":
    unittest.main()
