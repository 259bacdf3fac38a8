/*
 * The fs family's path methods (PROTOCOL.md §17.3) that are one short system call each on the
 * loop thread: stat, lstat, mkdir, rename, chmod, chown, symlink, link, readlink, realpath,
 * truncate, utime and mktemp. Each makes its calls as the request's identity (§17.1,
 * agent_fs_act_as) and switches back before it replies. Also fs.umask, the agent's process-wide
 * umask those creations honour (§17.8).
 *
 * No path is handed to the kernel whole: a thread acting as a user may follow the agent's own
 * /proc/self/fd links whatever its credentials, so a workload symlink into /proc/<agent>/fd or
 * /cwd would reach what another request opened as root. What a method acts on is pinned first
 * without magic links (agent_path_pin), or its parent directory is (agent_path_pin_parent), and
 * the call takes the fd.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conn.h"
#include "fs.h"
#include "path.h"
#include "sbx/schema.h"

/* @call made on a pin's /proc/self/fd name, or without /proc @fallback on the path, as before:
 * with no /proc mounted there is no magic link to keep away from either. */
#define PROC_OR_PATH(call, fallback) (agent_path_proc_ok() ? (call) : (fallback))

/* --- stat ---------------------------------------------------------------------------------- */

/* fs.stat / fs.lstat: AGENT_REPLIED with the FileInfo, or -1 with @err. */
static int fs_stat_common(struct agent_conn *c, const struct sbx_msg *m, bool follow,
                          struct sbx_err *err)
{
    char path[AGENT_FS_PATH_BUF], target[AGENT_FS_PATH_BUF];
    _cleanup_ident_ struct agent_ident_scope sc = { 0 };
    _cleanup_close_ int pin = -1;
    struct statx st;
    ssize_t tlen = -1;

    if (agent_fs_path_param(m->params, "path", SBX_REQUIRED, path, err) < 0 ||
        agent_fs_act_as(c, m, &sc, err) < 0) {
        return -1;
    }
    pin = agent_path_pin(path, follow);
    if (pin < 0 || statx(pin, "", AT_EMPTY_PATH, STATX_BASIC_STATS | STATX_BTIME, &st) < 0) {
        return agent_fs_err(err, errno, follow ? "stat" : "lstat", path);
    }
    if (!follow && S_ISLNK(st.stx_mode)) {
        /* The pinned link itself: reading it updated its atime, so stat it again for the reply
         * to be what lstat(2) says now. */
        tlen = readlinkat(pin, "", target, sizeof(target) - 1);
        if (tlen < 0 || statx(pin, "", AT_EMPTY_PATH, STATX_BASIC_STATS | STATX_BTIME, &st) < 0) {
            return agent_fs_err(err, errno, "readlink", path);
        }
    }
    agent_ident_leave(&sc);
    agent_fs_reply_fileinfo(c, m->id, &st, tlen >= 0 ? target : NULL, tlen);
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

/* --- mkdir, rename ------------------------------------------------------------------------- */

int agent_fs_mkdir(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    char path[AGENT_FS_PATH_BUF];
    _cleanup_ident_ struct agent_ident_scope sc = { 0 };
    bool parents = false;
    uint64_t mode = 0777;

    if (agent_fs_path_param(m->params, "path", SBX_REQUIRED, path, err) < 0 ||
        sbx_param_bool(m->params, "parents", SBX_OPTIONAL, &parents, err) < 0 ||
        sbx_param_u64(m->params, "mode", SBX_OPTIONAL, 0, 07777, &mode, err) < 0 ||
        agent_fs_act_as(c, m, &sc, err) < 0) {
        return -1;
    }
    if (parents) {
        /* Missing parents as mkdir(1) -p makes them: 0777, then the umask (PROTOCOL.md §17.3). */
        if (agent_path_mkdir(path, 0777, (mode_t)mode, err) < 0) {
            return -1;
        }
    } else if (agent_path_mkdir1(path, (mode_t)mode) < 0) {
        return agent_fs_err(err, errno, "mkdir", path);
    }
    agent_ident_leave(&sc);
    agent_conn_reply_empty(c, m->id);
    return AGENT_REPLIED;
}

static int link_at(int d1, const char *b1, int d2, const char *b2)
{
    return linkat(d1, b1, d2, b2, 0); /* as link(2): a symlink is linked, not followed */
}

/* A method on the two path params @k1 and @k2, done by @fn (renameat, link_at) in their pinned
 * parent directories; @op names it in errors. */
static int two_path_op(struct agent_conn *c, const struct sbx_msg *m, const char *k1,
                       const char *k2, int (*fn)(int, const char *, int, const char *),
                       const char *op, struct sbx_err *err)
{
    char p1[AGENT_FS_PATH_BUF], p2[AGENT_FS_PATH_BUF], b1[AGENT_FS_PATH_BUF + 1],
        b2[AGENT_FS_PATH_BUF + 1];
    _cleanup_ident_ struct agent_ident_scope sc = { 0 };
    _cleanup_close_ int d1 = -1, d2 = -1;

    if (agent_fs_two_paths(m, k1, p1, k2, p2, err) < 0 || agent_fs_act_as(c, m, &sc, err) < 0) {
        return -1;
    }
    /* Any failure names both paths, `path` the first (PROTOCOL.md §17.1). */
    if (agent_path_pin_parent(p1, &d1, b1, sizeof(b1)) < 0 ||
        agent_path_pin_parent(p2, &d2, b2, sizeof(b2)) < 0 || fn(d1, b1, d2, b2) < 0) {
        return agent_fs_err2(err, errno, op, p1, p2);
    }
    agent_ident_leave(&sc);
    agent_conn_reply_empty(c, m->id);
    return AGENT_REPLIED;
}

int agent_fs_rename(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    return two_path_op(c, m, "from", "to", renameat, "rename", err);
}

/* --- attributes and links ------------------------------------------------------------------ */

int agent_fs_chmod(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    char path[AGENT_FS_PATH_BUF], proc[AGENT_PATH_PROC_BUF];
    _cleanup_ident_ struct agent_ident_scope sc = { 0 };
    _cleanup_close_ int pin = -1;
    uint64_t mode;

    if (agent_fs_path_param(m->params, "path", SBX_REQUIRED, path, err) < 0 ||
        sbx_param_u64(m->params, "mode", SBX_REQUIRED, 0, 07777, &mode, err) < 0 ||
        agent_fs_act_as(c, m, &sc, err) < 0) {
        return -1;
    }
    /* fchmod takes no O_PATH fd (fchmodat2 with AT_EMPTY_PATH is Linux 6.6): the pin's name. */
    pin = agent_path_pin(path, true);
    if (pin < 0 || PROC_OR_PATH(chmod(agent_path_proc(pin, proc), (mode_t)mode),
                                chmod(path, (mode_t)mode)) < 0) {
        return agent_fs_err(err, errno, "chmod", path);
    }
    agent_ident_leave(&sc);
    agent_conn_reply_empty(c, m->id);
    return AGENT_REPLIED;
}

int agent_fs_chown(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    char path[AGENT_FS_PATH_BUF];
    _cleanup_ident_ struct agent_ident_scope sc = { 0 };
    _cleanup_close_ int pin = -1;
    uint64_t uid = (uint64_t)-1, gid = (uint64_t)-1;

    if (agent_fs_path_param(m->params, "path", SBX_REQUIRED, path, err) < 0 ||
        sbx_param_u64(m->params, "uid", SBX_OPTIONAL, 0, UINT32_MAX - 1, &uid, err) < 0 ||
        sbx_param_u64(m->params, "gid", SBX_OPTIONAL, 0, UINT32_MAX - 1, &gid, err) < 0 ||
        agent_fs_act_as(c, m, &sc, err) < 0) {
        return -1;
    }
    pin = agent_path_pin(path, true);
    if (pin < 0 || fchownat(pin, "", (uid_t)uid, (gid_t)gid, AT_EMPTY_PATH) < 0) {
        return agent_fs_err(err, errno, "chown", path);
    }
    agent_ident_leave(&sc);
    agent_conn_reply_empty(c, m->id);
    return AGENT_REPLIED;
}

int agent_fs_symlink(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    char target[AGENT_FS_PATH_BUF], path[AGENT_FS_PATH_BUF], base[AGENT_FS_PATH_BUF + 1];
    _cleanup_ident_ struct agent_ident_scope sc = { 0 };
    _cleanup_close_ int dfd = -1;

    if (sbx_param_bstr(m->params, "target", SBX_REQUIRED, target, sizeof(target), err) < 0 ||
        agent_fs_path_param(m->params, "path", SBX_REQUIRED, path, err) < 0) {
        return -1;
    }
    if (target[0] == '\0') {
        sbx_err_param(err, "target", "target must not be empty");
        return -1;
    }
    if (agent_fs_act_as(c, m, &sc, err) < 0) {
        return -1;
    }
    if (agent_path_pin_parent(path, &dfd, base, sizeof(base)) < 0 ||
        symlinkat(target, dfd, base) < 0) {
        return agent_fs_err(err, errno, "symlink", path);
    }
    agent_ident_leave(&sc);
    agent_conn_reply_empty(c, m->id);
    return AGENT_REPLIED;
}

int agent_fs_link(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    return two_path_op(c, m, "target", "path", link_at, "link", err);
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
    _cleanup_ident_ struct agent_ident_scope sc = { 0 };
    _cleanup_close_ int pin = -1;
    struct stat st;
    ssize_t n = -1;

    if (agent_fs_path_param(m->params, "path", SBX_REQUIRED, path, err) < 0 ||
        agent_fs_act_as(c, m, &sc, err) < 0) {
        return -1;
    }
    pin = agent_path_pin(path, false);
    if (pin >= 0 && fstat(pin, &st) == 0) {
        if (S_ISLNK(st.st_mode)) {
            n = readlinkat(pin, "", target, sizeof(target) - 1);
        } else {
            errno = EINVAL; /* as readlink(2) says of what is not a symlink */
        }
    }
    if (n < 0) {
        return agent_fs_err(err, errno, "readlink", path);
    }
    agent_ident_leave(&sc);
    reply_bstr(c, m->id, "target", target, (size_t)n);
    return AGENT_REPLIED;
}

int agent_fs_realpath(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    char path[AGENT_FS_PATH_BUF], real[PATH_MAX], proc[AGENT_PATH_PROC_BUF];
    _cleanup_ident_ struct agent_ident_scope sc = { 0 };
    _cleanup_close_ int pin = -1;
    struct stat st, now;
    ssize_t n = -1;

    if (agent_fs_path_param(m->params, "path", SBX_REQUIRED, path, err) < 0 ||
        agent_fs_act_as(c, m, &sc, err) < 0) {
        return -1;
    }
    /* The kernel's own name for the pinned object; realpath(3) without /proc. */
    pin = agent_path_pin(path, true);
    if (pin >= 0 && !agent_path_proc_ok()) {
        n = realpath(path, real) != NULL ? (ssize_t)strlen(real) : -1;
    } else if (pin >= 0) {
        n = readlink(agent_path_proc(pin, proc), real, sizeof(real) - 1);
        if (n >= 0) {
            real[n] = '\0';
            /* The name must still lead to the pinned file: one removed since the pin (even a
             * hard link of a file that has others) is named "<path> (deleted)". */
            if (fstat(pin, &st) < 0 || agent_path_stat(real, false, &now) < 0 ||
                now.st_dev != st.st_dev || now.st_ino != st.st_ino) {
                n = -1;
                errno = ENOENT;
            }
        }
    }
    if (n < 0) {
        return agent_fs_err(err, errno, "realpath", path);
    }
    agent_ident_leave(&sc);
    reply_bstr(c, m->id, "path", real, strlen(real));
    return AGENT_REPLIED;
}

/*
 * truncate(2) of @path without waiting: truncate(2) itself waits, on the loop thread, for the
 * holder of a file lease to let go (lease-break-time, 45 s by default), and any workload may take
 * a lease on a file it owns. Opened non-blocking, a leased file is EWOULDBLOCK at once. Only a
 * regular file is opened for writing (opening a device may act), found through O_PATH first and
 * reopened through /proc/self/fd (the same inode; the same permission check as truncate(2)).
 */
static int truncate_nowait(const char *path, off_t size)
{
    char proc[32];
    struct stat st, st2;
    int pin = agent_path_open(AT_FDCWD, path, O_PATH | O_CLOEXEC, 0), fd = -1, r = -1, e;

    if (pin < 0) {
        return -1;
    }
    if (fstat(pin, &st) < 0) {
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        errno = S_ISDIR(st.st_mode) ? EISDIR : EINVAL; /* as truncate(2) says */
        goto out;
    }
    (void)snprintf(proc, sizeof(proc), "/proc/self/fd/%d", pin);
    fd = open(proc, O_WRONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) { /* no /proc: the name again, checked to be the same file */
        fd = agent_path_open(AT_FDCWD, path, O_WRONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC, 0);
        if (fd >= 0 &&
            (fstat(fd, &st2) < 0 || st2.st_dev != st.st_dev || st2.st_ino != st.st_ino)) {
            (void)close(fd);
            fd = -1;
            errno = EAGAIN; /* swapped meanwhile */
        }
    }
    if (fd >= 0) {
        r = ftruncate(fd, size);
    }
out:
    e = errno;
    if (fd >= 0) {
        (void)close(fd);
    }
    (void)close(pin);
    errno = e;
    return r;
}

int agent_fs_truncate(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    char path[AGENT_FS_PATH_BUF];
    _cleanup_ident_ struct agent_ident_scope sc = { 0 };
    uint64_t size = 0;

    if (agent_fs_path_param(m->params, "path", SBX_REQUIRED, path, err) < 0 ||
        sbx_param_u64(m->params, "size", SBX_OPTIONAL, 0, INT64_MAX, &size, err) < 0 ||
        agent_fs_act_as(c, m, &sc, err) < 0) {
        return -1;
    }
    if (truncate_nowait(path, (off_t)size) < 0) {
        return agent_fs_err(err, errno, "truncate", path);
    }
    agent_ident_leave(&sc);
    agent_conn_reply_empty(c, m->id);
    return AGENT_REPLIED;
}

int agent_fs_utime(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    char path[AGENT_FS_PATH_BUF], proc[AGENT_PATH_PROC_BUF];
    _cleanup_ident_ struct agent_ident_scope sc = { 0 };
    _cleanup_close_ int pin = -1;
    struct timespec ts[2];

    if (agent_fs_path_param(m->params, "path", SBX_REQUIRED, path, err) < 0 ||
        agent_fs_time_param(m->params, "atime_ns", &ts[0], err) < 0 ||
        agent_fs_time_param(m->params, "mtime_ns", &ts[1], err) < 0 ||
        agent_fs_act_as(c, m, &sc, err) < 0) {
        return -1;
    }
    pin = agent_path_pin(path, true);
    if (pin < 0 || PROC_OR_PATH(utimensat(AT_FDCWD, agent_path_proc(pin, proc), ts, 0),
                                utimensat(AT_FDCWD, path, ts, 0)) < 0) {
        return agent_fs_err(err, errno, "utime", path);
    }
    agent_ident_leave(&sc);
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
    _cleanup_ident_ struct agent_ident_scope sc = { 0 };
    bool directory = false;
    int r;

    r = agent_fs_path_param(m->params, "dir", SBX_OPTIONAL, dir, err);
    if (r < 0 || name_part_param(m->params, "prefix", prefix, err) < 0 ||
        name_part_param(m->params, "suffix", suffix, err) < 0 ||
        sbx_param_bool(m->params, "directory", SBX_OPTIONAL, &directory, err) < 0 ||
        agent_fs_act_as(c, m, &sc, err) < 0) {
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
            r = agent_path_mkdir1(path, 0700);
        } else {
            r = agent_path_open(AT_FDCWD, path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
            if (r >= 0) {
                (void)close(r); /* nothing written yet */
            }
        }
        if (r >= 0) {
            agent_ident_leave(&sc);
            reply_bstr(c, m->id, "path", path, strlen(path));
            return AGENT_REPLIED;
        }
        if (errno != EEXIST) {
            return agent_fs_err(err, errno, directory ? "mkdir" : "create", path);
        }
    }
    return agent_fs_err(err, EEXIST, "mktemp", dir);
}

/*
 * fs.umask {mask?} -> {mask}: the agent's umask is process-wide (umask(2)); what every creation
 * of the agent (fs.*, transfer.*, pack.create, on the loop and on worker threads) and every new
 * process it starts inherit. With `mask` it is set and the previous one returned, atomically
 * (umask(2) does both); without, it is read from /proc without being changed, as setting it to
 * read it would race with worker threads creating files.
 */
int agent_fs_umask(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    uint64_t mask;
    int r = sbx_param_u64(m->params, "mask", SBX_OPTIONAL, 0, 0777, &mask, err);
    int old;
    msgpack_packer *pk;

    if (r < 0) {
        return -1;
    }
    if (r == 0) {
        old = (int)umask((mode_t)mask);
    } else if ((old = agent_fs_umask_get()) < 0) {
        sbx_err_set(err, SBX_E_UNSUPPORTED, "the umask cannot be read (no /proc/self/status)");
        return -1;
    }
    pk = agent_conn_begin(c);
    sbx_pack_response_head(pk, m->id);
    (void)msgpack_pack_map(pk, 1);
    sbx_pack_kv_u64(pk, "mask", (uint64_t)old & 0777);
    agent_conn_send(c);
    return AGENT_REPLIED;
}
