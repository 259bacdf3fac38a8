#!/usr/bin/env python3
"""Integration tests: `sbx forward` (net.connect, PROTOCOL.md §20.1) and `sbx ports`
(net.listening, §20.2) against the real sbx-agent over a unix socket. The agent runs on this
machine, so its "guest" ports are local ones."""
import concurrent.futures
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request
import warnings

warnings.simplefilter("ignore", ResourceWarning)

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from test_cli import SBX, CliCase  # noqa: E402
import sbxwire  # noqa: E402
from sbxwire import recv_exact  # noqa: E402

HTTP_SERVER = """
import functools, http.server, sys
class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 128
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
Server(("127.0.0.1", int(sys.argv[2])), handler).serve_forever()
"""

# Echoes every connection, many at once, on one thread.
ECHO_SERVER = """
import selectors, socket, sys
sel = selectors.DefaultSelector()
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", int(sys.argv[1])))
ls.listen(2048)
sel.register(ls, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj is ls:
            c, _ = ls.accept()
            sel.register(c, selectors.EVENT_READ)
            continue
        try:
            b = key.fileobj.recv(65536)
        except OSError:
            b = b""
        if b:
            key.fileobj.sendall(b)
        else:
            sel.unregister(key.fileobj)
            key.fileobj.close()
"""

LISTENING = re.compile(rb"sbx: forward (\S+):(\d+) -> (\S+)\n")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def refused_port(case):
    """A port on 127.0.0.1 that refuses connections for the whole test: bound, never listening,
    so no test running beside this one can take it (a port from free_port() could be listening
    again by the time the guest connects, and the connection then hangs or is answered)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    case.addCleanup(s.close)
    return s.getsockname()[1]


class NetCase(CliCase):
    def setUp(self):
        super().setUp()
        self.started = []
        self.forwards = []
        self.dir = tempfile.mkdtemp(prefix="sbx-net-")

    def tearDown(self):
        for f in self.forwards:
            if f.poll() is None:
                f.kill()
                f.wait()
            f.stdout.close()
            f.stderr.close()
        for ident in self.started:
            self.sbx("kill", "-s", "KILL", "--group", ident)
        shutil.rmtree(self.dir, ignore_errors=True)
        super().tearDown()

    def detach(self, *argv):
        r = self.sbx("exec", "--detach", "-n", "--", *argv)
        self.assertEqual(r.returncode, 0, r.stderr)
        ident = r.stdout.decode().strip()
        self.started.append(ident)
        return ident

    def wait_listening(self, port):
        """Until `sbx ports` lists @port (the server in the guest is up); returns its entry."""
        deadline = time.time() + 20
        while True:
            socks = self.json("ports")["sockets"]
            found = [s for s in socks if s["port"] == port and s["proto"].startswith("tcp")]
            if found:
                return found[0]
            self.assertLess(time.time(), deadline, "port %d never listened" % port)
            time.sleep(0.1)

    def forward(self, *args, opts=()):
        """Start `sbx [OPTS] forward ARGS`; returns (process, [local ports]) once it listens."""
        f = subprocess.Popen([SBX, "-c", self.addr, *opts, "forward", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.forwards.append(f)
        ports, buf = [], b""
        nspec = len([a for a in args if not a.startswith("-")])
        deadline = time.time() + 10
        while len(ports) < nspec:
            self.assertLess(time.time(), deadline, buf)
            line = f.stderr.readline()
            self.assertNotEqual(line, b"", "forward ended: %r" % buf)
            buf += line
            m = LISTENING.match(line)
            if m:
                ports.append(int(m.group(2)))
        return f, ports

    def stop(self, f):
        f.send_signal(signal.SIGINT)
        err = f.stderr.read()
        self.assertEqual(f.wait(10), 0, err)
        return err


class TestCliForwardKeepalive(NetCase):
    def test_a_quiet_agent_is_pinged_and_a_stopped_one_given_up(self):
        f, [port] = self.forward("0:8080", opts=("--keepalive", "200ms"))
        time.sleep(1.5)  # idle: 7 intervals without a byte but the pings' answers
        self.assertIsNone(f.poll(), f.stderr.read1() if f.poll() is not None else b"")
        with self.agent.stopped():
            rc = f.wait(30)
        err = f.stderr.read()
        self.assertEqual(rc, 1, err)
        self.assertIn(b"nothing from the agent within 400 ms of a ping", err)


class TestCliForwardBrokenAgent(NetCase):
    """`sbx forward` against an agent that stops reading or breaks the protocol: the CLI stays
    in control of its connections and of its own end."""

    def relay(self, edit=None):
        r = sbxwire.Relay(self.agent.addr[len("unix:"):], os.path.join(self.dir, "relay.sock"),
                          edit)
        self.addCleanup(r.close)
        return r

    def test_second_signal_ends_it_while_the_agent_takes_nothing(self):
        gport = free_port()
        self.detach("python3", "-c", ECHO_SERVER, str(gport))
        self.wait_listening(gport)
        r = self.relay()
        self.addr, agent_addr = r.addr, self.addr
        try:
            f, (lport,) = self.forward("0:%d" % gport)
        finally:
            self.addr = agent_addr
        conns = []
        for i in range(6):
            c = socket.create_connection(("127.0.0.1", lport), timeout=30)
            c.sendall(b"ping\n")
            self.assertEqual(recv_exact(c, 5), b"ping\n")
            conns.append(c)
        r.held.set()
        # Six streams' credit (1 MiB each) is more than the CLI's socket buffer to the agent (2
        # MiB): its write to the agent waits for room that never comes.
        for c in conns:
            c.setblocking(False)
        sent, stuck_since, deadline = 0, None, time.time() + 30
        while time.time() < deadline and (stuck_since is None or time.time() - stuck_since < 1):
            moved = False
            for c in conns:
                try:
                    sent += c.send(b"x" * 65536)
                    moved = True
                except BlockingIOError:
                    pass
            if moved:
                stuck_since = None
            else:
                stuck_since = stuck_since or time.time()
                time.sleep(0.05)
        self.assertGreater(sent, 6 << 20)  # every stream's whole credit, and more, left here
        f.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        f.send_signal(signal.SIGTERM)  # no-op if the first one was enough
        try:
            rc = f.wait(10)
        except subprocess.TimeoutExpired:
            self.fail("sbx forward outlived a second SIGTERM while the agent took no bytes")
        self.assertIn(rc, (0, -signal.SIGTERM))
        for c in conns:
            c.close()

    def test_stream_ids_of_a_live_connection_are_refused(self):
        """A connection whose `in` stream ended (its client half-closed) still holds that id
        while the guest answers. The libsbx core no longer tracks the stream and takes the id
        again; `sbx forward` must not: it would route the new connection's bytes to the old one,
        and closing either would cancel the other's stream."""
        gport = free_port()
        trigger = os.path.join(self.dir, "bye")
        server = ("import os, socket, time\n"
                  "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                  "s.bind(('127.0.0.1', %d)); s.listen(8)\n"
                  "c, _ = s.accept()\n"
                  "while c.recv(65536): pass\n"
                  "c.sendall(b'eof\\n')\n"
                  "while not os.path.exists(%r): time.sleep(0.02)\n"
                  "c.sendall(b'bye\\n'); c.close()\n"
                  "while True: s.accept()\n" % (gport, trigger))
        self.detach("python3", "-c", server)
        self.wait_listening(gport)
        first = []

        def edit(msg, asked):
            """The second net.connect is answered with the first one's `in` id."""
            if msg[0] != 1 or asked.get(msg[1]) != "net.connect" or msg[2] is not None:
                return msg
            if not first:
                first.append(msg[3])
                return msg
            return [1, msg[1], None, {"in": first[0]["in"], "out": msg[3]["out"]}]

        r = self.relay(edit)
        self.addr, agent_addr = r.addr, self.addr
        try:
            f, (lport,) = self.forward("-v", "0:%d" % gport)
        finally:
            self.addr = agent_addr
        a = socket.create_connection(("127.0.0.1", lport), timeout=30)
        a.sendall(b"one\n")
        a.shutdown(socket.SHUT_WR)  # `in` ends; `out` stays open
        self.assertEqual(recv_exact(a, 4), b"eof\n")
        b = socket.create_connection(("127.0.0.1", lport), timeout=30)
        self.assertEqual(b.recv(16), b"")  # refused: closed at once
        b.close()
        open(trigger, "w").close()
        self.assertEqual(recv_exact(a, 4), b"bye\n")  # the first one is whole
        self.assertEqual(a.recv(16), b"")
        a.close()
        err = self.stop(f)
        self.assertIn(b"ids already in use", err)


class TestCliNetUsage(CliCase):
    def test_help_and_usage_errors(self):
        for cmd in ("forward", "ports"):
            r = subprocess.run([SBX, cmd, "--help"], stdout=subprocess.PIPE)
            self.assertEqual(r.returncode, 0, cmd)
            self.assertIn(b"Usage: sbx " + cmd.encode(), r.stdout)
        for args in ([], ["80"], ["x:80"], ["8080:0"], ["8080:70000"], ["1.2.3:80:90"],
                     ["8080:nohost:80"], ["a:b:c:d:e"], ["[::1:8080:80"], ["--bogus", "1:2"]):
            r = self.sbx("forward", *args)
            self.assertEqual(r.returncode, 2, args)
            self.assertIn(b"sbx", r.stderr, args)
        r = self.sbx("forward", "8080:nohost:80")
        self.assertIn(b"bad forward \"8080:nohost:80\"", r.stderr)
        self.assertEqual(self.sbx("ports", "extra").returncode, 2)


class TestCliForward(NetCase):
    def test_http_concurrent_and_large(self):
        www = os.path.join(self.dir, "www")
        os.mkdir(www)
        big = os.urandom(1 << 20) * 64  # 64 MiB
        with open(os.path.join(www, "big.bin"), "wb") as f:
            f.write(big)
        for i in range(50):
            with open(os.path.join(www, "f%d.txt" % i), "wb") as f:
                f.write(b"file %d\n" % i * (i + 1))
        gport = free_port()
        # python3 -m http.server, but with a listen backlog of 128, not 5: the agent connects
        # all 50 at once, and an overflowing accept queue drops handshakes that then take TCP
        # retransmits of many seconds to recover (what a real burst does to such a server).
        ident = self.detach("python3", "-c", HTTP_SERVER, www, str(gport))
        entry = self.wait_listening(gport)
        self.assertEqual(entry["addr"], "127.0.0.1")
        # ports names the server's pid (the agent can see its own children's sockets)
        pid = [p for p in self.json("ps")["procs"] if str(p["id"]) == ident][0]["pid"]
        self.assertIn(entry["pid"], (pid, None))
        table = self.sbx("ports").stdout.decode()
        self.assertTrue(table.startswith("PROTO"), table)
        self.assertRegex(table, r"(?m)^tcp\s+127\.0\.0\.1\s+%d\s" % gport)

        f, (lport,) = self.forward("-v", "0:%d" % gport)
        base = "http://127.0.0.1:%d/" % lport

        def get(i):
            with urllib.request.urlopen(base + "f%d.txt" % i, timeout=60) as r:
                return r.status, r.read()

        with concurrent.futures.ThreadPoolExecutor(50) as ex:
            results = list(ex.map(get, range(50)))
        for i, (status, body) in enumerate(results):
            self.assertEqual(status, 200)
            self.assertEqual(body, b"file %d\n" % i * (i + 1))
        with urllib.request.urlopen(base + "big.bin", timeout=120) as r:
            got = r.read()
        self.assertEqual(len(got), len(big))
        self.assertEqual(hashlib.sha256(got).hexdigest(), hashlib.sha256(big).hexdigest())
        err = self.stop(f)
        self.assertEqual(err.count(b": connected to 127.0.0.1:%d" % gport), 51, err[-2000:])
        self.assertEqual(len(re.findall(rb": closed, \d+ bytes in, \d+ out", err)), 51)
        outs = [int(n) for n in re.findall(rb"closed, \d+ bytes in, (\d+) out", err)]
        self.assertGreater(max(outs), len(big))  # the body and its headers

    def test_half_close_both_ways(self):
        # A guest server that reads to EOF, then answers with the byte count and closes.
        gport = free_port()
        server = ("import socket\n"
                  "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                  "s.bind(('127.0.0.1', %d)); s.listen(8)\n"
                  "while True:\n"
                  "    c, _ = s.accept(); n = 0\n"
                  "    while True:\n"
                  "        b = c.recv(65536)\n"
                  "        if not b: break\n"
                  "        n += len(b)\n"
                  "    c.sendall(b'%%d\\n' %% n); c.close()\n" % gport)
        self.detach("python3", "-c", server)
        self.wait_listening(gport)
        f, (lport,) = self.forward("127.0.0.1:0:localhost:%d" % gport)
        for size in (0, 1, 3 << 20):
            c = socket.create_connection(("127.0.0.1", lport), timeout=30)
            c.sendall(b"y" * size)
            c.shutdown(socket.SHUT_WR)  # local EOF -> stream.end on `in` -> guest EOF
            reply = b""
            while True:
                b = c.recv(65536)
                if not b:
                    break  # guest close -> `out` ended -> our SHUT_WR
                reply += b
            c.close()
            self.assertEqual(reply, b"%d\n" % size)
        self.stop(f)

    def test_refused_and_several_forwards(self):
        dead = refused_port(self)
        gport = free_port()
        self.detach("python3", "-m", "http.server", "--bind", "127.0.0.1",
                    "--directory", self.dir, str(gport))
        self.wait_listening(gport)
        f, (l1, l2) = self.forward("-v", "0:%d" % dead, "127.0.0.1:0:127.0.0.1:%d" % gport)
        # Longer than the agent's 10 s connect timeout: a connect that hangs shows as an error.
        c = socket.create_connection(("127.0.0.1", l1), timeout=30)
        self.assertEqual(c.recv(10), b"")  # closed: the guest refused
        c.close()
        with urllib.request.urlopen("http://127.0.0.1:%d/" % l2, timeout=30) as r:
            self.assertEqual(r.status, 200)
        err = self.stop(f)
        self.assertIn(b"ECONNREFUSED", err)

    def test_connection_cap_with_listeners_ready_at_once(self):
        """At the 1024-connection cap, several listeners ready in the same poll accept no more
        than the cap (each accept used to be checked once per round: the poll arrays then
        overflowed, a heap overflow ASan reports), and the forward keeps serving."""
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard < 4096:
            self.skipTest("needs an fd limit of 4096 for 1027 connections")
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        gport = free_port()
        self.detach("python3", "-c", ECHO_SERVER, str(gport))
        self.wait_listening(gport)
        f = subprocess.Popen([SBX, "-c", self.addr, "forward", "-v", "0:%d" % gport,
                              "0:%d" % gport], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE,
                                                                   (min(hard, 8192), hard)))
        self.forwards.append(f)
        ports, text = [], b""
        while len(ports) < 2:
            line = f.stderr.readline()
            self.assertNotEqual(line, b"", text)
            text += line
            m = LISTENING.match(line)
            if m:
                ports.append(int(m.group(2)))
        # Its stderr is read on a thread: -v says a line per connection.
        lines = []
        t = threading.Thread(target=lambda: lines.extend(iter(f.stderr.readline, b"")),
                             daemon=True)
        t.start()
        held = []
        for i in range(1023):
            held.append(socket.create_connection(("127.0.0.1", ports[0]), timeout=30))
        deadline = time.time() + 60
        while sum(b"connected to" in x for x in lines) < 1023:
            self.assertIsNone(f.poll(), b"".join(lines[-5:]))
            self.assertLess(time.time(), deadline, "not all 1023 connections were relayed")
            time.sleep(0.1)
        f.send_signal(signal.SIGSTOP)
        for port in (ports[0], ports[1], ports[1], ports[0]):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=30))
        time.sleep(0.3)
        f.send_signal(signal.SIGCONT)
        time.sleep(1)
        self.assertIsNone(f.poll(), b"".join(lines[-20:]))
        # The four beyond the cap wait in the backlog; room made, they are relayed.
        for c in held[:10]:
            c.close()
        for c in held[-4:]:
            c.settimeout(30)
            c.sendall(b"ping\n")
            self.assertEqual(c.recv(5), b"ping\n")
        for c in held[10:]:
            c.close()
        self.stop(f)  # exits 0 on SIGINT

    def test_agent_gone(self):
        f, _ = self.forward("0:1")
        self.agent.stop()
        self.assertEqual(f.wait(10), 1)
        self.assertIn(b"sbx: forward:", f.stderr.read())
        # tearDown checks that the agent stayed alive: give it a fresh one
        shutil.rmtree(self.agent.dir, ignore_errors=True)
        self.agent = type(self.agent)(self.agent.proc.args[0])
        self.addr = self.agent.addr


if __name__ == "__main__":
    unittest.main()
