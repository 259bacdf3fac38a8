#!/usr/bin/env python3
"""HTTP through exposeHttp (issue 17), rows in the table format of run.sh:

    tests/bench/bench_ingress.py [--quick] [BUILD_DIR]

sbx-gateway with the addr backend (one root sbx-agent on a unix socket) and --http-listen; a
sandbox whose exposeHttp maps a domain to a small threaded Python HTTP server (the page server of
bench_forward.py). The same server is reached through `sbx forward` on the same agent, the
baseline measured in the same run:

- latency: kept-alive HTTP/1.1 GET p50 through the ingress (client -> sbx-gateway ingress -> the
  link -> sbx-agent net.connect -> server) against through `sbx forward` (client -> sbx forward
  -> sbx-agent -> server), and straight to the server for reference.
- throughput: requests per second with 8 kept-alive clients for a few seconds, both paths.
No target ratio is set by the issue; the rows say how the two compare.
"""
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import http.server

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(SRC, "tests", "gateway"))
sys.path.insert(0, HERE)
import bench_forward as bf  # noqa: E402


def keepalive_p50(port, host, n):
    req = b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % host.encode()
    out = []
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = s.makefile("rb")
        for _ in range(n):
            t0 = time.perf_counter()
            s.sendall(req)
            bf.read_response(f)
            out.append(time.perf_counter() - t0)
    return statistics.median(out)


def rps(port, host, clients, seconds):
    req = b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % host.encode()
    counts = [0] * clients
    errors = []
    stop = time.monotonic() + seconds

    def worker(i):
        try:
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                f = s.makefile("rb")
                while time.monotonic() < stop:
                    s.sendall(req)
                    bf.read_response(f)
                    counts[i] += 1
        except (OSError, RuntimeError) as e:
            errors.append(e)
    t0 = time.monotonic()
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise RuntimeError("rps: %s" % errors[0])
    return sum(counts) / (time.monotonic() - t0)


def ingress_port(gw, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(r"ingress on [^\s:]+:(\d+)", gw.logtext())
        if m:
            return int(m.group(1))
        time.sleep(0.05)
    raise RuntimeError("the gateway logged no ingress address:\n" + gw.logtext()[-2000:])


def main(argv):
    quick = "--quick" in argv
    args = [a for a in argv if a != "--quick"]
    if args:
        os.environ["SBX_BUILD"] = os.path.abspath(args[0])
    import sdkharness as h
    reps = 3 if quick else 5
    nreq = 300 if quick else 1000
    secs = 2 if quick else 4
    agent = h.start_agent()
    gw = fwd = ws = None
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), bf.Page)
    web.daemon_threads = True
    threading.Thread(target=web.serve_forever, daemon=True).start()
    wport = web.server_address[1]
    try:
        gw = h.Gateway(backend="addr:" + agent.addr, extra=("--http-listen", "127.0.0.1:0"))
        iport = ingress_port(gw)
        ws = h.open_create_ws(gw, {"memory_mb": 1280, "stop_at_ms": int(time.time() * 1000)
                                   + 3600 * 1000})
        sid = ws.headers["x-deno-sandbox-id"]
        domain = gw.rest("POST", "/api/v3/sandbox/%s/expose/http" % sid, {})["domain"]
        m = ws.call("exposeHttp", {"domain": domain, "port": wport})
        if m["result"] != {"ok": None}:
            raise RuntimeError("exposeHttp: %r" % m)
        fport = bf.free_port()
        fwd = subprocess.Popen([os.path.join(h.BUILD, "bin", "sbx"), "forward",
                                "%d:%d" % (fport, wport)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env=dict(os.environ, SBX_ADDR=agent.addr))
        bf.wait_port(fport, fwd)
        for port, host in ((iport, domain), (fport, "bench"), (wport, "bench")):
            keepalive_p50(port, host, 50)  # warm-up
        ki, kf, kd = [], [], []
        for i in range(reps):
            order = [(ki, iport, domain), (kf, fport, "bench"), (kd, wport, "bench")]
            if i & 1:
                order.reverse()
            for acc, port, host in order:
                acc.append(keepalive_p50(port, host, nreq))
        mi, mf, md = (statistics.median(x) for x in (ki, kf, kd))
        bf.row("exposeHttp: HTTP GET latency, kept-alive, through the gateway's ingress",
               "p50 %.0f µs" % (mi * 1e6), "min %.0f, max %.0f (n=%d × %d)"
               % (min(ki) * 1e6, max(ki) * 1e6, reps, nreq),
               "`sbx forward` p50 %.0f µs (straight to the server %.0f µs)"
               % (mf * 1e6, md * 1e6), "%.2f×" % (mi / mf), "-", "-")
        ri, rf = [], []
        for i in range(reps):
            pair = [(ri, iport, domain), (rf, fport, "bench")]
            if i & 1:
                pair.reverse()
            for acc, port, host in pair:
                acc.append(rps(port, host, 8, secs))
        a, b = statistics.median(ri), statistics.median(rf)
        bf.row("exposeHttp: requests/s, 8 kept-alive clients, through the gateway's ingress",
               "%.0f req/s" % a, "min %.0f, max %.0f (n=%d)" % (min(ri), max(ri), reps),
               "`sbx forward` %.0f req/s" % b, "%.2f×" % (a / b), "-", "-")
        return 0
    except (OSError, RuntimeError, KeyError) as e:
        print("bench_ingress: %s" % e, file=sys.stderr)
        if gw is not None:
            sys.stderr.write(gw.logtext()[-3000:])
        return 1
    finally:
        if ws is not None:
            ws.close()
        if fwd is not None and fwd.poll() is None:
            fwd.send_signal(signal.SIGTERM)
            try:
                fwd.wait(10)
            except subprocess.TimeoutExpired:
                fwd.kill()
        if gw is not None:
            gw.stop()
        agent.stop()
        web.shutdown()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
