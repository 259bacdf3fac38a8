#!/usr/bin/env python3
"""Integration tests of the transfer and pack families (PROTOCOL.md 18, 19): the real sbx-agent
over a unix socket, real files. Independent checks: hashlib, tarfile, os.lstat."""
import hashlib
import io
import json
import os
import pty
import socket
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
import sbxwire as w
from workload import WorkloadUser  # noqa: E402

BUILD = os.environ.get("SBX_BUILD", os.path.join(os.path.dirname(__file__), "../../build"))
AGENT = os.path.join(BUILD, "bin", "sbx-agent")
CHUNK = 256 * 1024


def pattern(n, seed=0):
    block = bytes(((i * 131 + 7 + seed) & 255) for i in range(65536))
    return (block * (n // 65536 + 1))[:n]


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
    done = conn.wait_for(is_done(sid), "transfer.done")
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
            m = conn.wait_for(lambda x: _for(x, sid), "stream %d" % sid)
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
        self.agent.finish(self, self.c, self.tmp)

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

    def test_hash_false(self):
        # hash: false skips the SHA-256 (the size is still checked); an expected sha256 needs it.
        dest, data = self.p("nohash"), pattern(3 * CHUNK + 5, 4)
        done, _ = upload(self.c, {"path": dest, "hash": False, "size": len(data)},
                         [data[:CHUNK], data[CHUNK:]])
        self.assertNotIn("error", done)
        self.assertEqual(done["size"], len(data))
        self.assertNotIn("sha256", done)
        self.assertEqual(open(dest, "rb").read(), data)
        done, _ = upload(self.c, {"path": self.p("short"), "hash": False, "size": 10}, [b"abc"])
        self.assertEqual(done["error"]["field"], "size")
        self.assertFalse(os.path.exists(self.p("short")))
        for params, field in [({"path": dest, "hash": False, "sha256": "0" * 64}, "hash"),
                              ({"path": dest, "hash": "no"}, "hash")]:
            with self.assertRaises(w.RemoteError) as cm:
                self.c.call("transfer.upload", params)
            self.assertEqual(cm.exception.err["field"], field)
        self.assertEqual(leftovers(self.tmp), [])

    def test_extra_credit_up_front(self):
        # A file upload may run 4 MiB ahead of the disk: the agent grants 3 MiB beyond the
        # protocol's window as soon as the stream opens, before any data.
        dest, data = self.p("ahead"), pattern(4 << 20, 2)
        sid = self.c.call("transfer.upload", {"path": dest})["stream"]
        m = self.c.wait_for(lambda m: m[0] == 2 and m[1] == "stream.credit" and
                            m[2]["stream"] == sid, "stream.credit", timeout=10)
        self.assertEqual(m[2]["bytes"], 3 << 20)
        for off in range(0, len(data), CHUNK):  # all of it, reading nothing back meanwhile
            self.c.data(sid, data[off:off + CHUNK])
        self.c.end(sid)
        done = self.c.wait_for(is_done(sid), "transfer.done", timeout=30)
        self.assertNotIn("error", done[2])
        self.assertEqual(open(dest, "rb").read(), data)

    def test_one_byte_frames_cost_their_bytes(self):
        # A MiB of one-byte frames, within the credit, faster than the disk takes them: the
        # agent's peak grows by about those bytes, not by a queued chunk per frame.
        dest, data = self.p("tiny"), os.urandom(1 << 20)
        sid = self.c.call("transfer.upload", {"path": dest})["stream"]
        hwm0 = self.agent.rss_kb("VmHWM")
        self.c.data_many(sid, [data[i:i + 1] for i in range(len(data))])
        self.c.end(sid)
        done = self.c.wait_for(is_done(sid), "transfer.done", timeout=120)
        self.assertNotIn("error", done[2])
        grown = self.agent.rss_kb("VmHWM") - hwm0
        self.assertLess(grown, 8 << 10, "agent peak VmRSS grew %d KiB for 1 MiB" % grown)
        self.assertEqual(open(dest, "rb").read(), data)

    def test_threadpool_size_not_inherited(self):
        # 8 threadpool workers once a transfer used it; the setting stays the agent's own.
        if "UV_THREADPOOL_SIZE" in os.environ:
            self.skipTest("UV_THREADPOOL_SIZE set in the test's environment")
        done, _ = upload(self.c, {"path": self.p("tp")}, [b"x" * 1000])
        self.assertNotIn("error", done)
        tasks = len(os.listdir("/proc/%d/task" % self.agent.proc.pid))
        self.assertGreaterEqual(tasks, 1 + 8)
        r, _, outs, _, _, _ = w.run(self.c, {"argv": ["env"], "stdout": "pipe"})
        env = outs[r["stdout"]].decode()
        self.assertIn("PATH=", env)
        self.assertNotIn("UV_THREADPOOL_SIZE", env)

    def test_owner(self):
        dest = self.p("owned")
        done, _ = upload(self.c, {"path": dest, "uid": 1234, "gid": 4321}, [b"x"])
        self.assertNotIn("error", done)
        st = os.lstat(dest)
        self.assertEqual((st.st_uid, st.st_gid), (1234, 4321))
        # a replaced file does not keep its owner: the new content is the acting user's (issue 14
        # item 7; this agent has no workload user, so it acts as itself)
        upload(self.c, {"path": dest}, [b"y"])
        st = os.lstat(dest)
        self.assertEqual((st.st_uid, st.st_gid), (os.geteuid(), os.getegid()))

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
        done = self.c.wait_for(is_done(r["stream"]), "done")
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
        done = self.c.wait_for(is_done(r["stream"]), "done")
        self.assertEqual(done[2]["error"]["code"], "CANCELLED")
        r = self.c.call("transfer.upload", {"path": dest})
        send_stream(self.c, r["stream"], [b"abc"], end=False)
        self.c.send([2, "stream.end", {"stream": r["stream"],
                                       "error": {"code": "EIO", "message": "disk gone"}}])
        done = self.c.wait_for(is_done(r["stream"]), "done")
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
                # while the upload runs its file has no name (O_TMPFILE; one temporary name on a
                # file system without it) and the destination does not exist yet
                self.c.call("ping")
                self.assertLessEqual(len(leftovers(self.tmp)), 1)
                self.assertFalse(os.path.exists(dest))
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
            # More than the credit a 1 MiB file system can ever return (1 MiB window + 3 MiB
            # granted up front + 1 MiB written): the stream is still open when the write fails,
            # so the failure comes as stream.cancel as well as in transfer.done. (4 MiB could all
            # be sent and ended first; then only transfer.done carries it, as §18.1 says.)
            done, cancel = upload(self.c, {"path": dest}, [pattern(16 << 20)])
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

    def test_odd_credit_grants(self):
        # Credit granted in odd amounts: reads span several chunks, the last one short.
        data = pattern(9 * CHUNK + 4321, 5)
        path = self.p("odd")
        open(path, "wb").write(data)
        r = self.c.call("transfer.download", {"path": path, "offset": 3})
        sid, got, pend = r["stream"], bytearray(), 0
        while True:
            m = self.c.wait_for(lambda x: _for(x, sid), "stream %d" % sid)
            if m[0] != 3:
                self.assertNotIn("error", m[2])
                break
            got += m[2]
            pend += len(m[2])
            if pend >= 100003:
                self.c.credit(sid, 100003)
                pend -= 100003
        self.assertEqual(bytes(got), data[3:])

    def test_errors(self):
        for params, code in [({"path": self.p("nope")}, "ENOENT"),
                             ({"path": self.tmp}, "EISDIR"),
                             ({}, "BAD_PARAM"),
                             ({"path": self.p("x"), "offset": -1}, "BAD_PARAM")]:
            with self.assertRaises(w.RemoteError) as cm:
                self.c.call("transfer.download", params)
            self.assertEqual(cm.exception.code, code, params)

    def test_special_files_refused(self):
        # Only regular files are read (18.2): a device or FIFO is refused before it is opened.
        os.mkfifo(self.p("fifo"))
        os.symlink("/dev/zero", self.p("zero-link"))
        for path in ("/dev/zero", "/dev/null", self.p("fifo"), self.p("zero-link")):
            with self.assertRaises(w.RemoteError) as cm:
                self.c.call("transfer.download", {"path": path, "offset": 3})
            self.assertEqual(cm.exception.code, "EINVAL", path)
            self.assertEqual(cm.exception.err["path"], path)
            self.assertIn("not a regular file", cm.exception.err["message"])

    def test_cancel(self):
        # A large (sparse) file: cancel after some data; the agent stops and stays usable.
        with open(self.p("big"), "wb") as f:
            f.truncate(64 << 30)
        r = self.c.call("transfer.download", {"path": self.p("big"), "length": 100000})
        self.assertEqual(r["size"], 64 << 30)
        self.assertTrue(stat.S_ISREG(r["mode"]))
        self.assertEqual(drain(self.c, r["stream"])[0], bytes(100000))
        r = self.c.call("transfer.download", {"path": self.p("big")})
        self.c.wait_for(lambda m: m[0] == 3 and m[1] == r["stream"], "data")
        self.c.send([2, "stream.cancel", {"stream": r["stream"]}])
        self.c.call("ping")
        # and a connection closing mid-download
        c2 = self.agent.connect()
        r = c2.call("transfer.download", {"path": self.p("big")})
        c2.recv()
        c2.sock.close()
        self.c.call("ping")


def make_tree(root):
    """A small tree with modes, symlinks, a hard link, an empty dir and odd names."""
    os.makedirs(os.path.join(root, "sub", "deeper"))
    os.makedirs(os.path.join(root, "empty"))
    with open(os.path.join(root, "a.txt"), "wb") as f:
        f.write(b"alpha\n")
    with open(os.path.join(root, "sub", "big.bin"), "wb") as f:
        f.write(pattern(3 * CHUNK + 5))
    with open(os.path.join(root, "sub", "deeper", "x"), "wb") as f:
        f.write(b"")
    with open(os.path.join(root, "sp ace \xe9"), "wb") as f:
        f.write(b"odd")
    os.chmod(os.path.join(root, "a.txt"), 0o640)
    os.chmod(os.path.join(root, "sub", "deeper", "x"), 0o755)
    os.chmod(os.path.join(root, "empty"), 0o700)
    os.symlink("a.txt", os.path.join(root, "link"))
    os.symlink("/nonexistent/abs", os.path.join(root, "sub", "dangling"))
    os.link(os.path.join(root, "a.txt"), os.path.join(root, "sub", "hard"))
    t = 1600000000
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for n in filenames + dirnames:
            p = os.path.join(dirpath, n)
            os.utime(p, ns=(t * 10**9 + 123456789, t * 10**9 + 123456789), follow_symlinks=False)
            t += 1


def snapshot(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            item = {"mode": st.st_mode, "mtime_ns": st.st_mtime_ns}
            if stat.S_ISLNK(st.st_mode):
                item["target"] = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                item["data"] = hashlib.sha256(open(p, "rb").read()).hexdigest()
            out[rel] = item
    return out


def tar_bytes(members, fmt=tarfile.PAX_FORMAT, mode="w"):
    """members: (TarInfo, data or None)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=fmt) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def ti(name, type=tarfile.REGTYPE, data=b"", mode=0o644, linkname=""):
    t = tarfile.TarInfo(name)
    t.type = type
    t.mode = mode
    t.size = len(data) if type == tarfile.REGTYPE else 0
    t.linkname = linkname
    t.mtime = 1500000000
    return t, (data if type == tarfile.REGTYPE else None)


class TestTree(TransferCase):
    def upload_tree(self, dest, data, **kw):
        params = {"path": dest}
        params.update(kw)
        r = self.c.call("transfer.upload_tree", params)
        sid = r["stream"]
        cancel = send_stream(self.c, sid, [data])
        done = self.c.wait_for(is_done(sid), "transfer.done")[2]
        return done, cancel

    def download_tree(self, src, **kw):
        params = {"path": src}
        params.update(kw)
        r = self.c.call("transfer.download_tree", params)
        return drain(self.c, r["stream"])

    def test_round_trip_keeps_modes_symlinks_mtimes(self):
        src = self.p("src")
        make_tree(src)
        for comp in ("none", "gzip", "zstd"):
            data, end = self.download_tree(src, compress=comp)
            self.assertNotIn("error", end)
            # an independent reader agrees with the agent's archive
            mode = {"none": "r:", "gzip": "r:gz", "zstd": None}[comp]
            if mode is not None:
                with tarfile.open(fileobj=io.BytesIO(data), mode=mode) as tf:
                    names = tf.getnames()
                    self.assertIn("sub/big.bin", names)
                    self.assertFalse(any(n.startswith("/") or n.startswith("./") for n in names))
                    hard = tf.getmember("sub/hard")
                    self.assertTrue(hard.islnk() or tf.getmember("a.txt").islnk())
                    self.assertEqual(tf.getmember("link").linkname, "a.txt")
            dest = self.p("dest-" + comp)
            done, cancel = self.upload_tree(dest, data, compress=comp)
            self.assertIsNone(cancel)
            self.assertNotIn("error", done)
            self.assertEqual(done["size"], len(data))
            self.assertEqual(done["sha256"], hashlib.sha256(data).hexdigest())
            self.assertEqual(done["files"], len(snapshot(src)))
            self.assertEqual(snapshot(dest), snapshot(src))
            self.assertEqual(os.lstat(os.path.join(dest, "a.txt")).st_ino,
                             os.lstat(os.path.join(dest, "sub", "hard")).st_ino)

    def test_one_byte_frames_cost_their_bytes(self):
        # An archive sent as one-byte frames: the extracting thread takes them slower than they
        # come, and what waits costs about its bytes, not a chunk per frame.
        tf_data = io.BytesIO()
        with tarfile.open(fileobj=tf_data, mode="w") as tf:
            body = os.urandom(900 << 10)
            ti = tarfile.TarInfo("f.bin")
            ti.size = len(body)
            tf.addfile(ti, io.BytesIO(body))
        data = tf_data.getvalue()
        self.assertLess(len(data), self.c.window)  # within the stream's credit
        r = self.c.call("transfer.upload_tree", {"path": self.p("dest")})
        hwm0 = self.agent.rss_kb("VmHWM")
        self.c.data_many(r["stream"], [data[i:i + 1] for i in range(len(data))])
        self.c.end(r["stream"])
        done = self.c.wait_for(is_done(r["stream"]), "transfer.done", timeout=120)[2]
        self.assertNotIn("error", done)
        grown = self.agent.rss_kb("VmHWM") - hwm0
        self.assertLess(grown, 8 << 10, "agent peak VmRSS grew %d KiB for %d bytes"
                        % (grown, len(data)))
        self.assertEqual(open(self.p("dest", "f.bin"), "rb").read(), body)

    def test_many_hard_links(self):
        # Thousands of files with three links each (the table of seen files grows many times
        # over): each archived once, its other names links to the first; a file whose other
        # link is outside the tree is archived in full.
        src = self.p("src")
        for d in ("a", "b", "c"):
            os.makedirs(os.path.join(src, d))
        n = 3000
        for i in range(n):
            f = os.path.join(src, "a", "%05d" % i)
            with open(f, "w") as fh:
                fh.write("file %d\n" % i)
            os.link(f, os.path.join(src, "b", "%05d" % i))
            os.link(f, os.path.join(src, "c", "%05d" % i))
        with open(os.path.join(src, "lone"), "w") as fh:
            fh.write("lone\n")
        os.link(os.path.join(src, "lone"), self.p("outside"))
        data, end = self.download_tree(src)
        self.assertNotIn("error", end)
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            members = {m.name: m for m in tf.getmembers()}
            self.assertEqual(len(members), 3 * n + 4)
            for i in range(n):
                first = members["a/%05d" % i]
                self.assertTrue(first.isfile(), first.name)
                self.assertEqual(tf.extractfile(first).read(), b"file %d\n" % i)
                for d in ("b", "c"):
                    m = members["%s/%05d" % (d, i)]
                    self.assertTrue(m.islnk(), m.name)
                    self.assertEqual(m.linkname, first.name)
            self.assertTrue(members["lone"].isfile())
            self.assertEqual(tf.extractfile(members["lone"]).read(), b"lone\n")

    def test_directory_listed_twice(self):
        # The last entry of a directory sets its mode (as tar does). The first one's mode
        # without read permission was set first, and the identity (not root) could then not open
        # the directory to set the last one's: the upload failed (found by the untar fuzzer).
        with WorkloadUser() as u:
            dest = u.mkdtemp()
            data = tar_bytes([ti("d/", tarfile.DIRTYPE, mode=0o000), ti("d/f", data=b"x"),
                              ti("d/", tarfile.DIRTYPE, mode=0o750)])
            done, cancel = self.upload_tree(dest, data, user=u.name)
            self.assertIsNone(cancel)
            self.assertNotIn("error", done)
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(dest, "d")).st_mode), 0o750)
            with open(os.path.join(dest, "d", "f"), "rb") as f:
                self.assertEqual(f.read(), b"x")

    def test_order_and_names(self):
        src = self.p("src")
        os.makedirs(os.path.join(src, "b"))
        for n in ("c", "a", "b/z", "b/a", "B"):
            open(os.path.join(src, n), "w").write(n)
        data, _ = self.download_tree(src)
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            self.assertEqual(tf.getnames(), ["B", "a", "b", "b/a", "b/z", "c"])

    def test_python_tar_and_merge(self):
        dest = self.p("dest")
        os.makedirs(os.path.join(dest, "keep"))
        open(os.path.join(dest, "keep", "old"), "w").write("old")
        open(os.path.join(dest, "f"), "w").write("replaced")
        os.link(os.path.join(dest, "f"), self.p("outside-link"))
        data = tar_bytes([ti("./keep/", tarfile.DIRTYPE, mode=0o750), ti("./f", data=b"new"),
                          ti("g/h/i", data=b"deep", mode=0o600),
                          ti("lnk", tarfile.SYMTYPE, linkname="../../etc/passwd"),
                          ti("fifo", tarfile.FIFOTYPE)], fmt=tarfile.GNU_FORMAT)
        done, _ = self.upload_tree(dest, data)
        self.assertNotIn("error", done)
        self.assertEqual(done["files"], 4)
        self.assertEqual(open(os.path.join(dest, "keep", "old")).read(), "old")
        self.assertEqual(open(os.path.join(dest, "f")).read(), "new")
        self.assertEqual(open(self.p("outside-link")).read(), "replaced")
        self.assertEqual(stat.S_IMODE(os.lstat(os.path.join(dest, "keep")).st_mode), 0o750)
        self.assertEqual(stat.S_IMODE(os.lstat(os.path.join(dest, "g", "h", "i")).st_mode), 0o600)
        self.assertEqual(os.readlink(os.path.join(dest, "lnk")), "../../etc/passwd")
        self.assertFalse(os.path.exists(os.path.join(dest, "fifo")))
        # long names (pax path records) and a destination that did not exist
        long = "d" * 120 + "/" + "n" * 150
        data = tar_bytes([ti(long, data=b"L")])
        done, _ = self.upload_tree(self.p("new", "dest"), data)
        self.assertNotIn("error", done)
        self.assertEqual(open(self.p("new", "dest", long)).read(), "L")

    def hostile(self, members, want_name, want_in_message=None):
        dest = self.p("dest")
        os.makedirs(dest, exist_ok=True)
        done, cancel = self.upload_tree(dest, tar_bytes(members))
        self.assertEqual(done["error"]["code"], "BAD_PARAM", done)
        self.assertEqual(done["error"]["field"], "stream")
        self.assertIn(want_name, done["error"].get("path", ""))
        if want_in_message is not None:
            self.assertIn(want_in_message, done["error"]["message"])
        self.c.call("ping")

    def test_hostile_entries_refused(self):
        outside = self.p("outside")
        os.mkdir(outside)
        self.hostile([ti("/abs-file", data=b"x")], "abs-file")
        self.assertFalse(os.path.exists("/abs-file"))
        self.hostile([ti("a/../../escape", data=b"x")], "escape")
        self.assertFalse(os.path.exists(self.p("escape")))
        self.hostile([ti("..", tarfile.DIRTYPE)], "..")
        # a symlink leading out, then a write through it
        self.hostile([ti("evil", tarfile.SYMTYPE, linkname=outside),
                      ti("evil/pwned", data=b"x")], "evil/pwned")
        self.assertEqual(os.listdir(outside), [])
        # the same with the link replaced by a directory name deeper down
        self.hostile([ti("d", tarfile.DIRTYPE), ti("d/evil", tarfile.SYMTYPE, linkname="../../outside"),
                      ti("d/evil/x/y", data=b"x")], "d/evil/x/y")
        self.assertEqual(os.listdir(outside), [])
        # hard links to outside the tree
        # (PROTOCOL.md §18.3: `path` is the hard link entry's own name; the message names the
        # refused target)
        self.hostile([ti("hl", tarfile.LNKTYPE, linkname="../outside-file")], "hl",
                     "../outside-file")
        self.hostile([ti("hl", tarfile.LNKTYPE, linkname="/etc/passwd")], "hl", "/etc/passwd")
        open(os.path.join(outside, "secret"), "w").write("s")
        self.hostile([ti("e2", tarfile.SYMTYPE, linkname=outside),
                      ti("hl2", tarfile.LNKTYPE, linkname="e2/secret")], "hl2", "e2/secret")
        self.assertEqual(os.listdir(outside), ["secret"])
        self.assertEqual(os.lstat(os.path.join(outside, "secret")).st_nlink, 1)

    def test_malformed_and_cancel(self):
        dest = self.p("dest")
        done, _ = self.upload_tree(dest, b"this is not a tar archive" * 100)
        self.assertEqual(done["error"]["code"], "BAD_PARAM")
        done, _ = self.upload_tree(dest, tar_bytes([ti("f", data=b"x" * 5000)])[:3000])
        self.assertEqual(done["error"]["code"], "BAD_PARAM")
        done, _ = self.upload_tree(dest, b"")
        self.assertNotIn("error", done)  # an empty stream is an empty archive
        r = self.c.call("transfer.upload_tree", {"path": dest})
        self.c.data(r["stream"], tar_bytes([ti("f", data=b"x")])[:512])
        self.c.send([2, "stream.cancel", {"stream": r["stream"]}])
        done = self.c.wait_for(is_done(r["stream"]), "done")
        self.assertEqual(done[2]["error"]["code"], "CANCELLED")
        # the connection dies mid-way
        c2 = self.agent.connect()
        r = c2.call("transfer.upload_tree", {"path": dest})
        c2.data(r["stream"], tar_bytes([ti("g", data=b"x" * 100000)])[:50000])
        c2.sock.close()
        c2 = self.agent.connect()
        r = c2.call("transfer.download_tree", {"path": "/usr"})
        c2.recv()
        c2.sock.close()
        r = self.c.call("transfer.download_tree", {"path": "/usr"})
        self.c.wait_for(lambda m: m[0] == 3 and m[1] == r["stream"], "data")
        self.c.send([2, "stream.cancel", {"stream": r["stream"]}])
        self.c.call("ping")

    def test_errors(self):
        for method, params, code in [
                ("transfer.download_tree", {"path": self.p("nope")}, "ENOENT"),
                ("transfer.download_tree", {"path": "/etc/passwd"}, "ENOTDIR"),
                ("transfer.download_tree", {"path": self.tmp, "compress": "xz"}, "BAD_PARAM"),
                ("transfer.upload_tree", {"path": "/etc/passwd"}, "ENOTDIR"),
                ("transfer.upload_tree", {"path": self.tmp, "compress": 3}, "BAD_PARAM"),
                ("transfer.upload_tree", {"path": self.tmp, "preserve_owner": "yes"}, "BAD_PARAM")]:
            with self.assertRaises(w.RemoteError, msg=repr(params)) as cm:
                self.c.call(method, params)
            self.assertEqual(cm.exception.code, code, params)

    def test_preserve_owner(self):
        t, d = ti("owned", data=b"x")
        t.uid, t.gid = 2345, 5432
        data = tar_bytes([(t, d)])
        done, _ = self.upload_tree(self.p("a"), data)
        self.assertEqual(os.lstat(self.p("a", "owned")).st_uid, os.getuid())
        done, _ = self.upload_tree(self.p("b"), data, preserve_owner=True)
        st = os.lstat(self.p("b", "owned"))
        self.assertEqual((st.st_uid, st.st_gid), (2345, 5432))
        # and download_tree records numeric owners
        got, _ = self.download_tree(self.p("b"))
        with tarfile.open(fileobj=io.BytesIO(got)) as tf:
            m = tf.getmember("owned")
            self.assertEqual((m.uid, m.gid), (2345, 5432))

    def test_modes_exact_whatever_the_umask(self):
        # Files are created with their final mode when the agent's umask allows it, else
        # fixed with fchmod: either way the mode is the entry's, set-id and sticky bits too.
        modes = [0o644, 0o600, 0o666, 0o777, 0o444, 0o000, 0o4755, 0o2750, 0o1644, 0o755]
        members = [ti("m%o" % m, data=b"x%o" % m, mode=m) for m in modes]
        members.append(ti("sub", tarfile.DIRTYPE, mode=0o555))
        members.append(ti("sub/f", data=b"in a read-only dir", mode=0o640))
        data = tar_bytes(members)
        for um in (0o022, 0o077, 0o000):
            old = os.umask(um)
            try:
                agent = w.Agent(AGENT)
            finally:
                os.umask(old)
            try:
                c = agent.connect()
                for owner in (False, True):
                    dest = self.p("um%o-%s" % (um, owner))
                    r = c.call("transfer.upload_tree", {"path": dest, "preserve_owner": owner})
                    self.assertIsNone(send_stream(c, r["stream"], [data]))
                    done = c.wait_for(is_done(r["stream"]), "transfer.done")[2]
                    self.assertNotIn("error", done)
                    for m in modes:
                        f = os.path.join(dest, "m%o" % m)
                        self.assertEqual(stat.S_IMODE(os.lstat(f).st_mode), m, (um, owner, f))
                        self.assertEqual(open(f, "rb").read(), b"x%o" % m)
                        self.assertEqual(os.lstat(f).st_mtime, 1500000000)
                    self.assertEqual(stat.S_IMODE(os.lstat(os.path.join(dest, "sub")).st_mode),
                                     0o555)
                    self.assertEqual(stat.S_IMODE(os.lstat(os.path.join(dest, "sub", "f")).st_mode),
                                     0o640)
                c.close()
            finally:
                agent.stop()

    def test_existing_entries_replaced_not_followed(self):
        dest = self.p("dest")
        outside = self.p("outside")
        os.makedirs(os.path.join(outside, "dir"))
        open(os.path.join(outside, "file"), "w").write("outside")
        os.makedirs(os.path.join(dest, "full"))
        open(os.path.join(dest, "full", "x"), "w").write("x")
        os.symlink(os.path.join(outside, "file"), os.path.join(dest, "to-file"))
        os.symlink(os.path.join(outside, "dir"), os.path.join(dest, "to-dir"))
        os.symlink("/nonexistent", os.path.join(dest, "dangling"))
        os.link(os.path.join(outside, "file"), os.path.join(dest, "linked"))
        done, _ = self.upload_tree(dest, tar_bytes([
            ti("to-file", data=b"new file"), ti("dangling", data=b"new too"),
            ti("linked", data=b"unlinked"), ti("to-dir", tarfile.DIRTYPE, mode=0o700),
            ti("to-dir/in", data=b"inside")]))
        self.assertNotIn("error", done)
        for n, want in (("to-file", b"new file"), ("dangling", b"new too"),
                        ("linked", b"unlinked"), ("to-dir/in", b"inside")):
            p = os.path.join(dest, n)
            self.assertTrue(stat.S_ISREG(os.lstat(p).st_mode), n)
            self.assertEqual(open(p, "rb").read(), want, n)
        self.assertTrue(stat.S_ISDIR(os.lstat(os.path.join(dest, "to-dir")).st_mode))
        self.assertEqual(open(os.path.join(outside, "file")).read(), "outside")
        self.assertEqual(os.lstat(os.path.join(outside, "file")).st_nlink, 1)
        self.assertEqual(os.listdir(os.path.join(outside, "dir")), [])
        # a file entry where a directory is: refused with the errno and the name
        done, _ = self.upload_tree(dest, tar_bytes([ti("full", data=b"no")]))
        self.assertEqual(done["error"]["code"], "EISDIR", done)
        self.assertEqual(done["error"]["path"], "full")
        self.assertEqual(open(os.path.join(dest, "full", "x")).read(), "x")


def run_pack(conn, params):
    """pack.create to completion: (result, {sid: bytes}, {sid: end params}, parts, progress)."""
    r = conn.call("pack.create", params)
    sids = [r["archive"]] + [r[k] for k in ("build_stdout", "build_stderr") if k in r]
    data = {s: bytearray() for s in sids}
    ends, parts, progress, consumed = {}, [], [], {}
    while r["archive"] not in ends or any(s not in ends for s in sids):
        m = conn.recv()
        if m is None:
            raise EOFError("closed")
        if m[0] == 3 and m[1] in data:
            data[m[1]] += m[2]
            consumed[m[1]] = consumed.get(m[1], 0) + len(m[2])
            if consumed[m[1]] >= conn.window // 2:
                conn.credit(m[1], consumed[m[1]])
                consumed[m[1]] = 0
        elif m[0] == 2 and m[1] == "stream.end" and m[2]["stream"] in data:
            ends[m[2]["stream"]] = m[2]
        elif m[0] == 2 and m[1] == "pack.manifest":
            assert r["archive"] not in ends, "manifest after the archive's end"
            parts.append(m[2])
        elif m[0] == 2 and m[1] == "pack.progress":
            progress.append(m[2])
    return r, {k: bytes(v) for k, v in data.items()}, ends, parts, progress


class TestPack(TransferCase):
    def tree(self):
        root = self.p("app")
        make_tree(root)
        os.makedirs(os.path.join(root, ".git", "objects"))
        open(os.path.join(root, ".git", "HEAD"), "w").write("ref")
        return root

    def test_deterministic_and_manifest_verified(self):
        root = self.tree()
        for fmt in ("tar.gz", "tar.zst"):
            params = {"path": root, "format": fmt, "entrypoint": "sub/deeper/x",
                      "args": ["--port", "8080"]}
            r1, d1, e1, parts, progress = run_pack(self.c, params)
            r2, d2, e2, _, _ = run_pack(self.c, params)
            a1, a2 = d1[r1["archive"]], d2[r2["archive"]]
            self.assertNotIn("error", e1[r1["archive"]])
            self.assertEqual(a1, a2, fmt + ": the same tree gives the same bytes")
            self.assertNotIn("build_stdout", r1)
            last = parts[-1]
            self.assertTrue(last["last"])
            self.assertEqual([p["part"] for p in parts], list(range(len(parts))))
            self.assertEqual(last["archive_size"], len(a1))
            self.assertEqual(last["archive_sha256"], hashlib.sha256(a1).hexdigest())
            self.assertEqual(last["entrypoint"], "sub/deeper/x")
            self.assertEqual(last["args"], ["--port", "8080"])
            self.assertEqual(last["format"], fmt)
            files = [f for p in parts for f in p["files"]]
            self.assertEqual(last["file_count"], len(files))
            paths = [f["path"] for f in files]
            self.assertEqual(paths, sorted(paths, key=lambda x: x.encode()))
            self.assertFalse(any(p == ".git" or p.startswith(".git/") for p in paths))
            self.assertEqual(progress[-1]["phase"], "done")
            self.assertIn("scan", [p["phase"] for p in progress])
            self.assertIn("archive", [p["phase"] for p in progress])
            for f in files:
                full = os.path.join(root, f["path"])
                st = os.lstat(full)
                self.assertEqual(f["mode"], stat.S_IMODE(st.st_mode), f)
                if f["type"] == "file":
                    self.assertEqual(f["sha256"], hashlib.sha256(open(full, "rb").read()).hexdigest())
                    self.assertEqual(f["size"], st.st_size)
                elif f["type"] == "symlink":
                    self.assertEqual(f["target"], os.readlink(full))
            self.assertEqual(last["total_size"], sum(f["size"] for f in files))
            if fmt == "tar.gz":
                self.assertEqual(a1[4:8], b"\0\0\0\0", "no timestamp in the gzip header")
                with tarfile.open(fileobj=io.BytesIO(a1), mode="r:gz") as tf:
                    members = tf.getmembers()
                    self.assertEqual([m.name for m in members][:-1], paths)
                    for m in members:
                        self.assertEqual((m.uid, m.gid, m.uname, m.gname), (0, 0, "", ""))
                    inside = json.loads(tf.extractfile(".sbx-manifest.json").read())
                    self.assertEqual(inside["files"], files)
                    self.assertEqual(inside["entrypoint"], "sub/deeper/x")
                    for m in members:
                        if m.isfile() and m.name != ".sbx-manifest.json":
                            f = next(x for x in files if x["path"] == m.name)
                            self.assertEqual(hashlib.sha256(tf.extractfile(m).read()).hexdigest(),
                                             f["sha256"])

    def test_ignore_rules(self):
        root = self.p("app")
        for f in ("keep.txt", "debug.log", "important.log", "node_modules/x/y.js",
                  "build/out.o", "src/build/gen.c", "a/b/c/z.tmp", "a/z.tmp", "docs/cache",
                  "docs/cache2/f", "src/main.c", "cache/f"):
            os.makedirs(os.path.dirname(os.path.join(root, f)), exist_ok=True)
            open(os.path.join(root, f), "w").write(f)
        open(os.path.join(root, ".sbxignore"), "w").write(
            "# comment\n\n*.log\n!important.log\n/build\na/**/z.tmp\ncache/\n")
        _, data, ends, parts, _ = run_pack(self.c, {"path": root, "format": "tar.gz",
                                                     "exclude": ["node_modules", "docs/cache2"]})
        paths = {f["path"] for p in parts for f in p["files"]}
        self.assertEqual(paths, {".sbxignore", "keep.txt", "important.log", "src", "src/build",
                                 "src/build/gen.c", "src/main.c", "a", "a/b", "a/b/c", "docs",
                                 "docs/cache"})
        # ignore_files replaces the default list
        _, _, _, parts, _ = run_pack(self.c, {"path": root, "format": "tar.gz",
                                              "ignore_files": []})
        paths = {f["path"] for p in parts for f in p["files"]}
        self.assertIn("debug.log", paths)
        self.assertIn("cache/f", paths)

    def test_build_streamed_and_packed(self):
        root = self.p("app")
        os.mkdir(root)
        r, data, ends, parts, progress = run_pack(self.c, {
            "path": root, "format": "tar.zst", "entrypoint": "bin/app",
            "build": {"command": "echo building; echo warn >&2; mkdir bin; "
                                 "printf '#!/bin/sh\\necho hi\\n' > bin/app; chmod 755 bin/app",
                      "env": {"X": "1"}}})
        self.assertEqual(data[r["build_stdout"]], b"building\n")
        self.assertEqual(data[r["build_stderr"]], b"warn\n")
        self.assertLess(r["build_stdout"], r["archive"])
        build = [p for p in progress if p["phase"] == "build"]
        self.assertEqual(build[0]["exit"]["code"], 0)
        self.assertNotIn("error", ends[r["archive"]])
        files = {f["path"]: f for p in parts for f in p["files"]}
        self.assertEqual(files["bin/app"]["mode"], 0o755)
        # argv form, with cwd
        r, data, ends, parts, _ = run_pack(self.c, {
            "path": root, "format": "tar.gz",
            "build": {"argv": ["/bin/sh", "-c", "pwd"], "cwd": "/"}})
        self.assertEqual(data[r["build_stdout"]], b"/\n")

    def test_build_background_child_holding_stdout(self):
        # The build is a process like any other (issue 13): a background child that keeps the
        # build's stdout open does not stall pack.create; after the drain deadline (§9.2) the
        # build's streams end truncated and packing goes on. The exit map is the full §14.3 one.
        root = self.p("app")
        os.mkdir(root)
        t0 = time.time()
        r, data, ends, parts, progress = run_pack(self.c, {
            "path": root, "format": "tar.gz",
            "build": {"command": "echo built; sleep 60 & exit 0"}})
        self.assertLess(time.time() - t0, 30, "the build's held stdout stalled pack.create")
        self.assertEqual(data[r["build_stdout"]], b"built\n")
        self.assertTrue(ends[r["build_stdout"]].get("truncated"), ends)
        exitmap = [p for p in progress if p["phase"] == "build"][0]["exit"]
        self.assertEqual((exitmap["code"], exitmap["drained"]), (0, False))
        for k in ("id", "pid", "signo", "core", "stdout_bytes", "stderr_bytes", "rusage"):
            self.assertIn(k, exitmap)
        self.assertNotIn("error", ends[r["archive"]])
        # Internal processes are not listed (§14.7).
        self.assertEqual([p for p in self.c.call("proc.list")["procs"]
                          if p["pid"] == exitmap["pid"]], [])

    def test_failing_build(self):
        root = self.p("app")
        os.mkdir(root)
        r, data, ends, parts, progress = run_pack(self.c, {
            "path": root, "format": "tar.gz", "build": {"command": "echo no >&2; exit 3"}})
        self.assertEqual(data[r["build_stderr"]], b"no\n")
        self.assertEqual([p for p in progress if p["phase"] == "build"][0]["exit"]["code"], 3)
        err = ends[r["archive"]]["error"]
        self.assertEqual(err["code"], "CANCELLED")
        self.assertEqual(err["stage"], "build")
        self.assertIn("exit status 3", err["message"])
        self.assertEqual(data[r["archive"]], b"")
        self.assertEqual(parts, [])
        # killed by its timeout
        r, data, ends, _, progress = run_pack(self.c, {
            "path": root, "format": "tar.gz",
            "build": {"command": "sleep 30", "timeout_ms": 200}})
        exitmap = [p for p in progress if p["phase"] == "build"][0]["exit"]
        self.assertEqual(exitmap["signal"], "SIGKILL")
        self.assertTrue(exitmap["timed_out"])
        self.assertEqual(ends[r["archive"]]["error"]["stage"], "build")

    def test_errors(self):
        root = self.p("app")
        os.mkdir(root)
        for params, code, field in [
                ({"path": root}, "BAD_PARAM", "format"),
                ({"path": root, "format": "zip"}, "BAD_PARAM", "format"),
                ({"path": self.p("nope"), "format": "tar.gz"}, "ENOENT", None),
                ({"path": "/etc/passwd", "format": "tar.gz"}, "ENOTDIR", None),
                ({"path": root, "format": "tar.gz", "entrypoint": "/abs"}, "BAD_PARAM", "entrypoint"),
                ({"path": root, "format": "tar.gz", "exclude": [1]}, "BAD_PARAM", "exclude[0]"),
                ({"path": root, "format": "tar.gz", "exclude": ["*a" * 40]}, "BAD_PARAM",
                 "exclude[0]"),
                ({"path": root, "format": "tar.gz", "build": {}}, "BAD_PARAM", "build"),
                ({"path": root, "format": "tar.gz", "build": {"argv": ["/nonexistent"]}}, "ENOENT",
                 None)]:
            with self.assertRaises(w.RemoteError, msg=repr(params)) as cm:
                self.c.call("pack.create", params)
            self.assertEqual(cm.exception.code, code, params)
            if field:
                self.assertEqual(cm.exception.err.get("field"), field, params)
        r, _, ends, parts, _ = run_pack(self.c, {"path": root, "format": "tar.gz",
                                                 "entrypoint": "missing"})
        err = ends[r["archive"]]["error"]
        self.assertEqual((err["code"], err["field"]), ("ENOENT", "entrypoint"))

    def test_cancel_kills_build(self):
        root = self.p("app")
        os.mkdir(root)
        marker = self.p("marker")
        r = self.c.call("pack.create", {"path": root, "format": "tar.gz",
                                        "build": {"command": "sleep 2; touch " + marker}})
        self.c.send([2, "stream.cancel", {"stream": r["archive"]}])
        m = self.c.wait_for(lambda m: m[0] == 2 and m[1] == "stream.end"
                            and m[2]["stream"] == r["build_stdout"], "build stdout end")
        self.assertEqual(m[2]["error"]["code"], "CANCELLED")
        time.sleep(2.5)
        self.assertFalse(os.path.exists(marker))
        self.c.call("ping")
        # a connection closing mid-build
        c2 = self.agent.connect()
        c2.call("pack.create", {"path": root, "format": "tar.gz",
                                "build": {"command": "sleep 2; touch " + marker}})
        c2.sock.close()
        time.sleep(2.5)
        self.assertFalse(os.path.exists(marker))
        self.c.call("ping")


SBX = os.path.join(BUILD, "bin", "sbx")


class TestCpCli(TransferCase):
    def sbx(self, *args, ok=True, umask=-1, addr=None, timeout=300):
        env = dict(os.environ, SBX_ADDR=addr or self.agent.addr)
        r = subprocess.run([SBX, *args], env=env, capture_output=True, timeout=timeout,
                           umask=umask)
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

    def test_download_gives_no_setid_or_device(self):
        """What the guest's files are is the guest's choice: a download makes no set-id program
        and no device node or FIFO on this machine, and its modes obey the local umask (as cp and a
        user's tar make them). Run as root, the single-file download made a set-uid root copy;
        the tree's made "mem" and a disk open to everyone."""
        g = self.p("g")
        os.mkdir(g)
        open(os.path.join(g, "suid"), "w").write("#!/bin/sh\nid\n")
        os.chmod(os.path.join(g, "suid"), 0o4777)
        open(os.path.join(g, "sgid"), "w").write("x")
        os.chmod(os.path.join(g, "sgid"), 0o2755)
        os.mkdir(os.path.join(g, "sticky"))
        os.chmod(os.path.join(g, "sticky"), 0o1777)
        os.mknod(os.path.join(g, "null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.mkfifo(os.path.join(g, "fifo"), 0o666)
        self.sbx("cp", ":" + os.path.join(g, "suid"), self.p("one"), umask=0o027)
        self.assertEqual(stat.S_IMODE(os.lstat(self.p("one")).st_mode), 0o750)
        self.sbx("cp", "-r", ":" + g, self.p("tree"), umask=0o027)
        modes = {n: os.lstat(self.p("tree", n)).st_mode for n in os.listdir(self.p("tree"))}
        # No "null", and no "fifo" (it would hang whatever reads the tree here later).
        self.assertEqual(sorted(modes), ["sgid", "sticky", "suid"])
        self.assertEqual(stat.S_IMODE(modes["suid"]), 0o750)
        self.assertEqual(stat.S_IMODE(modes["sgid"]), 0o750)
        self.assertEqual(stat.S_IMODE(modes["sticky"]), 0o750)

    def test_progress_when_more_comes_than_the_agent_said(self):
        """The size in transfer.download's result is the agent's word: more data than it said
        keeps the bar full. The bar's padding came from done / size, 20 - bars spaces: with a
        size of 1, megabytes of spaces on the terminal at every redraw."""
        src = self.p("big.bin")
        data = os.urandom(4 << 20)
        open(src, "wb").write(data)

        def edit(msg, asked):
            if msg[0] == 1 and asked.get(msg[1]) == "transfer.download" and msg[3]:
                return [msg[0], msg[1], msg[2], dict(msg[3], size=1)]
            if msg[0] == 3:
                time.sleep(0.1)  # long enough for the bar to be drawn
            return msg
        relay = w.Relay(self.agent.addr[len("unix:"):], self.p("relay.sock"), edit)
        self.addCleanup(relay.close)
        master, slave = pty.openpty()
        p = subprocess.Popen([SBX, "cp", ":" + src, self.p("back.bin")],
                             env=dict(os.environ, SBX_ADDR=relay.addr), stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=slave)
        os.close(slave)
        out = bytearray()
        try:
            while True:
                try:
                    b = os.read(master, 65536)
                except OSError:  # EIO: the CLI is gone
                    break
                if not b:
                    break
                out += b
        finally:
            os.close(master)
        self.assertEqual(p.wait(60), 0, out[-2000:])
        self.assertEqual(open(self.p("back.bin"), "rb").read(), data)
        self.assertLess(len(out), 16384, "%d bytes on the terminal" % len(out))
        self.assertIn(b"[####################] 100%", out)

    def test_agent_cancels_its_stream(self):
        """The agent may cancel a stream of its own (PROTOCOL.md §8.5): cp, cp -r and pack end
        with its error, leaving nothing behind. They waited for the stream's end, which never
        comes, for ever."""
        src = self.p("f.bin")
        open(src, "wb").write(os.urandom(1 << 20))
        tree = self.p("tree")
        make_tree(tree)
        os.mkdir(self.p("out"))
        streams = {"transfer.download": "stream", "transfer.download_tree": "stream",
                   "pack.create": "archive"}
        watched = set()

        def edit(msg, asked):
            if msg[0] == 1 and asked.get(msg[1]) in streams and msg[3]:
                watched.add(msg[3][streams[asked[msg[1]]]])
            elif msg[0] == 3 and msg[1] in watched:
                watched.discard(msg[1])
                return [2, "stream.cancel", {"stream": msg[1], "error": {
                    "code": "EIO", "message": "the guest's disk went away"}}]
            return msg
        relay = w.Relay(self.agent.addr[len("unix:"):], self.p("relay.sock"), edit)
        self.addCleanup(relay.close)
        for args in (("cp", ":" + src, self.p("out", "f.bin")),
                     ("cp", "-r", ":" + tree, self.p("out", "tree")),
                     ("pack", tree, "-o", self.p("out", "t.tgz"))):
            r = self.sbx(*args, ok=False, addr=relay.addr, timeout=30)
            self.assertEqual(r.returncode, 1, args)
            self.assertIn(b"the guest's disk went away", r.stderr, args)
        self.assertEqual(leftovers(self.p("out")), [])
        self.assertFalse(os.path.exists(self.p("out", "f.bin")))
        self.assertFalse(os.path.exists(self.p("out", "t.tgz")))

    def test_file_no_verify(self):
        src = self.p("nv.bin")
        data = pattern(4 * CHUNK + 99, 6)
        open(src, "wb").write(data)
        self.sbx("cp", "--no-verify", src, ":" + self.p("nv.out"))
        self.assertEqual(open(self.p("nv.out"), "rb").read(), data)
        self.assertIn(b"--no-verify", self.sbx("cp", "--help").stdout)

    def test_tree_round_trip(self):
        src = self.p("src")
        make_tree(src)
        for comp in ("none", "gzip", "zstd"):
            guest = self.p("guest-" + comp)
            self.sbx("cp", "-r", "-z", comp, src, ":" + guest)
            self.assertEqual(snapshot(guest), snapshot(src))
            back = self.p("back-" + comp)
            self.sbx("cp", "-r", "-z", comp, ":" + guest, back)
            self.assertEqual(snapshot(back), snapshot(src))
        # into existing directories: under the source's name
        os.mkdir(self.p("into"))
        self.sbx("cp", "-r", src, ":" + self.p("into") + "/")
        self.assertEqual(snapshot(self.p("into", "src")), snapshot(src))
        os.mkdir(self.p("local"))
        self.sbx("cp", "-r", ":" + src, self.p("local"))
        self.assertEqual(snapshot(self.p("local", "src")), snapshot(src))
        r = self.sbx("cp", "-r", ":" + self.p("nope"), self.p("x"), ok=False)
        self.assertIn(b"ENOENT", r.stderr)
        r = self.sbx("cp", "-r", self.p("nope"), ":" + self.p("y"), ok=False)
        self.assertEqual(r.returncode, 1)

    def test_tree_upload_sparse_special_and_links(self):
        src = self.p("src")
        make_tree(src)
        with open(os.path.join(src, "sparse"), "wb") as f:  # data, hole, data, trailing hole
            f.write(b"A" * 5000)
            f.seek(1 << 20)
            f.write(b"B" * 7000)
            f.truncate(64 << 20)
        with open(os.path.join(src, "all-hole"), "wb") as f:
            f.truncate(16 << 20)
        with open(os.path.join(src, "lead-hole"), "wb") as f:
            f.seek(8 << 20)
            f.write(b"C" * 100)
        for n in ("h2", "h3"):
            os.link(os.path.join(src, "sub", "big.bin"), os.path.join(src, n))
        os.symlink("sub", os.path.join(src, "dirlink"))
        os.mkfifo(os.path.join(src, "fifo"))  # must not block the walk
        sk = socket.socket(socket.AF_UNIX)
        sk.bind(os.path.join(src, "sock"))
        ro = os.path.join(src, "ro")
        os.mkdir(ro)
        open(os.path.join(ro, "f"), "w").write("f")
        os.chmod(ro, 0o555)
        guest = self.p("guest")
        try:
            self.sbx("cp", "-r", src, ":" + guest)
        finally:
            sk.close()
        want = {k: v for k, v in snapshot(src).items() if k not in ("fifo", "sock")}
        self.assertEqual(snapshot(guest), want)  # FIFOs and sockets are not carried
        ino = os.lstat(os.path.join(guest, "sub", "big.bin")).st_ino
        for n in ("h2", "h3"):
            self.assertEqual(os.lstat(os.path.join(guest, n)).st_ino, ino)
        self.assertEqual(os.lstat(os.path.join(guest, "a.txt")).st_ino,
                         os.lstat(os.path.join(guest, "sub", "hard")).st_ino)
        for n, size in (("sparse", 64 << 20), ("all-hole", 16 << 20), ("lead-hole", (8 << 20) + 100)):
            st = os.lstat(os.path.join(guest, n))
            self.assertEqual(st.st_size, size, n)
            # holes stay holes (only the data was sent and written)
            self.assertLess(st.st_blocks * 512, 1 << 20, n)

    def test_tree_upload_error_names_errno_and_path(self):
        # A tree deeper than PATH_MAX (built with relative names) cannot be walked by name:
        # the walk stops with the errno and the path where it stopped.
        src = self.p("deep")
        os.mkdir(src)
        fd = os.open(src, os.O_RDONLY)
        try:
            for _ in range(20):
                os.mkdir("d" * 250, dir_fd=fd)
                nfd = os.open("d" * 250, os.O_RDONLY, dir_fd=fd)
                os.close(fd)
                fd = nfd
        finally:
            os.close(fd)
        r = self.sbx("cp", "-r", src, ":" + self.p("guest"), ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"ENAMETOOLONG", r.stderr)
        self.assertIn(b"walk ..." + b"d" * 150, r.stderr)
        # the guest's side was told the archive is incomplete: nothing half-done is reported
        # as success, and the agent serves on
        self.c.call("ping")

    def test_pack(self):
        root = self.p("app")
        make_tree(root)
        out = self.p("out", "app.tar.zst")
        os.mkdir(self.p("out"))
        r = self.sbx("pack", root, "-o", out, "--build", "echo built; echo note >&2; touch made",
                     "--entrypoint", "a.txt", "--arg", "x", "--exclude", "empty")
        self.assertEqual(r.stdout, b"built\n")
        self.assertIn(b"note\n", r.stderr)
        data = open(out, "rb").read()
        self.assertEqual(data[:4], b"\x28\xb5\x2f\xfd")  # zstd frame magic
        man = json.load(open(out + ".manifest.json"))
        self.assertEqual(man["archive_sha256"], hashlib.sha256(data).hexdigest())
        self.assertEqual(man["archive_size"], len(data))
        self.assertEqual(man["entrypoint"], "a.txt")
        self.assertEqual(man["args"], ["x"])
        paths = [f["path"] for f in man["files"]]
        self.assertIn("made", paths)
        self.assertNotIn("empty", paths)
        self.assertEqual(man["file_count"], len(paths))
        self.assertEqual(sorted(os.listdir(self.p("out"))), ["app.tar.zst",
                                                             "app.tar.zst.manifest.json"])
        # deterministic through the CLI too, and .tgz picks gzip
        self.sbx("pack", root, "-o", self.p("out", "b.tgz"), "--exclude", "made")
        self.sbx("pack", root, "-o", self.p("out", "c.tgz"), "--exclude", "made")
        self.assertEqual(open(self.p("out", "b.tgz"), "rb").read(),
                         open(self.p("out", "c.tgz"), "rb").read())
        r = self.sbx("pack", root, "-o", self.p("out", "d.tgz"), "--build", "exit 4", ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"exit status 4", r.stderr)
        self.assertFalse(os.path.exists(self.p("out", "d.tgz")))
        self.assertEqual(leftovers(self.p("out")), [])
        r = self.sbx("pack", root, "-o", self.p("out", "e.zip"), ok=False)
        self.assertEqual(r.returncode, 2)
        self.assertIn(b"sbx pack", self.sbx("pack", "--help").stdout)

    def test_pack_without_the_manifest_end(self):
        """An agent that ends the archive without the manifest's last part: the manifest would be
        cut short (not even JSON), so nothing is renamed into place and sbx exits 1."""
        root = self.p("app")
        make_tree(root)
        os.mkdir(self.p("out"))

        def edit(msg, asked):
            if msg[0] == 2 and msg[1] == "pack.manifest" and msg[2].get("last"):
                return None
            return msg
        relay = w.Relay(self.agent.addr[len("unix:"):], self.p("relay.sock"), edit)
        self.addCleanup(relay.close)
        r = self.sbx("pack", root, "-o", self.p("out", "app.tgz"), addr=relay.addr, ok=False)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn(b"without the manifest's last part", r.stderr)
        self.assertEqual(os.listdir(self.p("out")), [])

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
