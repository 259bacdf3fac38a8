/*
 * gw_http_echo: the gateway's HTTP server (gateway/http.c) with a toy handler, for
 * tests/gateway/test_http.py. Listens on 127.0.0.1:0 and prints the port on stdout; SIGTERM
 * closes the server and exits 0 once every handle is closed.
 *
 *   /ws     WebSocket: echoes each message; "queued?" -> "queued=N"; "close-me" -> close 4000;
 *           "flood" -> 320 text messages of 64 KiB (20 MiB) paced by on_drain, then
 *           "flood-done drains=N"; "pause" -> stops reading for 300 ms, then "resumed";
 *           "pause MS" -> the same for MS ms; "pause-flood MS" -> stops reading for MS ms and
 *           floods meanwhile
 *   /slow   answered after 500 ms by a timer (abandoned if the client leaves first)
 *   /stream?n=N&ms=M&size=S  a streamed answer (gw_http_stream_*): N chunks of S bytes (at
 *           most 1 MiB; default 16) "chunk I\n" padded with '.', one every M ms (0: as fast as
 *           the drain callback allows, keeping at most 256 KiB queued), then the end
 *   /stats  {"abandoned": N, "ws_closed": N, "last_close": code, "streams_abandoned": N,
 *            "streams_done": N}
 *   else    {"method", "path", "query", "body", "headers": {name: value}}
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "http.h"

#define FLOOD_MSGS 320
#define FLOOD_SIZE (64u << 10)
#define FLOOD_HIGH (8u << 20) /* GW_WS_HIGH: stop queueing above it, resume on_drain */

struct echo {
    uv_loop_t loop;
    uv_signal_t sig;
    struct gw_http_server *srv;
    unsigned abandoned;
    unsigned ws_closed;
    unsigned last_close;
    unsigned streams_abandoned;
    unsigned streams_done;
};

struct strm {
    uv_timer_t timer;
    struct gw_http_conn *hc;
    struct echo *e;
    unsigned n, sent, ms;
    size_t size;
    char *buf;
};

struct slow {
    uv_timer_t timer;
    struct gw_http_conn *hc;
    struct echo *e;
};

struct wsst {
    uv_timer_t pause; /* "pause": resumes reading */
    struct echo *e;
    struct gw_ws *ws;
    unsigned sent; /* flood messages queued */
    unsigned drains;
    bool flooding;
    char *buf;
};

static void slow_free_cb(uv_handle_t *h)
{
    free(h->data);
}

static void slow_timer_cb(uv_timer_t *t)
{
    struct slow *sl = t->data;
    gw_http_respond_json(sl->hc, 200, NULL, json_pack("{s:b}", "slow", 1));
    uv_close((uv_handle_t *)&sl->timer, slow_free_cb);
}

static void slow_abandon_cb(struct gw_http_conn *hc, void *user)
{
    struct slow *sl = user;
    sl->e->abandoned++;
    (void)uv_timer_stop(&sl->timer); /* cannot fail */
    uv_close((uv_handle_t *)&sl->timer, slow_free_cb);
}

static void strm_free_cb(uv_handle_t *h)
{
    struct strm *st = h->data;
    free(st->buf);
    free(st);
}

static void strm_finish(struct strm *st)
{
    gw_http_stream_end(st->hc);
    st->e->streams_done++;
    uv_close((uv_handle_t *)&st->timer, strm_free_cb);
}

static void strm_tick(uv_timer_t *t);

/* Write chunks: one per timer tick, or (ms 0) while under 256 KiB queued. */
static void strm_pump(struct strm *st)
{
    while (st->sent < st->n) {
        if (st->ms == 0 && gw_http_stream_queued(st->hc) > (256u << 10)) {
            return; /* the drain callback resumes */
        }
        int k = snprintf(st->buf, st->size + 32, "chunk %u\n", st->sent);
        size_t len = (size_t)k < st->size ? st->size : (size_t)k;
        for (size_t j = (size_t)k; j < len; j++) {
            st->buf[j] = '.';
        }
        if (gw_http_stream_write(st->hc, st->buf, len) < 0) {
            st->sent = st->n;
            break;
        }
        st->sent++;
        if (st->ms > 0 && st->sent < st->n) {
            (void)uv_timer_start(&st->timer, strm_tick, st->ms, 0); /* cannot fail */
            return;
        }
    }
    strm_finish(st);
}

static void strm_tick(uv_timer_t *t)
{
    strm_pump(t->data);
}

static void strm_drain(struct gw_http_conn *hc, void *user)
{
    struct strm *st = user;
    (void)hc;
    if (st->ms == 0) {
        strm_pump(st);
    }
}

static void strm_abandon(struct gw_http_conn *hc, void *user)
{
    struct strm *st = user;
    (void)hc;
    st->e->streams_abandoned++;
    (void)uv_timer_stop(&st->timer); /* cannot fail */
    uv_close((uv_handle_t *)&st->timer, strm_free_cb);
}

static unsigned query_uint(const char *query, const char *key, unsigned def, unsigned max)
{
    size_t kl = strlen(key);
    for (const char *p = query; p && *p; p = strchr(p, '&') ? strchr(p, '&') + 1 : NULL) {
        if (strncmp(p, key, kl) == 0 && p[kl] == '=') {
            unsigned long v = strtoul(p + kl + 1, NULL, 10);
            return v > max ? max : (unsigned)v;
        }
    }
    return def;
}

static void flood_pump(struct wsst *st)
{
    while (st->flooding && st->sent < FLOOD_MSGS && gw_ws_queued(st->ws) <= FLOOD_HIGH) {
        int n = snprintf(st->buf, FLOOD_SIZE, "%08u", st->sent);
        for (size_t j = (size_t)n; j < FLOOD_SIZE; j++) {
            st->buf[j] = (char)('a' + (st->sent + j) % 26);
        }
        if (gw_ws_send_text(st->ws, st->buf, FLOOD_SIZE) < 0) {
            st->flooding = false;
            return;
        }
        st->sent++;
    }
    if (st->flooding && st->sent == FLOOD_MSGS) {
        char done[64];
        int n = snprintf(done, sizeof(done), "flood-done drains=%u", st->drains);
        st->flooding = false;
        (void)gw_ws_send_text(st->ws, done, (size_t)n); /* -1 only when closing */
    }
}

static void pause_timer_cb(uv_timer_t *t)
{
    struct wsst *st = t->data;
    gw_ws_pause(st->ws, false);
    (void)gw_ws_send_text(st->ws, "resumed", 7); /* -1 only when closing */
}

static void flood_start(struct wsst *st)
{
    if (!st->buf && !(st->buf = malloc(FLOOD_SIZE))) {
        gw_ws_close(st->ws, 1011, "out of memory");
        return;
    }
    st->flooding = true;
    st->sent = 0;
    st->drains = 0;
    flood_pump(st);
}

/* "pause" [MS] and "pause-flood MS": @arg is what follows the word (a message is NUL-terminated).
 */
static void pause_for(struct wsst *st, const char *arg, bool flood)
{
    unsigned long ms = *arg == ' ' ? strtoul(arg + 1, NULL, 10) : 300;
    gw_ws_pause(st->ws, true);
    (void)uv_timer_start(&st->pause, pause_timer_cb, ms, 0); /* cannot fail */
    if (flood) {
        flood_start(st);
    }
}

static void ws_message(struct gw_ws *ws, const char *data, size_t len, void *user)
{
    struct wsst *st = user;
    if (len >= 11 && memcmp(data, "pause-flood", 11) == 0) {
        pause_for(st, data + 11, true);
    } else if (len >= 5 && memcmp(data, "pause", 5) == 0 && (len == 5 || data[5] == ' ')) {
        pause_for(st, data + 5, false);
    } else if (len == 7 && memcmp(data, "queued?", 7) == 0) {
        char text[64];
        int n = snprintf(text, sizeof(text), "queued=%zu", gw_ws_queued(ws));
        (void)gw_ws_send_text(ws, text, (size_t)n); /* -1 only when closing */
    } else if (len == 8 && memcmp(data, "close-me", 8) == 0) {
        gw_ws_close(ws, 4000, "bye");
    } else if (len == 5 && memcmp(data, "flood", 5) == 0) {
        flood_start(st);
    } else if (gw_ws_send_text(ws, data, len) < 0) {
        fprintf(stderr, "gw_http_echo: send refused\n");
    }
}

static void ws_drain(struct gw_ws *ws, void *user)
{
    struct wsst *st = user;
    st->drains++;
    flood_pump(st);
}

static void wsst_free_cb(uv_handle_t *h)
{
    struct wsst *st = h->data;
    free(st->buf);
    free(st);
}

static void ws_closed(struct gw_ws *ws, uint16_t code, const char *reason, void *user)
{
    struct wsst *st = user;
    st->e->ws_closed++;
    st->e->last_close = code;
    uv_close((uv_handle_t *)&st->pause, wsst_free_cb);
}

static const struct gw_ws_ops echo_ws_ops = {
    .on_message = ws_message,
    .on_drain = ws_drain,
    .on_close = ws_closed,
};

static void handle(struct gw_http_conn *hc, const struct gw_http_req *req, void *user)
{
    struct echo *e = user;
    if (strcmp(req->path, "/ws") == 0) {
        if (!req->websocket) {
            gw_http_respond_json(hc, 400, NULL,
                                 json_pack("{s:s, s:s}", "code", "BAD_REQUEST", "message",
                                           "not a WebSocket upgrade"));
            return;
        }
        struct wsst *st = calloc(1, sizeof(*st));
        if (!st || uv_timer_init(&e->loop, &st->pause) < 0) {
            free(st);
            gw_http_respond(hc, 500, NULL, NULL, 0);
            return;
        }
        st->pause.data = st;
        st->e = e;
        static const char *const hdrs[] = { "x-echo: yes", NULL };
        st->ws = gw_http_upgrade(hc, hdrs, &echo_ws_ops, st);
        if (!st->ws) {
            uv_close((uv_handle_t *)&st->pause, wsst_free_cb);
        }
        return;
    }
    if (strcmp(req->path, "/slow") == 0) {
        struct slow *sl = calloc(1, sizeof(*sl));
        if (!sl || uv_timer_init(&e->loop, &sl->timer) < 0) {
            free(sl);
            gw_http_respond(hc, 500, NULL, NULL, 0);
            return;
        }
        sl->timer.data = sl;
        sl->hc = hc;
        sl->e = e;
        (void)uv_timer_start(&sl->timer, slow_timer_cb, 500, 0); /* cannot fail */
        gw_http_on_abandon(hc, slow_abandon_cb, sl);
        return;
    }
    if (strcmp(req->path, "/stats") == 0) {
        gw_http_respond_json(
            hc, 200, NULL,
            json_pack("{s:i, s:i, s:i, s:i, s:i}", "abandoned", (int)e->abandoned, "ws_closed",
                      (int)e->ws_closed, "last_close", (int)e->last_close, "streams_abandoned",
                      (int)e->streams_abandoned, "streams_done", (int)e->streams_done));
        return;
    }
    if (strcmp(req->path, "/stream") == 0) {
        struct strm *st = calloc(1, sizeof(*st));
        if (!st || uv_timer_init(&e->loop, &st->timer) < 0) {
            free(st);
            gw_http_respond(hc, 500, NULL, NULL, 0);
            return;
        }
        st->timer.data = st;
        st->hc = hc;
        st->e = e;
        st->n = query_uint(req->query, "n", 3, 100000);
        st->ms = query_uint(req->query, "ms", 0, 10000);
        st->size = query_uint(req->query, "size", 16, 1u << 20);
        st->buf = malloc(st->size + 32);
        static const char *const hdrs[] = { "Content-Type: text/plain", "x-stream: yes", NULL };
        if (!st->buf || gw_http_stream_start(hc, 200, hdrs) < 0) {
            strm_finish(st);
            return;
        }
        gw_http_on_abandon(hc, strm_abandon, st);
        gw_http_on_drain(hc, strm_drain, st);
        strm_pump(st);
        return;
    }
    json_t *headers = json_object();
    for (size_t i = 0; headers && i < req->nheaders; i++) {
        (void)json_object_set_new(headers, req->headers[i].name,
                                  json_string(req->headers[i].value)); /* NULL: not UTF-8 */
    }
    json_t *body = json_stringn(req->body, req->body_len);
    gw_http_respond_json(hc, 200, NULL,
                         json_pack("{s:s, s:s, s:s, s:o, s:o, s:b}", "method", req->method, "path",
                                   req->path, "query", req->query, "body",
                                   body ? body : json_null(), "headers",
                                   headers ? headers : json_null(), "websocket", req->websocket));
}

static void signal_cb(uv_signal_t *sig, int signum)
{
    struct echo *e = sig->data;
    gw_http_close(e->srv);
    uv_close((uv_handle_t *)&e->sig, NULL);
}

int main(void)
{
    struct echo e = { 0 };
    char err[256];
    if (uv_loop_init(&e.loop) < 0 || uv_signal_init(&e.loop, &e.sig) < 0) {
        fprintf(stderr, "gw_http_echo: loop init failed\n");
        return 1;
    }
    e.sig.data = &e;
    if (uv_signal_start(&e.sig, signal_cb, SIGTERM) < 0) {
        fprintf(stderr, "gw_http_echo: signal\n");
        return 1;
    }
    e.srv = gw_http_listen(&e.loop, "127.0.0.1:0", handle, &e, err, sizeof(err));
    if (!e.srv) {
        fprintf(stderr, "gw_http_echo: %s\n", err);
        return 1;
    }
    printf("%d\n", gw_http_port(e.srv));
    fflush(stdout);
    if (uv_run(&e.loop, UV_RUN_DEFAULT) < 0) {
        return 1;
    }
    if (uv_loop_close(&e.loop) != 0) {
        fprintf(stderr, "gw_http_echo: handles left open at exit\n");
        return 1;
    }
    return 0;
}
