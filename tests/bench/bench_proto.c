/*
 * bench_proto: libsbxproto throughput (issue 2). Stream data: 64 KiB frames encoded with
 * sbx_data_header + the payload into a buffer, then fed through sbx_framer_next in 64–256 KiB
 * read-sized pieces and decoded with sbx_msg_decode, against a plain memcpy of the same bytes
 * measured in the same run. Small requests: a proc.kill request encoded with sbx_out_*, and
 * decoded through framer + sbx_msg_decode + three sbx_param_* reads, per second.
 *
 *   bench_proto [--quick] [--reps N] [--min-ms MS]
 *
 * Each figure is the median of N repetitions (each runs for at least MS milliseconds); baseline
 * and subject alternate within a repetition and the ratio is taken per repetition, so machine
 * noise hits both sides alike.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "sbx/frame.h"
#include "sbx/limits.h"
#include "sbx/msg.h"

#define DATA_PAYLOAD (64u << 10) /* bytes per stream-data frame */
#define DATA_FRAMES  16u         /* frames per batch: about 1 MiB on the wire */
#define SMALL_MSGS   16384u      /* small requests per batch */
#define MAX_REPS     64

struct ctx {
    uint8_t *src;  /* one frame's payload */
    uint8_t *wire; /* encoded data frames */
    size_t wire_len;
    uint8_t *dst; /* memcpy baseline destination */
    size_t chunks[16];
    struct sbx_framer fr;
    struct sbx_decoder dec;
    struct sbx_out out;
    uint8_t *small_wire; /* encoded proc.kill requests */
    size_t small_len;
    uint8_t *ping_wire; /* encoded ping requests */
    size_t ping_len;
};

typedef uint64_t (*work_fn)(struct ctx *c);

static __attribute__((noreturn)) void die(const char *what)
{
    fprintf(stderr, "bench_proto: %s\n", what);
    exit(1);
}

/* --- stream data ----------------------------------------------------------------------------- */

/* Encode one batch of frames into c->wire: header, then the payload copied behind it. */
static uint64_t work_encode(struct ctx *c)
{
    size_t off = 0;

    for (unsigned i = 0; i < DATA_FRAMES; i++) {
        off += sbx_data_header(c->wire + off, 5, DATA_PAYLOAD);
        memcpy(c->wire + off, c->src, DATA_PAYLOAD);
        off += DATA_PAYLOAD;
    }
    bench_keep(c->wire);
    return (uint64_t)DATA_FRAMES * DATA_PAYLOAD;
}

/*
 * Feed @len bytes of @wire to the framer in read-sized pieces (the schedule in c->chunks) and
 * decode every completed frame: through sbx_framer_next (frames whole in a read decoded where
 * they lie, as the agent and libsbx read) or, with @copy, through sbx_framer_feed (every frame
 * copied into the framer's buffer first). Returns the payload bytes seen; aborts on any protocol
 * error, since the input is our own encoding.
 */
static uint64_t feed_data(struct ctx *c, const uint8_t *wire, size_t len, bool copy)
{
    uint64_t bytes = 0, sum = 0;
    size_t pos = 0;
    unsigned k = 0;

    while (pos < len) {
        size_t n = c->chunks[k++ % 16], off = 0;
        if (n > len - pos) {
            n = len - pos;
        }
        while (off < n) {
            struct sbx_err err;
            struct sbx_msg m;
            const uint8_t *frame = c->fr.buf;
            uint32_t flen = 0;
            size_t used;
            int r = copy ? sbx_framer_feed(&c->fr, wire + pos + off, n - off, &used, &err)
                         : sbx_framer_next(&c->fr, wire + pos + off, n - off, &used, &frame, &flen,
                                           &err);
            off += used;
            if (r < 0) {
                die(err.msg);
            }
            if (r == 1) {
                if (copy) {
                    frame = c->fr.buf;
                    flen = c->fr.len;
                }
                if (sbx_msg_decode(&c->dec, frame, flen, &m, &err) < 0 || m.kind != SBX_MSG_DATA) {
                    die("data frame did not decode");
                }
                bytes += m.data_len;
                sum += m.data[0] + m.data[m.data_len - 1] + m.stream;
            }
        }
        pos += n;
    }
    bench_keep(&sum);
    return bytes;
}

static uint64_t work_encode_decode_copy(struct ctx *c)
{
    (void)work_encode(c);
    return feed_data(c, c->wire, c->wire_len, true);
}

static uint64_t work_decode(struct ctx *c)
{
    return feed_data(c, c->wire, c->wire_len, false);
}

static uint64_t work_encode_decode(struct ctx *c)
{
    (void)work_encode(c);
    return feed_data(c, c->wire, c->wire_len, false);
}

/* Decode the frames where they lie, without any framer (header parse only). */
static uint64_t work_decode_inplace(struct ctx *c)
{
    uint64_t bytes = 0, sum = 0;
    size_t pos = 0;

    while (pos < c->wire_len) {
        const uint8_t *p = c->wire + pos;
        uint32_t len = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
        struct sbx_err err;
        struct sbx_msg m;

        if (sbx_msg_decode(&c->dec, p + 4, len, &m, &err) < 0 || m.kind != SBX_MSG_DATA) {
            die("data frame did not decode");
        }
        bytes += m.data_len;
        sum += m.data[0] + m.data[m.data_len - 1];
        pos += 4 + len;
    }
    bench_keep(&sum);
    return bytes;
}

static uint64_t work_memcpy(struct ctx *c)
{
    memcpy(c->dst, c->wire, c->wire_len);
    bench_keep(c->dst);
    return (uint64_t)DATA_FRAMES * DATA_PAYLOAD;
}

/* --- small requests -------------------------------------------------------------------------- */

/* [0, id, "proc.kill", {id, signal: "TERM", group: true}] appended to c->out. */
static void pack_kill(struct ctx *c, uint32_t id)
{
    msgpack_packer *pk = &c->out.pk;
    struct sbx_err err;

    sbx_out_begin(&c->out);
    sbx_pack_request_head(pk, id, "proc.kill");
    (void)msgpack_pack_map(pk, 3);
    sbx_pack_kv_u64(pk, "id", id & 1023);
    sbx_pack_kv_str(pk, "signal", "TERM");
    sbx_pack_kv_bool(pk, "group", true);
    if (sbx_out_end(&c->out, &err) < 0) {
        die(err.msg);
    }
}

/* Encode as the agent and the client do: one frame per reset of the scratch buffer. */
static uint64_t work_small_encode(struct ctx *c)
{
    for (uint32_t i = 1; i <= SMALL_MSGS; i++) {
        sbx_out_reset(&c->out);
        pack_kill(c, i);
        bench_keep(c->out.sb.data);
    }
    return SMALL_MSGS;
}

static uint64_t feed_small(struct ctx *c, const uint8_t *wire, size_t len, bool kill)
{
    uint64_t msgs = 0, sum = 0;
    size_t pos = 0;
    unsigned k = 0;

    while (pos < len) {
        size_t n = c->chunks[k++ % 16] / 4, off = 0; /* 16–64 KiB: a busy control connection */
        if (n > len - pos) {
            n = len - pos;
        }
        while (off < n) {
            struct sbx_err err;
            struct sbx_msg m;
            size_t used;
            int r = sbx_framer_feed(&c->fr, wire + pos + off, n - off, &used, &err);
            off += used;
            if (r < 0) {
                die(err.msg);
            }
            if (r != 1) {
                continue;
            }
            if (sbx_msg_decode(&c->dec, c->fr.buf, c->fr.len, &m, &err) < 0 ||
                m.kind != SBX_MSG_REQUEST) {
                die("request did not decode");
            }
            if (kill) {
                uint64_t id = 0;
                char sig[16];
                bool group = false;
                if (!sbx_msg_method_is(&m, "proc.kill") ||
                    sbx_param_u64(m.params, "id", SBX_REQUIRED, 0, UINT32_MAX, &id, &err) != 0 ||
                    sbx_param_cstr(m.params, "signal", SBX_OPTIONAL, sig, sizeof(sig), &err) != 0 ||
                    sbx_param_bool(m.params, "group", SBX_OPTIONAL, &group, &err) != 0) {
                    die("proc.kill params did not read back");
                }
                sum += id + (uint8_t)sig[0] + group;
            } else {
                if (!sbx_msg_method_is(&m, "ping")) {
                    die("ping did not read back");
                }
                sum += m.id;
            }
            msgs++;
        }
        pos += n;
    }
    bench_keep(&sum);
    return msgs;
}

static uint64_t work_small_decode(struct ctx *c)
{
    return feed_small(c, c->small_wire, c->small_len, true);
}

static uint64_t work_ping_decode(struct ctx *c)
{
    return feed_small(c, c->ping_wire, c->ping_len, false);
}

/* --- measurement ----------------------------------------------------------------------------- */

/* Run @fn until at least @min_ns passed; returns work units per second. */
static double measure(work_fn fn, struct ctx *c, uint64_t min_ns)
{
    uint64_t units = 0, t0, dt;

    (void)fn(c); /* warm caches and buffers */
    t0 = bench_now_ns();
    do {
        units += fn(c);
        dt = bench_now_ns() - t0;
    } while (dt < min_ns);
    return (double)units * 1e9 / (double)dt;
}

static void setup(struct ctx *c)
{
    uint32_t seed = 12345;

    memset(c, 0, sizeof(*c));
    c->src = malloc(DATA_PAYLOAD);
    c->wire = malloc((size_t)DATA_FRAMES * (DATA_PAYLOAD + SBX_STREAM_DATA_HDR_MAX));
    c->dst = malloc((size_t)DATA_FRAMES * (DATA_PAYLOAD + SBX_STREAM_DATA_HDR_MAX));
    if (c->src == NULL || c->wire == NULL || c->dst == NULL || sbx_decoder_init(&c->dec) < 0) {
        die("out of memory");
    }
    for (size_t i = 0; i < DATA_PAYLOAD; i++) {
        c->src[i] = (uint8_t)((i * 131 + 7) & 255);
    }
    /* Read sizes as a socket hands them out: 64–256 KiB, deterministic. */
    for (unsigned i = 0; i < 16; i++) {
        seed = seed * 1103515245u + 12345u;
        c->chunks[i] = (64u << 10) + (seed >> 8) % (192u << 10);
    }
    sbx_framer_init(&c->fr, SBX_FRAME_MAX);
    sbx_out_init(&c->out);
    (void)work_encode(c);
    c->wire_len = 0;
    for (unsigned i = 0; i < DATA_FRAMES; i++) {
        uint8_t hdr[SBX_STREAM_DATA_HDR_MAX];
        c->wire_len += sbx_data_header(hdr, 5, DATA_PAYLOAD) + DATA_PAYLOAD;
    }
    for (uint32_t i = 1; i <= SMALL_MSGS; i++) {
        pack_kill(c, i);
    }
    c->small_wire = (uint8_t *)sbx_out_steal(&c->out, &c->small_len);
    sbx_out_init(&c->out);
    for (uint32_t i = 1; i <= SMALL_MSGS; i++) {
        struct sbx_err err;
        sbx_out_begin(&c->out);
        sbx_pack_request_head(&c->out.pk, i, "ping");
        (void)msgpack_pack_map(&c->out.pk, 0);
        if (sbx_out_end(&c->out, &err) < 0) {
            die(err.msg);
        }
    }
    c->ping_wire = (uint8_t *)sbx_out_steal(&c->out, &c->ping_len);
    sbx_out_init(&c->out);
    if (c->small_wire == NULL || c->ping_wire == NULL) {
        die("out of memory");
    }
}

static void teardown(struct ctx *c)
{
    free(c->src);
    free(c->wire);
    free(c->dst);
    free(c->small_wire);
    free(c->ping_wire);
    sbx_framer_free(&c->fr);
    sbx_decoder_destroy(&c->dec);
    sbx_out_destroy(&c->out);
}

/* A throughput row against the memcpy baseline. */
static void row_vs_memcpy(const char *what, double *v, double *base, double *ratio, int reps,
                          const char *target, double min_ratio)
{
    struct bench_stat s = bench_stat_of(v, (size_t)reps);
    struct bench_stat b = bench_stat_of(base, (size_t)reps);
    struct bench_stat r = bench_stat_of(ratio, (size_t)reps);
    char fig[32], spread[64], bl[48], rt[32];

    bench_fmt_gbps(fig, sizeof(fig), s.med);
    bench_fmt_spread(spread, sizeof(spread), &s, 1e9, "GB/s");
    snprintf(bl, sizeof(bl), "memcpy %.2f GB/s", b.med / 1e9);
    snprintf(rt, sizeof(rt), "%.1f %%", r.med * 100);
    bench_row(what, fig, spread, bl, rt, target,
              min_ratio > 0 ? (r.med >= min_ratio ? "yes" : "NO") : "-");
}

static void row_rate(const char *what, double *v, int reps, const char *target, double min_rate)
{
    struct bench_stat s = bench_stat_of(v, (size_t)reps);
    char fig[32], spread[64];

    snprintf(fig, sizeof(fig), "%.2f M/s", s.med / 1e6);
    bench_fmt_spread(spread, sizeof(spread), &s, 1e6, "M/s");
    bench_row(what, fig, spread, "", "", target,
              min_rate > 0 ? (s.med >= min_rate ? "yes" : "NO") : "-");
}

int main(int argc, char **argv)
{
    static double mc[MAX_REPS], ed[MAX_REPS], dec[MAX_REPS], inpl[MAX_REPS], edz[MAX_REPS];
    static double r_ed[MAX_REPS], r_dec[MAX_REPS], r_edz[MAX_REPS];
    static double s_dec[MAX_REPS], s_enc[MAX_REPS], s_ping[MAX_REPS];
    struct ctx c;
    int reps = 9;
    long min_ms = 250;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            reps = 5;
            min_ms = 80;
        }
    }
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            continue; /* handled above */
        } else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
            reps = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--min-ms") == 0 && i + 1 < argc) {
            min_ms = atol(argv[++i]);
        } else {
            fprintf(stderr, "usage: bench_proto [--quick] [--reps N] [--min-ms MS]\n");
            return 2;
        }
    }
    if (reps < 1 || reps > MAX_REPS || min_ms < 1) {
        die("--reps must be 1..64 and --min-ms positive");
    }
    setup(&c);
    bench_note("proto: %d repetitions of >= %ld ms each", reps, min_ms);
    for (int r = 0; r < reps; r++) {
        uint64_t min_ns = (uint64_t)min_ms * 1000000u;
        mc[r] = measure(work_memcpy, &c, min_ns);
        ed[r] = measure(work_encode_decode, &c, min_ns);
        dec[r] = measure(work_decode, &c, min_ns);
        inpl[r] = measure(work_decode_inplace, &c, min_ns);
        edz[r] = measure(work_encode_decode_copy, &c, min_ns);
        r_ed[r] = ed[r] / mc[r];
        r_edz[r] = edz[r] / mc[r];
        r_dec[r] = dec[r] / mc[r];
        s_dec[r] = measure(work_small_decode, &c, min_ns);
        s_enc[r] = measure(work_small_encode, &c, min_ns);
        s_ping[r] = measure(work_ping_decode, &c, min_ns);
    }
    row_vs_memcpy("proto: 64 KiB data frames, encode (hdr+copy) + framer (sbx_framer_next, "
                  "64–256 KiB reads) + decode",
                  ed, mc, r_ed, reps, "≥ 50 % of memcpy", 0.5);
    row_vs_memcpy("reference: same through the copying sbx_framer_feed (before)", edz, mc, r_edz,
                  reps, "-", 0);
    row_vs_memcpy("proto: 64 KiB data frames, framer + decode only", dec, mc, r_dec, reps, "-", 0);
    for (int r = 0; r < reps; r++) {
        inpl[r] /= DATA_PAYLOAD; /* bytes/s to frames/s: the payload is never touched */
    }
    row_rate("proto: data frame decoded in place, no framer copy (header parse only), frames", inpl,
             reps, "-", 0);
    row_rate("proto: proc.kill request, framer + decode + 3 sbx_param reads", s_dec, reps,
             "≥ 1 M/s", 1e6);
    row_rate("proto: proc.kill request, encode (sbx_out + sbx_pack)", s_enc, reps, "-", 0);
    row_rate("proto: ping request, framer + decode", s_ping, reps, "-", 0);
    teardown(&c);
    return 0;
}
