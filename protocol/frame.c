/* Incremental frame decoder: length prefix checked before allocation, any input split. */
#include "sbx/frame.h"

#include <stdlib.h>
#include <string.h>

#include "sbx/limits.h"

void sbx_framer_init(struct sbx_framer *f, uint32_t max)
{
    memset(f, 0, sizeof(*f));
    f->max = max != 0 ? max : SBX_FRAME_MAX;
}

void sbx_framer_free(struct sbx_framer *f)
{
    free(f->buf);
    f->buf = NULL;
    f->buf_cap = 0;
}

void sbx_frame_put_len(uint8_t out[4], uint32_t len)
{
    out[0] = (uint8_t)(len >> 24);
    out[1] = (uint8_t)(len >> 16);
    out[2] = (uint8_t)(len >> 8);
    out[3] = (uint8_t)len;
}

/* Make room for a payload of f->len bytes; f->len is already checked against the cap. */
static int framer_reserve(struct sbx_framer *f, struct sbx_err *err)
{
    uint32_t want;
    uint8_t *p;

    if (f->buf_cap >= f->len) {
        return 0;
    }
    /* Grow geometrically but never past the cap, so a stream of growing frames is cheap. */
    want = f->buf_cap ? f->buf_cap : 4096;
    while (want < f->len) {
        want = want > f->max / 2 ? f->max : want * 2;
    }
    if (want > f->max) {
        want = f->max;
    }
    p = realloc(f->buf, want);
    if (p == NULL) {
        return sbx_err_set(err, SBX_E_INTERNAL, "out of memory for a %u-byte frame", f->len);
    }
    f->buf = p;
    f->buf_cap = want;
    return 0;
}

/* Check a frame length read from a header; sets f->broken and @err when it is refused. */
static int framer_check_len(struct sbx_framer *f, uint32_t len, struct sbx_err *err)
{
    if (len == 0) {
        f->broken = 1;
        return sbx_err_set(err, SBX_E_BAD_FRAME, "zero-length frame");
    }
    if (len > f->max) {
        f->broken = 1;
        return sbx_err_set(err, SBX_E_FRAME_TOO_LARGE, "frame of %u bytes exceeds the %u-byte cap",
                           len, f->max);
    }
    return 0;
}

static uint32_t get_len(const uint8_t h[4])
{
    return (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
}

int sbx_framer_feed(struct sbx_framer *f, const uint8_t *data, size_t len, size_t *consumed,
                    struct sbx_err *err)
{
    size_t off = 0;

    *consumed = 0;
    if (f->broken) {
        return sbx_err_set(err, SBX_E_BAD_FRAME, "connection framing is broken");
    }
    /* A completed frame was handed out by the previous call: start the next one. */
    if (f->hdr_have == 4 && f->have == f->len) {
        f->hdr_have = 0;
        f->have = 0;
        f->len = 0;
    }
    while (f->hdr_have < 4) {
        if (off == len) {
            *consumed = off;
            return 0;
        }
        f->hdr[f->hdr_have++] = data[off++];
    }
    if (f->have == 0 && f->len == 0) {
        f->len = get_len(f->hdr);
        if (framer_check_len(f, f->len, err) < 0) {
            *consumed = off;
            return -1;
        }
        if (framer_reserve(f, err) < 0) {
            f->broken = 1;
            *consumed = off;
            return -1;
        }
    }
    {
        size_t need = f->len - f->have;
        size_t n = len - off < need ? len - off : need;
        memcpy(f->buf + f->have, data + off, n);
        f->have += (uint32_t)n;
        off += n;
    }
    *consumed = off;
    return f->have == f->len ? 1 : 0;
}

int sbx_framer_next(struct sbx_framer *f, const uint8_t *data, size_t len, size_t *consumed,
                    const uint8_t **frame, uint32_t *flen, struct sbx_err *err)
{
    int r;

    *frame = NULL;
    *flen = 0;
    /* Fast path: at a frame boundary, with the whole frame in @data, hand out a pointer. */
    if (!f->broken && f->hdr_have == 4 && f->have == f->len) {
        f->hdr_have = 0; /* the previous frame came from f->buf and was handed out */
        f->have = 0;
        f->len = 0;
    }
    if (!f->broken && f->hdr_have == 0 && len >= 4) {
        uint32_t l = get_len(data);
        if (framer_check_len(f, l, err) < 0) {
            *consumed = 4;
            return -1;
        }
        if (len - 4 >= l) {
            *frame = data + 4;
            *flen = l;
            *consumed = 4 + (size_t)l;
            return 1;
        }
    }
    /* A frame that straddles inputs (or a header split across them): collect it in f->buf. */
    r = sbx_framer_feed(f, data, len, consumed, err);
    if (r == 1) {
        *frame = f->buf;
        *flen = f->len;
    }
    return r;
}

size_t sbx_framer_space(struct sbx_framer *f, uint8_t **dst)
{
    if (f->broken || f->hdr_have < 4 || f->have == f->len) {
        *dst = NULL;
        return 0;
    }
    *dst = f->buf + f->have;
    return f->len - f->have;
}

int sbx_framer_commit(struct sbx_framer *f, size_t n)
{
    f->have += (uint32_t)n;
    return f->have == f->len ? 1 : 0;
}

uint8_t *sbx_framer_take(struct sbx_framer *f, uint32_t *len)
{
    uint8_t *p = f->buf;

    *len = f->len;
    f->buf = NULL;
    f->buf_cap = 0;
    return p;
}

int sbx_framer_give(struct sbx_framer *f, uint8_t *buf, uint32_t cap)
{
    if (f->buf != NULL) {
        return -1;
    }
    f->buf = buf;
    f->buf_cap = cap;
    return 0;
}
