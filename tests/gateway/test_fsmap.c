/*
 * Unit tests of the gateway's pure file-system helpers: the error map (errmap.c), ISO dates,
 * lossy UTF-8, base64 and FileInfo (m_fs.c), and the JavaScript-regex, globToRegExp, isGlob and
 * normalize ports (walk.c). Expected globs and paths were produced by the vendored @std/path
 * 1.1.4 under node (the RegExp `source` getter's "\/" written as "/").
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "m_fs.h"
#include "walk.h"

static const char *sget(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static void test_errmap_errno(void **state)
{
    (void)state;
    struct sbx_err e;
    sbx_err_clear(&e);
    (void)sbx_err_sys(&e, ENOENT, NULL, "stat \"/nope\"");
    json_t *o = gw_errobj_sbx(&e, "readfile", "/nope");
    assert_non_null(o);
    assert_string_equal(sget(o, "constructorName"), "NotFound");
    assert_string_equal(sget(o, "code"), "ENOENT");
    assert_string_equal(sget(o, "message"),
                        "No such file or directory (os error 2): readfile '/nope'");
    assert_true(json_is_null(json_object_get(o, "stack")));
    json_decref(o);

    struct {
        int num;
        const char *cls, *code;
    } cases[] = {
        { EEXIST, "AlreadyExists", "EEXIST" },   { EACCES, "PermissionDenied", "EACCES" },
        { EPERM, "PermissionDenied", "EPERM" },  { EISDIR, "IsADirectory", "EISDIR" },
        { ENOTDIR, "NotADirectory", "ENOTDIR" }, { ELOOP, "FilesystemLoop", "ELOOP" },
        { ENOTEMPTY, "Error", "ENOTEMPTY" },     { EINVAL, "TypeError", "EINVAL" },
        { EAGAIN, "WouldBlock", "EAGAIN" },      { EXDEV, "Error", "EXDEV" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        sbx_err_clear(&e);
        (void)sbx_err_sys(&e, cases[i].num, NULL, "x");
        o = gw_errobj_sbx(&e, NULL, NULL);
        assert_string_equal(sget(o, "constructorName"), cases[i].cls);
        assert_string_equal(sget(o, "code"), cases[i].code);
        json_decref(o);
    }
    /* INTERNAL with an errno: the errno decides. */
    sbx_err_clear(&e);
    (void)sbx_err_set(&e, SBX_E_INTERNAL, "odd");
    e.sys_errno = ENOENT;
    sbx_err_set_path(&e, "/p");
    o = gw_errobj_sbx(&e, "open", NULL);
    assert_string_equal(sget(o, "constructorName"), "NotFound");
    assert_string_equal(sget(o, "message"), "No such file or directory (os error 2): open '/p'");
    json_decref(o);
}

static void test_errmap_codes(void **state)
{
    (void)state;
    struct {
        const char *code, *cls;
    } cases[] = {
        { SBX_E_BAD_PARAM, "TypeError" }, { SBX_E_UNSUPPORTED, "NotSupported" },
        { SBX_E_NOT_FOUND, "NotFound" },  { SBX_E_LIMIT, "Error" },
        { SBX_E_TIMEOUT, "TimedOut" },    { SBX_E_BUSY, "Busy" },
        { SBX_E_EOF, "ConnectionReset" }, { "SOMETHING_NEW", "Error" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct sbx_err e;
        sbx_err_clear(&e);
        (void)sbx_err_set(&e, cases[i].code, "what happened");
        json_t *o = gw_errobj_sbx(&e, NULL, NULL);
        assert_string_equal(sget(o, "constructorName"), cases[i].cls);
        assert_string_equal(sget(o, "code"), cases[i].code);
        assert_string_equal(sget(o, "message"), "what happened");
        json_decref(o);
    }
    json_t *o = gw_errobj("BadResource", NULL, "Bad resource ID");
    assert_true(json_is_null(json_object_get(o, "code")));
    assert_string_equal(sget(o, "constructorName"), "BadResource");
    json_decref(o);
}

static void test_iso(void **state)
{
    (void)state;
    char b[40];
    assert_int_equal(gw_fs_iso_date(0, b, sizeof(b)), 0);
    assert_string_equal(b, "1970-01-01T00:00:00.000Z");
    assert_int_equal(gw_fs_iso_date(-1000000, b, sizeof(b)), 0);
    assert_string_equal(b, "1969-12-31T23:59:59.999Z");
    assert_int_equal(gw_fs_iso_date(-1, b, sizeof(b)), 0); /* floors to the millisecond */
    assert_string_equal(b, "1969-12-31T23:59:59.999Z");
    assert_int_equal(gw_fs_iso_date(1796564247123456789LL, b, sizeof(b)), 0);
    assert_string_equal(b, "2026-12-06T13:37:27.123Z");
    assert_int_equal(gw_fs_iso_date(0, b, 10), -1);

    int64_t ns;
    assert_int_equal(gw_fs_iso_parse("2026-12-06T13:37:27.123Z", &ns), 0);
    assert_int_equal(ns, 1796564247123000000LL);
    assert_int_equal(gw_fs_iso_parse("1970-01-19T00:21:35.550Z", &ns), 0);
    assert_int_equal(ns, 1556495550000000LL);
    assert_int_equal(gw_fs_iso_parse("1969-12-31T23:59:59.999Z", &ns), 0);
    assert_int_equal(ns, -1000000);
    assert_int_equal(gw_fs_iso_parse("2024-02-29T00:00:00Z", &ns), 0);
    assert_int_equal(gw_fs_iso_parse("2026-12-06T14:37:27.123+01:00", &ns), 0);
    assert_int_equal(ns, 1796564247123000000LL);
    assert_int_equal(gw_fs_iso_parse("+001900-01-01T00:00:00.000Z", &ns), 0);
    assert_int_equal(ns, -2208988800000000000LL);
    assert_int_equal(gw_fs_iso_parse("-000001-01-01T00:00:00.000Z", &ns), -1); /* past int64 */
    assert_int_equal(gw_fs_iso_parse("2023-02-29T00:00:00Z", &ns), -1);
    assert_int_equal(gw_fs_iso_parse("2026-13-01T00:00:00Z", &ns), -1);
    assert_int_equal(gw_fs_iso_parse("2026-12-06 13:37:27Z", &ns), -1);
    assert_int_equal(gw_fs_iso_parse("2026-12-06T13:37:27.123", &ns), -1);
    assert_int_equal(gw_fs_iso_parse("+275760-09-13T00:00:00.000Z", &ns), -1); /* past int64 */
    assert_int_equal(gw_fs_iso_parse("", &ns), -1);
    /* Round trip. */
    assert_int_equal(gw_fs_iso_parse("1999-12-31T23:59:59.999Z", &ns), 0);
    assert_int_equal(gw_fs_iso_date(ns, b, sizeof(b)), 0);
    assert_string_equal(b, "1999-12-31T23:59:59.999Z");
}

static void test_utf8_lossy(void **state)
{
    (void)state;
    size_t n;
    char *s = gw_fs_utf8_lossy("h\xc3\xa9llo", 6, &n);
    assert_string_equal(s, "h\xc3\xa9llo");
    free(s);
    /* WHATWG: one U+FFFD per maximal subpart. */
    s = gw_fs_utf8_lossy("a\xff"
                         "b",
                         3, &n);
    assert_string_equal(s, "a\xef\xbf\xbd"
                           "b");
    free(s);
    s = gw_fs_utf8_lossy("\xe2\x82"
                         "x",
                         3, &n); /* a truncated 3-byte sequence: one */
    assert_string_equal(s, "\xef\xbf\xbd"
                           "x");
    free(s);
    s = gw_fs_utf8_lossy("\xed\xa0\x80", 3, &n); /* a surrogate: three */
    assert_string_equal(s, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    free(s);
    s = gw_fs_utf8_lossy("\xf0\x9f\x98\x80\xc0\xaf", 6, &n);
    assert_string_equal(s, "\xf0\x9f\x98\x80\xef\xbf\xbd\xef\xbf\xbd");
    free(s);
    s = gw_fs_utf8_lossy("a\0b", 3, &n); /* NUL is valid UTF-8 */
    assert_int_equal(n, 3);
    free(s);
    json_t *j = gw_fs_json_lossy("\xfe", 1);
    assert_non_null(j);
    assert_string_equal(json_string_value(j), "\xef\xbf\xbd");
    json_decref(j);
}

static void test_b64(void **state)
{
    (void)state;
    size_t n;
    char *e = gw_fs_b64_encode("hello\n", 6, &n);
    assert_string_equal(e, "aGVsbG8K");
    assert_int_equal(n, 8);
    uint8_t *d;
    assert_int_equal(gw_fs_b64_decode(e, n, 100, &d, &n), 0);
    assert_int_equal(n, 6);
    assert_memory_equal(d, "hello\n", 6);
    free(d);
    free(e);
    assert_int_equal(gw_fs_b64_decode("a$==", 4, 100, &d, &n), -1);
    assert_int_equal(gw_fs_b64_decode("aGVsbG8K", 8, 3, &d, &n), -1); /* over the cap */
    assert_int_equal(gw_fs_b64_decode("", 0, 3, &d, &n), 0);
    assert_int_equal(n, 0);
    free(d);
}

static void test_fileinfo(void **state)
{
    (void)state;
    struct sbx_fileinfo fi = {
        .type = "file",
        .size = 5,
        .mode = 0100644,
        .nlink = 1,
        .uid = 1000,
        .gid = 1000,
        .mtime_ns = 1796564247123456789LL,
    };
    json_t *j = gw_fs_fileinfo_json(&fi);
    assert_non_null(j);
    assert_true(json_is_true(json_object_get(j, "isFile")));
    assert_true(json_is_false(json_object_get(j, "isSymlink")));
    assert_int_equal(json_integer_value(json_object_get(j, "mode")), 33188);
    assert_string_equal(sget(j, "mtime"), "2026-12-06T13:37:27.123Z");
    assert_string_equal(sget(j, "birthtime"), "1970-01-01T00:00:00.000Z");
    assert_int_equal(json_object_size(j), 21);
    json_decref(j);
}

static void test_glob_to_regex(void **state)
{
    (void)state;
    struct {
        const char *glob, *ext, *plain;
    } cases[] = {
        { "*.ts", "^[^/]*\\.ts/*$", "^[^/]*\\.ts/*$" },
        { "/home/app/**/*.js", "^/+home/+app/+(?:[^/]*(?:/|$)+)*[^/]*\\.js/*$",
          "^/+home/+app/+[^/]*/+[^/]*\\.js/*$" },
        { "a/**", "^a/+(?:[^/]*(?:/|$)+)*$", "^a/+[^/]*/*$" },
        { "src/{a,b}/?.c", "^src/+(?:a|b)/+.\\.c/*$", "^src/+(?:a|b)/+.\\.c/*$" },
        { "[!x]y", "^[^x]y/*$", "^[^x]y/*$" },
        { "[[:digit:]]z", "^[\\d]z/*$", "^[\\d]z/*$" },
        { "+(a|b).md", "^(?:a|b)+\\.md/*$", "^\\+\\(a\\|b\\)\\.md/*$" },
        { "!(x).txt", "^(?!x)[^/]*\\.txt/*$", "^\\!\\(x\\)\\.txt/*$" },
        { "a\\*b", "^a\\*b/*$", "^a\\*b/*$" },
        { "**", "^(?:[^/]*(?:/|$)+)*$", "^[^/]*/*$" },
        { "a/", "^a/*$", "^a/*$" },
        { "{a,b", "^\\{a,b/*$", "^\\{a,b/*$" },
        { "x/*/**/y/", "^x/+[^/]*/+(?:[^/]*(?:/|$)+)*y/*$", "^x/+[^/]*/+[^/]*/+y/*$" },
        { "", "(?!)", "(?!)" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *r = gw_glob_to_regex(cases[i].glob, true, true);
        assert_non_null(r);
        assert_string_equal(r, cases[i].ext);
        free(r);
        r = gw_glob_to_regex(cases[i].glob, false, false);
        assert_string_equal(r, cases[i].plain);
        free(r);
    }
}

static bool matches(const char *src, const char *flags, const char *s)
{
    char why[256];
    pcre2_code *re = gw_js_regex(src, strlen(src), flags, why, sizeof(why));
    assert_non_null(re);
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    int rc = pcre2_match(re, (PCRE2_SPTR)s, strlen(s), 0, 0, md, NULL);
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    return rc >= 0;
}

static void test_js_regex(void **state)
{
    (void)state;
    char *r = gw_glob_to_regex("/home/app/**/*.js", true, true);
    assert_true(matches(r, "", "/home/app/a/b/c.js"));
    assert_true(matches(r, "", "/home/app/c.js"));
    assert_false(matches(r, "", "/home/app/c.ts"));
    assert_false(matches(r, "", "/home/app/C.JS"));
    assert_true(matches(r, "i", "/home/app/C.JS"));
    free(r);
    r = gw_glob_to_regex("/a/**", true, true);
    assert_false(matches(r, "", "/a"));
    assert_true(matches(r, "", "/a/")); /* what expandGlob tries for a directory */
    assert_true(matches(r, "", "/a/x/y"));
    free(r);
    /* JS: $ only at the very end without m; [^] is any character; \u escapes. */
    assert_false(matches("a$", "", "a\n"));
    assert_true(matches("a$", "m", "a\nb"));
    assert_true(matches("^[^]$", "", "x"));
    assert_true(matches("\\u00e9", "", "\xc3\xa9"));
    assert_true(matches("\\u{1F600}", "u", "\xf0\x9f\x98\x80"));
    assert_true(matches("node_modules", "g", "/x/node_modules/y"));
    char why[256];
    assert_null(gw_js_regex("(", 1, "", why, sizeof(why)));
    assert_non_null(strstr(why, "Invalid regular expression"));
    assert_null(gw_js_regex("a", 1, "ii", why, sizeof(why)));
    assert_null(gw_js_regex("a", 1, "q", why, sizeof(why)));
}

static void test_is_glob(void **state)
{
    (void)state;
    assert_int_equal(gw_is_glob("abc"), 0);
    assert_int_equal(gw_is_glob("*.ts"), 1);
    assert_int_equal(gw_is_glob("a\\*b"), 0);
    assert_int_equal(gw_is_glob("[ab]"), 1);
    assert_int_equal(gw_is_glob("{a,b}"), 1);
    assert_int_equal(gw_is_glob("@(x)"), 1);
    assert_int_equal(gw_is_glob("!x"), 1);
    assert_int_equal(gw_is_glob("a+b"), 0);
    assert_int_equal(gw_is_glob(""), 0);
}

static void test_normalize(void **state)
{
    (void)state;
    const char *cases[][2] = {
        { "", "." },
        { ".", "." },
        { "./", "./" },
        { "/", "/" },
        { "//a//b/", "/a/b/" },
        { "a/../..", ".." },
        { "/a/../../b", "/b" },
        { "a/./b/.", "a/b" },
        { "../x/", "../x/" },
        { "a/b/../c", "a/c" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *n = gw_path_normalize(cases[i][0]);
        assert_non_null(n);
        assert_string_equal(n, cases[i][1]);
        free(n);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_errmap_errno),  cmocka_unit_test(test_errmap_codes),
        cmocka_unit_test(test_iso),           cmocka_unit_test(test_utf8_lossy),
        cmocka_unit_test(test_b64),           cmocka_unit_test(test_fileinfo),
        cmocka_unit_test(test_glob_to_regex), cmocka_unit_test(test_js_regex),
        cmocka_unit_test(test_is_glob),       cmocka_unit_test(test_normalize),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
