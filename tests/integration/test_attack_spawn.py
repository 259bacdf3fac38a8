#!/usr/bin/env python3
"""Attacks on process starts (issue 14, items 1, 13 and 17), made the way a sandboxed workload
would make them: as a real unprivileged user created by the test (workload.py).

- TestAttackSpawnStop (item 1): between its identity switch and execve a spawned child is a
  process of the target user, who can SIGSTOP it. The agent clones with CLONE_VM|CLONE_VFORK, so
  the thread that cloned waits until exec; that must never be the loop. A `kill(-1, SIGSTOP)` loop
  runs as the user while the test spawns as that user, many starts at a time: the agent answers
  ping on another connection throughout, every spawn gets its result or TIMEOUT (stage "exec",
  the child killed), a requester that closes with starts pending leaves no process or zombie
  behind, and a normal spawn works once the attacker is gone.
- TestAttackSpawnPath (item 13): argv[0] is searched on PATH with the target user's rights, as
  execvp(3) run by that user would: a directory or file only root may use is passed over (or
  gives the error execvp gives that user), never picked because root could use it.
- TestAttackSpawnLeak (item 17): failed starts (PTY + a bad identity, a cwd or program the user
  cannot reach, a REPL with no such user) free everything: under ASan, LeakSanitizer runs when
  the agent exits and a report fails the test.
"""
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import unittest
import warnings

warnings.simplefilter("ignore", ResourceWarning)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import sbxwire as w  # noqa: E402
from workload import PY, WorkloadUser  # noqa: E402

BUILD = os.environ.get("SBX_BUILD", os.path.join(HERE, "../../build"))
AGENT = os.path.join(BUILD, "bin", "sbx-agent")

EXEC_MS = 5000  # SBX_SPAWN_EXEC_MS (protocol/include/sbx/limits.h)
THREADS_MAX = 16  # SBX_SPAWN_THREADS_MAX
PING_BOUND = 10.0  # seconds: "the agent answers", not a performance figure

# Stops every process of its user but itself, as fast as it can (kill(2) with pid -1).
STOPPER = """
import os, signal
while True:
    try:
        os.kill(-1, signal.SIGSTOP)
    except OSError:
        pass
"""


class Pinger(threading.Thread):
    """Pings on its own connection every 50 ms and remembers the slowest answer (or that one never
    came within PING_BOUND)."""

    def __init__(self, agent):
        super().__init__(daemon=True)
        self.conn = agent.connect()
        self.conn.sock.settimeout(PING_BOUND)
        self.worst = 0.0
        self.count = 0
        self.failure = None
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            t = time.monotonic()
            try:
                self.conn.call("ping")
            except Exception as e:  # socket.timeout on a frozen agent
                self.failure = "no answer to ping within %.0f s (%r)" % (PING_BOUND, e)
                return
            self.worst = max(self.worst, time.monotonic() - t)
            self.count += 1
            self.halt.wait(0.05)

    def finish(self):
        self.halt.set()
        self.join(PING_BOUND + 5)
        self.conn.close()


def user_pids(uid, keep=()):
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) not in keep:
            try:
                if os.stat("/proc/" + pid).st_uid == uid:
                    out.append(int(pid))
            except OSError:
                pass
    return out


def children(ppid):
    """(pid, state) of every process whose parent is @ppid."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % pid) as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rindex(")") + 2:].split()
        if int(fields[1]) == ppid:
            out.append((int(pid), fields[0]))
    return out


def threads(pid):
    return len(os.listdir("/proc/%d/task" % pid))


class SpawnCase(unittest.TestCase):
    def setUp(self):
        self.u = WorkloadUser()
        self.tmp = tempfile.mkdtemp(prefix="sbx-attack-spawn-")
        os.chmod(self.tmp, 0o755)
        self.agent = w.Agent(AGENT)
        self.c = self.agent.connect()

    def tearDown(self):
        self.u.close()  # first: a frozen agent's stopped child goes with the user
        try:
            self.agent.finish(self, self.c)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def as_user(self, **kw):
        p = {"uid": self.u.uid, "gid": self.u.gid, "groups": []}
        p.update(kw)
        return p

    def output(self, params, conn=None):
        """Run a process to its end: (exit map, stdout bytes)."""
        _, ex, outs, _, _, _ = w.run(conn or self.c, params)
        r = [v for k, v in outs.items()]
        return ex, b"".join(r)


class TestAttackSpawnStop(SpawnCase):
    def start_attacker(self):
        self.attacker = self.u.popen([PY, "-c", STOPPER])
        time.sleep(0.2)

    def kill_user_procs(self):
        """SIGKILL every process of the user except the attacker (stopped ones included)."""
        for pid in user_pids(self.u.uid, keep=(self.attacker.pid,)):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def spawn_round(self, conn, n, cwd):
        """Send @n spawns as the user at once; (started, timed out) once all were answered. A
        response that does not come within EXEC_MS plus a margin fails: the agent is frozen."""
        params = self.as_user(argv=["true"], cwd=cwd, stdout="null", stderr="null")
        ids = [conn.request("proc.spawn", params) for _ in range(n)]
        started = timed_out = 0
        for rid in ids:
            try:
                conn.wait(rid)
                started += 1
            except socket.timeout:
                self.fail("proc.spawn %d was not answered within %.0f s: the agent is frozen"
                          % (rid, conn.sock.gettimeout()))
            except w.RemoteError as e:
                err = e.err
                self.assertEqual((err["code"], err.get("stage")), ("TIMEOUT", "exec"), err)
                self.assertIn("did not exec within %d ms" % EXEC_MS, err["message"])
                timed_out += 1
        return started, timed_out

    def test_stopped_children_never_freeze_the_agent(self):
        d = self.u.mkdtemp()
        self.start_attacker()
        pinger = Pinger(self.agent)
        pinger.start()
        self.c.sock.settimeout(EXEC_MS / 1000 + 15)
        started = timed_out = 0
        t0 = time.monotonic()
        try:
            # A long cwd ("/./././...") widens the window between setuid and execve a little.
            for i in range(400):
                s, t = self.spawn_round(self.c, 32, d + "/." * (1000 if i % 2 else 0))
                started += s
                timed_out += t
                self.kill_user_procs()  # the stopped `true`s, so max_procs is never reached
                if time.monotonic() - t0 > 25 and timed_out > 0:
                    break
                self.assertIsNone(pinger.failure, pinger.failure)
        finally:
            pinger.finish()
        self.assertIsNone(pinger.failure, pinger.failure)
        self.assertLess(pinger.worst, PING_BOUND)
        self.assertGreater(pinger.count, 10)
        # The attack did hit the window (else this test proved nothing).
        self.assertGreater(timed_out, 0, "no child was stopped before exec in %d spawns" % started)
        self.attacker.kill()
        self.attacker.wait()
        self.u.kill_all()
        ex, out = self.output(self.as_user(argv=["id", "-u"]))
        self.assertEqual((ex["code"], out), (0, b"%d\n" % self.u.uid))
        ex, out = self.output({"argv": ["echo", "root"]})
        self.assertEqual(out, b"root\n")

    def test_requester_closing_with_starts_pending(self):
        d = self.u.mkdtemp()
        ex, _ = self.output({"argv": ["true"]})  # a first spawn: the agent's threads settle
        base = threads(self.agent.proc.pid)
        self.start_attacker()
        for _ in range(6):
            c2 = self.agent.connect()
            params = self.as_user(argv=["true"], cwd=d + "/." * 1000, stdout="null",
                                  stderr="null")
            for _ in range(48):
                c2.request("proc.spawn", params)
            time.sleep(0.05)
            c2.close()  # with most of them still starting
        self.assertEqual(self.c.call("ping"), {})
        time.sleep(EXEC_MS / 1000 + 1.5)  # every start pending at the close has been killed
        self.assertEqual(self.c.call("ping"), {})
        self.attacker.kill()
        self.attacker.wait()
        self.u.kill_all()
        # Whatever started runs on as processes nobody waits for; once they are gone, the agent
        # has reaped everything: no zombie, no process left, no spawner thread left.
        deadline = time.monotonic() + 10
        while True:
            kids = children(self.agent.proc.pid)
            running = [p for p in self.c.call("proc.list")["procs"] if p["state"] == "running"]
            if not kids and not running and threads(self.agent.proc.pid) <= base:
                break
            self.assertLess(time.monotonic(), deadline,
                            "left behind: children %r, running %r, %d threads (was %d)"
                            % (kids, running, threads(self.agent.proc.pid), base))
            time.sleep(0.1)
        self.assertEqual(user_pids(self.u.uid), [])
        ex, out = self.output(self.as_user(argv=["id", "-u"]))
        self.assertEqual(out, b"%d\n" % self.u.uid)

    def test_burst_of_starts_is_bounded(self):
        """Starts beyond SBX_SPAWN_THREADS_MAX wait their turn: a burst never has more spawner
        threads than that, and every start is answered."""
        ex, _ = self.output({"argv": ["true"]})
        base = threads(self.agent.proc.pid)
        peak = [base]
        done = threading.Event()

        def sample():
            while not done.is_set():
                try:
                    peak[0] = max(peak[0], threads(self.agent.proc.pid))
                except OSError:
                    pass
                time.sleep(0.001)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        ids = [self.c.request("proc.spawn", {"argv": ["true"], "stdout": "null", "stderr": "null"})
               for _ in range(400)]
        for rid in ids:
            self.assertIn("pid", self.c.wait(rid))
        done.set()
        t.join()
        self.assertLessEqual(peak[0], base + THREADS_MAX)

    def test_repl_start_under_attack(self):
        """A REPL interpreter starts through the same path: its start fails cleanly or runs."""
        d = self.u.mkdtemp()
        self.start_attacker()
        pinger = Pinger(self.agent)
        pinger.start()
        self.c.sock.settimeout(EXEC_MS / 1000 + 15)
        outcomes = set()
        try:
            for _ in range(3):
                ids = [self.c.request("repl.start",
                                      self.as_user(language="sh", cwd=d + "/." * 1000))
                       for _ in range(16)]
                for rid in ids:
                    try:
                        r = self.c.wait(rid)
                        outcomes.add("started")
                        self.c.call("repl.close", {"session": r["session"]})
                    except socket.timeout:
                        self.fail("repl.start was not answered: the agent is frozen")
                    except w.RemoteError as e:
                        # Stopped before exec (TIMEOUT, stage exec) or after it, before the
                        # driver said ready (TIMEOUT after SBX_REPL_START_MS).
                        self.assertEqual(e.code, "TIMEOUT", e.err)
                        outcomes.add(e.err.get("stage", "ready"))
                self.kill_user_procs()
        finally:
            pinger.finish()
        self.assertIsNone(pinger.failure, pinger.failure)
        self.attacker.kill()
        self.attacker.wait()
        self.u.kill_all()
        r = self.c.call("repl.start", self.as_user(language="sh"))
        res = self.c.call("repl.eval", {"session": r["session"], "code": "id -u"})
        self.assertEqual(res["stdout"], b"%d\n" % self.u.uid)


class TestAttackSpawnPath(SpawnCase):
    def probe_dir(self, who, mode, file_mode=0o755):
        """A directory of mode @mode owned by root holding an executable `sbxprobe` that prints
        @who."""
        d = tempfile.mkdtemp(prefix="sbx-path-", dir=self.tmp)
        f = os.path.join(d, "sbxprobe")
        with open(f, "w") as fp:
            fp.write("#!/bin/sh\necho %s\n" % who)
        os.chmod(f, file_mode)
        os.chmod(d, mode)
        return d

    def execvp_errno(self, path, name="sbxprobe"):
        """What execvp(3) gives the workload user for @name on @path: an errno name."""
        r = self.u.run([PY, "-c", "import errno, os, sys\n"
                        "try:\n    os.execvp(sys.argv[1], [sys.argv[1]])\n"
                        "except OSError as e:\n    print(errno.errorcode[e.errno])\n", name],
                       env=self.u.env(PATH=path))
        return r.stdout.strip()

    def test_root_only_directory_is_passed_over(self):
        secret = self.probe_dir("root", 0o700)  # only root may search it
        mine = self.probe_dir("user", 0o755)
        path = secret + ":" + mine
        ex, out = self.output(self.as_user(argv=["sbxprobe"], env={"PATH": path}))
        self.assertEqual(out, b"user\n", "a user spawn must not pick a file in %s" % secret)
        ex, out = self.output({"argv": ["sbxprobe"], "env": {"PATH": path}})
        self.assertEqual(out, b"root\n")  # root may search it

    def test_file_only_root_may_execute_is_passed_over(self):
        secret = self.probe_dir("root", 0o755, file_mode=0o700)
        mine = self.probe_dir("user", 0o755)
        ex, out = self.output(self.as_user(argv=["sbxprobe"], env={"PATH": secret + ":" + mine}))
        self.assertEqual(out, b"user\n")

    def test_errors_are_what_execvp_gives_the_user(self):
        secret = self.probe_dir("root", 0o700)
        noexec = self.probe_dir("root", 0o755, file_mode=0o644)
        for path, name in ((secret, "sbxprobe"), (secret, "sbxnosuch"), (noexec, "sbxprobe"),
                           (secret + ":" + noexec, "sbxprobe"), ("/nonexistent", "sbxprobe")):
            want = self.execvp_errno(path, name)
            self.assertIn(want, ("EACCES", "ENOENT"))
            with self.assertRaises(w.RemoteError, msg=(path, name)) as cm:
                self.c.call("proc.spawn", self.as_user(argv=[name], env={"PATH": path}))
            err = cm.exception.err
            self.assertEqual((err["code"], err["stage"]), (want, "exec"), (path, name, err))
            self.assertIn('exec "%s"' % name, err["message"])


class TestAttackSpawnLeak(SpawnCase):
    def test_failed_starts_free_everything(self):
        d = self.u.mkdtemp(mode=0o700)
        os.chown(d, 0, 0)  # the user may not enter it
        cases = [
            ({"argv": ["true"], "pty": {}, "user": "sbxnosuchuser"}, "ENOENT", "user"),
            ({"argv": ["true"], "pty": {"term": "vt100"}, "user": "sbxnosuchuser"}, "ENOENT",
             "user"),
            ({"argv": ["true"], "pty": {"term": "vt100"}, "user": self.u.name, "cwd": d},
             "EACCES", "cwd"),
            (self.as_user(argv=["true"], pty={"term": "xterm"}, cwd=d), "EACCES", "cwd"),
            (self.as_user(argv=["sbxnosuch"], pty={}, env={"PATH": "/usr/bin:/bin"}), "ENOENT",
             "exec"),
            (self.as_user(argv=["true"], cwd=d), "EACCES", "cwd"),
            ({"argv": ["true"], "pty": {}, "user": self.u.name, "gid": 0, "groups": [0],
              "cwd": "/nonexistent"}, "ENOENT", "cwd"),
        ]
        for _ in range(3):
            for params, code, stage in cases:
                with self.assertRaises(w.RemoteError, msg=params) as cm:
                    self.c.call("proc.spawn", params)
                self.assertEqual((cm.exception.code, cm.exception.err.get("stage")),
                                 (code, stage), params)
            for params in ({"language": "sh", "user": "sbxnosuchuser"},
                           {"language": "sh", "user": self.u.name, "cwd": d},
                           {"argv": ["/nonexistent/python3"]}):
                with self.assertRaises(w.RemoteError, msg=params):
                    self.c.call("repl.start", params)
        # And one that works, on a terminal as the user.
        ex, out = self.output(self.as_user(argv=["id", "-u"], pty={"term": "dumb"}))
        self.assertEqual(out.strip(), b"%d" % self.u.uid)
        # tearDown stops the agent: a LeakSanitizer report in its log fails the test.


if __name__ == "__main__":
    unittest.main()
