/* Unit tests: structured errors, errno and signal names. */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "sbx/err.h"

static void test_errno_names(void **state)
{
    assert_string_equal(sbx_errno_name(ENOENT), "ENOENT");
    assert_string_equal(sbx_errno_name(EACCES), "EACCES");
    assert_null(sbx_errno_name(0));
    assert_null(sbx_errno_name(-3));
    assert_int_equal(sbx_errno_from_name("ENOTDIR"), ENOTDIR);
    assert_int_equal(sbx_errno_from_name("ENOPE"), 0);
}

static void test_err_sys(void **state)
{
    struct sbx_err e;

    assert_int_equal(sbx_err_sys(&e, ENOENT, "exec", "exec \"%s\"", "nosuch"), -ENOENT);
    assert_string_equal(e.code, "ENOENT");
    assert_string_equal(e.stage, "exec");
    assert_int_equal(e.sys_errno, ENOENT);
    assert_string_equal(e.msg, "exec \"nosuch\": No such file or directory");
    sbx_err_prefix(&e, "spawn %d", 3);
    assert_string_equal(e.msg, "spawn 3: exec \"nosuch\": No such file or directory");
    assert_true(sbx_err_isset(&e));
    sbx_err_clear(&e);
    assert_false(sbx_err_isset(&e));
}

static void test_err_param_truncates(void **state)
{
    struct sbx_err e;
    char big[SBX_ERR_MSG_MAX + 100];

    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(sbx_err_param(&e, big, "%s", big), -1);
    assert_string_equal(e.code, SBX_E_BAD_PARAM);
    assert_int_equal(strlen(e.msg), SBX_ERR_MSG_MAX - 1);
    assert_int_equal(strlen(e.field), SBX_ERR_FIELD_MAX - 1);
}

static void test_signals(void **state)
{
    char buf[32];

    assert_int_equal(sbx_signal_parse("TERM"), SIGTERM);
    assert_int_equal(sbx_signal_parse("SIGTERM"), SIGTERM);
    assert_int_equal(sbx_signal_parse("sigkill"), SIGKILL);
    assert_int_equal(sbx_signal_parse("9"), SIGKILL);
    assert_int_equal(sbx_signal_parse("SIG34"), 34);
    assert_int_equal(sbx_signal_parse("64"), 64);
    assert_int_equal(sbx_signal_parse("iot"), SIGABRT);
    assert_int_equal(sbx_signal_parse("SIGCLD"), SIGCHLD);
    assert_int_equal(sbx_signal_parse("0"), -1);
    assert_int_equal(sbx_signal_parse("65"), -1);
    assert_int_equal(sbx_signal_parse("SIG"), -1);
    assert_int_equal(sbx_signal_parse("SIGNOPE"), -1);
    assert_int_equal(sbx_signal_parse(""), -1);
    assert_int_equal(sbx_signal_parse("9x"), -1);
    assert_string_equal(sbx_signal_name(SIGINT, buf, sizeof(buf)), "SIGINT");
    assert_string_equal(sbx_signal_name(SIGSTKFLT, buf, sizeof(buf)), "SIGSTKFLT");
    assert_string_equal(sbx_signal_name(36, buf, sizeof(buf)), "SIG36");
    assert_null(sbx_signal_name(0, buf, sizeof(buf)));
    assert_null(sbx_signal_name(65, buf, sizeof(buf)));
    /* Every name the agent reports parses back to its number. */
    for (int sig = 1; sig <= 64; sig++) {
        assert_int_equal(sbx_signal_parse(sbx_signal_name(sig, buf, sizeof(buf))), sig);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_errno_names),
        cmocka_unit_test(test_err_sys),
        cmocka_unit_test(test_err_param_truncates),
        cmocka_unit_test(test_signals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
