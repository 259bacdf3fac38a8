/*
 * What the fs family's files share: path parameters, errno errors that carry the path and
 * FileInfo (PROTOCOL.md §17.1), all in fs.c, and the request handlers of the family: fspath.c
 * (path methods), fsdir.c (readdir cursors), fsjob.c (fs.remove and fs.copy on the threadpool),
 * fsfile.c (file handles), fswalk.c (walk and glob), fswatch.c (inotify watches). The state they
 * keep per connection is fsconn.h's.
 */
#ifndef SBX_AGENT_FS_H
#define SBX_AGENT_FS_H

#include <dirent.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "params.h"
#include "user.h"

struct statx;

/* Scope-bound resources (crun's cleanup attributes). */
static inline void agent_fs_closep(int *fd)
{
    if (*fd >= 0) {
        (void)close(*fd); /* read-only or already-synced descriptors: nothing to report */
    }
}
static inline void agent_fs_closedirp(DIR **d)
{
    if (*d != NULL) {
        (void)closedir(*d);
    }
}
static inline void agent_fs_freep(void *p)
{
    free(*(void **)p);
}
#define _cleanup_close_    __attribute__((cleanup(agent_fs_closep)))
#define _cleanup_closedir_ __attribute__((cleanup(agent_fs_closedirp)))
#define _cleanup_free_     __attribute__((cleanup(agent_fs_freep)))

static inline int agent_fs_steal_fd(int *fd)
{
    int r = *fd;
    *fd = -1;
    return r;
}

/* agent_fs_path_param and agent_fs_time_param are params.h's. */

/*
 * Act as the identity request @m names (its `user` param, or the default: agent_ident_param) on
 * the calling thread, the loop thread, until agent_ident_leave(@sc): the file work of a request
 * that is done on the loop is done between the two, and nothing else (no reply, no new thread, no
 * threadpool work; see user.h). Returns 0, or -1 with @err.
 */
int agent_fs_act_as(struct agent_conn *c, const struct sbx_msg *m, struct agent_ident_scope *sc,
                    struct sbx_err *err);

/* An errno error for operation @op on @path: code, errno, `path` and "op \"path\": strerror".
 * Returns -1. */
int agent_fs_err(struct sbx_err *err, int errnum, const char *op, const char *path);

/*
 * The error of opening @path for its content with agent_path_open_file_at, which failed with
 * @errnum after seeing the type @mode (its st_mode, 0 if none): a directory is EISDIR (what
 * read(2) says), another file that is not a regular one EINVAL with the message "@op \"@path\":
 * not a regular file (fifo)" (PROTOCOL.md §17.3, §18.2), anything else as agent_fs_err. Returns
 * -1.
 */
int agent_fs_err_file(struct sbx_err *err, int errnum, unsigned mode, const char *op,
                      const char *path);

/* An errno error for a method on two paths: the message names both, `path` is @from. Returns -1. */
int agent_fs_err2(struct sbx_err *err, int errnum, const char *op, const char *from,
                  const char *to);

/* Read the required path params @k1 into @p1 and @k2 into @p2 (AGENT_FS_PATH_BUF bytes each) as
 * agent_fs_path_param does: 0, or -1 with @err. */
int agent_fs_two_paths(const struct sbx_msg *m, const char *k1, char *p1, const char *k2, char *p2,
                       struct sbx_err *err);

/*
 * The agent's process umask (0..0777) read from /proc/self/status without changing it: umask(2)
 * is process-wide, and setting it to read it would race with worker threads creating files.
 * Returns -1 when /proc does not say. Any thread.
 */
int agent_fs_umask_get(void);

/* FileInfo `type` for an st_mode / a dirent d_type (NULL for DT_UNKNOWN). */
const char *agent_fs_type_name(unsigned mode);
const char *agent_fs_dtype_name(unsigned char d_type);

/* Reply to request @id on @c with the FileInfo of @st; @target (may be NULL), @tlen bytes long,
 * is a symlink's target for fs.lstat. Loop thread. */
void agent_fs_reply_fileinfo(struct agent_conn *c, uint32_t id, const struct statx *st,
                             const char *target, ssize_t tlen);

/* --- fs family requests ------------------------------------------------------------------- */

/*
 * Request handlers (dispatch.c's table, see AGENT_REPLIED in agent.h): each answers request @m
 * on @c and returns AGENT_REPLIED, or returns -1 with @err for the dispatcher to send. fs.remove
 * and fs.copy return AGENT_LATER: their threadpool job answers when it is done.
 */
/* Path methods (PROTOCOL.md §17.3), fspath.c. */
int agent_fs_stat(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_fs_lstat(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_fs_mkdir(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_fs_rename(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_fs_chmod(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_fs_chown(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_fs_symlink(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_fs_link(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_fs_readlink(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_fs_realpath(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_fs_truncate(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_fs_utime(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_fs_mktemp(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
/* The agent's process-wide umask (§17.8), fspath.c. */
int agent_fs_umask(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
/* Paged directory listings (§17.3), fsdir.c: readdir cursors, per connection. */
int agent_fs_readdir(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
/* Tree-sized path methods (§17.3), fsjob.c: jobs on the threadpool. */
int agent_fs_remove(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_fs_copy(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
/* Entry streams (§17.4, §17.5), fswalk.c. */
int agent_fs_walk(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_fs_glob(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
/* Watches (§17.6), fswatch.c: inotify, per connection. */
int agent_fs_watch(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_fs_unwatch(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
/* File handles (§17.7), fsfile.c: per connection. */
int agent_fs_open(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_fs_read(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_fs_write(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_fs_seek(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_fs_fstat(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_fs_fsync(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_fs_ftruncate(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_fs_futimes(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
/* fs.flock returns AGENT_LATER when it waits: a timer retries it until it gets the lock. */
int agent_fs_flock(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_fs_funlock(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);
int agent_fs_close(struct agent_conn *c, const struct sbx_msg *m, struct sbx_err *err);

#endif /* SBX_AGENT_FS_H */
