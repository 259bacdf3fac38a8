/*
 * File transfers (PROTOCOL.md 18.1, 18.2): an upload is an `in` stream written to a file without
 * a name (O_TMPFILE) in its destination's directory, or where the file system cannot, to a
 * private temporary file there, and linked or renamed into place once complete and verified; a
 * download is an `out` stream read from a file. Writes and reads run in libuv's threadpool, one
 * request at a time per transfer, so the loop only copies frames; the bytes held per upload are
 * bounded by the credit granted, which is granted back only once they are written. Every file
 * access of a transfer is made as the request's identity (§17.1): the loop thread switches to it
 * around the calls (the threadpool only reads and writes fds already open).
 */
#include "transfer.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"
#include "conn.h"
#include "fs.h"
#include "path.h"
#include "sbx/schema.h"
#include "stream.h"

#include <nettle/sha2.h>

/* --- jobs and shared helpers ------------------------------------------------------------- */

void agent_reply_stream(struct agent_conn *c, uint32_t id, uint32_t sid)
{
    struct sbx_stream_result res = { .stream = sid };
    msgpack_packer *pk = agent_conn_begin(c);

    sbx_pack_response_head(pk, id);
    sbx_stream_result_pack(pk, &res);
    agent_conn_send(c);
}

void agent_transfer_done_err(struct agent_conn *c, uint32_t sid, const struct sbx_err *e)
{
    struct sbx_transfer_done d = { .stream = sid };

    if (c == NULL || c->closing) {
        return;
    }
    sbx_transfer_done_pack(agent_conn_begin(c), &d, e);
    agent_conn_send(c);
}

/* Split the upload destination @path into its directory and file name: the name must be a real
 * one, so a path ending in '/', "." or ".." names a directory (EISDIR). */
static int upload_split(const char *path, char *dir, size_t dirsz, char *name, size_t namesz,
                        struct sbx_err *err)
{
    size_t n = strlen(path);
    int r =
        n > 0 && path[n - 1] == '/' ? -EINVAL : agent_path_split(path, dir, dirsz, name, namesz);

    if (r == -EINVAL || (r == 0 && (strcmp(name, ".") == 0 || strcmp(name, "..") == 0))) {
        r = -EISDIR;
    }
    if (r < 0) {
        sbx_err_sys(err, -r, NULL, "upload to \"%s\"", path);
        return -1;
    }
    return 0;
}

/* --- upload ------------------------------------------------------------------------------ */

struct chunk {
    struct chunk *next;
    struct agent_slab *slab; /* the held frame buffer the payload lies in, or NULL... */
    struct agent_tail copy;  /* ...and then a copy (small payloads gathered) */
    const uint8_t *buf;
    uint32_t len;
};

struct upload {
    struct agent_conn_ref job;
    struct agent *a;
    struct agent_stream *s; /* NULL once ended, cancelled or gone */
    uint32_t sid;
    int dirfd, fd;
    int pin; /* O_PATH on the new file (through /proc/self/fd): links it, keeps its inode; or -1 */
    struct agent_ident who; /* whom every file access of the upload is made as */
    char dir[SBX_PATH_MAX + 1];
    char name[NAME_MAX + 1];
    char tmp[NAME_MAX + 1]; /* the temporary name while it has one, else "" */
    mode_t mode;
    uid_t uid;
    gid_t gid;
    bool chown;
    bool overwrite, fsync, has_size, has_sha;
    bool hash; /* compute the SHA-256 (reported in transfer.done); false: size only */
    uint64_t size;
    char sha_want[65];
    uint64_t received;
    struct sha256_ctx sha;
    /* arrived, not yet handed to the threadpool */
    struct chunk *head, **tail;
    struct chunk *last; /* of those, the last one (NULL: none) */
    /* being written by the threadpool */
    struct chunk *work_list;
    uv_work_t work, hash_work; /* the batch is written and hashed at once, on two workers */
    unsigned working;          /* of those two, still running */
    int werr;                  /* errno of a failed write (set by the worker) */
    bool ended;                /* the client ended the stream without error */
    bool over;                 /* done or failed: waiting only for the worker to return */
};

static void chunks_free(struct agent *a, struct chunk *c)
{
    while (c != NULL) {
        struct chunk *n = c->next;
        if (c->slab != NULL) {
            agent_slab_release(a, c->slab);
        }
        agent_tail_free(&c->copy);
        free(c);
        c = n;
    }
}

/* Remove the temporary name, if the upload has one now, as the upload's identity. */
static void upload_unlink_tmp(struct upload *u)
{
    struct agent_ident_scope sc = { 0 };

    if (u->tmp[0] == '\0' || u->dirfd < 0) {
        return;
    }
    if (agent_ident_enter(&u->who, &sc) == 0) {
        (void)unlinkat(u->dirfd, u->tmp, 0); /* best effort: nothing may be left behind */
        agent_ident_leave(&sc);
    }
    u->tmp[0] = '\0';
}

static void upload_destroy(struct upload *u)
{
    if (u->fd >= 0) {
        close(u->fd);
    }
    if (u->pin >= 0) {
        close(u->pin);
    }
    upload_unlink_tmp(u);
    if (u->dirfd >= 0) {
        close(u->dirfd);
    }
    chunks_free(u->a, u->head);
    agent_conn_ref_del(&u->job);
    free(u);
}

/* Stop: tell the client (stream.cancel if the stream is open, then transfer.done with @e), and
 * free now or when the worker returns. */
static void upload_fail(struct upload *u, const struct sbx_err *e)
{
    if (u->over) {
        return;
    }
    u->over = true;
    /* Nothing is left behind, and that is already so when the client hears of the failure. */
    upload_unlink_tmp(u);
    if (u->s != NULL) {
        struct agent_stream *s = u->s;
        u->s = NULL;
        s->owner = NULL;
        agent_stream_cancel(s, e);
    }
    agent_transfer_done_err(u->job.conn, u->sid, e);
    if (!u->working) {
        upload_destroy(u);
    }
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            return errno;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void upload_work_cb(uv_work_t *req)
{
    struct upload *u = agent_container_of(req, struct upload, work);

    for (struct chunk *c = u->work_list; c != NULL && u->werr == 0; c = c->next) {
        u->werr = write_all(u->fd, c->buf, c->len);
    }
}

/* Beside the write: hashing costs more CPU than the write itself, so the two overlap. Both only
 * read the batch's buffers; the loop frees them once both are done. */
static void upload_hash_cb(uv_work_t *req)
{
    struct upload *u = agent_container_of(req, struct upload, hash_work);

    for (struct chunk *c = u->work_list; c != NULL; c = c->next) {
        sha256_update(&u->sha, c->len, c->buf);
    }
}

static void upload_finish(struct upload *u);
static void upload_after_cb(uv_work_t *req, int status);

static void upload_kick(struct upload *u)
{
    if (u->working || u->head == NULL || u->over) {
        return;
    }
    u->work_list = u->head;
    u->head = u->last = NULL;
    u->tail = &u->head;
    /* uv_queue_work cannot fail for a valid loop and callbacks */
    u->working = 1;
    u->work.data = u->hash_work.data = u;
    (void)uv_queue_work(u->a->loop, &u->work, upload_work_cb, upload_after_cb);
    if (u->hash) {
        u->working++;
        (void)uv_queue_work(u->a->loop, &u->hash_work, upload_hash_cb, upload_after_cb);
    }
}

static int set_err_path(struct sbx_err *err, int e, const struct upload *u, const char *what)
{
    char p[SBX_PATH_MAX + NAME_MAX + 2];

    snprintf(p, sizeof(p), "%s%s%s", u->dir, strcmp(u->dir, "/") == 0 ? "" : "/", u->name);
    sbx_err_sys(err, e, NULL, "%s \"%s\"", what, p);
    sbx_err_set_path(err, p);
    return -1;
}

static void upload_after_cb(uv_work_t *req, int status)
{
    struct upload *u = req->data;
    uint32_t n = 0;
    struct sbx_err err;

    if (--u->working > 0) {
        return; /* the other half of the batch is still running */
    }
    for (struct chunk *c = u->work_list; c != NULL; c = c->next) {
        n += c->len;
    }
    chunks_free(u->a, u->work_list);
    u->work_list = NULL;
    if (u->over) {
        upload_destroy(u);
        return;
    }
    if (u->werr != 0) {
        set_err_path(&err, u->werr, u, "write");
        upload_fail(u, &err);
        return;
    }
    if (u->s != NULL) {
        agent_stream_consumed(u->s, n, u->head == NULL);
    }
    if (u->head != NULL) {
        upload_kick(u);
    } else if (u->ended) {
        upload_finish(u);
    }
}

/* A new temporary name in the destination's directory for the upload's file: ".<name>.sbx-<8
 * hex digits>", made by @make (O_EXCL creation or a link of the file), tried again while taken.
 * 0, or -1 with errno (u->tmp empty then). As the upload's identity. */
static int tmp_name(struct upload *u, int (*make)(struct upload *u))
{
    for (int tries = 0;; tries++) {
        uint32_t r;
        if (getrandom(&r, sizeof(r), 0) != sizeof(r)) {
            r = (uint32_t)agent_now_ns();
        }
        snprintf(u->tmp, sizeof(u->tmp), ".%.200s.sbx-%08x", u->name, r);
        if (make(u) == 0) {
            return 0;
        }
        if (errno != EEXIST || tries > 8) {
            int e = errno;
            u->tmp[0] = '\0';
            errno = e;
            return -1;
        }
    }
}

/* The private file (mode 0600) for a file system without O_TMPFILE, at u->tmp. */
static int tmp_create(struct upload *u)
{
    u->fd = openat(u->dirfd, u->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    return u->fd < 0 ? -1 : 0;
}

/* The magic link of fd @fd: reaches that very inode, whatever names it (or none). */
static void fd_link(char *buf, size_t n, int fd)
{
    (void)snprintf(buf, n, "/proc/self/fd/%d", fd);
}

/* A name for the nameless file (u->pin) at u->tmp. */
static int tmp_link(struct upload *u)
{
    char proc[40];

    fd_link(proc, sizeof(proc), u->pin);
    return linkat(AT_FDCWD, proc, u->dirfd, u->tmp, AT_SYMLINK_FOLLOW);
}

/*
 * The file the bytes go to, as the upload's identity (so it is that user's, and only where that
 * user may create files): a nameless one (O_TMPFILE: nobody can open, replace or write it before
 * it is linked in) or, where the file system has none, a private temporary file. u->pin then
 * holds the inode through an O_PATH descriptor until the end (-1 without /proc). 0, or -1 with
 * @err.
 */
static int upload_open(struct upload *u, const char *path, struct sbx_err *err)
{
    char proc[40];

    u->fd = openat(u->dirfd, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);
    if (u->fd >= 0) {
        fd_link(proc, sizeof(proc), u->fd);
        u->pin = open(proc, O_PATH | O_CLOEXEC);
        if (u->pin >= 0) {
            return 0;
        }
        /* No /proc: a nameless file could never be linked in as a user. */
        (void)close(u->fd);
        u->fd = -1;
    } else if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL && errno != ENOENT) {
        sbx_err_sys(err, errno, NULL, "create the file for \"%s\"", path);
        sbx_err_set_path(err, path);
        return -1;
    }
    if (tmp_name(u, tmp_create) < 0) {
        sbx_err_sys(err, errno, NULL, "create a temporary file in \"%s\"", u->dir);
        sbx_err_set_path(err, path);
        return -1;
    }
    fd_link(proc, sizeof(proc), u->fd);
    u->pin = open(proc, O_PATH | O_CLOEXEC); /* -1 without /proc: checked by dev and ino then */
    return 0;
}

/* Put the finished file at u->name, as the upload's identity: link the nameless one in (a free
 * name), else give it a temporary name and rename that over the old file (or without
 * overwrite, refuse to replace). 0, or -1 with errno. */
static int upload_place(struct upload *u)
{
    char proc[40];
    int e;

    if (u->tmp[0] == '\0') {
        fd_link(proc, sizeof(proc), u->pin);
        if (linkat(AT_FDCWD, proc, u->dirfd, u->name, AT_SYMLINK_FOLLOW) == 0) {
            return 0;
        }
        if (errno != EEXIST || !u->overwrite) {
            return -1;
        }
        if (tmp_name(u, tmp_link) < 0) {
            return -1;
        }
    }
    if (u->overwrite ? renameat(u->dirfd, u->tmp, u->dirfd, u->name)
                     : renameat2(u->dirfd, u->tmp, u->dirfd, u->name, RENAME_NOREPLACE)) {
        e = errno;
        /* A file system without RENAME_NOREPLACE: link(2) refuses to replace too. */
        if (!u->overwrite && e == EINVAL) {
            e = linkat(u->dirfd, u->tmp, u->dirfd, u->name, 0) == 0 ? 0 : errno;
        }
        if (e != 0) {
            errno = e;
            return -1;
        }
        (void)unlinkat(u->dirfd, u->tmp, 0); /* the linked temporary name */
    }
    u->tmp[0] = '\0';
    return 0;
}

/* Whether the path the client named is now the file the upload wrote (@st: its fstat), looked
 * up again from the start as the upload's identity: a directory or file swapped meanwhile by
 * whoever may write there shows as another inode. */
static bool upload_is_there(struct upload *u, const struct stat *st)
{
    char p[SBX_PATH_MAX + NAME_MAX + 2];
    struct stat now;

    snprintf(p, sizeof(p), "%s%s%s", u->dir, strcmp(u->dir, "/") == 0 ? "" : "/", u->name);
    return fstatat(AT_FDCWD, p, &now, AT_SYMLINK_NOFOLLOW) == 0 && now.st_dev == st->st_dev &&
           now.st_ino == st->st_ino;
}

/* Apply owner and mode, sync, close and put the file in place, as the upload's identity. 0, or -1
 * with @err. */
static int upload_commit(struct upload *u, struct sbx_err *err)
{
    _cleanup_ident_ struct agent_ident_scope sc = { 0 };
    struct stat st;

    if (agent_ident_enter(&u->who, &sc) < 0) {
        return set_err_path(err, errno, u, "act as the upload's user for");
    }
    /* Owner first: chown clears set-id bits that fchmod then sets. */
    if (u->chown && fchown(u->fd, u->uid, u->gid) < 0) {
        return set_err_path(err, errno, u, "chown");
    }
    if (fchmod(u->fd, u->mode) < 0) {
        return set_err_path(err, errno, u, "chmod");
    }
    if (u->fsync && fsync(u->fd) < 0) {
        return set_err_path(err, errno, u, "fsync");
    }
    if (fstat(u->fd, &st) < 0) {
        return set_err_path(err, errno, u, "fstat");
    }
    if (close(u->fd) < 0) {
        u->fd = -1;
        return set_err_path(err, errno, u, "close");
    }
    u->fd = -1;
    if (upload_place(u) < 0) {
        return set_err_path(err, errno, u, "rename onto");
    }
    /* transfer.done vouches for what is at the path: had anyone swapped the directory or the
     * file (the temporary name or the final one) on the way, it is not ours. */
    if (!upload_is_there(u, &st)) {
        set_err_path(err, ESTALE, u, "upload to");
        (void)snprintf(err->msg + strlen(err->msg), sizeof(err->msg) - strlen(err->msg),
                       " (replaced during the upload: not the uploaded file)");
        return -1;
    }
    if (u->fsync) {
        (void)fsync(u->dirfd); /* the rename is durable; a failure here changes nothing */
    }
    return 0;
}

/* Everything arrived and is written: verify, apply metadata, put in place, report. */
static void upload_finish(struct upload *u)
{
    struct sbx_err err;
    uint8_t d[32];
    char hex[65];

    sha256_digest(&u->sha, sizeof(d), d);
    sbx_hex(d, sizeof(d), hex);
    if (u->has_size && u->received != u->size) {
        sbx_err_param(&err, "size", "received %llu bytes, expected %llu",
                      (unsigned long long)u->received, (unsigned long long)u->size);
        upload_fail(u, &err);
        return;
    }
    if (u->has_sha && strcmp(hex, u->sha_want) != 0) {
        sbx_err_param(&err, "sha256", "the data's sha256 is %s, expected %s", hex, u->sha_want);
        upload_fail(u, &err);
        return;
    }
    if (upload_commit(u, &err) < 0) {
        upload_fail(u, &err);
        return;
    }
    u->over = true;
    if (u->job.conn != NULL && !u->job.conn->closing) {
        struct sbx_transfer_done done = { .stream = u->sid, .has_size = true, .size = u->received };
        if (u->hash) {
            memcpy(done.sha256, hex, sizeof(done.sha256));
        }
        sbx_transfer_done_pack(agent_conn_begin(u->job.conn), &done, NULL);
        agent_conn_send(u->job.conn);
    }
    upload_destroy(u);
}

static void upload_data(struct agent_stream *s, const uint8_t *data, uint32_t len)
{
    struct upload *u = s->owner;
    struct sbx_err err;
    struct chunk *c;

    if (u == NULL || u->over || len == 0) {
        return;
    }
    u->received += len;
    if (u->has_size && u->received > u->size) {
        sbx_err_param(&err, "size", "more than the expected %llu bytes arrived",
                      (unsigned long long)u->size);
        upload_fail(u, &err);
        return;
    }
    /* Held where it was read, not copied (bounded by credit, like stdin); small pieces copied,
     * into the last copied chunk still waiting while it stays under AGENT_HOLD_MIN: a chunk per
     * frame would cost ~100 bytes for a one-byte frame (as for stdin). */
    c = u->last;
    if (len < AGENT_HOLD_MIN && c != NULL && c->copy.buf != NULL &&
        c->len + len <= AGENT_HOLD_MIN) {
        if (agent_tail_add(&c->copy, data, len) < 0) {
            sbx_err_oom(&err);
            upload_fail(u, &err);
            return;
        }
        c->buf = c->copy.buf;
        c->len = c->copy.len;
        upload_kick(u); /* a batch is being written: this goes with the next */
        return;
    }
    c = calloc(1, sizeof(*c));
    if (c != NULL && (c->slab = agent_conn_hold(s->conn, data, len)) == NULL &&
        agent_tail_add(&c->copy, data, len) < 0) {
        free(c);
        c = NULL;
    }
    if (c == NULL) {
        sbx_err_oom(&err);
        upload_fail(u, &err);
        return;
    }
    c->buf = c->copy.buf != NULL ? c->copy.buf : data;
    c->len = len;
    c->next = NULL;
    *u->tail = c;
    u->tail = &c->next;
    u->last = c;
    upload_kick(u);
}

static void upload_end(struct agent_stream *s, const struct sbx_err *e)
{
    struct upload *u = s->owner;
    struct sbx_err err;

    if (u == NULL) {
        return;
    }
    u->s = NULL;
    if (e != NULL) {
        sbx_err_set(&err, SBX_E_CANCELLED, "the client ended the upload with an error: %s", e->msg);
        upload_fail(u, &err);
        return;
    }
    u->ended = true;
    if (!u->working && u->head == NULL) {
        upload_finish(u);
    }
}

static void upload_gone(struct agent_stream *s, bool cancelled)
{
    struct upload *u = s->owner;
    struct sbx_err err;

    if (u == NULL) {
        return;
    }
    u->s = NULL;
    if (!cancelled) {
        u->job.conn = NULL; /* the connection is closing: nothing more is sent */
    }
    sbx_err_set(&err, SBX_E_CANCELLED, "the upload stream was cancelled");
    upload_fail(u, &err);
}

static void upload_conn_gone(struct agent_conn_ref *j)
{
    struct upload *u = agent_container_of(j, struct upload, job);
    struct sbx_err err;

    if (u->s != NULL) {
        return; /* the stream's gone callback follows and does the rest */
    }
    sbx_err_set(&err, SBX_E_CANCELLED, "connection closed");
    upload_fail(u, &err); /* sends nothing: job.conn is NULL */
}

static const struct agent_stream_ops upload_ops = {
    .data = upload_data,
    .end = upload_end,
    .gone = upload_gone,
};

/* Parse and check a transfer.upload request into @u (fds still closed). */
static int upload_params(struct upload *u, const msgpack_object *p, char *path, struct sbx_err *err)
{
    uint64_t v;
    int rc;

    if (agent_fs_path_param(p, "path", SBX_REQUIRED, path, err) < 0) {
        return -1;
    }
    u->mode = 0644;
    u->overwrite = true;
    rc = sbx_param_u64(p, "mode", SBX_OPTIONAL, 0, 07777, &v, err);
    if (rc < 0) {
        return -1;
    }
    bool has_mode = rc == 0;
    if (has_mode) {
        u->mode = (mode_t)v;
    }
    /* Without uid and gid the file is the acting user's: it makes the file. */
    rc = sbx_param_u64(p, "uid", SBX_OPTIONAL, 0, UINT32_MAX, &v, err);
    if (rc < 0) {
        return -1;
    }
    u->uid = rc == 0 ? (uid_t)v : (uid_t)-1;
    rc = sbx_param_u64(p, "gid", SBX_OPTIONAL, 0, UINT32_MAX, &v, err);
    if (rc < 0) {
        return -1;
    }
    u->gid = rc == 0 ? (gid_t)v : (gid_t)-1;
    u->chown = u->uid != (uid_t)-1 || u->gid != (gid_t)-1;
    if (sbx_param_bool(p, "overwrite", SBX_OPTIONAL, &u->overwrite, err) < 0 ||
        sbx_param_bool(p, "fsync", SBX_OPTIONAL, &u->fsync, err) < 0) {
        return -1;
    }
    rc = sbx_param_u64(p, "size", SBX_OPTIONAL, 0, UINT64_MAX, &u->size, err);
    if (rc < 0) {
        return -1;
    }
    u->has_size = rc == 0;
    rc = agent_sha256_param(p, u->sha_want, err);
    if (rc < 0) {
        return -1;
    }
    u->has_sha = rc == 0;
    u->hash = true;
    if (sbx_param_bool(p, "hash", SBX_OPTIONAL, &u->hash, err) < 0) {
        return -1;
    }
    if (u->has_sha && !u->hash) {
        return sbx_err_param(err, "hash", "an expected sha256 needs hash: true");
    }
    return has_mode ? 1 : 0;
}

/*
 * What the upload is to replace, @st (lstat'd), and what that means: a directory is EISDIR, any
 * file with overwrite false EEXIST. Without `mode` a regular file's permission bits carry over,
 * but never beyond 0o755: no set-id or sticky bit, no write for group or others, whoever chose
 * them (PROTOCOL.md §18.1). Its owner does not: the new file is the acting user's. 0, or -1 with
 * @err.
 */
static int upload_replaces(struct upload *u, const struct stat *st, bool has_mode, const char *path,
                           struct sbx_err *err)
{
    if (S_ISDIR(st->st_mode) || !u->overwrite) {
        sbx_err_sys(err, S_ISDIR(st->st_mode) ? EISDIR : EEXIST, NULL, "upload to \"%s\"", path);
        sbx_err_set_path(err, path);
        return -1;
    }
    if (S_ISREG(st->st_mode) && !has_mode) {
        u->mode = st->st_mode & 0755;
    }
    return 0;
}

int agent_transfer_upload(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    _cleanup_ident_ struct agent_ident_scope sc = { 0 };
    char path[SBX_PATH_MAX + 1];
    struct upload *u;
    struct stat st;
    bool parents = false;
    int has_mode;

    u = calloc(1, sizeof(*u));
    if (u == NULL) {
        return sbx_err_oom(err);
    }
    u->a = c->a;
    u->dirfd = u->fd = u->pin = -1;
    u->tail = &u->head;
    agent_conn_ref_add(c, &u->job, upload_conn_gone);
    has_mode = upload_params(u, m->params, path, err);
    if (has_mode < 0 || sbx_param_bool(m->params, "parents", SBX_OPTIONAL, &parents, err) < 0 ||
        agent_ident_param(c->a, m->params, &u->who, err) < 0 ||
        upload_split(path, u->dir, sizeof(u->dir), u->name, sizeof(u->name), err) < 0 ||
        agent_stream_reserve(c, 1, err) < 0) { /* the cap before the disk (PROTOCOL.md §7.2) */
        goto fail;
    }
    if (agent_ident_enter_err(&u->who, &sc, err) < 0) {
        goto fail;
    }
    u->dirfd = agent_path_opendir(u->dir, parents, err);
    if (u->dirfd < 0) {
        goto fail;
    }
    if (fstatat(u->dirfd, u->name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
        if (upload_replaces(u, &st, has_mode == 1, path, err) < 0) {
            goto fail;
        }
    } else if (errno != ENOENT) {
        sbx_err_sys(err, errno, NULL, "stat \"%s\"", path);
        goto fail;
    }
    if (upload_open(u, path, err) < 0) {
        goto fail;
    }
    agent_ident_leave(&sc);
    sha256_init(&u->sha);
    u->s = agent_stream_new_ops(c, AGENT_STREAM_IN, &upload_ops, u, err);
    if (u->s == NULL) {
        goto fail;
    }
    u->sid = u->s->id;
    agent_reply_stream(c, m->id, u->sid);
    /* More than the protocol's window in flight: a file upload is one long stream whose
     * throughput is set by how much the client may send ahead of the disk writes. */
    agent_stream_consumed(u->s, SBX_UPLOAD_EXTRA_CREDIT, true);
    return AGENT_REPLIED;
fail:
    agent_ident_leave(&sc);
    upload_destroy(u);
    return -1;
}

/* --- download ---------------------------------------------------------------------------- */

/* A download reads up to this many chunks per threadpool trip (one preadv), sent as frames. */
#define DL_BUFS 4

struct download {
    struct agent *a;
    struct agent_stream *s; /* NULL once gone */
    int fd;                 /* a regular file's (agent_path_open_file_at) */
    uint64_t offset;
    uint64_t left; /* bytes still to send */
    uv_fs_t req;
    void *buf[DL_BUFS]; /* pool buffers of the read in flight */
    uint32_t len[DL_BUFS];
    unsigned nbuf;
    bool reading;
    char path[SBX_PATH_MAX + 1];
};

static void download_free(struct download *d)
{
    for (unsigned i = 0; i < d->nbuf; i++) {
        agent_buf_put(d->a, d->buf[i]);
    }
    d->nbuf = 0;
    if (d->fd >= 0) {
        (void)close(d->fd); /* read-only: nothing to lose */
    }
    free(d);
}

/* End the stream (with @e, or cleanly) and free @d. */
static void download_end(struct download *d, const struct sbx_err *e)
{
    struct agent_stream *s = d->s;

    d->s = NULL;
    agent_stream_end(s, e, false);
    download_free(d);
}

static void download_read_cb(uv_fs_t *req);

static void download_ready(struct agent_stream *s)
{
    struct download *d = s->owner;
    uint64_t n = agent_stream_writable(s);
    uv_buf_t b[DL_BUFS];
    struct sbx_err err;
    int rc;

    if (d == NULL || d->reading || n == 0) {
        return;
    }
    if (d->left == 0) {
        download_end(d, NULL);
        return;
    }
    if (n > d->left) {
        n = d->left;
    }
    /* As many whole chunks as credit allows (at least one, possibly short), one read for all,
     * but no more than the agent-wide output buffer cap leaves: process output on other
     * connections stops at that cap. */
    unsigned most =
        d->a->bufs_used + 1 < SBX_AGENT_BUFS_MAX ? SBX_AGENT_BUFS_MAX - d->a->bufs_used : 1;
    if (most > DL_BUFS) {
        most = DL_BUFS;
    }
    while (n > 0 && d->nbuf < most) {
        uint32_t k = n > SBX_STREAM_CHUNK_MAX ? SBX_STREAM_CHUNK_MAX : (uint32_t)n;
        void *buf = agent_buf_get(d->a);
        if (buf == NULL) {
            break;
        }
        d->buf[d->nbuf] = buf;
        d->len[d->nbuf] = k;
        b[d->nbuf] = uv_buf_init(buf, k);
        d->nbuf++;
        n -= k;
    }
    if (d->nbuf == 0) {
        sbx_err_oom(&err);
        download_end(d, &err);
        return;
    }
    d->reading = true;
    rc = uv_fs_read(d->a->loop, &d->req, d->fd, b, d->nbuf, (int64_t)d->offset, download_read_cb);
    if (rc != 0) {
        d->reading = false;
        sbx_err_set(&err, SBX_E_INTERNAL, "cannot queue a read");
        download_end(d, &err);
    }
}

static void download_read_cb(uv_fs_t *req)
{
    struct download *d = agent_container_of(req, struct download, req);
    ssize_t n = req->result;
    struct agent_stream *s = d->s;
    struct sbx_err err;
    unsigned i;

    uv_fs_req_cleanup(req);
    d->reading = false;
    if (s == NULL) { /* cancelled while reading */
        download_free(d);
        return;
    }
    if (n <= 0) {
        if (n < 0) {
            sbx_err_sys(&err, (int)-n, "read", "read \"%s\"", d->path);
            sbx_err_set_path(&err, d->path);
        }
        download_end(d, n < 0 ? &err : NULL);
        return;
    }
    d->offset += (uint64_t)n;
    d->left -= (uint64_t)n;
    /* The bytes fill the buffers in order; send the filled ones, return the rest. */
    for (i = 0; i < d->nbuf; i++) {
        uint32_t k = (uint64_t)n < d->len[i] ? (uint32_t)n : d->len[i];
        if (k == 0) {
            agent_buf_put(d->a, d->buf[i]);
            continue;
        }
        agent_stream_send(s, d->buf[i], k);
        n -= k;
    }
    d->nbuf = 0;
    download_ready(s);
}

static void download_gone(struct agent_stream *s, bool cancelled)
{
    struct download *d = s->owner;

    if (d == NULL) {
        return;
    }
    d->s = NULL;
    if (!d->reading) {
        download_free(d);
    } else {
        /* A read still queued behind busy workers is dropped now (its callback then sees
         * UV_ECANCELED and frees us); one already running is a regular file's: it returns. */
        (void)uv_cancel((uv_req_t *)&d->req);
    }
}

static const struct agent_stream_ops download_ops = {
    .ready = download_ready,
    .gone = download_gone,
};

int agent_transfer_download(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct download *d = calloc(1, sizeof(*d));
    _cleanup_ident_ struct agent_ident_scope sc = { 0 };
    struct agent_ident who;
    struct stat st;
    uint64_t length = UINT64_MAX;
    msgpack_packer *pk;

    if (d == NULL) {
        return sbx_err_oom(err);
    }
    d->a = c->a;
    d->fd = -1;
    if (agent_fs_path_param(m->params, "path", SBX_REQUIRED, d->path, err) < 0 ||
        sbx_param_u64(m->params, "offset", SBX_OPTIONAL, 0, INT64_MAX, &d->offset, err) < 0 ||
        sbx_param_u64(m->params, "length", SBX_OPTIONAL, 0, UINT64_MAX, &length, err) < 0 ||
        agent_ident_param(c->a, m->params, &who, err) < 0 ||
        agent_stream_reserve(c, 1, err) < 0) { /* the cap before the disk (PROTOCOL.md §7.2) */
        goto fail;
    }
    /* A regular file only (the path followed, §17.1): a FIFO, socket or device is refused
     * without being opened, so no read of one can hold a threadpool worker (a FIFO whose writer
     * the workload keeps open would hold it for good, and with it every upload and copy). */
    if (agent_ident_enter_err(&who, &sc, err) < 0) {
        goto fail;
    }
    d->fd = agent_path_open_file_at(AT_FDCWD, d->path, true, &st);
    agent_ident_leave(&sc); /* reads of the open file are not checked again */
    if (d->fd < 0) {
        agent_fs_err_file(err, errno, st.st_mode, "download", d->path);
        goto fail;
    }
    d->left = length;
    d->s = agent_stream_new_ops(c, AGENT_STREAM_OUT, &download_ops, d, err);
    if (d->s == NULL) {
        goto fail;
    }
    {
        struct sbx_stream_result res = {
            .stream = d->s->id,
            .has_size = true,
            .size = (uint64_t)st.st_size,
            .mode = st.st_mode,
        };
        pk = agent_conn_begin(c);
        sbx_pack_response_head(pk, m->id);
        sbx_stream_result_pack(pk, &res);
    }
    agent_conn_send(c);
    download_ready(d->s);
    return AGENT_REPLIED;
fail:
    download_free(d);
    return -1;
}
