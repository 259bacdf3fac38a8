/*
 * Unit tests: agent/strv.c, string vectors read from a request's array params (a bad entry named
 * by its index, PROTOCOL.md §7.5), the shell argv, and freeing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "strv.h"

static msgpack_object str(const char *s, size_t n)
{
    msgpack_object o = { .type = MSGPACK_OBJECT_STR };

    o.via.str.ptr = s;
    o.via.str.size = (uint32_t)n;
    return o;
}

static msgpack_object bin(const char *s, size_t n)
{
    msgpack_object o = { .type = MSGPACK_OBJECT_BIN };

    o.via.bin.ptr = s;
    o.via.bin.size = (uint32_t)n;
    return o;
}

static msgpack_object array(msgpack_object *v, size_t n)
{
    msgpack_object o = { .type = MSGPACK_OBJECT_ARRAY };

    o.via.array.ptr = v;
    o.via.array.size = (uint32_t)n;
    return o;
}

#define S(lit) str(lit, sizeof(lit) - 1)

static void test_from_array(void **state)
{
    msgpack_object v[] = { S("a"), bin("bc", 2), S(""), S("0123456789") };
    msgpack_object arr = array(v, 4);
    struct sbx_err err;
    char **s;

    (void)state;
    sbx_err_clear(&err);
    s = agent_strv_from_array(&arr, "argv", 10, 0, &err);
    assert_non_null(s);
    assert_string_equal(s[0], "a");
    assert_string_equal(s[1], "bc"); /* bin is a string too (bstr) */
    assert_string_equal(s[2], "");
    assert_string_equal(s[3], "0123456789"); /* exactly @maxlen */
    assert_null(s[4]);
    assert_false(sbx_err_isset(&err));
    agent_strv_free(s);

    arr = array(NULL, 0);
    s = agent_strv_from_array(&arr, "argv", 10, AGENT_STRV_NONEMPTY, &err);
    assert_non_null(s); /* empty: a vector of just the NULL */
    assert_null(s[0]);
    agent_strv_free(s);
    agent_strv_free(NULL);
}

/* Expect agent_strv_from_array on @arr to fail naming @field with @msg. */
static void expect_bad(msgpack_object arr, size_t maxlen, unsigned flags, const char *field,
                       const char *msg)
{
    struct sbx_err err;

    assert_null(agent_strv_from_array(&arr, "argv", maxlen, flags, &err));
    assert_string_equal(err.code, SBX_E_BAD_PARAM);
    assert_string_equal(err.field, field);
    assert_string_equal(err.msg, msg);
}

static void test_from_array_bad(void **state)
{
    msgpack_object v[4];
    msgpack_object num = { .type = MSGPACK_OBJECT_POSITIVE_INTEGER };

    (void)state;
    v[0] = S("ok");
    v[1] = S("");
    expect_bad(array(v, 2), 10, AGENT_STRV_NONEMPTY, "argv[1]",
               "argv[1] must be a non-empty string of at most 10 bytes without NUL");
    v[1] = S("toolong");
    expect_bad(array(v, 2), 6, 0, "argv[1]",
               "argv[1] must be a string of at most 6 bytes without NUL");
    v[1] = S("ok");
    v[2] = str("a\0b", 3);
    expect_bad(array(v, 3), 10, 0, "argv[2]",
               "argv[2] must be a string of at most 10 bytes without NUL");
    v[2] = S("ok");
    v[3] = num;
    expect_bad(array(v, 4), 10, 0, "argv[3]",
               "argv[3] must be a string of at most 10 bytes without NUL");
    v[0] = num; /* the first bad entry is the one named */
    expect_bad(array(v, 4), 10, 0, "argv[0]",
               "argv[0] must be a string of at most 10 bytes without NUL");
}

static void test_param(void **state)
{
    msgpack_object env[] = { S("A=1"), S("B=2") };
    msgpack_object bad[] = { S("A=1"), S("") };
    msgpack_object_kv kv[] = {
        { .key = S("env"), .val = array(env, 2) },
        { .key = S("none"), .val = { .type = MSGPACK_OBJECT_NIL } },
        { .key = S("num"), .val = { .type = MSGPACK_OBJECT_POSITIVE_INTEGER } },
        { .key = S("bad"), .val = array(bad, 2) },
    };
    msgpack_object params = { .type = MSGPACK_OBJECT_MAP };
    struct sbx_err err;
    char **out = (char **)&err; /* garbage: must be overwritten */
    size_t n = 99;

    (void)state;
    params.via.map.ptr = kv;
    params.via.map.size = 4;
    assert_int_equal(agent_strv_param(&params, "env", 64, 16, 0, &out, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_string_equal(out[0], "A=1");
    assert_string_equal(out[1], "B=2");
    assert_null(out[2]);
    agent_strv_free(out);

    /* Absent or nil: 0, with NULL and 0. */
    out = (char **)&err;
    assert_int_equal(agent_strv_param(&params, "missing", 64, 16, 0, &out, &n, &err), 0);
    assert_null(out);
    assert_int_equal(n, 0);
    out = (char **)&err;
    n = 99;
    assert_int_equal(agent_strv_param(&params, "none", 64, 16, 0, &out, &n, &err), 0);
    assert_null(out);
    assert_int_equal(n, 0);
    assert_int_equal(agent_strv_param(NULL, "env", 64, 16, 0, &out, NULL, &err), 0);
    assert_null(out);

    /* @n may be NULL. */
    assert_int_equal(agent_strv_param(&params, "env", 64, 16, 0, &out, NULL, &err), 0);
    assert_non_null(out);
    agent_strv_free(out);

    /* Not an array; more entries than @max; a bad entry: BAD_PARAM, *out NULL. */
    assert_int_equal(agent_strv_param(&params, "num", 64, 16, 0, &out, &n, &err), -1);
    assert_string_equal(err.code, SBX_E_BAD_PARAM);
    assert_string_equal(err.field, "num");
    assert_null(out);
    assert_int_equal(agent_strv_param(&params, "env", 1, 16, 0, &out, &n, &err), -1);
    assert_string_equal(err.field, "env");
    assert_null(out);
    assert_int_equal(n, 0);
    assert_int_equal(agent_strv_param(&params, "env", 2, 16, 0, &out, &n, &err), 0); /* = max */
    agent_strv_free(out);
    assert_int_equal(agent_strv_param(&params, "bad", 64, 16, AGENT_STRV_NONEMPTY, &out, &n, &err),
                     -1);
    assert_string_equal(err.field, "bad[1]");
    assert_null(out);
    assert_int_equal(n, 0);
}

static void test_sh(void **state)
{
    char **v = agent_strv_sh("echo hi; rest", 7);

    (void)state;
    assert_non_null(v);
    assert_string_equal(v[0], "/bin/sh");
    assert_string_equal(v[1], "-c");
    assert_string_equal(v[2], "echo hi"); /* @len bytes, not the whole string */
    assert_null(v[3]);
    agent_strv_free(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_from_array),
        cmocka_unit_test(test_from_array_bad),
        cmocka_unit_test(test_param),
        cmocka_unit_test(test_sh),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
