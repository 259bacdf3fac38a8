/*
 * libFuzzer target for gateway/http.c: the bytes a client sends the gateway's HTTP server (REST
 * request heads and bodies, pipelined requests, a WebSocket upgrade and then frames: fragments,
 * masking, control frames, lengths, close codes and reasons). http.c is compiled into this
 * target with its socket calls replaced (fuzz_gw_uv.h): a connection is accepted without a
 * socket, the input is handed to the same read callback libuv would call, in reads of a size
 * the first byte picks, and whatever http.c writes is completed from the loop.
 *
 * The handler answers like the gateway's routes would, by path: "/stream" streams its answer
 * (chunks, end), "/defer" is answered a loop turn later, "/abandon" waits for the client to go,
 * anything else gets the body back; a WebSocket upgrade echoes each message, and a message
 * starting "close" closes (the rest is the reason), "pause" pauses reading for a turn, "big"
 * queues past the high-water mark.
 */
#include <stdint.h>
#include <stdio.h>

/* The stand-ins first, then the gateway file they stand in for. */
/* clang-format off */
#include "fuzz_gw_uv.h"
#include "../../gateway/http.c"
/* clang-format on */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uv_loop_t fz_loop;
static bool fz_ready;
static struct gw_http_conn *fz_deferred;
static struct gw_ws *fz_ws;
static bool fz_ws_paused;

static void fz_on_message(struct gw_ws *ws, const char *msg, size_t len, void *user)
{
    (void)user;
    if (msg[len] != '\0') {
        abort(); /* a message is NUL-terminated */
    }
    if (len >= 5 && memcmp(msg, "close", 5) == 0) {
        gw_ws_close(ws, 1000, msg + 5);
    } else if (len >= 5 && memcmp(msg, "pause", 5) == 0) {
        gw_ws_pause(ws, true);
        fz_ws_paused = true;
    } else if (len >= 3 && memcmp(msg, "big", 3) == 0) {
        static char blob[64 << 10];
        for (int i = 0; i < 40; i++) {
            (void)gw_ws_send_text(ws, blob, sizeof(blob));
        }
    } else {
        (void)gw_ws_send_text(ws, msg, len);
    }
}

static void fz_on_drain(struct gw_ws *ws, void *user)
{
    (void)ws;
    (void)user;
}

static void fz_on_close(struct gw_ws *ws, uint16_t code, const char *reason, void *user)
{
    (void)code;
    (void)user;
    if (strlen(reason) > WS_REASON_MAX) {
        abort();
    }
    if (ws == fz_ws) {
        fz_ws = NULL;
        fz_ws_paused = false;
    }
}

static const struct gw_ws_ops fz_ws_ops = {
    .on_message = fz_on_message,
    .on_drain = fz_on_drain,
    .on_close = fz_on_close,
};

static void fz_abandoned(struct gw_http_conn *hc, void *user)
{
    (void)user;
    if (hc == fz_deferred) {
        fz_deferred = NULL;
    }
}

static void fz_handle(struct gw_http_conn *hc, const struct gw_http_req *req, void *user)
{
    static const char *const hdrs[] = { "x-fuzz: 1", "bad: \r\nline", NULL };
    (void)user;
    if (req->path == NULL || req->query == NULL || req->body[req->body_len] != '\0' ||
        strlen(req->path) == 0) {
        abort();
    }
    (void)gw_http_header(req, "host");
    if (req->websocket && fz_ws == NULL) {
        fz_ws = gw_http_upgrade(hc, hdrs, &fz_ws_ops, NULL);
        return;
    }
    if (strcmp(req->path, "/stream") == 0) {
        if (gw_http_stream_start(hc, 200, hdrs) == 0) {
            (void)gw_http_stream_write(hc, req->body, req->body_len);
            (void)gw_http_stream_write(hc, "data: x\n\n", 9);
            (void)gw_http_stream_queued(hc);
        }
        gw_http_stream_end(hc);
        return;
    }
    if ((strcmp(req->path, "/defer") == 0 || strcmp(req->path, "/abandon") == 0) &&
        fz_deferred == NULL) {
        fz_deferred = hc;
        if (strcmp(req->path, "/abandon") == 0) {
            gw_http_on_abandon(hc, fz_abandoned, NULL);
        }
        return;
    }
    if (req->websocket) {
        gw_http_respond(hc, 409, NULL, "", 0);
        return;
    }
    gw_http_respond(hc, req->body_len > 0 ? 200 : 404, hdrs, req->body, req->body_len);
}

/* One loop turn: held answers given, a paused WebSocket resumed, writes completed. */
static void fz_turn(void)
{
    if (fz_deferred != NULL) {
        struct gw_http_conn *hc = fz_deferred;
        fz_deferred = NULL;
        gw_http_respond(hc, 200, NULL, "{}", 2);
    }
    if (fz_ws != NULL && fz_ws_paused) {
        fz_ws_paused = false;
        gw_ws_pause(fz_ws, false);
    }
    fz_uv_settle(&fz_loop, 2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!fz_ready) {
        if (uv_loop_init(&fz_loop) != 0) {
            abort();
        }
        fz_ready = true;
    }
    if (size < 1) {
        return 0;
    }
    size_t chunk = data[0] & 0x80 ? READ_BUF : (size_t)(data[0] & 0x7f) + 1;
    data++;
    size--;

    struct gw_http_server *srv = calloc(1, sizeof(*srv));
    if (srv == NULL || uv_tcp_init(&fz_loop, &srv->tcp) != 0) {
        abort();
    }
    srv->loop = &fz_loop;
    srv->fn = fz_handle;
    srv->tcp.data = srv;
    on_connection((uv_stream_t *)&srv->tcp, 0);
    struct gw_http_conn *c = srv->conns;

    while (size > 0 && srv->conns == c && c != NULL) {
        int tries = 0;
        while (srv->conns == c && (!c->reading || c->state == C_CLOSED) && tries++ < 4) {
            fz_turn();
        }
        if (srv->conns != c || !c->reading || c->state == C_CLOSED) {
            break;
        }
        size_t n = size < chunk ? size : chunk;
        uv_buf_t buf = uv_buf_init(c->rbuf, (unsigned)n);
        memcpy(c->rbuf, data, n);
        read_cb((uv_stream_t *)&c->tcp, (ssize_t)n, &buf);
        data += n;
        size -= n;
        fz_uv_pump();
    }
    fz_turn();
    /* The client goes away (as the server's own timers would end a stalled one). */
    if (srv->conns == c && c != NULL && c->state != C_CLOSED) {
        read_cb((uv_stream_t *)&c->tcp, UV_EOF, NULL);
    }
    fz_turn();
    if (fz_deferred != NULL) {
        gw_http_respond(fz_deferred, 200, NULL, "", 0);
        fz_deferred = NULL;
    }
    fz_turn();
    if (srv->conns != NULL) {
        abort(); /* a connection outlived its client */
    }
    gw_http_close(srv);
    fz_uv_settle(&fz_loop, 2);
    fz_written = 0;
    return 0;
}
