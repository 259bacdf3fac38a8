/*
 * libFuzzer target for the JSON-RPC side of a session (gateway/session.c and the method files
 * m_*.c): text messages as the SDK sends them, through on_ws_message, the request checks, the
 * method table, every handler's params checks up to the agent calls they make, and
 * $sandbox.stream.* notifications. The input is one or more messages separated by 0x1e.
 *
 * session.c is compiled into this target (fuzz_gw_session.h) with its WebSocket and agent-pipe
 * calls replaced: the WebSocket is a stand-in that checks what is sent (each message JSON, or
 * "pong"), the agent side is libsbx's sans-I/O connection whose requests are written nowhere
 * (fuzz_gw_uv.h completes the pipe writes); the agent answers hello (a canned response). After
 * a message that starts with a space (JSON ignores it; the SDK sends none), the agent answers
 * every request the session sent it with an error (ENOENT, EACCES, EIO, CANCELLED in turn), and
 * so on for the requests the handlers make in turn, a few rounds; other requests stay
 * unanswered. When the input ends the client closes the WebSocket, so every call still waiting
 * on the agent is failed through its handler's completion (the connection's end). The sandbox
 * allows no egress (allow_net: []), so fetch never leaves the process, and its agent address
 * leads nowhere.
 */
#include "fuzz_gw_session.h"

/* Everything sent is a JSON-RPC object, or the answer to a ping. */
static void fz_ws_sent(const char *data, size_t len)
{
    json_error_t jerr;
    json_t *v;

    if (len == 4 && memcmp(data, "pong", 4) == 0) {
        return;
    }
    v = json_loadb(data, len, JSON_ALLOW_NUL, &jerr);
    if (!json_is_object(v) || !json_is_string(json_object_get(v, "jsonrpc"))) {
        fz_fail("the gateway sent something that is not a JSON-RPC object");
    }
    json_decref(v);
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
    struct gw_session *s = fz_session_open(fz_hello, fz_hello_len);

    const uint8_t *p = data, *end = data + size;
    while (p <= end && fz_ws_live && !fz_ws_closing) {
        const uint8_t *sep = memchr(p, 0x1e, (size_t)(end - p));
        size_t n = (size_t)((sep != NULL ? sep : end) - p);
        fz_ws_message((const char *)p, n);
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
    fz_session_close();
    return 0;
}
