/*
 * A socketless stand-in for the libuv stream calls of one gateway file, for the gw_* fuzz
 * targets that #include that file (fuzz_gw_http.c, fuzz_gw_ingress.c): include this header, then
 * the gateway .c file. The file's uv_write / uv_shutdown / uv_read_start / uv_read_stop /
 * uv_accept / uv_close become the fz_uv_* functions below, which touch no socket: writes and
 * shutdowns are queued and completed by fz_uv_pump (as the loop would, later and from outside
 * the caller), read starts and stops only succeed (the target delivers the bytes itself by
 * calling the file's read callback), and closing a handle cancels what it still has queued
 * (UV_ECANCELED, as libuv does before the close callback). Every other libuv call (timers, idle
 * handles, uv_close itself) is the real one on a real loop.
 */
#ifndef SBX_FUZZ_GW_UV_H
#define SBX_FUZZ_GW_UV_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

struct fz_op {
    uv_handle_t *h;
    uv_write_t *w; /* a write, or ... */
    uv_write_cb wcb;
    uv_shutdown_t *s; /* ... a shutdown */
    uv_shutdown_cb scb;
};

static struct fz_op *fz_ops;
static size_t fz_nops, fz_capops;
static size_t fz_written; /* bytes the file wrote (the answers), for a target's checks */
/* When set, sees every byte the file writes (a target that reads what it sends). */
static void (*fz_uv_sink)(const char *data, size_t len);

static inline int fz_push(struct fz_op op)
{
    if (fz_nops == fz_capops) {
        size_t cap = fz_capops ? fz_capops * 2 : 64;
        struct fz_op *p = realloc(fz_ops, cap * sizeof(*p));
        if (p == NULL) {
            return UV_ENOMEM;
        }
        fz_ops = p;
        fz_capops = cap;
    }
    fz_ops[fz_nops++] = op;
    return 0;
}

static inline int fz_uv_write(uv_write_t *req, uv_stream_t *handle, const uv_buf_t bufs[],
                              unsigned int nbufs, uv_write_cb cb)
{
    if (uv_is_closing((uv_handle_t *)handle)) {
        return UV_EBADF;
    }
    for (unsigned int i = 0; i < nbufs; i++) {
        fz_written += bufs[i].len;
        if (fz_uv_sink != NULL) {
            fz_uv_sink(bufs[i].base, bufs[i].len);
        }
    }
    req->handle = handle;
    return fz_push((struct fz_op){ .h = (uv_handle_t *)handle, .w = req, .wcb = cb });
}

static inline int fz_uv_shutdown(uv_shutdown_t *req, uv_stream_t *handle, uv_shutdown_cb cb)
{
    if (uv_is_closing((uv_handle_t *)handle)) {
        return UV_ENOTCONN;
    }
    req->handle = handle;
    return fz_push((struct fz_op){ .h = (uv_handle_t *)handle, .s = req, .scb = cb });
}

static inline int fz_uv_read_start(uv_stream_t *s, uv_alloc_cb a, uv_read_cb r)
{
    (void)s;
    (void)a;
    (void)r;
    return 0;
}

static inline int fz_uv_read_stop(uv_stream_t *s)
{
    (void)s;
    return 0;
}

static inline int fz_uv_accept(uv_stream_t *server, uv_stream_t *client)
{
    (void)server;
    (void)client;
    return 0;
}

/* Complete the op at @i (removed first: its callback may queue more). */
static inline void fz_complete(size_t i, int status)
{
    struct fz_op op = fz_ops[i];
    memmove(fz_ops + i, fz_ops + i + 1, (fz_nops - i - 1) * sizeof(*fz_ops));
    fz_nops--;
    if (op.w != NULL) {
        op.wcb(op.w, status);
    } else if (op.scb != NULL) {
        op.scb(op.s, status);
    }
}

static inline void fz_uv_close(uv_handle_t *h, uv_close_cb cb)
{
    uv_close(h, cb);
    for (size_t i = 0; i < fz_nops;) {
        if (fz_ops[i].h == h) {
            fz_complete(i, UV_ECANCELED);
            i = 0;
            continue;
        }
        i++;
    }
}

/* Complete the writes and shutdowns queued now. Returns how many. */
static inline size_t fz_uv_pump(void)
{
    size_t n = fz_nops, done = 0;
    while (done < n && fz_nops > 0) {
        fz_complete(0, uv_is_closing(fz_ops[0].h) ? UV_ECANCELED : 0);
        done++;
    }
    return done;
}

/* Pump and run the loop (without blocking) @rounds times. */
static inline void fz_uv_settle(uv_loop_t *loop, int rounds)
{
    for (int i = 0; i < rounds; i++) {
        (void)fz_uv_pump();
        (void)uv_run(loop, UV_RUN_NOWAIT);
    }
    (void)fz_uv_pump();
}

#define uv_write      fz_uv_write
#define uv_shutdown   fz_uv_shutdown
#define uv_read_start fz_uv_read_start
#define uv_read_stop  fz_uv_read_stop
#define uv_accept     fz_uv_accept
#define uv_close      fz_uv_close

/* The length of the next run of an input's bytes, as the ops of gw_agent and gw_link spell it: a
 * big-endian u16, cut to what is left; all of the rest when the two bytes are not there. */
static inline size_t fz_take_len16(const uint8_t **p, const uint8_t *end)
{
    size_t n;

    if (end - *p < 2) {
        *p = end;
        return 0;
    }
    n = (size_t)(*p)[0] << 8 | (*p)[1];
    *p += 2;
    return n > (size_t)(end - *p) ? (size_t)(end - *p) : n;
}

/* An answer of the gateway's REST routes as the SDKs read it: a 200, or an error body with its
 * code and message (gw_http_respond_json's stand-ins in gw_ingress and gw_link check this). */
static inline bool fz_answer_ok(int status, json_t *body)
{
    return status == 200 || (json_is_string(json_object_get(body, "code")) &&
                             json_is_string(json_object_get(body, "message")));
}

#endif /* SBX_FUZZ_GW_UV_H */
