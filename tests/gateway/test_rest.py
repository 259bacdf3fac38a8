#!/usr/bin/env python3
"""sbx-gateway's command line, token and REST routes, against the addr backend.

usage: test_rest.py [BUILD_DIR]   (or env SBX_BUILD; default: build/ of this tree)

Starts build/bin/sbx-gateway with --backend addr:unix:/nonexistent --listen 127.0.0.1:0 and a
temporary data dir, and checks what it prints, the token's reuse, auth, the list, 404s, config
errors, usage errors, and a create over a raw WebSocket handshake (101 with x-deno-sandbox-id,
listed with its labels, DELETE makes it stopped). Python stdlib only.
"""

import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.environ.get("SBX_BUILD") or os.path.join(HERE, "..", "..", "build")
ID_RE = re.compile(r"^sbx_[a-z]{3}_[0-9a-hjkmnp-z]{20}$")
TOKEN_RE = re.compile(r"^ddo_[0-9a-z]{40}$")
BACKEND = "addr:unix:/nonexistent"
START_TIMEOUT = 10


def gateway_bin():
    return os.path.join(BUILD, "bin", "sbx-gateway")


class Gateway:
    """One sbx-gateway process; its three stdout lines are read with a deadline."""

    def __init__(self, data_dir, *extra):
        self.proc = subprocess.Popen(
            [gateway_bin(), "--quiet", "--backend", BACKEND, "--listen", "127.0.0.1:0",
             "--data-dir", data_dir, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines = []
        deadline = time.monotonic() + START_TIMEOUT
        # readline blocks until the gateway prints (it flushes after the third line) or exits.
        while len(self.lines) < 3:
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError("sbx-gateway printed %r within %ds" %
                                     (self.lines, START_TIMEOUT))
            line = self.proc.stdout.readline()
            if line == "":
                err = self.proc.stderr.read()
                raise AssertionError("sbx-gateway exited (%s): %s" % (self.proc.wait(), err))
            self.lines.append(line.rstrip("\n"))
        m = re.match(r"^token: (\S+)$", self.lines[0])
        assert m, self.lines
        self.token = m.group(1)
        m = re.search(r"DENO_SANDBOX_ENDPOINT=http://127\.0\.0\.1:(\d+) ", self.lines[2])
        assert m, self.lines
        self.port = int(m.group(1))

    def request(self, method, path, token=None, headers=None, body=None):
        """(status, parsed JSON body or raw text, headers)"""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        h = dict(headers or {})
        tok = self.token if token is None else token
        if tok:
            h["Authorization"] = "Bearer " + tok
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            h["Content-Type"] = "application/json"
        conn.request(method, path, body=body, headers=h)
        resp = conn.getresponse()
        data = resp.read().decode()
        conn.close()
        try:
            parsed = json.loads(data) if data else None
        except ValueError:
            parsed = data
        return resp.status, parsed, resp

    def websocket(self, path, config=None, raw_config=None, token=None):
        """A raw WebSocket handshake: (status, headers dict, body text, socket)."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = ["GET %s HTTP/1.1" % path, "Host: 127.0.0.1:%d" % self.port,
                 "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Key: " + key,
                 "Sec-WebSocket-Version: 13",
                 "Authorization: Bearer " + (self.token if token is None else token)]
        if raw_config is not None:
            lines.append("x-deno-sandbox-config: " + raw_config)
        elif config is not None:
            lines.append("x-deno-sandbox-config: " +
                         base64.b64encode(json.dumps(config).encode()).decode())
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        head_lines = head.decode().split("\r\n")
        status = int(head_lines[0].split()[1])
        hdrs = {}
        for line in head_lines[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        body = rest
        if status != 101:
            want = int(hdrs.get("content-length", "0"))
            while len(body) < want:
                chunk = s.recv(65536)
                if not chunk:
                    break
                body += chunk
            s.close()
            s = None
        return status, hdrs, body.decode(errors="replace"), s

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("sbx-gateway did not exit within 20 s of SIGTERM")
        self.proc.stdout.close()
        self.proc.stderr.close()
        return rc


def b64(obj):
    return base64.b64encode(json.dumps(obj).encode()).decode()


class GatewayCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.access(gateway_bin(), os.X_OK):
            raise unittest.SkipTest("no %s" % gateway_bin())
        cls.tmp = tempfile.mkdtemp(prefix="sbx-gw-test-")
        cls.data = os.path.join(cls.tmp, "data")
        cls.gw = Gateway(cls.data)

    @classmethod
    def tearDownClass(cls):
        rc = cls.gw.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)
        assert rc == 0, "sbx-gateway exited %s after SIGTERM" % rc

    def assertError(self, got, status, code):
        st, body, _ = got
        self.assertEqual(st, status, body)
        self.assertIsInstance(body, dict, body)
        self.assertEqual(body.get("code"), code, body)
        self.assertIsInstance(body.get("message", ""), str)

    # --- start ---------------------------------------------------------------------------

    def test_printed_lines(self):
        gw = self.gw
        self.assertTrue(TOKEN_RE.match(gw.token), gw.token)
        self.assertEqual(gw.lines[1], "export DENO_DEPLOY_TOKEN=" + gw.token)
        ep = "http://127.0.0.1:%d" % gw.port
        self.assertEqual(gw.lines[2], "export DENO_SANDBOX_ENDPOINT=%s DENO_DEPLOY_ENDPOINT=%s"
                         % (ep, ep))
        self.assertNotEqual(gw.port, 0)

    def test_data_dir_modes(self):
        self.assertEqual(os.stat(self.data).st_mode & 0o777, 0o700)
        tok = os.path.join(self.data, "token")
        self.assertEqual(os.stat(tok).st_mode & 0o777, 0o600)
        with open(tok) as f:
            self.assertEqual(f.read().strip(), self.gw.token)

    def test_token_reused_on_restart(self):
        data = os.path.join(self.tmp, "restart")
        first = Gateway(data)
        try:
            tok = first.token
        finally:
            self.assertEqual(first.stop(), 0)
        second = Gateway(data)
        try:
            self.assertEqual(second.token, tok)
            self.assertEqual(second.request("GET", "/api/v2/sandboxes")[0], 200)
        finally:
            self.assertEqual(second.stop(), 0)

    def test_nofile_soft_limit_raised(self):
        """Started with a low soft RLIMIT_NOFILE, the gateway raises it to the hard limit (its
        caps on sessions, ingress connections, fetches and SSH clients need the descriptors)."""
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard <= 256:
            self.skipTest("hard RLIMIT_NOFILE %d is too low to tell" % hard)
        data = os.path.join(self.tmp, "nofile")

        def low():
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        p = subprocess.Popen([gateway_bin(), "--quiet", "--backend", BACKEND, "--listen",
                              "127.0.0.1:0", "--data-dir", data], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, preexec_fn=low)
        try:
            self.assertTrue(p.stdout.readline().startswith("token: "))
            with open("/proc/%d/limits" % p.pid) as f:
                line = [x for x in f if x.startswith("Max open files")][0].split()
            self.assertEqual(int(line[3]), hard, line)
        finally:
            p.terminate()
            p.communicate(timeout=10)

    def test_fifo_in_the_data_dir(self):
        """A FIFO where the token (or any state file) belongs makes the gateway refuse to start
        at once, never hang in open() waiting for a writer."""
        for name in ("token", "expose.json", "ssh.json"):
            data = os.path.join(self.tmp, "fifo-" + name.replace(".", "-"))
            os.makedirs(data)
            if name != "token":
                with open(os.path.join(data, "token"), "w") as f:
                    f.write("ddo_" + "a" * 40 + "\n")
            os.mkfifo(os.path.join(data, name))
            args = ["--data-dir", data, "--backend", BACKEND, "--listen", "127.0.0.1:0",
                    "--http-listen", "127.0.0.1:0", "--ssh-listen", "127.0.0.1:0"]
            p = subprocess.Popen([gateway_bin(), *args], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
            try:
                if name == "token":
                    out, err = p.communicate(timeout=10)
                    self.assertEqual(p.returncode, 1, err)
                    self.assertIn("token", err)
                else:
                    # A state file that is not a regular file is skipped (logged): the gateway
                    # serves; what matters is that it got there.
                    line = p.stdout.readline()
                    self.assertTrue(line.startswith("token: "), line)
            finally:
                if p.poll() is None:
                    p.terminate()
                    p.communicate(timeout=10)

    def test_usage_errors(self):
        cases = [
            [],                                            # no --data-dir
            ["--data-dir", self.tmp, "--bogus"],
            ["--data-dir", self.tmp, "extra-arg"],
            ["--data-dir", self.tmp],                      # vm backend without --image
            ["--data-dir", self.tmp, "--image", os.path.join(self.tmp, "no-such.ext4")],
            ["--data-dir", self.tmp, "--backend", "nope"],
            ["--data-dir", self.tmp, "--backend", "addr:bogus"],
            ["--data-dir", self.tmp, "--backend", BACKEND, "--mem", "12Q"],
            ["--data-dir", self.tmp, "--backend", BACKEND, "--listen"],
            ["--data-dir", self.tmp, "--backend", BACKEND, "--agent-hello-timeout", "0s"],
            ["--data-dir", self.tmp, "--backend", BACKEND, "--agent-hello-timeout", "5"],
            ["--data-dir", self.tmp, "--backend", BACKEND, "--deploy-stage-timeout", "25h"],
            ["--data-dir", self.tmp, "--backend", BACKEND, "--deploy-stage-timeout", "-1m"],
            ["--data-dir", self.tmp, "--backend", BACKEND, "--stream-stall-timeout", "0s"],
            ["--data-dir", self.tmp, "--backend", BACKEND, "--ingress-idle-timeout", "10"],
            ["--data-dir", self.tmp, "--backend", BACKEND, "--ingress-max-conns", "0"],
            ["--data-dir", self.tmp, "--backend", BACKEND, "--ingress-max-conns", "65537"],
            ["--data-dir", self.tmp, "--backend", BACKEND, "--ingress-max-conns", "-3"],
            ["--data-dir", self.tmp, "--backend", BACKEND, "--ingress-max-conns", "4x"],
            ["--data-dir", self.tmp, "--backend", BACKEND, "--ssh-idle-timeout", "0s"],
            ["--data-dir", self.tmp, "--backend", BACKEND, "--ssh-keepalive", "5"],
        ]
        for args in cases:
            p = subprocess.run([gateway_bin(), *args], capture_output=True, text=True, timeout=10)
            self.assertEqual(p.returncode, 2, (args, p.stderr))
            self.assertIn("sbx-gateway", p.stderr)
            self.assertEqual(p.stdout, "", args)
        p = subprocess.run([gateway_bin(), "--help"], capture_output=True, text=True, timeout=10)
        self.assertEqual(p.returncode, 0)
        self.assertIn("--data-dir", p.stdout)

    # --- auth ----------------------------------------------------------------------------

    def test_auth(self):
        gw = self.gw
        wrong = gw.token[:-1] + ("0" if gw.token[-1] != "0" else "1")
        for tok in ("", wrong, gw.token + "x", "ddo_"):
            for method, path in (("GET", "/api/v2/sandboxes"), ("GET", "/api/v3/sandboxes"),
                                 ("DELETE", "/api/v3/sandbox/sbx_ord_0123456789abcdefghjk"),
                                 ("GET", "/nowhere")):
                self.assertError(gw.request(method, path, token=tok), 401, "INVALID_TOKEN")
        st, _, _, _ = gw.websocket("/api/v3/sandboxes/create", config={}, token=wrong)
        self.assertEqual(st, 401)

    # --- routes --------------------------------------------------------------------------

    def test_list_empty_or_array(self):
        for path in ("/api/v2/sandboxes", "/api/v3/sandboxes",
                     "/api/v2/sandboxes?labels%5Bnone%5D=x"):
            st, body, resp = self.gw.request("GET", path)
            self.assertEqual(st, 200)
            self.assertIsInstance(body, list)
            self.assertIsNone(resp.getheader("link"))
        st, body, _ = self.gw.request("GET", "/api/v2/sandboxes?labels%5Bnone%5D=x")
        self.assertEqual(body, [])

    def test_not_found(self):
        gw = self.gw
        self.assertError(gw.request("GET", "/nowhere"), 404, "NOT_FOUND")
        self.assertError(gw.request("GET", "/api/v2/apps"), 404, "NOT_FOUND")
        self.assertError(gw.request("POST", "/api/v2/sandboxes"), 404, "NOT_FOUND")
        unknown = "sbx_ord_0123456789abcdefghjk"
        for method, path in (("DELETE", "/api/v3/sandbox/" + unknown),
                             ("DELETE", "/api/v3/sandboxes/" + unknown),
                             ("DELETE", "/api/v3/sandbox/not-an-id"),
                             ("PATCH", "/api/v3/sandbox/" + unknown)):
            body = {"stop_at_ms": int(time.time() * 1000) + 60000} if method == "PATCH" else None
            self.assertError(gw.request(method, path, body=body), 404, "SANDBOX_NOT_FOUND")
        st, _, body, _ = gw.websocket("/api/v3/sandbox/%s/connect" % unknown)
        self.assertEqual(st, 404)
        self.assertEqual(json.loads(body)["code"], "SANDBOX_NOT_FOUND")

    def test_not_supported(self):
        unknown = "sbx_ord_0123456789abcdefghjk"
        got = self.gw.request("POST", "/api/v3/sandbox/%s/expose/vscode" % unknown, body={})
        self.assertError(got, 501, "NOT_SUPPORTED")
        self.assertIn("no VS Code server", got[1]["message"])

    def test_expose_and_deploy_need_a_sandbox(self):
        unknown = "sbx_ord_0123456789abcdefghjk"
        for path in ("/api/v3/sandbox/%s/expose/http" % unknown,
                     "/api/v3/sandbox/%s/expose/ssh" % unknown,
                     "/api/v2/sandboxes/%s/deploy" % unknown):
            self.assertError(self.gw.request("POST", path, body={}), 404, "SANDBOX_NOT_FOUND")

    def test_websocket_mismatch(self):
        # A plain request on a WebSocket route, and an upgrade on a REST route: 400.
        self.assertEqual(self.gw.request("GET", "/api/v3/sandboxes/create")[0], 400)
        st, _, _, _ = self.gw.websocket("/api/v2/sandboxes")
        self.assertEqual(st, 400)

    def test_bad_config(self):
        gw = self.gw
        now = int(time.time() * 1000)
        bad = [
            ("not base64!!", "x-deno-sandbox-config"),
            (base64.b64encode(b"{not json").decode(), "JSON"),
            (b64([1, 2]), "config"),
            (b64({"labels": {str(i): "v" for i in range(6)}}), "labels"),
            (b64({"labels": {"k" * 65: "v"}}), "labels"),
            (b64({"labels": {"k": "v" * 129}}), "labels"),
            (b64({"labels": {"k": 1}}), "labels"),
            (b64({"memory_mb": 64}), "memory_mb"),
            (b64({"memory_mb": 70000}), "memory_mb"),
            (b64({"memory_mb": "1G"}), "memory_mb"),
            (b64({"stop_at_ms": now - 1000}), "stop_at_ms"),
            (b64({"stop_at_ms": now + 25 * 3600 * 1000}), "stop_at_ms"),
            (b64({"timeout": "5x"}), "timeout"),
            (b64({"timeout": "-5m"}), "timeout"),
            (b64({"env": {"A=B": "x"}}), "env"),
            (b64({"allow_net": "example.com"}), "allow_net"),
        ]
        before = gw.request("GET", "/api/v2/sandboxes")[1]
        for raw, key in bad:
            st, _, body, _ = gw.websocket("/api/v3/sandboxes/create", raw_config=raw)
            self.assertEqual(st, 400, (raw, body))
            obj = json.loads(body)
            self.assertEqual(obj["code"], "INVALID_CONFIG", obj)
            self.assertIn(key, obj["message"])
        for cfg in ({"root": {"volume": "v"}}, {"volumes": [{"volume": "v", "path": "/d"}]},
                    {"volumes": {"/d": "v"}}):
            st, _, body, _ = gw.websocket("/api/v3/sandboxes/create", config=cfg)
            self.assertEqual(st, 400, body)
            self.assertEqual(json.loads(body)["code"], "NOT_SUPPORTED")
        # The Python SDK's create flags: refused with the route to use instead.
        for cfg, route in (({"ssh": True}, "expose/ssh"), ({"port": 8000}, "expose/http")):
            st, _, body, _ = gw.websocket("/api/v3/sandboxes/create", config=cfg)
            self.assertEqual(st, 400, body)
            self.assertEqual(json.loads(body)["code"], "NOT_SUPPORTED")
            self.assertIn(route, json.loads(body)["message"])
        # Nothing was created by the refused configs.
        self.assertEqual(gw.request("GET", "/api/v2/sandboxes")[1], before)

    # --- a sandbox's life (needs http.c and session.c to upgrade) -------------------------

    def wait_status(self, gw, sid, status, timeout=10):
        """Poll the list (the state change has no other signal outside the gateway)."""
        deadline = time.monotonic() + timeout
        while True:
            arr = gw.request("GET", "/api/v3/sandboxes")[1]
            e = [x for x in arr if x["id"] == sid]
            if e and e[0]["status"] == status:
                return e[0]
            if time.monotonic() > deadline:
                raise AssertionError("%s not %s within %ds: %r" % (sid, status, timeout, e))
            time.sleep(0.05)

    def create(self, gw, cfg):
        st, hdrs, body, sock = gw.websocket("/api/v3/sandboxes/create", config=cfg)
        self.assertEqual(st, 101, body)
        sid = hdrs.get("x-deno-sandbox-id", "")
        self.assertTrue(ID_RE.match(sid), hdrs)
        return sid, sock

    def test_create_list_delete(self):
        gw = self.gw
        labels = {"suite": "rest", "n": "1"}
        cfg = {"stop_at_ms": int(time.time() * 1000) + 600000, "memory_mb": 1024,
               "labels": labels, "volumes": [], "allow_net": ["example.com"],
               "secrets": {"K": {"hosts": ["h"], "value": "s3cr3t-value"}}}
        sid, sock = self.create(gw, cfg)
        # The agent at /nonexistent cannot be reached: the session ends, the timed sandbox stays.
        sock.close()
        st, arr, _ = gw.request("GET", "/api/v2/sandboxes?labels%5Bsuite%5D=rest")
        self.assertEqual(st, 200)
        mine = [e for e in arr if e["id"] == sid]
        self.assertEqual(len(mine), 1, arr)
        e = mine[0]
        self.assertEqual(e["labels"], labels)
        self.assertEqual(e["status"], "running")
        self.assertIsNone(e["stoppedAt"])
        self.assertEqual(e["region"], "ord")
        self.assertEqual(e["memoryMb"], 1024)
        self.assertRegex(e["createdAt"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertEqual(gw.request("GET", "/api/v2/sandboxes?labels%5Bsuite%5D=other")[1], [])
        self.assertEqual(gw.request("GET", "/api/v2/sandboxes?labels%5Bsuite%5D=rest&"
                                    "labels%5Bn%5D=2")[1], [])
        # The state file exists, 0600, without the secret's value.
        path = os.path.join(self.data, "sandboxes", sid + ".json")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        with open(path) as f:
            text = f.read()
        self.assertEqual(json.loads(text)["id"], sid)
        self.assertNotIn("s3cr3t-value", text)
        # Extend: a past time is refused, a future one answered with the deadline in force.
        st, body, _ = gw.request("PATCH", "/api/v3/sandbox/" + sid, body={"stop_at_ms": 1000})
        self.assertEqual(st, 400, body)
        self.assertEqual(gw.request("PATCH", "/api/v3/sandbox/" + sid, body="{}")[0], 400)
        want = int(time.time() * 1000) + 300000
        st, body, _ = gw.request("PATCH", "/api/v3/sandbox/" + sid, body={"stop_at_ms": want})
        self.assertEqual((st, body), (200, {"stop_at_ms": want}))
        # Kill: 2xx and the entry is stopped; connect then says not found.
        st, body, _ = gw.request("DELETE", "/api/v3/sandbox/" + sid)
        self.assertTrue(200 <= st < 300, (st, body))
        e = self.wait_status(gw, sid, "stopped")
        self.assertIsNotNone(e["stoppedAt"])
        st, _, body, _ = gw.websocket("/api/v3/sandbox/%s/connect" % sid)
        self.assertEqual(st, 404, body)
        self.assertEqual(gw.request("PATCH", "/api/v3/sandbox/" + sid,
                                    body={"stop_at_ms": want})[0], 404)
        # DELETE again (Python's plural route) is not an error.
        self.assertEqual(gw.request("DELETE", "/api/v3/sandboxes/" + sid)[0], 200)

    def test_session_sandbox_ends_with_its_session(self):
        sid, sock = self.create(self.gw, {"labels": {"t": "session"}})
        sock.close()
        self.wait_status(self.gw, sid, "stopped")

    def test_restart_keeps_timed_sandboxes(self):
        data = os.path.join(self.tmp, "restart-sb")
        gw = Gateway(data)
        try:
            timed, s1 = self.create(gw, {"stop_at_ms": int(time.time() * 1000) + 600000})
            s1.close()
            session, s2 = self.create(gw, {})
        finally:
            self.assertEqual(gw.stop(), 0)
        s2.close()
        gw = Gateway(data)
        try:
            arr = {e["id"]: e for e in gw.request("GET", "/api/v3/sandboxes")[1]}
            self.assertEqual(arr[timed]["status"], "running", arr)
            self.assertEqual(arr[session]["status"], "stopped", arr)
        finally:
            self.assertEqual(gw.stop(), 0)

    def test_kill_closes_websocket(self):
        """With a real agent (build/bin/sbx-agent on a unix socket) the session stays up until
        DELETE, which closes it with 1000."""
        agent_bin = os.path.join(BUILD, "bin", "sbx-agent")
        if not os.access(agent_bin, os.X_OK) or os.geteuid() != 0:
            self.skipTest("needs build/bin/sbx-agent and root")
        sockp = os.path.join(self.tmp, "agent.sock")
        agent = subprocess.Popen([agent_bin, "--listen", "unix:" + sockp],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        gw = None
        try:
            deadline = time.monotonic() + 10
            while not os.path.exists(sockp):  # the agent has no readiness signal but its socket
                self.assertLess(time.monotonic(), deadline, "sbx-agent did not listen")
                time.sleep(0.02)
            global BACKEND
            saved, BACKEND = BACKEND, "addr:unix:" + sockp
            try:
                gw = Gateway(os.path.join(self.tmp, "real-agent"), "--user", "root", "--cwd",
                             "/tmp")
            finally:
                BACKEND = saved
            sid, sock = self.create(gw, {"stop_at_ms": int(time.time() * 1000) + 600000})
            st, _, _ = gw.request("DELETE", "/api/v3/sandbox/" + sid)
            self.assertEqual(st, 200)
            sock.settimeout(10)
            got = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += chunk
            sock.close()
            i = got.find(b"\x88")  # the close frame: FIN + opcode 8, then EOF
            self.assertGreaterEqual(i, 0, got)
            self.assertEqual(got[i + 2:i + 4], b"\x03\xe8", got)  # code 1000
            self.wait_status(gw, sid, "stopped")
        finally:
            if gw is not None:
                self.assertEqual(gw.stop(), 0)
            agent.terminate()
            agent.wait(timeout=10)


if __name__ == "__main__":
    if len(sys.argv) > 1 and not sys.argv[1].startswith("-"):
        BUILD = sys.argv.pop(1)
    unittest.main(verbosity=2)
