#!/usr/bin/env python3
"""Attacks on the identity the agent's file methods act as, by a real unprivileged workload user
(issue 14, items 5 to 8), each as the workload would make it (workload.py). The agent runs as a
locked image runs it: its workload user (SBX_WORKLOAD_USER, PROTOCOL.md §17.1) is the test's user,
so a request that names no `user` acts as that user, and only one that says `user: "root"` as
root.

- item 6 (confused deputy): the workload plants symlinks in the directories it owns, pointing
  into a root-only directory (0700, with a 0600 file): no download, copy, truncate, chmod, open,
  readdir, upload, tree transfer or pack reaches what is behind them. A `user` param names the
  identity on an agent without a default too.
- item 7: the workload pre-creates an upload's destination (its own, set-uid, or writable by
  all): the uploaded file is the acting user's, with the requested or default mode, and no set-id
  bit it did not ask for.
- item 8: the workload swaps the upload's temporary file for its own bytes before the rename:
  transfer.done's sha256 is the sha256 of what is at the path, or the upload fails.
- item 5: a pack build step as the workload would write it (a set-uid copy of /bin/sh, a look at
  its own oom_score_adj and capabilities) runs as the build user, killable, without capabilities.
"""
import hashlib
import io
import os
import socket
import stat
import sys
import tarfile
import tempfile
import time
import unittest
import warnings

warnings.simplefilter("ignore", ResourceWarning)

sys.path.insert(0, os.path.dirname(__file__))
import sbxwire as w  # noqa: E402
from test_attack_files import drain, is_done  # noqa: E402
from test_fs import read_entries  # noqa: E402
from workload import WorkloadUser  # noqa: E402

BUILD = os.environ.get("SBX_BUILD", os.path.join(os.path.dirname(__file__), "../../build"))
AGENT = os.path.join(BUILD, "bin", "sbx-agent")

PROMPT = 10
SECRET = b"TOPSECRET root-only bytes\n"
CHUNK = 256 << 10  # chunk_max


def tar_of(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            t = tarfile.TarInfo(name)
            t.size = len(data)
            tf.addfile(t, io.BytesIO(data))
    return buf.getvalue()


class IdentityCase(unittest.TestCase):
    """An agent whose workload user is a fresh unprivileged user; a root-only directory
    (self.tmp, 0700) holding a root-only file (self.secret, 0600)."""

    DEFAULT_USER = True  # run the agent with SBX_WORKLOAD_USER set to the test's user

    def setUp(self):
        self.u = WorkloadUser()  # first: it skips the test when not root
        env = dict(os.environ)
        env.pop("SBX_WORKLOAD_USER", None)
        if self.DEFAULT_USER:
            env["SBX_WORKLOAD_USER"] = self.u.name
        self.agent = w.Agent(AGENT, env=env)
        self.c = self.agent.connect()
        self.tmp = tempfile.mkdtemp(prefix="sbx-ident-")  # root's, 0700
        self.secret = os.path.join(self.tmp, "secret")
        with open(self.secret, "wb") as f:
            f.write(SECRET)
        os.chmod(self.secret, 0o600)
        self.d = self.u.mkdtemp()  # the workload's own directory
        self.conns = []

    def tearDown(self):
        self.u.close()
        for c in self.conns:
            c.close()
        self.agent.finish(self, self.c, self.tmp)

    def sh(self, script):
        """Run @script as the workload in its directory; fail the test if it fails."""
        r = self.u.sh("cd '%s' && %s" % (self.d, script))
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout

    def plant(self, name, target):
        self.sh("ln -s '%s' '%s'" % (target, name))
        return os.path.join(self.d, name)

    def assert_secret_intact(self):
        st = os.lstat(self.secret)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        self.assertEqual((st.st_uid, st.st_gid), (0, 0))
        with open(self.secret, "rb") as f:
            self.assertEqual(f.read(), SECRET)
        self.assertEqual(sorted(os.listdir(self.tmp)), ["secret"])

    def call_err(self, method, params, conn=None):
        """@method must fail: its error code."""
        with self.assertRaises(w.RemoteError, msg="%s %r succeeded" % (method, params)) as cm:
            (conn or self.c).call(method, params)
        return cm.exception.code

    def upload(self, path, data, conn=None, **params):
        c = conn or self.c
        p = dict(params, path=path)
        sid = c.call("transfer.upload", p)["stream"]
        for off in range(0, len(data), CHUNK):
            c.data(sid, data[off:off + CHUNK])
        c.end(sid)
        return c.wait_for(is_done(sid), "transfer.done", timeout=PROMPT)[2]


class TestAttackIdentityPaths(IdentityCase):
    """Item 6: symlinks the workload plants where the host works act for nobody but the
    workload: every method, by default, acts as the workload user."""

    def test_download_through_a_planted_link(self):
        link = self.plant("link", self.secret)
        self.assertEqual(self.call_err("transfer.download", {"path": link}), "EACCES")
        self.assertEqual(self.call_err("fs.open", {"path": link}), "EACCES")
        # an explicit root is the host's decision: that is how it reads root's files
        r = self.c.call("transfer.download", {"path": self.secret, "user": "root"})
        data, end = drain(self.c, r["stream"])
        self.assertNotIn("error", end)
        self.assertEqual(data, SECRET)

    def test_copy_truncate_chmod_onto_a_planted_link(self):
        link = self.plant("link", self.secret)
        self.sh("printf pwned > src")
        src = os.path.join(self.d, "src")
        self.assertEqual(self.call_err("fs.copy", {"from": src, "to": link}), "EACCES")
        self.assertEqual(self.call_err("fs.truncate", {"path": link}), "EACCES")
        # (root's 0700 directory stops them before the file's own permissions would)
        self.assertEqual(self.call_err("fs.chmod", {"path": link, "mode": 0o666}), "EACCES")
        self.assertEqual(self.call_err("fs.chown", {"path": link, "uid": self.u.uid}), "EACCES")
        self.assertEqual(self.call_err("fs.utime", {"path": link, "mtime_ns": 0}), "EACCES")
        # copy the other way: the secret into the workload's directory
        self.assertEqual(self.call_err("fs.copy", {"from": link, "to": src + "2"}), "EACCES")
        self.assertFalse(os.path.exists(src + "2"))
        self.assert_secret_intact()

    def test_directory_listing_through_a_planted_link(self):
        link = self.plant("dlink", self.tmp)
        self.assertEqual(self.call_err("fs.readdir", {"path": link}), "EACCES")
        self.assertEqual(self.call_err("fs.stat", {"path": link + "/secret"}), "EACCES")
        self.assertEqual(self.call_err("fs.watch", {"path": link}), "EACCES")
        # a walk reports the root it cannot open as an entry with an error, and nothing below it
        r = self.c.call("fs.walk", {"path": link})
        data, end = drain(self.c, r["stream"])
        self.assertNotIn(b"secret", data)
        self.assertIn(b"EACCES", data)

    def test_upload_into_a_swapped_directory(self):
        # the host uploads into the workload's sub/ ; the workload has swapped it for a link
        # into root's directory
        self.sh("mkdir sub && mv sub sub.old && ln -s '%s' sub" % self.tmp)
        dest = os.path.join(self.d, "sub", "planted")
        self.assertEqual(self.call_err("transfer.upload", {"path": dest}), "EACCES")
        self.assertEqual(self.call_err("fs.mkdir", {"path": dest}), "EACCES")
        self.assertEqual(self.call_err("fs.mktemp", {"dir": os.path.join(self.d, "sub")}),
                         "EACCES")
        self.assertEqual(self.call_err("fs.symlink", {"target": "/", "path": dest}), "EACCES")
        self.assertEqual(self.call_err("transfer.upload_tree",
                                       {"path": os.path.join(self.d, "sub")}), "EACCES")
        # a tree upload's root that resolves, with a link below it planted in the archive's way
        self.sh("mkdir tree && ln -s '%s' tree/in" % self.tmp)
        r = self.c.call("transfer.upload_tree", {"path": os.path.join(self.d, "tree")})
        self.c.data(r["stream"], tar_of({"in/planted": b"x"}))
        self.c.end(r["stream"])
        done = self.c.wait_for(is_done(r["stream"]), "transfer.done", timeout=PROMPT)[2]
        self.assertIn("error", done)
        self.assert_secret_intact()

    def test_remove_and_rename_through_a_planted_link(self):
        link = self.plant("dlink", self.tmp)
        self.assertEqual(self.call_err("fs.remove", {"path": link + "/secret"}), "EACCES")
        self.assertEqual(self.call_err("fs.rename", {"from": link + "/secret",
                                                     "to": os.path.join(self.d, "got")}),
                         "EACCES")
        self.assertEqual(self.call_err("fs.link", {"target": link + "/secret",
                                                   "path": os.path.join(self.d, "hl")}),
                         "EACCES")
        self.assert_secret_intact()

    def test_tree_download_and_pack_of_a_planted_link(self):
        link = self.plant("dlink", self.tmp)
        for method, params in (("transfer.download_tree", {"path": link}),
                               ("pack.create", {"path": link, "format": "tar.gz"})):
            try:
                r = self.c.call(method, params)
            except w.RemoteError as e:
                self.assertEqual(e.code, "EACCES", e.err)
                continue
            sid = r["stream"] if "stream" in r else r["archive"]
            data, end = drain(self.c, sid)
            self.assertFalse(SECRET in data, "%s sent root's file" % method)
            self.assertIn("error", end, "%s read root's directory" % method)
            self.c.pending = []

    def test_what_the_default_identity_makes_is_the_workloads(self):
        f = os.path.join(self.d, "new")
        done = self.upload(f, b"hello")
        self.assertNotIn("error", done)
        self.assertEqual(os.lstat(f).st_uid, self.u.uid)
        self.c.call("fs.mkdir", {"path": os.path.join(self.d, "nd")})
        self.assertEqual(os.lstat(os.path.join(self.d, "nd")).st_uid, self.u.uid)
        # and the workload user cannot be made to give it away
        self.assertEqual(self.call_err("fs.chown", {"path": f, "uid": 0}), "EPERM")
        # a user that does not exist is refused, never replaced by root
        with self.assertRaises(w.RemoteError) as cm:
            self.c.call("fs.stat", {"path": "/", "user": "no-such-user-sbx"})
        self.assertEqual((cm.exception.code, cm.exception.err.get("field")), ("ENOENT", "user"))


class TestAttackIdentitySysctl(IdentityCase):
    """/proc/sys files are checked against the euid, not the fsuid: an agent that switched only
    its file-system ids wrote any sysctl through a link the workload planted (core_pattern
    "|/home/sandbox/x" is root code execution in a guest). The victim here is the hostname of a
    UTS namespace of this test's own, so this machine's stays as it is."""

    def setUp(self):
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(0x04000000) != 0:  # CLONE_NEWUTS, before the agent starts: it shares it
            self.skipTest("unshare(CLONE_NEWUTS): %s" % os.strerror(ctypes.get_errno()))
        socket.sethostname("before-the-attack")
        super().setUp()

    def test_writes_to_sysctl_through_a_link(self):
        self.sh("printf pwned > notes.txt; ln -s /proc/sys/kernel/hostname notes.bak")
        r = self.u.sh("printf x > /proc/sys/kernel/hostname")
        self.assertNotEqual(r.returncode, 0)  # the workload may not itself
        bak = os.path.join(self.d, "notes.bak")
        self.assertEqual(self.call_err("fs.copy", {"from": os.path.join(self.d, "notes.txt"),
                                                   "to": bak}), "EACCES")
        self.assertEqual(socket.gethostname(), "before-the-attack")
        self.assertEqual(self.call_err("fs.open", {"path": bak, "flags": ["write"]}), "EACCES")
        self.assertEqual(self.call_err("fs.truncate", {"path": bak, "length": 0}), "EACCES")
        self.assertEqual(socket.gethostname(), "before-the-attack")
        # what the workload may read, it still reads through its link
        fh = self.c.call("fs.open", {"path": bak})["fh"]
        self.assertEqual(self.c.call("fs.read", {"fh": fh, "len": 100})["data"],
                         b"before-the-attack\n")
        self.c.call("fs.close", {"fh": fh})


class TestAttackIdentityMagicLinks(IdentityCase):
    """A thread of the agent may follow its own process's /proc/PID/fd links whatever user it
    acts as: a workload link there reached what another request had opened as root, past the
    permissions of its path. Such links are refused (ELOOP) for the paths a request names."""

    def test_links_to_the_agents_open_files(self):
        hidden = os.path.join(self.tmp, "private")  # self.tmp is root's, 0700
        os.mkdir(hidden, 0o700)
        report = os.path.join(hidden, "report.txt")
        with open(report, "wb") as f:
            f.write(SECRET)
        os.chmod(report, 0o644)
        self.assertNotEqual(self.u.sh("cat " + report).returncode, 0)
        root = self.agent.connect()
        self.conns.append(root)
        fh = root.call("fs.open", {"path": report, "user": "root"})["fh"]
        apid = self.agent.proc.pid
        fds = [n for n in os.listdir("/proc/%d/fd" % apid)
               if os.path.realpath("/proc/%d/fd/%s" % (apid, n)) == report]
        self.assertEqual(len(fds), 1)
        link = self.plant("fd", "/proc/%d/fd/%s" % (apid, fds[0]))
        cwd = self.plant("cwd", "/proc/%d/cwd" % apid)
        self.assertEqual(self.call_err("transfer.download", {"path": link}), "ELOOP")
        self.assertEqual(self.call_err("fs.open", {"path": link}), "ELOOP")
        self.assertEqual(self.call_err("fs.copy", {"from": link,
                                                   "to": os.path.join(self.d, "copy")}), "ELOOP")
        self.assertEqual(self.call_err("fs.readdir", {"path": cwd}), "ELOOP")
        self.assertFalse(os.path.exists(os.path.join(self.d, "copy")))
        root.call("fs.close", {"fh": fh})

    def test_path_methods_through_the_agents_cwd(self):
        # The agent's working directory is one the workload may write but cannot reach (below
        # root's 0700 directory). Through /proc/<agent>/cwd every path method but the opens
        # acted there as the workload's user: stat, chmod, mkdir, rename, remove, ...
        shared = os.path.join(self.tmp, "shared")
        os.mkdir(shared)
        os.chmod(shared, 0o777)
        mine = os.path.join(shared, "mine")
        with open(mine, "wb") as f:
            f.write(b"mine")
        os.chmod(mine, 0o644)
        os.chown(mine, self.u.uid, self.u.gid)
        os.symlink("target-name", os.path.join(shared, "lnk"))
        self.assertNotEqual(self.u.sh("ls " + shared).returncode, 0)
        self.agent.finish(self, self.c)
        self.agent = w.Agent(AGENT, env=dict(os.environ, SBX_WORKLOAD_USER=self.u.name),
                             cwd=shared)
        self.c = self.agent.connect()
        cwd = self.plant("cwd", "/proc/%d/cwd" % self.agent.proc.pid)
        j = lambda name: os.path.join(cwd, name)  # noqa: E731
        calls = [
            ("fs.stat", {"path": j("mine")}),
            ("fs.lstat", {"path": j("lnk")}),
            ("fs.readlink", {"path": j("lnk")}),
            ("fs.realpath", {"path": j("mine")}),
            ("fs.chmod", {"path": j("mine"), "mode": 0o600}),
            ("fs.chown", {"path": j("mine"), "uid": self.u.uid}),
            ("fs.utime", {"path": j("mine"), "atime_ns": 0, "mtime_ns": 0}),
            ("fs.mkdir", {"path": j("d")}),
            ("fs.mkdir", {"path": j("p") + "/q", "parents": True}),
            ("fs.symlink", {"target": "x", "path": j("s")}),
            ("fs.rename", {"from": j("mine"), "to": j("moved")}),
            ("fs.link", {"target": j("mine"), "path": j("hard")}),
            ("fs.remove", {"path": j("mine")}),
            ("fs.mktemp", {"dir": cwd}),
            ("fs.mktemp", {"dir": cwd, "directory": True}),
            ("fs.watch", {"path": cwd}),
            ("fs.stat", {"path": cwd}),
        ]
        for method, params in calls:
            self.assertEqual(self.call_err(method, params), "ELOOP", (method, params))
        self.assertEqual(sorted(os.listdir(shared)), ["lnk", "mine"])
        st = os.stat(mine)
        self.assertEqual((stat.S_IMODE(st.st_mode), st.st_size), (0o644, 4))
        self.assertNotEqual(st.st_mtime, 0)
        # The workload's own links and paths still work as they did.
        own = self.plant("own", os.path.join(self.d, "cwd"))
        self.assertEqual(self.c.call("fs.readlink", {"path": own})["target"],
                         os.path.join(self.d, "cwd"))
        self.sh("echo hi > f && mkdir sub")
        self.c.call("fs.rename", {"from": os.path.join(self.d, "f"),
                                  "to": os.path.join(self.d, "sub", "g")})
        self.assertEqual(self.c.call("fs.realpath", {"path": os.path.join(self.d, "sub/../sub/g")})
                         ["path"], os.path.join(self.d, "sub", "g"))


class TestAttackIdentityMagicLinkWays(IdentityCase):
    """More ways through /proc/<agent>/cwd, the agent's working directory being one the workload
    may write but cannot reach: a walk or glob that follows a link, a walk root swapped between
    its check and its open, a process's cwd, an open retried without openat2 after an EPERM, and
    a realpath of a file removed meanwhile."""

    def setUp(self):
        super().setUp()
        self.shared = os.path.join(self.tmp, "shared")
        os.mkdir(self.shared)
        os.chmod(self.shared, 0o777)
        with open(os.path.join(self.shared, "HIDDEN-NAME"), "wb") as f:
            f.write(b"behind root's 0700 directory\n")
        os.chmod(os.path.join(self.shared, "HIDDEN-NAME"), 0o666)
        self.assertNotEqual(self.u.sh("ls " + self.shared).returncode, 0)
        self.agent.finish(self, self.c)
        self.agent = w.Agent(AGENT, env=dict(os.environ, SBX_WORKLOAD_USER=self.u.name),
                             cwd=self.shared)
        self.c = self.agent.connect()
        self.apid = self.agent.proc.pid

    def flip(self, name, first, second):
        """A process of the workload that swaps the symlink @name in its directory between
        @first and @second (atomically, by rename) for a minute at most."""
        return self.u.popen(["/usr/bin/python3", "-c", """
import os, sys, time
os.chdir(sys.argv[1])
end = time.time() + 60
while time.time() < end:
    for i, target in enumerate(sys.argv[3:]):
        try:
            os.symlink(target, "t%d" % i)
        except FileExistsError:
            pass
        os.rename("t%d" % i, sys.argv[2])
""", self.d, name, first, second])

    def names(self, method, params):
        r = self.c.call(method, params)
        out, end = read_entries(self.c, r["stream"])
        return [e.get("path") for e in out], out

    def test_walk_follow_symlinks_into_the_agents_cwd(self):
        self.plant("cwd", "/proc/%d/cwd" % self.apid)
        paths, out = self.names("fs.walk", {"path": self.d, "follow_symlinks": True})
        self.assertFalse(any(p.endswith("HIDDEN-NAME") for p in paths), paths)

    def test_glob_literal_component_into_the_agents_cwd(self):
        self.plant("cwd", "/proc/%d/cwd" % self.apid)
        paths, out = self.names("fs.glob", {"root": self.d, "pattern": "cwd/*"})
        self.assertFalse(any(p.endswith("HIDDEN-NAME") for p in paths), paths)

    def test_walk_root_swapped_after_the_check(self):
        # The root is checked pinned (agent_path_check_dir), then opened by walk_push in a later
        # loop turn: flip a link between the two.
        self.sh("mkdir real && ln -s real a && ln -s /proc/%d/cwd b" % self.apid)
        flipper = self.flip("r", "real", "/proc/%d/cwd" % self.apid)
        try:
            won = None
            for i in range(100):
                try:
                    paths, out = self.names("fs.walk", {"path": os.path.join(self.d, "r")})
                except w.RemoteError:
                    continue
                if any(p.endswith("HIDDEN-NAME") for p in paths):
                    won = (i, out)
                    break
            self.assertIsNone(won)
        finally:
            flipper.kill()
            flipper.wait()

    def test_spawn_cwd_through_proc_self(self):
        # The child chdir()ed as the user, and its /proc/self/cwd is the agent's (no CLONE_FS):
        # the process ran in the agent's working directory.
        c = self.plant("c", "/proc/self/cwd")
        with self.assertRaises(w.RemoteError) as cm:
            w.run(self.c, {"argv": ["/bin/sh", "-c", "pwd; ls; echo x > planted"], "cwd": c,
                           "user": self.u.name})
        self.assertEqual(cm.exception.code, "ELOOP")
        self.assertFalse(os.path.exists(os.path.join(self.shared, "planted")))

    def test_open_eperm_fallback_race(self):
        # agent_path_open retried a failed openat2 with plain openat (magic links and all) on
        # EPERM: a first resolution to /dev/kmsg (dmesg_restrict=1: EPERM for a user) and a
        # second, after a swap, through /proc/<agent>/cwd.
        if self.call_err("fs.open", {"path": "/dev/kmsg"}) != "EPERM":
            self.skipTest("/dev/kmsg is not EPERM for a user here (kernel.dmesg_restrict)")
        flipper = self.flip("x", "/dev/kmsg", "/proc/%d/cwd/HIDDEN-NAME" % self.apid)
        try:
            won, codes = None, {}
            for i in range(500):
                try:
                    fh = self.c.call("fs.open", {"path": os.path.join(self.d, "x")})["fh"]
                except w.RemoteError as e:
                    codes[e.code] = codes.get(e.code, 0) + 1
                    continue
                data = self.c.call("fs.read", {"fh": fh, "len": 100})["data"]
                self.c.call("fs.close", {"fh": fh})
                won = (i, data)
                break
            self.assertIsNone(won)
        finally:
            flipper.kill()
            flipper.wait()

    def test_realpath_of_a_file_deleted_meanwhile(self):
        # fs.realpath answers readlink("/proc/self/fd/N") of the pin: d_path, which says
        # " (deleted)" for a file unlinked between the pin and the readlink.
        churn = self.u.popen(["/usr/bin/python3", "-c", """
import os, time
os.chdir(%r)
open("y", "w").close()
end = time.time() + 60
while time.time() < end:
    open("x", "w").close()
    os.unlink("x")
    os.link("y", "x")  # a name of a file that keeps another: its link count stays 1
    os.unlink("x")
""" % self.d])
        try:
            odd = None
            for i in range(1000):
                try:
                    r = self.c.call("fs.realpath", {"path": os.path.join(self.d, "x")})["path"]
                except w.RemoteError:
                    continue
                if r != os.path.join(self.d, "x"):
                    odd = (i, r)
                    break
            self.assertIsNone(odd)
        finally:
            churn.kill()
            churn.wait()


class TestAttackReplWorkingDirectory(IdentityCase):
    """A python3 REPL session of the agent's own user (root) whose working directory the
    workload can write: python3 -c puts that directory first on sys.path, so a module planted
    there under the name of one the session's driver imports ran as root before any code of the
    host's."""

    DEFAULT_USER = False
    PLANTED = ("ast", "linecache", "signal", "traceback", "tokenize", "contextlib", "enum", "re",
               "functools", "collections", "itertools", "keyword", "operator", "token", "types",
               "warnings", "textwrap", "copyreg", "weakref", "reprlib", "heapq", "sre_compile")

    def test_planted_modules_do_not_run(self):
        for mod in self.PLANTED:
            self.sh("printf '%%s\\n' 'import os' 'open(os.path.join(os.path.dirname(__file__), "
                    "\"ran-\" + __name__), \"w\").write(str(os.getuid()))' > %s.py" % mod)
        self.sh("printf 'X = 42\\n' > mine.py")
        sid = self.c.call("repl.start", {"language": "python3", "cwd": self.d})["session"]
        r = self.c.call("repl.eval", {"session": sid, "code": "import os; os.getuid()"})
        self.assertEqual(r.get("value"), "0", r)
        r = self.c.call("repl.eval", {"session": sid, "code": "1/0"})
        self.assertTrue(r["error"], r)
        self.assertIn("ZeroDivisionError", r["error_text"], r)
        # The host's own code still finds the directory's modules, as python3 in it would.
        r = self.c.call("repl.eval", {"session": sid, "code": "import mine; mine.X"})
        self.assertEqual(r.get("value"), "42", r)
        self.c.call("repl.close", {"session": sid})
        self.assertEqual([n for n in os.listdir(self.d) if n.startswith("ran-")], [])


class TestAttackIdentityParam(IdentityCase):
    """Item 6 with the identity named per request, on an agent with no workload user (it acts as
    root unless told): `user` makes every access that user's."""

    DEFAULT_USER = False

    def test_user_param(self):
        link = self.plant("link", self.secret)
        me = {"user": self.u.name}
        self.assertEqual(self.call_err("transfer.download", dict(me, path=link)), "EACCES")
        self.assertEqual(self.call_err("fs.truncate", dict(me, path=link)), "EACCES")
        self.assertEqual(self.call_err("fs.readdir", dict(me, path=self.tmp)), "EACCES")
        r = self.c.call("transfer.upload", dict(me, path=link))  # replaces the link itself
        self.c.data(r["stream"], b"mine")
        self.c.end(r["stream"])
        done = self.c.wait_for(is_done(r["stream"]), "transfer.done", timeout=PROMPT)[2]
        self.assertNotIn("error", done)
        self.assertEqual(os.lstat(link).st_uid, self.u.uid)
        # a uid works as a name does
        self.assertEqual(self.call_err("fs.stat", {"path": self.secret,
                                                   "user": str(self.u.uid)}), "EACCES")
        self.assert_secret_intact()


class TestAttackUploadOwner(IdentityCase):
    """Item 7: an upload onto a file the workload made keeps nothing of it but, without `mode`,
    permission bits within 0o755."""

    def test_precreated_destination(self):
        for name, mode, want in (("suid", 0o4755, 0o755), ("open", 0o666, 0o644),
                                 ("sgid", 0o2777, 0o755)):
            for user in ("root", None):
                self.sh("rm -f %s && printf old > %s && chmod %o %s" % (name, name, mode, name))
                dest = os.path.join(self.d, name)
                params = {"user": user} if user else {}
                done = self.upload(dest, b"host content", **params)
                self.assertNotIn("error", done)
                st = os.lstat(dest)
                owner = 0 if user == "root" else self.u.uid
                self.assertEqual(st.st_uid, owner, (name, user))
                self.assertEqual(stat.S_IMODE(st.st_mode), want, (name, user))
                with open(dest, "rb") as f:
                    self.assertEqual(f.read(), b"host content")
        # a requested mode is applied as asked, set-id included
        done = self.upload(os.path.join(self.d, "suid"), b"x", user="root", mode=0o4750)
        self.assertEqual(stat.S_IMODE(os.lstat(os.path.join(self.d, "suid")).st_mode), 0o4750)

    def test_host_secret_into_tmp(self):
        # the workload waits in /tmp (sticky, world-writable) with the name the host will use
        dest = os.path.join("/tmp", "sbx-ident-secret-%d" % os.getpid())
        self.addCleanup(lambda: os.path.exists(dest) and os.unlink(dest))
        r = self.u.sh("printf old > '%s' && chmod 666 '%s'" % (dest, dest))
        self.assertEqual(r.returncode, 0, r.stderr)
        done = self.upload(dest, b"host secret", user="root", mode=0o600)
        self.assertNotIn("error", done)
        st = os.lstat(dest)
        self.assertEqual((st.st_uid, stat.S_IMODE(st.st_mode)), (0, 0o600))
        r = self.u.sh("cat '%s'" % dest)
        self.assertNotEqual(r.returncode, 0)
        self.assertNotIn("host secret", r.stdout)


class TestAttackUploadSwap(IdentityCase):
    """Item 8: the workload replaces the upload's file, before the rename, with its own bytes
    (it owns the directory, so it may rename and replace names there)."""

    def swap_temps(self, name):
        """As the workload: every temporary file of the upload of @name that has a name is
        replaced by the workload's own; the count of those replaced."""
        out = self.sh("n=0; for t in .%s.sbx-*; do [ -e \"$t\" ] || continue; "
                      "printf EVIL > \"$t.evil\" && mv -f \"$t.evil\" \"$t\" && n=$((n+1)); "
                      "done; echo $n" % name)
        return int(out.strip() or 0)

    def test_swap_before_the_rename(self):
        data = os.urandom(1 << 20)
        swapped = 0
        for user in ("root", None):
            for exists in (False, True):
                name = "f-%s-%d" % (user or "default", exists)
                dest = os.path.join(self.d, name)
                if exists:
                    self.sh("printf old > %s" % name)
                params = {"path": dest}
                if user:
                    params["user"] = user
                sid = self.c.call("transfer.upload", params)["stream"]
                for off in range(0, len(data), CHUNK):
                    self.c.data(sid, data[off:off + CHUNK])
                self.c.call("ping")  # the data is in; the agent waits for stream.end
                swapped += self.swap_temps(name)
                self.c.end(sid)
                done = self.c.wait_for(is_done(sid), "transfer.done", timeout=PROMPT)[2]
                if "error" in done:
                    # refused, saying so: the path is not the uploaded file
                    self.assertEqual(done["error"]["code"], "ESTALE", done)
                    continue
                with open(dest, "rb") as f:
                    got = f.read()
                self.assertEqual(hashlib.sha256(got).hexdigest(), done["sha256"],
                                 "transfer.done vouched for bytes that are not at the path")
                self.assertEqual(got, data)
        # (an agent that names its file while it writes lets the workload swap it every time;
        # one that gives it no name until the end leaves nothing to swap)
        self.assertIn(swapped, (0, 4))

    def test_swap_race(self):
        # a loop of the workload replaces any temporary name it sees while uploads run
        loop = self.u.popen(["/bin/sh", "-c",
                             "cd '%s' && while :; do for t in .*.sbx-*; do [ -e \"$t\" ] && "
                             "printf EVIL > \"$t.e\" && mv -f \"$t.e\" \"$t\"; done; done"
                             % self.d])
        data = os.urandom(256 << 10)
        results = []
        try:
            for i in range(40):
                dest = os.path.join(self.d, "r%d" % (i % 4))
                results.append((dest, self.upload(dest, data, user="root")))
                # the file must be checked before the loop could touch its final name: it does
                # not, it replaces only temporary names
                done = results[-1][1]
                if "error" in done:
                    self.assertEqual(done["error"]["code"], "ESTALE", done)
                else:
                    with open(dest, "rb") as f:
                        got = f.read()
                    self.assertEqual(hashlib.sha256(got).hexdigest(), done["sha256"])
        finally:
            loop.kill()
            loop.wait()


class TestAttackPackBuild(IdentityCase):
    """Item 5: the build step of pack.create, whose scripts the workload writes."""

    SCRIPT = ("cp /bin/sh ./rootsh && chmod 4755 ./rootsh; "
              "cat /proc/self/oom_score_adj > oom.txt; id -u > uid.txt; "
              "grep CapEff /proc/self/status > caps.txt; touch /etc/sbx-build-was-here 2>/dev/null;"
              " true")

    def build(self, **params):
        # the agent itself is unkillable, as sbx-init makes it (without CAP_SYS_RESOURCE here,
        # at least not the default: what the build must not inherit either way)
        for adj in ("-1000", "500"):
            try:
                with open("/proc/%d/oom_score_adj" % self.agent.proc.pid, "w") as f:
                    f.write(adj)
                break
            except OSError:
                pass
        p = dict(params, path=self.d, format="tar.gz", build={"command": self.SCRIPT})
        if "build_user" in params:
            p["build"]["user"] = p.pop("build_user")
        r = self.c.call("pack.create", p)
        data, end = drain(self.c, r["archive"], timeout=60)
        self.assertNotIn("error", end)
        self.c.pending = []

        def read(name):
            with open(os.path.join(self.d, name)) as f:
                return f.read().strip()
        return read

    def assert_ran_as(self, read, uid):
        self.addCleanup(lambda: os.path.exists("/etc/sbx-build-was-here") and
                        os.unlink("/etc/sbx-build-was-here"))
        self.assertEqual(read("uid.txt"), str(uid))
        self.assertEqual(read("oom.txt"), "0")
        self.assertEqual(read("caps.txt").split()[-1], "0000000000000000")
        st = os.lstat(os.path.join(self.d, "rootsh"))
        self.assertEqual(st.st_uid, uid)
        self.assertFalse(st.st_uid == 0 and st.st_mode & stat.S_ISUID,
                         "the build left a set-uid root shell")
        self.assertFalse(os.path.exists("/etc/sbx-build-was-here"))

    def test_build_runs_as_the_workload_user(self):
        self.assert_ran_as(self.build(), self.u.uid)

    def test_build_user_param(self):
        # an agent default and a request `user` both give way to build.user
        other = WorkloadUser()
        self.addCleanup(other.close)
        os.chmod(self.d, 0o777)
        read = self.build(user=self.u.name, build_user=other.name)
        self.assert_ran_as(read, other.uid)


if __name__ == "__main__":
    unittest.main()
