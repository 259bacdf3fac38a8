/* Streams (stream.c): credit-controlled byte channels of a connection, and the process pipes they
 * attach to. */
#ifndef SBX_AGENT_STREAM_H
#define SBX_AGENT_STREAM_H

#include "agent.h"

/* --- streams ------------------------------------------------------------------------------ */

enum agent_stream_dir { AGENT_STREAM_OUT, AGENT_STREAM_IN };

/*
 * The process side of a pipe: an output (child stdout/stderr, read by the agent) or an input
 * (child stdin, written by the agent). It belongs to the process and outlives connections; a
 * connection's stream attaches to it.
 *
 * Every output keeps a replay ring of its most recent bytes, always, also while a stream is
 * attached (PROTOCOL.md §10): offsets count from the first byte the process wrote, `total` is the
 * next one, the ring holds [total - ring_len, total). It is allocated on the first byte and grows
 * geometrically up to a->replay_stream, so a process that wrote 10 bytes costs about that; all
 * rings together stay under a->replay_total (the oldest bytes of the largest rings go first). An
 * attached stream sends from its own offset (stream->pos): from the ring while it is behind (a
 * proc.attach replaying), straight from the pipe once it has caught up.
 */
struct agent_pipe {
    struct agent_proc *proc;
    uv_pipe_t handle;
    bool open;      /* handle initialised and not yet closing */
    bool reading;   /* uv_read_start active */
    bool eof;       /* output: end reached (or forcibly ended) */
    bool truncated; /* output: ended by the drain deadline, not by EOF */
    bool is_input;
    bool is_pty;                 /* a PTY master: EIO is the end; closing input writes nothing */
    int read_err;                /* output: the read error (errno) that ended it; 0: end-of-file */
    struct agent_stream *stream; /* attached connection stream, or NULL */
    /* output: the replay ring */
    uint8_t *ring;
    uint32_t ring_cap;  /* bytes allocated */
    uint32_t ring_len;  /* bytes held: the newest ones */
    uint32_t ring_head; /* index of the oldest byte held */
    uint64_t total;     /* bytes read from the child: the offset of the next one */
    /* output while detached goes here instead of the replay ring when set (REPL capture) */
    void (*sink)(struct agent_pipe *p, const uint8_t *data, uint32_t n);
    bool sink_idle; /* the sink's REPL is between evals: read at the pace of detached output */
    bool ringless;  /* a REPL interpreter's: its output went to the session, never to a ring */
    /* output, while @bounded: read no byte past offset @until (a streaming REPL eval's last
     * bytes; what follows waits in the pipe for the next eval), and call @until_cb, once (it is
     * NULL after), when total reaches it, the output ends, or the pipe no longer holds what it
     * was counted to hold (read by another holder of the pipe) */
    bool bounded;
    uint64_t until;
    void (*until_cb)(struct agent_pipe *p);
    /* output: bytes that go out on the attached stream before any read from the pipe from now
     * on (agent_pipe_lead: a streaming REPL eval's output captured since the last eval), sent
     * as credit comes; lead[lead_off..lead_len) is left. Freed with the stream. */
    uint8_t *lead;
    uint32_t lead_len, lead_off;
    /* input */
    unsigned writes_pending;
    uint64_t queued;        /* bytes handed to the child's stdin whose writes have not completed */
    uint32_t in_gen;        /* which stream of the pipe wrote them: bumped per new stream */
    struct agent_tail tail; /* small payloads waiting for the writes before them */
    bool close_requested;
};

/*
 * What a stream that is not bound to a process pipe (a file download, an upload, a walk, an
 * archive) asks of its owner. Every callback runs on the loop thread. A stream whose owner is
 * not a pipe has `ops` set and `pipe` NULL.
 */
struct agent_stream_ops {
    /* OUT: credit arrived or the connection drained; produce with agent_stream_send() while
     * agent_stream_writable() holds. May end the stream (agent_stream_end). */
    void (*ready)(struct agent_stream *s);
    /* IN: @len bytes arrived within credit (@data is valid only during the call). Report them
     * with agent_stream_consumed() once they reached their destination. May cancel the stream. */
    void (*data)(struct agent_stream *s, const uint8_t *data, uint32_t len);
    /* IN: the client ended the stream; @e is its error (the data is incomplete) or NULL. The
     * stream is freed right after this returns. */
    void (*end)(struct agent_stream *s, const struct sbx_err *e);
    /* The client cancelled the stream (@cancelled) or its connection is closing: the owner stops
     * using it and must send nothing on it. The stream is freed right after this returns. */
    void (*gone)(struct agent_stream *s, bool cancelled);
};

struct agent_stream {
    struct agent_link link; /* in conn->streams */
    struct agent_conn *conn;
    uint32_t id;
    enum agent_stream_dir dir;
    uint64_t credit;   /* OUT: bytes we may still send; IN: bytes the client may still send */
    uint64_t consumed; /* IN: bytes written to the target since the last grant */
    struct agent_pipe *pipe;
    const struct agent_stream_ops *ops; /* streams not bound to a pipe */
    void *owner;                        /* for @ops */
    bool ended;                         /* OUT: stream.end sent; IN: stream.end received */
    uint64_t pos; /* OUT bound to a pipe: offset of the next byte to send (see agent_pipe) */
};

/* 0 when @n more streams can be created on @c now, else -1 with LIMIT (max_streams or stream_ids)
 * in @err. Methods that create several streams check this first, so they create all or none. */
int agent_stream_reserve(const struct agent_conn *c, uint32_t n, struct sbx_err *err);
struct agent_stream *agent_stream_new(struct agent_conn *c, enum agent_stream_dir dir,
                                      struct agent_pipe *p, struct sbx_err *err);
struct agent_stream *agent_stream_find(struct agent_conn *c, uint32_t id);
/* A stream served by @ops on behalf of @owner (not a process pipe). */
struct agent_stream *agent_stream_new_ops(struct agent_conn *c, enum agent_stream_dir dir,
                                          const struct agent_stream_ops *ops, void *owner,
                                          struct sbx_err *err);
/* OUT: how many bytes may be sent now (0 when out of credit or the connection is backed up). */
uint32_t agent_stream_writable(const struct agent_stream *s);
/* OUT: send @len bytes of the pool buffer @buf (taken over); @len must fit the credit. */
void agent_stream_send(struct agent_stream *s, void *buf, uint32_t len);
/* OUT: send @len bytes copied from @data in chunks; @len must fit agent_stream_writable(). */
void agent_stream_send_copy(struct agent_stream *s, const void *data, uint32_t len);
/* IN: @n bytes were written to their destination; grant credit in batches, or at once with
 * @flush (when nothing else is pending, so the client is never left waiting). */
void agent_stream_consumed(struct agent_stream *s, uint32_t n, bool flush);
/* Detach from the pipe and free. Sends nothing. */
void agent_stream_free(struct agent_stream *s);
/* Send stream.end (with optional error / truncated flag) and free. */
void agent_stream_end(struct agent_stream *s, const struct sbx_err *e, bool truncated);
/* Refuse an "in" stream: send stream.cancel with @e, then free it. */
void agent_stream_cancel(struct agent_stream *s, const struct sbx_err *e);
/* Incoming stream control and data from the client. */
void agent_stream_on_credit(struct agent_conn *c, const struct sbx_msg *m);
void agent_stream_on_end(struct agent_conn *c, const struct sbx_msg *m);
void agent_stream_on_cancel(struct agent_conn *c, const struct sbx_msg *m);
void agent_stream_on_data(struct agent_conn *c, const struct sbx_msg *m);
/* A data message for stream @id was malformed (@why: empty or over chunk_max). If @id is a live
 * stream, its bytes were lost: cancel it as misuse (STREAM, PROTOCOL.md 8.6) and return true;
 * false when @id names no stream (the caller reports BAD_MESSAGE). */
bool agent_stream_on_bad_data(struct agent_conn *c, uint32_t id, const struct sbx_err *why);

/* Output pipes: send what an attached stream has not had yet from the replay ring, then start or
 * stop reading according to credit, attachment and pacing. May end the attached stream (its
 * replay reached the end of an output that has ended), and calls until_cb once the bound is
 * reached. */
void agent_pipe_update(struct agent_pipe *p);

/* Output pipe @p, with a stream attached, sends @data[0..@len) (malloc'ed, taken over) on it
 * before anything it reads from now on: at once as far as credit goes, the rest as credit
 * comes (nothing is read from the pipe meanwhile, and its stream does not end before). */
void agent_pipe_lead(struct agent_pipe *p, uint8_t *data, uint32_t len);
/* The bytes output pipe @p holds that nobody has read yet (FIONREAD); 0 when it is closed. */
uint64_t agent_pipe_unread(struct agent_pipe *p);
/* True while an output pipe may still legitimately carry data (used by the drain deadline). */
bool agent_pipe_busy(struct agent_pipe *p);
/* At the drain deadline, or a PTY's end: read what the pipe holds now without blocking (bounded
 * by the pipe's capacity and, beyond the stream's credit, by its replay ring) and send it, what
 * the credit does not cover as it comes (agent_pipe_update ends the stream after it). True if
 * that reached end-of-file. */
bool agent_pipe_final_drain(struct agent_pipe *p);
/* Before an attach: read what a pipe nobody holds has buffered (without blocking, at most about
 * the pipe's capacity) into the replay ring, so the attach sees the latest bytes however slowly
 * the pipe was being read (PROTOCOL.md §14.9). */
void agent_pipe_catch_up(struct agent_pipe *p);
/* The oldest offset the replay ring still holds (== total when it holds nothing). */
uint64_t agent_pipe_oldest(const struct agent_pipe *p);
/* Free the replay ring (the process record goes). */
void agent_pipe_ring_free(struct agent_pipe *p);
/* Close a pipe's handle (idempotent); the proc counts the close. */
void agent_pipe_close(struct agent_pipe *p);

/* Replay ring sizes: per output stream, and all rings of the agent together (--replay). */
#define AGENT_REPLAY_STREAM_DEFAULT (1u << 20)
#define AGENT_REPLAY_TOTAL_DEFAULT  (64ull << 20)
#define AGENT_REPLAY_STREAM_MAX     (1u << 30)
#define AGENT_REPLAY_TOTAL_MAX      (1ull << 40)
/* Parse --replay SIZE[,TOTAL] (K, M, G suffixes; SIZE at least SBX_REPLAY_MIN, TOTAL at least
 * SIZE) into @size and @total (TOTAL kept as given when absent). 0, or -1 with a message in
 * @why (@whylen bytes). */
int agent_replay_parse(const char *arg, uint32_t *size, uint64_t *total, char *why, size_t whylen);

#endif /* SBX_AGENT_STREAM_H */
