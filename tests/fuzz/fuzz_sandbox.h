/*
 * A private mount namespace for fuzz targets that write files (the agent's extraction and
 * create paths, which run as root in a guest). On entry every mount is made read-only, except:
 * the directories libFuzzer writes (corpus directories and artifact prefixes from its command
 * line), the directory of $LLVM_PROFILE_FILE (coverage builds) and a fresh tmpfs over /dev/shm,
 * where the target makes its scratch trees. A bug that lets a hostile name escape its root then
 * fails with EROFS instead of writing to this machine.
 *
 * Call fuzz_sandbox_enter(argc, argv) from LLVMFuzzerInitialize, and fuzz_sandbox_enter(0, NULL)
 * at the top of LLVMFuzzerTestOneInput too (the replay driver has no Initialize: the first call
 * wins). As root the namespace is a plain one; otherwise a user namespace maps the caller to
 * root in it. It exits the process with a message when the namespace cannot be made: a target
 * that writes must not run outside it.
 */
#ifndef SBX_FUZZ_SANDBOX_H
#define SBX_FUZZ_SANDBOX_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
#ifndef MOUNT_ATTR_RDONLY
#define MOUNT_ATTR_RDONLY 0x00000001
#endif

/* The tmpfs where targets make their scratch trees. */
#define FUZZ_SANDBOX_SCRATCH "/dev/shm"

struct fuzz_mount_attr {
    unsigned long long attr_set, attr_clr, propagation, userns_fd;
};

static void fuzz_sandbox_die(const char *what, const char *path)
{
    (void)fprintf(stderr, "fuzz_sandbox: %s%s%s: %s\n", what, path ? " " : "", path ? path : "",
                  strerror(errno));
    _exit(1);
}

static void fuzz_sandbox_write(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);

    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text)) {
        fuzz_sandbox_die("write", path);
    }
    close(fd);
}

/* The directory a libFuzzer flag writes into, if @arg is one (-artifact_prefix=DIR/x-). */
static int fuzz_sandbox_flag_dir(const char *arg, char *dir, size_t dirsz)
{
    static const char *const flags[] = { "-artifact_prefix=", "-exact_artifact_path=",
                                         "-merge_control_file=", "-features_dir=" };

    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
        size_t n = strlen(flags[i]);
        if (strncmp(arg, flags[i], n) == 0) {
            const char *p = arg + n, *slash = strrchr(p, '/');
            if (slash == NULL) {
                (void)snprintf(dir, dirsz, ".");
            } else {
                (void)snprintf(dir, dirsz, "%.*s", (int)(slash - p), p);
            }
            return dir[0] != '\0';
        }
    }
    return 0;
}

/* Bind @dir onto itself (a mount of its own, so it can stay writable); remember it. */
static void fuzz_sandbox_keep(const char *dir, char kept[][4096], int *nkept, int max)
{
    struct stat st;

    if (*nkept >= max || stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        return;
    }
    if (realpath(dir, kept[*nkept]) == NULL) {
        return;
    }
    if (mount(kept[*nkept], kept[*nkept], NULL, MS_BIND | MS_REC, NULL) != 0) {
        fuzz_sandbox_die("bind", kept[*nkept]);
    }
    (*nkept)++;
}

static void fuzz_sandbox_enter(int argc, char **argv)
{
    static int entered;
    static char kept[16][4096];
    int nkept = 0;
    struct fuzz_mount_attr ro = { .attr_set = MOUNT_ATTR_RDONLY };
    uid_t uid = geteuid();
    gid_t gid = getegid();

    if (entered) {
        return;
    }
    entered = 1;
    if (uid == 0) {
        if (unshare(CLONE_NEWNS) != 0) {
            fuzz_sandbox_die("unshare(CLONE_NEWNS)", NULL);
        }
    } else {
        char map[64];
        if (unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0) {
            fuzz_sandbox_die("unshare(CLONE_NEWUSER|CLONE_NEWNS)", NULL);
        }
        fuzz_sandbox_write("/proc/self/setgroups", "deny");
        (void)snprintf(map, sizeof(map), "0 %u 1", (unsigned)uid);
        fuzz_sandbox_write("/proc/self/uid_map", map);
        (void)snprintf(map, sizeof(map), "0 %u 1", (unsigned)gid);
        fuzz_sandbox_write("/proc/self/gid_map", map);
    }
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) {
        fuzz_sandbox_die("make private", "/");
    }
    /* Every mount read-only, in one call. */
    if (syscall(SYS_mount_setattr, -1, "/", AT_RECURSIVE, &ro, sizeof(ro)) != 0) {
        fuzz_sandbox_die("mount_setattr(read-only)", "/");
    }
    /* Then what libFuzzer writes: the directories on its command line and its flags' ones. Each
     * becomes a bind mount of its own (read-only, a copy), made writable again. */
    for (int i = 1; i < argc && argv != NULL; i++) {
        char dir[4096];
        if (argv[i][0] != '-') {
            fuzz_sandbox_keep(argv[i], kept, &nkept, 16);
        } else if (fuzz_sandbox_flag_dir(argv[i], dir, sizeof(dir))) {
            fuzz_sandbox_keep(dir, kept, &nkept, 16);
        }
    }
    /* A coverage build writes its profile at exit (tests/fuzz/coverage.sh). */
    if (getenv("LLVM_PROFILE_FILE") != NULL) {
        char dir[4096];
        const char *slash;
        (void)snprintf(dir, sizeof(dir), "%s", getenv("LLVM_PROFILE_FILE"));
        slash = strrchr(dir, '/');
        if (slash != NULL && slash != dir) {
            dir[slash - dir] = '\0';
            fuzz_sandbox_keep(dir, kept, &nkept, 16);
        }
    }
    for (int i = 0; i < nkept; i++) {
        if (mount(NULL, kept[i], NULL, MS_REMOUNT | MS_BIND, NULL) != 0) {
            fuzz_sandbox_die("make writable", kept[i]);
        }
    }
    if (mount("fuzz", FUZZ_SANDBOX_SCRATCH, "tmpfs", MS_NOSUID | MS_NODEV, "size=256m,mode=0755") !=
        0) {
        fuzz_sandbox_die("mount tmpfs on", FUZZ_SANDBOX_SCRATCH);
    }
}

/* Remove @name of @dfd and everything below it, never following a symlink; directories are made
 * 0700 first (an extracted tree may hold modes without w or x). -1 with errno set on failure,
 * with @what naming the step that failed. */
static int fuzz_scratch_remove(int dfd, const char *name, const char **what)
{
    struct stat st;

    if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        *what = "stat";
        return -1;
    }
    if (S_ISDIR(st.st_mode)) {
        int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        DIR *d;
        struct dirent *de;

        if (fd < 0 || fchmod(fd, 0700) < 0 || (d = fdopendir(fd)) == NULL) {
            if (fd >= 0) {
                close(fd);
            }
            *what = "open";
            return -1;
        }
        while ((de = readdir(d)) != NULL) {
            if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) {
                if (fuzz_scratch_remove(dirfd(d), de->d_name, what) < 0) {
                    closedir(d);
                    return -1;
                }
                rewinddir(d); /* read afresh: a listing need not survive removals under it */
            }
        }
        closedir(d);
    }
    if (unlinkat(dfd, name, S_ISDIR(st.st_mode) ? AT_REMOVEDIR : 0) < 0) {
        *what = "remove";
        return -1;
    }
    return 0;
}

/* The open descriptors of this process (a leak check around one input), or -1. */
static int fuzz_count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;

    if (d == NULL) {
        return -1;
    }
    while (readdir(d) != NULL) {
        n++;
    }
    closedir(d);
    return n;
}

#endif
