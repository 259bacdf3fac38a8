#!/usr/bin/env python3
"""Write the seed corpus of fuzz_gw_link (gateway.cmake): a hostile agent on the gateway's own
link, answering pid -> port lookups (proc.list, net.listening, fs.open/read/close of
/proc/PID/stat) and a deploy job (proc.spawn of the install command, pack.create with its build
output, pack.progress, pack.manifest and the archive), in the input format fuzz_gw_link.c
describes.

Valid answers first (PROTOCOL.md 14.7, 20.2, 17.7, 14.2, 19), so the fuzzer starts on the success
paths, then hostile variants: huge pids, negative and out-of-range ports, /proc/PID/stat with ')'
in comm, missing fields or no parent, parent loops, lines without newline, control bytes and
invalid UTF-8 in build output, a line longer than the log's line cap, manifests with wrong types
and out-of-range numbers, errors, EOF and cancels at every step.

libsbx numbers a link's requests: 1 is hello (answered by the target unless byte 0's bit 7 is
set), then 2, 3, ... in the order the gateway makes them; stream ids are the agent's.

Also the seeds of fuzz_gw_ssh_host: Host headers for expose/ssh's answer (names, ports, bracketed
addresses, empty, unclosed, too long, spaces, slashes, control bytes, UTF-8, a NUL).

Run: tests/fuzz/make_corpus_gw_link.py [corpus dir]: writes DIR/gw_link and DIR/gw_ssh_host; then
let tests/fuzz/run.sh merge.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_corpus import agent, cancel, data, end, err_resp, frame, mp, note, resp, split  # noqa: E402,F401,E501

OWN_HELLO = 0x80  # byte 0: the input answers hello itself


# --- the input's operations ------------------------------------------------------------------

def lookup(k):
    return bytes([0, k])


EOF = bytes([4])
CLOSE = bytes([5])  # a pending connect fails, or the link is closed


def deploy(install=False, build=False):
    return bytes([6, (1 if install else 0) | (2 if build else 0)])


RUN = bytes([7])


# --- agent frames ----------------------------------------------------------------------------











def hello(i=1):
    return resp(i, {"version": 1, "agent": "sbx-agent", "agent_version": "0.1.0",
                    "capabilities": ["session", "process", "fs", "pack", "net", "transfer"],
                    "limits": {"frame_max": 4 << 20, "chunk_max": 256 << 10,
                               "stream_window": 1 << 20, "max_streams": 4096,
                               "max_procs": 1024, "max_conns": 64},
                    "conn": 3})


def proc(i, pid, state="running"):
    p = {"id": i, "pid": pid, "argv": ["deno", "run", "-A", "main.ts"], "tag": None,
         "state": state, "started_ns": 1700000000000000000, "attached": True,
         "stdout_dropped": 0, "stderr_dropped": 0}
    if state == "exited":
        p["exit"] = exit_map(i)
    return p


def sock(port, pid, proto="tcp", addr="0.0.0.0"):
    s = {"proto": proto, "addr": addr, "port": port}
    if pid is not None:
        s["pid"] = pid
    return s


def listening(i, *socks, truncated=False):
    return resp(i, {"sockets": list(socks), "truncated": truncated})


def stat(pid, ppid, comm="deno"):
    return ("%d (%s) S %d %d %d 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 100 0 0\n"
            % (pid, comm, ppid, ppid, ppid)).encode()


def walk(i, fh, text):
    """fs.open (request i), fs.read (i + 1), fs.close (i + 2) of one /proc/PID/stat."""
    return [agent(resp(i, {"fh": fh})), agent(resp(i + 1, {"data": text})),
            agent(resp(i + 2, {}))]


def exit_map(i, code=0, signo=None, timed_out=False):
    return {"id": i, "pid": 100, "code": None if signo else code,
            "signal": "SIGKILL" if signo else None, "signo": signo, "core": False,
            "duration_ns": 1000, "drained": True, "timed_out": timed_out, "oom": False,
            "stdout_bytes": 3, "stderr_bytes": 0,
            "rusage": {"maxrss_kb": 1000, "utime_us": 1, "stime_us": 2}}


def spawned(i, sout=1, serr=2, proc_id=1):
    return resp(i, {"id": proc_id, "pid": 100, "stdin": None, "stdout": sout, "stderr": serr})


def packed(i, pack_id=1, out=1, err=2, arch=3):
    r = {"id": pack_id, "archive": arch}
    if out is not None:
        r["build_stdout"] = out
        r["build_stderr"] = err
    return resp(i, r)


def progress(pack_id, phase, **extra):
    p = {"id": pack_id, "phase": phase, "bytes": 0, "files": 0}
    p.update(extra)
    return note("pack.progress", p)


def fentry(path, t="file", size=5, mode=0o644, **extra):
    f = {"path": path, "type": t, "size": size, "mode": mode}
    if t == "file":
        f["sha256"] = "ab" * 32
    f.update(extra)
    return f


def manifest(pack_id, files, last=True, part=0, **extra):
    p = {"id": pack_id, "part": part, "last": last, "files": files}
    if last:
        p.update({"entrypoint": "main.ts", "args": ["--port", "8000"], "format": "tar.gz",
                  "file_count": len(files), "total_size": 10, "archive_size": 20,
                  "archive_sha256": "cd" * 32})
    p.update(extra)
    return note("pack.manifest", p)


ARCHIVE = b"\x1f\x8b\x08\x00" + bytes(16)
MAIN = [fentry("main.ts"), fentry("src", "dir", 0, 0o755),
        fentry("link", "symlink", 0, 0o777, target="main.ts")]


def build_ok(pack_id=1, out=1, err=2, arch=3, lines=b"compiling\nok\r\n", errs=b"warn: x\n"):
    """A build's output, its exit, the scan, the archive and the manifest, then the end."""
    return agent(data(out, lines), data(err, errs), end(out), end(err),
                 progress(pack_id, "build", exit=exit_map(0)), progress(pack_id, "scan"),
                 data(arch, ARCHIVE), manifest(pack_id, MAIN), progress(pack_id, "done"),
                 end(arch))


# --- seeds -------------------------------------------------------------------------------------

SEEDS = {}


def seed(name, *parts, flags=0):
    SEEDS[name] = bytes([flags]) + b"".join(parts)


# Lookups. Request 2 is proc.list, 3 net.listening, then fs.open/read/close triples.
seed("lookup_own", lookup(1), agent(resp(2, {"procs": [proc(1, 100)]})),
     agent(listening(3, sock(8000, 100), sock(53, 7, "udp"), sock(9000, 100, "tcp6", "::"))))
seed("lookup_child", lookup(1), agent(resp(2, {"procs": [proc(1, 100)]})),
     agent(listening(3, sock(3000, 200), sock(8000, 100))), *walk(4, 1, stat(200, 100)))
seed("lookup_grandchild", lookup(1), agent(resp(2, {"procs": [proc(2, 90), proc(1, 100)]})),
     agent(listening(3, sock(3000, 300))), *walk(4, 1, stat(300, 250)),
     *walk(7, 2, stat(250, 100)))
seed("lookup_not_descendant", lookup(1), agent(resp(2, {"procs": [proc(1, 100)]})),
     agent(listening(3, sock(80, 400), sock(3000, 200), sock(8000, 100))),
     *walk(4, 1, stat(400, 1)), *walk(7, 2, stat(200, 150)), *walk(10, 3, stat(150, 100)))
seed("lookup_comm_paren", lookup(1), agent(resp(2, {"procs": [proc(1, 100)]})),
     agent(listening(3, sock(3000, 200))),
     *walk(4, 1, stat(200, 100, comm="a) S 7 (b")))
seed("lookup_exited", lookup(1), agent(resp(2, {"procs": [proc(1, 100, "exited")]})))
seed("lookup_no_process", lookup(9), agent(resp(2, {"procs": [proc(1, 100)]})))
seed("lookup_listens_nowhere", lookup(1), agent(resp(2, {"procs": [proc(1, 100)]})),
     agent(listening(3, sock(53, 100, "udp"), sock(0, 100), sock(8000, None))))
seed("lookup_two", lookup(1), lookup(2),
     agent(resp(2, {"procs": [proc(1, 100), proc(2, 200)]}),
           resp(3, {"procs": [proc(1, 100), proc(2, 200)]})),
     agent(listening(4, sock(8000, 100), sock(9000, 200)),
           listening(5, sock(8000, 100), sock(9000, 200))),
     *walk(6, 1, stat(100, 1)))
seed("lookup_cancel_walk", lookup(1), agent(resp(2, {"procs": [proc(1, 100)]})),
     agent(listening(3, sock(3000, 200), sock(8000, 100))), agent(resp(4, {"fh": 1})),
     cancel(0), agent(resp(5, {"data": stat(200, 100)})), RUN)
seed("lookup_eof_walk", lookup(1), agent(resp(2, {"procs": [proc(1, 100)]})),
     agent(listening(3, sock(3000, 200), sock(8000, 100))), agent(resp(4, {"fh": 1})), EOF,
     lookup(1))
seed("lookup_connect_fails", lookup(1), CLOSE, lookup(1), agent(resp(2, {"procs": []})))
seed("lookup_link_closed", lookup(1), agent(resp(2, {"procs": [proc(1, 100)]})), CLOSE)
seed("lookup_own_hello", lookup(1), agent(hello(), resp(2, {"procs": [proc(1, 100)]}),
                                          listening(3, sock(8000, 100))), flags=OWN_HELLO)
seed("lookup_hello_refused", lookup(1), agent(err_resp(1, "UNSUPPORTED", "version")),
     flags=OWN_HELLO)
seed("lookup_split", split(3), lookup(1), agent(resp(2, {"procs": [proc(1, 100)]})),
     agent(listening(3, sock(3000, 200), sock(8000, 100))), *walk(4, 1, stat(200, 100)),
     flags=1)

# Hostile lookups.
seed("lookup_huge_pids", lookup(0xff), agent(resp(2, {"procs": [
    {"id": 2**32 - 1, "pid": 2**64 - 1, "state": "running"}, proc(2**32 + 0xff, 5)]})))
seed("lookup_huge_ospid", lookup(0xff), agent(resp(2, {"procs": [proc(2**32 - 1, 2**32 - 1)]})),
     agent(listening(3, sock(8000, 2**32 - 1), sock(70000, 2**32 - 1), sock(-1, 2**32 - 1),
                     sock(3000, 2**32), sock(3001, 2**64 - 1))))
seed("lookup_bad_sockets", lookup(1), agent(resp(2, {"procs": [proc(1, 100)]})),
     agent(resp(3, {"sockets": [
         {"proto": "tcp", "port": 80, "pid": 100},
         {"proto": "tcp", "addr": "0.0.0.0", "port": "80", "pid": 100},
         {"proto": "tcpx", "addr": "0.0.0.0", "port": 81, "pid": 200},
         {"proto": 6, "addr": "0.0.0.0", "port": 82, "pid": 100},
         {"proto": "tcp", "addr": "0.0.0.0", "port": 83, "pid": -5},
         {"proto": "tcp", "addr": "0.0.0.0", "port": 9000, "pid": 100}, 7, None]})),
     *walk(4, 1, stat(200, 100)))
seed("lookup_sockets_not_array", lookup(1), agent(resp(2, {"procs": [proc(1, 100)]})),
     agent(resp(3, {"sockets": {"a": 1}})))
seed("lookup_procs_wrong", lookup(1), agent(resp(2, {"procs": [7, None, {"id": "1", "pid": 5},
                                                               {"id": 1, "pid": "100"}]})))
seed("lookup_pid0", lookup(1), agent(resp(2, {"procs": [proc(1, 0)]})),
     agent(listening(3, sock(3000, 200), sock(8000, 0))), *walk(4, 1, b"garbage"))
seed("lookup_stat_hostile", lookup(1), agent(resp(2, {"procs": [proc(1, 100)]})),
     agent(listening(3, *[sock(1000 + i, 200 + i) for i in range(8)], sock(8000, 100))),
     *walk(4, 1, b"200 (x)"), *walk(7, 2, b"201 no paren 100"),
     *walk(10, 3, b"202 (x) S -1 0"), *walk(13, 4, b"203 (x) S 99999999999 0"),
     *walk(16, 5, b""), *walk(19, 6, b"205 (a)b)c) R 100 1"),
     *walk(22, 7, b"206 (x\x00) S 100 1"), *walk(25, 8, b"207 (x) S +100 1"))
seed("lookup_results_missing", lookup(1), agent(resp(2, {"procs": [proc(1, 100)]})),
     agent(listening(3, sock(3000, 200), sock(3001, 201), sock(8000, 100))),
     agent(resp(4, {"fh": 1})), agent(resp(5, {})), agent(resp(6, None)),
     agent(resp(7, None)), agent(resp(8, {"fh": 2})), agent(resp(9, {"data": 7})),
     agent(resp(10, {})))
seed("lookup_stat_loop", lookup(1), agent(resp(2, {"procs": [proc(1, 100)]})),
     agent(listening(3, sock(3000, 200), sock(8000, 100))),
     *sum([walk(4 + 3 * i, i + 1, stat(200 if i % 2 else 201, 201 if i % 2 else 200))
           for i in range(34)], []))
seed("lookup_errors", lookup(1), lookup(2), lookup(3), lookup(4),
     agent(err_resp(2, "EIO", "proc.list"), resp(3, {"procs": [proc(2, 100)]}),
           resp(4, {"procs": [proc(3, 100)]}), resp(5, {"procs": [proc(4, 100)]})),
     agent(err_resp(6, "ENOENT", "no /proc"), listening(7, sock(3000, 200), sock(8000, 100)),
           listening(8, sock(3000, 200), sock(8000, 100))),
     agent(err_resp(9, "ENOENT", "gone"), resp(10, {"fh": 1})),
     agent(resp(11, {"fh": "x"}), err_resp(12, "EIO", "read")),
     agent(err_resp(13, "EOF", "a hostile EOF")))

# Deploys: without an install command, request 2 is pack.create; with one, proc.spawn then
# pack.create (3).
seed("deploy_build", deploy(build=True), agent(packed(2)), build_ok())
seed("deploy_plain", deploy(), agent(packed(2, out=None, arch=1)),
     agent(progress(1, "scan"), data(1, ARCHIVE), manifest(1, MAIN), progress(1, "done"), end(1)))
seed("deploy_install_build", deploy(install=True, build=True),
     agent(spawned(2), data(1, b"added 3 packages\n"), data(2, b"npm warn\n"), end(1), end(2),
           note("proc.exit", exit_map(1))),
     agent(packed(3, out=3, err=4, arch=5)), build_ok(out=3, err=4, arch=5))
seed("deploy_install_fails", deploy(install=True),
     agent(spawned(2), data(1, b"oops"), end(1), end(2), note("proc.exit", exit_map(1, 2))))
seed("deploy_install_spawn_error", deploy(install=True),
     agent(err_resp(2, "ENOENT", "no sh", stage="exec", path="/bin/sh")))
seed("deploy_build_fails", deploy(build=True), agent(packed(2)),
     agent(data(1, b"error: x\n"), end(1), end(2),
           progress(1, "build", exit=exit_map(0, 2)),
           end(3, error={"code": "CANCELLED", "stage": "build",
                         "message": "build failed: exit status 2"})))
seed("deploy_build_killed", deploy(build=True), agent(packed(2)),
     agent(end(1), end(2), progress(1, "build", exit=exit_map(0, signo=9, timed_out=True)),
           end(3, error={"code": "CANCELLED", "message": "build failed: signal 9"})))
seed("deploy_entrypoint_missing", deploy(), agent(packed(2, out=None, arch=1)),
     agent(end(1, error={"code": "ENOENT", "message": "no entrypoint",
                         "field": "entrypoint"})))
seed("deploy_pack_enoent", deploy(), agent(err_resp(2, "ENOENT", "no such directory")))
seed("deploy_eof_building", deploy(build=True), agent(packed(2), data(1, b"half a line")), EOF)
seed("deploy_closed", deploy(build=True), agent(packed(2), data(1, b"x\n")), CLOSE)
seed("deploy_connect_fails", deploy(build=True), CLOSE)
# The link's users come up newest first: the job's pack.create is request 2, the lookup's 3.
seed("deploy_and_lookup", lookup(1), deploy(build=True), agent(packed(2)),
     agent(resp(3, {"procs": [proc(1, 100)]})), agent(listening(4, sock(8000, 100))), build_ok())

# Hostile build output.
seed("deploy_output_hostile", deploy(build=True), agent(packed(2)),
     agent(data(1, b"\x1b[31mred\x1b[0m\tTAB\x00NUL\x07\n"), data(2, b"\xff\xfe bad \xc3\n"),
           data(1, b"cr only\rstill\r\r\n\n\n"), data(2, b"\xed\xa0\x80 surrogate\n"),
           data(1, b"no newline at the end"), end(1), data(2, b"\xf0\x9f\x98"), end(2)),
     build_ok(lines=b"", errs=b""))
seed("deploy_long_line", deploy(build=True), agent(packed(2)),
     agent(data(1, b"a" * 4095 + b"\rb" + b"c" * 5000 + b"\r\n" + b"d" * 4096 + b"\n"),
           data(2, b"e" * 4096 + b"\r" + b"\n")),
     build_ok(lines=b"", errs=b""))
# Many short lines (50000, the log's line cap, costs about a second an input under ASan: left to
# the fuzzer).
seed("deploy_many_lines", deploy(build=True), agent(packed(2)),
     agent(data(1, b"\n" * 300), data(2, b"x\n" * 300)), build_ok(lines=b"", errs=b""))
seed("deploy_progress_hostile", deploy(build=True), agent(packed(2)),
     agent(progress(1, "build", exit={"id": 1, "code": 300}), progress(1, "build"),
           progress(1, "x" * 40), progress(1, 7), progress(2, "scan"),
           progress(1, "build", exit=exit_map(0, 255)), progress(1, "scan"),
           note("pack.progress", {"id": 1})),
     build_ok(), agent(note("pack.progress", [1, 2])))

# Hostile manifests: wrong types, out-of-range numbers, parts, not last.
seed("deploy_manifest_hostile", deploy(), agent(packed(2, out=None, arch=1)),
     agent(data(1, ARCHIVE),
           manifest(1, [fentry("a", size=2**63 + 5, mode=2**32 - 1),
                        fentry("b", size="big", mode=-1), 7,
                        {"path": b"\xff\x00bin", "type": 3, "size": None},
                        fentry("c", sha256=b"\x00\xff", target=5)], last=False),
           manifest(1, "nope", last="yes"), manifest(2, MAIN),
           manifest(1, [fentry("d", size=2**64 - 1, mode=0o100644)], part=1,
                    file_count=2**64 - 1, total_size=-3, archive_size=2**63, format=9,
                    archive_sha256=None),
           progress(1, "done"), end(1)))
seed("deploy_manifest_missing", deploy(), agent(packed(2, out=None, arch=1)),
     agent(data(1, ARCHIVE), progress(1, "done"), end(1)))
seed("deploy_archive_cancelled", deploy(), agent(packed(2, out=None, arch=1)),
     agent(data(1, ARCHIVE), note("stream.cancel", {"stream": 1})))
seed("deploy_pack_result_wrong", deploy(build=True),
     agent(resp(2, {"id": 1, "archive": 1, "build_stdout": 1, "build_stderr": 1})),
     agent(data(1, b"x\n"), end(1)))

# Inputs of bugs the fuzzer found (kept whatever they add to coverage).
seed("regress-stat-without-data", lookup(1), agent(resp(2, {"procs": [proc(1, 100)]})),
     agent(listening(3, sock(3000, 200))), agent(resp(4, {"fh": 1})), agent(resp(5, {})))
seed("regress-progress-without-phase", deploy(), agent(packed(2, out=None, arch=1)),
     agent(note("pack.progress", {"id": 1})))
seed("regress-unread-ppid-taken-for-pid0", lookup(1), agent(resp(2, {"procs": [proc(1, 0)]})),
     agent(listening(3, sock(3000, 200))), *walk(4, 1, b"garbage"))
seed("regress-cr-dropped-at-line-cut", deploy(build=True), agent(packed(2)),
     agent(data(1, b"a" * 4095 + b"\rb"), end(1)))
seed("regress-manifest-size-negative", deploy(), agent(packed(2, out=None, arch=1)),
     agent(data(1, ARCHIVE), manifest(1, [fentry("a", size=2**63 + 5)]), end(1)))
seed("regress-manifest-mode-beyond-permissions", deploy(), agent(packed(2, out=None, arch=1)),
     agent(data(1, ARCHIVE), manifest(1, [fentry("a", mode=0o100644)]), end(1)))
# A lookup cancelled with its /proc/PID/stat open (the read answered after the cancel), or before
# the open's answer: the handle must be closed anyway (the link is shared).
seed("regress-cancelled-lookup-read-answered", lookup(1),
     agent(resp(2, {"procs": [proc(1, 100)]})),
     agent(listening(3, sock(3000, 200), sock(8000, 100))), agent(resp(4, {"fh": 1})),
     cancel(0), agent(resp(5, {"data": stat(200, 100)})), RUN)
seed("regress-cancelled-lookup-open-answered", lookup(1),
     agent(resp(2, {"procs": [proc(1, 100)]})),
     agent(listening(3, sock(3000, 200), sock(8000, 100))), cancel(0),
     agent(resp(4, {"fh": 7})), RUN)

# --- gw_ssh_host: byte 0 (bit 0 wildcard endpoint, bits 1-3 buffer size, bit 4 no Host header),
# then the Host header's value. -----------------------------------------------------------------

WILD, NO_HOST = 0x01, 0x10
CAP256 = 7 << 1

SSH_SEEDS = {
    "wild_name_port": bytes([WILD | CAP256]) + b"gateway.example.com:8080",
    "wild_name": bytes([WILD | CAP256]) + b"localhost",
    "wild_v4": bytes([WILD | CAP256]) + b"10.0.0.1:80",
    "wild_v6_port": bytes([WILD | CAP256]) + b"[::1]:8080",
    "wild_v6": bytes([WILD | CAP256]) + b"[fe80::1]",
    "wild_v6_zone": bytes([WILD | CAP256]) + b"[fe80::1%eth0]:22",
    "wild_v6_junk": bytes([WILD | CAP256]) + b"[::1]junk:1",
    "wild_unclosed": bytes([WILD | CAP256]) + b"[::1",
    "wild_empty_brackets": bytes([WILD | CAP256]) + b"[]:80",
    "wild_port_only": bytes([WILD | CAP256]) + b":80",
    "wild_empty": bytes([WILD | CAP256]),
    "wild_space": bytes([WILD | CAP256]) + b"evil host",
    "wild_slash": bytes([WILD | CAP256]) + b"a/b@c",
    "wild_utf8": bytes([WILD | CAP256]) + "évil.example".encode(),
    "wild_control": bytes([WILD | CAP256]) + b"a\x1b[31m\x7fb",
    "wild_nul": bytes([WILD | CAP256]) + b"ok\x00evil",
    "wild_253": bytes([WILD | CAP256]) + b"a" * 253,
    "wild_254": bytes([WILD | CAP256]) + b"a" * 254 + b":1",
    "wild_long": bytes([WILD | CAP256]) + b"b" * 3000,
    "wild_no_host": bytes([WILD | NO_HOST | CAP256]),
    "small_buffer": bytes([WILD | 2 << 1]) + b"abcd:1",
    "buffer_1": bytes([WILD]) + b"a",
    "named": bytes([CAP256]) + b"gateway.example.com",
}


def write(out, seeds):
    os.makedirs(out, exist_ok=True)
    for name, b in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(b)
    print("%d seeds in %s" % (len(seeds), out))


def main(out):
    write(os.path.join(out, "gw_link"), SEEDS)
    write(os.path.join(out, "gw_ssh_host"), SSH_SEEDS)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else
         os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus"))
