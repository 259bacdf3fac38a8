#!/usr/bin/env python3
"""Write the seed corpora of the wire targets fuzz_request and fuzz_sbxconn (wire.cmake).

  corpus/request: one valid request per method the agent knows (agent/dispatch.c), plus the
                  stream notifications it reads; raw msgpack payloads, no frame header.
  corpus/sbxconn: agent -> client byte streams (frames) answering the requests fuzz_sbxconn.c
                  sends (ids 1..13 in its order), behind byte 0 (read size and feed mode).

Run: tests/fuzz/make_corpus_wire.py [request_dir sbxconn_dir]; then let tests/fuzz/run.sh merge.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_corpus import Raw, data, err_resp, frame, mp, note, resp  # noqa: E402,F401

SHA = "a" * 64
REQUESTS = {
    "hello": {"version": 1, "client": "sbx", "capabilities": ["process", "fs"], "token": "t"},
    "ping": {},
    "info": {},
    "shutdown": {"action": "reboot"},
    "lifetime.get": {},
    "lifetime.extend": {"seconds": 60},
    "clock.set": {"unix_ns": 1700000000000000000, "threshold_ns": 1000000},
    "env.get": {"name": "PATH"},
    "env.set": {"vars": {"A": "1", "B": None}},
    "env.unset": {"name": "A"},
    "env.list": {},
    "proc.spawn": {"argv": ["/bin/sh", "-c", "echo hi"], "env": {"X": "1"}, "cwd": "/tmp",
                   "stdin": "pipe", "stderr": "stdout", "timeout_ms": 1000, "kill_signal": "KILL",
                   "pty": {"rows": 24, "cols": 80, "term": "xterm"}, "tag": "t", "uid": 0,
                   "groups": [1, 2], "memory_max": 1 << 24, "pids_max": 10, "cpu_max": 50},
    "proc.wait": {"id": 1, "timeout_ms": 100},
    "proc.kill": {"id": 1, "signal": "TERM", "group": True},
    "proc.list": {},
    "proc.close_stdin": {"id": 1},
    "proc.release": {"id": 1},
    "proc.resize": {"id": 1, "rows": 50, "cols": 132},
    "proc.attach": {"id": 1, "from": 0, "stderr_from": 10, "stdin": False, "steal": True},
    "fs.stat": {"path": "etc", "cwd": "/", "user": "root"},
    "fs.lstat": {"path": "/etc/localtime"},
    "fs.readdir": {"path": "/", "limit": 10},
    "fs.mkdir": {"path": "/tmp/a/b", "parents": True, "mode": 0o755},
    "fs.remove": {"path": "/tmp/a", "recursive": True},
    "fs.rename": {"from": "a", "to": "b", "cwd": "/tmp"},
    "fs.copy": {"from": "/tmp/a", "to": "/tmp/b", "recursive": True},
    "fs.chmod": {"path": "/tmp/a", "mode": 0o600},
    "fs.chown": {"path": "/tmp/a", "uid": 1000, "gid": 1000},
    "fs.symlink": {"target": "../x", "path": "/tmp/l"},
    "fs.link": {"target": "/tmp/a", "path": "/tmp/h"},
    "fs.readlink": {"path": "/tmp/l"},
    "fs.realpath": {"path": "/tmp/../etc"},
    "fs.truncate": {"path": "/tmp/a", "size": 10},
    "fs.utime": {"path": "/tmp/a", "atime_ns": -1, "mtime_ns": 1500000000123456789},
    "fs.mktemp": {"dir": "/tmp", "prefix": "x", "suffix": ".txt", "directory": True},
    "fs.walk": {"path": "/src", "max_depth": 3, "include_dirs": False, "exts": ["c", "h"],
                "match": ["^a.*"], "skip": ["\\.git$"], "follow_symlinks": True},
    "fs.glob": {"pattern": "**/*.{c,h}", "root": "/src", "exclude": ["build/**"]},
    "fs.watch": {"path": "/tmp", "recursive": True},
    "fs.unwatch": {"watch": 1},
    "fs.open": {"path": "/tmp/a", "flags": ["read", "write", "create"], "mode": 0o644},
    "fs.read": {"fh": 1, "len": 4096, "offset": 0},
    "fs.write": {"fh": 1, "data": b"hello", "offset": 5},
    "fs.seek": {"fh": 1, "offset": -5, "whence": "end"},
    "fs.fstat": {"fh": 1},
    "fs.fsync": {"fh": 1, "data_only": True},
    "fs.ftruncate": {"fh": 1, "size": 0},
    "fs.close": {"fh": 1},
    "fs.umask": {"mask": 0o22},
    "fs.futimes": {"fh": 1, "atime_ns": 0, "mtime_ns": 0},
    "fs.flock": {"fh": 1, "exclusive": True, "wait": False},
    "fs.funlock": {"fh": 1},
    "transfer.upload": {"path": "/tmp/up", "mode": 0o644, "size": 3, "sha256": SHA, "parents": True,
                        "overwrite": False, "fsync": True},
    "transfer.download": {"path": "/etc/hostname", "offset": 1, "length": 10},
    "transfer.upload_tree": {"path": "/tmp/t", "compress": "gzip", "preserve_owner": True},
    "transfer.download_tree": {"path": "/tmp/t", "compress": "zstd"},
    "pack.create": {"path": "/app", "format": "tar.zst", "entrypoint": "main.py",
                    "args": ["--x"], "exclude": ["*.pyc"],
                    "build": {"argv": ["make"], "env": {"CC": "cc"}, "timeout_ms": 1000}},
    "repl.start": {"language": "python", "env": {"A": "b"}, "cwd": "/tmp"},
    "repl.eval": {"session": 1, "code": "1+1", "timeout_ms": 100, "stream": True,
                  "format": "json"},
    "repl.close": {"session": 1},
    "repl.list": {},
    "repl.collect": {"session": 1},
    "net.connect": {"host": "127.0.0.1", "port": 8080, "timeout_ms": 500},
    "net.listening": {},
}
NOTES = {
    "stream.credit": {"stream": 1, "bytes": 65536},
    "stream.end": {"stream": 1, "error": {"code": "STREAM", "message": "x"}, "truncated": True},
    "stream.cancel": {"stream": 2},
}


def hello_result(caps=("session", "env", "process", "pty", "fs", "transfer", "pack", "repl",
                       "net")):
    return {"version": 1, "agent": "sbx-agent", "agent_version": "0.1.0",
            "capabilities": list(caps),
            "limits": {"frame_max": 4 << 20, "chunk_max": 256 << 10, "stream_window": 1 << 20,
                       "max_streams": 4096, "max_procs": 1024, "max_conns": 64},
            "conn": 7}










def exit_map(i, code=0):
    return {"id": i, "pid": 400, "code": code, "signal": None, "signo": None, "core": False,
            "duration_ns": 1000, "drained": True, "timed_out": False, "oom": False,
            "stdout_bytes": 3, "stderr_bytes": 0,
            "rusage": {"maxrss_kb": 1000, "utime_us": 1, "stime_us": 2}}


FILEINFO = {"type": "dir", "size": 4096, "mode": 0o40755, "uid": 0, "gid": 0, "nlink": 2,
            "ino": 2, "dev": 1, "rdev": 0, "blksize": 4096, "blocks": 8, "atime_ns": 1,
            "mtime_ns": 2, "ctime_ns": 3, "birthtime_ns": None}

HELLO = resp(1, hello_result())
SPAWN = resp(2, {"id": 1, "pid": 401, "stdin": 1, "stdout": 2, "stderr": 3})
DOWNLOAD = resp(3, {"stream": 4, "size": 6, "mode": 0o644})
PACK = resp(4, {"id": 1, "build_stdout": 13, "build_stderr": 14, "archive": 5})
NET = resp(5, {"in": 6, "out": 7})
STAT = resp(6, FILEINFO)
UPLOAD = resp(7, {"stream": 8})
EVAL = resp(8, {"eval": 1, "stdout": 9, "stderr": 10})
ATTACH_R = {"stdin": None, "stdout": 11, "stderr": None, "stdout_start": 0, "stderr_start": None,
            "stdout_dropped": 0, "stderr_dropped": 0}
ATTACH = resp(9, ATTACH_R)
WALK = resp(10, {"stream": 12})
WAIT = resp(11, exit_map(1))
READ = resp(12, {"data": b"0123456789abcdef", "eof": False})
PING = resp(13, {})

SESSIONS = {
    "hello": HELLO,
    "hello_err": err_resp(1, "VERSION", "no common version"),
    "spawn": HELLO + SPAWN + note("stream.credit", {"stream": 1, "bytes": 1 << 20})
    + data(2, b"hi\n") + data(3, b"oops") + note("stream.end", {"stream": 2})
    + note("stream.end", {"stream": 3}) + note("proc.exit", exit_map(1)) + WAIT,
    "download": HELLO + SPAWN + DOWNLOAD + data(4, b"myhost") + note("stream.end", {"stream": 4})
    + note("transfer.done", {"stream": 4, "size": 6, "sha256": "b" * 64}),
    "upload": HELLO + SPAWN + DOWNLOAD + PACK + NET + STAT + UPLOAD
    + note("stream.credit", {"stream": 8, "bytes": 3 << 20})
    + note("transfer.done", {"stream": 8, "size": 3, "sha256": "c" * 64}),
    "pack_net": HELLO + SPAWN + DOWNLOAD + PACK + NET
    + note("pack.progress", {"id": 1, "phase": "build"}) + data(13, b"make\n")
    + note("stream.end", {"stream": 13}) + note("stream.end", {"stream": 14})
    + data(5, b"\x1f\x8b" + b"\0" * 30) + note("stream.end", {"stream": 5})
    + note("pack.manifest", {"id": 1, "files": 3}) + data(7, b"HTTP/1.1 200 OK\r\n")
    + note("stream.cancel", {"stream": 7, "error": {"code": "ECONNRESET", "message": "r"}}),
    "all": HELLO + SPAWN + DOWNLOAD + PACK + NET + STAT + UPLOAD + EVAL + ATTACH + WALK + WAIT
    + READ + PING + data(9, b"2\n") + note("repl.result", {"eval": 1, "value": "2"})
    + data(12, mp({"path": "a.c", "type": "file"})) + note("stream.end", {"stream": 12})
    + data(11, b"x") + note("fs.event", {"watch": 1, "path": "/tmp/a", "event": "create"}),
    "errors": HELLO + err_resp(2, "ENOENT", "exec: no such file")
    + err_resp(3, "EACCES", "open") + err_resp(99, "BAD_PARAM", "unknown id")
    + note("error", {"code": "BAD_MESSAGE", "message": "you sent garbage"}),
    "hostile_credit": HELLO + SPAWN + data(2, b"x" * 300) + data(1, b"wrong direction")
    + data(77, b"unknown") + note("stream.credit", {"stream": 1, "bytes": 0xFFFFFFFF})
    + note("stream.credit", {"stream": 1, "bytes": 0xFFFFFFFF}),
    "agent_request": HELLO + frame(mp([0, 5, "proc.spawn", {"argv": ["x"]}])),
    "bad_hello": resp(1, {"version": 1}),
    "frame_huge": HELLO + b"\xff\xff\xff\xff",
    "stat_symlink": HELLO + SPAWN + DOWNLOAD + PACK + NET
    + resp(6, dict(FILEINFO, type="symlink", target=b"../x" * 100)),
}


# Agent streams the sessions above leave unreached (README.md, "Coverage"), as seed-<what>.
def hello_limits(**limits):
    r = hello_result()
    r["limits"] = dict(r["limits"], **limits)
    return resp(1, r)


def not_map(i):
    return resp(i, 5)


ERR_FULL = {"code": "LIMIT", "message": "m", "errno": 28, "stage": "write", "field": "data",
            "limit": "stream_window", "min": 1, "max": 10, "path": b"/tmp/\xff"}
UPLOAD_TREE = resp(16, {"stream": 20})
SESSIONS_COVER = {
    # Flow control under tiny limits: writes queued behind credit and sent as credit comes, in
    # chunks of chunk_max; data over chunk_max or over the credit; a stream beyond max_streams.
    "small-window": hello_limits(chunk_max=2, stream_window=1) + SPAWN
    + note("stream.credit", {"stream": 1, "bytes": 1}) + note("stream.credit", {"stream": 1,
                                                                                "bytes": 9})
    + data(2, b"ab") + data(2, b"abcd") + data(3, b"ab") + data(3, b"ab")
    + data(3, b"a") + UPLOAD + note("stream.credit", {"stream": 8, "bytes": 1}),
    # A window of 2^32-1: the host's grants are cut to what keeps the credit within it.
    "window-max": hello_limits(stream_window=0xFFFFFFFF) + SPAWN + data(2, b"x" * 40)
    + data(2, b"y" * 40) + data(3, b"z"),
    "max-streams": hello_limits(max_streams=2) + SPAWN,
    "stream-twice": HELLO + resp(2, {"id": 1, "pid": 401, "stdin": 1, "stdout": 1, "stderr": 3}),
    # The agent ending or cancelling streams: cancel on out and in streams, end on an in stream.
    "agent-cancels": HELLO + SPAWN + note("stream.end", {"stream": 1})
    + note("stream.cancel", {"stream": 2, "error": {"code": "STREAM", "message": "gone"}})
    + note("stream.cancel", {"stream": 1}) + note("stream.credit", {"stream": 3, "bytes": 5})
    + note("stream.credit", {"stream": 7, "bytes": 0}) + data(77, b"") + data(3, b""),
    # transfer.done while the upload is still open (its end waits for credit).
    "done-open-upload": hello_limits(stream_window=1) + UPLOAD
    + note("transfer.done", {"stream": 8, "error": {"code": "ENOSPC", "message": "full"}})
    + UPLOAD_TREE + note("transfer.done", {"stream": 20, "files": 3, "size": 9}),
    "done-fields": HELLO + DOWNLOAD + note("transfer.done", {"stream": 4, "sha256": "ab"}),
    "done-bad-size": HELLO + note("transfer.done", {"stream": 4, "size": -1}),
    "done-bad-files": HELLO + note("transfer.done", {"stream": 4, "files": "x"}),
    "done-bad-error": HELLO + note("transfer.done", {"stream": 4, "error": 5}),
    "done-bad-sha256": HELLO + note("transfer.done", {"stream": 4, "sha256": 5}),
    # Error responses: every field of the error map, and one that also has a result.
    "error-fields": HELLO + frame(mp([1, 2, ERR_FULL, None]))
    + frame(mp([1, 3, {"code": "EIO", "message": "m", "min": -1, "path": b"a\x00b"}, None]))
    + frame(mp([1, 4, {"code": "E", "message": "m", "path": "p" * 5000}, None])),
    "error-with-result": HELLO + frame(mp([1, 2, {"code": "EIO", "message": "m"}, {}])),
    "error-empty-code": HELLO + frame(mp([1, 2, {"code": "", "message": "m"}, None])),
    # Capability names libsbx does not keep (over 64 bytes, with a NUL); the reply to a method
    # without a typed call (id 19), and one to a request of the agent's own.
    "hello-odd-caps": resp(1, dict(hello_result(), capabilities=["fs", "c" * 65, "a\x00b"]))
    + resp(19, {"x": 1}) + frame(mp([0, 1, "ping", {}])),
    # Results that are not maps, one typed record each (each is fatal).
    "hello-not-map": not_map(1),
    "spawn-not-map": HELLO + not_map(2),
    "stream-not-map": HELLO + not_map(3),
    "pack-not-map": HELLO + not_map(4),
    "net-not-map": HELLO + not_map(5),
    "stat-not-map": HELLO + not_map(6),
    "attach-not-map": HELLO + not_map(9),
    "wait-not-map": HELLO + not_map(11),
    "exit-not-map": HELLO + note("proc.exit", 5),
    # Exit maps: by a signal, neither code nor signo, a signo out of range.
    "exit-signal": HELLO + note("proc.exit", dict(exit_map(1), code=None, signal="KILL",
                                                  signo=9))
    + resp(11, dict(exit_map(1), code=None, signal="TERM", signo=15)),
    "exit-code-over": HELLO + note("proc.exit", dict(exit_map(1), code=256)),
    "exit-neither": HELLO + note("proc.exit", dict(exit_map(1), code=None)),
    "exit-signo-over": HELLO + note("proc.exit", dict(exit_map(1), code=None, signo=65)),
    "stat-target-not-bin": HELLO + resp(6, dict(FILEINFO, type="symlink", target=5)),
    "stat-birthtime": HELLO + resp(6, dict(FILEINFO, birthtime_ns=4, target=None)),
    # proc.attach: a stream without its start offset.
    "attach-no-stdout-start": HELLO + resp(9, dict(ATTACH_R, stdout_start=None)),
    "attach-bad-dropped": HELLO + resp(9, dict(ATTACH_R, stdout_dropped=-1)),
    "attach-no-stderr-start": HELLO + resp(9, dict(ATTACH_R, stderr=12, stderr_start=None)),
    # The results of fs.lstat, fs.fstat, upload_tree, download_tree and fs.glob (ids 14..18).
    "trees-glob": HELLO + resp(14, dict(FILEINFO, type="symlink", target=b"x"))
    + resp(15, FILEINFO) + UPLOAD_TREE + resp(17, {"stream": 21}) + resp(18, {"stream": 22})
    + data(21, b"\x1f\x8b") + note("stream.end", {"stream": 21}) + data(22, mp({"path": "a.c"}))
    + note("stream.end", {"stream": 22}),
}


def hello_echo(recv_window):
    r = hello_result()
    r["recv_window"] = recv_window
    return resp(1, r)


# hello's recv_window (PROTOCOL.md §6.2): a lead byte with bit 2 set (4) asks 64 KiB. Echoed:
# out streams start with it (a byte beyond is cancelled); another value, or an echo nobody asked
# for (lead 0), fails the connection.
RECV_WINDOW_COVER = {
    "recv-window": (4, hello_echo(65536) + SPAWN + data(2, b"x" * 40000) + data(2, b"y" * 25536)
                    + data(2, b"z") + data(3, b"w" * 100)),
    "recv-window-other": (4, hello_echo(8192) + SPAWN),
    "recv-window-unasked": (0, hello_echo(65536) + SPAWN),
}


def write_sbxconn_cover(conn_dir):
    os.makedirs(conn_dir, exist_ok=True)
    for name, stream in SESSIONS_COVER.items():
        for lead, tag in ((0, ""), (0x0D, "-step13-zc"), (6, "-step6-split")):
            with open(os.path.join(conn_dir, "seed-" + name + tag), "wb") as f:
                f.write(bytes([lead]) + stream)
    for name, (lead, stream) in RECV_WINDOW_COVER.items():
        with open(os.path.join(conn_dir, "seed-" + name), "wb") as f:
            f.write(bytes([lead]) + stream)


def raw_str(b):
    """A msgpack str holding @b as it is (invalid UTF-8 included)."""
    return Raw((bytes([0xA0 | len(b)]) if len(b) < 32 else b"\xd9" + bytes([len(b)])) + b)


def raw_map(n, entry=b"\xa1a\xc0"):
    """A map of @n copies of one entry (a repeated key is still an entry to count)."""
    return Raw(b"\xde" + n.to_bytes(2, "big") + entry * n)


# Requests the seeds above leave unreached (README.md, "Coverage"): values over each list,
# map and string cap the handlers give, the rest of the spawn schema, odd UTF-8 hosts.
ARGV = ["x"]
REQUESTS_COVER = {
    "spawn-timing": ("proc.spawn", {"argv": ARGV, "kill_grace_ms": 100, "drain_ms": 200,
                                    "kill_signal": "SIGIOT"}),
    "spawn-kill-grace-over": ("proc.spawn", {"argv": ARGV, "kill_grace_ms": 60001}),
    "spawn-drain-over": ("proc.spawn", {"argv": ARGV, "drain_ms": 60001}),
    "spawn-signal-overflow": ("proc.spawn", {"argv": ARGV, "kill_signal": "9" * 20}),
    "spawn-signal-alias": ("proc.spawn", {"argv": ARGV, "kill_signal": "cld"}),
    "kill-signal-alias": ("proc.kill", {"id": 1, "signal": "SIGPOLL"}),
    "spawn-pty-not-map": ("proc.spawn", {"argv": ARGV, "pty": 1}),
    "spawn-pty-over": ("proc.spawn", {"argv": ARGV, "pty": raw_map(17)}),
    "spawn-env-name-eq": ("proc.spawn", {"argv": ARGV, "env": {"A=B": "1"}}),
    "spawn-command": ("proc.spawn", {"command": "echo hi; exit 3", "cwd": "/"}),
    "spawn-over-argv": ("proc.spawn", {"argv": ["a"] * 4097}),
    "spawn-over-env": ("proc.spawn", {"argv": ARGV, "env": raw_map(4097)}),
    "spawn-over-groups": ("proc.spawn", {"argv": ARGV, "groups": [1] * 65}),
    "spawn-over-tag": ("proc.spawn", {"argv": ARGV, "tag": "t" * 257}),
    "spawn-over-user": ("proc.spawn", {"argv": ARGV, "user": "u" * 257}),
    "hello-over-caps": ("hello", {"version": 1, "capabilities": ["c"] * 65}),
    "hello-cap-long": ("hello", {"version": 1, "capabilities": ["c" * 65]}),
    "hello-over-client": ("hello", {"version": 1, "client": "c" * 257}),
    "hello-over-token": ("hello", {"version": 1, "token": "t" * 257}),
    "env-set-over": ("env.set", {"vars": raw_map(4097)}),
    "walk-over-exts": ("fs.walk", {"path": "/", "exts": ["c"] * 65}),
    "walk-ext-long": ("fs.walk", {"path": "/", "exts": ["e" * 256]}),
    "walk-over-match": ("fs.walk", {"path": "/", "match": ["a"] * 65}),
    "walk-regex-long": ("fs.walk", {"path": "/", "skip": ["a" * 4097]}),
    "glob-over-exclude": ("fs.glob", {"pattern": "*", "exclude": ["a"] * 65}),
    "glob-exclude-not-array": ("fs.glob", {"pattern": "*", "exclude": "a"}),
    "open-over-flags": ("fs.open", {"path": "/a", "flags": ["read"] * 17}),
    "pack-over-exclude": ("pack.create", {"path": "/", "format": "tar.gz",
                                          "exclude": ["a"] * 1025}),
    "pack-over-args": ("pack.create", {"path": "/", "format": "tar.gz", "args": ["a"] * 4097}),
    "pack-build-over": ("pack.create", {"path": "/", "format": "tar.gz", "build": raw_map(65)}),
    "pack-build-env-over": ("pack.create", {"path": "/", "format": "tar.gz",
                                            "build": {"argv": ARGV, "env": raw_map(4097)}}),
    "pack-args-not-str": ("pack.create", {"path": "/", "format": "tar.gz", "args": [5]}),
    "pack-build-env-name-long": ("pack.create", {"path": "/", "format": "tar.gz",
                                                 "build": {"argv": ARGV, "env": {"N" * 257: "v"}}}),
    "pack-build-env-name-nul": ("pack.create", {"path": "/", "format": "tar.gz",
                                                "build": {"argv": ARGV, "env": {"A\x00B": "v"}}}),
    "pack-build-argv-over": ("pack.create", {"path": "/", "format": "tar.gz",
                                             "build": {"argv": ["a"] * 4097}}),
    "repl-argv-over": ("repl.start", {"argv": ["a"] * 4097}),
    "stat-path-over": ("fs.stat", {"path": "/" + "a" * 4096}),
    "mktemp-prefix-over": ("fs.mktemp", {"prefix": "p" * 256}),
    "net-host-4byte": ("net.connect", {"port": 1, "host": "h\U0001F600"}),
    "net-host-overlong": ("net.connect", {"port": 1, "host": raw_str(b"\xe0\x80\x80")}),
    "net-host-overlong4": ("net.connect", {"port": 1, "host": raw_str(b"\xf0\x8f\xbf\xbf")}),
    "net-host-above-max": ("net.connect", {"port": 1, "host": raw_str(b"\xf4\x90\x80\x80")}),
    "net-host-surrogate": ("net.connect", {"port": 1, "host": raw_str(b"\xed\xa0\x80")}),
    "net-host-over": ("net.connect", {"port": 1, "host": "h" * 256}),
}


def write_request_cover(req_dir):
    os.makedirs(req_dir, exist_ok=True)
    for i, (name, (method, params)) in enumerate(REQUESTS_COVER.items()):
        with open(os.path.join(req_dir, "seed-" + name), "wb") as f:
            f.write(mp([0, 100 + i, method, params]))


def main(req_dir, conn_dir):
    os.makedirs(req_dir, exist_ok=True)
    os.makedirs(conn_dir, exist_ok=True)
    for i, (method, params) in enumerate(REQUESTS.items()):
        with open(os.path.join(req_dir, "seed_" + method), "wb") as f:
            f.write(mp([0, i + 1, method, params]))
    for method, params in NOTES.items():
        with open(os.path.join(req_dir, "seed_" + method), "wb") as f:
            f.write(mp([2, method, params]))
    write_request_cover(req_dir)
    write_sbxconn_cover(conn_dir)
    for name, stream in SESSIONS.items():
        for lead, tag in ((0, ""), (1, "_bytewise_zc"), (6, "_step6_split")):
            with open(os.path.join(conn_dir, "seed_" + name + tag), "wb") as f:
                f.write(bytes([lead]) + stream)


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    if len(sys.argv) == 3:
        main(sys.argv[1], sys.argv[2])
    else:
        main(os.path.join(here, "corpus", "request"), os.path.join(here, "corpus", "sbxconn"))
