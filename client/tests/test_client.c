/*
 * Unit tests: libsbx's blocking layer (over the sans-I/O core) against a scripted fake agent on
 * the other end of a socketpair. Most tests run in one thread: the "agent" writes its frames into
 * the socket before the client reads (the client's request ids are sequential from 1, so
 * responses can be written ahead). Streams exist only once a result announced them (the core's
 * stream table), so tests open them with a proc.spawn response first. Tests that move more than
 * a socket buffer holds use a helper thread that only reads or writes bytes.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "sbx/client.h"
#include "sbx/frame.h"

struct fx {
    struct sbx_client *c;
    int afd; /* the agent's end */
    struct sbx_out out;
    struct sbx_framer fr;
    struct sbx_decoder dec;
    struct sbx_msg m; /* last message the agent read */
    struct sbx_err err;
};

static int setup(void **state)
{
    struct fx *fx = calloc(1, sizeof(*fx));
    int sv[2];

    if (fx == NULL || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        return -1;
    }
    fx->c = sbx_client_from_fd(sv[0], "test", &fx->err);
    if (fx->c == NULL) {
        return -1;
    }
    fx->afd = sv[1];
    sbx_out_init(&fx->out);
    sbx_framer_init(&fx->fr, 0);
    if (sbx_decoder_init(&fx->dec) < 0) {
        return -1;
    }
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;

    sbx_client_close(fx->c);
    if (fx->afd >= 0) {
        (void)close(fx->afd);
    }
    sbx_out_destroy(&fx->out);
    sbx_framer_free(&fx->fr);
    sbx_decoder_destroy(&fx->dec);
    free(fx);
    return 0;
}

/* --- the fake agent's side ------------------------------------------------------------------ */

static void agent_write(struct fx *fx, const void *p, size_t n)
{
    const char *s = p;

    while (n > 0) {
        ssize_t w = write(fx->afd, s, n);
        assert_true(w > 0);
        s += w;
        n -= (size_t)w;
    }
}

/* Start a frame in fx->out; agent_flush ends and writes it. */
static msgpack_packer *agent_begin(struct fx *fx)
{
    sbx_out_reset(&fx->out);
    sbx_out_begin(&fx->out);
    return &fx->out.pk;
}

static void agent_flush(struct fx *fx)
{
    assert_int_equal(sbx_out_end(&fx->out, &fx->err), 0);
    agent_write(fx, fx->out.sb.data, fx->out.sb.size);
    sbx_out_reset(&fx->out);
}

static void agent_notify(struct fx *fx, const char *method, uint32_t stream, int64_t bytes)
{
    msgpack_packer *pk = agent_begin(fx);

    sbx_pack_notify_head(pk, method);
    msgpack_pack_map(pk, bytes >= 0 ? 2 : 1);
    sbx_pack_kv_u64(pk, "stream", stream);
    if (bytes >= 0) {
        sbx_pack_kv_u64(pk, "bytes", (uint64_t)bytes);
    }
    agent_flush(fx);
}

static void agent_ok(struct fx *fx, uint32_t id)
{
    msgpack_packer *pk = agent_begin(fx);

    sbx_pack_response_head(pk, id);
    msgpack_pack_map(pk, 0);
    agent_flush(fx);
}

static void agent_data(struct fx *fx, uint32_t stream, const void *p, uint32_t n)
{
    uint8_t hdr[SBX_STREAM_DATA_HDR_MAX];
    size_t h = sbx_data_header(hdr, stream, n);

    agent_write(fx, hdr, h);
    agent_write(fx, p, n);
}

/* Read one message the client sent; 0 when nothing arrives within @timeout_ms. */
static int agent_read(struct fx *fx, int timeout_ms)
{
    for (;;) {
        uint8_t b;
        size_t used;
        struct pollfd pfd = { .fd = fx->afd, .events = POLLIN };
        int r;

        if (poll(&pfd, 1, timeout_ms) == 0) {
            return 0;
        }
        assert_int_equal(read(fx->afd, &b, 1), 1);
        r = sbx_framer_feed(&fx->fr, &b, 1, &used, &fx->err);
        assert_true(r >= 0);
        if (r == 1) {
            assert_int_equal(sbx_msg_decode(&fx->dec, fx->fr.buf, fx->fr.len, &fx->m, &fx->err), 0);
            return 1;
        }
    }
}

/* The agent's answer to hello (id 1): @version, @window / @chunk limits. */
static void agent_hello_rw(struct fx *fx, uint32_t version, uint32_t window, uint32_t chunk,
                           uint32_t recv_window)
{
    msgpack_packer *pk = agent_begin(fx);

    sbx_pack_response_head(pk, 1);
    msgpack_pack_map(pk, 7 + (recv_window != 0));
    sbx_pack_kv_u64(pk, "version", version);
    sbx_pack_kv_str(pk, "agent", "fake-agent");
    sbx_pack_kv_str(pk, "agent_version", "0.0");
    sbx_pack_cstr(pk, "capabilities");
    msgpack_pack_array(pk, 3);
    sbx_pack_cstr(pk, "session");
    sbx_pack_cstr(pk, "process");
    msgpack_pack_uint8(pk, 7); /* not a string: ignored */
    sbx_pack_cstr(pk, "limits");
    msgpack_pack_map(pk, 6);
    sbx_pack_kv_u64(pk, "stream_window", window);
    sbx_pack_kv_u64(pk, "chunk_max", chunk);
    sbx_pack_kv_u64(pk, "frame_max", SBX_FRAME_MAX);
    sbx_pack_kv_u64(pk, "max_streams", SBX_MAX_STREAMS);
    sbx_pack_kv_u64(pk, "max_procs", SBX_MAX_PROCS);
    sbx_pack_kv_u64(pk, "max_conns", SBX_MAX_CONNS);
    sbx_pack_kv_u64(pk, "conn", 1);
    sbx_pack_kv_u64(pk, "future_field", 1);
    if (recv_window != 0) {
        sbx_pack_kv_u64(pk, "recv_window", recv_window);
    }
    agent_flush(fx);
}

static void agent_hello(struct fx *fx, uint32_t version, uint32_t window, uint32_t chunk)
{
    agent_hello_rw(fx, version, window, chunk, 0);
}

/* Answer hello with @window / @chunk limits, then let the client say hello. */
static void do_hello(struct fx *fx, uint32_t window, uint32_t chunk)
{
    agent_hello(fx, 1, window, chunk);
    assert_int_equal(sbx_client_hello(fx->c, "sekrit", &fx->err), 0);
}

static void pack_sid(msgpack_packer *pk, const char *key, uint32_t sid)
{
    if (sid != 0) {
        sbx_pack_kv_u64(pk, key, sid);
    } else {
        sbx_pack_kv_nil(pk, key);
    }
}

/* proc.spawn, answered with streams @in / @out / @err (0: none): the core registers them. */
static void spawn(struct fx *fx, uint32_t in, uint32_t out, uint32_t err)
{
    msgpack_packer *pk;
    uint32_t id;

    pk = sbx_client_begin(fx->c, "proc.spawn", &id);
    msgpack_pack_map(pk, 0);
    assert_int_equal(sbx_client_send(fx->c, &fx->err), 0);
    pk = agent_begin(fx);
    sbx_pack_response_head(pk, id);
    msgpack_pack_map(pk, 5);
    sbx_pack_kv_u64(pk, "id", 1);
    sbx_pack_kv_u64(pk, "pid", 100);
    pack_sid(pk, "stdin", in);
    pack_sid(pk, "stdout", out);
    pack_sid(pk, "stderr", err);
    agent_flush(fx);
    assert_int_equal(sbx_client_wait(fx->c, id, &fx->m, 1000, &fx->err), 0);
}

/* The agent reads the next message and checks its method. */
static void agent_expect(struct fx *fx, const char *method)
{
    assert_int_equal(agent_read(fx, 1000), 1);
    assert_true(sbx_msg_method_is(&fx->m, method));
}

/* --- tests -------------------------------------------------------------------------------- */

static void test_hello(void **state)
{
    struct fx *fx = *state;
    const msgpack_object *res;
    uint64_t v;
    char buf[64];

    do_hello(fx, 1000, 300);
    assert_int_equal(agent_read(fx, 1000), 1);
    assert_int_equal(fx->m.kind, SBX_MSG_REQUEST);
    assert_int_equal(fx->m.id, 1);
    assert_true(sbx_msg_method_is(&fx->m, "hello"));
    assert_int_equal(sbx_param_u64(fx->m.params, "version", 1, 0, 100, &v, &fx->err), 0);
    assert_int_equal(v, SBX_PROTO_VERSION);
    assert_int_equal(sbx_param_u64(fx->m.params, "min_version", 1, 0, 100, &v, &fx->err), 0);
    assert_int_equal(v, SBX_PROTO_MIN_VERSION);
    assert_int_equal(sbx_param_cstr(fx->m.params, "client", 1, buf, sizeof(buf), &fx->err), 0);
    assert_string_equal(buf, "libsbx");
    assert_int_equal(sbx_param_cstr(fx->m.params, "token", 1, buf, sizeof(buf), &fx->err), 0);
    assert_string_equal(buf, "sekrit");

    assert_int_equal(sbx_client_version(fx->c), 1);
    assert_true(sbx_client_has_cap(fx->c, "process"));
    assert_true(sbx_client_has_cap(fx->c, "session"));
    assert_false(sbx_client_has_cap(fx->c, "pty"));
    assert_int_equal(sbx_client_window(fx->c), 1000);
    assert_int_equal(sbx_client_chunk_max(fx->c), 300);

    /* The kept result survives later traffic. */
    agent_notify(fx, "noise", 1, 5);
    assert_int_equal(sbx_client_recv(fx->c, &fx->m, 1000, &fx->err), 1);
    res = sbx_client_hello_result(fx->c);
    assert_non_null(res);
    assert_int_equal(sbx_param_cstr(res, "agent", 1, buf, sizeof(buf), &fx->err), 0);
    assert_string_equal(buf, "fake-agent");

    /* A second hello is refused locally. */
    assert_int_equal(sbx_client_hello(fx->c, NULL, &fx->err), -1);
}

static void test_hello_errors(void **state)
{
    struct fx *fx = *state;
    msgpack_packer *pk;
    struct sbx_err e;

    /* AUTH: an error response, then the agent closes. */
    sbx_err_clear(&e);
    sbx_err_set(&e, "AUTH", "bad token");
    pk = agent_begin(fx);
    sbx_pack_error_response(pk, 1, &e);
    agent_flush(fx);
    assert_int_equal(sbx_client_hello(fx->c, "wrong", &fx->err), -1);
    assert_string_equal(fx->err.code, "AUTH");
    assert_non_null(strstr(fx->err.msg, "bad token"));
}

static void test_hello_version(void **state)
{
    struct fx *fx = *state;

    agent_hello(fx, 99, 1000, 300);
    /* The agent broke §6.3 (a version outside the range asked for): the core refuses the result
     * and the connection, and says so to the agent. */
    assert_int_equal(sbx_client_hello(fx->c, NULL, &fx->err), -1);
    assert_string_equal(fx->err.code, "BAD_MESSAGE");
    assert_non_null(strstr(fx->err.msg, "version 99"));
    assert_int_equal(sbx_client_version(fx->c), 0);
    agent_expect(fx, "hello");
    agent_expect(fx, "error");
    assert_int_equal(sbx_client_call0(fx->c, "ping", &fx->m, &fx->err), -1);
    assert_string_equal(fx->err.code, "BAD_MESSAGE");
}

static void test_local_refusals(void **state)
{
    struct fx *fx = *state;
    msgpack_packer *pk;
    uint32_t id = 77;

    /* Before hello: refused by the core, reported by send, nothing written. */
    pk = sbx_client_begin(fx->c, "ping", &id);
    assert_int_equal(id, 0);
    msgpack_pack_map(pk, 0);
    assert_int_equal(sbx_client_send(fx->c, &fx->err), -1);
    assert_string_equal(fx->err.code, "HELLO_REQUIRED");
    assert_int_equal(agent_read(fx, 50), 0);

    do_hello(fx, 1000, 300);
    agent_expect(fx, "hello");
    /* A capability the agent did not announce (fs): UNSUPPORTED, locally. */
    pk = sbx_client_begin(fx->c, "fs.stat", &id);
    sbx_pack_kv_str(pk, "path", "/"); /* whatever is packed goes nowhere */
    assert_int_equal(sbx_client_send(fx->c, &fx->err), -1);
    assert_string_equal(fx->err.code, "UNSUPPORTED");
    assert_int_equal(agent_read(fx, 50), 0);
    /* Two values packed: refused (BAD_PARAM), nothing sent. */
    pk = sbx_client_begin(fx->c, "ping", &id);
    msgpack_pack_map(pk, 0);
    msgpack_pack_map(pk, 0);
    assert_int_equal(sbx_client_send(fx->c, &fx->err), -1);
    assert_string_equal(fx->err.code, "BAD_PARAM");
    /* send without begin */
    assert_int_equal(sbx_client_send(fx->c, &fx->err), -1);
    assert_string_equal(fx->err.code, "INTERNAL");
    assert_int_equal(agent_read(fx, 50), 0);
    /* The connection is fine. */
    pk = sbx_client_begin(fx->c, "ping", &id);
    msgpack_pack_map(pk, 0);
    assert_int_equal(sbx_client_send(fx->c, &fx->err), 0);
    agent_expect(fx, "ping");
    assert_int_equal(fx->m.id, id);
    agent_ok(fx, id);
    assert_int_equal(sbx_client_wait(fx->c, id, &fx->m, 1000, &fx->err), 0);
}

/* Pipelining (§6.1): hello and a typed call in one go, the hello response awaited first; the
 * typed call's response comes through sbx_client_call's wait. */
static void test_hello_pipelined(void **state)
{
    struct fx *fx = *state;
    struct sbx_err e;
    uint32_t id = 0;
    int r;

    assert_int_equal(sbx_client_hello_send(fx->c, NULL, &fx->err), 0);
    assert_int_equal(sbx_client_hello_send(fx->c, NULL, &fx->err), -1); /* one at a time */
    /* fs is not announced, but that is not known yet: the agent judges it. */
    r = sbx_fs_stat(sbx_client_conn(fx->c), "/etc", NULL, NULL, &id, &fx->err);
    assert_int_equal(sbx_client_sent(fx->c, r, &fx->err), 0);
    assert_int_equal(id, 2);
    agent_expect(fx, "hello");
    agent_expect(fx, "fs.stat"); /* written before the hello response came */
    assert_int_equal(fx->m.id, 2);
    agent_hello(fx, 1, 1000, 300);
    sbx_err_clear(&e);
    sbx_err_set(&e, "UNSUPPORTED", "no fs here");
    sbx_pack_error_response(agent_begin(fx), 2, &e);
    agent_flush(fx);
    assert_int_equal(sbx_client_hello_wait(fx->c, &fx->err), 0);
    assert_int_equal(sbx_client_version(fx->c), 1);
    assert_int_equal(sbx_client_wait(fx->c, 2, &fx->m, 1000, &fx->err), -1);
    assert_string_equal(fx->err.msg, "no fs here");
    assert_int_equal(sbx_client_hello_wait(fx->c, &fx->err), -1); /* nothing outstanding */
    /* After hello the core knows the capabilities and refuses locally. */
    r = sbx_fs_stat(sbx_client_conn(fx->c), "/etc", NULL, NULL, &id, &fx->err);
    assert_int_equal(sbx_client_call(fx->c, r, id, &fx->m, &fx->err), -1);
    assert_string_equal(fx->err.code, "UNSUPPORTED");
    assert_int_equal(agent_read(fx, 50), 0);
    r = sbx_ping(sbx_client_conn(fx->c), NULL, &id, &fx->err);
    assert_int_equal(id, 3);
    agent_ok(fx, 3);
    assert_int_equal(sbx_client_call(fx->c, r, id, &fx->m, &fx->err), 0);
}

static void test_wait_queues_in_order(void **state)
{
    struct fx *fx = *state;
    msgpack_packer *pk;
    uint32_t id;

    do_hello(fx, 1000, 300);
    spawn(fx, 8, 5, 0);
    pk = sbx_client_begin(fx->c, "ping", &id);
    assert_int_equal(id, 3);
    msgpack_pack_map(pk, 0);
    assert_int_equal(sbx_client_send(fx->c, &fx->err), 0);

    agent_notify(fx, "x.one", 3, -1);
    agent_data(fx, 5, "hi", 2);
    agent_ok(fx, 99); /* someone else's response */
    agent_notify(fx, "stream.credit", 8, 10);
    agent_ok(fx, id);
    agent_notify(fx, "x.after", 4, -1);

    assert_int_equal(sbx_client_wait(fx->c, id, &fx->m, 1000, &fx->err), 0);
    assert_int_equal(fx->m.kind, SBX_MSG_RESPONSE);
    assert_int_equal(fx->m.id, id);
    assert_non_null(fx->m.result);
    /* Credit was applied on arrival, though the notification is still handed out. */
    assert_int_equal(sbx_client_credit(fx->c, 8), 1010);
    assert_true(sbx_client_pending(fx->c));

    assert_int_equal(sbx_client_recv(fx->c, &fx->m, 0, &fx->err), 1);
    assert_true(sbx_msg_method_is(&fx->m, "x.one"));
    assert_int_equal(sbx_client_recv(fx->c, &fx->m, 0, &fx->err), 1);
    assert_int_equal(fx->m.kind, SBX_MSG_DATA);
    assert_int_equal(fx->m.stream, 5);
    assert_int_equal(fx->m.data_len, 2);
    assert_memory_equal(fx->m.data, "hi", 2);
    assert_int_equal(sbx_client_recv(fx->c, &fx->m, 0, &fx->err), 1);
    assert_int_equal(fx->m.kind, SBX_MSG_RESPONSE);
    assert_int_equal(fx->m.id, 99);
    assert_int_equal(sbx_client_recv(fx->c, &fx->m, 0, &fx->err), 1);
    assert_true(sbx_msg_method_is(&fx->m, "stream.credit"));
    assert_int_equal(sbx_client_credit(fx->c, 8), 1010); /* not applied twice */
    assert_int_equal(sbx_client_recv(fx->c, &fx->m, 1000, &fx->err), 1);
    assert_true(sbx_msg_method_is(&fx->m, "x.after"));
    assert_int_equal(sbx_client_recv(fx->c, &fx->m, 0, &fx->err), 0);
    assert_false(sbx_client_pending(fx->c));
}

/* Request ids are sequential, so an agent can answer the next one before it is sent: that
 * answer is handed out as a stray response and the request's own answer is the one taken (it
 * was queued as that request's answer, typed checks and all skipped). */
static void test_response_ahead_of_its_request(void **state)
{
    struct fx *fx = *state;
    msgpack_packer *pk;
    uint32_t id;

    do_hello(fx, 1000, 300);
    pk = sbx_client_begin(fx->c, "ping", &id);
    assert_int_equal(id, 2);
    msgpack_pack_map(pk, 0);
    assert_int_equal(sbx_client_send(fx->c, &fx->err), 0);
    pk = agent_begin(fx); /* for request 3, not sent yet */
    sbx_pack_response_head(pk, 3);
    msgpack_pack_map(pk, 1);
    sbx_pack_kv_u64(pk, "size", 666666);
    agent_flush(fx);
    agent_ok(fx, 2);
    assert_int_equal(sbx_client_wait(fx->c, 2, &fx->m, 1000, &fx->err), 0);
    pk = sbx_client_begin(fx->c, "ping", &id);
    assert_int_equal(id, 3);
    msgpack_pack_map(pk, 0);
    assert_int_equal(sbx_client_send(fx->c, &fx->err), 0);
    agent_ok(fx, 3);
    assert_int_equal(sbx_client_wait(fx->c, 3, &fx->m, 1000, &fx->err), 0);
    assert_int_equal(fx->m.result->via.map.size, 0); /* the real answer */
    assert_int_equal(sbx_client_recv(fx->c, &fx->m, 0, &fx->err), 1);
    assert_int_equal(fx->m.kind, SBX_MSG_RESPONSE); /* the stray one, handed out */
    assert_int_equal(fx->m.id, 3);
    assert_int_equal(fx->m.result->via.map.size, 1);
}

static void test_error_response(void **state)
{
    struct fx *fx = *state;
    msgpack_packer *pk;
    uint32_t id;

    do_hello(fx, 1000, 300);
    pk = sbx_client_begin(fx->c, "proc.spawn", &id);
    msgpack_pack_map(pk, 0);
    assert_int_equal(sbx_client_send(fx->c, &fx->err), 0);
    pk = agent_begin(fx);
    msgpack_pack_array(pk, 4);
    msgpack_pack_uint8(pk, 1);
    msgpack_pack_uint32(pk, id);
    msgpack_pack_map(pk, 6);
    sbx_pack_kv_str(pk, "code", "ENOENT");
    sbx_pack_kv_str(pk, "message", "exec \"nosuch\": No such file or directory");
    sbx_pack_kv_u64(pk, "errno", ENOENT);
    sbx_pack_kv_str(pk, "stage", "exec");
    sbx_pack_kv_str(pk, "field", "argv");
    sbx_pack_kv_str(pk, "unknown", "ignored");
    msgpack_pack_nil(pk);
    agent_flush(fx);
    assert_int_equal(sbx_client_wait(fx->c, id, &fx->m, 1000, &fx->err), -1);
    assert_string_equal(fx->err.code, "ENOENT");
    assert_int_equal(fx->err.sys_errno, ENOENT);
    assert_string_equal(fx->err.stage, "exec");
    assert_string_equal(fx->err.field, "argv");
    assert_string_equal(fx->err.msg, "exec \"nosuch\": No such file or directory");
}

static void test_call0_and_timeout(void **state)
{
    struct fx *fx = *state;
    uint32_t id;
    msgpack_packer *pk;

    do_hello(fx, 1000, 300);
    agent_ok(fx, 2); /* call0 will use id 2 */
    assert_int_equal(sbx_client_call0(fx->c, "ping", &fx->m, &fx->err), 0);
    assert_int_equal(agent_read(fx, 1000), 1); /* hello */
    assert_int_equal(agent_read(fx, 1000), 1);
    assert_true(sbx_msg_method_is(&fx->m, "ping"));
    assert_int_equal(fx->m.params->via.map.size, 0);

    pk = sbx_client_begin(fx->c, "slow", &id);
    msgpack_pack_map(pk, 0);
    assert_int_equal(sbx_client_send(fx->c, &fx->err), 0);
    assert_int_equal(sbx_client_wait(fx->c, id, &fx->m, 50, &fx->err), -1);
    assert_string_equal(fx->err.code, "TIMEOUT");
    assert_int_equal(sbx_client_recv(fx->c, &fx->m, 20, &fx->err), 0);
    /* A late response is still found by a later wait. */
    agent_ok(fx, id);
    assert_int_equal(sbx_client_wait(fx->c, id, &fx->m, 1000, &fx->err), 0);
}

/* Read the data frames the client wrote on @stream; returns the total payload length. */
static size_t agent_collect(struct fx *fx, uint32_t stream, uint8_t *dst, uint32_t chunk)
{
    size_t total = 0;

    while (agent_read(fx, 200) == 1) {
        if (fx->m.kind != SBX_MSG_DATA) {
            continue;
        }
        assert_int_equal(fx->m.stream, stream);
        assert_true(fx->m.data_len <= chunk);
        memcpy(dst + total, fx->m.data, fx->m.data_len);
        total += fx->m.data_len;
    }
    return total;
}

static void test_stream_write_credit(void **state)
{
    struct fx *fx = *state;
    uint8_t src[2500], got[4000];

    for (size_t i = 0; i < sizeof(src); i++) {
        src[i] = (uint8_t)(i * 7 + 1);
    }
    do_hello(fx, 1000, 300);
    assert_int_equal(sbx_client_credit(fx->c, 7), 0); /* not announced yet */
    assert_int_equal(sbx_client_stream_write(fx->c, 7, src, 1, &fx->err), -1);
    assert_string_equal(fx->err.code, "STREAM");
    spawn(fx, 7, 0, 0);
    assert_int_equal(sbx_client_credit(fx->c, 7), 1000);
    /* The agent's later grants, and a notification the writer must queue, not eat. */
    agent_notify(fx, "foo", 1, -1);
    agent_notify(fx, "stream.credit", 7, 1000);
    agent_notify(fx, "stream.credit", 7, 600);
    assert_int_equal(sbx_client_stream_write(fx->c, 7, src, sizeof(src), &fx->err), 0);
    assert_int_equal(sbx_client_credit(fx->c, 7), 1000 + 1000 + 600 - 2500);

    assert_int_equal(agent_read(fx, 1000), 1); /* hello */
    assert_int_equal(agent_collect(fx, 7, got, 300), sizeof(src));
    assert_memory_equal(got, src, sizeof(src));

    assert_int_equal(sbx_client_recv(fx->c, &fx->m, 0, &fx->err), 1);
    assert_true(sbx_msg_method_is(&fx->m, "foo"));
    /* The credit notifications were consumed by the writer. */
    assert_int_equal(sbx_client_recv(fx->c, &fx->m, 0, &fx->err), 0);

    /* Zero bytes: nothing sent. */
    assert_int_equal(sbx_client_stream_write(fx->c, 7, src, 0, &fx->err), 0);
    assert_int_equal(sbx_client_stream_write(fx->c, 0, src, 1, &fx->err), -1);
    assert_string_equal(fx->err.code, "BAD_PARAM");

    /* The agent cancels while the writer waits for credit: STREAM, and the cancel is handed
     * out too. */
    agent_notify(fx, "stream.cancel", 7, -1);
    assert_int_equal(sbx_client_stream_write(fx->c, 7, src, 500, &fx->err), -1);
    assert_string_equal(fx->err.code, "STREAM");
    assert_non_null(strstr(fx->err.msg, "cancelled by the agent"));
    assert_int_equal(agent_collect(fx, 7, got, 300), 100); /* what the credit covered */
    assert_int_equal(sbx_client_recv(fx->c, &fx->m, 0, &fx->err), 1);
    assert_true(sbx_msg_method_is(&fx->m, "stream.cancel"));
    assert_int_equal(sbx_client_stream_write(fx->c, 7, src, 1, &fx->err), -1);
    assert_string_equal(fx->err.code, "STREAM");
}

static void test_response_queued_during_write(void **state)
{
    struct fx *fx = *state;
    uint8_t src[1500] = { 0 };
    msgpack_packer *pk;
    uint32_t id;

    do_hello(fx, 1000, 1000);
    spawn(fx, 3, 0, 0);
    pk = sbx_client_begin(fx->c, "ping", &id);
    msgpack_pack_map(pk, 0);
    assert_int_equal(sbx_client_send(fx->c, &fx->err), 0);
    agent_ok(fx, id);
    agent_notify(fx, "stream.credit", 3, 500);
    assert_int_equal(sbx_client_stream_write(fx->c, 3, src, sizeof(src), &fx->err), 0);
    /* The response arrived while the writer waited for credit: wait finds it in the FIFO. */
    assert_int_equal(sbx_client_wait(fx->c, id, &fx->m, 0, &fx->err), 0);
    assert_int_equal(fx->m.id, id);
    assert_int_equal(sbx_client_recv(fx->c, &fx->m, 0, &fx->err), 0);
}

static void test_stream_cancel_and_end(void **state)
{
    struct fx *fx = *state;

    do_hello(fx, 1000, 300);
    spawn(fx, 11, 0, 0);
    spawn(fx, 12, 0, 0);
    assert_false(sbx_client_stream_cancelled(fx->c, 11));
    agent_notify(fx, "stream.cancel", 11, -1);
    assert_int_equal(sbx_client_recv(fx->c, &fx->m, 1000, &fx->err), 1);
    assert_true(sbx_msg_method_is(&fx->m, "stream.cancel"));
    assert_true(sbx_client_stream_cancelled(fx->c, 11));
    assert_int_equal(sbx_client_credit(fx->c, 11), 0);
    assert_int_equal(sbx_client_stream_write(fx->c, 11, "x", 1, &fx->err), -1);
    assert_string_equal(fx->err.code, "STREAM");
    /* Ending a stream the agent cancelled is a no-op (nothing is sent). */
    assert_int_equal(sbx_client_stream_end(fx->c, 11, &fx->err), 0);

    /* A stream we ended takes no more data (and is not open any more). */
    assert_int_equal(sbx_client_stream_write(fx->c, 12, "ab", 2, &fx->err), 0);
    assert_int_equal(sbx_client_stream_end(fx->c, 12, &fx->err), 0);
    assert_int_equal(sbx_client_stream_write(fx->c, 12, "x", 1, &fx->err), -1);
    assert_string_equal(fx->err.code, "STREAM");
    assert_true(sbx_client_stream_cancelled(fx->c, 12));
    assert_int_equal(sbx_client_stream_end(fx->c, 12, &fx->err), 0); /* again: no-op */

    agent_expect(fx, "hello");
    agent_expect(fx, "proc.spawn");
    agent_expect(fx, "proc.spawn");
    assert_int_equal(agent_read(fx, 1000), 1);
    assert_int_equal(fx->m.kind, SBX_MSG_DATA);
    assert_int_equal(fx->m.stream, 12);
    assert_int_equal(agent_read(fx, 1000), 1);
    assert_true(sbx_msg_method_is(&fx->m, "stream.end"));
    assert_int_equal(agent_read(fx, 100), 0);
}

static void test_stream_abort(void **state)
{
    struct fx *fx = *state;
    struct sbx_stream_note n;
    struct sbx_err why;

    do_hello(fx, 1000, 300);
    spawn(fx, 11, 0, 0);
    assert_int_equal(sbx_client_stream_write(fx->c, 11, "ab", 2, &fx->err), 0);
    (void)sbx_err_sys(&why, EIO, NULL, "read %s", "in.bin");
    assert_int_equal(sbx_client_stream_abort(fx->c, 11, &why, &fx->err), 0);
    /* Aborted is ended: no more data, and aborting or ending it again sends nothing; nor does
     * aborting a stream that is not open (never announced here; cancelled by the agent). */
    assert_true(sbx_client_stream_cancelled(fx->c, 11));
    assert_int_equal(sbx_client_stream_write(fx->c, 11, "x", 1, &fx->err), -1);
    assert_string_equal(fx->err.code, "STREAM");
    assert_int_equal(sbx_client_stream_abort(fx->c, 11, &why, &fx->err), 0);
    assert_int_equal(sbx_client_stream_end(fx->c, 11, &fx->err), 0);
    assert_int_equal(sbx_client_stream_abort(fx->c, 99, &why, &fx->err), 0);

    agent_expect(fx, "hello");
    agent_expect(fx, "proc.spawn");
    assert_int_equal(agent_read(fx, 1000), 1);
    assert_true(fx->m.kind == SBX_MSG_DATA && fx->m.data_len == 2);
    agent_expect(fx, "stream.end"); /* after the data, carrying the error map */
    assert_int_equal(sbx_stream_note_read(SBX_N_STREAM_END, fx->m.params, &n, &fx->err), 0);
    assert_int_equal(n.stream, 11);
    assert_true(n.has_error);
    assert_string_equal(n.error.code, "EIO");
    assert_non_null(strstr(n.error.msg, "read in.bin"));
    assert_int_equal(agent_read(fx, 100), 0);
}

static void expect_credit(struct fx *fx, uint32_t stream, uint64_t bytes)
{
    uint64_t v;

    assert_int_equal(agent_read(fx, 1000), 1);
    assert_int_equal(fx->m.kind, SBX_MSG_NOTIFY);
    assert_true(sbx_msg_method_is(&fx->m, "stream.credit"));
    assert_int_equal(sbx_param_u64(fx->m.params, "stream", 1, 0, UINT32_MAX, &v, &fx->err), 0);
    assert_int_equal(v, stream);
    assert_int_equal(sbx_param_u64(fx->m.params, "bytes", 1, 0, UINT32_MAX, &v, &fx->err), 0);
    assert_int_equal(v, bytes);
}

/* The agent sends @n bytes on @stream; the client receives them as one data message. */
static void recv_data(struct fx *fx, uint32_t stream, uint32_t n)
{
    uint8_t buf[1000];

    memset(buf, 'd', n);
    agent_data(fx, stream, buf, n);
    assert_int_equal(sbx_client_recv(fx->c, &fx->m, 1000, &fx->err), 1);
    assert_int_equal(fx->m.kind, SBX_MSG_DATA);
    assert_int_equal(fx->m.stream, stream);
    assert_int_equal(fx->m.data_len, n);
}

static void test_consumed_grants(void **state)
{
    struct fx *fx = *state;

    do_hello(fx, 1000, 300);
    spawn(fx, 0, 5, 9);
    agent_expect(fx, "hello");
    agent_expect(fx, "proc.spawn");
    /* Only what arrived can be reported consumed (the core clamps). */
    assert_int_equal(sbx_client_consumed(fx->c, 5, 1000, &fx->err), 0);
    assert_int_equal(agent_read(fx, 50), 0);
    recv_data(fx, 5, 300);
    recv_data(fx, 5, 300);
    assert_int_equal(sbx_client_consumed(fx->c, 5, 400, &fx->err), 0);
    assert_int_equal(agent_read(fx, 50), 0); /* below window/2: nothing yet */
    assert_int_equal(sbx_client_consumed(fx->c, 5, 200, &fx->err), 0);
    expect_credit(fx, 5, 600);
    recv_data(fx, 5, 300);
    recv_data(fx, 5, 200);
    assert_int_equal(sbx_client_consumed(fx->c, 5, 499, &fx->err), 0);
    assert_int_equal(agent_read(fx, 50), 0);
    assert_int_equal(sbx_client_consumed(fx->c, 5, 1, &fx->err), 0);
    expect_credit(fx, 5, 500);

    /* After the stream ended, consumption grants nothing. */
    assert_int_equal(sbx_client_consumed(fx->c, 5, 100, &fx->err), 0);
    agent_notify(fx, "stream.end", 5, -1);
    assert_int_equal(sbx_client_recv(fx->c, &fx->m, 1000, &fx->err), 1);
    assert_int_equal(sbx_client_consumed(fx->c, 5, 1000, &fx->err), 0);
    assert_int_equal(agent_read(fx, 50), 0);

    /* Explicit grant and cancel go out as notifications. */
    assert_int_equal(sbx_client_grant(fx->c, 9, 12345, &fx->err), 0);
    expect_credit(fx, 9, 12345);
    assert_int_equal(sbx_client_stream_cancel(fx->c, 9, &fx->err), 0);
    agent_expect(fx, "stream.cancel");
    assert_int_equal(sbx_client_consumed(fx->c, 9, 1000, &fx->err), 0);
    /* Grants and cancels for streams that are not live are no-ops. */
    assert_int_equal(sbx_client_grant(fx->c, 9, 1, &fx->err), 0);
    assert_int_equal(sbx_client_stream_cancel(fx->c, 9, &fx->err), 0);
    assert_int_equal(sbx_client_grant(fx->c, 42, 1, &fx->err), 0);
    assert_int_equal(agent_read(fx, 50), 0);
}

/* sbx_client_set_recv_window: hello asks it; once echoed, out streams are granted at half of it. */
static void test_recv_window(void **state)
{
    struct fx *fx = *state;
    uint64_t v;

    assert_int_equal(sbx_client_set_recv_window(fx->c, 65535, &fx->err), -1);
    assert_string_equal(fx->err.field, "recv_window");
    assert_int_equal(sbx_client_set_recv_window(fx->c, (1u << 20) + 1, &fx->err), -1);
    assert_int_equal(sbx_client_set_recv_window(fx->c, 65536, &fx->err), 0);
    agent_hello_rw(fx, 1, 1u << 20, 32768, 65536);
    assert_int_equal(sbx_client_hello(fx->c, NULL, &fx->err), 0);
    assert_int_equal(agent_read(fx, 1000), 1);
    assert_true(sbx_msg_method_is(&fx->m, "hello"));
    assert_int_equal(sbx_param_u64(fx->m.params, "recv_window", 1, 0, UINT32_MAX, &v, &fx->err), 0);
    assert_int_equal(v, 65536);
    assert_int_equal(sbx_client_set_recv_window(fx->c, 0, &fx->err), -1); /* after hello */
    spawn(fx, 0, 5, 0);
    agent_expect(fx, "proc.spawn");
    for (int i = 0; i < 32; i++) {
        recv_data(fx, 5, 1000);
    }
    recv_data(fx, 5, 767);
    assert_int_equal(sbx_client_consumed(fx->c, 5, 32767, &fx->err), 0);
    assert_int_equal(agent_read(fx, 50), 0); /* below half of 64 KiB */
    recv_data(fx, 5, 1);
    assert_int_equal(sbx_client_consumed(fx->c, 5, 1, &fx->err), 0);
    expect_credit(fx, 5, 32768);
}

static void test_eof_and_peer_error(void **state)
{
    struct fx *fx = *state;
    msgpack_packer *pk;

    uint32_t id;

    do_hello(fx, 1000, 300);
    spawn(fx, 3, 4, 0);
    pk = sbx_client_begin(fx->c, "ping", &id);
    msgpack_pack_map(pk, 0);
    assert_int_equal(sbx_client_send(fx->c, &fx->err), 0);
    pk = agent_begin(fx);
    sbx_pack_notify_head(pk, "error");
    msgpack_pack_map(pk, 2);
    sbx_pack_kv_str(pk, "code", "BAD_FRAME");
    sbx_pack_kv_str(pk, "message", "zero-length frame");
    agent_flush(fx);
    agent_expect(fx, "hello"); /* nothing unread, so EOF, not a reset */
    agent_expect(fx, "proc.spawn");
    agent_expect(fx, "ping");
    (void)close(fx->afd);
    fx->afd = -1;
    /* The outstanding request fails with the end of the connection, naming the agent's error;
     * the error notification that came before it is still handed out first. */
    assert_int_equal(sbx_client_wait(fx->c, id, &fx->m, 1000, &fx->err), -1);
    assert_string_equal(fx->err.code, "EOF");
    assert_non_null(
        strstr(fx->err.msg, "test: connection closed by the agent after error BAD_FRAME"));
    assert_int_equal(sbx_client_recv(fx->c, &fx->m, 1000, &fx->err), 1);
    assert_true(sbx_msg_method_is(&fx->m, "error"));
    assert_int_equal(sbx_client_recv(fx->c, &fx->m, 1000, &fx->err), -1);
    assert_string_equal(fx->err.code, "EOF");
    assert_non_null(strstr(fx->err.msg, "BAD_FRAME"));
    assert_int_equal(sbx_client_stream_write(fx->c, 3, "x", 1, &fx->err), -1);
    assert_string_equal(fx->err.code, "EOF");
    assert_int_equal(sbx_client_stream_end(fx->c, 3, &fx->err), -1);
    assert_int_equal(sbx_client_consumed(fx->c, 4, 1, &fx->err), -1);
    /* The failure sticks. */
    assert_int_equal(sbx_client_recv(fx->c, &fx->m, 0, &fx->err), -1);
    assert_string_equal(fx->err.code, "EOF");
    assert_int_equal(sbx_client_grant(fx->c, 1, 1, &fx->err), -1);
    assert_int_equal(sbx_client_call0(fx->c, "ping", &fx->m, &fx->err), -1);
}

static void test_write_after_close(void **state)
{
    struct fx *fx = *state;

    do_hello(fx, 1000, 300);
    (void)close(fx->afd);
    fx->afd = -1;
    /* No SIGPIPE (the test would die): a clean EPIPE error instead. */
    assert_int_equal(sbx_client_call0(fx->c, "ping", &fx->m, &fx->err), -1);
    assert_string_equal(fx->err.code, "EPIPE");
    assert_non_null(strstr(fx->err.msg, "connection closed by the agent"));
    assert_int_equal(sbx_client_grant(fx->c, 1, 1, &fx->err), -1);
    assert_string_equal(fx->err.code, "EPIPE");
}

static void test_bad_frames(void **state)
{
    struct fx *fx = *state;
    static const uint8_t zero[] = { 0, 0, 0, 0 };

    do_hello(fx, 1000, 300);
    agent_expect(fx, "hello");
    /* Broken framing is fatal; the agent is told why. */
    agent_write(fx, zero, sizeof(zero));
    assert_int_equal(sbx_client_recv(fx->c, &fx->m, 1000, &fx->err), -1);
    assert_string_equal(fx->err.code, "BAD_FRAME");
    assert_non_null(strstr(fx->err.msg, "test: "));
    assert_int_equal(sbx_client_recv(fx->c, &fx->m, 0, &fx->err), -1);
    assert_string_equal(fx->err.code, "BAD_FRAME");
    agent_expect(fx, "error");
}

static void test_bad_message(void **state)
{
    struct fx *fx = *state;
    static const uint8_t bad_msg[] = { 0, 0, 0, 2, 0xc1, 0xc1 };

    do_hello(fx, 1000, 300);
    agent_expect(fx, "hello");
    /* A bad message inside a good frame: the core is strict, the connection is done. */
    agent_write(fx, bad_msg, sizeof(bad_msg));
    agent_notify(fx, "ok", 1, -1);
    assert_int_equal(sbx_client_recv(fx->c, &fx->m, 1000, &fx->err), -1);
    assert_string_equal(fx->err.code, "BAD_MESSAGE");
    assert_int_equal(sbx_client_recv(fx->c, &fx->m, 1000, &fx->err), -1);
    assert_string_equal(fx->err.code, "BAD_MESSAGE");
    assert_int_equal(sbx_client_call0(fx->c, "ping", &fx->m, &fx->err), -1);
    assert_string_equal(fx->err.code, "BAD_MESSAGE");
    agent_expect(fx, "error");
    assert_int_equal(agent_read(fx, 50), 0);
}

static void test_stream_misuse(void **state)
{
    struct fx *fx = *state;
    uint8_t big[400] = { 0 };
    uint64_t v;

    do_hello(fx, 1000, 300);
    spawn(fx, 0, 5, 6);
    agent_expect(fx, "hello");
    agent_expect(fx, "proc.spawn");
    /* More than chunk_max in one data message (§8.6): the core cancels the stream, and the
     * blocking layer takes it as the protocol violation it is (fatal, as BAD_MESSAGE). */
    agent_data(fx, 5, big, sizeof(big));
    assert_int_equal(sbx_client_recv(fx->c, &fx->m, 1000, &fx->err), -1);
    assert_string_equal(fx->err.code, "STREAM");
    assert_non_null(strstr(fx->err.msg, "test: stream 5"));
    agent_expect(fx, "stream.cancel");
    assert_int_equal(sbx_param_u64(fx->m.params, "stream", 1, 0, UINT32_MAX, &v, &fx->err), 0);
    assert_int_equal(v, 5);
    assert_int_equal(sbx_client_recv(fx->c, &fx->m, 0, &fx->err), -1);
    assert_string_equal(fx->err.code, "STREAM");
    assert_int_equal(sbx_client_consumed(fx->c, 6, 1, &fx->err), -1);
}

static void test_agent_request_and_notify(void **state)
{
    struct fx *fx = *state;
    msgpack_packer *pk;
    struct sbx_err e;
    uint64_t v;

    do_hello(fx, 1000, 300);
    spawn(fx, 3, 0, 0);
    agent_expect(fx, "hello");
    agent_expect(fx, "proc.spawn");
    /* A request from the agent is answered by the core (UNKNOWN_METHOD), never handed out. */
    pk = agent_begin(fx);
    sbx_pack_request_head(pk, 7, "x.ask");
    msgpack_pack_map(pk, 0);
    agent_flush(fx);
    assert_int_equal(sbx_client_recv(fx->c, &fx->m, 50, &fx->err), 0);
    assert_int_equal(agent_read(fx, 1000), 1);
    assert_int_equal(fx->m.kind, SBX_MSG_RESPONSE);
    assert_int_equal(fx->m.id, 7);
    assert_non_null(fx->m.error);
    /* A notification built by the caller (here an aborted upload's end) goes out as packed. */
    pk = sbx_client_begin_notify(fx->c, "stream.end");
    msgpack_pack_map(pk, 2);
    sbx_pack_kv_u64(pk, "stream", 3);
    sbx_pack_cstr(pk, "error");
    sbx_err_set(&e, "EIO", "read failed");
    sbx_pack_err(pk, &e);
    assert_int_equal(sbx_client_send(fx->c, &fx->err), 0);
    agent_expect(fx, "stream.end");
    assert_int_equal(sbx_param_u64(fx->m.params, "stream", 1, 0, UINT32_MAX, &v, &fx->err), 0);
    assert_int_equal(v, 3);
    assert_non_null(sbx_obj_get(fx->m.params, "error"));
}

/* --- bulk: more than a socket buffer ---------------------------------------------------------- */

struct bulk {
    int fd;
    uint8_t *buf;
    size_t len;
};

static void *bulk_writer(void *arg)
{
    struct bulk *b = arg;
    size_t off = 0;

    while (off < b->len) {
        ssize_t w = write(b->fd, b->buf + off, b->len - off);
        if (w <= 0) {
            break;
        }
        off += (size_t)w;
    }
    return NULL;
}

static void *bulk_reader(void *arg)
{
    struct bulk *b = arg;
    size_t off = 0;

    while (off < b->len) {
        ssize_t r = read(b->fd, b->buf + off, b->len - off);
        if (r <= 0) {
            break;
        }
        off += (size_t)r;
    }
    b->len = off;
    return NULL;
}

static void test_bulk_receive(void **state)
{
    struct fx *fx = *state;
    const uint32_t chunk = SBX_STREAM_CHUNK_MAX, nchunks = SBX_STREAM_WINDOW / chunk;
    struct sbx_out o;
    struct bulk b;
    pthread_t t;
    uint32_t id;
    msgpack_packer *pk;

    do_hello(fx, SBX_STREAM_WINDOW, chunk);
    spawn(fx, 0, 2, 0);
    pk = sbx_client_begin(fx->c, "ping", &id);
    msgpack_pack_map(pk, 0);
    assert_int_equal(sbx_client_send(fx->c, &fx->err), 0);

    /* A window of data frames, then the response: all of it has to pass through the FIFO. */
    sbx_out_init(&o);
    for (uint32_t i = 0; i < nchunks; i++) {
        uint8_t hdr[SBX_STREAM_DATA_HDR_MAX];
        size_t h = sbx_data_header(hdr, 2, chunk);
        uint8_t *payload = malloc(chunk);
        assert_non_null(payload);
        memset(payload, 'a' + (int)i, chunk);
        msgpack_sbuffer_write(&o.sb, (const char *)hdr, h);
        msgpack_sbuffer_write(&o.sb, (const char *)payload, chunk);
        free(payload);
    }
    sbx_out_begin(&o);
    sbx_pack_response_head(&o.pk, id);
    msgpack_pack_nil(&o.pk);
    assert_int_equal(sbx_out_end(&o, &fx->err), 0);
    b = (struct bulk){ .fd = fx->afd, .buf = (uint8_t *)o.sb.data, .len = o.sb.size };
    assert_int_equal(pthread_create(&t, NULL, bulk_writer, &b), 0);

    assert_int_equal(sbx_client_wait(fx->c, id, &fx->m, 5000, &fx->err), 0);
    assert_int_equal(fx->m.result->type, MSGPACK_OBJECT_NIL);
    for (uint32_t i = 0; i < nchunks; i++) {
        assert_int_equal(sbx_client_recv(fx->c, &fx->m, 0, &fx->err), 1);
        assert_int_equal(fx->m.kind, SBX_MSG_DATA);
        assert_int_equal(fx->m.data_len, chunk);
        assert_int_equal(fx->m.data[0], 'a' + (int)i);
        assert_int_equal(fx->m.data[chunk - 1], 'a' + (int)i);
    }
    assert_int_equal(sbx_client_recv(fx->c, &fx->m, 0, &fx->err), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    sbx_out_destroy(&o);
}

static void test_bulk_send(void **state)
{
    struct fx *fx = *state;
    const size_t len = SBX_STREAM_WINDOW; /* exactly the initial credit: never blocks on it */
    uint8_t *src = malloc(len);
    struct bulk b;
    pthread_t t;
    size_t off = 0, total = 0, frames = 0;

    assert_non_null(src);
    for (size_t i = 0; i < len; i++) {
        src[i] = (uint8_t)(i % 251);
    }
    do_hello(fx, SBX_STREAM_WINDOW, SBX_STREAM_CHUNK_MAX);
    spawn(fx, 4, 0, 0);
    b = (struct bulk){ .fd = fx->afd, .buf = malloc(len + 4096), .len = len + 4096 };
    assert_non_null(b.buf);
    assert_int_equal(pthread_create(&t, NULL, bulk_reader, &b), 0);
    assert_int_equal(sbx_client_stream_write(fx->c, 4, src, len, &fx->err), 0);
    assert_int_equal(sbx_client_credit(fx->c, 4), 0);
    sbx_client_close(fx->c); /* EOF lets the reader finish */
    fx->c = NULL;
    assert_int_equal(pthread_join(t, NULL), 0);

    /* Parse what arrived: the hello request, then data frames of at most chunk_max. */
    while (off < b.len) {
        size_t used;
        int r = sbx_framer_feed(&fx->fr, b.buf + off, b.len - off, &used, &fx->err);
        assert_true(r >= 0);
        off += used;
        if (r == 1) {
            assert_int_equal(sbx_msg_decode(&fx->dec, fx->fr.buf, fx->fr.len, &fx->m, &fx->err), 0);
            if (fx->m.kind == SBX_MSG_DATA) {
                assert_true(fx->m.data_len <= SBX_STREAM_CHUNK_MAX);
                assert_memory_equal(fx->m.data, src + total, fx->m.data_len);
                total += fx->m.data_len;
                frames++;
            }
        }
    }
    assert_int_equal(total, len);
    assert_int_equal(frames, len / SBX_STREAM_CHUNK_MAX);
    free(b.buf);
    free(src);
}

/* The agent's helper thread: write all of @w, then read until EOF into @r. */
struct duplex {
    struct bulk w, r;
};

static void *duplex_run(void *arg)
{
    struct duplex *d = arg;

    (void)bulk_writer(&d->w);
    (void)bulk_reader(&d->r);
    return NULL;
}

static void test_send_reads_ahead(void **state)
{
    struct fx *fx = *state;
    const uint32_t chunk = SBX_STREAM_CHUNK_MAX, nchunks = 16;
    const size_t big = 3u << 20;
    struct sbx_out o;
    struct duplex d;
    pthread_t t;
    msgpack_packer *pk;
    uint8_t *blob, first[64];
    const uint8_t *first_data;
    uint32_t id, first_len, got = 1;

    do_hello(fx, nchunks * chunk, chunk);
    spawn(fx, 0, 6, 0);
    /* The agent writes 4 MiB of stdout and reads nothing until it is done. */
    sbx_out_init(&o);
    for (uint32_t i = 0; i < nchunks; i++) {
        uint8_t hdr[SBX_STREAM_DATA_HDR_MAX];
        size_t h = sbx_data_header(hdr, 6, chunk);
        uint8_t *payload = malloc(chunk);
        assert_non_null(payload);
        memset(payload, 'A' + (int)i, chunk);
        msgpack_sbuffer_write(&o.sb, (const char *)hdr, h);
        msgpack_sbuffer_write(&o.sb, (const char *)payload, chunk);
        free(payload);
    }
    d.w = (struct bulk){ .fd = fx->afd, .buf = (uint8_t *)o.sb.data, .len = o.sb.size };
    d.r = (struct bulk){ .fd = fx->afd, .buf = malloc(big + 4096), .len = big + 4096 };
    assert_non_null(d.r.buf);
    assert_int_equal(pthread_create(&t, NULL, duplex_run, &d), 0);

    assert_int_equal(sbx_client_recv(fx->c, &fx->m, 5000, &fx->err), 1);
    assert_int_equal(fx->m.kind, SBX_MSG_DATA);
    first_data = fx->m.data;
    first_len = fx->m.data_len;
    memcpy(first, first_data, sizeof(first));
    /* A request larger than both socket buffers: both sides write. Send must read ahead, and the
     * current message must survive it (send is not a receiving call). */
    blob = malloc(big);
    assert_non_null(blob);
    memset(blob, 'z', big);
    pk = sbx_client_begin(fx->c, "x.big", &id);
    msgpack_pack_map(pk, 1);
    sbx_pack_cstr(pk, "blob");
    sbx_pack_bin(pk, blob, big);
    assert_int_equal(sbx_client_send(fx->c, &fx->err), 0);
    assert_int_equal(sbx_client_consumed(fx->c, 6, first_len, &fx->err), 0);
    assert_true(sbx_client_pending(fx->c));
    assert_int_equal(first_len, chunk);
    assert_memory_equal(first_data, first, sizeof(first));
    assert_int_equal(first_data[chunk - 1], 'A');

    while (got < nchunks) {
        assert_int_equal(sbx_client_recv(fx->c, &fx->m, 5000, &fx->err), 1);
        assert_int_equal(fx->m.kind, SBX_MSG_DATA);
        assert_int_equal(fx->m.data_len, chunk);
        assert_int_equal(fx->m.data[0], 'A' + (int)got);
        assert_int_equal(fx->m.data[chunk - 1], 'A' + (int)got);
        got++;
    }
    sbx_client_close(fx->c); /* EOF lets the agent's reader finish */
    fx->c = NULL;
    assert_int_equal(pthread_join(t, NULL), 0);
    /* hello, proc.spawn, the credit grant for the first chunk's half window, x.big: the agent
     * got all of it. */
    assert_true(d.r.len > big);
    free(d.r.buf);
    free(blob);
    sbx_out_destroy(&o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_hello, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hello_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hello_version, setup, teardown),
        cmocka_unit_test_setup_teardown(test_local_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hello_pipelined, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wait_queues_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_response_ahead_of_its_request, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_response, setup, teardown),
        cmocka_unit_test_setup_teardown(test_call0_and_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_write_credit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_response_queued_during_write, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_cancel_and_end, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_abort, setup, teardown),
        cmocka_unit_test_setup_teardown(test_consumed_grants, setup, teardown),
        cmocka_unit_test_setup_teardown(test_recv_window, setup, teardown),
        cmocka_unit_test_setup_teardown(test_eof_and_peer_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_after_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_frames, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_message, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_misuse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_agent_request_and_notify, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bulk_receive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bulk_send, setup, teardown),
        cmocka_unit_test_setup_teardown(test_send_reads_ahead, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
