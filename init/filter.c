/* filter.c: the guest's seccomp filters (filter.h): the rule tables, compiled with libseccomp. */
#include "filter.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/seccomp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
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

/* Builds the filter of @kind for @mode with libseccomp; NULL with *rc set on failure. */
static scmp_filter_ctx build(enum sbx_filter_kind kind, enum sbx_filter_mode mode, int *rc)
{
    bool log = mode == SBX_FILTER_LOG;
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);

    if (ctx == NULL) {
        *rc = -ENOMEM;
        return NULL;
    }
    /* Loaded as root with CAP_SYS_ADMIN: no no_new_privs, which would break sudo below. */
    *rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0);
    if (*rc == 0) {
        *rc = add_arches(ctx);
    }
    if (*rc == 0) {
        *rc = kind == SBX_FILTER_KIND_BASELINE ? add_baseline(ctx, log) : add_workload(ctx, log);
    }
    if (*rc < 0) {
        seccomp_release(ctx);
        return NULL;
    }
    return ctx;
}

int sbx_filter_install(enum sbx_filter_kind kind, enum sbx_filter_mode mode)
{
    scmp_filter_ctx ctx;
    int rc = 0;

    if (!sbx_filter_applies(kind, mode)) {
        return 0;
    }
    if ((ctx = build(kind, mode, &rc)) != NULL) {
        rc = seccomp_load(ctx);
        seccomp_release(ctx);
    }
    return rc;
}

/* Reads the program from @fd (to its end) into @f. */
static int read_program(int fd, struct sbx_filter *f)
{
    struct sock_filter buf[BPF_MAXINSNS + 1]; /* 32 KiB; one more: a longer one is refused */
    size_t got = 0, n;
    ssize_t r;

    while (got < sizeof(buf) && (r = read(fd, (char *)buf + got, sizeof(buf) - got)) != 0) {
        if (r < 0 && errno != EINTR) {
            return -errno;
        }
        got += r > 0 ? (size_t)r : 0;
    }
    n = got / sizeof(buf[0]);
    if (n == 0 || n > BPF_MAXINSNS || got % sizeof(buf[0]) != 0) {
        return -EINVAL;
    }
    if ((f->prog.filter = malloc(got)) == NULL) {
        return -ENOMEM;
    }
    memcpy(f->prog.filter, buf, got);
    f->prog.len = (unsigned short)n;
    return 0;
}

/*
 * libseccomp runs in a short-lived child, which writes the program into a pipe: its filter
 * database (a few hundred KiB under a sanitizer) never enters the long-lived heap of the caller,
 * which keeps only the program (about a hundred instructions) and waits for that child only.
 */
int sbx_filter_compile(struct sbx_filter *f, enum sbx_filter_kind kind, enum sbx_filter_mode mode)
{
    int p[2], status = 0, rc;
    pid_t pid;

    f->prog.len = 0;
    f->prog.filter = NULL;
    if (!sbx_filter_applies(kind, mode)) {
        return 0;
    }
    if (pipe2(p, O_CLOEXEC) < 0) {
        return -errno;
    }
    if ((pid = fork()) == 0) {
        scmp_filter_ctx ctx = build(kind, mode, &rc);
        close(p[0]);
        if (ctx != NULL) {
            rc = seccomp_export_bpf(ctx, p[1]);
        }
        _exit(rc < 0 && -rc < 256 ? -rc : rc < 0 ? EINVAL : 0); /* _exit: no atexit work */
    }
    rc = pid < 0 ? -errno : 0;
    close(p[1]);
    if (rc == 0) {
        rc = read_program(p[0], f);
    }
    close(p[0]);
    while (pid > 0 && waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (pid > 0 && (!WIFEXITED(status) || WEXITSTATUS(status) != 0)) { /* its reason first */
        rc = WIFEXITED(status) ? -WEXITSTATUS(status) : -ECHILD;
    }
    if (rc < 0) {
        sbx_filter_free(f);
    }
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
