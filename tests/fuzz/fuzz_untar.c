/*
 * libFuzzer target for transfer.upload_tree's extraction (agent/untar.c, compiled into the target):
 * the input is a flags byte and a tar archive, which is extracted for real into a fresh
 * destination under /dev/shm inside fuzz_sandbox.h's mount namespace, where everything else is
 * read-only. The archive reaches up_thread through the stream callbacks the loop calls (up_data in
 * chunks of a size the flags pick, then up_end), and the thread runs up_extract on this thread:
 * up_read_cb's wait for the next chunk delivers it. Beside the destination lies a canary (a file
 * and a directory that a symlink in the archive can name, also by absolute path).
 *
 * Flags (byte 0): bit 0 preserve_owner; bits 1-2 the umask (022, 077, 0, or 022 that
 * agent_fs_umask_get cannot tell); bit 3 extract as uid/gid 1000 instead of root; bits 4-6 the
 * chunk size (all, 1, 511, 512, 4096, 7, 64 KiB, varying); bit 7 the whole archive queued before
 * the thread starts rather than one chunk at a time.
 *
 * Checked after each archive: no error is EROFS (a write that left the tmpfs) and none is a
 * cancellation; the canary, the scratch directory and the destination's own mode are untouched;
 * every node under the destination, walked without following a symlink, is a file, directory or
 * symlink whose hard links all lie inside it, and is a name of the archive or a directory above
 * one; a failure has a code and a message, and one that an entry caused names that entry (and
 * carries its path); setting the directories' modes and times after the last entry never fails
 * (they are all the identity's); t->files counts the entries extracted; no fd is left open.
 * When the extraction succeeds, each name holds what its last entry made of it (type, size,
 * mode, owner, mtime, symlink target, a hard link's inode), directories made on the way have
 * mkdir -p's mode, and the size and sha256 cover every byte sent. Everything made is removed
 * before the next input.
 *
 * The libFuzzer binary has a mutator (SBX_FUZZ_STRUCTURED, at the end) that keeps the tar
 * headers' checksums right after libFuzzer's mutations.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>
#include <uv.h>

#include "fuzz_sandbox.h"

#include <nettle/sha2.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* What untar.c calls that the target steps in front of (defined below, after the file). */
static int fz_next_header(struct archive *ar, struct archive_entry **e);
static void fz_cond_wait(uv_cond_t *cv, uv_mutex_t *mu);
static int fz_async_send(uv_async_t *h);

#define archive_read_next_header fz_next_header
#define uv_cond_wait             fz_cond_wait
#define uv_async_send            fz_async_send
#include "untar.c"
#undef archive_read_next_header
#undef uv_cond_wait
#undef uv_async_send

#define FZ_SCRATCH FUZZ_SANDBOX_SCRATCH "/untar"
#define FZ_ROOT    FZ_SCRATCH "/root"
#define FZ_CANARY  FZ_SCRATCH "/canary"
#define FZ_USER    1000
#define FZ_RECS    4096 /* entries recorded per archive; beyond, the per-name checks are skipped */

static const char fz_canary_text[] = "canary: an archive must never reach this file\n";

/* --- the agent outside untar.c: what the extraction calls, and what it must never reach ------ */

__attribute__((noreturn)) static void fz_not_reached(const char *what)
{
    fprintf(stderr, "untar: %s called: the extraction reached the connection\n", what);
    abort();
}

/* fs.c's, which the target does not link: path.c reports through it. */
int agent_fs_err(struct sbx_err *err, int errnum, const char *op, const char *path)
{
    sbx_err_sys(err, errnum, NULL, "%s \"%s\"", op, path);
    sbx_err_set_path(err, path);
    return -1;
}

static int fz_umask = 022;
static bool fz_umask_known = true;

/* fs.c's reads /proc/self/status; the target set the umask itself, and may play the agent that
 * cannot read it (-1). */
int agent_fs_umask_get(void)
{
    return fz_umask_known ? fz_umask : -1;
}

/* util.c's: user.c logs through it only before aborting. */
void agent_log(const char *fmt, ...)
{
    (void)fmt;
}

/* conn.c's: the job was never registered. */
void agent_conn_ref_del(struct agent_conn_ref *r)
{
    r->conn = NULL;
}

void agent_conn_ref_add(struct agent_conn *c, struct agent_conn_ref *r,
                        void (*gone)(struct agent_conn_ref *r))
{
    fz_not_reached("agent_conn_ref_add");
}

msgpack_packer *agent_conn_begin(struct agent_conn *c)
{
    fz_not_reached("agent_conn_begin");
    return NULL;
}

void agent_conn_send(struct agent_conn *c)
{
    fz_not_reached("agent_conn_send");
}

void agent_stream_consumed(struct agent_stream *s, uint32_t n, bool flush)
{
    fz_not_reached("agent_stream_consumed");
}

void agent_stream_cancel(struct agent_stream *s, const struct sbx_err *e)
{
    fz_not_reached("agent_stream_cancel");
}

int agent_stream_reserve(const struct agent_conn *c, uint32_t n, struct sbx_err *err)
{
    fz_not_reached("agent_stream_reserve");
    return -1;
}

struct agent_stream *agent_stream_new_ops(struct agent_conn *c, enum agent_stream_dir dir,
                                          const struct agent_stream_ops *ops, void *owner,
                                          struct sbx_err *err)
{
    fz_not_reached("agent_stream_new_ops");
    return NULL;
}

void agent_stream_free(struct agent_stream *s)
{
    fz_not_reached("agent_stream_free");
}

void agent_reply_stream(struct agent_conn *c, uint32_t id, uint32_t sid)
{
    fz_not_reached("agent_reply_stream");
}

void agent_transfer_done_err(struct agent_conn *c, uint32_t sid, const struct sbx_err *e)
{
    fz_not_reached("agent_transfer_done_err");
}

int agent_fs_path_param(const msgpack_object *params, const char *key, int required, char *out,
                        struct sbx_err *err)
{
    fz_not_reached("agent_fs_path_param");
    return -1;
}

int agent_compress_param(const msgpack_object *params, const char *key, int required,
                         enum agent_compress *out, struct sbx_err *err)
{
    fz_not_reached("agent_compress_param");
    return -1;
}

/* --- the stream: chunks handed to up_data as up_read_cb asks for them ----------------------- */

static struct agent_stream fz_stream;
static const uint8_t *fz_data;
static size_t fz_size, fz_off;
static unsigned fz_plan, fz_nchunk;
static bool fz_ended;

static size_t fz_chunk_len(void)
{
    static const size_t fixed[] = { 0, 1, 511, 512, 4096, 7, 65536 };
    static const size_t varying[] = { 1, 100, 512, 3000, 13, 1024 };
    size_t n = fz_plan < 7 ? fixed[fz_plan] : varying[fz_nchunk % 6];

    fz_nchunk++;
    return n == 0 || n > fz_size - fz_off ? fz_size - fz_off : n;
}

/* What the loop does for the next data frame, or the client's stream.end after the last. */
static void fz_feed(void)
{
    if (fz_off < fz_size) {
        size_t n = fz_chunk_len();
        up_ops.data(&fz_stream, fz_data + fz_off, (uint32_t)n);
        fz_off += n;
    } else if (!fz_ended) {
        fz_ended = true;
        up_ops.end(&fz_stream, NULL);
    } else {
        fprintf(stderr, "untar: read past the client's end\n");
        abort(); /* up_read_cb waits after eof: it would hang */
    }
}

/* up_read_cb waits here (mutex held) for data; the loop's data frame arrives meanwhile. */
static void fz_cond_wait(uv_cond_t *cv, uv_mutex_t *mu)
{
    (void)cv;
    uv_mutex_unlock(mu);
    fz_feed();
    uv_mutex_lock(mu);
}

static int fz_async_send(uv_async_t *h)
{
    (void)h;
    return 0; /* the loop's side (credit, the report) is not exercised */
}

/* --- the entries libarchive handed up_entry ------------------------------------------------- */

struct fz_rec {
    char *raw;   /* the pathname (NULL: none) */
    char *clean; /* agent_path_clean_rel's name, NULL when refused */
    char *key;   /* clean with empty and "." components dropped: one name per node */
    bool has_hl;
    char *hl_key; /* a hard link's target as key, NULL when refused */
    char *symlink;
    mode_t type, perm;
    int64_t size, uid, gid, mtime;
    long nsec;
};

static struct fz_rec fz_recs[FZ_RECS];
static size_t fz_nrecs;
static bool fz_overflow;
static int fz_last_rc = ARCHIVE_FATAL; /* of the last archive_read_next_header */

static char *fz_strdup(const char *s)
{
    char *d = s != NULL ? strdup(s) : NULL;

    if (s != NULL && d == NULL) {
        abort();
    }
    return d;
}

/* @clean without empty and "." components (no symlink is followed and ".." is refused, so the
 * result names the same node); NULL for NULL. */
static char *fz_key(const char *clean)
{
    char *k;
    size_t n = 0;

    if (clean == NULL) {
        return NULL;
    }
    k = fz_strdup(clean);
    for (const char *c = clean; *c != '\0';) {
        size_t l = strcspn(c, "/");
        if (l > 0 && !(l == 1 && c[0] == '.')) {
            if (n > 0) {
                k[n++] = '/';
            }
            memcpy(k + n, c, l);
            n += l;
        }
        c += l + (c[l] == '/');
    }
    k[n] = '\0';
    return k;
}

static int fz_next_header(struct archive *ar, struct archive_entry **e)
{
    int rc = archive_read_next_header(ar, e);

    fz_last_rc = rc;
    if (rc != ARCHIVE_OK && rc != ARCHIVE_WARN) {
        return rc;
    }
    if (fz_nrecs == FZ_RECS) {
        fz_overflow = true;
        return rc;
    }
    {
        struct fz_rec *r = &fz_recs[fz_nrecs++];
        char buf[AGENT_FS_PATH_BUF];
        const char *why = NULL, *hl = archive_entry_hardlink(*e);

        memset(r, 0, sizeof(*r));
        r->raw = fz_strdup(archive_entry_pathname(*e));
        r->clean = fz_strdup(agent_path_clean_rel(r->raw, buf, sizeof(buf), &why));
        r->key = fz_key(r->clean);
        r->has_hl = hl != NULL;
        if (hl != NULL) {
            r->hl_key = fz_key(agent_path_clean_rel(hl, buf, sizeof(buf), &why));
        }
        r->symlink = fz_strdup(archive_entry_symlink(*e));
        r->type = archive_entry_filetype(*e);
        r->perm = archive_entry_perm(*e) & 07777;
        r->size = archive_entry_size(*e);
        r->uid = archive_entry_uid(*e);
        r->gid = archive_entry_gid(*e);
        r->mtime = archive_entry_mtime(*e);
        r->nsec = archive_entry_mtime_nsec(*e);
    }
    return rc;
}

/* Whether up_entry counts @r in t->files once it extracted it. */
static bool fz_counted(const struct fz_rec *r)
{
    return r->clean != NULL && r->clean[0] != '\0' &&
           (r->has_hl || r->type == AE_IFREG || r->type == AE_IFDIR || r->type == AE_IFLNK);
}

/* --- the scratch tree ----------------------------------------------------------------------- */

struct fz_snap {
    const char *path;
    struct stat st;
};

static struct fz_snap fz_snaps[] = {
    { FZ_SCRATCH, { 0 } },
    { FZ_CANARY, { 0 } },
    { FZ_CANARY "/f", { 0 } },
    { FZ_CANARY "/d", { 0 } },
};

__attribute__((noreturn)) static void fz_die(const char *what, const char *path)
{
    fprintf(stderr, "untar: %s %s: %s\n", what, path, strerror(errno));
    abort();
}

static void fz_scratch_make(void)
{
    int fd;

    if (mkdir(FZ_SCRATCH, 0755) < 0 || mkdir(FZ_CANARY, 0755) < 0 ||
        mkdir(FZ_CANARY "/d", 0755) < 0) {
        fz_die("cannot make", FZ_SCRATCH);
    }
    fd = open(FZ_CANARY "/f", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, fz_canary_text, sizeof(fz_canary_text) - 1) !=
                      (ssize_t)(sizeof(fz_canary_text) - 1)) {
        fz_die("cannot write", FZ_CANARY "/f");
    }
    close(fd);
}

static void fz_snap_take(void)
{
    for (size_t i = 0; i < ARRAY_SIZE(fz_snaps); i++) {
        if (lstat(fz_snaps[i].path, &fz_snaps[i].st) < 0) {
            fz_die("cannot stat", fz_snaps[i].path);
        }
    }
}

static bool fz_same_time(struct timespec a, struct timespec b)
{
    return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec;
}

/* The names directly in @path, which must be exactly @want (NULL-terminated). */
static void fz_names_are(const char *path, const char *const *want)
{
    DIR *d = opendir(path);
    struct dirent *de;
    size_t n = 0, nwant = 0;

    if (d == NULL) {
        fz_die("cannot list", path);
    }
    while (want[nwant] != NULL) {
        nwant++;
    }
    while ((de = readdir(d)) != NULL) {
        bool known = false;
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) {
            continue;
        }
        for (size_t i = 0; i < nwant; i++) {
            known |= strcmp(de->d_name, want[i]) == 0;
        }
        if (!known) {
            fprintf(stderr, "untar: escape: \"%s\" appeared in %s\n", de->d_name, path);
            abort();
        }
        n++;
    }
    closedir(d);
    if (n != nwant) {
        fprintf(stderr, "untar: escape: %s lost an entry\n", path);
        abort();
    }
}

/* The canary, the scratch directory and /dev/shm are as they were made. */
static void fz_canary_check(void)
{
    static const char *const shm[] = { "untar", NULL },
                             *const scratch[] = { "root", "canary", NULL },
                             *const canary[] = { "f", "d", NULL }, *const none[] = { NULL };
    char buf[sizeof(fz_canary_text) + 16];
    ssize_t n;
    int fd;

    for (size_t i = 0; i < ARRAY_SIZE(fz_snaps); i++) {
        struct stat st, *was = &fz_snaps[i].st;
        if (lstat(fz_snaps[i].path, &st) < 0 || st.st_ino != was->st_ino ||
            st.st_mode != was->st_mode || st.st_nlink != was->st_nlink ||
            st.st_uid != was->st_uid || st.st_gid != was->st_gid || st.st_size != was->st_size ||
            !fz_same_time(st.st_mtim, was->st_mtim) || !fz_same_time(st.st_ctim, was->st_ctim)) {
            fprintf(stderr, "untar: escape: the canary %s changed\n", fz_snaps[i].path);
            abort();
        }
    }
    fd = open(FZ_CANARY "/f", O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        fz_die("cannot open", FZ_CANARY "/f");
    }
    n = read(fd, buf, sizeof(buf));
    close(fd);
    if (n != (ssize_t)(sizeof(fz_canary_text) - 1) || memcmp(buf, fz_canary_text, (size_t)n) != 0) {
        fprintf(stderr, "untar: escape: the canary's content changed\n");
        abort();
    }
    fz_names_are(FUZZ_SANDBOX_SCRATCH, shm);
    fz_names_are(FZ_SCRATCH, scratch);
    fz_names_are(FZ_CANARY, canary);
    fz_names_are(FZ_CANARY "/d", none);
}

/* Remove @name of @dfd and all below it, never following a symlink; directories are made
 * u+rwx first (an archive may leave them 0000). */
static void fz_remove_at(int dfd, const char *name)
{
    const char *what = NULL;

    if (fuzz_scratch_remove(dfd, name, &what) < 0) {
        fz_die(what, name);
    }
}

/* --- the extracted tree --------------------------------------------------------------------- */

struct fz_node {
    char *path; /* relative to the destination */
    struct stat st;
    char *link; /* a symlink's target */
};

static struct fz_node *fz_nodes;
static size_t fz_nnodes, fz_capnodes;

/* The directory fd @fd must be the destination or below it. */
static void fz_check_inside(int fd)
{
    char link[64], target[4096];
    size_t rl = strlen(FZ_ROOT);
    ssize_t n;

    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    n = readlink(link, target, sizeof(target) - 1);
    if (n < 0) {
        return; /* no /proc: the walk's O_NOFOLLOW is all there is */
    }
    target[n] = '\0';
    if (strncmp(target, FZ_ROOT, rl) != 0 || (target[rl] != '\0' && target[rl] != '/')) {
        fprintf(stderr, "untar: escape: the walk reached %s\n", target);
        abort();
    }
}

/* Record every node under directory @fd (named @rel), never following a symlink; closes @fd. */
static void fz_walk(int fd, const char *rel)
{
    DIR *d;
    struct dirent *de;

    fz_check_inside(fd);
    if ((d = fdopendir(fd)) == NULL) {
        fz_die("cannot list", rel);
    }
    while ((de = readdir(d)) != NULL) {
        struct fz_node *n;
        size_t len;

        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) {
            continue;
        }
        if (fz_nnodes == fz_capnodes) {
            fz_capnodes = fz_capnodes ? fz_capnodes * 2 : 64;
            fz_nodes = realloc(fz_nodes, fz_capnodes * sizeof(*fz_nodes));
            if (fz_nodes == NULL) {
                abort();
            }
        }
        n = &fz_nodes[fz_nnodes++];
        memset(n, 0, sizeof(*n));
        len = strlen(rel) + strlen(de->d_name) + 2;
        if ((n->path = malloc(len)) == NULL) {
            abort();
        }
        snprintf(n->path, len, "%s%s%s", rel, rel[0] ? "/" : "", de->d_name);
        if (fstatat(dirfd(d), de->d_name, &n->st, AT_SYMLINK_NOFOLLOW) < 0) {
            fz_die("cannot stat", n->path);
        }
        if (S_ISLNK(n->st.st_mode)) {
            static char target[8192]; /* static: the walk recurses as deep as the archive's names */
            ssize_t tl = readlinkat(dirfd(d), de->d_name, target, sizeof(target) - 1);
            if (tl < 0) {
                fz_die("cannot read link", n->path);
            }
            target[tl] = '\0';
            n->link = fz_strdup(target);
        } else if (S_ISDIR(n->st.st_mode)) {
            int sub = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            char *path = n->path; /* fz_nodes moves as it grows */
            if (sub < 0) {
                fz_die("cannot open", n->path);
            }
            fz_walk(sub, path);
        } else if (!S_ISREG(n->st.st_mode)) {
            fprintf(stderr,
                    "untar: %s is of type %o: only files, directories and symlinks are made\n",
                    n->path, (unsigned)(n->st.st_mode & S_IFMT));
            abort();
        }
    }
    closedir(d);
}

static const struct fz_node *fz_node(const char *path)
{
    for (size_t i = 0; i < fz_nnodes; i++) {
        if (strcmp(fz_nodes[i].path, path) == 0) {
            return &fz_nodes[i];
        }
    }
    return NULL;
}

/* Whether @key is @dir or below it. */
static bool fz_under(const char *key, const char *dir)
{
    size_t n = strlen(dir);
    return strncmp(key, dir, n) == 0 && (key[n] == '\0' || key[n] == '/');
}

/* The last entry counted for @key, or -1. */
static long fz_last_for(const char *key)
{
    for (size_t i = fz_nrecs; i-- > 0;) {
        if (fz_counted(&fz_recs[i]) && strcmp(fz_recs[i].key, key) == 0) {
            return (long)i;
        }
    }
    return -1;
}

__attribute__((noreturn)) static void fz_fail(const char *path, const char *what)
{
    fprintf(stderr, "untar: \"%s\": %s\n", path, what);
    abort();
}

/* Every node: one of the kinds made, all its hard links inside the destination, and the name of
 * an entry or a directory above one (made on the way to it). */
static void fz_check_nodes(void)
{
    for (size_t i = 0; i < fz_nnodes; i++) {
        const struct fz_node *n = &fz_nodes[i];
        bool named = false;

        if (!S_ISDIR(n->st.st_mode)) {
            nlink_t links = 0;
            for (size_t j = 0; j < fz_nnodes; j++) {
                links += fz_nodes[j].st.st_ino == n->st.st_ino;
            }
            if (links != n->st.st_nlink) {
                fz_fail(n->path, "has a hard link outside the destination");
            }
        }
        for (size_t j = 0; j < fz_nrecs && !named; j++) {
            const char *k = fz_recs[j].key;
            named = k != NULL && k[0] != '\0' && fz_under(k, n->path) &&
                    (strcmp(k, n->path) == 0 || S_ISDIR(n->st.st_mode));
        }
        if (!named && !fz_overflow) {
            fz_fail(n->path, "no entry of the archive made it");
        }
    }
}

static bool fz_time_is(const struct stat *st, const struct fz_rec *r)
{
    if (r->nsec < 0 || r->nsec >= 1000000000 || r->mtime < 0 || r->mtime > (1LL << 40)) {
        return true; /* a time the kernel may clamp */
    }
    return st->st_mtim.tv_sec == r->mtime && st->st_mtim.tv_nsec == r->nsec;
}

/* After a successful extraction: each name is what its last entry made. */
static void fz_check_model(const struct tree_up *t)
{
    mode_t made = AGENT_PATH_MKDIR_MODE & ~(mode_t)fz_umask;
    uid_t uid = t->who.self ? geteuid() : t->who.uid;
    gid_t gid = t->who.self ? getegid() : t->who.gid;

    for (size_t i = 0; i < fz_nnodes; i++) {
        const struct fz_node *n = &fz_nodes[i];
        long last = fz_last_for(n->path);
        const struct fz_rec *r = last >= 0 ? &fz_recs[last] : NULL;
        const struct stat *st = &n->st;

        /* A hard link keeps its target's owner; the rest are the entry's or the identity's. */
        if (r != NULL && t->preserve_owner && !r->has_hl) {
            if ((int64_t)st->st_uid != r->uid || (int64_t)st->st_gid != r->gid) {
                fz_fail(n->path, "owner is not the entry's");
            }
        } else if ((r == NULL || !r->has_hl) && (st->st_uid != uid || st->st_gid != gid)) {
            fz_fail(n->path, "owner is not the identity's");
        }
        if (r == NULL) {
            if (!S_ISDIR(st->st_mode) || (st->st_mode & 07777) != made) {
                fz_fail(n->path, "a directory made on the way has not mkdir -p's mode");
            }
        } else if (r->has_hl) {
            long target = r->hl_key != NULL ? fz_last_for(r->hl_key) : -1;
            const struct fz_node *tn = r->hl_key != NULL ? fz_node(r->hl_key) : NULL;
            if (S_ISDIR(st->st_mode)) {
                fz_fail(n->path, "a hard link is a directory");
            }
            if (target >= 0 && target < last && (tn == NULL || tn->st.st_ino != st->st_ino)) {
                fz_fail(n->path, "a hard link is not its target");
            }
        } else if (r->type == AE_IFREG) {
            if (!S_ISREG(st->st_mode) || st->st_size != r->size ||
                (st->st_mode & 07777) != r->perm || !fz_time_is(st, r)) {
                fz_fail(n->path, "a file is not its entry (type, size, mode or mtime)");
            }
        } else if (r->type == AE_IFDIR) {
            if (!S_ISDIR(st->st_mode) || (st->st_mode & 07777) != r->perm || !fz_time_is(st, r)) {
                fz_fail(n->path, "a directory has not its last entry's mode or mtime");
            }
        } else if (!S_ISLNK(st->st_mode) || n->link == NULL || r->symlink == NULL ||
                   strcmp(n->link, r->symlink) != 0 || !fz_time_is(st, r)) {
            fz_fail(n->path, "a symlink is not its entry (target or mtime)");
        }
    }
    /* And every name an entry made is there. */
    for (size_t i = 0; i < fz_nrecs; i++) {
        if (fz_counted(&fz_recs[i]) && fz_node(fz_recs[i].key) == NULL) {
            fz_fail(fz_recs[i].key, "an entry extracted without error is missing");
        }
    }
}

/* @msg holds the first 200 bytes of @name (as the messages print it), and @path is @name. */
static bool fz_names(const struct sbx_err *err, const char *name)
{
    size_t n = strlen(name) < 200 ? strlen(name) : 200;
    return memmem(err->msg, strlen(err->msg), name, n) != NULL &&
           strncmp(err->path, name, sizeof(err->path) - 1) == 0;
}

static void fz_check_error(const struct tree_up *t, size_t files_before_last)
{
    const struct sbx_err *err = &t->err;
    size_t total = files_before_last;

    if (fz_nrecs > 0 && fz_counted(&fz_recs[fz_nrecs - 1])) {
        total++;
    }
    if (t->rc == 0) {
        if (err->code[0] != '\0') {
            fprintf(stderr, "untar: succeeded with an error set: %s %s\n", err->code, err->msg);
            abort();
        }
        if (!fz_overflow && t->files != total) {
            fprintf(stderr, "untar: %llu files counted, %zu extracted\n",
                    (unsigned long long)t->files, total);
            abort();
        }
        return;
    }
    if (err->code[0] == '\0' || err->msg[0] == '\0' ||
        strnlen(err->msg, sizeof(err->msg)) == sizeof(err->msg)) {
        fprintf(stderr, "untar: failed without a code or message\n");
        abort();
    }
    if (err->sys_errno == EROFS || strcmp(err->code, "EROFS") == 0) {
        fprintf(stderr, "untar: escape: a write outside the destination: %s\n", err->msg);
        abort();
    }
    if (strcmp(err->code, SBX_E_CANCELLED) == 0) {
        fprintf(stderr, "untar: cancelled, though nothing cancels: %s\n", err->msg);
        abort();
    }
    if (fz_overflow) {
        return;
    }
    if (fz_last_rc == ARCHIVE_OK || fz_last_rc == ARCHIVE_WARN) {
        /* up_entry refused or failed the last entry: the error names it, which is not counted. */
        const struct fz_rec *r = &fz_recs[fz_nrecs - 1];
        const char *name = r->clean != NULL ? r->clean : r->raw != NULL ? r->raw : "";
        if (!fz_names(err, name)) {
            fprintf(stderr, "untar: the error does not name entry \"%s\": %s (path \"%s\")\n", name,
                    err->msg, err->path);
            abort();
        }
        total = files_before_last;
    } else if (fz_last_rc == ARCHIVE_EOF) {
        /* up_fix_dirs: every directory it sets was made, or merged into, by the identity, which
         * may set its mode and times; none may be out of its reach. */
        fprintf(stderr, "untar: the archive's directories could not be set: %s\n", err->msg);
        abort();
    } else if (strncmp(err->msg, "malformed archive: ", 19) != 0) {
        fprintf(stderr, "untar: the archive's error is not \"malformed archive\": %s\n", err->msg);
        abort();
    }
    if (t->files != total) {
        fprintf(stderr, "untar: %llu files counted, %zu extracted before the error\n",
                (unsigned long long)t->files, total);
        abort();
    }
}

/* --- one archive ---------------------------------------------------------------------------- */

static bool fz_user_ok;

/* Whether this process may act as another user (root in the initial user namespace): else the
 * non-root identity is left out. */
static void fz_probe_user(void)
{
    struct agent_ident id = { .uid = FZ_USER, .gid = FZ_USER };
    struct agent_ident_scope sc = { 0 };

    if (agent_ident_enter(&id, &sc) == 0) {
        agent_ident_leave(&sc);
        fz_user_ok = true;
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_sandbox_enter(*argc, *argv);
    return 0;
}

static void fz_reset(void)
{
    for (size_t i = 0; i < fz_nrecs; i++) {
        free(fz_recs[i].raw);
        free(fz_recs[i].clean);
        free(fz_recs[i].key);
        free(fz_recs[i].hl_key);
        free(fz_recs[i].symlink);
    }
    fz_nrecs = 0;
    fz_overflow = false;
    fz_last_rc = ARCHIVE_FATAL;
    for (size_t i = 0; i < fz_nnodes; i++) {
        free(fz_nodes[i].path);
        free(fz_nodes[i].link);
    }
    fz_nnodes = 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool probed;
    static const int umasks[] = { 022, 077, 0, 022 };
    struct agent_ident_scope sc = { 0 };
    struct tree_up *t;
    struct sbx_err err = { 0 };
    uint8_t flags;
    int fds, rootfd, old_umask;
    size_t before_last = 0;

    fuzz_sandbox_enter(0, NULL);
    if (!probed) {
        probed = true;
        fz_probe_user();
    }
    if (size == 0) {
        return 0;
    }
    flags = data[0];
    fz_data = data + 1;
    fz_size = size - 1;
    fz_off = 0;
    fz_plan = (flags >> 4) & 7;
    fz_nchunk = 0;
    fz_ended = false;
    fz_umask = umasks[(flags >> 1) & 3];
    fz_umask_known = ((flags >> 1) & 3) != 3;
    fds = fuzz_count_fds();
    old_umask = (int)umask(022); /* the canary's modes, and a scratch the identity can cross */
    fz_scratch_make();
    (void)umask((mode_t)fz_umask);

    /* As agent_transfer_upload_tree sets it up, the stream being fz_stream. */
    if ((t = calloc(1, sizeof(*t))) == NULL) {
        abort();
    }
    t->rootfd = t->cached_fd = -1;
    t->tail = &t->head;
    snprintf(t->root, sizeof(t->root), "%s", FZ_ROOT);
    t->comp = AGENT_COMPRESS_NONE;
    t->preserve_owner = flags & 1;
    t->who.self = !((flags & 8) && fz_user_ok);
    t->who.uid = t->who.self ? geteuid() : FZ_USER;
    t->who.gid = t->who.self ? getegid() : FZ_USER;
    snprintf(t->who.name, sizeof(t->who.name), "%u", (unsigned)t->who.uid);
    if (!t->who.self) {
        /* Where the request's user may make the destination. */
        if (mkdir(FZ_ROOT, 0755) < 0 || chown(FZ_ROOT, FZ_USER, FZ_USER) < 0) {
            fz_die("cannot make", FZ_ROOT);
        }
    }
    if (agent_ident_enter_err(&t->who, &sc, &err) < 0) {
        fprintf(stderr, "untar: %s\n", err.msg);
        abort();
    }
    t->rootfd = agent_path_opendir(t->root, true, &err);
    agent_ident_leave(&sc);
    if (t->rootfd < 0) {
        fprintf(stderr, "untar: %s\n", err.msg);
        abort();
    }
    sha256_init(&t->sha);
    memset(&fz_stream, 0, sizeof(fz_stream));
    fz_stream.dir = AGENT_STREAM_IN;
    fz_stream.ops = &up_ops;
    fz_stream.owner = t;
    t->s = &fz_stream;
    if (uv_mutex_init(&t->mu) != 0 || uv_cond_init(&t->cv) != 0) {
        abort();
    }
    t->async.data = t;
    fz_snap_take();

    if (flags & 0x80) {
        while (!fz_ended) {
            fz_feed();
        }
    }
    up_thread(t); /* the extraction, on this thread */
    if (!t->finished || t->cached_fd != -1) {
        fprintf(stderr, "untar: the thread did not finish cleanly\n");
        abort();
    }

    for (size_t i = 0; i + 1 < fz_nrecs; i++) {
        before_last += fz_counted(&fz_recs[i]);
    }
    fz_check_error(t, before_last);
    fz_canary_check();
    if ((rootfd = open(FZ_ROOT, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0) {
        fz_die("cannot open", FZ_ROOT);
    }
    {
        struct stat st;
        if (fstat(rootfd, &st) < 0 || (st.st_mode & 07777) != (0755 & ~(mode_t)fz_umask)) {
            fz_fail(".", "the destination's own mode changed");
        }
    }
    fz_walk(rootfd, "");
    fz_check_nodes();
    if (t->rc == 0 && !fz_overflow) {
        uint8_t want[SHA256_DIGEST_SIZE], got[SHA256_DIGEST_SIZE];
        struct sha256_ctx ctx;

        fz_check_model(t);
        sha256_init(&ctx);
        sha256_update(&ctx, fz_size, fz_data);
        sha256_digest(&ctx, sizeof(want), want);
        sha256_digest(&t->sha, sizeof(got), got);
        if (t->received != fz_size || memcmp(want, got, sizeof(want)) != 0) {
            fprintf(stderr, "untar: %llu bytes received of %zu, or another sha256\n",
                    (unsigned long long)t->received, fz_size);
            abort();
        }
    } else if (t->received > fz_size) {
        abort();
    }

    up_closed_cb((uv_handle_t *)&t->async); /* frees t, its chunks and its fds */
    fz_remove_at(AT_FDCWD, FZ_SCRATCH);
    (void)umask((mode_t)old_umask);
    fz_reset();
    if (fds >= 0 && fuzz_count_fds() != fds) {
        fprintf(stderr, "untar: %d fds open before the archive, %d after\n", fds, fuzz_count_fds());
        abort();
    }
    return 0;
}

#ifdef SBX_FUZZ_STRUCTURED
/* --- the structure-aware mutator ------------------------------------------------------------- */

/*
 * libFuzzer's byte mutations, then every tar header's checksum made right again (a header with a
 * wrong one ends the archive, so nearly every mutation would only test libarchive's refusal);
 * one time in four a header field is first set to a value from the tables below (a hostile
 * name or link target, another type, mode or owner). One time in eight the checksums are left as
 * they are.
 */
size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);
size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed);

static const char *const mut_names[] = {
    "a",
    "a/b",
    "a/./b",
    "./a",
    "a/",
    ".",
    "./",
    "l",
    "l/",
    "l/f",
    "d/",
    "h",
    "../canary/f",
    "a/../../x",
    FZ_CANARY "/f",
    FZ_CANARY "/d",
    "/",
    "a//b/",
    "..",
    "",
    "x/x/x/x/x/x/x",
    "d/e/f",
};
static const char *const mut_links[] = {
    "a", "a/b", "l", "../canary", "../canary/f", FZ_CANARY, FZ_CANARY "/f", "/", ".", "", "d",
};
static const char mut_types[] = "0125x7LKg36";
static const unsigned mut_modes[] = { 0, 0777, 04755, 02775, 01777, 0555, 0700, 0644, 0400 };
static const unsigned long mut_ids[] = { 0, 1, 1000, 65534, 077777777 };

#define TAR_BLOCK 512

/* The header's size field: octal, or base-256 (high bit of the first byte); -1 if neither. */
static int64_t mut_size(const uint8_t *h)
{
    int64_t v = 0;

    if (h[124] & 0x80) {
        if (h[124] != 0x80) {
            return -1; /* negative or beyond 2^63: the walk stops */
        }
        for (int i = 125; i < 136; i++) {
            if (v > (INT64_MAX >> 8)) {
                return -1;
            }
            v = (v << 8) | h[i];
        }
        return v;
    }
    for (int i = 124; i < 136 && h[i] != '\0' && h[i] != ' '; i++) {
        if (h[i] < '0' || h[i] > '7') {
            return -1;
        }
        v = v * 8 + (h[i] - '0');
    }
    return v;
}

static void mut_checksum(uint8_t *h)
{
    unsigned sum = 0;

    memset(h + 148, ' ', 8);
    for (int i = 0; i < TAR_BLOCK; i++) {
        sum += h[i];
    }
    snprintf((char *)h + 148, 8, "%06o", sum & 0777777);
    h[155] = ' ';
}

static void mut_field(uint8_t *h, int off, int width, const char *s)
{
    memset(h + off, 0, (size_t)width);
    memcpy(h + off, s, strlen(s) < (size_t)width ? strlen(s) : (size_t)width);
}

/* One field of header @h set from the tables, as @r picks. */
static void mut_header(uint8_t *h, unsigned r)
{
    char num[16];

    switch (r % 6) {
    case 0:
        mut_field(h, 0, 100, mut_names[(r / 6) % ARRAY_SIZE(mut_names)]);
        break;
    case 1:
        mut_field(h, 157, 100, mut_links[(r / 6) % ARRAY_SIZE(mut_links)]);
        break;
    case 2:
        h[156] = (uint8_t)mut_types[(r / 6) % (sizeof(mut_types) - 1)];
        break;
    case 3:
        snprintf(num, sizeof(num), "%07o", mut_modes[(r / 6) % ARRAY_SIZE(mut_modes)]);
        mut_field(h, 100, 8, num);
        break;
    default:
        snprintf(num, sizeof(num), "%07lo", mut_ids[(r / 6) % ARRAY_SIZE(mut_ids)]);
        mut_field(h, r % 6 == 4 ? 108 : 116, 8, num);
        break;
    }
}

size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed)
{
    uint8_t *ar;
    size_t n, off = 0, headers = 0, pick;

    size = LLVMFuzzerMutate(data, size, max_size);
    if (size < 1 + TAR_BLOCK || seed % 8 == 0) {
        return size;
    }
    ar = data + 1;
    n = size - 1;
    pick = seed % 4 == 1 ? (seed / 8) % 8 : SIZE_MAX;
    while (off + TAR_BLOCK <= n) {
        uint8_t *h = ar + off;
        int64_t len;
        bool zero = true;

        for (int i = 0; i < TAR_BLOCK && zero; i++) {
            zero = h[i] == 0;
        }
        off += TAR_BLOCK;
        if (zero) {
            continue;
        }
        if (headers++ == pick) {
            mut_header(h, seed / 64);
        }
        mut_checksum(h);
        len = mut_size(h);
        if (len < 0 || (uint64_t)len > n) {
            break;
        }
        /* Data follows files, pax and GNU long-name headers; other types have none. */
        if (h[156] == '\0' || strchr("07xgLKS", h[156]) != NULL) {
            off += ((size_t)len + TAR_BLOCK - 1) / TAR_BLOCK * TAR_BLOCK;
        }
    }
    return size;
}
#endif /* SBX_FUZZ_STRUCTURED */
