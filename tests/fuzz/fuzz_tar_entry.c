/*
 * libFuzzer target for transfer.upload_tree's checks of tar entries (agent/untar.c): the input
 * is the archive, read with libarchive as up_extract reads it (tar, or an empty stream), and each
 * entry judged as up_entry judges it, without extracting anything: its name and a hard link's
 * target cleaned by agent_path_clean_rel (what up_clean_name calls), a symlink's target present,
 * a regular file's data read block by block. What is accepted must be relative, free of "..",
 * and split into a parent and a last component as up_parent splits it; sizes and offsets must
 * be ones pwrite and ftruncate take.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <archive.h>
#include <archive_entry.h>

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

/* A cleaned name as up_parent cuts it: the parent (may be ""), and a last component that is not
 * empty and holds no '/'. */
static void check_split(const char *name)
{
    const char *slash = strrchr(name, '/'), *base = slash != NULL ? slash + 1 : name;

    if (name[0] != '\0' && (base[0] == '\0' || strchr(base, '/') != NULL)) {
        abort();
    }
}

static char name[AGENT_FS_PATH_BUF], lname[AGENT_FS_PATH_BUF];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct archive *ar = archive_read_new();
    struct archive_entry *e;
    int rc, entries = 0;

    if (ar == NULL) {
        return 0;
    }
    archive_read_support_format_tar(ar);
    archive_read_support_format_empty(ar);
    archive_read_support_filter_none(ar);
    if (archive_read_open_memory(ar, data, size) != ARCHIVE_OK) {
        archive_read_free(ar);
        return 0;
    }
    while (entries++ < 256 &&
           ((rc = archive_read_next_header(ar, &e)) == ARCHIVE_OK || rc == ARCHIVE_WARN)) {
        const char *why = NULL, *pn = archive_entry_pathname(e), *hl = archive_entry_hardlink(e);
        const char *n = agent_path_clean_rel(pn, name, sizeof(name), &why);
        mode_t type = archive_entry_filetype(e);

        fuzz_check_clean(pn, n, sizeof(name));
        if (n == NULL) {
            if (why == NULL) {
                abort();
            }
            continue; /* refused: the upload ends here */
        }
        check_split(n);
        if (n[0] == '\0') {
            continue; /* the destination itself */
        }
        if (hl != NULL) {
            const char *tn = agent_path_clean_rel(hl, lname, sizeof(lname), &why);
            fuzz_check_clean(hl, tn, sizeof(lname));
            if (tn != NULL) {
                check_split(tn);
            }
            continue;
        }
        if (type == AE_IFLNK && archive_entry_symlink(e) == NULL) {
            continue; /* refused: "symlink without a target" */
        }
        if (type == AE_IFREG) {
            const void *buf;
            size_t len;
            la_int64_t off;

            if (archive_entry_size(e) < 0) {
                continue; /* refused: "negative size" */
            }
            while ((rc = archive_read_data_block(ar, &buf, &len, &off)) == ARCHIVE_OK) {
                if (off < 0 || (uint64_t)off + len > (uint64_t)INT64_MAX) {
                    abort(); /* not an offset pwrite takes */
                }
            }
            if (rc != ARCHIVE_EOF) {
                break; /* "archive data of ..." */
            }
        }
    }
    archive_read_free(ar);
    return 0;
}
