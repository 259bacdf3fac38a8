/*
 * The SDK's 24 path-based file-system methods (docs/GATEWAY.md) on the agent's fs
 * family (PROTOCOL.md §17), and the pure helpers the fs files share (dates, FileInfo, lossy
 * UTF-8, base64). walk and expandGlob live in walk.c.
 *
 * Whole files move as follows. readFile / readTextFile: transfer.download of at most
 * GW_FS_READ_MAX + 1 bytes, collected with gw_session_collect. writeFile / writeTextFile:
 * fs.open with the flags Deno's writeFile uses, then sequential fs.write of chunk_max bytes, then
 * fs.close (and fs.chmod when a mode was given, as Deno always applies it). The agent's
 * transfer.upload was not used: it replaces the file by a new inode (hard links broken, owner
 * reset, a symlink at the path replaced instead of followed), where Deno writes the existing file
 * in place; open/write keeps Deno's semantics for every option (append, create:false, createNew)
 * with one code path, and every write is confirmed by its response before the reply.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "m_fs.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nettle/base64.h>

/* --- pure helpers ---------------------------------------------------------------------------- */

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

/* Howard Hinnant's civil_from_days / days_from_civil (proleptic Gregorian). */
static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

int gw_fs_iso_date(int64_t ns, char *out, size_t outlen)
{
    int64_t ms = floor_div(ns, 1000000);
    int64_t secs = floor_div(ms, 1000);
    int64_t days = floor_div(secs, 86400);
    int64_t sod = secs - days * 86400;
    int64_t y;
    unsigned mo, d;
    civil_from_days(days, &y, &mo, &d);
    char year[24];
    if (y >= 0 && y <= 9999) {
        (void)snprintf(year, sizeof(year), "%04lld", (long long)y);
    } else {
        (void)snprintf(year, sizeof(year), "%c%06lld", y < 0 ? '-' : '+',
                       (long long)(y < 0 ? -y : y));
    }
    int n = snprintf(out, outlen, "%s-%02u-%02uT%02u:%02u:%02u.%03uZ", year, mo, d,
                     (unsigned)(sod / 3600), (unsigned)(sod / 60 % 60), (unsigned)(sod % 60),
                     (unsigned)(ms - secs * 1000));
    return (n < 0 || (size_t)n >= outlen) ? -1 : 0;
}

/* @n decimal digits at @s into *@v; -1 unless all are digits. */
static int digits(const char *s, int n, int64_t *v)
{
    int64_t r = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return -1;
        }
        r = r * 10 + (s[i] - '0');
    }
    *v = r;
    return 0;
}

int gw_fs_iso_parse(const char *s, int64_t *ns)
{
    int64_t y, mo, d, h, mi, sec, frac = 0;
    int64_t sign = 1;
    if (s == NULL) {
        return -1;
    }
    if (s[0] == '+' || s[0] == '-') {
        sign = s[0] == '-' ? -1 : 1;
        if (digits(s + 1, 6, &y) < 0) {
            return -1;
        }
        y *= sign;
        s += 7;
    } else {
        if (digits(s, 4, &y) < 0) {
            return -1;
        }
        s += 4;
    }
    if (s[0] != '-' || digits(s + 1, 2, &mo) < 0 || s[3] != '-' || digits(s + 4, 2, &d) < 0 ||
        s[6] != 'T' || digits(s + 7, 2, &h) < 0 || s[9] != ':' || digits(s + 10, 2, &mi) < 0 ||
        s[12] != ':' || digits(s + 13, 2, &sec) < 0) {
        return -1;
    }
    s += 15;
    if (s[0] == '.') {
        int nd = 0;
        s++;
        while (s[nd] >= '0' && s[nd] <= '9') {
            nd++;
        }
        if (nd < 1 || nd > 9 || digits(s, nd, &frac) < 0) {
            return -1;
        }
        for (int i = nd; i < 9; i++) {
            frac *= 10;
        }
        s += nd;
    }
    int64_t off = 0;
    if (s[0] == 'Z' && s[1] == '\0') {
        off = 0;
    } else if ((s[0] == '+' || s[0] == '-') && s[3] == ':' && s[6] == '\0') {
        int64_t oh, om;
        if (digits(s + 1, 2, &oh) < 0 || digits(s + 4, 2, &om) < 0 || oh > 23 || om > 59) {
            return -1;
        }
        off = (oh * 60 + om) * 60 * (s[0] == '-' ? -1 : 1);
    } else {
        return -1;
    }
    static const unsigned mdays[] = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || (mo == 2 && d == 29 && !leap) ||
        h > 24 || mi > 59 || sec > 59 || (h == 24 && (mi != 0 || sec != 0 || frac != 0))) {
        return -1;
    }
    int64_t days = days_from_civil(y, (unsigned)mo, (unsigned)d);
    int64_t secs = days * 86400 + h * 3600 + mi * 60 + sec - off;
    /* int64 nanoseconds reach about 292 years either side of 1970. */
    if (secs > INT64_MAX / 1000000000 - 1 || secs < INT64_MIN / 1000000000 + 1) {
        return -1;
    }
    *ns = secs * 1000000000 + frac;
    return 0;
}

/* The length of the valid UTF-8 sequence at @p (1..4), or 0 with *@bad the length of the
 * maximal subpart to replace (WHATWG: at least 1). */
static size_t utf8_seq(const unsigned char *p, size_t n, size_t *bad)
{
    unsigned char c = p[0];
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c < 0x80) {
        return 1;
    } else if (c >= 0xC2 && c <= 0xDF) {
        need = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        lo = c == 0xE0 ? 0xA0 : 0x80;
        hi = c == 0xED ? 0x9F : 0xBF;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        lo = c == 0xF0 ? 0x90 : 0x80;
        hi = c == 0xF4 ? 0x8F : 0xBF;
    } else {
        *bad = 1;
        return 0;
    }
    for (size_t i = 1; i <= need; i++) {
        if (i >= n || p[i] < lo || p[i] > hi) {
            *bad = i;
            return 0;
        }
        lo = 0x80;
        hi = 0xBF;
    }
    return need + 1;
}

char *gw_fs_utf8_lossy(const char *p, size_t n, size_t *outlen)
{
    const unsigned char *u = (const unsigned char *)p;
    if (n > (SIZE_MAX - 1) / 3) {
        return NULL;
    }
    /* Valid input is copied as is; a replacement (3 bytes) replaces at least 1 byte. */
    char *out = malloc(n * 3 + 1);
    if (out == NULL) {
        return NULL;
    }
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t bad = 0;
        size_t len = utf8_seq(u + i, n - i, &bad);
        if (len > 0) {
            memcpy(out + o, u + i, len);
            o += len;
            i += len;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += bad;
        }
    }
    out[o] = '\0';
    *outlen = o;
    return out;
}

json_t *gw_fs_json_lossy(const char *p, size_t n)
{
    size_t len;
    char *s = gw_fs_utf8_lossy(p, n, &len);
    if (s == NULL) {
        return NULL;
    }
    json_t *j = json_stringn(s, len);
    free(s);
    return j;
}

char *gw_fs_b64_encode(const void *p, size_t n, size_t *outlen)
{
    if (n > (SIZE_MAX / 4) * 3 - 8) {
        return NULL;
    }
    struct base64_encode_ctx ctx;
    char *out = malloc(BASE64_ENCODE_LENGTH(n) + BASE64_ENCODE_FINAL_LENGTH + 1);
    if (out == NULL) {
        return NULL;
    }
    base64_encode_init(&ctx);
    size_t o = base64_encode_update(&ctx, out, n, p);
    o += base64_encode_final(&ctx, out + o);
    out[o] = '\0';
    if (outlen != NULL) {
        *outlen = o;
    }
    return out;
}

int gw_fs_b64_decode(const char *s, size_t n, size_t max, uint8_t **out, size_t *outlen)
{
    if (BASE64_DECODE_LENGTH(n) > max + 3) {
        return -1;
    }
    struct base64_decode_ctx ctx;
    size_t cap = BASE64_DECODE_LENGTH(n) + 1;
    uint8_t *buf = malloc(cap);
    if (buf == NULL) {
        return -1;
    }
    size_t len = cap;
    base64_decode_init(&ctx);
    if (base64_decode_update(&ctx, &len, buf, n, s) == 0 || base64_decode_final(&ctx) == 0 ||
        len > max) {
        free(buf);
        return -1;
    }
    *out = buf;
    *outlen = len;
    return 0;
}

static json_t *iso_json(int64_t ns)
{
    char buf[40];
    if (gw_fs_iso_date(ns, buf, sizeof(buf)) < 0) {
        return NULL;
    }
    return json_string(buf);
}

json_t *gw_fs_fileinfo_json(const struct sbx_fileinfo *fi)
{
    const char *t = fi->type != NULL ? fi->type : "";
    return json_pack(
        "{s:b,s:b,s:b,s:b,s:b,s:b,s:b,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,"
        "s:o,s:o,s:o,s:o}",
        "isFile", strcmp(t, "file") == 0, "isDirectory", strcmp(t, "dir") == 0, "isSymlink",
        strcmp(t, "symlink") == 0, "isBlockDevice", strcmp(t, "block") == 0, "isCharDevice",
        strcmp(t, "char") == 0, "isFifo", strcmp(t, "fifo") == 0, "isSocket",
        strcmp(t, "socket") == 0, "size", (json_int_t)fi->size, "mode", (json_int_t)fi->mode, "dev",
        (json_int_t)fi->dev, "ino", (json_int_t)fi->ino, "nlink", (json_int_t)fi->nlink, "uid",
        (json_int_t)fi->uid, "gid", (json_int_t)fi->gid, "rdev", (json_int_t)fi->rdev, "blksize",
        (json_int_t)fi->blksize, "blocks", (json_int_t)fi->blocks, "mtime", iso_json(fi->mtime_ns),
        "atime", iso_json(fi->atime_ns), "birthtime",
        iso_json(fi->has_birthtime ? fi->birthtime_ns : 0), "ctime", iso_json(fi->ctime_ns));
}

struct sbx_conn *gw_fs_conn(struct gw_call *call)
{
    struct sbx_conn *c = gw_session_conn(call->s);
    if (c == NULL) {
        gw_call_fail(call, "ConnectionReset", NULL, "%s: the sandbox's agent is not connected",
                     call->method);
    }
    return c;
}

/* --- per-call state of the simple methods: what the error message names ------------------- */

struct fsop {
    const char *op; /* Deno's operation word: "stat", "readfile", ... */
    char *shown;    /* the path as the message shows it: "a" or "a' -> 'b" */
};

static void fsop_free(void *p)
{
    struct fsop *st = p;
    if (st != NULL) {
        free(st->shown);
        free(st);
    }
}

static void fail_oom(struct gw_call *call)
{
    gw_call_fail(call, "Error", "ENOMEM", "%s: out of memory", call->method);
}

/* Attach an fsop to @call. Returns 0, or -1 having answered the call. */
static int fsop_begin(struct gw_call *call, const char *op, const char *path, const char *path2)
{
    struct fsop *st = calloc(1, sizeof(*st));
    if (st == NULL) {
        fail_oom(call);
        return -1;
    }
    st->op = op;
    int n = path2 != NULL ? asprintf(&st->shown, "%s' -> '%s", path, path2)
                          : asprintf(&st->shown, "%s", path != NULL ? path : "");
    if (n < 0) {
        free(st);
        fail_oom(call);
        return -1;
    }
    call->data = st;
    call->data_free = fsop_free;
    return 0;
}

static void fsop_fail(struct gw_call *call, const struct sbx_err *e)
{
    const struct fsop *st = call->data;
    gw_call_fail_sbx(call, e, st != NULL ? st->op : call->method, st != NULL ? st->shown : NULL);
}

/* After a typed call made with gw_call_expect: on a local refusal, undo and answer. */
static void sent(struct gw_call *call, int rc, const struct sbx_err *err)
{
    if (rc < 0) {
        gw_call_unexpect(call);
        fsop_fail(call, err);
    }
}

static void done_void(struct gw_call *call, const struct sbx_event *ev)
{
    if (ev->error != NULL) {
        fsop_fail(call, ev->error);
        return;
    }
    gw_call_ok(call, NULL);
}

static void done_fileinfo(struct gw_call *call, const struct sbx_event *ev)
{
    if (ev->error != NULL) {
        fsop_fail(call, ev->error);
        return;
    }
    if (ev->rec != SBX_REC_FILEINFO) {
        gw_call_fail(call, "InvalidData", NULL, "%s: the agent sent no FileInfo", call->method);
        return;
    }
    json_t *j = gw_fs_fileinfo_json(&ev->r.fileinfo);
    if (j == NULL) {
        fail_oom(call);
        return;
    }
    gw_call_ok(call, j);
}

/* A result {@key: bstr} answered as a JSON string. */
static void done_bstr(struct gw_call *call, const struct sbx_event *ev, const char *key)
{
    const char *p;
    size_t n;
    if (ev->error != NULL) {
        fsop_fail(call, ev->error);
        return;
    }
    const msgpack_object *v = ev->result != NULL ? sbx_obj_get(ev->result, key) : NULL;
    if (v == NULL || !sbx_obj_bytes(v, &p, &n)) {
        gw_call_fail(call, "InvalidData", NULL, "%s: the agent's result has no '%s'", call->method,
                     key);
        return;
    }
    json_t *j = gw_fs_json_lossy(p, n);
    if (j == NULL) {
        fail_oom(call);
        return;
    }
    gw_call_ok(call, j);
}

static void done_target(struct gw_call *call, const struct sbx_event *ev)
{
    done_bstr(call, ev, "target");
}

static void done_path(struct gw_call *call, const struct sbx_event *ev)
{
    done_bstr(call, ev, "path");
}

static const char *cwd_of(struct gw_call *call)
{
    return gw_session_cwd(call->s);
}

/* --- simple path methods -------------------------------------------------------------------- */

static void stat_common(struct gw_call *call, json_t *params, bool lstat)
{
    const char *path;
    struct sbx_conn *c;
    struct sbx_err err;
    if (gw_param_str(call, params, "path", true, &path) < 0 ||
        fsop_begin(call, lstat ? "lstat" : "stat", path, NULL) < 0 ||
        (c = gw_fs_conn(call)) == NULL) {
        return;
    }
    void *u = gw_call_expect(call, done_fileinfo);
    sent(call,
         lstat ? sbx_fs_lstat(c, path, cwd_of(call), u, NULL, &err)
               : sbx_fs_stat(c, path, cwd_of(call), u, NULL, &err),
         &err);
}

/* stat {path} -> FileInfo (follows symlinks). */
void gw_m_stat(struct gw_call *call, json_t *params)
{
    stat_common(call, params, false);
}

/* lstat {path} -> FileInfo (does not follow). */
void gw_m_lstat(struct gw_call *call, json_t *params)
{
    stat_common(call, params, true);
}

/* remove {path, options?:{recursive?}} -> null. */
void gw_m_remove(struct gw_call *call, json_t *params)
{
    const char *path;
    json_t *opts;
    bool rec;
    struct sbx_conn *c;
    struct sbx_err err;
    if (gw_param_str(call, params, "path", true, &path) < 0 ||
        gw_param_obj(call, params, "options", false, &opts) < 0 ||
        gw_param_bool(call, opts, "recursive", false, &rec) < 0 ||
        fsop_begin(call, "remove", path, NULL) < 0 || (c = gw_fs_conn(call)) == NULL) {
        return;
    }
    void *u = gw_call_expect(call, done_void);
    sent(call, sbx_fs_remove(c, path, rec, cwd_of(call), u, NULL, &err), &err);
}

/* mkdir {path, options?:{recursive?, mode?}} -> null; an existing path without recursive is
 * AlreadyExists (the agent's EEXIST). */
void gw_m_mkdir(struct gw_call *call, json_t *params)
{
    const char *path;
    json_t *opts;
    bool rec;
    int64_t mode;
    struct sbx_conn *c;
    struct sbx_err err;
    if (gw_param_str(call, params, "path", true, &path) < 0 ||
        gw_param_obj(call, params, "options", false, &opts) < 0 ||
        gw_param_bool(call, opts, "recursive", false, &rec) < 0 ||
        gw_param_int(call, opts, "mode", false, 0, 07777, -1, &mode) < 0 ||
        fsop_begin(call, "mkdir", path, NULL) < 0 || (c = gw_fs_conn(call)) == NULL) {
        return;
    }
    void *u = gw_call_expect(call, done_void);
    sent(call, sbx_fs_mkdir(c, path, rec, (int)mode, cwd_of(call), u, NULL, &err), &err);
}

/* rename {oldPath, newPath} -> null. */
void gw_m_rename(struct gw_call *call, json_t *params)
{
    const char *from, *to;
    struct sbx_conn *c;
    struct sbx_err err;
    if (gw_param_str(call, params, "oldPath", true, &from) < 0 ||
        gw_param_str(call, params, "newPath", true, &to) < 0 ||
        fsop_begin(call, "rename", from, to) < 0 || (c = gw_fs_conn(call)) == NULL) {
        return;
    }
    void *u = gw_call_expect(call, done_void);
    sent(call, sbx_fs_rename(c, from, to, cwd_of(call), u, NULL, &err), &err);
}

/* chmod {path, mode} -> null. */
void gw_m_chmod(struct gw_call *call, json_t *params)
{
    const char *path;
    int64_t mode;
    struct sbx_conn *c;
    struct sbx_err err;
    if (gw_param_str(call, params, "path", true, &path) < 0 ||
        gw_param_int(call, params, "mode", true, 0, 07777, 0, &mode) < 0 ||
        fsop_begin(call, "chmod", path, NULL) < 0 || (c = gw_fs_conn(call)) == NULL) {
        return;
    }
    void *u = gw_call_expect(call, done_void);
    sent(call, sbx_fs_chmod(c, path, (uint32_t)mode, cwd_of(call), u, NULL, &err), &err);
}

/* chown {path, uid|null, gid|null} -> null (null: unchanged). */
void gw_m_chown(struct gw_call *call, json_t *params)
{
    const char *path;
    int64_t uid, gid;
    struct sbx_conn *c;
    struct sbx_err err;
    if (gw_param_str(call, params, "path", true, &path) < 0 ||
        gw_param_int(call, params, "uid", false, 0, 4294967294LL, -1, &uid) < 0 ||
        gw_param_int(call, params, "gid", false, 0, 4294967294LL, -1, &gid) < 0 ||
        fsop_begin(call, "chown", path, NULL) < 0 || (c = gw_fs_conn(call)) == NULL) {
        return;
    }
    void *u = gw_call_expect(call, done_void);
    sent(call, sbx_fs_chown(c, path, uid, gid, cwd_of(call), u, NULL, &err), &err);
}

/* copyFile {fromPath, toPath} -> null (data and permission bits, as Deno). */
void gw_m_copy_file(struct gw_call *call, json_t *params)
{
    const char *from, *to;
    struct sbx_conn *c;
    struct sbx_err err;
    if (gw_param_str(call, params, "fromPath", true, &from) < 0 ||
        gw_param_str(call, params, "toPath", true, &to) < 0 ||
        fsop_begin(call, "copy", from, to) < 0 || (c = gw_fs_conn(call)) == NULL) {
        return;
    }
    void *u = gw_call_expect(call, done_void);
    sent(call, sbx_fs_copy(c, from, to, false, cwd_of(call), u, NULL, &err), &err);
}

/* link {target, path} -> null (hard link). */
void gw_m_link(struct gw_call *call, json_t *params)
{
    const char *target, *path;
    struct sbx_conn *c;
    struct sbx_err err;
    if (gw_param_str(call, params, "target", true, &target) < 0 ||
        gw_param_str(call, params, "path", true, &path) < 0 ||
        fsop_begin(call, "link", target, path) < 0 || (c = gw_fs_conn(call)) == NULL) {
        return;
    }
    void *u = gw_call_expect(call, done_void);
    sent(call, sbx_fs_link(c, target, path, cwd_of(call), u, NULL, &err), &err);
}

/* symlink {target, path, options?:{type?}} -> null (type matters only on Windows). */
void gw_m_symlink(struct gw_call *call, json_t *params)
{
    const char *target, *path;
    json_t *opts;
    struct sbx_conn *c;
    struct sbx_err err;
    if (gw_param_str(call, params, "target", true, &target) < 0 ||
        gw_param_str(call, params, "path", true, &path) < 0 ||
        gw_param_obj(call, params, "options", false, &opts) < 0 ||
        fsop_begin(call, "symlink", target, path) < 0 || (c = gw_fs_conn(call)) == NULL) {
        return;
    }
    void *u = gw_call_expect(call, done_void);
    sent(call, sbx_fs_symlink(c, target, path, cwd_of(call), u, NULL, &err), &err);
}

/* readLink {path} -> the target. */
void gw_m_read_link(struct gw_call *call, json_t *params)
{
    const char *path;
    struct sbx_conn *c;
    struct sbx_err err;
    if (gw_param_str(call, params, "path", true, &path) < 0 ||
        fsop_begin(call, "readlink", path, NULL) < 0 || (c = gw_fs_conn(call)) == NULL) {
        return;
    }
    void *u = gw_call_expect(call, done_target);
    sent(call, sbx_fs_readlink(c, path, cwd_of(call), u, NULL, &err), &err);
}

/* realPath {path} -> the absolute canonical path. */
void gw_m_real_path(struct gw_call *call, json_t *params)
{
    const char *path;
    struct sbx_conn *c;
    struct sbx_err err;
    if (gw_param_str(call, params, "path", true, &path) < 0 ||
        fsop_begin(call, "realpath", path, NULL) < 0 || (c = gw_fs_conn(call)) == NULL) {
        return;
    }
    void *u = gw_call_expect(call, done_path);
    sent(call, sbx_fs_realpath(c, path, cwd_of(call), u, NULL, &err), &err);
}

static void make_temp(struct gw_call *call, json_t *params, bool dir)
{
    json_t *opts;
    const char *tdir, *prefix, *suffix;
    struct sbx_conn *c;
    struct sbx_err err;
    if (gw_param_obj(call, params, "options", false, &opts) < 0 ||
        gw_param_str(call, opts, "dir", false, &tdir) < 0 ||
        gw_param_str(call, opts, "prefix", false, &prefix) < 0 ||
        gw_param_str(call, opts, "suffix", false, &suffix) < 0 ||
        fsop_begin(call, dir ? "maketempdir" : "maketempfile", tdir != NULL ? tdir : "/tmp", NULL) <
            0 ||
        (c = gw_fs_conn(call)) == NULL) {
        return;
    }
    void *u = gw_call_expect(call, done_path);
    sent(call, sbx_fs_mktemp(c, tdir, prefix, suffix, dir, cwd_of(call), u, NULL, &err), &err);
}

/* makeTempDir {options?:{dir?, prefix?, suffix?}} -> its full path. */
void gw_m_make_temp_dir(struct gw_call *call, json_t *params)
{
    make_temp(call, params, true);
}

/* makeTempFile {options?:{dir?, prefix?, suffix?}} -> its full path. */
void gw_m_make_temp_file(struct gw_call *call, json_t *params)
{
    make_temp(call, params, false);
}

/* truncate {name, length?} -> null. */
void gw_m_truncate(struct gw_call *call, json_t *params)
{
    const char *path;
    int64_t len;
    struct sbx_conn *c;
    struct sbx_err err;
    if (gw_param_str(call, params, "name", true, &path) < 0 ||
        gw_param_int(call, params, "length", false, 0, INT64_MAX, 0, &len) < 0 ||
        fsop_begin(call, "truncate", path, NULL) < 0 || (c = gw_fs_conn(call)) == NULL) {
        return;
    }
    void *u = gw_call_expect(call, done_void);
    sent(call, sbx_fs_truncate(c, path, (uint64_t)len, cwd_of(call), u, NULL, &err), &err);
}

static void umask_done(struct gw_call *call, const struct sbx_event *ev)
{
    if (ev->error != NULL) {
        gw_call_fail_sbx(call, ev->error, "umask", NULL);
        return;
    }
    const msgpack_object *m = ev->result != NULL ? sbx_obj_get(ev->result, "mask") : NULL;
    if (m == NULL || m->type != MSGPACK_OBJECT_POSITIVE_INTEGER || m->via.u64 > 0777) {
        gw_call_fail(call, "InvalidData", NULL, "umask: the agent sent no mask");
        return;
    }
    gw_call_ok(call, json_integer((json_int_t)m->via.u64));
}

/* umask {mask?} -> the previous mask (fs.umask, PROTOCOL.md §17.8): the sandbox-wide umask that
 * new processes and the agent's file creations get; without `mask` it is only read. */
void gw_m_umask(struct gw_call *call, json_t *params)
{
    int64_t mask;
    struct sbx_conn *c;
    struct sbx_err err;
    if (gw_param_int(call, params, "mask", false, 0, 0777, -1, &mask) < 0 ||
        (c = gw_fs_conn(call)) == NULL) {
        return;
    }
    void *u = gw_call_expect(call, umask_done);
    if (sbx_fs_umask(c, (int)mask, u, NULL, &err) < 0) {
        gw_call_unexpect(call);
        gw_call_fail_sbx(call, &err, "umask", NULL);
    }
}

/* Read an ISO date param into nanoseconds. Returns 0, or -1 having answered with a TypeError. */
static int param_date(struct gw_call *call, json_t *params, const char *key, int64_t *ns)
{
    const char *s;
    if (gw_param_str(call, params, key, true, &s) < 0) {
        return -1;
    }
    if (gw_fs_iso_parse(s, ns) < 0) {
        gw_call_fail(call, "TypeError", NULL, "%s: param '%s' is not an ISO date in range: %.64s",
                     call->method, key, s);
        return -1;
    }
    return 0;
}

/* utime {path, atime: ISO, mtime: ISO} -> null. */
void gw_m_utime(struct gw_call *call, json_t *params)
{
    const char *path;
    int64_t at, mt;
    struct sbx_conn *c;
    struct sbx_err err;
    if (gw_param_str(call, params, "path", true, &path) < 0 ||
        param_date(call, params, "atime", &at) < 0 || param_date(call, params, "mtime", &mt) < 0 ||
        fsop_begin(call, "utime", path, NULL) < 0 || (c = gw_fs_conn(call)) == NULL) {
        return;
    }
    void *u = gw_call_expect(call, done_void);
    sent(call, sbx_fs_utime(c, path, &at, &mt, cwd_of(call), u, NULL, &err), &err);
}

/* --- readDir: every page of fs.readdir into one array --------------------------------------- */

struct rdir {
    struct fsop op; /* first: fsop_fail reads it */
    char *path;
    json_t *arr;
    size_t bytes; /* what the entries count toward GW_FS_READDIR_BYTES */
};

static void rdir_free(void *p)
{
    struct rdir *st = p;
    if (st != NULL) {
        free(st->op.shown);
        free(st->path);
        json_decref(st->arr);
        free(st);
    }
}

/* The bytes @jn takes as JSON text in the reply (quotes and escapes: a control character is
 * \u00XX), or @nlen when it is NULL (out of memory, failed below). */
static size_t json_text_len(const json_t *jn, size_t nlen)
{
    if (jn == NULL) {
        return nlen;
    }
    const unsigned char *p = (const unsigned char *)json_string_value(jn);
    size_t n = json_string_length(jn), t = 2;
    for (size_t i = 0; i < n; i++) {
        t += p[i] == '"' || p[i] == '\\' ? 2 : p[i] < 0x20 ? 6 : 1;
    }
    return t;
}

/* Append the entries of one page; -1 having answered the call. */
static int rdir_page(struct gw_call *call, struct rdir *st, const msgpack_object *res)
{
    const msgpack_object *ents = res != NULL ? sbx_obj_get(res, "entries") : NULL;
    if (ents == NULL || ents->type != MSGPACK_OBJECT_ARRAY) {
        gw_call_fail(call, "InvalidData", NULL, "readDir: the agent's result has no entries");
        return -1;
    }
    if (json_array_size(st->arr) + ents->via.array.size > GW_FS_READDIR_MAX) {
        gw_call_fail(call, "Error", "LIMIT",
                     "readDir: '%s' has more than %u entries; use walk({maxDepth: 1}) instead",
                     st->path, GW_FS_READDIR_MAX);
        return -1;
    }
    for (uint32_t i = 0; i < ents->via.array.size; i++) {
        const msgpack_object *e = &ents->via.array.ptr[i];
        const msgpack_object *nm = sbx_obj_get(e, "name");
        const msgpack_object *ty = sbx_obj_get(e, "type");
        const char *name, *type;
        size_t nlen, tlen;
        if (nm == NULL || ty == NULL || !sbx_obj_bytes(nm, &name, &nlen) ||
            !sbx_obj_bytes(ty, &type, &tlen)) {
            gw_call_fail(call, "InvalidData", NULL, "readDir: a malformed entry from the agent");
            return -1;
        }
        json_t *jn = gw_fs_json_lossy(name, nlen);
        st->bytes += json_text_len(jn, nlen) + GW_FS_ENTRY_COST;
        if (st->bytes > GW_FS_READDIR_BYTES) {
            json_decref(jn);
            gw_call_fail(call, "Error", "LIMIT",
                         "readDir: the entries of '%s' take more than %u MiB, the most one reply "
                         "carries; use walk({maxDepth: 1}) instead",
                         st->path, GW_FS_READDIR_BYTES >> 20);
            return -1;
        }
        json_t *o = jn != NULL ? json_pack("{s:o,s:b,s:b,s:b}", "name", jn, "isFile",
                                           tlen == 4 && memcmp(type, "file", 4) == 0, "isDirectory",
                                           tlen == 3 && memcmp(type, "dir", 3) == 0, "isSymlink",
                                           tlen == 7 && memcmp(type, "symlink", 7) == 0)
                               : NULL;
        if (o == NULL || json_array_append_new(st->arr, o) < 0) {
            fail_oom(call);
            return -1;
        }
    }
    return 0;
}

static void rdir_done(struct gw_call *call, const struct sbx_event *ev)
{
    struct rdir *st = call->data;
    struct sbx_conn *c;
    struct sbx_err err;
    if (ev->error != NULL) {
        fsop_fail(call, ev->error);
        return;
    }
    if (rdir_page(call, st, ev->result) < 0) {
        return;
    }
    const msgpack_object *cur = sbx_obj_get(ev->result, "cursor");
    if (cur == NULL || cur->type == MSGPACK_OBJECT_NIL) {
        json_t *arr = st->arr;
        st->arr = NULL;
        gw_call_ok(call, arr);
        return;
    }
    char cursor[512];
    if (sbx_obj_cstr(cur, cursor, sizeof(cursor)) < 0) {
        gw_call_fail(call, "InvalidData", NULL, "readDir: a malformed cursor from the agent");
        return;
    }
    if ((c = gw_fs_conn(call)) == NULL) {
        return;
    }
    void *u = gw_call_expect(call, rdir_done);
    sent(call, sbx_fs_readdir(c, st->path, cursor, 0, cwd_of(call), u, NULL, &err), &err);
}

/* The first page, once the session has room for the listing and its answer. */
static void rdir_start(struct gw_call *call)
{
    struct rdir *st = call->data;
    struct sbx_conn *c;
    struct sbx_err err;
    if ((c = gw_fs_conn(call)) == NULL) {
        return;
    }
    void *u = gw_call_expect(call, rdir_done);
    sent(call, sbx_fs_readdir(c, st->path, NULL, 0, cwd_of(call), u, NULL, &err), &err);
}

/* readDir {path} -> [{name, isFile, isDirectory, isSymlink}] (every page, directory order). It
 * gathers them all before answering: it takes a turn (gw_call_when_room). */
void gw_m_read_dir(struct gw_call *call, json_t *params)
{
    const char *path;
    if (gw_param_str(call, params, "path", true, &path) < 0) {
        return;
    }
    struct rdir *st = calloc(1, sizeof(*st));
    if (st == NULL || (st->path = strdup(path)) == NULL || (st->op.shown = strdup(path)) == NULL ||
        (st->arr = json_array()) == NULL) {
        rdir_free(st);
        fail_oom(call);
        return;
    }
    st->op.op = "readdir";
    call->data = st;
    call->data_free = rdir_free;
    gw_call_when_room(call, rdir_start);
}

/* Hear of abort{abortId} for @call when the request named one (@abort_id >= 0; the SDK counts
 * from 0). session.c's abort matches call->abort_id against abortId + 1 (0: none) but does not
 * set it from the request. */
static void set_abort(struct gw_call *call, int64_t abort_id, void (*fn)(struct gw_call *call))
{
    if (abort_id >= 0) {
        call->abort_id = (uint64_t)abort_id + 1;
        call->on_abort = fn;
    }
}

/* --- readFile / readTextFile: transfer.download collected whole ----------------------------- */

struct rfile {
    struct fsop op;       /* first: fsop_fail reads it */
    int refs;             /* the call's and the sink's */
    struct gw_call *call; /* NULL once the call is gone */
    const char *path;     /* the request's (its params live as long as the call) */
    bool text, aborted;
    uint8_t *buf;
    size_t len, cap;
};

static void rfile_unref(struct rfile *st)
{
    if (--st->refs == 0) {
        free(st->op.shown);
        free(st->buf);
        free(st);
    }
}

static void rfile_call_gone(void *p)
{
    struct rfile *st = p;
    st->call = NULL;
    rfile_unref(st);
}

static void rfile_too_big(struct gw_call *call, const struct rfile *st)
{
    gw_call_fail(call, "Error", "LIMIT",
                 "%s: '%s' is larger than %u MiB, the most one reply carries; read it with "
                 "open() and read() (or stream it) instead",
                 call->method, st->op.shown, GW_FS_READ_MAX >> 20);
}

static void rfile_answer(struct gw_call *call, struct rfile *st)
{
    json_t *v;
    if (st->text) {
        v = gw_fs_json_lossy((const char *)st->buf, st->len);
    } else {
        size_t n;
        char *b = gw_fs_b64_encode(st->buf, st->len, &n);
        v = b != NULL ? json_stringn_nocheck(b, n) : NULL;
        free(b);
    }
    if (v == NULL) {
        fail_oom(call);
        return;
    }
    gw_call_ok(call, v);
}

static int rfile_sink(void *user, const uint8_t *data, size_t len, bool end,
                      const struct sbx_err *err)
{
    struct rfile *st = user;
    if (err != NULL || end) {
        if (st->call != NULL && !st->aborted) {
            if (err != NULL) {
                fsop_fail(st->call, err);
            } else {
                rfile_answer(st->call, st);
            }
        }
        rfile_unref(st);
        return 0;
    }
    if (st->call == NULL || st->aborted) {
        rfile_unref(st);
        return -1;
    }
    if (len > GW_FS_READ_MAX - st->len) {
        rfile_too_big(st->call, st);
        rfile_unref(st);
        return -1;
    }
    if (st->len + len > st->cap) {
        size_t cap = st->cap < 65536 ? 65536 : st->cap;
        while (cap < st->len + len) {
            cap = cap > GW_FS_READ_MAX / 2 ? GW_FS_READ_MAX : cap * 2;
        }
        uint8_t *nb = realloc(st->buf, cap);
        if (nb == NULL) {
            fail_oom(st->call);
            rfile_unref(st);
            return -1;
        }
        st->buf = nb;
        st->cap = cap;
    }
    memcpy(st->buf + st->len, data, len);
    st->len += len;
    return 0;
}

static void rfile_abort(struct gw_call *call)
{
    struct rfile *st = call->data;
    if (st != NULL && !st->aborted && !call->answered) {
        st->aborted = true;
        gw_call_fail(call, "Interrupted", "ABORT_ERR", "%s: the operation was aborted",
                     call->method);
    }
}

static void rfile_started(struct gw_call *call, const struct sbx_event *ev)
{
    struct rfile *st = call->data;
    struct sbx_err err;
    if (ev->error != NULL) {
        fsop_fail(call, ev->error);
        return;
    }
    if (ev->rec != SBX_REC_STREAM) {
        gw_call_fail(call, "InvalidData", NULL, "%s: the agent sent no stream", call->method);
        return;
    }
    uint32_t sid = ev->r.stream.stream;
    struct sbx_conn *c = gw_session_conn(call->s);
    if (st->aborted || ev->r.stream.size > GW_FS_READ_MAX) {
        if (c != NULL) {
            (void)sbx_conn_cancel(c, sid, &err); /* only fails on a dead link */
        }
        if (!st->aborted) {
            rfile_too_big(call, st);
        }
        return;
    }
    /* The size is the agent's word: at most 1 MiB is reserved on it, the rest grows with the
     * bytes that do arrive (rfile_data). */
    st->cap = ev->r.stream.size > 0 ? ev->r.stream.size : 1;
    st->cap = st->cap > (1u << 20) ? (1u << 20) : st->cap;
    if ((st->buf = malloc(st->cap)) == NULL) {
        if (c != NULL) {
            (void)sbx_conn_cancel(c, sid, &err);
        }
        fail_oom(call);
        return;
    }
    st->refs++;
    if (gw_session_collect(call->s, sid, rfile_sink, st) < 0) {
        st->refs--;
        gw_call_fail(call, "Error", NULL, "%s: the agent's stream vanished", call->method);
    }
}

/* The download, once the session has room for the file and its answer (gw_call_when_room). */
static void rfile_start(struct gw_call *call)
{
    struct rfile *st = call->data;
    struct sbx_conn *c;
    struct sbx_err err;
    if ((c = gw_fs_conn(call)) == NULL) {
        return;
    }
    void *u = gw_call_expect(call, rfile_started);
    sent(call,
         sbx_transfer_download(c, st->path, 0, (int64_t)GW_FS_READ_MAX + 1, cwd_of(call), u, NULL,
                               &err),
         &err);
}

static void read_file(struct gw_call *call, json_t *params, bool text)
{
    const char *path;
    int64_t abort_id;
    if (gw_param_str(call, params, "path", true, &path) < 0 ||
        gw_param_int(call, params, "abortId", false, 0, INT64_MAX, -1, &abort_id) < 0) {
        return;
    }
    struct rfile *st = calloc(1, sizeof(*st));
    if (st == NULL || (st->op.shown = strdup(path)) == NULL) {
        free(st);
        fail_oom(call);
        return;
    }
    st->op.op = "readfile";
    st->refs = 1;
    st->call = call;
    st->path = path;
    st->text = text;
    call->data = st;
    call->data_free = rfile_call_gone;
    set_abort(call, abort_id, rfile_abort); /* also while it waits for room */
    gw_call_when_room(call, rfile_start);
}

/* readFile {path, abortId?} -> the whole file, base64 (at most GW_FS_READ_MAX bytes). */
void gw_m_read_file(struct gw_call *call, json_t *params)
{
    read_file(call, params, false);
}

/* readTextFile {path, abortId?} -> the whole file as a string (invalid UTF-8 replaced). */
void gw_m_read_text_file(struct gw_call *call, json_t *params)
{
    read_file(call, params, true);
}

/* --- writeFile / writeTextFile: fs.open + fs.write + fs.close (+ fs.chmod) ------------------- */

struct wfile {
    struct fsop op; /* first: fsop_fail reads it */
    int refs;       /* the call's, and the content stream sink's while claimed */
    struct gw_call *call;
    struct gw_session *s;
    char *path;
    int64_t mode;   /* -1: none given */
    uint32_t fh;    /* the agent's handle while open */
    bool open;      /* fh is open (not yet closed or being closed) */
    bool busy;      /* an fs.open / fs.write / fs.close / fs.chmod is in flight */
    bool ended;     /* every content byte is in buf */
    bool done;      /* answered (or failing): no more requests but a close */
    bool streamed;  /* content comes on a client stream ... */
    bool sink_live; /* ... which is still claimed by us */
    uint64_t sid;   /* its id */
    uint8_t *buf;   /* content not yet written: buf[off..len) */
    size_t off, len, cap;
    size_t chunk;        /* bytes per fs.write */
    struct gw_hold hold; /* on while too much content waits (the WebSocket is held) */
};

static void wfile_unref(struct wfile *st)
{
    if (--st->refs == 0) {
        free(st->op.shown);
        free(st->path);
        free(st->buf);
        free(st);
    }
}

static void wfile_call_gone(void *p)
{
    struct wfile *st = p;
    st->call = NULL;
    st->done = true;
    gw_session_hold(st->s, &st->hold, false);
    wfile_unref(st);
}

static void wfile_ignore(struct gw_call *call, const struct sbx_event *ev)
{
    (void)call;
    (void)ev; /* the close after a failure: its own result does not matter */
}

static void wfile_hold(struct wfile *st)
{
    bool want = st->len - st->off > GW_FS_WRITE_HIGH && !st->done;
    bool low = st->len - st->off <= GW_FS_WRITE_HIGH / 2 || st->done;
    if (want || low) {
        gw_session_hold(st->s, &st->hold, want);
    }
}

/* Close the handle if it is open and idle (after a failure). */
static void wfile_close_quietly(struct wfile *st)
{
    struct sbx_conn *c;
    struct sbx_err err;
    if (st->open && !st->busy && st->call != NULL && (c = gw_session_conn(st->s)) != NULL) {
        st->open = false;
        void *u = gw_call_expect(st->call, wfile_ignore);
        if (sbx_fs_close(c, st->fh, u, NULL, &err) < 0) {
            gw_call_unexpect(st->call);
        }
    }
}

/* Stop taking content from the client stream (outside its sink's callbacks). */
static void wfile_drop_stream(struct wfile *st, json_t *reason)
{
    if (st->sink_live) {
        st->sink_live = false;
        gw_istream_cancel(st->s, st->sid, reason);
        wfile_unref(st);
    } else {
        json_decref(reason);
    }
}

/* Fail the write with an agent error (NULL: @cls/@msg): answer, close, drop the stream. */
static void wfile_fail(struct wfile *st, const struct sbx_err *e, const char *cls, const char *msg)
{
    if (st->done || st->call == NULL) {
        return;
    }
    st->done = true;
    wfile_hold(st);
    wfile_close_quietly(st);
    struct gw_call *call = st->call;
    wfile_drop_stream(st, e != NULL ? gw_errobj_sbx(e, st->op.op, st->op.shown)
                                    : gw_errobj(cls, NULL, msg));
    if (e != NULL) {
        fsop_fail(call, e);
    } else {
        gw_call_fail(call, cls, NULL, "%s", msg);
    }
}

static void wfile_pump(struct wfile *st);

static void wfile_written(struct gw_call *call, const struct sbx_event *ev)
{
    struct wfile *st = call->data;
    st->busy = false;
    if (st->done) {
        wfile_close_quietly(st);
        return;
    }
    if (ev->error != NULL) {
        wfile_fail(st, ev->error, NULL, NULL);
        return;
    }
    const msgpack_object *w = ev->result != NULL ? sbx_obj_get(ev->result, "written") : NULL;
    if (w == NULL || w->type != MSGPACK_OBJECT_POSITIVE_INTEGER || w->via.u64 == 0 ||
        w->via.u64 > st->len - st->off) {
        wfile_fail(st, NULL, "WriteZero", "writeFile: the agent wrote no bytes");
        return;
    }
    st->off += (size_t)w->via.u64;
    gw_session_hold_progress(st->s, &st->hold); /* the sandbox is taking the content */
    wfile_pump(st);
}

static void wfile_chmodded(struct gw_call *call, const struct sbx_event *ev)
{
    struct wfile *st = call->data;
    st->busy = false;
    if (ev->error != NULL) {
        wfile_fail(st, ev->error, NULL, NULL);
        return;
    }
    st->done = true;
    wfile_hold(st);
    gw_call_ok(call, NULL);
}

static void wfile_closed(struct gw_call *call, const struct sbx_event *ev)
{
    struct wfile *st = call->data;
    struct sbx_err err;
    struct sbx_conn *c;
    st->busy = false;
    if (ev->error != NULL) {
        wfile_fail(st, ev->error, NULL, NULL);
        return;
    }
    if (st->mode >= 0 && (c = gw_fs_conn(call)) != NULL) {
        st->busy = true;
        void *u = gw_call_expect(call, wfile_chmodded);
        if (sbx_fs_chmod(c, st->path, (uint32_t)st->mode, cwd_of(call), u, NULL, &err) < 0) {
            gw_call_unexpect(call);
            st->busy = false;
            wfile_fail(st, &err, NULL, NULL);
        }
        return;
    }
    if (st->mode < 0) {
        st->done = true;
        wfile_hold(st);
        gw_call_ok(call, NULL);
    }
}

static void wfile_opened(struct gw_call *call, const struct sbx_event *ev)
{
    struct wfile *st = call->data;
    st->busy = false;
    if (ev->error != NULL) {
        wfile_fail(st, ev->error, NULL, NULL);
        return;
    }
    const msgpack_object *fh = ev->result != NULL ? sbx_obj_get(ev->result, "fh") : NULL;
    if (fh == NULL || fh->type != MSGPACK_OBJECT_POSITIVE_INTEGER || fh->via.u64 > UINT32_MAX) {
        wfile_fail(st, NULL, "InvalidData", "writeFile: the agent sent no file handle");
        return;
    }
    st->fh = (uint32_t)fh->via.u64;
    st->open = true;
    if (st->done) {
        wfile_close_quietly(st); /* aborted meanwhile */
        return;
    }
    wfile_pump(st);
}

/* Send the next fs.write (or, once everything is written, fs.close). */
static void wfile_pump(struct wfile *st)
{
    struct sbx_conn *c;
    struct sbx_err err;
    if (st->done || st->busy || !st->open || st->call == NULL) {
        return;
    }
    if ((c = gw_session_conn(st->s)) == NULL) {
        wfile_fail(st, NULL, "ConnectionReset", "writeFile: the sandbox's agent is gone");
        return;
    }
    if (st->off < st->len) {
        size_t n = st->len - st->off < st->chunk ? st->len - st->off : st->chunk;
        st->busy = true;
        void *u = gw_call_expect(st->call, wfile_written);
        if (sbx_fs_write(c, st->fh, st->buf + st->off, n, NULL, u, NULL, &err) < 0) {
            gw_call_unexpect(st->call);
            st->busy = false;
            wfile_fail(st, &err, NULL, NULL);
            return;
        }
    } else if (st->ended) {
        st->busy = true;
        st->open = false;
        void *u = gw_call_expect(st->call, wfile_closed);
        if (sbx_fs_close(c, st->fh, u, NULL, &err) < 0) {
            gw_call_unexpect(st->call);
            st->busy = false;
            wfile_fail(st, &err, NULL, NULL);
            return;
        }
    }
    if (st->off == st->len) {
        st->off = st->len = 0;
    }
    wfile_hold(st);
}

static int wfile_sink_data(void *user, const uint8_t *data, size_t len)
{
    struct wfile *st = user;
    if (st->done || st->call == NULL) {
        st->sink_live = false;
        wfile_unref(st);
        return -1; /* the session cancels the stream toward the client */
    }
    if (len == 0) {
        return 0; /* an empty chunk: nothing to keep (and no buffer yet, maybe) */
    }
    if (len > GW_FS_WRITE_MAX - (st->len - st->off)) {
        st->sink_live = false;
        wfile_fail(st, NULL, "Error", "writeFile: the content stream outran the sandbox");
        wfile_unref(st);
        return -1;
    }
    if (st->len + len > st->cap) {
        if (st->off > 0) {
            memmove(st->buf, st->buf + st->off, st->len - st->off);
            st->len -= st->off;
            st->off = 0;
        }
        size_t cap = st->cap < 262144 ? 262144 : st->cap;
        while (cap < st->len + len) {
            cap *= 2;
        }
        uint8_t *nb = cap != st->cap ? realloc(st->buf, cap) : st->buf;
        if (nb == NULL) {
            st->sink_live = false;
            wfile_fail(st, NULL, "Error", "writeFile: out of memory");
            wfile_unref(st);
            return -1;
        }
        st->buf = nb;
        st->cap = cap;
    }
    memcpy(st->buf + st->len, data, len);
    st->len += len;
    /* The pump may fail the write (the agent gone, a request refused), which cancels this stream
     * and answers the call: both references go, so hold one of ours across it. */
    st->refs++;
    wfile_pump(st);
    /* The pump sends nothing while a request is in flight or the file is not open yet, but the
     * buffer grew all the same: without a hold here, a slow fs.write let the client's bytes pile
     * up to GW_FS_WRITE_MAX and fail the write. */
    wfile_hold(st);
    if (st->call != NULL) {
        gw_session_flush(st->s);
    }
    wfile_unref(st);
    return 0;
}

static void wfile_sink_end(void *user)
{
    struct wfile *st = user;
    st->sink_live = false;
    st->ended = true;
    wfile_pump(st);
    if (st->call != NULL) {
        gw_session_flush(st->s);
    }
    wfile_unref(st);
}

static void wfile_sink_error(void *user, json_t *error)
{
    struct wfile *st = user;
    st->sink_live = false;
    const char *m = NULL;
    json_t *jm = error != NULL ? json_object_get(error, "message") : NULL;
    if (jm != NULL && json_is_string(jm)) {
        m = json_string_value(jm);
    }
    char msg[512];
    (void)snprintf(msg, sizeof(msg), "writeFile: the content stream failed: %s",
                   m != NULL ? m : "the connection closed");
    wfile_fail(st, NULL, "Error", msg);
    if (st->call != NULL) {
        gw_session_flush(st->s);
    }
    wfile_unref(st);
}

/* The hold's stall: the sandbox took none of the content for --stream-stall-timeout. */
static void wfile_stalled(void *user, int64_t ms)
{
    struct wfile *st = user;
    char d[32], msg[200];

    gw_duration_text(ms, d, sizeof(d));
    snprintf(msg, sizeof(msg),
             st->open ? "writeFile: the sandbox wrote none of the content for %s"
                      : "writeFile: the file was not open within %s while the content waited",
             d);
    wfile_fail(st, NULL, "TimedOut", msg);
}

static void wfile_abort(struct gw_call *call)
{
    struct wfile *st = call->data;
    if (st != NULL) {
        wfile_fail(st, NULL, "Interrupted", "writeFile: the operation was aborted");
    }
}

static void write_file(struct gw_call *call, json_t *params, bool text)
{
    const char *path, *content = NULL;
    json_t *opts;
    bool append, create, create_new;
    int64_t mode, sid, abort_id;
    struct sbx_conn *c;
    struct sbx_err err;
    if (gw_param_str(call, params, "path", true, &path) < 0 ||
        gw_param_obj(call, params, "options", false, &opts) < 0 ||
        gw_param_bool(call, opts, "append", false, &append) < 0 ||
        gw_param_bool(call, opts, "create", true, &create) < 0 ||
        gw_param_bool(call, opts, "createNew", false, &create_new) < 0 ||
        gw_param_int(call, opts, "mode", false, 0, 07777, -1, &mode) < 0 ||
        gw_param_int(call, params, "contentStreamId", false, 0, INT64_MAX, -1, &sid) < 0 ||
        gw_param_int(call, params, "abortId", false, 0, INT64_MAX, -1, &abort_id) < 0) {
        return;
    }
    json_t *jc = json_object_get(params, "content");
    if (sid < 0) {
        if (jc == NULL || !json_is_string(jc)) {
            gw_call_fail(call, "TypeError", NULL,
                         "%s: a string 'content' or a 'contentStreamId' is required", call->method);
            return;
        }
        content = json_string_value(jc);
    }
    struct wfile *st = calloc(1, sizeof(*st));
    if (st == NULL || (st->op.shown = strdup(path)) == NULL || (st->path = strdup(path)) == NULL) {
        if (st != NULL) {
            free(st->op.shown);
        }
        free(st);
        fail_oom(call);
        return;
    }
    st->op.op = "writefile";
    st->refs = 1;
    st->call = call;
    st->s = call->s;
    st->hold.stalled = wfile_stalled;
    st->hold.user = st;
    st->mode = mode;
    call->data = st;
    call->data_free = wfile_call_gone;
    set_abort(call, abort_id, wfile_abort);
    if ((c = gw_fs_conn(call)) == NULL) {
        return;
    }
    const struct sbx_peer *peer = sbx_conn_peer(c);
    st->chunk =
        peer != NULL && peer->limits.chunk_max > 0 && peer->limits.chunk_max < SBX_STREAM_CHUNK_MAX
            ? (size_t)peer->limits.chunk_max
            : SBX_STREAM_CHUNK_MAX;
    if (content != NULL) {
        size_t n = json_string_length(jc);
        if (text) {
            st->buf = malloc(n > 0 ? n : 1);
            if (st->buf != NULL) {
                memcpy(st->buf, content, n);
            }
            st->len = n;
        } else if (gw_fs_b64_decode(content, n, GW_WS_MSG_MAX, &st->buf, &st->len) < 0) {
            gw_call_fail(call, "TypeError", NULL, "writeFile: 'content' is not valid base64");
            return;
        }
        if (st->buf == NULL) {
            fail_oom(call);
            return;
        }
        st->cap = st->len;
        st->ended = true;
    } else {
        struct gw_istream_sink sink = {
            .data = wfile_sink_data,
            .end = wfile_sink_end,
            .error = wfile_sink_error,
            .user = st,
        };
        st->streamed = true;
        st->sid = (uint64_t)sid;
        st->sink_live = true;
        st->refs++;
        /* The claim delivers what came before it, which may fail the call (a stream error) and
         * so free it and its reference to st: the hold keeps both to look at. */
        gw_call_hold(call);
        if (gw_istream_claim(call->s, (uint64_t)sid, &sink) < 0) {
            st->sink_live = false;
            st->refs--;
            gw_call_fail(call, "TypeError", NULL,
                         "%s: contentStreamId %lld was not started or is already in use",
                         call->method, (long long)sid);
            gw_call_release(call);
            return;
        }
        bool failed = st->done;
        gw_call_release(call);
        if (failed) {
            return; /* the buffered part already failed it */
        }
    }
    unsigned flags = SBX_FS_O_WRITE | (append ? SBX_FS_O_APPEND : SBX_FS_O_TRUNCATE);
    if (create || create_new) {
        flags |= SBX_FS_O_CREATE;
    }
    if (create_new) {
        flags |= SBX_FS_O_EXCLUSIVE;
    }
    st->busy = true;
    void *u = gw_call_expect(call, wfile_opened);
    if (sbx_fs_open(c, path, flags, (int)mode, cwd_of(call), u, NULL, &err) < 0) {
        gw_call_unexpect(call);
        st->busy = false;
        wfile_fail(st, &err, NULL, NULL);
    }
}

/* writeFile {path, options?, content: base64 | contentStreamId, abortId?} -> null once every
 * byte is written and the file closed (Deno's open flags: write, create unless create:false,
 * createNew -> exclusive, append or truncate; mode applied after). */
void gw_m_write_file(struct gw_call *call, json_t *params)
{
    write_file(call, params, false);
}

/* writeTextFile: as writeFile with `content` a string (streamed content is UTF-8 bytes). */
void gw_m_write_text_file(struct gw_call *call, json_t *params)
{
    write_file(call, params, true);
}
