/*
 * libsbx transfers (library sbxtransfer): moving bytes between local file descriptors and the
 * agent's streams on a blocking client (sbx/client.h). What any host program that copies files
 * in or out of a sandbox needs (the sbx CLI's `cp` and `pack`, a gateway): upload an fd with
 * end-to-end SHA-256, read an `out` stream into an fd, wait for transfer.done.
 *
 * Downloading a file is a typed call and two of these:
 *
 *     uint32_t id;
 *     struct sbx_stream_result sr;
 *     int r = sbx_transfer_download(sbx_client_conn(c), path, 0, -1, NULL, NULL, &id, &err);
 *     if (sbx_stream_call(c, r, id, true, &sr, &err) < 0) ...   // sr.size, sr.mode known here
 *     if (sbx_stream_to_fd(c, sr.stream, fd, NULL, NULL, &err) < 0) ...
 *
 * The functions that wait (sbx_stream_next, sbx_stream_to_fd, sbx_wait_done, sbx_upload_fd,
 * sbx_upload_end) take messages from the client with sbx_client_recv and discard those that are
 * not about their stream: use them on a client that has nothing else in flight.
 *
 * sbxtransfer links nettle (SHA-256) and the threads library; directory trees (libarchive) are
 * in sbx/tree.h.
 */
#ifndef SBX_TRANSFER_H
#define SBX_TRANSFER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sbx/client.h"
#include "sbx/conn.h"
#include "sbx/err.h"
#include "sbx/schema.h"

/* Bytes sbx_upload_fd reads from its fd at a time (it holds two such buffers). */
#define SBX_UPLOAD_BUF (1u << 20)

/* Told about progress: @bytes more were moved (sent, or written to the local side). @arg is the
 * caller's pointer given with the function. */
typedef void (*sbx_progress_fn)(void *arg, uint64_t bytes);

/*
 * Write @n bytes from @buf to @fd completely: a short write goes on, EINTR is retried, EAGAIN (an
 * fd someone made non-blocking, e.g. a shared stdout) waits in poll for room instead of
 * spinning. Returns 0, or -errno of the failed write (-EIO when write returned 0). Needs no
 * client: the CLI writes stream data to stdout / stderr with it.
 */
int sbx_write_all(int fd, const void *buf, size_t n);

/*
 * sbx_client_call for a typed call whose result announces one stream (transfer.*, fs.walk,
 * fs.glob): @r and @id as for sbx_client_call; the result is read with sbx_stream_result_read
 * (@with_size for transfer.download's {stream, size, mode}). Returns 0 with *@res, or -1 with
 * @err (the agent's refusal, BAD_MESSAGE for a malformed result, transport errors).
 */
int sbx_stream_call(struct sbx_client *c, int r, uint32_t id, bool with_size,
                    struct sbx_stream_result *res, struct sbx_err *err);

/*
 * The next piece of `out` stream @sid. Returns 1 with *@data and *@len (valid until the next
 * call that receives on @c), 0 at its stream.end, or -1 with @err: the error map its stream.end
 * carried; the agent's stream.cancel of it (its error, or CANCELLED); a transport error. The caller
 * reports what it delivered with sbx_client_consumed; until it does, the agent's credit is not
 * renewed.
 */
int sbx_stream_next(struct sbx_client *c, uint32_t sid, const uint8_t **data, size_t *len,
                    struct sbx_err *err);

/*
 * Write `out` stream @sid to @fd until its stream.end, granting credit as the bytes are written
 * (and telling @progress, which may be NULL). Returns 0, or -1 with @err: the stream's error, the
 * errno of a failed write to @fd (the stream is then cancelled), transport errors. @fd is not
 * closed.
 */
int sbx_stream_to_fd(struct sbx_client *c, uint32_t sid, int fd, sbx_progress_fn progress,
                     void *arg, struct sbx_err *err);

/*
 * Wait for transfer.done of stream @sid (§18.5). Returns 0 with *@d read from it, or -1 with
 * @err: the transfer's error (d->failed), or a transport error.
 */
int sbx_wait_done(struct sbx_client *c, uint32_t sid, struct sbx_transfer_done *d,
                  struct sbx_err *err);

/*
 * Upload what @fd holds, from its position to its end, to @p->path (transfer.upload, §18.1).
 * Sends the request and, once the agent accepted it, reads @fd in SBX_UPLOAD_BUF blocks and
 * sends them within the credit granted (telling @progress, which may be NULL, after each), then
 * finishes with sbx_upload_end. Unless @p->no_hash, the bytes are hashed on a thread of their own
 * beside the reads and sends (hashing costs more CPU than both), and the agent's SHA-256 of what
 * it wrote must equal ours of what was sent. @name names @fd in messages ("read NAME").
 *
 * Returns 0 with *@d (may be NULL) read from transfer.done, or -1 with @err: the agent's refusal
 * of the request (then nothing was read from @fd and d->stream is 0, so a caller may retry with
 * other params, e.g. into a directory on EISDIR), the errno of a failed read (the upload is
 * aborted with sbx_upload_abort), the transfer's failure from transfer.done (ENOSPC, a size
 * mismatch, CANCELLED), the digest checks of sbx_upload_end, transport errors. @fd is not closed.
 */
int sbx_upload_fd(struct sbx_client *c, const struct sbx_upload_params *p, int fd, const char *name,
                  sbx_progress_fn progress, void *arg, struct sbx_transfer_done *d,
                  struct sbx_err *err);

/*
 * Finish upload stream @sid (transfer.upload or upload_tree) after the last byte was written:
 * stream.end, then sbx_wait_done. When @sha256 (64 lowercase hex digits: the digest of every byte
 * sent on @sid) is not NULL, the agent's digest must equal it. A stream the agent cancelled is
 * not ended again: its transfer.done says why. Returns 0 with *@d (may be NULL), or -1 with @err:
 * as sbx_wait_done; BAD_PARAM (field "sha256") when the agent reported no digest; INTERNAL
 * naming both digests when they differ.
 */
int sbx_upload_end(struct sbx_client *c, uint32_t sid, const char *sha256,
                   struct sbx_transfer_done *d, struct sbx_err *err);

/*
 * Abort upload stream @sid: stream.end carrying the error @why (§8.4), so the agent discards what
 * it received and reports the transfer CANCELLED (sbx_client_stream_abort). A stream no longer
 * open (the agent cancelled it) is left alone. Returns 0, or -1 with @err on a transport error.
 */
int sbx_upload_abort(struct sbx_client *c, uint32_t sid, const struct sbx_err *why,
                     struct sbx_err *err);

#endif /* SBX_TRANSFER_H */
