/*
 * libFuzzer target for the JSON-RPC side of a session (gateway/session.c and the method files
 * m_*.c): text messages as the SDK sends them, through on_ws_message, the request checks, the
 * method table, every handler's params checks up to the agent calls they make, and
 * $sandbox.stream.* notifications. The input is one or more messages separated by 0x1e.
 *
 * session.c is compiled into this target with its WebSocket and agent-pipe calls replaced: the
 * WebSocket is a stand-in that checks what is sent (each message JSON, or "pong"), the agent side
 * is libsbx's sans-I/O connection whose requests are written nowhere (fuzz_gw_uv.h completes the
 * pipe writes); the agent answers hello (a canned response). After a message that starts with a
 * space (JSON ignores it; the SDK sends none), the agent answers every request the session sent
 * it with an error (ENOENT, EACCES, EIO, CANCELLED in turn), and so on for the requests the
 * handlers make in turn, a few rounds; other requests stay unanswered. When the input ends the
 * client closes the WebSocket, so every call still waiting on the agent is failed through its
 * handler's completion (the connection's end). The sandbox allows no egress
 * (allow_net: []), so fetch never leaves the process, and its agent address leads nowhere.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The stand-ins first, then the gateway file they stand in for. */
/* clang-format off */
#include "fuzz_gw_uv.h"
#include "http.h"
/* clang-format on */

static const struct gw_ws_ops *fz_ws_ops;
static void *fz_ws_user;
static int fz_ws_token;
static bool fz_ws_live, fz_ws_closing;
static size_t fz_sent;

static struct gw_ws *fz_http_upgrade(struct gw_http_conn *hc, const char *const *headers,
                                     const struct gw_ws_ops *ops, void *user)
{
    (void)hc;
    (void)headers;
    fz_ws_ops = ops;
    fz_ws_user = user;
    fz_ws_live = true;
    fz_ws_closing = false;
    return (struct gw_ws *)&fz_ws_token;
}

static void fz_http_respond_json(struct gw_http_conn *hc, int status, const char *const *headers,
                                 json_t *body)
{
    (void)hc;
    (void)status;
    (void)headers;
    json_decref(body);
}

static void fz_ws_check(struct gw_ws *ws)
{
    if (ws != (struct gw_ws *)&fz_ws_token || !fz_ws_live) {
        abort(); /* used after on_close, or not ours */
    }
}

static int fz_ws_send_text(struct gw_ws *ws, const char *data, size_t len)
{
    json_error_t jerr;
    json_t *v;

    fz_ws_check(ws);
    if (fz_ws_closing) {
        return -1;
    }
    fz_sent += len;
    if (len == 4 && memcmp(data, "pong", 4) == 0) {
        return 0;
    }
    v = json_loadb(data, len, JSON_ALLOW_NUL, &jerr);
    if (!json_is_object(v) || !json_is_string(json_object_get(v, "jsonrpc"))) {
        abort(); /* the gateway sends JSON-RPC objects only */
    }
    json_decref(v);
    return 0;
}

static size_t fz_ws_queued(const struct gw_ws *ws)
{
    fz_ws_check((struct gw_ws *)ws);
    return 0;
}

static void fz_ws_pause(struct gw_ws *ws, bool paused)
{
    (void)paused;
    fz_ws_check(ws);
}

static void fz_ws_close(struct gw_ws *ws, uint16_t code, const char *reason)
{
    (void)code;
    (void)reason;
    fz_ws_check(ws);
    fz_ws_closing = true; /* on_close comes from the driver, as from the loop */
}

static int fz_pipe_connects;

static void fz_pipe_connect(uv_connect_t *req, uv_pipe_t *handle, const char *name,
                            uv_connect_cb cb)
{
    (void)req;
    (void)handle;
    (void)name;
    (void)cb;
    fz_pipe_connects++;
}

#define gw_http_upgrade      fz_http_upgrade
#define gw_http_respond_json fz_http_respond_json
#define gw_ws_send_text      fz_ws_send_text
#define gw_ws_queued         fz_ws_queued
#define gw_ws_pause          fz_ws_pause
#define gw_ws_close          fz_ws_close
#define uv_pipe_connect      fz_pipe_connect

#include "../../gateway/session.c"
#include "sbx/frame.h"
#include "sbx/msg.h"
#include "sbx/schema.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The agent's side: the requests read from what the session writes, waiting for an answer. */
static struct sbx_framer fz_framer;
static struct sbx_decoder fz_dec;
static uint32_t fz_pending[256];
static size_t fz_npending;
static bool fz_reading;

static void fz_agent_reads(const char *data, size_t len)
{
    const uint8_t *p = (const uint8_t *)data;
    struct sbx_err err;

    while (fz_reading && len > 0) {
        size_t used = 0;
        const uint8_t *frame = NULL;
        uint32_t flen = 0;
        int r = sbx_framer_next(&fz_framer, p, len, &used, &frame, &flen, &err);
        struct sbx_msg m;

        if (r < 0) {
            abort(); /* the session wrote a broken frame */
        }
        p += used;
        len -= used;
        if (r == 0) {
            if (used == 0) {
                break;
            }
            continue;
        }
        if (sbx_msg_decode(&fz_dec, frame, flen, &m, &err) < 0) {
            abort(); /* ... or a message the agent could not read */
        }
        if (m.kind == SBX_MSG_REQUEST && fz_npending < sizeof(fz_pending) / sizeof(*fz_pending)) {
            fz_pending[fz_npending++] = m.id;
        }
    }
}

static uv_loop_t fz_loop;
static struct gw fz_gw;
static struct gw_sandbox *fz_sb;
static char *fz_hello;
static size_t fz_hello_len;

static void fz_init(void)
{
    static const char *const caps[] = {
        "session",  "env",  "process", "pty",       "fs",  "fs.futimes",     "fs.lock", "fs.umask",
        "transfer", "pack", "repl",    "repl.json", "net", "process.attach", NULL
    };
    struct sbx_hello_result r = { 0 };
    struct sbx_out o;
    struct sbx_err err;

    if (uv_loop_init(&fz_loop) != 0) {
        abort();
    }
    fz_gw.loop = &fz_loop;
    fz_gw.opt.quiet = true;
    fz_gw.next_stream = 1ull << 40;
    snprintf(fz_gw.token, sizeof(fz_gw.token), "ddo_fuzz");
    fz_sb = calloc(1, sizeof(*fz_sb));
    if (fz_sb == NULL) {
        abort();
    }
    fz_sb->g = &fz_gw;
    snprintf(fz_sb->id, sizeof(fz_sb->id), "sbx_ord_00000000000000000000");
    snprintf(fz_sb->addr, sizeof(fz_sb->addr), "unix:/nonexistent/sbx-fuzz.sock");
    fz_sb->state = GW_SB_READY;
    fz_sb->stop_at_ms = 1;
    fz_sb->labels = json_object();
    fz_sb->config = json_pack("{s:[]}", "allow_net");
    fz_gw.sandboxes = fz_sb;
    fz_gw.nsandboxes = 1;

    /* The agent's answer to hello (the connection's first request, id 1). */
    r.version = 1;
    r.agent = "sbx-agent";
    r.agent_version = "0.1.0";
    r.caps = caps;
    r.limits.frame_max = SBX_FRAME_MAX;
    r.limits.chunk_max = SBX_STREAM_CHUNK_MAX;
    r.limits.stream_window = 1u << 20;
    r.limits.max_streams = 4096;
    r.limits.max_procs = 1024;
    r.limits.max_conns = 64;
    r.conn = 7;
    sbx_out_init(&o);
    sbx_out_begin(&o);
    sbx_pack_response_head(&o.pk, 1);
    sbx_hello_result_pack(&o.pk, &r);
    if (sbx_out_end(&o, &err) < 0) {
        abort();
    }
    fz_hello = sbx_out_steal(&o, &fz_hello_len);
    sbx_out_destroy(&o);
    if (sbx_decoder_init(&fz_dec) < 0) {
        abort();
    }
    fz_uv_sink = fz_agent_reads;
}

/* Agent bytes into the session, as the pipe's read callback gets them. */
static void fz_agent_says(struct gw_session *s, const char *p, size_t n)
{
    while (n > 0 && s->pipe_open && !s->pipe_closing) {
        uv_buf_t buf;
        on_pipe_alloc((uv_handle_t *)&s->pipe, n, &buf);
        size_t k = n < buf.len ? n : buf.len;
        if (k == 0) {
            on_pipe_read((uv_stream_t *)&s->pipe, UV_ENOBUFS, &buf);
            continue;
        }
        memcpy(buf.base, p, k);
        on_pipe_read((uv_stream_t *)&s->pipe, (ssize_t)k, &buf);
        p += k;
        n -= k;
    }
}

/* The agent fails every request waiting for an answer. */
static void fz_agent_fails(struct gw_session *s)
{
    static const char *const codes[] = { "ENOENT", "EACCES", "EIO", "CANCELLED" };
    struct sbx_out o;
    struct sbx_err err;
    size_t n = fz_npending;

    if (n == 0) {
        return;
    }
    sbx_out_init(&o);
    for (size_t i = 0; i < n; i++) {
        struct sbx_err e;
        (void)sbx_err_set(&e, codes[fz_pending[i] % 4], "fuzz: no such thing");
        sbx_out_begin(&o);
        sbx_pack_error_response(&o.pk, fz_pending[i], &e);
        if (sbx_out_end(&o, &err) < 0) {
            abort();
        }
    }
    /* Answers to these only; what the answers make the session send waits for the next round. */
    memmove(fz_pending, fz_pending + n, (fz_npending - n) * sizeof(*fz_pending));
    fz_npending -= n;
    fz_agent_says(s, o.sb.data, o.sb.size);
    sbx_out_destroy(&o);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (fz_sb == NULL) {
        fz_init();
    }
    if (size > (1u << 20)) {
        return 0;
    }
    sbx_framer_init(&fz_framer, SBX_FRAME_MAX);
    fz_npending = 0;
    fz_reading = false;
    struct gw_session *s = gw_session_start(fz_sb, NULL, false);
    if (s == NULL || !fz_ws_live) {
        abort();
    }
    on_connect(&s->connect, 0);
    (void)fz_uv_pump();
    fz_agent_says(s, fz_hello, fz_hello_len);
    (void)fz_uv_pump();
    if (!s->agent_up) {
        abort(); /* the canned hello was refused */
    }
    fz_reading = true;
    fz_npending = 0;

    const uint8_t *p = data, *end = data + size;
    while (p <= end && fz_ws_live && !fz_ws_closing) {
        const uint8_t *sep = memchr(p, 0x1e, (size_t)(end - p));
        size_t n = (size_t)((sep != NULL ? sep : end) - p);
        char *msg = malloc(n + 1); /* http.c hands messages NUL-terminated */
        if (msg == NULL) {
            abort();
        }
        memcpy(msg, p, n);
        msg[n] = '\0';
        fz_ws_ops->on_message((struct gw_ws *)&fz_ws_token, msg, n, fz_ws_user);
        free(msg);
        fz_uv_settle(&fz_loop, 1);
        for (int round = 0; round < 4 && n > 0 && p[0] == ' ' && fz_ws_live && !fz_ws_closing;
             round++) {
            fz_agent_fails(s);
            fz_uv_settle(&fz_loop, 1);
        }
        fz_npending = 0; /* the others stay unanswered */
        if (sep == NULL) {
            break;
        }
        p = sep + 1;
    }
    /* The client goes: the WebSocket ends, the agent link with it, every call is failed. */
    if (fz_ws_live) {
        fz_ws_live = true;
        fz_ws_ops->on_close((struct gw_ws *)&fz_ws_token, 1000, "", fz_ws_user);
        fz_ws_live = false;
    }
    fz_uv_settle(&fz_loop, 3);
    fz_reading = false;
    sbx_framer_free(&fz_framer);
    if (fz_sb->sessions != NULL) {
        abort(); /* the session outlived its WebSocket */
    }
    fz_sent = 0;
    return 0;
}
