#!/usr/bin/env python3
"""Integration tests of the transfer and pack families (PROTOCOL.md 18, 19): the real sbx-agent
over a unix socket, real files. Independent checks: hashlib, tarfile, os.lstat."""
import hashlib
import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import unittest
import warnings

warnings.simplefilter("ignore", ResourceWarning)

sys.path.insert(0, os.path.dirname(__file__))
import sbxwire as w  # noqa: E402

BUILD = os.environ.get("SBX_BUILD", os.path.join(os.path.dirname(__file__), "../../build"))
AGENT = os.path.join(BUILD, "bin", "sbx-agent")
CHUNK = 256 * 1024


def pattern(n, seed=0):
    block = bytes(((i * 131 + 7 + seed) & 255) for i in range(65536))
    return (block * (n // 65536 + 1))[:n]


def wait_for(conn, pred, what):
    """Next message satisfying pred; others are kept for later."""
    kept = []
    try:
        while True:
            m = conn.pending.pop(0) if conn.pending else conn.recv()
            if m is None:
                raise EOFError("connection closed waiting for " + what)
            if pred(m):
                return m
            kept.append(m)
    finally:
        conn.pending = kept + conn.pending


def is_done(sid):
    return lambda m: m[0] == 2 and m[1] == "transfer.done" and m[2]["stream"] == sid


def send_stream(conn, sid, chunks, end=True):
    """Send byte chunks on an in stream within credit. Returns an error map if the agent
    cancelled the stream, else None."""
    credit = conn.window
    for data in chunks:
        off = 0
        while off < len(data):
            while credit == 0:
                m = conn.recv()
                if m is None:
                    raise EOFError("closed")
                if m[0] == 2 and m[1] == "stream.credit" and m[2]["stream"] == sid:
                    credit += m[2]["bytes"]
                elif m[0] == 2 and m[1] == "stream.cancel" and m[2]["stream"] == sid:
                    return m[2].get("error", {})
                else:
                    conn.pending.append(m)
            n = min(credit, CHUNK, len(data) - off)
            conn.data(sid, data[off:off + n])
            off += n
            credit -= n
    if end:
        conn.end(sid)
    return None


def upload(conn, params, data_chunks):
    """Upload; returns (transfer.done params, cancel error or None)."""
    r = conn.call("transfer.upload", params)
    sid = r["stream"]
    cancel = send_stream(conn, sid, data_chunks)
    done = wait_for(conn, is_done(sid), "transfer.done")
    if cancel is None:
        # a cancel may have raced with our stream.end
        for m in conn.pending:
            if m[0] == 2 and m[1] == "stream.cancel" and m[2]["stream"] == sid:
                cancel = m[2].get("error", {})
    return done[2], cancel


def drain(conn, sid, sink=None):
    """Read an out stream to its end, granting credit. Returns (bytes, end params)."""
    out = bytearray()
    consumed = 0
    while True:
        m = conn.pending.pop(0) if conn.pending and _for(conn.pending[0], sid) else None
        if m is None:
            m = wait_for(conn, lambda x: _for(x, sid), "stream %d" % sid)
        if m[0] == 3:
            if sink is not None:
                sink(m[2])
            else:
                out += m[2]
            consumed += len(m[2])
            if consumed >= conn.window // 2:
                conn.credit(sid, consumed)
                consumed = 0
        elif m[1] == "stream.end":
            return bytes(out), m[2]


def _for(m, sid):
    return (m[0] == 3 and m[1] == sid) or (m[0] == 2 and m[1] == "stream.end"
                                           and m[2]["stream"] == sid)


def leftovers(d):
    return sorted(n for n in os.listdir(d) if ".sbx-" in n)


class TransferCase(unittest.TestCase):
    def setUp(self):
        self.agent = w.Agent(AGENT)
        self.c = self.agent.connect()
        self.tmp = tempfile.mkdtemp(prefix="sbx-xfer-")

    def tearDown(self):
        alive = self.agent.alive()
        self.c.close()
        self.agent.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.assertTrue(alive, "the agent died during the test:\n" + self.agent.logtext())

    def p(self, *parts):
        return os.path.join(self.tmp, *parts)


class TestUpload(TransferCase):
    def test_1gib_byte_exact(self):
        n = 1 << 30
        block = pattern(4 << 20)
        want = hashlib.sha256()
        for _ in range(n // len(block)):
            want.update(block)
        dest = self.p("big.bin")
        done, cancel = upload(self.c, {"path": dest, "size": n, "sha256": want.hexdigest()},
                              (block for _ in range(n // len(block))))
        self.assertIsNone(cancel)
        self.assertNotIn("error", done)
        self.assertEqual(done["size"], n)
        self.assertEqual(done["sha256"], want.hexdigest())
        self.assertEqual(os.path.getsize(dest), n)
        got = hashlib.sha256()
        with open(dest, "rb") as f:
            while True:
                b = f.read(4 << 20)
                if not b:
                    break
                got.update(b)
        self.assertEqual(got.hexdigest(), want.hexdigest())
        self.assertEqual(leftovers(self.tmp), [])
        self.assertLess(self.agent.rss_kb(), 64 * 1024)

    def test_small_and_empty_and_mode(self):
        dest = self.p("a.txt")
        done, _ = upload(self.c, {"path": dest, "mode": 0o640}, [b"hello\n"])
        self.assertEqual(done["sha256"], hashlib.sha256(b"hello\n").hexdigest())
        self.assertEqual(open(dest, "rb").read(), b"hello\n")
        self.assertEqual(stat.S_IMODE(os.lstat(dest).st_mode), 0o640)
        # Replacing keeps the existing mode unless told; no umask.
        done, _ = upload(self.c, {"path": dest}, [])
        self.assertEqual(done["size"], 0)
        self.assertEqual(os.path.getsize(dest), 0)
        self.assertEqual(stat.S_IMODE(os.lstat(dest).st_mode), 0o640)
        done, _ = upload(self.c, {"path": self.p("b"), "mode": 0o4755}, [b"x"])
        self.assertEqual(stat.S_IMODE(os.lstat(self.p("b")).st_mode), 0o4755)

    def test_owner(self):
        dest = self.p("owned")
        done, _ = upload(self.c, {"path": dest, "uid": 1234, "gid": 4321}, [b"x"])
        self.assertNotIn("error", done)
        st = os.lstat(dest)
        self.assertEqual((st.st_uid, st.st_gid), (1234, 4321))
        # a replaced file keeps its owner
        upload(self.c, {"path": dest}, [b"y"])
        st = os.lstat(dest)
        self.assertEqual((st.st_uid, st.st_gid), (1234, 4321))

    def test_relative_path_and_cwd(self):
        done, _ = upload(self.c, {"path": "rel.txt", "cwd": self.tmp}, [b"r"])
        self.assertNotIn("error", done)
        self.assertEqual(open(self.p("rel.txt"), "rb").read(), b"r")
        with self.assertRaises(w.RemoteError) as cm:
            self.c.call("transfer.upload", {"path": "x", "cwd": "relative"})
        self.assertEqual(cm.exception.err["field"], "cwd")

    def test_parents(self):
        dest = self.p("x", "y", "z.txt")
        with self.assertRaises(w.RemoteError) as cm:
            self.c.call("transfer.upload", {"path": dest})
        self.assertEqual(cm.exception.code, "ENOENT")
        done, _ = upload(self.c, {"path": dest, "parents": True}, [b"deep"])
        self.assertEqual(open(dest, "rb").read(), b"deep")
        self.assertEqual(stat.S_IMODE(os.lstat(self.p("x", "y")).st_mode), 0o755)

    def test_overwrite_false_and_directory(self):
        dest = self.p("exists")
        open(dest, "w").write("old")
        with self.assertRaises(w.RemoteError) as cm:
            self.c.call("transfer.upload", {"path": dest, "overwrite": False})
        self.assertEqual(cm.exception.code, "EEXIST")
        self.assertEqual(cm.exception.err["path"], dest)
        with self.assertRaises(w.RemoteError) as cm:
            self.c.call("transfer.upload", {"path": self.tmp})
        self.assertEqual(cm.exception.code, "EISDIR")
        os.mkdir(self.p("d"))
        with self.assertRaises(w.RemoteError) as cm:
            self.c.call("transfer.upload", {"path": self.p("d")})
        self.assertEqual(cm.exception.code, "EISDIR")
        # the file appears between the request and the end: refused at the rename
        r = self.c.call("transfer.upload", {"path": self.p("late"), "overwrite": False})
        open(self.p("late"), "w").write("first")
        send_stream(self.c, r["stream"], [b"second"])
        done = wait_for(self.c, is_done(r["stream"]), "done")
        self.assertEqual(done[2]["error"]["code"], "EEXIST")
        self.assertEqual(open(self.p("late")).read(), "first")
        self.assertEqual(open(dest).read(), "old")
        self.assertEqual(leftovers(self.tmp), [])

    def test_symlink_replaced_not_followed(self):
        target = self.p("target")
        open(target, "w").write("keep")
        os.symlink(target, self.p("link"))
        upload(self.c, {"path": self.p("link")}, [b"new"])
        self.assertFalse(os.path.islink(self.p("link")))
        self.assertEqual(open(target).read(), "keep")
        self.assertEqual(open(self.p("link")).read(), "new")

    def test_bad_params(self):
        cases = [
            ({}, "path"),
            ({"path": 5}, "path"),
            ({"path": ""}, "path"),
            ({"path": self.p("a"), "mode": 0o10000}, "mode"),
            ({"path": self.p("a"), "uid": -1}, "uid"),
            ({"path": self.p("a"), "sha256": "ABC"}, "sha256"),
            ({"path": self.p("a"), "sha256": "A" * 64}, "sha256"),
            ({"path": self.p("a"), "size": "big"}, "size"),
            ({"path": self.p("a"), "overwrite": 1}, "overwrite"),
            ({"path": "a\0b"}, "path"),
        ]
        for params, field in cases:
            with self.assertRaises(w.RemoteError, msg=repr(params)) as cm:
                self.c.call("transfer.upload", params)
            self.assertEqual(cm.exception.code, "BAD_PARAM", params)
            self.assertEqual(cm.exception.err["field"], field, params)
        self.assertEqual(leftovers(self.tmp), [])

    def test_wrong_sha256_leaves_nothing(self):
        dest = self.p("f")
        done, _ = upload(self.c, {"path": dest, "sha256": "0" * 64}, [pattern(3 * CHUNK)])
        self.assertEqual(done["error"]["code"], "BAD_PARAM")
        self.assertEqual(done["error"]["field"], "sha256")
        self.assertFalse(os.path.exists(dest))
        self.assertEqual(leftovers(self.tmp), [])
        # an existing file stays as it was
        open(dest, "w").write("before")
        done, _ = upload(self.c, {"path": dest, "sha256": "1" * 64}, [b"after"])
        self.assertEqual(done["error"]["field"], "sha256")
        self.assertEqual(open(dest).read(), "before")
        self.assertEqual(leftovers(self.tmp), [])

    def test_size_mismatch(self):
        dest = self.p("f")
        done, _ = upload(self.c, {"path": dest, "size": 10}, [b"12345"])
        self.assertEqual(done["error"]["field"], "size")
        self.assertFalse(os.path.exists(dest))
        # too many bytes: the agent cancels the stream at once
        done, cancel = upload(self.c, {"path": dest, "size": 10}, [b"x" * (3 * CHUNK)])
        self.assertEqual(done["error"]["field"], "size")
        self.assertEqual(cancel["field"], "size")
        self.assertFalse(os.path.exists(dest))
        self.assertEqual(leftovers(self.tmp), [])

    def test_client_cancel_and_error_end(self):
        dest = self.p("f")
        r = self.c.call("transfer.upload", {"path": dest})
        send_stream(self.c, r["stream"], [pattern(CHUNK)], end=False)
        self.c.send([2, "stream.cancel", {"stream": r["stream"]}])
        done = wait_for(self.c, is_done(r["stream"]), "done")
        self.assertEqual(done[2]["error"]["code"], "CANCELLED")
        r = self.c.call("transfer.upload", {"path": dest})
        send_stream(self.c, r["stream"], [b"abc"], end=False)
        self.c.send([2, "stream.end", {"stream": r["stream"],
                                       "error": {"code": "EIO", "message": "disk gone"}}])
        done = wait_for(self.c, is_done(r["stream"]), "done")
        self.assertEqual(done[2]["error"]["code"], "CANCELLED")
        self.c.call("ping")
        self.assertFalse(os.path.exists(dest))
        self.assertEqual(leftovers(self.tmp), [])

    def test_killed_upload_leaves_nothing(self):
        dest = self.p("f")
        for i in range(3):
            c = self.agent.connect()
            r = c.call("transfer.upload", {"path": dest})
            send_stream(c, r["stream"], [pattern(CHUNK * (i + 1))], end=(i == 2))
            if i == 1:
                # a temporary file exists while the upload runs
                deadline = time.time() + 5
                while not leftovers(self.tmp) and time.time() < deadline:
                    time.sleep(0.01)
                self.assertEqual(len(leftovers(self.tmp)), 1)
            c.sock.close()  # the client dies mid-way (i == 2: right after its stream.end)
        deadline = time.time() + 5
        while time.time() < deadline and leftovers(self.tmp):
            time.sleep(0.02)
        self.c.call("ping")
        self.assertEqual(leftovers(self.tmp), [])
        # an upload that was complete when the client vanished may have landed; a partial never
        if os.path.exists(dest):
            self.assertEqual(open(dest, "rb").read(), pattern(CHUNK * 3))

    def test_enospc_reported(self):
        mnt = self.p("small")
        os.mkdir(mnt)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt],
                          capture_output=True).returncode != 0:
            self.skipTest("cannot mount a tmpfs here")
        try:
            dest = os.path.join(mnt, "big")
            done, cancel = upload(self.c, {"path": dest}, [pattern(4 << 20)])
            self.assertEqual(done["error"]["code"], "ENOSPC")
            self.assertEqual(done["error"]["path"], dest)
            self.assertEqual(cancel["code"], "ENOSPC")
            self.assertEqual(os.listdir(mnt), [])
            self.c.call("ping")
        finally:
            subprocess.run(["umount", "-l", mnt])

    def test_unwritable_directory(self):
        d = self.p("ro")
        os.mkdir(d, 0o555)
        # root ignores modes: make the file system itself read-only instead
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", d],
                          capture_output=True).returncode != 0:
            self.skipTest("cannot mount a tmpfs here")
        try:
            with self.assertRaises(w.RemoteError) as cm:
                self.c.call("transfer.upload", {"path": os.path.join(d, "f")})
            self.assertEqual(cm.exception.code, "EROFS")
        finally:
            subprocess.run(["umount", "-l", d])


class TestDownload(TransferCase):
    def test_whole_offset_length(self):
        data = pattern(3 * CHUNK + 123)
        path = self.p("src")
        open(path, "wb").write(data)
        os.chmod(path, 0o604)
        r = self.c.call("transfer.download", {"path": path})
        self.assertEqual(r["size"], len(data))
        self.assertEqual(r["mode"], os.lstat(path).st_mode)
        got, end = drain(self.c, r["stream"])
        self.assertEqual(got, data)
        self.assertNotIn("error", end)
        r = self.c.call("transfer.download", {"path": path, "offset": 1000})
        self.assertEqual(drain(self.c, r["stream"])[0], data[1000:])
        r = self.c.call("transfer.download", {"path": path, "offset": 5, "length": 70000})
        self.assertEqual(drain(self.c, r["stream"])[0], data[5:70005])
        r = self.c.call("transfer.download", {"path": path, "offset": len(data) + 5})
        self.assertEqual(drain(self.c, r["stream"])[0], b"")
        r = self.c.call("transfer.download", {"path": path, "length": 0})
        self.assertEqual(drain(self.c, r["stream"])[0], b"")
        r = self.c.call("transfer.download", {"path": "src", "cwd": self.tmp, "length": 3})
        self.assertEqual(drain(self.c, r["stream"])[0], data[:3])

    def test_large_with_credit(self):
        n = 64 << 20
        data = pattern(n, 3)
        path = self.p("big")
        open(path, "wb").write(data)
        r = self.c.call("transfer.download", {"path": path})
        h = hashlib.sha256()
        got, end = drain(self.c, r["stream"], sink=h.update)
        self.assertEqual(h.hexdigest(), hashlib.sha256(data).hexdigest())

    def test_errors(self):
        for params, code in [({"path": self.p("nope")}, "ENOENT"),
                             ({"path": self.tmp}, "EISDIR"),
                             ({}, "BAD_PARAM"),
                             ({"path": self.p("x"), "offset": -1}, "BAD_PARAM")]:
            with self.assertRaises(w.RemoteError) as cm:
                self.c.call("transfer.download", params)
            self.assertEqual(cm.exception.code, code, params)
        with self.assertRaises(w.RemoteError) as cm:
            self.c.call("transfer.download", {"path": "/dev/zero", "offset": 3})
        self.assertEqual(cm.exception.err["field"], "offset")

    def test_char_device_and_cancel(self):
        r = self.c.call("transfer.download", {"path": "/dev/zero", "length": 100000})
        self.assertEqual(r["size"], 0)
        self.assertTrue(stat.S_ISCHR(r["mode"]))
        self.assertEqual(drain(self.c, r["stream"])[0], bytes(100000))
        # endless: cancel after some data; the agent stops and stays usable
        r = self.c.call("transfer.download", {"path": "/dev/zero"})
        wait_for(self.c, lambda m: m[0] == 3 and m[1] == r["stream"], "data")
        self.c.send([2, "stream.cancel", {"stream": r["stream"]}])
        self.c.call("ping")
        # and a connection closing mid-download
        c2 = self.agent.connect()
        r = c2.call("transfer.download", {"path": "/dev/zero"})
        c2.recv()
        c2.sock.close()
        self.c.call("ping")


SBX = os.path.join(BUILD, "bin", "sbx")


class TestCpCli(TransferCase):
    def sbx(self, *args, ok=True):
        env = dict(os.environ, SBX_ADDR=self.agent.addr)
        r = subprocess.run([SBX, *args], env=env, capture_output=True, timeout=300)
        if ok:
            self.assertEqual(r.returncode, 0, r.stderr.decode())
        return r

    def test_file_round_trip(self):
        src = self.p("src.bin")
        data = pattern(5 * CHUNK + 17, 9)
        open(src, "wb").write(data)
        os.chmod(src, 0o751)
        os.mkdir(self.p("guest"))
        self.sbx("cp", src, ":" + self.p("guest") + "/")
        self.assertEqual(open(self.p("guest", "src.bin"), "rb").read(), data)
        self.assertEqual(stat.S_IMODE(os.lstat(self.p("guest", "src.bin")).st_mode), 0o751)
        # an existing remote directory without the slash receives the file under its name
        os.remove(self.p("guest", "src.bin"))
        self.sbx("cp", "-m", "600", src, ":" + self.p("guest"))
        self.assertEqual(stat.S_IMODE(os.lstat(self.p("guest", "src.bin")).st_mode), 0o600)
        self.sbx("cp", ":" + self.p("guest", "src.bin"), self.p("back.bin"))
        self.assertEqual(open(self.p("back.bin"), "rb").read(), data)
        self.assertEqual(stat.S_IMODE(os.lstat(self.p("back.bin")).st_mode), 0o600)
        os.mkdir(self.p("local"))
        self.sbx("cp", ":" + self.p("guest", "src.bin"), self.p("local"))
        self.assertEqual(open(self.p("local", "src.bin"), "rb").read(), data)
        self.assertEqual(leftovers(self.p("local")), [])

    def test_errors_and_options(self):
        src = self.p("s")
        open(src, "w").write("x")
        r = self.sbx("cp", src, ":" + self.p("no", "such", "f"), ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"ENOENT", r.stderr)
        self.sbx("cp", "-p", src, ":" + self.p("no", "such", "f"))
        r = self.sbx("cp", "-n", src, ":" + self.p("no", "such", "f"), ok=False)
        self.assertIn(b"EEXIST", r.stderr)
        r = self.sbx("cp", ":" + self.p("missing"), self.p("x"), ok=False)
        self.assertIn(b"ENOENT", r.stderr)
        self.assertFalse(os.path.exists(self.p("x")))
        r = self.sbx("cp", src, self.p("y"), ok=False)
        self.assertEqual(r.returncode, 2)
        r = self.sbx("cp", "--help")
        self.assertIn(b"sbx cp", r.stdout)
        mnt = self.p("small")
        os.mkdir(mnt)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", mnt],
                          capture_output=True).returncode == 0:
            try:
                open(self.p("big"), "wb").write(pattern(1 << 20))
                r = self.sbx("cp", self.p("big"), ":" + mnt + "/", ok=False)
                self.assertEqual(r.returncode, 1)
                self.assertIn(b"ENOSPC", r.stderr)
                self.assertEqual(os.listdir(mnt), [])
            finally:
                subprocess.run(["umount", "-l", mnt])


if __name__ == "__main__":
    unittest.main()
