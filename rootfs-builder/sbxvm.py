"""sbxvm: boot an sbx guest image under QEMU and talk to its agent (library behind sbx-vm).

The VM gets: q35 (or microvm, or pc) under TCG, the image as initramfs or as a virtio-blk disk
with its stage-1 initramfs, a pool of virtio-serial ports for the agent (`agent`, `agent.1`..,
each on a host unix socket; the agent's `serial:NAME` listeners), the serial console on a unix
socket with everything it prints also logged to console.log, a QMP socket, pvpanic (a guest
panic exits QEMU with status 1) and -no-reboot. The measured facts behind these choices are
in /work/shared/VM-HARNESS.md and docs/VM.md.

Clients use one unix socket served by PortProxy, because of two rules of the virtio-serial
transport (PROTOCOL.md §2.4): the host must never half-close its socket, and a port carries
one logical connection at a time with no boundaries of its own, so a port may be used again
only after the agent has seen the previous client leave.

Python 3 standard library only.
"""

import json
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.realpath(__file__))

# Exit statuses of sbx-vm (a command run with `--` passes its own through).
EXIT_USAGE = 2
EXIT_BOOT = 3      # QEMU failed, or the agent did not answer hello before the boot timeout
EXIT_PANIC = 4     # the guest kernel panicked (pvpanic, or "Kernel panic" on the console)
EXIT_STUCK = 5     # the VM did not power off within the shutdown timeout and was killed

OWNED_MARK = ".sbx-vm-made-this"

PANIC_RE = re.compile(rb"Kernel panic - not syncing[^\r\n]*")


class VMError(Exception):
    """A failure with an sbx-vm exit status attached."""

    def __init__(self, msg, status=EXIT_BOOT):
        super().__init__(msg)
        self.status = status


# --- the smallest msgpack we need: hello, shutdown --------------------------------------------

def mp_pack(v):
    if v is None:
        return b"\xc0"
    if v is True or v is False:
        return b"\xc3" if v else b"\xc2"
    if isinstance(v, int):
        if 0 <= v <= 0x7F:
            return bytes([v])
        if 0 <= v <= 0xFFFFFFFF:
            return b"\xce" + struct.pack(">I", v)
        raise ValueError(v)
    if isinstance(v, str):
        b = v.encode()
        if len(b) < 32:
            return bytes([0xA0 | len(b)]) + b
        return b"\xd9" + bytes([len(b)]) + b
    if isinstance(v, (list, tuple)):
        return bytes([0x90 | len(v)]) + b"".join(mp_pack(x) for x in v)
    if isinstance(v, dict):
        return bytes([0x80 | len(v)]) + b"".join(mp_pack(k) + mp_pack(x) for k, x in v.items())
    raise TypeError(type(v))


def mp_unpack(b, i=0):
    """Decode one value at b[i:]; returns (value, next index). Enough for agent replies."""
    t = b[i]
    i += 1
    if t <= 0x7F:
        return t, i
    if t >= 0xE0:
        return t - 256, i
    if 0x80 <= t <= 0x8F or t in (0xDE, 0xDF):
        n, i = (t & 15, i) if t <= 0x8F else _len(b, i, 2 if t == 0xDE else 4)
        out = {}
        for _ in range(n):
            k, i = mp_unpack(b, i)
            out[k], i = mp_unpack(b, i)
        return out, i
    if 0x90 <= t <= 0x9F or t in (0xDC, 0xDD):
        n, i = (t & 15, i) if t <= 0x9F else _len(b, i, 2 if t == 0xDC else 4)
        out = []
        for _ in range(n):
            v, i = mp_unpack(b, i)
            out.append(v)
        return out, i
    if 0xA0 <= t <= 0xBF or t in (0xD9, 0xDA, 0xDB):
        n, i = (t & 31, i) if t <= 0xBF else _len(b, i, {0xD9: 1, 0xDA: 2, 0xDB: 4}[t])
        return b[i:i + n].decode("utf-8", "replace"), i + n
    if t in (0xC4, 0xC5, 0xC6):
        n, i = _len(b, i, {0xC4: 1, 0xC5: 2, 0xC6: 4}[t])
        return bytes(b[i:i + n]), i + n
    if t == 0xC0:
        return None, i
    if t in (0xC2, 0xC3):
        return t == 0xC3, i
    if t == 0xCA:
        return struct.unpack(">f", b[i:i + 4])[0], i + 4
    if t == 0xCB:
        return struct.unpack(">d", b[i:i + 8])[0], i + 8
    if 0xCC <= t <= 0xCF:
        w = 1 << (t - 0xCC)
        return int.from_bytes(b[i:i + w], "big"), i + w
    if 0xD0 <= t <= 0xD3:
        w = 1 << (t - 0xD0)
        return int.from_bytes(b[i:i + w], "big", signed=True), i + w
    raise ValueError("msgpack byte 0x%02x" % t)


def _len(b, i, w):
    return int.from_bytes(b[i:i + w], "big"), i + w


class AgentError(Exception):
    def __init__(self, err):
        super().__init__("%s: %s" % (err.get("code"), err.get("message")))
        self.code = err.get("code")
        self.message = err.get("message") or ""


def agent_call(path, method, params, deadline, alive=lambda: True):
    """Connect to the agent's unix socket, hello, one request; returns its result.

    Keeps retrying until @deadline (time.monotonic()) while alive() holds: the socket may not
    exist yet, the guest may not have opened its port yet (QEMU holds our bytes until it does),
    the agent may be restarting, and on a virtio-serial port a new connection can land in the
    previous logical connection if the guest had not yet seen that one end ("hello already
    done"): then we close, which ends it, and try again. Never half-closes.
    """
    last = "the socket %s never appeared" % path
    while time.monotonic() < deadline and alive():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
        except OSError as e:
            s.close()
            last = "connect %s: %s" % (path, e.strerror)
            time.sleep(0.02)
            continue
        try:
            hello = [0, 1, "hello", {"version": 1, "client": "sbx-vm"}]
            s.sendall(_frame(hello))
            r = _read_response(s, 1, deadline, alive)
            if r is None:
                last = "the agent closed the connection during hello"
                time.sleep(0.05)
                continue
            if r[2] is not None:
                err = AgentError(r[2])
                if "hello already done" in err.message or err.code == "BAD_MESSAGE":
                    last = "stale connection state on the port (%s); reconnecting" % err
                    time.sleep(0.05)
                    continue
                raise err
            if method == "hello":
                return r[3]
            s.sendall(_frame([0, 2, method, params]))
            r = _read_response(s, 2, deadline, alive)
            if r is None:
                raise EOFError("the agent closed the connection before answering %s" % method)
            if r[2] is not None:
                raise AgentError(r[2])
            return r[3]
        except (ConnectionError, BrokenPipeError) as e:
            last = str(e)
            time.sleep(0.05)
        finally:
            s.close()
    raise TimeoutError(last)


def _frame(msg):
    body = mp_pack(msg)
    return struct.pack(">I", len(body)) + body


def _read_response(s, rid, deadline, alive):
    """Read frames until the response to @rid; None on EOF. Other messages are ignored."""
    buf = bytearray()
    while True:
        while len(buf) >= 4:
            n = int.from_bytes(buf[:4], "big")
            if len(buf) < 4 + n:
                break
            msg, _ = mp_unpack(bytes(buf[4:4 + n]))
            del buf[:4 + n]
            if isinstance(msg, list) and len(msg) == 4 and msg[0] == 1 and msg[1] == rid:
                return msg
        left = deadline - time.monotonic()
        if left <= 0 or not alive():
            raise TimeoutError("no answer from the agent")
        r, _, _ = select.select([s], [], [], min(left, 0.2))
        if r:
            chunk = s.recv(65536)
            if not chunk:
                return None
            buf += chunk


# --- QMP: is the guest's end of a port open? ---------------------------------------------------

class QMP:
    """A minimal synchronous QMP client (events are read and dropped).

    `query-chardev` reports `frontend-open` for each port's chardev: whether the guest has the
    port open. The agent closes its port when it reads the end of a client's connection and
    opens it again 100 ms later, and otherwise keeps it open; so a closed -> open transition
    after a client left is the one sign, visible from the host, that the agent has seen it go.
    (QEMU's VSERPORT_CHANGE events would say the same, but QEMU rate-limits them to one per
    second per port and drops the ones in between.)"""

    def __init__(self, path):
        self.path = path
        self.sock = None
        self.buf = b""

    def connect(self, deadline, alive):
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.path)
                break
            except OSError:
                s.close()
                if time.monotonic() > deadline or not alive():
                    raise VMError("cannot connect to QEMU's QMP socket %s" % self.path)
                time.sleep(0.01)
        s.settimeout(10)
        self.sock = s
        self._read_msg()  # the greeting
        self.command("qmp_capabilities")

    def _read_msg(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("QMP closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def command(self, name, args=None):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            m = self._read_msg()
            if "return" in m:
                return m["return"]
            if "error" in m:
                raise VMError("QMP %s: %s" % (name, m["error"].get("desc")))

    def chardevs_open(self):
        """{chardev label: frontend-open}"""
        return {c["label"]: c.get("frontend-open", False) for c in self.command("query-chardev")}

    def close(self):
        if self.sock is not None:
            self.sock.close()


# --- clients on virtio-serial ports ---------------------------------------------------------

# Console lines after which the VM is about to stop: no more QMP commands from then on.
GOING_DOWN_RE = re.compile(rb"sbx-init\[[0-9.]+\]: shutdown: |Kernel panic|sysrq: Trigger a crash|"
                           rb"reboot: Power down|reboot: Restarting")
POWER_DOWN_RE = re.compile(rb"reboot: Power down")


class _Port:
    def __init__(self, path, label):
        self.path = path
        self.label = label      # the chardev id, as query-chardev names it
        self.busy = False
        self.open = False       # the guest has the port open (last poll)
        self.closes = 0         # open -> closed transitions seen
        self.closed_at = None   # time.monotonic() of the last client's end
        self.closes_then = 0    # self.closes at that moment
        self.sent = False       # that client sent something


class PortProxy:
    """Serve clients on one unix socket (DIR/sbx.sock) over a pool of agent ports.

    A virtio-serial port carries one connection at a time and has no connection boundaries of
    its own (PROTOCOL.md §2.4). If a client connects to QEMU's socket before the agent has read
    the end of the previous client, its hello lands in the old logical connection ("hello
    already done"), or is discarded by the guest kernel when the agent then closes the port.
    So each client gets a fresh connection to a free port's QEMU socket, relayed byte for byte
    (never half-closed), and a port is used again only after QMP showed the agent closing it (it
    saw the end) and opening it again. When the agent closes a port while a client is connected
    (it died, or dropped the connection), the client's connection is ended, as a socket's would
    be. Ports go least recently used first; when all are busy, clients wait in the backlog.
    """

    POLL = 0.005  # query-chardev interval while a port is in use or settling

    def __init__(self, path, upstreams, qmp, alive, console_log):
        self.path = path
        self.ports = [_Port(u, label) for u, label in upstreams]
        self.qmp = qmp
        self.console_log = console_log
        self.console_pos = 0
        self.alive = alive
        self.lock = threading.Condition()
        if os.path.lexists(path):
            os.unlink(path)
        self.lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.lsock.bind(path)
        os.chmod(path, 0o600)
        self.lsock.listen(64)
        self.stopped = False
        self.debug = os.environ.get("SBX_VM_DEBUG") == "1"
        self.t0 = time.monotonic()

    def trace(self, fmt, *a):
        if self.debug:
            print("%.3f " % (time.monotonic() - self.t0) + fmt % a, file=sys.stderr, flush=True)

    def _settling(self, port):
        return port.closed_at is not None and not self._ready(port, time.monotonic())

    def _going_down(self):
        """Has the guest begun to power off or panic? (See GOING_DOWN_RE.)"""
        start = max(0, self.console_pos - 128)  # overlap: a line may have been half written
        try:
            with open(self.console_log, "rb") as f:
                f.seek(start)
                data = f.read()
        except OSError:
            return False
        self.console_pos = start + len(data)
        return GOING_DOWN_RE.search(data) is not None

    def _poll_ports(self):
        """Follow each port's open state while any port is in use or settling. Stops for good
        when the guest starts to power off: QEMU 7.2 can hang on exit with a QMP command in
        flight (measured: 4 of 10 poweroffs under continuous polling)."""
        while self.alive() and not self.stopped:
            if self._going_down():
                self.trace("the guest is going down; QMP polling stops")
                return
            with self.lock:
                active = any(p.busy or self._settling(p) for p in self.ports)
            if not active:
                time.sleep(self.POLL)
                continue
            try:
                states = self.qmp.chardevs_open()
            except (OSError, EOFError, ValueError, VMError):
                return
            with self.lock:
                for p in self.ports:
                    now_open = states.get(p.label, False)
                    if p.open and not now_open:
                        p.closes += 1
                        self.trace("%s: the guest closed the port", p.label)
                    p.open = now_open
                self.lock.notify_all()
            time.sleep(self.POLL)

    def _ready(self, port, now):
        if port.busy:
            return False
        if port.closed_at is None:
            return True
        if port.closes > port.closes_then and port.open:
            return True  # the agent saw the end, closed the port and opened it again
        # No close at all: the agent never took up that connection (the client sent nothing
        # before it left), or it no longer closes its port at an end.
        return now - port.closed_at >= (0.5 if not port.sent else 5.0)

    def _take_port(self):
        with self.lock:
            while self.alive() and not self.stopped:
                now = time.monotonic()
                ready = [p for p in self.ports if self._ready(p, now)]
                if ready:
                    port = min(ready, key=lambda p: -1 if p.closed_at is None else p.closed_at)
                    port.busy = True
                    return port
                self.lock.wait(self.POLL)
        return None

    def _session(self, client, port):
        self.trace("%s: client connected", port.label)
        sent = False
        try:
            sent = self._relay(client, port)
        finally:
            with self.lock:
                port.sent = sent
                port.closes_then = port.closes
                port.closed_at = time.monotonic()
                port.busy = False
                self.lock.notify_all()
            self.trace("%s: client gone", port.label)

    def _relay(self, client, port):
        """Relay one client; returns whether it sent anything."""
        up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sent = False
        with self.lock:
            start = port.closes
        ending = None  # when the agent side ended: relay what still arrives until quiet
        up_eof = False
        try:
            up.connect(port.path)
            pend = {client: bytearray(), up: bytearray()}  # bytes to be written to the key
            while not self.stopped:
                if ending is None and (not self.alive() or port.closes > start):
                    # The agent closed the port under this client (it died, dropped the
                    # connection, or the VM is going down), or QEMU exited. QEMU's socket
                    # would stay up and the client wait forever: end the connection as a
                    # socket would, after what is already on its way.
                    self.trace("%s: the agent side ended", port.label)
                    ending = time.monotonic()
                wl = [x for x in (client, up) if pend[x]]
                rl = [x for x in (client, up) if not (x is up and up_eof)
                      and len(pend[up if x is client else client]) < 1 << 20]
                r, w, _ = select.select(rl, wl, [], 0.05)
                for x in w:
                    n = x.send(pend[x])
                    del pend[x][:n]
                for x in r:
                    data = x.recv(1 << 18)
                    self.trace("%s: %s %d bytes", port.label, "<-" if x is up else "->",
                               len(data))
                    if not data:
                        if x is up:  # QEMU went away: pass on what it sent, then end
                            up_eof = True
                            ending = ending or time.monotonic()
                            continue
                        return sent
                    pend[up if x is client else client] += data
                    sent = sent or x is client
                    if x is up and ending is not None:
                        ending = time.monotonic()
                if ending is not None and not pend[client] and (
                        up_eof or time.monotonic() - ending > 0.3):
                    return sent
        except OSError:
            pass
        finally:
            up.close()  # a close, never shutdown(SHUT_WR): QEMU treats that as a disconnect
            client.close()
        return sent

    def serve(self):
        """Accept and relay until QEMU exits or stop() is called."""
        self.lsock.settimeout(0.2)
        threading.Thread(target=self._poll_ports, name="sbx-vm-qmp", daemon=True).start()
        try:
            while self.alive() and not self.stopped:
                port = self._take_port()
                if port is None:
                    break
                client = None
                while client is None and self.alive() and not self.stopped:
                    try:
                        client, _ = self.lsock.accept()
                    except socket.timeout:
                        continue
                if client is None:
                    break
                client.settimeout(None)
                threading.Thread(target=self._session, args=(client, port), daemon=True).start()
        except OSError:
            pass
        finally:
            self.lsock.close()
            if os.path.lexists(self.path):
                os.unlink(self.path)

    def stop(self):
        self.stopped = True


# --- images and kernels -----------------------------------------------------------------------

def cache_dir():
    if os.environ.get("SBX_CACHE"):
        return os.path.abspath(os.environ["SBX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sbx")


def read_manifest_header(image):
    """The `# key: value` header of IMAGE.manifest (written by sbx-rootfs), or {}."""
    hdr = {}
    try:
        with open(image + ".manifest") as f:
            for line in f:
                if not line.startswith("#"):
                    break
                m = re.match(r"# ([a-z0-9_]+): (.*)", line.rstrip("\n"))
                if m:
                    hdr[m.group(1)] = m.group(2)
    except OSError:
        pass
    return hdr


def find_kernel(image_hdr):
    """The kernel the image was built for, from the cache; else the newest cached one."""
    kroot = os.path.join(cache_dir(), "kernel")
    m = re.match(r"(\S+) \((\S+) (\S+)\)", image_hdr.get("kernel", ""))
    if m:
        release, pkg, ver = m.groups()
        p = os.path.join(kroot, "%s_%s" % (pkg, ver), "boot", "vmlinuz-" + release)
        if os.path.isfile(p):
            return p
        raise VMError("the image was built for kernel %s (%s %s), which is not in %s; run "
                      "`sbx-rootfs kernel` or pass --kernel" % (release, pkg, ver, kroot),
                      EXIT_USAGE)
    cur = os.path.join(kroot, "current-linux-image-cloud-amd64", "boot")
    if os.path.isdir(cur):
        for f in sorted(os.listdir(cur)):
            if f.startswith("vmlinuz-"):
                return os.path.join(cur, f)
    raise VMError("no kernel: run `sbx-rootfs kernel` first or pass --kernel", EXIT_USAGE)


def host_tsc_khz():
    """The host TSC frequency in kHz (under TCG the guest TSC runs at the host's rate)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return int(float(line.split(":")[1]) * 1000)
    except (OSError, ValueError):
        pass
    return None


# --- the VM -----------------------------------------------------------------------------------

class VM:
    """One QEMU process. Use start(), wait_ready(), then addr; shutdown() or wait()."""

    def __init__(self, image, kernel=None, initrd=None, machine="q35", mem="256M", smp=1,
                 append=(), run_dir=None, ports=(), console_tty=False, persist=False,
                 qemu="qemu-system-x86_64", qemu_args=(), log=None):
        self.image = os.path.abspath(image)
        if not os.path.isfile(self.image):
            raise VMError("%s: no such image" % image, EXIT_USAGE)
        self.hdr = read_manifest_header(self.image)
        self.kernel = kernel or os.environ.get("SBX_KERNEL") or find_kernel(self.hdr)
        self.machine = machine
        self.mem = mem
        self.smp = smp
        self.append = list(append)
        self.ports = list(ports)
        self.agent_ports = self._agent_ports()
        self.console_tty = console_tty
        self.persist = persist
        self.qemu = qemu
        self.qemu_args = list(qemu_args)
        self.log = log or (lambda msg: None)
        self.own_dir = run_dir is None
        self.dir = run_dir or tempfile.mkdtemp(prefix="sbx-vm-")
        os.makedirs(self.dir, exist_ok=True)
        if self.own_dir:  # `sbx-vm --stop DIR` removes only directories sbx-vm made itself
            open(os.path.join(self.dir, OWNED_MARK), "w").close()
        self.sock = os.path.join(self.dir, "agent.sock")  # QEMU's socket of the first port
        self.console_sock = os.path.join(self.dir, "console.sock")
        self.console_log = os.path.join(self.dir, "console.log")
        self.qemu_log = os.path.join(self.dir, "qemu.log")
        self.proxy_sock = os.path.join(self.dir, "sbx.sock")
        self.qmp_sock = os.path.join(self.dir, "qmp.sock")
        self.qmp = None
        self.addr = "unix:" + self.proxy_sock
        self.proxy = None
        self.disk = None
        if self.image.endswith(".cpio.gz") or self.image.endswith(".cpio"):
            self.initrd = self.image
        else:
            self.disk = self.image
            self.initrd = initrd or self._initrd_for_disk()
            self.append = self.hdr.get("append", "root=/dev/vda rootfstype=ext4").split() + \
                self.append
        self.proc = None
        self.t_start = None
        self.t_ready = None
        self.rc = None

    def _initrd_for_disk(self):
        name = self.hdr.get("initrd")
        if name:
            p = os.path.join(os.path.dirname(self.image), name)
            if os.path.isfile(p):
                return p
        raise VMError("%s is a disk image: pass --initrd (its stage-1 initramfs)" % self.image,
                      EXIT_USAGE)

    def _agent_ports(self):
        """The agent's serial ports: from a user's sbx.listen, else a pool of 4 that we add to
        the command line, so that up to 4 clients can be connected at once."""
        for w in self.append:
            if w.startswith("sbx.listen="):
                names = [a[len("serial:"):] for a in w[len("sbx.listen="):].split(",")
                         if a.startswith("serial:") and not a.startswith("serial:/")]
                if not names:
                    raise VMError("sbx.listen has no serial:NAME address: sbx-vm talks to the "
                                  "agent over a virtio-serial port", EXIT_USAGE)
                return names
        names = ["agent", "agent.1", "agent.2", "agent.3"]
        self.append.append("sbx.listen=vsock:1024," + ",".join("serial:" + n for n in names))
        return names

    @staticmethod
    def port_id(name):
        return "port-" + name

    def port_path(self, name):
        return os.path.join(self.dir, name + ".sock")

    def cmdline(self):
        words = ["console=ttyS0", "panic=-1"]
        if self.machine.startswith("microvm"):
            # microvm has neither HPET nor the ACPI PM timer: without this the TSC calibration
            # hangs in ~10% of boots (VM-HARNESS.md §10).
            khz = host_tsc_khz()
            if khz:
                words.append("tsc_early_khz=%d" % khz)
        return " ".join(words + self.append)

    def argv(self):
        mmio = self.machine.startswith("microvm")
        a = [self.qemu, "-machine", self.machine, "-accel", "tcg", "-m", self.mem,
             "-smp", str(self.smp), "-nodefaults", "-no-user-config", "-display", "none",
             "-no-reboot", "-device", "pvpanic", "-action", "panic=exit-failure",
             "-kernel", self.kernel, "-initrd", self.initrd, "-append", self.cmdline()]
        if self.console_tty:
            a += ["-chardev", "stdio,id=con0,signal=off,logfile=%s" % self.console_log]
        else:
            a += ["-chardev", "socket,id=con0,path=%s,server=on,wait=off,logfile=%s" % (
                self.console_sock, self.console_log)]
        a += ["-serial", "chardev:con0",
              "-chardev", "socket,id=qmp0,path=%s,server=on,wait=off" % self.qmp_sock,
              "-mon", "chardev=qmp0,mode=control"]
        a += ["-device", "virtio-serial-device" if mmio else "virtio-serial-pci"]
        for i, name in enumerate(self.agent_ports):
            a += ["-chardev", "socket,id=agent%d,path=%s,server=on,wait=off" % (
                i, self.sock if i == 0 else self.port_path(name)),
                "-device", "virtserialport,chardev=agent%d,name=%s,id=%s" % (
                    i, name, self.port_id(name))]
        for i, name in enumerate(self.ports):
            a += ["-chardev", "socket,id=port%d,path=%s,server=on,wait=off" % (
                i, self.port_path(name)),
                "-device", "virtserialport,chardev=port%d,name=%s" % (i, name)]
        if self.disk:
            snap = "" if self.persist else ",snapshot=on"
            a += ["-drive", "file=%s,format=raw,if=none,id=disk0%s" % (self.disk, snap),
                  "-device", ("virtio-blk-device" if mmio else "virtio-blk-pci") + ",drive=disk0"]
        return a + self.qemu_args

    def start(self):
        """Spawn QEMU (in its own session, so a terminal's Ctrl-C reaches us, not it)."""
        if shutil.which(self.qemu) is None:
            raise VMError("%s not found: apt-get install qemu-system-x86" % self.qemu, EXIT_USAGE)
        for p in (self.sock, self.console_sock, self.console_log, self.qmp_sock):
            if os.path.lexists(p):
                os.unlink(p)
        argv = self.argv()
        with open(os.path.join(self.dir, "qemu.cmdline"), "w") as f:
            f.write(" ".join(argv) + "\n")
        qlog = open(self.qemu_log, "w")
        self.t_start = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=None if self.console_tty else subprocess.DEVNULL,
                                     stdout=None if self.console_tty else qlog, stderr=qlog,
                                     start_new_session=not self.console_tty)
        qlog.close()
        with open(os.path.join(self.dir, "qemu.pid"), "w") as f:
            f.write("%d\n" % self.proc.pid)
        self.log("started QEMU (pid %d, %s, %s): %s" % (self.proc.pid, self.machine, self.mem,
                                                       os.path.basename(self.image)))
        self.qmp = QMP(self.qmp_sock)
        try:
            self.qmp.connect(time.monotonic() + 30, self.alive)
        except (VMError, EOFError, OSError, ValueError) as e:
            if self.alive():
                self.kill()
            raise VMError("QEMU failed to start (%s)%s" % (e, self._failure_reason()))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def console_text(self):
        try:
            with open(self.console_log, "rb") as f:
                return f.read()
        except OSError:
            return b""

    def panic_line(self):
        m = PANIC_RE.search(self.console_text())
        return m.group(0).decode("utf-8", "replace") if m else None

    def wait_ready(self, timeout=60):
        """Block until the agent answers hello; returns the hello result. Raises VMError."""
        deadline = self.t_start + timeout
        try:
            hello = agent_call(self.sock, "hello", None, deadline, self.alive)
        except (TimeoutError, AgentError, EOFError, OSError) as e:
            why = self._failure_reason()
            if self.alive():
                self.kill()
                raise VMError("the agent did not answer within %gs (%s)%s" % (
                    timeout, e, why), EXIT_PANIC if self.panic_line() else EXIT_BOOT)
            raise VMError("QEMU exited with status %s before the agent answered%s" % (
                self.proc.returncode, why), EXIT_PANIC if self.panic_line() else EXIT_BOOT)
        self.t_ready = time.monotonic()
        self._probe_settled = self._wait_port_cycle("agent0", 2.0)
        return hello

    def _wait_port_cycle(self, label, timeout):
        """After our probe left port @label: wait until the agent has closed it (it saw the
        end) and opened it again, so that the next client starts a new logical connection."""
        deadline = time.monotonic() + timeout
        seen_closed = False
        while time.monotonic() < deadline and self.alive():
            try:
                is_open = self.qmp.chardevs_open().get(label, False)
            except (OSError, EOFError, ValueError, VMError):
                return False
            seen_closed = seen_closed or not is_open
            if seen_closed and is_open:
                return True
            time.sleep(0.003)
        return False

    def _failure_reason(self):
        out = []
        p = self.panic_line()
        if p:
            out.append("guest panic: " + p)
        try:
            with open(self.qemu_log) as f:
                q = f.read().strip()
            if q:
                out.append("QEMU: " + q.splitlines()[-1])
        except OSError:
            pass
        return "".join("; " + x for x in out)

    def _new_proxy(self, alive):
        proxy = PortProxy(self.proxy_sock, self.upstreams(), self.qmp, alive, self.console_log)
        if not getattr(self, "_probe_settled", True):
            # wait_ready's probe used the first port and the agent was not seen closing and
            # reopening it: let the proxy hold that port back until it does (or a timeout).
            p = proxy.ports[0]
            p.closed_at, p.sent, p.open = self.t_ready, True, True
        return proxy

    def start_proxy(self):
        """Serve SBX_ADDR (DIR/sbx.sock) from a thread of this process (see PortProxy)."""
        self.proxy = self._new_proxy(self.alive)
        threading.Thread(target=self.proxy.serve, name="sbx-vm-proxy", daemon=True).start()

    def start_proxy_daemon(self):
        """Serve SBX_ADDR from a detached child process that lives as long as QEMU (--keep).
        The QMP connection moves to the child."""
        qpid = self.proc.pid

        def qemu_alive():
            try:
                with open("/proc/%d/stat" % qpid) as f:
                    return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
            except OSError:
                return False
        proxy = self._new_proxy(qemu_alive)
        pid = os.fork()
        if pid > 0:
            proxy.lsock.close()
            self.qmp.sock.close()
            return pid
        try:
            os.setsid()
            fd = os.open(os.path.join(self.dir, "proxy.log"), os.O_WRONLY | os.O_CREAT, 0o644)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            proxy.serve()
        finally:
            os._exit(0)

    def upstreams(self):
        """(QEMU socket, device id) of each agent port."""
        return [(self.sock if i == 0 else self.port_path(n), "agent%d" % i)
                for i, n in enumerate(self.agent_ports)]

    @property
    def client_sock(self):
        """Where a client connects now: the proxy when it runs, else QEMU's socket."""
        return self.proxy_sock if self.proxy is not None else self.sock

    @property
    def boot_seconds(self):
        return None if self.t_ready is None else self.t_ready - self.t_start

    def request_shutdown(self, timeout=10, action="poweroff"):
        """Ask the agent to power the VM off; True when it accepted."""
        try:
            agent_call(self.client_sock, "shutdown", {"action": action},
                       time.monotonic() + timeout, self.alive)
            return True
        except (TimeoutError, AgentError, EOFError, OSError) as e:
            if self.alive():
                self.log("shutdown request failed: %s" % e)
            return False

    def wait(self, timeout=None):
        """Wait for QEMU to exit; returns its status, or None on timeout.

        QEMU 7.2 sometimes fails to exit after the guest powered off (with QMP requests in
        flight; the proxy avoids those, this is the backstop): when the guest printed
        "reboot: Power down" and QEMU is still running 3 s later, it is killed and the poweroff
        counts as clean (status 0)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        down_since = None
        while True:
            try:
                self.rc = self.proc.wait(0.05)
                return self.rc
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if down_since is None and POWER_DOWN_RE.search(self.console_text()[-4096:]):
                down_since = now
            if down_since is not None and now - down_since > 3.0:
                self.log("the guest powered off but QEMU did not exit; killing it (QEMU hang)")
                self.proc.kill()
                self.proc.wait()
                self.rc = 0
                return 0
            if deadline is not None and now > deadline:
                return None

    def kill(self):
        if self.proxy is not None:
            self.proxy.stop()
        if self.alive():
            self.proc.kill()
        if self.proc is not None:
            self.rc = self.proc.wait()

    def shutdown(self, timeout=20):
        """Request a poweroff and wait for QEMU. Returns an sbx-vm status: 0 on a clean
        poweroff, EXIT_PANIC, EXIT_STUCK (killed) or EXIT_BOOT (QEMU failed)."""
        t0 = time.monotonic()
        if self.alive():
            self.request_shutdown(timeout=min(timeout, 10))
        rc = self.wait(max(0.1, timeout - (time.monotonic() - t0)))
        if rc is None:
            self.log("the VM did not power off within %gs; killing QEMU" % timeout)
            self.kill()
            return EXIT_PANIC if self.panic_line() else EXIT_STUCK
        self.log("VM powered off (QEMU status %d) %.2fs after the request" % (
            rc, time.monotonic() - t0))
        return self.status()

    def status(self):
        """The sbx-vm status for a QEMU that has exited."""
        if self.panic_line() or self.rc == 1:
            return EXIT_PANIC
        return 0 if self.rc == 0 else EXIT_BOOT

    def cleanup(self, keep_files=False):
        if self.own_dir and not keep_files:
            shutil.rmtree(self.dir, ignore_errors=True)
