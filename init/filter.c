/* filter.c: the guest's seccomp filters (filter.h): the rule tables, compiled with libseccomp. */
#include "filter.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/seccomp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <seccomp.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif

struct filter_rule {
    const char *name; /* the syscall, resolved per ABI by libseccomp */
    int err;          /* what the caller gets instead */
};

/*
 * The baseline: kernel and administration surface no sandbox needs, denied to the agent and to
 * everything it starts, root (through sudo) included. EPERM is what an unprivileged caller gets
 * anyway, so programs handle it. Left allowed on purpose: mount, unshare, setns, clone3 (the
 * VM is the boundary, and tools that build containers need them), ptrace (Yama's ptrace_scope,
 * set by init, limits it), clock_settime (the agent's clock.set).
 */
static const struct filter_rule baseline_rules[] = {
    /* The kernel image and its modules: init loaded what the image needs before the agent. */
    { "kexec_load", EPERM },
    { "kexec_file_load", EPERM },
    { "init_module", EPERM },
    { "finit_module", EPERM },
    { "delete_module", EPERM },
    /* Power is init's: the agent's `shutdown` asks it, and it stops processes, syncs and
     * unmounts first; a raw reboot(2) would skip all that. (A root workload can still signal
     * PID 1, which is the graceful path busybox poweroff takes.) */
    { "reboot", EPERM },
    { "swapon", EPERM },
    { "swapoff", EPERM },
    { "acct", EPERM },
    /* Kernel attack surface with a long record of privilege escalations. */
    { "bpf", EPERM },
    { "perf_event_open", EPERM },
    { "userfaultfd", EPERM },
    { "keyctl", EPERM },
    { "add_key", EPERM },
    { "request_key", EPERM },
    { "open_by_handle_at", EPERM },
    { "name_to_handle_at", EPERM },
    { "lookup_dcookie", EPERM },
    { "quotactl", EPERM },
    { "quotactl_fd", EPERM },
    { "nfsservctl", EPERM },
    { "iopl", EPERM },
    { "ioperm", EPERM },
    { "vm86", EPERM },
    { "vm86old", EPERM },
    { "kcmp", EPERM },
    { "process_vm_writev", EPERM },
    /* io_uring performs its operations outside any syscall filter. ENOSYS, not EPERM: libuv,
     * tokio and glibc treat it as "no io_uring here" and fall back to epoll and plain calls. */
    { "io_uring_setup", ENOSYS },
    { "io_uring_enter", ENOSYS },
    { "io_uring_register", ENOSYS },
};

/* Compat ABIs a native one can run, which get the same rules (anything else is killed). */
static const uint32_t filter_compat[][2] = {
    { SCMP_ARCH_X86_64, SCMP_ARCH_X86 },
    { SCMP_ARCH_X86_64, SCMP_ARCH_X32 },
    { SCMP_ARCH_AARCH64, SCMP_ARCH_ARM },
};

static int add_arches(scmp_filter_ctx ctx)
{
    uint32_t native = seccomp_arch_native();

    for (size_t i = 0; i < sizeof(filter_compat) / sizeof(filter_compat[0]); i++) {
        int rc = filter_compat[i][0] == native ? seccomp_arch_add(ctx, filter_compat[i][1]) : 0;
        if (rc < 0 && rc != -EEXIST) {
            return rc;
        }
    }
    return 0;
}

static int add_baseline(scmp_filter_ctx ctx, bool log)
{
    for (size_t i = 0; i < sizeof(baseline_rules) / sizeof(baseline_rules[0]); i++) {
        int nr = seccomp_syscall_resolve_name(baseline_rules[i].name);
        int rc;

        if (nr == __NR_SCMP_ERROR) {
            continue; /* a name this libseccomp does not know yet: no ABI of ours has it */
        }
        rc = seccomp_rule_add(ctx, log ? SCMP_ACT_LOG : SCMP_ACT_ERRNO(baseline_rules[i].err), nr,
                              0);
        if (rc < 0) {
            return rc;
        }
    }
    return 0;
}

/*
 * The workload's addition: no AF_VSOCK sockets, so sandbox code can neither dial the host's
 * vsock services nor listen on a vsock port (the agent needs AF_VSOCK, so the baseline cannot
 * say this). On x86-32 the domain of socketcall(2) sits behind a pointer a filter cannot read:
 * libseccomp then refuses every socket created through socketcall, while the direct socket(2)
 * (Linux 4.3+) is judged by its domain like on x86-64.
 */
static int add_workload(scmp_filter_ctx ctx, bool log)
{
    return seccomp_rule_add(ctx, log ? SCMP_ACT_LOG : SCMP_ACT_ERRNO(EAFNOSUPPORT),
                            SCMP_SYS(socket), 1, SCMP_A0(SCMP_CMP_EQ, AF_VSOCK));
}

/* libseccomp 2.5 can only write the program to an fd: through a memfd into memory of ours. */
static int export_bpf(scmp_filter_ctx ctx, struct sbx_filter *f)
{
    struct sock_filter *insns = NULL;
    struct stat st;
    size_t n = 0, size = 0, got = 0;
    int fd = memfd_create("sbx-seccomp", MFD_CLOEXEC), rc = 0;

    if (fd < 0) {
        return -errno;
    }
    if ((rc = seccomp_export_bpf(ctx, fd)) == 0 && fstat(fd, &st) < 0) {
        rc = -errno;
    }
    if (rc == 0) {
        size = (size_t)st.st_size;
        n = size / sizeof(*insns);
        rc = n == 0 || n > BPF_MAXINSNS || n * sizeof(*insns) != size ? -EINVAL : 0;
    }
    if (rc == 0 && (insns = malloc(size)) == NULL) {
        rc = -ENOMEM;
    }
    while (rc == 0 && got < size) {
        ssize_t r = pread(fd, (char *)insns + got, size - got, (off_t)got);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            rc = r < 0 ? -errno : -EIO;
            break;
        }
        got += (size_t)r;
    }
    close(fd);
    if (rc < 0) {
        free(insns);
        return rc;
    }
    f->prog.filter = insns;
    f->prog.len = (unsigned short)n;
    return 0;
}

int sbx_filter_compile(struct sbx_filter *f, enum sbx_filter_kind kind, enum sbx_filter_mode mode)
{
    bool log = mode == SBX_FILTER_LOG;
    scmp_filter_ctx ctx;
    int rc;

    f->prog.len = 0;
    f->prog.filter = NULL;
    if (mode == SBX_FILTER_OFF ||
        (kind == SBX_FILTER_KIND_WORKLOAD && mode == SBX_FILTER_BASELINE)) {
        return 0;
    }
    if ((ctx = seccomp_init(SCMP_ACT_ALLOW)) == NULL) {
        return -ENOMEM;
    }
    rc = add_arches(ctx);
    if (rc == 0) {
        rc = kind == SBX_FILTER_KIND_BASELINE ? add_baseline(ctx, log) : add_workload(ctx, log);
    }
    if (rc == 0) {
        rc = export_bpf(ctx, f);
    }
    seccomp_release(ctx);
    return rc;
}

int sbx_filter_load(const struct sbx_filter *f)
{
    unsigned long prog = (unsigned long)&f->prog;

    if (f->prog.len == 0) {
        return 0;
    }
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, prog, 0, 0) == 0) {
        return 0;
    }
    if (errno != EACCES || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
        return -1;
    }
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, prog, 0, 0) == 0 ? 0 : -1;
}

void sbx_filter_free(struct sbx_filter *f)
{
    free(f->prog.filter);
    f->prog.filter = NULL;
    f->prog.len = 0;
}
