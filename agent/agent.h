/*
 * sbx-agent: the core every file shares: lists, buffers, the one struct agent that holds all state
 * and is passed explicitly, time and logging. Each object kind lives in its own file with a header
 * of the same name (conn.h, stream.h, proc.h, fs.h, transfer.h, env.h, repl.h, session.h,
 * listener.h), and so do the helpers several files share: path.h (split, mkdir -p, opening under
 * a root), glob.h (`**` patterns) and strv.h (string vectors).
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

/* Elements of the array @a (an array, not a pointer). */
#define ARRAY_SIZE(a)                         (sizeof(a) / sizeof((a)[0]))

#define agent_container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

void agent_list_init(struct agent_link *head);
void agent_list_add_tail(struct agent_link *head, struct agent_link *node);
void agent_list_del(struct agent_link *node);
bool agent_list_empty(const struct agent_link *head);

struct agent;
struct agent_conn;
struct agent_proc;
struct agent_cgroup;

/*
 * A request handler (dispatch.c's method table) returns AGENT_REPLIED once it has sent the
 * response, AGENT_LATER when a waiter or job now owns the request id and will answer it, or -1
 * with @err set, and then the dispatcher sends the error: handlers never write their own error
 * replies.
 */
#define AGENT_REPLIED 0
#define AGENT_LATER   1

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

/*
 * Input for a pipe or socket that already has a write in flight, when it comes in small payloads:
 * gathered here and written as one once the writes before it completed. A write request of its
 * own per payload costs some 250 bytes whatever the payload's length, so a client sending
 * one-byte frames within a 1 MiB window to a reader that takes nothing made the agent hold
 * hundreds of MB. Grows by doubling; what it holds is bounded by the stream's credit.
 */
struct agent_tail {
    uint8_t *buf;
    uint32_t len, cap;
};

/* Append @n bytes; -1 when out of memory (nothing appended). */
int agent_tail_add(struct agent_tail *t, const uint8_t *data, uint32_t n);
/* The bytes gathered (malloc'd, the caller's to free; *@len set), the tail left empty. */
uint8_t *agent_tail_take(struct agent_tail *t, uint32_t *len);
void agent_tail_free(struct agent_tail *t);

/* --- the agent ---------------------------------------------------------------------------- */

struct agent {
    uv_loop_t *loop;
    uv_signal_t sigchld, sigterm, sigint;
    struct agent_link listeners;
    struct agent_link conns;
    struct agent_link procs;
    struct agent_link repls; /* live REPL sessions */
    uint32_t next_repl;
    unsigned nconns; /* connection objects alive: info's "conns" (refused and closing ones too) */
    unsigned nhello; /* connections past hello: the "clients" init counts */
    /* Admission (conn.c): connections admitted and not closing, per enum agent_transport, and
     * the TCP ones among them still waiting for hello; the caps count these. */
    unsigned nconns_kind[4];
    unsigned nconns_tcp_hello;
    struct agent_link prehello; /* admitted connections waiting for hello, oldest first */
    uv_timer_t hello_timer;     /* fires at the oldest one's hello deadline */
    unsigned hello_timeout_ms;
    uint64_t refused_log_ms; /* the last refusal logged (rate-limited: floods must not flood) */
    unsigned refused_quiet;  /* refusals not logged since */
    unsigned nprocs;
    unsigned next_conn;
    uint64_t next_proc;
    uint64_t start_ns;
    char **env; /* base environment, "K=V" */
    size_t env_len, env_cap;
    char token[SBX_TOKEN_MAX + 1];
    bool vsock_allow_local;
    /* buffer pool */
    void *pool[64];
    unsigned npool;
    unsigned bufs_used; /* buffers handed out by agent_buf_get and not yet put back */
    bool bufs_starved;  /* an output pipe or socket stopped because bufs_used hit the cap */
    struct agent_link net_starved; /* net.connect sockets stopped so (net.c): resumed with them */
    /* init channel */
    int initctl_fd;
    uv_poll_t initctl_poll;
    bool initctl_open;
    bool have_boot;
    uint64_t boot_kernel_ns, boot_init_ns, boot_agent_ns, boot_ready_ns;
    struct agent_link lifetime_waiters; /* requests waiting for init's "lifetime" reply */
    char passwd_root[256];              /* "" normally: where /etc/passwd is looked up */
    struct agent_cgroup *cgroup;        /* cgroup.c: the workload cgroup; NULL: no limits */
    struct rlimit nofile; /* RLIMIT_NOFILE as the agent found it, if it raised its own (else
                           * zero): workloads get it back */
    int devnull;          /* /dev/null, O_CLOEXEC: the stdio children are given none of */
    /* Replay rings (stream.c): the size of one output's ring and of all of them (--replay), the
     * bytes allocated now; the pacing of output nobody holds (one timer for every pipe). */
    uint32_t replay_stream;
    uint64_t replay_total;
    uint64_t replay_used;
    uv_timer_t pace_timer;
    bool pace_init;     /* pace_timer initialised */
    bool pace_hits;     /* some pipe waited for the pace timer in this period */
    uint64_t pace_used; /* bytes read from output nobody holds in this period */
};

/* CLOCK_MONOTONIC / CLOCK_BOOTTIME in nanoseconds. */
uint64_t agent_now_ns(void);
uint64_t agent_boottime_ns(void);
uint64_t agent_realtime_ns(void);

/* Log a line to stderr as "sbx-agent: ..." (init sends it to the console). */
void agent_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif /* SBX_AGENT_H */
