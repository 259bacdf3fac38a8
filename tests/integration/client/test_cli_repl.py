#!/usr/bin/env python3
"""sbx repl against the real agent: --eval, piped stdin, --json, --timeout, and interactive use on
a real terminal (tmux: prompt, ^C interrupts the running code, the session survives)."""
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from test_cli import SBX, CliCase, TmuxCase, w  # noqa: E402

TMUX = shutil.which("tmux")


class TestCliRepl(CliCase):
    def test_eval_prints_output_and_value(self):
        r = self.sbx("repl", "python3", "--eval", "x = 6", "-e", "print('hi'); x * 7")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, b"hi\n42\n")

    def test_eval_error_exit_status(self):
        r = self.sbx("repl", "python3", "-e", "raise ValueError('bad 7')", "-e", "print('not run')")
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"ValueError: bad 7", r.stderr)
        self.assertEqual(r.stdout, b"")
        r = self.sbx("repl", "sh", "-e", "echo out; echo err >&2; exit_code() { return 3; }; "
                                         "exit_code")
        self.assertEqual(r.returncode, 3)
        self.assertEqual(r.stdout, b"out\n")
        self.assertIn(b"err\n", r.stderr)
        self.assertIn(b"exit status 3", r.stderr)

    def test_timeout(self):
        r = self.sbx("repl", "node", "--timeout", "300ms", "-e", "while (true) {}")
        self.assertEqual(r.returncode, 124)
        self.assertIn(b"timeout", r.stderr)

    def test_json(self):
        r = self.sbx("repl", "--json", "python3", "-e", "print('o')\n2 + 2")
        self.assertEqual(r.returncode, 0, r.stderr)
        res = json.loads(r.stdout)
        self.assertEqual((res["value"], res["error"]), ("4", False))
        self.assertEqual(base64.b64decode(res["stdout"]), b"o\n")

    def test_piped_stdin_blocks(self):
        code = b"def f(a):\n    return a * 2\n\nprint(f(4))\nf(5)\nimport sys; sys.stdin.isatty()\n"
        r = self.sbx("repl", "python3", stdin=None, input=code)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, b"8\n10\nTrue\n")
        code = b"for i in 1 2; do\n  echo $i\ndone\n\ncd /tmp\npwd\n"
        r = self.sbx("repl", stdin=None, input=code)  # sh is the default
        self.assertEqual((r.returncode, r.stdout), (0, b"1\n2\n/tmp\n"), r.stderr)

    def test_bad_usage(self):
        self.assertEqual(self.sbx("repl", "--timeout", "0", "-e", "1").returncode, 2)
        self.assertEqual(self.sbx("repl", "sh", "extra").returncode, 2)
        r = self.sbx("repl", "cobol", "-e", "1")
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"language", r.stderr)
        r = self.sbx("repl", "--help")
        self.assertEqual(r.returncode, 0)
        self.assertIn(b"--eval", r.stdout)


class TestCliReplSilentAgent(CliCase):
    """sbx repl against an agent that never answers (a relay drops the repl.eval response or the
    repl.result): a second ^C ends the CLI, and with --timeout it gives up by itself."""

    def relay(self, drop):
        d = tempfile.mkdtemp(prefix="sbx-silent-")
        self.addCleanup(shutil.rmtree, d, True)

        def edit(msg, asked):
            if msg[0] == 1 and asked.get(msg[1]) == drop or msg[0] == 2 and msg[1] == drop:
                return None
            return msg
        relay = w.Relay(self.agent.sock, os.path.join(d, "relay.sock"), edit)
        self.addCleanup(relay.close)
        return relay

    def test_second_ctrl_c_ends_it(self):
        relay = self.relay("repl.eval")
        p = subprocess.Popen([SBX, "-c", relay.addr, "repl", "-e", "echo hi"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        self.addCleanup(lambda: p.poll() is None and p.kill())
        deadline = time.time() + 30
        while "repl.eval" not in relay.asked.values():  # the ^C handler is in place by then
            self.assertLess(time.time(), deadline, "repl.eval was never sent")
            self.assertIsNone(p.poll())
            time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        try:
            out, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.fail("sbx repl outlived two SIGINTs while waiting for an answer")
        self.assertEqual(p.returncode, 128 + signal.SIGINT, err)
        self.assertIn(b"sbx: repl: interrupted twice, giving up", err)

    def test_waits_are_bounded_by_timeout(self):
        for drop in ("repl.eval", "repl.result"):
            with self.subTest(drop=drop):
                relay = self.relay(drop)
                try:
                    r = self.sbx("repl", "--timeout", "1s", "-e", "echo hi", addr=relay.addr,
                                 timeout=90)
                except subprocess.TimeoutExpired:
                    self.fail("sbx repl --timeout 1s still waited for its %s after 90 s" % drop)
                self.assertEqual(r.returncode, 1, r.stderr)
                self.assertIn(b"TIMEOUT", r.stderr)
                if drop == "repl.result":
                    self.assertEqual(r.stdout, b"hi\n")  # streamed before the result was due


@unittest.skipIf(TMUX is None, "tmux is not installed")
class TestCliReplTmux(TmuxCase):
    def wait_screen(self, pred, what, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = self.tmux("capture-pane", "-p", "-t", "t")
            if pred(text.splitlines()):
                return text
            time.sleep(0.05)
        self.fail("screen never showed %s:\n%s" % (what, text))

    def test_interactive_prompt_value_and_ctrl_c(self):
        rc = os.path.join(self.dir, "rc")
        script = os.path.join(self.dir, "run.sh")
        with open(script, "w") as f:
            # ^C reaches the whole foreground group: this script must survive it, sbx handles it.
            f.write('trap "" INT\n"%s" -c "%s" repl python3\necho "rc=$?" > %s\nexec sleep 1000\n'
                    % (SBX,
                       self.addr, rc))
        self.tmux("new-session", "-d", "-x", "100", "-y", "30", "-s", "t", "sh " + script)
        self.wait_screen(lambda ls: any(x.startswith(">>>") for x in ls), "a prompt")
        self.tmux("send-keys", "-t", "t", "n = 20 + 1", "Enter")
        # The next line only once the prompt is back: typed ahead, its echo and the prompt race.
        self.wait_screen(lambda ls: sum(x.startswith(">>>") for x in ls) >= 2, "a second prompt")
        self.tmux("send-keys", "-t", "t", "n * 2", "Enter")
        self.wait_screen(lambda ls: "42" in ls, "the value 42")
        self.tmux("send-keys", "-t", "t", "import time; time.sleep(100)", "Enter")
        time.sleep(0.5)
        self.tmux("send-keys", "-t", "t", "C-c")
        self.wait_screen(lambda ls: "KeyboardInterrupt" in ls, "KeyboardInterrupt")
        self.tmux("send-keys", "-t", "t", "n", "Enter")
        self.wait_screen(lambda ls: "21" in ls, "the session surviving ^C")
        self.tmux("send-keys", "-t", "t", "C-d")
        deadline = time.time() + 15
        while not os.path.exists(rc) and time.time() < deadline:
            time.sleep(0.05)
        self.assertTrue(os.path.exists(rc), self.tmux("capture-pane", "-p", "-t", "t"))
        with open(rc) as f:
            self.assertEqual(f.read().strip(), "rc=0")


if __name__ == "__main__":
    unittest.main()
