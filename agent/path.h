/*
 * Paths (path.c): the one family of path helpers that fs, transfer, tree and pack share (crun's
 * crun_safe_ensure_at idea): split a path into its parent and last component, make missing
 * directories (mkdir -p), and open under a root directory one component at a time without
 * following a symlink, so that nothing in a tree, not even a link swapped in meanwhile, leads
 * outside it.
 */
#ifndef SBX_AGENT_PATH_H
#define SBX_AGENT_PATH_H

#include <dirent.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "sbx/err.h"

/* Mode of the directories made on the way to a destination (agent_path_opendir with @create,
 * agent_path_opendir_under), then the umask: what mkdir -p gives (PROTOCOL.md §18.1, §18.3). */
#define AGENT_PATH_MKDIR_MODE 0755

/*
 * Split the absolute @path into its parent directory, into @parent (@parentsz bytes; "/" for
 * "/name"), and its last component, into @base (@basesz bytes). Trailing slashes are ignored
 * ("/a/b/" is "/a" and "b"); a last component "." or ".." is returned as it is, for the caller
 * to judge. Returns 0; -EINVAL when @path has no last component ("/"); -ENAMETOOLONG when a part
 * does not fit its buffer.
 */
int agent_path_split(const char *path, char *parent, size_t parentsz, char *base, size_t basesz);

/*
 * Clean the relative name @name of something to make under a root (an entry of
 * transfer.upload_tree's archive, or a hard link's target): leading "./" (and the slashes after
 * each) and trailing slashes removed, "." alone is the root itself (""). Writes the result into
 * @buf (@bufsz bytes): relative, no ".." component, no trailing '/'. Returns @buf; NULL with the
 * reason in *@why when @name is NULL, absolute, has a ".." component or does not fit.
 */
char *agent_path_clean_rel(const char *name, char *buf, size_t bufsz, const char **why);

/*
 * mkdir -p: make the absolute @path and every missing directory above it, those with
 * @parents_mode and @path itself with @mode (both then the umask). An existing directory, or a
 * symlink to one, is fine; a non-directory in the way is ENOTDIR naming it, or EEXIST when it is
 * @path itself. Trailing and doubled slashes are ignored. Returns 0, or -1 with @err set as
 * agent_fs_err does for "mkdir" and the directory that failed. Follows symlinks, as mkdir(1)
 * does: for a tree that must not, see agent_path_opendir_under.
 */
int agent_path_mkdir(const char *path, mode_t parents_mode, mode_t mode, struct sbx_err *err);

/* Check that @path (symlinks followed) is a directory. Returns 0, or -1 with @err set as
 * agent_fs_err sets it for @op: stat's errno, or ENOTDIR. */
int agent_path_check_dir(const char *path, const char *op, struct sbx_err *err);

/*
 * openat(2) that follows symlinks as it does, but no magic link (/proc/PID/fd/N, /proc/PID/cwd,
 * /proc/PID/root: RESOLVE_NO_MAGICLINKS, ELOOP). A thread acting as a user may still follow the
 * agent's own /proc/self/fd links, whatever its credentials, so a link the workload planted
 * there would reach a file another request opened as root. Every open of a path a request names
 * goes through this; the agent's own reopen of a pinned fd does not. Falls back to openat without
 * openat2 (before Linux 5.6).
 */
int agent_path_open(int dfd, const char *name, int oflags, mode_t mode);

/*
 * What the absolute @path names, pinned as agent_path_open opens (no magic link on the way):
 * O_PATH, which opens nothing (no FIFO waits, no device acts). The path methods that act on an
 * object (stat, lstat, chmod, chown, utime, readlink, realpath) act on this fd, or on its
 * agent_path_proc name, never on @path again. With @follow a symlink as the last component is
 * followed; else it is pinned itself (O_NOFOLLOW; the kernel allows that even for a magic link,
 * which is then only looked at). Returns the fd (O_CLOEXEC), or -1 with errno.
 */
int agent_path_pin(const char *path, bool follow);

/* stat(2) (@follow) or lstat(2) of the absolute @path through agent_path_pin. 0, or -1 with
 * errno. */
int agent_path_stat(const char *path, bool follow, struct stat *st);
/* The same for @name of directory fd @dfd (AT_FDCWD: a path). */
int agent_path_stat_at(int dfd, const char *name, bool follow, struct stat *st);

/* mkdir(2) of the absolute @path in its parent pinned by agent_path_pin_parent. 0, or -1 with
 * errno. */
int agent_path_mkdir1(const char *path, mode_t mode);

/* The name "/proc/self/fd/N" of @fd, into @buf (AGENT_PATH_PROC_BUF bytes): the agent's own
 * magic link to exactly that inode, for the calls that take no O_PATH fd (chmod, utimensat,
 * realpath's readlink). Returns @buf. */
#define AGENT_PATH_PROC_BUF 32
const char *agent_path_proc(int fd, char *buf);

/* Find out once, at start, what agent_path_open and agent_path_proc_ok depend on (whether the
 * kernel has openat2 and /proc is mounted); they find out on first use otherwise. */
void agent_path_init(void);

/* Whether /proc is mounted (looked at once): without it agent_path_proc names nothing, and the
 * callers use the path itself, as there is no magic link to keep away from either. */
bool agent_path_proc_ok(void);

/*
 * The parent directory of the absolute @path pinned as agent_path_pin pins (O_PATH |
 * O_DIRECTORY), for the path methods that make, rename or remove a name (mkdir, symlink,
 * rename, link, remove): they act on (*@dfd, @base). A trailing slash stays on @base ("b/", so
 * the kernel still wants a directory there). A path without a last component ("/") is left
 * whole: *@dfd is AT_FDCWD and @base the path (no magic link is on the way to "/"). Returns 0
 * with *@dfd to close when >= 0, or -1 with errno (ENAMETOOLONG: a part does not fit).
 */
int agent_path_pin_parent(const char *path, int *dfd, char *base, size_t basesz);

/*
 * Open the directory @path (absolute; symlinks followed as open(2) follows them), O_CLOEXEC.
 * When it is missing and @create is set, it is made first as agent_path_mkdir makes it (mode
 * AGENT_PATH_MKDIR_MODE for it and its missing parents). Returns the fd, or -1 with @err: the
 * errno, "open directory \"<path>\"" and `path` (or agent_path_mkdir's error).
 */
int agent_path_opendir(const char *path, bool create, struct sbx_err *err);

/* Open directory @name of directory fd @dfd, never following a symlink (O_NOFOLLOW), O_CLOEXEC:
 * the one step every walk below a root takes. Returns the fd, or -1 with errno set. */
int agent_path_opendir_at(int dfd, const char *name);

/*
 * Open the directory named by the first @len bytes of @rel (relative; empty components are
 * skipped, ".." is the caller's to refuse) under directory fd @rootfd without following a symlink
 * in any component: with openat2(2) RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS where the kernel has
 * it (Linux 5.6), which also refuses a ".." above the root (EXDEV), else one component at a time
 * with agent_path_opendir_at (agent_path_opendir_walk). With @create, missing directories are
 * made (AGENT_PATH_MKDIR_MODE), one component at a time. Returns a new fd (a duplicate of @rootfd
 * when @rel names no component), or -1 with errno set: ELOOP when a component is a symlink. When
 * @op is not NULL it is set to the step that failed, "mkdir" or "open directory", for the
 * caller's message. Thread-safe: uses no state but the fds.
 */
int agent_path_opendir_under(int rootfd, const char *rel, size_t len, bool create, const char **op);

/* agent_path_opendir_under as it works without openat2: a walk, one component at a time, each
 * opened O_NOFOLLOW | O_DIRECTORY from the one before. Exposed for tests. */
int agent_path_opendir_walk(int rootfd, const char *rel, size_t len, bool create, const char **op);

/*
 * Open @rel (relative, see agent_path_opendir_under) under directory fd @rootfd with @oflags
 * (O_NOFOLLOW, O_NONBLOCK, O_NOCTTY and O_CLOEXEC added; O_CREAT makes the file 0666 less the
 * umask, as creat(2) does): its parent directories are
 * walked without following a symlink and the last component is not followed either. O_NONBLOCK
 * means the open never waits (a FIFO's other end); it stays set. To read a file's content use
 * agent_path_open_file_under, which never opens anything but a regular file. Returns the fd, or
 * -1 with errno set (ELOOP for a symlink on the way).
 */
int agent_path_open_under(int rootfd, const char *rel, int oflags);

/*
 * Open the file @name of directory fd @dfd (AT_FDCWD: @name is a path as open(2) takes it) to
 * read its content, never opening anything but a regular file (PROTOCOL.md §17.3, §18.2):
 * @name is opened O_PATH first, which opens nothing (a FIFO, socket or device node is not
 * opened, so this can neither wait for a FIFO's writer nor wake a driver), fstat'd, and only a
 * regular file is then opened for reading through /proc/self/fd, which reaches that same inode
 * whatever @name names by then. The last component is followed only with @follow. The fd is
 * O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC; O_NONBLOCK stays: it changes nothing for a
 * regular file but that a kernel file whose read would wait for an event (/proc/kmsg) fails with
 * EAGAIN instead of holding the thread. Without /proc it opens @name O_NONBLOCK itself and checks
 * it is still that regular file.
 * Returns the fd, with *@st describing it; or -1 with errno: the open's, or EINVAL when it is not
 * a regular file, *@st then saying what it is (st_mode is 0 after any other failure; see
 * agent_fs_err_file). Thread-safe.
 */
int agent_path_open_file_at(int dfd, const char *name, bool follow, struct stat *st);

/*
 * agent_path_open_file_at for @rel under directory fd @rootfd: the parents are walked as
 * agent_path_opendir_under walks them (ELOOP for a symlink among them) and the last component is
 * not followed (a symlink there is not a regular file: EINVAL, *@st says S_IFLNK). Thread-safe.
 */
int agent_path_open_file_under(int rootfd, const char *rel, struct stat *st);

/* The next entry of @d other than "." and "..", or NULL: at the end with errno 0, after a failed
 * read with errno set. */
struct dirent *agent_path_readdir(DIR *d);

/*
 * The names in directory fd @fd, but "." and "..", sorted by strcmp, into *@out (NULL-terminated:
 * free with agent_strv_free) and their count into *@n. Read through a duplicate of @fd from its
 * start; the duplicate shares @fd's file offset, which ends at the end of the directory (use @fd
 * with *at() calls only, or rewind it). Returns 0, or -1 with @err: the errno (ENOMEM when out of
 * memory), "read directory \"<path>\"" and `path` @path (what @fd is, for the message).
 */
int agent_path_list(int fd, const char *path, char ***out, size_t *n, struct sbx_err *err);

#endif /* SBX_AGENT_PATH_H */
