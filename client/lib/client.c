/* The client object: connection I/O, the message FIFO, requests, responses and hello. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

/* Bytes asked of read() at a time. */
/* Room for two largest data frames per read, so most frames arrive whole in one read and are
 * decoded where they lie (sbx_framer_next) instead of being copied out. */
#define RBUF_CHUNK (2 * (SBX_STREAM_CHUNK_MAX + SBX_STREAM_DATA_HDR_MAX))

/* --- time --------------------------------------------------------------------------------- */

int64_t sbx__now_ms(void)
{
    struct timespec ts;

    (void)clock_gettime(CLOCK_MONOTONIC, &ts); /* cannot fail for CLOCK_MONOTONIC */
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t sbx__deadline(int timeout_ms)
{
    return timeout_ms < 0 ? -1 : sbx__now_ms() + timeout_ms;
}

int sbx__remaining(int64_t deadline)
{
    int64_t left;

    if (deadline < 0) {
        return -1;
    }
    left = deadline - sbx__now_ms();
    if (left <= 0) {
        return 0;
    }
    return left > 86400000 ? 86400000 : (int)left;
}

/* --- lifetime ----------------------------------------------------------------------------- */

static struct sbx_client *client_new(int fd, const char *name, int timeout_ms, struct sbx_err *err)
{
    struct sbx_client *c = calloc(1, sizeof(*c));
    struct stat st;
    int fl;

    if (c == NULL || (c->addr = strdup(name)) == NULL) {
        free(c);
        (void)close(fd);
        (void)sbx_err_set(err, SBX_E_INTERNAL, "out of memory");
        return NULL;
    }
    c->fd = fd;
    c->timeout_ms = timeout_ms;
    c->is_sock = fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
    fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
        (void)sbx_err_sys(err, errno, NULL, "%s: fcntl", name);
        free(c->addr);
        free(c);
        (void)close(fd);
        return NULL;
    }
    if (sbx_decoder_init(&c->dec) < 0) {
        (void)sbx_err_set(err, SBX_E_INTERNAL, "out of memory");
        free(c->addr);
        free(c);
        (void)close(fd);
        return NULL;
    }
    sbx_framer_init(&c->fr, 0);
    sbx_out_init(&c->out);
    sbx_out_init(&c->ctl);
    c->next_id = 1;
    c->window = SBX_STREAM_WINDOW;
    c->chunk_max = SBX_STREAM_CHUNK_MAX;
    return c;
}

struct sbx_client *sbx_client_connect(const char *addr, int timeout_ms, struct sbx_err *err)
{
    struct sbx_addr a;
    int fd;

    if (sbx_addr_parse(addr, &a, err) < 0) {
        return NULL;
    }
    fd = sbx__connect(&a, addr, timeout_ms, err);
    if (fd < 0) {
        return NULL;
    }
    return client_new(fd, addr, timeout_ms, err);
}

struct sbx_client *sbx_client_from_fd(int fd, const char *name, struct sbx_err *err)
{
    return client_new(fd, name != NULL ? name : "fd", -1, err);
}

static void release_cur(struct sbx_client *c)
{
    free(c->cur);
    c->cur = NULL;
    free(c->rbuf_old);
    c->rbuf_old = NULL;
    c->mbuf = NULL;
    c->mlen = 0;
}

void sbx_client_close(struct sbx_client *c)
{
    struct sbx__qmsg *q;

    if (c == NULL) {
        return;
    }
    if (c->fd >= 0) {
        (void)close(c->fd); /* nothing useful to do about a close error here */
    }
    while ((q = c->qhead) != NULL) {
        c->qhead = q->next;
        free(q->buf);
        free(q);
    }
    release_cur(c);
    free(c->rbuf);
    sbx_framer_free(&c->fr);
    sbx_decoder_destroy(&c->dec);
    sbx_out_destroy(&c->out);
    sbx_out_destroy(&c->ctl);
    for (uint32_t i = 0; i < c->ncaps; i++) {
        free(c->caps[i]);
    }
    free(c->caps);
    if (c->hello_dec_ok) {
        sbx_decoder_destroy(&c->hello_dec);
    }
    free(c->hello_buf);
    sbx__streams_free(c);
    free(c->addr);
    free(c);
}

int sbx_client_fd(const struct sbx_client *c)
{
    return c->fd;
}

const char *sbx_client_addr(const struct sbx_client *c)
{
    return c->addr;
}

uint32_t sbx_client_version(const struct sbx_client *c)
{
    return c->version;
}

bool sbx_client_has_cap(const struct sbx_client *c, const char *cap)
{
    for (uint32_t i = 0; i < c->ncaps; i++) {
        if (strcmp(c->caps[i], cap) == 0) {
            return true;
        }
    }
    return false;
}

uint32_t sbx_client_window(const struct sbx_client *c)
{
    return c->window;
}

uint32_t sbx_client_chunk_max(const struct sbx_client *c)
{
    return c->chunk_max;
}

const msgpack_object *sbx_client_hello_result(const struct sbx_client *c)
{
    return c->hello_buf != NULL ? c->hello_msg.result : NULL;
}

bool sbx_client_pending(const struct sbx_client *c)
{
    return c->qhead != NULL || c->rpos < c->rlen;
}

/* --- failure ------------------------------------------------------------------------------ */

/* Remember a fatal error: every later call reports it again. Returns -1. */
static int fail(struct sbx_client *c, struct sbx_err *err)
{
    c->broken = true;
    c->fatal = *err;
    return -1;
}

static int check_broken(const struct sbx_client *c, struct sbx_err *err)
{
    if (c->broken) {
        *err = c->fatal;
        return -1;
    }
    return 0;
}

/*
 * The agent closed the connection (EOF, or a reset because it closed with our bytes unread).
 * Its last "error" notification, if any, says why.
 */
static int closed_error(struct sbx_client *c, const char *code, struct sbx_err *err)
{
    if (sbx_err_isset(&c->peer_err)) {
        (void)sbx_err_set(err, code, "%s: connection closed by the agent after error %s: %s",
                          c->addr, c->peer_err.code, c->peer_err.msg);
    } else {
        (void)sbx_err_set(err, code, "%s: connection closed by the agent", c->addr);
    }
    return fail(c, err);
}

/* --- reading ------------------------------------------------------------------------------ */

/*
 * Make room for @want more bytes at the end of rbuf; -1 when out of memory. The current message
 * may lie in rbuf (decoded in place), and must stay valid until the next receive: then the
 * unread bytes move to a new buffer and the old one is kept until release_cur.
 */
static int rbuf_reserve(struct sbx_client *c, size_t want)
{
    uint8_t *p;
    size_t cap;

    if (c->mbuf != NULL && c->mbuf >= c->rbuf && c->mbuf < c->rbuf + c->rcap) {
        size_t unread = c->rlen - c->rpos;
        if (c->rcap - c->rlen >= want) {
            return 0;
        }
        cap = RBUF_CHUNK;
        while (cap - unread < want) {
            cap *= 2;
        }
        p = malloc(cap);
        if (p == NULL) {
            return -1;
        }
        memcpy(p, c->rbuf + c->rpos, unread);
        free(c->rbuf_old); /* nothing lives there any more: the message is in rbuf */
        c->rbuf_old = c->rbuf;
        c->rbuf = p;
        c->rcap = cap;
        c->rpos = 0;
        c->rlen = unread;
        return 0;
    }
    if (c->rpos == c->rlen) {
        c->rpos = c->rlen = 0;
    } else if (c->rpos > 0 && c->rcap - c->rlen < want) {
        memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
        c->rlen -= c->rpos;
        c->rpos = 0;
    }
    if (c->rcap - c->rlen >= want) {
        return 0;
    }
    cap = c->rcap != 0 ? c->rcap : RBUF_CHUNK;
    while (cap - c->rlen < want) {
        cap *= 2;
    }
    p = realloc(c->rbuf, cap);
    if (p == NULL) {
        return -1;
    }
    c->rbuf = p;
    c->rcap = cap;
    return 0;
}

/* One read() into rbuf. Returns 1 (bytes added, or EAGAIN), 0 on EOF, -1 on error. */
static int read_some(struct sbx_client *c, struct sbx_err *err)
{
    ssize_t n;

    if (rbuf_reserve(c, RBUF_CHUNK) < 0) {
        (void)sbx_err_set(err, SBX_E_INTERNAL, "out of memory reading from %s", c->addr);
        return -1;
    }
    do {
        n = read(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen);
    } while (n < 0 && errno == EINTR);
    if (n > 0) {
        c->rlen += (size_t)n;
        return 1;
    }
    if (n == 0) {
        c->rd_eof = true;
        return 0;
    }
    if (errno == EAGAIN) {
        return 1;
    }
    if (errno == ECONNRESET) {
        c->rd_eof = true;
        c->rd_reset = true;
        return 0;
    }
    (void)sbx_err_sys(err, errno, NULL, "read from %s", c->addr);
    return -1;
}

int sbx__read_frame(struct sbx_client *c, int64_t deadline, struct sbx_err *err)
{
    if (check_broken(c, err) < 0) {
        return -1;
    }
    for (;;) {
        struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
        int r;

        while (c->rpos < c->rlen) {
            size_t used = 0;
            r = sbx_framer_next(&c->fr, c->rbuf + c->rpos, c->rlen - c->rpos, &used, &c->fp,
                                &c->flen, err);
            c->rpos += used;
            if (r < 0) {
                sbx_err_prefix(err, "%s", c->addr);
                return fail(c, err);
            }
            if (r == 1) {
                return 1;
            }
        }
        if (c->rd_eof) {
            return closed_error(c, c->rd_reset ? "ECONNRESET" : "EOF", err);
        }
        r = poll(&pfd, 1, sbx__remaining(deadline));
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            (void)sbx_err_sys(err, errno, NULL, "poll %s", c->addr);
            return fail(c, err);
        }
        if (r == 0) {
            return 0;
        }
        r = read_some(c, err);
        if (r < 0) {
            return fail(c, err);
        }
    }
}

/* Decode the frame the framer just completed into @m; it becomes the current message. */
static int decode_framer(struct sbx_client *c, struct sbx_msg *m, struct sbx_err *err)
{
    c->mbuf = c->fp;
    c->mlen = c->flen;
    if (sbx_msg_decode(&c->dec, c->fp, c->flen, m, err) < 0) {
        sbx_err_prefix(err, "message from %s", c->addr);
        return -1;
    }
    return 0;
}

int sbx__queue(struct sbx_client *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct sbx__qmsg *q;

    if (c->qbytes + c->flen > SBX_CLIENT_FIFO_MAX) {
        (void)sbx_err_set(err, SBX_E_LIMIT,
                          "%s: more than %u bytes of messages queued while waiting (is the "
                          "caller consuming its streams?)",
                          c->addr, SBX_CLIENT_FIFO_MAX);
        return fail(c, err);
    }
    q = calloc(1, sizeof(*q));
    if (q == NULL) {
        (void)sbx_err_set(err, SBX_E_INTERNAL, "out of memory queueing a message");
        return fail(c, err);
    }
    q->kind = m->kind;
    q->id = m->id;
    if (c->fp == c->fr.buf) {
        q->buf = sbx_framer_take(&c->fr, &q->len);
    } else if ((q->buf = malloc(c->flen)) != NULL) {
        /* Decoded where it was read: it must outlive rbuf's reuse. */
        memcpy(q->buf, c->fp, c->flen);
        q->len = c->flen;
    } else {
        free(q);
        (void)sbx_err_set(err, SBX_E_INTERNAL, "out of memory queueing a message");
        return fail(c, err);
    }
    c->mbuf = NULL;
    c->mlen = 0;
    c->qbytes += q->len;
    if (c->qtail != NULL) {
        c->qtail->next = q;
    } else {
        c->qhead = q;
    }
    c->qtail = q;
    return 0;
}

/* Make queued message @q (already unlinked) the current one and decode it into @m. */
static int pop_decode(struct sbx_client *c, struct sbx__qmsg *q, struct sbx_msg *m,
                      struct sbx_err *err)
{
    int r;

    c->qbytes -= q->len;
    c->cur = q->buf;
    c->mbuf = q->buf;
    c->mlen = q->len;
    r = sbx_msg_decode(&c->dec, q->buf, q->len, m, err);
    free(q);
    return r;
}

int sbx_client_recv(struct sbx_client *c, struct sbx_msg *m, int timeout_ms, struct sbx_err *err)
{
    int r;

    release_cur(c);
    if (c->qhead != NULL) {
        struct sbx__qmsg *q = c->qhead;
        c->qhead = q->next;
        if (c->qhead == NULL) {
            c->qtail = NULL;
        }
        /* Queued messages decoded once already; this cannot fail short of a bug. */
        return pop_decode(c, q, m, err) < 0 ? -1 : 1;
    }
    r = sbx__read_frame(c, sbx__deadline(timeout_ms), err);
    if (r <= 0) {
        return r;
    }
    if (decode_framer(c, m, err) < 0) {
        return -1;
    }
    sbx__on_arrival(c, m);
    return 1;
}

static int finish_response(const struct sbx_msg *resp, struct sbx_err *err)
{
    if (resp->error != NULL) {
        sbx_err_from_obj(resp->error, err);
        return -1;
    }
    return 0;
}

int sbx_client_wait(struct sbx_client *c, uint32_t id, struct sbx_msg *resp, int timeout_ms,
                    struct sbx_err *err)
{
    int64_t deadline = sbx__deadline(timeout_ms);
    struct sbx__qmsg *q, *prev = NULL;

    release_cur(c);
    /* The response may have been queued while stream_write waited for credit. */
    for (q = c->qhead; q != NULL; prev = q, q = q->next) {
        if (q->kind != SBX_MSG_RESPONSE || q->id != id) {
            continue;
        }
        if (prev != NULL) {
            prev->next = q->next;
        } else {
            c->qhead = q->next;
        }
        if (c->qtail == q) {
            c->qtail = prev;
        }
        if (pop_decode(c, q, resp, err) < 0) {
            return -1;
        }
        return finish_response(resp, err);
    }
    for (;;) {
        struct sbx_err derr;
        int r = sbx__read_frame(c, deadline, err);

        if (r < 0) {
            return -1;
        }
        if (r == 0) {
            return sbx_err_set(err, SBX_E_TIMEOUT, "%s: no response to request %u within %d ms",
                               c->addr, id, timeout_ms);
        }
        if (decode_framer(c, resp, &derr) < 0) {
            continue; /* a malformed message is dropped; we are waiting for the response */
        }
        if (resp->kind == SBX_MSG_RESPONSE && resp->id == id) {
            return finish_response(resp, err);
        }
        sbx__on_arrival(c, resp);
        if (sbx__queue(c, resp, err) < 0) {
            return -1;
        }
    }
}

/* --- writing ------------------------------------------------------------------------------ */

int sbx__write_iov(struct sbx_client *c, const struct iovec *iov_in, int iovcnt,
                   struct sbx_err *err)
{
    struct iovec iov[4];
    int i = 0;

    if (check_broken(c, err) < 0) {
        return -1;
    }
    if (iovcnt > 4) {
        return sbx_err_set(err, SBX_E_INTERNAL, "too many iovecs");
    }
    memcpy(iov, iov_in, sizeof(iov[0]) * (size_t)iovcnt);
    while (i < iovcnt) {
        ssize_t w;

        if (iov[i].iov_len == 0) {
            i++;
            continue;
        }
        if (c->is_sock) {
            struct msghdr mh = { .msg_iov = iov + i, .msg_iovlen = (size_t)(iovcnt - i) };
            w = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
        } else {
            w = writev(c->fd, iov + i, iovcnt - i);
        }
        if (w >= 0) {
            size_t left = (size_t)w;
            while (i < iovcnt && left >= iov[i].iov_len) {
                left -= iov[i].iov_len;
                i++;
            }
            if (i < iovcnt) {
                iov[i].iov_base = (char *)iov[i].iov_base + left;
                iov[i].iov_len -= left;
            }
            continue;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno == EAGAIN) {
            /*
             * The socket is full. Keep reading what the agent sends meanwhile (into rbuf, not
             * parsed, so the caller's current message stays valid): if both sides only wrote,
             * both could block forever.
             */
            struct pollfd pfd = { .fd = c->fd, .events = POLLOUT };
            int r;
            if (!c->rd_eof && c->rlen - c->rpos < SBX_CLIENT_RBUF_MAX) {
                pfd.events |= POLLIN;
            }
            r = poll(&pfd, 1, -1);
            if (r < 0 && errno != EINTR) {
                (void)sbx_err_sys(err, errno, NULL, "poll %s", c->addr);
                return fail(c, err);
            }
            if (r > 0 && (pfd.revents & POLLIN) != 0 && read_some(c, err) < 0) {
                return fail(c, err);
            }
            continue;
        }
        if (errno == EPIPE || errno == ECONNRESET) {
            return closed_error(c, errno == EPIPE ? "EPIPE" : "ECONNRESET", err);
        }
        (void)sbx_err_sys(err, errno, NULL, "write to %s", c->addr);
        return fail(c, err);
    }
    return 0;
}

/* End the frame in @o and write it out; @o is empty afterwards. */
static int flush_out(struct sbx_client *c, struct sbx_out *o, struct sbx_err *err)
{
    struct iovec iov;
    int r;

    if (sbx_out_end(o, err) < 0) {
        sbx_out_reset(o);
        return -1;
    }
    iov.iov_base = o->sb.data;
    iov.iov_len = o->sb.size;
    r = sbx__write_iov(c, &iov, 1, err);
    sbx_out_reset(o);
    return r;
}

msgpack_packer *sbx_client_begin(struct sbx_client *c, const char *method, uint32_t *id)
{
    uint32_t rid = c->next_id++;

    if (c->next_id == 0) {
        c->next_id = 1;
    }
    if (id != NULL) {
        *id = rid;
    }
    sbx_out_reset(&c->out);
    sbx_out_begin(&c->out);
    sbx_pack_request_head(&c->out.pk, rid, method);
    return &c->out.pk;
}

msgpack_packer *sbx_client_begin_notify(struct sbx_client *c, const char *method)
{
    sbx_out_reset(&c->out);
    sbx_out_begin(&c->out);
    sbx_pack_notify_head(&c->out.pk, method);
    return &c->out.pk;
}

int sbx_client_send(struct sbx_client *c, struct sbx_err *err)
{
    return flush_out(c, &c->out, err);
}

int sbx__send_stream_ctl(struct sbx_client *c, const char *method, uint32_t stream, bool with_bytes,
                         uint32_t bytes, struct sbx_err *err)
{
    sbx_out_reset(&c->ctl);
    sbx_out_begin(&c->ctl);
    sbx_pack_notify_head(&c->ctl.pk, method);
    (void)msgpack_pack_map(&c->ctl.pk, with_bytes ? 2 : 1); /* failures are sticky */
    sbx_pack_kv_u64(&c->ctl.pk, "stream", stream);
    if (with_bytes) {
        sbx_pack_kv_u64(&c->ctl.pk, "bytes", bytes);
    }
    return flush_out(c, &c->ctl, err);
}

int sbx_client_call0(struct sbx_client *c, const char *method, struct sbx_msg *resp,
                     struct sbx_err *err)
{
    uint32_t id;
    msgpack_packer *pk = sbx_client_begin(c, method, &id);

    (void)msgpack_pack_map(pk, 0); /* failures are sticky and reported by send */
    if (sbx_client_send(c, err) < 0) {
        return -1;
    }
    return sbx_client_wait(c, id, resp, -1, err);
}

/* --- hello -------------------------------------------------------------------------------- */

/* Keep a private copy of the hello response so its result outlives later receives. */
static int keep_hello(struct sbx_client *c, struct sbx_err *err)
{
    if (c->mbuf == NULL) {
        return sbx_err_set(err, SBX_E_INTERNAL, "hello response buffer lost");
    }
    c->hello_buf = malloc(c->mlen);
    if (c->hello_buf == NULL) {
        return sbx_err_set(err, SBX_E_INTERNAL, "out of memory");
    }
    memcpy(c->hello_buf, c->mbuf, c->mlen);
    if (sbx_decoder_init(&c->hello_dec) < 0) {
        return sbx_err_set(err, SBX_E_INTERNAL, "out of memory");
    }
    c->hello_dec_ok = true;
    return sbx_msg_decode(&c->hello_dec, c->hello_buf, c->mlen, &c->hello_msg, err);
}

static int parse_hello(struct sbx_client *c, const msgpack_object *res, struct sbx_err *err)
{
    const msgpack_object *caps = NULL, *limits = NULL;
    uint64_t v = 0;

    if (res == NULL || res->type != MSGPACK_OBJECT_MAP) {
        return sbx_err_set(err, SBX_E_BAD_MESSAGE, "%s: hello result is not a map", c->addr);
    }
    if (sbx_param_u64(res, "version", SBX_REQUIRED, 1, UINT32_MAX, &v, err) < 0) {
        sbx_err_prefix(err, "%s: hello result", c->addr);
        return -1;
    }
    if (v < SBX_PROTO_MIN_VERSION || v > SBX_PROTO_VERSION) {
        return sbx_err_set(
            err, SBX_E_VERSION, "%s: agent chose protocol version %llu; this client speaks %u..%u",
            c->addr, (unsigned long long)v, SBX_PROTO_MIN_VERSION, SBX_PROTO_VERSION);
    }
    c->version = (uint32_t)v;
    if (sbx_param_array(res, "capabilities", SBX_OPTIONAL, SBX_CAPS_MAX, &caps, err) < 0) {
        sbx_err_prefix(err, "%s: hello result", c->addr);
        return -1;
    }
    if (caps != NULL && caps->via.array.size > 0) {
        c->caps = calloc(caps->via.array.size, sizeof(*c->caps));
        if (c->caps == NULL) {
            return sbx_err_set(err, SBX_E_INTERNAL, "out of memory");
        }
        for (uint32_t i = 0; i < caps->via.array.size; i++) {
            const msgpack_object *o = &caps->via.array.ptr[i];
            if (o->type != MSGPACK_OBJECT_STR) {
                continue; /* unknown shapes are ignored, as unknown fields are */
            }
            c->caps[c->ncaps] = strndup(o->via.str.ptr, o->via.str.size);
            if (c->caps[c->ncaps] == NULL) {
                return sbx_err_set(err, SBX_E_INTERNAL, "out of memory");
            }
            c->ncaps++;
        }
    }
    if (sbx_param_map(res, "limits", SBX_OPTIONAL, 64, &limits, err) < 0) {
        sbx_err_prefix(err, "%s: hello result", c->addr);
        return -1;
    }
    if (limits != NULL) {
        if (sbx_param_u64(limits, "stream_window", SBX_OPTIONAL, 1, UINT32_MAX, &v, err) == 0) {
            c->window = (uint32_t)v;
        } else if (sbx_err_isset(err)) {
            sbx_err_clear(err);
        }
        if (sbx_param_u64(limits, "chunk_max", SBX_OPTIONAL, 1, UINT32_MAX, &v, err) == 0) {
            /* Never send more per frame than either side allows. */
            c->chunk_max = v < SBX_STREAM_CHUNK_MAX ? (uint32_t)v : SBX_STREAM_CHUNK_MAX;
        } else if (sbx_err_isset(err)) {
            sbx_err_clear(err);
        }
    }
    return 0;
}

int sbx_client_hello(struct sbx_client *c, const char *token, struct sbx_err *err)
{
    struct sbx_msg resp;
    msgpack_packer *pk;
    uint32_t id;

    if (c->version != 0) {
        return sbx_err_set(err, SBX_E_BAD_MESSAGE, "%s: hello already done", c->addr);
    }
    if (token != NULL && strlen(token) > SBX_TOKEN_MAX) {
        return sbx_err_param(err, "token", "token longer than %u bytes", SBX_TOKEN_MAX);
    }
    pk = sbx_client_begin(c, "hello", &id);
    (void)msgpack_pack_map(pk, token != NULL ? 4 : 3);
    sbx_pack_kv_u64(pk, "version", SBX_PROTO_VERSION);
    sbx_pack_kv_u64(pk, "min_version", SBX_PROTO_MIN_VERSION);
    sbx_pack_kv_str(pk, "client", "libsbx");
    if (token != NULL) {
        sbx_pack_kv_str(pk, "token", token);
    }
    if (sbx_client_send(c, err) < 0) {
        return -1;
    }
    if (sbx_client_wait(c, id, &resp, c->timeout_ms, err) < 0) {
        if (strcmp(err->code, "EOF") != 0 && strcmp(err->code, SBX_E_TIMEOUT) != 0 &&
            strstr(err->msg, c->addr) == NULL) {
            sbx_err_prefix(err, "%s: hello", c->addr);
        }
        return -1;
    }
    if (keep_hello(c, err) < 0) {
        return -1;
    }
    return parse_hello(c, c->hello_msg.result, err);
}
