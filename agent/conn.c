/*
 * One host connection: bytes in through the framer, messages out through uv_write. Owns its
 * streams; processes it spawned are not its property and keep running when it goes away.
 */
#include "conn.h"

#include <assert.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "listener.h"
#include "sbx/schema.h"
#include "session.h"
#include "stream.h"

struct write_req {
    uv_write_t req;
    struct agent_conn *conn;
    void *ctl;     /* control frame bytes (malloc'd), or NULL */
    void *payload; /* data frame payload (pool buffer), or NULL */
    size_t len;
    size_t cost; /* what it counts in c->queued: data, its bytes; control, its memory */
    bool result; /* counted in c->held_mem (agent_conn_send_result) */
    uint8_t hdr[SBX_STREAM_DATA_HDR_MAX];
};

static void conn_close_cb(uv_handle_t *h);
static void conn_input_resume(struct agent_conn *c);

/*
 * The memory a queued control frame holds: both allocations as malloc sized them, plus a chunk
 * header each. For a small reply that is twenty times its bytes: counting bytes let a peer that
 * never read 640,000 pongs grow the agent by 181 MB under a "bound" of 8 MiB.
 */
#define CONN_CHUNK_HDR 16u
static size_t write_req_mem(struct write_req *wr)
{
    return malloc_usable_size(wr) + malloc_usable_size(wr->ctl) + 2 * CONN_CHUNK_HDR;
}

#ifndef NDEBUG
/*
 * Debug and sanitizer builds check the admission counters against the connection list on every
 * change: they must count exactly the admitted connections that are not closing (once refused
 * and closing ones counted, and the count reached 270 against a cap of 64).
 */
static void conn_counts_check(const struct agent *a)
{
    unsigned kind[ARRAY_SIZE(a->nconns_kind)] = { 0 }, tcp_hello = 0, all = 0, waiting = 0;
    const struct agent_link *l;

    for (l = a->conns.next; l != &a->conns; l = l->next) {
        const struct agent_conn *c = agent_container_of(l, struct agent_conn, link);
        all++;
        assert(!(c->counted && c->closing));
        if (c->counted) {
            kind[c->transport]++;
            tcp_hello += c->transport == AGENT_T_TCP && !c->hello_done;
            waiting += c->transport != AGENT_T_SERIAL && !c->hello_done;
        }
    }
    for (l = a->prehello.next; l != &a->prehello; l = l->next) {
        waiting--;
    }
    assert(all == a->nconns && waiting == 0 && tcp_hello == a->nconns_tcp_hello);
    assert(memcmp(kind, a->nconns_kind, sizeof(kind)) == 0);
}
#else
#define conn_counts_check(a) ((void)0)
#endif

/*
 * Give the framer a pooled buffer (AGENT_POOLBUF bytes) unless it has one: frames that straddle
 * reads are collected there, and agent_conn_hold takes only buffers of that size. Called at the
 * start and after each frame the framer collected was handled, so a buffer grown for a large
 * control frame (up to SBX_FRAME_MAX) is dropped at once instead of being kept, or held for a
 * small payload.
 */
static void conn_framer_rebuf(struct agent_conn *c)
{
    uint32_t len, cap;
    uint8_t *buf;

    if (c->framer.buf != NULL && c->framer.buf_cap == AGENT_POOLBUF) {
        return;
    }
    free(sbx_framer_take(&c->framer, &len)); /* the frame in it was handled */
    buf = agent_pool_take(c->a, &cap);
    if (buf != NULL) {
        (void)sbx_framer_give(&c->framer, buf, cap); /* cannot fail: the framer has none now */
    }
}

struct agent_conn *agent_conn_new(struct agent *a, enum agent_transport t)
{
    struct agent_conn *c = calloc(1, sizeof(*c));

    if (c == NULL) {
        return NULL;
    }
    /* Read slab: one largest stream-data frame fits whole, so it can be handled in place. */
    c->slab = agent_slab_new(a);
    if (c->slab == NULL || sbx_decoder_init(&c->dec) != 0) {
        if (c->slab != NULL) {
            agent_slab_release(a, c->slab);
        }
        free(c);
        return NULL;
    }
    c->a = a;
    c->transport = t;
    c->num = ++a->next_conn;
    c->next_stream = 1;
    c->out_window = SBX_STREAM_WINDOW;
    agent_list_init(&c->streams);
    agent_list_init(&c->refs);
    agent_list_init(&c->prehello);
    c->cur_req = -1;
    sbx_framer_init(&c->framer, SBX_FRAME_MAX);
    conn_framer_rebuf(c);
    sbx_out_init(&c->out);
    c->h.handle.data = c;
    agent_list_add_tail(&a->conns, &c->link);
    a->nconns++;
    return c;
}

static void write_cb(uv_write_t *req, int status)
{
    struct write_req *wr = agent_container_of(req, struct write_req, req);
    struct agent_conn *c = wr->conn;

    c->queued -= wr->cost;
    c->ctl_mem -= wr->ctl != NULL ? wr->cost : 0;
    if (wr->result) {
        c->held_mem -= wr->cost;
        c->held_n--;
    }
    free(wr->ctl);
    if (wr->payload != NULL) {
        agent_buf_put(c->a, wr->payload);
    }
    free(wr);
    if (c->paused && c->queued < SBX_CONN_DATA_LOW && !c->closing) {
        struct agent_link *l, *next;
        c->paused = false;
        for (l = c->streams.next; l != &c->streams; l = next) {
            struct agent_stream *s = agent_container_of(l, struct agent_stream, link);
            uint32_t id = s->id, frees = c->stream_frees;
            next = l->next;
            if (s->pipe != NULL) {
                agent_pipe_update(s->pipe);
            } else if (s->ops != NULL && s->ops->ready != NULL && s->credit > 0) {
                s->ops->ready(s);
            }
            if (c->stream_frees != frees) {
                /* An owner ended streams here, not only its own (a REPL eval ends both of its
                 * streams from one pipe's bound): go on at the first stream after @id (the list
                 * is in id order, ids only grow). */
                for (next = c->streams.next; next != &c->streams; next = next->next) {
                    if (agent_container_of(next, struct agent_stream, link)->id > id) {
                        break;
                    }
                }
            }
        }
    }
    if (status < 0 && status != UV_ECANCELED) {
        agent_conn_close(c);
        return;
    }
    if (c->close_after_flush && c->queued == 0) {
        agent_conn_close(c);
        return;
    }
    conn_input_resume(c);
}

static void conn_write(struct agent_conn *c, struct write_req *wr, uv_buf_t *bufs, unsigned n)
{
    int r;

    wr->conn = c;
    if (c->closing) {
        free(wr->ctl);
        if (wr->payload != NULL) {
            agent_buf_put(c->a, wr->payload);
        }
        free(wr);
        return;
    }
    /* Straight to the socket when nothing is queued before the frame: a frame written whole
     * here needs no write request, whose completion would cost the loop an epoll_ctl (libuv
     * re-arms the handle after every drained queue) on each answer of a round trip. What the
     * socket does not take goes the usual way; so does everything once close_after_flush is set
     * (write_cb closes then). */
    if (!c->close_after_flush && uv_stream_get_write_queue_size(&c->h.stream) == 0) {
        size_t total = 0;
        int w;

        for (unsigned i = 0; i < n; i++) {
            total += bufs[i].len;
        }
        w = uv_try_write(&c->h.stream, bufs, n);
        if (w >= 0 && (size_t)w == total) {
            free(wr->ctl);
            if (wr->payload != NULL) {
                agent_buf_put(c->a, wr->payload);
            }
            free(wr);
            return;
        }
        if (w < 0 && w != UV_EAGAIN) {
            free(wr->ctl);
            if (wr->payload != NULL) {
                agent_buf_put(c->a, wr->payload);
            }
            free(wr);
            agent_log("conn %u: write: %s", c->num, uv_strerror(w));
            agent_conn_close(c);
            return;
        }
        for (size_t left = w > 0 ? (size_t)w : 0; left > 0;) { /* skip what went */
            size_t k = left < bufs->len ? left : bufs->len;
            bufs->base += k;
            bufs->len -= k;
            left -= k;
            if (bufs->len == 0) {
                bufs++;
                n--;
            }
        }
    }
    /* A data frame's payload is a pool buffer, counted agent-wide (SBX_AGENT_BUFS_MAX). */
    wr->cost = wr->ctl != NULL ? write_req_mem(wr) : wr->len;
    c->queued += wr->cost;
    c->ctl_mem += wr->ctl != NULL ? wr->cost : 0;
    if (wr->result && wr->ctl != NULL && c->held_n < SBX_CONN_RESULTS_MAX) {
        c->held_mem += wr->cost;
        c->held_n++;
    } else {
        wr->result = false;
    }
    r = uv_write(&wr->req, &c->h.stream, bufs, n, write_cb);
    if (r < 0) {
        c->queued -= wr->cost;
        c->ctl_mem -= wr->ctl != NULL ? wr->cost : 0;
        if (wr->result) {
            c->held_mem -= wr->cost;
            c->held_n--;
        }
        free(wr->ctl);
        if (wr->payload != NULL) {
            agent_buf_put(c->a, wr->payload);
        }
        free(wr);
        agent_log("conn %u: write: %s", c->num, uv_strerror(r));
        agent_conn_close(c);
        return;
    }
    if (c->queued > SBX_CONN_DATA_HIGH) {
        c->paused = true; /* output pipes check this before reading more */
    }
    /* A peer that sends requests but never reads the answers must not grow us without bound.
     * Stream data is bounded by credit and the buffer cap, so only control output counts, as the
     * memory it holds. Above SBX_CONN_CTL_HIGH the connection is not read any more (the peer's
     * writes block) until the peer reads; what still comes (the answers to what was read,
     * notifications) closes it past SBX_CONN_OUTQ_MAX. */
    if (c->ctl_mem - c->held_mem > SBX_CONN_OUTQ_MAX) {
        agent_log("conn %u: peer is not reading (%zu bytes of control output queued); closing",
                  c->num, c->ctl_mem);
        agent_conn_close(c);
        return;
    }
    if (c->ctl_mem > SBX_CONN_CTL_HIGH && !c->input_paused) {
        c->input_paused = true; /* the rest of the read being handled still is */
        (void)uv_read_stop(&c->h.stream);
    }
}

msgpack_packer *agent_conn_begin(struct agent_conn *c)
{
    sbx_out_reset(&c->out);
    sbx_out_begin(&c->out);
    return &c->out.pk;
}

/*
 * The request id of the response encoded in @c's scratch buffer, or -1 when the message there is
 * not a response. Every way of answering a request (direct, deferred, error) ends here, whoever
 * encoded it, so the envelope bytes are read back rather than trusted to each caller: the
 * response head is [1, id, ...] with the id in msgpack's shortest unsigned form.
 */
static int64_t out_response_id(const struct agent_conn *c)
{
    const uint8_t *p = (const uint8_t *)c->out.sb.data + c->out.start + SBX_FRAME_HDR;
    size_t n = c->out.sb.size - c->out.start - SBX_FRAME_HDR;
    unsigned w;

    if (n < 3 || p[0] != 0x94 || p[1] != SBX_MSG_RESPONSE) {
        return -1;
    }
    if (p[2] <= 0x7f) {
        return p[2];
    }
    if (p[2] < 0xcc || p[2] > 0xce) {
        return -1;
    }
    w = 1u << (p[2] - 0xcc);
    if (n < 3 + w) {
        return -1;
    }
    {
        uint32_t id = 0;
        for (unsigned i = 0; i < w; i++) {
            id = id << 8 | p[3 + i];
        }
        return id;
    }
}

/* Finish the frame being encoded and queue it; @result: agent_conn_send_result's kind. */
static void conn_send(struct agent_conn *c, bool result)
{
    struct sbx_err err;
    struct write_req *wr;
    int64_t rid = c->out.sb.size >= c->out.start + SBX_FRAME_HDR ? out_response_id(c) : -1;
    uv_buf_t buf;

    if (sbx_out_end(&c->out, &err) < 0) {
        agent_log("conn %u: dropping an outgoing message: %s", c->num, err.msg);
        if (rid < 0) {
            return;
        }
        /* A result that does not fit a frame is replaced by the error (PROTOCOL.md §5.2), so the
         * request is still answered; the error itself always fits. */
        sbx_pack_error_response(agent_conn_begin(c), (uint32_t)rid, &err);
        if (sbx_out_end(&c->out, &err) < 0) {
            return;
        }
    }
#ifndef NDEBUG
    /* Debug and sanitizer builds check every control frame against the schema before it goes
     * out: a record that breaks its table is our bug, caught here rather than by a client. */
    if (sbx_schema_check((const uint8_t *)c->out.sb.data + c->out.start + SBX_FRAME_HDR,
                         c->out.sb.size - c->out.start - SBX_FRAME_HDR, &err) < 0) {
        agent_log("conn %u: outgoing frame breaks the schema: %s", c->num, err.msg);
        abort();
    }
#endif
    if (rid >= 0 && c->pending > 0) {
        c->pending--;
    }
    if (rid >= 0 && rid == c->cur_req) {
        c->cur_replies++;
    }
    wr = calloc(1, sizeof(*wr));
    if (wr == NULL) {
        agent_log("conn %u: out of memory", c->num);
        agent_conn_close(c);
        return;
    }
    wr->result = result;
    if (c->out.sb.size <= 16384) {
        /* A small frame gets an exact copy: stealing would pin the encoder's whole buffer (8 KiB
         * at least) per queued frame, which many queued notifications (fs.event) multiply. */
        wr->len = c->out.sb.size;
        wr->ctl = malloc(wr->len);
        if (wr->ctl != NULL) {
            memcpy(wr->ctl, c->out.sb.data, wr->len);
        }
    } else {
        wr->ctl = sbx_out_steal(&c->out, &wr->len);
        sbx_out_init(&c->out);
        /* The encoder's buffer grew by doubling: give back what the frame does not use, which
         * can be half of it, before it waits in the queue. */
        if (wr->ctl != NULL && malloc_usable_size(wr->ctl) - wr->len >= 4096) {
            char *fit = realloc(wr->ctl, wr->len);
            wr->ctl = fit != NULL ? fit : wr->ctl;
        }
    }
    if (wr->ctl == NULL) {
        free(wr);
        agent_conn_close(c);
        return;
    }
    buf = uv_buf_init(wr->ctl, (unsigned)wr->len);
    conn_write(c, wr, &buf, 1);
}

void agent_conn_send(struct agent_conn *c)
{
    conn_send(c, false);
}

void agent_conn_send_result(struct agent_conn *c)
{
    conn_send(c, true);
}

void agent_conn_send_data(struct agent_conn *c, uint32_t stream, void *payload, uint32_t len)
{
    struct write_req *wr = malloc(sizeof(*wr));
    uv_buf_t bufs[2];
    size_t h;

    if (wr == NULL) {
        agent_buf_put(c->a, payload);
        agent_conn_close(c);
        return;
    }
    wr->ctl = NULL;
    wr->payload = payload;
    wr->result = false;
    h = sbx_data_header(wr->hdr, stream, len);
    wr->len = h + len;
    bufs[0] = uv_buf_init((char *)wr->hdr, (unsigned)h);
    bufs[1] = uv_buf_init(payload, len);
    conn_write(c, wr, bufs, 2);
}

void agent_conn_reply_error(struct agent_conn *c, uint32_t id, const struct sbx_err *e)
{
    sbx_pack_error_response(agent_conn_begin(c), id, e);
    agent_conn_send(c);
}

void agent_conn_reply_empty(struct agent_conn *c, uint32_t id)
{
    msgpack_packer *pk = agent_conn_begin(c);

    sbx_pack_response_head(pk, id);
    msgpack_pack_map(pk, 0);
    agent_conn_send(c);
}

/* Tell the peer something is wrong with what it sent when no request id can carry it. */
static void conn_notify_error(struct agent_conn *c, const struct sbx_err *e)
{
    msgpack_packer *pk = agent_conn_begin(c);

    sbx_pack_notify_head(pk, "error");
    sbx_pack_err(pk, e);
    agent_conn_send(c);
}

static void conn_handle_frame(struct agent_conn *c, const uint8_t *buf, uint32_t len)
{
    struct sbx_msg m;
    struct sbx_err err;
    uint64_t sid;

    if (sbx_msg_decode(&c->dec, buf, len, &m, &err) < 0) {
        if (m.kind == SBX_MSG_DATA && c->hello_done &&
            agent_stream_on_bad_data(c, m.stream, &err)) {
            return;
        }
        if (m.id_valid) {
            c->pending++; /* answered at once: the reply uncounts it */
            agent_conn_reply_error(c, m.id, &err);
        } else {
            conn_notify_error(c, &err);
        }
        return;
    }
    switch (m.kind) {
    case SBX_MSG_REQUEST:
        /* Counted until answered; its response, whatever path sends it, uncounts it. */
        if (++c->pending > SBX_MAX_PENDING) {
            sbx_err_limit(&err, "max_pending", SBX_MAX_PENDING,
                          "more than %u requests outstanding on this connection", SBX_MAX_PENDING);
            agent_conn_reply_error(c, m.id, &err);
            return;
        }
        if (!c->hello_done && !sbx_msg_method_is(&m, "hello")) {
            sbx_err_set(&err, SBX_E_HELLO_REQUIRED, "the first request must be hello");
            agent_conn_reply_error(c, m.id, &err);
            return;
        }
        agent_dispatch(c, &m);
        return;
    case SBX_MSG_NOTIFY:
        if (!c->hello_done) {
            return;
        }
        if ((sbx_msg_method_is(&m, "stream.credit") || sbx_msg_method_is(&m, "stream.end") ||
             sbx_msg_method_is(&m, "stream.cancel")) &&
            sbx_param_u64(m.params, "stream", SBX_REQUIRED, 1, UINT32_MAX, &sid, &err) < 0) {
            struct sbx_err bad;
            /* A notification has no request to fail: an error notification names it (§8.6). */
            sbx_err_set(&bad, SBX_E_BAD_MESSAGE, "%.*s: %s", (int)m.method_len, m.method, err.msg);
            snprintf(bad.field, sizeof(bad.field), "stream");
            conn_notify_error(c, &bad);
            return;
        }
        if (sbx_msg_method_is(&m, "stream.credit")) {
            agent_stream_on_credit(c, &m);
        } else if (sbx_msg_method_is(&m, "stream.end")) {
            agent_stream_on_end(c, &m);
        } else if (sbx_msg_method_is(&m, "stream.cancel")) {
            agent_stream_on_cancel(c, &m);
        }
        /* Unknown notifications are ignored (PROTOCOL.md, versioning). */
        return;
    case SBX_MSG_DATA:
        if (!c->hello_done) {
            return; /* no stream can exist yet: discarded (PROTOCOL.md §5.5) */
        }
        agent_stream_on_data(c, &m);
        return;
    default:
        sbx_err_set(&err, SBX_E_BAD_MESSAGE, "the agent does not expect responses");
        conn_notify_error(c, &err);
        return;
    }
}

/* The rest of a frame straddling reads is read in place when at least this much is missing. */
#define CONN_INPLACE_MIN (16u << 10)

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct agent_conn *c = h->data;
    uint8_t *dst;
    size_t missing = sbx_framer_space(&c->framer, &dst);

    /* A large frame (stdin data) that straddled reads: read its remainder straight into the
     * framer's buffer, sparing the copy out of the slab. Exactly the remainder, so the next frame
     * lands in the slab and can be handled in place. */
    if (missing >= CONN_INPLACE_MIN) {
        buf->base = (char *)dst;
        buf->len = missing;
        return;
    }
    /* A handler still holds payload in the last slab (agent_conn_hold): read into a new one. */
    if (c->slab->refs > 1) {
        struct agent_slab *s = agent_slab_new(c->a);
        if (s == NULL) {
            buf->base = NULL;
            buf->len = 0; /* read_cb gets UV_ENOBUFS and closes the connection */
            return;
        }
        agent_slab_release(c->a, c->slab);
        c->slab = s;
    }
    buf->base = (char *)c->slab->data;
    buf->len = c->slab->cap;
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct agent_conn *c = s->data;
    size_t off = 0;

    if (nread < 0) {
        if (nread != UV_EOF) {
            agent_log("conn %u: read: %s", c->num, uv_strerror((int)nread));
        }
        agent_conn_close(c);
        return;
    }
    if (buf->base != (char *)c->slab->data) {
        /* Read in place into a straddling frame (alloc_cb). */
        if (nread > 0 && !c->closing && !c->close_after_flush &&
            sbx_framer_commit(&c->framer, (size_t)nread) == 1) {
            conn_handle_frame(c, c->framer.buf, c->framer.len);
            conn_framer_rebuf(c);
        }
        return;
    }
    while (off < (size_t)nread && !c->closing && !c->close_after_flush) {
        struct sbx_err err;
        const uint8_t *frame;
        uint32_t flen;
        size_t used;
        /* Frames lying whole in this read are handled where they are (the slab is not reused
         * until the next read, nor then while held); only frames straddling reads are collected
         * by the framer. */
        int r = sbx_framer_next(&c->framer, (const uint8_t *)buf->base + off, (size_t)nread - off,
                                &used, &frame, &flen, &err);
        off += used;
        if (r < 0) {
            /* Framing is lost: say why, then close once that has been written. */
            agent_log("conn %u: %s", c->num, err.msg);
            conn_notify_error(c, &err);
            c->close_after_flush = true;
            (void)uv_read_stop(&c->h.stream);
            if (c->queued == 0) {
                agent_conn_close(c);
            }
            return;
        }
        if (r == 1) {
            bool collected = frame == c->framer.buf;
            conn_handle_frame(c, frame, flen);
            if (collected) {
                conn_framer_rebuf(c);
            }
        }
    }
}

/* Read again once the control output the peer left unread went below SBX_CONN_CTL_LOW. */
static void conn_input_resume(struct agent_conn *c)
{
    if (!c->input_paused || !c->counted || c->close_after_flush || c->ctl_mem >= SBX_CONN_CTL_LOW) {
        return;
    }
    c->input_paused = false;
    if (uv_read_start(&c->h.stream, alloc_cb, read_cb) < 0) {
        agent_conn_close(c);
    }
}

struct agent_slab *agent_conn_hold(struct agent_conn *c, const uint8_t *data, uint32_t len)
{
    const uint8_t *fb = c->framer.buf;
    struct agent_slab *s;
    uint32_t flen;
    uint8_t *buf;

    if (len < AGENT_HOLD_MIN) {
        return NULL; /* small: a copy is cheap, and pinning a slab for it is not */
    }
    if (data >= c->slab->data && data + len <= c->slab->data + c->slab->cap) {
        c->slab->refs++;
        return c->slab;
    }
    /* Only a pool-sized framer buffer: one grown for a large frame (up to SBX_FRAME_MAX) would pin
     * megabytes for this payload. */
    if (fb == NULL || data < fb || data + len > fb + c->framer.len ||
        c->framer.buf_cap != AGENT_POOLBUF) {
        return NULL;
    }
    /* A frame that straddled reads, complete in the framer's buffer: take that buffer and give
     * the framer a recycled one for the next such frame. */
    buf = sbx_framer_take(&c->framer, &flen);
    s = agent_slab_wrap(buf, AGENT_POOLBUF);
    if (s == NULL) {
        (void)sbx_framer_give(&c->framer, buf, AGENT_POOLBUF);
        return NULL;
    }
    conn_framer_rebuf(c);
    return s;
}

/* --- admission and the hello deadline --------------------------------------------------- */

unsigned agent_conn_pool_cap(enum agent_transport t)
{
    return t == AGENT_T_TCP ? SBX_MAX_CONNS_TCP : t == AGENT_T_SERIAL ? 1 : SBX_MAX_CONNS;
}

/* Connections counted in @t's pool (not serial: a port is its own pool of one). Unix and vsock,
 * the host's transports, share one. */
static unsigned conn_pool_count(const struct agent *a, enum agent_transport t)
{
    return t == AGENT_T_TCP ? a->nconns_kind[AGENT_T_TCP]
                            : a->nconns_kind[AGENT_T_UNIX] + a->nconns_kind[AGENT_T_VSOCK];
}

/* Log a refusal or a timeout, at most once a second with the count of the quiet ones since: a
 * workload opening connections in a loop must not turn into a flood of console lines. */
static void conn_log_limited(struct agent *a, const char *what, unsigned num)
{
    uint64_t now = uv_now(a->loop);

    if (a->refused_log_ms != 0 && now - a->refused_log_ms < 1000) {
        a->refused_quiet++;
        return;
    }
    if (a->refused_quiet > 0) {
        agent_log("conn %u: %s (and %u more refused or timed out, not logged)", num, what,
                  a->refused_quiet);
    } else {
        agent_log("conn %u: %s", num, what);
    }
    a->refused_log_ms = now;
    a->refused_quiet = 0;
}

/* Refuse a new connection: send @e as an error notification, close once it is written. */
static void conn_refuse(struct agent_conn *c, const struct sbx_err *e)
{
    conn_log_limited(c->a, e->msg, c->num);
    conn_notify_error(c, e);
    c->close_after_flush = true;
    if (c->queued == 0) {
        agent_conn_close(c); /* the notification could not even be queued */
    }
}

static void conn_hello_timer_cb(uv_timer_t *t)
{
    struct agent *a = t->data;
    uint64_t now = uv_now(a->loop);

    while (!agent_list_empty(&a->prehello)) {
        struct agent_conn *c = agent_container_of(a->prehello.next, struct agent_conn, prehello);
        struct sbx_err err;

        if (c->hello_deadline > now) {
            uv_timer_start(t, conn_hello_timer_cb, c->hello_deadline - now, 0);
            return;
        }
        /* Best effort (PROTOCOL.md section 6.4): the notification goes out now if the socket takes
         * it; a peer that does not read gets no grace to hold its slot longer. */
        sbx_err_set(&err, SBX_E_TIMEOUT, "no hello within %u ms", a->hello_timeout_ms);
        conn_log_limited(a, err.msg, c->num);
        conn_notify_error(c, &err);
        agent_conn_close(c); /* takes it off the list */
    }
}

void agent_conn_init(struct agent *a)
{
    agent_list_init(&a->prehello);
    uv_timer_init(a->loop, &a->hello_timer);
    a->hello_timer.data = a;
}

int agent_conn_admit(struct agent_conn *c)
{
    struct agent *a = c->a;
    enum agent_transport t = c->transport;
    unsigned cap = agent_conn_pool_cap(t);
    struct sbx_err err;

    if (t != AGENT_T_SERIAL && conn_pool_count(a, t) >= cap) {
        sbx_err_limit(&err, "max_conns", cap, "the agent already has %u %s connections", cap,
                      t == AGENT_T_TCP ? "TCP" : "unix and vsock");
        conn_refuse(c, &err);
        return -1;
    }
    if (t == AGENT_T_TCP && a->nconns_tcp_hello >= SBX_MAX_CONNS_TCP_HELLO) {
        sbx_err_limit(&err, "max_conns_before_hello", SBX_MAX_CONNS_TCP_HELLO,
                      "%u TCP connections are already waiting for hello", SBX_MAX_CONNS_TCP_HELLO);
        conn_refuse(c, &err);
        return -1;
    }
    c->counted = true;
    a->nconns_kind[t]++;
    a->nconns_tcp_hello += t == AGENT_T_TCP;
    /* Not on a serial port: it is one logical connection whose far end only the host holds, and
     * a host that connected to the chardev may say hello whenever it likes (section 2.4). */
    if (t != AGENT_T_SERIAL) {
        c->hello_deadline = uv_now(a->loop) + a->hello_timeout_ms;
        agent_list_add_tail(&a->prehello, &c->prehello);
        if (!uv_is_active((uv_handle_t *)&a->hello_timer)) {
            uv_timer_start(&a->hello_timer, conn_hello_timer_cb, a->hello_timeout_ms, 0);
        }
    }
    conn_counts_check(a);
    if (uv_read_start(&c->h.stream, alloc_cb, read_cb) < 0) {
        agent_conn_close(c);
        return -1;
    }
    return 0;
}

void agent_conn_hello_done(struct agent_conn *c, uint32_t version)
{
    struct agent *a = c->a;

    c->hello_done = true;
    c->version = version;
    agent_list_del(&c->prehello);
    if (c->counted && c->transport == AGENT_T_TCP) {
        a->nconns_tcp_hello--;
    }
    a->nhello++;
    agent_initctl_clients_changed(a);
    conn_counts_check(a);
}

/* @c is closing: its slot is free at once, so closing connections never keep others out. */
static void conn_uncount(struct agent_conn *c)
{
    struct agent *a = c->a;

    agent_list_del(&c->prehello);
    if (!c->counted) {
        return;
    }
    c->counted = false;
    a->nconns_kind[c->transport]--;
    if (c->transport == AGENT_T_TCP && !c->hello_done) {
        a->nconns_tcp_hello--;
    }
}

void agent_conn_ref_add(struct agent_conn *c, struct agent_conn_ref *r,
                        void (*gone)(struct agent_conn_ref *r))
{
    agent_conn_ref_del(r); /* re-registering (the next eval of a session) moves it */
    r->conn = c;
    r->gone = gone;
    agent_list_add_tail(&c->refs, &r->link);
}

void agent_conn_ref_del(struct agent_conn_ref *r)
{
    if (r->link.next != NULL && r->link.next != &r->link) {
        agent_list_del(&r->link);
    }
    agent_list_init(&r->link);
    r->conn = NULL;
}

void agent_conn_close(struct agent_conn *c)
{
    if (c->closing) {
        return;
    }
    /* Only mark and close the handle here: callers up the stack may still hold this
     * connection's streams. Everything else is torn down in the close callback. */
    c->closing = true;
    conn_uncount(c);
    conn_counts_check(c->a);
    uv_close(&c->h.handle, conn_close_cb);
}

static void conn_close_cb(uv_handle_t *h)
{
    struct agent_conn *c = h->data;
    struct agent *a = c->a;

    while (!agent_list_empty(&c->streams)) {
        struct agent_stream *s = agent_container_of(c->streams.next, struct agent_stream, link);
        if (s->ops != NULL && s->ops->gone != NULL) {
            s->ops->gone(s, false);
        }
        agent_stream_free(s);
    }
    while (!agent_list_empty(&c->refs)) {
        struct agent_conn_ref *r = agent_container_of(c->refs.next, struct agent_conn_ref, link);
        agent_conn_ref_del(r);
        r->gone(r); /* may free r */
    }
    if (c->hello_done) {
        a->nhello--;
        agent_initctl_clients_changed(a);
    }
    agent_list_del(&c->link);
    a->nconns--;
    conn_counts_check(a);
    if (c->listener != NULL) {
        agent_listener_serial_gone(c->listener);
    }
    sbx_framer_free(&c->framer);
    sbx_decoder_destroy(&c->dec);
    sbx_out_destroy(&c->out);
    agent_slab_release(a, c->slab);
    free(c);
}
