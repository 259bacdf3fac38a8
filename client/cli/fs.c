/*
 * sbx fs: the agent's fs family (PROTOCOL.md §17) from the command line. main.c's row has the
 * usage and the options of all subcommands; the subcommands are one table here (fs_cmds), which
 * cli_parse_fs dispatches to. Every request is a typed call (sbx/conn.h) finished by the blocking
 * client.
 */
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

/*
 * One run of `sbx fs` (there is one: the static fs below). Options are kept by option character,
 * each subcommand reading those it takes: flags in on[] (-l -a -L -p -r -s -d, --follow 'F',
 * --no-dirs 'N'), strings in arg[]
 * (--cwd 'C', --dir 'D', --prefix 'P', --suffix 'S', --type 't', --root 'T'; -m and --maxdepth
 * 'x' until fs_check reads them).
 */
struct fs_ctx {
    const struct fs_cmd *cmd;
    char what[64]; /* "fs <subcommand>", for messages */
    bool on[128];
    const char *arg[128];
    int mode; /* -m, or chmod's MODE; -1: none */
    bool has_depth;
    uint32_t depth;
    const char *list[3][SBX_FS_PATTERNS_MAX]; /* --ext and --exclude, --match, --skip */
    uint32_t nlist[3];
    bool too_many; /* more than SBX_FS_PATTERNS_MAX of one list */
    struct cli *cli;
    struct sbx_client *c;
    struct sbx_conn *k;
    uint32_t id;         /* the request being made */
    struct sbx_msg resp; /* its response */
    struct sbx_err err;  /* or its error */
};

/*
 * A subcommand: @run, or (@run NULL) fs_each: the typed call @call (see fs_call) made for each
 * group of @per arguments (@per 0: once, without arguments), each result handed to @show (NULL:
 * nothing is printed), which prints @field of it or more.
 */
struct fs_cmd {
    const char *name;
    int min, max; /* positional arguments */
    int (*run)(struct fs_ctx *x, int n, char **args);
    enum sbx_call call;
    int per;
    int (*show)(struct fs_ctx *x, const char *arg, const msgpack_object *res);
    const char *field;
};

/* Finish the typed call that returned @r (made with &x->id, &x->err) and wait for its response:
 * the result, or NULL after printing the error. */
static const msgpack_object *fs_result(struct fs_ctx *x, int r)
{
    if (sbx_client_call(x->c, r, x->id, &x->resp, &x->err) < 0) {
        cli_print_err(x->what, &x->err);
        return NULL;
    }
    return x->resp.result;
}

/* Make the typed call @call of a table subcommand on its argument group @a. */
static int fs_call(struct fs_ctx *x, enum sbx_call call, char **a)
{
    const char *cwd = x->arg['C'], *t = x->arg['t'] != NULL ? x->arg['t'] : "fdl";
    bool follow = x->on['L'] || x->on['F'];
    uint32_t *id = &x->id;
    struct sbx_err *e = &x->err;
    struct sbx_walk_params wp = { .path = a[0], .cwd = cwd, .follow_symlinks = follow };
    struct sbx_glob_params gp = { .pattern = a[0], .root = x->arg['T'], .cwd = cwd };

    switch (call) {
    case SBX_CALL_FS_STAT:
        return (x->on['L'] ? sbx_fs_lstat : sbx_fs_stat)(x->k, a[0], cwd, NULL, id, e);
    case SBX_CALL_FS_MKDIR:
        return sbx_fs_mkdir(x->k, a[0], x->on['p'], x->mode, cwd, NULL, id, e);
    case SBX_CALL_FS_REMOVE:
        return sbx_fs_remove(x->k, a[0], x->on['r'], cwd, NULL, id, e);
    case SBX_CALL_FS_RENAME:
        return sbx_fs_rename(x->k, a[0], a[1], cwd, NULL, id, e);
    case SBX_CALL_FS_COPY:
        return sbx_fs_copy(x->k, a[0], a[1], x->on['r'], cwd, NULL, id, e);
    case SBX_CALL_FS_CHMOD:
        return sbx_fs_chmod(x->k, a[0], (uint32_t)x->mode, cwd, NULL, id, e);
    case SBX_CALL_FS_LINK:
        return (x->on['s'] ? sbx_fs_symlink : sbx_fs_link)(x->k, a[0], a[1], cwd, NULL, id, e);
    case SBX_CALL_FS_READLINK:
        return sbx_fs_readlink(x->k, a[0], cwd, NULL, id, e);
    case SBX_CALL_FS_MKTEMP:
        return sbx_fs_mktemp(x->k, x->arg['D'], x->arg['P'], x->arg['S'], x->on['d'], cwd, NULL, id,
                             e);
    case SBX_CALL_FS_WATCH:
        return sbx_fs_watch(x->k, a[0], x->on['r'], cwd, NULL, id, e);
    case SBX_CALL_FS_WALK:
        wp.has_max_depth = x->has_depth;
        wp.max_depth = x->depth;
        wp.no_files = strchr(t, 'f') == NULL;
        wp.no_dirs = strchr(t, 'd') == NULL;
        wp.no_symlinks = strchr(t, 'l') == NULL;
        wp.exts = x->list[0];
        wp.match = x->list[1];
        wp.skip = x->list[2];
        wp.nexts = x->nlist[0];
        wp.nmatch = x->nlist[1];
        wp.nskip = x->nlist[2];
        return sbx_fs_walk(x->k, &wp, NULL, id, e);
    case SBX_CALL_FS_GLOB:
        gp.no_dirs = x->on['N'];
        gp.follow_symlinks = follow;
        gp.exclude = x->list[0];
        gp.nexclude = x->nlist[0];
        return sbx_fs_glob(x->k, &gp, NULL, id, e);
    default: /* SBX_CALL_FS_REALPATH */
        return sbx_fs_realpath(x->k, a[0], cwd, NULL, id, e);
    }
}

/* The table handler: the subcommand's call on each argument group, each result shown. */
static int fs_each(struct fs_ctx *x, int n, char **args)
{
    const struct fs_cmd *fc = x->cmd;
    int calls = fc->per > 0 ? n / fc->per : 1, rc = 0;

    for (int i = 0; i < calls; i++) {
        char **a = args + i * fc->per; /* mktemp: a[0] is argv's closing NULL */
        const msgpack_object *res = fs_result(x, fs_call(x, fc->call, a));
        if (res == NULL || (fc->show != NULL && fc->show(x, a[0], res) != 0)) {
            rc = CLI_EXIT_FAIL;
        }
    }
    return rc;
}

static void print_bytes(const msgpack_object *o)
{
    const char *p;
    size_t n;

    if (o != NULL && sbx_obj_bytes(o, &p, &n)) {
        cli_put_text(stdout, p, n);
    }
}

static uint64_t get_u64(const msgpack_object *m, const char *k)
{
    const msgpack_object *v = sbx_obj_get(m, k);

    return v != NULL && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? v->via.u64 : 0;
}

/* readlink, realpath, mktemp: the result's string field named in the table. */
static int show_field(struct fs_ctx *x, const char *arg, const msgpack_object *res)
{
    if (x->cli->json) {
        cli_json_println(res);
    } else {
        print_bytes(sbx_obj_get(res, x->cmd->field));
        (void)putchar('\n');
    }
    return 0;
}

/* "drwxr-xr-x" for st_mode @mode (a static buffer). */
static const char *mode_string(uint64_t mode)
{
    static char out[11];

    out[0] = "-pc-d-b---l-s---"[(mode & S_IFMT) >> 12];
    for (int i = 0; i < 9; i++) {
        out[1 + i] = (mode & (0400u >> i)) ? "rwxrwxrwx"[i] : '-';
    }
    for (int i = 0; i < 3; i++) { /* setuid, setgid, sticky: in the x of user, group, other */
        if (mode & (04000u >> i)) {
            out[3 + 3 * i] = (mode & (0100u >> (3 * i))) ? "sst"[i] : "SST"[i];
        }
    }
    return out;
}

/* A time in ns since the epoch, UTC, to the minute or (@full) to the ns; "-" unless @has. */
static void print_time(bool has, int64_t ns, bool full)
{
    int64_t frac = ((ns % 1000000000) + 1000000000) % 1000000000;
    time_t t = (time_t)((ns - frac) / 1000000000);
    struct tm tm;
    char buf[64];

    (void)gmtime_r(&t, &tm);
    (void)strftime(buf, sizeof(buf), full ? "%Y-%m-%d %H:%M:%S" : "%Y-%m-%d %H:%M", &tm);
    (void)fputs(has ? buf : "-", stdout);
    if (has && full) {
        (void)printf(".%09" PRId64 " UTC", frac);
    }
}

/* " -> TARGET" of a symlink's FileInfo, if any. */
static void print_target(const struct sbx_fileinfo *fi)
{
    if (fi->target != NULL) {
        (void)fputs(" -> ", stdout);
        cli_put_text(stdout, fi->target, fi->target_len);
    }
}

/* stat: a FileInfo, as stat(1) shows one. */
static int show_stat(struct fs_ctx *x, const char *path, const msgpack_object *res)
{
    static const char *const names[] = { "Access", "Modify", "Change", " Birth" };
    struct sbx_fileinfo fi;

    if (x->cli->json) {
        cli_json_println(res);
        return 0;
    }
    if (sbx_fileinfo_read(res, &fi, &x->err) < 0) {
        cli_print_err(x->what, &x->err);
        return CLI_EXIT_FAIL;
    }
    (void)printf("  File: %s", path);
    print_target(&fi);
    (void)printf("\n  Type: %s\n  Size: %" PRIu64 "  Blocks: %" PRIu64 "  IO Block: %" PRIu64
                 "\n  Mode: %04" PRIo64 " (%s)  Uid: %" PRIu32 "  Gid: %" PRIu32
                 "\n Links: %" PRIu64 "  Inode: %" PRIu64 "  Device: %" PRIu64 "\n",
                 fi.type, fi.size, fi.blocks, fi.blksize, fi.mode & 07777, mode_string(fi.mode),
                 fi.uid, fi.gid, fi.nlink, fi.ino, fi.dev);
    for (int i = 0; i < 4; i++) {
        const int64_t ns[] = { fi.atime_ns, fi.mtime_ns, fi.ctime_ns, fi.birthtime_ns };
        (void)printf("%s: ", names[i]);
        print_time(i < 3 || fi.has_birthtime, ns[i], true);
        (void)putchar('\n');
    }
    return 0;
}

/* The most entries ls sorts in memory (a few hundred MiB), and the most bytes of their names: an
 * agent's pages could go on for ever, and a name could be megabytes. */
#define LS_ENTRIES_MAX    (4u << 20)
#define LS_NAME_BYTES_MAX (256u << 20)
#define LS_NAME_MAX       255u /* NAME_MAX: a longer entry name is not one */

/* One directory entry of ls. */
struct lsent {
    char *name;
    char type[16];
};

static int lsent_cmp(const void *a, const void *b)
{
    return strcmp(((const struct lsent *)a)->name, ((const struct lsent *)b)->name);
}

/*
 * The entries of directory @path, hidden ones only with -a, sorted by name (*@n of them),
 * through fs.readdir pages. NULL after printing the error.
 */
static struct lsent *read_dir(struct fs_ctx *x, const char *path, size_t *n)
{
    char cursor[32] = "";
    struct lsent *v = NULL, *grown;
    const msgpack_object *res, *ents, *cur;
    size_t name_bytes = 0;

    *n = 0;
    do {
        bool more = cursor[0] != '\0';
        int r = sbx_fs_readdir(x->k, more ? NULL : path, more ? cursor : NULL, SBX_FS_READDIR_MAX,
                               x->arg['C'], NULL, &x->id, &x->err);
        uint32_t size;
        if ((res = fs_result(x, r)) == NULL) {
            goto fail;
        }
        ents = sbx_obj_get(res, "entries");
        size = ents != NULL && ents->type == MSGPACK_OBJECT_ARRAY ? ents->via.array.size : 0;
        /* Sorting needs every entry in memory; an agent's pages could go on for ever. */
        if (*n + size > LS_ENTRIES_MAX) {
            (void)fprintf(stderr,
                          "sbx: fs ls: %s: more than %u entries to sort (fs find %s --maxdepth 1 "
                          "lists any number)\n",
                          path, LS_ENTRIES_MAX, path);
            goto fail;
        }
        if ((grown = realloc(v, (*n + size + 1) * sizeof(*v))) == NULL) {
            goto fail;
        }
        v = grown;
        for (uint32_t i = 0; i < size; i++) {
            const msgpack_object *e = &ents->via.array.ptr[i], *type = sbx_obj_get(e, "type");
            const char *p;
            size_t len;
            v[*n].type[0] = '\0';
            if (type != NULL) {
                (void)sbx_obj_cstr(type, v[*n].type, sizeof(v[*n].type));
            }
            if (!sbx_obj_bytes(sbx_obj_get(e, "name"), &p, &len) || len == 0 || len > LS_NAME_MAX ||
                memchr(p, '/', len) != NULL || memchr(p, '\0', len) != NULL) {
                sbx_err_set(&x->err, SBX_E_BAD_MESSAGE,
                            "the agent listed an entry of %s that is not a file name", path);
                cli_print_err(x->what, &x->err);
                goto fail;
            }
            if (!x->on['a'] && *p == '.') {
                continue;
            }
            name_bytes += len + 1;
            if (name_bytes > LS_NAME_BYTES_MAX || (v[*n].name = strndup(p, len)) == NULL) {
                (void)fprintf(stderr, "sbx: fs ls: %s: the names take more than %u MiB to sort\n",
                              path, LS_NAME_BYTES_MAX >> 20);
                goto fail;
            }
            (*n)++;
        }
        cur = sbx_obj_get(res, "cursor");
        if (cur != NULL && cur->type == MSGPACK_OBJECT_STR &&
            (sbx_obj_cstr(cur, cursor, sizeof(cursor)) < 0 || size == 0)) {
            /* An empty page that promises more would page for ever (the caps above bound the
             * pages that do bring entries). */
            sbx_err_set(&x->err, SBX_E_BAD_MESSAGE,
                        "the agent's listing of %s does not move on (an empty page, or a bad "
                        "cursor)",
                        path);
            cli_print_err(x->what, &x->err);
            goto fail;
        }
    } while (cur != NULL && cur->type == MSGPACK_OBJECT_STR);
    qsort(v, *n, sizeof(*v), lsent_cmp);
    return v;
fail:
    while (*n > 0) {
        free(v[--*n].name);
    }
    free(v);
    return NULL;
}

/* ls -l: lstat every entry, pipelined (up to 256 requests ahead of the answer being printed).
 * CLI_EXIT_FAIL when an entry could not be shown (as ls(1) exits 1), else 0. */
static int ls_long(struct fs_ctx *x, const char *dir, const struct lsent *v, size_t n)
{
    int rc = 0;

    const char *sep = dir[strlen(dir) - 1] == '/' ? "" : "/";
    uint32_t ids[256];

    for (size_t i = 0, sent = 0; i < n; i++) {
        struct sbx_msg resp;
        struct sbx_fileinfo fi;
        char path[SBX_PATH_MAX + 1];
        for (; sent < n && sent < i + 256; sent++) {
            int r;
            (void)snprintf(path, sizeof(path), "%s%s%s", dir, sep, v[sent].name);
            r = sbx_fs_lstat(x->k, path, x->arg['C'], NULL, &ids[sent % 256], &x->err);
            if (sbx_client_sent(x->c, r, &x->err) < 0) {
                cli_print_err(x->what, &x->err);
                return CLI_EXIT_FAIL;
            }
        }
        if (sbx_client_wait(x->c, ids[i % 256], &resp, -1, &x->err) < 0 ||
            sbx_fileinfo_read(resp.result, &fi, &x->err) < 0) {
            (void)fputs("?????????? ", stdout);
            cli_put_text(stdout, v[i].name, strlen(v[i].name));
            (void)fputs(" (", stdout);
            cli_put_text(stdout, x->err.code, strlen(x->err.code));
            (void)fputs(")\n", stdout);
            rc = CLI_EXIT_FAIL;
            continue;
        }
        (void)printf("%s %3" PRIu64 " %5" PRIu32 " %5" PRIu32 " %10" PRIu64 " ",
                     mode_string(fi.mode), fi.nlink, fi.uid, fi.gid, fi.size);
        print_time(true, fi.mtime_ns, false);
        (void)putchar(' ');
        cli_put_text(stdout, v[i].name, strlen(v[i].name));
        print_target(&fi);
        (void)putchar('\n');
    }
    return rc;
}

static int cmd_ls(struct fs_ctx *x, int n, char **paths)
{
    const bool json = x->cli->json, long_fmt = x->on['l'] && !json;
    int rc = 0;

    for (int i = 0; i < n || (n == 0 && i == 0); i++) {
        const char *dir = n > 0 ? paths[i] : "/";
        size_t count;
        struct lsent *v = read_dir(x, dir, &count);
        json_t *arr = json ? json_array() : NULL;
        if (v == NULL) {
            rc = CLI_EXIT_FAIL;
        } else if (n > 1 && !json) {
            (void)printf("%s%s:\n", i > 0 ? "\n" : "", dir);
        }
        if (v != NULL && long_fmt) {
            rc = ls_long(x, dir, v, count) != 0 ? CLI_EXIT_FAIL : rc;
        }
        for (size_t j = 0; j < count; j++) {
            if (json) {
                (void)json_array_append_new(
                    arr, json_pack("{s:o,s:o}", "name", cli_json_str(v[j].name, strlen(v[j].name)),
                                   "type", cli_json_str(v[j].type, strlen(v[j].type))));
            } else if (!long_fmt) {
                cli_put_text(stdout, v[j].name, strlen(v[j].name));
                (void)puts(strcmp(v[j].type, "dir") == 0 ? "/" : "");
            }
            free(v[j].name);
        }
        if (v != NULL && json) {
            rc = cli_json_dump(stdout, arr) < 0 ? CLI_EXIT_FAIL : rc;
            (void)putchar('\n');
        }
        json_decref(arr);
        free(v);
    }
    return rc;
}

/* chmod MODE PATH...: the table's fs.chmod on each PATH (MODE is x->mode, fs_check's). */
static int cmd_chmod(struct fs_ctx *x, int n, char **args)
{
    return fs_each(x, n - 1, args + 1);
}

/* fs.open @path with @flags (SBX_FS_O_*); returns the handle, or 0 after printing the error. */
static uint32_t fh_open(struct fs_ctx *x, const char *path, unsigned flags)
{
    int r = sbx_fs_open(x->k, path, flags, x->mode, x->arg['C'], NULL, &x->id, &x->err);
    const msgpack_object *res = fs_result(x, r);

    return res == NULL ? 0 : (uint32_t)get_u64(res, "fh");
}

/* cat: fs.read at the handle's position, chunk_max at a time, until a read returns nothing. */
static int cmd_cat(struct fs_ctx *x, int n, char **paths)
{
    uint32_t chunk = sbx_client_chunk_max(x->c);
    int rc = 0;

    for (int i = 0; i < n; i++) {
        uint32_t fh = fh_open(x, paths[i], SBX_FS_O_READ);
        const msgpack_object *res = NULL;
        const char *p;
        size_t len;
        while (fh != 0 &&
               (res = fs_result(x, sbx_fs_read(x->k, fh, chunk, NULL, NULL, &x->id, &x->err))) &&
               sbx_obj_bytes(sbx_obj_get(res, "data"), &p, &len) && len > 0) {
            if (sbx_write_all(STDOUT_FILENO, p, len) < 0) {
                return CLI_EXIT_FAIL;
            }
        }
        rc = res == NULL ? CLI_EXIT_FAIL : rc; /* the open or a read failed */
        if (fh != 0) {
            (void)fs_result(x, sbx_fs_close(x->k, fh, NULL, &x->id, &x->err));
        }
    }
    return rc;
}

/* write: stdin to PATH through a handle, chunk_max at a time; a short write is retried. */
static int cmd_write(struct fs_ctx *x, int n, char **args)
{
    unsigned flags = x->on['a'] ? SBX_FS_O_APPEND | SBX_FS_O_CREATE
                                : SBX_FS_O_WRITE | SBX_FS_O_CREATE | SBX_FS_O_TRUNCATE;
    uint32_t chunk = sbx_client_chunk_max(x->c), fh = fh_open(x, args[0], flags);
    char *buf = fh != 0 ? malloc(chunk) : NULL;
    const msgpack_object *res;
    ssize_t got;
    int rc = buf != NULL ? 0 : CLI_EXIT_FAIL;

    while (rc == 0 && (got = read(STDIN_FILENO, buf, chunk)) != 0) {
        if (got < 0) {
            perror("sbx: fs write: stdin");
            rc = CLI_EXIT_FAIL;
        }
        for (size_t off = 0; rc == 0 && off < (size_t)got;) {
            int r =
                sbx_fs_write(x->k, fh, buf + off, (size_t)got - off, NULL, NULL, &x->id, &x->err);
            uint64_t w;
            if ((res = fs_result(x, r)) == NULL) {
                rc = CLI_EXIT_FAIL;
                break;
            }
            /* A write of nothing (or of more than was sent) would be retried for ever. */
            if ((w = get_u64(res, "written")) == 0 || w > (size_t)got - off) {
                (void)fprintf(stderr, "sbx: fs write: %s: the agent wrote %llu of %zu bytes\n",
                              args[0], (unsigned long long)w, (size_t)got - off);
                rc = CLI_EXIT_FAIL;
                break;
            }
            off += (size_t)w;
        }
    }
    free(buf);
    if (fh != 0) {
        (void)fs_result(x, sbx_fs_close(x->k, fh, NULL, &x->id, &x->err));
    }
    return rc;
}

/* find, glob: print the entry stream (§17.4) the result announced, to its end: each entry's path
 * (or the entry as JSON), entry errors on stderr. */
static int show_entries(struct fs_ctx *x, const char *arg, const msgpack_object *res)
{
    struct sbx_stream_result sr;
    const uint8_t *p;
    size_t len;
    int r = sbx_stream_result_read(res, false, &sr, &x->err), rc = 0;

    while (r == 0 && (r = sbx_stream_next(x->c, sr.stream, &p, &len, &x->err)) > 0) {
        for (size_t off = 0; r > 0 && off < len;) {
            msgpack_unpacked u;
            const msgpack_object *eo;
            msgpack_unpacked_init(&u);
            if (msgpack_unpack_next(&u, (const char *)p, len, &off) != MSGPACK_UNPACK_SUCCESS) {
                r = sbx_err_set(&x->err, SBX_E_BAD_MESSAGE, "undecodable entry");
            } else if (x->cli->json) {
                cli_json_println(&u.data);
            } else if ((eo = sbx_obj_get(&u.data, "error")) != NULL) {
                sbx_err_from_obj(eo, &x->err);
                cli_print_err(x->what, &x->err);
                rc = CLI_EXIT_FAIL;
            } else {
                print_bytes(sbx_obj_get(&u.data, "path"));
                (void)putchar('\n');
            }
            msgpack_unpacked_destroy(&u);
        }
        r = r > 0 ? sbx_client_consumed(x->c, sr.stream, (uint32_t)len, &x->err) : r;
    }
    if (r < 0) {
        cli_print_err(x->what, &x->err);
        return CLI_EXIT_FAIL;
    }
    return rc;
}

static volatile sig_atomic_t watch_stop;

static void watch_sig(int sig)
{
    (void)sig;
    watch_stop = 1;
}

/* watch: the table's fs.watch on each path, then fs.event notifications until SIGINT / SIGTERM. */
static int cmd_watch(struct fs_ctx *x, int n, char **paths)
{
    struct sigaction sa = { .sa_handler = watch_sig };
    struct sbx_msg m;
    int r = fs_each(x, n, paths);

    if (r != 0) {
        return r;
    }
    (void)sigaction(SIGINT, &sa, NULL);
    (void)sigaction(SIGTERM, &sa, NULL);
    if (!x->cli->json) {
        (void)fprintf(stderr, "sbx: watching; Ctrl-C stops\n");
    }
    while (!watch_stop && (r = sbx_client_recv(x->c, &m, 200, &x->err)) >= 0) {
        const msgpack_object *from;
        if (r == 0 || m.kind != SBX_MSG_NOTIFY || !sbx_msg_method_is(&m, SBX_N_FS_EVENT)) {
            continue;
        }
        from = sbx_obj_get(m.params, "from");
        if (x->cli->json) {
            cli_json_println(m.params);
        } else {
            print_bytes(sbx_obj_get(m.params, "kind"));
            (void)putchar(' ');
            print_bytes(from);
            (void)fputs(from != NULL ? " -> " : "", stdout);
            print_bytes(sbx_obj_get(m.params, "path"));
            (void)putchar('\n');
        }
        (void)fflush(stdout);
    }
    if (r < 0) {
        cli_print_err(x->what, &x->err);
    }
    return r < 0 ? CLI_EXIT_FAIL : 0;
}

#define ANY (1 << 20)

/* clang-format off */
static const struct fs_cmd fs_cmds[] = {
    { "ls", 0, ANY, cmd_ls, 0, 0, NULL, NULL },
    { "stat", 1, ANY, NULL, SBX_CALL_FS_STAT, 1, show_stat, NULL },
    { "mkdir", 1, ANY, NULL, SBX_CALL_FS_MKDIR, 1, NULL, NULL },
    { "rm", 1, ANY, NULL, SBX_CALL_FS_REMOVE, 1, NULL, NULL },
    { "mv", 2, 2, NULL, SBX_CALL_FS_RENAME, 2, NULL, NULL },
    { "cp", 2, 2, NULL, SBX_CALL_FS_COPY, 2, NULL, NULL },
    { "cat", 1, ANY, cmd_cat, 0, 0, NULL, NULL },
    { "write", 1, 1, cmd_write, 0, 0, NULL, NULL },
    { "chmod", 2, ANY, cmd_chmod, SBX_CALL_FS_CHMOD, 1, NULL, NULL },
    { "ln", 2, 2, NULL, SBX_CALL_FS_LINK, 2, NULL, NULL },
    { "readlink", 1, 1, NULL, SBX_CALL_FS_READLINK, 1, show_field, "target" },
    { "realpath", 1, 1, NULL, SBX_CALL_FS_REALPATH, 1, show_field, "path" },
    { "mktemp", 0, 0, NULL, SBX_CALL_FS_MKTEMP, 0, show_field, "path" },
    { "find", 1, 1, NULL, SBX_CALL_FS_WALK, 1, show_entries, NULL },
    { "glob", 1, 1, NULL, SBX_CALL_FS_GLOB, 1, show_entries, NULL },
    { "watch", 1, 64, cmd_watch, SBX_CALL_FS_WATCH, 1, NULL, NULL },
};
/* clang-format on */
#define NCMDS (sizeof(fs_cmds) / sizeof(fs_cmds[0]))

/* The run being parsed, then made. */
static struct fs_ctx fs;

/* The values of -m (or chmod's MODE) and --maxdepth, --type, the pattern count: 0, or a usage
 * error after saying why (naming the subcommand, known only now). */
static int fs_check(struct fs_ctx *x, const char *mode)
{
    const char *depth = x->arg['x'], *type = x->arg['t'];
    char *end = NULL;
    unsigned long long m = mode != NULL ? strtoull(mode, &end, 8) : 0;
    uint64_t d = 0;

    if (mode != NULL && (*mode == '\0' || *end != '\0' || m > 07777)) {
        (void)fprintf(stderr, "sbx: %s: bad mode \"%s\" (octal, at most 7777)\n", x->what, mode);
    } else if (depth != NULL && cli_parse_u64(depth, &d) < 0) {
        (void)fprintf(stderr, "sbx: %s: bad depth \"%s\"\n", x->what, depth);
    } else if (type != NULL && strspn(type, "fdl,") != strlen(type)) {
        (void)fprintf(stderr, "sbx: %s: --type takes f, d and/or l\n", x->what);
    } else if (x->too_many) {
        (void)fprintf(stderr, "sbx: %s: at most 64 patterns per option\n", x->what);
    } else {
        x->mode = mode != NULL ? (int)m : -1;
        x->has_depth = depth != NULL;
        x->depth = d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
        return 0;
    }
    return CLI_EXIT_USAGE;
}

int cli_parse_fs(struct cli *cli, int opt, const char *arg)
{
    static const char lists[] = "eMKX"; /* list[i % 3]: --exclude shares --ext's */
    const char *l = opt != 0 ? strchr(lists, opt) : NULL, *sub = cli->argc > 0 ? cli->argv[0] : "";
    int w = l != NULL ? (int)(l - lists) % 3 : 0, n = cli->argc - 1;

    if (l != NULL && fs.nlist[w] == SBX_FS_PATTERNS_MAX) {
        fs.too_many = true;
    } else if (l != NULL) {
        fs.list[w][fs.nlist[w]++] = arg;
    } else if (opt != 0 && strchr("CDPSTtmx", opt) != NULL) {
        fs.arg[opt] = arg;
    } else if (opt != 0) {
        fs.on[opt == 'R' ? 'r' : opt] = true;
    }
    if (opt != 0) {
        return 0;
    }
    /* The options are done: the subcommand, its arguments, the values it reads. */
    for (size_t i = 0; i < NCMDS && fs.cmd == NULL; i++) {
        fs.cmd = strcmp(sub, fs_cmds[i].name) == 0 ? &fs_cmds[i] : NULL;
    }
    if (fs.cmd == NULL) {
        if (cli->argc > 0) {
            (void)fprintf(stderr, "sbx: fs: unknown command \"%s\"\n", sub);
        }
        return CLI_OPTS_BAD;
    }
    (void)snprintf(fs.what, sizeof(fs.what), "fs %s", sub);
    if (n < fs.cmd->min || n > fs.cmd->max) {
        (void)fprintf(stderr, "sbx: %s: wrong number of arguments\n", fs.what);
        return CLI_OPTS_BAD;
    }
    return fs_check(&fs, fs.cmd->run == cmd_chmod ? cli->argv[1] : fs.arg['m']);
}

int cli_cmd_fs(struct cli *cli, struct sbx_client *c)
{
    int r;

    fs.cli = cli;
    fs.c = c;
    fs.k = sbx_client_conn(c);
    r = (fs.cmd->run != NULL ? fs.cmd->run : fs_each)(&fs, cli->argc - 1, cli->argv + 1);
    (void)fflush(stdout);
    return r;
}
