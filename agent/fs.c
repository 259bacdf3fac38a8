/*
 * What the fs family's files share (fs.h): path params made absolute against the request's
 * `cwd`, errno errors that carry the path, and FileInfo (type names and the reply).
 */
#include "fs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include "conn.h"
#include "sbx/schema.h"

/* --- errors and params --------------------------------------------------------------------- */

int agent_fs_err(struct sbx_err *err, int errnum, const char *op, const char *path)
{
    sbx_err_sys(err, errnum, NULL, "%s \"%s\"", op, path);
    sbx_err_set_path(err, path);
    return -1;
}

int agent_fs_err_file(struct sbx_err *err, int errnum, unsigned mode, const char *op,
                      const char *path)
{
    if (errnum != EINVAL || mode == 0 || S_ISREG(mode)) {
        return agent_fs_err(err, errnum, op, path);
    }
    if (S_ISDIR(mode)) {
        return agent_fs_err(err, EISDIR, op, path);
    }
    agent_fs_err(err, EINVAL, op, path);
    (void)snprintf(err->msg, sizeof(err->msg), "%s \"%s\": not a regular file (%s)", op, path,
                   agent_fs_type_name(mode));
    return -1;
}

int agent_fs_act_as(struct agent_conn *c, const struct sbx_msg *m, struct agent_ident_scope *sc,
                    struct sbx_err *err)
{
    struct agent_ident id;

    if (agent_ident_param(c->a, m->params, &id, err) < 0) {
        return -1;
    }
    return agent_ident_enter_err(&id, sc, err);
}

int agent_fs_err2(struct sbx_err *err, int errnum, const char *op, const char *from, const char *to)
{
    sbx_err_sys(err, errnum, NULL, "%s \"%.100s\" -> \"%.100s\"", op, from, to);
    sbx_err_set_path(err, from);
    return -1;
}

int agent_fs_umask_get(void)
{
    char buf[1024];
    int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    ssize_t n;
    const char *p;

    if (fd < 0) {
        return -1;
    }
    n = read(fd, buf, sizeof(buf) - 1);
    (void)close(fd); /* read-only */
    if (n <= 0) {
        return -1;
    }
    buf[n] = '\0';
    p = strstr(buf, "\nUmask:");
    if (p == NULL) {
        return -1;
    }
    return (int)(strtol(p + 7, NULL, 8) & 0777);
}

int agent_fs_two_paths(const struct sbx_msg *m, const char *k1, char *p1, const char *k2, char *p2,
                       struct sbx_err *err)
{
    if (agent_fs_path_param(m->params, k1, SBX_REQUIRED, p1, err) < 0 ||
        agent_fs_path_param(m->params, k2, SBX_REQUIRED, p2, err) < 0) {
        return -1;
    }
    return 0;
}

/* --- FileInfo ------------------------------------------------------------------------------ */

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

void agent_fs_reply_fileinfo(struct agent_conn *c, uint32_t id, const struct statx *st,
                             const char *target, ssize_t tlen)
{
    msgpack_packer *pk = agent_conn_begin(c);

    sbx_pack_response_head(pk, id);
    pack_fileinfo(pk, st, target, tlen);
    agent_conn_send(c);
}
