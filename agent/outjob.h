/*
 * Out jobs (outjob.c): an out stream fed by a worker thread. The loop and the thread exchange
 * chunks through a small bounded queue, so a thread blocked in libarchive never blocks the loop,
 * and agent memory stays bounded by the queue and the stream window. Used by
 * transfer.download_tree (tree.c) and pack.create (pack.c); transfer.upload_tree (untar.c) reads
 * the same `compress` param.
 */
#ifndef SBX_AGENT_OUTJOB_H
#define SBX_AGENT_OUTJOB_H

#include <stdbool.h>
#include <stdint.h>

#include <archive.h>
#include <archive_entry.h>
#include <uv.h>

#include "agent.h"
#include "params.h" /* enum agent_compress, agent_compress_param */

#include <nettle/sha2.h>

/* Bytes an out job's thread may queue ahead of the stream before it blocks. */
#define AGENT_OUTJOB_QUEUE_MAX (1u << 20)

struct agent_outitem;

/*
 * An `out` stream fed by a thread. The owner fills in @produce (and optionally the loop-side
 * hooks), then calls agent_outjob_start. @produce runs on the thread and writes with
 * agent_outjob_write or through agent_outjob_archive; its return value (0, or -1 with @err set)
 * decides how the stream ends. Loop-side hooks may send notifications while @s is not NULL.
 */
struct agent_outjob {
    struct agent *a;
    struct agent_stream *s; /* NULL once cancelled or gone */
    uint32_t sid;
    int (*produce)(struct agent_outjob *j);              /* thread */
    void (*on_event)(struct agent_outjob *j, void *arg); /* loop: an agent_outjob_event */
    void (*on_finish)(struct agent_outjob *j);           /* loop: success, before stream.end */
    void (*on_free)(struct agent_outjob *j, void *arg);  /* loop: free an undelivered event */
    void (*on_close)(struct agent_outjob *j);            /* loop: the job is over; free owner */
    void *owner;
    struct sbx_err err; /* set by @produce on failure */
    /* archive output accounting (thread until finished, then loop) */
    uint64_t bytes;
    struct sha256_ctx sha;
    /* private */
    uv_thread_t thread;
    uv_mutex_t mu;
    uv_cond_t cv;
    uv_async_t async;
    struct agent_outitem *head, **tail;
    size_t queued;
    bool abort, finished, started, closing;
    bool discard; /* thread: archive output is dropped (agent_outjob_archive_free) */
    int rc;
    uint8_t *wbuf;
    uint32_t wlen;
};

/* Create the out stream on @c and start the thread. 0; -1 with @err when nothing was started
 * (the caller still owns everything); -2 with @err when the thread could not start (the job is
 * closed and on_close frees the owner). */
int agent_outjob_start(struct agent_outjob *j, struct agent_conn *c, struct sbx_err *err);
/* Thread: append bytes to the stream (buffered into chunks). 0, or -1 if the job was cancelled. */
int agent_outjob_write(struct agent_outjob *j, const void *data, size_t len);
/* Thread: queue @arg for on_event, delivered in order with the data. -1 if cancelled (then
 * @arg was freed with on_free: ownership passes in every case). */
int agent_outjob_event(struct agent_outjob *j, void *arg);
/* Thread: true once the job was cancelled (stop early). */
bool agent_outjob_cancelled(struct agent_outjob *j);
/* Thread: a libarchive writer whose output goes to the stream (through j->sha and j->bytes),
 * pax format, compressed as asked; deterministic (gzip without name or time). NULL
 * with j->err set on failure. */
struct archive *agent_outjob_archive(struct agent_outjob *j, enum agent_compress comp);
/* Thread: free a writer from agent_outjob_archive. With @failed nothing more reaches the stream
 * (no trailer after an error): the writer is closed with its output discarded, which is where
 * libarchive frees its block buffer and compressor state (free() alone after
 * archive_write_fail() leaks them). */
void agent_outjob_archive_free(struct agent_outjob *j, struct archive *ar, bool failed);

/* Set @err from a libarchive failure of @ar. */
void agent_archive_err(struct sbx_err *err, struct archive *ar, const char *what);

#endif /* SBX_AGENT_OUTJOB_H */
