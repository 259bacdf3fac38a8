/*
 * The HTTP ingress and exposeHttp (ingress.h, gw.h): --http-listen accepts plain HTTP, reads the
 * first request head of each connection (at most IG_HEAD_MAX, within IG_FIRST_MS), routes the
 * connection by its Host header to the sandbox and guest port its domain maps to (a process's
 * port is looked up with gw_pid_port_find, IG_PID_CACHE_MS shared by the connections of a
 * mapping), opens a guest socket (gsock.h) and relays bytes both ways from then on, the bytes
 * already read first. Keep-alive, pipelining and upgrades (WebSocket, CONNECT) pass through, but
 * every later request's head is checked first (relay_in): one whose Host names another domain
 * (a proxy in front reusing its connection for any domain) or that cannot be parsed is not
 * sent; the guest gets EOF instead and the client the answers before it, then EOF, so it
 * retries on a new connection. So that a proxy in front ends each request where the relay does,
 * only canonical framing is taken (framing_unsafe, head_lines_unsafe, chunk_check): http-parser
 * as Debian builds it reads more.
 *
 * The guest is the workload's and may lie, so its bytes are parsed too (gs_data): the client
 * gets one final answer per request sent (at most IG_PIPELINE_MAX owed), and nothing the guest
 * sends beyond them (an answer to a request it was never sent, which a proxy in front would take
 * for the answer to its next request, for another domain) or that is not HTTP: the guest socket
 * is closed there and the client gets EOF. The connection goes raw (no more parsing either way)
 * only when the guest accepts an upgrade (101) or a CONNECT (2xx); until its answer the client's
 * bytes after that request are held, and parsed as requests again when it refuses.
 *
 * Back-pressure: the client is not read while the guest socket's queue is above GW_GSOCK_HIGH
 * (until `writable`); the guest socket is paused (its bytes not acknowledged to the agent) while
 * the client's write queue is above IG_WQ_HIGH, resumed at IG_WQ_LOW.
 *
 * Errors before the relay starts are answered as HTTP with a short text body and the
 * connection closed: 400 malformed head or no Host, 404 unknown domain, 408 head too slow, 431
 * head too large, 502 the guest refused or nothing listens / the sandbox stopped, 503 the
 * sandbox is still booting, 504 the connect took too long.
 *
 * Domains: "<sandbox id tail>-<8 random>.<--http-domain>", handed out by POST expose/http
 * (gw_expose_new_domain), mapped by exposeHttp (gw_expose_map), all kept in DATA/expose.json
 * (rewritten atomically on every change, loaded at start). Domains of sandboxes the gateway no
 * longer knows are pruned (at start, when handing out, and when a request finds one).
 */
#include "ingress.h"

#include <ctype.h>
#include <errno.h>
#include <http_parser.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "gsock.h"
#include "http.h"

/* Connections still closing (their handles' callbacks due) beyond --ingress-max-conns: past
 * that, a new connection is refused at once instead of making room. */
#define IG_CLOSING_SLACK  256
#define IG_EVICT_LOG_MS   60000 /* a line about connections closed for room: at most so often */
#define IG_HEAD_MAX       (64u << 10)
#define IG_FIRST_MS       10000
#define IG_CONNECT_MS     30000 /* routing + net.connect (the agent's own connect timeout: 10 s) */
#define IG_LINGER_MS      2000  /* after an error answer: read and drop until EOF, at most this */
#define IG_READ_BUF       (64u << 10)
#define IG_WQ_HIGH        (256u << 10)
#define IG_WQ_LOW         (64u << 10)
#define IG_DOMAINS_MAX    4096
#define IG_DOMAINS_PER_SB 256
#define IG_PID_CACHE_MS   1000
#define IG_FILE_MAX       (4u << 20)
#define IG_LABEL_RANDOM   8
#define IG_PIPELINE_MAX   64 /* requests sent to the guest and not answered yet */

/* A request sent to the guest, for parsing its answer (ig_conn.q). */
#define IGQ_HEAD    1u /* the answer has no body */
#define IGQ_UPGRADE 2u /* Upgrade + Connection: upgrade: a 101 makes the connection raw */
#define IGQ_CONNECT 4u /* a 2xx makes the connection raw */

/* Where the guest's answer parser paused (ig_conn.resp). */
enum ig_resp {
    IG_RESP_NONE,
    IG_RESP_BEGIN,   /* an answer's first byte: its head's lines are checked (resp_lines_ok) */
    IG_RESP_HEAD,    /* the head of an answer ended (none of the kinds below) */
    IG_RESP_INFO,    /* a 1xx answer ended: the final one follows */
    IG_RESP_FINAL,   /* a final answer ended: the oldest request is answered */
    IG_RESP_RAW,     /* the head of an accepted upgrade or CONNECT ended: raw from here */
    IG_RESP_CHUNKED, /* the head of a chunked answer ended: its body goes out re-framed */
    IG_RESP_BAD,     /* a 101 that switches to nothing asked for, or framing not taken */
};

/* What a head (a client's request, the guest's answer: ig_conn.hx.fr, ig_conn.rh) says of its
 * framing: Transfer-Encoding and Content-Length headers, counted, and whether the one
 * Transfer-Encoding is just "chunked". */
struct framing {
    char field[18]; /* the header name being read, lower case ("transfer-encoding": 17) */
    size_t flen;
    bool in_field;
    int which; /* the value being read: FR_* */
    unsigned nte, ncl, nhost;
    bool blank_name; /* a header name held a space or a tab (http-parser reads "Name :" as Name) */
    char te[16];     /* the Transfer-Encoding value, up to "chunked" and blanks around it */
    size_t telen;
};
enum { FR_OTHER, FR_TE, FR_CL, FR_HOST };

/* A chunked request body, checked byte by byte before http-parser reads it (ig_conn.ck): Debian's
 * http-parser is built without HTTP_PARSER_STRICT and takes any two bytes after a chunk's data
 * for its CRLF, a bare LF for a chunk line's end, spaces after the size. A proxy in front that
 * passes a body on as it came may read such bytes otherwise and so end the request elsewhere:
 * the next request it sends on the connection, for any domain, would reach this guest as the
 * body of this one. The relay takes only the canonical form (RFC 9112 7.1): 1 to 16 hex digits,
 * an optional ";" extension of visible characters, CRLF; the data; CRLF; after the last chunk
 * ("0"), trailer lines (no folding) and an empty line, every line ending in CRLF. */
enum ck_state {
    CK_HEAD_LF, /* the head's last byte, which http-parser reads again after its pause */
    CK_SIZE0,
    CK_SIZE,
    CK_EXT,
    CK_SIZE_LF,
    CK_DATA,
    CK_DATA_CR,
    CK_DATA_LF,
    CK_LINE0, /* the start of a trailer line, or of the empty line that ends the body */
    CK_LINE,
    CK_LINE_LF,
    CK_END_LF,
};

struct chunk_check {
    enum ck_state st;
    unsigned digits;
    uint64_t left; /* CK_SIZE: the size so far; CK_DATA: the data bytes still to come */
    size_t line;   /* bytes of the chunk line or the trailers so far */
};

struct ig_conn;

/* A handed-out domain and (mapped) where it goes. */
struct ig_map {
    struct ig_map *next;
    char domain[GW_DOMAIN_MAX + 1];
    char sandbox[32];
    bool mapped;
    uint16_t port; /* mapped: the guest port; 0: the port of process `pid` */
    uint32_t pid;
    int64_t created_ms;
    /* pid mappings: the last lookup (uv_now ms) and the one in flight with its waiters */
    uint16_t cached_port;
    uint64_t cached_at;
    struct gw_pid_port *q;
    struct ig_conn *waiters;
};

struct gw_ingress {
    struct gw *g;
    uv_tcp_t tcp;
    bool stopped;
    unsigned refs; /* the listener + every connection: freed at 0 after stop */
    int port;
    char host[256];
    char base[GW_DOMAIN_MAX + 1]; /* --http-domain, lower case, no trailing dot */
    char path[PATH_MAX];          /* DATA/expose.json */
    struct ig_map *maps;
    unsigned nmaps;
    struct ig_conn *conns;
    unsigned nconns;       /* in conns, closing ones too */
    unsigned nlive;        /* those not closing: at most --ingress-max-conns */
    uint64_t evict_logged; /* uv_now of the last log line about closing one for room */
    uint64_t evicted;      /* connections closed for room since that line */
};

enum ic_state {
    IC_HEAD = 1, /* reading the first request head */
    IC_ROUTE,    /* waiting for a pid's port */
    IC_CONNECT,  /* net.connect in flight */
    IC_RELAY,
    IC_ANSWER, /* an error answer is being written; then linger */
    IC_CLOSING,
};

/* What the parser of a request head collects (http-parser callbacks; a field or value may come
 * in several pieces when the head arrives in several reads). */
struct head_ctx {
    struct framing fr; /* its Host, Transfer-Encoding and Content-Length headers */
    char host[GW_DOMAIN_MAX + 2];
    size_t host_len;
    bool host_long;
    bool complete; /* the head ended (the parser is paused there) */
    bool done;     /* the message ended (paused there) */
};

struct ig_conn {
    struct ig_conn *next, *prev;
    struct gw_ingress *ig;
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t shut;
    int handles; /* open handles (tcp, timer) */
    enum ic_state st;
    char *buf; /* the head (and whatever followed it), then the relay's read buffer */
    size_t blen, bcap;
    char host[GW_DOMAIN_MAX + 1];
    char sandbox[32];
    struct ig_map *map;    /* IC_ROUTE: the mapping waited on */
    struct ig_conn *wnext; /* in map->waiters */
    struct gw_gsock *gs;
    uint16_t port;
    uint64_t active; /* uv_now when a byte last moved either way (or the connection came) */
    size_t wq;       /* bytes written to the client and not yet done (the tail's too) */
    unsigned writes; /* write requests in flight */
    /* Bytes for the client that came while a write was in flight: written as one once the
     * writes before them completed. A request per guest frame cost ~220 bytes whatever its
     * length, and a guest writing a byte per send(2) makes a frame per byte. */
    char *tail;
    size_t tlen, tcap;
    bool reading;       /* uv_read_start in force */
    bool hold;          /* the guest socket is full: the client is not read */
    bool paused;        /* the guest socket is paused (client write queue) */
    bool client_eof;    /* the client half-closed */
    bool guest_eof;     /* the guest half-closed: the client was shut down */
    bool shutting;      /* uv_shutdown in flight */
    bool finishing;     /* close once writes and the shutdown are done */
    bool in_guest_full; /* gw_gsock_write refused more (the guest stopped reading) */
    /* The relay's request parser: each request's head is held (hbuf) until it is complete and
     * goes to the guest only when its Host names c->host; an upgrade or CONNECT makes the rest
     * raw bytes. */
    http_parser rp;
    struct head_ctx hx;
    char *hbuf;
    size_t hlen, hcap;
    bool in_head; /* inside a request head: bytes are held */
    bool ck_on;   /* inside a chunked request body: checked first (ck) */
    struct chunk_check ck;
    bool raw;     /* the guest accepted an upgrade or CONNECT: no more parsing either way */
    bool refused; /* a request for another host (or unparseable): nothing more to the guest */
    bool up_wait; /* an upgrade or CONNECT went to the guest: the client's bytes after it are
                   * held in hbuf and the client is not read until the guest answers */
    /* The guest's answers: parsed (sp) until the connection goes raw, each final one taking the
     * oldest of the requests sent (the ring q of IGQ_* kinds, qn of them from qhead). */
    http_parser sp;
    struct framing rh;
    enum ig_resp resp;
    bool rechunk; /* the answer being read is chunked: its body goes out in canonical chunks
                   * (what the parser read, so a proxy in front cannot read it otherwise) */
    bool wfail;   /* a write to the client failed inside a parser callback */
    bool rgap;    /* between answers: CR and LF are dropped (some servers send empty lines) */
    bool rhead;   /* inside an answer's head: its bytes are checked ... */
    char rprev;   /* ... against the one before */
    uint8_t q[IG_PIPELINE_MAX];
    unsigned qhead, qn;
};

static void conn_close(struct ig_conn *c);
static void conn_answer(struct ig_conn *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void conn_route(struct ig_conn *c);
static void conn_connect(struct ig_conn *c, struct gw_sandbox *sb, uint16_t port);
static void conn_read(struct ig_conn *c, bool on);

/* --- names ---------------------------------------------------------------------------------- */

/* A DNS name: labels of 1..63 [a-z0-9-] (not starting or ending with '-'), at most @max bytes;
 * lower-cased in place, a trailing dot dropped. 0, or -1. */
static int dns_name(char *s, size_t max)
{
    size_t n = strlen(s), lab = 0;

    if (n > 0 && s[n - 1] == '.') {
        s[--n] = '\0';
    }
    if (n == 0 || n > max) {
        return -1;
    }
    for (size_t i = 0; i <= n; i++) {
        char ch = s[i];

        if (ch == '.' || ch == '\0') {
            if (lab == 0 || lab > 63 || s[i - 1] == '-' || s[i - lab] == '-') {
                return -1;
            }
            lab = 0;
            continue;
        }
        ch = (char)tolower((unsigned char)ch);
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-')) {
            return -1;
        }
        s[i] = ch;
        lab++;
    }
    return 0;
}

/* A Host header's value as a domain: blanks around it and the port dropped, then dns_name into
 * @out (GW_DOMAIN_MAX + 1 bytes). 0, or -1 when it is no DNS name (an address, junk). */
static int host_name(char *host, char *out, size_t outlen)
{
    char *colon;
    size_t n;

    while (*host == ' ' || *host == '\t') {
        host++;
    }
    n = strlen(host);
    while (n > 0 && (host[n - 1] == ' ' || host[n - 1] == '\t')) {
        host[--n] = '\0';
    }
    colon = strrchr(host, ':');
    if (colon != NULL && strchr(host, ']') == NULL) {
        *colon = '\0';
    }
    snprintf(out, outlen, "%s", host);
    return dns_name(out, GW_DOMAIN_MAX);
}

/* A header name piece (a name may come in several). */
static void framing_field(struct framing *h, const char *at, size_t len)
{
    if (!h->in_field) {
        h->in_field = true;
        h->flen = 0;
    }
    for (size_t i = 0; i < len; i++, h->flen++) {
        if (h->flen < sizeof(h->field) - 1) {
            h->field[h->flen] = (char)tolower((unsigned char)at[i]);
        }
        h->blank_name |= at[i] == ' ' || at[i] == '\t';
    }
}

/* A header value piece: the header it belongs to is counted at its first piece. */
static void framing_value(struct framing *h, const char *at, size_t len)
{
    if (h->in_field) {
        h->in_field = false;
        h->which = h->flen == 17 && memcmp(h->field, "transfer-encoding", 17) == 0 ? FR_TE
                   : h->flen == 14 && memcmp(h->field, "content-length", 14) == 0  ? FR_CL
                   : h->flen == 4 && memcmp(h->field, "host", 4) == 0              ? FR_HOST
                                                                                   : FR_OTHER;
        h->nte += h->which == FR_TE;
        h->ncl += h->which == FR_CL;
        h->nhost += h->which == FR_HOST;
        h->telen = 0;
    }
    for (size_t i = 0; h->which == FR_TE && i < len; i++) {
        if (h->telen < sizeof(h->te) - 1) {
            h->te[h->telen] = (char)tolower((unsigned char)at[i]);
        }
        h->telen++;
    }
}

/* The one Transfer-Encoding the relay takes: "chunked", blanks around it aside. */
static bool te_is_chunked(const struct framing *h)
{
    size_t a = 0, b = h->telen;

    if (b >= sizeof(h->te) - 1) {
        return false; /* longer than "chunked" with blanks around it fits */
    }
    while (a < b && (h->te[a] == ' ' || h->te[a] == '\t')) {
        a++;
    }
    while (b > a && (h->te[b - 1] == ' ' || h->te[b - 1] == '\t')) {
        b--;
    }
    return b - a == 7 && memcmp(h->te + a, "chunked", 7) == 0;
}

/* Framing a proxy in front could read otherwise than http-parser does, or NULL: a header name with
 * a blank in it (http-parser, as Debian builds it, takes "Content-Length :" for Content-Length;
 * RFC 9112 5.1 refuses it, a proxy may pass it on as another header), more than one
 * Transfer-Encoding or Content-Length, both, a Transfer-Encoding that is not just "chunked" or
 * in an HTTP/1.0 message (RFC 9112 6.1), a length or a coding on a CONNECT (it has no content:
 * http-parser tunnels what follows). */
static const char *framing_unsafe(const struct framing *h, const http_parser *p)
{
    if (h->blank_name || ((p->flags & F_CONTENTLENGTH) != 0 && h->ncl == 0) ||
        (p->uses_transfer_encoding && h->nte == 0)) {
        return "a blank in a header name";
    }
    if (h->ncl > 1) {
        return "more than one Content-Length header";
    }
    if (h->nte > 1) {
        return "more than one Transfer-Encoding header";
    }
    if (h->nte == 1 && h->ncl > 0) {
        return "both Transfer-Encoding and Content-Length";
    }
    if (h->nte == 1 && (!te_is_chunked(h) || (p->flags & F_CHUNKED) == 0)) {
        return "a Transfer-Encoding other than chunked";
    }
    if (h->nte == 1 && p->http_major == 1 && p->http_minor == 0) {
        return "a Transfer-Encoding in an HTTP/1.0 message";
    }
    if (p->type == HTTP_REQUEST && p->method == HTTP_CONNECT && h->ncl + h->nte > 0) {
        return "a Content-Length or Transfer-Encoding on a CONNECT";
    }
    return NULL;
}

/* Line ends a proxy in front could read otherwise than http-parser does, in a head (a request's
 * or an answer's), byte @ch after byte @prev; or NULL: a CR not followed by LF (http-parser takes
 * any byte there for the LF), an LF without its CR (RFC 9112 2.2: a recipient MAY take it for a
 * line end, or replace it with SP), a folded line (obs-fold). The text is a request's 400. */
static const char *head_byte_unsafe(char prev, char ch)
{
    if ((prev == '\r') != (ch == '\n')) {
        return "a line of the request head does not end in CRLF";
    }
    if (prev == '\n' && (ch == ' ' || ch == '\t')) {
        return "a folded header line in the request head";
    }
    return NULL;
}

/* What a proxy in front could read otherwise than http-parser does in the request head
 * @head[0..len), the byte after it @next (the LF http-parser paused before), or NULL: its line
 * ends (head_byte_unsafe), a request line that does not end in "HTTP/d.d" (http-parser checks
 * only the H of it). */
static const char *head_lines_unsafe(const char *head, size_t len, char next)
{
    size_t start = 0, eol;
    const char *why;

    if (next != '\n') {
        return "a line of the request head does not end in CRLF";
    }
    for (size_t i = 0; i <= len; i++) {
        if ((why = head_byte_unsafe(i > 0 ? head[i - 1] : '\0', i < len ? head[i] : next)) !=
            NULL) {
            return why;
        }
    }
    while (start + 1 < len && head[start] == '\r' && head[start + 1] == '\n') {
        start += 2; /* empty lines before the request line (RFC 9112 2.2) */
    }
    for (eol = start; eol < len && head[eol] != '\r'; eol++) {
    }
    if (eol - start < 9 || memcmp(head + eol - 9, " HTTP/", 6) != 0 ||
        !isdigit((unsigned char)head[eol - 3]) || head[eol - 2] != '.' ||
        !isdigit((unsigned char)head[eol - 1])) {
        return "a request line that does not end in HTTP/<digit>.<digit>";
    }
    return NULL;
}

/* Why a request head (@h as parsed by @p; its bytes @head[0..len), then @next) cannot be relayed
 * as it is, or NULL: conn_head answers it 400, relay_in refuses it. */
static const char *request_unsafe(const struct head_ctx *h, const http_parser *p, const char *head,
                                  size_t len, char next)
{
    const char *why = framing_unsafe(&h->fr, p);

    return why != NULL ? why : head_lines_unsafe(head, len, next);
}

/* Check the chunked body bytes @d[0..len) (see enum ck_state). Returns 0 when all of them are
 * canonical and more are to come, 1 when the body ends at *@used (its last byte included), -1
 * when the byte at *@used is not canonical. */
static int chunk_check(struct chunk_check *k, const char *d, size_t len, size_t *used)
{
    size_t i = 0;

    while (i < len) {
        unsigned char ch = (unsigned char)d[i];
        bool ctl = (ch < 0x20 && ch != '\t') || ch == 0x7f;
        int v;

        if (k->st == CK_DATA) {
            size_t take = k->left < len - i ? (size_t)k->left : len - i;

            k->left -= take;
            i += take;
            if (k->left == 0) {
                k->st = CK_DATA_CR;
            }
            continue;
        }
        if (k->st != CK_HEAD_LF && ++k->line > IG_HEAD_MAX) {
            break; /* a chunk line or trailers beyond what a head may be */
        }
        switch (k->st) {
        case CK_HEAD_LF:
        case CK_SIZE_LF:
        case CK_DATA_LF:
        case CK_LINE_LF:
        case CK_END_LF:
            if (ch != '\n') {
                goto bad;
            }
            if (k->st == CK_END_LF) {
                *used = i + 1; /* the empty line that ends the body */
                return 1;
            }
            if (k->st == CK_LINE_LF) {
                k->st = CK_LINE0;
            } else if (k->st == CK_SIZE_LF) {
                k->st = k->left > 0 ? CK_DATA : CK_LINE0; /* the last chunk: trailers */
                k->line = 0;
            } else {
                k->st = CK_SIZE0;
                k->line = 0;
            }
            break;
        case CK_SIZE0:
        case CK_SIZE:
            if ((v = gw_hexval((char)ch)) >= 0) {
                if (++k->digits > 16) {
                    goto bad;
                }
                k->left = (k->st == CK_SIZE0 ? 0 : k->left << 4) | (uint64_t)v;
                k->st = CK_SIZE;
            } else if (k->st == CK_SIZE && (ch == ';' || ch == '\r')) {
                k->st = ch == ';' ? CK_EXT : CK_SIZE_LF;
                k->digits = 0;
            } else {
                goto bad;
            }
            break;
        case CK_EXT:
        case CK_LINE:
            if (ch == '\r') {
                k->st = k->st == CK_EXT ? CK_SIZE_LF : CK_LINE_LF;
            } else if (ctl) {
                goto bad;
            }
            break;
        case CK_DATA_CR:
            if (ch != '\r') {
                goto bad;
            }
            k->st = CK_DATA_LF;
            break;
        case CK_LINE0:
            if (ch == '\r') {
                k->st = CK_END_LF;
            } else if (ctl || ch == ' ' || ch == '\t') {
                goto bad; /* a bare LF, a control, a folded line */
            } else {
                k->st = CK_LINE;
            }
            break;
        default:
            goto bad;
        }
        i++;
    }
    if (i == len) {
        return 0;
    }
bad:
    *used = i;
    return -1;
}

static int on_mbegin(http_parser *p)
{
    struct head_ctx *h = p->data;

    memset(h, 0, sizeof(*h));
    return 0;
}

static int on_hfield(http_parser *p, const char *at, size_t len)
{
    struct head_ctx *h = p->data;

    framing_field(&h->fr, at, len);
    return 0;
}

static int on_hvalue(http_parser *p, const char *at, size_t len)
{
    struct head_ctx *h = p->data;
    bool first = h->fr.in_field;

    framing_value(&h->fr, at, len);
    if (h->fr.which != FR_HOST) {
        return 0;
    }
    if (first) {
        h->host_len = 0;
    }
    if (h->host_len + len >= sizeof(h->host)) {
        h->host_long = true;
        return 0;
    }
    memcpy(h->host + h->host_len, at, len);
    h->host_len += len;
    h->host[h->host_len] = '\0';
    return 0;
}

static int on_hdone(http_parser *p)
{
    struct head_ctx *h = p->data;

    h->complete = true;
    http_parser_pause(p, 1);
    return 0;
}

static int on_mdone(http_parser *p)
{
    struct head_ctx *h = p->data;

    h->done = true;
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings head_settings = {
    .on_message_begin = on_mbegin,
    .on_header_field = on_hfield,
    .on_header_value = on_hvalue,
    .on_headers_complete = on_hdone,
    .on_message_complete = on_mdone,
};

static int conn_write(struct ig_conn *c, const void *data, size_t len);

static int resp_pause(http_parser *p, enum ig_resp r);

static int on_resp_begin(http_parser *p)
{
    struct ig_conn *c = p->data;

    memset(&c->rh, 0, sizeof(c->rh));
    return resp_pause(p, IG_RESP_BEGIN);
}

static int on_resp_field(http_parser *p, const char *at, size_t len)
{
    framing_field(&((struct ig_conn *)p->data)->rh, at, len);
    return 0;
}

static int on_resp_value(http_parser *p, const char *at, size_t len)
{
    framing_value(&((struct ig_conn *)p->data)->rh, at, len);
    return 0;
}

static int resp_pause(http_parser *p, enum ig_resp r)
{
    ((struct ig_conn *)p->data)->resp = r;
    http_parser_pause(p, 1);
    return 0;
}

/* The guest's answer heads (ig_conn.sp): the kind of the oldest request sent decides. Framing
 * a proxy in front could read otherwise than http-parser does is not taken (framing_unsafe). */
static int on_resp_head(http_parser *p)
{
    struct ig_conn *c = p->data;
    unsigned kind = c->qn > 0 ? c->q[c->qhead] : 0;
    bool nobody;

    if (framing_unsafe(&c->rh, p) != NULL) {
        return resp_pause(p, IG_RESP_BAD);
    }
    if (p->status_code == 101) {
        /* Raw only with the Upgrade and Connection: upgrade headers that make a proxy switch too
         * (p->upgrade): otherwise it may take the answer for an informational one and reuse
         * the connection for any domain. */
        return resp_pause(p, (kind & IGQ_UPGRADE) != 0 && p->upgrade ? IG_RESP_RAW : IG_RESP_BAD);
    }
    if ((kind & IGQ_CONNECT) != 0 && p->status_code / 100 == 2) {
        return resp_pause(p, IG_RESP_RAW);
    }
    /* RFC 9112 6.3: these end at their head, whatever their framing headers say. */
    nobody = (kind & IGQ_HEAD) != 0 || p->status_code / 100 == 1 || p->status_code == 204 ||
             p->status_code == 304;
    if (!nobody && (p->flags & F_CHUNKED) != 0) {
        return resp_pause(p, IG_RESP_CHUNKED);
    }
    (void)resp_pause(p, IG_RESP_HEAD);
    return nobody ? 1 : 0; /* 1: no body follows */
}

/* A piece of a chunked answer's body: out as a chunk of its own. */
static int on_resp_body(http_parser *p, const char *at, size_t len)
{
    struct ig_conn *c = p->data;
    char size[24];
    int k;

    if (!c->rechunk || len == 0 || c->wfail) {
        return 0;
    }
    k = snprintf(size, sizeof(size), "%zx\r\n", len);
    if (conn_write(c, size, (size_t)k) < 0 || conn_write(c, at, len) < 0 ||
        conn_write(c, "\r\n", 2) < 0) {
        c->wfail = true;
    }
    return 0;
}

static int on_resp_done(http_parser *p)
{
    struct ig_conn *c = p->data;

    if (c->rechunk) {
        c->rechunk = false; /* the last chunk; trailers are not passed on */
        if (!c->wfail && conn_write(c, "0\r\n\r\n", 5) < 0) {
            c->wfail = true;
        }
    }
    /* 100 Continue, 103 Early Hints: the final answer follows */
    return resp_pause(p, p->status_code / 100 == 1 ? IG_RESP_INFO : IG_RESP_FINAL);
}

static const http_parser_settings resp_settings = {
    .on_message_begin = on_resp_begin,
    .on_header_field = on_resp_field,
    .on_header_value = on_resp_value,
    .on_headers_complete = on_resp_head,
    .on_body = on_resp_body,
    .on_message_complete = on_resp_done,
};

/* --- mappings and expose.json --------------------------------------------------------------- */

static struct ig_map *map_find(struct gw_ingress *ig, const char *domain)
{
    for (struct ig_map *m = ig->maps; m != NULL; m = m->next) {
        if (strcmp(m->domain, domain) == 0) {
            return m;
        }
    }
    return NULL;
}

static int ig_save(struct gw_ingress *ig)
{
    json_t *root = json_object(), *arr = json_array();
    char *text;
    int r = -1;

    if (root == NULL || arr == NULL || json_object_set_new(root, "domains", arr) < 0) {
        json_decref(root);
        return -1;
    }
    for (struct ig_map *m = ig->maps; m != NULL; m = m->next) {
        json_t *e = json_pack("{s:s, s:s, s:b, s:i, s:I, s:I}", "domain", m->domain, "sandbox",
                              m->sandbox, "mapped", m->mapped, "port", (int)m->port, "pid",
                              (json_int_t)m->pid, "created_ms", (json_int_t)m->created_ms);

        if (e == NULL || json_array_append_new(arr, e) < 0) {
            json_decref(root);
            return -1;
        }
    }
    text = json_dumps(root, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (text != NULL) {
        r = gw_file_write_atomic(ig->path, text, strlen(text), 0600);
        if (r < 0) {
            gw_log("%s: %s", ig->path, strerror(errno));
        }
        free(text);
    }
    return r;
}

/* The connections waiting on @m's lookup are answered with @status and @why (the mapping is
 * going away or changed before the answer). */
static void map_fail_waiters(struct ig_map *m, int status, const char *why)
{
    struct ig_conn *w = m->waiters;

    m->waiters = NULL;
    while (w != NULL) {
        struct ig_conn *next = w->wnext;

        w->wnext = NULL;
        w->map = NULL;
        conn_answer(w, status, "%s\n", why);
        w = next;
    }
}

static void map_free(struct ig_map *m)
{
    if (m->q != NULL) {
        gw_pid_port_cancel(m->q);
        m->q = NULL;
    }
    map_fail_waiters(m, 404, "this domain is no longer exposed");
    free(m);
}

/* Drop the mappings of sandboxes the gateway does not know (any more). true when one went. */
static bool ig_prune(struct gw_ingress *ig)
{
    bool any = false;

    for (struct ig_map **pp = &ig->maps; *pp != NULL;) {
        struct ig_map *m = *pp;

        if (gw_sandbox_find(ig->g, m->sandbox) == NULL) {
            *pp = m->next;
            ig->nmaps--;
            map_free(m);
            any = true;
        } else {
            pp = &m->next;
        }
    }
    return any;
}

static void ig_load(struct gw_ingress *ig)
{
    char *text = NULL;
    size_t len = 0;
    json_t *root, *arr, *e;
    json_error_t jerr;
    size_t i;

    if (gw_file_read(ig->path, IG_FILE_MAX, &text, &len) < 0) {
        if (errno != ENOENT) {
            gw_log("%s: %s (exposed domains are not restored)", ig->path, strerror(errno));
        }
        return;
    }
    root = json_loadb(text, len, 0, &jerr);
    free(text);
    arr = json_object_get(root, "domains");
    if (!json_is_array(arr)) {
        gw_log("%s: not an expose file (%s); exposed domains are not restored", ig->path,
               root == NULL ? jerr.text : "no \"domains\" array");
        json_decref(root);
        return;
    }
    json_array_foreach(arr, i, e)
    {
        const char *d = json_string_value(json_object_get(e, "domain"));
        const char *sid = json_string_value(json_object_get(e, "sandbox"));
        int64_t port = 0, pid = 0, created = 0;
        struct ig_map *m;

        if (ig->nmaps >= IG_DOMAINS_MAX) {
            break;
        }
        if (d == NULL || sid == NULL || strlen(d) > GW_DOMAIN_MAX || !gw_sandbox_id_valid(sid) ||
            gw_json_int64(json_object_get(e, "port"), &port) < 0 || port < 0 || port > 65535 ||
            gw_json_int64(json_object_get(e, "pid"), &pid) < 0 || pid < 0 ||
            pid > (int64_t)UINT32_MAX) {
            continue;
        }
        (void)gw_json_int64(json_object_get(e, "created_ms"), &created);
        m = calloc(1, sizeof(*m));
        if (m == NULL) {
            break;
        }
        snprintf(m->domain, sizeof(m->domain), "%s", d);
        if (dns_name(m->domain, GW_DOMAIN_MAX) < 0 || map_find(ig, m->domain) != NULL) {
            free(m);
            continue;
        }
        snprintf(m->sandbox, sizeof(m->sandbox), "%s", sid);
        m->mapped = json_is_true(json_object_get(e, "mapped"));
        m->port = (uint16_t)port;
        m->pid = (uint32_t)pid;
        m->created_ms = created;
        m->next = ig->maps;
        ig->maps = m;
        ig->nmaps++;
    }
    json_decref(root);
    if (ig_prune(ig)) {
        (void)ig_save(ig);
    }
}

int gw_expose_new_domain(struct gw_sandbox *sb, char *domain, size_t len, char *why, size_t whylen)
{
    struct gw_ingress *ig = sb->g->ingress;
    char label[64], rnd[IG_LABEL_RANDOM + 1];
    const char *tail = strrchr(sb->id, '_');
    struct ig_map *m, *oldest = NULL;
    unsigned mine = 0;
    size_t n = 0;

    if (ig == NULL || ig->stopped) {
        snprintf(why, whylen, "the HTTP ingress is off: start sbx-gateway with --http-listen");
        return -1;
    }
    if (ig_prune(ig)) {
        (void)ig_save(ig);
    }
    for (m = ig->maps; m != NULL; m = m->next) {
        if (strcmp(m->sandbox, sb->id) == 0) {
            mine++;
            if (!m->mapped && (oldest == NULL || m->created_ms <= oldest->created_ms)) {
                oldest = m;
            }
        }
    }
    if (mine >= IG_DOMAINS_PER_SB && oldest != NULL) {
        /* Handed out and never mapped: the oldest of those makes room. */
        for (struct ig_map **pp = &ig->maps; *pp != NULL; pp = &(*pp)->next) {
            if (*pp == oldest) {
                *pp = oldest->next;
                ig->nmaps--;
                map_free(oldest);
                mine--;
                break;
            }
        }
    }
    if (mine >= IG_DOMAINS_PER_SB || ig->nmaps >= IG_DOMAINS_MAX) {
        snprintf(why, whylen, "too many exposed domains (%u per sandbox, %u in all)",
                 IG_DOMAINS_PER_SB, IG_DOMAINS_MAX);
        return -1;
    }
    for (tail = tail != NULL ? tail + 1 : sb->id; *tail != '\0' && n < 20; tail++) {
        char ch = (char)tolower((unsigned char)*tail);

        if ((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9')) {
            label[n++] = ch;
        }
    }
    label[n] = '\0';
    m = calloc(1, sizeof(*m));
    if (m == NULL) {
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    for (int tries = 0;; tries++) {
        if (tries >= 8 || gw_random_chars(rnd, IG_LABEL_RANDOM, GW_ID_ALPHABET) < 0) {
            free(m);
            snprintf(why, whylen, "cannot make a domain name");
            return -1;
        }
        if (snprintf(m->domain, sizeof(m->domain), "%s%s%s.%s", label, n > 0 ? "-" : "", rnd,
                     ig->base) >= (int)sizeof(m->domain)) {
            free(m);
            snprintf(why, whylen, "--http-domain is too long");
            return -1;
        }
        if (map_find(ig, m->domain) == NULL) {
            break;
        }
    }
    if (strlen(m->domain) >= len) {
        free(m);
        snprintf(why, whylen, "domain buffer too small");
        return -1;
    }
    snprintf(m->sandbox, sizeof(m->sandbox), "%s", sb->id);
    m->created_ms = gw_now_ms();
    m->next = ig->maps;
    ig->maps = m;
    ig->nmaps++;
    if (ig_save(ig) < 0) {
        ig->maps = m->next;
        ig->nmaps--;
        free(m);
        snprintf(why, whylen, "cannot save %s: %s", ig->path, strerror(errno));
        return -1;
    }
    snprintf(domain, len, "%s", m->domain);
    return 0;
}

int gw_expose_map(struct gw_sandbox *sb, const char *domain, uint16_t port, uint32_t pid, char *why,
                  size_t whylen)
{
    struct gw_ingress *ig = sb->g->ingress;
    char name[GW_DOMAIN_MAX + 2];
    struct ig_map *m, saved;
    struct ig_conn *w;

    if (ig == NULL || ig->stopped) {
        snprintf(why, whylen, "the HTTP ingress is off: start sbx-gateway with --http-listen");
        return -1;
    }
    if (strlen(domain) > GW_DOMAIN_MAX) {
        snprintf(why, whylen, "domain is longer than %d bytes", GW_DOMAIN_MAX);
        return -1;
    }
    snprintf(name, sizeof(name), "%s", domain);
    m = dns_name(name, GW_DOMAIN_MAX) == 0 ? map_find(ig, name) : NULL;
    if (m == NULL || strcmp(m->sandbox, sb->id) != 0) {
        snprintf(why, whylen,
                 "domain '%.*s' was not handed out for sandbox %s (POST "
                 "/api/v3/sandbox/%s/expose/http first)",
                 64, domain, sb->id, sb->id);
        return -1;
    }
    saved = *m;
    m->mapped = true;
    m->port = port;
    m->pid = port == 0 ? pid : 0;
    m->cached_at = 0;
    m->cached_port = 0;
    if (ig_save(ig) < 0) {
        m->mapped = saved.mapped;
        m->port = saved.port;
        m->pid = saved.pid;
        snprintf(why, whylen, "cannot save %s: %s", ig->path, strerror(errno));
        return -1;
    }
    /* Connections waiting on the old target's lookup go to the new one. */
    if (m->q != NULL) {
        gw_pid_port_cancel(m->q);
        m->q = NULL;
    }
    w = m->waiters;
    m->waiters = NULL;
    while (w != NULL) {
        struct ig_conn *next = w->wnext;

        w->wnext = NULL;
        w->map = NULL;
        conn_route(w);
        w = next;
    }
    return 0;
}

int gw_ingress_url(struct gw *g, const char *domain, char *out, size_t len, char *why,
                   size_t whylen)
{
    struct gw_ingress *ig = g->ingress;

    if (ig == NULL || ig->stopped) {
        snprintf(why, whylen, "the HTTP ingress is off: start sbx-gateway with --http-listen");
        return -1;
    }
    if (snprintf(out, len, "http://%s:%d", domain, ig->port) >= (int)len) {
        snprintf(why, whylen, "URL buffer too small");
        return -1;
    }
    return 0;
}

/* --- connections ---------------------------------------------------------------------------- */

static void ig_unref(struct gw_ingress *ig)
{
    if (--ig->refs > 0) {
        return;
    }
    while (ig->maps != NULL) {
        struct ig_map *m = ig->maps;

        ig->maps = m->next;
        map_free(m);
    }
    free(ig);
}

static void conn_handle_closed(uv_handle_t *h)
{
    struct ig_conn *c = h->data;
    struct gw_ingress *ig = c->ig;

    if (--c->handles > 0) {
        return;
    }
    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else {
        ig->conns = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    ig->nconns--;
    free(c->buf);
    free(c->hbuf);
    free(c->tail);
    free(c);
    ig_unref(ig);
}

/* Leave the mapping's waiters. */
static void conn_unwait(struct ig_conn *c)
{
    if (c->map == NULL) {
        return;
    }
    for (struct ig_conn **pp = &c->map->waiters; *pp != NULL; pp = &(*pp)->wnext) {
        if (*pp == c) {
            *pp = c->wnext;
            break;
        }
    }
    c->wnext = NULL;
    c->map = NULL;
}

/* Close at once: the guest socket aborted, writes still queued cancelled. Idempotent. */
static void conn_close(struct ig_conn *c)
{
    if (c->st == IC_CLOSING) {
        return;
    }
    c->st = IC_CLOSING;
    c->ig->nlive--;
    conn_unwait(c);
    if (c->gs != NULL) {
        gw_gsock_close(c->gs);
        c->gs = NULL;
    }
    uv_close((uv_handle_t *)&c->tcp, conn_handle_closed);
    uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
}

/* Close once what is written to the client went out (relay ended). */
static void conn_finish(struct ig_conn *c)
{
    c->finishing = true;
    if (c->wq == 0 && !c->shutting) {
        conn_close(c);
    }
}

static void on_linger(uv_timer_t *t)
{
    conn_close(t->data);
}

/* A byte moved on @c: its idle clock starts again (the relay's timer looks at it when due). */
static void conn_active(struct ig_conn *c)
{
    c->active = uv_now(c->ig->g->loop);
}

static void on_timeout(uv_timer_t *t)
{
    struct ig_conn *c = t->data;
    uint64_t idle;

    switch (c->st) {
    case IC_RELAY:
        /* Bytes moved since the timer was set: it waits for the rest of the idle time. */
        idle = uv_now(c->ig->g->loop) - c->active;
        if (idle < (uint64_t)c->ig->g->opt.ig_idle_ms) {
            uv_timer_start(&c->timer, on_timeout, (uint64_t)c->ig->g->opt.ig_idle_ms - idle, 0);
            return;
        }
        conn_close(c);
        break;
    case IC_HEAD:
        conn_answer(c, 408, "no complete request head within %d s\n", IG_FIRST_MS / 1000);
        break;
    case IC_ROUTE:
    case IC_CONNECT:
        conn_answer(c, 504, "port %u of sandbox %s did not accept the connection in time\n",
                    c->port, c->sandbox);
        break;
    default:
        conn_close(c);
        break;
    }
}

struct ig_write {
    uv_write_t req;
    struct ig_conn *c;
    size_t len;
    char data[];
};

static void on_answer_shut(uv_shutdown_t *req, int status)
{
    struct ig_conn *c = req->data;

    (void)status;
    c->shutting = false;
    if (c->st != IC_ANSWER) {
        return;
    }
    /* Read and drop what the client still sends (so closing does not reset the answer away),
     * until its EOF or IG_LINGER_MS. */
    uv_timer_start(&c->timer, on_linger, IG_LINGER_MS, 0);
    conn_read(c, true);
}

static int conn_submit(struct ig_conn *c, const void *data, size_t len);
static int conn_flush_tail(struct ig_conn *c);

static void on_write(uv_write_t *req, int status)
{
    struct ig_write *w = (struct ig_write *)req;
    struct ig_conn *c = w->c;

    c->wq -= w->len;
    c->writes--;
    free(w);
    if (c->st == IC_CLOSING) {
        return;
    }
    if (status < 0 || (c->writes == 0 && conn_flush_tail(c) < 0)) {
        conn_close(c);
        return;
    }
    conn_active(c);
    if (c->paused && c->wq <= IG_WQ_LOW && c->gs != NULL) {
        c->paused = false;
        gw_gsock_pause(c->gs, false);
    }
    if (c->finishing && c->wq == 0 && !c->shutting) {
        conn_close(c);
    }
}

/* One write request of @len bytes copied from @data; counted in c->wq. */
static int conn_submit(struct ig_conn *c, const void *data, size_t len)
{
    struct ig_write *w = malloc(sizeof(*w) + len);
    uv_buf_t b;

    if (w == NULL) {
        return -1;
    }
    memcpy(w->data, data, len);
    w->c = c;
    w->len = len;
    b = uv_buf_init(w->data, (unsigned)len);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write) < 0) {
        free(w);
        return -1;
    }
    c->wq += len;
    c->writes++;
    return 0;
}

/* Write what gathered in the tail, if anything (before a shutdown, or once the writes before it
 * completed). */
static int conn_flush_tail(struct ig_conn *c)
{
    size_t n = c->tlen;

    if (n == 0) {
        return 0;
    }
    c->tlen = 0;
    c->wq -= n; /* counted again by conn_submit */
    return conn_submit(c, c->tail, n);
}

static int conn_write(struct ig_conn *c, const void *data, size_t len)
{
    if (c->writes == 0) {
        return conn_submit(c, data, len);
    }
    if (c->tlen + len > c->tcap) {
        size_t cap = c->tcap != 0 ? c->tcap : 4096;
        char *t;

        while (cap < c->tlen + len) {
            cap *= 2;
        }
        if ((t = realloc(c->tail, cap)) == NULL) {
            return -1;
        }
        c->tail = t;
        c->tcap = cap;
    }
    memcpy(c->tail + c->tlen, data, len);
    c->tlen += len;
    c->wq += len;
    return 0;
}

static const char *status_text(int status)
{
    switch (status) {
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 408:
        return "Request Timeout";
    case 431:
        return "Request Header Fields Too Large";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Error";
    }
}

/* Answer the client with @status and a text body, then shut down, linger and close. */
static void conn_answer(struct ig_conn *c, int status, const char *fmt, ...)
{
    char body[1024], msg[1400];
    va_list ap;
    int n;

    if (c->st == IC_CLOSING || c->st == IC_ANSWER || c->st == IC_RELAY) {
        return;
    }
    conn_unwait(c);
    if (c->gs != NULL) {
        gw_gsock_close(c->gs);
        c->gs = NULL;
    }
    c->st = IC_ANSWER;
    conn_read(c, false);
    uv_timer_stop(&c->timer);
    va_start(ap, fmt);
    n = vsnprintf(body, sizeof(body), fmt, ap);
    va_end(ap);
    if (n < 0) {
        body[0] = '\0';
        n = 0;
    } else if ((size_t)n >= sizeof(body)) {
        n = (int)sizeof(body) - 1;
    }
    n = snprintf(msg, sizeof(msg),
                 "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                 "Content-Length: %d\r\nConnection: close\r\nServer: sbx-gateway\r\n\r\n%s",
                 status, status_text(status), n, body);
    if (n < 0 || (size_t)n >= sizeof(msg) || conn_write(c, msg, (size_t)n) < 0 ||
        conn_flush_tail(c) < 0) {
        conn_close(c);
        return;
    }
    c->shut.data = c;
    if (uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, on_answer_shut) < 0) {
        conn_close(c);
        return;
    }
    c->shutting = true;
}

/* --- the guest socket ----------------------------------------------------------------------- */

/* Bytes for the guest: c->hold when its queue went above GW_GSOCK_HIGH (the caller stops
 * reading the client). */
static void relay_put(struct ig_conn *c, const char *data, size_t len)
{
    int r;

    if (len == 0 || c->gs == NULL || c->in_guest_full) {
        return;
    }
    r = gw_gsock_write(c->gs, data, len);
    if (r < 0) {
        c->in_guest_full = true;
    } else if (r == 1) {
        c->hold = true;
    }
}

static void relay_end(struct ig_conn *c);

/* Nothing more of the client's goes to the guest: the guest gets EOF after what it has, its
 * answers still owed reach the client (then relay_end), and the client's further bytes are read
 * and dropped. May close the connection (the guest socket's `closed`). */
static void relay_refuse(struct ig_conn *c)
{
    c->refused = true;
    c->hlen = 0;
    if (c->gs == NULL) {
        return;
    }
    if (!c->raw && c->qn == 0) {
        relay_end(c);
        return;
    }
    gw_gsock_shutdown(c->gs);
}

static int hold_add(struct ig_conn *c, const char *data, size_t len)
{
    if (c->hlen + len > IG_HEAD_MAX) {
        return -1;
    }
    if (c->hlen + len > c->hcap) {
        size_t cap = c->hcap ? c->hcap : 4096;
        char *p;

        while (cap < c->hlen + len) {
            cap *= 2;
        }
        p = realloc(c->hbuf, cap);
        if (p == NULL) {
            return -1;
        }
        c->hbuf = p;
        c->hcap = cap;
    }
    memcpy(c->hbuf + c->hlen, data, len);
    c->hlen += len;
    return 0;
}

/*
 * Client bytes toward the guest. The connection was routed by its first request's Host; a
 * later request on it (keep-alive, pipelining: a proxy in front reuses its connections for
 * any domain) goes to the guest only when its Host names the same domain. Otherwise, or when
 * a request cannot be parsed, the relay refuses more (relay_refuse): the client gets the
 * answers to the requests before it, then EOF, and retries on a new connection, routed anew.
 * Each request sent is noted in c->q for its answer (gs_data). After an upgrade or CONNECT the
 * rest waits in hbuf for the guest's answer (c->up_wait: the caller stops reading the client).
 */
static void relay_in(struct ig_conn *c, const char *data, size_t len)
{
    while (len > 0 && !c->refused && c->gs != NULL && !c->in_guest_full) {
        enum http_errno e;
        size_t n, lim = len;
        int ck = 0;

        if (c->raw) {
            relay_put(c, data, len);
            return;
        }
        if (c->ck_on) {
            ck = chunk_check(&c->ck, data, len, &lim); /* -1: data[lim] is not canonical */
        }
        c->hx.complete = false;
        c->hx.done = false;
        n = http_parser_execute(&c->rp, &head_settings, data, lim);
        e = HTTP_PARSER_ERRNO(&c->rp);
        if (c->ck_on) {
            /* http-parser must end the body where the check did, and not before (refusing what
             * the check took, it ends the relay there). The canonical bytes before one the check
             * refused go on (the head's last byte among them), so the guest has a whole head. */
            if (ck == 1 ? e != HPE_PAUSED || !c->hx.done || n != lim : e != HPE_OK || n != lim) {
                relay_refuse(c);
                return;
            }
            if (ck < 0) {
                relay_put(c, data, n);
                relay_refuse(c);
                return;
            }
            c->ck_on = ck == 0;
        }
        if (c->in_head) {
            if (hold_add(c, data, n) < 0) {
                relay_refuse(c);
                return;
            }
        } else {
            relay_put(c, data, n);
        }
        data += n;
        len -= n;
        if (e == HPE_PAUSED) {
            http_parser_pause(&c->rp, 0);
            if (c->hx.complete) {
                char host[GW_DOMAIN_MAX + 1];
                unsigned kind = (c->rp.method == HTTP_HEAD ? IGQ_HEAD : 0) |
                                (c->rp.method == HTTP_CONNECT ? IGQ_CONNECT
                                 : c->rp.upgrade              ? IGQ_UPGRADE
                                                              : 0);

                if (c->hx.fr.nhost != 1 || c->hx.host_long ||
                    host_name(c->hx.host, host, sizeof(host)) < 0 || strcmp(host, c->host) != 0 ||
                    c->qn == IG_PIPELINE_MAX ||
                    request_unsafe(&c->hx, &c->rp, c->hbuf, c->hlen, len > 0 ? *data : '\0') !=
                        NULL) {
                    relay_refuse(c);
                    return;
                }
                if ((c->rp.flags & F_CHUNKED) != 0 && c->rp.method != HTTP_CONNECT) {
                    c->ck_on = true; /* from the head's last byte, which comes next */
                    memset(&c->ck, 0, sizeof(c->ck));
                }
                c->q[(c->qhead + c->qn) % IG_PIPELINE_MAX] = (uint8_t)kind;
                c->qn++;
                c->in_head = false;
                relay_put(c, c->hbuf, c->hlen);
                c->hlen = 0;
            } else if (c->hx.done) {
                if (c->rp.upgrade) {
                    /* Another protocol follows only if the guest says so: hold the rest. */
                    if (hold_add(c, data, len) < 0) {
                        relay_refuse(c);
                        return;
                    }
                    c->up_wait = true;
                    return;
                }
                c->in_head = true;
            }
        } else if (e != HPE_OK || len > 0) {
            relay_refuse(c);
            return;
        }
    }
}

/* The guest accepted the upgrade or CONNECT: raw both ways, the bytes held first. */
static void relay_upgraded(struct ig_conn *c)
{
    size_t n = c->hlen;

    c->raw = true;
    c->up_wait = false;
    c->hlen = 0;
    relay_put(c, c->hbuf, n);
    if (c->st == IC_RELAY && c->gs != NULL && !c->client_eof) {
        conn_read(c, !c->hold);
    }
}

/* The guest refused the upgrade or CONNECT: the bytes held are requests again. */
static void relay_resume(struct ig_conn *c)
{
    size_t n = c->hlen;
    char *held = NULL;

    c->up_wait = false;
    http_parser_init(&c->rp, HTTP_REQUEST);
    c->in_head = true;
    c->hlen = 0;
    if (n > 0) {
        if ((held = malloc(n)) == NULL) {
            relay_refuse(c);
            return;
        }
        memcpy(held, c->hbuf, n);
        relay_in(c, held, n);
        free(held);
    }
    if (c->st == IC_RELAY && c->gs != NULL && !c->refused && !c->client_eof) {
        conn_read(c, !c->hold && !c->up_wait);
    }
}

/* The guest may send the client nothing more: it answered every request the relay will send
 * (it refused more), or it sent what it may not. What the client got stays; the guest socket
 * is closed and the client gets EOF once its writes are done. */
static void on_relay_shut(uv_shutdown_t *req, int status);

/* The guest sends the client nothing more: what gathered goes out, then the client gets EOF.
 * -1 when that failed and the connection was closed. */
static int relay_shut_client(struct ig_conn *c)
{
    c->guest_eof = true;
    c->shut.data = c;
    if (conn_flush_tail(c) < 0 ||
        uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, on_relay_shut) < 0) {
        conn_close(c);
        return -1;
    }
    c->shutting = true;
    return 0;
}

static void relay_end(struct ig_conn *c)
{
    c->refused = true;
    c->hlen = 0;
    if (c->gs != NULL) {
        gw_gsock_close(c->gs);
        c->gs = NULL;
    }
    if (!c->guest_eof && relay_shut_client(c) < 0) {
        return;
    }
    conn_finish(c);
}

static void gs_connected(void *user)
{
    struct ig_conn *c = user;
    size_t n = c->blen;

    c->st = IC_RELAY;
    conn_active(c);
    uv_timer_start(&c->timer, on_timeout, (uint64_t)c->ig->g->opt.ig_idle_ms, 0);
    http_parser_init(&c->rp, HTTP_REQUEST);
    c->rp.data = &c->hx;
    http_parser_init(&c->sp, HTTP_RESPONSE);
    c->rgap = true;
    c->sp.data = c;
    c->in_head = true;
    /* The bytes read so far (the head and what followed it) go first. */
    c->blen = 0;
    relay_in(c, c->buf, n);
    if (c->st == IC_RELAY) {
        conn_read(c, !c->hold && !c->up_wait);
    }
}

/* The bytes @d[0..n) of an answer's head, each after the one before (c->rprev): every line
 * ending in CRLF, none folded (head_byte_unsafe). */
static bool resp_lines_ok(struct ig_conn *c, const char *d, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (head_byte_unsafe(c->rprev, d[i]) != NULL) {
            return false;
        }
        c->rprev = d[i];
    }
    return true;
}

/* Guest bytes toward the client, each answer checked against the requests sent: heads and
 * length-framed bodies as they came, chunked bodies re-framed (on_resp_body). */
static void gs_data(void *user, const uint8_t *data, size_t len)
{
    struct ig_conn *c = user;
    const char *d = (const char *)data, *w = d; /* w: parsed, not yet sent */

    if (c->st != IC_RELAY || c->guest_eof) {
        return;
    }
    conn_active(c);
    while (len > 0 && !c->raw) {
        bool rechunked = c->rechunk; /* these bytes are a chunked body's: not sent as they are */
        bool head_end;
        enum http_errno e;
        size_t n;

        if (c->rgap) {
            while (len > 0 && (*d == '\r' || *d == '\n')) {
                d++; /* an empty line after an answer: some servers send one */
                len--;
            }
            w = d;
            if (len == 0) {
                break;
            }
        }
        if (c->qn == 0) {
            relay_end(c); /* an answer to nothing the client asked */
            return;
        }
        c->resp = IG_RESP_NONE;
        n = http_parser_execute(&c->sp, &resp_settings, d, len);
        e = HTTP_PARSER_ERRNO(&c->sp);
        if (c->wfail) {
            conn_close(c);
            return;
        }
        /* At the end of a head the parser paused before its last byte, which it reads again:
         * that must be the LF of a CRLF (http-parser takes any byte after the head's last CR for
         * it). */
        head_end = c->resp == IG_RESP_HEAD || c->resp == IG_RESP_CHUNKED || c->resp == IG_RESP_RAW;
        if (c->resp == IG_RESP_BAD || (e != HPE_OK && e != HPE_PAUSED) ||
            (c->rhead && !resp_lines_ok(c, d, n)) ||
            (head_end && (d[n] != '\n' || c->rprev != '\r'))) {
            relay_end(c); /* not HTTP, framing not taken, or a switch nobody asked for */
            return;
        }
        d += n;
        len -= n;
        if (c->resp == IG_RESP_BEGIN) {
            c->rgap = false;
            c->rhead = true; /* the answer's first byte goes out with the rest of its head */
            c->rprev = d[-1];
        } else {
            if (!rechunked && d > w && conn_write(c, w, (size_t)(d - w)) < 0) {
                conn_close(c);
                return;
            }
            w = d;
        }
        if (e != HPE_PAUSED) {
            if (len > 0) {
                relay_end(c); /* the parser stopped short of the bytes */
                return;
            }
            break;
        }
        http_parser_pause(&c->sp, 0);
        if (head_end) {
            c->rhead = false;
        }
        c->rgap = c->resp == IG_RESP_INFO || c->resp == IG_RESP_FINAL;
        if (c->resp == IG_RESP_BEGIN || c->resp == IG_RESP_HEAD || c->resp == IG_RESP_INFO) {
            continue;
        }
        if (c->resp == IG_RESP_CHUNKED) {
            /* The head's LF goes out with the head, then the body in chunks of the relay's own. */
            if (conn_write(c, d, 1) < 0) {
                conn_close(c);
                return;
            }
            c->rechunk = true;
            continue;
        }
        c->qhead = (c->qhead + 1) % IG_PIPELINE_MAX;
        c->qn--;
        if (c->resp == IG_RESP_RAW) {
            relay_upgraded(c);
        } else if (c->up_wait && c->qn == 0) {
            relay_resume(c); /* the upgrade or CONNECT (the newest request) was refused */
        }
        if (c->st != IC_RELAY || c->guest_eof) {
            return;
        }
        if (!c->raw && c->refused && c->qn == 0) {
            relay_end(c); /* every answer owed went out; nothing more goes to the guest */
            return;
        }
    }
    if (d + len > w && conn_write(c, w, (size_t)(d + len - w)) < 0) {
        conn_close(c);
        return;
    }
    if (!c->paused && c->wq > IG_WQ_HIGH && c->gs != NULL) {
        c->paused = true;
        gw_gsock_pause(c->gs, true);
    }
}

static void on_relay_shut(uv_shutdown_t *req, int status)
{
    struct ig_conn *c = req->data;

    c->shutting = false;
    if (c->st == IC_CLOSING) {
        return;
    }
    if (status < 0) {
        conn_close(c);
        return;
    }
    if (c->finishing && c->wq == 0) {
        conn_close(c);
    }
}

static void gs_eof(void *user)
{
    struct ig_conn *c = user;

    if (c->st != IC_RELAY || c->guest_eof) {
        return;
    }
    if (c->up_wait && !c->raw) {
        relay_end(c); /* no answer can come now, and the client is not read meanwhile */
        return;
    }
    (void)relay_shut_client(c);
}

static void gs_closed(void *user, const char *err, const char *errno_name)
{
    struct ig_conn *c = user;

    (void)errno_name;
    c->gs = NULL;
    if (c->st == IC_CONNECT) {
        conn_answer(c, 502, "cannot reach port %u in sandbox %s: %s\n", c->port, c->sandbox,
                    err != NULL ? err : "closed");
        return;
    }
    if (c->st != IC_RELAY) {
        return;
    }
    if (err != NULL) {
        /* The guest side failed (reset, the sandbox stopped): what arrived goes out, then the
         * client is closed. */
        if (!c->guest_eof) {
            conn_finish(c);
            return;
        }
    }
    conn_finish(c);
}

static void gs_writable(void *user)
{
    struct ig_conn *c = user;

    if (c->st == IC_RELAY && c->hold) {
        c->hold = false;
        conn_read(c, !c->client_eof && !c->up_wait);
    }
}

static const struct gw_gsock_ops ig_gs_ops = {
    .connected = gs_connected,
    .data = gs_data,
    .eof = gs_eof,
    .closed = gs_closed,
    .writable = gs_writable,
};

static void conn_connect(struct ig_conn *c, struct gw_sandbox *sb, uint16_t port)
{
    char why[512];

    c->port = port;
    c->st = IC_CONNECT;
    c->gs = gw_gsock_open(sb, NULL, port, &ig_gs_ops, c, why, sizeof(why));
    if (c->gs == NULL) {
        conn_answer(c, 502, "cannot reach port %u in sandbox %s: %s\n", port, sb->id, why);
    }
}

/* --- routing -------------------------------------------------------------------------------- */

static void map_port_found(void *user, uint16_t port, const char *why)
{
    struct ig_map *m = user;
    struct ig_conn *w = m->waiters;
    struct gw_sandbox *sb;

    m->q = NULL;
    m->waiters = NULL;
    if (port != 0) {
        m->cached_port = port;
        m->cached_at = w != NULL ? uv_now(w->ig->g->loop) : 0;
    }
    while (w != NULL) {
        struct ig_conn *next = w->wnext;

        w->wnext = NULL;
        w->map = NULL;
        sb = gw_sandbox_find(w->ig->g, m->sandbox);
        if (port == 0 || sb == NULL) {
            conn_answer(w, 502, "sandbox %s: %s\n", m->sandbox,
                        why != NULL ? why : "the sandbox is gone");
        } else {
            conn_connect(w, sb, port);
        }
        w = next;
    }
}

/* Route @c by c->host: the mapping, the sandbox's state, the port (a pid's looked up). */
static void conn_route(struct ig_conn *c)
{
    struct gw_ingress *ig = c->ig;
    struct ig_map *m = map_find(ig, c->host);
    struct gw_sandbox *sb;
    char why[512];

    c->st = IC_ROUTE;
    if (m == NULL) {
        conn_answer(c, 404, "no sandbox is exposed at %s\n", c->host);
        return;
    }
    snprintf(c->sandbox, sizeof(c->sandbox), "%s", m->sandbox);
    sb = gw_sandbox_find(ig->g, m->sandbox);
    if (sb == NULL) {
        if (ig_prune(ig)) {
            (void)ig_save(ig);
        }
        conn_answer(c, 404, "no sandbox is exposed at %s (its sandbox is gone)\n", c->host);
        return;
    }
    if (!m->mapped) {
        conn_answer(c, 404, "%s is not mapped to a port of sandbox %s yet (exposeHttp)\n", c->host,
                    sb->id);
        return;
    }
    if (sb->state == GW_SB_BOOTING) {
        conn_answer(c, 503, "sandbox %s is still starting\n", sb->id);
        return;
    }
    if (sb->state != GW_SB_READY) {
        conn_answer(c, 502, "sandbox %s is not running%s%s\n", sb->id, sb->why[0] ? ": " : "",
                    sb->why);
        return;
    }
    if (m->port != 0) {
        conn_connect(c, sb, m->port);
        return;
    }
    if (m->cached_port != 0 && uv_now(ig->g->loop) - m->cached_at < IG_PID_CACHE_MS) {
        conn_connect(c, sb, m->cached_port);
        return;
    }
    c->map = m;
    c->wnext = m->waiters;
    m->waiters = c;
    if (m->q == NULL) {
        m->q = gw_pid_port_find(sb, m->pid, map_port_found, m, why, sizeof(why));
        if (m->q == NULL) {
            map_fail_waiters(m, 502, why);
        }
    }
}

/* The first request head is in c->buf[0..end): parse, find the host, route. */
static void conn_head(struct ig_conn *c, size_t end)
{
    struct head_ctx h = { 0 };
    http_parser p;
    const char *why;
    size_t n;

    http_parser_init(&p, HTTP_REQUEST);
    p.data = &h;
    n = http_parser_execute(&p, &head_settings, c->buf, end);
    if (!h.complete || (HTTP_PARSER_ERRNO(&p) != HPE_OK && HTTP_PARSER_ERRNO(&p) != HPE_PAUSED)) {
        conn_answer(c, 400, "malformed HTTP request head: %s\n",
                    http_errno_description(HTTP_PARSER_ERRNO(&p)));
        return;
    }
    if (h.fr.nhost != 1 || h.host_long) {
        conn_answer(c, 400, "%s\n",
                    h.fr.nhost == 0  ? "the request has no Host header"
                    : h.fr.nhost > 1 ? "the request has more than one Host header"
                                     : "the Host header is too long");
        return;
    }
    /* What a proxy in front could read apart from the relay (relay_in checks the same on every
     * later request). The head paused before its last byte, at c->buf[n]. */
    if ((why = request_unsafe(&h, &p, c->buf, n, n < end ? c->buf[n] : '\0')) != NULL) {
        conn_answer(c, 400, "ambiguous HTTP request framing: %s\n", why);
        return;
    }
    if (host_name(h.host, c->host, sizeof(c->host)) < 0) {
        /* Not a DNS name (an address, junk): nothing is exposed there. Do not echo it. */
        conn_answer(c, 404, "no sandbox is exposed at this host\n");
        return;
    }
    conn_route(c);
}

/* A head ends at the first empty line ("\r\n\r\n", or "\n\n" as http-parser accepts). */
static size_t head_end(const char *b, size_t len, size_t from)
{
    for (size_t i = from > 3 ? from - 3 : 0; i < len; i++) {
        if (b[i] != '\n') {
            continue;
        }
        if (i + 1 < len && b[i + 1] == '\n') {
            return i + 2;
        }
        if (i + 2 < len && b[i + 1] == '\r' && b[i + 2] == '\n') {
            return i + 3;
        }
    }
    return 0;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct ig_conn *c = h->data;

    (void)suggested;
    if (c->st == IC_HEAD) {
        if (c->bcap < IG_HEAD_MAX + 1 && c->bcap - c->blen < 4096) {
            size_t cap = c->bcap ? c->bcap * 2 : 8192;
            char *p;

            cap = cap > IG_HEAD_MAX + 1 ? IG_HEAD_MAX + 1 : cap;
            p = realloc(c->buf, cap);
            if (p != NULL) {
                c->buf = p;
                c->bcap = cap;
            }
        }
        *buf = uv_buf_init(c->buf + c->blen, (unsigned)(c->bcap - c->blen));
        return;
    }
    /* relay, linger: one read buffer */
    if (c->bcap < IG_READ_BUF) {
        char *p = realloc(c->buf, IG_READ_BUF);

        if (p != NULL) {
            c->buf = p;
            c->bcap = IG_READ_BUF;
        }
    }
    *buf = uv_buf_init(c->buf, (unsigned)c->bcap);
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    struct ig_conn *c = st->data;

    (void)buf;
    if (c->st == IC_CLOSING || n == 0) {
        return;
    }
    if (n == UV_ENOBUFS) {
        conn_close(c);
        return;
    }
    conn_active(c);
    switch (c->st) {
    case IC_HEAD: {
        size_t from = c->blen, end;

        if (n < 0) {
            conn_close(c); /* gone before a whole head */
            return;
        }
        c->blen += (size_t)n;
        if (from == 0) {
            /* Empty lines before the request line are dropped (RFC 9112 2.2). */
            size_t lead = 0;

            while (lead < c->blen && (c->buf[lead] == '\r' || c->buf[lead] == '\n')) {
                lead++;
            }
            memmove(c->buf, c->buf + lead, c->blen - lead);
            c->blen -= lead;
        }
        end = head_end(c->buf, c->blen, from);
        if (end == 0) {
            if (c->blen > IG_HEAD_MAX) {
                conn_answer(c, 431, "request head larger than %u bytes\n", IG_HEAD_MAX);
            }
            return;
        }
        conn_read(c, false);
        uv_timer_start(&c->timer, on_timeout, IG_CONNECT_MS, 0);
        conn_head(c, end);
        return;
    }
    case IC_RELAY: {
        if (n < 0) {
            if (n != UV_EOF) {
                conn_close(c);
                return;
            }
            c->client_eof = true;
            conn_read(c, false);
            if (c->gs != NULL) {
                gw_gsock_shutdown(c->gs); /* may close the guest socket (both ended) */
            }
            return;
        }
        if (c->gs == NULL || c->in_guest_full || c->refused) {
            return; /* the guest takes no more: drop */
        }
        relay_in(c, c->buf, (size_t)n);
        if (c->hold || c->up_wait) {
            conn_read(c, false);
        }
        return;
    }
    case IC_ANSWER:
        if (n < 0) {
            conn_close(c);
        }
        return; /* dropped */
    default:
        return;
    }
}

static void conn_read(struct ig_conn *c, bool on)
{
    if (on == c->reading || c->st == IC_CLOSING) {
        return;
    }
    if (on) {
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0) {
            conn_close(c);
            return;
        }
    } else {
        uv_read_stop((uv_stream_t *)&c->tcp);
    }
    c->reading = on;
}

static void reject_closed(uv_handle_t *h)
{
    free(h);
}

/* --ingress-max-conns connections are open: the one idle longest (any state) is closed for a
 * new one, so connections held open and quiet cannot lock clients out (a busy one is never the
 * first to go). Logged at most once a minute, with the count. */
static void conn_make_room(struct gw_ingress *ig)
{
    struct ig_conn *old = NULL;
    uint64_t now = uv_now(ig->g->loop);

    for (struct ig_conn *c = ig->conns; c != NULL; c = c->next) {
        if (c->st != IC_CLOSING && (old == NULL || c->active <= old->active)) {
            old = c; /* the list is newest first: ties go to the oldest */
        }
    }
    if (old == NULL) {
        return;
    }
    ig->evicted++;
    if (!ig->g->opt.quiet && (ig->evict_logged == 0 || now - ig->evict_logged >= IG_EVICT_LOG_MS)) {
        gw_log("ingress: %u connections open (--ingress-max-conns): closed the one idle longest "
               "(%" PRIu64 " s, host %s) for a new one (%" PRIu64 " closed so since this line last "
               "came)",
               ig->nlive, (now - old->active) / 1000,
               old->host[0] != '\0' ? old->host : "no host yet", ig->evicted);
        ig->evict_logged = now;
        ig->evicted = 0;
    }
    conn_close(old);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct gw_ingress *ig = server->data;
    struct ig_conn *c;

    if (status < 0 || ig->stopped) {
        return;
    }
    if (ig->nlive >= ig->g->opt.ig_conns) {
        conn_make_room(ig);
    }
    if (ig->nlive >= ig->g->opt.ig_conns || ig->nconns >= ig->g->opt.ig_conns + IG_CLOSING_SLACK) {
        uv_tcp_t *t = malloc(sizeof(*t));

        if (t == NULL || uv_tcp_init(ig->g->loop, t) < 0) {
            free(t);
            return;
        }
        (void)uv_accept(server, (uv_stream_t *)t);
        uv_close((uv_handle_t *)t, reject_closed);
        return;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return;
    }
    if (uv_tcp_init(ig->g->loop, &c->tcp) < 0) {
        free(c);
        return;
    }
    c->ig = ig;
    c->tcp.data = c;
    c->timer.data = c;
    c->handles = 1;
    if (uv_timer_init(ig->g->loop, &c->timer) == 0) {
        c->handles = 2;
    }
    c->next = ig->conns;
    if (ig->conns != NULL) {
        ig->conns->prev = c;
    }
    ig->conns = c;
    ig->nconns++;
    ig->nlive++;
    ig->refs++;
    c->st = IC_HEAD;
    conn_active(c);
    if (c->handles != 2 || uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
        c->st = IC_CLOSING;
        ig->nlive--;
        uv_close((uv_handle_t *)&c->tcp, conn_handle_closed);
        if (c->handles == 2) {
            uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
        }
        return;
    }
    (void)uv_tcp_nodelay(&c->tcp, 1);
    uv_timer_start(&c->timer, on_timeout, IG_FIRST_MS, 0);
    conn_read(c, true);
}

/* --- start, stop ---------------------------------------------------------------------------- */

static void listener_closed(uv_handle_t *h)
{
    ig_unref(h->data);
}

int gw_ingress_start(struct gw *g, char *why, size_t whylen)
{
    const char *addr = g->opt.http_listen;
    const char *colon;
    struct sockaddr_storage ss;
    struct gw_ingress *ig;
    char host[256];
    char *end = NULL;
    long port;
    size_t hl;
    int r;

    if (addr == NULL) {
        return 0;
    }
    colon = strrchr(addr, ':');
    if (colon == NULL || (size_t)(colon - addr) >= sizeof(host)) {
        snprintf(why, whylen, "--http-listen %s: not HOST:PORT", addr);
        return -1;
    }
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    errno = 0;
    port = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || errno != 0 || port < 0 || port > 65535) {
        snprintf(why, whylen, "--http-listen %s: bad port", addr);
        return -1;
    }
    hl = strlen(host);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
        host[hl - 1] = '\0';
        r = uv_ip6_addr(host + 1, (int)port, (struct sockaddr_in6 *)&ss);
        host[hl - 1] = ']';
    } else {
        r = uv_ip4_addr(host, (int)port, (struct sockaddr_in *)&ss);
    }
    if (r < 0) {
        snprintf(why, whylen, "--http-listen %s: bad address: %s", addr, uv_strerror(r));
        return -1;
    }
    ig = calloc(1, sizeof(*ig));
    if (ig == NULL) {
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    ig->g = g;
    snprintf(ig->host, sizeof(ig->host), "%s", host);
    snprintf(ig->base, sizeof(ig->base), "%s",
             g->opt.http_domain != NULL ? g->opt.http_domain : "sbx.localhost");
    /* Room for "<20>-<8>." in front of it. */
    if (strlen(g->opt.http_domain != NULL ? g->opt.http_domain : "") > GW_DOMAIN_MAX - 30 ||
        dns_name(ig->base, GW_DOMAIN_MAX - 30) < 0) {
        snprintf(why, whylen,
                 "--http-domain %.80s: not a DNS name (labels of a-z, 0-9 and '-', at most %d "
                 "bytes)",
                 g->opt.http_domain, GW_DOMAIN_MAX - 30);
        free(ig);
        return -1;
    }
    if (snprintf(ig->path, sizeof(ig->path), "%s/expose.json", g->opt.data_dir) >=
        (int)sizeof(ig->path)) {
        snprintf(why, whylen, "--data-dir is too long");
        free(ig);
        return -1;
    }
    if ((r = uv_tcp_init(g->loop, &ig->tcp)) < 0) {
        snprintf(why, whylen, "--http-listen: %s", uv_strerror(r));
        free(ig);
        return -1;
    }
    ig->tcp.data = ig;
    ig->refs = 1;
    if ((r = uv_tcp_bind(&ig->tcp, (struct sockaddr *)&ss, 0)) < 0 ||
        (r = uv_listen((uv_stream_t *)&ig->tcp, 511, on_connection)) < 0) {
        snprintf(why, whylen, "--http-listen %s: %s", addr, uv_strerror(r));
        ig->stopped = true;
        uv_close((uv_handle_t *)&ig->tcp, listener_closed);
        return -1;
    }
    {
        struct sockaddr_storage b;
        int blen = sizeof(b);

        if (uv_tcp_getsockname(&ig->tcp, (struct sockaddr *)&b, &blen) == 0) {
            ig->port = b.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&b)->sin6_port)
                                               : ntohs(((struct sockaddr_in *)&b)->sin_port);
        }
    }
    g->ingress = ig;
    ig_load(ig);
    if (!g->opt.quiet) {
        gw_log("ingress on %s:%d (domains *.%s, %u restored)", ig->host, ig->port, ig->base,
               ig->nmaps);
    }
    return 0;
}

void gw_ingress_stop(struct gw *g)
{
    struct gw_ingress *ig = g->ingress;

    if (ig == NULL) {
        return;
    }
    g->ingress = NULL;
    ig->stopped = true;
    for (struct ig_map *m = ig->maps; m != NULL; m = m->next) {
        if (m->q != NULL) {
            gw_pid_port_cancel(m->q);
            m->q = NULL;
        }
    }
    for (struct ig_conn *c = ig->conns; c != NULL; c = c->next) {
        conn_close(c);
    }
    uv_close((uv_handle_t *)&ig->tcp, listener_closed);
}

/* --- REST and the method -------------------------------------------------------------------- */

void gw_rest_expose_http(struct gw *g, struct gw_http_conn *hc, const struct gw_http_req *req,
                         struct gw_sandbox *sb)
{
    char domain[GW_DOMAIN_MAX + 1], why[512];
    json_t *body = NULL;
    int64_t port = 0, pid = -1;

    if (g->ingress == NULL) {
        gw_rest_error(
            hc, 503, "HTTP_INGRESS_DISABLED",
            "expose/http needs the HTTP ingress: start sbx-gateway with --http-listen HOST:PORT");
        return;
    }
    if (req->body_len > 0) {
        json_error_t jerr;

        body = json_loadb(req->body, req->body_len, 0, &jerr);
        if (!json_is_object(body)) {
            json_decref(body);
            gw_rest_error(
                hc, 400, "INVALID_REQUEST",
                "the body must be a JSON object ({}, or the Python SDK's {port} / {pid})");
            return;
        }
        /* The Python SDK sends the target here: map at once. */
        if (json_object_get(body, "port") != NULL && !json_is_null(json_object_get(body, "port")) &&
            (gw_json_int64(json_object_get(body, "port"), &port) < 0 || port < 1 || port > 65535)) {
            json_decref(body);
            gw_rest_error(hc, 400, "INVALID_REQUEST", "port must be an integer in 1..65535");
            return;
        }
        if (port == 0 && json_object_get(body, "pid") != NULL &&
            !json_is_null(json_object_get(body, "pid")) &&
            (gw_json_int64(json_object_get(body, "pid"), &pid) < 0 || pid < 0 ||
             pid > (int64_t)UINT32_MAX)) {
            json_decref(body);
            gw_rest_error(hc, 400, "INVALID_REQUEST", "pid must be a process id");
            return;
        }
        json_decref(body);
    }
    if (gw_expose_new_domain(sb, domain, sizeof(domain), why, sizeof(why)) < 0 ||
        ((port > 0 || pid >= 0) &&
         gw_expose_map(sb, domain, (uint16_t)port, pid >= 0 ? (uint32_t)pid : 0, why, sizeof(why)) <
             0)) {
        gw_rest_error(hc, 503, "EXPOSE_FAILED", "%s", why);
        return;
    }
    if (!g->opt.quiet) {
        gw_log("%s: exposed at %s", sb->id, domain);
    }
    gw_http_respond_json(hc, 200, NULL, json_pack("{s:s}", "domain", domain));
}

void gw_m_expose_http(struct gw_call *call, json_t *params)
{
    struct gw_sandbox *sb = gw_session_sandbox(call->s);
    const char *domain;
    bool has_port, has_pid;
    int64_t port = 0, pid = 0;
    char why[512];

    if (gw_param_str(call, params, "domain", true, &domain) < 0) {
        return;
    }
    has_port =
        json_object_get(params, "port") != NULL && !json_is_null(json_object_get(params, "port"));
    has_pid =
        json_object_get(params, "pid") != NULL && !json_is_null(json_object_get(params, "pid"));
    if (has_port == has_pid) {
        gw_call_fail(call, "TypeError", NULL, "exposeHttp: exactly one of port or pid is required");
        return;
    }
    if (has_port && gw_param_int(call, params, "port", true, 1, 65535, 0, &port) < 0) {
        return;
    }
    if (has_pid && gw_param_int(call, params, "pid", true, 0, UINT32_MAX, 0, &pid) < 0) {
        return;
    }
    if (sb->g->ingress == NULL) {
        gw_call_fail(call, "NotSupported", "ENOTSUP",
                     "exposeHttp: the HTTP ingress is off (start sbx-gateway with --http-listen)");
        return;
    }
    if (gw_expose_map(sb, domain, (uint16_t)port, (uint32_t)pid, why, sizeof(why)) < 0) {
        gw_call_fail(call, "NotFound", "ENOENT", "exposeHttp: %s", why);
        return;
    }
    if (!sb->g->opt.quiet) {
        if (has_port) {
            gw_log("%s: %s -> port %lld", sb->id, domain, (long long)port);
        } else {
            gw_log("%s: %s -> the port of process %lld", sb->id, domain, (long long)pid);
        }
    }
    gw_call_ok(call, NULL);
}
