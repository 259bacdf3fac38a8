/* sbx fs: the agent's fs family (PROTOCOL.md §17) from the command line. */
#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

static const char fs_usage[] =
    "Usage: sbx fs COMMAND [OPTIONS] ARGS...   (paths are in the guest)\n"
    "\n"
    "  ls [-l] [-a] [PATH...]        list directories (default /); -l long format, -a hidden\n"
    "  stat [-L|--no-follow] PATH... file information (-L: of a symlink itself)\n"
    "  mkdir [-p] [-m MODE] PATH...  create directories (-p: parents, no error if existing)\n"
    "  rm [-r] PATH...               remove files, symlinks, empty directories (-r: trees)\n"
    "  mv FROM TO                    rename (same file system)\n"
    "  cp [-r] FROM TO               copy a file, or a tree with -r\n"
    "  cat PATH...                   print files\n"
    "  write [-a] [-m MODE] PATH     write stdin to PATH (created or truncated; -a appends)\n"
    "  chmod MODE PATH...            change permission bits (octal MODE)\n"
    "  ln [-s] TARGET PATH           hard link, or symbolic link with -s\n"
    "  readlink PATH                 print a symlink's target\n"
    "  realpath PATH                 print the resolved absolute path\n"
    "  mktemp [-d] [--dir D] [--prefix P] [--suffix S]  create a unique temporary file or dir\n"
    "  find PATH [--maxdepth N] [--type f|d|l] [--ext E] [--match RE] [--skip RE] [-L]\n"
    "                                walk a tree; --ext/--match/--skip repeat\n"
    "  glob PATTERN [--root DIR] [--exclude PAT] [--no-dirs] [-L]\n"
    "                                match a glob (*, ?, [..], {a,b}, **)\n"
    "  watch [-r] PATH...            print file events until interrupted (-r: recursive)\n"
    "\n"
    "Common options: --json (JSON output), --cwd DIR (relative paths resolve there), -h.\n";

/* Options of all fs subcommands; each takes the ones that make sense for it. */
struct fs_opts {
    const char *cwd;
    bool json, help;
    bool long_fmt, all, nofollow, parents, recursive, symbolic, directory, append, follow;
    bool no_dirs;
    bool has_mode;
    uint64_t mode;
    bool has_depth;
    uint64_t depth;
    const char *type, *dir, *prefix, *suffix, *root;
    const char *list[3][64]; /* --ext/--exclude, --match, --skip */
    unsigned nlist[3];
};

static const char *cmd_name;

static void fs_err(const struct sbx_err *err)
{
    char what[64];

    (void)snprintf(what, sizeof(what), "fs %s", cmd_name);
    cli_print_err(what, err);
}

static int list_add(struct fs_opts *o, int which, const char *v)
{
    if (o->nlist[which] >= 64) {
        (void)fprintf(stderr, "sbx: fs %s: at most 64 patterns per option\n", cmd_name);
        return -1;
    }
    o->list[which][o->nlist[which]++] = v;
    return 0;
}

/* Parse the options of a subcommand; returns the index of the first positional or -1. */
static int fs_parse(struct fs_opts *o, int argc, char **argv)
{
    static const struct option opts[] = {
        { "json", no_argument, NULL, 'J' },
        { "help", no_argument, NULL, 'h' },
        { "cwd", required_argument, NULL, 'C' },
        { "no-follow", no_argument, NULL, 'L' },
        { "mode", required_argument, NULL, 'm' },
        { "parents", no_argument, NULL, 'p' },
        { "recursive", no_argument, NULL, 'r' },
        { "symbolic", no_argument, NULL, 's' },
        { "directory", no_argument, NULL, 'd' },
        { "append", no_argument, NULL, 'a' },
        { "dir", required_argument, NULL, 'D' },
        { "prefix", required_argument, NULL, 'P' },
        { "suffix", required_argument, NULL, 'S' },
        { "maxdepth", required_argument, NULL, 'x' },
        { "type", required_argument, NULL, 't' },
        { "ext", required_argument, NULL, 'e' },
        { "match", required_argument, NULL, 'M' },
        { "skip", required_argument, NULL, 'K' },
        { "follow", no_argument, NULL, 'F' },
        { "root", required_argument, NULL, 'T' },
        { "exclude", required_argument, NULL, 'X' },
        { "no-dirs", no_argument, NULL, 'N' },
        { NULL, 0, NULL, 0 },
    };
    int opt;

    optind = 0; /* full re-initialisation: main() parsed the global options with getopt */
    while ((opt = getopt_long(argc, argv, "hlaLm:prRsdx:t:", opts, NULL)) != -1) {
        char *end;
        switch (opt) {
        case 'J':
            o->json = true;
            break;
        case 'h':
            o->help = true;
            break;
        case 'C':
            o->cwd = optarg;
            break;
        case 'l':
            o->long_fmt = true;
            break;
        case 'a':
            o->all = true;
            o->append = true;
            break;
        case 'L':
            /* stat: the link itself; find/glob: follow links */
            o->nofollow = true;
            o->follow = true;
            break;
        case 'F':
            o->follow = true;
            break;
        case 'm':
            o->mode = strtoull(optarg, &end, 8);
            if (*optarg == '\0' || *end != '\0' || o->mode > 07777) {
                (void)fprintf(stderr, "sbx: fs %s: bad mode \"%s\" (octal, at most 7777)\n",
                              cmd_name, optarg);
                return -1;
            }
            o->has_mode = true;
            break;
        case 'p':
            o->parents = true;
            break;
        case 'r':
        case 'R':
            o->recursive = true;
            break;
        case 's':
            o->symbolic = true;
            break;
        case 'd':
            o->directory = true;
            break;
        case 'D':
            o->dir = optarg;
            break;
        case 'P':
            o->prefix = optarg;
            break;
        case 'S':
            o->suffix = optarg;
            break;
        case 'x':
            if (cli_parse_u64(optarg, &o->depth) < 0) {
                (void)fprintf(stderr, "sbx: fs %s: bad depth \"%s\"\n", cmd_name, optarg);
                return -1;
            }
            o->has_depth = true;
            break;
        case 't':
            o->type = optarg;
            break;
        case 'e':
        case 'X':
            if (list_add(o, 0, optarg) < 0) {
                return -1;
            }
            break;
        case 'M':
            if (list_add(o, 1, optarg) < 0) {
                return -1;
            }
            break;
        case 'K':
            if (list_add(o, 2, optarg) < 0) {
                return -1;
            }
            break;
        case 'T':
            o->root = optarg;
            break;
        case 'N':
            o->no_dirs = true;
            break;
        default:
            (void)fprintf(stderr, "%s", fs_usage);
            return -1;
        }
    }
    return optind;
}

/* Begin request @method with a map of @n entries (+1 for --cwd when given). */
static msgpack_packer *fs_begin(struct sbx_client *c, const struct fs_opts *o, const char *method,
                                uint32_t n, uint32_t *id)
{
    msgpack_packer *pk = sbx_client_begin(c, method, id);

    (void)msgpack_pack_map(pk, n + (o->cwd != NULL));
    if (o->cwd != NULL) {
        sbx_pack_cstr(pk, "cwd");
        sbx_pack_bstr(pk, o->cwd, strlen(o->cwd));
    }
    return pk;
}

static void kv_bstr(msgpack_packer *pk, const char *k, const char *v)
{
    sbx_pack_cstr(pk, k);
    sbx_pack_bstr(pk, v, strlen(v));
}

/* Send what was begun and wait for the answer; prints the error. */
static int fs_finish(struct sbx_client *c, uint32_t id, struct sbx_msg *resp)
{
    struct sbx_err err;

    if (sbx_client_send(c, &err) < 0 || sbx_client_wait(c, id, resp, -1, &err) < 0) {
        fs_err(&err);
        return -1;
    }
    return 0;
}

/* The one-path requests with nothing but the path: {path}. */
static int fs_path_call(struct sbx_client *c, const struct fs_opts *o, const char *method,
                        const char *path, struct sbx_msg *resp)
{
    uint32_t id;
    msgpack_packer *pk = fs_begin(c, o, method, 1, &id);

    kv_bstr(pk, "path", path);
    return fs_finish(c, id, resp);
}

static void print_json(const msgpack_object *o)
{
    (void)cli_json_write(stdout, o);
    (void)putchar('\n');
}

static void print_bytes(const msgpack_object *o)
{
    const char *p;
    size_t n;

    if (o != NULL && sbx_obj_bytes(o, &p, &n)) {
        (void)fwrite(p, 1, n, stdout);
    }
}

static uint64_t get_u64(const msgpack_object *m, const char *k)
{
    const msgpack_object *v = sbx_obj_get(m, k);

    return v != NULL && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? v->via.u64 : 0;
}

static void mode_string(uint64_t mode, char out[11])
{
    static const char rwx[] = "rwxrwxrwx";

    out[0] = S_ISDIR(mode)    ? 'd'
             : S_ISLNK(mode)  ? 'l'
             : S_ISFIFO(mode) ? 'p'
             : S_ISSOCK(mode) ? 's'
             : S_ISCHR(mode)  ? 'c'
             : S_ISBLK(mode)  ? 'b'
                              : '-';
    for (int i = 0; i < 9; i++) {
        out[1 + i] = (mode & (0400u >> i)) ? rwx[i] : '-';
    }
    if (mode & S_ISUID) {
        out[3] = (mode & 0100) ? 's' : 'S';
    }
    if (mode & S_ISGID) {
        out[6] = (mode & 0010) ? 's' : 'S';
    }
    if (mode & S_ISVTX) {
        out[9] = (mode & 0001) ? 't' : 'T';
    }
    out[10] = '\0';
}

/* A time in ns since the epoch, UTC; "-" when @has is false. */
static void print_time(bool has, int64_t ns, bool full)
{
    time_t t;
    struct tm tm;
    char buf[64];

    if (!has) {
        (void)fputs("-", stdout);
        return;
    }
    t = (time_t)(ns / 1000000000);
    if (ns < 0 && ns % 1000000000 != 0) {
        t--;
    }
    (void)gmtime_r(&t, &tm);
    (void)strftime(buf, sizeof(buf), full ? "%Y-%m-%d %H:%M:%S" : "%Y-%m-%d %H:%M", &tm);
    (void)fputs(buf, stdout);
    if (full) {
        (void)printf(".%09lld UTC", (long long)(((ns % 1000000000) + 1000000000) % 1000000000));
    }
}

/* " -> TARGET" of a symlink's FileInfo, if any. */
static void print_target(const struct sbx_fileinfo *fi)
{
    if (fi->target != NULL) {
        (void)fputs(" -> ", stdout);
        (void)fwrite(fi->target, 1, fi->target_len, stdout);
    }
}

static int cmd_stat(struct sbx_client *c, const struct fs_opts *o, int n, char **paths)
{
    int rc = 0;

    for (int i = 0; i < n; i++) {
        struct sbx_msg resp;
        struct sbx_fileinfo fi;
        struct sbx_err err;
        char ms[11];

        if (fs_path_call(c, o, o->nofollow ? SBX_M_FS_LSTAT : SBX_M_FS_STAT, paths[i], &resp) < 0) {
            rc = CLI_EXIT_FAIL;
            continue;
        }
        if (o->json) {
            print_json(resp.result);
            continue;
        }
        if (sbx_fileinfo_read(resp.result, &fi, &err) < 0) {
            fs_err(&err);
            rc = CLI_EXIT_FAIL;
            continue;
        }
        mode_string(fi.mode, ms);
        (void)printf("  File: %s", paths[i]);
        print_target(&fi);
        (void)printf("\n  Type: %s", fi.type);
        (void)printf("\n  Size: %llu  Blocks: %llu  IO Block: %llu\n", (unsigned long long)fi.size,
                     (unsigned long long)fi.blocks, (unsigned long long)fi.blksize);
        (void)printf("  Mode: %04llo (%s)  Uid: %llu  Gid: %llu\n",
                     (unsigned long long)(fi.mode & 07777), ms, (unsigned long long)fi.uid,
                     (unsigned long long)fi.gid);
        (void)printf(" Links: %llu  Inode: %llu  Device: %llu\n", (unsigned long long)fi.nlink,
                     (unsigned long long)fi.ino, (unsigned long long)fi.dev);
        (void)fputs("Access: ", stdout);
        print_time(true, fi.atime_ns, true);
        (void)fputs("\nModify: ", stdout);
        print_time(true, fi.mtime_ns, true);
        (void)fputs("\nChange: ", stdout);
        print_time(true, fi.ctime_ns, true);
        (void)fputs("\n Birth: ", stdout);
        print_time(fi.has_birthtime, fi.birthtime_ns, true);
        (void)putchar('\n');
    }
    return rc;
}

/* One readdir entry kept for sorting. */
struct lsent {
    char *name;
    size_t len;
    char type[12];
};

static int lsent_cmp(const void *a, const void *b)
{
    const struct lsent *x = a, *y = b;
    int r = memcmp(x->name, y->name, x->len < y->len ? x->len : y->len);

    return r != 0 ? r : (x->len > y->len) - (x->len < y->len);
}

/* Read a whole directory through fs.readdir pages. */
static int read_dir(struct sbx_client *c, const struct fs_opts *o, const char *path,
                    struct lsent **out, size_t *nout)
{
    char cursor[32] = "";
    struct lsent *v = NULL;
    size_t n = 0, cap = 0;

    for (;;) {
        struct sbx_msg resp;
        const msgpack_object *ents, *cur;
        uint32_t id;
        msgpack_packer *pk = fs_begin(c, o, SBX_M_FS_READDIR, 2, &id);

        if (cursor[0] != '\0') {
            sbx_pack_kv_str(pk, "cursor", cursor);
        } else {
            kv_bstr(pk, "path", path);
        }
        sbx_pack_kv_u64(pk, "limit", SBX_FS_READDIR_MAX);
        if (fs_finish(c, id, &resp) < 0) {
            break;
        }
        ents = sbx_obj_get(resp.result, "entries");
        for (uint32_t i = 0;
             ents != NULL && ents->type == MSGPACK_OBJECT_ARRAY && i < ents->via.array.size; i++) {
            const msgpack_object *e = &ents->via.array.ptr[i];
            const char *p;
            size_t len;
            if (n == cap) {
                struct lsent *nv;
                cap = cap ? cap * 2 : 256;
                nv = realloc(v, cap * sizeof(*v));
                if (nv == NULL) {
                    goto fail;
                }
                v = nv;
            }
            if (!sbx_obj_bytes(sbx_obj_get(e, "name"), &p, &len) ||
                (v[n].name = malloc(len + 1)) == NULL) {
                continue;
            }
            memcpy(v[n].name, p, len);
            v[n].name[len] = '\0';
            v[n].len = len;
            (void)sbx_obj_cstr(sbx_obj_get(e, "type"), v[n].type, sizeof(v[n].type));
            n++;
        }
        cur = sbx_obj_get(resp.result, "cursor");
        if (cur == NULL || cur->type != MSGPACK_OBJECT_STR ||
            sbx_obj_cstr(cur, cursor, sizeof(cursor)) < 0) {
            qsort(v, n, sizeof(*v), lsent_cmp);
            *out = v;
            *nout = n;
            return 0;
        }
    }
fail:
    for (size_t i = 0; i < n; i++) {
        free(v[i].name);
    }
    free(v);
    return -1;
}

/* ls -l: lstat every entry, pipelined (all requests first, then the answers in order). */
static void ls_long(struct sbx_client *c, const struct fs_opts *o, const char *dir, struct lsent *v,
                    size_t n)
{
    const size_t batch = 256;

    for (size_t at = 0; at < n; at += batch) {
        uint32_t ids[256];
        size_t k = n - at < batch ? n - at : batch;
        struct sbx_err err;

        for (size_t i = 0; i < k; i++) {
            char path[SBX_PATH_MAX + 1];
            msgpack_packer *pk = fs_begin(c, o, SBX_M_FS_LSTAT, 1, &ids[i]);
            (void)snprintf(path, sizeof(path), "%s%s%s", dir,
                           dir[strlen(dir) - 1] == '/' ? "" : "/", v[at + i].name);
            kv_bstr(pk, "path", path);
            if (sbx_client_send(c, &err) < 0) {
                fs_err(&err);
                return;
            }
        }
        for (size_t i = 0; i < k; i++) {
            struct sbx_msg resp;
            struct sbx_fileinfo fi;
            char ms[11];
            if (sbx_client_wait(c, ids[i], &resp, -1, &err) < 0 ||
                sbx_fileinfo_read(resp.result, &fi, &err) < 0) {
                (void)printf("?????????? %s (%s)\n", v[at + i].name, err.code);
                continue;
            }
            mode_string(fi.mode, ms);
            (void)printf("%s %3llu %5llu %5llu %10llu ", ms, (unsigned long long)fi.nlink,
                         (unsigned long long)fi.uid, (unsigned long long)fi.gid,
                         (unsigned long long)fi.size);
            print_time(true, fi.mtime_ns, false);
            (void)printf(" %s", v[at + i].name);
            print_target(&fi);
            (void)putchar('\n');
        }
    }
}

static int cmd_ls(struct sbx_client *c, const struct fs_opts *o, int n, char **paths)
{
    static char *root[] = { "/" };
    int rc = 0;

    if (n == 0) {
        n = 1;
        paths = root;
    }
    for (int i = 0; i < n; i++) {
        struct lsent *v = NULL;
        size_t count = 0;
        json_t *arr = NULL;
        if (read_dir(c, o, paths[i], &v, &count) < 0) {
            rc = CLI_EXIT_FAIL;
            continue;
        }
        if (n > 1 && !o->json) {
            (void)printf("%s%s:\n", i > 0 ? "\n" : "", paths[i]);
        }
        if (o->json) {
            arr = json_array();
        }
        if (o->long_fmt && !o->json) {
            size_t k = 0;
            for (size_t j = 0; j < count; j++) {
                if (o->all || v[j].name[0] != '.') {
                    v[k++] = v[j];
                } else {
                    free(v[j].name);
                }
            }
            ls_long(c, o, paths[i], v, k);
            count = k;
        } else {
            for (size_t j = 0; j < count; j++) {
                if (!o->all && v[j].name[0] == '.') {
                    continue;
                }
                if (o->json) {
                    (void)json_array_append_new(
                        arr, json_pack("{s:o,s:o}", "name", cli_json_str(v[j].name, v[j].len),
                                       "type", cli_json_str(v[j].type, strlen(v[j].type))));
                } else {
                    (void)fwrite(v[j].name, 1, v[j].len, stdout);
                    (void)fputs(strcmp(v[j].type, "dir") == 0 ? "/\n" : "\n", stdout);
                }
            }
        }
        if (o->json) {
            if (cli_json_dump(stdout, arr) < 0) {
                rc = CLI_EXIT_FAIL;
            }
            (void)putchar('\n');
            json_decref(arr);
        }
        for (size_t j = 0; j < count; j++) {
            free(v[j].name);
        }
        free(v);
    }
    return rc;
}

static int cmd_simple_each(struct sbx_client *c, const struct fs_opts *o, int n, char **paths,
                           const char *method)
{
    int rc = 0;

    for (int i = 0; i < n; i++) {
        struct sbx_msg resp;
        uint32_t id;
        uint32_t extra = 0;
        msgpack_packer *pk;
        bool mk = strcmp(method, SBX_M_FS_MKDIR) == 0, rm = strcmp(method, SBX_M_FS_REMOVE) == 0;

        extra = mk ? 1 + o->has_mode : rm ? 1 : 0;
        pk = fs_begin(c, o, method, 1 + extra, &id);
        kv_bstr(pk, "path", paths[i]);
        if (mk) {
            sbx_pack_kv_bool(pk, "parents", o->parents);
            if (o->has_mode) {
                sbx_pack_kv_u64(pk, "mode", o->mode);
            }
        } else if (rm) {
            sbx_pack_kv_bool(pk, "recursive", o->recursive);
        }
        if (fs_finish(c, id, &resp) < 0) {
            rc = CLI_EXIT_FAIL;
        }
    }
    return rc;
}

static int cmd_two(struct sbx_client *c, const struct fs_opts *o, char **args, const char *method)
{
    struct sbx_msg resp;
    uint32_t id;
    bool cp = strcmp(method, SBX_M_FS_COPY) == 0,
         ln = strcmp(method, SBX_M_FS_LINK) == 0 || strcmp(method, SBX_M_FS_SYMLINK) == 0;
    msgpack_packer *pk = fs_begin(c, o, method, 2 + cp, &id);

    kv_bstr(pk, ln ? "target" : "from", args[0]);
    kv_bstr(pk, ln ? "path" : "to", args[1]);
    if (cp) {
        sbx_pack_kv_bool(pk, "recursive", o->recursive);
    }
    return fs_finish(c, id, &resp) < 0 ? CLI_EXIT_FAIL : 0;
}

/* Print the string field @key of a result (readlink, realpath, mktemp). */
static int print_field(const struct fs_opts *o, struct sbx_msg *resp, const char *key)
{
    if (o->json) {
        print_json(resp->result);
    } else {
        print_bytes(sbx_obj_get(resp->result, key));
        (void)putchar('\n');
    }
    return 0;
}

static int cmd_chmod(struct sbx_client *c, const struct fs_opts *o, int n, char **args)
{
    char *end;
    unsigned long long mode = strtoull(args[0], &end, 8);
    int rc = 0;

    if (args[0][0] == '\0' || *end != '\0' || mode > 07777) {
        (void)fprintf(stderr, "sbx: fs chmod: bad mode \"%s\" (octal, at most 7777)\n", args[0]);
        return CLI_EXIT_USAGE;
    }
    for (int i = 1; i < n; i++) {
        struct sbx_msg resp;
        uint32_t id;
        msgpack_packer *pk = fs_begin(c, o, SBX_M_FS_CHMOD, 2, &id);
        kv_bstr(pk, "path", args[i]);
        sbx_pack_kv_u64(pk, "mode", mode);
        if (fs_finish(c, id, &resp) < 0) {
            rc = CLI_EXIT_FAIL;
        }
    }
    return rc;
}

static int cmd_mktemp(struct sbx_client *c, const struct fs_opts *o)
{
    struct sbx_msg resp;
    uint32_t id;
    msgpack_packer *pk =
        fs_begin(c, o, SBX_M_FS_MKTEMP,
                 1 + (o->dir != NULL) + (o->prefix != NULL) + (o->suffix != NULL), &id);

    sbx_pack_kv_bool(pk, "directory", o->directory);
    if (o->dir != NULL) {
        kv_bstr(pk, "dir", o->dir);
    }
    if (o->prefix != NULL) {
        kv_bstr(pk, "prefix", o->prefix);
    }
    if (o->suffix != NULL) {
        kv_bstr(pk, "suffix", o->suffix);
    }
    if (fs_finish(c, id, &resp) < 0) {
        return CLI_EXIT_FAIL;
    }
    return print_field(o, &resp, "path");
}

/* fs.open @path with @flags (NULL-terminated); returns the handle or 0. */
static uint64_t fh_open(struct sbx_client *c, const struct fs_opts *o, const char *path,
                        const char *const *flags)
{
    struct sbx_msg resp;
    uint32_t id, n = 0;
    msgpack_packer *pk = fs_begin(c, o, SBX_M_FS_OPEN, 2 + o->has_mode, &id);

    kv_bstr(pk, "path", path);
    while (flags[n] != NULL) {
        n++;
    }
    sbx_pack_cstr(pk, "flags");
    (void)msgpack_pack_array(pk, n);
    for (uint32_t i = 0; i < n; i++) {
        sbx_pack_cstr(pk, flags[i]);
    }
    if (o->has_mode) {
        sbx_pack_kv_u64(pk, "mode", o->mode);
    }
    if (fs_finish(c, id, &resp) < 0) {
        return 0;
    }
    return get_u64(resp.result, "fh");
}

static void fh_close(struct sbx_client *c, const struct fs_opts *o, uint64_t fh)
{
    struct sbx_msg resp;
    uint32_t id;
    msgpack_packer *pk = fs_begin(c, o, SBX_M_FS_CLOSE, 1, &id);

    sbx_pack_kv_u64(pk, "fh", fh);
    (void)fs_finish(c, id, &resp);
}

/* cat: fs.read at the handle's position, chunk_max at a time, until a read returns nothing. */
static int cmd_cat(struct sbx_client *c, const struct fs_opts *o, int n, char **paths)
{
    static const char *const rd[] = { "read", NULL };
    int rc = 0;

    for (int i = 0; i < n; i++) {
        uint64_t fh = fh_open(c, o, paths[i], rd);

        if (fh == 0) {
            rc = CLI_EXIT_FAIL;
            continue;
        }
        for (;;) {
            struct sbx_msg resp;
            const char *p;
            size_t len;
            uint32_t id;
            msgpack_packer *pk = fs_begin(c, o, SBX_M_FS_READ, 2, &id);
            sbx_pack_kv_u64(pk, "fh", fh);
            sbx_pack_kv_u64(pk, "len", sbx_client_chunk_max(c));
            if (fs_finish(c, id, &resp) < 0) {
                rc = CLI_EXIT_FAIL;
                break;
            }
            if (!sbx_obj_bytes(sbx_obj_get(resp.result, "data"), &p, &len) || len == 0) {
                break;
            }
            if (cli_write_all(STDOUT_FILENO, p, len) < 0) {
                return CLI_EXIT_FAIL;
            }
        }
        fh_close(c, o, fh);
    }
    return rc;
}

/* write: stdin to PATH through a handle, chunk_max at a time; a short write is retried. */
static int cmd_write(struct sbx_client *c, const struct fs_opts *o, const char *path)
{
    static const char *const trunc[] = { "write", "create", "truncate", NULL };
    static const char *const app[] = { "append", "create", NULL };
    uint32_t chunk = sbx_client_chunk_max(c);
    uint64_t fh = fh_open(c, o, path, o->append ? app : trunc);
    char *buf;
    int rc = 0;

    if (fh == 0) {
        return CLI_EXIT_FAIL;
    }
    buf = malloc(chunk);
    if (buf == NULL) {
        return CLI_EXIT_FAIL;
    }
    for (;;) {
        ssize_t got = read(STDIN_FILENO, buf, chunk);
        size_t off = 0;
        if (got < 0) {
            perror("sbx: fs write: stdin");
            rc = CLI_EXIT_FAIL;
            break;
        }
        if (got == 0) {
            break;
        }
        while (off < (size_t)got) {
            struct sbx_msg resp;
            uint32_t id;
            msgpack_packer *pk = fs_begin(c, o, SBX_M_FS_WRITE, 2, &id);
            sbx_pack_kv_u64(pk, "fh", fh);
            sbx_pack_cstr(pk, "data");
            sbx_pack_bin(pk, buf + off, (size_t)got - off);
            if (fs_finish(c, id, &resp) < 0) {
                rc = CLI_EXIT_FAIL;
                break;
            }
            off += get_u64(resp.result, "written");
        }
        if (rc != 0) {
            break;
        }
    }
    free(buf);
    fh_close(c, o, fh);
    return rc;
}

static void pack_strs(msgpack_packer *pk, const char *key, const char *const *v, unsigned n)
{
    sbx_pack_cstr(pk, key);
    (void)msgpack_pack_array(pk, n);
    for (unsigned i = 0; i < n; i++) {
        sbx_pack_bstr(pk, v[i], strlen(v[i]));
    }
}

/* Read an entry stream to its end, printing each entry's path (or the entry as JSON). */
static int print_entries(struct sbx_client *c, const struct fs_opts *o, uint32_t sid)
{
    int rc = 0;

    for (;;) {
        struct sbx_msg m;
        struct sbx_err err;
        if (sbx_client_recv(c, &m, -1, &err) < 0) {
            fs_err(&err);
            return CLI_EXIT_FAIL;
        }
        if (m.kind == SBX_MSG_DATA && m.stream == sid) {
            size_t off = 0;
            while (off < m.data_len) {
                msgpack_unpacked u;
                const msgpack_object *e, *eo;
                msgpack_unpacked_init(&u);
                if (msgpack_unpack_next(&u, (const char *)m.data, m.data_len, &off) !=
                    MSGPACK_UNPACK_SUCCESS) {
                    msgpack_unpacked_destroy(&u);
                    (void)fprintf(stderr, "sbx: fs %s: undecodable entry\n", cmd_name);
                    return CLI_EXIT_FAIL;
                }
                e = &u.data;
                eo = sbx_obj_get(e, "error");
                if (o->json) {
                    print_json(e);
                } else if (eo != NULL) {
                    struct sbx_err ee;
                    sbx_err_from_obj(eo, &ee);
                    fs_err(&ee);
                    rc = CLI_EXIT_FAIL;
                } else {
                    print_bytes(sbx_obj_get(e, "path"));
                    (void)putchar('\n');
                }
                msgpack_unpacked_destroy(&u);
            }
            if (sbx_client_consumed(c, sid, m.data_len, &err) < 0) {
                fs_err(&err);
                return CLI_EXIT_FAIL;
            }
        } else if (m.kind == SBX_MSG_NOTIFY && sbx_msg_method_is(&m, SBX_N_STREAM_END)) {
            const msgpack_object *eo = sbx_obj_get(m.params, "error");
            if (get_u64(m.params, "stream") != sid) {
                continue;
            }
            if (eo != NULL && eo->type == MSGPACK_OBJECT_MAP) {
                struct sbx_err ee;
                sbx_err_from_obj(eo, &ee);
                fs_err(&ee);
                return CLI_EXIT_FAIL;
            }
            return rc;
        }
    }
}

static int cmd_find(struct sbx_client *c, const struct fs_opts *o, const char *path)
{
    struct sbx_msg resp;
    uint32_t id;
    bool f = true, d = true, l = true;
    msgpack_packer *pk;

    if (o->type != NULL) {
        f = strchr(o->type, 'f') != NULL;
        d = strchr(o->type, 'd') != NULL;
        l = strchr(o->type, 'l') != NULL;
        if (strspn(o->type, "fdl,") != strlen(o->type)) {
            (void)fprintf(stderr, "sbx: fs find: --type takes f, d and/or l\n");
            return CLI_EXIT_USAGE;
        }
    }
    pk =
        fs_begin(c, o, SBX_M_FS_WALK,
                 5 + o->has_depth + (o->nlist[0] > 0) + (o->nlist[1] > 0) + (o->nlist[2] > 0), &id);
    kv_bstr(pk, "path", path);
    sbx_pack_kv_bool(pk, "include_files", f);
    sbx_pack_kv_bool(pk, "include_dirs", d);
    sbx_pack_kv_bool(pk, "include_symlinks", l);
    sbx_pack_kv_bool(pk, "follow_symlinks", o->follow);
    if (o->has_depth) {
        sbx_pack_kv_u64(pk, "max_depth", o->depth);
    }
    if (o->nlist[0] > 0) {
        pack_strs(pk, "exts", o->list[0], o->nlist[0]);
    }
    if (o->nlist[1] > 0) {
        pack_strs(pk, "match", o->list[1], o->nlist[1]);
    }
    if (o->nlist[2] > 0) {
        pack_strs(pk, "skip", o->list[2], o->nlist[2]);
    }
    if (fs_finish(c, id, &resp) < 0) {
        return CLI_EXIT_FAIL;
    }
    return print_entries(c, o, (uint32_t)get_u64(resp.result, "stream"));
}

static int cmd_glob(struct sbx_client *c, const struct fs_opts *o, const char *pattern)
{
    struct sbx_msg resp;
    uint32_t id;
    msgpack_packer *pk =
        fs_begin(c, o, SBX_M_FS_GLOB, 3 + (o->root != NULL) + (o->nlist[0] > 0), &id);

    kv_bstr(pk, "pattern", pattern);
    sbx_pack_kv_bool(pk, "include_dirs", !o->no_dirs);
    sbx_pack_kv_bool(pk, "follow_symlinks", o->follow);
    if (o->root != NULL) {
        kv_bstr(pk, "root", o->root);
    }
    if (o->nlist[0] > 0) {
        pack_strs(pk, "exclude", o->list[0], o->nlist[0]);
    }
    if (fs_finish(c, id, &resp) < 0) {
        return CLI_EXIT_FAIL;
    }
    return print_entries(c, o, (uint32_t)get_u64(resp.result, "stream"));
}

static volatile sig_atomic_t watch_stop;

static void watch_sig(int sig)
{
    (void)sig;
    watch_stop = 1;
}

/* watch: one fs.watch per path, then print fs.event notifications until SIGINT / SIGTERM. */
static int cmd_watch(struct sbx_client *c, const struct fs_opts *o, int n, char **paths)
{
    struct sigaction sa;

    for (int i = 0; i < n; i++) {
        struct sbx_msg resp;
        uint32_t id;
        msgpack_packer *pk = fs_begin(c, o, SBX_M_FS_WATCH, 2, &id);
        kv_bstr(pk, "path", paths[i]);
        sbx_pack_kv_bool(pk, "recursive", o->recursive);
        if (fs_finish(c, id, &resp) < 0) {
            return CLI_EXIT_FAIL;
        }
    }
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = watch_sig;
    (void)sigaction(SIGINT, &sa, NULL);
    (void)sigaction(SIGTERM, &sa, NULL);
    if (!o->json) {
        (void)fprintf(stderr, "sbx: watching; Ctrl-C stops\n");
    }
    while (!watch_stop) {
        struct sbx_msg m;
        struct sbx_err err;
        int r = sbx_client_recv(c, &m, 200, &err);
        if (r < 0) {
            fs_err(&err);
            return CLI_EXIT_FAIL;
        }
        if (r == 0 || m.kind != SBX_MSG_NOTIFY || !sbx_msg_method_is(&m, SBX_N_FS_EVENT)) {
            continue;
        }
        if (o->json) {
            print_json(m.params);
        } else {
            const msgpack_object *from = sbx_obj_get(m.params, "from");
            print_bytes(sbx_obj_get(m.params, "kind"));
            (void)putchar(' ');
            if (from != NULL) {
                print_bytes(from);
                (void)fputs(" -> ", stdout);
            }
            print_bytes(sbx_obj_get(m.params, "path"));
            (void)putchar('\n');
        }
        (void)fflush(stdout);
    }
    return 0;
}

struct fs_cmd {
    const char *name;
    int min, max; /* positional arguments */
};

static const struct fs_cmd fs_cmds[] = {
    { "ls", 0, 1 << 20 },    { "stat", 1, 1 << 20 }, { "mkdir", 1, 1 << 20 }, { "rm", 1, 1 << 20 },
    { "mv", 2, 2 },          { "cp", 2, 2 },         { "cat", 1, 1 << 20 },   { "write", 1, 1 },
    { "chmod", 2, 1 << 20 }, { "ln", 2, 2 },         { "readlink", 1, 1 },    { "realpath", 1, 1 },
    { "mktemp", 0, 0 },      { "find", 1, 1 },       { "glob", 1, 1 },        { "watch", 1, 64 },
};

int cli_cmd_fs(struct cli *cli, int argc, char **argv)
{
    struct fs_opts o = { 0 };
    const struct fs_cmd *fc = NULL;
    struct sbx_client *c;
    struct sbx_msg resp;
    char **args;
    int first, n, rc;

    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        (void)fputs(fs_usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? CLI_EXIT_USAGE : 0;
    }
    for (size_t i = 0; i < sizeof(fs_cmds) / sizeof(fs_cmds[0]); i++) {
        if (strcmp(argv[1], fs_cmds[i].name) == 0) {
            fc = &fs_cmds[i];
        }
    }
    if (fc == NULL) {
        (void)fprintf(stderr, "sbx: fs: unknown command \"%s\"\n%s", argv[1], fs_usage);
        return CLI_EXIT_USAGE;
    }
    cmd_name = fc->name;
    o.json = cli->json;
    first = fs_parse(&o, argc - 1, argv + 1);
    if (first < 0) {
        return CLI_EXIT_USAGE;
    }
    if (o.help) {
        (void)fputs(fs_usage, stdout);
        return 0;
    }
    args = argv + 1 + first;
    n = argc - 1 - first;
    if (n < fc->min || n > fc->max) {
        (void)fprintf(stderr, "sbx: fs %s: wrong number of arguments\n%s", fc->name, fs_usage);
        return CLI_EXIT_USAGE;
    }
    c = cli_connect(cli);
    if (c == NULL) {
        return CLI_EXIT_FAIL;
    }
    if (strcmp(fc->name, "ls") == 0) {
        rc = cmd_ls(c, &o, n, args);
    } else if (strcmp(fc->name, "stat") == 0) {
        rc = cmd_stat(c, &o, n, args);
    } else if (strcmp(fc->name, "mkdir") == 0) {
        rc = cmd_simple_each(c, &o, n, args, SBX_M_FS_MKDIR);
    } else if (strcmp(fc->name, "rm") == 0) {
        rc = cmd_simple_each(c, &o, n, args, SBX_M_FS_REMOVE);
    } else if (strcmp(fc->name, "mv") == 0) {
        rc = cmd_two(c, &o, args, SBX_M_FS_RENAME);
    } else if (strcmp(fc->name, "cp") == 0) {
        rc = cmd_two(c, &o, args, SBX_M_FS_COPY);
    } else if (strcmp(fc->name, "ln") == 0) {
        rc = cmd_two(c, &o, args, o.symbolic ? SBX_M_FS_SYMLINK : SBX_M_FS_LINK);
    } else if (strcmp(fc->name, "cat") == 0) {
        rc = cmd_cat(c, &o, n, args);
    } else if (strcmp(fc->name, "write") == 0) {
        rc = cmd_write(c, &o, args[0]);
    } else if (strcmp(fc->name, "chmod") == 0) {
        rc = cmd_chmod(c, &o, n, args);
    } else if (strcmp(fc->name, "readlink") == 0 || strcmp(fc->name, "realpath") == 0) {
        bool rl = fc->name[4] == 'l';
        rc = fs_path_call(c, &o, rl ? SBX_M_FS_READLINK : SBX_M_FS_REALPATH, args[0], &resp) < 0
                 ? CLI_EXIT_FAIL
                 : print_field(&o, &resp, rl ? "target" : "path");
    } else if (strcmp(fc->name, "mktemp") == 0) {
        rc = cmd_mktemp(c, &o);
    } else if (strcmp(fc->name, "find") == 0) {
        rc = cmd_find(c, &o, args[0]);
    } else if (strcmp(fc->name, "glob") == 0) {
        rc = cmd_glob(c, &o, args[0]);
    } else {
        rc = cmd_watch(c, &o, n, args);
    }
    (void)fflush(stdout);
    sbx_client_close(c);
    return rc;
}
