/*
 * The session harness of the gw_jsonrpc and gw_agent targets: gateway/session.c compiled into the
 * target with its WebSocket and agent-pipe calls replaced, one sandbox, and an agent that has said
 * hello. Include this header once, after defining nothing but what it names below.
 *
 * The WebSocket is a stand-in: what the session sends goes to fz_ws_sent, which the target defines
 * (its checks of the text), and the session's messages come from the target through
 * fz_ws_message; fz_ws_queue is what the stand-in reports as queued toward the client (0 unless
 * the target says otherwise). The agent side is libsbx's sans-I/O connection of the session:
 * fz_uv_pump (fuzz_gw_uv.h) completes the pipe writes, fz_agent_reads decodes every frame the
 * session writes (the agent could not read a broken one), and fz_agent_says feeds agent bytes to
 * the session as the pipe's read callback gets them. The sandbox allows no egress
 * (allow_net: []), and its agent address leads nowhere.
 *
 * Per input: fz_session_open (the session, its connection and the agent's hello), then the
 * target's messages and agent bytes, then fz_session_close (the client goes; the session must be
 * freed).
 */
#ifndef SBX_FUZZ_GW_SESSION_H
#define SBX_FUZZ_GW_SESSION_H

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

/* A broken invariant: say which, then abort. */
__attribute__((noreturn)) static void fz_fail(const char *what)
{
    fprintf(stderr, "fuzz: %s\n", what);
    abort();
}

/* The target's checks of one text message the session sends (not called once it closes). */
static void fz_ws_sent(const char *data, size_t len);

static const struct gw_ws_ops *fz_ws_ops;
static void *fz_ws_user;
static int fz_ws_token;
static bool fz_ws_live, fz_ws_closing;
static size_t fz_sent;
static size_t fz_ws_queue; /* what gw_ws_queued reports */

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
        fz_fail("the WebSocket was used after on_close, or is not ours");
    }
}

static int fz_ws_send_text(struct gw_ws *ws, const char *data, size_t len)
{
    fz_ws_check(ws);
    if (fz_ws_closing) {
        return -1;
    }
    fz_sent += len;
    fz_ws_sent(data, len);
    return 0;
}

static size_t fz_ws_queued(const struct gw_ws *ws)
{
    fz_ws_check((struct gw_ws *)ws);
    return fz_ws_queue;
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
            fz_fail("the session wrote a broken frame to the agent");
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
            fz_fail("the session wrote a message the agent cannot read");
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

/* The agent's answer to hello (the connection's first request, id 1) announcing @lim; a frame
 * the caller frees. */
static char *fz_hello_make(const struct sbx_limits *lim, uint64_t recv_window, size_t *len)
{
    static const char *const caps[] = {
        "session",  "env",  "process", "pty",       "fs",  "fs.futimes",     "fs.lock", "fs.umask",
        "transfer", "pack", "repl",    "repl.json", "net", "process.attach", NULL
    };
    struct sbx_hello_result r = { 0 };
    struct sbx_out o;
    struct sbx_err err;
    char *frame;

    r.version = 1;
    r.agent = "sbx-agent";
    r.agent_version = "0.1.0";
    r.caps = caps;
    r.limits = *lim;
    r.conn = 7;
    r.recv_window = recv_window; /* echoed as the agent does (0: an agent that knows none) */
    sbx_out_init(&o);
    sbx_out_begin(&o);
    sbx_pack_response_head(&o.pk, 1);
    sbx_hello_result_pack(&o.pk, &r);
    if (sbx_out_end(&o, &err) < 0) {
        abort();
    }
    frame = sbx_out_steal(&o, len);
    sbx_out_destroy(&o);
    return frame;
}

static void fz_init(void)
{
    struct sbx_limits lim = { 0 };

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

    lim.frame_max = SBX_FRAME_MAX;
    lim.chunk_max = SBX_STREAM_CHUNK_MAX;
    lim.stream_window = 1u << 20;
    lim.max_streams = 4096;
    lim.max_procs = 1024;
    lim.max_conns = 64;
    fz_hello = fz_hello_make(&lim, GW_AGENT_RECV_WINDOW, &fz_hello_len);
    if (sbx_decoder_init(&fz_dec) < 0) {
        abort();
    }
    fz_uv_sink = fz_agent_reads;
}

/* Agent bytes into the session, as the pipe's read callback gets them: reads of at most @step
 * bytes (0: as many as the connection has room for). */
static void fz_agent_says_split(struct gw_session *s, const char *p, size_t n, size_t step)
{
    while (n > 0 && s->pipe_open && !s->pipe_closing) {
        uv_buf_t buf;
        on_pipe_alloc((uv_handle_t *)&s->pipe, n, &buf);
        size_t k = n < buf.len ? n : buf.len;
        if (step > 0 && k > step) {
            k = step;
        }
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

static void fz_agent_says(struct gw_session *s, const char *p, size_t n)
{
    fz_agent_says_split(s, p, n, 0);
}

/* One text message from the client (http.c hands messages NUL-terminated). */
static void fz_ws_message(const char *text, size_t n)
{
    char *msg = malloc(n + 1);

    if (msg == NULL) {
        abort();
    }
    memcpy(msg, text, n);
    msg[n] = '\0';
    fz_ws_ops->on_message((struct gw_ws *)&fz_ws_token, msg, n, fz_ws_user);
    free(msg);
}

/* A session on the sandbox whose agent answered hello with @hello (a frame): agent up, reading
 * the WebSocket. The frames it writes from now on are decoded. */
static struct gw_session *fz_session_open(const char *hello, size_t hello_len)
{
    struct gw_session *s;

    if (fz_sb == NULL) {
        fz_init();
    }
    sbx_framer_init(&fz_framer, SBX_FRAME_MAX);
    fz_npending = 0;
    fz_reading = false;
    s = gw_session_start(fz_sb, NULL, false);
    if (s == NULL || !fz_ws_live) {
        fz_fail("no session");
    }
    on_connect(&s->connect, 0);
    (void)fz_uv_pump();
    fz_agent_says(s, hello, hello_len);
    (void)fz_uv_pump();
    if (!s->agent_up) {
        fz_fail("the canned hello was refused");
    }
    fz_reading = true;
    fz_npending = 0;
    return s;
}

/* The client goes: the WebSocket ends, the agent link with it, every call is failed; then the
 * session must be gone. */
static void fz_session_close(void)
{
    if (fz_ws_live) {
        fz_ws_ops->on_close((struct gw_ws *)&fz_ws_token, 1000, "", fz_ws_user);
        fz_ws_live = false;
    }
    fz_uv_settle(&fz_loop, 3);
    fz_reading = false;
    sbx_framer_free(&fz_framer);
    if (fz_sb->sessions != NULL) {
        fz_fail("the session outlived its WebSocket");
    }
    fz_sent = 0;
}

#endif /* SBX_FUZZ_GW_SESSION_H */
