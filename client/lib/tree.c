/*
 * Directory trees (sbx/tree.h): the walk that writes a local tree as a pax archive through
 * libarchive, unpacking one with libarchive's disk writer, and the tree transfers on top.
 */
#include "sbx/tree.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>

#include <nettle/sha2.h>

/* libarchive's message for @a's last failure. */
static const char *aerr(struct archive *a)
{
    const char *s = archive_error_string(a);

    return s != NULL ? s : "unknown error";
}

/* --- writing a tree -------------------------------------------------------------------------- */

/*
 * The walk: openat/getdents/fstat relative to the parent directory's fd, one read per small file
 * into one reused buffer, rather than libarchive's read_disk, which costs ~18 system calls per
 * file (chdir back and forth, six lseeks looking for holes, fcntl) where this costs four;
 * libarchive still writes the pax archive.
 */
struct walk {
    struct archive *w;
    struct archive_entry *e;
    struct archive_entry_linkresolver *lr;
    const char *root; /* for messages */
    struct sbx_err *err;
    uint8_t *buf;        /* file data, WALK_BUF bytes, reused for every file */
    char path[PATH_MAX]; /* entry name, relative to the root */
};

#define WALK_BUF  (256u << 10)
#define WALK_DENT (32u << 10)

static int walk_sys(struct walk *wk, int e, const char *what)
{
    size_t n = strlen(wk->path);

    /* The message has room for the end of a long path only (the path field holds it all). */
    if (n > 200) {
        sbx_err_sys(wk->err, e, NULL, "%s ...%s", what, wk->path + n - 200);
    } else {
        sbx_err_sys(wk->err, e, NULL, "%s %s/%s", what, wk->root, wk->path);
    }
    sbx_err_set_path(wk->err, wk->path);
    return -1;
}

static int walk_archive_err(struct walk *wk)
{
    /* The sink's own failure (set by its sbx_tree_out_fn) is the better message. */
    if (!sbx_err_isset(wk->err)) {
        sbx_err_set(wk->err, "EIO", "%s: %s", wk->path, aerr(wk->w));
    }
    return -1;
}

static void walk_entry_stat(struct archive_entry *e, const struct stat *st)
{
    archive_entry_set_mode(e, st->st_mode);
    archive_entry_set_uid(e, st->st_uid);
    archive_entry_set_gid(e, st->st_gid);
    archive_entry_set_mtime(e, st->st_mtim.tv_sec, st->st_mtim.tv_nsec);
    archive_entry_set_atime(e, st->st_atim.tv_sec, st->st_atim.tv_nsec);
    archive_entry_set_ctime(e, st->st_ctim.tv_sec, st->st_ctim.tv_nsec);
    archive_entry_set_dev(e, st->st_dev);
    archive_entry_set_ino64(e, st->st_ino);
    archive_entry_set_nlink(e, (unsigned int)st->st_nlink);
    archive_entry_set_size(e, S_ISREG(st->st_mode) ? st->st_size : 0);
    if (S_ISCHR(st->st_mode) || S_ISBLK(st->st_mode)) {
        archive_entry_set_rdev(e, st->st_rdev);
    }
}

/* Write @len bytes of @fd from @off into the archive (the file may shrink meanwhile: the writer
 * pads the entry with zeros, as tar does). */
static int walk_data(struct walk *wk, int fd, off_t off, off_t len)
{
    while (len > 0) {
        size_t want = len < (off_t)WALK_BUF ? (size_t)len : WALK_BUF;
        ssize_t n = pread(fd, wk->buf, want, off);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            return walk_sys(wk, errno, "read");
        }
        if (n == 0) {
            break; /* shrank */
        }
        if (archive_write_data(wk->w, wk->buf, (size_t)n) < 0) {
            return walk_archive_err(wk);
        }
        off += n;
        len -= n;
    }
    return 0;
}

/* Feed the writer @n zero bytes standing for a hole (it drops them). */
static int walk_hole(struct walk *wk, off_t n)
{
    static const uint8_t zeros[1 << 16];

    while (n > 0) {
        size_t k = n < (off_t)sizeof(zeros) ? (size_t)n : sizeof(zeros);
        if (archive_write_data(wk->w, zeros, k) < 0) {
            return walk_archive_err(wk);
        }
        n -= (off_t)k;
    }
    return 0;
}

/* A file with fewer blocks than its size has holes: its data regions become a pax sparse map,
 * so a sparse image is sent as its data only. */
static int walk_sparse(struct walk *wk, int fd, off_t size)
{
    off_t data = 0, hole, pos = 0;
    la_int64_t off, len;

    while (data < size && (data = lseek(fd, data, SEEK_DATA)) >= 0 && data < size) {
        hole = lseek(fd, data, SEEK_HOLE);
        if (hole < 0) {
            return walk_sys(wk, errno, "seek");
        }
        if (hole > size) {
            hole = size;
        }
        archive_entry_sparse_add_entry(wk->e, data, hole - data);
        data = hole;
    }
    if (data < 0 && errno != ENXIO) { /* ENXIO: no data past the offset */
        return walk_sys(wk, errno, "seek");
    }
    if (archive_entry_sparse_count(wk->e) == 0) {
        archive_entry_sparse_add_entry(wk->e, size, 0); /* all hole: still a sparse entry */
    }
    if (archive_write_header(wk->w, wk->e) < ARCHIVE_WARN) {
        return walk_archive_err(wk);
    }
    /* The writer takes the whole content and keeps the bytes its map says are data. */
    archive_entry_sparse_reset(wk->e);
    while (archive_entry_sparse_next(wk->e, &off, &len) == ARCHIVE_OK) {
        if (walk_hole(wk, off - pos) < 0 || walk_data(wk, fd, off, len) < 0) {
            return -1;
        }
        pos = off + len;
    }
    return walk_hole(wk, size - pos);
}

static int walk_dir(struct walk *wk, int dfd, size_t plen, char *dents);

/* walk_one's @type flag: the entry was already looked at once (its type changed between the
 * directory read and the open). */
#define WALK_RETRY 0x100

/* One directory entry @name of @dfd (@type: its d_type), whose relative name is already in
 * wk->path[0..plen). */
static int walk_one(struct walk *wk, int dfd, const char *name, int type, size_t plen)
{
    struct stat st;
    int fd = -1, rc = -1, open_err = 0;
    int kind = type & ~WALK_RETRY;

    if (kind == DT_REG || kind == DT_DIR) {
        /* Open first and fstat the open file: no second path lookup, and what is archived is
         * what was opened. O_NONBLOCK: a FIFO swapped in meanwhile must not hang us. */
        fd = openat(dfd, name,
                    O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC |
                        (kind == DT_DIR ? O_DIRECTORY : 0));
        open_err = fd < 0 ? errno : 0;
        if (fd < 0 && errno != ELOOP && errno != ENOTDIR && errno != ENXIO) {
            return errno == ENOENT ? 0 : walk_sys(wk, errno, "open"); /* removed meanwhile */
        }
        if (fd >= 0 && fstat(fd, &st) < 0) {
            rc = walk_sys(wk, errno, "stat");
            goto out;
        }
    }
    if (fd < 0 && fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        return errno == ENOENT ? 0 : walk_sys(wk, errno, "stat");
    }
    if (fd < 0 && (S_ISREG(st.st_mode) || S_ISDIR(st.st_mode))) {
        /* Unknown d_type, or replaced since the directory was read: open it as what it is
         * now, once. */
        if ((type & WALK_RETRY) != 0) {
            return walk_sys(wk, open_err != 0 ? open_err : EAGAIN, "open");
        }
        return walk_one(wk, dfd, name, (S_ISREG(st.st_mode) ? DT_REG : DT_DIR) | WALK_RETRY, plen);
    }
    if (S_ISSOCK(st.st_mode)) {
        rc = 0;
        goto out;
    }
    archive_entry_clear(wk->e);
    archive_entry_copy_pathname(wk->e, wk->path);
    walk_entry_stat(wk->e, &st);
    if (S_ISLNK(st.st_mode)) {
        char target[PATH_MAX];
        ssize_t n = readlinkat(dfd, name, target, sizeof(target) - 1);
        if (n < 0) {
            return walk_sys(wk, errno, "readlink");
        }
        target[n] = '\0';
        archive_entry_copy_symlink(wk->e, target);
    }
    if (!S_ISDIR(st.st_mode) && st.st_nlink > 1) {
        struct archive_entry *e = wk->e, *spare = NULL;
        /* For tar the resolver only ever marks a later link of a seen inode (size 0). */
        archive_entry_linkify(wk->lr, &e, &spare);
    }
    if (S_ISREG(st.st_mode) && fd >= 0 && archive_entry_size(wk->e) > 0 &&
        (off_t)st.st_blocks * 512 < st.st_size) {
        rc = walk_sparse(wk, fd, st.st_size);
        goto out;
    }
    if (archive_write_header(wk->w, wk->e) < ARCHIVE_WARN) {
        rc = walk_archive_err(wk);
        goto out;
    }
    if (S_ISREG(st.st_mode) && fd >= 0 && archive_entry_size(wk->e) > 0) {
        rc = walk_data(wk, fd, 0, st.st_size);
    } else if (S_ISDIR(st.st_mode) && fd >= 0) {
        char *dents = malloc(WALK_DENT);
        if (dents == NULL) {
            rc = walk_sys(wk, ENOMEM, "read directory");
            goto out;
        }
        wk->path[plen] = '/';
        wk->path[plen + 1] = '\0';
        rc = walk_dir(wk, fd, plen + 1, dents);
        free(dents);
    } else {
        rc = 0;
    }
out:
    if (fd >= 0) {
        close(fd);
    }
    return rc;
}

/* Archive what directory @dfd holds, its entry names prefixed with wk->path[0..plen);
 * @dents is this level's getdents buffer. */
static int walk_dir(struct walk *wk, int dfd, size_t plen, char *dents)
{
    for (;;) {
        ssize_t n = getdents64(dfd, dents, WALK_DENT);
        if (n < 0) {
            wk->path[plen ? plen - 1 : 0] = '\0';
            return walk_sys(wk, errno, "read directory");
        }
        if (n == 0) {
            return 0;
        }
        for (ssize_t off = 0; off < n;) {
            struct dirent64 *d = (struct dirent64 *)(dents + off);
            size_t nlen = strlen(d->d_name);
            off += d->d_reclen;
            if (strcmp(d->d_name, ".") == 0 || strcmp(d->d_name, "..") == 0) {
                continue;
            }
            if (plen + nlen + 2 > sizeof(wk->path)) {
                wk->path[plen] = '\0';
                return walk_sys(wk, ENAMETOOLONG, "walk");
            }
            memcpy(wk->path + plen, d->d_name, nlen + 1);
            if (walk_one(wk, dfd, d->d_name, d->d_type, plen + nlen) < 0) {
                return -1;
            }
        }
    }
}

/* Walk @local and write every entry below it, named relative to it, to @w. */
static int write_tree(struct archive *w, const char *local, struct sbx_err *err)
{
    struct walk wk = { .w = w, .root = local, .err = err };
    char *dents = NULL;
    int fd = -1, rc = -1;

    wk.e = archive_entry_new();
    wk.lr = archive_entry_linkresolver_new();
    wk.buf = malloc(WALK_BUF);
    dents = malloc(WALK_DENT);
    if (wk.e == NULL || wk.lr == NULL || wk.buf == NULL || dents == NULL) {
        sbx_err_oom(err);
        goto out;
    }
    archive_entry_linkresolver_set_strategy(wk.lr, ARCHIVE_FORMAT_TAR_PAX_INTERCHANGE);
    fd = open(local, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        sbx_err_sys(err, errno, NULL, "open %s", local);
        sbx_err_set_path(err, local);
        goto out;
    }
    rc = walk_dir(&wk, fd, 0, dents);
out:
    if (fd >= 0) {
        close(fd);
    }
    free(dents);
    free(wk.buf);
    if (wk.lr != NULL) {
        archive_entry_linkresolver_free(wk.lr);
    }
    if (wk.e != NULL) {
        archive_entry_free(wk.e);
    }
    return rc;
}

struct tar_sink {
    sbx_tree_out_fn out;
    void *arg;
    struct sbx_err *err;
    bool off; /* the archive failed: what libarchive still writes goes nowhere */
};

static la_ssize_t tar_write(struct archive *ar, void *arg, const void *buf, size_t len)
{
    struct tar_sink *s = arg;

    if (s->off) {
        return (la_ssize_t)len;
    }
    if (s->out(s->arg, buf, len, s->err) < 0) {
        archive_set_error(ar, EPIPE, "%s", s->err->msg);
        return -1;
    }
    return (la_ssize_t)len;
}

static int add_filter(struct archive *w, const char *compress)
{
    if (compress != NULL && strcmp(compress, "gzip") == 0) {
        return archive_write_add_filter_gzip(w);
    }
    if (compress != NULL && strcmp(compress, "zstd") == 0) {
        return archive_write_add_filter_zstd(w);
    }
    return archive_write_add_filter_none(w);
}

int sbx_tree_tar(const char *root, const char *compress, sbx_tree_out_fn out, void *arg,
                 struct sbx_err *err)
{
    struct tar_sink sink = { .out = out, .arg = arg, .err = err };
    struct archive *w = archive_write_new();
    int rc = -1;

    sbx_err_clear(err);
    if (w == NULL || archive_write_set_format_pax(w) != ARCHIVE_OK ||
        add_filter(w, compress) != ARCHIVE_OK ||
        archive_write_set_bytes_per_block(w, (int)SBX_TREE_BLOCK) != ARCHIVE_OK ||
        archive_write_set_bytes_in_last_block(w, 1) != ARCHIVE_OK ||
        archive_write_open(w, &sink, NULL, tar_write, NULL) != ARCHIVE_OK) {
        sbx_err_set(err, SBX_E_INTERNAL, "libarchive: %s", w != NULL ? aerr(w) : "out of memory");
    } else if (write_tree(w, root, err) == 0 && archive_write_close(w) == ARCHIVE_OK) {
        rc = 0;
    } else if (!sbx_err_isset(err)) {
        sbx_err_set(err, "EIO", "%s", aerr(w));
    }
    if (w != NULL) {
        if (rc < 0) {
            /* Closed all the same, into the void: libarchive frees its output buffer only there
             * (after archive_write_fail, archive_write_free leaks it). */
            sink.off = true;
            (void)archive_write_close(w);
        }
        archive_write_free(w);
    }
    return rc;
}

/* --- unpacking a tree ------------------------------------------------------------------------ */

struct untar_src {
    sbx_tree_in_fn in;
    void *arg;
    struct sbx_err *err;
};

static la_ssize_t untar_read(struct archive *ar, void *arg, const void **buf)
{
    struct untar_src *s = arg;
    ssize_t n = s->in(s->arg, buf, s->err);

    if (n < 0) {
        archive_set_error(ar, EIO, "%s", s->err->msg);
    }
    return n;
}

/* Copy every entry of @r onto @disk. Returns 0 at the archive's end, or -1 (@err set when the
 * disk writer failed; the caller names a fault of the archive). */
static int untar_entries(struct archive *r, struct archive *disk, struct sbx_err *err)
{
    struct archive_entry *e;
    int ar;

    while ((ar = archive_read_next_header(r, &e)) == ARCHIVE_OK || ar == ARCHIVE_WARN) {
        const void *buf;
        size_t len;
        la_int64_t off;

        switch (archive_entry_filetype(e)) {
        case AE_IFCHR:
        case AE_IFBLK:
            /* A device node the guest chose is access to this machine's devices (made as root,
             * "mem" or "sda" open to everyone): skipped. */
            continue;
        case AE_IFIFO:
            /* A FIFO would hang whatever reads the downloaded tree here later (grep -r, a backup,
             * an indexer): skipped too. */
            continue;
        default:
            break;
        }
        if (archive_write_header(disk, e) < ARCHIVE_WARN) {
            return sbx_err_set(err, "EIO", "%s", aerr(disk));
        }
        while (archive_entry_size(e) > 0 &&
               (ar = archive_read_data_block(r, &buf, &len, &off)) == ARCHIVE_OK) {
            if (archive_write_data_block(disk, buf, len, off) < ARCHIVE_WARN) {
                return sbx_err_set(err, "EIO", "%s", aerr(disk));
            }
        }
        if (archive_entry_size(e) > 0 && ar != ARCHIVE_EOF) {
            return -1;
        }
    }
    return ar == ARCHIVE_EOF ? 0 : -1;
}

int sbx_tree_untar(const char *dest, sbx_tree_in_fn in, void *arg, struct sbx_err *err)
{
    struct untar_src src = { .in = in, .arg = arg, .err = err };
    struct archive *r = archive_read_new(), *disk = archive_write_disk_new();
    const void *rest;
    ssize_t n = 0;
    int rc = -1, cwd = -1;

    sbx_err_clear(err);
    if (r == NULL || disk == NULL) {
        sbx_err_oom(err);
        goto out;
    }
    archive_read_support_format_tar(r);
    archive_read_support_format_empty(r);
    /* Only the filters sbx asks the agent for ("none" needs none): no other decompressor is
     * linked in or exposed to the archive's bytes. */
    archive_read_support_filter_gzip(r);
    archive_read_support_filter_zstd(r);
    /* Relative names below dest: libarchive's SECURE_* checks refuse absolute names and ".." and
     * never write through a symlink. */
    cwd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (cwd < 0 || chdir(dest) < 0) {
        sbx_err_sys(err, errno, NULL, "cd %s", dest);
        goto out;
    }
    /* No ARCHIVE_EXTRACT_PERM: modes as the umask allows, without set-id or sticky bits (as a
     * user's tar or cp -r makes them), never a set-uid program of the guest's making. */
    archive_write_disk_set_options(disk, ARCHIVE_EXTRACT_TIME | ARCHIVE_EXTRACT_SECURE_SYMLINKS |
                                             ARCHIVE_EXTRACT_SECURE_NODOTDOT |
                                             ARCHIVE_EXTRACT_SECURE_NOABSOLUTEPATHS |
                                             ARCHIVE_EXTRACT_UNLINK);
    if (archive_read_open(r, &src, NULL, untar_read, NULL) != ARCHIVE_OK ||
        untar_entries(r, disk, err) < 0) {
        if (!sbx_err_isset(err)) {
            sbx_err_set(err, SBX_E_BAD_PARAM, "bad archive: %s", aerr(r));
        }
        goto out;
    }
    /* Read to the source's end, so its error (if any) is seen. */
    while ((n = in(arg, &rest, err)) > 0) {
    }
    if (n == 0 && archive_write_close(disk) != ARCHIVE_OK) { /* directory modes and times */
        sbx_err_set(err, "EIO", "%s", aerr(disk));
    } else if (n == 0) {
        rc = 0;
    }
out:
    if (r != NULL) {
        archive_read_free(r);
    }
    if (disk != NULL) {
        archive_write_free(disk);
    }
    if (cwd >= 0) {
        (void)fchdir(cwd); /* back where we were */
        close(cwd);
    }
    return rc;
}

/* --- tree transfers -------------------------------------------------------------------------- */

/* The upload's sink: the stream, hashed as it goes. */
struct up {
    struct sbx_client *c;
    uint32_t sid;
    struct sha256_ctx sha;
    sbx_progress_fn progress;
    void *arg;
    bool failed; /* the stream write failed */
};

static int up_out(void *arg, const void *buf, size_t len, struct sbx_err *err)
{
    struct up *u = arg;

    if (sbx_client_stream_write(u->c, u->sid, buf, len, err) < 0) {
        u->failed = true;
        return -1;
    }
    sha256_update(&u->sha, len, buf);
    if (u->progress != NULL) {
        u->progress(u->arg, len);
    }
    return 0;
}

int sbx_upload_tree(struct sbx_client *c, const char *local, const char *remote,
                    const char *compress, sbx_progress_fn progress, void *arg,
                    struct sbx_transfer_done *d, struct sbx_err *err)
{
    struct up u = { .c = c, .progress = progress, .arg = arg };
    struct sbx_transfer_done own;
    struct sbx_stream_result sr;
    struct sbx_err e;
    uint8_t digest[32];
    char want[65];
    uint32_t id;
    int r;

    r = sbx_transfer_upload_tree(sbx_client_conn(c), remote, compress, false, NULL, NULL, &id, err);
    if (sbx_stream_call(c, r, id, false, &sr, err) < 0) {
        return -1;
    }
    u.sid = sr.stream;
    sha256_init(&u.sha);
    if (sbx_tree_tar(local, compress, up_out, &u, err) < 0) {
        if (!u.failed) {
            (void)sbx_upload_abort(c, u.sid, err, &e); /* the agent reports CANCELLED */
        } else if (strcmp(err->code, SBX_E_STREAM) == 0) {
            /* The agent cancelled the stream: its transfer.done says why. */
            (void)sbx_wait_done(c, u.sid, d != NULL ? d : &own, err);
        }
        return -1;
    }
    sha256_digest(&u.sha, sizeof(digest), digest);
    sbx_hex(digest, sizeof(digest), want);
    return sbx_upload_end(c, u.sid, want, d, err);
}

/* The download's source: the stream's data, credit granted once libarchive is done with it. */
struct down {
    struct sbx_client *c;
    uint32_t sid;
    size_t pending; /* bytes handed out last, to be reported consumed */
    bool ended;
    sbx_progress_fn progress;
    void *arg;
};

static ssize_t down_in(void *arg, const void **buf, struct sbx_err *err)
{
    struct down *dn = arg;
    const uint8_t *p;
    size_t n;
    int r;

    if (dn->pending > 0 && sbx_client_consumed(dn->c, dn->sid, (uint32_t)dn->pending, err) < 0) {
        return -1;
    }
    dn->pending = 0;
    if (dn->ended) {
        return 0;
    }
    /* The data stays valid until the next receive: the next call, after libarchive used it. */
    r = sbx_stream_next(dn->c, dn->sid, &p, &n, err);
    if (r <= 0) {
        dn->ended = r == 0;
        return r;
    }
    dn->pending = n;
    if (dn->progress != NULL) {
        dn->progress(dn->arg, n);
    }
    *buf = p;
    return (ssize_t)n;
}

int sbx_download_tree(struct sbx_client *c, const char *remote, const char *local,
                      const char *compress, sbx_progress_fn progress, void *arg,
                      struct sbx_err *err)
{
    struct down dn = { .c = c, .progress = progress, .arg = arg };
    struct sbx_stream_result sr;
    struct sbx_err e;
    uint32_t id;
    int r;

    r = sbx_transfer_download_tree(sbx_client_conn(c), remote, compress, NULL, NULL, &id, err);
    if (sbx_stream_call(c, r, id, false, &sr, err) < 0) {
        return -1;
    }
    dn.sid = sr.stream;
    if (mkdir(local, 0755) < 0 && errno != EEXIST) {
        r = sbx_err_sys(err, errno, NULL, "mkdir %s", local);
    } else {
        r = sbx_tree_untar(local, down_in, &dn, err);
    }
    if (r < 0) {
        (void)sbx_client_stream_cancel(c, dn.sid, &e); /* a no-op once it ended */
    }
    return r < 0 ? -1 : 0;
}
