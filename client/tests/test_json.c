/* Unit tests: the CLI's msgpack -> JSON conversion and JSON -> msgpack parser (on jansson). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cli.h"

#define FFFD "\xef\xbf\xbd" /* U+FFFD as jansson writes it: raw UTF-8 */

/* Render @o as JSON into a malloc'd string. */
static char *to_json(const msgpack_object *o)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);

    assert_non_null(f);
    assert_int_equal(cli_json_write(f, o), 0);
    assert_int_equal(fclose(f), 0);
    return buf;
}

/* Pack with @fill into a buffer, unpack, render as JSON, compare. */
static void check_json(void (*fill)(msgpack_packer *), const char *want)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_zone zone;
    msgpack_object o;
    size_t off = 0;
    char *got;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    fill(&pk);
    assert_true(msgpack_zone_init(&zone, 1024));
    assert_int_equal(msgpack_unpack(sb.data, sb.size, &off, &zone, &o), MSGPACK_UNPACK_SUCCESS);
    got = to_json(&o);
    assert_string_equal(got, want);
    free(got);
    msgpack_zone_destroy(&zone);
    msgpack_sbuffer_destroy(&sb);
}

static void fill_scalars(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 10);
    msgpack_pack_nil(pk);
    msgpack_pack_true(pk);
    msgpack_pack_false(pk);
    msgpack_pack_uint64(pk, (uint64_t)INT64_MAX);
    msgpack_pack_int64(pk, INT64_MIN);
    msgpack_pack_int8(pk, -1);
    msgpack_pack_uint8(pk, 0);
    msgpack_pack_double(pk, INFINITY);
    msgpack_pack_double(pk, NAN);
    msgpack_pack_float(pk, -INFINITY);
}

static void test_scalars(void **state)
{
    check_json(fill_scalars, "[null,true,false,9223372036854775807,-9223372036854775808,-1,0,"
                             "null,null,null]");
}

/* jansson's integers are int64: a larger uint64 is the nearest double. */
static void fill_u64_max(msgpack_packer *pk)
{
    msgpack_pack_uint64(pk, UINT64_MAX);
}

static void test_u64_beyond_int64(void **state)
{
    check_json(fill_u64_max, "1.8446744073709552e19");
}

/* Reals: the fewest digits that read back exactly (one count for the whole value). */
static void fill_load(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    msgpack_pack_str_with_body(pk, "load", 4);
    msgpack_pack_array(pk, 5);
    msgpack_pack_double(pk, 0.41);
    msgpack_pack_double(pk, 0.36);
    msgpack_pack_double(pk, 0.5);
    msgpack_pack_float(pk, 2.0f);
    msgpack_pack_double(pk, 1e300);
}

static void fill_inexact(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 2);
    msgpack_pack_double(pk, 0.1 + 0.2);
    msgpack_pack_double(pk, 0.5);
}

static void test_reals(void **state)
{
    check_json(fill_load, "{\"load\":[0.41,0.36,0.5,2.0,1e300]}");
    check_json(fill_inexact, "[0.30000000000000004,0.5]");
}

static void fill_escapes(msgpack_packer *pk)
{
    static const char s[] = "q\"b\\n\nr\rt\tb\bf\fnul\0ctl\x01\x1f del\x7f /";
    msgpack_pack_str_with_body(pk, s, sizeof(s) - 1);
}

static void test_escapes(void **state)
{
    check_json(fill_escapes, "\"q\\\"b\\\\n\\nr\\rt\\tb\\bf\\fnul\\u0000ctl\\u0001\\u001F "
                             "del\x7f /\"");
}

static void fill_utf8(msgpack_packer *pk)
{
    /* Valid 2/3/4-byte sequences, then: lone continuation, overlong '/', a surrogate (ED A0 80),
     * past U+10FFFF (F4 90 80 80), an overlong 3-byte form, a truncated sequence at the end. */
    static const char s[] = "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80|\x80|\xc0\xaf|\xed\xa0\x80|"
                            "\xf4\x90\x80\x80|\xe0\x80\xaf|\xe2\x82";
    msgpack_pack_str_with_body(pk, s, sizeof(s) - 1);
}

static void test_utf8(void **state)
{
    /* Each byte that does not start a valid sequence is one U+FFFD. */
    check_json(fill_utf8,
               "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80|" FFFD "|" FFFD FFFD "|" FFFD FFFD FFFD
               "|" FFFD FFFD FFFD FFFD "|" FFFD FFFD FFFD "|" FFFD FFFD "\"");
}

static void test_str_helper(void **state)
{
    json_t *j = cli_json_str(NULL, 0);

    assert_non_null(j);
    assert_string_equal(json_string_value(j), "");
    json_decref(j);
    /* What `sbx exec --json` does with stderr "e\001\377" (tests/integration/client). */
    j = cli_json_str("e\001\377", 3);
    assert_non_null(j);
    assert_int_equal(json_string_length(j), 5);
    assert_memory_equal(json_string_value(j), "e\001" FFFD, 5);
    json_decref(j);
}

static void fill_bin(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 5);
    msgpack_pack_bin_with_body(pk, "", 0);
    msgpack_pack_bin_with_body(pk, "f", 1);
    msgpack_pack_bin_with_body(pk, "fo", 2);
    msgpack_pack_bin_with_body(pk, "foo", 3);
    msgpack_pack_bin_with_body(pk, "\xff\xfe\x00\x01", 4);
}

static void test_bin_base64(void **state)
{
    check_json(fill_bin, "[\"\",\"Zg==\",\"Zm8=\",\"Zm9v\",\"//4AAQ==\"]");
}

static void fill_nested(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 6);
    msgpack_pack_str_with_body(pk, "a", 1);
    msgpack_pack_map(pk, 1);
    msgpack_pack_str_with_body(pk, "b", 1);
    msgpack_pack_array(pk, 0);
    msgpack_pack_uint8(pk, 7); /* non-string keys become strings */
    msgpack_pack_nil(pk);
    msgpack_pack_array(pk, 1);
    msgpack_pack_true(pk);
    msgpack_pack_map(pk, 0);
    msgpack_pack_str_with_body(pk, "k\"", 2);
    msgpack_pack_str_with_body(pk, "v", 1);
    msgpack_pack_str_with_body(pk, "\xff", 1); /* a key that is not UTF-8 */
    msgpack_pack_uint8(pk, 1);
    msgpack_pack_str_with_body(pk, "n\0l", 3); /* a key with a NUL byte */
    msgpack_pack_uint8(pk, 2);
}

static void test_nested(void **state)
{
    /* Keys keep the wire's order. */
    check_json(fill_nested, "{\"a\":{\"b\":[]},\"7\":null,\"[true]\":{},\"k\\\"\":\"v\",\"" FFFD
                            "\":1,\"n\\u0000l\":2}");
}

static void test_dump_object(void **state)
{
    /* cli_json_dump keeps insertion order, as exec --json relies on. */
    json_t *j = json_pack("{s:n,s:s,s:s,s:b}", "exit", "stdout", "o\n", "stderr", "",
                          "stdout_truncated", 1);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);

    assert_non_null(j);
    assert_non_null(f);
    assert_int_equal(cli_json_dump(f, j), 0);
    assert_int_equal(fclose(f), 0);
    assert_string_equal(buf, "{\"exit\":null,\"stdout\":\"o\\n\",\"stderr\":\"\","
                             "\"stdout_truncated\":true}");
    free(buf);
    json_decref(j);
    assert_int_equal(cli_json_dump(stdout, NULL), -1);
}

/* JSON -> msgpack -> JSON. */
static char *roundtrip(const char *in, struct sbx_err *err)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_zone zone;
    msgpack_object o;
    size_t off = 0;
    char *out;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    if (cli_json_to_msgpack(in, strlen(in), &pk, err) < 0) {
        /* Nothing is packed for bad input. */
        assert_int_equal(sb.size, 0);
        msgpack_sbuffer_destroy(&sb);
        return NULL;
    }
    assert_true(msgpack_zone_init(&zone, 1024));
    assert_int_equal(msgpack_unpack(sb.data, sb.size, &off, &zone, &o), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, sb.size);
    out = to_json(&o);
    msgpack_zone_destroy(&zone);
    msgpack_sbuffer_destroy(&sb);
    return out;
}

static void check_rt(const char *in, const char *want)
{
    struct sbx_err err;
    char *got = roundtrip(in, &err);

    if (got == NULL) {
        fail_msg("rejected \"%s\": %s", in, err.msg);
    }
    assert_string_equal(got, want);
    free(got);
}

static void test_parse_values(void **state)
{
    check_rt("{}", "{}");
    check_rt(" { \"a\" : [1, -2, 3.5, 1e2, true, false, null, \"x\"] } \n",
             "{\"a\":[1,-2,3.5,100.0,true,false,null,\"x\"]}");
    check_rt("9223372036854775807", "9223372036854775807");
    check_rt("-9223372036854775808", "-9223372036854775808");
    check_rt("[[[]],{\"k\":{}}]", "[[[]],{\"k\":{}}]");
    check_rt("{\"b\":1,\"a\":2}", "{\"b\":1,\"a\":2}"); /* order kept */
    check_rt("0", "0");
    check_rt("-0.5", "-0.5");
}

/* The types on the wire: non-negative integers as uint, negative as int, others as float64. */
static void test_parse_types(void **state)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_zone zone;
    msgpack_object o;
    struct sbx_err err;
    size_t off = 0;
    static const char in[] = "[7,-7,1.5,\"s\\u0000\"]";

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    assert_int_equal(cli_json_to_msgpack(in, sizeof(in) - 1, &pk, &err), 0);
    assert_true(msgpack_zone_init(&zone, 1024));
    assert_int_equal(msgpack_unpack(sb.data, sb.size, &off, &zone, &o), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(o.type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(o.via.array.size, 4);
    assert_int_equal(o.via.array.ptr[0].type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    assert_int_equal(o.via.array.ptr[1].type, MSGPACK_OBJECT_NEGATIVE_INTEGER);
    assert_int_equal(o.via.array.ptr[2].type, MSGPACK_OBJECT_FLOAT64);
    assert_int_equal(o.via.array.ptr[3].type, MSGPACK_OBJECT_STR);
    assert_int_equal(o.via.array.ptr[3].via.str.size, 2);
    msgpack_zone_destroy(&zone);
    msgpack_sbuffer_destroy(&sb);
}

static void test_parse_strings(void **state)
{
    check_rt("\"a\\\"b\\\\c\\/d\\n\\t\\r\\b\\f\"", "\"a\\\"b\\\\c/d\\n\\t\\r\\b\\f\"");
    check_rt("\"\\u00e9\\u20ac\"", "\"\xc3\xa9\xe2\x82\xac\"");
    check_rt("\"\\ud83d\\ude00\"", "\"\xf0\x9f\x98\x80\"");
    check_rt("\"\\u0000x\"", "\"\\u0000x\"");
    check_rt("\"\xc3\xa9 raw\"", "\"\xc3\xa9 raw\"");
}

static void test_parse_rejects(void **state)
{
    static const char *bad[] = {
        "",
        " ",
        "{",
        "}",
        "[1,]",
        "{\"a\":}",
        "{\"a\" 1}",
        "{a:1}",
        "[1 2]",
        "01",
        "1.",
        "-",
        "1e",
        ".5",
        "+1",
        "tru",
        "nulll",
        "\"abc",
        "\"\\x\"",
        "\"\\u12\"",
        "\"\\ud800\"",
        "\"\\udc00\"",
        "\"\\ud800\\u0041\"",
        "\"a\nb\"",
        "{} {}",
        "[1]x",
        "NaN",
        "\"\xff\"",             /* not UTF-8 */
        "{\"a\":1,\"a\":2}",    /* duplicate key */
        "18446744073709551615", /* beyond int64 (jansson's integers) */
        "{\"a\\u0000b\":1}",    /* NUL in a key */
    };
    struct sbx_err err;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *got = roundtrip(bad[i], &err);
        if (got != NULL) {
            fail_msg("accepted bad JSON \"%s\" as %s", bad[i], got);
        }
        assert_string_equal(err.code, "BAD_PARAM");
        assert_non_null(strstr(err.msg, "bad JSON at byte"));
    }
}

static void test_parse_depth(void **state)
{
    char deep[80], deeper[80];
    struct sbx_err err;
    char *got;

    memset(deep, '[', 32);
    memset(deep + 32, ']', 32);
    deep[64] = '\0';
    got = roundtrip(deep, &err);
    assert_non_null(got);
    assert_string_equal(got, deep);
    free(got);
    memset(deeper, '[', 33);
    memset(deeper + 33, ']', 33);
    deeper[66] = '\0';
    assert_null(roundtrip(deeper, &err));
    assert_string_equal(err.code, "BAD_PARAM");
    assert_non_null(strstr(err.msg, "nested too deeply"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scalars),       cmocka_unit_test(test_u64_beyond_int64),
        cmocka_unit_test(test_reals),         cmocka_unit_test(test_escapes),
        cmocka_unit_test(test_utf8),          cmocka_unit_test(test_str_helper),
        cmocka_unit_test(test_bin_base64),    cmocka_unit_test(test_nested),
        cmocka_unit_test(test_dump_object),   cmocka_unit_test(test_parse_values),
        cmocka_unit_test(test_parse_types),   cmocka_unit_test(test_parse_strings),
        cmocka_unit_test(test_parse_rejects), cmocka_unit_test(test_parse_depth),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
