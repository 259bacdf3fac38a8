/*
 * fetch{url, method, headers, redirect, abortId?, bodyStreamId?, pid?} (docs/GATEWAY.md "fetch"):
 * an HTTP/1.1 request made by the gateway for the sandbox, over httpc.h.
 *
 * Where it goes, per hop (a redirect is a new hop):
 *   - with `pid` (DenoProcess.fetch): the server that process listens on inside the sandbox
 *     (gsock.h's gw_pid_port_find), whatever the URL's host, port and scheme say;
 *   - host localhost, 127.0.0.1 or [::1]: that port of the sandbox's own loopback (a guest socket);
 *   - any other host: the gateway's own TCP connection, acting as the sandbox's egress, only when
 *     the sandbox's allowNet (config allow_net) lets the host through; --resolve HOST:ADDR maps a
 *     name to an address (and is the only way to reach an address of the host itself). On the
 *     egress, each secret's placeholder in the target and header values is replaced by its value
 *     when the host is one of the secret's hosts (https too: substituted before encryption, and
 *     nothing of the request leaves before the certificate is verified for the host).
 *   https (not with `pid`): TLS on that same connection (tls.h), the certificate verified for
 *     the URL's host against the system's trust store and --ca-file.
 *
 * The request body (bodyStreamId) is the client's stream: up to FETCH_PREBUF bytes are gathered
 * until the connection is up; a body complete by then goes with content-length (and can be sent
 * again for a 307/308), a longer or later one streams with chunked transfer-encoding (and holds
 * the WebSocket while the connection's queue is full). The response body goes to the SDK as a
 * server stream, read from the connection only while the WebSocket's queue has room.
 *
 * Lifetime: the call is held (gw_call_hold) until the exchange is over, so the session outlives
 * the fetch; an abort reaches it until then (call->abort_late); the SDK's cancel of the body
 * stream and the session's end come through gw_session_on_cancel.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <http_parser.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gsock.h"
#include "gw.h"
#include "httpc.h"
#include "tls.h"

#include <nettle/base64.h>
#include <nettle/hmac.h>

#define FETCH_URL_MAX        (64u << 10)
#define FETCH_METHOD_MAX     32
#define FETCH_HEADERS_MAX    1024
#define FETCH_HEADER_BYTES   (256u << 10) /* request header names + values */
#define FETCH_REDIRECTS_MAX  20
#define FETCH_PREBUF         (64u << 10)
#define FETCH_PREBUF_MS      100 /* once connected, how long a short body may take to end */
#define FETCH_SECRET_NAME    128
#define FETCH_SECRET_VAL_MAX (64u << 10)
/* Room in a request head for what the gateway writes itself (request line and host line text,
 * accept, user-agent, the body framing, connection, the final CRLF, httpc's NUL): ~120 bytes. */
#define FETCH_HEAD_OWN 256
/* Fetches in flight (each holds a connection, a file descriptor and ~130 KiB of buffers, https
 * ~64 KiB more and a GnuTLS session, until
 * its response ends; a server that never answers holds them until an abort): per session, and
 * in the whole gateway. Beyond: the call fails with code LIMIT. */
#define FETCH_SESSION_MAX 256
#define FETCH_GATEWAY_MAX 1024

/* --- small helpers -------------------------------------------------------------------------- */

static bool is_tchar(unsigned char c)
{
    return isalnum(c) || (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static bool is_token(const char *s, size_t max)
{
    size_t n = 0;

    for (; *s != '\0'; s++, n++) {
        if (!is_tchar((unsigned char)*s)) {
            return false;
        }
    }
    return n > 0 && n <= max;
}

/* A JSON string of code points <= U+00FF (a JavaScript ByteString) as its bytes, malloc'd; NULL
 * when a code point is above U+00FF (or out of memory). */
static char *latin1_bytes(const char *utf8, size_t len)
{
    char *out = malloc(len + 1);
    size_t j = 0;

    if (out == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)utf8[i];

        if (c < 0x80) {
            out[j++] = (char)c;
        } else if ((c == 0xC2 || c == 0xC3) && i + 1 < len) {
            out[j++] = (char)(((c & 0x03) << 6) | ((unsigned char)utf8[++i] & 0x3F));
        } else {
            free(out);
            return NULL;
        }
    }
    out[j] = '\0';
    return out;
}

/* Bytes as a JSON string of the same code points (latin-1 decoding, a ByteString), dropping
 * control characters but HTAB. */
static json_t *bytes_latin1(const char *s)
{
    size_t n = strlen(s);
    char *out = malloc(n * 2 + 1);
    size_t j = 0;
    json_t *v;

    if (out == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];

        if ((c < 0x20 && c != '\t') || c == 0x7F) {
            continue;
        }
        if (c < 0x80) {
            out[j++] = (char)c;
        } else {
            out[j++] = (char)(0xC0 | (c >> 6));
            out[j++] = (char)(0x80 | (c & 0x3F));
        }
    }
    v = json_stringn(out, j);
    free(out);
    return v;
}

/* --- URLs ----------------------------------------------------------------------------------- */

struct url {
    bool https;
    char host[256]; /* lower-cased; IPv6 without brackets */
    bool v6;
    uint16_t port;
    char *target; /* path + query, malloc'd */
};

static void url_clear(struct url *u)
{
    free(u->target);
    memset(u, 0, sizeof(*u));
}

static uint16_t default_port(const struct url *u)
{
    return u->https ? 443 : 80;
}

/* "http[s]://host[:port]target" */
static char *url_string(const struct url *u)
{
    char *s = NULL;
    char port[16] = "";

    if (u->port != default_port(u)) {
        snprintf(port, sizeof(port), ":%u", u->port);
    }
    if (asprintf(&s, "%s://%s%s%s%s%s", u->https ? "https" : "http", u->v6 ? "[" : "", u->host,
                 u->v6 ? "]" : "", port, u->target) < 0) {
        return NULL;
    }
    return s;
}

/* The length of @s's scheme ("http" in "http://..."), 0 when it has none. */
static size_t scheme_len(const char *s)
{
    size_t i = 0;

    if (!isalpha((unsigned char)s[0])) {
        return 0;
    }
    while (isalnum((unsigned char)s[i]) || s[i] == '+' || s[i] == '-' || s[i] == '.') {
        i++;
    }
    return s[i] == ':' ? i : 0;
}

/* Parse absolute URL @s into @u. 0, or -1 with the TypeError's text in @why. */
static int url_parse(const char *s, struct url *u, char *why, size_t whylen)
{
    struct http_parser_url pu;
    size_t n = strlen(s), sl = scheme_len(s);
    const char *path = "/";
    size_t plen = 1;

    memset(u, 0, sizeof(*u));
    if (n > FETCH_URL_MAX) {
        snprintf(why, whylen, "the URL is over %u bytes", FETCH_URL_MAX);
        return -1;
    }
    if (sl == 0) {
        snprintf(why, whylen, "Invalid URL: '%.200s'", s);
        return -1;
    }
    if (sl == 4 && strncasecmp(s, "http", 4) == 0) {
        u->https = false;
    } else if (sl == 5 && strncasecmp(s, "https", 5) == 0) {
        u->https = true;
    } else {
        snprintf(why, whylen, "scheme '%.*s' not supported", (int)(sl < 32 ? sl : 32), s);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] <= 0x20 || s[i] == 0x7F) {
            snprintf(why, whylen, "Invalid URL: '%.200s'", s);
            return -1;
        }
    }
    http_parser_url_init(&pu);
    if (http_parser_parse_url(s, n, 0, &pu) != 0 || !(pu.field_set & (1 << UF_HOST)) ||
        pu.field_data[UF_HOST].len == 0 || pu.field_data[UF_HOST].len >= sizeof(u->host)) {
        snprintf(why, whylen, "Invalid URL: '%.200s'", s);
        return -1;
    }
    if (pu.field_set & (1 << UF_USERINFO)) {
        snprintf(why, whylen, "credentials in the URL are not supported: '%.200s'", s);
        return -1;
    }
    memcpy(u->host, s + pu.field_data[UF_HOST].off, pu.field_data[UF_HOST].len);
    u->host[pu.field_data[UF_HOST].len] = '\0';
    for (char *c = u->host; *c != '\0'; c++) {
        *c = (char)tolower((unsigned char)*c);
    }
    u->v6 = strchr(u->host, ':') != NULL;
    if (pu.field_set & (1 << UF_PORT)) {
        if (pu.port == 0) {
            snprintf(why, whylen, "Invalid URL: port 0: '%.200s'", s);
            return -1;
        }
        u->port = pu.port;
    } else {
        u->port = default_port(u);
    }
    if (pu.field_set & (1 << UF_PATH)) {
        path = s + pu.field_data[UF_PATH].off;
        plen = pu.field_data[UF_PATH].len;
    }
    if (pu.field_set & (1 << UF_QUERY)) {
        if (asprintf(&u->target, "%.*s?%.*s", (int)plen, path, (int)pu.field_data[UF_QUERY].len,
                     s + pu.field_data[UF_QUERY].off) < 0) {
            u->target = NULL;
        }
    } else if (asprintf(&u->target, "%.*s", (int)plen, path) < 0) {
        u->target = NULL;
    }
    if (u->target == NULL) {
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    return 0;
}

/* RFC 3986 5.2.4 on @path (in place; a path that starts with '/'). */
static void remove_dots(char *path)
{
    char *out = path, *in = path;

    while (*in != '\0') {
        char *seg_end;
        size_t seg;

        /* in points at '/' */
        seg_end = strchr(in + 1, '/');
        seg = seg_end != NULL ? (size_t)(seg_end - in) : strlen(in);
        if (seg == 2 && in[1] == '.') { /* "/." */
            in += 2;
            if (*in == '\0') {
                *out++ = '/';
            }
            continue;
        }
        if (seg == 3 && in[1] == '.' && in[2] == '.') { /* "/.." */
            while (out > path && *--out != '/') {
            }
            in += 3;
            if (*in == '\0') {
                *out++ = '/';
            }
            continue;
        }
        memmove(out, in, seg);
        out += seg;
        in += seg;
    }
    if (out == path) {
        *out++ = '/';
    }
    *out = '\0';
}

/* Location @loc resolved against @base into a new absolute URL string (percent-encoding bytes a
 * URL cannot carry). NULL when out of memory or too long. */
static char *url_resolve(const struct url *base, const char *loc)
{
    char enc[FETCH_URL_MAX + 1];
    size_t j = 0;
    char *b = url_string(base), *out = NULL;
    char *q;

    if (b == NULL) {
        return NULL;
    }
    for (const unsigned char *p = (const unsigned char *)loc; *p != '\0'; p++) {
        if (j + 4 > FETCH_URL_MAX) {
            free(b);
            return NULL;
        }
        if (*p <= 0x20 || *p >= 0x7F || *p == '"' || *p == '<' || *p == '>' || *p == '\\') {
            j += (size_t)snprintf(enc + j, 4, "%%%02X", *p);
        } else {
            enc[j++] = (char)*p;
        }
    }
    enc[j] = '\0';
    if ((q = strchr(enc, '#')) != NULL) {
        *q = '\0';
    }
    if (scheme_len(enc) > 0) {
        out = strdup(enc);
    } else if (enc[0] == '/' && enc[1] == '/') {
        if (asprintf(&out, "%s:%s", base->https ? "https" : "http", enc) < 0) {
            out = NULL;
        }
    } else {
        /* origin + a path: absolute, query-only, or relative to the base's directory */
        size_t olen = strlen(b) - strlen(base->target);
        const char *bpath = base->target;
        size_t bdir, bplen = strcspn(bpath, "?");
        char *path;

        if (enc[0] == '/') {
            path = strdup(enc);
        } else if (enc[0] == '?') {
            path = NULL;
            if (asprintf(&path, "%.*s%s", (int)bplen, bpath, enc) < 0) {
                path = NULL;
            }
        } else if (enc[0] == '\0') {
            path = strdup(bpath);
        } else {
            bdir = bplen;
            while (bdir > 0 && bpath[bdir - 1] != '/') {
                bdir--;
            }
            path = NULL;
            if (asprintf(&path, "%.*s%s", (int)bdir, bpath, enc) < 0) {
                path = NULL;
            }
        }
        if (path != NULL) {
            char *qs = strchr(path, '?');
            char *tail = NULL;

            if (qs != NULL) {
                tail = strdup(qs);
                *qs = '\0';
            }
            if (qs == NULL || tail != NULL) {
                remove_dots(path);
                if (asprintf(&out, "%.*s%s%s", (int)olen, b, path, tail != NULL ? tail : "") < 0) {
                    out = NULL;
                }
            }
            free(tail);
            free(path);
        }
    }
    free(b);
    return out;
}

/* --- host patterns (allowNet, secrets' hosts, --resolve) ----------------------------------- */

/* Compare two hosts: IP literals by their bytes, names case-insensitively without a final dot. */
static bool host_eq(const char *a, size_t alen, const char *b)
{
    char x[256], y[256];
    unsigned char ba[16], bb[16];
    size_t blen = strlen(b);

    if (alen >= sizeof(x) || blen >= sizeof(y)) {
        return false;
    }
    memcpy(x, a, alen);
    x[alen] = '\0';
    memcpy(y, b, blen + 1);
    if (inet_pton(AF_INET6, x, ba) == 1) {
        return inet_pton(AF_INET6, y, bb) == 1 && memcmp(ba, bb, 16) == 0;
    }
    if (alen > 0 && x[alen - 1] == '.') {
        x[--alen] = '\0';
    }
    if (blen > 0 && y[blen - 1] == '.') {
        y[--blen] = '\0';
    }
    return alen == blen && strcasecmp(x, y) == 0;
}

/* A port pattern "1".."65535" into *@out. */
static bool parse_port(const char *s, uint16_t *out)
{
    unsigned long v = 0;

    if (*s == '\0' || strlen(s) > 5) {
        return false;
    }
    for (; *s != '\0'; s++) {
        if (!isdigit((unsigned char)*s)) {
            return false;
        }
        v = v * 10 + (unsigned long)(*s - '0');
    }
    if (v == 0 || v > 65535) {
        return false;
    }
    *out = (uint16_t)v;
    return true;
}

/*
 * Whether @pat lets (@host, @port) through: "host", "host:port", "*.host" (any subdomain, not the
 * host itself), "*.host:port", an IPv4 literal with or without a port, "[v6]" or "[v6]:port" (a
 * bare v6 literal too). A malformed pattern matches nothing.
 */
static bool pattern_match(const char *pat, const char *host, uint16_t port)
{
    const char *h = pat, *colon;
    size_t hlen;
    uint16_t pp = 0;
    bool any_port = true;

    if (pat[0] == '[') {
        const char *close = strchr(pat, ']');

        if (close == NULL) {
            return false;
        }
        h = pat + 1;
        hlen = (size_t)(close - h);
        if (close[1] == ':') {
            if (!parse_port(close + 2, &pp)) {
                return false;
            }
            any_port = false;
        } else if (close[1] != '\0') {
            return false;
        }
    } else if ((colon = strchr(pat, ':')) != NULL && strchr(colon + 1, ':') == NULL) {
        hlen = (size_t)(colon - pat);
        if (!parse_port(colon + 1, &pp)) {
            return false;
        }
        any_port = false;
    } else {
        hlen = strlen(pat); /* a name, an IPv4 literal, or a bare IPv6 literal */
    }
    if (!any_port && pp != port) {
        return false;
    }
    if (hlen > 2 && h[0] == '*' && h[1] == '.') {
        size_t sl = hlen - 1, nl = strlen(host); /* ".example.com" */

        /* A final dot is not part of the name (as in host_eq): without this, "a.example.com."
         * failed "*.example.com", which "a.example.com" passes. */
        if (nl > 0 && host[nl - 1] == '.') {
            nl--;
        }
        return nl > sl && strncasecmp(host + nl - sl, h + 1, sl) == 0;
    }
    return hlen > 0 && host_eq(h, hlen, host);
}

/* Whether @list (a JSON array of patterns) lets (@host, @port) through. */
static bool list_match(json_t *list, const char *host, uint16_t port)
{
    size_t i;
    json_t *p;

    json_array_foreach(list, i, p)
    {
        if (json_is_string(p) && pattern_match(json_string_value(p), host, port)) {
            return true;
        }
    }
    return false;
}

/* The --resolve address of @host, or NULL. */
static const char *resolve_lookup(const struct gw *g, const char *host)
{
    for (size_t i = 0; i < g->opt.nresolve; i++) {
        const char *e = g->opt.resolve[i], *c = strchr(e, ':');

        if (c != NULL && host_eq(e, (size_t)(c - e), host)) {
            return c + 1;
        }
    }
    return NULL;
}

int gw_fetch_start(struct gw *g, char *why, size_t whylen)
{
    if (gw_tls_init(g->opt.ca_file, why, whylen) < 0) {
        return -1;
    }
    for (size_t i = 0; i < g->opt.nresolve; i++) {
        const char *e = g->opt.resolve[i], *c = strchr(e, ':');
        char a[64];
        unsigned char bin[16];
        size_t al;

        if (c == NULL || c == e || (size_t)(c - e) > 253 || e[0] == '[') {
            snprintf(why, whylen, "--resolve '%.200s': not HOST:ADDR", e);
            return -1;
        }
        al = strlen(c + 1);
        if (al >= 2 && c[1] == '[' && c[al] == ']' && al - 2 < sizeof(a)) {
            memcpy(a, c + 2, al - 2);
            a[al - 2] = '\0';
        } else if (al < sizeof(a)) {
            memcpy(a, c + 1, al + 1);
        } else {
            a[0] = '\0';
        }
        if (inet_pton(AF_INET, a, bin) != 1 && inet_pton(AF_INET6, a, bin) != 1) {
            snprintf(why, whylen, "--resolve '%.200s': '%.100s' is not an IP address", e, c + 1);
            return -1;
        }
        for (const char *p = e; p < c; p++) {
            if (!isalnum((unsigned char)*p) && *p != '-' && *p != '.' && *p != '_') {
                snprintf(why, whylen, "--resolve '%.200s': '%.*s' is not a host name", e,
                         (int)(c - e), e);
                return -1;
            }
        }
    }
    return 0;
}

/* --- secrets -------------------------------------------------------------------------------- */

static bool secret_name_ok(const char *k)
{
    size_t n = strlen(k);

    if (n == 0 || n > FETCH_SECRET_NAME || isdigit((unsigned char)k[0])) {
        return false;
    }
    for (; *k != '\0'; k++) {
        if (!isalnum((unsigned char)*k) && *k != '_') {
            return false;
        }
    }
    return true;
}

/* The placeholder the sandbox sees for secret @name: "sbx-secret-<name>-<32 hex>", the hex an
 * HMAC-SHA256 keyed by the gateway's token over the sandbox id and the name (stable across
 * restarts without being stored, and not guessable from inside the sandbox). */
static void placeholder(const struct gw_sandbox *sb, const char *name, char *out, size_t outlen)
{
    struct hmac_sha256_ctx ctx;
    uint8_t d[SHA256_DIGEST_SIZE];
    char hex[33];

    hmac_sha256_set_key(&ctx, strlen(sb->g->token), (const uint8_t *)sb->g->token);
    hmac_sha256_update(&ctx, 11, (const uint8_t *)"sbx-secret\0");
    hmac_sha256_update(&ctx, strlen(sb->id) + 1, (const uint8_t *)sb->id);
    hmac_sha256_update(&ctx, strlen(name), (const uint8_t *)name);
    hmac_sha256_digest(&ctx, sizeof(d), d);
    for (int i = 0; i < 16; i++) {
        snprintf(hex + 2 * i, 3, "%02x", d[i]);
    }
    snprintf(out, outlen, "sbx-secret-%s-%s", name, hex);
}

/* The config's secrets object (names and hosts; values only in sb->secrets), or NULL. */
static json_t *config_secrets(const struct gw_sandbox *sb)
{
    json_t *o = sb->config != NULL ? json_object_get(sb->config, "secrets") : NULL;

    return json_is_object(o) ? o : NULL;
}

/* Sandboxes whose env got their placeholders during this run of the gateway (by id). */
struct applied {
    struct applied *next;
    char id[32];
};
static struct applied *applied_list;

void gw_fetch_session_ready(struct gw_session *s)
{
    struct gw_sandbox *sb = gw_session_sandbox(s);
    json_t *secrets = config_secrets(sb), *v;
    const char *k;
    const char **vars;
    size_t n = 0;
    struct sbx_err err;
    struct applied *a;

    if (secrets == NULL || json_object_size(secrets) == 0) {
        return;
    }
    for (struct applied **pp = &applied_list; *pp != NULL;) {
        if (strcmp((*pp)->id, sb->id) == 0) {
            return; /* done by an earlier session */
        }
        if (gw_sandbox_find(sb->g, (*pp)->id) == NULL) {
            struct applied *gone = *pp;

            *pp = gone->next;
            free(gone);
            continue;
        }
        pp = &(*pp)->next;
    }
    vars = calloc(json_object_size(secrets) + 1, sizeof(*vars));
    a = calloc(1, sizeof(*a));
    if (vars == NULL || a == NULL) {
        free(vars);
        free(a);
        return;
    }
    json_object_foreach(secrets, k, v)
    {
        char ph[256], *e;

        if (!secret_name_ok(k)) {
            gw_log("sandbox %s: secret '%.64s': not a variable name; not set", sb->id, k);
            continue;
        }
        placeholder(sb, k, ph, sizeof(ph));
        if (asprintf(&e, "%s=%s", k, ph) >= 0) {
            vars[n++] = e;
        }
    }
    if (n > 0 && sbx_env_set_vars(gw_session_conn(s), vars, n, NULL, NULL, &err) < 0) {
        gw_log("sandbox %s: setting the secrets' placeholders: %s", sb->id, err.msg);
    }
    for (size_t i = 0; i < n; i++) {
        free((char *)vars[i]);
    }
    free(vars);
    snprintf(a->id, sizeof(a->id), "%s", sb->id);
    a->next = applied_list;
    applied_list = a;
}

struct rep {
    char ph[256];
    size_t pl;         /* strlen(ph) */
    const char *value; /* NULL: the value is not known (not kept across a restart) */
    size_t vl;         /* strlen(value) */
    const char *name;
};

/* Every placeholder starts so (placeholder()); names hold no '-', so none is a prefix of
 * another and at most one matches at a place. */
#define PH_PREFIX "sbx-secret-"

/* The placeholder of @reps that @p starts with, or NULL. */
static const struct rep *rep_at(const char *p, const struct rep *reps, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (strncmp(p, reps[i].ph, reps[i].pl) == 0) {
            return &reps[i];
        }
    }
    return NULL;
}

/* @in with every placeholder of @reps replaced (malloc'd), in one pass: a value is not searched
 * for placeholders in turn. The request head as a whole is what is bounded: the result (at most
 * HTTPC_REQ_FIELD_MAX bytes, httpc_request's cap on one piece) is taken from *@budget, what is
 * left of the head's bytes, and its length is known before anything is allocated, so repeating
 * a placeholder cannot make the gateway build more than one head's worth. NULL with @why when a
 * placeholder whose value is unknown occurs or the result does not fit; @what names the piece
 * there ("header x-a"). */
static char *substitute(const char *in, const struct rep *reps, size_t n, size_t *budget,
                        const char *what, char *why, size_t whylen)
{
    size_t limit = *budget < HTTPC_REQ_FIELD_MAX ? *budget : HTTPC_REQ_FIELD_MAX, len = 0;
    const char *src = in, *p;
    const struct rep *r;
    char *out, *o;

    /* The length first: stop as soon as it is over (each step adds at most a value's 64 KiB). */
    for (p = in; (p = strstr(p, PH_PREFIX)) != NULL;) {
        if ((r = rep_at(p, reps, n)) == NULL) {
            p++;
            continue;
        }
        if (r->value == NULL) {
            snprintf(why, whylen,
                     "the value of secret %s is not known to this gateway (values are kept in "
                     "memory only, and the gateway restarted since the sandbox was created)",
                     r->name);
            return NULL;
        }
        len += (size_t)(p - src) + r->vl;
        src = p = p + r->pl;
        if (len > limit) {
            break;
        }
    }
    len += strlen(src);
    if (len > limit) {
        if (len > HTTPC_REQ_FIELD_MAX) {
            snprintf(why, whylen,
                     "the request is too long with its secrets substituted: %s would be over "
                     "%u bytes (1 MiB), the most one piece of a request head may have",
                     what, HTTPC_REQ_FIELD_MAX);
        } else {
            snprintf(why, whylen,
                     "the request is too long with its secrets substituted: its head would be "
                     "over %u bytes (2 MiB), the most a request head may have",
                     HTTPC_REQ_HEAD_MAX);
        }
        return NULL;
    }
    out = malloc(len + 1);
    if (out == NULL) {
        snprintf(why, whylen, "out of memory");
        return NULL;
    }
    o = out;
    for (src = p = in; (p = strstr(p, PH_PREFIX)) != NULL;) {
        if ((r = rep_at(p, reps, n)) == NULL) {
            p++;
            continue;
        }
        memcpy(o, src, (size_t)(p - src));
        o += p - src;
        memcpy(o, r->value, r->vl);
        o += r->vl;
        src = p = p + r->pl;
    }
    strcpy(o, src);
    *budget -= len;
    return out;
}

/* --- the fetch ------------------------------------------------------------------------------ */

enum redirect_mode { RD_FOLLOW, RD_MANUAL, RD_ERROR };

struct fetch {
    struct gw_call *call;
    struct gw_session *s;
    struct gw_sandbox *sb;
    struct gw *g;
    char *method;
    char **hn, **hv; /* request headers: lower-case token names, byte values */
    size_t nh;
    char *url; /* the current URL (what error messages name; never with secrets in it) */
    struct url u;
    enum redirect_mode redirect;
    int redirects;
    bool has_pid;
    uint32_t pid;
    uint16_t pid_port;
    struct gw_pid_port *pq;

    /* request body */
    bool has_body, body_open, body_ended, body_decided, body_whole;
    struct gw_hold hold; /* on while the body waits for the connection or the server */
    uint64_t body_sid;
    struct gw_bytes body; /* gathered (FETCH_PREBUF), or kept whole for a redirect */

    uv_timer_t *wait; /* FETCH_PREBUF_MS after the connect (malloc'd: closed asynchronously) */

    /* the exchange */
    struct httpc *hc;
    bool head_sent;

    /* response */
    json_t *pending; /* the answer, held until the end of the read that brought the head (a
                        body that came whole with it is sent first: a client that cancels the
                        body at once then finds it closed, never an `end` after its cancel) */
    uint64_t sdk;
    bool cancel_hooked, drain_hooked, streaming, paused, ended;

    struct fetch *live_next, **live_prev; /* the list of fetches in flight (live) */
};

/* Every fetch from its start to fetch_end, for the FETCH_*_MAX caps. */
static struct fetch *live;
static unsigned nlive;

static void hop_start(struct fetch *f);

static void set_hold(struct fetch *f, bool hold)
{
    gw_session_hold(f->s, &f->hold, hold);
}

static void body_free(struct fetch *f)
{
    gw_bytes_clear(&f->body);
}

/* The end of the fetch: everything let go, the call released (answered first if it was not). */
static void fetch_end(struct fetch *f)
{
    struct gw_call *call = f->call;

    if (f->ended) {
        return;
    }
    f->ended = true;
    if (f->live_prev != NULL) {
        *f->live_prev = f->live_next;
        if (f->live_next != NULL) {
            f->live_next->live_prev = f->live_prev;
        }
        f->live_prev = NULL;
        nlive--;
    }
    httpc_close(f->hc);
    f->hc = NULL;
    if (f->pq != NULL) {
        gw_pid_port_cancel(f->pq);
        f->pq = NULL;
    }
    if (f->cancel_hooked) {
        f->cancel_hooked = false;
        gw_session_off_cancel(f->s, f->sdk);
    }
    if (f->drain_hooked) {
        f->drain_hooked = false;
        gw_session_off_drain(f->s, f);
    }
    set_hold(f, false);
    if (f->wait != NULL) {
        uv_close((uv_handle_t *)f->wait, (uv_close_cb)free);
        f->wait = NULL;
    }
    if (f->body_open) {
        f->body_open = false;
        gw_istream_cancel(f->s, f->body_sid, NULL);
    }
    body_free(f);
    call->on_abort = NULL;
    call->data = NULL;
    if (f->pending != NULL) {
        gw_call_ok(call, f->pending);
        f->pending = NULL;
    }
    if (!call->answered) {
        gw_call_fail(call, "TypeError", NULL, "error sending request for url (%.300s): %s",
                     f->url != NULL ? f->url : "?", "the request ended");
    }
    for (size_t i = 0; i < f->nh; i++) {
        free(f->hn[i]);
        free(f->hv[i]);
    }
    free(f->hn);
    free(f->hv);
    free(f->method);
    free(f->url);
    url_clear(&f->u);
    free(f);
    gw_call_release(call);
}

/* Fail before the answer: a TypeError naming the URL. */
static void fail_send(struct fetch *f, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail_send(struct fetch *f, const char *code, const char *fmt, ...)
{
    char msg[768];
    va_list ap;

    va_start(ap, fmt);
    (void)vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (!f->call->answered) {
        gw_call_fail(f->call, "TypeError", code, "error sending request for url (%.300s): %s",
                     f->url, msg);
    }
    fetch_end(f);
}

/* The body stream fails with @eo (stolen). */
static void stream_error(struct fetch *f, json_t *eo)
{
    if (f->streaming && f->cancel_hooked) {
        gw_session_notify(f->s, "$sandbox.stream.error",
                          json_pack("{s:I, s:o}", "streamId", (json_int_t)f->sdk, "error", eo));
    } else {
        json_decref(eo);
    }
}

static json_t *abort_error(void)
{
    json_t *e = gw_errobj("DOMException", NULL, "The signal has been aborted");

    if (e != NULL) {
        (void)json_object_set_new(e, "name", json_string("AbortError"));
    }
    return e;
}

static void on_abort(struct gw_call *call)
{
    struct fetch *f = call->data;

    if (f == NULL || f->ended) {
        return;
    }
    if (f->streaming) {
        stream_error(f, abort_error());
    }
    if (!call->answered) {
        json_decref(f->pending);
        f->pending = NULL;
        gw_call_fail_obj(call, abort_error());
    }
    fetch_end(f);
}

/* The hold's stall: the request body waited --stream-stall-timeout for the connection or the
 * server and none of it went. */
static void on_stall(void *user, int64_t ms)
{
    struct fetch *f = user;
    char d[32], msg[200];

    gw_duration_text(ms, d, sizeof(d));
    snprintf(msg, sizeof(msg),
             f->hc == NULL ? "the connection was not made within %s while the request body waited"
                           : "the server read none of the request body for %s",
             d);
    if (f->streaming) {
        stream_error(f, gw_errobj("TypeError", "ETIMEDOUT", msg));
        fetch_end(f);
        return;
    }
    fail_send(f, "ETIMEDOUT", "%s", msg);
}

static void answer_now(struct fetch *f)
{
    if (f->pending != NULL) {
        json_t *ok = f->pending;

        f->pending = NULL;
        gw_call_ok(f->call, ok);
    }
}

/* The SDK cancelled the body stream, or the session ends: stop without a word more. */
static void on_cancel(void *user)
{
    struct fetch *f = user;

    f->cancel_hooked = false;
    json_decref(f->pending);
    f->pending = NULL;
    if (!f->call->answered) {
        gw_call_fail(f->call, "Error", "ECONNRESET", "fetch: the connection closed");
    }
    fetch_end(f);
}

static void on_drain(void *user)
{
    struct fetch *f = user;

    if (f->paused && f->hc != NULL && !gw_session_congested(f->s)) {
        f->paused = false;
        httpc_pause(f->hc, false);
    }
}

/* --- sending -------------------------------------------------------------------------------- */

/* Write what is gathered of the body (chunked: as chunks; then the end when it came). 0 or -1. */
static int body_flush(struct fetch *f)
{
    int r = 0;

    for (struct gw_chunk *c = f->body.head; c != NULL && r >= 0; c = c->next) {
        int x = httpc_body(f->hc, c->data + c->off, c->len - c->off);

        r = x < 0 ? -1 : (x == 1 ? 1 : r);
    }
    if (r >= 0 && f->body_ended && httpc_body_end(f->hc) < 0) {
        r = -1;
    }
    if (!f->body_whole) {
        body_free(f); /* streamed: not kept (a 307/308 cannot send it again) */
    }
    if (r < 0) {
        return -1;
    }
    set_hold(f, r == 1);
    return 0;
}

/* Send the head for this hop: headers with secrets substituted toward their hosts (egress).
 * @kind/@len: the body framing. 0, or -1 having failed the fetch. */
static int send_head(struct fetch *f, enum httpc_body_kind kind, uint64_t len, bool egress)
{
    struct rep reps[64];
    size_t nreps = 0, n = 0;
    char why[512] = "", host_hdr[300], port[16] = "";
    const char **names = calloc(f->nh + 2, sizeof(char *));
    const char **values = calloc(f->nh + 2, sizeof(char *));
    char **owned = calloc(f->nh + 1, sizeof(char *));
    char *target = NULL, what[80];
    bool ua = false, accept = false;
    size_t budget;
    int rc = -1;

    if (names == NULL || values == NULL || owned == NULL) {
        snprintf(why, sizeof(why), "out of memory");
        goto out;
    }
    if (f->u.port != default_port(&f->u)) {
        snprintf(port, sizeof(port), ":%u", f->u.port);
    }
    snprintf(host_hdr, sizeof(host_hdr), "%s%s%s%s", f->u.v6 ? "[" : "", f->u.host,
             f->u.v6 ? "]" : "", port);
    /* What of httpc_request's HTTPC_REQ_HEAD_MAX the target and the header values may fill
     * (substitute takes from it): less the method, the host, the names (with ": " and CRLF)
     * and FETCH_HEAD_OWN. Without secrets the head is far below it (FETCH_URL_MAX,
     * FETCH_HEADER_BYTES). */
    budget = HTTPC_REQ_HEAD_MAX - FETCH_HEAD_OWN - strlen(f->method) - strlen(host_hdr);
    for (size_t i = 0; i < f->nh; i++) {
        budget -= strlen(f->hn[i]) + 4;
    }
    if (egress) {
        json_t *secrets = config_secrets(f->sb), *v;
        const char *k;

        if (secrets != NULL) {
            json_object_foreach(secrets, k, v)
            {
                json_t *hosts = json_object_get(v, "hosts");
                json_t *val = f->sb->secrets != NULL
                                  ? json_object_get(json_object_get(f->sb->secrets, k), "value")
                                  : NULL;

                if (nreps >= sizeof(reps) / sizeof(reps[0]) || !secret_name_ok(k) ||
                    !json_is_array(hosts) || !list_match(hosts, f->u.host, f->u.port)) {
                    continue;
                }
                placeholder(f->sb, k, reps[nreps].ph, sizeof(reps[nreps].ph));
                reps[nreps].pl = strlen(reps[nreps].ph);
                reps[nreps].name = k;
                reps[nreps].value = json_is_string(val) ? json_string_value(val) : NULL;
                reps[nreps].vl = reps[nreps].value != NULL ? strlen(reps[nreps].value) : 0;
                if (reps[nreps].value != NULL) {
                    const char *x = reps[nreps].value;

                    if (strlen(x) > FETCH_SECRET_VAL_MAX) {
                        snprintf(why, sizeof(why), "the value of secret %s is too long", k);
                        goto out;
                    }
                    for (; *x != '\0'; x++) {
                        if ((unsigned char)*x < 0x20 || *x == 0x7F) {
                            snprintf(why, sizeof(why),
                                     "the value of secret %s holds control characters, which a "
                                     "request cannot carry",
                                     k);
                            goto out;
                        }
                    }
                }
                nreps++;
            }
        }
    }
    target =
        substitute(f->u.target, reps, nreps, &budget, "the URL's path and query", why, sizeof(why));
    if (target == NULL) {
        goto out;
    }
    for (size_t i = 0; i < f->nh; i++) {
        snprintf(what, sizeof(what), "header %.64s", f->hn[i]);
        owned[i] = substitute(f->hv[i], reps, nreps, &budget, what, why, sizeof(why));
        if (owned[i] == NULL) {
            goto out;
        }
        names[n] = f->hn[i];
        values[n++] = owned[i];
        ua = ua || strcmp(f->hn[i], "user-agent") == 0;
        accept = accept || strcmp(f->hn[i], "accept") == 0;
    }
    if (!accept) {
        names[n] = "accept";
        values[n++] = "*/*";
    }
    if (!ua) {
        names[n] = "user-agent";
        values[n++] = "sbx-gateway";
    }
    if (httpc_request(f->hc, f->method, target, host_hdr, names, values, n, kind, len,
                      strcmp(f->method, "HEAD") == 0) < 0) {
        snprintf(why, sizeof(why), "the request could not be written");
        goto out;
    }
    f->head_sent = true;
    rc = 0;
out:
    if (owned != NULL) {
        for (size_t i = 0; i < f->nh; i++) {
            free(owned[i]);
        }
    }
    free(owned);
    free(names);
    free(values);
    free(target);
    if (rc < 0) {
        fail_send(f, NULL, "%s", why);
    }
    return rc;
}

/* Decide how the body goes (once the transport exists): whole with content-length when it has
 * ended, else chunked. 0, or -1 having failed the fetch. */
static int body_decide(struct fetch *f, bool egress)
{
    if (f->body_decided || f->hc == NULL) {
        return 0;
    }
    f->body_decided = true;
    if (f->body_ended) {
        f->body_whole = true;
        if (send_head(f, HTTPC_BODY_LENGTH, f->body.len, egress) < 0) {
            return -1;
        }
    } else if (send_head(f, HTTPC_BODY_CHUNKED, 0, egress) < 0) {
        return -1;
    }
    if (body_flush(f) < 0) {
        fail_send(f, NULL, "the request body could not be written");
        return -1;
    }
    return 0;
}

static bool hop_is_egress(const struct fetch *f)
{
    return !f->has_pid && strcmp(f->u.host, "localhost") != 0 &&
           strcmp(f->u.host, "127.0.0.1") != 0 && strcmp(f->u.host, "::1") != 0;
}

/* The client's request body stream. */
static int sink_data(void *user, const uint8_t *data, size_t len)
{
    struct fetch *f = user;

    if (f->ended || !f->has_body) {
        return 0; /* dropped (a redirect turned the request into a GET) */
    }
    if (!f->body_decided) {
        if (gw_bytes_push(&f->body, data, len) < 0) {
            f->body_open = false;
            fail_send(f, "ENOMEM", "out of memory");
            return -1;
        }
        if (f->body.len > FETCH_PREBUF) {
            if (f->hc != NULL) {
                if (body_decide(f, hop_is_egress(f)) < 0) {
                    return 0; /* the fetch ended and cancelled the stream */
                }
            } else {
                set_hold(f, true); /* until the connection exists */
            }
        }
        return 0;
    }
    {
        int r = f->hc != NULL ? httpc_body(f->hc, data, len) : -1;

        if (r < 0) {
            /* The server no longer takes the body: the response decides the outcome. */
            f->body_open = false;
            set_hold(f, false);
            return -1;
        }
        set_hold(f, r == 1);
    }
    return 0;
}

static void sink_end(void *user)
{
    struct fetch *f = user;

    f->body_open = false;
    f->body_ended = true;
    if (f->ended || !f->has_body) {
        return;
    }
    if (!f->body_decided) {
        if (f->hc != NULL) {
            (void)body_decide(f, hop_is_egress(f));
        }
        return;
    }
    if (f->hc != NULL && httpc_body_end(f->hc) < 0) {
        fail_send(f, NULL, "the request body is shorter than its content-length");
    }
}

static void sink_error(void *user, json_t *error)
{
    struct fetch *f = user;
    json_t *m = json_is_object(error) ? json_object_get(error, "message") : error;

    f->body_open = false;
    if (f->ended || f->call->answered) {
        return; /* the response already came: what is left of the request does not matter */
    }
    fail_send(f, NULL, "the request body stream failed: %.200s",
              json_is_string(m) ? json_string_value(m) : "(no reason)");
}

/* --- the response --------------------------------------------------------------------------- */

static void on_wait(uv_timer_t *t);

/* Start f->wait (made on first use) for @ms. 0, or -1 when there is no timer. */
static int arm(struct fetch *f, uint64_t ms)
{
    if (f->wait == NULL) {
        f->wait = malloc(sizeof(*f->wait));
        if (f->wait != NULL && uv_timer_init(f->g->loop, f->wait) < 0) {
            free(f->wait);
            f->wait = NULL;
        }
    }
    if (f->wait == NULL) {
        return -1;
    }
    f->wait->data = f;
    return uv_timer_start(f->wait, on_wait, ms, 0) < 0 ? -1 : 0;
}

static void on_wait(uv_timer_t *t)
{
    struct fetch *f = t->data;

    if (f->pending != NULL) {
        answer_now(f);
        return;
    }
    if (f->has_body && !f->body_decided && f->hc != NULL) {
        (void)body_decide(f, hop_is_egress(f)); /* the body goes on streaming: chunked */
    }
}

/* Connected: a body that has not ended gets FETCH_PREBUF_MS to end (and go whole, with
 * content-length: what a string or bytes body is), then it streams chunked. */
static void h_connected(void *user)
{
    struct fetch *f = user;

    if (!f->has_body || f->body_decided) {
        return;
    }
    if (arm(f, FETCH_PREBUF_MS) < 0) {
        (void)body_decide(f, hop_is_egress(f));
    }
}

static void h_writable(void *user)
{
    set_hold(user, false);
}

static const char *resp_header(const struct httpc_resp *r, const char *name)
{
    for (size_t i = 0; i < r->nheaders; i++) {
        if (strcmp(r->headers[i].name, name) == 0) {
            return r->headers[i].value;
        }
    }
    return NULL;
}

static void drop_header(struct fetch *f, const char *name)
{
    for (size_t i = 0; i < f->nh;) {
        if (strcmp(f->hn[i], name) == 0) {
            free(f->hn[i]);
            free(f->hv[i]);
            memmove(&f->hn[i], &f->hn[i + 1], (f->nh - i - 1) * sizeof(char *));
            memmove(&f->hv[i], &f->hv[i + 1], (f->nh - i - 1) * sizeof(char *));
            f->nh--;
        } else {
            i++;
        }
    }
}

/* Follow a redirect to @loc (fetch's "HTTP-redirect fetch"). */
static void follow(struct fetch *f, int status, const char *loc)
{
    char why[512];
    char *next;
    struct url nu;
    bool to_get;

    if (f->redirect == RD_ERROR) {
        fail_send(f, NULL, "unexpected redirect (%d) with redirect mode \"error\"", status);
        return;
    }
    if (++f->redirects > FETCH_REDIRECTS_MAX) {
        fail_send(f, NULL, "too many redirects (more than %d)", FETCH_REDIRECTS_MAX);
        return;
    }
    next = url_resolve(&f->u, loc);
    if (next == NULL) {
        fail_send(f, NULL, "the redirect location cannot be resolved");
        return;
    }
    if (url_parse(next, &nu, why, sizeof(why)) < 0) {
        free(next);
        fail_send(f, NULL, "redirect to an unusable location: %s", why);
        return;
    }
    to_get = ((status == 301 || status == 302) && strcmp(f->method, "POST") == 0) ||
             (status == 303 && strcmp(f->method, "HEAD") != 0);
    if (to_get) {
        char *m = strdup("GET");

        if (m == NULL) {
            free(next);
            url_clear(&nu);
            fail_send(f, "ENOMEM", "out of memory");
            return;
        }
        free(f->method);
        f->method = m;
        if (f->has_body) {
            f->has_body = false;
            body_free(f);
            if (f->body_open) {
                f->body_open = false;
                gw_istream_cancel(f->s, f->body_sid, NULL);
            }
            set_hold(f, false);
        }
        drop_header(f, "content-type");
        drop_header(f, "content-encoding");
        drop_header(f, "content-language");
        drop_header(f, "content-location");
    } else if (f->has_body && !f->body_whole) {
        free(next);
        url_clear(&nu);
        fail_send(f, NULL,
                  "cannot follow a %d redirect: the request body was streamed and cannot be "
                  "sent again",
                  status);
        return;
    }
    if (nu.https != f->u.https || nu.port != f->u.port || strcmp(nu.host, f->u.host) != 0) {
        drop_header(f, "authorization"); /* not sent to another origin */
        drop_header(f, "proxy-authorization");
        drop_header(f, "cookie");
    }
    httpc_close(f->hc);
    f->hc = NULL;
    f->head_sent = false;
    if (f->has_body) {
        f->body_decided = false; /* whole: sent again with content-length */
    }
    free(f->url);
    f->url = next;
    url_clear(&f->u);
    f->u = nu;
    hop_start(f);
}

static void h_head(void *user, const struct httpc_resp *r)
{
    struct fetch *f = user;
    const char *loc = resp_header(r, "location");
    json_t *headers, *ok;
    bool null_body;

    if ((r->status == 301 || r->status == 302 || r->status == 303 || r->status == 307 ||
         r->status == 308) &&
        loc != NULL && f->redirect != RD_MANUAL) {
        follow(f, r->status, loc);
        return;
    }
    if (r->status < 200 || r->status > 599) {
        fail_send(f, NULL, "invalid status code %d in the response", r->status);
        return;
    }
    headers = json_array();
    for (size_t i = 0; i < r->nheaders && headers != NULL; i++) {
        json_t *v = bytes_latin1(r->headers[i].value);
        json_t *pair = json_pack("[s, o]", r->headers[i].name, v != NULL ? v : json_string(""));

        if (pair != NULL) {
            (void)json_array_append_new(headers, pair);
        }
    }
    null_body =
        r->status == 204 || r->status == 205 || r->status == 304 || strcmp(f->method, "HEAD") == 0;
    ok = json_pack("{s:i, s:o, s:o, s:o}", "status", r->status, "statusText",
                   bytes_latin1(r->reason), "headers", headers != NULL ? headers : json_array(),
                   "bodyStreamId", null_body ? json_null() : json_integer((json_int_t)f->sdk));
    if (ok == NULL) {
        fail_send(f, "ENOMEM", "out of memory");
        return;
    }
    if (null_body) {
        gw_call_ok(f->call, ok);
        fetch_end(f);
        return;
    }
    f->streaming = true;
    gw_session_notify(f->s, "$sandbox.stream.start",
                      json_pack("{s:I}", "streamId", (json_int_t)f->sdk));
    f->pending = ok;
    if (arm(f, 0) < 0) {
        answer_now(f);
    }
    if (gw_session_on_drain(f->s, on_drain, f) == 0) {
        f->drain_hooked = true;
    }
    if (gw_session_congested(f->s) && f->drain_hooked) {
        f->paused = true;
        httpc_pause(f->hc, true);
    }
}

static void h_body(void *user, const uint8_t *data, size_t len)
{
    struct fetch *f = user;
    char *b64;
    json_t *params;

    if (!f->streaming || !f->cancel_hooked) {
        return;
    }
    b64 = malloc(BASE64_ENCODE_RAW_LENGTH(len) + 1);
    if (b64 == NULL) {
        stream_error(f, gw_errobj("TypeError", "ENOMEM", "out of memory"));
        fetch_end(f);
        return;
    }
    base64_encode_raw((char *)b64, len, data);
    params = json_pack("{s:I, s:s#}", "streamId", (json_int_t)f->sdk, "data", b64,
                       (int)BASE64_ENCODE_RAW_LENGTH(len));
    free(b64);
    gw_session_notify(f->s, "$sandbox.stream.enqueue", params);
    if (gw_session_congested(f->s) && f->drain_hooked && !f->paused) {
        f->paused = true;
        httpc_pause(f->hc, true);
    }
}

static void h_done(void *user, const char *err, const char *code, bool got_head)
{
    struct fetch *f = user;

    (void)got_head;
    if (err == NULL) {
        if (f->streaming && f->cancel_hooked) {
            gw_session_notify(f->s, "$sandbox.stream.end",
                              json_pack("{s:I}", "streamId", (json_int_t)f->sdk));
        }
        answer_now(f);
        fetch_end(f);
        return;
    }
    if (f->streaming) {
        char msg[600];

        snprintf(msg, sizeof(msg), "error reading a body from connection: %s", err);
        stream_error(f, gw_errobj("TypeError", code, msg));
        answer_now(f);
        fetch_end(f);
        return;
    }
    fail_send(f, code, "%s", err);
}

static const struct httpc_ops h_ops = {
    .connected = h_connected,
    .writable = h_writable,
    .head = h_head,
    .body = h_body,
    .done = h_done,
};

/* The transport is open: the head goes now when the body's framing is known. */
static void hop_opened(struct fetch *f, bool egress)
{
    if (!f->has_body) {
        bool needs_len = strcmp(f->method, "POST") == 0 || strcmp(f->method, "PUT") == 0 ||
                         strcmp(f->method, "PATCH") == 0;

        (void)send_head(f, needs_len ? HTTPC_BODY_LENGTH : HTTPC_BODY_NONE, 0, egress);
        return;
    }
    if (f->body_ended || f->body.len > FETCH_PREBUF) {
        (void)body_decide(f, egress);
    }
}

static void on_pid_port(void *user, uint16_t port, const char *why)
{
    struct fetch *f = user;

    f->pq = NULL;
    if (port == 0) {
        fail_send(f, NULL, "process %u listens on no TCP port: %s", f->pid,
                  why != NULL ? why : "none found");
        return;
    }
    f->pid_port = port;
    hop_start(f);
}

static void hop_start(struct fetch *f)
{
    char why[512] = "";

    if (f->has_pid) {
        if (f->pid_port == 0) {
            f->pq = gw_pid_port_find(f->sb, f->pid, on_pid_port, f, why, sizeof(why));
            if (f->pq == NULL) {
                fail_send(f, NULL, "cannot find the port process %u listens on: %s", f->pid, why);
            }
            return;
        }
        /* The URL's scheme is ignored too: the process's server is spoken to in plain HTTP. */
        f->hc =
            httpc_open_gsock(f->sb, "127.0.0.1", f->pid_port, false, &h_ops, f, why, sizeof(why));
        if (f->hc == NULL) {
            fail_send(f, NULL, "%s", why);
            return;
        }
        hop_opened(f, false);
        return;
    }
    if (!hop_is_egress(f)) {
        f->hc =
            httpc_open_gsock(f->sb, f->u.host, f->u.port, f->u.https, &h_ops, f, why, sizeof(why));
        if (f->hc == NULL) {
            fail_send(f, NULL, "%s", why);
            return;
        }
        hop_opened(f, false);
        return;
    }
    {
        json_t *allow = f->sb->config != NULL ? json_object_get(f->sb->config, "allow_net") : NULL;
        const char *addr;

        if (json_is_array(allow) && !list_match(allow, f->u.host, f->u.port)) {
            fail_send(f, "EACCES",
                      "%s%s%s:%u is not in the sandbox's allowNet, which blocks every other "
                      "host",
                      f->u.v6 ? "[" : "", f->u.host, f->u.v6 ? "]" : "", f->u.port);
            return;
        }
        addr = resolve_lookup(f->g, f->u.host);
        f->hc = httpc_open_tcp(f->g->loop, f->u.host, addr, f->u.port, addr != NULL, f->u.https,
                               &h_ops, f, why, sizeof(why));
        if (f->hc == NULL) {
            fail_send(f, NULL, "%s", why);
            return;
        }
        hop_opened(f, true);
    }
}

/* --- the method ----------------------------------------------------------------------------- */

static void early_fail(struct gw_call *call, json_t *params, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The body stream a request names, whatever else is wrong with it, or -1. Read before the call
 * is answered: that frees the call, and with it params when the request had none (on_request's
 * empty object). */
static int64_t body_named(json_t *params)
{
    json_t *b = json_object_get(params, "bodyStreamId");

    return json_is_integer(b) && json_integer_value(b) >= 0 ? json_integer_value(b) : -1;
}

/* A TypeError before anything started; a body stream the request named is cancelled, unless
 * it is another call's. */
static void early_fail(struct gw_call *call, json_t *params, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    int64_t sid = body_named(params);
    struct gw_session *s = call->s;

    va_start(ap, fmt);
    (void)vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    gw_call_fail(call, "TypeError", NULL, "%s", msg);
    if (sid >= 0) {
        gw_istream_refuse(s, (uint64_t)sid, NULL);
    }
}

/* Headers that are the client's business (framing, the connection): never passed on. */
static bool hop_header(const char *n)
{
    static const char *const drop[] = {
        "host",    "connection", "keep-alive",     "transfer-encoding", "te",
        "trailer", "upgrade",    "content-length", "proxy-connection"
    };

    for (size_t i = 0; i < sizeof(drop) / sizeof(drop[0]); i++) {
        if (strcmp(n, drop[i]) == 0) {
            return true;
        }
    }
    return false;
}

void gw_m_fetch(struct gw_call *call, json_t *params)
{
    struct gw_session *s = call->s;
    const char *url, *method, *redirect;
    json_t *headers = json_object_get(params, "headers"), *pidv;
    int64_t abort_id, body_sid, pid, named = body_named(params);
    struct fetch *f;
    char why[512];
    size_t total = 0;

    if (gw_param_str(call, params, "url", true, &url) < 0 ||
        gw_param_str(call, params, "method", false, &method) < 0 ||
        gw_param_str(call, params, "redirect", false, &redirect) < 0 ||
        gw_param_int(call, params, "abortId", false, 0, INT64_MAX, -1, &abort_id) < 0 ||
        gw_param_int(call, params, "bodyStreamId", false, 0, INT64_MAX, -1, &body_sid) < 0) {
        if (named >= 0) {
            gw_istream_refuse(s, (uint64_t)named, NULL);
        }
        return;
    }
    pidv = json_object_get(params, "pid");
    pid = -1;
    if (pidv != NULL && !json_is_null(pidv) &&
        (gw_json_int64(pidv, &pid) < 0 || pid < 0 || pid > UINT32_MAX)) {
        early_fail(call, params, "fetch: pid must be a process id");
        return;
    }
    if (method == NULL) {
        method = "GET";
    }
    if (!is_token(method, FETCH_METHOD_MAX)) {
        early_fail(call, params, "'%.64s' is not a valid HTTP method", method);
        return;
    }
    if (strcasecmp(method, "CONNECT") == 0 || strcasecmp(method, "TRACE") == 0 ||
        strcasecmp(method, "TRACK") == 0) {
        early_fail(call, params, "Method is forbidden: '%s'", method);
        return;
    }
    if (headers != NULL && !json_is_null(headers) &&
        (!json_is_array(headers) || json_array_size(headers) > FETCH_HEADERS_MAX)) {
        early_fail(call, params,
                   "fetch: headers must be an array of at most %d [name, value] pairs",
                   FETCH_HEADERS_MAX);
        return;
    }
    if (redirect != NULL && strcmp(redirect, "follow") != 0 && strcmp(redirect, "manual") != 0 &&
        strcmp(redirect, "error") != 0) {
        early_fail(call, params, "fetch: redirect must be \"follow\", \"manual\" or \"error\"");
        return;
    }
    {
        unsigned mine = 0;

        for (struct fetch *x = live; x != NULL; x = x->live_next) {
            mine += x->s == s;
        }
        if (nlive >= FETCH_GATEWAY_MAX || mine >= FETCH_SESSION_MAX) {
            gw_call_fail(call, "TypeError", "LIMIT",
                         "fetch: %u fetches are in flight %s already; abort or finish some first",
                         mine >= FETCH_SESSION_MAX ? mine : nlive,
                         mine >= FETCH_SESSION_MAX ? "on this session" : "in sbx-gateway");
            if (named >= 0) {
                gw_istream_refuse(s, (uint64_t)named, NULL);
            }
            return;
        }
    }
    f = calloc(1, sizeof(*f));
    if (f == NULL) {
        early_fail(call, params, "out of memory");
        return;
    }
    f->live_next = live;
    f->live_prev = &live;
    if (live != NULL) {
        live->live_prev = &f->live_next;
    }
    live = f;
    nlive++;
    f->call = call;
    f->s = s;
    f->hold.stalled = on_stall;
    f->hold.user = f;
    f->sb = gw_session_sandbox(s);
    f->g = f->sb->g;
    f->redirect = redirect == NULL || strcmp(redirect, "follow") == 0 ? RD_FOLLOW
                  : strcmp(redirect, "manual") == 0                   ? RD_MANUAL
                                                                      : RD_ERROR;
    f->has_pid = pid >= 0;
    f->pid = pid >= 0 ? (uint32_t)pid : 0;
    f->method = strdup(method);
    f->url = strdup(url);
    f->hn = calloc(json_array_size(headers) + 1, sizeof(char *));
    f->hv = calloc(json_array_size(headers) + 1, sizeof(char *));
    gw_call_hold(call); /* released by fetch_end */
    if (f->method == NULL || f->url == NULL || f->hn == NULL || f->hv == NULL) {
        early_fail(call, params, "out of memory");
        fetch_end(f);
        return;
    }
    /* Deno's normalization of the standard methods' case. */
    {
        static const char *const std[] = { "DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT" };

        for (size_t i = 0; i < sizeof(std) / sizeof(std[0]); i++) {
            if (strcasecmp(f->method, std[i]) == 0) {
                strcpy(f->method, std[i]);
            }
        }
    }
    if (url_parse(url, &f->u, why, sizeof(why)) < 0) {
        early_fail(call, params, "%s", why);
        fetch_end(f);
        return;
    }
    free(f->url);
    f->url = url_string(&f->u); /* normalized, without a fragment */
    if (f->url == NULL) {
        early_fail(call, params, "out of memory");
        fetch_end(f);
        return;
    }
    if (headers != NULL && json_is_array(headers)) {
        size_t i;
        json_t *pair;

        json_array_foreach(headers, i, pair)
        {
            json_t *n = json_array_get(pair, 0), *v = json_array_get(pair, 1);
            char *name, *value;
            size_t vl;

            if (!json_is_array(pair) || json_array_size(pair) != 2 || !json_is_string(n) ||
                !json_is_string(v)) {
                early_fail(call, params, "fetch: header %zu is not a [name, value] pair", i);
                fetch_end(f);
                return;
            }
            if (!is_token(json_string_value(n), 256)) {
                early_fail(call, params, "Invalid header name: '%.64s'", json_string_value(n));
                fetch_end(f);
                return;
            }
            value = latin1_bytes(json_string_value(v), json_string_length(v));
            if (value == NULL || strpbrk(value, "\r\n") != NULL ||
                memchr(json_string_value(v), 0, json_string_length(v)) != NULL) {
                free(value);
                early_fail(call, params, "Invalid header value for '%.64s'", json_string_value(n));
                fetch_end(f);
                return;
            }
            /* Leading and trailing whitespace is not part of a value (Headers strips it). */
            vl = strlen(value);
            while (vl > 0 && (value[vl - 1] == ' ' || value[vl - 1] == '\t')) {
                value[--vl] = '\0';
            }
            {
                size_t lead = strspn(value, " \t");

                memmove(value, value + lead, vl - lead + 1);
                vl -= lead;
            }
            total += json_string_length(n) + vl;
            if (total > FETCH_HEADER_BYTES) {
                free(value);
                early_fail(call, params, "fetch: the headers are over %u bytes",
                           FETCH_HEADER_BYTES);
                fetch_end(f);
                return;
            }
            name = strdup(json_string_value(n));
            if (name == NULL) {
                free(value);
                early_fail(call, params, "out of memory");
                fetch_end(f);
                return;
            }
            for (char *c = name; *c != '\0'; c++) {
                *c = (char)tolower((unsigned char)*c);
            }
            if (hop_header(name)) {
                free(name);
                free(value);
                continue;
            }
            f->hn[f->nh] = name;
            f->hv[f->nh++] = value;
        }
    }
    if (body_sid >= 0 && (strcmp(f->method, "GET") == 0 || strcmp(f->method, "HEAD") == 0)) {
        early_fail(call, params, "Request with GET/HEAD method cannot have body.");
        fetch_end(f);
        return;
    }
    f->sdk = gw_stream_id(f->g);
    if (gw_session_on_cancel(s, f->sdk, on_cancel, f) < 0) {
        early_fail(call, params, "out of memory");
        fetch_end(f);
        return;
    }
    f->cancel_hooked = true;
    if (abort_id >= 0) {
        call->abort_id = (uint64_t)abort_id + 1;
        call->on_abort = on_abort;
        call->abort_late = true;
    }
    call->data = f;
    if (body_sid >= 0) {
        struct gw_istream_sink sink = {
            .data = sink_data, .end = sink_end, .error = sink_error, .user = f
        };

        bool gone;

        f->has_body = true;
        f->body_sid = (uint64_t)body_sid;
        f->body_open = true;
        /* The claim delivers what came before it, which may end the fetch (a stream error):
         * the extra hold keeps the call to look at. */
        gw_call_hold(call);
        if (gw_istream_claim(s, f->body_sid, &sink) < 0) {
            f->body_open = false;
            gw_call_fail(call, "TypeError", NULL,
                         "fetch: bodyStreamId %" PRId64 " is not an open stream", body_sid);
            fetch_end(f);
        }
        gone = call->data == NULL;
        gw_call_release(call);
        if (gone) {
            return;
        }
    }
    hop_start(f);
}
