/*
 * The SDK's 13 file-handle methods (docs/GATEWAY.md) on the agent's handles
 * (PROTOCOL.md §17.7). fileHandleId is the agent's fh: handles belong to the agent connection,
 * which is the session's, so they die with the WebSocket as the SDK expects. fileUtime,
 * fileLock and fileUnlock are fs.futimes, fs.flock and fs.funlock (NotSupported, from libsbx, on
 * an agent without capabilities "fs.futimes" and "fs.lock").
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "m_fs.h"

/* The largest fs.read asked for at once (the agent caps it at chunk_max anyway). */
#define FH_READ_MAX (16u << 20)

static void fh_fail(struct gw_call *call, const struct sbx_err *e)
{
    if (strcmp(e->code, SBX_E_NOT_FOUND) == 0) {
        gw_call_fail(call, "BadResource", NULL, "Bad resource ID");
        return;
    }
    gw_call_fail_sbx(call, e, NULL, NULL);
}

static void fh_sent(struct gw_call *call, int rc, const struct sbx_err *err)
{
    if (rc < 0) {
        gw_call_unexpect(call);
        fh_fail(call, err);
    }
}

static int param_fh(struct gw_call *call, json_t *params, uint32_t *fh)
{
    int64_t v;
    if (gw_param_int(call, params, "fileHandleId", true, 0, UINT32_MAX, 0, &v) < 0) {
        return -1;
    }
    *fh = (uint32_t)v;
    return 0;
}

static void fh_done_void(struct gw_call *call, const struct sbx_event *ev)
{
    if (ev->error != NULL) {
        fh_fail(call, ev->error);
        return;
    }
    gw_call_ok(call, NULL);
}

static size_t chunk_of(struct sbx_conn *c)
{
    const struct sbx_peer *peer = sbx_conn_peer(c);
    if (peer != NULL && peer->limits.chunk_max > 0 &&
        peer->limits.chunk_max < SBX_STREAM_CHUNK_MAX) {
        return (size_t)peer->limits.chunk_max;
    }
    return SBX_STREAM_CHUNK_MAX;
}

/* --- open / create --------------------------------------------------------------------------- */

static void opened(struct gw_call *call, const struct sbx_event *ev)
{
    const char *path = call->data;
    if (ev->error != NULL) {
        gw_call_fail_sbx(call, ev->error, "open", path);
        return;
    }
    const msgpack_object *fh = ev->result != NULL ? sbx_obj_get(ev->result, "fh") : NULL;
    if (fh == NULL || fh->type != MSGPACK_OBJECT_POSITIVE_INTEGER || fh->via.u64 > UINT32_MAX) {
        gw_call_fail(call, "InvalidData", NULL, "open: the agent sent no file handle");
        return;
    }
    gw_call_ok(call, json_pack("{s:I}", "fileHandleId", (json_int_t)fh->via.u64));
}

static void open_path(struct gw_call *call, const char *path, unsigned flags, int mode)
{
    struct sbx_conn *c;
    struct sbx_err err;
    char *copy = strdup(path);
    if (copy == NULL) {
        gw_call_fail(call, "Error", "ENOMEM", "open: out of memory");
        return;
    }
    call->data = copy;
    call->data_free = free;
    if ((c = gw_fs_conn(call)) == NULL) {
        return;
    }
    void *u = gw_call_expect(call, opened);
    if (sbx_fs_open(c, path, flags, mode, gw_session_cwd(call->s), u, NULL, &err) < 0) {
        gw_call_unexpect(call);
        gw_call_fail_sbx(call, &err, "open", path);
    }
}

/* open {path, options?:{read?, write?, append?, truncate?, create?, createNew?, mode?}} ->
 * {fileHandleId}. No options: read only (Deno's default); Rust's OpenOptions checks apply. */
void gw_m_open(struct gw_call *call, json_t *params)
{
    const char *path;
    json_t *o;
    bool rd, wr, ap, tr, cr, cn;
    int64_t mode;
    if (gw_param_str(call, params, "path", true, &path) < 0 ||
        gw_param_obj(call, params, "options", false, &o) < 0 ||
        gw_param_bool(call, o, "read", o == NULL, &rd) < 0 ||
        gw_param_bool(call, o, "write", false, &wr) < 0 ||
        gw_param_bool(call, o, "append", false, &ap) < 0 ||
        gw_param_bool(call, o, "truncate", false, &tr) < 0 ||
        gw_param_bool(call, o, "create", false, &cr) < 0 ||
        gw_param_bool(call, o, "createNew", false, &cn) < 0 ||
        gw_param_int(call, o, "mode", false, 0, 07777, -1, &mode) < 0) {
        return;
    }
    /* std::fs::OpenOptions: access needed; create/truncate need write access; no truncate with
     * append. Each is EINVAL there. */
    if ((!rd && !wr && !ap) || ((tr || cr || cn) && !wr && !ap) || (tr && ap)) {
        gw_call_fail(call, "TypeError", "EINVAL", "Invalid argument (os error 22): open '%s'",
                     path);
        return;
    }
    unsigned flags = (rd ? SBX_FS_O_READ : 0) | (wr ? SBX_FS_O_WRITE : 0) |
                     (ap ? SBX_FS_O_APPEND : 0) | (tr && !cn ? SBX_FS_O_TRUNCATE : 0) |
                     (cr || cn ? SBX_FS_O_CREATE : 0) | (cn ? SBX_FS_O_EXCLUSIVE : 0);
    open_path(call, path, flags, (int)mode);
}

/* create {path} -> {fileHandleId}: read, write, create, truncate (Deno.create). */
void gw_m_create(struct gw_call *call, json_t *params)
{
    const char *path;
    if (gw_param_str(call, params, "path", true, &path) < 0) {
        return;
    }
    open_path(call, path, SBX_FS_O_READ | SBX_FS_O_WRITE | SBX_FS_O_CREATE | SBX_FS_O_TRUNCATE, -1);
}

/* --- read / write ---------------------------------------------------------------------------- */

static void read_done(struct gw_call *call, const struct sbx_event *ev)
{
    const char *p;
    size_t n;
    if (ev->error != NULL) {
        fh_fail(call, ev->error);
        return;
    }
    const msgpack_object *d = ev->result != NULL ? sbx_obj_get(ev->result, "data") : NULL;
    if (d == NULL || !sbx_obj_bytes(d, &p, &n)) {
        gw_call_fail(call, "InvalidData", NULL, "fileRead: the agent sent no data");
        return;
    }
    if (n == 0) {
        gw_call_ok(call, json_pack("{s:n}", "data")); /* end of file */
        return;
    }
    size_t blen;
    char *b = gw_fs_b64_encode(p, n, &blen);
    json_t *v = b != NULL ? json_stringn_nocheck(b, blen) : NULL;
    free(b);
    if (v == NULL) {
        gw_call_fail(call, "Error", "ENOMEM", "fileRead: out of memory");
        return;
    }
    gw_call_ok(call, json_pack("{s:o}", "data", v));
}

/* fileRead {fileHandleId, length} -> {data: base64 | null at end of file}. A short read is
 * normal; length 0 reads nothing ("", not EOF). */
void gw_m_file_read(struct gw_call *call, json_t *params)
{
    uint32_t fh;
    int64_t len;
    struct sbx_conn *c;
    struct sbx_err err;
    if (param_fh(call, params, &fh) < 0 ||
        gw_param_int(call, params, "length", true, 0, INT64_MAX, 0, &len) < 0) {
        return;
    }
    if (len == 0) {
        gw_call_ok(call, json_pack("{s:s}", "data", ""));
        return;
    }
    if ((c = gw_fs_conn(call)) == NULL) {
        return;
    }
    uint64_t n = (uint64_t)len < FH_READ_MAX ? (uint64_t)len : FH_READ_MAX;
    void *u = gw_call_expect(call, read_done);
    fh_sent(call, sbx_fs_read(c, fh, n, NULL, u, NULL, &err), &err);
}

struct fwrite_st {
    uint32_t fh;
    uint8_t *buf;
    size_t off, len, chunk;
};

static void fwrite_free(void *p)
{
    struct fwrite_st *st = p;
    if (st != NULL) {
        free(st->buf);
        free(st);
    }
}

static void fwrite_next(struct gw_call *call);

static void fwrite_done(struct gw_call *call, const struct sbx_event *ev)
{
    struct fwrite_st *st = call->data;
    if (ev->error != NULL) {
        if (st->off > 0) {
            /* A short write: the caller learns of the failure on its next write. */
            gw_call_ok(call, json_pack("{s:I}", "bytesWritten", (json_int_t)st->off));
        } else {
            fh_fail(call, ev->error);
        }
        return;
    }
    const msgpack_object *w = ev->result != NULL ? sbx_obj_get(ev->result, "written") : NULL;
    if (w == NULL || w->type != MSGPACK_OBJECT_POSITIVE_INTEGER || w->via.u64 > st->len - st->off) {
        gw_call_fail(call, "InvalidData", NULL, "fileWrite: a malformed result from the agent");
        return;
    }
    st->off += (size_t)w->via.u64;
    if (w->via.u64 == 0 || st->off == st->len) {
        gw_call_ok(call, json_pack("{s:I}", "bytesWritten", (json_int_t)st->off));
        return;
    }
    fwrite_next(call);
}

static void fwrite_next(struct gw_call *call)
{
    struct fwrite_st *st = call->data;
    struct sbx_conn *c;
    struct sbx_err err;
    if ((c = gw_fs_conn(call)) == NULL) {
        return;
    }
    size_t n = st->len - st->off < st->chunk ? st->len - st->off : st->chunk;
    void *u = gw_call_expect(call, fwrite_done);
    fh_sent(call, sbx_fs_write(c, st->fh, st->buf + st->off, n, NULL, u, NULL, &err), &err);
}

/* fileWrite {fileHandleId, data: base64} -> {bytesWritten}: the whole buffer in chunk_max
 * writes (short only when a later chunk fails). */
void gw_m_file_write(struct gw_call *call, json_t *params)
{
    uint32_t fh;
    const char *data;
    if (param_fh(call, params, &fh) < 0 || gw_param_str(call, params, "data", true, &data) < 0) {
        return;
    }
    struct fwrite_st *st = calloc(1, sizeof(*st));
    if (st == NULL) {
        gw_call_fail(call, "Error", "ENOMEM", "fileWrite: out of memory");
        return;
    }
    call->data = st;
    call->data_free = fwrite_free;
    st->fh = fh;
    if (gw_fs_b64_decode(data, strlen(data), GW_WS_MSG_MAX, &st->buf, &st->len) < 0) {
        gw_call_fail(call, "TypeError", NULL, "fileWrite: 'data' is not valid base64");
        return;
    }
    if (st->len == 0) {
        gw_call_ok(call, json_pack("{s:i}", "bytesWritten", 0));
        return;
    }
    struct sbx_conn *c = gw_fs_conn(call);
    if (c == NULL) {
        return;
    }
    st->chunk = chunk_of(c);
    fwrite_next(call);
}

/* --- seek, stat, sync, truncate, close ------------------------------------------------------- */

static void seek_done(struct gw_call *call, const struct sbx_event *ev)
{
    if (ev->error != NULL) {
        fh_fail(call, ev->error);
        return;
    }
    const msgpack_object *p = ev->result != NULL ? sbx_obj_get(ev->result, "position") : NULL;
    if (p == NULL || p->type != MSGPACK_OBJECT_POSITIVE_INTEGER || p->via.u64 > INT64_MAX) {
        gw_call_fail(call, "InvalidData", NULL, "fileSeek: the agent sent no position");
        return;
    }
    gw_call_ok(call, json_pack("{s:I}", "position", (json_int_t)p->via.u64));
}

/* The seek offset: a JSON integer, an integral number, or a decimal string (a bigint). */
static int param_offset(struct gw_call *call, json_t *params, int64_t *off)
{
    json_t *v = json_object_get(params, "offset");
    if (json_is_integer(v) || json_is_real(v)) {
        if (gw_json_int64(v, off) == 0) {
            return 0;
        }
    } else if (json_is_string(v)) {
        const char *s = json_string_value(v);
        char *end;
        errno = 0;
        long long x = strtoll(s, &end, 10);
        if (errno == 0 && end != s && *end == '\0' && s[0] != ' ' && s[0] != '+') {
            *off = x;
            return 0;
        }
    }
    gw_call_fail(call, "TypeError", NULL,
                 "fileSeek: 'offset' must be an integer within 64 bits (a number or a decimal "
                 "string)");
    return -1;
}

/* fileSeek {fileHandleId, offset, whence: 0|1|2} -> {position}. */
void gw_m_file_seek(struct gw_call *call, json_t *params)
{
    static const char *const whences[] = { "set", "cur", "end" };
    uint32_t fh;
    int64_t off, whence;
    struct sbx_conn *c;
    struct sbx_err err;
    if (param_fh(call, params, &fh) < 0 || param_offset(call, params, &off) < 0 ||
        gw_param_int(call, params, "whence", false, 0, 2, 0, &whence) < 0 ||
        (c = gw_fs_conn(call)) == NULL) {
        return;
    }
    void *u = gw_call_expect(call, seek_done);
    fh_sent(call, sbx_fs_seek(c, fh, off, whences[whence], u, NULL, &err), &err);
}

static void fstat_done(struct gw_call *call, const struct sbx_event *ev)
{
    if (ev->error != NULL) {
        fh_fail(call, ev->error);
        return;
    }
    json_t *j = ev->rec == SBX_REC_FILEINFO ? gw_fs_fileinfo_json(&ev->r.fileinfo) : NULL;
    if (j == NULL) {
        gw_call_fail(call, "InvalidData", NULL, "fileStat: no FileInfo from the agent");
        return;
    }
    gw_call_ok(call, j);
}

/* fileStat {fileHandleId} -> FileInfo. */
void gw_m_file_stat(struct gw_call *call, json_t *params)
{
    uint32_t fh;
    struct sbx_conn *c;
    struct sbx_err err;
    if (param_fh(call, params, &fh) < 0 || (c = gw_fs_conn(call)) == NULL) {
        return;
    }
    void *u = gw_call_expect(call, fstat_done);
    fh_sent(call, sbx_fs_fstat(c, fh, u, NULL, &err), &err);
}

static void sync_common(struct gw_call *call, json_t *params, bool data_only)
{
    uint32_t fh;
    struct sbx_conn *c;
    struct sbx_err err;
    if (param_fh(call, params, &fh) < 0 || (c = gw_fs_conn(call)) == NULL) {
        return;
    }
    void *u = gw_call_expect(call, fh_done_void);
    fh_sent(call, sbx_fs_fsync(c, fh, data_only, u, NULL, &err), &err);
}

/* fileSync {fileHandleId} -> null (fsync). */
void gw_m_file_sync(struct gw_call *call, json_t *params)
{
    sync_common(call, params, false);
}

/* fileSyncData {fileHandleId} -> null (fdatasync). */
void gw_m_file_sync_data(struct gw_call *call, json_t *params)
{
    sync_common(call, params, true);
}

/* fileTruncate {fileHandleId, len?} -> null (len 0 by default). */
void gw_m_file_truncate(struct gw_call *call, json_t *params)
{
    uint32_t fh;
    int64_t len;
    struct sbx_conn *c;
    struct sbx_err err;
    if (param_fh(call, params, &fh) < 0 ||
        gw_param_int(call, params, "len", false, 0, INT64_MAX, 0, &len) < 0 ||
        (c = gw_fs_conn(call)) == NULL) {
        return;
    }
    void *u = gw_call_expect(call, fh_done_void);
    fh_sent(call, sbx_fs_ftruncate(c, fh, (uint64_t)len, u, NULL, &err), &err);
}

/* fileClose {fileHandleId} -> null. */
void gw_m_file_close(struct gw_call *call, json_t *params)
{
    uint32_t fh;
    struct sbx_conn *c;
    struct sbx_err err;
    if (param_fh(call, params, &fh) < 0 || (c = gw_fs_conn(call)) == NULL) {
        return;
    }
    void *u = gw_call_expect(call, fh_done_void);
    fh_sent(call, sbx_fs_close(c, fh, u, NULL, &err), &err);
}

/* --- times and locks ------------------------------------------------------------------------ */

/* fileUtime {fileHandleId, atime: ISO, mtime: ISO} -> null (fs.futimes). */
void gw_m_file_utime(struct gw_call *call, json_t *params)
{
    uint32_t fh;
    const char *a, *m;
    int64_t at, mt;
    struct sbx_conn *c;
    struct sbx_err err;
    if (param_fh(call, params, &fh) < 0 || gw_param_str(call, params, "atime", true, &a) < 0 ||
        gw_param_str(call, params, "mtime", true, &m) < 0) {
        return;
    }
    if (gw_fs_iso_parse(a, &at) < 0 || gw_fs_iso_parse(m, &mt) < 0) {
        gw_call_fail(call, "TypeError", NULL, "fileUtime: atime and mtime must be ISO dates");
        return;
    }
    if ((c = gw_fs_conn(call)) == NULL) {
        return;
    }
    void *u = gw_call_expect(call, fh_done_void);
    fh_sent(call, sbx_fs_futimes(c, fh, &at, &mt, u, NULL, &err), &err);
}

/* fileLock {fileHandleId, exclusive?} -> null (fs.flock with wait: Deno's lock() waits for the
 * lock; the agent retries on a timer, and drops the wait when the WebSocket, hence the agent
 * connection, closes). */
void gw_m_file_lock(struct gw_call *call, json_t *params)
{
    uint32_t fh;
    bool excl;
    struct sbx_conn *c;
    struct sbx_err err;
    if (param_fh(call, params, &fh) < 0 ||
        gw_param_bool(call, params, "exclusive", false, &excl) < 0 ||
        (c = gw_fs_conn(call)) == NULL) {
        return;
    }
    void *u = gw_call_expect(call, fh_done_void);
    fh_sent(call, sbx_fs_flock(c, fh, excl, true, u, NULL, &err), &err);
}

/* fileUnlock {fileHandleId} -> null (fs.funlock). */
void gw_m_file_unlock(struct gw_call *call, json_t *params)
{
    uint32_t fh;
    struct sbx_conn *c;
    struct sbx_err err;
    if (param_fh(call, params, &fh) < 0 || (c = gw_fs_conn(call)) == NULL) {
        return;
    }
    void *u = gw_call_expect(call, fh_done_void);
    fh_sent(call, sbx_fs_funlock(c, fh, u, NULL, &err), &err);
}
