#!/usr/bin/env python3
"""Attacks on the agent's file handling by a real unprivileged workload user (issue 14, items 3
and 9), each as the workload would make it (workload.py):

- item 3: a FIFO whose writer the workload holds open (or that nobody opens) where the host reads
  a file: transfer.download must refuse it at once, download_tree must finish, eight such
  downloads must not starve an unrelated upload or copy of the agent's threadpool, fs.copy must
  neither read from nor write into one, a pack member swapped for such a FIFO after the scan
  must end the pack rather than hang it, and a FIFO as the pack root's .sbxignore must not
  freeze the agent;
- fs.flock against a lock the workload holds, or holds while stopped: no freeze, an answer once
  it is gone;
- fs.walk with a costly but allowed pattern over the longest paths the workload can make (30
  nested names of 255 bytes): the walk's batches yield the loop, so other connections are
  answered while it runs;
- item 9: processes spawned while the agent works on trees (download_tree, pack, fs.walk,
  upload_tree with hard links, uploads, copies) must not inherit any agent fd: each child lists
  its own /proc/self/fd.
"""
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import unittest
import warnings

warnings.simplefilter("ignore", ResourceWarning)

sys.path.insert(0, os.path.dirname(__file__))
import sbxwire as w  # noqa: E402
from workload import PY, WorkloadUser  # noqa: E402

BUILD = os.environ.get("SBX_BUILD", os.path.join(os.path.dirname(__file__), "../../build"))
AGENT = os.path.join(BUILD, "bin", "sbx-agent")

# How long an answer may take before the agent counts as stuck (a loaded sanitizer build
# answers in well under a second).
PROMPT = 10
# Spawns of the fd-leak test: the agent before the fix leaked a directory fd into about one
# spawn in eight with this load (41 of 300), so 300 shows it every time.
SPAWNS = 300


def is_done(sid):
    return lambda m: m[0] == 2 and m[1] == "transfer.done" and m[2]["stream"] == sid


def stream_msg(sid):
    return lambda m: (m[0] == 3 and m[1] == sid) or (
        m[0] == 2 and m[1] in ("stream.end", "stream.cancel") and m[2]["stream"] == sid)


def drain(conn, sid, timeout=PROMPT):
    """Read out stream @sid to its end, granting credit; (bytes, end params). Other messages
    stay pending. Raises TimeoutError when nothing arrives for @timeout seconds."""
    out = bytearray()
    consumed = 0
    while True:
        m = conn.wait_for(stream_msg(sid), "stream %d" % sid, timeout=timeout)
        if m[0] == 3:
            out += m[2]
            consumed += len(m[2])
            if consumed >= conn.window // 2:
                conn.credit(sid, consumed)
                consumed = 0
        else:
            return bytes(out), m[2]


def upload(conn, path, data, timeout=PROMPT):
    """transfer.upload of @data to @path; the transfer.done params."""
    sid = conn.call("transfer.upload", {"path": path})["stream"]
    for off in range(0, len(data), 1 << 18):
        conn.data(sid, data[off:off + (1 << 18)])
    conn.end(sid)
    return conn.wait_for(is_done(sid), "transfer.done", timeout=timeout)[2]


class AttackCase(unittest.TestCase):
    def setUp(self):
        self.u = WorkloadUser()  # first: it skips the test when not root
        self.agent = w.Agent(AGENT)
        self.c = self.agent.connect()
        self.tmp = tempfile.mkdtemp(prefix="sbx-attack-")  # root's, 0700
        self.conns = []
        self.held = []  # workload processes holding FIFOs open

    def tearDown(self):
        # Reap the workload's processes first: WorkloadUser.close() waits for them only after
        # its pkill loop, which would count their zombies as alive until it gives up.
        for p in self.held:
            p.kill()
            p.wait()
        self.u.close()
        for c in self.conns:
            c.close()
        self.agent.finish(self, self.c, self.tmp)

    def connect(self):
        c = self.agent.connect()
        self.conns.append(c)
        return c

    def mkfifo(self, path):
        r = self.u.run(["mkfifo", path])
        self.assertEqual(r.returncode, 0, r.stderr)

    def hold_fifo(self, path):
        """The workload opens FIFO @path read-write (so it is its writer, and opening it for
        reading does not wait) and keeps it open, writing nothing."""
        p = self.u.popen(["/bin/sh", "-c", 'exec 3<>"$1"; exec sleep 3600', "sh", path])
        self.held.append(p)
        deadline = time.monotonic() + PROMPT
        while time.monotonic() < deadline:
            try:
                if os.readlink("/proc/%d/fd/3" % p.pid) == path:
                    return p
            except OSError:
                pass
            time.sleep(0.01)
        self.fail("the workload did not open " + path)

    def assert_not_regular(self, path):
        """transfer.download of @path: EINVAL "not a regular file", answered at once."""
        t0 = time.monotonic()
        with self.assertRaises(w.RemoteError, msg=path) as cm:
            rid = self.c.request("transfer.download", {"path": path})
            self.c.sock.settimeout(PROMPT)
            self.c.wait(rid)
        self.assertEqual(cm.exception.code, "EINVAL", cm.exception.err)
        self.assertEqual(cm.exception.err.get("path"), path)
        self.assertIn("not a regular file", cm.exception.err["message"])
        self.assertLess(time.monotonic() - t0, PROMPT / 2)


class TestAttackFifo(AttackCase):
    """Item 3: FIFOs the workload owns, where the host reads files."""

    def test_download_refuses_fifos_at_once(self):
        d = self.u.mkdtemp()
        held, lonely = os.path.join(d, "held"), os.path.join(d, "lonely")
        self.mkfifo(held)
        self.mkfifo(lonely)
        self.hold_fifo(held)
        r = self.u.run(["ln", "-s", held, os.path.join(d, "link")])
        self.assertEqual(r.returncode, 0, r.stderr)
        for path in (held, lonely, os.path.join(d, "link")):
            self.assert_not_regular(path)
        # Nothing of the agent is held: uploads still complete.
        done = upload(self.c, os.path.join(self.tmp, "after"), b"after" * 1000)
        self.assertNotIn("error", done)
        self.c.call("ping")

    def test_download_tree_with_fifos_finishes(self):
        d = self.u.mkdtemp()
        r = self.u.sh("cd '%s' && mkdir sub && printf hello > a.txt && head -c 300000 /dev/zero"
                      " > sub/b.bin && mkfifo held lonely sub/deep" % d)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.hold_fifo(os.path.join(d, "held"))
        self.hold_fifo(os.path.join(d, "sub", "deep"))
        sid = self.c.call("transfer.download_tree", {"path": d})["stream"]
        data, end = drain(self.c, sid)
        self.assertNotIn("error", end)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
            members = {m.name: m for m in tf.getmembers()}
            for name in ("held", "lonely", "sub/deep"):
                self.assertTrue(members[name].isfifo(), name)
                self.assertEqual(members[name].size, 0)
            self.assertEqual(tf.extractfile("a.txt").read(), b"hello")
            self.assertEqual(tf.extractfile("sub/b.bin").read(), bytes(300000))

    def test_eight_fifo_downloads_do_not_starve_uploads(self):
        d = self.u.mkdtemp()
        fifo = os.path.join(d, "held")
        self.mkfifo(fifo)
        self.hold_fifo(fifo)
        # Eight downloads at once, on connections of their own (more than libuv's 4 workers).
        pending = []
        for _ in range(8):
            c = self.connect()
            pending.append((c, c.request("transfer.download", {"path": fifo})))
        # An unrelated upload and a copy complete promptly.
        data = os.urandom(1 << 20)
        done = upload(self.c, os.path.join(self.tmp, "up"), data)
        self.assertNotIn("error", done)
        self.assertEqual(done["sha256"], hashlib.sha256(data).hexdigest())
        self.c.sock.settimeout(PROMPT)
        self.c.call("fs.copy", {"from": os.path.join(self.tmp, "up"),
                                "to": os.path.join(self.tmp, "copy")})
        with open(os.path.join(self.tmp, "copy"), "rb") as f:
            self.assertEqual(f.read(), data)
        # And every download was refused (not left waiting on the FIFO).
        for c, rid in pending:
            c.sock.settimeout(PROMPT)
            with self.assertRaises(w.RemoteError) as cm:
                c.wait(rid)
            self.assertEqual(cm.exception.code, "EINVAL")

    def test_copy_never_reads_or_writes_a_fifo(self):
        d = self.u.mkdtemp()
        held = os.path.join(d, "held")
        self.mkfifo(held)
        self.hold_fifo(held)
        self.c.sock.settimeout(PROMPT)
        with self.assertRaises(w.RemoteError) as cm:
            self.c.call("fs.copy", {"from": held, "to": os.path.join(self.tmp, "x")})
        self.assertEqual(cm.exception.code, "EINVAL")
        self.assertIn("not a regular file", cm.exception.err["message"])
        # A FIFO planted where the copy goes: refused, not written into.
        with open(os.path.join(self.tmp, "src"), "wb") as f:
            f.write(b"secret" * 100)
        with self.assertRaises(w.RemoteError) as cm:
            self.c.call("fs.copy", {"from": os.path.join(self.tmp, "src"), "to": held})
        self.assertEqual(cm.exception.code, "EINVAL")
        self.assertEqual(cm.exception.err.get("path"), held)
        self.c.call("ping")

    def test_pack_member_swapped_for_fifo_after_scan(self):
        d = self.u.mkdtemp()
        # a.bin is archived first and is far bigger than the stream window plus the job's
        # queue: without credit, the archive thread waits inside it, long after the scan.
        r = self.u.sh("cd '%s' && head -c 8388608 /dev/urandom > a.bin && printf z > z.txt" % d)
        self.assertEqual(r.returncode, 0, r.stderr)
        res = self.c.call("pack.create", {"path": d, "format": "tar.zst"})
        sid = res["archive"]
        self.c.wait_for(lambda m: m[0] == 3 and m[1] == sid, "archive data", timeout=PROMPT)
        time.sleep(0.2)  # the thread fills what the window and queue hold, then waits
        r = self.u.sh("cd '%s' && rm z.txt && mkfifo z.txt" % d)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.hold_fifo(os.path.join(d, "z.txt"))
        _, end = drain(self.c, sid)
        # The pack cannot be what it scanned: it fails naming the member (it never waits on
        # the FIFO for data that will not come).
        self.assertIn("error", end)
        self.assertEqual(end["error"].get("path"), "z.txt", end)
        self.c.call("ping")


class TestAttackPackIgnoreFifo(AttackCase):
    """Item 3 in pack.create's request handler: the pack root's ignore file (.sbxignore, which
    the workload writes) is read on the agent's loop thread before the job starts; a FIFO there
    must neither freeze the agent nor hang the request."""

    def test_sbxignore_fifo(self):
        for hold in (False, True):
            d = self.u.mkdtemp()
            r = self.u.sh("cd '%s' && printf x > a && mkfifo .sbxignore" % d)
            self.assertEqual(r.returncode, 0, r.stderr)
            if hold:
                self.hold_fifo(os.path.join(d, ".sbxignore"))
            rid = self.c.request("pack.create", {"path": d, "format": "tar.gz"})
            # The agent still answers others at once...
            other = self.connect()
            other.sock.settimeout(PROMPT)
            other.call("ping")
            # ...and the request itself: refused (the ignore file is not a regular file) or
            # packed without it, but answered.
            self.c.sock.settimeout(PROMPT)
            try:
                res = self.c.wait(rid)
            except w.RemoteError as e:
                self.assertEqual(e.code, "EINVAL", e.err)
                continue
            _, end = drain(self.c, res["archive"])
            self.assertNotIn("error", end)
            self.c.pending = []


class TestAttackWatch(AttackCase):
    """fs.watch (recursive) over a tree the workload owns and reshapes as it likes."""

    def inotify_wds(self):
        """{inode: wd} of every inotify watch the agent holds (its /proc fdinfo)."""
        wds = {}
        d = "/proc/%d/fdinfo" % self.agent.proc.pid
        for fd in os.listdir(d):
            try:
                with open(os.path.join(d, fd)) as f:
                    for line in f:
                        if line.startswith("inotify wd:"):
                            kv = dict(x.split(":", 1) for x in line.split()[1:3])
                            wds[int(kv["ino"], 16)] = int(kv["wd"], 16)
            except OSError:
                pass
        return wds

    def wd_of(self, path):
        """The wd of the agent's watch on directory @path, once the agent has added it."""
        ino = os.stat(path).st_ino
        deadline = time.monotonic() + PROMPT
        while time.monotonic() < deadline:
            wds = self.inotify_wds()
            if ino in wds:
                return wds[ino]
            time.sleep(0.02)
        self.fail("the agent never watched " + path)

    def event(self, wid, kind, path):
        return self.c.wait_for(lambda m: m[0] == 2 and m[1] == "fs.event" and
                               m[2]["watch"] == wid and m[2]["kind"] == kind and
                               m[2]["path"] == path, "%s %s" % (kind, path), timeout=PROMPT)[2]

    def test_tree_of_more_directories_than_a_watch_takes(self):
        """A recursive watch binds at most 16384 directories, each a walk step on the agent's
        loop: watching a bigger tree is LIMIT, and one the workload moves into a watched tree
        gets "overflow" (its events may be missed), the agent serving on. A workload moving its
        40,000-directory tree in and out stalled every connection for as long as it took."""
        base = self.u.mkdtemp()
        big, t = base + "/big", base + "/T"
        r = self.u.run([PY, "-c", "import os\nfor i in range(16400):\n    os.makedirs("
                        "'%s/d%%03d/%%d' %% (i %% 100, i))" % big])
        self.assertEqual(r.returncode, 0, r.stderr)
        with self.assertRaises(w.RemoteError) as cm:
            self.c.call("fs.watch", {"path": big, "recursive": True})
        self.assertEqual((cm.exception.code, cm.exception.err.get("limit")),
                         ("LIMIT", "watch_dirs"))
        self.assertEqual(self.u.run(["mkdir", t]).returncode, 0)
        wid = self.c.call("fs.watch", {"path": t, "recursive": True})["watch"]
        self.assertEqual(self.u.run(["mv", big, t + "/big"]).returncode, 0)
        self.c.wait_for(lambda m: m[0] == 2 and m[1] == "fs.event" and m[2]["watch"] == wid and
                        m[2]["kind"] == "overflow", "overflow", timeout=PROMPT)
        self.assertEqual(self.c.call("ping"), {})
        self.assertLessEqual(len(self.inotify_wds()), 16384 + 1)

    def test_moved_out_from_a_directory_of_the_same_hash_slot(self):
        """The workload moves directory X under P, P's watch descriptor sharing X's slot of the
        agent's wd table (256 slots), then moves P/X out of the tree. The agent ends X's binding
        while walking that slot for P's "remove": it read the freed binding as the next of the
        slot (a use-after-free the sanitizer build reports; the agent died)."""
        base = self.u.mkdtemp()
        t, out = base + "/T", base + "/out"
        self.assertEqual(self.u.run(["mkdir", t, out]).returncode, 0)
        wid = self.c.call("fs.watch", {"path": t, "recursive": True})["watch"]
        self.assertEqual(self.u.run(["mkdir", t + "/X"]).returncode, 0)
        wd_x = self.wd_of(t + "/X")
        # wds count up: enough directories that P's is X's plus 256
        names = [t + "/d%03d" % i for i in range((wd_x - max(self.inotify_wds().values()) - 1)
                                                 % 256)]
        if names:
            self.assertEqual(self.u.run(["mkdir"] + names).returncode, 0)
            self.wd_of(names[-1])
        self.assertEqual(self.u.run(["mkdir", t + "/P"]).returncode, 0)
        self.assertEqual(self.wd_of(t + "/P") % 256, wd_x % 256, "P's wd is not in X's slot")
        self.assertEqual(self.u.run(["mv", t + "/X", t + "/P/X"]).returncode, 0)
        self.assertEqual(self.event(wid, "rename", t + "/P/X")["from"], t + "/X")
        self.assertEqual(self.u.run(["mv", t + "/P/X", out + "/X"]).returncode, 0)
        self.event(wid, "remove", t + "/P/X")
        self.assertEqual(self.c.call("ping"), {})
        self.assertEqual(self.u.run(["mkdir", t + "/after"]).returncode, 0)
        self.event(wid, "create", t + "/after")
        self.assertNotIn(os.stat(out + "/X").st_ino, self.inotify_wds())


class TestAttackTty(AttackCase):
    """A terminal the workload holds, behind a name the host opens."""

    HOLDER = r"""
import os, pty, sys, time
m, s = pty.openpty()
print(os.ttyname(s), flush=True)
os.close(s)
sys.stdin.readline()    # the host's fs.open is done
os.write(m, b"\x1c")    # ^\\: SIGQUIT to the terminal's foreground process group
print("sent", flush=True)
time.sleep(3600)
"""

    def test_fs_open_of_a_terminal_does_not_make_it_the_agents(self):
        """Under sbx-init the agent leads a session with no controlling terminal: an open of a
        terminal without O_NOCTTY made the workload's pty the agent's, and ^\\ typed on its master
        then killed the agent (SIGQUIT; ^C stopped it, a hangup killed it)."""
        agent = w.Agent(AGENT, session_leader=True)
        c = agent.connect()
        self.addCleanup(agent.finish, self, c)
        holder = self.u.popen([PY, "-c", self.HOLDER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE)
        self.held.append(holder)
        slave = holder.stdout.readline().decode().strip()
        self.assertTrue(slave.startswith("/dev/pts/"), slave)
        d = self.u.mkdtemp()
        self.assertEqual(self.u.run(["ln", "-s", slave, d + "/notes.txt"]).returncode, 0)
        fh = c.call("fs.open", {"path": d + "/notes.txt"})["fh"]
        with open("/proc/%d/stat" % agent.proc.pid) as f:
            tty_nr = int(f.read().rsplit(")", 1)[1].split()[4])
        self.assertEqual(tty_nr, 0, "the workload's terminal became the agent's")
        holder.stdin.write(b"go\n")
        holder.stdin.flush()
        self.assertEqual(holder.stdout.readline(), b"sent\n")
        time.sleep(0.5)
        self.assertIsNone(agent.proc.poll(), "the agent died")
        self.assertEqual(c.call("fs.close", {"fh": fh}), {})
        self.assertEqual(c.call("ping"), {})


class TestAttackLease(AttackCase):
    """A file lease the workload takes on its own file (F_SETLEASE), held by a process that
    ignores SIGIO."""

    HOLDER = r"""
import fcntl, os, signal, sys, time
signal.signal(signal.SIGIO, signal.SIG_IGN)
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.fcntl(fd, 1024, fcntl.F_RDLCK)  # F_SETLEASE
print("leased", flush=True)
time.sleep(3600)
"""

    def test_truncate_of_a_leased_file(self):
        """fs.truncate is answered at once (EAGAIN), and the agent serves on: truncate(2) waited
        on the loop thread for the holder to let go, up to lease-break-time (45 s) a call."""
        d = self.u.mkdtemp()
        f = d + "/app.log"
        self.assertEqual(self.u.sh("echo some log > " + f).returncode, 0)
        holder = self.u.popen([PY, "-c", self.HOLDER, f], stdout=subprocess.PIPE)
        self.held.append(holder)
        self.assertEqual(holder.stdout.readline(), b"leased\n")
        self.c.sock.settimeout(PROMPT)
        with self.assertRaises(w.RemoteError) as cm:
            self.c.call("fs.truncate", {"path": f})
        self.assertEqual(cm.exception.code, "EAGAIN", cm.exception.err)
        self.assertEqual(self.c.call("ping"), {})
        holder.kill()
        holder.wait()
        self.held.remove(holder)
        deadline = time.monotonic() + PROMPT  # the lease goes with its holder
        while True:
            try:
                self.assertEqual(self.c.call("fs.truncate", {"path": f, "size": 4}), {})
                break
            except w.RemoteError as e:
                self.assertEqual(e.code, "EAGAIN")
                self.assertLess(time.monotonic(), deadline, "the lease outlived its holder")
                time.sleep(0.05)
        self.assertEqual(os.path.getsize(f), 4)
        # what truncate(2) says of what is not a regular file
        self.assertEqual(self.call_code("fs.truncate", {"path": d}), "EISDIR")
        self.mkfifo(d + "/fifo")
        self.assertEqual(self.call_code("fs.truncate", {"path": d + "/fifo"}), "EINVAL")

    def call_code(self, method, params):
        with self.assertRaises(w.RemoteError) as cm:
            self.c.call(method, params)
        return cm.exception.code


class TestAttackTreeShape(AttackCase):
    """Trees the workload shapes, read or copied by the host."""

    GROWER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(sys.argv[1], os.O_WRONLY)
ino = libc.inotify_init1(0)
assert libc.inotify_add_watch(ino, sys.argv[1].encode(), 0x20) >= 0  # IN_OPEN
print("armed", flush=True)
os.read(ino, 4096)                  # the agent opened it
os.ftruncate(fd, (1 << 44) - 4096)  # 16 TiB now, of hole
print("grown", flush=True)
"""

    def test_member_grown_after_its_header(self):
        """A member the workload makes 16 TiB long (a hole) once the agent has opened it: the
        archive holds the size its header said, and the download ends. The job read to the
        file's end, libarchive dropping all of it, and never ended nor met a cancel."""
        d = self.u.mkdtemp()
        f = d + "/member"
        self.assertEqual(self.u.run([PY, "-c", "open(%r, 'wb').write(b'x' * (1 << 20))" % f])
                         .returncode, 0)
        grower = self.u.popen([PY, "-c", self.GROWER, f], stdout=subprocess.PIPE)
        self.held.append(grower)
        self.assertEqual(grower.stdout.readline(), b"armed\n")
        sid = self.c.call("transfer.download_tree", {"path": d})["stream"]
        data, end = drain(self.c, sid)
        self.assertNotIn("error", end)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            m = tar.getmember("member")
            self.assertEqual(m.size, 1 << 20)
            self.assertEqual(tar.extractfile(m).read(), b"x" * (1 << 20))
        self.assertEqual(self.c.call("ping"), {})

    LINKS = r"""
import os, sys
os.chdir(sys.argv[1])
for i in range(14):  # 14 levels of 255-byte names
    d = ("%02d" % i) * 127 + "d"
    os.mkdir(d)
    os.chdir(d)
open("f", "w").close()
for i in range(int(sys.argv[2])):  # hard links of one empty file, 255-byte names
    os.link("f", ("%08d" % i) + "L" * 247)
"""

    def test_pack_of_names_without_end(self):
        """A workload's 18000 hard links of one empty file, each 3.9 KB of path: a few MB of its
        disk and one inode, 70 MB of names for a pack, which keeps every entry: LIMIT
        pack_names (64 MiB), not the agent's memory growing with the tree."""
        d = self.u.mkdtemp()
        r = self.u.run([PY, "-c", self.LINKS, d, "18000"], timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        sid = self.c.call("pack.create", {"path": d, "format": "tar.gz"})["archive"]
        _, end = drain(self.c, sid, timeout=120)
        self.assertEqual((end.get("error") or {}).get("code"), "LIMIT", end)
        self.assertEqual(end["error"].get("limit"), "pack_names", end)
        self.assertEqual(self.c.call("ping"), {})

    def deep(self, levels):
        """A chain of @levels directories "a" in a new directory of the workload's: its top."""
        d = self.u.mkdtemp()
        r = self.u.run([PY, "-c", "import os; os.chdir(%r)\nfor i in range(%d):\n"
                        "    os.mkdir('a'); os.chdir('a')" % (d, levels)])
        self.assertEqual(r.returncode, 0, r.stderr)
        return d

    def test_copy_and_remove_of_a_deep_tree(self):
        """fs.copy and fs.remove (recursive) of a chain of 1500 directories the workload made:
        LIMIT, and the agent serves on. Each level of the copy took 8 KiB of the thread's stack
        and two fds (the agent died of a stack overflow); the removal's fd a level ran out."""
        d = self.deep(1500)
        try:
            with self.assertRaises(w.RemoteError) as cm:
                self.c.call("fs.copy", {"from": d + "/a", "to": d + "/copy", "recursive": True})
            self.assertEqual((cm.exception.code, cm.exception.err.get("limit")),
                             ("LIMIT", "walk_depth"))
            with self.assertRaises(w.RemoteError) as cm:
                self.c.call("fs.remove", {"path": d + "/a", "recursive": True})
            self.assertEqual((cm.exception.code, cm.exception.err.get("limit")),
                             ("LIMIT", "walk_depth"))
            self.assertEqual(self.c.call("ping"), {})
        finally:
            # rm -rf takes any depth; shutil.rmtree, at the workload's cleanup, would not
            self.u.run(["rm", "-rf", d + "/a", d + "/copy"])
        # within the cap, both work
        e = self.deep(200)
        self.assertEqual(self.c.call("fs.copy", {"from": e + "/a", "to": e + "/copy",
                                                 "recursive": True}), {})
        self.assertEqual(self.c.call("fs.remove", {"path": e + "/copy", "recursive": True}), {})
        self.assertFalse(os.path.exists(e + "/copy"))


class TestAttackFlock(AttackCase):
    """fs.flock (issue 16's fs.lock) against locks the workload holds: a holder that never lets
    go, or is stopped, must not freeze the agent; a waiting fs.flock is answered once the holder
    is gone, a non-waiting one at once with EAGAIN."""

    def hold_lock(self, path, stop=False):
        """The workload takes an exclusive flock on its own @path and keeps it (stopped too when
        @stop); returns once the lock is held."""
        p = self.u.popen(["flock", "-x", "-o", path, "sleep", "3600"])  # -o: only flock holds it
        self.held.append(p)
        deadline = time.monotonic() + PROMPT
        while not self.locked(path):
            self.assertLess(time.monotonic(), deadline, "the workload did not lock " + path)
            time.sleep(0.01)
        if stop:
            os.kill(p.pid, 19)  # SIGSTOP: the holder (flock) is stopped with the lock
        return p

    def locked(self, path):
        import fcntl

        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def test_held_and_stopped_locks_do_not_freeze_the_agent(self):
        d = self.u.mkdtemp()
        for stop in (False, True):
            f = os.path.join(d, "lock%d" % stop)
            self.assertEqual(self.u.run(["touch", f]).returncode, 0)
            holder = self.hold_lock(f, stop=stop)
            fh = self.c.call("fs.open", {"path": f, "user": "root"})["fh"]
            t0 = time.monotonic()
            with self.assertRaises(w.RemoteError) as cm:
                self.c.call("fs.flock", {"fh": fh, "exclusive": True})
            self.assertEqual(cm.exception.code, "EAGAIN", cm.exception.err)
            self.assertLess(time.monotonic() - t0, PROMPT / 2)
            rid = self.c.request("fs.flock", {"fh": fh, "exclusive": True, "wait": True})
            # The wait holds no thread and no loop: this and another connection are served.
            for conn in (self.c, self.connect()):
                t0 = time.monotonic()
                self.assertEqual(conn.call("ping"), {})
                self.assertLess(time.monotonic() - t0, PROMPT / 2)
            self.assertFalse(any(m[0] == 1 and m[1] == rid for m in self.c.pending))
            holder.kill()
            holder.wait()
            self.c.sock.settimeout(PROMPT)
            self.assertEqual(self.c.wait(rid), {})
            self.assertTrue(self.locked(f))  # the agent holds it now
            self.c.call("fs.close", {"fh": fh})
            self.assertFalse(self.locked(f))


class TestAttackFdLeak(AttackCase):
    """Item 9: every fd the agent makes is close-on-exec, even one a worker thread holds for an
    instant while a process is spawned."""

    def tree(self):
        src = os.path.join(self.tmp, "secret", "src")  # below root's 0700 self.tmp
        for i in range(20):
            sub = os.path.join(src, "d%02d" % i, "e")
            os.makedirs(sub)
            for j in range(5):
                with open(os.path.join(sub, "f%d" % j), "wb") as f:
                    f.write(b"x" * 100)
        return src

    @staticmethod
    def hardlink_tar(n=200):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            t = tarfile.TarInfo("sub/a/base")
            t.size = 1
            tf.addfile(t, io.BytesIO(b"x"))
            for k in range(n):
                t = tarfile.TarInfo("sub/b/h%d" % k)
                t.type = tarfile.LNKTYPE
                t.linkname = "sub/a/base"
                tf.addfile(t)
        return buf.getvalue()

    def test_spawned_children_inherit_no_agent_fd(self):
        src = self.tree()
        tarb = self.hardlink_tar()
        stop = threading.Event()
        counts, errors = {}, []

        def download_tree(c):
            _, end = drain(c, c.call("transfer.download_tree", {"path": src})["stream"])
            assert "error" not in end, end

        def pack(c):
            r = c.call("pack.create", {"path": src, "format": "tar.gz"})
            _, end = drain(c, r["archive"])
            assert "error" not in end, end
            c.pending = []  # the manifest parts and progress

        def walk(c):
            drain(c, c.call("fs.walk", {"path": src, "max_depth": 8})["stream"])

        def upload_tree(c):
            sid = c.call("transfer.upload_tree",
                         {"path": os.path.join(self.tmp, "secret", "links")})["stream"]
            c.data(sid, tarb)
            c.end(sid)
            done = c.wait_for(is_done(sid), "transfer.done", timeout=PROMPT)[2]
            assert "error" not in done, done
            c.pending = []

        def uploads(c):
            done = upload(c, os.path.join(self.tmp, "secret", "file"), b"y" * 4096)
            assert "error" not in done, done
            c.pending = []

        def copy(c):
            dst = os.path.join(self.tmp, "secret", "copy")
            shutil.rmtree(dst, ignore_errors=True)
            c.call("fs.copy", {"from": src, "to": dst, "recursive": True})

        def loop(fn):
            try:
                c = self.connect()
                n = 0
                while not stop.is_set():
                    fn(c)
                    n += 1
                counts[fn.__name__] = n
            except Exception as e:  # reported by the main thread
                errors.append("%s: %r" % (fn.__name__, e))

        work = [threading.Thread(target=loop, args=(fn,))
                for fn in (download_tree, pack, walk, upload_tree, uploads, copy)]
        for t in work:
            t.start()
        leaks = []
        try:
            for i in range(SPAWNS):
                r, exitmap, outs, *_ = w.run(self.c, {
                    "argv": ["ls", "-l", "/proc/self/fd/"], "uid": self.u.uid,
                    "gid": self.u.gid, "stderr": "stdout"})
                self.assertEqual(exitmap.get("code"), 0, outs)
                listing = outs.get(r["stdout"], b"").decode(errors="replace")
                fds = re.findall(r" (\d+) -> (.*)$", listing, re.M)
                self.assertTrue(fds, listing)
                # ls's own fd of /proc/<pid>/fd is the one that is not inherited.
                extra = [(fd, target) for fd, target in fds
                         if int(fd) > 2 and not re.fullmatch(r"/proc/\d+/fd", target)]
                if extra:
                    leaks.append((i, extra))
        finally:
            stop.set()
            for t in work:
                t.join(60)
        self.assertEqual(errors, [])
        self.assertEqual(leaks, [], "%d of %d children inherited agent fds" % (len(leaks),
                                                                              SPAWNS))
        for name in ("download_tree", "pack", "walk", "upload_tree", "uploads", "copy"):
            self.assertGreater(counts.get(name, 0), 0, "%s never ran beside the spawns" % name)


# Run by the workload user: under DIR, 30 nested directories of 255-byte names, each holding 60
# empty files of 255-byte names: 1830 entries whose paths grow to 7.7 KB, all of 'a's and
# digits. Matching `a.*%` against all of them takes about a minute here, far beyond PROMPT.
DEEP_TREE = """
import os, sys
os.chdir(sys.argv[1])
for i in range(30):
    for j in range(60):
        open("%02d%02d" % (i, j) + "a" * 251, "w").close()
    n = "%02d" % i + "a" * 253
    os.mkdir(n)
    os.chdir(n)
"""


class TestAttackWalkCost(AttackCase):
    """glibc's regexec tries a match from every position of the path, so an allowed pattern such
    as `a.*%` costs about 0.1 s against one 7.7 KB path of 'a's: a walk over such paths runs for
    a minute. Its batches yield the loop after 10 ms of work (PROTOCOL.md 17.4), so the loop is
    held for at most one entry's match at a time; before, one batch held every connection of the
    agent for the whole walk."""

    def test_costly_walk_leaves_the_loop_free(self):
        d = self.u.mkdtemp()
        r = self.u.run([PY, "-c", DEEP_TREE, d])
        self.assertEqual(r.returncode, 0, r.stderr)
        walker = self.connect()
        # No path has a '%' (temp directory names are letters, digits and '_'), so the matcher
        # tries from every 'a' and nothing is reported.
        sid = walker.call("fs.walk", {"path": d, "match": ["a.*%"]})["stream"]
        other = self.connect()
        other.sock.settimeout(PROMPT)
        pings, worst, until = 0, 0.0, time.monotonic() + 3
        while time.monotonic() < until:
            t0 = time.monotonic()
            # A held loop fails here: socket.timeout after PROMPT.
            self.assertEqual(other.call("ping"), {})
            worst = max(worst, time.monotonic() - t0)
            pings += 1
        # The pings ran beside the walk: it would have ended by now only if its paths were cheap
        # to match.
        try:
            m = walker.wait_for(stream_msg(sid), "walk end", timeout=0.2)
            self.fail("the walk ended within %d pings: %.200r" % (pings, m))
        except TimeoutError:
            pass
        # Closing the walker's connection stops the walk; the agent answers at once.
        walker.close()
        self.conns.remove(walker)
        self.assertEqual(self.c.call("ping"), {})
        print("walk beside pings: %d pings, slowest %.3f s" % (pings, worst), file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
