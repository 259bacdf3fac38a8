/* Unit tests: the incremental frame decoder. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sbx/frame.h"
#include "sbx/limits.h"

/* Build len-prefixed frames of payloads "A", "BB", "CCC", ... into @buf. */
static size_t make_frames(uint8_t *buf, unsigned count)
{
    size_t off = 0;

    for (unsigned i = 1; i <= count; i++) {
        sbx_frame_put_len(buf + off, i);
        off += 4;
        memset(buf + off, 'A' + (int)i - 1, i);
        off += i;
    }
    return off;
}

static void check_frame(const struct sbx_framer *f, unsigned i)
{
    assert_int_equal(f->len, i);
    for (unsigned k = 0; k < i; k++) {
        assert_int_equal(f->buf[k], 'A' + (int)i - 1);
    }
}

static void test_whole_buffer(void **state)
{
    uint8_t buf[512];
    size_t len = make_frames(buf, 20), off = 0, used;
    struct sbx_framer f;
    struct sbx_err err;
    unsigned got = 0;

    sbx_framer_init(&f, 0);
    while (off < len) {
        int r = sbx_framer_feed(&f, buf + off, len - off, &used, &err);
        assert_true(r >= 0);
        off += used;
        if (r == 1) {
            check_frame(&f, ++got);
        }
    }
    assert_int_equal(got, 20);
    sbx_framer_free(&f);
}

static void test_byte_by_byte(void **state)
{
    uint8_t buf[512];
    size_t len = make_frames(buf, 20), used;
    struct sbx_framer f;
    struct sbx_err err;
    unsigned got = 0;

    sbx_framer_init(&f, 0);
    for (size_t i = 0; i < len; i++) {
        int r = sbx_framer_feed(&f, buf + i, 1, &used, &err);
        assert_true(r >= 0);
        assert_int_equal(used, 1);
        if (r == 1) {
            check_frame(&f, ++got);
        }
    }
    assert_int_equal(got, 20);
    /* An empty feed changes nothing. */
    assert_int_equal(sbx_framer_feed(&f, buf, 0, &used, &err), 0);
    assert_int_equal(used, 0);
    sbx_framer_free(&f);
}

static void test_zero_length(void **state)
{
    uint8_t buf[8] = { 0, 0, 0, 0, 1, 2, 3, 4 };
    struct sbx_framer f;
    struct sbx_err err;
    size_t used;

    sbx_framer_init(&f, 0);
    assert_int_equal(sbx_framer_feed(&f, buf, sizeof(buf), &used, &err), -1);
    assert_string_equal(err.code, "BAD_FRAME");
    /* Broken framing stays broken. */
    assert_int_equal(sbx_framer_feed(&f, buf + 4, 4, &used, &err), -1);
    sbx_framer_free(&f);
}

static void test_oversized_before_alloc(void **state)
{
    uint8_t huge[4] = { 0xff, 0xff, 0xff, 0xff };
    uint8_t over[4];
    struct sbx_framer f;
    struct sbx_err err;
    size_t used;

    sbx_framer_init(&f, 0);
    /* Three header bytes: nothing decided, nothing allocated. */
    assert_int_equal(sbx_framer_feed(&f, huge, 3, &used, &err), 0);
    assert_null(f.buf);
    assert_int_equal(sbx_framer_feed(&f, huge + 3, 1, &used, &err), -1);
    assert_string_equal(err.code, "FRAME_TOO_LARGE");
    assert_null(f.buf);
    assert_int_equal(f.buf_cap, 0);
    sbx_framer_free(&f);

    sbx_framer_init(&f, 0);
    sbx_frame_put_len(over, SBX_FRAME_MAX + 1);
    assert_int_equal(sbx_framer_feed(&f, over, 4, &used, &err), -1);
    assert_string_equal(err.code, "FRAME_TOO_LARGE");
    assert_null(f.buf);
    sbx_framer_free(&f);
}

static void test_exact_cap(void **state)
{
    const uint32_t cap = 1000;
    uint8_t *buf = calloc(1, 4 + cap + 4);
    struct sbx_framer f;
    struct sbx_err err;
    size_t used;

    assert_non_null(buf);
    sbx_framer_init(&f, cap);
    sbx_frame_put_len(buf, cap);
    assert_int_equal(sbx_framer_feed(&f, buf, 4 + cap, &used, &err), 1);
    assert_int_equal(used, 4 + cap);
    assert_int_equal(f.len, cap);
    assert_true(f.buf_cap <= cap);
    sbx_frame_put_len(buf, cap + 1);
    assert_int_equal(sbx_framer_feed(&f, buf, 4, &used, &err), -1);
    assert_string_equal(err.code, "FRAME_TOO_LARGE");
    sbx_framer_free(&f);
    free(buf);
}

static void test_take(void **state)
{
    uint8_t buf[64];
    size_t len = make_frames(buf, 3), off = 0, used;
    struct sbx_framer f;
    struct sbx_err err;
    uint8_t *owned;
    uint32_t olen;

    sbx_framer_init(&f, 0);
    assert_int_equal(sbx_framer_feed(&f, buf, len, &used, &err), 1);
    off += used;
    owned = sbx_framer_take(&f, &olen);
    assert_int_equal(olen, 1);
    assert_int_equal(owned[0], 'A');
    assert_null(f.buf);
    /* The next frame gets a fresh buffer; the taken one is untouched. */
    assert_int_equal(sbx_framer_feed(&f, buf + off, len - off, &used, &err), 1);
    check_frame(&f, 2);
    assert_int_equal(owned[0], 'A');
    free(owned);
    sbx_framer_free(&f);
}

static void test_split_everywhere(void **state)
{
    uint8_t buf[512];
    size_t len = make_frames(buf, 10);

    /* Split the input in two at every offset; the same frames must come out. */
    for (size_t cut = 0; cut <= len; cut++) {
        struct sbx_framer f;
        struct sbx_err err;
        unsigned got = 0;
        size_t pieces[2][2] = { { 0, cut }, { cut, len } };

        sbx_framer_init(&f, 0);
        for (int p = 0; p < 2; p++) {
            size_t off = pieces[p][0], end = pieces[p][1], used;
            while (off < end) {
                int r = sbx_framer_feed(&f, buf + off, end - off, &used, &err);
                assert_true(r >= 0);
                off += used;
                if (r == 1) {
                    check_frame(&f, ++got);
                }
            }
        }
        assert_int_equal(got, 10);
        sbx_framer_free(&f);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_whole_buffer),     cmocka_unit_test(test_byte_by_byte),
        cmocka_unit_test(test_zero_length),      cmocka_unit_test(test_oversized_before_alloc),
        cmocka_unit_test(test_exact_cap),        cmocka_unit_test(test_take),
        cmocka_unit_test(test_split_everywhere),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
