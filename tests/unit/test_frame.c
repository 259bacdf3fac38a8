/* Unit tests: the incremental frame decoder. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
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

/* A given buffer is used for the next straddling frame; giving a second one is refused. */
static void test_give(void **state)
{
    uint8_t buf[64];
    size_t len = make_frames(buf, 3), used;
    struct sbx_framer f;
    struct sbx_err err;
    uint8_t *mine = malloc(128), *other = malloc(16), *owned;
    uint32_t olen;

    assert_non_null(mine);
    assert_non_null(other);
    sbx_framer_init(&f, 0);
    assert_int_equal(sbx_framer_give(&f, mine, 128), 0);
    assert_int_equal(sbx_framer_give(&f, other, 16), -1); /* already has one: caller keeps it */
    free(other);
    assert_int_equal(sbx_framer_feed(&f, buf, len, &used, &err), 1);
    assert_ptr_equal(f.buf, mine);
    assert_int_equal(f.buf_cap, 128);
    owned = sbx_framer_take(&f, &olen);
    assert_ptr_equal(owned, mine);
    assert_int_equal(sbx_framer_give(&f, owned, 128), 0);
    assert_int_equal(sbx_framer_feed(&f, buf + used, len - used, &used, &err), 1);
    check_frame(&f, 2);
    assert_ptr_equal(f.buf, mine);
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

/* --- sbx_framer_next: zero-copy where the frame lies whole in the input ------------------- */

static void check_payload(const uint8_t *p, uint32_t n, unsigned i)
{
    assert_non_null(p);
    assert_int_equal(n, i);
    for (unsigned k = 0; k < i; k++) {
        assert_int_equal(p[k], 'A' + (int)i - 1);
    }
}

/*
 * Feed @len bytes of make_frames() output, cut at the offsets in @cuts (ascending, @ncuts of
 * them), each piece in its own exactly-sized heap buffer (so ASan sees any read past a piece).
 * Checks every frame, and that a frame lying whole in one piece is handed out as a pointer into
 * that piece while one that straddles pieces comes from the framer's buffer. Returns the count
 * of frames handed out without a copy.
 */
static unsigned feed_pieces(const uint8_t *src, size_t len, const size_t *cuts, size_t ncuts,
                            unsigned nframes)
{
    struct sbx_framer f;
    struct sbx_err err;
    unsigned got = 0, zero_copy = 0;
    size_t frame_start = 0; /* offset in src of the next frame's header */

    sbx_framer_init(&f, 0);
    for (size_t p = 0; p <= ncuts; p++) {
        size_t begin = p == 0 ? 0 : cuts[p - 1], end = p == ncuts ? len : cuts[p];
        uint8_t *piece = malloc(end - begin + 1); /* +1: malloc(0) may return NULL */
        size_t off = 0;

        assert_non_null(piece);
        memcpy(piece, src + begin, end - begin);
        while (off < end - begin) {
            const uint8_t *fp;
            uint32_t fl;
            size_t used;
            int r = sbx_framer_next(&f, piece + off, end - begin - off, &used, &fp, &fl, &err);
            assert_true(r >= 0);
            assert_true(used > 0);
            off += used;
            if (r == 1) {
                bool whole = frame_start >= begin && frame_start + 4 + fl <= end;
                check_payload(fp, fl, ++got);
                if (whole) {
                    assert_ptr_equal(fp, piece + (frame_start - begin) + 4);
                    zero_copy++;
                } else {
                    assert_ptr_equal(fp, f.buf);
                }
                frame_start += 4 + fl;
            }
        }
        free(piece);
    }
    assert_int_equal(got, nframes);
    sbx_framer_free(&f);
    return zero_copy;
}

static void test_next_several_in_one_buffer(void **state)
{
    uint8_t buf[512];
    size_t len = make_frames(buf, 20);
    struct sbx_framer f;

    /* All 20 frames in one read: every one is a pointer into it, nothing is allocated. */
    assert_int_equal(feed_pieces(buf, len, NULL, 0, 20), 20);
    sbx_framer_init(&f, 0);
    {
        const uint8_t *fp;
        uint32_t fl;
        size_t used;
        struct sbx_err err;
        assert_int_equal(sbx_framer_next(&f, buf, len, &used, &fp, &fl, &err), 1);
        assert_int_equal(used, 5);
        assert_ptr_equal(fp, buf + 4);
        assert_null(f.buf);
        /* An empty input needs more and changes nothing. */
        assert_int_equal(sbx_framer_next(&f, buf, 0, &used, &fp, &fl, &err), 0);
        assert_int_equal(used, 0);
        assert_null(fp);
    }
    sbx_framer_free(&f);
}

static void test_next_split_everywhere(void **state)
{
    uint8_t buf[512];
    size_t len = make_frames(buf, 10);

    /* Two pieces, cut at every offset; then three pieces, cut at every pair of offsets (frames
     * straddling one and two boundaries, headers split in every way). */
    for (size_t a = 0; a <= len; a++) {
        size_t cuts[2] = { a, 0 };
        unsigned zc = feed_pieces(buf, len, cuts, 1, 10);
        assert_true(zc >= 9); /* at most the frame the cut falls in is copied */
        for (size_t b = a; b <= len; b++) {
            cuts[1] = b;
            assert_true(feed_pieces(buf, len, cuts, 2, 10) >= 8);
        }
    }
}

static void test_next_byte_by_byte(void **state)
{
    uint8_t buf[512];
    size_t len = make_frames(buf, 12), cuts[511];

    for (size_t i = 0; i + 1 < len; i++) {
        cuts[i] = i + 1;
    }
    /* Every frame straddles pieces: all come from the framer's buffer. */
    assert_int_equal(feed_pieces(buf, len, cuts, len - 1, 12), 0);
}

static void test_next_straddling_large_frame(void **state)
{
    /* A 200 KiB frame arriving in 64 KiB reads, then a small one whole in the last read. */
    const uint32_t big = 200u << 10;
    size_t len = 4 + big + 4 + 3, off = 0;
    uint8_t *src = malloc(len);
    struct sbx_framer f;
    struct sbx_err err;
    int frames = 0;

    assert_non_null(src);
    sbx_frame_put_len(src, big);
    for (uint32_t i = 0; i < big; i++) {
        src[4 + i] = (uint8_t)(i * 7);
    }
    sbx_frame_put_len(src + 4 + big, 3);
    memcpy(src + 8 + big, "xyz", 3);
    sbx_framer_init(&f, 0);
    while (off < len) {
        size_t n = len - off < (64u << 10) ? len - off : (64u << 10), pos = 0;
        while (pos < n) {
            const uint8_t *fp;
            uint32_t fl;
            size_t used;
            int r = sbx_framer_next(&f, src + off + pos, n - pos, &used, &fp, &fl, &err);
            assert_true(r >= 0);
            pos += used;
            if (r == 1 && frames++ == 0) {
                assert_int_equal(fl, big);
                assert_ptr_equal(fp, f.buf);
                assert_memory_equal(fp, src + 4, big);
            } else if (r == 1) {
                assert_int_equal(fl, 3);
                assert_ptr_equal(fp, src + off + pos - 3); /* whole in this read: no copy */
                assert_memory_equal(fp, "xyz", 3);
            }
        }
        off += n;
    }
    assert_int_equal(frames, 2);
    sbx_framer_free(&f);
    free(src);
}

static void test_next_refuses_bad_lengths(void **state)
{
    uint8_t huge[8] = { 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4 };
    uint8_t zero[8] = { 0, 0, 0, 0, 1, 2, 3, 4 };
    uint8_t over[4];
    const uint8_t *fp;
    uint32_t fl;
    struct sbx_framer f;
    struct sbx_err err;
    size_t used;

    /* Whole header in the input: refused on it, nothing allocated, stays broken. */
    sbx_framer_init(&f, 0);
    assert_int_equal(sbx_framer_next(&f, huge, sizeof(huge), &used, &fp, &fl, &err), -1);
    assert_string_equal(err.code, "FRAME_TOO_LARGE");
    assert_int_equal(used, 4);
    assert_null(f.buf);
    assert_int_equal(f.buf_cap, 0);
    assert_int_equal(sbx_framer_next(&f, huge + 4, 4, &used, &fp, &fl, &err), -1);
    assert_string_equal(err.code, "BAD_FRAME");
    sbx_framer_free(&f);

    /* The header split 3 + 1: the copying path refuses it just the same. */
    sbx_framer_init(&f, 0);
    sbx_frame_put_len(over, SBX_FRAME_MAX + 1);
    assert_int_equal(sbx_framer_next(&f, over, 3, &used, &fp, &fl, &err), 0);
    assert_int_equal(sbx_framer_next(&f, over + 3, 1, &used, &fp, &fl, &err), -1);
    assert_string_equal(err.code, "FRAME_TOO_LARGE");
    assert_null(f.buf);
    sbx_framer_free(&f);

    /* Cap 16: a 17-byte header is refused, a 16-byte one waits for its payload. */
    sbx_framer_init(&f, 16);
    sbx_frame_put_len(over, 17);
    assert_int_equal(sbx_framer_next(&f, over, 4, &used, &fp, &fl, &err), -1);
    assert_string_equal(err.code, "FRAME_TOO_LARGE");
    sbx_framer_free(&f);
    sbx_framer_init(&f, 16);
    sbx_frame_put_len(over, 16);
    assert_int_equal(sbx_framer_next(&f, over, 4, &used, &fp, &fl, &err), 0);
    assert_int_equal(used, 4);
    sbx_framer_free(&f);

    sbx_framer_init(&f, 0);
    assert_int_equal(sbx_framer_next(&f, zero, sizeof(zero), &used, &fp, &fl, &err), -1);
    assert_string_equal(err.code, "BAD_FRAME");
    sbx_framer_free(&f);
}

static void test_space_commit(void **state)
{
    uint8_t buf[128], *dst;
    size_t len = make_frames(buf, 9), used; /* frames 1..9: the 9th is 9 'I's at the end */
    size_t last = len - 4 - 9;              /* offset of the 9th frame's header */
    const uint8_t *fp;
    uint32_t fl;
    struct sbx_framer f;
    struct sbx_err err;
    unsigned got = 0;

    sbx_framer_init(&f, 0);
    /* At a frame boundary there is nothing to read in place. */
    assert_int_equal(sbx_framer_space(&f, &dst), 0);
    assert_null(dst);
    /* Everything up to the 9th frame's header plus 2 payload bytes, in one read. */
    for (size_t off = 0; off < last + 6; off += used) {
        int r = sbx_framer_next(&f, buf + off, last + 6 - off, &used, &fp, &fl, &err);
        assert_true(r >= 0);
        if (r == 1) {
            check_payload(fp, fl, ++got);
        }
    }
    assert_int_equal(got, 8);
    /* 7 payload bytes missing: read "in place", 3 then 4 bytes. */
    assert_int_equal(sbx_framer_space(&f, &dst), 7);
    assert_ptr_equal(dst, f.buf + 2);
    memcpy(dst, buf + last + 6, 3);
    assert_int_equal(sbx_framer_commit(&f, 3), 0);
    assert_int_equal(sbx_framer_space(&f, &dst), 4);
    memcpy(dst, buf + last + 9, 4);
    assert_int_equal(sbx_framer_commit(&f, 4), 1);
    check_frame(&f, 9);
    assert_int_equal(sbx_framer_space(&f, &dst), 0);
    /* The framer goes on normally afterwards. */
    assert_int_equal(sbx_framer_next(&f, buf, 5, &used, &fp, &fl, &err), 1);
    check_payload(fp, fl, 1);
    sbx_framer_free(&f);

    /* Broken framing offers no space. */
    sbx_framer_init(&f, 4);
    assert_int_equal(sbx_framer_next(&f, buf + last, 13, &used, &fp, &fl, &err), -1);
    assert_int_equal(sbx_framer_space(&f, &dst), 0);
    sbx_framer_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_whole_buffer),
        cmocka_unit_test(test_byte_by_byte),
        cmocka_unit_test(test_zero_length),
        cmocka_unit_test(test_oversized_before_alloc),
        cmocka_unit_test(test_exact_cap),
        cmocka_unit_test(test_take),
        cmocka_unit_test(test_give),
        cmocka_unit_test(test_split_everywhere),
        cmocka_unit_test(test_next_several_in_one_buffer),
        cmocka_unit_test(test_next_split_everywhere),
        cmocka_unit_test(test_next_byte_by_byte),
        cmocka_unit_test(test_next_straddling_large_frame),
        cmocka_unit_test(test_next_refuses_bad_lengths),
        cmocka_unit_test(test_space_commit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
