/*
 * The net family (PROTOCOL.md §20): TCP connections made from inside the guest (net.connect),
 * each carried by two streams, and the list of listening sockets (net.listening).
 *
 * A socket is read only while its `out` stream may send (credit, a connection that is not backed
 * up) and a pool buffer is free under the agent-wide cap, so a fast peer never grows the agent;
 * `in` bytes are written from where the connection read them (bounded by the credit granted),
 * and credit goes back only once the socket took them.
 */
#include "net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "netproc.h"
#include "sbx/schema.h"
#include "stream.h"

/* --- net.connect ---------------------------------------------------------------------------- */

enum net_state {
    NET_CONNECTING, /* connect in flight: no streams yet, the request waits */
    NET_OPEN,       /* answered: the streams carry the bytes */
    NET_CLOSING,    /* handles closing; freed when both closed */
};

struct net_sock {
    struct agent_conn_ref ref; /* its connection, from the request until closing starts */
    struct agent *a;
    enum net_state state;
    uv_tcp_t tcp;
    uv_timer_t timer; /* connecting: the deadline; open: the retry after a buffer shortage;
                       * lingering: the deadline of the last bytes */
    uv_connect_t creq;
    uv_shutdown_t sreq;
    uint32_t req;                  /* the net.connect request, answered once connected */
    uint32_t timeout_ms;           /* for the message of ETIMEDOUT */
    struct agent_stream *in, *out; /* NULL before the answer and once finished */
    unsigned closes;               /* handles not closed yet: freed at 0 */
    bool reading;                  /* uv_read_start active */
    bool read_done;                /* the peer's end of file, or a read error */
    bool wr_shut;                  /* the write side is shut (or being shut) */
    bool shutting;                 /* uv_shutdown in flight: pending writes, then FIN */
    bool starved; /* no buffer for the last read: retry (timer, or agent_net_resume) */
    struct agent_link starve_link; /* in a->net_starved while stopped at the buffer cap */
    bool lingering;                /* both streams finished, the last bytes still being written */
    unsigned writes;               /* write requests in flight */
    struct agent_tail tail;        /* small `in` payloads behind them (agent_tail) */
    char where[96];                /* "127.0.0.1:80", "[::1]:80", for messages */
};

/* One `in` payload being written to the socket: held where it was read, or copied. */
struct net_write {
    uv_write_t req;
    struct net_sock *n;
    struct agent_slab *slab; /* the held frame buffer the payload lies in, or NULL... */
    void *copy;              /* ...and then this exact-size copy */
    uint32_t len;
};

static void net_conn_gone(struct agent_conn_ref *r);
static void net_update(struct net_sock *n);

/* How many sockets @c has (@all), and how many are still connecting (their streams not made). */
static void net_count(const struct agent_conn *c, unsigned *all, unsigned *connecting)
{
    const struct agent_link *l;

    *all = *connecting = 0;
    for (l = c->refs.next; l != &c->refs; l = l->next) {
        const struct agent_conn_ref *r = agent_container_of(l, struct agent_conn_ref, link);
        if (r->gone == net_conn_gone) {
            const struct net_sock *n = agent_container_of(r, struct net_sock, ref);
            (*all)++;
            *connecting += n->state == NET_CONNECTING;
        }
    }
}

/*
 * May @c start one more connect? Its two streams must fit beside those of the connects still in
 * flight (they make theirs later), and a connection keeps at most SBX_MAX_STREAMS / 2 sockets: one
 * whose streams are both finished may still be flushing its last bytes to a slow peer.
 */
static int net_reserve(const struct agent_conn *c, struct sbx_err *err)
{
    unsigned all, connecting;

    net_count(c, &all, &connecting);
    if (agent_stream_reserve(c, 2 * (connecting + 1), err) < 0) {
        return -1;
    }
    if (all >= SBX_MAX_STREAMS / 2) {
        return sbx_err_limit(err, "max_streams", SBX_MAX_STREAMS,
                             "this connection already has %u TCP connections (2 streams each)",
                             all);
    }
    return 0;
}

/* The zone of an IPv6 link-local literal ("fe80::1%eth0", "fe80::1%2"): its interface index, or 0
 * when there is no such interface. */
static unsigned net_zone(const char *zone)
{
    char *end;
    unsigned long v;

    if (zone[0] >= '0' && zone[0] <= '9') {
        v = strtoul(zone, &end, 10);
        return *end == '\0' && v <= UINT32_MAX ? (unsigned)v : 0;
    }
    return strlen(zone) < IF_NAMESIZE ? if_nametoindex(zone) : 0;
}

/*
 * The address to connect to: @host (@len bytes; NULL: 127.0.0.1) and @port into @sa, its text
 * form into @where. Only address literals and "localhost": a name is never resolved (the guest's
 * resolver configuration is the workload's, and a lookup would block the loop). 0, or -1 with
 * BAD_PARAM naming `host`.
 */
static int net_addr(const char *host, size_t len, uint32_t port, struct sockaddr_storage *sa,
                    char *where, size_t wsz, struct sbx_err *err)
{
    struct sockaddr_in *s4 = (struct sockaddr_in *)sa;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)sa;
    char h[SBX_NET_HOST_MAX + 1];
    char *zone;

    memset(sa, 0, sizeof(*sa));
    if (host == NULL || (len == 9 && strncasecmp(host, "localhost", 9) == 0)) {
        host = "127.0.0.1";
        len = 9;
    }
    if (len > SBX_NET_HOST_MAX) {
        return sbx_err_param(err, "host", "host is longer than %u bytes", SBX_NET_HOST_MAX);
    }
    memcpy(h, host, len);
    h[len] = '\0';
    if (inet_pton(AF_INET, h, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        (void)snprintf(where, wsz, "%s:%u", h, port);
        return 0;
    }
    zone = strchr(h, '%');
    if (zone != NULL) {
        *zone++ = '\0';
    }
    if (inet_pton(AF_INET6, h, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        if (zone != NULL && (s6->sin6_scope_id = net_zone(zone)) == 0) {
            return sbx_err_param(err, "host", "host \"%s%%%s\": no such interface", h, zone);
        }
        (void)snprintf(where, wsz, "[%s%s%s]:%u", h, zone != NULL ? "%" : "",
                       zone != NULL ? zone : "", port);
        return 0;
    }
    if (zone != NULL) {
        zone[-1] = '%';
    }
    return sbx_err_param(err, "host",
                         "host \"%s\" is not an IPv4 or IPv6 address or \"localhost\" (names are "
                         "not resolved)",
                         h);
}

static void net_close_cb(uv_handle_t *h)
{
    struct net_sock *n = h->data;

    if (--n->closes == 0) {
        agent_tail_free(&n->tail);
        free(n);
    }
}

/*
 * Close @n's socket and timer (idempotent); it is freed once both closed. Its streams are finished
 * already. libuv completes what is still in flight (the connect, writes, the shutdown) with
 * UV_ECANCELED before the close callbacks, and those callbacks see NET_CLOSING and touch nothing
 * but their own request.
 */
static void net_close(struct net_sock *n)
{
    if (n->state == NET_CLOSING) {
        return;
    }
    n->state = NET_CLOSING;
    n->reading = false;
    agent_list_del(&n->starve_link);
    agent_conn_ref_del(&n->ref);
    uv_close((uv_handle_t *)&n->tcp, net_close_cb);
    uv_close((uv_handle_t *)&n->timer, net_close_cb);
}

static void net_timer_cb(uv_timer_t *t);

/* Both streams finished and the last bytes written: the socket has no more use. Still writing
 * them: it lingers, closed once no write completed for AGENT_NET_LINGER_MS (net_write_cb
 * restarts the count). */
static void net_check_done(struct net_sock *n)
{
    if (n->state != NET_OPEN || n->in != NULL || n->out != NULL) {
        return;
    }
    if (!n->shutting) {
        net_close(n);
        return;
    }
    if (!n->lingering) {
        n->lingering = true;
        uv_timer_start(&n->timer, net_timer_cb, AGENT_NET_LINGER_MS, 0);
    }
}

/* Shut the write side now: bytes not yet handed to the kernel are dropped (their writes fail). */
static void net_shut_now(struct net_sock *n)
{
    uv_os_fd_t fd;

    if (n->wr_shut || n->state != NET_OPEN) {
        return;
    }
    n->wr_shut = true;
    if (uv_fileno((uv_handle_t *)&n->tcp, &fd) == 0) {
        (void)shutdown(fd, SHUT_WR); /* ENOTCONN after a reset: nothing left to shut */
    }
}

static void net_shutdown_cb(uv_shutdown_t *req, int status)
{
    struct net_sock *n = agent_container_of(req, struct net_sock, sreq);

    (void)status; /* a failure (the peer reset) is the read side's to report */
    n->shutting = false;
    net_check_done(n);
}

/* Cancel `in` with @e (the bytes can no longer reach the peer) and shut the write side. */
static void net_in_fail(struct net_sock *n, const struct sbx_err *e)
{
    struct agent_stream *s = n->in;

    if (s != NULL) {
        n->in = NULL;
        agent_stream_cancel(s, e);
    }
    net_shut_now(n);
    net_check_done(n);
}

static int net_flush_tail(struct net_sock *n);

static void net_write_cb(uv_write_t *req, int status)
{
    struct net_write *w = agent_container_of(req, struct net_write, req);
    struct net_sock *n = w->n;
    uint32_t len = w->len;
    struct sbx_err err;

    if (w->slab != NULL) {
        agent_slab_release(n->a, w->slab);
    }
    free(w->copy);
    free(w);
    n->writes--;
    if (n->state != NET_OPEN) {
        return; /* closing: UV_ECANCELED */
    }
    if (n->lingering && status == 0) {
        uv_timer_start(&n->timer, net_timer_cb, AGENT_NET_LINGER_MS, 0); /* the peer reads */
    }
    if (status < 0) {
        /* The write side is dead: the shutdown queued behind this write (stream.end on `in`)
         * is not waited for; libuv fails it later, or cancels it at the close. */
        n->shutting = false;
        sbx_err_sys(&err, -status, NULL, "write to %s", n->where);
        net_in_fail(n, &err);
        return;
    }
    /* What gathered behind the writes goes out once they are done (before the FIN of a
     * stream.end, which flushed it already). */
    if (n->writes == 0 && n->tail.len > 0 && net_flush_tail(n) < 0) {
        return;
    }
    if (n->in == NULL) {
        return; /* `in` finished: nobody to grant credit to */
    }
    /* At once when nothing else is in flight, so a client waiting for credit never stalls. */
    agent_stream_consumed(n->in, len,
                          uv_stream_get_write_queue_size((uv_stream_t *)&n->tcp) == 0 &&
                              n->tail.len == 0);
}

/* Write @len bytes at @data (held in @slab, or copied into @copy, taken over) to the socket;
 * credit for @credit bytes once done. -1 on failure (`in` failed, all freed). */
static int net_write(struct net_sock *n, const uint8_t *data, uint32_t len, struct agent_slab *slab,
                     void *copy, uint32_t credit)
{
    struct net_write *w = calloc(1, sizeof(*w));
    struct sbx_err err;
    uv_buf_t buf;
    int r;

    if (w == NULL) {
        if (slab != NULL) {
            agent_slab_release(n->a, slab);
        }
        free(copy);
        sbx_err_oom(&err);
        net_in_fail(n, &err);
        return -1;
    }
    w->n = n;
    w->slab = slab;
    w->copy = copy;
    w->len = credit;
    buf = uv_buf_init((char *)data, len);
    r = uv_write(&w->req, (uv_stream_t *)&n->tcp, &buf, 1, net_write_cb);
    if (r < 0) {
        if (w->slab != NULL) {
            agent_slab_release(n->a, w->slab);
        }
        free(w->copy);
        free(w);
        sbx_err_sys(&err, -r, NULL, "write to %s", n->where);
        net_in_fail(n, &err);
        return -1;
    }
    n->writes++;
    return 0;
}

/* Write what the tail gathered, if anything: 0, or -1 (`in` failed). */
static int net_flush_tail(struct net_sock *n)
{
    uint32_t len;
    uint8_t *b;

    if (n->tail.len == 0) {
        return 0;
    }
    b = agent_tail_take(&n->tail, &len);
    return net_write(n, b, len, NULL, b, len);
}

/* `in`: @len bytes from the client, within credit: on to the socket. */
static void net_in_data(struct agent_stream *s, const uint8_t *data, uint32_t len)
{
    struct net_sock *n = s->owner;
    struct agent_slab *slab;
    struct sbx_err err;
    uint32_t done = 0;
    uv_buf_t buf;
    void *copy = NULL;
    int r;

    if (n == NULL || n->wr_shut) {
        return;
    }
    /* First straight to the socket when nothing is queued before it: most writes (a forwarded
     * request) complete here, without a write request whose completion costs the loop an extra
     * epoll_ctl. What the socket did not take is written the usual way. */
    if (n->tail.len == 0 && uv_stream_get_write_queue_size((uv_stream_t *)&n->tcp) == 0) {
        buf = uv_buf_init((char *)data, len);
        r = uv_try_write((uv_stream_t *)&n->tcp, &buf, 1);
        if (r < 0 && r != UV_EAGAIN) {
            sbx_err_sys(&err, -r, NULL, "write to %s", n->where);
            net_in_fail(n, &err);
            return;
        }
        if (r == (int)len) {
            agent_stream_consumed(s, len, true);
            return;
        }
        done = r > 0 ? (uint32_t)r : 0;
    }
    /* Large payloads are written from the buffer the connection read them into (held); small
     * ones are gathered behind the writes in flight, or copied. All bounded by the credit
     * granted, as for a process's stdin. */
    if (done == 0 && n->writes > 0 && len < AGENT_HOLD_MIN) {
        if (agent_tail_add(&n->tail, data, len) < 0) {
            sbx_err_oom(&err);
            net_in_fail(n, &err);
        }
        return;
    }
    if (net_flush_tail(n) < 0) {
        return;
    }
    slab = agent_conn_hold(s->conn, data + done, len - done);
    if (slab == NULL && (copy = malloc(len - done)) != NULL) {
        memcpy(copy, data + done, len - done);
    }
    if (slab == NULL && copy == NULL) {
        sbx_err_oom(&err);
        net_in_fail(n, &err);
        return;
    }
    /* credit for all of it once the rest is written */
    (void)net_write(n, copy != NULL ? copy : data + done, len - done, slab, copy, len);
}

/* `in` ended by the client: FIN once the bytes before it are written (an error in the end changes
 * nothing: the client sends no more either way, §8.4). */
static void net_in_end(struct agent_stream *s, const struct sbx_err *e)
{
    struct net_sock *n = s->owner;

    (void)e;
    if (n == NULL) {
        return;
    }
    n->in = NULL;
    if (!n->wr_shut && net_flush_tail(n) < 0) {
        return; /* failed: shut already */
    }
    if (!n->wr_shut) {
        n->wr_shut = true;
        /* uv_shutdown waits for the writes queued before it. */
        if (uv_shutdown(&n->sreq, (uv_stream_t *)&n->tcp, net_shutdown_cb) == 0) {
            n->shutting = true;
        }
    }
    net_check_done(n);
}

/* `in` cancelled by the client (or for misuse), or its connection is closing. */
static void net_in_gone(struct agent_stream *s, bool cancelled)
{
    struct net_sock *n = s->owner;

    if (n == NULL) {
        return;
    }
    n->in = NULL;
    if (!cancelled) {
        return; /* the connection is closing: its ref closes the socket */
    }
    agent_tail_free(&n->tail);
    net_shut_now(n); /* pending bytes are discarded (§20.1) */
    net_check_done(n);
}

static const struct agent_stream_ops net_in_ops = {
    .data = net_in_data,
    .end = net_in_end,
    .gone = net_in_gone,
};

/* `out`: credit arrived or the connection drained. */
static void net_out_ready(struct agent_stream *s)
{
    if (s->owner != NULL) {
        net_update(s->owner);
    }
}

/* `out` cancelled by the client: the socket is still read, into the void, so the peer never
 * blocks on it (§20.1). Or the connection is closing. */
static void net_out_gone(struct agent_stream *s, bool cancelled)
{
    struct net_sock *n = s->owner;

    if (n == NULL) {
        return;
    }
    n->out = NULL;
    if (!cancelled) {
        return;
    }
    net_update(n);
    net_check_done(n);
}

static const struct agent_stream_ops net_out_ops = {
    .ready = net_out_ready,
    .gone = net_out_gone,
};

/* May the socket be read now? Without `out` (cancelled) it is read and discarded. */
static bool net_may_read(struct net_sock *n)
{
    if (n->state != NET_OPEN || n->read_done || n->starved) {
        return false;
    }
    if (n->out == NULL) {
        return true;
    }
    if (agent_stream_writable(n->out) == 0) {
        return false; /* no credit, or the connection is backed up: ready() restarts it */
    }
    if (n->a->bufs_used >= SBX_AGENT_BUFS_MAX) {
        /* Told when buffers come back (agent_net_resume), as the output pipes are: no polling. */
        n->starved = true;
        n->a->bufs_starved = true;
        if (agent_list_empty(&n->starve_link)) {
            agent_list_add_tail(&n->a->net_starved, &n->starve_link);
        }
        return false;
    }
    return true;
}

void agent_net_resume(struct agent *a)
{
    while (!agent_list_empty(&a->net_starved)) {
        struct net_sock *n = agent_container_of(a->net_starved.next, struct net_sock, starve_link);

        agent_list_del(&n->starve_link);
        n->starved = false;
        net_update(n);
        if (a->bufs_starved) {
            break; /* the cap is hit again: the rest wait for the next resume */
        }
    }
}

static void net_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct net_sock *n = h->data;
    uint32_t want = SBX_STREAM_CHUNK_MAX;

    (void)suggested;
    /* A zero-length buffer makes libuv report UV_ENOBUFS instead of reading; read_cb stops. */
    buf->base = NULL;
    buf->len = 0;
    if (!net_may_read(n)) {
        return;
    }
    if (n->out != NULL && agent_stream_writable(n->out) < want) {
        want = agent_stream_writable(n->out);
    }
    buf->base = agent_buf_get(n->a);
    if (buf->base == NULL) {
        n->starved = true;
        return;
    }
    buf->len = want;
}

/* The read side ended: @e 0 for the peer's end of file (`in` may go on: a half-close), else the
 * socket failed and both streams end with it. */
static void net_read_end(struct net_sock *n, int e)
{
    struct agent_stream *s;
    struct sbx_err err;

    n->read_done = true;
    if (n->reading) {
        (void)uv_read_stop((uv_stream_t *)&n->tcp);
        n->reading = false;
    }
    if (e == 0) {
        if ((s = n->out) != NULL) {
            n->out = NULL;
            agent_stream_end(s, NULL, false);
        }
        net_check_done(n);
        return;
    }
    sbx_err_sys(&err, e, NULL, "read from %s", n->where);
    if ((s = n->out) != NULL) {
        n->out = NULL;
        agent_stream_end(s, &err, false);
    }
    if ((s = n->in) != NULL) {
        n->in = NULL;
        agent_stream_cancel(s, &err);
    }
    net_close(n);
}

static void net_read_cb(uv_stream_t *h, ssize_t nread, const uv_buf_t *buf)
{
    struct net_sock *n = h->data;

    if (nread > 0) {
        if (n->out != NULL) {
            agent_stream_send(n->out, buf->base, (uint32_t)nread);
        } else {
            agent_buf_put(n->a, buf->base);
        }
        net_update(n);
        return;
    }
    if (buf->base != NULL) {
        agent_buf_put(n->a, buf->base);
    }
    if (nread == 0) {
        return;
    }
    if (nread == UV_ENOBUFS) {
        (void)uv_read_stop(h);
        n->reading = false;
        net_update(n);
        return;
    }
    net_read_end(n, nread == UV_EOF ? 0 : (int)-nread);
}

/* Start or stop reading as net_may_read says; a socket short of buffers retries on its timer. */
static void net_update(struct net_sock *n)
{
    bool want;

    if (n->state != NET_OPEN || n->read_done) {
        return;
    }
    want = net_may_read(n);
    if (want && !n->reading) {
        /* Fails only for a handle that cannot read (closing, or after end of file). */
        n->reading = uv_read_start((uv_stream_t *)&n->tcp, net_alloc_cb, net_read_cb) == 0;
    } else if (!want && n->reading) {
        (void)uv_read_stop((uv_stream_t *)&n->tcp);
        n->reading = false;
    }
    if (n->starved && agent_list_empty(&n->starve_link) && !n->lingering &&
        !uv_is_active((uv_handle_t *)&n->timer)) {
        uv_timer_start(&n->timer, net_timer_cb, AGENT_NET_RETRY_MS, 0);
    }
}

static void net_timer_cb(uv_timer_t *t)
{
    struct net_sock *n = t->data;
    struct sbx_err err;

    if (n->state == NET_CONNECTING) {
        sbx_err_sys(&err, ETIMEDOUT, NULL, "connect to %s: no answer within %u ms", n->where,
                    n->timeout_ms);
        agent_conn_reply_error(n->ref.conn, n->req, &err);
        net_close(n); /* the connect completes with UV_ECANCELED */
        return;
    }
    if (n->lingering) {
        net_close(n); /* the peer took nothing for AGENT_NET_LINGER_MS: the rest is dropped */
        return;
    }
    n->starved = false;
    net_update(n);
}

static void net_connect_cb(uv_connect_t *req, int status)
{
    struct net_sock *n = agent_container_of(req, struct net_sock, creq);
    struct agent_conn *c = n->ref.conn;
    struct sbx_err err;

    if (n->state != NET_CONNECTING) {
        return; /* timed out or the connection went: closing already */
    }
    (void)uv_timer_stop(&n->timer);
    if (status < 0) {
        sbx_err_sys(&err, -status, NULL, "connect to %s", n->where);
        agent_conn_reply_error(c, n->req, &err);
        net_close(n);
        return;
    }
    /* The slots were free when the request came; a request since (proc.spawn) may have taken
     * them. */
    if (agent_stream_reserve(c, 2, &err) < 0 ||
        (n->in = agent_stream_new_ops(c, AGENT_STREAM_IN, &net_in_ops, n, &err)) == NULL ||
        (n->out = agent_stream_new_ops(c, AGENT_STREAM_OUT, &net_out_ops, n, &err)) == NULL) {
        if (n->in != NULL) {
            agent_stream_free(n->in); /* never announced: nothing to tell the client */
            n->in = NULL;
        }
        agent_conn_reply_error(c, n->req, &err);
        net_close(n);
        return;
    }
    n->state = NET_OPEN;
    (void)uv_tcp_nodelay(&n->tcp, 1); /* forwarded keystrokes go out at once */
    {
        struct sbx_net_connect_result res = { .in = n->in->id, .out = n->out->id };
        msgpack_packer *pk = agent_conn_begin(c);
        sbx_pack_response_head(pk, n->req);
        sbx_net_connect_result_pack(pk, &res);
        agent_conn_send(c);
    }
    net_update(n); /* the answer went first: data on `out` never precedes it (§9.1) */
}

/* The connection closed: its streams went first (their gone() ran), now the socket goes. */
static void net_conn_gone(struct agent_conn_ref *r)
{
    struct net_sock *n = agent_container_of(r, struct net_sock, ref);

    n->in = n->out = NULL;
    net_close(n);
}

int agent_net_connect(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct sbx_net_connect_params p;
    struct sockaddr_storage sa;
    char where[sizeof(((struct net_sock *)NULL)->where)];
    struct net_sock *n;
    uint64_t t;
    int r;

    /* The reader takes timeout_ms 0 for "absent"; §23 makes 0 a bad value, not "no timeout". */
    if (sbx_net_connect_params_read(m->params, &p, err) < 0 ||
        sbx_param_u64(m->params, "timeout_ms", SBX_OPTIONAL, 1, UINT32_MAX, &t, err) < 0 ||
        net_addr(p.host, p.host_len, p.port, &sa, where, sizeof(where), err) < 0 ||
        net_reserve(c, err) < 0) {
        return -1;
    }
    n = calloc(1, sizeof(*n));
    if (n == NULL) {
        return sbx_err_oom(err);
    }
    n->a = c->a;
    n->req = m->id;
    n->timeout_ms = p.timeout_ms != 0 ? p.timeout_ms : SBX_NET_CONNECT_TIMEOUT_MS;
    memcpy(n->where, where, sizeof(where));
    /* Neither can fail: uv_tcp_init makes no socket yet (uv_tcp_connect does, of the family). */
    (void)uv_tcp_init(c->a->loop, &n->tcp);
    (void)uv_timer_init(c->a->loop, &n->timer);
    n->tcp.data = n->timer.data = n;
    agent_list_init(&n->starve_link);
    n->closes = 2;
    r = uv_tcp_connect(&n->creq, &n->tcp, (const struct sockaddr *)&sa, net_connect_cb);
    if (r < 0) {
        /* At once: EMFILE, ENETUNREACH (no route), EADDRNOTAVAIL, ... */
        sbx_err_sys(err, -r, NULL, "connect to %s", n->where);
        net_close(n);
        return -1;
    }
    uv_timer_start(&n->timer, net_timer_cb, n->timeout_ms, 0);
    agent_conn_ref_add(c, &n->ref, net_conn_gone);
    return AGENT_LATER;
}

/* --- net.listening -------------------------------------------------------------------------- */

enum net_listing_state { NET_LIST_QUEUED, NET_LIST_RUNNING };

struct net_listing {
    struct agent_conn_ref ref; /* NULL conn once the connection is gone */
    struct agent *a;
    enum net_listing_state state;
    uv_work_t work;
    uint32_t req;
    struct agent_net_list list; /* filled by the worker */
    int err;                    /* errno when no table could be read */
};

static void net_listing_gone(struct agent_conn_ref *r);

static void net_listing_free(struct net_listing *l)
{
    agent_conn_ref_del(&l->ref);
    free(l->list.e);
    free(l);
}

/* On a threadpool worker: read the tables, then look for the processes holding the sockets
 * (reading every process's fds can take a while with many processes: never on the loop). */
static void net_listing_work(uv_work_t *req)
{
    struct net_listing *l = agent_container_of(req, struct net_listing, work);
    unsigned opened = 0;
    int first_err = 0;

    for (unsigned i = 0; i < AGENT_NET_TABLES && !l->list.truncated; i++) {
        FILE *f = fopen(agent_net_tables[i].path, "re");
        if (f == NULL) {
            first_err = first_err != 0 ? first_err : errno; /* no IPv6: no tcp6 */
            continue;
        }
        opened++;
        agent_net_read_table(&l->list, i, f);
        (void)fclose(f); /* read-only */
    }
    if (opened == 0) {
        l->err = first_err != 0 ? first_err : ENOENT;
        return;
    }
    agent_net_find_pids(&l->list, "/proc", AGENT_NET_SCAN_FDS_MAX, AGENT_NET_SCAN_MS);
}

static void net_listing_after(uv_work_t *req, int status);

static void net_listing_start(struct net_listing *l)
{
    l->state = NET_LIST_RUNNING;
    /* Cannot fail for a valid loop and callbacks. */
    (void)uv_queue_work(l->a->loop, &l->work, net_listing_work, net_listing_after);
}

/* The listing of @c that is waiting its turn, oldest first, or NULL. */
static struct net_listing *net_listing_next(struct agent_conn *c)
{
    struct agent_link *lk;

    for (lk = c->refs.next; lk != &c->refs; lk = lk->next) {
        struct agent_conn_ref *r = agent_container_of(lk, struct agent_conn_ref, link);
        if (r->gone == net_listing_gone) {
            struct net_listing *l = agent_container_of(r, struct net_listing, ref);
            if (l->state == NET_LIST_QUEUED) {
                return l;
            }
        }
    }
    return NULL;
}

static void net_listing_reply(struct agent_conn *c, struct net_listing *l)
{
    msgpack_packer *pk;
    struct sbx_err err;

    if (l->err != 0) {
        sbx_err_sys(&err, l->err, NULL, "read %s", agent_net_tables[0].path);
        agent_conn_reply_error(c, l->req, &err);
        return;
    }
    pk = agent_conn_begin(c);
    sbx_pack_response_head(pk, l->req);
    (void)msgpack_pack_map(pk, 2);
    sbx_pack_cstr(pk, "sockets");
    (void)msgpack_pack_array(pk, l->list.n);
    for (unsigned i = 0; i < l->list.n; i++) {
        const struct agent_net_sock *e = &l->list.e[i];
        struct sbx_listening s = {
            .proto = agent_net_tables[e->table].proto,
            .addr = e->addr,
            .port = e->port,
            .has_pid = e->pid != 0,
            .pid = e->pid,
        };
        sbx_listening_pack(pk, &s);
    }
    sbx_pack_kv_bool(pk, "truncated", l->list.truncated);
    agent_conn_send(c);
}

static void net_listing_after(uv_work_t *req, int status)
{
    struct net_listing *l = agent_container_of(req, struct net_listing, work);
    struct agent_conn *c = l->ref.conn;
    struct net_listing *next;

    (void)status; /* never cancelled */
    if (c == NULL) {
        net_listing_free(l); /* the connection went meanwhile; its queued ones went with it */
        return;
    }
    net_listing_reply(c, l);
    net_listing_free(l);
    next = net_listing_next(c);
    if (next != NULL) {
        net_listing_start(next);
    }
}

static void net_listing_gone(struct agent_conn_ref *r)
{
    struct net_listing *l = agent_container_of(r, struct net_listing, ref);

    if (l->state == NET_LIST_QUEUED) {
        net_listing_free(l);
    }
    /* Running: the worker's result is dropped when it returns (ref.conn is NULL now). */
}

int agent_net_listening(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct net_listing *l = calloc(1, sizeof(*l));
    bool busy = false;

    if (l == NULL) {
        return sbx_err_oom(err);
    }
    l->a = c->a;
    l->req = m->id;
    l->state = NET_LIST_QUEUED;
    l->list.max = AGENT_NET_LISTENING_MAX;
    /* One scan per connection at a time: a burst of requests cannot occupy the threadpool
     * (uploads and downloads run there). The others wait their turn, each answered by a scan
     * that starts after it arrived. */
    for (struct agent_link *lk = c->refs.next; lk != &c->refs; lk = lk->next) {
        struct agent_conn_ref *r = agent_container_of(lk, struct agent_conn_ref, link);
        busy |= r->gone == net_listing_gone;
    }
    agent_conn_ref_add(c, &l->ref, net_listing_gone);
    if (!busy) {
        net_listing_start(l);
    }
    return AGENT_LATER;
}
