/*
 * Streams: one-directional byte channels of a connection, each with credit flow control, bound to
 * a process pipe or served by an owner through struct agent_stream_ops (files, archives, walks).
 * Output pipes are read only while the attached stream has credit, so a producer the host cannot
 * keep up with blocks in write() instead of growing the agent; owners produce only what
 * agent_stream_writable() allows, for the same reason.
 */
#include "stream.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "agent.h"
#include "conn.h"
#include "proc.h"
#include "sbx/schema.h"

struct in_req {
    uv_write_t req;
    struct agent_pipe *pipe;
    struct agent_slab *slab; /* the held frame buffer the payload lies in, or NULL... */
    void *copy;              /* ...and then this exact-size copy */
    uint32_t len;
    uint32_t gen; /* the pipe's in_gen when written: credit goes back to that stream only */
};

int agent_stream_reserve(const struct agent_conn *c, uint32_t n, struct sbx_err *err)
{
    if (n == 0) {
        return 0;
    }
    if (c->nstreams + n > SBX_MAX_STREAMS) {
        return sbx_err_limit(err, "max_streams", SBX_MAX_STREAMS,
                             "%u more streams would exceed the cap of %u on this connection", n,
                             SBX_MAX_STREAMS);
    }
    /* next_stream is 0 once every id was handed out: ids are never reused (§8.1). */
    if (c->next_stream == 0 || UINT32_MAX - c->next_stream < n - 1) {
        return sbx_err_limit(err, "stream_ids", UINT32_MAX,
                             "this connection has used up its stream ids");
    }
    return 0;
}

static int in_flush_tail(struct agent_pipe *p, struct sbx_err *err);
static void pipe_lead_free(struct agent_pipe *p);

struct agent_stream *agent_stream_new(struct agent_conn *c, enum agent_stream_dir dir,
                                      struct agent_pipe *p, struct sbx_err *err)
{
    struct agent_stream *s;

    if (agent_stream_reserve(c, 1, err) < 0) {
        return NULL;
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        sbx_err_oom(err);
        return NULL;
    }
    s->conn = c;
    s->id = c->next_stream++;
    s->dir = dir;
    /* What the client may take on its side of an out stream; ours, an in stream's (§8.3). */
    s->credit = dir == AGENT_STREAM_OUT ? c->out_window : SBX_STREAM_WINDOW;
    s->pipe = p;
    if (p != NULL) {
        struct sbx_err e;
        /* A new stdin stream (proc.attach): what the last one gathered goes out as that one's. */
        if (in_flush_tail(p, &e) < 0) {
            agent_log("process %llu: stdin: %s", (unsigned long long)p->proc->id, e.msg);
        }
        p->stream = s;
        p->in_gen++;
        s->pos = p->total; /* live from here; proc.attach sets an earlier start */
    }
    agent_list_add_tail(&c->streams, &s->link);
    c->nstreams++;
    return s;
}

struct agent_stream *agent_stream_new_ops(struct agent_conn *c, enum agent_stream_dir dir,
                                          const struct agent_stream_ops *ops, void *owner,
                                          struct sbx_err *err)
{
    struct agent_stream *s = agent_stream_new(c, dir, NULL, err);

    if (s != NULL) {
        s->ops = ops;
        s->owner = owner;
    }
    return s;
}

uint32_t agent_stream_writable(const struct agent_stream *s)
{
    if (s->dir != AGENT_STREAM_OUT || s->conn->paused || s->conn->closing) {
        return 0;
    }
    return s->credit > UINT32_MAX ? UINT32_MAX : (uint32_t)s->credit;
}

void agent_stream_send(struct agent_stream *s, void *buf, uint32_t len)
{
    s->credit -= len;
    agent_conn_send_data(s->conn, s->id, buf, len);
}

void agent_stream_send_copy(struct agent_stream *s, const void *data, uint32_t len)
{
    const uint8_t *p = data;

    while (len > 0) {
        uint32_t n = len < SBX_STREAM_CHUNK_MAX ? len : SBX_STREAM_CHUNK_MAX;
        void *buf = agent_buf_get(s->conn->a);

        if (buf == NULL) {
            agent_log("conn %u: out of memory; closing", s->conn->num);
            agent_conn_close(s->conn);
            return;
        }
        memcpy(buf, p, n);
        agent_stream_send(s, buf, n);
        p += n;
        len -= n;
    }
}

struct agent_stream *agent_stream_find(struct agent_conn *c, uint32_t id)
{
    struct agent_link *l;

    for (l = c->streams.next; l != &c->streams; l = l->next) {
        struct agent_stream *s = agent_container_of(l, struct agent_stream, link);
        if (s->id == id) {
            return s;
        }
    }
    return NULL;
}

void agent_stream_free(struct agent_stream *s)
{
    struct agent_pipe *p = s->pipe;

    agent_list_del(&s->link);
    s->conn->nstreams--;
    s->conn->stream_frees++;
    free(s);
    if (p != NULL) {
        pipe_lead_free(p); /* the lead was that stream's only */
        p->stream = NULL;
        agent_pipe_update(p); /* detached output keeps draining into the replay ring */
        if (!p->is_input) {
            agent_proc_exit_flush(p->proc); /* proc.exit may have waited for this stream */
        }
    }
}

void agent_stream_end(struct agent_stream *s, const struct sbx_err *e, bool truncated)
{
    sbx_end_pack(agent_conn_begin(s->conn), s->id, e, truncated);
    agent_conn_send(s->conn);
    agent_stream_free(s);
}

/* Send stream.cancel {stream: @id, error: @e} on @c. */
static void send_cancel(struct agent_conn *c, uint32_t id, const struct sbx_err *e)
{
    sbx_cancel_pack(agent_conn_begin(c), id, e);
    agent_conn_send(c);
}

void agent_stream_cancel(struct agent_stream *s, const struct sbx_err *e)
{
    send_cancel(s->conn, s->id, e);
    agent_stream_free(s);
}

static void stdin_finish(struct agent_stream *s);

/* The client misused @s (PROTOCOL.md 8.6): cancel it with @e and tell its owner it is gone. */
static void stream_misuse(struct agent_stream *s, const struct sbx_err *e)
{
    /* The cancel goes out before the owner hears of it, so an owner's last word about the
     * stream (an upload's transfer.done, §18.5) really is the last frame about it. */
    send_cancel(s->conn, s->id, e);
    if (s->ops != NULL && s->ops->gone != NULL) {
        s->ops->gone(s, true);
    }
    if (s->ops == NULL && s->dir == AGENT_STREAM_IN) {
        stdin_finish(s); /* no more input can come: EOF after what was accepted (§8.6) */
        return;
    }
    agent_stream_free(s);
}

static void stream_grant(struct agent_stream *s)
{
    sbx_credit_pack(agent_conn_begin(s->conn), s->id, (uint32_t)s->consumed);
    s->credit += s->consumed;
    s->consumed = 0;
    agent_conn_send(s->conn);
}

void agent_stream_consumed(struct agent_stream *s, uint32_t n, bool flush)
{
    s->consumed += n;
    /* Grant in batches: one credit message per quarter window, not per frame. With nothing
     * else pending (@flush), at once only when the client is down to less than half a window:
     * the batches alone never leave it waiting (it holds at least three quarters of a window
     * less what is still being written), and a credit frame per small write (a keystroke, a
     * forwarded request) is a wake-up of the client in the middle of a round trip. */
    if (s->consumed >= SBX_STREAM_WINDOW / 4 ||
        (flush && s->consumed > 0 && s->credit < SBX_STREAM_WINDOW / 2)) {
        stream_grant(s);
    }
}

/* Read the stream id of a stream control notification; 0 if absent or bad (then ignored). */
static uint32_t control_stream_id(const struct sbx_msg *m)
{
    struct sbx_err err;
    uint64_t id;

    if (sbx_param_u64(m->params, "stream", SBX_REQUIRED, 1, UINT32_MAX, &id, &err) != 0) {
        return 0;
    }
    return (uint32_t)id;
}

void agent_stream_on_credit(struct agent_conn *c, const struct sbx_msg *m)
{
    struct agent_stream *s = agent_stream_find(c, control_stream_id(m));
    struct sbx_err err;
    uint64_t bytes;

    if (s == NULL || s->dir != AGENT_STREAM_OUT) {
        return; /* a race with the stream's end, or nonsense: ignored by the protocol */
    }
    if (sbx_param_u64(m->params, "bytes", SBX_REQUIRED, 0, UINT32_MAX, &bytes, &err) != 0) {
        /* The two sides no longer agree on the credit: the stream cannot go on (§8.6). */
        struct sbx_err why;
        sbx_err_set(&why, SBX_E_STREAM, "stream.credit on stream %u: %s", s->id, err.msg);
        stream_misuse(s, &why);
        return;
    }
    if (bytes == 0) {
        return; /* a grant of 0 is ignored (§8.3) */
    }
    if (s->credit + bytes > UINT32_MAX) {
        sbx_err_set(&err, SBX_E_STREAM, "credit on stream %u would exceed 2^32-1 bytes", s->id);
        stream_misuse(s, &err);
        return;
    }
    s->credit += bytes;
    if (s->pipe != NULL) {
        agent_pipe_update(s->pipe);
    } else if (s->ops != NULL && s->ops->ready != NULL) {
        s->ops->ready(s);
    }
}

/*
 * The client finished a process's stdin stream @s (stream.end or stream.cancel) and frees it: the
 * child's stdin is closed once the data already received has been written, so the child reads
 * EOF. PTY input only finishes the stream; the terminal stays open (PROTOCOL.md §8.4, §8.5, §15.1).
 */
static void stdin_finish(struct agent_stream *s)
{
    struct agent_pipe *p = s->pipe;

    agent_stream_free(s);
    if (p != NULL && !p->is_pty) {
        p->close_requested = true;
        if (p->writes_pending == 0) {
            agent_pipe_close(p);
        }
    }
}

void agent_stream_on_end(struct agent_conn *c, const struct sbx_msg *m)
{
    struct agent_stream *s = agent_stream_find(c, control_stream_id(m));

    if (s == NULL || s->dir != AGENT_STREAM_IN) {
        return;
    }
    if (s->ops != NULL) {
        const msgpack_object *eo = sbx_obj_get(m->params, "error");
        struct sbx_err err;

        if (eo != NULL && eo->type == MSGPACK_OBJECT_NIL) {
            eo = NULL;
        }
        if (eo != NULL) {
            sbx_err_from_obj(eo, &err);
        }
        s->ended = true;
        if (s->ops->end != NULL) {
            s->ops->end(s, eo != NULL ? &err : NULL);
        }
        agent_stream_free(s);
        return;
    }
    stdin_finish(s);
}

void agent_stream_on_cancel(struct agent_conn *c, const struct sbx_msg *m)
{
    struct agent_stream *s = agent_stream_find(c, control_stream_id(m));

    if (s == NULL) {
        return;
    }
    if (s->ops != NULL) {
        if (s->ops->gone != NULL) {
            s->ops->gone(s, true);
        }
        agent_stream_free(s);
        return;
    }
    if (s->dir != AGENT_STREAM_OUT) {
        stdin_finish(s); /* the client sends no more: the child gets EOF, as after stream.end */
        return;
    }
    /* Nothing more goes out on it; the pipe keeps draining so the child never blocks. */
    agent_stream_free(s);
}

static void in_write_cb(uv_write_t *req, int status);

/* Write @r (len set, counted in p->queued) from @base to the child's stdin, for the pipe's current
 * stream. On failure @r is freed and its bytes are dropped from the count: -1 with @err. */
static int in_write(struct agent_pipe *p, struct in_req *r, const uint8_t *base,
                    struct sbx_err *err)
{
    uv_buf_t buf = uv_buf_init((char *)base, r->len);
    int rc;

    r->pipe = p;
    r->gen = p->in_gen;
    rc = uv_write(&r->req, (uv_stream_t *)&p->handle, &buf, 1, in_write_cb);
    if (rc < 0) {
        p->queued -= r->len;
        if (r->slab != NULL) {
            agent_slab_release(p->proc->a, r->slab);
        }
        free(r->copy);
        free(r);
        return sbx_err_sys(err, -rc, "stdin", "write to the process's stdin");
    }
    p->writes_pending++;
    return 0;
}

/* Write what the tail gathered, if anything: 0, or -1 with @err (those bytes are dropped). */
static int in_flush_tail(struct agent_pipe *p, struct sbx_err *err)
{
    struct in_req *r;

    if (p->tail.len == 0) {
        return 0;
    }
    r = calloc(1, sizeof(*r));
    if (r == NULL) {
        p->queued -= p->tail.len;
        agent_tail_free(&p->tail);
        return sbx_err_oom(err);
    }
    r->copy = agent_tail_take(&p->tail, &r->len);
    return in_write(p, r, r->copy, err);
}

static void in_write_cb(uv_write_t *req, int status)
{
    struct in_req *r = agent_container_of(req, struct in_req, req);
    struct agent_pipe *p = r->pipe;
    struct agent_stream *s = p->stream;
    struct sbx_err err;

    p->writes_pending--;
    p->queued -= r->len;
    if (r->slab != NULL) {
        agent_slab_release(p->proc->a, r->slab);
    }
    free(r->copy);
    if (status < 0 && status != UV_ECANCELED) {
        if (s != NULL) {
            int e = -status;
            sbx_err_sys(&err, e, "stdin", "write to the process's stdin");
            agent_stream_cancel(s, &err);
        }
        agent_pipe_close(p);
    } else if (s != NULL && r->gen == p->in_gen) {
        /* Not for bytes an earlier holder sent (proc.attach handed stdin over meanwhile): the
         * new stream's credit is its own window, and granting those too would raise it past. */
        agent_stream_consumed(s, r->len, p->writes_pending == 0 && p->tail.len == 0);
    }
    free(r);
    /* What gathered behind the writes goes out once they are done. */
    if (p->open && p->writes_pending == 0 && in_flush_tail(p, &err) < 0) {
        if (p->stream != NULL) {
            agent_stream_cancel(p->stream, &err);
        }
        agent_pipe_close(p);
    }
    if (p->close_requested && p->writes_pending == 0) {
        agent_pipe_close(p);
    }
}

bool agent_stream_on_bad_data(struct agent_conn *c, uint32_t id, const struct sbx_err *why)
{
    struct agent_stream *s = id != 0 ? agent_stream_find(c, id) : NULL;
    struct sbx_err err;

    if (s == NULL) {
        return false;
    }
    sbx_err_set(&err, SBX_E_STREAM, "%s", why->msg);
    stream_misuse(s, &err);
    return true;
}

void agent_stream_on_data(struct agent_conn *c, const struct sbx_msg *m)
{
    struct agent_stream *s = agent_stream_find(c, m->stream);
    struct agent_pipe *p;
    struct sbx_err err;
    struct in_req *r;

    if (s == NULL) {
        /* Unknown or finished: ignored (§5.4, §8.6). An id never handed out is a client bug, but
         * a frame about a stream the client was never given would break §9.1 rule 3: log it. */
        if (m->stream >= c->next_stream) {
            agent_log("conn %u: data on stream %u, which was never opened; ignored", c->num,
                      m->stream);
        }
        return;
    }
    if (s->dir != AGENT_STREAM_IN) {
        sbx_err_set(&err, SBX_E_STREAM, "stream %u carries data from the agent, not to it", s->id);
        stream_misuse(s, &err);
        return;
    }
    if (m->data_len > s->credit) {
        sbx_err_set(&err, SBX_E_STREAM, "%u bytes sent on stream %u with only %llu bytes of credit",
                    m->data_len, s->id, (unsigned long long)s->credit);
        stream_misuse(s, &err);
        return;
    }
    s->credit -= m->data_len;
    if (s->ops != NULL) {
        if (s->ops->data != NULL) {
            s->ops->data(s, m->data, m->data_len);
        }
        return;
    }
    p = s->pipe;
    if (p == NULL || !p->open || p->close_requested) {
        return;
    }
    /*
     * Large payloads are written straight from the buffer they were read into (held, not
     * copied); small ones are copied to an exact-size buffer, or, behind a write in flight,
     * gathered into the pipe's tail (agent_tail). None of it counts against the agent-wide
     * output buffer cap: input held here waits for the child, which may itself wait for its
     * output to be read, and input counted against that cap deadlocked (a 1 MiB window of small
     * frames filled it while the child's small pipes were full). Input is bounded by credit.
     */
    if (p->writes_pending > 0 && m->data_len < AGENT_HOLD_MIN) {
        if (agent_tail_add(&p->tail, m->data, m->data_len) < 0) {
            sbx_err_oom(&err);
            agent_stream_cancel(s, &err);
            return;
        }
        p->queued += m->data_len;
        return;
    }
    if (in_flush_tail(p, &err) < 0) {
        agent_stream_cancel(s, &err);
        return;
    }
    r = calloc(1, sizeof(*r));
    if (r != NULL && (r->slab = agent_conn_hold(c, m->data, m->data_len)) == NULL &&
        (r->copy = malloc(m->data_len)) != NULL) {
        memcpy(r->copy, m->data, m->data_len);
    }
    if (r == NULL || (r->slab == NULL && r->copy == NULL)) {
        free(r);
        sbx_err_oom(&err);
        agent_stream_cancel(s, &err);
        return;
    }
    r->len = m->data_len;
    p->queued += r->len;
    if (in_write(p, r, r->copy != NULL ? r->copy : m->data, &err) < 0) {
        agent_stream_cancel(s, &err);
    }
}

/* --- replay rings -------------------------------------------------------------------------- */

#define RING_MIN 64u /* the first allocation, doubled until the first write fits */

uint64_t agent_pipe_oldest(const struct agent_pipe *p)
{
    return p->total - p->ring_len;
}

/* Copy @n held bytes starting at offset @off (oldest <= off, off + n <= total) to @dst. */
static void ring_copy_out(const struct agent_pipe *p, uint64_t off, uint8_t *dst, uint32_t n)
{
    uint32_t idx, first;

    if (n == 0) {
        return;
    }
    idx = (uint32_t)((p->ring_head + (off - agent_pipe_oldest(p))) % p->ring_cap);
    first = p->ring_cap - idx < n ? p->ring_cap - idx : n;
    memcpy(dst, p->ring + idx, first);
    memcpy(dst + first, p->ring, n - first);
}

/* Reallocate @p's ring to @cap bytes (0: free it), keeping the newest bytes that fit. -1 when out
 * of memory (the ring is unchanged). */
static int ring_resize(struct agent_pipe *p, uint32_t cap)
{
    struct agent *a = p->proc->a;
    uint32_t keep = p->ring_len < cap ? p->ring_len : cap;
    uint8_t *nb = NULL;

    if (cap > 0 && (nb = malloc(cap)) == NULL) {
        return -1;
    }
    ring_copy_out(p, p->total - keep, nb, keep);
    free(p->ring);
    a->replay_used = a->replay_used - p->ring_cap + cap;
    p->ring = nb;
    p->ring_cap = cap;
    p->ring_len = keep;
    p->ring_head = 0;
    return 0;
}

static void pipe_lead_free(struct agent_pipe *p)
{
    free(p->lead);
    p->lead = NULL;
    p->lead_len = p->lead_off = 0;
}

void agent_pipe_ring_free(struct agent_pipe *p)
{
    if (p->proc != NULL) {
        (void)ring_resize(p, 0); /* cannot fail: nothing is allocated */
    }
    pipe_lead_free(p);
}

/* A stream is replaying from @q's ring: its bytes must stay where the stream will read them. */
static bool ring_in_use(const struct agent_pipe *q)
{
    return q->stream != NULL && q->stream->pos < q->total;
}

/*
 * The agent-wide cap: make room for @need more ring bytes by halving the largest other rings
 * (their oldest bytes go, counted as dropped), never one a stream is replaying from. Returns the
 * bytes available, which may be less than @need.
 */
static uint64_t ring_make_room(struct agent_pipe *p, uint64_t need)
{
    struct agent *a = p->proc->a;

    while (a->replay_used + need > a->replay_total) {
        struct agent_pipe *victim = NULL;
        struct agent_link *l;

        for (l = a->procs.next; l != &a->procs; l = l->next) {
            struct agent_proc *q = agent_container_of(l, struct agent_proc, link);
            struct agent_pipe *qp[2] = { &q->out, &q->err };
            for (int i = 0; i < 2; i++) {
                if (qp[i] != p && qp[i]->ring_cap > RING_MIN && !ring_in_use(qp[i]) &&
                    (victim == NULL || qp[i]->ring_cap > victim->ring_cap)) {
                    victim = qp[i];
                }
            }
        }
        /* Only from a ring larger than @p would become: rings of equal size never take turns
         * taking from each other, so this settles where all rings are about the same size. */
        if (victim == NULL || victim->ring_cap <= p->ring_cap + need ||
            ring_resize(victim, victim->ring_cap / 2) < 0) {
            break; /* nothing (larger) left to take from: @p grows less, or not at all */
        }
    }
    return a->replay_used >= a->replay_total ? 0 : a->replay_total - a->replay_used;
}

/* Grow @p's ring towards holding @want bytes: geometrically, up to a->replay_stream and within the
 * agent-wide cap. Failure leaves it as it is (appending then drops more of the oldest bytes). */
static void ring_grow(struct agent_pipe *p, uint64_t want)
{
    struct agent *a = p->proc->a;
    uint64_t cap = p->ring_cap > 0 ? (uint64_t)p->ring_cap * 2 : RING_MIN, room;

    while (cap < want) {
        cap *= 2;
    }
    if (cap > a->replay_stream) {
        cap = a->replay_stream;
    }
    if (cap <= p->ring_cap) {
        return;
    }
    room = ring_make_room(p, cap - p->ring_cap);
    if (room < cap - p->ring_cap) {
        cap = p->ring_cap + room;
    }
    if (cap > p->ring_cap) {
        (void)ring_resize(p, (uint32_t)cap); /* out of memory: the ring stays as it is */
    }
}

/* Append @n bytes at offset p->total (the caller advances total after). The oldest bytes go when
 * the ring is full. */
static void ring_append(struct agent_pipe *p, const uint8_t *data, uint32_t n)
{
    uint32_t tail, first;

    if (n > p->ring_cap - p->ring_len && p->ring_cap < p->proc->a->replay_stream) {
        ring_grow(p, (uint64_t)p->ring_len + n);
    }
    if (p->ring_cap == 0) {
        return; /* nothing could be allocated: the bytes are lost (counted as dropped) */
    }
    if (n >= p->ring_cap) {
        memcpy(p->ring, data + (n - p->ring_cap), p->ring_cap);
        p->ring_head = 0;
        p->ring_len = p->ring_cap;
        return;
    }
    if (p->ring_len + n > p->ring_cap) {
        uint32_t drop = p->ring_len + n - p->ring_cap;
        p->ring_head = (p->ring_head + drop) % p->ring_cap;
        p->ring_len -= drop;
    }
    tail = (p->ring_head + p->ring_len) % p->ring_cap;
    first = p->ring_cap - tail < n ? p->ring_cap - tail : n;
    memcpy(p->ring + tail, data, first);
    memcpy(p->ring, data + first, n - first);
    p->ring_len += n;
}

/* @n bytes were read from the child: into the ring (or, detached, the REPL's sink), counted. An
 * agent-internal process (a pack build) keeps nothing: nobody can attach to it. */
static void pipe_keep(struct agent_pipe *p, const uint8_t *data, uint32_t n)
{
    if (p->sink != NULL) {
        if (p->stream == NULL) {
            p->sink(p, data, n);
        }
    } else if (!p->proc->internal) {
        ring_append(p, data, n);
    }
    p->total += n;
    if (p->stream != NULL) {
        p->stream->pos = p->total; /* it was caught up: these bytes go to it from the pipe */
    }
}

static int parse_size(const char *s, const char **end, uint64_t *out)
{
    uint64_t v = 0;
    int shift = 0;

    if (*s < '0' || *s > '9') {
        return -1;
    }
    while (*s >= '0' && *s <= '9') {
        if (v > (UINT64_MAX - 9) / 10) {
            return -1;
        }
        v = v * 10 + (uint64_t)(*s++ - '0');
    }
    switch (*s) {
    case 'k':
    case 'K':
        shift = 10;
        break;
    case 'm':
    case 'M':
        shift = 20;
        break;
    case 'g':
    case 'G':
        shift = 30;
        break;
    default:
        break;
    }
    if (shift > 0) {
        s++;
        if (v > (UINT64_MAX >> shift)) {
            return -1;
        }
        v <<= shift;
    }
    *end = s;
    *out = v;
    return 0;
}

int agent_replay_parse(const char *arg, uint32_t *size, uint64_t *total, char *why, size_t whylen)
{
    const char *e = arg;
    uint64_t sz, tot = *total;

    if (parse_size(arg, &e, &sz) < 0 || (*e != '\0' && *e != ',') ||
        (*e == ',' && (parse_size(e + 1, &e, &tot) < 0 || *e != '\0'))) {
        snprintf(why, whylen, "expected SIZE[,TOTAL], sizes in bytes with an optional K, M or G");
        return -1;
    }
    if (sz < SBX_REPLAY_MIN || sz > AGENT_REPLAY_STREAM_MAX) {
        snprintf(why, whylen, "SIZE must be %uK..%uM (the ring of one output stream)",
                 SBX_REPLAY_MIN >> 10, AGENT_REPLAY_STREAM_MAX >> 20);
        return -1;
    }
    if (strchr(arg, ',') == NULL && tot < sz) {
        tot = sz;
    }
    if (tot < sz || tot > AGENT_REPLAY_TOTAL_MAX) {
        snprintf(why, whylen, "TOTAL must be SIZE..%lluG (all rings together)",
                 (unsigned long long)(AGENT_REPLAY_TOTAL_MAX >> 30));
        return -1;
    }
    *size = (uint32_t)sz;
    *total = tot;
    return 0;
}

/* --- output pipes ------------------------------------------------------------------------- */

/*
 * Pacing. Output nobody holds (no stream attached, the process still running) goes only to the
 * replay ring, and reading it as fast as a flooding child writes cost half a core for one `yes`
 * (and 50 of them slowed every request to tens of ms), all for bytes the ring overwrites at once.
 * So all such pipes together read at most PACE_BYTES per PACE_MS period (80 MiB/s, a few percent
 * of a core; a read counts as PACE_READ_MIN at least, so tiny writes cannot buy a wake-up each
 * either); past that they stop until the pace timer starts the next period, and their children
 * block in write() meanwhile. That is backpressure, not loss: a child still runs (one flooding
 * alone still gets 80 MiB/s; a logger that is never read does not notice), nothing it writes is
 * lost, only delayed, and each pipe gets its turn (the loop serves every ready pipe once per
 * iteration, one chunk each). An attach reads what a pipe holds first (agent_pipe_catch_up), so
 * it still sees the latest bytes the process wrote; from then on the stream's credit sets the
 * pace. Output of an exited process (a background writer holding the pipe) is not paced, so the
 * drain deadline of §9.2 applies unchanged; neither is a REPL interpreter's during an eval (its
 * capture must be complete when the eval reports). Between evals it is (a job the code left in
 * the background, a `yes &`, cost a quarter of a core): what it writes goes into the next eval's
 * output as before, only later.
 */
#define PACE_MS    100u
#define PACE_BYTES (8u << 20)
/* What a read counts for at least: a child writing a byte per write(2) otherwise had a read (and
 * a wake-up) per byte under the byte budget, most of a core for one; now at most PACE_BYTES /
 * PACE_READ_MIN reads a period, each taking what gathered in the pipe meanwhile. */
#define PACE_READ_MIN (64u << 10)

static void pace_timer_cb(uv_timer_t *t)
{
    struct agent *a = t->data;

    a->pace_used = 0;
    if (!a->pace_hits) {
        uv_timer_stop(t); /* a quiet period: nobody waits; the next one to wait starts it again */
        return;
    }
    a->pace_hits = false;
    agent_proc_pipes_resume(a);
}

/* Has detached output used up this period's reading? Then the pace timer resumes it. */
static bool pipe_paced(struct agent_pipe *p)
{
    struct agent *a = p->proc->a;

    if ((p->sink != NULL && !p->sink_idle) || p->proc->internal || agent_proc_exited(p->proc) ||
        a->pace_used < PACE_BYTES) {
        return false;
    }
    a->pace_hits = true;
    if (!a->pace_init) {
        uv_timer_init(a->loop, &a->pace_timer);
        a->pace_timer.data = a;
        a->pace_init = true;
    }
    if (!uv_is_active((uv_handle_t *)&a->pace_timer)) {
        uv_timer_start(&a->pace_timer, pace_timer_cb, PACE_MS, PACE_MS);
    }
    return true;
}

/*
 * May an output pipe read now? Detached output is drained into the replay ring (the buffer goes
 * straight back), at the pace above. Attached output needs its stream caught up with the ring,
 * credit, a connection that is not backed up, and a free buffer under the agent-wide cap, so
 * memory stays bounded however many streams and connections there are.
 */
static bool pipe_may_read(struct agent_pipe *p)
{
    struct agent *a = p->proc->a;
    struct agent_stream *s = p->stream;

    if (p->bounded && p->total >= p->until) {
        return false; /* a REPL eval's last output is read; what follows waits for the next */
    }
    if (s == NULL) {
        return !pipe_paced(p);
    }
    if (p->lead != NULL) {
        return false; /* the lead goes first (agent_pipe_update sends it) */
    }
    if (s->pos < p->total) {
        return false; /* replaying from the ring first (agent_pipe_update sends it) */
    }
    if (a->bufs_used >= SBX_AGENT_BUFS_MAX) {
        a->bufs_starved = true;
        return false;
    }
    return s->credit > 0 && !s->conn->paused;
}

/* At most @want bytes, and none past the pipe's bound (until). */
static size_t pipe_until_cap(const struct agent_pipe *p, size_t want)
{
    if (!p->bounded) {
        return want;
    }
    if (p->total >= p->until) {
        return 0;
    }
    return p->until - p->total < want ? (size_t)(p->until - p->total) : want;
}

static void pipe_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct agent_pipe *p = h->data;
    size_t n = SBX_STREAM_CHUNK_MAX;

    /* Conditions change between reads (a connection pauses while other pipes are already
     * polled): a zero-length buffer makes libuv report UV_ENOBUFS instead of reading, and the
     * read callback stops the pipe. */
    buf->base = NULL;
    buf->len = 0;
    if (!pipe_may_read(p)) {
        return;
    }
    if (p->stream != NULL && p->stream->credit < n) {
        n = (size_t)p->stream->credit;
    }
    if ((n = pipe_until_cap(p, n)) == 0) {
        return; /* at the bound: UV_ENOBUFS, and agent_pipe_update calls until_cb */
    }
    buf->base = agent_buf_get(p->proc->a);
    buf->len = buf->base != NULL ? n : 0;
}

/* The output of @p ended (or was cut) and its stream, if any, has everything: end the stream
 * (with the read error, or truncated). */
static void pipe_end_stream(struct agent_pipe *p)
{
    struct agent_stream *s = p->stream;
    struct sbx_err err;

    if (p->read_err != 0) {
        sbx_err_sys(&err, p->read_err, "read", "read process output");
    }
    agent_stream_end(s, p->read_err != 0 ? &err : NULL, p->truncated);
}

static void pipe_read_cb(uv_stream_t *h, ssize_t nread, const uv_buf_t *buf)
{
    struct agent_pipe *p = h->data;
    struct agent *a = p->proc->a;
    struct agent_stream *s = p->stream;

    if (nread > 0) {
        pipe_keep(p, (const uint8_t *)buf->base, (uint32_t)nread);
        if (s != NULL) {
            s->credit -= (uint64_t)nread;
            agent_conn_send_data(s->conn, s->id, buf->base, (uint32_t)nread);
        } else {
            a->pace_used += (uint64_t)nread > PACE_READ_MIN ? (uint64_t)nread : PACE_READ_MIN;
            agent_buf_put(a, buf->base);
        }
        agent_pipe_update(p);
        return;
    }
    if (buf->base != NULL) {
        agent_buf_put(a, buf->base);
    }
    if (nread == 0) {
        return;
    }
    if (nread == UV_ENOBUFS) {
        /* pipe_alloc_cb refused (paused, no credit, buffer cap, paced or out of memory): stop
         * reading until agent_pipe_update is called again. */
        (void)uv_read_stop(h);
        p->reading = false;
        agent_pipe_update(p); /* restarts at once only if it was out of memory */
        return;
    }
    /* UV_EOF, or an error such as EIO: either way this is the end of the output. A PTY master
     * reports the end as EIO; and libuv 1.44 turns POLLHUP after a short read into UV_EOF even
     * though a PTY's line discipline may still be delivering bytes (tail loss). So read once
     * more, without blocking, before ending the stream. */
    if (p->is_pty && (nread == UV_EIO || nread == UV_EOF)) {
        p->truncated = !agent_pipe_final_drain(p); /* the ring could not hold it all */
        nread = UV_EOF;
    }
    p->eof = true;
    p->read_err = nread != UV_EOF ? (int)-nread : 0;
    agent_pipe_close(p);
    agent_pipe_update(p); /* ends the stream now, or once the ring's last bytes went out */
    agent_proc_check_done(p->proc);
}

/* A buffer for the next chunk of at most @left bytes that @p's attached stream may send now
 * (credit, chunk_max, the agent-wide buffer cap), its size in *@n; NULL when none may go (more
 * credit, the connection draining or a buffer coming back calls agent_pipe_update again). */
static void *pipe_chunk(struct agent_pipe *p, uint64_t left, uint32_t *n)
{
    struct agent *a = p->proc->a;
    void *buf;

    *n = agent_stream_writable(p->stream);
    if (*n > SBX_STREAM_CHUNK_MAX) {
        *n = SBX_STREAM_CHUNK_MAX;
    }
    if (*n > left) {
        *n = (uint32_t)left;
    }
    if (*n == 0) {
        return NULL;
    }
    if (a->bufs_used >= SBX_AGENT_BUFS_MAX || (buf = agent_buf_get(a)) == NULL) {
        a->bufs_starved = true; /* agent_proc_pipes_resume calls again */
        return NULL;
    }
    return buf;
}

/* Send an attached stream what it has not had of the ring, as credit and buffers allow; end it
 * when that reaches the end of an output that has ended. False when the stream was ended. */
static bool pipe_replay(struct agent_pipe *p)
{
    struct agent_stream *s = p->stream;

    if (s->pos < agent_pipe_oldest(p)) {
        s->pos = agent_pipe_oldest(p); /* cannot happen: a ring being replayed is never cut */
    }
    while (s->pos < p->total) {
        uint32_t n;
        void *buf = pipe_chunk(p, p->total - s->pos, &n);

        if (buf == NULL) {
            return true;
        }
        ring_copy_out(p, s->pos, buf, n);
        s->pos += n;
        agent_stream_send(s, buf, n);
    }
    if (p->eof) {
        pipe_end_stream(p);
        return false;
    }
    return true;
}

/* Send the attached stream what is left of @p's lead, as credit and buffers allow; free it once
 * it all went. */
static void pipe_send_lead(struct agent_pipe *p)
{
    struct agent_stream *s = p->stream;

    while (p->lead_off < p->lead_len) {
        uint32_t n;
        void *buf = pipe_chunk(p, p->lead_len - p->lead_off, &n);

        if (buf == NULL) {
            return;
        }
        memcpy(buf, p->lead + p->lead_off, n);
        p->lead_off += n;
        agent_stream_send(s, buf, n);
    }
    pipe_lead_free(p);
}

void agent_pipe_lead(struct agent_pipe *p, uint8_t *data, uint32_t len)
{
    pipe_lead_free(p);
    if (p->stream == NULL || len == 0) {
        free(data);
        return;
    }
    p->lead = data;
    p->lead_len = len;
    agent_pipe_update(p);
}

uint64_t agent_pipe_unread(struct agent_pipe *p)
{
    uv_os_fd_t fd;
    int n = 0;

    if (!p->open || uv_fileno((uv_handle_t *)&p->handle, &fd) != 0 ||
        ioctl(fd, FIONREAD, &n) != 0 || n < 0) {
        return 0;
    }
    return (uint64_t)n;
}

/* The bytes counted up to @p's bound are no longer all in the pipe: something else holding its
 * read end (a workload of the agent's own user, through /proc/<agent>/fd) took some. Waiting for
 * them would wait for ever. */
static bool pipe_bound_gone(struct agent_pipe *p)
{
    return p->open && agent_pipe_unread(p) < p->until - p->total;
}

void agent_pipe_update(struct agent_pipe *p)
{
    bool want;

    if (p->is_input || p->proc == NULL) {
        return;
    }
    if (p->stream != NULL && p->lead != NULL) {
        pipe_send_lead(p);
    }
    if (p->until_cb != NULL && p->lead == NULL &&
        (p->total >= p->until || p->eof || pipe_bound_gone(p))) {
        void (*cb)(struct agent_pipe *) = p->until_cb;

        p->until_cb = NULL;
        cb(p); /* may end the stream, or lift the bound */
    }
    if (p->stream != NULL && p->lead == NULL && p->stream->pos < p->total + (p->eof ? 1 : 0) &&
        !pipe_replay(p)) {
        return;
    }
    if (!p->open || p->eof) {
        return;
    }
    want = pipe_may_read(p);
    if (want && !p->reading) {
        if (uv_read_start((uv_stream_t *)&p->handle, pipe_alloc_cb, pipe_read_cb) == 0) {
            p->reading = true;
        }
    } else if (!want && p->reading) {
        (void)uv_read_stop((uv_stream_t *)&p->handle); /* cannot fail for an active handle */
        p->reading = false;
    }
}

bool agent_pipe_busy(struct agent_pipe *p)
{
    if (!p->open || p->eof) {
        return false;
    }
    /* Not reading for lack of credit (or buffers), or while its stream replays: the host is slow,
     * the pipe is not held open. Never cut that output short; the client decides the pace
     * (PROTOCOL.md 9.2). */
    return !pipe_may_read(p);
}

/* May the final read of @p's pipe take what its stream has no credit for yet? Only into a ring
 * that keeps the bytes for the stream (not a REPL's sink, not an internal process's). */
static bool pipe_keeps_for_stream(const struct agent_pipe *p)
{
    return p->stream != NULL && p->sink == NULL && !p->proc->internal;
}

/* Read without blocking what @p's pipe holds, up to @budget bytes: into the ring, and to the
 * stream when one is attached, up to its credit. With @past_credit (the last read of a pipe) and
 * a ring kept for the stream, what the credit does not cover yet is read too, as far as the ring
 * can hold it unsent, and goes out from the ring as credit comes (pipe_replay). 1: end-of-file,
 * 0: the pipe is empty (or the budget, credit, ring or buffers ran out). */
static int pipe_read_now(struct agent_pipe *p, size_t budget, bool past_credit)
{
    struct agent *a = p->proc->a;
    uv_os_fd_t fd;

    if (uv_fileno((uv_handle_t *)&p->handle, &fd) != 0) {
        return 0;
    }
    if (p->stream != NULL && p->lead != NULL) {
        return 0; /* the lead goes first; the pipe's bytes wait behind it */
    }
    past_credit = past_credit && pipe_keeps_for_stream(p);
    while (budget > 0) {
        struct agent_stream *s = p->stream;
        size_t want = SBX_STREAM_CHUNK_MAX < budget ? SBX_STREAM_CHUNK_MAX : budget;
        bool keep_only = past_credit && (s->pos < p->total || s->credit == 0);
        uint64_t pos = s != NULL ? s->pos : 0;
        void *buf;
        ssize_t n;

        if (keep_only) {
            /* Every unsent byte must stay in the ring until the stream takes it. */
            uint64_t unsent = p->total - s->pos, room;

            if (unsent + want > p->ring_cap) {
                ring_grow(p, unsent + want);
            }
            room = p->ring_cap > unsent ? p->ring_cap - unsent : 0;
            if (want > room) {
                want = (size_t)room;
            }
        } else if (s != NULL && s->credit < want) {
            want = (size_t)s->credit;
        }
        want = pipe_until_cap(p, want);
        if (want == 0 || (buf = agent_buf_get(a)) == NULL) {
            return 0;
        }
        do {
            n = read(fd, buf, want);
        } while (n < 0 && errno == EINTR);
        if (n <= 0) {
            agent_buf_put(a, buf);
            /* 0 (or EIO on a PTY master): the end after all; EAGAIN: still held open. */
            return n == 0 || (p->is_pty && errno == EIO);
        }
        budget -= (size_t)n;
        pipe_keep(p, buf, (uint32_t)n);
        if (keep_only) {
            s->pos = pos; /* not sent: pipe_replay sends it as credit comes */
            agent_buf_put(a, buf);
        } else if (s != NULL) {
            s->credit -= (uint64_t)n;
            agent_conn_send_data(s->conn, s->id, buf, (uint32_t)n);
        } else {
            agent_buf_put(a, buf);
        }
    }
    return 0;
}

bool agent_pipe_final_drain(struct agent_pipe *p)
{
    /* The pipe's capacity: a writer refilling it cannot hold us. */
    return pipe_read_now(p, 1u << 20, true) == 1;
}

void agent_pipe_catch_up(struct agent_pipe *p)
{
    /* Only a detached pipe: an attached one is read up to its stream's credit already. The end of
     * file, if this meets it, is left for the loop to see (the next read returns it again). */
    if (!p->is_input && p->open && !p->eof && p->stream == NULL) {
        (void)pipe_read_now(p, 1u << 20, false);
    }
}

static void pipe_close_cb(uv_handle_t *h)
{
    struct agent_pipe *p = h->data;

    agent_proc_handle_closed(p->proc);
}

void agent_pipe_close(struct agent_pipe *p)
{
    if (!p->open) {
        return;
    }
    p->open = false;
    p->reading = false;
    agent_tail_free(&p->tail); /* input nobody will write now */
    uv_close((uv_handle_t *)&p->handle, pipe_close_cb);
}
