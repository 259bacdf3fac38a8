#!/usr/bin/env python3
"""Conformance: which error wins (PROTOCOL.md §7.2, paragraph "Which error wins").

A request is checked in this order: envelope, hello, max_pending, method known, then every
param's presence, type and range (BAD_PARAM), and only then the objects the params name
(NOT_FOUND), their state and caps (LIMIT), then the operation (errno codes). So a request that
names an unknown id *and* has a bad param gets BAD_PARAM, and a cap or a missing file never hides
a bad param.

Run from this directory: python3 -m unittest test_precedence -v (SBX_BUILD picks the build).
"""
import os
import unittest

from conf import AgentCase, w  # noqa: E402

UNKNOWN = 999999  # a u32 no process, session, handle or watch of a fresh agent has
CURSOR = "c999999"  # a readdir cursor this connection never got
I64_MAX = 2**63 - 1

# Every method of agent/dispatch.c that takes an object id: the id's key and an unknown value.
IDS = {
    "proc.wait": ("id", UNKNOWN),
    "proc.kill": ("id", UNKNOWN),
    "proc.close_stdin": ("id", UNKNOWN),
    "proc.release": ("id", UNKNOWN),
    "proc.resize": ("id", UNKNOWN),
    "repl.eval": ("session", UNKNOWN),
    "repl.close": ("session", UNKNOWN),
    "fs.readdir": ("cursor", CURSOR),
    "fs.unwatch": ("watch", UNKNOWN),
    "fs.read": ("fh", UNKNOWN),
    "fs.write": ("fh", UNKNOWN),
    "fs.seek": ("fh", UNKNOWN),
    "fs.fstat": ("fh", UNKNOWN),
    "fs.fsync": ("fh", UNKNOWN),
    "fs.ftruncate": ("fh", UNKNOWN),
    "fs.close": ("fh", UNKNOWN),
    "fs.futimes": ("fh", UNKNOWN),
    "fs.flock": ("fh", UNKNOWN),
    "fs.funlock": ("fh", UNKNOWN),
}

# The other params each method needs to be otherwise valid (so that the answer is NOT_FOUND).
GOOD = {
    "proc.resize": {"rows": 24, "cols": 80},
    "repl.eval": {"code": "1"},
    "fs.read": {"len": 1},
    "fs.write": {"data": b"x"},
    "fs.seek": {"offset": 0},
    "fs.flock": {"exclusive": True},
}

# (method, params that replace or add to GOOD[method], field named by BAD_PARAM). Every bad value
# is out of range or of the wrong type per PROTOCOL.md's tables; with the bad key restored to its
# GOOD value (or removed when optional) the same request must be NOT_FOUND.
BAD = [
    ("proc.wait", {"timeout_ms": 0}, "timeout_ms"),  # §14.4: 1 .. 2^32-1
    ("proc.wait", {"timeout_ms": 2**32}, "timeout_ms"),
    ("proc.wait", {"timeout_ms": "1"}, "timeout_ms"),
    ("proc.kill", {"signal": "NOSUCH"}, "signal"),  # §14.5
    ("proc.kill", {"signal": 65}, "signal"),
    ("proc.kill", {"signal": 0}, "signal"),
    ("proc.kill", {"group": "yes"}, "group"),
    ("proc.resize", {"rows": 0}, "rows"),  # §15.2: 1 .. 65535
    ("proc.resize", {"cols": 65536}, "cols"),
    ("proc.resize", {"rows": "24"}, "rows"),
    ("proc.resize", {"rows": None}, "rows"),  # required: missing
    ("repl.eval", {"code": 1}, "code"),  # §16.3
    ("repl.eval", {"code": None}, "code"),
    ("repl.eval", {"timeout_ms": 0}, "timeout_ms"),
    ("repl.eval", {"stream": "yes"}, "stream"),
    ("repl.eval", {"format": "xml"}, "format"),  # §16.3: "text" or "json"
    ("repl.eval", {"format": 1}, "format"),
    ("fs.readdir", {"limit": 0}, "limit"),  # §17.3: 1..8192
    ("fs.readdir", {"limit": 8193}, "limit"),
    ("fs.readdir", {"limit": "1"}, "limit"),
    ("fs.read", {"len": 0}, "len"),  # §17.7: len >= 1, offset <= 2^63-1
    ("fs.read", {"len": "1"}, "len"),
    ("fs.read", {"len": None}, "len"),
    ("fs.read", {"offset": -1}, "offset"),
    ("fs.read", {"offset": I64_MAX + 1}, "offset"),
    ("fs.write", {"data": b""}, "data"),  # 1 .. chunk_max bytes
    ("fs.write", {"data": "x"}, "data"),  # bin, not str
    ("fs.write", {"data": None}, "data"),
    ("fs.write", {"offset": -1}, "offset"),
    ("fs.write", {"offset": I64_MAX + 1}, "offset"),
    ("fs.seek", {"offset": "0"}, "offset"),
    ("fs.seek", {"offset": None}, "offset"),
    ("fs.seek", {"whence": "middle"}, "whence"),
    ("fs.seek", {"whence": 1}, "whence"),
    ("fs.fsync", {"data_only": "yes"}, "data_only"),
    ("fs.ftruncate", {"size": -1}, "size"),
    ("fs.ftruncate", {"size": I64_MAX + 1}, "size"),
    ("fs.ftruncate", {"size": "0"}, "size"),
    ("fs.futimes", {"atime_ns": "0"}, "atime_ns"),  # §17.7: int
    ("fs.futimes", {"mtime_ns": 2**63}, "mtime_ns"),
    ("fs.flock", {"exclusive": None}, "exclusive"),  # required
    ("fs.flock", {"exclusive": "yes"}, "exclusive"),
    ("fs.flock", {"wait": 1}, "wait"),
]


def params_with(method, override, idval=None):
    """GOOD[method] with @override applied (a None value removes the key), plus the id."""
    key, unknown = IDS[method]
    p = dict(GOOD.get(method, {}))
    p[key] = unknown if idval is None else idval
    for k, v in override.items():
        if v is None:
            p.pop(k, None)
        else:
            p[k] = v
    return p


class TestS7Precedence(AgentCase):
    """§7.2 "Which error wins": params before objects, objects and caps before the operation."""

    def answer(self, method, params):
        """(code, field) of the error @method @params gets; (None, None) if it succeeds."""
        try:
            self.conn.call(method, params)
        except w.RemoteError as e:
            return e.err.get("code"), e.err.get("field")
        return None, None

    def check_methods(self, *methods):
        """The table rows of @methods: a bad param wins over an unknown id; with the param
        corrected the same request is NOT_FOUND; a wrong-typed, out-of-range or missing id itself
        is BAD_PARAM naming it."""
        for method, bad, field in BAD:
            if method not in methods:
                continue
            with self.subTest(method=method, bad=bad):
                self.assertEqual(self.answer(method, params_with(method, bad)),
                                 ("BAD_PARAM", field))
                good = {k: GOOD.get(method, {}).get(k) for k in bad}
                self.assertEqual(self.answer(method, params_with(method, good))[0], "NOT_FOUND")
        for method in methods:
            key, _ = IDS[method]
            with self.subTest(method=method, id="unknown"):
                self.assertEqual(self.answer(method, params_with(method, {}))[0], "NOT_FOUND")
            wrong = [5 if key == "cursor" else "1", [1]]
            if key != "cursor":
                wrong += [-1, 2**32]  # u32
            for v in wrong:
                with self.subTest(method=method, id=v):
                    self.assertEqual(self.answer(method, params_with(method, {}, idval=v)),
                                     ("BAD_PARAM", key))
            if key == "cursor":
                continue  # without a cursor, fs.readdir reads path (then required)
            with self.subTest(method=method, id="missing"):
                self.assertEqual(self.answer(method, params_with(method, {key: None})),
                                 ("BAD_PARAM", key))

    def test_proc_bad_param_wins_over_unknown_id(self):
        """§7.2 with §14.4-§14.7, §15.2."""
        self.check_methods("proc.wait", "proc.kill", "proc.close_stdin", "proc.release",
                           "proc.resize")

    def test_repl_bad_param_wins_over_unknown_session(self):
        """§7.2 with §16.3, §16.4."""
        self.check_methods("repl.eval", "repl.close")

    def test_fs_handle_bad_param_wins_over_unknown_fh(self):
        """§7.2 with §17.7: every file-handle method."""
        self.check_methods("fs.read", "fs.write", "fs.seek", "fs.fstat", "fs.fsync",
                           "fs.ftruncate", "fs.close", "fs.futimes", "fs.flock", "fs.funlock")

    def test_fs_unwatch_unknown_watch(self):
        """§7.2 with §17.6: fs.unwatch's only param is the watch id."""
        self.check_methods("fs.unwatch")

    def test_fs_readdir_bad_param_wins_over_unknown_cursor(self):
        """§7.2 with §17.3: a bad limit wins over an unknown cursor. With a cursor, path is not
        looked at (not even checked): an unknown cursor is NOT_FOUND whatever path says."""
        self.check_methods("fs.readdir")
        for path in (5, "", b"/nonexistent", [1]):
            with self.subTest(path=path):
                self.assertEqual(self.answer("fs.readdir", {"cursor": CURSOR, "path": path})[0],
                                 "NOT_FOUND")
        self.assertEqual(self.answer("fs.readdir", {"cursor": CURSOR, "path": 5, "limit": 0}),
                         ("BAD_PARAM", "limit"))

    def test_table_covers_every_id_method(self):
        """Every method with an object id has a row, and every row names such a method."""
        self.assertEqual({m for m, _, _ in BAD} - set(IDS), set())
        self.assertEqual(set(IDS) - {m for m, _, _ in BAD},
                         {"proc.close_stdin", "proc.release", "repl.close", "fs.unwatch",
                          "fs.fstat", "fs.close", "fs.funlock"})  # their only param is the id

    def limits(self):
        c = self.agent.connect(hello=False)
        try:
            return c.hello()["limits"]
        finally:
            c.close()

    def test_caps_checked_after_params(self):
        """§7.2: at a cap, a request with a bad param is still BAD_PARAM; a valid one is LIMIT
        (max_handles §17.7, max_cursors §17.3, max_watches §17.6, max_packs §19.1)."""
        lim = self.limits()
        f = os.path.join(self.tmp, "f")
        d = os.path.join(self.tmp, "d")
        os.mkdir(d)
        for n in ("a", "b"):
            open(os.path.join(d, n), "w").close()
        open(f, "w").close()
        # max_handles
        for _ in range(lim.get("max_handles", 1024)):
            self.conn.call("fs.open", {"path": f})
        self.assertEqual(self.answer("fs.open", {"path": f, "mode": 0o10000}),
                         ("BAD_PARAM", "mode"))
        self.assertEqual(self.answer("fs.open", {"path": f, "flags": ["nosuch"]}),
                         ("BAD_PARAM", "flags[0]"))
        self.assertEqual(self.answer("fs.open", {"path": f})[0], "LIMIT")
        # max_cursors
        for _ in range(lim.get("max_cursors", 64)):
            self.assertIsNotNone(self.conn.call("fs.readdir", {"path": d, "limit": 1})["cursor"])
        self.assertEqual(self.answer("fs.readdir", {"path": d, "limit": 0}), ("BAD_PARAM", "limit"))
        self.assertEqual(self.answer("fs.readdir", {"path": 5}), ("BAD_PARAM", "path"))
        self.assertEqual(self.answer("fs.readdir", {"path": d})[0], "LIMIT")
        # max_watches
        for _ in range(lim.get("max_watches", 64)):
            self.conn.call("fs.watch", {"path": d})
        self.assertEqual(self.answer("fs.watch", {"path": d, "recursive": "yes"}),
                         ("BAD_PARAM", "recursive"))
        self.assertEqual(self.answer("fs.watch", {"path": d})[0], "LIMIT")
        # max_packs: jobs whose build keeps them running
        jobs = [self.conn.call("pack.create", {"path": d, "format": "tar.gz",
                                                "build": {"command": "exec sleep 60"}})
                for _ in range(lim.get("max_packs", 4))]
        try:
            self.assertEqual(self.answer("pack.create", {"path": d, "format": "zip"}),
                             ("BAD_PARAM", "format"))
            self.assertEqual(self.answer("pack.create", {"path": d, "format": "tar.gz",
                                                         "build": {"argv": []}}),
                             ("BAD_PARAM", "build.argv"))
            self.assertEqual(self.answer("pack.create", {"path": d, "format": "tar.gz"})[0],
                             "LIMIT")
        finally:
            self.cancel_packs(jobs)

    def cancel_packs(self, jobs):
        """Cancel pack jobs: the agent kills their builds and ends their build streams (§19.2).
        Waited for, so that no build outlives the test (tearDown stops the agent at once)."""
        for j in jobs:
            self.conn.send([2, "stream.cancel", {"stream": j["archive"]}])
        for j in jobs:
            for sid in (j["build_stdout"], j["build_stderr"]):
                self.conn.wait_for(lambda m, sid=sid: m[0] == 2 and m[1] == "stream.end"
                                   and m[2]["stream"] == sid, "end of build stream %d" % sid)

    def test_stream_cap_before_the_file_system(self):
        """§7.2: max_streams is a cap, checked after the params and before the operation: with
        every stream in use, a stream-making request whose path fails on disk is LIMIT, and one
        with a bad param is still BAD_PARAM."""
        missing = os.path.join(self.tmp, "missing")
        f = os.path.join(self.tmp, "f")
        open(f, "w").close()
        table = [  # method, params that fail on disk, a bad param added, its field
            ("fs.walk", {"path": missing}, {"max_depth": -1}, "max_depth"),
            ("fs.glob", {"pattern": "*", "root": missing}, {"include_dirs": "yes"}, "include_dirs"),
            ("transfer.upload", {"path": os.path.join(missing, "f")}, {"mode": 0o10000}, "mode"),
            ("transfer.download", {"path": missing}, {"offset": -1}, "offset"),
            ("transfer.upload_tree", {"path": os.path.join(f, "d")}, {"compress": "lz4"},
             "compress"),
            ("transfer.download_tree", {"path": missing}, {"compress": "lz4"}, "compress"),
            ("pack.create", {"path": missing, "format": "tar.gz"}, {"format": "zip"}, "format"),
        ]
        for method, params, _, _ in table:
            with self.subTest(method=method, streams="free"):
                self.assertIn(self.answer(method, params)[0], ("ENOENT", "ENOTDIR"))
        n = self.limits()["max_streams"]
        first = self.conn.next_id
        self.conn.send_raw(b"".join(
            w.frame(w.pack([0, first + i, "transfer.upload",
                            {"path": os.path.join(self.tmp, "u%d" % i)}])) for i in range(n)))
        self.conn.next_id = first + n
        for i in range(n):
            self.conn.wait(first + i)
        for method, params, bad, field in table:
            with self.subTest(method=method, streams="all in use"):
                self.assertEqual(self.answer(method, params)[0], "LIMIT")
                self.assertEqual(self.answer(method, dict(params, **bad)), ("BAD_PARAM", field))

    def test_pack_params_before_the_file_system(self):
        """§7.2 with §19.1, §19.3: every pack.create param (the build map's too) is checked
        before the pack root is looked at, so a missing root does not hide a bad param."""
        missing = os.path.join(self.tmp, "missing")
        base = {"path": missing, "format": "tar.gz"}
        for extra, field in [
            ({"build": {"argv": []}}, "build.argv"),
            ({"build": {"argv": ["true", 5]}}, "build.argv[1]"),
            ({"build": {"cwd": "/"}}, "build"),  # needs argv or command
            ({"build": {"command": "true", "env": {"A=B": "x"}}}, "build.env"),
            ({"exclude": ["*" * 17]}, "exclude[0]"),  # §19.3, §7.5: at most 16 '*'
            ({"ignore_files": ["a/b"]}, "ignore_files"),
            ({"entrypoint": "/abs"}, "entrypoint"),
            ({"format": "zip"}, "format"),
        ]:
            with self.subTest(extra=extra):
                self.assertEqual(self.answer("pack.create", dict(base, **extra)),
                                 ("BAD_PARAM", field))
        self.assertEqual(self.answer("pack.create", base)[0], "ENOENT")


if __name__ == "__main__":
    unittest.main()
