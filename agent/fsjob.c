/*
 * fs.remove and fs.copy (PROTOCOL.md §17.3): jobs on the libuv threadpool that work through
 * directory fds (openat/unlinkat, O_NOFOLLOW), so a symlink in the tree never leads them outside
 * it, and that outlive their connection if need be. The worker acts as the request's identity
 * (§17.1) for the job and switches back before it takes the next one.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsconn.h"
#include "path.h"

/* --- remove -------------------------------------------------------------------------------- */

/* A recursive remove or copy holds a directory fd (a copy two, and 12 KiB of stack) per level: a
 * tree the workload made deeper than a walk goes is LIMIT, not the agent's fds or its thread's
 * stack. */
static int tree_too_deep(struct sbx_err *err, const char *path)
{
    sbx_err_limit(err, "walk_depth", SBX_FS_WALK_OPEN_MAX, "more than %u directories deep",
                  SBX_FS_WALK_OPEN_MAX);
    sbx_err_set_path(err, path);
    return -1;
}

/*
 * Remove @name in @dfd and everything below it, never following a symlink: directories are
 * opened O_NOFOLLOW relative to their parent's fd. @path holds the entry's path for errors
 * (cut when too long); @plen is its length.
 */
static int remove_tree_at(int dfd, const char *name, char *path, size_t plen, unsigned depth,
                          struct sbx_err *err)
{
    _cleanup_closedir_ DIR *d = NULL;
    int fd;
    struct dirent *de;

    if (depth >= SBX_FS_WALK_OPEN_MAX) {
        return tree_too_deep(err, path);
    }
    fd = agent_path_opendir_at(dfd, name);
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
            if (remove_tree_at(dirfd(d), de->d_name, path, plen + 1 + nl, depth + 1, err) < 0) {
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
    char base[AGENT_FS_PATH_BUF + 1];
    _cleanup_close_ int pfd = -1;
    struct stat st;

    /* Looked at and removed in its pinned parent: no magic link on the way (agent/path.h). */
    if (agent_path_pin_parent(path, &pfd, base, sizeof(base)) < 0 ||
        fstatat(pfd, base, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        return agent_fs_err(err, errno, "remove", path);
    }
    if (!S_ISDIR(st.st_mode)) {
        if (unlinkat(pfd, base, 0) < 0) {
            return agent_fs_err(err, errno, "unlink", path);
        }
    } else if (!recursive) {
        if (unlinkat(pfd, base, AT_REMOVEDIR) < 0) {
            return agent_fs_err(err, errno, "rmdir", path);
        }
    } else {
        size_t bl = strlen(base);

        if (pfd < 0) {
            return agent_fs_err(err, EBUSY, "remove", path); /* "/": no parent was pinned */
        }
        if (base[bl - 1] == '/') {
            base[bl - 1] = '\0'; /* the trailing slash agent_path_pin_parent kept */
        }
        if (strcmp(base, ".") == 0 || strcmp(base, "..") == 0) {
            return agent_fs_err(err, EINVAL, "remove", path);
        }
        /* The pinned parent serves remove_tree_at, which only opens and unlinks in it. */
        char buf[AGENT_FS_PATH_BUF]; /* remove_tree_at extends it with entry names */
        memcpy(buf, path, strlen(path) + 1);
        if (remove_tree_at(pfd, base, buf, strlen(buf), 0, err) < 0) {
            return -1;
        }
    }
    return 0;
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

/* Copy the regular file @sfd (already open, described by @st) to @dname in @dfd, which must be
 * a regular file too if it exists: O_NONBLOCK, so that a FIFO there fails the open (ENXIO) or the
 * check rather than waiting for a reader. */
static int copy_file_fd(int sfd, const struct stat *st, int dfd, const char *dname,
                        const char *spath, const char *dpath, struct sbx_err *err)
{
    _cleanup_close_ int out = agent_path_open(
        dfd, dname, O_WRONLY | O_CREAT | O_TRUNC | O_NONBLOCK | O_NOCTTY | O_CLOEXEC, 0600);
    struct stat ost;

    if (out < 0) {
        return agent_fs_err(err, errno, "create", dpath);
    }
    if (fstat(out, &ost) < 0) {
        return agent_fs_err(err, errno, "create", dpath);
    }
    if (!S_ISREG(ost.st_mode)) {
        return agent_fs_err_file(err, EINVAL, ost.st_mode, "copy to", dpath);
    }
    if (copy_data(sfd, out) < 0) {
        return agent_fs_err2(err, errno, "copy", spath, dpath);
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
                        const char *dpath, unsigned depth, struct sbx_err *err)
{
    struct stat st;

    if (depth >= SBX_FS_WALK_OPEN_MAX) {
        return tree_too_deep(err, spath);
    }
    if (fstatat(sdfd, sname, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        return agent_fs_err(err, errno, "lstat", spath);
    }
    if (S_ISREG(st.st_mode)) {
        /* Opened only while it is a regular file: one replaced meanwhile by a FIFO (whose writer
         * could hold the copy forever) or a device is copied below as what it is now. */
        _cleanup_close_ int sfd = agent_path_open_file_at(sdfd, sname, false, &st);
        if (sfd >= 0) {
            return copy_file_fd(sfd, &st, ddfd, dname, spath, dpath, err);
        }
        if (errno != EINVAL || st.st_mode == 0) {
            return agent_fs_err(err, errno, "open", spath);
        }
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
            if (copy_tree_at(dirfd(d), de->d_name, out, de->d_name, sp, dp, depth + 1, err) < 0) {
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

    /* A regular file or a directory (followed if `from` is a symlink); anything else is refused
     * without being opened. */
    sfd = agent_path_open_file_at(AT_FDCWD, from, true, &st);
    if (sfd < 0 && errno == EINVAL && S_ISDIR(st.st_mode)) {
        if (!recursive) {
            return agent_fs_err(err, EISDIR, "copy (a directory needs recursive)", from);
        }
        sfd = agent_path_open(AT_FDCWD, from, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
        if (sfd < 0 || fstat(sfd, &st) < 0) {
            return agent_fs_err(err, errno, "open", from);
        }
    } else if (sfd < 0) {
        return errno == EINVAL && st.st_mode != 0
                   ? agent_fs_err_file(err, EINVAL, st.st_mode, "copy", from)
                   : agent_fs_err(err, errno, "open", from);
    }
    if (agent_path_stat(to, true, &dst) == 0) {
        if (dst.st_dev == st.st_dev && dst.st_ino == st.st_ino) {
            return agent_fs_err2(err, EINVAL, "copy onto itself", from, to);
        }
        if (S_ISDIR(st.st_mode) || S_ISDIR(dst.st_mode)) {
            return agent_fs_err(err, S_ISDIR(st.st_mode) ? EEXIST : EISDIR, "copy to", to);
        }
    }
    if (agent_path_split(to, parent, sizeof(parent), base, sizeof(base)) < 0) {
        return agent_fs_err(err, EEXIST, "copy to", to); /* "/" */
    }
    pfd = agent_path_open(AT_FDCWD, parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    if (pfd < 0) {
        return agent_fs_err(err, errno, "open", parent);
    }
    if (S_ISDIR(st.st_mode)) {
        /* Copying a tree into itself would never end. */
        if (realpath(from, rfrom) != NULL && realpath(parent, rparent) != NULL) {
            size_t n = strlen(rfrom);
            if (strncmp(rparent, rfrom, n) == 0 &&
                (rparent[n] == '/' || rparent[n] == '\0' || strcmp(rfrom, "/") == 0)) {
                return agent_fs_err2(err, EINVAL, "copy a directory into itself", from, to);
            }
        }
        /* `from` itself may be a symlink to a directory: copy what it names. */
        return copy_tree_at(sfd, ".", pfd, base, from, to, 0, err);
    }
    return copy_file_fd(sfd, &st, pfd, base, from, to, err);
}

/* --- the job ------------------------------------------------------------------------------- */

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
    struct agent_ident who;
    int rc;
    struct sbx_err err;
    char from[AGENT_FS_PATH_BUF], to[AGENT_FS_PATH_BUF];
};

static void job_work_cb(uv_work_t *req)
{
    struct fs_job *j = agent_container_of(req, struct fs_job, req);
    _cleanup_ident_ struct agent_ident_scope sc = { 0 };

    if (agent_ident_enter_err(&j->who, &sc, &j->err) < 0) {
        j->rc = -1;
        return;
    }
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
    struct agent_fs *fs = agent_fs_state(c);
    struct fs_job *j = fs != NULL ? calloc(1, sizeof(*j)) : NULL;
    int rc;

    if (j == NULL) {
        return sbx_err_oom(err);
    }
    if ((copy ? agent_fs_two_paths(m, "from", j->from, "to", j->to, err)
              : agent_fs_path_param(m->params, "path", SBX_REQUIRED, j->from, err)) < 0 ||
        sbx_param_bool(m->params, "recursive", SBX_OPTIONAL, &j->recursive, err) < 0 ||
        agent_ident_param(c->a, m->params, &j->who, err) < 0) {
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

void agent_fs_jobs_detach(struct agent_fs *fs)
{
    while (!agent_list_empty(&fs->jobs)) {
        struct fs_job *j = agent_container_of(fs->jobs.next, struct fs_job, link);
        agent_list_del(&j->link);
        j->conn = NULL; /* it finishes on its own and frees itself */
    }
}
