/*
 * Request param readers that need nothing of the agent but the params (params.h): moved here
 * from fs.c, proc.c, outjob.c and env.c so tests/fuzz/fuzz_request.c can run the very code the
 * handlers run on hostile params.
 */
#include "params.h"

#include <signal.h>
#include <string.h>
#include <sys/stat.h>

#include "sbx/msg.h"

/* --- paths and times (the fs family, transfer.*, pack.create) ------------------------------ */

int agent_fs_path_param(const msgpack_object *params, const char *key, int required, char *out,
                        struct sbx_err *err)
{
    char rel[AGENT_FS_PATH_BUF];
    char cwd[AGENT_FS_PATH_BUF] = "/";
    size_t rn, cn;
    int r = sbx_param_bstr(params, key, required, rel, sizeof(rel), err);

    if (r != 0) {
        return r;
    }
    if (rel[0] == '\0') {
        return sbx_err_param(err, key, "%s must not be empty", key);
    }
    if (rel[0] == '/') {
        memcpy(out, rel, strlen(rel) + 1);
        return 0;
    }
    r = sbx_param_bstr(params, "cwd", SBX_OPTIONAL, cwd, sizeof(cwd), err);
    if (r < 0) {
        return r;
    }
    if (cwd[0] != '/') {
        return sbx_err_param(err, "cwd", "cwd must be an absolute path");
    }
    rn = strlen(rel);
    cn = strlen(cwd);
    while (cn > 1 && cwd[cn - 1] == '/') {
        cn--;
    }
    if (cn + 1 + rn > SBX_PATH_MAX) {
        return sbx_err_param(err, key, "%s joined to cwd is longer than %u bytes", key,
                             SBX_PATH_MAX);
    }
    memcpy(out, cwd, cn);
    if (cwd[cn - 1] != '/') {
        out[cn++] = '/';
    }
    memcpy(out + cn, rel, rn + 1);
    return 0;
}

int agent_fs_time_param(const msgpack_object *params, const char *key, struct timespec *ts,
                        struct sbx_err *err)
{
    int64_t ns;
    int r = sbx_param_i64(params, key, SBX_OPTIONAL, INT64_MIN, INT64_MAX, &ns, err);

    if (r < 0) {
        return -1;
    }
    if (r == 1) {
        ts->tv_sec = 0;
        ts->tv_nsec = UTIME_OMIT;
        return 0;
    }
    ts->tv_sec = ns / 1000000000;
    ts->tv_nsec = ns % 1000000000;
    if (ts->tv_nsec < 0) {
        ts->tv_sec--;
        ts->tv_nsec += 1000000000;
    }
    return 0;
}

/* --- signals (proc.kill) ------------------------------------------------------------------ */

int agent_signal_param(const msgpack_object *params, const char *key, int def, int *out,
                       struct sbx_err *err)
{
    const msgpack_object *o = sbx_obj_get(params, key);
    char name[32];
    int sig;

    if (o == NULL || o->type == MSGPACK_OBJECT_NIL) {
        *out = def;
        return 0;
    }
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (o->via.u64 == 0 || o->via.u64 >= (uint64_t)NSIG) {
            return sbx_err_param(err, key, "%s: no signal number %llu", key,
                                 (unsigned long long)o->via.u64);
        }
        *out = (int)o->via.u64;
        return 0;
    }
    if (sbx_obj_cstr(o, name, sizeof(name)) < 0 || (sig = sbx_signal_parse(name)) < 0) {
        return sbx_err_param(err, key, "%s must be a signal name such as \"TERM\" or a number",
                             key);
    }
    *out = sig;
    return 0;
}

/* --- the `compress` of tree requests -------------------------------------------------------- */

int agent_compress_param(const msgpack_object *params, const char *key, int required,
                         enum agent_compress *out, struct sbx_err *err)
{
    char v[16];
    int rc = sbx_param_cstr(params, key, required, v, sizeof(v), err);

    if (rc != 0) {
        if (rc > 0) {
            *out = AGENT_COMPRESS_NONE;
        }
        return rc;
    }
    if (strcmp(v, "none") == 0) {
        *out = AGENT_COMPRESS_NONE;
    } else if (strcmp(v, "gzip") == 0) {
        *out = AGENT_COMPRESS_GZIP;
    } else if (strcmp(v, "zstd") == 0) {
        *out = AGENT_COMPRESS_ZSTD;
    } else {
        return sbx_err_param(err, key, "%s must be \"none\", \"gzip\" or \"zstd\"", key);
    }
    return 0;
}

/* --- env maps (env.set, proc.spawn's env via the schema, pack.create's build) --------------- */

bool agent_env_name_ok(const char *s, size_t n)
{
    return n > 0 && n <= SBX_ENV_NAME_MAX && memchr(s, '=', n) == NULL &&
           memchr(s, '\0', n) == NULL;
}

int agent_env_check_map(const msgpack_object *map, const char *field, struct sbx_err *err)
{
    for (uint32_t k = 0; k < map->via.map.size; k++) {
        const char *p;
        size_t n;
        const msgpack_object *v = &map->via.map.ptr[k].val;

        if (!sbx_obj_bytes(&map->via.map.ptr[k].key, &p, &n) || !agent_env_name_ok(p, n)) {
            return sbx_err_param(err, field, "%s: names must be 1..%u bytes without '=' or NUL",
                                 field, SBX_ENV_NAME_MAX);
        }
        if (v->type == MSGPACK_OBJECT_NIL) {
            continue;
        }
        if (!sbx_obj_bytes(v, &p, &n) || n > SBX_ENV_VAL_MAX || memchr(p, '\0', n) != NULL) {
            return sbx_err_param(err, field,
                                 "%s: values must be strings of at most %u bytes "
                                 "without NUL (or nil)",
                                 field, SBX_ENV_VAL_MAX);
        }
    }
    return 0;
}

/* --- transfer.upload's sha256 ---------------------------------------------------------------- */

int agent_sha256_param(const msgpack_object *params, char out[65], struct sbx_err *err)
{
    const char *s;
    size_t n;
    int rc = sbx_param_str(params, "sha256", SBX_OPTIONAL, 64, &s, &n, err);

    if (rc != 0) {
        return rc;
    }
    /* @s points into the frame and is not NUL-terminated: count within its n bytes only. */
    for (size_t i = 0; i < n; i++) {
        if (strchr("0123456789abcdef", s[i]) == NULL || s[i] == '\0') {
            n = 0;
            break;
        }
    }
    if (n != 64) {
        return sbx_err_param(err, "sha256", "sha256 must be 64 lowercase hex digits");
    }
    memcpy(out, s, 64);
    out[64] = '\0';
    return 0;
}
