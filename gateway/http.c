/*
 * The gateway's HTTP/1.1 server and WebSocket endpoint: one struct gw_http_conn per accepted
 * socket, parsed by http-parser until it is upgraded, then framed by wslay (http.h).
 *
 * A connection owns three libuv handles (the socket, one timer, one idle "kick") and is freed
 * when all three have closed and no handler still holds its request. Everything that calls back
 * into the user (the handler, on_message, on_drain, on_close) runs from a libuv callback of our
 * own, never from inside a call the user made, so the user may call any function of http.h from
 * any callback.
 */
#include "http.h"

#include <ctype.h>
#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "gw.h"
#include "sbx/msg.h"

#include <nettle/base64.h>
#include <nettle/sha1.h>
#include <wslay/wslay.h>

#define READ_BUF      (64u << 10)  /* one read buffer per connection */
#define PEND_MAX      (64u << 10)  /* bytes held while a request is unanswered: then stop reading */
#define OUT_BLOCK     (64u << 10)  /* WebSocket output is copied into blocks of this size ... */
#define OUT_MAX       (256u << 10) /* ... of which at most this much is being written */
#define LINGER_MS     2000         /* a closing socket waits this long for the peer's EOF */
#define WS_CLOSE_MS   2000         /* gw_ws_close waits this long for the peer's close frame */
#define WS_REASON_MAX 123          /* RFC 6455 5.5.1: control payload 125 minus the code */
#define WS_PONGS_MAX  64  /* pings whose pongs wait behind unsent output: then stop reading */
#define CLOSING_SLACK 256 /* closed connections not yet freed beyond GW_HTTP_CONNS_MAX */
#define WS_GUID       "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

enum conn_state {
    C_HTTP = 1, /* reading a request */
    C_WAIT,     /* a request is with the handler */
    C_STREAM,   /* the handler is streaming its answer (gw_http_stream_start) */
    C_WS,       /* upgraded: c->ws */
    C_LINGER,   /* answered and shut down for writing: discarding input until EOF */
    C_CLOSED,   /* uv_close called */
};

enum seg_kind { SEG_NONE, SEG_URL, SEG_FIELD, SEG_VALUE };

struct seg {
    size_t off, len;
};

struct wblock {
    uv_write_t req;
    struct gw_http_conn *c;
    size_t len;
    char data[];
};

struct gw_http_server {
    uv_tcp_t tcp;
    uv_loop_t *loop;
    gw_http_handler_fn fn;
    void *user;
    struct gw_http_conn *conns; /* list */
    unsigned nconns;            /* allocated connections (closing ones too) */
    unsigned nclosed;           /* of them, closed ones whose handles are still closing */
    unsigned nfresh;            /* of them, open ones that have not sent a whole request */
    bool closing;
    bool listener_closed;
};

struct gw_ws {
    struct gw_http_conn *c;
    wslay_event_context_ptr ctx;
    struct gw_ws_ops ops;
    void *user;
    struct wblock *out_cur; /* the block wslay is writing into */
    char *msg;              /* the message being received */
    size_t msg_len, msg_cap;
    bool frame_ctrl; /* the frame being received is a control frame (wslay keeps those) */
    bool msg_fail;   /* a message was refused (1009): ignore the rest */
    const uint8_t *in;
    size_t in_len, in_off;
    /* Where the frame being handed to wslay ends: wslay is never given bytes past it, so that
     * a pause in on_message takes effect at the next frame (wslay buffers what it is given). */
    uint8_t hdr[14];
    size_t hdr_have, hdr_need;
    uint64_t payload_left;
    bool paused;
    unsigned pongs_owed; /* pings received since wslay's queue was last empty (pongs waiting) */
    bool in_recv;        /* inside wslay_event_recv */
    bool in_events;      /* inside ws_events (on_drain) */
    bool user_closing;   /* gw_ws_close was called */
    bool dead;           /* the socket failed or the peer vanished */
    bool finished;       /* on_close called */
    bool was_high;
    bool pinged;
    bool close_timer;
    uint64_t last_rx;
    uint64_t paused_at; /* when the last pause began */
    char reason[WS_REASON_MAX + 1];
};

struct gw_http_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_idle_t kick;
    uv_shutdown_t shut;
    struct gw_http_server *srv;
    struct gw_http_conn *next, *prev;
    enum conn_state state;
    int handles; /* open libuv handles */
    bool held;   /* a request is with the handler and it has not answered */
    bool reading;
    bool eof;
    bool in_parse;
    bool gone; /* the client left while the handler (with no abandon callback) held it */
    bool keep_alive;
    bool upgrade; /* http-parser saw an upgrade: nothing after it is HTTP */
    bool fresh;   /* accepted, no whole request yet (counted in srv->nfresh) */
    int err_status;
    const char *err_msg;
    http_parser parser;
    char *rbuf;
    char *pend; /* input not yet consumed */
    size_t pend_len, pend_cap;
    char *hb; /* url and header strings, NUL-separated */
    size_t hb_len, hb_cap;
    enum seg_kind cur;
    bool head_done; /* this request's head is complete: fields now are a chunked body's trailer */
    struct seg url;
    struct seg hname[GW_HTTP_HEADERS_MAX], hvalue[GW_HTTP_HEADERS_MAX];
    size_t nh;
    char *body;
    size_t body_len, body_cap;
    char *pathbuf;
    struct gw_http_req req;
    size_t out_bytes;  /* bytes in uv_write requests not yet completed */
    uint64_t tx_since; /* when the last write completed, or the first of out_bytes was queued */
    void (*abandon_cb)(struct gw_http_conn *hc, void *user);
    void *abandon_user;
    void (*drain_cb)(struct gw_http_conn *hc, void *user); /* streamed answers */
    void *drain_user;
    bool chunked;      /* the streamed answer uses chunked transfer-encoding */
    bool stream_close; /* ... and the connection closes after it */
    struct gw_ws *ws;
};

static void conn_close(struct gw_http_conn *c);
static void conn_linger(struct gw_http_conn *c);
static void conn_gone(struct gw_http_conn *c);
static void conn_after_parse(struct gw_http_conn *c);
static void kick_cb(uv_idle_t *h);
static void conn_error(struct gw_http_conn *c, int status, const char *msg);
static void ws_flush(struct gw_ws *ws);
static void ws_events(struct gw_ws *ws);
static void ws_feed(struct gw_ws *ws, const uint8_t *data, size_t len);
static bool ws_held(const struct gw_ws *ws);

/* --- small helpers ------------------------------------------------------------------------- */

static const char *status_text(int status)
{
    switch (status) {
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 413:
        return "Payload Too Large";
    case 426:
        return "Upgrade Required";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Status";
    }
}

/* Does the comma-separated list @value contain @token (case-insensitive)? */
static bool has_token(const char *value, const char *token)
{
    size_t tlen = strlen(token);
    const char *p = value;
    while (p && *p) {
        while (*p == ' ' || *p == '\t' || *p == ',') {
            p++;
        }
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t')) {
            n--;
        }
        if (n == tlen && strncasecmp(p, token, tlen) == 0) {
            return true;
        }
        p = end;
    }
    return false;
}

/* A Sec-WebSocket-Key is base64 of 16 bytes (RFC 6455 4.2.1). */
static bool ws_key_ok(const char *key)
{
    if (!key || strlen(key) != 24) {
        return false;
    }
    struct base64_decode_ctx b64;
    uint8_t out[BASE64_DECODE_LENGTH(24)];
    size_t n = sizeof(out);
    base64_decode_init(&b64);
    if (!base64_decode_update(&b64, &n, out, 24, key) || !base64_decode_final(&b64)) {
        return false;
    }
    return n == 16;
}

static void ws_accept_key(const char *key, char out[29])
{
    struct sha1_ctx sha;
    uint8_t digest[SHA1_DIGEST_SIZE];
    sha1_init(&sha);
    sha1_update(&sha, strlen(key), (const uint8_t *)key);
    sha1_update(&sha, sizeof(WS_GUID) - 1, (const uint8_t *)WS_GUID);
    sha1_digest(&sha, sizeof(digest), digest);
    base64_encode_raw(out, sizeof(digest), digest);
    out[28] = '\0';
}

int gw_hexval(char ch)
{
    if (ch >= '0' && ch <= '9') {
        return ch - '0';
    }
    if (ch >= 'a' && ch <= 'f') {
        return ch - 'a' + 10;
    }
    if (ch >= 'A' && ch <= 'F') {
        return ch - 'A' + 10;
    }
    return -1;
}

/* Percent-decode @len bytes of @in into @out (at least @len + 1 bytes). -1 on a bad escape or
 * a NUL. */
static int pct_decode(const char *in, size_t len, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = in[i];
        if (ch == '%') {
            if (i + 2 >= len) {
                return -1;
            }
            int hi = gw_hexval(in[i + 1]);
            int lo = gw_hexval(in[i + 2]);
            if (hi < 0 || lo < 0) {
                return -1;
            }
            ch = (char)(hi * 16 + lo);
            i += 2;
        }
        if (ch == '\0') {
            return -1;
        }
        out[o++] = ch;
    }
    out[o] = '\0';
    return 0;
}

/* Grow *@buf (capacity *@cap) to hold @need bytes, at most @max. -1 when over @max or out of
 * memory. */
static int grow(char **buf, size_t *cap, size_t need, size_t max)
{
    if (need <= *cap) {
        return 0;
    }
    if (need > max) {
        return -1;
    }
    size_t ncap = *cap ? *cap : 1024;
    while (ncap < need) {
        ncap *= 2;
    }
    if (ncap > max) {
        ncap = max;
    }
    char *p = realloc(*buf, ncap);
    if (!p) {
        return -1;
    }
    *buf = p;
    *cap = ncap;
    return 0;
}

/* --- writing ------------------------------------------------------------------------------- */

static void write_cb(uv_write_t *req, int status);

static struct wblock *wblock_new(struct gw_http_conn *c, size_t cap)
{
    struct wblock *b = malloc(sizeof(*b) + cap);
    if (b) {
        b->c = c;
        b->len = 0;
    }
    return b;
}

/* Write @b (freed by write_cb). -1 (and @b freed) when the socket cannot take it. */
static int wblock_submit(struct wblock *b)
{
    struct gw_http_conn *c = b->c;
    uv_buf_t buf = uv_buf_init(b->data, (unsigned)b->len);
    if (c->state == C_CLOSED || uv_write(&b->req, (uv_stream_t *)&c->tcp, &buf, 1, write_cb) < 0) {
        free(b);
        return -1;
    }
    if (c->out_bytes == 0) {
        c->tx_since = uv_now(c->tcp.loop);
    }
    c->out_bytes += b->len;
    return 0;
}

static void write_cb(uv_write_t *req, int status)
{
    struct wblock *b = (struct wblock *)req;
    struct gw_http_conn *c = b->c;
    c->out_bytes -= b->len;
    free(b);
    if (c->state == C_CLOSED) {
        return;
    }
    if (status == 0) {
        c->tx_since = uv_now(c->tcp.loop); /* the peer is taking what is written */
    }
    if (c->state == C_WS && c->ws) {
        if (status < 0) {
            c->ws->dead = true;
        } else {
            bool held = ws_held(c->ws);
            ws_flush(c->ws);
            if (held && !ws_held(c->ws)) {
                (void)uv_idle_start(&c->kick, kick_cb); /* read again (cannot fail) */
            }
        }
        ws_events(c->ws);
        return;
    }
    if (c->state == C_STREAM) {
        if (status < 0) {
            conn_gone(c);
        } else if (c->out_bytes == 0 && c->drain_cb && !c->gone) {
            c->drain_cb(c, c->drain_user);
        }
        return;
    }
    if (status < 0) {
        /* A request with the handler (C_WAIT) is told: it may be waiting for a boot. */
        conn_gone(c);
        return;
    }
    if (c->state == C_HTTP && c->out_bytes < OUT_MAX && (!c->reading || c->pend_len > 0)) {
        /* The client takes its answers again: on to the requests it sent meanwhile. */
        (void)uv_idle_start(&c->kick, kick_cb); /* cannot fail: a live handle, a callback */
    }
}

/* --- connection lifetime ------------------------------------------------------------------- */

static void conn_free(struct gw_http_conn *c)
{
    struct gw_http_server *srv = c->srv;
    if (c->prev) {
        c->prev->next = c->next;
    } else {
        srv->conns = c->next;
    }
    if (c->next) {
        c->next->prev = c->prev;
    }
    free(c->rbuf);
    free(c->pend);
    free(c->hb);
    free(c->body);
    free(c->pathbuf);
    free(c);
    srv->nconns--;
    srv->nclosed--;
    if (srv->closing && srv->nconns == 0 && srv->listener_closed) {
        free(srv);
    }
}

static void conn_close_cb(uv_handle_t *h)
{
    struct gw_http_conn *c = h->data;
    if (--c->handles == 0 && !c->held) {
        conn_free(c);
    }
}

/* The connection sent its first whole request, or is closing: no longer fresh. */
static void conn_unfresh(struct gw_http_conn *c)
{
    if (c->fresh) {
        c->fresh = false;
        c->srv->nfresh--;
    }
}

/* Close the socket now (pending writes are dropped). */
static void conn_close(struct gw_http_conn *c)
{
    if (c->state == C_CLOSED) {
        return;
    }
    conn_unfresh(c);
    c->state = C_CLOSED;
    c->srv->nclosed++;
    uv_close((uv_handle_t *)&c->tcp, conn_close_cb);
    uv_close((uv_handle_t *)&c->timer, conn_close_cb);
    uv_close((uv_handle_t *)&c->kick, conn_close_cb);
}

/* The handler let go of @c's request: close it, or free it if that happened already. */
static void conn_let_go(struct gw_http_conn *c)
{
    c->held = false;
    if (c->state != C_CLOSED) {
        conn_close(c);
    } else if (c->handles == 0) {
        conn_free(c);
    }
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct gw_http_conn *c = h->data;
    buf->base = c->rbuf;
    buf->len = READ_BUF;
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void conn_read(struct gw_http_conn *c, bool on)
{
    if (c->state == C_CLOSED || c->reading == on || (on && c->eof)) {
        return;
    }
    if (on) {
        if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) < 0) {
            conn_close(c);
            return;
        }
    } else {
        (void)uv_read_stop((uv_stream_t *)&c->tcp); /* cannot fail on a TCP handle */
    }
    c->reading = on;
}

static void timer_cb(uv_timer_t *t);

static void conn_timer(struct gw_http_conn *c, uint64_t ms)
{
    if (c->state != C_CLOSED) {
        /* uv_timer_start fails only on a closing handle or without a callback. */
        (void)uv_timer_start(&c->timer, timer_cb, ms, 0);
    }
}

static void shutdown_cb(uv_shutdown_t *req, int status)
{
    struct gw_http_conn *c = req->data;
    if (c->state == C_CLOSED) {
        return;
    }
    if (status < 0 || c->eof) {
        conn_close(c);
    }
}

/* Finish politely: send FIN after what is queued, read and discard until the peer's EOF (so
 * the answer is not lost to a reset), at most LINGER_MS. */
static void conn_linger(struct gw_http_conn *c)
{
    if (c->state == C_CLOSED || c->state == C_LINGER) {
        return;
    }
    c->state = C_LINGER;
    c->shut.data = c;
    if (c->eof || uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, shutdown_cb) < 0) {
        conn_close(c);
        return;
    }
    conn_read(c, true);
    conn_timer(c, LINGER_MS);
}

/* The client went away: tell the handler holding its request, or (without an abandon callback)
 * keep everything until the handler answers. */
static void conn_gone(struct gw_http_conn *c)
{
    if ((c->state == C_WAIT || c->state == C_STREAM) && c->held) {
        if (!c->abandon_cb) {
            c->gone = true;
            conn_read(c, false);
            return;
        }
        void (*cb)(struct gw_http_conn *, void *) = c->abandon_cb;
        c->abandon_cb = NULL;
        c->held = false;
        cb(c, c->abandon_user);
    }
    conn_close(c);
}

/* --- HTTP parsing -------------------------------------------------------------------------- */

static int seg_begin(struct gw_http_conn *c, enum seg_kind kind)
{
    if (c->cur != SEG_NONE) {
        if (grow(&c->hb, &c->hb_cap, c->hb_len + 1, GW_HTTP_HEAD_MAX) < 0) {
            c->err_status = 431;
            c->err_msg = "request head too large";
            return -1;
        }
        c->hb[c->hb_len++] = '\0';
    }
    c->cur = kind;
    struct seg *s = NULL;
    if (kind == SEG_URL) {
        s = &c->url;
    } else if (kind == SEG_FIELD) {
        if (c->nh == GW_HTTP_HEADERS_MAX) {
            c->err_status = 431;
            c->err_msg = "too many headers";
            return -1;
        }
        s = &c->hname[c->nh];
        c->hvalue[c->nh] = (struct seg){ 0, 0 };
        c->nh++;
    } else {
        s = &c->hvalue[c->nh - 1];
    }
    s->off = c->hb_len;
    s->len = 0;
    return 0;
}

static int seg_data(http_parser *p, enum seg_kind kind, const char *at, size_t len)
{
    struct gw_http_conn *c = p->data;
    if (c->head_done) {
        /* Trailer fields after a chunked body: http-parser reports them as header fields, but
         * they are not the request's headers (and their values were never NUL-terminated:
         * a value at the end of the buffer was read past it). Dropped. */
        return 0;
    }
    if (c->cur != kind && seg_begin(c, kind) < 0) {
        return -1;
    }
    if (grow(&c->hb, &c->hb_cap, c->hb_len + len + 1, GW_HTTP_HEAD_MAX) < 0) {
        c->err_status = 431;
        c->err_msg = "request head too large";
        return -1;
    }
    memcpy(c->hb + c->hb_len, at, len);
    c->hb_len += len;
    struct seg *s = kind == SEG_URL     ? &c->url
                    : kind == SEG_FIELD ? &c->hname[c->nh - 1]
                                        : &c->hvalue[c->nh - 1];
    s->len += len;
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    return seg_data(p, SEG_URL, at, len);
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    return seg_data(p, SEG_FIELD, at, len);
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    return seg_data(p, SEG_VALUE, at, len);
}

static int on_headers_complete(http_parser *p)
{
    struct gw_http_conn *c = p->data;
    if (c->cur == SEG_FIELD && seg_begin(c, SEG_VALUE) < 0) {
        return -1; /* an empty value: http-parser need not call on_header_value for it */
    }
    if (grow(&c->hb, &c->hb_cap, c->hb_len + 1, GW_HTTP_HEAD_MAX) < 0) {
        c->err_status = 431;
        c->err_msg = "request head too large";
        return -1;
    }
    c->hb[c->hb_len++] = '\0';
    c->cur = SEG_NONE;
    c->head_done = true;
    if (!(p->flags & F_CHUNKED) && p->content_length != ULLONG_MAX &&
        p->content_length > GW_HTTP_BODY_MAX) {
        c->err_status = 413;
        c->err_msg = "request body too large";
        return -1;
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    struct gw_http_conn *c = p->data;
    if (len > GW_HTTP_BODY_MAX - c->body_len ||
        grow(&c->body, &c->body_cap, c->body_len + len + 1, GW_HTTP_BODY_MAX + 1) < 0) {
        c->err_status = 413;
        c->err_msg = "request body too large";
        return -1;
    }
    memcpy(c->body + c->body_len, at, len);
    c->body_len += len;
    return 0;
}

static int on_message_complete(http_parser *p)
{
    struct gw_http_conn *c = p->data;
    c->keep_alive = http_should_keep_alive(p) != 0;
    c->upgrade = p->upgrade != 0;
    /* Stop here: the handler answers before the next byte is parsed. */
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static void req_reset(struct gw_http_conn *c)
{
    c->cur = SEG_NONE;
    c->head_done = false;
    c->nh = 0;
    c->hb_len = 0;
    c->body_len = 0;
    c->url = (struct seg){ 0, 0 };
    c->err_status = 0;
    c->err_msg = NULL;
    c->abandon_cb = NULL;
    c->abandon_user = NULL;
    c->drain_cb = NULL;
    c->drain_user = NULL;
    c->chunked = false;
    c->stream_close = false;
    free(c->pathbuf);
    c->pathbuf = NULL;
    if (c->hb_cap > (16u << 10)) {
        free(c->hb);
        c->hb = NULL;
        c->hb_cap = 0;
    }
    if (c->body_cap > (16u << 10)) {
        free(c->body);
        c->body = NULL;
        c->body_cap = 0;
    }
    memset(&c->req, 0, sizeof(c->req));
}

/* Fill c->req from what the parser collected. -1 with c->err_* set on a bad URL. */
static int req_build(struct gw_http_conn *c)
{
    struct gw_http_req *r = &c->req;
    const char *url = c->hb + c->url.off;
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (c->url.len == 0 || http_parser_parse_url(url, c->url.len, 0, &u) != 0) {
        c->err_msg = "bad request target";
        return -1;
    }
    const char *path = "/";
    size_t plen = 1;
    if (u.field_set & (1u << UF_PATH)) {
        path = url + u.field_data[UF_PATH].off;
        plen = u.field_data[UF_PATH].len;
    }
    const char *query = "";
    size_t qlen = 0;
    if (u.field_set & (1u << UF_QUERY)) {
        query = url + u.field_data[UF_QUERY].off;
        qlen = u.field_data[UF_QUERY].len;
    }
    c->pathbuf = malloc(plen + qlen + 2);
    if (!c->pathbuf) {
        c->err_status = 500;
        c->err_msg = "out of memory";
        return -1;
    }
    if (pct_decode(path, plen, c->pathbuf) < 0) {
        c->err_msg = "bad percent-encoding in the path";
        return -1;
    }
    char *q = c->pathbuf + strlen(c->pathbuf) + 1;
    memcpy(q, query, qlen);
    q[qlen] = '\0';
    r->method = http_method_str(c->parser.method);
    r->path = c->pathbuf;
    r->query = q;
    for (size_t i = 0; i < c->nh; i++) {
        char *name = c->hb + c->hname[i].off;
        char *value = c->hb + c->hvalue[i].off;
        for (char *p = name; *p; p++) {
            *p = (char)tolower((unsigned char)*p);
        }
        size_t vlen = c->hvalue[i].len;
        while (vlen > 0 && (value[vlen - 1] == ' ' || value[vlen - 1] == '\t')) {
            value[--vlen] = '\0';
        }
        r->headers[i].name = name;
        r->headers[i].value = value;
    }
    r->nheaders = c->nh;
    if (c->body_len == 0 && grow(&c->body, &c->body_cap, 1, GW_HTTP_BODY_MAX + 1) < 0) {
        c->err_status = 500;
        c->err_msg = "out of memory";
        return -1;
    }
    c->body[c->body_len] = '\0';
    r->body = c->body;
    r->body_len = c->body_len;
    const char *upg = gw_http_header(r, "upgrade");
    const char *conn = gw_http_header(r, "connection");
    const char *ver = gw_http_header(r, "sec-websocket-version");
    r->websocket = c->parser.method == HTTP_GET && upg && has_token(upg, "websocket") && conn &&
                   has_token(conn, "upgrade") && ver && strcmp(ver, "13") == 0 &&
                   ws_key_ok(gw_http_header(r, "sec-websocket-key"));
    return 0;
}

static void dispatch(struct gw_http_conn *c)
{
    if (req_build(c) < 0) {
        conn_error(c, c->err_status ? c->err_status : 400, c->err_msg);
        return;
    }
    c->state = C_WAIT;
    c->held = true;
    conn_unfresh(c);
    (void)uv_timer_stop(&c->timer); /* cannot fail */
    c->srv->fn(c, &c->req, c->srv->user);
}

/* Parse @len bytes; returns how many were consumed (the rest follows a complete request). */
static size_t conn_parse(struct gw_http_conn *c, const char *data, size_t len)
{
    size_t n = http_parser_execute(&c->parser, &parser_settings, data, len);
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    if (e == HPE_PAUSED) {
        dispatch(c);
        return n;
    }
    if (e != HPE_OK) {
        int status = c->err_status ? c->err_status : (e == HPE_HEADER_OVERFLOW ? 431 : 400);
        const char *msg = c->err_msg ? c->err_msg : http_errno_description(e);
        conn_error(c, status, msg);
        return len;
    }
    return n;
}

static int pend_append(struct gw_http_conn *c, const char *data, size_t len)
{
    if (grow(&c->pend, &c->pend_cap, c->pend_len + len, PEND_MAX + READ_BUF) < 0) {
        return -1;
    }
    memcpy(c->pend + c->pend_len, data, len);
    c->pend_len += len;
    return 0;
}

static void conn_process_pending(struct gw_http_conn *c)
{
    /* Answers the client does not take stop the next requests (write_cb resumes). */
    while (c->state == C_HTTP && c->pend_len > 0 && c->out_bytes < OUT_MAX) {
        c->in_parse = true;
        size_t n = conn_parse(c, c->pend, c->pend_len);
        c->in_parse = false;
        if (c->state == C_LINGER || c->state == C_CLOSED) {
            c->pend_len = 0;
            break;
        }
        memmove(c->pend, c->pend + n, c->pend_len - n);
        c->pend_len -= n;
    }
    conn_after_parse(c);
}

/* Read or not, and hand bytes on, according to the state parsing left. */
static void conn_after_parse(struct gw_http_conn *c)
{
    switch (c->state) {
    case C_HTTP:
        conn_read(c, c->out_bytes < OUT_MAX);
        break;
    case C_WAIT:
    case C_STREAM:
        /* Keep reading to notice a client that gives up (and to keep the first frames after an
         * upgrade request, or a pipelined request), up to a point. */
        conn_read(c, c->pend_len < PEND_MAX);
        break;
    case C_WS:
        (void)uv_idle_start(&c->kick, kick_cb); /* cannot fail: a live handle, a callback */
        break;
    default:
        break;
    }
}

static void kick_cb(uv_idle_t *h)
{
    struct gw_http_conn *c = h->data;
    (void)uv_idle_stop(h); /* cannot fail */
    if (c->state == C_HTTP) {
        conn_process_pending(c);
    } else if (c->state == C_WS && c->ws) {
        struct gw_ws *ws = c->ws;
        if (!ws->dead && !ws_held(ws) && c->pend_len > 0) {
            ws_feed(ws, (const uint8_t *)c->pend, c->pend_len);
            return;
        }
        if (!ws->dead && !ws_held(ws)) {
            conn_read(c, true);
        }
        ws_events(ws);
    }
}

static void http_read(struct gw_http_conn *c, const char *data, size_t len)
{
    if (c->state == C_WAIT || c->state == C_STREAM || (c->state == C_HTTP && c->pend_len > 0)) {
        /* Behind bytes already held: keep the order. */
        if (pend_append(c, data, len) < 0) {
            conn_gone(c);
            return;
        }
        if (c->state == C_HTTP) {
            conn_process_pending(c);
        } else {
            conn_after_parse(c);
        }
        return;
    }
    if (c->state != C_HTTP) {
        return; /* lingering: discard */
    }
    c->in_parse = true;
    size_t n = conn_parse(c, data, len);
    c->in_parse = false;
    if (n < len &&
        (c->state == C_HTTP || c->state == C_WAIT || c->state == C_STREAM || c->state == C_WS)) {
        if (pend_append(c, data + n, len - n) < 0) {
            /* Out of memory: drop the client, telling whoever holds its request. */
            if (c->state == C_WS && c->ws) {
                c->ws->dead = true;
                ws_events(c->ws);
            } else {
                conn_gone(c);
            }
            return;
        }
    }
    if (c->state == C_HTTP && c->pend_len > 0) {
        conn_process_pending(c);
    } else {
        conn_after_parse(c);
    }
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct gw_http_conn *c = s->data;
    if (nread == 0 || c->state == C_CLOSED) {
        return;
    }
    if (nread < 0) {
        c->eof = true;
        c->reading = false;
        (void)uv_read_stop(s); /* cannot fail */
        if (c->state == C_WS && c->ws) {
            c->ws->dead = true;
            ws_events(c->ws);
        } else if (c->state == C_WAIT || c->state == C_STREAM) {
            conn_gone(c);
        } else {
            conn_close(c);
        }
        return;
    }
    if (c->state == C_WS && c->ws) {
        if (c->pend_len > 0) {
            /* Bytes from before the upgrade go first. */
            if (pend_append(c, buf->base, (size_t)nread) < 0) {
                c->ws->dead = true;
                ws_events(c->ws);
                return;
            }
            conn_read(c, false);
            if (!ws_held(c->ws)) {
                ws_feed(c->ws, (const uint8_t *)c->pend, c->pend_len);
            }
            return;
        }
        ws_feed(c->ws, (const uint8_t *)buf->base, (size_t)nread);
        return;
    }
    http_read(c, buf->base, (size_t)nread);
}

/* --- answers ------------------------------------------------------------------------------- */

static bool header_given(const char *const *headers, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; headers && headers[i]; i++) {
        if (strncasecmp(headers[i], name, n) == 0 && headers[i][n] == ':') {
            return true;
        }
    }
    return false;
}

/* A head + body in one block: the status line, @extra (preformatted lines), the caller's
 * headers (lines with CR or LF are dropped), then @body. */
static struct wblock *build_answer(struct gw_http_conn *c, int status, const char *extra,
                                   const char *const *headers, const char *body, size_t len)
{
    size_t size = 64 + strlen(extra) + len;
    for (size_t i = 0; headers && headers[i]; i++) {
        size += strlen(headers[i]) + 2;
    }
    struct wblock *b = wblock_new(c, size);
    if (!b) {
        return NULL;
    }
    int n = snprintf(b->data, size, "HTTP/1.1 %d %s\r\n%s", status, status_text(status), extra);
    if (n < 0 || (size_t)n >= size) {
        free(b);
        return NULL;
    }
    b->len = (size_t)n;
    for (size_t i = 0; headers && headers[i]; i++) {
        if (strpbrk(headers[i], "\r\n")) {
            continue;
        }
        size_t hl = strlen(headers[i]);
        memcpy(b->data + b->len, headers[i], hl);
        memcpy(b->data + b->len + hl, "\r\n", 2);
        b->len += hl + 2;
    }
    memcpy(b->data + b->len, "\r\n", 2);
    b->len += 2;
    if (len > 0) {
        memcpy(b->data + b->len, body, len);
        b->len += len;
    }
    return b;
}

static void answered(struct gw_http_conn *c, bool close);

static void respond(struct gw_http_conn *c, int status, const char *const *headers,
                    const char *body, size_t len, bool close)
{
    char extra[192];
    bool json = len > 0 && (body[0] == '{' || body[0] == '[');
    snprintf(extra, sizeof(extra), "%sContent-Length: %zu\r\n%s",
             json && !header_given(headers, "content-type") ? "Content-Type: application/json\r\n"
                                                            : "",
             len, close ? "Connection: close\r\n" : "");
    struct wblock *b = build_answer(c, status, extra, headers, body, len);
    if (!b || wblock_submit(b) < 0) {
        conn_close(c);
        return;
    }
    answered(c, close);
}

/* The answer is queued: close politely, or read the next request. */
static void answered(struct gw_http_conn *c, bool close)
{
    if (close) {
        conn_linger(c);
        return;
    }
    c->state = C_HTTP;
    req_reset(c);
    http_parser_pause(&c->parser, 0);
    conn_timer(c, GW_HTTP_IDLE_MS);
    if (!c->in_parse && uv_idle_start(&c->kick, kick_cb) < 0) {
        conn_close(c);
    }
}

/* Answer a request we refuse ourselves, and close. */
static void conn_error(struct gw_http_conn *c, int status, const char *msg)
{
    json_t *j = json_pack("{s:s, s:s}", "code",
                          status == 413   ? "PAYLOAD_TOO_LARGE"
                          : status == 431 ? "HEADERS_TOO_LARGE"
                          : status >= 500 ? "INTERNAL"
                                          : "BAD_REQUEST",
                          "message", msg ? msg : "bad request");
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    respond(c, status, NULL, text ? text : "", text ? strlen(text) : 0, true);
    free(text);
}

const char *gw_http_header(const struct gw_http_req *req, const char *name)
{
    for (size_t i = 0; i < req->nheaders; i++) {
        if (strcasecmp(req->headers[i].name, name) == 0) {
            return req->headers[i].value;
        }
    }
    return NULL;
}

/* Answered after the client went away (no abandon callback was set): just let go. */
static bool answer_dropped(struct gw_http_conn *c)
{
    if (c->gone || c->state != C_WAIT) {
        conn_let_go(c);
        return true;
    }
    c->held = false;
    return false;
}

void gw_http_respond(struct gw_http_conn *hc, int status, const char *const *headers,
                     const char *body, size_t len)
{
    if (answer_dropped(hc)) {
        return;
    }
    /* A refused credential closes the connection: only clients with the token keep one open
     * (the fresh-connection pool below bounds everyone else). */
    bool close =
        !hc->keep_alive || hc->upgrade || hc->srv->closing || status == 401 || status == 403;
    respond(hc, status, headers, body ? body : "", body ? len : 0, close);
}

void gw_http_respond_json(struct gw_http_conn *hc, int status, const char *const *headers,
                          json_t *body)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (!text) {
        static const char fail[] = "{\"code\":\"INTERNAL\",\"message\":\"cannot encode JSON\"}";
        gw_http_respond(hc, 500, NULL, fail, sizeof(fail) - 1);
        return;
    }
    gw_http_respond(hc, status, headers, text, strlen(text));
    free(text);
}

void gw_http_on_abandon(struct gw_http_conn *hc, void (*cb)(struct gw_http_conn *hc, void *user),
                        void *user)
{
    hc->abandon_cb = cb;
    hc->abandon_user = user;
}

/* --- streamed answers ---------------------------------------------------------------------- */

int gw_http_stream_start(struct gw_http_conn *hc, int status, const char *const *headers)
{
    if (hc->gone || hc->state != C_WAIT) {
        return -1;
    }
    bool http11 =
        hc->parser.http_major > 1 || (hc->parser.http_major == 1 && hc->parser.http_minor >= 1);
    /* Without chunked framing the end of the body is the end of the connection. */
    bool close = !http11 || !hc->keep_alive || hc->upgrade || hc->srv->closing;
    char extra[96];
    snprintf(extra, sizeof(extra), "%s%s", http11 ? "Transfer-Encoding: chunked\r\n" : "",
             close ? "Connection: close\r\n" : "");
    struct wblock *b = build_answer(hc, status, extra, headers, NULL, 0);
    if (!b || wblock_submit(b) < 0) {
        hc->gone = true;
        return -1;
    }
    hc->state = C_STREAM;
    hc->chunked = http11;
    hc->stream_close = close;
    conn_timer(hc, GW_WS_DEAD_MS); /* timer_stream */
    return 0;
}

int gw_http_stream_write(struct gw_http_conn *hc, const void *data, size_t len)
{
    if (hc->gone || hc->state != C_STREAM) {
        return -1;
    }
    if (len == 0) {
        return 0; /* an empty chunk would end the body */
    }
    struct wblock *b = wblock_new(hc, len + 32);
    if (!b) {
        hc->gone = true;
        return -1;
    }
    if (hc->chunked) {
        b->len = (size_t)snprintf(b->data, 32, "%zx\r\n", len);
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    if (hc->chunked) {
        memcpy(b->data + b->len, "\r\n", 2);
        b->len += 2;
    }
    if (wblock_submit(b) < 0) {
        hc->gone = true;
        return -1;
    }
    return 0;
}

size_t gw_http_stream_queued(const struct gw_http_conn *hc)
{
    return hc->out_bytes;
}

void gw_http_on_drain(struct gw_http_conn *hc, void (*cb)(struct gw_http_conn *hc, void *user),
                      void *user)
{
    hc->drain_cb = cb;
    hc->drain_user = user;
}

void gw_http_stream_end(struct gw_http_conn *hc)
{
    if (hc->state != C_STREAM || hc->gone) {
        conn_let_go(hc); /* never started, or the client is gone */
        return;
    }
    hc->held = false;
    hc->drain_cb = NULL;
    if (hc->chunked) {
        struct wblock *b = wblock_new(hc, 5);
        if (!b) {
            conn_close(hc);
            return;
        }
        memcpy(b->data, "0\r\n\r\n", 5);
        b->len = 5;
        if (wblock_submit(b) < 0) {
            conn_close(hc);
            return;
        }
    }
    answered(hc, hc->stream_close);
}

/* --- server -------------------------------------------------------------------------------- */

static void timer_ws(struct gw_http_conn *c);

/* A streamed answer whose client took none of what waits for it for GW_WS_DEAD_MS (gone without
 * a FIN, or reading nothing: an SSE watcher that never reads held its slot and its connection
 * for as long as it liked): the handler is told (its abandon callback) and the connection goes. */
static void timer_stream(struct gw_http_conn *c)
{
    uint64_t stuck = c->out_bytes > 0 ? uv_now(c->tcp.loop) - c->tx_since : 0;

    if (stuck >= GW_WS_DEAD_MS) {
        conn_gone(c);
        return;
    }
    conn_timer(c, GW_WS_DEAD_MS - stuck);
}

static void timer_cb(uv_timer_t *t)
{
    struct gw_http_conn *c = t->data;
    switch (c->state) {
    case C_HTTP:
    case C_LINGER:
        conn_close(c);
        break;
    case C_WS:
        timer_ws(c);
        break;
    case C_STREAM:
        timer_stream(c);
        break;
    default:
        break;
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    struct gw_http_server *srv = server->data;
    if (status < 0 || srv->closing) {
        return;
    }
    struct gw_http_conn *c = calloc(1, sizeof(*c));
    if (!c) {
        return;
    }
    c->srv = srv;
    c->rbuf = malloc(READ_BUF);
    if (!c->rbuf || uv_tcp_init(srv->loop, &c->tcp) < 0) {
        free(c->rbuf);
        free(c);
        return;
    }
    /* From here the struct is freed by the close callbacks. */
    c->tcp.data = c->timer.data = c->kick.data = c;
    c->handles = 3;
    (void)uv_timer_init(srv->loop, &c->timer); /* cannot fail */
    (void)uv_idle_init(srv->loop, &c->kick);   /* cannot fail */
    c->next = srv->conns;
    if (c->next) {
        c->next->prev = c;
    }
    srv->conns = c;
    srv->nconns++;
    c->state = C_HTTP;
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    if (srv->nconns - srv->nclosed > GW_HTTP_CONNS_MAX) {
        /* At the cap, a connection that was answered and only waits for its peer's EOF goes
         * first (the oldest): a flood of requests that each linger cannot lock clients out. */
        struct gw_http_conn *old = NULL;
        for (struct gw_http_conn *o = c->next; o != NULL; o = o->next) {
            if (o->state == C_LINGER) {
                old = o; /* the list is newest first */
            }
        }
        if (old != NULL) {
            conn_close(old);
        }
    }
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0 ||
        srv->nconns - srv->nclosed > GW_HTTP_CONNS_MAX ||
        srv->nconns > GW_HTTP_CONNS_MAX + CLOSING_SLACK) {
        conn_close(c);
        return;
    }
    /* Connections that have not sent a request yet share a small pool: when it is full the
     * oldest of them goes, so idle or slow connections cannot lock clients out (each also has
     * only GW_HTTP_FIRST_MS to send its first request). */
    if (srv->nfresh >= GW_HTTP_FRESH_MAX) {
        struct gw_http_conn *old = NULL;
        for (struct gw_http_conn *o = c->next; o != NULL; o = o->next) {
            if (o->fresh) {
                old = o; /* the list is newest first: the last fresh one is the oldest */
            }
        }
        if (old != NULL) {
            conn_close(old);
        }
    }
    c->fresh = true;
    srv->nfresh++;
    (void)uv_tcp_nodelay(&c->tcp, 1); /* latency only */
    conn_timer(c, GW_HTTP_FIRST_MS);
    conn_read(c, true);
}

static void listener_fail_cb(uv_handle_t *h)
{
    free(h->data);
}

struct gw_http_server *gw_http_listen(uv_loop_t *loop, const char *addr, gw_http_handler_fn fn,
                                      void *user, char *errbuf, size_t errlen)
{
    char host[256];
    const char *colon = strrchr(addr, ':');
    struct sockaddr_storage ss;
    if (!colon || (size_t)(colon - addr) >= sizeof(host)) {
        snprintf(errbuf, errlen, "bad listen address '%s' (HOST:PORT)", addr);
        return NULL;
    }
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    char *end = NULL;
    long port = strtol(colon + 1, &end, 10);
    if (!colon[1] || *end || port < 0 || port > 65535) {
        snprintf(errbuf, errlen, "bad port in '%s'", addr);
        return NULL;
    }
    int r;
    size_t hl = strlen(host);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
        host[hl - 1] = '\0';
        r = uv_ip6_addr(host + 1, (int)port, (struct sockaddr_in6 *)&ss);
    } else {
        r = uv_ip4_addr(host, (int)port, (struct sockaddr_in *)&ss);
    }
    if (r < 0) {
        snprintf(errbuf, errlen, "bad address '%s': %s", addr, uv_strerror(r));
        return NULL;
    }
    struct gw_http_server *srv = calloc(1, sizeof(*srv));
    if (!srv) {
        snprintf(errbuf, errlen, "out of memory");
        return NULL;
    }
    srv->loop = loop;
    srv->fn = fn;
    srv->user = user;
    if ((r = uv_tcp_init(loop, &srv->tcp)) < 0) {
        snprintf(errbuf, errlen, "tcp: %s", uv_strerror(r));
        free(srv);
        return NULL;
    }
    srv->tcp.data = srv;
    if ((r = uv_tcp_bind(&srv->tcp, (struct sockaddr *)&ss, 0)) < 0 ||
        (r = uv_listen((uv_stream_t *)&srv->tcp, 128, on_connection)) < 0) {
        snprintf(errbuf, errlen, "listen on %s: %s", addr, uv_strerror(r));
        srv->closing = true;
        uv_close((uv_handle_t *)&srv->tcp, listener_fail_cb);
        return NULL;
    }
    return srv;
}

int gw_http_port(const struct gw_http_server *srv)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getsockname(&srv->tcp, (struct sockaddr *)&ss, &len) < 0) {
        return -1;
    }
    if (ss.ss_family == AF_INET6) {
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void listener_close_cb(uv_handle_t *h)
{
    struct gw_http_server *srv = h->data;
    srv->listener_closed = true;
    if (srv->nconns == 0) {
        free(srv);
    }
}

void gw_http_close(struct gw_http_server *srv)
{
    if (srv->closing) {
        return;
    }
    srv->closing = true;
    struct gw_http_conn *next = NULL;
    for (struct gw_http_conn *c = srv->conns; c; c = next) {
        next = c->next;
        if (c->state == C_WS && c->ws) {
            gw_ws_close(c->ws, 1001, "going away");
        } else if (c->state == C_WAIT || c->state == C_STREAM) {
            if (c->abandon_cb) {
                conn_gone(c);
            } /* else: answered later, then closed (srv->closing) */
        } else {
            conn_close(c);
        }
    }
    uv_close((uv_handle_t *)&srv->tcp, listener_close_cb);
}

/* --- WebSocket ----------------------------------------------------------------------------- */

/* How many of @n bytes at @p belong to the current frame (RFC 6455 5.2), advancing the
 * tracker; stops at the frame's end. */
static size_t ws_frame_take(struct gw_ws *ws, const uint8_t *p, size_t n)
{
    size_t give = 0;
    while (give < n) {
        if (ws->hdr_have < ws->hdr_need) {
            size_t take = ws->hdr_need - ws->hdr_have;
            if (take > n - give) {
                take = n - give;
            }
            memcpy(ws->hdr + ws->hdr_have, p + give, take);
            ws->hdr_have += take;
            give += take;
            if (ws->hdr_have == 2 && ws->hdr_need == 2) {
                uint8_t l7 = ws->hdr[1] & 0x7f;
                ws->hdr_need = 2 +
                               (l7 == 126   ? 2
                                : l7 == 127 ? 8
                                            : 0) +
                               (ws->hdr[1] & 0x80 ? 4 : 0);
            }
            if (ws->hdr_have < ws->hdr_need) {
                continue;
            }
            uint8_t l7 = ws->hdr[1] & 0x7f;
            uint64_t plen = l7;
            if (l7 >= 126) {
                plen = 0;
                for (size_t i = 0; i < (l7 == 126 ? 2u : 8u); i++) {
                    plen = plen << 8 | ws->hdr[2 + i];
                }
            }
            ws->payload_left = plen;
        } else {
            uint64_t take = ws->payload_left;
            if (take > n - give) {
                take = n - give;
            }
            give += (size_t)take;
            ws->payload_left -= take;
        }
        if (ws->payload_left == 0) {
            ws->hdr_have = 0;
            ws->hdr_need = 2;
            break;
        }
    }
    return give;
}

static ssize_t ws_recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                          void *user)
{
    struct gw_ws *ws = user;
    if (ws_held(ws) || ws->in_off >= ws->in_len) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    size_t n = ws->in_len - ws->in_off;
    if (n > len) {
        n = len;
    }
    n = ws_frame_take(ws, ws->in + ws->in_off, n);
    memcpy(buf, ws->in + ws->in_off, n);
    ws->in_off += n;
    return (ssize_t)n;
}

static ssize_t ws_send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                          void *user)
{
    struct gw_ws *ws = user;
    struct gw_http_conn *c = ws->c;
    if (!ws->out_cur) {
        if (c->out_bytes >= OUT_MAX) {
            wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
            return -1;
        }
        ws->out_cur = wblock_new(c, OUT_BLOCK);
        if (!ws->out_cur) {
            wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
            return -1;
        }
    }
    size_t n = OUT_BLOCK - ws->out_cur->len;
    if (n > len) {
        n = len;
    }
    memcpy(ws->out_cur->data + ws->out_cur->len, data, n);
    ws->out_cur->len += n;
    if (ws->out_cur->len == OUT_BLOCK) {
        struct wblock *b = ws->out_cur;
        ws->out_cur = NULL;
        if (wblock_submit(b) < 0) {
            ws->dead = true;
            wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
            return -1;
        }
    }
    return (ssize_t)n;
}

static void ws_frame_start_cb(wslay_event_context_ptr ctx,
                              const struct wslay_event_on_frame_recv_start_arg *arg, void *user)
{
    struct gw_ws *ws = user;
    ws->frame_ctrl = (arg->opcode & 0x8) != 0;
    if (arg->opcode == WSLAY_PING) {
        ws->pongs_owed++; /* wslay queues its pong */
    }
    if (!ws->frame_ctrl && !ws->msg_fail &&
        arg->payload_length > (uint64_t)GW_WS_MSG_MAX - ws->msg_len) {
        /* A fragmented message over the cap (wslay checks single frames). */
        ws->msg_fail = true;
        /* Fails only when a close is already queued. */
        (void)wslay_event_queue_close(ctx, WSLAY_CODE_MESSAGE_TOO_BIG, NULL, 0);
        wslay_event_shutdown_read(ctx);
    }
}

static void ws_frame_chunk_cb(wslay_event_context_ptr ctx,
                              const struct wslay_event_on_frame_recv_chunk_arg *arg, void *user)
{
    struct gw_ws *ws = user;
    if (ws->frame_ctrl || ws->msg_fail || arg->data_length == 0) {
        return;
    }
    if (grow(&ws->msg, &ws->msg_cap, ws->msg_len + arg->data_length + 1, GW_WS_MSG_MAX + 1) < 0) {
        /* Out of memory (the cap was checked at the frame's start). */
        ws->msg_fail = true;
        /* Fails only when a close is already queued. */
        (void)wslay_event_queue_close(ctx, WSLAY_CODE_INTERNAL_SERVER_ERROR, NULL, 0);
        wslay_event_shutdown_read(ctx);
        return;
    }
    memcpy(ws->msg + ws->msg_len, arg->data, arg->data_length);
    ws->msg_len += arg->data_length;
}

static void ws_msg_cb(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                      void *user)
{
    struct gw_ws *ws = user;
    if (arg->opcode == WSLAY_CONNECTION_CLOSE) {
        size_t n = arg->msg_length > 2 ? arg->msg_length - 2 : 0;
        if (n > WS_REASON_MAX) {
            n = WS_REASON_MAX;
        }
        if (n > 0) {
            memcpy(ws->reason, arg->msg + 2, n);
        }
        ws->reason[n] = '\0';
        return;
    }
    if (arg->opcode != WSLAY_TEXT_FRAME && arg->opcode != WSLAY_BINARY_FRAME) {
        return; /* ping (wslay answers it) or pong */
    }
    if (ws->msg_fail) {
        return;
    }
    if (!ws->msg && grow(&ws->msg, &ws->msg_cap, 1, GW_WS_MSG_MAX + 1) < 0) {
        ws->dead = true;
        return;
    }
    ws->msg[ws->msg_len] = '\0';
    size_t len = ws->msg_len;
    ws->msg_len = 0;
    if (!ws->user_closing && !ws->dead && ws->ops.on_message) {
        ws->ops.on_message(ws, ws->msg, len, ws->user);
    }
    if (ws->msg_cap > (1u << 20)) {
        free(ws->msg);
        ws->msg = NULL;
        ws->msg_cap = 0;
    }
}

static const struct wslay_event_callbacks ws_callbacks = {
    .recv_callback = ws_recv_cb,
    .send_callback = ws_send_cb,
    .on_frame_recv_start_callback = ws_frame_start_cb,
    .on_frame_recv_chunk_callback = ws_frame_chunk_cb,
    .on_msg_recv_callback = ws_msg_cb,
};

/* Move what wslay has queued into write blocks (no user callbacks). */
static void ws_flush(struct gw_ws *ws)
{
    if (ws->finished || ws->dead || ws->in_recv) {
        return;
    }
    int r = wslay_event_send(ws->ctx);
    if (r != 0) {
        ws->dead = true;
    }
    if (wslay_event_get_queued_msg_count(ws->ctx) == 0) {
        ws->pongs_owed = 0; /* every pong went out (into a block) */
    }
    if (ws->out_cur && ws->out_cur->len > 0) {
        struct wblock *b = ws->out_cur;
        ws->out_cur = NULL;
        if (wblock_submit(b) < 0) {
            ws->dead = true;
        }
    }
}

/* on_close, free @ws, and let the socket go. */
static void ws_finish(struct gw_ws *ws, uint16_t code)
{
    struct gw_http_conn *c = ws->c;
    bool dead = ws->dead;
    ws->finished = true;
    if (ws->ops.on_close) {
        ws->ops.on_close(ws, code, ws->reason, ws->user);
    }
    c->ws = NULL;
    wslay_event_context_free(ws->ctx);
    free(ws->out_cur);
    free(ws->msg);
    free(ws);
    if (c->eof || dead) {
        conn_close(c);
    } else {
        conn_linger(c);
    }
}

/* Drain notifications and the end of the WebSocket; only from our own libuv callbacks. */
static void ws_events(struct gw_ws *ws)
{
    if (ws->in_events || ws->finished) {
        return;
    }
    ws->in_events = true;
    for (;;) {
        size_t q = gw_ws_queued(ws);
        if (q > GW_WS_HIGH) {
            ws->was_high = true;
        } else if (ws->was_high && q <= GW_WS_LOW && !ws->dead && !ws->user_closing) {
            ws->was_high = false;
            if (ws->ops.on_drain) {
                ws->ops.on_drain(ws, ws->user);
            }
            ws_flush(ws);
            continue;
        }
        break;
    }
    ws->in_events = false;
    wslay_event_context_ptr ctx = ws->ctx;
    bool sent = wslay_event_get_close_sent(ctx) != 0;
    bool rcvd = wslay_event_get_close_received(ctx) != 0;
    uint16_t code = rcvd   ? wslay_event_get_status_code_received(ctx)
                    : sent ? wslay_event_get_status_code_sent(ctx)
                           : 1006;
    if (ws->dead) {
        ws_finish(ws, code);
    } else if (sent && (rcvd || !wslay_event_get_read_enabled(ctx)) && ws->c->out_bytes == 0) {
        ws_finish(ws, code);
    } else if ((sent || rcvd) && !ws->close_timer) {
        /* Our close frame, or the answer to the peer's, may wait behind output the peer does
         * not take: either way the end is at most WS_CLOSE_MS away. */
        ws->close_timer = true;
        conn_timer(ws->c, WS_CLOSE_MS);
    }
}

static void ws_feed(struct gw_ws *ws, const uint8_t *data, size_t len)
{
    struct gw_http_conn *c = ws->c;
    if (wslay_event_get_read_enabled(ws->ctx)) {
        /* After the peer's close frame nothing it sends counts as life (WS_CLOSE_MS does). */
        ws->last_rx = uv_now(c->tcp.loop);
        ws->pinged = false;
    }
    ws->in = data;
    ws->in_len = len;
    ws->in_off = 0;
    ws->in_recv = true;
    int r = wslay_event_recv(ws->ctx);
    ws->in_recv = false;
    if (r != 0) {
        ws->dead = true;
    }
    size_t left = ws->in_len - ws->in_off;
    if (left > 0 && ws->in_off == 0 && !ws_held(ws) && !ws->dead &&
        wslay_event_get_read_enabled(ws->ctx)) {
        ws->dead = true; /* no progress without a pause: never spin */
    }
    if (!wslay_event_get_read_enabled(ws->ctx)) {
        /* Refused (1002, 1009) or closed by the peer: nothing more is framed. */
        c->pend_len = 0;
    } else if ((const char *)data == c->pend) {
        memmove(c->pend, c->pend + ws->in_off, left);
        c->pend_len = left;
    } else if (left > 0 && !ws->dead && pend_append(c, (const char *)data + ws->in_off, left) < 0) {
        ws->dead = true;
    }
    ws->in = NULL;
    ws->in_len = ws->in_off = 0;
    ws_flush(ws);
    if (!ws->dead) {
        conn_read(c, !ws_held(ws) && c->pend_len == 0);
        if (!ws_held(ws) && c->pend_len > 0 && uv_idle_start(&c->kick, kick_cb) < 0) {
            ws->dead = true;
        }
    }
    ws_events(ws);
}

/* Nothing more is read from the peer: its user paused it, or the pongs to its pings wait
 * behind output it does not take (wslay would queue one per ping, without bound). */
static bool ws_held(const struct gw_ws *ws)
{
    return ws->paused || ws->pongs_owed >= WS_PONGS_MAX;
}

static void timer_ws(struct gw_http_conn *c)
{
    struct gw_ws *ws = c->ws;
    if (!ws) {
        conn_close(c);
        return;
    }
    if (ws->close_timer) {
        /* The peer never answered our close frame. */
        ws->dead = true;
        ws_events(ws);
        return;
    }
    uint64_t now = uv_now(c->tcp.loop);
    if (ws->paused) {
        /* Nothing is read while paused (the user's back-pressure): the peer's frames, its pongs
         * included, wait in the socket, so its silence tells nothing (gw_ws_pause stops that
         * clock). Whether it takes what is written to it does: bytes that have not moved for
         * GW_WS_DEAD_MS mean a peer that is gone or stuck. */
        uint64_t stuck = c->out_bytes > 0 ? now - c->tx_since : 0;
        if (stuck >= GW_WS_DEAD_MS) {
            ws->dead = true;
            ws_events(ws);
            return;
        }
        conn_timer(c, c->out_bytes > 0 && GW_WS_DEAD_MS - stuck < GW_WS_PING_MS
                          ? GW_WS_DEAD_MS - stuck
                          : GW_WS_PING_MS);
        return;
    }
    uint64_t idle = now - ws->last_rx;
    if (idle >= GW_WS_DEAD_MS) {
        ws->dead = true;
        ws_events(ws);
        return;
    }
    if (idle < GW_WS_PING_MS) {
        conn_timer(c, GW_WS_PING_MS - idle);
        return;
    }
    if (!ws->pinged) {
        struct wslay_event_msg ping = { WSLAY_PING, (const uint8_t *)"", 0 };
        ws->pinged = true;
        if (wslay_event_queue_msg(ws->ctx, &ping) == 0) {
            ws_flush(ws);
        }
    }
    conn_timer(c, GW_WS_DEAD_MS - idle);
    ws_events(ws);
}

struct gw_ws *gw_http_upgrade(struct gw_http_conn *hc, const char *const *headers,
                              const struct gw_ws_ops *ops, void *user)
{
    bool gone = hc->gone;
    if (hc->state == C_CLOSED) {
        /* The socket failed while the request was held (a write, or the server closing). */
        conn_let_go(hc);
        return NULL;
    }
    hc->held = false;
    if (!gone && !hc->req.websocket) {
        conn_error(hc, 400, "not a WebSocket upgrade"); /* the caller's mistake, answered */
        return NULL;
    }
    struct gw_ws *ws = calloc(1, sizeof(*ws));
    if (ws && wslay_event_context_server_init(&ws->ctx, &ws_callbacks, ws) != 0) {
        free(ws);
        ws = NULL;
    }
    if (!ws) {
        /* Out of memory: the answer is a closed connection. */
        conn_close(hc);
        return NULL;
    }
    ws->c = hc;
    ws->ops = *ops;
    ws->user = user;
    wslay_event_config_set_no_buffering(ws->ctx, 1);
    ws->hdr_need = 2;
    wslay_event_config_set_max_recv_msg_length(ws->ctx, GW_WS_MSG_MAX);
    hc->ws = ws;
    if (gone) {
        /* The client left before the answer: on_close(1006) from the loop. */
        ws->dead = true;
        hc->state = C_WS;
        req_reset(hc);
        (void)uv_idle_start(&hc->kick, kick_cb); /* cannot fail on a live idle handle */
        return ws;
    }
    const char *key = gw_http_header(&hc->req, "sec-websocket-key");
    char accept[29];
    ws_accept_key(key ? key : "", accept);
    char extra[160];
    snprintf(extra, sizeof(extra),
             "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n", accept);
    struct wblock *b = build_answer(hc, 101, extra, headers, NULL, 0);
    hc->state = C_WS;
    req_reset(hc);
    conn_read(hc, false); /* kick_cb feeds what is held first, then reads */
    ws->last_rx = uv_now(hc->tcp.loop);
    conn_timer(hc, GW_WS_PING_MS);
    if (!b || wblock_submit(b) < 0) {
        ws->dead = true;
    }
    /* Bytes after the head (early frames) and the reading itself start from the loop. */
    if (uv_idle_start(&hc->kick, kick_cb) < 0) {
        ws->dead = true;
    }
    return ws;
}

int gw_ws_send_text(struct gw_ws *ws, const char *data, size_t len)
{
    if (ws->finished || ws->dead || ws->user_closing) {
        return -1;
    }
    struct wslay_event_msg msg = { WSLAY_TEXT_FRAME, (const uint8_t *)data, len };
    if (wslay_event_queue_msg(ws->ctx, &msg) != 0) {
        return -1;
    }
    if (gw_ws_queued(ws) > GW_WS_HIGH) {
        ws->was_high = true;
    }
    ws_flush(ws);
    return 0;
}

size_t gw_ws_queued(const struct gw_ws *ws)
{
    if (ws->finished) {
        return 0;
    }
    return wslay_event_get_queued_msg_length(ws->ctx) + ws->c->out_bytes +
           (ws->out_cur ? ws->out_cur->len : 0);
}

void gw_ws_pause(struct gw_ws *ws, bool paused)
{
    if (ws->finished || ws->paused == paused) {
        return;
    }
    ws->paused = paused;
    struct gw_http_conn *c = ws->c;
    uint64_t now = uv_now(c->tcp.loop);
    if (paused) {
        ws->paused_at = now;
        conn_read(c, false);
        return;
    }
    /* The time paused does not count toward the peer's silence (timer_ws). */
    if (ws->last_rx < ws->paused_at) {
        ws->last_rx += now - ws->paused_at;
    }
    if (!ws->dead && uv_idle_start(&c->kick, kick_cb) < 0) {
        ws->dead = true;
    }
}

/*
 * Copy @in into @out (at most WS_REASON_MAX bytes and a NUL) as valid UTF-8: a close reason must
 * be UTF-8 (RFC 6455 5.5.1; a strict client fails the close with 1007), and ours may quote text
 * from a guest's console. Invalid bytes become '?'; a character that does not fit is left out
 * whole. Returns the length.
 */
static size_t reason_utf8(const char *in, char out[WS_REASON_MAX + 1])
{
    const char *p = in != NULL ? in : "";
    size_t left = strlen(p), o = 0;

    while (left > 0) {
        unsigned char c = (unsigned char)*p;
        /* The length its lead byte announces, checked by the protocol's own validator. */
        size_t len = c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
        bool ok = len <= left && sbx_utf8_valid(p, len);

        if (o + (ok ? len : 1) > WS_REASON_MAX) {
            break;
        }
        if (!ok) {
            out[o++] = '?';
            p++;
            left--;
            continue;
        }
        memcpy(out + o, p, len);
        o += len;
        p += len;
        left -= len;
    }
    out[o] = '\0';
    return o;
}

void gw_ws_close(struct gw_ws *ws, uint16_t code, const char *reason)
{
    char clean[WS_REASON_MAX + 1];

    if (ws->finished || ws->user_closing) {
        return;
    }
    ws->user_closing = true;
    size_t n = reason_utf8(reason, clean);
    if (!wslay_event_get_close_received(ws->ctx)) {
        memcpy(ws->reason, clean, n + 1);
    }
    /* Fails only when a close is already queued (the peer's, answered). */
    (void)wslay_event_queue_close(ws->ctx, code, (const uint8_t *)clean, n);
    ws_flush(ws);
    gw_ws_pause(ws, false); /* read the peer's close */
    ws->close_timer = true;
    conn_timer(ws->c, WS_CLOSE_MS);
    if (!ws->in_recv && !ws->in_events && uv_idle_start(&ws->c->kick, kick_cb) < 0) {
        ws->dead = true;
    }
}

void gw_ws_set_user(struct gw_ws *ws, void *user)
{
    ws->user = user;
}
