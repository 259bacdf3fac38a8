/* Unit tests: every schema record's pack/read round trip, and its reader's checks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sbx/schema.h"

struct fx {
    struct sbx_decoder dec;
    struct sbx_out out;
    struct sbx_msg m;
    struct sbx_err err;
};

static int setup(void **state)
{
    struct fx *fx = calloc(1, sizeof(*fx));

    if (fx == NULL || sbx_decoder_init(&fx->dec) != 0) {
        return -1;
    }
    sbx_out_init(&fx->out);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;

    sbx_decoder_destroy(&fx->dec);
    sbx_out_destroy(&fx->out);
    free(fx);
    return 0;
}

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

/* The debug-build check of outgoing frames refuses what breaks a record. */
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
        cmocka_unit_test_setup_teardown(test_schema_check, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
