/* Processes (proc.c): spawn, wait, kill, list, release, resize; exit records. */
#ifndef SBX_AGENT_PROC_H
#define SBX_AGENT_PROC_H

#include "agent.h"
#include "cgroup.h"
#include "conn.h"
#include "stream.h"

/* --- processes ---------------------------------------------------------------------------- */

struct agent_waiter {
    struct agent_link link;
    struct agent_conn_ref ref; /* the connection that asked; ref.conn NULL once it is gone */
    uint32_t id;
    bool extend;      /* lifetime waiters: answers a lifetime.extend */
    bool timed;       /* proc waiters: timer is initialised */
    uv_timer_t timer; /* proc.wait timeout_ms */
    struct agent_proc *proc;
};

/* A process's life (§14.7). It only moves forward; the predicates below name what a state
 * implies, so code asks "has it exited?" rather than comparing states. */
enum agent_proc_state {
    AGENT_PROC_RUNNING, /* spawned, not reaped yet */
    AGENT_PROC_EXITED,  /* reaped; its output may still be draining (§9.2) */
    AGENT_PROC_DONE,    /* exit reported: from here on an exit record ("exited" in proc.list) */
    AGENT_PROC_FREEING, /* released: its handles are closing, then it is freed */
};

struct agent_proc {
    struct agent_link link; /* in a->procs */
    enum agent_proc_state state;
    struct agent *a;
    uint64_t id;
    pid_t pid;
    char **argv; /* for proc.list */
    char tag[SBX_TAG_MAX + 1];
    struct agent_conn_ref owner; /* owner.conn gets proc.exit; NULL once it disconnected */
    struct agent_link attached;  /* struct agent_attach: other connections that get proc.exit */
    struct agent_pipe in, out, err;
    bool has_in, has_out, has_err;
    bool pty;              /* started on a pseudo-terminal */
    int pty_fd;            /* the master (owned by the output pipe's handle), for resize */
    unsigned handles_open; /* pipes + timers still to be closed */
    bool drained;          /* for the exit map: every output reached end-of-file */
    bool timed_out;        /* for the exit map; also: kill_signal was sent, the grace period runs */
    int status;            /* wait status */
    struct rusage ru;
    struct agent_cg cg; /* its own cgroup (cgroup.h), handed back once it is reaped */
    bool oom;           /* for the exit map: the OOM killer struck in its cgroup (§14.10) */
    uint64_t start_ns, end_ns;
    uint64_t start_wall_ns; /* CLOCK_REALTIME at spawn, for proc.list */
    bool collected;         /* the exit was delivered to some client */
    uint32_t drain_ms;
    int kill_signal;
    uint32_t kill_grace_ms;
    uv_timer_t timeout_timer; /* timeout, then grace before SIGKILL */
    uv_timer_t drain_timer;
    struct agent_link waiters;
    bool internal;  /* started by the agent for itself (a pack build): not in proc.list, no id
                     * lookups; still counted in max_procs, drained and reaped like any process */
    bool forget;    /* release the record as soon as the exit is reported */
    bool attaching; /* proc.attach is rearranging its streams: proc.exit waits */
    /* Another object built on this process (a REPL session): told once the exit is reported. */
    void (*on_done)(struct agent_proc *p);
    void *data;
};

/* Reaped: the process itself is gone (its output may still be draining). */
static inline bool agent_proc_exited(const struct agent_proc *p)
{
    return p->state >= AGENT_PROC_EXITED;
}

/* Its exit was reported (§9.2 step 4): proc.wait answers at once, proc.list says "exited". */
static inline bool agent_proc_done(const struct agent_proc *p)
{
    return p->state >= AGENT_PROC_DONE;
}

/* Released: no longer found by id, its memory goes once its handles closed. */
static inline bool agent_proc_freeing(const struct agent_proc *p)
{
    return p->state == AGENT_PROC_FREEING;
}

/* Request handlers. proc.spawn answers later (AGENT_LATER), once the child has exec'd or
 * failed (see "Starting a child" below); responses to later requests may come first. */
int agent_proc_spawn(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_proc_wait(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_proc_kill(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_proc_list(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_proc_close_stdin(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_proc_release(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_proc_resize(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
/* proc.attach (PROTOCOL.md §14.9): new streams replaying @p's output from the replay rings. */
int agent_proc_attach(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
/* Send proc.exit to every connection still owed it whose output streams for @p have finished
 * (§9.2: its output first). A no-op until @p's exit is reported. May run in any callback. */
void agent_proc_exit_flush(struct agent_proc *p);
/*
 * Starting a child never blocks the loop: the clone happens on a spawner thread of a small
 * persistent pool (the one CLONE_VFORK suspends), and the outcome comes back to the loop later. A
 * child that has not reached execve within SBX_SPAWN_EXEC_MS (its user may SIGSTOP it between the
 * identity switch and exec) is killed and the start fails with TIMEOUT, stage "exec".
 *
 * agent_proc_started_cb runs on the loop exactly once per start that was accepted (the start
 * functions returned 0): with @p, the new process (in the table, running, its pipes set up but not
 * yet reading: attach streams or sinks, then agent_pipe_update), or with @p NULL and @err (errno
 * with stage, TIMEOUT, CANCELLED). Its max_procs slot is held from the call until then.
 */
struct agent_proc_start;
typedef void (*agent_proc_started_cb)(struct agent_proc *p, const struct sbx_err *err, void *data);

/*
 * Start an interpreter for a REPL session: @argv (taken over, also on failure), env, clear_env,
 * cwd, user, uid, gid, groups from @params (sbx_spawn_identity_read: as proc.spawn reads them),
 * tag @tag. Its stdin and controlling terminal is a new PTY whose master is returned in @master
 * (the caller owns it once this returned 0); stdout and stderr are pipes (p->out, p->err);
 * @extra_fds become its fds 3 and 4 (taken over, also on failure: closed once the child has them).
 * No owner: nobody gets proc.exit. 0 and @cb later; or -1 with @err (errno with stage, BAD_PARAM,
 * LIMIT max_procs) and no callback.
 */
int agent_proc_spawn_repl(struct agent *a, const msgpack_object *params, char **argv,
                          const char *tag, const int extra_fds[2], int *master,
                          agent_proc_started_cb cb, void *data, struct sbx_err *err);
/*
 * Start a process the agent runs for itself (a pack build): @argv and @envp (taken over, also on
 * failure) in @cwd as @user (its uid, gid and groups, switched to as proc.spawn's `user` does;
 * NULL: the agent's own), stdin /dev/null, stdout and stderr piped (p->out, p->err), SIGKILL to its
 * group after @timeout_ms (0: none). Counted in max_procs, drained and reaped like any process;
 * hidden from proc.list and id lookups. In @cb, set on_done to hear of the exit; then
 * agent_proc_forget. 0 and @cb later (*@start names the start until then, for
 * agent_proc_start_abort); or -1 with @err (errno with stage, LIMIT max_procs) and no callback.
 */
struct agent_user;
int agent_proc_start_internal(struct agent *a, char **argv, char **envp, const char *cwd,
                              const struct agent_user *user, uint64_t timeout_ms,
                              agent_proc_started_cb cb, void *data, struct agent_proc_start **start,
                              struct sbx_err *err);
/* Nobody wants the start @s any more: its child is killed (and reaped) and its callback runs soon
 * with CANCELLED, or with the process if it had started already (the caller then kills it). Only
 * before the callback ran. */
void agent_proc_start_abort(struct agent_proc_start *s);
/* The caller no longer needs @p: its record goes as soon as its exit is reported (now if it was).
 */
void agent_proc_forget(struct agent_proc *p);
/* Pack @p's exit map (§14.3); @p's exit must have been reported. */
void agent_proc_pack_exit(msgpack_packer *pk, const struct agent_proc *p);
/* SIGCHLD: reap our own children (never waitpid(-1)). */
void agent_proc_reap(struct agent *a);
/* A pipe reached its end: maybe the exit can be reported now. */
void agent_proc_check_done(struct agent_proc *p);
/* A handle of @p finished closing. */
void agent_proc_handle_closed(struct agent_proc *p);
/* Re-evaluate every output pipe (after pool buffers were released). */
void agent_proc_pipes_resume(struct agent *a);

#endif /* SBX_AGENT_PROC_H */
