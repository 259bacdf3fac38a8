/*
 * The blocking API (sbx/client.h) on top of the sans-I/O connection core (sbx/conn.h).
 *
 * The core holds all protocol state: request ids, hello (version, capabilities, limits), the
 * stream table, credit in both directions and the bytes queued on `in` streams. This layer owns
 * what the core leaves to a host: the fd, poll with deadlines, reading into the core
 * (sbx_conn_feed_space / _commit), writing what sbx_conn_out_iov hands out, and the FIFO of
 * messages that arrived while the caller waited for something else (kept as raw frame payloads,
 * decoded into struct sbx_msg views when handed out).
 *
 * The current message (the last one handed out) lies in the core's input buffer or in a FIFO
 * entry. Calls that only write (send, grant, consumed, stream_end, stream_abort, stream_cancel)
 * must leave it valid, so while a write waits for room they read ahead into a buffer of their
 * own, which is fed to the core by the next call that reads.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "sbx/conn.h"

#define IOV_PIECES  16
#define AHEAD_CHUNK (64u << 10) /* read() size while a write waits for room */
/* Bytes of one stream_write handed to the core at a time: what it frames at once at most. */
#define WRITE_PIECE SBX_CONN_OUT_DATA_MAX

/* A message kept for sbx_client_recv: its frame payload. */
struct qmsg {
    struct qmsg *next;
    bool response; /* with id: so wait finds a response without decoding */
    uint32_t id;
    uint32_t len;
    uint8_t data[];
};

enum { B_NONE, B_REQUEST, B_NOTIFY, B_FAILED }; /* what sbx_client_send finishes */

struct sbx_client {
    int fd;
    bool is_sock; /* sendmsg(MSG_NOSIGNAL) works */
    char *addr;
    int timeout_ms; /* connect timeout, reused for hello */
    struct sbx_conn *conn;
    bool broken; /* fatal: every call returns @fatal */
    struct sbx_err fatal;
    struct sbx_err peer_err; /* the agent's last `error` notification, shown when it closes */

    /* Input. */
    uint8_t *ahead; /* read while a write waited for room; not yet fed to the core */
    size_t apos, alen, acap;
    bool rd_eof, rd_reset; /* read() saw the end (or ECONNRESET); bytes before it may be ahead */
    bool eof_told;         /* sbx_conn_eof was called */
    bool drained;          /* sbx_conn_next returned 0 since the last feed */
    bool short_read;       /* the last read of the socket took less than there was room for */

    /* The current message and the FIFO. */
    bool dec_ok;
    struct sbx_decoder dec;
    struct qmsg *cur; /* the FIFO entry the current message lives in, if any */
    const uint8_t *mbuf;
    uint32_t mlen;
    struct qmsg *qhead, *qtail;
    size_t qbytes;

    /* Between begin and send. */
    int building;
    struct sbx_err begin_err; /* B_FAILED: why the core refused the request */
    msgpack_packer sink;      /* ... and where the caller's params go meanwhile */
    struct sbx_out note;      /* B_NOTIFY: the notification (the core builds requests only) */

    /* The hello request sent (0: none outstanding) and its response, kept for
     * sbx_client_hello_result. */
    uint32_t hello_id;
    uint8_t *hello_buf;
    bool hello_dec_ok;
    struct sbx_decoder hello_dec;
    struct sbx_msg hello_msg;

    /* Keepalive (sbx_client_set_keepalive): the interval (0: off), when a byte of the agent's
     * was last read, the ping outstanding (0: none) and when it went (or was refused here). */
    int64_t ka_ms;
    int64_t rx_ms;
    uint32_t ka_id;
    int64_t ka_sent_ms;

    uint32_t recv_window; /* hello's recv_window (sbx_client_set_recv_window; 0: none) */
};

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

static int discard(void *data, const char *buf, size_t len)
{
    (void)data;
    (void)buf;
    (void)len;
    return 0;
}

/* @ours: @fd is a socket sbx__connect made, non-blocking and close-on-exec already. */
static struct sbx_client *client_new(int fd, bool ours, const char *name, int timeout_ms,
                                     struct sbx_err *err)
{
    struct sbx_client *c = calloc(1, sizeof(*c));
    struct stat st;
    int fl;

    if (c == NULL) {
        (void)close(fd);
        (void)sbx_err_set(err, SBX_E_INTERNAL, "out of memory");
        return NULL;
    }
    c->fd = fd;
    c->timeout_ms = timeout_ms;
    c->drained = true;
    c->rx_ms = sbx__now_ms();
    sbx_out_init(&c->note);
    msgpack_packer_init(&c->sink, NULL, discard);
    c->is_sock = ours || (fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode));
    if ((c->addr = strdup(name)) == NULL || (c->conn = sbx_conn_new(err)) == NULL ||
        !(c->dec_ok = sbx_decoder_init(&c->dec) == 0)) {
        (void)sbx_err_set(err, SBX_E_INTERNAL, "out of memory");
        sbx_client_close(c);
        return NULL;
    }
    if (ours) {
        return c;
    }
    fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
        (void)sbx_err_sys(err, errno, NULL, "%s: fcntl", name);
        sbx_client_close(c);
        return NULL;
    }
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
    return client_new(fd, true, addr, timeout_ms, err);
}

struct sbx_client *sbx_client_from_fd(int fd, const char *name, struct sbx_err *err)
{
    return client_new(fd, false, name != NULL ? name : "fd", -1, err);
}

static void release_cur(struct sbx_client *c)
{
    free(c->cur);
    c->cur = NULL;
    c->mbuf = NULL;
    c->mlen = 0;
}

void sbx_client_close(struct sbx_client *c)
{
    struct qmsg *q;

    if (c == NULL) {
        return;
    }
    if (c->fd >= 0) {
        (void)close(c->fd); /* nothing useful to do about a close error here */
    }
    while ((q = c->qhead) != NULL) {
        c->qhead = q->next;
        free(q);
    }
    release_cur(c);
    free(c->ahead);
    sbx_conn_free(c->conn);
    if (c->dec_ok) {
        sbx_decoder_destroy(&c->dec);
    }
    sbx_out_destroy(&c->note);
    if (c->hello_dec_ok) {
        sbx_decoder_destroy(&c->hello_dec);
    }
    free(c->hello_buf);
    free(c->addr);
    free(c);
}

/* --- session state (the core's) ------------------------------------------------------------ */

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
    const struct sbx_peer *p = sbx_conn_peer(c->conn);

    return p != NULL ? p->version : 0;
}

bool sbx_client_has_cap(const struct sbx_client *c, const char *cap)
{
    return sbx_conn_has_cap(c->conn, cap);
}

uint32_t sbx_client_window(const struct sbx_client *c)
{
    const struct sbx_peer *p = sbx_conn_peer(c->conn);

    return p != NULL ? (uint32_t)p->limits.stream_window : SBX_STREAM_WINDOW;
}

uint32_t sbx_client_chunk_max(const struct sbx_client *c)
{
    const struct sbx_peer *p = sbx_conn_peer(c->conn);

    /* The core's hello reader refuses a chunk_max above SBX_STREAM_CHUNK_MAX. */
    return p != NULL ? (uint32_t)p->limits.chunk_max : SBX_STREAM_CHUNK_MAX;
}

const msgpack_object *sbx_client_hello_result(const struct sbx_client *c)
{
    return c->hello_buf != NULL ? c->hello_msg.result : NULL;
}

bool sbx_client_pending(const struct sbx_client *c)
{
    return c->qhead != NULL || !c->drained || c->apos < c->alen;
}

uint64_t sbx_client_credit(const struct sbx_client *c, uint32_t stream)
{
    return sbx_conn_credit(c->conn, stream);
}

bool sbx_client_stream_cancelled(const struct sbx_client *c, uint32_t stream)
{
    return !sbx_conn_stream_live(c->conn, stream);
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

/* The agent closed the connection (EOF, or a reset because it closed with our bytes unread).
 * Its last `error` notification, if any, says why. */
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

/* sbx_conn_next returned -1: the end of the transport, or a fatal protocol error. The core
 * queued an `error` notification for the agent in the latter case: one try to send it. */
static int core_failed(struct sbx_client *c, struct sbx_err *err)
{
    struct iovec iov[IOV_PIECES];
    int n;

    if (c->eof_told && strcmp(err->code, SBX_E_EOF) == 0) {
        return closed_error(c, c->rd_reset ? "ECONNRESET" : "EOF", err);
    }
    n = sbx_conn_out_iov(c->conn, iov, IOV_PIECES);
    if (n > 0 && c->is_sock) {
        struct msghdr mh = { .msg_iov = iov, .msg_iovlen = (size_t)n };
        (void)sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    sbx_err_prefix(err, "%s", c->addr);
    return fail(c, err);
}

/* --- transport ------------------------------------------------------------------------------ */

/* One read(). Returns the bytes read, 0 for none yet (EAGAIN) or the end (c->rd_eof), -1. */
static ssize_t read_fd(struct sbx_client *c, void *p, size_t len, struct sbx_err *err)
{
    ssize_t n;

    do {
        n = read(c->fd, p, len);
    } while (n < 0 && errno == EINTR);
    if (n > 0) {
        c->rx_ms = sbx__now_ms();
        return n;
    }
    if (n == 0 || errno == ECONNRESET) {
        c->rd_eof = true;
        c->rd_reset = n < 0;
        return 0;
    }
    if (errno == EAGAIN) {
        return 0;
    }
    (void)sbx_err_sys(err, errno, NULL, "read from %s", c->addr);
    return fail(c, err);
}

/* One read() into c->ahead (not into the core: the current message lives there). */
static int read_ahead(struct sbx_client *c, struct sbx_err *err)
{
    ssize_t n;

    if (c->apos > 0) {
        memmove(c->ahead, c->ahead + c->apos, c->alen - c->apos);
        c->alen -= c->apos;
        c->apos = 0;
    }
    if (c->acap - c->alen < AHEAD_CHUNK) {
        size_t cap = c->acap != 0 ? 2 * c->acap : 4 * AHEAD_CHUNK;
        uint8_t *p = realloc(c->ahead, cap);
        if (p == NULL) {
            (void)sbx_err_set(err, SBX_E_INTERNAL, "out of memory reading from %s", c->addr);
            return fail(c, err);
        }
        c->ahead = p;
        c->acap = cap;
    }
    n = read_fd(c, c->ahead + c->alen, c->acap - c->alen, err);
    if (n < 0) {
        return -1;
    }
    c->alen += (size_t)n;
    return 0;
}

/* --- keepalive ------------------------------------------------------------------------------ */

static int flush(struct sbx_client *c, struct sbx_err *err);

void sbx_client_set_keepalive(struct sbx_client *c, int interval_ms)
{
    c->ka_ms = interval_ms > 0 ? interval_ms : 0;
}

/*
 * The keepalive's verdicts are made only after a read found the socket empty (or a poll timed
 * out on it), and its clocks start only while this library waits: a caller away from it for a
 * while (a user thinking at a prompt, a slow reader of our output, a stopped process) then
 * finds an agent that said nothing meanwhile asked with a ping, never taken for dead at once.
 *
 * A wait that may send (@since < 0) pings after an interval of silence, and gives up when
 * nothing at all came within 2 intervals of that ping. A wait that may not (a write under way,
 * or a request being built: @since is when it began) gives up when the agent took none of our
 * bytes and sent none for 3 intervals of it, unless a ping is out already.
 */

/* When the keepalive next has something to do, on sbx__now_ms's clock (INT64_MAX: never). */
static int64_t keepalive_due(const struct sbx_client *c, int64_t since)
{
    int64_t last = c->rx_ms > c->ka_sent_ms ? c->rx_ms : c->ka_sent_ms;

    if (c->ka_ms == 0 || sbx_conn_peer(c->conn) == NULL || c->rd_eof) {
        return INT64_MAX;
    }
    if (c->ka_id != 0) {
        return last + 2 * c->ka_ms;
    }
    if (since < 0) {
        return last + c->ka_ms;
    }
    return (c->rx_ms > since ? c->rx_ms : since) + 3 * c->ka_ms;
}

/* Milliseconds from now until keepalive_due, capped at @timeout_ms (-1: none). */
static int keepalive_poll_ms(const struct sbx_client *c, int timeout_ms, int64_t since)
{
    int64_t due = keepalive_due(c, since);
    int left;

    if (due == INT64_MAX) {
        return timeout_ms;
    }
    left = sbx__remaining(due);
    return timeout_ms >= 0 && timeout_ms <= left ? timeout_ms : left;
}

/* What is due now, the socket having been found empty: a ping, or the end. 0, or -1 with @err
 * (the agent taken for dead: a paused VM, a wedged agent, a link that lost its other end; or the
 * ping could not be written). */
static int keepalive(struct sbx_client *c, int64_t since, struct sbx_err *err)
{
    int64_t now = sbx__now_ms();
    struct sbx_err e;

    if (now < keepalive_due(c, since)) {
        return 0;
    }
    if (c->ka_id != 0) {
        (void)sbx_err_set(err, SBX_E_TIMEOUT,
                          "%s: nothing from the agent within %lld ms of a ping (keepalive "
                          "after %lld ms of silence)",
                          c->addr, (long long)(2 * c->ka_ms), (long long)c->ka_ms);
        return fail(c, err);
    }
    if (since >= 0) {
        (void)sbx_err_set(err, SBX_E_TIMEOUT,
                          "%s: the agent took none of our bytes and sent none for %lld ms "
                          "(keepalive after %lld ms of silence)",
                          c->addr, (long long)(3 * c->ka_ms), (long long)c->ka_ms);
        return fail(c, err);
    }
    c->ka_sent_ms = now;
    if (sbx_ping(c->conn, NULL, &c->ka_id, &e) < 0) {
        c->ka_id = 0; /* refused here (every request id in use, ...): again an interval later */
        return 0;
    }
    return flush(c, err);
}

bool sbx_client_failed(const struct sbx_client *c)
{
    return c->broken;
}

int sbx_client_poll_ms(const struct sbx_client *c, int timeout_ms)
{
    return keepalive_poll_ms(c, timeout_ms, -1);
}

/*
 * Write some of @iov (blocking until at least one byte went, EINTR-safe). While the socket is
 * full, what the agent sends meanwhile is read ahead: if both sides only wrote, both could block
 * forever. Returns the bytes written, or -1.
 */
static ssize_t write_some(struct sbx_client *c, struct iovec *iov, int n, struct sbx_err *err)
{
    int64_t since = sbx__now_ms(); /* no ping from here: the keepalive's clock for this write */

    if (check_broken(c, err) < 0) {
        return -1;
    }
    for (;;) {
        struct pollfd pfd = { .fd = c->fd, .events = POLLOUT };
        ssize_t w;
        int r;

        if (c->is_sock) {
            struct msghdr mh = { .msg_iov = iov, .msg_iovlen = (size_t)n };
            w = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
        } else {
            w = writev(c->fd, iov, n);
        }
        if (w >= 0) {
            return w;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno == EPIPE || errno == ECONNRESET) {
            return closed_error(c, errno == EPIPE ? "EPIPE" : "ECONNRESET", err);
        }
        if (errno != EAGAIN) {
            (void)sbx_err_sys(err, errno, NULL, "write to %s", c->addr);
            return fail(c, err);
        }
        if (!c->rd_eof && c->alen - c->apos < SBX_CLIENT_RBUF_MAX) {
            pfd.events |= POLLIN;
        }
        /* Silence counts only while we read: a full read-ahead buffer is the agent talking. */
        r = poll(&pfd, 1, (pfd.events & POLLIN) != 0 ? keepalive_poll_ms(c, -1, since) : -1);
        if (r == 0 && keepalive(c, since, err) < 0) {
            return -1;
        }
        if (r < 0 && errno != EINTR) {
            (void)sbx_err_sys(err, errno, NULL, "poll %s", c->addr);
            return fail(c, err);
        }
        if (r > 0 && (pfd.revents & POLLIN) != 0 && read_ahead(c, err) < 0) {
            return -1;
        }
    }
}

/* Write all of @iov (@n pieces), whatever it takes (the pieces are adjusted as they go). */
static int write_all(struct sbx_client *c, struct iovec *iov, int n, struct sbx_err *err)
{
    while (n > 0) {
        ssize_t w = write_some(c, iov, n, err);
        if (w < 0) {
            return -1;
        }
        while (n > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

/* Write everything the core has queued for the agent. */
static int flush(struct sbx_client *c, struct sbx_err *err)
{
    while (sbx_conn_out_bytes(c->conn) > 0) {
        struct iovec iov[IOV_PIECES];
        int n = sbx_conn_out_iov(c->conn, iov, IOV_PIECES);
        ssize_t w;

        if (n == 0) {
            break;
        }
        w = write_some(c, iov, n, err);
        if (w < 0) {
            return -1;
        }
        sbx_conn_out_done(c->conn, (size_t)w);
    }
    return check_broken(c, err);
}

/* The result of a call into the core that may have queued output: write it out. */
static int done(struct sbx_client *c, int r, struct sbx_err *err)
{
    return r < 0 ? -1 : flush(c, err);
}

/*
 * The next event from the core, reading from the fd until one comes: 1 with *@ev (valid until
 * the next pull; always made from a frame), 0 when @deadline passed, -1 on a fatal error. The
 * failures the core makes up for outstanding requests and live streams once the transport
 * ended are skipped: the end itself (EOF, naming the agent's last error) is what waiters report.
 */
static int pull(struct sbx_client *c, struct sbx_event *ev, int64_t deadline, struct sbx_err *err)
{
    /* The keepalive may ping from here, unless a request is being built (keepalive_due). */
    int64_t since = c->building == B_NONE ? -1 : sbx__now_ms();

    if (check_broken(c, err) < 0) {
        return -1;
    }
    for (;;) {
        struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
        size_t room, n;
        ssize_t got;
        uint8_t *p;
        bool now;
        int r = sbx_conn_next(c->conn, ev, err);

        if (r > 0 && ev->local) {
            if (strcmp(ev->error->code, SBX_E_EOF) == 0) {
                continue;
            }
            /* A stream the core cancelled for the agent's misuse (§8.6): fatal here, as every
             * other violation of the protocol by the agent is. */
            *err = *ev->error;
            return core_failed(c, err);
        }
        if (r > 0 && ev->kind == SBX_EV_RESPONSE && c->ka_id != 0 && ev->id == c->ka_id) {
            c->ka_id = 0; /* the keepalive's ping answered: nobody else waits for it */
            continue;
        }
        if (r > 0) {
            if (ev->kind == SBX_EV_ERROR) {
                c->peer_err = *ev->error;
            }
            /* What the core queued on its own (an answer to a request from the agent) goes out
             * now; a failure is sticky and reported by the next call. */
            if (sbx_conn_out_bytes(c->conn) > 0 && !c->rd_eof) {
                struct sbx_err e;
                (void)flush(c, &e);
            }
            return 1;
        }
        if (r < 0) {
            return core_failed(c, err);
        }
        c->drained = true;
        if (c->apos == c->alen && !c->rd_eof && flush(c, err) < 0) {
            return -1;
        }
        if (c->apos < c->alen) {
            /* A feed of at most SBX_CONN_FEED_MAX is always taken once next returned 0. */
            n = c->alen - c->apos < SBX_CONN_FEED_MAX ? c->alen - c->apos : SBX_CONN_FEED_MAX;
            if (sbx_conn_feed(c->conn, c->ahead + c->apos, n, err) < 0) {
                return fail(c, err);
            }
            c->apos += n;
            c->drained = false;
            continue;
        }
        if (c->rd_eof) {
            sbx_conn_eof(c->conn);
            c->eof_told = true;
            c->drained = false;
            continue;
        }
        now = sbx__remaining(deadline) == 0;
        if (now && c->short_read) {
            /* The last read took less than there was room for: the socket was empty then. A
             * caller draining with no timeout goes back to its own poll, which wakes for
             * anything new; skip one more system call on the way (once: a caller looping here
             * reads again next time). */
            c->short_read = false;
            return 0;
        }
        if (!now) { /* the fd is non-blocking: with no time to wait, just read */
            r = poll(&pfd, 1, keepalive_poll_ms(c, sbx__remaining(deadline), since));
            if (r < 0 && errno == EINTR) {
                continue;
            }
            if (r < 0) {
                (void)sbx_err_sys(err, errno, NULL, "poll %s", c->addr);
                return fail(c, err);
            }
            if (r == 0) {
                /* Nothing came: the keepalive's time, or the caller's. */
                if (keepalive(c, since, err) < 0) {
                    return -1;
                }
                if (sbx__remaining(deadline) == 0) {
                    return 0;
                }
                continue;
            }
        }
        p = sbx_conn_feed_space(c->conn, &room);
        if (p == NULL) {
            (void)sbx_err_set(err, SBX_E_INTERNAL, "out of memory reading from %s", c->addr);
            return fail(c, err);
        }
        got = read_fd(c, p, room, err);
        if (got < 0) {
            return -1;
        }
        if (got == 0 && now && !c->rd_eof) {
            /* EAGAIN: nothing yet. The socket is empty: its silence is the agent's. */
            return keepalive(c, since, err) < 0 ? -1 : 0;
        }
        sbx_conn_feed_commit(c->conn, (size_t)got);
        c->drained = got == 0;
        c->short_read = got > 0 && (size_t)got < room;
    }
}

/* --- the FIFO ----------------------------------------------------------------------------- */

/* Decode frame @p[0..len) into @m: it becomes the current message. The core checked the frame
 * already: this fails only when out of memory. */
static int decode(struct sbx_client *c, const uint8_t *p, size_t len, struct sbx_msg *m,
                  struct sbx_err *err)
{
    c->mbuf = p;
    c->mlen = (uint32_t)len;
    return sbx_msg_decode(&c->dec, p, len, m, err);
}

/* Keep event @ev for sbx_client_recv: a copy of its frame. */
static int queue(struct sbx_client *c, const struct sbx_event *ev, struct sbx_err *err)
{
    struct qmsg *q;

    if (c->qbytes + ev->frame_len > SBX_CLIENT_FIFO_MAX) {
        (void)sbx_err_set(err, SBX_E_LIMIT,
                          "%s: more than %u bytes of messages queued while waiting (is the "
                          "caller consuming its streams?)",
                          c->addr, SBX_CLIENT_FIFO_MAX);
        return fail(c, err);
    }
    q = malloc(sizeof(*q) + ev->frame_len);
    if (q == NULL) {
        (void)sbx_err_set(err, SBX_E_INTERNAL, "out of memory queueing a message");
        return fail(c, err);
    }
    q->next = NULL;
    /* A response to no outstanding request is handed out, never taken as one: the agent could
     * answer an id the client has not used yet, ahead of it. */
    q->response = ev->kind == SBX_EV_RESPONSE && !ev->unknown;
    q->id = ev->id;
    q->len = (uint32_t)ev->frame_len;
    memcpy(q->data, ev->frame, q->len);
    c->qbytes += q->len;
    *(c->qtail != NULL ? &c->qtail->next : &c->qhead) = q;
    c->qtail = q;
    return 0;
}

/* Unlink @q (after @prev, NULL for the head) and make it the current message, in *@m. */
static int take(struct sbx_client *c, struct qmsg *prev, struct qmsg *q, struct sbx_msg *m,
                struct sbx_err *err)
{
    *(prev != NULL ? &prev->next : &c->qhead) = q->next;
    if (c->qtail == q) {
        c->qtail = prev;
    }
    c->qbytes -= q->len;
    c->cur = q;
    return decode(c, q->data, q->len, m, err);
}

int sbx_client_recv(struct sbx_client *c, struct sbx_msg *m, int timeout_ms, struct sbx_err *err)
{
    struct sbx_event ev;
    int r;

    release_cur(c);
    if (c->qhead != NULL) {
        return take(c, NULL, c->qhead, m, err) < 0 ? -1 : 1;
    }
    r = pull(c, &ev, sbx__deadline(timeout_ms), err);
    if (r <= 0) {
        return r;
    }
    return decode(c, ev.frame, ev.frame_len, m, err) < 0 ? -1 : 1;
}

/* The response just decoded into @resp (@r: how decoding went): 0, or -1 with its error. */
static int response(int r, const struct sbx_msg *resp, struct sbx_err *err)
{
    if (r == 0 && resp->error != NULL) {
        sbx_err_from_obj(resp->error, err);
        return -1;
    }
    return r;
}

int sbx_client_wait(struct sbx_client *c, uint32_t id, struct sbx_msg *resp, int timeout_ms,
                    struct sbx_err *err)
{
    int64_t deadline = sbx__deadline(timeout_ms);
    struct qmsg *q, *prev = NULL;

    release_cur(c);
    /* The response may have been queued while stream_write waited for credit. */
    for (q = c->qhead; q != NULL; prev = q, q = q->next) {
        if (q->response && q->id == id) {
            return response(take(c, prev, q, resp, err), resp, err);
        }
    }
    for (;;) {
        struct sbx_event ev;
        int r = pull(c, &ev, deadline, err);

        if (r < 0) {
            return -1;
        }
        if (r == 0) {
            return sbx_err_set(err, SBX_E_TIMEOUT, "%s: no response to request %u within %d ms",
                               c->addr, id, timeout_ms);
        }
        if (ev.kind == SBX_EV_RESPONSE && ev.id == id) {
            return response(decode(c, ev.frame, ev.frame_len, resp, err), resp, err);
        }
        if (queue(c, &ev, err) < 0) {
            return -1;
        }
    }
}

/* --- requests ----------------------------------------------------------------------------- */

msgpack_packer *sbx_client_begin(struct sbx_client *c, const char *method, uint32_t *id)
{
    msgpack_packer *pk = NULL;
    uint32_t rid = 0;

    if (check_broken(c, &c->begin_err) == 0) {
        pk = sbx_conn_begin(c->conn, method, NULL, &rid, &c->begin_err);
    }
    if (id != NULL) {
        *id = rid;
    }
    /* A local refusal (HELLO_REQUIRED, UNSUPPORTED, LIMIT, ...) is reported by send. */
    c->building = pk != NULL ? B_REQUEST : B_FAILED;
    return pk != NULL ? pk : &c->sink;
}

msgpack_packer *sbx_client_begin_notify(struct sbx_client *c, const char *method)
{
    sbx_out_reset(&c->note);
    sbx_out_begin(&c->note);
    sbx_pack_notify_head(&c->note.pk, method);
    c->building = B_NOTIFY;
    return &c->note.pk;
}

/* Write the notification built in c->note after everything the core queued before it. */
static int send_note(struct sbx_client *c, struct sbx_err *err)
{
    size_t off = 0;
    int rc = 0;

    if (sbx_out_end(&c->note, err) < 0 || flush(c, err) < 0) {
        rc = -1;
    }
    while (rc == 0 && off < c->note.sb.size) {
        struct iovec iov = { c->note.sb.data + off, c->note.sb.size - off };
        ssize_t w = write_some(c, &iov, 1, err);
        if (w < 0) {
            rc = -1;
        } else {
            off += (size_t)w;
        }
    }
    sbx_out_reset(&c->note);
    return rc;
}

int sbx_client_send(struct sbx_client *c, struct sbx_err *err)
{
    int b = c->building;

    c->building = B_NONE;
    switch (b) {
    case B_REQUEST:
        return done(c, sbx_conn_commit(c->conn, err), err);
    case B_NOTIFY:
        return send_note(c, err);
    case B_FAILED:
        *err = c->begin_err;
        return -1;
    default:
        return sbx_err_set(err, SBX_E_INTERNAL, "sbx_client_send without sbx_client_begin");
    }
}

struct sbx_conn *sbx_client_conn(struct sbx_client *c)
{
    return c->conn;
}

int sbx_client_sent(struct sbx_client *c, int r, struct sbx_err *err)
{
    return r < 0 || check_broken(c, err) < 0 ? -1 : flush(c, err);
}

int sbx_client_call(struct sbx_client *c, int r, uint32_t id, struct sbx_msg *resp,
                    struct sbx_err *err)
{
    return sbx_client_sent(c, r, err) < 0 ? -1 : sbx_client_wait(c, id, resp, -1, err);
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
    c->hello_buf = malloc(c->mlen);
    if (c->hello_buf == NULL || !(c->hello_dec_ok = sbx_decoder_init(&c->hello_dec) == 0)) {
        return sbx_err_set(err, SBX_E_INTERNAL, "out of memory");
    }
    memcpy(c->hello_buf, c->mbuf, c->mlen);
    return sbx_msg_decode(&c->hello_dec, c->hello_buf, c->mlen, &c->hello_msg, err);
}

int sbx_client_set_recv_window(struct sbx_client *c, uint32_t bytes, struct sbx_err *err)
{
    if (bytes != 0 && (bytes < SBX_RECV_WINDOW_MIN || bytes > SBX_STREAM_WINDOW)) {
        return sbx_err_param(err, "recv_window", "recv_window is 0 or %u..%u bytes, not %u",
                             SBX_RECV_WINDOW_MIN, SBX_STREAM_WINDOW, bytes);
    }
    if (sbx_client_version(c) != 0 || c->hello_id != 0) {
        return sbx_err_set(err, SBX_E_BAD_MESSAGE, "%s: recv_window is set before hello", c->addr);
    }
    c->recv_window = bytes;
    return 0;
}

int sbx_client_hello_send(struct sbx_client *c, const char *token, struct sbx_err *err)
{
    struct sbx_hello h = { .version = SBX_PROTO_VERSION,
                           .min_version = SBX_PROTO_MIN_VERSION,
                           .client = "libsbx",
                           .client_len = 6 };

    if (sbx_client_version(c) != 0 || c->hello_id != 0) {
        return sbx_err_set(err, SBX_E_BAD_MESSAGE, "%s: hello already %s", c->addr,
                           c->hello_id != 0 ? "sent" : "done");
    }
    if (token != NULL && strlen(token) > SBX_TOKEN_MAX) {
        return sbx_err_param(err, "token", "token longer than %u bytes", SBX_TOKEN_MAX);
    }
    h.token = token;
    h.token_len = token != NULL ? strlen(token) : 0;
    h.recv_window = c->recv_window;
    /* Queued only: the next call that writes (sbx_client_sent of a pipelined request, or the
     * wait) sends it, together with what follows in one write. */
    return check_broken(c, err) < 0 ? -1 : sbx_conn_hello(c->conn, &h, NULL, &c->hello_id, err);
}

int sbx_client_hello_wait(struct sbx_client *c, struct sbx_err *err)
{
    struct sbx_msg resp;
    uint32_t id = c->hello_id;

    if (id == 0) {
        return sbx_err_set(err, SBX_E_BAD_MESSAGE, "%s: no hello outstanding", c->addr);
    }
    c->hello_id = 0;
    if (sbx_client_wait(c, id, &resp, c->timeout_ms, err) < 0) {
        if (strcmp(err->code, "EOF") != 0 && strcmp(err->code, SBX_E_TIMEOUT) != 0 &&
            strstr(err->msg, c->addr) == NULL) {
            sbx_err_prefix(err, "%s: hello", c->addr);
        }
        return -1;
    }
    /* The core checked the result (version in range, limits) and took in what it announces. */
    return keep_hello(c, err);
}

int sbx_client_hello(struct sbx_client *c, const char *token, struct sbx_err *err)
{
    return sbx_client_hello_send(c, token, err) < 0 ? -1 : sbx_client_hello_wait(c, err);
}

/* --- streams ------------------------------------------------------------------------------ */

int sbx_client_grant(struct sbx_client *c, uint32_t stream, uint32_t bytes, struct sbx_err *err)
{
    return check_broken(c, err) < 0 ? -1
                                    : done(c, sbx_conn_grant(c->conn, stream, bytes, err), err);
}

int sbx_client_stream_end(struct sbx_client *c, uint32_t stream, struct sbx_err *err)
{
    return sbx_client_stream_abort(c, stream, NULL, err);
}

int sbx_client_stream_abort(struct sbx_client *c, uint32_t stream, const struct sbx_err *why,
                            struct sbx_err *err)
{
    struct sbx_err e;

    if (check_broken(c, err) < 0) {
        return -1;
    }
    /* STREAM: not an open `in` stream (cancelled by the agent, or ended): nothing to end. */
    if (sbx_conn_end(c->conn, stream, why, &e) < 0 && strcmp(e.code, SBX_E_STREAM) != 0) {
        *err = e;
        return -1;
    }
    return flush(c, err);
}

int sbx_client_stream_cancel(struct sbx_client *c, uint32_t stream, struct sbx_err *err)
{
    return check_broken(c, err) < 0 ? -1 : done(c, sbx_conn_cancel(c->conn, stream, err), err);
}

int sbx_client_consumed(struct sbx_client *c, uint32_t stream, uint32_t n, struct sbx_err *err)
{
    return check_broken(c, err) < 0 ? -1 : done(c, sbx_conn_consumed(c->conn, stream, n, err), err);
}

/*
 * Read until the agent grants credit on `in` stream @stream: stream.credit messages are consumed
 * here, everything else is queued for sbx_client_recv. -1 with STREAM when it cancels it.
 */
static int wait_credit(struct sbx_client *c, uint32_t stream, struct sbx_err *err)
{
    struct sbx_event ev;

    if (pull(c, &ev, -1, err) < 0) {
        return -1;
    }
    if (ev.kind == SBX_EV_CREDIT) {
        return 0;
    }
    if (queue(c, &ev, err) < 0) {
        return -1;
    }
    if (ev.kind == SBX_EV_CANCEL && ev.stream == stream) {
        return sbx_err_set(err, SBX_E_STREAM, "stream %u was cancelled by the agent", stream);
    }
    return 0;
}

int sbx_client_stream_write(struct sbx_client *c, uint32_t stream, const void *data, size_t len,
                            struct sbx_err *err)
{
    const uint8_t *p = data;

    if (stream == 0) {
        return sbx_err_param(err, "stream", "stream id 0 is never valid");
    }
    if (check_broken(c, err) < 0) {
        return -1;
    }
    /* Never more than the credit at a time, so the core frames the bytes straight into its
     * output and queues none. Without credit, wait for some (an empty write checks that the
     * stream is an open `in` stream: STREAM otherwise). */
    for (size_t off = 0, n = 0; off < len; off += n) {
        uint64_t credit = sbx_conn_credit(c->conn, stream);

        n = len - off < WRITE_PIECE ? len - off : WRITE_PIECE;
        n = n < credit ? n : (size_t)credit;
        if (n > 0) {
            /* Straight from the caller's buffer when nothing waits ahead of it: no copy. */
            uint8_t hdr[SBX_STREAM_DATA_HDR_MAX];
            size_t m = n < sbx_client_chunk_max(c) ? n : sbx_client_chunk_max(c);
            int h = sbx_conn_write_direct(c->conn, stream, m, hdr, err);
            if (h < 0) {
                return -1;
            }
            if (h > 0) {
                struct iovec iov[2] = { { hdr, (size_t)h }, { (void *)(p + off), m } };
                if (write_all(c, iov, 2, err) < 0) {
                    return -1;
                }
                n = m;
                continue;
            }
        }
        if (n == 0) {
            if (sbx_conn_write(c->conn, stream, p, 0, err) < 0 || wait_credit(c, stream, err) < 0) {
                return -1;
            }
        } else if (sbx_conn_write(c->conn, stream, p + off, n, err) < 0 || flush(c, err) < 0) {
            return -1;
        }
    }
    return 0;
}
