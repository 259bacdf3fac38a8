#!/usr/bin/env python3
"""Write the seed corpus of fuzz_gw_agent (gateway.cmake): SDK calls into a gateway session and the
agent's answers to them, in the input format fuzz_gw_agent.c describes.

For every method of the gateway's table one seed m_<call> whose agent bytes answer its requests
with a valid, successful result (PROTOCOL.md records), so the fuzzer starts on the success paths;
a few of them also with the small limits of byte 0's bit 7; then sequences (a REPL's life, stdin
and writeFile content streams, denoHttpWait's ancestry walk, readDir pages, cancel, congestion,
abort, the agent's EOF) and hostile variants (wrong types, huge lengths, missing fields, results
for ids never sent, events for unknown streams, proc.exit twice, data after end, invalid UTF-8).

libsbx numbers its requests: 1 is hello, then 2, 3, ... in the order the session sends them;
stream ids are the agent's, from 1 per connection.

Run: tests/fuzz/make_corpus_gw_agent.py [dir]; then let tests/fuzz/run.sh merge.
"""
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_corpus import RawStr as Raw, agent, cancel, data, end, err_resp, frame, mp, note, resp, split  # noqa: E402,F401,E501

# fuzz_gw_agent.c's fz_calls[], in its order.
CALLS = [
    "spawn", "spawn_stdin", "processWait", "processKill", "spawnDeno", "spawnDeno_code",
    "denoHttpWait", "spawnDenoRepl", "denoReplEval", "denoReplCall", "denoReplClose", "envGet",
    "envSet", "envDelete", "envToObject", "abort", "download", "fetch", "exposeHttp", "vscode",
    "readFile", "readTextFile", "writeFile", "writeFile_stream", "writeTextFile", "readDir",
    "remove", "mkdir", "rename", "stat", "lstat", "chmod", "chown", "copyFile", "link", "symlink",
    "readLink", "realPath", "makeTempDir", "makeTempFile", "truncate", "umask", "utime", "walk",
    "walk_follow", "expandGlob", "expandGlob_literal", "open", "create", "fileClose", "fileRead",
    "fileWrite", "fileSeek", "fileStat", "fileSync", "fileSyncData", "fileTruncate", "fileUtime",
    "fileLock", "fileUnlock", "s_start", "s_enqueue", "s_end", "s_error",
]
SMALL = 0x80  # byte 0: the hello's small limits


# --- the input's operations ------------------------------------------------------------------

def call(name):
    return bytes([0, CALLS.index(name)])


CONGEST = bytes([4])
EOF = bytes([5])


def abort(k):
    return bytes([6, k])


# --- agent frames ----------------------------------------------------------------------------











def scancel(sid, **extra):
    p = {"stream": sid}
    p.update(extra)
    return note("stream.cancel", p)


def credit(sid, n):
    return note("stream.credit", {"stream": sid, "bytes": n})


def exit_map(i, code=0, signo=None):
    return {"id": i, "pid": 100, "code": None if signo else code, "signal": None,
            "signo": signo, "core": False, "duration_ns": 1000, "drained": True,
            "timed_out": False, "oom": False, "stdout_bytes": 3, "stderr_bytes": 0,
            "rusage": {"maxrss_kb": 1000, "utime_us": 1, "stime_us": 2}}


def fileinfo(t="dir", **extra):
    fi = {"type": t, "size": 4096, "mode": 0o40755, "uid": 0, "gid": 0, "nlink": 2, "ino": 2,
          "dev": 1, "rdev": 0, "blksize": 4096, "blocks": 8, "atime_ns": 1700000000123456789,
          "mtime_ns": 1700000000000000000, "ctime_ns": 3, "birthtime_ns": None}
    fi.update(extra)
    return fi


def spawned(i, sin=None, sout=1, serr=2, proc=1):
    return resp(i, {"id": proc, "pid": 100, "stdin": sin, "stdout": sout, "stderr": serr})


def entry(path, name, t, depth, **extra):
    e = {"path": path, "name": name, "type": t, "depth": depth}
    e.update(extra)
    return mp(e)


OK = {}

# --- one valid answer per call -----------------------------------------------------------------

# The agent's side of a successful call made first on the connection (its requests 2, 3, ...).
ANSWERS = {
    "spawn": agent(spawned(2), data(1, b"hi\n"), data(2, b"oops\n"), end(1), end(2),
                   note("proc.exit", exit_map(1))),
    "processWait": agent(resp(2, exit_map(1))),
    "processKill": agent(resp(2, OK)),
    "spawnDeno": agent(spawned(2), data(1, b"Listening on http://0.0.0.0:8000/\n"),
                       data(2, b"\x1b[0;32mWatcher\x1b[0m File change detected! Restarting!\r\n"),
                       end(1), end(2)),
    "spawnDeno_code": agent(resp(2, {"path": "/tmp/sbx-deno-abcdefghijkl"}), resp(3, {"fh": 1}),
                            resp(4, {"written": 14}), resp(5, OK), spawned(6)),
    "denoHttpWait": agent(resp(2, {"procs": [{"id": 1, "pid": 100, "argv": ["deno", "run"],
                                              "tag": None, "state": "running",
                                              "started_ns": 1, "attached": True,
                                              "stdout_dropped": 0, "stderr_dropped": 0}]}),
                          resp(3, {"sockets": [{"proto": "tcp", "addr": "0.0.0.0",
                                                "port": 8000, "pid": 100}],
                                   "truncated": False})),
    "spawnDenoRepl": agent(resp(2, {"session": 1, "pid": 100, "proc": 1})),
    "envGet": agent(resp(2, {"value": "/usr/bin:/bin"})),
    "envSet": agent(resp(2, OK)),
    "envDelete": agent(resp(2, OK)),
    "envToObject": agent(resp(2, {"env": {"PATH": "/bin", "HOME": b"/home/app"}})),
    "abort": b"",
    "download": b"",
    "fetch": b"",
    "exposeHttp": b"",
    "vscode": b"",
    "readFile": agent(resp(2, {"stream": 1, "size": 5, "mode": 0o100644}), data(1, b"hel"),
                      data(1, b"lo"), end(1)),
    "readTextFile": agent(resp(2, {"stream": 1, "size": 7, "mode": 0o100644}),
                          data(1, "h\u00e9llo".encode()), end(1)),
    "writeFile": agent(resp(2, {"fh": 1}), resp(3, {"written": 5}), resp(4, OK), resp(5, OK)),
    "writeTextFile": agent(resp(2, {"fh": 1}), resp(3, {"written": 5}), resp(4, OK)),
    "readDir": agent(resp(2, {"entries": [{"name": "a", "type": "file"},
                                          {"name": "b", "type": "dir"}], "cursor": "c1"}),
                     resp(3, {"entries": [{"name": "l", "type": "symlink"}], "cursor": None})),
    "remove": agent(resp(2, OK)),
    "mkdir": agent(resp(2, OK)),
    "rename": agent(resp(2, OK)),
    "stat": agent(resp(2, fileinfo())),
    "lstat": agent(resp(2, fileinfo("symlink", mode=0o120777, size=7, target=b"usr/bin"))),
    "chmod": agent(resp(2, OK)),
    "chown": agent(resp(2, OK)),
    "copyFile": agent(resp(2, OK)),
    "link": agent(resp(2, OK)),
    "symlink": agent(resp(2, OK)),
    "readLink": agent(resp(2, {"target": "/tmp/a"})),
    "realPath": agent(resp(2, {"path": "/tmp"})),
    "makeTempDir": agent(resp(2, {"path": "/tmp/pAbCdEfGhIjKls"})),
    "makeTempFile": agent(resp(2, {"path": "/tmp/xAbCdEfGhIjKl"})),
    "truncate": agent(resp(2, OK)),
    "umask": agent(resp(2, {"mask": 0o22})),
    "utime": agent(resp(2, OK)),
    "walk": agent(resp(2, {"stream": 1}),
                  data(1, entry("/src", "src", "dir", 0) + entry("/src/a.ts", "a.ts", "file", 1)
                       + entry("/src/d", "d", "dir", 1)),
                  data(1, entry("/src/d/b.js", "b.js", "file", 2)
                       + entry("/src/l", "l", "symlink", 1)), end(1)),
    "walk_follow": agent(resp(2, {"stream": 1}),
                         data(1, entry("/src", "src", "dir", 0)
                              + entry("/src/l", "l", "symlink", 1)
                              + entry("/src/l/x.ts", "x.ts", "file", 2)
                              + entry("/src/node_modules", "node_modules", "dir", 1)
                              + entry("/src/node_modules/y.ts", "y.ts", "file", 2)
                              + entry("/src/e", "e", "dir", 1,
                                      error={"code": "EACCES", "message": "open"})
                              + entry("/src/m", "m", "symlink", 1)), end(1)),
    "expandGlob": agent(resp(2, {"stream": 1}),
                        data(1, entry("/src", "src", "dir", 0)
                             + entry("/src/a.ts", "a.ts", "file", 1)
                             + entry("/src/d", "d", "dir", 1)
                             + entry("/src/d/b.js", "b.js", "file", 2)
                             + entry("/src/d/x", "x", "dir", 2)
                             + entry("/src/c.md", "c.md", "file", 1)), end(1)),
    "expandGlob_literal": agent(resp(2, fileinfo("file", mode=0o100644, size=12, nlink=1))),
    "open": agent(resp(2, {"fh": 1})),
    "create": agent(resp(2, {"fh": 1})),
    "fileClose": agent(resp(2, OK)),
    "fileRead": agent(resp(2, {"data": b"0123456789abcdef"})),
    "fileWrite": agent(resp(2, {"written": 11})),
    "fileSeek": agent(resp(2, {"position": 3})),
    "fileStat": agent(resp(2, fileinfo("file", mode=0o100600, birthtime_ns=-1))),
    "fileSync": agent(resp(2, OK)),
    "fileSyncData": agent(resp(2, OK)),
    "fileTruncate": agent(resp(2, OK)),
    "fileUtime": agent(resp(2, OK)),
    "fileLock": agent(resp(2, OK)),
    "fileUnlock": agent(resp(2, OK)),
}

# Seeds for the calls that need more than one call of their own.
REPL = call("spawnDenoRepl") + agent(resp(2, {"session": 1, "pid": 100, "proc": 1}))
SEQUENCES = {
    # stdin from client stream 7: claimed before the spawn's answer, pumped after it, ended.
    "m_spawn_stdin": call("s_start") + call("s_enqueue") + call("spawn_stdin")
    + agent(spawned(2, sin=1, sout=2, serr=3)) + call("s_enqueue") + call("s_end")
    + agent(credit(1, 1000), data(2, b"hellohello"), end(2), end(3),
            note("proc.exit", exit_map(1))),
    "m_writeFile_stream": call("s_start") + call("writeFile_stream") + call("s_enqueue")
    + agent(resp(2, {"fh": 1})) + agent(resp(3, {"written": 5})) + call("s_enqueue")
    + call("s_end") + agent(resp(4, {"written": 5}), resp(5, OK)),
    # the REPL: start (its proc.wait is request 3), eval, call, close, the interpreter's exit
    "m_denoReplEval": REPL + call("denoReplEval")
    + agent(resp(4, {"stdout": b"out\n", "stderr": b"", "value": "2", "error": False,
                     "error_text": None, "duration_ns": 5, "timed_out": False,
                     "truncated": False})),
    "m_denoReplCall": REPL + call("denoReplCall")
    + agent(resp(4, {"stdout": b"", "stderr": b"warn\n",
                     "value": '{"constructorName":"TypeError","message":"x","stack":"at f"}',
                     "error": True, "error_text": "TypeError: x", "duration_ns": 5,
                     "timed_out": False, "truncated": False})),
    "m_denoReplClose": REPL + call("denoReplClose") + agent(resp(4, OK))
    + agent(resp(3, exit_map(1))),
    "repl_life": REPL + call("denoReplEval") + call("denoReplCall")
    + agent(resp(4, {"stdout": b"1\n", "value": '[1,{"a":"\\ud83d\\ude00"},null]',
                     "error": False}),
            resp(5, {"value": '"\\ud800x" ', "error": False, "stderr": b"\xff"}))
    + call("denoReplEval") + agent(resp(6, {"value": "123456789012345678901234567890",
                                            "error": False}))
    + call("denoReplEval") + agent(resp(7, {"value": None, "error": True,
                                            "error_text": b"Uncaught \xff", "truncated": True}))
    + call("denoReplClose") + agent(resp(8, OK), resp(3, exit_map(1, signo=9))),
    # denoHttpWait: a listener of another pid, whose parent (/proc/200/stat) is the process
    "denoHttpWait_child": call("denoHttpWait")
    + agent(resp(2, {"procs": [{"id": 1, "pid": 100, "state": "running"}]}),
            resp(3, {"sockets": [{"proto": "udp", "addr": "0.0.0.0", "port": 53, "pid": 100},
                                 {"proto": "tcp6", "addr": "::", "port": 8000, "pid": 200},
                                 {"proto": "tcp", "addr": "::", "port": 8001, "pid": None}],
                     "truncated": False}),
            resp(4, {"fh": 3}), resp(5, {"data": b"200 (deno (x) y) S 100 200 200 0"}),
            resp(6, OK)),
    # ... not yet listening, then exited
    "denoHttpWait_exit": call("denoHttpWait")
    + agent(resp(2, {"procs": [{"id": 1, "pid": 100, "state": "running"}]}),
            resp(3, {"sockets": [], "truncated": False}),
            err_resp(4, "TIMEOUT", "not yet"), resp(5, {"sockets": []}),
            resp(6, exit_map(1))),
    # readDir's pages, with a stat and an env call in between
    "pipelined": call("readDir") + call("stat") + call("envGet")
    + agent(resp(3, fileinfo("file", mode=0o100644)), resp(4, {"value": None}),
            resp(2, {"entries": [{"name": b"\xc3\xa9t\xe9", "type": "file"}], "cursor": "c"}),
            resp(5, {"entries": [], "cursor": None})),
    # the SDK cancels the walk's stream (its first server stream) and the spawn's stdout
    "cancel": call("walk") + agent(resp(2, {"stream": 1}),
                                   data(1, entry("/src", "src", "dir", 0)))
    + cancel(0) + agent(data(1, entry("/src/a", "a", "file", 1)), end(1))
    + call("spawn") + agent(spawned(3, sout=2, serr=3), data(2, b"x")) + cancel(1)
    + agent(data(2, b"y"), end(2), end(3)),
    # the WebSocket is full while output comes, then drains
    "congested": bytes([SMALL]) + call("spawn") + CONGEST
    + agent(spawned(2), data(1, b"a" * 64), data(1, b"b" * 64), data(1, b"c" * 64),
            data(1, b"d" * 64), data(1, b"e")) + CONGEST
    + agent(data(1, b"f" * 64), end(1), end(2)),
    # abort of a readFile (abortId 0) and of a streamed writeFile (abortId 2)
    "abort_read": call("readFile") + agent(resp(2, {"stream": 1, "size": 10, "mode": 0o644}),
                                           data(1, b"01234")) + abort(0)
    + agent(data(1, b"56789"), end(1)),
    "abort_write": call("s_start") + call("writeFile_stream") + agent(resp(2, {"fh": 4}))
    + call("s_enqueue") + abort(2) + agent(resp(3, {"written": 5}), resp(4, OK)),
    # the agent's link ends while calls and streams are in flight
    "agent_eof": call("readFile") + call("walk") + call("spawn_stdin")
    + agent(resp(3, {"stream": 1}), data(1, entry("/src", "src", "dir", 0))) + EOF
    + call("stat"),
    # every kind of call in one session, answered in order
    "session": call("spawn") + agent(spawned(2)) + call("processWait")
    + agent(data(1, b"x\n"), end(1), end(2), note("proc.exit", exit_map(1)), resp(3, exit_map(1)))
    + call("stat") + agent(resp(4, fileinfo())) + call("open")
    + agent(resp(5, {"fh": 7})) + call("fileRead") + agent(resp(6, {"data": b""}))
    + call("envToObject") + agent(resp(7, {"env": {}})),
}

# --- hostile agents ----------------------------------------------------------------------------

HOSTILE = {
    # records of the wrong type, or missing what libsbx or the method needs
    "stat_wrong_type": call("stat") + agent(resp(2, fileinfo(size="big"))),
    "stat_no_record": call("stat") + agent(resp(2, [1, 2])),
    "stat_extremes": call("stat")
    + agent(resp(2, fileinfo("weird\u00e9", atime_ns=-(1 << 63), mtime_ns=(1 << 63) - 1,
                             ctime_ns=-1, birthtime_ns=(1 << 63) - 1, size=(1 << 64) - 1,
                             mode=(1 << 64) - 1, ino=(1 << 63), uid=0xFFFFFFFF))),
    "readdir_bad_entry": call("readDir") + agent(resp(2, {"entries": [{"name": 5}], "cursor": 7})),
    "readdir_bad_cursor": call("readDir")
    + agent(resp(2, {"entries": [{"name": "a", "type": "file"}], "cursor": "x" * 600})),
    "readdir_nul": call("readDir")
    + agent(resp(2, {"entries": [{"name": b"a\x00b\xff", "type": b"fi\x00le"}],
                     "cursor": "c\x00d"})),
    "envget_types": call("envGet") + call("envToObject")
    + agent(resp(2, {"value": 42}), resp(3, {"env": {b"\xff\xfe": b"\x00v", 3: "x", "k": None}})),
    "umask_bad": call("umask") + call("fileSeek") + call("open") + call("fileWrite")
    + agent(resp(2, {"mask": 0o1777}), resp(3, {"position": -1}), resp(4, {"fh": 1 << 40}),
            resp(5, {"written": 99})),
    "fileread_types": call("fileRead") + call("fileRead") + call("fileRead")
    + agent(resp(2, {"data": "text"}), resp(3, {"data": None}), resp(4, {"data": b"\x00" * 300})),
    "readlink_bin": call("readLink") + call("realPath") + call("makeTempDir")
    + agent(resp(2, {"target": b"\xff\xc3"}), resp(3, {"path": None}), resp(4, {})),
    "errors_odd": call("stat") + call("chmod") + call("fileClose")
    + agent(err_resp(2, "ENOENT", Raw(b"no \xff such"), errno=2, path=Raw(b"/x\xff")),
            err_resp(3, Raw(b"E\xc3" * 40), "", errno=-7), err_resp(4, "NOT_FOUND", "fh")),
    # lengths far beyond the caps
    "read_huge": call("readFile") + agent(resp(2, {"stream": 1, "size": (1 << 64) - 1,
                                                   "mode": 0}), data(1, b"x")),
    "frame_huge": call("stat") + agent(b"\xff\xff\xff\xff"),
    "chunk_over": bytes([SMALL]) + call("readFile")
    + agent(resp(2, {"stream": 1, "size": 100, "mode": 0o644}), data(1, b"z" * 65),
            data(1, b"late")),
    "credit_over": bytes([SMALL]) + call("s_start") + call("spawn_stdin")
    + agent(spawned(2, sin=1, sout=2, serr=3)) + call("s_enqueue")
    + agent(credit(1, 0xFFFFFFFF), credit(1, 0xFFFFFFFF), data(1, b"wrong way"))
    + call("s_enqueue") + call("s_end"),
    "streams_over": bytes([SMALL]) + call("spawn") + call("spawn") + call("spawn")
    + call("spawn") + call("spawn")
    + agent(spawned(2, 1, 2, 3), spawned(3, 4, 5, 6), spawned(4, 7, 8, 9)),
    # answers for ids never sent, events for unknown streams
    "unknown_ids": call("stat") + agent(resp(99, fileinfo()), err_resp(77, "EIO", "x"),
                                        resp(0, OK), resp(1, OK), resp(2, fileinfo())),
    "unknown_streams": call("spawn")
    + agent(data(55, b"who"), end(56), scancel(57), credit(58, 10),
            note("transfer.done", {"stream": 59, "size": 1}),
            note("error", {"code": "BAD_MESSAGE", "message": "you"}),
            note("fs.event", {"watch": 1}), spawned(2), data(3, b"x"),
            frame(mp([0, 9, "proc.spawn", {}]))),
    "dup_streams": call("spawn") + call("readFile")
    + agent(spawned(2, sout=1, serr=1)),
    "stream_reuse": call("spawn") + call("readFile")
    + agent(spawned(2), resp(3, {"stream": 1, "size": 1, "mode": 0})),
    # proc.exit twice, data after end, end twice, cancel after end
    "exit_twice": call("spawn") + call("processWait")
    + agent(spawned(2), note("proc.exit", exit_map(1)), note("proc.exit", exit_map(1, 3)),
            resp(3, exit_map(1, signo=64)), resp(3, exit_map(1))),
    "data_after_end": call("readFile") + call("walk")
    + agent(resp(2, {"stream": 1, "size": 3, "mode": 0}), data(1, b"abc"), end(1),
            data(1, b"more"), end(1), resp(3, {"stream": 2}),
            data(2, entry("/src", "src", "dir", 0)), end(2), data(2, b"\x80"), scancel(2)),
    "read_cancelled": call("readFile") + call("readTextFile")
    + agent(resp(2, {"stream": 1, "size": 3, "mode": 0}), data(1, b"ab"),
            scancel(1, error={"code": "EIO", "message": "disk"}),
            resp(3, {"stream": 2, "size": 3, "mode": 0}), end(2, error={"code": "EIO"},
                                                               truncated=True)),
    "utf8_text": call("readTextFile")
    + agent(resp(2, {"stream": 1, "size": 9, "mode": 0}), data(1, b"\xe2\x82"),
            data(1, b"\xac\xff\xed\xa0\x80\x00\xf4\x90"), end(1)),
    # walk entries the walk cannot read
    "walk_bad": call("walk") + call("walk_follow") + call("expandGlob")
    + agent(resp(2, {"stream": 1}), resp(3, {"stream": 2}), resp(4, {"stream": 3}),
            data(1, entry("/src", "src", "dir", 0) + b"\xc1"),
            data(2, entry("/src/", "", "symlink", 0) + entry(b"/src/\xff", b"\xfe", "dir", 1)
                 + mp({"path": "/src/x", "name": "x", "type": "file", "depth": -1})),
            data(3, entry("/", "", "dir", 0) + mp([1]) + entry("/src/q.ts", "q.ts", "file", 9)),
            end(1), end(2), end(3)),
    "walk_skipped_root": call("walk_follow")
    + agent(resp(2, {"stream": 1}), data(1, entry("/src", "src", "symlink", 0)
                                         + entry("/src/node_modules/a", "a", "file", 5)), end(1)),
    "glob_missing": call("expandGlob") + call("expandGlob_literal")
    + agent(err_resp(2, "ENOENT", "gone"), err_resp(3, "ENOENT", "gone")),
    # the REPL's hostile answers
    "repl_hostile": REPL + call("denoReplEval") + call("denoReplEval") + call("denoReplCall")
    + agent(resp(4, {"value": 17, "error": False}),
            resp(5, {"value": '{"a":', "error": True, "error_text": 5}),
            resp(6, {"value": b"\"\xff\"", "truncated": True, "stdout": "not bin"}),
            resp(3, exit_map(1)), resp(3, exit_map(1))),
    "repl_no_proc": call("spawnDenoRepl") + agent(resp(2, {"session": 1}))
    + call("denoReplEval"),
    # denoHttpWait's ancestry with hostile reads: no data, no fh, a pid loop
    "httpwait_hostile": call("denoHttpWait")
    + agent(resp(2, {"procs": [{"id": 1, "pid": 100, "state": "running"}, 5]}),
            resp(3, {"sockets": [{"proto": "tcp", "addr": "::", "port": 1, "pid": 300},
                                 {"proto": "tcp", "addr": "::", "port": 2, "pid": 301}, 9]}),
            resp(4, {"fh": 1}), resp(5, {"eof": True}), resp(6, OK),
            resp(7, {"nofh": 1}),
            resp(8, {"sockets": "none"})),
    "httpwait_loop": call("denoHttpWait")
    + agent(resp(2, {"procs": [{"id": 1, "pid": 100, "state": "running"}]}),
            resp(3, {"sockets": [{"proto": "tcp", "addr": "::", "port": 1, "pid": 300}]}),
            resp(4, {"fh": 1}), resp(5, {"data": b"300 (x) S 300"}), resp(6, OK),
            resp(7, {"fh": 1}), resp(8, {"data": b"300 ) S 99999999999"}), resp(9, OK)),
    "spawndeno_code_hostile": call("spawnDeno_code")
    + agent(resp(2, {"path": b"/tmp/\xff"}), resp(3, {"fh": 1}), resp(4, {"written": 1}),
            resp(5, {"written": 0xFFFFFFFF}), resp(6, {"closed": 1}),
            spawned(7, sout=None, serr=None)),
    "spawn_no_stdin": call("s_start") + call("spawn_stdin") + agent(spawned(2, sin=None))
    + call("s_enqueue") + call("s_end"),
    "write_hostile": call("writeFile") + call("writeTextFile")
    + agent(resp(2, {"fh": "one"}), resp(3, {"fh": 2}), resp(4, {"written": 0})),
    "write_short": bytes([SMALL]) + call("fileWrite") + call("writeFile")
    + agent(resp(2, {"written": 4}), resp(3, {"fh": 1}), err_resp(4, "ENOSPC", "full"),
            resp(5, {"written": 2}), err_resp(6, "ENOSPC", "full"), resp(7, OK)),
    "agent_request": call("stat") + agent(frame(mp([0, 5, "fs.stat", {"path": "/"}])),
                                          frame(b"\x93\x02\xa5error\x80"), frame(b"\x91\x07")),
}

# Inputs of bugs this target found (kept whatever coverage they add; fixed where noted).
REGRESS = {
    # m_deno.c: an fs.read result without `data` in denoHttpWait's walk up /proc (NULL deref)
    "regress-httpwait-read-no-data": call("denoHttpWait")
    + agent(resp(2, {"procs": [{"id": 1, "pid": 100, "state": "running"}]}),
            resp(3, {"sockets": [{"proto": "tcp", "addr": "::", "port": 1, "pid": 200}]}),
            resp(4, {"fh": 1}), resp(5, {}), resp(6, OK)),
    # m_proc.c: proc.spawn answered without the stdin stream asked for (the pipe leaked)
    "regress-spawn-no-stdin": call("s_start") + call("spawn_stdin") + agent(spawned(2))
    + call("s_end"),
    # client/lib/conn.c: a result that breaks its record failed the connection after retiring
    # its request, which the EOF failures then never answered (the session outlived its client)
    "regress-bad-record-unanswered": call("stat") + agent(resp(2, {"type": "file"})),
    # m_deno.c: a REPL value that is not text showed uninitialized stack bytes in the error
    "regress-repl-value-not-text": REPL + call("denoReplEval") + agent(resp(4, {"value": 7})),
    # m_env.c: an env.list name with a NUL became an object key jansson cannot read back
    "regress-env-name-nul": call("envToObject") + agent(resp(2, {"env": {b"a\x00b": "v"}})),
    # m_deno.c: fs.mktemp's result without a path was answered as out of memory
    "regress-mktemp-no-path": call("spawnDeno_code") + agent(resp(2, {})),
    # walk.c: an entry's array32 header made msgpack-c allocate 2^32 objects (256 GiB)
    "regress-walk-entry-huge-array": call("walk")
    + agent(resp(2, {"stream": 1}), data(1, entry("/src", "src", "dir", 0)
                                         + b"\x81\xa4path\xdd\xff\xff\xff\xff")),
    # session.c: stream.end with an error answered readFile with the bytes before it
    "regress-end-with-error": call("readFile")
    + agent(resp(2, {"stream": 1, "size": 4, "mode": 0}), data(1, b"ab"),
            end(1, error={"code": "EIO", "message": "read"})),
}

# A few success seeds again with small limits and one-byte reads.
SMALL_AGAIN = ["spawn", "readFile", "walk", "writeFile", "fileWrite", "expandGlob"]


def main(out):
    os.makedirs(out, exist_ok=True)
    seeds = {}
    for name in CALLS:
        if name in ANSWERS:
            seeds["m_" + name] = b"\x00" + call(name) + ANSWERS[name]
    for name in SMALL_AGAIN:
        seeds["small_" + name] = bytes([SMALL | 1]) + call(name) + ANSWERS[name]
    for name, body in list(SEQUENCES.items()) + list(HOSTILE.items()) + list(REGRESS.items()):
        seeds[name] = body if body[:1] == bytes([SMALL]) else b"\x00" + body
    for name, body in seeds.items():
        assert len(body) <= 65536, name
        with open(os.path.join(out, name), "wb") as f:
            f.write(body)
    print("%d seeds in %s" % (len(seeds), out))


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "corpus", "gw_agent"))
