/*
 * fetch's HTTP/1.1 client (httpc.h): the request written by hand (it is ours), the response
 * parsed by http-parser, over one of two transports: a host TCP connection (uv_tcp) or a guest
 * socket (gsock.h). Everything the server sends is hostile: the head is bounded (http-parser's
 * 80 KiB and HTTPC_HEADERS_MAX lines), body bytes are handed on in bounded slices and reading
 * stops while the caller is paused.
 *
 * https (tls.h) sits between the transport and the rest, on either transport: what the server
 * sends is decrypted before the parser sees it (a read's records gathered into one slice of at
 * most HTTPC_READ_SIZE), what we write is encrypted on its way out; before the handshake is done
 * our writes wait in a plaintext queue that counts toward HTTPC_QUEUE_HIGH, and `connected`
 * means the handshake is done (the certificate verified). A close-delimited body must end with
 * the server's close_notify (else it could have been cut short): an end of the connection
 * without one fails it, as Deno does. httpc_close sends a close_notify, best effort.
 *
 * Lifetime: httpc_close marks the client closing, cancels what runs (getaddrinfo, the connect,
 * the socket, the timer) and the client is freed once every libuv callback of it has come back
 * and no callback of ours is on the stack (refs, in_cb).
 */
#include "httpc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <http_parser.h>
#include <ifaddrs.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gsock.h"
#include "tls.h"

enum tr_kind { TR_TCP = 1, TR_GSOCK };

/* A write in flight on the TCP socket (or waiting for the connect). */
struct wreq {
    uv_write_t w;
    struct wreq *next; /* the pre-connect queue */
    struct httpc *h;
    size_t len;
    char data[];
};

struct httpc {
    enum tr_kind kind;
    const struct httpc_ops *ops;
    void *user;
    uv_loop_t *loop;

    /* TCP */
    uv_getaddrinfo_t gai;
    uv_tcp_t tcp;
    uv_connect_t conn;
    uv_timer_t timer;
    bool tcp_open, timer_open, connecting, connected, reading;
    bool allow_internal, starting, resolving;
    uint16_t port;
    struct sockaddr_storage addrs[HTTPC_ADDRS_MAX];
    int naddrs, next_addr;
    struct wreq *pend_head, *pend_tail; /* written once connected */
    char refused[160];                  /* the last address refused as internal */
    char host[256];

    /* gsock */
    struct gw_gsock *gs;

    /* TLS (NULL: plain HTTP) */
    struct gw_tls *tls;
    bool tls_ready;                 /* the handshake is done */
    bool bye;                       /* closing: ciphertext goes out best effort (close_notify) */
    int tls_wr;                     /* 1: a raw write during one encryption was above the mark */
    struct wreq *pt_head, *pt_tail; /* plaintext written before the handshake was done */
    size_t pt_bytes;
    uint8_t *ptbuf; /* decrypted bytes of one read (HTTPC_READ_SIZE) */

    int refs;  /* libuv callbacks still to come (getaddrinfo, handle closes) */
    int in_cb; /* our callbacks on the stack */
    bool closing, finished, paused, want_writable, wfailed;
    size_t queued; /* TCP: bytes written and not yet confirmed */

    /* request */
    enum httpc_body_kind kind_body;
    uint64_t body_left; /* HTTPC_BODY_LENGTH: bytes still owed */
    bool head_request, body_ended;

    /* response */
    http_parser parser;
    http_parser_settings settings;
    bool got_head, interim, last_was_value;
    bool to_eof; /* the final response's body ends with the connection (no length, not chunked) */
    char reason[HTTPC_REASON_MAX + 1];
    size_t reason_len;
    struct httpc_header hdrs[HTTPC_HEADERS_MAX];
    size_t nhdrs, hbytes;
    char err[256];
    const char *err_code;
    uint8_t *bbuf; /* body bytes gathered during one read */
    size_t blen;
    char rbuf[HTTPC_READ_SIZE]; /* TCP reads */
};

static void tcp_connect_next(struct httpc *h);
static void tcp_retry(struct httpc *h);

/* --- lifetime ------------------------------------------------------------------------------- */

static void reset_headers(struct httpc *h)
{
    for (size_t i = 0; i < h->nhdrs; i++) {
        free(h->hdrs[i].name);
        free(h->hdrs[i].value);
    }
    h->nhdrs = 0;
    h->hbytes = 0;
    h->last_was_value = false;
    h->reason_len = 0;
    h->reason[0] = '\0';
}

static void maybe_free(struct httpc *h)
{
    if (!h->closing || h->refs > 0 || h->in_cb > 0) {
        return;
    }
    while (h->pend_head != NULL) {
        struct wreq *w = h->pend_head;

        h->pend_head = w->next;
        free(w);
    }
    while (h->pt_head != NULL) {
        struct wreq *w = h->pt_head;

        h->pt_head = w->next;
        free(w);
    }
    gw_tls_free(h->tls);
    free(h->ptbuf);
    reset_headers(h);
    free(h->bbuf);
    free(h);
}

static void on_handle_closed(uv_handle_t *hd)
{
    struct httpc *h = hd->data;

    h->refs--;
    maybe_free(h);
}

/* Close the transport (no callback of it after this returns, except libuv's close ones). */
static void transport_close(struct httpc *h)
{
    if (h->kind == TR_GSOCK) {
        if (h->gs != NULL) {
            gw_gsock_close(h->gs);
            h->gs = NULL;
        }
        return;
    }
    h->connecting = false;
    if (h->resolving) {
        (void)uv_cancel((uv_req_t *)&h->gai); /* on_resolved comes with UV_ECANCELED */
    }
    if (h->tcp_open) {
        h->tcp_open = false;
        uv_close((uv_handle_t *)&h->tcp, on_handle_closed);
    }
    if (h->timer_open) {
        h->timer_open = false;
        uv_close((uv_handle_t *)&h->timer, on_handle_closed);
    }
}

void httpc_close(struct httpc *h)
{
    if (h == NULL || h->closing) {
        return;
    }
    h->closing = true;
    if (h->tls != NULL && h->tls_ready && !h->wfailed) {
        h->bye = true;
        gw_tls_bye(h->tls);
    }
    transport_close(h);
    maybe_free(h);
}

/* The last callback: the response is complete, or something failed. */
static void finish(struct httpc *h, const char *err, const char *code)
{
    if (h->finished || h->closing) {
        return;
    }
    h->finished = true;
    if (h->kind == TR_TCP && h->tcp_open && h->reading) {
        (void)uv_read_stop((uv_stream_t *)&h->tcp);
        h->reading = false;
    } else if (h->kind == TR_GSOCK && h->gs != NULL) {
        gw_gsock_pause(h->gs, true);
    }
    h->in_cb++;
    h->ops->done(h->user, err, code, h->got_head);
    h->in_cb--;
    maybe_free(h);
}

static void failf(struct httpc *h, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void failf(struct httpc *h, const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    (void)vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    finish(h, msg, code);
}

/* --- the response (http-parser) ------------------------------------------------------------- */

/* Hand the gathered body bytes on. false when the caller closed us meanwhile. */
static bool flush_body(struct httpc *h)
{
    if (h->blen > 0 && !h->closing && !h->finished) {
        size_t n = h->blen;

        h->blen = 0;
        h->in_cb++;
        h->ops->body(h->user, h->bbuf, n);
        h->in_cb--;
    }
    h->blen = 0;
    return !h->closing;
}

static int on_message_begin(http_parser *p)
{
    struct httpc *h = p->data;

    reset_headers(h);
    return 0;
}

static int on_status(http_parser *p, const char *at, size_t len)
{
    struct httpc *h = p->data;

    if (len > HTTPC_REASON_MAX - h->reason_len) {
        snprintf(h->err, sizeof(h->err), "the response's reason phrase is over %d bytes",
                 HTTPC_REASON_MAX);
        return -1;
    }
    memcpy(h->reason + h->reason_len, at, len);
    h->reason_len += len;
    h->reason[h->reason_len] = '\0';
    return 0;
}

/* Append @len bytes to the string *@s (NUL-terminated, counted against the head's cap). */
static int grow(struct httpc *h, char **s, const char *at, size_t len)
{
    size_t old = *s != NULL ? strlen(*s) : 0;
    char *n;

    if (memchr(at, '\0', len) != NULL) {
        snprintf(h->err, sizeof(h->err), "the response head holds a NUL byte");
        return -1;
    }
    if (len > HTTPC_HEAD_MAX - h->hbytes) {
        snprintf(h->err, sizeof(h->err), "the response head is over %u bytes", HTTPC_HEAD_MAX);
        return -1;
    }
    n = realloc(*s, old + len + 1);
    if (n == NULL) {
        snprintf(h->err, sizeof(h->err), "out of memory");
        return -1;
    }
    memcpy(n + old, at, len);
    n[old + len] = '\0';
    *s = n;
    h->hbytes += len;
    return 0;
}

/* After the final head, http-parser reports a chunked body's trailer fields through the same
 * callbacks: they are dropped (as Deno drops them), not added to the head's lines and bytes.
 * http-parser still bounds them: their bytes count against its HTTP_MAX_HEADER_SIZE (80 KiB),
 * counted afresh from the last chunk, so endless trailers fail the response. */
static int on_header_field(http_parser *p, const char *at, size_t len)
{
    struct httpc *h = p->data;

    if (h->got_head) {
        return 0;
    }
    if (h->nhdrs == 0 || h->last_was_value) {
        if (h->nhdrs >= HTTPC_HEADERS_MAX) {
            snprintf(h->err, sizeof(h->err), "the response has over %d header lines",
                     HTTPC_HEADERS_MAX);
            return -1;
        }
        h->hdrs[h->nhdrs].name = NULL;
        h->hdrs[h->nhdrs].value = NULL;
        h->nhdrs++;
        h->last_was_value = false;
    }
    return grow(h, &h->hdrs[h->nhdrs - 1].name, at, len);
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    struct httpc *h = p->data;

    if (h->got_head) {
        return 0; /* a trailer (above) */
    }
    if (h->nhdrs == 0) {
        return -1;
    }
    h->last_was_value = true;
    return grow(h, &h->hdrs[h->nhdrs - 1].value, at, len);
}

static int on_headers_complete(http_parser *p)
{
    struct httpc *h = p->data;
    struct httpc_resp r;
    size_t j = 0;

    if (p->status_code == 101) {
        snprintf(h->err, sizeof(h->err),
                 "the server switched protocols (101), which the request did not ask for");
        return -1;
    }
    if (p->status_code >= 100 && p->status_code < 200) {
        h->interim = true; /* 100 Continue, 103 Early Hints: skipped */
        /* No content (RFC 9112 6.3), whatever its headers say: http-parser would read a body
         * after a 1xx other than 100, handed on as the body of a response not given yet. */
        return 1;
    }
    /* Names lower-cased; a header line without a value is dropped. */
    for (size_t i = 0; i < h->nhdrs; i++) {
        struct httpc_header *x = &h->hdrs[i];

        if (x->name == NULL || x->value == NULL) {
            free(x->name);
            free(x->value);
            continue;
        }
        for (char *c = x->name; *c != '\0'; c++) {
            if (*c >= 'A' && *c <= 'Z') {
                *c = (char)(*c - 'A' + 'a');
            }
        }
        h->hdrs[j++] = *x;
    }
    h->nhdrs = j;
    h->got_head = true;
    h->to_eof = !h->head_request && p->status_code != 204 && p->status_code != 304 &&
                !(p->flags & (F_CHUNKED | F_CONTENTLENGTH));
    r.status = p->status_code;
    r.reason = h->reason;
    r.headers = h->hdrs;
    r.nheaders = h->nhdrs;
    h->in_cb++;
    h->ops->head(h->user, &r);
    h->in_cb--;
    if (h->closing || h->finished) {
        return -1;
    }
    return h->head_request ? 1 : 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    struct httpc *h = p->data;

    while (len > 0) {
        size_t n = len < HTTPC_READ_SIZE - h->blen ? len : HTTPC_READ_SIZE - h->blen;

        memcpy(h->bbuf + h->blen, at, n);
        h->blen += n;
        at += n;
        len -= n;
        if (h->blen == HTTPC_READ_SIZE && !flush_body(h)) {
            return -1;
        }
        if (h->finished) {
            return -1;
        }
    }
    return 0;
}

static int on_message_complete(http_parser *p)
{
    struct httpc *h = p->data;

    if (h->interim) {
        h->interim = false;
        return 0;
    }
    if (!flush_body(h)) {
        return -1;
    }
    finish(h, NULL, NULL);
    /* Stop here: bytes after the response (a second one in the same read) are not parsed, so
     * no callback follows `done`. */
    return -1;
}

/* Bytes from the server (@len 0: the end of the stream). */
static void feed(struct httpc *h, const char *data, size_t len)
{
    size_t n;

    if (h->finished || h->closing) {
        return;
    }
    h->in_cb++;
    n = http_parser_execute(&h->parser, &h->settings, data, len);
    h->in_cb--;
    if (h->closing || h->finished) {
        maybe_free(h);
        return;
    }
    if (h->err[0] != '\0') {
        failf(h, NULL, "%s", h->err);
        return;
    }
    if (HTTP_PARSER_ERRNO(&h->parser) != HPE_OK || n != len) {
        enum http_errno e = HTTP_PARSER_ERRNO(&h->parser);

        if (len == 0 || e == HPE_INVALID_EOF_STATE) {
            failf(h, "ECONNRESET", "%s",
                  h->got_head ? "connection closed before the message completed"
                              : "connection closed before a response was received");
        } else {
            failf(h, NULL, "invalid HTTP response: %s", http_errno_description(e));
        }
        return;
    }
    if (len == 0) {
        /* http-parser took the end without completing or complaining: not a whole response. */
        failf(h, "ECONNRESET", "%s",
              h->got_head ? "connection closed before the message completed"
                          : "connection closed before a response was received");
        return;
    }
    (void)flush_body(h);
    maybe_free(h);
}

/* --- writing -------------------------------------------------------------------------------- */

static void on_tcp_write(uv_write_t *w, int status)
{
    struct wreq *r = (struct wreq *)w;
    struct httpc *h = r->h;

    h->queued -= r->len;
    free(r);
    if (h->closing) {
        return;
    }
    if (status < 0 && !h->wfailed) {
        /* The server stopped reading (it may still answer, e.g. 413): the read side decides;
         * a waiting body sender learns it from its next httpc_body. */
        h->wfailed = true;
        if (h->want_writable && h->ops->writable != NULL) {
            h->want_writable = false;
            h->in_cb++;
            h->ops->writable(h->user);
            h->in_cb--;
            maybe_free(h);
        }
        return;
    }
    if (h->want_writable && h->queued <= HTTPC_QUEUE_HIGH / 4) {
        h->want_writable = false;
        if (h->ops->writable != NULL) {
            h->in_cb++;
            h->ops->writable(h->user);
            h->in_cb--;
            maybe_free(h);
        }
    }
}

static int tcp_submit(struct httpc *h, struct wreq *r)
{
    uv_buf_t b = uv_buf_init(r->data, (unsigned)r->len);
    int rc;

    r->h = h;
    rc = uv_write(&r->w, (uv_stream_t *)&h->tcp, &b, 1, on_tcp_write);
    if (rc < 0) {
        h->queued -= r->len;
        free(r);
        h->wfailed = true;
        return -1;
    }
    return 0;
}

/* Queue the concatenation of @n buffers toward the server, as they are (ciphertext when TLS).
 * 0, 1 (above the high mark), -1. */
static int raw_writev(struct httpc *h, const uv_buf_t *bufs, int n)
{
    size_t total = 0;

    if (h->closing || h->wfailed) {
        return -1;
    }
    for (int i = 0; i < n; i++) {
        total += bufs[i].len;
    }
    if (h->kind == TR_GSOCK) {
        int r = 0;

        if (h->gs == NULL) {
            return -1;
        }
        for (int i = 0; i < n; i++) {
            int x = bufs[i].len > 0 ? gw_gsock_write(h->gs, bufs[i].base, bufs[i].len) : 0;

            if (x < 0) {
                h->wfailed = true;
                return -1;
            }
            if (x == 1) {
                r = 1;
            }
        }
        if (r == 1) {
            h->want_writable = true;
        }
        return r;
    }
    {
        struct wreq *w = malloc(sizeof(*w) + total);
        size_t off = 0;

        if (w == NULL) {
            return -1;
        }
        for (int i = 0; i < n; i++) {
            memcpy(w->data + off, bufs[i].base, bufs[i].len);
            off += bufs[i].len;
        }
        w->len = total;
        w->next = NULL;
        h->queued += total;
        if (h->connected) {
            if (tcp_submit(h, w) < 0) {
                return -1;
            }
        } else if (h->pend_tail != NULL) {
            h->pend_tail->next = w;
            h->pend_tail = w;
        } else {
            h->pend_head = h->pend_tail = w;
        }
    }
    if (h->queued > HTTPC_QUEUE_HIGH) {
        h->want_writable = true;
        return 1;
    }
    return 0;
}

/* Ciphertext from the TLS session toward the server. */
static int tls_send(void *user, const void *data, size_t len)
{
    struct httpc *h = user;
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    int r;

    if (h->bye) {
        /* httpc_close: only what the socket takes at once (the handle closes right after). */
        if (h->kind == TR_TCP && h->tcp_open && h->connected && h->queued == 0) {
            (void)uv_try_write((uv_stream_t *)&h->tcp, &b, 1);
        } else if (h->kind == TR_GSOCK && h->gs != NULL) {
            (void)gw_gsock_write(h->gs, data, len);
        }
        return 0;
    }
    r = raw_writev(h, &b, 1);
    if (r < 0) {
        return -1;
    }
    if (r == 1) {
        h->tls_wr = 1;
    }
    return 0;
}

/* Encrypt @len bytes toward the server (the handshake done). 0, 1 (above the mark), -1. */
static int tls_write(struct httpc *h, const void *data, size_t len)
{
    h->tls_wr = 0;
    if (gw_tls_write(h->tls, data, len) < 0) {
        h->wfailed = true;
        return -1;
    }
    return h->tls_wr;
}

/* Queue the concatenation of @n buffers (plaintext) toward the server. 0, 1 (above the high
 * mark: wait for `writable`), -1. */
static int tr_writev(struct httpc *h, const uv_buf_t *bufs, int n)
{
    struct wreq *w;
    size_t total = 0, off = 0;
    int r;

    if (h->tls == NULL) {
        return raw_writev(h, bufs, n);
    }
    if (h->closing || h->wfailed) {
        return -1;
    }
    if (n == 1 && h->tls_ready) {
        return tls_write(h, bufs[0].base, bufs[0].len);
    }
    for (int i = 0; i < n; i++) {
        total += bufs[i].len;
    }
    /* Several buffers (a chunk's size line, data, CRLF) go as one record, not three. */
    w = malloc(sizeof(*w) + total);
    if (w == NULL) {
        return -1;
    }
    for (int i = 0; i < n; i++) {
        memcpy(w->data + off, bufs[i].base, bufs[i].len);
        off += bufs[i].len;
    }
    w->len = total;
    w->next = NULL;
    if (h->tls_ready) {
        r = tls_write(h, w->data, w->len);
        free(w);
        return r;
    }
    if (h->pt_tail != NULL) {
        h->pt_tail->next = w;
    } else {
        h->pt_head = w;
    }
    h->pt_tail = w;
    h->pt_bytes += total;
    if (h->pt_bytes > HTTPC_QUEUE_HIGH) {
        h->want_writable = true;
        return 1;
    }
    return 0;
}

/* Nothing but what a request line or header may hold: no CR, LF or NUL (@sp: spaces allowed). */
static bool clean(const char *s, bool sp)
{
    for (; *s != '\0'; s++) {
        if (*s == '\r' || *s == '\n' || (!sp && (*s == ' ' || *s == '\t'))) {
            return false;
        }
    }
    return true;
}

struct sbuf {
    char *p;
    size_t len, cap;
    bool bad;
};

static void sb_add(struct sbuf *b, const char *s, size_t n)
{
    if (b->bad) {
        return;
    }
    if (n > HTTPC_REQ_FIELD_MAX || b->len + n + 1 > HTTPC_REQ_HEAD_MAX) {
        b->bad = true;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->len + n + 1) * 2;
        char *x = realloc(b->p, cap);

        if (x == NULL) {
            b->bad = true;
            return;
        }
        b->p = x;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_str(struct sbuf *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

int httpc_request(struct httpc *h, const char *method, const char *target, const char *host_hdr,
                  const char *const *names, const char *const *values, size_t n,
                  enum httpc_body_kind kind, uint64_t len, bool head_request)
{
    struct sbuf b = { 0 };
    char num[64];
    uv_buf_t buf;
    int r;

    if (!clean(method, false) || !clean(target, false) || !clean(host_hdr, false)) {
        return -1;
    }
    sb_str(&b, method);
    sb_str(&b, " ");
    sb_str(&b, target);
    sb_str(&b, " HTTP/1.1\r\nhost: ");
    sb_str(&b, host_hdr);
    sb_str(&b, "\r\n");
    for (size_t i = 0; i < n; i++) {
        if (!clean(names[i], false) || !clean(values[i], true) || names[i][0] == '\0' ||
            strchr(names[i], ':') != NULL) {
            free(b.p);
            return -1;
        }
        sb_str(&b, names[i]);
        sb_str(&b, ": ");
        sb_str(&b, values[i]);
        sb_str(&b, "\r\n");
    }
    if (kind == HTTPC_BODY_LENGTH) {
        snprintf(num, sizeof(num), "content-length: %" PRIu64 "\r\n", len);
        sb_str(&b, num);
    } else if (kind == HTTPC_BODY_CHUNKED) {
        sb_str(&b, "transfer-encoding: chunked\r\n");
    }
    sb_str(&b, "connection: close\r\n\r\n");
    if (b.bad) {
        free(b.p);
        return -1;
    }
    h->kind_body = kind;
    h->body_left = kind == HTTPC_BODY_LENGTH ? len : 0;
    h->head_request = head_request;
    buf = uv_buf_init(b.p, (unsigned)b.len);
    r = tr_writev(h, &buf, 1);
    free(b.p);
    return r < 0 ? -1 : 0;
}

int httpc_body(struct httpc *h, const void *data, size_t len)
{
    if (h->body_ended || h->kind_body == HTTPC_BODY_NONE) {
        return -1;
    }
    if (len == 0) {
        return h->want_writable ? 1 : 0;
    }
    if (h->kind_body == HTTPC_BODY_LENGTH) {
        uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);

        if (len > h->body_left) {
            return -1;
        }
        h->body_left -= len;
        return tr_writev(h, &b, 1);
    }
    {
        char hdr[32];
        uv_buf_t b[3];

        snprintf(hdr, sizeof(hdr), "%zx\r\n", len);
        b[0] = uv_buf_init(hdr, (unsigned)strlen(hdr));
        b[1] = uv_buf_init((char *)data, (unsigned)len);
        b[2] = uv_buf_init("\r\n", 2);
        return tr_writev(h, b, 3);
    }
}

int httpc_body_end(struct httpc *h)
{
    if (h->body_ended) {
        return 0;
    }
    h->body_ended = true;
    if (h->kind_body == HTTPC_BODY_LENGTH) {
        return h->body_left == 0 ? 0 : -1;
    }
    if (h->kind_body == HTTPC_BODY_CHUNKED) {
        uv_buf_t b = uv_buf_init("0\r\n\r\n", 5);

        return tr_writev(h, &b, 1) < 0 ? -1 : 0;
    }
    return 0;
}

/* --- TLS ----------------------------------------------------------------------------------- */

/* The handshake is done: what waited goes out encrypted, then `connected`. */
static void tls_on_ready(struct httpc *h)
{
    bool high = false;

    h->tls_ready = true;
    while (h->pt_head != NULL) {
        struct wreq *w = h->pt_head;

        h->pt_head = w->next;
        if (!h->wfailed && tls_write(h, w->data, w->len) == 1) {
            high = true;
        }
        free(w);
    }
    h->pt_tail = NULL;
    h->pt_bytes = 0;
    if (h->ops->connected != NULL) {
        h->ops->connected(h->user);
    }
    if (h->closing || h->finished) {
        return;
    }
    /* A writer held by the plaintext queue: the transport's queue is not (or no longer) above
     * its mark, so no `writable` would come from it. */
    if (h->want_writable && !high && h->ops->writable != NULL) {
        h->want_writable = false;
        h->ops->writable(h->user);
    }
}

/* Run the session on the input lent to it (or none): the handshake, then the decrypted bytes to
 * the parser, a read's records gathered into slices of at most HTTPC_READ_SIZE. The caller holds
 * in_cb. */
static void tls_step(struct httpc *h)
{
    size_t plen = 0;

    if (!h->tls_ready) {
        int r = gw_tls_handshake(h->tls);

        if (r == GW_TLS_AGAIN) {
            return;
        }
        if (r < 0) {
            failf(h, gw_tls_code(h->tls), "%s", gw_tls_error(h->tls));
            return;
        }
        tls_on_ready(h);
        if (h->closing || h->finished) {
            return;
        }
    }
    for (;;) {
        ssize_t n = gw_tls_read(h->tls, h->ptbuf + plen, HTTPC_READ_SIZE - plen);

        if (n > 0) {
            plen += (size_t)n;
            if (plen < HTTPC_READ_SIZE) {
                continue;
            }
        }
        if (plen > 0) {
            feed(h, (const char *)h->ptbuf, plen);
            plen = 0;
            if (h->closing || h->finished) {
                return;
            }
        }
        if (n > 0) {
            continue;
        }
        if (n == GW_TLS_AGAIN) {
            return;
        }
        if (n == 0) {
            feed(h, NULL, 0); /* close_notify: the end of the stream */
        } else if (n == GW_TLS_UNCLEAN_EOF) {
            if (h->got_head && h->to_eof) {
                /* A close-delimited body: without close_notify its end cannot be told from an
                 * attacker's cut. */
                failf(h, "ECONNRESET", "peer closed connection without sending TLS close_notify");
            } else {
                feed(h, NULL, 0);
            }
        } else {
            failf(h, gw_tls_code(h->tls), "%s", gw_tls_error(h->tls));
        }
        return;
    }
}

/* Bytes from the transport (@len 0: its end): to the parser, through TLS when there is one. */
static void deliver(struct httpc *h, const char *data, size_t len)
{
    if (h->tls == NULL) {
        feed(h, data, len);
        return;
    }
    if (h->closing || h->finished) {
        return;
    }
    h->in_cb++;
    if (len == 0) {
        gw_tls_eof(h->tls);
    } else {
        gw_tls_input(h->tls, (const uint8_t *)data, len);
    }
    tls_step(h);
    gw_tls_input(h->tls, NULL, 0);
    h->in_cb--;
    maybe_free(h);
}

/* The transport is up: plain, that is `connected`; TLS, the handshake starts. */
static void transport_up(struct httpc *h)
{
    h->in_cb++;
    if (h->tls != NULL) {
        tls_step(h);
    } else if (h->ops->connected != NULL) {
        h->ops->connected(h->user);
    }
    h->in_cb--;
    maybe_free(h);
}

static void on_tcp_alloc(uv_handle_t *hd, size_t suggested, uv_buf_t *buf)
{
    struct httpc *h = hd->data;

    (void)suggested;
    *buf = uv_buf_init(h->rbuf, sizeof(h->rbuf));
}

static void on_tcp_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    struct httpc *h = st->data;

    (void)buf;
    if (h->closing || h->finished) {
        return;
    }
    if (n > 0) {
        deliver(h, h->rbuf, (size_t)n);
    } else if (n == UV_EOF) {
        deliver(h, NULL, 0);
    } else if (n < 0) {
        failf(h, uv_err_name((int)n), "connection error: %s (os error %d)", strerror((int)-n),
              (int)-n);
    }
}

void httpc_pause(struct httpc *h, bool pause)
{
    if (h->closing || h->finished || h->paused == pause) {
        return;
    }
    h->paused = pause;
    if (h->kind == TR_GSOCK) {
        if (h->gs != NULL) {
            gw_gsock_pause(h->gs, pause);
        }
        return;
    }
    if (!h->connected || !h->tcp_open) {
        return;
    }
    if (pause && h->reading) {
        (void)uv_read_stop((uv_stream_t *)&h->tcp);
        h->reading = false;
    } else if (!pause && !h->reading) {
        if (uv_read_start((uv_stream_t *)&h->tcp, on_tcp_alloc, on_tcp_read) == 0) {
            h->reading = true;
        }
    }
}

/* --- TCP ------------------------------------------------------------------------------------ */

/* Whether @a and @b (AF_INET or AF_INET6) are the same address (ports aside). */
static bool same_ip(const struct sockaddr *a, const struct sockaddr *b)
{
    if (a == NULL || b == NULL || a->sa_family != b->sa_family) {
        return false;
    }
    if (a->sa_family == AF_INET) {
        return memcmp(&((const struct sockaddr_in *)a)->sin_addr,
                      &((const struct sockaddr_in *)b)->sin_addr, sizeof(struct in_addr)) == 0;
    }
    return a->sa_family == AF_INET6 &&
           memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                  &((const struct sockaddr_in6 *)b)->sin6_addr, sizeof(struct in6_addr)) == 0;
}

/* Whether @sa (AF_INET or AF_INET6) is an address of one of the host's interfaces (a connect
 * to 192.0.2.2 on eth0 reaches the host's own listeners as loopback does). Every interface
 * counts, up or not: the kernel delivers to a down interface's address locally too (libuv's
 * list leaves those out). Asked at each connect (interfaces come and go); true when it cannot be
 * told. A local route to an address no interface has (ip route add local ...) is caught after
 * the connect (on_tcp_connect). */
static bool own_addr(const struct sockaddr *sa)
{
    struct ifaddrs *ifs;
    bool own = false;

    if (getifaddrs(&ifs) < 0) {
        return true;
    }
    for (struct ifaddrs *i = ifs; i != NULL && !own; i = i->ifa_next) {
        own = same_ip(i->ifa_addr, sa);
    }
    freeifaddrs(ifs);
    return own;
}

/* An address of the gateway's own host or of no host: loopback, unspecified, link-local,
 * multicast, broadcast, and every address of the host's interfaces (v4-mapped IPv6 judged by
 * its IPv4). */
static bool internal_addr(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        uint32_t a = ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr);

        return (a >> 24) == 127 || (a >> 24) == 0 || (a >> 16) == 0xA9FE || (a >> 28) == 0xE ||
               a == 0xFFFFFFFFu || own_addr(sa);
    }
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;

        if (IN6_IS_ADDR_V4MAPPED(a)) {
            struct sockaddr_in v4;

            memset(&v4, 0, sizeof(v4));
            v4.sin_family = AF_INET;
            memcpy(&v4.sin_addr, &a->s6_addr[12], 4);
            return internal_addr((const struct sockaddr *)&v4);
        }
        return IN6_IS_ADDR_LOOPBACK(a) || IN6_IS_ADDR_UNSPECIFIED(a) || IN6_IS_ADDR_LINKLOCAL(a) ||
               IN6_IS_ADDR_MULTICAST(a) || own_addr(sa);
    }
    return true;
}

static void addr_text(const struct sockaddr *sa, char *out, size_t outlen)
{
    if (sa->sa_family == AF_INET6) {
        (void)uv_ip6_name((const struct sockaddr_in6 *)sa, out, outlen);
    } else {
        (void)uv_ip4_name((const struct sockaddr_in *)sa, out, outlen);
    }
}

/* Take @sa as a candidate (port set), unless it is internal and that is not allowed. */
static void add_addr(struct httpc *h, const struct sockaddr *sa)
{
    struct sockaddr_storage ss;

    if (h->naddrs >= HTTPC_ADDRS_MAX || (sa->sa_family != AF_INET && sa->sa_family != AF_INET6)) {
        return;
    }
    if (!h->allow_internal && internal_addr(sa)) {
        addr_text(sa, h->refused, sizeof(h->refused));
        return;
    }
    memset(&ss, 0, sizeof(ss));
    if (sa->sa_family == AF_INET) {
        memcpy(&ss, sa, sizeof(struct sockaddr_in));
        ((struct sockaddr_in *)&ss)->sin_port = htons(h->port);
    } else {
        memcpy(&ss, sa, sizeof(struct sockaddr_in6));
        ((struct sockaddr_in6 *)&ss)->sin6_port = htons(h->port);
    }
    h->addrs[h->naddrs++] = ss;
}

static void on_connect_timeout(uv_timer_t *t)
{
    struct httpc *h = t->data;

    if (h->starting) {
        h->starting = false; /* an address given: connect now (see httpc_open_tcp) */
        tcp_connect_next(h);
        return;
    }
    if (h->resolving && !h->closing && !h->finished) {
        (void)uv_cancel((uv_req_t *)&h->gai); /* still queued: on_resolved comes cancelled */
        failf(h, "ETIMEDOUT", "dns error: no answer for %s within %d s", h->host,
              HTTPC_RESOLVE_MS / 1000);
        return;
    }
    if (!h->connecting || h->closing) {
        return;
    }
    /* The attempt is abandoned: the socket is closed (its connect callback comes cancelled and
     * is ignored), the next address gets a fresh one. */
    h->connecting = false;
    snprintf(h->err, sizeof(h->err), "tcp connect error: timed out after %d ms", HTTPC_CONNECT_MS);
    h->err_code = "ETIMEDOUT";
    tcp_retry(h);
}

/* The error of a connect refused because h->refused is the gateway's own host. */
static void refuse_err(struct httpc *h)
{
    snprintf(h->err, sizeof(h->err),
             "refusing to connect to %s: an address of the gateway's own host (loopback, "
             "link-local, unspecified, or one of its interfaces'); map the name with --resolve to "
             "allow it",
             h->refused);
    h->err_code = "EACCES";
}

/* Whether the connection on h->tcp went to the gateway's own host after all: the kernel gives a
 * connection it delivers locally its destination as its source, whatever interface or local
 * route (ip route add local ...) holds the address. Then h->refused names it. */
static bool connected_to_self(struct httpc *h)
{
    struct sockaddr_storage me, peer;
    int mlen = sizeof(me), plen = sizeof(peer);

    if (uv_tcp_getsockname(&h->tcp, (struct sockaddr *)&me, &mlen) < 0 ||
        uv_tcp_getpeername(&h->tcp, (struct sockaddr *)&peer, &plen) < 0) {
        return false; /* gone already: the first read fails */
    }
    if (!same_ip((const struct sockaddr *)&me, (const struct sockaddr *)&peer)) {
        return false;
    }
    addr_text((const struct sockaddr *)&peer, h->refused, sizeof(h->refused));
    return true;
}

static void on_tcp_connect(uv_connect_t *c, int status)
{
    struct httpc *h = c->data;

    if (h->closing || !h->connecting) {
        return;
    }
    h->connecting = false;
    if (h->timer_open) {
        (void)uv_timer_stop(&h->timer);
    }
    if (status < 0) {
        snprintf(h->err, sizeof(h->err), "tcp connect error: %s (os error %d)", strerror(-status),
                 -status);
        h->err_code = uv_err_name(status);
        tcp_retry(h);
        return;
    }
    if (!h->allow_internal && connected_to_self(h)) {
        refuse_err(h); /* nothing was sent: the socket closes, the next address is tried */
        tcp_retry(h);
        return;
    }
    h->connected = true;
    h->err[0] = '\0';
    h->err_code = NULL;
    if (!h->paused) {
        if (uv_read_start((uv_stream_t *)&h->tcp, on_tcp_alloc, on_tcp_read) == 0) {
            h->reading = true;
        }
    }
    while (h->pend_head != NULL) {
        struct wreq *w = h->pend_head;

        h->pend_head = w->next;
        if (h->pend_head == NULL) {
            h->pend_tail = NULL;
        }
        if (tcp_submit(h, w) < 0) {
            break;
        }
    }
    transport_up(h);
}

/* The socket of a failed attempt has closed: h->tcp and h->conn are libuv's no more, and the
 * next address may have them. */
static void on_attempt_closed(uv_handle_t *hd)
{
    struct httpc *h = hd->data;

    h->refs--;
    if (h->closing) {
        maybe_free(h);
        return;
    }
    tcp_connect_next(h);
}

/* Abandon the current attempt: its socket is closed (a pending connect comes back cancelled and
 * is ignored) and the next address is tried from the close callback, never before: a handle
 * libuv is still closing must not be initialised again. */
static void tcp_retry(struct httpc *h)
{
    if (!h->tcp_open) {
        tcp_connect_next(h);
        return;
    }
    h->tcp_open = false;
    uv_close((uv_handle_t *)&h->tcp, on_attempt_closed);
}

/* Try the next candidate address; none left: fail with the last error. */
static void tcp_connect_next(struct httpc *h)
{
    int r;

    if (h->closing || h->finished) {
        return;
    }
    if (h->next_addr >= h->naddrs) {
        if (h->err[0] == '\0') {
            if (h->refused[0] != '\0') {
                refuse_err(h);
            } else {
                snprintf(h->err, sizeof(h->err), "dns error: no address for %s", h->host);
            }
        }
        failf(h, h->err_code, "%s", h->err);
        return;
    }
    r = uv_tcp_init(h->loop, &h->tcp);
    if (r < 0) {
        failf(h, uv_err_name(r), "tcp connect error: %s", uv_strerror(r));
        return;
    }
    h->tcp.data = h;
    h->tcp_open = true;
    h->refs++;
    h->conn.data = h;
    r = uv_tcp_connect(&h->conn, &h->tcp, (const struct sockaddr *)&h->addrs[h->next_addr++],
                       on_tcp_connect);
    if (r < 0) {
        snprintf(h->err, sizeof(h->err), "tcp connect error: %s (os error %d)", strerror(-r), -r);
        h->err_code = uv_err_name(r);
        tcp_retry(h);
        return;
    }
    h->connecting = true;
    if (h->timer_open) {
        (void)uv_timer_start(&h->timer, on_connect_timeout, HTTPC_CONNECT_MS, 0);
    }
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct httpc *h = req->data;

    h->refs--;
    h->resolving = false;
    if (h->closing) {
        uv_freeaddrinfo(res);
        maybe_free(h);
        return;
    }
    if (status < 0) {
        uv_freeaddrinfo(res);
        failf(h, uv_err_name(status), "dns error: failed to lookup address information: %s",
              uv_strerror(status));
        return;
    }
    for (struct addrinfo *a = res; a != NULL; a = a->ai_next) {
        add_addr(h, a->ai_addr);
    }
    uv_freeaddrinfo(res);
    tcp_connect_next(h);
}

/* A client (no transport yet); @tls_host: the TLS session's server name, NULL for plain. */
static struct httpc *httpc_new(const struct httpc_ops *ops, void *user, enum tr_kind kind,
                               const char *tls_host, char *why, size_t whylen)
{
    struct httpc *h = calloc(1, sizeof(*h));

    if (h == NULL) {
        snprintf(why, whylen, "out of memory");
        return NULL;
    }
    h->bbuf = malloc(HTTPC_READ_SIZE);
    if (tls_host != NULL && h->bbuf != NULL) {
        h->ptbuf = malloc(HTTPC_READ_SIZE);
        h->tls = h->ptbuf != NULL ? gw_tls_new(tls_host, tls_send, h, why, whylen) : NULL;
        if (h->tls == NULL) {
            free(h->ptbuf);
            free(h->bbuf);
            free(h);
            return NULL;
        }
    }
    if (h->bbuf == NULL) {
        snprintf(why, whylen, "out of memory");
        free(h);
        return NULL;
    }
    h->kind = kind;
    h->ops = ops;
    h->user = user;
    http_parser_init(&h->parser, HTTP_RESPONSE);
    h->parser.data = h;
    http_parser_settings_init(&h->settings);
    h->settings.on_message_begin = on_message_begin;
    h->settings.on_status = on_status;
    h->settings.on_header_field = on_header_field;
    h->settings.on_header_value = on_header_value;
    h->settings.on_headers_complete = on_headers_complete;
    h->settings.on_body = on_body;
    h->settings.on_message_complete = on_message_complete;
    return h;
}

/* Parse an IP literal (IPv6 with or without brackets) with port @port into @ss. 0, or -1. */
static int parse_ip(const char *s, uint16_t port, struct sockaddr_storage *ss)
{
    char buf[64];
    size_t n = strlen(s);

    memset(ss, 0, sizeof(*ss));
    if (n >= 2 && s[0] == '[' && s[n - 1] == ']' && n - 2 < sizeof(buf)) {
        memcpy(buf, s + 1, n - 2);
        buf[n - 2] = '\0';
        s = buf;
    }
    if (uv_ip4_addr(s, port, (struct sockaddr_in *)ss) == 0 && strchr(s, ':') == NULL) {
        struct in_addr a;

        /* uv_ip4_addr takes "1" too (inet_aton); a literal is four dotted parts. */
        return inet_pton(AF_INET, s, &a) == 1 ? 0 : -1;
    }
    memset(ss, 0, sizeof(*ss));
    return uv_ip6_addr(s, port, (struct sockaddr_in6 *)ss) == 0 ? 0 : -1;
}

struct httpc *httpc_open_tcp(uv_loop_t *loop, const char *host, const char *addr, uint16_t port,
                             bool allow_internal, bool tls, const struct httpc_ops *ops, void *user,
                             char *why, size_t whylen)
{
    struct httpc *h = httpc_new(ops, user, TR_TCP, tls ? host : NULL, why, whylen);
    struct sockaddr_storage ss;
    int r;

    if (h == NULL) {
        return NULL;
    }
    h->loop = loop;
    h->port = port;
    h->allow_internal = allow_internal;
    snprintf(h->host, sizeof(h->host), "%s", host);
    r = uv_timer_init(loop, &h->timer);
    if (r < 0) {
        snprintf(why, whylen, "%s", uv_strerror(r));
        h->closing = true;
        maybe_free(h);
        return NULL;
    }
    h->timer.data = h;
    h->timer_open = true;
    h->refs++;
    if (addr != NULL || parse_ip(host, port, &ss) == 0) {
        if (addr != NULL && parse_ip(addr, port, &ss) < 0) {
            snprintf(why, whylen, "'%s' is not an IP address", addr);
            httpc_close(h);
            return NULL;
        }
        add_addr(h, (const struct sockaddr *)&ss);
        /* No lookup: the connect starts on the next turn of the loop (the timer at 0), so that
         * no callback runs before we return. */
        h->starting = true;
        r = uv_timer_start(&h->timer, on_connect_timeout, 0, 0);
    } else {
        struct addrinfo hints;

        memset(&hints, 0, sizeof(hints));
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        h->gai.data = h;
        r = uv_getaddrinfo(loop, &h->gai, on_resolved, host, NULL, &hints);
        if (r == 0) {
            h->refs++;
            h->resolving = true;
            (void)uv_timer_start(&h->timer, on_connect_timeout, HTTPC_RESOLVE_MS, 0);
        }
    }
    if (r < 0) {
        snprintf(why, whylen, "%s", uv_strerror(r));
        httpc_close(h);
        return NULL;
    }
    return h;
}

/* --- gsock ---------------------------------------------------------------------------------- */

static void gs_connected(void *user)
{
    struct httpc *h = user;

    h->connected = true;
    transport_up(h);
}

static void gs_data(void *user, const uint8_t *data, size_t len)
{
    struct httpc *h = user;

    /* Slices of at most HTTPC_READ_SIZE, so that body slices stay bounded too. */
    while (len > 0 && !h->closing && !h->finished) {
        size_t n = len < HTTPC_READ_SIZE ? len : HTTPC_READ_SIZE;

        h->in_cb++;
        deliver(h, (const char *)data, n);
        h->in_cb--;
        data += n;
        len -= n;
    }
    maybe_free(h);
}

static void gs_eof(void *user)
{
    deliver(user, NULL, 0);
}

static void gs_closed(void *user, const char *err, const char *errno_name)
{
    struct httpc *h = user;

    h->gs = NULL; /* freed by gsock.c */
    if (h->finished || h->closing) {
        return;
    }
    if (err == NULL) {
        deliver(h, NULL, 0); /* both directions ended: the end of the response */
        return;
    }
    failf(h, errno_name, "%s%s", h->connected ? "connection error: " : "tcp connect error: ", err);
}

static void gs_writable(void *user)
{
    struct httpc *h = user;

    if (h->want_writable && h->ops->writable != NULL) {
        h->want_writable = false;
        h->in_cb++;
        h->ops->writable(h->user);
        h->in_cb--;
        maybe_free(h);
    }
}

static const struct gw_gsock_ops gs_ops = {
    .connected = gs_connected,
    .data = gs_data,
    .eof = gs_eof,
    .closed = gs_closed,
    .writable = gs_writable,
};

struct httpc *httpc_open_gsock(struct gw_sandbox *sb, const char *host, uint16_t port, bool tls,
                               const struct httpc_ops *ops, void *user, char *why, size_t whylen)
{
    struct httpc *h = httpc_new(ops, user, TR_GSOCK, tls ? host : NULL, why, whylen);

    if (h == NULL) {
        return NULL;
    }
    h->gs = gw_gsock_open(sb, host, port, &gs_ops, h, why, whylen);
    if (h->gs == NULL) {
        h->closing = true;
        maybe_free(h);
        return NULL;
    }
    return h;
}
