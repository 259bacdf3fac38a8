#!/usr/bin/env python3
"""The per-workload seccomp filter of a standalone agent (issue 14, item 15; docs/INIT.md
"Seccomp"). Without sbx-init there is no baseline filter, but the agent itself stacks the
workload filter onto every process it starts: by default (strict) no process it starts, as root
or as a workload user, gets an AF_VSOCK socket (EAFNOSUPPORT), through the x86-64 ABI or the
x86-32 one, while the agent itself stays unfiltered and no_new_privs stays off (sudo works);
`--seccomp log` only logs, `off` and `baseline` add nothing. The real-guest counterpart, with
init's baseline, is tests/vm/test_vm.py TestSeccomp; under init in a PID namespace,
tests/integration/init/test_init.py seccomp.
"""
import os
import subprocess
import sys
import unittest
import warnings

warnings.simplefilter("ignore", ResourceWarning)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import sbxwire as w  # noqa: E402
import seccomp_probe  # noqa: E402
from workload import PY, WorkloadUser  # noqa: E402

BUILD = os.environ.get("SBX_BUILD", os.path.join(HERE, "../../build"))
AGENT = os.path.join(BUILD, "bin", "sbx-agent")


def status(pid):
    with open("/proc/%d/status" % pid) as f:
        return dict(l.split(":\t", 1) for l in f.read().splitlines() if ":\t" in l)


class TestSeccompAgent(unittest.TestCase):
    def setUp(self):
        self.user = WorkloadUser()
        self.agents = []

    def tearDown(self):
        for a, c in self.agents:
            a.finish(self, c)
        self.user.close()

    def start(self, *extra):
        a = w.Agent(AGENT, extra)
        c = a.connect()
        self.agents.append((a, c))
        return a, c

    def probe(self, c, as_user):
        params = {"argv": [PY, "-c", seccomp_probe.PROBE]}
        if as_user:
            params.update(uid=self.user.uid, gid=self.user.gid)
        res, ex, outs, _, _, _ = w.run(c, params)
        self.assertEqual(ex["code"], 0, outs.get(res["stderr"]))
        return seccomp_probe.parse(outs.get(res["stdout"], b""))

    def check_mode(self, mode, *extra):
        a, c = self.start(*extra)
        for as_user in (False, True):
            out = self.probe(c, as_user)
            bad = seccomp_probe.problems(out, mode, root=not as_user, init=False)
            self.assertEqual(bad, [], "%s as %s: %r" % (mode, "user" if as_user else "root", out))
        # The agent needs AF_VSOCK: the filter is its children's, never its own.
        self.assertEqual(status(a.proc.pid)["Seccomp"], "0")
        return a, c

    def test_default_is_strict(self):
        self.check_mode("strict")

    def test_strict_pty_child(self):
        """A PTY child (another path through the child's setup) is filtered too."""
        a, c = self.start("--seccomp", "strict")
        res, ex, outs, _, _, _ = w.run(c, {"argv": ["grep", "^Seccomp:", "/proc/self/status"],
                                           "pty": {"rows": 24, "cols": 80}})
        self.assertEqual(ex["code"], 0)
        self.assertIn(b"Seccomp:\t2", outs.get(res["stdout"], b""))

    def test_log_allows_but_filters(self):
        self.check_mode("log", "--seccomp", "log")

    def test_baseline_and_off_add_nothing(self):
        self.check_mode("baseline", "--seccomp", "baseline")
        self.check_mode("off", "--seccomp", "off")

    def test_bad_mode_is_refused(self):
        p = subprocess.run([AGENT, "--listen", "unix:/nonexistent/x", "--seccomp", "on"],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 2)
        self.assertIn("--seccomp must be off, baseline, strict or log", p.stderr)


if __name__ == "__main__":
    unittest.main()
