#!/usr/bin/env python3
"""Integration tests: `sbx fs ...` against the real agent over a unix socket."""
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import sbxwire as w  # noqa: E402
from test_cli import AGENT, SBX, CliCase, wait_for_listen  # noqa: E402
from workload import WorkloadUser  # noqa: E402


class TestCliFs(CliCase):
    def setUp(self):
        super().setUp()
        self.d = tempfile.mkdtemp(prefix="sbx-clifs-")
        os.makedirs(self.d + "/sub/deep")
        with open(self.d + "/a.txt", "w") as f:
            f.write("hello\n")
        with open(self.d + "/sub/deep/b.py", "w") as f:
            f.write("print(1)\n")
        os.symlink("a.txt", self.d + "/link")

    def tearDown(self):
        shutil.rmtree(self.d, ignore_errors=True)
        super().tearDown()

    def ok(self, *args, **kw):
        r = self.sbx(*args, **kw)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout

    def test_help(self):
        for args in (("fs", "--help"), ("fs", "ls", "--help"), ("fs", "-h")):
            out = self.ok(*args)
            self.assertIn(b"Usage: sbx fs", out)
            for sub in (b"ls", b"stat", b"mkdir", b"rm", b"mv", b"cp", b"cat", b"write",
                        b"chmod", b"ln", b"readlink", b"realpath", b"mktemp", b"find", b"glob",
                        b"watch"):
                self.assertIn(b"  " + sub + b" ", out)
        r = self.sbx("fs")
        self.assertEqual(r.returncode, 2)
        r = self.sbx("fs", "frobnicate")
        self.assertEqual(r.returncode, 2)
        self.assertIn(b"unknown command", r.stderr)
        r = self.sbx("fs", "mv", "onlyone")
        self.assertEqual(r.returncode, 2)
        self.assertIn(b"fs", self.ok("--help"))

    def test_ls_and_stat(self):
        self.assertEqual(self.ok("fs", "ls", self.d), b"a.txt\nlink\nsub/\n")
        out = self.ok("fs", "ls", "-l", self.d).decode()
        self.assertRegex(out, r"-rw-r--r-- +1 +0 +0 +6 \S+ \S+ a\.txt\n")
        self.assertIn("link -> a.txt", out)
        self.assertEqual(json.loads(self.ok("--json", "fs", "ls", self.d)),
                         [{"name": "a.txt", "type": "file"}, {"name": "link", "type": "symlink"},
                          {"name": "sub", "type": "dir"}])
        info = json.loads(self.ok("fs", "stat", "--json", self.d + "/a.txt"))
        st = os.stat(self.d + "/a.txt")
        self.assertEqual((info["size"], info["mode"], info["ino"], info["mtime_ns"]),
                         (6, st.st_mode, st.st_ino, st.st_mtime_ns))
        info = json.loads(self.ok("fs", "stat", "-L", "--json", self.d + "/link"))
        self.assertEqual((info["type"], info["target"]), ("symlink", "a.txt"))
        out = self.ok("fs", "stat", self.d + "/a.txt").decode()
        self.assertIn("Mode: 0644 (-rw-r--r--)", out)
        self.assertIn("Size: 6", out)
        r = self.sbx("fs", "stat", self.d + "/nope")
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"No such file or directory (ENOENT)", r.stderr)
        self.assertIn(self.d.encode() + b"/nope", r.stderr)
        # relative paths with --cwd
        self.assertEqual(self.ok("fs", "ls", "--cwd", self.d, "sub"), b"deep/\n")

    def test_mkdir_rm_mv_cp_ln_chmod(self):
        self.ok("fs", "mkdir", "-p", "-m", "700", self.d + "/x/y/z")
        self.assertEqual(stat.S_IMODE(os.stat(self.d + "/x/y/z").st_mode), 0o700)
        r = self.sbx("fs", "mkdir", self.d + "/x")
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"EEXIST", r.stderr)
        r = self.sbx("fs", "rm", self.d + "/x")
        self.assertIn(b"ENOTEMPTY", r.stderr)
        self.ok("fs", "rm", "-r", self.d + "/x")
        self.assertFalse(os.path.exists(self.d + "/x"))
        self.ok("fs", "mv", self.d + "/a.txt", self.d + "/b.txt")
        self.ok("fs", "cp", self.d + "/b.txt", self.d + "/c.txt")
        self.ok("fs", "cp", "-r", self.d + "/sub", self.d + "/sub2")
        self.assertTrue(os.path.exists(self.d + "/sub2/deep/b.py"))
        self.ok("fs", "ln", "-s", "b.txt", self.d + "/s")
        self.assertEqual(self.ok("fs", "readlink", self.d + "/s"), b"b.txt\n")
        self.assertEqual(self.ok("fs", "realpath", self.d + "/s"),
                         os.path.realpath(self.d + "/b.txt").encode() + b"\n")
        self.ok("fs", "ln", self.d + "/b.txt", self.d + "/h")
        self.assertEqual(os.stat(self.d + "/h").st_nlink, 2)
        self.ok("fs", "chmod", "640", self.d + "/c.txt")
        self.assertEqual(stat.S_IMODE(os.stat(self.d + "/c.txt").st_mode), 0o640)
        self.assertEqual(self.sbx("fs", "chmod", "9z", self.d + "/c.txt").returncode, 2)
        p = self.ok("fs", "mktemp", "-d", "--dir", self.d, "--prefix", "t.").strip().decode()
        self.assertTrue(os.path.isdir(p) and os.path.basename(p).startswith("t."))

    def test_cat_write(self):
        self.assertEqual(self.ok("fs", "cat", self.d + "/a.txt", self.d + "/a.txt"),
                         b"hello\nhello\n")
        data = os.urandom(700000)
        self.ok("fs", "write", self.d + "/big", input=data, stdin=None)
        with open(self.d + "/big", "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(self.ok("fs", "cat", self.d + "/big"), data)
        self.ok("fs", "write", "-a", self.d + "/big", input=b"tail", stdin=None)
        self.assertEqual(os.path.getsize(self.d + "/big"), 700004)
        r = self.sbx("fs", "cat", self.d + "/nope")
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"ENOENT", r.stderr)

    def test_write_that_writes_nothing(self):
        """An agent that answers fs.write with written: 0 (or more than was sent): fs write
        fails with what the agent said. It retried the same write for ever."""
        for claim in (0, 1 << 40):
            def edit(msg, asked, claim=claim):
                if msg[0] == 1 and asked.get(msg[1]) == "fs.write" and msg[3]:
                    return [1, msg[1], None, dict(msg[3], written=claim)]
                return msg
            relay = w.Relay(self.addr[len("unix:"):], self.d + "/relay.sock", edit)
            try:
                r = self.sbx("fs", "write", self.d + "/w", addr=relay.addr, input=b"data",
                             stdin=None, timeout=30)
            finally:
                relay.close()
                os.unlink(self.d + "/relay.sock")
            self.assertEqual(r.returncode, 1)
            self.assertIn(b"the agent wrote %d of 4 bytes" % claim, r.stderr)

    def test_ls_of_pages_without_end(self):
        """An agent whose fs.readdir pages never end (a cursor every time): ls, which sorts in
        memory, stops at its cap with a message, rather than growing until it is killed."""
        page = w.pack({"entries": [{"name": b"x", "type": "file"}] * 10000, "cursor": "more"})

        def edit(msg, asked):
            if msg[0] == 1 and asked.get(msg[1]) == "fs.readdir":
                return b"\x94\x01" + w.pack(msg[1]) + b"\xc0" + page
            return msg
        relay = w.Relay(self.addr[len("unix:"):], self.d + "/relay.sock", edit)
        self.addCleanup(relay.close)
        r = self.sbx("fs", "ls", self.d, addr=relay.addr, timeout=120)
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"more than 4194304 entries to sort", r.stderr)

    def ls_edited(self, page, *args):
        """sbx fs ls ARGS self.d with every fs.readdir answer replaced by @page (packed)."""
        def edit(msg, asked):
            if msg[0] == 1 and asked.get(msg[1]) == "fs.readdir":
                return b"\x94\x01" + w.pack(msg[1]) + b"\xc0" + page
            return msg
        sock = tempfile.mktemp(prefix="relay-", suffix=".sock", dir=self.d)
        relay = w.Relay(self.addr[len("unix:"):], sock, edit)
        self.addCleanup(relay.close)
        return self.sbx("fs", "ls", *args, self.d, addr=relay.addr, timeout=120)

    def test_ls_of_long_names_without_end(self):
        # Pages of the longest names a directory can hold, without end: the names' bytes are
        # capped too (an entry named with 4 MiB per page grew the CLI by 250 MB a second).
        r = self.ls_edited(w.pack({"entries": [{"name": b"n" * 255, "type": "file"}] * 8192,
                                   "cursor": "more"}))
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"the names take more than 256 MiB to sort", r.stderr)

    def test_ls_of_what_is_no_listing(self):
        for entries, cursor, why in (
                ([{"name": b"n" * 4096, "type": "file"}], None, b"not a file name"),
                ([{"name": b"a/b", "type": "file"}], None, b"not a file name"),
                ([{"name": b"", "type": "file"}], None, b"not a file name"),
                ([], "more", b"does not move on")):
            r = self.ls_edited(w.pack({"entries": entries, "cursor": cursor}))
            self.assertEqual(r.returncode, 1, (entries[:1], r.stderr))
            self.assertIn(why, r.stderr)
            self.assertEqual(r.stdout, b"")

    def test_ls_long_fails_when_an_entry_does(self):
        # ls -l printed "??????????" for an entry whose lstat failed, and exited 0.
        def edit(msg, asked):
            if msg[0] == 1 and asked.get(msg[1]) == "fs.lstat":
                return [1, msg[1], {"code": "EIO", "message": "lstat: I/O error"}, None]
            return msg
        relay = w.Relay(self.addr[len("unix:"):], self.d + "/relay-l.sock", edit)
        self.addCleanup(relay.close)
        r = self.sbx("fs", "ls", "-l", self.d, addr=relay.addr)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn(b"?????????? a.txt (EIO)", r.stdout)

    def test_find_glob(self):
        out = self.ok("fs", "find", self.d).decode().split("\n")[:-1]
        self.assertEqual(sorted(out), sorted([self.d, self.d + "/a.txt", self.d + "/link",
                                              self.d + "/sub", self.d + "/sub/deep",
                                              self.d + "/sub/deep/b.py"]))
        self.assertEqual(self.ok("fs", "find", self.d, "--type", "f", "--ext", "py"),
                         (self.d + "/sub/deep/b.py\n").encode())
        self.assertEqual(self.ok("fs", "find", self.d, "--maxdepth", "1", "--type", "d"),
                         (self.d + "\n" + self.d + "/sub\n").encode())
        es = [json.loads(x) for x in self.ok("--json", "fs", "find", self.d).splitlines()]
        self.assertEqual(es[0]["depth"], 0)
        self.assertEqual(self.ok("fs", "glob", "**/*.py", "--root", self.d),
                         (self.d + "/sub/deep/b.py\n").encode())
        self.assertEqual(self.ok("fs", "glob", self.d + "/*.txt"),
                         (self.d + "/a.txt\n").encode())
        r = self.sbx("fs", "find", self.d + "/nope")
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"ENOENT", r.stderr)

    def test_watch(self):
        p = subprocess.Popen([SBX, "-c", self.addr, "fs", "watch", "-r", self.d],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            time.sleep(0.5)
            with open(self.d + "/sub/new", "w") as f:
                f.write("x")
            os.unlink(self.d + "/a.txt")
            time.sleep(0.5)
        finally:
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=10)
        self.assertEqual(p.returncode, 0, err)
        lines = out.decode().splitlines()
        self.assertIn("create " + self.d + "/sub/new", lines)
        self.assertIn("remove " + self.d + "/a.txt", lines)


class TestCliHostileText(CliCase):
    """File names, link targets and error text are the workload's (or a hostile agent's): the
    human output of the CLI shows their control characters, C1 controls, bidi overrides and
    non-UTF-8 bytes escaped, so that nothing the workload names can clear the screen, retitle the
    window or forge a line of output on the host's terminal. --json keeps the exact names."""

    NAMES = [b"clear\x1b[2J\x1b]0;PWNED\x07", b"forged\nsbx: all good", b"csi\xc2\x9b31m",
             b"rtl\xe2\x80\xaegnp.exe", b"bad\xffbyte", b"plain-\xc3\xa9t\xc3\xa9"]

    def setUp(self):
        self.user = WorkloadUser()
        super().setUp()
        self.d = self.user.mkdtemp()
        script = "; ".join("touch \"$(printf '%s')\"" % "".join(
            "\\%03o" % b for b in n) for n in self.NAMES)
        script += "; ln -s \"$(printf 'x\\033[31mred')\" link"
        r = self.user.sh("cd '%s' && %s" % (self.d, script))
        self.assertEqual(r.returncode, 0, r.stderr)

    def tearDown(self):
        self.user.close()
        super().tearDown()

    def assert_harmless(self, out, lines):
        for bad in (b"\x1b", b"\x07", b"\r", b"\xc2\x9b", b"\xe2\x80\xae", b"\xff"):
            self.assertNotIn(bad, out)
        self.assertEqual(out.count(b"\n"), lines, out)
        self.assertIn(b"clear\\x1b[2J\\x1b]0;PWNED\\x07", out)
        self.assertIn(b"forged\\x0asbx: all good", out)
        self.assertIn(b"csi\\u009b31m", out)
        self.assertIn(b"rtl\\u202egnp.exe", out)
        self.assertIn(b"bad\\xffbyte", out)
        self.assertIn("plain-été".encode(), out)

    def test_listings(self):
        r = self.sbx("fs", "ls", self.d)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assert_harmless(r.stdout, len(self.NAMES) + 1)
        r = self.sbx("fs", "ls", "-l", self.d)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assert_harmless(r.stdout, len(self.NAMES) + 1)
        self.assertIn(b"-> x\\x1b[31mred", r.stdout)
        r = self.sbx("fs", "find", self.d)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assert_harmless(r.stdout, len(self.NAMES) + 2)  # and the directory itself
        # --json: the exact names, as JSON escapes them.
        names = {e["name"] for e in json.loads(self.sbx("--json", "fs", "ls", self.d).stdout)}
        self.assertIn("clear\x1b[2J\x1b]0;PWNED\x07", names)

    def test_error_text(self):
        for n in self.NAMES[:2]:
            r = self.sbx("fs", "stat", os.fsdecode(os.path.join(self.d.encode(), n, b"nope")))
            self.assertEqual(r.returncode, 1)
            self.assertEqual(r.stderr.count(b"\n"), 1, r.stderr)
            self.assertTrue(r.stderr.startswith(b"sbx: "), r.stderr)
            for bad in (b"\x1b", b"\x07"):
                self.assertNotIn(bad, r.stderr)


class TestCliIdentity(CliCase):
    """-u/--user of fs, cp and pack (PROTOCOL.md §17.1): an agent whose workload user is a real
    unprivileged user acts as that user by default; `-u root` asks for the agent's own rights."""

    def setUp(self):
        self.user = WorkloadUser()
        self.agent = w.Agent(AGENT, env=dict(os.environ, SBX_WORKLOAD_USER=self.user.name))
        self.addr = self.agent.addr
        wait_for_listen(self.agent.sock)
        self.d = tempfile.mkdtemp(prefix="sbx-cliid-")
        os.chmod(self.d, 0o755)
        self.secret = os.path.join(self.d, "secret")
        with open(self.secret, "w") as f:
            f.write("root only\n")
        os.chmod(self.secret, 0o600)

    def tearDown(self):
        shutil.rmtree(self.d, ignore_errors=True)
        self.user.close()
        super().tearDown()

    def test_default_is_the_workload_user(self):
        r = self.sbx("fs", "cat", self.secret)
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"EACCES", r.stderr)
        r = self.sbx("fs", "cat", "-u", "root", self.secret)
        self.assertEqual((r.returncode, r.stdout), (0, b"root only\n"), r.stderr)
        r = self.sbx("cp", "-u", str(self.user.uid), ":" + self.secret, self.d + "/copy")
        self.assertEqual(r.returncode, 1)
        self.assertFalse(os.path.exists(self.d + "/copy"))
        r = self.sbx("cp", "--user", "root", ":" + self.secret, self.d + "/copy")
        self.assertEqual(r.returncode, 0, r.stderr)
        # A new file belongs to whoever the upload acted as.
        mine = self.user.mkdtemp()
        r = self.sbx("cp", self.secret, ":" + mine + "/up")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(os.stat(mine + "/up").st_uid, self.user.uid)
        r = self.sbx("fs", "stat", "-u", "nosuchuser" + self.user.name, "/")
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"user", r.stderr)


if __name__ == "__main__":
    unittest.main()
