/*
 * The fs family's path methods (PROTOCOL.md §17.3), readdir cursors and file handles (§17.7).
 * Every call is a short synchronous system call on the loop thread; recursive remove and copy
 * work through directory fds (openat/unlinkat, O_NOFOLLOW) so a symlink in the tree never leads
 * them outside it.
 */
#include "fs.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "conn.h"
#include "path.h"
#include "sbx/schema.h"

/* A readdir cursor: an open directory stream the client pages through. */
struct fs_cursor {
    struct agent_link link;
    uint32_t id;
    DIR *dir;
    uint64_t used_ns;
};

struct fs_handle {
    uint32_t id;
    int fd;
    char *path; /* as opened, for errors */
};

/* Per-connection fs state: file handles and readdir cursors. */
struct agent_fs {
    struct fs_handle *fh;
    unsigned nfh, capfh;
    uint32_t next_fh;
    struct agent_link cursors;
    unsigned ncursors;
    uint32_t next_cursor;
    struct agent_link jobs; /* fs.remove / fs.copy on the threadpool */
    struct agent_conn *conn;
    struct agent_conn_ref ref; /* frees all of it when the connection closes */
};

static void fs_gone(struct agent_conn_ref *r);

/* --- shared helpers ------------------------------------------------------------------------ */

int agent_fs_err(struct sbx_err *err, int errnum, const char *op, const char *path)
{
    sbx_err_sys(err, errnum, NULL, "%s \"%s\"", op, path);
    sbx_err_set_path(err, path);
    return -1;
}

/* Two-path methods: the message names both, `path` the first. */
static int fs_err2(struct sbx_err *err, int errnum, const char *op, const char *from,
                   const char *to)
{
    sbx_err_sys(err, errnum, NULL, "%s \"%.100s\" -> \"%.100s\"", op, from, to);
    sbx_err_set_path(err, from);
    return -1;
}

int agent_fs_path_param(const msgpack_object *params, const char *key, int required, char *out,
                        struct sbx_err *err)
{
    char rel[AGENT_FS_PATH_BUF];
    char cwd[AGENT_FS_PATH_BUF] = "/";
    size_t rn, cn;
    int r = sbx_param_bstr(params, key, required, rel, sizeof(rel), err);

    if (r != 0) {
        return r;
    }
    if (rel[0] == '\0') {
        return sbx_err_param(err, key, "%s must not be empty", key);
    }
    if (rel[0] == '/') {
        memcpy(out, rel, strlen(rel) + 1);
        return 0;
    }
    r = sbx_param_bstr(params, "cwd", SBX_OPTIONAL, cwd, sizeof(cwd), err);
    if (r < 0) {
        return r;
    }
    if (cwd[0] != '/') {
        return sbx_err_param(err, "cwd", "cwd must be an absolute path");
    }
    rn = strlen(rel);
    cn = strlen(cwd);
    while (cn > 1 && cwd[cn - 1] == '/') {
        cn--;
    }
    if (cn + 1 + rn > SBX_PATH_MAX) {
        return sbx_err_param(err, key, "%s joined to cwd is longer than %u bytes", key,
                             SBX_PATH_MAX);
    }
    memcpy(out, cwd, cn);
    if (cwd[cn - 1] != '/') {
        out[cn++] = '/';
    }
    memcpy(out + cn, rel, rn + 1);
    return 0;
}

const char *agent_fs_type_name(unsigned mode)
{
    switch (mode & S_IFMT) {
    case S_IFREG:
        return "file";
    case S_IFDIR:
        return "dir";
    case S_IFLNK:
        return "symlink";
    case S_IFIFO:
        return "fifo";
    case S_IFSOCK:
        return "socket";
    case S_IFCHR:
        return "char";
    case S_IFBLK:
        return "block";
    default:
        return "unknown";
    }
}

const char *agent_fs_dtype_name(unsigned char d_type)
{
    switch (d_type) {
    case DT_REG:
        return "file";
    case DT_DIR:
        return "dir";
    case DT_LNK:
        return "symlink";
    case DT_FIFO:
        return "fifo";
    case DT_SOCK:
        return "socket";
    case DT_CHR:
        return "char";
    case DT_BLK:
        return "block";
    default:
        return NULL;
    }
}

/* Reply {key: v}. */
static void reply_u64(struct agent_conn *c, uint32_t id, const char *key, uint64_t v)
{
    msgpack_packer *pk = agent_conn_begin(c);

    sbx_pack_response_head(pk, id);
    (void)msgpack_pack_map(pk, 1);
    sbx_pack_kv_u64(pk, key, v);
    agent_conn_send(c);
}

static struct agent_fs *fs_state(struct agent_conn *c)
{
    if (c->fs == NULL) {
        c->fs = calloc(1, sizeof(*c->fs));
        if (c->fs != NULL) {
            agent_list_init(&c->fs->cursors);
            agent_list_init(&c->fs->jobs);
            c->fs->next_fh = 1;
            c->fs->next_cursor = 1;
            c->fs->conn = c;
            agent_conn_ref_add(c, &c->fs->ref, fs_gone);
        }
    }
    return c->fs;
}

/* --- FileInfo ------------------------------------------------------------------------------ */

static int64_t ts_ns(const struct statx_timestamp *t)
{
    return (int64_t)t->tv_sec * 1000000000 + t->tv_nsec;
}

/* Pack a FileInfo map; @target (may be NULL) is a symlink's target for fs.lstat. */
static void pack_fileinfo(msgpack_packer *pk, const struct statx *st, const char *target,
                          ssize_t tlen)
{
    struct sbx_fileinfo fi = {
        .type = agent_fs_type_name(st->stx_mode),
        .size = st->stx_size,
        .mode = st->stx_mode,
        .uid = st->stx_uid,
        .gid = st->stx_gid,
        .nlink = st->stx_nlink,
        .ino = st->stx_ino,
        .dev = makedev(st->stx_dev_major, st->stx_dev_minor),
        .rdev = makedev(st->stx_rdev_major, st->stx_rdev_minor),
        .blksize = st->stx_blksize,
        .blocks = st->stx_blocks,
        .atime_ns = ts_ns(&st->stx_atime),
        .mtime_ns = ts_ns(&st->stx_mtime),
        .ctime_ns = ts_ns(&st->stx_ctime),
        .has_birthtime = (st->stx_mask & STATX_BTIME) != 0,
        .birthtime_ns = ts_ns(&st->stx_btime),
        .target = target,
        .target_len = target != NULL ? (size_t)tlen : 0,
    };

    sbx_fileinfo_pack(pk, &fi);
}

static void reply_fileinfo(struct agent_conn *c, uint32_t id, const struct statx *st,
                           const char *target, ssize_t tlen)
{
    msgpack_packer *pk = agent_conn_begin(c);

    sbx_pack_response_head(pk, id);
    pack_fileinfo(pk, st, target, tlen);
    agent_conn_send(c);
}

/* fs.stat / fs.lstat: AGENT_REPLIED with the FileInfo, or -1 with @err. */
static int fs_stat_common(struct agent_conn *c, const struct sbx_msg *m, bool follow,
                          struct sbx_err *err)
{
    char path[AGENT_FS_PATH_BUF], target[AGENT_FS_PATH_BUF];
    struct statx st;
    ssize_t tlen = -1;

    if (agent_fs_path_param(m->params, "path", SBX_REQUIRED, path, err) < 0) {
        return -1;
    }
    if (statx(AT_FDCWD, path, follow ? 0 : AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS | STATX_BTIME,
              &st) < 0) {
        return agent_fs_err(err, errno, follow ? "stat" : "lstat", path);
    }
    if (!follow && S_ISLNK(st.stx_mode)) {
        tlen = readlink(path, target, sizeof(target) - 1);
        /* Reading the link updated its atime: stat again so the reply is what lstat(2) says
         * now. A link replaced meanwhile loses its target rather than reporting a wrong one. */
        if (tlen < 0 ||
            statx(AT_FDCWD, path, AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS | STATX_BTIME, &st) < 0) {
            return agent_fs_err(err, errno, "readlink", path);
        }
        if (!S_ISLNK(st.stx_mode)) {
            tlen = -1;
        }
    }
    reply_fileinfo(c, m->id, &st, tlen >= 0 ? target : NULL, tlen);
    return AGENT_REPLIED;
}

int agent_fs_stat(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    return fs_stat_common(c, m, true, err);
}

int agent_fs_lstat(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    return fs_stat_common(c, m, false, err);
}

/* --- readdir ------------------------------------------------------------------------------- */

static void cursor_free(struct agent_fs *fs, struct fs_cursor *cur)
{
    agent_list_del(&cur->link);
    fs->ncursors--;
    (void)closedir(cur->dir);
    free(cur);
}

static void cursors_expire(struct agent_fs *fs, uint64_t now)
{
    struct agent_link *l, *next;

    for (l = fs->cursors.next; l != &fs->cursors; l = next) {
        struct fs_cursor *cur = agent_container_of(l, struct fs_cursor, link);
        next = l->next;
        if (now - cur->used_ns > (uint64_t)SBX_FS_CURSOR_IDLE_MS * 1000000) {
            cursor_free(fs, cur);
        }
    }
}

static struct fs_cursor *cursor_find(struct agent_fs *fs, const char *s, size_t n)
{
    char buf[16];
    char *end;
    unsigned long id;

    if (n < 2 || n >= sizeof(buf) || s[0] != 'c') {
        return NULL;
    }
    memcpy(buf, s + 1, n - 1);
    buf[n - 1] = '\0';
    errno = 0;
    id = strtoul(buf, &end, 10);
    if (errno != 0 || *end != '\0') {
        return NULL;
    }
    for (struct agent_link *l = fs->cursors.next; l != &fs->cursors; l = l->next) {
        struct fs_cursor *cur = agent_container_of(l, struct fs_cursor, link);
        if (cur->id == id) {
            return cur;
        }
    }
    return NULL;
}

/* One collected entry: type name, then the name and its NUL, packed into a growing buffer. */
struct dirbuf {
    char *p;
    size_t len, cap;
    uint32_t n;
};

static int dirbuf_add(struct dirbuf *b, const char *type, const char *name)
{
    size_t tl = strlen(type) + 1, nl = strlen(name) + 1;

    if (b->len + tl + nl > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 16384;
        char *np;
        while (cap < b->len + tl + nl) {
            cap *= 2;
        }
        np = realloc(b->p, cap);
        if (np == NULL) {
            return -1;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, type, tl);
    memcpy(b->p + b->len + tl, name, nl);
    b->len += tl + nl;
    b->n++;
    return 0;
}

int agent_fs_readdir(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct agent_fs *fs = fs_state(c);
    char path[AGENT_FS_PATH_BUF];
    struct fs_cursor *cur = NULL;
    struct dirbuf b = { 0 };
    uint64_t limit = SBX_FS_READDIR_DEFAULT, now = agent_now_ns();
    const char *cs;
    size_t cn;
    bool more = false;
    msgpack_packer *pk;
    int r;

    if (fs == NULL) {
        return sbx_err_oom(err);
    }
    cursors_expire(fs, now);
    if (sbx_param_u64(m->params, "limit", SBX_OPTIONAL, 1, SBX_FS_READDIR_MAX, &limit, err) < 0) {
        return -1;
    }
    r = sbx_param_str(m->params, "cursor", SBX_OPTIONAL, 15, &cs, &cn, err);
    if (r < 0) {
        return -1;
    }
    if (r == 0) {
        cur = cursor_find(fs, cs, cn);
        if (cur == NULL) {
            sbx_err_set(err, SBX_E_NOT_FOUND, "no such readdir cursor (expired or finished)");
            return -1;
        }
    } else {
        int fd;
        DIR *d;
        if (agent_fs_path_param(m->params, "path", SBX_REQUIRED, path, err) < 0) {
            return -1;
        }
        if (fs->ncursors >= SBX_FS_CURSORS_MAX) {
            sbx_err_limit(err, "max_cursors", SBX_FS_CURSORS_MAX,
                          "too many open readdir cursors (cap %u)", SBX_FS_CURSORS_MAX);
            return -1;
        }
        fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0) {
            return agent_fs_err(err, errno, "opendir", path);
        }
        d = fdopendir(fd);
        cur = d != NULL ? calloc(1, sizeof(*cur)) : NULL;
        if (cur == NULL) {
            if (d != NULL) {
                (void)closedir(d);
            } else {
                (void)close(fd);
            }
            return sbx_err_oom(err);
        }
        cur->dir = d;
        cur->id = fs->next_cursor++;
        agent_list_add_tail(&fs->cursors, &cur->link);
        fs->ncursors++;
    }
    cur->used_ns = now;
    for (;;) {
        struct dirent *de;
        const char *type;
        if (b.n >= limit) {
            more = true;
            break;
        }
        de = agent_path_readdir(cur->dir);
        if (de == NULL) {
            if (errno != 0) {
                agent_fs_err(err, errno, "readdir", r == 0 ? "(cursor)" : path);
                free(b.p);
                cursor_free(fs, cur);
                return -1;
            }
            break;
        }
        type = agent_fs_dtype_name(de->d_type);
        if (type == NULL) {
            struct stat st;
            type = fstatat(dirfd(cur->dir), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0
                       ? agent_fs_type_name(st.st_mode)
                       : "unknown"; /* vanished meanwhile */
        }
        if (dirbuf_add(&b, type, de->d_name) < 0) {
            free(b.p);
            cursor_free(fs, cur);
            return sbx_err_oom(err);
        }
    }
    pk = agent_conn_begin(c);
    sbx_pack_response_head(pk, m->id);
    (void)msgpack_pack_map(pk, 2);
    sbx_pack_cstr(pk, "entries");
    (void)msgpack_pack_array(pk, b.n);
    for (size_t off = 0; off < b.len;) {
        const char *type = b.p + off;
        const char *name = type + strlen(type) + 1;
        size_t nl = strlen(name);
        (void)msgpack_pack_map(pk, 2);
        sbx_pack_cstr(pk, "name");
        sbx_pack_bstr(pk, name, nl);
        sbx_pack_kv_str(pk, "type", type);
        off = (size_t)(name + nl + 1 - b.p);
    }
    sbx_pack_cstr(pk, "cursor");
    if (more) {
        char id[16];
        (void)snprintf(id, sizeof(id), "c%u", cur->id);
        sbx_pack_cstr(pk, id);
    } else {
        (void)msgpack_pack_nil(pk);
        cursor_free(fs, cur);
    }
    agent_conn_send(c);
    free(b.p);
    return AGENT_REPLIED;
}

/* --- mkdir, remove, rename ----------------------------------------------------------------- */

int agent_fs_mkdir(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    char path[AGENT_FS_PATH_BUF];
    bool parents = false;
    uint64_t mode = 0777;

    if (agent_fs_path_param(m->params, "path", SBX_REQUIRED, path, err) < 0 ||
        sbx_param_bool(m->params, "parents", SBX_OPTIONAL, &parents, err) < 0 ||
        sbx_param_u64(m->params, "mode", SBX_OPTIONAL, 0, 07777, &mode, err) < 0) {
        return -1;
    }
    if (parents) {
        /* Missing parents as mkdir(1) -p makes them: 0777, then the umask (PROTOCOL.md §17.3). */
        if (agent_path_mkdir(path, 0777, (mode_t)mode, err) < 0) {
            return -1;
        }
    } else if (mkdir(path, (mode_t)mode) < 0) {
        return agent_fs_err(err, errno, "mkdir", path);
    }
    agent_conn_reply_empty(c, m->id);
    return AGENT_REPLIED;
}

/*
 * Remove @name in @dfd and everything below it, never following a symlink: directories are
 * opened O_NOFOLLOW relative to their parent's fd. @path holds the entry's path for errors
 * (cut when too long); @plen is its length.
 */
static int remove_tree_at(int dfd, const char *name, char *path, size_t plen, struct sbx_err *err)
{
    _cleanup_closedir_ DIR *d = NULL;
    int fd = agent_path_opendir_at(dfd, name);
    struct dirent *de;

    if (fd < 0) {
        if (errno == ENOTDIR || errno == ELOOP) {
            if (unlinkat(dfd, name, 0) < 0) {
                return agent_fs_err(err, errno, "unlink", path);
            }
            return 0;
        }
        return agent_fs_err(err, errno, "open", path);
    }
    d = fdopendir(fd);
    if (d == NULL) {
        int e = errno;
        (void)close(fd);
        return agent_fs_err(err, e, "opendir", path);
    }
    for (;;) {
        size_t nl;
        bool isdir;
        de = agent_path_readdir(d);
        if (de == NULL) {
            if (errno != 0) {
                return agent_fs_err(err, errno, "readdir", path);
            }
            break;
        }
        nl = strlen(de->d_name);
        if (plen + 1 + nl <= SBX_PATH_MAX) {
            path[plen] = '/';
            memcpy(path + plen + 1, de->d_name, nl + 1);
        }
        isdir = de->d_type == DT_DIR;
        if (de->d_type == DT_UNKNOWN) {
            struct stat st;
            isdir =
                fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode);
        }
        if (isdir) {
            if (remove_tree_at(dirfd(d), de->d_name, path, plen + 1 + nl, err) < 0) {
                return -1;
            }
        } else if (unlinkat(dirfd(d), de->d_name, 0) < 0 && errno != ENOENT) {
            return agent_fs_err(err, errno, "unlink", path);
        }
        path[plen] = '\0';
    }
    if (unlinkat(dfd, name, AT_REMOVEDIR) < 0) {
        return agent_fs_err(err, errno, "rmdir", path);
    }
    return 0;
}

/* The work of fs.remove (on a threadpool thread: a tree can be large). */
static int remove_do(const char *path, bool recursive, struct sbx_err *err)
{
    char parent[AGENT_FS_PATH_BUF], base[AGENT_FS_PATH_BUF];
    _cleanup_close_ int pfd = -1;
    struct stat st;

    if (lstat(path, &st) < 0) {
        return agent_fs_err(err, errno, "remove", path);
    }
    if (!S_ISDIR(st.st_mode)) {
        if (unlink(path) < 0) {
            return agent_fs_err(err, errno, "unlink", path);
        }
    } else if (!recursive) {
        if (rmdir(path) < 0) {
            return agent_fs_err(err, errno, "rmdir", path);
        }
    } else {
        if (agent_path_split(path, parent, sizeof(parent), base, sizeof(base)) < 0) {
            return agent_fs_err(err, EBUSY, "remove", path); /* "/" */
        }
        if (strcmp(base, ".") == 0 || strcmp(base, "..") == 0) {
            return agent_fs_err(err, EINVAL, "remove", path);
        }
        pfd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (pfd < 0) {
            return agent_fs_err(err, errno, "open", parent);
        }
        char buf[AGENT_FS_PATH_BUF]; /* remove_tree_at extends it with entry names */
        memcpy(buf, path, strlen(path) + 1);
        if (remove_tree_at(pfd, base, buf, strlen(buf), err) < 0) {
            return -1;
        }
    }
    return 0;
}

/* Read the two-path params "from"/@k2 and "to"/@k1 style pairs. */
static int two_paths(const struct sbx_msg *m, const char *k1, char *p1, const char *k2, char *p2,
                     struct sbx_err *err)
{
    if (agent_fs_path_param(m->params, k1, SBX_REQUIRED, p1, err) < 0 ||
        agent_fs_path_param(m->params, k2, SBX_REQUIRED, p2, err) < 0) {
        return -1;
    }
    return 0;
}

/* A method on the two path params @k1 and @k2, done by @fn (rename, link); @op names it in
 * errors. */
static int two_path_op(struct agent_conn *c, const struct sbx_msg *m, const char *k1,
                       const char *k2, int (*fn)(const char *, const char *), const char *op,
                       struct sbx_err *err)
{
    char p1[AGENT_FS_PATH_BUF], p2[AGENT_FS_PATH_BUF];

    if (two_paths(m, k1, p1, k2, p2, err) < 0) {
        return -1;
    }
    if (fn(p1, p2) < 0) {
        return fs_err2(err, errno, op, p1, p2);
    }
    agent_conn_reply_empty(c, m->id);
    return AGENT_REPLIED;
}

int agent_fs_rename(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    return two_path_op(c, m, "from", "to", rename, "rename", err);
}

/* --- copy ---------------------------------------------------------------------------------- */

/* Copy the data of @in to @out (both open): copy_file_range, read/write where it is refused. */
static int copy_data(int in, int out)
{
    char *buf = NULL;

    for (;;) {
        ssize_t n = copy_file_range(in, NULL, out, NULL, 1 << 30, 0);
        if (n == 0) {
            return 0;
        }
        if (n > 0) {
            continue;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno != EXDEV && errno != EINVAL && errno != EOPNOTSUPP && errno != ENOSYS) {
            return -1;
        }
        break;
    }
    buf = malloc(1 << 17);
    if (buf == NULL) {
        errno = ENOMEM;
        return -1;
    }
    for (;;) {
        ssize_t n = read(in, buf, 1 << 17);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            int e = errno;
            free(buf);
            errno = e;
            return (int)n;
        }
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(out, buf + off, (size_t)(n - off));
            if (w < 0 && errno == EINTR) {
                continue;
            }
            if (w < 0) {
                int e = errno;
                free(buf);
                errno = e;
                return -1;
            }
            off += w;
        }
    }
}

/* Path of an entry for error messages: @base joined with @name when it fits. */
static void join_path(char *out, const char *base, const char *name)
{
    if (snprintf(out, AGENT_FS_PATH_BUF, "%s/%s", base, name) >= (int)AGENT_FS_PATH_BUF) {
        (void)snprintf(out, AGENT_FS_PATH_BUF, "%s", base);
    }
}

/* Copy the regular file @sfd (already open, described by @st) to @dname in @dfd. */
static int copy_file_fd(int sfd, const struct stat *st, int dfd, const char *dname,
                        const char *spath, const char *dpath, struct sbx_err *err)
{
    _cleanup_close_ int out = openat(dfd, dname, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

    if (out < 0) {
        return agent_fs_err(err, errno, "create", dpath);
    }
    if (copy_data(sfd, out) < 0) {
        return fs_err2(err, errno, "copy", spath, dpath);
    }
    if (fchmod(out, st->st_mode & 07777) < 0) {
        return agent_fs_err(err, errno, "chmod", dpath);
    }
    if (close(agent_fs_steal_fd(&out)) < 0) {
        return agent_fs_err(err, errno, "close", dpath);
    }
    return 0;
}

/* Copy the entry @sname of @sdfd to the new name @dname in @ddfd (tree copy, no following). */
static int copy_tree_at(int sdfd, const char *sname, int ddfd, const char *dname, const char *spath,
                        const char *dpath, struct sbx_err *err)
{
    struct stat st;

    if (fstatat(sdfd, sname, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        return agent_fs_err(err, errno, "lstat", spath);
    }
    if (S_ISREG(st.st_mode)) {
        /* O_NONBLOCK: a FIFO swapped in meanwhile must not block the copy. */
        _cleanup_close_ int sfd =
            openat(sdfd, sname, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        if (sfd < 0) {
            return agent_fs_err(err, errno, "open", spath);
        }
        return copy_file_fd(sfd, &st, ddfd, dname, spath, dpath, err);
    }
    if (S_ISLNK(st.st_mode)) {
        char target[AGENT_FS_PATH_BUF];
        ssize_t n = readlinkat(sdfd, sname, target, sizeof(target) - 1);
        if (n < 0) {
            return agent_fs_err(err, errno, "readlink", spath);
        }
        target[n] = '\0';
        if (symlinkat(target, ddfd, dname) < 0) {
            return agent_fs_err(err, errno, "symlink", dpath);
        }
        return 0;
    }
    if (S_ISFIFO(st.st_mode) || S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) {
        if (mknodat(ddfd, dname, st.st_mode, st.st_rdev) < 0) {
            return agent_fs_err(err, errno, "mknod", dpath);
        }
        return 0;
    }
    if (S_ISDIR(st.st_mode)) {
        _cleanup_closedir_ DIR *d = NULL;
        _cleanup_close_ int out = -1;
        int sfd = agent_path_opendir_at(sdfd, sname);
        struct dirent *de;

        if (sfd < 0) {
            return agent_fs_err(err, errno, "open", spath);
        }
        d = fdopendir(sfd);
        if (d == NULL) {
            int e = errno;
            (void)close(sfd);
            return agent_fs_err(err, e, "opendir", spath);
        }
        if (mkdirat(ddfd, dname, 0700) < 0) {
            return agent_fs_err(err, errno, "mkdir", dpath);
        }
        out = agent_path_opendir_at(ddfd, dname);
        if (out < 0) {
            return agent_fs_err(err, errno, "open", dpath);
        }
        for (;;) {
            char sp[AGENT_FS_PATH_BUF], dp[AGENT_FS_PATH_BUF];
            de = agent_path_readdir(d);
            if (de == NULL) {
                if (errno != 0) {
                    return agent_fs_err(err, errno, "readdir", spath);
                }
                break;
            }
            join_path(sp, spath, de->d_name);
            join_path(dp, dpath, de->d_name);
            if (copy_tree_at(dirfd(d), de->d_name, out, de->d_name, sp, dp, err) < 0) {
                return -1;
            }
        }
        if (fchmod(out, st.st_mode & 07777) < 0) {
            return agent_fs_err(err, errno, "chmod", dpath);
        }
        return 0;
    }
    return 0; /* sockets are skipped */
}

/* The work of fs.copy (on a threadpool thread: a file or tree can be large). */
static int copy_do(const char *from, const char *to, bool recursive, struct sbx_err *err)
{
    char parent[AGENT_FS_PATH_BUF], base[AGENT_FS_PATH_BUF];
    char rfrom[PATH_MAX], rparent[PATH_MAX];
    _cleanup_close_ int sfd = -1, pfd = -1;
    struct stat st, dst;

    sfd = open(from, O_RDONLY | O_NONBLOCK | O_CLOEXEC); /* a FIFO would block the open */
    if (sfd < 0 || fstat(sfd, &st) < 0) {
        return agent_fs_err(err, errno, "open", from);
    }
    if (S_ISDIR(st.st_mode) && !recursive) {
        return agent_fs_err(err, EISDIR, "copy (a directory needs recursive)", from);
    }
    if (stat(to, &dst) == 0) {
        if (dst.st_dev == st.st_dev && dst.st_ino == st.st_ino) {
            return fs_err2(err, EINVAL, "copy onto itself", from, to);
        }
        if (S_ISDIR(st.st_mode) || S_ISDIR(dst.st_mode)) {
            return agent_fs_err(err, S_ISDIR(st.st_mode) ? EEXIST : EISDIR, "copy to", to);
        }
    }
    if (agent_path_split(to, parent, sizeof(parent), base, sizeof(base)) < 0) {
        return agent_fs_err(err, EEXIST, "copy to", to); /* "/" */
    }
    pfd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (pfd < 0) {
        return agent_fs_err(err, errno, "open", parent);
    }
    if (S_ISDIR(st.st_mode)) {
        /* Copying a tree into itself would never end. */
        if (realpath(from, rfrom) != NULL && realpath(parent, rparent) != NULL) {
            size_t n = strlen(rfrom);
            if (strncmp(rparent, rfrom, n) == 0 &&
                (rparent[n] == '/' || rparent[n] == '\0' || strcmp(rfrom, "/") == 0)) {
                return fs_err2(err, EINVAL, "copy a directory into itself", from, to);
            }
        }
        /* `from` itself may be a symlink to a directory: copy what it names. */
        return copy_tree_at(sfd, ".", pfd, base, from, to, err);
    }
    if (S_ISREG(st.st_mode)) {
        return copy_file_fd(sfd, &st, pfd, base, from, to, err);
    }
    return agent_fs_err(err, EINVAL, "copy (not a regular file or directory)", from);
}

/*
 * fs.remove and fs.copy run on the libuv threadpool, so a large tree or file does not hold the
 * loop (and every other connection). A job outlives its connection if need be: the connection
 * forgets it on close, and the job then only frees itself.
 */
struct fs_job {
    uv_work_t req;
    struct agent_link link; /* in fs->jobs while the connection is there */
    struct agent_conn *conn;
    uint32_t id;
    bool copy, recursive;
    int rc;
    struct sbx_err err;
    char from[AGENT_FS_PATH_BUF], to[AGENT_FS_PATH_BUF];
};

static void job_work_cb(uv_work_t *req)
{
    struct fs_job *j = agent_container_of(req, struct fs_job, req);

    j->rc = j->copy ? copy_do(j->from, j->to, j->recursive, &j->err)
                    : remove_do(j->from, j->recursive, &j->err);
}

static void job_after_cb(uv_work_t *req, int status)
{
    struct fs_job *j = agent_container_of(req, struct fs_job, req);

    if (j->conn != NULL) {
        agent_list_del(&j->link);
        if (status < 0) {
            sbx_err_set(&j->err, SBX_E_INTERNAL, "the operation was cancelled");
            j->rc = -1;
        }
        if (j->rc < 0) {
            agent_conn_reply_error(j->conn, j->id, &j->err);
        } else {
            agent_conn_reply_empty(j->conn, j->id);
        }
    }
    free(j);
}

/*
 * Parse fs.remove / fs.copy params into a job and queue it: AGENT_LATER (job_after_cb answers),
 * or -1 with @err. Should the threadpool refuse the job, it is done here and then answered here.
 */
static int job_start(struct agent_conn *c, const struct sbx_msg *m, bool copy, struct sbx_err *err)
{
    struct agent_fs *fs = fs_state(c);
    struct fs_job *j = fs != NULL ? calloc(1, sizeof(*j)) : NULL;
    int rc;

    if (j == NULL) {
        return sbx_err_oom(err);
    }
    if ((copy ? two_paths(m, "from", j->from, "to", j->to, err)
              : agent_fs_path_param(m->params, "path", SBX_REQUIRED, j->from, err)) < 0 ||
        sbx_param_bool(m->params, "recursive", SBX_OPTIONAL, &j->recursive, err) < 0) {
        free(j);
        return -1;
    }
    j->conn = c;
    j->id = m->id;
    j->copy = copy;
    agent_list_add_tail(&fs->jobs, &j->link);
    if (uv_queue_work(c->a->loop, &j->req, job_work_cb, job_after_cb) == 0) {
        return AGENT_LATER;
    }
    /* Cannot happen with a valid loop: do the work here then. */
    agent_list_del(&j->link);
    job_work_cb(&j->req);
    rc = j->rc;
    if (rc < 0) {
        *err = j->err;
    }
    free(j);
    if (rc < 0) {
        return -1;
    }
    agent_conn_reply_empty(c, m->id);
    return AGENT_REPLIED;
}

int agent_fs_remove(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    return job_start(c, m, false, err);
}

int agent_fs_copy(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    return job_start(c, m, true, err);
}

/* --- attributes and links ------------------------------------------------------------------ */

int agent_fs_chmod(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    char path[AGENT_FS_PATH_BUF];
    uint64_t mode;

    if (agent_fs_path_param(m->params, "path", SBX_REQUIRED, path, err) < 0 ||
        sbx_param_u64(m->params, "mode", SBX_REQUIRED, 0, 07777, &mode, err) < 0) {
        return -1;
    }
    if (chmod(path, (mode_t)mode) < 0) {
        return agent_fs_err(err, errno, "chmod", path);
    }
    agent_conn_reply_empty(c, m->id);
    return AGENT_REPLIED;
}

int agent_fs_chown(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    char path[AGENT_FS_PATH_BUF];
    uint64_t uid = (uint64_t)-1, gid = (uint64_t)-1;

    if (agent_fs_path_param(m->params, "path", SBX_REQUIRED, path, err) < 0 ||
        sbx_param_u64(m->params, "uid", SBX_OPTIONAL, 0, UINT32_MAX - 1, &uid, err) < 0 ||
        sbx_param_u64(m->params, "gid", SBX_OPTIONAL, 0, UINT32_MAX - 1, &gid, err) < 0) {
        return -1;
    }
    if (chown(path, (uid_t)uid, (gid_t)gid) < 0) {
        return agent_fs_err(err, errno, "chown", path);
    }
    agent_conn_reply_empty(c, m->id);
    return AGENT_REPLIED;
}

int agent_fs_symlink(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    char target[AGENT_FS_PATH_BUF], path[AGENT_FS_PATH_BUF];

    if (sbx_param_bstr(m->params, "target", SBX_REQUIRED, target, sizeof(target), err) < 0 ||
        agent_fs_path_param(m->params, "path", SBX_REQUIRED, path, err) < 0) {
        return -1;
    }
    if (target[0] == '\0') {
        sbx_err_param(err, "target", "target must not be empty");
        return -1;
    }
    if (symlink(target, path) < 0) {
        return agent_fs_err(err, errno, "symlink", path);
    }
    agent_conn_reply_empty(c, m->id);
    return AGENT_REPLIED;
}

int agent_fs_link(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    return two_path_op(c, m, "target", "path", link, "link", err);
}

/* Reply {key: bstr}. */
static void reply_bstr(struct agent_conn *c, uint32_t id, const char *key, const char *s, size_t n)
{
    msgpack_packer *pk = agent_conn_begin(c);

    sbx_pack_response_head(pk, id);
    (void)msgpack_pack_map(pk, 1);
    sbx_pack_cstr(pk, key);
    sbx_pack_bstr(pk, s, n);
    agent_conn_send(c);
}

int agent_fs_readlink(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    char path[AGENT_FS_PATH_BUF], target[AGENT_FS_PATH_BUF];
    ssize_t n;

    if (agent_fs_path_param(m->params, "path", SBX_REQUIRED, path, err) < 0) {
        return -1;
    }
    n = readlink(path, target, sizeof(target) - 1);
    if (n < 0) {
        return agent_fs_err(err, errno, "readlink", path);
    }
    reply_bstr(c, m->id, "target", target, (size_t)n);
    return AGENT_REPLIED;
}

int agent_fs_realpath(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    char path[AGENT_FS_PATH_BUF], real[PATH_MAX];

    if (agent_fs_path_param(m->params, "path", SBX_REQUIRED, path, err) < 0) {
        return -1;
    }
    if (realpath(path, real) == NULL) {
        return agent_fs_err(err, errno, "realpath", path);
    }
    reply_bstr(c, m->id, "path", real, strlen(real));
    return AGENT_REPLIED;
}

int agent_fs_truncate(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    char path[AGENT_FS_PATH_BUF];
    uint64_t size = 0;

    if (agent_fs_path_param(m->params, "path", SBX_REQUIRED, path, err) < 0 ||
        sbx_param_u64(m->params, "size", SBX_OPTIONAL, 0, INT64_MAX, &size, err) < 0) {
        return -1;
    }
    if (truncate(path, (off_t)size) < 0) {
        return agent_fs_err(err, errno, "truncate", path);
    }
    agent_conn_reply_empty(c, m->id);
    return AGENT_REPLIED;
}

static int time_param(const msgpack_object *params, const char *key, struct timespec *ts,
                      struct sbx_err *err)
{
    int64_t ns;
    int r = sbx_param_i64(params, key, SBX_OPTIONAL, INT64_MIN, INT64_MAX, &ns, err);

    if (r < 0) {
        return -1;
    }
    if (r == 1) {
        ts->tv_sec = 0;
        ts->tv_nsec = UTIME_OMIT;
        return 0;
    }
    ts->tv_sec = ns / 1000000000;
    ts->tv_nsec = ns % 1000000000;
    if (ts->tv_nsec < 0) {
        ts->tv_sec--;
        ts->tv_nsec += 1000000000;
    }
    return 0;
}

int agent_fs_utime(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    char path[AGENT_FS_PATH_BUF];
    struct timespec ts[2];

    if (agent_fs_path_param(m->params, "path", SBX_REQUIRED, path, err) < 0 ||
        time_param(m->params, "atime_ns", &ts[0], err) < 0 ||
        time_param(m->params, "mtime_ns", &ts[1], err) < 0) {
        return -1;
    }
    if (utimensat(AT_FDCWD, path, ts, 0) < 0) {
        return agent_fs_err(err, errno, "utime", path);
    }
    agent_conn_reply_empty(c, m->id);
    return AGENT_REPLIED;
}

/* A name part (mktemp prefix/suffix): at most SBX_FS_NAME_MAX bytes, no '/' or NUL. */
static int name_part_param(const msgpack_object *params, const char *key, char *buf,
                           struct sbx_err *err)
{
    int r = sbx_param_bstr(params, key, SBX_OPTIONAL, buf, SBX_FS_NAME_MAX + 1, err);

    if (r < 0) {
        return -1;
    }
    if (r == 0 && strchr(buf, '/') != NULL) {
        return sbx_err_param(err, key, "%s must not contain '/'", key);
    }
    return 0;
}

int agent_fs_mktemp(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    static const char alnum[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    char dir[AGENT_FS_PATH_BUF] = "/tmp", prefix[SBX_FS_NAME_MAX + 1] = "tmp";
    char suffix[SBX_FS_NAME_MAX + 1] = "", path[AGENT_FS_PATH_BUF];
    bool directory = false;
    int r;

    r = agent_fs_path_param(m->params, "dir", SBX_OPTIONAL, dir, err);
    if (r < 0 || name_part_param(m->params, "prefix", prefix, err) < 0 ||
        name_part_param(m->params, "suffix", suffix, err) < 0 ||
        sbx_param_bool(m->params, "directory", SBX_OPTIONAL, &directory, err) < 0) {
        return -1;
    }
    if (r == 1) {
        for (size_t i = 0; i < c->a->env_len; i++) {
            const char *kv = c->a->env[i];
            if (strncmp(kv, "TMPDIR=/", 8) == 0 && strlen(kv + 7) <= SBX_PATH_MAX) {
                (void)snprintf(dir, sizeof(dir), "%s", kv + 7);
            }
        }
    }
    for (int attempt = 0; attempt < 100; attempt++) {
        unsigned char rnd[12];
        char name[13];
        if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
            return agent_fs_err(err, errno, "getrandom", dir);
        }
        for (int i = 0; i < 12; i++) {
            name[i] = alnum[rnd[i] % (sizeof(alnum) - 1)];
        }
        name[12] = '\0';
        if (snprintf(path, sizeof(path), "%s%s%s%s%s", dir, dir[strlen(dir) - 1] == '/' ? "" : "/",
                     prefix, name, suffix) >= (int)sizeof(path)) {
            sbx_err_param(err, "dir", "the resulting path is longer than %u bytes", SBX_PATH_MAX);
            return -1;
        }
        if (directory) {
            r = mkdir(path, 0700);
        } else {
            r = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
            if (r >= 0) {
                (void)close(r); /* nothing written yet */
            }
        }
        if (r >= 0) {
            reply_bstr(c, m->id, "path", path, strlen(path));
            return AGENT_REPLIED;
        }
        if (errno != EEXIST) {
            return agent_fs_err(err, errno, directory ? "mkdir" : "create", path);
        }
    }
    return agent_fs_err(err, EEXIST, "mktemp", dir);
}

/* --- file handles -------------------------------------------------------------------------- */

/*
 * The handle the `fh` param names. Handlers call it after every other param has been checked, so
 * a bad param wins over an unknown handle (PROTOCOL.md §7.2).
 */
static struct fs_handle *fh_find(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    uint64_t id;

    if (sbx_param_u64(m->params, "fh", SBX_REQUIRED, 0, UINT32_MAX, &id, err) < 0) {
        return NULL;
    }
    if (c->fs != NULL) {
        for (unsigned i = 0; i < c->fs->nfh; i++) {
            if (c->fs->fh[i].id == id) {
                return &c->fs->fh[i];
            }
        }
    }
    sbx_err_set(err, SBX_E_NOT_FOUND, "no open file handle %llu", (unsigned long long)id);
    return NULL;
}

/* An errno error of an operation on handle @h: carries the path it was opened with. */
static void fh_err(struct sbx_err *err, int errnum, const char *op, const struct fs_handle *h)
{
    agent_fs_err(err, errnum, op, h->path);
}

static const struct {
    const char *name;
    int flags;
} open_flags[] = {
    { "read", 0 },
    { "write", 0 },
    { "append", O_APPEND },
    { "create", O_CREAT },
    { "truncate", O_TRUNC },
    { "exclusive", O_EXCL },
    { "nofollow", O_NOFOLLOW },
    { "sync", O_SYNC },
};

int agent_fs_open(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct agent_fs *fs = fs_state(c);
    char path[AGENT_FS_PATH_BUF];
    const msgpack_object *arr = NULL;
    uint64_t mode = 0666;
    bool rd = false, wr = false;
    int flags = O_CLOEXEC, fd, r;
    char *hpath;

    if (fs == NULL) {
        return sbx_err_oom(err);
    }
    if (agent_fs_path_param(m->params, "path", SBX_REQUIRED, path, err) < 0 ||
        sbx_param_u64(m->params, "mode", SBX_OPTIONAL, 0, 07777, &mode, err) < 0 ||
        (r = sbx_param_array(m->params, "flags", SBX_OPTIONAL, 16, &arr, err)) < 0) {
        return -1;
    }
    if (arr == NULL) {
        rd = true;
    } else {
        for (uint32_t i = 0; i < arr->via.array.size; i++) {
            const char *s;
            size_t n;
            size_t k;
            bool ok = sbx_obj_bytes(&arr->via.array.ptr[i], &s, &n);
            for (k = 0; ok && k < ARRAY_SIZE(open_flags); k++) {
                if (strlen(open_flags[k].name) == n && memcmp(open_flags[k].name, s, n) == 0) {
                    break;
                }
            }
            if (!ok || k == ARRAY_SIZE(open_flags)) {
                sbx_err_param(err, "flags", "unknown open flag in flags[%u]", i);
                (void)snprintf(err->field, sizeof(err->field), "flags[%u]", i);
                return -1;
            }
            flags |= open_flags[k].flags;
            rd |= k == 0;
            wr |= k == 1 || k == 2;
        }
    }
    if (!rd && !wr) {
        sbx_err_param(err, "flags", "flags need one of read, write, append");
        return -1;
    }
    if ((flags & O_EXCL) && !(flags & O_CREAT)) {
        sbx_err_param(err, "flags", "exclusive needs create");
        return -1;
    }
    flags |= rd && wr ? O_RDWR : wr ? O_WRONLY : O_RDONLY;
    if (fs->nfh >= SBX_FS_HANDLES_MAX) {
        sbx_err_limit(err, "max_handles", SBX_FS_HANDLES_MAX, "too many open file handles (cap %u)",
                      SBX_FS_HANDLES_MAX);
        return -1;
    }
    if (fs->nfh == fs->capfh) {
        unsigned cap = fs->capfh ? fs->capfh * 2 : 8;
        struct fs_handle *nh = realloc(fs->fh, cap * sizeof(*nh));
        if (nh == NULL) {
            return sbx_err_oom(err);
        }
        fs->fh = nh;
        fs->capfh = cap;
    }
    hpath = strdup(path);
    /* Non-blocking first: opening a FIFO would otherwise wait for its other end, holding the
     * loop. Regular files and directories go back to blocking (it means nothing for them);
     * special files stay non-blocking, so a read with nothing available is EAGAIN. */
    fd = hpath != NULL ? open(path, flags | O_NONBLOCK, (mode_t)mode) : -1;
    if (fd >= 0) {
        struct stat st;
        if (fstat(fd, &st) == 0 && (S_ISREG(st.st_mode) || S_ISDIR(st.st_mode)) &&
            !(flags & O_NONBLOCK)) {
            (void)fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK); /* cannot fail here */
        }
    }
    if (fd < 0) {
        if (hpath == NULL) {
            sbx_err_oom(err);
        } else {
            agent_fs_err(err, errno, "open", path);
        }
        free(hpath);
        return -1;
    }
    fs->fh[fs->nfh].id = fs->next_fh++;
    fs->fh[fs->nfh].fd = fd;
    fs->fh[fs->nfh].path = hpath;
    reply_u64(c, m->id, "fh", fs->fh[fs->nfh].id);
    fs->nfh++;
    return AGENT_REPLIED;
}

int agent_fs_read(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct fs_handle *h = NULL;
    uint64_t len, off = 0;
    int r;
    ssize_t n;
    void *buf;
    msgpack_packer *pk;

    if (sbx_param_u64(m->params, "len", SBX_REQUIRED, 1, UINT64_MAX, &len, err) < 0 ||
        (r = sbx_param_u64(m->params, "offset", SBX_OPTIONAL, 0, INT64_MAX, &off, err)) < 0 ||
        (h = fh_find(c, m, err)) == NULL) {
        return -1;
    }
    buf = agent_buf_get(c->a);
    if (buf == NULL) {
        return sbx_err_oom(err);
    }
    if (len > SBX_STREAM_CHUNK_MAX) {
        len = SBX_STREAM_CHUNK_MAX;
    }
    do {
        n = r == 0 ? pread(h->fd, buf, len, (off_t)off) : read(h->fd, buf, len);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        fh_err(err, errno, "read", h);
        agent_buf_put(c->a, buf);
        return -1;
    }
    pk = agent_conn_begin(c);
    sbx_pack_response_head(pk, m->id);
    (void)msgpack_pack_map(pk, 1);
    sbx_pack_cstr(pk, "data");
    sbx_pack_bin(pk, buf, (size_t)n);
    agent_conn_send(c);
    agent_buf_put(c->a, buf);
    return AGENT_REPLIED;
}

int agent_fs_write(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct fs_handle *h;
    const uint8_t *data;
    size_t len;
    uint64_t off = 0;
    int r;
    ssize_t n;

    if (sbx_param_bin(m->params, "data", SBX_REQUIRED, SBX_FRAME_MAX, &data, &len, err) < 0 ||
        (r = sbx_param_u64(m->params, "offset", SBX_OPTIONAL, 0, INT64_MAX, &off, err)) < 0) {
        return -1;
    }
    if (len == 0) {
        sbx_err_param(err, "data", "data must not be empty");
        return -1;
    }
    h = fh_find(c, m, err);
    if (h == NULL) {
        return -1;
    }
    if (len > SBX_STREAM_CHUNK_MAX) {
        sbx_err_limit(err, "chunk_max", SBX_STREAM_CHUNK_MAX,
                      "data is longer than chunk_max (%u bytes)", SBX_STREAM_CHUNK_MAX);
        return -1;
    }
    do {
        n = r == 0 ? pwrite(h->fd, data, len, (off_t)off) : write(h->fd, data, len);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        fh_err(err, errno, "write", h);
        return -1;
    }
    reply_u64(c, m->id, "written", (uint64_t)n);
    return AGENT_REPLIED;
}

int agent_fs_seek(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct fs_handle *h;
    int64_t off;
    char whence[8] = "set";
    int wh;
    off_t pos;

    if (sbx_param_i64(m->params, "offset", SBX_REQUIRED, INT64_MIN, INT64_MAX, &off, err) < 0 ||
        sbx_param_cstr(m->params, "whence", SBX_OPTIONAL, whence, sizeof(whence), err) < 0) {
        return -1;
    }
    if (strcmp(whence, "set") == 0) {
        wh = SEEK_SET;
    } else if (strcmp(whence, "cur") == 0) {
        wh = SEEK_CUR;
    } else if (strcmp(whence, "end") == 0) {
        wh = SEEK_END;
    } else {
        sbx_err_param(err, "whence", "whence must be \"set\", \"cur\" or \"end\"");
        return -1;
    }
    h = fh_find(c, m, err);
    if (h == NULL) {
        return -1;
    }
    pos = lseek(h->fd, (off_t)off, wh);
    if (pos < 0) {
        fh_err(err, errno, "seek", h);
        return -1;
    }
    reply_u64(c, m->id, "position", (uint64_t)pos);
    return AGENT_REPLIED;
}

int agent_fs_fstat(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct fs_handle *h = fh_find(c, m, err);
    struct statx st;

    if (h == NULL) {
        return -1;
    }
    if (statx(h->fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS | STATX_BTIME, &st) < 0) {
        fh_err(err, errno, "fstat", h);
        return -1;
    }
    reply_fileinfo(c, m->id, &st, NULL, 0);
    return AGENT_REPLIED;
}

int agent_fs_fsync(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct fs_handle *h = NULL;
    bool data_only = false;

    if (sbx_param_bool(m->params, "data_only", SBX_OPTIONAL, &data_only, err) < 0 ||
        (h = fh_find(c, m, err)) == NULL) {
        return -1;
    }
    if ((data_only ? fdatasync(h->fd) : fsync(h->fd)) < 0) {
        fh_err(err, errno, "fsync", h);
        return -1;
    }
    agent_conn_reply_empty(c, m->id);
    return AGENT_REPLIED;
}

int agent_fs_ftruncate(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct fs_handle *h = NULL;
    uint64_t size = 0;

    if (sbx_param_u64(m->params, "size", SBX_OPTIONAL, 0, INT64_MAX, &size, err) < 0 ||
        (h = fh_find(c, m, err)) == NULL) {
        return -1;
    }
    if (ftruncate(h->fd, (off_t)size) < 0) {
        fh_err(err, errno, "ftruncate", h);
        return -1;
    }
    agent_conn_reply_empty(c, m->id);
    return AGENT_REPLIED;
}

int agent_fs_close(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct fs_handle *h = fh_find(c, m, err);
    int r;

    if (h == NULL) {
        return -1;
    }
    r = close(h->fd);
    if (r < 0 && errno != EINTR) {
        fh_err(err, errno, "close", h);
    }
    free(h->path);
    *h = c->fs->fh[--c->fs->nfh];
    if (r < 0 && errno != EINTR) {
        return -1;
    }
    agent_conn_reply_empty(c, m->id);
    return AGENT_REPLIED;
}

/* The connection closed: its handles and cursors go; running jobs finish on their own. */
static void fs_gone(struct agent_conn_ref *r)
{
    struct agent_fs *fs = agent_container_of(r, struct agent_fs, ref);

    for (unsigned i = 0; i < fs->nfh; i++) {
        (void)close(fs->fh[i].fd); /* the client is gone: nobody to tell about a close error */
        free(fs->fh[i].path);
    }
    free(fs->fh);
    while (!agent_list_empty(&fs->jobs)) {
        struct fs_job *j = agent_container_of(fs->jobs.next, struct fs_job, link);
        agent_list_del(&j->link);
        j->conn = NULL; /* it finishes on its own and frees itself */
    }
    while (!agent_list_empty(&fs->cursors)) {
        cursor_free(fs, agent_container_of(fs->cursors.next, struct fs_cursor, link));
    }
    fs->conn->fs = NULL;
    free(fs);
}
