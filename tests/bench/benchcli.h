/*
 * A minimal blocking sbx client on libsbxproto for benchmarks. It is built to stay out of the
 * way of what it measures: frames are decoded where they were read (no framer copy; only a
 * partial frame at the end of the buffer is ever moved), data frames are sent with one writev of
 * sbx_data_header + the caller's payload, and nothing is queued behind the caller's back.
 */
#ifndef SBX_BENCHCLI_H
#define SBX_BENCHCLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sbx/msg.h"

struct bcli {
    int fd;
    uint8_t *buf; /* received bytes: [head, tail) not yet parsed */
    size_t cap, head, tail;
    size_t read_max; /* largest single read() */
    size_t soft_cap; /* move a partial frame to the front once the tail passes this */
    struct sbx_decoder dec;
    struct sbx_out out;
    uint32_t next_id;
    uint32_t window; /* stream_window from hello */
};

/*
 * Connect to the unix socket @path and complete hello. Returns 0, or -1 with a message on
 * stderr. Close with bcli_close() either way.
 */
int bcli_open(struct bcli *c, const char *path);
void bcli_close(struct bcli *c);

/*
 * Receive the next message into @m (valid until the next bcli_recv). With @block false, returns
 * 0 at once when no complete message is buffered or readable. Returns 1 for a message, 0 for
 * none, -1 on EOF or error (message on stderr).
 */
int bcli_recv(struct bcli *c, struct sbx_msg *m, bool block);

/* Start a request frame in c->out; pack the params map on the returned packer, then send. */
msgpack_packer *bcli_begin_request(struct bcli *c, const char *method, uint32_t *id);
/* Start a notification frame in c->out. */
msgpack_packer *bcli_begin_notify(struct bcli *c, const char *method);
/* End the frame begun last and write everything in c->out. Returns 0 or -1. */
int bcli_send(struct bcli *c);

/* stream.credit {stream, bytes}. Returns 0 or -1. */
int bcli_credit(struct bcli *c, uint32_t stream, uint32_t bytes);
/* stream.end {stream}. Returns 0 or -1. */
int bcli_end(struct bcli *c, uint32_t stream);
/* One stream-data frame: header + @len bytes of @data in one writev. Returns 0 or -1. */
int bcli_data(struct bcli *c, uint32_t stream, const void *data, uint32_t len);

/*
 * Send proc.spawn with @argv (NULL-terminated) and the three stdio modes ("pipe"/"null"), plus
 * timeout_ms when nonzero. Returns the request id; the response comes through bcli_recv.
 */
uint32_t bcli_spawn(struct bcli *c, const char *const *argv, const char *in, const char *out,
                    const char *err, uint32_t timeout_ms);

/* Read u32 field @key of a result or params map; returns @dflt when absent or nil. */
uint32_t bcli_u32(const msgpack_object *map, const char *key, uint32_t dflt);

#endif /* SBX_BENCHCLI_H */
