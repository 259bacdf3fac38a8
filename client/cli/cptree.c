/*
 * sbx cp -r: directory trees as tar streams (transfer.upload_tree / download_tree). The host
 * side of the tar is libarchive too: an upload walks the local tree itself (symlinks stored, not
 * followed; hard links kept; holes kept as pax sparse maps) and libarchive writes the pax
 * archive; a download unpacks with write_disk and its SECURE_* checks, since the guest's archive
 * is not trusted either.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>

#include "cli.h"
#include "cp.h"

#include <nettle/sha2.h>

struct tree_io {
    struct sbx_client *c;
    uint32_t sid;
    struct sha256_ctx sha;
    struct cli_progress prog;
    struct sbx_err err;
    bool failed;
    /* download: the payload libarchive is reading, and how much of it to grant back */
    uint8_t *buf;
    size_t cap;
    uint32_t pending_grant;
    bool ended;
};

static const char *compress_name_ok(const char *compress)
{
    return compress != NULL ? compress : "none";
}

static int add_filter_write(struct archive *ar, const char *compress)
{
    if (strcmp(compress, "gzip") == 0) {
        return archive_write_add_filter_gzip(ar);
    }
    if (strcmp(compress, "zstd") == 0) {
        return archive_write_add_filter_zstd(ar);
    }
    return archive_write_add_filter_none(ar);
}

int cli_tree_request(struct sbx_client *c, const char *method, const char *path,
                     const char *compress, uint32_t *sid, struct sbx_err *err)
{
    msgpack_packer *pk;
    uint32_t id;

    pk = sbx_client_begin(c, method, &id);
    msgpack_pack_map(pk, 2);
    sbx_pack_kv_str(pk, "path", path);
    sbx_pack_kv_str(pk, "compress", compress);
    return cli_rpc_stream(c, id, sid, err);
}

/* The archive goes out in blocks of this size (default: tar's 10 KiB, a frame and a system
 * call each). */
#define UP_BLOCK SBX_STREAM_CHUNK_MAX

static la_ssize_t up_write_cb(struct archive *ar, void *arg, const void *buf, size_t len)
{
    struct tree_io *io = arg;

    if (sbx_client_stream_write(io->c, io->sid, buf, len, &io->err) < 0) {
        io->failed = true;
        archive_set_error(ar, EPIPE, "%s", io->err.msg);
        return -1;
    }
    sha256_update(&io->sha, len, buf);
    cli_progress_add(&io->prog, len);
    return (la_ssize_t)len;
}

/*
 * The local side of an upload: a walk of our own (openat/getdents/fstat relative to the parent
 * directory's fd, one read per small file into one reused buffer) rather than libarchive's
 * read_disk, which costs ~18 system calls per file (chdir back and forth, six lseeks looking for
 * holes, fcntl) where this costs four; libarchive still writes the pax archive.
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
    /* The stream's own failure (io.err, set by up_write_cb) is the better message. */
    if (wk->err->code[0] == '\0') {
        sbx_err_set(wk->err, "EIO", "%s: %s", wk->path, archive_error_string(wk->w));
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
        sbx_err_set(err, SBX_E_INTERNAL, "out of memory");
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

int cli_cp_upload_tree(struct sbx_client *c, const char *local, const char *remote,
                       const char *compress, bool quiet)
{
    char dest[PATH_MAX + NAME_MAX + 2], bbuf[PATH_MAX];
    struct tree_io io = { .c = c };
    struct archive *w = NULL;
    struct sbx_transfer_done done;
    struct stat st;
    msgpack_packer *pk;
    uint8_t d[32];
    char want[65];
    int rc = -1;

    compress = compress_name_ok(compress);
    sbx_err_clear(&io.err);
    if (stat(local, &st) < 0 || !S_ISDIR(st.st_mode)) {
        (void)fprintf(stderr, "sbx: cp: %s: %s\n", local,
                      errno != 0 && !S_ISDIR(st.st_mode) ? strerror(errno) : "not a directory");
        return CLI_EXIT_FAIL;
    }
    /* "dir/" receives the tree under its own name; anything else is the tree's new name. */
    snprintf(dest, sizeof(dest), "%s", remote);
    if (remote[0] != '\0' && remote[strlen(remote) - 1] == '/') {
        snprintf(bbuf, sizeof(bbuf), "%s", local);
        snprintf(dest, sizeof(dest), "%s%s", remote, basename(bbuf));
    }
    if (cli_tree_request(c, SBX_M_TRANSFER_UPLOAD_TREE, dest, compress, &io.sid, &io.err) < 0) {
        cli_print_err("cp", &io.err);
        return CLI_EXIT_FAIL;
    }
    sha256_init(&io.sha);
    cli_progress_start(&io.prog, "upload", 0, quiet);
    w = archive_write_new();
    if (w == NULL || archive_write_set_format_pax(w) != ARCHIVE_OK ||
        add_filter_write(w, compress) != ARCHIVE_OK ||
        archive_write_set_bytes_per_block(w, (int)UP_BLOCK) != ARCHIVE_OK ||
        archive_write_set_bytes_in_last_block(w, 1) != ARCHIVE_OK ||
        archive_write_open(w, &io, NULL, up_write_cb, NULL) != ARCHIVE_OK) {
        sbx_err_set(&io.err, SBX_E_INTERNAL, "libarchive: %s",
                    w != NULL ? archive_error_string(w) : "out of memory");
        goto out;
    }
    if (write_tree(w, local, &io.err) < 0 || archive_write_close(w) != ARCHIVE_OK) {
        if (!io.failed && io.err.code[0] == '\0') {
            sbx_err_set(&io.err, "EIO", "%s", archive_error_string(w));
        }
        if (!io.failed) {
            /* Tell the agent the archive is incomplete; it reports CANCELLED. */
            pk = sbx_client_begin_notify(c, SBX_N_STREAM_END);
            msgpack_pack_map(pk, 2);
            sbx_pack_kv_u64(pk, "stream", io.sid);
            sbx_pack_cstr(pk, "error");
            sbx_pack_err(pk, &io.err);
            struct sbx_err e2;
            (void)sbx_client_send(c, &e2); /* the local failure is what we report */
        }
        goto out;
    }
    if (sbx_client_stream_end(c, io.sid, &io.err) < 0 ||
        cli_wait_done(c, io.sid, &done, &io.err) < 0) {
        goto out;
    }
    sha256_digest(&io.sha, sizeof(d), d);
    sbx_hex(d, sizeof(d), want);
    if (done.sha256[0] == '\0') {
        sbx_err_param(&io.err, "sha256", "missing required parameter \"sha256\"");
        goto out;
    }
    if (memcmp(done.sha256, want, 64) != 0) {
        sbx_err_set(&io.err, SBX_E_INTERNAL, "the guest received other bytes than we sent");
        goto out;
    }
    rc = 0;
out:
    if (w != NULL) {
        if (rc < 0) {
            archive_write_fail(w);
        }
        archive_write_free(w);
    }
    if (rc < 0 && io.failed && strcmp(io.err.code, SBX_E_STREAM) == 0) {
        /* The agent cancelled the stream: its transfer.done says why. */
        (void)cli_wait_done(c, io.sid, &done, &io.err);
    }
    cli_progress_end(&io.prog, rc == 0);
    if (rc < 0) {
        cli_print_err("cp", &io.err);
        return CLI_EXIT_FAIL;
    }
    return 0;
}

/* libarchive pulls the guest's tar through this: the next data message of the stream. */
static la_ssize_t down_read_cb(struct archive *ar, void *arg, const void **out)
{
    struct tree_io *io = arg;
    struct sbx_msg m;

    /* The previous buffer is done with: let the agent send that much more. */
    if (io->pending_grant > 0) {
        if (sbx_client_consumed(io->c, io->sid, io->pending_grant, &io->err) < 0) {
            io->failed = true;
            return -1;
        }
        io->pending_grant = 0;
    }
    if (io->ended) {
        return 0;
    }
    for (;;) {
        if (sbx_client_recv(io->c, &m, -1, &io->err) < 0) {
            io->failed = true;
            archive_set_error(ar, EIO, "%s", io->err.msg);
            return -1;
        }
        if (m.kind == SBX_MSG_DATA && m.stream == io->sid) {
            if (m.data_len > io->cap) {
                uint8_t *nb = realloc(io->buf, m.data_len);
                if (nb == NULL) {
                    archive_set_error(ar, ENOMEM, "out of memory");
                    return -1;
                }
                io->buf = nb;
                io->cap = m.data_len;
            }
            memcpy(io->buf, m.data, m.data_len);
            io->pending_grant = m.data_len;
            cli_progress_add(&io->prog, m.data_len);
            *out = io->buf;
            return (la_ssize_t)m.data_len;
        }
        if (m.kind == SBX_MSG_NOTIFY && sbx_msg_method_is(&m, SBX_N_STREAM_END)) {
            uint64_t s;
            const msgpack_object *e;
            if (sbx_param_u64(m.params, "stream", SBX_REQUIRED, 0, UINT32_MAX, &s, &io->err) < 0 ||
                s != io->sid) {
                continue;
            }
            io->ended = true;
            e = sbx_obj_get(m.params, "error");
            if (e != NULL && e->type != MSGPACK_OBJECT_NIL) {
                sbx_err_from_obj(e, &io->err);
                io->failed = true;
                archive_set_error(ar, EIO, "%s", io->err.msg);
                return -1;
            }
            return 0;
        }
    }
}

int cli_cp_download_tree(struct sbx_client *c, const char *remote, const char *local,
                         const char *compress, bool quiet)
{
    char dest[PATH_MAX + NAME_MAX + 2], bbuf[PATH_MAX];
    struct tree_io io = { .c = c };
    struct archive *r = NULL, *disk = NULL;
    struct archive_entry *e;
    struct stat st;
    int rc = -1, ar, cwd = -1;

    compress = compress_name_ok(compress);
    sbx_err_clear(&io.err);
    snprintf(dest, sizeof(dest), "%s", local);
    if (stat(local, &st) == 0 && S_ISDIR(st.st_mode)) {
        size_t n;
        snprintf(bbuf, sizeof(bbuf), "%s", remote);
        n = strlen(bbuf);
        while (n > 1 && bbuf[n - 1] == '/') {
            bbuf[--n] = '\0';
        }
        snprintf(dest, sizeof(dest), "%s/%s", local, basename(bbuf));
    }
    if (cli_tree_request(c, SBX_M_TRANSFER_DOWNLOAD_TREE, remote, compress, &io.sid, &io.err) < 0) {
        cli_print_err("cp", &io.err);
        return CLI_EXIT_FAIL;
    }
    if (mkdir(dest, 0755) < 0 && errno != EEXIST) {
        sbx_err_sys(&io.err, errno, NULL, "mkdir %s", dest);
        (void)sbx_client_stream_cancel(c, io.sid, &io.err);
        cli_print_err("cp", &io.err);
        return CLI_EXIT_FAIL;
    }
    cli_progress_start(&io.prog, "download", 0, quiet);
    r = archive_read_new();
    disk = archive_write_disk_new();
    if (r == NULL || disk == NULL) {
        sbx_err_set(&io.err, SBX_E_INTERNAL, "out of memory");
        goto out;
    }
    archive_read_support_format_tar(r);
    archive_read_support_format_empty(r);
    /* Only the filters sbx asks the agent for ("none" needs none): no other decompressor is
     * linked in or exposed to the guest's bytes. */
    archive_read_support_filter_gzip(r);
    archive_read_support_filter_zstd(r);
    /* Relative names below dest: libarchive's SECURE_* checks refuse absolute names and ".." and
     * never write through a symlink. */
    cwd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (cwd < 0 || chdir(dest) < 0) {
        sbx_err_sys(&io.err, errno, NULL, "cd %s", dest);
        goto out;
    }
    archive_write_disk_set_options(
        disk, ARCHIVE_EXTRACT_TIME | ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_SECURE_SYMLINKS |
                  ARCHIVE_EXTRACT_SECURE_NODOTDOT | ARCHIVE_EXTRACT_SECURE_NOABSOLUTEPATHS |
                  ARCHIVE_EXTRACT_UNLINK);
    if (archive_read_open(r, &io, NULL, down_read_cb, NULL) != ARCHIVE_OK) {
        goto fail_ar;
    }
    while ((ar = archive_read_next_header(r, &e)) == ARCHIVE_OK || ar == ARCHIVE_WARN) {
        if (archive_write_header(disk, e) < ARCHIVE_WARN) {
            sbx_err_set(&io.err, "EIO", "%s", archive_error_string(disk));
            goto out;
        }
        if (archive_entry_size(e) > 0) {
            const void *buf;
            size_t len;
            la_int64_t off;
            while ((ar = archive_read_data_block(r, &buf, &len, &off)) == ARCHIVE_OK) {
                if (archive_write_data_block(disk, buf, len, off) < ARCHIVE_WARN) {
                    sbx_err_set(&io.err, "EIO", "%s", archive_error_string(disk));
                    goto out;
                }
            }
            if (ar != ARCHIVE_EOF) {
                goto fail_ar;
            }
        }
    }
    if (ar != ARCHIVE_EOF) {
        goto fail_ar;
    }
    /* Read to the stream's end, so its error (if any) is seen. */
    {
        const void *b;
        while (down_read_cb(r, &io, &b) > 0) {
        }
        if (io.failed) {
            goto out;
        }
    }
    if (archive_write_close(disk) != ARCHIVE_OK) { /* directory modes and times */
        sbx_err_set(&io.err, "EIO", "%s", archive_error_string(disk));
        goto out;
    }
    rc = 0;
    goto out;
fail_ar:
    if (!io.failed) {
        sbx_err_set(&io.err, SBX_E_BAD_PARAM, "archive from the guest: %s",
                    archive_error_string(r) ? archive_error_string(r) : "malformed");
    }
out:
    if (rc < 0 && !io.ended) {
        struct sbx_err e2;
        (void)sbx_client_stream_cancel(c, io.sid, &e2);
    }
    if (r != NULL) {
        archive_read_free(r);
    }
    if (disk != NULL) {
        archive_write_free(disk);
    }
    if (cwd >= 0) {
        (void)fchdir(cwd); /* back where we were; nothing else uses the cwd afterwards */
        close(cwd);
    }
    free(io.buf);
    cli_progress_end(&io.prog, rc == 0);
    if (rc < 0) {
        cli_print_err("cp", &io.err);
        return CLI_EXIT_FAIL;
    }
    return 0;
}
