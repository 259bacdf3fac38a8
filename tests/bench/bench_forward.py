#!/usr/bin/env python3
"""Port-forward benchmarks (issue 15), rows in the table format of run.sh:

    tests/bench/bench_forward.py [--quick] [BUILD_DIR]

- bulk: a TCP client on this side downloads N bytes (1 GiB; --quick 256 MiB) from a server
  behind the relay. sbx: client -> `sbx forward` -> unix socket -> sbx-agent (net.connect) ->
  server. Baseline, the same path with socat in both relay roles: client -> socat TCP-LISTEN ->
  unix socket -> socat UNIX-LISTEN -> server (both socat -b 262144, as bench_xfer.sh). Target: sbx
  >= 80 % of the baseline.
- latency: an HTTP/1.1 GET of a small page from a threaded Python server, p50 over many requests,
  through `sbx forward` against straight to the server; once on a kept-alive connection (the
  relay's own cost) and once with a new connection per request (plus net.connect). Target on the
  kept-alive figure: <= 1.5x direct. An information row repeats the kept-alive pair with every
  process and thread of the bench on one CPU: what the relay costs without a wake-up crossing
  CPUs (on a VM each such wake-up is an interrupt between virtual CPUs, taken by the hypervisor;
  here both figures drop and the ratio stays).
Each figure is a median over repetitions; the baseline runs in the same repetition, back to back.
"""
import http.server
import os
import signal
import socket
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time

CHUNK = 1 << 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc=None, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError("relay exited with %s" % proc.returncode)
            if time.monotonic() > deadline:
                raise RuntimeError("nothing listens on %d" % port)
            time.sleep(0.05)


class Source(socketserver.ThreadingTCPServer):
    """Sends the byte count it is asked for ("N\\n"), from one preallocated buffer."""
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        self.buf = memoryview(b"\x5a" * CHUNK)
        super().__init__(("127.0.0.1", 0), SourceHandler)


class SourceHandler(socketserver.BaseRequestHandler):
    def handle(self):
        line = self.request.makefile("rb").readline()
        if not line:
            return  # a readiness probe
        want = int(line)
        buf = self.server.buf
        while want > 0:
            n = min(want, len(buf))
            self.request.sendall(buf[:n])
            want -= n
        self.request.shutdown(socket.SHUT_WR)


class Page(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes
    body = b"x" * 512

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def pull(port, nbytes):
    """Bytes per second for downloading @nbytes through @port."""
    buf = bytearray(CHUNK)
    with socket.create_connection(("127.0.0.1", port)) as s:
        t0 = time.monotonic()
        s.sendall(b"%d\n" % nbytes)
        got = 0
        while True:
            n = s.recv_into(buf)
            if n == 0:
                break
            got += n
        dt = time.monotonic() - t0
    if got != nbytes:
        raise RuntimeError("received %d of %d bytes" % (got, nbytes))
    return nbytes / dt


REQ = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def read_response(f):
    length = 0
    while True:
        line = f.readline()
        if not line:
            raise RuntimeError("connection closed mid-response")
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
        if line in (b"\r\n", b"\n"):
            break
    body = f.read(length)
    if len(body) != length:
        raise RuntimeError("short body")


def latency_keepalive(port, n):
    out = []
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = s.makefile("rb")
        for _ in range(n):
            t0 = time.perf_counter()
            s.sendall(REQ)
            read_response(f)
            out.append(time.perf_counter() - t0)
    return statistics.median(out)


def latency_new_conn(port, n):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(REQ)
            read_response(s.makefile("rb"))
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def pin(pids, cpus):
    """Set the CPU affinity of every thread of @pids (0: this process) to @cpus. Threads and
    processes started later inherit it from the thread that starts them."""
    for pid in pids:
        task = "/proc/%s/task" % ("self" if pid == 0 else pid)
        for tid in os.listdir(task):
            try:
                os.sched_setaffinity(int(tid), cpus)
            except OSError:
                pass  # a thread that ended meanwhile


def row(what, fig, spread, base, ratio, target, met):
    print("| %s | %s | %s | %s | %s | %s | %s |" % (what, fig, spread, base, ratio, target, met))


def main(argv):
    quick = "--quick" in argv
    args = [a for a in argv if a != "--quick"]
    build = os.path.abspath(args[0] if args else "build")
    sbx = os.path.join(build, "bin", "sbx")
    agent_bin = os.path.join(build, "bin", "sbx-agent")
    reps = 3 if quick else 5
    nbytes = (256 if quick else 1024) << 20
    nreq = 300 if quick else 1000
    tmp = tempfile.mkdtemp(prefix="sbx-bench-fwd.")
    procs = []

    def start(argv, **kw):
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
        procs.append(p)
        return p

    try:
        asock = os.path.join(tmp, "agent.sock")
        start([agent_bin, "--listen", "unix:" + asock])
        deadline = time.monotonic() + 10
        while not os.path.exists(asock):
            if time.monotonic() > deadline:
                raise RuntimeError("the agent did not start")
            time.sleep(0.02)
        src = Source()
        threading.Thread(target=src.serve_forever, daemon=True).start()
        web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
        web.daemon_threads = True
        threading.Thread(target=web.serve_forever, daemon=True).start()
        sport, wport = src.server_address[1], web.server_address[1]

        env = dict(os.environ, SBX_ADDR="unix:" + asock)
        f_src, f_web = free_port(), free_port()
        fwd = start([sbx, "forward", "%d:%d" % (f_src, sport), "%d:%d" % (f_web, wport)],
                    env=env)
        # The baseline relay: the same two hops through a unix socket, by socat.
        rsock = os.path.join(tmp, "relay.sock")
        s_src = free_port()
        start(["socat", "-b", "262144", "UNIX-LISTEN:%s,fork" % rsock, "TCP:127.0.0.1:%d" % sport])
        while not os.path.exists(rsock):
            time.sleep(0.02)
        raw = start(["socat", "-b", "262144", "TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr,fork" % s_src,
                     "UNIX-CONNECT:" + rsock])
        # The same two socat hops in front of the web server: the relay latency of socat.
        wsock = os.path.join(tmp, "relay-web.sock")
        s_web = free_port()
        start(["socat", "UNIX-LISTEN:%s,fork" % wsock, "TCP:127.0.0.1:%d,nodelay" % wport])
        while not os.path.exists(wsock):
            time.sleep(0.02)
        raw_web = start(["socat", "TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr,fork,nodelay" % s_web,
                         "UNIX-CONNECT:" + wsock])
        wait_port(f_src, fwd)
        wait_port(f_web, fwd)
        wait_port(s_src, raw)
        wait_port(s_web, raw_web)

        sb, rb, ratios = [], [], []
        pull(f_src, 16 << 20)  # warm-up
        pull(s_src, 16 << 20)
        for i in range(reps):
            pair = [(sb, f_src), (rb, s_src)]
            if i & 1:
                pair.reverse()
            for acc, port in pair:
                acc.append(pull(port, nbytes))
            ratios.append(sb[-1] / rb[-1])
        r = statistics.median(ratios)
        row("forward: `sbx forward` bulk download, %d MiB" % (nbytes >> 20),
            "%.0f MiB/s" % (statistics.median(sb) / 2**20),
            "min %.0f, max %.0f (n=%d)" % (min(sb) / 2**20, max(sb) / 2**20, reps),
            "socat TCP-LISTEN -> unix -> socat UNIX-LISTEN -> TCP %.0f MiB/s"
            % (statistics.median(rb) / 2**20),
            "%.2f×" % r, "≥ 0.8× socat", "yes" if r >= 0.8 else "NO")

        latency_keepalive(f_web, 20)
        latency_keepalive(s_web, 20)
        ka_f, ka_d, ka_s, nc_f, nc_d = [], [], [], [], []
        for _ in range(reps):
            ka_d.append(latency_keepalive(wport, nreq))
            ka_f.append(latency_keepalive(f_web, nreq))
            ka_s.append(latency_keepalive(s_web, nreq))
            nc_d.append(latency_new_conn(wport, nreq // 3))
            nc_f.append(latency_new_conn(f_web, nreq // 3))
        kf, kd = statistics.median(ka_f), statistics.median(ka_d)
        row("forward: HTTP GET latency, kept-alive connection",
            "p50 %.0f µs" % (kf * 1e6), "n=%d × %d" % (reps, nreq),
            "straight to the server p50 %.0f µs" % (kd * 1e6), "%.2f×" % (kf / kd),
            "≤ 1.5× direct", "yes" if kf / kd <= 1.5 else "NO")
        ks = statistics.median(ka_s)
        row("info: HTTP GET latency, kept-alive, through the socat relay of the bulk row",
            "p50 %.0f µs" % (ks * 1e6), "n=%d × %d" % (reps, nreq),
            "straight to the server p50 %.0f µs" % (kd * 1e6), "%.2f×" % (ks / kd), "-", "-")
        cpus = os.sched_getaffinity(0)
        if len(cpus) > 1:
            one = {min(cpus)}
            pin([0] + [p.pid for p in procs], one)
            try:
                p1_f, p1_d = [], []
                for _ in range(reps):
                    p1_d.append(latency_keepalive(wport, nreq))
                    p1_f.append(latency_keepalive(f_web, nreq))
            finally:
                pin([0] + [p.pid for p in procs], cpus)
            pf, pd = statistics.median(p1_f), statistics.median(p1_d)
            row("info: HTTP GET latency, kept-alive, every process on one CPU",
                "p50 %.0f µs" % (pf * 1e6), "n=%d × %d" % (reps, nreq),
                "straight to the server p50 %.0f µs" % (pd * 1e6), "%.2f×" % (pf / pd), "-", "-")
        nf, nd = statistics.median(nc_f), statistics.median(nc_d)
        row("info: HTTP GET latency, a new connection per request (adds net.connect)",
            "p50 %.0f µs" % (nf * 1e6), "n=%d × %d" % (reps, nreq // 3),
            "straight to the server p50 %.0f µs" % (nd * 1e6), "%.2f×" % (nf / nd), "-", "-")
        src.shutdown()
        web.shutdown()
        return 0
    except (OSError, RuntimeError) as e:
        print("bench_forward: %s" % e, file=sys.stderr)
        for p in procs:
            if p.poll() is not None and p.stderr is not None:
                sys.stderr.write(p.stderr.read().decode(errors="replace"))
        return 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
