/*
 * libFuzzer target for the HTTP ingress (gateway/ingress.c): the bytes a client sends an
 * exposed domain. ingress.c is compiled in with its socket calls replaced (fuzz_gw_uv.h) and its
 * guest sockets and pid lookups stubbed: a connection is accepted without a socket, its first
 * request head is read and parsed (Host, routing to one of a few fixed mappings), and when it is
 * routed to the running sandbox the stand-in guest socket connects, so the rest of the input
 * goes through the relay's per-request Host re-check. The first byte picks the read size and
 * whether the guest socket reports itself full once. The guest answers "HTTP/1.1 200 OK" with
 * no length (a body until EOF), unless the input holds FZ_GUEST_MARK: then what follows the
 * mark is the guest's bytes, fed in pieces of the read size between the client's reads (what
 * the relay's answer parser reads: one final answer per request, upgrades, HEAD, junk), and
 * every byte the client gets in the relay must be the next byte of the guest's.
 *
 * With the first byte's top bit set the input is "DOMAIN\nBODY" instead: BODY is the body of
 * POST /api/v3/sandbox/ID/expose/http (gw_rest_expose_http: {}, {port} or {pid}), DOMAIN goes to
 * gw_expose_map (exposeHttp's domain, with a port or a pid by the byte's low bit). expose.json
 * cannot be written here (its path is under /dev/null), so each must fail, leave the mappings as
 * they were, and never hand a domain out.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The stand-ins first, then the gateway file they stand in for. */
/* clang-format off */
#include "fuzz_gw_uv.h"
#include "gsock.h"
#include "http.h"
/* clang-format on */

static int fz_status; /* the last REST answer's status */

static bool fz_rechunked; /* the guest may send a chunked body: it goes out re-framed */

/* Splits an input into the client's bytes and the guest's (see the top). */
#define FZ_GUEST_MARK "\xffGUEST\xff"

/* The guest's bytes of this input, and how many of them the client got so far. */
static const uint8_t *fz_guest;
static size_t fz_guest_len, fz_guest_out;
static bool fz_relaying;

static void fz_http_respond_json(struct gw_http_conn *hc, int status, const char *const *headers,
                                 json_t *body)
{
    (void)hc;
    (void)headers;
    if (!fz_answer_ok(status, body)) {
        abort(); /* an error answer without its code and message */
    }
    fz_status = status;
    json_decref(body);
}

static const struct gw_gsock_ops *fz_gs_ops;
static void *fz_gs_user;
static int fz_gs_live, fz_gs_token;
static bool fz_gs_full, fz_gs_held;

static struct gw_gsock *fz_gsock_open(struct gw_sandbox *sb, const char *host, uint16_t port,
                                      const struct gw_gsock_ops *ops, void *user, char *why,
                                      size_t whylen)
{
    (void)sb;
    (void)host;
    if (port == 1) {
        snprintf(why, whylen, "the sandbox is not running");
        return NULL;
    }
    if (fz_gs_live) {
        abort(); /* one connection, one guest socket */
    }
    fz_gs_ops = ops;
    fz_gs_user = user;
    fz_gs_live = 1;
    return (struct gw_gsock *)&fz_gs_token;
}

static int fz_gsock_write(struct gw_gsock *s, const void *data, size_t len)
{
    (void)data;
    (void)len;
    if (s != (struct gw_gsock *)&fz_gs_token || !fz_gs_live) {
        abort();
    }
    if (fz_gs_full) {
        fz_gs_full = false;
        fz_gs_held = true;
        return 1;
    }
    return 0;
}

static void fz_gsock_shutdown(struct gw_gsock *s)
{
    (void)s;
}

static void fz_gsock_pause(struct gw_gsock *s, bool pause)
{
    (void)s;
    (void)pause;
}

static void fz_gsock_close(struct gw_gsock *s)
{
    if (s != (struct gw_gsock *)&fz_gs_token || !fz_gs_live) {
        abort();
    }
    fz_gs_live = 0;
}

static struct gw_pid_port *fz_pid_port_find(struct gw_sandbox *sb, uint32_t pid, gw_pid_port_fn cb,
                                            void *user, char *why, size_t whylen)
{
    (void)sb;
    (void)pid;
    (void)cb;
    (void)user;
    snprintf(why, whylen, "process %u listens on no port", pid);
    return NULL;
}

static void fz_pid_port_cancel(struct gw_pid_port *q)
{
    (void)q;
    abort(); /* never started */
}

#define gw_gsock_open        fz_gsock_open
#define gw_gsock_write       fz_gsock_write
#define gw_gsock_shutdown    fz_gsock_shutdown
#define gw_gsock_pause       fz_gsock_pause
#define gw_gsock_close       fz_gsock_close
#define gw_pid_port_find     fz_pid_port_find
#define gw_pid_port_cancel   fz_pid_port_cancel
#define gw_http_respond_json fz_http_respond_json

#include "../../gateway/ingress.c"

/* Every byte written in the relay is the guest's next one (no answer is made up, repeated or
 * reordered) until a chunked body goes out in the relay's own chunks; written before the relay
 * (error answers) they are the gateway's own. */
static void fz_client_sink(const char *data, size_t len)
{
    if (!fz_relaying || fz_guest == NULL || fz_rechunked) {
        return;
    }
    size_t at = fz_guest_out;
    /* Empty lines between answers are dropped (gs_data), anywhere in a write (writes made while
     * one is in flight go out as one): skip the guest's CR and LF bytes the client did not get.
     * Kept ones match first: the ones dropped run up to the next answer's H. */
    for (size_t i = 0; i < len; i++, at++) {
        uint8_t ch = (uint8_t)data[i];

        while (at < fz_guest_len && fz_guest[at] != ch &&
               (fz_guest[at] == '\r' || fz_guest[at] == '\n')) {
            at++;
        }
        if (at == fz_guest_len || fz_guest[at] != ch) {
            abort(); /* the client got bytes the guest did not send, or not in its order */
        }
    }
    fz_guest_out = at;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uv_loop_t fz_loop;
static struct gw fz_gw;
static struct gw_ingress *fz_ig;
static struct gw_sandbox fz_sb_ready, fz_sb_boot, fz_sb_gone;

static void fz_map(const char *domain, struct gw_sandbox *sb, const char *sandbox, bool mapped,
                   uint16_t port, uint32_t pid)
{
    struct ig_map *m = calloc(1, sizeof(*m));
    if (m == NULL) {
        abort();
    }
    snprintf(m->domain, sizeof(m->domain), "%s", domain);
    snprintf(m->sandbox, sizeof(m->sandbox), "%s", sb != NULL ? sb->id : sandbox);
    m->mapped = mapped;
    m->port = port;
    m->pid = pid;
    m->next = fz_ig->maps;
    fz_ig->maps = m;
    fz_ig->nmaps++;
}

static void fz_init(void)
{
    if (uv_loop_init(&fz_loop) != 0) {
        abort();
    }
    fz_gw.loop = &fz_loop;
    fz_gw.opt.quiet = true;
    fz_gw.opt.ig_conns = GW_IG_CONNS;
    fz_gw.opt.ig_idle_ms = GW_IG_IDLE_MS;
    snprintf(fz_sb_ready.id, sizeof(fz_sb_ready.id), "sbx_ord_00000000000000000000");
    fz_sb_ready.state = GW_SB_READY;
    fz_sb_ready.g = &fz_gw;
    snprintf(fz_sb_boot.id, sizeof(fz_sb_boot.id), "sbx_ord_11111111111111111111");
    fz_sb_boot.state = GW_SB_BOOTING;
    fz_sb_boot.g = &fz_gw;
    snprintf(fz_sb_gone.id, sizeof(fz_sb_gone.id), "sbx_ord_22222222222222222222");
    fz_sb_gone.state = GW_SB_GONE;
    fz_sb_gone.g = &fz_gw;
    snprintf(fz_sb_gone.why, sizeof(fz_sb_gone.why), "killed through the API");
    fz_sb_ready.next = &fz_sb_boot;
    fz_sb_boot.next = &fz_sb_gone;
    fz_gw.sandboxes = &fz_sb_ready;
    fz_ig = calloc(1, sizeof(*fz_ig));
    if (fz_ig == NULL || uv_tcp_init(&fz_loop, &fz_ig->tcp) != 0) {
        abort();
    }
    fz_ig->g = &fz_gw;
    fz_ig->tcp.data = fz_ig;
    fz_ig->refs = 1; /* the listener: never freed */
    fz_gw.ingress = fz_ig;
    /* ig_save cannot write (ENOTDIR), as it may fail, and no file is ever made. */
    snprintf(fz_ig->path, sizeof(fz_ig->path), "/dev/null/expose.json");
    snprintf(fz_ig->base, sizeof(fz_ig->base), "sbx.localhost");
    fz_map("app.example.com", &fz_sb_ready, NULL, true, 8000, 0);
    fz_map("down.example.com", &fz_sb_ready, NULL, true, 1, 0);
    fz_map("pid.example.com", &fz_sb_ready, NULL, true, 0, 42);
    fz_map("boot.example.com", &fz_sb_boot, NULL, true, 8000, 0);
    fz_map("new.example.com", &fz_sb_ready, NULL, false, 0, 0);
    fz_map("off.example.com", &fz_sb_gone, NULL, true, 8000, 0);
}

/* The mappings' routing state, to see that a failed change left it as it was. */
static size_t fz_maps_state(char *out, size_t len)
{
    size_t n = 0;

    for (struct ig_map *m = fz_ig->maps; m != NULL && n < len; m = m->next) {
        int k = snprintf(out + n, len - n, "%s %s %d %u %u;", m->domain, m->sandbox, m->mapped,
                         m->port, m->pid);
        n += k > 0 ? (size_t)k : 0;
    }
    return n;
}

/* "DOMAIN\nBODY": exposeHttp's mapping of DOMAIN, then the REST route's BODY. */
static void fz_expose(bool by_port, const uint8_t *data, size_t size)
{
    char before[4096], after[4096], why[512] = "";
    const uint8_t *nl = memchr(data, '\n', size);
    size_t dlen = nl != NULL ? (size_t)(nl - data) : size;
    char *domain = malloc(dlen + 1);
    struct gw_http_req req = { .method = "POST", .path = "/", .query = "" };

    if (domain == NULL) {
        return;
    }
    memcpy(domain, data, dlen);
    domain[dlen] = '\0';
    size_t nb = fz_maps_state(before, sizeof(before));
    if (gw_expose_map(&fz_sb_ready, domain, by_port ? 8000 : 0, by_port ? 0 : 42, why,
                      sizeof(why)) == 0 ||
        why[0] == '\0') {
        abort(); /* mapped though expose.json could not be saved, or failed without a reason */
    }
    free(domain);
    size_t nm = fz_maps_state(after, sizeof(after));
    if (nb != nm || memcmp(before, after, nb) != 0) {
        abort(); /* a failed mapping changed the mappings */
    }
    if (nl != NULL) {
        char *body = malloc(size - dlen);
        if (body == NULL) {
            return;
        }
        memcpy(body, nl + 1, size - dlen - 1);
        body[size - dlen - 1] = '\0';
        req.body = body;
        req.body_len = size - dlen - 1;
        fz_status = 0;
        gw_rest_expose_http(&fz_gw, NULL, &req, &fz_sb_ready);
        free(body);
        if (fz_status != 400 && fz_status != 503) {
            abort(); /* unanswered, or a domain handed out that expose.json does not hold */
        }
        nm = fz_maps_state(after, sizeof(after));
        if (nb != nm || memcmp(before, after, nb) != 0) {
            abort(); /* a failed expose left a mapping behind */
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (fz_ig == NULL) {
        fz_init();
    }
    if (size < 1) {
        return 0;
    }
    if (data[0] & 0x80) {
        fz_expose((data[0] & 1) != 0, data + 1, size - 1);
        return 0;
    }
    size_t chunk = (size_t)(data[0] & 0x3f) * 37 + 1;
    fz_gs_full = (data[0] & 0x40) != 0;
    fz_gs_held = false;
    data++;
    size--;
    fz_guest = NULL;
    fz_guest_len = fz_guest_out = 0;
    fz_relaying = false;
    fz_rechunked = false;
    fz_uv_sink = fz_client_sink;
    const uint8_t *mark = memmem(data, size, FZ_GUEST_MARK, sizeof(FZ_GUEST_MARK) - 1);
    if (mark != NULL) {
        fz_guest = mark + sizeof(FZ_GUEST_MARK) - 1;
        fz_guest_len = (size_t)(data + size - fz_guest);
        size = (size_t)(mark - data);
        /* "chunked" anywhere, in any case: no prefix check (a chunked body is re-framed). */
        for (size_t i = 0; i + 7 <= fz_guest_len && !fz_rechunked; i++) {
            fz_rechunked = strncasecmp((const char *)fz_guest + i, "chunked", 7) == 0;
        }
    }
    size_t gfed = 0;
    bool guest_turn = false; /* the guest and the client take turns */

    on_connection((uv_stream_t *)&fz_ig->tcp, 0);
    struct ig_conn *c = fz_ig->conns;
    if (c == NULL || c->st != IC_HEAD) {
        abort();
    }
    bool guest_spoke = false;
    while (fz_ig->conns == c && c->st != IC_CLOSING) {
        if (c->st == IC_CONNECT && fz_gs_live) {
            fz_gs_ops->connected(fz_gs_user);
            continue;
        }
        fz_relaying = c->st == IC_RELAY;
        if (c->st == IC_RELAY && !guest_spoke && fz_guest == NULL) {
            guest_spoke = true;
            fz_gs_ops->data(fz_gs_user, (const uint8_t *)"HTTP/1.1 200 OK\r\n\r\n", 19);
            continue;
        }
        if (c->st == IC_RELAY && fz_gs_held) {
            fz_gs_held = false;
            fz_gs_ops->writable(fz_gs_user);
            continue;
        }
        if (c->st == IC_RELAY && fz_gs_live && gfed < fz_guest_len &&
            (size == 0 || !c->reading || guest_turn)) {
            size_t n = fz_guest_len - gfed < chunk ? fz_guest_len - gfed : chunk;
            fz_gs_ops->data(fz_gs_user, fz_guest + gfed, n);
            gfed += n;
            guest_turn = false;
            (void)fz_uv_pump();
            continue;
        }
        if (size == 0 || !c->reading) {
            break;
        }
        uv_buf_t buf;
        on_alloc((uv_handle_t *)&c->tcp, chunk, &buf);
        size_t n = size < chunk ? size : chunk;
        if (n > buf.len) {
            n = buf.len;
        }
        if (n == 0) {
            on_read((uv_stream_t *)&c->tcp, UV_ENOBUFS, &buf);
            break;
        }
        memcpy(buf.base, data, n);
        on_read((uv_stream_t *)&c->tcp, (ssize_t)n, &buf);
        data += n;
        size -= n;
        guest_turn = true;
        (void)fz_uv_pump();
    }
    /* The client half-closes, the guest answers and ends, both go. */
    if (fz_ig->conns == c && c->st != IC_CLOSING && c->reading) {
        on_read((uv_stream_t *)&c->tcp, UV_EOF, NULL);
    }
    if (fz_ig->conns == c && fz_gs_live && c->st == IC_RELAY) {
        fz_gs_ops->eof(fz_gs_user);
        fz_gs_live = 0;
        fz_gs_ops->closed(fz_gs_user, NULL, NULL);
    }
    fz_uv_settle(&fz_loop, 2);
    if (fz_ig->conns == c && c->st != IC_CLOSING) {
        conn_close(c);
    }
    fz_uv_settle(&fz_loop, 2);
    fz_uv_sink = NULL;
    if (fz_ig->conns != NULL || fz_gs_live) {
        abort(); /* the connection or its guest socket outlived the input */
    }
    return 0;
}
