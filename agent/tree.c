/*
 * transfer.download_tree (PROTOCOL.md 18.4): a directory tree walked into a tar stream by an out
 * job's thread (outjob.c), never following a symlink, each hard-linked file archived once, and
 * nothing but a regular file ever opened for its content. The thread reads as the request's
 * identity (PROTOCOL.md §17.1).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conn.h"
#include "fs.h"
#include "outjob.h"
#include "path.h"
#include "sbx/schema.h"
#include "stream.h"
#include "strv.h"
#include "transfer.h"

#define TREE_CHUNK SBX_STREAM_CHUNK_MAX
/* Files with more than one link remembered (for the entries that link to them): beyond either
 * cap a further one is archived in full again (a correct archive, only larger), so a workload's
 * tree of millions of hard links costs neither unbounded memory nor a quadratic walk. */
#define TREE_LINKS_MAX      (1u << 20)
#define TREE_LINK_BYTES_MAX (64u << 20) /* of their entry names */

struct hardlink {
    dev_t dev;
    ino_t ino;
    char *path;
};

struct tree_down {
    struct agent_outjob j;
    struct agent_ident who; /* whom the tree is read as */
    char root[AGENT_FS_PATH_BUF];
    enum agent_compress comp;
    struct archive *ar;
    struct archive_entry *entry;
    struct hardlink *links; /* an open-addressing table of caplinks slots (a power of two) */
    size_t nlinks, caplinks, link_bytes;
    char path[AGENT_FS_PATH_BUF * 2]; /* the entry name being built */
    /* File content on its way into the archive. Here, not in thread-local storage: a static TLS
     * block is set up in every thread the agent has, spawner threads included. */
    uint8_t buf[TREE_CHUNK];
};

static size_t link_slot(const struct hardlink *tab, size_t cap, dev_t dev, ino_t ino)
{
    uint64_t h = ((uint64_t)ino ^ ((uint64_t)dev << 32 | (uint64_t)dev >> 32)) *
                 UINT64_C(0x9e3779b97f4a7c15);
    size_t i = (size_t)(h >> 32) & (cap - 1);

    while (tab[i].path != NULL && (tab[i].dev != dev || tab[i].ino != ino)) {
        i = (i + 1) & (cap - 1);
    }
    return i;
}

/* The entry name a file with more than one link was archived under, or NULL when this is its
 * first entry (then remembered for the next, as the caps allow). */
static const char *hardlink_seen(struct tree_down *t, const struct stat *st, const char *path)
{
    size_t len = strlen(path) + 1, i;

    if (t->caplinks > 0) {
        i = link_slot(t->links, t->caplinks, st->st_dev, st->st_ino);
        if (t->links[i].path != NULL) {
            return t->links[i].path;
        }
    }
    if (t->nlinks >= TREE_LINKS_MAX || len > TREE_LINK_BYTES_MAX - t->link_bytes) {
        return NULL;
    }
    if (2 * (t->nlinks + 1) > t->caplinks) { /* at most half full */
        size_t cap = t->caplinks ? t->caplinks * 2 : 64;
        struct hardlink *n = calloc(cap, sizeof(*n));

        if (n == NULL) {
            return NULL;
        }
        for (size_t j = 0; j < t->caplinks; j++) {
            if (t->links[j].path != NULL) {
                n[link_slot(n, cap, t->links[j].dev, t->links[j].ino)] = t->links[j];
            }
        }
        free(t->links);
        t->links = n;
        t->caplinks = cap;
    }
    i = link_slot(t->links, t->caplinks, st->st_dev, st->st_ino);
    t->links[i].path = malloc(len);
    if (t->links[i].path != NULL) {
        memcpy(t->links[i].path, path, len);
        t->links[i].dev = st->st_dev;
        t->links[i].ino = st->st_ino;
        t->nlinks++;
        t->link_bytes += len;
    }
    return NULL;
}

/* Fill @e from @st (name set by the caller). */
static void entry_from_stat(struct archive_entry *e, const struct stat *st)
{
    archive_entry_set_mode(e, st->st_mode);
    archive_entry_set_uid(e, st->st_uid);
    archive_entry_set_gid(e, st->st_gid);
    archive_entry_set_mtime(e, st->st_mtim.tv_sec, st->st_mtim.tv_nsec);
    archive_entry_set_size(e, S_ISREG(st->st_mode) ? st->st_size : 0);
    if (S_ISCHR(st->st_mode) || S_ISBLK(st->st_mode)) {
        archive_entry_set_rdev(e, st->st_rdev);
    }
}

/*
 * Archive the content of the regular file @fd (taken over: closed here), entry @full, @size bytes
 * as its header says: no more, whatever the file holds by now (a file the workload grew to 16 TiB
 * of hole after its stat would otherwise be read to its end, libarchive dropping what passes the
 * header's size, and the job never meeting a cancel); one that shrank is padded by libarchive.
 */
static int tree_write_file(struct tree_down *t, int fd, const char *full, int64_t size)
{
    uint8_t *buf = t->buf;
    int rc = 0;

    while (size > 0) {
        ssize_t n = read(fd, buf, size < (int64_t)sizeof(t->buf) ? (size_t)size : sizeof(t->buf));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            sbx_err_sys(&t->j.err, errno, NULL, "read \"%s/%s\"", t->root, full);
            sbx_err_set_path(&t->j.err, full);
            rc = -1;
            break;
        }
        if (n == 0) {
            break;
        }
        size -= n;
        if (archive_write_data(t->ar, buf, (size_t)n) < 0) {
            if (!agent_outjob_cancelled(&t->j)) {
                agent_archive_err(&t->j.err, t->ar, "write the archive");
            }
            rc = -1;
            break;
        }
    }
    (void)close(fd); /* read-only */
    return rc;
}

/*
 * Open the content of entry @name of directory @dirfd, which fstatat saw as the regular file
 * @st. A file is opened only if it is a regular file at the moment it is opened
 * (agent_path_open_file_at): one replaced meanwhile by a FIFO, device or symlink is archived as
 * what it is now, without content, and *@st says so then. Sets *@fd to the content's fd (-1 when
 * there is none to read); returns 0, 1 when the entry vanished, or -1 with the job's error set.
 */
static int tree_open_file(struct tree_down *t, int dirfd, const char *name, struct stat *st,
                          int *fd)
{
    *fd = agent_path_open_file_at(dirfd, name, false, st);
    if (*fd >= 0 || (errno == EINVAL && st->st_mode != 0)) {
        return 0;
    }
    if (errno == ENOENT) {
        return 1;
    }
    sbx_err_sys(&t->j.err, errno, NULL, "open \"%s/%s\"", t->root, t->path);
    sbx_err_set_path(&t->j.err, t->path);
    return -1;
}

/* Archive the contents of directory @fd, whose entry name prefix is t->path[0..plen). */
static int tree_walk(struct tree_down *t, int fd, size_t plen, int depth)
{
    char **names = NULL;
    size_t n = 0;
    int rc = 0;

    if (depth > 256) {
        sbx_err_sys(&t->j.err, ELOOP, NULL, "tree deeper than 256 levels at \"%s\"", t->path);
        return -1;
    }
    if (agent_path_list(fd, plen ? t->path : t->root, &names, &n, &t->j.err) < 0) {
        return -1;
    }
    for (size_t i = 0; i < n && rc == 0; i++) {
        struct stat st;
        size_t nlen = strlen(names[i]);
        int cfd = -1; /* the content of a regular file */

        if (agent_outjob_cancelled(&t->j)) {
            rc = -1;
            break;
        }
        if (plen + nlen + 2 > sizeof(t->path)) {
            sbx_err_sys(&t->j.err, ENAMETOOLONG, NULL, "path too long under \"%s\"", t->root);
            rc = -1;
            break;
        }
        memcpy(t->path + plen, names[i], nlen + 1);
        if (fstatat(fd, names[i], &st, AT_SYMLINK_NOFOLLOW) < 0) {
            if (errno == ENOENT) {
                continue; /* removed while we walk */
            }
            sbx_err_sys(&t->j.err, errno, NULL, "stat \"%s\"", t->path);
            sbx_err_set_path(&t->j.err, t->path);
            rc = -1;
            break;
        }
        if (S_ISREG(st.st_mode)) {
            rc = tree_open_file(t, fd, names[i], &st, &cfd);
            if (rc != 0) {
                rc = rc > 0 ? 0 : -1;
                continue;
            }
        }
        if (S_ISSOCK(st.st_mode)) {
            continue;
        }
        archive_entry_clear(t->entry);
        archive_entry_copy_pathname(t->entry, t->path);
        entry_from_stat(t->entry, &st);
        if (S_ISLNK(st.st_mode)) {
            char target[PATH_MAX + 1];
            ssize_t tl = readlinkat(fd, names[i], target, PATH_MAX);
            if (tl < 0) {
                sbx_err_sys(&t->j.err, errno, NULL, "readlink \"%s\"", t->path);
                sbx_err_set_path(&t->j.err, t->path);
                rc = -1;
                break;
            }
            target[tl] = '\0';
            archive_entry_copy_symlink(t->entry, target);
        } else if (!S_ISDIR(st.st_mode) && st.st_nlink > 1) {
            const char *first = hardlink_seen(t, &st, t->path);
            if (first != NULL) {
                archive_entry_copy_hardlink(t->entry, first);
                archive_entry_set_size(t->entry, 0);
            }
        }
        if (archive_write_header(t->ar, t->entry) < ARCHIVE_WARN) {
            if (!agent_outjob_cancelled(&t->j)) {
                agent_archive_err(&t->j.err, t->ar, "write the archive");
            }
            rc = -1;
        } else if (cfd >= 0 && archive_entry_size(t->entry) > 0) {
            rc = tree_write_file(t, cfd, t->path, archive_entry_size(t->entry));
            cfd = -1;
        } else if (S_ISDIR(st.st_mode)) {
            int sub = agent_path_opendir_at(fd, names[i]);
            if (sub < 0) {
                sbx_err_sys(&t->j.err, errno, NULL, "open directory \"%s\"", t->path);
                sbx_err_set_path(&t->j.err, t->path);
                rc = -1;
                break;
            }
            t->path[plen + nlen] = '/';
            t->path[plen + nlen + 1] = '\0';
            rc = tree_walk(t, sub, plen + nlen + 1, depth + 1);
            close(sub);
        }
        if (cfd >= 0) {
            (void)close(cfd); /* a hard link or empty file: nothing was read */
        }
    }
    agent_strv_free(names);
    return rc;
}

static int tree_down_produce(struct agent_outjob *j)
{
    struct tree_down *t = agent_container_of(j, struct tree_down, j);
    _cleanup_ident_ struct agent_ident_scope sc = { 0 };
    int fd, rc;

    /* This thread is the job's: it acts as the identity from here to its end. */
    if (agent_ident_enter_err(&t->who, &sc, &j->err) < 0) {
        return -1;
    }
    fd = agent_path_opendir(t->root, false, &j->err);
    if (fd < 0) {
        return -1;
    }
    t->ar = agent_outjob_archive(j, t->comp);
    t->entry = archive_entry_new();
    if (t->ar == NULL || t->entry == NULL) {
        close(fd);
        return -1;
    }
    t->path[0] = '\0';
    rc = tree_walk(t, fd, 0, 0);
    close(fd);
    if (rc == 0 && archive_write_close(t->ar) != ARCHIVE_OK) {
        agent_archive_err(&j->err, t->ar, "finish the archive");
        rc = -1;
    }
    if (rc < 0 && agent_outjob_cancelled(j)) {
        sbx_err_set(&j->err, SBX_E_CANCELLED, "cancelled");
    }
    /* Freed here, on the thread: freeing an open writer flushes it into the stream. */
    agent_outjob_archive_free(j, t->ar, rc < 0);
    t->ar = NULL;
    return rc;
}

static void tree_down_close(struct agent_outjob *j)
{
    struct tree_down *t = agent_container_of(j, struct tree_down, j);

    if (t->ar != NULL) {
        archive_write_free(t->ar);
    }
    if (t->entry != NULL) {
        archive_entry_free(t->entry);
    }
    for (size_t i = 0; i < t->caplinks; i++) {
        free(t->links[i].path);
    }
    free(t->links);
    free(t);
}

int agent_transfer_download_tree(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err)
{
    struct tree_down *t = calloc(1, sizeof(*t));
    struct agent_ident_scope sc = { 0 };
    int rc;

    if (t == NULL) {
        return sbx_err_oom(err);
    }
    if (agent_fs_path_param(m->params, "path", SBX_REQUIRED, t->root, err) < 0 ||
        agent_compress_param(m->params, "compress", SBX_OPTIONAL, &t->comp, err) < 0 ||
        agent_ident_param(c->a, m->params, &t->who, err) < 0 ||
        agent_stream_reserve(c, 1, err) < 0) { /* the cap before the disk (PROTOCOL.md §7.2) */
        goto fail;
    }
    if (agent_ident_enter_err(&t->who, &sc, err) < 0) {
        goto fail;
    }
    rc = agent_path_check_dir(t->root, "download tree", err);
    agent_ident_leave(&sc); /* before the job's thread is made: it must start as the agent */
    if (rc < 0) {
        goto fail;
    }
    t->j.produce = tree_down_produce;
    t->j.on_close = tree_down_close;
    switch (agent_outjob_start(&t->j, c, err)) {
    case 0:
        break;
    case -2: /* freed by on_close */
        return -1;
    default:
        goto fail;
    }
    agent_reply_stream(c, m->id, t->j.sid);
    return AGENT_REPLIED;
fail:
    free(t);
    return -1;
}
