"""The real Deno Sandbox SDK (npm:@deno/sandbox@0.13.2, pinned by tests/gateway/sdk/deno.lock)
against sbx-gateway: each behaviour is one small program in tests/gateway/sdk/, run with the
pinned deno; hostile input goes through a raw WebSocket.

    python3 test_sdk.py CLASS            run one class; exit 77 when all its tests skipped
    python3 test_sdk.py --build-image    build $SBX_BUILD/tests/gateway/gateway.ext4 (fixture)

Classes:
    TestHarness   deno found, the SDK cached offline (--frozen), every program type-checks, the
                  agent and the workload user come up (no gateway needed)
    TestAddr      the SDK programs, gateway --backend addr:unix:SOCK (a root sbx-agent, a real
                  user made by the test as the workload user; for test_deno_* the agent's PATH
                  has a copy of the pinned deno the workload user can run)
    TestHostile   raw WebSocket JSON-RPC: malformed JSON, unknown method, wrong param types, huge
                  ids, a reused stream id; answers are result:{error} and the gateway keeps serving
    TestVM        the vm backend with the gateway image: the docs' getting-started programs, a
                  lifecycle (memory, labels, timeout, close, connect, kill: its QEMU is gone),
                  sudo/.text()/.json(), a VM killed mid-session, a restart of the gateway,
                  deno.run and the REPL with the image's deno
Environment: SBX_BUILD (default SRC/build), SBX_DENO_VERSION.
"""
import base64
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import unittest

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sdkharness as h  # noqa: E402

ID_RE = re.compile(r"^sbx_[a-z]{3}_[0-9a-hjkmnp-z]{20}$")


class SDKCase(unittest.TestCase):
    def run_ok(self, name, timeout=120, env=None, args=(), gw=None):
        gw = gw or self.gw
        rc, out, err = h.run_program(gw, name, timeout=timeout, env=env, args=args)
        if rc != 0:
            self.fail("%s exited %s\n--- stdout\n%s\n--- stderr\n%s\n--- gateway log (tail)\n%s"
                      % (name, rc, out[-4000:], err[-6000:], gw.logtext()[-4000:]))
        return out, err


# --- without a gateway ------------------------------------------------------------------------

class TestHarness(unittest.TestCase):
    def test_deno_is_the_pinned_version(self):
        import subprocess
        out = subprocess.run([h.deno(), "--version"], stdout=subprocess.PIPE, text=True,
                             check=True).stdout
        self.assertTrue(out.startswith("deno %s " % h.DENO_VERSION), out)

    def test_sdk_cached_frozen_offline(self):
        h.cache_deps()
        with open(os.path.join(h.SDK_DIR, "deno.lock")) as f:
            lock = json.load(f)
        self.assertEqual(lock["specifiers"]["npm:@deno/sandbox@%s" % h.SDK_VERSION], h.SDK_VERSION)
        self.assertEqual(lock["npm"]["@deno/sandbox@0.13.2"]["integrity"],
                         "sha512-hteIwQ/mqkJHLrxtcONSCntziOAEWZz0Q2m/Ps4E+HjimLaQxsqpBU0Xn6hin23y"
                         "f2wOCls336PG9epbMliUOQ==")
        with open(h.SDK_CONFIG) as f:
            self.assertEqual(json.load(f)["nodeModulesDir"], "none")
        self.assertFalse(os.path.exists(os.path.join(h.SDK_DIR, "node_modules")))
        # Offline: an SDK program starts with --cached-only and gets as far as the network
        # (a closed port), i.e. every module resolved from DENO_DIR.
        rc, out, err = h.run_program(None, "bad_token.ts", timeout=60, env={
            "DENO_DEPLOY_TOKEN": "ddo_" + "1" * 40,
            "DENO_SANDBOX_ENDPOINT": "http://127.0.0.1:1",
            "DENO_DEPLOY_ENDPOINT": "http://127.0.0.1:1"})
        self.assertNotEqual(rc, 0)
        self.assertIn("ECONNREFUSED", err)
        self.assertNotIn("cached-only", err)
        self.assertNotIn("NotCapable", err)

    def test_programs_typecheck(self):
        rc, out = h.typecheck()
        self.assertEqual(rc, 0, out)

    def test_typecheck_catches_errors(self):
        d = tempfile.mkdtemp(prefix="sbxgw-check-")
        bad = os.path.join(d, "probe.ts")
        with open(bad, "w") as f:
            f.write('import { Sandbox } from "@deno/sandbox";\n'
                    'const s = await Sandbox.create();\nconst n: number = s.id;\n')
        try:
            rc, out = h.typecheck([bad])
        finally:
            shutil.rmtree(d)
        self.assertNotEqual(rc, 0, out)
        self.assertIn("TS2322", out)

    def test_agent_and_workload_user(self):
        u = h.WorkloadUser()
        try:
            self.assertTrue(os.path.isdir(u.home))
            self.assertEqual(os.stat(u.home).st_uid, u.uid)
            import pwd
            self.assertEqual(pwd.getpwnam(u.name).pw_shell, "/bin/bash")
            agent = h.start_agent()
            try:
                c = agent.connect()
                r = c.call("proc.spawn", {"argv": ["id", "-un"], "uid": u.uid, "gid": u.gid})
                self.assertIn("pid", r)
                c.close()
            finally:
                agent.stop()
        finally:
            u.close()


# --- the addr backend -------------------------------------------------------------------------

class AddrCase(SDKCase):
    """A fresh agent and gateway per test; one workload user per class."""

    @classmethod
    def setUpClass(cls):
        h.cache_deps()
        cls.user = h.WorkloadUser()

    @classmethod
    def tearDownClass(cls):
        cls.user.close()

    def setUp(self):
        # The test_deno_* tests run `deno` in the sandbox: the pinned one on the agent's PATH.
        self.agent = h.start_agent(with_deno=self._testMethodName.startswith("test_deno"))
        try:
            self.gw = h.Gateway(backend="addr:" + self.agent.addr, user=self.user.name,
                                cwd=self.user.home)
        except BaseException:
            self.agent.stop()
            raise
        self.assertRegex(self.gw.token, r"^ddo_[0-9a-z]{40}$")

    def tearDown(self):
        alive = self.gw.alive()
        log = self.gw.logtext()
        rc = self.gw.stop()
        self.agent.stop()
        self.assertTrue(alive, "sbx-gateway died during the test:\n" + log[-4000:])
        self.assertIn(rc, (0, -15), "sbx-gateway exit status %s on SIGTERM:\n%s" % (rc, log[-4000:]))
        for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            self.assertNotIn(bad, log)

    def env(self, **kw):
        e = {"SBXGW_HOME": self.user.home}
        e.update(kw)
        return e

    def run_ok(self, name, timeout=120, env=None, args=()):
        return super().run_ok(name, timeout, self.env(**(env or {})), args)


class TestAddr(AddrCase):
    def test_sh(self):
        out, _ = self.run_ok("sh_basic.ts")
        self.assertIn("sh_basic ok", out)

    def test_spawn_stdin_stdout(self):
        self.run_ok("spawn_stdin.ts")

    def test_spawn_streams_before_exit(self):
        out, _ = self.run_ok("spawn_stream.ts")
        self.assertIn("spawn_stream ok", out)

    def test_spawn_kill_and_output(self):
        self.run_ok("spawn_kill.ts")

    def test_env(self):
        self.run_ok("env.ts")

    def test_fs(self):
        self.run_ok("fs_basic.ts")

    def test_fs_upload_download(self):
        self.run_ok("fs_transfer.ts")

    def test_fs_umask_utime_lock(self):
        self.run_ok("fs_more.ts")

    def test_close_connect_kill(self):
        out, _ = self.run_ok("reconnect.ts")
        self.assertIn("reconnect ok", out)

    def test_list_labels(self):
        self.run_ok("list.ts")

    def test_wrong_token(self):
        self.run_ok("bad_token.ts")

    def test_deno_run(self):
        out, _ = self.run_ok("deno_run.ts")
        self.assertIn("deno_run ok", out)

    def test_deno_watch(self):
        out, _ = self.run_ok("deno_watch.ts")
        self.assertIn("deno_watch ok", out)

    def test_deno_repl(self):
        out, _ = self.run_ok("deno_repl.ts")
        self.assertIn("deno_repl ok", out)

    def test_token_file(self):
        # The token lives in DATA/token (gw.h).
        self.assertTrue(os.path.isfile(os.path.join(self.gw.data, "token")),
                        os.listdir(self.gw.data))


# --- hostile input on a raw WebSocket --------------------------------------------------------

class TestPythonShape(AddrCase):
    """The Python SDK's create config (timeout as a string, env as a map, volumes as a dict,
    extra keys) and its conventions (ids from 1, the `download` method it sends)."""

    def test_python_config_and_calls(self):
        cfg = {"memory_mb": 1280, "debug": False, "region": "ord", "timeout": "5m",
               "env": {"SBXGW_PY": "from-config"}, "labels": {"sdk": "py"}, "volumes": {},
               "allow_net": None, "secrets": None, "root": None}
        ws = h.open_create_ws(self.gw, cfg)
        try:
            sid = ws.headers["x-deno-sandbox-id"]
            self.assertRegex(sid, ID_RE)
            m = ws.call("spawn", {"command": "sh", "args": ["-c", "printf %s \"$SBXGW_PY\""],
                                  "stdout": "piped", "stderr": "null", "stdin": "null"}, rid=1)
            out_id = m["result"]["ok"]["stdoutStreamId"]
            got = b""
            while True:
                n = ws.recv_json(30)
                p = n.get("params") or {}
                if p.get("streamId") != out_id:
                    continue
                if n["method"] == "$sandbox.stream.enqueue":
                    got += base64.b64decode(p["data"])
                elif n["method"] == "$sandbox.stream.end":
                    break
            self.assertEqual(got, b"from-config")
            m = ws.call("download", {"localPath": "/tmp/x", "sandboxPath": "/etc/hostname"},
                        rid=2)
            self.assertEqual(m["result"]["error"]["constructorName"], "NotSupported", m)
        finally:
            ws.close()
        # A duration timeout: closing the creating socket leaves it running.
        lst = self.gw.rest("GET", "/api/v3/sandboxes")
        mine = [x for x in lst if x["id"] == sid]
        self.assertEqual(len(mine), 1, lst)
        self.assertEqual(mine[0]["status"], "running", mine)
        self.assertEqual(mine[0].get("labels"), {"sdk": "py"}, mine)

    def test_python_frames(self):
        """What the Python SDK's transport does differently, frame by frame: request and client
        stream ids both from 1 (the same number in two namespaces), no text "ping" keepalive
        (the gateway's own WebSocket pings keep the session), a 1 MiB cap on every message it
        receives (websockets' default max_size: stream data must come in smaller messages), and
        DELETE /api/v3/sandboxes/<id> closing the session with 1000."""
        cap = 1 << 20
        ws = h.open_create_ws(self.gw, {"memory_mb": 1280, "timeout": "5m"})
        pings = []
        orig_send_frame = ws.send_frame

        def send_frame(opcode, payload, fin=True):
            if opcode == 0xA:
                pings.append(time.monotonic())  # a pong answers a ping of the gateway's
            return orig_send_frame(opcode, payload, fin)
        ws.send_frame = send_frame
        try:
            sid = ws.headers["x-deno-sandbox-id"]
            ws.send_json({"jsonrpc": "2.0", "method": "$sandbox.stream.start",
                          "params": {"streamId": 1}})
            m = ws.call("spawn", {"command": "cat", "stdinStreamId": 1, "stdout": "piped",
                                  "stderr": "null"}, rid=1)
            self.assertIn("ok", m["result"], m)
            out_id = m["result"]["ok"]["stdoutStreamId"]
            data = os.urandom(3 << 20)
            for off in range(0, len(data), 512 << 10):  # what the Python SDK sends per chunk
                ws.send_json({"jsonrpc": "2.0", "method": "$sandbox.stream.enqueue",
                              "params": {"streamId": 1, "data": base64.b64encode(
                                  data[off:off + (512 << 10)]).decode()}})
            ws.send_json({"jsonrpc": "2.0", "method": "$sandbox.stream.end",
                          "params": {"streamId": 1}})
            got, largest = b"", 0
            while True:
                op, raw = ws.recv(60)
                largest = max(largest, len(raw))
                n = json.loads(raw)
                p = n.get("params") or {}
                if p.get("streamId") != out_id:
                    continue
                if n["method"] == "$sandbox.stream.enqueue":
                    got += base64.b64decode(p["data"])
                elif n["method"] == "$sandbox.stream.end":
                    break
            self.assertEqual(got, data, "stdout of cat differs from its stdin")
            self.assertLessEqual(largest, cap, "a message over the Python SDK's 1 MiB cap")
            m = ws.call("processWait", {"pid": m["result"]["ok"]["pid"]}, rid=2)
            self.assertEqual(m["result"]["ok"]["code"], 0, m)
            # Idle past the gateway's ping interval (20 s) without any text "ping".
            time.sleep(23)
            m = ws.call("envGet", {"key": "PATH"}, rid=3)
            self.assertIn("ok", m["result"], m)
            self.assertGreaterEqual(len(pings), 1, "the gateway never pinged an idle socket")
            self.gw.rest("DELETE", "/api/v3/sandboxes/" + sid)
            with self.assertRaises(h.WSClosed) as cm:
                while True:
                    ws.recv(30)
            self.assertEqual(cm.exception.code, 1000)
        finally:
            ws.close()


class TestHostile(AddrCase):
    def setUp(self):
        super().setUp()
        self.ws = h.open_create_ws(self.gw, {"memory_mb": 1280})
        self.assertRegex(self.ws.headers.get("x-deno-sandbox-id", ""), ID_RE)

    def tearDown(self):
        self.ws.close()
        super().tearDown()

    def assertResultError(self, m, what):
        self.assertNotIn("error", m, "%s: a JSON-RPC error member (the SDK cannot take it): %r"
                         % (what, m))
        self.assertIn("result", m, "%s: %r" % (what, m))
        err = m["result"].get("error") if isinstance(m["result"], dict) else None
        self.assertIsInstance(err, dict, "%s: want result:{error:{...}}: %r" % (what, m))
        self.assertIsInstance(err.get("message"), str, "%s: %r" % (what, m))
        self.assertIsInstance(err.get("constructorName"), str, "%s: %r" % (what, m))
        return err

    def probe(self):
        """A valid call answered: the session still serves. Returns what came before it."""
        self.ws.notes = []
        m = self.ws.call("envGet", {"key": "PATH"})
        self.assertEqual(m.get("jsonrpc"), "2.0", m)
        self.assertIn("ok", m["result"], m)
        return [n for n in self.ws.notes if isinstance(n, dict) and "id" in n]

    def test_valid_call(self):
        m = self.ws.call("envSet", {"key": "SBXGW_X", "value": "1"})
        self.assertEqual(m["result"], {"ok": None}, m)
        self.probe()

    def test_text_ping(self):
        self.ws.send_text("ping")
        self.probe()  # recv_json skips the optional "pong"

    def test_malformed_json(self):
        for junk in ("{not json", "", "[", '{"jsonrpc":"2.0","id":', "\"just a string\"",
                     "[1,2,3]", "null", '{"jsonrpc":"2.0"}'):
            self.ws.send_text(junk)
            # No id to answer: nothing is sent (an answer with id null makes the JS SDK drop
            # the whole connection, close 4001).
            self.assertEqual(self.probe(), [], junk)

    def test_malformed_json_with_an_id(self):
        """A request that is not valid JSON but shows its id is answered to that id (the
        caller's call fails instead of hanging), as a result-level error."""
        self.ws.send_text('{"jsonrpc":"2.0","id":4711,"method":"envGet","params":{"key":"A",}}')
        m = self.ws.answer(4711)
        err = self.assertResultError(m, "malformed with an id")
        self.assertEqual(err["constructorName"], "SyntaxError", err)
        self.probe()

    def test_nul_in_strings(self):
        """NUL is a valid JSON string character: file content with NUL is written and read back;
        a NUL where a C string is needed (a path, an env value) is a TypeError for that call."""
        m = self.ws.call("writeTextFile", {"path": "nul.txt", "content": "a\u0000b"})
        self.assertEqual(m["result"], {"ok": None}, m)
        m = self.ws.call("readTextFile", {"path": "nul.txt"})
        self.assertEqual(m["result"], {"ok": "a\u0000b"}, m)
        m = self.ws.call("stat", {"path": "nul\u0000.txt"})
        self.assertEqual(self.assertResultError(m, "NUL in a path")["constructorName"],
                         "TypeError")
        m = self.ws.call("envSet", {"key": "SBXGW_NUL", "value": "x\u0000y"})
        self.assertResultError(m, "NUL in an env value")
        self.probe()

    def test_stdin_of_a_process_that_exits_or_is_killed(self):
        """A process with piped stdin that ends before its stdin stream does (it exits at once,
        it closes stdin, it is killed): the gateway keeps serving (this freed a stream twice)."""
        for sid, argv in ((101, ["true"]), (102, ["sh", "-c", "exec 0<&-; sleep 1"]),
                          (103, ["sleep", "600"])):
            self.ws.send_json({"jsonrpc": "2.0", "method": "$sandbox.stream.start",
                               "params": {"streamId": sid}})
            m = self.ws.call("spawn", {"command": argv[0], "args": argv[1:],
                                       "stdinStreamId": sid, "stdout": "null",
                                       "stderr": "null"})
            pid = m["result"]["ok"]["pid"]
            if argv[0] == "sleep":
                m = self.ws.call("processKill", {"pid": pid, "signal": "SIGKILL"})
                self.assertEqual(m["result"], {"ok": None}, m)
            m = self.ws.call("processWait", {"pid": pid})
            self.assertIn("ok", m["result"], m)
            # Writing on after the end: dropped or cancelled toward us, never a crash.
            self.ws.send_json({"jsonrpc": "2.0", "method": "$sandbox.stream.enqueue",
                               "params": {"streamId": sid, "data": "aGkK"}})
            self.ws.send_json({"jsonrpc": "2.0", "method": "$sandbox.stream.end",
                               "params": {"streamId": sid}})
            self.probe()

    def test_deno_watch_paths(self):
        """spawnDeno with watch paths: the --watch=a,b flag was built in a buffer sized by the
        number of paths instead of the flag's length (fuzz_gw_jsonrpc, ASan heap overflow)."""
        m = self.ws.call("spawnDeno", {"entrypoint": "/nonexistent/sbxgw_main.ts",
                                       "watch": ["/tmp", "/t"], "stdout": "null",
                                       "stderr": "null"})
        self.assertIn("ok", m["result"], m)
        pid = m["result"]["ok"]["pid"]
        self.assertEqual(m["result"]["ok"].get("watcherId"), "watcher-%d" % pid, m)
        m = self.ws.call("processKill", {"pid": pid, "signal": "SIGKILL"})
        self.assertEqual(m["result"], {"ok": None}, m)
        self.ws.call("processWait", {"pid": pid})
        self.probe()

    def test_stream_error_twice(self):
        """Two $sandbox.stream.error on a stream no call claimed yet: the second replaces the
        first (the first was leaked, fuzz_gw_jsonrpc), and a claim gets the error."""
        self.ws.send_json({"jsonrpc": "2.0", "method": "$sandbox.stream.start",
                           "params": {"streamId": 201}})
        for msg in ("first", "second"):
            self.ws.send_json({"jsonrpc": "2.0", "method": "$sandbox.stream.error",
                               "params": {"streamId": 201,
                                          "error": {"name": "Error", "message": msg}}})
        m = self.ws.call("writeFile", {"path": "/tmp/sbxgw-stream-error-twice",
                                       "contentStreamId": 201})
        self.assertIn("result", m, m)
        self.assertNotIn("ok", m["result"], m)
        self.probe()

    def test_invalid_utf8_text_frame(self):
        self.ws.send_frame(0x1, b'{"jsonrpc":"2.0","id":900,"method":"envGet","params":{"key":"\xff"}}')
        try:
            self.probe()
        except h.WSClosed as e:
            # RFC 6455 8.1: closing with 1007 is the other correct answer.
            self.assertEqual(e.code, 1007, e)

    def test_unknown_method(self):
        m = self.ws.call("noSuchMethod", {"a": 1})
        self.assertResultError(m, "unknown method")
        m = self.ws.call("$sandbox.stream.start", {"streamId": 1})  # a notification as a request
        self.assertNotIn("error", m, m)
        self.probe()

    def test_wrong_param_types(self):
        for method, params in (("readFile", {"path": 42}), ("spawn", {"command": ["ls"]}),
                               ("spawn", {"command": "ls", "stdout": "maybe", "stderr": "null"}),
                               ("envSet", "not an object"), ("envGet", {"key": None}),
                               ("processWait", {"pid": "1"}), ("processKill", {"pid": -1}),
                               ("mkdir", {}), ("writeFile", {"path": "/tmp/x", "content": "@@"}),
                               ("fileRead", {"rid": 1e300, "length": -5})):
            m = self.ws.call(method, params)
            self.assertResultError(m, "%s %r" % (method, params))
        self.probe()

    def test_huge_ids(self):
        big = 2 ** 53 + 1
        m = self.ws.call("envGet", {"key": "PATH"}, rid=big)
        self.assertEqual(m["id"], big, "ids up to 2^63 are echoed exactly")
        self.assertIn("ok", m["result"])
        for rid in (10 ** 30, -(10 ** 30), 1.5, "a-string-id", 1e308):
            self.ws.send_json({"jsonrpc": "2.0", "id": rid, "method": "envGet",
                               "params": {"key": "PATH"}})
            for m in self.probe():
                if "result" in m and "ok" in m["result"]:
                    self.assertEqual(m["id"], rid, m)  # served: with its id
                else:
                    self.assertResultError(m, "id %r" % rid)

    def test_reused_stream_id(self):
        ws = self.ws
        ws.send_json({"jsonrpc": "2.0", "method": "$sandbox.stream.start",
                      "params": {"streamId": 7}})
        r1 = ws.call("spawn", {"command": "cat", "stdinStreamId": 7, "stdout": "piped",
                               "stderr": "null"})
        self.assertIn("ok", r1["result"], r1)
        pid, out_id = r1["result"]["ok"]["pid"], r1["result"]["ok"]["stdoutStreamId"]
        # The same id again while it is in use: a second start, a second claim.
        ws.send_json({"jsonrpc": "2.0", "method": "$sandbox.stream.start",
                      "params": {"streamId": 7}})
        r2 = ws.call("spawn", {"command": "cat", "stdinStreamId": 7, "stdout": "piped",
                               "stderr": "null"})
        if "ok" in r2["result"]:
            # Accepted as a fresh stream: then it must behave as one; end it too.
            pid2 = r2["result"]["ok"]["pid"]
        else:
            self.assertResultError(r2, "a second spawn claiming stream 7")
            pid2 = None
        ws.send_json({"jsonrpc": "2.0", "method": "$sandbox.stream.enqueue",
                      "params": {"streamId": 7, "data": base64.b64encode(b"abc\n").decode()}})
        ws.send_json({"jsonrpc": "2.0", "method": "$sandbox.stream.end",
                      "params": {"streamId": 7}})
        w = ws.call("processWait", {"pid": pid}, timeout=30)
        self.assertEqual(w["result"].get("ok", {}).get("code"), 0, w)
        got = b""
        for n in ws.notes:
            p = n.get("params") or {}
            if n.get("method") == "$sandbox.stream.enqueue" and p.get("streamId") == out_id:
                got += base64.b64decode(p["data"])
        self.assertEqual(got, b"abc\n", ws.notes)
        if pid2 is not None:
            ws.call("processKill", {"pid": pid2, "signal": "SIGKILL"})
        self.probe()

    def test_bad_data_on_a_claimed_stream_fails_its_write(self):
        """Stream data that is not base64 cancels the client stream; the writeFile that claimed
        it fails at once, as on the client's own stream error (it waited for the session's end,
        and its state was never freed)."""
        ws = self.ws
        ws.send_json({"jsonrpc": "2.0", "method": "$sandbox.stream.start",
                      "params": {"streamId": 9}})
        rid = ws.next_id
        ws.next_id += 1
        ws.send_json({"jsonrpc": "2.0", "id": rid, "method": "writeFile",
                      "params": {"path": "bad-stream.txt", "contentStreamId": 9}})
        ws.send_json({"jsonrpc": "2.0", "method": "$sandbox.stream.enqueue",
                      "params": {"streamId": 9, "data": base64.b64encode(b"abc").decode()}})
        ws.send_json({"jsonrpc": "2.0", "method": "$sandbox.stream.enqueue",
                      "params": {"streamId": 9, "data": 5}})
        m = ws.answer(rid, timeout=30)
        self.assertResultError(m, "writeFile whose content stream sent a number")
        self.assertIn("base64", m["result"]["error"]["message"], m)
        seen = list(ws.notes)
        while not any(n.get("method") == "$sandbox.stream.cancel" and
                      (n.get("params") or {}).get("streamId") == 9 for n in seen):
            seen.append(ws.recv_json(10))  # the cancel, sent after the answer
        self.probe()

    def test_unclaimed_and_unknown_stream_notifications(self):
        for method, params in (("$sandbox.stream.enqueue", {"streamId": 999, "data": "QUJD"}),
                               ("$sandbox.stream.end", {"streamId": 998}),
                               ("$sandbox.stream.cancel", {"streamId": 2 ** 50, "reason": None}),
                               ("$sandbox.stream.enqueue", {"streamId": "x", "data": 5}),
                               ("$sandbox.nope", {})):
            self.ws.send_json({"jsonrpc": "2.0", "method": method, "params": params})
        self.probe()

    def test_wrong_token_handshake(self):
        with self.assertRaises(h.HandshakeError) as cm:
            h.open_create_ws(self.gw, {}, token="ddo_" + "0" * 40)
        self.assertEqual(cm.exception.status, 401)
        self.assertEqual(json.loads(cm.exception.body)["code"], "INVALID_TOKEN")
        self.probe()


# --- the vm backend -------------------------------------------------------------------------

class TestVM(SDKCase):
    """The gateway image (build/tests/gateway/gateway.ext4), one gateway for the class."""

    @classmethod
    def setUpClass(cls):
        if not os.path.exists(h.GATEWAY_IMAGE):
            raise unittest.SkipTest("%s missing (the gateway.image fixture builds it: "
                                    "python3 test_sdk.py --build-image)" % h.GATEWAY_IMAGE)
        h.cache_deps()
        cls.gw = h.Gateway(image=h.GATEWAY_IMAGE, extra=("--http-listen", "127.0.0.1:0"))
        m = re.findall(r"ingress on (127\.0\.0\.1:\d+)", cls.gw.logtext())
        if not m:
            cls.gw.stop()
            raise AssertionError("the gateway logged no ingress address")
        cls.ingress = m[-1]

    @classmethod
    def tearDownClass(cls):
        log = cls.gw.logtext()
        rc = cls.gw.stop(keep_data=True)
        # Every test ends its sandboxes ("session" ones die with their socket, the others are
        # killed): nothing of this gateway may still run.
        left = cls.gw.qemu_pids()
        cls.gw.discard()
        if rc not in (0, -15):
            raise AssertionError("sbx-gateway exit status %s:\n%s" % (rc, log[-4000:]))
        if left:
            raise AssertionError("QEMU processes outlived the gateway: %s" % left)

    def test_getting_started_1_ls(self):
        out, _ = self.run_ok("vm_getting_started1.ts", timeout=180)
        self.assertIn("bin", out)
        self.assertRegex(out, r"(?m)^total ")

    def test_deno_run_in_vm(self):
        # The image's /usr/local/bin/deno, as the `app` user.
        out, _ = self.run_ok("deno_run.ts", timeout=300)
        self.assertIn("deno_run ok", out)

    def test_deno_repl_in_vm(self):
        out, _ = self.run_ok("deno_repl.ts", timeout=300)
        self.assertIn("deno_repl ok", out)

    def test_getting_started_2_deno_hello(self):
        out, _ = self.run_ok("vm_getting_started2.ts", timeout=300)
        self.assertIn("Hello from the sandbox 2", out)

    def test_seed_deploy_workflow(self):
        """Scaffold, `deno task build`, serve, exposeHttp and reach it from here; deploy with
        live build logs; the revision (a second VM) answers through the ingress."""
        out, err = "", ""
        try:
            out, err = self.run_ok("vm_seed_deploy.ts", timeout=600,
                                   env={"SBXGW_INGRESS": self.ingress})
            self.assertIn("vm_seed_deploy ok", out)
            steps = set(re.findall(r"(?m)^LOG \S+ (\w+) ", out))
            self.assertTrue({"installing", "building", "deploying"} <= steps
                            or {"building", "deploying"} <= steps, steps)
            self.assertIn("build step done", out)  # the build's own output, in the logs
        finally:
            # The revision runs in a VM of its own with a timeout: end it with the test.
            for rid in re.findall(r"(?m)^RUN_SANDBOX (\S+)$", out):
                try:
                    self.gw.rest("DELETE", "/api/v3/sandboxes/" + rid)
                except OSError:
                    pass
            deadline = time.monotonic() + 60
            while len(self.gw.qemu_pids()) > 0 and time.monotonic() < deadline:
                time.sleep(0.5)

    def test_lifecycle(self):
        before = set(self.gw.qemu_pids())
        out, _ = self.run_ok("vm_lifecycle_a.ts", timeout=300)
        m = re.search(r"(?m)^ID (\S+)$", out)
        self.assertIsNotNone(m, out)
        sid = m.group(1)
        self.assertRegex(sid, ID_RE)
        mine = set(self.gw.qemu_pids()) - before
        self.assertEqual(len(mine), 1, "one new QEMU for the duration sandbox, alive after "
                         "close: %s" % mine)
        (pid,) = mine
        out, _ = self.run_ok("vm_lifecycle_b.ts", timeout=180, env={"SBXGW_ID": sid})
        self.assertIn("killed", out)
        deadline = time.monotonic() + 30
        while os.path.exists("/proc/%d" % pid) and pid in self.gw.qemu_pids():
            # A kill is asynchronous past the SDK's DELETE: poll for the process' end.
            self.assertLess(time.monotonic(), deadline, "QEMU %d still runs 30 s after kill()"
                            % pid)
            time.sleep(0.1)

    def test_sudo_text_json(self):
        out, _ = self.run_ok("vm_sudo.ts", timeout=180)
        self.assertIn("sudo ok", out)

    def wait_gone(self, pid, what, timeout=30):
        deadline = time.monotonic() + timeout
        while os.path.exists("/proc/%d" % pid) and pid in self.gw.qemu_pids():
            self.assertLess(time.monotonic(), deadline, "QEMU %d %s" % (pid, what))
            time.sleep(0.1)

    def test_vm_dies_mid_session(self):
        """QEMU killed under a live session: the SDK's socket is closed with 1011 and a reason
        that says the VM stopped; the sandbox is listed as stopped, its console log is kept,
        and a connect is refused."""
        before = set(self.gw.qemu_pids())
        ws = h.open_create_ws(self.gw, config={"labels": {"t": "dies"}})
        sid = ws.headers["x-deno-sandbox-id"]
        self.assertRegex(sid, ID_RE)
        r = ws.call("spawn", {"command": "sleep", "args": ["600"], "stdout": "piped",
                              "stderr": "piped"})
        self.assertIn("ok", r["result"], r)
        (pid,) = set(self.gw.qemu_pids()) - before
        os.kill(pid, signal.SIGKILL)
        with self.assertRaises(h.WSClosed) as cm:
            for _ in range(100):
                ws.recv(60)  # the stream errors, then the close
        self.assertEqual(cm.exception.code, 1011, cm.exception.reason)
        self.assertRegex(cm.exception.reason, r"(?i)stopped|died|exited")
        lst = self.gw.rest("GET", "/api/v2/sandboxes?labels[t]=dies")
        self.assertEqual([(x["id"], x["status"]) for x in lst], [(sid, "stopped")])
        self.assertTrue(os.path.exists(os.path.join(self.gw.data, "vms", sid, "console.log")))
        with self.assertRaises(h.HandshakeError) as cm2:
            h.RawWS(self.gw.host, self.gw.port, "/api/v3/sandbox/%s/connect" % sid,
                    {"authorization": "Bearer " + self.gw.token})
        self.assertEqual(cm2.exception.status, 404)

    def test_gateway_restart_keeps_duration_sandbox(self):
        """A sandbox with a duration timeout and a process in it outlives a restart of the
        gateway: the new gateway (same data dir) serves it, the process still runs."""
        gw = h.Gateway(image=h.GATEWAY_IMAGE)
        try:
            ws = h.open_create_ws(gw, config={"stop_at_ms": int(time.time() * 1000) + 600000})
            sid = ws.headers["x-deno-sandbox-id"]
            r = ws.call("spawn", {"command": "bash", "args": ["-c", "exec -a tickloop bash -c "
                                  "'while :; do date +%s >> /tmp/tick; sleep 0.2; done'"],
                                  "stdout": "null", "stderr": "null"})
            self.assertIn("ok", r["result"], r)
            ws.close()
            (pid,) = gw.qemu_pids()
            self.assertEqual(gw.stop(keep_data=True), 0)
            self.assertTrue(os.path.exists("/proc/%d" % pid), "the VM died with the gateway")
            gw = h.Gateway(image=h.GATEWAY_IMAGE, data=gw.data)
            self.assertEqual(gw.qemu_pids(), [pid])
            out, _ = self.run_ok("vm_restart_b.ts", timeout=180, env={"SBXGW_ID": sid}, gw=gw)
            self.assertIn("still ticking", out)
            deadline = time.monotonic() + 30
            while os.path.exists("/proc/%d" % pid):
                self.assertLess(time.monotonic(), deadline, "QEMU still runs after kill()")
                time.sleep(0.1)
        finally:
            for p in gw.qemu_pids():
                os.kill(p, signal.SIGKILL)
            gw.stop()
            shutil.rmtree(gw.data, ignore_errors=True)

    def test_boot_failure(self):
        """An image whose VM cannot boot (its stage-1 initramfs is garbage, so the kernel panics):
        the create is answered 502 SANDBOX_BOOT_FAILED with the panic from the console, never a
        hang, and no QEMU is left behind."""
        tmp = tempfile.mkdtemp(prefix="sbxgw-badimg-")
        try:
            bad = os.path.join(tmp, "bad.ext4")
            with open(bad, "wb") as f:
                f.truncate(64 << 20)
            manifest = open(h.GATEWAY_IMAGE + ".manifest").read()
            shutil.copyfile(h.GATEWAY_IMAGE + ".manifest", bad + ".manifest")
            m = re.search(r"(?m)^# initrd: (\S+)$", manifest)
            self.assertIsNotNone(m, "no initrd line in the image's manifest")
            with open(os.path.join(tmp, m.group(1)), "wb") as f:
                f.write(os.urandom(100000))
            gw = h.Gateway(image=bad)
            try:
                t0 = time.monotonic()
                with self.assertRaises(h.HandshakeError) as cm:
                    h.open_create_ws(gw)
                self.assertLess(time.monotonic() - t0, 120)
                self.assertEqual(cm.exception.status, 502)
                body = json.loads(cm.exception.body)
                self.assertEqual(body["code"], "SANDBOX_BOOT_FAILED", body)
                self.assertIn("Kernel panic", body["message"])
                self.assertEqual(gw.qemu_pids(), [])
                lst = gw.rest("GET", "/api/v3/sandboxes")
                self.assertEqual([x["status"] for x in lst], ["stopped"], lst)
            finally:
                gw.stop()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def test_seed(self):
        out, _ = self.run_ok("seed.ts", timeout=300)
        self.assertIn("Hello from Deno", out)
        self.assertIn("killed", out)


def main(argv):
    if argv == ["--build-image"]:
        return h.build_gateway_image()
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    suite = unittest.defaultTestLoader.loadTestsFromName(argv[0], sys.modules[__name__])
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    if not result.wasSuccessful():
        return 1
    if result.skipped and result.testsRun <= len(result.skipped):
        return 77
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
