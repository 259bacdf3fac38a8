/*
 * sbx cp: copy files and directory trees between the host and the guest (transfer.upload /
 * download, and upload_tree / download_tree with a tar stream made and unpacked here by
 * libarchive). The bytes are checked end to end unless --no-verify: the agent's sha256 of what it
 * wrote must equal ours of what we sent.
 */
#include "cp.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

#include <nettle/sha2.h>

static const char usage[] =
    "usage: sbx cp [options] LOCAL :REMOTE\n"
    "       sbx cp [options] :REMOTE LOCAL\n"
    "\n"
    "Copy a file (or with -r a directory tree) into or out of the sandbox. The side written as\n"
    ":PATH is the guest's. A destination that is a directory, or ends in '/', receives the\n"
    "source under its own name. Uploads land atomically (temporary file, then rename); their size\n"
    "is checked, and their sha256 end to end unless --no-verify.\n"
    "\n"
    "With -r, LOCAL :DIR/ (trailing slash) puts the tree at DIR/<name>, LOCAL :DIR makes DIR the\n"
    "tree (created or merged); :DIR LOCAL into an existing local directory puts it at\n"
    "LOCAL/<name>. Modes, symlinks, hard links and mtimes are kept.\n"
    "\n"
    "options:\n"
    "  -r, --recursive     copy a directory tree (a tar stream underneath)\n"
    "  -z, --compress ALG  tree transfers: none (default), gzip or zstd on the wire\n"
    "  -m, --mode OCTAL    uploads: permission bits of the new file (default: the local file's)\n"
    "  -p, --parents       uploads: create missing parent directories\n"
    "  -n, --no-clobber    uploads: fail if the destination exists\n"
    "      --fsync         uploads: fsync the file and its directory before reporting success\n"
    "      --no-verify     file uploads: no sha256 on either side (the size is still checked);\n"
    "                      hashing is most of an upload's CPU time\n"
    "  -q, --quiet         no progress bar (it is shown only when stderr is a terminal)\n"
    "  -h, --help          this help\n";

/* --- progress ------------------------------------------------------------------------------ */

void cli_progress_start(struct cli_progress *p, const char *label, uint64_t total, bool quiet)
{
    memset(p, 0, sizeof(*p));
    p->label = label;
    p->total = total;
    p->enabled = !quiet && isatty(STDERR_FILENO);
    p->start_ns = cli_now_ns();
}

static void human_bytes(char *buf, size_t n, double v)
{
    static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
    int u = 0;

    while (v >= 1024 && u < 4) {
        v /= 1024;
        u++;
    }
    snprintf(buf, n, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
}

static void progress_draw(struct cli_progress *p, uint64_t now)
{
    char done[32], total[32], rate[32];
    double secs = (double)(now - p->start_ns) / 1e9;

    human_bytes(done, sizeof(done), (double)p->done);
    human_bytes(rate, sizeof(rate), secs > 0 ? (double)p->done / secs : 0);
    if (p->total > 0) {
        int pct = (int)(p->done * 100 / p->total);
        int bars = pct / 5;
        human_bytes(total, sizeof(total), (double)p->total);
        (void)fprintf(stderr, "\r%s [%.*s%*s] %3d%% %s / %s  %s/s\033[K", p->label, bars,
                      "####################", 20 - bars, "", pct > 100 ? 100 : pct, done, total,
                      rate);
    } else {
        (void)fprintf(stderr, "\r%s %s  %s/s\033[K", p->label, done, rate);
    }
    p->drawn = true;
}

void cli_progress_add(struct cli_progress *p, uint64_t n)
{
    uint64_t now;

    p->done += n;
    if (!p->enabled) {
        return;
    }
    now = cli_now_ns();
    /* Only for transfers that take a while, and at most 10 times a second. */
    if (now - p->start_ns < 300000000u || now - p->last_ns < 100000000u) {
        return;
    }
    p->last_ns = now;
    progress_draw(p, now);
}

void cli_progress_end(struct cli_progress *p, bool ok)
{
    if (!p->drawn) {
        return;
    }
    if (ok) {
        progress_draw(p, cli_now_ns());
    }
    (void)fputs(ok ? "\n" : "\r\033[K", stderr);
}

/* --- shared -------------------------------------------------------------------------------- */

struct cp_opts {
    bool recursive, parents, no_clobber, fsync, quiet, no_verify;
    bool has_mode;
    unsigned mode;
    const char *compress;
};

/* The last component of @path ("a/b/" -> "b"), in @buf. */
static const char *base_name(const char *path, char *buf, size_t n)
{
    size_t len = strlen(path);

    while (len > 1 && path[len - 1] == '/') {
        len--;
    }
    snprintf(buf, n, "%.*s", (int)len, path);
    return basename(buf);
}

int cli_wait_done(struct sbx_client *c, uint32_t sid, struct sbx_transfer_done *d,
                  struct sbx_err *err)
{
    for (;;) {
        struct sbx_msg m;
        struct sbx_err e;

        if (sbx_client_recv(c, &m, -1, err) < 0) {
            return -1;
        }
        if (m.kind != SBX_MSG_NOTIFY || !sbx_msg_method_is(&m, SBX_N_TRANSFER_DONE) ||
            sbx_transfer_done_read(m.params, d, &e) < 0 || d->stream != sid) {
            continue;
        }
        if (d->failed) {
            *err = d->error;
            return -1;
        }
        return 0;
    }
}

/* --- files ----------------------------------------------------------------------------------- */

/*
 * SHA-256 on a thread of its own, beside the reads and sends: hashing costs more CPU than both.
 * One block at a time; hasher_put waits until the previous block is hashed, so with two buffers
 * in turn a buffer is never read into while it is still being hashed.
 */
struct hasher {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct sha256_ctx sha;
    const uint8_t *block;
    size_t len;
    bool busy, quit, started;
};

static void *hasher_main(void *arg)
{
    struct hasher *h = arg;

    pthread_mutex_lock(&h->mu);
    for (;;) {
        while (!h->busy && !h->quit) {
            pthread_cond_wait(&h->cv, &h->mu);
        }
        if (!h->busy) {
            break;
        }
        pthread_mutex_unlock(&h->mu);
        sha256_update(&h->sha, h->len, h->block);
        pthread_mutex_lock(&h->mu);
        h->busy = false;
        pthread_cond_broadcast(&h->cv);
    }
    pthread_mutex_unlock(&h->mu);
    return NULL;
}

/* Start the thread; without one (it could not start), hasher_put hashes inline. */
static void hasher_start(struct hasher *h)
{
    memset(h, 0, sizeof(*h));
    sha256_init(&h->sha);
    pthread_mutex_init(&h->mu, NULL);
    pthread_cond_init(&h->cv, NULL);
    h->started = pthread_create(&h->thread, NULL, hasher_main, h) == 0;
}

/* Wait until the block before is hashed, then hand over @block (kept unchanged until the next
 * hasher_put or hasher_finish). */
static void hasher_put(struct hasher *h, const uint8_t *block, size_t len)
{
    if (!h->started) {
        sha256_update(&h->sha, len, block);
        return;
    }
    pthread_mutex_lock(&h->mu);
    while (h->busy) {
        pthread_cond_wait(&h->cv, &h->mu);
    }
    h->block = block;
    h->len = len;
    h->busy = true;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

/* Hash what is pending, stop the thread, and write the digest (lowercase hex) to @hex. */
static void hasher_finish(struct hasher *h, char hex[65])
{
    uint8_t d[32];

    if (h->started) {
        pthread_mutex_lock(&h->mu);
        h->quit = true;
        pthread_cond_broadcast(&h->cv);
        pthread_mutex_unlock(&h->mu);
        pthread_join(h->thread, NULL); /* it hashes the pending block first */
    }
    pthread_mutex_destroy(&h->mu);
    pthread_cond_destroy(&h->cv);
    sha256_digest(&h->sha, sizeof(d), d);
    sbx_hex(d, sizeof(d), hex);
}

static int start_upload(struct sbx_client *c, const char *remote, const struct cp_opts *o,
                        unsigned mode, uint64_t size, uint32_t *sid, struct sbx_err *err)
{
    msgpack_packer *pk;
    uint32_t id;

    pk = sbx_client_begin(c, SBX_M_TRANSFER_UPLOAD, &id);
    msgpack_pack_map(pk, 7);
    sbx_pack_kv_str(pk, "path", remote);
    sbx_pack_kv_bool(pk, "hash", !o->no_verify);
    sbx_pack_kv_u64(pk, "mode", mode);
    sbx_pack_kv_bool(pk, "parents", o->parents);
    sbx_pack_kv_bool(pk, "overwrite", !o->no_clobber);
    sbx_pack_kv_bool(pk, "fsync", o->fsync);
    sbx_pack_kv_u64(pk, "size", size);
    return cli_rpc_stream(c, id, sid, err);
}

static int upload_file(struct sbx_client *c, const char *local, const char *remote,
                       const struct cp_opts *o)
{
    struct hasher h;
    struct cli_progress prog;
    struct sbx_err err;
    struct sbx_transfer_done done;
    struct stat st;
    char dest[PATH_MAX + NAME_MAX + 2], bbuf[PATH_MAX], want[65];
    uint32_t sid;
    uint8_t *bufs, *buf;
    unsigned k = 0;
    int fd, rc;

    fd = open(local, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) < 0) {
        (void)fprintf(stderr, "sbx: cp: %s: %s\n", local, strerror(errno));
        if (fd >= 0) {
            close(fd);
        }
        return CLI_EXIT_FAIL;
    }
    if (S_ISDIR(st.st_mode)) {
        (void)fprintf(stderr, "sbx: cp: %s is a directory (use -r)\n", local);
        close(fd);
        return CLI_EXIT_FAIL;
    }
    snprintf(dest, sizeof(dest), "%s", remote);
    if (dest[0] == '\0' || dest[strlen(dest) - 1] == '/') {
        snprintf(dest, sizeof(dest), "%s%s", remote, base_name(local, bbuf, sizeof(bbuf)));
    }
    sbx_err_clear(&err);
    rc = start_upload(c, dest, o, o->has_mode ? o->mode : st.st_mode & 07777, (uint64_t)st.st_size,
                      &sid, &err);
    if (rc < 0 && strcmp(err.code, "EISDIR") == 0 && dest[strlen(dest) - 1] != '/') {
        /* An existing remote directory: copy into it, as cp does. */
        snprintf(dest, sizeof(dest), "%s/%s", remote, base_name(local, bbuf, sizeof(bbuf)));
        sbx_err_clear(&err);
        rc = start_upload(c, dest, o, o->has_mode ? o->mode : st.st_mode & 07777,
                          (uint64_t)st.st_size, &sid, &err);
    }
    if (rc < 0) {
        cli_print_err("cp", &err);
        close(fd);
        return CLI_EXIT_FAIL;
    }
    bufs = malloc(2 * (size_t)CLI_CP_BUF); /* two in turn: one is hashed while the next is read */
    if (bufs == NULL) {
        close(fd);
        return CLI_EXIT_FAIL;
    }
    if (!o->no_verify) {
        hasher_start(&h);
    }
    cli_progress_start(&prog, "upload", (uint64_t)st.st_size, o->quiet);
    for (;;) {
        ssize_t n;
        buf = bufs + (size_t)k * CLI_CP_BUF;
        n = read(fd, buf, CLI_CP_BUF);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            int e = errno;
            msgpack_packer *pk = sbx_client_begin_notify(c, SBX_N_STREAM_END);
            msgpack_pack_map(pk, 2);
            sbx_pack_kv_u64(pk, "stream", sid);
            sbx_pack_cstr(pk, "error");
            sbx_err_sys(&err, e, NULL, "read %s", local);
            sbx_pack_err(pk, &err);
            (void)sbx_client_send(c, &err); /* the read error is what we report */
            sbx_err_sys(&err, e, NULL, "read %s", local);
            rc = -1;
            break;
        }
        if (n == 0) {
            rc = sbx_client_stream_end(c, sid, &err);
            break;
        }
        if (!o->no_verify) {
            hasher_put(&h, buf, (size_t)n);
        }
        if (sbx_client_stream_write(c, sid, buf, (size_t)n, &err) < 0) {
            /* A cancel (for example ENOSPC) is explained by the transfer.done that follows. */
            rc = strcmp(err.code, SBX_E_STREAM) == 0 ? 0 : -1;
            break;
        }
        cli_progress_add(&prog, (uint64_t)n);
        k ^= 1; /* only after a block went to the hasher: the other buffer is free then */
    }
    if (!o->no_verify) {
        hasher_finish(&h, want);
    }
    free(bufs);
    close(fd);
    if (rc == 0) {
        rc = cli_wait_done(c, sid, &done, &err);
    }
    if (rc == 0 && !o->no_verify) {
        if (done.sha256[0] == '\0') {
            sbx_err_param(&err, "sha256", "missing required parameter \"sha256\"");
            rc = -1;
        } else if (strcmp(done.sha256, want) != 0) {
            sbx_err_set(&err, SBX_E_INTERNAL, "%s: the guest wrote sha256 %s, we sent %s", dest,
                        done.sha256, want);
            rc = -1;
        }
    }
    cli_progress_end(&prog, rc == 0);
    if (rc < 0) {
        cli_print_err("cp", &err);
        return CLI_EXIT_FAIL;
    }
    return 0;
}

/* Read out stream @sid into @fd until its end. Returns 0, or -1 with @err. */
int cli_recv_stream(struct sbx_client *c, uint32_t sid, int fd, struct cli_progress *prog,
                    struct sbx_err *err)
{
    struct sbx_msg m;

    for (;;) {
        if (sbx_client_recv(c, &m, -1, err) < 0) {
            return -1;
        }
        if (m.kind == SBX_MSG_DATA && m.stream == sid) {
            int rc = cli_write_all(fd, m.data, m.data_len);
            if (rc < 0) {
                (void)sbx_client_stream_cancel(c, sid, err);
                return sbx_err_sys(err, -rc, NULL, "write");
            }
            cli_progress_add(prog, m.data_len);
            if (sbx_client_consumed(c, sid, m.data_len, err) < 0) {
                return -1;
            }
        } else if (m.kind == SBX_MSG_NOTIFY && sbx_msg_method_is(&m, SBX_N_STREAM_END)) {
            uint64_t s;
            const msgpack_object *e;
            if (sbx_param_u64(m.params, "stream", SBX_REQUIRED, 0, UINT32_MAX, &s, err) < 0 ||
                s != sid) {
                continue;
            }
            e = sbx_obj_get(m.params, "error");
            if (e != NULL && e->type != MSGPACK_OBJECT_NIL) {
                sbx_err_from_obj(e, err);
                return -1;
            }
            return 0;
        }
    }
}

static int download_file(struct sbx_client *c, const char *remote, const char *local,
                         const struct cp_opts *o)
{
    char dest[PATH_MAX + NAME_MAX + 2], tmp[PATH_MAX + NAME_MAX + 32], bbuf[PATH_MAX];
    struct cli_progress prog;
    struct sbx_err err;
    struct sbx_msg resp;
    struct stat st;
    msgpack_packer *pk;
    uint64_t sid, size, mode;
    uint32_t id;
    int fd, rc;

    sbx_err_clear(&err);
    pk = sbx_client_begin(c, SBX_M_TRANSFER_DOWNLOAD, &id);
    msgpack_pack_map(pk, 1);
    sbx_pack_kv_str(pk, "path", remote);
    if (sbx_client_send(c, &err) < 0 || sbx_client_wait(c, id, &resp, -1, &err) < 0 ||
        sbx_param_u64(resp.result, "stream", SBX_REQUIRED, 1, UINT32_MAX, &sid, &err) < 0 ||
        sbx_param_u64(resp.result, "size", SBX_REQUIRED, 0, UINT64_MAX, &size, &err) < 0 ||
        sbx_param_u64(resp.result, "mode", SBX_REQUIRED, 0, UINT32_MAX, &mode, &err) < 0) {
        cli_print_err("cp", &err);
        return CLI_EXIT_FAIL;
    }
    snprintf(dest, sizeof(dest), "%s", local);
    if (stat(local, &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(dest, sizeof(dest), "%s/%s", local, base_name(remote, bbuf, sizeof(bbuf)));
    }
    /* Into a temporary file beside the destination, renamed when complete. */
    {
        char dbuf[PATH_MAX + NAME_MAX + 2];
        snprintf(dbuf, sizeof(dbuf), "%s", dest);
        snprintf(tmp, sizeof(tmp), "%s/.%s.sbx-XXXXXX", dirname(dbuf),
                 base_name(dest, bbuf, sizeof(bbuf)));
    }
    fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        (void)fprintf(stderr, "sbx: cp: %s: %s\n", dest, strerror(errno));
        (void)sbx_client_stream_cancel(c, (uint32_t)sid, &err);
        return CLI_EXIT_FAIL;
    }
    cli_progress_start(&prog, "download", size, o->quiet);
    rc = cli_recv_stream(c, (uint32_t)sid, fd, &prog, &err);
    if (rc == 0 && fchmod(fd, (mode_t)(mode & 07777)) < 0) {
        rc = sbx_err_sys(&err, errno, NULL, "chmod %s", tmp);
    }
    if (close(fd) < 0 && rc == 0) {
        rc = sbx_err_sys(&err, errno, NULL, "close %s", tmp);
    }
    if (rc == 0 && rename(tmp, dest) < 0) {
        rc = sbx_err_sys(&err, errno, NULL, "rename onto %s", dest);
    }
    cli_progress_end(&prog, rc == 0);
    if (rc < 0) {
        (void)unlink(tmp);
        cli_print_err("cp", &err);
        return CLI_EXIT_FAIL;
    }
    return 0;
}

/* --- the command ------------------------------------------------------------------------------ */

int cli_cmd_cp(struct cli *cli, int argc, char **argv)
{
    /* clang-format off */
    static const struct option opts[] = {
        { "recursive", no_argument, NULL, 'r' },
        { "compress", required_argument, NULL, 'z' },
        { "mode", required_argument, NULL, 'm' },
        { "parents", no_argument, NULL, 'p' },
        { "no-clobber", no_argument, NULL, 'n' },
        { "fsync", no_argument, NULL, 'F' },
        { "no-verify", no_argument, NULL, 'V' },
        { "quiet", no_argument, NULL, 'q' },
        CLI_OPTS_END,
    };
    /* clang-format on */
    struct cp_opts o = { .compress = "none" };
    struct sbx_client *c;
    const char *src, *dst;
    int opt, rc;

    while ((opt = cli_getopt(cli, argc, argv, "+rz:m:pnqh", opts, usage)) > 0) {
        switch (opt) {
        case 'r':
            o.recursive = true;
            break;
        case 'z':
            o.compress = optarg;
            break;
        case 'm': {
            char *end;
            unsigned long v = strtoul(optarg, &end, 8);
            if (*optarg == '\0' || *end != '\0' || v > 07777) {
                (void)fprintf(stderr, "sbx: cp: bad mode %s (octal, at most 7777)\n", optarg);
                return CLI_EXIT_USAGE;
            }
            o.mode = (unsigned)v;
            o.has_mode = true;
            break;
        }
        case 'p':
            o.parents = true;
            break;
        case 'n':
            o.no_clobber = true;
            break;
        case 'F':
            o.fsync = true;
            break;
        case 'V':
            o.no_verify = true;
            break;
        default: /* 'q' */
            o.quiet = true;
            break;
        }
    }
    if (opt < 0) {
        return cli_opts_status(opt);
    }
    if (argc - optind != 2) {
        (void)fputs(usage, stderr);
        return CLI_EXIT_USAGE;
    }
    src = argv[optind];
    dst = argv[optind + 1];
    if ((src[0] == ':') == (dst[0] == ':')) {
        (void)fprintf(stderr, "sbx: cp: exactly one of the two paths must be remote (:PATH)\n");
        return CLI_EXIT_USAGE;
    }
    if (strcmp(o.compress, "none") != 0 && strcmp(o.compress, "gzip") != 0 &&
        strcmp(o.compress, "zstd") != 0) {
        (void)fprintf(stderr, "sbx: cp: --compress takes none, gzip or zstd\n");
        return CLI_EXIT_USAGE;
    }
    c = cli_connect(cli);
    if (c == NULL) {
        return CLI_EXIT_FAIL;
    }
    if (o.recursive) {
        rc = src[0] == ':' ? cli_cp_download_tree(c, src + 1, dst, o.compress, o.quiet)
                           : cli_cp_upload_tree(c, src, dst + 1, o.compress, o.quiet);
    } else {
        rc = src[0] == ':' ? download_file(c, src + 1, dst, &o) : upload_file(c, src, dst + 1, &o);
    }
    sbx_client_close(c);
    return rc;
}
