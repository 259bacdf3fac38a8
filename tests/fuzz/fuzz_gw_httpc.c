/*
 * libFuzzer target for fetch's HTTP client (gateway/httpc.c) and fetch.c's URLs and host
 * patterns. With the first byte's top bit clear, the rest is a server's response byte stream
 * (status line, headers, chunked / content-length / close-delimited bodies, 1xx interim
 * responses): httpc.c is compiled in with its guest-socket calls replaced, a client is opened on
 * a stand-in socket, sends its request, and gets the bytes through the socket's data callback in
 * reads of a size the first byte picks, then the socket's EOF. With the byte's 0x10 bit the
 * caller closes the client from its callbacks, as fetch.c does: at a head it refuses or follows
 * (a status outside 200..599, or a redirect with a location) and at the first body slice (its SDK
 * stream failed). With the top bit set, the rest goes to fz_fetch_one (fuzz_gw_httpc_fetch.c).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gsock.h"

static const struct gw_gsock_ops *fz_gs_ops;
static void *fz_gs_user;
static int fz_gs_live;
static int fz_gs_token;

static struct gw_gsock *fz_gsock_open(struct gw_sandbox *sb, const char *host, uint16_t port,
                                      const struct gw_gsock_ops *ops, void *user, char *why,
                                      size_t whylen)
{
    (void)sb;
    (void)host;
    (void)port;
    (void)why;
    (void)whylen;
    fz_gs_ops = ops;
    fz_gs_user = user;
    fz_gs_live = 1;
    return (struct gw_gsock *)&fz_gs_token;
}

static int fz_gsock_write(struct gw_gsock *s, const void *data, size_t len)
{
    (void)data;
    (void)len;
    return s == (struct gw_gsock *)&fz_gs_token && fz_gs_live ? 0 : -1;
}

static void fz_gsock_pause(struct gw_gsock *s, bool pause)
{
    (void)s;
    (void)pause;
}

static void fz_gsock_close(struct gw_gsock *s)
{
    if (s != (struct gw_gsock *)&fz_gs_token || !fz_gs_live) {
        abort(); /* closed twice, or not ours */
    }
    fz_gs_live = 0;
}

#define gw_gsock_open  fz_gsock_open
#define gw_gsock_write fz_gsock_write
#define gw_gsock_pause fz_gsock_pause
#define gw_gsock_close fz_gsock_close

#include "../../gateway/httpc.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
void fz_fetch_one(const uint8_t *data, size_t size);

static struct httpc *fz_h;
static bool fz_done, fz_head;
static size_t fz_body;
static bool fz_closer, fz_closed; /* the callbacks close the client; they did */

/* The caller lets the client go from inside a callback: nothing of it may come after. */
static void fz_close_now(void)
{
    httpc_close(fz_h);
    fz_h = NULL;
    fz_closed = true;
}

static void fz_on_head(void *user, const struct httpc_resp *r)
{
    (void)user;
    /* Interim (1xx) heads are skipped; any other status http-parser takes (0..999) comes here,
     * fetch.c refuses those outside 200..599. */
    if (fz_closed || fz_head || (r->status >= 100 && r->status < 200) || r->status < 0 ||
        r->status > 999 || r->reason == NULL || r->nheaders > HTTPC_HEADERS_MAX) {
        abort();
    }
    for (size_t i = 0; i < r->nheaders; i++) {
        const char *n = r->headers[i].name, *v = r->headers[i].value;
        if (n == NULL || v == NULL || strpbrk(v, "\r\n") != NULL) {
            abort();
        }
        for (; *n != '\0'; n++) {
            if (*n >= 'A' && *n <= 'Z') {
                abort();
            }
        }
    }
    fz_head = true;
    if (fz_closer) {
        bool redirect = r->status == 301 || r->status == 302 || r->status == 303 ||
                        r->status == 307 || r->status == 308;
        bool location = false;
        for (size_t i = 0; i < r->nheaders; i++) {
            location = location || strcmp(r->headers[i].name, "location") == 0;
        }
        if (r->status < 200 || r->status > 599 || (redirect && location)) {
            fz_close_now();
        }
    }
}

static void fz_on_body(void *user, const uint8_t *data, size_t len)
{
    (void)user;
    (void)data;
    if (fz_closed || !fz_head || len == 0 || len > HTTPC_READ_SIZE) {
        abort();
    }
    fz_body += len;
    if (fz_closer) {
        fz_close_now();
    }
}

static void fz_on_done(void *user, const char *err, const char *code, bool got_head)
{
    (void)user;
    (void)code;
    if (fz_closed || fz_done || got_head != fz_head || (err == NULL && !got_head)) {
        abort();
    }
    fz_done = true;
    httpc_close(fz_h); /* as fetch.c does from its done callback */
    fz_h = NULL;
}

static const struct httpc_ops fz_ops = {
    .head = fz_on_head,
    .body = fz_on_body,
    .done = fz_on_done,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char why[256];
    static const char *const names[] = { "accept" };
    static const char *const values[] = { "*/*" };

    if (size < 1) {
        return 0;
    }
    if (data[0] & 0x80) {
        fz_fetch_one(data + 1, size - 1);
        return 0;
    }
    bool head_request = data[0] & 0x40;
    bool pause = data[0] & 0x20;
    size_t chunk = (size_t)1 << (data[0] & 0x0f);
    fz_closer = data[0] & 0x10;
    data++;
    size--;

    fz_done = fz_head = fz_closed = false;
    fz_body = 0;
    fz_h = httpc_open_gsock(NULL, "localhost", 8000, false, &fz_ops, NULL, why, sizeof(why));
    if (fz_h == NULL) {
        abort();
    }
    if (httpc_request(fz_h, head_request ? "HEAD" : "GET", "/path?q=1", "localhost:8000", names,
                      values, 1, HTTPC_BODY_NONE, 0, head_request) != 0) {
        abort();
    }
    fz_gs_ops->connected(fz_gs_user);
    while (size > 0 && !fz_done && !fz_closed) {
        size_t n = size < chunk ? size : chunk;
        if (pause) {
            httpc_pause(fz_h, true);
            httpc_pause(fz_h, false);
        }
        fz_gs_ops->data(fz_gs_user, data, n);
        data += n;
        size -= n;
    }
    if (!fz_done && !fz_closed) {
        fz_gs_ops->eof(fz_gs_user);
    }
    if (!fz_done && !fz_closed) {
        /* Both directions ended. */
        fz_gs_live = 0;
        fz_gs_ops->closed(fz_gs_user, NULL, NULL);
    }
    if (!fz_done && !fz_closed) {
        abort(); /* the end of the stream always ends the response */
    }
    if (fz_gs_live) {
        abort(); /* httpc_close let the socket go */
    }
    return 0;
}
