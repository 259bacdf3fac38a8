"""Deploy and revisions of sbx-gateway (gateway/deploy.c) with the addr backend: the real SDK's
sandbox.deploy() (tests/gateway/sdk/deploy_*.ts), raw Server-Sent Events clients, bad bodies,
restarts, and the deployed app answering HTTP through the gateway's ingress (--http-listen).

Needs root (a workload user, a root sbx-agent) and the pinned deno (the SDK and the deployed
app); run by ctest as gateway.deploy, or: SBX_BUILD=build python3 tests/gateway/test_deploy.py
"""
import json
import os
import re
import socket
import subprocess
import sys
import time
import unittest

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sdkharness as h  # noqa: E402

TIMEOUT = 60
SERVE_TS = ("Deno.serve({ port: 0, onListen() {} }, () => "
            "new Response(`served ${Deno.args.join(',')}\\n`));\n")


# --- raw HTTP ------------------------------------------------------------------------------------

def recv_until(sock, buf, marker):
    while marker not in buf:
        c = sock.recv(65536)
        if not c:
            raise EOFError("connection closed before %r: %r" % (marker, buf[-200:]))
        buf += c
    return buf


class Chunked:
    """A streamed (chunked) answer read as it arrives: .head, .status, .headers; chunks()."""

    def __init__(self, sock):
        self.sock = sock
        buf = recv_until(sock, b"", b"\r\n\r\n")
        head, self.buf = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            self.headers[k.strip().lower()] = v.strip()

    def chunk(self):
        """The next chunk's bytes; b"" at the end of the body."""
        self.buf = recv_until(self.sock, self.buf, b"\r\n")
        line, self.buf = self.buf.split(b"\r\n", 1)
        n = int(line.split(b";")[0], 16)
        while len(self.buf) < n + 2:
            c = self.sock.recv(65536)
            if not c:
                raise EOFError("connection closed in a chunk")
            self.buf += c
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data


class SSE:
    """Server-Sent Events over a chunked body: events() yields (arrival time, parsed JSON)."""

    def __init__(self, gw, path):
        self.sock = socket.create_connection((gw.host, gw.port), timeout=TIMEOUT)
        self.sock.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                           "Accept: text/event-stream\r\n\r\n" % (path, gw.token)).encode())
        self.r = Chunked(self.sock)
        self.pending = b""
        self.raw = b""

    def events(self):
        while True:
            c = self.r.chunk()
            if not c:
                if self.pending.strip():
                    raise AssertionError("a partial event at the end: %r" % self.pending)
                return
            self.raw += c
            self.pending += c
            while b"\n\n" in self.pending:
                ev, self.pending = self.pending.split(b"\n\n", 1)
                lines = ev.decode().split("\n")
                assert all(ln.startswith("data: ") for ln in lines), ev
                yield time.monotonic(), json.loads("\n".join(ln[6:] for ln in lines))

    def close(self):
        self.sock.close()


def http(gw, method, path, body=None, raw=None):
    """(status, decoded JSON or text) of one request with the token."""
    s = socket.create_connection((gw.host, gw.port), timeout=TIMEOUT)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                            else b"")
        s.sendall(("%s %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                   "Content-Type: application/json\r\nContent-Length: %d\r\n"
                   "Connection: close\r\n\r\n" % (method, path, gw.token, len(data))).encode()
                  + data)
        buf = b""
        while True:
            c = s.recv(65536)
            if not c:
                break
            buf += c
    finally:
        s.close()
    head, _, payload = buf.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, payload.decode("utf-8", "replace")


def ingress_get(url):
    """GET / of a revision's url ("http://DOMAIN:PORT") through the ingress on loopback."""
    m = re.match(r"^http://([^:/]+):(\d+)$", url)
    assert m, url
    s = socket.create_connection(("127.0.0.1", int(m.group(2))), timeout=TIMEOUT)
    try:
        s.sendall(("GET / HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n\r\n"
                   % (m.group(1), m.group(2))).encode())
        buf = b""
        while True:
            c = s.recv(65536)
            if not c:
                break
            buf += c
    finally:
        s.close()
    head, _, body = buf.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        out, rest = b"", body
        while True:
            line, _, rest = rest.partition(b"\r\n")
            n = int(line.split(b";")[0], 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        body = out
    return int(head.split()[1]), body.decode()


# --- the cases -----------------------------------------------------------------------------------

class DeployCase(unittest.TestCase):
    """A root agent with the pinned deno on its PATH, one gateway with the ingress on loopback."""

    @classmethod
    def setUpClass(cls):
        h.cache_deps()
        cls.user = h.WorkloadUser()

    @classmethod
    def tearDownClass(cls):
        cls.user.close()

    def setUp(self):
        self.agent = h.start_agent(with_deno=True)
        self.gws = []
        try:
            self.gw = self.start_gateway()
        except BaseException:
            self.agent.stop()
            raise

    def start_gateway(self, data=None):
        gw = h.Gateway(backend="addr:" + self.agent.addr, user=self.user.name,
                       cwd=self.user.home, extra=["--http-listen", "127.0.0.1:0"], data=data)
        self.gws.append(gw)
        return gw

    def tearDown(self):
        logs = []
        alive = True
        for gw in self.gws:
            if gw.proc.poll() is not None and gw.proc.returncode not in (0, -15):
                alive = False
            logs.append(gw.logtext())
            rc = gw.stop(keep_data=True)
            self.assertIn(rc, (0, -15), "sbx-gateway exit status %s:\n%s" % (rc, logs[-1][-4000:]))
        for gw in self.gws:
            gw.discard()
        self.agent.stop()
        self.assertTrue(alive, "sbx-gateway died:\n" + "\n".join(lg[-4000:] for lg in logs))
        for lg in logs:
            for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
                self.assertNotIn(bad, lg)

    def sandbox(self, gw=None):
        """A timed sandbox (it outlives the WebSocket that created it): its id."""
        ws = h.open_create_ws(gw or self.gw, {"timeout": "10m"})
        sid = ws.headers["x-deno-sandbox-id"]
        ws.close()
        return sid

    def app_dir(self, name, files):
        """A directory in the workload user's home (the addr backend shares the host's files)."""
        d = os.path.join(self.user.home, name)
        for rel, text in files.items():
            p = os.path.join(d, rel)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "w") as f:
                f.write(text)
        for root, dirs, fs in os.walk(d):
            for n in dirs + fs + [""]:
                os.chown(os.path.join(root, n), self.user.uid, self.user.gid)
        return d

    def deploy(self, sid, body, gw=None):
        status, j = http(gw or self.gw, "POST", "/api/v2/sandboxes/%s/deploy" % sid, body)
        self.assertEqual(status, 200, j)
        self.assertRegex(j["revision_id"], r"^[0-9a-hjkmnp-z]{12}$")
        return j["revision_id"]

    def wait_done(self, rev, gw=None):
        """Read the progress stream to its end (as Build.done does); the revision."""
        sse = SSE(gw or self.gw, "/api/v2/revisions/%s/progress" % rev)
        try:
            self.assertEqual(sse.r.status, 200)
            last = None
            for _, p in sse.events():
                last = p
            self.assertIsNotNone(last)
        finally:
            sse.close()
        status, r = http(gw or self.gw, "GET", "/api/v2/revisions/" + rev)
        self.assertEqual(status, 200, r)
        return r, last


class TestDeploy(DeployCase):
    def test_sdk_deploy_and_serve(self):
        rc, out, err = h.run_program(self.gw, "deploy_basic.ts", timeout=180,
                                     env={"SBXGW_HOME": self.user.home})
        self.assertEqual(rc, 0, "stdout:\n%s\nstderr:\n%s\ngateway:\n%s"
                         % (out, err, self.gw.logtext()[-4000:]))
        self.assertIn("deploy_basic ok", out)
        if os.environ.get("SBXGW_VERBOSE"):
            print("\n" + out + "\n--- gateway log ---\n" + self.gw.logtext())
        logs = [ln for ln in out.splitlines() if ln.startswith("LOG ")]
        self.assertIn("LOG installing info installing deps", logs)
        self.assertIn("LOG building info building", logs)
        rev = json.loads(out.split("REVISION ", 1)[1].splitlines()[0])
        self.assertEqual(rev["status"], "succeeded")
        self.assertTrue(rev["running"])
        self.assertEqual(rev["config"]["runtime"]["entrypoint"], "main.ts")
        self.assertEqual(rev["config"]["runtime"]["args"], ["x", "y z"])
        domain = rev["timelines"][0]["domains"][0]["domain"]
        self.assertEqual(rev["domains"], [domain])
        self.assertTrue(rev["url"].startswith("http://" + domain + ":"), rev["url"])
        # The app answers through the ingress, with its build's output and its args.
        status, body = ingress_get(rev["url"])
        self.assertEqual((status, body), (200, "hello built x,y z\n"))
        # What is stored: the archive (pack's tar.gz), the manifest, the revision record.
        d = os.path.join(self.gw.data, "revisions", rev["id"])
        names = subprocess.run(["tar", "-tzf", os.path.join(d, "archive.tar.gz")],
                               stdout=subprocess.PIPE, text=True, check=True).stdout.split()
        for want in ("main.ts", "gen/v.ts", "src/data.txt", ".sbx-manifest.json"):
            self.assertIn(want, names)
        with open(os.path.join(d, "manifest.json")) as f:
            man = json.load(f)
        self.assertEqual(man["entrypoint"], "main.ts")
        self.assertEqual(man["format"], "tar.gz")
        self.assertEqual(man["archive_size"], os.path.getsize(os.path.join(d, "archive.tar.gz")))
        self.assertIn("gen/v.ts", [e["path"] for e in man["files"]])
        with open(os.path.join(d, "revision.json")) as f:
            stored = json.load(f)
        self.assertEqual(stored["status"], "succeeded")
        self.assertEqual(stored["spec"]["app"], "basic-app")
        self.assertTrue(stored["logs"])
        # Timelines and progress as the SDK reads them.
        status, tl = http(self.gw, "GET", "/api/v2/revisions/%s/timelines" % rev["id"])
        self.assertEqual(status, 200)
        self.assertEqual(tl[0]["domains"], [{"domain": domain}])
        r, prog = self.wait_done(rev["id"])
        for stage in ("queued", "preparing", "installing", "building", "deploying"):
            self.assertEqual(prog[stage]["status"], "succeeded", prog)
            self.assertIn("end", prog[stage])
        self.assertEqual(prog["installing"]["command"], "echo installing deps; mkdir -p gen")

    def test_sse_logs_arrive_live(self):
        sid = self.sandbox()
        d = self.app_dir("live-app", {"main.ts": SERVE_TS})
        rev = self.deploy(sid, {"app": "live", "path": d, "mode": "local",
                                "buildCommand": "echo first-line; sleep 2; echo second-line"})
        sse = SSE(self.gw, "/api/v2/revisions/%s/build_logs" % rev)
        try:
            self.assertEqual(sse.r.status, 200)
            self.assertEqual(sse.r.headers.get("content-type"), "text/event-stream")
            self.assertEqual(sse.r.headers.get("transfer-encoding"), "chunked")
            self.assertNotIn("content-length", sse.r.headers)
            seen = {}
            events = []
            for t, ev in sse.events():
                events.append(ev)
                self.assertEqual(set(ev) - {"timeline"}, {"timestamp", "level", "message", "step"})
                self.assertIn(ev["level"], ("info", "error"))
                self.assertIn(ev["step"], ("preparing", "installing", "building", "deploying"))
                seen.setdefault(ev["message"], t)
            end = time.monotonic()
        finally:
            sse.close()
        self.assertIn("first-line", seen, events)
        self.assertIn("second-line", seen, events)
        # Live: the first line came about 2 s before the second, and before the build ended.
        self.assertGreater(seen["second-line"] - seen["first-line"], 1.5)
        self.assertLess(seen["first-line"], end - 1.5)
        # Every frame is "data: <json>\n\n".
        self.assertRegex(sse.raw.decode(), r"^(data: \{[^\n]*\}\n\n)+$")
        r, _ = self.wait_done(rev)
        self.assertEqual(r["status"], "succeeded", r)
        # A finished revision: the log stream replays everything and ends at once.
        sse = SSE(self.gw, "/api/v2/revisions/%s/build_logs?step=building" % rev)
        try:
            replay = [ev for _, ev in sse.events()]
        finally:
            sse.close()
        self.assertTrue(replay)
        self.assertTrue(all(ev["step"] == "building" for ev in replay), replay)
        self.assertIn("second-line", [ev["message"] for ev in replay])

    def test_sdk_failing_build(self):
        rc, out, err = h.run_program(self.gw, "deploy_fail.ts", timeout=120,
                                     env={"SBXGW_HOME": self.user.home})
        self.assertEqual(rc, 0, "stdout:\n%s\nstderr:\n%s\ngateway:\n%s"
                         % (out, err, self.gw.logtext()[-4000:]))
        self.assertIn("deploy_fail ok", out)

    def test_failures_are_revisions(self):
        sid = self.sandbox()
        # The app exits instead of serving.
        d = self.app_dir("exit-app", {"main.ts": "console.log('bye');\n"})
        r, prog = self.wait_done(self.deploy(sid, {"app": "exits", "path": d}))
        self.assertEqual(r["status"], "failed")
        self.assertIn("exited before it served HTTP", r["error"])
        self.assertEqual(prog["deploying"]["status"], "errored")
        # A missing entrypoint.
        r, prog = self.wait_done(self.deploy(sid, {"app": "noentry", "path": d,
                                                   "entrypoint": "nope.ts"}))
        self.assertEqual(r["status"], "failed")
        self.assertIn("nope.ts", r["error"])
        self.assertEqual(prog["building"]["status"], "errored")
        # A path that is not there.
        r, _ = self.wait_done(self.deploy(sid, {"app": "nopath", "path": d + "/missing"}))
        self.assertEqual(r["status"], "failed")
        self.assertIn("not a directory", r["error"])
        # A failing install command stops before the build.
        r, prog = self.wait_done(self.deploy(sid, {"app": "noinstall", "path": d, "mode": "local",
                                                   "installCommand": "exit 7",
                                                   "buildCommand": "echo never"}))
        self.assertEqual(r["status"], "failed")
        self.assertIn("exit status 7", r["error"])
        self.assertEqual(prog["installing"]["status"], "errored")
        self.assertEqual(prog["building"]["status"], "pending")

    def test_parallel_deploys(self):
        # Six jobs at once from one sandbox share its link (pack ids, process ids and upload
        # streams tell them apart; the agent packs at most 4 per connection, so the others wait
        # their turn); each app serves its own args.
        sid = self.sandbox()
        d = self.app_dir("par-app", {"main.ts": SERVE_TS})
        revs = [self.deploy(sid, {"app": "par%d" % i, "path": d, "args": ["n%d" % i],
                                  "mode": "local", "buildCommand": "echo b%d; sleep 1.5" % i})
                for i in range(6)]
        waited = 0
        for i, rev in enumerate(revs):
            r, _ = self.wait_done(rev)
            self.assertEqual(r["status"], "succeeded", r)
            self.assertEqual(ingress_get(r["url"]), (200, "served n%d\n" % i))
            sse = SSE(self.gw, "/api/v2/revisions/%s/build_logs" % rev)
            try:
                msgs = [ev["message"] for _, ev in sse.events()]
            finally:
                sse.close()
            self.assertIn("b%d" % i, msgs)
            self.assertFalse([m for m in msgs if re.match(r"^b\d$", m) and m != "b%d" % i], msgs)
            waited += any(m.startswith("waiting for a packing slot") for m in msgs)
        self.assertGreaterEqual(waited, 1, "no job waited: the queue was not exercised")

    def test_bad_requests(self):
        sid = self.sandbox()
        path = "/api/v2/sandboxes/%s/deploy" % sid
        bad = [
            None, [], {"entrypoint": "main.ts"}, {"app": ""}, {"app": "a b"}, {"app": "x" * 65},
            {"app": 5}, {"app": "a", "entrypoint": "/abs.ts"}, {"app": "a", "entrypoint": "../x"},
            {"app": "a", "entrypoint": "a\u0000b"}, {"app": "a", "args": "x"},
            {"app": "a", "args": [1]}, {"app": "a", "args": ["x"] * 300},
            {"app": "a", "mode": "remote"}, {"app": "a", "production": "yes"},
            {"app": "a", "buildCommand": "make"}, {"app": "a", "mode": "local",
                                                   "buildDirectory": "../out"},
            {"app": "a", "mode": "local", "frameworkPreset": "fresh"},
            {"app": "a", "frameworkPreset": "unknown"}, {"app": "a", "path": ""},
            {"app": "a", "mode": "local", "installCommand": "x" * 20000},
        ]
        for body in bad:
            status, j = http(self.gw, "POST", path, body)
            self.assertEqual(status, 400, (body, j))
            self.assertEqual(j["code"], "BAD_REQUEST", j)
            self.assertTrue(j["message"], j)
        status, j = http(self.gw, "POST", path, raw=b"{not json")
        self.assertEqual(status, 400, j)
        status, j = http(self.gw, "POST", "/api/v2/sandboxes/sbx_ord_%s/deploy" % ("0" * 20),
                         {"app": "a"})
        self.assertEqual(status, 404, j)
        for rev in ("000000000000", "nope", "a" * 200, "ABCDEFGHJKMN"):
            for what in ("", "/progress", "/timelines", "/build_logs"):
                status, j = http(self.gw, "GET", "/api/v2/revisions/" + rev + what)
                self.assertEqual(status, 404, (rev, what, j))
                # (an id longer than the router's 63 bytes matches no route at all)
                self.assertEqual(j["code"], "REVISION_NOT_FOUND" if len(rev) < 64
                                 else "NOT_FOUND")
        # Without the token.
        s = socket.create_connection((self.gw.host, self.gw.port), timeout=TIMEOUT)
        s.sendall(b"GET /api/v2/revisions/000000000000/build_logs HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b" 401 ", s.recv(4096).split(b"\r\n")[0] + b" ")
        s.close()

    def test_restart_keeps_revisions(self):
        sid = self.sandbox()
        d = self.app_dir("keep-app", {"main.ts": SERVE_TS, "slow/main.ts": SERVE_TS})
        done = self.deploy(sid, {"app": "kept", "path": d, "args": ["k"]})
        r1, _ = self.wait_done(done)
        self.assertEqual(r1["status"], "succeeded", r1)
        self.assertEqual(ingress_get(r1["url"]), (200, "served k\n"))
        # A job the restart interrupts.
        cut = self.deploy(sid, {"app": "cut", "path": d, "mode": "local",
                                "buildCommand": "echo started; sleep 30"})
        sse = SSE(self.gw, "/api/v2/revisions/%s/build_logs" % cut)
        try:
            for _, ev in sse.events():
                if ev["message"] == "started":
                    break
        finally:
            sse.close()
        data = self.gw.data
        self.gw.stop(keep_data=True)
        gw2 = self.start_gateway(data=data)
        status, r2 = http(gw2, "GET", "/api/v2/revisions/" + done)
        self.assertEqual(status, 200, r2)
        for k in ("id", "status", "created_at", "build_finished_at", "domains", "app", "args"):
            self.assertEqual(r2[k], r1[k], k)
        status, r3 = http(gw2, "GET", "/api/v2/revisions/" + cut)
        self.assertEqual(r3["status"], "failed", r3)
        self.assertIn("interrupted", r3["error"])
        # Finished revisions: the streams replay and end at once.
        sse = SSE(gw2, "/api/v2/revisions/%s/build_logs" % cut)
        try:
            msgs = [ev["message"] for _, ev in sse.events()]
        finally:
            sse.close()
        self.assertIn("started", msgs)
        self.assertIn("interrupted", msgs[-1])
        r, prog = self.wait_done(done, gw2)
        self.assertEqual(prog["deploying"]["status"], "succeeded")
        # The app still runs (its sandbox is a timed one) and the ingress still maps it.
        self.assertEqual(ingress_get(r["url"]), (200, "served k\n"))

    def test_control_character_logs_survive_restart(self):
        # 20 MB of control bytes on the build's stdout: each is stored as \u0001 (6 bytes) in
        # revision.json, so the log cap must count what is stored, or the record outgrows what
        # the next start loads (64 MiB) and the revision is lost.
        sid = self.sandbox()
        d = self.app_dir("ctl-app", {"main.ts": SERVE_TS})
        rev = self.deploy(sid, {"app": "ctl", "path": d, "mode": "local",
                                "buildCommand": "head -c 20000000 /dev/zero | tr '\\0' '\\1'"})
        r, _ = self.wait_done(rev)
        self.assertEqual(r["status"], "succeeded", r)
        size = os.path.getsize(os.path.join(self.gw.data, "revisions", rev, "revision.json"))
        self.assertLess(size, 32 << 20)
        data = self.gw.data
        self.gw.stop(keep_data=True)
        gw2 = self.start_gateway(data=data)
        status, r2 = http(gw2, "GET", "/api/v2/revisions/" + rev)
        self.assertEqual(status, 200, r2)
        self.assertEqual(r2["status"], "succeeded")
        sse = SSE(gw2, "/api/v2/revisions/%s/build_logs?step=building" % rev)
        try:
            msgs = [ev["message"] for _, ev in sse.events()]
        finally:
            sse.close()
        self.assertTrue(any(m.startswith("(output truncated") for m in msgs), msgs[-3:])
        self.assertTrue(any(m.startswith("\x01" * 100) for m in msgs))

    def test_fifo_revision_record(self):
        # A FIFO where a revision.json belongs: the next start skips it rather than waiting for
        # a writer for ever.
        data = self.gw.data
        self.gw.stop(keep_data=True)
        os.makedirs(os.path.join(data, "revisions", "fafafafafafa"))
        os.mkfifo(os.path.join(data, "revisions", "fafafafafafa", "revision.json"))
        gw2 = h.Gateway(backend="addr:" + self.agent.addr, user=self.user.name,
                        cwd=self.user.home, extra=["--http-listen", "127.0.0.1:0"], data=data,
                        ready_timeout=20)
        self.gws.append(gw2)
        status, j = http(gw2, "GET", "/api/v2/revisions/fafafafafafa")
        self.assertEqual(status, 404, j)
        self.assertIn("not a regular file", gw2.logtext())


if __name__ == "__main__":
    unittest.main(verbosity=2)
