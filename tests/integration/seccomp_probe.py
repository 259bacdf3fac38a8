"""A probe of the seccomp filters (docs/INIT.md "Seccomp"), run with `python3 -c PROBE` in the
process whose filters are to be seen: in a VM, under sbx-init in a PID namespace, or under a
standalone agent. It prints one JSON object:

    {"status": {"Seccomp": "2", "Seccomp_filters": "2", "NoNewPrivs": "0"},
     "errno": {"bpf": 1, ...},   # per call: 0 if it succeeded, else its errno
     "i386": {"bpf": 1, ...}}    # the same through int 0x80 (x86-32 ABI); null elsewhere

Every call has arguments the kernel refuses (NULL pointers, bad flags, a bad magic), so nothing
happens where no filter stands in the way; a filter answers first with its own errno. x86-64
only (syscall numbers), like the VM tests.
"""
import errno as E
import json

PROBE = r'''
import ctypes, json, mmap, os, platform, socket, struct
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return 0 if r >= 0 else ctypes.get_errno()
def vsock():
    try:
        socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()
        return 0
    except OSError as e:
        return e.errno
def int80(nr, a1=0, a2=0):
    code = (b"\x53\xb8" + struct.pack("<I", nr) + b"\xbb" + struct.pack("<I", a1) + b"\xb9"
            + struct.pack("<I", a2) + b"\x31\xd2\xcd\x80\x5b\xc3")
    m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    m.write(code)
    r = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(m)))()
    return 0 if r >= 0 else -r
out = {"status": {}, "errno": {
    "bpf": call(321, 0, 0, 0),                     # BPF_MAP_CREATE, no attr
    "perf_event_open": call(298, 0, 0, -1, -1, 0),  # NULL attr
    "userfaultfd": call(323, 0xffff),               # bad flags
    "keyctl": call(250, 99999),                     # no such operation
    "reboot": call(169, 0, 0, 0, 0),                # bad magic
    "io_uring_setup": call(425, 1, 0),              # NULL params
    "vsock": vsock(),
}, "i386": None}
if platform.machine() == "x86_64":
    out["i386"] = {"bpf": int80(357), "io_uring_setup": int80(425, 1, 0),
                   "socketcall": int80(102, 1, 0)}  # SYS_SOCKET, NULL args
for line in open("/proc/self/status"):
    k, _, v = line.partition(":")
    if k in ("Seccomp", "Seccomp_filters", "NoNewPrivs"):
        out["status"][k] = v.strip()
print(json.dumps(out))
'''

# What each probed call gets from a filter that denies it (filter.c).
DENIED = {"bpf": E.EPERM, "perf_event_open": E.EPERM, "userfaultfd": E.EPERM, "keyctl": E.EPERM,
          "reboot": E.EPERM, "io_uring_setup": E.ENOSYS, "vsock": E.EAFNOSUPPORT}
DENIED_I386 = {"bpf": E.EPERM, "io_uring_setup": E.ENOSYS, "socketcall": E.EAFNOSUPPORT}
BASELINE = ("bpf", "perf_event_open", "userfaultfd", "keyctl", "reboot", "io_uring_setup")
WORKLOAD = ("vsock", "socketcall")
ALWAYS = ("io_uring_setup", "vsock", "socketcall")  # no user gets these errnos unfiltered


def parse(stdout):
    """The probe's JSON line."""
    if isinstance(stdout, bytes):
        stdout = stdout.decode(errors="replace")
    return json.loads(stdout.strip().splitlines()[-1])


def problems(out, mode, root=True, init=True):
    """What is wrong (a list of strings, empty when nothing) with what a workload process sees
    under `mode`, started by an agent that sbx-init started (`init`) or by a standalone one:
    init's baseline (not without init) and the agent's workload filter (strict and log) are
    there, and deny (not under log, which only logs). Errnos without a filter are judged only
    for root: for other users the kernel itself says EPERM to several of these calls."""
    baseline = init and mode != "off"
    workload = mode in ("strict", "log")
    enforce = mode != "log"
    denies = set(BASELINE if baseline and enforce else ()) | set(
        WORKLOAD if workload and enforce else ())
    want = int(baseline) + int(workload)
    st, bad = out["status"], []
    if st.get("Seccomp") != ("2" if want else "0"):
        bad.append("Seccomp: %s" % st.get("Seccomp"))
    if "Seccomp_filters" in st and st["Seccomp_filters"] != str(want):  # Linux 5.9+
        bad.append("Seccomp_filters: %s, want %d" % (st["Seccomp_filters"], want))
    if st.get("NoNewPrivs") != "0":  # sudo and other set-id programs must keep working
        bad.append("NoNewPrivs: %s" % st.get("NoNewPrivs"))
    for abi, table, got in (("", DENIED, out["errno"]), ("i386 ", DENIED_I386, out["i386"])):
        for name, err in table.items() if got is not None else ():
            if name in denies and got[name] != err:
                bad.append("%s%s: errno %d, want %d" % (abi, name, got[name], err))
            elif name not in denies and got[name] == err and (root or name in ALWAYS):
                bad.append("%s%s: errno %d without a filter that denies it" % (abi, name, err))
    return bad
