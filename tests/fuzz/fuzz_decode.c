/*
 * libFuzzer target for the frame decoder + message decoder + params accessors.
 * The first input byte picks how the rest is split into feed() calls, so every split point of
 * the framer gets exercised; each complete frame is decoded and its params read the way the
 * agent's handlers read them.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sbx/frame.h"
#include "sbx/msg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct sbx_framer f;
    struct sbx_decoder d;
    struct sbx_msg m;
    struct sbx_err err;
    size_t step, off = 1;
    bool zero_copy;

    if (size < 1) {
        return 0;
    }
    /* The first byte picks the read size, and its low bit the framer call: odd ones go through
     * sbx_framer_next (frames handed out in place), even ones through sbx_framer_feed. */
    step = data[0] == 0 ? size : data[0];
    zero_copy = data[0] & 1;
    sbx_framer_init(&f, 1u << 16); /* a small cap keeps the fuzzer fast; same code path */
    if (sbx_decoder_init(&d) != 0) {
        return 0;
    }
    while (off < size) {
        size_t chunk = size - off < step ? size - off : step, used = 0, pos = 0;
        /* Each read in its own exactly-sized buffer, so ASan sees a read past it. */
        uint8_t *rd = malloc(chunk);
        if (rd == NULL) {
            goto out;
        }
        memcpy(rd, data + off, chunk);
        while (pos < chunk) {
            const uint8_t *fp = NULL;
            uint32_t fl = 0;
            int r = zero_copy ? sbx_framer_next(&f, rd + pos, chunk - pos, &used, &fp, &fl, &err)
                              : sbx_framer_feed(&f, rd + pos, chunk - pos, &used, &err);
            pos += used;
            if (r < 0) {
                free(rd);
                goto out;
            }
            if (r == 1 && !zero_copy) {
                fp = f.buf;
                fl = f.len;
            }
            if (r == 1) {
                if (sbx_msg_decode(&d, fp, fl, &m, &err) == 0) {
                    if (m.kind == SBX_MSG_RESPONSE && m.error != NULL) {
                        sbx_err_from_obj(m.error, &err);
                    }
                    poke_params(m.params);
                    if (m.kind == SBX_MSG_RESPONSE) {
                        poke_params(m.result);
                    }
                }
            }
            if (used == 0 && r == 0) {
                break;
            }
        }
        free(rd);
        off += chunk;
    }
out:
    sbx_decoder_destroy(&d);
    sbx_framer_free(&f);
    return 0;
}
