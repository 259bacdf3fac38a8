/*
 * sbx-gateway: the Deno Sandbox API served on a host, on one libuv loop. An SDK client speaks
 * JSON-RPC 2.0 over a WebSocket (docs/GATEWAY.md); each WebSocket is a session bound to one
 * sandbox and to one sbx connection to that sandbox's agent (libsbx's sans-I/O core,
 * sbx/conn.h). This header holds what the parts share:
 *
 *   http.h      HTTP/1.1 server and WebSocket framing (http-parser, wslay, nettle)
 *   sandbox.c   the sandbox table, ids, state in the data dir, backends (vm, addr), timeouts
 *   rest.c      the REST routes (list, delete, extend) and the two WebSocket routes
 *   session.c   one SDK WebSocket <-> one agent connection: JSON-RPC, calls, streams, credit
 *   errmap.c    sbx errors -> Deno ErrorObjects
 *   m_*.c       the JSON-RPC methods, one file per family (gw_methods[] in methods.c)
 */
#ifndef SBX_GW_H
#define SBX_GW_H

#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "sbx/conn.h"

/* --- caps (every buffer and table of the gateway) ----------------------------------------- */

/* A WebSocket message from a client (writeFile sends whole files base64 in one; the SDK's own
 * receive cap is 100 MiB). Bigger: close 1009. */
#define GW_WS_MSG_MAX (96u << 20)
/* Bytes queued for a WebSocket above which agent output stops being acknowledged (so the agent
 * stops sending), and below which it resumes. */
#define GW_WS_HIGH (8u << 20)
#define GW_WS_LOW  (4u << 20)
/* The credit each agent out stream (a process's stdout, a download, a guest connection) starts
 * with on the gateway's agent connections (hello recv_window, PROTOCOL.md §8.3): what the agent
 * may send on it before the gateway consumed any. The agent's own default is 1 MiB; a client that
 * reads nothing holds this much (as base64 JSON, about 1.4x) per stream, on top of GW_WS_HIGH. */
#define GW_AGENT_RECV_WINDOW (64u << 10)
/* Bytes of client stream data buffered for ids started but not yet claimed by a request, per
 * session. Beyond: the session stops reading its WebSocket until they are claimed. */
#define GW_UNCLAIMED_MAX (16u << 20)
/* Bytes queued toward the agent on one `in` stream above which the session stops reading its
 * WebSocket (resumes when the agent has taken them). */
#define GW_AGENT_QUEUE_HIGH (2u << 20)
/* Bytes one sink of a client stream (a process's stdin, streamed writeFile content) buffers
 * toward the agent at most: what a claim delivers at once (GW_UNCLAIMED_MAX), a hold's worth
 * (GW_AGENT_QUEUE_HIGH) and a message more. Beyond, the stream is cut with LIMIT: a hold stops
 * the reading at the next message, so only a message bigger than the rest together gets here. */
#define GW_SINK_MAX (GW_AGENT_QUEUE_HIGH + GW_UNCLAIMED_MAX + (1u << 20))
/* Calls of one session whose answer gathers what an agent stream carries (a whole-file read)
 * running at once; the others wait their turn (gw_call_when_room). */
#define GW_GATHERS_MAX 8
/* Calls in flight on one session (the SDK keeps many processWait calls pending). */
#define GW_CALLS_MAX 4096
/* Client-produced streams open on one session. */
#define GW_CLIENT_STREAMS_MAX 1024
/* Sandboxes one gateway holds. */
#define GW_SANDBOXES_MAX 256
/* WebSocket sessions per sandbox. */
#define GW_SESSIONS_MAX 64

/* --- the gateway ---------------------------------------------------------------------------- */

struct gw_sandbox;
struct gw_session;
struct gw_call;
struct keep;
struct gw_link;
struct gw_ingress;
struct gw_deploy;
struct gw_ssh;
struct gw_http_conn;
struct gw_http_req;

struct gw_opts {
    const char *listen;   /* "127.0.0.1:8080" */
    const char *image;    /* vm backend: the image sbx-rootfs built */
    const char *data_dir; /* tokens, state, VM run dirs, console logs */
    const char *backend;  /* "vm" or "addr:unix:/path" */
    const char *sbx_vm;   /* the sbx-vm runner (default: next to sbx-gateway) */
    const char *mem;      /* default guest memory for sandboxes that ask for none, e.g. "1280M" */
    const char *user;     /* guest user the SDK's processes and files act as ("app") */
    const char *cwd;      /* their working directory ("/home/app") */
    bool quiet;
    bool trace;              /* log every JSON-RPC message in and out */
    const char *http_listen; /* --http-listen: the HTTP ingress of exposeHttp (NULL: none) */
    const char *http_domain; /* --http-domain: exposed domains are <label>.<this> */
    const char *ssh_listen;  /* --ssh-listen: the SSH endpoint of expose/ssh (NULL: none) */
    const char **resolve;    /* --resolve HOST:ADDR, fetch's static host map (egress) */
    size_t nresolve;
    const char *ca_file; /* --ca-file PATH: PEM CA certificates fetch's https trusts too */
    int64_t hello_ms;    /* --agent-hello-timeout: a link's connect and hello (link.c) */
    int64_t stage_ms;    /* --deploy-stage-timeout: each stage of a deploy job (deploy.c) */
    int64_t stall_ms;    /* --stream-stall-timeout: a hold without progress (session.c) */
    int64_t ig_idle_ms;  /* --ingress-idle-timeout: a relayed connection without a byte */
    unsigned ig_conns;   /* --ingress-max-conns: open ingress connections (ingress.c) */
    int64_t ssh_idle_ms; /* --ssh-idle-timeout: an SSH connection running no session (ssh.c) */
    int64_t ssh_ka_ms;   /* --ssh-keepalive: TCP keepalive of SSH connections (ssh.c) */
};

/* --agent-hello-timeout's default: an agent that is up answers hello at once. */
#define GW_HELLO_MS (30 * 1000)
/* --deploy-stage-timeout's default: above the 30 minutes an install or build command may run
 * (deploy.c CMD_TIMEOUT_MS), so that the agent's own timeout of the command speaks first. */
#define GW_STAGE_MS (40 * 60 * 1000)
/* --stream-stall-timeout's default: a receiver that takes nothing for this long is not slow but
 * stuck (a process that does not read its stdin), and the session's other calls wait for it. */
#define GW_STALL_MS (30 * 1000)
/* --ingress-idle-timeout's default: a relayed connection (keep-alive, WebSocket, CONNECT) that
 * moves no byte either way for this long is closed. */
#define GW_IG_IDLE_MS (10 * 60 * 1000)
/* --ingress-max-conns: its default and largest value. */
#define GW_IG_CONNS     1024
#define GW_IG_CONNS_MAX 65536
/* --ssh-idle-timeout's default: an authenticated SSH connection on which no session has run for
 * this long (a ControlMaster left behind, `ssh -N`) is closed. */
#define GW_SSH_IDLE_MS (10 * 60 * 1000)
/* --ssh-keepalive's default: a client that has sent nothing for this long is probed (TCP
 * keepalive), and dropped when 3 probes this far apart go unanswered (about 2 minutes). */
#define GW_SSH_KA_MS (30 * 1000)

struct gw {
    uv_loop_t *loop;
    struct gw_opts opt;
    char token[80];               /* "ddo_" + 40 [0-9a-z]; from DATA/token */
    struct gw_sandbox *sandboxes; /* list */
    unsigned nsandboxes;
    uint64_t next_stream; /* server stream ids for the SDK: a random start in [2^40, 2^41) */
    struct gw_http_server *http;
    struct gw_ingress *ingress; /* ingress.c (NULL: no --http-listen) */
    struct gw_deploy *deploy;   /* deploy.c */
    struct gw_ssh *ssh;         /* ssh.c (NULL: no --ssh-listen) */
    struct gw_walkq *walkq;     /* walk.c: walks whose entries wait for their turn (NULL: none) */
};

/* Log a line to stderr, prefixed "sbx-gateway: ". */
__attribute__((format(printf, 1, 2))) void gw_log(const char *fmt, ...);

/* Milliseconds since the epoch (the SDK's dates). */
int64_t gw_now_ms(void);

/* --agent-hello-timeout, or its default where the options were never parsed (a test harness). */
int64_t gw_hello_ms(const struct gw *g);

/* The longest duration gw_duration_parse takes: a sandbox's timeout, a gateway option. */
#define GW_DURATION_MAX_MS (24 * 60 * 60 * 1000)

/* A duration as the SDK's timeouts and the gateway's options write it, a positive whole number
 * of seconds, minutes or hours ("30s", "5m", "2h"), into *@ms. Returns 0; -1 when @s is not
 * such a duration; -2 when it is longer than GW_DURATION_MAX_MS. */
int gw_duration_parse(const char *s, int64_t *ms);

/* @ms as a person reads it: "30 s", "40 min", "2 h" (the largest whole unit), into @out. */
void gw_duration_text(int64_t ms, char *out, size_t outlen);

/* A JSON number that is a whole value within int64 (an integer, or a real such as 1.7e12 that
 * JavaScript sends for large numbers) into *@out. Returns 0, or -1 for anything else (a
 * fraction, out of range, not a number): no undefined float-to-int conversion. */
int gw_json_int64(const json_t *v, int64_t *out);

/* --- a byte queue (util.c): what a client stream sent, waiting for where it goes ----------- */

struct gw_chunk {
    struct gw_chunk *next;
    size_t len, off; /* data[off..len) is still to go */
    uint8_t data[];
};

struct gw_bytes {
    struct gw_chunk *head, *tail;
    size_t len; /* the bytes still to go, in all chunks */
};

/* Append a copy of @data[0..@len). 0, or -1 out of memory (nothing changed). */
int gw_bytes_push(struct gw_bytes *q, const void *data, size_t len);
/* @n bytes of the head chunk went (at most what it has left): the chunk is freed once done. */
void gw_bytes_take(struct gw_bytes *q, size_t n);
/* Drop everything. */
void gw_bytes_clear(struct gw_bytes *q);

/* The hello of the gateway's agent connections (session.c, link.c): libsbx's defaults and
 * recv_window GW_AGENT_RECV_WINDOW. */
extern const struct sbx_hello gw_agent_hello;

/* --- sandboxes (sandbox.c) ----------------------------------------------------------------- */

enum gw_sandbox_state {
    GW_SB_BOOTING = 1, /* the backend is starting it */
    GW_SB_READY,       /* its agent answers */
    GW_SB_STOPPING,    /* killed or timed out: being powered off */
    GW_SB_GONE,        /* off; the entry stays for list() until freed */
};

struct gw_sandbox {
    struct gw_sandbox *next;
    struct gw *g;
    char id[32]; /* "sbx_ord_" + 20 of [0-9a-hjkmnp-z] */
    enum gw_sandbox_state state;
    json_t *labels;     /* object of string -> string */
    int64_t created_ms; /* creation time */
    int64_t stopped_ms; /* 0 while running */
    int64_t stop_at_ms; /* 0: "session" timeout (ends with its creating session) */
    uint64_t memory_mb; /* as asked (0: the default) */
    json_t *env;        /* object: env vars the config set (Python SDK's `env`), applied by the
                           first session with env.set; NULL: none */
    json_t *config;     /* the create config as received (kept for the state file) */
    json_t *secrets;    /* the config's `secrets` with their values (memory only: the state
                           file's config has them without; NULL after a restart) */
    char addr[4200];    /* the agent's address for sbx_addr_parse ("unix:/path") */
    char why[512];      /* BOOTING failed / GONE: why, for the SDK's error */
    struct gw_session *sessions; /* list of sessions on this sandbox */
    struct gw_session *primary;  /* the creating session while it lives (session timeout) */
    void *backend;               /* the backend's own state */
    struct gw_link *link;        /* the gateway's own agent connection (link.c), or NULL */
};

/* Load the sandboxes recorded in DATA/sandboxes/ (a restart: duration sandboxes whose VM still
 * runs come back READY; the rest are marked GONE). 0, or -1 with a message logged. */
int gw_sandboxes_load(struct gw *g);
/* The sandbox with @id, or NULL. */
struct gw_sandbox *gw_sandbox_find(struct gw *g, const char *id);
/*
 * A new sandbox from the SDK's create config (the decoded x-deno-sandbox-config object, either
 * SDK's shape; may be NULL), started on the backend: BOOTING at return. NULL with a message in
 * @why (a bad config value, too many sandboxes) and *@status the HTTP status to answer.
 */
struct gw_sandbox *gw_sandbox_create(struct gw *g, json_t *config, int *status, char *why,
                                     size_t whylen);
/* Call @cb once @sb is READY (at once if it is) or failed to boot (state GONE, sb->why says
 * why). A waiter can be dropped with gw_sandbox_unwait (the HTTP client gave up). */
typedef void (*gw_sandbox_ready_fn)(struct gw_sandbox *sb, void *user);
void gw_sandbox_wait(struct gw_sandbox *sb, gw_sandbox_ready_fn cb, void *user);
void gw_sandbox_unwait(struct gw_sandbox *sb, gw_sandbox_ready_fn cb, void *user);
/* Power @sb off (DELETE, timeout, primary session gone): STOPPING, every session closed with
 * 1000 @why, then GONE once the backend confirms. Idempotent. */
void gw_sandbox_kill(struct gw_sandbox *sb, const char *why);
/* A session of @sb ended (session.c tells sandbox.c: a "session" sandbox dies with its
 * primary). */
void gw_sandbox_session_ended(struct gw_sandbox *sb, struct gw_session *s);
/* The backend found the VM dead (QEMU exited, agent unreachable): GONE with @why (console tail
 * included by the backend), sessions closed with 1011. */
void gw_sandbox_died(struct gw_sandbox *sb, const char *why);
/* The list entry the SDK reads: {id, region, status, createdAt, stoppedAt, labels,
 * memoryMb, ...}. */
json_t *gw_sandbox_json(const struct gw_sandbox *sb);

/* --- sessions (session.c) ------------------------------------------------------------------ */

struct gw_http_conn;
/*
 * Answer @hc's WebSocket request with the 101 (x-deno-sandbox-id: sb->id) and start a session on
 * READY sandbox @sb: it connects to the agent (sb->addr), says hello, then serves the SDK's
 * JSON-RPC. @primary: the creating session (a "session" timeout ends the sandbox with it).
 * Returns the session, or NULL after answering @hc with an error status itself.
 */
struct gw_session *gw_session_start(struct gw_sandbox *sb, struct gw_http_conn *hc, bool primary);
/* Close every session of @sb with @code and @reason (a kill: 1000; a dead VM: 1011). */
void gw_session_close_all(struct gw_sandbox *sb, uint16_t code, const char *reason);

/* The agent connection of @s (for typed calls), or NULL when it is not (or no longer) up. */
struct sbx_conn *gw_session_conn(struct gw_session *s);

/* The sandbox @s belongs to. */
struct gw_sandbox *gw_session_sandbox(struct gw_session *s);

/* Send a JSON-RPC notification {"jsonrpc":"2.0","method":@method,"params":@params} (@params is
 * stolen). Dropped when the WebSocket is closing. */
void gw_session_notify(struct gw_session *s, const char *method, json_t *params);

/* Write what the agent connection has queued (call after making sbx calls outside a callback of
 * the session; inside one the session flushes on return). */
void gw_session_flush(struct gw_session *s);

/* A new server stream id for the SDK (unique across the gateway, <= 2^53-1). */
uint64_t gw_stream_id(struct gw *g);

/*
 * Server -> client streams. An agent `out` stream (stdout, stderr, a download) relayed as
 * $sandbox.stream.start / enqueue / end / error with a server id. The session acknowledges the
 * agent's bytes (sbx_conn_consumed) only while the WebSocket's queue is under GW_WS_HIGH. @xform
 * (may be NULL: the bytes themselves) turns each agent chunk into zero or more enqueue payloads:
 * it calls gw_ostream_enqueue for each and returns 0, or -1 to fail the stream with an error.
 * gw_ostream_open sends `start` at once and returns the SDK's id.
 */
struct gw_ostream;
typedef int (*gw_ostream_xform_fn)(struct gw_ostream *os, const uint8_t *data, size_t len,
                                   void *user);
uint64_t gw_ostream_open(struct gw_session *s, uint32_t agent_stream, gw_ostream_xform_fn xform,
                         void *user);
/* Send one enqueue of @len bytes (base64) on @os. */
void gw_ostream_enqueue(struct gw_ostream *os, const void *data, size_t len);

/*
 * Client -> server streams: the SDK starts a stream before the request that names it, and may
 * enqueue before or after. The session buffers started, unclaimed streams; a method claims one
 * by id with a sink that receives the decoded bytes, the end, or an error (a sink returns -1 to
 * refuse: the session cancels the stream toward the client). gw_istream_claim returns -1 when
 * the id was never started or is already claimed (the caller answers the call with an error).
 */
struct gw_istream_sink {
    int (*data)(void *user, const uint8_t *data, size_t len);
    void (*end)(void *user);
    void (*error)(void *user, json_t *error); /* the client's error object (borrowed) or NULL */
    void *user;
};
int gw_istream_claim(struct gw_session *s, uint64_t sdk_stream, const struct gw_istream_sink *sink);
/* Stop delivering on a claimed stream and tell the client (cancel) with @reason (stolen, may be
 * NULL). Only for the stream's own claimant. */
void gw_istream_cancel(struct gw_session *s, uint64_t sdk_stream, json_t *reason);
/* A request that names stream @sdk_stream failed before claiming it: cancel the stream as
 * gw_istream_cancel does, unless another call has claimed it (then it is that call's, and left
 * alone). @reason is stolen. */
void gw_istream_refuse(struct gw_session *s, uint64_t sdk_stream, json_t *reason);
/*
 * Agent `out` streams whose bytes a method wants for itself (a whole-file read, walk entries):
 * @fn gets each chunk (end false, err NULL), then once the end (end true, err NULL) or a failure
 * (err set: the agent cancelled the stream, or the connection ended). The session acknowledges
 * the bytes after @fn returns 0; @fn returns -1 to cancel the stream (no further calls). Returns
 * 0, or -1 when @agent_stream is not a live out stream of the session's connection.
 */
typedef int (*gw_sink_fn)(void *user, const uint8_t *data, size_t len, bool end,
                          const struct sbx_err *err);
int gw_session_collect(struct gw_session *s, uint32_t agent_stream, gw_sink_fn fn, void *user);
/*
 * A sink that cannot finish a chunk in this loop turn (work per entry that must not hold up
 * other sessions) returns GW_SINK_LATER: the chunk's bytes stay unacknowledged, so the agent
 * sends no more than its window meanwhile, and later chunks and the end still come to the sink
 * (which keeps them in order). Once through, it acknowledges them with gw_session_collect_ack,
 * or gives the stream up with gw_session_collect_cancel (no further sink calls). Both are for
 * the sink's own stream while it is live, from any callback but the sink's own call, and do
 * nothing once it is not.
 */
#define GW_SINK_LATER 1
void gw_session_collect_ack(struct gw_session *s, uint32_t agent_stream, size_t n);
void gw_session_collect_cancel(struct gw_session *s, uint32_t agent_stream);

/*
 * Agent `in` streams a method feeds (stdin, an upload): @fn is called whenever the agent granted
 * credit or the connection's output drained, so the feeder can write more with sbx_conn_write
 * (it should keep sbx_conn_queued(conn, stream) under GW_AGENT_QUEUE_HIGH, holding the WebSocket
 * with gw_session_hold meanwhile). Returns 0, or -1 when the stream is not live.
 */
typedef void (*gw_credit_fn)(void *user);
int gw_session_feed(struct gw_session *s, uint32_t agent_stream, gw_credit_fn fn, void *user);
/* Stop calling the gw_session_feed callback of @agent_stream (before its user is freed). */
void gw_session_unfeed(struct gw_session *s, uint32_t agent_stream);

/*
 * transfer.done for agent stream @agent_stream (an upload or tree transfer) goes to @fn once
 * (done->failed and done->error tell a failure); when the agent link ends first, @fn gets a
 * failed record with error EOF. Returns 0, or -1 when out of memory.
 */
typedef void (*gw_done_fn)(void *user, const struct sbx_transfer_done *done);
int gw_session_on_done(struct gw_session *s, uint32_t agent_stream, gw_done_fn fn, void *user);

/*
 * $sandbox.stream.cancel from the SDK for server stream @sdk_stream that a method produces itself
 * (with gw_session_notify, e.g. walk entries) goes to @fn once; also called with the session's
 * end. gw_session_off_cancel forgets it (the stream ended). Returns 0, or -1 when out of memory.
 */
int gw_session_on_cancel(struct gw_session *s, uint64_t sdk_stream, void (*fn)(void *user),
                         void *user);
void gw_session_off_cancel(struct gw_session *s, uint64_t sdk_stream);
/* @fn(@user) once, when the session ends (no message of the client's reaches it: state that
 * something else still uses). 0, or -1 (out of memory). */
int gw_session_on_end(struct gw_session *s, void (*fn)(void *user), void *user);

/*
 * Server streams a method produces from a source of its own (a fetch's response body):
 * gw_session_congested is true while the WebSocket's write queue is above GW_WS_HIGH (stop
 * reading the source); @fn registered with gw_session_on_drain is called each time the queue fell
 * back to GW_WS_LOW (resume). gw_session_off_drain forgets @user's registration. on_drain
 * returns 0, or -1 when out of memory.
 */
bool gw_session_congested(struct gw_session *s);
/* The session's agent link has ended (its hooks fire for that, not for a client's cancel). */
bool gw_session_agent_gone(const struct gw_session *s);
int gw_session_on_drain(struct gw_session *s, void (*fn)(void *user), void *user);
void gw_session_off_drain(struct gw_session *s, void *user);

/* The guest user the session's processes run as (NULL: the agent's default). */
const char *gw_session_user(struct gw_session *s);

/* The head of the session's list of Deno REPLs (m_deno.c owns the entries; NULL at start). */
struct dn_repl;
struct dn_repl **gw_session_repls(struct gw_session *s);

/* The working directory relative paths of the SDK resolve against (the sandbox user's home). */
const char *gw_session_cwd(struct gw_session *s);

/*
 * Back-pressure from a client stream's sink whose receiver is full (a process's stdin, a file
 * being written, a fetch's server): while any hold is on, the session does not read its
 * WebSocket, and so nothing else the client sends either, a processKill or an abort included.
 * The holder embeds one, zeroed, in its state with @stalled and @user set. A hold that stays on
 * for --stream-stall-timeout without progress is turned off and @stalled(@user, that timeout in
 * ms) called, from a timer of the session: the holder must give its stream up (cut it, telling
 * the client why), so that one call's receiver cannot stop the session for ever.
 */
struct gw_hold {
    void (*stalled)(void *user, int64_t ms);
    void *user;
    struct gw_hold *next; /* session.c: the session's holds that are on */
    uint64_t since;       /* session.c: when it went on or last made progress (uv_now) */
    bool on;
};
/* Turn @h on or off (turning on a hold that is on, or off one that is off, changes nothing). */
void gw_session_hold(struct gw_session *s, struct gw_hold *h, bool hold);
/* The receiver behind @h took bytes: its stall clock starts again. */
void gw_session_hold_progress(struct gw_session *s, struct gw_hold *h);

/* --- calls (session.c) --------------------------------------------------------------------- */

/*
 * One JSON-RPC request in flight. A method handler answers it exactly once, now or later, with
 * gw_call_ok or one of the gw_call_fail* (never a JSON-RPC `error`: the SDK hangs on those).
 * To make agent requests for it, pass gw_call_expect(call, done_cb) as the typed call's `user`:
 * the RESPONSE event comes to @done_cb. A call stays allocated until it is answered and no
 * agent request of it is outstanding; answers for a session that closed are dropped.
 */
typedef void (*gw_call_done_fn)(struct gw_call *call, const struct sbx_event *ev);

struct gw_call {
    struct gw_session *s;
    json_t *id;           /* the request's id, as sent (owned) */
    const char *method;   /* its method (points into the method table) */
    gw_call_done_fn done; /* the next agent RESPONSE */
    unsigned outstanding; /* agent requests in flight */
    bool answered;
    void *data;                    /* the handler's own state */
    void (*data_free)(void *data); /* frees it with the call (may be NULL) */
    struct gw_call *next, *prev;   /* the session's list */
    struct keep *keeps;            /* session.c: allocations freed with the call (gw_call_keep) */
    uint64_t abort_id;             /* the SDK's abortId + 1 (its ids start at 0); 0: none */
    void (*on_abort)(struct gw_call *call); /* abort{abortId} arrived (may be NULL) */
    bool abort_late; /* on_abort also after the answer (a held call whose stream still runs) */
    bool gathers;    /* session.c: it holds one of the GW_GATHERS_MAX turns */
    void (*room_fn)(struct gw_call *call); /* session.c: gw_call_when_room's, while it waits */
    struct gw_call *room_next;             /* session.c: the calls that wait for a turn */
};

/* Keep @call allocated after its answer while its method still works for it (a fetch whose
 * response body streams): each hold needs one release, which frees the call once it is answered
 * and nothing else of it is outstanding. */
void gw_call_hold(struct gw_call *call);
void gw_call_release(struct gw_call *call);

/*
 * Run @start(@call) once the session has room for one more call whose answer gathers what an
 * agent stream carries (readFile: up to 64 MiB, and its answer): at most GW_GATHERS_MAX run at
 * once, and none starts while the client's queue is above GW_WS_HIGH. Requests the session read
 * in one burst, before any answer existed, would otherwise all gather theirs, whether the client
 * reads or not. Now when there is room, else from one of the session's own callbacks later
 * (never once @call is answered, e.g. aborted meanwhile: it is freed then). The turn ends when
 * the call is freed.
 */
void gw_call_when_room(struct gw_call *call, void (*start)(struct gw_call *call));

/* The `user` for an agent request of @call: sets call->done, counts it outstanding. */
void *gw_call_expect(struct gw_call *call, gw_call_done_fn done);
/* The agent request made with gw_call_expect was refused locally (its typed call returned -1):
 * undo the count. */
void gw_call_unexpect(struct gw_call *call);
/* Free @p with @fn when @call is freed. Returns 0, or -1 when out of memory (@p not taken). */
int gw_call_keep(struct gw_call *call, void *p, void (*fn)(void *));
/* Answer {"ok": @value} (@value stolen; NULL sends null). */
void gw_call_ok(struct gw_call *call, json_t *value);
/* Answer {"error": {constructorName: @cls, message, code: @code (may be NULL)}}. */
__attribute__((format(printf, 4, 5))) void gw_call_fail(struct gw_call *call, const char *cls,
                                                        const char *code, const char *fmt, ...);
/* Answer with the Deno error an sbx error maps to (errmap.c); @op and @path (may be NULL) go in
 * the message as Deno writes it: "<strerror> (os error N): <op> '<path>'". */
void gw_call_fail_sbx(struct gw_call *call, const struct sbx_err *e, const char *op,
                      const char *path);

/* Answer {"error": @error}, an ErrorObject the method
 * built itself (a REPL exception with its guest `stack`); @error stolen. */
void gw_call_fail_obj(struct gw_call *call, json_t *error);

/* --- params (session.c): each returns 0, or -1 having answered the call with a TypeError --- */

/* A string param; @required false: *out NULL when absent or null. */
int gw_param_str(struct gw_call *call, json_t *params, const char *key, bool required,
                 const char **out);
/* An integer param in [min, max]; absent or null with !required: *out = @dflt. */
int gw_param_int(struct gw_call *call, json_t *params, const char *key, bool required, int64_t min,
                 int64_t max, int64_t dflt, int64_t *out);
/* A bool param; absent or null: @dflt. */
int gw_param_bool(struct gw_call *call, json_t *params, const char *key, bool dflt, bool *out);
/* An object param (may be absent: *out NULL unless required). */
int gw_param_obj(struct gw_call *call, json_t *params, const char *key, bool required,
                 json_t **out);
/* An array of strings (absent: *out NULL, *n 0). *out is a NULL-terminated array the call owns
 * (freed with it). */
int gw_param_strv(struct gw_call *call, json_t *params, const char *key, const char ***out,
                  size_t *n);

/* --- errors (errmap.c) --------------------------------------------------------------------- */

/* A Deno ErrorObject {constructorName, message, code, stack: null, name: null, cause: null}. */
json_t *gw_errobj(const char *cls, const char *code, const char *msg);
/* The ErrorObject for an sbx error (class from the errno or the sbx code, code the errno name,
 * the message Deno's way with @op and @path). */
json_t *gw_errobj_sbx(const struct sbx_err *e, const char *op, const char *path);

/* --- methods (methods.c and m_*.c) --------------------------------------------------------- */

typedef void (*gw_method_fn)(struct gw_call *call, json_t *params);

struct gw_method {
    const char *name;
    gw_method_fn fn;
};

/* The method called @name, or NULL when there is none. */
const struct gw_method *gw_method_find(const char *name);

/* A session's agent connection said hello: apply what the sandbox's config asks of every new
 * agent connection (the Python SDK's `env`). */
void gw_methods_session_ready(struct gw_session *s);

/* The body of a REST error answer, {code, message}: the message formatted as printf does (at
 * most 1023 bytes), invalid UTF-8 in it replaced by U+FFFD (it may quote the request, an agent or
 * a console log). NULL only when out of memory (gw_http_respond_json then answers 500). */
__attribute__((format(printf, 2, 3))) json_t *gw_error_body(const char *code, const char *fmt, ...);

/* Answer the REST request of @hc with @status and gw_error_body: the error answer of rest.c and
 * of the services it hands requests to (deploy, ingress, ssh). A macro, so that the answer goes
 * through the gw_http_respond_json of the file that uses it (fuzz targets stand in for that). */
#define gw_rest_error(hc, status, code, ...)                                                       \
    gw_http_respond_json((hc), (status), NULL, gw_error_body((code), __VA_ARGS__))

/* --- services beside the SDK's WebSocket: each starts after the API listener (main.c) and stops
 * on SIGINT/SIGTERM before the sandboxes are shut down; a REST route of rest.c hands it a request
 * for a sandbox that exists (any state: the service answers for states it cannot serve) ------ */

/* HTTP ingress and exposeHttp (ingress.c): --http-listen. start returns 0 (also when not
 * configured), or -1 with a message in @why. */
int gw_ingress_start(struct gw *g, char *why, size_t whylen);
void gw_ingress_stop(struct gw *g);
/* POST /api/v3/sandbox/<id>/expose/http -> {domain}. */
void gw_rest_expose_http(struct gw *g, struct gw_http_conn *hc, const struct gw_http_req *req,
                         struct gw_sandbox *sb);
/* The exposeHttp{domain, port | pid} method. */
void gw_m_expose_http(struct gw_call *call, json_t *params);

/* The fetch{url, method, headers, redirect, abortId?, bodyStreamId?, pid?} method (fetch.c). */
void gw_m_fetch(struct gw_call *call, json_t *params);
/* Check fetch's options (--resolve) at start: 0, or -1 with a message in @why. */
int gw_fetch_start(struct gw *g, char *why, size_t whylen);
/* A session's agent connection said hello: set the secrets' placeholders in the sandbox's env
 * (once per sandbox and gateway run). */
void gw_fetch_session_ready(struct gw_session *s);

/* Deploy and revisions (deploy.c): start loads DATA/revisions. 0, or -1 with @why. */
int gw_deploy_start(struct gw *g, char *why, size_t whylen);
void gw_deploy_stop(struct gw *g);
/* POST /api/v2/sandboxes/<id>/deploy -> {revision_id}. */
void gw_rest_deploy(struct gw *g, struct gw_http_conn *hc, const struct gw_http_req *req,
                    struct gw_sandbox *sb);
/* GET /api/v2/revisions/<rev>[/<what>]: @what is "" (the revision), "progress", "timelines" or
 * "build_logs" (Server-Sent Events). */
void gw_rest_revision(struct gw *g, struct gw_http_conn *hc, const struct gw_http_req *req,
                      const char *rev, const char *what);

/* SSH (ssh.c): --ssh-listen. start returns 0 (also when not configured), or -1 with @why. */
int gw_ssh_start(struct gw *g, char *why, size_t whylen);
void gw_ssh_stop(struct gw *g);
/* POST /api/v3/sandbox/<id>/expose/ssh -> {hostname, username}. */
void gw_rest_expose_ssh(struct gw *g, struct gw_http_conn *hc, const struct gw_http_req *req,
                        struct gw_sandbox *sb);

#endif /* SBX_GW_H */
