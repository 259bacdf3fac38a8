/*
 * Unit tests: agent/path.c, the path helpers fs, transfer, tree and pack share: split, mkdir -p,
 * open under a root without following a symlink in any component, readdir without the dot
 * entries. Each test works in a fresh temporary directory holding `root` (the tree under test)
 * and `outside` (where a planted symlink points: it must come out of every test untouched).
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "fs.h"
#include "path.h"
#include "strv.h"

/*
 * path.c reports errors through agent_fs_err, which lives in fs.c beside the FileInfo reply (and
 * so needs the connection code). A stand-in with fs.c's body keeps this test to path.c.
 */
int agent_fs_err(struct sbx_err *err, int errnum, const char *op, const char *path)
{
    sbx_err_sys(err, errnum, NULL, "%s \"%s\"", op, path);
    sbx_err_set_path(err, path);
    return -1;
}

struct fx {
    char base[64];      /* the temporary directory */
    char root[128];     /* base/root */
    char outside[128];  /* base/outside */
    int rootfd;         /* root, O_RDONLY | O_DIRECTORY */
    char **outside_was; /* outside's names at setup */
    struct sbx_err err;
};

/* "<dir>/<rel>" into a static buffer of @slot (two at a time are enough for one call). */
static const char *at(const char *dir, const char *rel, int slot)
{
    static char buf[4][PATH_MAX];

    snprintf(buf[slot], sizeof(buf[slot]), "%s/%s", dir, rel);
    return buf[slot];
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

static void read_file(const char *path, char *buf, size_t bufsz)
{
    FILE *f = fopen(path, "r");
    size_t n;

    assert_non_null(f);
    n = fread(buf, 1, bufsz - 1, f);
    buf[n] = '\0';
    assert_int_equal(fclose(f), 0);
}

static mode_t mode_of(const char *path)
{
    struct stat st;

    assert_int_equal(lstat(path, &st), 0);
    return st.st_mode;
}

static bool exists(const char *path)
{
    struct stat st;

    return lstat(path, &st) == 0;
}

/* The sorted names of directory @path (NULL-terminated; free with agent_strv_free). */
static char **names_of(const char *path, size_t *n)
{
    struct sbx_err err;
    char **v = NULL;
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

    assert_true(fd >= 0);
    assert_int_equal(agent_path_list(fd, path, &v, n, &err), 0);
    assert_int_equal(close(fd), 0);
    return v;
}

static int setup(void **state)
{
    struct fx *fx = calloc(1, sizeof(*fx));
    size_t n;

    if (fx == NULL) {
        return -1;
    }
    strcpy(fx->base, "/tmp/sbx-test-path-XXXXXX");
    if (mkdtemp(fx->base) == NULL) {
        free(fx);
        return -1;
    }
    snprintf(fx->root, sizeof(fx->root), "%s/root", fx->base);
    snprintf(fx->outside, sizeof(fx->outside), "%s/outside", fx->base);
    if (mkdir(fx->root, 0755) < 0 || mkdir(fx->outside, 0755) < 0) {
        return -1;
    }
    /* What a symlink in root leads to: a directory with a file, and the target of a dangling
     * link (outside/newdir, absent). */
    if (mkdir(at(fx->outside, "dir", 0), 0755) < 0) {
        return -1;
    }
    write_file(at(fx->outside, "secret", 0), "secret\n");
    if (symlink(fx->outside, at(fx->root, "link", 0)) < 0 ||
        symlink(at(fx->outside, "secret", 1), at(fx->root, "lsecret", 0)) < 0 ||
        symlink(at(fx->outside, "newdir", 1), at(fx->root, "dangle", 0)) < 0) {
        return -1;
    }
    fx->rootfd = open(fx->root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fx->rootfd < 0) {
        return -1;
    }
    fx->outside_was = names_of(fx->outside, &n);
    sbx_err_clear(&fx->err);
    *state = fx;
    return 0;
}

static int rm_cb(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    if (type == FTW_DP) {
        (void)chmod(path, 0700); /* a test may have left it read-only; rmdir reports it */
        return rmdir(path);
    }
    return unlink(path);
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    char secret[64];
    size_t n;
    char **now;
    int rc = 0;

    /* Nothing outside the root was touched: the same names, and the file as it was. */
    now = names_of(fx->outside, &n);
    for (size_t i = 0; now[i] != NULL || fx->outside_was[i] != NULL; i++) {
        if (now[i] == NULL || fx->outside_was[i] == NULL ||
            strcmp(now[i], fx->outside_was[i]) != 0) {
            print_error("outside/ changed: \"%s\" vs \"%s\"\n", now[i] ? now[i] : "(end)",
                        fx->outside_was[i] ? fx->outside_was[i] : "(end)");
            rc = -1;
            break;
        }
    }
    read_file(at(fx->outside, "secret", 0), secret, sizeof(secret));
    if (strcmp(secret, "secret\n") != 0) {
        print_error("outside/secret changed: \"%s\"\n", secret);
        rc = -1;
    }
    agent_strv_free(now);
    agent_strv_free(fx->outside_was);
    (void)close(fx->rootfd);
    if (nftw(fx->base, rm_cb, 16, FTW_DEPTH | FTW_PHYS) != 0) {
        rc = -1;
    }
    free(fx);
    return rc;
}

static bool cloexec(int fd)
{
    int fl = fcntl(fd, F_GETFD);

    return fl >= 0 && (fl & FD_CLOEXEC) != 0;
}

/* Whether @fd is the directory @path (same device and inode). */
static bool same_file(int fd, const char *path)
{
    struct stat a, b;

    assert_int_equal(fstat(fd, &a), 0);
    assert_int_equal(stat(path, &b), 0);
    return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

/* --- agent_path_split ---------------------------------------------------------------------- */

static void test_split(void **state)
{
    static const struct {
        const char *path;
        int rc;
        const char *parent, *base;
    } cs[] = {
        { "/a/b", 0, "/a", "b" },
        { "/a/b/", 0, "/a", "b" }, /* trailing slashes are ignored */
        { "/a/b///", 0, "/a", "b" },
        { "/a", 0, "/", "a" }, /* the parent of "/name" is "/" */
        { "/a/", 0, "/", "a" },
        { "//a", 0, "/", "a" },
        { "/a/b/c", 0, "/a/b", "c" },
        { "/.", 0, "/", "." }, /* "." and ".." are returned for the caller to judge */
        { "/..", 0, "/", ".." },
        { "/a/..", 0, "/a", ".." },
        { "/a/b/./", 0, "/a/b", "." },
        { "/", -EINVAL, NULL, NULL }, /* no last component */
        { "///", -EINVAL, NULL, NULL },
        { "", -EINVAL, NULL, NULL },
        { ".", -EINVAL, NULL, NULL }, /* not absolute: no '/' to split at */
        { "..", -EINVAL, NULL, NULL },
        { "name", -EINVAL, NULL, NULL },
    };
    char parent[64], base[64];

    (void)state;
    for (size_t i = 0; i < sizeof(cs) / sizeof(cs[0]); i++) {
        int rc = agent_path_split(cs[i].path, parent, sizeof(parent), base, sizeof(base));
        if (rc != cs[i].rc) {
            print_error("\"%s\": rc %d, want %d\n", cs[i].path, rc, cs[i].rc);
            fail();
        }
        if (rc == 0 && (strcmp(parent, cs[i].parent) != 0 || strcmp(base, cs[i].base) != 0)) {
            print_error("\"%s\": \"%s\" + \"%s\", want \"%s\" + \"%s\"\n", cs[i].path, parent, base,
                        cs[i].parent, cs[i].base);
            fail();
        }
    }
}

/* agent_path_clean_rel: what transfer.upload_tree makes of an entry name or link target. */
static void test_clean_rel(void **state)
{
    static const struct {
        const char *in, *out;
    } ok[] = {
        { "a/b", "a/b" }, { "./a/b/", "a/b" },  { ".//.//a", "a" },       { ".", "" },
        { "./", "" },     { "a/./b", "a/./b" }, { "..a/b..", "..a/b.." },
    };
    static const char *const bad[] = { "/a", "..", "a/..", "./../a", "a/../b", "a//..//" };
    char buf[16];
    const char *why = NULL;

    (void)state;
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        assert_non_null(agent_path_clean_rel(ok[i].in, buf, sizeof(buf), &why));
        assert_string_equal(buf, ok[i].out);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        why = NULL;
        assert_null(agent_path_clean_rel(bad[i], buf, sizeof(buf), &why));
        assert_non_null(why);
    }
    assert_null(agent_path_clean_rel(NULL, buf, sizeof(buf), &why));
    assert_null(agent_path_clean_rel("0123456789abcdef", buf, sizeof(buf), &why));
    assert_string_equal(why, "name too long");
}

static void test_split_too_long(void **state)
{
    char parent[4], base[3];

    (void)state;
    /* Exactly fitting (the NUL included) is fine; one byte more is not. */
    assert_int_equal(agent_path_split("/ab/cd", parent, 4, base, 3), 0);
    assert_string_equal(parent, "/ab");
    assert_string_equal(base, "cd");
    assert_int_equal(agent_path_split("/abc/cd", parent, 4, base, 3), -ENAMETOOLONG);
    assert_int_equal(agent_path_split("/ab/cde", parent, 4, base, 3), -ENAMETOOLONG);
    assert_int_equal(agent_path_split("/cde", parent, 4, base, 3), -ENAMETOOLONG);
    assert_int_equal(agent_path_split("/x", parent, 1, base, 3), -ENAMETOOLONG); /* "/" needs 2 */
}

/* --- agent_path_mkdir ---------------------------------------------------------------------- */

static void test_mkdir_parents(void **state)
{
    struct fx *fx = *state;

    /* The parents get @parents_mode, the last one @mode, both less the umask (022). */
    assert_int_equal(agent_path_mkdir(at(fx->root, "p/q/r", 0), 0700, 0777, &fx->err), 0);
    assert_true(S_ISDIR(mode_of(at(fx->root, "p", 0))));
    assert_int_equal(mode_of(at(fx->root, "p", 0)) & 07777, 0700);
    assert_int_equal(mode_of(at(fx->root, "p/q", 0)) & 07777, 0700);
    assert_int_equal(mode_of(at(fx->root, "p/q/r", 0)) & 07777, 0755);

    /* Trailing and doubled slashes are ignored. */
    assert_int_equal(agent_path_mkdir(at(fx->root, "t1/t2//", 0), 0755, 0750, &fx->err), 0);
    assert_int_equal(mode_of(at(fx->root, "t1/t2", 0)) & 07777, 0750);
    assert_int_equal(agent_path_mkdir(at(fx->root, "/d1//d2", 0), 0755, 0755, &fx->err), 0);
    assert_true(S_ISDIR(mode_of(at(fx->root, "d1/d2", 0))));
    assert_false(sbx_err_isset(&fx->err)); /* untouched on success */
}

static void test_mkdir_existing(void **state)
{
    struct fx *fx = *state;

    assert_int_equal(mkdir(at(fx->root, "e", 0), 0700), 0);
    assert_int_equal(agent_path_mkdir(at(fx->root, "e", 0), 0755, 0755, &fx->err), 0);
    assert_int_equal(mode_of(at(fx->root, "e", 0)) & 07777, 0700); /* left as it was */
    assert_int_equal(agent_path_mkdir(at(fx->root, "e/", 0), 0755, 0755, &fx->err), 0);
    assert_int_equal(agent_path_mkdir("/", 0755, 0755, &fx->err), 0);
    /* A symlink to a directory on the way, or as the path itself, is fine (mkdir(1) follows). */
    assert_int_equal(agent_path_mkdir(at(fx->root, "link/dir/sub", 0), 0755, 0755, &fx->err), 0);
    assert_true(S_ISDIR(mode_of(at(fx->outside, "dir/sub", 0))));
    assert_int_equal(rmdir(at(fx->outside, "dir/sub", 0)), 0); /* teardown checks outside/ */
    assert_int_equal(agent_path_mkdir(at(fx->root, "link", 0), 0755, 0755, &fx->err), 0);
    assert_false(sbx_err_isset(&fx->err));
}

/* Expect agent_path_mkdir's error: @e for @path, "mkdir \"path\": ...". */
static void expect_mkdir_err(struct fx *fx, int e, const char *path)
{
    char msg[PATH_MAX + 16];

    assert_string_equal(fx->err.code, sbx_errno_name(e));
    assert_int_equal(fx->err.sys_errno, e);
    assert_string_equal(fx->err.path, path);
    snprintf(msg, sizeof(msg), "mkdir \"%s\": ", path);
    assert_memory_equal(fx->err.msg, msg, strlen(msg));
    sbx_err_clear(&fx->err);
}

static void test_mkdir_in_the_way(void **state)
{
    struct fx *fx = *state;
    char f[PATH_MAX];

    snprintf(f, sizeof(f), "%s", at(fx->root, "f", 0));
    write_file(f, "x");
    /* A file on the way: ENOTDIR naming it, and nothing made below. */
    assert_int_equal(agent_path_mkdir(at(fx->root, "f/x/y", 0), 0755, 0755, &fx->err), -1);
    expect_mkdir_err(fx, ENOTDIR, f);
    assert_true(S_ISREG(mode_of(f)));
    /* The path itself is a file: EEXIST. */
    assert_int_equal(agent_path_mkdir(f, 0755, 0755, &fx->err), -1);
    expect_mkdir_err(fx, EEXIST, f);
    assert_int_equal(agent_path_mkdir(at(fx->root, "f/", 0), 0755, 0755, &fx->err), -1);
    expect_mkdir_err(fx, EEXIST, f);
    /* ...or a symlink to a file. */
    assert_int_equal(agent_path_mkdir(at(fx->root, "lsecret", 0), 0755, 0755, &fx->err), -1);
    expect_mkdir_err(fx, EEXIST, at(fx->root, "lsecret", 1));
    assert_int_equal(agent_path_mkdir(at(fx->root, "lsecret/x", 0), 0755, 0755, &fx->err), -1);
    expect_mkdir_err(fx, ENOTDIR, at(fx->root, "lsecret", 1));
    /* A dangling symlink on the way: what stat says of it, ENOENT; its target is not made. */
    assert_int_equal(agent_path_mkdir(at(fx->root, "dangle/x", 0), 0755, 0755, &fx->err), -1);
    expect_mkdir_err(fx, ENOENT, at(fx->root, "dangle", 1));
}

static void test_mkdir_too_long(void **state)
{
    struct fx *fx = *state;
    char *p = malloc(AGENT_FS_PATH_BUF + 10);

    assert_non_null(p);
    memset(p, 'a', AGENT_FS_PATH_BUF + 9);
    p[0] = '/';
    p[AGENT_FS_PATH_BUF + 9] = '\0';
    assert_int_equal(agent_path_mkdir(p, 0755, 0755, &fx->err), -1);
    assert_string_equal(fx->err.code, "ENAMETOOLONG");
    free(p);
}

static void test_mkdir_eacces(void **state)
{
    struct fx *fx = *state;

    if (geteuid() == 0) {
        skip(); /* root is not refused */
    }
    assert_int_equal(mkdir(at(fx->root, "ro", 0), 0555), 0);
    assert_int_equal(agent_path_mkdir(at(fx->root, "ro/x/y", 0), 0755, 0755, &fx->err), -1);
    expect_mkdir_err(fx, EACCES, at(fx->root, "ro/x", 1));
}

/* --- agent_path_check_dir, agent_path_opendir, agent_path_opendir_at -------------------------- */

static void test_check_dir(void **state)
{
    struct fx *fx = *state;

    assert_int_equal(agent_path_check_dir(fx->root, "cd", &fx->err), 0);
    assert_int_equal(agent_path_check_dir(at(fx->root, "link", 0), "cd", &fx->err), 0);
    assert_false(sbx_err_isset(&fx->err));
    assert_int_equal(agent_path_check_dir(at(fx->root, "lsecret", 0), "cd", &fx->err), -1);
    assert_string_equal(fx->err.code, "ENOTDIR");
    assert_string_equal(fx->err.path, at(fx->root, "lsecret", 0));
    assert_memory_equal(fx->err.msg, "cd \"", 4);
    assert_int_equal(agent_path_check_dir(at(fx->root, "nope", 0), "cd", &fx->err), -1);
    assert_string_equal(fx->err.code, "ENOENT");
}

/* agent_path_pin, _pin_parent, _stat and _mkdir1: what they reach, and never a magic link on
 * the way (here this process's own /proc/self/fd link to the root). */
static void test_pin(void **state)
{
    struct fx *fx = *state;
    char base[PATH_MAX + 2], proc[AGENT_PATH_PROC_BUF], magic[64], expect[64], small[4];
    struct stat st;
    int fd, dfd;

    /* A symlink as the last component is followed, or pinned itself. */
    fd = agent_path_pin(at(fx->root, "lsecret", 0), true);
    assert_true(fd >= 0);
    assert_true(cloexec(fd));
    assert_true(same_file(fd, at(fx->outside, "secret", 0)));
    assert_int_equal(close(fd), 0);
    fd = agent_path_pin(at(fx->root, "lsecret", 0), false);
    assert_true(fd >= 0);
    assert_int_equal(fstat(fd, &st), 0);
    assert_true(S_ISLNK(st.st_mode));
    /* Its /proc name is the agent's own way back to that inode. */
    snprintf(expect, sizeof(expect), "/proc/self/fd/%d", fd);
    assert_string_equal(agent_path_proc(fd, proc), expect);
    assert_int_equal(close(fd), 0);
    assert_int_equal(agent_path_pin(at(fx->root, "nope", 0), true), -1);
    assert_int_equal(errno, ENOENT);

    /* A magic link on the way, or followed at the end, is ELOOP; looked at itself it is not. */
    snprintf(magic, sizeof(magic), "/proc/self/fd/%d/link", fx->rootfd);
    assert_int_equal(agent_path_pin(magic, true), -1);
    assert_int_equal(errno, ELOOP);
    snprintf(magic, sizeof(magic), "/proc/self/fd/%d", fx->rootfd);
    assert_int_equal(agent_path_pin(magic, true), -1);
    assert_int_equal(errno, ELOOP);
    fd = agent_path_pin(magic, false);
    assert_true(fd >= 0);
    assert_int_equal(close(fd), 0);
    assert_int_equal(agent_path_stat(magic, true, &st), -1);
    assert_int_equal(errno, ELOOP);
    snprintf(magic, sizeof(magic), "/proc/self/fd/%d/made", fx->rootfd);
    assert_int_equal(agent_path_pin_parent(magic, &dfd, base, sizeof(base)), -1);
    assert_int_equal(errno, ELOOP);
    assert_int_equal(agent_path_mkdir1(magic, 0755), -1);
    assert_int_equal(errno, ELOOP);
    assert_false(exists(at(fx->root, "made", 0)));

    /* The parent pinned, the last component apart with its trailing slash kept. */
    assert_int_equal(agent_path_pin_parent(at(fx->root, "link/dir/", 0), &dfd, base, sizeof(base)),
                     0);
    assert_string_equal(base, "dir/");
    assert_true(same_file(dfd, fx->outside)); /* a symlink among the parents is followed */
    assert_true(cloexec(dfd));
    assert_int_equal(close(dfd), 0);
    /* "/" has no parent: left whole, for AT_FDCWD. */
    assert_int_equal(agent_path_pin_parent("/", &dfd, base, sizeof(base)), 0);
    assert_int_equal(dfd, AT_FDCWD);
    assert_string_equal(base, "/");
    assert_int_equal(agent_path_pin_parent(at(fx->root, "long", 0), &dfd, small, sizeof(small)),
                     -1);
    assert_int_equal(errno, ENAMETOOLONG);
    assert_int_equal(agent_path_pin_parent(at(fx->root, "m/n", 0), &dfd, base, sizeof(base)), -1);
    assert_int_equal(errno, ENOENT);

    /* stat and lstat through the pin; one mkdir in the pinned parent. */
    assert_int_equal(agent_path_stat(at(fx->root, "link", 0), true, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(agent_path_stat(at(fx->root, "link", 0), false, &st), 0);
    assert_true(S_ISLNK(st.st_mode));
    assert_int_equal(agent_path_mkdir1(at(fx->root, "made/", 0), 0700), 0);
    assert_int_equal(mode_of(at(fx->root, "made", 0)) & 07777, 0700); /* less the umask, 022 */
    assert_int_equal(agent_path_mkdir1(at(fx->root, "made", 0), 0700), -1);
    assert_int_equal(errno, EEXIST);
}

static void test_opendir(void **state)
{
    struct fx *fx = *state;
    char msg[PATH_MAX + 32];
    int fd;

    fd = agent_path_opendir(fx->root, false, &fx->err);
    assert_true(fd >= 0);
    assert_true(cloexec(fd));
    assert_true(same_file(fd, fx->root));
    assert_int_equal(close(fd), 0);

    assert_int_equal(agent_path_opendir(at(fx->root, "m/n", 0), false, &fx->err), -1);
    assert_string_equal(fx->err.code, "ENOENT");
    assert_string_equal(fx->err.path, at(fx->root, "m/n", 0));
    snprintf(msg, sizeof(msg), "open directory \"%s\": ", at(fx->root, "m/n", 0));
    assert_memory_equal(fx->err.msg, msg, strlen(msg));
    assert_false(exists(at(fx->root, "m", 0)));
    sbx_err_clear(&fx->err);

    /* With @create it is made, and its parents, 0755 less the umask. */
    fd = agent_path_opendir(at(fx->root, "m/n", 0), true, &fx->err);
    assert_true(fd >= 0);
    assert_true(same_file(fd, at(fx->root, "m/n", 0)));
    assert_int_equal(mode_of(at(fx->root, "m", 0)) & 07777, 0755);
    assert_int_equal(mode_of(at(fx->root, "m/n", 0)) & 07777, 0755);
    assert_int_equal(close(fd), 0);
    assert_false(sbx_err_isset(&fx->err));

    /* Not a directory: even @create does not replace it. */
    assert_int_equal(agent_path_opendir(at(fx->root, "lsecret", 0), true, &fx->err), -1);
    assert_string_equal(fx->err.code, "ENOTDIR");
}

static void test_opendir_at(void **state)
{
    struct fx *fx = *state;
    int fd;

    assert_int_equal(mkdir(at(fx->root, "d", 0), 0755), 0);
    fd = agent_path_opendir_at(fx->rootfd, "d");
    assert_true(fd >= 0);
    assert_true(cloexec(fd));
    assert_true(same_file(fd, at(fx->root, "d", 0)));
    assert_int_equal(close(fd), 0);
    /* A symlink to a directory is not followed: ELOOP or ENOTDIR, whichever the kernel says. */
    errno = 0;
    assert_int_equal(agent_path_opendir_at(fx->rootfd, "link"), -1);
    assert_true(errno == ELOOP || errno == ENOTDIR);
    assert_int_equal(agent_path_opendir_at(fx->rootfd, "nope"), -1);
    assert_int_equal(errno, ENOENT);
}

/* --- agent_path_opendir_under -------------------------------------------------------------- */

static void test_opendir_under(void **state)
{
    struct fx *fx = *state;
    const char *op = "untouched";
    int fd;

    assert_int_equal(agent_path_mkdir(at(fx->root, "a/b/c", 0), 0755, 0755, &fx->err), 0);
    fd = agent_path_opendir_under(fx->rootfd, "a/b", 3, false, &op);
    assert_true(fd >= 0);
    assert_true(cloexec(fd));
    assert_true(same_file(fd, at(fx->root, "a/b", 0)));
    assert_int_equal(close(fd), 0);
    /* Only the first @len bytes count. */
    fd = agent_path_opendir_under(fx->rootfd, "a/b/c", 3, false, &op);
    assert_true(same_file(fd, at(fx->root, "a/b", 0)));
    assert_int_equal(close(fd), 0);
    /* Empty components are skipped. */
    fd = agent_path_opendir_under(fx->rootfd, "/a//b/c/", 8, false, &op);
    assert_true(same_file(fd, at(fx->root, "a/b/c", 0)));
    assert_int_equal(close(fd), 0);
    /* No component: a duplicate of the root, a new fd. */
    static const char *const none[] = { "", "/", "///" };
    for (size_t i = 0; i < 3; i++) {
        fd = agent_path_opendir_under(fx->rootfd, none[i], strlen(none[i]), false, &op);
        assert_true(fd >= 0);
        assert_int_not_equal(fd, fx->rootfd);
        assert_true(cloexec(fd));
        assert_true(same_file(fd, fx->root));
        assert_int_equal(close(fd), 0);
    }
    assert_string_equal(op, "untouched");
    /* Missing, without @create. */
    assert_int_equal(agent_path_opendir_under(fx->rootfd, "a/x/y", 5, false, &op), -1);
    assert_int_equal(errno, ENOENT);
    assert_string_equal(op, "open directory");
    assert_false(exists(at(fx->root, "a/x", 0)));
    /* A file on the way. */
    write_file(at(fx->root, "a/f", 0), "x");
    op = NULL;
    assert_int_equal(agent_path_opendir_under(fx->rootfd, "a/f/y", 5, true, &op), -1);
    assert_int_equal(errno, ENOTDIR);
    assert_string_equal(op, "open directory");
    /* A component longer than NAME_MAX. */
    char name[NAME_MAX + 3];
    memset(name, 'n', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    assert_int_equal(agent_path_opendir_under(fx->rootfd, name, strlen(name), true, NULL), -1);
    assert_int_equal(errno, ENAMETOOLONG);
}

static void test_opendir_under_create(void **state)
{
    struct fx *fx = *state;
    const char *op = "untouched";
    int fd;

    fd = agent_path_opendir_under(fx->rootfd, "n1/n2/n3", 8, true, &op);
    assert_true(fd >= 0);
    assert_true(same_file(fd, at(fx->root, "n1/n2/n3", 0)));
    assert_int_equal(mode_of(at(fx->root, "n1", 0)) & 07777, AGENT_PATH_MKDIR_MODE & ~022);
    assert_int_equal(mode_of(at(fx->root, "n1/n2/n3", 0)) & 07777, AGENT_PATH_MKDIR_MODE & ~022);
    assert_int_equal(close(fd), 0);
    /* Again: everything exists. */
    fd = agent_path_opendir_under(fx->rootfd, "n1/n2/n3", 8, true, &op);
    assert_true(fd >= 0);
    assert_int_equal(close(fd), 0);
    assert_string_equal(op, "untouched");
}

static void test_opendir_under_eacces(void **state)
{
    struct fx *fx = *state;
    const char *op = NULL;

    if (geteuid() == 0) {
        skip(); /* root is not refused */
    }
    assert_int_equal(mkdir(at(fx->root, "ro", 0), 0555), 0);
    assert_int_equal(agent_path_opendir_under(fx->rootfd, "ro/x", 4, true, &op), -1);
    assert_int_equal(errno, EACCES);
    assert_string_equal(op, "mkdir");
}

typedef int (*opendir_fn)(int rootfd, const char *rel, size_t len, bool create, const char **op);

/* A symlink in any component is refused by @fn with ELOOP, with or without @create, and nothing
 * is made through it (teardown checks that outside/ is as it was). */
static void check_symlinks_refused(struct fx *fx, opendir_fn fn, const char *what)
{
    static const char *const rels[] = {
        "link",        /* the last component, to a directory outside */
        "link/dir",    /* the first of two */
        "link/newsub", /* would be made outside with @create */
        "dangle",      /* dangling: its target would be made with @create */
        "dangle/x",    /* ditto */
        "a/in",        /* a link that stays inside the root is refused all the same */
        "a/in/a",      /* ditto */
        "lsecret",     /* a symlink to a file */
    };

    assert_int_equal(mkdir(at(fx->root, "a", 0), 0755), 0);
    assert_int_equal(symlink(fx->root, at(fx->root, "a/in", 0)), 0);
    for (size_t i = 0; i < sizeof(rels) / sizeof(rels[0]); i++) {
        for (int create = 0; create < 2; create++) {
            const char *op = NULL;
            int fd;
            errno = 0;
            fd = fn(fx->rootfd, rels[i], strlen(rels[i]), create, &op);
            if (fd >= 0 || errno != ELOOP) {
                print_error("%s \"%s\" (create %d): fd %d, errno %d (%s)\n", what, rels[i], create,
                            fd, errno, strerror(errno));
                fail();
            }
            assert_string_equal(op, "open directory");
        }
    }
    assert_false(exists(at(fx->outside, "newdir", 0)));
    assert_false(exists(at(fx->outside, "newsub", 0)));
}

static void test_opendir_under_symlinks(void **state)
{
    check_symlinks_refused(*state, agent_path_opendir_under, "under");
}

/* The same refusals from the walk agent_path_opendir_under falls back to where the kernel has no
 * openat2 (before Linux 5.6, or a filter refuses it); and what it opens is what the fast way
 * opens. */
static void test_opendir_walk_symlinks(void **state)
{
    struct fx *fx = *state;
    int fd;

    check_symlinks_refused(fx, agent_path_opendir_walk, "walk");
    assert_int_equal(agent_path_mkdir(at(fx->root, "a/b", 0), 0755, 0755, &fx->err), 0);
    fd = agent_path_opendir_walk(fx->rootfd, "/a//b/", 6, false, NULL);
    assert_true(fd >= 0);
    assert_true(cloexec(fd));
    assert_true(same_file(fd, at(fx->root, "a/b", 0)));
    assert_int_equal(close(fd), 0);
}

/* With openat2, a ".." that would leave the root is refused (EXDEV) whatever follows it; one that
 * stays inside is fine. */
static void test_opendir_under_beneath(void **state)
{
    struct fx *fx = *state;
    const char *op = NULL;
    int fd;

    assert_int_equal(agent_path_mkdir(at(fx->root, "a/b", 0), 0755, 0755, &fx->err), 0);
    fd = agent_path_opendir_under(fx->rootfd, "a/b/..", 6, false, &op);
    assert_true(fd >= 0);
    assert_true(same_file(fd, at(fx->root, "a", 0)));
    assert_int_equal(close(fd), 0);
    errno = 0;
    fd = agent_path_opendir_under(fx->rootfd, "a/../../outside/dir", 19, false, &op);
    if (fd >= 0) {
        (void)close(fd);
        skip(); /* no openat2 here: the walk leaves ".." to its callers, who refuse it */
    }
    assert_int_equal(errno, EXDEV);
    assert_string_equal(op, "open directory");
}

/* --- agent_path_open_under ----------------------------------------------------------------- */

static void test_open_under(void **state)
{
    struct fx *fx = *state;
    char buf[32];
    ssize_t n;
    int fd;

    assert_int_equal(agent_path_mkdir(at(fx->root, "a/b", 0), 0755, 0755, &fx->err), 0);
    write_file(at(fx->root, "a/b/file", 0), "hello");
    write_file(at(fx->root, "top", 0), "top");
    fd = agent_path_open_under(fx->rootfd, "a/b/file", O_RDONLY);
    assert_true(fd >= 0);
    assert_true(cloexec(fd));
    n = read(fd, buf, sizeof(buf));
    assert_int_equal(n, 5);
    assert_memory_equal(buf, "hello", 5);
    assert_int_equal(close(fd), 0);
    fd = agent_path_open_under(fx->rootfd, "top", O_RDONLY);
    assert_true(same_file(fd, at(fx->root, "top", 0)));
    assert_int_equal(close(fd), 0);
    fd = agent_path_open_under(fx->rootfd, "/a//b/file", O_RDONLY);
    assert_true(same_file(fd, at(fx->root, "a/b/file", 0)));
    assert_int_equal(close(fd), 0);
    /* A directory opens too (the flags are the caller's). */
    fd = agent_path_open_under(fx->rootfd, "a/b", O_RDONLY | O_DIRECTORY);
    assert_true(same_file(fd, at(fx->root, "a/b", 0)));
    assert_int_equal(close(fd), 0);

    assert_int_equal(agent_path_open_under(fx->rootfd, "a/nope", O_RDONLY), -1);
    assert_int_equal(errno, ENOENT);
    assert_int_equal(agent_path_open_under(fx->rootfd, "top/x", O_RDONLY), -1);
    assert_int_equal(errno, ENOTDIR);
    /* The root fd is never closed on the way. */
    assert_true(fcntl(fx->rootfd, F_GETFD) >= 0);
}

/* A symlink as a parent or as the file itself: ELOOP, and the file behind it (outside/secret,
 * checked in teardown) is neither truncated nor written. */
static void test_open_under_symlinks(void **state)
{
    struct fx *fx = *state;
    static const char *const rels[] = {
        "link/secret", /* a parent */
        "lsecret",     /* the last component */
        "a/link2/secret",
        "dangle",
    };
    static const int flags[] = { O_RDONLY, O_WRONLY | O_TRUNC, O_RDWR | O_APPEND };

    assert_int_equal(mkdir(at(fx->root, "a", 0), 0755), 0);
    assert_int_equal(symlink(fx->outside, at(fx->root, "a/link2", 0)), 0);
    for (size_t i = 0; i < sizeof(rels) / sizeof(rels[0]); i++) {
        for (size_t k = 0; k < sizeof(flags) / sizeof(flags[0]); k++) {
            int fd;
            errno = 0;
            fd = agent_path_open_under(fx->rootfd, rels[i], flags[k]);
            if (fd >= 0) {
                /* What a caller would do with it: teardown would see it in outside/secret. */
                ssize_t w = write(fd, "pwned", 5);
                (void)w;
                (void)close(fd);
            }
            if (fd >= 0 || errno != ELOOP) {
                print_error("\"%s\" (flags %#x): fd %d, errno %d (%s)\n", rels[i], flags[k], fd,
                            errno, strerror(errno));
                fail();
            }
        }
    }
}

/* --- agent_path_open_file_at, agent_path_open_file_under ----------------------------------- */

/* Nothing but a regular file is opened: a FIFO (none of these opens waits for a writer), a
 * device, a directory or a symlink is EINVAL with *st saying what it is. */
static void test_open_file(void **state)
{
    struct fx *fx = *state;
    struct stat st;
    char buf[32];
    int fd;

    write_file(at(fx->root, "file", 0), "hello");
    assert_int_equal(mkfifo(at(fx->root, "fifo", 0), 0644), 0);
    assert_int_equal(mkdir(at(fx->root, "dir", 0), 0755), 0);

    fd = agent_path_open_file_at(fx->rootfd, "file", false, &st);
    assert_true(fd >= 0);
    assert_true(S_ISREG(st.st_mode));
    assert_int_equal(st.st_size, 5);
    assert_true(cloexec(fd));
    assert_true(fcntl(fd, F_GETFL) & O_NONBLOCK);
    assert_int_equal((fcntl(fd, F_GETFL) & O_ACCMODE), O_RDONLY);
    assert_int_equal(read(fd, buf, sizeof(buf)), 5);
    assert_memory_equal(buf, "hello", 5);
    assert_int_equal(close(fd), 0);
    /* An absolute path with AT_FDCWD; a symlink to a regular file only when followed. */
    fd = agent_path_open_file_at(AT_FDCWD, at(fx->root, "lsecret", 0), true, &st);
    assert_true(same_file(fd, at(fx->outside, "secret", 0)));
    assert_int_equal(close(fd), 0);

    static const struct {
        const char *name;
        mode_t type;
    } refused[] = {
        { "fifo", S_IFIFO }, { "dir", S_IFDIR }, { "lsecret", S_IFLNK }, { "link", S_IFLNK }
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        errno = 0;
        assert_int_equal(agent_path_open_file_at(fx->rootfd, refused[i].name, false, &st), -1);
        assert_int_equal(errno, EINVAL);
        assert_int_equal(st.st_mode & S_IFMT, refused[i].type);
    }
    assert_int_equal(agent_path_open_file_at(AT_FDCWD, "/dev/null", true, &st), -1);
    assert_int_equal(errno, EINVAL);
    assert_true(S_ISCHR(st.st_mode));
    /* A FIFO with a writer is refused the same way (never opened, so never read). */
    fd = open(at(fx->root, "fifo", 0), O_RDWR | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(agent_path_open_file_at(fx->rootfd, "fifo", true, &st), -1);
    assert_int_equal(errno, EINVAL);
    assert_int_equal(close(fd), 0);
    /* Other failures leave st_mode 0. */
    assert_int_equal(agent_path_open_file_at(fx->rootfd, "nope", false, &st), -1);
    assert_int_equal(errno, ENOENT);
    assert_int_equal(st.st_mode, 0);
}

static void test_open_file_under(void **state)
{
    struct fx *fx = *state;
    struct stat st;
    int fd;

    assert_int_equal(agent_path_mkdir(at(fx->root, "a/b", 0), 0755, 0755, &fx->err), 0);
    write_file(at(fx->root, "a/b/file", 0), "hello");
    assert_int_equal(mkfifo(at(fx->root, "a/fifo", 0), 0644), 0);
    fd = agent_path_open_file_under(fx->rootfd, "a/b/file", &st);
    assert_true(same_file(fd, at(fx->root, "a/b/file", 0)));
    assert_true(S_ISREG(st.st_mode));
    assert_int_equal(close(fd), 0);
    assert_int_equal(agent_path_open_file_under(fx->rootfd, "a/fifo", &st), -1);
    assert_int_equal(errno, EINVAL);
    assert_true(S_ISFIFO(st.st_mode));
    /* A symlink: as a parent ELOOP, as the file itself not a regular file. */
    assert_int_equal(agent_path_open_file_under(fx->rootfd, "link/secret", &st), -1);
    assert_int_equal(errno, ELOOP);
    assert_int_equal(st.st_mode, 0);
    assert_int_equal(agent_path_open_file_under(fx->rootfd, "lsecret", &st), -1);
    assert_int_equal(errno, EINVAL);
    assert_true(S_ISLNK(st.st_mode));
    assert_true(fcntl(fx->rootfd, F_GETFD) >= 0);
}

/* --- agent_path_readdir, agent_path_list -------------------------------------------------- */

static void test_readdir(void **state)
{
    struct fx *fx = *state;
    struct dirent *de;
    int names = 0, seen = 0;
    DIR *d;

    assert_int_equal(mkdir(at(fx->root, "r", 0), 0755), 0);
    write_file(at(fx->root, "r/a", 0), "");
    write_file(at(fx->root, "r/.h", 0), "");
    assert_int_equal(mkdir(at(fx->root, "r/d", 0), 0755), 0);
    d = opendir(at(fx->root, "r", 0));
    assert_non_null(d);
    while ((de = agent_path_readdir(d)) != NULL) {
        names++;
        assert_string_not_equal(de->d_name, ".");
        assert_string_not_equal(de->d_name, "..");
        seen |= strcmp(de->d_name, "a") == 0 ? 1 : strcmp(de->d_name, ".h") == 0 ? 2 : 4;
    }
    assert_int_equal(errno, 0); /* the end, not an error */
    assert_int_equal(names, 3);
    assert_int_equal(seen, 7);
    assert_null(agent_path_readdir(d)); /* and it stays at the end */
    assert_int_equal(errno, 0);
    assert_int_equal(closedir(d), 0);

    /* An empty directory has nothing but the dot entries. */
    d = opendir(at(fx->root, "r/d", 0));
    assert_non_null(d);
    assert_null(agent_path_readdir(d));
    assert_int_equal(errno, 0);
    assert_int_equal(closedir(d), 0);
}

static void test_list(void **state)
{
    struct fx *fx = *state;
    static const char *const want[] = { "-x", ".h", "A", "a", "b" }; /* strcmp order */
    char dir[PATH_MAX];
    char **v = NULL;
    size_t n = 99;
    int fd;

    snprintf(dir, sizeof(dir), "%s", at(fx->root, "l", 0));
    assert_int_equal(mkdir(dir, 0755), 0);
    write_file(at(dir, "b", 0), "");
    write_file(at(dir, "A", 0), "");
    write_file(at(dir, ".h", 0), "");
    write_file(at(dir, "-x", 0), "");
    assert_int_equal(mkdir(at(dir, "a", 0), 0755), 0);
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    assert_true(fd >= 0);
    /* Twice: the second listing starts from the start again. */
    for (int round = 0; round < 2; round++) {
        assert_int_equal(agent_path_list(fd, dir, &v, &n, &fx->err), 0);
        assert_int_equal(n, 5);
        for (size_t i = 0; i < 5; i++) {
            assert_string_equal(v[i], want[i]);
        }
        assert_null(v[5]);
        agent_strv_free(v);
    }
    /* @fd is still open and usable for *at calls. */
    assert_int_equal(faccessat(fd, "a", F_OK, 0), 0);
    assert_int_equal(close(fd), 0);

    /* Empty: a vector holding only the NULL. */
    fd = open(at(dir, "a", 0), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(agent_path_list(fd, dir, &v, &n, &fx->err), 0);
    assert_int_equal(n, 0);
    assert_non_null(v);
    assert_null(v[0]);
    agent_strv_free(v);
    assert_int_equal(close(fd), 0);
    assert_false(sbx_err_isset(&fx->err));
}

static void test_list_many(void **state)
{
    struct fx *fx = *state;
    char dir[PATH_MAX], name[16];
    char **v = NULL;
    size_t n = 0;
    int fd;

    snprintf(dir, sizeof(dir), "%s", at(fx->root, "many", 0));
    assert_int_equal(mkdir(dir, 0755), 0);
    for (int i = 299; i >= 0; i--) { /* more than the vector's first allocation */
        snprintf(name, sizeof(name), "e%03d", i);
        write_file(at(dir, name, 0), "");
    }
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(agent_path_list(fd, dir, &v, &n, &fx->err), 0);
    assert_int_equal(n, 300);
    for (int i = 0; i < 300; i++) {
        snprintf(name, sizeof(name), "e%03d", i);
        assert_string_equal(v[i], name);
    }
    assert_null(v[300]);
    agent_strv_free(v);
    assert_int_equal(close(fd), 0);
}

static void test_list_errors(void **state)
{
    struct fx *fx = *state;
    char msg[PATH_MAX + 32];
    char **v = NULL;
    size_t n = 0;
    int fd;

    write_file(at(fx->root, "file", 0), "x");
    fd = open(at(fx->root, "file", 0), O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(agent_path_list(fd, "the/file", &v, &n, &fx->err), -1);
    assert_string_equal(fx->err.code, "ENOTDIR");
    assert_string_equal(fx->err.path, "the/file");
    snprintf(msg, sizeof(msg), "read directory \"the/file\": ");
    assert_memory_equal(fx->err.msg, msg, strlen(msg));
    assert_null(v);
    assert_true(fcntl(fd, F_GETFD) >= 0); /* @fd is left open */
    assert_int_equal(close(fd), 0);
    assert_int_equal(agent_path_list(-1, "bad", &v, &n, &fx->err), -1);
    assert_string_equal(fx->err.code, "EBADF");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split),
        cmocka_unit_test(test_split_too_long),
        cmocka_unit_test(test_clean_rel),
        cmocka_unit_test_setup_teardown(test_mkdir_parents, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mkdir_existing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mkdir_in_the_way, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mkdir_too_long, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mkdir_eacces, setup, teardown),
        cmocka_unit_test_setup_teardown(test_check_dir, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pin, setup, teardown),
        cmocka_unit_test_setup_teardown(test_opendir, setup, teardown),
        cmocka_unit_test_setup_teardown(test_opendir_at, setup, teardown),
        cmocka_unit_test_setup_teardown(test_opendir_under, setup, teardown),
        cmocka_unit_test_setup_teardown(test_opendir_under_create, setup, teardown),
        cmocka_unit_test_setup_teardown(test_opendir_under_eacces, setup, teardown),
        cmocka_unit_test_setup_teardown(test_opendir_under_symlinks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_opendir_walk_symlinks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_opendir_under_beneath, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_under, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_under_symlinks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_file_under, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readdir, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_many, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_errors, setup, teardown),
    };

    umask(022); /* the modes the tests expect */
    return cmocka_run_group_tests(tests, NULL, NULL);
}
