/*
 * transfer.upload_tree (PROTOCOL.md 18.3): a tar stream extracted under a directory by a thread
 * of its own, which libarchive's pulling reader needs; the loop grants credit only as the thread
 * consumes the chunks it queued. Every path component is walked with O_NOFOLLOW from the
 * destination, so no entry can be written through a symlink, and absolute names and `..` are
 * refused. The thread extracts as the request's identity (PROTOCOL.md §17.1): what it makes is
 * that user's, and only where that user may make it.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conn.h"
#include "fs.h"
#include "outjob.h"
#include "path.h"
#include "sbx/schema.h"
#include "stream.h"
#include "transfer.h"

struct in_chunk {
    struct in_chunk *next;
    uint32_t len, cap;
    uint8_t data[];
};

/* A chunk made for a small frame has room for the small frames after it. */
#define UP_SMALL_CAP (16u << 10)

/* Chunks the thread is done with are kept for the next data frames (up to this many), so a
 * stream of full frames reuses the same few buffers instead of faulting in fresh memory. */
#define UP_SPARE_MAX 4

struct dir_fix {
    char *name;
    mode_t mode;
    struct timespec mtime;
    unsigned depth; /* components of name, "." ones not counted */
    size_t seq;     /* the entry's place among the directories */
};

struct tree_up {
    struct agent_conn_ref job;
    struct agent *a;
    struct agent_stream *s; /* NULL once ended, cancelled or gone */
    uint32_t sid;
    char root[AGENT_FS_PATH_BUF];
    enum agent_compress comp;
    bool preserve_owner;
    struct agent_ident who; /* whom the tree is extracted as */
    int rootfd;
    /* loop <-> thread */
    uv_thread_t thread;
    uv_mutex_t mu;
    uv_cond_t cv;
    uv_async_t async;
    struct in_chunk *head, **tail, *cur;
    struct in_chunk *spare; /* done with, kept for reuse */
    unsigned nspare;
    bool eof, abort, finished, closing, client_error;
    uint64_t consumed; /* bytes the thread is done with, not yet granted */
    /* thread */
    struct sha256_ctx sha;
    uint64_t received;
    uint64_t files;
    int umask; /* the process's, or -1 if unknown */
    int rc;
    struct sbx_err err;
    struct dir_fix *dirs;
    size_t ndirs, capdirs;
    char cached_dir[AGENT_FS_PATH_BUF]; /* parent directory of the last entry, and its fd */
    int cached_fd;
};

static la_ssize_t up_read_cb(struct archive *ar, void *arg, const void **buf)
{
    struct tree_up *t = arg;
    struct in_chunk *c;

    uv_mutex_lock(&t->mu);
    if (t->cur != NULL) {
        t->consumed += t->cur->len;
        if (t->nspare < UP_SPARE_MAX) {
            t->cur->next = t->spare;
            t->spare = t->cur;
            t->nspare++;
        } else {
            free(t->cur);
        }
        t->cur = NULL;
        uv_async_send(&t->async);
    }
    while (t->head == NULL && !t->eof && !t->abort) {
        uv_cond_wait(&t->cv, &t->mu);
    }
    if (t->abort) {
        uv_mutex_unlock(&t->mu);
        if (ar != NULL) {
            archive_set_error(ar, ECANCELED, "cancelled");
        }
        return -1;
    }
    c = t->head;
    if (c == NULL) {
        uv_mutex_unlock(&t->mu);
        return 0;
    }
    t->head = c->next;
    if (t->head == NULL) {
        t->tail = &t->head;
    }
    t->cur = c;
    uv_mutex_unlock(&t->mu);
    sha256_update(&t->sha, c->len, c->data);
    t->received += c->len;
    *buf = c->data;
    return (la_ssize_t)c->len;
}

static int up_refuse(struct tree_up *t, const char *name, const char *why)
{
    sbx_err_param(&t->err, "stream", "refused archive entry \"%.200s\": %s", name, why);
    sbx_err_set_path(&t->err, name);
    return -1;
}

static int up_sys(struct tree_up *t, int e, const char *what, const char *name)
{
    sbx_err_sys(&t->err, e, NULL, "%s \"%.200s\"", what, name);
    sbx_err_set_path(&t->err, name);
    return -1;
}

/* Check an entry name with agent_path_clean_rel. Returns the cleaned name (inside @buf; "" for
 * the root itself), or NULL after setting the error. */
static const char *up_clean_name(struct tree_up *t, const char *name, char *buf, size_t bufsz)
{
    const char *why = NULL;

    if (agent_path_clean_rel(name, buf, bufsz, &why) == NULL) {
        up_refuse(t, name != NULL ? name : "", why);
        return NULL;
    }
    return buf;
}

/*
 * Open the parent directory of @name (cleaned, relative) without following any symlink,
 * creating missing directories with @create (agent_path_opendir_under). Returns an fd owned by
 * the cache (do not close), with *@base pointing at the last component; -1 with the error set.
 */
static int up_parent(struct tree_up *t, const char *name, const char **base, bool create)
{
    const char *slash = strrchr(name, '/');
    size_t len = slash != NULL ? (size_t)(slash - name) : 0;
    const char *op = NULL;
    int fd;

    if (slash == NULL) {
        *base = name;
        return t->rootfd;
    }
    *base = slash + 1;
    if (t->cached_fd >= 0 && strlen(t->cached_dir) == len &&
        memcmp(t->cached_dir, name, len) == 0) {
        return t->cached_fd;
    }
    fd = agent_path_opendir_under(t->rootfd, name, len, create, &op);
    if (fd < 0) {
        if (errno == ELOOP) {
            return up_refuse(t, name, "a parent directory is a symlink");
        }
        return up_sys(t, errno, op, name);
    }
    if (t->cached_fd >= 0) {
        close(t->cached_fd);
    }
    t->cached_fd = fd;
    memcpy(t->cached_dir, name, len);
    t->cached_dir[len] = '\0';
    return fd;
}

/* Remove what is at @base in @dfd unless it is a directory (replaced entries are new files, so
 * other hard links to the old one are untouched). */
static int up_clear(struct tree_up *t, int dfd, const char *base, const char *name)
{
    struct stat st;

    if (fstatat(dfd, base, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        return errno == ENOENT ? 0 : up_sys(t, errno, "stat", name);
    }
    if (S_ISDIR(st.st_mode)) {
        return up_sys(t, EISDIR, "replace", name);
    }
    if (unlinkat(dfd, base, 0) < 0) {
        return up_sys(t, errno, "replace", name);
    }
    return 0;
}

/* chown(2) takes 32-bit ids and reads (uid_t)-1 as "leave it": an archive's id beyond those (a
 * pax or base-256 field holds 64 bits, negative ones too) would make another owner, 2^32 root,
 * or none. */
static bool up_owner_ok(struct archive_entry *e)
{
    la_int64_t uid = archive_entry_uid(e), gid = archive_entry_gid(e);

    return uid >= 0 && uid < (la_int64_t)(uid_t)-1 && gid >= 0 && gid < (la_int64_t)(gid_t)-1;
}

static unsigned up_depth(const char *name)
{
    unsigned n = 0;

    for (const char *c = name; *c != '\0';) {
        size_t l = strcspn(c, "/");
        n += l > 0 && !(l == 1 && c[0] == '.');
        c += l + (c[l] == '/');
    }
    return n;
}

static void up_times(struct archive_entry *e, struct timespec ts[2])
{
    ts[1].tv_sec = archive_entry_mtime(e);
    ts[1].tv_nsec = archive_entry_mtime_nsec(e);
    if (archive_entry_atime_is_set(e)) {
        ts[0].tv_sec = archive_entry_atime(e);
        ts[0].tv_nsec = archive_entry_atime_nsec(e);
    } else {
        ts[0] = ts[1];
    }
}

static int up_file(struct tree_up *t, struct archive *ar, struct archive_entry *e, int dfd,
                   const char *base, const char *name)
{
    mode_t perm = archive_entry_perm(e) & 07777;
    /* Created with its final mode when the umask leaves that mode alone (no fchmod then);
     * else private until the fchmod at the end. */
    bool exact = t->umask >= 0 && (perm & ~(mode_t)0777) == 0 && (perm & (mode_t)t->umask) == 0;
    struct timespec ts[2];
    const void *buf;
    size_t len;
    la_int64_t off, end = 0;
    int fd, rc;

    /* O_EXCL never opens what is there (a symlink included): an existing entry is removed and
     * the create tried once more, so other hard links to the old file are untouched. */
    fd = openat(dfd, base, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                exact ? perm : 0600);
    if (fd < 0 && errno == EEXIST) {
        if (up_clear(t, dfd, base, name) < 0) {
            return -1;
        }
        fd = openat(dfd, base, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                    exact ? perm : 0600);
    }
    if (fd < 0) {
        return up_sys(t, errno, "create", name);
    }
    while ((rc = archive_read_data_block(ar, &buf, &len, &off)) == ARCHIVE_OK) {
        const uint8_t *p = buf;
        while (len > 0) {
            ssize_t w = pwrite(fd, p, len, off);
            if (w < 0 && errno == EINTR) {
                continue;
            }
            if (w < 0) {
                int err = errno;
                close(fd);
                return up_sys(t, err, "write", name);
            }
            p += w;
            len -= (size_t)w;
            off += w;
        }
        if (off > end) {
            end = off;
        }
    }
    if (rc != ARCHIVE_EOF) {
        close(fd);
        if (archive_errno(ar) == ECANCELED) {
            sbx_err_set(&t->err, SBX_E_CANCELLED, "cancelled");
            return -1;
        }
        sbx_err_param(&t->err, "stream", "archive data of \"%.200s\": %s", name,
                      archive_error_string(ar));
        sbx_err_set_path(&t->err, name);
        return -1;
    }
    /* Sparse files and trailing holes: the size is the entry's. */
    if (end != archive_entry_size(e) && ftruncate(fd, archive_entry_size(e)) < 0) {
        int err = errno;
        close(fd);
        return up_sys(t, err, "truncate", name);
    }
    if (t->preserve_owner && fchown(fd, archive_entry_uid(e), archive_entry_gid(e)) < 0) {
        int err = errno;
        close(fd);
        return up_sys(t, err, "chown", name);
    }
    up_times(e, ts);
    /* After fchown, which clears set-id bits. */
    if (((!exact || t->preserve_owner) && fchmod(fd, perm) < 0) || futimens(fd, ts) < 0) {
        int err = errno;
        close(fd);
        return up_sys(t, err, "set attributes of", name);
    }
    if (close(fd) < 0) {
        return up_sys(t, errno, "close", name);
    }
    return 0;
}

static int up_entry(struct tree_up *t, struct archive *ar, struct archive_entry *e)
{
    char name[AGENT_FS_PATH_BUF], lname[AGENT_FS_PATH_BUF];
    const char *n = up_clean_name(t, archive_entry_pathname(e), name, sizeof(name));
    const char *hl = archive_entry_hardlink(e);
    const char *base;
    struct timespec ts[2];
    mode_t type = archive_entry_filetype(e);
    int dfd;

    if (n == NULL) {
        return -1;
    }
    if (n[0] == '\0') {
        return 0; /* "./": the destination itself */
    }
    dfd = up_parent(t, name, &base, true);
    if (dfd < 0) {
        return -1;
    }
    up_times(e, ts);
    if (hl != NULL) {
        const char *tn = up_clean_name(t, hl, lname, sizeof(lname));
        const char *tbase;
        int tfd;
        if (tn == NULL) {
            /* The error names the entry being extracted, as for every other entry; the message
             * says which target was refused (PROTOCOL.md §18.3). */
            sbx_err_prefix(&t->err, "hard link \"%.200s\"", name);
            sbx_err_set_path(&t->err, name);
            return -1;
        }
        if (up_clear(t, dfd, base, name) < 0) {
            return -1;
        }
        /* The target's parent is opened the same careful way (it may replace the cache, so
         * reopen ours afterwards). */
        tfd = up_parent(t, lname, &tbase, false);
        if (tfd < 0) {
            sbx_err_prefix(&t->err, "hard link \"%.200s\"", name);
            sbx_err_set_path(&t->err, name);
            return -1;
        }
        /* F_DUPFD_CLOEXEC, never dup(): a process spawned meanwhile must not inherit it. */
        tfd = fcntl(tfd, F_DUPFD_CLOEXEC, 0);
        dfd = tfd < 0 ? -1 : up_parent(t, name, &base, true);
        if (tfd < 0 || dfd < 0) {
            if (tfd >= 0) {
                close(tfd);
            }
            return tfd < 0 ? up_sys(t, errno, "link", name) : -1;
        }
        if (linkat(tfd, tbase, dfd, base, 0) < 0) {
            int err = errno;
            close(tfd);
            return up_sys(t, err, "link", name);
        }
        close(tfd);
        t->files++;
        return 0;
    }
    if (t->preserve_owner && (type == AE_IFREG || type == AE_IFDIR || type == AE_IFLNK) &&
        !up_owner_ok(e)) {
        return up_refuse(t, name, "owner out of range");
    }
    switch (type) {
    case AE_IFREG:
        /* A base-256 size field can say less than 0 (libarchive takes it): refused before the
         * file is made, rather than a failed ftruncate after. */
        if (archive_entry_size(e) < 0) {
            return up_refuse(t, name, "negative size");
        }
        if (up_file(t, ar, e, dfd, base, name) < 0) {
            return -1;
        }
        break;
    case AE_IFDIR: {
        struct stat st;
        /* An existing directory is merged into; anything else there (a symlink too) is
         * replaced. */
        if (mkdirat(dfd, base, 0700) < 0) {
            if (errno != EEXIST) {
                return up_sys(t, errno, "mkdir", name);
            }
            if (fstatat(dfd, base, &st, AT_SYMLINK_NOFOLLOW) == 0 && !S_ISDIR(st.st_mode)) {
                if (unlinkat(dfd, base, 0) < 0) {
                    return up_sys(t, errno, "replace", name);
                }
                if (mkdirat(dfd, base, 0700) < 0 && errno != EEXIST) {
                    return up_sys(t, errno, "mkdir", name);
                }
            }
        }
        if (t->preserve_owner && fchownat(dfd, base, archive_entry_uid(e), archive_entry_gid(e),
                                          AT_SYMLINK_NOFOLLOW) < 0) {
            return up_sys(t, errno, "chown", name);
        }
        /* Mode and time last: children change the mtime, and a read-only mode would stop them. */
        if (t->ndirs == t->capdirs) {
            size_t cap = t->capdirs ? t->capdirs * 2 : 64;
            struct dir_fix *d = realloc(t->dirs, cap * sizeof(*d));
            if (d == NULL) {
                return up_sys(t, ENOMEM, "extract", name);
            }
            t->dirs = d;
            t->capdirs = cap;
        }
        t->dirs[t->ndirs].name = strdup(name);
        if (t->dirs[t->ndirs].name == NULL) {
            return up_sys(t, ENOMEM, "extract", name);
        }
        t->dirs[t->ndirs].mode = archive_entry_perm(e) & 07777;
        t->dirs[t->ndirs].mtime = ts[1];
        t->dirs[t->ndirs].depth = up_depth(name);
        t->dirs[t->ndirs].seq = t->ndirs;
        t->ndirs++;
        break;
    }
    case AE_IFLNK: {
        const char *target = archive_entry_symlink(e);
        if (target == NULL) {
            return up_refuse(t, name, "symlink without a target");
        }
        if (up_clear(t, dfd, base, name) < 0) {
            return -1;
        }
        if (symlinkat(target, dfd, base) < 0) {
            return up_sys(t, errno, "symlink", name);
        }
        if (t->preserve_owner && fchownat(dfd, base, archive_entry_uid(e), archive_entry_gid(e),
                                          AT_SYMLINK_NOFOLLOW) < 0) {
            return up_sys(t, errno, "chown", name);
        }
        if (utimensat(dfd, base, ts, AT_SYMLINK_NOFOLLOW) < 0) {
            return up_sys(t, errno, "set times of", name);
        }
        break;
    }
    default:
        return 0; /* other types are skipped (PROTOCOL.md 18.3) */
    }
    t->files++;
    return 0;
}

/* Deepest first, whatever order the archive lists them in: a parent's mode comes after its
 * children's, which are opened through it (a mode without x would stop the identity there), and
 * its mtime after theirs. A directory listed twice gets its entries in the archive's order, so
 * the last one wins, as its owner did. */
static int up_dir_cmp(const void *a, const void *b)
{
    const struct dir_fix *x = a, *y = b;

    int c;

    if (x->depth != y->depth) {
        return x->depth > y->depth ? -1 : 1;
    }
    if ((c = strcmp(x->name, y->name)) != 0) {
        return c; /* a directory listed twice: its entries next to each other, ... */
    }
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static int up_fix_dirs(struct tree_up *t)
{
    if (t->ndirs > 1) {
        qsort(t->dirs, t->ndirs, sizeof(*t->dirs), up_dir_cmp);
    }
    for (size_t i = 0; i < t->ndirs; i++) {
        struct dir_fix *d = &t->dirs[i];
        struct timespec ts[2] = { d->mtime, d->mtime };
        const char *base;
        int dfd, fd;

        if (i + 1 < t->ndirs && strcmp(d->name, t->dirs[i + 1].name) == 0) {
            continue; /* ... and only the last one counts, as in tar: an earlier mode without
                       * read permission must not keep the later one from being set */
        }
        dfd = up_parent(t, d->name, &base, false);
        if (dfd < 0) {
            return -1;
        }
        fd = agent_path_opendir_at(dfd, base);
        if (fd < 0) {
            return up_sys(t, errno, "open directory", d->name);
        }
        if (fchmod(fd, d->mode) < 0 || futimens(fd, ts) < 0) {
            int err = errno;
            close(fd);
            return up_sys(t, err, "set attributes of", d->name);
        }
        close(fd);
    }
    return 0;
}

static int up_extract(struct tree_up *t)
{
    struct archive *ar = archive_read_new();
    struct archive_entry *e;
    int rc;

    if (ar == NULL) {
        return sbx_err_oom(&t->err);
    }
    archive_read_support_format_tar(ar);
    archive_read_support_format_empty(ar); /* an empty stream is an empty tree */
    switch (t->comp) {
    case AGENT_COMPRESS_GZIP:
        archive_read_support_filter_gzip(ar);
        break;
    case AGENT_COMPRESS_ZSTD:
        archive_read_support_filter_zstd(ar);
        break;
    case AGENT_COMPRESS_NONE:
        archive_read_support_filter_none(ar);
        break;
    }
    t->umask = agent_fs_umask_get();
    if (archive_read_open(ar, t, NULL, up_read_cb, NULL) != ARCHIVE_OK) {
        rc = -1;
        goto out;
    }
    while ((rc = archive_read_next_header(ar, &e)) == ARCHIVE_OK || rc == ARCHIVE_WARN) {
        if (up_entry(t, ar, e) < 0) {
            archive_read_free(ar);
            return -1;
        }
    }
    if (rc == ARCHIVE_EOF) {
        rc = up_fix_dirs(t);
        goto drain;
    }
    rc = -1;
out:
    if (archive_errno(ar) == ECANCELED) {
        sbx_err_set(&t->err, SBX_E_CANCELLED, "cancelled");
    } else {
        sbx_err_param(&t->err, "stream", "malformed archive: %s",
                      archive_error_string(ar) ? archive_error_string(ar) : "?");
    }
    archive_read_free(ar);
    return -1;
drain:
    archive_read_free(ar);
    if (rc < 0) {
        return -1;
    }
    /* Whatever follows the end-of-archive blocks is counted and hashed, then the client's end
     * is awaited: the reported size and sha256 cover every byte received. */
    {
        const void *buf;
        la_ssize_t n;
        while ((n = up_read_cb(NULL, t, &buf)) > 0) {
        }
        if (n < 0) {
            return sbx_err_set(&t->err, SBX_E_CANCELLED, "cancelled");
        }
    }
    return 0;
}

static void up_thread(void *arg)
{
    struct tree_up *t = arg;
    struct agent_ident_scope sc = { 0 };
    int rc = agent_ident_enter_err(&t->who, &sc, &t->err);

    /* This thread is the job's: it acts as the identity for the whole extraction. */
    if (rc == 0) {
        rc = up_extract(t);
        agent_ident_leave(&sc);
    }

    if (t->cached_fd >= 0) {
        close(t->cached_fd);
        t->cached_fd = -1;
    }
    uv_mutex_lock(&t->mu);
    t->rc = rc;
    t->finished = true;
    uv_mutex_unlock(&t->mu);
    uv_async_send(&t->async);
}

static void up_closed_cb(uv_handle_t *h)
{
    struct tree_up *t = h->data;

    while (t->head != NULL) {
        struct in_chunk *c = t->head;
        t->head = c->next;
        free(c);
    }
    free(t->cur);
    while (t->spare != NULL) {
        struct in_chunk *c = t->spare;
        t->spare = c->next;
        free(c);
    }
    for (size_t i = 0; i < t->ndirs; i++) {
        free(t->dirs[i].name);
    }
    free(t->dirs);
    if (t->rootfd >= 0) {
        close(t->rootfd);
    }
    uv_mutex_destroy(&t->mu);
    uv_cond_destroy(&t->cv);
    agent_conn_ref_del(&t->job);
    free(t);
}

static void up_report(struct tree_up *t)
{
    struct agent_conn *c = t->job.conn;
    uint8_t d[32];
    char hex[65];

    if (t->s != NULL) { /* failed while the client was still sending */
        struct agent_stream *s = t->s;
        t->s = NULL;
        s->owner = NULL;
        agent_stream_cancel(s, &t->err);
    }
    if (c == NULL || c->closing) {
        return;
    }
    if (t->rc < 0) {
        agent_transfer_done_err(c, t->sid, &t->err);
        return;
    }
    sha256_digest(&t->sha, sizeof(d), d);
    sbx_hex(d, sizeof(d), hex);
    {
        struct sbx_transfer_done done = { .stream = t->sid,
                                          .has_size = true,
                                          .size = t->received,
                                          .has_files = true,
                                          .files = t->files };
        memcpy(done.sha256, hex, sizeof(done.sha256));
        sbx_transfer_done_pack(agent_conn_begin(c), &done, NULL);
    }
    agent_conn_send(c);
}

static void up_async_cb(uv_async_t *h)
{
    struct tree_up *t = h->data;
    uint64_t n;
    bool finished, empty;

    if (t->closing) {
        return;
    }
    uv_mutex_lock(&t->mu);
    n = t->consumed;
    t->consumed = 0;
    finished = t->finished;
    empty = t->head == NULL;
    uv_mutex_unlock(&t->mu);
    if (n > 0 && t->s != NULL) {
        agent_stream_consumed(t->s, (uint32_t)n, empty);
    }
    if (!finished) {
        return;
    }
    uv_thread_join(&t->thread);
    /* A client that cancelled or ended with an error hears CANCELLED, unless the extraction
     * had failed for a reason of its own first. */
    if (t->client_error && (t->rc == 0 || strcmp(t->err.code, SBX_E_CANCELLED) == 0)) {
        t->rc = -1;
        sbx_err_set(&t->err, SBX_E_CANCELLED, "upload cancelled by the client");
    }
    up_report(t);
    t->closing = true;
    uv_close((uv_handle_t *)&t->async, up_closed_cb);
}

static void up_stop(struct tree_up *t, bool eof)
{
    uv_mutex_lock(&t->mu);
    if (eof) {
        t->eof = true;
    } else {
        t->abort = true;
    }
    uv_cond_signal(&t->cv);
    uv_mutex_unlock(&t->mu);
}

static void up_data(struct agent_stream *s, const uint8_t *data, uint32_t len)
{
    struct tree_up *t = s->owner;
    struct in_chunk *c;

    if (t == NULL) {
        return;
    }
    uv_mutex_lock(&t->mu);
    /* Behind a chunk the thread has not taken yet, with room: appended to it. A chunk per frame
     * would cost some 50 bytes for a one-byte frame (so small ones get room for more, below). */
    if (t->head != NULL) {
        struct in_chunk *last = (struct in_chunk *)(void *)t->tail; /* next is its first field */
        if (last->cap - last->len >= len) {
            memcpy(last->data + last->len, data, len);
            last->len += len;
            uv_cond_signal(&t->cv);
            uv_mutex_unlock(&t->mu);
            return;
        }
    }
    c = t->spare;
    if (c != NULL) {
        t->spare = c->next;
        t->nspare--;
    }
    uv_mutex_unlock(&t->mu);
    if (c != NULL && c->cap < len) {
        free(c);
        c = NULL;
    }
    if (c == NULL) {
        uint32_t cap = len < UP_SMALL_CAP ? UP_SMALL_CAP : len;
        if ((c = malloc(sizeof(*c) + cap)) != NULL) {
            c->cap = cap;
        }
    }
    if (c == NULL) {
        struct sbx_err err;
        sbx_err_oom(&err);
        t->s = NULL;
        s->owner = NULL;
        agent_stream_cancel(s, &err);
        t->err = err;
        up_stop(t, false);
        return;
    }
    c->next = NULL;
    c->len = len;
    memcpy(c->data, data, len);
    uv_mutex_lock(&t->mu);
    *t->tail = c;
    t->tail = &c->next;
    uv_cond_signal(&t->cv);
    uv_mutex_unlock(&t->mu);
}

static void up_end(struct agent_stream *s, const struct sbx_err *e)
{
    struct tree_up *t = s->owner;

    if (t == NULL) {
        return;
    }
    t->s = NULL;
    if (e != NULL) {
        t->client_error = true;
    }
    up_stop(t, e == NULL);
}

static void up_gone(struct agent_stream *s, bool cancelled)
{
    struct tree_up *t = s->owner;

    if (t == NULL) {
        return;
    }
    t->s = NULL;
    if (!cancelled) {
        t->job.conn = NULL;
    }
    t->client_error = true; /* reported as CANCELLED */
    up_stop(t, false);
}

static void up_conn_gone(struct agent_conn_ref *j)
{
    struct tree_up *t = agent_container_of(j, struct tree_up, job);

    t->s = NULL;
    up_stop(t, false);
}

static const struct agent_stream_ops up_ops = {
    .data = up_data,
    .end = up_end,
    .gone = up_gone,
};

int agent_transfer_upload_tree(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct tree_up *t = calloc(1, sizeof(*t));
    struct agent_ident_scope sc = { 0 };

    if (t == NULL) {
        return sbx_err_oom(err);
    }
    t->a = c->a;
    t->rootfd = t->cached_fd = -1;
    t->tail = &t->head;
    if (agent_fs_path_param(m->params, "path", SBX_REQUIRED, t->root, err) < 0 ||
        agent_compress_param(m->params, "compress", SBX_OPTIONAL, &t->comp, err) < 0 ||
        sbx_param_bool(m->params, "preserve_owner", SBX_OPTIONAL, &t->preserve_owner, err) < 0 ||
        agent_ident_param(c->a, m->params, &t->who, err) < 0 ||
        agent_stream_reserve(c, 1, err) < 0) { /* the cap before the disk (PROTOCOL.md §7.2) */
        goto fail;
    }
    if (agent_ident_enter_err(&t->who, &sc, err) < 0) {
        goto fail;
    }
    t->rootfd = agent_path_opendir(t->root, true, err);
    agent_ident_leave(&sc); /* before the thread is made: it must start as the agent */
    if (t->rootfd < 0) {
        goto fail;
    }
    sha256_init(&t->sha);
    t->s = agent_stream_new_ops(c, AGENT_STREAM_IN, &up_ops, t, err);
    if (t->s == NULL) {
        goto fail;
    }
    t->sid = t->s->id;
    if (uv_mutex_init(&t->mu) != 0 || uv_cond_init(&t->cv) != 0) {
        abort(); /* only fails for lack of resources the loop itself needs */
    }
    uv_async_init(c->a->loop, &t->async, up_async_cb);
    t->async.data = t;
    agent_conn_ref_add(c, &t->job, up_conn_gone);
    if (uv_thread_create(&t->thread, up_thread, t) != 0) {
        agent_stream_free(t->s);
        sbx_err_set(err, SBX_E_INTERNAL, "cannot start a thread");
        t->closing = true;
        uv_close((uv_handle_t *)&t->async, up_closed_cb); /* up_closed_cb frees t */
        return -1;
    }
    agent_reply_stream(c, m->id, t->sid);
    return AGENT_REPLIED;
fail:
    if (t->rootfd >= 0) {
        close(t->rootfd);
    }
    free(t);
    return -1;
}
