#!/usr/bin/env python3
"""Driver for the uv_spawn_many example (ctest integration.client.uv_spawn_many).

Starts N sbx-agent processes, each listening on its own unix socket in a temporary directory,
waits until every one accepts connections, runs uv_spawn_many against all of them (one libuv
loop, K connections per agent), and cleans up: agents are terminated (killed if they linger) and
the directory removed, whatever happens. Exits with the example's status.
"""
import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time


def accepting(path):
    if not os.path.exists(path):
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agent", required=True, help="path of sbx-agent")
    ap.add_argument("--example", required=True, help="path of uv_spawn_many")
    ap.add_argument("--agents", type=int, default=100, help="agent processes to start")
    ap.add_argument("--conns", type=int, default=1, help="connections per agent")
    ap.add_argument("--timeout", type=float, default=40.0, help="seconds for the example")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="sbx-uv-spawn-many-")
    procs = []
    t0 = time.monotonic()
    try:
        socks = [os.path.join(tmp, "a%03d.sock" % i) for i in range(args.agents)]
        for i, path in enumerate(socks):
            log = open(os.path.join(tmp, "a%03d.log" % i), "w")
            procs.append(subprocess.Popen([args.agent, "--listen", "unix:" + path],
                                          stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL))
            log.close()
        deadline = time.monotonic() + 20
        waiting = list(zip(procs, socks))
        while waiting:
            waiting = [(p, s) for p, s in waiting if not accepting(s)]
            for p, s in waiting:
                if p.poll() is not None:
                    sys.exit("agent for %s exited with %d before listening" % (s, p.returncode))
            if waiting and time.monotonic() > deadline:
                sys.exit("%d agents did not start listening" % len(waiting))
            if waiting:
                time.sleep(0.01)
        started = time.monotonic() - t0
        print("driver: %d agents listening after %.2f s" % (len(socks), started), flush=True)
        cmd = [args.example, "--conns", str(args.conns),
               "--timeout-ms", str(int(args.timeout * 1000))] + socks
        try:
            rc = subprocess.run(cmd, timeout=args.timeout + 10).returncode
        except subprocess.TimeoutExpired:
            print("driver: the example did not finish", flush=True)
            rc = 1
        if rc != 0:
            for i in range(min(3, len(socks))):
                with open(os.path.join(tmp, "a%03d.log" % i)) as f:
                    tail = f.read()[-2000:]
                if tail:
                    print("--- agent %d log:\n%s" % (i, tail))
        dead = [p.args[2] for p in procs if p.poll() is not None]
        if dead:
            print("driver: %d agents died during the run, e.g. %s" % (len(dead), dead[0]))
            rc = rc or 1
        print("driver: total %.2f s, example exit status %d" % (time.monotonic() - t0, rc))
        return rc
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        end = time.monotonic() + 5
        for p in procs:
            try:
                p.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
