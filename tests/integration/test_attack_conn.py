#!/usr/bin/env python3
"""Attacks on the agent's connections (issue 14, items 2, 4 and 10), each made the way a sandboxed
workload would make it: as a real unprivileged user created by the test (workload.py).

- TestAttackHello (item 2): idle TCP connections that never say hello must not lock the host out
  of the unix socket (TCP has a pool of its own, with a cap on connections before hello), and a
  connection that says nothing is closed after the hello deadline with a TIMEOUT notification.
- TestAttackOutput (item 4): a client that sends 640,000 pings and reads none of the answers must
  not grow the agent's memory past a bound: the agent counts the memory its queued replies hold
  and stops reading the connection (back-pressure) until the client reads again.
- TestAttackToken (item 10): the TCP token is never on the agent's command line; from a file only
  root can read or from SBX_AGENT_TOKEN, scrubbed from /proc/PID/environ and from what workloads
  inherit; sbx-init hands it over by file.
"""
import inspect
import os
import secrets
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
from workload import PY, WorkloadUser  # noqa: E402

BUILD = os.environ.get("SBX_BUILD", os.path.join(HERE, "../../build"))
AGENT = os.path.join(BUILD, "bin", "sbx-agent")
INIT = os.path.join(BUILD, "bin", "sbx-init")
with open(AGENT, "rb") as _f:
    SANITIZED = b"__asan_init" in _f.read()
PINGS = 640000


def some_tcp_port():
    """A port to try; the agent exits at start-up if it is taken, and the caller tries another."""
    return 20000 + secrets.randbelow(40000)


def proc_status(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s in /proc/%d/status" % (field, pid))


# recv_exact (sbxwire's), ping_frames, push_until_stalled and count_frames run in the test and,
# as source, in the workload's FLOOD script too.
recv_exact = w.recv_exact


def read_msg(s):
    """One message from raw socket @s, or None at end of file."""
    hdr = recv_exact(s, 4)
    if hdr is None:
        return None
    body = recv_exact(s, int.from_bytes(hdr, "big"))
    return None if body is None else w.unpack(body)[0]


def call(s, rid, method, params=None):
    """Send a request on raw socket @s and return its response message [1, id, err, result]."""
    s.sendall(w.frame(w.pack([0, rid, method, params or {}])))
    while True:
        m = read_msg(s)
        if m is None or (m[0] == 1 and m[1] == rid):
            return m


def tcp_connect(port, timeout=10):
    deadline = time.time() + timeout
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=timeout)
        except ConnectionRefusedError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)


def ping_frames(n):
    """@n ping requests, ids 1..n, each 17 bytes: [0, id (u32), "ping", {}]."""
    return b"".join(b"\x00\x00\x00\x0d\x94\x00\xce" + i.to_bytes(4, "big") + b"\xa4ping\x80"
                    for i in range(1, n + 1))


def push_until_stalled(s, blob):
    """Send @blob on socket @s without reading, until all is sent or nothing more goes for 3 s;
    returns the bytes sent. @s is non-blocking afterwards."""
    s.setblocking(False)
    blob = memoryview(blob)
    off, last = 0, time.monotonic()
    while off < len(blob) and time.monotonic() - last < 3:
        try:
            off += s.send(blob[off:off + 65536])
            last = time.monotonic()
        except BlockingIOError:
            time.sleep(0.005)
    return off


def count_frames(buf):
    """(frames whole in @buf, bytes they take, the body of the last one)."""
    i, n, last = 0, 0, None
    while len(buf) - i >= 4:
        ln = int.from_bytes(buf[i:i + 4], "big")
        if len(buf) - i < 4 + ln:
            break
        last = (i + 4, i + 4 + ln)
        i += 4 + ln
        n += 1
    return n, i, None if last is None else bytes(buf[last[0]:last[1]])


class AgentWithTcp:
    """sbx-agent on a unix socket and a TCP port, its token in a file only root can read."""

    def __init__(self, extra=()):
        self.token = secrets.token_hex(16)
        self.tokdir = tempfile.mkdtemp(prefix="sbx-token-")
        self.tokfile = os.path.join(self.tokdir, "token")
        fd = os.open(self.tokfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, (self.token + "\n").encode())
        os.close(fd)
        for attempt in range(5):
            self.port = some_tcp_port()
            try:
                self.agent = w.Agent(AGENT, ["--listen", "tcp:127.0.0.1:%d" % self.port,
                                             "--token-file", self.tokfile, *extra])
            except RuntimeError:
                if attempt == 4:
                    raise
                continue
            if "listen on tcp" not in self.agent.logtext():
                return
            self.agent.stop()
        raise RuntimeError("no TCP port for the agent")

    def hello_tcp(self):
        s = tcp_connect(self.port)
        m = call(s, 1, "hello", {"version": 1, "token": self.token})
        assert m is not None and m[2] is None, m
        return s

    def connect(self):
        c = self.agent.connect(hello=False)
        c.hello(token=self.token)
        return c

    def close(self, case):
        self.agent.finish(case, None, self.tokdir)


# --- item 2 -----------------------------------------------------------------------------------

# Runs as the workload: open @n TCP connections to the agent and hold them without a byte sent;
# then, until stdin closes, keep opening and closing more as fast as it can.
HOLD_AND_CHURN = r"""
import select, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
held = []
for _ in range(n):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect(("127.0.0.1", port))
        held.append(s)
    except OSError:
        pass
print("held", len(held), flush=True)
churned = 0
while not select.select([sys.stdin], [], [], 0)[0]:
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port))
        churned += 1
    except OSError:
        pass
    s.close()
print("churned", churned, flush=True)
"""

# Runs as the workload: connect over TCP, send @argv[2] (hex; may be empty) and nothing more, read
# until the agent closes; print the seconds that took and what arrived (hex).
SILENT = r"""
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
t0 = time.monotonic()
s.sendall(bytes.fromhex(sys.argv[2]))
got = b""
while True:
    c = s.recv(65536)
    if not c:
        break
    got += c
print("%.3f %s" % (time.monotonic() - t0, got.hex()), flush=True)
"""


class AttackCase(unittest.TestCase):
    a = None

    def tearDown(self):
        if self.a is not None:
            self.a.close(self)


class TestAttackHello(AttackCase):

    def test_idle_tcp_connections_do_not_lock_out_the_host(self):
        """Item 2: a workload holding 200 idle TCP connections (no hello), and opening and
        closing more in a loop, takes no unix slot: the host still gets 60 unix connections
        through hello, its authenticated TCP connections keep working, the TCP pool refuses the
        rest with LIMIT, and once the workload is gone the count is back to what is open."""
        self.a = AgentWithTcp()
        mine = [self.a.hello_tcp() for _ in range(2)]  # authenticated before the attack
        with WorkloadUser() as u:
            p = u.popen([PY, "-c", HOLD_AND_CHURN, str(self.a.port), "200"],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            line = p.stdout.readline()
            self.assertTrue(line.startswith("held "), line)
            # One more, as the workload sees it: refused with LIMIT, as PROTOCOL.md 2.1 says.
            r = u.run([PY, "-c", SILENT, str(self.a.port), ""], timeout=30)
            m = w.unpack(bytes.fromhex(r.stdout.split()[1])[4:])[0]
            self.assertEqual((m[:2], m[2]["code"]), ([2, "error"], "LIMIT"), m)
            self.assertIn(m[2]["limit"], ("max_conns", "max_conns_before_hello"))
            conns = []
            try:
                for i in range(60):
                    try:
                        c = self.a.connect()
                    except (OSError, w.RemoteError, AssertionError) as e:
                        self.fail("the host's unix connection %d was refused while the workload "
                                  "held TCP connections: %r" % (i, e))
                    self.assertEqual(c.call("ping"), {}, "unix connection %d" % i)
                    conns.append(c)
                for i, s in enumerate(mine):
                    self.assertIsNone(call(s, 2, "ping")[2], "authenticated TCP %d" % i)
                info = conns[0].call("info")
            finally:
                p.stdin.close()
                churned = p.stdout.readline()
                p.wait(30)
                for c in conns[1:]:
                    c.close()
            self.assertTrue(churned.startswith("churned "), churned)
        # 60 unix + 2 TCP of ours, and at most the pool's worth of the workload's.
        self.assertLessEqual(info["conns"], 62 + 16, info)
        for s in mine:
            s.close()
        deadline = time.time() + 15
        while conns[0].call("info")["conns"] != 1:
            self.assertLess(time.time(), deadline, "connections left counted after they closed")
            time.sleep(0.05)
        conns[0].close()

    def test_silent_connections_closed_at_the_hello_deadline(self):
        """Item 2: a connection that sends nothing, or half a frame, is sent an error notification
        TIMEOUT and closed at the hello deadline (1 s here); one that said hello stays."""
        self.a = AgentWithTcp(["--hello-timeout", "1000"])
        c = self.a.connect()
        with WorkloadUser() as u:
            for sent in ("", "00000010940001"):
                r = u.run([PY, "-c", SILENT, str(self.a.port), sent], timeout=30)
                secs, got = r.stdout.split()
                self.assertTrue(0.8 <= float(secs) < 8, "closed after %ss" % secs)
                m = w.unpack(bytes.fromhex(got)[4:])[0]
                self.assertEqual((m[:2], m[2]["code"]), ([2, "error"], "TIMEOUT"), m)
        quiet = w.Conn(self.a.agent.addr)  # the host's unix socket: the same deadline
        self.assertEqual(quiet.recv()[2]["code"], "TIMEOUT")
        self.assertIsNone(quiet.recv())
        quiet.close()
        self.assertEqual(c.call("ping"), {})  # 2 s after its hello: still open
        self.assertEqual(c.call("info")["conns"], 1)
        c.close()


# --- item 4 -----------------------------------------------------------------------------------

# Runs as the workload, over TCP with the token: hello, then send argv[3] pings without reading
# a byte until the agent stops taking them (no progress for 3 s) or all are sent; report; when
# told (a line on stdin), read every answer while sending the rest; report how many came.
FLOOD = "import socket, sys, threading, time\n" + "".join(
    inspect.getsource(f) for f in (recv_exact, ping_frames, push_until_stalled, count_frames)) + r"""
port, hello, n = int(sys.argv[1]), bytes.fromhex(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection(("127.0.0.1", port), timeout=60)
s.sendall(hello)
print("hello", recv_exact(s, int.from_bytes(recv_exact(s, 4), "big")).hex(), flush=True)
blob = ping_frames(n)
off = push_until_stalled(s, blob)
print("sent", off, flush=True)
sys.stdin.readline()
s.setblocking(True)
s.settimeout(60)
got = [0]
def reader():
    buf = bytearray()
    while got[0] < n:
        c = s.recv(1 << 20)
        if not c:
            break
        buf += c
        k, used, _ = count_frames(buf)
        got[0] += k
        del buf[:used]
t = threading.Thread(target=reader)
t.start()
s.sendall(memoryview(blob)[off:])
t.join(300)
print("replies", got[0], flush=True)
"""


class TestAttackOutput(AttackCase):

    def test_unread_pings_over_tcp_bounded_memory(self):
        """Item 4: a workload with the token sends 640,000 pings over TCP and reads nothing: the
        agent's peak memory grows by less than 48 MiB (it grew 181 MB when only reply bytes were
        counted), another connection is answered meanwhile, and once the workload reads, every
        ping is answered."""
        self.a = AgentWithTcp()
        host = self.a.connect()
        pid = self.a.agent.proc.pid
        rss0 = proc_status(pid, "VmRSS")
        hello = w.frame(w.pack([0, 0, "hello", {"version": 1, "token": self.a.token}]))
        with WorkloadUser() as u:
            p = u.popen([PY, "-c", FLOOD, str(self.a.port), hello.hex(), str(PINGS)],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            line = p.stdout.readline()
            self.assertTrue(line.startswith("hello "), line)
            line = p.stdout.readline()
            self.assertTrue(line.startswith("sent "), line)
            time.sleep(0.5)  # let the agent take what it will
            grown = proc_status(pid, "VmRSS") - rss0
            t0 = time.monotonic()
            self.assertEqual(host.call("ping"), {})
            self.assertLess(time.monotonic() - t0, 2, "the agent is slow to answer others")
            p.stdin.write("read\n")
            p.stdin.flush()
            line = p.stdout.readline()
            p.wait(60)
        self.assertEqual(line.split(), ["replies", str(PINGS)])
        peak = proc_status(pid, "VmHWM") - rss0
        print("\n    # %s; agent RSS +%d KiB while nobody read, peak +%d KiB"
              % (line.strip(), grown, peak), file=sys.stderr)
        if not SANITIZED:  # ASan's quarantine keeps freed memory resident
            self.assertLess(grown, 48 * 1024, "agent grew by %d KiB while nobody read" % grown)
            self.assertLess(peak, 48 * 1024, "agent's peak grew by %d KiB" % peak)
        self.assertEqual(host.call("ping"), {})
        host.close()

    def test_unread_pings_stop_being_read(self):
        """Item 4, the back-pressure itself: over the unix socket (small kernel buffers) the
        agent stops reading a connection whose answers nobody reads, so the sender cannot push
        640,000 pings; when it reads, it gets all answers for all pings, in order."""
        self.a = AgentWithTcp()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.a.agent.sock)
        s.settimeout(30)
        self.assertIsNone(call(s, 0, "hello", {"version": 1, "token": self.a.token})[2])
        blob = memoryview(ping_frames(PINGS))
        off = push_until_stalled(s, blob)
        self.assertLess(off, len(blob) // 4, "the agent kept reading %d of %d bytes of pings "
                        "while its answers went unread" % (off, len(blob)))
        s.setblocking(True)
        buf, got, last = bytearray(), 0, None
        while got < PINGS:
            if off < len(blob):
                try:
                    off += s.send(blob[off:off + 65536], socket.MSG_DONTWAIT)
                except BlockingIOError:
                    pass
            c = s.recv(1 << 20)
            self.assertTrue(c, "closed after %d answers" % got)
            buf += c
            n, used, body = count_frames(buf)
            if n:
                last = body
                got += n
                del buf[:used]
        self.assertEqual(got, PINGS)
        self.assertEqual(w.unpack(last)[0], [1, PINGS, None, {}])  # in order, none lost
        self.assertIsNone(call(s, 1, "ping")[2])
        s.close()


# --- item 10 ----------------------------------------------------------------------------------

# Runs as the workload: print what it can read of the agent's /proc/PID/cmdline and environ.
READ_PROC = r"""
import sys
for f in ("cmdline", "environ"):
    try:
        print(f, open("/proc/%s/%s" % (sys.argv[1], f), "rb").read().hex())
    except OSError as e:
        print(f, "error", e.errno)
"""


class TestAttackToken(unittest.TestCase):
    def assert_not_visible(self, pid, token):
        """As the workload and as root: @token is in neither /proc/@pid/cmdline nor environ."""
        with WorkloadUser() as u:
            r = u.run([PY, "-c", READ_PROC, str(pid)], timeout=30)
        seen = dict(line.split(" ", 1) for line in r.stdout.splitlines())
        self.assertFalse(seen["cmdline"].startswith("error"), "the test could not read cmdline")
        for f, data in seen.items():
            self.assertNotIn(token.encode().hex(), data, "the workload read the token in %s" % f)
        for f in ("cmdline", "environ"):
            with open("/proc/%d/%s" % (pid, f), "rb") as fp:
                self.assertNotIn(token.encode(), fp.read(), "the token is in %s" % f)

    def test_token_on_the_command_line_is_refused(self):
        """Item 10: `--token T` is refused (exit 2, pointing at --token-file); before, a workload
        read T in /proc/PID/cmdline and ran commands as root over TCP."""
        tok = secrets.token_hex(16)
        d = tempfile.mkdtemp(prefix="sbx-token-")
        p = subprocess.Popen([AGENT, "--listen", "unix:" + os.path.join(d, "s"), "--token", tok],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            try:
                rc = p.wait(5)
            except subprocess.TimeoutExpired:
                self.assert_not_visible(p.pid, tok)
                self.fail("the agent runs with the token on its command line")
            self.assertEqual(rc, 2)
            self.assertIn("--token-file", p.stderr.read())
        finally:
            p.kill()
            p.wait()
            p.stderr.close()
            subprocess.run(["rm", "-rf", d])

    def test_token_from_the_environment_is_scrubbed(self):
        """Item 10: SBX_AGENT_TOKEN gives the agent its token (TCP works with it, unix asks for
        it too); then neither /proc/PID/environ nor the agent's command line shows it, to the
        workload or to root, and no process the agent starts inherits it."""
        tok = secrets.token_hex(16)
        for attempt in range(5):
            port = some_tcp_port()
            agent = w.Agent(AGENT, ["--listen", "tcp:127.0.0.1:%d" % port],
                            env=dict(os.environ, SBX_AGENT_TOKEN=tok, SBX_NEIGHBOUR="stays"))
            if "listen on tcp" not in agent.logtext() or attempt == 4:
                break
            agent.stop()
        try:
            s = tcp_connect(port)
            self.assertIsNone(call(s, 1, "hello", {"version": 1, "token": tok})[2])
            s.close()
            c = agent.connect(hello=False)
            with self.assertRaises(w.RemoteError) as cm:
                c.call("hello", {"version": 1})
            self.assertEqual(cm.exception.code, "AUTH")
            c = agent.connect(hello=False)
            c.hello(token=tok)
            self.assert_not_visible(agent.proc.pid, tok)
            r, ex, outs, *_ = w.run(c, {"argv": ["/usr/bin/env"]})
            env = outs[r["stdout"]].decode()
            self.assertNotIn("SBX_AGENT_TOKEN", env)
            self.assertIn("SBX_NEIGHBOUR=stays", env)  # only the token is taken out
            c.close()
        finally:
            agent.finish(self, None)

    def test_token_file_must_be_private(self):
        """Item 10: a token file other users can read is refused; a private one works, and the
        command line shows its name only."""
        d = tempfile.mkdtemp(prefix="sbx-token-")
        tok = secrets.token_hex(16)
        path = os.path.join(d, "token")
        with open(path, "w") as f:
            f.write(tok + "\n")
        try:
            os.chmod(path, 0o644)
            p = subprocess.Popen([AGENT, "--listen", "unix:" + os.path.join(d, "s"),
                                  "--token-file", path], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
            try:
                rc = p.wait(5)
            except subprocess.TimeoutExpired:
                rc = None
            finally:
                p.kill()
                p.wait()
            self.assertEqual(rc, 2, "the agent took a token every user can read")
            self.assertIn("chmod o-rw", p.stderr.read())
            p.stderr.close()
            os.chmod(path, 0o600)
            agent = w.Agent(AGENT, ["--token-file", path])
            try:
                c = agent.connect(hello=False)
                c.hello(token=tok)
                self.assert_not_visible(agent.proc.pid, tok)
                c.close()
            finally:
                agent.finish(self, None)
        finally:
            subprocess.run(["rm", "-rf", d])

    def test_init_hands_the_token_over_by_file(self):
        """Item 10: sbx-init's sbx.token_file reaches the agent as --token-file: the agent
        under init asks for the token, and the workload finds it in neither its command line
        nor its environment; a token put in sbx.env. is refused, not passed on."""
        if os.geteuid() != 0:
            self.skipTest("sbx-init runs as PID 1 of a namespace: needs root")
        sys.path.insert(0, os.path.join(HERE, "init"))
        import test_init
        test_init.INIT = INIT
        tok = secrets.token_hex(16)
        r = test_init.Run(agent=AGENT,
                          cmdline="sbx.listen=unix:@DIR@/agent.sock,tcp:127.0.0.1:7000 "
                                  "sbx.token_file=@DIR@/token sbx.env.SBX_AGENT_TOKEN=" + tok[:8],
                          pre="chmod 600 @DIR@/token", files={"token": tok + "\n"})
        try:
            r.wait_for(r"^agent ready")
            r.wait_for(r"sbx.env.SBX_AGENT_TOKEN=.*use sbx.token_file")
            init = r.init_pid()
            with open("/proc/%d/task/%d/children" % (init, init)) as f:
                agent = int(f.read().split()[0])
            self.assert_not_visible(agent, tok)
            with open("/proc/%d/cmdline" % agent, "rb") as f:
                self.assertIn(b"--token-file", f.read())
            with open("/proc/%d/environ" % agent, "rb") as f:
                self.assertNotIn(b"SBX_AGENT_TOKEN", f.read())
            c = w.Conn("unix:" + os.path.join(r.dir, "agent.sock"), timeout=10)
            with self.assertRaises(w.RemoteError) as cm:
                c.call("hello", {"version": 1})
            self.assertEqual(cm.exception.code, "AUTH")
            c = w.Conn("unix:" + os.path.join(r.dir, "agent.sock"), timeout=10)
            c.hello(token=tok)
            self.assertEqual(c.call("ping"), {})
            self.assertNotIn("needs a token", r.text())  # the TCP listener started
            c.close()
        finally:
            r.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
