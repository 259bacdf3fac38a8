/*
 * sbx-agent: shared types. One struct agent holds all state and is passed explicitly; each object
 * kind lives in its own file (conn.c, stream.c, proc.c, env.c, user.c, initctl.c, listener.c,
 * session.c) with its functions declared here.
 */
#ifndef SBX_AGENT_H
#define SBX_AGENT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/types.h>

#include <uv.h>

#include "sbx/err.h"
#include "sbx/frame.h"
#include "sbx/limits.h"
#include "sbx/msg.h"

#define AGENT_NAME    "sbx-agent"
#define AGENT_VERSION "0.1.0"

/* Intrusive doubly linked list (libuv's QUEUE idea, typed). */
struct agent_link {
    struct agent_link *prev, *next;
};

#define agent_container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

void agent_list_init(struct agent_link *head);
void agent_list_add_tail(struct agent_link *head, struct agent_link *node);
void agent_list_del(struct agent_link *node);
bool agent_list_empty(const struct agent_link *head);

struct agent;
struct agent_conn;
struct agent_proc;

/* --- buffers ------------------------------------------------------------------------------ */

/* Every pooled buffer has this size: one largest stream-data frame, header included. */
#define AGENT_POOLBUF         (SBX_STREAM_CHUNK_MAX + SBX_STREAM_DATA_HDR_MAX)
#define AGENT_THREADPOOL_SIZE "8" /* libuv threadpool workers (UV_THREADPOOL_SIZE) */
#define AGENT_POOL_KEEP       16u /* free pooled buffers kept for reuse; the rest are freed */

/* Output buffers (AGENT_POOLBUF bytes; output uses SBX_STREAM_CHUNK_MAX of them) recycled through
 * a small free list. Counted in a->bufs_used; putting one back below SBX_AGENT_BUFS_LOW resumes
 * output pipes that stopped at the agent-wide cap (agent_proc_pipes_resume). */
void *agent_buf_get(struct agent *a);
void agent_buf_put(struct agent *a, void *buf);

/*
 * Input slabs: the buffers a connection reads frames into. A handler that keeps a large payload
 * past its return (stdin waiting for the child, an upload waiting for the disk) holds the slab
 * the payload lies in (agent_conn_hold) instead of copying it, and releases it when done; the
 * connection reads into a fresh slab meanwhile. Not counted against SBX_AGENT_BUFS_MAX: input is
 * bounded by stream credit, and input waiting for a child that waits for its output to be read
 * must never stop that output.
 */
struct agent_slab {
    unsigned refs;
    uint32_t cap;  /* AGENT_POOLBUF: goes back to the pool; else freed */
    uint8_t *data; /* cap bytes */
};

/* A pooled slab with one reference, or NULL when out of memory. */
struct agent_slab *agent_slab_new(struct agent *a);
/* Wrap malloc'd @data of @cap bytes (taken over) as a slab with one reference. */
struct agent_slab *agent_slab_wrap(uint8_t *data, uint32_t cap);
/* Drop one reference; the last one returns the memory. */
void agent_slab_release(struct agent *a, struct agent_slab *s);
/* An uncounted pooled buffer (AGENT_POOLBUF bytes, *cap set), for the framer; or NULL. */
void *agent_pool_take(struct agent *a, uint32_t *cap);

/* --- streams ------------------------------------------------------------------------------ */

enum agent_stream_dir { AGENT_STREAM_OUT, AGENT_STREAM_IN };

/*
 * The process side of a pipe: an output (child stdout/stderr, read by the agent) or an input
 * (child stdin, written by the agent). It belongs to the process and outlives connections; a
 * connection's stream attaches to it. While no stream is attached, output is kept in a bounded
 * replay buffer (oldest bytes dropped and counted) so the child never blocks on a full pipe.
 */
struct agent_pipe {
    struct agent_proc *proc;
    uv_pipe_t handle;
    bool open;      /* handle initialised and not yet closing */
    bool reading;   /* uv_read_start active */
    bool eof;       /* output: end reached (or forcibly ended) */
    bool truncated; /* output: ended by the drain deadline, not by EOF */
    bool is_input;
    bool is_pty;                 /* a PTY master: EIO is the end; closing input writes nothing */
    struct agent_stream *stream; /* attached connection stream, or NULL */
    /* output while detached */
    uint8_t *replay;
    uint32_t replay_len;
    uint64_t dropped; /* bytes discarded because nobody read them */
    uint64_t total;   /* bytes read from the child */
    /* output while detached goes here instead of the replay buffer when set (REPL capture) */
    void (*sink)(struct agent_pipe *p, const uint8_t *data, uint32_t n);
    /* input */
    unsigned writes_pending;
    bool close_requested;
};

/*
 * What a stream that is not bound to a process pipe (a file download, an upload, a walk, an
 * archive) asks of its owner. Every callback runs on the loop thread. A stream whose owner is
 * not a pipe has `ops` set and `pipe` NULL.
 */
struct agent_stream_ops {
    /* OUT: credit arrived or the connection drained; produce with agent_stream_send() while
     * agent_stream_writable() holds. May end the stream (agent_stream_end). */
    void (*ready)(struct agent_stream *s);
    /* IN: @len bytes arrived within credit (@data is valid only during the call). Report them
     * with agent_stream_consumed() once they reached their destination. May cancel the stream. */
    void (*data)(struct agent_stream *s, const uint8_t *data, uint32_t len);
    /* IN: the client ended the stream; @e is its error (the data is incomplete) or NULL. The
     * stream is freed right after this returns. */
    void (*end)(struct agent_stream *s, const struct sbx_err *e);
    /* The client cancelled the stream (@cancelled) or its connection is closing: the owner stops
     * using it and must send nothing on it. The stream is freed right after this returns. */
    void (*gone)(struct agent_stream *s, bool cancelled);
};

struct agent_stream {
    struct agent_link link; /* in conn->streams */
    struct agent_conn *conn;
    uint32_t id;
    enum agent_stream_dir dir;
    uint64_t credit;   /* OUT: bytes we may still send; IN: bytes the client may still send */
    uint64_t consumed; /* IN: bytes written to the target since the last grant */
    struct agent_pipe *pipe;
    const struct agent_stream_ops *ops; /* streams not bound to a pipe */
    void *owner;                        /* for @ops */
    bool ended;                         /* OUT: stream.end sent; IN: stream.end received */
    bool cancelled;
};

/* 0 when @n more streams can be created on @c now, else -1 with LIMIT (max_streams or stream_ids)
 * in @err. Methods that create several streams check this first, so they create all or none. */
int agent_stream_reserve(const struct agent_conn *c, uint32_t n, struct sbx_err *err);
struct agent_stream *agent_stream_new(struct agent_conn *c, enum agent_stream_dir dir,
                                      struct agent_pipe *p, struct sbx_err *err);
struct agent_stream *agent_stream_find(struct agent_conn *c, uint32_t id);
/* A stream served by @ops on behalf of @owner (not a process pipe). */
struct agent_stream *agent_stream_new_ops(struct agent_conn *c, enum agent_stream_dir dir,
                                          const struct agent_stream_ops *ops, void *owner,
                                          struct sbx_err *err);
/* OUT: how many bytes may be sent now (0 when out of credit or the connection is backed up). */
uint32_t agent_stream_writable(const struct agent_stream *s);
/* OUT: send @len bytes of the pool buffer @buf (taken over); @len must fit the credit. */
void agent_stream_send(struct agent_stream *s, void *buf, uint32_t len);
/* OUT: send @len bytes copied from @data in chunks; @len must fit agent_stream_writable(). */
void agent_stream_send_copy(struct agent_stream *s, const void *data, uint32_t len);
/* IN: @n bytes were written to their destination; grant credit in batches, or at once with
 * @flush (when nothing else is pending, so the client is never left waiting). */
void agent_stream_consumed(struct agent_stream *s, uint32_t n, bool flush);
/* Detach from the pipe and free. Sends nothing. */
void agent_stream_free(struct agent_stream *s);
/* Send stream.end (with optional error / truncated flag) and free. */
void agent_stream_end(struct agent_stream *s, const struct sbx_err *e, bool truncated);
/* Refuse an "in" stream: send stream.cancel with @e, then free it. */
void agent_stream_cancel(struct agent_stream *s, const struct sbx_err *e);
/* Incoming stream control and data from the client. */
void agent_stream_on_credit(struct agent_conn *c, const struct sbx_msg *m);
void agent_stream_on_end(struct agent_conn *c, const struct sbx_msg *m);
void agent_stream_on_cancel(struct agent_conn *c, const struct sbx_msg *m);
void agent_stream_on_data(struct agent_conn *c, const struct sbx_msg *m);
/* A data message for stream @id was malformed (@why: empty or over chunk_max). If @id is a live
 * stream, its bytes were lost: cancel it as misuse (STREAM, PROTOCOL.md 8.6) and return true;
 * false when @id names no stream (the caller reports BAD_MESSAGE). */
bool agent_stream_on_bad_data(struct agent_conn *c, uint32_t id, const struct sbx_err *why);

/* Output pipes: start/stop reading according to credit and attachment. */
void agent_pipe_update(struct agent_pipe *p);
/* True while an output pipe may still legitimately carry data (used by the drain deadline). */
bool agent_pipe_busy(struct agent_pipe *p);
/* At the drain deadline: read what the pipe holds now without blocking (bounded by the pipe's
 * capacity and the stream's credit) and send it. True if that reached end-of-file. */
bool agent_pipe_final_drain(struct agent_pipe *p);
/* Close a pipe's handle (idempotent); the proc counts the close. */
void agent_pipe_close(struct agent_pipe *p);

/* --- connections -------------------------------------------------------------------------- */

enum agent_transport { AGENT_T_UNIX, AGENT_T_VSOCK, AGENT_T_TCP, AGENT_T_SERIAL };

struct agent_conn {
    struct agent_link link; /* in a->conns */
    struct agent *a;
    union {
        uv_pipe_t pipe;
        uv_tcp_t tcp;
        uv_stream_t stream;
        uv_handle_t handle;
    } h;
    enum agent_transport transport;
    struct agent_listener *listener; /* serial: reopen after close */
    unsigned num;                    /* connection number, for logs */
    bool hello_done;
    bool closing;
    bool close_after_flush; /* e.g. after an AUTH error */
    bool paused;            /* output pipes stopped: too much queued for this peer */
    uint32_t version;
    uint32_t next_stream;
    uint32_t next_pack; /* pack.create job ids */
    unsigned nstreams;
    uint32_t pending; /* requests received and not yet answered (max_pending, §5.1) */
    struct agent_link streams;
    struct sbx_framer framer;
    struct sbx_decoder dec;
    struct sbx_out out;       /* scratch for encoding one control frame */
    struct agent_slab *slab;  /* read buffer; replaced when a handler holds it */
    size_t queued;            /* bytes handed to uv_write and not yet written */
    size_t queued_ctl;        /* ...of which control frames (data is bounded by credit) */
    struct agent_fs *fs;      /* fs.c: file handles and readdir cursors, or NULL */
    struct agent_fswatch *fw; /* fswatch.c: this connection's watches, or NULL */
};

/* Accept a connected stream fd / handle (already initialised by the listener) as a connection. */
struct agent_conn *agent_conn_new(struct agent *a, enum agent_transport t);
int agent_conn_start(struct agent_conn *c);
void agent_conn_close(struct agent_conn *c);

/*
 * Keep the payload @data (@len bytes) of the frame being handled past the handler's return,
 * without copying it: returns the slab it lies in with a reference taken (release it with
 * agent_slab_release once done), or NULL when @len is under AGENT_HOLD_MIN (pinning a whole slab
 * for a small payload would multiply memory per credit byte) or @data is not a received frame's
 * payload; the caller copies then. Only valid inside a data handler.
 */
#define AGENT_HOLD_MIN (64u << 10)
struct agent_slab *agent_conn_hold(struct agent_conn *c, const uint8_t *data, uint32_t len);

/* Start encoding a frame for @c; returns the packer. Finish with agent_conn_send(). */
msgpack_packer *agent_conn_begin(struct agent_conn *c);
/* Finish the frame begun with agent_conn_begin and queue it for writing. */
void agent_conn_send(struct agent_conn *c);
/* Queue a stream-data frame whose payload is @buf (a pool buffer, taken over). */
void agent_conn_send_data(struct agent_conn *c, uint32_t stream, void *buf, uint32_t len);
void agent_conn_reply_error(struct agent_conn *c, uint32_t id, const struct sbx_err *e);
/* [1, id, nil, {}] */
void agent_conn_reply_empty(struct agent_conn *c, uint32_t id);
/* Refuse a new connection: send @e as an error notification, close once it is written. */
void agent_conn_refuse(struct agent_conn *c, const struct sbx_err *e);

/* --- processes ---------------------------------------------------------------------------- */

struct agent_waiter {
    struct agent_link link;
    struct agent_conn *conn;
    uint32_t id;
    bool extend;      /* lifetime waiters: answers a lifetime.extend */
    bool timed;       /* proc waiters: timer is initialised */
    uv_timer_t timer; /* proc.wait timeout_ms */
    struct agent_proc *proc;
};

struct agent_proc {
    struct agent_link link; /* in a->procs */
    struct agent *a;
    uint64_t id;
    pid_t pid;
    char **argv; /* for proc.list */
    char tag[SBX_TAG_MAX + 1];
    struct agent_conn *owner; /* gets proc.exit; NULL once it disconnected */
    struct agent_pipe in, out, err;
    bool has_in, has_out, has_err;
    bool pty;              /* started on a pseudo-terminal */
    int pty_fd;            /* the master (owned by the output pipe's handle), for resize */
    unsigned handles_open; /* pipes + timers still to be closed */
    bool exited;
    bool done; /* exit reported (output ended or drain deadline passed) */
    bool drained;
    bool timed_out;
    bool freeing;
    int status; /* wait status */
    struct rusage ru;
    uint64_t start_ns, end_ns;
    uint64_t start_wall_ns; /* CLOCK_REALTIME at spawn, for proc.list */
    bool collected;         /* the exit was delivered to some client */
    uint32_t drain_ms;
    int kill_signal;
    uint32_t kill_grace_ms;
    uv_timer_t timeout_timer; /* timeout, then grace before SIGKILL */
    uv_timer_t drain_timer;
    bool timeout_armed, grace_phase;
    struct agent_link waiters;
    /* Another object built on this process (a REPL session): told once the exit is reported. */
    void (*on_done)(struct agent_proc *p);
    void *data;
};

/* Request handlers. */
void agent_proc_spawn(struct agent_conn *c, const struct sbx_msg *m);
void agent_proc_wait(struct agent_conn *c, const struct sbx_msg *m);
void agent_proc_kill(struct agent_conn *c, const struct sbx_msg *m);
void agent_proc_list(struct agent_conn *c, const struct sbx_msg *m);
void agent_proc_close_stdin(struct agent_conn *c, const struct sbx_msg *m);
void agent_proc_release(struct agent_conn *c, const struct sbx_msg *m);
void agent_proc_resize(struct agent_conn *c, const struct sbx_msg *m);
/*
 * Start an interpreter for a REPL session: @argv (taken over, also on failure), env/clear_env/
 * cwd/user from @params as proc.spawn reads them, tag @tag. Its stdin and controlling terminal is
 * a new PTY whose master is returned in @master (the caller owns it); stdout and stderr are pipes
 * (p->out, p->err, not yet reading: set their sinks, then agent_pipe_update); @extra_fds become
 * its fds 3 and 4 (the caller closes its copies). No owner: nobody gets proc.exit. Returns NULL
 * with @err (errno with stage, BAD_PARAM, LIMIT max_procs).
 */
struct agent_proc *agent_proc_spawn_repl(struct agent *a, const msgpack_object *params, char **argv,
                                         const char *tag, const int extra_fds[2], int *master,
                                         struct sbx_err *err);
/* SIGCHLD: reap our own children (never waitpid(-1)). */
void agent_proc_reap(struct agent *a);
/* A pipe reached its end: maybe the exit can be reported now. */
void agent_proc_check_done(struct agent_proc *p);
/* A handle of @p finished closing. */
void agent_proc_handle_closed(struct agent_proc *p);
/* The connection is going away: forget it as owner/waiter. */
void agent_proc_conn_gone(struct agent *a, struct agent_conn *c);
/* Re-evaluate every output pipe (after pool buffers were released). */
void agent_proc_pipes_resume(struct agent *a);

/* --- fs family (fs.c, fswalk.c, fswatch.c) ------------------------------------------------ */

/* Path methods (PROTOCOL.md §17.3); each replies to request @m on @c. */
void agent_fs_stat(struct agent_conn *c, const struct sbx_msg *m);
void agent_fs_lstat(struct agent_conn *c, const struct sbx_msg *m);
void agent_fs_readdir(struct agent_conn *c, const struct sbx_msg *m);
void agent_fs_mkdir(struct agent_conn *c, const struct sbx_msg *m);
void agent_fs_remove(struct agent_conn *c, const struct sbx_msg *m);
void agent_fs_rename(struct agent_conn *c, const struct sbx_msg *m);
void agent_fs_copy(struct agent_conn *c, const struct sbx_msg *m);
void agent_fs_chmod(struct agent_conn *c, const struct sbx_msg *m);
void agent_fs_chown(struct agent_conn *c, const struct sbx_msg *m);
void agent_fs_symlink(struct agent_conn *c, const struct sbx_msg *m);
void agent_fs_link(struct agent_conn *c, const struct sbx_msg *m);
void agent_fs_readlink(struct agent_conn *c, const struct sbx_msg *m);
void agent_fs_realpath(struct agent_conn *c, const struct sbx_msg *m);
void agent_fs_truncate(struct agent_conn *c, const struct sbx_msg *m);
void agent_fs_utime(struct agent_conn *c, const struct sbx_msg *m);
void agent_fs_mktemp(struct agent_conn *c, const struct sbx_msg *m);
/* Entry streams (§17.4, §17.5), fswalk.c. */
void agent_fs_walk(struct agent_conn *c, const struct sbx_msg *m);
void agent_fs_glob(struct agent_conn *c, const struct sbx_msg *m);
/* Watches (§17.6), fswatch.c: inotify, per connection. */
void agent_fs_watch(struct agent_conn *c, const struct sbx_msg *m);
void agent_fs_unwatch(struct agent_conn *c, const struct sbx_msg *m);
/* End the connection's watches and release its inotify instance (called by agent_fs_conn_gone). */
void agent_fswatch_conn_gone(struct agent_conn *c);
/* File handles (§17.7), per connection. */
void agent_fs_open(struct agent_conn *c, const struct sbx_msg *m);
void agent_fs_read(struct agent_conn *c, const struct sbx_msg *m);
void agent_fs_write(struct agent_conn *c, const struct sbx_msg *m);
void agent_fs_seek(struct agent_conn *c, const struct sbx_msg *m);
void agent_fs_fstat(struct agent_conn *c, const struct sbx_msg *m);
void agent_fs_fsync(struct agent_conn *c, const struct sbx_msg *m);
void agent_fs_ftruncate(struct agent_conn *c, const struct sbx_msg *m);
void agent_fs_close(struct agent_conn *c, const struct sbx_msg *m);
/* The connection is closing: close its handles and cursors, end its watches. */
void agent_fs_conn_gone(struct agent_conn *c);

/* --- transfers and packs (transfer.c, tree.c, pack.c) ---------------------------------------- */

/*
 * Work that may outlive its stream (an upload finishing in the threadpool, a tree extraction
 * thread, a pack job) registers here, so a closing connection can tell it to send nothing more.
 */
struct agent_job {
    struct agent_link link;                 /* in a->jobs */
    struct agent_conn *conn;                /* NULL once the connection is gone */
    void (*conn_gone)(struct agent_job *j); /* may be NULL; runs before the connection is freed */
};
void agent_job_add(struct agent *a, struct agent_job *j, struct agent_conn *c);
void agent_job_del(struct agent_job *j);
/* The connection is closing: detach every job of @c (job->conn = NULL, then its conn_gone). */
void agent_job_conn_gone(struct agent *a, struct agent_conn *c);

void agent_transfer_upload(struct agent_conn *c, const struct sbx_msg *m);
void agent_transfer_download(struct agent_conn *c, const struct sbx_msg *m);
void agent_transfer_upload_tree(struct agent_conn *c, const struct sbx_msg *m);
void agent_transfer_download_tree(struct agent_conn *c, const struct sbx_msg *m);
void agent_pack_create(struct agent_conn *c, const struct sbx_msg *m);
/* Reply {stream: @sid} to request @id. */
void agent_reply_stream(struct agent_conn *c, uint32_t id, uint32_t sid);
/* Send [2, "transfer.done", {stream, error}] on @c (NULL: nothing to send to). */
void agent_transfer_done_err(struct agent_conn *c, uint32_t sid, const struct sbx_err *e);

/* --- env, users, session, init channel ---------------------------------------------------- */

int agent_env_init(struct agent *a);
void agent_env_free(struct agent *a);
/* Build a NULL-terminated envp: base (unless @clear) overlaid with @overlay (a msgpack map,
 * already validated) and @extra ("K=V" strings, may be NULL). Caller frees with agent_strv_free. */
char **agent_env_build(struct agent *a, bool clear, const msgpack_object *overlay,
                       char *const *extra);
const char *agent_env_lookup(char *const *envp, const char *name);
void agent_strv_free(char **v);
void agent_env_get(struct agent_conn *c, const struct sbx_msg *m);
void agent_env_set(struct agent_conn *c, const struct sbx_msg *m);
void agent_env_unset(struct agent_conn *c, const struct sbx_msg *m);
void agent_env_list(struct agent_conn *c, const struct sbx_msg *m);
/* Check an env map param ({bstr: bstr|nil}); BAD_PARAM naming @field. */
int agent_env_check_map(const msgpack_object *map, const char *field, struct sbx_err *err);
/* Check an environment variable name: non-empty, no '=', no NUL, bounded. */
bool agent_env_name_ok(const char *s, size_t n);

struct agent_user {
    uid_t uid;
    gid_t gid;
    gid_t groups[SBX_GROUPS_MAX];
    int ngroups;
    char name[64];
    char home[SBX_PATH_MAX];
    char shell[SBX_PATH_MAX];
};
/* Look @name (or a numeric uid) up in /etc/passwd and its groups in /etc/group, without NSS.
 * @root is the filesystem prefix ("" normally; tests point it elsewhere). */
int agent_user_lookup(const char *root, const char *name, struct agent_user *u,
                      struct sbx_err *err);
/* Fill @u for a numeric uid: passwd entry if there is one, else gid = uid and no groups. */
int agent_user_by_uid(const char *root, uid_t uid, struct agent_user *u);

/* --- REPL sessions (repl.c) ----------------------------------------------------------------- */

void agent_repl_start(struct agent_conn *c, const struct sbx_msg *m);
void agent_repl_eval(struct agent_conn *c, const struct sbx_msg *m);
void agent_repl_close(struct agent_conn *c, const struct sbx_msg *m);
void agent_repl_list(struct agent_conn *c, const struct sbx_msg *m);
/* The connection is going away: its pending start/eval replies are dropped, sessions stay. */
void agent_repl_conn_gone(struct agent *a, struct agent_conn *c);

void agent_session_hello(struct agent_conn *c, const struct sbx_msg *m);
void agent_session_ping(struct agent_conn *c, const struct sbx_msg *m);
void agent_session_info(struct agent_conn *c, const struct sbx_msg *m);
void agent_session_shutdown(struct agent_conn *c, const struct sbx_msg *m);
void agent_session_lifetime_get(struct agent_conn *c, const struct sbx_msg *m);
void agent_session_lifetime_extend(struct agent_conn *c, const struct sbx_msg *m);
void agent_session_clock_set(struct agent_conn *c, const struct sbx_msg *m);

/* Dispatch a request through the method table. */
void agent_dispatch(struct agent_conn *c, const struct sbx_msg *m);
/* Capabilities this agent announces, NULL-terminated. */
extern const char *const agent_capabilities[];

/* init <-> agent control channel (docs/INIT.md). */
int agent_initctl_open(struct agent *a, int fd);
void agent_initctl_send(struct agent *a, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void agent_initctl_clients_changed(struct agent *a);
void agent_initctl_close(struct agent *a);
/* Forget lifetime requests of a departing connection. */
void agent_initctl_conn_gone(struct agent *a, struct agent_conn *c);

/* --- listeners ---------------------------------------------------------------------------- */

struct agent_listener {
    struct agent_link link;
    struct agent *a;
    enum agent_transport transport;
    char addr[SBX_PATH_MAX + 16];
    union {
        uv_pipe_t pipe;
        uv_tcp_t tcp;
        uv_poll_t poll; /* vsock: libuv has no AF_VSOCK, so accept through a poll handle */
        uv_stream_t stream;
        uv_handle_t handle;
    } h;
    uv_timer_t retry;        /* serial: reopen the port after the host went away */
    int fd;                  /* vsock listening fd; serial device fd */
    char path[SBX_PATH_MAX]; /* serial device path, unix socket path */
    struct agent_conn *serial_conn;
    bool closing;
};

int agent_listen(struct agent *a, const char *addr, struct sbx_err *err);
/* The serial connection went away: schedule reopening the port. */
void agent_listener_serial_gone(struct agent_listener *l);

/* --- the agent ---------------------------------------------------------------------------- */

struct agent {
    uv_loop_t *loop;
    uv_signal_t sigchld, sigterm, sigint;
    struct agent_link listeners;
    struct agent_link conns;
    struct agent_link procs;
    struct agent_link jobs;  /* struct agent_job: transfers and packs that outlive a stream */
    struct agent_link repls; /* live REPL sessions */
    uint32_t next_repl;
    unsigned nconns;
    unsigned nhello; /* connections past hello: the "clients" init counts */
    unsigned nprocs;
    unsigned next_conn;
    uint64_t next_proc;
    uint64_t start_ns;
    char **env; /* base environment, "K=V" */
    size_t env_len, env_cap;
    char token[SBX_TOKEN_MAX + 1];
    bool vsock_allow_local;
    bool quitting;
    /* buffer pool */
    void *pool[64];
    unsigned npool;
    unsigned bufs_used; /* buffers handed out by agent_buf_get and not yet put back */
    bool bufs_starved;  /* an output pipe stopped because bufs_used hit SBX_AGENT_BUFS_MAX */
    /* init channel */
    int initctl_fd;
    uv_poll_t initctl_poll;
    bool initctl_open;
    bool have_boot;
    uint64_t boot_kernel_ns, boot_init_ns, boot_agent_ns, boot_ready_ns;
    struct agent_link lifetime_waiters; /* requests waiting for init's "lifetime" reply */
    char passwd_root[256];              /* "" normally: where /etc/passwd is looked up */
};

/* CLOCK_MONOTONIC / CLOCK_BOOTTIME in nanoseconds. */
uint64_t agent_now_ns(void);
uint64_t agent_boottime_ns(void);
uint64_t agent_realtime_ns(void);

/* Log a line to stderr as "sbx-agent: ..." (init sends it to the console). */
void agent_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif /* SBX_AGENT_H */
