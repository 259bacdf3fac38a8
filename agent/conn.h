/* Connections (conn.c): framing in, frames out, replies. */
#ifndef SBX_AGENT_CONN_H
#define SBX_AGENT_CONN_H

#include "agent.h"

/* --- connections -------------------------------------------------------------------------- */

enum agent_transport { AGENT_T_UNIX, AGENT_T_VSOCK, AGENT_T_TCP, AGENT_T_SERIAL };

/*
 * Something that belongs to a connection or refers to it and must hear when it goes: a waiter
 * that will answer a request, a job that sends notifications, a family's per-connection state,
 * the owner of a process. It registers itself; the closing connection walks its list and calls
 * each gone() (after its streams were released), so conn.c knows no family. Embed it in the
 * object; gone() may free the object.
 */
struct agent_conn_ref {
    struct agent_link link;  /* in conn->refs; unlinked (self-linked or zeroed) otherwise */
    struct agent_conn *conn; /* NULL once the connection is gone */
    void (*gone)(struct agent_conn_ref *r);
};

/* Register @r with @c; @gone runs when @c closes (with r->conn already NULL). */
void agent_conn_ref_add(struct agent_conn *c, struct agent_conn_ref *r,
                        void (*gone)(struct agent_conn_ref *r));
/* Unregister @r (a no-op when it is not registered); r->conn becomes NULL. */
void agent_conn_ref_del(struct agent_conn_ref *r);

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

    /* Admission (agent_conn_admit) and the hello deadline. */
    bool counted;               /* admitted to its pool and not closing */
    struct agent_link prehello; /* in a->prehello until hello succeeds or it closes */
    uint64_t hello_deadline;    /* uv_now() after which it is closed without a hello */
    bool input_paused;          /* not reading: the peer left too much control output unread */

    uint32_t version;
    uint32_t next_stream;
    uint32_t out_window; /* the credit our out streams start with: hello recv_window (§8.3) */
    uint32_t next_pack;  /* pack.create job ids */
    unsigned nstreams;
    uint32_t stream_frees; /* streams freed so far: a walk over @streams that calls out checks it */
    uint32_t pending;      /* requests received and not yet answered (max_pending, §5.1) */
    int64_t cur_req;       /* the request being dispatched, -1 outside dispatch */
    uint32_t cur_replies;  /* responses sent to cur_req so far (the dispatcher's debug check) */
    struct agent_link streams;
    struct agent_link refs; /* struct agent_conn_ref: what hears of this connection's end */
    struct sbx_framer framer;
    struct sbx_decoder dec;
    struct sbx_out out;      /* scratch for encoding one control frame */
    struct agent_slab *slab; /* read buffer; replaced when a handler holds it */
    /* Output handed to uv_write and not yet written: data frames count their bytes (their pool
     * buffers are capped agent-wide), control frames the memory they hold (conn.c's
     * write_req_mem); ctl_mem is the control frames' share. */
    size_t queued;
    size_t ctl_mem;
    /* Of ctl_mem, results sent with agent_conn_send_result (held_n of them, at most
     * SBX_CONN_RESULTS_MAX): not counted toward the close bound. */
    size_t held_mem;
    unsigned held_n;
    struct agent_fs *fs;      /* fsconn.c: file handles and readdir cursors, or NULL */
    struct agent_fswatch *fw; /* fswatch.c: this connection's watches, or NULL */
};

/* A new connection object for transport @t, not yet admitted (the listener initialises and opens
 * its handle, then calls agent_conn_admit); NULL when out of memory. */
struct agent_conn *agent_conn_new(struct agent *a, enum agent_transport t);
/*
 * Admit @c (its handle open) to its transport's pool and start reading, with the hello deadline
 * running; or, when the pool is full, send it an error notification LIMIT and close it once that
 * is written. Returns 0 when admitted, -1 when refused or reading could not start: @c is closing
 * then and the caller forgets it. Unix and vsock share SBX_MAX_CONNS; TCP has SBX_MAX_CONNS_TCP,
 * at most SBX_MAX_CONNS_TCP_HELLO of them before hello; a serial port is one connection.
 */
int agent_conn_admit(struct agent_conn *c);
/* Close @c (idempotent): it stops counting at once; its memory goes in the close callback. */
void agent_conn_close(struct agent_conn *c);
/* hello succeeded on @c with protocol @version: stop its hello deadline, count it as a client. */
void agent_conn_hello_done(struct agent_conn *c, uint32_t version);
/* The cap of the pool connections over @t are admitted to (hello's limits.max_conns). */
unsigned agent_conn_pool_cap(enum agent_transport t);
/* The hello deadline's timer; called once at start-up. */
void agent_conn_init(struct agent *a);

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
/* The same for a large response its producer held until now and is bounded by (a REPL eval's
 * result, at most some 3 MiB per session): it pauses the peer's input like any control output,
 * but up to SBX_CONN_RESULTS_MAX of them at once do not count toward the bound past which a peer
 * that does not read is closed, so a peer that pauses reading while a few such results come
 * loses none of them (nor the connection). */
void agent_conn_send_result(struct agent_conn *c);
/* Queue a stream-data frame whose payload is @buf (a pool buffer, taken over). */
void agent_conn_send_data(struct agent_conn *c, uint32_t stream, void *buf, uint32_t len);
void agent_conn_reply_error(struct agent_conn *c, uint32_t id, const struct sbx_err *e);
/* [1, id, nil, {}] */
void agent_conn_reply_empty(struct agent_conn *c, uint32_t id);

#endif /* SBX_AGENT_CONN_H */
