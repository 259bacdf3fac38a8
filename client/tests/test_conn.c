/*
 * Unit tests of the sans-I/O connection core (sbx/conn.h): every typed response and notification
 * fed split at every offset gives the same events; credit and queueing on `in` streams; grants on
 * `out` streams; hostile input; request ids; local refusals; output stability; EOF. Agent frames
 * are made with the schema's pack functions (the hostile ones by hand); the records themselves
 * are tested in tests/unit/test_schema.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sbx/conn.h"
#include "sbx/frame.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* --- the fake agent: frames built with the schema's pack functions ------------------------- */

static msgpack_packer *ab(struct sbx_out *o)
{
    sbx_out_begin(o);
    return &o->pk;
}

static void ae(struct sbx_out *o)
{
    struct sbx_err e;

    assert_int_equal(sbx_out_end(o, &e), 0);
}

static const char *const all_caps[] = { "session",  "env",  "process", "pty", "fs",
                                        "transfer", "pack", "repl",    NULL };

/* [1, id, nil, hello result] with the given limits and recv_window (0: none). */
static void a_hello_rw(struct sbx_out *o, uint32_t id, uint64_t window, uint64_t chunk,
                       uint64_t frame_max, const char *const *caps, uint64_t recv_window)
{
    struct sbx_hello_result r = { .recv_window = recv_window };
    msgpack_packer *pk = ab(o);

    r.version = 1;
    r.agent = "sbx-agent";
    r.agent_version = "0.1.0";
    r.caps = caps != NULL ? caps : all_caps;
    r.limits.frame_max = frame_max;
    r.limits.chunk_max = chunk;
    r.limits.stream_window = window;
    r.limits.max_streams = 4096;
    r.limits.max_procs = 1024;
    r.limits.max_conns = 64;
    r.conn = 7;
    sbx_pack_response_head(pk, id);
    sbx_hello_result_pack(pk, &r);
    ae(o);
}

static void a_hello(struct sbx_out *o, uint32_t id, uint64_t window, uint64_t chunk,
                    uint64_t frame_max, const char *const *caps)
{
    a_hello_rw(o, id, window, chunk, frame_max, caps, 0);
}

static void a_spawned(struct sbx_out *o, uint32_t id, uint32_t proc, uint32_t in, uint32_t out,
                      uint32_t err)
{
    struct sbx_spawn_result r = { proc, 400 + proc, in, out, err };
    msgpack_packer *pk = ab(o);

    sbx_pack_response_head(pk, id);
    sbx_spawn_result_pack(pk, &r);
    ae(o);
}

static void a_data(struct sbx_out *o, uint32_t stream, const void *p, size_t n)
{
    msgpack_packer *pk = ab(o);

    (void)msgpack_pack_array(pk, 3);
    (void)msgpack_pack_uint8(pk, 3);
    (void)msgpack_pack_uint32(pk, stream);
    sbx_pack_bin(pk, p, n);
    ae(o);
}

static void a_credit(struct sbx_out *o, uint32_t stream, uint32_t bytes)
{
    sbx_credit_pack(ab(o), stream, bytes);
    ae(o);
}

static void a_end(struct sbx_out *o, uint32_t stream, const struct sbx_err *e, bool truncated)
{
    sbx_end_pack(ab(o), stream, e, truncated);
    ae(o);
}

static void a_cancel(struct sbx_out *o, uint32_t stream, const struct sbx_err *e)
{
    sbx_cancel_pack(ab(o), stream, e);
    ae(o);
}

static struct sbx_exit an_exit(uint32_t proc)
{
    struct sbx_exit x = { 0 };

    x.id = proc;
    x.pid = 400 + proc;
    x.exited = true;
    x.code = 3;
    x.duration_ns = 1843211;
    x.drained = true;
    x.stdout_bytes = 3;
    x.maxrss_kb = 1536;
    x.stime_us = 912;
    return x;
}

static void a_exit(struct sbx_out *o, uint32_t proc)
{
    struct sbx_exit x = an_exit(proc);
    msgpack_packer *pk = ab(o);

    sbx_pack_notify_head(pk, SBX_N_PROC_EXIT);
    sbx_exit_pack(pk, &x);
    ae(o);
}

static void a_wait_result(struct sbx_out *o, uint32_t id, uint32_t proc)
{
    struct sbx_exit x = an_exit(proc);
    msgpack_packer *pk = ab(o);

    x.exited = false;
    x.signo = 9;
    sbx_pack_response_head(pk, id);
    sbx_exit_pack(pk, &x);
    ae(o);
}

static void a_fileinfo(struct sbx_out *o, uint32_t id, const char *target)
{
    struct sbx_fileinfo fi = { 0 };
    msgpack_packer *pk = ab(o);

    fi.type = target != NULL ? "symlink" : "file";
    fi.size = 1234;
    fi.mode = 0100644;
    fi.uid = 1000;
    fi.nlink = 1;
    fi.ino = 99;
    fi.mtime_ns = -5;
    fi.has_birthtime = true;
    fi.birthtime_ns = 77;
    fi.target = target;
    fi.target_len = target != NULL ? strlen(target) : 0;
    sbx_pack_response_head(pk, id);
    sbx_fileinfo_pack(pk, &fi);
    ae(o);
}

static void a_stream_result(struct sbx_out *o, uint32_t id, uint32_t stream, bool with_size)
{
    struct sbx_stream_result r = { stream, with_size, 5000, 0100600 };
    msgpack_packer *pk = ab(o);

    sbx_pack_response_head(pk, id);
    sbx_stream_result_pack(pk, &r);
    ae(o);
}

static void a_error_response(struct sbx_out *o, uint32_t id, const char *code, const char *msg)
{
    struct sbx_err e;

    (void)sbx_err_set(&e, code, "%s", msg);
    e.sys_errno = 2;
    (void)snprintf(e.stage, sizeof(e.stage), "exec");
    sbx_pack_error_response(ab(o), id, &e);
    ae(o);
}

static void a_done(struct sbx_out *o, uint32_t stream, const struct sbx_err *e)
{
    struct sbx_transfer_done d = { 0 };

    d.stream = stream;
    d.has_size = true;
    d.size = 5;
    memset(d.sha256, 'a', 64);
    sbx_transfer_done_pack(ab(o), &d, e);
    ae(o);
}

static void a_notify(struct sbx_out *o, const char *method, const char *key, uint64_t v)
{
    msgpack_packer *pk = ab(o);

    sbx_pack_notify_head(pk, method);
    (void)msgpack_pack_map(pk, 1);
    sbx_pack_kv_u64(pk, key, v);
    ae(o);
}

/* A response {ok: true} to @id. */
static void a_ok(struct sbx_out *o, uint32_t id)
{
    msgpack_packer *pk = ab(o);

    sbx_pack_response_head(pk, id);
    (void)msgpack_pack_map(pk, 1);
    sbx_pack_kv_bool(pk, "ok", true);
    ae(o);
}

/* Frame @n raw payload bytes given as hex. */
static void a_raw(struct sbx_out *o, const char *hex)
{
    uint8_t buf[256];
    size_t n = 0;

    for (const char *h = hex; h[0] != '\0'; h++) {
        unsigned v;
        if (h[0] == ' ') {
            continue;
        }
        assert_int_equal(sscanf(h, "%2x", &v), 1);
        buf[n++] = (uint8_t)v;
        h++;
    }
    sbx_out_begin(o);
    assert_int_equal(msgpack_sbuffer_write(&o->sb, (const char *)buf, n), 0);
    ae(o);
}

/* --- client helpers ------------------------------------------------------------------------- */

struct fx {
    struct sbx_conn *c;
    struct sbx_err err;
    struct sbx_out a; /* what the fake agent sends */
    struct sbx_event ev;
};

static int setup(void **state)
{
    struct fx *fx = calloc(1, sizeof(*fx));

    if (fx == NULL) {
        return -1;
    }
    fx->c = sbx_conn_new(&fx->err);
    if (fx->c == NULL) {
        return -1;
    }
    sbx_out_init(&fx->a);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;

    sbx_conn_free(fx->c);
    sbx_out_destroy(&fx->a);
    free(fx);
    return 0;
}

/* Feed everything the fake agent wrote so far. */
static void push(struct fx *fx)
{
    assert_int_equal(sbx_conn_feed(fx->c, fx->a.sb.data, fx->a.sb.size, &fx->err), 0);
    sbx_out_reset(&fx->a);
}

static int next(struct fx *fx)
{
    return sbx_conn_next(fx->c, &fx->ev, &fx->err);
}

static void expect_kind(struct fx *fx, enum sbx_event_kind kind)
{
    int r = next(fx);

    if (r != 1) {
        fail_msg("next returned %d (%s: %s), wanted an event of kind %d", r, fx->err.code,
                 fx->err.msg, kind);
    }
    assert_int_equal(fx->ev.kind, kind);
}

static void expect_quiet(struct fx *fx)
{
    assert_int_equal(next(fx), 0);
}

static void expect_fatal(struct fx *fx, const char *code)
{
    assert_int_equal(next(fx), -1);
    assert_string_equal(fx->err.code, code);
    assert_non_null(sbx_conn_failed(fx->c));
    /* Unusable from now on, and the agent is told. */
    assert_int_equal(next(fx), -1);
    assert_string_equal(fx->err.code, code);
    assert_int_equal(sbx_ping(fx->c, NULL, NULL, &fx->err), -1);
}

/* hello with the given limits, answered; the hello request leaves the output. */
static void do_hello(struct fx *fx, uint64_t window, uint64_t chunk, uint64_t frame_max,
                     const char *const *caps)
{
    uint32_t id;

    assert_int_equal(sbx_conn_hello(fx->c, NULL, NULL, &id, &fx->err), 0);
    sbx_conn_out_done(fx->c, sbx_conn_out_bytes(fx->c));
    a_hello(&fx->a, id, window, chunk, frame_max, caps);
    push(fx);
    expect_kind(fx, SBX_EV_RESPONSE);
    assert_null(fx->ev.error);
    assert_int_equal(fx->ev.rec, SBX_REC_HELLO);
}

/* Take all output and render each frame on a line; data frames as "DATA <sid> <len>". */
static char *out_text(struct sbx_conn *c)
{
    static char text[1 << 16];
    struct sbx_decoder dec;
    struct sbx_framer fr;
    struct sbx_err e;
    size_t len, used = 0;
    const uint8_t *p;

    text[0] = '\0';
    assert_int_equal(sbx_decoder_init(&dec), 0);
    sbx_framer_init(&fr, 0);
    while ((p = sbx_conn_out(c, &len)) != NULL) {
        size_t off = 0;
        while (off < len) {
            size_t k;
            struct sbx_msg m;
            int r = sbx_framer_feed(&fr, p + off, len - off, &k, &e);
            assert_true(r >= 0);
            off += k;
            if (r == 0) {
                continue;
            }
            assert_int_equal(sbx_msg_decode(&dec, fr.buf, fr.len, &m, &e), 0);
            assert_int_equal(sbx_schema_check(fr.buf, fr.len, &e), 0);
            if (m.kind == SBX_MSG_DATA) {
                used += (size_t)snprintf(text + used, sizeof(text) - used, "DATA %u %u\n", m.stream,
                                         m.data_len);
            } else {
                used +=
                    (size_t)msgpack_object_print_buffer(text + used, sizeof(text) - used, m.root);
                used += (size_t)snprintf(text + used, sizeof(text) - used, "\n");
            }
            assert_true(used < sizeof(text) - 1);
        }
        sbx_conn_out_done(c, len);
    }
    assert_true(fr.hdr_have == 0 || (fr.hdr_have == 4 && fr.have == fr.len)); /* whole frames */
    sbx_framer_free(&fr);
    sbx_decoder_destroy(&dec);
    return text;
}

/* Count occurrences of @needle in @hay. */
static int count(const char *hay, const char *needle)
{
    int n = 0;

    for (const char *p = strstr(hay, needle); p != NULL; p = strstr(p + 1, needle)) {
        n++;
    }
    return n;
}

/* --- the split test: one script of every typed frame, any split, the same events ------------ */

/*
 * The client of the script reacts to events, so its request ids depend only on the events:
 * hello is 1; its response triggers the calls 2..10 below; each DATA is consumed at once.
 */
static void script_client_calls(struct sbx_conn *c)
{
    static const char *const argv[] = { "echo", "hi", NULL };
    struct sbx_spawn_params sp = { 0 };
    struct sbx_upload_params up = { 0 };
    struct sbx_err e;
    msgpack_packer *pk;

    sp.argv = argv;
    sp.stdin_mode = SBX_STDIO_PIPE;
    up.path = "/tmp/f";
    assert_int_equal(sbx_proc_spawn(c, &sp, (void *)2, NULL, &e), 0);                      /* 2 */
    assert_int_equal(sbx_proc_wait(c, 1, 0, (void *)3, NULL, &e), 0);                      /* 3 */
    assert_int_equal(sbx_fs_stat(c, "/etc/passwd", NULL, (void *)4, NULL, &e), 0);         /* 4 */
    assert_int_equal(sbx_transfer_upload(c, &up, (void *)5, NULL, &e), 0);                 /* 5 */
    assert_int_equal(sbx_transfer_download(c, "/f", 0, -1, NULL, (void *)6, NULL, &e), 0); /* 6 */
    pk = sbx_conn_begin(c, "x.custom", (void *)7, NULL, &e);                               /* 7 */
    assert_non_null(pk);
    (void)msgpack_pack_nil(pk);
    assert_int_equal(sbx_conn_commit(c, &e), 0);
    assert_int_equal(sbx_fs_lstat(c, "/l", "/", (void *)8, NULL, &e), 0);             /* 8 */
    assert_int_equal(sbx_repl_eval(c, 1, "1+1", 3, 0, true, (void *)9, NULL, &e), 0); /* 9 */
    assert_int_equal(sbx_transfer_upload_tree(c, "/d", NULL, false, NULL, (void *)10, NULL, &e),
                     0);                                             /* 10 */
    pk = sbx_conn_begin(c, SBX_M_PACK_CREATE, (void *)11, NULL, &e); /* 11 */
    assert_non_null(pk);
    (void)msgpack_pack_map(pk, 2);
    sbx_pack_kv_str(pk, "path", "/p");
    sbx_pack_kv_str(pk, "format", "tar.gz");
    assert_int_equal(sbx_conn_commit(c, &e), 0);
}

/* Everything the agent sends in the script. */
static void script_agent(struct sbx_out *o)
{
    struct sbx_err e;
    msgpack_packer *pk;

    (void)sbx_err_set(&e, "EIO", "read failed");
    a_hello(o, 1, 1000, 300, 1 << 20, NULL);
    a_spawned(o, 2, 1, 1, 2, 3); /* stdin 1, stdout 2, stderr 3 */
    a_data(o, 2, "hi\n", 3);
    a_data(o, 99, "zz", 2); /* unknown stream: dropped */
    a_credit(o, 1, 100);
    a_credit(o, 1, 0); /* a grant of 0: ignored */
    a_end(o, 2, &e, true);
    a_data(o, 2, "late", 4); /* finished stream: dropped */
    a_cancel(o, 3, &e);
    a_end(o, 1, NULL, false); /* end from the wrong side: ignored */
    a_exit(o, 1);
    a_wait_result(o, 3, 1);
    a_fileinfo(o, 4, NULL);
    a_stream_result(o, 5, 4, false); /* upload: in stream 4 */
    a_stream_result(o, 6, 5, true);  /* download: out stream 5 */
    a_data(o, 5, "abcde", 5);
    a_end(o, 5, NULL, false);
    a_done(o, 4, NULL);
    a_ok(o, 7);
    a_fileinfo(o, 8, "target");
    pk = ab(o); /* repl.eval stream: true */
    sbx_pack_response_head(pk, 9);
    (void)msgpack_pack_map(pk, 3);
    sbx_pack_kv_u64(pk, "eval", 1);
    sbx_pack_kv_u64(pk, "stdout", 6);
    sbx_pack_kv_u64(pk, "stderr", 7);
    ae(o);
    a_data(o, 7, "err", 3);
    pk = ab(o); /* pack.create: build streams 8 and 9, archive 10 */
    sbx_pack_response_head(pk, 11);
    (void)msgpack_pack_map(pk, 4);
    sbx_pack_kv_u64(pk, "id", 1);
    sbx_pack_kv_u64(pk, "build_stdout", 8);
    sbx_pack_kv_u64(pk, "build_stderr", 9);
    sbx_pack_kv_u64(pk, "archive", 10);
    ae(o);
    a_data(o, 10, "tar", 3);
    a_notify(o, SBX_N_PACK_PROGRESS, "id", 1);
    a_end(o, 10, NULL, false);
    a_error_response(o, 10, "ENOENT", "no such dir");
    a_done(o, 4, &e); /* failure variant (stream already gone) */
    a_notify(o, SBX_N_FS_EVENT, "watch", 1);
    a_notify(o, "x.future", "n", 5);         /* unknown notification: passed on */
    a_ok(o, 999);                            /* unknown id */
    sbx_pack_error_response(ab(o), 998, &e); /* unknown id, failure */
    ae(o);
    pk = ab(o); /* error notification */
    sbx_pack_notify_head(pk, SBX_N_ERROR);
    sbx_pack_err(pk, &e);
    ae(o);
    a_raw(o, "94 00 05 a1 78 80"); /* a request from the agent: answered, no event */
}

/* One line describing @ev, everything a caller could look at. */
static size_t describe(const struct sbx_event *ev, char *buf, size_t cap)
{
    size_t n = 0;

#define P(...) n += (size_t)snprintf(buf + n, cap - n, __VA_ARGS__)
    P("k=%d call=%d m=%s id=%u user=%p unk=%d loc=%d s=%u su=%p rec=%d", ev->kind, ev->call,
      ev->method != NULL ? ev->method : "-", ev->id, ev->user, ev->unknown, ev->local, ev->stream,
      ev->stream_user, ev->rec);
    if (ev->error != NULL) {
        P(" err=%s/%s/%s/%d", ev->error->code, ev->error->msg, ev->error->stage,
          ev->error->sys_errno);
    }
    if (ev->result != NULL) {
        P(" res=");
        n += (size_t)msgpack_object_print_buffer(buf + n, cap - n, *ev->result);
    }
    if (ev->kind == SBX_EV_DATA) {
        P(" data=%.*s", (int)ev->len, (const char *)ev->data);
    }
    if (ev->kind == SBX_EV_END) {
        P(" trunc=%d", ev->truncated);
    }
    if (ev->kind == SBX_EV_CREDIT) {
        P(" credit=%llu queued=%zu", (unsigned long long)ev->credit, ev->queued);
    }
    if (ev->done != NULL) {
        P(" done=%u/%d/%llu/%s/%s", ev->done->stream, ev->done->failed,
          (unsigned long long)ev->done->size, ev->done->sha256,
          ev->done->failed ? ev->done->error.code : "-");
    }
    switch (ev->rec) {
    case SBX_REC_HELLO:
        P(" v=%llu win=%llu chunk=%llu conn=%llu agent=%.*s",
          (unsigned long long)ev->r.hello.version,
          (unsigned long long)ev->r.hello.limits.stream_window,
          (unsigned long long)ev->r.hello.limits.chunk_max, (unsigned long long)ev->r.hello.conn,
          (int)ev->r.hello.agent_len, ev->r.hello.agent);
        break;
    case SBX_REC_SPAWN:
        P(" proc=%u pid=%u in=%u out=%u err=%u", ev->r.spawn.id, ev->r.spawn.pid, ev->r.spawn.in,
          ev->r.spawn.out, ev->r.spawn.err);
        break;
    case SBX_REC_EXIT:
        P(" exit=%u/%u/%d/%d/%d/%llu", ev->r.exit.id, ev->r.exit.pid, ev->r.exit.exited,
          ev->r.exit.code, ev->r.exit.signo, (unsigned long long)ev->r.exit.duration_ns);
        break;
    case SBX_REC_FILEINFO:
        P(" fi=%s/%llu/%llo/%lld/%.*s", ev->r.fileinfo.type,
          (unsigned long long)ev->r.fileinfo.size, (unsigned long long)ev->r.fileinfo.mode,
          (long long)ev->r.fileinfo.birthtime_ns, (int)ev->r.fileinfo.target_len,
          ev->r.fileinfo.target != NULL ? ev->r.fileinfo.target : "");
        break;
    case SBX_REC_STREAM:
        P(" st=%u/%d/%llu/%llo", ev->r.stream.stream, ev->r.stream.has_size,
          (unsigned long long)ev->r.stream.size, (unsigned long long)ev->r.stream.mode);
        break;
    case SBX_REC_PACK:
        P(" pack=%u/%u/%u/%u", ev->r.pack.id, ev->r.pack.build_out, ev->r.pack.build_err,
          ev->r.pack.archive);
        break;
    case SBX_REC_EVAL:
        P(" eval=%u/%u/%u", ev->r.eval.eval, ev->r.eval.out, ev->r.eval.err);
        break;
    default:
        break;
    }
    P("\n");
#undef P
    return n;
}

struct run {
    char *log; /* events, then the output, as text */
    size_t used, cap;
};

static void run_add(struct run *r, const char *s, size_t n)
{
    if (r->used + n + 1 > r->cap) {
        r->cap = (r->used + n + 1) * 2;
        r->log = realloc(r->log, r->cap);
        assert_non_null(r->log);
    }
    memcpy(r->log + r->used, s, n);
    r->used += n;
    r->log[r->used] = '\0';
}

/* Take every event now available, reacting as the script client does. */
static void run_drain(struct sbx_conn *c, struct run *r)
{
    struct sbx_event ev;
    struct sbx_err e;
    char line[4096];
    int rc;

    while ((rc = sbx_conn_next(c, &ev, &e)) == 1) {
        run_add(r, line, describe(&ev, line, sizeof(line)));
        if (ev.kind == SBX_EV_RESPONSE && ev.call == SBX_CALL_HELLO) {
            script_client_calls(c);
        }
        if (ev.kind == SBX_EV_DATA) {
            assert_int_equal(sbx_conn_consumed(c, ev.stream, ev.len, &e), 0);
        }
    }
    if (rc != 0) {
        fail_msg("next: %s: %s", e.code, e.msg);
    }
}

/*
 * Run the script with the input cut into pieces: @cuts[0..ncuts) are offsets where a new feed
 * starts; @step > 0 cuts every @step bytes instead; @zero_copy uses sbx_conn_feed_space.
 */
static void run_script(const uint8_t *in, size_t len, const size_t *cuts, size_t ncuts, size_t step,
                       bool zero_copy, struct run *r)
{
    struct sbx_err e;
    struct sbx_conn *c = sbx_conn_new(&e);
    size_t off = 0, k = 0;

    assert_non_null(c);
    assert_int_equal(sbx_conn_hello(c, NULL, (void *)1, NULL, &e), 0);
    while (off < len) {
        size_t end = step > 0 ? off + step : (k < ncuts ? cuts[k++] : len);
        if (end > len) {
            end = len;
        }
        if (zero_copy) {
            while (off < end) {
                size_t room, n;
                uint8_t *p = sbx_conn_feed_space(c, &room);
                assert_non_null(p);
                n = end - off < room ? end - off : room;
                memcpy(p, in + off, n);
                sbx_conn_feed_commit(c, n);
                off += n;
            }
        } else {
            assert_int_equal(sbx_conn_feed(c, in + off, end - off, &e), 0);
            off = end;
        }
        run_drain(c, r);
    }
    {
        const char *t = out_text(c);
        run_add(r, "--- out\n", 8);
        run_add(r, t, strlen(t));
    }
    sbx_conn_free(c);
}

static void test_split_every_offset(void **state)
{
    struct fx *fx = *state;
    struct run whole = { 0 }, r = { 0 };
    const uint8_t *in;
    size_t len;

    script_agent(&fx->a);
    in = (const uint8_t *)fx->a.sb.data;
    len = fx->a.sb.size;
    run_script(in, len, NULL, 0, 0, false, &whole);
    print_message("script: %zu bytes of agent frames, split at every offset\n", len);

    /* Spot checks of the reference run; the splits must reproduce it byte for byte. */
    assert_int_equal(count(whole.log, "k=1 call="), 11 + 2); /* responses, 2 to unknown ids */
    assert_non_null(strstr(whole.log, " v=1 win=1000 chunk=300 conn=7 agent=sbx-agent"));
    assert_non_null(strstr(whole.log, "proc=1 pid=401 in=1 out=2 err=3"));
    assert_non_null(strstr(whole.log, "k=2 call=0 m=- id=0 user=(nil) unk=0 loc=0 s=2"));
    assert_non_null(strstr(whole.log, "data=hi\n"));
    assert_non_null(strstr(whole.log, "credit=1100 queued=0"));
    assert_non_null(strstr(whole.log, "err=EIO/read failed//0"));
    assert_int_equal(count(whole.log, " trunc=1"), 1);
    assert_non_null(strstr(whole.log, "exit=1/401/1/3/0/1843211"));
    assert_non_null(strstr(whole.log, "exit=1/401/0/0/9/1843211"));
    assert_non_null(strstr(whole.log, "fi=file/1234/100644/77/"));
    assert_non_null(strstr(whole.log, "fi=symlink/1234/100644/77/target"));
    assert_non_null(strstr(whole.log, "st=4/0/0/0"));
    assert_non_null(strstr(whole.log, "st=5/1/5000/100600"));
    assert_non_null(strstr(whole.log, "data=abcde"));
    assert_non_null(strstr(whole.log, "done=4/0/5/aaaa"));
    assert_non_null(strstr(whole.log, "done=4/1/0//EIO"));
    assert_non_null(strstr(whole.log, "m=x.custom id=7 user=0x7"));
    assert_non_null(strstr(whole.log, "eval=1/6/7"));
    assert_non_null(strstr(whole.log, "pack=1/8/9/10"));
    assert_non_null(strstr(whole.log, "s=10 su=(nil) rec=0 data=tar"));
    assert_non_null(strstr(whole.log, "m=pack.progress"));
    assert_non_null(strstr(whole.log, "s=7 su=(nil) rec=0 data=err"));
    assert_non_null(strstr(whole.log, "err=ENOENT/no such dir/exec/2"));
    assert_non_null(strstr(whole.log, "m=fs.event"));
    assert_non_null(strstr(whole.log, "m=x.future"));
    assert_non_null(strstr(whole.log, "id=999 user=(nil) unk=1"));
    assert_non_null(strstr(whole.log, "id=998 user=(nil) unk=1"));
    assert_non_null(strstr(whole.log, "k=8 call=0 m=error"));
    assert_int_equal(count(whole.log, "data=zz"), 0);
    assert_int_equal(count(whole.log, "data=late"), 0);
    /* Output: the requests, the answer to the agent's request; no credit yet (3 + 5 + 3 bytes
     * consumed of a 1000-byte window). */
    assert_non_null(strstr(whole.log, "[1, 5, {\"code\"=>\"UNKNOWN_METHOD\""));
    assert_int_equal(count(whole.log, "stream.credit"), 0);

    /* One byte at a time, through both input paths. */
    run_script(in, len, NULL, 0, 1, false, &r);
    assert_string_equal(r.log, whole.log);
    r.used = 0;
    run_script(in, len, NULL, 0, 1, true, &r);
    assert_string_equal(r.log, whole.log);
    r.used = 0;
    run_script(in, len, NULL, 0, 7, true, &r);
    assert_string_equal(r.log, whole.log);
    /* Two pieces, cut at every offset. */
    for (size_t k = 1; k < len; k++) {
        r.used = 0;
        run_script(in, len, &k, 1, 0, (k & 1) != 0, &r);
        if (strcmp(r.log, whole.log) != 0) {
            fail_msg("cut at %zu of %zu:\n%s\n--- wanted\n%s", k, len, r.log, whole.log);
        }
    }
    free(whole.log);
    free(r.log);
}

/* --- credit on `in` streams ------------------------------------------------------------------ */

static void spawn_with_stdin(struct fx *fx, uint32_t in, uint32_t out)
{
    static const char *const argv[] = { "cat", NULL };
    struct sbx_spawn_params sp = { 0 };
    uint32_t id;

    sp.argv = argv;
    sp.stdin_mode = SBX_STDIO_PIPE;
    assert_int_equal(sbx_proc_spawn(fx->c, &sp, NULL, &id, &fx->err), 0);
    (void)out_text(fx->c);
    a_spawned(&fx->a, id, 1, in, out, 0);
    push(fx);
    expect_kind(fx, SBX_EV_RESPONSE);
    assert_int_equal(fx->ev.r.spawn.in, in);
}

/* sbx_conn_write_direct: the caller writes the frame; the core only counts the credit, and only
 * when nothing is ahead of it (output or queued bytes) and the length fits credit and chunk_max. */
static void test_write_direct(void **state)
{
    struct fx *fx = *state;
    uint8_t hdr[SBX_STREAM_DATA_HDR_MAX];
    uint8_t buf[400];

    memset(buf, 'y', sizeof(buf));
    do_hello(fx, 1000, 300, 1 << 20, NULL);
    spawn_with_stdin(fx, 1, 2);
    (void)out_text(fx->c); /* drop the requests already written */
    assert_int_equal(sbx_conn_write_direct(fx->c, 1, 301, hdr, &fx->err), 0); /* > chunk_max */
    assert_int_equal(sbx_conn_write_direct(fx->c, 1, 0, hdr, &fx->err), 0);
    assert_int_equal(sbx_conn_write_direct(fx->c, 1, 300, hdr, &fx->err), 10);
    /* [3, 1, bin16 300]: 00 00 01 32 (6 + 300 bytes), then 93 03 01 c5 01 2c */
    assert_int_equal(hdr[2], 1);
    assert_int_equal(hdr[3], 6 + 300 - 256);
    assert_int_equal(hdr[4], 0x93);
    assert_int_equal(hdr[7], 0xc5);
    assert_int_equal(sbx_conn_credit(fx->c, 1), 700);
    assert_int_equal(sbx_conn_out_bytes(fx->c), 0); /* the caller writes it, not the core */
    /* Output waiting ahead: not now. */
    assert_int_equal(sbx_conn_write(fx->c, 1, buf, sizeof(buf), &fx->err), 0);
    assert_true(sbx_conn_out_bytes(fx->c) > 0);
    assert_int_equal(sbx_conn_write_direct(fx->c, 1, 100, hdr, &fx->err), 0);
    (void)out_text(fx->c);
    /* Beyond the credit left (300): not now; a stream that is no in stream: STREAM. */
    assert_int_equal(sbx_conn_write_direct(fx->c, 1, 301, hdr, &fx->err), 0);
    assert_int_equal(sbx_conn_write_direct(fx->c, 2, 10, hdr, &fx->err), -1);
    assert_string_equal(fx->err.code, SBX_E_STREAM);
}

static void test_credit_queues(void **state)
{
    struct fx *fx = *state;
    uint8_t buf[2500];
    const char *t;

    memset(buf, 'x', sizeof(buf));
    do_hello(fx, 1000, 300, 1 << 20, NULL);
    spawn_with_stdin(fx, 1, 2);
    assert_int_equal(sbx_conn_credit(fx->c, 1), 1000);

    /* 2500 bytes against 1000 of credit: 300+300+300+100 go out, 1500 stay queued. */
    assert_int_equal(sbx_conn_write(fx->c, 1, buf, sizeof(buf), &fx->err), 0);
    assert_int_equal(sbx_conn_queued(fx->c, 1), 1500);
    assert_int_equal(sbx_conn_credit(fx->c, 1), 0);
    t = out_text(fx->c);
    assert_string_equal(t, "DATA 1 300\nDATA 1 300\nDATA 1 300\nDATA 1 100\n");

    /* End requested: nothing goes out before the queue is empty; no more writes. */
    assert_int_equal(sbx_conn_end(fx->c, 1, NULL, &fx->err), 0);
    assert_string_equal(out_text(fx->c), "");
    assert_int_equal(sbx_conn_write(fx->c, 1, buf, 1, &fx->err), -1);
    assert_string_equal(fx->err.code, SBX_E_STREAM);
    assert_int_equal(sbx_conn_end(fx->c, 1, NULL, &fx->err), -1);

    /* Credit arrives in two grants: the queue drains, then stream.end follows its data. */
    a_credit(&fx->a, 1, 700);
    push(fx);
    expect_kind(fx, SBX_EV_CREDIT);
    assert_int_equal(fx->ev.stream, 1);
    assert_int_equal(fx->ev.credit, 0);
    assert_int_equal(fx->ev.queued, 800);
    assert_string_equal(out_text(fx->c), "DATA 1 300\nDATA 1 300\nDATA 1 100\n");
    a_credit(&fx->a, 1, 5000);
    push(fx);
    expect_kind(fx, SBX_EV_CREDIT);
    assert_int_equal(fx->ev.queued, 0);
    assert_false(sbx_conn_stream_live(fx->c, 1));
    assert_string_equal(
        out_text(fx->c),
        "DATA 1 300\nDATA 1 300\nDATA 1 200\n[2, \"stream.end\", {\"stream\"=>1}]\n");
    /* Credit for the finished stream: ignored. */
    a_credit(&fx->a, 1, 10);
    push(fx);
    expect_quiet(fx);
}

static void test_queue_caps(void **state)
{
    struct fx *fx = *state;
    uint8_t *big = calloc(1, SBX_CONN_QUEUE_MAX + 1);
    size_t total = 0;

    assert_non_null(big);
    do_hello(fx, 1000, 300, 1 << 20, NULL);
    spawn_with_stdin(fx, 1, 2);
    /* 1000 go out at once, the rest may fill the queue to its cap exactly. */
    assert_int_equal(sbx_conn_write(fx->c, 1, big, SBX_CONN_QUEUE_MAX + 1000, &fx->err), -1);
    assert_string_equal(fx->err.code, SBX_E_LIMIT);
    assert_string_equal(fx->err.limit, "stream_queue");
    assert_int_equal(sbx_conn_queued(fx->c, 1), 0);
    assert_int_equal(sbx_conn_out_bytes(fx->c), 0); /* all or nothing */
    assert_int_equal(sbx_conn_write(fx->c, 1, big, SBX_CONN_QUEUE_MAX, &fx->err), 0);
    total = sbx_conn_queued(fx->c, 1);
    assert_int_equal(total, SBX_CONN_QUEUE_MAX - 1000);
    assert_int_equal(sbx_conn_write(fx->c, 1, big, 1001, &fx->err), -1);
    assert_string_equal(fx->err.limit, "stream_queue");
    assert_int_equal(sbx_conn_write(fx->c, 1, big, 1000, &fx->err), 0);
    /* Writes on streams that are not open `in` streams. */
    assert_int_equal(sbx_conn_write(fx->c, 2, big, 1, &fx->err), -1);
    assert_string_equal(fx->err.code, SBX_E_STREAM);
    assert_int_equal(sbx_conn_write(fx->c, 77, big, 1, &fx->err), -1);
    /* Cancel drops the queue and tells the agent; a second cancel is a no-op. */
    assert_int_equal(sbx_conn_cancel(fx->c, 1, &fx->err), 0);
    assert_int_equal(sbx_conn_queued(fx->c, 1), 0);
    assert_int_equal(sbx_conn_cancel(fx->c, 1, &fx->err), 0);
    assert_int_equal(count(out_text(fx->c), "stream.cancel"), 1);
    free(big);
}

/* Output room: queued data waits for sbx_conn_out_done, not only for credit. */
static void test_output_room(void **state)
{
    struct fx *fx = *state;
    size_t n = 3u << 20, sent = 0;
    uint8_t *big = malloc(n);

    assert_non_null(big);
    memset(big, 'y', n);
    do_hello(fx, 8u << 20, SBX_STREAM_CHUNK_MAX, SBX_FRAME_MAX, NULL);
    spawn_with_stdin(fx, 1, 2);
    assert_int_equal(sbx_conn_write(fx->c, 1, big, n, &fx->err), 0);
    assert_true(sbx_conn_out_bytes(fx->c) < SBX_CONN_OUT_DATA_MAX + SBX_STREAM_CHUNK_MAX + 64);
    assert_true(sbx_conn_queued(fx->c, 1) > 0);
    for (int i = 0; i < 100 && sbx_conn_out_bytes(fx->c) > 0; i++) {
        size_t len;
        const uint8_t *p = sbx_conn_out(fx->c, &len);
        assert_non_null(p);
        sent += len;
        sbx_conn_out_done(fx->c, len);
    }
    assert_int_equal(sbx_conn_queued(fx->c, 1), 0);
    /* Frames: n payload bytes in 12 chunks, each with a 12-byte header (prefix, 93 03 01, bin32).
     */
    assert_int_equal(sent, n + 12 * 12);
    free(big);
}

/* Several `in` streams wait for output room; out_done pumps them all and sends their ends. */
static void test_pump_all(void **state)
{
    struct fx *fx = *state;
    size_t n = 2u << 20;
    uint8_t *big = calloc(1, n);
    uint32_t in[6];
    const char *t;

    assert_non_null(big);
    do_hello(fx, 8u << 20, SBX_STREAM_CHUNK_MAX, SBX_FRAME_MAX, NULL);
    for (uint32_t i = 0; i < 6; i++) {
        in[i] = 10 + 2 * i;
        spawn_with_stdin(fx, in[i], in[i] + 1);
    }
    /* The first write fills the output past SBX_CONN_OUT_DATA_MAX: the rest queue whole. */
    for (uint32_t i = 0; i < 6; i++) {
        assert_int_equal(sbx_conn_write(fx->c, in[i], big, i == 0 ? n : 1000 + i, &fx->err), 0);
        assert_int_equal(sbx_conn_end(fx->c, in[i], NULL, &fx->err), 0);
    }
    assert_true(sbx_conn_queued(fx->c, in[0]) > 0);
    for (uint32_t i = 1; i < 6; i++) {
        assert_int_equal(sbx_conn_queued(fx->c, in[i]), 1000 + i);
        assert_true(sbx_conn_stream_live(fx->c, in[i]));
    }
    t = out_text(fx->c); /* takes everything: each out_done pumps more */
    assert_int_equal(count(t, "stream.end"), 6);
    assert_int_equal(count(t, "DATA 10 262144"), 8);
    for (uint32_t i = 0; i < 6; i++) {
        assert_false(sbx_conn_stream_live(fx->c, in[i]));
    }
    free(big);
}

/* --- grants on `out` streams ----------------------------------------------------------------- */

static void test_grants(void **state)
{
    struct fx *fx = *state;
    uint8_t buf[1200];

    memset(buf, 'z', sizeof(buf));
    do_hello(fx, 1000, 2000, 1 << 20, NULL);
    spawn_with_stdin(fx, 1, 2);
    a_data(&fx->a, 2, buf, 499);
    push(fx);
    expect_kind(fx, SBX_EV_DATA);
    assert_int_equal(sbx_conn_consumed(fx->c, 2, 499, &fx->err), 0);
    assert_string_equal(out_text(fx->c), ""); /* below half a window */
    a_data(&fx->a, 2, buf, 1);
    push(fx);
    expect_kind(fx, SBX_EV_DATA);
    /* More than was received is clamped to what was received. */
    assert_int_equal(sbx_conn_consumed(fx->c, 2, 100, &fx->err), 0);
    assert_string_equal(out_text(fx->c),
                        "[2, \"stream.credit\", {\"stream\"=>2, \"bytes\"=>500}]\n");
    /* The agent now holds 1000 again: 1000 pass, 1 more is beyond credit. */
    a_data(&fx->a, 2, buf, 1000);
    a_data(&fx->a, 2, buf, 1);
    push(fx);
    expect_kind(fx, SBX_EV_DATA);
    expect_kind(fx, SBX_EV_CANCEL);
    assert_true(fx->ev.local);
    assert_string_equal(fx->ev.error->code, SBX_E_STREAM);
    assert_false(sbx_conn_stream_live(fx->c, 2));
    assert_int_equal(count(out_text(fx->c), "stream.cancel\", {\"stream\"=>2, \"error\"=>"), 1);
    /* §8.5: whatever still arrives for it is dropped silently. */
    a_data(&fx->a, 2, buf, 10);
    a_end(&fx->a, 2, NULL, false);
    push(fx);
    expect_quiet(fx);
    assert_int_equal(sbx_conn_consumed(fx->c, 2, 10, &fx->err), 0);
    assert_string_equal(out_text(fx->c), "");
    /* Data on an `in` stream is misuse too; an extra grant is clamped below 2^32. */
    a_data(&fx->a, 1, buf, 5);
    push(fx);
    expect_kind(fx, SBX_EV_CANCEL);
    assert_int_equal(fx->ev.stream, 1);
    (void)out_text(fx->c);
}

/* hello recv_window: out streams start with it (the agent's data beyond it is misuse) and are
 * granted at half of it; in streams keep stream_window. */
static void test_recv_window(void **state)
{
    struct fx *fx = *state;
    struct sbx_hello h = { .version = 1, .min_version = 1, .recv_window = 65536 };
    static uint8_t buf[65536], big[131072];
    uint32_t id;

    memset(buf, 'w', sizeof(buf));
    memset(big, 'w', sizeof(big));
    assert_int_equal(sbx_conn_hello(fx->c, &h, NULL, &id, &fx->err), 0);
    assert_non_null(strstr(out_text(fx->c), "\"recv_window\"=>65536"));
    a_hello_rw(&fx->a, id, 1 << 20, 131072, 1 << 20, NULL, 65536);
    push(fx);
    expect_kind(fx, SBX_EV_RESPONSE);
    assert_null(fx->ev.error);
    spawn_with_stdin(fx, 1, 2);
    a_data(&fx->a, 2, buf, 32767);
    push(fx);
    expect_kind(fx, SBX_EV_DATA);
    assert_int_equal(sbx_conn_consumed(fx->c, 2, 32767, &fx->err), 0);
    assert_string_equal(out_text(fx->c), ""); /* below half of recv_window */
    a_data(&fx->a, 2, buf, 1);
    push(fx);
    expect_kind(fx, SBX_EV_DATA);
    assert_int_equal(sbx_conn_consumed(fx->c, 2, 1, &fx->err), 0);
    assert_string_equal(out_text(fx->c),
                        "[2, \"stream.credit\", {\"stream\"=>2, \"bytes\"=>32768}]\n");
    /* The agent holds 65536 again: that passes, one byte more is beyond credit. */
    a_data(&fx->a, 2, buf, 65536);
    a_data(&fx->a, 2, buf, 1);
    push(fx);
    expect_kind(fx, SBX_EV_DATA);
    expect_kind(fx, SBX_EV_CANCEL);
    assert_string_equal(fx->ev.error->code, SBX_E_STREAM);
    (void)out_text(fx->c);
    /* stdin keeps the agent's stream_window: 128 KiB (chunk_max) go out in one message. */
    assert_int_equal(sbx_conn_write(fx->c, 1, big, sizeof(big), &fx->err), 0);
    assert_string_equal(out_text(fx->c), "DATA 1 131072\n");
}

/* A recv_window the agent echoes other than asked, or unasked, breaks the connection. */
static void test_recv_window_echo(void **state)
{
    struct fx *fx = *state;
    struct sbx_hello h = { .version = 1, .min_version = 1, .recv_window = 65536 };
    uint32_t id;

    assert_int_equal(sbx_conn_hello(fx->c, &h, NULL, &id, &fx->err), 0);
    a_hello_rw(&fx->a, id, 1 << 20, 8192, 1 << 20, NULL, 131072);
    push(fx);
    expect_fatal(fx, SBX_E_BAD_MESSAGE);
    assert_non_null(strstr(fx->err.msg, "recv_window 131072 is not the 65536 asked for"));
    sbx_conn_free(fx->c);
    fx->c = sbx_conn_new(&fx->err);
    assert_non_null(fx->c);
    h.recv_window = 0;
    assert_int_equal(sbx_conn_hello(fx->c, &h, NULL, &id, &fx->err), 0);
    a_hello_rw(&fx->a, id, 1 << 20, 8192, 1 << 20, NULL, 65536);
    push(fx);
    expect_fatal(fx, SBX_E_BAD_MESSAGE);
}

/* A typed hello refused (BAD_PARAM), then a hello the caller packs itself that asks another
 * recv_window: the agent echoes what this hello asked, and the connection takes it. */
static void test_recv_window_raw_after_typed(void **state)
{
    struct fx *fx = *state;
    struct sbx_hello h = { .version = 1, .min_version = 1, .recv_window = 131072 };
    msgpack_packer *pk;
    uint32_t id;

    assert_int_equal(sbx_conn_hello(fx->c, &h, NULL, &id, &fx->err), 0);
    a_error_response(&fx->a, id, "BAD_PARAM", "recv_window");
    push(fx);
    expect_kind(fx, SBX_EV_RESPONSE);
    assert_non_null(fx->ev.error);
    (void)out_text(fx->c);
    pk = sbx_conn_begin(fx->c, "hello", NULL, &id, &fx->err);
    assert_non_null(pk);
    msgpack_pack_map(pk, 2);
    sbx_pack_kv_u64(pk, "version", 1);
    sbx_pack_kv_u64(pk, "recv_window", 65536);
    assert_int_equal(sbx_conn_commit(fx->c, &fx->err), 0);
    a_hello_rw(&fx->a, id, 1 << 20, 8192, 1 << 20, NULL, 65536);
    push(fx);
    expect_kind(fx, SBX_EV_RESPONSE);
    assert_null(fx->ev.error);
}

static void test_grant_bounds(void **state)
{
    struct fx *fx = *state;

    do_hello(fx, 1000, 300, 1 << 20, NULL);
    spawn_with_stdin(fx, 1, 2);
    assert_int_equal(sbx_conn_grant(fx->c, 2, UINT32_MAX, &fx->err), 0);
    assert_non_null(strstr(out_text(fx->c), "\"bytes\"=>4294966295"));
    assert_int_equal(sbx_conn_grant(fx->c, 2, 5, &fx->err), 0);
    assert_string_equal(out_text(fx->c), "");
    /* A grant to us that would overflow our credit is misuse: the stream is cancelled. */
    a_credit(&fx->a, 1, UINT32_MAX);
    push(fx);
    expect_kind(fx, SBX_EV_CANCEL);
    assert_true(fx->ev.local);
}

/* --- hostile input -------------------------------------------------------------------------- */

static void test_zero_length_frame(void **state)
{
    struct fx *fx = *state;
    static const uint8_t z[4] = { 0, 0, 0, 0 };

    assert_int_equal(sbx_conn_feed(fx->c, z, 4, &fx->err), 0);
    expect_fatal(fx, SBX_E_BAD_FRAME);
    assert_non_null(strstr(out_text(fx->c), "[2, \"error\", {\"code\"=>\"BAD_FRAME\""));
}

static void test_frame_too_large(void **state)
{
    struct fx *fx = *state;
    uint8_t h[4];

    /* Refused on the header alone, before any body byte. */
    sbx_frame_put_len(h, SBX_FRAME_MAX + 1);
    assert_int_equal(sbx_conn_feed(fx->c, h, 4, &fx->err), 0);
    expect_fatal(fx, SBX_E_FRAME_TOO_LARGE);
}

static void test_frame_max_from_hello(void **state)
{
    struct fx *fx = *state;
    uint8_t h[4];

    do_hello(fx, 1000, 300, 4096, NULL);
    assert_int_equal(sbx_conn_peer(fx->c)->limits.frame_max, 4096);
    sbx_frame_put_len(h, 4097);
    assert_int_equal(sbx_conn_feed(fx->c, h, 4, &fx->err), 0);
    expect_fatal(fx, SBX_E_FRAME_TOO_LARGE);
}

static void test_bad_messages(void **state)
{
    static const char *const bad[] = {
        "c1",                                  /* never-used byte */
        "97 07 01 02 03 04 05 06 07",          /* unknown kind */
        "dd ff ff ff ff",                      /* array32 claiming 4 billion elements */
        "df ff ff ff ff",                      /* map32 likewise */
        "93 02 a1 78 80 00",                   /* trailing byte */
        "d4 00 00",                            /* ext */
        "92 01 01",                            /* response of 2 elements */
        "94 01 01 c0",                         /* truncated */
        "94 01 01 05 c0",                      /* error neither nil nor a map */
        "94 01 01 81 a4 63 6f 64 65 a1 45 01", /* error response with a result */
        "94 01 01 81 a1 78 01 c0",             /* error map without a code */
        "93 02 ad 73 74 72 65 61 6d 2e 63 72 65 64 69 74 81 a6 73 74 72 65 61 6d 01",
        /* ^ stream.credit without bytes */
        "93 02 a9 70 72 6f 63 2e 65 78 69 74 80", /* proc.exit {} */
        "93 02 a5 65 72 72 6f 72 05",             /* params not a map */
    };
    struct fx *fx = *state;

    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        struct sbx_conn *c = sbx_conn_new(&fx->err);
        struct sbx_event ev;
        assert_non_null(c);
        sbx_out_reset(&fx->a);
        a_raw(&fx->a, bad[i]);
        assert_int_equal(sbx_conn_feed(c, fx->a.sb.data, fx->a.sb.size, &fx->err), 0);
        if (sbx_conn_next(c, &ev, &fx->err) != -1) {
            fail_msg("bad message %zu (%s) was accepted", i, bad[i]);
        }
        assert_string_equal(fx->err.code, SBX_E_BAD_MESSAGE);
        sbx_conn_free(c);
    }
}

static void test_bad_records(void **state)
{
    struct fx *fx = *state;
    msgpack_packer *pk;
    uint32_t id;

    do_hello(fx, 1000, 300, 1 << 20, NULL);
    assert_int_equal(sbx_proc_spawn(fx->c, &(struct sbx_spawn_params){ .command = "true" },
                                    (void *)21, &id, &fx->err),
                     0);
    pk = ab(&fx->a); /* a spawn result without pid */
    sbx_pack_response_head(pk, id);
    (void)msgpack_pack_map(pk, 1);
    sbx_pack_kv_u64(pk, "id", 1);
    ae(&fx->a);
    push(fx);
    expect_fatal(fx, SBX_E_BAD_MESSAGE);
    assert_non_null(strstr(fx->err.msg, "pid"));
    /* The request whose record broke the connection is still answered at the end, like every
     * other outstanding one: a host waiting on it (a gateway call) must not wait forever. */
    sbx_conn_eof(fx->c);
    expect_kind(fx, SBX_EV_RESPONSE);
    assert_ptr_equal(fx->ev.user, (void *)21);
    assert_non_null(fx->ev.error);
    assert_int_equal(next(fx), -1);
}

static void test_bad_hello_result(void **state)
{
    struct fx *fx = *state;
    uint32_t id;
    struct sbx_hello h = { .version = 1, .min_version = 1 };
    msgpack_packer *pk;

    assert_int_equal(sbx_conn_hello(fx->c, &h, NULL, &id, &fx->err), 0);
    pk = ab(&fx->a); /* limits missing */
    sbx_pack_response_head(pk, id);
    (void)msgpack_pack_map(pk, 1);
    sbx_pack_kv_u64(pk, "version", 1);
    ae(&fx->a);
    push(fx);
    expect_fatal(fx, SBX_E_BAD_MESSAGE);
}

static void test_duplicate_stream(void **state)
{
    struct fx *fx = *state;

    do_hello(fx, 1000, 300, 1 << 20, NULL);
    spawn_with_stdin(fx, 1, 2);
    assert_int_equal(sbx_ping(fx->c, NULL, NULL, &fx->err), 0);
    assert_int_equal(sbx_proc_spawn(fx->c, &(struct sbx_spawn_params){ .command = "true" }, NULL,
                                    NULL, &fx->err),
                     0);
    a_spawned(&fx->a, 4, 2, 0, 2, 0); /* stream 2 announced again */
    push(fx);
    expect_fatal(fx, SBX_E_BAD_MESSAGE);
}

static void test_feed_cap(void **state)
{
    struct fx *fx = *state;
    uint8_t *big = calloc(1, SBX_CONN_IN_MAX + 1);
    uint8_t h[4];
    size_t room;

    assert_non_null(big);
    assert_int_equal(sbx_conn_feed(fx->c, big, SBX_CONN_IN_MAX + 1, &fx->err), -1);
    assert_string_equal(fx->err.code, SBX_E_LIMIT);
    /* A partial maximal frame plus a feed of SBX_CONN_FEED_MAX always fits. */
    sbx_frame_put_len(h, SBX_FRAME_MAX);
    memcpy(big, h, 4);
    assert_int_equal(sbx_conn_feed(fx->c, big, SBX_FRAME_MAX, &fx->err), 0);
    expect_quiet(fx);
    assert_int_equal(sbx_conn_feed(fx->c, big, SBX_CONN_FEED_MAX, &fx->err), 0);
    assert_int_equal(sbx_conn_feed(fx->c, big, SBX_CONN_IN_MAX, &fx->err), -1);
    assert_non_null(sbx_conn_feed_space(fx->c, &room));
    assert_true(room >= 1 && room <= SBX_CONN_FEED_MAX);
    free(big);
}

/* Random frames and mutated script bytes: never a crash, only 1, 0 or -1. */
static void test_fuzz(void **state)
{
    struct fx *fx = *state;
    uint32_t seed = 12345;
    const uint8_t *base;
    size_t blen;

    script_agent(&fx->a);
    base = (const uint8_t *)fx->a.sb.data;
    blen = fx->a.sb.size;
    for (int iter = 0; iter < 3000; iter++) {
        struct sbx_err e;
        struct sbx_conn *c = sbx_conn_new(&e);
        uint8_t buf[4096];
        size_t n = blen < sizeof(buf) ? blen : sizeof(buf);
        struct run r = { 0 };
        int rc = 0;

        assert_non_null(c);
        assert_int_equal(sbx_conn_hello(c, NULL, NULL, NULL, &e), 0);
        memcpy(buf, base, n);
        for (int k = 0; k < 1 + iter % 8; k++) {
            seed = seed * 1103515245u + 12345u;
            buf[(seed >> 8) % n] ^= (uint8_t)(1u << ((seed >> 4) & 7));
        }
        assert_int_equal(sbx_conn_feed(c, buf, n, &e), 0);
        for (int guard = 0; guard < 10000; guard++) {
            struct sbx_event ev;
            char line[4096];
            rc = sbx_conn_next(c, &ev, &e);
            if (rc != 1) {
                break;
            }
            (void)describe(&ev, line, sizeof(line));
            if (ev.kind == SBX_EV_RESPONSE && ev.call == SBX_CALL_HELLO && ev.error == NULL) {
                /* Requests may be refused (capabilities mutated away); never crash. */
                (void)sbx_ping(c, NULL, NULL, &e);
            }
            if (ev.kind == SBX_EV_DATA) {
                (void)sbx_conn_consumed(c, ev.stream, ev.len, &e);
            }
        }
        assert_true(rc == 0 || rc == -1);
        sbx_conn_eof(c);
        while (sbx_conn_next(c, &fx->ev, &e) == 1) {
        }
        free(r.log);
        sbx_conn_free(c);
    }
}

/* --- requests -------------------------------------------------------------------------------- */

static void test_ids_wrap_and_skip(void **state)
{
    struct fx *fx = *state;
    uint32_t id;

    do_hello(fx, 1000, 300, 1 << 20, NULL);
    sbx_conn_set_next_id(fx->c, UINT32_MAX - 1);
    assert_int_equal(sbx_ping(fx->c, NULL, &id, &fx->err), 0);
    assert_int_equal(id, UINT32_MAX - 1);
    assert_int_equal(sbx_ping(fx->c, NULL, &id, &fx->err), 0);
    assert_int_equal(id, UINT32_MAX);
    assert_int_equal(sbx_ping(fx->c, NULL, &id, &fx->err), 0);
    assert_int_equal(id, 1); /* 0 is skipped; hello's 1 was answered */
    /* Outstanding ids are skipped: UINT32_MAX and 1 are. */
    sbx_conn_set_next_id(fx->c, UINT32_MAX);
    assert_int_equal(sbx_ping(fx->c, NULL, &id, &fx->err), 0);
    assert_int_equal(id, 2);
    assert_int_equal(sbx_conn_pending(fx->c), 4);
    /* Responses free them again, in any order. */
    a_ok(&fx->a, UINT32_MAX);
    a_ok(&fx->a, 1);
    push(fx);
    expect_kind(fx, SBX_EV_RESPONSE);
    assert_int_equal(fx->ev.id, UINT32_MAX);
    assert_false(fx->ev.unknown);
    expect_kind(fx, SBX_EV_RESPONSE);
    assert_int_equal(fx->ev.id, 1);
    assert_int_equal(fx->ev.call, SBX_CALL_PING);
    assert_string_equal(fx->ev.method, "ping");
    sbx_conn_set_next_id(fx->c, UINT32_MAX);
    assert_int_equal(sbx_ping(fx->c, NULL, &id, &fx->err), 0);
    assert_int_equal(id, UINT32_MAX);
    /* The same id answered twice: the second is unknown. */
    a_ok(&fx->a, 1);
    push(fx);
    expect_kind(fx, SBX_EV_RESPONSE);
    assert_true(fx->ev.unknown);
}

static void test_local_refusals(void **state)
{
    static const char *const few[] = { "session", "process", NULL };
    struct fx *fx = *state;
    struct sbx_pty_params pty = { 0 };
    struct sbx_spawn_params sp = { .command = "true", .pty = &pty };
    uint32_t id, pid;

    assert_int_equal(sbx_ping(fx->c, NULL, NULL, &fx->err), -1);
    assert_string_equal(fx->err.code, SBX_E_HELLO_REQUIRED);
    assert_null(sbx_conn_begin(fx->c, "x.y", NULL, NULL, &fx->err));
    assert_string_equal(fx->err.code, SBX_E_HELLO_REQUIRED);
    assert_int_equal(sbx_conn_hello(fx->c, NULL, NULL, &id, &fx->err), 0);
    assert_int_equal(sbx_conn_hello(fx->c, NULL, NULL, NULL, &fx->err), -1);
    assert_string_equal(fx->err.code, SBX_E_BUSY);
    /* Pipelined behind the outstanding hello (§6.1), capability unchecked (not known yet). */
    assert_int_equal(sbx_fs_stat(fx->c, "/", NULL, NULL, &pid, &fx->err), 0);
    assert_int_equal(pid, id + 1);
    /* A failed hello (VERSION) may be retried; the agent refuses what was pipelined. */
    a_error_response(&fx->a, id, SBX_E_VERSION, "no");
    a_error_response(&fx->a, pid, SBX_E_HELLO_REQUIRED, "no hello");
    push(fx);
    expect_kind(fx, SBX_EV_RESPONSE);
    assert_string_equal(fx->ev.error->code, SBX_E_VERSION);
    expect_kind(fx, SBX_EV_RESPONSE);
    assert_int_equal(fx->ev.id, pid);
    assert_string_equal(fx->ev.error->code, SBX_E_HELLO_REQUIRED);
    assert_null(sbx_conn_peer(fx->c));
    sbx_conn_out_done(fx->c, sbx_conn_out_bytes(fx->c));
    do_hello(fx, 1000, 300, 1 << 20, few);
    assert_int_equal(sbx_conn_hello(fx->c, NULL, NULL, NULL, &fx->err), -1);
    assert_string_equal(fx->err.code, SBX_E_BAD_MESSAGE);
    assert_true(sbx_conn_has_cap(fx->c, "process"));
    assert_false(sbx_conn_has_cap(fx->c, "fs"));
    assert_int_equal(sbx_fs_stat(fx->c, "/", NULL, NULL, NULL, &fx->err), -1);
    assert_string_equal(fx->err.code, SBX_E_UNSUPPORTED);
    assert_int_equal(sbx_proc_resize(fx->c, 1, 2, 3, NULL, NULL, &fx->err), -1);
    assert_string_equal(fx->err.code, SBX_E_UNSUPPORTED);
    assert_int_equal(sbx_proc_spawn(fx->c, &sp, NULL, NULL, &fx->err), -1);
    assert_string_equal(fx->err.code, SBX_E_UNSUPPORTED);
    assert_string_equal(fx->err.field, "pty");
    sp.pty = NULL;
    sp.argv = (const char *const[]){ "x", NULL };
    assert_int_equal(sbx_proc_spawn(fx->c, &sp, NULL, NULL, &fx->err), -1);
    assert_string_equal(fx->err.field, "argv");
    /* Methods this library does not know are not checked against capabilities. */
    assert_non_null(sbx_conn_begin(fx->c, "vm.snapshot", NULL, NULL, &fx->err));
    sbx_conn_abort(fx->c);
    assert_int_equal(sbx_conn_out_bytes(fx->c), 0);
    assert_int_equal(sbx_conn_pending(fx->c), 0);
    assert_int_equal(sbx_fs_stat(fx->c, NULL, NULL, NULL, NULL, &fx->err), -1);
    assert_string_equal(fx->err.code, SBX_E_BAD_PARAM);
    assert_string_equal(fx->err.field, "path");
}

static void test_request_caps(void **state)
{
    struct fx *fx = *state;
    static uint8_t chunk[SBX_STREAM_CHUNK_MAX];
    msgpack_packer *pk;
    uint32_t n;

    do_hello(fx, 1000, SBX_STREAM_CHUNK_MAX, 4096, NULL);
    /* A request over the negotiated frame_max is refused and leaves nothing behind. */
    pk = sbx_conn_begin(fx->c, "fs.write", NULL, NULL, &fx->err);
    assert_non_null(pk);
    (void)msgpack_pack_map(pk, 1);
    sbx_pack_cstr(pk, "data");
    sbx_pack_bin(pk, chunk, 5000);
    assert_int_equal(sbx_conn_commit(fx->c, &fx->err), -1);
    assert_string_equal(fx->err.limit, "frame_max");
    assert_int_equal(sbx_conn_out_bytes(fx->c), 0);
    assert_int_equal(sbx_conn_pending(fx->c), 0);
    /* Not exactly one params value. */
    assert_non_null(sbx_conn_begin(fx->c, "ping", NULL, NULL, &fx->err));
    assert_int_equal(sbx_conn_commit(fx->c, &fx->err), -1);
    assert_string_equal(fx->err.code, SBX_E_BAD_PARAM);
    pk = sbx_conn_begin(fx->c, "ping", NULL, NULL, &fx->err);
    (void)msgpack_pack_nil(pk);
    (void)msgpack_pack_nil(pk);
    assert_int_equal(sbx_conn_commit(fx->c, &fx->err), -1);
    assert_int_equal(sbx_conn_out_bytes(fx->c), 0);
    /* Between begin and commit everything else is refused. */
    pk = sbx_conn_begin(fx->c, "ping", NULL, NULL, &fx->err);
    assert_int_equal(sbx_ping(fx->c, NULL, NULL, &fx->err), -1);
    assert_string_equal(fx->err.code, SBX_E_BUSY);
    assert_int_equal(next(fx), -1);
    (void)msgpack_pack_map(pk, 0);
    assert_int_equal(sbx_conn_commit(fx->c, &fx->err), 0);
    /* max_pending. */
    for (n = 1; n < SBX_CONN_PENDING_MAX; n++) {
        assert_int_equal(sbx_ping(fx->c, NULL, NULL, &fx->err), 0);
    }
    assert_int_equal(sbx_ping(fx->c, NULL, NULL, &fx->err), -1);
    assert_string_equal(fx->err.limit, "max_pending");
    assert_int_equal(sbx_conn_pending(fx->c), SBX_CONN_PENDING_MAX);
}

/* Unwritten output above SBX_CONN_OUT_MAX refuses requests until the transport catches up. */
static void test_out_cap(void **state)
{
    struct fx *fx = *state;
    static uint8_t chunk[SBX_STREAM_CHUNK_MAX];
    int n = 0;

    do_hello(fx, 1000, SBX_STREAM_CHUNK_MAX, SBX_FRAME_MAX, NULL);
    while (sbx_fs_write(fx->c, 1, chunk, sizeof(chunk), NULL, NULL, NULL, &fx->err) == 0) {
        n++;
        assert_true(n < 100);
    }
    assert_string_equal(fx->err.limit, "out_max");
    assert_int_equal(n, (int)(SBX_CONN_OUT_MAX / SBX_STREAM_CHUNK_MAX));
    assert_int_equal(
        sbx_fs_write(fx->c, 1, chunk, SBX_STREAM_CHUNK_MAX + 1, NULL, NULL, NULL, &fx->err), -1);
    assert_string_equal(fx->err.limit, "chunk_max");
    sbx_conn_out_done(fx->c, sbx_conn_out_bytes(fx->c));
    assert_int_equal(sbx_fs_write(fx->c, 1, chunk, 1, NULL, NULL, NULL, &fx->err), 0);
}

/* Typed calls put the params tables of PROTOCOL.md on the wire. */
static void test_typed_params(void **state)
{
    static const char *const argv[] = { "sh", "-c", "echo \xff", NULL };
    static const char *const env[] = { "A=1", "B", NULL };
    static const uint32_t groups[] = { 5, 6 };
    struct fx *fx = *state;
    struct sbx_pty_params pty = { 30, 100, "vt100", 0 };
    struct sbx_spawn_params sp = { 0 };
    struct sbx_upload_params up = { 0 };
    uint64_t off = 7;
    int64_t at = -3;
    const char *t;

    do_hello(fx, 1000, 300, 1 << 20, NULL);
    sp.argv = argv;
    sp.env = env;
    sp.cwd = "/tmp";
    sp.has_uid = true;
    sp.uid = 1000;
    sp.has_groups = true;
    sp.groups = groups;
    sp.ngroups = 2;
    sp.stdin_mode = SBX_STDIO_PIPE;
    sp.stderr_mode = SBX_STDIO_STDOUT;
    sp.timeout_ms = 50;
    sp.kill_signal = 9;
    sp.has_drain_ms = true;
    sp.pty = &pty;
    sp.tag = "t";
    assert_int_equal(sbx_proc_spawn(fx->c, &sp, NULL, NULL, &fx->err), 0);
    t = out_text(fx->c);
    assert_string_equal(t, "[0, 2, \"proc.spawn\", {\"argv\"=>[\"sh\", \"-c\", "
                           "\"echo \\xff\"], \"env\"=>{\"A\"=>\"1\", \"B\"=>nil}, "
                           "\"cwd\"=>\"/tmp\", \"uid\"=>1000, \"groups\"=>[5, 6], "
                           "\"stdin\"=>\"pipe\", \"stderr\"=>\"stdout\", \"timeout_ms\"=>50, "
                           "\"kill_signal\"=>9, \"drain_ms\"=>0, \"pty\"=>{\"rows\"=>30, "
                           "\"cols\"=>100, \"term\"=>\"vt100\"}, \"tag\"=>\"t\"}]\n");
    assert_int_equal(sbx_proc_wait(fx->c, 3, 10, NULL, NULL, &fx->err), 0);
    assert_int_equal(sbx_proc_kill(fx->c, 3, 0, true, NULL, NULL, &fx->err), 0);
    assert_int_equal(sbx_env_set(fx->c, "X", NULL, NULL, NULL, &fx->err), 0);
    assert_int_equal(sbx_fs_open(fx->c, "/f", SBX_FS_O_WRITE | SBX_FS_O_CREATE, 0600, NULL, NULL,
                                 NULL, &fx->err),
                     0);
    assert_int_equal(sbx_fs_read(fx->c, 1, 10, &off, NULL, NULL, &fx->err), 0);
    assert_int_equal(sbx_fs_utime(fx->c, "/f", &at, NULL, "/", NULL, NULL, &fx->err), 0);
    up.path = "/u";
    up.no_overwrite = true;
    up.has_mode = true;
    up.mode = 0755;
    up.no_hash = true;
    assert_int_equal(sbx_transfer_upload(fx->c, &up, NULL, NULL, &fx->err), 0);
    assert_int_equal(sbx_transfer_download(fx->c, "/d", 5, 10, NULL, NULL, NULL, &fx->err), 0);
    assert_int_equal(sbx_fs_readdir(fx->c, NULL, "cur", 0, NULL, NULL, NULL, &fx->err), 0);
    assert_int_equal(sbx_fs_readdir(fx->c, NULL, NULL, 0, NULL, NULL, NULL, &fx->err), -1);
    assert_string_equal(fx->err.field, "path");
    assert_int_equal(sbx_shutdown(fx->c, true, NULL, NULL, &fx->err), 0);
    assert_int_equal(sbx_clock_set(fx->c, -1, -1, NULL, NULL, &fx->err), 0);
    t = out_text(fx->c);
    assert_non_null(strstr(t, "[0, 3, \"proc.wait\", {\"id\"=>3, \"timeout_ms\"=>10}]\n"));
    assert_non_null(strstr(t, "[0, 4, \"proc.kill\", {\"id\"=>3, \"group\"=>true}]\n"));
    assert_non_null(strstr(t, "[0, 5, \"env.set\", {\"vars\"=>{\"X\"=>nil}}]\n"));
    assert_non_null(strstr(t, "[0, 6, \"fs.open\", {\"path\"=>\"/f\", \"flags\"=>[\"write\", "
                              "\"create\"], \"mode\"=>384}]\n"));
    assert_non_null(strstr(t, "{\"fh\"=>1, \"len\"=>10, \"offset\"=>7}"));
    assert_non_null(strstr(t, "{\"path\"=>\"/f\", \"atime_ns\"=>-3, \"cwd\"=>\"/\"}"));
    assert_non_null(strstr(t, "{\"path\"=>\"/u\", \"mode\"=>493, \"overwrite\"=>false, "
                              "\"hash\"=>false}"));
    assert_non_null(strstr(t, "{\"path\"=>\"/d\", \"offset\"=>5, \"length\"=>10}"));
    assert_non_null(strstr(t, "\"fs.readdir\", {\"cursor\"=>\"cur\"}"));
    assert_non_null(strstr(t, "\"shutdown\", {\"action\"=>\"reboot\"}"));
    assert_non_null(strstr(t, "\"clock.set\", {\"unix_ns\"=>-1}"));
}

/* fs.walk, fs.glob and pack.create: arrays, false-default bools and a nested build map. */
/* proc.attach and net.connect: params as the schema packs them, results typed and their streams
 * registered in the right directions; refused locally without the capability. */
/* repl.eval's format (capability repl.json): "json" sent, "text" and NULL not, others refused. */
static void test_repl_eval_format(void **state)
{
    static const char *const caps[] = { "session", "repl", "repl.json", NULL };
    struct fx *fx = *state;
    const char *t;

    do_hello(fx, 1000, 300, 1 << 20, NULL); /* all_caps: repl without repl.json */
    assert_int_equal(sbx_repl_eval_as(fx->c, 1, "1", 1, 0, false, "json", NULL, NULL, &fx->err),
                     -1);
    assert_string_equal(fx->err.code, SBX_E_UNSUPPORTED);
    assert_int_equal(sbx_repl_eval_as(fx->c, 1, "1", 1, 0, false, "text", NULL, NULL, &fx->err), 0);
    sbx_conn_free(fx->c);
    fx->c = sbx_conn_new(&fx->err);
    assert_non_null(fx->c);

    do_hello(fx, 1000, 300, 1 << 20, caps);
    assert_int_equal(sbx_repl_eval_as(fx->c, 1, "1", 1, 0, false, "xml", NULL, NULL, &fx->err), -1);
    assert_string_equal(fx->err.field, "format");
    assert_int_equal(sbx_repl_eval_as(fx->c, 2, "x", 1, 0, false, "json", NULL, NULL, &fx->err), 0);
    assert_int_equal(sbx_repl_eval_as(fx->c, 3, "y", 1, 0, false, "text", NULL, NULL, &fx->err), 0);
    assert_int_equal(sbx_repl_eval(fx->c, 4, "z", 1, 0, false, NULL, NULL, &fx->err), 0);
    t = out_text(fx->c);
    assert_non_null(strstr(t, "\"repl.eval\", {\"session\"=>2, \"code\"=>\"x\", "
                              "\"format\"=>\"json\"}]\n"));
    assert_non_null(strstr(t, "\"repl.eval\", {\"session\"=>3, \"code\"=>\"y\"}]\n"));
    assert_non_null(strstr(t, "\"repl.eval\", {\"session\"=>4, \"code\"=>\"z\"}]\n"));
}

static void test_attach_net(void **state)
{
    static const char *const caps[] = { "session", "process", "process.attach", "net", NULL };
    struct fx *fx = *state;
    struct sbx_attach_params ap = { .id = 5, .has_from = true, .from = 10, .stdin = true };
    struct sbx_attach_result ar = { .stdin_sid = 3,
                                    .stdout_sid = 4,
                                    .has_stdout_start = true,
                                    .stdout_start = 12,
                                    .stdout_dropped = 2 };
    struct sbx_net_connect_params np = { .port = 8080 };
    struct sbx_net_connect_result nr = { .in = 5, .out = 6 };
    uint32_t id;
    const char *t;

    /* Without the capabilities: UNSUPPORTED locally. */
    do_hello(fx, 1000, 300, 1 << 20, NULL);
    assert_int_equal(sbx_proc_attach(fx->c, &ap, NULL, &id, &fx->err), -1);
    assert_string_equal(fx->err.code, SBX_E_UNSUPPORTED);
    assert_int_equal(sbx_net_connect(fx->c, &np, NULL, &id, &fx->err), -1);
    assert_string_equal(fx->err.code, SBX_E_UNSUPPORTED);
    sbx_conn_free(fx->c);
    fx->c = sbx_conn_new(&fx->err);
    assert_non_null(fx->c);

    do_hello(fx, 1000, 300, 1 << 20, caps);
    np.port = 0;
    assert_int_equal(sbx_net_connect(fx->c, &np, NULL, &id, &fx->err), -1);
    assert_string_equal(fx->err.field, "port");
    np.port = 8080;
    assert_int_equal(sbx_proc_attach(fx->c, &ap, (void *)1, &id, &fx->err), 0);
    t = out_text(fx->c);
    assert_non_null(strstr(t, "\"proc.attach\", {\"id\"=>5, \"from\"=>10}]\n"));
    {
        msgpack_packer *pk = ab(&fx->a);
        sbx_pack_response_head(pk, id);
        sbx_attach_result_pack(pk, &ar);
        ae(&fx->a);
    }
    push(fx);
    expect_kind(fx, SBX_EV_RESPONSE);
    assert_null(fx->ev.error);
    assert_int_equal(fx->ev.call, SBX_CALL_PROC_ATTACH);
    assert_ptr_equal(fx->ev.user, (void *)1);
    assert_int_equal(fx->ev.rec, SBX_REC_ATTACH);
    assert_int_equal(fx->ev.r.attach.stdout_start, 12);
    assert_int_equal(fx->ev.r.attach.stdout_dropped, 2);
    assert_true(sbx_conn_stream_live(fx->c, 3));
    assert_true(sbx_conn_stream_live(fx->c, 4));
    assert_int_equal(sbx_conn_credit(fx->c, 3), 1000); /* stdin is an `in` stream */
    a_data(&fx->a, 4, "abc", 3);
    push(fx);
    expect_kind(fx, SBX_EV_DATA);
    assert_int_equal(fx->ev.stream, 4);

    np.host = "::1";
    assert_int_equal(sbx_net_connect(fx->c, &np, NULL, &id, &fx->err), 0);
    assert_int_equal(sbx_net_listening(fx->c, NULL, NULL, &fx->err), 0);
    t = out_text(fx->c);
    assert_non_null(strstr(t, "\"net.connect\", {\"port\"=>8080, \"host\"=>\"::1\"}]\n"));
    assert_non_null(strstr(t, "\"net.listening\", {}]\n"));
    {
        msgpack_packer *pk = ab(&fx->a);
        sbx_pack_response_head(pk, id);
        sbx_net_connect_result_pack(pk, &nr);
        ae(&fx->a);
    }
    push(fx);
    expect_kind(fx, SBX_EV_RESPONSE);
    assert_int_equal(fx->ev.rec, SBX_REC_NET);
    assert_int_equal(fx->ev.r.net.in, 5);
    assert_int_equal(fx->ev.r.net.out, 6);
    assert_int_equal(sbx_conn_credit(fx->c, 5), 1000);
    assert_int_equal(sbx_conn_write(fx->c, 5, "GET /", 5, &fx->err), 0);
    assert_int_equal(sbx_conn_write(fx->c, 6, "x", 1, &fx->err), -1); /* `out`: not writable */
    assert_int_equal(sbx_conn_end(fx->c, 5, NULL, &fx->err), 0);
    t = out_text(fx->c);
    assert_non_null(strstr(t, "DATA 5 5\n"));
    assert_non_null(strstr(t, "\"stream.end\", {\"stream\"=>5}]\n"));
}

static void test_typed_params_lists(void **state)
{
    static const char *const exts[] = { "c", "h" }, *const skip[] = { "^tmp$" };
    static const char *const bargv[] = { "make", NULL }, *const args[] = { "x" };
    static const char *const bad[] = { "a", NULL };
    struct fx *fx = *state;
    struct sbx_walk_params w = { .path = "/w", .has_max_depth = true, .max_depth = 2 };
    struct sbx_glob_params g = { .pattern = "**/*.c", .no_dirs = true };
    struct sbx_spawn_params b = { .argv = bargv, .timeout_ms = 9 };
    struct sbx_pack_params pp = { .path = "/p", .format = "tar.gz", .build = &b };
    const char *t;

    do_hello(fx, 1000, 300, 1 << 20, NULL);
    w.no_symlinks = true;
    w.exts = exts;
    w.nexts = 2;
    w.skip = skip;
    w.nskip = 1;
    assert_int_equal(sbx_fs_walk(fx->c, &w, NULL, NULL, &fx->err), 0);
    g.exclude = exts;
    g.nexclude = 1;
    assert_int_equal(sbx_fs_glob(fx->c, &g, NULL, NULL, &fx->err), 0);
    pp.args = args;
    pp.nargs = 1;
    pp.entrypoint = "run";
    assert_int_equal(sbx_pack_create(fx->c, &pp, NULL, NULL, &fx->err), 0);
    t = out_text(fx->c);
    assert_non_null(strstr(t, "\"fs.walk\", {\"path\"=>\"/w\", \"max_depth\"=>2, "
                              "\"include_symlinks\"=>false, \"exts\"=>[\"c\", \"h\"], "
                              "\"skip\"=>[\"^tmp$\"]}]\n"));
    assert_non_null(strstr(t, "\"fs.glob\", {\"pattern\"=>\"**/*.c\", \"include_dirs\"=>false, "
                              "\"exclude\"=>[\"c\"]}]\n"));
    assert_non_null(strstr(t, "\"pack.create\", {\"path\"=>\"/p\", \"format\"=>\"tar.gz\", "
                              "\"build\"=>{\"argv\"=>[\"make\"], \"timeout_ms\"=>9}, "
                              "\"entrypoint\"=>\"run\", \"args\"=>[\"x\"]}]\n"));
    /* Refused locally: a NULL entry in a list, a build with neither argv nor command. */
    pp.args = bad;
    pp.nargs = 2;
    assert_int_equal(sbx_pack_create(fx->c, &pp, NULL, NULL, &fx->err), -1);
    assert_string_equal(fx->err.field, "args");
    pp.nargs = 0;
    b.argv = NULL;
    assert_int_equal(sbx_pack_create(fx->c, &pp, NULL, NULL, &fx->err), -1);
    assert_string_equal(fx->err.field, "build");
    assert_int_equal(sbx_fs_walk(fx->c, NULL, NULL, NULL, &fx->err), -1);
    /* A str param that is not UTF-8 (repl code) and a vars entry without a name. */
    assert_int_equal(sbx_repl_eval(fx->c, 1, "\xff", 1, 0, false, NULL, NULL, &fx->err), -1);
    assert_string_equal(fx->err.field, "code");
    assert_int_equal(sbx_env_set_vars(fx->c, bad, 1, NULL, NULL, &fx->err), 0);
    assert_int_equal(
        sbx_env_set_vars(fx->c, (const char *const[]){ "=x" }, 1, NULL, NULL, &fx->err), -1);
    assert_string_equal(fx->err.field, "vars");
    assert_int_equal(
        sbx_env_set_vars(fx->c, (const char *const[]){ "A=1", "B" }, 2, NULL, NULL, &fx->err), 0);
    /* The identity goes with the file families' calls only (§17.1). */
    assert_int_equal(sbx_conn_set_identity(fx->c, "root", &fx->err), 0);
    assert_string_equal(sbx_conn_identity(fx->c), "root");
    assert_int_equal(sbx_fs_stat(fx->c, "/s", NULL, NULL, NULL, &fx->err), 0);
    assert_int_equal(sbx_fs_open(fx->c, "/o", 0, -1, NULL, NULL, NULL, &fx->err), 0);
    assert_int_equal(sbx_fs_close(fx->c, 4, NULL, NULL, &fx->err), 0);
    assert_int_equal(sbx_transfer_download_tree(fx->c, "/d", NULL, NULL, NULL, NULL, &fx->err), 0);
    assert_int_equal(sbx_ping(fx->c, NULL, NULL, &fx->err), 0);
    assert_int_equal(sbx_conn_set_identity(fx->c, "", &fx->err), 0);
    assert_null(sbx_conn_identity(fx->c));
    assert_int_equal(sbx_fs_lstat(fx->c, "/l", NULL, NULL, NULL, &fx->err), 0);
    assert_int_equal(sbx_conn_set_identity(fx->c, "\xff", &fx->err), -1);
    assert_string_equal(fx->err.field, "user");
    t = out_text(fx->c);
    assert_non_null(strstr(t, "\"fs.stat\", {\"path\"=>\"/s\", \"user\"=>\"root\"}]\n"));
    assert_non_null(strstr(t, "\"fs.open\", {\"path\"=>\"/o\", \"user\"=>\"root\"}]\n"));
    assert_non_null(strstr(t, "\"fs.close\", {\"fh\"=>4}]\n"));
    assert_non_null(
        strstr(t, "\"transfer.download_tree\", {\"path\"=>\"/d\", \"user\"=>\"root\"}]"));
    assert_non_null(strstr(t, "\"ping\", {}]\n"));
    assert_non_null(strstr(t, "\"fs.lstat\", {\"path\"=>\"/l\"}]\n"));
    assert_non_null(strstr(t, "\"env.set\", {\"vars\"=>{\"a\"=>nil}}]\n"));
    assert_non_null(strstr(t, "\"env.set\", {\"vars\"=>{\"A\"=>\"1\", \"B\"=>nil}}]\n"));
}

/* --- output stability, EOF ------------------------------------------------------------------ */

static void test_out_stable(void **state)
{
    struct fx *fx = *state;
    const uint8_t *p;
    uint8_t copy[256];
    size_t len, total = 0;
    struct iovec iov[64];
    int n;

    do_hello(fx, 1000, 300, 1 << 20, NULL);
    assert_int_equal(sbx_ping(fx->c, NULL, NULL, &fx->err), 0);
    p = sbx_conn_out(fx->c, &len);
    assert_non_null(p);
    assert_true(len <= sizeof(copy));
    memcpy(copy, p, len);
    /* Lots more output (new blocks, a large frame) while the first bytes are "in flight". */
    for (int i = 0; i < 2000; i++) {
        assert_int_equal(
            sbx_fs_stat(fx->c, "/some/long/path/to/make/frames/bigger", NULL, NULL, NULL, &fx->err),
            0);
    }
    assert_memory_equal(p, copy, len);
    n = sbx_conn_out_iov(fx->c, iov, 64);
    assert_true(n > 1);
    assert_ptr_equal(iov[0].iov_base, p);
    for (int i = 0; i < n; i++) {
        total += iov[i].iov_len;
    }
    assert_int_equal(total, sbx_conn_out_bytes(fx->c));
    sbx_conn_out_done(fx->c, 3);
    assert_ptr_equal(sbx_conn_out(fx->c, &len), p + 3);
    sbx_conn_out_done(fx->c, sbx_conn_out_bytes(fx->c));
    assert_int_equal(sbx_conn_out_bytes(fx->c), 0);
}

static void test_eof(void **state)
{
    struct fx *fx = *state;
    int responses = 0, cancels = 0;

    do_hello(fx, 1000, 300, 1 << 20, NULL);
    spawn_with_stdin(fx, 1, 2);
    assert_int_equal(sbx_ping(fx->c, (void *)11, NULL, &fx->err), 0);
    assert_int_equal(sbx_proc_wait(fx->c, 1, 0, (void *)12, NULL, &fx->err), 0);
    a_data(&fx->a, 2, "tail", 4);
    push(fx);
    sbx_conn_eof(fx->c);
    /* Frames that arrived before the end still come first. */
    expect_kind(fx, SBX_EV_DATA);
    assert_int_equal(fx->ev.len, 4);
    assert_int_equal(fx->ev.frame_len, 9); /* [3, 2, bin "tail"] */
    assert_memory_equal(fx->ev.frame + 5, "tail", 4);
    for (;;) {
        int r = next(fx);
        if (r != 1) {
            assert_int_equal(r, -1);
            break;
        }
        assert_true(fx->ev.local);
        assert_string_equal(fx->ev.error->code, SBX_E_EOF);
        assert_null(fx->ev.frame);
        if (fx->ev.kind == SBX_EV_RESPONSE) {
            assert_true(fx->ev.user == (void *)11 || fx->ev.user == (void *)12);
            responses++;
        } else {
            assert_int_equal(fx->ev.kind, SBX_EV_CANCEL);
            cancels++;
        }
    }
    assert_int_equal(responses, 2);
    assert_int_equal(cancels, 2);
    assert_string_equal(fx->err.code, SBX_E_EOF);
    assert_int_equal(sbx_ping(fx->c, NULL, NULL, &fx->err), -1);
    assert_int_equal(sbx_conn_feed(fx->c, "x", 1, &fx->err), -1);
}

static void test_eof_after_error(void **state)
{
    struct fx *fx = *state;
    struct sbx_err e;
    msgpack_packer *pk;

    do_hello(fx, 1000, 300, 1 << 20, NULL);
    assert_int_equal(sbx_ping(fx->c, NULL, NULL, &fx->err), 0);
    (void)sbx_err_set(&e, SBX_E_LIMIT, "too many connections");
    pk = ab(&fx->a);
    sbx_pack_notify_head(pk, SBX_N_ERROR);
    sbx_pack_err(pk, &e);
    ae(&fx->a);
    push(fx);
    expect_kind(fx, SBX_EV_ERROR);
    assert_string_equal(fx->ev.error->code, SBX_E_LIMIT);
    /* A call that fails leaves the event's error alone (it wrote its own into it). */
    assert_int_equal(sbx_conn_stream_open(fx->c, 0, SBX_DIR_IN, &fx->err), -1);
    assert_string_equal(fx->err.code, SBX_E_BAD_PARAM);
    assert_string_equal(fx->ev.error->code, SBX_E_LIMIT);
    assert_string_equal(fx->ev.error->msg, "too many connections");
    assert_int_equal(sbx_conn_feed(fx->c, "\0\0", 2, &fx->err), 0); /* a partial frame */
    sbx_conn_eof(fx->c);
    expect_kind(fx, SBX_EV_RESPONSE);
    assert_non_null(strstr(fx->ev.error->msg, "LIMIT: too many connections"));
    assert_non_null(strstr(fx->ev.error->msg, "2 bytes of an incomplete frame"));
    assert_int_equal(next(fx), -1);
}

static void test_call_table(void **state)
{
    (void)state;
    for (int i = SBX_CALL_OTHER + 1; i < SBX_CALL_COUNT; i++) {
        const char *n = sbx_call_name((enum sbx_call)i);
        assert_non_null(n);
        assert_int_equal(sbx_call_lookup(n, strlen(n)), i);
        assert_true(i == SBX_CALL_HELLO || sbx_call_cap((enum sbx_call)i) != NULL);
    }
    assert_int_equal(sbx_call_lookup("proc.spawnx", 11), SBX_CALL_OTHER);
    assert_null(sbx_call_name(SBX_CALL_OTHER));
    assert_null(sbx_call_name(SBX_CALL_COUNT));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_split_every_offset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_direct, setup, teardown),
        cmocka_unit_test_setup_teardown(test_credit_queues, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_caps, setup, teardown),
        cmocka_unit_test_setup_teardown(test_output_room, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pump_all, setup, teardown),
        cmocka_unit_test_setup_teardown(test_grants, setup, teardown),
        cmocka_unit_test_setup_teardown(test_grant_bounds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_recv_window, setup, teardown),
        cmocka_unit_test_setup_teardown(test_recv_window_echo, setup, teardown),
        cmocka_unit_test_setup_teardown(test_recv_window_raw_after_typed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_zero_length_frame, setup, teardown),
        cmocka_unit_test_setup_teardown(test_frame_too_large, setup, teardown),
        cmocka_unit_test_setup_teardown(test_frame_max_from_hello, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_messages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_records, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_hello_result, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicate_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_feed_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fuzz, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ids_wrap_and_skip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_local_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_request_caps, setup, teardown),
        cmocka_unit_test_setup_teardown(test_out_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_typed_params, setup, teardown),
        cmocka_unit_test_setup_teardown(test_attach_net, setup, teardown),
        cmocka_unit_test_setup_teardown(test_repl_eval_format, setup, teardown),
        cmocka_unit_test_setup_teardown(test_typed_params_lists, setup, teardown),
        cmocka_unit_test_setup_teardown(test_out_stable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_eof, setup, teardown),
        cmocka_unit_test_setup_teardown(test_eof_after_error, setup, teardown),
        cmocka_unit_test(test_call_table),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
