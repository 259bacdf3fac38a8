/* A minimal blocking sbx client for benchmarks: decode in place, writev data frames. */
#include "benchcli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "bench.h"
#include "sbx/client.h"
#include "sbx/limits.h"

#define BCLI_BUF  (2 * SBX_FRAME_MAX + 64)
#define BCLI_READ (256u << 10) /* as socat -b 262144 reads in the baselines */
/* Reads land in the first BCLI_SOFT_CAP bytes while frames fit there, so the buffer stays in
 * cache as the baselines' single 256 KiB buffer does; only large frames use the rest. */
#define BCLI_SOFT_CAP (1u << 20)

int bcli_open(struct bcli *c, const char *path)
{
    struct sockaddr_un sa;
    struct sbx_msg m;
    msgpack_packer *pk;
    uint32_t id;

    memset(c, 0, sizeof(*c));
    c->fd = -1;
    c->next_id = 1;
    c->window = SBX_STREAM_WINDOW;
    c->cap = BCLI_BUF;
    c->read_max = BCLI_READ;
    c->soft_cap = BCLI_SOFT_CAP;
    sbx_out_init(&c->out);
    c->buf = malloc(c->cap);
    if (c->buf == NULL || sbx_decoder_init(&c->dec) < 0) {
        fprintf(stderr, "bench client: out of memory\n");
        return -1;
    }
    if (bench_unix_addr(&sa, path) < 0) {
        fprintf(stderr, "bench client: socket path too long\n");
        return -1;
    }
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        fprintf(stderr, "bench client: connect %s: %s\n", path, strerror(errno));
        return -1;
    }
    {
        int sz = SBX_CLIENT_SNDBUF; /* as libsbx asks for (client/lib/addr.c) */
        (void)setsockopt(c->fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
    }
    pk = bcli_begin_request(c, "hello", &id);
    (void)msgpack_pack_map(pk, 2);
    sbx_pack_kv_u64(pk, "version", SBX_PROTO_VERSION);
    sbx_pack_kv_str(pk, "client", "sbx-bench");
    if (bcli_send(c) < 0) {
        return -1;
    }
    for (;;) {
        if (bcli_recv(c, &m, true) != 1) {
            return -1;
        }
        if (m.kind == SBX_MSG_RESPONSE && m.id == id) {
            const msgpack_object *lim;
            if (m.error != NULL) {
                fprintf(stderr, "bench client: hello failed\n");
                return -1;
            }
            lim = sbx_obj_get(m.result, "limits");
            c->window = bcli_u32(lim, "stream_window", SBX_STREAM_WINDOW);
            return 0;
        }
    }
}

void bcli_close(struct bcli *c)
{
    if (c->fd >= 0) {
        close(c->fd);
    }
    c->fd = -1;
    free(c->buf);
    c->buf = NULL;
    sbx_decoder_destroy(&c->dec);
    sbx_out_destroy(&c->out);
}

int bcli_recv(struct bcli *c, struct sbx_msg *m, bool block)
{
    for (;;) {
        size_t avail = c->tail - c->head, need = SBX_FRAME_HDR;
        ssize_t n;

        if (avail >= SBX_FRAME_HDR) {
            const uint8_t *p = c->buf + c->head;
            uint32_t len = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
            if (len == 0 || len > SBX_FRAME_MAX) {
                fprintf(stderr, "bench client: bad frame length %u\n", len);
                return -1;
            }
            need = SBX_FRAME_HDR + len;
            if (avail >= need) {
                struct sbx_err err;
                c->head += need;
                if (sbx_msg_decode(&c->dec, p + SBX_FRAME_HDR, len, m, &err) < 0) {
                    fprintf(stderr, "bench client: bad message: %s\n", err.msg);
                    return -1;
                }
                return 1;
            }
        }
        /* Move a partial frame to the front once the tail passes the soft cap (or the frame
         * would not fit): at most one frame's bytes every few reads, cache-hot. */
        if (c->tail + c->read_max > c->soft_cap || c->cap - c->head < need) {
            memmove(c->buf, c->buf + c->head, avail);
            c->head = 0;
            c->tail = avail;
        }
        n = recv(c->fd, c->buf + c->tail,
                 c->cap - c->tail < c->read_max ? c->cap - c->tail : c->read_max,
                 block ? 0 : MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (!block && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                return 0;
            }
            fprintf(stderr, "bench client: read: %s\n", strerror(errno));
            return -1;
        }
        if (n == 0) {
            fprintf(stderr, "bench client: the agent closed the connection\n");
            return -1;
        }
        c->tail += (size_t)n;
    }
}

msgpack_packer *bcli_begin_request(struct bcli *c, const char *method, uint32_t *id)
{
    *id = c->next_id++;
    sbx_out_reset(&c->out);
    sbx_out_begin(&c->out);
    sbx_pack_request_head(&c->out.pk, *id, method);
    return &c->out.pk;
}

msgpack_packer *bcli_begin_notify(struct bcli *c, const char *method)
{
    sbx_out_reset(&c->out);
    sbx_out_begin(&c->out);
    sbx_pack_notify_head(&c->out.pk, method);
    return &c->out.pk;
}

int bcli_send(struct bcli *c)
{
    struct sbx_err err;
    int r;

    if (sbx_out_end(&c->out, &err) < 0) {
        fprintf(stderr, "bench client: encode: %s\n", err.msg);
        return -1;
    }
    r = bench_write_all(c->fd, c->out.sb.data, c->out.sb.size);
    if (r < 0) {
        fprintf(stderr, "bench client: write: %s\n", strerror(errno));
    }
    sbx_out_reset(&c->out);
    return r;
}

int bcli_credit(struct bcli *c, uint32_t stream, uint32_t bytes)
{
    msgpack_packer *pk = bcli_begin_notify(c, "stream.credit");

    (void)msgpack_pack_map(pk, 2);
    sbx_pack_kv_u64(pk, "stream", stream);
    sbx_pack_kv_u64(pk, "bytes", bytes);
    return bcli_send(c);
}

int bcli_end(struct bcli *c, uint32_t stream)
{
    msgpack_packer *pk = bcli_begin_notify(c, "stream.end");

    (void)msgpack_pack_map(pk, 1);
    sbx_pack_kv_u64(pk, "stream", stream);
    return bcli_send(c);
}

int bcli_data(struct bcli *c, uint32_t stream, const void *data, uint32_t len)
{
    uint8_t hdr[SBX_STREAM_DATA_HDR_MAX];
    struct iovec iov[2];
    int i = 0;

    iov[0].iov_base = hdr;
    iov[0].iov_len = sbx_data_header(hdr, stream, len);
    iov[1].iov_base = (void *)data;
    iov[1].iov_len = len;
    while (i < 2) {
        ssize_t n = writev(c->fd, iov + i, 2 - i);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            fprintf(stderr, "bench client: writev: %s\n", strerror(errno));
            return -1;
        }
        while (i < 2 && (size_t)n >= iov[i].iov_len) {
            n -= (ssize_t)iov[i].iov_len;
            i++;
        }
        if (i < 2) {
            iov[i].iov_base = (uint8_t *)iov[i].iov_base + n;
            iov[i].iov_len -= (size_t)n;
        }
    }
    return 0;
}

uint32_t bcli_spawn(struct bcli *c, const char *const *argv, const char *in, const char *out,
                    const char *err, uint32_t timeout_ms)
{
    uint32_t id, argc = 0;
    msgpack_packer *pk = bcli_begin_request(c, "proc.spawn", &id);

    while (argv[argc] != NULL) {
        argc++;
    }
    (void)msgpack_pack_map(pk, 4 + (timeout_ms > 0));
    sbx_pack_cstr(pk, "argv");
    (void)msgpack_pack_array(pk, argc);
    for (uint32_t i = 0; i < argc; i++) {
        sbx_pack_cstr(pk, argv[i]);
    }
    sbx_pack_kv_str(pk, "stdin", in);
    sbx_pack_kv_str(pk, "stdout", out);
    sbx_pack_kv_str(pk, "stderr", err);
    if (timeout_ms > 0) {
        sbx_pack_kv_u64(pk, "timeout_ms", timeout_ms);
    }
    return bcli_send(c) == 0 ? id : 0;
}

uint32_t bcli_u32(const msgpack_object *map, const char *key, uint32_t dflt)
{
    const msgpack_object *o = sbx_obj_get(map, key);

    if (o == NULL || o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 > UINT32_MAX) {
        return dflt;
    }
    return (uint32_t)o->via.u64;
}
