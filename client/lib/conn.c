/*
 * The sans-I/O connection core (sbx/conn.h): framing and decoding in, events out; requests,
 * stream credit and queued stream data out. No I/O, clocks, threads or global state.
 *
 * Memory: the input is one contiguous buffer (a frame is decoded where it lies, never copied);
 * the output is a chain of blocks, so bytes handed to the transport never move; `in` streams
 * queue what credit does not cover in a buffer of their own. Every one has a cap (sbx/conn.h).
 */
#include "sbx/conn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sbx/frame.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#define IN_CHUNK      (64u << 10)  /* input room offered at least, when a read is due */
#define IN_KEEP       (1u << 20)   /* an empty input buffer larger than this is freed */
#define OBLK_SIZE     (16u << 10)  /* an output block; larger frames get a block of their own */
#define QUEUE_KEEP    (256u << 10) /* an empty stream queue larger than this is freed */

/* --- the method table -------------------------------------------------------------------- */

struct call_info {
    const char *name;
    const char *cap;
};

static const struct call_info calls[SBX_CALL_COUNT] = {
    [SBX_CALL_HELLO] = { SBX_M_HELLO, NULL },
    [SBX_CALL_PING] = { SBX_M_PING, "session" },
    [SBX_CALL_INFO] = { SBX_M_INFO, "session" },
    [SBX_CALL_SHUTDOWN] = { SBX_M_SHUTDOWN, "session" },
    [SBX_CALL_LIFETIME_GET] = { SBX_M_LIFETIME_GET, "session" },
    [SBX_CALL_LIFETIME_EXTEND] = { SBX_M_LIFETIME_EXTEND, "session" },
    [SBX_CALL_CLOCK_SET] = { SBX_M_CLOCK_SET, "session" },
    [SBX_CALL_ENV_GET] = { SBX_M_ENV_GET, "env" },
    [SBX_CALL_ENV_SET] = { SBX_M_ENV_SET, "env" },
    [SBX_CALL_ENV_UNSET] = { SBX_M_ENV_UNSET, "env" },
    [SBX_CALL_ENV_LIST] = { SBX_M_ENV_LIST, "env" },
    [SBX_CALL_PROC_SPAWN] = { SBX_M_PROC_SPAWN, "process" },
    [SBX_CALL_PROC_WAIT] = { SBX_M_PROC_WAIT, "process" },
    [SBX_CALL_PROC_KILL] = { SBX_M_PROC_KILL, "process" },
    [SBX_CALL_PROC_LIST] = { SBX_M_PROC_LIST, "process" },
    [SBX_CALL_PROC_CLOSE_STDIN] = { SBX_M_PROC_CLOSE_STDIN, "process" },
    [SBX_CALL_PROC_RELEASE] = { SBX_M_PROC_RELEASE, "process" },
    [SBX_CALL_PROC_RESIZE] = { SBX_M_PROC_RESIZE, "pty" },
    [SBX_CALL_FS_STAT] = { SBX_M_FS_STAT, "fs" },
    [SBX_CALL_FS_LSTAT] = { SBX_M_FS_LSTAT, "fs" },
    [SBX_CALL_FS_READDIR] = { SBX_M_FS_READDIR, "fs" },
    [SBX_CALL_FS_MKDIR] = { SBX_M_FS_MKDIR, "fs" },
    [SBX_CALL_FS_REMOVE] = { SBX_M_FS_REMOVE, "fs" },
    [SBX_CALL_FS_RENAME] = { SBX_M_FS_RENAME, "fs" },
    [SBX_CALL_FS_COPY] = { SBX_M_FS_COPY, "fs" },
    [SBX_CALL_FS_CHMOD] = { SBX_M_FS_CHMOD, "fs" },
    [SBX_CALL_FS_CHOWN] = { SBX_M_FS_CHOWN, "fs" },
    [SBX_CALL_FS_SYMLINK] = { SBX_M_FS_SYMLINK, "fs" },
    [SBX_CALL_FS_LINK] = { SBX_M_FS_LINK, "fs" },
    [SBX_CALL_FS_READLINK] = { SBX_M_FS_READLINK, "fs" },
    [SBX_CALL_FS_REALPATH] = { SBX_M_FS_REALPATH, "fs" },
    [SBX_CALL_FS_TRUNCATE] = { SBX_M_FS_TRUNCATE, "fs" },
    [SBX_CALL_FS_UTIME] = { SBX_M_FS_UTIME, "fs" },
    [SBX_CALL_FS_MKTEMP] = { SBX_M_FS_MKTEMP, "fs" },
    [SBX_CALL_FS_WALK] = { SBX_M_FS_WALK, "fs" },
    [SBX_CALL_FS_GLOB] = { SBX_M_FS_GLOB, "fs" },
    [SBX_CALL_FS_WATCH] = { SBX_M_FS_WATCH, "fs" },
    [SBX_CALL_FS_UNWATCH] = { SBX_M_FS_UNWATCH, "fs" },
    [SBX_CALL_FS_OPEN] = { SBX_M_FS_OPEN, "fs" },
    [SBX_CALL_FS_READ] = { SBX_M_FS_READ, "fs" },
    [SBX_CALL_FS_WRITE] = { SBX_M_FS_WRITE, "fs" },
    [SBX_CALL_FS_SEEK] = { SBX_M_FS_SEEK, "fs" },
    [SBX_CALL_FS_FSTAT] = { SBX_M_FS_FSTAT, "fs" },
    [SBX_CALL_FS_FSYNC] = { SBX_M_FS_FSYNC, "fs" },
    [SBX_CALL_FS_FTRUNCATE] = { SBX_M_FS_FTRUNCATE, "fs" },
    [SBX_CALL_FS_CLOSE] = { SBX_M_FS_CLOSE, "fs" },
    [SBX_CALL_TRANSFER_UPLOAD] = { SBX_M_TRANSFER_UPLOAD, "transfer" },
    [SBX_CALL_TRANSFER_DOWNLOAD] = { SBX_M_TRANSFER_DOWNLOAD, "transfer" },
    [SBX_CALL_TRANSFER_UPLOAD_TREE] = { SBX_M_TRANSFER_UPLOAD_TREE, "transfer" },
    [SBX_CALL_TRANSFER_DOWNLOAD_TREE] = { SBX_M_TRANSFER_DOWNLOAD_TREE, "transfer" },
    [SBX_CALL_PACK_CREATE] = { SBX_M_PACK_CREATE, "pack" },
    [SBX_CALL_REPL_START] = { SBX_M_REPL_START, "repl" },
    [SBX_CALL_REPL_EVAL] = { SBX_M_REPL_EVAL, "repl" },
    [SBX_CALL_REPL_CLOSE] = { SBX_M_REPL_CLOSE, "repl" },
    [SBX_CALL_REPL_LIST] = { SBX_M_REPL_LIST, "repl" },
    [SBX_CALL_PROC_ATTACH] = { SBX_M_PROC_ATTACH, "process.attach" },
    [SBX_CALL_NET_CONNECT] = { SBX_M_NET_CONNECT, "net" },
    [SBX_CALL_NET_LISTENING] = { SBX_M_NET_LISTENING, "net" },
    [SBX_CALL_FS_UMASK] = { SBX_M_FS_UMASK, "fs.umask" },
    [SBX_CALL_FS_FUTIMES] = { SBX_M_FS_FUTIMES, "fs.futimes" },
    [SBX_CALL_FS_FLOCK] = { SBX_M_FS_FLOCK, "fs.lock" },
    [SBX_CALL_FS_FUNLOCK] = { SBX_M_FS_FUNLOCK, "fs.lock" },
};

const char *sbx_call_name(enum sbx_call call)
{
    return call > SBX_CALL_OTHER && call < SBX_CALL_COUNT ? calls[call].name : NULL;
}

const char *sbx_call_cap(enum sbx_call call)
{
    return call > SBX_CALL_OTHER && call < SBX_CALL_COUNT ? calls[call].cap : NULL;
}

enum sbx_call sbx_call_lookup(const char *method, size_t len)
{
    for (int i = SBX_CALL_OTHER + 1; i < SBX_CALL_COUNT; i++) {
        if (strlen(calls[i].name) == len && memcmp(calls[i].name, method, len) == 0) {
            return (enum sbx_call)i;
        }
    }
    return SBX_CALL_OTHER;
}

/* --- a small hash table keyed by a nonzero u32 (request ids, stream ids) --------------------- */

/*
 * Open addressing with linear probing and backward-shift deletion (no tombstones). Every element
 * starts with its uint32_t key; key 0 marks an empty slot. Capacity is a power of two, grown at
 * 3/4 load up to 2 * @max elements, so a full table still probes short.
 */
struct tab {
    uint8_t *slots;
    uint32_t cap, n, bits;
    size_t esz;
};

static uint32_t tab_key(const struct tab *t, uint32_t i)
{
    uint32_t k;

    memcpy(&k, t->slots + (size_t)i * t->esz, sizeof(k));
    return k;
}

static void *tab_at(const struct tab *t, uint32_t i)
{
    return t->slots + (size_t)i * t->esz;
}

static uint32_t tab_home(const struct tab *t, uint32_t key)
{
    return (uint32_t)(key * 2654435769u) >> (32 - t->bits);
}

static void *tab_find(const struct tab *t, uint32_t key)
{
    uint32_t i;

    if (t->n == 0 || key == 0) {
        return NULL;
    }
    for (i = tab_home(t, key);; i = (i + 1) & (t->cap - 1)) {
        uint32_t k = tab_key(t, i);
        if (k == key) {
            return tab_at(t, i);
        }
        if (k == 0) {
            return NULL;
        }
    }
}

static void tab_place(struct tab *t, const void *elem)
{
    uint32_t key;
    uint32_t i;

    memcpy(&key, elem, sizeof(key));
    for (i = tab_home(t, key); tab_key(t, i) != 0; i = (i + 1) & (t->cap - 1)) {
    }
    memcpy(tab_at(t, i), elem, t->esz);
}

static int tab_grow(struct tab *t, uint32_t bits)
{
    struct tab nt = { NULL, 1u << bits, t->n, bits, t->esz };

    nt.slots = calloc(nt.cap, t->esz);
    if (nt.slots == NULL) {
        return -1;
    }
    for (uint32_t i = 0; i < t->cap; i++) {
        if (tab_key(t, i) != 0) {
            tab_place(&nt, tab_at(t, i));
        }
    }
    free(t->slots);
    *t = nt;
    return 0;
}

/* Insert @key (not present). Returns the zeroed element with its key set, or NULL when out of
 * memory. Invalidates pointers to other elements. */
static void *tab_insert(struct tab *t, uint32_t key)
{
    uint32_t i;

    if ((t->n + 1) * 4 > t->cap * 3 && tab_grow(t, t->bits != 0 ? t->bits + 1 : 4) < 0) {
        return NULL;
    }
    for (i = tab_home(t, key); tab_key(t, i) != 0; i = (i + 1) & (t->cap - 1)) {
    }
    memset(tab_at(t, i), 0, t->esz);
    memcpy(tab_at(t, i), &key, sizeof(key));
    t->n++;
    return tab_at(t, i);
}

/* Remove @elem (a pointer tab_find or tab_insert returned). Invalidates pointers to others. */
static void tab_remove(struct tab *t, void *elem)
{
    uint32_t mask = t->cap - 1;
    uint32_t i = (uint32_t)(((uint8_t *)elem - t->slots) / t->esz);
    uint32_t j = i;

    for (;;) {
        uint32_t k, h;
        j = (j + 1) & mask;
        k = tab_key(t, j);
        if (k == 0) {
            break;
        }
        h = tab_home(t, k);
        /* The element at j may move to i unless its home lies cyclically in (i, j]. */
        if ((j > i && (h <= i || h > j)) || (j < i && h <= i && h > j)) {
            memcpy(tab_at(t, i), tab_at(t, j), t->esz);
            i = j;
        }
    }
    memset(tab_at(t, i), 0, t->esz);
    t->n--;
}

static void tab_free(struct tab *t)
{
    free(t->slots);
    t->slots = NULL;
    t->cap = t->n = t->bits = 0;
}

/* --- the connection ---------------------------------------------------------------------- */

struct pend {
    uint32_t id; /* key */
    enum sbx_call call;
    void *user;
    char *name; /* SBX_CALL_OTHER: the method, malloc'd */
};

enum {
    S_END_DUE = 0x1, /* in: stream.end goes out once the queue is empty */
    S_DEAD = 0x2,    /* finished while the table was being walked: removed after the walk */
};

struct strm {
    uint32_t id; /* key */
    uint8_t dir; /* enum sbx_dir */
    uint8_t flags;
    void *user;
    uint64_t credit;   /* in: credit we hold; out: the agent's (window + grants - received) */
    uint64_t unacked;  /* out: received, not yet reported consumed */
    uint64_t consumed; /* out: consumed since the last grant */
    uint8_t *q;        /* in: bytes queued for lack of credit or room */
    size_t qhead, qlen, qcap;
};

/* An output block. Bytes [head, tail) wait for the transport; bytes of a frame still being
 * built (from fstart on, in the last block) are not handed out yet. */
struct oblk {
    struct oblk *next;
    size_t cap, head, tail;
    uint8_t data[];
};

enum { HELLO_NONE, HELLO_PENDING, HELLO_DONE };

struct sbx_conn {
    /* The identity file requests act as (sbx_conn_set_identity); "" for the agent's default. */
    char identity[SBX_IDENTITY_MAX + 1];

    /* Input. */
    uint8_t *in;
    size_t ipos, ilen, icap;
    struct sbx_decoder dec;
    uint32_t frame_max;

    /* Output. */
    struct oblk *oh, *ot;
    size_t obytes; /* committed bytes waiting */
    size_t fstart; /* offset in ot of the frame being built */
    bool ofail;    /* a write of the frame being built failed */
    bool obig;     /* ... because it outgrew frame_max */
    bool building; /* a caller's request is between begin and commit */
    msgpack_packer pk;
    struct pend bpend; /* the request being built */

    /* Requests. */
    struct tab pend;
    uint32_t next_id;

    /* Session. */
    int hello;
    uint64_t hello_min, hello_max; /* the version range our typed hello asked for (0: unknown) */
    struct sbx_peer peer;
    char *caps; /* announced capabilities, each NUL-terminated, back to back */
    size_t caps_len;
    uint32_t window;     /* the credit an in stream starts with (the agent's stream_window) */
    uint32_t out_window; /* an out stream's: what hello's recv_window set, or stream_window */
    uint64_t hello_recv; /* the recv_window our typed hello asked for (0: none) */
    uint32_t chunk_max, streams_max;

    /* Streams. */
    struct tab st;
    size_t qtotal; /* bytes queued on all streams */
    uint32_t nend; /* streams with S_END_DUE */
    uint32_t rr;   /* where the next walk over the table starts, for fairness */

    /* State. */
    bool broken, closed;
    struct sbx_err fatal;
    char peer_code[SBX_ERR_CODE_MAX], peer_msg[SBX_ERR_MSG_MAX]; /* the agent's last `error`
                                                                    notification, for EOF */

    /* Event storage, valid until the next input call. */
    struct sbx_err ev_err;
    union { /* one event lives at a time */
        struct sbx_stream_note note;
        struct sbx_transfer_done done;
    } u;
    char ev_method[SBX_METHOD_MAX + 1];
};

static int out_write(void *data, const char *buf, size_t len);

struct sbx_conn *sbx_conn_new(struct sbx_err *err)
{
    struct sbx_conn *c = calloc(1, sizeof(*c));

    if (c == NULL || sbx_decoder_init(&c->dec) != 0) {
        free(c);
        (void)sbx_err_set(err, SBX_E_INTERNAL, "out of memory for a connection");
        return NULL;
    }
    msgpack_packer_init(&c->pk, c, out_write);
    c->pend.esz = sizeof(struct pend);
    c->st.esz = sizeof(struct strm);
    c->frame_max = SBX_FRAME_MAX;
    c->window = c->out_window = SBX_STREAM_WINDOW;
    c->chunk_max = SBX_STREAM_CHUNK_MAX;
    c->streams_max = SBX_CONN_STREAMS_MAX;
    c->next_id = 1;
    sbx_err_clear(&c->fatal);
    return c;
}

static void strm_free_queue(struct sbx_conn *c, struct strm *s)
{
    c->qtotal -= s->qlen;
    free(s->q);
    s->q = NULL;
    s->qhead = s->qlen = s->qcap = 0;
}

void sbx_conn_free(struct sbx_conn *c)
{
    if (c == NULL) {
        return;
    }
    for (uint32_t i = 0; i < c->pend.cap; i++) {
        if (tab_key(&c->pend, i) != 0) {
            free(((struct pend *)tab_at(&c->pend, i))->name);
        }
    }
    for (uint32_t i = 0; i < c->st.cap; i++) {
        if (tab_key(&c->st, i) != 0) {
            free(((struct strm *)tab_at(&c->st, i))->q);
        }
    }
    tab_free(&c->pend);
    tab_free(&c->st);
    while (c->oh != NULL) {
        struct oblk *b = c->oh;
        c->oh = b->next;
        free(b);
    }
    free(c->bpend.name);
    free(c->in);
    free(c->caps);
    sbx_decoder_destroy(&c->dec);
    free(c);
}

/* --- state checks ------------------------------------------------------------------------ */

static int usable(const struct sbx_conn *c, struct sbx_err *err)
{
    if (c->broken) {
        *err = c->fatal;
        return -1;
    }
    if (c->closed) {
        return sbx_err_set(err, SBX_E_EOF, "the connection has ended");
    }
    if (c->building) {
        return sbx_err_set(err, SBX_E_BUSY,
                           "a request is being built (sbx_conn_begin without "
                           "sbx_conn_commit)");
    }
    return 0;
}

const struct sbx_err *sbx_conn_failed(const struct sbx_conn *c)
{
    return c->broken ? &c->fatal : NULL;
}

const struct sbx_peer *sbx_conn_peer(const struct sbx_conn *c)
{
    return c->hello == HELLO_DONE ? &c->peer : NULL;
}

bool sbx_conn_has_cap(const struct sbx_conn *c, const char *cap)
{
    for (size_t off = 0; off < c->caps_len; off += strlen(c->caps + off) + 1) {
        if (strcmp(c->caps + off, cap) == 0) {
            return true;
        }
    }
    return false;
}

uint32_t sbx_conn_pending(const struct sbx_conn *c)
{
    return c->pend.n;
}

void sbx_conn_set_next_id(struct sbx_conn *c, uint32_t id)
{
    c->next_id = id != 0 ? id : 1;
}

int sbx_conn_set_identity(struct sbx_conn *c, const char *user, struct sbx_err *err)
{
    size_t n = user != NULL ? strlen(user) : 0;

    if (n > SBX_IDENTITY_MAX || (n > 0 && !sbx_utf8_valid(user, n))) {
        return sbx_err_param(err, "user", "a user must be 1..%u bytes of UTF-8", SBX_IDENTITY_MAX);
    }
    memcpy(c->identity, n > 0 ? user : "", n + 1);
    return 0;
}

const char *sbx_conn_identity(const struct sbx_conn *c)
{
    return c->identity[0] != '\0' ? c->identity : NULL;
}

/* --- output ------------------------------------------------------------------------------ */

/* The end of the bytes of @b that may be handed out. */
static size_t blk_end(const struct sbx_conn *c, const struct oblk *b)
{
    return b == c->ot && c->building ? c->fstart : b->tail;
}

/*
 * Make room for @len more bytes of the frame begun at c->fstart in the last block. A frame never
 * spans blocks: when it does not fit, its bytes so far move to a new block (they were never
 * handed out; bytes before them stay where they are). @grow doubles the new block for a frame
 * that is being packed piece by piece.
 */
static int out_reserve(struct sbx_conn *c, size_t len, bool grow)
{
    struct oblk *b = c->ot, *nb;
    size_t part = b != NULL ? b->tail - c->fstart : 0;
    size_t need = part + len, cap;

    if (b != NULL && b->cap - b->tail >= len) {
        return 0;
    }
    if (need > SBX_FRAME_HDR + (size_t)c->frame_max + SBX_STREAM_DATA_HDR_MAX) {
        c->obig = true;
        return -1;
    }
    cap = grow && need > OBLK_SIZE / 2 ? 2 * need : need;
    if (cap < OBLK_SIZE) {
        cap = OBLK_SIZE;
    }
    nb = malloc(sizeof(*nb) + cap);
    if (nb == NULL) {
        return -1;
    }
    nb->next = NULL;
    nb->cap = cap;
    nb->head = 0;
    nb->tail = part;
    if (b != NULL) {
        memcpy(nb->data, b->data + c->fstart, part);
        b->tail = c->fstart;
        b->next = nb;
    } else {
        c->oh = nb;
    }
    c->ot = nb;
    c->fstart = 0;
    return 0;
}

/* msgpack-c's packer callback; a failure is sticky for the frame being built. */
static int out_write(void *data, const char *buf, size_t len)
{
    struct sbx_conn *c = data;

    if (c->ofail || out_reserve(c, len, true) < 0) {
        c->ofail = true;
        return -1;
    }
    memcpy(c->ot->data + c->ot->tail, buf, len);
    c->ot->tail += len;
    return 0;
}

/* Begin a frame: the packer writes its one value after the length prefix. */
static msgpack_packer *frame_begin(struct sbx_conn *c)
{
    static const char zero[SBX_FRAME_HDR];

    c->ofail = false;
    c->obig = false;
    c->fstart = c->ot != NULL ? c->ot->tail : 0;
    (void)out_write(c, zero, sizeof(zero));
    if (c->ot != NULL && !c->ofail) {
        c->fstart = c->ot->tail - SBX_FRAME_HDR;
    }
    return &c->pk;
}

static void frame_drop(struct sbx_conn *c)
{
    if (c->ot != NULL) {
        c->ot->tail = c->fstart;
    }
}

/* Finish the frame begun last: patch its length and count it as waiting. */
static int frame_end(struct sbx_conn *c, struct sbx_err *err)
{
    size_t len;

    if (c->ofail) {
        frame_drop(c);
        if (c->obig) {
            return sbx_err_limit(err, "frame_max", c->frame_max,
                                 "message exceeds the %u-byte frame cap", c->frame_max);
        }
        return sbx_err_set(err, SBX_E_INTERNAL, "out of memory encoding a message");
    }
    len = c->ot->tail - c->fstart - SBX_FRAME_HDR;
    if (len > c->frame_max) {
        frame_drop(c);
        return sbx_err_limit(err, "frame_max", c->frame_max,
                             "message of %zu bytes exceeds the %u-byte frame cap", len,
                             c->frame_max);
    }
    sbx_frame_put_len(c->ot->data + c->fstart, (uint32_t)len);
    c->obytes += SBX_FRAME_HDR + len;
    return 0;
}

/* Queue one stream data message carrying @p[0..n). */
static int emit_data(struct sbx_conn *c, uint32_t stream, const uint8_t *p, size_t n)
{
    uint8_t hdr[SBX_STREAM_DATA_HDR_MAX];
    size_t hl = sbx_data_header(hdr, stream, (uint32_t)n);

    c->fstart = c->ot != NULL ? c->ot->tail : 0;
    if (out_reserve(c, hl + n, false) < 0) {
        return -1;
    }
    memcpy(c->ot->data + c->ot->tail, hdr, hl);
    memcpy(c->ot->data + c->ot->tail + hl, p, n);
    c->ot->tail += hl + n;
    c->obytes += hl + n;
    return 0;
}

/* Queue a stream control notification (credit, end, cancel). The core's own control frames are
 * a few per stream at most, so they are not held to SBX_CONN_OUT_MAX; -1 only when out of
 * memory. */
static int emit_ctl(struct sbx_conn *c, const char *method, uint32_t stream, uint32_t bytes,
                    const struct sbx_err *e)
{
    struct sbx_err ignored;
    msgpack_packer *pk = frame_begin(c);

    if (strcmp(method, SBX_N_STREAM_CREDIT) == 0) {
        sbx_credit_pack(pk, stream, bytes);
    } else if (strcmp(method, SBX_N_STREAM_END) == 0) {
        sbx_end_pack(pk, stream, e, false);
    } else {
        sbx_cancel_pack(pk, stream, e);
    }
    return frame_end(c, &ignored);
}

const uint8_t *sbx_conn_out(const struct sbx_conn *c, size_t *len)
{
    for (const struct oblk *b = c->oh; b != NULL; b = b->next) {
        size_t end = blk_end(c, b);
        if (end > b->head) {
            *len = end - b->head;
            return b->data + b->head;
        }
    }
    *len = 0;
    return NULL;
}

int sbx_conn_out_iov(const struct sbx_conn *c, struct iovec *iov, int max)
{
    int n = 0;

    for (const struct oblk *b = c->oh; b != NULL && n < max; b = b->next) {
        size_t end = blk_end(c, b);
        if (end > b->head) {
            iov[n].iov_base = (void *)(b->data + b->head);
            iov[n].iov_len = end - b->head;
            n++;
        }
    }
    return n;
}

size_t sbx_conn_out_bytes(const struct sbx_conn *c)
{
    return c->obytes;
}

static void pump_all(struct sbx_conn *c);

void sbx_conn_out_done(struct sbx_conn *c, size_t n)
{
    if (n > c->obytes) {
        n = c->obytes;
    }
    c->obytes -= n;
    while (c->oh != NULL) {
        struct oblk *b = c->oh;
        size_t end = blk_end(c, b), k = end - b->head < n ? end - b->head : n;
        b->head += k;
        n -= k;
        if (b->head < end) {
            break;
        }
        if (b != c->ot) {
            c->oh = b->next;
            free(b);
            continue;
        }
        if (!c->building) {
            /* The last block is empty: keep one of the usual size for the next frames. */
            if (b->cap > OBLK_SIZE) {
                free(b);
                c->oh = c->ot = NULL;
            } else {
                b->head = b->tail = 0;
            }
        }
        break;
    }
    if (!c->building) {
        pump_all(c);
    }
}

/* --- fatal errors ---------------------------------------------------------------------------- */

/*
 * The connection is unusable: remember why, tell the agent (best effort, §5.3) and return -1
 * with @err. @e holds the error.
 */
static int fail(struct sbx_conn *c, const struct sbx_err *e, struct sbx_err *err)
{
    struct sbx_err ignored;

    if (!c->broken) {
        c->fatal = *e;
        c->broken = true;
        if (!c->closed && !c->building) {
            msgpack_packer *pk = frame_begin(c);
            sbx_pack_notify_head(pk, SBX_N_ERROR);
            sbx_pack_err(pk, &c->fatal);
            (void)frame_end(c, &ignored);
        }
    }
    *err = c->fatal;
    return -1;
}

/* What the agent sent cannot be taken (the reader set c->ev_err): a record that breaks its
 * table is BAD_MESSAGE (a param reader's BAD_PARAM is ours to rename); INTERNAL and LIMIT stay. */
static int fail_peer(struct sbx_conn *c, struct sbx_err *err)
{
    if (strcmp(c->ev_err.code, SBX_E_BAD_PARAM) == 0) {
        memcpy(c->ev_err.code, SBX_E_BAD_MESSAGE, sizeof(SBX_E_BAD_MESSAGE));
    }
    sbx_err_prefix(&c->ev_err, "agent sent a message this client cannot take");
    return fail(c, &c->ev_err, err);
}

/* --- streams ----------------------------------------------------------------------------- */

static struct strm *strm_find(const struct sbx_conn *c, uint32_t id)
{
    return tab_find(&c->st, id);
}

static void strm_remove(struct sbx_conn *c, struct strm *s)
{
    strm_free_queue(c, s);
    if ((s->flags & S_END_DUE) != 0) {
        c->nend--;
    }
    tab_remove(&c->st, s);
}

/* Register a stream the agent announced. -1 with @err set (c->ev_err while decoding a result;
 * the caller's own otherwise, so an event's error is left alone). */
static int strm_add(struct sbx_conn *c, uint32_t id, enum sbx_dir dir, struct sbx_err *err)
{
    struct strm *s;

    if (id == 0) {
        return sbx_err_set(err, SBX_E_BAD_PARAM, "stream id 0 is never valid");
    }
    if (strm_find(c, id) != NULL) {
        return sbx_err_set(err, SBX_E_BAD_PARAM, "stream %u is already live", id);
    }
    if (c->st.n >= c->streams_max) {
        return sbx_err_limit(err, "max_streams", c->streams_max, "more than %u live streams",
                             c->streams_max);
    }
    s = tab_insert(&c->st, id);
    if (s == NULL) {
        return sbx_err_set(err, SBX_E_INTERNAL, "out of memory for a stream");
    }
    s->dir = (uint8_t)dir;
    s->credit = dir == SBX_DIR_OUT ? c->out_window : c->window;
    return 0;
}

/*
 * Move queued bytes of `in` stream @s into the output while credit and room allow, then send a
 * due stream.end. Returns true when the stream finished (it is removed, or only marked S_DEAD
 * when @defer: the caller is walking the table).
 */
static bool pump_stream(struct sbx_conn *c, struct strm *s, bool defer)
{
    while (s->qlen > 0 && s->credit > 0 && c->obytes < SBX_CONN_OUT_DATA_MAX) {
        size_t n = s->qlen;
        if (n > s->credit) {
            n = (size_t)s->credit;
        }
        if (n > c->chunk_max) {
            n = c->chunk_max;
        }
        if (emit_data(c, s->id, s->q + s->qhead, n) < 0) {
            break; /* out of memory: the bytes stay queued */
        }
        s->credit -= n;
        s->qhead += n;
        s->qlen -= n;
        c->qtotal -= n;
    }
    if (s->qlen == 0) {
        s->qhead = 0;
        if (s->qcap > QUEUE_KEEP) {
            strm_free_queue(c, s);
        }
    }
    if (s->qlen > 0 || (s->flags & S_END_DUE) == 0 ||
        emit_ctl(c, SBX_N_STREAM_END, s->id, 0, NULL) < 0) {
        return false;
    }
    if (defer) {
        s->flags |= S_DEAD;
    } else {
        strm_remove(c, s);
    }
    return true;
}

/* Give every stream with queued bytes or a due end its turn, starting after the one that had
 * the last turn (fairness when output room is short). Streams that finish are only marked during
 * the walk and removed after it, so no element moves under the walk. */
static void pump_all(struct sbx_conn *c)
{
    uint32_t start = c->rr;
    bool dead = false;

    if ((c->qtotal == 0 && c->nend == 0) || c->broken || c->closed) {
        return;
    }
    for (uint32_t k = 0; k < c->st.cap && c->obytes < SBX_CONN_OUT_DATA_MAX; k++) {
        uint32_t i = (start + k) & (c->st.cap - 1);
        struct strm *s = tab_at(&c->st, i);
        if (s->id != 0 && s->dir == SBX_DIR_IN && (s->flags & S_DEAD) == 0 &&
            (s->qlen > 0 || (s->flags & S_END_DUE) != 0)) {
            dead |= pump_stream(c, s, true);
            c->rr = i + 1;
        }
    }
    for (uint32_t i = 0; dead && i < c->st.cap;) {
        struct strm *s = tab_at(&c->st, i);
        if (s->id != 0 && (s->flags & S_DEAD) != 0) {
            strm_remove(c, s); /* backward shift may move another element here: look again */
        } else {
            i++;
        }
    }
}

/* Grow the buffer *@p of *@cap bytes to hold @need: doubling from @first, at most @max (callers
 * check their caps first, so @need never exceeds @max). -1 when out of memory, *@p unchanged. */
static int buf_grow(uint8_t **p, size_t *cap, size_t need, size_t first, size_t max)
{
    size_t n = *cap != 0 ? *cap : first;
    uint8_t *q;

    while (n < need) {
        n *= 2;
    }
    if (n > max) {
        n = max;
    }
    q = realloc(*p, n);
    if (q == NULL) {
        return -1;
    }
    *p = q;
    *cap = n;
    return 0;
}

/* Make room for @len more queued bytes on @s (all or nothing). */
static int queue_reserve(struct strm *s, size_t len)
{
    size_t need = s->qlen + len;

    if (s->qcap - s->qhead - s->qlen >= len) {
        return 0;
    }
    if (s->qhead > 0) {
        memmove(s->q, s->q + s->qhead, s->qlen);
        s->qhead = 0;
    }
    if (s->qcap >= need) {
        return 0;
    }
    return buf_grow(&s->q, &s->qcap, need, 4096, SBX_CONN_QUEUE_MAX);
}

static struct strm *open_in(struct sbx_conn *c, uint32_t stream, struct sbx_err *err)
{
    struct strm *s = strm_find(c, stream);

    if (s == NULL || s->dir != SBX_DIR_IN || (s->flags & S_END_DUE) != 0) {
        (void)sbx_err_set(err, SBX_E_STREAM, "stream %u is not an open in stream", stream);
        return NULL;
    }
    return s;
}

int sbx_conn_write(struct sbx_conn *c, uint32_t stream, const void *data, size_t len,
                   struct sbx_err *err)
{
    const uint8_t *p = data;
    struct strm *s;
    size_t off = 0;

    if (usable(c, err) < 0 || (s = open_in(c, stream, err)) == NULL) {
        return -1;
    }
    if (len == 0) {
        return 0;
    }
    if (len > SBX_CONN_QUEUE_MAX - s->qlen) {
        return sbx_err_limit(err, "stream_queue", SBX_CONN_QUEUE_MAX,
                             "stream %u: %zu bytes queued, %zu more exceed the cap", stream,
                             s->qlen, len);
    }
    if (len > SBX_CONN_QUEUE_TOTAL_MAX - c->qtotal) {
        return sbx_err_limit(err, "queue_total", SBX_CONN_QUEUE_TOTAL_MAX,
                             "%zu bytes queued on all streams, %zu more exceed the cap", c->qtotal,
                             len);
    }
    /* Room for the worst case first, so nothing is sent unless everything can be taken. */
    if (queue_reserve(s, len) < 0) {
        return sbx_err_set(err, SBX_E_INTERNAL, "out of memory queueing %zu bytes", len);
    }
    /* Nothing queued before: frame straight from the caller's bytes while credit allows. */
    while (s->qlen == 0 && off < len && s->credit > 0 && c->obytes < SBX_CONN_OUT_DATA_MAX) {
        size_t n = len - off;
        if (n > s->credit) {
            n = (size_t)s->credit;
        }
        if (n > c->chunk_max) {
            n = c->chunk_max;
        }
        if (emit_data(c, stream, p + off, n) < 0) {
            break;
        }
        s->credit -= n;
        off += n;
    }
    memcpy(s->q + s->qhead + s->qlen, p + off, len - off);
    s->qlen += len - off;
    c->qtotal += len - off;
    return 0;
}

int sbx_conn_write_direct(struct sbx_conn *c, uint32_t stream, size_t len,
                          uint8_t hdr[SBX_STREAM_DATA_HDR_MAX], struct sbx_err *err)
{
    struct strm *s;

    if (usable(c, err) < 0 || (s = open_in(c, stream, err)) == NULL) {
        return -1;
    }
    /* Only with nothing ahead of it: the caller's frame then keeps its place in the order. */
    if (c->obytes > 0 || s->qlen > 0 || len == 0 || len > s->credit || len > c->chunk_max) {
        return 0;
    }
    s->credit -= len;
    return (int)sbx_data_header(hdr, stream, (uint32_t)len);
}

int sbx_conn_end(struct sbx_conn *c, uint32_t stream, const struct sbx_err *error,
                 struct sbx_err *err)
{
    struct strm *s;

    if (usable(c, err) < 0 || (s = open_in(c, stream, err)) == NULL) {
        return -1;
    }
    if (error != NULL) {
        /* An aborted byte sequence: what is still queued would only be discarded. */
        if (emit_ctl(c, SBX_N_STREAM_END, stream, 0, error) < 0) {
            return sbx_err_set(err, SBX_E_INTERNAL, "out of memory");
        }
        strm_remove(c, s);
        return 0;
    }
    s->flags |= S_END_DUE;
    c->nend++;
    (void)pump_stream(c, s, false); /* out of memory: the end goes out with a later pump */
    return 0;
}

int sbx_conn_cancel(struct sbx_conn *c, uint32_t stream, struct sbx_err *err)
{
    struct strm *s;

    if (usable(c, err) < 0) {
        return -1;
    }
    s = strm_find(c, stream);
    if (s == NULL) {
        return 0;
    }
    if (emit_ctl(c, SBX_N_STREAM_CANCEL, stream, 0, NULL) < 0) {
        return sbx_err_set(err, SBX_E_INTERNAL, "out of memory");
    }
    strm_remove(c, s);
    return 0;
}

/* Grant up to @bytes on `out` stream @s, keeping the agent's credit within 2^32-1. */
static int grant(struct sbx_conn *c, struct strm *s, uint64_t bytes, struct sbx_err *err)
{
    uint64_t room = UINT32_MAX - s->credit;

    if (bytes > room) {
        bytes = room;
    }
    if (bytes == 0) {
        return 0;
    }
    if (emit_ctl(c, SBX_N_STREAM_CREDIT, s->id, (uint32_t)bytes, NULL) < 0) {
        return sbx_err_set(err, SBX_E_INTERNAL, "out of memory");
    }
    s->credit += bytes;
    return 1;
}

int sbx_conn_consumed(struct sbx_conn *c, uint32_t stream, size_t n, struct sbx_err *err)
{
    struct strm *s;
    uint64_t half = c->out_window / 2 > 0 ? c->out_window / 2 : 1;
    uint64_t before;
    int r;

    if (usable(c, err) < 0) {
        return -1;
    }
    s = strm_find(c, stream);
    if (s == NULL || s->dir != SBX_DIR_OUT) {
        return 0;
    }
    if (n > s->unacked) {
        n = (size_t)s->unacked;
    }
    s->unacked -= n;
    s->consumed += n;
    if (s->consumed < half) {
        return 0;
    }
    before = s->credit;
    r = grant(c, s, s->consumed, err);
    if (r < 0) {
        return -1;
    }
    s->consumed -= s->credit - before;
    return 0;
}

int sbx_conn_grant(struct sbx_conn *c, uint32_t stream, uint32_t bytes, struct sbx_err *err)
{
    struct strm *s;

    if (usable(c, err) < 0) {
        return -1;
    }
    s = strm_find(c, stream);
    if (s == NULL || s->dir != SBX_DIR_OUT) {
        return 0;
    }
    return grant(c, s, bytes, err) < 0 ? -1 : 0;
}

size_t sbx_conn_queued(const struct sbx_conn *c, uint32_t stream)
{
    const struct strm *s = strm_find(c, stream);

    return s != NULL ? s->qlen : 0;
}

size_t sbx_conn_queued_total(const struct sbx_conn *c)
{
    return c->qtotal;
}

uint64_t sbx_conn_credit(const struct sbx_conn *c, uint32_t stream)
{
    const struct strm *s = strm_find(c, stream);

    return s != NULL && s->dir == SBX_DIR_IN ? s->credit : 0;
}

bool sbx_conn_stream_live(const struct sbx_conn *c, uint32_t stream)
{
    return strm_find(c, stream) != NULL;
}

int sbx_conn_stream_open(struct sbx_conn *c, uint32_t stream, enum sbx_dir dir, struct sbx_err *err)
{
    if (usable(c, err) < 0) {
        return -1;
    }
    if (dir != SBX_DIR_IN && dir != SBX_DIR_OUT) {
        return sbx_err_param(err, "dir", "direction must be SBX_DIR_IN or SBX_DIR_OUT");
    }
    if (strm_add(c, stream, dir, err) < 0) {
        return -1;
    }
    return 0;
}

int sbx_conn_stream_set_user(struct sbx_conn *c, uint32_t stream, void *user)
{
    struct strm *s = strm_find(c, stream);

    if (s == NULL) {
        return -1;
    }
    s->user = user;
    return 0;
}

/* --- requests ---------------------------------------------------------------------------- */

static uint32_t alloc_id(struct sbx_conn *c)
{
    for (;;) {
        uint32_t id = c->next_id;
        c->next_id = id == UINT32_MAX ? 1 : id + 1;
        if (tab_find(&c->pend, id) == NULL) {
            return id;
        }
    }
}

/* The local refusals of §5.5, §6.1 and §11 for a request of @call. */
static int gate(const struct sbx_conn *c, enum sbx_call call, const char *method,
                struct sbx_err *err)
{
    const char *cap = sbx_call_cap(call);

    if (call == SBX_CALL_HELLO) {
        if (c->hello == HELLO_PENDING) {
            return sbx_err_set(err, SBX_E_BUSY, "hello is already outstanding");
        }
        if (c->hello == HELLO_DONE) {
            return sbx_err_set(err, SBX_E_BAD_MESSAGE, "hello already done on this connection");
        }
        return 0;
    }
    if (c->hello == HELLO_NONE) {
        return sbx_err_set(err, SBX_E_HELLO_REQUIRED, "%s before hello", method);
    }
    /* Pipelined behind an outstanding hello (§6.1): the capabilities are not known yet, so the
     * agent is the judge (HELLO_REQUIRED if the hello fails, UNSUPPORTED). */
    if (c->hello == HELLO_PENDING) {
        return 0;
    }
    if (cap != NULL && strcmp(cap, "session") != 0 && !sbx_conn_has_cap(c, cap)) {
        (void)sbx_err_set(err, SBX_E_UNSUPPORTED, "%s: the agent does not announce capability %s",
                          method, cap);
        return -1;
    }
    return 0;
}

msgpack_packer *sbx_conn_begin(struct sbx_conn *c, const char *method, void *user, uint32_t *id,
                               struct sbx_err *err)
{
    size_t mlen = method != NULL ? strlen(method) : 0;
    enum sbx_call call;
    msgpack_packer *pk;

    if (usable(c, err) < 0) {
        return NULL;
    }
    if (mlen == 0 || mlen > SBX_METHOD_MAX) {
        (void)sbx_err_param(err, "method", "a method name is 1..%u bytes", SBX_METHOD_MAX);
        return NULL;
    }
    call = sbx_call_lookup(method, mlen);
    if (gate(c, call, method, err) < 0) {
        return NULL;
    }
    if (c->pend.n >= SBX_CONN_PENDING_MAX) {
        (void)sbx_err_limit(err, "max_pending", SBX_CONN_PENDING_MAX, "%u requests are outstanding",
                            c->pend.n);
        return NULL;
    }
    if (c->obytes >= SBX_CONN_OUT_MAX) {
        (void)sbx_err_limit(err, "out_max", SBX_CONN_OUT_MAX,
                            "%zu bytes of output wait for the transport", c->obytes);
        return NULL;
    }
    memset(&c->bpend, 0, sizeof(c->bpend));
    if (call == SBX_CALL_OTHER && (c->bpend.name = strdup(method)) == NULL) {
        (void)sbx_err_set(err, SBX_E_INTERNAL, "out of memory");
        return NULL;
    }
    c->bpend.id = alloc_id(c);
    c->bpend.call = call;
    c->bpend.user = user;
    pk = frame_begin(c);
    sbx_pack_request_head(pk, c->bpend.id, method);
    c->building = true;
    if (id != NULL) {
        *id = c->bpend.id;
    }
    return pk;
}

void sbx_conn_abort(struct sbx_conn *c)
{
    if (!c->building) {
        return;
    }
    c->building = false;
    frame_drop(c);
    free(c->bpend.name);
    c->bpend.name = NULL;
}

/* The request just built is one value after the head, or the caller packed 0 or 2. */
static int check_request(struct sbx_conn *c, struct sbx_err *err)
{
    const uint8_t *p = c->ot->data + c->fstart + SBX_FRAME_HDR;
    size_t len = c->ot->tail - c->fstart - SBX_FRAME_HDR;
    struct sbx_err e;

    /* The head says 4 elements; a frame that is not one valid value packed the params wrong. */
    if (sbx_msgpack_validate(p, len, &e) < 0) {
        return sbx_err_param(err, "params",
                             "the request is not one msgpack value (pack exactly "
                             "one params value): %s",
                             e.msg);
    }
#if !defined(NDEBUG) || defined(SBX_SANITIZED)
    if (sbx_schema_check(p, len, &e) < 0) {
        return sbx_err_param(err, "params", "the request breaks the schema: %s", e.msg);
    }
#endif
    return 0;
}

int sbx_conn_commit(struct sbx_conn *c, struct sbx_err *err)
{
    struct pend *p;

    if (!c->building) {
        return sbx_err_set(err, SBX_E_INTERNAL, "sbx_conn_commit without sbx_conn_begin");
    }
    c->building = false;
    if (!c->ofail && check_request(c, err) < 0) {
        frame_drop(c);
        goto drop;
    }
    if (frame_end(c, err) < 0) {
        goto drop;
    }
    p = tab_insert(&c->pend, c->bpend.id);
    if (p == NULL) {
        /* The frame is queued already; take it back: it is the last one. */
        size_t len = c->ot->tail - c->fstart;
        c->ot->tail = c->fstart;
        c->obytes -= len;
        (void)sbx_err_set(err, SBX_E_INTERNAL, "out of memory");
        goto drop;
    }
    *p = c->bpend;
    c->bpend.name = NULL;
    if (p->call == SBX_CALL_HELLO) {
        c->hello = HELLO_PENDING;
        /* What a hello asked is known only for sbx_conn_hello's, which sets it again after
         * this; a hello the caller packed is checked against nothing it did not ask. */
        c->hello_min = c->hello_max = c->hello_recv = 0;
    }
    return 0;
drop:
    free(c->bpend.name);
    c->bpend.name = NULL;
    return -1;
}

int sbx_conn_hello(struct sbx_conn *c, const struct sbx_hello *h, void *user, uint32_t *id,
                   struct sbx_err *err)
{
    static const struct sbx_hello def = {
        .version = SBX_PROTO_VERSION,
        .min_version = SBX_PROTO_MIN_VERSION,
        .client = "libsbx",
        .client_len = 6,
    };
    msgpack_packer *pk;

    if (h == NULL) {
        h = &def;
    }
    pk = sbx_conn_begin(c, SBX_M_HELLO, user, id, err);
    if (pk == NULL) {
        return -1;
    }
    sbx_hello_pack(pk, h);
    if (sbx_conn_commit(c, err) < 0) {
        return -1;
    }
    /* The agent must pick a version in this range (§6.3); the result is checked against it. */
    c->hello_min = h->min_version;
    c->hello_max = h->version;
    c->hello_recv = h->recv_window;
    return 0;
}

/* --- input ------------------------------------------------------------------------------- */

/* Make room for @len more input bytes (the caller checked the cap). */
static int in_room(struct sbx_conn *c, size_t len)
{
    size_t have = c->ilen - c->ipos;

    if (c->icap - c->ilen >= len) {
        return 0;
    }
    if (c->ipos > 0) {
        memmove(c->in, c->in + c->ipos, have);
        c->ilen = have;
        c->ipos = 0;
        if (c->icap - c->ilen >= len) {
            return 0;
        }
    }
    return buf_grow(&c->in, &c->icap, have + len, IN_CHUNK, SBX_CONN_IN_MAX);
}

int sbx_conn_feed(struct sbx_conn *c, const void *buf, size_t len, struct sbx_err *err)
{
    size_t have = c->ilen - c->ipos;

    if (c->closed) {
        return sbx_err_set(err, SBX_E_EOF, "input after the end of the connection");
    }
    if (len > SBX_CONN_IN_MAX - have) {
        return sbx_err_limit(err, "in_max", SBX_CONN_IN_MAX,
                             "%zu bytes buffered, %zu more exceed the cap (call sbx_conn_next "
                             "until it returns 0)",
                             have, len);
    }
    if (len == 0) {
        return 0;
    }
    if (in_room(c, len) < 0) {
        return sbx_err_set(err, SBX_E_INTERNAL, "out of memory for %zu bytes of input", len);
    }
    memcpy(c->in + c->ilen, buf, len);
    c->ilen += len;
    return 0;
}

static uint32_t get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

uint8_t *sbx_conn_feed_space(struct sbx_conn *c, size_t *len)
{
    size_t have = c->ilen - c->ipos, want = IN_CHUNK, room = SBX_CONN_IN_MAX - have;

    *len = 0;
    if (c->closed || room == 0) {
        return NULL;
    }
    /* A frame whose length is known and valid: offer room for all of it at once. */
    if (have >= SBX_FRAME_HDR) {
        uint32_t l = get_be32(c->in + c->ipos);
        if (l <= c->frame_max && SBX_FRAME_HDR + (size_t)l > have &&
            SBX_FRAME_HDR + (size_t)l - have > want) {
            want = SBX_FRAME_HDR + (size_t)l - have;
        }
    }
    if (want > room) {
        want = room;
    }
    if (want > SBX_CONN_FEED_MAX) {
        want = SBX_CONN_FEED_MAX;
    }
    if (in_room(c, want) < 0) {
        return NULL;
    }
    *len = c->icap - c->ilen;
    if (*len > room) {
        *len = room;
    }
    if (*len > SBX_CONN_FEED_MAX) {
        *len = SBX_CONN_FEED_MAX;
    }
    return c->in + c->ilen;
}

void sbx_conn_feed_commit(struct sbx_conn *c, size_t n)
{
    if (n > c->icap - c->ilen) {
        n = c->icap - c->ilen;
    }
    c->ilen += n;
}

static void ev_init(struct sbx_event *ev, enum sbx_event_kind kind)
{
    /* Field by field: the record union is large and only its active member is read. */
    ev->kind = kind;
    ev->call = SBX_CALL_OTHER;
    ev->method = NULL;
    ev->id = 0;
    ev->user = NULL;
    ev->unknown = false;
    ev->local = false;
    ev->error = NULL;
    ev->result = NULL;
    ev->stream = 0;
    ev->stream_user = NULL;
    ev->data = NULL;
    ev->len = 0;
    ev->truncated = false;
    ev->credit = 0;
    ev->queued = 0;
    ev->done = NULL;
    ev->frame = NULL;
    ev->frame_len = 0;
    ev->rec = SBX_REC_NONE;
}

/* Answer a request from the agent (v1 agents never send one, §5.1) with UNKNOWN_METHOD. The
 * answer is optional ("MAY"), so none is queued while output waits above SBX_CONN_OUT_MAX: a
 * flood of requests cannot grow the output without bound. */
static void answer_request(struct sbx_conn *c, const struct sbx_msg *m)
{
    struct sbx_err e, ignored;
    msgpack_packer *pk;

    if (c->obytes >= SBX_CONN_OUT_MAX) {
        return;
    }
    (void)sbx_err_set(&e, SBX_E_UNKNOWN_METHOD, "this client serves no requests");
    pk = frame_begin(c);
    sbx_pack_error_response(pk, m->id, &e);
    (void)frame_end(c, &ignored);
}

/* A data message broke §8.6 on stream @id: cancel the stream (if live) with STREAM and report
 * it as a local CANCEL. 1 with an event, 0 when the stream is unknown (dropped), -1 fatal. */
static int misuse(struct sbx_conn *c, uint32_t id, const char *what, struct sbx_event *ev,
                  struct sbx_err *err)
{
    struct strm *s = strm_find(c, id);
    struct sbx_err e;

    if (s == NULL) {
        return 0;
    }
    (void)sbx_err_set(&c->ev_err, SBX_E_STREAM, "stream %u: %s", id, what);
    ev_init(ev, SBX_EV_CANCEL);
    ev->stream = id;
    ev->stream_user = s->user;
    ev->local = true;
    ev->error = &c->ev_err;
    if (emit_ctl(c, SBX_N_STREAM_CANCEL, id, 0, &c->ev_err) < 0) {
        (void)sbx_err_set(&e, SBX_E_INTERNAL, "out of memory");
        return fail(c, &e, err);
    }
    strm_remove(c, s);
    return 1;
}

static int on_data(struct sbx_conn *c, const struct sbx_msg *m, struct sbx_event *ev,
                   struct sbx_err *err)
{
    struct strm *s = strm_find(c, m->stream);

    if (s == NULL) {
        return 0; /* unknown or finished: discarded silently (§8.5) */
    }
    if (s->dir != SBX_DIR_OUT) {
        return misuse(c, m->stream, "data on an in stream", ev, err);
    }
    if (m->data_len > c->chunk_max) {
        return misuse(c, m->stream, "data message larger than chunk_max", ev, err);
    }
    if (m->data_len > s->credit) {
        return misuse(c, m->stream, "data beyond the credit granted", ev, err);
    }
    s->credit -= m->data_len;
    s->unacked += m->data_len;
    ev_init(ev, SBX_EV_DATA);
    ev->stream = m->stream;
    ev->stream_user = s->user;
    ev->data = m->data;
    ev->len = m->data_len;
    return 1;
}

/* --- responses ----------------------------------------------------------------------------- */

/* Take in what hello established (§6.4). -1 with c->ev_err. */
static int hello_apply(struct sbx_conn *c, const struct sbx_hello_result *r)
{
    const msgpack_object *cv = r->capv;
    size_t need = 0, off = 0;
    char *caps;

    if (c->hello_max != 0 && (r->version > c->hello_max || r->version < c->hello_min)) {
        return sbx_err_set(&c->ev_err, SBX_E_BAD_MESSAGE,
                           "hello result: version %llu is outside the range %llu..%llu asked for",
                           (unsigned long long)r->version, (unsigned long long)c->hello_min,
                           (unsigned long long)c->hello_max);
    }
    /* An agent that knows recv_window echoes it; one that does not leaves its streams at
     * stream_window (§6.4). Echoing anything else, or what nobody asked, is the agent's bug. */
    if (c->hello_max != 0 && r->recv_window != 0 && r->recv_window != c->hello_recv) {
        return sbx_err_set(&c->ev_err, SBX_E_BAD_MESSAGE,
                           "hello result: recv_window %llu is not the %llu asked for",
                           (unsigned long long)r->recv_window, (unsigned long long)c->hello_recv);
    }
    /* Keep the capability names that can be names (str, at most 64 bytes, no NUL). */
    for (uint32_t i = 0; i < cv->via.array.size; i++) {
        const msgpack_object *o = &cv->via.array.ptr[i];
        if (o->type == MSGPACK_OBJECT_STR && o->via.str.size <= SBX_HELLO_CAP_MAX &&
            memchr(o->via.str.ptr, '\0', o->via.str.size) == NULL) {
            need += o->via.str.size + 1;
        }
    }
    caps = malloc(need + 1);
    if (caps == NULL) {
        return sbx_err_set(&c->ev_err, SBX_E_INTERNAL, "out of memory");
    }
    for (uint32_t i = 0; i < cv->via.array.size; i++) {
        const msgpack_object *o = &cv->via.array.ptr[i];
        if (o->type == MSGPACK_OBJECT_STR && o->via.str.size <= SBX_HELLO_CAP_MAX &&
            memchr(o->via.str.ptr, '\0', o->via.str.size) == NULL) {
            memcpy(caps + off, o->via.str.ptr, o->via.str.size);
            off += o->via.str.size;
            caps[off++] = '\0';
        }
    }
    free(c->caps);
    c->caps = caps;
    c->caps_len = off;
    c->peer.version = (uint32_t)r->version;
    c->peer.limits = r->limits;
    c->peer.conn = r->conn;
    (void)snprintf(c->peer.agent, sizeof(c->peer.agent), "%.*s", (int)r->agent_len, r->agent);
    (void)snprintf(c->peer.agent_version, sizeof(c->peer.agent_version), "%.*s",
                   (int)r->agent_version_len, r->agent_version);
    c->frame_max = (uint32_t)r->limits.frame_max;
    c->chunk_max = (uint32_t)r->limits.chunk_max;
    c->window = (uint32_t)r->limits.stream_window;
    c->out_window = r->recv_window != 0 ? (uint32_t)r->recv_window : c->window;
    c->streams_max = r->limits.max_streams < SBX_CONN_STREAMS_MAX ? (uint32_t)r->limits.max_streams
                                                                  : SBX_CONN_STREAMS_MAX;
    c->hello = HELLO_DONE;
    return 0;
}

/* Register the streams a result announced; any failure is the agent's (BAD_MESSAGE). */
static int add_streams(struct sbx_conn *c, enum sbx_dir d1, uint32_t s1, enum sbx_dir d2,
                       uint32_t s2, enum sbx_dir d3, uint32_t s3)
{
    if ((s1 != 0 && strm_add(c, s1, d1, &c->ev_err) < 0) ||
        (s2 != 0 && strm_add(c, s2, d2, &c->ev_err) < 0) ||
        (s3 != 0 && strm_add(c, s3, d3, &c->ev_err) < 0)) {
        return -1;
    }
    return 0;
}

/* Read the typed record of a successful response and apply what it establishes. -1 with
 * c->ev_err set. */
static int read_result(struct sbx_conn *c, struct sbx_event *ev)
{
    const msgpack_object *res = ev->result;
    struct sbx_err *e = &c->ev_err;

    switch (ev->call) {
    case SBX_CALL_HELLO:
        ev->rec = SBX_REC_HELLO;
        return sbx_hello_result_read(res, &ev->r.hello, e) < 0 ? -1 : hello_apply(c, &ev->r.hello);
    case SBX_CALL_PROC_SPAWN:
        ev->rec = SBX_REC_SPAWN;
        if (sbx_spawn_result_read(res, &ev->r.spawn, e) < 0) {
            return -1;
        }
        return add_streams(c, SBX_DIR_IN, ev->r.spawn.in, SBX_DIR_OUT, ev->r.spawn.out, SBX_DIR_OUT,
                           ev->r.spawn.err);
    case SBX_CALL_PROC_WAIT:
        ev->rec = SBX_REC_EXIT;
        return sbx_exit_read(res, &ev->r.exit, e);
    case SBX_CALL_FS_STAT:
    case SBX_CALL_FS_LSTAT:
    case SBX_CALL_FS_FSTAT:
        ev->rec = SBX_REC_FILEINFO;
        return sbx_fileinfo_read(res, &ev->r.fileinfo, e);
    case SBX_CALL_TRANSFER_UPLOAD:
    case SBX_CALL_TRANSFER_UPLOAD_TREE:
        ev->rec = SBX_REC_STREAM;
        if (sbx_stream_result_read(res, false, &ev->r.stream, e) < 0) {
            return -1;
        }
        return add_streams(c, SBX_DIR_IN, ev->r.stream.stream, SBX_DIR_IN, 0, SBX_DIR_IN, 0);
    case SBX_CALL_TRANSFER_DOWNLOAD:
    case SBX_CALL_TRANSFER_DOWNLOAD_TREE:
    case SBX_CALL_FS_WALK:
    case SBX_CALL_FS_GLOB:
        ev->rec = SBX_REC_STREAM;
        if (sbx_stream_result_read(res, ev->call == SBX_CALL_TRANSFER_DOWNLOAD, &ev->r.stream, e) <
            0) {
            return -1;
        }
        return add_streams(c, SBX_DIR_OUT, ev->r.stream.stream, SBX_DIR_OUT, 0, SBX_DIR_OUT, 0);
    case SBX_CALL_REPL_EVAL:
        if (sbx_obj_get(res, "eval") == NULL) {
            return 0; /* without stream: true the result is the whole eval, left raw */
        }
        ev->rec = SBX_REC_EVAL;
        if (sbx_eval_streams_read(res, &ev->r.eval, e) < 0) {
            return -1;
        }
        return add_streams(c, SBX_DIR_OUT, ev->r.eval.out, SBX_DIR_OUT, ev->r.eval.err, SBX_DIR_OUT,
                           0);
    case SBX_CALL_PACK_CREATE:
        ev->rec = SBX_REC_PACK;
        if (sbx_pack_result_read(res, &ev->r.pack, e) < 0) {
            return -1;
        }
        return add_streams(c, SBX_DIR_OUT, ev->r.pack.build_out, SBX_DIR_OUT, ev->r.pack.build_err,
                           SBX_DIR_OUT, ev->r.pack.archive);
    case SBX_CALL_PROC_ATTACH:
        ev->rec = SBX_REC_ATTACH;
        if (sbx_attach_result_read(res, &ev->r.attach, e) < 0) {
            return -1;
        }
        return add_streams(c, SBX_DIR_IN, ev->r.attach.stdin_sid, SBX_DIR_OUT,
                           ev->r.attach.stdout_sid, SBX_DIR_OUT, ev->r.attach.stderr_sid);
    case SBX_CALL_NET_CONNECT:
        ev->rec = SBX_REC_NET;
        if (sbx_net_connect_result_read(res, &ev->r.net, e) < 0) {
            return -1;
        }
        return add_streams(c, SBX_DIR_IN, ev->r.net.in, SBX_DIR_OUT, ev->r.net.out, SBX_DIR_OUT, 0);
    default:
        return 0;
    }
}

/* The response (real or made up at EOF) for pending request @p is in @ev: give it the request's
 * call, user pointer and method name, and forget the request. */
static void pend_retire(struct sbx_conn *c, struct pend *p, struct sbx_event *ev)
{
    ev->call = p->call;
    ev->user = p->user;
    if (p->call != SBX_CALL_OTHER) {
        ev->method = sbx_call_name(p->call);
    } else {
        (void)snprintf(c->ev_method, sizeof(c->ev_method), "%s", p->name);
        ev->method = c->ev_method;
        free(p->name);
    }
    tab_remove(&c->pend, p);
}

static int on_response(struct sbx_conn *c, const struct sbx_msg *m, struct sbx_event *ev,
                       struct sbx_err *err)
{
    struct pend *p = tab_find(&c->pend, m->id);
    const msgpack_object *code;

    ev_init(ev, SBX_EV_RESPONSE);
    ev->id = m->id;
    if (m->error != NULL) {
        /* §5.2: a failure has an error map with a code, and a nil result. */
        code = sbx_obj_get(m->error, "code");
        if (code == NULL || code->type != MSGPACK_OBJECT_STR || code->via.str.size == 0 ||
            m->result->type != MSGPACK_OBJECT_NIL) {
            (void)sbx_err_set(&c->ev_err, SBX_E_BAD_MESSAGE,
                              "response %u: an error response needs an error code and a nil "
                              "result",
                              m->id);
            return fail_peer(c, err);
        }
        sbx_err_from_obj(m->error, &c->ev_err);
        ev->error = &c->ev_err;
    } else {
        ev->result = m->result;
    }
    if (p == NULL) {
        ev->unknown = true;
        return 1;
    }
    /* The record is read while the request is still outstanding: a record that breaks its table
     * makes the connection fail, and the request must then be failed with the others once the
     * host calls sbx_conn_eof. Retired first, it would never be answered, and whatever the host
     * tied to it (a gateway call, its session) would wait forever. */
    ev->call = p->call;
    if (m->error == NULL && read_result(c, ev) < 0) {
        return fail_peer(c, err);
    }
    pend_retire(c, p, ev);
    if (ev->call == SBX_CALL_HELLO && m->error != NULL) {
        c->hello = HELLO_NONE; /* VERSION, BAD_PARAM: another hello may follow (§6.1) */
    }
    return 1;
}

/* --- notifications ----------------------------------------------------------------------- */

static int on_stream_note(struct sbx_conn *c, const struct sbx_msg *m, struct sbx_event *ev,
                          struct sbx_err *err)
{
    struct sbx_stream_note *n = &c->u.note;
    struct strm *s;

    if (sbx_stream_note_read(c->ev_method, m->params, n, &c->ev_err) < 0) {
        return fail_peer(c, err);
    }
    s = strm_find(c, n->stream);
    if (s == NULL) {
        return 0; /* unknown or finished (§8.5) */
    }
    if (sbx_msg_method_is(m, SBX_N_STREAM_CREDIT)) {
        if (s->dir != SBX_DIR_IN || n->bytes == 0) {
            return 0; /* credit on an out stream is ignored (§8.6); a grant of 0 too (§8.3) */
        }
        if (s->credit + n->bytes > UINT32_MAX) {
            return misuse(c, n->stream, "credit grant beyond 2^32-1", ev, err);
        }
        s->credit += n->bytes;
        ev_init(ev, SBX_EV_CREDIT);
        ev->stream = n->stream;
        ev->stream_user = s->user;
        if (!pump_stream(c, s, false)) {
            ev->credit = s->credit;
            ev->queued = s->qlen;
        }
        return 1;
    }
    if (sbx_msg_method_is(m, SBX_N_STREAM_END) && s->dir != SBX_DIR_OUT) {
        return 0; /* an end from the receiver's side is ignored (§8.4) */
    }
    ev_init(ev, sbx_msg_method_is(m, SBX_N_STREAM_END) ? SBX_EV_END : SBX_EV_CANCEL);
    ev->stream = n->stream;
    ev->stream_user = s->user;
    ev->truncated = n->truncated;
    if (n->has_error) {
        ev->error = &n->error;
    }
    strm_remove(c, s);
    return 1;
}

static int on_notify(struct sbx_conn *c, const struct sbx_msg *m, struct sbx_event *ev,
                     struct sbx_err *err)
{
    struct strm *s;

    memcpy(c->ev_method, m->method, m->method_len);
    c->ev_method[m->method_len] = '\0';
    ev->method = c->ev_method;
    ev->result = m->params;
    if (sbx_msg_method_is(m, SBX_N_STREAM_CREDIT) || sbx_msg_method_is(m, SBX_N_STREAM_END) ||
        sbx_msg_method_is(m, SBX_N_STREAM_CANCEL)) {
        return on_stream_note(c, m, ev, err);
    }
    if (sbx_msg_method_is(m, SBX_N_PROC_EXIT)) {
        ev_init(ev, SBX_EV_EXIT);
        ev->rec = SBX_REC_EXIT;
        if (sbx_exit_read(m->params, &ev->r.exit, &c->ev_err) < 0) {
            return fail_peer(c, err);
        }
        return 1;
    }
    if (sbx_msg_method_is(m, SBX_N_TRANSFER_DONE)) {
        if (sbx_transfer_done_read(m->params, &c->u.done, &c->ev_err) < 0) {
            return fail_peer(c, err);
        }
        ev_init(ev, SBX_EV_TRANSFER_DONE);
        ev->stream = c->u.done.stream;
        ev->done = &c->u.done;
        /* The last frame about an upload: a stream still open for it is of no use now. */
        s = strm_find(c, c->u.done.stream);
        if (s != NULL && s->dir == SBX_DIR_IN) {
            ev->stream_user = s->user;
            strm_remove(c, s);
        }
        return 1;
    }
    ev_init(ev, sbx_msg_method_is(m, SBX_N_ERROR) ? SBX_EV_ERROR : SBX_EV_NOTIFY);
    ev->method = c->ev_method;
    ev->result = m->params;
    if (ev->kind == SBX_EV_ERROR) {
        sbx_err_from_obj(m->params, &c->ev_err);
        memcpy(c->peer_code, c->ev_err.code, sizeof(c->peer_code));
        memcpy(c->peer_msg, c->ev_err.msg, sizeof(c->peer_msg));
        ev->error = &c->ev_err;
    }
    return 1;
}

/* One frame: 1 with an event, 0 consumed without one, -1 fatal. */
static int on_frame(struct sbx_conn *c, const uint8_t *p, uint32_t len, struct sbx_event *ev,
                    struct sbx_err *err)
{
    struct sbx_msg m;
    int r;

    if (sbx_msg_decode(&c->dec, p, len, &m, &c->ev_err) < 0) {
        if (m.kind == SBX_MSG_DATA && m.stream != 0 &&
            strcmp(c->ev_err.code, SBX_E_BAD_MESSAGE) == 0) {
            return misuse(c, m.stream, "unreadable data message (empty, over chunk_max or not bin)",
                          ev, err);
        }
        return fail_peer(c, err);
    }
    switch (m.kind) {
    case SBX_MSG_REQUEST:
        answer_request(c, &m);
        return 0;
    case SBX_MSG_RESPONSE:
        r = on_response(c, &m, ev, err);
        break;
    case SBX_MSG_NOTIFY:
        r = on_notify(c, &m, ev, err);
        break;
    default:
        r = on_data(c, &m, ev, err);
        break;
    }
    if (r == 1 && !ev->local) {
        ev->frame = p;
        ev->frame_len = len;
    }
    return r;
}

/* --- the end of the transport -------------------------------------------------------------- */

void sbx_conn_eof(struct sbx_conn *c)
{
    size_t partial = c->ilen - c->ipos;
    struct sbx_err *e = &c->fatal;

    if (c->closed) {
        return;
    }
    c->closed = true;
    if (c->building) {
        sbx_conn_abort(c);
    }
    if (c->broken) {
        return; /* the fatal error stays the reason */
    }
    /* c->fatal is unused while the connection is not broken: it holds the reason until then. */
    if (c->peer_code[0] != '\0') {
        (void)sbx_err_set(e, SBX_E_EOF, "the agent closed the connection after error %s: %s",
                          c->peer_code, c->peer_msg);
    } else {
        (void)sbx_err_set(e, SBX_E_EOF, "the agent closed the connection");
    }
    if (partial > 0) {
        (void)snprintf(e->msg + strlen(e->msg), sizeof(e->msg) - strlen(e->msg),
                       " (%zu bytes of an incomplete frame discarded)", partial);
    }
}

/* After sbx_conn_eof, once the buffered frames are delivered: fail what is outstanding. */
static int eof_next(struct sbx_conn *c, struct sbx_event *ev, struct sbx_err *err)
{
    c->ev_err = c->fatal;
    if (strcmp(c->ev_err.code, SBX_E_EOF) != 0) {
        sbx_err_prefix(&c->ev_err, "connection failed (%s)", c->ev_err.code);
        memcpy(c->ev_err.code, SBX_E_EOF, sizeof(SBX_E_EOF));
    }
    for (uint32_t i = 0; c->pend.n > 0 && i < c->pend.cap; i++) {
        struct pend *p = tab_at(&c->pend, i);
        if (p->id == 0) {
            continue;
        }
        ev_init(ev, SBX_EV_RESPONSE);
        ev->id = p->id;
        ev->local = true;
        ev->error = &c->ev_err;
        pend_retire(c, p, ev);
        return 1;
    }
    for (uint32_t i = 0; c->st.n > 0 && i < c->st.cap; i++) {
        struct strm *s = tab_at(&c->st, i);
        if (s->id == 0) {
            continue;
        }
        ev_init(ev, SBX_EV_CANCEL);
        ev->stream = s->id;
        ev->stream_user = s->user;
        ev->local = true;
        ev->error = &c->ev_err;
        strm_remove(c, s);
        return 1;
    }
    c->broken = true;
    *err = c->fatal;
    return -1;
}

int sbx_conn_next(struct sbx_conn *c, struct sbx_event *ev, struct sbx_err *err)
{
    struct sbx_err e;

    if (c->building) {
        return sbx_err_set(err, SBX_E_BUSY, "a request is being built");
    }
    while (!c->broken) {
        size_t have = c->ilen - c->ipos;
        uint32_t len;
        int r;

        if (have < SBX_FRAME_HDR) {
            break;
        }
        /* §3.2: the length is checked on the header alone, before the body is awaited. */
        len = get_be32(c->in + c->ipos);
        if (len == 0) {
            (void)sbx_err_set(&e, SBX_E_BAD_FRAME, "agent sent a zero-length frame");
            return fail(c, &e, err);
        }
        if (len > c->frame_max) {
            (void)sbx_err_set(&e, SBX_E_FRAME_TOO_LARGE,
                              "agent sent a frame of %u bytes, over the %u-byte cap", len,
                              c->frame_max);
            return fail(c, &e, err);
        }
        if (have - SBX_FRAME_HDR < len) {
            break;
        }
        c->ipos += SBX_FRAME_HDR + len;
        r = on_frame(c, c->in + c->ipos - len, len, ev, err);
        if (r != 0) {
            return r;
        }
    }
    if (c->closed) {
        return eof_next(c, ev, err);
    }
    if (c->broken) {
        *err = c->fatal;
        return -1;
    }
    if (c->ipos == c->ilen) {
        c->ipos = c->ilen = 0;
        if (c->icap > IN_KEEP) {
            free(c->in);
            c->in = NULL;
            c->icap = 0;
        }
    }
    return 0;
}
