/* Unit tests: every schema record's pack/read round trip, and its reader's checks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "msgfx.h"
#include "sbx/schema.h"

/* Start a notification "t" whose params the test packs. */
static msgpack_packer *begin(struct fx *fx)
{
    sbx_out_reset(&fx->out);
    sbx_out_begin(&fx->out);
    sbx_pack_notify_head(&fx->out.pk, "t");
    return &fx->out.pk;
}

/* Finish, check with sbx_schema_check, decode; returns the params map. */
static const msgpack_object *finish(struct fx *fx)
{
    const uint8_t *p;

    assert_int_equal(sbx_out_end(&fx->out, &fx->err), 0);
    p = (const uint8_t *)fx->out.sb.data;
    assert_int_equal(sbx_schema_check(p + 4, fx->out.sb.size - 4, &fx->err), 0);
    assert_int_equal(sbx_msg_decode(&fx->dec, p + 4, fx->out.sb.size - 4, &fx->m, &fx->err), 0);
    return fx->m.params;
}

/* Decode raw msgpack bytes of a map (the test writes them by hand to break a record). */
static const msgpack_object *raw_map(struct fx *fx, const char *hex)
{
    static uint8_t buf[512];
    size_t n = 0;

    buf[n++] = 0x93; /* [2, "t", map] */
    buf[n++] = 0x02;
    buf[n++] = 0xa1;
    buf[n++] = 't';
    for (const char *h = hex; h[0] != '\0' && h[1] != '\0'; h += 2) {
        unsigned v;
        assert_int_equal(sscanf(h, "%2x", &v), 1);
        buf[n++] = (uint8_t)v;
    }
    assert_int_equal(sbx_msg_decode(&fx->dec, buf, n, &fx->m, &fx->err), 0);
    return fx->m.params;
}

static void test_exit(void **state)
{
    struct fx *fx = *state;
    struct sbx_exit a = { .id = 7,
                          .pid = 4242,
                          .exited = true,
                          .code = 3,
                          .duration_ns = 123456789,
                          .drained = true,
                          .stdout_bytes = 10,
                          .stderr_bytes = 2,
                          .maxrss_kb = 1536,
                          .utime_us = 5,
                          .stime_us = 6 };
    struct sbx_exit b;

    sbx_exit_pack(begin(fx), &a);
    assert_int_equal(sbx_exit_read(finish(fx), &b, &fx->err), 0);
    assert_memory_equal(&a, &b, sizeof(a));
    assert_int_equal(sbx_exit_status(&b), 3);
    assert_int_equal(sbx_obj_get(fx->m.params, "signal")->type, MSGPACK_OBJECT_NIL);

    memset(&a, 0, sizeof(a));
    a.id = 8;
    a.signo = 9;
    a.core = true;
    a.timed_out = true;
    a.oom = true;
    sbx_exit_pack(begin(fx), &a);
    assert_int_equal(sbx_exit_read(finish(fx), &b, &fx->err), 0);
    assert_memory_equal(&a, &b, sizeof(a));
    assert_int_equal(sbx_exit_status(&b), 137);
    assert_int_equal(sbx_obj_get(fx->m.params, "signal")->via.str.size, 7);
    assert_memory_equal(sbx_obj_get(fx->m.params, "signal")->via.str.ptr, "SIGKILL", 7);
    assert_int_equal(sbx_obj_get(fx->m.params, "code")->type, MSGPACK_OBJECT_NIL);

    /* {id: 1, pid: 2, code: nil, signo: nil}: neither is set */
    assert_int_equal(sbx_exit_read(raw_map(fx, "84a2696401a3706964"
                                               "02a4636f6465c0a57369676e6fc0"),
                                   &b, &fx->err),
                     -1);
    assert_string_equal(fx->err.code, SBX_E_BAD_MESSAGE);
    /* code 256 is out of range */
    assert_int_equal(sbx_exit_read(raw_map(fx, "84a2696401a3706964"
                                               "02a4636f6465cd0100a57369676e6fc0"),
                                   &b, &fx->err),
                     -1);
    assert_string_equal(fx->err.field, "code");
}

static void test_fileinfo(void **state)
{
    struct fx *fx = *state;
    struct sbx_fileinfo a = { .type = "symlink",
                              .size = 5,
                              .mode = 0120777,
                              .uid = 1000,
                              .gid = 100,
                              .nlink = 1,
                              .ino = 99,
                              .dev = 2049,
                              .blksize = 4096,
                              .atime_ns = -5,
                              .mtime_ns = 1700000000000000000,
                              .ctime_ns = 7,
                              .target = "\xff/x",
                              .target_len = 3 };
    struct sbx_fileinfo b;

    sbx_fileinfo_pack(begin(fx), &a);
    assert_int_equal(sbx_fileinfo_read(finish(fx), &b, &fx->err), 0);
    assert_string_equal(b.type, "symlink");
    assert_int_equal(b.mode, 0120777);
    assert_int_equal(b.atime_ns, -5);
    assert_int_equal(b.mtime_ns, 1700000000000000000);
    assert_false(b.has_birthtime);
    assert_int_equal(b.target_len, 3);
    assert_memory_equal(b.target, "\xff/x", 3);
    assert_int_equal(sbx_obj_get(fx->m.params, "target")->type, MSGPACK_OBJECT_BIN);

    a.type = "whiteout"; /* other type values are tolerated (§17.2) */
    a.target = NULL;
    a.has_birthtime = true;
    a.birthtime_ns = 42;
    sbx_fileinfo_pack(begin(fx), &a);
    assert_int_equal(sbx_fileinfo_read(finish(fx), &b, &fx->err), 0);
    assert_string_equal(b.type, "whiteout");
    assert_true(b.has_birthtime);
    assert_int_equal(b.birthtime_ns, 42);
    assert_null(b.target);
}

static void test_hello(void **state)
{
    struct fx *fx = *state;
    static const char *const caps[] = { "session", "pty", NULL };
    struct sbx_hello a = { .version = 3,
                           .min_version = 1,
                           .client = "libsbx",
                           .client_len = 6,
                           .caps = caps,
                           .token = "t0k",
                           .token_len = 3 };
    struct sbx_hello b;
    struct sbx_hello_result ra = { .version = 1,
                                   .agent = "sbx-agent",
                                   .agent_version = "0.1.0",
                                   .caps = caps,
                                   .conn = 9,
                                   .limits = { 4194304, 262144, 1048576, 4096, 1024, 64 } };
    struct sbx_hello_result rb;

    sbx_hello_pack(begin(fx), &a);
    assert_int_equal(sbx_hello_read(finish(fx), &b, &fx->err), 0);
    assert_int_equal(b.version, 3);
    assert_int_equal(b.min_version, 1);
    assert_int_equal(b.client_len, 6);
    assert_memory_equal(b.client, "libsbx", 6);
    assert_int_equal(b.capv->via.array.size, 2);
    assert_memory_equal(b.token, "t0k", 3);
    assert_int_equal(b.recv_window, 0); /* not sent: not packed */
    a.recv_window = 65536;
    sbx_hello_pack(begin(fx), &a);
    assert_int_equal(sbx_hello_read(finish(fx), &b, &fx->err), 0);
    assert_int_equal(b.recv_window, 65536);
    assert_int_equal(SBX_RECV_WINDOW_MIN, 65536);
    a.recv_window = SBX_RECV_WINDOW_MIN - 1;
    sbx_hello_pack(begin(fx), &a);
    assert_int_equal(sbx_hello_read(finish(fx), &b, &fx->err), -1);
    assert_string_equal(fx->err.field, "recv_window");
    a.recv_window = SBX_STREAM_WINDOW + 1;
    sbx_hello_pack(begin(fx), &a);
    assert_int_equal(sbx_hello_read(finish(fx), &b, &fx->err), -1);
    assert_string_equal(fx->err.field, "recv_window");

    /* {version: 0}: min_version defaults to 0, so negotiation (not this reader) refuses it */
    assert_int_equal(sbx_hello_read(raw_map(fx, "81a776657273696f6e00"), &b, &fx->err), 0);
    assert_int_equal(b.min_version, 0);
    /* {version: 1, capabilities: ["ok", 7]} */
    assert_int_equal(sbx_hello_read(raw_map(fx, "82a776657273696f6e01ac6361706162696c6974696573"
                                                "92a26f6b07"),
                                    &b, &fx->err),
                     -1);
    assert_string_equal(fx->err.code, SBX_E_BAD_PARAM);
    assert_string_equal(fx->err.field, "capabilities[1]");
    /* {version: 1, min_version: 2} */
    assert_int_equal(
        sbx_hello_read(raw_map(fx, "82a776657273696f6e01ab6d696e5f76657273696f6e02"), &b, &fx->err),
        -1);
    assert_string_equal(fx->err.field, "min_version");

    sbx_hello_result_pack(begin(fx), &ra);
    assert_int_equal(sbx_hello_result_read(finish(fx), &rb, &fx->err), 0);
    assert_int_equal(rb.version, 1);
    assert_int_equal(rb.conn, 9);
    assert_memory_equal(&rb.limits, &ra.limits, sizeof(ra.limits));
    assert_true(sbx_hello_result_has_cap(&rb, "pty"));
    assert_false(sbx_hello_result_has_cap(&rb, "pt"));
    assert_false(sbx_hello_result_has_cap(&rb, "net"));
    assert_int_equal(rb.recv_window, 0);
    ra.recv_window = 4096;
    sbx_hello_result_pack(begin(fx), &ra);
    assert_int_equal(sbx_hello_result_read(finish(fx), &rb, &fx->err), 0);
    assert_int_equal(rb.recv_window, 4096);
    ra.recv_window = 0;
    /* a limit of 0 cannot be used */
    ra.limits.chunk_max = 0;
    sbx_hello_result_pack(begin(fx), &ra);
    assert_int_equal(sbx_hello_result_read(finish(fx), &rb, &fx->err), -1);
    assert_string_equal(fx->err.field, "chunk_max");
}

static void test_spawn_result(void **state)
{
    struct fx *fx = *state;
    struct sbx_spawn_result a = { .id = 1, .pid = 77, .in = 0, .out = 1, .err = 2 };
    struct sbx_spawn_result b;

    sbx_spawn_result_pack(begin(fx), &a);
    assert_int_equal(sbx_spawn_result_read(finish(fx), &b, &fx->err), 0);
    assert_memory_equal(&a, &b, sizeof(a));
    assert_int_equal(sbx_obj_get(fx->m.params, "stdin")->type, MSGPACK_OBJECT_NIL);
    /* stdout missing */
    assert_int_equal(sbx_spawn_result_read(raw_map(fx, "84a2696401a3706964"
                                                       "02a5737464696ec0"
                                                       "a6737464657272c0"),
                                           &b, &fx->err),
                     -1);
    assert_string_equal(fx->err.field, "stdout");
    /* One stream given for two pipes: a client would wait for ever for the other's end. */
    a.err = a.out;
    sbx_spawn_result_pack(begin(fx), &a);
    assert_int_equal(sbx_spawn_result_read(finish(fx), &b, &fx->err), -1);
    assert_string_equal(fx->err.code, "BAD_MESSAGE");
    assert_string_equal(fx->err.field, "stderr");
    a = (struct sbx_spawn_result){ .id = 1, .pid = 77, .in = 3, .out = 3, .err = 0 };
    sbx_spawn_result_pack(begin(fx), &a);
    assert_int_equal(sbx_spawn_result_read(finish(fx), &b, &fx->err), -1);
    assert_string_equal(fx->err.field, "stdout");
}

static void test_stream_notes(void **state)
{
    struct fx *fx = *state;
    struct sbx_stream_note n;
    struct sbx_err e;

    sbx_out_reset(&fx->out);
    sbx_out_begin(&fx->out);
    sbx_credit_pack(&fx->out.pk, 5, 524288);
    finish(fx);
    assert_int_equal(sbx_stream_note_read("stream.credit", fx->m.params, &n, &fx->err), 0);
    assert_int_equal(n.stream, 5);
    assert_int_equal(n.bytes, 524288);

    sbx_err_sys(&e, 32, NULL, "write");
    sbx_out_reset(&fx->out);
    sbx_out_begin(&fx->out);
    sbx_end_pack(&fx->out.pk, 6, &e, true);
    finish(fx);
    assert_int_equal(sbx_stream_note_read("stream.end", fx->m.params, &n, &fx->err), 0);
    assert_true(n.has_error);
    assert_true(n.truncated);
    assert_string_equal(n.error.code, "EPIPE");
    assert_int_equal(n.error.sys_errno, 32);

    sbx_out_reset(&fx->out);
    sbx_out_begin(&fx->out);
    sbx_cancel_pack(&fx->out.pk, 7, NULL);
    finish(fx);
    assert_int_equal(sbx_stream_note_read("stream.cancel", fx->m.params, &n, &fx->err), 0);
    assert_false(n.has_error);
}

static void test_transfer_done(void **state)
{
    struct fx *fx = *state;
    struct sbx_transfer_done a = {
        .stream = 3, .has_size = true, .size = 10, .has_files = true, .files = 2
    };
    struct sbx_transfer_done b;
    struct sbx_err e;

    memset(a.sha256, 'a', 64);
    sbx_out_reset(&fx->out);
    sbx_out_begin(&fx->out);
    sbx_transfer_done_pack(&fx->out.pk, &a, NULL);
    finish(fx);
    assert_int_equal(sbx_transfer_done_read(fx->m.params, &b, &fx->err), 0);
    assert_false(b.failed);
    assert_int_equal(b.size, 10);
    assert_int_equal(b.files, 2);
    assert_string_equal(b.sha256, a.sha256);

    sbx_err_param(&e, "size", "want 10 bytes, got 9");
    sbx_out_reset(&fx->out);
    sbx_out_begin(&fx->out);
    sbx_transfer_done_pack(&fx->out.pk, &a, &e);
    finish(fx);
    assert_int_equal(sbx_transfer_done_read(fx->m.params, &b, &fx->err), 0);
    assert_true(b.failed);
    assert_string_equal(b.error.field, "size");
    assert_false(b.has_size);
}

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* proc.spawn params (§14.2, §15.1): every field round trips; each rule names its field. */
static void test_spawn_params(void **state)
{
    static const char *const argv[] = { "a", "b", NULL };
    static const char *const env[] = { "K=V", "GONE", NULL };
    static const uint32_t groups[] = { 1, 2, 3 };
    struct fx *fx = *state;
    struct sbx_pty_params pty = { 0, 90, NULL, 0 };
    struct sbx_spawn_params p = { 0 }, q;
    static const struct {
        const char *hex, *field;
    } bad[] = {
        { "80", "argv" },                                                       /* neither */
        { "82 a4 61 72 67 76 91 a1 61 a7 63 6f 6d 6d 61 6e 64 a1 62", "argv" }, /* both */
        { "81 a4 61 72 67 76 90", "argv" },                                     /* empty */
        { "81 a4 61 72 67 76 92 a1 61 05", "argv[1]" },                         /* not a bstr */
        { "81 a4 61 72 67 76 91 c4 03 61 00 62", "argv[0]" },                   /* NUL */
        { "81 a7 63 6f 6d 6d 61 6e 64 05", "command" },
        { "82 a7 63 6f 6d 6d 61 6e 64 a1 61 a3 65 6e 76 81 a3 41 3d 42 c0", "env" },
        { "82 a7 63 6f 6d 6d 61 6e 64 a1 61 a3 65 6e 76 81 a1 41 c4 02 78 00", "env" },
        { "82 a7 63 6f 6d 6d 61 6e 64 a1 61 a3 63 77 64 07", "cwd" },
        { "82 a7 63 6f 6d 6d 61 6e 64 a1 61 a9 63 6c 65 61 72 5f 65 6e 76 01", "clear_env" },
        { "83 a7 63 6f 6d 6d 61 6e 64 a1 61 a4 75 73 65 72 a1 75 a3 75 69 64 01", "uid" },
        { "82 a7 63 6f 6d 6d 61 6e 64 a1 61 a3 75 69 64 ce ff ff ff ff", "uid" },
        { "82 a7 63 6f 6d 6d 61 6e 64 a1 61 a3 67 69 64 a1 78", "gid" },
        { "82 a7 63 6f 6d 6d 61 6e 64 a1 61 a5 73 74 64 69 6e a6 73 74 64 6f 75 74", "stdin" },
        { "82 a7 63 6f 6d 6d 61 6e 64 a1 61 a6 73 74 64 6f 75 74 a6 73 74 64 6f 75 74", "stdout" },
        { "82 a7 63 6f 6d 6d 61 6e 64 a1 61 a3 70 74 79 81 a4 72 6f 77 73 00", "pty.rows" },
        { "82 a7 63 6f 6d 6d 61 6e 64 a1 61 a3 70 74 79 81 a4 72 6f 77 73 a1 78", "pty.rows" },
        { "82 a7 63 6f 6d 6d 61 6e 64 a1 61 a3 70 74 79 81 a4 63 6f 6c 73 ce 00 01 00 00",
          "pty.cols" },
        /* term "xtérm": not ASCII (§15.1) */
        { "82 a7 63 6f 6d 6d 61 6e 64 a1 61 a3 70 74 79 81 a4 74 65 72 6d a6 78 74 c3 a9 72 6d",
          "pty.term" },
        { "82 a7 63 6f 6d 6d 61 6e 64 a1 61 a3 70 74 79 05", "pty" },
        { "82 a7 63 6f 6d 6d 61 6e 64 a1 61 ab 6b 69 6c 6c 5f 73 69 67 6e 61 6c a3 46 4f 4f",
          "kill_signal" },
        { "82 a7 63 6f 6d 6d 61 6e 64 a1 61 ab 6b 69 6c 6c 5f 73 69 67 6e 61 6c 41",
          "kill_signal" }, /* 65 */
        { "82 a7 63 6f 6d 6d 61 6e 64 a1 61 a6 67 72 6f 75 70 73 92 01 ff", "groups[1]" },
        { "82 a7 63 6f 6d 6d 61 6e 64 a1 61 aa 74 69 6d 65 6f 75 74 5f 6d 73 00", "timeout_ms" },
        { "82 a7 63 6f 6d 6d 61 6e 64 a1 61 a8 64 72 61 69 6e 5f 6d 73 cd ea 61", "drain_ms" },
        { "82 a7 63 6f 6d 6d 61 6e 64 a1 61 a3 74 61 67 c4 01 78", "tag" }, /* bin: a str */
        /* memory_max 4096: below 1 MiB; pids_max 0; cpu_max 100001 (§14.10) */
        { "82 a7 63 6f 6d 6d 61 6e 64 a1 61 aa 6d 65 6d 6f 72 79 5f 6d 61 78 cd 10 00",
          "memory_max" },
        { "82 a7 63 6f 6d 6d 61 6e 64 a1 61 a8 70 69 64 73 5f 6d 61 78 00", "pids_max" },
        { "82 a7 63 6f 6d 6d 61 6e 64 a1 61 a7 63 70 75 5f 6d 61 78 ce 00 01 86 a1", "cpu_max" },
    };
    char hex[256];

    p.argv = argv;
    p.env = env;
    p.clear_env = true;
    p.cwd = "/w";
    p.user = "bob";
    p.has_gid = true;
    p.gid = 7;
    p.has_groups = true;
    p.groups = groups;
    p.ngroups = 3;
    p.stdin_mode = SBX_STDIO_NULL;
    p.stdout_mode = SBX_STDIO_PIPE;
    p.stderr_mode = SBX_STDIO_STDOUT;
    p.timeout_ms = 99;
    p.kill_signal = 15;
    p.has_kill_grace_ms = true;
    p.kill_grace_ms = 60000;
    p.has_drain_ms = true;
    p.drain_ms = 1;
    p.pty = &pty;
    p.tag = "tag";
    p.memory_max = 64u << 20;
    p.pids_max = 100;
    p.cpu_max = 50;
    sbx_spawn_params_pack(begin(fx), &p);
    assert_int_equal(sbx_spawn_params_read(finish(fx), &q, &fx->err), 0);
    assert_int_equal(q.argvv->via.array.size, 2);
    assert_null(q.command);
    assert_int_equal(q.envv->via.map.size, 2);
    assert_int_equal(q.envv->via.map.ptr[1].val.type, MSGPACK_OBJECT_NIL); /* "GONE": remove */
    assert_true(q.clear_env);
    assert_int_equal(q.cwd_len, 2);
    assert_memory_equal(q.cwd, "/w", 2);
    assert_int_equal(q.user_len, 3);
    assert_memory_equal(q.user, "bob", 3);
    assert_false(q.has_uid);
    assert_true(q.has_gid && q.gid == 7);
    assert_true(q.has_groups);
    assert_int_equal(q.ngroups, 3);
    assert_int_equal(q.groupsv->via.array.ptr[2].via.u64, 3);
    assert_int_equal(q.stdin_mode, SBX_STDIO_NULL);
    assert_int_equal(q.stdout_mode, SBX_STDIO_PIPE);
    assert_int_equal(q.stderr_mode, SBX_STDIO_STDOUT);
    assert_int_equal(q.timeout_ms, 99);
    assert_int_equal(q.kill_signal, 15);
    assert_true(q.has_kill_grace_ms && q.kill_grace_ms == 60000);
    assert_true(q.has_drain_ms && q.drain_ms == 1);
    assert_ptr_equal(q.pty, &q.pty_buf);
    assert_int_equal(q.pty->rows, 0);
    assert_int_equal(q.pty->cols, 90);
    assert_null(q.pty->term);
    assert_int_equal(q.tag_len, 3);
    assert_memory_equal(q.tag, "tag", 3);
    assert_int_equal(q.memory_max, 64u << 20);
    assert_int_equal(q.pids_max, 100);
    assert_int_equal(q.cpu_max, 50);

    /* A zeroed struct with command packs only the command, and reads back with the defaults. */
    memset(&p, 0, sizeof(p));
    p.command = "echo hi";
    sbx_spawn_params_pack(begin(fx), &p);
    assert_int_equal(finish(fx)->via.map.size, 1);
    assert_int_equal(sbx_spawn_params_read(fx->m.params, &q, &fx->err), 0);
    assert_int_equal(q.command_len, 7);
    assert_null(q.argvv);
    assert_null(q.envv);
    assert_null(q.pty);
    assert_true(q.stdin_mode == SBX_STDIO_DEFAULT && q.stderr_mode == SBX_STDIO_DEFAULT);
    assert_false(q.has_uid || q.has_gid || q.has_groups || q.has_drain_ms);
    assert_int_equal(q.kill_signal, 0);
    assert_true(q.memory_max == 0 && q.pids_max == 0 && q.cpu_max == 0);

    /* command form, kill_signal by name; gid alone and stderr "stdout" with stdout "null" are
     * valid (§14.2) */
    assert_int_equal(sbx_spawn_params_read(raw_map(fx, "82a7636f6d6d616e64a161ab6b696c6c5f736967"
                                                       "6e616ca4"
                                                       "4b494c4c"),
                                           &q, &fx->err),
                     0);
    assert_int_equal(q.kill_signal, 9);
    assert_int_equal(sbx_spawn_params_read(raw_map(fx, "82a7636f6d6d616e64a161ab6b696c6c5f736967"
                                                       "6e616ca7"
                                                       "7369676b696c6c"),
                                           &q, &fx->err),
                     0);
    assert_int_equal(q.kill_signal, 9);
    assert_int_equal(
        sbx_spawn_params_read(raw_map(fx, "82a7636f6d6d616e64a161a367696405"), &q, &fx->err), 0);
    assert_true(q.has_gid && q.gid == 5 && !q.has_uid && q.user == NULL);
    assert_int_equal(sbx_spawn_params_read(raw_map(fx, "83a7636f6d6d616e64a161a6737464657272a673"
                                                       "74646f7574a67374646f7574a46e756c6c"),
                                           &q, &fx->err),
                     0);
    assert_int_equal(q.stderr_mode, SBX_STDIO_STDOUT);
    assert_int_equal(q.stdout_mode, SBX_STDIO_NULL);

    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        size_t n = 0;
        for (const char *h = bad[i].hex; *h != '\0'; h++) {
            if (*h != ' ') {
                hex[n++] = *h;
            }
        }
        hex[n] = '\0';
        if (sbx_spawn_params_read(raw_map(fx, hex), &q, &fx->err) != -1) {
            fail_msg("bad spawn params %zu accepted", i);
        }
        assert_string_equal(fx->err.code, SBX_E_BAD_PARAM);
        assert_string_equal(fx->err.field, bad[i].field);
    }
}

/* The string caps of §23: user 256 bytes, cwd a 4096-byte path, tag 256, pty.term 64. */
static void test_spawn_params_caps(void **state)
{
    static const struct {
        const char *key;
        size_t max;
    } caps[] = { { "user", 256 }, { "cwd", 4096 }, { "tag", 256 }, { "term", 64 } };
    struct fx *fx = *state;
    struct sbx_spawn_params q;
    static char buf[4097];

    memset(buf, 'u', sizeof(buf));
    for (size_t i = 0; i < ARRAY_SIZE(caps); i++) {
        for (size_t n = caps[i].max; n <= caps[i].max + 1; n++) {
            msgpack_packer *pk = begin(fx);
            bool pty = strcmp(caps[i].key, "term") == 0;
            (void)msgpack_pack_map(pk, 2);
            sbx_pack_kv_str(pk, "command", "true");
            if (pty) {
                sbx_pack_cstr(pk, "pty");
                (void)msgpack_pack_map(pk, 1);
            }
            sbx_pack_cstr(pk, caps[i].key);
            sbx_pack_bstr(pk, buf, n); /* valid UTF-8: a str */
            int r = sbx_spawn_params_read(finish(fx), &q, &fx->err);
            if (n == caps[i].max) {
                assert_int_equal(r, 0);
            } else {
                assert_int_equal(r, -1);
                assert_string_equal(fx->err.field, pty ? "pty.term" : caps[i].key);
            }
        }
    }
}

/* repl.start's share of the spawn params (§16.2): no argv needed, the same rules. */
static void test_spawn_identity(void **state)
{
    struct fx *fx = *state;
    struct sbx_spawn_params q;

    /* {env: {A: "1"}, cwd: "/w", user: "bob", tag: "x"}: tag is not read */
    assert_int_equal(sbx_spawn_identity_read(raw_map(fx, "84a3656e7681a141a131a3637764a22f77a475"
                                                         "736572a3626f62a3746167a178"),
                                             &q, &fx->err),
                     0);
    assert_int_equal(q.envv->via.map.size, 1);
    assert_memory_equal(q.cwd, "/w", 2);
    assert_memory_equal(q.user, "bob", 3);
    assert_null(q.tag);
    assert_null(q.argvv);
    /* {user: "bob", uid: 1} */
    assert_int_equal(
        sbx_spawn_identity_read(raw_map(fx, "82a475736572a3626f62a375696401"), &q, &fx->err), -1);
    assert_string_equal(fx->err.code, SBX_E_BAD_PARAM);
    assert_string_equal(fx->err.field, "uid");
}

/* One-stream results, repl.eval's streams, pack.create's result. */
static void test_stream_results(void **state)
{
    struct fx *fx = *state;
    struct sbx_stream_result r = { 9, true, 10, 0644 }, s;
    struct sbx_eval_streams ev;
    struct sbx_pack_result pr;

    sbx_stream_result_pack(begin(fx), &r);
    assert_int_equal(sbx_stream_result_read(finish(fx), true, &s, &fx->err), 0);
    assert_true(s.stream == 9 && s.has_size && s.size == 10 && s.mode == 0644);
    assert_int_equal(sbx_stream_result_read(fx->m.params, false, &s, &fx->err), 0);
    assert_false(s.has_size);
    assert_int_equal(sbx_eval_streams_read(fx->m.params, &ev, &fx->err), -1);
    assert_string_equal(fx->err.code, SBX_E_BAD_MESSAGE);
    assert_int_equal(sbx_pack_result_read(fx->m.params, &pr, &fx->err), -1);
    assert_string_equal(fx->err.code, SBX_E_BAD_MESSAGE);
    /* {stream: 9} without size: transfer.download's result needs it */
    r.has_size = false;
    sbx_stream_result_pack(begin(fx), &r);
    assert_int_equal(sbx_stream_result_read(finish(fx), true, &s, &fx->err), -1);
    assert_string_equal(fx->err.field, "size");
    /* {stream: 0}: not a sid */
    assert_int_equal(sbx_stream_result_read(raw_map(fx, "81a673747265616d00"), false, &s, &fx->err),
                     -1);
    assert_string_equal(fx->err.field, "stream");

    /* {id: 1, archive: 5, build_stdout: 6} */
    assert_int_equal(sbx_pack_result_read(raw_map(fx, "83a2696401a7617263686976650"
                                                      "5ac6275696c645f7374646f757406"),
                                          &pr, &fx->err),
                     0);
    assert_int_equal(pr.id, 1);
    assert_int_equal(pr.archive, 5);
    assert_int_equal(pr.build_out, 6);
    assert_int_equal(pr.build_err, 0);
    /* {eval: 3, stdout: 4, stderr: 5} */
    assert_int_equal(sbx_eval_streams_read(raw_map(fx, "83a46576616c03a67374646f757404a673746465"
                                                       "72720"
                                                       "5"),
                                           &ev, &fx->err),
                     0);
    assert_true(ev.eval == 3 && ev.out == 4 && ev.err == 5);

    /* The pack side of both, read back. */
    ev = (struct sbx_eval_streams){ 7, 8, 9 };
    sbx_eval_streams_pack(begin(fx), &ev);
    memset(&ev, 0, sizeof(ev));
    assert_int_equal(sbx_eval_streams_read(finish(fx), &ev, &fx->err), 0);
    assert_true(ev.eval == 7 && ev.out == 8 && ev.err == 9);
    pr = (struct sbx_pack_result){ 2, 3, 4, 5 };
    sbx_pack_result_pack(begin(fx), &pr);
    memset(&pr, 0, sizeof(pr));
    assert_int_equal(sbx_pack_result_read(finish(fx), &pr, &fx->err), 0);
    assert_true(pr.id == 2 && pr.build_out == 3 && pr.build_err == 4 && pr.archive == 5);
    pr = (struct sbx_pack_result){ 2, 0, 0, 5 }; /* no build: no build streams */
    sbx_pack_result_pack(begin(fx), &pr);
    assert_int_equal(sbx_pack_result_read(finish(fx), &pr, &fx->err), 0);
    assert_null(sbx_obj_get(fx->m.params, "build_stdout"));
    assert_int_equal(pr.archive, 5);
    /* The same stream twice in one result. */
    ev = (struct sbx_eval_streams){ 7, 8, 8 };
    sbx_eval_streams_pack(begin(fx), &ev);
    assert_int_equal(sbx_eval_streams_read(finish(fx), &ev, &fx->err), -1);
    assert_string_equal(fx->err.field, "stderr");
    pr = (struct sbx_pack_result){ 2, 3, 4, 3 };
    sbx_pack_result_pack(begin(fx), &pr);
    assert_int_equal(sbx_pack_result_read(finish(fx), &pr, &fx->err), -1);
    assert_string_equal(fx->err.field, "archive");
}

/* The debug-build check of outgoing frames refuses what breaks a record. */
/* Field by field: the structs have padding. */
static void assert_attach_params_equal(const struct sbx_attach_params *a,
                                       const struct sbx_attach_params *b)
{
    assert_int_equal(a->id, b->id);
    assert_int_equal(a->has_from, b->has_from);
    assert_int_equal(a->from, b->from);
    assert_int_equal(a->has_stderr_from, b->has_stderr_from);
    assert_int_equal(a->stderr_from, b->stderr_from);
    assert_int_equal(a->stdin, b->stdin);
    assert_int_equal(a->steal, b->steal);
}

static void assert_attach_result_equal(const struct sbx_attach_result *a,
                                       const struct sbx_attach_result *b)
{
    assert_int_equal(a->stdin_sid, b->stdin_sid);
    assert_int_equal(a->stdout_sid, b->stdout_sid);
    assert_int_equal(a->stderr_sid, b->stderr_sid);
    assert_int_equal(a->has_stdout_start, b->has_stdout_start);
    assert_int_equal(a->has_stderr_start, b->has_stderr_start);
    assert_int_equal(a->stdout_start, b->stdout_start);
    assert_int_equal(a->stderr_start, b->stderr_start);
    assert_int_equal(a->stdout_dropped, b->stdout_dropped);
    assert_int_equal(a->stderr_dropped, b->stderr_dropped);
}

static void test_attach_params(void **state)
{
    struct fx *fx = *state;
    struct sbx_attach_params a = { .id = 9,
                                   .has_from = true,
                                   .from = 1ull << 40,
                                   .has_stderr_from = true,
                                   .stderr_from = 0,
                                   .stdin = false,
                                   .steal = true };
    struct sbx_attach_params b;

    sbx_attach_params_pack(begin(fx), &a);
    assert_int_equal(sbx_attach_params_read(finish(fx), &b, &fx->err), 0);
    assert_attach_params_equal(&a, &b);

    /* Only id: every default, stdin true. */
    memset(&a, 0, sizeof(a));
    a.id = 3;
    a.stdin = true;
    sbx_attach_params_pack(begin(fx), &a);
    assert_int_equal(sbx_attach_params_read(finish(fx), &b, &fx->err), 0);
    assert_int_equal(fx->m.params->via.map.size, 1);
    assert_attach_params_equal(&a, &b);

    /* {} : id missing */
    assert_int_equal(sbx_attach_params_read(raw_map(fx, "80"), &b, &fx->err), -1);
    assert_string_equal(fx->err.code, "BAD_PARAM");
    assert_string_equal(fx->err.field, "id");
    /* {id: 1, from: -1} */
    assert_int_equal(sbx_attach_params_read(raw_map(fx, "82a2696401a466726f6dff"), &b, &fx->err),
                     -1);
    assert_string_equal(fx->err.field, "from");
    /* {id: 1, stdin: 1} */
    assert_int_equal(sbx_attach_params_read(raw_map(fx, "82a2696401a5737464696e01"), &b, &fx->err),
                     -1);
    assert_string_equal(fx->err.field, "stdin");
    /* {id: 4294967296} */
    assert_int_equal(
        sbx_attach_params_read(raw_map(fx, "81a26964cf0000000100000000"), &b, &fx->err), -1);
    assert_string_equal(fx->err.field, "id");
}

static void test_attach_result(void **state)
{
    struct fx *fx = *state;
    struct sbx_attach_result a = { .stdin_sid = 4,
                                   .stdout_sid = 5,
                                   .stderr_sid = 6,
                                   .has_stdout_start = true,
                                   .has_stderr_start = true,
                                   .stdout_start = 1000,
                                   .stderr_start = 7,
                                   .stdout_dropped = 900,
                                   .stderr_dropped = 0 };
    struct sbx_attach_result b;

    sbx_attach_result_pack(begin(fx), &a);
    assert_int_equal(sbx_attach_result_read(finish(fx), &b, &fx->err), 0);
    assert_attach_result_equal(&a, &b);

    /* Everything nil (a process without pipes). */
    memset(&a, 0, sizeof(a));
    sbx_attach_result_pack(begin(fx), &a);
    assert_int_equal(sbx_attach_result_read(finish(fx), &b, &fx->err), 0);
    assert_attach_result_equal(&a, &b);
    assert_int_equal(sbx_obj_get(fx->m.params, "stdout_start")->type, MSGPACK_OBJECT_NIL);
    assert_int_equal(sbx_obj_get(fx->m.params, "stdout_dropped")->type,
                     MSGPACK_OBJECT_POSITIVE_INTEGER);

    /* A stdout stream without its start offset. */
    a.stdout_sid = 2;
    sbx_attach_result_pack(begin(fx), &a);
    assert_int_equal(sbx_attach_result_read(finish(fx), &b, &fx->err), -1);
    assert_string_equal(fx->err.code, "BAD_MESSAGE");
    assert_string_equal(fx->err.field, "stdout_start");
    /* The same stream for stdout and stderr. */
    a.has_stdout_start = a.has_stderr_start = true;
    a.stderr_sid = 2;
    sbx_attach_result_pack(begin(fx), &a);
    assert_int_equal(sbx_attach_result_read(finish(fx), &b, &fx->err), -1);
    assert_string_equal(fx->err.field, "stderr");
    /* {stdin: nil, stdout: 0, ...}: a sid is never 0 */
    assert_int_equal(sbx_attach_result_read(raw_map(fx, "83a5737464696ec0a67374646f757400"
                                                        "a6737464657272c0"),
                                            &b, &fx->err),
                     -1);
    assert_string_equal(fx->err.field, "stdout");
    /* stderr missing */
    assert_int_equal(
        sbx_attach_result_read(raw_map(fx, "82a5737464696ec0a67374646f7574c0"), &b, &fx->err), -1);
    assert_string_equal(fx->err.field, "stderr");
}

static void test_net_connect(void **state)
{
    struct fx *fx = *state;
    struct sbx_net_connect_params a = { .host = "::1", .port = 8080, .timeout_ms = 250 };
    struct sbx_net_connect_params b;
    struct sbx_net_connect_result ra = { .in = 3, .out = 4 }, rb;

    sbx_net_connect_params_pack(begin(fx), &a);
    assert_int_equal(sbx_net_connect_params_read(finish(fx), &b, &fx->err), 0);
    assert_int_equal(b.port, 8080);
    assert_int_equal(b.timeout_ms, 250);
    assert_int_equal(b.host_len, 3);
    assert_memory_equal(b.host, "::1", 3);

    /* Defaults: only the port goes out; host NULL, timeout 0 after the read. */
    memset(&a, 0, sizeof(a));
    a.port = 1;
    sbx_net_connect_params_pack(begin(fx), &a);
    assert_int_equal(sbx_net_connect_params_read(finish(fx), &b, &fx->err), 0);
    assert_int_equal(fx->m.params->via.map.size, 1);
    assert_null(b.host);
    assert_int_equal(b.timeout_ms, 0);
    assert_int_equal(b.port, 1);

    /* {port: 0} */
    assert_int_equal(sbx_net_connect_params_read(raw_map(fx, "81a4706f727400"), &b, &fx->err), -1);
    assert_string_equal(fx->err.code, "BAD_PARAM");
    assert_string_equal(fx->err.field, "port");
    /* {port: 65536} */
    assert_int_equal(
        sbx_net_connect_params_read(raw_map(fx, "81a4706f7274ce00010000"), &b, &fx->err), -1);
    assert_string_equal(fx->err.field, "port");
    /* {} */
    assert_int_equal(sbx_net_connect_params_read(raw_map(fx, "80"), &b, &fx->err), -1);
    assert_string_equal(fx->err.field, "port");
    /* {port: 80, host: "\xff"}: not UTF-8 */
    assert_int_equal(
        sbx_net_connect_params_read(raw_map(fx, "82a4706f727450a4686f7374a1ff"), &b, &fx->err), -1);
    assert_string_equal(fx->err.field, "host");
    /* {port: 80, host: 1} */
    assert_int_equal(
        sbx_net_connect_params_read(raw_map(fx, "82a4706f727450a4686f737401"), &b, &fx->err), -1);
    assert_string_equal(fx->err.field, "host");
    /* {port: 80, timeout_ms: 4294967296} */
    assert_int_equal(
        sbx_net_connect_params_read(
            raw_map(fx, "82a4706f727450aa74696d656f75745f6d73cf0000000100000000"), &b, &fx->err),
        -1);
    assert_string_equal(fx->err.field, "timeout_ms");
    /* host of 256 bytes */
    {
        char host[257];
        memset(host, 'a', 256);
        host[256] = '\0';
        a.host = host;
        sbx_net_connect_params_pack(begin(fx), &a);
        assert_int_equal(sbx_net_connect_params_read(finish(fx), &b, &fx->err), -1);
        assert_string_equal(fx->err.field, "host");
        host[255] = '\0';
        sbx_net_connect_params_pack(begin(fx), &a);
        assert_int_equal(sbx_net_connect_params_read(finish(fx), &b, &fx->err), 0);
        assert_int_equal(b.host_len, 255);
    }

    sbx_net_connect_result_pack(begin(fx), &ra);
    assert_int_equal(sbx_net_connect_result_read(finish(fx), &rb, &fx->err), 0);
    assert_memory_equal(&ra, &rb, sizeof(ra));
    /* {in: 1}: out missing */
    assert_int_equal(sbx_net_connect_result_read(raw_map(fx, "81a2696e01"), &rb, &fx->err), -1);
    assert_string_equal(fx->err.code, "BAD_MESSAGE");
    assert_string_equal(fx->err.field, "out");
}

static void test_listening(void **state)
{
    struct fx *fx = *state;
    struct sbx_listening a = {
        .proto = "tcp6", .addr = "::", .port = 22, .has_pid = true, .pid = 123
    };
    struct sbx_listening b;

    sbx_listening_pack(begin(fx), &a);
    assert_int_equal(sbx_listening_read(finish(fx), &b, &fx->err), 0);
    assert_int_equal(b.proto_len, 4);
    assert_memory_equal(b.proto, "tcp6", 4);
    assert_int_equal(b.addr_len, 2);
    assert_memory_equal(b.addr, "::", 2);
    assert_int_equal(b.port, 22);
    assert_true(b.has_pid);
    assert_int_equal(b.pid, 123);

    a.has_pid = false;
    a.proto = "udp";
    sbx_listening_pack(begin(fx), &a);
    assert_int_equal(sbx_listening_read(finish(fx), &b, &fx->err), 0);
    assert_int_equal(sbx_obj_get(fx->m.params, "pid")->type, MSGPACK_OBJECT_NIL);
    assert_false(b.has_pid);
    assert_int_equal(b.pid, 0);

    /* {proto: "tcp", addr: "::", port: 65536} */
    assert_int_equal(sbx_listening_read(raw_map(fx, "83a570726f746fa3746370a461646472a23a3a"
                                                    "a4706f7274ce00010000"),
                                        &b, &fx->err),
                     -1);
    assert_string_equal(fx->err.code, "BAD_MESSAGE");
    assert_string_equal(fx->err.field, "port");
    /* addr missing */
    assert_int_equal(
        sbx_listening_read(raw_map(fx, "82a570726f746fa3746370a4706f727416"), &b, &fx->err), -1);
    assert_string_equal(fx->err.field, "addr");
}

static void test_schema_check(void **state)
{
    struct fx *fx = *state;
    /* [2, "proc.exit", {}] */
    static const uint8_t exit_empty[] = { 0x93, 0x02, 0xa9, 'p', 'r', 'o', 'c',
                                          '.',  'e',  'x',  'i', 't', 0x80 };
    /* [1, 1, {code: "X"}, nil]: no message */
    static const uint8_t err_nomsg[] = { 0x94, 0x01, 0x01, 0x81, 0xa4, 'c',
                                         'o',  'd',  'e',  0xa1, 'X',  0xc0 };
    /* [2, "unknown.note", {}]: not ours to judge */
    static const uint8_t other[] = { 0x93, 0x02, 0xa4, 'x', '.', 'y', 'z', 0x80 };

    assert_int_equal(sbx_schema_check(exit_empty, sizeof(exit_empty), &fx->err), -1);
    assert_int_equal(sbx_schema_check(err_nomsg, sizeof(err_nomsg), &fx->err), -1);
    assert_int_equal(sbx_schema_check(other, sizeof(other), &fx->err), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_exit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fileinfo, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hello, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spawn_result, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_notes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_transfer_done, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spawn_params, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spawn_params_caps, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spawn_identity, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_results, setup, teardown),
        cmocka_unit_test_setup_teardown(test_attach_params, setup, teardown),
        cmocka_unit_test_setup_teardown(test_attach_result, setup, teardown),
        cmocka_unit_test_setup_teardown(test_net_connect, setup, teardown),
        cmocka_unit_test_setup_teardown(test_listening, setup, teardown),
        cmocka_unit_test_setup_teardown(test_schema_check, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
