/*
 * sbx cp: copy files and directory trees between the host and the guest. The transfers are
 * libsbx's (sbx/transfer.h, sbx/tree.h); what is left here is cp's: where a copy lands, the
 * temporary file a download is renamed from, the progress line. The bytes are checked end to
 * end unless --no-verify: the agent's sha256 of what it wrote must equal ours of what we sent.
 */
#include "cp.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "sbx/transfer.h"
#include "sbx/tree.h"

/* --- progress -------------------------------------------------------------------------------- */

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

/* The process's umask (read by setting it and back: the CLI has one thread). */
static mode_t process_umask(void)
{
    mode_t m = umask(077);

    (void)umask(m);
    return m;
}

static void progress_draw(struct cli_progress *p, uint64_t now)
{
    char done[32], total[32], rate[32];
    double secs = (double)(now - p->start_ns) / 1e9;

    human_bytes(done, sizeof(done), (double)p->done);
    human_bytes(rate, sizeof(rate), secs > 0 ? (double)p->done / secs : 0);
    if (p->total > 0) {
        /* The total is the agent's word: more may come than it said (the bar stays full). */
        int pct = p->done >= p->total ? 100 : (int)((double)p->done * 100 / (double)p->total);
        int bars = pct / 5;
        human_bytes(total, sizeof(total), (double)p->total);
        (void)fprintf(stderr, "\r%s [%.*s%*s] %3d%% %s / %s  %s/s\033[K", p->label, bars,
                      "####################", 20 - bars, "", pct, done, total, rate);
    } else {
        (void)fprintf(stderr, "\r%s %s  %s/s\033[K", p->label, done, rate);
    }
    p->drawn = true;
}

void cli_progress_add(void *arg, uint64_t n)
{
    struct cli_progress *p = arg;
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

/* --- the copies ------------------------------------------------------------------------------ */

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

/* Where a download lands: @local, or @local/<name of @remote> when @local is a directory. */
static void local_dest(char *dest, size_t n, const char *local, const char *remote)
{
    char bbuf[PATH_MAX];
    struct stat st;

    snprintf(dest, n, "%s", local);
    if (stat(local, &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(dest, n, "%s/%s", local, base_name(remote, bbuf, sizeof(bbuf)));
    }
}

/* The end of a copy: finish the progress line, report a failure. Returns the exit status. */
static int cp_end(struct cli_progress *prog, int rc, const struct sbx_err *err)
{
    cli_progress_end(prog, rc == 0);
    if (rc < 0) {
        cli_print_err("cp", err);
        return CLI_EXIT_FAIL;
    }
    return 0;
}

static int upload_file(struct sbx_client *c, const char *local, const char *remote,
                       const struct cp_opts *o)
{
    char dest[PATH_MAX + NAME_MAX + 2], bbuf[PATH_MAX];
    struct sbx_upload_params p = { .path = dest,
                                   .has_mode = true,
                                   .parents = o->parents,
                                   .no_overwrite = o->no_clobber,
                                   .fsync = o->fsync,
                                   .has_size = true,
                                   .no_hash = o->no_verify };
    struct cli_progress prog;
    struct sbx_transfer_done done;
    struct sbx_err err;
    struct stat st;
    int fd = open(local, O_RDONLY | O_CLOEXEC), rc = fd < 0 ? -1 : fstat(fd, &st);

    if (rc < 0 || S_ISDIR(st.st_mode)) {
        if (rc < 0) {
            (void)fprintf(stderr, "sbx: cp: %s: %s\n", local, strerror(errno));
        } else {
            (void)fprintf(stderr, "sbx: cp: %s is a directory (use -r)\n", local);
        }
        if (fd >= 0) {
            close(fd);
        }
        return CLI_EXIT_FAIL;
    }
    p.mode = o->has_mode ? o->mode : st.st_mode & 07777;
    p.size = (uint64_t)st.st_size;
    snprintf(dest, sizeof(dest), "%s", remote);
    if (dest[0] == '\0' || dest[strlen(dest) - 1] == '/') {
        snprintf(dest, sizeof(dest), "%s%s", remote, base_name(local, bbuf, sizeof(bbuf)));
    }
    cli_progress_start(&prog, "upload", p.size, o->quiet);
    rc = sbx_upload_fd(c, &p, fd, local, cli_progress_add, &prog, &done, &err);
    if (rc < 0 && done.stream == 0 && strcmp(err.code, "EISDIR") == 0 &&
        dest[strlen(dest) - 1] != '/') {
        /* An existing remote directory: copy into it, as cp does (nothing was read yet). */
        snprintf(dest, sizeof(dest), "%s/%s", remote, base_name(local, bbuf, sizeof(bbuf)));
        rc = sbx_upload_fd(c, &p, fd, local, cli_progress_add, &prog, &done, &err);
    }
    close(fd);
    return cp_end(&prog, rc, &err);
}

static int download_file(struct sbx_client *c, const char *remote, const char *local,
                         const struct cp_opts *o)
{
    char dest[PATH_MAX + NAME_MAX + 2], tmp[PATH_MAX + NAME_MAX + 32], bbuf[PATH_MAX];
    char dbuf[PATH_MAX + NAME_MAX + 2];
    struct cli_progress prog;
    struct sbx_stream_result sr;
    struct sbx_err err;
    uint32_t id;
    int fd, rc;

    rc = sbx_transfer_download(sbx_client_conn(c), remote, 0, -1, NULL, NULL, &id, &err);
    if (sbx_stream_call(c, rc, id, true, &sr, &err) < 0) {
        cli_print_err("cp", &err);
        return CLI_EXIT_FAIL;
    }
    /* Into a temporary file beside the destination, renamed when complete. */
    local_dest(dest, sizeof(dest), local, remote);
    snprintf(dbuf, sizeof(dbuf), "%s", dest);
    snprintf(tmp, sizeof(tmp), "%s/.%s.sbx-XXXXXX", dirname(dbuf),
             base_name(dest, bbuf, sizeof(bbuf)));
    fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        (void)fprintf(stderr, "sbx: cp: %s: %s\n", dest, strerror(errno));
        (void)sbx_client_stream_cancel(c, sr.stream, &err);
        return CLI_EXIT_FAIL;
    }
    cli_progress_start(&prog, "download", sr.size, o->quiet);
    rc = sbx_stream_to_fd(c, sr.stream, fd, cli_progress_add, &prog, &err);
    /* The guest's mode as the umask allows, never its set-id bits (as cp makes a copy). */
    if (rc == 0 && fchmod(fd, (mode_t)(sr.mode & 0777) & ~process_umask()) < 0) {
        rc = sbx_err_sys(&err, errno, NULL, "chmod %s", tmp);
    }
    if (close(fd) < 0 && rc == 0) {
        rc = sbx_err_sys(&err, errno, NULL, "close %s", tmp);
    }
    if (rc == 0 && rename(tmp, dest) < 0) {
        rc = sbx_err_sys(&err, errno, NULL, "rename onto %s", dest);
    }
    if (rc < 0) {
        (void)unlink(tmp);
    }
    return cp_end(&prog, rc, &err);
}

/* -r: LOCAL :DIR/ puts the tree at DIR/<name>, LOCAL :DIR makes DIR the tree. */
static int upload_tree(struct sbx_client *c, const char *local, const char *remote,
                       const struct cp_opts *o)
{
    char dest[PATH_MAX + NAME_MAX + 2], bbuf[PATH_MAX];
    struct cli_progress prog;
    struct sbx_err err;
    struct stat st;
    int rc = stat(local, &st);

    if (rc < 0 || !S_ISDIR(st.st_mode)) {
        (void)fprintf(stderr, "sbx: cp: %s: %s\n", local,
                      rc < 0 ? strerror(errno) : "not a directory");
        return CLI_EXIT_FAIL;
    }
    snprintf(dest, sizeof(dest), "%s", remote);
    if (remote[0] != '\0' && remote[strlen(remote) - 1] == '/') {
        snprintf(dest, sizeof(dest), "%s%s", remote, base_name(local, bbuf, sizeof(bbuf)));
    }
    cli_progress_start(&prog, "upload", 0, o->quiet);
    rc = sbx_upload_tree(c, local, dest, o->compress, cli_progress_add, &prog, NULL, &err);
    return cp_end(&prog, rc, &err);
}

/* -r: :DIR LOCAL into an existing local directory puts the tree at LOCAL/<name>. */
static int download_tree(struct sbx_client *c, const char *remote, const char *local,
                         const struct cp_opts *o)
{
    char dest[PATH_MAX + NAME_MAX + 2];
    struct cli_progress prog;
    struct sbx_err err;
    int rc;

    local_dest(dest, sizeof(dest), local, remote);
    cli_progress_start(&prog, "download", 0, o->quiet);
    rc = sbx_download_tree(c, remote, dest, o->compress, cli_progress_add, &prog, &err);
    return cp_end(&prog, rc, &err);
}

/* --- the command ----------------------------------------------------------------------------- */

/* What the options asked for (cli_parse_cp). */
static struct cp_opts o = { .compress = "none" };

int cli_parse_cp(struct cli *cli, int opt, const char *arg)
{
    static const char flags[] = "rpnFVq"; /* the options that set flag[i] */
    bool *const flag[] = {
        &o.recursive, &o.parents, &o.no_clobber, &o.fsync, &o.no_verify, &o.quiet
    };
    const char *f = opt != 0 ? strchr(flags, opt) : NULL;
    char *end;
    unsigned long v;

    if (f != NULL) {
        *flag[f - flags] = true;
        return 0;
    } else if (opt == 'z') {
        o.compress = arg;
        return 0;
    } else if (opt == 'm') {
        v = strtoul(arg, &end, 8);
        if (*arg == '\0' || *end != '\0' || v > 07777) {
            (void)fprintf(stderr, "sbx: cp: bad mode %s (octal, at most 7777)\n", arg);
            return CLI_EXIT_USAGE;
        }
        o.mode = (unsigned)v;
        o.has_mode = true;
        return 0;
    }
    /* the options are done: LOCAL :REMOTE or :REMOTE LOCAL */
    if (cli->argc != 2) {
        return CLI_OPTS_BAD;
    }
    if ((cli->argv[0][0] == ':') == (cli->argv[1][0] == ':')) {
        (void)fprintf(stderr, "sbx: cp: exactly one of the two paths must be remote (:PATH)\n");
        return CLI_EXIT_USAGE;
    }
    if (strcmp(o.compress, "none") != 0 && strcmp(o.compress, "gzip") != 0 &&
        strcmp(o.compress, "zstd") != 0) {
        (void)fprintf(stderr, "sbx: cp: --compress takes none, gzip or zstd\n");
        return CLI_EXIT_USAGE;
    }
    return 0;
}

int cli_cmd_cp(struct cli *cli, struct sbx_client *c)
{
    const char *src = cli->argv[0], *dst = cli->argv[1];

    if (o.recursive) {
        return src[0] == ':' ? download_tree(c, src + 1, dst, &o)
                             : upload_tree(c, src, dst + 1, &o);
    }
    return src[0] == ':' ? download_file(c, src + 1, dst, &o) : upload_file(c, src, dst + 1, &o);
}
