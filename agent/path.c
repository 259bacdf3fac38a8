/* Paths: split, mkdir -p, and opening under a root without following symlinks. */
#include "path.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "fs.h"
#include "strv.h"

int agent_path_split(const char *path, char *parent, size_t parentsz, char *base, size_t basesz)
{
    size_t n = strlen(path), plen, blen;
    const char *slash;

    while (n > 1 && path[n - 1] == '/') {
        n--;
    }
    slash = memrchr(path, '/', n);
    if (slash == NULL || (size_t)(slash - path) == n - 1) {
        return -EINVAL; /* "/" itself */
    }
    plen = slash == path ? 1 : (size_t)(slash - path); /* "/name": the parent is "/" */
    blen = n - (size_t)(slash + 1 - path);
    if (plen >= parentsz || blen >= basesz) {
        return -ENAMETOOLONG;
    }
    memcpy(parent, path, plen);
    parent[plen] = '\0';
    memcpy(base, slash + 1, blen);
    base[blen] = '\0';
    return 0;
}

char *agent_path_clean_rel(const char *name, char *buf, size_t bufsz, const char **why)
{
    const char *p = name;
    size_t n;

    if (name == NULL || name[0] == '/') {
        *why = name == NULL ? "no name" : "absolute name";
        return NULL;
    }
    while (p[0] == '.' && p[1] == '/') {
        p += 2;
        while (*p == '/') {
            p++;
        }
    }
    n = strlen(p);
    if (n >= bufsz) {
        *why = "name too long";
        return NULL;
    }
    memcpy(buf, p, n + 1);
    while (n > 0 && buf[n - 1] == '/') {
        buf[--n] = '\0';
    }
    if (strcmp(buf, ".") == 0) {
        buf[0] = '\0';
    }
    for (const char *c = buf; *c != '\0';) {
        const char *e = strchr(c, '/');
        size_t l = e != NULL ? (size_t)(e - c) : strlen(c);
        if (l == 2 && c[0] == '.' && c[1] == '.') {
            *why = "\"..\" component";
            return NULL;
        }
        c += l;
        while (*c == '/') {
            c++;
        }
    }
    return buf;
}

int agent_path_mkdir(const char *path, mode_t parents_mode, mode_t mode, struct sbx_err *err)
{
    char buf[AGENT_FS_PATH_BUF];
    size_t n = strlen(path);
    struct stat st;

    if (n >= sizeof(buf)) {
        return agent_fs_err(err, ENAMETOOLONG, "mkdir", path);
    }
    if (n == 0) {
        return agent_fs_err(err, ENOENT, "mkdir", path); /* as mkdir("") says */
    }
    while (n > 1 && path[n - 1] == '/') {
        n--;
    }
    memcpy(buf, path, n);
    buf[n] = '\0';
    for (char *p = buf + 1;; p++) {
        bool last = *p == '\0';
        if (*p != '/' && !last) {
            continue;
        }
        if (p[-1] == '/' && !last) {
            continue; /* "//" */
        }
        *p = '\0';
        if (agent_path_mkdir1(buf, last ? mode : parents_mode) < 0) {
            int e = errno;
            if (e != EEXIST || agent_path_stat(buf, true, &st) < 0 || !S_ISDIR(st.st_mode)) {
                if (e == EEXIST) {
                    e = agent_path_stat(buf, true, &st) < 0 ? errno : ENOTDIR;
                    if (last && e == ENOTDIR) {
                        e = EEXIST; /* the target itself exists and is not a directory */
                    }
                }
                return agent_fs_err(err, e, "mkdir", buf);
            }
        }
        if (last) {
            return 0;
        }
        *p = '/';
    }
}

int agent_path_check_dir(const char *path, const char *op, struct sbx_err *err)
{
    struct stat st;

    if (agent_path_stat(path, true, &st) < 0) {
        return agent_fs_err(err, errno, op, path);
    }
    if (!S_ISDIR(st.st_mode)) {
        return agent_fs_err(err, ENOTDIR, op, path);
    }
    return 0;
}

#ifdef SYS_openat2
/* Whether openat2 works here: 1 yes, -1 no (before Linux 5.6, or a seccomp filter refuses it), 0
 * not known yet. Found out once, by opening "/", never from a call's own error: EPERM is also what
 * an open may answer (/dev/kmsg to a user), and a workload link that swaps between such a file and
 * a magic link would then be followed by the old call. */
static int openat2_works;

static bool have_openat2(void)
{
    int v = __atomic_load_n(&openat2_works, __ATOMIC_RELAXED);

    if (v == 0) {
        struct open_how how = { .flags = O_PATH | O_CLOEXEC, .resolve = RESOLVE_NO_MAGICLINKS };
        int fd = (int)syscall(SYS_openat2, AT_FDCWD, "/", &how, sizeof(how));

        if (fd >= 0) {
            (void)close(fd); /* an O_PATH fd: nothing to report */
            v = 1;
        } else if (errno == ENOSYS || errno == EPERM || errno == E2BIG || errno == EINVAL) {
            v = -1;
        } else {
            return true; /* out of fds or memory: this call fails as openat2 says; ask again */
        }
        __atomic_store_n(&openat2_works, v, __ATOMIC_RELAXED);
    }
    return v > 0;
}
#endif

int agent_path_open(int dfd, const char *name, int oflags, mode_t mode)
{
#ifdef SYS_openat2
    if (have_openat2()) {
        struct open_how how = {
            .flags = (uint64_t)oflags,
            .mode = (oflags & (O_CREAT | O_TMPFILE)) != 0 ? (uint64_t)mode : 0,
            .resolve = RESOLVE_NO_MAGICLINKS,
        };
        return (int)syscall(SYS_openat2, dfd, name, &how, sizeof(how));
    }
    /* No openat2 (before 5.6, or filtered): the old call, magic links and all. */
#endif
    return openat(dfd, name, oflags, mode);
}

/* agent_path_pin for @name of directory fd @dfd. */
static int pin_at(int dfd, const char *name, bool follow)
{
    return agent_path_open(dfd, name, O_PATH | O_CLOEXEC | (follow ? 0 : O_NOFOLLOW), 0);
}

int agent_path_pin(const char *path, bool follow)
{
    return pin_at(AT_FDCWD, path, follow);
}

void agent_path_init(void)
{
#ifdef SYS_openat2
    (void)have_openat2();
#endif
    (void)agent_path_proc_ok();
}

bool agent_path_proc_ok(void)
{
    static int ok; /* 1 yes, -1 no, 0 not known yet */
    int v = __atomic_load_n(&ok, __ATOMIC_RELAXED);

    if (v == 0) {
        v = access("/proc/self/fd", F_OK) == 0 ? 1 : -1;
        __atomic_store_n(&ok, v, __ATOMIC_RELAXED);
    }
    return v > 0;
}

const char *agent_path_proc(int fd, char *buf)
{
    (void)snprintf(buf, AGENT_PATH_PROC_BUF, "/proc/self/fd/%d", fd);
    return buf;
}

int agent_path_pin_parent(const char *path, int *dfd, char *base, size_t basesz)
{
    char parent[PATH_MAX + 1];
    size_t n = strlen(path), blen;
    int r = agent_path_split(path, parent, sizeof(parent), base, basesz);

    *dfd = AT_FDCWD;
    if (r == -EINVAL) { /* "/" */
        if (n >= basesz) {
            errno = ENAMETOOLONG;
            return -1;
        }
        memcpy(base, path, n + 1);
        return 0;
    }
    if (r < 0) {
        errno = -r;
        return -1;
    }
    blen = strlen(base);
    if (path[n - 1] == '/') {
        if (blen + 1 >= basesz) {
            errno = ENAMETOOLONG;
            return -1;
        }
        base[blen] = '/';
        base[blen + 1] = '\0';
    }
    *dfd = agent_path_open(AT_FDCWD, parent, O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
    return *dfd < 0 ? -1 : 0;
}

int agent_path_stat(const char *path, bool follow, struct stat *st)
{
    return agent_path_stat_at(AT_FDCWD, path, follow, st);
}

int agent_path_stat_at(int dfd, const char *name, bool follow, struct stat *st)
{
    int fd = pin_at(dfd, name, follow), r, e;

    if (fd < 0) {
        return -1;
    }
    r = fstat(fd, st);
    e = errno;
    (void)close(fd); /* an O_PATH fd: nothing to report */
    errno = e;
    return r;
}

int agent_path_mkdir1(const char *path, mode_t mode)
{
    char base[PATH_MAX + 2];
    int dfd, r, e;

    if (agent_path_pin_parent(path, &dfd, base, sizeof(base)) < 0) {
        return -1;
    }
    r = mkdirat(dfd, base, mode);
    e = errno;
    if (dfd >= 0) {
        (void)close(dfd);
    }
    errno = e;
    return r;
}

int agent_path_opendir(const char *path, bool create, struct sbx_err *err)
{
    int fd = agent_path_open(AT_FDCWD, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);

    if (fd < 0 && errno == ENOENT && create) {
        if (agent_path_mkdir(path, AGENT_PATH_MKDIR_MODE, AGENT_PATH_MKDIR_MODE, err) < 0) {
            return -1;
        }
        fd = agent_path_open(AT_FDCWD, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    }
    if (fd < 0) {
        return agent_fs_err(err, errno, "open directory", path);
    }
    return fd;
}

int agent_path_opendir_at(int dfd, const char *name)
{
    return openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

/* Fail agent_path_opendir_under at step @what with @e, closing @fd. Returns -1. */
static int under_fail(int fd, int e, const char *what, const char **op)
{
    if (fd >= 0) {
        (void)close(fd); /* a directory opened read-only: nothing to report */
    }
    if (op != NULL) {
        *op = what;
    }
    errno = e;
    return -1;
}

int agent_path_opendir_walk(int rootfd, const char *rel, size_t len, bool create, const char **op)
{
    int fd = -1;

    for (size_t i = 0; i < len;) {
        char name[NAME_MAX + 1];
        int dfd = fd >= 0 ? fd : rootfd;
        size_t n = 0;
        int nfd;

        while (i < len && rel[i] == '/') {
            i++;
        }
        while (i + n < len && rel[i + n] != '/') {
            n++;
        }
        if (n == 0) {
            break; /* trailing slashes */
        }
        if (n > NAME_MAX) {
            return under_fail(fd, ENAMETOOLONG, "open directory", op);
        }
        memcpy(name, rel + i, n);
        name[n] = '\0';
        i += n;
        nfd = agent_path_opendir_at(dfd, name);
        if (nfd < 0 && errno == ENOENT && create) {
            if (mkdirat(dfd, name, AGENT_PATH_MKDIR_MODE) < 0 && errno != EEXIST) {
                return under_fail(fd, errno, "mkdir", op);
            }
            nfd = agent_path_opendir_at(dfd, name);
        }
        if (nfd < 0) {
            int e = errno;
            struct stat st;
            /* O_NOFOLLOW | O_DIRECTORY on a symlink says ENOTDIR or ELOOP: name it ELOOP. */
            if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode)) {
                e = ELOOP;
            }
            return under_fail(fd, e, "open directory", op);
        }
        if (fd >= 0) {
            (void)close(fd);
        }
        fd = nfd;
    }
    if (fd < 0) {
        fd = fcntl(rootfd, F_DUPFD_CLOEXEC, 0);
        if (fd < 0) {
            return under_fail(-1, errno, "open directory", op);
        }
    }
    return fd;
}

/* How many times a resolution openat2 refused with EAGAIN (a rename or mount meanwhile moved
 * something it had walked through) is tried again before the walk does it. */
#define BENEATH_TRIES 4

/*
 * openat2(2) of @rel (relative, NUL-terminated) under @rootfd with @oflags, resolved beneath it
 * (RESOLVE_BENEATH: no absolute path, no ".." above it) without following any symlink, the last
 * component included (RESOLVE_NO_SYMLINKS, RESOLVE_NO_MAGICLINKS): what the per-component walk
 * does, in one call the kernel makes atomic. Returns the fd, or -1 with errno (ELOOP for a
 * symlink, EXDEV for a way out); ENOSYS when the kernel (before 5.6) or a seccomp filter has no
 * openat2, or refuses the flags: the caller walks then.
 */
static int open_beneath(int rootfd, const char *rel, int oflags)
{
#ifdef SYS_openat2
    struct open_how how = {
        .flags = (uint64_t)(oflags | O_CLOEXEC),
        .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    };
    int fd = -1;

    for (int i = 0; i < BENEATH_TRIES; i++) {
        fd = (int)syscall(SYS_openat2, rootfd, rel, &how, sizeof(how));
        if (fd >= 0 || errno != EAGAIN) {
            break;
        }
    }
    if (fd < 0 && (errno == ENOSYS || errno == EPERM || errno == E2BIG || errno == EINVAL ||
                   errno == EAGAIN)) {
        errno = ENOSYS; /* none, filtered, flags unknown, or a rename storm: walk */
    }
    return fd;
#else
    (void)rootfd;
    (void)rel;
    (void)oflags;
    errno = ENOSYS;
    return -1;
#endif
}

int agent_path_opendir_under(int rootfd, const char *rel, size_t len, bool create, const char **op)
{
    char buf[AGENT_FS_PATH_BUF];
    size_t skip = 0;
    int fd;

    while (skip < len && rel[skip] == '/') {
        skip++; /* openat2 would take a leading '/' for an escape from the root */
    }
    if (skip == len || len - skip >= sizeof(buf)) {
        return agent_path_opendir_walk(rootfd, rel, len, create, op);
    }
    memcpy(buf, rel + skip, len - skip);
    buf[len - skip] = '\0';
    fd = open_beneath(rootfd, buf, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        return fd;
    }
    if (errno == ENOSYS || (errno == ENOENT && create)) {
        return agent_path_opendir_walk(rootfd, rel, len, create, op);
    }
    return under_fail(-1, errno, "open directory", op);
}

/* The parent of @rel under @rootfd (walked without following a link) into *@dfd (@rootfd
 * itself when @rel has no parent: not to be closed then), and @rel's last component. NULL with
 * errno set on failure. */
static const char *under_parent(int rootfd, const char *rel, int *dfd)
{
    const char *slash = strrchr(rel, '/');

    *dfd = rootfd;
    if (slash == NULL) {
        return rel;
    }
    *dfd = agent_path_opendir_under(rootfd, rel, (size_t)(slash - rel), false, NULL);
    return *dfd < 0 ? NULL : slash + 1;
}

int agent_path_open_under(int rootfd, const char *rel, int oflags)
{
    int dfd, fd = -1, e;
    const char *base = under_parent(rootfd, rel, &dfd);

    if (base == NULL) {
        return -1;
    }
    /* The mode is what O_CREAT (or O_TMPFILE) makes a file with, less the umask, as creat(2)
     * would: without it openat read one from whatever the register held (the fuzz target's
     * files came out 0004). */
    fd = openat(dfd, base, oflags | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC, 0666);
    e = errno;
    if (dfd != rootfd) {
        (void)close(dfd);
    }
    errno = e;
    return fd;
}

/* Without /proc: open @name itself, O_NONBLOCK so that even a FIFO swapped in since the O_PATH
 * check cannot make the open wait, and keep it only if it is (still) a regular file. */
static int open_file_direct(int dfd, const char *name, bool follow, struct stat *st)
{
    int fd = agent_path_open(
        dfd, name, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC | (follow ? 0 : O_NOFOLLOW), 0);
    int e;

    if (fd < 0) {
        return -1;
    }
    if (fstat(fd, st) == 0 && S_ISREG(st->st_mode)) {
        return fd;
    }
    e = S_ISREG(st->st_mode) ? errno : EINVAL;
    (void)close(fd); /* opened read-only, nothing read */
    errno = e;
    return -1;
}

int agent_path_open_file_at(int dfd, const char *name, bool follow, struct stat *st)
{
    char proc[40];
    int pin, fd, e;

    st->st_mode = 0;
    pin = agent_path_open(dfd, name, O_PATH | O_CLOEXEC | (follow ? 0 : O_NOFOLLOW), 0);
    if (pin < 0) {
        return -1;
    }
    if (fstat(pin, st) < 0) {
        e = errno;
        st->st_mode = 0;
        (void)close(pin); /* an O_PATH fd: nothing to report */
        errno = e;
        return -1;
    }
    if (!S_ISREG(st->st_mode)) {
        (void)close(pin);
        errno = EINVAL;
        return -1;
    }
    /* The magic link reaches exactly the pinned inode, whatever @name names by now. */
    (void)snprintf(proc, sizeof(proc), "/proc/self/fd/%d", pin);
    fd = open(proc, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
        fd = open_file_direct(dfd, name, follow, st);
    }
    e = errno;
    (void)close(pin);
    errno = e;
    return fd;
}

int agent_path_open_file_under(int rootfd, const char *rel, struct stat *st)
{
    int dfd, fd = -1, e;
    const char *base = under_parent(rootfd, rel, &dfd);

    st->st_mode = 0;
    if (base == NULL) {
        return -1;
    }
    fd = agent_path_open_file_at(dfd, base, false, st);
    e = errno;
    if (dfd != rootfd) {
        (void)close(dfd);
    }
    errno = e;
    return fd;
}

struct dirent *agent_path_readdir(DIR *d)
{
    struct dirent *de;

    do {
        errno = 0;
        de = readdir(d);
    } while (de != NULL && (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0));
    return de;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int agent_path_list(int fd, const char *path, char ***out, size_t *n, struct sbx_err *err)
{
    int dfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    struct dirent *de;
    char **v = NULL;
    size_t len = 0, cap = 0;
    int e = 0;

    if (d == NULL) {
        e = errno;
        if (dfd >= 0) {
            (void)close(dfd);
        }
        return agent_fs_err(err, e, "read directory", path);
    }
    rewinddir(d); /* the duplicate shares @fd's offset */
    while ((de = agent_path_readdir(d)) != NULL) {
        if (len + 1 >= cap) {
            size_t ncap = cap != 0 ? cap * 2 : 64;
            char **nv = realloc(v, ncap * sizeof(*v));
            if (nv == NULL) {
                e = ENOMEM;
                break;
            }
            v = nv;
            cap = ncap;
        }
        v[len] = strdup(de->d_name);
        if (v[len] == NULL) {
            e = ENOMEM;
            break;
        }
        v[++len] = NULL;
    }
    if (e == 0) {
        e = errno; /* 0 at the end of the directory */
    }
    (void)closedir(d);
    if (e != 0) {
        agent_strv_free(v);
        return agent_fs_err(err, e, "read directory", path);
    }
    if (v == NULL && (v = calloc(1, sizeof(*v))) == NULL) {
        return agent_fs_err(err, ENOMEM, "read directory", path);
    }
    qsort(v, len, sizeof(*v), name_cmp);
    *out = v;
    *n = len;
    return 0;
}
