/*
 * Incremental frame decoder. Bytes arrive in arbitrary pieces (down to one at a time); a frame is
 * a 4-byte big-endian length L (1 <= L <= max) followed by L bytes. The length is checked against
 * the cap on the header bytes, before anything is allocated, so a hostile prefix costs nothing.
 */
#ifndef SBX_FRAME_H
#define SBX_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "sbx/err.h"

struct sbx_framer {
    uint8_t hdr[4];
    uint32_t hdr_have; /* header bytes seen for the current frame */
    uint32_t len;      /* payload length, valid once hdr_have == 4 */
    uint32_t have;     /* payload bytes seen */
    uint32_t max;      /* frame cap */
    uint8_t *buf;      /* payload buffer, reused between frames */
    uint32_t buf_cap;
    int broken; /* a fatal framing error was seen; everything after it is refused */
};

/* Initialise @f with cap @max (0 means SBX_FRAME_MAX). Allocates nothing. */
void sbx_framer_init(struct sbx_framer *f, uint32_t max);

/* Free the buffer. @f may be re-initialised afterwards. */
void sbx_framer_free(struct sbx_framer *f);

/*
 * Consume bytes from @data until a frame is complete or the input is used up. *consumed says how
 * many bytes were taken. Returns 1 when a frame is complete (payload in f->buf, length f->len;
 * valid until the next feed), 0 when more input is needed, or -1 on a fatal framing error
 * (BAD_FRAME for a zero length, FRAME_TOO_LARGE over the cap, INTERNAL when out of memory) with
 * @err filled. After -1 the stream cannot be resynchronised: close the connection.
 */
int sbx_framer_feed(struct sbx_framer *f, const uint8_t *data, size_t len, size_t *consumed,
                    struct sbx_err *err);

/*
 * The same as sbx_framer_feed, without the copy where possible: returns 1 with *frame / *flen
 * set to the completed frame's payload. A frame that lies whole in @data (the common case: it
 * arrived in one read) is handed out as a pointer into @data, valid as long as @data is; only a
 * frame that straddles inputs is collected in f->buf (valid until the next call). 0: all input
 * consumed, more needed; -1: fatal framing error, as for sbx_framer_feed (an oversized or zero
 * length is refused on its header, before anything is allocated). The two calls may be mixed.
 */
int sbx_framer_next(struct sbx_framer *f, const uint8_t *data, size_t len, size_t *consumed,
                    const uint8_t **frame, uint32_t *flen, struct sbx_err *err);

/*
 * While a frame that straddles reads is being collected, the rest of its payload can be read
 * straight into the framer's buffer instead of being copied there: returns how many payload
 * bytes are still missing and sets *dst to where they go, or 0 (not inside a payload, or
 * broken). After reading n bytes (1 <= n <= the returned count) into *dst, call
 * sbx_framer_commit.
 */
size_t sbx_framer_space(struct sbx_framer *f, uint8_t **dst);

/* @n bytes were stored where sbx_framer_space said. Returns 1 when that completed the frame
 * (payload in f->buf, length f->len, as after sbx_framer_feed), else 0. */
int sbx_framer_commit(struct sbx_framer *f, size_t n);

/*
 * Take ownership of the completed frame's buffer (caller frees it with free()), so a payload can
 * outlive the next feed without a copy. Only valid right after feed returned 1 (or next returned
 * 1 with *frame == f->buf).
 */
uint8_t *sbx_framer_take(struct sbx_framer *f, uint32_t *len);

/*
 * Give the framer a buffer of @cap bytes (malloc'd; taken over) to collect straddling frames in,
 * so a buffer taken with sbx_framer_take can be replaced with recycled memory instead of a fresh
 * allocation. Returns 0, or -1 when the framer already has a buffer (the caller keeps @buf).
 */
int sbx_framer_give(struct sbx_framer *f, uint8_t *buf, uint32_t cap);

/* Write the 4-byte big-endian length prefix for a payload of @len bytes. */
void sbx_frame_put_len(uint8_t out[4], uint32_t len);

#endif /* SBX_FRAME_H */
