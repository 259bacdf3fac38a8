/*
 * The sandbox backends. vm: each sandbox is a QEMU guest booted by the project's runner
 * (`sbx-vm --keep --run-dir DATA/vms/<id> --mem NM IMAGE`), watched through a pidfd of its QEMU,
 * powered off with `sbx-vm --stop DIR`. addr: every sandbox is the one agent already running at
 * an address; nothing boots or powers off.
 */
#include "backend.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* A line sbx-vm prints on stdout (SBX_ADDR=unix:/... is the longest). */
#define VM_LINE_MAX 4096

struct vmb {
    struct gw_sandbox *sb; /* NULL once released */
    char dir[PATH_MAX];    /* DATA/vms/<id> */
    char log[PATH_MAX];    /* DIR/boot.log: sbx-vm's stderr */
    char addr[VM_LINE_MAX];
    pid_t qemu_pid;
    unsigned handles; /* open libuv handles; the state is freed when the last one closed */
    /* booting */
    uv_process_t boot;
    uv_pipe_t out;
    bool booting; /* from the spawn until both its exit and its stdout's end were seen */
    bool boot_exited, out_ended, boot_live, out_live;
    int64_t boot_status;
    char line[VM_LINE_MAX];
    size_t linelen;
    bool line_overflow;
    /* watching */
    int pidfd;
    uv_poll_t poll;
    bool poll_live;
    /* stopping */
    uv_process_t stop;
    bool stop_live, stopping;
};

static void vm_handle_closed_cb(uv_handle_t *h)
{
    struct vmb *b = h->data;

    if (--b->handles == 0 && b->sb == NULL) {
        free(b);
    }
}

static void vm_close(struct vmb *b, uv_handle_t *h, bool *live)
{
    if (*live) {
        *live = false;
        uv_close(h, vm_handle_closed_cb);
    }
}

static void vm_unwatch(struct vmb *b)
{
    if (b->poll_live) {
        vm_close(b, (uv_handle_t *)&b->poll, &b->poll_live);
    }
    if (b->pidfd >= 0) {
        (void)close(b->pidfd); /* a pidfd: nothing to flush */
        b->pidfd = -1;
    }
}

/* Does our QEMU still run? (pid alive and its command line names our run dir) */
static bool vm_qemu_runs(const struct vmb *b)
{
    return b->qemu_pid > 0 && gw_pid_runs(b->qemu_pid, b->dir);
}

/* QEMU's pid from DIR/qemu.pid (sbx-vm writes it as soon as QEMU starts). */
static void vm_read_qemu_pid(struct vmb *b)
{
    char path[PATH_MAX + 16];
    char *text = NULL;
    size_t len = 0;

    if (b->qemu_pid > 0) {
        return;
    }
    if (snprintf(path, sizeof path, "%s/qemu.pid", b->dir) >= (int)sizeof path ||
        gw_file_read(path, 64, &text, &len) < 0) {
        return;
    }
    long pid = strtol(text, NULL, 10);
    free(text);
    if (pid > 1 && pid < INT32_MAX) {
        b->qemu_pid = (pid_t)pid;
    }
}

static void vm_kill_qemu(struct vmb *b)
{
    vm_read_qemu_pid(b);
    if (vm_qemu_runs(b) && kill(b->qemu_pid, SIGKILL) < 0 && errno != ESRCH) {
        gw_log("%s: kill QEMU %d: %s", b->sb != NULL ? b->sb->id : "?", (int)b->qemu_pid,
               strerror(errno));
    }
}

static void vm_console_tail(const struct vmb *b, char *out, size_t len)
{
    char path[PATH_MAX + 16];

    (void)snprintf(path, sizeof path, "%s/console.log", b->dir);
    gw_file_tail(path, GW_CONSOLE_TAIL_LINES, out, len);
}

/* --- watching a running VM ------------------------------------------------------------------ */

static void vm_poll_cb(uv_poll_t *h, int status, int events)
{
    struct vmb *b = h->data;
    char tail[2048];
    char why[512 + 2048];

    (void)status; /* readable or an error: either way the pidfd says the process ended */
    (void)events;
    vm_unwatch(b);
    if (b->sb == NULL || b->stopping) {
        return; /* a stop in progress: its exit reports */
    }
    vm_console_tail(b, tail, sizeof tail);
    (void)snprintf(why, sizeof why, "VM stopped unexpectedly: %s", tail);
    gw_sandbox_died(b->sb, why);
}

/* Watch QEMU through a pidfd. 0, or -1 when it is not running (any more). */
static int vm_watch(struct vmb *b)
{
    int fd = (int)syscall(SYS_pidfd_open, b->qemu_pid, 0);

    if (fd < 0) {
        return -1;
    }
    /* The pid may have been reused between our check and pidfd_open: check again. */
    if (!vm_qemu_runs(b)) {
        (void)close(fd); /* a pidfd */
        return -1;
    }
    b->pidfd = fd;
    int rc = uv_poll_init(b->sb->g->loop, &b->poll, fd);
    if (rc == 0) {
        b->poll.data = b;
        b->poll_live = true;
        b->handles++;
        rc = uv_poll_start(&b->poll, UV_READABLE, vm_poll_cb);
    }
    if (rc != 0) {
        gw_log("%s: watching QEMU %d: %s", b->sb->id, (int)b->qemu_pid, uv_strerror(rc));
        vm_unwatch(b);
        return -1;
    }
    return 0;
}

/* --- stopping ------------------------------------------------------------------------------- */

static void vm_stopped(struct vmb *b)
{
    vm_unwatch(b);
    vm_kill_qemu(b); /* sbx-vm --stop kills a stuck QEMU itself; this is the backstop */
    if (b->sb != NULL) {
        gw_sandbox_stopped(b->sb);
    }
}

static void vm_stop_exit_cb(uv_process_t *p, int64_t status, int signo)
{
    struct vmb *b = p->data;

    if (b->sb != NULL && (status != 0 || signo != 0)) {
        gw_log("%s: sbx-vm --stop: exit %" PRId64 " signal %d", b->sb->id, status, signo);
    }
    vm_close(b, (uv_handle_t *)&b->stop, &b->stop_live);
    vm_stopped(b);
}

static void vm_run_stop(struct vmb *b)
{
    struct gw *g = b->sb->g;
    char *args[] = { (char *)g->opt.sbx_vm, "--stop", b->dir, NULL };
    uv_stdio_container_t stdio[3];
    uv_process_options_t po = { 0 };

    int logfd = open(b->log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    stdio[0].flags = UV_IGNORE;
    stdio[1].flags = logfd >= 0 ? UV_INHERIT_FD : UV_IGNORE;
    stdio[1].data.fd = logfd;
    stdio[2] = stdio[1];
    po.file = g->opt.sbx_vm;
    po.args = args;
    po.stdio = stdio;
    po.stdio_count = 3;
    po.exit_cb = vm_stop_exit_cb;
    po.flags = UV_PROCESS_DETACHED;
    int rc = uv_spawn(g->loop, &b->stop, &po);
    if (logfd >= 0) {
        (void)close(logfd); /* the child has its copy */
    }
    b->stop.data = b;
    b->handles++;
    b->stop_live = true;
    if (rc != 0) {
        gw_log("%s: spawn %s --stop: %s; killing QEMU", b->sb->id, g->opt.sbx_vm, uv_strerror(rc));
        vm_close(b, (uv_handle_t *)&b->stop, &b->stop_live);
        vm_stopped(b);
    }
}

static void vm_stop(struct gw_sandbox *sb)
{
    struct vmb *b = sb->backend;

    if (b->stopping) {
        return;
    }
    b->stopping = true;
    if (b->booting) {
        /* Still booting: sbx-vm powers the VM off on SIGTERM; the boot's end reports. */
        if (!b->boot_exited) {
            int rc = uv_process_kill(&b->boot, SIGTERM);
            if (rc != 0) {
                gw_log("%s: SIGTERM sbx-vm: %s", sb->id, uv_strerror(rc));
            }
        }
        return;
    }
    vm_run_stop(b);
}

/* --- booting -------------------------------------------------------------------------------- */

static void vm_boot_done(struct vmb *b)
{
    char tail[2048];
    char err[512];
    char why[4096];

    if (!b->boot_exited || !b->out_ended || !b->booting) {
        return;
    }
    b->booting = false;
    if (b->sb == NULL) {
        return;
    }
    if (b->stopping) {
        /* Killed while booting. If sbx-vm made it all the same, power the VM off properly. */
        if (b->boot_status == 0 && b->qemu_pid > 0 && vm_qemu_runs(b)) {
            vm_run_stop(b);
        } else {
            vm_stopped(b);
        }
        return;
    }
    if (b->boot_status == 0 && b->addr[0] != '\0' && b->qemu_pid > 0 && vm_watch(b) == 0) {
        gw_sandbox_booted(b->sb, b->addr, NULL);
        return;
    }
    /* sbx-vm --keep leaves QEMU running when the boot times out: make sure it is gone. */
    vm_kill_qemu(b);
    vm_console_tail(b, tail, sizeof tail);
    gw_file_tail(b->log, 2, err, sizeof err); /* sbx-vm's error and where the log is */
    if (b->boot_status == 0) {
        (void)snprintf(why, sizeof why,
                       "VM failed to boot (sbx-vm printed no address, or QEMU "
                       "is gone): %s\n%s",
                       err, tail);
    } else {
        (void)snprintf(why, sizeof why, "VM failed to boot (sbx-vm exit %" PRId64 "): %s\n%s",
                       b->boot_status, err, tail);
    }
    gw_sandbox_booted(b->sb, NULL, why);
}

static void vm_boot_exit_cb(uv_process_t *p, int64_t status, int signo)
{
    struct vmb *b = p->data;

    b->boot_exited = true;
    b->boot_status = signo != 0 ? 128 + signo : status;
    vm_close(b, (uv_handle_t *)&b->boot, &b->boot_live);
    vm_boot_done(b);
}

static void vm_line(struct vmb *b, const char *line)
{
    if (strncmp(line, "SBX_ADDR=", 9) == 0) {
        (void)snprintf(b->addr, sizeof b->addr, "%s", line + 9);
    } else if (strncmp(line, "SBX_VM_PID=", 11) == 0) {
        long pid = strtol(line + 11, NULL, 10);
        b->qemu_pid = pid > 1 && pid < INT32_MAX ? (pid_t)pid : 0;
    }
    /* SBX_VM_DIR is the run dir we chose. */
}

static void vm_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct vmb *b = h->data;
    (void)suggested;
    if (b->linelen >= sizeof b->line - 1) {
        b->linelen = 0; /* a line longer than any sbx-vm prints: drop it */
        b->line_overflow = true;
    }
    buf->base = b->line + b->linelen;
    buf->len = sizeof b->line - 1 - b->linelen;
}

static void vm_read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct vmb *b = s->data;
    (void)buf;

    if (n < 0) {
        vm_close(b, (uv_handle_t *)&b->out, &b->out_live);
        b->out_ended = true;
        vm_boot_done(b);
        return;
    }
    b->linelen += (size_t)n;
    char *start = b->line;
    char *nl;
    while ((nl = memchr(start, '\n', b->linelen - (size_t)(start - b->line))) != NULL) {
        *nl = '\0';
        if (!b->line_overflow) {
            vm_line(b, start);
        }
        b->line_overflow = false;
        start = nl + 1;
    }
    size_t rest = b->linelen - (size_t)(start - b->line);
    memmove(b->line, start, rest);
    b->linelen = rest;
}

static int vm_mkdirs(struct gw *g, struct vmb *b, const char *id, char *why, size_t whylen)
{
    char vms[PATH_MAX];

    if (snprintf(vms, sizeof vms, "%s/vms", g->opt.data_dir) >= (int)sizeof vms ||
        snprintf(b->dir, sizeof b->dir, "%s/%s", vms, id) >= (int)sizeof b->dir ||
        snprintf(b->log, sizeof b->log, "%s/boot.log", b->dir) >= (int)sizeof b->log) {
        (void)snprintf(why, whylen, "data directory path too long");
        return -1;
    }
    if ((mkdir(vms, 0700) < 0 && errno != EEXIST) || mkdir(b->dir, 0700) < 0) {
        (void)snprintf(why, whylen, "mkdir %s: %s", b->dir, strerror(errno));
        return -1;
    }
    return 0;
}

static int vm_start(struct gw_sandbox *sb, char *why, size_t whylen)
{
    struct gw *g = sb->g;
    struct vmb *b = calloc(1, sizeof *b);
    char mem[32];

    if (b == NULL) {
        (void)snprintf(why, whylen, "out of memory");
        return -1;
    }
    b->pidfd = -1;
    if (vm_mkdirs(g, b, sb->id, why, whylen) < 0) {
        free(b);
        return -1;
    }
    if (sb->memory_mb != 0) {
        (void)snprintf(mem, sizeof mem, "%" PRIu64 "M", sb->memory_mb);
    } else {
        (void)snprintf(mem, sizeof mem, "%s", g->opt.mem);
    }
    char *args[] = { (char *)g->opt.sbx_vm, "--keep", "--run-dir", b->dir, "--mem", mem,
                     (char *)g->opt.image,  NULL };
    int logfd = open(b->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (logfd < 0) {
        (void)snprintf(why, whylen, "%s: %s", b->log, strerror(errno));
        free(b);
        return -1;
    }
    int rc = uv_pipe_init(g->loop, &b->out, 0);
    if (rc != 0) {
        (void)close(logfd); /* nothing written */
        (void)snprintf(why, whylen, "pipe: %s", uv_strerror(rc));
        free(b);
        return -1;
    }
    b->sb = sb;
    sb->backend = b;
    b->out.data = b;
    b->out_live = true;
    b->handles++;

    uv_stdio_container_t stdio[3];
    uv_process_options_t po = { 0 };
    stdio[0].flags = UV_IGNORE;
    stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[1].data.stream = (uv_stream_t *)&b->out;
    stdio[2].flags = UV_INHERIT_FD;
    stdio[2].data.fd = logfd;
    po.file = g->opt.sbx_vm;
    po.args = args;
    po.stdio = stdio;
    po.stdio_count = 3;
    po.exit_cb = vm_boot_exit_cb;
    /* Its own session: the VM (and sbx-vm's socket proxy) outlive the gateway. */
    po.flags = UV_PROCESS_DETACHED;
    rc = uv_spawn(g->loop, &b->boot, &po);
    (void)close(logfd); /* the child has its copy */
    b->boot.data = b;
    b->handles++;
    b->boot_live = true;
    b->booting = rc == 0;
    if (rc != 0) {
        (void)snprintf(why, whylen, "spawn %s: %s", g->opt.sbx_vm, uv_strerror(rc));
        vm_close(b, (uv_handle_t *)&b->boot, &b->boot_live);
        vm_close(b, (uv_handle_t *)&b->out, &b->out_live);
        b->sb = NULL; /* freed by the last close */
        sb->backend = NULL;
        return -1;
    }
    rc = uv_read_start((uv_stream_t *)&b->out, vm_alloc_cb, vm_read_cb);
    if (rc != 0) {
        /* Without its output we cannot know the address: treat as a failed boot. */
        gw_log("%s: reading sbx-vm: %s", sb->id, uv_strerror(rc));
        vm_close(b, (uv_handle_t *)&b->out, &b->out_live);
        b->out_ended = true;
    }
    return 0;
}

static void vm_save(const struct gw_sandbox *sb, json_t *obj)
{
    const struct vmb *b = sb->backend;

    if (json_object_set_new(obj, "run_dir", json_string(b->dir)) < 0 ||
        json_object_set_new(obj, "qemu_pid", json_integer(b->qemu_pid)) < 0) {
        gw_log("%s: state: out of memory", sb->id);
    }
}

static int vm_restore(struct gw_sandbox *sb, json_t *obj)
{
    const char *dir = json_string_value(json_object_get(obj, "run_dir"));
    json_t *pid = json_object_get(obj, "qemu_pid");

    if (dir == NULL || !json_is_integer(pid) || json_integer_value(pid) <= 1 ||
        json_integer_value(pid) >= INT32_MAX) {
        return 0;
    }
    struct vmb *b = calloc(1, sizeof *b);
    if (b == NULL) {
        return 0;
    }
    b->pidfd = -1;
    b->sb = sb;
    b->qemu_pid = (pid_t)json_integer_value(pid);
    (void)snprintf(b->dir, sizeof b->dir, "%s", dir);
    (void)snprintf(b->log, sizeof b->log, "%s/boot.log", dir);
    sb->backend = b;
    if (!vm_qemu_runs(b) || vm_watch(b) < 0) {
        /* Not ours any more: nothing to watch, nothing to stop. */
        sb->backend = NULL;
        free(b);
        return 0;
    }
    return 1;
}

static void vm_release(struct gw_sandbox *sb)
{
    struct vmb *b = sb->backend;

    sb->backend = NULL;
    b->sb = NULL;
    vm_unwatch(b);
    /* A running sbx-vm (boot or stop) is detached and finishes on its own; we stop listening. */
    vm_close(b, (uv_handle_t *)&b->out, &b->out_live);
    vm_close(b, (uv_handle_t *)&b->boot, &b->boot_live);
    vm_close(b, (uv_handle_t *)&b->stop, &b->stop_live);
    if (b->handles == 0) {
        free(b);
    }
}

static const struct gw_backend_ops vm_ops = {
    .name = "vm",
    .start = vm_start,
    .stop = vm_stop,
    .save = vm_save,
    .restore = vm_restore,
    .release = vm_release,
};

/* --- addr ----------------------------------------------------------------------------------- */

/* The addr backend keeps no state; sb->backend points at this marker while the sandbox runs. */
static char addr_marker;

static int addr_start(struct gw_sandbox *sb, char *why, size_t whylen)
{
    const char *addr = sb->g->opt.backend + strlen("addr:");

    (void)why;
    (void)whylen;
    sb->backend = &addr_marker;
    /* Nothing to boot: READY before gw_sandbox_create returns. */
    gw_sandbox_booted(sb, addr, NULL);
    return 0;
}

static void addr_stop(struct gw_sandbox *sb)
{
    /* The agent is shared by every sandbox: it is not powered off. */
    gw_sandbox_stopped(sb);
}

static void addr_save(const struct gw_sandbox *sb, json_t *obj)
{
    (void)sb;
    (void)obj;
}

static int addr_restore(struct gw_sandbox *sb, json_t *obj)
{
    (void)obj;
    /* The shared agent is assumed to still be there; a session finds out if it is not. */
    (void)snprintf(sb->addr, sizeof sb->addr, "%s", sb->g->opt.backend + strlen("addr:"));
    sb->backend = &addr_marker;
    return 1;
}

static void addr_release(struct gw_sandbox *sb)
{
    sb->backend = NULL;
}

static const struct gw_backend_ops addr_ops = {
    .name = "addr",
    .start = addr_start,
    .stop = addr_stop,
    .save = addr_save,
    .restore = addr_restore,
    .release = addr_release,
};

const struct gw_backend_ops *gw_backend_get(const struct gw *g)
{
    if (g->opt.backend != NULL && strncmp(g->opt.backend, "addr:", 5) == 0) {
        return &addr_ops;
    }
    return &vm_ops;
}
