"""The SDK session (gateway/session.c and the methods that feed and read its streams) against a
scripted agent: who owns a client stream, how long one call's back-pressure may stop the session
from reading its WebSocket, and what the gateway keeps for a client that does not read.

The agent is test_deploy_agent.FakeAgent (it answers hello, records every message, and hands the
rest to the test's handler); the client is a raw WebSocket (sdkharness.RawWS) on the one timed
sandbox the data dir holds. No root, no deno: run by ctest as gateway.session.agent, or:
SBX_BUILD=build python3 tests/gateway/test_session_agent.py
"""
import base64
import json
import os
import socket
import sys
import threading
import time
import unittest

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sdkharness as h  # noqa: E402
from sdkharness import sbxwire  # noqa: E402
from test_deploy_agent import SBID, AgentCase  # noqa: E402

WAIT = 20  # seconds for what must happen (never a bound on how fast)


def note(method, **params):
    return {"jsonrpc": "2.0", "method": method, "params": params}


def b64(data):
    return base64.b64encode(data).decode()


class SessionCase(AgentCase):
    def ws(self):
        """A session on the sandbox (GET /api/v3/sandbox/<id>/connect)."""
        ws = h.RawWS(self.gw.host, self.gw.port, "/api/v3/sandbox/%s/connect" % SBID,
                     {"authorization": "Bearer " + self.gw.token})
        self.addCleanup(ws.sock.close)
        ws.notes = []
        return ws

    def requests(self, method):
        return [m for _, m in self.agent.requests(method)]

    def answers(self, ws, ids):
        """The responses to @ids, in whatever order they come: {id: result}."""
        want = set(ids)
        got = {n["id"]: n["result"] for n in ws.notes if n.get("id") in want}
        deadline = time.monotonic() + WAIT
        while want - set(got):
            m = ws.recv_json(max(0.1, deadline - time.monotonic()))
            if m.get("id") in want:
                got[m["id"]] = m["result"]
        return got

    def wait_for(self, pred, what):
        """Poll @pred (state a handler sets, which FakeAgent.wait may miss) until it is true."""
        deadline = time.monotonic() + WAIT
        while not pred():
            self.assertLess(time.monotonic(), deadline, "never happened: " + what)
            time.sleep(0.05)


def file_agent(c, m):
    """An agent whose files take every write at once."""
    if m[0] != 0:
        return
    if m[2] == "fs.open":
        c.answer(m, {"fh": 1})
    elif m[2] == "fs.write":
        c.answer(m, {"written": len(m[3]["data"])})
    else:
        c.answer(m, None)


class TestStreamOwnership(SessionCase):
    def test_failed_fetch_leaves_another_calls_stream_alone(self):
        # A fetch that fails its checks cancels the body stream it names, so that the client
        # stops sending it; that stream was a writeFile's, which then never heard of its end
        # and waited for ever (its state leaked).
        self.start(file_agent)
        ws = self.ws()
        ws.send_json(note("$sandbox.stream.start", streamId=5))
        ws.send_json({"jsonrpc": "2.0", "id": 1, "method": "writeFile",
                      "params": {"path": "/tmp/victim", "contentStreamId": 5}})
        ws.send_json(note("$sandbox.stream.enqueue", streamId=5, data=b64(b"hello ")))
        self.agent.wait(lambda: self.requests("fs.open"), "the writeFile's fs.open")
        # A bad param (the first check) and a bad method (a later one, early_fail).
        bad = ws.call("fetch", {"url": 42, "bodyStreamId": 5}, rid=2)
        self.assertIn("url", bad["result"]["error"]["message"])
        bad = ws.call("fetch", {"url": "http://localhost/", "method": "GET X", "bodyStreamId": 5},
                      rid=3)
        self.assertIn("not a valid HTTP method", bad["result"]["error"]["message"])
        ws.send_json(note("$sandbox.stream.enqueue", streamId=5, data=b64(b"world")))
        ws.send_json(note("$sandbox.stream.end", streamId=5))
        self.assertEqual(ws.answer(1, timeout=WAIT)["result"], {"ok": None})
        written = b"".join(bytes(m[3]["data"]) for m in self.requests("fs.write"))
        self.assertEqual(written, b"hello world")
        self.assertEqual([n for n in ws.notes if n.get("method") == "$sandbox.stream.cancel"],
                         [])
        self.assertEqual(len(self.requests("fs.close")), 1)

    def test_failed_fetch_still_cancels_its_own_stream(self):
        # The stream nobody claimed is the failed request's: the client is told to stop.
        self.start(file_agent)
        ws = self.ws()
        ws.send_json(note("$sandbox.stream.start", streamId=6))
        bad = ws.call("fetch", {"url": 42, "bodyStreamId": 6}, rid=1)
        self.assertIn("error", bad["result"])
        cancel = ws.recv_json(timeout=WAIT)
        self.assertEqual(cancel["method"], "$sandbox.stream.cancel", cancel)
        self.assertEqual(cancel["params"]["streamId"], 6)


class CreditAgent:
    """An agent that keeps to its credit: every download has @size bytes, sent in 16 KiB
    messages as the gateway's grants allow, from a thread of its own (the handler's thread reads
    the grants). The credit a stream starts with is what hello's recv_window set, else
    stream_window. .grants: every stream.credit's bytes."""

    def __init__(self, size):
        self.size = size
        self.grants = []
        self.credit = {}
        self.cond = threading.Condition()

    def __call__(self, c, m):
        if m[0] == 2 and m[1] == "stream.credit":
            with self.cond:
                self.grants.append(m[2]["bytes"])
                self.credit[m[2]["stream"]] += m[2]["bytes"]
                self.cond.notify_all()
            return
        if m[0] != 0:
            return
        if m[2] != "transfer.download":
            c.answer(m, None)
            return
        sid = c.new_sid()
        with self.cond:
            self.credit[sid] = c.recv_window or (1 << 20)
        c.answer(m, {"stream": sid, "size": self.size, "mode": 0o100644})
        threading.Thread(target=self.send, args=(c, sid), daemon=True).start()

    def send(self, c, sid):
        off = 0
        while off < self.size:
            with self.cond:
                if not self.cond.wait_for(lambda: self.credit[sid] > 0, WAIT):
                    return  # the test fails on the missing answer
                n = min(16 << 10, self.credit[sid], self.size - off)
                self.credit[sid] -= n
            c.send([3, sid, b"c" * n])
            off += n
        c.notify("stream.end", {"stream": sid})


class TestAgentWindow(SessionCase):
    def test_agent_streams_start_with_a_64k_window(self):
        # The gateway asks its agent connections for recv_window 64 KiB (GW_AGENT_RECV_WINDOW):
        # a client that reads nothing holds that much per agent stream, not stream_window
        # (1 MiB). It grants at half of it, so an agent that keeps to its credit is never
        # stalled: a 1 MiB file comes through in 32 KiB grants.
        agent = CreditAgent(1 << 20)
        self.start(agent, recv_window=True)
        ws = self.ws()
        r = ws.call("readFile", {"path": "/f"}, rid=1, timeout=WAIT)
        self.assertEqual(base64.b64decode(r["result"]["ok"]), b"c" * (1 << 20))
        hellos = self.requests("hello")
        self.assertTrue(hellos)
        for m in hellos:
            self.assertEqual(m[3].get("recv_window"), 64 << 10, m)
        self.assertTrue(agent.grants)
        self.assertLessEqual(max(agent.grants), 64 << 10, agent.grants)
        self.assertGreaterEqual(len(agent.grants), 14, agent.grants)

    def test_an_agent_that_knows_no_recv_window(self):
        # An agent that ignores recv_window (it does not echo it) keeps stream_window for its
        # streams: the gateway then counts that window, and grants at half of it.
        agent = CreditAgent(3 << 20)
        self.start(agent)
        ws = self.ws()
        r = ws.call("readFile", {"path": "/f"}, rid=1, timeout=WAIT)
        self.assertEqual(len(base64.b64decode(r["result"]["ok"])), 3 << 20)
        self.assertGreaterEqual(min(agent.grants), 512 << 10, agent.grants)


class TestHello(SessionCase):
    def test_agent_that_never_answers_hello(self):
        # The session reads nothing from its client until the agent said hello: an agent that
        # accepted the connection and said nothing more held the client there for ever.
        self.start(lambda c, m: None, hello=False, extra=["--agent-hello-timeout", "1s"])
        ws = self.ws()
        ws.send_json({"jsonrpc": "2.0", "id": 1, "method": "envGet", "params": {"key": "A"}})
        t0 = time.monotonic()
        with self.assertRaises(h.WSClosed) as cm:
            while time.monotonic() - t0 < WAIT:
                ws.recv_json(timeout=WAIT)
        self.assertEqual(cm.exception.code, 1011, cm.exception)
        self.assertIn("the agent did not answer hello within 1 s", cm.exception.reason)
        self.assertGreater(time.monotonic() - t0, 0.5)
        self.assertEqual(self.requests("env.get"), [])


class TestBackPressure(SessionCase):
    def test_streamed_write_waits_for_a_slow_write(self):
        # The first fs.write takes seconds. The client's content must wait in its own socket
        # meanwhile: it used to be read on while the write was in flight, until 19 MiB
        # (GW_FS_WRITE_MAX) failed the write ("the content stream outran the sandbox").
        sent = threading.Event()
        slowed = []

        def handler(c, m):
            if m[0] == 0 and m[2] == "fs.write" and not slowed:
                slowed.append(m)
                sent.wait(3)  # the client sent everything, or it waits (held) ...
                time.sleep(1)  # ... and what it sent has reached the gateway
            file_agent(c, m)

        self.start(handler)
        ws = self.ws()
        ws.send_json(note("$sandbox.stream.start", streamId=5))
        ws.send_json({"jsonrpc": "2.0", "id": 1, "method": "writeFile",
                      "params": {"path": "/tmp/big", "contentStreamId": 5}})
        chunk = note("$sandbox.stream.enqueue", streamId=5, data=b64(b"y" * 65536))
        ws.sock.settimeout(WAIT)
        for _ in range(32 * 16):  # 32 MiB
            ws.send_json(chunk)
        ws.send_json(note("$sandbox.stream.end", streamId=5))
        sent.set()
        self.assertEqual(ws.answer(1, timeout=WAIT)["result"], {"ok": None})
        self.assertEqual(sum(len(m[3]["data"]) for m in self.requests("fs.write")), 32 << 20)


class HeldAgent:
    """An agent that keeps every @method request unanswered (in .held, unless @held is False
    until hold()) until release(), which answers each with @answer(c, m); other requests are
    answered with nil."""

    def __init__(self, method, answer, held=True):
        self.method, self.answer_fn = method, answer
        self.held = [] if held else None
        self.lock = threading.Lock()

    def hold(self):
        self.held = []
        return self

    def release(self):
        with self.lock:
            held, self.held = self.held, None
        for c, m in held:
            self.answer_fn(c, m)

    def __call__(self, c, m):
        if m[0] != 0:
            return
        if m[2] == self.method:
            with self.lock:
                if self.held is not None:
                    self.held.append((c, m))
                    return
            self.answer_fn(c, m)
        else:
            c.answer(m, None)


class DownloadAgent(HeldAgent):
    """An agent whose every file has @size bytes, each download sent whole at once (within the
    stream's first window: no credit needed). hold(): downloads are kept unanswered (in .held)
    until release()."""

    def __init__(self, size):
        super().__init__("transfer.download", self.send, held=False)
        self.size = size

    def send(self, c, m):
        sid = c.new_sid()
        c.answer(m, {"stream": sid, "size": self.size, "mode": 0o100644})
        for off in range(0, self.size, 256 << 10):
            c.send([3, sid, b"q" * min(256 << 10, self.size - off)])
        c.notify("stream.end", {"stream": sid})


class TestClientThatDoesNotRead(SessionCase):
    def test_requests_are_not_read_while_answers_pile_up(self):
        # The client sends readFile after readFile (1 MiB each) and reads no answer. Once more
        # than GW_WS_HIGH (8 MiB) waits for it, the gateway stops reading its requests: it used
        # to read and answer every one, keeping all the answers in memory.
        self.start(DownloadAgent(1 << 20))
        ws = self.ws()
        ws.sock.settimeout(WAIT)
        n = 0
        while n < 200:
            ws.send_json({"jsonrpc": "2.0", "id": n, "method": "readFile",
                          "params": {"path": "/f%d" % n}})
            n += 1
            deadline = time.monotonic() + 2
            while len(self.requests("transfer.download")) < n and time.monotonic() < deadline:
                time.sleep(0.01)
            if len(self.requests("transfer.download")) < n:
                break  # the gateway no longer reads
        self.assertLess(len(self.requests("transfer.download")), 100,
                        "the gateway read every request of a client that reads nothing")
        # Read by the client, the answers go, and every request is answered.
        for r in self.answers(ws, range(n)).values():
            self.assertEqual(len(base64.b64decode(r["ok"])), 1 << 20)

    def test_a_burst_of_requests_gathers_no_more_than_the_client_reads(self):
        # 200 readFile in one burst, read by the gateway before any answer exists, and no answer
        # read: they used to start all at once, each gathering its file and keeping its answer.
        # Now GW_GATHERS_MAX run at a time and none starts while the answers wait unread.
        self.start(DownloadAgent(1 << 20))
        ws = self.ws()
        ws.sock.settimeout(WAIT)
        ws.sock.sendall(b"".join(
            frame_of(ws, {"jsonrpc": "2.0", "id": i, "method": "readFile",
                          "params": {"path": "/f%d" % i}}) for i in range(200)))
        seen, since = -1, time.monotonic()
        while time.monotonic() - since < 2:  # until no new download for 2 s
            n = len(self.requests("transfer.download"))
            if n != seen:
                seen, since = n, time.monotonic()
            time.sleep(0.05)
        self.assertLess(seen, 100, "a burst of requests gathered answers nobody read")
        for r in self.answers(ws, range(200)).values():
            self.assertEqual(len(base64.b64decode(r["ok"])), 1 << 20)

    def test_abort_of_a_read_that_waits_for_room(self):
        # A readFile waiting for its turn is aborted like one that runs, and frees its turn.
        agent = DownloadAgent(1 << 20).hold()
        self.start(agent)
        ws = self.ws()
        ws.sock.settimeout(WAIT)
        ws.sock.sendall(b"".join(
            frame_of(ws, {"jsonrpc": "2.0", "id": i, "method": "readFile",
                          "params": {"path": "/f%d" % i, "abortId": i}}) for i in range(40)))
        ws.send_json({"jsonrpc": "2.0", "id": 1000, "method": "abort", "params": {"abortId": 39}})
        self.assertEqual(ws.answer(1000, timeout=WAIT)["result"], {"ok": None})
        self.wait_for(lambda: len(agent.held) >= 8, "GW_GATHERS_MAX downloads")
        self.assertEqual(len(agent.held), 8)
        agent.release()
        got = self.answers(ws, range(40))
        self.assertEqual(got[39]["error"]["code"], "ABORT_ERR", got[39])
        self.assertEqual(len(base64.b64decode(got[0]["ok"])), 1 << 20)


def frame_of(ws, obj):
    """The bytes RawWS.send_json would write for @obj (to send many at once)."""
    out = []
    real = ws.sock
    ws.sock = type("Capture", (), {"sendall": lambda self, b: out.append(b)})()
    try:
        ws.send_json(obj)
    finally:
        ws.sock = real
    return out[0]


class SlowSpawnAgent:
    """An agent that answers proc.spawn only when told (answer()), with a stdin stream whose
    bytes it counts and grants credit for at once."""

    def __init__(self, case):
        self.case = case
        self.spawn = None  # (conn, request)
        self.sid = None
        self.got = 0
        self.ended = False
        self.lock = threading.Lock()

    def __call__(self, c, m):
        if m[0] == 0 and m[2] == "proc.spawn":
            self.spawn = (c, m)  # answered by the test
        elif m[0] == 3 and m[1] == self.sid:
            with self.lock:
                self.got += len(m[2])
            c.notify("stream.credit", {"stream": self.sid, "bytes": len(m[2])})
        elif m[0] == 2 and m[1] == "stream.end" and m[2].get("stream") == self.sid:
            self.ended = True
        elif m[0] == 0:
            c.answer(m, None)

    def answer(self):
        self.case.wait_for(lambda: self.spawn, "proc.spawn")
        c, m = self.spawn
        self.sid = c.new_sid()
        c.answer(m, {"id": 9, "pid": 4242, "stdin": self.sid, "stdout": None, "stderr": None})


class TestStdinBeforeSpawn(SessionCase):
    def spawn(self, ws, agent):
        ws.send_json(note("$sandbox.stream.start", streamId=3))
        ws.send_json({"jsonrpc": "2.0", "id": 1, "method": "spawn",
                      "params": {"command": "cat", "stdinStreamId": 3, "stdout": "null",
                                 "stderr": "null"}})
        self.wait_for(lambda: agent.spawn, "proc.spawn")  # the stream is claimed

    def test_stdin_is_held_until_the_process_starts(self):
        # Stdin sent before proc.spawn answers waits in the gateway: it used to be read and
        # queued without a hold or a cap for as long as the agent took to answer (here the
        # client's 48 MiB were all read). Now the session stops reading the client, whose
        # sending stalls until the process exists; then every byte arrives.
        agent = SlowSpawnAgent(self)
        self.start(agent)
        ws = self.ws()
        self.spawn(ws, agent)
        mib = note("$sandbox.stream.enqueue", streamId=3, data=b64(b"z" * (1 << 20)))
        sent = [0]

        def sender():
            for _ in range(48):
                ws.send_json(mib)
                sent[0] += 1
            ws.send_json(note("$sandbox.stream.end", streamId=3))

        ws.sock.settimeout(None)
        t = threading.Thread(target=sender, daemon=True)
        t.start()
        # Until the sending stalls (it makes no progress for 2 s) or ends.
        last, since = -1, time.monotonic()
        while t.is_alive() and time.monotonic() - since < 2:
            if sent[0] != last:
                last, since = sent[0], time.monotonic()
            time.sleep(0.1)
        self.assertTrue(t.is_alive(), "the gateway read all 48 MiB before the process existed")
        self.assertLess(sent[0], 48)
        agent.answer()
        t.join(WAIT)
        self.assertFalse(t.is_alive(), "the client's stdin never went on after the spawn")
        ws.sock.settimeout(WAIT)
        self.assertEqual(ws.answer(1, timeout=WAIT)["result"]["ok"]["pid"], 9)
        self.wait_for(lambda: agent.ended, "the end of stdin")
        self.assertEqual(agent.got, 48 << 20)

    def test_one_message_over_the_cap_cuts_stdin(self):
        # One message of 24 MiB (more than GW_SINK_MAX, 19 MiB) before the answer: the stream
        # is cut with LIMIT and the process gets an empty stdin.
        agent = SlowSpawnAgent(self)
        self.start(agent)
        ws = self.ws()
        self.spawn(ws, agent)
        ws.send_json(note("$sandbox.stream.enqueue", streamId=3, data=b64(b"z" * (24 << 20))))
        cancel = ws.recv_json(timeout=WAIT)
        self.assertEqual(cancel.get("method"), "$sandbox.stream.cancel", cancel)
        self.assertEqual(cancel["params"]["streamId"], 3)
        self.assertEqual(cancel["params"]["reason"]["code"], "LIMIT")
        agent.answer()
        self.assertEqual(ws.answer(1, timeout=WAIT)["result"]["ok"]["pid"], 9)
        self.wait_for(lambda: agent.ended, "the end of stdin")
        self.assertEqual(agent.got, 0)


class TestStalledReceiver(SessionCase):
    """A hold stops the session's reading while a stream's receiver is full; one whose receiver
    takes nothing for --stream-stall-timeout (1 s here) is cut, and what the client sent behind
    it (a kill, an abort) is read and answered. It used to wait for ever, and the WebSocket was
    dropped as dead 60 s in."""

    def send_behind(self, ws, sid, mib, then):
        """In a thread (the session may stop reading it for a while): @mib MiB on stream @sid,
        then the request @then."""
        chunk = note("$sandbox.stream.enqueue", streamId=sid, data=b64(b"x" * 65536))

        def sender():
            for _ in range(mib * 16):
                ws.send_json(chunk)
            ws.send_json(then)

        ws.sock.settimeout(None)
        t = threading.Thread(target=sender, daemon=True)
        t.start()
        return t

    def cancel_of(self, ws, sid):
        return [n for n in ws.notes if n.get("method") == "$sandbox.stream.cancel"
                and n["params"]["streamId"] == sid]

    def test_kill_behind_stdin_a_process_does_not_read(self):
        def handler(c, m):  # a process that never reads its stdin: no credit ever
            if m[0] == 0 and m[2] == "proc.spawn":
                c.stdin = c.new_sid()
                c.answer(m, {"id": 9, "pid": 4242, "stdin": c.stdin, "stdout": None,
                             "stderr": None})
            elif m[0] == 0:
                c.answer(m, None)

        self.start(handler, extra=["--stream-stall-timeout", "1s"])
        ws = self.ws()
        ws.send_json(note("$sandbox.stream.start", streamId=7))
        r = ws.call("spawn", {"command": "sleep", "args": ["1000"], "stdinStreamId": 7,
                              "stdout": "null", "stderr": "null"}, rid=1)
        self.assertEqual(r["result"]["ok"]["pid"], 9)
        t = self.send_behind(ws, 7, 10, {"jsonrpc": "2.0", "id": 99, "method": "processKill",
                                         "params": {"pid": 9, "signal": "SIGKILL"}})
        self.assertEqual(ws.answer(99, timeout=WAIT)["result"], {"ok": None})
        t.join(WAIT)
        cut = self.cancel_of(ws, 7)
        self.assertEqual(len(cut), 1, ws.notes[:3])
        self.assertEqual(cut[0]["params"]["reason"]["code"], "ETIMEDOUT")
        self.assertIn("read none of it for 1 s", cut[0]["params"]["reason"]["message"])
        self.assertEqual(len(self.requests("proc.kill")), 1)
        self.wait_for(lambda: self.agent.notes("stream.cancel"), "stdin's cancel to the agent")

    def test_abort_behind_a_file_write_that_never_ends(self):
        def handler(c, m):  # an fs.write that is never answered
            if m[0] == 0 and m[2] == "fs.open":
                c.answer(m, {"fh": 1})
            elif m[0] == 0 and m[2] != "fs.write":
                c.answer(m, None)

        self.start(handler, extra=["--stream-stall-timeout", "1s"])
        ws = self.ws()
        ws.send_json(note("$sandbox.stream.start", streamId=5))
        ws.send_json({"jsonrpc": "2.0", "id": 1, "method": "writeFile",
                      "params": {"path": "/tmp/stuck", "contentStreamId": 5}})
        t = self.send_behind(ws, 5, 8, {"jsonrpc": "2.0", "id": 2, "method": "abort",
                                        "params": {"abortId": 77}})
        got = self.answers(ws, [1, 2])
        t.join(WAIT)
        self.assertEqual(got[2], {"ok": None})
        self.assertEqual(got[1]["error"]["constructorName"], "TimedOut", got[1])
        self.assertIn("wrote none of the content for 1 s", got[1]["error"]["message"])

    def test_abort_behind_a_fetch_body_the_server_does_not_read(self):
        accepted = []
        srv = h.RawServer(lambda conn: accepted.append(conn) or time.sleep(WAIT))
        self.addCleanup(srv.stop)
        self.start(lambda c, m: c.answer(m, None) if m[0] == 0 else None,
                   extra=["--stream-stall-timeout", "1s", "--resolve", "stall.test:127.0.0.1"])
        ws = self.ws()
        ws.send_json(note("$sandbox.stream.start", streamId=9))
        ws.send_json({"jsonrpc": "2.0", "id": 1, "method": "fetch",
                      "params": {"url": "http://stall.test:%d/up" % srv.port, "method": "POST",
                                 "headers": [], "bodyStreamId": 9, "abortId": 0}})
        t = self.send_behind(ws, 9, 40, {"jsonrpc": "2.0", "id": 2, "method": "abort",
                                         "params": {"abortId": 5}})
        got = self.answers(ws, [1, 2])
        t.join(WAIT)
        self.assertEqual(got[2], {"ok": None})
        self.assertEqual(got[1]["error"]["code"], "ETIMEDOUT", got[1])
        self.assertIn("the server read none of the request body for 1 s",
                      got[1]["error"]["message"])
        self.assertEqual(len(accepted), 1)


def walk_entry(path, name, typ="file", depth=1):
    return sbxwire.pack({"path": path, "name": name, "type": typ, "depth": depth})


# 64 skip regexes that backtrack for about a quarter of a millisecond each on the path of an
# entry of slow_chunk(), within their share of an entry's PCRE2 steps; none matches (no entry is
# skipped).
SLOW_SKIP = [{"source": r"(\/+)+[^/d]$", "flags": ""}] * 64


def slow_chunk(n):
    """A walk's root /d and @n entries under it whose paths end in 12 '/': slow under SLOW_SKIP."""
    return walk_entry(b"/d", b"d", "dir", 0) + b"".join(
        walk_entry(b"/d/a%d" % i + b"/" * 12, b"a%d" % i) for i in range(n))


def empty_walk(c, m):
    sid = c.new_sid()
    c.answer(m, {"stream": sid})
    c.notify("stream.end", {"stream": sid})


def empty_dir(c, m):
    c.answer(m, {"entries": [], "cursor": None})


class TestWalkAndListings(SessionCase):
    """walk, expandGlob and readDir: what they cost the gateway's loop and its memory."""

    def stream_of(self, ws, rid):
        """The stream id of @rid's answer, and its end (or error) with every entry before it:
        (entries, error or None)."""
        # What came for other requests and streams meanwhile is kept in ws.notes (answers to
        # later requests among it: they may come before this stream's end).
        r = next((n for n in ws.notes if n.get("id") == rid), None)
        if r is not None:
            ws.notes.remove(r)
        else:
            r = ws.answer(rid, timeout=WAIT)
        self.assertIn("ok", r["result"], r)
        sid = r["result"]["ok"]["streamId"]
        entries = []
        deadline = time.monotonic() + 3 * WAIT
        pending = [n for n in ws.notes if n.get("params", {}).get("streamId") == sid]
        ws.notes = [n for n in ws.notes if n.get("params", {}).get("streamId") != sid]
        while True:
            n = pending.pop(0) if pending else ws.recv_json(max(0.1, deadline - time.monotonic()))
            if n.get("params", {}).get("streamId") != sid:
                ws.notes.append(n)
                continue
            if n["method"] == "$sandbox.stream.enqueue":
                entries.append(json.loads(base64.b64decode(n["params"]["data"])))
            elif n["method"] == "$sandbox.stream.end":
                return entries, None
            elif n["method"] == "$sandbox.stream.error":
                return entries, n["params"]["error"]

    def test_regex_work_lets_the_loop_turn(self):
        # 64 skip regexes that each backtrack for about a quarter of a millisecond on every
        # entry's path (within their share of the steps), 150 entries in one chunk: some seconds
        # of work. A request sent meanwhile on the
        # same session used to wait until the whole chunk was done (the loop never turned; every
        # other session of the gateway waited too); now it is answered between entries.
        n = 150
        walks = []

        def handler(c, m):
            if m[0] != 0:
                return
            if m[2] == "fs.walk":
                sid = c.new_sid()
                c.answer(m, {"stream": sid})
                c.send([3, sid, slow_chunk(n)])
                walks.append((c, sid))
            else:
                c.answer(m, error={"code": "ENOENT", "message": "no such file"})

        self.start(handler)
        ws = self.ws()
        ws.sock.settimeout(WAIT)
        skip = SLOW_SKIP
        ws.send_json({"jsonrpc": "2.0", "id": 1, "method": "walk",
                      "params": {"path": "/d", "skip": skip}})
        r = ws.answer(1, timeout=WAIT)["result"]
        sid = r["ok"]["streamId"]
        time.sleep(0.3)  # the chunk is being worked through
        ws.send_json({"jsonrpc": "2.0", "id": 2, "method": "stat", "params": {"path": "/x"}})
        self.assertIn("error", ws.answer(2, timeout=3 * WAIT)["result"])
        mine = [x["method"] for x in ws.notes if x.get("params", {}).get("streamId") == sid]
        self.assertEqual(set(mine) - {"$sandbox.stream.start", "$sandbox.stream.enqueue"}, set(),
                         "the walk ended early")
        before = mine.count("$sandbox.stream.enqueue")
        self.assertLess(before, n + 1,
                        "the request waited for every entry of the chunk to be matched")
        c, asid = walks[0]
        c.notify("stream.end", {"stream": asid})
        count = before
        while True:
            x = ws.recv_json(WAIT)
            if x.get("params", {}).get("streamId") != sid:
                continue
            if x["method"] != "$sandbox.stream.enqueue":
                break
            count += 1
        self.assertEqual(x["method"], "$sandbox.stream.end", x)
        self.assertEqual(count, n + 1)  # the root and every entry: none is skipped

    def test_a_pathological_regex_fails_the_walk(self):
        # One regex whose backtracking doubles with each '/' of the path: 21 of them take about
        # 5 M steps (a tenth of a second here), which the old limit of 10 M per match let run;
        # past the GW_RX_ENTRY_STEPS an entry's regexes share, the walk fails with a message.
        def handler(c, m):
            if m[0] == 0 and m[2] == "fs.walk":
                sid = c.new_sid()
                c.answer(m, {"stream": sid})
                c.send([3, sid, walk_entry(b"/d", b"d", "dir", 0) +
                        walk_entry(b"/d/a" + b"/" * 21, b"a")])
                c.notify("stream.end", {"stream": sid})
            elif m[0] == 0:
                c.answer(m, None)

        self.start(handler)
        ws = self.ws()
        ws.send_json({"jsonrpc": "2.0", "id": 1, "method": "walk",
                      "params": {"path": "/d", "match": [{"source": r"(\/+)+[^/]$"}]}})
        _, err = self.stream_of(ws, 1)
        self.assertIsNotNone(err)
        self.assertIn("match limits", err["message"])

    def burst(self, ws, method, params, count):
        ws.sock.sendall(b"".join(
            frame_of(ws, {"jsonrpc": "2.0", "id": i, "method": method, "params": params})
            for i in range(count)))

    def takes_turns(self, method, params, agent_method, answer):
        """20 @method calls in one burst, the agent holding every @agent_method: GW_GATHERS_MAX
        (8) reach it, the rest wait for their turn. Returns the WebSocket, the agent released."""
        agent = HeldAgent(agent_method, answer)
        self.start(agent)
        ws = self.ws()
        ws.sock.settimeout(WAIT)
        self.burst(ws, method, params, 20)
        self.wait_for(lambda: len(agent.held) >= 8, "GW_GATHERS_MAX calls")
        time.sleep(0.5)
        self.assertEqual(len(agent.held), 8)
        agent.release()
        return ws

    def test_expand_glob_takes_turns(self):
        # expandGlob gathers its matches to sort them: 20 in one burst used to walk at once, each
        # holding what it found.
        ws = self.takes_turns("expandGlob", {"glob": "/d/*"}, "fs.walk", empty_walk)
        for i in range(20):
            self.assertEqual(self.stream_of(ws, i), ([], None))
        self.assertEqual(len(self.requests("fs.walk")), 20)

    def test_read_dir_takes_turns(self):
        ws = self.takes_turns("readDir", {"path": "/d"}, "fs.readdir", empty_dir)
        got = self.answers(ws, range(20))
        self.assertEqual([got[i] for i in range(20)], [{"ok": []}] * 20)

    def test_read_dir_byte_cap(self):
        # 70,000 entries of 255 bytes that are not UTF-8 (each 765 bytes of U+FFFD in JSON):
        # under the entry cap, over GW_FS_READDIR_BYTES; the listing fails with LIMIT instead of
        # the gateway holding it all.
        page, pages = 3500, 20
        name = b"\xff" * 255

        def handler(c, m):
            if m[0] == 0 and m[2] == "fs.readdir":
                k = int(m[3].get("cursor") or 0)
                ents = [{"name": name, "type": "file"}] * page
                c.answer(m, {"entries": ents, "cursor": str(k + 1) if k + 1 < pages else None})
            elif m[0] == 0:
                c.answer(m, None)

        self.start(handler)
        ws = self.ws()
        r = ws.call("readDir", {"path": "/d"}, timeout=3 * WAIT)["result"]
        self.assertTrue("error" in r, "answered with %d entries" % len(r.get("ok") or []))
        self.assertEqual(r["error"]["code"], "LIMIT", r)
        self.assertIn("MiB", r["error"]["message"])
        self.assertLess(len(self.requests("fs.readdir")), pages)

    def test_expand_glob_byte_cap(self):
        # 40,000 matches whose path and name are 255 bytes that are not UTF-8: over
        # GW_FS_GLOB_BYTES, and the glob fails with LIMIT instead of the gateway holding them.
        name = b"\xff" * 255
        one = walk_entry(b"/d/" + name, name)
        per = (200 << 10) // len(one)

        def handler(c, m):
            if m[0] == 0 and m[2] == "fs.walk":
                sid = c.new_sid()
                c.answer(m, {"stream": sid})
                c.send([3, sid, walk_entry(b"/d", b"d", "dir", 0)])
                left = 40000
                while left > 0:
                    c.send([3, sid, one * min(per, left)])
                    left -= per
                c.notify("stream.end", {"stream": sid})
            elif m[0] == 0:
                c.answer(m, None)

        self.start(handler, window=lambda n: 64 << 20)
        ws = self.ws()
        ws.send_json({"jsonrpc": "2.0", "id": 1, "method": "expandGlob",
                      "params": {"glob": "/d/*"}})
        entries, err = self.stream_of(ws, 1)
        self.assertEqual(len(entries), 0)
        self.assertIsNotNone(err)
        self.assertEqual(err.get("code"), "LIMIT", err)

    def test_read_dir_byte_cap_counts_json_text(self):
        # 45,500 names of 255 control bytes: each is 255 bytes of string but 1,530 of JSON text
        # (\u0001). Counted by string length (23 MiB) the listing passed the 64 MiB cap and was
        # answered with a reply of 70 MiB, past "the most one reply carries" (130,000 such names
        # make 200 MiB, twice the SDK's 100 MiB message cap).
        page, pages = 3500, 13
        name = b"\x01" * 250

        def handler(c, m):
            if m[0] == 0 and m[2] == "fs.readdir":
                k = int(m[3].get("cursor") or 0)
                ents = [{"name": name + b"%05d" % (k * page + i), "type": "file"}
                        for i in range(page)]
                c.answer(m, {"entries": ents, "cursor": str(k + 1) if k + 1 < pages else None})
            elif m[0] == 0:
                c.answer(m, None)

        self.start(handler)
        ws = self.ws()
        ws.send_json({"jsonrpc": "2.0", "id": 1, "method": "readDir", "params": {"path": "/d"}})
        _, data = ws.recv(timeout=6 * WAIT)
        r = json.loads(data)["result"]
        self.assertTrue("error" in r, "answered with %d entries in %.1f MiB"
                        % (len(r.get("ok") or []), len(data) / 1048576))
        self.assertEqual(r["error"]["code"], "LIMIT", r)

    def test_stream_error_after_entries_that_wait(self):
        # The agent's stream fails (stream.end with an error) while entries it sent before
        # wait for a loop turn: those entries were dropped and the error sent at once; the
        # client must get every entry the agent sent, then the error.
        n = 150
        walks = []

        def handler(c, m):
            if m[0] == 0 and m[2] == "fs.walk":
                sid = c.new_sid()
                c.answer(m, {"stream": sid})
                c.send([3, sid, slow_chunk(n)])
                walks.append((c, sid))
            elif m[0] == 0:
                c.answer(m, None)

        self.start(handler)
        ws = self.ws()
        ws.sock.settimeout(WAIT)
        skip = SLOW_SKIP
        ws.send_json({"jsonrpc": "2.0", "id": 1, "method": "walk",
                      "params": {"path": "/d", "skip": skip}})
        self.wait_for(lambda: walks, "fs.walk")
        time.sleep(0.3)  # the chunk is being worked through
        c, asid = walks[0]
        c.notify("stream.end", {"stream": asid, "error": {"code": "EIO", "message": "i/o"}})
        entries, err = self.stream_of(ws, 1)
        self.assertEqual(len(entries), n + 1)
        self.assertIsNotNone(err)
        self.assertEqual(err.get("code"), "EIO", err)

    def test_agent_gone_while_entries_wait(self):
        # The agent sends a chunk of slow entries and its end, then its connection dies, while
        # the entries still wait for their turn: the walk's stream used to get neither its end
        # nor an error (only the WebSocket's close, seconds later); now it fails with EOF.
        def handler(c, m):
            if m[0] == 0 and m[2] == "fs.walk":
                sid = c.new_sid()
                c.answer(m, {"stream": sid})
                c.send([3, sid, slow_chunk(150)])
                c.notify("stream.end", {"stream": sid})
                c.sock.shutdown(socket.SHUT_RDWR)
            elif m[0] == 0:
                c.answer(m, None)

        self.start(handler)
        ws = self.ws()
        skip = SLOW_SKIP
        ws.send_json({"jsonrpc": "2.0", "id": 1, "method": "walk",
                      "params": {"path": "/d", "skip": skip}})
        entries, err = self.stream_of(ws, 1)
        self.assertLess(len(entries), 151)
        self.assertIsNotNone(err)
        self.assertEqual(err.get("code"), "EOF", err)

    def test_walks_share_the_loop_turn(self):
        # 60 walks and a stat in one burst; the agent answers in order, so the stat's answer
        # comes in behind every walk's chunk of slow entries. Each walk used to do its first
        # 5 ms (and at least one slow entry) in the callback that brought its chunk: 60 walks
        # held the loop for a second before the stat was answered, behind 120 entries or more
        # (and the turns after did as much again). Now the walks' work waits in one queue that
        # gets one slice a loop turn in all, and the stat is answered before their entries.
        n, k = 150, 60

        def handler(c, m):
            if m[0] == 0 and m[2] == "fs.walk":
                sid = c.new_sid()
                c.answer(m, {"stream": sid})
                c.send([3, sid, slow_chunk(n)])
            elif m[0] == 0:
                c.answer(m, error={"code": "ENOENT", "message": "no such file"})

        self.start(handler)
        ws = self.ws()
        ws.sock.settimeout(WAIT)
        skip = SLOW_SKIP
        self.burst(ws, "walk", {"path": "/d", "skip": skip}, k)
        ws.send_json({"jsonrpc": "2.0", "id": k, "method": "stat", "params": {"path": "/x"}})
        self.assertIn("error", ws.answer(k, timeout=3 * WAIT)["result"])
        before = [x for x in ws.notes if x.get("method") == "$sandbox.stream.enqueue"]
        self.assertLess(len(before), k, "the stat waited behind the walks' entries")
        self.assertEqual(len([x for x in ws.notes if "id" in x]), k)  # every walk answered
        ws.sock.close()


class TestWalkQueueTeardown(SessionCase):
    """Walks whose entries wait in the gateway's walk queue (gateway/walk.c struct gw_walkq)
    when their client, their agent or the gateway goes away."""
    n, k = 150, 40
    burst = TestWalkAndListings.burst

    def slow_walks(self, on_walk=None):
        walks = []

        def handler(c, m):
            if m[0] == 0 and m[2] == "fs.walk":
                sid = c.new_sid()
                c.answer(m, {"stream": sid})
                c.send([3, sid, slow_chunk(self.n)])
                walks.append((c, sid))
            elif m[0] == 0 and m[2] == "fs.stat":
                c.answer(m, error={"code": "ENOENT", "message": "no such file"})
            elif m[0] == 0:
                c.answer(m, None)

        self.start(handler)
        ws = self.ws()
        ws.sock.settimeout(WAIT)
        skip = SLOW_SKIP
        self.burst(ws, "walk", {"path": "/d", "skip": skip}, self.k)
        self.wait_for(lambda: len(walks) == self.k, "every fs.walk")
        for i in range(self.k):
            self.assertIn("ok", ws.answer(i, timeout=3 * WAIT)["result"])
        return ws, walks

    def test_gateway_stops_with_walks_queued(self):
        self.slow_walks()
        rc, log = self.stop_gateway()
        self.assert_clean_exit(rc, log)
        self.assertNotIn("still open", log)

    def test_client_leaves_with_walks_queued(self):
        ws, _ = self.slow_walks()
        ws.sock.close()
        other = self.ws()
        other.sock.settimeout(WAIT)
        self.assertIn("error", other.call("stat", {"path": "/x"}, rid=1,
                                          timeout=3 * WAIT)["result"])
        rc, log = self.stop_gateway()
        self.assert_clean_exit(rc, log)
        self.assertNotIn("still open", log)

    def test_agent_fails_streams_then_client_leaves(self):
        # Each agent stream fails while its entries wait (end_err), then the client leaves.
        ws, walks = self.slow_walks()
        for c, sid in walks:
            c.notify("stream.end", {"stream": sid, "error": {"code": "EIO", "message": "i/o"}})
        time.sleep(0.2)
        ws.sock.close()
        other = self.ws()
        other.sock.settimeout(WAIT)
        self.assertIn("error", other.call("stat", {"path": "/x"}, rid=1,
                                          timeout=3 * WAIT)["result"])
        rc, log = self.stop_gateway()
        self.assert_clean_exit(rc, log)

    def test_agent_connection_drops_with_walks_queued(self):
        ws, walks = self.slow_walks()
        walks[0][0].sock.shutdown(2)  # SHUT_RDWR
        ended = 0
        deadline = time.monotonic() + 3 * WAIT
        while ended < self.k and time.monotonic() < deadline:
            m = ws.recv_json(max(0.1, deadline - time.monotonic()))
            if m.get("method") in ("$sandbox.stream.end", "$sandbox.stream.error"):
                ended += 1
        self.assertEqual(ended, self.k)
        rc, log = self.stop_gateway()
        self.assert_clean_exit(rc, log)
        self.assertNotIn("still open", log)


if __name__ == "__main__":
    unittest.main(verbosity=2)
