/*
 * Processes: spawn with a precise error for every failing step, reap our own children only (never
 * waitpid(-1): orphans belong to init), keep exit statuses until waited on, and report an exit
 * only after its output ended or a drain deadline passed.
 */
#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <link.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"
#include "conn.h"
#include "env.h"
#include "path.h"
#include "sbx/schema.h"
#include "seccomp.h"
#include "stream.h"
#include "strv.h"

#if defined(__SANITIZE_ADDRESS__)
#define SBX_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SBX_ASAN 1
#endif
#endif
#ifdef SBX_ASAN
#include <sanitizer/asan_interface.h>
#endif

#define DEFAULT_PATH       "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#define SPAWN_CHILD_STACK  (64u << 10) /* the child's stack while it shares our memory */
#define SPAWN_THREAD_STACK (64u << 10) /* the spawner thread's, plus the static TLS */
#define SPAWN_GUARD        4096u       /* below each of the two stacks */
#ifndef SBX_ASAN
#define SPAWN_MAPS_KEEP 1u /* stack mappings kept when spawner threads end, for the next */
#else
/* None in a sanitizer build: its own overhead per thread already costs what a spare would hold,
 * and its tests bound the agent's memory, not its speed. */
#define SPAWN_MAPS_KEEP 0u
#endif
#define SPAWN_KILL_RETRY_MS 50u /* a killed start: kill again until clone returned */
/* A spawner thread without a start for this long ends: long enough to serve a client that starts
 * one process after another (a start every few ms), short enough that an idle agent soon has no
 * thread but the loop's (and libuv's pool). */
#define SPAWN_IDLE_MS 20u

enum { IO_NULL, IO_PIPE, IO_MERGE };

/* Everything the child needs, prepared in the parent so the child only makes syscalls. */
struct spawn_req {
    char **argv;
    char **envp;
    const char *path; /* PATH the child searches for argv[0]; NULL: argv[0] is a path */
    char *cwd;
    bool set_user; /* switch to uid, gid and groups */
    uid_t uid;
    gid_t gid;
    int ngroups;
    gid_t groups[SBX_GROUPS_MAX];
    int io_in, io_out, io_err;
    uint64_t timeout_ms;
    int kill_signal;
    uint32_t kill_grace_ms;
    uint32_t drain_ms;
    char tag[SBX_TAG_MAX + 1];
    bool internal; /* an agent_proc_start_internal process */
    bool pty;
    bool pty_stdin_only; /* REPL: the terminal is stdin only; stdout/stderr are pipes */
    struct winsize ws;
    char pty_path[64];
    /* Every fd below is owned by the request (-1: none) and closed by spawn_req_free. */
    int fds[3];       /* the child's stdio, its ends of the pipes (-1: /dev/null, or the PTY) */
    int extra_fds[2]; /* become fds 3 and 4 in the child */
    int agent_fds[3]; /* the agent's ends: stdin to write, stdout (or PTY master), stderr */
    struct agent_limits limits; /* of its cgroup (cgroup.h) */
    struct agent_cg cg;         /* made by spawn_start; its procs_fd is the child's to join */
    struct rlimit nofile;       /* RLIMIT_NOFILE the child gets back (a->nofile) */
    int devnull;                /* a->devnull, not owned (-1: the child opens one) */
};

/* What a child that fails before exec leaves in the memory it shares with the agent. */
struct child_err {
    int stage; /* -1: none */
    int err;
};

static const char *const stage_names[] = { "pipe",   "fork",    "cwd",    "user",  "setgroups",
                                           "setgid", "setuid",  "exec",   "stdio", "setsid",
                                           "pty",    "seccomp", "cgroup", "rlimit" };
enum {
    ST_PIPE,
    ST_FORK,
    ST_CWD,
    ST_USER,
    ST_SETGROUPS,
    ST_SETGID,
    ST_SETUID,
    ST_EXEC,
    ST_STDIO,
    ST_SETSID,
    ST_PTY,
    ST_SECCOMP,
    ST_CGROUP,
    ST_RLIMIT
};

/* An empty request: nothing owned, every fd -1. */
static void spawn_req_init(struct spawn_req *r)
{
    memset(r, 0, sizeof(*r));
    for (int i = 0; i < 3; i++) {
        r->fds[i] = r->agent_fds[i] = -1;
    }
    r->extra_fds[0] = r->extra_fds[1] = r->devnull = -1;
    r->cg = AGENT_CG_NONE;
}

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

/* Close the child's ends (stdout and stderr may be one fd); the child has its copies by now. */
static void spawn_req_close_child_fds(struct spawn_req *r)
{
    if (r->fds[2] == r->fds[1]) {
        r->fds[2] = -1;
    }
    for (int i = 0; i < 3; i++) {
        close_fd(&r->fds[i]);
    }
    close_fd(&r->extra_fds[0]);
    close_fd(&r->extra_fds[1]);
    agent_cg_joined(&r->cg);
}

/* Free what @r owns; it stays an empty request. */
static void spawn_req_free(struct spawn_req *r)
{
    agent_strv_free(r->argv);
    agent_strv_free(r->envp);
    free(r->cwd);
    r->argv = r->envp = NULL;
    r->cwd = NULL;
    spawn_req_close_child_fds(r);
    for (int i = 0; i < 3; i++) {
        close_fd(&r->agent_fds[i]);
    }
    agent_cg_release(&r->cg); /* a start that failed: its child is gone, reaped */
}

/* --- params ------------------------------------------------------------------------------- */

/*
 * The params are read and checked by the schema (sbx_spawn_params_read, protocol/schema_proc.c),
 * the one definition of a valid request that clients share: every BAD_PARAM comes from there.
 * What follows turns a valid request into a spawn_req with what only the guest can tell: the
 * user's passwd entry, the base environment, argv[0] on PATH (then the PTY, in agent_proc_spawn).
 */

#define PTY_ROWS_DEFAULT 24
#define PTY_COLS_DEFAULT 80
#define PTY_TERM_DEFAULT "xterm-256color"

/* The agent's stdio mode for a schema mode; an absent one is @def. */
static int io_mode(enum sbx_stdio m, int def)
{
    switch (m) {
    case SBX_STDIO_PIPE:
        return IO_PIPE;
    case SBX_STDIO_NULL:
        return IO_NULL;
    case SBX_STDIO_STDOUT:
        return IO_MERGE;
    default:
        return def;
    }
}

/* proc.kill's signal: a name ("TERM", "SIGTERM") or a number. */
/*
 * Where the child finds argv[0] (§14.1): a name with a '/' is used as it is; any other is searched
 * on the PATH of @r's environment (or the default) by the child itself, after it switched to the
 * target user (child_execvp), so a directory or file only root may use is not found for a user.
 */
static int spawn_path(struct spawn_req *r, struct sbx_err *err)
{
    const char *name = r->argv[0];

    if (name[0] == '\0') {
        return sbx_err_sys(err, ENOENT, "exec", "exec \"\"");
    }
    if (strchr(name, '/') != NULL) {
        if (strlen(name) >= SBX_PATH_MAX) {
            return sbx_err_sys(err, ENAMETOOLONG, "exec", "exec \"%s\"", name);
        }
        r->path = NULL;
        return 0;
    }
    r->path = agent_env_lookup(r->envp, "PATH"); /* in r->envp: lives as long as the request */
    if (r->path == NULL || r->path[0] == '\0') {
        r->path = DEFAULT_PATH;
    }
    return 0;
}

/*
 * The identity @sp asks for, into @u (§14.2 "Identity defaults"): a user's passwd entry and
 * groups, or a uid's entry if it has one, or the agent's own identity; an explicit gid or groups
 * override. 1 when there is one to switch to, 0 when none of user, uid, gid, groups is given (@u
 * untouched then), or -1 with @err.
 */
static int spawn_identity(struct agent *a, const struct sbx_spawn_params *sp, struct agent_user *u,
                          struct sbx_err *err)
{
    if (sp->user != NULL) {
        char name[SBX_USER_MAX + 1];
        memcpy(name, sp->user, sp->user_len);
        name[sp->user_len] = '\0';
        if (agent_user_lookup(a->passwd_root, name, u, err) < 0) {
            return -1;
        }
    } else if (sp->has_uid) {
        (void)agent_user_by_uid(a->passwd_root, (uid_t)sp->uid, u);
    } else if (sp->has_gid || sp->has_groups) {
        int n;
        memset(u, 0, sizeof(*u));
        n = getgroups(SBX_GROUPS_MAX, u->groups);
        if (n < 0) {
            return sbx_err_sys(err, errno, "user", "getgroups");
        }
        u->uid = getuid();
        u->gid = getgid();
        u->ngroups = n;
    } else {
        return 0;
    }
    if (sp->has_gid) {
        u->gid = (gid_t)sp->gid;
    }
    if (sp->has_groups) {
        u->ngroups = (int)sp->ngroups;
        for (uint32_t i = 0; i < sp->ngroups; i++) {
            u->groups[i] = (gid_t)sp->groupsv->via.array.ptr[i].via.u64;
        }
    }
    return 1;
}

/* "NAME=value" into the next free slot of @extra; -1 when out of memory. */
static int extra_var(char **extra, int *n, const char *name, const char *value, size_t len)
{
    char *s;

    if (asprintf(&s, "%s=%.*s", name, (int)len, value) < 0) {
        return -1;
    }
    extra[(*n)++] = s;
    return 0;
}

/*
 * What proc.spawn and repl.start share, from params the schema has read: the working directory,
 * the identity, the environment in the layers of §14.1 (base unless clear_env, the user's HOME,
 * USER and LOGNAME, @term as TERM when not NULL, then env) in r->envp, and where the child looks
 * for r->argv[0] (set by the caller): spawn_path.
 */
static int spawn_prepare(struct agent *a, const struct sbx_spawn_params *sp, const char *term,
                         size_t term_len, struct spawn_req *r, struct sbx_err *err)
{
    char *extra[5] = { NULL, NULL, NULL, NULL, NULL };
    struct agent_user u;
    int n = 0, rc = 0, id;

    if (agent_cgroup_limits(a, sp, &r->limits, err) < 0) {
        return -1;
    }
    /* The default is "/", not wherever the agent happened to be started (PROTOCOL.md §14.2). */
    r->cwd = sp->cwd != NULL ? strndup(sp->cwd, sp->cwd_len) : strdup("/");
    if (r->cwd == NULL) {
        return sbx_err_oom(err);
    }
    id = spawn_identity(a, sp, &u, err);
    if (id < 0) {
        return -1;
    }
    if (id > 0) {
        r->set_user = true;
        r->uid = u.uid;
        r->gid = u.gid;
        r->ngroups = u.ngroups;
        memcpy(r->groups, u.groups, sizeof(r->groups));
        if (u.home[0] != '\0') {
            rc |= extra_var(extra, &n, "HOME", u.home, strlen(u.home));
        }
        if (u.name[0] != '\0') {
            rc |= extra_var(extra, &n, "USER", u.name, strlen(u.name));
            rc |= extra_var(extra, &n, "LOGNAME", u.name, strlen(u.name));
        }
    }
    if (term != NULL) {
        rc |= extra_var(extra, &n, "TERM", term, term_len);
    }
    if (rc == 0) {
        r->envp = agent_env_build(a, sp->clear_env, sp->envv, extra);
    }
    for (int i = 0; i < n; i++) {
        free(extra[i]);
    }
    if (r->envp == NULL) {
        return sbx_err_oom(err);
    }
    return spawn_path(r, err);
}

static int parse_spawn(struct agent_conn *c, const msgpack_object *params, struct spawn_req *r,
                       struct sbx_err *err)
{
    struct sbx_spawn_params sp;
    const char *term = NULL;
    size_t term_len = 0;

    spawn_req_init(r);
    if (sbx_spawn_params_read(params, &sp, err) < 0) {
        return -1;
    }
    if (sp.argvv != NULL) {
        r->argv = agent_strv_from_array(sp.argvv, "argv", SBX_ARG_MAX, 0, err); /* checked */
    } else if ((r->argv = agent_strv_sh(sp.command, sp.command_len)) == NULL) {
        sbx_err_oom(err);
    }
    if (r->argv == NULL) {
        return -1;
    }
    r->io_in = io_mode(sp.stdin_mode, IO_NULL);
    r->io_out = io_mode(sp.stdout_mode, IO_PIPE);
    r->io_err = io_mode(sp.stderr_mode, IO_PIPE);
    r->timeout_ms = sp.timeout_ms;
    r->kill_signal = sp.kill_signal != 0 ? sp.kill_signal : SIGTERM;
    r->kill_grace_ms = sp.has_kill_grace_ms ? sp.kill_grace_ms : SBX_KILL_GRACE_MS_DEFAULT;
    r->drain_ms = sp.has_drain_ms ? sp.drain_ms : SBX_DRAIN_MS_DEFAULT;
    if (sp.tag != NULL) {
        memcpy(r->tag, sp.tag, sp.tag_len); /* at most SBX_TAG_MAX bytes; r is zeroed */
    }
    if (sp.pty != NULL) {
        r->pty = true;
        r->ws.ws_row = (unsigned short)(sp.pty->rows != 0 ? sp.pty->rows : PTY_ROWS_DEFAULT);
        r->ws.ws_col = (unsigned short)(sp.pty->cols != 0 ? sp.pty->cols : PTY_COLS_DEFAULT);
        term = sp.pty->term != NULL ? sp.pty->term : PTY_TERM_DEFAULT;
        term_len = sp.pty->term != NULL ? sp.pty->term_len : strlen(PTY_TERM_DEFAULT);
    }
    return spawn_prepare(c->a, &sp, term, term_len, r, err);
}

/* --- the child ---------------------------------------------------------------------------- */

/*
 * The child shares the agent's memory (CLONE_VM|CLONE_VFORK: no page tables copied, no
 * copy-on-write faults in the agent afterwards; the spawner thread that cloned it waits until
 * exec or exit). So it only makes raw system calls on data prepared by the parent: no malloc, no
 * stdio, nothing that takes a libc lock, and the identity switch goes through syscall() because
 * glibc's setuid() would signal the agent's other threads to switch theirs too. It shares the
 * spawner thread's TLS (errno) and nothing else of a thread that runs meanwhile.
 */

/* Leave the failing step and @e where the spawner thread reads them, and end. */
static __attribute__((noreturn)) void child_fail(struct child_err *ce, int stage, int e)
{
    ce->err = e;
    ce->stage = stage;
    _exit(127);
}

/* Signals whose disposition the agent changed (SIG_IGN survives exec; a handler must not run in
 * a child that shares our memory). Found once, at the first spawn (on the loop, before the first
 * spawner thread): the agent sets its handlers at startup (agent/main.c), before it accepts any
 * request. */
static int reset_sigs[NSIG];
static int nreset_sigs = -1;

static void find_changed_signals(void)
{
    nreset_sigs = 0;
    for (int sig = 1; sig < NSIG; sig++) {
        struct sigaction cur;
        if (sigaction(sig, NULL, &cur) == 0 && cur.sa_handler != SIG_DFL) {
            reset_sigs[nreset_sigs++] = sig;
        }
    }
}

/*
 * execve argv[0] as execvp(3) does, with the rights of the user the child now is: a name with a
 * '/' directly; any other in each PATH entry in turn (an empty entry is the working directory),
 * going on after EACCES (remembered), ENOENT, ENOTDIR, ESTALE, ENODEV and ETIMEDOUT, stopping at
 * any other error. No fallback to /bin/sh on ENOEXEC (§14.1). Candidates are built on the child's
 * own stack: nothing here allocates. Returns the errno that ends the search.
 */
static int child_execvp(const struct spawn_req *r)
{
    const char *name = r->argv[0], *dir = r->path;
    char exe[SBX_PATH_MAX];
    size_t nlen;
    bool denied = false;

    if (dir == NULL) {
        execve(name, r->argv, r->envp);
        return errno;
    }
    nlen = strlen(name);
    for (;;) {
        const char *end = dir;
        size_t dlen;

        while (*end != '\0' && *end != ':') {
            end++;
        }
        dlen = (size_t)(end - dir);
        if (dlen + 1 + nlen < sizeof(exe)) { /* longer ones cannot be a path: skipped */
            memcpy(exe, dir, dlen);
            exe[dlen] = '/';
            memcpy(exe + dlen + (dlen > 0), name, nlen + 1);
            execve(exe, r->argv, r->envp);
            switch (errno) {
            case EACCES:
                denied = true;
                break;
            case ENOENT:
            case ENOTDIR:
            case ESTALE:
            case ENODEV:
            case ETIMEDOUT:
                break;
            default:
                return errno;
            }
        }
        if (*end == '\0') {
            return denied ? EACCES : ENOENT;
        }
        dir = end + 1;
    }
}

/* Runs between clone and exec, in the agent's memory: raw system calls only (see above). Every
 * signal is blocked on entry (the spawner thread runs with all of them blocked). */
static __attribute__((noreturn)) void child_exec(const struct spawn_req *r, struct child_err *ce)
{
    sigset_t none;
    struct sigaction dfl;
    int fds[3] = { r->fds[0], r->fds[1], r->fds[2] };
    int devnull = r->devnull;
    int extra[2] = { -1, -1 };
    int oom;

    /* Back to a clean signal state: the agent ignores SIGPIPE and libuv has handlers. */
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    for (int i = 0; i < nreset_sigs; i++) {
        (void)sigaction(reset_sigs[i], &dfl, NULL);
    }
    sigemptyset(&none);
    (void)sigprocmask(SIG_SETMASK, &none, NULL);

    /* Into its own cgroup first ("0": the writer), before it does anything of the workload's:
     * everything from here on is accounted and limited there (cgroup.c). */
    if (r->cg.procs_fd >= 0 && write(r->cg.procs_fd, "0", 1) != 1) {
        child_fail(ce, ST_CGROUP, errno);
    }
    if (setsid() < 0) {
        child_fail(ce, ST_SETSID, errno);
    }
    if (r->pty) {
        /* The slave becomes stdio and, through TIOCSCTTY, the controlling terminal of this new
         * session; our process group is its foreground group. */
        int slave = open(r->pty_path, O_RDWR | O_CLOEXEC);
        if (slave < 0 || ioctl(slave, TIOCSCTTY, 0) < 0) {
            child_fail(ce, ST_PTY, errno);
        }
        fds[0] = slave;
        if (!r->pty_stdin_only) {
            fds[1] = fds[2] = slave;
        }
    }
    /* Extra fds go above the stdio range first, so no dup2 below clobbers one still needed. */
    for (int i = 0; i < 2; i++) {
        if (r->extra_fds[i] >= 0 && (extra[i] = fcntl(r->extra_fds[i], F_DUPFD_CLOEXEC, 10)) < 0) {
            child_fail(ce, ST_STDIO, errno);
        }
    }
    for (int i = 0; i < 3; i++) {
        if (fds[i] < 0) {
            if (devnull < 0) {
                devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
                if (devnull < 0) {
                    child_fail(ce, ST_STDIO, errno);
                }
            }
            fds[i] = devnull;
        }
    }
    /* dup2 clears O_CLOEXEC on the target; the sources stay close-on-exec. */
    for (int i = 0; i < 3; i++) {
        if (fds[i] == i) {
            if (fcntl(i, F_SETFD, 0) < 0) {
                child_fail(ce, ST_STDIO, errno);
            }
        } else if (dup2(fds[i], i) < 0) {
            child_fail(ce, ST_STDIO, errno);
        }
    }
    for (int i = 0; i < 2; i++) {
        if (extra[i] >= 0 && dup2(extra[i], 3 + i) < 0) {
            child_fail(ce, ST_STDIO, errno);
        }
    }
    /* The agent runs with oom_score_adj -1000 (init's); its children must be killable again. */
    if ((oom = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC)) >= 0) {
        (void)!write(oom, "0", 1);
        close(oom);
    }
    /* The per-workload seccomp filter is in force already: the spawner thread that cloned this
     * child loaded it (worker_main), and clone copied it. */
    /* Identity first, so the working directory and PATH are checked with the target user's
     * rights. From here a process of that user may stop this child: the spawner thread waits,
     * never the loop (agent_proc_start). */
    if (r->set_user) {
        if (syscall(SYS_setgroups, (size_t)r->ngroups, r->groups) < 0) {
            child_fail(ce, ST_SETGROUPS, errno);
        }
        if (syscall(SYS_setgid, r->gid) < 0) {
            child_fail(ce, ST_SETGID, errno);
        }
        if (syscall(SYS_setuid, r->uid) < 0) {
            child_fail(ce, ST_SETUID, errno);
        }
    }
    /* As the user, and never through a magic link: this child's /proc/self/cwd is the agent's
     * working directory, and its /proc/self/fd/N are copies of every fd the agent has open
     * until the exec. */
    {
        int cwd = agent_path_open(AT_FDCWD, r->cwd, O_PATH | O_DIRECTORY | O_CLOEXEC, 0);

        if (cwd < 0 || fchdir(cwd) < 0) {
            child_fail(ce, ST_CWD, errno);
        }
        (void)close(cwd); /* an O_PATH fd: nothing to report */
    }
    /* The fd limit the agent found, not the one it raised for itself (main.c): the image's.
     * Last, after every fd this child opens (the set-up above, the working directory), which
     * must not fail on the lower limit: the table is a copy of the agent's, whose fds may fill
     * it. A user may lower its soft limit, and the hard one is the agent's own. */
    if (r->nofile.rlim_max != 0 && setrlimit(RLIMIT_NOFILE, &r->nofile) < 0) {
        child_fail(ce, ST_RLIMIT, errno);
    }
    child_fail(ce, ST_EXEC, child_execvp(r));
}

/* --- the parent --------------------------------------------------------------------------- */

/* A connection that attached to a process (proc.attach) and is owed its proc.exit; the spawning
 * connection is the process's owner instead. Freed once the exit went out, or the connection. */
struct agent_attach {
    struct agent_link link; /* in proc->attached */
    struct agent_conn_ref ref;
    struct agent_proc *proc;
};

static void timer_close_cb(uv_handle_t *h)
{
    agent_proc_handle_closed(h->data);
}

static void proc_free_if_unused(struct agent_proc *p)
{
    if (!agent_proc_freeing(p) || p->handles_open > 0) {
        return;
    }
    agent_list_del(&p->link);
    agent_conn_ref_del(&p->owner);
    p->a->nprocs--;
    agent_cg_release(&p->cg);
    agent_pipe_ring_free(&p->out);
    agent_pipe_ring_free(&p->err);
    agent_strv_free(p->argv);
    free(p);
}

void agent_proc_handle_closed(struct agent_proc *p)
{
    p->handles_open--;
    proc_free_if_unused(p);
}

static void attach_free(struct agent_attach *at);
static struct agent_conn *output_holder(const struct agent_proc *p);
static bool exit_recipient(struct agent_proc *p, const struct agent_conn *c);
static bool holds_output(const struct agent_proc *p, const struct agent_conn *c);
static void answer_waiters(struct agent_proc *p);

/* Forget a finished process: close what is left, free when the last handle has closed. */
static void proc_release(struct agent_proc *p)
{
    struct agent_pipe *outs[2] = { &p->out, &p->err };
    struct sbx_err err;

    if (agent_proc_freeing(p)) {
        return;
    }
    p->state = AGENT_PROC_FREEING;
    /* Nobody is owed proc.exit any more; a stream still replaying the output stops. */
    agent_conn_ref_del(&p->owner);
    while (!agent_list_empty(&p->attached)) {
        attach_free(agent_container_of(p->attached.next, struct agent_attach, link));
    }
    answer_waiters(p); /* those that waited for their connection's proc.exit */
    sbx_err_set(&err, SBX_E_CANCELLED, "process %llu was released", (unsigned long long)p->id);
    for (int i = 0; i < 2; i++) {
        if (outs[i]->stream != NULL) {
            agent_stream_cancel(outs[i]->stream, &err);
        }
    }
    /* A stdin stream kept open until its connection's output went out (proc_report): that
     * proc.exit will not be sent now, and the stream must not outlive the process. */
    if (p->in.stream != NULL) {
        agent_stream_cancel(p->in.stream, &err);
    }
    agent_pipe_close(&p->in);
    agent_pipe_close(&p->out);
    agent_pipe_close(&p->err);
    uv_close((uv_handle_t *)&p->timeout_timer, timer_close_cb);
    uv_close((uv_handle_t *)&p->drain_timer, timer_close_cb);
}

static void pack_exit(msgpack_packer *pk, const struct agent_proc *p)
{
    struct sbx_exit x = {
        .id = (uint32_t)p->id,
        .pid = (uint32_t)p->pid,
        .exited = WIFEXITED(p->status),
        .code = WIFEXITED(p->status) ? WEXITSTATUS(p->status) : 0,
        .signo = WIFSIGNALED(p->status) ? WTERMSIG(p->status) : 0,
        .core = WIFSIGNALED(p->status) && WCOREDUMP(p->status),
        .duration_ns = p->end_ns - p->start_ns,
        .drained = p->drained,
        .timed_out = p->timed_out,
        .oom = p->oom,
        .stdout_bytes = p->out.total,
        .stderr_bytes = p->err.total,
        .maxrss_kb = (uint64_t)p->ru.ru_maxrss,
        .utime_us = (uint64_t)p->ru.ru_utime.tv_sec * 1000000u + (uint64_t)p->ru.ru_utime.tv_usec,
        .stime_us = (uint64_t)p->ru.ru_stime.tv_sec * 1000000u + (uint64_t)p->ru.ru_stime.tv_usec,
    };

    sbx_exit_pack(pk, &x);
}

static void waiter_close_cb(uv_handle_t *h)
{
    free(h->data);
}

/* Unlink a proc.wait waiter and free it (after its timer closed, if it has one). */
static void waiter_free(struct agent_waiter *w)
{
    agent_list_del(&w->link);
    agent_conn_ref_del(&w->ref);
    if (w->timed) {
        w->timer.data = w;
        uv_close((uv_handle_t *)&w->timer, waiter_close_cb);
    } else {
        free(w);
    }
}

/* A waiter's connection closed: nobody is left to answer. */
static void waiter_gone(struct agent_conn_ref *r)
{
    waiter_free(agent_container_of(r, struct agent_waiter, ref));
}

/* The spawning connection closed: the process runs on; owner.conn is NULL now. */
static void proc_owner_gone(struct agent_conn_ref *r)
{
    (void)r;
}

/* Answer the proc.wait requests of an exited process, except on a connection still owed its
 * proc.exit (its replay has not ended): there the exit goes first (PROTOCOL.md §9.2), and
 * agent_proc_exit_flush calls this again once it went out. */
static void answer_waiters(struct agent_proc *p)
{
    struct agent_link *l, *next;

    for (l = p->waiters.next; l != &p->waiters; l = next) {
        struct agent_waiter *w = agent_container_of(l, struct agent_waiter, link);
        msgpack_packer *pk;
        next = l->next;
        if (exit_recipient(p, w->ref.conn)) {
            continue;
        }
        pk = agent_conn_begin(w->ref.conn);
        sbx_pack_response_head(pk, w->id);
        pack_exit(pk, p);
        agent_conn_send(w->ref.conn);
        p->collected = true;
        waiter_free(w);
    }
}

/* The process exited: its open stdin stream is cancelled (EPIPE). */
static void stdin_cancel_exited(struct agent_proc *p)
{
    struct sbx_err err;

    if (p->in.stream != NULL) {
        sbx_err_sys(&err, EPIPE, "stdin", "process %llu has exited", (unsigned long long)p->id);
        agent_stream_cancel(p->in.stream, &err);
    }
}

/* Exit and output are both settled: tell the owner and every waiter (PROTOCOL.md §9.2). */
static void proc_report(struct agent_proc *p, bool drained)
{
    p->state = AGENT_PROC_DONE;
    p->drained = drained;
    uv_timer_stop(&p->timeout_timer);
    uv_timer_stop(&p->drain_timer);
    /* The process can no longer read: an open stdin stream is cancelled after the output's ends
     * and before the exit (PROTOCOL.md §9.2); while output still goes out as credit comes, the
     * cancel waits for it (agent_proc_exit_flush). */
    if (p->in.stream != NULL && !holds_output(p, p->in.stream->conn)) {
        stdin_cancel_exited(p);
    }
    agent_pipe_close(&p->in);
    agent_proc_exit_flush(p); /* answers the waiters too */
    if (p->on_done != NULL) {
        p->on_done(p);
    }
    if (p->forget) {
        proc_release(p);
    }
}

static void drain_timer_cb(uv_timer_t *t)
{
    struct agent_proc *p = t->data;
    struct agent_pipe *pipes[2] = { &p->out, &p->err };

    if (agent_pipe_busy(&p->out) || agent_pipe_busy(&p->err)) {
        uv_timer_start(&p->drain_timer, drain_timer_cb, p->drain_ms ? p->drain_ms : 1, 0);
        return;
    }
    /* Something (a background child) may still hold a pipe open: take what is there now, then
     * end the stream once that went out (as credit allows: PROTOCOL.md §9.2); later writes by
     * the holder get EPIPE. */
    for (int i = 0; i < 2; i++) {
        struct agent_pipe *pp = pipes[i];
        if (pp->open && !pp->eof) {
            pp->truncated = !agent_pipe_final_drain(pp);
            pp->eof = true;
            agent_pipe_close(pp);
            agent_pipe_update(pp); /* ends the stream now, or after the ring's last bytes */
        }
    }
    proc_report(p, !p->out.truncated && !p->err.truncated);
}

void agent_proc_check_done(struct agent_proc *p)
{
    if (agent_proc_done(p) || !agent_proc_exited(p)) {
        return;
    }
    if ((!p->out.open || p->out.eof) && (!p->err.open || p->err.eof)) {
        proc_report(p, !p->out.truncated && !p->err.truncated); /* a PTY's tail may not fit */
        return;
    }
    if (!uv_is_active((uv_handle_t *)&p->drain_timer)) {
        uv_timer_start(&p->drain_timer, drain_timer_cb, p->drain_ms ? p->drain_ms : 1, 0);
    }
}

/* Reap @p if it has exited (never waitpid(-1)). */
static void proc_poll(struct agent_proc *p)
{
    int st;
    pid_t r;

    if (agent_proc_exited(p)) {
        return;
    }
    do {
        r = wait4(p->pid, &st, WNOHANG, &p->ru);
    } while (r < 0 && errno == EINTR);
    if (r == p->pid) {
        p->state = AGENT_PROC_EXITED;
        p->status = st;
        p->end_ns = agent_now_ns();
        uv_timer_stop(&p->timeout_timer);
        p->oom = agent_cg_exited(&p->cg);
    } else if (r < 0 && errno == ECHILD) {
        /* Someone else reaped it (cannot happen unless the agent runs under a foreign reaper);
         * record what we know rather than waiting forever. */
        p->state = AGENT_PROC_EXITED;
        p->status = 0;
        p->end_ns = agent_now_ns();
        p->oom = agent_cg_exited(&p->cg);
    }
}

void agent_proc_reap(struct agent *a)
{
    struct agent_link *l;

    for (l = a->procs.next; l != &a->procs; l = l->next) {
        proc_poll(agent_container_of(l, struct agent_proc, link));
    }
    /* Checking after the loop: reporting may free nothing, but keeps iteration simple. */
    for (l = a->procs.next; l != &a->procs; l = l->next) {
        agent_proc_check_done(agent_container_of(l, struct agent_proc, link));
    }
}

static void timeout_timer_cb(uv_timer_t *t)
{
    struct agent_proc *p = t->data;

    if (agent_proc_exited(p)) {
        return;
    }
    if (!p->timed_out) {
        p->timed_out = true;
        (void)kill(-p->pid, p->kill_signal); /* ESRCH: already gone, reaping follows */
        if (p->kill_signal != SIGKILL) {
            uv_timer_start(&p->timeout_timer, timeout_timer_cb, p->kill_grace_ms, 0);
        }
        return;
    }
    /* The grace period after kill_signal passed. */
    (void)kill(-p->pid, SIGKILL);
}

/* Make room in the process table by forgetting the oldest finished process that nobody is
 * attached to: a connection replaying one still has its output and its proc.exit to come. */
static bool proc_evict_one(struct agent *a)
{
    struct agent_link *l;

    for (l = a->procs.next; l != &a->procs; l = l->next) {
        struct agent_proc *p = agent_container_of(l, struct agent_proc, link);
        if (agent_proc_done(p) && p->collected && !agent_proc_freeing(p) &&
            agent_list_empty(&p->attached) && p->out.stream == NULL && p->err.stream == NULL) {
            proc_release(p);
            return true;
        }
    }
    return false;
}

static int pipe_setup(struct agent *a, struct agent_proc *p, struct agent_pipe *pp, int fd,
                      bool input)
{
    int r;

    pp->proc = p;
    pp->is_input = input;
    r = uv_pipe_init(a->loop, &pp->handle, 0);
    if (r < 0) {
        close(fd);
        return r;
    }
    pp->handle.data = pp;
    r = uv_pipe_open(&pp->handle, fd);
    if (r < 0) {
        close(fd);
    }
    pp->open = true; /* initialised either way, so it must be closed */
    p->handles_open++;
    return r;
}

/* A slot in the process table: LIMIT (max_procs) when none can be freed. */
static int proc_slot(struct agent *a, struct sbx_err *err)
{
    if (a->nprocs >= SBX_MAX_PROCS && !proc_evict_one(a)) {
        sbx_err_limit(err, "max_procs", SBX_MAX_PROCS,
                      "too many processes (cap %u); release finished ones", SBX_MAX_PROCS);
        return -1;
    }
    return 0;
}

/*
 * Make @p (zeroed memory, its max_procs slot already counted) the table entry of the child @pid
 * that @r started: argv taken from @r, the agent's ends of its pipes (r->agent_fds) set up as its
 * in, out and err (not reading yet), its timeout running.
 */
static void proc_init(struct agent_proc *p, struct agent *a, struct spawn_req *r, pid_t pid)
{
    p->a = a;
    p->id = ++a->next_proc;
    p->pid = pid;
    p->argv = r->argv;
    r->argv = NULL;
    memcpy(p->tag, r->tag, sizeof(p->tag));
    p->internal = r->internal;
    p->start_ns = agent_now_ns();
    p->start_wall_ns = agent_realtime_ns();
    p->drain_ms = r->drain_ms;
    p->kill_signal = r->kill_signal;
    p->kill_grace_ms = r->kill_grace_ms;
    p->pty_fd = -1;
    p->cg = r->cg; /* the process's from now on: handed back when it is reaped */
    r->cg = AGENT_CG_NONE;
    agent_list_init(&p->waiters);
    agent_list_init(&p->attached);
    agent_list_add_tail(&a->procs, &p->link);
    uv_timer_init(a->loop, &p->timeout_timer);
    uv_timer_init(a->loop, &p->drain_timer);
    p->timeout_timer.data = p;
    p->drain_timer.data = p;
    p->handles_open += 2;
    if (r->pty && !r->pty_stdin_only) {
        /* proc.spawn's terminal: the master is the output pipe, a dup of it the input. */
        p->pty = true;
        p->pty_fd = r->agent_fds[1];
        p->in.is_pty = p->out.is_pty = true;
    }
    if (r->agent_fds[0] >= 0) {
        p->has_in = pipe_setup(a, p, &p->in, r->agent_fds[0], true) == 0;
    }
    if (r->agent_fds[1] >= 0) {
        p->has_out = pipe_setup(a, p, &p->out, r->agent_fds[1], false) == 0;
    }
    if (r->agent_fds[2] >= 0) {
        p->has_err = pipe_setup(a, p, &p->err, r->agent_fds[2], false) == 0;
    }
    r->agent_fds[0] = r->agent_fds[1] = r->agent_fds[2] = -1; /* the pipes own them */
    if (r->timeout_ms > 0) {
        uv_update_time(a->loop); /* counted from now, not from the loop's cached time */
        uv_timer_start(&p->timeout_timer, timeout_timer_cb, r->timeout_ms, 0);
    }
}

/* --- starting a child: a pool of spawner threads ------------------------------------------ */

/*
 * clone(CLONE_VM|CLONE_VFORK) suspends the calling thread until the child has exec'd or exited,
 * and between its identity switch and execve the child is a process of the target user, who can
 * SIGSTOP it (or it sits in a slow chdir or exec). So the loop never clones: it queues the start
 * for a spawner thread and hears of the outcome through an async handle. The threads live on
 * while there is work (at most SBX_SPAWN_THREADS_MAX, made as they are needed; an idle one waits
 * for the next start and ends after SPAWN_IDLE_MS without one), so a start costs two wake-ups,
 * not a thread. A deadline bounds the start: at SBX_SPAWN_EXEC_MS the loop SIGKILLs the child
 * (which ends a stopped one too) and the start fails with TIMEOUT; its thread, free again, takes
 * the next start. Meanwhile the other threads serve the other starts; when every thread has one,
 * new starts wait on the loop, in order. The kill needs nothing from the suspended thread: the
 * kernel stores the child's pid before the child runs (CLONE_PARENT_SETTID), and the mutex orders
 * the kill before the thread may reap that pid (the loop never kills a reaped pid).
 */
enum start_kill { START_LIVE, START_TIMEOUT, START_ABORT };

/* Where a start is; it only moves forward. */
enum start_state {
    START_WAITING, /* in spawner.waiting: every thread slot has a start */
    START_QUEUED,  /* in spawner.work: a thread takes it next */
    START_RUNNING, /* a thread has it: clone, then maybe reap */
    START_DONE,    /* in spawner.done for the loop, or completed */
};

struct agent_proc_start {
    struct agent_link link; /* in spawner.waiting, .work or .done, as its state says */
    struct agent *a;
    struct spawn_req r;
    struct agent_proc *proc; /* the table entry, allocated up front: completion cannot fail */
    agent_proc_started_cb cb;
    void *data;
    bool handed;         /* left START_WAITING: counted in spawner.busy until completed */
    struct child_err ce; /* written by a child that fails before exec */
    pid_t tid;           /* the child's pid, stored by the kernel at clone */
    /* Under spawner.mu from START_QUEUED on: */
    enum start_state state;
    bool finished;          /* clone returned, or never will: nothing left to kill */
    enum start_kill killed; /* written atomically: the thread reads it before clone */
    pid_t pid;              /* outcome: the child, or -1 when clone failed or never ran */
    int clone_err;
    uv_timer_t timer; /* the deadline, then kill retries */
};

/* A spawner thread's slot. */
enum worker_state {
    WORKER_FREE,
    WORKER_LIVE,  /* made, not ended */
    WORKER_ENDED, /* ended (idle too long), not joined yet: slot and stacks still its */
};

struct spawn_worker {
    enum worker_state state; /* under spawner.mu */
    pthread_t thread;
    uint8_t *map;      /* its stacks (worker_map): one child's at a time, and its own */
    int filter_err;    /* the workload filter could not be loaded here: its starts fail */
    uv_async_t *async; /* spawner.h's while the thread lives */
};

/* The loop's handles for the spawner: one async for every completion (libuv coalesces sends, so
 * its callback takes all of spawner.done), one timer that polls for ended threads to join. They
 * exist while the spawner is on (spawner.h) and close when it is off, so a loop with nothing to
 * start holds none (uv_loop_close needs no call from here); a start right after that gets new
 * ones without waiting for the close. */
struct spawner_handles {
    uv_async_t async;
    uv_timer_t timer;
    unsigned open;
};

/*
 * The spawner. Process-wide, unlike most of the agent's state (struct agent): it is shared with
 * threads that belong to the process, whose stacks are mappings of its own (not glibc's: glibc
 * keeps those in a cache when a thread ends, each with the static TLS on it resident, some
 * 320 KiB here). At most SBX_SPAWN_THREADS_MAX threads at once bounds what a burst of starts, or
 * children stopped before exec, hold; a thread's mapping is reused for its every start, and one
 * is kept when it ends. Only the loop thread touches the first part; the second is under mu.
 */
static struct {
    struct spawner_handles *h;           /* NULL: off (no start, no thread) */
    unsigned outstanding;                /* starts whose callback has not run */
    unsigned busy;                       /* handed starts not completed, <= SBX_SPAWN_THREADS_MAX */
    struct agent_link waiting;           /* starts waiting for a slot, oldest first */
    uint8_t *spare[SPAWN_MAPS_KEEP + 1]; /* mappings kept for the next threads */
    unsigned nspare;

    pthread_mutex_t mu;
    pthread_cond_t cv;      /* work was queued (CLOCK_MONOTONIC: the idle end) */
    struct agent_link work; /* handed starts no thread took yet, oldest first */
    unsigned nwork;
    struct agent_link done; /* finished starts for the loop */
    unsigned nidle;         /* threads that take work next: waiting for it or just made */
    unsigned nlive;         /* threads made and not ended */
    bool ended;             /* some slot is WORKER_ENDED */
    struct spawn_worker workers[SBX_SPAWN_THREADS_MAX];
} spawner = { .mu = PTHREAD_MUTEX_INITIALIZER };
static const unsigned spare_maps_keep = SPAWN_MAPS_KEEP;

static int child_main(void *arg)
{
    struct agent_proc_start *s = arg;

    child_exec(&s->r, &s->ce);
}

/* Static TLS lives on each thread's stack (glibc): add it to what a thread is given. */
static int tls_size_cb(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        if (info->dlpi_phdr[i].p_type == PT_TLS) {
            *(size_t *)data += info->dlpi_phdr[i].p_memsz + info->dlpi_phdr[i].p_align;
        }
    }
    return 0;
}

/* A spawner thread's own stack: SPAWN_THREAD_STACK for its frames (and the libc's), plus the
 * static TLS of every loaded object, in whole pages; found once. */
static size_t worker_stack_size(void)
{
    static size_t size;
    long min = sysconf(_SC_THREAD_STACK_MIN);

    if (size == 0) {
        size_t tls = 0;
        (void)dl_iterate_phdr(tls_size_cb, &tls);
        size = SPAWN_THREAD_STACK + ((tls + SPAWN_GUARD - 1) & ~(size_t)(SPAWN_GUARD - 1));
        if (min > 0 && (size_t)min > size) {
            size = ((size_t)min + SPAWN_GUARD - 1) & ~(size_t)(SPAWN_GUARD - 1);
        }
    }
    return size;
}

/* A thread's stacks are one mapping: [guard][the child's][guard][the thread's]. */
static size_t worker_map_size(void)
{
    return 2 * SPAWN_GUARD + SPAWN_CHILD_STACK + worker_stack_size();
}

/* A mapping for @w's stacks: a spare, or a new one. 0, or -1 with errno. */
static int worker_map(struct spawn_worker *w)
{
    uint8_t *m;

    if (spawner.nspare > 0) {
        w->map = spawner.spare[--spawner.nspare];
        return 0;
    }
    m = mmap(NULL, worker_map_size(), PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (m == MAP_FAILED) {
        return -1;
    }
    if (mprotect(m, SPAWN_GUARD, PROT_NONE) < 0 ||
        mprotect(m + SPAWN_GUARD + SPAWN_CHILD_STACK, SPAWN_GUARD, PROT_NONE) < 0) {
        int e = errno;
        (void)munmap(m, worker_map_size());
        errno = e;
        return -1;
    }
    w->map = m;
    return 0;
}

/* Give back mapping @m of a thread that was joined, or never ran. */
static void worker_unmap(uint8_t *m)
{
    if (m == NULL) {
        return;
    }
#ifdef SBX_ASAN
    /* The thread's frames may have left redzones poisoned; the next user of this memory must not
     * inherit them. */
    ASAN_UNPOISON_MEMORY_REGION(m + 2 * SPAWN_GUARD + SPAWN_CHILD_STACK, worker_stack_size());
#endif
    if (spawner.nspare < spare_maps_keep) {
        spawner.spare[spawner.nspare++] = m;
    } else {
        (void)munmap(m, worker_map_size());
    }
}

/* The next start for @w, oldest first; or NULL when none came for SPAWN_IDLE_MS: the thread
 * ends (the loop joins it). */
static struct agent_proc_start *worker_take(struct spawn_worker *w)
{
    struct agent_proc_start *s;
    struct timespec until = { 0, 0 };

    pthread_mutex_lock(&spawner.mu);
    while (agent_list_empty(&spawner.work)) {
        if (until.tv_sec == 0) {
            (void)clock_gettime(CLOCK_MONOTONIC, &until);
            until.tv_sec += SPAWN_IDLE_MS / 1000;
            until.tv_nsec += (long)(SPAWN_IDLE_MS % 1000) * 1000000L;
            if (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
            }
        }
        if (pthread_cond_timedwait(&spawner.cv, &spawner.mu, &until) == ETIMEDOUT &&
            agent_list_empty(&spawner.work)) {
            spawner.nidle--;
            spawner.nlive--;
            w->state = WORKER_ENDED;
            spawner.ended = true;
            pthread_mutex_unlock(&spawner.mu);
            uv_async_send(w->async); /* the last touch: the loop joins us */
            return NULL;
        }
    }
    s = agent_container_of(spawner.work.next, struct agent_proc_start, link);
    agent_list_del(&s->link);
    spawner.nwork--;
    spawner.nidle--;
    s->state = START_RUNNING;
    pthread_mutex_unlock(&spawner.mu);
    return s;
}

/* Run @s on @w: clone (unless it was killed already), then reap a child that failed or was killed
 * (no table entry knows it); a killed one may have exec'd in the meantime, so it is killed again
 * (nothing else can have reaped it). */
static void worker_run(struct spawn_worker *w, struct agent_proc_start *s)
{
    pid_t pid = -1;
    int e = 0;
    bool killed;

    if (w->filter_err != 0) {
        s->ce.stage = ST_SECCOMP;
        s->ce.err = w->filter_err;
    } else if (__atomic_load_n(&s->killed, __ATOMIC_RELAXED) == START_LIVE) {
        pid = clone(child_main, w->map + SPAWN_GUARD + SPAWN_CHILD_STACK,
                    CLONE_VM | CLONE_VFORK | CLONE_PARENT_SETTID | SIGCHLD, s, &s->tid);
        e = errno;
    }
#ifdef SBX_ASAN
    /* The child never returned, so ASan still has its frames' redzones poisoned on the stack the
     * next child gets. */
    ASAN_UNPOISON_MEMORY_REGION(w->map + SPAWN_GUARD, SPAWN_CHILD_STACK);
#endif
    pthread_mutex_lock(&spawner.mu);
    s->finished = true;
    s->pid = pid;
    s->clone_err = e;
    killed = s->killed != START_LIVE;
    pthread_mutex_unlock(&spawner.mu);
    if (pid > 0 && (killed || s->ce.stage >= 0)) {
        if (killed) {
            (void)kill(pid, SIGKILL);
        }
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
        }
    }
}

/* A spawner thread: every signal blocked (from its start, so its children's too: no handler may
 * run in a child before it has reset the dispositions), starts until it idled too long. */
static void *worker_main(void *arg)
{
    struct spawn_worker *w = arg;
    struct agent_proc_start *s;

    /* The per-workload seccomp filter, loaded once here rather than in each child (compiling it
     * into the kernel costs some 40 µs a start): clone copies it to every child this thread
     * starts, before any of the child's code runs. As root it needs no no_new_privs, which would
     * break sudo below it. Without it no child is started. */
    w->filter_err = agent_seccomp_enter() < 0 ? errno : 0;
    while ((s = worker_take(w)) != NULL) {
        worker_run(w, s);
        pthread_mutex_lock(&spawner.mu);
        s->state = START_DONE;
        agent_list_add_tail(&spawner.done, &s->link);
        spawner.nidle++;
        pthread_mutex_unlock(&spawner.mu);
        uv_async_send(w->async);
    }
    return NULL;
}

/* Make @w's thread (its slot already taken). 0, or an errno. */
static int worker_start(struct spawn_worker *w)
{
    size_t tsz = worker_stack_size();
    pthread_attr_t attr;
    sigset_t all, old;
    int e;

    w->async = &spawner.h->async;
    e = worker_map(w) < 0 ? errno : pthread_attr_init(&attr);
    if (e != 0) {
        return e;
    }
    e = pthread_attr_setstack(&attr, w->map + worker_map_size() - tsz, tsz);
    sigfillset(&all);
    (void)pthread_sigmask(SIG_SETMASK, &all, &old);
    if (e == 0) {
        e = pthread_create(&w->thread, &attr, worker_main, w);
    }
    (void)pthread_sigmask(SIG_SETMASK, &old, NULL);
    (void)pthread_attr_destroy(&attr);
    if (e != 0) {
        worker_unmap(w->map);
        w->map = NULL;
    }
    return e;
}

/* Move every start from @from to the end of @to. */
static void start_list_move(struct agent_link *to, struct agent_link *from)
{
    while (!agent_list_empty(from)) {
        struct agent_link *l = from->next;
        agent_list_del(l);
        agent_list_add_tail(to, l);
    }
}

/* Threads for the queued starts: one more while more are queued than threads will take them. A
 * thread that cannot be made leaves the starts queued for the threads there are, or fails them
 * when there are none (their completions report it). Called with spawner.h open. */
static void spawner_fill(void)
{
    for (;;) {
        struct spawn_worker *w = NULL;
        bool failed = false;
        int e;

        pthread_mutex_lock(&spawner.mu);
        for (unsigned i = 0; spawner.nwork > spawner.nidle && i < ARRAY_SIZE(spawner.workers);
             i++) {
            if (spawner.workers[i].state == WORKER_FREE) {
                w = &spawner.workers[i];
                w->state = WORKER_LIVE;
                spawner.nidle++; /* before it runs: it may take a start at once */
                spawner.nlive++;
                break;
            }
        }
        pthread_mutex_unlock(&spawner.mu);
        if (w == NULL) {
            return; /* enough threads; or a slot frees once an ended thread is joined */
        }
        e = worker_start(w);
        if (e == 0) {
            continue;
        }
        agent_log("cannot start a spawner thread: %s", strerror(e));
        pthread_mutex_lock(&spawner.mu);
        w->state = WORKER_FREE;
        spawner.nidle--;
        spawner.nlive--;
        if (spawner.nlive == 0 && spawner.nwork > 0) {
            for (struct agent_link *l = spawner.work.next; l != &spawner.work; l = l->next) {
                struct agent_proc_start *s = agent_container_of(l, struct agent_proc_start, link);
                s->state = START_DONE;
                s->finished = true;
                s->clone_err = e;
            }
            start_list_move(&spawner.done, &spawner.work);
            spawner.nwork = 0;
            failed = true;
        }
        pthread_mutex_unlock(&spawner.mu);
        if (failed) {
            uv_async_send(&spawner.h->async);
        }
        return;
    }
}

static void start_timer_cb(uv_timer_t *t);

/* Give @s to the threads and start its deadline (spawner_fill makes a thread if it needs one). */
static void start_hand(struct agent_proc_start *s)
{
    bool wake;

    s->handed = true;
    spawner.busy++;
    uv_update_time(s->a->loop); /* the deadline counts from now */
    uv_timer_start(&s->timer, start_timer_cb, SBX_SPAWN_EXEC_MS, 0);
    pthread_mutex_lock(&spawner.mu);
    s->state = START_QUEUED;
    agent_list_add_tail(&spawner.work, &s->link);
    spawner.nwork++;
    wake = spawner.nwork <= spawner.nidle;
    pthread_mutex_unlock(&spawner.mu);
    if (wake) {
        pthread_cond_signal(&spawner.cv);
    }
}

/* Hand waiting starts over while there are slots. */
static void start_next(void)
{
    while (spawner.busy < SBX_SPAWN_THREADS_MAX && !agent_list_empty(&spawner.waiting)) {
        struct agent_proc_start *s =
            agent_container_of(spawner.waiting.next, struct agent_proc_start, link);

        agent_list_del(&s->link);
        start_hand(s);
    }
    spawner_fill();
}

/* Kill @s's child for @why unless clone already returned; again every SPAWN_KILL_RETRY_MS until
 * it has (the pid is not known before the kernel stored it; a kill may come before the child
 * exists). A start no thread has taken yet never gets one: it ends now. */
static void start_kill(struct agent_proc_start *s, enum start_kill why)
{
    bool pending = false, ended = false;

    pthread_mutex_lock(&spawner.mu);
    if (s->state == START_WAITING || s->state == START_QUEUED) {
        agent_list_del(&s->link); /* from spawner.waiting or spawner.work */
        if (s->state == START_QUEUED) {
            spawner.nwork--;
        }
        s->killed = why;
        s->finished = true;
        s->state = START_DONE;
        agent_list_add_tail(&spawner.done, &s->link);
        ended = true;
    } else if (s->state == START_RUNNING && !s->finished) {
        pid_t tid = __atomic_load_n(&s->tid, __ATOMIC_RELAXED);
        if (s->killed == START_LIVE) {
            __atomic_store_n(&s->killed, why, __ATOMIC_RELAXED);
        }
        if (tid > 0) {
            (void)kill(tid, SIGKILL);
        }
        pending = true;
    }
    pthread_mutex_unlock(&spawner.mu);
    if (ended) {
        uv_async_send(&spawner.h->async);
    }
    if (pending) {
        uv_timer_start(&s->timer, start_timer_cb, SPAWN_KILL_RETRY_MS, 0);
    }
}

static void start_timer_cb(uv_timer_t *t)
{
    start_kill(t->data, START_TIMEOUT); /* a kill for another reason keeps that reason */
}

void agent_proc_start_abort(struct agent_proc_start *s)
{
    start_kill(s, START_ABORT);
}

/* The outcome of a finished start: 0 when the child runs, or -1 with @err. */
static int start_outcome(struct agent_proc_start *s, struct sbx_err *err)
{
    const struct child_err *ce = &s->ce;

    if (s->killed == START_TIMEOUT) {
        sbx_err_set(err, SBX_E_TIMEOUT, "the child did not exec within %u ms (stopped?); killed",
                    SBX_SPAWN_EXEC_MS);
        snprintf(err->stage, sizeof(err->stage), "exec");
        return -1;
    }
    if (s->killed == START_ABORT) {
        return sbx_err_set(err, SBX_E_CANCELLED, "the start was abandoned; the child was killed");
    }
    if (s->pid < 0 && ce->stage < 0) {
        return sbx_err_sys(err, s->clone_err, "fork", "clone");
    }
    if (ce->stage < 0) {
        return 0;
    }
    if (ce->stage == ST_EXEC) {
        sbx_err_sys(err, ce->err, "exec", "exec \"%s\"", s->r.argv[0]);
    } else if (ce->stage == ST_CWD) {
        sbx_err_sys(err, ce->err, "cwd", "chdir \"%s\"", s->r.cwd);
        snprintf(err->field, sizeof(err->field), "cwd");
    } else {
        sbx_err_sys(err, ce->err, stage_names[ce->stage], "%s", stage_names[ce->stage]);
    }
    return -1;
}

/* @s's timer closed: free it. */
static void start_closed_cb(uv_handle_t *h)
{
    struct agent_proc_start *s = h->data;

    free(s->proc);
    spawn_req_free(&s->r);
    free(s);
}

/* @s finished (it came through spawner.done, which ordered the thread's writes before this): the
 * process enters the table (or the start failed), and the starter hears of it. */
static void start_complete(struct agent_proc_start *s)
{
    struct agent_proc *p = NULL;
    struct sbx_err err;

    uv_timer_stop(&s->timer);
    spawner.outstanding--;
    spawn_req_close_child_fds(&s->r); /* the child has its copies, or is gone */
    sbx_err_clear(&err);
    if (start_outcome(s, &err) == 0) {
        p = s->proc;
        s->proc = NULL;
        proc_init(p, s->a, &s->r, s->pid);
    } else {
        s->a->nprocs--;
        agent_cg_release(&s->r.cg); /* before the reply: a failed start leaves nothing */
    }
    s->cb(p, &err, s->data);
    if (p != NULL && !agent_proc_freeing(p)) {
        /* Its SIGCHLD may have come before it was in the table. */
        proc_poll(p);
        agent_proc_check_done(p);
    }
    uv_close((uv_handle_t *)&s->timer, start_closed_cb);
}

static void spawner_handle_closed_cb(uv_handle_t *hd)
{
    struct spawner_handles *h = hd->data;

    if (--h->open == 0) {
        free(h);
    }
}

/* Off once nothing is left: no start, no thread (ended ones joined). */
static void spawner_maybe_off(void)
{
    struct spawner_handles *h = spawner.h;
    bool idle;

    if (h == NULL || spawner.outstanding > 0) {
        return;
    }
    pthread_mutex_lock(&spawner.mu);
    idle = spawner.nlive == 0 && !spawner.ended;
    pthread_mutex_unlock(&spawner.mu);
    if (idle) {
        spawner.h = NULL;
        uv_close((uv_handle_t *)&h->async, spawner_handle_closed_cb);
        uv_close((uv_handle_t *)&h->timer, spawner_handle_closed_cb);
    }
}

static void spawner_timer_cb(uv_timer_t *t);

/* Join the threads that ended: their slots and stacks are free again. An ended thread may still
 * be on its way out after its last touch, so this polls (every 1 ms) rather than waits. */
static void spawner_join(void)
{
    uint8_t *maps[SBX_SPAWN_THREADS_MAX];
    unsigned n = 0;
    bool left = false;

    pthread_mutex_lock(&spawner.mu);
    for (unsigned i = 0; spawner.ended && i < ARRAY_SIZE(spawner.workers); i++) {
        struct spawn_worker *w = &spawner.workers[i];
        if (w->state != WORKER_ENDED) {
            continue;
        }
        if (pthread_tryjoin_np(w->thread, NULL) == 0) {
            w->state = WORKER_FREE;
            maps[n++] = w->map;
            w->map = NULL;
        } else {
            left = true;
        }
    }
    spawner.ended = left;
    pthread_mutex_unlock(&spawner.mu);
    for (unsigned i = 0; i < n; i++) {
        worker_unmap(maps[i]);
    }
    if (left) {
        uv_timer_start(&spawner.h->timer, spawner_timer_cb, 1, 0);
    }
}

static void spawner_timer_cb(uv_timer_t *t)
{
    spawner_join();
    spawner_fill();
    spawner_maybe_off();
}

/* Threads reported: complete every finished start, join ended threads, hand waiting starts to
 * the slots that freed. */
static void spawner_async_cb(uv_async_t *h)
{
    struct agent_link done;

    agent_list_init(&done);
    pthread_mutex_lock(&spawner.mu);
    start_list_move(&done, &spawner.done);
    pthread_mutex_unlock(&spawner.mu);
    for (struct agent_link *l = done.next; l != &done; l = l->next) {
        if (agent_container_of(l, struct agent_proc_start, link)->handed) {
            spawner.busy--;
        }
    }
    spawner_join();
    start_next(); /* first: the threads clone while the loop answers */
    while (!agent_list_empty(&done)) {
        struct agent_proc_start *s = agent_container_of(done.next, struct agent_proc_start, link);
        agent_list_del(&s->link);
        start_complete(s);
    }
    spawner_maybe_off();
}

/* On for a start: the handles (and the first time, the lists and the condition variable). 0, or
 * -1 when out of memory. */
static int spawner_on(uv_loop_t *loop)
{
    struct spawner_handles *h;

    if (spawner.h != NULL) {
        return 0;
    }
    if (spawner.waiting.next == NULL) {
        pthread_condattr_t ca;
        agent_list_init(&spawner.waiting);
        agent_list_init(&spawner.work);
        agent_list_init(&spawner.done);
        (void)pthread_condattr_init(&ca);
        (void)pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        (void)pthread_cond_init(&spawner.cv, &ca);
        (void)pthread_condattr_destroy(&ca);
    }
    h = calloc(1, sizeof(*h));
    if (h == NULL) {
        return -1;
    }
    uv_async_init(loop, &h->async, spawner_async_cb);
    uv_timer_init(loop, &h->timer);
    h->async.data = h->timer.data = h;
    h->open = 2;
    spawner.h = h;
    return 0;
}

/*
 * Start the child @r describes (taken over, also on failure: @r is left empty) on a spawner
 * thread, now or once one of the SBX_SPAWN_THREADS_MAX is free; @cb runs on the loop with the
 * outcome. Its max_procs slot (checked by the caller with proc_slot) is counted from now. 0, with
 * the start in *@out when @out is not NULL; or -1 with @err and no callback.
 */
static int spawn_start(struct agent *a, struct spawn_req *r, agent_proc_started_cb cb, void *data,
                       struct agent_proc_start **out, struct sbx_err *err)
{
    struct agent_proc_start *s = NULL;

    /* Its cgroup exists before the child does, so the child can join it at once. */
    if (agent_cg_create(a, &r->limits, &r->cg, err) < 0) {
        spawn_req_free(r);
        return -1;
    }
    r->nofile = a->nofile;
    r->devnull = a->devnull;
    if (spawner_on(a->loop) == 0) {
        s = calloc(1, sizeof(*s));
    }
    if (s != NULL) {
        s->proc = calloc(1, sizeof(*s->proc));
    }
    if (s == NULL || s->proc == NULL) {
        free(s);
        spawn_req_free(r);
        spawner_maybe_off();
        return sbx_err_oom(err);
    }
    s->a = a;
    s->r = *r; /* moved: the pointers and fds are the start's now */
    spawn_req_init(r);
    s->cb = cb;
    s->data = data;
    s->ce.stage = -1;
    s->pid = -1;
    s->state = START_WAITING;
    uv_timer_init(a->loop, &s->timer);
    s->timer.data = s;
    if (nreset_sigs < 0) {
        find_changed_signals(); /* before the first thread */
    }
    spawner.outstanding++;
    a->nprocs++;
    if (spawner.busy < SBX_SPAWN_THREADS_MAX) {
        start_hand(s);
        spawner_fill();
    } else {
        agent_list_add_tail(&spawner.waiting, &s->link);
    }
    if (out != NULL) {
        *out = s;
    }
    return 0;
}

/* --- proc.spawn ---------------------------------------------------------------------------- */

/* A proc.spawn whose child is starting: what its response needs. */
struct spawn_call {
    struct agent_conn_ref ref; /* the requester; ref.conn NULL once it closed */
    uint32_t id;               /* the request */
    uint32_t nstreams;         /* streams held on ref.conn until the start completes */
    struct agent_proc_start *start;
};

/* The requester closed before the start completed: nobody can learn the process's id, so the
 * child is killed; the completion frees the call. */
static void spawn_call_gone(struct agent_conn_ref *r)
{
    agent_proc_start_abort(agent_container_of(r, struct spawn_call, ref)->start);
}

static void spawn_call_started(struct agent_proc *p, const struct sbx_err *e, void *data)
{
    struct spawn_call *sc = data;
    struct agent_conn *c = sc->ref.conn;
    struct agent_stream *sin = NULL, *sout = NULL, *serr = NULL;
    struct sbx_err err;
    msgpack_packer *pk;

    agent_conn_ref_del(&sc->ref);
    if (c != NULL) {
        c->nstreams -= sc->nstreams; /* the hold ends; the streams below take their places */
    }
    if (p == NULL) {
        if (c != NULL) {
            agent_conn_reply_error(c, sc->id, e);
        }
        free(sc);
        return;
    }
    if (c == NULL || c->closing) {
        /* It started as its requester went: nobody can learn its id. Killed, then reaped and
         * forgotten like any process. */
        (void)kill(-p->pid, SIGKILL);
        p->internal = true;
        agent_pipe_update(&p->out); /* detached: drained until the end */
        agent_pipe_update(&p->err);
        agent_proc_forget(p);
        free(sc);
        return;
    }
    /* The process exists: failures below end its streams, never lose it. */
    agent_conn_ref_add(c, &p->owner, proc_owner_gone);
    sbx_err_clear(&err);
    if (p->has_in) {
        sin = agent_stream_new(c, AGENT_STREAM_IN, &p->in, &err);
    }
    if (p->has_out) {
        sout = agent_stream_new(c, AGENT_STREAM_OUT, &p->out, &err);
    }
    if (p->has_err) {
        serr = agent_stream_new(c, AGENT_STREAM_OUT, &p->err, &err);
    }
    {
        struct sbx_spawn_result res = {
            .id = (uint32_t)p->id,
            .pid = (uint32_t)p->pid,
            .in = sin != NULL ? sin->id : 0,
            .out = sout != NULL ? sout->id : 0,
            .err = serr != NULL ? serr->id : 0,
        };
        pk = agent_conn_begin(c);
        sbx_pack_response_head(pk, sc->id);
        sbx_spawn_result_pack(pk, &res);
    }
    agent_conn_send(c);
    agent_pipe_update(&p->out);
    agent_pipe_update(&p->err);
    free(sc);
}

int agent_proc_spawn(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct agent *a = c->a;
    struct spawn_req r;
    struct spawn_call *sc = NULL;
    int pin[2] = { -1, -1 }, pout[2] = { -1, -1 }, perr[2] = { -1, -1 };
    uint32_t nstreams;

    sbx_err_clear(err);
    if (parse_spawn(c, m->params, &r, err) < 0 || proc_slot(a, err) < 0) {
        goto fail;
    }
    /* Every stream the process needs, or none: a spawn never runs with an output nobody gets. */
    nstreams =
        r.pty ? 2 : (uint32_t)(r.io_in == IO_PIPE) + (r.io_out == IO_PIPE) + (r.io_err == IO_PIPE);
    if (agent_stream_reserve(c, nstreams, err) < 0) {
        goto fail;
    }
    if (r.pty) {
        /* The master is both directions; a dup gives input its own libuv handle. The child
         * opens the slave itself. */
        pout[0] = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (pout[0] < 0 || grantpt(pout[0]) < 0 || unlockpt(pout[0]) < 0 ||
            ptsname_r(pout[0], r.pty_path, sizeof(r.pty_path)) != 0 ||
            ioctl(pout[0], TIOCSWINSZ, &r.ws) < 0 ||
            (pin[1] = fcntl(pout[0], F_DUPFD_CLOEXEC, 3)) < 0) {
            sbx_err_sys(err, errno, "pty", "open a pseudo-terminal");
            goto fail;
        }
    } else if ((r.io_in == IO_PIPE && pipe2(pin, O_CLOEXEC) < 0) ||
               (r.io_out == IO_PIPE && pipe2(pout, O_CLOEXEC) < 0) ||
               (r.io_err == IO_PIPE && pipe2(perr, O_CLOEXEC) < 0)) {
        sbx_err_sys(err, errno, "pipe", "create pipes");
        goto fail;
    }
    /* Bigger pipes mean fewer wakeups on bulk output (best effort; capped by pipe-max-size). */
    if (pout[0] >= 0 && !r.pty) {
        (void)fcntl(pout[0], F_SETPIPE_SZ, 1 << 20);
    }
    if (pin[0] >= 0) {
        (void)fcntl(pin[0], F_SETPIPE_SZ, 1 << 20);
    }
    sc = calloc(1, sizeof(*sc));
    if (sc == NULL) {
        sbx_err_oom(err);
        goto fail;
    }
    /* The request owns every end from here. */
    r.fds[0] = pin[0];
    r.fds[1] = pout[1];
    r.fds[2] = r.io_err == IO_MERGE ? pout[1] : perr[1];
    r.agent_fds[0] = pin[1];
    r.agent_fds[1] = pout[0];
    r.agent_fds[2] = perr[0];
    pin[0] = pin[1] = pout[0] = pout[1] = perr[0] = perr[1] = -1;
    sc->id = m->id;
    sc->nstreams = nstreams;
    if (spawn_start(a, &r, spawn_call_started, sc, &sc->start, err) < 0) {
        goto fail;
    }
    /* Its streams are held (counted as the connection's) until the start completes. */
    agent_conn_ref_add(c, &sc->ref, spawn_call_gone);
    c->nstreams += nstreams;
    return AGENT_LATER; /* answered by spawn_call_started */

fail:
    for (int i = 0; i < 2; i++) {
        close_fd(&pin[i]);
        close_fd(&pout[i]);
        close_fd(&perr[i]);
    }
    free(sc);
    spawn_req_free(&r);
    return -1;
}

/* --- internal and REPL starts -------------------------------------------------------------- */

/* Stdout and stderr of @r into two new pipes that the process's out and err read (how internal
 * processes and REPL interpreters start). */
static int spawn_pipes_out(struct spawn_req *r, struct sbx_err *err)
{
    int pout[2] = { -1, -1 }, perr[2] = { -1, -1 };

    if (pipe2(pout, O_CLOEXEC) < 0 || pipe2(perr, O_CLOEXEC) < 0) {
        int e = errno;
        for (int i = 0; i < 2; i++) {
            close_fd(&pout[i]);
        }
        return sbx_err_sys(err, e, "pipe", "create pipes");
    }
    (void)fcntl(pout[0], F_SETPIPE_SZ, 1 << 20); /* best effort, as for proc.spawn */
    r->fds[1] = pout[1];
    r->fds[2] = perr[1];
    r->agent_fds[1] = pout[0];
    r->agent_fds[2] = perr[0];
    return 0;
}

int agent_proc_start_internal(struct agent *a, char **argv, char **envp, const char *cwd,
                              const struct agent_user *user, uint64_t timeout_ms,
                              agent_proc_started_cb cb, void *data, struct agent_proc_start **start,
                              struct sbx_err *err)
{
    struct spawn_req r;

    spawn_req_init(&r);
    r.argv = argv;
    r.envp = envp;
    if (user != NULL) { /* the identity switch of proc.spawn with `user` (§14.1) */
        r.set_user = true;
        r.uid = user->uid;
        r.gid = user->gid;
        r.ngroups = user->ngroups;
        memcpy(r.groups, user->groups, sizeof(r.groups));
    }
    r.internal = true;
    r.io_in = IO_NULL;
    r.io_out = r.io_err = IO_PIPE;
    r.timeout_ms = timeout_ms;
    r.kill_signal = SIGKILL; /* a build past its time is killed outright */
    r.kill_grace_ms = 0;
    r.drain_ms = SBX_DRAIN_MS_DEFAULT;
    if (strlen(cwd) > SBX_PATH_MAX) {
        sbx_err_sys(err, ENAMETOOLONG, "cwd", "chdir \"%.200s\"", cwd);
    } else if ((r.cwd = strdup(cwd)) == NULL) {
        sbx_err_oom(err);
    } else if (spawn_path(&r, err) == 0 && proc_slot(a, err) == 0 &&
               spawn_pipes_out(&r, err) == 0) {
        return spawn_start(a, &r, cb, data, start, err);
    }
    spawn_req_free(&r);
    return -1;
}

void agent_proc_forget(struct agent_proc *p)
{
    if (agent_proc_done(p)) {
        proc_release(p);
    } else {
        p->forget = true; /* released as soon as its exit is reported */
    }
}

void agent_proc_pack_exit(msgpack_packer *pk, const struct agent_proc *p)
{
    pack_exit(pk, p);
}

int agent_proc_spawn_repl(struct agent *a, const msgpack_object *params, char **argv,
                          const char *tag, const int extra_fds[2], int *master,
                          agent_proc_started_cb cb, void *data, struct sbx_err *err)
{
    struct spawn_req r;
    struct sbx_spawn_params sp;
    int m = -1;

    spawn_req_init(&r);
    r.argv = argv;
    r.extra_fds[0] = extra_fds[0];
    r.extra_fds[1] = extra_fds[1];
    r.pty = r.pty_stdin_only = true;
    r.ws.ws_row = PTY_ROWS_DEFAULT;
    r.ws.ws_col = PTY_COLS_DEFAULT;
    r.kill_signal = SIGTERM;
    r.kill_grace_ms = SBX_KILL_GRACE_MS_DEFAULT;
    r.drain_ms = SBX_DRAIN_MS_DEFAULT;
    snprintf(r.tag, sizeof(r.tag), "%s", tag);
    if (sbx_spawn_identity_read(params, &sp, err) < 0 ||
        spawn_prepare(a, &sp, NULL, 0, &r, err) < 0 || proc_slot(a, err) < 0) {
        goto fail;
    }
    /* The driver pipes belong to the interpreter's user: a driver that can only reach them by
     * reopening /proc/self/fd/N (deno) is checked against the pipe's owner and mode (0600). */
    for (int i = 0; i < 2 && r.set_user; i++) {
        if (extra_fds[i] >= 0 && fchown(extra_fds[i], r.uid, r.gid) < 0) {
            sbx_err_sys(err, errno, "pipe", "give the driver pipes to the interpreter's user");
            goto fail;
        }
    }
    m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (m < 0 || grantpt(m) < 0 || unlockpt(m) < 0 ||
        ptsname_r(m, r.pty_path, sizeof(r.pty_path)) != 0 || ioctl(m, TIOCSWINSZ, &r.ws) < 0) {
        sbx_err_sys(err, errno, "pty", "open a pseudo-terminal");
        goto fail;
    }
    if (spawn_pipes_out(&r, err) < 0 || spawn_start(a, &r, cb, data, NULL, err) < 0) {
        goto fail;
    }
    *master = m;
    return 0;

fail:
    close_fd(&m);
    spawn_req_free(&r);
    return -1;
}

static struct agent_proc *proc_find(struct agent *a, const struct sbx_msg *m, struct sbx_err *err)
{
    struct agent_link *l;
    uint64_t id;

    if (sbx_param_u64(m->params, "id", SBX_REQUIRED, 0, UINT32_MAX, &id, err) != 0) {
        return NULL;
    }
    for (l = a->procs.next; l != &a->procs; l = l->next) {
        struct agent_proc *p = agent_container_of(l, struct agent_proc, link);
        if (p->id == id && !agent_proc_freeing(p) && !p->internal) {
            return p;
        }
    }
    sbx_err_set(err, SBX_E_NOT_FOUND, "no process with id %llu", (unsigned long long)id);
    return NULL;
}

static void wait_timeout_cb(uv_timer_t *t)
{
    struct agent_waiter *w = t->data;
    struct sbx_err err;

    if (agent_proc_done(w->proc)) {
        sbx_err_set(&err, SBX_E_TIMEOUT,
                    "process %llu has exited, but this connection's output streams for it have "
                    "not ended (its proc.exit comes first)",
                    (unsigned long long)w->proc->id);
    } else {
        sbx_err_set(&err, SBX_E_TIMEOUT, "process %llu is still running",
                    (unsigned long long)w->proc->id);
    }
    agent_conn_reply_error(w->ref.conn, w->id, &err);
    waiter_free(w);
}

int agent_proc_wait(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct agent_proc *p;
    struct agent_waiter *w;
    uint64_t timeout = 0;

    /* Params first, then the lookup: BAD_PARAM wins over NOT_FOUND (PROTOCOL.md §7.2). */
    if (sbx_param_u64(m->params, "timeout_ms", SBX_OPTIONAL, 1, UINT32_MAX, &timeout, err) < 0 ||
        (p = proc_find(c->a, m, err)) == NULL) {
        return -1;
    }
    if (agent_proc_done(p) && !exit_recipient(p, c)) {
        msgpack_packer *pk = agent_conn_begin(c);
        sbx_pack_response_head(pk, m->id);
        pack_exit(pk, p);
        agent_conn_send(c);
        p->collected = true;
        return AGENT_REPLIED;
    }
    w = calloc(1, sizeof(*w));
    if (w == NULL) {
        return sbx_err_oom(err);
    }
    agent_conn_ref_add(c, &w->ref, waiter_gone);
    w->id = m->id;
    w->proc = p;
    agent_list_add_tail(&p->waiters, &w->link);
    if (timeout > 0) {
        uv_timer_init(c->a->loop, &w->timer);
        w->timer.data = w;
        w->timed = true;
        uv_timer_start(&w->timer, wait_timeout_cb, timeout, 0);
    }
    /* Answered at the exit (proc_report), after this connection's own proc.exit
     * (answer_waiters), or by wait_timeout_cb. */
    return AGENT_LATER;
}

int agent_proc_kill(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct agent_proc *p = NULL;
    bool group = false;
    int sig = SIGTERM, rc;

    if (agent_signal_param(m->params, "signal", SIGTERM, &sig, err) < 0 ||
        sbx_param_bool(m->params, "group", SBX_OPTIONAL, &group, err) < 0 ||
        (p = proc_find(c->a, m, err)) == NULL) {
        return -1;
    }
    /* A group may outlive its leader; only a lone process is certainly gone. */
    if (agent_proc_exited(p) && !group) {
        sbx_err_sys(err, ESRCH, NULL, "process %llu has exited", (unsigned long long)p->id);
        return -1;
    }
    /* The leader is reaped, so its number is ours only as long as its group has a member left
     * (a pgid in use is never given out). A process with that number means the group emptied
     * and the kernel gave the number to someone else, who may lead a group of its own (a root
     * one): -pid is not ours to signal. */
    if (agent_proc_exited(p) && (kill(p->pid, 0) == 0 || errno == EPERM)) {
        sbx_err_sys(err, ESRCH, NULL, "process %llu and its group have exited",
                    (unsigned long long)p->id);
        return -1;
    }
    rc = kill(group ? -p->pid : p->pid, sig) < 0 ? -errno : 0;
    /* SIGKILL to the group takes its whole cgroup along: descendants that left the group
     * (setsid) too, and a fork bomb cannot outrun it (§14.5). */
    if (group && sig == SIGKILL && agent_cg_kill(&p->cg) == 0) {
        rc = 0;
    }
    if (rc < 0) {
        sbx_err_sys(err, -rc, NULL, "kill %s%d", group ? "-" : "", p->pid);
        return -1;
    }
    agent_conn_reply_empty(c, m->id);
    return AGENT_REPLIED;
}

int agent_proc_close_stdin(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct agent_proc *p = proc_find(c->a, m, err);

    if (p == NULL) {
        return -1;
    }
    if (p->has_in && p->in.open) {
        if (p->in.stream != NULL && p->in.stream->conn != c) {
            /* Another connection's stream: it is told, or it would write on into nothing. */
            struct sbx_err e;
            sbx_err_set(&e, SBX_E_CANCELLED, "stdin closed by connection %u (proc.close_stdin)",
                        c->num);
            agent_stream_cancel(p->in.stream, &e);
        } else if (p->in.stream != NULL) {
            agent_stream_free(p->in.stream);
        }
        if (p->pty) {
            agent_conn_reply_empty(c, m->id); /* the terminal stays open (PROTOCOL.md 15.1) */
            return AGENT_REPLIED;
        }
        p->in.close_requested = true;
        if (p->in.writes_pending == 0) {
            agent_pipe_close(&p->in);
        }
    }
    agent_conn_reply_empty(c, m->id);
    return AGENT_REPLIED;
}

int agent_proc_release(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct agent_proc *p = proc_find(c->a, m, err);

    if (p == NULL) {
        return -1;
    }
    if (!agent_proc_done(p)) {
        sbx_err_set(err, SBX_E_BUSY, "process %llu is still running", (unsigned long long)p->id);
        return -1;
    }
    proc_release(p);
    agent_conn_reply_empty(c, m->id);
    return AGENT_REPLIED;
}

int agent_proc_list(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct agent *a = c->a;
    msgpack_packer *pk = agent_conn_begin(c);
    struct agent_link *l;
    uint32_t n = 0;

    for (l = a->procs.next; l != &a->procs; l = l->next) {
        {
            const struct agent_proc *q = agent_container_of(l, struct agent_proc, link);
            n += !agent_proc_freeing(q) && !q->internal;
        }
    }
    sbx_pack_response_head(pk, m->id);
    msgpack_pack_map(pk, 1);
    sbx_pack_cstr(pk, "procs");
    msgpack_pack_array(pk, n);
    for (l = a->procs.next; l != &a->procs; l = l->next) {
        struct agent_proc *p = agent_container_of(l, struct agent_proc, link);
        uint32_t argc = 0;

        if (agent_proc_freeing(p) || p->internal) {
            continue; /* internal processes (pack builds) are not listed (§14.7) */
        }
        while (p->argv[argc] != NULL && argc < 8) { /* abbreviated: PROTOCOL.md §14.7 */
            argc++;
        }
        /* exit only once exited (PROTOCOL.md §14.7) */
        msgpack_pack_map(pk, agent_proc_done(p) ? 10 : 9);
        sbx_pack_kv_u64(pk, "id", p->id);
        sbx_pack_kv_i64(pk, "pid", p->pid);
        sbx_pack_cstr(pk, "argv");
        msgpack_pack_array(pk, argc);
        for (uint32_t i = 0; i < argc; i++) {
            size_t alen = strlen(p->argv[i]);
            if (alen > 128) {
                alen = 128;
                /* Cut at a character boundary when the argument is UTF-8. */
                while (alen > 0 && ((unsigned char)p->argv[i][alen] & 0xc0) == 0x80) {
                    alen--;
                }
            }
            sbx_pack_bstr(pk, p->argv[i], alen);
        }
        sbx_pack_kv_str(pk, "tag", p->tag[0] ? p->tag : NULL);
        sbx_pack_kv_str(pk, "state", agent_proc_done(p) ? "exited" : "running");
        sbx_pack_kv_u64(pk, "started_ns", p->start_wall_ns);
        sbx_pack_kv_bool(pk, "attached", output_holder(p) != NULL);
        /* A REPL interpreter's output goes to its session, not a ring: nothing is dropped. */
        sbx_pack_kv_u64(pk, "stdout_dropped", p->out.ringless ? 0 : agent_pipe_oldest(&p->out));
        sbx_pack_kv_u64(pk, "stderr_dropped", p->err.ringless ? 0 : agent_pipe_oldest(&p->err));
        if (agent_proc_done(p)) {
            sbx_pack_cstr(pk, "exit");
            pack_exit(pk, p);
        }
    }
    agent_conn_send(c);
    return AGENT_REPLIED;
}

void agent_proc_pipes_resume(struct agent *a)
{
    struct agent_link *l;

    for (l = a->procs.next; l != &a->procs; l = l->next) {
        struct agent_proc *p = agent_container_of(l, struct agent_proc, link);
        agent_pipe_update(&p->out);
        agent_pipe_update(&p->err);
    }
}

int agent_proc_resize(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct agent_proc *p = NULL;
    uint64_t rows, cols;
    struct winsize ws;

    if (sbx_param_u64(m->params, "rows", SBX_REQUIRED, 1, 65535, &rows, err) != 0 ||
        sbx_param_u64(m->params, "cols", SBX_REQUIRED, 1, 65535, &cols, err) != 0 ||
        (p = proc_find(c->a, m, err)) == NULL) {
        return -1;
    }
    if (!p->pty) {
        sbx_err_sys(err, ENOTTY, NULL, "process %llu has no terminal", (unsigned long long)p->id);
        return -1;
    }
    /* After the exit (or once the master is closed) a resize is accepted and does nothing. */
    if (!agent_proc_exited(p) && p->out.open) {
        memset(&ws, 0, sizeof(ws));
        ws.ws_row = (unsigned short)rows;
        ws.ws_col = (unsigned short)cols;
        if (ioctl(p->pty_fd, TIOCSWINSZ, &ws) < 0) {
            sbx_err_sys(err, errno, NULL, "resize the terminal");
            return -1;
        }
    }
    agent_conn_reply_empty(c, m->id);
    return AGENT_REPLIED;
}

/* --- proc.attach ---------------------------------------------------------------------------- */

static void attach_free(struct agent_attach *at)
{
    agent_list_del(&at->link);
    agent_conn_ref_del(&at->ref);
    free(at);
}

/* An attached connection closed: it is owed nothing any more. */
static void attach_gone(struct agent_conn_ref *r)
{
    attach_free(agent_container_of(r, struct agent_attach, ref));
}

/* The live connection holding @p's output (PROTOCOL.md §14.9): the one with an unfinished output
 * stream for it; NULL when nobody does. A closing connection holds nothing any more. */
static struct agent_conn *output_holder(const struct agent_proc *p)
{
    const struct agent_pipe *outs[2] = { &p->out, &p->err };

    for (int i = 0; i < 2; i++) {
        if (outs[i]->stream != NULL && !outs[i]->stream->conn->closing) {
            return outs[i]->stream->conn;
        }
    }
    return NULL;
}

/* Does @c have an unfinished output stream for @p (its proc.exit must wait for it)? */
static bool holds_output(const struct agent_proc *p, const struct agent_conn *c)
{
    return (p->out.stream != NULL && p->out.stream->conn == c) ||
           (p->err.stream != NULL && p->err.stream->conn == c);
}

/* proc.exit to @c, after the cancel of @c's stdin stream if it still has one (§9.2: the output's
 * ends, the stdin cancel, the exit). */
static void send_exit(struct agent_proc *p, struct agent_conn *c)
{
    msgpack_packer *pk;

    if (p->in.stream != NULL && p->in.stream->conn == c) {
        stdin_cancel_exited(p);
    }
    pk = agent_conn_begin(c);
    sbx_pack_notify_head(pk, "proc.exit");
    pack_exit(pk, p);
    agent_conn_send(c);
    p->collected = true;
}

void agent_proc_exit_flush(struct agent_proc *p)
{
    struct agent_link *l, *next;

    if (p == NULL || !agent_proc_done(p) || agent_proc_freeing(p) || p->attaching) {
        return;
    }
    if (p->owner.conn != NULL && !p->owner.conn->closing && !holds_output(p, p->owner.conn)) {
        send_exit(p, p->owner.conn);
        agent_conn_ref_del(&p->owner); /* nothing more goes to it about this process */
    }
    for (l = p->attached.next; l != &p->attached; l = next) {
        struct agent_attach *at = agent_container_of(l, struct agent_attach, link);
        next = l->next;
        if (at->ref.conn != NULL && !at->ref.conn->closing && !holds_output(p, at->ref.conn)) {
            send_exit(p, at->ref.conn);
            attach_free(at);
        }
    }
    answer_waiters(p);
}

/* Does @c get @p's proc.exit already (as its spawner or an attached connection)? */
static bool exit_recipient(struct agent_proc *p, const struct agent_conn *c)
{
    struct agent_link *l;

    if (p->owner.conn == c) {
        return true;
    }
    for (l = p->attached.next; l != &p->attached; l = l->next) {
        if (agent_container_of(l, struct agent_attach, link)->ref.conn == c) {
            return true;
        }
    }
    return false;
}

/* Take @p away from connection @c (a steal, or @c attaching again): its streams for @p are
 * cancelled with @why; with @forget it is no longer owed proc.exit either. */
static void detach_conn(struct agent_proc *p, struct agent_conn *c, const char *why, bool forget)
{
    struct agent_pipe *pipes[3] = { &p->out, &p->err, &p->in };
    struct agent_link *l, *next;
    struct sbx_err err;

    /* First forgotten, so that the cancels below cannot let its proc.exit out. */
    if (forget && p->owner.conn == c) {
        agent_conn_ref_del(&p->owner);
    }
    for (l = p->attached.next; forget && l != &p->attached; l = next) {
        struct agent_attach *at = agent_container_of(l, struct agent_attach, link);
        next = l->next;
        if (at->ref.conn == c) {
            attach_free(at);
        }
    }
    sbx_err_set(&err, SBX_E_CANCELLED, "%s", why);
    for (int i = 0; i < 3; i++) {
        if (pipes[i]->stream != NULL && pipes[i]->stream->conn == c) {
            agent_stream_cancel(pipes[i]->stream, &err); /* stdin stays open for the next */
        }
    }
}

/* Where a new stream on @pp starts for a client asking for offset @from (@has_from; without it,
 * the oldest retained byte, and the gap is counted from 0): the oldest retained byte at most, the
 * end at least; *@dropped is what was lost in between, so a gap is never silent. */
static uint64_t attach_start(struct agent_pipe *pp, bool has_from, uint64_t from, uint64_t *dropped)
{
    uint64_t oldest = agent_pipe_oldest(pp);

    *dropped = 0;
    if (!has_from) {
        *dropped = oldest;
        return oldest;
    }
    if (from >= pp->total) {
        return pp->total;
    }
    if (from < oldest) {
        *dropped = oldest - from;
        return oldest;
    }
    return from;
}

int agent_proc_attach(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct sbx_attach_params ap;
    struct sbx_attach_result res;
    struct agent_conn *holder, *in_holder;
    struct agent_stream *sin = NULL, *sout = NULL, *serr = NULL;
    struct agent_attach *at = NULL;
    struct agent_proc *p;
    bool want_in;
    msgpack_packer *pk;

    if (sbx_attach_params_read(m->params, &ap, err) < 0 || (p = proc_find(c->a, m, err)) == NULL) {
        return -1;
    }
    if (p->out.ringless || p->err.ringless) {
        sbx_err_set(err, SBX_E_BUSY, "process %llu is a REPL interpreter: use repl.eval",
                    (unsigned long long)p->id);
        return -1;
    }
    /* Streams of a connection that is closing are gone in all but name: let go of them now, so
     * that its teardown cannot touch the pipes' new streams. */
    {
        struct agent_pipe *pipes[3] = { &p->out, &p->err, &p->in };
        for (int i = 0; i < 3; i++) {
            if (pipes[i]->stream != NULL && pipes[i]->stream->conn->closing) {
                agent_stream_free(pipes[i]->stream);
            }
        }
    }
    holder = output_holder(p);
    if (holder != NULL && holder != c && !ap.steal) {
        sbx_err_set(err, SBX_E_BUSY,
                    "connection %u holds the output of process %llu (steal: true takes it over)",
                    holder->num, (unsigned long long)p->id);
        return -1;
    }
    in_holder = p->in.stream != NULL ? p->in.stream->conn : NULL;
    /* A new stdin stream starts with a whole window of credit while the bytes of the last one
     * may still wait for the child: stdin is handed over only while less than a window waits,
     * so a process that never reads holds at most two windows however often it is attached. */
    want_in = ap.stdin && p->has_in && p->in.open && !p->in.close_requested &&
              !agent_proc_done(p) && (in_holder == NULL || in_holder == c || ap.steal) &&
              p->in.queued < SBX_STREAM_WINDOW;
    if (agent_stream_reserve(c, (uint32_t)p->has_out + p->has_err + want_in, err) < 0) {
        return -1;
    }
    if (!exit_recipient(p, c)) {
        at = calloc(1, sizeof(*at));
        if (at == NULL) {
            return sbx_err_oom(err);
        }
    }
    /* Nothing fails from here on. Any proc.exit waits until the new streams are announced. */
    p->attaching = true;
    if (holder != NULL && holder != c) {
        detach_conn(p, holder, "attached elsewhere", true);
    }
    if (want_in && in_holder != NULL && in_holder != c && in_holder != holder) {
        detach_conn(p, in_holder, "attached elsewhere", true);
    }
    /* Attaching again replaces this connection's own streams (and stdin only if it asks). */
    if (holder == c || (want_in && in_holder == c)) {
        struct sbx_err e;
        sbx_err_set(&e, SBX_E_CANCELLED, "replaced by a new proc.attach");
        if (p->out.stream != NULL && p->out.stream->conn == c) {
            agent_stream_cancel(p->out.stream, &e);
        }
        if (p->err.stream != NULL && p->err.stream->conn == c) {
            agent_stream_cancel(p->err.stream, &e);
        }
        if (want_in && p->in.stream != NULL && p->in.stream->conn == c) {
            agent_stream_cancel(p->in.stream, &e);
        }
    }
    if (at != NULL) {
        at->proc = p;
        agent_list_add_tail(&p->attached, &at->link);
        agent_conn_ref_add(c, &at->ref, attach_gone);
    }
    /* What the process wrote while its pipes were read slowly (or not at all) is the latest: it
     * goes into the rings before the start offsets are taken. */
    agent_pipe_catch_up(&p->out);
    agent_pipe_catch_up(&p->err);
    memset(&res, 0, sizeof(res));
    if (want_in) {
        sin = agent_stream_new(c, AGENT_STREAM_IN, &p->in, err); /* reserved: cannot fail */
    }
    if (p->has_out) {
        sout = agent_stream_new(c, AGENT_STREAM_OUT, &p->out, err);
        res.has_stdout_start = true;
        res.stdout_start = attach_start(&p->out, ap.has_from, ap.from, &res.stdout_dropped);
    }
    if (p->has_err) {
        serr = agent_stream_new(c, AGENT_STREAM_OUT, &p->err, err);
        res.has_stderr_start = true;
        res.stderr_start =
            attach_start(&p->err, ap.has_stderr_from, ap.stderr_from, &res.stderr_dropped);
    }
    if (sout != NULL) {
        sout->pos = res.stdout_start;
        res.stdout_sid = sout->id;
    }
    if (serr != NULL) {
        serr->pos = res.stderr_start;
        res.stderr_sid = serr->id;
    }
    res.stdin_sid = sin != NULL ? sin->id : 0;
    pk = agent_conn_begin(c);
    sbx_pack_response_head(pk, m->id);
    sbx_attach_result_pack(pk, &res);
    agent_conn_send(c);
    /* Replay, then live; for an output that has ended, replay, end, then proc.exit (§9.2). */
    p->attaching = false;
    agent_pipe_update(&p->out);
    agent_pipe_update(&p->err);
    agent_proc_exit_flush(p);
    return AGENT_REPLIED;
}
