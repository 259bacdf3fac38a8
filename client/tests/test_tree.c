/*
 * Unit tests: sbxtree without an agent (sbx/tree.h). sbx_tree_tar on a temporary directory
 * (files, a hard link, a symlink, a sparse file, a FIFO, a socket), its archive read back with
 * libarchive; sbx_tree_untar of that archive fed in small pieces, and of hostile or broken ones;
 * errors of the callbacks and of the walk passed through as they are.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>
#include <cmocka.h>

#include "sbx/tree.h"

#define BIG_LEN   (300u << 10) /* sub/b.bin: more than one SBX_TREE_BLOCK */
#define SPARSE_AT (1u << 20)
#define SPARSE_SZ (8u << 20)

/* An archive in memory: what sbx_tree_tar wrote, or what sbx_tree_untar reads. */
struct mem {
    uint8_t *p;
    size_t len, cap;
    size_t pieces, short_pieces; /* out: blocks taken, of them shorter than SBX_TREE_BLOCK */
    size_t pos, piece;           /* in: read position, bytes handed out at a time */
    const char *fail;            /* an errno name: out fails at once, in at the end */
};

static int mem_out(void *arg, const void *buf, size_t len, struct sbx_err *err)
{
    struct mem *m = arg;

    if (m->fail != NULL) {
        return sbx_err_set(err, m->fail, "sink failed");
    }
    if (m->len + len > m->cap) {
        m->cap = (m->len + len) * 2;
        m->p = realloc(m->p, m->cap);
        assert_non_null(m->p);
    }
    memcpy(m->p + m->len, buf, len);
    m->len += len;
    m->pieces++;
    m->short_pieces += len < SBX_TREE_BLOCK;
    assert_true(len <= SBX_TREE_BLOCK);
    return 0;
}

static ssize_t mem_in(void *arg, const void **buf, struct sbx_err *err)
{
    struct mem *m = arg;
    size_t n = m->len - m->pos < m->piece ? m->len - m->pos : m->piece;

    if (n == 0) {
        return m->fail != NULL ? sbx_err_set(err, m->fail, "source failed late") : 0;
    }
    *buf = m->p + m->pos;
    m->pos += n;
    return (ssize_t)n;
}

static void put_file(const char *dir, const char *name, const void *data, size_t len, off_t at)
{
    char path[PATH_MAX];
    int fd;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    fd = open(path, O_WRONLY | O_CREAT, 0644);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, data, len, at), (ssize_t)len);
    close(fd);
}

static void rm_rf(const char *dir)
{
    char cmd[PATH_MAX + 16];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* The test tree in a new temporary directory @dir; returns whether "sparse" has holes here. */
static bool make_tree(char *dir)
{
    static uint8_t big[BIG_LEN];
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    char path[PATH_MAX];
    struct stat st;
    int sk;

    for (size_t i = 0; i < sizeof(big); i++) {
        big[i] = (uint8_t)(i * 7 + i / 251);
    }
    assert_non_null(mkdtemp(dir));
    put_file(dir, "a.txt", "hello\n", 6, 0);
    snprintf(path, sizeof(path), "%s/sub", dir);
    assert_int_equal(mkdir(path, 0750), 0);
    put_file(dir, "sub/b.bin", big, sizeof(big), 0);
    snprintf(path, sizeof(path), "%s/x.sh", dir);
    put_file(dir, "x.sh", "#!/bin/sh\n", 10, 0);
    assert_int_equal(chmod(path, 0751), 0);
    snprintf(path, sizeof(path), "%s/sub/hard", dir);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/a.txt", dir);
    assert_int_equal(link(sa.sun_path, path), 0);
    snprintf(path, sizeof(path), "%s/link", dir);
    assert_int_equal(symlink("sub", path), 0);
    snprintf(path, sizeof(path), "%s/fifo", dir);
    assert_int_equal(mkfifo(path, 0600), 0);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/sock", dir);
    sk = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_int_equal(bind(sk, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(sk);
    put_file(dir, "sparse", "AAAA", 4, 0);
    put_file(dir, "sparse", "BBBB", 4, SPARSE_AT);
    snprintf(path, sizeof(path), "%s/sparse", dir);
    assert_int_equal(truncate(path, SPARSE_SZ), 0);
    assert_int_equal(stat(path, &st), 0);
    return (off_t)st.st_blocks * 512 < st.st_size;
}

static void tar(const char *dir, const char *compress, struct mem *m)
{
    struct sbx_err err;

    memset(m, 0, sizeof(*m));
    assert_int_equal(sbx_tree_tar(dir, compress, mem_out, m, &err), 0);
    assert_true(m->len > 0);
    assert_true(m->short_pieces <= 1); /* only the last block may be shorter */
}

/* What the archive read back says of one entry. */
struct seen {
    char name[64];
    mode_t type, perm;
    int64_t size;
    char target[64]; /* symlink or hard link */
    int sparse;
    uint8_t *data; /* size bytes, holes as zeros */
};

static size_t read_back(const struct mem *m, struct seen *s, size_t max)
{
    struct archive *r = archive_read_new();
    struct archive_entry *e;
    size_t n = 0;

    archive_read_support_format_tar(r);
    archive_read_support_filter_gzip(r);
    archive_read_support_filter_zstd(r);
    assert_int_equal(archive_read_open_memory(r, m->p, m->len), ARCHIVE_OK);
    while (archive_read_next_header(r, &e) == ARCHIVE_OK) {
        const char *t =
            archive_entry_symlink(e) ? archive_entry_symlink(e) : archive_entry_hardlink(e);
        const void *buf;
        size_t len;
        la_int64_t off;

        assert_true(n < max);
        snprintf(s[n].name, sizeof(s[n].name), "%s", archive_entry_pathname(e));
        snprintf(s[n].target, sizeof(s[n].target), "%s", t != NULL ? t : "");
        s[n].type = archive_entry_filetype(e);
        s[n].perm = archive_entry_perm(e);
        s[n].size = archive_entry_size(e);
        s[n].sparse = archive_entry_sparse_count(e);
        s[n].data = calloc(1, (size_t)s[n].size + 1);
        while (archive_read_data_block(r, &buf, &len, &off) == ARCHIVE_OK) {
            assert_true(off + (la_int64_t)len <= s[n].size);
            memcpy(s[n].data + off, buf, len);
        }
        n++;
    }
    archive_read_free(r);
    return n;
}

static const struct seen *find(const struct seen *s, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(s[i].name, name) == 0) {
            return &s[i];
        }
    }
    return NULL;
}

static void test_tar_reads_back(void **state)
{
    char dir[] = "/tmp/sbx-tree-XXXXXX";
    bool holes = make_tree(dir);
    struct seen s[16];
    struct mem m;
    const struct seen *a, *h, *x;
    size_t n;

    (void)state;
    tar(dir, NULL, &m);
    assert_true(m.pieces > 1);
    n = read_back(&m, s, 16);
    assert_int_equal(n, 8); /* a.txt sub sub/b.bin x.sh sub/hard link fifo sparse; no sock */
    assert_null(find(s, n, "sock"));
    assert_int_equal(find(s, n, "sub/")->type, AE_IFDIR);
    assert_int_equal(find(s, n, "sub/")->perm, 0750);
    assert_int_equal(find(s, n, "fifo")->type, AE_IFIFO);
    assert_int_equal(find(s, n, "link")->type, AE_IFLNK);
    assert_string_equal(find(s, n, "link")->target, "sub");
    x = find(s, n, "x.sh");
    assert_int_equal(x->perm, 0751);
    assert_memory_equal(x->data, "#!/bin/sh\n", 10);
    assert_int_equal(find(s, n, "sub/b.bin")->size, BIG_LEN);
    assert_int_equal(find(s, n, "sub/b.bin")->data[BIG_LEN - 1],
                     (uint8_t)((BIG_LEN - 1) * 7 + (BIG_LEN - 1) / 251));
    /* The later link of the inode (in directory order) is a hard-link entry to the first. */
    a = find(s, n, "a.txt");
    h = find(s, n, "sub/hard");
    assert_true((a->size == 6 && strcmp(h->target, "a.txt") == 0) ||
                (h->size == 6 && strcmp(a->target, "sub/hard") == 0));
    assert_memory_equal((a->size == 6 ? a : h)->data, "hello\n", 6);
    /* The sparse file: its full size, its data in place, its holes not in the archive. */
    x = find(s, n, "sparse");
    assert_int_equal(x->size, SPARSE_SZ);
    assert_memory_equal(x->data, "AAAA", 4);
    assert_memory_equal(x->data + SPARSE_AT, "BBBB", 4);
    if (holes) {
        assert_true(x->sparse > 0);
        assert_true(m.len < BIG_LEN + (256u << 10));
    }
    for (size_t i = 0; i < n; i++) {
        free(s[i].data);
    }
    free(m.p);
    rm_rf(dir);
}

static void test_tar_compressed(void **state)
{
    static const struct {
        const char *compress;
        uint8_t magic[4];
        size_t len;
    } t[] = { { "gzip", { 0x1f, 0x8b }, 2 }, { "zstd", { 0x28, 0xb5, 0x2f, 0xfd }, 4 } };
    char dir[] = "/tmp/sbx-tree-XXXXXX";
    struct seen s[16];
    struct mem m;

    (void)state;
    make_tree(dir);
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        size_t n;
        tar(dir, t[i].compress, &m);
        assert_memory_equal(m.p, t[i].magic, t[i].len);
        n = read_back(&m, s, 16);
        assert_int_equal(n, 8);
        assert_non_null(find(s, n, "sub/b.bin"));
        for (size_t k = 0; k < n; k++) {
            free(s[k].data);
        }
        free(m.p);
    }
    rm_rf(dir);
}

static void test_untar_round_trip(void **state)
{
    char src[] = "/tmp/sbx-tree-XXXXXX", dst[] = "/tmp/sbx-tree-XXXXXX", path[PATH_MAX];
    char cwd[PATH_MAX], back[PATH_MAX], target[16] = "";
    bool holes = make_tree(src);
    struct sbx_err err;
    struct stat a, h, st;
    struct mem m;
    char buf[8];

    (void)state;
    tar(src, "zstd", &m);
    m.piece = 1000; /* many small pieces: libarchive asks again and again */
    assert_non_null(mkdtemp(dst));
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(sbx_tree_untar(dst, mem_in, &m, &err), 0);
    assert_int_equal(m.pos, m.len);
    assert_string_equal(getcwd(back, sizeof(back)), cwd); /* the cwd is put back */
    snprintf(path, sizeof(path), "%s/a.txt", dst);
    assert_int_equal(stat(path, &a), 0);
    snprintf(path, sizeof(path), "%s/sub/hard", dst);
    assert_int_equal(stat(path, &h), 0);
    assert_int_equal(a.st_ino, h.st_ino);
    snprintf(path, sizeof(path), "%s/x.sh", dst);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0751);
    snprintf(path, sizeof(path), "%s/link", dst);
    assert_int_equal(readlink(path, target, sizeof(target) - 1), 3);
    assert_string_equal(target, "sub");
    snprintf(path, sizeof(path), "%s/sub/b.bin", dst);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, BIG_LEN);
    snprintf(path, sizeof(path), "%s/sparse", dst);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, SPARSE_SZ);
    if (holes) {
        assert_true((off_t)st.st_blocks * 512 < (off_t)SPARSE_AT); /* holes stay holes */
    }
    {
        int fd = open(path, O_RDONLY);
        assert_int_equal(pread(fd, buf, 4, SPARSE_AT), 4);
        assert_memory_equal(buf, "BBBB", 4);
        close(fd);
    }
    free(m.p);
    rm_rf(src);
    rm_rf(dst);
}

/* An archive of one regular file named @name holding "x". */
/* A pax archive of the entries @names with modes @modes (file type bits included) and @devs
 * (their rdev, for device nodes), owned by root. */
static void entries(struct mem *m, const char *const *names, const mode_t *modes, const dev_t *devs,
                    size_t n)
{
    struct archive *w = archive_write_new();
    struct archive_entry *e = archive_entry_new();
    size_t used = 0;

    memset(m, 0, sizeof(*m));
    m->cap = 64 << 10;
    m->p = malloc(m->cap);
    m->piece = m->cap;
    archive_write_set_format_pax(w);
    archive_write_add_filter_none(w);
    assert_int_equal(archive_write_open_memory(w, m->p, m->cap, &used), ARCHIVE_OK);
    for (size_t i = 0; i < n; i++) {
        archive_entry_clear(e);
        archive_entry_set_pathname(e, names[i]);
        archive_entry_set_mode(e, modes[i]);
        archive_entry_set_uid(e, 0);
        archive_entry_set_gid(e, 0);
        archive_entry_set_rdev(e, devs[i]);
        archive_entry_set_size(e, S_ISREG(modes[i]) ? 1 : 0);
        assert_int_equal(archive_write_header(w, e), ARCHIVE_OK);
        if (S_ISREG(modes[i])) {
            assert_int_equal(archive_write_data(w, "x", 1), 1);
        }
    }
    assert_int_equal(archive_write_close(w), ARCHIVE_OK);
    archive_write_free(w);
    archive_entry_free(e);
    m->len = used;
}

/* A pax archive of one file, @name, holding "x". */
static void one_entry(struct mem *m, const char *name)
{
    const mode_t mode = S_IFREG | 0644;
    const dev_t dev = 0;

    entries(m, &name, &mode, &dev, 1);
}

static void test_untar_refuses(void **state)
{
    char dir[] = "/tmp/sbx-tree-XXXXXX", path[PATH_MAX];
    static const char junk[2048] = "this is not a tar archive";
    struct sbx_err err;
    struct mem m;

    (void)state;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/in", dir);
    assert_int_equal(mkdir(path, 0755), 0);
    /* ".." and absolute names are refused; nothing lands outside */
    one_entry(&m, "../evil");
    assert_int_equal(sbx_tree_untar(path, mem_in, &m, &err), -1);
    assert_string_equal(err.code, "EIO");
    snprintf(path, sizeof(path), "%s/evil", dir);
    assert_int_equal(access(path, F_OK), -1);
    free(m.p);
    snprintf(path, sizeof(path), "%s/in", dir);
    one_entry(&m, "/tmp/sbx-tree-abs-evil");
    assert_int_equal(sbx_tree_untar(path, mem_in, &m, &err), -1);
    assert_int_equal(access("/tmp/sbx-tree-abs-evil", F_OK), -1);
    free(m.p);
    /* not an archive */
    m = (struct mem){ .p = (uint8_t *)junk, .len = sizeof(junk), .piece = 100 };
    assert_int_equal(sbx_tree_untar(path, mem_in, &m, &err), -1);
    assert_string_equal(err.code, SBX_E_BAD_PARAM);
    /* an empty source is an empty archive */
    m = (struct mem){ .piece = 100 };
    assert_int_equal(sbx_tree_untar(path, mem_in, &m, &err), 0);
    /* a destination that does not exist */
    snprintf(path, sizeof(path), "%s/none", dir);
    assert_int_equal(sbx_tree_untar(path, mem_in, &m, &err), -1);
    assert_string_equal(err.code, "ENOENT");
    rm_rf(dir);
}

/* The guest chooses the entries of a downloaded tree: no device node or FIFO of its choosing and
 * no set-id program may appear on this machine, and modes obey the umask (run as root, the old
 * unpacking made "mem" and "sda" open to everyone and a set-uid root program). */
static void test_untar_no_devices_or_setid(void **state)
{
    static const char *const names[] = { "suid", "sgid", "mem", "sda", "dir", "fifo" };
    static const mode_t modes[] = { S_IFREG | 04755, S_IFREG | 02777, S_IFCHR | 0666,
                                    S_IFBLK | 0666,  S_IFDIR | 01777, S_IFIFO | 0666 };
    const dev_t devs[] = { 0, 0, makedev(1, 1), makedev(8, 0), 0, 0 };
    char dir[] = "/tmp/sbx-tree-XXXXXX", path[PATH_MAX];
    struct sbx_err err;
    struct stat st;
    struct mem m;
    mode_t old = umask(022);

    (void)state;
    assert_non_null(mkdtemp(dir));
    entries(&m, names, modes, devs, sizeof(names) / sizeof(names[0]));
    assert_int_equal(sbx_tree_untar(dir, mem_in, &m, &err), 0);
    free(m.p);
    snprintf(path, sizeof(path), "%s/suid", dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0755);
    snprintf(path, sizeof(path), "%s/sgid", dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0755);
    snprintf(path, sizeof(path), "%s/dir", dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0755);
    /* Neither the devices nor the FIFO (it would hang whatever reads the tree here later). */
    for (int i = 2; i < 6; i += i == 3 ? 2 : 1) {
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        assert_int_equal(lstat(path, &st), -1);
    }
    umask(old);
    rm_rf(dir);
}

static void test_callback_errors_pass_through(void **state)
{
    char src[] = "/tmp/sbx-tree-XXXXXX", dst[] = "/tmp/sbx-tree-XXXXXX";
    struct sbx_err err;
    struct mem m = { .fail = "ENOSPC" };

    (void)state;
    make_tree(src);
    assert_int_equal(sbx_tree_tar(src, "gzip", mem_out, &m, &err), -1);
    assert_string_equal(err.code, "ENOSPC");
    assert_string_equal(err.msg, "sink failed");
    /* a source that fails after a complete archive: the error is still seen */
    tar(src, NULL, &m);
    m.piece = 4096;
    m.fail = "ECONNRESET";
    assert_non_null(mkdtemp(dst));
    assert_int_equal(sbx_tree_untar(dst, mem_in, &m, &err), -1);
    assert_string_equal(err.code, "ECONNRESET");
    /* ... and one that fails in the middle */
    m.pos = 0;
    m.len /= 2;
    assert_int_equal(sbx_tree_untar(dst, mem_in, &m, &err), -1);
    assert_string_equal(err.code, "ECONNRESET");
    free(m.p);
    rm_rf(src);
    rm_rf(dst);
}

static void test_walk_errors(void **state)
{
    char dir[] = "/tmp/sbx-tree-XXXXXX", name[251], path[PATH_MAX];
    struct sbx_err err;
    struct mem m = { 0 };
    int fd;

    (void)state;
    assert_int_equal(sbx_tree_tar("/nonexistent/sbx", NULL, mem_out, &m, &err), -1);
    assert_string_equal(err.code, "ENOENT");
    /* deeper than PATH_MAX: the walk stops with the errno and where */
    assert_non_null(mkdtemp(dir));
    memset(name, 'd', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    fd = open(dir, O_RDONLY | O_DIRECTORY);
    for (int i = 0; i < 20; i++) {
        int nfd;
        assert_int_equal(mkdirat(fd, name, 0755), 0);
        nfd = openat(fd, name, O_RDONLY | O_DIRECTORY);
        close(fd);
        fd = nfd;
    }
    close(fd);
    assert_int_equal(sbx_tree_tar(dir, NULL, mem_out, &m, &err), -1);
    assert_string_equal(err.code, "ENAMETOOLONG");
    snprintf(path, sizeof(path), "walk ...%.150s", name);
    assert_non_null(strstr(err.msg, path));
    assert_true(strlen(err.path) > 200);
    free(m.p);
    rm_rf(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tar_reads_back),
        cmocka_unit_test(test_tar_compressed),
        cmocka_unit_test(test_untar_round_trip),
        cmocka_unit_test(test_untar_refuses),
        cmocka_unit_test(test_untar_no_devices_or_setid),
        cmocka_unit_test(test_callback_errors_pass_through),
        cmocka_unit_test(test_walk_errors),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
