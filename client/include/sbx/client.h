/*
 * libsbx: the host-side client of the sbx protocol, blocking API.
 *
 * The sans-I/O connection core (sbx/conn.h) holds the protocol: request ids, hello (version,
 * capabilities, limits), the stream table and credit. This API sits on top of it for programs
 * that block, like the sbx CLI: it owns the connection's fd, reads into the core and writes what
 * the core queues, with poll so timeouts work. Transfers (sbx/transfer.h) and directory trees
 * (sbx/tree.h) are libraries on top of this one.
 *
 * One struct sbx_client is one connection to an sbx-agent. The library is synchronous and
 * single-threaded: every call blocks on the connection's fd and a client must not be used from
 * two threads at once. Messages that arrive while the caller waits for something else (a
 * response, stream credit) are kept in an internal FIFO and handed out, in arrival order, by
 * sbx_client_recv().
 *
 * Streams exist once a result announced them (proc.spawn, transfer.*, fs.walk, fs.glob,
 * repl.eval with stream, pack.create: the core registers them when the response arrives).
 * Flow control (PROTOCOL.md "Streams"): for "in" streams (client -> agent) the core tracks the
 * credit the agent granted and sbx_client_stream_write() never sends beyond it; for "out"
 * streams the caller reports what it has consumed with sbx_client_consumed() and the core
 * sends stream.credit once half a window has been consumed.
 *
 * The agent is held to the protocol: a frame, message or known record that breaks it, or data
 * that breaks a stream's rules (§8.6), makes the connection unusable (every later call returns
 * the same error).
 *
 * An event loop can poll sbx_client_fd() for POLLIN, but must first drain what the library
 * already buffered: call sbx_client_recv(c, &m, 0, err) until it returns 0, then poll.
 */
#ifndef SBX_CLIENT_H
#define SBX_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

#include "sbx/conn.h"
#include "sbx/err.h"
#include "sbx/limits.h"
#include "sbx/msg.h"

/* Client-side caps (the protocol's own caps are in sbx/limits.h). */
#define SBX_CLIENT_FIFO_MAX           (64u << 20) /* bytes of messages queued for sbx_client_recv */
#define SBX_CLIENT_RBUF_MAX           (16u << 20) /* bytes read ahead while a write waits for room */
#define SBX_CLIENT_SNDBUF             (1 << 20)   /* SO_SNDBUF asked for on the connection */
#define SBX_CLIENT_CONNECT_TIMEOUT_MS 10000

/* --- addresses ---------------------------------------------------------------------------- */

enum sbx_addr_kind {
    SBX_ADDR_UNIX = 1,  /* unix:/path, or unix:@name for the abstract namespace */
    SBX_ADDR_VSOCK = 2, /* vsock:CID:PORT */
    SBX_ADDR_FC = 3,    /* fc:/path/to/v.sock:PORT (Firecracker / Cloud Hypervisor hybrid vsock) */
    SBX_ADDR_TCP = 4,   /* tcp:HOST:PORT, HOST may be [v6::addr] */
};

struct sbx_addr {
    int kind;       /* enum sbx_addr_kind */
    char path[108]; /* unix, fc: socket path (sizeof sun_path) */
    char host[256]; /* tcp: host name or address, without brackets */
    uint32_t cid;   /* vsock */
    uint32_t port;  /* vsock, fc (any uint32); tcp (1..65535) */
};

/*
 * Parse an address string into @a. Returns 0, or -1 with BAD_PARAM (field "addr") and a message
 * naming the address when the syntax is wrong.
 */
int sbx_addr_parse(const char *s, struct sbx_addr *a, struct sbx_err *err);

/* --- connection --------------------------------------------------------------------------- */

struct sbx_client; /* opaque */

/*
 * Connect to @addr ("unix:/path", "vsock:CID:PORT", "fc:/path:PORT", "tcp:HOST:PORT") within
 * @timeout_ms (< 0: no limit). For fc: the hybrid-vsock handshake ("CONNECT <port>\n", then a
 * line starting "OK ") is part of connecting. Does NOT send hello. Returns a client owned by the
 * caller (free with sbx_client_close), or NULL with @err set: BAD_PARAM for bad syntax, the errno
 * name (ENOENT, ECONNREFUSED, ETIMEDOUT, ...) for a failed connect, always naming the address.
 */
struct sbx_client *sbx_client_connect(const char *addr, int timeout_ms, struct sbx_err *err);

/*
 * Wrap an already connected byte stream (socket, pipe pair excluded: one fd, read and write).
 * Takes ownership of @fd on success and on failure. @name is used in error messages.
 */
struct sbx_client *sbx_client_from_fd(int fd, const char *name, struct sbx_err *err);

/*
 * Send hello {version, min_version, client:"libsbx", token?} and wait (up to the connect timeout,
 * or without limit for sbx_client_from_fd clients) for the reply. The core checks the result and
 * keeps the negotiated version, the capabilities and the limits. Returns 0, or -1 with @err
 * (VERSION, AUTH from the agent; BAD_MESSAGE for a result that breaks §6.4, e.g. a version
 * outside the range asked for; transport errors).
 */
int sbx_client_hello(struct sbx_client *c, const char *token, struct sbx_err *err);

/*
 * sbx_client_hello in two halves, for pipelining (§6.1): _send queues hello and returns at once
 * (it goes out with the next write: a request made with sbx_client_sent, or the wait); typed
 * calls may follow right away (the agent runs them after hello, or answers HELLO_REQUIRED
 * when hello fails); _wait then waits for the hello response as sbx_client_hello does. A
 * short-lived program saves a round trip: `sbx exec` sends hello and proc.spawn in one go.
 */
int sbx_client_hello_send(struct sbx_client *c, const char *token, struct sbx_err *err);
int sbx_client_hello_wait(struct sbx_client *c, struct sbx_err *err);

/* Close the connection and free everything. NULL is a no-op. */
void sbx_client_close(struct sbx_client *c);

/* The connection's fd, for poll(). Do not read or write it directly. */
int sbx_client_fd(const struct sbx_client *c);

/*
 * Keepalive, off by default: once the agent has sent nothing for @interval_ms while the caller
 * waits on @c, a ping goes out; when nothing at all comes within two intervals of it, the
 * connection is taken for dead and every call fails with TIMEOUT (a paused or wedged VM, a link
 * whose other end is gone without a reset). While a write is stuck (no ping can go), three
 * intervals in which the agent takes none of our bytes and sends none do the same. Any byte from
 * the agent is a sign of life, and the clocks run only while the caller waits inside this
 * library: time spent away from it is never held against the agent. 0 turns it off. A caller
 * that polls sbx_client_fd itself passes its poll timeout through sbx_client_poll_ms and calls
 * sbx_client_recv when the poll returns.
 */
void sbx_client_set_keepalive(struct sbx_client *c, int interval_ms);

/* Before hello: the credit every `out` stream of this connection starts with (hello recv_window,
 * PROTOCOL.md §6.2), so that a program holding many streams it may stop reading buffers at most
 * that much per stream. 0 (the default): stream_window; else SBX_RECV_WINDOW_MIN..
 * SBX_STREAM_WINDOW (BAD_PARAM outside; BAD_MESSAGE after hello). An agent that knows none
 * keeps stream_window; sbx_client_consumed grants at half of whichever applies. */
int sbx_client_set_recv_window(struct sbx_client *c, uint32_t bytes, struct sbx_err *err);

/* The connection failed (transport, protocol or keepalive): every call now reports why. An error
 * from a call while this is false was the agent's answer, or a local refusal. */
bool sbx_client_failed(const struct sbx_client *c);

/* The timeout for a caller's own poll() of sbx_client_fd(@c): @timeout_ms (-1: none), or less,
 * when the keepalive needs a call to sbx_client_recv sooner. */
int sbx_client_poll_ms(const struct sbx_client *c, int timeout_ms);

/* The address string the client connected to (or the name given to sbx_client_from_fd). */
const char *sbx_client_addr(const struct sbx_client *c);

/* Negotiated protocol version; 0 before hello. */
uint32_t sbx_client_version(const struct sbx_client *c);

/* True when the agent announced capability @cap in hello. */
bool sbx_client_has_cap(const struct sbx_client *c, const char *cap);

/* limits.stream_window from hello (SBX_STREAM_WINDOW before hello or when absent). */
uint32_t sbx_client_window(const struct sbx_client *c);

/* limits.chunk_max from hello, never above SBX_STREAM_CHUNK_MAX. */
uint32_t sbx_client_chunk_max(const struct sbx_client *c);

/*
 * The whole hello result map, or NULL before hello. Owned by the client and valid until
 * sbx_client_close (it lives in its own buffer, unaffected by later receives).
 */
const msgpack_object *sbx_client_hello_result(const struct sbx_client *c);

/* --- requests and messages ---------------------------------------------------------------- */

/*
 * Typed calls. Every method has a typed call in the connection core (sbx/conn.h: sbx_fs_stat,
 * sbx_proc_spawn, ...); a blocking program makes it on the client's core and hands what it
 * returned to sbx_client_call (write + wait for the response) or sbx_client_sent (write only):
 *
 *     uint32_t id;
 *     int r = sbx_fs_stat(sbx_client_conn(c), path, NULL, NULL, &id, &err);
 *     if (sbx_client_call(c, r, id, &resp, &err) < 0) ...
 *     sbx_fileinfo_read(resp.result, &fi, &err);
 *
 * Use the core only for typed calls and sbx_conn_* queries (peer, has_cap, credit); feeding it,
 * taking its events or writing its output is this library's job.
 */
struct sbx_conn *sbx_client_conn(struct sbx_client *c);

/*
 * Finish a typed call made on sbx_client_conn(@c): @r is what it returned (-1: the call already
 * filled @err, which is passed on), @id the id it stored. Writes the request and waits without
 * time limit for its response, as sbx_client_wait. Returns 0 with *@resp, or -1 with @err.
 */
int sbx_client_call(struct sbx_client *c, int r, uint32_t id, struct sbx_msg *resp,
                    struct sbx_err *err);

/* Write a typed call made on sbx_client_conn(@c) without waiting (@r as for sbx_client_call);
 * collect the response later with sbx_client_wait. Returns 0, or -1 with @err. */
int sbx_client_sent(struct sbx_client *c, int r, struct sbx_err *err);

/*
 * Start a request for @method. Request ids are allocated sequentially from 1 per client (by the
 * core, skipping ids still outstanding); the id is stored in *@id. Returns the packer (never
 * NULL): the caller packs exactly ONE value (the params map) and then calls sbx_client_send.
 * Between begin and send, call nothing else on the client. When the core refuses the request
 * locally (HELLO_REQUIRED before hello, UNSUPPORTED for a capability the agent did not announce,
 * LIMIT for too many outstanding requests), *@id is 0, what is packed goes nowhere and
 * sbx_client_send reports the refusal.
 */
msgpack_packer *sbx_client_begin(struct sbx_client *c, const char *method, uint32_t *id);

/* Start a notification the same way (pack the params map, then sbx_client_send). It goes out as
 * packed, after everything sent before it; the core does not read it (for stream control, use
 * the stream calls below). */
msgpack_packer *sbx_client_begin_notify(struct sbx_client *c, const char *method);

/*
 * Finish the frame begun last and write it out completely (blocking, EINTR-safe, polls on
 * EAGAIN; while the socket is full, incoming bytes are read ahead so neither side can deadlock).
 * Returns 0, or -1 with @err (a local refusal from begin; LIMIT for a frame over the cap,
 * BAD_PARAM when not exactly one value was packed; transport errors).
 */
int sbx_client_send(struct sbx_client *c, struct sbx_err *err);

/*
 * Receive the next message. Returns 1 with *@m filled, 0 when @timeout_ms (>= 0) passed without
 * a complete message, -1 on error: "EOF" when the agent closed the connection (the message
 * includes the agent's last "error" notification if one came), the errno name for a transport
 * error; the agent breaking the protocol is fatal too: BAD_FRAME, FRAME_TOO_LARGE, BAD_MESSAGE
 * (a malformed message or known record), STREAM (data beyond credit, over chunk_max or on an
 * "in" stream: the core cancelled that stream). Messages queued during wait/stream_write come
 * first, in arrival order. The core has applied stream.credit, stream.cancel and stream.end
 * before they are returned. Not handed out: data and stream notifications for streams that are
 * not live (never announced, cancelled or ended; §8.5), and requests from the agent (the core
 * answers UNKNOWN_METHOD). *@m is valid until the next call that receives (recv, wait, call0,
 * hello, stream_write); calls that only send (send, grant, consumed, stream_end, stream_abort,
 * stream_cancel) leave it valid.
 */
int sbx_client_recv(struct sbx_client *c, struct sbx_msg *m, int timeout_ms, struct sbx_err *err);

/*
 * Wait for the response to request @id; every other message that arrives meanwhile is queued
 * for sbx_client_recv. Returns 0 with *@resp filled (resp->result) on success; -1 with @err
 * filled from the response's error map (code, message, errno, stage, field), or from a transport
 * failure, or TIMEOUT when @timeout_ms (>= 0) passed. *@resp has the lifetime of a received
 * message.
 */
int sbx_client_wait(struct sbx_client *c, uint32_t id, struct sbx_msg *resp, int timeout_ms,
                    struct sbx_err *err);

/* begin @method + an empty params map + send + wait without time limit. */
int sbx_client_call0(struct sbx_client *c, const char *method, struct sbx_msg *resp,
                     struct sbx_err *err);

/* True when sbx_client_recv can return a message without the fd becoming readable. */
bool sbx_client_pending(const struct sbx_client *c);

/* --- streams ------------------------------------------------------------------------------ */

/* Send stream.credit {stream, bytes}: let the agent send @bytes more on "out" stream @stream
 * (clamped so its credit stays within 2^32-1). A no-op for a stream that is not a live "out"
 * stream. */
int sbx_client_grant(struct sbx_client *c, uint32_t stream, uint32_t bytes, struct sbx_err *err);

/* Send stream.end {stream} on an "in" stream (e.g. close a process's stdin), after the bytes
 * written before it. A no-op when @stream is not open (the agent cancelled it, it ended). */
int sbx_client_stream_end(struct sbx_client *c, uint32_t stream, struct sbx_err *err);

/*
 * End "in" stream @stream with the error map @why in its stream.end (§8.4): the bytes sent on it
 * are incomplete, e.g. an upload whose local read failed (the agent aborts the upload: §18; a
 * process's stdin is just closed). @why NULL ends it normally, as sbx_client_stream_end. Either
 * way the stream takes no more writes. A no-op when @stream is not open (the agent cancelled it,
 * it ended). Returns 0, or -1 with @err on a transport error or an unusable connection.
 */
int sbx_client_stream_abort(struct sbx_client *c, uint32_t stream, const struct sbx_err *why,
                            struct sbx_err *err);

/* Send stream.cancel {stream}: no more data wanted on "out" stream @stream (no stream.end will
 * follow; data already in flight is discarded by the core). A no-op for a stream not live. */
int sbx_client_stream_cancel(struct sbx_client *c, uint32_t stream, struct sbx_err *err);

/*
 * Send @len bytes on "in" stream @stream, split into frames of at most sbx_client_chunk_max()
 * bytes, never beyond the credit the agent granted. Blocks (reading and queueing messages, and
 * consuming stream.credit ones) while credit is exhausted. Returns 0, or -1 with @err: STREAM
 * when @stream is not an open "in" stream (the agent cancelled it, it was ended, or no result
 * announced it), BAD_PARAM for stream 0, transport errors otherwise. A caller that must not
 * block can write at most sbx_client_credit() bytes.
 */
int sbx_client_stream_write(struct sbx_client *c, uint32_t stream, const void *data, size_t len,
                            struct sbx_err *err);

/* Credit currently available for "in" stream @stream (the window when it was announced; 0 for a
 * stream that is not an open "in" stream: never announced, cancelled or ended). */
uint64_t sbx_client_credit(const struct sbx_client *c, uint32_t stream);

/* True when @stream is no longer live: the agent cancelled it, it ended, or no result announced
 * it (sbx_client_stream_write on it fails with STREAM). The core keeps no record of finished
 * streams, so a stream the caller ended counts too. */
bool sbx_client_stream_cancelled(const struct sbx_client *c, uint32_t stream);

/*
 * Report that @n bytes of "out" stream @stream were delivered to their destination (clamped to
 * what was received and not yet reported); sends stream.credit for the consumed bytes once they
 * reach window/2. A no-op for streams that ended or were cancelled. Returns 0, or -1 with @err
 * on a transport error.
 */
int sbx_client_consumed(struct sbx_client *c, uint32_t stream, uint32_t n, struct sbx_err *err);

#endif /* SBX_CLIENT_H */
