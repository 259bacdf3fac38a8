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
    wait_for_listen(path)


def wait_for_listen(path):
    """The socket file appears at bind(), a moment before listen(): until then connecting is
    refused, and the CLI (rightly) does not retry that."""
    deadline = time.time() + 10
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        try:
            s.connect(path)
            return
        except (ConnectionRefusedError, BlockingIOError):
            if time.time() > deadline:
                raise
            time.sleep(0.01)
        finally:
            s.close()


class CliCase(unittest.TestCase):
    """A fresh agent per test; self.sbx(...) runs the CLI against it."""

    def setUp(self):
        self.agent = w.Agent(AGENT)
        self.addr = self.agent.addr
        wait_for_listen(self.agent.sock)

    def tearDown(self):
        self.agent.finish(self, None)

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
        self.agent = w.Agent(AGENT, env=dict(os.environ, SBX_AGENT_TOKEN="s3cret"))
        self.addr = self.agent.addr
        r = self.sbx("ping")
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"AUTH", r.stderr)
        r = self.sbx("--token", "s3cret", "ping")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = subprocess.run([SBX, "-c", self.addr, "ping"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=dict(os.environ, SBX_TOKEN="s3cret"))
        self.assertEqual(r.returncode, 0, r.stderr)
        # From a file, so the token is not on the host's command line either.
        path = os.path.join(self.agent.dir, "token")
        with open(path, "w") as f:
            f.write("s3cret\n")
        r = self.sbx("--token-file", path, "ping")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.sbx("--token-file", path + ".missing", "ping")
        self.assertEqual(r.returncode, 2)
        self.assertIn(b"--token-file", r.stderr)

    def test_help(self):
        for cmd in ("exec", "sh", "shell", "ping", "info", "hello", "env", "ps", "kill", "wait",
                    "call"):
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


class TestCliPty(CliCase):
    """sbx exec -t / sbx shell without a local terminal: stdio are pipes or /dev/null."""

    def test_default_size_and_term(self):
        r = self.sbx("exec", "-t", "--", "sh", "-c", "test -t 0 && test -t 1 && stty size")
        self.assertEqual((r.returncode, r.stdout, r.stderr), (0, b"24 80\r\n", b""))
        r = self.sbx("sh", "-t", "test -t 2 && echo err >&2")  # stderr is the terminal too
        self.assertEqual((r.returncode, r.stdout, r.stderr), (0, b"err\r\n", b""))
        env = {k: v for k, v in os.environ.items() if k != "TERM"}
        r = self.sbx("shell", "--", "sh", "-c", "echo $TERM", env=env)
        self.assertEqual(r.stdout, b"xterm-256color\r\n")
        r = self.sbx("shell", "--", "sh", "-c", "echo $TERM", env=dict(env, TERM="vt100"))
        self.assertEqual(r.stdout, b"vt100\r\n")
        r = self.sbx("shell", "--", "sh", "-c", "echo $TERM", env=dict(env, TERM="bad term"))
        self.assertEqual(r.stdout, b"xterm-256color\r\n")

    def test_exit_status(self):
        r = self.sbx("shell", "--", "sh", "-c", "exit 7")
        self.assertEqual(r.returncode, 7, r.stderr)
        r = self.sbx("shell", "--", "sh", "-c", "kill -KILL $$")
        self.assertEqual(r.returncode, 128 + 9)
        r = self.sbx("shell", "--", "no-such-command-xyz")
        self.assertEqual(r.returncode, 127)
        self.assertIn(b"(ENOENT, stage exec)", r.stderr)
        r = self.sbx("exec", "-t", "--timeout", "300ms", "sleep", "10")
        self.assertEqual(r.returncode, 128 + signal.SIGTERM)
        self.assertIn(b"timed out", r.stderr)

    def test_options(self):
        r = self.sbx("shell", "--env", "FOO=bar baz", "--cwd", "/tmp", "--",
                     "sh", "-c", 'echo "$FOO|$(pwd)"')
        self.assertEqual((r.returncode, r.stdout), (0, b"bar baz|/tmp\r\n"))
        r = self.sbx("shell", "--clear-env", "--env", "ONLY=1", "--", "/usr/bin/env",
                     env=dict(os.environ, TERM="vt100"))
        self.assertEqual(sorted(r.stdout.split(b"\r\n")), [b"", b"ONLY=1", b"TERM=vt100"])
        if os.geteuid() == 0:
            r = self.sbx("shell", "--user", "65534:65534", "--", "id", "-u")
            self.assertEqual(r.stdout, b"65534\r\n")
        r = self.sbx("shell", "--no-stdin")  # exec's options that make no sense here are refused
        self.assertEqual(r.returncode, 125)
        self.assertIn(b"Usage: sbx shell", r.stderr)

    def test_piped_input_ends_with_ctrl_d(self):
        # Local EOF becomes ^D: cat ends; after an unfinished line a second ^D is needed.
        r = self.sbx("exec", "-t", "cat", stdin=None, input=b"hello\nabc", timeout=10)
        self.assertEqual(r.returncode, 0, r.stderr)
        # The terminal's echo and cat's copy, in either order.
        self.assertEqual(r.stdout.count(b"hello\r\n"), 2, r.stdout)
        self.assertEqual(r.stdout.count(b"abc"), 2, r.stdout)
        r = self.sbx("shell", "--", "sh", stdin=None, input=b"echo $((6*7))\nexit 3\n",
                     timeout=10)
        self.assertEqual(r.returncode, 3)
        self.assertIn(b"42\r\n", r.stdout)  # after the echo and a prompt
        # /dev/null: ^D at once, so even the default login shell ends at its first prompt.
        r = self.sbx("shell", timeout=10)
        self.assertEqual(r.returncode, 0, r.stderr)
        # --no-stdin sends nothing, not even ^D: cat waits until it is killed.
        r = self.sbx("exec", "-t", "-n", "--timeout", "500ms", "cat", stdin=None, input=b"x\n",
                     timeout=10)
        self.assertEqual((r.returncode, r.stdout), (128 + signal.SIGTERM, b""))

    def spawn_ready(self, script):
        """Start `sbx shell -- sh -c SCRIPT` and wait for the "ready" line it prints."""
        p = subprocess.Popen([SBX, "-c", self.addr, "shell", "--", "sh", "-c", script],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        self.addCleanup(p.stderr.close)
        self.addCleanup(p.stdout.close)
        self.addCleanup(lambda: p.poll() is not None or (p.kill(), p.wait()))
        out = read_until_eof(p.stdout, 10, stop=b"\n")
        self.assertEqual(out, b"ready\r\n", p.poll())
        return p

    def test_signal_forwarding(self):
        # Without a local terminal, SIGINT sent to sbx still reaches the remote group.
        p = self.spawn_ready("trap 'echo INT; exit 9' INT; echo ready; "
                             "while :; do sleep 0.05; done")
        p.send_signal(signal.SIGINT)
        self.assertEqual(read_until_eof(p.stdout, 10), b"INT\r\n")
        self.assertEqual(p.wait(10), 9)
        # SIGTERM hangs up: sbx exits 143 at once, the remote group gets SIGHUP (an interactive
        # shell ignores SIGTERM; this one does too).
        p = self.spawn_ready("trap '' TERM; echo ready; while :; do sleep 0.05; done")
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(10), 128 + signal.SIGTERM)
        self.assertEqual(self.remote_exit("trap '' TERM")["signal"], "SIGHUP")

    def remote_exit(self, needle, timeout=10):
        deadline = time.time() + timeout
        while True:
            procs = [q for q in self.json("ps")["procs"] if needle in " ".join(q["argv"])]
            if procs and procs[0]["state"] != "running":
                return procs[0]["exit"]
            self.assertLess(time.time(), deadline, "the remote process is still running")
            time.sleep(0.05)


class TestCliKeepalive(CliCase):
    """--keepalive: a silent agent is pinged, and one that answers nothing (a stopped VM, here a
    stopped agent; or a wedged one) is given up after three intervals, where sbx waited for
    ever."""
    GIVEN_UP = b"nothing from the agent within 400 ms of a ping"

    def test_silent_but_live_agent_is_kept(self):
        r = self.sbx("--keepalive", "100ms", "exec", "--", "sh", "-c", "sleep 1.5; echo done")
        self.assertEqual((r.returncode, r.stdout), (0, b"done\n"), r.stderr)
        ident = self.sbx("exec", "--detach", "--", "sleep", "1.5").stdout.decode().strip()
        r = self.sbx("--keepalive", "100ms", "wait", ident)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_stopped_agent_ends_exec(self):
        p = subprocess.Popen([SBX, "-c", self.addr, "--keepalive", "200ms", "exec", "--", "sh",
                              "-c", "echo up; sleep 60"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        self.assertEqual(p.stdout.readline(), b"up\n")
        with self.agent.stopped():
            rc = p.wait(30)
        err = p.stderr.read()
        p.stdout.close()
        p.stderr.close()
        self.assertEqual(rc, 125, err)
        self.assertIn(self.GIVEN_UP, err)
        self.assertIn(b"TIMEOUT", err)

    def test_agent_that_answers_nothing_ends_wait(self):
        ident = self.sbx("exec", "--detach", "--", "sleep", "60").stdout.decode().strip()
        self.addCleanup(self.sbx, "kill", "-s", "KILL", ident)
        d = tempfile.mkdtemp(prefix="sbx-ka-")
        self.addCleanup(shutil.rmtree, d, True)
        # Everything after the client asked proc.wait is dropped, the pings' answers too.
        relay = w.Relay(self.agent.sock, os.path.join(d, "relay.sock"),
                        lambda msg, asked: None if "proc.wait" in asked.values() else msg)
        self.addCleanup(relay.close)
        r = self.sbx("--keepalive", "200ms", "wait", ident, addr=relay.addr, timeout=30)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn(self.GIVEN_UP, r.stderr)

    def test_bad_keepalive(self):
        r = self.sbx("--keepalive", "soon", "ping")
        self.assertEqual(r.returncode, 2)
        self.assertIn(b"bad --keepalive", r.stderr)
        r = self.sbx("--keepalive", "0", "ping")
        self.assertEqual(r.returncode, 0, r.stderr)


class TestCliKeepaliveCallerAway(CliCase):
    """The keepalive's clock runs only while sbx waits on the agent: sbx away from it for more
    than three intervals (reading a line, stopped, blocked on its own stdout) found the agent
    quiet and gave it up at once, without a ping."""
    QUIET = (b"nothing from the agent", b"took none of our bytes")

    def assert_kept(self, rc, out, err, want_out):
        for text in self.QUIET:
            self.assertNotIn(text, err)
        self.assertEqual((rc, out), (0, want_out), err)

    def test_stopped_then_continued(self):
        p = subprocess.Popen([SBX, "-c", self.addr, "--keepalive", "300ms", "exec", "--", "sh",
                              "-c", "echo up; sleep 3; echo done"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        self.assertEqual(p.stdout.readline(), b"up\n")
        os.kill(p.pid, signal.SIGSTOP)
        time.sleep(1.5)
        os.kill(p.pid, signal.SIGCONT)
        out, err = p.communicate(timeout=30)
        self.assert_kept(p.returncode, out, err, b"done\n")

    def test_repl_user_thinks_between_lines(self):
        src = subprocess.Popen(["sh", "-c", "echo 1+1; sleep 1.5; echo 2+2"],
                               stdout=subprocess.PIPE)
        p = subprocess.run([SBX, "-c", self.addr, "--keepalive", "300ms", "repl", "python3"],
                           stdin=src.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=60)
        src.wait()
        src.stdout.close()
        self.assert_kept(p.returncode, p.stdout, p.stderr, b"2\n4\n")

    def test_fs_write_from_a_slow_stdin(self):
        dest = os.path.join(self.agent.dir, "slow")
        src = subprocess.Popen(["sh", "-c", "echo a; sleep 1.5; echo b"], stdout=subprocess.PIPE)
        p = subprocess.run([SBX, "-c", self.addr, "--keepalive", "300ms", "fs", "write", dest],
                           stdin=src.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=60)
        src.wait()
        src.stdout.close()
        self.assert_kept(p.returncode, p.stdout, p.stderr, b"")
        with open(dest, "rb") as f:
            self.assertEqual(f.read(), b"a\nb\n")

    def test_exec_output_to_a_slow_reader(self):
        # All of the output is inside libsbx when sbx blocks on its stdout (a pipe nobody reads
        # for 1.5 s); the command then sleeps, the agent quiet and alive.
        p = subprocess.Popen([SBX, "-c", self.addr, "--keepalive", "200ms", "exec", "--", "sh",
                              "-c", "head -c 70000 /dev/zero; sleep 2; echo end"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(1.5)
        out, err = p.communicate(timeout=30)
        self.assert_kept(p.returncode, out[-4:], err, b"end\n")
        self.assertEqual(len(out), 70004)


class TestCliAgentTakesNothing(CliCase):
    """exec against an agent that announces a stream window of 2^32-1 and then reads nothing
    more (a relay stops passing the CLI's bytes on once proc.spawn is answered): sbx's write of
    its stdin waits inside libsbx for ever, where its loop cannot act on signals. The handler
    must end it itself."""

    def stuck_exec(self, opts=("--keepalive", "0")):
        d = tempfile.mkdtemp(prefix="sbx-stuck-")
        self.addCleanup(shutil.rmtree, d, True)

        def edit(msg, asked):
            if msg[0] == 1 and msg[2] is None and asked.get(msg[1]) == "hello":
                res = dict(msg[3])
                res["limits"] = dict(res["limits"], stream_window=0xFFFFFFFF)
                return [1, msg[1], None, res]
            if msg[0] == 1 and asked.get(msg[1]) == "proc.spawn":
                relay.held.set()
            return msg
        relay = w.Relay(self.agent.sock, os.path.join(d, "relay.sock"), edit)
        self.addCleanup(relay.close)
        p = subprocess.Popen([SBX, "-c", relay.addr, *opts, "exec", "cat"],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        self.addCleanup(self.end, p)
        # Feed stdin until nothing moves for a second: sbx no longer reads it, stuck writing.
        os.set_blocking(p.stdin.fileno(), False)
        sent, stuck_since, deadline = 0, None, time.time() + 60
        while time.time() < deadline and (stuck_since is None or time.time() - stuck_since < 1):
            try:
                sent += os.write(p.stdin.fileno(), b"x" * 65536)
                stuck_since = None
            except BlockingIOError:
                stuck_since = stuck_since or time.time()
                time.sleep(0.05)
        self.assertTrue(relay.held.is_set(), "proc.spawn was never answered")
        self.assertGreater(sent, 1 << 20)  # more than the CLI's socket buffer: it is stuck
        self.assertIsNone(p.poll())
        return p

    @staticmethod
    def end(p):
        if p.poll() is None:
            p.kill()
        p.wait()
        p.stdin.close()
        p.stderr.close()

    def wait_rc(self, p, what):
        try:
            return p.wait(30)
        except subprocess.TimeoutExpired:
            self.fail("sbx exec outlived %s while stuck writing to the agent" % what)

    def test_keepalive_gives_up_a_write_nobody_takes(self):
        # No ping can go while a write is stuck: three intervals in which the agent took none
        # of our bytes and sent none end it (the loop polled at once, over and over, until then).
        p = self.stuck_exec(("--keepalive", "2s"))
        self.assertEqual(self.wait_rc(p, "its keepalive"), 125)
        self.assertIn(b"the agent took none of our bytes and sent none for 6000 ms",
                      p.stderr.read())

    def test_third_sigint_exits_130(self):
        p = self.stuck_exec()
        for _ in range(3):
            p.send_signal(signal.SIGINT)
            time.sleep(0.2)
        self.assertEqual(self.wait_rc(p, "three SIGINTs"), 128 + signal.SIGINT)
        self.assertIn(b"sbx: exec cat: interrupted 3 times, giving up", p.stderr.read())

    def test_second_sigterm_sighup_sigquit_ends_it(self):
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            p = self.stuck_exec()
            p.send_signal(sig)
            time.sleep(0.2)
            p.send_signal(sig)
            self.assertEqual(self.wait_rc(p, "two %s" % sig.name), 128 + sig)


def read_line(s):
    """One line from socket @s; fails at EOF instead of looping on it."""
    line = b""
    while not line.endswith(b"\n"):
        b = s.recv(1)
        if not b:
            raise AssertionError("EOF after %r" % line)
        line += b
    return line


def read_until_eof(f, timeout, stop=None):
    """Read a pipe until EOF (or until @stop was read), failing after @timeout seconds."""
    out = b""
    deadline = time.time() + timeout
    while stop is None or stop not in out:
        left = deadline - time.time()
        if left <= 0 or not select.select([f], [], [], left)[0]:
            raise AssertionError("no EOF after %ss; read %r" % (timeout, out))
        b = os.read(f.fileno(), 65536)
        if not b:
            break
        out += b
    return out


TMUX = shutil.which("tmux")


class TmuxCase(CliCase):
    """A private tmux server per test (its own socket directory), killed afterwards."""

    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp(prefix="sbx-tmux-")
        self.server = "sbx-%s-%d" % (type(self).__name__, os.getpid())
        self.env = {k: v for k, v in os.environ.items() if k != "TMUX"}
        self.env["TMUX_TMPDIR"] = self.dir

    def tearDown(self):
        subprocess.run([TMUX, "-L", self.server, "kill-server"], env=self.env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)
        super().tearDown()

    def tmux(self, *args):
        r = subprocess.run([TMUX, "-L", self.server, "-f", "/dev/null", *args], env=self.env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout.decode()


@unittest.skipIf(TMUX is None, "needs tmux")
class TestCliShellTmux(TmuxCase):
    """sbx shell on a real terminal: a detached tmux session on a private server.

    The pane runs a script, not an interactive shell, so nothing but sbx touches the terminal
    settings: `stty -g` before and after sbx must match."""


    def path(self, name):
        return os.path.join(self.dir, name)

    def start(self, sbx_args):
        """Run `sbx SBX_ARGS` in a 100x30 pane; the script records the terminal around it."""
        with open(self.path("run.sh"), "w") as f:
            f.write('cd "%s"\n' % self.dir)
            f.write('stty -g > before\necho "$TERM" > term\n')
            f.write('"%s" -c "%s" %s\n' % (SBX, self.addr, sbx_args))
            f.write('rc=$?\nstty -g > after\nstty -a > after.txt\n')
            f.write('echo "$rc" > rc.tmp; mv rc.tmp rc\nexec sleep 1000\n')  # rc: all done
        self.tmux("new-session", "-d", "-x", "100", "-y", "30", "-s", "t",
                  "sh " + self.path("run.sh"))
        self.tty = self.tmux("display-message", "-p", "-t", "t", "#{pane_tty}").strip()

    def screen(self):
        return self.tmux("capture-pane", "-p", "-t", "t")

    def wait_screen(self, needle, timeout=10, end=False):
        """Wait for a line of the pane that is exactly @needle (trailing blanks aside), or that
        ends with it (@end: typed-ahead input can put a prompt before output)."""
        deadline = time.time() + timeout
        while True:
            text = self.screen()
            lines = text.splitlines()
            if needle in lines or (end and any(x.endswith(needle) for x in lines)):
                return text
            self.assertLess(time.time(), deadline, "waiting for %r on:\n%s" % (needle, text))
            time.sleep(0.05)

    def keys(self, *keys):
        self.tmux("send-keys", "-t", "t", *keys)

    def wait_rc(self, timeout=10):
        deadline = time.time() + timeout
        while not os.path.exists(self.path("rc")):
            self.assertLess(time.time(), deadline, "sbx did not exit:\n" + self.screen())
            time.sleep(0.05)
        with open(self.path("rc")) as f:
            return int(f.read())

    def stty_a(self):
        r = subprocess.run(["stty", "-a", "-F", self.tty], stdout=subprocess.PIPE, timeout=10)
        return r.stdout.decode()

    def assert_restored(self):
        with open(self.path("before")) as f:
            before = f.read()
        with open(self.path("after")) as f:
            self.assertEqual(f.read(), before, "the terminal settings were not restored")
        with open(self.path("after.txt")) as f:
            text = f.read().split()
        self.assertIn("icanon", text)
        self.assertIn("echo", text)

    def test_shell_session(self):
        self.start("shell --env 'PS1=sbx$ ' -- sh")
        self.wait_screen("sbx$")  # tmux drops the blank at the end of the prompt
        a = self.stty_a().split()
        self.assertIn("-icanon", a)  # raw while sbx runs
        self.assertIn("-echo", a)
        self.keys("echo $((6*7)); echo T=$TERM; stty size", "Enter")
        lines = self.wait_screen("30 100").splitlines()
        self.assertIn("42", lines)
        with open(self.path("term")) as f:
            self.assertIn("T=" + f.read().strip(), lines)
        # A window size change reaches the remote terminal.
        self.tmux("resize-window", "-t", "t", "-x", "120", "-y", "40")
        self.keys("clear; stty size", "Enter")
        self.wait_screen("40 120")
        # Typed ^C is a byte for the remote line discipline: it interrupts the remote command
        # and neither sbx nor the session.
        self.keys("clear; echo started; sleep 100; echo slept", "Enter")
        self.wait_screen("started")
        time.sleep(0.1)  # let sleep start (a ^C before it interrupts the shell: also 130)
        self.keys("C-c")
        self.keys("echo rc=$?", "Enter")
        text = self.wait_screen("rc=130", end=True)
        self.assertNotIn("slept", text.splitlines())
        self.keys("exit 4", "Enter")
        self.assertEqual(self.wait_rc(), 4)
        self.assert_restored()

    def test_ctrl_d_ends_the_shell(self):
        self.start("shell --env 'PS1=sbx$ ' -- sh")
        self.wait_screen("sbx$")
        self.keys("C-d")
        self.assertEqual(self.wait_rc(), 0)
        self.assert_restored()

    def test_exec_t(self):
        self.start("exec -t -- sh -c 'test -t 0 && stty size; exit 5'")
        self.assertEqual(self.wait_rc(), 5)
        self.assertIn("30 100", self.screen().splitlines())
        self.assert_restored()

    def test_sigterm_restores_terminal(self):
        self.start("shell --env 'PS1=sbx$ ' -- sh")
        self.wait_screen("sbx$")
        self.assertIn("-icanon", self.stty_a().split())
        pane = int(self.tmux("display-message", "-p", "-t", "t", "#{pane_pid}"))
        kids = children(pane)
        self.assertEqual(len(kids), 1, kids)  # the script waits for sbx, its only child
        os.kill(kids[0], signal.SIGTERM)
        self.assertEqual(self.wait_rc(), 128 + signal.SIGTERM)
        self.assert_restored()
        # The remote shell was hung up, as a closing terminal would.
        deadline = time.time() + 10
        while True:
            procs = self.json("ps")["procs"]
            if procs and procs[0]["state"] != "running":
                break
            self.assertLess(time.time(), deadline, "the remote shell is still running")
            time.sleep(0.05)
        self.assertEqual(procs[0]["exit"]["signal"], "SIGHUP")


def children(pid):
    """The pids whose parent is @pid (from /proc/*/stat)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
            out.append(int(d))
    return out


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
        line = read_line(s)
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
            line = read_line(s)
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
