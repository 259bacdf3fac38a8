"""Helpers for the real-SDK tests of sbx-gateway (test_sdk.py).

    deno()                    the pinned deno binary (`sbx-rootfs deno-path`, cached in ~/.cache/sbx)
    cache_deps()              `deno install --frozen` of tests/gateway/sdk into DENO_DIR (build dir)
    typecheck()               `deno check` of every program, offline
    WorkloadUser()            a real user (useradd -m -s /bin/bash) the addr backend's processes run as
    Agent                     a root sbx-agent on a unix socket (tests/integration/sbxwire.py)
    Gateway(...)              build/bin/sbx-gateway on 127.0.0.1:0; .env() has the SDK's variables
    run_program(gw, "x.ts")   `deno run` one SDK program against a gateway: (rc, stdout, stderr)
    RawWS                     a stdlib WebSocket + JSON-RPC client for hostile-input tests
    build_gateway_image()     sbx-rootfs build --base debian --with-deno --workload-user app

Nothing is written into the source tree: DENO_DIR is $SBX_BUILD/tests/gateway/deno-dir, the
programs run with their cwd in a temporary directory, deno.json says nodeModulesDir "none".
Environment: SBX_BUILD (default SRC/build), SBX_GATEWAY_OUT (default SBX_BUILD/tests/gateway:
DENO_DIR and the gateway image), SBX_DENO_VERSION (default DENO_VERSION).
"""
import atexit
import base64
import hashlib
import json
import os
import pwd
import re
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(SRC, "tests", "integration"))
import sbxwire  # noqa: E402

BUILD = os.environ.get("SBX_BUILD", os.path.join(SRC, "build"))
SDK_DIR = os.path.join(HERE, "sdk")
SDK_CONFIG = os.path.join(SDK_DIR, "deno.json")
OUT = os.environ.get("SBX_GATEWAY_OUT", os.path.join(BUILD, "tests", "gateway"))
DENO_DIR = os.path.join(OUT, "deno-dir")
GATEWAY = os.path.join(BUILD, "bin", "sbx-gateway")
AGENT = os.path.join(BUILD, "bin", "sbx-agent")
# The source copy: build/bin/sbx-rootfs is a copy made at build time and may predate deno-path.
SBX_ROOTFS = os.path.join(SRC, "rootfs-builder", "sbx-rootfs")
GATEWAY_IMAGE = os.path.join(OUT, "gateway.ext4")
# The deno the tests run on the host (and the one the test image carries). Pinned: the SDK
# programs, the lockfile format and the gateway image are checked against this version.
DENO_VERSION = os.environ.get("SBX_DENO_VERSION", "2.9.6")
SDK_VERSION = "0.13.2"
# What SDK programs may do: talk to the gateway on loopback, read their env, read and write
# temporary files (fs.upload / fs.download).
DENO_RUN_FLAGS = ["--cached-only", "--frozen", "--no-prompt", "--config", SDK_CONFIG,
                  "--allow-net=127.0.0.1,localhost", "--allow-env", "--allow-read",
                  "--allow-write"]


def note(msg):
    print("    # " + msg, file=sys.stderr, flush=True)


# --- deno and the SDK ---------------------------------------------------------------------------

_deno = None


def deno():
    """Path of the pinned deno (fetched into the sbx cache by sbx-rootfs if missing)."""
    global _deno
    if _deno is None:
        p = subprocess.run([sys.executable, SBX_ROOTFS, "deno-path", "--deno-version", DENO_VERSION],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
        path = p.stdout.strip()
        if p.returncode != 0 or not os.access(path, os.X_OK):
            raise RuntimeError("sbx-rootfs deno-path failed (exit %d): %s%s"
                               % (p.returncode, p.stdout, p.stderr))
        _deno = path
    return _deno


def deno_env(**extra):
    e = dict(os.environ)
    e.update(DENO_DIR=DENO_DIR, NO_COLOR="1", DENO_NO_UPDATE_CHECK="1", DENO_NO_PROMPT="1")
    e.update(extra)
    return e


def programs():
    return sorted(f for f in os.listdir(SDK_DIR) if f.endswith(".ts"))


_cached = False


def cache_deps():
    """Install the SDK and its dependencies exactly as deno.lock pins them (--frozen: a lockfile
    that would change is an error) into DENO_DIR. Needs the npm registry on the first run only.
    Checks that nothing was written into the source tree."""
    global _cached
    if _cached:
        return
    os.makedirs(DENO_DIR, exist_ok=True)
    with open(os.path.join(SDK_DIR, "deno.lock"), "rb") as f:
        lock = f.read()
    argv = [deno(), "install", "--frozen", "--config", SDK_CONFIG, "--entrypoint"] + programs()
    p = subprocess.run(argv, cwd=SDK_DIR, env=deno_env(), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError("deno install --frozen failed (exit %d):\n%s" % (p.returncode, p.stdout))
    with open(os.path.join(SDK_DIR, "deno.lock"), "rb") as f:
        if f.read() != lock:
            raise RuntimeError("deno install changed tests/gateway/sdk/deno.lock")
    if os.path.exists(os.path.join(SDK_DIR, "node_modules")):
        raise RuntimeError("deno install wrote node_modules into the source tree")
    _cached = True


def typecheck(files=None):
    """`deno check` the programs offline; (rc, output)."""
    cache_deps()
    p = subprocess.run([deno(), "check", "--cached-only", "--frozen", "--config", SDK_CONFIG]
                       + list(files or programs()), cwd=SDK_DIR, env=deno_env(),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    return p.returncode, p.stdout


def run_program(gw, name, timeout=120, env=None, args=()):
    """Run tests/gateway/sdk/@name with deno against gateway @gw (or, gw None, with only @env).
    (exit status, stdout, stderr); a timeout kills deno and returns rc -9 with what it printed."""
    cache_deps()
    e = deno_env()
    for k in ("DENO_DEPLOY_TOKEN", "DENO_SANDBOX_ENDPOINT", "DENO_DEPLOY_ENDPOINT",
              "DENO_DEPLOY_ORG"):
        e.pop(k, None)
    if gw is not None:
        e.update(gw.env())
    e.update(env or {})
    cwd = tempfile.mkdtemp(prefix="sbxgw-run-")
    try:
        p = subprocess.Popen([deno(), "run"] + DENO_RUN_FLAGS + [os.path.join(SDK_DIR, name)]
                             + list(args), cwd=cwd, env=e, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = p.communicate(timeout=timeout)
            return p.returncode, out, err
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
            return -9, out, err + "\n[harness: killed after %ss]" % timeout
    finally:
        shutil.rmtree(cwd, ignore_errors=True)


# --- the workload user and the agent (addr backend) ---------------------------------------------

def _pids_of_uid(uid):
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.stat("/proc/" + d).st_uid == uid:
                    pids.append(int(d))
            except OSError:
                pass
    return pids


class WorkloadUser:
    """A real login user with a home (useradd -m -s /bin/bash), like the gateway image's `app`.
    close() SIGKILLs its processes (by pid) and removes the user and its home."""

    def __init__(self, prefix="sbxgwapp"):
        if os.geteuid() != 0:
            raise unittest.SkipTest("the addr backend tests create a user: run as root")
        if not shutil.which("useradd"):
            raise unittest.SkipTest("useradd is not installed")
        self.name = prefix + secrets.token_hex(3)
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", "--user-group", self.name],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        pw = pwd.getpwnam(self.name)
        self.uid, self.gid, self.home = pw.pw_uid, pw.pw_gid, pw.pw_dir

    def close(self):
        for _ in range(3):
            pids = _pids_of_uid(self.uid)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)  # reaped by their parent (the agent): nothing to wait on here
        subprocess.run(["userdel", "-r", "-f", self.name], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)


_deno_bin = None


def deno_bin_dir():
    """A directory every user can read that holds a copy of the pinned deno: the agent's PATH
    gets it for spawnDeno and the REPL, whose `deno` runs as the workload user (who cannot reach
    the sbx cache under root's home). Removed at exit."""
    global _deno_bin
    if _deno_bin is None:
        d = tempfile.mkdtemp(prefix="sbxgw-deno-bin-")
        os.chmod(d, 0o755)
        shutil.copy(deno(), os.path.join(d, "deno"))
        os.chmod(os.path.join(d, "deno"), 0o755)
        atexit.register(shutil.rmtree, d, True)
        _deno_bin = d
    return _deno_bin


def start_agent(with_deno=False):
    """A root sbx-agent on a unix socket in a temporary directory, as the integration tests run
    it (sbxwire.Agent: it returns once a connect succeeds). .addr is "unix:PATH"; .stop().
    @with_deno: the pinned deno is on the agent's PATH (deno_bin_dir)."""
    if not os.access(AGENT, os.X_OK):
        raise unittest.SkipTest("%s is not built" % AGENT)
    env = None
    if with_deno:
        env = dict(os.environ)
        env["PATH"] = deno_bin_dir() + ":" + env.get("PATH", "/usr/bin:/bin")
    return sbxwire.Agent(AGENT, env=env)


# --- the gateway --------------------------------------------------------------------------------

class Gateway:
    """build/bin/sbx-gateway on 127.0.0.1:0, its token and endpoints parsed from its stdout:
        token: ddo_...
        export DENO_DEPLOY_TOKEN=ddo_...
        export DENO_SANDBOX_ENDPOINT=http://HOST:PORT DENO_DEPLOY_ENDPOINT=http://HOST:PORT
    Either backend="addr:unix:/path" with user/cwd, or image=IMAGE (the vm backend)."""

    def __init__(self, backend=None, image=None, user=None, cwd=None, extra=(), ready_timeout=60,
                 data=None, env=None):
        if not os.access(GATEWAY, os.X_OK):
            raise unittest.SkipTest("%s is not built" % GATEWAY)
        # data: the data dir of an earlier gateway, for a restart (kept when given); env: the
        # gateway's environment (default: the test's own).
        self.data = data or tempfile.mkdtemp(prefix="sbxgw-data-")
        self.logpath = os.path.join(self.data, "..", os.path.basename(self.data) + ".log")
        self.logpath = os.path.abspath(self.logpath)
        argv = [GATEWAY, "--listen", "127.0.0.1:0", "--data-dir", self.data]
        if backend:
            argv += ["--backend", backend]
        if image:
            argv += ["--image", image]
        if user:
            argv += ["--user", user]
        if cwd:
            argv += ["--cwd", cwd]
        argv += list(extra)
        self.argv = argv
        self.log = open(self.logpath, "a+")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log, env=env)
        self.token = self.sandbox_endpoint = self.deploy_endpoint = None
        self.lines = []
        try:
            self._read_banner(ready_timeout)
        except BaseException:
            self.stop()
            raise
        # Keep draining stdout so the gateway can never block on a full pipe.
        self._drain = threading.Thread(target=self._drain_stdout, daemon=True)
        self._drain.start()

    def _read_banner(self, timeout):
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + timeout
        while self.sandbox_endpoint is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("sbx-gateway printed no endpoints in %ss; stdout %r; log:\n%s"
                                   % (timeout, buf, self.logtext()))
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                continue
            b = os.read(fd, 4096)
            if not b:
                raise RuntimeError("sbx-gateway exited (status %s) before printing endpoints; "
                                   "stdout %r; log:\n%s" % (self.proc.wait(), buf, self.logtext()))
            buf += b
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                self._banner_line(line.decode("utf-8", "replace").strip())
        if self.token is None:
            raise RuntimeError("sbx-gateway printed endpoints but no token: %r" % self.lines)

    def _banner_line(self, line):
        self.lines.append(line)
        m = re.match(r"^token:\s*(ddo_[0-9a-zA-Z]+)$", line)
        if m:
            self.token = m.group(1)
            return
        if line.startswith("export "):
            for k, v in re.findall(r"([A-Z_]+)=(\S+)", line):
                if k == "DENO_DEPLOY_TOKEN":
                    if self.token is not None and v != self.token:
                        raise RuntimeError("token line and DENO_DEPLOY_TOKEN differ: %r"
                                           % self.lines)
                    self.token = v
                elif k == "DENO_DEPLOY_ENDPOINT":
                    self.deploy_endpoint = v
                elif k == "DENO_SANDBOX_ENDPOINT":
                    self.sandbox_endpoint = v
            if self.sandbox_endpoint and not self.deploy_endpoint:
                raise RuntimeError("DENO_SANDBOX_ENDPOINT without DENO_DEPLOY_ENDPOINT: %r" % line)
            if self.sandbox_endpoint:
                m = re.match(r"^http://([0-9.]+):(\d+)$", self.sandbox_endpoint)
                if not m:
                    raise RuntimeError("unexpected endpoint %r" % self.sandbox_endpoint)
                self.host, self.port = m.group(1), int(m.group(2))

    def _drain_stdout(self):
        try:
            for line in self.proc.stdout:
                self.lines.append(line.decode("utf-8", "replace").rstrip("\n"))
        except (OSError, ValueError):
            pass

    def env(self):
        return {"DENO_DEPLOY_TOKEN": self.token, "DENO_SANDBOX_ENDPOINT": self.sandbox_endpoint,
                "DENO_DEPLOY_ENDPOINT": self.deploy_endpoint}

    def alive(self):
        return self.proc.poll() is None

    def logtext(self):
        try:
            self.log.flush()
            with open(self.logpath, errors="replace") as f:
                return f.read()
        except (OSError, ValueError):
            return ""

    def rest(self, method, path, body=None):
        """One REST call with the token; the decoded JSON answer (an HTTPError on non-2xx)."""
        import urllib.request
        req = urllib.request.Request("http://%s:%d%s" % (self.host, self.port, path),
                                     method=method, headers={"authorization": "Bearer "
                                                             + self.token})
        if body is not None:
            req.data = json.dumps(body).encode()
            req.add_header("content-type", "application/json")
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"null")

    def qemu_pids(self):
        """Live QEMU processes of this gateway's sandboxes. sbx-vm starts them detached (they
        outlive the gateway by design), so they are found by their run dir under the data dir."""
        mark = os.path.join(self.data, "vms").encode() + b"/"
        out = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    argv = f.read().split(b"\0")
                with open("/proc/%s/stat" % d) as f:
                    st = f.read()
            except OSError:
                continue
            if st[st.rindex(")") + 2] == "Z":
                continue
            if b"qemu" in os.path.basename(argv[0]) and any(mark in a for a in argv):
                out.append(int(d))
        return out

    def stop(self, keep_data=False):
        """SIGTERM, then SIGKILL after 20 s. Returns the exit status. The data dir and the log
        are removed unless @keep_data (a restart on the same data dir follows)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                note("sbx-gateway ignored SIGTERM for 20 s; killing it")
                self.proc.kill()
                self.proc.wait()
        try:
            self.proc.stdout.close()
        except OSError:
            pass
        self.log.close()
        if not keep_data:
            self.discard()
        return self.proc.returncode

    def discard(self):
        """After stop(keep_data=True): remove the data dir and the log. A VM still running from
        it (a duration sandbox outlives its gateway by design; a failed test may leave one)
        would run on with its data dir gone, so it is killed first."""
        for pid in self.qemu_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.data, ignore_errors=True)
        try:
            os.unlink(self.logpath)
        except OSError:
            pass


# --- a raw WebSocket JSON-RPC client (stdlib only) ----------------------------------------------

class WSClosed(Exception):
    def __init__(self, code, reason):
        super().__init__("WebSocket closed: %s %r" % (code, reason))
        self.code, self.reason = code, reason


class HandshakeError(Exception):
    def __init__(self, status, headers, body):
        super().__init__("HTTP %s: %r" % (status, body[:300]))
        self.status, self.headers, self.body = status, headers, body


class RawWS:
    """One client WebSocket (RFC 6455, masked frames, no extensions) to the gateway.
    .headers: the 101's headers (lower-case names). recv() answers pings itself."""

    GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, host, port, path, headers=None, timeout=30):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        key = base64.b64encode(os.urandom(16))
        req = ["GET %s HTTP/1.1" % path, "Host: %s:%d" % (host, port), "Upgrade: websocket",
               "Connection: Upgrade", "Sec-WebSocket-Key: " + key.decode(),
               "Sec-WebSocket-Version: 13"]
        for k, v in (headers or {}).items():
            req.append("%s: %s" % (k, v))
        self.sock.sendall(("\r\n".join(req) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        if self.status != 101:
            n = int(self.headers.get("content-length", "0") or 0)
            while len(self.buf) < n:
                try:
                    self._fill()
                except (WSClosed, OSError):
                    break
            body = self.buf[:n] if n else self.buf
            self.sock.close()
            raise HandshakeError(self.status, self.headers, body)
        want = base64.b64encode(hashlib.sha1(key + self.GUID).digest()).decode()
        if self.headers.get("sec-websocket-accept") != want:
            raise RuntimeError("bad Sec-WebSocket-Accept %r" % self.headers)
        self.next_id = 0

    def _fill(self):
        b = self.sock.recv(65536)
        if not b:
            raise WSClosed(None, "EOF")
        self.buf += b

    def _need(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send_frame(self, opcode, payload, fin=True):
        if isinstance(payload, str):
            payload = payload.encode()
        n = len(payload)
        hdr = bytes([(0x80 if fin else 0) | opcode])
        if n < 126:
            hdr += bytes([0x80 | n])
        elif n < 65536:
            hdr += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            hdr += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload)) if n < 4096 else \
            (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")
             ).to_bytes(n, "big")
        self.sock.sendall(hdr + mask + masked)

    def send_text(self, text):
        self.send_frame(0x1, text)

    def send_json(self, obj):
        self.send_text(json.dumps(obj))

    def recv(self, timeout=30):
        """The next data message: (opcode, bytes). Pings are answered; a close raises WSClosed."""
        self.sock.settimeout(timeout)
        msg, op = b"", None
        while True:
            b0, b1 = self._need(2)
            fin, opcode, n = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            if b1 & 0x80:
                raise RuntimeError("the server sent a masked frame")
            if n == 126:
                n = struct.unpack(">H", self._need(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._need(8))[0]
            payload = self._need(n)
            if opcode == 0x8:
                code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None
                try:
                    self.send_frame(0x8, payload[:2])
                except OSError:
                    pass
                raise WSClosed(code, payload[2:].decode("utf-8", "replace"))
            if opcode == 0x9:
                self.send_frame(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            if opcode in (0x1, 0x2):
                op = opcode
            msg += payload
            if fin:
                return op, msg

    def recv_json(self, timeout=30):
        while True:
            op, data = self.recv(timeout)
            text = data.decode("utf-8")
            if text == "pong":
                continue
            return json.loads(text)

    def answer(self, rid, timeout=30):
        """The response whose id is @rid (notifications before it are collected in .notes)."""
        self.notes = getattr(self, "notes", [])
        deadline = time.monotonic() + timeout
        while True:
            m = self.recv_json(max(0.1, deadline - time.monotonic()))
            if isinstance(m, dict) and "id" in m and m.get("id") == rid:
                return m
            self.notes.append(m)

    def call(self, method, params=None, rid=None, timeout=30):
        if rid is None:
            rid = self.next_id
            self.next_id += 1
        req = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            req["params"] = params
        self.send_json(req)
        return self.answer(rid, timeout)

    def close(self, code=1000):
        try:
            self.send_frame(0x8, struct.pack(">H", code))
        except OSError:
            pass
        self.sock.close()


def open_create_ws(gw, config=None, token=None):
    """A raw WebSocket to GET /api/v3/sandboxes/create, as the JS SDK opens it."""
    h = {"authorization": "Bearer " + (token or gw.token)}
    if config is not None:
        h["x-deno-sandbox-config"] = base64.b64encode(json.dumps(config).encode()).decode()
    return RawWS(gw.host, gw.port, "/api/v3/sandboxes/create", h)


# --- the gateway image --------------------------------------------------------------------------

def build_gateway_image(out=GATEWAY_IMAGE):
    """sbx-rootfs build --base debian --with-deno --workload-user app -o OUT (the image
    scripts/gateway.sh builds). Returns the exit status (77: cannot be built here)."""
    if os.geteuid() != 0:
        print("SKIP: the gateway image cannot be built here: debootstrap needs root")
        return 77
    if not shutil.which("debootstrap"):
        print("SKIP: the gateway image cannot be built here: debootstrap is not installed")
        return 77
    os.makedirs(os.path.dirname(out), exist_ok=True)
    t0 = time.monotonic()
    rc = subprocess.call([sys.executable, SBX_ROOTFS, "build", "--base", "debian", "--with-deno",
                          "--deno-version", DENO_VERSION, "--workload-user", "app",
                          "--init", os.path.join(BUILD, "bin", "sbx-init"),
                          "--agent", os.path.join(BUILD, "bin", "sbx-agent"), "-o", out])
    print("gateway image: exit %d in %.1fs" % (rc, time.monotonic() - t0))
    return rc


class RawServer:
    """A TCP listener on 127.0.0.1 (or, with @path, a unix socket there) running @fn(conn) per
    connection in a thread of its own."""

    def __init__(self, fn, path=None):
        if path is None:
            self.sock = socket.socket()
            self.sock.bind(("127.0.0.1", 0))
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(path)
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1] if path is None else None
        self.fn = fn
        self.conns = []
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._one, args=(c,), daemon=True).start()

    def _one(self, c):
        try:
            self.fn(c)
        except OSError:
            pass

    def stop(self):
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass
