/*
 * libFuzzer target for the safe-path family (agent/path.c): the input is an options byte, a
 * relative path up to the first '\n', and an absolute path's tail for agent_path_split. The
 * relative path is cleaned (agent_path_clean_rel) and, when accepted, opened under a root.
 *
 * Options bit 7 clear, read-only mode: the root is that of a small scratch tree (made once, with
 * symlinks that lead out of it, to "/", ".." and a FIFO; only ever opened, never written) and the
 * path goes through agent_path_opendir_under, _walk, agent_path_open_under and
 * agent_path_open_file_under. Whatever opens must be inside the root (its /proc/self/fd link
 * starts with the root's path) and reached through no symlink, the walk and openat2 must agree,
 * and a path through a symlink must fail with ELOOP.
 *
 * Bit 7 set, create mode: two identical writable trees A and B are made for the input, beside a
 * canary file and a directory outside them, with symlinks leading out (to "/", to the canary and
 * the directory, relative and absolute), dangling ones (inside, and to a name outside that a
 * create through them would make), loops, and links inside. Bit 0 picks a directory or a file:
 * a directory is made with agent_path_opendir_under(create) in A and agent_path_opendir_walk
 * (create) in B (bit 1: of the path cut at a '/' halfway); a file with agent_path_open_under
 * (O_CREAT, bits 2-6: O_EXCL, O_TRUNC, O_DIRECTORY, the access mode) in A and openat2(2)
 * (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS, the same flags) in B, its parents
 * made first (bit 1) with agent_path_opendir_under / _walk(create). Checked: A and B succeed or
 * fail together with the same errno, and end up the same trees (names, types, modes, sizes, link
 * targets); what opened is inside its root; nothing outside A and B changed (the canary's
 * content included) and nothing failed with EROFS (a write that left the scratch tmpfs: every
 * other mount is read-only, fuzz_sandbox.h); a symlink among the parents gives ELOOP, one as the
 * last component ELOOP (EEXIST with O_EXCL); every node new in A is a directory on the path or
 * the file it names.
 *
 * In both modes the split of "/" + the tail must give a parent and a last component that make
 * the path again.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "fs.h"
#include "fuzz_sandbox.h"
#include "fuzz_workload_check.h"
#include "path.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
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
    char path[512];

    snprintf(root, sizeof(root), "%s/sbx-fuzz-path.XXXXXX", FUZZ_SANDBOX_SCRATCH);
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

/* The fd must be @under or below it; closes it. Returns its inode. */
static ino_t inside_of(int fd, const char *under)
{
    char link[64], target[4096];
    size_t rl = strlen(under);
    struct stat st;
    ssize_t n;

    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    n = readlink(link, target, sizeof(target) - 1);
    if (n < 0 || fstat(fd, &st) < 0) {
        abort();
    }
    target[n] = '\0';
    if (strncmp(target, under, rl) != 0 || (target[rl] != '\0' && target[rl] != '/')) {
        fprintf(stderr, "escaped: %s\n", target);
        abort();
    }
    close(fd);
    return st.st_ino;
}

static ino_t inside(int fd)
{
    return inside_of(fd, root);
}

/* Whether some component of @rel (empty ones skipped) names one of @links (@nlinks of them), as the
 * path walked so far reaches it; *@last_only then says whether only the last component does. */
static bool names_link(const char *rel, size_t len, const char *const (*links)[2], size_t nlinks,
                       bool *last_only)
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
            for (size_t k = 0; k < nlinks; k++) {
                if (strcmp(walked, links[k][0]) == 0) {
                    size_t j = i + n;
                    while (j < len && rel[j] == '/') {
                        j++;
                    }
                    if (last_only != NULL) {
                        *last_only = j >= len;
                    }
                    return true;
                }
            }
        }
        i += n;
    }
    return false;
}

static bool through_link(const char *rel, size_t len)
{
    return names_link(rel, len, tree_links, sizeof(tree_links) / sizeof(tree_links[0]), NULL);
}

/* --- create mode: two writable trees, A and B, made per input ------------------------------ */

#define CR_BASE   FUZZ_SANDBOX_SCRATCH "/sp"
#define CR_CANARY CR_BASE "/canary"
#define CR_OUT    CR_BASE "/outdir"

static const char cr_canary_text[] = "canary: nothing made under a root may reach this file\n";

/* Each root's tree: d/ d/e/ d/e/f d/p (FIFO) f, and these symlinks. */
static const char *const cr_dirs[] = { "d", "d/e" };
static const char *const cr_files[] = { "d/e/f", "f" };
static const char *const cr_links[][2] = {
    { "l", "/" },                  /* out, onto a read-only mount */
    { "u", ".." },                 /* the scratch directory the roots are in */
    { "i", "d" },                  /* inside */
    { "d/l2", "../.." },           /* the scratch directory again */
    { "d/e/s", "f" },              /* inside, a file */
    { "o", CR_OUT },               /* a directory outside, by absolute path */
    { "d/ro", "../../outdir" },    /* the same, relative */
    { "c", "../canary" },          /* the canary */
    { "ca", CR_CANARY },           /* the canary, by absolute path */
    { "dng", "nonexistent" },      /* dangling, inside */
    { "dngo", "../newout" },       /* dangling: a create through it makes ../newout */
    { "dnga", CR_BASE "/newabs" }, /* the same, absolute */
    { "loop", "loop" },            /* a loop of one */
    { "la", "lb" },                /* a loop of two */
    { "lb", "la" },
};

__attribute__((noreturn)) static void cr_fail(const char *what, const char *c)
{
    fprintf(stderr, "safe_path create: %s: \"%.200s\"\n", what, c);
    abort();
}

static void cr_make_root(const char *r)
{
    char path[256];
    int fd;

    if (mkdir(r, 0755) < 0) {
        cr_fail("cannot make", r);
    }
    for (size_t i = 0; i < sizeof(cr_dirs) / sizeof(cr_dirs[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", r, cr_dirs[i]);
        if (mkdir(path, 0755) < 0) {
            cr_fail("cannot make", path);
        }
    }
    for (size_t i = 0; i < sizeof(cr_files) / sizeof(cr_files[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", r, cr_files[i]);
        if ((fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644)) < 0 ||
            write(fd, "f\n", 2) != 2) {
            cr_fail("cannot make", path);
        }
        close(fd);
    }
    snprintf(path, sizeof(path), "%s/d/p", r);
    if (mkfifo(path, 0644) < 0) {
        cr_fail("cannot make", path);
    }
    for (size_t i = 0; i < sizeof(cr_links) / sizeof(cr_links[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", r, cr_links[i][0]);
        if (symlink(cr_links[i][1], path) < 0) {
            cr_fail("cannot make", path);
        }
    }
}

static void cr_make(void)
{
    int fd;

    if (mkdir(CR_BASE, 0755) < 0 || mkdir(CR_OUT, 0755) < 0) {
        cr_fail("cannot make", CR_BASE);
    }
    if ((fd = open(CR_CANARY, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644)) < 0 ||
        write(fd, cr_canary_text, sizeof(cr_canary_text) - 1) !=
            (ssize_t)(sizeof(cr_canary_text) - 1)) {
        cr_fail("cannot make", CR_CANARY);
    }
    close(fd);
    cr_make_root(CR_BASE "/A");
    cr_make_root(CR_BASE "/B");
}

static void cr_remove_at(int dfd, const char *name)
{
    const char *what = NULL;

    if (fuzz_scratch_remove(dfd, name, &what) < 0) {
        cr_fail(what, name);
    }
}

/* A tree as a sorted list of nodes, never following a symlink. */
struct cr_node {
    char *rel;
    char attrs[200]; /* type, mode, a file's size and first bytes, a link's target, times */
};

struct cr_list {
    struct cr_node *v;
    size_t n, cap;
};

static int cr_node_cmp(const void *a, const void *b)
{
    return strcmp(((const struct cr_node *)a)->rel, ((const struct cr_node *)b)->rel);
}

/* Add what is below directory fd @dfd (at @rel) to @l; with @times, modification times too;
 * the nodes named by @skip (relative paths) are left out with all below them. */
static void cr_list_at(int dfd, const char *rel, struct cr_list *l, bool times,
                       const char *const *skip)
{
    int fd = dup(dfd);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    struct dirent *de;

    if (d == NULL) {
        cr_fail("cannot list", rel);
    }
    rewinddir(d);
    while ((de = readdir(d)) != NULL) {
        struct cr_node nd;
        struct stat st;
        bool skipped = false;
        size_t a;

        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) {
            continue;
        }
        if (asprintf(&nd.rel, "%s%s%s", rel, rel[0] ? "/" : "", de->d_name) < 0) {
            abort();
        }
        for (const char *const *k = skip; k != NULL && *k != NULL; k++) {
            skipped |= strcmp(*k, nd.rel) == 0;
        }
        if (skipped) {
            free(nd.rel);
            continue;
        }
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
            cr_fail("cannot stat", nd.rel);
        }
        a = (size_t)snprintf(nd.attrs, sizeof(nd.attrs), "%c%o",
                             S_ISDIR(st.st_mode)   ? 'd'
                             : S_ISREG(st.st_mode) ? 'f'
                             : S_ISLNK(st.st_mode) ? 'l'
                                                   : 'o',
                             (unsigned)st.st_mode & 07777);
        if (times && !S_ISLNK(st.st_mode)) {
            a += (size_t)snprintf(nd.attrs + a, sizeof(nd.attrs) - a, " m%lld.%ld",
                                  (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
        }
        if (S_ISLNK(st.st_mode)) {
            char t[128];
            ssize_t n = readlinkat(dirfd(d), de->d_name, t, sizeof(t) - 1);
            t[n > 0 ? n : 0] = '\0';
            snprintf(nd.attrs + a, sizeof(nd.attrs) - a, " -> %s", t);
        } else if (S_ISREG(st.st_mode)) {
            char t[64] = "";
            int ffd = openat(dirfd(d), de->d_name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
            ssize_t n = ffd >= 0 ? read(ffd, t, sizeof(t) - 1) : -1;
            if (ffd >= 0) {
                close(ffd);
            }
            t[n > 0 ? n : 0] = '\0';
            a += (size_t)snprintf(nd.attrs + a, sizeof(nd.attrs) - a, " %lld ",
                                  (long long)st.st_size);
            for (ssize_t i = 0; i < n && a + 3 < sizeof(nd.attrs); i++) {
                a += (size_t)snprintf(nd.attrs + a, sizeof(nd.attrs) - a, "%02x",
                                      (unsigned char)t[i]);
            }
        }
        if (l->n == l->cap) {
            size_t cap = l->cap ? l->cap * 2 : 64;
            struct cr_node *v = realloc(l->v, cap * sizeof(*v));
            if (v == NULL) {
                abort();
            }
            l->v = v;
            l->cap = cap;
        }
        l->v[l->n++] = nd;
        if (S_ISDIR(st.st_mode)) {
            int sub = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (sub < 0) {
                cr_fail("cannot open", l->v[l->n - 1].rel);
            }
            cr_list_at(sub, l->v[l->n - 1].rel, l, times, skip);
            close(sub);
        }
    }
    closedir(d);
}

static void cr_list(const char *dir, struct cr_list *l, bool times, const char *const *skip)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

    if (fd < 0) {
        cr_fail("cannot open", dir);
    }
    l->n = 0;
    cr_list_at(fd, "", l, times, skip);
    close(fd);
    qsort(l->v, l->n, sizeof(l->v[0]), cr_node_cmp);
}

static void cr_list_free(struct cr_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].rel);
    }
    free(l->v);
    *l = (struct cr_list){ 0 };
}

/* The first difference between @a and @b, or NULL. */
static const char *cr_list_diff(const struct cr_list *a, const struct cr_list *b)
{
    for (size_t i = 0; i < a->n || i < b->n; i++) {
        if (i >= a->n || i >= b->n) {
            return i < a->n ? a->v[i].rel : b->v[i].rel;
        }
        if (strcmp(a->v[i].rel, b->v[i].rel) != 0 || strcmp(a->v[i].attrs, b->v[i].attrs) != 0) {
            fprintf(stderr, "safe_path create: \"%s\" %s / \"%s\" %s\n", a->v[i].rel, a->v[i].attrs,
                    b->v[i].rel, b->v[i].attrs);
            return a->v[i].rel;
        }
    }
    return NULL;
}

/* The path the fd reaches, relative to @under (which it must be in: closes it). */
static void cr_inside(int fd, const char *under, char *out, size_t outsz)
{
    char link[64], target[4096];
    size_t ul = strlen(under);
    ssize_t n;

    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    n = readlink(link, target, sizeof(target) - 1);
    if (n < 0) {
        abort();
    }
    target[n] = '\0';
    close(fd);
    if (strncmp(target, under, ul) != 0 || (target[ul] != '\0' && target[ul] != '/')) {
        cr_fail("opened outside its root", target);
    }
    snprintf(out, outsz, "%s", target + ul);
}

/* @c's first @len bytes with "." and empty components left out: what a create makes. */
static void cr_norm(const char *c, size_t len, char *out, size_t outsz)
{
    size_t o = 0;

    out[0] = '\0';
    for (size_t i = 0; i < len;) {
        size_t n = 0;
        while (i < len && c[i] == '/') {
            i++;
        }
        while (i + n < len && c[i + n] != '/') {
            n++;
        }
        if (n > 0 && !(n == 1 && c[i] == '.') && o + n + 2 < outsz) {
            o += (size_t)snprintf(out + o, outsz - o, "%s%.*s", o ? "/" : "", (int)n, c + i);
        }
        i += n;
    }
}

static int cr_openat2(int dfd, const char *path, int flags)
{
    struct open_how how = {
        .flags = (uint64_t)(flags | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC),
        .mode = (flags & O_CREAT) ? 0666 : 0,
        .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    };

    return (int)syscall(SYS_openat2, dfd, path, &how, sizeof(how));
}

static void cr_close2(int fa, int fb)
{
    if (fa >= 0) {
        close(fa);
    }
    if (fb >= 0) {
        close(fb);
    }
}

/* A and B agree: both opened (the same node, each inside its root) or both failed alike. */
static void cr_agree(const char *c, const char *what, int fa, int ea, int fb, int eb)
{
    char ra[4096], rb[4096];

    if (ea == EROFS || eb == EROFS) {
        cr_fail("EROFS: a create left the scratch tmpfs", c);
    }
    /* openat2 refuses flags it cannot honour (O_CREAT | O_DIRECTORY) before it looks anything
     * up, agent_path_open_under only when it opens the last component, after the parents. */
    if (fa < 0 && fb < 0 && eb == EINVAL && (ea == ENOENT || ea == ENOTDIR || ea == ELOOP)) {
        ea = eb;
    }
    if ((fa < 0) != (fb < 0) || (fa < 0 && ea != eb)) {
        fprintf(stderr, "safe_path create: %s: A %d (%s), B %d (%s)\n", what, fa,
                fa < 0 ? strerror(ea) : "", fb, fb < 0 ? strerror(eb) : "");
        cr_fail("A and B disagree", c);
    }
    if (fa >= 0) {
        cr_inside(fa, CR_BASE "/A", ra, sizeof(ra));
        cr_inside(fb, CR_BASE "/B", rb, sizeof(rb));
        if (strcmp(ra, rb) != 0) {
            cr_fail("A and B opened different nodes", c);
        }
    }
}

static void create_mode(int opts, const char *c)
{
    static const int access[] = { O_RDONLY, O_WRONLY, O_RDWR, O_WRONLY | O_APPEND };
    static const char *const roots[] = { "sp/A", "sp/B", NULL };
    struct cr_list out0 = { 0 }, out1 = { 0 }, a0 = { 0 }, a1 = { 0 }, b1 = { 0 };
    size_t len = strlen(c), tlen = len;
    bool file = opts & 1, first = opts & 2, last = false, link;
    int flags = O_CREAT | ((opts & 4) ? O_EXCL : 0) | ((opts & 8) ? O_TRUNC : 0) |
                ((opts & 16) ? O_DIRECTORY : 0) | access[(opts >> 5) & 3];
    int ra, rb, fa, fb, ea, eb;
    char want[AGENT_FS_PATH_BUF];
    const char *diff;

    cr_make();
    cr_list(FUZZ_SANDBOX_SCRATCH, &out0, true, roots);
    cr_list(CR_BASE "/A", &a0, false, NULL);
    if ((ra = open(CR_BASE "/A", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0 ||
        (rb = open(CR_BASE "/B", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
        cr_fail("cannot open the roots", CR_BASE);
    }
    if (!file) {
        if (first) { /* a prefix, cut at a '/' as up_parent cuts */
            tlen = len / 2;
            while (tlen > 0 && tlen < len && c[tlen] != '/') {
                tlen--;
            }
        }
        errno = 0;
        fa = agent_path_opendir_under(ra, c, tlen, true, NULL);
        ea = errno;
        errno = 0;
        fb = agent_path_opendir_walk(rb, c, tlen, true, NULL);
        eb = errno;
    } else {
        const char *slash = strrchr(c, '/');
        if (first && slash != NULL) { /* the parents first, as upload_tree makes them */
            errno = 0;
            fa = agent_path_opendir_under(ra, c, (size_t)(slash - c), true, NULL);
            ea = errno;
            errno = 0;
            fb = agent_path_opendir_walk(rb, c, (size_t)(slash - c), true, NULL);
            eb = errno;
            if (ea != ENAMETOOLONG && eb != ENAMETOOLONG) {
                cr_agree(c, "parents", fa, ea, fb, eb);
            } else {
                cr_close2(fa, fb);
            }
        }
        errno = 0;
        fa = agent_path_open_under(ra, c, flags);
        ea = errno;
        errno = 0;
        fb = cr_openat2(rb, c, flags);
        eb = errno;
    }
    link = names_link(c, tlen, cr_links, sizeof(cr_links) / sizeof(cr_links[0]), &last);
    if (ea == EROFS || eb == EROFS) {
        cr_fail("EROFS: a create left the scratch tmpfs", c);
    }
    if (link && !(fa < 0 && (ea == ELOOP || ea == ENAMETOOLONG || (file && ea == EINVAL) ||
                             (file && last && (flags & O_EXCL) && ea == EEXIST)))) {
        cr_fail("through a symlink, and not ELOOP", c);
    }
    cr_list(CR_BASE "/A", &a1, false, NULL);
    if (ea == ENAMETOOLONG || eb == ENAMETOOLONG) {
        /* The whole path is too long for openat2 where the walk takes one name at a time. */
        cr_close2(fa, fb);
    } else {
        cr_agree(c, file ? "file" : "directory", fa, ea, fb, eb);
        cr_list(CR_BASE "/B", &b1, false, NULL);
        if ((diff = cr_list_diff(&a1, &b1)) != NULL) {
            cr_fail("A and B are different trees after the create", diff);
        }
    }
    /* What is new in A lies on the path: directories above, the file or directory itself. */
    cr_norm(c, tlen, want, sizeof(want));
    for (size_t i = 0, k = 0; i < a1.n; i++) {
        const char *r = a1.v[i].rel;
        size_t rl = strlen(r);
        while (k < a0.n && strcmp(a0.v[k].rel, r) < 0) {
            k++;
        }
        if (k < a0.n && strcmp(a0.v[k].rel, r) == 0) {
            continue;
        }
        if (strncmp(want, r, rl) != 0 || (want[rl] != '\0' && want[rl] != '/')) {
            cr_fail("made a node off the path", r);
        }
        if (!(a1.v[i].attrs[0] == 'd' || (file && want[rl] == '\0' && a1.v[i].attrs[0] == 'f'))) {
            cr_fail("made a node that is neither a directory on the path nor the file", r);
        }
    }
    close(ra);
    close(rb);
    cr_list(FUZZ_SANDBOX_SCRATCH, &out1, true, roots);
    if ((diff = cr_list_diff(&out0, &out1)) != NULL) {
        cr_fail("something outside the roots changed (the canary?)", diff);
    }
    cr_list_free(&out0);
    cr_list_free(&out1);
    cr_list_free(&a0);
    cr_list_free(&a1);
    cr_list_free(&b1);
    cr_remove_at(AT_FDCWD, CR_BASE);
}

static char rel[AGENT_FS_PATH_BUF], clean[AGENT_FS_PATH_BUF];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_sandbox_enter(*argc, *argv);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nl;
    size_t rlen, tlen, csz;
    const char *why = NULL, *c;
    char path[AGENT_FS_PATH_BUF + 1], parent[AGENT_FS_PATH_BUF], base[AGENT_FS_PATH_BUF];
    int fd, fd2, e1, e2, opts;

    fuzz_sandbox_enter(0, NULL);
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

    csz = (opts & 0x81) == 1 ? 16 : sizeof(clean);
    c = agent_path_clean_rel(rel, clean, csz, &why);
    fuzz_check_clean(rel, c, csz);
    if (c != NULL && (opts & 0x80)) {
        int fds = fuzz_count_fds();
        create_mode(opts, c);
        if (fds >= 0 && fuzz_count_fds() != fds) {
            cr_fail("an fd was left open", c);
        }
    } else if (c != NULL) {
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
