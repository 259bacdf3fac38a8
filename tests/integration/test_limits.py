#!/usr/bin/env python3
"""Workload limits on the host (issue 14 item 16; PROTOCOL.md §14.10): RLIMIT_NOFILE of the
processes the agent starts, the limits params where the agent has no cgroup, and, where this
machine lets a root test make cgroup2 directories, the per-process cgroups themselves (made,
joined, left behind, killed, removed). Limits that need a controller, and OOM kills, need a guest
kernel of our own: tests/vm/test_vm.py TestLimits."""
import os
import resource
import subprocess
import sys
import time
import unittest
import warnings

warnings.simplefilter("ignore", ResourceWarning)  # sockets left to the garbage collector

sys.path.insert(0, os.path.dirname(__file__))
import sbxwire as w  # noqa: E402

BUILD = os.environ.get("SBX_BUILD", os.path.join(os.path.dirname(__file__), "../../build"))
AGENT = os.path.join(BUILD, "bin", "sbx-agent")
LIMITS = {"memory_max": 64 << 20, "pids_max": 10, "cpu_max": 50}


def cgroup2_mount():
    """A cgroup2 mount point a root test may make directories in, or None."""
    if os.geteuid() != 0:
        return None
    with open("/proc/self/mounts") as f:
        for line in f:
            dev, mnt, fstype = line.split()[:3]
            if fstype == "cgroup2" and os.access(mnt, os.W_OK):
                return mnt
    return None


class TestNofile(unittest.TestCase):
    def test_children_get_the_agents_original_limit(self):
        """The agent raises its own soft RLIMIT_NOFILE to the hard one; the processes it starts
        get the limit it was started with back (the image's default, not the agent's)."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard <= 256:
            self.skipTest("hard RLIMIT_NOFILE %d: nothing to lower" % hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # inherited by the agent
        try:
            agent = w.Agent(AGENT)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        c = agent.connect()
        try:
            with open("/proc/%d/limits" % agent.proc.pid) as f:
                line = [ln for ln in f if ln.startswith("Max open files")][0]
            self.assertNotEqual(line.split()[3], "256", "the agent did not raise its limit")
            want = [b"256", b"unlimited" if hard == resource.RLIM_INFINITY else b"%d" % hard]
            for who in ({}, {"uid": 65534, "gid": 65534} if os.geteuid() == 0 else None):
                if who is None:
                    continue
                _, ex, outs, *_ = w.run(c, dict(argv=["sh", "-c", "ulimit -n; ulimit -Hn"],
                                                **who))
                self.assertEqual(ex["code"], 0)
                self.assertEqual(b"".join(outs.values()).split(), want, who)
        finally:
            agent.finish(self, c)


class TestNoCgroup(unittest.TestCase):
    """Without --cgroup (no sbx-init): no capability "limits", and a request that asks for a
    limit is refused with UNSUPPORTED naming it, never run without it."""

    def setUp(self):
        self.agent = w.Agent(AGENT)
        self.c = self.agent.connect(hello=False)
        self.hello = self.c.hello()

    def tearDown(self):
        self.agent.finish(self, self.c)

    def test_limits_refused(self):
        self.assertNotIn("limits", self.hello["capabilities"])
        for key, value in LIMITS.items():
            with self.assertRaises(w.RemoteError) as cm:
                self.c.call("proc.spawn", {"argv": ["true"], key: value})
            self.assertEqual((cm.exception.code, cm.exception.err.get("field")),
                             ("UNSUPPORTED", key))
            with self.assertRaises(w.RemoteError) as cm:
                self.c.call("repl.start", {"language": "sh", key: value})
            self.assertEqual((cm.exception.code, cm.exception.err.get("field")),
                             ("UNSUPPORTED", key))
        # Out of range is BAD_PARAM first, as for every param (§7.2).
        for key, value in (("memory_max", 4096), ("pids_max", 0), ("cpu_max", 100001),
                           ("memory_max", -1), ("pids_max", "10")):
            with self.assertRaises(w.RemoteError) as cm:
                self.c.call("proc.spawn", {"argv": ["true"], key: value})
            self.assertEqual((cm.exception.code, cm.exception.err.get("field")),
                             ("BAD_PARAM", key))
        self.assertEqual(self.c.call("proc.list")["procs"], [])  # nothing ran
        _, ex, *_ = w.run(self.c, {"argv": ["true"]})
        self.assertIs(ex["oom"], False)


@unittest.skipUnless(cgroup2_mount(), "needs root and a writable cgroup2 mount")
class TestCgroup(unittest.TestCase):
    """--cgroup DIR on this machine's cgroup2 (controllers or not): every process in a cgroup
    of its own, made before it runs and removed after it and everything it left there ended."""

    def setUp(self):
        self.dir = os.path.join(cgroup2_mount(), "sbx-test-%d" % os.getpid())
        os.mkdir(self.dir)
        self.addCleanup(self.remove_dir)
        # Can processes be moved here (a cgroup namespace or delegation may say no)?
        self.sleeper = subprocess.Popen(["sleep", "60"])
        self.addCleanup(self.sleeper.wait)
        self.addCleanup(self.sleeper.kill)
        os.mkdir(os.path.join(self.dir, "7"))  # an empty leftover of an earlier agent
        os.mkdir(os.path.join(self.dir, "8"))  # ...and one a process still uses
        try:
            with open(os.path.join(self.dir, "8", "cgroup.procs"), "w") as f:
                f.write(str(self.sleeper.pid))
        except OSError as e:
            self.skipTest("cannot move processes into %s: %s" % (self.dir, e))
        self.agent = w.Agent(AGENT, ["--cgroup", self.dir])
        self.c = self.agent.connect(hello=False)
        self.hello = self.c.hello()

    def tearDown(self):
        self.agent.finish(self, self.c)

    def remove_dir(self):
        for _ in range(100):
            for d in os.listdir(self.dir):
                p = os.path.join(self.dir, d)
                if os.path.isdir(p):
                    try:
                        with open(os.path.join(p, "cgroup.kill"), "w") as f:
                            f.write("1")
                        os.rmdir(p)
                    except OSError:
                        pass
            try:
                os.rmdir(self.dir)
                return
            except OSError:
                time.sleep(0.05)

    def cgroups(self):
        return sorted(int(d) for d in os.listdir(self.dir) if d.isdigit())

    def wait_cgroups(self, want, timeout=10):
        deadline = time.monotonic() + timeout
        while self.cgroups() != want:
            self.assertLess(time.monotonic(), deadline, "cgroups %r, want %r" % (
                self.cgroups(), want))
            time.sleep(0.02)

    def run_out(self, params):
        _, ex, outs, *_ = w.run(self.c, params)
        return ex, b"".join(outs.values()).decode()

    def test_a_cgroup_per_process(self):
        self.assertIn("limits", self.hello["capabilities"])
        self.assertEqual(self.cgroups(), [8])  # the sweep removed 7; 8 holds the sleeper
        rel = self.dir[len(cgroup2_mount()):]
        ex, out = self.run_out({"argv": ["cat", "/proc/self/cgroup"]})
        self.assertEqual(ex["code"], 0)
        self.assertEqual(out.splitlines()[-1], "0::%s/9" % rel)  # numbers past the leftovers
        self.assertIs(ex["oom"], False)
        self.wait_cgroups([8])  # removed once reaped
        self.sleeper.kill()
        self.wait_cgroups([])  # 8 too, when its last process was gone
        # A start that fails leaves nothing behind.
        with self.assertRaises(w.RemoteError):
            self.c.call("proc.spawn", {"argv": ["/nonexistent/x"]})
        self.assertEqual(self.cgroups(), [])

    def test_left_behind_then_killed(self):
        """A process's cgroup outlives it while its descendants are in it; proc.kill with
        group and SIGKILL ends them all, also one that left the process group (setsid)."""
        ex, out = self.run_out({"command": "sleep 60 >/dev/null 2>&1 & "
                                           "setsid sleep 60 >/dev/null 2>&1 & echo $!"})
        escapee = int(out)
        self.assertEqual(ex["code"], 0)
        self.sleeper.kill()
        (n,) = [n for n in self.cgroups() if n != 8]
        self.assertEqual(len(open(os.path.join(self.dir, str(n), "cgroup.procs")).read().split()),
                         2)
        self.c.call("proc.kill", {"id": ex["id"], "signal": "KILL", "group": True})
        self.wait_cgroups([])
        self.assertFalse(os.path.exists("/proc/%d/cgroup" % escapee) and
                         open("/proc/%d/stat" % escapee).read().split(")")[1].split()[0] != "Z",
                         "the process that left the group survived")

    def test_limits_need_their_controller(self):
        with open(os.path.join(self.dir, "cgroup.subtree_control")) as f:
            on = f.read().split()
        for (key, value), ctl in zip(LIMITS.items(), ("memory", "pids", "cpu")):
            if ctl in on:
                continue
            with self.assertRaises(w.RemoteError) as cm:
                self.c.call("proc.spawn", {"argv": ["true"], key: value})
            self.assertEqual((cm.exception.code, cm.exception.err.get("field")),
                             ("UNSUPPORTED", key))


if __name__ == "__main__":
    unittest.main()
