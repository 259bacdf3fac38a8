#!/usr/bin/env python3
"""Integration tests: the sbx CLI (and so libsbx) against the real sbx-agent, directly over a
unix socket and through sbx-fcproxy (the Firecracker hybrid-vsock handshake)."""
import hashlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import warnings

warnings.simplefilter("ignore", ResourceWarning)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import sbxwire as w  # noqa: E402

BUILD = os.environ.get("SBX_BUILD", os.path.join(os.path.dirname(__file__), "../../../build"))
AGENT = os.path.join(BUILD, "bin", "sbx-agent")
SBX = os.path.join(BUILD, "bin", "sbx")
FCPROXY = os.path.join(BUILD, "bin", "sbx-fcproxy")


def wait_for_socket(path, proc):
    deadline = time.time() + 10
    while not os.path.exists(path):
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError("%s did not start" % proc.args[0])
        time.sleep(0.01)


class CliCase(unittest.TestCase):
    """A fresh agent per test; self.sbx(...) runs the CLI against it."""

    def setUp(self):
        self.agent = w.Agent(AGENT)
        self.addr = self.agent.addr

    def tearDown(self):
        alive = self.agent.alive()
        self.agent.stop()
        self.assertTrue(alive, "the agent died during the test:\n" + self.agent.logtext())

    def sbx(self, *args, stdin=subprocess.DEVNULL, addr=None, timeout=60, env=None, **kw):
        cmd = [SBX, "-c", addr or self.addr, *args]
        return subprocess.run(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout, env=env, **kw)

    def json(self, *args, **kw):
        r = self.sbx("--json", *args, **kw)
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)


class TestCliSession(CliCase):
    def test_hello_ping_info(self):
        h = self.json("hello")
        self.assertEqual(h["version"], 1)
        self.assertIn("process", h["capabilities"])
        self.assertEqual(h["limits"]["stream_window"], 1 << 20)
        r = self.sbx("hello")
        self.assertIn(b"capabilities", r.stdout)
        r = self.sbx("ping", "-n", "3")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.count(b"pong from"), 3)
        p = self.json("ping")
        self.assertEqual(p["count"], 1)
        info = self.json("info")
        self.assertEqual(info["agent"], "sbx-agent")
        self.assertEqual(len(info["load"]), 3)
        r = self.sbx("info")
        self.assertIn(b"memory.total_kb", r.stdout)

    def test_call(self):
        r = self.sbx("call", "env.set", '{"name": "X_\\u00e9", "value": "caf\\u00e9"}')
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout), {})
        r = self.sbx("call", "env.get", "-", stdin=None, input=b'{"name":"X_\xc3\xa9"}')
        self.assertEqual(json.loads(r.stdout), {"value": "caf\u00e9"})
        r = self.sbx("--json", "call", "no.such.method")
        self.assertEqual(r.returncode, 1)
        self.assertEqual(json.loads(r.stdout)["error"]["code"], "UNKNOWN_METHOD")
        r = self.sbx("call", "ping", "[1]")
        self.assertEqual(r.returncode, 2)
        r = self.sbx("call", "ping", "{bad json}")
        self.assertEqual(r.returncode, 2)
        self.assertIn(b"bad JSON", r.stderr)

    def test_connect_errors(self):
        r = self.sbx("ping", addr="unix:" + self.agent.sock + ".missing")
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"ENOENT", r.stderr)
        self.assertIn(b".missing", r.stderr)
        r = self.sbx("ping", addr="bogus:x")
        self.assertIn(b"BAD_PARAM", r.stderr)
        r = subprocess.run([SBX, "ping"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env={k: v for k, v in os.environ.items() if k != "SBX_ADDR"})
        self.assertEqual(r.returncode, 2)
        self.assertIn(b"SBX_ADDR", r.stderr)
        r = subprocess.run([SBX, "ping"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=dict(os.environ, SBX_ADDR=self.addr))
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_token(self):
        self.agent.stop()
        self.agent = w.Agent(AGENT, ("--token", "s3cret"))
        self.addr = self.agent.addr
        r = self.sbx("ping")
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"AUTH", r.stderr)
        r = self.sbx("--token", "s3cret", "ping")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = subprocess.run([SBX, "-c", self.addr, "ping"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=dict(os.environ, SBX_TOKEN="s3cret"))
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_help(self):
        for cmd in ("exec", "sh", "ping", "info", "hello", "env", "ps", "kill", "wait", "call"):
            r = subprocess.run([SBX, cmd, "--help"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env={"PATH": os.environ["PATH"]})
            self.assertEqual(r.returncode, 0, cmd)
            self.assertIn(b"Usage: sbx " + cmd.encode(), r.stdout)
        r = subprocess.run([SBX, "--version"], stdout=subprocess.PIPE)
        self.assertIn(b"protocol 1", r.stdout)


class TestCliExec(CliCase):
    def test_output_and_status(self):
        r = self.sbx("exec", "sh", "-c", "echo out; echo err >&2; exit 3")
        self.assertEqual((r.returncode, r.stdout, r.stderr), (3, b"out\n", b"err\n"))
        r = self.sbx("sh", "echo $((6*7))")
        self.assertEqual((r.returncode, r.stdout), (0, b"42\n"))
        r = self.sbx("sh", "kill -KILL $$")
        self.assertEqual(r.returncode, 128 + 9)
        r = self.sbx("exec", "--merge", "sh", "-c", "echo a; echo b >&2")
        self.assertEqual((r.stdout, r.stderr), (b"a\nb\n", b""))

    def test_spawn_errors(self):
        r = self.sbx("exec", "no-such-command-xyz")
        self.assertEqual(r.returncode, 127)
        self.assertIn(b"sbx: exec no-such-command-xyz: ", r.stderr)
        self.assertIn(b"(ENOENT, stage exec)", r.stderr)
        d = tempfile.mkdtemp()
        path = os.path.join(d, "notexec")
        with open(path, "w") as f:
            f.write("#!/bin/sh\n")
        r = self.sbx("exec", path)
        self.assertEqual(r.returncode, 126)
        self.assertIn(b"EACCES", r.stderr)
        r = self.sbx("exec", "--cwd", os.path.join(d, "nope"), "true")
        self.assertEqual(r.returncode, 125)
        self.assertIn(b"stage cwd", r.stderr)
        shutil.rmtree(d)

    def test_stdin_roundtrip_large(self):
        data = os.urandom(3 << 20)  # three windows: credit must flow back
        r = self.sbx("exec", "sha256sum", stdin=None, input=data)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.split()[0].decode(), hashlib.sha256(data).hexdigest())
        r = self.sbx("exec", "cat", stdin=None, input=data)
        self.assertEqual(r.stdout, data)

    def test_stdin_null(self):
        # stdin is /dev/null here, so the process gets "null": cat ends at once.
        r = self.sbx("exec", "cat", timeout=10)
        self.assertEqual((r.returncode, r.stdout), (0, b""))
        r = self.sbx("exec", "-n", "cat", stdin=None, input=b"ignored", timeout=10)
        self.assertEqual((r.returncode, r.stdout), (0, b""))

    def test_large_output(self):
        r = self.sbx("exec", "head", "-c", str(50 << 20), "/dev/zero")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(r.stdout), 50 << 20)

    def test_stdout_closed(self):
        # The reader goes away: sbx cancels the stream, the remote producer is drained, not hung.
        p = subprocess.Popen([SBX, "-c", self.addr, "sh", "yes | head -c 30000000; echo fin >&2"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        p.stdout.read(10)
        p.stdout.close()
        err = p.stderr.read()
        self.assertEqual(p.wait(30), 0)
        self.assertIn(b"fin", err)

    def test_json(self):
        r = self.sbx("--json", "exec", "sh", "-c", "printf 'o\\n'; printf 'e\\001\\377' >&2; exit 5")
        self.assertEqual(r.returncode, 5)
        j = json.loads(r.stdout)
        self.assertEqual(j["exit"]["code"], 5)
        self.assertEqual(j["stdout"], "o\n")
        self.assertEqual(j["stderr"], "e\u0001\ufffd")
        self.assertIn("rusage", j["exit"])

    def test_timeout(self):
        t0 = time.time()
        r = self.sbx("exec", "--timeout", "300ms", "sleep", "10")
        self.assertLess(time.time() - t0, 5)
        self.assertEqual(r.returncode, 128 + signal.SIGTERM)
        self.assertIn(b"timed out", r.stderr)

    def test_env_cwd_user(self):
        r = self.sbx("exec", "--env", "FOO=bar baz", "--env", "LOCALVAR", "--cwd", "/tmp",
                     "sh", "-c", 'echo "$FOO|$LOCALVAR|$(pwd)"',
                     env=dict(os.environ, LOCALVAR="copied"))
        self.assertEqual(r.stdout, b"bar baz|copied|/tmp\n")
        r = self.sbx("exec", "--clear-env", "--env", "ONLY=1", "/usr/bin/env")
        self.assertEqual(r.stdout, b"ONLY=1\n")
        if os.geteuid() == 0:
            r = self.sbx("exec", "--user", "65534:65534", "id", "-u")
            self.assertEqual(r.stdout, b"65534\n")

    def test_signal_forwarding(self):
        p = subprocess.Popen([SBX, "-c", self.addr, "sh", "trap 'echo INT; exit 9' INT; "
                              "echo ready; while :; do sleep 0.05; done"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.assertEqual(p.stdout.readline(), b"ready\n")
        p.send_signal(signal.SIGINT)
        out = p.stdout.read()
        self.assertEqual(p.wait(10), 9)
        self.assertEqual(out, b"INT\n")


class TestCliManage(CliCase):
    def test_env(self):
        r = self.sbx("env", "set", "A=1", "B=two words")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.sbx("env", "get", "B").stdout, b"two words\n")
        lines = self.sbx("env", "list").stdout.splitlines()
        self.assertIn(b"A=1", lines)
        self.assertEqual(self.json("env", "list")["B"], "two words")
        self.assertEqual(self.sbx("exec", "sh", "-c", "echo $A").stdout, b"1\n")
        self.assertEqual(self.sbx("env", "unset", "A", "B").returncode, 0)
        r = self.sbx("env", "get", "A")
        self.assertEqual((r.returncode, r.stdout), (1, b""))
        self.assertEqual(self.sbx("env", "set", "NOEQUALS").returncode, 2)

    def test_ps_kill_wait(self):
        p = subprocess.Popen([SBX, "-c", self.addr, "exec", "-n", "sleep", "30"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 10
        running = []
        while not running and time.time() < deadline:
            procs = self.json("ps")["procs"]
            running = [q for q in procs if q["state"] == "running"]
            time.sleep(0.05)
        self.assertEqual(len(running), 1)
        pid = str(running[0]["id"])
        table = self.sbx("ps").stdout.decode()
        self.assertIn("sleep 30", table)
        self.assertTrue(table.startswith("ID"))
        self.assertEqual(self.sbx("kill", "-s", "KILL", pid).returncode, 0)
        self.assertEqual(p.wait(10), 128 + 9)
        r = self.sbx("wait", pid)
        self.assertEqual(r.returncode, 128 + 9)
        r = self.sbx("--json", "wait", pid)
        self.assertEqual(r.returncode, 128 + 9)
        self.assertEqual(json.loads(r.stdout)["signal"], "SIGKILL")
        r = self.sbx("kill", "99999")
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"NOT_FOUND", r.stderr)
        self.assertEqual(self.sbx("kill", "-s", "NOSIG", pid).returncode, 2)
        r = self.sbx("exec", "sh", "-c", "exit 4")
        ident = [q for q in self.json("ps")["procs"] if q["argv"][-1] == "exit 4"][0]["id"]
        self.assertEqual(self.sbx("wait", str(ident)).returncode, 4)


class TestCliFcProxy(CliCase):
    def setUp(self):
        super().setUp()
        self.fcsock = os.path.join(self.agent.dir, "v.sock")
        self.proxy = subprocess.Popen([FCPROXY, self.fcsock, self.agent.sock, "--port", "1024"])
        wait_for_socket(self.fcsock, self.proxy)

    def tearDown(self):
        self.proxy.terminate()
        self.proxy.wait(5)
        super().tearDown()

    def test_cli_over_fc(self):
        fc = "fc:%s:1024" % self.fcsock
        r = self.sbx("ping", addr=fc)
        self.assertEqual(r.returncode, 0, r.stderr)
        data = os.urandom(2 << 20)
        r = self.sbx("exec", "cat", addr=fc, stdin=None, input=data)
        self.assertEqual(r.stdout, data)
        r = self.sbx("--timeout", "300ms", "ping", addr="fc:%s:99" % self.fcsock)
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"ECONNREFUSED", r.stderr)

    def test_proxy_handshake(self):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10)
        s.connect(self.fcsock)
        s.sendall(b"CONNECT 1024\n")
        line = b""
        while not line.endswith(b"\n"):
            line += s.recv(1)
        self.assertTrue(line.startswith(b"OK "), line)
        self.assertGreaterEqual(int(line[3:]), 1073741824)
        s.close()
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10)
        s.connect(self.fcsock)
        s.sendall(b"HELLO\n")
        self.assertEqual(s.recv(16), b"")  # a bad line is answered by closing

    @unittest.skipUnless(shutil.which("socat"), "needs socat")
    def test_proxy_echo(self):
        echo = os.path.join(self.agent.dir, "echo.sock")
        fcsock = os.path.join(self.agent.dir, "echo-v.sock")
        socat = subprocess.Popen(["socat", "UNIX-LISTEN:%s,fork" % echo, "EXEC:cat"])
        proxy = subprocess.Popen([FCPROXY, fcsock, echo])
        try:
            wait_for_socket(echo, socat)
            wait_for_socket(fcsock, proxy)
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(10)
            s.connect(fcsock)
            s.sendall(b"CONNECT 5\n")
            line = b""
            while not line.endswith(b"\n"):
                line += s.recv(1)
            self.assertTrue(line.startswith(b"OK "))
            payload = os.urandom(4 << 20)  # more than all the socket buffers on the way
            got = b""
            sent = 0
            s.setblocking(False)
            deadline = time.time() + 20
            while len(got) < len(payload):
                self.assertLess(time.time(), deadline, "relay stalled")
                _, wr, _ = select.select([], [s] if sent < len(payload) else [], [], 0)
                if wr:
                    sent += s.send(payload[sent:sent + 65536])
                rd, _, _ = select.select([s], [], [], 0.01)
                if rd:
                    chunk = s.recv(1 << 16)
                    self.assertTrue(chunk)
                    got += chunk
            self.assertEqual(got, payload)
            s.close()
        finally:
            proxy.terminate()
            socat.terminate()
            proxy.wait(5)
            socat.wait(5)


if __name__ == "__main__":
    unittest.main()
