"""A hostile workload for attack tests: a real unprivileged user made by the test.

Every attack an integration test makes on the agent runs as such a user (never as root, never as
the user running the tests), so what it can do is what a sandboxed workload can do:

    with WorkloadUser() as u:
        d = u.mkdtemp()                      # a scratch directory the workload owns
        p = u.popen(["sh", "-c", "..."])     # a process of the workload
        agent_conn.call("proc.spawn", {"argv": [...], "uid": u.uid, "gid": u.gid})

close() (or leaving the with block) SIGKILLs every process of the user, removes its directories
and deletes the user. Needs root (skips the test otherwise).
"""
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import unittest


# The Python a workload process runs: the user cannot reach one under /root (a pyenv's).
PY = "/usr/bin/python3"


class WorkloadUser:
    def __init__(self, prefix="sbxw"):
        if os.geteuid() != 0:
            raise unittest.SkipTest("attack tests create a user: run as root")
        self.name = prefix + secrets.token_hex(4)
        subprocess.run(["useradd", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/bin/sh", "--user-group", self.name],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        pw = pwd.getpwnam(self.name)
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self._dirs = []
        self._procs = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def env(self, **extra):
        e = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/nonexistent", "USER": self.name,
             "LANG": "C.UTF-8"}
        e.update(extra)
        return e

    def popen(self, argv, **kw):
        """Start @argv as the workload user (no supplementary groups, a minimal environment)."""
        kw.setdefault("env", self.env())
        kw.setdefault("cwd", "/")
        p = subprocess.Popen(argv, user=self.uid, group=self.gid, extra_groups=[], **kw)
        self._procs.append(p)
        return p

    def run(self, argv, timeout=60, **kw):
        """Run @argv as the workload user to its end; a CompletedProcess with text output."""
        kw.setdefault("env", self.env())
        kw.setdefault("cwd", "/")
        return subprocess.run(argv, user=self.uid, group=self.gid, extra_groups=[],
                              capture_output=True, text=True, timeout=timeout, **kw)

    def sh(self, script, **kw):
        return self.run(["/bin/sh", "-c", script], **kw)

    def mkdtemp(self, mode=0o755, parent=None):
        """A new directory owned by the workload user (the test removes it at close)."""
        d = tempfile.mkdtemp(prefix="sbx-workload-", dir=parent)
        os.chown(d, self.uid, self.gid)
        os.chmod(d, mode)
        self._dirs.append(d)
        return d

    def kill_all(self):
        """SIGKILL every process of the user (also ones that left their process group), until
        none is left."""
        # Our own children first, reaped, so pkill does not keep matching their zombies.
        for p in self._procs:
            try:
                p.kill()
                p.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = subprocess.run(["pkill", "-KILL", "-U", str(self.uid)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if r.returncode == 1:  # no process matched
                break
            time.sleep(0.05)
        for p in self._procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        # Stopped processes of the user that a test left behind (SIGKILL ends them too).
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    if os.stat("/proc/" + pid).st_uid == self.uid:
                        os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass

    def close(self):
        if self.name is None:
            return
        self.kill_all()
        for d in self._dirs:
            shutil.rmtree(d, ignore_errors=True)
        subprocess.run(["userdel", self.name], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        self.name = None
