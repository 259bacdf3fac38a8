#!/usr/bin/env python3
"""Listening sockets handed to the agent (issue 14, item 11; docs/INIT.md "Listeners").

sbx-init creates the agent's listening sockets once and passes them to every agent it starts
(`--listen-fd FD=ADDR`), so a restart never leaves the port free for a workload to bind and
receive the host's hello. Here the test plays init: it holds the socket, SIGKILLs the agent,
connects while no agent runs (the connection waits in the backlog) and starts the next agent on
the same socket, which serves it. The agent keeps a passed socket close-on-exec, so no process
it starts inherits it, and it refuses an fd that is not a socket listening on the address
named. With init, in a PID namespace: tests/integration/init/test_init.py listen_held; in a VM,
over vsock: tests/vm/test_vm.py TestListenHeld.
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import warnings

warnings.simplefilter("ignore", ResourceWarning)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import sbxwire as w  # noqa: E402

BUILD = os.environ.get("SBX_BUILD", os.path.join(HERE, "../../build"))
AGENT = os.path.join(BUILD, "bin", "sbx-agent")
O_CLOEXEC = 0o2000000


class TestListenFd(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="sbx-listen-")
        self.path = os.path.join(self.dir, "agent.sock")
        self.addr = "unix:" + self.path
        self.procs = []

    def tearDown(self):
        for p, log in self.procs:
            if p.poll() is None:
                p.terminate()
                p.wait(30)
            log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def held_socket(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(self.path)
        s.listen(16)
        self.addCleanup(s.close)
        return s

    def agent(self, spec, fd, wait=True):
        log = open(os.path.join(self.dir, "agent-%d.log" % len(self.procs)), "w+")
        p = subprocess.Popen([AGENT, "--listen-fd", spec], pass_fds=[fd], stdout=log,
                             stderr=subprocess.STDOUT)
        self.procs.append((p, log))
        if wait:
            deadline = time.monotonic() + 10
            while "ready" not in open(log.name).read():
                self.assertIsNone(p.poll(), open(log.name).read())
                self.assertLess(time.monotonic(), deadline, "the agent did not start")
                time.sleep(0.01)
        return p, log

    def test_served_and_never_inherited(self):
        s = self.held_socket()
        p, _ = self.agent("%d=%s" % (s.fileno(), self.addr), s.fileno())
        c = w.Conn(self.addr, timeout=10)
        c.hello()
        res, ex, outs, _, _, _ = w.run(c, {"argv": ["ls", "/proc/self/fd"]})
        self.assertEqual(ex["code"], 0)
        # 0-2 and the directory ls reads: not the listening socket.
        self.assertEqual(sorted(outs[res["stdout"]].split()), [b"0", b"1", b"2", b"3"])
        c.close()
        with open("/proc/%d/fdinfo/%d" % (p.pid, s.fileno())) as f:
            flags = int([l for l in f.read().splitlines() if l.startswith("flags:")][0].split()[1],
                        8)
        self.assertTrue(flags & O_CLOEXEC, "the agent's listening fd is inheritable")

    def test_restart_leaves_no_window(self):
        """The holder keeps the socket: a client connecting between two agents waits in the
        backlog and the next agent serves it; with an agent that bound the address itself, the
        socket died with it and the connect was refused."""
        s = self.held_socket()
        spec = "%d=%s" % (s.fileno(), self.addr)
        p, _ = self.agent(spec, s.fileno())
        c = w.Conn(self.addr, timeout=10)
        c.hello()
        pid1 = c.call("info")["pid"]
        c.close()
        p.kill()
        p.wait()
        waiting = w.Conn(self.addr, timeout=10)  # no agent now: refused if nobody held it
        rid = waiting.request("hello", {"version": 1, "client": "test_listen"})
        self.agent(spec, s.fileno())
        waiting.window = waiting.wait(rid)["limits"]["stream_window"]
        self.assertNotEqual(waiting.call("info")["pid"], pid1)
        waiting.close()

    def test_wrong_fds_refused(self):
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        s = self.held_socket()
        cases = [
            ("%d=%s" % (a.fileno(), self.addr), a.fileno(), "not a socket listening on"),
            ("%d=vsock:1024" % s.fileno(), s.fileno(), "not a socket listening on"),
            ("%d=unix:%s/other" % (s.fileno(), self.dir), s.fileno(),
             "not a socket listening on"),
            ("%d=serial:agent" % s.fileno(), s.fileno(), "a serial port is not a socket"),
            ("1=%s" % self.addr, s.fileno(), "expected FD=ADDR, FD 3 or more"),
            ("x=%s" % self.addr, s.fileno(), "expected FD=ADDR, FD 3 or more"),
        ]
        for spec, fd, why in cases:
            p, log = self.agent(spec, fd, wait=False)
            self.assertEqual(p.wait(30), 1, spec)
            self.assertIn(why, open(log.name).read(), spec)
        # Refused without being closed: the holder's socket still works.
        p, _ = self.agent("%d=%s" % (s.fileno(), self.addr), s.fileno())
        c = w.Conn(self.addr, timeout=10)
        c.hello()
        c.close()


if __name__ == "__main__":
    unittest.main()
