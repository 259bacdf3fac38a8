/*
 * Transfers on the blocking client (sbx/transfer.h): uploads from an fd with the SHA-256 on a
 * thread of its own, `out` streams into an fd, transfer.done.
 */
#include "sbx/transfer.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nettle/sha2.h>

int sbx_stream_call(struct sbx_client *c, int r, uint32_t id, bool with_size,
                    struct sbx_stream_result *res, struct sbx_err *err)
{
    struct sbx_msg resp;

    if (sbx_client_call(c, r, id, &resp, err) < 0) {
        return -1;
    }
    return sbx_stream_result_read(resp.result, with_size, res, err);
}

int sbx_stream_next(struct sbx_client *c, uint32_t sid, const uint8_t **data, size_t *len,
                    struct sbx_err *err)
{
    for (;;) {
        struct sbx_msg m;
        struct sbx_stream_note n;
        struct sbx_err e;

        if (sbx_client_recv(c, &m, -1, err) < 0) {
            return -1;
        }
        if (m.kind == SBX_MSG_DATA && m.stream == sid) {
            *data = m.data;
            *len = m.data_len;
            return 1;
        }
        if (m.kind != SBX_MSG_NOTIFY) {
            continue;
        }
        if (sbx_msg_method_is(&m, SBX_N_STREAM_END)) {
            if (sbx_stream_note_read(SBX_N_STREAM_END, m.params, &n, &e) < 0 || n.stream != sid) {
                continue;
            }
            if (n.has_error) {
                *err = n.error;
                return -1;
            }
            return 0;
        }
        /* The agent may cancel its own stream too (§8.5): nothing more comes on it. */
        if (sbx_msg_method_is(&m, SBX_N_STREAM_CANCEL) &&
            sbx_stream_note_read(SBX_N_STREAM_CANCEL, m.params, &n, &e) == 0 && n.stream == sid) {
            if (n.has_error) {
                *err = n.error;
            } else {
                sbx_err_set(err, SBX_E_CANCELLED, "the agent cancelled stream %u", sid);
            }
            return -1;
        }
    }
}

int sbx_write_all(int fd, const void *buf, size_t n)
{
    const uint8_t *p = buf;

    while (n > 0) {
        ssize_t w = write(fd, p, n);
        struct pollfd pfd = { .fd = fd, .events = POLLOUT };

        if (w > 0) {
            p += w;
            n -= (size_t)w;
        } else if (w < 0 && errno == EAGAIN) {
            (void)poll(&pfd, 1, -1);
        } else if (w == 0 || errno != EINTR) {
            return w < 0 ? -errno : -EIO;
        }
    }
    return 0;
}

int sbx_stream_to_fd(struct sbx_client *c, uint32_t sid, int fd, sbx_progress_fn progress,
                     void *arg, struct sbx_err *err)
{
    const uint8_t *p;
    size_t n;
    int r;

    while ((r = sbx_stream_next(c, sid, &p, &n, err)) > 0) {
        int w = sbx_write_all(fd, p, n);
        if (w < 0) {
            struct sbx_err e;
            (void)sbx_client_stream_cancel(c, sid, &e);
            sbx_err_sys(err, -w, NULL, "write");
            return -1;
        }
        if (progress != NULL) {
            progress(arg, n);
        }
        if (sbx_client_consumed(c, sid, (uint32_t)n, err) < 0) {
            return -1;
        }
    }
    return r;
}

int sbx_wait_done(struct sbx_client *c, uint32_t sid, struct sbx_transfer_done *d,
                  struct sbx_err *err)
{
    for (;;) {
        struct sbx_msg m;
        struct sbx_err e;

        if (sbx_client_recv(c, &m, -1, err) < 0) {
            return -1;
        }
        if (m.kind != SBX_MSG_NOTIFY || !sbx_msg_method_is(&m, SBX_N_TRANSFER_DONE) ||
            sbx_transfer_done_read(m.params, d, &e) < 0 || d->stream != sid) {
            continue;
        }
        if (d->failed) {
            *err = d->error;
            return -1;
        }
        return 0;
    }
}

int sbx_upload_end(struct sbx_client *c, uint32_t sid, const char *sha256,
                   struct sbx_transfer_done *d, struct sbx_err *err)
{
    struct sbx_transfer_done own;

    d = d != NULL ? d : &own;
    /* A stream the agent cancelled is not open any more: ending it is a no-op. */
    if (sbx_client_stream_end(c, sid, err) < 0 || sbx_wait_done(c, sid, d, err) < 0) {
        return -1;
    }
    if (sha256 == NULL) {
        return 0;
    }
    if (d->sha256[0] == '\0') {
        return sbx_err_param(err, "sha256", "missing required parameter \"sha256\"");
    }
    if (strcmp(d->sha256, sha256) != 0) {
        return sbx_err_set(err, SBX_E_INTERNAL, "the guest wrote sha256 %s, we sent %s", d->sha256,
                           sha256);
    }
    return 0;
}

int sbx_upload_abort(struct sbx_client *c, uint32_t sid, const struct sbx_err *why,
                     struct sbx_err *err)
{
    return sbx_client_stream_abort(c, sid, why, err);
}

/* --- uploads from an fd ---------------------------------------------------------------------- */

/*
 * SHA-256 on a thread of its own, beside the reads and sends: hashing costs more CPU than both.
 * One block at a time; hasher_put waits until the previous block is hashed, so with two buffers
 * in turn a buffer is never read into while it is still being hashed.
 */
struct hasher {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct sha256_ctx sha;
    const uint8_t *block;
    size_t len;
    bool busy, quit, started;
};

static void *hasher_main(void *arg)
{
    struct hasher *h = arg;

    pthread_mutex_lock(&h->mu);
    for (;;) {
        while (!h->busy && !h->quit) {
            pthread_cond_wait(&h->cv, &h->mu);
        }
        if (!h->busy) {
            break;
        }
        pthread_mutex_unlock(&h->mu);
        sha256_update(&h->sha, h->len, h->block);
        pthread_mutex_lock(&h->mu);
        h->busy = false;
        pthread_cond_broadcast(&h->cv);
    }
    pthread_mutex_unlock(&h->mu);
    return NULL;
}

/* Start the thread; without one (it could not start), hasher_put hashes inline. */
static void hasher_start(struct hasher *h)
{
    memset(h, 0, sizeof(*h));
    sha256_init(&h->sha);
    pthread_mutex_init(&h->mu, NULL);
    pthread_cond_init(&h->cv, NULL);
    h->started = pthread_create(&h->thread, NULL, hasher_main, h) == 0;
}

/* Wait until the block before is hashed, then hand over @block (kept unchanged until the next
 * hasher_put or hasher_finish). */
static void hasher_put(struct hasher *h, const uint8_t *block, size_t len)
{
    if (!h->started) {
        sha256_update(&h->sha, len, block);
        return;
    }
    pthread_mutex_lock(&h->mu);
    while (h->busy) {
        pthread_cond_wait(&h->cv, &h->mu);
    }
    h->block = block;
    h->len = len;
    h->busy = true;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

/* Hash what is pending, stop the thread, and write the digest (lowercase hex) to @hex. */
static void hasher_finish(struct hasher *h, char hex[65])
{
    uint8_t d[32];

    if (h->started) {
        pthread_mutex_lock(&h->mu);
        h->quit = true;
        pthread_cond_broadcast(&h->cv);
        pthread_mutex_unlock(&h->mu);
        pthread_join(h->thread, NULL); /* it hashes the pending block first */
    }
    pthread_mutex_destroy(&h->mu);
    pthread_cond_destroy(&h->cv);
    sha256_digest(&h->sha, sizeof(d), d);
    sbx_hex(d, sizeof(d), hex);
}

/* Send @fd to its end on upload stream @sid; with @want, hash what was sent into it. Returns 0
 * (also when the agent cancelled the stream: its transfer.done explains), or -1 with @err. */
static int send_fd(struct sbx_client *c, uint32_t sid, int fd, const char *name, char *want,
                   sbx_progress_fn progress, void *arg, struct sbx_err *err)
{
    struct hasher h;
    uint8_t *bufs = malloc(2 * (size_t)SBX_UPLOAD_BUF); /* one is hashed while the next is read */
    unsigned k = 0;
    int rc = bufs != NULL ? 0 : sbx_err_oom(err);
    bool local = rc < 0; /* a failure of ours: the agent is told the upload is incomplete */

    if (want != NULL) {
        hasher_start(&h);
    }
    while (rc == 0) {
        uint8_t *buf = bufs + (size_t)k * SBX_UPLOAD_BUF;
        ssize_t n = read(fd, buf, SBX_UPLOAD_BUF);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            rc = sbx_err_sys(err, errno, NULL, "read %s", name != NULL ? name : "fd");
            local = true;
            break;
        }
        if (n == 0) {
            break;
        }
        if (want != NULL) {
            hasher_put(&h, buf, (size_t)n);
        }
        if (sbx_client_stream_write(c, sid, buf, (size_t)n, err) < 0) {
            /* A cancel (for example ENOSPC) is explained by the transfer.done that follows. */
            rc = strcmp(err->code, SBX_E_STREAM) == 0 ? 1 : -1;
            break;
        }
        if (progress != NULL) {
            progress(arg, (uint64_t)n);
        }
        k ^= 1; /* only after a block went to the hasher: the other buffer is free then */
    }
    if (local) {
        struct sbx_err e;
        (void)sbx_upload_abort(c, sid, err, &e); /* the local failure is what we report */
    }
    if (want != NULL) {
        hasher_finish(&h, want); /* before the buffers go: it may be hashing one */
    }
    free(bufs);
    return rc < 0 ? -1 : 0;
}

int sbx_upload_fd(struct sbx_client *c, const struct sbx_upload_params *p, int fd, const char *name,
                  sbx_progress_fn progress, void *arg, struct sbx_transfer_done *d,
                  struct sbx_err *err)
{
    struct sbx_transfer_done own;
    struct sbx_stream_result sr;
    char want[65];
    uint32_t id;
    int r;

    d = d != NULL ? d : &own;
    memset(d, 0, sizeof(*d));
    r = sbx_transfer_upload(sbx_client_conn(c), p, NULL, &id, err);
    if (sbx_stream_call(c, r, id, false, &sr, err) < 0) {
        return -1;
    }
    d->stream = sr.stream;
    r = send_fd(c, sr.stream, fd, name, p->no_hash ? NULL : want, progress, arg, err);
    return r < 0 ? -1 : sbx_upload_end(c, sr.stream, p->no_hash ? NULL : want, d, err);
}
