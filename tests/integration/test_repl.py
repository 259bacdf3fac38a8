#!/usr/bin/env python3
"""REPL sessions (PROTOCOL.md section 16): the real agent over a unix socket, real interpreters
(sh, bash, python3, node) on real PTYs. A language missing on the machine skips its class."""
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import warnings

warnings.simplefilter("ignore", ResourceWarning)

sys.path.insert(0, os.path.dirname(__file__))
import sbxwire as w  # noqa: E402

BUILD = os.environ.get("SBX_BUILD", os.path.join(os.path.dirname(__file__), "../../build"))
AGENT = os.path.join(BUILD, "bin", "sbx-agent")


class ReplCase(unittest.TestCase):
    def setUp(self):
        self.agent = w.Agent(AGENT)
        self.c = self.agent.connect()
        self.tmp = tempfile.mkdtemp(prefix="sbx-repl-")

    def tearDown(self):
        self.agent.finish(self, self.c, self.tmp)

    def start(self, language, **kw):
        p = {"language": language}
        p.update(kw)
        return self.c.call("repl.start", p)["session"]

    def ev(self, sid, code, **kw):
        p = {"session": sid, "code": code}
        p.update(kw)
        return self.c.call("repl.eval", p)

    def err(self, method, params, conn=None):
        with self.assertRaises(w.RemoteError) as cm:
            (conn or self.c).call(method, params)
        return cm.exception.err

    def stream_eval(self, sid, code, on_data=None, hold=0):
        """Streaming eval: returns (stdout, stderr, result, order of events). With @hold, no
        credit goes back until that many bytes came, then (a second later) all of it at once."""
        rid = self.c.request("repl.eval", {"session": sid, "code": code, "stream": True})
        head = self.c.wait(rid)
        streams = {head["stdout"]: b"", head["stderr"]: b""}
        ended, order, owed = set(), [], {}
        while True:
            m = self.c.recv()
            self.assertIsNotNone(m, "connection closed during a streaming eval")
            if m[0] == 3 and m[1] in streams:
                streams[m[1]] += m[2]
                owed[m[1]] = owed.get(m[1], 0) + len(m[2])
                if sum(owed.values()) >= hold:
                    if hold:
                        time.sleep(1)
                        hold = 0
                    for sid_, n in owed.items():
                        self.c.credit(sid_, n)
                    owed = {}
                order.append(("data", m[1], m[2]))
                if on_data:
                    on_data(m[1] == head["stdout"], streams[m[1]])
            elif m[0] == 2 and m[1] == "stream.end" and m[2]["stream"] in streams:
                ended.add(m[2]["stream"])
                order.append(("end", m[2]["stream"]))
            elif m[0] == 2 and m[1] == "repl.result":
                order.append(("result",))
                self.assertEqual(ended, set(streams), "repl.result before both streams ended")
                self.assertEqual(m[2]["session"], sid)
                self.assertEqual(m[2]["eval"], head["eval"])
                return streams[head["stdout"]], streams[head["stderr"]], m[2], order


class LangMixin:
    """The checks every language passes; subclasses give the code."""
    language = None
    interpreter = None

    def setUp(self):
        if shutil.which(self.interpreter) is None:
            self.skipTest("%s is not installed" % self.interpreter)
        super().setUp()
        self.sid = self.start(self.language)

    def test_state_kept_across_evals(self):
        r = self.ev(self.sid, self.set_x)
        self.assertFalse(r["error"], r)
        r = self.ev(self.sid, self.show_x)
        self.assertFalse(r["error"], r)
        self.assertIn(b"41", r["stdout"] + (r["value"] or "").encode())

    def test_multiline_definitions(self):
        r = self.ev(self.sid, self.multiline)
        self.assertFalse(r["error"], r)
        self.assertEqual(r["stdout"], b"f 0\nf 1\nf 2\n")
        r = self.ev(self.sid, self.call_f)
        self.assertEqual(r["stdout"], b"f 9\n")

    def test_error_reported_with_message(self):
        r = self.ev(self.sid, self.failing)
        self.assertTrue(r["error"], r)
        self.assertFalse(r["timed_out"])
        self.assertIn(self.failing_text, r["error_text"] + r["stderr"].decode())
        r = self.ev(self.sid, self.show_alive)
        self.assertFalse(r["error"], r)

    def test_timeout_interrupts_and_session_survives(self):
        self.ev(self.sid, self.set_x)
        r = self.ev(self.sid, self.forever, timeout_ms=300)
        self.assertTrue(r["timed_out"], r)
        self.assertTrue(r["error"])
        self.assertEqual(r["error_text"], "timeout")
        self.assertGreaterEqual(r["duration_ns"], 300_000_000)
        r = self.ev(self.sid, self.show_x)
        self.assertFalse(r["error"], r)
        self.assertIn(b"41", r["stdout"] + (r["value"] or "").encode())
        # A blocked sleep is interrupted the same way.
        r = self.ev(self.sid, self.sleep_long, timeout_ms=300)
        self.assertTrue(r["timed_out"], r)
        self.assertFalse(self.ev(self.sid, self.show_alive)["error"])

    def test_stdin_is_a_terminal(self):
        r = self.ev(self.sid, self.isatty)
        self.assertIn(b"yes", r["stdout"] + (r["value"] or "").encode(), r)

    def test_dead_interpreter_reported(self):
        pid = [s for s in self.c.call("repl.list")["sessions"] if s["session"] == self.sid][0]["pid"]
        r = self.ev(self.sid, self.exit3)
        self.assertTrue(r["error"], r)
        self.assertEqual(r["error_text"], "interpreter exited (exit status 3)")
        e = self.err("repl.eval", {"session": self.sid, "code": self.show_alive})
        self.assertEqual(e["code"], "NOT_FOUND")
        self.assertEqual(self.c.call("repl.list")["sessions"], [])
        procs = [p for p in self.c.call("proc.list")["procs"] if p["pid"] == pid]
        self.assertEqual(procs[0]["tag"], "repl:%d" % self.sid)
        self.assertEqual(procs[0]["exit"]["code"], 3)

    def test_killed_interpreter_reported_on_next_eval(self):
        pid = [s for s in self.c.call("repl.list")["sessions"] if s["session"] == self.sid][0]["pid"]
        os.kill(pid, 9)
        deadline = time.time() + 10
        while time.time() < deadline and self.c.call("repl.list")["sessions"]:
            time.sleep(0.02)
        e = self.err("repl.eval", {"session": self.sid, "code": self.show_alive})
        self.assertEqual(e["code"], "NOT_FOUND")

    def test_concurrent_eval_is_busy(self):
        gate = os.path.join(self.tmp, "gate")
        rid = self.c.request("repl.eval", {"session": self.sid, "code": self.wait_file(gate)})
        e = self.err("repl.eval", {"session": self.sid, "code": self.show_alive})
        self.assertEqual(e["code"], "BUSY")
        busy = self.c.call("repl.list")["sessions"][0]
        self.assertTrue(busy["busy"])
        open(gate, "w").close()
        r = self.c.wait(rid)
        self.assertFalse(r["error"], r)
        self.assertIn(b"done", r["stdout"])

    def test_stream_mode_delivers_output_as_produced(self):
        gate = os.path.join(self.tmp, "gate")

        def on_data(is_out, sofar):
            # The first line arrives while the code still waits: open the gate only then.
            if is_out and b"first" in sofar and not os.path.exists(gate):
                open(gate, "w").close()

        out, err, res, order = self.stream_eval(self.sid, self.stream_code(gate), on_data)
        self.assertEqual(out, b"first\ndone\n")
        self.assertFalse(res["error"], res)
        self.assertEqual(order[-1], ("result",))
        # Output between evals goes to the next one; a non-streaming eval still works after.
        self.assertFalse(self.ev(self.sid, self.show_alive)["error"])


class TestReplSh(LangMixin, ReplCase):
    language = interpreter = "sh"
    set_x = "x=41; cd /tmp"
    show_x = 'echo "$x $(pwd)"'
    multiline = 'f() {\n  echo "f $1"\n}\nfor i in 0 1 2; do\n  f $i\ndone'
    call_f = "f 9"
    failing = "ls /nonexistent-sbx-dir"
    failing_text = "nonexistent-sbx-dir"
    show_alive = "echo alive"
    forever = "while :; do :; done"
    sleep_long = "sleep 100"
    isatty = "[ -t 0 ] && echo yes"
    exit3 = "exit 3"

    def wait_file(self, path):
        return "while [ ! -e %s ]; do sleep 0.01; done; echo done" % path

    def stream_code(self, path):
        return "echo first; while [ ! -e %s ]; do sleep 0.01; done; echo done" % path

    def test_value_is_exit_status(self):
        r = self.ev(self.sid, "false")
        self.assertEqual((r["value"], r["error"], r["error_text"]), ("1", True, "exit status 1"))
        r = self.ev(self.sid, "true")
        self.assertEqual((r["value"], r["error"], r["error_text"]), ("0", False, None))

    def test_syntax_error_keeps_shell(self):
        r = self.ev(self.sid, "x=7; if")
        self.assertTrue(r["error"])
        self.assertIn(b"syntax error", r["stderr"].lower())
        self.assertEqual(self.ev(self.sid, "echo ok")["stdout"], b"ok\n")

    def test_quotes_and_backslashes_pass_unchanged(self):
        code = "printf '%s\\n' 'it'\"'\"'s' \"a\\\\b\" '$HOME'"
        r = self.ev(self.sid, code)
        self.assertEqual(r["stdout"], b"it's\na\\b\n$HOME\n")

    def test_cwd_env_and_cwd_param(self):
        sid = self.start("sh", cwd=self.tmp, env={"SBX_R": "v"})
        r = self.ev(sid, 'echo "$SBX_R $(pwd)"')
        self.assertEqual(r["stdout"], ("v %s\n" % os.path.realpath(self.tmp)).encode())

    # The code runs at the shell's top level, not inside a driver function (section 16.5).

    def test_positional_parameters_persist(self):
        self.assertFalse(self.ev(self.sid, 'set -- a "b c"')["error"])
        self.assertEqual(self.ev(self.sid, 'echo "$# $2"')["stdout"], b"2 b c\n")
        self.assertFalse(self.ev(self.sid, "shift")["error"])
        self.assertEqual(self.ev(self.sid, 'echo "$# $1"')["stdout"], b"1 b c\n")

    def test_return_at_top_level_ends_the_eval(self):
        r = self.ev(self.sid, "echo before; return 5; echo after", timeout_ms=10000)
        self.assertFalse(r["timed_out"], r)
        self.assertEqual((r["stdout"], r["value"], r["error"], r["error_text"]),
                         (b"before\n", "5", True, "exit status 5"))
        r = self.ev(self.sid, "x=1; return", timeout_ms=10000)
        self.assertEqual((r["value"], r["timed_out"]), ("0", False), r)
        self.assertEqual(self.ev(self.sid, 'echo "ok $x"')["stdout"], b"ok 1\n")

    def test_code_cannot_see_the_control_pipes_and_keeps_its_own_fds(self):
        r = self.ev(self.sid, "readlink /proc/self/fd/3 /proc/self/fd/4 || echo closed")
        self.assertEqual(r["stdout"], b"closed\n", r)
        f = os.path.join(self.tmp, "fd5")
        self.assertFalse(self.ev(self.sid, "exec 5>%s; echo one >&5" % f)["error"])
        self.assertFalse(self.ev(self.sid, "echo two >&5")["error"])
        with open(f, "rb") as fh:
            self.assertEqual(fh.read(), b"one\ntwo\n")

    def test_eval_after_timeout_reports_its_own_status(self):
        r = self.ev(self.sid, "sleep 100", timeout_ms=200)
        self.assertEqual((r["timed_out"], r["value"]), (True, "130"), r)
        r = self.ev(self.sid, "sleep 0.2; echo done; false")
        self.assertEqual((r["stdout"], r["value"], r["timed_out"]), (b"done\n", "1", False), r)


class TestReplBash(TestReplSh):
    language = interpreter = "bash"

    # A program that takes the terminal's foreground for a process group of its own, as a shell
    # with job control puts a job there, and waits.
    FOREGROUND = ("import os, signal, time; signal.signal(signal.SIGTTOU, signal.SIG_IGN); "
                  "signal.signal(signal.SIGHUP, signal.SIG_IGN); "
                  "fd = os.open('/dev/tty', os.O_RDWR); os.setpgid(0, 0); "
                  "os.tcsetpgrp(fd, os.getpgrp()); time.sleep(4711)")

    def test_timeout_reaches_the_foreground_group(self):
        """The eval's command took the terminal's foreground for a group of its own: the
        timeout's SIGINT reaches that group through the terminal (TIOCSIG, not by its number,
        which may be another's by the time it is used)."""
        r = self.ev(self.sid, "%s -c \"%s\"; echo after" % (sys.executable, self.FOREGROUND),
                    timeout_ms=1500)
        self.assertTrue(r["timed_out"], r)
        deadline = time.monotonic() + 10
        while subprocess.run(["pgrep", "-f", "time.sleep.4711"],
                             stdout=subprocess.DEVNULL).returncode == 0:
            self.assertLess(time.monotonic(), deadline, "the foreground group outlived the timeout")
            time.sleep(0.05)

    def test_bash_features(self):
        r = self.ev(self.sid, "declare -A m=([k]=v); echo ${m[k]} ${BASH_VERSION%%.*}")
        self.assertFalse(r["error"], r)
        self.assertTrue(r["stdout"].startswith(b"v "))

    def test_declarations_persist(self):
        # declare/typeset at the top level of an eval make global variables, as at a prompt.
        cases = [
            ("declare -A m=([a]=1 [b]=2)", "echo ${m[b]} ${#m[@]}", b"2 2\n"),
            ("declare -a l=(p q r)", "echo ${l[2]} ${#l[@]}", b"r 3\n"),
            ("declare -i n=5", "n+=1; echo $n", b"6\n"),
            ("declare x=hi", "echo $x", b"hi\n"),
            ("typeset t=ty", "echo $t", b"ty\n"),
            ("declare -x e=ex", "sh -c 'echo $e'", b"ex\n"),
            ("declare -r ro=1", "echo $ro", b"1\n"),
        ]
        for decl, use, out in cases:
            with self.subTest(decl=decl):
                r = self.ev(self.sid, decl)
                self.assertFalse(r["error"], r)
                r = self.ev(self.sid, use)
                self.assertEqual((r["stdout"], r["stderr"], r["value"]), (out, b"", "0"))

    def test_declare_in_a_function_stays_local(self):
        r = self.ev(self.sid, "f() { declare inner=1; local l=2; }; f")
        self.assertFalse(r["error"], r)
        self.assertEqual(self.ev(self.sid, 'echo "[${inner-u}${l-u}]"')["stdout"], b"[uu]\n")
        self.assertEqual(self.ev(self.sid, 'echo "[${FUNCNAME[*]}]"')["stdout"], b"[]\n")

    def test_local_outside_a_function_is_an_error(self):
        r = self.ev(self.sid, "local y=1")
        self.assertEqual((r["value"], r["error"]), ("1", True), r)
        self.assertIn(b"can only be used in a function", r["stderr"])


class TestReplPython(LangMixin, ReplCase):
    language = interpreter = "python3"
    set_x = "x = 41"
    show_x = "x"
    multiline = "def f(a):\n    print('f', a)\n\nfor i in range(3):\n    f(i)\n"
    call_f = "f(9)"
    failing = "def g():\n    raise ValueError('boom 42')\ng()"
    failing_text = "ValueError: boom 42"
    show_alive = "'alive'"
    forever = "while True:\n    pass"
    sleep_long = "import time; time.sleep(100)"
    isatty = "import sys; 'yes' if sys.stdin.isatty() else 'no'"
    exit3 = "import sys; sys.exit(3)"

    def wait_file(self, path):
        return ("import os, time\nwhile not os.path.exists(%r):\n    time.sleep(0.01)\n"
                "print('done')" % path)

    def stream_code(self, path):
        return "print('first')\n" + self.wait_file(path)

    def test_values_are_repr(self):
        self.assertEqual(self.ev(self.sid, "'a' + 'b'")["value"], "'ab'")
        self.assertEqual(self.ev(self.sid, "[1, {'k': None}]")["value"], "[1, {'k': None}]")
        r = self.ev(self.sid, "None")
        self.assertIsNone(r["value"])
        r = self.ev(self.sid, "y = 2\ny * 21")
        self.assertEqual(r["value"], "42")
        r = self.ev(self.sid, "print('p')")
        self.assertEqual((r["value"], r["stdout"]), (None, b"p\n"))

    def test_traceback_names_the_line(self):
        r = self.ev(self.sid, "def h():\n    return 1 / 0\n")
        r = self.ev(self.sid, "h()")
        self.assertIn("ZeroDivisionError", r["error_text"])
        self.assertIn("return 1 / 0", r["error_text"])
        self.assertNotIn("_sbx", r["error_text"])
        r = self.ev(self.sid, "def (:")
        self.assertIn("SyntaxError", r["error_text"])

    def test_output_between_evals_goes_to_the_next_eval(self):
        self.ev(self.sid, "import threading\nthreading.Timer(0.05, lambda: print('late')).start()")
        time.sleep(0.5)
        r = self.ev(self.sid, "print('now')")
        self.assertEqual(r["stdout"], b"late\nnow\n")

    def test_streaming_eval_says_output_before_it_was_cut(self):
        # Output between evals is kept up to 1 MiB and goes first on a streaming eval's
        # stdout: the bytes beyond were dropped, and the result said nothing of it.
        self.ev(self.sid, "import sys, threading\nthreading.Timer(0.1, lambda: (sys.stdout.write("
                          "'x' * (3 << 20)), sys.stdout.flush())).start()")
        time.sleep(1.5)
        out, _, res, _ = self.stream_eval(self.sid, "1")
        self.assertEqual(out[:1 << 20], b"x" * (1 << 20))
        self.assertTrue(res["truncated"], res)
        out, _, res, _ = self.stream_eval(self.sid, "2")
        self.assertFalse(res["truncated"], res)

    def test_large_results_wait_for_a_peer_slow_to_read(self):
        # Three sessions' results of some 3 MiB each come while the client is not reading:
        # over the 8 MiB bound on unsent control output, which closed the connection and lost
        # all three (they were answers to requests already read, which the connection held).
        code = ("import sys, time; time.sleep(1); sys.stdout.write('o' * (1 << 20)); "
                "sys.stderr.write('e' * (1 << 20)); 'v' * ((1 << 20) - 16)")
        sids = [self.sid] + [self.start("python3") for _ in range(2)]
        rids = [self.c.request("repl.eval", {"session": s, "code": code}) for s in sids]
        time.sleep(3)  # all three finished meanwhile
        for rid in rids:
            r = self.c.wait(rid)
            self.assertEqual((len(r["stdout"]), len(r["stderr"])), (1 << 20, 1 << 20))
            self.assertEqual(len(r["value"]), (1 << 20) - 14)
            self.assertFalse(r["truncated"])
        self.assertEqual(self.ev(self.sid, "6 * 7")["value"], "42")
        self.assertNotIn("not reading", self.agent.logtext())

    def test_large_output_truncated(self):
        r = self.ev(self.sid, "import sys; sys.stdout.write('x' * (2 << 20)); 'v' * (3 << 20)")
        self.assertTrue(r["truncated"])
        self.assertEqual(len(r["stdout"]), 1 << 20)
        self.assertEqual(len(r["value"]), 1 << 20)
        self.assertFalse(self.ev(self.sid, "1")["truncated"])

    def test_stderr_separate(self):
        r = self.ev(self.sid, "import sys; print('o'); print('e', file=sys.stderr)")
        self.assertEqual((r["stdout"], r["stderr"]), (b"o\n", b"e\n"))


class TestReplNode(LangMixin, ReplCase):
    language = interpreter = "node"
    set_x = "const x = 41"
    show_x = "x"
    multiline = ("function f(a) {\n  console.log('f', a);\n}\n"
                 "for (let i = 0; i < 3; i++) {\n  f(i);\n}")
    call_f = "f(9)"
    failing = "function g() { throw new TypeError('boom 42'); }\ng()"
    failing_text = "TypeError: boom 42"
    show_alive = "'alive'"
    forever = "while (true) {}"
    sleep_long = "await new Promise(() => {})"
    isatty = "process.stdin.isTTY ? 'yes' : 'no'"
    exit3 = "process.exit(3)"

    def wait_file(self, path):
        return ("const fs = require('fs');\nwhile (!fs.existsSync(%r)) { Atomics.wait(new "
                "Int32Array(new SharedArrayBuffer(4)), 0, 0, 10); }\nconsole.log('done')" % path)

    def stream_code(self, path):
        return ("console.log('first');\nawait new Promise((res) => { const t = setInterval(() => "
                "{ if (require('fs').existsSync(%r)) { clearInterval(t); res(); } }, 10); });\n"
                "console.log('done')" % path)

    def test_values_are_inspect(self):
        self.assertEqual(self.ev(self.sid, "'a' + 'b'")["value"], "'ab'")
        self.assertEqual(self.ev(self.sid, "{a: 1, b: [2]}")["value"], "{ a: 1, b: [ 2 ] }")
        self.assertIsNone(self.ev(self.sid, "undefined")["value"])
        self.assertEqual(self.ev(self.sid, "null")["value"], "null")

    def test_let_class_and_top_level_await_persist(self):
        self.ev(self.sid, "let n = 1; class K { v() { return 7; } }")
        self.assertEqual(self.ev(self.sid, "n + new K().v()")["value"], "8")
        r = self.ev(self.sid, "const z = await Promise.resolve(5); z * 2")
        self.assertEqual(r["value"], "10", r)
        self.assertEqual(self.ev(self.sid, "z")["value"], "5")
        r = self.ev(self.sid, "Promise.resolve(3)")
        self.assertEqual(r["value"], "3")

    def test_rejected_promise_is_error(self):
        r = self.ev(self.sid, "await Promise.reject(new RangeError('nope'))")
        self.assertTrue(r["error"])
        self.assertIn("RangeError: nope", r["error_text"])


def find_deno():
    """deno on PATH, else the newest one sbx-rootfs cached for the deno image; None if neither."""
    d = shutil.which("deno")
    if d:
        return d
    cache = os.environ.get("SBX_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sbx")
    found = sorted(glob.glob(os.path.join(cache, "deno", "*", "deno")))
    return found[-1] if found else None


class TestReplDeno(TestReplNode):
    """deno through its node:vm. Differences from node: a synchronous endless loop cannot be
    interrupted (the session ends), and a top-level await runs in an async function."""
    language = "deno"
    isatty = "Deno.stdin.isTerminal() ? 'yes' : 'no'"
    exit3 = "Deno.exit(3)"

    def setUp(self):
        deno = find_deno()
        if deno is None:
            self.skipTest("deno is neither on PATH nor in the sbx cache")
        ReplCase.setUp(self)
        self.sid = self.start("deno", argv=[deno])

    def wait_file(self, path):
        return ("while (true) { try { Deno.statSync(%r); break; } catch (_) {} Atomics.wait(new "
                "Int32Array(new SharedArrayBuffer(4)), 0, 0, 10); }\nconsole.log('done')" % path)

    def stream_code(self, path):
        return ("console.log('first');\nawait new Promise((res) => { const t = setInterval(() => "
                "{ try { Deno.statSync(%r); clearInterval(t); res(); } catch (_) {} }, 10); });\n"
                "console.log('done')" % path)

    def test_timeout_interrupts_and_session_survives(self):
        self.ev(self.sid, self.set_x)
        r = self.ev(self.sid, self.sleep_long, timeout_ms=300)
        self.assertTrue(r["timed_out"], r)
        self.assertEqual(r["error_text"], "timeout")
        self.assertEqual(self.ev(self.sid, self.show_x)["value"], "41")

    def test_sync_endless_loop_timeout_ends_session(self):
        r = self.ev(self.sid, self.forever, timeout_ms=300)
        self.assertTrue(r["timed_out"], r)
        e = self.err("repl.eval", {"session": self.sid, "code": self.show_alive})
        self.assertEqual(e["code"], "NOT_FOUND")

    def test_let_class_and_top_level_await_persist(self):
        self.ev(self.sid, "let n = 1; class K { v() { return 7; } }")
        self.assertEqual(self.ev(self.sid, "n + new K().v()")["value"], "8")
        self.assertEqual(self.ev(self.sid, "await Promise.resolve(5)")["value"], "5")
        self.assertEqual(self.ev(self.sid, "Promise.resolve(3)")["value"], "3")
        self.assertEqual(self.ev(self.sid, "new Map([[1, 2]])")["value"], "Map(1) { 1 => 2 }")

    def test_values_are_inspect(self):
        # Deno.inspect, as deno's own REPL prints: strings in double quotes.
        self.assertEqual(self.ev(self.sid, "'a' + 'b'")["value"], '"ab"')
        self.assertEqual(self.ev(self.sid, "{a: 1, b: [2]}")["value"], "{ a: 1, b: [ 2 ] }")
        self.assertIsNone(self.ev(self.sid, "undefined")["value"])


class TestReplDenoJson(ReplCase):
    """repl.eval format "json" (capability repl.json): a deno session's value as JSON text, a
    failure's value as the JSON error object {constructorName, message, stack}; repl.start's
    `proc` is the interpreter's process id, usable with proc.wait and proc.kill."""

    def setUp(self):
        deno = find_deno()
        if deno is None:
            self.skipTest("deno is neither on PATH nor in the sbx cache")
        ReplCase.setUp(self)
        self.started = self.c.call("repl.start", {"language": "deno", "argv": [deno]})
        self.sid = self.started["session"]

    def js(self, code):
        r = self.ev(self.sid, code, format="json")
        self.assertFalse(r["error"], r)
        return json.loads(r["value"])

    def test_capability_and_proc(self):
        c = self.agent.connect(hello=False)
        self.assertIn("repl.json", c.hello()["capabilities"])
        c.close()
        procs = [p for p in self.c.call("proc.list")["procs"] if p["id"] == self.started["proc"]]
        self.assertEqual(procs[0]["pid"], self.started["pid"])
        self.assertEqual(procs[0]["tag"], "repl:%d" % self.sid)
        listed = self.c.call("repl.list")["sessions"][0]
        self.assertEqual(listed["proc"], self.started["proc"])
        self.c.call("proc.kill", {"id": self.started["proc"], "signal": "SIGKILL"})
        st = self.c.call("proc.wait", {"id": self.started["proc"], "timeout_ms": 5000})
        self.assertEqual(st["signal"], "SIGKILL")
        e = self.err("repl.eval", {"session": self.sid, "code": "1", "format": "json"})
        self.assertEqual(e["code"], "NOT_FOUND")

    def test_values(self):
        self.ev(self.sid, "const x = 42;", format="json")
        self.assertEqual(self.js("x + 8"), 50)
        self.assertEqual(self.js("'a' + 'b'"), "ab")
        self.assertEqual(self.js("({a: 1, b: [2, undefined, () => 1], f() {}, u: undefined})"),
                         {"a": 1, "b": [2, None, None]})
        self.assertIsNone(self.js("undefined"))
        self.assertIsNone(self.js("(function f() {})"))
        self.assertEqual(self.js("10n ** 20n"), "100000000000000000000")
        self.assertEqual(self.js("[NaN, Infinity, -0]"), [None, None, 0])
        self.assertEqual(self.js("new Map([[1, {k: 2}], ['s', 3]])"), {"1": {"k": 2}, "s": 3})
        self.assertEqual(self.js("new Set([1, 'a'])"), [1, "a"])
        self.assertEqual(self.js("new Date(0)"), "1970-01-01T00:00:00.000Z")
        self.assertEqual(self.js("const o = {n: 1}; o.self = o; o"), {"n": 1, "self": "[Circular]"})
        self.assertEqual(self.js("const s = {v: 1}; [s, s]"), [{"v": 1}, {"v": 1}])  # not a cycle
        self.assertEqual(self.js("await Promise.resolve({p: true})"), {"p": True})
        self.assertEqual(self.js("new Uint8Array([1, 2])"), [1, 2])
        # The text format is unchanged in the same session.
        self.assertEqual(self.ev(self.sid, "'t'")["value"], '"t"')

    def test_errors(self):
        r = self.ev(self.sid, "nope + 1", format="json")
        self.assertTrue(r["error"])
        e = json.loads(r["value"])
        self.assertEqual(e["constructorName"], "ReferenceError")
        self.assertEqual(e["message"], "nope is not defined")
        self.assertIn("ReferenceError: nope is not defined", e["stack"])
        self.assertIn("ReferenceError", r["error_text"])
        r = self.ev(self.sid, "class MyErr extends Error {}; throw new MyErr('m')", format="json")
        self.assertEqual(json.loads(r["value"])["constructorName"], "MyErr")
        r = self.ev(self.sid, "throw 42", format="json")
        self.assertEqual(json.loads(r["value"]),
                         {"constructorName": "Error", "message": "42", "stack": None})
        r = self.ev(self.sid, "await Promise.reject(new RangeError('no'))", format="json")
        self.assertEqual(json.loads(r["value"])["constructorName"], "RangeError")
        # A toJSON that throws: the value cannot be formatted.
        r = self.ev(self.sid, "({toJSON() { throw new Error('x'); }})", format="json")
        self.assertTrue(r["error"])
        self.assertEqual(json.loads(r["value"])["constructorName"], "TypeError")
        self.assertEqual(self.js("1"), 1)  # the session is fine

    def test_output_and_timeout(self):
        r = self.ev(self.sid, "console.log('out'); console.error('err'); 7", format="json")
        self.assertEqual((r["stdout"], r["stderr"], r["value"]), (b"out\n", b"err\n", "7"))
        r = self.ev(self.sid, "await new Promise(() => {})", format="json", timeout_ms=200)
        self.assertTrue(r["timed_out"])
        self.assertEqual(r["error_text"], "timeout")
        # The driver's report of the interrupt: an Error object (nil when none came).
        self.assertEqual(json.loads(r["value"])["constructorName"], "Error")
        self.assertEqual(self.js("2"), 2)

    def test_bad_format(self):
        e = self.err("repl.eval", {"session": self.sid, "code": "1", "format": "xml"})
        self.assertEqual((e["code"], e.get("field")), ("BAD_PARAM", "format"))
        e = self.err("repl.eval", {"session": self.sid, "code": "1", "format": 3})
        self.assertEqual((e["code"], e.get("field")), ("BAD_PARAM", "format"))
        self.assertEqual(self.ev(self.sid, "1", format="text")["value"], "1")
        sh = self.start("sh")
        e = self.err("repl.eval", {"session": sh, "code": "true", "format": "json"})
        self.assertEqual((e["code"], e.get("field")), ("BAD_PARAM", "format"))


class TestReplProtocol(ReplCase):
    """Params, errors, life cycle: everything on the wire that is not language semantics."""

    def test_bad_params(self):
        sid = self.start("sh")
        cases = [
            ({"code": "true"}, "BAD_PARAM", "session"),
            ({"session": "1", "code": "true"}, "BAD_PARAM", "session"),
            ({"session": sid}, "BAD_PARAM", "code"),
            ({"session": sid, "code": 5}, "BAD_PARAM", "code"),
            ({"session": sid, "code": b"true"}, "BAD_PARAM", "code"),
            ({"session": sid, "code": "x" * ((1 << 20) + 1)}, "BAD_PARAM", "code"),
            ({"session": sid, "code": "a\0b"}, "BAD_PARAM", "code"),
            ({"session": sid, "code": "true", "timeout_ms": 0}, "BAD_PARAM", "timeout_ms"),
            ({"session": sid, "code": "true", "stream": "yes"}, "BAD_PARAM", "stream"),
            ({"session": 999, "code": "true"}, "NOT_FOUND", None),
        ]
        for params, code, field in cases:
            e = self.err("repl.eval", params)
            self.assertEqual(e["code"], code, params)
            if field:
                self.assertEqual(e.get("field"), field, params)
        # The session is unharmed by all of that.
        self.assertEqual(self.ev(sid, "echo ok")["stdout"], b"ok\n")

    def test_bad_start_params(self):
        cases = [
            ({}, "BAD_PARAM", "language"),
            ({"language": "cobol"}, "BAD_PARAM", "language"),
            ({"language": 3}, "BAD_PARAM", "language"),
            ({"argv": []}, "BAD_PARAM", "argv"),
            ({"argv": ["/bin/cat"]}, "BAD_PARAM", "language"),
            ({"argv": [5]}, "BAD_PARAM", "language"),
            ({"language": "sh", "env": {"A=B": "x"}}, "BAD_PARAM", "env"),
            ({"language": "sh", "cwd": 7}, "BAD_PARAM", "cwd"),
        ]
        for params, code, field in cases:
            e = self.err("repl.start", params)
            self.assertEqual(e["code"], code, params)
            self.assertEqual(e.get("field"), field, params)
        e = self.err("repl.start", {"argv": ["/nonexistent/python3"]})
        self.assertEqual((e["code"], e.get("stage")), ("ENOENT", "exec"))
        e = self.err("repl.start", {"language": "sh", "cwd": "/nonexistent"})
        self.assertEqual((e["code"], e.get("stage")), ("ENOENT", "cwd"))
        for m in ("repl.close", "repl.eval"):
            self.assertEqual(self.err(m, {"session": 77, "code": "x"})["code"], "NOT_FOUND")

    def test_interpreter_dying_at_start_is_unsupported(self):
        e = self.err("repl.start", {"argv": ["sh", "-c", "echo too old >&2; exit 7"]})
        self.assertEqual(e["code"], "UNSUPPORTED")
        self.assertIn("exit status 7", e["message"])
        self.assertIn("too old", e["message"])

    def test_argv_infers_language(self):
        sid = self.c.call("repl.start", {"argv": [shutil.which("python3")]})["session"]
        self.assertEqual(self.ev(sid, "6 * 7")["value"], "42")
        self.assertEqual(self.c.call("repl.list")["sessions"][0]["language"], "python3")

    def test_sessions_outlive_connections(self):
        sid = self.start("python3")
        self.ev(sid, "kept = 'yes'")
        self.c.close()
        self.c = self.agent.connect()
        self.assertEqual(self.ev(sid, "kept")["value"], "'yes'")
        # An eval whose connection goes away runs to completion; its result is dropped.
        gate = os.path.join(self.tmp, "g")
        c2 = self.agent.connect()
        c2.request("repl.eval", {"session": sid, "code": "import os, time\nwhile not os.path."
                                 "exists(%r):\n    time.sleep(0.01)\nafter = 1" % gate})
        time.sleep(0.1)
        c2.close()
        open(gate, "w").close()
        deadline = time.time() + 10
        while self.c.call("repl.list")["sessions"][0]["busy"] and time.time() < deadline:
            time.sleep(0.02)
        self.assertEqual(self.ev(sid, "after")["value"], "1")

    def test_close_cancels_running_eval(self):
        sid = self.start("python3")
        rid = self.c.request("repl.eval", {"session": sid, "code": "import time; time.sleep(100)"})
        time.sleep(0.1)
        self.assertEqual(self.c.call("repl.close", {"session": sid}), {})
        with self.assertRaises(w.RemoteError) as cm:
            self.c.wait(rid)
        self.assertEqual(cm.exception.code, "CANCELLED")
        self.assertEqual(self.err("repl.eval", {"session": sid, "code": "1"})["code"], "NOT_FOUND")
        self.assertEqual(self.err("repl.close", {"session": sid})["code"], "NOT_FOUND")

    def test_close_ends_interactive_shell_quickly(self):
        sid = self.start("sh")
        pid = self.c.call("repl.list")["sessions"][0]["pid"]
        self.c.call("repl.close", {"session": sid})
        deadline = time.time() + 5
        while time.time() < deadline:
            st = [p for p in self.c.call("proc.list")["procs"] if p["pid"] == pid]
            if st and st[0]["state"] == "exited":
                return
            time.sleep(0.02)
        self.fail("the shell outlived repl.close")

    def test_list_and_proc_list(self):
        a = self.start("sh")
        b = self.start("python3")
        self.ev(b, "1")
        sessions = self.c.call("repl.list")["sessions"]
        self.assertEqual([(s["session"], s["language"], s["evals"], s["busy"]) for s in sessions],
                         [(a, "sh", 0, False), (b, "python3", 1, False)])
        tags = sorted(p["tag"] for p in self.c.call("proc.list")["procs"])
        self.assertEqual(tags, ["repl:%d" % a, "repl:%d" % b])
        self.assertIn("repl", self.agent.connect(hello=False).hello()["capabilities"])

    def test_stream_eval_with_error_and_timeout(self):
        sid = self.start("python3")
        out, err, res, _ = self.stream_eval(sid, "import sys\nprint('o')\nprint('e', file=sys."
                                                 "stderr)\nraise KeyError('k')")
        self.assertEqual((out, err), (b"o\n", b"e\n"))
        self.assertTrue(res["error"])
        self.assertIn("KeyError", res["error_text"])
        self.assertNotIn("stdout", res)
        rid = self.c.request("repl.eval", {"session": sid, "code": "while True: pass",
                                           "stream": True, "timeout_ms": 200})
        self.c.wait(rid)
        while True:
            m = self.c.recv()
            if m[0] == 2 and m[1] == "repl.result":
                self.assertTrue(m[2]["timed_out"])
                break
        self.assertEqual(self.ev(sid, "2 + 2")["value"], "4")

    def test_stream_eval_output_past_its_credit_is_its_own(self):
        # The code writes 32 KiB more than the stream's credit and is done while the client
        # grants none: those bytes, in the pipe at its report, went to the next eval, and the
        # result (with truncated false) came without them.
        sid = self.start("python3")
        n = self.c.window + 32768
        out, _, res, order = self.stream_eval(
            sid, "import sys; sys.stdout.write('x' * %d); sys.stdout.flush()" % n,
            hold=self.c.window)
        self.assertEqual(len(out), n)
        self.assertEqual(out, b"x" * n)
        self.assertFalse(res["truncated"], res)
        self.assertEqual(order[-1], ("result",))
        out, _, res, _ = self.stream_eval(sid, "print('next')")
        self.assertEqual(out, b"next\n")
        self.assertEqual(self.ev(sid, "print('after')")["stdout"], b"after\n")

    def eval_past_credit(self, sid):
        """A streaming eval whose code writes 32 KiB more than the stream's credit: its answer,
        once the credit's worth came and (a second later) the code is done, its last 32 KiB
        waiting in the pipe."""
        n = self.c.window + 32768
        rid = self.c.request("repl.eval", {"session": sid, "stream": True, "code":
                                           "import sys; sys.stdout.write('x' * %d); "
                                           "sys.stdout.flush()" % n})
        head, got = self.c.wait(rid), 0
        while got < self.c.window:
            m = self.c.recv()
            if m[0] == 3 and m[1] == head["stdout"]:
                got += len(m[2])
        time.sleep(1)
        return head

    def test_stream_eval_last_output_waits_for_credit_or_the_client_going(self):
        # While its last bytes wait for credit the eval is not over: the session is busy; a
        # client that goes leaves the result to repl.collect, and those bytes are dropped,
        # not handed to the next eval.
        sid = self.start("python3")
        self.eval_past_credit(sid)
        other = self.agent.connect()
        self.assertTrue(other.call("repl.list")["sessions"][0]["busy"])
        e = self.err("repl.eval", {"session": sid, "code": "1"}, conn=other)
        self.assertEqual(e["code"], "BUSY")
        self.c.close()
        deadline = time.time() + 10
        while time.time() < deadline and other.call("repl.list")["sessions"][0]["busy"]:
            time.sleep(0.02)
        res = other.call("repl.collect", {"session": sid})
        self.assertEqual((res["eval"], res["error"], res["value"]), (1, False, None))
        r = other.call("repl.eval", {"session": sid, "code": "print('next')"})
        self.assertEqual(r["stdout"], b"next\n")
        # A repl.close while they wait ends the streams with CANCELLED.
        self.c = self.agent.connect()
        head = self.eval_past_credit(sid)
        other.call("repl.close", {"session": sid})
        ends = {}
        while len(ends) < 2:
            m = self.c.recv()
            if m[0] == 2 and m[1] == "stream.end":
                ends[m[2]["stream"]] = m[2].get("error", {}).get("code")
        self.assertEqual(ends, {head["stdout"]: "CANCELLED", head["stderr"]: "CANCELLED"})
        other.close()

    def test_stream_eval_output_under_a_flood_keeps_its_own_line(self):
        # A thread of the session writes 64 KiB chunks for ever: the pipe is always full, and
        # an eval's own line, written and flushed before its report, was at times still in it
        # when the eval ended (its drain stops at the credit): the result came without it.
        sid = self.start("python3")
        self.ev(sid, "import threading, sys\ndef f():\n    while True:\n        sys.stdout."
                     "write('y' * 65536); sys.stdout.flush()\nthreading.Thread(target=f, "
                     "daemon=True).start()")
        for i in range(5):
            # print() writes the newline apart: the thread's bytes may come between.
            out, _, res, _ = self.stream_eval(sid, "print('s-marker-%d')" % i)
            self.assertEqual(re.findall(rb"s-marker-\d+", out), [b"s-marker-%d" % i])
        self.c.call("repl.close", {"session": sid})

    def test_stream_eval_pending_output_first(self):
        sid = self.start("python3")
        self.ev(sid, "import threading\nthreading.Timer(0.05, lambda: print('late')).start()")
        time.sleep(0.5)
        out, _, res, _ = self.stream_eval(sid, "print('now')")
        self.assertEqual(out, b"late\nnow\n")

    def test_unresponsive_interpreter_killed_after_interrupt(self):
        sid = self.start("python3")
        code = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(100)"
        t0 = time.time()
        r = self.ev(sid, code, timeout_ms=200)
        self.assertTrue(r["timed_out"])
        self.assertEqual(r["error_text"], "timeout")
        self.assertLess(time.time() - t0, 30)
        self.assertEqual(self.err("repl.eval", {"session": sid, "code": "1"})["code"], "NOT_FOUND")


class TestReplDrain(ReplCase):
    """A streaming eval's last output (in its pipes at its report, past its streams' credit):
    sent on its own streams as credit comes, nothing after the report with it."""

    def test_output_between_evals_goes_first_beyond_a_small_window(self):
        # What the interpreter wrote between evals (kept up to 1 MiB) opens the next streaming
        # eval's stdout, all of it, as credit comes. It used to go only as far as the streams'
        # first credit, the rest dropped (truncated): with recv_window 64 KiB (PROTOCOL.md
        # §6.2), most of it. The 200 KiB write returns only once the agent read all but a pipe's
        # worth (64 KiB), so at least 136 KiB were kept when the eval starts.
        self.c = self.agent.connect(hello=False)
        self.assertEqual(self.c.hello(recv_window=65536)["recv_window"], 65536)
        sid = self.start("python3")
        mark = os.path.join(self.tmp, "written")
        self.ev(sid, "import sys, threading\n"
                     "def w():\n"
                     "    sys.stdout.write('x' * (200 << 10)); sys.stdout.flush()\n"
                     "    open(%r, 'w').close()\n"
                     "threading.Timer(0.2, w).start()" % mark)
        deadline = time.time() + 20
        while not os.path.exists(mark):
            self.assertLess(time.time(), deadline, "the interpreter never wrote its 200 KiB")
            time.sleep(0.05)
        out, _, res, _ = self.stream_eval(sid, "print('after')")
        self.assertEqual(out, b"x" * (200 << 10) + b"after\n")
        self.assertFalse(res["truncated"])

    def keep_between_evals(self, sid, n_out, n_err=0):
        """Have session @sid write @n_out bytes of 'x' on stdout and @n_err of 'e' on stderr
        after its eval reported (kept for the next eval)."""
        mark = os.path.join(self.tmp, "written-%d" % sid)
        self.ev(sid, "import sys, threading\n"
                     "def w():\n"
                     "    sys.stdout.write('x' * %d); sys.stdout.flush()\n"
                     "    sys.stderr.write('e' * %d); sys.stderr.flush()\n"
                     "    open(%r, 'w').close()\n"
                     "threading.Timer(0.2, w).start()" % (n_out, n_err, mark))
        deadline = time.time() + 20
        while not os.path.exists(mark):
            self.assertLess(time.time(), deadline, "the interpreter never wrote")
            time.sleep(0.05)
        time.sleep(0.3)

    def stall_connection(self):
        """Four processes of this connection fill their streams' credit (1 MiB each, 8 MiB)
        while the client reads nothing: the connection's queue passes SBX_CONN_DATA_HIGH (it
        pauses; agent_stream_writable is 0) and the agent-wide buffers run short."""
        for _ in range(4):
            self.c.request("proc.spawn", {"argv": ["sh", "-c", "head -c 4194304 /dev/zero & "
                                                   "head -c 4194304 /dev/zero >&2; wait"]})
        time.sleep(1.5)

    def eval_on_stalled(self, sid, code):
        """A streaming eval sent while the connection is stalled; the client reads nothing for
        1.5 s (the code runs and reports meanwhile), then all of it, granting as data comes.
        Returns (stdout, stderr, repl.result)."""
        rid = self.c.request("repl.eval", {"session": sid, "code": code, "stream": True})
        time.sleep(1.5)
        head = self.c.wait(rid)
        got = {head["stdout"]: b"", head["stderr"]: b""}
        while True:
            m = self.c.recv()
            self.assertIsNotNone(m, "connection closed (agent died?)")
            if m[0] == 3 and m[1] in got:
                got[m[1]] += m[2]
                self.c.credit(m[1], len(m[2]))
            elif m[0] == 2 and m[1] == "repl.result":
                return got[head["stdout"]], got[head["stderr"]], m[2]

    def test_eval_output_does_not_overtake_the_lead(self):
        # The lead (output kept between evals) cannot go: the connection is paused, though the
        # stream has credit (1 MiB). The code prints 'after'; at its report, the final drain of
        # the pipes (pipe_read_now) read up to the stream's credit without looking at the lead:
        # 'after' went out before the 200 KiB kept before the eval. (stderr has a lead too, so
        # that the eval does not end from write_cb's loop: see the test below.)
        sid = self.start("python3")
        self.keep_between_evals(sid, 200 << 10, 1000)
        self.stall_connection()
        out, err, res = self.eval_on_stalled(sid, "print('after')")
        self.assertEqual(err, b"e" * 1000)
        self.assertEqual(len(out), (200 << 10) + 6)
        self.assertEqual(out, b"x" * (200 << 10) + b"after\n",
                         "eval output overtook the lead: 'after' at offset %d" % out.find(b"after"))
        self.assertFalse(res["truncated"])

    def test_lead_finishing_on_resume_ends_the_eval_safely(self):
        # Only stdout has a lead; the code's report came while it waited (eval_output_waits set
        # until_cb on stdout only). When the connection drains, write_cb (conn.c) walks its
        # streams and updates stdout's pipe: the lead goes, the eval ends and ends stdout *and
        # stderr*, the stream write_cb was to visit next: it read freed memory (ASan:
        # heap-use-after-free in write_cb; the agent died).
        sid = self.start("python3")
        self.keep_between_evals(sid, 200 << 10)
        self.stall_connection()
        out, err, res = self.eval_on_stalled(sid, "pass")
        self.assertEqual(out, b"x" * (200 << 10))
        self.assertTrue(self.agent.alive())
        self.assertEqual(self.ev(sid, "6 * 7")["value"], "42")

    def begin(self, sid, code, want_stream="stdout", extra=None):
        """Start a streaming eval; read (without granting) until the @want_stream's credit
        worth came. Returns (head, {sid: bytes})."""
        p = {"session": sid, "stream": True, "code": code}
        p.update(extra or {})
        rid = self.c.request("repl.eval", p)
        head = self.c.wait(rid)
        got = {head["stdout"]: b"", head["stderr"]: b""}
        target = head[want_stream]
        while len(got[target]) < self.c.window:
            m = self.c.recv()
            self.assertIsNotNone(m)
            if m[0] == 3 and m[1] in got:
                got[m[1]] += m[2]
        return head, got

    def finish(self, head, got, grant=True, timeout=20):
        """Grant as data comes until repl.result. Returns (got, result, order)."""
        order = []
        old = self.c.sock.gettimeout()
        self.c.sock.settimeout(timeout)
        try:
            if grant:
                for s in got:
                    self.c.credit(s, self.c.window)
            while True:
                m = self.c.recv()
                self.assertIsNotNone(m)
                if m[0] == 3 and m[1] in got:
                    got[m[1]] += m[2]
                    if grant:
                        self.c.credit(m[1], len(m[2]))
                    order.append(("data", m[1]))
                elif m[0] == 2 and m[1] == "stream.end" and m[2]["stream"] in got:
                    order.append(("end", m[2]["stream"], m[2].get("error")))
                elif m[0] == 2 and m[1] == "repl.result":
                    order.append(("result",))
                    return got, m[2], order
        finally:
            self.c.sock.settimeout(old)

    def test_output_after_the_report_goes_to_this_eval(self):
        # stderr is past its credit at the report; while it drains, a thread of the session
        # prints LATE on stdout (after the report). §16.3: "Output the interpreter writes after
        # the eval finished goes to the next eval."
        sid = self.start("python3")
        n = self.c.window + 32768
        # The thread prints 0.5 s after the code's last statement ran (the driver reports
        # right after it).
        code = ("import sys, threading, time\n"
                "done = threading.Event()\n"
                "def late():\n"
                "    done.wait(); time.sleep(0.5); print('LATE', flush=True)\n"
                "threading.Thread(target=late).start()\n"
                "sys.stderr.write('e' * %d); sys.stderr.flush()\n"
                "done.set()\n" % n)
        head, got = self.begin(sid, code, want_stream="stderr")
        time.sleep(1.5)  # the report came long ago; LATE was printed after it
        got, res, _ = self.finish(head, got)
        self.assertEqual(len(got[head["stderr"]]), n)
        out2, _, _, _ = self.stream_eval(sid, "print('next')")
        self.assertNotIn(b"LATE", got[head["stdout"]],
                         "LATE (written after the report) was sent on eval 1's stdout")
        self.assertIn(b"LATE", out2)


    def test_second_report_while_draining(self):
        # Code that writes a report of its own to fd 4 (the driver's control pipe, open in the
        # process) and then more output than its credit: the first report stands, and the
        # driver's own, which comes while the output drains, was appended to its value.
        sid = self.start("python3")
        n = self.c.window + 32768
        code = ("import sys, os; sys.stdout.write('x' * %d); sys.stdout.flush(); "
                "os.write(4, b'result 3 -1\\nAAA')\n'BBB'" % n)
        head, got = self.begin(sid, code)
        time.sleep(1.0)
        got, res, order = self.finish(head, got)
        self.assertEqual(res["value"], "AAA", res)
        self.assertEqual(self.ev(sid, "6 * 7")["value"], "42")


    def test_stolen_pipe_bytes_leave_the_session_busy(self):
        # A workload running as the agent's user reads the agent's end of its stdout pipe
        # (/proc/<agent>/fd/N) after its report: the bytes FIONREAD counted never reached the
        # agent, the bound was never met, and the session was BUSY for good.
        sid = self.start("python3")
        n = self.c.window + 32768
        code = r"""
import os, sys, threading, time
ino = os.readlink('/proc/self/fd/1')
ppid = %d
def steal():
    time.sleep(0.3)
    for fd in os.listdir('/proc/%%d/fd' %% ppid):
        try:
            if os.readlink('/proc/%%d/fd/%%s' %% (ppid, fd)) == ino:
                r = os.open('/proc/%%d/fd/%%s' %% (ppid, fd), os.O_RDONLY | os.O_NONBLOCK)
                try:
                    while os.read(r, 65536):
                        pass
                except BlockingIOError:
                    pass
        except OSError:
            pass
threading.Thread(target=steal).start()
sys.stdout.write('x' * %d); sys.stdout.flush()
""" % (self.agent.proc.pid, n)
        head, got = self.begin(sid, code)
        time.sleep(1.0)
        try:
            got, res, order = self.finish(head, got, timeout=5)
        except socket.timeout:
            self.assertTrue(self.c.call("repl.list")["sessions"][0]["busy"])
            self.c.call("repl.close", {"session": sid})
            self.fail("session stuck BUSY after its pipe's bytes were stolen")
        self.assertLessEqual(len(got[head["stdout"]]), self.c.window + 32768)
        self.assertFalse(self.c.call("repl.list")["sessions"][0]["busy"])


    def test_interpreter_killed_mid_drain(self):
        sid = self.start("python3")
        pid = self.c.call("repl.list")["sessions"][0]["pid"]
        n = self.c.window + 32768
        head, got = self.begin(sid, "import sys; sys.stdout.write('x' * %d); sys.stdout.flush()"
                               % n)
        time.sleep(0.5)
        os.kill(pid, 9)
        time.sleep(0.5)
        got, res, order = self.finish(head, got, timeout=10)
        self.assertEqual(len(got[head["stdout"]]), n)
        # No second result, and the session is gone.
        self.c.sock.settimeout(1)
        extra = []
        try:
            while True:
                m = self.c.recv()
                if m is None:
                    break
                extra.append(m)
        except socket.timeout:
            pass
        self.c.sock.settimeout(30)
        self.assertFalse([m for m in extra if m[0] == 2 and m[1] == "repl.result"], extra)
        deadline = time.time() + 5
        while self.c.call("repl.list")["sessions"] and time.time() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.c.call("repl.list")["sessions"], [])


if __name__ == "__main__":
    unittest.main()
