"""Deploy jobs (gateway/deploy.c, gateway/link.c) against a scripted agent: what a hostile or
stuck agent can do to a revision, and what the gateway must not do in return.

The agent is Python (FakeAgent below): it answers hello as a v1 agent, records every message the
gateway sends, and hands each one to the test's handler, which answers as it likes. The source
sandbox is written into the data dir as a running timed sandbox of the addr backend before the
gateway starts, so no session and no real agent is needed. No root, no deno: run by ctest as
gateway.deploy.agent, or: SBX_BUILD=build python3 tests/gateway/test_deploy_agent.py
"""
import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile
import threading
import time
import unittest

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sdkharness as h  # noqa: E402
from sdkharness import sbxwire  # noqa: E402
from test_deploy import SSE, http  # noqa: E402

SBID = "sbx_ord_" + "a" * 20
WAIT = 20  # seconds a revision gets to finish where the gateway must end it by itself


def hello_result(window):
    return {"version": 1, "agent": "sbx-agent", "agent_version": "0.1.0",
            "capabilities": ["session", "process", "fs", "pack", "net", "transfer"],
            "limits": {"frame_max": 4 << 20, "chunk_max": 256 << 10, "stream_window": window,
                       "max_streams": 4096, "max_procs": 1024, "max_conns": 64},
            "conn": 3}


def exit_map(pid, code=0):
    return {"id": pid, "pid": 4242, "code": code, "signal": None, "signo": None, "core": False,
            "duration_ns": 1, "drained": True, "timed_out": False, "oom": False,
            "stdout_bytes": 0, "stderr_bytes": 0,
            "rusage": {"maxrss_kb": 1, "utime_us": 1, "stime_us": 1}}


# --- the scripted agent --------------------------------------------------------------------------

class FakeConn:
    """One connection of the gateway to the fake agent (n counts them from 1)."""

    def __init__(self, agent, sock, n):
        self.agent, self.sock, self.n = agent, sock, n
        self.got = []  # every message the gateway sent on it, decoded
        self.sids = 0
        self.recv_window = None  # what hello's recv_window set, if the agent took it
        self.wlock = threading.Lock()

    def send(self, msg):
        self.send_raw(sbxwire.frame(sbxwire.pack(msg)))

    def send_raw(self, data):
        with self.wlock:
            try:
                self.sock.sendall(data)
            except OSError:
                pass  # the gateway closed it: what a test checks is what it did before

    def answer(self, req, result=None, error=None):
        self.send([1, req[1], error, result])

    def notify(self, method, params):
        self.send([2, method, params])

    def new_sid(self):
        self.sids += 1
        return self.sids


class FakeAgent:
    """A unix-socket agent: hello is answered (unless @hello is False) with stream_window
    @window(n) for connection n, as an agent that knows no recv_window (PROTOCOL.md §6.2) unless
    @recv_window: then the one asked is echoed (and kept in conn.recv_window); every message goes
    to @handler(conn, msg) in the connection's thread. Exceptions of the handler are kept in
    .errors (tearDown fails on them)."""

    def __init__(self, handler, hello=True, window=lambda n: 1 << 20, recv_window=False):
        self.dir = tempfile.mkdtemp(prefix="sbxgw-fake-agent-")
        self.path = os.path.join(self.dir, "agent.sock")
        self.addr = "unix:" + self.path
        self.handler, self.hello, self.window = handler, hello, window
        self.recv_window = recv_window
        self.conns = []
        self.errors = []
        self.cond = threading.Condition()
        self.server = h.RawServer(self._serve, path=self.path)

    def _serve(self, sock):
        with self.cond:
            c = FakeConn(self, sock, len(self.conns) + 1)
            self.conns.append(c)
        while True:
            try:
                head = sbxwire.recv_exact(c.sock, 4)
                body = head and sbxwire.recv_exact(c.sock, struct.unpack(">I", head)[0])
            except OSError:
                return
            if not body:
                return
            msg = sbxwire.unpack(body)[0]
            with self.cond:
                c.got.append(msg)
                self.cond.notify_all()
            try:
                if msg[0] == 0 and msg[2] == "hello":
                    if self.hello:
                        res = hello_result(self.window(c.n))
                        asked = msg[3].get("recv_window")
                        if self.recv_window and asked is not None:
                            res["recv_window"] = c.recv_window = asked
                        c.answer(msg, res)
                    continue
                self.handler(c, msg)
            except Exception as e:  # noqa: BLE001 (reported by the test)
                self.errors.append("%s: %r" % (type(e).__name__, e))

    def requests(self, method):
        """(conn, request) of every @method request so far."""
        with self.cond:
            return [(c, m) for c in self.conns for m in c.got if m[0] == 0 and m[2] == method]

    def notes(self, method):
        with self.cond:
            return [(c, m) for c in self.conns for m in c.got if m[0] == 2 and m[1] == method]

    def wait(self, pred, what, timeout=WAIT):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                v = pred()
                if v:
                    return v
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("the gateway never did this: %s" % what)
                self.cond.wait(left)

    def stop(self):
        self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def pack_answer(c, req, files=None, archive=b"\x1f\x8b fake archive", end=True):
    """Answer a pack.create as an agent that packed one file: the manifest (@files, or main.ts),
    the archive bytes, done, the end of the archive stream (with @end). Returns (job id, sid)."""
    sid = c.new_sid()
    job = sid  # unique on the connection, as the agent's job ids are
    c.answer(req, {"id": job, "archive": sid})
    if files is None:
        files = [{"path": "main.ts", "type": "file", "size": 1, "mode": 0o644,
                  "sha256": hashlib.sha256(b"x").hexdigest()}]
    c.notify("pack.manifest", {"id": job, "part": 0, "last": True, "files": files,
                               "entrypoint": "main.ts", "args": [], "format": "tar.gz",
                               "file_count": len(files), "total_size": 1,
                               "archive_size": len(archive),
                               "archive_sha256": hashlib.sha256(archive).hexdigest()})
    c.send([3, sid, archive])
    if end:
        pack_answer_end(c, job, sid)
    return job, sid


def pack_answer_end(c, job, sid):
    """The end of pack job @job with archive stream @sid: done, then the stream's end."""
    c.notify("pack.progress", {"id": job, "phase": "done", "bytes": 1, "files": 1})
    c.notify("stream.end", {"stream": sid})


def upload_and_spawn(c, m, on_spawn):
    """The revision's sandbox as an agent that unpacks what it gets: upload_tree answered, its
    transfer.done sent once the gateway ends the stream; proc.spawn answered with process 9 and
    two output streams, then @on_spawn(c, stdout_sid, stderr_sid)."""
    if m[0] == 0 and m[2] == "transfer.upload_tree":
        c.up = c.new_sid()
        c.answer(m, {"stream": c.up})
    elif m[0] == 2 and m[1] == "stream.end" and m[2].get("stream") == getattr(c, "up", None):
        c.notify("transfer.done", {"stream": c.up, "size": 1, "files": 1})
    elif m[0] == 0 and m[2] == "proc.spawn":
        out, err = c.new_sid(), c.new_sid()
        c.answer(m, {"id": 9, "pid": 4242, "stdin": None, "stdout": out, "stderr": err})
        on_spawn(c, out, err)


# --- the cases -----------------------------------------------------------------------------------

class AgentCase(unittest.TestCase):
    def setUp(self):
        self.agent = None
        self.gw = None

    def start(self, handler, extra=(), env=None, **agent_kw):
        """The fake agent, and a gateway (ingress on loopback) whose one sandbox is that agent."""
        self.agent = FakeAgent(handler, **agent_kw)
        data = tempfile.mkdtemp(prefix="sbxgw-data-")
        os.makedirs(os.path.join(data, "sandboxes"))
        now = int(time.time() * 1000)
        with open(os.path.join(data, "sandboxes", SBID + ".json"), "w") as f:
            json.dump({"id": SBID, "state": "ready", "created_ms": now,
                       "stop_at_ms": now + 3600000, "addr": self.agent.addr,
                       "backend_name": "addr", "backend": {}, "labels": {}}, f)
        self.gw = h.Gateway(backend="addr:" + self.agent.addr, data=data, env=env,
                            extra=["--http-listen", "127.0.0.1:0"] + list(extra))
        return self.gw

    def tearDown(self):
        # (a test that stopped the gateway itself checked its exit already)
        if self.gw is not None:
            self.assert_clean_exit(*self.stop_gateway())
        if self.agent is not None:
            self.agent.stop()
            self.assertEqual(self.agent.errors, [])

    def assert_clean_exit(self, rc, log):
        self.assertIn(rc, (0, -15), "sbx-gateway exit status %s:\n%s" % (rc, log[-4000:]))
        for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            self.assertNotIn(bad, log)

    def stop_gateway(self):
        """SIGTERM now; its exit status and its whole log."""
        gw, self.gw = self.gw, None
        rc = gw.stop(keep_data=True)
        with open(gw.logpath, errors="replace") as f:
            log = f.read()
        gw.discard()
        return rc, log

    def deploy(self, body=None):
        status, j = http(self.gw, "POST", "/api/v2/sandboxes/%s/deploy" % SBID,
                         body or {"app": "x"})
        self.assertEqual(status, 200, j)
        return j["revision_id"]

    def finished(self, rev, timeout=WAIT):
        """The revision once it succeeded or failed (an AssertionError after @timeout s)."""
        deadline = time.monotonic() + timeout
        while True:
            status, r = http(self.gw, "GET", "/api/v2/revisions/" + rev)
            self.assertEqual(status, 200, r)
            if r["status"] in ("succeeded", "failed"):
                return r
            if time.monotonic() > deadline:
                raise AssertionError("revision %s still %s after %d s: %r"
                                     % (rev, r["status"], timeout, r))
            time.sleep(0.05)

    def progress(self, rev):
        """The last RevisionProgress of a finished revision (its SSE replay)."""
        sse = SSE(self.gw, "/api/v2/revisions/%s/progress" % rev)
        try:
            return [ev for _, ev in sse.events()][-1]
        finally:
            sse.close()

    def logs(self, rev):
        """The messages of a finished revision's build log (its SSE replay)."""
        sse = SSE(self.gw, "/api/v2/revisions/%s/build_logs" % rev)
        try:
            return [ev["message"] for _, ev in sse.events()]
        finally:
            sse.close()


class TestShutdown(AgentCase):
    def test_stop_while_the_upload_end_waits_for_credit(self):
        # The revision's sandbox (the second connection) grants a window of one byte and no
        # credit after it: the whole archive and its end stay queued in libsbx. A SIGTERM then
        # frees the job before the link ends; the link's end must not hand the queued upload's
        # cancel to the freed job (MALLOC_PERTURB_ makes that a crash without a sanitizer).
        def handler(c, m):
            if m[0] == 0 and m[2] == "pack.create":
                pack_answer(c, m, archive=os.urandom(100000))
            elif m[0] == 0 and m[2] == "transfer.upload_tree":
                c.answer(m, {"stream": c.new_sid()})

        env = dict(os.environ, MALLOC_PERTURB_="165")
        self.start(handler, window=lambda n: 1 if n >= 2 else 1 << 20, env=env)
        rev = self.deploy()
        # One byte went out on the upload stream: the rest and the end are queued.
        self.agent.wait(lambda: [m for c in self.agent.conns if c.n >= 2 for m in c.got
                                 if m[0] == 3], "a data message on the upload stream")
        status, r = http(self.gw, "GET", "/api/v2/revisions/" + rev)
        self.assertEqual(r["status"], "building", r)
        self.assert_clean_exit(*self.stop_gateway())



class TestLogCaps(AgentCase):
    def test_alternating_pack_phases_log_once(self):
        # pack.progress is logged at a phase change; an agent that alternates phases made a
        # line of every note (revision.json then grows past what the next start loads).
        notes = []
        for i in range(20000):
            phase = ("scan", "build", "x")[i % 3]
            p = {"id": 1, "phase": phase, "bytes": 0, "files": 0}
            if phase == "build":
                p["exit"] = exit_map(1)
            notes.append(sbxwire.frame(sbxwire.pack([2, "pack.progress", p])))
        flood = b"".join(notes)

        def handler(c, m):
            if m[0] == 0 and m[2] == "pack.create":
                sid = c.new_sid()
                c.answer(m, {"id": 1, "archive": sid})
                c.send_raw(flood)
                c.notify("stream.end", {"stream": sid,
                                        "error": {"code": "EIO", "message": "test ends here"}})

        self.start(handler)
        rev = self.deploy()
        r = self.finished(rev)
        self.assertIn("test ends here", r["error"])
        msgs = self.logs(rev)
        self.assertEqual(msgs.count("packaging /home/app"), 1, msgs[:20])
        self.assertEqual(len([m for m in msgs if m.startswith("build command finished")]), 1,
                         msgs[:20])
        self.assertLess(len(msgs), 20, msgs[:20])
        # The deploy job's link asked for the gateway's window (GW_AGENT_RECV_WINDOW).
        self.assertEqual({m[3].get("recv_window") for _, m in self.agent.requests("hello")},
                         {64 << 10})

    def test_repeated_exit_logs_once(self):
        # The app "exits" 2000 times before its output ends: one line says so, not 2000.
        def on_spawn(c, out, err):
            c.send_raw(b"".join(sbxwire.frame(sbxwire.pack([2, "proc.exit", exit_map(9, 3)]))
                                for _ in range(2000)))
            c.notify("stream.end", {"stream": out})
            c.notify("stream.end", {"stream": err})

        def handler(c, m):
            if m[0] == 0 and m[2] == "pack.create":
                pack_answer(c, m)
            else:
                upload_and_spawn(c, m, on_spawn)

        self.start(handler)
        rev = self.deploy()
        r = self.finished(rev)
        self.assertIn("exited before it served HTTP (exit status 3)", r["error"])
        msgs = self.logs(rev)
        self.assertEqual(msgs.count("the app exited: exit status 3"), 1, msgs[-10:])
        self.assertLess(len(msgs), 20, msgs[:20])

class TestManifest(AgentCase):
    def manifest_fails(self, files_for, parts=1):
        """Deploy once per entry of @files_for (a list of file lists, one pack.create each, sent
        @parts times): the failed revisions, in order."""
        def handler(c, m):
            if m[0] == 0 and m[2] == "pack.create":
                files = files_for[len(self.agent.requests("pack.create")) - 1]
                sid = c.new_sid()
                job = sid
                c.answer(m, {"id": job, "archive": sid})
                part = sbxwire.frame(sbxwire.pack([2, "pack.manifest", {
                    "id": job, "part": 0, "last": False, "files": files}]))
                c.send_raw(part * parts)
                pack_answer_end(c, job, sid)

        self.start(handler)
        out = []
        for _ in files_for:
            r = self.finished(self.deploy())
            self.assertEqual(r["status"], "failed", r)
            out.append(r)
        return out

    def test_entry_strings_are_checked(self):
        # Every string of an entry is checked (PROTOCOL.md 19.5) before it is kept; an invalid
        # byte, which becomes a 3-byte U+FFFD, counts as the one byte sent. Entry 0 of each
        # part is valid (a path of the most bytes allowed), entry 1 is not.
        ok = {"path": "main.ts", "type": "file", "size": 1, "mode": 0o644, "sha256": "a" * 64}
        cases = [
            (dict(ok, path=b"\xff" * 4097), "files entry 1: path is longer than 4096 bytes"),
            ({k: v for k, v in ok.items() if k != "path"}, "files entry 1: path is missing"),
            (dict(ok, sha256="zz"), "files entry 1: sha256 is not 64 hex digits"),
            (dict(ok, sha256="g" * 64), "files entry 1: sha256 is not 64 hex digits"),
            (dict(ok, type="fifo"),
             'files entry 1: type is not one of "file", "dir", "symlink"'),
            (dict(ok, type="symlink", target="t" * 4097),
             "files entry 1: target is longer than 4096 bytes"),
            (dict(ok, path=5), "files entry 1: path is not a string"),
        ]
        revs = self.manifest_fails([[dict(ok, path=b"\xff" * 4096), e] for e, _ in cases])
        for r, (_, want) in zip(revs, cases):
            self.assertEqual(r["error"], "the agent's pack.manifest is malformed: " + want, r)
            self.assertEqual(r["error"], self.logs(r["id"])[-1])
            for name in ("manifest.json", "archive.tar.gz.tmp", "archive.tar.gz"):
                self.assertFalse(os.path.exists(os.path.join(self.gw.data, "revisions", r["id"],
                                                             name)), name)

    def test_manifest_budget(self):
        # Valid entries, 4000 bytes of invalid UTF-8 each (12000 kept): 64 MiB is reached in
        # the sixth 1000-entry part (the old code kept all ten parts, 120 MB).
        files = [{"path": b"\xff" * 3990 + b"%06d" % i, "type": "file", "size": 1,
                  "mode": 0o644} for i in range(1000)]
        r, = self.manifest_fails([files], parts=10)
        self.assertRegex(r["error"], r"^the agent's pack\.manifest is larger than 64 MiB "
                         r"\(5\d\d\d entries\)$")

class TestDeadlines(AgentCase):
    def test_agent_that_never_answers_hello(self):
        # Every deploy job of the sandbox waits on its link's hello: without a deadline they
        # stayed "building" for ever and held all 16 job slots (a 17th deploy: 429 for good).
        self.start(lambda c, m: None, hello=False, extra=["--agent-hello-timeout", "1s"])
        revs = [self.deploy() for _ in range(16)]
        status, j = http(self.gw, "POST", "/api/v2/sandboxes/%s/deploy" % SBID, {"app": "x"})
        self.assertEqual(status, 429, j)
        for rev in revs:
            r = self.finished(rev)
            self.assertEqual(r["error"], "the connection to the sandbox's agent ended: the agent "
                             "did not answer hello within 1 s", r)
        self.assertEqual(self.progress(revs[0])["preparing"]["status"], "errored")
        self.deploy()  # a slot is free again

    def test_each_stage_has_a_deadline(self):
        # An agent that answers hello and then nothing, stage by stage.
        archives = []  # the archive streams of the two packs that never end

        def hang(c, m):
            archives.append(pack_answer(c, m, end=False)[1])

        def handler(c, m):
            if m[0] == 0 and m[2] == "pack.create":
                n = len(self.agent.requests("pack.create"))
                if n == 1:  # answered only after the deadline
                    threading.Timer(1.5, hang, (c, m)).start()
                elif n == 2:
                    hang(c, m)  # the archive stream never ends
                elif n == 3:
                    pack_answer(c, m)  # then upload_tree is never answered
            elif m[0] == 0 and m[2] == "proc.spawn":
                if "stuck" in m[3]["argv"][2]:  # it runs, and never ends
                    c.answer(m, {"id": 7, "pid": 4242, "stdin": None, "stdout": c.new_sid(),
                                 "stderr": c.new_sid()})
            # the first install command's proc.spawn and upload_tree: never answered

        self.start(handler, extra=["--deploy-stage-timeout", "1s"])
        cases = [
            ({"app": "x", "mode": "local", "installCommand": "true"}, "installing",
             "the install command still ran"),
            ({"app": "x", "mode": "local", "installCommand": "stuck"}, "installing",
             "the install command still ran"),
            ({"app": "x"}, "building", "the agent was still building or packaging"),
            ({"app": "x"}, "building", "the agent was still building or packaging"),
            ({"app": "x"}, "deploying",
             "the archive was still being unpacked in the revision's sandbox"),
        ]
        for body, stage, waited in cases:
            t0 = time.monotonic()
            rev = self.deploy(body)
            r = self.finished(rev)
            self.assertGreaterEqual(time.monotonic() - t0, 0.9)
            self.assertEqual(r["error"], "the %s stage did not finish within 1 s (%s)"
                             % (stage, waited), r)
            self.assertEqual(self.progress(rev)[stage]["status"], "errored")
            self.assertEqual(self.logs(rev)[-1], r["error"])
            self.assertFalse(os.path.exists(os.path.join(self.gw.data, "revisions", rev,
                                                         "archive.tar.gz.tmp")))
        # The install command that ran was killed.
        self.agent.wait(lambda: [m for _, m in self.agent.requests("proc.kill")
                                 if m[3]["id"] == 7 and m[3]["signal"] in (9, "SIGKILL")],
                        "a proc.kill of the install command")
        # Both pack jobs that never ended were cancelled: the one answered too late and the one
        # whose archive never ended.
        self.agent.wait(lambda: len(archives) == 2 and set(archives) <= {
            m[2]["stream"] for _, m in self.agent.notes("stream.cancel")},
            "a stream.cancel of both archives")
        # The last one's sandbox was stopped with it.
        self.assertTrue(r["run_sandbox_id"])
        self.assertFalse(r["running"])

class TestFailedPacks(AgentCase):
    def test_a_failed_pack_is_cancelled_and_its_slot_freed(self):
        # The agent packs at most 4 jobs per connection; a cancelled job's slot frees a moment
        # after the cancel (its archive thread stops first). Jobs 1-4 hang until their building
        # deadline; job 5 waits for a slot meanwhile and then gets one. Before, the failed jobs
        # were never cancelled: job 5 failed with LIMIT max_packs, and so would every later one.
        live = set()
        lock = threading.Lock()

        def free(sid):
            with lock:
                live.discard(sid)

        def handler(c, m):
            if m[0] == 0 and m[2] == "pack.create":
                with lock:
                    if len(live) >= 4:
                        c.answer(m, error={"code": "LIMIT", "limit": "max_packs", "max": 4,
                                           "message": "too many pack jobs on this connection "
                                                      "(cap 4)"})
                        return
                    sid = c.new_sid()
                    live.add(sid)
                c.answer(m, {"id": sid, "archive": sid})
            elif m[0] == 2 and m[1] == "stream.cancel":
                threading.Timer(0.3, free, (m[2]["stream"],)).start()

        self.start(handler, extra=["--deploy-stage-timeout", "2s"])
        revs = [self.deploy() for _ in range(5)]
        for rev in revs:
            r = self.finished(rev)
            self.assertEqual(r["error"], "the building stage did not finish within 2 s (the "
                             "agent was still building or packaging)", r)
        msgs = self.logs(revs[4])
        self.assertTrue(any(m.startswith("waiting for a packing slot") for m in msgs), msgs)
        self.assertIn("the agent still counts a pack job that ended; asking again until it "
                      "frees the slot", msgs)
        self.agent.wait(lambda: len(self.agent.notes("stream.cancel")) == 5,
                        "a stream.cancel of each of the five archives")

class TestRequests(AgentCase):
    def test_revision_ids_that_are_not_utf8(self):
        # The router decodes %XX; the 404 quotes the id, which json_pack refused as invalid
        # UTF-8 (a 500 with an empty body). It is answered 404, the bad bytes as U+FFFD.
        self.start(lambda c, m: None)
        for rev in ("%C3", "%FF%FEabc", "a" * 62 + "%C3"):
            for what in ("", "/progress", "/timelines", "/build_logs"):
                status, j = http(self.gw, "GET", "/api/v2/revisions/" + rev + what)
                self.assertEqual(status, 404, (rev, what, j))
                self.assertEqual(j["code"], "REVISION_NOT_FOUND", j)
                self.assertIn("\ufffd", j["message"], j)
        # A body that is not UTF-8: 400 naming what is wrong.
        status, j = http(self.gw, "POST", "/api/v2/sandboxes/%s/deploy" % SBID,
                         raw=b'{"app": "x\xff"}')
        self.assertEqual(status, 400, j)
        self.assertEqual(j["code"], "BAD_REQUEST", j)
        self.assertIn("not JSON", j["message"])

if __name__ == "__main__":
    unittest.main(verbosity=2)
