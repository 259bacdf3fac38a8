#!/usr/bin/env python3
"""Integration tests of proc.attach (PROTOCOL.md §14.9) and the replay rings behind it (§10): a
real sbx-agent over a unix socket, real children (sbx-test-helper), connections that vanish."""
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest
import warnings

warnings.simplefilter("ignore", ResourceWarning)  # sockets left to the garbage collector

sys.path.insert(0, os.path.dirname(__file__))
import sbxwire as w  # noqa: E402
from test_agent import AGENT, HELPER, SANITIZED, AgentCase  # noqa: E402


def pattern(start, end):
    """Bytes [start, end) of the helper's flood output: byte k is (k * 131 + 7) & 255."""
    return bytes(((k * 131 + 7) & 255) for k in range(start, end))


def drain(c, pid, sids, credit=True, until_exit=True, timeout=30):
    """Read @c until proc.exit for @pid (or until every stream of @sids ended); returns
    ({sid: bytes}, exit map or None, [events]). Grants credit as data arrives."""
    outs = {s: bytearray() for s in sids if s is not None}
    ended = set()
    events = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        m = c.recv()
        if m is None:
            raise EOFError("agent closed the connection")
        if m[0] == 3 and m[1] in outs:
            outs[m[1]] += m[2]
            events.append(("data", m[1]))
            if credit:
                c.credit(m[1], len(m[2]))
        elif m[0] == 2 and m[1] == "stream.end" and m[2]["stream"] in outs:
            ended.add(m[2]["stream"])
            events.append(("end", m[2]["stream"]))
            if not until_exit and ended == set(outs):
                return {k: bytes(v) for k, v in outs.items()}, None, events
        elif m[0] == 2 and m[1] == "proc.exit" and m[2]["id"] == pid:
            events.append(("exit", None))
            return {k: bytes(v) for k, v in outs.items()}, m[2], events
        else:
            events.append(("other", m))
    raise AssertionError("timed out draining process %d: %r" % (pid, events[-5:]))


class AttachCase(AgentCase):
    def read_some(self, c, sid, n):
        """Read data of stream @sid from @c until at least @n bytes came; no credit granted."""
        got = bytearray()
        while len(got) < n:
            m = c.wait_for(lambda m: m[0] == 3 and m[1] == sid, "data on %d" % sid)
            got += m[2]
        return bytes(got)

    def wait_exited(self, pid):
        """Wait (on a connection of its own) until process @pid is reported exited."""
        c = self.agent.connect()
        try:
            return c.call("proc.wait", {"id": pid, "timeout_ms": 30000})
        finally:
            c.close()

    def entry(self, c, pid):
        return next(p for p in c.call("proc.list")["procs"] if p["id"] == pid)


class TestAttachReplay(AttachCase):
    """(a) A reader vanishes mid-output; a new connection resumes at the last offset it saw."""

    N = 768 << 10  # fits the default 1 MiB ring: nothing may be lost

    def resume(self, pid, seen, n):
        c2 = self.agent.connect()
        r = c2.call("proc.attach", {"id": pid, "from": len(seen)})
        self.assertEqual(r["stdout_start"], len(seen))
        self.assertEqual(r["stdout_dropped"], 0)
        self.assertIsNone(r["stdin"])
        outs, ex, _ = drain(c2, pid, [r["stdout"], r["stderr"]])
        self.assertEqual(ex["stdout_bytes"], n)
        whole = seen + outs[r["stdout"]]
        self.assertEqual(len(whole), n)
        self.assertTrue(whole == pattern(0, n), "the bytes before and after differ")
        c2.close()

    def test_close_without_goodbye(self):
        r = self.c.call("proc.spawn", self.helper("flood", self.N))
        seen = self.read_some(self.c, r["stdout"], 100 << 10)
        self.c.close()  # abruptly: no stream.cancel, no goodbye
        self.c = None
        self.wait_exited(r["id"])
        self.resume(r["id"], seen, self.N)

    def test_attach_while_running(self):
        # The first reader goes while the process still writes (it waits for its input).
        r = self.c.call("proc.spawn", {"command": "%s flood %d; read x; %s flood %d" % (
            HELPER, 200 << 10, HELPER, 300 << 10), "stdin": "pipe"})
        seen = self.read_some(self.c, r["stdout"], 50 << 10)
        self.c.close()
        self.c = None
        c2 = self.agent.connect()
        a = c2.call("proc.attach", {"id": r["id"], "from": len(seen)})
        self.assertEqual(a["stdout_start"], len(seen))
        self.assertIsNotNone(a["stdin"], "stdin of a detached process is handed over")
        self.assertTrue(self.entry(c2, r["id"])["attached"])
        c2.data(a["stdin"], b"go\n")
        c2.end(a["stdin"])
        outs, ex, _ = drain(c2, r["id"], [a["stdout"], a["stderr"]])
        total = (200 << 10) + (300 << 10)
        self.assertEqual(ex["stdout_bytes"], total)
        whole = seen + outs[a["stdout"]]
        self.assertEqual(whole, pattern(0, 200 << 10) + pattern(0, 300 << 10))
        c2.close()

    def test_reader_sigkilled(self):
        # The reading client is a process of its own, killed by SIGKILL mid-stream.
        code = textwrap.dedent("""
            import sys
            sys.path.insert(0, %r)
            import sbxwire as w
            c = w.Conn(%r)
            c.hello()
            r = c.call("proc.spawn", {"argv": [%r, "flood", "%d"]})
            got = 0
            while got < (64 << 10):
                m = c.recv()
                if m[0] == 3 and m[1] == r["stdout"]:
                    sys.stdout.buffer.write(m[2])
                    got += len(m[2])
            sys.stdout.flush()
            sys.stderr.write("%%d\\n" %% r["id"])
            sys.stderr.flush()
            import time
            time.sleep(60)
        """) % (os.path.dirname(os.path.abspath(__file__)), self.agent.addr, HELPER, self.N)
        # Its output goes to a file: a pipe nobody reads yet would block it.
        with tempfile.TemporaryFile() as out:
            child = subprocess.Popen([sys.executable, "-c", code], stdout=out,
                                     stderr=subprocess.PIPE)
            try:
                line = child.stderr.readline()
                if not line.strip().isdigit():
                    child.kill()
                    self.fail(line + child.stderr.read())
                pid = int(line)
                child.send_signal(signal.SIGKILL)
                child.wait()
            finally:
                child.kill()
                child.wait()
            out.seek(0)
            seen = out.read()  # what it wrote before it died
        self.assertGreaterEqual(len(seen), 64 << 10)
        self.wait_exited(pid)
        self.resume(pid, seen, self.N)

    def test_default_from_is_oldest(self):
        r = self.c.call("proc.spawn", self.helper("flood", 5000))
        drain(self.c, r["id"], [r["stdout"], r["stderr"]])
        c2 = self.agent.connect()
        a = c2.call("proc.attach", {"id": r["id"]})
        self.assertEqual((a["stdout_start"], a["stdout_dropped"]), (0, 0))
        outs, ex, ev = drain(c2, r["id"], [a["stdout"], a["stderr"]])
        self.assertEqual(outs[a["stdout"]], pattern(0, 5000))
        # §9.2 on the attached connection: replay, the ends, then proc.exit.
        self.assertEqual(ev[-1], ("exit", None))
        self.assertIn(("end", a["stdout"]), ev)
        c2.close()


class TestAttachSmallRing(AttachCase):
    """(a) With --replay 64K the ring keeps exactly the last 64 KiB; the gap is counted."""

    extra = ("--replay", "64K")
    RING = 64 << 10

    def test_gap_is_exact(self):
        n = 1000000
        r = self.c.call("proc.spawn", self.helper("flood", n))
        seen = self.read_some(self.c, r["stdout"], 10000)
        self.c.close()
        self.c = None
        ex = self.wait_exited(r["id"])
        self.assertEqual(ex["stdout_bytes"], n)
        c2 = self.agent.connect()
        ent = self.entry(c2, r["id"])
        self.assertEqual(ent["stdout_dropped"], n - self.RING)
        self.assertFalse(ent["attached"])
        a = c2.call("proc.attach", {"id": r["id"], "from": len(seen)})
        self.assertEqual(a["stdout_start"], n - self.RING)
        self.assertEqual(a["stdout_dropped"], n - self.RING - len(seen))
        outs, ex2, _ = drain(c2, r["id"], [a["stdout"], a["stderr"]])
        self.assertEqual(outs[a["stdout"]], pattern(n - self.RING, n))
        self.assertEqual(ex2["stdout_bytes"], n)
        c2.close()
        # Without `from` the gap is counted from offset 0: never silent.
        c3 = self.agent.connect()
        a = c3.call("proc.attach", {"id": r["id"]})
        self.assertEqual((a["stdout_start"], a["stdout_dropped"]), (n - self.RING, n - self.RING))
        drain(c3, r["id"], [a["stdout"], a["stderr"]])
        c3.close()

    def test_detached_flood_replays_at_exact_offsets(self):
        # A flood nobody reads is read at a bounded pace; an attach then starts at the latest
        # bytes the ring kept and continues live, every byte at its offset.
        c1 = self.agent.connect()
        r = c1.call("proc.spawn", self.helper("flood", 1 << 34))
        c1.close()
        time.sleep(0.5)
        a = self.c.call("proc.attach", {"id": r["id"], "from": 0})
        start = a["stdout_start"]
        self.assertGreater(start, 0)
        self.assertEqual(a["stdout_dropped"], start)
        got = bytearray()
        while len(got) < (3 << 20):
            m = self.c.wait_for(lambda m: m[0] == 3 and m[1] == a["stdout"], "data")
            got += m[2]
            self.c.credit(m[1], len(m[2]))
        self.assertTrue(bytes(got) == pattern(start, start + len(got)), "bytes at wrong offsets")
        ent = self.entry(self.c, r["id"])
        self.assertTrue(ent["attached"])
        self.c.call("proc.kill", {"id": r["id"], "signal": "KILL"})

    def test_bad_replay_values(self):
        for bad in ("", "x", "1K", "64K,1K", "1M,", "5Q", "2G", "1M,99999999G"):
            p = subprocess.run([AGENT, "--listen", "unix:/nonexistent/x", "--replay", bad],
                               capture_output=True, text=True, timeout=10)
            self.assertEqual(p.returncode, 2, bad)
            self.assertIn("--replay", p.stderr)
        h = subprocess.run([AGENT, "--help"], capture_output=True, text=True, timeout=10)
        self.assertIn("--replay SIZE[,TOTAL]", h.stdout)


class TestAttachOwnership(AttachCase):
    """(b) One holder at a time, steal, exit delivery, PTY."""

    def spawn_detached(self, params):
        c = self.agent.connect()
        r = c.call("proc.spawn", params)
        c.close()
        return r

    def test_attach_during_output(self):
        r = self.spawn_detached({"command": "for i in $(seq 1 40); do echo $i; sleep 0.01; done"})
        time.sleep(0.1)
        a = self.c.call("proc.attach", {"id": r["id"], "from": 0})
        outs, ex, ev = drain(self.c, r["id"], [a["stdout"], a["stderr"]])
        self.assertEqual(outs[a["stdout"]], b"".join(b"%d\n" % i for i in range(1, 41)))
        self.assertEqual(ex["code"], 0)
        self.assertEqual(ev[-1], ("exit", None))

    def test_attach_after_exit(self):
        r = self.spawn_detached({"command": "echo out; echo err >&2"})
        self.wait_exited(r["id"])
        a = self.c.call("proc.attach", {"id": r["id"]})
        self.assertIsNone(a["stdin"])
        outs, ex, ev = drain(self.c, r["id"], [a["stdout"], a["stderr"]])
        self.assertEqual(outs[a["stdout"]], b"out\n")
        self.assertEqual(outs[a["stderr"]], b"err\n")
        self.assertEqual(ev[-1], ("exit", None))
        self.assertEqual(sorted(e for e in ev if e[0] == "end"),
                         sorted([("end", a["stdout"]), ("end", a["stderr"])]))
        # The exit record is released as usual afterwards.
        self.assertEqual(self.c.call("proc.release", {"id": r["id"]}), {})

    def test_spawner_holds_busy(self):
        r = self.c.call("proc.spawn", self.helper("sleep", 5000))
        c2 = self.agent.connect()
        with self.assertRaises(w.RemoteError) as cm:
            c2.call("proc.attach", {"id": r["id"]})
        self.assertEqual(cm.exception.code, "BUSY")
        self.assertTrue(self.entry(c2, r["id"])["attached"])
        self.c.call("proc.kill", {"id": r["id"], "signal": "KILL"})
        c2.close()

    def test_race_one_winner(self):
        r = self.spawn_detached(self.helper("sleep", 5000))
        b, c = self.agent.connect(), self.agent.connect()
        rb = b.request("proc.attach", {"id": r["id"]})
        rc = c.request("proc.attach", {"id": r["id"]})
        results = []
        for conn, rid in ((b, rb), (c, rc)):
            try:
                results.append(("ok", conn.wait(rid)))
            except w.RemoteError as e:
                results.append((e.code, None))
        self.assertEqual(sorted(x[0] for x in results), ["BUSY", "ok"])
        self.c.call("proc.kill", {"id": r["id"], "signal": "KILL"})
        winner = b if results[0][0] == "ok" else c
        res = results[0][1] or results[1][1]
        _, ex, _ = drain(winner, r["id"], [res["stdout"], res["stderr"]])
        self.assertEqual(ex["signal"], "SIGKILL")
        b.close()
        c.close()

    def test_steal(self):
        r = self.c.call("proc.spawn", {"command": "echo a; read x; echo $x", "stdin": "pipe"})
        m = self.c.wait_for(lambda m: m[0] == 3 and m[1] == r["stdout"], "first output")
        self.assertEqual(m[2], b"a\n")
        c2 = self.agent.connect()
        with self.assertRaises(w.RemoteError) as cm:
            c2.call("proc.attach", {"id": r["id"]})
        self.assertEqual(cm.exception.code, "BUSY")
        a = c2.call("proc.attach", {"id": r["id"], "steal": True, "from": 2})
        self.assertEqual(a["stdout_start"], 2)
        self.assertIsNotNone(a["stdin"])
        # The old holder hears a cancel for each of its streams of the process.
        cancelled = set()
        while len(cancelled) < 3:
            m = self.c.wait_for(lambda m: m[0] == 2 and m[1] == "stream.cancel", "cancels")
            self.assertEqual(m[2]["error"]["code"], "CANCELLED")
            self.assertIn("attached elsewhere", m[2]["error"]["message"])
            cancelled.add(m[2]["stream"])
        self.assertEqual(cancelled, {r["stdin"], r["stdout"], r["stderr"]})
        c2.data(a["stdin"], b"stolen\n")
        outs, ex, _ = drain(c2, r["id"], [a["stdout"], a["stderr"]])
        self.assertEqual(outs[a["stdout"]], b"stolen\n")
        # The old holder gets no proc.exit: a ping round trip proves nothing more is queued.
        self.assertEqual(self.c.call("ping"), {})
        self.assertFalse(any(m[0] == 2 and m[1] == "proc.exit" for m in self.c.pending),
                         self.c.pending)
        c2.close()

    def test_exit_to_spawner_and_attacher(self):
        # The spawner cancels its output (it stops holding it) but still gets proc.exit; so
        # does the connection that attached after.
        r = self.c.call("proc.spawn", {"command": "echo x; sleep 0.5", "stdin": "pipe"})
        for sid in (r["stdout"], r["stderr"]):
            self.c.send([2, "stream.cancel", {"stream": sid}])
        self.c.call("ping")
        c2 = self.agent.connect()
        a = c2.call("proc.attach", {"id": r["id"]})
        # The spawner still holds stdin, a live connection: not taken without steal.
        self.assertIsNone(a["stdin"])
        outs, ex2, _ = drain(c2, r["id"], [a["stdout"], a["stderr"]])
        self.assertEqual(outs[a["stdout"]], b"x\n")
        ex1 = self.c.wait_for(lambda m: m[0] == 2 and m[1] == "proc.exit", "spawner's exit")
        self.assertEqual(ex1[2]["id"], r["id"])
        c2.close()

    def test_pty_attach_and_resize(self):
        r = self.spawn_detached({"command": "stty size; read x; stty size; echo got:$x",
                                 "pty": {"rows": 24, "cols": 80}})
        time.sleep(0.3)
        a = self.c.call("proc.attach", {"id": r["id"], "from": 0})
        self.assertIsNotNone(a["stdin"])
        self.assertIsNone(a["stderr"])
        self.assertEqual(self.c.call("proc.resize", {"id": r["id"], "rows": 30, "cols": 100}), {})
        self.c.data(a["stdin"], b"hi\n")
        outs, ex, _ = drain(self.c, r["id"], [a["stdout"]])
        out = outs[a["stdout"]].replace(b"\r", b"")
        self.assertIn(b"24 80\n", out)
        self.assertIn(b"30 100\n", out)
        self.assertIn(b"got:hi\n", out)
        self.assertEqual(ex["code"], 0)


class TestAttachHostile(AttachCase):
    """(c) Ids that never existed, offsets past the end, bad params, many finished processes."""

    extra = ("--replay", "4M,64M")  # a ring larger than the stream window

    def test_not_found(self):
        for pid in (0, 999999, 2 ** 32 - 1):
            with self.assertRaises(w.RemoteError) as cm:
                self.c.call("proc.attach", {"id": pid})
            self.assertEqual(cm.exception.code, "NOT_FOUND")

    def test_bad_params(self):
        r = self.c.call("proc.spawn", {"command": "true"})
        drain(self.c, r["id"], [r["stdout"], r["stderr"]])
        for params, field in (({}, "id"), ({"id": "1"}, "id"), ({"id": -1}, "id"),
                              ({"id": 2 ** 32}, "id"), ({"id": r["id"], "from": -1}, "from"),
                              ({"id": r["id"], "from": "0"}, "from"),
                              ({"id": r["id"], "stderr_from": 1.5}, "stderr_from"),
                              ({"id": r["id"], "stdin": 1}, "stdin"),
                              ({"id": r["id"], "steal": "yes"}, "steal"),
                              ({"id": 999999, "steal": 0}, "steal")):
            with self.assertRaises(w.RemoteError) as cm:
                self.c.call("proc.attach", params)
            self.assertEqual(cm.exception.code, "BAD_PARAM", params)
            self.assertEqual(cm.exception.err.get("field"), field, params)
        self.assertEqual(self.c.call("ping"), {})

    def test_from_past_the_end(self):
        r = self.c.call("proc.spawn", self.helper("flood", 1000))
        drain(self.c, r["id"], [r["stdout"], r["stderr"]])
        c2 = self.agent.connect()
        a = c2.call("proc.attach", {"id": r["id"], "from": 2 ** 64 - 1, "stderr_from": 5})
        self.assertEqual((a["stdout_start"], a["stdout_dropped"]), (1000, 0))
        self.assertEqual((a["stderr_start"], a["stderr_dropped"]), (0, 0))
        outs, ex, _ = drain(c2, r["id"], [a["stdout"], a["stderr"]])
        self.assertEqual(outs[a["stdout"]], b"")
        c2.close()

    def test_thousand_finished_processes_memory(self):
        n, batch = 1000, 100
        for start in range(0, n, batch):
            rids = [self.c.request("proc.spawn", self.helper("flood", 1024))
                    for _ in range(batch)]
            spawned = [self.c.wait(rid) for rid in rids]
            left = {r["id"] for r in spawned}
            while left:
                m = self.c.recv()
                if m[0] == 2 and m[1] == "proc.exit":
                    self.assertEqual(m[2]["stdout_bytes"], 1024)
                    left.discard(m[2]["id"])
        procs = self.c.call("proc.list")["procs"]
        self.assertGreaterEqual(len(procs), n)
        rss = self.agent.rss_kb()
        limit = 16 << 10 if not SANITIZED else 512 << 10
        self.assertLess(rss, limit, "agent VmRSS %d KiB with %d finished processes" % (rss, n))
        # Every one of them can still be replayed (on a connection that has not seen its exit).
        c2 = self.agent.connect()
        for p in (procs[0], procs[-1]):
            a = c2.call("proc.attach", {"id": p["id"]})
            outs, _, _ = drain(c2, p["id"], [a["stdout"], a["stderr"]])
            self.assertEqual(outs[a["stdout"]], pattern(0, 1024))
        c2.close()

    def test_a_process_being_replayed_is_not_evicted(self):
        # The process table fills with finished processes while another connection replays the
        # oldest of them: the others make room; the replay ends with its proc.exit.
        r = self.c.call("proc.spawn", self.helper("flood", 3 << 20))
        drain(self.c, r["id"], [r["stdout"], r["stderr"]])
        c2 = self.agent.connect()
        a = c2.call("proc.attach", {"id": r["id"]})
        self.assertEqual(c2.call("ping"), {})  # the replay stopped at the window (no credit)
        for _ in range(11):  # 1,100 more: past max_procs (1,024)
            rids = [self.c.request("proc.spawn", {"command": "true"}) for _ in range(100)]
            left = {self.c.wait(rid)["id"] for rid in rids}
            while left:
                m = self.c.recv()
                if m[0] == 2 and m[1] == "proc.exit":
                    left.discard(m[2]["id"])
        outs, ex, _ = drain(c2, r["id"], [a["stdout"], a["stderr"]])
        self.assertEqual(outs[a["stdout"]], pattern(0, 3 << 20))
        self.assertEqual(ex["stdout_bytes"], 3 << 20)
        c2.close()

    def test_cancel_while_replaying(self):
        # An attach to an exited process whose replay the client cancels: proc.exit follows.
        r = self.c.call("proc.spawn", self.helper("flood", 3 << 20))
        drain(self.c, r["id"], [r["stdout"], r["stderr"]])
        c2 = self.agent.connect()
        a = c2.call("proc.attach", {"id": r["id"]})
        c2.wait_for(lambda m: m[0] == 3 and m[1] == a["stdout"], "replayed data")
        c2.send([2, "stream.cancel", {"stream": a["stdout"]}])
        ex = c2.wait_for(lambda m: m[0] == 2 and m[1] == "proc.exit", "proc.exit")
        self.assertEqual(ex[2]["stdout_bytes"], 3 << 20)
        c2.close()

    def test_wait_on_a_replaying_connection_follows_its_exit(self):
        # proc.wait on a connection still replaying an exited process: the connection's
        # proc.exit comes first, the wait's answer right after it (PROTOCOL.md §9.2), not
        # while the replay is held back by credit.
        r = self.c.call("proc.spawn", self.helper("flood", 3 << 20))
        drain(self.c, r["id"], [r["stdout"], r["stderr"]])
        c2 = self.agent.connect()
        a = c2.call("proc.attach", {"id": r["id"]})
        rid = c2.request("proc.wait", {"id": r["id"]})
        # The window's worth of data, no credit: the wait must not be answered yet.
        self.assertEqual(c2.call("ping"), {})
        self.assertFalse(any(m[0] == 1 and m[1] == rid for m in c2.pending), c2.pending)
        order = []
        got = 0
        while True:
            m = c2.recv()
            self.assertIsNotNone(m, "connection closed")
            if m[0] == 3 and m[1] == a["stdout"]:
                got += len(m[2])
                c2.credit(m[1], len(m[2]))
            elif m[0] == 2 and m[1] == "proc.exit":
                order.append("exit")
            elif m[0] == 1 and m[1] == rid:
                order.append("wait")
                break
        self.assertEqual(order, ["exit", "wait"])
        self.assertEqual(got, 3 << 20)
        c2.close()

    def test_release_while_replaying(self):
        r = self.c.call("proc.spawn", self.helper("flood", 3 << 20))
        drain(self.c, r["id"], [r["stdout"], r["stderr"]])
        c2 = self.agent.connect()
        a = c2.call("proc.attach", {"id": r["id"]})
        self.assertEqual(a["stdout_start"], 0)
        # No credit granted: the replay stops at the window; the release cancels it.
        self.assertEqual(self.c.call("proc.release", {"id": r["id"]}), {})
        m = c2.wait_for(lambda m: m[0] == 2 and m[1] == "stream.cancel", "cancel")
        self.assertEqual(m[2]["error"]["code"], "CANCELLED")
        self.assertEqual(c2.call("ping"), {})
        c2.close()


class TestStdinHeld(AttachCase):
    """Input the agent holds for a child that reads nothing. Each new stdin stream (attach)
    starts with a whole window of credit, so without a bound a client that re-attaches and fills
    it every time queues a window per attach; and a window sent as one-byte frames must cost
    about its bytes, not a write request per frame."""

    def fill(self, sid, n):
        for off in range(0, n, 256 << 10):
            self.c.data(sid, b"z" * min(256 << 10, n - off))

    def test_reattached_stdin_holds_at_most_two_windows(self):
        go = os.path.join(tempfile.mkdtemp(prefix="sbx-attach-"), "go")
        self.addCleanup(lambda: os.path.exists(go) and os.unlink(go))
        r = self.c.call("proc.spawn", {"command": "while [ ! -e %s ]; do sleep 0.05; done; "
                                                  "wc -c" % go, "stdin": "pipe"})
        win = self.c.window
        self.fill(r["stdin"], win)
        rss0 = self.agent.rss_kb()
        handed, sent, last = 0, win, None
        for _ in range(40):
            a = self.c.call("proc.attach", {"id": r["id"], "stdin": True})
            if a["stdin"] is None:
                continue
            handed += 1
            last = a["stdin"]
            self.fill(last, win)
            sent += win
        # One window queued (less the pipe's own buffer) takes one more, then no more.
        self.assertEqual(handed, 1, "stdin handed over %d times" % handed)
        self.assertEqual(self.c.call("ping"), {})
        if not SANITIZED:
            grown = self.agent.rss_kb() - rss0
            self.assertLess(grown, 8 << 10, "agent VmRSS grew %d KiB" % grown)
        # The child reads it all; the last stream gets credit for its own bytes only.
        open(go, "w").close()
        granted = 0
        while granted < win:
            m = self.c.wait_for(lambda m: m[0] == 2 and m[1] == "stream.credit"
                                and m[2]["stream"] == last, "credit on stdin")
            granted += m[2]["bytes"]
        self.c.end(last)
        m = self.c.wait_for(lambda m: m[0] == 3 and m[1] == a["stdout"], "wc's count")
        self.assertEqual(int(m[2]), sent)
        self.assertFalse(any(m[0] == 2 and m[1] == "stream.credit" and m[2]["stream"] == last
                             for m in self.c.pending), self.c.pending)
        self.assertEqual(granted, win)


    def test_one_byte_frames_cost_their_bytes(self):
        go = os.path.join(tempfile.mkdtemp(prefix="sbx-attach-"), "go")
        self.addCleanup(lambda: os.path.exists(go) and os.unlink(go))
        r = self.c.call("proc.spawn", {"command": "while [ ! -e %s ]; do sleep 0.05; done; "
                                                  "md5sum" % go, "stdin": "pipe"})
        big, credit = self.c.fill(r["stdin"], 200000)  # the pipe is full
        self.assertEqual(self.c.call("ping"), {})
        rss0 = self.agent.rss_kb()
        small = os.urandom(credit)
        self.c.data_many(r["stdin"], [small[i:i + 1] for i in range(len(small))])
        self.assertEqual(self.c.call("ping"), {})
        grown = self.agent.rss_kb() - rss0
        self.assertLess(grown, 16 << 10, "agent VmRSS grew %d KiB for %d bytes" % (grown, credit))
        open(go, "w").close()
        self.c.end(r["stdin"])
        outs, ex, _ = drain(self.c, r["id"], [r["stdout"], r["stderr"]])
        self.assertEqual(ex["code"], 0)
        self.assertEqual(outs[r["stdout"]].split()[0].decode(),
                         hashlib.md5(big + small).hexdigest())  # every byte, in order

    def test_close_stdin_from_another_connection_tells_the_holder(self):
        r = self.c.call("proc.spawn", {"command": "cat", "stdin": "pipe"})
        c2 = self.agent.connect()
        self.assertEqual(c2.call("proc.close_stdin", {"id": r["id"]}), {})
        m = self.c.wait_for(lambda m: m[0] == 2 and m[1] == "stream.cancel"
                            and m[2]["stream"] == r["stdin"], "stdin's cancel", timeout=10)
        self.assertEqual(m[2]["error"]["code"], "CANCELLED")
        self.assertIn("proc.close_stdin", m[2]["error"]["message"])
        _, ex, _ = drain(self.c, r["id"], [r["stdout"], r["stderr"]])
        self.assertEqual(ex["code"], 0)  # cat saw EOF
        c2.close()


class TestAttachRepl(AttachCase):
    """(d) A REPL session outlives its connection; a new one finds it and its last result."""

    def test_repl_from_new_connection(self):
        r = self.c.call("repl.start", {"language": "sh"})
        sid = r["session"]
        self.assertEqual(self.c.call("repl.eval", {"session": sid, "code": "x=41"})["error"],
                         False)
        # An eval that finishes while nobody is connected.
        self.c.request("repl.eval", {"session": sid, "code": "sleep 0.3; echo done; x=$((x+1))"})
        time.sleep(0.05)
        self.c.close()
        self.c = None
        time.sleep(0.6)
        c2 = self.agent.connect()
        sessions = c2.call("repl.list")["sessions"]
        s = next(s for s in sessions if s["session"] == sid)
        self.assertFalse(s["busy"])
        self.assertEqual(s["evals"], 2)
        self.assertEqual(s["unclaimed"], 2)
        last = c2.call("repl.collect", {"session": sid})
        self.assertEqual((last["session"], last["eval"]), (sid, 2))
        self.assertEqual(last["stdout"], b"done\n")
        self.assertEqual(last["value"], "0")
        self.assertFalse(last["error"])
        # Collected once: then it is gone.
        s = next(s for s in c2.call("repl.list")["sessions"] if s["session"] == sid)
        self.assertIsNone(s["unclaimed"])
        with self.assertRaises(w.RemoteError) as cm:
            c2.call("repl.collect", {"session": sid})
        self.assertEqual(cm.exception.code, "NOT_FOUND")
        res = c2.call("repl.eval", {"session": sid, "code": "echo $x"})
        self.assertEqual(res["stdout"], b"42\n")
        c2.call("repl.close", {"session": sid})
        c2.close()

    def test_repl_process_not_attachable(self):
        r = self.c.call("repl.start", {"language": "sh"})
        pid = next(p["id"] for p in self.c.call("proc.list")["procs"]
                   if p["tag"] == "repl:%d" % r["session"])
        with self.assertRaises(w.RemoteError) as cm:
            self.c.call("proc.attach", {"id": pid})
        self.assertEqual(cm.exception.code, "BUSY")
        self.c.call("repl.eval", {"session": r["session"], "code": "echo some output"})
        self.c.call("repl.close", {"session": r["session"]})
        # Ended: still not attachable, and its output (delivered to the session) is not
        # counted as dropped.
        deadline = time.time() + 10
        while self.entry(self.c, pid)["state"] != "exited":
            self.assertLess(time.time(), deadline, "the interpreter did not exit")
            time.sleep(0.05)
        ent = self.entry(self.c, pid)
        self.assertEqual((ent["stdout_dropped"], ent["stderr_dropped"]), (0, 0), ent)
        with self.assertRaises(w.RemoteError) as cm:
            self.c.call("proc.attach", {"id": pid})
        self.assertEqual(cm.exception.code, "BUSY")


if __name__ == "__main__":
    unittest.main()
