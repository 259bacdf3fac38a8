/*
 * libsbx directory trees (library sbxtree, on libarchive): a local directory as a tar stream and
 * a tar stream unpacked into a local directory, and the tree transfers that carry them to and
 * from the agent (transfer.upload_tree / download_tree, §18.3, §18.4) on a blocking client.
 *
 * sbx_tree_tar and sbx_tree_untar need no agent: they move the archive through callbacks, so a
 * host program can send it anywhere (a stream, a file, a socket) or unpack one from anywhere.
 * sbxtree links libarchive and sbxtransfer (sbx/transfer.h); sbxclient itself does not.
 */
#ifndef SBX_TREE_H
#define SBX_TREE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "sbx/client.h"
#include "sbx/err.h"
#include "sbx/limits.h"
#include "sbx/schema.h"
#include "sbx/transfer.h"

/* sbx_tree_tar hands the archive out in blocks of this size (the last one shorter): one stream
 * frame each. */
#define SBX_TREE_BLOCK SBX_STREAM_CHUNK_MAX

/* Takes @len bytes of the archive. Returns 0, or -1 with @err set (the archive stops there). */
typedef int (*sbx_tree_out_fn)(void *arg, const void *buf, size_t len, struct sbx_err *err);

/*
 * Write the tree below directory @root as a pax tar archive, filtered by @compress ("gzip",
 * "zstd", or "none" / NULL), to @out. Entries are named relative to @root ("sub/a.txt"; @root
 * itself has none) and carry mode, owner ids and times. The walk is our own (openat, getdents and
 * fstat relative to the parent directory: about four system calls a file where libarchive's
 * read_disk makes ~18): symlinks are stored, not followed; a later link of an inode seen before
 * is a hard-link entry; a regular file with fewer blocks than its size becomes a pax sparse entry
 * holding its data regions only; sockets are left out; FIFOs and devices are entries of their
 * own (never read). A file that shrinks while it is read is padded with zeros, as tar does.
 *
 * Returns 0, or -1 with @err: the error @out set (kept as it is); the errno of a failed open,
 * stat, read, seek or readlink, with the path field relative to @root and a message naming
 * "@root/path" (or, for a path over 200 bytes, its last 200 bytes after "..."); ENAMETOOLONG
 * ("walk") for a path longer than PATH_MAX; EIO with libarchive's message; INTERNAL when out of
 * memory.
 */
int sbx_tree_tar(const char *root, const char *compress, sbx_tree_out_fn out, void *arg,
                 struct sbx_err *err);

/*
 * Gives the next piece of an archive: returns its length (> 0) with *@buf pointing at it (valid
 * until the next call), 0 at the end (and again on every later call), or -1 with @err set.
 */
typedef ssize_t (*sbx_tree_in_fn)(void *arg, const void **buf, struct sbx_err *err);

/*
 * Unpack the tar archive (plain, gzip or zstd; ustar, pax or GNU) read through @in into the
 * existing directory @dest with libarchive's disk writer and its SECURE_* checks, since the
 * archive is not trusted: absolute names and ".." are refused and nothing is written through a
 * symlink. Times are restored, and modes as the process's umask allows, without set-id or sticky
 * bits (owners are not restored); device nodes are skipped, so a guest can give this
 * machine neither a set-uid program nor a device. Existing files are replaced, holes of sparse
 * entries stay holes. @in is read to its end, also after the archive's end marker, so an
 * error its source reports late is seen.
 *
 * The process's working directory is @dest while it runs (the checks work on relative names)
 * and is put back before it returns: other threads must not use relative paths meanwhile.
 * Returns 0, or -1 with @err: the error @in set; the errno of entering @dest ("cd DEST"); EIO
 * with libarchive's message when an entry cannot be written or is refused; BAD_PARAM for a
 * malformed archive; INTERNAL when out of memory.
 */
int sbx_tree_untar(const char *dest, sbx_tree_in_fn in, void *arg, struct sbx_err *err);

/*
 * Upload local directory @local as the guest's tree @remote (transfer.upload_tree: created, or
 * merged into an existing directory) with sbx_tree_tar, @compress on the wire, telling @progress
 * (may be NULL) of the archive bytes sent; the agent's SHA-256 of the archive it received must
 * equal ours. Returns 0 with *@d (may be NULL) read from transfer.done (d->files: entries
 * written), or -1 with @err: the agent's refusal of the request; a failure of the walk or the
 * archive (the agent is then told the archive is incomplete, sbx_upload_abort); the transfer's
 * failure from transfer.done (also when the agent cancelled the stream); the digest checks of
 * sbx_upload_end; transport errors.
 */
int sbx_upload_tree(struct sbx_client *c, const char *local, const char *remote,
                    const char *compress, sbx_progress_fn progress, void *arg,
                    struct sbx_transfer_done *d, struct sbx_err *err);

/*
 * Download the guest's tree @remote (transfer.download_tree, @compress on the wire) into local
 * directory @local, created (mode 0755 before the umask) unless it exists, with sbx_tree_untar;
 * @progress (may be NULL) is told of the archive bytes received. Returns 0, or -1 with @err: the
 * agent's refusal; "mkdir LOCAL" with its errno; the errors of sbx_tree_untar, the stream's own
 * error among them; transport errors. On failure the stream is cancelled and what was unpacked
 * so far stays.
 */
int sbx_download_tree(struct sbx_client *c, const char *remote, const char *local,
                      const char *compress, sbx_progress_fn progress, void *arg,
                      struct sbx_err *err);

#endif /* SBX_TREE_H */
