/*
 * sbx cp -r: directory trees as tar streams (transfer.upload_tree / download_tree). The host
 * side of the tar is libarchive too: read_disk walks the local tree (symlinks stored, not
 * followed; hard links kept), and write_disk unpacks with its SECURE_* checks, since the guest's
 * archive is not trusted either.
 */
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
    struct sbx_msg resp;
    msgpack_packer *pk;
    uint64_t v;
    uint32_t id;

    pk = sbx_client_begin(c, method, &id);
    msgpack_pack_map(pk, 2);
    sbx_pack_kv_str(pk, "path", path);
    sbx_pack_kv_str(pk, "compress", compress);
    if (sbx_client_send(c, err) < 0 || sbx_client_wait(c, id, &resp, -1, err) < 0 ||
        sbx_param_u64(resp.result, "stream", SBX_REQUIRED, 1, UINT32_MAX, &v, err) < 0) {
        return -1;
    }
    *sid = (uint32_t)v;
    return 0;
}

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

/* Walk @local and write every entry below it, named relative to it, to @w. */
static int write_tree(struct archive *w, const char *local, struct sbx_err *err)
{
    struct archive *disk = archive_read_disk_new();
    struct archive_entry_linkresolver *lr = archive_entry_linkresolver_new();
    struct archive_entry *e = NULL, *sparse = NULL;
    size_t plen = strlen(local);
    int rc = -1, r;
    static char buf[1 << 16];

    while (plen > 1 && local[plen - 1] == '/') {
        plen--;
    }
    if (disk == NULL || lr == NULL) {
        sbx_err_set(err, SBX_E_INTERNAL, "out of memory");
        goto out;
    }
    archive_entry_linkresolver_set_strategy(lr, ARCHIVE_FORMAT_TAR_PAX_INTERCHANGE);
    archive_read_disk_set_symlink_physical(disk);
    /* Modes, owners, times and links only: ACLs, xattrs and file flags are not carried, and
     * reading them costs several system calls per file. */
    archive_read_disk_set_behavior(disk, ARCHIVE_READDISK_NO_ACL | ARCHIVE_READDISK_NO_XATTR |
                                             ARCHIVE_READDISK_NO_FFLAGS);
    if (archive_read_disk_open(disk, local) != ARCHIVE_OK) {
        sbx_err_set(err, "EIO", "%s: %s", local, archive_error_string(disk));
        goto out;
    }
    for (;;) {
        const char *p;
        e = archive_entry_new();
        r = archive_read_next_header2(disk, e);
        if (r == ARCHIVE_EOF) {
            archive_entry_free(e);
            e = NULL;
            break;
        }
        if (r < ARCHIVE_WARN) {
            sbx_err_set(err, "EIO", "%s", archive_error_string(disk));
            goto out;
        }
        (void)archive_read_disk_descend(disk); /* no-op for non-directories */
        p = archive_entry_pathname(e);
        if (strlen(p) <= plen) { /* the root itself */
            archive_entry_free(e);
            continue;
        }
        archive_entry_copy_pathname(e, p + plen + 1);
        archive_entry_set_uname(e, NULL);
        archive_entry_set_gname(e, NULL);
        if (archive_entry_filetype(e) == AE_IFSOCK) {
            archive_entry_free(e);
            continue;
        }
        archive_entry_linkify(lr, &e, &sparse);
        if (e == NULL) {
            continue;
        }
        if (archive_write_header(w, e) < ARCHIVE_WARN) {
            sbx_err_set(err, "EIO", "%s", archive_error_string(w));
            goto out;
        }
        if (archive_entry_size(e) > 0) {
            la_ssize_t n;
            while ((n = archive_read_data(disk, buf, sizeof(buf))) > 0) {
                if (archive_write_data(w, buf, (size_t)n) < 0) {
                    sbx_err_set(err, "EIO", "%s", archive_error_string(w));
                    goto out;
                }
            }
            if (n < 0) {
                sbx_err_set(err, "EIO", "%s: %s", archive_entry_pathname(e),
                            archive_error_string(disk));
                goto out;
            }
        }
        archive_entry_free(e);
        e = NULL;
    }
    rc = 0;
out:
    if (e != NULL) {
        archive_entry_free(e);
    }
    if (lr != NULL) {
        archive_entry_linkresolver_free(lr);
    }
    if (disk != NULL) {
        archive_read_free(disk);
    }
    return rc;
}

int cli_cp_upload_tree(struct sbx_client *c, const char *local, const char *remote,
                       const char *compress, bool quiet)
{
    char dest[PATH_MAX + NAME_MAX + 2], bbuf[PATH_MAX];
    struct tree_io io = { .c = c };
    struct archive *w = NULL;
    struct sbx_msg m;
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
    if (cli_tree_request(c, "transfer.upload_tree", dest, compress, &io.sid, &io.err) < 0) {
        cli_print_err("cp", &io.err);
        return CLI_EXIT_FAIL;
    }
    sha256_init(&io.sha);
    cli_progress_start(&io.prog, "upload", 0, quiet);
    w = archive_write_new();
    if (w == NULL || archive_write_set_format_pax(w) != ARCHIVE_OK ||
        add_filter_write(w, compress) != ARCHIVE_OK ||
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
            pk = sbx_client_begin_notify(c, "stream.end");
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
        cli_wait_done(c, io.sid, &m, &io.err) < 0) {
        goto out;
    }
    sha256_digest(&io.sha, sizeof(d), d);
    sbx_hex(d, sizeof(d), want);
    {
        const char *s;
        size_t n;
        if (sbx_param_str(m.params, "sha256", SBX_REQUIRED, 64, &s, &n, &io.err) < 0 || n != 64 ||
            memcmp(s, want, 64) != 0) {
            sbx_err_set(&io.err, SBX_E_INTERNAL, "the guest received other bytes than we sent");
            goto out;
        }
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
        struct sbx_msg dm;
        (void)cli_wait_done(c, io.sid, &dm, &io.err);
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
            if (strcmp(io->err.code, SBX_E_BAD_MESSAGE) == 0) {
                continue;
            }
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
        if (m.kind == SBX_MSG_NOTIFY && sbx_msg_method_is(&m, "stream.end")) {
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
    if (cli_tree_request(c, "transfer.download_tree", remote, compress, &io.sid, &io.err) < 0) {
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
    archive_read_support_filter_all(r);
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
