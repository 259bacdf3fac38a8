#!/usr/bin/env python3
"""Conformance: the agent does what protocol/PROTOCOL.md says, section by section.

Each class is named for the section it checks (TestS6Hello checks §6) and each test's docstring
names the paragraph. Every frame the agent sends is decoded by sbxwire's strict client, which
fails on invalid UTF-8 in a str, on a message shape §5 does not allow and on a frame order §8/§9
forbid, so every test here also checks those rules on whatever the agent sends it.

PROTOCOL.md Appendix C lists which tests cover which section.
"""
import os
import time
import unittest

from conf import AGENT, AgentCase, map_raw, raw_str, request_raw, w


class TestS3Framing(AgentCase):
    def nested(self, depth_of_innermost, empty):
        """ping whose params hold arrays nested so that the innermost container has the given
        depth (§4.1: the message array is depth 1, params depth 2)."""
        inner = [] if empty else [1]
        for _ in range(depth_of_innermost - 3):
            inner = [inner]
        return {"x": inner}

    def test_empty_container_at_depth_33_gets_addressed_bad_message(self):
        """§3.3 rule 3 and §4.1: an empty container counts for depth; the request id is readable,
        so the answer is a BAD_MESSAGE response to it, never INTERNAL out-of-memory."""
        for empty in (True, False):
            rid = self.conn.request("ping", self.nested(33, empty))
            m = self.response(rid)
            self.assertEqual(m[2]["code"], "BAD_MESSAGE", m)
            self.assertIn("nesting", m[2]["message"])
        # Depth 32 is allowed, empty or not.
        for empty in (True, False):
            self.assertEqual(self.conn.call("ping", self.nested(32, empty)), {})

    def test_wrong_arity_request_with_readable_id_gets_response(self):
        """§3.3: a request whose id can be read is answered with an error response to that id,
        also when the array has the wrong number of elements (5, or 2), in any array header."""
        self.conn.send_raw(w.frame(w.pack([0, 21, "ping", {}, 1])))
        m = self.response(21)
        self.assertEqual(m[2]["code"], "BAD_MESSAGE")
        self.assertIsNone(m[3])
        self.conn.send_raw(w.frame(w.pack([0, 22])))
        self.assertEqual(self.response(22)[2]["code"], "BAD_MESSAGE")
        # array16 header announcing 5 elements
        body = b"\xdc\x00\x05" + b"".join(w.pack(x) for x in [0, 23, "ping", {}, 1])
        self.conn.send_raw(w.frame(body))
        self.assertEqual(self.response(23)[2]["code"], "BAD_MESSAGE")
        self.assertEqual(self.conn.call("ping"), {})

    def test_unreadable_id_gets_error_notification(self):
        """§3.3: without a readable id the receiver sends an error notification."""
        self.conn.send_raw(w.frame(w.pack([0, -1, "ping", {}])))
        m = self.conn.wait_for(lambda m: m[0] == 2 and m[1] == "error", "error notification")
        self.assertEqual(m[2]["code"], "BAD_MESSAGE")
        self.assertEqual(self.conn.call("ping"), {})


class TestS4Strings(AgentCase):
    def test_error_message_quoting_non_utf8_path_is_utf8(self):
        """§4.4: human-readable text is valid UTF-8 (U+FFFD for bad bytes); the path itself is a
        bstr, sent as bin because it is not UTF-8. sbxwire rejects an invalid str outright."""
        bad = os.fsencode(self.tmp) + b"/\xff\xfe-missing"
        e = self.err("fs.stat", {"path": bad})
        self.assertEqual(e["code"], "ENOENT")
        self.assertIn("\ufffd", e["message"])
        self.assertEqual(e["path"], bad)
        self.assertIsInstance(e["path"], bytes)

    def test_peer_str_with_invalid_utf8_comes_back_valid(self):
        """§4.4: a str the client sent with invalid UTF-8 (a tag) is never echoed as invalid
        UTF-8: every str the agent sends is UTF-8."""
        params = map_raw([("argv", w.pack(["true"])), ("stdout", w.pack("null")),
                          ("stderr", w.pack("null")), ("tag", raw_str(b"t\xff\xc3"))])
        self.conn.send_raw(request_raw(900, "proc.spawn", params))
        m = self.response(900)
        self.assertIsNone(m[2], m)
        self.conn.call("proc.wait", {"id": m[3]["id"]})
        procs = self.conn.call("proc.list")["procs"]
        self.assertEqual([p["tag"] for p in procs if p["id"] == m[3]["id"]], ["t\ufffd\ufffd"])

    def test_long_message_cut_inside_a_character_stays_utf8(self):
        """§4.4, §7.1: a message cut to its size limit inside a multi-byte character is still
        valid UTF-8."""
        name = ("é" * 300).encode()
        e = self.err("fs.stat", {"path": os.fsencode(self.tmp) + b"/" + name[:251]})
        self.assertEqual(e["code"], "ENOENT")
        self.assertLessEqual(len(e["message"].encode()), 1024)


class TestS5Messages(AgentCase):
    def test_max_pending(self):
        """§5.1: at most 4096 outstanding requests per connection; one more is answered at once
        with LIMIT max_pending; once answered, requests are accepted again."""
        r = self.conn.call("proc.spawn", {"argv": ["sleep", "60"], "stdout": "null",
                                          "stderr": "null"})
        first = self.conn.next_id
        self.conn.send_raw(b"".join(
            w.frame(w.pack([0, first + i, "proc.wait", {"id": r["id"]}])) for i in range(4097)))
        self.conn.next_id = first + 4097
        m = self.response(first + 4096)
        self.assertEqual(m[2]["code"], "LIMIT", m)
        self.assertEqual(m[2]["limit"], "max_pending")
        self.assertEqual(m[2]["max"], 4096)
        e = self.err("ping")
        self.assertEqual(e["limit"], "max_pending")
        # The waits are still outstanding; another connection ends them.
        other = self.agent.connect()
        other.call("proc.kill", {"id": r["id"], "signal": "KILL"})
        other.close()
        seen = set()
        while len(seen) < 4096:
            m = self.conn.wait_for(lambda m: m[0] == 1 and first <= m[1] < first + 4096,
                                   "proc.wait responses")
            self.assertIsNone(m[2], m)
            seen.add(m[1])
        self.assertEqual(self.conn.call("ping"), {})

    def test_response_from_client_gets_error_notification(self):
        """§5.2: a kind-1 message from a client gets a BAD_MESSAGE notification."""
        self.conn.send([1, 5, None, {}])
        m = self.conn.wait_for(lambda m: m[0] == 2 and m[1] == "error", "error notification")
        self.assertEqual(m[2]["code"], "BAD_MESSAGE")


class TestS2Connections(unittest.TestCase):
    def setUp(self):
        self.agent = w.Agent(AGENT)
        self.conns = []

    def tearDown(self):
        for c in self.conns:
            c.close()
        self.agent.finish(self, None)

    def test_max_conns(self):
        """§2.1, §6.4, §7.2: max_conns connections as announced are all usable; the next gets an
        error notification LIMIT max_conns and is then closed."""
        first = self.agent.connect(hello=False)
        self.conns.append(first)
        limit = first.hello()["limits"]["max_conns"]
        for _ in range(limit - 1):
            c = self.agent.connect()
            self.conns.append(c)
        self.assertEqual(first.call("info")["conns"], limit)
        extra = w.Conn(self.agent.addr)
        self.conns.append(extra)
        m = extra.recv()
        self.assertIsNotNone(m, "closed without the LIMIT notification")
        self.assertEqual(m[:2], [2, "error"])
        self.assertEqual(m[2]["code"], "LIMIT")
        self.assertEqual(m[2]["limit"], "max_conns")
        self.assertEqual(m[2]["max"], limit)
        self.assertIsNone(extra.recv(), "the refused connection stays open")
        # One closes, a new one is accepted.
        self.conns.pop(1).close()
        deadline = time.time() + 10
        while first.call("info")["conns"] != limit - 1 and time.time() < deadline:
            time.sleep(0.01)
        c = self.agent.connect()
        self.conns.append(c)
        self.assertEqual(c.call("ping"), {})


class TestS6Hello(AgentCase):
    HELLO = False

    def test_version_error_carries_range(self):
        """§6.3, §7.1: VERSION carries min and max, and the message names both ranges."""
        e = self.err("hello", {"version": 3, "min_version": 2})
        self.assertEqual(e["code"], "VERSION")
        self.assertEqual((e["min"], e["max"]), (1, 1))
        self.assertEqual(e["message"], "client speaks 2..3, agent speaks 1..1")
        # §6.1: a failed hello does not count.
        self.assertEqual(self.conn.hello()["version"], 1)

    def test_version_zero(self):
        """§6.2, §6.3: versions start at 1; {version: 0} is VERSION (min_version defaults to
        version when that is below 1), not BAD_PARAM."""
        for p in ({"version": 0}, {"version": 0, "min_version": 0}):
            e = self.err("hello", p)
            self.assertEqual(e["code"], "VERSION", p)
            self.assertEqual((e["min"], e["max"]), (1, 1))
        self.assertEqual(self.conn.hello()["version"], 1)

    def test_uint_ranges(self):
        """§6.2, §1.2: version and min_version are uints: any value is accepted."""
        r = self.conn.call("hello", {"version": 2**32})
        self.assertEqual(r["version"], 1)
        c = self.agent.connect(hello=False)
        try:
            self.assertEqual(c.call("hello", {"version": 1, "min_version": 0})["version"], 1)
            c2 = self.agent.connect(hello=False)
            self.assertEqual(c2.call("hello", {"version": 2**64 - 1})["version"], 1)
            c2.close()
        finally:
            c.close()

    def test_param_limits(self):
        """§6.2, §23: client ≤ 256 bytes and a str; capabilities a [str] of ≤ 64 entries, each
        ≤ 64 bytes. Each violation is BAD_PARAM naming the field; the connection stays usable."""
        cases = [
            ({"client": "c" * 257}, "client"),
            ({"client": 5}, "client"),
            ({"capabilities": ["x"] * 65}, "capabilities"),
            ({"capabilities": ["x" * 65]}, "capabilities[0]"),
            ({"capabilities": ["ok", 7]}, "capabilities[1]"),
            ({"capabilities": "x"}, "capabilities"),
            ({"min_version": 2}, "min_version"),
        ]
        for extra, field in cases:
            p = {"version": 1}
            p.update(extra)
            e = self.err("hello", p)
            self.assertEqual((e["code"], e.get("field")), ("BAD_PARAM", field), p)
        ok = {"version": 1, "client": "c" * 256, "capabilities": ["y" * 64] * 64}
        self.assertEqual(self.conn.call("hello", ok)["version"], 1)

    def test_recv_window_limits(self):
        """§6.2: recv_window is a uint from 65536 to stream_window; anything else is BAD_PARAM
        naming it, and that hello does not count (§6.1). §6.4: the result echoes it, and has no
        recv_window when hello asked none."""
        for bad in (65535, 4096, 0, (1 << 20) + 1, 1 << 40, -1, "65536", 65536.0):
            e = self.err("hello", {"version": 1, "recv_window": bad})
            self.assertEqual((e["code"], e.get("field")), ("BAD_PARAM", "recv_window"), bad)
        self.assertEqual(self.conn.hello(recv_window=65536)["recv_window"], 65536)
        c = self.agent.connect(hello=False)
        try:
            r = c.hello(recv_window=1 << 20)
            self.assertEqual(r["recv_window"], r["limits"]["stream_window"])
        finally:
            c.close()
        c = self.agent.connect(hello=False)
        try:
            self.assertNotIn("recv_window", c.hello())
        finally:
            c.close()

    def test_recv_window_is_the_credit_of_out_streams(self):
        """§6.2, §8.3: an out stream starts with the recv_window hello set, not stream_window
        (in streams keep stream_window); grants go on from there. The strict client counts
        the credit and fails on any byte beyond it."""
        n = 1 << 20
        r = self.conn.hello(recv_window=65536)
        self.assertEqual(r["limits"]["stream_window"], n)
        sp = self.conn.call("proc.spawn", {"argv": ["head", "-c", str(n), "/dev/zero"]})
        got = 0
        while got < 65536:
            m = self.conn.recv()
            if m[0] == 3 and m[1] == sp["stdout"]:
                got += len(m[2])
        # Nothing more without credit: once the process had time to fill its pipe, a ping's
        # answer is all that arrives.
        time.sleep(1)
        rid = self.conn.request("ping")
        while True:
            m = self.conn.recv()
            self.assertNotEqual(m[0], 3, "data beyond the 64 KiB window")
            if m[0] == 1 and m[1] == rid:
                break
        self.assertEqual(got, 65536)
        consumed, ex = got, None
        while ex is None or got < n:
            if consumed >= 32768:
                self.conn.credit(sp["stdout"], consumed)
                consumed = 0
            m = self.conn.recv()
            if m[0] == 3 and m[1] == sp["stdout"]:
                got += len(m[2])
                consumed += len(m[2])
            elif m[0] == 2 and m[1] == "proc.exit":
                ex = m[2]
        self.assertEqual((got, ex["code"]), (n, 0))

    def test_second_hello(self):
        """§6.1: a second hello is BAD_MESSAGE "hello already done"; the session is unchanged."""
        self.conn.hello()
        e = self.err("hello", {"version": 1})
        self.assertEqual(e["code"], "BAD_MESSAGE")
        self.assertEqual(self.conn.call("ping"), {})


class TestS7Errors(AgentCase):
    def test_bad_param_wins_over_not_found(self):
        """§7.2: params are checked before any id is looked up, so a request that both names an
        unknown id and has a bad param gets BAD_PARAM."""
        for method, params, field in [
            ("proc.wait", {"id": 999999, "timeout_ms": 0}, "timeout_ms"),
            ("proc.kill", {"id": 999999, "signal": "NOSUCH"}, "signal"),
            ("proc.resize", {"id": 999999, "rows": 0, "cols": 80}, "rows"),
        ]:
            e = self.err(method, params)
            self.assertEqual((e["code"], e.get("field")), ("BAD_PARAM", field), method)
            params = dict(params)
            params.pop(field)
            if method == "proc.resize":
                params["rows"] = 24
            self.assertEqual(self.err(method, params)["code"], "NOT_FOUND", method)

    def test_field_path_names_array_element(self):
        """§7.5: a bad array element is named with its index."""
        e = self.err("proc.spawn", {"argv": ["echo", 5]})
        self.assertEqual((e["code"], e["field"]), ("BAD_PARAM", "argv[1]"))
        e = self.err("proc.spawn", {"argv": ["echo", "a\0b"]})
        self.assertEqual(e["field"], "argv[1]")

    def test_limit_carries_limit_and_max(self):
        """§7.1: LIMIT carries limit and, for a numeric cap, max."""
        e = self.err("fs.write", {"fh": 1, "data": b"x"})  # NOT_FOUND first: no such handle
        self.assertEqual(e["code"], "NOT_FOUND")
        fh = self.conn.call("fs.open", {"path": os.path.join(self.tmp, "f"),
                                        "flags": ["write", "create"]})["fh"]
        e = self.err("fs.write", {"fh": fh, "data": b"x" * (256 * 1024 + 1)})
        self.assertEqual((e["code"], e["limit"], e["max"]), ("LIMIT", "chunk_max", 262144))


class TestS8Streams(AgentCase):
    def test_spawn_needing_more_streams_than_left_creates_nothing(self):
        """§8.1, §14.2: a request that would exceed max_streams fails with LIMIT and creates no
        stream and no process; one that fits still succeeds and gets the next ids."""
        c = self.agent.connect(hello=False)
        lim = c.hello()["limits"]["max_streams"]
        c.close()
        first = self.conn.next_id
        n = lim - 2
        self.conn.send_raw(b"".join(
            w.frame(w.pack([0, first + i, "transfer.upload",
                            {"path": os.path.join(self.tmp, "u%d" % i)}])) for i in range(n)))
        self.conn.next_id = first + n
        last = 0
        for i in range(n):
            m = self.response(first + i)
            self.assertIsNone(m[2], m)
            last = max(last, m[3]["stream"])
        self.assertEqual(last, n)
        before = len(self.conn.call("proc.list")["procs"])
        e = self.err("proc.spawn", {"argv": ["cat"], "stdin": "pipe"})
        self.assertEqual((e["code"], e["limit"], e["max"]), ("LIMIT", "max_streams", lim))
        self.assertEqual(len(self.conn.call("proc.list")["procs"]), before)
        r = self.conn.call("proc.spawn", {"argv": ["true"]})
        self.assertEqual((r["stdout"], r["stderr"]), (n + 1, n + 2))
        self.conn.call("proc.wait", {"id": r["id"]})

    def test_client_cancel_of_stdin_gives_eof(self):
        """§8.5: the client's stream.cancel on stdin finishes the stream and closes the child's
        stdin after the data already received, so `cat` sees EOF and exits."""
        r = self.conn.call("proc.spawn", {"argv": ["cat"], "stdin": "pipe"})
        self.conn.data(r["stdin"], b"before cancel\n")
        self.conn.send([2, "stream.cancel", {"stream": r["stdin"]}])
        ex = self.conn.call("proc.wait", {"id": r["id"], "timeout_ms": 20000})
        self.assertEqual(ex["code"], 0)
        out = b""
        while True:
            m = self.conn.recv()
            if m[0] == 3 and m[1] == r["stdout"]:
                out += m[2]
            if m[0] == 2 and m[1] == "proc.exit":
                break
        self.assertEqual(out, b"before cancel\n")

    def test_misuse_of_stdin_gives_eof(self):
        """§8.6: when the agent cancels stdin for misuse (a zero-length data message), the child's
        stdin is closed after the data accepted before it: `cat` prints that and exits."""
        r = self.conn.call("proc.spawn", {"argv": ["cat"], "stdin": "pipe"})
        self.conn.data(r["stdin"], b"accepted\n")
        self.conn.send_raw(w.frame(b"\x93\x03" + w.pack(r["stdin"]) + b"\xc4\x00"))
        m = self.conn.wait_for(lambda m: m[0] == 2 and m[1] == "stream.cancel", "cancel")
        self.assertEqual((m[2]["stream"], m[2]["error"]["code"]), (r["stdin"], "STREAM"))
        ex = self.conn.call("proc.wait", {"id": r["id"], "timeout_ms": 20000})
        self.assertEqual(ex["code"], 0)
        out = b"".join(m[2] for m in self.conn.pending if m[0] == 3 and m[1] == r["stdout"])
        self.assertEqual(out, b"accepted\n")

    def test_client_cancel_of_pty_input_keeps_terminal(self):
        """§8.5, §15.1: cancelling PTY input finishes the stream only; the terminal stays open
        and the process keeps running until it is told to stop."""
        r = self.conn.call("proc.spawn", {"argv": ["sh", "-c", "sleep 0.3; echo alive"],
                                          "pty": {"rows": 24, "cols": 80}})
        self.conn.send([2, "stream.cancel", {"stream": r["stdin"]}])
        ex = self.conn.call("proc.wait", {"id": r["id"], "timeout_ms": 20000})
        self.assertEqual(ex["code"], 0)

    def test_zero_length_data_on_upload_transfer_done_last(self):
        """§8.6, §18.1, §18.5: misuse of an upload stream: stream.cancel STREAM, then
        transfer.done, which is the last frame about the upload."""
        dst = os.path.join(self.tmp, "z")
        sid = self.conn.call("transfer.upload", {"path": dst})["stream"]
        self.conn.send_raw(w.frame(b"\x93\x03" + w.pack(sid) + b"\xc4\x00"))
        got = []
        while True:
            m = self.conn.wait_for(lambda m: m[0] == 2 and m[2].get("stream") == sid
                                   and m[1] in ("stream.cancel", "transfer.done"), "upload end")
            got.append(m[1])
            if m[1] == "transfer.done":
                break
        self.assertEqual(got, ["stream.cancel", "transfer.done"])
        self.assertEqual(self.conn.call("ping"), {})  # nothing more about sid before this
        self.assertFalse(os.path.exists(dst))


class TestS14Process(AgentCase):
    def test_default_cwd_is_root(self):
        """§14.2, §11: without cwd a process runs in "/", not in the agent's own directory."""
        _, ex, outs, *_ = w.run(self.conn, {"argv": ["pwd"]})
        self.assertEqual(ex["code"], 0)
        self.assertEqual(list(outs.values()), [b"/\n"])
        self.assertNotEqual(os.getcwd(), "/")

    def test_list_exit_only_when_exited(self):
        """§14.7, §4.3: `exit` is present once a process has exited, absent while it runs."""
        r = self.conn.call("proc.spawn", {"argv": ["sleep", "30"], "stdout": "null",
                                          "stderr": "null"})
        done = self.conn.call("proc.spawn", {"argv": ["true"], "stdout": "null",
                                             "stderr": "null"})
        self.conn.call("proc.wait", {"id": done["id"]})
        procs = {p["id"]: p for p in self.conn.call("proc.list")["procs"]}
        self.assertEqual(procs[r["id"]]["state"], "running")
        self.assertNotIn("exit", procs[r["id"]])
        self.assertEqual(procs[done["id"]]["state"], "exited")
        self.assertEqual(procs[done["id"]]["exit"]["code"], 0)
        self.conn.call("proc.kill", {"id": r["id"], "signal": "KILL"})
        self.conn.call("proc.wait", {"id": r["id"]})

    def test_wait_timeout_zero_is_bad_param(self):
        """§14.4, §23: proc.wait timeout_ms is ≥ 1; 0 is BAD_PARAM, also for an exited process."""
        r = self.conn.call("proc.spawn", {"argv": ["true"], "stdout": "null", "stderr": "null"})
        self.conn.call("proc.wait", {"id": r["id"]})
        e = self.err("proc.wait", {"id": r["id"], "timeout_ms": 0})
        self.assertEqual((e["code"], e["field"]), ("BAD_PARAM", "timeout_ms"))

    def test_exit_map_fields(self):
        """§14.3: the exit map always has every field of the table."""
        _, ex, *_ = w.run(self.conn, {"argv": ["sh", "-c", "echo out; echo err >&2"]})
        for k in ("id", "pid", "code", "signal", "signo", "core", "duration_ns", "drained",
                  "timed_out", "oom", "stdout_bytes", "stderr_bytes", "rusage"):
            self.assertIn(k, ex)
        self.assertEqual((ex["stdout_bytes"], ex["stderr_bytes"]), (4, 4))


if __name__ == "__main__":
    unittest.main()
