#!/usr/bin/env python3
"""Every wire input is hostile: a table-driven sweep over every method of the agent's dispatch
table (agent/dispatch.c, parsed here at test time, cross-checked against PROTOCOL.md), and stream
abuse against the stream kinds of the transfer, fs, pack and repl families.

For each method: params absent, params not a map, each documented field (PROTOCOL.md tables and
inline `{name: type}` params, plus the required fields the agent itself names) given values of the
wrong type, huge and negative integers, NUL bytes, 64 KiB strings, deeply nested maps, and unknown
extra fields. The agent must answer each request with a specific error (BAD_PARAM naming the
field, BAD_MESSAGE for a params value that is not a map) or a result, and still answer `ping` on
the same and on a fresh connection. A method in dispatch.c that PROTOCOL.md does not document
fails the test, so a new method is covered (or noticed) automatically.
"""
import os
import re
import sys
import tempfile
import threading
import time
import unittest
import warnings

warnings.simplefilter("ignore", ResourceWarning)

sys.path.insert(0, os.path.dirname(__file__))
import sbxwire as w  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "../.."))
BUILD = os.environ.get("SBX_BUILD", os.path.join(ROOT, "build"))
AGENT = os.path.join(BUILD, "bin", "sbx-agent")

# Methods whose effect on the test machine must never be triggered with plausible params:
# shutdown stops the agent, clock.set sets the system clock (we may be root).
NO_PLAUSIBLE = {"shutdown", "clock.set"}

# Codes a request may legitimately fail with (PROTOCOL.md 7.2, 7.3): protocol codes and errnos.
# INTERNAL is not among them: a hostile param must never reach "a bug".
PROTOCOL_CODES = {"BAD_PARAM", "BAD_MESSAGE", "NOT_FOUND", "LIMIT", "UNSUPPORTED", "TIMEOUT",
                  "CANCELLED", "BUSY", "UNKNOWN_METHOD"}


def dispatch_methods():
    src = open(os.path.join(ROOT, "agent", "dispatch.c")).read()
    table = src[src.index("methods[] = {"):]
    table = table[:table.index("};")]
    names = re.findall(r'\{\s*"([a-z_][a-z0-9_.]*)",\s*agent_\w+\s*,', table)
    assert len(names) > 20, "could not parse the method table of agent/dispatch.c"
    return names


def kinds_of(typ):
    """Type text of PROTOCOL.md (bstr, u32, [str], {..}, str|uint, bool, ...) -> accepted kinds."""
    t = typ.replace("\\|", "|").strip().strip("`")
    out = set()
    for part in re.split(r"\|", t) if not t.startswith(("[", "{")) else [t]:
        part = part.strip()
        if part.startswith("["):
            out.add("array")
        elif part.startswith("{"):
            out.add("map")
        elif part in ("str", "bstr"):
            out.add("str")
        elif part in ("uint", "u32", "u64", "int", "i64", "i32", "sid"):
            out.add("int")
        elif part == "bool":
            out.add("bool")
        elif part == "nil":
            out.add("nil")
        elif part == "bin":
            out.add("bin")
    return out


def doc_fields():
    """{method: {field: kinds}} from PROTOCOL.md: params tables under a method's heading, method
    rows of the fs tables (`name?: type` in the params column), and inline params `{a: t}`."""
    text = open(os.path.join(ROOT, "protocol", "PROTOCOL.md")).read()
    fields = {}
    heading_methods = []
    table_header = None
    for line in text.splitlines():
        if line.startswith("#"):
            heading_methods = re.findall(r"`([a-z_]+\.[a-z_.]+|[a-z_]+)`", line)
            # "`proc.spawn` with `pty`" documents a nested map's fields, not top-level params
            with_heading = " with " in line
            table_header = None
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if table_header is None:
                table_header = cells
                continue
            if set(line) <= set("|-: "):
                continue
            head0 = table_header[0].lower()
            if head0 == "name" and len(cells) >= 2 and not with_heading:
                for m in heading_methods:
                    for name in re.findall(r"`([a-z_0-9]+)`", cells[0]):
                        fields.setdefault(m, {})[name] = kinds_of(cells[1])
            elif head0 == "method" and len(cells) >= 2:
                mm = re.match(r"`([a-z_]+\.[a-z_]+)`", cells[0])
                if mm:
                    d = fields.setdefault(mm.group(1), {})
                    for name, typ in re.findall(r"`([a-z_][a-z_0-9]*)\??(?::\s*([^`]*))?`",
                                                cells[1]):
                        d[name] = kinds_of(typ) if typ else set()
            continue
        table_header = None
        # inline params: "Params `{id: u32}`" / "params `{session: u32}`"
        owner = re.match(r"^`([a-z_]+\.[a-z_]+)` — params", line)
        for m in [owner.group(1)] if owner else heading_methods:
            for inner in re.findall(r"[Pp]arams `\{([^}`]*)\}`", line):
                for name, typ in re.findall(r"([a-z_][a-z_0-9]*)\??:\s*([^,]+)", inner):
                    fields.setdefault(m, {})[name] = kinds_of(typ)
    return fields, text


def value_kind(v):
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, str):
        return "str"
    if isinstance(v, (bytes, bytearray)):
        return "bin"
    if isinstance(v, (list, tuple)):
        return "array"
    return "map"


def nested(depth):
    v = {"x": 1}
    for _ in range(depth):
        v = {"a": v}
    return v


# Wrong-type / hostile values: (label, value).
HOSTILE = [
    ("int", 7),
    ("str", "x"),
    ("bool", True),
    ("array", [1, "two", None]),
    ("map", {"k": 1}),
    ("huge", (1 << 64) - 1),
    ("negative", -1),
    ("min_i64", -(1 << 63)),
    ("bin_nul", b"/tmp/a\x00b"),
    ("str_nul", "/tmp/a\x00b"),
    ("str_64k", "A" * 65536),
    ("nested", nested(28)),
    ("float", 1.5),
]


class HostileCase(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="sbx-hostile-")
        env = dict(os.environ, TMPDIR=self.tmp)
        # Relative hostile paths ("x") resolve against the agent's cwd: make it the scratch dir.
        old = os.getcwd()
        os.chdir(self.tmp)
        try:
            self.agent = w.Agent(AGENT, env=env)
        finally:
            os.chdir(old)
        self.c = self.agent.connect()

    def tearDown(self):
        self.agent.finish(self, self.c, self.tmp)  # also fails on any sanitizer report

    def result(self, conn, method, params):
        """(None, result) or (error map, None); params=NOPARAMS sends a 3-element request."""
        rid = conn.next_id
        conn.next_id += 1
        conn.send([0, rid, method, params])
        try:
            return None, conn.wait(rid)
        except w.RemoteError as e:
            return e.err, None
        except (EOFError, OSError) as e:
            self.fail("%s %r: connection lost (%s); agent alive: %s\n%s" % (
                method, _short(params), e, self.agent.alive(), self.agent.logtext()[-3000:]))

    def assert_alive(self, what):
        self.assertTrue(self.agent.alive(), "agent died after %s:\n%s" % (
            what, self.agent.logtext()[-3000:]))
        self.assertEqual(self.c.call("ping"), {}, what)
        c2 = self.agent.connect()
        try:
            self.assertEqual(c2.call("ping"), {}, what)
        finally:
            c2.close()

    def fd_count(self):
        return len(os.listdir("/proc/%d/fd" % self.agent.proc.pid))

    def thread_count(self):
        return len(os.listdir("/proc/%d/task" % self.agent.proc.pid))


def _short(v):
    r = repr(v)
    return r if len(r) < 200 else r[:200] + "..."


class TestHostileParams(HostileCase):
    def plausible(self, kinds):
        """Values to try for a field in order: a path under our temporary directory that does not
        exist, an id nobody has, an array of such a path, false, an empty map."""
        missing = os.path.join(self.tmp, "missing", "x")
        return [missing, 999999, [missing], False, {}]

    def base_params(self, method):
        """Discover the required fields by asking the agent, filling each with the first plausible
        value it accepts. Returns (params, [required field names])."""
        params = {}
        required = []
        self.complete = False
        if method in NO_PLAUSIBLE:
            return params, required  # self.complete stays False: any BAD_PARAM will do
        for _ in range(8):
            err, _ = self.result(self.c, method, params)
            if err is None or err.get("code") != "BAD_PARAM":
                self.complete = True
                break
            field = err.get("field")
            if not field or field in params or not re.match(r"^[a-z_]+$", field):
                break
            for v in self.plausible(None):
                trial = dict(params, **{field: v})
                e2, _ = self.result(self.c, method, trial)
                if e2 is None or e2.get("code") != "BAD_PARAM" or e2.get("field") != field:
                    params = trial
                    required.append(field)
                    break
            else:
                break
        return params, required

    def test_every_method(self):
        methods = dispatch_methods()
        fields, text = doc_fields()
        undocumented = [m for m in methods if "`%s`" % m not in text]
        self.assertEqual(undocumented, [], "methods in dispatch.c missing from PROTOCOL.md")
        fd0, threads0 = self.fd_count(), self.thread_count()
        checked = 0
        for method in methods:
            with self.subTest(method=method):
                before = self.fd_count()
                checked += self.sweep(method, fields.get(method, {}))
                if os.environ.get("HOSTILE_DEBUG"):
                    print(method, before, self.fd_count(), file=sys.stderr)
        self.assertGreater(checked, 500)
        # Streams and handles the sweep opened (an upload to a relative "x" is valid) belong to
        # the connection: closing it must release every fd and remove every temporary file.
        self.c.close()
        self.c = self.agent.connect()
        deadline = time.time() + 5
        while time.time() < deadline and self.fd_count() > fd0:
            time.sleep(0.05)
        self.assertLessEqual(self.fd_count(), fd0, "fds leaked: %s" % os.listdir(
            "/proc/%d/fd" % self.agent.proc.pid))
        self.assertLessEqual(self.thread_count(), max(threads0, 1) + 8)
        while time.time() < deadline and _temps(self.tmp):
            time.sleep(0.05)
        self.assertEqual(_temps(self.tmp), [])

    def sweep(self, method, documented):
        n = 0
        if method == "hello":
            return self.sweep_hello(documented)
        # params not a map: a decode error for the request, the connection goes on.
        for label, v in (("array", [1, 2]), ("int", 5), ("str", "params"), ("bin", b"\x00")):
            err, _ = self.result(self.c, method, v)
            self.assertIsNotNone(err, "%s params=%s accepted" % (method, label))
            self.assertEqual(err["code"], "BAD_MESSAGE", "%s params=%s: %r" % (method, label, err))
            n += 1
        if method != "shutdown":
            # params absent entirely ([0, id, method] is not a request: 4 elements required) and
            # params nil (allowed: an empty map)
            rid = self.c.next_id
            self.c.next_id += 1
            self.c.send([0, rid, method])
            try:
                self.c.wait(rid)
                self.fail("%s without params accepted" % method)
            except w.RemoteError as e:
                self.assertEqual(e.code, "BAD_MESSAGE")
            err, _ = self.result(self.c, method, None)
            self.assertCode(method, None, err)
            n += 2
        base, required = self.base_params(method)
        # The error the base params alone give (e.g. NOT_FOUND for an id nobody has): a handler
        # may reject on it before it reads a hostile field, which is a specific error too.
        base_err, _ = self.result(self.c, method, base) if method not in NO_PLAUSIBLE else (
            None, None)
        base_code = base_err.get("code") if base_err else None
        names = dict(documented)
        for r in required:
            names.setdefault(r, set())
        if method in NO_PLAUSIBLE:
            names = {k: v for k, v in names.items()}
        for field, kinds in sorted(names.items()):
            for label, v in HOSTILE:
                if method == "shutdown" and value_kind(v) == "str" and "\x00" not in v \
                        and len(v) < 100:
                    continue  # a plausible action would stop the agent
                if method == "clock.set" and value_kind(v) == "int" and field == "unix_ns":
                    continue  # an integer could be accepted and set the clock
                params = dict(base, **{field: v})
                err, res = self.result(self.c, method, params)
                n += 1
                wrong = kinds and value_kind(v) not in kinds and not (
                    value_kind(v) == "bin" and "str" in kinds)
                if wrong:
                    self.assertIsNotNone(err, "%s %s=%s accepted: %r" % (method, field, label,
                                                                         _short(res)))
                    if err["code"] == base_code and base_code != "BAD_PARAM":
                        continue
                    self.assertEqual(err["code"], "BAD_PARAM",
                                     "%s %s=%s: %r" % (method, field, label, err))
                    if self.complete:
                        self.assertTrue(_names(err.get("field"), field),
                                        "%s %s=%s named %r" % (method, field, label, err))
                else:
                    self.assertCode(method, params, err)
        if method not in NO_PLAUSIBLE:
            err, _ = self.result(self.c, method, dict(base, zz_unknown_field=[1, {"a": None}]))
            self.assertCode(method, base, err)
            n += 1
        self.assert_alive(method)
        return n

    def sweep_hello(self, documented):
        n = 0
        for field in sorted(set(documented) | {"version"}):
            for label, v in HOSTILE:
                c = self.agent.connect(hello=False)
                try:
                    p = {"version": 1, "client": "hostile"}
                    p[field] = v
                    err, _ = self.result(c, "hello", p)
                    n += 1
                    if err is not None:
                        self.assertIn(err["code"], PROTOCOL_CODES | {"VERSION", "AUTH"}, err)
                finally:
                    c.close()
        self.assert_alive("hello")
        return n

    def assertCode(self, method, params, err):
        if err is None:
            return
        code = err.get("code", "")
        self.assertTrue(code in PROTOCOL_CODES or re.match(r"^E[A-Z0-9]+$", code),
                        "%s %r: unexpected error %r" % (method, _short(params), err))
        if code == "BAD_PARAM":
            self.assertTrue(err.get("field"), "BAD_PARAM without field: %r" % err)


def _temps(d):
    out = []
    for root, dirs, files in os.walk(d):
        out += [os.path.join(root, n) for n in dirs + files if ".sbx-" in n]
    return out


def _names(got, field):
    return got is not None and (got == field or got.startswith(field + ".")
                                or got.startswith(field + "["))


def _is_cancel(sid):
    return lambda m: m[0] == 2 and m[1] == "stream.cancel" and m[2]["stream"] == sid


def _is_done(sid):
    return lambda m: m[0] == 2 and m[1] == "transfer.done" and m[2]["stream"] == sid


class TestHostileStreams(HostileCase):
    """Stream misuse (PROTOCOL.md 8.6) against every owner-served stream kind, and connections
    closed mid-stream: the agent survives, answers ping, removes temporary files and releases
    every fd and thread once the connection is gone."""

    def setUp(self):
        super().setUp()
        self.src = os.path.join(self.tmp, "src")
        os.makedirs(os.path.join(self.src, "sub"))
        for i in range(300):
            with open(os.path.join(self.src, "sub" if i % 2 else "", "f%03d" % i), "wb") as f:
                f.write(os.urandom(64) * (i + 1))
        # Entry streams must outlast the 1 MiB window: names of 200 bytes, 8000 entries.
        self.wide = os.path.join(self.tmp, "wide")
        os.makedirs(self.wide)
        for i in range(8000):
            open(os.path.join(self.wide, "%05d" % i + "n" * 195), "wb").close()
        self.repl_sessions = []
        with open(os.path.join(self.tmp, "big"), "wb") as f:
            f.write(os.urandom(1 << 20) * 4)
        # Warm up: the threadpool and any worker threads exist after one of each kind.
        c = self.agent.connect()
        for kind in ("upload", "upload_tree"):
            sid = self.open_kind(c, kind)
            if kind == "upload":
                c.data(sid, b"warm" * 1024)
            c.end(sid)
            c.wait_for(_is_done(sid), "warm-up done", timeout=20)
        c.close()
        time.sleep(0.2)
        self.fd0 = self.fd_count()
        self.threads0 = self.thread_count()

    def open_kind(self, c, kind):
        n = c.next_id
        if kind == "upload":
            return c.call("transfer.upload", {"path": os.path.join(self.tmp, "up%d" % n)})["stream"]
        if kind == "upload_tree":
            return c.call("transfer.upload_tree",
                          {"path": os.path.join(self.tmp, "tree%d" % n)})["stream"]
        if kind == "download":
            return c.call("transfer.download", {"path": os.path.join(self.tmp, "big")})["stream"]
        if kind == "download_tree":
            return c.call("transfer.download_tree", {"path": self.src})["stream"]
        if kind == "walk":
            return c.call("fs.walk", {"path": self.wide})["stream"]
        if kind == "glob":
            return c.call("fs.glob", {"pattern": self.wide + "/*"})["stream"]
        if kind == "pack":
            return c.call("pack.create", {"path": self.src, "format": "tar.gz"})["archive"]
        if kind == "repl":
            s = c.call("repl.start", {"language": "sh"})["session"]
            self.repl_sessions.append(s)
            r = c.call("repl.eval", {"session": s, "stream": True,
                                     "code": "i=0; while [ $i -lt 2000 ]; do echo line $i; "
                                             "i=$((i+1)); done; sleep 30"})
            return r["stdout"]
        raise ValueError(kind)

    IN = ("upload", "upload_tree")
    OUT = ("download", "download_tree", "walk", "glob", "pack", "repl")

    def check_clean(self, what):
        self.assert_alive(what)
        # REPL sessions outlive their connection (PROTOCOL.md 10): close them, then count.
        while self.repl_sessions:
            self.c.call("repl.close", {"session": self.repl_sessions.pop()})
        deadline = time.time() + 10
        while time.time() < deadline and (self.fd_count() > self.fd0 or _temps(self.tmp)
                                          or self.thread_count() > self.threads0):
            time.sleep(0.05)
        self.assertLessEqual(self.fd_count(), self.fd0, "%s: fds %s" % (
            what, os.listdir("/proc/%d/fd" % self.agent.proc.pid)))
        self.assertEqual(_temps(self.tmp), [], what)
        self.assertLessEqual(self.thread_count(), self.threads0, what)

    def abuse(self, kind, how):
        c = self.agent.connect()
        sid = self.open_kind(c, kind)
        cancelled = None  # the error code of the stream.cancel the agent must send
        if how == "beyond_credit":
            # Far more than the window in one burst: the agent grants credit only as it writes,
            # so unless it keeps up, this overruns the credit (then: STREAM cancel).
            c.send_raw(w.frame(bytes([0x93, 0x03]) + w.pack(sid) + w.pack(b"\0" * (1 << 18)))
                       * 24)
            c.end(sid)
        elif how == "zero_length":
            c.data(sid, b"")
            cancelled = "STREAM"
        elif how == "over_chunk":
            c.data(sid, b"y" * (256 * 1024 + 1))
            cancelled = "STREAM"
        elif how == "data_on_out":
            c.data(sid, b"hello")
            cancelled = "STREAM"
        elif how == "credit_overflow":
            # Twice: the second grant exceeds 2^32-1 whatever the agent has sent meanwhile (a
            # fast producer may have used its whole window before the first one arrives).
            c.credit(sid, 0xFFFFFFFF)
            c.credit(sid, 0xFFFFFFFF)
            if kind in self.IN:
                c.end(sid)  # credit on an in stream is ignored; the upload goes on
            else:
                cancelled = "STREAM"
        elif how == "credit_2_32":
            # credit the agent cannot count: the two sides disagree from here on (8.6)
            c.send([2, "stream.credit", {"stream": sid, "bytes": 1 << 32}])
            c.send([2, "stream.credit", {"stream": sid, "bytes": -1}])
            c.send([2, "stream.credit", {"stream": sid, "bytes": "many"}])
            c.send([2, "stream.cancel", {"stream": sid}])
            cancelled = "STREAM"
        elif how in ("credit_missing", "credit_string"):
            bad = {"credit_missing": {}, "credit_string": {"bytes": "many"}}[how]
            c.send([2, "stream.credit", dict(bad, stream=sid)])
            m = c.wait_for(_is_cancel(sid), "stream.cancel on %s/%s" % (kind, how), timeout=20)
            self.assertIn('"bytes"', m[2]["error"]["message"])  # says which field, readably
            c.pending.insert(0, m)
            cancelled = "STREAM"
        elif how == "credit_zero":
            c.send([2, "stream.credit", {"stream": sid, "bytes": 0}])  # ignored (8.3)
            self.assertEqual(c.call("ping"), {})
            self.assertFalse([m for m in c.pending if _is_cancel(sid)(m)], "a grant of 0 cancelled")
            c.credit(sid, 0xFFFFFFFF)  # the stream is still live: these overflow
            c.credit(sid, 0xFFFFFFFF)
            cancelled = "STREAM"
        elif how == "cancel_then_data":
            c.send([2, "stream.cancel", {"stream": sid}])
            c.data(sid, b"late")
            c.credit(sid, 10)
            c.end(sid)
            c.send([2, "stream.cancel", {"stream": sid}])
        elif how == "end_twice":
            if kind in self.IN:
                c.data(sid, b"partial")
            c.end(sid)
            c.end(sid)
            c.data(sid, b"after end")
        elif how == "close":
            if kind in self.IN:
                c.data(sid, b"\0" * 4096)
            else:
                c.wait_for(lambda m: m[0] == 3 and m[1] == sid, "first data", timeout=20)
        else:
            raise ValueError(how)
        if cancelled:
            m = c.wait_for(_is_cancel(sid), "stream.cancel on %s/%s" % (kind, how), timeout=20)
            self.assertEqual(m[2].get("error", {}).get("code"), cancelled, m)
        if kind in self.IN and how != "close":
            # the last frame about every upload, whatever happened to its stream
            m = c.wait_for(_is_done(sid), "transfer.done on %s/%s" % (kind, how), timeout=20)
            if cancelled or how == "cancel_then_data":
                self.assertEqual(m[2].get("error", {}).get("code"), "CANCELLED", m)
        if how != "close":
            self.assertEqual(c.call("ping"), {})
        c.close()
        self.check_clean("%s/%s" % (kind, how))

    def test_in_streams(self):
        for kind in self.IN:
            for how in ("beyond_credit", "zero_length", "over_chunk", "cancel_then_data",
                        "end_twice", "close", "credit_overflow"):
                with self.subTest(kind=kind, how=how):
                    self.abuse(kind, how)

    def test_out_streams(self):
        for kind in self.OUT:
            for how in ("data_on_out", "credit_overflow", "credit_2_32", "credit_missing",
                        "credit_zero", "credit_string", "cancel_then_data", "end_twice", "close"):
                with self.subTest(kind=kind, how=how):
                    self.abuse(kind, how)

    def test_bad_stream_ids(self):
        # A stream notification whose stream id is missing or not a sid has no stream to cancel:
        # an error notification names the field, and the connection goes on.
        c = self.agent.connect()
        for method, params in [("stream.credit", {"bytes": 5}),
                               ("stream.credit", {"stream": "x", "bytes": 5}),
                               ("stream.credit", {"stream": 0, "bytes": 5}),
                               ("stream.end", {}),
                               ("stream.end", {"stream": 1 << 32}),
                               ("stream.cancel", {"stream": -1}),
                               ("stream.cancel", {"stream": None})]:
            with self.subTest(method=method, params=params):
                c.send([2, method, params])
                m = c.wait_for(lambda m: m[0] == 2 and m[1] == "error", "error notification",
                               timeout=10)
                self.assertEqual(m[2]["code"], "BAD_MESSAGE", m)
                self.assertEqual(m[2].get("field"), "stream", m)
                self.assertIn(method, m[2]["message"])
        # unknown but well-formed ids stay silent (8.5)
        c.send([2, "stream.credit", {"stream": 999, "bytes": 5}])
        self.assertEqual(c.call("ping"), {})
        self.assertEqual([m for m in c.pending if m[0] == 2 and m[1] == "error"], [])
        c.close()


if __name__ == "__main__":
    unittest.main()
