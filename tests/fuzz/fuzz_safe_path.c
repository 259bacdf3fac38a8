/*
 * libFuzzer target for the safe-path family (agent/path.c): the input is an options byte, a
 * relative path up to the first '\n', and an absolute path's tail for agent_path_split. The
 * relative path is cleaned (agent_path_clean_rel) and, when accepted, opened under the root of a
 * small scratch tree (made once under $TMPDIR, with symlinks that lead out of it, to "/", ".."
 * and a FIFO; only ever opened, never written) with agent_path_opendir_under, _walk,
 * agent_path_open_under and agent_path_open_file_under. Whatever opens must be inside the root
 * (its /proc/self/fd link starts with the root's path) and reached through no symlink, the walk
 * and openat2 must agree, and a path through a symlink must fail with ELOOP. The split of "/" +
 * the tail must give a parent and a last component that make the path again.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs.h"
#include "fuzz_workload_check.h"
#include "path.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* fs.c's, which the target does not link: path.c reports through it. */
int agent_fs_err(struct sbx_err *err, int errnum, const char *op, const char *path)
{
    sbx_err_sys(err, errnum, NULL, "%s \"%s\"", op, path);
    sbx_err_set_path(err, path);
    return -1;
}

static char root[256];
static int rootfd = -1;

/* The tree: d/ d/e/ d/e/f d/l2 -> ../.. d/p (FIFO) f l -> / u -> .. i -> d. */
static const char *const tree_dirs[] = { "d", "d/e" };
static const char *const tree_files[] = { "d/e/f", "f" };
static const char *const tree_links[][2] = {
    { "d/l2", "../.." }, { "l", "/" }, { "u", ".." }, { "i", "d" }, { "d/e/s", "f" },
};

static void tree_remove(void)
{
    char path[512];

    for (size_t i = 0; i < sizeof(tree_links) / sizeof(tree_links[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", root, tree_links[i][0]);
        (void)unlink(path);
    }
    for (size_t i = 0; i < sizeof(tree_files) / sizeof(tree_files[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", root, tree_files[i]);
        (void)unlink(path);
    }
    snprintf(path, sizeof(path), "%s/d/p", root);
    (void)unlink(path);
    for (size_t i = sizeof(tree_dirs) / sizeof(tree_dirs[0]); i-- > 0;) {
        snprintf(path, sizeof(path), "%s/%s", root, tree_dirs[i]);
        (void)rmdir(path);
    }
    (void)rmdir(root);
}

static void tree_make(void)
{
    const char *tmp = getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp";
    char path[512];

    snprintf(root, sizeof(root), "%s/sbx-fuzz-path.XXXXXX", tmp);
    if (mkdtemp(root) == NULL) {
        abort();
    }
    atexit(tree_remove);
    for (size_t i = 0; i < sizeof(tree_dirs) / sizeof(tree_dirs[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", root, tree_dirs[i]);
        if (mkdir(path, 0755) < 0) {
            abort();
        }
    }
    for (size_t i = 0; i < sizeof(tree_files) / sizeof(tree_files[0]); i++) {
        int fd;
        snprintf(path, sizeof(path), "%s/%s", root, tree_files[i]);
        if ((fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644)) < 0) {
            abort();
        }
        close(fd);
    }
    for (size_t i = 0; i < sizeof(tree_links) / sizeof(tree_links[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", root, tree_links[i][0]);
        if (symlink(tree_links[i][1], path) < 0) {
            abort();
        }
    }
    snprintf(path, sizeof(path), "%s/d/p", root);
    if (mkfifo(path, 0644) < 0 || (rootfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
        abort();
    }
}

/* The fd must be the root or below it; closes it. Returns its inode. */
static ino_t inside(int fd)
{
    char link[64], target[4096];
    size_t rl = strlen(root);
    struct stat st;
    ssize_t n;

    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    n = readlink(link, target, sizeof(target) - 1);
    if (n < 0 || fstat(fd, &st) < 0) {
        abort();
    }
    target[n] = '\0';
    if (strncmp(target, root, rl) != 0 || (target[rl] != '\0' && target[rl] != '/')) {
        fprintf(stderr, "escaped: %s\n", target);
        abort();
    }
    close(fd);
    return st.st_ino;
}

/* Whether some component of @rel (empty ones skipped) names one of the tree's symlinks, as the
 * path walked so far reaches it. */
static bool through_link(const char *rel, size_t len)
{
    char walked[AGENT_FS_PATH_BUF] = "";
    size_t w = 0;

    for (size_t i = 0; i < len;) {
        size_t n = 0;
        while (i < len && rel[i] == '/') {
            i++;
        }
        while (i + n < len && rel[i + n] != '/') {
            n++;
        }
        if (n == 0 || w + n + 2 >= sizeof(walked)) {
            break;
        }
        if (!(n == 1 && rel[i] == '.')) {
            w += (size_t)snprintf(walked + w, sizeof(walked) - w, "%s%.*s", w ? "/" : "", (int)n,
                                  rel + i);
            for (size_t k = 0; k < sizeof(tree_links) / sizeof(tree_links[0]); k++) {
                if (strcmp(walked, tree_links[k][0]) == 0) {
                    return true;
                }
            }
        }
        i += n;
    }
    return false;
}

static char rel[AGENT_FS_PATH_BUF], clean[AGENT_FS_PATH_BUF];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nl;
    size_t rlen, tlen;
    const char *why = NULL, *c;
    char path[AGENT_FS_PATH_BUF + 1], parent[AGENT_FS_PATH_BUF], base[AGENT_FS_PATH_BUF];
    int fd, fd2, e1, e2, opts;

    if (rootfd < 0) {
        tree_make();
    }
    if (size == 0) {
        return 0;
    }
    opts = data[0];
    data++;
    size--;
    nl = memchr(data, '\n', size);
    rlen = nl != NULL ? (size_t)(nl - data) : size;
    if (rlen >= sizeof(rel)) {
        return 0;
    }
    memcpy(rel, data, rlen);
    rel[rlen] = '\0'; /* a NUL inside ends the name, as a C string does */

    c = agent_path_clean_rel(rel, clean, (opts & 1) ? 16 : sizeof(clean), &why);
    fuzz_check_clean(rel, c, (opts & 1) ? 16 : sizeof(clean));
    if (c != NULL) {
        size_t len = strlen(c), cut = (opts >> 1) % 4 == 0 ? len : len * ((opts >> 1) % 4) / 4;

        /* Cut at a '/', as up_parent cuts: a part of a component is no name the caller checked. */
        while (cut > 0 && cut < len && c[cut] != '/') {
            cut--;
        }
        bool link = through_link(c, cut);

        /* Under the root, a prefix of it: up_parent opens a parent this way. */
        fd = agent_path_opendir_under(rootfd, c, cut, false, NULL);
        e1 = errno;
        fd2 = agent_path_opendir_walk(rootfd, c, cut, false, NULL);
        e2 = errno;
        if ((fd < 0) != (fd2 < 0) || (fd < 0 && (e1 == ELOOP) != (e2 == ELOOP))) {
            fprintf(stderr, "\"%.*s\": openat2 %d (%d), walk %d (%d)\n", (int)cut, c, fd, e1, fd2,
                    e2);
            abort();
        }
        if (fd >= 0 && (link || inside(fd) != inside(fd2))) {
            abort(); /* through a symlink, or the two reached different directories */
        }
        if (fd < 0 && link != (e1 == ELOOP) && e1 != ENOENT && e1 != ENOTDIR &&
            e1 != ENAMETOOLONG) {
            abort();
        }
        if (len > 0) {
            fd = agent_path_open_under(rootfd, c, O_RDONLY);
            if (fd >= 0) {
                (void)inside(fd);
            }
            {
                struct stat st;
                fd = agent_path_open_file_under(rootfd, c, &st);
                if (fd >= 0) {
                    if (!S_ISREG(st.st_mode)) {
                        abort();
                    }
                    (void)inside(fd);
                }
            }
        }
    }

    /* agent_path_split of "/" + the rest. */
    tlen = nl != NULL ? size - rlen - 1 : 0;
    if (tlen < sizeof(path) - 1) {
        int r;
        path[0] = '/';
        memcpy(path + 1, nl != NULL ? nl + 1 : data, tlen);
        path[tlen + 1] = '\0';
        r = agent_path_split(path, parent, (opts & 8) ? 8 : sizeof(parent), base,
                             (opts & 16) ? 8 : sizeof(base));
        if (r == 0) {
            size_t pl = strlen(parent), bl = strlen(base), n = strlen(path);
            while (n > 1 && path[n - 1] == '/') {
                n--;
            }
            if (parent[0] != '/' || bl == 0 || strchr(base, '/') != NULL ||
                strncmp(path, parent, pl) != 0 || memcmp(path + n - bl, base, bl) != 0) {
                abort();
            }
        } else if (r != -EINVAL && r != -ENAMETOOLONG) {
            abort();
        }
    }
    return 0;
}
