/*
 * libsbx connection core: the sbx protocol (protocol/PROTOCOL.md) for one connection, without
 * any I/O. Bytes in -> typed events out; typed calls -> bytes out. No sockets, threads, clocks,
 * blocking, global state or abort() inside: a host program owns the transport and the event loop
 * (libuv, epoll, poll, a blocking fd) and moves bytes between it and the core.
 *
 *   feed bytes read from the transport     sbx_conn_feed, or sbx_conn_feed_space + _commit
 *   take events until 0 ("need more")      sbx_conn_next
 *   make calls, write stream data          sbx_conn_hello, sbx_proc_spawn, ..., sbx_conn_write
 *   write what is waiting to the transport sbx_conn_out / sbx_conn_out_iov, then sbx_conn_out_done
 *   the transport ended                    sbx_conn_eof, then sbx_conn_next until -1
 *
 * Any call may queue output (a request, stream data, a stream.credit grant), so a host checks
 * sbx_conn_out after each batch of calls. The core tracks request ids (matching responses to the
 * call and the caller's `user` pointer), the negotiated version, capabilities and limits, every
 * live stream's direction and credit, and the bytes queued on `in` streams until credit allows
 * them out.
 *
 * Every input from the agent is hostile: a frame length is checked before anything is allocated
 * for it, every message is validated before it is decoded, and every buffer has a cap (below).
 * This is a strict client: a frame that breaks framing (§3.2), a message that breaks the envelope
 * (§3.3, §5) or a known record that breaks its table (hello result, exit map, FileInfo, spawn,
 * attach and net.connect results, stream notifications, transfer.done) makes sbx_conn_next return
 * -1 and the connection unusable; the agent never sends one. Stream misuse by the agent (§8.6: data
 * beyond credit, on the wrong direction, empty or over chunk_max) cancels that stream only, as the
 * agent does for a client. Unknown notifications are passed on (SBX_EV_NOTIFY); unknown keys are
 * ignored.
 *
 * Threading: a connection is used by one thread at a time. Different connections are independent.
 */
#ifndef SBX_CONN_H
#define SBX_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include <msgpack.h>

#include "sbx/err.h"
#include "sbx/limits.h"
#include "sbx/msg.h"
#include "sbx/schema.h"

/* --- caps ----------------------------------------------------------------------------------- */

/* A feed of at most this many bytes is always accepted once sbx_conn_next has returned 0. */
#define SBX_CONN_FEED_MAX (1u << 20)
/* Bytes buffered on the input side: one partial frame plus one feed. Beyond: LIMIT. */
#define SBX_CONN_IN_MAX (SBX_FRAME_HDR + SBX_FRAME_MAX + SBX_CONN_FEED_MAX)
/* Output waiting for the transport above which new requests are refused with LIMIT. */
#define SBX_CONN_OUT_MAX (8u << 20)
/* Output waiting above which queued stream data stays queued until sbx_conn_out_done. */
#define SBX_CONN_OUT_DATA_MAX (1u << 20)
/* Bytes queued on one `in` stream (written, not yet sent for lack of credit or room). */
#define SBX_CONN_QUEUE_MAX (4u << 20)
/* ... and on all `in` streams of a connection together. */
#define SBX_CONN_QUEUE_TOTAL_MAX (64u << 20)
/* Outstanding requests (the agent's max_pending) and live streams tracked. */
#define SBX_CONN_PENDING_MAX SBX_MAX_PENDING
#define SBX_CONN_STREAMS_MAX SBX_MAX_STREAMS

/* The error code of requests and streams failed because the transport ended (sbx_conn_eof). */
#define SBX_E_EOF "EOF"

/* --- methods -------------------------------------------------------------------------------- */

/* Every method this library knows; SBX_CALL_OTHER is one it does not (sent with the generic
 * sbx_conn_begin, not checked against capabilities, its result left raw). */
enum sbx_call {
    SBX_CALL_OTHER = 0,
    SBX_CALL_HELLO,
    SBX_CALL_PING,
    SBX_CALL_INFO,
    SBX_CALL_SHUTDOWN,
    SBX_CALL_LIFETIME_GET,
    SBX_CALL_LIFETIME_EXTEND,
    SBX_CALL_CLOCK_SET,
    SBX_CALL_ENV_GET,
    SBX_CALL_ENV_SET,
    SBX_CALL_ENV_UNSET,
    SBX_CALL_ENV_LIST,
    SBX_CALL_PROC_SPAWN,
    SBX_CALL_PROC_WAIT,
    SBX_CALL_PROC_KILL,
    SBX_CALL_PROC_LIST,
    SBX_CALL_PROC_CLOSE_STDIN,
    SBX_CALL_PROC_RELEASE,
    SBX_CALL_PROC_RESIZE,
    SBX_CALL_FS_STAT,
    SBX_CALL_FS_LSTAT,
    SBX_CALL_FS_READDIR,
    SBX_CALL_FS_MKDIR,
    SBX_CALL_FS_REMOVE,
    SBX_CALL_FS_RENAME,
    SBX_CALL_FS_COPY,
    SBX_CALL_FS_CHMOD,
    SBX_CALL_FS_CHOWN,
    SBX_CALL_FS_SYMLINK,
    SBX_CALL_FS_LINK,
    SBX_CALL_FS_READLINK,
    SBX_CALL_FS_REALPATH,
    SBX_CALL_FS_TRUNCATE,
    SBX_CALL_FS_UTIME,
    SBX_CALL_FS_MKTEMP,
    SBX_CALL_FS_WALK,
    SBX_CALL_FS_GLOB,
    SBX_CALL_FS_WATCH,
    SBX_CALL_FS_UNWATCH,
    SBX_CALL_FS_OPEN,
    SBX_CALL_FS_READ,
    SBX_CALL_FS_WRITE,
    SBX_CALL_FS_SEEK,
    SBX_CALL_FS_FSTAT,
    SBX_CALL_FS_FSYNC,
    SBX_CALL_FS_FTRUNCATE,
    SBX_CALL_FS_CLOSE,
    SBX_CALL_TRANSFER_UPLOAD,
    SBX_CALL_TRANSFER_DOWNLOAD,
    SBX_CALL_TRANSFER_UPLOAD_TREE,
    SBX_CALL_TRANSFER_DOWNLOAD_TREE,
    SBX_CALL_PACK_CREATE,
    SBX_CALL_REPL_START,
    SBX_CALL_REPL_EVAL,
    SBX_CALL_REPL_CLOSE,
    SBX_CALL_REPL_LIST,
    SBX_CALL_PROC_ATTACH,
    SBX_CALL_NET_CONNECT,
    SBX_CALL_NET_LISTENING,
    SBX_CALL_FS_UMASK,
    SBX_CALL_FS_FUTIMES,
    SBX_CALL_FS_FLOCK,
    SBX_CALL_FS_FUNLOCK,
    SBX_CALL_COUNT
};

/* The wire name of @call ("proc.spawn"); NULL for SBX_CALL_OTHER or out of range. */
const char *sbx_call_name(enum sbx_call call);

/* The call for wire name @method[0..len); SBX_CALL_OTHER when this library does not know it. */
enum sbx_call sbx_call_lookup(const char *method, size_t len);

/* The capability (§11) a call needs ("process"), or NULL for hello and SBX_CALL_OTHER. */
const char *sbx_call_cap(enum sbx_call call);

/* --- events --------------------------------------------------------------------------------- */

enum sbx_event_kind {
    SBX_EV_RESPONSE = 1, /* the response to a request (or a synthesized EOF failure) */
    SBX_EV_DATA,         /* bytes on an `out` stream */
    SBX_EV_END,          /* an `out` stream ended (stream.end) */
    SBX_EV_CANCEL,       /* a stream was cancelled: by the agent, or by the core (local) */
    SBX_EV_CREDIT,       /* the agent granted credit on an `in` stream */
    SBX_EV_EXIT,         /* proc.exit */
    SBX_EV_TRANSFER_DONE,
    SBX_EV_ERROR,  /* the agent's `error` notification */
    SBX_EV_NOTIFY, /* any other notification (repl.result, fs.event, pack.*, unknown ones) */
};

/* Which typed record an event carries in `r`. */
enum sbx_rec {
    SBX_REC_NONE = 0,
    SBX_REC_HELLO,    /* r.hello: hello */
    SBX_REC_SPAWN,    /* r.spawn: proc.spawn */
    SBX_REC_EXIT,     /* r.exit: proc.wait, SBX_EV_EXIT */
    SBX_REC_FILEINFO, /* r.fileinfo: fs.stat, fs.lstat, fs.fstat */
    SBX_REC_STREAM,   /* r.stream: transfer.*, fs.walk, fs.glob */
    SBX_REC_EVAL,     /* r.eval: repl.eval with stream: true */
    SBX_REC_PACK,     /* r.pack: pack.create */
    SBX_REC_ATTACH,   /* r.attach: proc.attach */
    SBX_REC_NET,      /* r.net: net.connect */
};

/*
 * An event. Pointers in it (method, error, result, data, done, r.hello's strings, r.fileinfo's
 * target) point into the connection and stay valid until the next sbx_conn_next, sbx_conn_feed,
 * sbx_conn_feed_space or sbx_conn_free; other calls (requests, writes, grants) leave them alone,
 * so an event can be handled by making calls.
 */
struct sbx_event {
    enum sbx_event_kind kind;
    enum sbx_call call; /* RESPONSE: the request's method */
    const char *method; /* RESPONSE: its name (NULL for an unknown id); events made from a
                           notification: the notification's name, NUL-terminated; local events:
                           NULL */
    uint32_t id;        /* RESPONSE: the request id */
    void *user;         /* RESPONSE: the caller's pointer given with the request */
    bool unknown;       /* RESPONSE: no request with this id was outstanding (§5.2): the caller
                           may log it; nothing is typed or registered */
    bool local;         /* CANCEL, RESPONSE: made by the core, not sent by the agent: a stream
                           cancelled for the agent's misuse (error STREAM), or what
                           sbx_conn_eof fails (error EOF) */
    const struct sbx_err *error;  /* RESPONSE: the failure (NULL on success); END, CANCEL: the
                                     error map if one came (NULL: none); ERROR: the error */
    const msgpack_object *result; /* RESPONSE success: the raw result (also when typed);
                                     events made from a notification: its params (NULL: nil) */
    uint32_t stream;              /* DATA, END, CANCEL, CREDIT, TRANSFER_DONE */
    void *stream_user;   /* DATA, END, CANCEL, CREDIT, TRANSFER_DONE (while the upload stream was
                            still live): what sbx_conn_stream_set_user attached */
    const uint8_t *data; /* DATA */
    size_t len;          /* DATA */
    bool truncated;      /* END */
    uint64_t credit;     /* CREDIT: credit held now (after queued bytes went out) */
    size_t queued;       /* CREDIT: bytes still queued on the stream */
    const struct sbx_transfer_done *done; /* TRANSFER_DONE */
    const uint8_t *frame; /* the frame payload this event was decoded from (NULL for local
                             events): what a host copies to keep, relay or log a message beyond
                             the event's lifetime (sbx_msg_decode reads it again) */
    size_t frame_len;
    enum sbx_rec rec; /* which member of r is set */
    union {
        struct sbx_hello_result hello;
        struct sbx_spawn_result spawn;
        struct sbx_exit exit;
        struct sbx_fileinfo fileinfo;
        struct sbx_stream_result stream;
        struct sbx_eval_streams eval;
        struct sbx_pack_result pack;
        struct sbx_attach_result attach;
        struct sbx_net_connect_result net;
    } r;
};

/* --- the connection ------------------------------------------------------------------------- */

struct sbx_conn; /* opaque */

/* What a successful hello established (§6.4). */
struct sbx_peer {
    uint32_t version;
    struct sbx_limits limits;
    uint64_t conn;
    char agent[257], agent_version[257]; /* NUL-terminated copies */
};

/* A new connection core in state "hello not done". Returns NULL with INTERNAL when out of
 * memory. Allocates little: buffers grow as traffic needs them, each up to its cap. */
struct sbx_conn *sbx_conn_new(struct sbx_err *err);

/* Free the core and everything it holds. Outstanding requests are forgotten. NULL: no-op. */
void sbx_conn_free(struct sbx_conn *c);

/* --- input ---------------------------------------------------------------------------------- */

/*
 * Append @len bytes read from the transport. Returns 0, or -1: LIMIT when the bytes buffered
 * would exceed SBX_CONN_IN_MAX (call sbx_conn_next until it returns 0 before feeding more),
 * INTERNAL when out of memory, EOF after sbx_conn_eof. Nothing is parsed here. Invalidates the
 * last event.
 */
int sbx_conn_feed(struct sbx_conn *c, const void *buf, size_t len, struct sbx_err *err);

/*
 * Zero-copy input: where the next read from the transport may put its bytes. Returns a pointer
 * to at least one byte (*len of them, at most SBX_CONN_FEED_MAX), or NULL with *len 0 when no
 * room is left (sbx_conn_next has not drained) or memory ran out. Read into it, then call
 * sbx_conn_feed_commit. Made for libuv's alloc callback. Invalidates the last event.
 */
uint8_t *sbx_conn_feed_space(struct sbx_conn *c, size_t *len);

/* @n bytes (at most the *len sbx_conn_feed_space gave) were stored there. */
void sbx_conn_feed_commit(struct sbx_conn *c, size_t n);

/*
 * The next event. Returns 1 with *@ev filled; 0 when more input is needed; -1 when the
 * connection is unusable, with @err: BAD_FRAME or FRAME_TOO_LARGE (checked on the 4 header bytes,
 * before the body is awaited or anything allocated), BAD_MESSAGE (a malformed message or record
 * from the agent), LIMIT (the agent created more streams than tracked), INTERNAL (out of memory),
 * or EOF after sbx_conn_eof once everything was delivered. After -1 every later call returns -1
 * with the same error, and an `error` notification describing it is queued for the agent (§5.3;
 * flush it if you like, then close). Frames that need no event (data for unknown or finished
 * streams, §8.5; a request from the agent, answered UNKNOWN_METHOD) are consumed silently.
 */
int sbx_conn_next(struct sbx_conn *c, struct sbx_event *ev, struct sbx_err *err);

/*
 * The transport ended (EOF, reset, or the host closed it, e.g. after -1 from sbx_conn_next).
 * From now on sbx_conn_next delivers the events of complete frames still buffered (unless the
 * connection is broken), then one RESPONSE failure (code EOF, local) for every outstanding
 * request and one CANCEL (code EOF, local) for every live stream, so a host can release what it
 * tied to them through its usual event path, and then returns -1 (EOF, naming the agent's last
 * `error` notification if one came, or the fatal error). Calls are refused with EOF.
 */
void sbx_conn_eof(struct sbx_conn *c);

/* --- output --------------------------------------------------------------------------------- */

/*
 * The first contiguous piece of output waiting for the transport (*len bytes), or NULL with *len
 * 0 when nothing waits. Bytes handed out stay valid and unchanged, whatever else is called, until
 * sbx_conn_out_done consumes them, so they can be given to an asynchronous write.
 */
const uint8_t *sbx_conn_out(const struct sbx_conn *c, size_t *len);

/* All waiting output as up to @max pieces, in order, for writev/uv_write. Returns the number
 * filled (0: nothing waits). Same lifetime as sbx_conn_out. */
int sbx_conn_out_iov(const struct sbx_conn *c, struct iovec *iov, int max);

/* Total bytes waiting for the transport. */
size_t sbx_conn_out_bytes(const struct sbx_conn *c);

/*
 * The transport wrote the first @n waiting bytes (more than wait is clamped). Frees them, then
 * moves stream data that waited for room into the output (check sbx_conn_out again).
 */
void sbx_conn_out_done(struct sbx_conn *c, size_t n);

/* --- session state -------------------------------------------------------------------------- */

/* The peer as hello established it, or NULL before a hello succeeded. */
const struct sbx_peer *sbx_conn_peer(const struct sbx_conn *c);

/* True when the agent announced capability @cap in hello (false before). */
bool sbx_conn_has_cap(const struct sbx_conn *c, const char *cap);

/* Requests sent and not yet answered. */
uint32_t sbx_conn_pending(const struct sbx_conn *c);

/* The fatal error when the connection is unusable (or ended), else NULL. */
const struct sbx_err *sbx_conn_failed(const struct sbx_conn *c);

/* The longest user name sbx_conn_set_identity takes (the `user` param's cap, §17.1). */
#define SBX_IDENTITY_MAX 256

/*
 * The identity the file families act as (§17.1): from now on the typed calls of fs methods that
 * take a path, of transfer.* and of pack.create send `user: @user` (a user name of the guest, or
 * a uid in decimal; "root" for the agent's own rights where the host wants them). NULL or ""
 * sends none: the agent's default, its workload user. Handle methods (fs.read, ...) take none.
 * Returns 0, or -1 with BAD_PARAM (field "user") for more than SBX_IDENTITY_MAX bytes or
 * invalid UTF-8.
 */
int sbx_conn_set_identity(struct sbx_conn *c, const char *user, struct sbx_err *err);

/* What sbx_conn_set_identity set, or NULL. */
const char *sbx_conn_identity(const struct sbx_conn *c);

/* The next request id will be the first id from @id on (0 counts as 1) not outstanding. For
 * tests of the wrap-around and for hosts that resume a numbering. */
void sbx_conn_set_next_id(struct sbx_conn *c, uint32_t id);

/* --- generic requests ----------------------------------------------------------------------- */

/*
 * Begin a request for @method (1..64 bytes). Returns the packer: pack exactly ONE value (the
 * params map, or nil) and call sbx_conn_commit, or sbx_conn_abort; no other call on @c in
 * between. *@id (may be NULL) gets the request id: a counter from 1, wrapping from 2^32-1 to 1
 * and skipping ids still outstanding (§5.1). @user comes back in the RESPONSE event. Refused
 * locally (NULL with @err): HELLO_REQUIRED before a hello was sent; for hello itself, BUSY while
 * one is outstanding and BAD_MESSAGE after one succeeded; UNSUPPORTED for a known method whose
 * capability the agent did not announce (§11; not checked for requests pipelined behind an
 * outstanding hello, §6.1: the agent answers those, HELLO_REQUIRED if the hello fails), LIMIT for
 * SBX_CONN_PENDING_MAX outstanding requests (limit "max_pending") or SBX_CONN_OUT_MAX bytes of
 * unwritten output ("out_max"), BAD_PARAM for a bad method name, BUSY while another request is
 * being built, EOF or the fatal error on an unusable connection.
 */
msgpack_packer *sbx_conn_begin(struct sbx_conn *c, const char *method, void *user, uint32_t *id,
                               struct sbx_err *err);

/*
 * Finish the request begun last: check it is one msgpack value in a frame within frame_max,
 * queue it for output and record it as outstanding. Returns 0, or -1 (the request is dropped and
 * its id not used): LIMIT "frame_max" when too large, BAD_PARAM when not exactly one value was
 * packed, INTERNAL when out of memory or nothing was begun.
 */
int sbx_conn_commit(struct sbx_conn *c, struct sbx_err *err);

/* Drop the request begun last (nothing is sent). No-op when nothing was begun. */
void sbx_conn_abort(struct sbx_conn *c);

/* --- streams -------------------------------------------------------------------------------- */

enum sbx_dir {
    SBX_DIR_IN = 1, /* client -> agent: stdin, PTY input, uploads */
    SBX_DIR_OUT,    /* agent -> client: stdout, stderr, downloads, archives, walk entries */
};

/*
 * Zero-copy send of @len bytes on `in` stream @stream, for a transport that can write the
 * caller's buffer itself (writev): when nothing waits in the output (sbx_conn_out_bytes() == 0),
 * nothing is queued on the stream and 1 <= @len <= min(credit, chunk_max), the core takes @len
 * bytes of credit, writes the data frame's header into @hdr and returns its length; the caller
 * must then write @hdr and its @len bytes, completely, before any other output of @c. Returns 0
 * when that is not possible right now (use sbx_conn_write), -1 with @err as sbx_conn_write.
 */
int sbx_conn_write_direct(struct sbx_conn *c, uint32_t stream, size_t len,
                          uint8_t hdr[SBX_STREAM_DATA_HDR_MAX], struct sbx_err *err);

/*
 * Queue @len bytes on `in` stream @stream. They go out in data messages of at most chunk_max
 * bytes, never beyond the credit the agent granted (§8.3); what credit or output room does not
 * cover stays queued and goes out as stream.credit arrives and sbx_conn_out_done makes room.
 * All or nothing: returns 0 with every byte taken, or -1 with nothing taken: STREAM when
 * @stream is not an open `in` stream (unknown, ended with sbx_conn_end, cancelled by either
 * side), LIMIT when the stream's queue could exceed SBX_CONN_QUEUE_MAX ("stream_queue"; checked
 * on the whole @len, so a write larger than the queue is refused even if credit would send part
 * of it at once) or all queues SBX_CONN_QUEUE_TOTAL_MAX ("queue_total"), INTERNAL when out of
 * memory. Use sbx_conn_queued for back-pressure.
 */
int sbx_conn_write(struct sbx_conn *c, uint32_t stream, const void *data, size_t len,
                   struct sbx_err *err);

/*
 * End `in` stream @stream: stream.end goes out after the bytes queued before it (§8.4), and the
 * stream is finished for the caller at once (no more writes). With @error (may be NULL) the
 * end carries that error map and the queued bytes are dropped (an upload is aborted, §18.1).
 * Returns 0, or -1 with STREAM when @stream is not an open `in` stream.
 */
int sbx_conn_end(struct sbx_conn *c, uint32_t stream, const struct sbx_err *error,
                 struct sbx_err *err);

/*
 * Cancel stream @stream (either direction, §8.5): queued bytes are dropped, stream.cancel goes
 * out, and whatever still arrives for the stream is discarded silently. A stream that is unknown
 * or already finished is a no-op (races are normal). Returns 0, or -1 only on an unusable
 * connection.
 */
int sbx_conn_cancel(struct sbx_conn *c, uint32_t stream, struct sbx_err *err);

/*
 * The caller consumed @n bytes of `out` stream @stream (delivered them to their destination).
 * Once half a window has been consumed since the last grant, a stream.credit for those bytes is
 * queued (the recommended algorithm of §8.3). @n is clamped to what was received and not yet
 * reported. Unknown or finished streams: no-op. Returns 0, or -1 on an unusable connection.
 * Not calling it is how a caller applies back-pressure to the agent.
 */
int sbx_conn_consumed(struct sbx_conn *c, uint32_t stream, size_t n, struct sbx_err *err);

/* Grant @bytes of extra credit on `out` stream @stream at once (a larger window, §8.3), clamped
 * so the agent's credit never exceeds 2^32-1. No-op for unknown or finished streams. */
int sbx_conn_grant(struct sbx_conn *c, uint32_t stream, uint32_t bytes, struct sbx_err *err);

/* Bytes queued on `in` stream @stream and not yet in the output (0 for unknown streams). */
size_t sbx_conn_queued(const struct sbx_conn *c, uint32_t stream);

/* Bytes queued on all `in` streams together (sbx_conn_write refuses beyond
 * SBX_CONN_QUEUE_TOTAL_MAX): a caller sharing the connection among many writers keeps its
 * writes within what is left. */
size_t sbx_conn_queued_total(const struct sbx_conn *c);

/* Credit the agent granted on `in` stream @stream that is not used yet (0 for unknown). */
uint64_t sbx_conn_credit(const struct sbx_conn *c, uint32_t stream);

/* True while @stream is live (announced and not finished) on this connection. */
bool sbx_conn_stream_live(const struct sbx_conn *c, uint32_t stream);

/*
 * Register stream @stream announced by a result this library does not parse (a method it does
 * not know, sent with sbx_conn_begin). Results of known methods register their streams before
 * their RESPONSE event. Call it while handling that RESPONSE (before the next sbx_conn_next):
 * data for unregistered streams is discarded. Returns 0, or -1: BAD_PARAM for stream 0 or an id
 * already live, LIMIT over SBX_CONN_STREAMS_MAX, INTERNAL when out of memory.
 */
int sbx_conn_stream_open(struct sbx_conn *c, uint32_t stream, enum sbx_dir dir,
                         struct sbx_err *err);

/* Attach @user to live stream @stream; events about it carry it in stream_user. Returns 0, or
 * -1 when the stream is not live. */
int sbx_conn_stream_set_user(struct sbx_conn *c, uint32_t stream, void *user);

/* --- typed calls ---------------------------------------------------------------------------- */

/*
 * Every typed call packs its method's params as PROTOCOL.md's table defines them, then behaves
 * as sbx_conn_begin + sbx_conn_commit: returns 0 with the request queued and its id in *@id (@id
 * may be NULL), or -1 with @err (the local refusals of sbx_conn_begin and sbx_conn_commit, and
 * BAD_PARAM for a NULL required argument). The result arrives as a RESPONSE event carrying
 * @user. Paths and other OS byte strings are NUL-terminated C strings, sent as str when valid
 * UTF-8, else bin (§4.4); a param the protocol types str (repl code, a language, a format) that
 * is not valid UTF-8 is refused locally with BAD_PARAM naming it. @cwd (fs and transfer families,
 * §17.1) may be NULL.
 */

/* session (§6, §12) */

/* hello (§6.2). @h NULL: {version: SBX_PROTO_VERSION, min_version: SBX_PROTO_MIN_VERSION,
 * client: "libsbx"}. Its RESPONSE switches the core to the announced limits and capabilities;
 * with @h->recv_window, `out` streams start with that credit (and are granted at half of it)
 * when the agent echoes it, with stream_window when it does not (an older agent), and an echo
 * of another value is the agent's BAD_MESSAGE (§6.4). */
int sbx_conn_hello(struct sbx_conn *c, const struct sbx_hello *h, void *user, uint32_t *id,
                   struct sbx_err *err);
/* ping (§12.2) */
int sbx_ping(struct sbx_conn *c, void *user, uint32_t *id, struct sbx_err *err);
/* info (§12.3) */
int sbx_info(struct sbx_conn *c, void *user, uint32_t *id, struct sbx_err *err);
/* shutdown (§12.4): power off, or reboot when @reboot. */
int sbx_shutdown(struct sbx_conn *c, bool reboot, void *user, uint32_t *id, struct sbx_err *err);
/* lifetime.get (§12.5) */
int sbx_lifetime_get(struct sbx_conn *c, void *user, uint32_t *id, struct sbx_err *err);
/* lifetime.extend (§12.6) by @seconds (1 .. 2^31-1, checked by the agent). */
int sbx_lifetime_extend(struct sbx_conn *c, uint64_t seconds, void *user, uint32_t *id,
                        struct sbx_err *err);
/* clock.set (§12.7): @threshold_ns < 0 leaves the default (50 ms). */
int sbx_clock_set(struct sbx_conn *c, int64_t unix_ns, int64_t threshold_ns, void *user,
                  uint32_t *id, struct sbx_err *err);

/* env (§13) */

/* env.get {name} */
int sbx_env_get(struct sbx_conn *c, const char *name, void *user, uint32_t *id,
                struct sbx_err *err);
/* env.set {name, value}; @value NULL unsets (vars form with a nil value). */
int sbx_env_set(struct sbx_conn *c, const char *name, const char *value, void *user, uint32_t *id,
                struct sbx_err *err);
/* env.set {vars} (§13.2): @n entries "NAME=VALUE" (set) or "NAME" (unset), applied together or
 * not at all. BAD_PARAM locally for none or an entry without a name. */
int sbx_env_set_vars(struct sbx_conn *c, const char *const *vars, size_t n, void *user,
                     uint32_t *id, struct sbx_err *err);
/* env.unset {name} */
int sbx_env_unset(struct sbx_conn *c, const char *name, void *user, uint32_t *id,
                  struct sbx_err *err);
/* env.list {} */
int sbx_env_list(struct sbx_conn *c, void *user, uint32_t *id, struct sbx_err *err);

/* process and pty (§14, §15) */

/* proc.spawn (§14.2). Refused locally with UNSUPPORTED (field "pty") when @p->pty is set and the
 * agent did not announce "pty"; BAD_PARAM (field "argv") unless exactly one of argv/command. */
int sbx_proc_spawn(struct sbx_conn *c, const struct sbx_spawn_params *p, void *user, uint32_t *id,
                   struct sbx_err *err);
/* proc.wait {id, timeout_ms?}: @timeout_ms 0 waits without limit. */
int sbx_proc_wait(struct sbx_conn *c, uint32_t proc, uint32_t timeout_ms, void *user, uint32_t *id,
                  struct sbx_err *err);
/* proc.kill {id, signal?, group}: @signo 0 sends the default (SIGTERM). */
int sbx_proc_kill(struct sbx_conn *c, uint32_t proc, int signo, bool group, void *user,
                  uint32_t *id, struct sbx_err *err);
/* proc.close_stdin {id} */
int sbx_proc_close_stdin(struct sbx_conn *c, uint32_t proc, void *user, uint32_t *id,
                         struct sbx_err *err);
/* proc.list {} */
int sbx_proc_list(struct sbx_conn *c, void *user, uint32_t *id, struct sbx_err *err);
/* proc.release {id} */
int sbx_proc_release(struct sbx_conn *c, uint32_t proc, void *user, uint32_t *id,
                     struct sbx_err *err);
/* proc.resize {id, rows, cols} (capability pty) */
int sbx_proc_resize(struct sbx_conn *c, uint32_t proc, uint32_t rows, uint32_t cols, void *user,
                    uint32_t *id, struct sbx_err *err);
/* proc.attach (§14.9, capability process.attach): @p packed by sbx_attach_params_pack (set
 * p->stdin for the default). The RESPONSE carries r.attach; its streams are registered
 * (stdin `in`, stdout and stderr `out`). proc.exit for the process arrives as SBX_EV_EXIT. */
int sbx_proc_attach(struct sbx_conn *c, const struct sbx_attach_params *p, void *user, uint32_t *id,
                    struct sbx_err *err);

/* fs (§17) */

/* fs.stat / fs.lstat {path, cwd?}: the RESPONSE carries r.fileinfo. */
int sbx_fs_stat(struct sbx_conn *c, const char *path, const char *cwd, void *user, uint32_t *id,
                struct sbx_err *err);
int sbx_fs_lstat(struct sbx_conn *c, const char *path, const char *cwd, void *user, uint32_t *id,
                 struct sbx_err *err);
/* fs.readdir {path, cursor?, limit?}: @cursor NULL for the first page; @limit 0: default. */
int sbx_fs_readdir(struct sbx_conn *c, const char *path, const char *cursor, uint32_t limit,
                   const char *cwd, void *user, uint32_t *id, struct sbx_err *err);
/* fs.mkdir {path, parents, mode?}: @mode < 0 leaves the default. */
int sbx_fs_mkdir(struct sbx_conn *c, const char *path, bool parents, int mode, const char *cwd,
                 void *user, uint32_t *id, struct sbx_err *err);
/* fs.remove {path, recursive} */
int sbx_fs_remove(struct sbx_conn *c, const char *path, bool recursive, const char *cwd, void *user,
                  uint32_t *id, struct sbx_err *err);
/* fs.rename {from, to} */
int sbx_fs_rename(struct sbx_conn *c, const char *from, const char *to, const char *cwd, void *user,
                  uint32_t *id, struct sbx_err *err);
/* fs.copy {from, to, recursive} */
int sbx_fs_copy(struct sbx_conn *c, const char *from, const char *to, bool recursive,
                const char *cwd, void *user, uint32_t *id, struct sbx_err *err);
/* fs.chmod {path, mode} */
int sbx_fs_chmod(struct sbx_conn *c, const char *path, uint32_t mode, const char *cwd, void *user,
                 uint32_t *id, struct sbx_err *err);
/* fs.chown {path, uid?, gid?}: a negative id is left unchanged (absent). */
int sbx_fs_chown(struct sbx_conn *c, const char *path, int64_t uid, int64_t gid, const char *cwd,
                 void *user, uint32_t *id, struct sbx_err *err);
/* fs.symlink {target, path} / fs.link {target, path} */
int sbx_fs_symlink(struct sbx_conn *c, const char *target, const char *path, const char *cwd,
                   void *user, uint32_t *id, struct sbx_err *err);
int sbx_fs_link(struct sbx_conn *c, const char *target, const char *path, const char *cwd,
                void *user, uint32_t *id, struct sbx_err *err);
/* fs.readlink {path} / fs.realpath {path} */
int sbx_fs_readlink(struct sbx_conn *c, const char *path, const char *cwd, void *user, uint32_t *id,
                    struct sbx_err *err);
int sbx_fs_realpath(struct sbx_conn *c, const char *path, const char *cwd, void *user, uint32_t *id,
                    struct sbx_err *err);
/* fs.truncate {path, size} */
int sbx_fs_truncate(struct sbx_conn *c, const char *path, uint64_t size, const char *cwd,
                    void *user, uint32_t *id, struct sbx_err *err);
/* fs.utime {path, atime_ns?, mtime_ns?}: NULL leaves that time unchanged. */
int sbx_fs_utime(struct sbx_conn *c, const char *path, const int64_t *atime_ns,
                 const int64_t *mtime_ns, const char *cwd, void *user, uint32_t *id,
                 struct sbx_err *err);
/* fs.mktemp {dir?, prefix?, suffix?, directory} */
int sbx_fs_mktemp(struct sbx_conn *c, const char *dir, const char *prefix, const char *suffix,
                  bool directory, const char *cwd, void *user, uint32_t *id, struct sbx_err *err);
/* fs.watch {path, recursive} / fs.unwatch {watch} */
int sbx_fs_watch(struct sbx_conn *c, const char *path, bool recursive, const char *cwd, void *user,
                 uint32_t *id, struct sbx_err *err);
int sbx_fs_unwatch(struct sbx_conn *c, uint32_t watch, void *user, uint32_t *id,
                   struct sbx_err *err);

/* fs.open flags (§17.7). */
enum {
    SBX_FS_O_READ = 1u << 0,
    SBX_FS_O_WRITE = 1u << 1,
    SBX_FS_O_APPEND = 1u << 2,
    SBX_FS_O_CREATE = 1u << 3,
    SBX_FS_O_TRUNCATE = 1u << 4,
    SBX_FS_O_EXCLUSIVE = 1u << 5,
    SBX_FS_O_NOFOLLOW = 1u << 6,
    SBX_FS_O_SYNC = 1u << 7,
};

/* fs.open {path, flags, mode?}: @flags SBX_FS_O_* (0: ["read"]); @mode < 0 leaves the default. */
int sbx_fs_open(struct sbx_conn *c, const char *path, unsigned flags, int mode, const char *cwd,
                void *user, uint32_t *id, struct sbx_err *err);
/* fs.read {fh, len, offset?}: @offset NULL reads at the position. */
int sbx_fs_read(struct sbx_conn *c, uint32_t fh, uint64_t len, const uint64_t *offset, void *user,
                uint32_t *id, struct sbx_err *err);
/* fs.write {fh, data, offset?}: 1 .. chunk_max bytes (more: LIMIT "chunk_max", as the agent). */
int sbx_fs_write(struct sbx_conn *c, uint32_t fh, const void *data, size_t len,
                 const uint64_t *offset, void *user, uint32_t *id, struct sbx_err *err);
/* fs.seek {fh, offset, whence}: @whence "set", "cur" or "end" (NULL: "set"). */
int sbx_fs_seek(struct sbx_conn *c, uint32_t fh, int64_t offset, const char *whence, void *user,
                uint32_t *id, struct sbx_err *err);
/* fs.fstat {fh}: r.fileinfo. */
int sbx_fs_fstat(struct sbx_conn *c, uint32_t fh, void *user, uint32_t *id, struct sbx_err *err);
/* fs.fsync {fh, data_only} */
int sbx_fs_fsync(struct sbx_conn *c, uint32_t fh, bool data_only, void *user, uint32_t *id,
                 struct sbx_err *err);
/* fs.ftruncate {fh, size} */
int sbx_fs_ftruncate(struct sbx_conn *c, uint32_t fh, uint64_t size, void *user, uint32_t *id,
                     struct sbx_err *err);
/* fs.close {fh} */
int sbx_fs_close(struct sbx_conn *c, uint32_t fh, void *user, uint32_t *id, struct sbx_err *err);
/* fs.futimes {fh, atime_ns?, mtime_ns?} (capability "fs.futimes"): NULL leaves that time
 * unchanged. */
int sbx_fs_futimes(struct sbx_conn *c, uint32_t fh, const int64_t *atime_ns,
                   const int64_t *mtime_ns, void *user, uint32_t *id, struct sbx_err *err);
/* fs.flock {fh, exclusive, wait} (capability "fs.lock"): without @wait a lock held elsewhere is
 * EAGAIN; with it the response comes once the lock is had (CANCELLED if the handle is unlocked or
 * closed meanwhile). */
int sbx_fs_flock(struct sbx_conn *c, uint32_t fh, bool exclusive, bool wait, void *user,
                 uint32_t *id, struct sbx_err *err);
/* fs.funlock {fh} (capability "fs.lock") */
int sbx_fs_funlock(struct sbx_conn *c, uint32_t fh, void *user, uint32_t *id, struct sbx_err *err);
/* fs.umask {mask?} (capability "fs.umask"): @mask < 0 only reads; the result's `mask` is the
 * previous umask. */
int sbx_fs_umask(struct sbx_conn *c, int mask, void *user, uint32_t *id, struct sbx_err *err);

/* fs.walk (§17.4): zeroed fields are left out (the defaults: every kind, unlimited depth). The
 * RESPONSE carries r.stream, an `out` entry stream. */
struct sbx_walk_params {
    const char *path; /* required */
    const char *cwd;
    bool has_max_depth;
    uint32_t max_depth;
    bool no_files, no_dirs, no_symlinks; /* include_files / _dirs / _symlinks: false */
    bool follow_symlinks;
    const char *const *exts, *const *match, *const *skip; /* n entries each; 0: absent */
    uint32_t nexts, nmatch, nskip;
};
int sbx_fs_walk(struct sbx_conn *c, const struct sbx_walk_params *p, void *user, uint32_t *id,
                struct sbx_err *err);

/* fs.glob (§17.5): r.stream as fs.walk. */
struct sbx_glob_params {
    const char *pattern; /* required */
    const char *root;    /* NULL: cwd, or / */
    const char *cwd;
    bool no_dirs; /* include_dirs: false */
    bool follow_symlinks;
    const char *const *exclude; /* nexclude patterns; 0: absent */
    uint32_t nexclude;
};
int sbx_fs_glob(struct sbx_conn *c, const struct sbx_glob_params *p, void *user, uint32_t *id,
                struct sbx_err *err);

/* transfer (§18) */

/* transfer.upload params (§18.1). Zeroed fields are left out (defaults apply). */
struct sbx_upload_params {
    const char *path; /* required */
    const char *cwd;
    bool has_mode, has_uid, has_gid; /* else the defaults: the existing file's, else 0o644 and
                                        the agent's owner */
    uint32_t mode, uid, gid;
    bool parents;      /* create missing parent directories */
    bool no_overwrite; /* overwrite: false */
    bool fsync;        /* fsync before the rename */
    bool has_size;     /* size is the expected byte count */
    uint64_t size;
    const char *sha256; /* expected digest, 64 lowercase hex digits; NULL: none */
    bool no_hash;       /* hash: false */
};

/* transfer.upload: the RESPONSE carries r.stream, an `in` stream registered with the window as
 * credit (the agent grants its extra credit with stream.credit right after). Completion:
 * SBX_EV_TRANSFER_DONE. */
int sbx_transfer_upload(struct sbx_conn *c, const struct sbx_upload_params *p, void *user,
                        uint32_t *id, struct sbx_err *err);
/* transfer.download {path, offset?, length?}: @length < 0 reads to end-of-file; r.stream (an
 * `out` stream) with size and mode. */
int sbx_transfer_download(struct sbx_conn *c, const char *path, uint64_t offset, int64_t length,
                          const char *cwd, void *user, uint32_t *id, struct sbx_err *err);
/* transfer.upload_tree {path, compress?, preserve_owner}: @compress NULL: "none". */
int sbx_transfer_upload_tree(struct sbx_conn *c, const char *path, const char *compress,
                             bool preserve_owner, const char *cwd, void *user, uint32_t *id,
                             struct sbx_err *err);
/* transfer.download_tree {path, compress?} */
int sbx_transfer_download_tree(struct sbx_conn *c, const char *path, const char *compress,
                               const char *cwd, void *user, uint32_t *id, struct sbx_err *err);

/* pack (§19) */

/* pack.create params (§19.1). */
struct sbx_pack_params {
    const char *path;   /* required: the pack root */
    const char *format; /* required: "tar.gz" or "tar.zst" */
    /* The build step (NULL: none): argv or command, env, clear_env, cwd, timeout_ms are sent;
     * other fields must be left zero (the agent refuses what pack.create does not take). */
    const struct sbx_spawn_params *build;
    const char *entrypoint;
    const char *const *args, *const *exclude; /* nargs / nexclude entries; 0: absent */
    uint32_t nargs, nexclude;
    const char *const *ignore_files; /* NULL: the default [".sbxignore"]; else nignore_files */
    uint32_t nignore_files;
    const char *cwd;
};

/* pack.create: the RESPONSE carries r.pack; its streams are registered. Progress and the
 * manifest arrive as SBX_EV_NOTIFY (pack.progress, pack.manifest). */
int sbx_pack_create(struct sbx_conn *c, const struct sbx_pack_params *p, void *user, uint32_t *id,
                    struct sbx_err *err);

/* repl (§16) */

/* repl.start {language} */
int sbx_repl_start(struct sbx_conn *c, const char *language, void *user, uint32_t *id,
                   struct sbx_err *err);
/* repl.eval {session, code, timeout_ms?, stream}: @timeout_ms 0: none. With @stream the
 * RESPONSE carries r.eval and its two `out` streams are registered. */
int sbx_repl_eval(struct sbx_conn *c, uint32_t session, const char *code, size_t len,
                  uint32_t timeout_ms, bool stream, void *user, uint32_t *id, struct sbx_err *err);
/* repl.eval as sbx_repl_eval, with `format` @format: NULL or "text" (the default, not sent), or
 * "json" (capability repl.json: a deno session's value as JSON text, a failure's value as a JSON
 * error object, §16.3); refused locally with UNSUPPORTED when the agent did not announce
 * repl.json. */
int sbx_repl_eval_as(struct sbx_conn *c, uint32_t session, const char *code, size_t len,
                     uint32_t timeout_ms, bool stream, const char *format, void *user, uint32_t *id,
                     struct sbx_err *err);
/* repl.close {session} */
int sbx_repl_close(struct sbx_conn *c, uint32_t session, void *user, uint32_t *id,
                   struct sbx_err *err);
/* repl.list {} */
int sbx_repl_list(struct sbx_conn *c, void *user, uint32_t *id, struct sbx_err *err);

/* net (§20) */

/* net.connect (§20.1): @p->port 1..65535 (else BAD_PARAM "port" locally), @p->host NULL for the
 * agent's default "127.0.0.1", @p->timeout_ms 0 for its default. The RESPONSE carries r.net; its
 * streams are registered (`in`: bytes to the guest socket, `out`: bytes from it). */
int sbx_net_connect(struct sbx_conn *c, const struct sbx_net_connect_params *p, void *user,
                    uint32_t *id, struct sbx_err *err);
/* net.listening {} (§20.2): the raw result {sockets, truncated}; read each entry of `sockets`
 * with sbx_listening_read. */
int sbx_net_listening(struct sbx_conn *c, void *user, uint32_t *id, struct sbx_err *err);

#endif /* SBX_CONN_H */
