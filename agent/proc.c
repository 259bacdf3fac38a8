/*
 * Processes: spawn with a precise error for every failing step, reap our own children only (never
 * waitpid(-1): orphans belong to init), keep exit statuses until waited on, and report an exit
 * only after its output ended or a drain deadline passed.
 */
#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"
#include "conn.h"
#include "env.h"
#include "sbx/schema.h"
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

#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

enum { IO_NULL, IO_PIPE, IO_MERGE };

/* Everything the child needs, prepared in the parent so the child only makes syscalls. */
struct spawn_req {
    char **argv;
    char **envp;
    char exe[SBX_PATH_MAX];
    char cwd[SBX_PATH_MAX + 1]; /* a path param is up to SBX_PATH_MAX bytes (§23) */
    bool set_user;
    struct agent_user user;
    int io_in, io_out, io_err;
    uint64_t timeout_ms;
    int kill_signal;
    uint32_t kill_grace_ms;
    uint32_t drain_ms;
    char tag[SBX_TAG_MAX + 1];
    bool pty;
    bool pty_stdin_only; /* REPL: the terminal is stdin only; stdout/stderr are pipes */
    struct winsize ws;
    char pty_path[64];
    int extra_fds[2]; /* become fds 3 and 4 in the child (-1: none) */
};

/* What a failing child reports through the error pipe. */
struct child_err {
    int stage;
    int err;
};

static const char *const stage_names[] = { "pipe",      "fork",   "cwd",    "user",
                                           "setgroups", "setgid", "setuid", "exec",
                                           "stdio",     "setsid", "pty" };
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
    ST_PTY
};

static void spawn_req_free(struct spawn_req *r)
{
    agent_strv_free(r->argv);
    agent_strv_free(r->envp);
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
static int parse_signal(const msgpack_object *params, const char *key, int def, int *out,
                        struct sbx_err *err)
{
    const msgpack_object *o = sbx_obj_get(params, key);
    char name[32];
    int sig;

    if (o == NULL || o->type == MSGPACK_OBJECT_NIL) {
        *out = def;
        return 0;
    }
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (o->via.u64 == 0 || o->via.u64 >= (uint64_t)NSIG) {
            return sbx_err_param(err, key, "%s: no signal number %llu", key,
                                 (unsigned long long)o->via.u64);
        }
        *out = (int)o->via.u64;
        return 0;
    }
    if (sbx_obj_cstr(o, name, sizeof(name)) < 0 || (sig = sbx_signal_parse(name)) < 0) {
        return sbx_err_param(err, key, "%s must be a signal name such as \"TERM\" or a number",
                             key);
    }
    *out = sig;
    return 0;
}

/* Find @name on PATH as execvp would: EACCES if only unexecutable candidates exist. */
static int resolve_exe(const char *name, char *const *envp, char *out, size_t outsz,
                       struct sbx_err *err)
{
    const char *path, *p;
    bool denied = false;

    if (name[0] == '\0') {
        return sbx_err_sys(err, ENOENT, "exec", "exec \"\"");
    }
    if (strchr(name, '/') != NULL) {
        if (strlen(name) >= outsz) {
            return sbx_err_sys(err, ENAMETOOLONG, "exec", "exec \"%s\"", name);
        }
        strcpy(out, name);
        return 0;
    }
    path = agent_env_lookup(envp, "PATH");
    if (path == NULL || path[0] == '\0') {
        path = DEFAULT_PATH;
    }
    for (p = path;; p = strchr(p, ':') + 1) {
        const char *end = strchr(p, ':');
        size_t dlen = end != NULL ? (size_t)(end - p) : strlen(p);
        struct stat st;
        int n;

        n = snprintf(out, outsz, "%.*s%s%s", (int)dlen, p, dlen ? "/" : "", name);
        if (n > 0 && (size_t)n < outsz && stat(out, &st) == 0 && S_ISREG(st.st_mode)) {
            if (access(out, X_OK) == 0) {
                return 0;
            }
            denied = true;
        }
        if (end == NULL) {
            break;
        }
    }
    return sbx_err_sys(err, denied ? EACCES : ENOENT, "exec", "exec \"%s\"", name);
}

/*
 * The identity @sp asks for, into r->user (§14.2 "Identity defaults"): a user's passwd entry and
 * groups, or a uid's entry if it has one, or the agent's own identity; an explicit gid or groups
 * override. r->set_user stays false when none of user, uid, gid, groups is given.
 */
static int spawn_identity(struct agent *a, const struct sbx_spawn_params *sp, struct spawn_req *r,
                          struct sbx_err *err)
{
    if (sp->user != NULL) {
        char name[SBX_USER_MAX + 1];
        memcpy(name, sp->user, sp->user_len);
        name[sp->user_len] = '\0';
        if (agent_user_lookup(a->passwd_root, name, &r->user, err) < 0) {
            return -1;
        }
    } else if (sp->has_uid) {
        (void)agent_user_by_uid(a->passwd_root, (uid_t)sp->uid, &r->user);
    } else if (sp->has_gid || sp->has_groups) {
        int n = getgroups(SBX_GROUPS_MAX, r->user.groups);
        if (n < 0) {
            return sbx_err_sys(err, errno, "user", "getgroups");
        }
        r->user.uid = getuid();
        r->user.gid = getgid();
        r->user.ngroups = n;
    } else {
        return 0;
    }
    r->set_user = true;
    if (sp->has_gid) {
        r->user.gid = (gid_t)sp->gid;
    }
    if (sp->has_groups) {
        r->user.ngroups = (int)sp->ngroups;
        for (uint32_t i = 0; i < sp->ngroups; i++) {
            r->user.groups[i] = (gid_t)sp->groupsv->via.array.ptr[i].via.u64;
        }
    }
    return 0;
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
 * USER and LOGNAME, @term as TERM when not NULL, then env) in r->envp, and r->argv[0] (set by the
 * caller) found on that environment's PATH in r->exe.
 */
static int spawn_prepare(struct agent *a, const struct sbx_spawn_params *sp, const char *term,
                         size_t term_len, struct spawn_req *r, struct sbx_err *err)
{
    char *extra[5] = { NULL, NULL, NULL, NULL, NULL };
    int n = 0, rc = 0;

    /* The default is "/", not wherever the agent happened to be started (PROTOCOL.md §14.2). */
    if (sp->cwd != NULL) {
        memcpy(r->cwd, sp->cwd, sp->cwd_len);
        r->cwd[sp->cwd_len] = '\0';
    } else {
        snprintf(r->cwd, sizeof(r->cwd), "/");
    }
    if (spawn_identity(a, sp, r, err) < 0) {
        return -1;
    }
    if (r->set_user && r->user.home[0] != '\0') {
        rc |= extra_var(extra, &n, "HOME", r->user.home, strlen(r->user.home));
    }
    if (r->set_user && r->user.name[0] != '\0') {
        rc |= extra_var(extra, &n, "USER", r->user.name, strlen(r->user.name));
        rc |= extra_var(extra, &n, "LOGNAME", r->user.name, strlen(r->user.name));
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
    return resolve_exe(r->argv[0], r->envp, r->exe, sizeof(r->exe), err);
}

static int parse_spawn(struct agent_conn *c, const msgpack_object *params, struct spawn_req *r,
                       struct sbx_err *err)
{
    struct sbx_spawn_params sp;
    const char *term = NULL;
    size_t term_len = 0;

    memset(r, 0, sizeof(*r));
    r->extra_fds[0] = r->extra_fds[1] = -1;
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

static __attribute__((noreturn)) void child_fail(int errfd, int stage)
{
    struct child_err ce = { stage, errno };

    while (write(errfd, &ce, sizeof(ce)) < 0 && errno == EINTR) {
    }
    _exit(127);
}

/*
 * The child shares the agent's memory (CLONE_VM|CLONE_VFORK: no page tables copied, no
 * copy-on-write faults in the agent afterwards, the agent waits until exec or exit). So it only
 * makes raw system calls on data prepared by the parent: no malloc, no stdio, nothing that
 * takes a libc lock, and the identity switch goes through syscall() because glibc's setuid()
 * would signal the agent's other threads to switch theirs too.
 */
struct child_args {
    const struct spawn_req *r;
    int fds[3];
    int errfd;
};

/* Signals whose disposition the agent changed (SIG_IGN survives exec; a handler must not run in
 * a child that shares our memory). Found once, at the first spawn: the agent sets its handlers
 * at startup (agent/main.c), before it accepts any request. */
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

static __attribute__((noreturn)) void child_exec(const struct spawn_req *r, int fds[3], int errfd);

static int child_main(void *arg)
{
    struct child_args *ca = arg;

    child_exec(ca->r, ca->fds, ca->errfd);
}

/* Runs between clone and exec, in the agent's memory: raw system calls only (see above). */
static __attribute__((noreturn)) void child_exec(const struct spawn_req *r, int fds[3], int errfd)
{
    sigset_t none;
    struct sigaction dfl;
    int devnull = -1;
    int extra[2] = { -1, -1 };
    int oom;

    /* Back to a clean signal state: the agent ignores SIGPIPE and libuv has handlers. Every
     * signal is blocked until here (the parent blocked them around clone). */
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    for (int i = 0; i < nreset_sigs; i++) {
        (void)sigaction(reset_sigs[i], &dfl, NULL);
    }
    sigemptyset(&none);
    (void)sigprocmask(SIG_SETMASK, &none, NULL);

    if (setsid() < 0) {
        child_fail(errfd, ST_SETSID);
    }
    if (r->pty) {
        /* The slave becomes stdio and, through TIOCSCTTY, the controlling terminal of this new
         * session; our process group is its foreground group. */
        int slave = open(r->pty_path, O_RDWR | O_CLOEXEC);
        if (slave < 0 || ioctl(slave, TIOCSCTTY, 0) < 0) {
            child_fail(errfd, ST_PTY);
        }
        fds[0] = slave;
        if (!r->pty_stdin_only) {
            fds[1] = fds[2] = slave;
        }
    }
    /* Extra fds go above the stdio range first, so no dup2 below clobbers one still needed. */
    for (int i = 0; i < 2; i++) {
        if (r->extra_fds[i] >= 0 && (extra[i] = fcntl(r->extra_fds[i], F_DUPFD_CLOEXEC, 10)) < 0) {
            child_fail(errfd, ST_STDIO);
        }
    }
    for (int i = 0; i < 3; i++) {
        if (fds[i] < 0) {
            if (devnull < 0) {
                devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
                if (devnull < 0) {
                    child_fail(errfd, ST_STDIO);
                }
            }
            fds[i] = devnull;
        }
    }
    /* dup2 clears O_CLOEXEC on the target; the sources stay close-on-exec. */
    for (int i = 0; i < 3; i++) {
        if (fds[i] == i) {
            if (fcntl(i, F_SETFD, 0) < 0) {
                child_fail(errfd, ST_STDIO);
            }
        } else if (dup2(fds[i], i) < 0) {
            child_fail(errfd, ST_STDIO);
        }
    }
    for (int i = 0; i < 2; i++) {
        if (extra[i] >= 0 && dup2(extra[i], 3 + i) < 0) {
            child_fail(errfd, ST_STDIO);
        }
    }
    /* The agent runs with oom_score_adj -1000; its children must be killable again. */
    oom = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (oom >= 0) {
        (void)!write(oom, "0", 1);
        close(oom);
    }
    /* Identity first, so the working directory is checked with the target user's rights. */
    if (r->set_user) {
        if (syscall(SYS_setgroups, (size_t)r->user.ngroups, r->user.groups) < 0) {
            child_fail(errfd, ST_SETGROUPS);
        }
        if (syscall(SYS_setgid, r->user.gid) < 0) {
            child_fail(errfd, ST_SETGID);
        }
        if (syscall(SYS_setuid, r->user.uid) < 0) {
            child_fail(errfd, ST_SETUID);
        }
    }
    if (chdir(r->cwd) < 0) {
        child_fail(errfd, ST_CWD);
    }
    execve(r->exe, r->argv, r->envp);
    child_fail(errfd, ST_EXEC);
}

/* --- the parent --------------------------------------------------------------------------- */

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
    free(p->out.replay);
    free(p->err.replay);
    agent_strv_free(p->argv);
    free(p);
}

void agent_proc_handle_closed(struct agent_proc *p)
{
    p->handles_open--;
    proc_free_if_unused(p);
}

/* Forget a finished process: close what is left, free when the last handle has closed. */
static void proc_release(struct agent_proc *p)
{
    if (agent_proc_freeing(p)) {
        return;
    }
    p->state = AGENT_PROC_FREEING;
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

/* Exit and output are both settled: tell the owner and every waiter (PROTOCOL.md §9.2). */
static void proc_report(struct agent_proc *p, bool drained)
{
    p->state = AGENT_PROC_DONE;
    p->drained = drained;
    uv_timer_stop(&p->timeout_timer);
    uv_timer_stop(&p->drain_timer);
    /* The process can no longer read: an open stdin stream is cancelled before the exit. */
    if (p->in.stream != NULL) {
        struct sbx_err err;
        sbx_err_sys(&err, EPIPE, "stdin", "process %llu has exited", (unsigned long long)p->id);
        agent_stream_cancel(p->in.stream, &err);
    }
    agent_pipe_close(&p->in);
    if (p->owner.conn != NULL) {
        msgpack_packer *pk = agent_conn_begin(p->owner.conn);
        sbx_pack_notify_head(pk, "proc.exit");
        pack_exit(pk, p);
        agent_conn_send(p->owner.conn);
        p->collected = true;
    }
    agent_conn_ref_del(&p->owner); /* nothing more goes to it about this process */
    while (!agent_list_empty(&p->waiters)) {
        struct agent_waiter *w = agent_container_of(p->waiters.next, struct agent_waiter, link);
        msgpack_packer *pk = agent_conn_begin(w->ref.conn);
        sbx_pack_response_head(pk, w->id);
        pack_exit(pk, p);
        agent_conn_send(w->ref.conn);
        p->collected = true;
        waiter_free(w);
    }
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
     * end the stream; later writes by the holder get EPIPE. */
    for (int i = 0; i < 2; i++) {
        struct agent_pipe *pp = pipes[i];
        if (pp->open && !pp->eof) {
            bool eof = agent_pipe_final_drain(pp);
            pp->eof = true;
            pp->truncated = !eof;
            if (pp->stream != NULL) {
                agent_stream_end(pp->stream, NULL, !eof);
            }
            agent_pipe_close(pp);
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
        proc_report(p, true);
        return;
    }
    if (!uv_is_active((uv_handle_t *)&p->drain_timer)) {
        uv_timer_start(&p->drain_timer, drain_timer_cb, p->drain_ms ? p->drain_ms : 1, 0);
    }
}

void agent_proc_reap(struct agent *a)
{
    struct agent_link *l;

    for (l = a->procs.next; l != &a->procs; l = l->next) {
        struct agent_proc *p = agent_container_of(l, struct agent_proc, link);
        int st;
        pid_t r;

        if (agent_proc_exited(p)) {
            continue;
        }
        do {
            r = wait4(p->pid, &st, WNOHANG, &p->ru);
        } while (r < 0 && errno == EINTR);
        if (r == p->pid) {
            p->state = AGENT_PROC_EXITED;
            p->status = st;
            p->end_ns = agent_now_ns();
            uv_timer_stop(&p->timeout_timer);
        } else if (r < 0 && errno == ECHILD) {
            /* Someone else reaped it (cannot happen unless the agent runs under a foreign
             * reaper); record what we know rather than waiting forever. */
            p->state = AGENT_PROC_EXITED;
            p->status = 0;
            p->end_ns = agent_now_ns();
        }
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

/* Make room in the process table by forgetting the oldest finished process. */
static bool proc_evict_one(struct agent *a)
{
    struct agent_link *l;

    for (l = a->procs.next; l != &a->procs; l = l->next) {
        struct agent_proc *p = agent_container_of(l, struct agent_proc, link);
        if (agent_proc_done(p) && p->collected && !agent_proc_freeing(p)) {
            proc_release(p);
            return true;
        }
    }
    return false;
}

/*
 * Start the child (child_exec) and return its pid, or -errno. Returns once the child has exec'd
 * or exited; its outcome is in the error pipe.
 */
static pid_t spawn_child(const struct spawn_req *r, int fds[3], int errfd)
{
    /* The child's stack while it shares our memory; one spawn at a time (the loop thread
     * waits in clone until the child is done with it). */
    static uint8_t stack[64 << 10] __attribute__((aligned(64)));
    struct child_args ca = { r, { fds[0], fds[1], fds[2] }, errfd };
    sigset_t all, old;
    pid_t pid;
    int e;

    if (nreset_sigs < 0) {
        find_changed_signals();
    }
    /* No handler may run in the child before it has reset the dispositions. */
    sigfillset(&all);
    (void)pthread_sigmask(SIG_SETMASK, &all, &old);
    pid = clone(child_main, stack + sizeof(stack), CLONE_VM | CLONE_VFORK | SIGCHLD, &ca);
    e = errno;
    (void)pthread_sigmask(SIG_SETMASK, &old, NULL);
#ifdef SBX_ASAN
    /* The child never returned, so ASan still has its frames' redzones poisoned on this
     * buffer; the next child lays out different frames there. */
    ASAN_UNPOISON_MEMORY_REGION(stack, sizeof(stack));
#endif
    return pid < 0 ? -e : pid;
}

static int pipe_setup(struct agent *a, struct agent_proc *p, struct agent_pipe *pp, int fd,
                      bool input)
{
    int r;

    pp->proc = p;
    pp->is_input = input;
    r = uv_pipe_init(a->loop, &pp->handle, 0);
    if (r < 0) {
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

/* Start @r with @childfds as stdio (spawn_child). Returns the pid once exec succeeded, or -1 with
 * the failing step in @err (the child is reaped then). */
static pid_t spawn_run(struct spawn_req *r, int childfds[3], struct sbx_err *err)
{
    int errp[2] = { -1, -1 };
    struct child_err ce;
    ssize_t n;
    pid_t pid;

    if (pipe2(errp, O_CLOEXEC) < 0) {
        return sbx_err_sys(err, errno, "pipe", "create pipes");
    }
    pid = spawn_child(r, childfds, errp[1]);
    if (pid < 0) {
        sbx_err_sys(err, -pid, "fork", "clone");
        close(errp[0]);
        close(errp[1]);
        return -1;
    }
    close(errp[1]);
    /* EOF means exec succeeded (the pipe is close-on-exec); a record means a step failed. */
    do {
        n = read(errp[0], &ce, sizeof(ce));
    } while (n < 0 && errno == EINTR);
    close(errp[0]);
    if (n != (ssize_t)sizeof(ce)) {
        return pid;
    }
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
    }
    if (ce.stage == ST_EXEC) {
        sbx_err_sys(err, ce.err, "exec", "exec \"%s\"", r->argv[0]);
    } else if (ce.stage == ST_CWD) {
        sbx_err_sys(err, ce.err, "cwd", "chdir \"%s\"", r->cwd);
        snprintf(err->field, sizeof(err->field), "cwd");
    } else {
        sbx_err_sys(err, ce.err, stage_names[ce.stage], "%s", stage_names[ce.stage]);
    }
    return -1;
}

/* The table entry of a freshly started child (argv taken from @r). NULL when out of memory: the
 * child is killed and reaped then. */
static struct agent_proc *proc_new(struct agent *a, struct spawn_req *r, pid_t pid,
                                   struct sbx_err *err)
{
    struct agent_proc *p = calloc(1, sizeof(*p));

    if (p == NULL) {
        (void)kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
        }
        sbx_err_oom(err);
        return NULL;
    }
    p->a = a;
    p->id = ++a->next_proc;
    p->pid = pid;
    p->argv = r->argv;
    r->argv = NULL;
    memcpy(p->tag, r->tag, sizeof(p->tag));
    p->start_ns = agent_now_ns();
    p->start_wall_ns = agent_realtime_ns();
    p->drain_ms = r->drain_ms;
    p->kill_signal = r->kill_signal;
    p->kill_grace_ms = r->kill_grace_ms;
    p->pty_fd = -1;
    agent_list_init(&p->waiters);
    agent_list_add_tail(&a->procs, &p->link);
    a->nprocs++;
    uv_timer_init(a->loop, &p->timeout_timer);
    uv_timer_init(a->loop, &p->drain_timer);
    p->timeout_timer.data = p;
    p->drain_timer.data = p;
    p->handles_open += 2;
    return p;
}

int agent_proc_spawn(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct agent *a = c->a;
    struct spawn_req r;
    struct agent_proc *p = NULL;
    int pin[2] = { -1, -1 }, pout[2] = { -1, -1 }, perr[2] = { -1, -1 };
    int childfds[3];
    struct agent_stream *sin = NULL, *sout = NULL, *serr = NULL;
    msgpack_packer *pk;
    pid_t pid;

    sbx_err_clear(err);
    if (parse_spawn(c, m->params, &r, err) < 0 || proc_slot(a, err) < 0) {
        goto fail;
    }
    /* Every stream the process needs, or none: a spawn never runs with an output nobody gets. */
    if (agent_stream_reserve(c,
                             r.pty ? 2
                                   : (uint32_t)(r.io_in == IO_PIPE) + (r.io_out == IO_PIPE) +
                                         (r.io_err == IO_PIPE),
                             err) < 0) {
        goto fail;
    }
    if (r.pty) {
        /* The master is both directions; a dup gives input its own libuv handle. */
        pout[0] = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (pout[0] < 0 || grantpt(pout[0]) < 0 || unlockpt(pout[0]) < 0 ||
            ptsname_r(pout[0], r.pty_path, sizeof(r.pty_path)) != 0 ||
            ioctl(pout[0], TIOCSWINSZ, &r.ws) < 0 ||
            (pin[1] = fcntl(pout[0], F_DUPFD_CLOEXEC, 3)) < 0) {
            sbx_err_sys(err, errno, "pty", "open a pseudo-terminal");
            goto fail;
        }
        r.io_in = r.io_out = IO_PIPE;
        r.io_err = IO_MERGE;
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
    childfds[0] = pin[0];
    childfds[1] = pout[1];
    childfds[2] = r.io_err == IO_MERGE ? pout[1] : perr[1];

    pid = spawn_run(&r, childfds, err);
    if (pid < 0 || (p = proc_new(a, &r, pid, err)) == NULL) {
        goto fail;
    }
    agent_conn_ref_add(c, &p->owner, proc_owner_gone);
    p->pty = r.pty;
    p->pty_fd = r.pty ? pout[0] : -1;
    p->in.is_pty = p->out.is_pty = r.pty;

    /* From here the process exists: failures below end its streams, never lose it. */
    if (pin[1] >= 0) {
        if (pin[0] >= 0) {
            close(pin[0]);
        }
        p->has_in = pipe_setup(a, p, &p->in, pin[1], true) == 0;
        pin[1] = -1;
        sin = p->has_in ? agent_stream_new(c, AGENT_STREAM_IN, &p->in, err) : NULL;
    }
    if (pout[0] >= 0) {
        if (pout[1] >= 0) {
            close(pout[1]);
        }
        p->has_out = pipe_setup(a, p, &p->out, pout[0], false) == 0;
        pout[0] = -1;
        sout = p->has_out ? agent_stream_new(c, AGENT_STREAM_OUT, &p->out, err) : NULL;
    }
    if (perr[0] >= 0) {
        close(perr[1]);
        p->has_err = pipe_setup(a, p, &p->err, perr[0], false) == 0;
        perr[0] = -1;
        serr = p->has_err ? agent_stream_new(c, AGENT_STREAM_OUT, &p->err, err) : NULL;
    }
    if (r.timeout_ms > 0) {
        uv_update_time(c->a->loop); /* counted from now, not from the loop's cached time */
        uv_timer_start(&p->timeout_timer, timeout_timer_cb, r.timeout_ms, 0);
    }

    {
        struct sbx_spawn_result res = {
            .id = (uint32_t)p->id,
            .pid = (uint32_t)pid,
            .in = sin != NULL ? sin->id : 0,
            .out = sout != NULL ? sout->id : 0,
            .err = serr != NULL ? serr->id : 0,
        };
        pk = agent_conn_begin(c);
        sbx_pack_response_head(pk, m->id);
        sbx_spawn_result_pack(pk, &res);
    }
    agent_conn_send(c);
    agent_pipe_update(&p->out);
    agent_pipe_update(&p->err);
    spawn_req_free(&r);
    return AGENT_REPLIED;

fail:
    for (int i = 0; i < 2; i++) {
        if (pin[i] >= 0) {
            close(pin[i]);
        }
        if (pout[i] >= 0) {
            close(pout[i]);
        }
        if (perr[i] >= 0) {
            close(perr[i]);
        }
    }
    spawn_req_free(&r);
    return -1;
}

/*
 * Run the child @r describes with stdin as @r sets it up (not a pipe) and stdout and stderr into
 * two new pipes that the process's out and err read: how internal processes and REPL
 * interpreters start. Returns the process, or NULL with @err and nothing left open.
 */
static struct agent_proc *spawn_piped(struct agent *a, struct spawn_req *r, struct sbx_err *err)
{
    struct agent_proc *p = NULL;
    int pout[2] = { -1, -1 }, perr[2] = { -1, -1 };
    int childfds[3];
    pid_t pid;

    if (pipe2(pout, O_CLOEXEC) < 0 || pipe2(perr, O_CLOEXEC) < 0) {
        sbx_err_sys(err, errno, "pipe", "create pipes");
        goto fail;
    }
    childfds[0] = -1;
    childfds[1] = pout[1];
    childfds[2] = perr[1];
    pid = spawn_run(r, childfds, err);
    if (pid < 0 || (p = proc_new(a, r, pid, err)) == NULL) {
        goto fail;
    }
    (void)fcntl(pout[0], F_SETPIPE_SZ, 1 << 20); /* best effort, as for proc.spawn */
    close(pout[1]);
    close(perr[1]);
    p->has_out = pipe_setup(a, p, &p->out, pout[0], false) == 0;
    p->has_err = pipe_setup(a, p, &p->err, perr[0], false) == 0;
    return p;

fail:
    for (int i = 0; i < 2; i++) {
        if (pout[i] >= 0) {
            close(pout[i]);
        }
        if (perr[i] >= 0) {
            close(perr[i]);
        }
    }
    return NULL;
}

struct agent_proc *agent_proc_start_internal(struct agent *a, char **argv, char **envp,
                                             const char *cwd, uint64_t timeout_ms,
                                             struct sbx_err *err)
{
    struct spawn_req r;
    struct agent_proc *p = NULL;

    memset(&r, 0, sizeof(r));
    r.argv = argv;
    r.envp = envp;
    r.extra_fds[0] = r.extra_fds[1] = -1;
    r.io_in = IO_NULL;
    r.io_out = r.io_err = IO_PIPE;
    r.timeout_ms = timeout_ms;
    r.kill_signal = SIGKILL; /* a build past its time is killed outright */
    r.kill_grace_ms = 0;
    r.drain_ms = SBX_DRAIN_MS_DEFAULT;
    if (snprintf(r.cwd, sizeof(r.cwd), "%s", cwd) >= (int)sizeof(r.cwd)) {
        sbx_err_sys(err, ENAMETOOLONG, "cwd", "chdir \"%.200s\"", cwd);
    } else if (resolve_exe(r.argv[0], r.envp, r.exe, sizeof(r.exe), err) == 0 &&
               proc_slot(a, err) == 0) {
        p = spawn_piped(a, &r, err);
    }
    if (p != NULL) {
        p->internal = true;
        if (timeout_ms > 0) {
            uv_update_time(a->loop); /* counted from now, not from the loop's cached time */
            uv_timer_start(&p->timeout_timer, timeout_timer_cb, timeout_ms, 0);
        }
    }
    spawn_req_free(&r);
    return p;
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

struct agent_proc *agent_proc_spawn_repl(struct agent *a, const msgpack_object *params, char **argv,
                                         const char *tag, const int extra_fds[2], int *master,
                                         struct sbx_err *err)
{
    struct spawn_req r;
    struct agent_proc *p = NULL;
    struct sbx_spawn_params sp;
    int m = -1;

    memset(&r, 0, sizeof(r));
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
        if (extra_fds[i] >= 0 && fchown(extra_fds[i], r.user.uid, r.user.gid) < 0) {
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
    p = spawn_piped(a, &r, err);
    if (p == NULL) {
        goto fail;
    }
    spawn_req_free(&r);
    *master = m;
    return p;

fail:
    if (m >= 0) {
        close(m);
    }
    spawn_req_free(&r);
    return NULL;
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

    sbx_err_set(&err, SBX_E_TIMEOUT, "process %llu is still running",
                (unsigned long long)w->proc->id);
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
    if (agent_proc_done(p)) {
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
    return AGENT_LATER; /* answered at the exit (proc_report) or by wait_timeout_cb */
}

int agent_proc_kill(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct agent_proc *p = NULL;
    bool group = false;
    int sig = SIGTERM;

    if (parse_signal(m->params, "signal", SIGTERM, &sig, err) < 0 ||
        sbx_param_bool(m->params, "group", SBX_OPTIONAL, &group, err) < 0 ||
        (p = proc_find(c->a, m, err)) == NULL) {
        return -1;
    }
    /* A group may outlive its leader; only a lone process is certainly gone. */
    if (agent_proc_exited(p) && !group) {
        sbx_err_sys(err, ESRCH, NULL, "process %llu has exited", (unsigned long long)p->id);
        return -1;
    }
    if (kill(group ? -p->pid : p->pid, sig) < 0) {
        sbx_err_sys(err, errno, NULL, "kill %s%d", group ? "-" : "", p->pid);
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
        if (p->in.stream != NULL) {
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
        msgpack_pack_map(
            pk, agent_proc_done(p) ? 7 : 6); /* exit only once exited (PROTOCOL.md §14.7) */
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
