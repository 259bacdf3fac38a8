/* Streams: the per-stream credit table, chunked writes within credit, consumption grants. */
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "internal.h"

static struct sbx__stream *find(const struct sbx_client *c, uint32_t id)
{
    for (uint32_t i = 0; i < c->nstreams; i++) {
        if (c->streams[i].id == id) {
            return &c->streams[i];
        }
    }
    return NULL;
}

/*
 * Find or create the entry for @id. A new entry starts with the window as credit (a sender
 * holds one window per stream from its creation). Finished entries are kept (so late messages
 * for them stay no-ops) until the table reaches SBX_MAX_STREAMS; then they are recycled.
 * Returns NULL when the table is full of live streams or memory ran out.
 */
static struct sbx__stream *get(struct sbx_client *c, uint32_t id)
{
    struct sbx__stream *s = find(c, id);

    if (s != NULL) {
        return s;
    }
    if (c->nstreams == SBX_MAX_STREAMS) {
        uint32_t keep = 0;
        for (uint32_t i = 0; i < c->nstreams; i++) {
            if ((c->streams[i].flags & SBX__ST_DONE) == 0) {
                c->streams[keep++] = c->streams[i];
            }
        }
        c->nstreams = keep;
        if (keep == SBX_MAX_STREAMS) {
            return NULL;
        }
    }
    if (c->nstreams == c->streams_cap) {
        uint32_t cap = c->streams_cap != 0 ? c->streams_cap * 2 : 16;
        struct sbx__stream *p;
        if (cap > SBX_MAX_STREAMS) {
            cap = SBX_MAX_STREAMS;
        }
        p = realloc(c->streams, cap * sizeof(*p));
        if (p == NULL) {
            return NULL;
        }
        c->streams = p;
        c->streams_cap = cap;
    }
    s = &c->streams[c->nstreams++];
    memset(s, 0, sizeof(*s));
    s->id = id;
    s->credit = c->window;
    return s;
}

void sbx__streams_free(struct sbx_client *c)
{
    free(c->streams);
    c->streams = NULL;
    c->nstreams = c->streams_cap = 0;
}

void sbx__on_arrival(struct sbx_client *c, const struct sbx_msg *m)
{
    struct sbx_err e;
    uint64_t stream = 0, bytes = 0;
    struct sbx__stream *s;

    if (m->kind != SBX_MSG_NOTIFY) {
        return;
    }
    if (sbx_msg_method_is(m, "error")) {
        if (m->params != NULL) {
            sbx_err_from_obj(m->params, &c->peer_err);
        }
        return;
    }
    if (!sbx_msg_method_is(m, "stream.credit") && !sbx_msg_method_is(m, "stream.cancel") &&
        !sbx_msg_method_is(m, "stream.end")) {
        return;
    }
    /* Malformed control messages are ignored, as messages for unknown streams are. */
    if (sbx_param_u64(m->params, "stream", SBX_REQUIRED, 1, UINT32_MAX, &stream, &e) != 0) {
        return;
    }
    if (sbx_msg_method_is(m, "stream.credit")) {
        if (sbx_param_u64(m->params, "bytes", SBX_REQUIRED, 0, UINT32_MAX, &bytes, &e) != 0) {
            return;
        }
        s = get(c, (uint32_t)stream);
        if (s != NULL && (s->flags & SBX__ST_DONE) == 0) {
            /* Outstanding credit never exceeds 2^32-1 (PROTOCOL.md); clamp a confused peer. */
            s->credit = s->credit + bytes > UINT32_MAX ? UINT32_MAX : s->credit + bytes;
        }
        return;
    }
    s = get(c, (uint32_t)stream);
    if (s == NULL) {
        return;
    }
    s->flags |= SBX__ST_DONE;
    if (sbx_msg_method_is(m, "stream.cancel")) {
        s->flags |= SBX__ST_CANCELLED;
        s->credit = 0;
    }
}

uint64_t sbx_client_credit(const struct sbx_client *c, uint32_t stream)
{
    const struct sbx__stream *s = find(c, stream);

    if (s == NULL) {
        return c->window;
    }
    return (s->flags & SBX__ST_DONE) != 0 ? 0 : s->credit;
}

bool sbx_client_stream_cancelled(const struct sbx_client *c, uint32_t stream)
{
    const struct sbx__stream *s = find(c, stream);

    return s != NULL && (s->flags & SBX__ST_CANCELLED) != 0;
}

int sbx_client_grant(struct sbx_client *c, uint32_t stream, uint32_t bytes, struct sbx_err *err)
{
    return sbx__send_stream_ctl(c, "stream.credit", stream, true, bytes, err);
}

int sbx_client_stream_end(struct sbx_client *c, uint32_t stream, struct sbx_err *err)
{
    struct sbx__stream *s = get(c, stream);

    if (s != NULL) {
        s->flags |= SBX__ST_DONE;
    }
    return sbx__send_stream_ctl(c, "stream.end", stream, false, 0, err);
}

int sbx_client_stream_cancel(struct sbx_client *c, uint32_t stream, struct sbx_err *err)
{
    struct sbx__stream *s = get(c, stream);

    if (s != NULL) {
        s->flags |= SBX__ST_DONE;
    }
    return sbx__send_stream_ctl(c, "stream.cancel", stream, false, 0, err);
}

/*
 * Read one message while an "in" stream has no credit: stream.credit notifications are applied
 * and dropped, everything else is queued for sbx_client_recv.
 */
static int wait_credit(struct sbx_client *c, struct sbx_err *err)
{
    struct sbx_msg m;
    struct sbx_err derr;
    int r = sbx__read_frame(c, -1, err);

    if (r <= 0) {
        return -1;
    }
    if (sbx_msg_decode(&c->dec, c->fp, c->flen, &m, &derr) < 0) {
        return 0; /* malformed: dropped */
    }
    sbx__on_arrival(c, &m);
    if (m.kind == SBX_MSG_NOTIFY && sbx_msg_method_is(&m, "stream.credit")) {
        return 0;
    }
    return sbx__queue(c, &m, err);
}

int sbx_client_stream_write(struct sbx_client *c, uint32_t stream, const void *data, size_t len,
                            struct sbx_err *err)
{
    const uint8_t *p = data;
    size_t off = 0;

    if (stream == 0) {
        return sbx_err_param(err, "stream", "stream id 0 is never valid");
    }
    while (off < len) {
        uint8_t hdr[SBX_STREAM_DATA_HDR_MAX];
        struct iovec iov[2];
        struct sbx__stream *s = get(c, stream);
        uint64_t n;

        if (s == NULL) {
            return sbx_err_set(err, SBX_E_LIMIT, "%s: more than %u streams tracked", c->addr,
                               SBX_MAX_STREAMS);
        }
        if ((s->flags & SBX__ST_CANCELLED) != 0) {
            return sbx_err_set(err, SBX_E_STREAM, "stream %u was cancelled by the agent", stream);
        }
        if ((s->flags & SBX__ST_DONE) != 0) {
            return sbx_err_set(err, SBX_E_STREAM, "stream %u has already ended", stream);
        }
        if (s->credit == 0) {
            if (wait_credit(c, err) < 0) {
                return -1;
            }
            continue; /* the table may have moved */
        }
        n = len - off;
        if (n > c->chunk_max) {
            n = c->chunk_max;
        }
        if (n > s->credit) {
            n = s->credit;
        }
        s->credit -= n;
        iov[0].iov_base = hdr;
        iov[0].iov_len = sbx_data_header(hdr, stream, (uint32_t)n);
        iov[1].iov_base = (void *)(p + off);
        iov[1].iov_len = (size_t)n;
        if (sbx__write_iov(c, iov, 2, err) < 0) {
            return -1;
        }
        off += (size_t)n;
    }
    return 0;
}

int sbx_client_consumed(struct sbx_client *c, uint32_t stream, uint32_t n, struct sbx_err *err)
{
    struct sbx__stream *s = get(c, stream);
    uint64_t grant;

    if (s == NULL) {
        /* Cannot track it: grant right away so the stream never stalls. */
        return n > 0 ? sbx_client_grant(c, stream, n, err) : 0;
    }
    if ((s->flags & SBX__ST_DONE) != 0) {
        return 0;
    }
    s->consumed += n;
    if (s->consumed < c->window / 2 || s->consumed == 0) {
        return 0;
    }
    grant = s->consumed > UINT32_MAX ? UINT32_MAX : s->consumed;
    s->consumed -= grant;
    return sbx_client_grant(c, stream, (uint32_t)grant, err);
}
