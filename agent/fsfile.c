/*
 * The fs family's file handles (PROTOCOL.md §17.7): fs.open keeps an fd per connection under an
 * id, and the other calls read, write, seek, stat, sync, truncate, set the times of, lock and
 * close it. fs.open opens as the request's identity (§17.1); the handle then has what that open
 * gave it, and fs.futimes, which the kernel checks at the call, acts as that identity again.
 *
 * fs.flock with `wait` never blocks a thread: it tries flock(2) with LOCK_NB and, while another
 * holder has the file, a timer on the loop tries again (after 1 ms, doubling to 50 ms). A
 * blocking flock on a worker could not be taken back when the handle or the connection closes;
 * a timer is stopped. The price is fairness: a process blocked in flock(2) may get the lock
 * first.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsconn.h"
#include "path.h"
#include "sbx/schema.h"

/* The first and the longest pause between the tries of a waiting fs.flock. */
#define FH_LOCK_RETRY_MIN_MS 1u
#define FH_LOCK_RETRY_MAX_MS 50u

struct fh_lock_wait;

struct fs_handle {
    uint32_t id;
    int fd;
    char *path;               /* as opened, for errors */
    struct agent_ident who;   /* as opened: fs.futimes acts as it */
    struct fh_lock_wait *lkw; /* a waiting fs.flock, or NULL */
};

/* A waiting fs.flock (at most one per handle). Its memory is the timer's: freed in close_cb. */
struct fh_lock_wait {
    uv_timer_t timer;
    struct agent_fs *fs; /* the handle's connection state; the handle is found by id */
    uint32_t fh, req;    /* the handle and the request to answer */
    int op;              /* LOCK_SH or LOCK_EX */
    unsigned delay_ms;
};

/* Reply {key: v}. */
static void reply_u64(struct agent_conn *c, uint32_t id, const char *key, uint64_t v)
{
    msgpack_packer *pk = agent_conn_begin(c);

    sbx_pack_response_head(pk, id);
    (void)msgpack_pack_map(pk, 1);
    sbx_pack_kv_u64(pk, key, v);
    agent_conn_send(c);
}

/* Handle @id of @fs (may be NULL), or NULL. The table moves when it grows or a handle closes:
 * hold an id, not a pointer, across a callback. */
static struct fs_handle *fh_by_id(struct agent_fs *fs, uint64_t id)
{
    if (fs != NULL) {
        for (unsigned i = 0; i < fs->nfh; i++) {
            if (fs->fh[i].id == id) {
                return &fs->fh[i];
            }
        }
    }
    return NULL;
}

/*
 * The handle the `fh` param names. Handlers call it after every other param has been checked, so
 * a bad param wins over an unknown handle (PROTOCOL.md §7.2).
 */
static struct fs_handle *fh_find(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    uint64_t id;

    struct fs_handle *h;

    if (sbx_param_u64(m->params, "fh", SBX_REQUIRED, 0, UINT32_MAX, &id, err) < 0) {
        return NULL;
    }
    if ((h = fh_by_id(c->fs, id)) != NULL) {
        return h;
    }
    sbx_err_set(err, SBX_E_NOT_FOUND, "no open file handle %llu", (unsigned long long)id);
    return NULL;
}

/* An errno error of an operation on handle @h: carries the path it was opened with. */
static void fh_err(struct sbx_err *err, int errnum, const char *op, const struct fs_handle *h)
{
    agent_fs_err(err, errnum, op, h->path);
}

static const struct {
    const char *name;
    int flags;
} open_flags[] = {
    { "read", 0 },
    { "write", 0 },
    { "append", O_APPEND },
    { "create", O_CREAT },
    { "truncate", O_TRUNC },
    { "exclusive", O_EXCL },
    { "nofollow", O_NOFOLLOW },
    { "sync", O_SYNC },
};

int agent_fs_open(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct agent_fs *fs = agent_fs_state(c);
    char path[AGENT_FS_PATH_BUF];
    _cleanup_ident_ struct agent_ident_scope sc = { 0 };
    struct agent_ident who;
    const msgpack_object *arr = NULL;
    uint64_t mode = 0666;
    bool rd = false, wr = false;
    int flags = O_CLOEXEC, fd, r;
    char *hpath;

    if (fs == NULL) {
        return sbx_err_oom(err);
    }
    if (agent_fs_path_param(m->params, "path", SBX_REQUIRED, path, err) < 0 ||
        sbx_param_u64(m->params, "mode", SBX_OPTIONAL, 0, 07777, &mode, err) < 0 ||
        (r = sbx_param_array(m->params, "flags", SBX_OPTIONAL, 16, &arr, err)) < 0 ||
        agent_ident_param(c->a, m->params, &who, err) < 0) {
        return -1;
    }
    if (arr == NULL) {
        rd = true;
    } else {
        for (uint32_t i = 0; i < arr->via.array.size; i++) {
            const char *s;
            size_t n;
            size_t k;
            bool ok = sbx_obj_bytes(&arr->via.array.ptr[i], &s, &n);
            for (k = 0; ok && k < ARRAY_SIZE(open_flags); k++) {
                if (strlen(open_flags[k].name) == n && memcmp(open_flags[k].name, s, n) == 0) {
                    break;
                }
            }
            if (!ok || k == ARRAY_SIZE(open_flags)) {
                sbx_err_param(err, "flags", "unknown open flag in flags[%u]", i);
                (void)snprintf(err->field, sizeof(err->field), "flags[%u]", i);
                return -1;
            }
            flags |= open_flags[k].flags;
            rd |= k == 0;
            wr |= k == 1 || k == 2;
        }
    }
    if (!rd && !wr) {
        sbx_err_param(err, "flags", "flags need one of read, write, append");
        return -1;
    }
    if ((flags & O_EXCL) && !(flags & O_CREAT)) {
        sbx_err_param(err, "flags", "exclusive needs create");
        return -1;
    }
    flags |= rd && wr ? O_RDWR : wr ? O_WRONLY : O_RDONLY;
    if (fs->nfh >= SBX_FS_HANDLES_MAX) {
        sbx_err_limit(err, "max_handles", SBX_FS_HANDLES_MAX, "too many open file handles (cap %u)",
                      SBX_FS_HANDLES_MAX);
        return -1;
    }
    if (fs->nfh == fs->capfh) {
        unsigned cap = fs->capfh ? fs->capfh * 2 : 8;
        struct fs_handle *nh = realloc(fs->fh, cap * sizeof(*nh));
        if (nh == NULL) {
            return sbx_err_oom(err);
        }
        fs->fh = nh;
        fs->capfh = cap;
    }
    hpath = strdup(path);
    if (hpath != NULL && agent_ident_enter_err(&who, &sc, err) < 0) {
        free(hpath);
        return -1;
    }
    /* Non-blocking first: opening a FIFO would otherwise wait for its other end, holding the
     * loop. Regular files and directories go back to blocking (it means nothing for them);
     * special files stay non-blocking, so a read with nothing available is EAGAIN. O_NOCTTY:
     * the agent leads a session with no terminal (sbx-init's setsid), and a terminal of the
     * workload's behind @path would otherwise become the agent's, its ^C and ^\ the agent's
     * death. */
    fd = hpath != NULL
             ? agent_path_open(AT_FDCWD, path, flags | O_NONBLOCK | O_NOCTTY, (mode_t)mode)
             : -1;
    if (fd >= 0) {
        struct stat st;
        if (fstat(fd, &st) == 0 && (S_ISREG(st.st_mode) || S_ISDIR(st.st_mode)) &&
            !(flags & O_NONBLOCK)) {
            (void)fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK); /* cannot fail here */
        }
    }
    agent_ident_leave(&sc);
    if (fd < 0) {
        if (hpath == NULL) {
            sbx_err_oom(err);
        } else {
            agent_fs_err(err, errno, "open", path);
        }
        free(hpath);
        return -1;
    }
    fs->fh[fs->nfh].id = fs->next_fh++;
    fs->fh[fs->nfh].fd = fd;
    fs->fh[fs->nfh].path = hpath;
    fs->fh[fs->nfh].who = who;
    fs->fh[fs->nfh].lkw = NULL;
    reply_u64(c, m->id, "fh", fs->fh[fs->nfh].id);
    fs->nfh++;
    return AGENT_REPLIED;
}

int agent_fs_read(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct fs_handle *h = NULL;
    uint64_t len, off = 0;
    int r;
    ssize_t n;
    void *buf;
    msgpack_packer *pk;

    if (sbx_param_u64(m->params, "len", SBX_REQUIRED, 1, UINT64_MAX, &len, err) < 0 ||
        (r = sbx_param_u64(m->params, "offset", SBX_OPTIONAL, 0, INT64_MAX, &off, err)) < 0 ||
        (h = fh_find(c, m, err)) == NULL) {
        return -1;
    }
    buf = agent_buf_get(c->a);
    if (buf == NULL) {
        return sbx_err_oom(err);
    }
    if (len > SBX_STREAM_CHUNK_MAX) {
        len = SBX_STREAM_CHUNK_MAX;
    }
    do {
        n = r == 0 ? pread(h->fd, buf, len, (off_t)off) : read(h->fd, buf, len);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        fh_err(err, errno, "read", h);
        agent_buf_put(c->a, buf);
        return -1;
    }
    pk = agent_conn_begin(c);
    sbx_pack_response_head(pk, m->id);
    (void)msgpack_pack_map(pk, 1);
    sbx_pack_cstr(pk, "data");
    sbx_pack_bin(pk, buf, (size_t)n);
    agent_conn_send(c);
    agent_buf_put(c->a, buf);
    return AGENT_REPLIED;
}

int agent_fs_write(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct fs_handle *h;
    const uint8_t *data;
    size_t len;
    uint64_t off = 0;
    int r;
    ssize_t n;

    if (sbx_param_bin(m->params, "data", SBX_REQUIRED, SBX_FRAME_MAX, &data, &len, err) < 0 ||
        (r = sbx_param_u64(m->params, "offset", SBX_OPTIONAL, 0, INT64_MAX, &off, err)) < 0) {
        return -1;
    }
    if (len == 0) {
        sbx_err_param(err, "data", "data must not be empty");
        return -1;
    }
    h = fh_find(c, m, err);
    if (h == NULL) {
        return -1;
    }
    if (len > SBX_STREAM_CHUNK_MAX) {
        sbx_err_limit(err, "chunk_max", SBX_STREAM_CHUNK_MAX,
                      "data is longer than chunk_max (%u bytes)", SBX_STREAM_CHUNK_MAX);
        return -1;
    }
    do {
        n = r == 0 ? pwrite(h->fd, data, len, (off_t)off) : write(h->fd, data, len);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        fh_err(err, errno, "write", h);
        return -1;
    }
    reply_u64(c, m->id, "written", (uint64_t)n);
    return AGENT_REPLIED;
}

int agent_fs_seek(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct fs_handle *h;
    int64_t off;
    char whence[8] = "set";
    int wh;
    off_t pos;

    if (sbx_param_i64(m->params, "offset", SBX_REQUIRED, INT64_MIN, INT64_MAX, &off, err) < 0 ||
        sbx_param_cstr(m->params, "whence", SBX_OPTIONAL, whence, sizeof(whence), err) < 0) {
        return -1;
    }
    if (strcmp(whence, "set") == 0) {
        wh = SEEK_SET;
    } else if (strcmp(whence, "cur") == 0) {
        wh = SEEK_CUR;
    } else if (strcmp(whence, "end") == 0) {
        wh = SEEK_END;
    } else {
        sbx_err_param(err, "whence", "whence must be \"set\", \"cur\" or \"end\"");
        return -1;
    }
    h = fh_find(c, m, err);
    if (h == NULL) {
        return -1;
    }
    pos = lseek(h->fd, (off_t)off, wh);
    if (pos < 0) {
        fh_err(err, errno, "seek", h);
        return -1;
    }
    reply_u64(c, m->id, "position", (uint64_t)pos);
    return AGENT_REPLIED;
}

int agent_fs_fstat(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct fs_handle *h = fh_find(c, m, err);
    struct statx st;

    if (h == NULL) {
        return -1;
    }
    if (statx(h->fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS | STATX_BTIME, &st) < 0) {
        fh_err(err, errno, "fstat", h);
        return -1;
    }
    agent_fs_reply_fileinfo(c, m->id, &st, NULL, 0);
    return AGENT_REPLIED;
}

int agent_fs_fsync(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct fs_handle *h = NULL;
    bool data_only = false;

    if (sbx_param_bool(m->params, "data_only", SBX_OPTIONAL, &data_only, err) < 0 ||
        (h = fh_find(c, m, err)) == NULL) {
        return -1;
    }
    if ((data_only ? fdatasync(h->fd) : fsync(h->fd)) < 0) {
        fh_err(err, errno, "fsync", h);
        return -1;
    }
    agent_conn_reply_empty(c, m->id);
    return AGENT_REPLIED;
}

int agent_fs_ftruncate(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct fs_handle *h = NULL;
    uint64_t size = 0;

    if (sbx_param_u64(m->params, "size", SBX_OPTIONAL, 0, INT64_MAX, &size, err) < 0 ||
        (h = fh_find(c, m, err)) == NULL) {
        return -1;
    }
    if (ftruncate(h->fd, (off_t)size) < 0) {
        fh_err(err, errno, "ftruncate", h);
        return -1;
    }
    agent_conn_reply_empty(c, m->id);
    return AGENT_REPLIED;
}

int agent_fs_futimes(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct fs_handle *h = NULL;
    _cleanup_ident_ struct agent_ident_scope sc = { 0 };
    struct timespec ts[2];

    if (agent_fs_time_param(m->params, "atime_ns", &ts[0], err) < 0 ||
        agent_fs_time_param(m->params, "mtime_ns", &ts[1], err) < 0 ||
        (h = fh_find(c, m, err)) == NULL) {
        return -1;
    }
    /* Setting times is checked at the call (owner, or write access for "now"): as the identity
     * that opened the handle, never as the agent's root. */
    if (agent_ident_enter_err(&h->who, &sc, err) < 0) {
        return -1;
    }
    if (futimens(h->fd, ts) < 0) {
        fh_err(err, errno, "futimes", h);
        return -1;
    }
    agent_ident_leave(&sc);
    agent_conn_reply_empty(c, m->id);
    return AGENT_REPLIED;
}

/* --- fs.flock / fs.funlock ----------------------------------------------------------------- */

static void lock_wait_close_cb(uv_handle_t *t)
{
    free(t->data);
}

/* Forget @h's waiting fs.flock without answering it: stop its timer, free it once closed. */
static void lock_wait_end(struct fs_handle *h)
{
    struct fh_lock_wait *w = h->lkw;

    if (w != NULL) {
        h->lkw = NULL;
        uv_close((uv_handle_t *)&w->timer, lock_wait_close_cb);
    }
}

/* Answer @h's waiting fs.flock, if any, with CANCELLED (@why) and forget it. */
static void lock_wait_cancel(struct agent_conn *c, struct fs_handle *h, const char *why)
{
    struct sbx_err e;

    if (h->lkw == NULL) {
        return;
    }
    sbx_err_set(&e, SBX_E_CANCELLED, "flock \"%s\": %s while waiting for the lock", h->path, why);
    sbx_err_set_path(&e, h->path);
    agent_conn_reply_error(c, h->lkw->req, &e);
    lock_wait_end(h);
}

static void lock_retry_cb(uv_timer_t *t)
{
    struct fh_lock_wait *w = t->data;
    struct fs_handle *h = fh_by_id(w->fs, w->fh);
    struct agent_conn *c = w->fs->conn;
    struct sbx_err e;

    assert(h != NULL && h->lkw == w); /* closing the handle or the connection ends the wait */
    if (flock(h->fd, w->op | LOCK_NB) == 0) {
        agent_conn_reply_empty(c, w->req);
        lock_wait_end(h);
        return;
    }
    if (errno == EWOULDBLOCK || errno == EINTR) {
        w->delay_ms =
            w->delay_ms * 2 < FH_LOCK_RETRY_MAX_MS ? w->delay_ms * 2 : FH_LOCK_RETRY_MAX_MS;
        uv_timer_start(&w->timer, lock_retry_cb, w->delay_ms, 0);
        return;
    }
    fh_err(&e, errno, "flock", h);
    agent_conn_reply_error(c, w->req, &e);
    lock_wait_end(h);
}

int agent_fs_flock(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct fs_handle *h = NULL;
    struct fh_lock_wait *w;
    bool exclusive = false, wait = false;
    int op;

    if (sbx_param_bool(m->params, "exclusive", SBX_REQUIRED, &exclusive, err) < 0 ||
        sbx_param_bool(m->params, "wait", SBX_OPTIONAL, &wait, err) < 0 ||
        (h = fh_find(c, m, err)) == NULL) {
        return -1;
    }
    if (h->lkw != NULL) {
        sbx_err_set(err, SBX_E_BUSY, "flock \"%s\": another fs.flock waits on this handle",
                    h->path);
        return -1;
    }
    op = exclusive ? LOCK_EX : LOCK_SH;
    if (flock(h->fd, op | LOCK_NB) == 0) {
        agent_conn_reply_empty(c, m->id);
        return AGENT_REPLIED;
    }
    if (!wait || (errno != EWOULDBLOCK && errno != EINTR)) {
        fh_err(err, errno, "flock", h);
        return -1;
    }
    w = calloc(1, sizeof(*w));
    if (w == NULL) {
        return sbx_err_oom(err);
    }
    w->fs = c->fs;
    w->fh = h->id;
    w->req = m->id;
    w->op = op;
    w->delay_ms = FH_LOCK_RETRY_MIN_MS;
    (void)uv_timer_init(c->a->loop, &w->timer); /* cannot fail for a timer */
    w->timer.data = w;
    uv_timer_start(&w->timer, lock_retry_cb, w->delay_ms, 0);
    h->lkw = w;
    /* Answered by lock_retry_cb, or CANCELLED by fs.funlock or fs.close of the handle; dropped
     * unanswered when the connection closes. */
    return AGENT_LATER;
}

int agent_fs_funlock(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct fs_handle *h = fh_find(c, m, err);

    if (h == NULL) {
        return -1;
    }
    lock_wait_cancel(c, h, "unlocked");
    if (flock(h->fd, LOCK_UN) < 0) {
        fh_err(err, errno, "funlock", h);
        return -1;
    }
    agent_conn_reply_empty(c, m->id);
    return AGENT_REPLIED;
}

int agent_fs_close(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct fs_handle *h = fh_find(c, m, err);
    int r;

    if (h == NULL) {
        return -1;
    }
    lock_wait_cancel(c, h, "the handle was closed");
    r = close(h->fd);
    if (r < 0 && errno != EINTR) {
        fh_err(err, errno, "close", h);
    }
    free(h->path);
    *h = c->fs->fh[--c->fs->nfh];
    if (r < 0 && errno != EINTR) {
        return -1;
    }
    agent_conn_reply_empty(c, m->id);
    return AGENT_REPLIED;
}

void agent_fs_handles_close(struct agent_fs *fs)
{
    for (unsigned i = 0; i < fs->nfh; i++) {
        lock_wait_end(&fs->fh[i]); /* nobody is left to answer */
        (void)close(fs->fh[i].fd); /* the client is gone: nobody to tell about a close error */
        free(fs->fh[i].path);
    }
    free(fs->fh);
}
