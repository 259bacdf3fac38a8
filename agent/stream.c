/*
 * Streams: one-directional byte channels of a connection, each with credit flow control, bound to
 * a process pipe or served by an owner through struct agent_stream_ops (files, archives, walks).
 * Output pipes are read only while the attached stream has credit, so a producer the host cannot
 * keep up with blocks in write() instead of growing the agent; owners produce only what
 * agent_stream_writable() allows, for the same reason.
 */
#include "stream.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
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
    s->credit = SBX_STREAM_WINDOW;
    s->pipe = p;
    if (p != NULL) {
        p->stream = s;
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
    if (p != NULL) {
        p->stream = NULL;
        agent_pipe_update(p); /* detached output keeps draining into the replay buffer */
    }
    free(s);
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
    /* Grant in batches: one credit message per quarter window, not per frame. */
    if (s->consumed >= SBX_STREAM_WINDOW / 4 || (flush && s->consumed > 0)) {
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

static void in_write_cb(uv_write_t *req, int status)
{
    struct in_req *r = agent_container_of(req, struct in_req, req);
    struct agent_pipe *p = r->pipe;
    struct agent_stream *s = p->stream;

    p->writes_pending--;
    if (r->slab != NULL) {
        agent_slab_release(p->proc->a, r->slab);
    }
    free(r->copy);
    if (status < 0 && status != UV_ECANCELED) {
        if (s != NULL) {
            struct sbx_err err;
            int e = -status;
            sbx_err_sys(&err, e, "stdin", "write to the process's stdin");
            agent_stream_cancel(s, &err);
        }
        agent_pipe_close(p);
    } else if (s != NULL) {
        agent_stream_consumed(s, r->len, p->writes_pending == 0);
    }
    free(r);
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
    uv_buf_t buf;
    int rc;

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
     * copied); small ones are copied to an exact-size buffer. Neither counts against the
     * agent-wide output buffer cap: input held here waits for the child, which may itself wait
     * for its output to be read, and input counted against that cap deadlocked (a 1 MiB window of
     * small frames filled it while the child's small pipes were full). Input is bounded by credit.
     */
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
    r->pipe = p;
    buf = uv_buf_init((char *)m->data, r->len);
    if (r->copy != NULL) {
        buf.base = r->copy;
    }
    rc = uv_write(&r->req, (uv_stream_t *)&p->handle, &buf, 1, in_write_cb);
    if (rc < 0) {
        if (r->slab != NULL) {
            agent_slab_release(c->a, r->slab);
        }
        free(r->copy);
        free(r);
        sbx_err_sys(&err, -rc, "stdin", "write to the process's stdin");
        agent_stream_cancel(s, &err);
        return;
    }
    p->writes_pending++;
}

/* --- output pipes ------------------------------------------------------------------------- */

/*
 * May an output pipe read now? Detached output is always drained (into the replay buffer, the
 * buffer goes straight back) so the child never blocks. Attached output needs credit, a
 * connection that is not backed up, and a free buffer under the agent-wide cap, so memory stays
 * bounded however many streams and connections there are.
 */
static bool pipe_may_read(struct agent_pipe *p)
{
    struct agent *a = p->proc->a;

    if (p->stream == NULL) {
        return true;
    }
    if (a->bufs_used >= SBX_AGENT_BUFS_MAX) {
        a->bufs_starved = true;
        return false;
    }
    return p->stream->credit > 0 && !p->stream->conn->paused;
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
    buf->base = agent_buf_get(p->proc->a);
    buf->len = buf->base != NULL ? n : 0;
}

/* Keep the last SBX_REPLAY_MAX bytes of output nobody is reading. */
static void replay_append(struct agent_pipe *p, const uint8_t *data, uint32_t n)
{
    if (p->replay == NULL) {
        p->replay = malloc(SBX_REPLAY_MAX);
        if (p->replay == NULL) {
            p->dropped += n;
            return;
        }
    }
    if (n >= SBX_REPLAY_MAX) {
        p->dropped += p->replay_len + (n - SBX_REPLAY_MAX);
        memcpy(p->replay, data + (n - SBX_REPLAY_MAX), SBX_REPLAY_MAX);
        p->replay_len = SBX_REPLAY_MAX;
        return;
    }
    if (p->replay_len + n > SBX_REPLAY_MAX) {
        uint32_t drop = p->replay_len + n - SBX_REPLAY_MAX;
        memmove(p->replay, p->replay + drop, p->replay_len - drop);
        p->replay_len -= drop;
        p->dropped += drop;
    }
    memcpy(p->replay + p->replay_len, data, n);
    p->replay_len += n;
}

/* Output nobody streams: to the pipe's sink (a REPL's capture) or the replay buffer. */
static void pipe_keep(struct agent_pipe *p, const uint8_t *data, uint32_t n)
{
    if (p->sink != NULL) {
        p->sink(p, data, n);
    } else {
        replay_append(p, data, n);
    }
}

static void pipe_read_cb(uv_stream_t *h, ssize_t nread, const uv_buf_t *buf)
{
    struct agent_pipe *p = h->data;
    struct agent *a = p->proc->a;
    struct agent_stream *s = p->stream;

    if (nread > 0) {
        p->total += (uint64_t)nread;
        if (s != NULL) {
            s->credit -= (uint64_t)nread;
            agent_conn_send_data(s->conn, s->id, buf->base, (uint32_t)nread);
            agent_pipe_update(p);
        } else {
            pipe_keep(p, (const uint8_t *)buf->base, (uint32_t)nread);
            agent_buf_put(a, buf->base);
        }
        return;
    }
    if (buf->base != NULL) {
        agent_buf_put(a, buf->base);
    }
    if (nread == 0) {
        return;
    }
    if (nread == UV_ENOBUFS) {
        /* pipe_alloc_cb refused (paused, no credit, buffer cap or out of memory): stop reading
         * until agent_pipe_update is called again. */
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
        (void)agent_pipe_final_drain(p);
        nread = UV_EOF;
    }
    p->eof = true;
    if (s != NULL) {
        struct sbx_err err;
        if (nread != UV_EOF) {
            sbx_err_sys(&err, (int)-nread, "read", "read process output");
        }
        agent_stream_end(s, nread != UV_EOF ? &err : NULL, false);
    }
    agent_pipe_close(p);
    agent_proc_check_done(p->proc);
}

void agent_pipe_update(struct agent_pipe *p)
{
    bool want;

    if (!p->open || p->eof || p->is_input) {
        return;
    }
    /* Read while the stream has credit and its connection is not backed up; detached output is
     * always drained (into the replay buffer) so the child never blocks. */
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
    /* Not reading for lack of credit (or buffers): the host is slow, the pipe is not held open.
     * Never cut that output short; the client decides the pace (PROTOCOL.md 9.2). */
    return !pipe_may_read(p);
}

bool agent_pipe_final_drain(struct agent_pipe *p)
{
    struct agent *a = p->proc->a;
    uv_os_fd_t fd;
    size_t budget = 1u << 20; /* the pipe's capacity: a writer refilling it cannot hold us */

    if (uv_fileno((uv_handle_t *)&p->handle, &fd) != 0) {
        return false;
    }
    while (budget > 0) {
        struct agent_stream *s = p->stream;
        size_t want = SBX_STREAM_CHUNK_MAX < budget ? SBX_STREAM_CHUNK_MAX : budget;
        void *buf;
        ssize_t n;

        if (s != NULL && s->credit < want) {
            want = (size_t)s->credit;
        }
        if (want == 0 || (buf = agent_buf_get(a)) == NULL) {
            return false;
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
        p->total += (uint64_t)n;
        if (s != NULL) {
            s->credit -= (uint64_t)n;
            agent_conn_send_data(s->conn, s->id, buf, (uint32_t)n);
        } else {
            pipe_keep(p, buf, (uint32_t)n);
            agent_buf_put(a, buf);
        }
    }
    return false;
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
    uv_close((uv_handle_t *)&p->handle, pipe_close_cb);
}
