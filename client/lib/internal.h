/*
 * libsbx internals shared by its files: the client object, the stream table and the transport
 * helpers. Not installed; nothing outside client/lib includes it.
 */
#ifndef SBX_CLIENT_INTERNAL_H
#define SBX_CLIENT_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sbx/client.h"
#include "sbx/frame.h"
#include "sbx/msg.h"

/* A message read while the caller waited for something else, kept as its raw frame payload. */
struct sbx__qmsg {
    struct sbx__qmsg *next;
    uint8_t *buf; /* malloc'd frame payload */
    uint32_t len;
    int kind;    /* enum sbx_msg_kind, so wait can find a response without decoding */
    uint32_t id; /* response id */
};

/* Stream table entry flags. */
#define SBX__ST_DONE      0x1 /* ended or cancelled (either side): no more bookkeeping */
#define SBX__ST_CANCELLED 0x2 /* the agent cancelled this "in" stream */

struct sbx__stream {
    uint32_t id;
    uint32_t flags;
    uint64_t credit;   /* "in": bytes we may still send */
    uint64_t consumed; /* "out": bytes consumed since the last grant */
};

struct sbx_client {
    int fd;
    bool is_sock;  /* sendmsg(MSG_NOSIGNAL) works */
    bool rd_eof;   /* read() returned 0 or ECONNRESET (bytes before it may still sit in rbuf) */
    bool rd_reset; /* ... and it was ECONNRESET */
    bool broken;   /* fatal: framing or transport failed; every call returns @fatal */
    struct sbx_err fatal;
    char *addr;
    int timeout_ms; /* connect timeout, reused for hello */

    /* Read side: raw bytes read ahead, the framer, the decoder of the current message. */
    uint8_t *rbuf;
    size_t rpos, rlen, rcap;
    uint8_t *rbuf_old; /* a replaced rbuf the current message still lives in */
    struct sbx_framer fr;
    struct sbx_decoder dec;
    const uint8_t *fp; /* the frame sbx__read_frame completed: in rbuf (no copy) or fr.buf */
    uint32_t flen;
    uint8_t *cur;        /* owned buffer of the current message when it came from the FIFO */
    const uint8_t *mbuf; /* frame payload of the current message (fp or cur) */
    uint32_t mlen;

    /* Messages queued for sbx_client_recv, oldest first. */
    struct sbx__qmsg *qhead, *qtail;
    size_t qbytes;

    /* Write side: caller's requests, and our own control notifications. */
    struct sbx_out out;
    struct sbx_out ctl;
    uint32_t next_id;

    /* From hello. */
    uint32_t version;
    uint32_t window;
    uint32_t chunk_max;
    char **caps;
    uint32_t ncaps;
    uint8_t *hello_buf;
    bool hello_dec_ok;
    struct sbx_decoder hello_dec;
    struct sbx_msg hello_msg;

    /* Stream bookkeeping (stream.c). */
    struct sbx__stream *streams;
    uint32_t nstreams, streams_cap;

    /* The last "error" notification from the agent, shown when it then closes. */
    struct sbx_err peer_err;
};

/* --- client.c ----------------------------------------------------------------------------- */

/* Monotonic clock in milliseconds. */
int64_t sbx__now_ms(void);

/* Milliseconds left until @deadline (-1: none); 0 when passed; capped to fit poll(). */
int sbx__remaining(int64_t deadline);

/* Deadline for @timeout_ms from now; -1 when @timeout_ms < 0. */
int64_t sbx__deadline(int timeout_ms);

/*
 * Read until one frame is complete: returns 1 (payload in c->fr.buf / c->fr.len), 0 when
 * @deadline passed, -1 on a fatal error (the client is marked broken).
 */
int sbx__read_frame(struct sbx_client *c, int64_t deadline, struct sbx_err *err);

/* Move the completed frame (just decoded into @m) to the FIFO. -1 with LIMIT when it is full. */
int sbx__queue(struct sbx_client *c, const struct sbx_msg *m, struct sbx_err *err);

/* Write all of @iov (blocking, EINTR-safe; reads ahead while the socket is full). */
int sbx__write_iov(struct sbx_client *c, const struct iovec *iov, int iovcnt, struct sbx_err *err);

/* Send a stream control notification {stream[, bytes]} through the internal buffer. */
int sbx__send_stream_ctl(struct sbx_client *c, const char *method, uint32_t stream, bool with_bytes,
                         uint32_t bytes, struct sbx_err *err);

/* --- stream.c ----------------------------------------------------------------------------- */

/* Update the stream table for a notification that just arrived (credit, cancel, end, error). */
void sbx__on_arrival(struct sbx_client *c, const struct sbx_msg *m);

/* Free the stream table. */
void sbx__streams_free(struct sbx_client *c);

/* --- addr.c ------------------------------------------------------------------------------- */

/* Connect a non-blocking, close-on-exec socket to @a (see sbx_client_connect). */
int sbx__connect(const struct sbx_addr *a, const char *addr, int timeout_ms, struct sbx_err *err);

#endif /* SBX_CLIENT_INTERNAL_H */
