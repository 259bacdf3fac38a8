/*
 * Out jobs (outjob.h): an out stream fed by a thread of its own through a small bounded queue,
 * and the deterministic tar writer such a thread makes archives with (the `compress` choice,
 * libarchive errors); used by transfer.download_tree (tree.c) and pack.create (pack.c).
 */
#include "outjob.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "sbx/schema.h"
#include "stream.h"

#define OUTJOB_CHUNK SBX_STREAM_CHUNK_MAX

void agent_archive_err(struct sbx_err *err, struct archive *ar, const char *what)
{
    int e = archive_errno(ar);
    const char *s = archive_error_string(ar);

    if (e > 0 && sbx_errno_name(e) != NULL) {
        sbx_err_sys(err, e, NULL, "%s: %s", what, s != NULL ? s : "");
    } else {
        sbx_err_set(err, SBX_E_INTERNAL, "%s: %s", what, s != NULL ? s : "archive error");
    }
}

/* --- out jobs ------------------------------------------------------------------------------ */

struct agent_outitem {
    struct agent_outitem *next;
    void *event; /* non-NULL: an event, no data */
    uint32_t len, off;
    uint8_t data[];
};

/* The bytes buffered so far as a queue item (NULL with the error set when out of memory). */
static struct agent_outitem *outjob_take_buffer(struct agent_outjob *j)
{
    struct agent_outitem *it = malloc(sizeof(*it) + j->wlen);

    if (it == NULL) {
        sbx_err_oom(&j->err);
        return NULL;
    }
    it->next = NULL;
    it->event = NULL;
    it->len = j->wlen;
    it->off = 0;
    memcpy(it->data, j->wbuf, j->wlen);
    j->wlen = 0;
    return it;
}

static void outjob_push(struct agent_outjob *j, struct agent_outitem *it)
{
    /* Called with the lock held. */
    it->next = NULL;
    *j->tail = it;
    j->tail = &it->next;
    j->queued += it->len;
}

static void outjob_thread(void *arg)
{
    struct agent_outjob *j = arg;
    int rc = j->produce(j);

    uv_mutex_lock(&j->mu);
    if (rc == 0 && j->wlen > 0) {
        struct agent_outitem *it = outjob_take_buffer(j);
        if (it == NULL) {
            rc = -1;
        } else {
            outjob_push(j, it);
        }
    }
    j->rc = rc;
    j->finished = true;
    uv_mutex_unlock(&j->mu);
    uv_async_send(&j->async);
}

/* Thread: queue @it for the loop (taken over), first waiting for room if @wait. -1 if the job
 * was cancelled. */
static int outjob_enqueue(struct agent_outjob *j, struct agent_outitem *it, bool wait)
{
    uv_mutex_lock(&j->mu);
    while (wait && j->queued >= AGENT_OUTJOB_QUEUE_MAX && !j->abort) {
        uv_cond_wait(&j->cv, &j->mu);
    }
    if (j->abort) {
        uv_mutex_unlock(&j->mu);
        free(it);
        sbx_err_set(&j->err, SBX_E_CANCELLED, "cancelled");
        return -1;
    }
    outjob_push(j, it);
    uv_mutex_unlock(&j->mu);
    uv_async_send(&j->async);
    return 0;
}

int agent_outjob_write(struct agent_outjob *j, const void *data, size_t len)
{
    const uint8_t *p = data;

    while (len > 0) {
        uint32_t n = OUTJOB_CHUNK - j->wlen;
        if (n > len) {
            n = (uint32_t)len;
        }
        memcpy(j->wbuf + j->wlen, p, n);
        j->wlen += n;
        p += n;
        len -= n;
        if (j->wlen < OUTJOB_CHUNK) {
            continue;
        }
        struct agent_outitem *it = outjob_take_buffer(j);
        if (it == NULL) {
            return -1;
        }
        if (outjob_enqueue(j, it, true) < 0) {
            return -1;
        }
    }
    return 0;
}

int agent_outjob_event(struct agent_outjob *j, void *arg)
{
    struct agent_outitem *it;

    /* Data written before the event goes out before it. */
    if (j->wlen > 0 && ((it = outjob_take_buffer(j)) == NULL || outjob_enqueue(j, it, false) < 0)) {
        goto fail;
    }
    it = malloc(sizeof(*it));
    if (it == NULL) {
        sbx_err_oom(&j->err);
        goto fail;
    }
    it->event = arg;
    it->len = 0;
    it->off = 0;
    if (outjob_enqueue(j, it, false) == 0) {
        return 0;
    }
fail:
    /* Not queued (cancelled): the event is ours to free, or the caller would leak it. */
    if (j->on_free != NULL) {
        j->on_free(j, arg);
    }
    return -1;
}

bool agent_outjob_cancelled(struct agent_outjob *j)
{
    bool a;

    uv_mutex_lock(&j->mu);
    a = j->abort;
    uv_mutex_unlock(&j->mu);
    return a;
}

static void outjob_closed_cb(uv_handle_t *h)
{
    struct agent_outjob *j = h->data;

    while (j->head != NULL) {
        struct agent_outitem *it = j->head;
        j->head = it->next;
        if (it->event != NULL && j->on_free != NULL) {
            j->on_free(j, it->event);
        }
        free(it);
    }
    uv_mutex_destroy(&j->mu);
    uv_cond_destroy(&j->cv);
    free(j->wbuf);
    j->wbuf = NULL;
    if (j->on_close != NULL) {
        j->on_close(j);
    }
}

/* The thread has returned: join it and close the job. */
static void outjob_close(struct agent_outjob *j)
{
    if (j->closing) {
        return;
    }
    j->closing = true;
    uv_thread_join(&j->thread);
    uv_close((uv_handle_t *)&j->async, outjob_closed_cb);
}

/* Loop: send what the queue holds as credit allows; end the stream once the thread is done. */
static void outjob_drain(struct agent_outjob *j)
{
    bool finished;

    if (j->closing) {
        return;
    }
    uv_mutex_lock(&j->mu);
    while (j->head != NULL && j->s != NULL) {
        struct agent_outitem *it = j->head;
        if (it->event != NULL) {
            j->head = it->next;
            if (j->head == NULL) {
                j->tail = &j->head;
            }
            uv_mutex_unlock(&j->mu);
            j->on_event(j, it->event);
            free(it);
            uv_mutex_lock(&j->mu);
            continue;
        }
        uint32_t n = agent_stream_writable(j->s);
        if (n == 0) {
            break;
        }
        if (n > it->len - it->off) {
            n = it->len - it->off;
        }
        agent_stream_send_copy(j->s, it->data + it->off, n);
        it->off += n;
        if (it->off == it->len) {
            j->head = it->next;
            if (j->head == NULL) {
                j->tail = &j->head;
            }
            j->queued -= it->len;
            free(it);
            uv_cond_signal(&j->cv);
        }
    }
    finished = j->finished && (j->head == NULL || j->s == NULL);
    uv_mutex_unlock(&j->mu);
    if (!finished) {
        return;
    }
    if (j->s != NULL) {
        struct agent_stream *s = j->s;
        j->s = NULL;
        s->owner = NULL;
        if (j->rc == 0 && j->on_finish != NULL) {
            j->s = s; /* the owner may still send about the stream (pack's last manifest part) */
            j->on_finish(j);
            j->s = NULL;
        }
        agent_stream_end(s, j->rc == 0 ? NULL : &j->err, false);
    }
    outjob_close(j);
}

static void outjob_async_cb(uv_async_t *h)
{
    outjob_drain(h->data);
}

static void outjob_ready(struct agent_stream *s)
{
    struct agent_outjob *j = s->owner;

    if (j != NULL) {
        outjob_drain(j);
    }
}

static void outjob_gone(struct agent_stream *s, bool cancelled)
{
    struct agent_outjob *j = s->owner;
    bool finished;

    if (j == NULL) {
        return;
    }
    j->s = NULL;
    uv_mutex_lock(&j->mu);
    j->abort = true;
    uv_cond_signal(&j->cv);
    finished = j->finished;
    uv_mutex_unlock(&j->mu);
    if (finished) {
        outjob_close(j);
    } /* else the thread's last async closes it */
}

static const struct agent_stream_ops outjob_ops = {
    .ready = outjob_ready,
    .gone = outjob_gone,
};

int agent_outjob_start(struct agent_outjob *j, struct agent_conn *c, struct sbx_err *err)
{
    j->a = c->a;
    j->head = NULL;
    j->tail = &j->head;
    sha256_init(&j->sha);
    j->wbuf = malloc(OUTJOB_CHUNK);
    if (j->wbuf == NULL) {
        return sbx_err_oom(err);
    }
    j->s = agent_stream_new_ops(c, AGENT_STREAM_OUT, &outjob_ops, j, err);
    if (j->s == NULL) {
        free(j->wbuf);
        j->wbuf = NULL;
        return -1;
    }
    j->sid = j->s->id;
    if (uv_mutex_init(&j->mu) != 0 || uv_cond_init(&j->cv) != 0) {
        abort(); /* only fails for lack of resources the loop itself needs */
    }
    uv_async_init(c->a->loop, &j->async, outjob_async_cb);
    j->async.data = j;
    if (uv_thread_create(&j->thread, outjob_thread, j) != 0) {
        agent_stream_free(j->s);
        j->s = NULL;
        j->closing = true;
        uv_close((uv_handle_t *)&j->async, outjob_closed_cb); /* on_close frees the owner */
        sbx_err_set(err, SBX_E_INTERNAL, "cannot start a thread");
        return -2;
    }
    j->started = true;
    return 0;
}

static la_ssize_t outjob_archive_write_cb(struct archive *ar, void *arg, const void *buf,
                                          size_t len)
{
    struct agent_outjob *j = arg;

    if (j->discard) {
        archive_set_error(ar, ECANCELED, "discarded");
        return -1;
    }
    sha256_update(&j->sha, len, buf);
    j->bytes += len;
    if (agent_outjob_write(j, buf, len) < 0) {
        archive_set_error(ar, ECANCELED, "cancelled");
        return -1;
    }
    return (la_ssize_t)len;
}

struct archive *agent_outjob_archive(struct agent_outjob *j, enum agent_compress comp)
{
    struct archive *ar = archive_write_new();
    int rc;

    if (ar == NULL) {
        sbx_err_oom(&j->err);
        return NULL;
    }
    rc = archive_write_set_format_pax(ar); /* pax records keep nanosecond mtimes */
    if (rc == ARCHIVE_OK) {
        switch (comp) {
        case AGENT_COMPRESS_GZIP:
            rc = archive_write_add_filter_gzip(ar);
            /* No name, no timestamp in the gzip header: the same tree gives the same bytes. */
            if (rc == ARCHIVE_OK) {
                rc = archive_write_set_filter_option(ar, "gzip", "timestamp", NULL);
            }
            break;
        case AGENT_COMPRESS_ZSTD:
            rc = archive_write_add_filter_zstd(ar);
            break;
        case AGENT_COMPRESS_NONE:
            rc = archive_write_add_filter_none(ar);
            break;
        }
    }
    /* No padding after the compressed data: a zstd reader refuses trailing zeros. */
    if (rc == ARCHIVE_OK) {
        rc = archive_write_set_bytes_in_last_block(ar, 1);
    }
    if (rc == ARCHIVE_OK) {
        rc = archive_write_open(ar, j, NULL, outjob_archive_write_cb, NULL);
    }
    if (rc != ARCHIVE_OK) {
        agent_archive_err(&j->err, ar, "start the archive");
        archive_write_free(ar);
        return NULL;
    }
    return ar;
}

void agent_outjob_archive_free(struct agent_outjob *j, struct archive *ar, bool failed)
{
    if (failed) {
        j->discard = true;
        (void)archive_write_close(ar); /* fails at its first write: nothing is sent */
        j->discard = false;
    }
    archive_write_free(ar); /* closes a writer still open first, flushing it into the stream */
}
