"""fetch from a sandbox (gateway/fetch.c) with the real SDK against the addr backend: egress to a
local test server through --resolve and allowNet, streamed bodies both ways, null bodies,
redirects, secrets, aborts and failures (sdk/fetch_egress.ts); a server inside the sandbox by
localhost port and by pid (sdk/fetch_guest.ts); hostile requests on a raw WebSocket.

    python3 test_fetch.py [TestFetch[.test_x]]
Environment: SBX_BUILD (default SRC/build).
"""
import base64
import hashlib
import http.server
import json
import os
import socket
import sys
import threading
import time
import unittest
import urllib.parse

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sdkharness as h  # noqa: E402
from test_sdk import AddrCase  # noqa: E402


def pattern(n):
    return bytes(((i * 31 + (i >> 10)) & 0xFF) for i in range(n)) if n < 4096 else \
        _pattern_fast(n)


def _pattern_fast(n):
    out = bytearray(n)
    for blk in range(0, n, 1024):
        hi = blk >> 10
        for i in range(blk, min(n, blk + 1024)):
            out[i] = (i * 31 + hi) & 0xFF
    return bytes(out)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def read_body(self):
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            data = b""
            while True:
                n = int(self.rfile.readline().strip().split(b";")[0], 16)
                if n == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return data
                data += self.rfile.read(n)
                self.rfile.readline()
        n = int(self.headers.get("content-length") or 0)
        return self.rfile.read(n) if n else b""

    def send(self, code, body=b"", headers=(), reason=None):
        self.send_response(code, reason)
        for k, v in headers:
            self.send_header(k, v)
        if code not in (204, 304):
            self.send_header("content-length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def handle_any(self):
        u = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(u.query))
        body = self.read_body()
        self.server.seen.append({"method": self.command, "path": self.path,
                                 "host": self.headers.get("host"),
                                 "authorization": self.headers.get("authorization")})
        if u.path == "/echo":
            j = {"method": self.command, "path": self.path, "bodyLen": len(body),
                 "sha": hashlib.sha256(body).hexdigest(),
                 "headers": {k.lower(): v for k, v in self.headers.items()}}
            self.send(200, json.dumps(j).encode(), [("content-type", "application/json")])
        elif u.path == "/big":
            n = int(q["n"])
            self.send_response(200)
            self.send_header("content-length", str(n))
            self.end_headers()
            self.wfile.write(pattern(n))
        elif u.path == "/chunked":
            data = pattern(int(q["n"]))
            self.send_response(200)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for off in range(0, len(data), 100000):
                c = data[off:off + 100000]
                self.wfile.write(b"%x\r\n" % len(c) + c + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif u.path == "/close":
            self.send_response(200)
            self.send_header("connection", "close")
            self.end_headers()
            self.wfile.write(pattern(int(q["n"])))
            self.close_connection = True
        elif u.path == "/status":
            self.send(int(q["code"]))
        elif u.path == "/redir":
            self.send(int(q["code"]), b"", [("location", q["to"])])
        elif u.path == "/loop":
            self.send(302, b"", [("location", "/loop")])
        elif u.path == "/cut":
            self.send_response(200)
            self.send_header("content-length", "1000000")
            self.end_headers()
            self.wfile.write(b"x" * 1000)
            self.wfile.flush()
            self.close_connection = True
        elif u.path == "/slow":
            self.send_response(200)
            self.send_header("content-length", str(10 << 20))
            self.end_headers()
            self.wfile.write(b"s" * 65536)
            self.wfile.flush()
            time.sleep(20)
            self.close_connection = True
        elif u.path == "/hang":
            time.sleep(20)
            self.close_connection = True
        else:
            self.send(404, b"nope")

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = do_PATCH = handle_any


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.seen = []
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.shutdown()
        self.server_close()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class FetchCase(AddrCase):
    RESOLVE = ("allowed.test", "second.test", "refused.test")

    def setUp(self):
        self.srv = Server()
        self.agent = h.start_agent(with_deno=self._testMethodName.startswith("test_guest"))
        extra = []
        for name in self.RESOLVE:
            extra += ["--resolve", name + ":127.0.0.1"]
        try:
            self.gw = h.Gateway(backend="addr:" + self.agent.addr, user=self.user.name,
                                cwd=self.user.home, extra=extra)
        except BaseException:
            self.agent.stop()
            self.srv.stop()
            raise

    def tearDown(self):
        try:
            super().tearDown()
        finally:
            self.srv.stop()


class TestFetch(FetchCase):
    def test_egress(self):
        out, _ = self.run_ok("fetch_egress.ts", timeout=240,
                             env={"SBXGW_PORT": str(self.srv.server_address[1])})
        self.assertIn("fetch_egress ok", out)
        hosts = [r["host"] for r in self.srv.seen]
        self.assertFalse([x for x in hosts if x and x.startswith("refused.test")], hosts)
        self.assertNotIn("/refused", [r["path"] for r in self.srv.seen])
        # The real value went only to allowed.test.
        for r in self.srv.seen:
            if r["authorization"] and "real-secret-value" in r["authorization"]:
                self.assertTrue(r["host"].startswith("allowed.test:"), r)

    def test_guest_localhost_and_pid(self):
        out, _ = self.run_ok("fetch_guest.ts", timeout=180,
                             env={"SBXGW_GUEST_PORT": str(free_port())})
        self.assertIn("fetch_guest ok", out)

    def test_hostile_requests(self):
        port = self.srv.server_address[1]
        ws = h.open_create_ws(self.gw, {"allow_net": ["allowed.test"]})
        try:
            base = "http://allowed.test:%d/echo" % port
            bad = [
                {"url": base, "method": "GET\r\nX-Injected: 1", "headers": []},
                {"url": base, "method": "GE T", "headers": []},
                {"url": base, "method": "GET", "headers": [["x-a\r\nx-b", "1"]]},
                {"url": base, "method": "GET", "headers": [["x-a", "1\r\nx-injected: 1"]]},
                {"url": base, "method": "GET", "headers": [["x-a", "\u0100"]]},
                {"url": base, "method": "GET", "headers": [["x-a"]]},
                {"url": base, "method": "GET", "headers": [["x", "1"]] * 5000},
                {"url": base, "method": "GET", "headers": [["x", "v" * (300 << 10)]]},
                {"url": "http://allowed.test:%d/a b" % port, "method": "GET", "headers": []},
                {"url": "not a url", "method": "GET", "headers": []},
                {"url": "http://user:pw@allowed.test/", "method": "GET", "headers": []},
                {"url": base, "method": "CONNECT", "headers": []},
                {"url": base, "method": "GET", "headers": [], "bodyStreamId": 999999},
                {"url": base, "method": "GET", "headers": [], "redirect": "sideways"},
                {"url": 7, "method": "GET", "headers": []},
            ]
            for i, params in enumerate(bad):
                m = ws.call("fetch", params, timeout=30)
                err = m["result"].get("error")
                self.assertIsNotNone(err, (params, m))
                self.assertEqual(err["constructorName"], "TypeError", (i, err))
            self.assertEqual(self.srv.seen, [])
            # Still serving: a good one.
            m = ws.call("fetch", {"url": base, "method": "GET", "headers": [["x-ok", "1"]],
                                  "redirect": "follow"}, timeout=30)
            ok = m["result"]["ok"]
            self.assertEqual(ok["status"], 200)
            sid = ok["bodyStreamId"]
            got = b""
            # A small body may come before the answer (the gateway answers after the read that
            # brought the head): what ws.call collected first, then the socket.
            early = list(ws.notes)
            while True:
                n = early.pop(0) if early else ws.recv_json(30)
                p = n.get("params") or {}
                if p.get("streamId") != sid:
                    continue
                if n["method"] == "$sandbox.stream.enqueue":
                    got += base64.b64decode(p["data"])
                elif n["method"] == "$sandbox.stream.end":
                    break
                elif n["method"] != "$sandbox.stream.start":
                    self.fail(n)
            self.assertEqual(json.loads(got)["headers"]["x-ok"], "1")
            self.assertEqual(len(self.srv.seen), 1)
        finally:
            ws.close()

    def test_own_interface_addresses_refused(self):
        # An address of one of the host's interfaces (not loopback) reaches the host's own
        # listeners as loopback does: refused like 127.0.0.1 unless --resolve maps a name to it.
        addrs = []
        try:
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.connect(("203.0.113.1", 9))  # a route lookup only: nothing is sent
            addrs.append(u.getsockname()[0])
            u.close()
        except OSError:
            pass
        try:
            with open("/proc/net/if_inet6") as f:
                for ln in f:
                    hexa, _, _, scope, _, dev = ln.split()
                    if dev != "lo" and scope == "00":
                        addrs.append(socket.inet_ntop(socket.AF_INET6, bytes.fromhex(hexa)))
        except OSError:
            pass
        addrs = [a for a in addrs if not a.startswith("127.")]
        if not addrs:
            self.skipTest("no non-loopback address on this host")
        ws = h.open_create_ws(self.gw, {})
        try:
            for a in addrs:
                fam = socket.AF_INET6 if ":" in a else socket.AF_INET
                lsn = socket.socket(fam, socket.SOCK_STREAM)
                lsn.bind((a, 0))
                lsn.listen(4)
                lsn.settimeout(0.5)
                try:
                    host = "[%s]" % a if ":" in a else a
                    m = ws.call("fetch", {"url": "http://%s:%d/" % (host, lsn.getsockname()[1]),
                                          "method": "GET", "headers": []}, timeout=30)
                    err = m["result"].get("error")
                    self.assertIsNotNone(err, (a, m))
                    self.assertEqual(err["code"], "EACCES", err)
                    self.assertIn("own host", err["message"])
                    with self.assertRaises(socket.timeout):
                        lsn.accept()[0].close()
                finally:
                    lsn.close()
        finally:
            ws.close()

    def test_fetches_in_flight_are_capped(self):
        # A client that starts fetch after fetch toward a server that never answers: each would
        # hold a connection (a file descriptor) for ever. Past 256 on a session: LIMIT at once.
        port = self.srv.server_address[1]
        pid = self.gw.proc.pid
        base = len(os.listdir("/proc/%d/fd" % pid))
        ws = h.open_create_ws(self.gw, {})
        try:
            n = 300
            for i in range(n):
                ws.send_json({"jsonrpc": "2.0", "id": i, "method": "fetch",
                              "params": {"url": "http://allowed.test:%d/hang" % port,
                                         "method": "GET", "headers": []}})
            limited = set()
            deadline = time.monotonic() + 30
            while len(limited) < n - 256 and time.monotonic() < deadline:
                m = ws.recv_json(max(0.1, deadline - time.monotonic()))
                err = (m.get("result") or {}).get("error") if isinstance(m, dict) else None
                if err is not None:
                    self.assertEqual(err["code"], "LIMIT", m)
                    limited.add(m["id"])
            self.assertEqual(len(limited), n - 256)
            self.assertLess(len(os.listdir("/proc/%d/fd" % pid)), base + 256 + 16)
        finally:
            ws.close()
        # The session's end ends its fetches: their connections are closed.
        deadline = time.monotonic() + 10
        while len(os.listdir("/proc/%d/fd" % pid)) > base + 8 and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertLessEqual(len(os.listdir("/proc/%d/fd" % pid)), base + 8)


if __name__ == "__main__":
    unittest.main(verbosity=2)
