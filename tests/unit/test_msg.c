/* Unit tests: message decode/encode, the validating pre-scan, params accessors. */
#include <malloc.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "msgfx.h"
#include "sbx/frame.h"
#include "sbx/msg.h"

/* Decode the single frame in fx->out (skipping its length prefix, which is checked). */
static int decode_out(struct fx *fx)
{
    const uint8_t *p = (const uint8_t *)fx->out.sb.data;
    uint32_t len = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];

    assert_int_equal(len + 4, fx->out.sb.size);
    return sbx_msg_decode(&fx->dec, p + 4, len, &fx->m, &fx->err);
}

static int decode_raw(struct fx *fx, const void *buf, size_t len)
{
    return sbx_msg_decode(&fx->dec, buf, len, &fx->m, &fx->err);
}

static void test_request_roundtrip(void **state)
{
    struct fx *fx = *state;
    const char *s;
    size_t n;
    uint64_t v;

    sbx_out_begin(&fx->out);
    sbx_pack_request_head(&fx->out.pk, 4000000000u, "proc.spawn");
    msgpack_pack_map(&fx->out.pk, 2);
    sbx_pack_kv_str(&fx->out.pk, "command", "echo hi");
    sbx_pack_kv_u64(&fx->out.pk, "timeout_ms", 1500);
    assert_int_equal(sbx_out_end(&fx->out, &fx->err), 0);

    assert_int_equal(decode_out(fx), 0);
    assert_int_equal(fx->m.kind, SBX_MSG_REQUEST);
    assert_int_equal(fx->m.id, 4000000000u);
    assert_true(fx->m.id_valid);
    assert_true(sbx_msg_method_is(&fx->m, "proc.spawn"));
    assert_false(sbx_msg_method_is(&fx->m, "proc.spaw"));
    assert_int_equal(sbx_param_str(fx->m.params, "command", SBX_REQUIRED, 100, &s, &n, &fx->err),
                     0);
    assert_int_equal(n, 7);
    assert_memory_equal(s, "echo hi", 7);
    assert_int_equal(
        sbx_param_u64(fx->m.params, "timeout_ms", SBX_REQUIRED, 0, 10000, &v, &fx->err), 0);
    assert_int_equal(v, 1500);
}

static void test_response_roundtrip(void **state)
{
    struct fx *fx = *state;
    struct sbx_err e, back;

    sbx_out_begin(&fx->out);
    sbx_pack_response_head(&fx->out.pk, 7);
    msgpack_pack_map(&fx->out.pk, 1);
    sbx_pack_kv_u64(&fx->out.pk, "pid", 42);
    assert_int_equal(sbx_out_end(&fx->out, &fx->err), 0);
    assert_int_equal(decode_out(fx), 0);
    assert_int_equal(fx->m.kind, SBX_MSG_RESPONSE);
    assert_int_equal(fx->m.id, 7);
    assert_null(fx->m.error);
    assert_non_null(sbx_obj_get(fx->m.result, "pid"));

    sbx_out_reset(&fx->out);
    sbx_err_sys(&e, 2, "cwd", "chdir \"%s\"", "/nope");
    strcpy(e.field, "cwd");
    sbx_out_begin(&fx->out);
    sbx_pack_error_response(&fx->out.pk, 8, &e);
    assert_int_equal(sbx_out_end(&fx->out, &fx->err), 0);
    assert_int_equal(decode_out(fx), 0);
    assert_int_equal(fx->m.kind, SBX_MSG_RESPONSE);
    assert_non_null(fx->m.error);
    sbx_err_from_obj(fx->m.error, &back);
    assert_string_equal(back.code, "ENOENT");
    assert_string_equal(back.stage, "cwd");
    assert_string_equal(back.field, "cwd");
    assert_int_equal(back.sys_errno, 2);
    assert_string_equal(back.msg, e.msg);
    assert_string_equal(back.path, ""); /* no path: no "path" key */
    assert_null(sbx_obj_get(fx->m.error, "path"));

    /* A file-system error carries its path, as bin when it is not UTF-8. */
    sbx_out_reset(&fx->out);
    sbx_err_sys(&e, 13, NULL, "open \"%s\"", "/x");
    sbx_err_set_path(&e, "/srv/caf\xe9");
    sbx_out_begin(&fx->out);
    sbx_pack_error_response(&fx->out.pk, 9, &e);
    assert_int_equal(sbx_out_end(&fx->out, &fx->err), 0);
    assert_int_equal(decode_out(fx), 0);
    assert_int_equal(sbx_obj_get(fx->m.error, "path")->type, MSGPACK_OBJECT_BIN);
    sbx_err_from_obj(fx->m.error, &back);
    assert_string_equal(back.code, "EACCES");
    assert_string_equal(back.path, "/srv/caf\xe9");
    /* sbx_err_clear forgets the path with the rest. */
    sbx_err_set(&back, SBX_E_INTERNAL, "x");
    assert_string_equal(back.path, "");
}

static void test_notify_roundtrip(void **state)
{
    struct fx *fx = *state;
    bool b;

    sbx_out_begin(&fx->out);
    sbx_pack_notify_head(&fx->out.pk, "stream.end");
    msgpack_pack_map(&fx->out.pk, 2);
    sbx_pack_kv_u64(&fx->out.pk, "stream", 3);
    sbx_pack_kv_bool(&fx->out.pk, "truncated", true);
    assert_int_equal(sbx_out_end(&fx->out, &fx->err), 0);
    assert_int_equal(decode_out(fx), 0);
    assert_int_equal(fx->m.kind, SBX_MSG_NOTIFY);
    assert_true(sbx_msg_method_is(&fx->m, "stream.end"));
    assert_int_equal(sbx_param_bool(fx->m.params, "truncated", SBX_REQUIRED, &b, &fx->err), 0);
    assert_true(b);
}

static void test_data_roundtrip(void **state)
{
    struct fx *fx = *state;
    static const uint32_t streams[] = { 1, 127, 128, 255, 256, 65535, 65536, UINT32_MAX };
    static const uint32_t lens[] = { 1, 255, 256, 65535, 65536, SBX_STREAM_CHUNK_MAX };
    uint8_t *frame = malloc(SBX_STREAM_DATA_HDR_MAX + SBX_STREAM_CHUNK_MAX);

    assert_non_null(frame);
    for (size_t si = 0; si < sizeof(streams) / sizeof(streams[0]); si++) {
        for (size_t li = 0; li < sizeof(lens) / sizeof(lens[0]); li++) {
            size_t h = sbx_data_header(frame, streams[si], lens[li]);
            uint32_t flen = (uint32_t)frame[0] << 24 | (uint32_t)frame[1] << 16 |
                            (uint32_t)frame[2] << 8 | frame[3];
            assert_true(h <= SBX_STREAM_DATA_HDR_MAX);
            assert_int_equal(flen, h - 4 + lens[li]);
            memset(frame + h, (int)(si * 7 + li), lens[li]);
            assert_int_equal(decode_raw(fx, frame + 4, flen), 0);
            assert_int_equal(fx->m.kind, SBX_MSG_DATA);
            assert_int_equal(fx->m.stream, streams[si]);
            assert_int_equal(fx->m.data_len, lens[li]);
            /* Zero copy: the payload is read where it lies in the frame. */
            assert_ptr_equal(fx->m.data, frame + h);
            /* The same bytes are valid msgpack that msgpack-c agrees with. */
            assert_int_equal(sbx_msgpack_validate(frame + 4, flen, &fx->err), 0);
        }
    }
    free(frame);
}

static void test_data_generic_encoding(void **state)
{
    struct fx *fx = *state;
    /* array16 header instead of fixarray, stream as uint16: still a valid data message. */
    static const uint8_t msg[] = { 0xdc, 0x00, 0x03, 0x03, 0xcd, 0x01, 0x00, 0xc4, 0x02, 'h', 'i' };
    static const uint8_t zero_stream[] = { 0x93, 0x03, 0x00, 0xc4, 0x01, 'x' };
    static const uint8_t empty[] = { 0x93, 0x03, 0x01, 0xc4, 0x00 };
    static const uint8_t str_payload[] = { 0x93, 0x03, 0x01, 0xa1, 'x' };

    assert_int_equal(decode_raw(fx, msg, sizeof(msg)), 0);
    assert_int_equal(fx->m.kind, SBX_MSG_DATA);
    assert_int_equal(fx->m.stream, 256);
    assert_int_equal(fx->m.data_len, 2);
    assert_memory_equal(fx->m.data, "hi", 2);
    assert_int_equal(decode_raw(fx, zero_stream, sizeof(zero_stream)), -1);
    assert_string_equal(fx->err.code, "BAD_MESSAGE");
    assert_int_equal(decode_raw(fx, empty, sizeof(empty)), -1);
    assert_int_equal(decode_raw(fx, str_payload, sizeof(str_payload)), -1);
}

static void test_truncation_every_offset(void **state)
{
    struct fx *fx = *state;
    const uint8_t *p;
    size_t len;
    uint8_t *copy;

    sbx_out_begin(&fx->out);
    sbx_pack_request_head(&fx->out.pk, 99, "proc.spawn");
    msgpack_pack_map(&fx->out.pk, 3);
    sbx_pack_cstr(&fx->out.pk, "argv");
    msgpack_pack_array(&fx->out.pk, 2);
    sbx_pack_cstr(&fx->out.pk, "/bin/echo");
    sbx_pack_cstr(&fx->out.pk, "a fairly long argument to have str8 in play, over 32 bytes");
    sbx_pack_kv_u64(&fx->out.pk, "timeout_ms", 100000);
    sbx_pack_cstr(&fx->out.pk, "blob");
    sbx_pack_bin(&fx->out.pk, "\x00\x01\x02", 3);
    assert_int_equal(sbx_out_end(&fx->out, &fx->err), 0);
    p = (const uint8_t *)fx->out.sb.data + 4;
    len = fx->out.sb.size - 4;
    for (size_t cut = 0; cut < len; cut++) {
        /* A fresh heap copy of exactly @cut bytes, so ASan sees any over-read. */
        copy = malloc(cut ? cut : 1);
        assert_non_null(copy);
        memcpy(copy, p, cut);
        assert_int_equal(decode_raw(fx, copy, cut), -1);
        assert_string_equal(fx->err.code, "BAD_MESSAGE");
        /* Once the id is present, an error reply can still be addressed. */
        if (cut >= 3) {
            assert_true(fx->m.id_valid);
            assert_int_equal(fx->m.id, 99);
        }
        free(copy);
    }
    assert_int_equal(decode_raw(fx, p, len), 0);
}

static void test_hostile_headers(void **state)
{
    struct fx *fx = *state;
    static const uint8_t hostile[][12] = {
        { 0x94, 0x00, 0x01, 0xa1, 'x', 0xdd, 0xff, 0xff, 0xff, 0xff }, /* array32 4G */
        { 0x94, 0x00, 0x01, 0xa1, 'x', 0xdf, 0xff, 0xff, 0xff, 0xff }, /* map32 4G */
        { 0x94, 0x00, 0x01, 0xa1, 'x', 0xdb, 0xff, 0xff, 0xff, 0xff }, /* str32 4G */
        { 0x94, 0x00, 0x01, 0xa1, 'x', 0xc6, 0xff, 0xff, 0xff, 0xff }, /* bin32 4G */
        { 0x94, 0x00, 0x01, 0xa1, 'x', 0xdc, 0xff, 0xff },             /* array16 64K */
        { 0x94, 0x00, 0x01, 0xa1, 'x', 0xc9, 0xff, 0xff, 0xff, 0xff }, /* ext32 */
        { 0xdd, 0x80, 0x00, 0x00, 0x00 },                              /* top array32 2G */
        { 0x94, 0x00, 0x01, 0xa1, 'x', 0xc1 },                         /* never-used byte */
    };
    static const size_t lens[] = { 10, 10, 10, 10, 8, 10, 5, 6 };
    struct mallinfo2 before, after;

    before = mallinfo2();
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        uint8_t *copy = malloc(lens[i]);
        assert_non_null(copy);
        memcpy(copy, hostile[i], lens[i]);
        assert_int_equal(decode_raw(fx, copy, lens[i]), -1);
        assert_string_equal(fx->err.code, "BAD_MESSAGE");
        free(copy);
    }
    after = mallinfo2();
    /* Nothing the headers claimed was allocated (a 4 G-element array would be ~96 GiB). */
    assert_true(after.uordblks < before.uordblks + 65536);
    assert_true(after.hblkhd < before.hblkhd + 65536);
}

static void test_container_claims_checked(void **state)
{
    struct fx *fx = *state;
    /* A map claiming 3 pairs with 5 bytes left: fewer bytes than the 6 elements need. */
    static const uint8_t m[] = { 0x83, 0x01, 0x01, 0x01, 0x01, 0x01 };
    static const uint8_t ok[] = { 0x83, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01 };

    assert_int_equal(sbx_msgpack_validate(m, sizeof(m), &fx->err), -1);
    assert_int_equal(sbx_msgpack_validate(ok, sizeof(ok), &fx->err), 0);
}

/* Records back to back (fs.walk's stream): the first one's length, with the same checks. */
static void test_scan_first_of_several(void **state)
{
    struct fx *fx = *state;
    /* {"a": [1, 2]} then nil then a map claiming 3 pairs with 1 byte left */
    static const uint8_t two[] = { 0x81, 0xa1, 'a', 0x92, 0x01, 0x02, 0xc0, 0x83, 0x01 };
    size_t used = 0;

    assert_int_equal(sbx_msgpack_scan(two, sizeof(two), &used, &fx->err), 0);
    assert_int_equal(used, 6);
    assert_int_equal(sbx_msgpack_scan(two + 6, sizeof(two) - 6, &used, &fx->err), 0);
    assert_int_equal(used, 1);
    assert_int_equal(sbx_msgpack_scan(two + 7, sizeof(two) - 7, &used, &fx->err), -1);
    assert_non_null(strstr(fx->err.msg, "claims"));
    assert_int_equal(sbx_msgpack_scan(two, 5, &used, &fx->err), -1); /* truncated first */
    /* Without @used it is sbx_msgpack_validate: trailing bytes are refused. */
    assert_int_equal(sbx_msgpack_scan(two, 7, NULL, &fx->err), -1);
    assert_non_null(strstr(fx->err.msg, "trailing"));
    assert_int_equal(sbx_msgpack_validate(two, 6, &fx->err), 0);
}

/* A field a peer left out reads as absent, whatever the helper: records from a hostile agent
 * are read with sbx_obj_get chained into these. */
static void test_obj_helpers_take_absent_fields(void **state)
{
    const char *p = "x";
    size_t n = 7;
    char buf[8] = "keep";

    (void)state;
    assert_false(sbx_obj_bytes(sbx_obj_get(NULL, "data"), &p, &n));
    assert_string_equal(p, "x");
    assert_int_equal(n, 7);
    assert_int_equal(sbx_obj_cstr(sbx_obj_get(NULL, "phase"), buf, sizeof(buf)), -1);
    assert_string_equal(buf, "keep");
}

static void test_depth_limit(void **state)
{
    struct fx *fx = *state;
    uint8_t buf[64];

    /* 32 nested arrays holding a nil: depth 32 is allowed. */
    for (unsigned i = 0; i < 32; i++) {
        buf[i] = 0x91;
    }
    buf[32] = 0xc0;
    assert_int_equal(sbx_msgpack_validate(buf, 33, &fx->err), 0);
    /* One more level is refused. */
    for (unsigned i = 0; i < 33; i++) {
        buf[i] = 0x91;
    }
    buf[33] = 0xc0;
    assert_int_equal(sbx_msgpack_validate(buf, 34, &fx->err), -1);
    assert_non_null(strstr(fx->err.msg, "nesting"));
}

static void test_depth_limit_empty_containers(void **state)
{
    struct fx *fx = *state;
    static const uint8_t empties[] = { 0x90, 0x80 }; /* [] and {} */
    uint8_t buf[64];

    /* An empty container counts for depth too (PROTOCOL.md §4.1): 31 arrays around it is depth
     * 32, 32 arrays around it is 33. */
    for (size_t k = 0; k < sizeof(empties); k++) {
        memset(buf, 0x91, 32);
        buf[31] = empties[k];
        assert_int_equal(sbx_msgpack_validate(buf, 32, &fx->err), 0);
        buf[31] = 0x91;
        buf[32] = empties[k];
        assert_int_equal(sbx_msgpack_validate(buf, 33, &fx->err), -1);
        assert_non_null(strstr(fx->err.msg, "nesting"));
    }
}

/* A request whose id can be read gets an addressed answer whatever is wrong after it (§3.3). */
static void test_request_id_readable(void **state)
{
    struct fx *fx = *state;
    /* [0, 21, "ping", {}, 1]: five elements */
    static const uint8_t five[] = { 0x95, 0x00, 21, 0xa4, 'p', 'i', 'n', 'g', 0x80, 0x01 };
    /* the same in an array16 header */
    static const uint8_t five16[] = { 0xdc, 0x00, 0x05, 0x00, 0xcd, 0x01, 0x00,
                                      0xa4, 'p',  'i',  'n',  'g',  0x80, 0x01 };
    /* [0, 7]: two elements */
    static const uint8_t two[] = { 0x92, 0x00, 0x07 };
    /* [0, 9, "ping", {"x": [[...[]...]]}] nested too deep, empty innermost */
    uint8_t deep[64] = { 0x94, 0x00, 0x09, 0xa4, 'p', 'i', 'n', 'g', 0x81, 0xa1, 'x' };
    size_t n = 11;

    assert_int_equal(sbx_msg_decode(&fx->dec, five, sizeof(five), &fx->m, &fx->err), -1);
    assert_true(fx->m.id_valid);
    assert_int_equal(fx->m.id, 21);
    assert_string_equal(fx->err.code, SBX_E_BAD_MESSAGE);
    assert_int_equal(sbx_msg_decode(&fx->dec, five16, sizeof(five16), &fx->m, &fx->err), -1);
    assert_true(fx->m.id_valid);
    assert_int_equal(fx->m.id, 256);
    assert_int_equal(sbx_msg_decode(&fx->dec, two, sizeof(two), &fx->m, &fx->err), -1);
    assert_true(fx->m.id_valid);
    assert_int_equal(fx->m.id, 7);
    for (unsigned i = 0; i < 31; i++) { /* params map is depth 2, so 31 more arrays: 33 */
        deep[n++] = 0x91;
    }
    deep[n - 1] = 0x90;
    assert_int_equal(sbx_msg_decode(&fx->dec, deep, n, &fx->m, &fx->err), -1);
    assert_true(fx->m.id_valid);
    assert_int_equal(fx->m.id, 9);
    assert_string_equal(fx->err.code, SBX_E_BAD_MESSAGE);
}

static void test_object_limit(void **state)
{
    struct fx *fx = *state;
    size_t n = SBX_MSG_MAX_OBJECTS; /* the array itself + n nils = n + 1 objects */
    uint8_t *buf = malloc(5 + n);

    assert_non_null(buf);
    buf[0] = 0xdd;
    buf[1] = (uint8_t)(n >> 24);
    buf[2] = (uint8_t)(n >> 16);
    buf[3] = (uint8_t)(n >> 8);
    buf[4] = (uint8_t)n;
    memset(buf + 5, 0xc0, n);
    assert_int_equal(sbx_msgpack_validate(buf, 5 + n, &fx->err), -1);
    assert_non_null(strstr(fx->err.msg, "objects"));
    /* One fewer element fits exactly. */
    buf[4] = (uint8_t)(n - 1);
    buf[3] = (uint8_t)((n - 1) >> 8);
    buf[2] = (uint8_t)((n - 1) >> 16);
    assert_int_equal(sbx_msgpack_validate(buf, 5 + n - 1, &fx->err), 0);
    free(buf);
}

static void test_trailing_and_shape(void **state)
{
    struct fx *fx = *state;
    static const uint8_t trailing[] = { 0x93, 0x02, 0xa1, 'x', 0x80, 0xc0 };
    static const uint8_t not_array[] = { 0x81, 0xa1, 'x', 0x01 };
    static const uint8_t bad_kind[] = { 0x93, 0x07, 0xa1, 'x', 0x80 };
    static const uint8_t neg_kind[] = { 0x93, 0xff, 0xa1, 'x', 0x80 };
    static const uint8_t req3[] = { 0x93, 0x00, 0x01, 0xa1, 'x' };
    static const uint8_t bad_id[] = { 0x94, 0x00, 0xa1, 'x', 0xa1, 'x', 0x80 };
    static const uint8_t big_id[] = { 0x94, 0x00, 0xcf, 0, 0, 0, 1, 0, 0, 0, 0, 0xa1, 'x', 0x80 };
    static const uint8_t bad_method[] = { 0x94, 0x00, 0x05, 0x01, 0x80 };
    static const uint8_t empty_method[] = { 0x94, 0x00, 0x05, 0xa0, 0x80 };
    static const uint8_t bad_params[] = { 0x94, 0x00, 0x05, 0xa1, 'x', 0x91, 0x01 };
    static const uint8_t nil_params[] = { 0x94, 0x00, 0x05, 0xa1, 'x', 0xc0 };
    static const uint8_t bad_err[] = { 0x94, 0x01, 0x05, 0x01, 0xc0 };
    static const uint8_t notify4[] = { 0x94, 0x02, 0xa1, 'x', 0x80, 0x80 };

    assert_int_equal(decode_raw(fx, trailing, sizeof(trailing)), -1);
    assert_non_null(strstr(fx->err.msg, "trailing"));
    assert_int_equal(decode_raw(fx, not_array, sizeof(not_array)), -1);
    assert_int_equal(decode_raw(fx, bad_kind, sizeof(bad_kind)), -1);
    assert_int_equal(decode_raw(fx, neg_kind, sizeof(neg_kind)), -1);
    assert_int_equal(decode_raw(fx, req3, sizeof(req3)), -1);
    assert_int_equal(decode_raw(fx, bad_id, sizeof(bad_id)), -1);
    assert_false(fx->m.id_valid);
    assert_int_equal(decode_raw(fx, big_id, sizeof(big_id)), -1);
    assert_false(fx->m.id_valid);
    assert_int_equal(decode_raw(fx, bad_method, sizeof(bad_method)), -1);
    assert_true(fx->m.id_valid);
    assert_int_equal(fx->m.id, 5);
    assert_int_equal(decode_raw(fx, empty_method, sizeof(empty_method)), -1);
    assert_true(fx->m.id_valid);
    assert_int_equal(decode_raw(fx, bad_params, sizeof(bad_params)), -1);
    assert_true(fx->m.id_valid);
    assert_int_equal(decode_raw(fx, nil_params, sizeof(nil_params)), 0);
    assert_null(fx->m.params);
    assert_int_equal(decode_raw(fx, bad_err, sizeof(bad_err)), -1);
    assert_int_equal(decode_raw(fx, notify4, sizeof(notify4)), -1);
}

/* Pack a params map with one field of each msgpack type, for the accessor tests. */
static const msgpack_object *typed_params(struct fx *fx)
{
    msgpack_packer *pk = &fx->out.pk;

    sbx_out_begin(&fx->out);
    sbx_pack_request_head(pk, 1, "t");
    msgpack_pack_map(pk, 9);
    sbx_pack_kv_str(pk, "s", "hello");
    sbx_pack_kv_u64(pk, "u", 300);
    sbx_pack_kv_i64(pk, "i", -5);
    sbx_pack_kv_bool(pk, "b", false);
    sbx_pack_kv_nil(pk, "n");
    sbx_pack_cstr(pk, "bin");
    sbx_pack_bin(pk, "ab", 2);
    sbx_pack_cstr(pk, "m");
    msgpack_pack_map(pk, 1);
    sbx_pack_kv_u64(pk, "k", 1);
    sbx_pack_cstr(pk, "a");
    msgpack_pack_array(pk, 2);
    msgpack_pack_uint8(pk, 1);
    msgpack_pack_uint8(pk, 2);
    sbx_pack_cstr(pk, "nul");
    sbx_pack_strn(pk, "a\0b", 3);
    assert_int_equal(sbx_out_end(&fx->out, &fx->err), 0);
    assert_int_equal(decode_out(fx), 0);
    return fx->m.params;
}

#define EXPECT_BAD(call, fieldname)                                                                \
    do {                                                                                           \
        assert_int_equal((call), -1);                                                              \
        assert_string_equal(fx->err.code, "BAD_PARAM");                                            \
        assert_string_equal(fx->err.field, fieldname);                                             \
    } while (0)

static void test_accessors_wrong_types(void **state)
{
    struct fx *fx = *state;
    const msgpack_object *p = typed_params(fx);
    static const char *const keys[] = { "s", "u", "i", "b", "bin", "m", "a" };
    const char *s;
    size_t n;
    uint64_t u;
    int64_t i;
    bool b;
    const uint8_t *bp;
    const msgpack_object *o;
    char buf[16];

    /* Every accessor refuses every field of another type, naming the field. */
    for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
        const char *key = keys[k];
        if (strcmp(key, "s") != 0) {
            EXPECT_BAD(sbx_param_str(p, key, SBX_REQUIRED, 100, &s, &n, &fx->err), key);
            EXPECT_BAD(sbx_param_cstr(p, key, SBX_REQUIRED, buf, sizeof(buf), &fx->err), key);
        }
        if (strcmp(key, "u") != 0) {
            EXPECT_BAD(sbx_param_u64(p, key, SBX_REQUIRED, 0, UINT64_MAX, &u, &fx->err), key);
        }
        if (strcmp(key, "u") != 0 && strcmp(key, "i") != 0) {
            EXPECT_BAD(sbx_param_i64(p, key, SBX_REQUIRED, INT64_MIN, INT64_MAX, &i, &fx->err),
                       key);
        }
        if (strcmp(key, "b") != 0) {
            EXPECT_BAD(sbx_param_bool(p, key, SBX_REQUIRED, &b, &fx->err), key);
        }
        if (strcmp(key, "bin") != 0) {
            EXPECT_BAD(sbx_param_bin(p, key, SBX_REQUIRED, 100, &bp, &n, &fx->err), key);
        }
        if (strcmp(key, "m") != 0) {
            EXPECT_BAD(sbx_param_map(p, key, SBX_REQUIRED, 100, &o, &fx->err), key);
        }
        if (strcmp(key, "a") != 0) {
            EXPECT_BAD(sbx_param_array(p, key, SBX_REQUIRED, 100, &o, &fx->err), key);
        }
    }
}

static void test_accessors_values(void **state)
{
    struct fx *fx = *state;
    const msgpack_object *p = typed_params(fx);
    const char *s;
    size_t n;
    uint64_t u = 77;
    int64_t i;
    bool b = true;
    const uint8_t *bp;
    const msgpack_object *o;
    char buf[16];

    assert_int_equal(sbx_param_cstr(p, "s", SBX_REQUIRED, buf, sizeof(buf), &fx->err), 0);
    assert_string_equal(buf, "hello");
    EXPECT_BAD(sbx_param_cstr(p, "s", SBX_REQUIRED, buf, 5, &fx->err), "s"); /* too long */
    EXPECT_BAD(sbx_param_str(p, "s", SBX_REQUIRED, 4, &s, &n, &fx->err), "s");
    EXPECT_BAD(sbx_param_cstr(p, "nul", SBX_REQUIRED, buf, sizeof(buf), &fx->err), "nul");
    assert_int_equal(sbx_param_str(p, "nul", SBX_REQUIRED, 10, &s, &n, &fx->err), 0);
    assert_int_equal(n, 3);

    assert_int_equal(sbx_param_u64(p, "u", SBX_REQUIRED, 0, 300, &u, &fx->err), 0);
    assert_int_equal(u, 300);
    EXPECT_BAD(sbx_param_u64(p, "u", SBX_REQUIRED, 0, 299, &u, &fx->err), "u");
    EXPECT_BAD(sbx_param_u64(p, "u", SBX_REQUIRED, 301, 400, &u, &fx->err), "u");
    assert_int_equal(sbx_param_i64(p, "i", SBX_REQUIRED, -5, 0, &i, &fx->err), 0);
    assert_int_equal(i, -5);
    assert_int_equal(sbx_param_i64(p, "u", SBX_REQUIRED, 0, 1000, &i, &fx->err), 0);
    assert_int_equal(i, 300);
    EXPECT_BAD(sbx_param_i64(p, "i", SBX_REQUIRED, -4, 0, &i, &fx->err), "i");
    assert_int_equal(sbx_param_bool(p, "b", SBX_REQUIRED, &b, &fx->err), 0);
    assert_false(b);
    assert_int_equal(sbx_param_bin(p, "bin", SBX_REQUIRED, 2, &bp, &n, &fx->err), 0);
    assert_memory_equal(bp, "ab", 2);
    EXPECT_BAD(sbx_param_bin(p, "bin", SBX_REQUIRED, 1, &bp, &n, &fx->err), "bin");
    assert_int_equal(sbx_param_map(p, "m", SBX_REQUIRED, 1, &o, &fx->err), 0);
    EXPECT_BAD(sbx_param_map(p, "m", SBX_REQUIRED, 0, &o, &fx->err), "m");
    assert_int_equal(sbx_param_array(p, "a", SBX_REQUIRED, 2, &o, &fx->err), 0);
    EXPECT_BAD(sbx_param_array(p, "a", SBX_REQUIRED, 1, &o, &fx->err), "a");

    /* Missing: required is an error naming the field, optional leaves outputs alone. */
    EXPECT_BAD(sbx_param_u64(p, "absent", SBX_REQUIRED, 0, 1, &u, &fx->err), "absent");
    u = 77;
    assert_int_equal(sbx_param_u64(p, "absent", SBX_OPTIONAL, 0, 1, &u, &fx->err), 1);
    assert_int_equal(u, 77);
    /* nil counts as absent. */
    assert_int_equal(sbx_param_str(p, "n", SBX_OPTIONAL, 10, &s, &n, &fx->err), 1);
    EXPECT_BAD(sbx_param_str(p, "n", SBX_REQUIRED, 10, &s, &n, &fx->err), "n");
    /* No params at all behaves like an empty map. */
    assert_int_equal(sbx_param_bool(NULL, "b", SBX_OPTIONAL, &b, &fx->err), 1);
    EXPECT_BAD(sbx_param_bool(NULL, "b", SBX_REQUIRED, &b, &fx->err), "b");
}

static void test_frame_cap_on_encode(void **state)
{
    struct fx *fx = *state;
    char *big = malloc(SBX_FRAME_MAX);

    assert_non_null(big);
    memset(big, 'x', SBX_FRAME_MAX);
    sbx_out_begin(&fx->out);
    sbx_pack_notify_head(&fx->out.pk, "x");
    msgpack_pack_map(&fx->out.pk, 1);
    sbx_pack_cstr(&fx->out.pk, "k");
    sbx_pack_strn(&fx->out.pk, big, SBX_FRAME_MAX);
    assert_int_equal(sbx_out_end(&fx->out, &fx->err), -1);
    assert_string_equal(fx->err.code, "LIMIT");
    assert_int_equal(fx->out.sb.size, 0); /* the oversized frame was dropped */
    free(big);
}

static void test_bstr_and_utf8(void **state)
{
    struct fx *fx = *state;
    msgpack_packer *pk = &fx->out.pk;
    char buf[16];

    assert_true(sbx_utf8_valid("h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80", 16));
    assert_false(sbx_utf8_valid("\xff", 1));
    assert_false(sbx_utf8_valid("\xc3", 1));         /* truncated */
    assert_false(sbx_utf8_valid("\xc0\xaf", 2));     /* overlong */
    assert_false(sbx_utf8_valid("\xed\xa0\x80", 3)); /* surrogate */
    sbx_out_begin(&fx->out);
    sbx_pack_notify_head(pk, "t");
    msgpack_pack_map(pk, 3);
    sbx_pack_cstr(pk, "a");
    sbx_pack_bstr(pk, "ok", 2);
    sbx_pack_cstr(pk, "b");
    sbx_pack_bstr(pk, "\xffz", 2);
    sbx_pack_cstr(pk, "c");
    sbx_pack_bin(pk, "x\0y", 3);
    assert_int_equal(sbx_out_end(&fx->out, &fx->err), 0);
    assert_int_equal(decode_out(fx), 0);
    assert_int_equal(sbx_obj_get(fx->m.params, "a")->type, MSGPACK_OBJECT_STR);
    assert_int_equal(sbx_obj_get(fx->m.params, "b")->type, MSGPACK_OBJECT_BIN);
    assert_int_equal(sbx_param_bstr(fx->m.params, "a", SBX_REQUIRED, buf, sizeof(buf), &fx->err),
                     0);
    assert_string_equal(buf, "ok");
    assert_int_equal(sbx_param_bstr(fx->m.params, "b", SBX_REQUIRED, buf, sizeof(buf), &fx->err),
                     0);
    assert_string_equal(buf, "\xffz");
    EXPECT_BAD(sbx_param_bstr(fx->m.params, "c", SBX_REQUIRED, buf, sizeof(buf), &fx->err), "c");
    EXPECT_BAD(sbx_param_bstr(fx->m.params, "a", SBX_REQUIRED, buf, 2, &fx->err), "a");
}

/* Every str the encoder writes is UTF-8 (§4.4): bad bytes become U+FFFD, good text is kept. */
static void test_str_always_utf8(void **state)
{
    struct fx *fx = *state;
    msgpack_packer *pk = &fx->out.pk;
    const msgpack_object *o;

    sbx_out_begin(&fx->out);
    sbx_pack_notify_head(pk, "t");
    msgpack_pack_map(pk, 3);
    sbx_pack_cstr(pk, "a");
    sbx_pack_strn(pk, "h\xc3\xa9 \xff/x\xe2\x82", 9); /* é, a stray byte, a cut € */
    sbx_pack_cstr(pk, "b");
    sbx_pack_cstr(pk, "caf\xc3\xa9");
    sbx_pack_cstr(pk, "c");
    sbx_pack_strn(pk, "\xc0\xaf", 2); /* overlong: two bad bytes */
    assert_int_equal(sbx_out_end(&fx->out, &fx->err), 0);
    assert_int_equal(decode_out(fx), 0);
    o = sbx_obj_get(fx->m.params, "a");
    assert_int_equal(o->type, MSGPACK_OBJECT_STR);
    assert_int_equal(o->via.str.size, 15);
    assert_memory_equal(o->via.str.ptr, "h\xc3\xa9 \xef\xbf\xbd/x\xef\xbf\xbd\xef\xbf\xbd", 15);
    o = sbx_obj_get(fx->m.params, "b");
    assert_int_equal(o->via.str.size, 5);
    assert_memory_equal(o->via.str.ptr, "caf\xc3\xa9", 5);
    o = sbx_obj_get(fx->m.params, "c");
    assert_int_equal(o->via.str.size, 6);
    assert_true(sbx_utf8_valid(o->via.str.ptr, o->via.str.size));
}

/* LIMIT carries limit and max, VERSION min and max, and they survive a round trip (§7.1). */
static void test_err_range_fields(void **state)
{
    struct fx *fx = *state;
    struct sbx_err e, back;

    sbx_err_limit(&e, "max_streams", 4096, "too many");
    sbx_out_begin(&fx->out);
    sbx_pack_error_response(&fx->out.pk, 3, &e);
    assert_int_equal(sbx_out_end(&fx->out, &fx->err), 0);
    assert_int_equal(decode_out(fx), 0);
    sbx_err_from_obj(fx->m.error, &back);
    assert_string_equal(back.code, SBX_E_LIMIT);
    assert_string_equal(back.limit, "max_streams");
    assert_true(back.has_max);
    assert_int_equal(back.max, 4096);
    assert_false(back.has_min);

    sbx_err_set(&e, SBX_E_VERSION, "no");
    e.min = 1;
    e.max = 1;
    e.has_min = e.has_max = true;
    sbx_out_reset(&fx->out);
    sbx_out_begin(&fx->out);
    sbx_pack_error_response(&fx->out.pk, 4, &e);
    assert_int_equal(sbx_out_end(&fx->out, &fx->err), 0);
    assert_int_equal(decode_out(fx), 0);
    sbx_err_from_obj(fx->m.error, &back);
    assert_true(back.has_min && back.has_max);
    assert_int_equal(back.min, 1);
    assert_int_equal(back.max, 1);
    assert_non_null(sbx_obj_get(fx->m.error, "min"));
    assert_null(sbx_obj_get(fx->m.error, "limit"));
}

/* A message quoting names of invalid bytes stays within 1024 bytes on the wire once each became
 * U+FFFD (3 bytes), cut between characters (§7.1): it went to 3069, and a strict client dropped
 * the frame. */
static void test_err_message_cap_after_replacement(void **state)
{
    struct fx *fx = *state;
    struct sbx_err e;
    const msgpack_object *o;

    sbx_err_clear(&e);
    memcpy(e.code, "EACCES", 7);
    memset(e.msg, 0xff, sizeof(e.msg) - 1);
    e.msg[0] = 'x';
    e.msg[sizeof(e.msg) - 1] = '\0';
    sbx_out_begin(&fx->out);
    sbx_pack_error_response(&fx->out.pk, 5, &e);
    assert_int_equal(sbx_out_end(&fx->out, &fx->err), 0);
    assert_int_equal(decode_out(fx), 0);
    o = sbx_obj_get(fx->m.error, "message");
    assert_int_equal(o->type, MSGPACK_OBJECT_STR);
    assert_int_equal(o->via.str.size, 1 + 341 * 3); /* 'x' and as many U+FFFD as fit 1024 */
    assert_true(sbx_utf8_valid(o->via.str.ptr, o->via.str.size));
    assert_memory_equal(o->via.str.ptr + o->via.str.size - 3, "\xef\xbf\xbd", 3);
    /* a valid message is whole */
    sbx_err_set(&e, "EIO", "caf\xc3\xa9");
    sbx_out_reset(&fx->out);
    sbx_out_begin(&fx->out);
    sbx_pack_error_response(&fx->out.pk, 6, &e);
    assert_int_equal(sbx_out_end(&fx->out, &fx->err), 0);
    assert_int_equal(decode_out(fx), 0);
    o = sbx_obj_get(fx->m.error, "message");
    assert_int_equal(o->via.str.size, 5);
}

static void test_byte_example(void **state)
{
    /* PROTOCOL.md's example: "hi" on stream 5 is 00 00 00 07 93 03 05 c4 02 68 69. */
    static const uint8_t want[] = { 0, 0, 0, 7, 0x93, 0x03, 0x05, 0xc4, 0x02 };
    uint8_t hdr[SBX_STREAM_DATA_HDR_MAX];

    assert_int_equal(sbx_data_header(hdr, 5, 2), sizeof(want));
    assert_memory_equal(hdr, want, sizeof(want));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_request_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_response_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_notify_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_data_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_data_generic_encoding, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncation_every_offset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hostile_headers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_container_claims_checked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_scan_first_of_several, setup, teardown),
        cmocka_unit_test(test_obj_helpers_take_absent_fields),
        cmocka_unit_test_setup_teardown(test_depth_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_depth_limit_empty_containers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_request_id_readable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_str_always_utf8, setup, teardown),
        cmocka_unit_test_setup_teardown(test_err_message_cap_after_replacement, setup, teardown),
        cmocka_unit_test_setup_teardown(test_err_range_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(test_object_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_trailing_and_shape, setup, teardown),
        cmocka_unit_test_setup_teardown(test_accessors_wrong_types, setup, teardown),
        cmocka_unit_test_setup_teardown(test_accessors_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_frame_cap_on_encode, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bstr_and_utf8, setup, teardown),
        cmocka_unit_test_setup_teardown(test_byte_example, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
