#!/usr/bin/env python3
"""Integration tests: `sbx exec --detach`, `sbx attach` (proc.attach, PROTOCOL.md §14.9) and the
new `sbx ps` columns, against the real sbx-agent over a unix socket."""
import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
import unittest
import warnings

warnings.simplefilter("ignore", ResourceWarning)

sys.path.insert(0, os.path.dirname(__file__))
from test_cli import SBX, CliCase  # noqa: E402

DROPPED = re.compile(rb"sbx: attach: (\d+) bytes of (stdout|stderr) were dropped before offset "
                     rb"(\d+)")


class AttachCase(CliCase):
    """Detached processes are killed before the agent stops."""

    def setUp(self):
        super().setUp()
        self.started = []

    def tearDown(self):
        for ident in self.started:
            self.sbx("kill", "-s", "KILL", "--group", ident)
        super().tearDown()

    def detach(self, *args):
        r = self.sbx(*args)
        self.assertEqual(r.returncode, 0, r.stderr)
        ident = r.stdout.decode().strip()
        self.assertRegex(ident, r"^[0-9]+$")
        self.started.append(ident)
        return ident

    def entry(self, ident):
        return [p for p in self.json("ps")["procs"] if str(p["id"]) == ident][0]

    def wait_state(self, ident, state):
        deadline = time.time() + 10
        while self.entry(ident)["state"] != state:
            self.assertLess(time.time(), deadline, "process %s never got %s" % (ident, state))
            time.sleep(0.05)

    def attach(self, *args, **kw):
        return subprocess.Popen([SBX, "-c", self.addr, "attach", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, **kw)


class TestCliAttachUsage(CliCase):
    def test_help_and_usage_errors(self):
        r = subprocess.run([SBX, "attach", "--help"], stdout=subprocess.PIPE)
        self.assertEqual(r.returncode, 0)
        self.assertIn(b"Usage: sbx attach", r.stdout)
        self.assertIn(b"--steal", r.stdout)
        r = subprocess.run([SBX, "exec", "--help"], stdout=subprocess.PIPE)
        self.assertIn(b"--detach", r.stdout)
        # attach passes the remote status through, so its own failures are 125, as exec's
        for args in ([], ["x"], ["0"], ["1", "2"], ["--bogus", "1"], ["--from"]):
            r = self.sbx("attach", *args)
            self.assertEqual(r.returncode, 125, args)
            self.assertIn(b"Usage: sbx attach", r.stderr, args)
        r = self.sbx("attach", "--from", "-3", "1")
        self.assertEqual(r.returncode, 125)
        self.assertIn(b"bad --from", r.stderr)
        r = self.sbx("attach", "--stderr-from", "x", "1")
        self.assertIn(b"bad --stderr-from", r.stderr)
        r = self.sbx("exec", "--detach")
        self.assertEqual(r.returncode, 125)
        self.assertIn(b"missing the command", r.stderr)
        r = self.sbx("attach", "4242")
        self.assertEqual(r.returncode, 125)
        self.assertIn(b"NOT_FOUND", r.stderr)


class TestCliAttach(AttachCase):
    def test_detach_then_attach_with_input(self):
        ident = self.detach("exec", "--detach", "--", "sh", "-c",
                            'echo out; echo err >&2; read x; echo "got $x"; exit 7')
        self.assertEqual(self.entry(ident)["state"], "running")
        a = self.attach(ident, stdin=subprocess.PIPE)
        out, err = a.communicate(b"hi\n", timeout=30)
        self.assertEqual(a.returncode, 7, err)
        self.assertEqual(out, b"out\ngot hi\n")
        self.assertIn(b"err\n", err)
        self.assertNotIn(b"dropped", err)

    def test_detach_json_and_sh(self):
        r = self.sbx("--json", "sh", "--detach", "-n", "sleep 30")
        self.assertEqual(r.returncode, 0, r.stderr)
        d = json.loads(r.stdout)
        self.assertEqual(sorted(d), ["id", "pid"])
        self.started.append(str(d["id"]))
        e = self.entry(str(d["id"]))
        self.assertEqual((e["pid"], e["state"]), (d["pid"], "running"))

    def test_attach_after_exit_replays(self):
        ident = self.detach("sh", "--detach", "printf 'a\\nb\\n'; echo c >&2; exit 3")
        self.assertEqual(self.sbx("wait", ident).returncode, 3)
        r = self.sbx("attach", ident)
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertEqual(r.stdout, b"a\nb\n")
        self.assertEqual(r.stderr, b"c\n")
        # From an offset; and beyond the end: nothing, and nothing said dropped.
        r = self.sbx("attach", "--from", "2", "--stderr-from", "5", ident)
        self.assertEqual((r.returncode, r.stdout, r.stderr), (3, b"b\n", b""))
        r = self.sbx("--json", "attach", ident)
        self.assertEqual(r.returncode, 3)
        j = json.loads(r.stdout)
        self.assertEqual((j["stdout"], j["stderr"], j["exit"]["code"]), ("a\nb\n", "c\n", 3))

    def test_dropped_bytes_are_reported(self):
        n = 3 << 20  # beyond any replay ring the agent keeps
        ident = self.detach("sh", "--detach", "-n", "head -c %d /dev/zero | tr '\\0' x" % n)
        self.assertEqual(self.sbx("wait", ident).returncode, 0)
        for args in ([ident], ["--from", "0", ident]):
            r = self.sbx("attach", *args)
            self.assertEqual(r.returncode, 0, r.stderr)
            m = DROPPED.search(r.stderr)
            self.assertIsNotNone(m, r.stderr)
            dropped, start = int(m.group(1)), int(m.group(3))
            self.assertEqual(m.group(2), b"stdout")
            self.assertEqual(dropped, start)
            self.assertEqual(len(r.stdout), n - start)
            self.assertEqual(r.stdout, b"x" * (n - start))
        r = self.sbx("attach", "--from", str(n - 10), ident)
        self.assertEqual((r.stdout, r.stderr), (b"x" * 10, b""))
        e = self.entry(ident)
        self.assertEqual(e["stdout_dropped"], start)
        table = self.sbx("ps").stdout.decode()
        self.assertIn("ATTACHED", table.splitlines()[0])
        self.assertIn("DROPPED", table.splitlines()[0])
        self.assertIn("%d/0" % start, table)

    def test_busy_steal_and_ps(self):
        ident = self.detach("sh", "--detach", "-n",
                            "i=0; while [ $i -lt 100 ]; do echo $i; i=$((i+1)); sleep 0.1; done")
        first = self.attach("-n", ident)
        deadline = time.time() + 10
        while not self.entry(ident).get("attached"):
            self.assertLess(time.time(), deadline)
            time.sleep(0.05)
        table = self.sbx("ps").stdout.decode()
        self.assertRegex(table, r"(?m)^%s .* yes " % ident)
        r = self.sbx("attach", "-n", ident, timeout=10)
        self.assertEqual(r.returncode, 125)
        self.assertIn(b"BUSY", r.stderr)
        second = self.attach("-n", "--steal", ident)
        # The first is cut off (no proc.exit will come for it): it says so and ends.
        out, err = first.communicate(timeout=10)
        self.assertEqual(first.returncode, 125, err)
        self.assertIn(b"attached elsewhere", err)
        self.assertEqual(self.sbx("kill", "-s", "KILL", "--group", ident).returncode, 0)
        out, err = second.communicate(timeout=10)
        self.assertEqual(second.returncode, 128 + 9, err)

    def test_signals_detach_or_proxy(self):
        ident = self.detach("sh", "--detach", "-n", "sleep 60")
        a = self.attach("-n", ident)
        deadline = time.time() + 10
        while not self.entry(ident).get("attached"):
            self.assertLess(time.time(), deadline)
            time.sleep(0.05)
        a.send_signal(signal.SIGINT)
        out, err = a.communicate(timeout=10)
        self.assertEqual(a.returncode, 128 + signal.SIGINT)
        self.assertIn(b"sbx: detached from " + ident.encode(), err)
        self.assertEqual(self.entry(ident)["state"], "running")
        # --sig-proxy: the signal goes to the remote group; attach exits with its status.
        a = self.attach("-n", "--sig-proxy", ident)
        deadline = time.time() + 10
        while not self.entry(ident).get("attached"):
            self.assertLess(time.time(), deadline)
            time.sleep(0.05)
        a.send_signal(signal.SIGTERM)
        out, err = a.communicate(timeout=10)
        self.assertEqual(a.returncode, 128 + signal.SIGTERM, err)
        self.wait_state(ident, "exited")

    def test_pty_window_size_and_detach_keys(self):
        ident = self.detach("exec", "--detach", "-t", "--", "sh")
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
        a = subprocess.Popen([SBX, "-c", self.addr, "attach", "-t", ident], stdin=slave,
                             stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        got = b""

        def read_until(needle, timeout=10):
            nonlocal got
            deadline = time.time() + timeout
            while needle not in got:
                self.assertLess(time.time(), deadline, got)
                r, _, _ = select.select([master], [], [], 0.1)
                if r:
                    try:
                        got += os.read(master, 65536)
                    except OSError:
                        break
            return got

        try:
            time.sleep(0.3)
            os.write(master, b"stty size; echo X$((6*7))\r")
            read_until(b"X42")
            self.assertIn(b"33 101", got)
            # ^\ alone is input (held until the next key tells); ^\ ^D detaches.
            os.write(master, b"\x1c")
            time.sleep(0.2)
            os.write(master, b"\x04")
            read_until(b"detached from " + ident.encode())
            self.assertEqual(a.wait(10), 0)
        finally:
            if a.poll() is None:
                a.kill()
            os.close(master)
        self.assertEqual(self.entry(ident)["state"], "running")
        # Attached again (no terminal here: no raw mode), the shell is still there.
        a = self.attach("-t", ident, stdin=subprocess.PIPE)
        out, err = a.communicate(b"echo again; exit 5\n", timeout=20)
        self.assertEqual(a.returncode, 5, err)
        self.assertIn(b"again", out)


if __name__ == "__main__":
    unittest.main()
