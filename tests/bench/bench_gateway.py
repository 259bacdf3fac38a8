#!/usr/bin/env python3
"""sbx-gateway benchmarks (issue 16), rows in the table format of run.sh:

    tests/bench/bench_gateway.py [--quick] [BUILD_DIR]

The real SDK (npm:@deno/sandbox@0.13.2, under the pinned deno) against sbx-gateway with the addr
backend (one root sbx-agent on a unix socket; a workload user made for the run), and with the vm
backend when the gateway image exists (build/tests/gateway/gateway.ext4, built by the gateway.image
test):

- sh: `await sandbox.sh\\`true\\`` round trip, p50, against `sbx exec -- true` on the same agent
  as the same user (a new CLI process per call, like the SDK's call). Target <= 3x. The gateway's
  own CPU per call is reported.
- stdout: one process writes 1 GiB (--quick 256 MiB) to a piped stdout, read by the SDK chunk by
  chunk: throughput, and the gateway's CPU per GiB against the SDK's own (base64 + JSON). Target:
  the gateway is not the bottleneck (its CPU per GiB below the SDK's).
- memory: gateway RSS with 20 connected idle sandboxes (target <= 32 MiB), and its peak RSS while
  a raw WebSocket client leaves the same 1 GiB stdout unread for 3 s, then reads it (<= 64 MiB);
  and what each more unread stream adds: 64 processes' stdout (2 MiB each) left unread for 3 s,
  against the one stream just measured (target <= 128 KiB a stream: the agent may send
  GW_AGENT_RECV_WINDOW, 64 KiB, on each before the gateway grants more).
- create: vm backend, Sandbox.create() to the first sh answered, split into the VM boot (sbx-vm:
  QEMU start to agent hello) and the rest (gateway, session, sh).
"""
import glob
import json
import os
import re
import statistics
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(SRC, "tests", "gateway"))


def row(what, fig, spread, base, ratio, target, met):
    print("| %s | %s | %s | %s | %s | %s | %s |" % (what, fig, spread, base, ratio, target, met),
          flush=True)


def status_kb(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        st = f.read()
    fields = st[st.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_json(h, gw, name, env, timeout):
    rc, out, err = h.run_program(gw, name, timeout=timeout, env=env)
    if rc != 0:
        raise RuntimeError("%s exited %d:\n%s\n%s\ngateway log:\n%s" % (name, rc, out, err[-3000:],
                                                                   gw.logtext()[-3000:]))
    return json.loads(out.strip().splitlines()[-1])


def bench_sh(h, gw, agent, user, quick):
    n = 100 if quick else 300
    reps = 3 if quick else 5
    sbx = os.path.join(h.BUILD, "bin", "sbx")
    env = dict(os.environ, SBX_ADDR=agent.addr)
    p50s, bases, cpus = [], [], []
    for _ in range(reps):
        c0 = cpu_s(gw.proc.pid)
        r = run_json(h, gw, "bench_sh.ts", {"SBXGW_N": str(n)}, 300)
        # The gateway's CPU over the whole program: n timed calls, 10 warm-up calls and the
        # create (hello, session), so a slight overestimate per call.
        cpus.append((cpu_s(gw.proc.pid) - c0) * 1000 / (n + 10))
        p50s.append(r["p50_ms"])
        t = []
        for _ in range(n):
            t0 = time.perf_counter()
            subprocess.run([sbx, "exec", "--user", user.name, "--", "true"], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            t.append((time.perf_counter() - t0) * 1000)
        bases.append(statistics.median(t))
    fig, base = statistics.median(p50s), statistics.median(bases)
    ratio = fig / base
    row("gateway: SDK `sh\\`true\\`` round trip (addr backend), p50",
        "%.2f ms" % fig, "%.2f-%.2f" % (min(p50s), max(p50s)),
        "`sbx exec -- true` %.2f ms" % base, "%.2fx" % ratio, "<= 3x",
        "yes" if ratio <= 3 else "NO")
    row("gateway: its CPU per `sh` call", "%.2f ms" % statistics.median(cpus),
        "%.2f-%.2f" % (min(cpus), max(cpus)), "-", "-", "reported", "-")


def bench_stdout(h, gw, quick):
    nbytes = (256 if quick else 1024) << 20
    reps = 2 if quick else 3
    rates, gw_cpu, sdk_cpu = [], [], []
    for _ in range(reps):
        c0 = cpu_s(gw.proc.pid)
        r = run_json(h, gw, "bench_stdout.ts", {"SBXGW_BYTES": str(nbytes)}, 600)
        gib = r["bytes"] / (1 << 30)
        rates.append(r["bytes"] / r["seconds"] / (1 << 20))
        gw_cpu.append((cpu_s(gw.proc.pid) - c0) / gib)
        sdk_cpu.append(r["sdk_cpu_s"] / gib)
    g, s = statistics.median(gw_cpu), statistics.median(sdk_cpu)
    row("gateway: SDK reads a %d MiB stdout, throughput" % (nbytes >> 20),
        "%.0f MiB/s" % statistics.median(rates), "%.0f-%.0f" % (min(rates), max(rates)),
        "-", "-", "reported", "-")
    row("gateway: CPU per GiB of stdout, gateway vs the SDK's own", "%.2f s" % g,
        "%.2f-%.2f" % (min(gw_cpu), max(gw_cpu)), "SDK (deno) %.2f s" % s, "%.2fx" % (g / s),
        "< 1x (not the bottleneck)", "yes" if g < s else "NO")


def bench_idle_rss(h, gw):
    base = status_kb(gw.proc.pid, "VmRSS")
    tmp = tempfile.mkdtemp(prefix="sbxgw-bench-")
    ready, done = os.path.join(tmp, "ready"), os.path.join(tmp, "done")
    e = h.deno_env(SBXGW_N="20", SBXGW_READY=ready, SBXGW_DONE=done, **gw.env())
    p = subprocess.Popen([h.deno(), "run"] + h.DENO_RUN_FLAGS
                         + [os.path.join(h.SDK_DIR, "bench_idle.ts")], cwd=tmp, env=e,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not os.path.exists(ready):
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("bench_idle.ts did not get ready: %s" % p.communicate()[1])
            time.sleep(0.1)
        time.sleep(1)
        kb = status_kb(gw.proc.pid, "VmRSS")
        open(done, "w").close()
        p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    row("gateway: RSS with 20 connected idle sandboxes", "%.1f MiB" % (kb / 1024), "-",
        "idle gateway %.1f MiB" % (base / 1024), "-", "<= 32 MiB",
        "yes" if kb <= 32 * 1024 else "NO")


def held_rss(h, gw, nproc, nbytes):
    """Gateway RSS while a raw WebSocket client sends @nproc spawns (each process writes @nbytes
    to its stdout) and then reads nothing for 3 s; then everything is read and checked.
    (held KiB, peak KiB)"""
    import base64
    ws = h.open_create_ws(gw)
    try:
        for i in range(nproc):
            ws.send_json({"jsonrpc": "2.0", "id": 1000 + i, "method": "spawn",
                          "params": {"command": "head", "args": ["-c", str(nbytes), "/dev/zero"],
                                     "stdout": "piped", "stderr": "null"}})
        time.sleep(3)  # nothing read: the gateway must hold the agent, not buffer the output
        held = status_kb(gw.proc.pid, "VmRSS")
        got, ended, sids = {}, set(), set()
        while len(sids) < nproc or not sids <= ended:
            m = ws.recv_json(60)
            p = m.get("params") or {}
            if isinstance(m.get("id"), int) and m["id"] >= 1000:
                sids.add(m["result"]["ok"]["stdoutStreamId"])
            elif m.get("method") == "$sandbox.stream.enqueue":
                got[p["streamId"]] = got.get(p["streamId"], 0) + len(base64.b64decode(p["data"]))
            elif m.get("method") == "$sandbox.stream.end":
                ended.add(p["streamId"])
        short = {k: got.get(k, 0) for k in sids if got.get(k, 0) != nbytes}
        if short:
            raise RuntimeError("unread streams got %r of %d bytes each" % (short, nbytes))
        return held, status_kb(gw.proc.pid, "VmHWM")
    finally:
        ws.close()


def bench_slow_readers(h, gw, held1):
    n = 64
    held, _ = held_rss(h, gw, n, 2 << 20)
    per = (held - held1) / (n - 1)
    row("gateway: RSS each more unread stdout stream adds (%d processes, 2 MiB each)" % n,
        "%.0f KiB" % per, "-", "one stream %.1f MiB, %d: %.1f MiB" % (held1 / 1024, n, held / 1024),
        "-", "<= 128 KiB", "yes" if per <= 128 else "NO")


def bench_slow_reader(h, gw, quick):
    nbytes = (256 if quick else 1024) << 20
    held, peak = held_rss(h, gw, 1, nbytes)
    row("gateway: RSS while a client leaves %d MiB of stdout unread (then reads it all)"
        % (nbytes >> 20), "%.1f MiB held, peak %.1f MiB" % (held / 1024, peak / 1024), "-", "-",
        "-", "<= 64 MiB", "yes" if peak <= 64 * 1024 else "NO")
    return held


def bench_create(h, quick):
    if not os.path.exists(h.GATEWAY_IMAGE):
        row("gateway: Sandbox.create() to first sh (vm backend)", "not measured", "-",
            "-", "-", "reported", "the image %s is missing (ctest -R gateway.image builds it)"
            % h.GATEWAY_IMAGE)
        return
    gw = h.Gateway(image=h.GATEWAY_IMAGE)
    try:
        totals, boots = [], []
        for _ in range(2 if quick else 3):
            r = run_json(h, gw, "bench_create.ts", {}, 300)
            totals.append(r["create_ms"] + r["sh_ms"])
            # sbx-vm's own account of the boot, in the newest run dir's boot.log: "agent ready
            # in X.XXs (QEMU start -> hello answered ...)".
            logs = glob.glob(os.path.join(gw.data, "vms", "*", "boot.log"))
            text = open(max(logs, key=os.path.getmtime)).read() if logs else ""
            m = re.findall(r"agent ready in ([0-9.]+)s", text)
            boots.append(float(m[-1]) * 1000 if m else float("nan"))
        t, b = statistics.median(totals), statistics.median(boots)
        row("gateway: Sandbox.create() to first sh answered (vm backend)", "%.0f ms" % t,
            "%.0f-%.0f" % (min(totals), max(totals)),
            "of which VM boot (QEMU start to agent hello) %.0f ms" % b, "-", "reported", "-")
    finally:
        gw.stop()


def main(argv):
    quick = "--quick" in argv
    args = [a for a in argv if a != "--quick"]
    if args:
        os.environ["SBX_BUILD"] = os.path.abspath(args[0])
    import sdkharness as h
    h.cache_deps()
    user = h.WorkloadUser()
    agent = h.start_agent()
    gw = None
    try:
        gw = h.Gateway(backend="addr:" + agent.addr, user=user.name, cwd=user.home)
        bench_sh(h, gw, agent, user, quick)
        bench_stdout(h, gw, quick)
        held1 = bench_slow_reader(h, gw, quick)
        bench_slow_readers(h, gw, held1)
        bench_idle_rss(h, gw)
    finally:
        if gw is not None:
            gw.stop()
        agent.stop()
        user.close()
    bench_create(h, quick)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
