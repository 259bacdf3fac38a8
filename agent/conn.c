/*
 * One host connection: bytes in through the framer, messages out through uv_write. Owns its
 * streams; processes it spawned are not its property and keep running when it goes away.
 */
#include "conn.h"

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
    uint8_t hdr[SBX_STREAM_DATA_HDR_MAX];
};

static void conn_close_cb(uv_handle_t *h);

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
    agent_list_init(&c->streams);
    agent_list_init(&c->refs);
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

    c->queued -= wr->len;
    if (wr->ctl != NULL) {
        c->queued_ctl -= wr->len;
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
            next = l->next; /* an owner may end its own stream here */
            if (s->pipe != NULL) {
                agent_pipe_update(s->pipe);
            } else if (s->ops != NULL && s->ops->ready != NULL && s->credit > 0) {
                s->ops->ready(s);
            }
        }
    }
    if (status < 0 && status != UV_ECANCELED) {
        agent_conn_close(c);
        return;
    }
    if (c->close_after_flush && c->queued == 0) {
        agent_conn_close(c);
    }
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
    c->queued += wr->len;
    if (wr->ctl != NULL) {
        c->queued_ctl += wr->len;
    }
    r = uv_write(&wr->req, &c->h.stream, bufs, n, write_cb);
    if (r < 0) {
        c->queued -= wr->len;
        if (wr->ctl != NULL) {
            c->queued_ctl -= wr->len;
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
     * Stream data is bounded by credit and the buffer cap, so only control output counts. */
    if (c->queued_ctl > SBX_CONN_OUTQ_MAX) {
        agent_log("conn %u: peer is not reading (%zu control bytes queued); closing", c->num,
                  c->queued_ctl);
        agent_conn_close(c);
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

void agent_conn_send(struct agent_conn *c)
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
    }
    if (wr->ctl == NULL) {
        free(wr);
        agent_conn_close(c);
        return;
    }
    buf = uv_buf_init(wr->ctl, (unsigned)wr->len);
    conn_write(c, wr, &buf, 1);
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

void agent_conn_refuse(struct agent_conn *c, const struct sbx_err *e)
{
    conn_notify_error(c, e);
    c->close_after_flush = true;
    if (c->queued == 0) {
        agent_conn_close(c); /* the notification could not even be queued */
    }
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

int agent_conn_start(struct agent_conn *c)
{
    return uv_read_start(&c->h.stream, alloc_cb, read_cb);
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
    if (c->listener != NULL) {
        agent_listener_serial_gone(c->listener);
    }
    sbx_framer_free(&c->framer);
    sbx_decoder_destroy(&c->dec);
    sbx_out_destroy(&c->out);
    agent_slab_release(a, c->slab);
    free(c);
}
