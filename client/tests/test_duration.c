/* Unit tests: CLI duration and number parsing, human duration formatting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "cli.h"

static uint64_t dur(const char *s)
{
    uint64_t ms = 12345;

    assert_int_equal(cli_parse_duration(s, &ms), 0);
    return ms;
}

static void test_units(void **state)
{
    assert_int_equal(dur("500ms"), 500);
    assert_int_equal(dur("10s"), 10000);
    assert_int_equal(dur("2m"), 120000);
    assert_int_equal(dur("1h"), 3600000);
    assert_int_equal(dur("0s"), 0);
    assert_int_equal(dur("0"), 0);
    assert_int_equal(dur("90"), 90000); /* bare number: seconds */
}

static void test_fractions_and_compounds(void **state)
{
    assert_int_equal(dur("1.5s"), 1500);
    assert_int_equal(dur("0.25s"), 250);
    assert_int_equal(dur(".5s"), 500);
    assert_int_equal(dur("1.5"), 1500);
    assert_int_equal(dur("1.0005s"), 1000); /* below a millisecond: rounded down */
    assert_int_equal(dur("2.5ms"), 2);
    assert_int_equal(dur("1m30s"), 90000);
    assert_int_equal(dur("1h2m3s4ms"), 3723004);
    assert_int_equal(dur("1.123456789123s"), 1123);
}

static void test_rejects(void **state)
{
    static const char *bad[] = { "",
                                 "s",
                                 "ms",
                                 "-1s",
                                 "1x",
                                 "1.5.2s",
                                 "1 s",
                                 " 1s",
                                 "1s ",
                                 "1m30",
                                 "1e3",
                                 ".",
                                 "1ss",
                                 "18446744073709551616",
                                 "99999999999999999h",
                                 "+1s",
                                 "1S" };
    uint64_t ms = 7;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (cli_parse_duration(bad[i], &ms) != -1) {
            fail_msg("accepted bad duration \"%s\"", bad[i]);
        }
    }
    assert_int_equal(ms, 7); /* untouched on failure */
    assert_int_equal(cli_parse_duration(NULL, &ms), -1);
}

static void test_u64(void **state)
{
    uint64_t v = 0;

    assert_int_equal(cli_parse_u64("0", &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(cli_parse_u64("18446744073709551615", &v), 0);
    assert_true(v == UINT64_MAX);
    assert_int_equal(cli_parse_u64("18446744073709551616", &v), -1);
    assert_int_equal(cli_parse_u64("", &v), -1);
    assert_int_equal(cli_parse_u64("-1", &v), -1);
    assert_int_equal(cli_parse_u64("12a", &v), -1);
    assert_int_equal(cli_parse_u64(" 1", &v), -1);
}

static void test_format_ns(void **state)
{
    char buf[32];

    cli_format_ns(buf, sizeof(buf), 1500);
    assert_string_equal(buf, "1.5us");
    cli_format_ns(buf, sizeof(buf), 340000000);
    assert_string_equal(buf, "340.0ms");
    cli_format_ns(buf, sizeof(buf), 1250000000);
    assert_string_equal(buf, "1.25s");
    cli_format_ns(buf, sizeof(buf), 125000000000ull);
    assert_string_equal(buf, "2m05s");
    cli_format_ns(buf, sizeof(buf), 7380000000000ull);
    assert_string_equal(buf, "2h03m");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_units),     cmocka_unit_test(test_fractions_and_compounds),
        cmocka_unit_test(test_rejects),   cmocka_unit_test(test_u64),
        cmocka_unit_test(test_format_ns),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
