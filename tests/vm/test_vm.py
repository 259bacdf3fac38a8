"""VM end-to-end tests: real Debian kernel, real images, QEMU (TCG), the host drives the agent.

    python3 test_vm.py --build-image busybox|debian   build the test images (ctest fixtures)
    python3 test_vm.py CLASS                          run one class; exit 77 when all skipped

Each class boots its own VM (its own socket directory, so ctest -j is fine) and runs several
checks against it; the console log of every VM is kept in $SBX_VM_IMAGES/logs/CLASS*.log.
Environment (set by tests/vm/CMakeLists.txt): SBX_BUILD, SBX_VM_IMAGES, SBX_VSOCK_RELAY.
"""
import hashlib
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import unittest

sys.dont_write_bytecode = True  # no __pycache__ in the source tree when run by hand
HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(SRC, "rootfs-builder"))
sys.path.insert(0, os.path.join(SRC, "tests", "integration"))
import sbxvm  # noqa: E402
import sbxwire  # noqa: E402
import seccomp_probe  # noqa: E402

BUILD = os.environ.get("SBX_BUILD", os.path.join(SRC, "build"))
IMAGES = os.environ.get("SBX_VM_IMAGES", os.path.join(BUILD, "tests", "vm"))
RELAY = os.environ.get("SBX_VSOCK_RELAY", os.path.join(BUILD, "tests", "sbx-vsock-relay"))
SBX = os.path.join(BUILD, "bin", "sbx")
SBX_VM = os.path.join(BUILD, "bin", "sbx-vm")
SBX_ROOTFS = os.path.join(BUILD, "bin", "sbx-rootfs")
BUSYBOX = os.path.join(IMAGES, "busybox.cpio.gz")
DEBIAN = os.path.join(IMAGES, "debian.ext4")
DENO = os.path.join(IMAGES, "deno.ext4")
LOGS = os.path.join(IMAGES, "logs")
BOOT_TIMEOUT = 120  # boots take 2-4 s; generous for a loaded CI machine running 2 VMs


def note(msg):
    print("    # " + msg, file=sys.stderr, flush=True)


# --- fixtures: the images ---------------------------------------------------------------------

def build_image(kind):
    os.makedirs(IMAGES, exist_ok=True)
    t0 = time.monotonic()
    if kind == "busybox":
        # The product image plus what the tests need: the vsock loopback module and the relay.
        argv = [SBX_ROOTFS, "build", "--base", "busybox", "-o", BUSYBOX,
                "--module", "vsock_loopback", "--add", RELAY + ":/usr/bin/sbx-vsock-relay"]
    else:
        why = None
        if os.geteuid() != 0:
            why = "debootstrap needs root"
        elif not shutil.which("debootstrap"):
            why = "debootstrap is not installed (apt-get install debootstrap)"
        if why:
            print("SKIP: the %s image cannot be built here: %s" % (kind, why))
            return 77
        # The two image profiles (docs/SECURITY.md): the Debian test image is the locked one
        # (the workload user has no sudo), the deno image the Deno-compatible one (sudo works).
        argv = [SBX_ROOTFS, "build", "--base", "debian", "--workload-sudo", "no", "-o", DEBIAN]
        if kind == "deno":
            argv = [SBX_ROOTFS, "build", "--base", "debian", "--with-deno", "-o", DENO]
    rc = subprocess.call(argv)
    print("%s image: exit %d in %.1fs" % (kind, rc, time.monotonic() - t0))
    return rc


# --- helpers ------------------------------------------------------------------------------------

def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VMCase(unittest.TestCase):
    """One VM per class, booted in setUpClass."""

    image = BUSYBOX
    machine = "q35"
    mem = "256M"
    append = ()
    ports = ()

    @classmethod
    def boot(cls, append=None, machine=None, image=None, ports=None, name=None):
        img = image or cls.image
        if not os.path.exists(img):
            raise unittest.SkipTest("%s missing (its fixture test builds it)" % img)
        vm = sbxvm.VM(img, machine=machine or cls.machine, mem=cls.mem,
                      append=list(cls.append if append is None else append),
                      ports=list(cls.ports if ports is None else ports), log=note)
        vm.log_name = name or cls.__name__
        vm.start()
        cls.vms.append(vm)
        vm.hello = vm.wait_ready(BOOT_TIMEOUT)
        vm.start_proxy()
        note("%s: agent ready %.2fs after QEMU start" % (vm.log_name, vm.boot_seconds))
        return vm

    @classmethod
    def setUpClass(cls):
        cls.vms = []
        try:
            cls.vm = cls.boot()
        except sbxvm.VMError:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        for vm in cls.vms:
            if vm.alive():
                vm.shutdown(20)
            os.makedirs(LOGS, exist_ok=True)
            shutil.copyfile(vm.console_log, os.path.join(LOGS, vm.log_name + ".console.log")) \
                if os.path.exists(vm.console_log) else None
            vm.cleanup()

    def sbx(self, *args, vm=None, input=None, timeout=120, addr=None):
        env = dict(os.environ, SBX_ADDR=addr or (vm or self.vm).addr)
        return subprocess.run([SBX] + list(args), input=input, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout, env=env)

    def sh(self, cmd, vm=None, timeout=120):
        """`sbx exec -- sh -c CMD`; returns stdout as text, asserting exit 0."""
        p = self.sbx("exec", "--", "sh", "-c", cmd, vm=vm, timeout=timeout)
        self.assertEqual(p.returncode, 0, "%r: %s" % (cmd, p.stderr.decode(errors="replace")))
        return p.stdout.decode()

    def detach(self, *argv):
        """`sbx exec --detach -- ARGV`: the process id it prints."""
        p = self.sbx("exec", "--detach", "--", *argv)
        self.assertEqual(p.returncode, 0, p.stderr)
        return int(p.stdout.split()[0])

    def wait_listening(self, port, timeout=60):
        """Until `sbx ports` lists @port; returns its entry."""
        deadline = time.monotonic() + timeout
        while True:
            p = self.sbx("ports", "--json")
            self.assertEqual(p.returncode, 0, p.stderr)
            found = [e for e in json.loads(p.stdout)["sockets"] if e.get("port") == port]
            if found:
                return found[0]
            self.assertLess(time.monotonic(), deadline, "port %d never listened" % port)
            time.sleep(0.3)

    def conn(self, vm=None, addr=None):
        c = sbxwire.Conn(addr or (vm or self.vm).addr, timeout=60)
        c.hello()
        return c

    def assert_poweroff(self, vm, timeout=90):  # generous: TCG on a loaded 2-core machine
        rc = vm.wait(timeout)
        self.assertEqual(rc, 0, "QEMU exit status (None = still running after %ds)" % timeout)
        self.assertIsNone(vm.panic_line())


# --- the tests ----------------------------------------------------------------------------------

class TestBoot(VMCase):
    """Boot to agent-ready, hello, info with boot timings, env from the kernel command line."""

    append = ("sbx.env.FOO=bar", '"sbx.env.GREETING=hello world"')

    def test_ready_and_hello(self):
        self.assertLess(self.vm.boot_seconds, BOOT_TIMEOUT)
        self.assertEqual(self.vm.hello["agent"], "sbx-agent")
        for cap in ("session", "env", "process"):
            self.assertIn(cap, self.vm.hello["capabilities"])
        p = self.sbx("hello")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(b"sbx-agent", p.stdout)
        self.assertEqual(self.sbx("ping").returncode, 0)

    def test_info_boot_timings(self):
        c = self.conn()
        info = c.call("info")
        c.close()
        b = info["boot"]
        self.assertIsNotNone(b, "info.boot is nil: the agent did not get timings from sbx-init")
        self.assertGreater(b["kernel_ns"], 0)
        self.assertLess(b["kernel_ns"], b["init_ns"])
        self.assertLess(b["init_ns"], b["agent_ns"])
        self.assertLessEqual(b["agent_ns"], b["ready_ns"])
        self.assertLessEqual(b["ready_ns"], info["uptime_ns"])
        note("boot timings (s since kernel start): kernel %.3f  init %.3f  agent %.3f  ready "
             "%.3f" % tuple(b[k] / 1e9 for k in ("kernel_ns", "init_ns", "agent_ns",
                                                 "ready_ns")))
        p = self.sbx("info")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(b"boot.ready_ns", p.stdout)

    def test_env_from_kernel_cmdline(self):
        self.assertEqual(self.sh('printf "%s|%s" "$FOO" "$GREETING"'), "bar|hello world")
        p = self.sbx("env", "get", "FOO")
        self.assertEqual((p.returncode, p.stdout), (0, b"bar\n"))

    def test_fs_stat_ls_in_guest(self):
        """`sbx fs` against the guest's own file system: what the guest's tools also say."""
        self.assertIn("fs", self.vm.hello["capabilities"])
        p = self.sbx("fs", "ls", "/")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(b"proc/\n", p.stdout)
        p = self.sbx("--json", "fs", "stat", "/bin/sh")
        self.assertEqual(p.returncode, 0, p.stderr)
        info = json.loads(p.stdout)
        self.assertEqual(info["ino"], int(self.sh("stat -L -c %i /bin/sh")))
        self.assertEqual(info["size"], int(self.sh("stat -L -c %s /bin/sh")))
        p = self.sbx("fs", "write", "/tmp/fs-vm", input=b"from the host\n")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(self.sh("cat /tmp/fs-vm"), "from the host\n")
        p = self.sbx("fs", "stat", "/no/such")
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"ENOENT", p.stderr)

    def test_kernel_hardening(self):
        """sbx-init sets the kernel's protections at boot (issue 14 item 12, docs/SECURITY.md),
        and they hold against a workload: uid 1000 plants a symlink to a root file and a FIFO
        in /tmp; root (the agent's identity) neither follows the link nor opens the FIFO with
        O_CREAT."""
        want = {"fs/protected_symlinks": "1", "fs/protected_hardlinks": "1",
                "fs/protected_fifos": "2", "fs/protected_regular": "2",
                "kernel/yama/ptrace_scope": "1", "kernel/kptr_restrict": "1",
                "kernel/dmesg_restrict": "1"}
        got = self.sh("for k in %s; do echo $k=$(cat /proc/sys/$k); done" % " ".join(want))
        self.assertEqual(got.split(), ["%s=%s" % kv for kv in want.items()])
        p = self.sbx("exec", "--user", "1000", "--", "sh", "-c",
                     "ln -s /etc/hostname /tmp/evil-link && mkfifo /tmp/evil-fifo")
        self.assertEqual(p.returncode, 0, p.stderr)
        p = self.sbx("exec", "--", "cat", "/tmp/evil-link")
        self.assertNotEqual(p.returncode, 0, "root followed a workload's symlink in /tmp")
        self.assertIn(b"Permission denied", p.stderr)
        # O_CREAT on someone else's FIFO in sticky /tmp: EACCES instead of blocking on it.
        p = self.sbx("exec", "--", "sh", "-c", "echo x > /tmp/evil-fifo", timeout=60)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(b"Permission denied", p.stderr)

    def test_zz_shutdown_request_powers_off(self):
        """Last: a `shutdown` request powers the VM off cleanly (QEMU exit status 0)."""
        t0 = time.monotonic()
        p = self.sbx("call", "shutdown")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assert_poweroff(self.vm)
        note("shutdown request -> QEMU exit: %.2fs" % (time.monotonic() - t0))
        self.assertIn(b"shutdown: poweroff", self.vm.console_text())


class TestProcess(VMCase):
    """Exit codes, signals, streams byte-exact, stdin, orphans, ps."""

    def test_exit_codes(self):
        self.assertEqual(self.sbx("exec", "--", "sh", "-c", "exit 7").returncode, 7)
        self.assertEqual(self.sbx("exec", "--", "false").returncode, 1)
        self.assertEqual(self.sbx("exec", "--", "/no/such/program").returncode, 127)
        p = self.sbx("exec", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
        self.assertEqual((p.returncode, p.stdout, p.stderr), (3, b"out\n", b"err\n"))

    def test_signals(self):
        self.assertEqual(self.sbx("exec", "--", "sh", "-c", "kill -TERM $$").returncode, 143)
        c = self.conn()
        r = c.call("proc.spawn", {"argv": ["sleep", "30"], "stdout": "null", "stderr": "null"})
        c.call("proc.kill", {"id": r["id"], "signal": "SIGKILL"})
        ex = c.call("proc.wait", {"id": r["id"], "timeout_ms": 10000})
        c.close()
        self.assertEqual((ex["code"], ex["signal"], ex["signo"]), (None, "SIGKILL", 9))

    def test_stdout_64mib_byte_exact(self):
        size = 64 << 20
        guest = self.sh("head -c %d /dev/urandom > /tmp/big && sha256sum /tmp/big" % size)
        with tempfile.TemporaryFile() as f:
            t0 = time.monotonic()
            env = dict(os.environ, SBX_ADDR=self.vm.addr)
            rc = subprocess.call([SBX, "exec", "--", "cat", "/tmp/big"], stdout=f, env=env,
                                 timeout=300)
            dt = time.monotonic() - t0
            self.assertEqual(rc, 0)
            f.seek(0)
            h, n = hashlib.sha256(), 0
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
                n += len(chunk)
        self.assertEqual(n, size)
        self.assertEqual(h.hexdigest(), guest.split()[0])
        note("64 MiB stdout through virtio-serial: %.2fs, %.1f MB/s" % (dt, size / dt / 1e6))
        self.sh("rm /tmp/big")

    def test_stdin_round_trip(self):
        data = os.urandom(8 << 20)
        p = self.sbx("exec", "--", "cat", input=data, timeout=300)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertTrue(p.stdout == data, "stdin -> cat -> stdout differs (%d bytes back)"
                        % len(p.stdout))
        p = self.sbx("exec", "--", "sha256sum", input=data, timeout=300)
        self.assertEqual(p.stdout.split()[0].decode(), hashlib.sha256(data).hexdigest())

    def test_orphans_reaped(self):
        """Double-forked children re-parent to sbx-init, which must reap them: no zombies."""
        self.sh("for i in $(seq 40); do sh -c '(sleep 0.1 &) ; (sleep 0.05 &) ; :'; done")
        c = self.conn()
        for _ in range(20):  # also from processes the agent spawns directly
            r = c.call("proc.spawn", {"command": "(sleep 0.1 &) ; :", "stdout": "null",
                                      "stderr": "null"})
            c.call("proc.wait", {"id": r["id"], "timeout_ms": 10000})
        c.close()
        zombies = None
        for _ in range(10):
            time.sleep(0.3)
            stats = self.sh("cat /proc/[0-9]*/stat 2>/dev/null; true")
            zombies = [ln for ln in stats.splitlines()
                       if re.match(r"\d+ \(.*\) Z ", ln)]
            if not zombies:
                break
        self.assertEqual(zombies, [], "zombie processes left")

    def test_ps_and_kill(self):
        c = self.conn()
        r = c.call("proc.spawn", {"argv": ["sleep", "60"], "stdout": "null", "stderr": "null",
                                  "tag": "ps-test"})
        c.close()  # processes outlive the connection that made them
        p = self.sbx("ps")
        self.assertEqual(p.returncode, 0, p.stderr)
        line = [ln for ln in p.stdout.decode().splitlines() if "sleep 60" in ln]
        self.assertTrue(line and "running" in line[0], p.stdout)
        self.assertEqual(self.sbx("kill", str(r["id"])).returncode, 0)
        self.assertEqual(self.sbx("wait", str(r["id"])).returncode, 143)


    def test_forward_to_busybox_httpd(self):
        """net.connect needs no network device: busybox httpd on lo, reached by sbx forward
        from here; sbx ports names its process."""
        import urllib.request
        self.assertEqual(self.sh("ls /sys/class/net").split(), ["lo"])
        self.sh("mkdir -p /tmp/www && echo hello from busybox > /tmp/www/index.html")
        server = self.detach("httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/tmp/www")
        ent = self.wait_listening(8080, timeout=30)
        pid = int(self.sh("cat /proc/$(pidof httpd)/stat | cut -d' ' -f1").split()[0])
        self.assertEqual((ent["proto"], ent["addr"], ent["pid"]), ("tcp", "127.0.0.1", pid))
        local = free_port()
        fwd = subprocess.Popen([SBX, "forward", "%d:8080" % local], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=dict(os.environ, SBX_ADDR=self.vm.addr))
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen("http://127.0.0.1:%d/" % local, timeout=30) as r:
                        self.assertEqual(r.read(), b"hello from busybox\n")
                        break
                except OSError:
                    self.assertIsNone(fwd.poll(), "sbx forward exited")
                    self.assertLess(time.monotonic(), deadline, "no answer through the forward")
                    time.sleep(0.2)
        finally:
            fwd.terminate()
            fwd.communicate(timeout=30)
            self.sbx("kill", str(server))

    def test_repl_sh_busybox(self):
        """A REPL session on busybox sh: state, the PTY, a timeout as ^C, exit; sbx repl."""
        c = self.conn()
        sid = c.call("repl.start", {"language": "sh"})["session"]
        r = c.call("repl.eval", {"session": sid, "code": "x=41; cd /tmp"})
        self.assertFalse(r["error"], r)
        r = c.call("repl.eval", {"session": sid,
                                 "code": 'f() {\n  echo "$((x + $1)) $(pwd)"\n}\nf 1\n'
                                         '[ -t 0 ] && echo tty'})
        self.assertEqual(r["stdout"], b"42 /tmp\ntty\n", r)
        r = c.call("repl.eval", {"session": sid, "code": "while :; do :; done",
                                 "timeout_ms": 500})
        self.assertTrue(r["timed_out"], r)
        r = c.call("repl.eval", {"session": sid, "code": "echo $x"})
        self.assertEqual((r["stdout"], r["error"]), (b"41\n", False), r)
        r = c.call("repl.eval", {"session": sid, "code": "exit 3"})
        self.assertEqual(r["error_text"], "interpreter exited (exit status 3)")
        c.close()
        p = self.sbx("repl", "sh", "-e", "y=5", "-e", "echo $((y * 2))")
        self.assertEqual((p.returncode, p.stdout), (0, b"10\n"), p.stderr)


def percentile(xs, pct):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * pct / 100))]


class TestLimits(VMCase):
    """Workload resource limits (issue 14 item 16; PROTOCOL.md §14.10, docs/INIT.md): init and
    the agent in the protected cgroup `sbx`, each process the agent starts in a cgroup of its own
    below `workload`. A memory hog's exit map says oom, a fork bomb of the workload user is held
    by pids.max and killed with its cgroup, and the agent keeps answering throughout; workloads
    get init's RLIMIT_NOFILE, not the agent's.

    The issue's targets (ping p99 <= 50 ms, host exec of `true` <= 200 ms) are measured and
    printed, not asserted: performance is measured, never a timed assertion of the suite. The
    bounds asserted are functional ones a loaded 2-core CI machine under TCG keeps."""

    mem = "512M"
    append = ("sbx.workload.pids_max=1000",)  # below uid 1000's RLIMIT_NPROC (threads-max / 2)
    WL = "/sys/fs/cgroup/workload"
    BOMB = "b(){ b|b& }; b; exec sleep 600"  # the leader stays: its cgroup can be looked up

    def cat(self, path):
        return self.sh("cat %s" % path).strip()

    def cgroup_of(self, pid):
        """The cgroup number of guest process PID (it must live in one of the workload's)."""
        cg = self.cat("/proc/%d/cgroup" % pid)
        m = re.match(r"0::/workload/(\d+)$", cg)
        self.assertTrue(m, "process %d is in cgroup %r, not one of its own below /workload"
                        % (pid, cg))
        return int(m.group(1))

    def wait_gone(self, n, timeout=60):
        """Wait until cgroup N is removed: every process in it has exited and been reaped."""
        deadline = time.monotonic() + timeout
        while self.sh("test -d %s/%d && echo y || true" % (self.WL, n)).strip() == "y":
            self.assertLess(time.monotonic(), deadline, "cgroup %d still there" % n)
            time.sleep(0.5)

    def pinger(self):
        """Ping the agent on a connection of its own until stop is set: (thread, stop, result),
        result["lat"] the round trips in seconds, result["error"] what ended it early."""
        stop, result = threading.Event(), {"lat": [], "error": None}
        c = self.conn()

        def run():
            try:
                while not stop.is_set():
                    t = time.monotonic()
                    c.call("ping")
                    result["lat"].append(time.monotonic() - t)
                    time.sleep(0.01)
            except Exception as e:  # noqa: BLE001 -- reported by the test
                result["error"] = e
            finally:
                c.close()

        th = threading.Thread(target=run, daemon=True)
        th.start()
        return th, stop, result

    def ping_summary(self, what, result):
        lat = result["lat"]
        self.assertIsNone(result["error"], "a ping failed %s" % what)
        self.assertGreater(len(lat), 10, "too few pings answered %s" % what)
        note("agent ping %s: n=%d p50=%.1fms p99=%.1fms max=%.1fms" % (
            what, len(lat), percentile(lat, 50) * 1e3, percentile(lat, 99) * 1e3,
            max(lat) * 1e3))
        self.assertLess(max(lat), 10, "a ping took %.1fs %s" % (max(lat), what))

    def test_hierarchy(self):
        self.assertIn("limits", self.vm.hello["capabilities"])
        c = self.conn()
        agent = c.call("info")["pid"]
        c.close()
        self.assertIn("favordynmods", self.sh("grep cgroup2 /proc/mounts"))
        self.assertEqual(self.cat("/proc/1/cgroup"), "0::/sbx")
        self.assertEqual(self.cat("/proc/%d/cgroup" % agent), "0::/sbx")
        self.assertEqual(self.cat("/sys/fs/cgroup/sbx/memory.min"), str(32 << 20))
        self.assertEqual(self.cat("/sys/fs/cgroup/sbx/cpu.weight"), "1000")
        self.assertEqual(self.cat(self.WL + "/pids.max"), "1000")  # sbx.workload.pids_max
        total = int(self.sh("free -b | awk '/Mem:/ {print $2}'"))
        self.assertLess(int(self.cat(self.WL + "/memory.max")), total)  # auto: 90% - 32 MiB
        self.assertEqual(self.cat(self.WL + "/cpu.max"), "max 100000")
        self.assertEqual(self.cat(self.WL + "/cgroup.subtree_control").split(),
                         ["cpu", "memory", "pids"])
        for user in ((), ("--user", "1000")):
            p = self.sbx("exec", *user, "--", "cat", "/proc/self/cgroup")
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertRegex(p.stdout.decode(), r"^0::/workload/\d+\n$")
        # A REPL interpreter: the limits hold for the whole session.
        c = self.conn()
        sid = c.call("repl.start", {"language": "sh", "uid": 1000, "pids_max": 50})["session"]
        r = c.call("repl.eval", {"session": sid, "code": "cat /sys/fs/cgroup$(cut -d: -f3 "
                                                         "/proc/self/cgroup)/pids.max"})
        self.assertEqual(r["stdout"], b"50\n", r)
        c.call("repl.close", {"session": sid})
        c.close()
        # Removed at the reap; one a background child still holds, when that child is gone.
        n = int(p.stdout.decode().strip().rsplit("/", 1)[1])
        self.wait_gone(n, 10)
        pid, cg = self.sh("sleep 3 >/dev/null 2>&1 & echo $!; cat /proc/self/cgroup").split()
        n = int(cg.rsplit("/", 1)[1])
        self.assertEqual(self.cat("%s/%d/cgroup.procs" % (self.WL, n)).split(), [pid])
        self.wait_gone(n, 30)

    def test_memory_hog_oom(self):
        c = self.conn()
        agent = c.call("info")["pid"]
        # The hog of the issue: 128 MiB in one buffer against memory_max 64 MiB.
        hog = {"argv": ["dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"],
               "uid": 1000, "memory_max": 64 << 20}
        _, ex, *_ = sbxwire.run(c, hog)
        self.assertEqual((ex["signal"], ex.get("oom")), ("SIGKILL", True), ex)
        self.assertLess(ex["rusage"]["maxrss_kb"], 72 << 10)  # 64 MiB + dd's shared text
        # A descendant's OOM is its spawn's: the shell survives it and says so.
        _, ex, outs, *_ = sbxwire.run(c, {
            "command": "dd if=/dev/zero of=/dev/null bs=128M count=1 2>/dev/null; echo $?",
            "uid": 1000, "memory_max": 64 << 20})
        self.assertEqual((ex["code"], ex.get("oom"), b"".join(outs.values())),
                         (0, True, b"137\n"))
        _, ex, *_ = sbxwire.run(c, {"argv": ["true"], "uid": 1000})
        self.assertEqual((ex["code"], ex.get("oom")), (0, False))
        # No limit of its own: the workload cgroup's memory.max holds it, well before the
        # agent or init could starve; pings meanwhile.
        th, stop, res = self.pinger()
        t0 = time.monotonic()
        _, ex, *_ = sbxwire.run(c, {"command": "awk 'BEGIN { s = \"0123456789abcdef\"; "
                                               "for (;;) s = s s }'", "uid": 1000})
        note("unlimited hog: killed after %.1fs at maxrss %d MiB" % (
            time.monotonic() - t0, ex["rusage"]["maxrss_kb"] >> 10))
        stop.set()
        th.join(60)
        self.assertEqual((ex["signal"], ex.get("oom")), ("SIGKILL", True), ex)
        self.ping_summary("during the memory hog", res)
        self.assertEqual(c.call("info")["pid"], agent, "the agent was restarted")
        c.close()
        self.assertEqual(self.sh("echo alive"), "alive\n")

    def spawn_bomb(self, c, **limits):
        """Start a fork bomb as uid 1000 (killed at the end of the test whatever happens);
        returns (its proc id, its cgroup number)."""
        r = c.call("proc.spawn", dict(command=self.BOMB, uid=1000, stdout="null", stderr="null",
                                      **limits))

        def kill():
            k = self.conn()
            try:
                k.call("proc.kill", {"id": r["id"], "signal": "KILL", "group": True})
            except sbxwire.RemoteError:
                pass  # ESRCH: killed already
            k.close()

        self.addCleanup(kill)
        return r["id"], self.cgroup_of(r["pid"])

    def kill_bomb(self, c, pid, n):
        t0 = time.monotonic()
        c.call("proc.kill", {"id": pid, "signal": "KILL", "group": True})
        ex = c.call("proc.wait", {"id": pid, "timeout_ms": 60000})
        self.assertEqual(ex["signal"], "SIGKILL")
        self.wait_gone(n)
        return time.monotonic() - t0

    def test_fork_bomb(self):
        c = self.conn()
        agent = c.call("info")["pid"]
        # pids_max of its own: the bomb stays within it.
        pid, n = self.spawn_bomb(c, pids_max=64, cpu_max=20)
        self.assertEqual(self.cat("%s/%d/pids.max" % (self.WL, n)), "64")
        self.assertEqual(self.cat("%s/%d/cpu.max" % (self.WL, n)), "20000 100000")
        deadline = time.monotonic() + 60
        while int(self.cat("%s/%d/pids.events" % (self.WL, n)).split()[1]) == 0:
            self.assertLess(time.monotonic(), deadline, "the bomb never reached pids.max")
            time.sleep(0.5)
        self.assertLessEqual(int(self.cat("%s/%d/pids.current" % (self.WL, n))), 64)
        self.kill_bomb(c, pid, n)

        # No limit of its own: the workload's pids.max (1000) holds it. Meanwhile the agent
        # answers pings, and the host runs `true` as root: on a connection it holds (the
        # agent's part) and through the CLI (a new connection through sbx-vm's port proxy).
        def run_true():
            t = time.monotonic()
            _, ex, *_ = sbxwire.run(c, {"argv": ["true"]})
            self.assertEqual(ex["code"], 0)
            return time.monotonic() - t

        def run_cli():
            t = time.monotonic()
            p = self.sbx("exec", "--", "true", timeout=60)
            self.assertEqual(p.returncode, 0, p.stderr)
            return time.monotonic() - t

        base = [run_true() for _ in range(5)]
        cli_base = [run_cli() for _ in range(5)]
        th, stop, res = self.pinger()
        pid, n = self.spawn_bomb(c)
        execs, cli, peak = [], [], 0
        t_end = time.monotonic() + 15
        while time.monotonic() < t_end:
            execs.append(run_true())
            cli.append(run_cli())
            peak = max(peak, int(self.cat("%s/%d/pids.current" % (self.WL, n))))
            time.sleep(0.2)
        stop.set()
        th.join(60)
        self.ping_summary("during the fork bomb", res)
        note("exec `true` as root: before the bomb p50=%.0fms; during it n=%d p50=%.0fms "
             "max=%.0fms" % (percentile(base, 50) * 1e3, len(execs),
                             percentile(execs, 50) * 1e3, max(execs) * 1e3))
        note("`sbx exec -- true` (CLI, a new connection through the port proxy): before the "
             "bomb p50=%.0fms; during it p50=%.0fms max=%.0fms; the bomb peaked at %d "
             "processes" % (percentile(cli_base, 50) * 1e3, percentile(cli, 50) * 1e3,
                            max(cli) * 1e3, peak))
        # Its own pids.max is "max": the refused forks it counts are the workload's doing.
        self.assertEqual(self.cat("%s/%d/pids.max" % (self.WL, n)), "max")
        self.assertLessEqual(peak, 1000)
        self.assertGreater(int(self.cat("%s/%d/pids.events" % (self.WL, n)).split()[1]), 0,
                           "the bomb never reached the workload's pids.max")
        note("fork bomb killed and reaped in %.1fs" % self.kill_bomb(c, pid, n))
        self.assertEqual(c.call("info")["pid"], agent, "the agent was restarted")
        c.close()

    def test_nofile_is_the_image_default(self):
        """RLIMIT_NOFILE of a workload is what init started with (the kernel's 1024/4096), not
        the agent's raised soft limit."""
        c = self.conn()
        agent = c.call("info")["pid"]
        c.close()

        def nofile(pid):
            line = [ln for ln in self.cat("/proc/%d/limits" % pid).splitlines()
                    if ln.startswith("Max open files")][0]
            return line.split()[3:5]

        init_soft, init_hard = nofile(1)
        self.assertNotEqual(nofile(agent)[0], init_soft, "the agent did not raise its limit")
        for user in ((), ("--user", "1000")):
            p = self.sbx("exec", *user, "--", "sh", "-c", "ulimit -n; ulimit -Hn")
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(p.stdout.decode().split(), [init_soft, init_hard])


class TestTransfer(VMCase):
    """sbx cp in and out (files and trees) and sbx pack against the busybox guest."""

    def test_upload_download_pack(self):
        with tempfile.TemporaryDirectory() as d:
            src = os.path.join(d, "blob")
            with open(src, "wb") as f:
                f.write(os.urandom(24 << 20))
            want = hashlib.sha256(open(src, "rb").read()).hexdigest()
            p = self.sbx("cp", src, ":/tmp/blob", timeout=300)
            self.assertEqual(p.returncode, 0, p.stderr.decode(errors="replace"))
            # the guest's own sha256sum agrees
            self.assertEqual(self.sh("sha256sum /tmp/blob").split()[0], want)
            back = os.path.join(d, "back")
            p = self.sbx("cp", ":/tmp/blob", back, timeout=300)
            self.assertEqual(p.returncode, 0, p.stderr.decode(errors="replace"))
            self.assertEqual(hashlib.sha256(open(back, "rb").read()).hexdigest(), want)
            # a tree in and out
            tree = os.path.join(d, "tree")
            os.makedirs(os.path.join(tree, "sub"))
            open(os.path.join(tree, "sub", "f"), "w").write("f\n")
            os.symlink("sub/f", os.path.join(tree, "l"))
            p = self.sbx("cp", "-r", "-z", "zstd", tree, ":/tmp/tree", timeout=300)
            self.assertEqual(p.returncode, 0, p.stderr.decode(errors="replace"))
            self.assertEqual(self.sh("cat /tmp/tree/l; readlink /tmp/tree/l"), "f\nsub/f\n")
            # pack with a build step in the guest, manifest checked here
            out = os.path.join(d, "app.tar.gz")
            p = self.sbx("pack", "/tmp/tree", "-o", out, "--build", "echo built > made.txt",
                         "--entrypoint", "made.txt", timeout=300)
            self.assertEqual(p.returncode, 0, p.stderr.decode(errors="replace"))
            data = open(out, "rb").read()
            man = json.load(open(out + ".manifest.json"))
            self.assertEqual(man["archive_sha256"], hashlib.sha256(data).hexdigest())
            files = {f["path"]: f for f in man["files"]}
            self.assertEqual(files["made.txt"]["sha256"], hashlib.sha256(b"built\n").hexdigest())
            with tarfile.open(out) as tf:
                self.assertEqual(tf.extractfile("made.txt").read(), b"built\n")


class TestAgentRestart(VMCase):
    """SIGKILL of sbx-agent from inside: the connection drops, init restarts the agent, a new
    connection says hello again."""

    def test_sigkill_agent(self):
        c = self.conn()
        pid1 = c.call("info")["pid"]
        c.close()
        t0 = time.monotonic()
        p = self.sbx("exec", "--", "sh", "-c", "kill -9 $(pidof sbx-agent); sleep 5",
                     timeout=60)
        self.assertNotEqual(p.returncode, 0)  # the agent died under the connection
        note("connection ended %.2fs after the kill: %s" % (
            time.monotonic() - t0, p.stderr.decode(errors="replace").strip()))
        deadline = time.monotonic() + 30
        while True:
            p = self.sbx("ping", timeout=30)
            if p.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(p.returncode, 0, p.stderr)
        c = self.conn()
        info = c.call("info")
        c.close()
        self.assertNotEqual(info["pid"], pid1)
        self.assertIn(b"killed by signal 9", self.vm.console_text())
        self.assertEqual(self.sh("echo again"), "again\n")


class TestPower(VMCase):
    """`sbx.lifetime` and the shutdown request; clean power-off is QEMU exit status 0."""

    def test_shutdown_request(self):
        c = self.conn()
        self.assertEqual(c.call("shutdown", {"action": "poweroff"}), {})
        c.close()
        self.assert_poweroff(self.vm, 20)


class TestLifetime(VMCase):
    append = ("sbx.lifetime=20s",)

    def test_lifetime_powers_off_on_time(self):
        c = self.conn()
        lt = c.call("lifetime.get")
        c.close()
        self.assertEqual(lt["mode"], "duration")
        self.assertLessEqual(lt["remaining_ms"], 20000)
        rc = self.vm.wait(60)
        elapsed = time.monotonic() - self.vm.t_start
        self.assertEqual(rc, 0)
        # 20 s from sbx-init's start, which is ~2-3 s after QEMU's.
        self.assertGreaterEqual(elapsed, 20.0)
        self.assertLess(elapsed, 20.0 + 15)
        note("lifetime 20s: QEMU exited %.2fs after it started" % elapsed)
        self.assertIn(b"lifetime", self.vm.console_text())


class TestPanic(VMCase):
    """A guest panic is a failure: QEMU exits 1 through pvpanic; an early panic (before the
    pvpanic module loads) is found on the console."""

    @classmethod
    def setUpClass(cls):
        cls.vms = []

    def test_sysrq_crash_exits_1(self):
        vm = self.boot(name="TestPanic.sysrq")
        p = self.sbx("exec", "--", "sh", "-c", "echo c > /proc/sysrq-trigger", vm=vm,
                     timeout=60)
        self.assertNotEqual(p.returncode, 0)
        self.assertEqual(vm.wait(30), 1, "pvpanic should make QEMU exit with status 1")
        self.assertIn("sysrq", vm.panic_line() or "")
        self.assertEqual(vm.status(), sbxvm.EXIT_PANIC)

    def test_bogus_init_panics(self):
        with self.assertRaises(sbxvm.VMError) as cm:
            self.boot(append=["rdinit=/nonexistent", "init=/nonexistent"], name="TestPanic.init")
        self.assertEqual(cm.exception.status, sbxvm.EXIT_PANIC, str(cm.exception))
        self.assertIn("Kernel panic", str(cm.exception))


class TestVsock(VMCase):
    """The agent's real AF_VSOCK listener, end to end through in-guest vsock loopback (CID 1):
    host -> virtio-serial port `relay` -> sbx-vsock-relay -> vsock 1:1024 -> agent."""

    # baseline: the relay is a process the agent starts, and the default (strict) denies those
    # AF_VSOCK sockets (TestSeccomp).
    append = ("sbx.listen=vsock:1024,serial:agent", "sbx.vsock_allow_local=1",
              "sbx.seccomp=baseline")
    ports = ("relay", "relay2")

    def relay_addr(self, name):
        return "unix:" + self.vm.port_path(name)

    def test_hello_info_exec_over_vsock(self):
        self.sh("setsid sbx-vsock-relay relay 1 1024 </dev/null >/dev/console 2>&1 &")
        c = self.conn(addr=self.relay_addr("relay"))
        info = c.call("info")
        self.assertEqual(info["agent"], "sbx-agent")
        payload = b"".join(b"%06d\n" % i for i in range(512 * 1024))  # 3.5 MiB
        t0 = time.monotonic()
        _, ex, outs, _, _, _ = sbxwire.run(c, {"argv": ["seq", "-w", "0", "524287"]})
        dt = time.monotonic() - t0
        self.assertEqual(ex["code"], 0)
        self.assertTrue(b"".join(outs.values()) == payload, "3.5 MiB over vsock differs")
        note("3.5 MiB stdout over vsock loopback + relay: %.2fs" % dt)
        c.close()
        # The relay's port is a virtio-serial port too: the next client may connect only after
        # the relay has seen this one leave, which it shows by closing its vsock connection.
        self.wait_single_conn()
        p = self.sbx("exec", "--", "uname", "-r", addr=self.relay_addr("relay"))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.wait_single_conn()

    def wait_single_conn(self):
        """Wait until the agent has no connection but ours (over serial): no vsock left."""
        c = self.conn()
        deadline = time.monotonic() + 10
        while c.call("info")["conns"] != 1:
            self.assertLess(time.monotonic(), deadline, "vsock connections left open")
            time.sleep(0.05)
        c.close()

    def test_local_peer_refused_without_allow_local(self):
        self.sh("setsid sbx-agent --listen vsock:1025 </dev/null >/dev/console 2>&1 &"
                " setsid sbx-vsock-relay relay2 1 1025 </dev/null >/dev/console 2>&1 &")
        # A connect racing the new agent's listen() can be reset before the agent sees it, so
        # try a few times; every attempt must fail, and the agent must log the refusal.
        for _ in range(5):
            c = sbxwire.Conn(self.relay_addr("relay2"), timeout=3)
            with self.assertRaises((EOFError, sbxwire.RemoteError, OSError)):
                c.hello()
            c.close()
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                if b"refusing a connection from CID 1" in self.vm.console_text():
                    return
                time.sleep(0.1)
        self.fail("the agent never logged refusing CID 1")


def assert_console(case, vm, line):
    """`line` is on the console of `vm` (without printing all of it when it is not)."""
    case.assertTrue(line in vm.console_text(), "no %r on the console" % line)


def seccomp_status(case, path, vm=None, user=None):
    """Seccomp, Seccomp_filters and NoNewPrivs of /proc/PATH/status (PATH: a pid, `self`, or
    shell text such as `$(pidof sbx-agent)`), read in the guest as `user` (default root)."""
    cmd = "grep -E '^(Seccomp|Seccomp_filters|NoNewPrivs):' /proc/%s/status" % path
    p = case.sbx("exec", *(["--user", user] if user else []), "--", "sh", "-c", cmd, vm=vm)
    case.assertEqual(p.returncode, 0, p.stderr)
    return dict(line.split(":\t", 1) for line in p.stdout.decode().splitlines())


def filters(n):
    """The status fields of a process under `n` stacked seccomp filters, without NNP."""
    return {"Seccomp": "2" if n else "0", "Seccomp_filters": str(n), "NoNewPrivs": "0"}


# A process that opens an AF_VSOCK socket the only way the busybox image can: the agent binary,
# listening on vsock (its own workload filter would apply to its children only).
VSOCK_LISTENER = "sbx-agent --listen vsock:1025 & sleep 2; kill $!; wait"


class TestSeccomp(VMCase):
    """Item 15 in a real guest at the default, sbx.seccomp=strict: init loads the baseline filter
    into the agent (never into itself), the agent stacks the workload filter onto everything it
    starts, as root or as a user, and that filter takes AF_VSOCK away (EAFNOSUPPORT), so no
    workload can dial the host's vsock services or listen on the agent's port. The errnos of
    the baseline are probed with python3 in TestSeccompDeno."""

    def test_filters_where_they_belong(self):
        self.assertEqual(seccomp_status(self, "1")["Seccomp"], "0")  # init: mounts, reboot
        self.assertEqual(seccomp_status(self, "$(pidof sbx-agent)"), filters(1))
        self.assertEqual(seccomp_status(self, "self"), filters(2))
        self.assertEqual(seccomp_status(self, "self", user="nobody"), filters(2))
        assert_console(self, self.vm, b"seccomp: strict: the agent runs under the baseline filter")

    def test_no_vsock_for_workloads(self):
        for user in (None, "nobody"):
            p = self.sbx("exec", *(["--user", user] if user else []), "--", "sh", "-c",
                         VSOCK_LISTENER)
            out = (p.stdout + p.stderr).decode(errors="replace")
            self.assertIn("listen on vsock:1025: Address family not supported", out)
            self.assertNotIn("ready", out)


class TestSeccompModes(VMCase):
    """sbx.seccomp=off filters nothing; =log keeps both filters in place, denies nothing and
    logs what it would have denied (audit type 1326 in the kernel log)."""

    @classmethod
    def setUpClass(cls):
        cls.vms = []

    def test_off(self):
        vm = self.boot(append=["sbx.seccomp=off"], name="TestSeccompModes.off")
        self.assertEqual(seccomp_status(self, "$(pidof sbx-agent)", vm=vm), filters(0))
        self.assertEqual(seccomp_status(self, "self", vm=vm, user="nobody"), filters(0))
        p = self.sbx("exec", "--user", "nobody", "--", "sh", "-c", VSOCK_LISTENER, vm=vm)
        self.assertIn(b"sbx-agent 0.1.0 ready", p.stdout + p.stderr)
        assert_console(self, vm, b"seccomp: off: the agent and what it starts run unfiltered")

    def test_log(self):
        vm = self.boot(append=["sbx.seccomp=log"], name="TestSeccompModes.log")
        self.assertEqual(seccomp_status(self, "$(pidof sbx-agent)", vm=vm), filters(1))
        self.assertEqual(seccomp_status(self, "self", vm=vm), filters(2))
        p = self.sbx("exec", "--user", "nobody", "--", "sh", "-c", VSOCK_LISTENER, vm=vm)
        self.assertIn(b"sbx-agent 0.1.0 ready", p.stdout + p.stderr)
        p = self.sbx("exec", "--", "dmesg", vm=vm)
        self.assertRegex(p.stdout.decode(errors="replace"),
                         r"type=1326 .*comm=\"sbx-agent\" .*syscall=41 ",
                         "no audit record of the socket(AF_VSOCK) the filter let through")


class TestSeccompDeno(VMCase):
    """The Deno-compatible image, whose workload user `sandbox` has passwordless sudo: at the
    default (strict), python3 probes the documented errnos through the x86-64 and the x86-32
    ABI (int 0x80) as root and as `sandbox`, and sudo still works below the filters (loaded
    without no_new_privs) and stays filtered; with sbx.seccomp=off nothing is filtered."""

    image = DENO

    def probe(self, user=None, vm=None):
        p = self.sbx("exec", *(["--user", user] if user else []), "--", "python3", "-c",
                     seccomp_probe.PROBE, vm=vm)
        self.assertEqual(p.returncode, 0, p.stderr)
        return seccomp_probe.parse(p.stdout)

    def test_probe_strict(self):
        for user in (None, "sandbox"):
            out = self.probe(user)
            self.assertEqual(seccomp_probe.problems(out, "strict", root=user is None), [], out)

    def test_sudo_below_the_filters(self):
        p = self.sbx("exec", "--user", "sandbox", "--", "sudo", "-n", "sh", "-c",
                     "id -u; grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout.decode().split("\n")[:3], ["0", "NoNewPrivs:\t0",
                                                              "Seccomp:\t2"])

    def test_zz_off_filters_nothing(self):
        vm = self.boot(append=["sbx.seccomp=off"], name="TestSeccompDeno.off")
        for user in (None, "sandbox"):
            out = self.probe(user, vm=vm)
            self.assertEqual(seccomp_probe.problems(out, "off", root=user is None), [], out)


# Tries to take vsock port 1024 as a workload would to impersonate the agent: by running an agent
# of its own there (as user nobody), over and over until told to stop; counts its tries.
SQUAT = """i=0
while [ ! -e /tmp/squat.stop ]; do
    i=$((i + 1))
    sbx-agent --vsock-allow-local --listen vsock:1024 >/dev/null 2>&1
done
echo $i >> /tmp/squat.tries
"""


class TestListenHeld(VMCase):
    """Item 11 in a real guest: sbx-init holds the agent's vsock listener across agent restarts.
    Two loops of user nobody try to bind vsock port 1024 (running an agent of their own there)
    while the agent is SIGKILLed and restarted five times: none ever gets it (without init
    holding the socket, one did within 49 tries), the restarted agent serves vsock, and the host
    reaching port 1024 through vsock loopback always finds init's agent."""

    append = ("sbx.listen=vsock:1024,serial:agent", "sbx.vsock_allow_local=1",
              "sbx.seccomp=baseline")  # baseline: the relay and the squatters need AF_VSOCK
    ports = ("relay",)

    def vsock_info(self):
        c = self.conn(addr="unix:" + self.vm.port_path("relay"))
        info = c.call("info")
        c.close()
        # The relay serves the next host connection once it has seen this one leave.
        deadline = time.monotonic() + 10
        while self.conn().call("info")["conns"] != 1:
            self.assertLess(time.monotonic(), deadline, "vsock connections left open")
            time.sleep(0.05)
        return info

    def test_restarts_leave_no_window(self):
        self.sh("setsid sbx-vsock-relay relay 1 1024 </dev/null >/dev/console 2>&1 &")
        self.assertEqual(self.vsock_info()["pid"], self.conn().call("info")["pid"])
        p = self.sbx("exec", "--", "sh", "-c", "cat > /tmp/squat.sh", input=SQUAT.encode())
        self.assertEqual(p.returncode, 0, p.stderr)
        for _ in range(2):
            p = self.sbx("exec", "--user", "nobody", "--", "sh", "-c",
                         "setsid sh /tmp/squat.sh </dev/null >/dev/null 2>&1 &")
            self.assertEqual(p.returncode, 0, p.stderr)
        for n in range(5):
            pid = self.conn().call("info")["pid"]
            p = self.sbx("exec", "--", "sh", "-c", "kill -9 %d; sleep 5" % pid, timeout=60)
            self.assertNotEqual(p.returncode, 0)  # the agent died under the connection
            deadline = time.monotonic() + 30
            while self.sbx("ping", timeout=30).returncode != 0:
                self.assertLess(time.monotonic(), deadline, "the agent did not come back")
                time.sleep(0.2)
            serial = self.conn().call("info")
            self.assertNotEqual(serial["pid"], pid)
            self.assertEqual(self.vsock_info()["pid"], serial["pid"],
                             "restart %d: someone else answers on vsock port 1024" % (n + 1))
        self.sh("touch /tmp/squat.stop")
        deadline = time.monotonic() + 30
        while len(self.sh("cat /tmp/squat.tries 2>/dev/null || true").split()) < 2:
            self.assertLess(time.monotonic(), deadline, "a squatter is still running (it won)")
            time.sleep(0.2)
        tries = [int(t) for t in self.sh("cat /tmp/squat.tries").split()]
        note("squatters tried %s times over 5 restarts" % tries)
        self.assertTrue(all(t > 1 for t in tries), tries)
        console = self.vm.console_text()
        self.assertNotIn(b"listen on vsock:1024", console)  # every agent served vsock
        self.assertEqual(console.count(b"listen: vsock:1024: held by init for every agent"), 1,
                         "init should open the socket once")


class TestMicrovm(VMCase):
    """-machine microvm: virtio-mmio transport, tsc_early_khz on the command line."""

    machine = "microvm"

    def test_boot_exec_poweroff(self):
        self.assertIn("tsc_early_khz=", self.sh("cat /proc/cmdline"))
        drivers = self.sh("ls /sys/bus/platform/drivers/virtio-mmio/")
        self.assertTrue(any(w.startswith("LNRO0005") for w in drivers.split()), drivers)
        self.assertEqual(self.sbx("exec", "--", "sh", "-c", "exit 5").returncode, 5)
        c = self.conn()
        c.call("shutdown")
        c.close()
        self.assert_poweroff(self.vm)


class TestDeno(VMCase):
    """A Deno-Sandbox-like image: Debian plus deno from its npm package."""

    image = DENO

    def test_deno_eval_as_sandbox(self):
        p = self.sbx("exec", "--user", "sandbox", "--", "deno", "eval",
                     "console.log(Deno.version.deno, [1, 2, 3].map((x) => x * 2).join())")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertRegex(p.stdout.decode(), r"^\d+\.\d+\.\d+ 2,4,6\n$")

    def test_sudo_profile(self):
        """The default profile (--workload-sudo yes), as Deno Sandbox images promise sudo."""
        p = self.sbx("exec", "--user", "sandbox", "--", "sudo", "-n", "id", "-u")
        self.assertEqual((p.returncode, p.stdout), (0, b"0\n"), p.stderr)

    def test_repl_deno_as_sandbox(self):
        c = self.conn()
        sid = c.call("repl.start", {"language": "deno", "user": "sandbox"})["session"]
        r = c.call("repl.eval", {"session": sid, "code": "let x = 6\nconsole.log('hi')\nx * 7"})
        self.assertEqual((r["value"], r["stdout"], r["error"]), ("42", b"hi\n", False), r)
        r = c.call("repl.eval", {"session": sid, "code": "await Promise.resolve(x + 1)"})
        self.assertEqual(r["value"], "7", r)
        r = c.call("repl.eval", {"session": sid, "code": "throw new RangeError('nope')"})
        self.assertTrue(r["error"], r)
        self.assertIn("RangeError: nope", r["error_text"])
        r = c.call("repl.eval", {"session": sid, "code": "await new Promise(() => {})",
                                 "timeout_ms": 500})
        self.assertTrue(r["timed_out"], r)
        self.assertEqual(c.call("repl.eval", {"session": sid, "code": "x"})["value"], "6")
        c.call("repl.close", {"session": sid})
        c.close()


class TestSbxVm(unittest.TestCase):
    """The sbx-vm tool itself: run a command and pass its status through, --keep/--stop,
    panics reported as exit status 4."""

    def run_vm(self, *args, timeout=180):
        return subprocess.run([SBX_VM] + list(args), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout, text=True)

    def setUp(self):
        if not os.path.exists(BUSYBOX):
            self.skipTest("%s missing" % BUSYBOX)

    def test_command_status_passes_through(self):
        p = self.run_vm(BUSYBOX, "--", "sbx", "exec", "--", "sh", "-c", "echo hi; exit 7")
        self.assertEqual(p.returncode, 7, p.stderr)
        self.assertIn("SBX_ADDR=unix:", p.stdout)
        self.assertIn("hi\n", p.stdout)
        self.assertIn("powered off", p.stderr)

    def test_keep_and_stop(self):
        p = self.run_vm("--keep", BUSYBOX, timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr)
        kv = dict(ln.split("=", 1) for ln in p.stdout.splitlines() if "=" in ln)
        pid = int(kv["SBX_VM_PID"])
        try:
            env = dict(os.environ, SBX_ADDR=kv["SBX_ADDR"])
            out = subprocess.run([SBX, "exec", "--", "echo", "kept"], env=env, timeout=60,
                                 stdout=subprocess.PIPE).stdout
            self.assertEqual(out, b"kept\n")
            q = self.run_vm("--stop", kv["SBX_VM_DIR"], timeout=60)
            self.assertEqual(q.returncode, 0, q.stderr)
            self.assertFalse(os.path.exists("/proc/%d" % pid) and
                             open("/proc/%d/stat" % pid).read().split(")")[-1].split()[0] != "Z")
        finally:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
            shutil.rmtree(kv["SBX_VM_DIR"], ignore_errors=True)

    def test_guest_panic_is_exit_4(self):
        p = self.run_vm(BUSYBOX, "--", "sbx", "exec", "--", "sh", "-c",
                        "echo c > /proc/sysrq-trigger")
        self.assertEqual(p.returncode, sbxvm.EXIT_PANIC, p.stderr)
        self.assertIn("Kernel panic", p.stderr)
        m = re.search(r"console log: (\S+)", p.stderr)
        self.assertTrue(m and os.path.exists(m.group(1)), "console log kept on failure")
        shutil.rmtree(os.path.dirname(m.group(1)), ignore_errors=True)


# The guest's web server for TestDebian.test_forward_http_server (python3 -c).
GUEST_HTTP_SERVER = """
import http.server, random
BLOCK = random.Random(15).randbytes(1 << 20)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/big":
            self.send_response(200)
            self.send_header("Content-Length", str(256 * len(BLOCK)))
            self.end_headers()
            for _ in range(256):
                self.wfile.write(BLOCK)
            return
        body = b"page %s\\n" % self.path[2:-4].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer.request_queue_size = 128
http.server.ThreadingHTTPServer(("127.0.0.1", 8000), H).serve_forever()
"""


class TestDebian(VMCase):
    """The Debian image boots through sbx-init's root switch; bash as the sandbox user."""

    image = DEBIAN

    def test_root_is_the_ext4_disk(self):
        mounts = self.sh("cat /proc/self/mounts")
        self.assertRegex(mounts, r"(?m)^/dev/vda / ext4 rw")
        self.assertTrue(self.sh("cat /etc/debian_version").startswith("12"))

    def test_bash_as_sandbox_user(self):
        p = self.sbx("exec", "--user", "sandbox", "--", "bash", "-c", "id -un; echo $HOME; pwd")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout.decode().split(), ["sandbox", "/home/sandbox", "/"])

    def test_locked_profile_no_sudo(self):
        """--workload-sudo no: the sandbox user is in no admin group and sudo refuses it."""
        groups = self.sh("id -Gn sandbox").split()
        self.assertNotIn("sudo", groups)
        self.assertNotIn("adm", groups)
        p = self.sbx("exec", "--user", "sandbox", "--", "sudo", "-n", "id", "-u")
        self.assertNotEqual(p.returncode, 0, p.stdout)
        self.assertEqual(p.stdout, b"")
        self.assertEqual(self.sh("ls -A /etc/sudoers.d | grep -c sandbox || true").strip(), "0")

    def test_python3(self):
        self.assertEqual(self.sh("python3 -c 'print(6 * 7)'"), "42\n")

    def test_repl_python3(self):
        c = self.conn()
        sid = c.call("repl.start", {"language": "python3", "user": "sandbox"})["session"]
        r = c.call("repl.eval", {"session": sid, "code": "import os, sys\nx = 6\nx * 7"})
        self.assertEqual(r["value"], "42", r)
        r = c.call("repl.eval", {"session": sid, "code": "os.getuid() != 0, sys.stdin.isatty()"})
        self.assertEqual(r["value"], "(True, True)", r)
        r = c.call("repl.eval", {"session": sid, "code": "while True: pass", "timeout_ms": 500})
        self.assertTrue(r["timed_out"], r)
        r = c.call("repl.eval", {"session": sid, "code": "1/0"})
        self.assertIn("ZeroDivisionError", r["error_text"])
        self.assertEqual(c.call("repl.eval", {"session": sid, "code": "x"})["value"], "6")
        c.call("repl.close", {"session": sid})
        c.close()

    # -- reconnect and ports (issue 15): the guest has no network device, only lo --------------

    def test_no_network_device(self):
        self.assertEqual(self.sh("ls /sys/class/net").split(), ["lo"])

    def test_detach_then_attach_replays_and_exits(self):
        pid_id = self.detach("sh", "-c", "i=1; while [ $i -le 300 ]; do echo line $i; "
                             "i=$((i+1)); done; sleep 1; echo done >&2; exit 3")
        p = self.sbx("attach", "-n", str(pid_id), timeout=120)
        self.assertEqual(p.returncode, 3, p.stderr)
        self.assertEqual(p.stdout.decode().splitlines(),
                         ["line %d" % i for i in range(1, 301)])
        self.assertIn(b"done", p.stderr)
        # Attached again after the exit: the same bytes, the same status.
        p = self.sbx("attach", "-n", str(pid_id), timeout=120)
        self.assertEqual(p.returncode, 3, p.stderr)
        self.assertEqual(len(p.stdout.decode().splitlines()), 300)

    def test_forward_http_server(self):
        """sbx forward to python3's http.server in the guest: 100 concurrent requests, a
        256 MiB download byte-exact, and a server closing mid-transfer gives a clean close."""
        import concurrent.futures
        import urllib.request
        # A Python http.server (ThreadingHTTPServer with a listen backlog of 128 instead of 5:
        # 100 requests at once overflow 5, and the kernel then drops SYNs, retried after 1 s,
        # 3 s, ...). /pN.txt is a small page; /big is 256 MiB made in the guest from a seeded
        # 1 MiB block (the guest's disk has no room for such a file), checked here by sha256.
        server = self.detach("python3", "-c", GUEST_HTTP_SERVER)
        block = random.Random(15).randbytes(1 << 20)
        h = hashlib.sha256()
        for _ in range(256):
            h.update(block)
        want = h.hexdigest()
        # A server that reads a line, sends 1 MiB and closes while the client still has its
        # end open: the client must see every byte, then a plain end of file.
        closer = self.detach("python3", "-c",
                             "import socket\n"
                             "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, "
                             "socket.SO_REUSEADDR, 1)\n"
                             "s.bind(('127.0.0.1', 8001)); s.listen()\n"
                             "while True:\n"
                             "    c, _ = s.accept()\n"
                             "    try:\n"
                             "        c.makefile('rb').readline(); c.sendall(b'x' * 1048576)\n"
                             "    except OSError:\n"
                             "        pass\n"
                             "    c.close()\n")
        self.wait_listening(8000)
        self.wait_listening(8001)
        local, local2 = free_port(), free_port()
        env = dict(os.environ, SBX_ADDR=self.vm.addr)
        fwd = subprocess.Popen([SBX, "forward", "-v", "%d:8000" % local, "%d:8001" % local2],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", local2), timeout=5).close()
                    break
                except OSError:
                    self.assertIsNone(fwd.poll(), fwd.stderr.read() if fwd.poll() else "")
                    self.assertLess(time.monotonic(), deadline, "sbx forward never listened")
                    time.sleep(0.2)

            def get(i):
                url = "http://127.0.0.1:%d/p%d.txt" % (local, i)
                with urllib.request.urlopen(url, timeout=120) as r:
                    return r.status, r.read()

            with concurrent.futures.ThreadPoolExecutor(max_workers=100) as ex:
                got = list(ex.map(get, range(1, 101)))
            self.assertEqual(got, [(200, b"page %d\n" % i) for i in range(1, 101)])

            h = hashlib.sha256()
            size = 0
            with urllib.request.urlopen("http://127.0.0.1:%d/big" % local, timeout=600) as r:
                while True:
                    b = r.read(1 << 20)
                    if not b:
                        break
                    h.update(b)
                    size += len(b)
            self.assertEqual(size, 268435456)
            self.assertEqual(h.hexdigest(), want)

            # The guest end closes: the local client reads every byte, then a clean EOF.
            n = 0
            try:
                with socket.create_connection(("127.0.0.1", local2), timeout=60) as c:
                    c.sendall(b"go\n")
                    while True:
                        b = c.recv(1 << 16)
                        if not b:
                            break
                        n += len(b)
            except OSError as e:
                fwd.terminate()
                self.fail("%s after %d bytes; sbx forward -v said:\n%s" % (
                    e, n, fwd.communicate(timeout=30)[1].decode(errors="replace")[-3000:]))
            self.assertEqual(n, 1048576)
        finally:
            if fwd.poll() is None:
                fwd.terminate()
                fwd.communicate(timeout=30)
            self.sbx("kill", str(server))
            self.sbx("kill", str(closer))

    def test_zz_poweroff(self):
        c = self.conn()
        c.call("shutdown")
        c.close()
        self.assert_poweroff(self.vm)


# --- runner -------------------------------------------------------------------------------------

def main(argv):
    if len(argv) == 2 and argv[0] == "--build-image":
        return build_image(argv[1])
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    suite = unittest.defaultTestLoader.loadTestsFromName(argv[0], sys.modules[__name__])
    t0 = time.monotonic()
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    note("%s: %.1fs" % (argv[0], time.monotonic() - t0))
    if not result.wasSuccessful():
        note("console logs: %s/%s*.console.log" % (LOGS, argv[0]))
        return 1
    if result.skipped and result.testsRun <= len(result.skipped):
        return 77
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
