/*
 * libFuzzer target for the frame decoder + message decoder + params accessors.
 * The first input byte picks how the rest is split into reads and how each read reaches the
 * framer, so every split point of the framer gets exercised; each complete frame is decoded and
 * its params read the way the agent's handlers read them. The frames that come out must be the
 * stream's frames, in order, and the framer must fail exactly at the first refused length.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sbx/frame.h"
#include "sbx/msg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A small cap keeps the fuzzer fast; same code path. */
#define FUZZ_FRAME_MAX (1u << 16)
/* The stand-in for agent/conn.c's pooled framer buffers (AGENT_POOLBUF: a chunk and its
 * header, no power of two): smaller than the cap, so a frame that outgrows one makes the framer
 * grow a buffer it was given, doubling up to the cap. */
#define FUZZ_POOLBUF (1024u + 16u)

#define CHECK(cond, what)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_decode: %s\n", what);                                            \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* What a plain reading of the stream says comes next: the frames before the first length the
 * framer must refuse (0 or over the cap). */
struct expect {
    const uint8_t *p, *end;
    bool bad; /* the next header is complete and refused */
};

static void expect_next(struct expect *x, const uint8_t **frame, uint32_t *len)
{
    uint32_t l;

    *frame = NULL;
    *len = 0;
    if (x->bad || x->end - x->p < 4) {
        return;
    }
    l = (uint32_t)x->p[0] << 24 | (uint32_t)x->p[1] << 16 | (uint32_t)x->p[2] << 8 | x->p[3];
    if (l == 0 || l > FUZZ_FRAME_MAX) {
        x->bad = true;
        return;
    }
    if ((size_t)(x->end - x->p) - 4 < l) {
        return;
    }
    *frame = x->p + 4;
    *len = l;
    x->p += 4 + (size_t)l;
}

static void poke_params(const msgpack_object *p)
{
    static const char *const keys[] = { "argv",  "command", "env",   "cwd",    "stream",
                                        "bytes", "version", "token", "signal", "path" };
    struct sbx_err err;
    const msgpack_object *o;
    const char *s;
    size_t n;
    uint64_t u;
    int64_t i;
    bool b;
    const uint8_t *bp;
    char buf[64];

    for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
        (void)sbx_param_str(p, keys[k], SBX_OPTIONAL, 4096, &s, &n, &err);
        (void)sbx_param_cstr(p, keys[k], SBX_OPTIONAL, buf, sizeof(buf), &err);
        (void)sbx_param_u64(p, keys[k], SBX_OPTIONAL, 0, UINT32_MAX, &u, &err);
        (void)sbx_param_i64(p, keys[k], SBX_OPTIONAL, INT32_MIN, INT32_MAX, &i, &err);
        (void)sbx_param_bool(p, keys[k], SBX_REQUIRED, &b, &err);
        (void)sbx_param_bin(p, keys[k], SBX_OPTIONAL, 4096, &bp, &n, &err);
        if (sbx_param_array(p, keys[k], SBX_OPTIONAL, 4096, &o, &err) == 0) {
            for (uint32_t j = 0; j < o->via.array.size; j++) {
                (void)sbx_obj_cstr(&o->via.array.ptr[j], buf, sizeof(buf));
            }
        }
        if (sbx_param_map(p, keys[k], SBX_OPTIONAL, 4096, &o, &err) == 0) {
            for (uint32_t j = 0; j < o->via.map.size; j++) {
                (void)sbx_obj_cstr(&o->via.map.ptr[j].key, buf, sizeof(buf));
                (void)sbx_obj_cstr(&o->via.map.ptr[j].val, buf, sizeof(buf));
            }
        }
    }
}

/* A frame came out of the framer: it must be the stream's next one; decode it and read it. */
static void on_frame(struct sbx_decoder *d, struct expect *x, const uint8_t *fp, uint32_t fl)
{
    const uint8_t *want;
    uint32_t wl;
    struct sbx_msg m;
    struct sbx_err err;

    expect_next(x, &want, &wl);
    CHECK(want != NULL && fl == wl && memcmp(fp, want, fl) == 0,
          "a frame out of the framer is not the stream's next frame");
    if (sbx_msg_decode(d, fp, fl, &m, &err) == 0) {
        if (m.kind == SBX_MSG_RESPONSE && m.error != NULL) {
            sbx_err_from_obj(m.error, &err);
        }
        poke_params(m.params);
        if (m.kind == SBX_MSG_RESPONSE) {
            poke_params(m.result);
        }
    }
}

/* After a frame collected in the framer's buffer was handled, as agent/conn.c does: drop that
 * buffer (it may have grown) and give the framer a pool-sized one. A second buffer is refused. */
static void rebuf(struct sbx_framer *f)
{
    uint8_t *pool, *spare;
    uint32_t len;

    if (f->buf != NULL && f->buf_cap == FUZZ_POOLBUF) {
        return;
    }
    free(sbx_framer_take(f, &len));
    CHECK(f->buf == NULL && f->buf_cap == 0, "sbx_framer_take left the framer a buffer");
    pool = malloc(FUZZ_POOLBUF);
    if (pool == NULL) {
        return;
    }
    CHECK(sbx_framer_give(f, pool, FUZZ_POOLBUF) == 0, "a framer without a buffer refused one");
    spare = malloc(16);
    if (spare != NULL) {
        CHECK(sbx_framer_give(f, spare, 16) == -1 && f->buf == pool,
              "a framer that has a buffer took a second one");
        free(spare);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct sbx_framer f;
    struct sbx_decoder d;
    struct sbx_err err;
    struct expect x;
    size_t step, off = 1;
    bool zero_copy, in_place, recycle, failed = false;
    const uint8_t *fp;
    uint32_t fl;

    if (size < 1) {
        return 0;
    }
    /* Byte 0 picks the read size and, in its low bits, how reads reach the framer: bit 0 set,
     * through sbx_framer_next (frames handed out in place), and then, as agent/conn.c reads,
     * bit 1: the rest of a frame that straddles reads is read into sbx_framer_space and
     * committed; bit 2: a frame collected in the framer's buffer is taken and the buffer
     * replaced. Bit 0 clear: through sbx_framer_feed. */
    step = data[0] == 0 ? size : data[0];
    zero_copy = data[0] & 1;
    in_place = zero_copy && (data[0] & 2);
    recycle = zero_copy && (data[0] & 4);
    x = (struct expect){ .p = data + 1, .end = data + size };
    sbx_framer_init(&f, FUZZ_FRAME_MAX);
    if (sbx_decoder_init(&d) != 0) {
        return 0;
    }
    while (off < size && !failed) {
        size_t chunk = size - off < step ? size - off : step, used = 0, pos = 0;
        uint8_t *dst, *rd;
        size_t missing = in_place ? sbx_framer_space(&f, &dst) : 0;

        if (missing > 0) {
            size_t n = chunk < missing ? chunk : missing;
            CHECK(dst == f.buf + f.have && missing == f.len - f.have,
                  "sbx_framer_space points outside the frame being collected");
            memcpy(dst, data + off, n);
            off += n;
            if (sbx_framer_commit(&f, n) == 1) {
                on_frame(&d, &x, f.buf, f.len);
                if (recycle) {
                    rebuf(&f);
                }
            }
            continue;
        }
        /* Each read in its own exactly-sized buffer, so ASan sees a read past it. */
        rd = malloc(chunk);
        if (rd == NULL) {
            goto out;
        }
        memcpy(rd, data + off, chunk);
        while (pos < chunk) {
            int r = zero_copy ? sbx_framer_next(&f, rd + pos, chunk - pos, &used, &fp, &fl, &err)
                              : sbx_framer_feed(&f, rd + pos, chunk - pos, &used, &err);
            pos += used;
            if (r < 0) {
                failed = true;
                break;
            }
            if (r == 1 && !zero_copy) {
                fp = f.buf;
                fl = f.len;
            }
            if (r == 1) {
                on_frame(&d, &x, fp, fl);
                if (recycle && fp == f.buf) {
                    rebuf(&f);
                }
            }
            if (used == 0 && r == 0) {
                break;
            }
        }
        free(rd);
        off += chunk;
    }
    expect_next(&x, &fp, &fl);
    /* The whole stream was read: every complete frame came out, and the framer failed iff the
     * stream holds a refused length before its end. */
    CHECK(fp == NULL, "a complete frame of the stream never came out of the framer");
    CHECK(failed == x.bad,
          failed ? "the framer refused a good length" : "a bad length got through");
    if (failed) {
        uint8_t b = 0, *dst;
        size_t used;
        CHECK(sbx_framer_feed(&f, &b, 1, &used, &err) == -1 &&
                  sbx_framer_next(&f, &b, 1, &used, &fp, &fl, &err) == -1 &&
                  sbx_framer_space(&f, &dst) == 0,
              "a broken framer took more input");
    }
out:
    sbx_decoder_destroy(&d);
    sbx_framer_free(&f);
    return 0;
}
