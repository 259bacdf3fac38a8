/*
 * The file-system JSON-RPC methods of the Deno Sandbox SDK (docs/GATEWAY.md):
 * the 24 path methods (m_fs.c), the 13 file-handle methods (m_fh.c), and walk / expandGlob
 * (walk.c), each a gw_method_fn translating one SDK call onto the agent's fs / transfer families
 * (PROTOCOL.md §17, §18). Also the small pure helpers they share (dates, FileInfo, lossy UTF-8,
 * base64), declared here so that tests/gateway/test_fsmap.c can reach them.
 */
#ifndef SBX_GW_M_FS_H
#define SBX_GW_M_FS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gw.h"

/* Whole-file replies (readFile, readTextFile) carry at most this much file data: the SDK's
 * 100 MiB message cap less base64's growth. */
#define GW_FS_READ_MAX (64u << 20)
/* Entries one readDir reply carries at most, and the bytes they may take: each counts its name
 * (as JSON text) and GW_FS_ENTRY_COST for the rest of its JSON and what holding it costs. */
#define GW_FS_READDIR_MAX   262144u
#define GW_FS_READDIR_BYTES (64u << 20)
#define GW_FS_ENTRY_COST    256u
/* Matches one expandGlob collects (it sorts them before sending), and the bytes they may take:
 * each counts its path, its name and GW_FS_ENTRY_COST. */
#define GW_FS_GLOB_MAX   1000000u
#define GW_FS_GLOB_BYTES (64u << 20)
/* Bytes of streamed writeFile content buffered toward the agent above which the WebSocket is
 * held; and the hard cap of that buffer. */
#define GW_FS_WRITE_HIGH GW_AGENT_QUEUE_HIGH
#define GW_FS_WRITE_MAX  GW_SINK_MAX

/* --- path methods (m_fs.c) ---------------------------------------------------------------- */

void gw_m_read_file(struct gw_call *call, json_t *params);
void gw_m_read_text_file(struct gw_call *call, json_t *params);
void gw_m_write_file(struct gw_call *call, json_t *params);
void gw_m_write_text_file(struct gw_call *call, json_t *params);
void gw_m_read_dir(struct gw_call *call, json_t *params);
void gw_m_remove(struct gw_call *call, json_t *params);
void gw_m_mkdir(struct gw_call *call, json_t *params);
void gw_m_rename(struct gw_call *call, json_t *params);
void gw_m_stat(struct gw_call *call, json_t *params);
void gw_m_lstat(struct gw_call *call, json_t *params);
void gw_m_chmod(struct gw_call *call, json_t *params);
void gw_m_chown(struct gw_call *call, json_t *params);
void gw_m_copy_file(struct gw_call *call, json_t *params);
void gw_m_link(struct gw_call *call, json_t *params);
void gw_m_symlink(struct gw_call *call, json_t *params);
void gw_m_read_link(struct gw_call *call, json_t *params);
void gw_m_real_path(struct gw_call *call, json_t *params);
void gw_m_make_temp_dir(struct gw_call *call, json_t *params);
void gw_m_make_temp_file(struct gw_call *call, json_t *params);
void gw_m_truncate(struct gw_call *call, json_t *params);
void gw_m_umask(struct gw_call *call, json_t *params);
void gw_m_utime(struct gw_call *call, json_t *params);

/* --- walk and expandGlob (walk.c) ---------------------------------------------------------- */

void gw_m_walk(struct gw_call *call, json_t *params);
void gw_m_expand_glob(struct gw_call *call, json_t *params);

/* --- file handles (m_fh.c) ----------------------------------------------------------------- */

void gw_m_open(struct gw_call *call, json_t *params);
void gw_m_create(struct gw_call *call, json_t *params);
void gw_m_file_close(struct gw_call *call, json_t *params);
void gw_m_file_read(struct gw_call *call, json_t *params);
void gw_m_file_write(struct gw_call *call, json_t *params);
void gw_m_file_seek(struct gw_call *call, json_t *params);
void gw_m_file_stat(struct gw_call *call, json_t *params);
void gw_m_file_sync(struct gw_call *call, json_t *params);
void gw_m_file_sync_data(struct gw_call *call, json_t *params);
void gw_m_file_truncate(struct gw_call *call, json_t *params);
void gw_m_file_utime(struct gw_call *call, json_t *params);
void gw_m_file_lock(struct gw_call *call, json_t *params);
void gw_m_file_unlock(struct gw_call *call, json_t *params);

/* The rows of the method table (names exactly as the SDK sends them). */
#define GW_FS_METHODS                                                                              \
    { "readFile", gw_m_read_file }, { "readTextFile", gw_m_read_text_file },                       \
        { "writeFile", gw_m_write_file }, { "writeTextFile", gw_m_write_text_file },               \
        { "readDir", gw_m_read_dir }, { "remove", gw_m_remove }, { "mkdir", gw_m_mkdir },          \
        { "rename", gw_m_rename }, { "stat", gw_m_stat }, { "lstat", gw_m_lstat },                 \
        { "chmod", gw_m_chmod }, { "chown", gw_m_chown }, { "copyFile", gw_m_copy_file },          \
        { "link", gw_m_link }, { "symlink", gw_m_symlink }, { "readLink", gw_m_read_link },        \
        { "realPath", gw_m_real_path }, { "makeTempDir", gw_m_make_temp_dir },                     \
        { "makeTempFile", gw_m_make_temp_file }, { "truncate", gw_m_truncate },                    \
        { "umask", gw_m_umask }, { "utime", gw_m_utime }, { "walk", gw_m_walk },                   \
        { "expandGlob", gw_m_expand_glob }, { "open", gw_m_open }, { "create", gw_m_create },      \
        { "fileClose", gw_m_file_close }, { "fileRead", gw_m_file_read },                          \
        { "fileWrite", gw_m_file_write }, { "fileSeek", gw_m_file_seek },                          \
        { "fileStat", gw_m_file_stat }, { "fileSync", gw_m_file_sync },                            \
        { "fileSyncData", gw_m_file_sync_data }, { "fileTruncate", gw_m_file_truncate },           \
        { "fileUtime", gw_m_file_utime }, { "fileLock", gw_m_file_lock },                          \
        { "fileUnlock", gw_m_file_unlock },

/* --- shared helpers (m_fs.c; pure unless said otherwise) ----------------------------------- */

/* Format @ns (nanoseconds since the epoch) as JavaScript's Date.prototype.toISOString does,
 * "2026-12-06T13:37:27.123Z" (years outside 0..9999 as "+012345" / "-000001"), into @out of
 * @outlen bytes (32 are always enough). Returns 0, or -1 when @outlen is too small. */
int gw_fs_iso_date(int64_t ns, char *out, size_t outlen);

/* Parse what Date.prototype.toISOString writes ("YYYY-MM-DDTHH:MM:SS.sssZ", also without the
 * fraction, with 1..9 fraction digits, a "+HH:MM"/"-HH:MM" offset, or a six-digit signed year)
 * into nanoseconds since the epoch. Returns 0, or -1 for anything else or out of range. */
int gw_fs_iso_parse(const char *s, int64_t *ns);

/* A copy of @p[0..n) as valid UTF-8, each maximal invalid subsequence replaced by U+FFFD as
 * WHATWG's decoder (TextDecoder) does; NUL-terminated, length in *@outlen. NULL when out of
 * memory or the result would exceed SIZE_MAX / 3. The caller frees. */
char *gw_fs_utf8_lossy(const char *p, size_t n, size_t *outlen);

/* A JSON string of @p[0..n) decoded lossily (gw_fs_utf8_lossy); NULL when out of memory. */
json_t *gw_fs_json_lossy(const char *p, size_t n);

/* Standard base64 of @p[0..n), NUL-terminated (length in *@outlen, may be NULL), or NULL when out
 * of memory. The caller frees. */
char *gw_fs_b64_encode(const void *p, size_t n, size_t *outlen);

/* Decode standard base64 @s[0..n) (at most @max decoded bytes) into a new buffer (*@out, *@outlen;
 * the caller frees; a 1-byte buffer for empty input). Returns 0, or -1 when it is not base64,
 * too long, or memory ran out. */
int gw_fs_b64_decode(const char *s, size_t n, size_t max, uint8_t **out, size_t *outlen);

/* The SDK's FileInfo (docs/GATEWAY.md) for an agent FileInfo: every field present, the
 * four dates as ISO strings (no birthtime: the epoch). NULL when out of memory. */
json_t *gw_fs_fileinfo_json(const struct sbx_fileinfo *fi);

/* The agent connection of @call's session, or NULL having answered @call with an error. */
struct sbx_conn *gw_fs_conn(struct gw_call *call);

#endif /* SBX_GW_M_FS_H */
